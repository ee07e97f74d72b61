//! Image references, normalised the way containerd (and so K3s and Kubernetes) does:
//! `nginx` → `docker.io/library/nginx:latest`, `host:5000/a/b@sha256:…` kept as it is.
//!
//! Invariants of a parsed [`Reference`]: `domain` is a host name or `host:port` (never empty);
//! `path` is one or more lowercase components of `[a-z0-9]` joined by `.`, `_`, `__` or `-`,
//! separated by `/`; a reference has a tag, a digest or both, and gets `latest` only when it
//! had neither. The normalised string round-trips through [`Reference::parse`].

use std::fmt;

use super::digest::{BadDigest, Digest};

/// Docker Hub's name in references; its API lives elsewhere (see `registries`).
pub const DOCKER_HUB: &str = "docker.io";
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
const DEFAULT_TAG: &str = "latest";
/// The whole name (domain and path) may have at most this many bytes, as in distribution.
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid image reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    #[error("invalid image reference {reference:?}: {why}")]
    Invalid {
        reference: String,
        why: &'static str,
    },
    #[error("invalid image reference: {0}")]
    Digest(#[from] BadDigest),
}

// === impl Reference ===

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let invalid = |why| ReferenceError::Invalid {
            reference: s.to_owned(),
            why,
        };
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        // A tag is what follows the last ':' when no '/' comes after it (otherwise the ':'
        // belongs to a registry port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= MAX_TAG
                && t.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
                });
            if !ok {
                return Err(invalid("a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        if name.is_empty() {
            return Err(invalid("no repository name"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, rest.to_owned())
            }
            _ => (DOCKER_HUB, name.to_owned()),
        };
        let domain = if domain == LEGACY_DOCKER_HUB {
            DOCKER_HUB
        } else {
            domain
        };
        if !valid_domain(domain) {
            return Err(invalid("the registry is not a host name or host:port"));
        }
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(s.to_owned()));
        }
        if !path.split('/').all(valid_component) {
            return Err(invalid(
                "path components are lowercase letters and digits joined by '.', '_', '__' or '-'",
            ));
        }
        if domain.len() + 1 + path.len() > MAX_NAME {
            return Err(invalid("the name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Reference {
            domain: domain.to_owned(),
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, the name without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What to ask the registry's manifest endpoint for: the digest when there is one (a tag
    /// beside it is only informative, as in containerd), else the tag.
    pub fn manifest_ref(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.as_str(),
            (None, Some(t)) => t,
            // Invariant: parse gives a reference a tag or a digest.
            (None, None) => DEFAULT_TAG,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    // Bracketed IPv6 literals, as distribution accepts them.
    let v6_ok = host.len() > 2
        && host.starts_with('[')
        && host.ends_with(']')
        && host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    port_ok && (host_ok || v6_ok)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or one or more '-'.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        // A separator must be followed by an alphanumeric (checked: the last byte is one).
        if i > start && !b.get(i).is_some_and(|x| x.is_ascii_alphanumeric()) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_like_containerd() {
        let table = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("library/nginx", "docker.io/library/nginx:latest"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
            ("rancher/k3s:v1.30", "docker.io/rancher/k3s:v1.30"),
            ("ghcr.io/a/b/c:1", "ghcr.io/a/b/c:1"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:v2", "localhost:5000/app:v2"),
            ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
        ];
        for (input, want) in table {
            assert_eq!(
                Reference::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
        let by_digest = format!("host:5000/a/b@{D}");
        assert_eq!(Reference::parse(&by_digest).unwrap().to_string(), by_digest);
        assert_eq!(Reference::parse(&by_digest).unwrap().manifest_ref(), D);
        let both = Reference::parse(&format!("busybox:1.36@{D}")).unwrap();
        assert_eq!(
            both.to_string(),
            format!("docker.io/library/busybox:1.36@{D}")
        );
        assert_eq!(both.manifest_ref(), D);
        let only_digest = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(only_digest.tag, None);
        assert_eq!(only_digest.repository(), "docker.io/library/busybox");
    }

    #[test]
    fn normalised_form_round_trips() {
        for s in [
            "nginx",
            "a.b:1/x/y_z:t-1",
            "localhost/x__y",
            "docker.io/a/b-c",
        ] {
            let r = Reference::parse(s).unwrap();
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        }
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Nginx",
            "docker.io/Library/nginx",
            "nginx:",
            "nginx:-x",
            "nginx@sha256:abc",
            "nginx@md5:0123",
            "a//b",
            "a/b/",
            "/a",
            "a..b",
            "a-/b",
            "a___b",
            "host:port/x",
            "nginx:a/b",
            "a b",
            "../x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            Reference::parse("Nginx"),
            Err(ReferenceError::Uppercase(_))
        ));
        let long = format!("x/{}", "a".repeat(300));
        assert!(Reference::parse(&long).is_err());
    }
}
