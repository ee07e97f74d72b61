//! Registry credentials: what `imagePullSecrets` (`.dockerconfigjson` / legacy `.dockercfg`)
//! and `registries.yaml` give, and the `WWW-Authenticate` challenges registries answer with.
//!
//! IO-free: the client (`client.rs`) decides when to send what.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use super::reference::DOCKER_HUB;

/// Credentials for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// `host[:port]`, normalised (`docker.io` for Docker Hub's many spellings).
    pub registry: String,
    pub credentials: Credentials,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token, exchanged at the token endpoint (`docker login` with an
    /// identity provider writes these).
    IdentityToken(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the pull secret is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "the pull secret's entry for {registry} has an `auth` that is not base64 of USER:PASSWORD"
    )]
    BadAuthField { registry: String },
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Reads a `kubernetes.io/dockerconfigjson` secret's data (`{"auths": {...}}`) or a legacy
/// `kubernetes.io/dockercfg` one (the map alone). Entries without usable credentials are
/// left out, as kubelet does.
pub fn auths_from_dockerconfigjson(bytes: &[u8]) -> Result<Vec<RegistryAuth>, AuthError> {
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        identitytoken: Option<String>,
    }
    #[derive(Deserialize)]
    struct Modern {
        auths: BTreeMap<String, Entry>,
    }
    let entries: BTreeMap<String, Entry> = match serde_json::from_slice::<Modern>(bytes) {
        Ok(m) => m.auths,
        Err(_) => serde_json::from_slice(bytes)?,
    };
    let mut out = Vec::new();
    for (key, e) in entries {
        let registry = normalise_registry(&key);
        let credentials = credentials(
            &registry,
            e.username.as_deref(),
            e.password.as_deref(),
            e.auth.as_deref(),
            e.identitytoken.as_deref(),
        )?;
        if let Some(credentials) = credentials {
            out.push(RegistryAuth {
                registry,
                credentials,
            });
        }
    }
    Ok(out)
}

/// Picks credentials from the `auth` (base64 `user:pass`), `username`/`password` and
/// `identitytoken` fields K3s and Docker use, in Docker's order of preference.
pub(crate) fn credentials(
    registry: &str,
    username: Option<&str>,
    password: Option<&str>,
    auth: Option<&str>,
    identity_token: Option<&str>,
) -> Result<Option<Credentials>, AuthError> {
    if let Some(t) = identity_token.filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(t.to_owned())));
    }
    if let Some(a) = auth.filter(|a| !a.is_empty()) {
        let bad = || AuthError::BadAuthField {
            registry: registry.to_owned(),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (u, p) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials::Basic {
            username: u.to_owned(),
            password: p.to_owned(),
        }));
    }
    match (username, password) {
        (Some(u), p) if !u.is_empty() => Ok(Some(Credentials::Basic {
            username: u.to_owned(),
            password: p.unwrap_or_default().to_owned(),
        })),
        _ => Ok(None),
    }
}

/// `https://index.docker.io/v1/`, `registry-1.docker.io`, `docker.io` → `docker.io`;
/// otherwise the `host[:port]` of a key that may carry a scheme and a path.
pub fn normalise_registry(key: &str) -> String {
    let no_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = no_scheme.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        h => h.to_ascii_lowercase(),
    }
}

/// Parses the challenge of a 401 answer; `None` for schemes we cannot answer.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    for (k, v) in challenge_params(params) {
        match k.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            "scope" => scope = Some(v),
            _ => {}
        }
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

/// `k="v", k2=v2` pairs; quoted values may hold commas (scopes do).
fn challenge_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((key, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

impl std::fmt::Debug for RegistryAuth {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.credentials {
            Credentials::Basic { .. } => "basic",
            Credentials::IdentityToken(_) => "identity token",
        };
        write!(f, "RegistryAuth({}, {kind})", self.registry)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dockerconfigjson_and_legacy_dockercfg() {
        let modern = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "reg.example:5000":{"username":"a","password":"b"},
            "empty.example":{}}}"#;
        let auths = auths_from_dockerconfigjson(modern).unwrap();
        assert_eq!(auths.len(), 2);
        assert_eq!(auths[0].registry, "docker.io");
        assert_eq!(
            auths[0].credentials,
            Credentials::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(auths[1].registry, "reg.example:5000");
        let legacy = br#"{"quay.io":{"identitytoken":"tok"}}"#;
        let auths = auths_from_dockerconfigjson(legacy).unwrap();
        assert_eq!(auths[0].registry, "quay.io");
        assert_eq!(
            auths[0].credentials,
            Credentials::IdentityToken("tok".into())
        );
        assert!(auths_from_dockerconfigjson(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
        assert!(auths_from_dockerconfigjson(b"not json").is_err());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let a = RegistryAuth {
            registry: "r".into(),
            credentials: Credentials::Basic {
                username: "u".into(),
                password: "hunter2".into(),
            },
        };
        assert!(!format!("{a:?} {:?}", a.credentials).contains("hunter2"));
    }

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }
}
