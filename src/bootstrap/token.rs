//! Join tokens in K3s's formats.
//!
//! Secure form: `K10<sha256 of the cluster CA PEM, hex>::<user>:<secret>`; short form: the
//! secret alone. Only the secret opens the sealed cluster data; the CA hash lets a joining
//! node verify the server before it sends anything.

use std::fmt;

use ring::rand::SecureRandom;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "{source_name} is malformed: {reason} (expected K10<64 hex digits>::<user>:<secret> or a plain secret)"
    )]
    Malformed {
        source_name: String,
        reason: &'static str,
    },
}

#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// SHA-256 of the cluster CA certificate (PEM bytes), present in the secure form.
    pub ca_hash: Option<[u8; 32]>,
    /// `server` for server tokens, `node` for agent tokens; `None` for a short token.
    pub user: Option<String>,
    pub secret: String,
}

// === impl Token ===

impl Token {
    /// Parses a token given through `source_name` (named in errors, e.g. `--token`).
    pub fn parse(raw: &str, source_name: &str) -> Result<Token, Error> {
        let raw = raw.trim();
        let err = |reason| Error::Malformed {
            source_name: source_name.to_owned(),
            reason,
        };
        if raw.is_empty() {
            return Err(err("it is empty"));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("it contains whitespace or control characters"));
        }
        let Some(rest) = raw.strip_prefix("K10") else {
            return Ok(Token {
                ca_hash: None,
                user: None,
                secret: raw.to_owned(),
            });
        };
        let (hash, creds) = rest
            .split_once("::")
            .ok_or(err("the K10 form needs '::' after the CA hash"))?;
        let bytes = hex::decode(hash).map_err(|_| err("the CA hash is not hexadecimal"))?;
        let ca_hash: [u8; 32] = bytes
            .try_into()
            .map_err(|_| err("the CA hash must be 64 hex digits (SHA-256)"))?;
        let (user, secret) = creds
            .split_once(':')
            .ok_or(err("the K10 form needs <user>:<secret> after '::'"))?;
        if user.is_empty() || secret.is_empty() {
            return Err(err("the user and the secret must not be empty"));
        }
        Ok(Token {
            ca_hash: Some(ca_hash),
            user: Some(user.to_owned()),
            secret: secret.to_owned(),
        })
    }

    /// A fresh random server token secret (128 bits, hex).
    pub fn generate() -> Token {
        let mut buf = [0u8; 16];
        // The system RNG failing is not recoverable; ring only fails if getrandom does.
        ring::rand::SystemRandom::new()
            .fill(&mut buf)
            .expect("system random number generator failed");
        Token {
            ca_hash: None,
            user: None,
            secret: hex::encode(buf),
        }
    }

    /// The secure form for this secret, bound to a CA.
    pub fn secure(&self, ca_pem: &str, user: &str) -> Token {
        Token {
            ca_hash: Some(ca_hash(ca_pem)),
            user: Some(user.to_owned()),
            secret: self.secret.clone(),
        }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.ca_hash, &self.user) {
            (Some(h), Some(u)) => write!(f, "K10{}::{u}:{}", hex::encode(h), self.secret),
            _ => f.write_str(&self.secret),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(REDACTED)")
    }
}

/// SHA-256 over the CA PEM exactly as `/cacerts` serves it.
pub fn ca_hash(ca_pem: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_form_round_trips() {
        let t = Token::generate().secure("CA", "server");
        let parsed = Token::parse(&t.to_string(), "--token").unwrap();
        assert_eq!(parsed, t);
        assert!(t.to_string().starts_with("K10"));
    }

    #[test]
    fn short_form_is_the_secret() {
        let t = Token::parse("  sekrit\n", "--token").unwrap();
        assert_eq!((t.ca_hash, t.secret.as_str()), (None, "sekrit"));
    }

    #[test]
    fn malformed_tokens_name_their_source() {
        for bad in [
            "K10abc::server:x",
            "K10zz::server:x",
            &format!("K10{}server:x", "a".repeat(64)),
            &format!("K10{}::server:", "a".repeat(64)),
            "",
            "a b",
        ] {
            let err = Token::parse(bad, "--token-file /x").unwrap_err();
            assert!(
                err.to_string().contains("--token-file /x is malformed"),
                "{bad}: {err}"
            );
        }
    }
}
