//! `keelson datastore …`: snapshots of the SQLite datastore and the mark that finishes a
//! restore of MySQL/MariaDB or PostgreSQL made with the database's own tools.
//!
//! These commands work on the files and database directly (no server needed; a restore
//! needs the server stopped). The data dir, endpoint and token come from the flags, else the
//! server's config file, else the defaults the server uses, so on a board `keelson datastore
//! snapshot save` finds what `keelson server` uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::bootstrap::{self, Token};
use crate::cli::{DatastoreArgs, DatastoreCommand, SnapshotCommand};
use crate::config::Host;
use crate::datastore::snapshot::{self, Snapshots};
use crate::datastore::{Endpoint, PoolConfig, Store};

/// Longer than the controllers' lease retry (4 s): a running server renews within it.
const ACTIVITY_WINDOW: std::time::Duration = std::time::Duration::from_secs(6);

/// The settings these commands share with the server, resolved.
struct Target {
    endpoint: Endpoint,
    snapshots: Snapshots,
    token: Option<String>,
    token_file: PathBuf,
    node: String,
}

pub async fn run(args: DatastoreArgs) -> anyhow::Result<()> {
    let target = resolve(&args)?;
    match args.command {
        DatastoreCommand::Snapshot(cmd) => snapshot(&target, cmd).await,
        DatastoreCommand::MarkRestored { bump_revision } => {
            mark_restored(&target, bump_revision).await
        }
    }
}

async fn snapshot(target: &Target, cmd: SnapshotCommand) -> anyhow::Result<()> {
    let db = || {
        target.endpoint.sqlite_path().map(Path::to_owned).ok_or_else(|| {
            anyhow::anyhow!(
                "the datastore is {}: snapshots are for the embedded SQLite datastore; back up MySQL/MariaDB with mariadb-dump and PostgreSQL with pg_dump, then finish a restore with `keelson datastore mark-restored` (README: \"Backups and restore\")",
                target.endpoint.redacted()
            )
        })
    };
    match cmd {
        SnapshotCommand::Save { name } => {
            let s = target.snapshots.save(&db()?, &name, &target.node).await?;
            println!(
                "saved snapshot {} ({} bytes) at {}",
                s.name,
                s.size,
                s.path.display()
            );
        }
        SnapshotCommand::Ls => {
            let all = target.snapshots.list()?;
            let width = all.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
            println!(
                "{:width$}  {:>12}  {:20}  LOCATION",
                "NAME", "SIZE", "CREATED"
            );
            for s in all {
                let created = time::OffsetDateTime::from_unix_timestamp(s.created)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                println!(
                    "{:width$}  {:>12}  {:20}  {}",
                    s.name,
                    s.size,
                    created,
                    s.path.display()
                );
            }
        }
        SnapshotCommand::Delete { names } => {
            for name in names {
                target.snapshots.delete(&name)?;
                println!("deleted snapshot {name}");
            }
        }
        SnapshotCommand::Prune {
            snapshot_retention,
            name,
        } => {
            let deleted = target
                .snapshots
                .prune(&name, &target.node, snapshot_retention)?;
            println!(
                "kept the newest {snapshot_retention} snapshots named {name}-{}-…; deleted {}",
                target.node,
                deleted.len()
            );
            for d in deleted {
                println!("deleted snapshot {d}");
            }
        }
        SnapshotCommand::Restore {
            snapshot,
            bump_revision,
        } => {
            let db = db()?;
            let path = target.snapshots.find(&snapshot)?;
            let token = target.token()?;
            let started = std::time::Instant::now();
            let restored = snapshot::restore(&db, &path, bump_revision, |store| async move {
                check_token(&store, &token).await
            })
            .await?;
            println!(
                "restored {} ({} objects) into {} in {:.2} s",
                path.display(),
                restored.objects,
                db.display(),
                started.elapsed().as_secs_f64()
            );
            println!(
                "revisions continue after {} (the snapshot was at {}; restore number {}): watches and caches from before the restore get 410 Gone and relist",
                restored.marked.to, restored.marked.from, restored.marked.epoch
            );
            if let Some(prev) = restored.previous {
                println!(
                    "the database it replaced is kept at {} (with its -wal, if any)",
                    prev.display()
                );
            }
            println!("now start the server (systemctl start keelson)");
        }
    }
    Ok(())
}

async fn mark_restored(target: &Target, bump: i64) -> anyhow::Result<()> {
    if target.endpoint.sqlite_path().is_some() {
        bail!(
            "mark-restored is for MySQL/MariaDB and PostgreSQL restored with their own tools; for SQLite, `keelson datastore snapshot restore` does it (pass --datastore-endpoint to name the database)"
        );
    }
    let token = target.token()?;
    let store = Store::open(
        &target.endpoint,
        &PoolConfig {
            max_open: 1,
            ..PoolConfig::default()
        },
    )
    .await
    .with_context(|| format!("opening {}", target.endpoint.redacted()))?;
    let outcome = async {
        check_token(&store, &token)
            .await
            .map_err(|e| anyhow::anyhow!("refusing to mark the datastore restored: {e}; nothing was changed"))?;
        let others = store.other_sessions().await?;
        if others > 0 {
            bail!(
                "refusing to mark the datastore restored: {others} other session(s) are connected to it (servers still running?); stop every server first; nothing was changed"
            );
        }
        // Servers renew leases every few seconds (4 s for the controllers' lease).
        eprintln!(
            "checking for {} s that no server writes to it…",
            ACTIVITY_WINDOW.as_secs()
        );
        let first = store.activity().await?;
        tokio::time::sleep(ACTIVITY_WINDOW).await;
        if store.activity().await? != first {
            bail!(
                "refusing to mark the datastore restored: a server renewed a lease or wrote to it just now; stop every server first; nothing was changed"
            );
        }
        let marked = store.mark_restored(bump, 0).await?;
        let objects = store.object_count().await?;
        Ok((marked, objects))
    }
    .await;
    store.close().await;
    let (marked, objects) = outcome?;
    println!(
        "marked {} restored ({objects} objects): revisions continue after {} (the restored data was at {}; restore number {}); now start the servers",
        target.endpoint.redacted(),
        marked.to,
        marked.from,
        marked.epoch
    );
    Ok(())
}

/// The restore's token check, in the words of a restore (not of a starting server).
async fn check_token(store: &Store, token: &Token) -> Result<(), String> {
    bootstrap::check_token(store, token).await.map_err(|e| match e {
        bootstrap::Error::WrongToken => "the token does not open the cluster data in it (it belongs to a cluster with another token)".to_owned(),
        bootstrap::Error::CaMismatch { .. } => "the token's CA hash does not match its cluster CA (the token belongs to another cluster)".to_owned(),
        other => other.to_string(),
    })
}

impl Target {
    fn token(&self) -> anyhow::Result<Token> {
        if let Some(raw) = &self.token {
            return Ok(Token::parse(raw, "--token")?);
        }
        let raw = std::fs::read_to_string(&self.token_file).with_context(|| {
            format!(
                "no --token given and cannot read the server's token file {} (a restore checks that the snapshot belongs to this cluster)",
                self.token_file.display()
            )
        })?;
        Ok(Token::parse(
            &raw,
            &format!("token file {}", self.token_file.display()),
        )?)
    }
}

/// Flags first, then the config file's values for the same keys, then the server's defaults.
fn resolve(args: &DatastoreArgs) -> anyhow::Result<Target> {
    let file = read_config(&args.config)?;
    let from_file = |key: &str| file.get(key).cloned();
    let host = Host::current();
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| from_file("data-dir").map(PathBuf::from))
        .unwrap_or_else(|| host.default_data_dir());
    let endpoint = match args
        .datastore_endpoint
        .clone()
        .or_else(|| from_file("datastore-endpoint"))
    {
        Some(raw) => {
            Endpoint::parse(&raw).map_err(|e| anyhow::anyhow!("--datastore-endpoint: {e}"))?
        }
        None => Endpoint::sqlite_default(&data_dir),
    };
    let snapshot_dir = args
        .datastore_snapshot_dir
        .clone()
        .or_else(|| from_file("datastore-snapshot-dir").map(PathBuf::from))
        .unwrap_or_else(|| data_dir.join("server/db/snapshots"));
    let token_file = args
        .token_file
        .clone()
        .or_else(|| from_file("token-file").map(PathBuf::from))
        .unwrap_or_else(|| data_dir.join("server/token"));
    let token = match (&args.token, from_file("token")) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(t)) if args.token_file.is_none() => Some(t),
        _ => None,
    };
    let node = args
        .node_name
        .clone()
        .or_else(|| from_file("node-name"))
        .unwrap_or_else(|| host.hostname.clone());
    Ok(Target {
        endpoint,
        snapshots: Snapshots::new(snapshot_dir),
        token,
        token_file,
        node,
    })
}

/// The server's config file as key → string, for the few keys these commands share. A
/// missing file is fine; an unreadable or malformed one is said.
fn read_config(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => bail!("--config {}: cannot read it: {e}", path.display()),
    };
    let doc = crate::config::file::map(&text, path).map_err(|e| anyhow::anyhow!(e))?;
    Ok(doc
        .into_iter()
        .filter_map(|(k, v)| Some((k, crate::config::file::scalar(v)?)))
        .collect())
}
