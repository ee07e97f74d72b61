//! Cluster trust: the join token, the cluster CA, and the sealed cluster data in the datastore.
//!
//! The first server of a cluster generates the CA (and a token if none was given), seals the
//! cluster data with a key derived from the token secret and stores it; every later start
//! (and every other server) must open it with the same secret. The token itself is never
//! stored in the datastore. Invariant: a server whose token does not open the stored data
//! writes nothing.

pub mod join;
pub mod kubeconfig;
pub mod pki;
pub mod seal;
pub mod settings;
pub mod token;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::datastore::{self, Store};
pub use pki::ClusterCa;
pub use settings::ClusterSettings;
pub use token::Token;

/// Name of the row in `keelson_secrets` that holds the sealed cluster data.
const CLUSTER_SECRET: &str = "cluster";
/// Name of the row that records the cluster-wide settings (not secret, not sealed).
const SETTINGS: &str = "settings";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Token(#[from] token::Error),
    #[error(
        "the datastore already holds a cluster, but no token was given: pass --token or --token-file \
         with the token from the first server's {0}"
    )]
    NoToken(String),
    #[error(
        "refusing to start: the token does not open the cluster data in the datastore (the datastore belongs to a cluster with a different token); nothing was written"
    )]
    WrongToken,
    #[error(
        "refusing to start: the token's CA hash {given} does not match the cluster CA's {actual}; \
         the token belongs to another cluster"
    )]
    CaMismatch { given: String, actual: String },
    #[error(
        "refusing to start: this server's settings differ from the cluster's; nothing was written:\n  {}",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    SettingsMismatch(Vec<settings::Mismatch>),
    #[error("the sealed cluster data is unusable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Datastore(#[from] datastore::Error),
    #[error(transparent)]
    Pki(#[from] pki::Error),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cluster's trust material, opened from the datastore.
pub struct Cluster {
    pub ca: ClusterCa,
    /// The server token in its secure (K10) form.
    pub token: Token,
}

/// The cluster data as sealed in the datastore. Versioned so later releases can add fields.
#[derive(Serialize, Deserialize)]
struct ClusterData {
    version: u32,
    ca_common_name: String,
    ca_cert: String,
    ca_key: String,
}

/// Opens the cluster data with `given` (or the token file), or creates it on a fresh
/// datastore; checks this server's settings against the cluster's; then writes the secure
/// token to `token_file`. On any refusal nothing has been written.
pub async fn bootstrap(
    store: &Store,
    given: Option<Token>,
    token_file: &Path,
    ours: &ClusterSettings,
) -> Result<Cluster> {
    let token = match given {
        Some(t) => Some(t),
        None => read_token_file(token_file)?,
    };
    let cluster = match store.secret(CLUSTER_SECRET).await? {
        Some(sealed) => {
            let token = token.ok_or_else(|| Error::NoToken(token_file.display().to_string()))?;
            let cluster = open(&sealed, token)?;
            check_settings(store, ours).await?;
            cluster
        }
        None => {
            check_settings(store, ours).await?;
            let token = token.unwrap_or_else(Token::generate);
            let ca = ClusterCa::generate()?;
            let data = ClusterData {
                version: 1,
                ca_common_name: ca.common_name.clone(),
                ca_cert: ca.cert_pem.clone(),
                ca_key: ca.key_pem(),
            };
            // Serialising a struct of strings cannot fail.
            let plain = serde_json::to_vec(&data).expect("cluster data serialises");
            let sealed = seal::seal(&token.secret, &plain);
            if store.insert_secret(CLUSTER_SECRET, &sealed).await? {
                tracing::info!("created the cluster CA");
                check_ca_hash(&token, &ca.cert_pem)?;
                let token = token.secure(&ca.cert_pem, "server");
                Cluster { ca, token }
            } else {
                // Another server won the race: use its data, like any later server.
                let sealed = store.secret(CLUSTER_SECRET).await?.ok_or_else(|| {
                    Error::Corrupt("the cluster data vanished after a concurrent insert".into())
                })?;
                open(&sealed, token)?
            }
        }
    };
    write_private(token_file, format!("{}\n", cluster.token).as_bytes(), 0o600)?;
    Ok(cluster)
}

/// Records `ours` if the cluster has no settings yet, else compares.
async fn check_settings(store: &Store, ours: &ClusterSettings) -> Result<()> {
    let stored = match store.secret(SETTINGS).await? {
        Some(raw) => raw,
        None => {
            // Serialising a struct of strings cannot fail.
            let raw = serde_json::to_vec(ours).expect("settings serialise");
            if store.insert_secret(SETTINGS, &raw).await? {
                return Ok(());
            }
            store.secret(SETTINGS).await?.ok_or_else(|| {
                Error::Corrupt("the cluster settings vanished after a concurrent insert".into())
            })?
        }
    };
    let cluster: ClusterSettings = serde_json::from_slice(&stored)
        .map_err(|e| Error::Corrupt(format!("cluster settings: {e}")))?;
    let mismatches = ours.mismatches(&cluster);
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(Error::SettingsMismatch(mismatches))
    }
}

fn open(sealed: &[u8], token: Token) -> Result<Cluster> {
    let plain = seal::open(&token.secret, sealed).map_err(|e| match e {
        seal::Error::WrongToken => Error::WrongToken,
        seal::Error::Malformed(m) => Error::Corrupt(m.into()),
    })?;
    let data: ClusterData =
        serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(e.to_string()))?;
    let ca = ClusterCa::from_parts(data.ca_common_name, data.ca_cert, &data.ca_key)?;
    check_ca_hash(&token, &ca.cert_pem)?;
    let token = token.secure(&ca.cert_pem, "server");
    Ok(Cluster { ca, token })
}

fn check_ca_hash(token: &Token, ca_pem: &str) -> Result<()> {
    let actual = token::ca_hash(ca_pem);
    match token.ca_hash {
        Some(given) if given != actual => Err(Error::CaMismatch {
            given: hex::encode(given),
            actual: hex::encode(actual),
        }),
        _ => Ok(()),
    }
}

fn read_token_file(path: &Path) -> Result<Option<Token>> {
    match std::fs::read_to_string(path) {
        Ok(raw) => Ok(Some(Token::parse(
            &raw,
            &format!("token file {}", path.display()),
        )?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a file atomically (temp file + rename) with `mode`, creating parent directories.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("write", e))?;
    f.write_all(contents).map_err(|e| io("write", e))?;
    // The umask may have narrowed `mode`; a requested 0644 kubeconfig must end up 0644.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("write", e))?;
    Ok(())
}
