//! Sealing cluster secrets with a key derived from the token secret.
//!
//! Layout: `KSL1 | iterations (u32 BE) | salt (16) | nonce (12) | AES-256-GCM ciphertext+tag`.
//! The key is PBKDF2-HMAC-SHA256 over the token secret with a random salt and
//! [`ITERATIONS`] rounds (K3s uses PBKDF2-SHA1 with 4096). The header is authenticated as
//! associated data, so it cannot be swapped. A wrong token fails authentication; it never
//! yields garbage.

use std::num::NonZeroU32;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256. Paid once per server start.
pub const ITERATIONS: u32 = 600_000;
/// Upper bound accepted from stored data, so a tampered row cannot stall start-up for hours.
const MAX_ITERATIONS: u32 = 10_000_000;
const MAGIC: &[u8; 4] = b"KSL1";
const HEADER: usize = 4 + 4 + 16 + 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the token does not open the cluster data stored in the datastore (wrong token?)")]
    WrongToken,
    #[error("the sealed cluster data in the datastore is malformed: {0}")]
    Malformed(&'static str),
}

pub fn seal(secret: &str, plaintext: &[u8]) -> Vec<u8> {
    seal_with(secret, plaintext, ITERATIONS)
}

fn seal_with(secret: &str, plaintext: &[u8], iterations: u32) -> Vec<u8> {
    let rng = SystemRandom::new();
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&iterations.to_be_bytes());
    // getrandom failing is not recoverable.
    rng.fill(&mut header[8..])
        .expect("system random number generator failed");
    let key = derive(secret, &header[8..24], iterations);
    let nonce = nonce(&header[24..36]);
    let mut out = plaintext.to_vec();
    key.seal_in_place_append_tag(nonce, Aad::from(&header), &mut out)
        // Only fails for inputs beyond GCM's ~64 GiB limit.
        .expect("sealing failed");
    let mut sealed = header.to_vec();
    sealed.extend_from_slice(&out);
    sealed
}

pub fn open(secret: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
    if sealed.len() < HEADER + 16 || &sealed[..4] != MAGIC {
        return Err(Error::Malformed("unknown format or truncated"));
    }
    let (header, body) = sealed.split_at(HEADER);
    let mut iters = [0u8; 4];
    iters.copy_from_slice(&header[4..8]);
    let iterations = u32::from_be_bytes(iters);
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return Err(Error::Malformed(
            "implausible key-derivation iteration count",
        ));
    }
    let key = derive(secret, &header[8..24], iterations);
    let mut buf = body.to_vec();
    let plain = key
        .open_in_place(nonce(&header[24..36]), Aad::from(header), &mut buf)
        .map_err(|_| Error::WrongToken)?;
    Ok(plain.to_vec())
}

fn derive(secret: &str, salt: &[u8], iterations: u32) -> LessSafeKey {
    let mut key = [0u8; 32];
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        secret.as_bytes(),
        &mut key,
    );
    // A 32-byte key is always valid for AES-256-GCM.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("AES-256 key length"))
}

fn nonce(bytes: &[u8]) -> Nonce {
    let mut n = [0u8; 12];
    n.copy_from_slice(bytes);
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_token_opens_wrong_token_is_refused() {
        let sealed = seal_with("s3cret", b"ca key", 1000);
        assert_eq!(open("s3cret", &sealed).unwrap(), b"ca key");
        assert_eq!(open("other", &sealed), Err(Error::WrongToken));
    }

    #[test]
    fn tampering_is_detected() {
        let mut sealed = seal_with("s", b"data", 1000);
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(open("s", &sealed), Err(Error::WrongToken));
        assert!(matches!(open("s", b"junk"), Err(Error::Malformed(_))));
        let mut header_tampered = seal_with("s", b"data", 1000);
        header_tampered[7] ^= 1;
        assert_eq!(open("s", &header_tampered), Err(Error::WrongToken));
    }
}
