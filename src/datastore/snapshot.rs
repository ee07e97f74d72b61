//! Snapshots of the embedded SQLite datastore: save, list, delete, prune, restore.
//!
//! A snapshot is a complete SQLite database written by `VACUUM INTO`, which reads inside one
//! transaction: with the WAL journal the server keeps writing meanwhile, and the copy is the
//! database exactly as of one commit. It opens with the `sqlite3` tool like the live file.
//!
//! Invariants: a snapshot appears under its name only once complete and on disk (written as a
//! hidden `.part`, synced, renamed, directory synced); a restore replaces the live database only
//! after the copy passed every check (integrity, schema, the cluster token) and was marked
//! restored ([`super::restore`]); the database it replaces is kept beside it, never deleted;
//! nothing restores while a server holds [`ServerLock`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Row};

use super::{Endpoint, PoolConfig, Store, restore};

/// The name scheduled snapshots start with (K3s: `etcd-snapshot`).
pub const SCHEDULED_PREFIX: &str = "keelson-snapshot";
/// The name `keelson datastore snapshot save` uses unless given `--name` (K3s's default).
pub const ON_DEMAND_PREFIX: &str = "on-demand";
/// The lock file a server holds in the database's directory for as long as it runs.
const LOCK_FILE: &str = "server.lock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no datastore at {0}: is this the server's --data-dir (or --datastore-endpoint)?")]
    NoDatabase(PathBuf),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SQLite refused to {action} {path}: {source}")]
    Sqlite {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Datastore(#[from] super::Error),
    #[error("{path} is not a keelson snapshot: {reason}")]
    NotASnapshot { path: PathBuf, reason: String },
    #[error(
        "{path} was written by a newer keelson (datastore schema {found}; this keelson knows up to {known}): restore it with that version"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("no snapshot named {name} in {dir} (see `keelson datastore snapshot ls`)")]
    NoSnapshot { name: String, dir: PathBuf },
    #[error(
        "snapshot names are file names: letters, digits, '.', '_' and '-', not starting with '.' (got {0:?})"
    )]
    BadName(String),
    #[error(
        "a keelson server is running on {db} (pid {pid}): stop it first (systemctl stop keelson), then restore"
    )]
    ServerRunning { db: PathBuf, pid: String },
    #[error("refusing to restore: {0}; nothing was changed")]
    Refused(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// Seconds since the epoch, from the name's timestamp (or the file's time).
    pub created: i64,
}

/// The directory snapshots live in.
#[derive(Debug, Clone)]
pub struct Snapshots {
    pub dir: PathBuf,
}

/// Held by a server for its lifetime: a restore (or a second server) finds it taken.
pub struct ServerLock {
    _lock: nix::fcntl::Flock<File>,
}

/// What a restore did, for the operator.
#[derive(Debug)]
pub struct Restored {
    pub marked: restore::Marked,
    pub objects: i64,
    /// Where the database that was replaced now is (none if there was no database).
    pub previous: Option<PathBuf>,
}

// === impl ServerLock ===

impl ServerLock {
    /// Takes the lock in `db`'s directory, or says who holds it.
    pub fn acquire(db: &Path) -> Result<ServerLock> {
        use nix::fcntl::{Flock, FlockArg};
        let dir = db.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // The pid is for the message a refused restore prints; the lock is the flock.
                let _ = lock.set_len(0);
                let _ = writeln!(&mut *lock, "{}", std::process::id());
                Ok(ServerLock { _lock: lock })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::ServerRunning {
                db: db.to_owned(),
                pid: std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "unknown".into()),
            }),
            Err((_, errno)) => Err(Error::Io {
                action: "lock",
                path,
                source: errno.into(),
            }),
        }
    }
}

// === impl Snapshots ===

impl Snapshots {
    pub fn new(dir: PathBuf) -> Snapshots {
        Snapshots { dir }
    }

    /// Writes a consistent copy of the live database at `db` as `<prefix>-<node>-<unix time>`.
    /// Safe while a server writes to it.
    pub async fn save(&self, db: &Path, prefix: &str, node: &str) -> Result<Snapshot> {
        check_name(prefix)?;
        check_name(node)?;
        if !db.is_file() {
            return Err(Error::NoDatabase(db.to_owned()));
        }
        create_private_dir(&self.dir)?;
        let now = unix_now();
        let name = format!("{prefix}-{node}-{now}");
        let path = self.dir.join(&name);
        // Names carry seconds: a second save within one must not replace the first.
        if path.exists() {
            return Err(Error::Io {
                action: "write",
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a snapshot of that name was taken this second; try again",
                ),
            });
        }
        let part = self.dir.join(format!(".{name}.part"));
        // VACUUM INTO refuses an existing file; a `.part` is only ever a crash's leftover.
        let _ = std::fs::remove_file(&part);
        let sqlite_err = |action, source| Error::Sqlite {
            action,
            path: db.to_owned(),
            source,
        };
        sqlx::any::install_default_drivers();
        // `mode=rw`: never create a database where there was none.
        let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}?mode=rw", db.display()))
            .await
            .map_err(|e| sqlite_err("open", e))?;
        sqlx::raw_sql("PRAGMA busy_timeout=10000")
            .execute(&mut conn)
            .await
            .map_err(|e| sqlite_err("open", e))?;
        let copied = sqlx::query("VACUUM INTO ?")
            .bind(part.to_string_lossy().into_owned())
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&part);
            return Err(sqlite_err("copy", e));
        }
        let io = |action, source| Error::Io {
            action,
            path: part.clone(),
            source,
        };
        set_mode(&part, 0o600).map_err(|e| io("protect", e))?;
        File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("sync", e))?;
        std::fs::rename(&part, &path).map_err(|e| io("rename", e))?;
        sync_dir(&self.dir);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Ok(Snapshot {
            name,
            path,
            size,
            created: now,
        })
    }

    /// Every snapshot, oldest first.
    pub fn list(&self) -> Result<Vec<Snapshot>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    action: "read",
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if name.starts_with('.') || !meta.is_file() {
                continue;
            }
            let created = name_time(&name).unwrap_or_else(|| {
                meta.modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as i64)
            });
            out.push(Snapshot {
                path: entry.path(),
                name,
                size: meta.len(),
                created,
            });
        }
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(out)
    }

    /// The snapshot `name_or_path` names: a name in this directory, or a path to any file.
    pub fn find(&self, name_or_path: &str) -> Result<PathBuf> {
        let as_path = Path::new(name_or_path);
        if name_or_path.contains('/') {
            return if as_path.is_file() {
                Ok(as_path.to_owned())
            } else {
                Err(Error::NoSnapshot {
                    name: name_or_path.to_owned(),
                    dir: as_path.parent().unwrap_or(Path::new(".")).to_owned(),
                })
            };
        }
        check_name(name_or_path)?;
        let path = self.dir.join(name_or_path);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::NoSnapshot {
                name: name_or_path.to_owned(),
                dir: self.dir.clone(),
            })
        }
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let path = self.dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NoSnapshot {
                name: name.to_owned(),
                dir: self.dir.clone(),
            }),
            Err(source) => Err(Error::Io {
                action: "delete",
                path,
                source,
            }),
        }
    }

    /// Keeps the newest `keep` snapshots named `<prefix>-<node>-…` and deletes the others;
    /// returns what it deleted. Other names (another node's, an operator's) are left alone.
    pub fn prune(&self, prefix: &str, node: &str, keep: usize) -> Result<Vec<String>> {
        let start = format!("{prefix}-{node}-");
        let mine: Vec<Snapshot> = self
            .list()?
            .into_iter()
            .filter(|s| {
                s.name
                    .strip_prefix(&start)
                    .is_some_and(|rest| rest.parse::<i64>().is_ok())
            })
            .collect();
        let excess = mine.len().saturating_sub(keep);
        let mut deleted = Vec::new();
        for s in mine.into_iter().take(excess) {
            self.delete(&s.name)?;
            deleted.push(s.name);
        }
        Ok(deleted)
    }
}

/// Takes a snapshot at every time `schedule` names (UTC) and keeps the newest
/// `schedule.retention` of them, until `stop`. A failed snapshot is logged and tried again at
/// the next time: a full disk must not stop the server.
pub async fn run_schedule(
    schedule: crate::config::SnapshotSchedule,
    db: PathBuf,
    node: String,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let snaps = Snapshots::new(schedule.dir.clone());
    loop {
        let now = time::OffsetDateTime::now_utc();
        let Some(next) = schedule.cron.next_after(now) else {
            tracing::warn!("the snapshot schedule names no future time; no scheduled snapshots");
            return;
        };
        let wait = (next - now).try_into().unwrap_or(Duration::ZERO);
        tracing::debug!(%next, "next datastore snapshot");
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = std::time::Instant::now();
        match snaps.save(&db, SCHEDULED_PREFIX, &node).await {
            Ok(s) => tracing::info!(
                name = %s.name,
                bytes = s.size,
                took_ms = started.elapsed().as_millis() as u64,
                "saved a datastore snapshot"
            ),
            Err(e) => {
                tracing::error!(error = %e, "the scheduled datastore snapshot failed");
                continue;
            }
        }
        match snaps.prune(SCHEDULED_PREFIX, &node, schedule.retention) {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::info!(
                    ?deleted,
                    retention = schedule.retention,
                    "deleted old snapshots"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot delete old snapshots"),
        }
    }
}

/// Replaces the database at `db` with `snapshot` for a cluster whose token opens it.
///
/// `check_token` is given the opened copy and must fail for a snapshot of another cluster.
/// The copy is checked and marked restored before anything at `db` changes; then the old
/// database (with its WAL) is renamed to `<db>.pre-restore-<time>` and the copy put in place.
pub async fn restore<F, Fut>(
    db: &Path,
    snapshot: &Path,
    bump: i64,
    check_token: F,
) -> Result<Restored>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    let _lock = ServerLock::acquire(db)?;
    let dir = db.parent().unwrap_or(Path::new(".")).to_owned();
    let now = unix_now();
    let file_name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state.db".into());
    let staged = dir.join(format!(".{file_name}.restore-{now}"));
    let result = stage(db, snapshot, &staged, bump, check_token).await;
    let (marked, objects) = match result {
        Ok(v) => v,
        Err(e) => {
            remove_db_files(&staged);
            return Err(e);
        }
    };
    // Nothing at `db` has changed yet. From here: rename the old files aside, the copy in.
    let previous = if db.exists() {
        let aside = dir.join(format!("{file_name}.pre-restore-{now}"));
        for suffix in ["", "-wal"] {
            let from = PathBuf::from(format!("{}{suffix}", db.display()));
            if from.exists() {
                let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                std::fs::rename(&from, &to).map_err(|source| Error::Io {
                    action: "move aside",
                    path: from,
                    source,
                })?;
            }
        }
        // The shared-memory index belongs to the old WAL; SQLite rebuilds it.
        let _ = std::fs::remove_file(format!("{}-shm", db.display()));
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&staged, db).map_err(|source| Error::Io {
        action: "put in place",
        path: db.to_owned(),
        source,
    })?;
    sync_dir(&dir);
    Ok(Restored {
        marked,
        objects,
        previous,
    })
}

/// Copies the snapshot to `staged`, checks it and marks it restored.
async fn stage<F, Fut>(
    db: &Path,
    snapshot: &Path,
    staged: &Path,
    bump: i64,
    check_token: F,
) -> Result<(restore::Marked, i64)>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    let not_snapshot = |reason: String| Error::NotASnapshot {
        path: snapshot.to_owned(),
        reason,
    };
    std::fs::copy(snapshot, staged).map_err(|source| Error::Io {
        action: "copy",
        path: snapshot.to_owned(),
        source,
    })?;
    set_mode(staged, 0o600).map_err(|source| Error::Io {
        action: "protect",
        path: staged.to_owned(),
        source,
    })?;
    // Check before opening it as a store (which would add tables to anything).
    sqlx::any::install_default_drivers();
    {
        let mut conn =
            sqlx::AnyConnection::connect(&format!("sqlite://{}?mode=rw", staged.display()))
                .await
                .map_err(|e| not_snapshot(e.to_string()))?;
        let check: String = sqlx::query("PRAGMA quick_check")
            .fetch_one(&mut conn)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| not_snapshot(format!("not an SQLite database ({e})")))?;
        if check != "ok" {
            return Err(not_snapshot(format!("it is damaged ({check})")));
        }
        let schema: i64 = sqlx::query("SELECT value FROM keelson_meta WHERE name = 'schema'")
            .fetch_one(&mut conn)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|_| not_snapshot("it has no keelson schema".into()))?;
        // The oldest schema that can use it (see `schema::plan`): absent before migrations.
        let usable_from: i64 =
            sqlx::query("SELECT value FROM keelson_meta WHERE name = 'schema_min'")
                .fetch_optional(&mut conn)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.try_get(0).ok())
                .unwrap_or(schema);
        if usable_from > super::schema::VERSION {
            return Err(Error::NewerSchema {
                path: snapshot.to_owned(),
                found: schema,
                known: super::schema::VERSION,
            });
        }
        let _ = conn.close().await;
    }
    // Revisions continue past the live database's, when there is one to read.
    let floor = match live_revision(db).await {
        Some(r) => r + 1,
        None => 0,
    };
    let store = Store::open(
        &Endpoint::sqlite(staged.to_owned()),
        &PoolConfig {
            max_open: 1,
            ..PoolConfig::default()
        },
    )
    .await?;
    let outcome = async {
        check_token(store.clone()).await.map_err(Error::Refused)?;
        let marked = store.mark_restored(bump, floor).await?;
        let objects = store.object_count().await?;
        Ok((marked, objects))
    }
    .await;
    store.close().await;
    let _ = std::fs::remove_file(format!("{}-shm", staged.display()));
    outcome
}

/// The live database's revision, if there is a readable one.
async fn live_revision(db: &Path) -> Option<i64> {
    if !db.is_file() {
        return None;
    }
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .ok()?;
    let rev = sqlx::query("SELECT value FROM keelson_meta WHERE name = 'revision'")
        .fetch_one(&mut conn)
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .ok();
    let _ = conn.close().await;
    rev
}

fn remove_db_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_owned()))
    }
}

/// The `<unix time>` a snapshot's name ends with.
fn name_time(name: &str) -> Option<i64> {
    let (_, t) = name.rsplit_once('-')?;
    let t: i64 = t.parse().ok()?;
    // Names end with seconds since the epoch; anything shorter is some other number.
    (t > 1_000_000_000).then_some(t)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "create",
        path: dir.to_owned(),
        source,
    })?;
    // Snapshots hold the cluster's Secrets (sealed or encrypted where configured) and its
    // sealed CA: owner only, like the database directory.
    let _ = set_mode(dir, 0o700);
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Makes a rename durable; best effort (some filesystems cannot sync a directory).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with(dir: &Path, n: usize) -> (PathBuf, Store) {
        let db = dir.join("db/state.db");
        let store = Store::open(&Endpoint::sqlite(db.clone()), &PoolConfig::default())
            .await
            .unwrap();
        for i in 0..n {
            store
                .create(&format!("/registry/configmaps/default/c{i}"), b"{}")
                .await
                .unwrap();
        }
        (db, store)
    }

    #[tokio::test]
    async fn a_snapshot_is_the_database_as_of_one_commit_and_restores_with_revisions_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = store_with(dir.path(), 5).await;
        let snaps = Snapshots::new(dir.path().join("snaps"));
        let snap = snaps.save(&db, ON_DEMAND_PREFIX, "pi-1").await.unwrap();
        assert!(snap.name.starts_with("on-demand-pi-1-"), "{}", snap.name);
        // Written after the snapshot: gone after the restore.
        store
            .create("/registry/configmaps/default/late", b"{}")
            .await
            .unwrap();
        let live = store.current_revision().await.unwrap();
        store.close().await;

        let restored = restore(&db, &snap.path, 10, |_| async { Ok(()) })
            .await
            .unwrap();
        assert_eq!(restored.objects, 5);
        assert_eq!(restored.marked.from, 5);
        // Past the live database (6), by the bump from the snapshot's 5.
        assert_eq!(restored.marked.to, 15);
        assert!(live < restored.marked.to);
        let previous = restored.previous.unwrap();
        assert!(previous.is_file(), "the replaced database is kept");

        let store = Store::open(&Endpoint::sqlite(db.clone()), &PoolConfig::default())
            .await
            .unwrap();
        assert!(
            store
                .get("/registry/configmaps/default/late")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.current_revision().await.unwrap(), 15);
        assert_eq!(store.compacted_revision().await.unwrap(), 15);
        assert_eq!(store.restore_epoch().await.unwrap(), 1);
        // Every pre-restore revision is refused as compacted; new writes continue at 16.
        assert!(matches!(
            store.events_after(live, 10).await,
            Err(super::super::Error::Compacted { .. })
        ));
        let rev = store
            .create("/registry/configmaps/default/new", b"{}")
            .await
            .unwrap();
        assert_eq!(rev, 16);
        assert_eq!(store.events_after(15, 10).await.unwrap().len(), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn a_refused_restore_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = store_with(dir.path(), 3).await;
        let snaps = Snapshots::new(dir.path().join("snaps"));
        let snap = snaps.save(&db, "manual", "n").await.unwrap();
        store.create("/registry/x/y", b"{}").await.unwrap();
        store.close().await;
        let before = std::fs::read(&db).unwrap();
        let err = restore(&db, &snap.path, 10, |_| async {
            Err("the token does not open it".to_owned())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert_eq!(std::fs::read(&db).unwrap(), before);
        let leftovers: Vec<_> = std::fs::read_dir(db.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("restore"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Not a database at all.
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"hello").unwrap();
        let err = restore(&db, &junk, 10, |_| async { Ok(()) })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotASnapshot { .. }), "{err}");
        assert_eq!(std::fs::read(&db).unwrap(), before);
    }

    #[tokio::test]
    async fn a_running_server_blocks_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = store_with(dir.path(), 1).await;
        let snap = Snapshots::new(dir.path().join("s"))
            .save(&db, "x", "n")
            .await
            .unwrap();
        let lock = ServerLock::acquire(&db).unwrap();
        let err = restore(&db, &snap.path, 10, |_| async { Ok(()) })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::ServerRunning { pid, .. } if *pid == std::process::id().to_string()),
            "{err}"
        );
        drop(lock);
        store.close().await;
        restore(&db, &snap.path, 10, |_| async { Ok(()) })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_of_one_prefix_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::new(dir.path().to_owned());
        for (name, _) in [
            ("keelson-snapshot-a-1700000001", ()),
            ("keelson-snapshot-a-1700000003", ()),
            ("keelson-snapshot-a-1700000002", ()),
            ("keelson-snapshot-b-1700000000", ()),
            ("on-demand-a-1600000000", ()),
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let deleted = snaps.prune(SCHEDULED_PREFIX, "a", 2).unwrap();
        assert_eq!(deleted, ["keelson-snapshot-a-1700000001"]);
        let left: Vec<String> = snaps.list().unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(
            left,
            [
                "on-demand-a-1600000000",
                "keelson-snapshot-b-1700000000",
                "keelson-snapshot-a-1700000002",
                "keelson-snapshot-a-1700000003"
            ]
        );
        assert!(matches!(
            snaps.delete("../etc/passwd"),
            Err(Error::BadName(_))
        ));
        assert!(matches!(
            snaps.delete("nope"),
            Err(Error::NoSnapshot { .. })
        ));
    }

    #[tokio::test]
    async fn a_server_older_than_the_schema_allows_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = store_with(dir.path(), 1).await;
        store.close().await;
        let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let ours = super::super::schema::VERSION;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE keelson_meta SET value = {} WHERE name = 'schema'",
            ours + 2
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO keelson_meta (name, value) VALUES ('schema_min', {})",
            ours + 1
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        let err = match Store::open(&Endpoint::sqlite(db.clone()), &PoolConfig::default()).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a server older than the schema allows opened it"),
        };
        assert!(
            err.contains(&format!("version {}", ours + 2))
                && err.contains(&format!("schema version {ours}")),
            "{err}"
        );
        // One version behind is fine.
        let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE keelson_meta SET value = {ours} WHERE name = 'schema_min'"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        Store::open(&Endpoint::sqlite(db), &PoolConfig::default())
            .await
            .unwrap()
            .close()
            .await;
    }
}
