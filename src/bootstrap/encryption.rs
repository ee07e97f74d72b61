//! Secrets encrypted at rest (`--secrets-encryption`, K3s's flag): the whole stored Secret —
//! data, annotations (kubectl's last-applied copy holds the plaintext too), everything — is
//! AES-256-GCM ciphertext, as kube-apiserver's `aesgcm` provider stores it.
//!
//! The keys live in their own datastore row, sealed with the token like the cluster data, so
//! only servers holding the token can read Secrets, and a database dump alone reveals nothing.
//! Stored layout: `k8s:enc:aesgcm:v1:<key name>:` | nonce (12) | ciphertext+tag, with the
//! object's datastore path as associated data, so a ciphertext cannot be moved to another
//! object. Invariant: a stored value without the prefix is plaintext (written before
//! encryption was on) and is read as it is; everything written while it is on is encrypted
//! with the active key.
//!
//! Rotation (`keelson secrets-encrypt rotate-keys`) with every server running: a new key is
//! added to the keys row and made active with a compare-and-swap on the row, keeping the keys
//! stored Secrets still use; an announcement object written through the change feed makes
//! every server reload the row at once; then every Secret is re-encrypted with compare-and-swap
//! writes. A server that meets a key it does not know (it missed the announcement) reloads the
//! row before it gives up. Invariant: a key is dropped from the row only while no stored
//! Secret names it, and never the previous active one (a server that has not reloaded yet
//! may still write with it).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::seal;
use crate::datastore::{self, Store, feed::Feed};

/// The datastore row (`keelson_secrets`) holding the sealed keys.
const KEYS_ROW: &str = "secrets-encryption";
const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";
/// The object whose every write tells every server to reload the keys row (outside every API
/// resource's prefix; it holds the active key's name and the key-set hash, never a key).
pub const ANNOUNCEMENT: &str = "/registry/keelson.io/secrets-encryption/announcement";
/// Where each server records the hash of the keys it holds, by node name.
pub const SERVER_HASHES: &str = "/registry/keelson.io/secrets-encryption/servers/";
/// A read that meets an unknown key reloads the row at most this often, so a Secret naming a
/// key nobody has cannot make every read cost a query and a key derivation.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts at the keys row's compare-and-swap before a rotation gives up under contention.
const ROW_ATTEMPTS: usize = 16;
/// Attempts at re-encrypting one Secret that keeps changing under the rotation.
const WRITE_ATTEMPTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Datastore(#[from] datastore::Error),
    #[error("the secrets-encryption keys in the datastore do not open with this token")]
    WrongToken,
    #[error("the secrets-encryption keys in the datastore are malformed: {0}")]
    Corrupt(String),
    #[error("a stored Secret is encrypted with key {0:?}, which this cluster does not have")]
    UnknownKey(String),
    #[error("a stored Secret does not decrypt: it was altered, or moved from another object")]
    Tampered,
    #[error(
        "the secrets-encryption keys row changed under {ROW_ATTEMPTS} attempts in a row; another rotation is running: try again when it is done"
    )]
    Contended,
    #[error("a key rotation is already running on this server; wait for it to finish")]
    RotationRunning,
}

#[derive(Clone, Serialize, Deserialize)]
struct Keys {
    version: u32,
    /// Name of the key new writes use.
    active: String,
    keys: Vec<NamedKey>,
}

#[derive(Clone, Serialize, Deserialize)]
struct NamedKey {
    name: String,
    /// 32 bytes, base64.
    secret: String,
}

/// The cluster's Secret keys, opened, and reloadable while the server runs.
pub struct Encryption {
    /// Opens and seals the keys row; the server token's secret.
    token_secret: String,
    /// The keys as last loaded. A std lock: held only to clone or swap the `Arc`, never across
    /// an await.
    current: RwLock<Arc<KeySet>>,
    /// When a read that met an unknown key last reloaded (see [`LOOKUP_INTERVAL`]).
    last_lookup: Mutex<Option<Instant>>,
    /// Held by this server's rotation from its start to its last pass.
    rotation: tokio::sync::Mutex<()>,
}

/// One loaded version of the keys row.
struct KeySet {
    /// The sealed row these keys came from: a reload that finds the same bytes skips the
    /// (deliberately slow) key derivation.
    sealed: Vec<u8>,
    /// The row, opened, for rotation to extend.
    row: Keys,
    /// Index of the key new writes use. Invariant: a valid index of `keys`.
    active: usize,
    keys: Vec<(String, LessSafeKey)>,
    /// Fingerprint of the row's keys: servers showing equal hashes hold the same keys.
    hash: String,
}

/// What a server holds, for `secrets-encrypt status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub active: String,
    pub keys: Vec<String>,
    pub hash: String,
}

/// The outcome of one re-encryption pass.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pass {
    /// Secrets rewritten under the active key.
    pub rewritten: usize,
    /// Writes that lost a compare-and-swap to another writer and were redone.
    pub retried: usize,
    /// Secrets that could not be re-encrypted (they do not decrypt), by datastore path.
    pub unreadable: Vec<String>,
}

// === impl Encryption ===

impl Encryption {
    /// Opens the cluster's keys with the token secret, creating the first key if there is
    /// none (the first server with the flag; concurrent first starts agree on one row).
    pub async fn load_or_create(store: &Store, token_secret: &str) -> Result<Encryption, Error> {
        let sealed = match store.secret(KEYS_ROW).await? {
            Some(sealed) => sealed,
            None => {
                let keys = Keys {
                    version: 1,
                    active: "key1".into(),
                    keys: vec![NamedKey::generate("key1")],
                };
                let sealed = seal::seal(token_secret, &keys.to_json());
                if !store.insert_secret(KEYS_ROW, &sealed).await? {
                    tracing::debug!("another server created the secrets-encryption key first");
                }
                store.secret(KEYS_ROW).await?.ok_or_else(|| {
                    Error::Corrupt("the keys vanished after a concurrent insert".into())
                })?
            }
        };
        let set = KeySet::open(token_secret, sealed)?;
        Ok(Encryption::with(token_secret, set))
    }

    fn with(token_secret: &str, set: KeySet) -> Encryption {
        Encryption {
            token_secret: token_secret.to_owned(),
            current: RwLock::new(Arc::new(set)),
            last_lookup: Mutex::new(None),
            rotation: tokio::sync::Mutex::new(()),
        }
    }

    fn keys(&self) -> Arc<KeySet> {
        // The lock guards a plain `Arc` swap; a panic elsewhere cannot leave it half-written.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn install(&self, set: KeySet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// The stored form of `plain`, the object at datastore `path`.
    pub fn encrypt(&self, path: &str, plain: &[u8]) -> Vec<u8> {
        self.keys().encrypt(path, plain)
    }

    /// The active key, the key names and the key-set hash this server holds now.
    pub fn summary(&self) -> Summary {
        let set = self.keys();
        Summary {
            active: set.keys[set.active].0.clone(),
            keys: set.keys.iter().map(|(n, _)| n.clone()).collect(),
            hash: set.hash.clone(),
        }
    }

    /// Whether `stored` is plaintext or names a key this server holds.
    pub fn knows(&self, stored: &[u8]) -> bool {
        match key_name(stored) {
            None => true,
            Some(name) => self.keys().keys.iter().any(|(n, _)| *n == name),
        }
    }

    /// Reads the keys row again and takes it if it changed; returns whether it did.
    pub async fn reload(&self, store: &Store) -> Result<bool, Error> {
        let Some(sealed) = store.secret(KEYS_ROW).await? else {
            return Err(Error::Corrupt("the keys row is gone".into()));
        };
        if sealed == self.keys().sealed {
            return Ok(false);
        }
        let secret = self.token_secret.clone();
        // The key derivation takes a CPU for a while: off the async workers.
        let set = tokio::task::spawn_blocking(move || KeySet::open(&secret, sealed))
            .await
            .map_err(|e| Error::Corrupt(format!("opening the keys failed: {e}")))??;
        let active = set.keys[set.active].0.clone();
        self.install(set);
        tracing::info!(active_key = %active, "loaded the secrets-encryption keys anew");
        Ok(true)
    }

    /// Reloads the keys row if any of `stored` names a key this server does not hold (another
    /// server rotated and this one has not heard yet), at most once per [`LOOKUP_INTERVAL`].
    pub async fn learn<'a>(&self, store: &Store, mut stored: impl Iterator<Item = &'a [u8]>) {
        if stored.all(|v| self.knows(v)) {
            return;
        }
        {
            let mut last = self.last_lookup.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < LOOKUP_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.reload(store).await {
            tracing::warn!(error = %e, "a Secret names an unknown key and the keys could not be reloaded");
        }
    }

    /// Adds a new key and makes it active, keeping the previous active key and every key in
    /// `in_use` (named by a stored Secret); drops the others. A compare-and-swap on the row,
    /// so two rotations at once both land, one after the other. Returns the new key's name.
    pub async fn add_key(&self, store: &Store, in_use: &BTreeSet<String>) -> Result<String, Error> {
        for _ in 0..ROW_ATTEMPTS {
            let Some(sealed) = store.secret(KEYS_ROW).await? else {
                return Err(Error::Corrupt("the keys row is gone".into()));
            };
            let secret = self.token_secret.clone();
            let in_use = in_use.clone();
            let current = sealed.clone();
            // Opening and sealing each derive a key: off the async workers.
            let (name, next) = tokio::task::spawn_blocking(move || {
                let row = KeySet::open(&secret, current)?.row;
                let (name, next) = row.rotated(&in_use);
                let sealed_next = seal::seal(&secret, &next.to_json());
                Ok::<_, Error>((name, KeySet::from_row(sealed_next, next)?))
            })
            .await
            .map_err(|e| Error::Corrupt(format!("rotating the keys failed: {e}")))??;
            if store
                .replace_secret(KEYS_ROW, &sealed, &next.sealed)
                .await?
            {
                tracing::info!(active_key = %name, keys = next.keys.len(), "added a secrets-encryption key and made it active");
                self.install(next);
                return Ok(name);
            }
        }
        Err(Error::Contended)
    }

    /// Tells every server to reload the keys row, through the change feed.
    pub async fn announce(&self, store: &Store) -> Result<(), Error> {
        let s = self.summary();
        let value = serde_json::json!({"active": s.active, "hash": s.hash}).to_string();
        put(store, ANNOUNCEMENT, value.as_bytes()).await
    }

    /// Records that the server of node `node` holds the keys it holds now.
    pub async fn record_hash(&self, store: &Store, node: &str) -> Result<(), Error> {
        let s = self.summary();
        let value =
            serde_json::json!({"node": node, "active": s.active, "hash": s.hash}).to_string();
        put(store, &format!("{SERVER_HASHES}{node}"), value.as_bytes()).await
    }

    /// Takes this server's rotation slot, or says one is running.
    pub fn begin_rotation(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, Error> {
        self.rotation.try_lock().map_err(|_| Error::RotationRunning)
    }

    /// Rewrites every object under `prefix` that is not under the active key (plaintext from
    /// before encryption, or an older key) with a compare-and-swap on its revision: a Secret
    /// changed meanwhile is read again and its new content re-encrypted, never overwritten.
    /// Each rewrite is an ordinary write (a new revision, a MODIFIED event), so watches and
    /// caches stay consistent.
    pub async fn reencrypt(&self, store: &Store, prefix: &str) -> Result<Pass, Error> {
        let (_, records) = store.list(prefix).await?;
        let mut pass = Pass::default();
        for mut rec in records {
            for attempt in 0.. {
                let set = self.keys();
                if key_name(&rec.value).as_deref() == Some(set.keys[set.active].0.as_str()) {
                    break;
                }
                let plain = match decrypt_set(Some(&set), &rec.path, &rec.value) {
                    Ok(plain) => plain.into_owned(),
                    // Written by a server that rotated after this pass began: learn its key.
                    Err(Error::UnknownKey(_)) if attempt == 0 => {
                        self.reload(store).await?;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(path = %rec.path, error = %e, "cannot re-encrypt a Secret");
                        pass.unreadable.push(rec.path.clone());
                        break;
                    }
                };
                let stored = set.encrypt(&rec.path, &plain);
                match store.update(&rec.path, Some(rec.revision), &stored).await {
                    Ok(_) => {
                        pass.rewritten += 1;
                        break;
                    }
                    Err(datastore::Error::NotFound(_)) => break,
                    Err(datastore::Error::Conflict { .. }) if attempt + 1 < WRITE_ATTEMPTS => {
                        pass.retried += 1;
                        match store.get(&rec.path).await? {
                            Some(now) => rec = now,
                            None => break,
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(pass)
    }

    /// Reloads the keys whenever a server announces a rotation, until `shutdown`; records
    /// this server's key-set hash (as node `node`) at start and after every reload.
    pub async fn follow(
        self: Arc<Self>,
        store: Store,
        feed: Feed,
        node: String,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            // A reload and a fresh subscription also after a broken one: an announcement
            // missed meanwhile is caught by the reload.
            if let Err(e) = self.reload(&store).await {
                tracing::warn!(error = %e, "cannot reload the secrets-encryption keys");
            }
            if let Err(e) = self.record_hash(&store, &node).await {
                tracing::warn!(error = %e, "cannot record this server's secrets-encryption hash");
            }
            let mut sub = match feed.subscribe(feed.latest()).await {
                Ok(sub) => sub,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot follow key rotations yet");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let ev = tokio::select! {
                    _ = &mut shutdown => return,
                    ev = sub.next() => ev,
                };
                match ev {
                    Ok(ev) if ev.path == ANNOUNCEMENT => match self.reload(&store).await {
                        Ok(_) => {
                            if let Err(e) = self.record_hash(&store, &node).await {
                                tracing::warn!(error = %e, "cannot record this server's secrets-encryption hash");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reload the secrets-encryption keys")
                        }
                    },
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "the key-rotation follower resubscribes");
                        break;
                    }
                }
            }
        }
    }
}

// === impl KeySet ===

impl KeySet {
    fn open(token_secret: &str, sealed: Vec<u8>) -> Result<KeySet, Error> {
        let plain = seal::open(token_secret, &sealed).map_err(|e| match e {
            seal::Error::WrongToken => Error::WrongToken,
            seal::Error::Malformed(m) => Error::Corrupt(m.into()),
        })?;
        let row: Keys =
            serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(e.to_string()))?;
        KeySet::from_row(sealed, row)
    }

    fn from_row(sealed: Vec<u8>, row: Keys) -> Result<KeySet, Error> {
        let mut opened = Vec::new();
        for k in &row.keys {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&k.secret)
                .map_err(|e| Error::Corrupt(format!("key {}: {e}", k.name)))?;
            let key = UnboundKey::new(&AES_256_GCM, &raw)
                .map_err(|_| Error::Corrupt(format!("key {} is not 32 bytes", k.name)))?;
            opened.push((k.name.clone(), LessSafeKey::new(key)));
        }
        let active = opened
            .iter()
            .position(|(n, _)| *n == row.active)
            .ok_or_else(|| Error::Corrupt(format!("the active key {:?} is missing", row.active)))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &row.to_json());
        Ok(KeySet {
            sealed,
            row,
            active,
            keys: opened,
            hash: hex::encode(&digest.as_ref()[..8]),
        })
    }

    fn encrypt(&self, path: &str, plain: &[u8]) -> Vec<u8> {
        let (name, key) = &self.keys[self.active];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("system random number generator failed");
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(path.as_bytes()),
            &mut body,
        )
        // Only fails beyond GCM's ~64 GiB message limit; objects are bounded to 1.5 MiB.
        .expect("encryption failed");
        let mut out = Vec::with_capacity(PREFIX.len() + name.len() + 1 + NONCE_LEN + body.len());
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out
    }
}

// === impl Keys ===

impl Keys {
    fn to_json(&self) -> Vec<u8> {
        // Serialising strings cannot fail.
        serde_json::to_vec(self).expect("keys serialise")
    }

    /// The row with a fresh key, active, after the active one and the ones in `in_use`;
    /// and the fresh key's name (`key<N+1>`, N the highest number used so far).
    fn rotated(&self, in_use: &BTreeSet<String>) -> (String, Keys) {
        let highest = self
            .keys
            .iter()
            .filter_map(|k| k.name.strip_prefix("key")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let name = format!("key{}", highest + 1);
        let mut keys: Vec<NamedKey> = self
            .keys
            .iter()
            .filter(|k| k.name == self.active || in_use.contains(&k.name))
            .cloned()
            .collect();
        keys.push(NamedKey::generate(&name));
        let next = Keys {
            version: self.version,
            active: name.clone(),
            keys,
        };
        (name, next)
    }
}

// === impl NamedKey ===

impl NamedKey {
    fn generate(name: &str) -> NamedKey {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("system random number generator failed");
        NamedKey {
            name: name.into(),
            secret: base64::engine::general_purpose::STANDARD.encode(key),
        }
    }
}

/// The name of the key `stored` is encrypted with; `None` for plaintext.
pub fn key_name(stored: &[u8]) -> Option<String> {
    let rest = stored.strip_prefix(PREFIX)?;
    let colon = rest.iter().position(|b| *b == b':')?;
    Some(String::from_utf8_lossy(&rest[..colon]).into_owned())
}

/// Creates or replaces a small bookkeeping object.
async fn put(store: &Store, path: &str, value: &[u8]) -> Result<(), Error> {
    match store.create(path, value).await {
        Err(datastore::Error::AlreadyExists(_)) => {
            store.update(path, None, value).await.map(drop)?
        }
        other => other.map(drop)?,
    }
    Ok(())
}

/// The plaintext of a stored value (as it is, if it was stored unencrypted), decrypted with
/// `encryption` if given; a value encrypted while no keys are loaded (a server
/// without the flag reading an encrypted Secret) is an error, never garbage.
pub fn decrypt_with<'a>(
    encryption: Option<&Encryption>,
    path: &str,
    stored: &'a [u8],
) -> Result<Cow<'a, [u8]>, Error> {
    let set = encryption.map(Encryption::keys);
    decrypt_set(set.as_deref(), path, stored)
}

fn decrypt_set<'a>(
    set: Option<&KeySet>,
    path: &str,
    stored: &'a [u8],
) -> Result<Cow<'a, [u8]>, Error> {
    let Some(rest) = stored.strip_prefix(PREFIX) else {
        return Ok(Cow::Borrowed(stored));
    };
    let colon = rest
        .iter()
        .position(|b| *b == b':')
        .ok_or(Error::Tampered)?;
    let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
    let Some((_, key)) = set.and_then(|s| s.keys.iter().find(|(n, _)| *n == name)) else {
        return Err(Error::UnknownKey(name));
    };
    let rest = &rest[colon + 1..];
    if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(Error::Tampered);
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Tampered)?;
    let mut body = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(path.as_bytes()), &mut body)
        .map_err(|_| Error::Tampered)?;
    let n = plain.len();
    body.truncate(n);
    Ok(Cow::Owned(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(active: &str, names: &[&str]) -> Keys {
        Keys {
            version: 1,
            active: active.into(),
            keys: names
                .iter()
                .enumerate()
                .map(|(i, n)| NamedKey {
                    name: (*n).into(),
                    secret: base64::engine::general_purpose::STANDARD.encode([i as u8 + 7; 32]),
                })
                .collect(),
        }
    }

    fn encryption() -> Encryption {
        Encryption::with(
            "token",
            KeySet::from_row(Vec::new(), row("key1", &["key1"])).unwrap(),
        )
    }

    #[test]
    fn secrets_round_trip_and_hide_their_plaintext() {
        let e = encryption();
        let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#;
        let stored = e.encrypt("/registry/secrets/default/db", plain);
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!stored.windows(12).any(|w| w == b"aHVudGVyMg=="));
        assert_eq!(
            &*decrypt_with(Some(&e), "/registry/secrets/default/db", &stored).unwrap(),
            plain
        );
        // Moved to another object, altered, or read without keys: refused.
        assert!(matches!(
            decrypt_with(Some(&e), "/registry/secrets/default/other", &stored),
            Err(Error::Tampered)
        ));
        let mut altered = stored.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decrypt_with(Some(&e), "/registry/secrets/default/db", &altered),
            Err(Error::Tampered)
        ));
        assert!(matches!(
            decrypt_with(None, "/registry/secrets/default/db", &stored),
            Err(Error::UnknownKey(_))
        ));
        // Plaintext written before encryption was on reads as it is.
        assert_eq!(&*decrypt_with(Some(&e), "/x", b"{}").unwrap(), b"{}");
    }

    #[test]
    fn rotation_adds_an_active_key_and_keeps_every_key_still_in_use() {
        let in_use = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let first = row("key1", &["key1"]);
        let (name, second) = first.rotated(&in_use(&["key1"]));
        assert_eq!(name, "key2");
        assert_eq!(second.active, "key2");
        let names = |k: &Keys| k.keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&second), ["key1", "key2"]);
        assert_ne!(second.keys[0].secret, second.keys[1].secret, "a fresh key");

        // Nothing uses key1 any more: it goes; key2, the previous active key, stays even
        // though no stored Secret names it (a server may still be writing with it).
        let (name, third) = second.rotated(&in_use(&[]));
        assert_eq!(name, "key3");
        assert_eq!(names(&third), ["key2", "key3"]);
        // A Secret still under an old key keeps that key.
        let (_, fourth) = third.rotated(&in_use(&["key2"]));
        assert_eq!(names(&fourth), ["key2", "key3", "key4"]);
        let (_, fourth) = third.rotated(&in_use(&[]));
        assert_eq!(names(&fourth), ["key3", "key4"]);

        // A value written under the old key still decrypts with the rotated set; new writes
        // name the new key; the hash tells the two sets apart.
        let before = KeySet::from_row(Vec::new(), first).unwrap();
        let after = KeySet::from_row(Vec::new(), second).unwrap();
        let old = before.encrypt("/registry/secrets/default/a", b"{}");
        assert_eq!(
            &*decrypt_set(Some(&after), "/registry/secrets/default/a", &old).unwrap(),
            b"{}"
        );
        let new = after.encrypt("/registry/secrets/default/a", b"{}");
        assert_eq!(key_name(&new).as_deref(), Some("key2"));
        assert_eq!(key_name(b"{}"), None);
        assert!(matches!(
            decrypt_set(Some(&before), "/registry/secrets/default/a", &new),
            Err(Error::UnknownKey(k)) if k == "key2"
        ));
        assert_ne!(before.hash, after.hash);
    }
}
