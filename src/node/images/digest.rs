//! Content digests (`sha256:<hex>`) and the hashing that checks them while bytes stream by.
//!
//! Only SHA-256 is accepted: it is what every registry and image format we read uses, and
//! refusing the rest keeps a digest a fixed 71-byte string that is safe as a file name.
//!
//! Invariant: a [`Digest`] always holds `sha256:` followed by exactly 64 lowercase hex digits,
//! so its hex part can be joined to a directory without further checks.

use std::fmt;

use ring::digest::{Context, SHA256};

/// A parsed `sha256:<64 hex>` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sha256 digest (sha256:<64 lowercase hex digits>)")]
pub struct BadDigest(pub String);

/// Hashes bytes as they pass and says at the end whether they were the expected ones.
pub struct Verifier {
    expected: Digest,
    context: Context,
    len: u64,
}

/// Hashes bytes as they pass; the digest is known at the end.
pub struct Hasher {
    context: Context,
    len: u64,
}

// === impl Digest ===

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, BadDigest> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| BadDigest(s.to_owned()))?;
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(Digest(s.to_owned()))
        } else {
            Err(BadDigest(s.to_owned()))
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// The 64 hex digits, usable as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Digest, BadDigest> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

// === impl Verifier ===

impl Verifier {
    pub fn new(expected: Digest) -> Verifier {
        Verifier {
            expected,
            context: Context::new(&SHA256),
            len: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.context.update(bytes);
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// `Ok` if the bytes seen hash to the expected digest; otherwise the digest they had.
    pub fn finish(self) -> Result<(), Digest> {
        let actual = hex_digest(self.context);
        if actual == self.expected {
            Ok(())
        } else {
            Err(actual)
        }
    }
}

// === impl Hasher ===

impl Default for Hasher {
    fn default() -> Hasher {
        Hasher::new()
    }
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher {
            context: Context::new(&SHA256),
            len: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.context.update(bytes);
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn finish(self) -> Digest {
        hex_digest(self.context)
    }
}

fn hex_digest(context: Context) -> Digest {
    let sum = context.finish();
    Digest(format!("sha256:{}", hex::encode(sum.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_only_lowercase_sha256() {
        assert!(Digest::parse(EMPTY).is_ok());
        assert!(Digest::parse(&EMPTY.to_uppercase()).is_err());
        assert!(Digest::parse("sha512:abcd").is_err());
        assert!(Digest::parse(&EMPTY[..70]).is_err());
        assert!(Digest::parse("sha256:../../../../etc/passwd").is_err());
    }

    #[test]
    fn verifier_accepts_the_right_bytes_and_names_the_wrong_digest() {
        let mut v = Verifier::new(Digest::parse(EMPTY).unwrap());
        v.update(b"");
        assert_eq!(v.finish(), Ok(()));
        let mut v = Verifier::new(Digest::parse(EMPTY).unwrap());
        v.update(b"x");
        let got = v.finish().unwrap_err();
        assert_eq!(got, Digest::of(b"x"));
        assert_ne!(got.as_str(), EMPTY);
    }

    #[test]
    fn digest_of_is_split_independent() {
        let mut h = Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }
}
