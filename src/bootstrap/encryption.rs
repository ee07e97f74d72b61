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

use std::borrow::Cow;

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::seal;
use crate::datastore::{self, Store};

/// The datastore row (`keelson_secrets`) holding the sealed keys.
const KEYS_ROW: &str = "secrets-encryption";
const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";

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
}

#[derive(Serialize, Deserialize)]
struct Keys {
    version: u32,
    /// Name of the key new writes use.
    active: String,
    keys: Vec<NamedKey>,
}

#[derive(Serialize, Deserialize)]
struct NamedKey {
    name: String,
    /// 32 bytes, base64.
    secret: String,
}

/// The cluster's Secret keys, opened.
pub struct Encryption {
    /// Index of the key new writes use. Invariant: a valid index of `keys`.
    active: usize,
    keys: Vec<(String, LessSafeKey)>,
}

// === impl Encryption ===

impl Encryption {
    /// Opens the cluster's keys with the token secret, creating the first key if there is
    /// none (the first server with the flag; concurrent first starts agree on one row).
    pub async fn load_or_create(store: &Store, token_secret: &str) -> Result<Encryption, Error> {
        let sealed = match store.secret(KEYS_ROW).await? {
            Some(sealed) => sealed,
            None => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .expect("system random number generator failed");
                let keys = Keys {
                    version: 1,
                    active: "key1".into(),
                    keys: vec![NamedKey {
                        name: "key1".into(),
                        secret: base64::engine::general_purpose::STANDARD.encode(key),
                    }],
                };
                // Serialising strings cannot fail.
                let plain = serde_json::to_vec(&keys).expect("keys serialise");
                let sealed = seal::seal(token_secret, &plain);
                if !store.insert_secret(KEYS_ROW, &sealed).await? {
                    tracing::debug!("another server created the secrets-encryption key first");
                }
                store.secret(KEYS_ROW).await?.ok_or_else(|| {
                    Error::Corrupt("the keys vanished after a concurrent insert".into())
                })?
            }
        };
        let plain = seal::open(token_secret, &sealed).map_err(|e| match e {
            seal::Error::WrongToken => Error::WrongToken,
            seal::Error::Malformed(m) => Error::Corrupt(m.into()),
        })?;
        let keys: Keys =
            serde_json::from_slice(&plain).map_err(|e| Error::Corrupt(e.to_string()))?;
        Encryption::from_keys(keys)
    }

    fn from_keys(keys: Keys) -> Result<Encryption, Error> {
        let mut opened = Vec::new();
        for k in keys.keys {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&k.secret)
                .map_err(|e| Error::Corrupt(format!("key {}: {e}", k.name)))?;
            let key = UnboundKey::new(&AES_256_GCM, &raw)
                .map_err(|_| Error::Corrupt(format!("key {} is not 32 bytes", k.name)))?;
            opened.push((k.name, LessSafeKey::new(key)));
        }
        let active = opened
            .iter()
            .position(|(n, _)| *n == keys.active)
            .ok_or_else(|| {
                Error::Corrupt(format!("the active key {:?} is missing", keys.active))
            })?;
        Ok(Encryption {
            active,
            keys: opened,
        })
    }

    /// The stored form of `plain`, the object at datastore `path`.
    pub fn encrypt(&self, path: &str, plain: &[u8]) -> Vec<u8> {
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

/// The plaintext of a stored value (as it is, if it was stored unencrypted), decrypted with
/// `encryption` if given; a value encrypted while no keys are loaded (a server
/// without the flag reading an encrypted Secret) is an error, never garbage.
pub fn decrypt_with<'a>(
    encryption: Option<&Encryption>,
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
    let Some((_, key)) = encryption.and_then(|e| e.keys.iter().find(|(n, _)| *n == name)) else {
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

    fn encryption() -> Encryption {
        Encryption::from_keys(Keys {
            version: 1,
            active: "key1".into(),
            keys: vec![NamedKey {
                name: "key1".into(),
                secret: base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
            }],
        })
        .unwrap()
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
}
