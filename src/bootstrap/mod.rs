//! Cluster trust: the join token, the cluster CA, and the sealed cluster data in the datastore.
//!
//! The first server of a cluster generates the CA (and a token if none was given), seals the
//! cluster data with a key derived from the token secret and stores it; every later start
//! (and every other server) must open it with the same secret. The token itself is never
//! stored in the datastore. Invariant: a server whose token does not open the stored data
//! writes nothing.

pub mod encryption;
pub mod join;
pub mod kubeconfig;
pub mod pki;
pub mod seal;
pub mod settings;
pub mod token;

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
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
    /// The PKCS#8 P-256 key that signs service account tokens (the same on every server).
    pub service_account_key: Vec<u8>,
}

/// The cluster data as sealed in the datastore. Versioned so later releases can add fields.
#[derive(Serialize, Deserialize)]
struct ClusterData {
    version: u32,
    ca_common_name: String,
    ca_cert: String,
    ca_key: String,
    /// Base64 PKCS#8 of the service account token key. Absent in data sealed before tokens
    /// existed: the first server to open such data adds one (see [`bootstrap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service_account_key: Option<String>,
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
            let cluster = open_or_upgrade(store, &sealed, token).await?;
            check_settings(store, ours).await?;
            cluster
        }
        None => {
            check_settings(store, ours).await?;
            let token = token.unwrap_or_else(Token::generate);
            let ca = ClusterCa::generate()?;
            let service_account_key = generate_service_account_key()?;
            let data = ClusterData {
                version: 1,
                ca_common_name: ca.common_name.clone(),
                ca_cert: ca.cert_pem.clone(),
                ca_key: ca.key_pem(),
                service_account_key: Some(BASE64.encode(&service_account_key)),
            };
            // Serialising a struct of strings cannot fail.
            let plain = serde_json::to_vec(&data).expect("cluster data serialises");
            let sealed = seal::seal(&token.secret, &plain);
            if store.insert_secret(CLUSTER_SECRET, &sealed).await? {
                tracing::info!("created the cluster CA and service account key");
                check_ca_hash(&token, &ca.cert_pem)?;
                let token = token.secure(&ca.cert_pem, "server");
                Cluster {
                    ca,
                    token,
                    service_account_key,
                }
            } else {
                // Another server won the race: use its data, like any later server.
                let sealed = store.secret(CLUSTER_SECRET).await?.ok_or_else(|| {
                    Error::Corrupt("the cluster data vanished after a concurrent insert".into())
                })?;
                open_or_upgrade(store, &sealed, token).await?
            }
        }
    };
    write_private(token_file, format!("{}\n", cluster.token).as_bytes(), 0o600)?;
    Ok(cluster)
}

/// Whether `token` opens the cluster data in `store` (a snapshot being restored): the same
/// check a starting server makes, without writing anything.
pub async fn check_token(store: &Store, token: &Token) -> Result<()> {
    let sealed = store.secret(CLUSTER_SECRET).await?.ok_or_else(|| {
        Error::Corrupt(
            "it holds no cluster data (a snapshot of a server that never started?)".into(),
        )
    })?;
    let data = open_data(&sealed, token)?;
    check_ca_hash(token, &data.ca_cert)
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

/// Opens the sealed cluster data; data sealed before service account tokens existed gets a
/// key added (sealed again and swapped in only if the row is still what was read, so two
/// servers upgrading at once agree on one key). Everything else in the data is kept as it was.
async fn open_or_upgrade(store: &Store, sealed: &[u8], token: Token) -> Result<Cluster> {
    let mut sealed = sealed.to_vec();
    // Twice at most: a lost swap means another server added a key, which the second read has.
    for _ in 0..2 {
        let mut data = open_data(&sealed, &token)?;
        let key = match &data.service_account_key {
            Some(k) => BASE64
                .decode(k)
                .map_err(|e| Error::Corrupt(format!("service account key: {e}")))?,
            None => {
                check_ca_hash(&token, &data.ca_cert)?;
                let key = generate_service_account_key()?;
                data.service_account_key = Some(BASE64.encode(&key));
                // Serialising a struct of strings cannot fail.
                let plain = serde_json::to_vec(&data).expect("cluster data serialises");
                let resealed = seal::seal(&token.secret, &plain);
                if !store
                    .replace_secret(CLUSTER_SECRET, &sealed, &resealed)
                    .await?
                {
                    sealed = store.secret(CLUSTER_SECRET).await?.ok_or_else(|| {
                        Error::Corrupt("the cluster data vanished while adding a key".into())
                    })?;
                    continue;
                }
                tracing::info!("added a service account token key to the cluster data");
                key
            }
        };
        let ca = ClusterCa::from_parts(data.ca_common_name, data.ca_cert, &data.ca_key)?;
        check_ca_hash(&token, &ca.cert_pem)?;
        let token = token.secure(&ca.cert_pem, "server");
        return Ok(Cluster {
            ca,
            token,
            service_account_key: key,
        });
    }
    Err(Error::Corrupt(
        "the cluster data kept changing while a service account key was added".into(),
    ))
}

fn open_data(sealed: &[u8], token: &Token) -> Result<ClusterData> {
    let plain = seal::open(&token.secret, sealed).map_err(|e| match e {
        seal::Error::WrongToken => Error::WrongToken,
        seal::Error::Malformed(m) => Error::Corrupt(m.into()),
    })?;
    serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(e.to_string()))
}

/// A PKCS#8 P-256 key for ES256 service account tokens.
fn generate_service_account_key() -> Result<Vec<u8>> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .map(|k| k.as_ref().to_vec())
    .map_err(|_| Error::Corrupt("cannot generate the service account key".into()))
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
///
/// The temporary file `<path>.tmp` is created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`) with
/// `mode` and set to exactly `mode` before anything is written, so the final file has its mode
/// from the moment it exists, and nothing already at `<path>.tmp` is ever written through: a
/// regular file (left by a crash) is removed and the exclusive create retried once; anything
/// else there (a symbolic link, a directory) is refused.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let tmp_io = |action, source| Error::Io {
        action,
        path: tmp.clone(),
        source,
    };
    let mut f = match create_exclusive(&tmp, mode) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let stale = std::fs::symlink_metadata(&tmp).map_err(|e| tmp_io("inspect", e))?;
            if !stale.file_type().is_file() {
                return Err(tmp_io(
                    "write",
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "something other than a regular file (a symbolic link?) is in the way; \
                         refusing to write through it: remove it",
                    ),
                ));
            }
            // A regular file left by a crash. unlink() removes whatever is at the path now,
            // never what a link points to, and the retry is exclusive again.
            std::fs::remove_file(&tmp).map_err(|e| tmp_io("remove the stale", e))?;
            create_exclusive(&tmp, mode).map_err(|e| tmp_io("create", e))?
        }
        other => other.map_err(|e| tmp_io("create", e))?,
    };
    // The umask may have narrowed `mode`; a requested 0644 kubeconfig must end up 0644.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| tmp_io("chmod", e))?;
    f.write_all(contents).map_err(|e| tmp_io("write", e))?;
    f.sync_all().map_err(|e| tmp_io("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("write", e))?;
    Ok(())
}

/// Creates `path` with `mode`, failing if anything (even a dangling link) is there.
fn create_exclusive(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(
            &crate::datastore::Endpoint::sqlite(dir.path().join("s.db")),
            &crate::datastore::PoolConfig::default(),
        )
        .await
        .unwrap()
    }

    /// Cluster data sealed before service account tokens existed gets a key, keeps its CA,
    /// and every later open (any server) finds the same key.
    #[tokio::test]
    async fn an_old_cluster_gets_one_service_account_key_and_keeps_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let token = Token::generate();
        let ca = ClusterCa::generate().unwrap();
        let old = serde_json::json!({
            "version": 1,
            "ca_common_name": ca.common_name,
            "ca_cert": ca.cert_pem,
            "ca_key": ca.key_pem(),
        });
        let sealed = seal::seal(&token.secret, &serde_json::to_vec(&old).unwrap());
        assert!(store.insert_secret(CLUSTER_SECRET, &sealed).await.unwrap());

        let first = open_or_upgrade(&store, &sealed, token.clone())
            .await
            .unwrap();
        assert_eq!(first.ca.cert_pem, ca.cert_pem, "the CA is kept");
        assert!(!first.service_account_key.is_empty());
        let now = store.secret(CLUSTER_SECRET).await.unwrap().unwrap();
        assert_ne!(now, sealed, "the key was sealed into the cluster data");
        // A second server that read the old row before the upgrade loses the swap and
        // takes the stored key.
        let second = open_or_upgrade(&store, &sealed, token.clone())
            .await
            .unwrap();
        assert_eq!(second.service_account_key, first.service_account_key);
        let third = open_or_upgrade(&store, &now, token).await.unwrap();
        assert_eq!(third.service_account_key, first.service_account_key);
    }

    #[test]
    fn a_private_file_is_0600_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node-password");
        write_private(&path, b"one", 0o600).unwrap();
        write_private(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        write_private(&path, b"three", 0o644).unwrap();
        assert_eq!(mode(&path), 0o644, "an explicitly wider mode is kept");
        assert!(!dir.path().join("sub/node-password.tmp").exists());
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_path_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("client-node.key");
        std::os::unix::fs::symlink(&victim, dir.path().join("client-node.key.tmp")).unwrap();

        let err = write_private(&path, b"secret key", 0o600).unwrap_err();
        assert!(err.to_string().contains("client-node.key.tmp"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(mode(&victim), 0o644);
        assert!(!path.exists(), "nothing was written");

        // A dangling link (to where a file would be created) is refused the same way.
        let absent = dir.path().join("absent");
        std::fs::remove_file(dir.path().join("client-node.key.tmp")).unwrap();
        std::os::unix::fs::symlink(&absent, dir.path().join("client-node.key.tmp")).unwrap();
        assert!(write_private(&path, b"secret key", 0o600).is_err());
        assert!(!absent.exists(), "the link's target was created");
    }

    #[test]
    fn a_stale_temporary_file_from_a_crash_is_replaced_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let tmp = dir.path().join("token.tmp");
        std::fs::write(&tmp, "half a token and more old bytes").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        // A second name for the stale file: had it been reused, this would see the secret.
        std::fs::hard_link(&tmp, dir.path().join("observer")).unwrap();

        write_private(&path, b"K10abc::server:secret\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"K10abc::server:secret\n");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("observer")).unwrap(),
            "half a token and more old bytes"
        );
        assert!(!tmp.exists());
    }
}
