//! K3s's `registries.yaml`: which endpoints to pull a registry's images from, and how to
//! authenticate and verify each endpoint.
//!
//! ```yaml
//! mirrors:
//!   docker.io:                      # the registry as named in image references ("*": any)
//!     endpoint: ["https://mirror.local:5000", "http://10.0.0.2:5000"]   # tried in order
//!     rewrite: {"^library/(.*)": "mirrored/$1"}                         # on mirror endpoints
//! configs:
//!   "mirror.local:5000":            # an endpoint's host[:port] (or a registry name)
//!     auth: {username: u, password: p}          # or auth: base64(u:p), or identitytoken
//!     tls: {ca_file: /etc/ssl/mirror-ca.pem, cert_file: …, key_file: …, insecure_skip_verify: false}
//! ```
//!
//! After a registry's mirror endpoints comes its default endpoint (`https://<registry>`;
//! `https://registry-1.docker.io` for `docker.io`) unless the default endpoint is disabled.
//! Only endpoints written `http://…` are spoken to in plain HTTP. A missing file means "no
//! mirrors"; a malformed one is an error naming the problem, never silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::auth::{self, Credentials};
use super::reference::{DOCKER_HUB, Reference};

/// Where K3s reads it; keelson's name in place of rancher/k3s.
pub const DEFAULT_PATH: &str = "/etc/keelson/registries.yaml";
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// The parsed file, plus whether to fall back to registries' own endpoints.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    mirrors: BTreeMap<String, Mirror>,
    configs: BTreeMap<String, HostConfig>,
    /// K3s's `--disable-default-registry-endpoint`: pull only from mirrors.
    pub disable_default_endpoint: bool,
}

#[derive(Debug, Clone, Default)]
struct Mirror {
    endpoints: Vec<Endpoint>,
    rewrites: Vec<(regex_lite::Regex, String)>,
}

/// One registry endpoint: scheme, `host[:port]` and an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub plain_http: bool,
    /// `host[:port]`.
    pub authority: String,
    /// Prepended to `/v2/…`; empty or starting with `/`, never ending with `/`.
    pub prefix: String,
}

/// How to talk to one endpoint host.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    pub credentials: Option<Credentials>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

/// One place to try for an image: endpoint, repository path there (after rewrites) and the
/// host's settings.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub endpoint: Endpoint,
    pub repository: String,
    pub config: HostConfig,
    /// The registry the image is named after (`docker.io`), for matching pull secrets.
    pub registry: String,
    pub is_mirror: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

// === impl Registries ===

impl Registries {
    /// Reads the file; a file that does not exist is an empty configuration.
    pub fn load(path: &Path) -> Result<Registries, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Registries::parse(&text).map_err(|why| ConfigError::Invalid {
                path: path.to_owned(),
                why,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registries::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(yaml: &str) -> Result<Registries, String> {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            mirrors: Option<BTreeMap<String, RawMirror>>,
            #[serde(default)]
            configs: Option<BTreeMap<String, RawConfig>>,
        }
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RawMirror {
            #[serde(default)]
            endpoint: Vec<String>,
            #[serde(default)]
            rewrite: BTreeMap<String, String>,
        }
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RawConfig {
            #[serde(default)]
            auth: Option<RawAuth>,
            #[serde(default)]
            tls: Option<RawTls>,
        }
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RawAuth {
            username: Option<String>,
            password: Option<String>,
            auth: Option<String>,
            identitytoken: Option<String>,
        }
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RawTls {
            ca_file: Option<PathBuf>,
            cert_file: Option<PathBuf>,
            key_file: Option<PathBuf>,
            #[serde(default)]
            insecure_skip_verify: bool,
        }
        if yaml.trim().is_empty() {
            return Ok(Registries::default());
        }
        let file: File = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let mut out = Registries::default();
        for (name, raw) in file.mirrors.unwrap_or_default() {
            let mut mirror = Mirror::default();
            for e in &raw.endpoint {
                mirror
                    .endpoints
                    .push(Endpoint::parse(e).map_err(|why| format!("mirrors.{name}: {why}"))?);
            }
            for (pattern, replacement) in raw.rewrite {
                let re = regex_lite::Regex::new(&pattern).map_err(|e| {
                    format!("mirrors.{name}.rewrite: {pattern:?} is not a regular expression: {e}")
                })?;
                mirror.rewrites.push((re, replacement));
            }
            let key = if name == "*" {
                name
            } else {
                auth::normalise_registry(&name)
            };
            out.mirrors.insert(key, mirror);
        }
        for (host, raw) in file.configs.unwrap_or_default() {
            let mut config = HostConfig::default();
            if let Some(a) = raw.auth {
                config.credentials = auth::credentials(
                    &host,
                    a.username.as_deref(),
                    a.password.as_deref(),
                    a.auth.as_deref(),
                    a.identitytoken.as_deref(),
                )
                .map_err(|e| format!("configs.{host}.auth: {e}"))?;
            }
            if let Some(t) = raw.tls {
                if t.cert_file.is_some() != t.key_file.is_some() {
                    return Err(format!(
                        "configs.{host}.tls: cert_file and key_file go together"
                    ));
                }
                config.ca_file = t.ca_file;
                config.cert_file = t.cert_file;
                config.key_file = t.key_file;
                config.insecure_skip_verify = t.insecure_skip_verify;
            }
            out.configs.insert(auth::normalise_registry(&host), config);
        }
        Ok(out)
    }

    /// The endpoints to try for `reference`, in order.
    pub fn candidates(&self, reference: &Reference) -> Vec<Candidate> {
        let registry = reference.domain.clone();
        let mut out = Vec::new();
        let mirror = self
            .mirrors
            .get(&registry)
            .or_else(|| self.mirrors.get("*"));
        if let Some(m) = mirror {
            let repository = m
                .rewrites
                .iter()
                .find(|(re, _)| re.is_match(&reference.path))
                .map(|(re, to)| re.replace(&reference.path, to.as_str()).into_owned())
                .unwrap_or_else(|| reference.path.clone());
            for e in &m.endpoints {
                out.push(Candidate {
                    endpoint: e.clone(),
                    repository: repository.clone(),
                    config: self.config_for(&e.authority),
                    registry: registry.clone(),
                    is_mirror: true,
                });
            }
        }
        if !self.disable_default_endpoint {
            let authority = if registry == DOCKER_HUB {
                DOCKER_HUB_ENDPOINT.to_owned()
            } else {
                registry.clone()
            };
            let endpoint = Endpoint {
                plain_http: false,
                authority: authority.clone(),
                prefix: String::new(),
            };
            // A mirror list that already names the default endpoint tries it once.
            if !out.iter().any(|c| c.endpoint == endpoint) {
                let mut config = self.config_for(&authority);
                if authority != registry && config.credentials.is_none() {
                    config = self.config_for(&registry);
                }
                out.push(Candidate {
                    endpoint,
                    repository: reference.path.clone(),
                    config,
                    registry,
                    is_mirror: false,
                });
            }
        }
        out
    }

    fn config_for(&self, authority: &str) -> HostConfig {
        self.configs
            .get(&auth::normalise_registry(authority))
            .cloned()
            .unwrap_or_default()
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// `https://host[:port][/prefix]`, `http://…`, or a bare `host[:port]` (HTTPS).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let (plain_http, rest) = if let Some(r) = s.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (false, r)
        } else if s.contains("://") {
            return Err(format!(
                "endpoint {s:?}: only http:// and https:// are spoken"
            ));
        } else {
            (false, s)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || authority.contains(' ') {
            return Err(format!("endpoint {s:?} has no usable host"));
        }
        let mut prefix = path.trim_end_matches('/').to_owned();
        // containerd appends /v2 itself; an endpoint written with it means the same.
        if prefix.ends_with("/v2") {
            prefix.truncate(prefix.len() - 3);
        }
        Ok(Endpoint {
            plain_http,
            authority: authority.to_ascii_lowercase(),
            prefix,
        })
    }

    /// The URL of `path` (which starts with `/v2/`).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}{}{path}", self.authority, self.prefix)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.plain_http { "http" } else { "https" };
        write!(f, "{scheme}://{}{}", self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "http://127.0.0.1:5000"
      - "https://mirror.example:5443/v2"
    rewrite:
      "^rancher/(.*)": "mirrored/rancher-images/$1"
  "*":
    endpoint: ["https://catchall.example"]
configs:
  "mirror.example:5443":
    auth:
      username: u
      password: p
    tls:
      ca_file: /etc/ca.pem
  "registry-1.docker.io":
    auth:
      auth: dXNlcjpwYXNz
"#;

    fn candidates(r: &Registries, image: &str) -> Vec<(String, String)> {
        r.candidates(&Reference::parse(image).unwrap())
            .into_iter()
            .map(|c| (c.endpoint.to_string(), c.repository))
            .collect()
    }

    #[test]
    fn mirrors_come_first_in_order_then_the_default_endpoint() {
        let r = Registries::parse(FILE).unwrap();
        assert_eq!(
            candidates(&r, "busybox"),
            [
                (
                    "http://127.0.0.1:5000".to_owned(),
                    "library/busybox".to_owned()
                ),
                (
                    "https://mirror.example:5443".into(),
                    "library/busybox".into()
                ),
                (
                    "https://registry-1.docker.io".into(),
                    "library/busybox".into()
                ),
            ]
        );
        assert_eq!(
            candidates(&r, "quay.io/x/y"),
            [
                ("https://catchall.example".to_owned(), "x/y".to_owned()),
                ("https://quay.io".into(), "x/y".into()),
            ]
        );
        let c = r.candidates(&Reference::parse("busybox").unwrap());
        assert!(c[0].endpoint.plain_http && !c[1].endpoint.plain_http);
        assert_eq!(
            c[1].config.ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        assert!(c[1].config.credentials.is_some());
        assert!(c[0].config.credentials.is_none());
        assert!(c[2].config.credentials.is_some());
        assert_eq!(
            c[1].endpoint.url("/v2/library/busybox/manifests/latest"),
            "https://mirror.example:5443/v2/library/busybox/manifests/latest"
        );
    }

    #[test]
    fn rewrites_apply_to_mirror_endpoints_only() {
        let r = Registries::parse(FILE).unwrap();
        let got = candidates(&r, "rancher/k3s:v1");
        assert_eq!(got[0].1, "mirrored/rancher-images/k3s");
        assert_eq!(got[1].1, "mirrored/rancher-images/k3s");
        assert_eq!(got[2].1, "rancher/k3s");
    }

    #[test]
    fn default_endpoint_can_be_disabled() {
        let mut r = Registries::parse(FILE).unwrap();
        r.disable_default_endpoint = true;
        assert_eq!(candidates(&r, "busybox").len(), 2);
        let empty = Registries {
            disable_default_endpoint: true,
            ..Registries::default()
        };
        assert!(candidates(&empty, "busybox").is_empty());
    }

    #[test]
    fn bad_files_are_errors_naming_the_problem() {
        let bad_regex = "mirrors:\n  docker.io:\n    rewrite: {\"(\": x}\n";
        assert!(
            Registries::parse(bad_regex)
                .unwrap_err()
                .contains("rewrite")
        );
        let bad_key = "mirrors:\n  docker.io:\n    endpoints: [x]\n";
        assert!(Registries::parse(bad_key).is_err());
        let bad_scheme = "mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n";
        assert!(Registries::parse(bad_scheme).unwrap_err().contains("ftp"));
        let half_tls = "configs:\n  x:\n    tls: {cert_file: /a}\n";
        assert!(Registries::parse(half_tls).is_err());
        assert!(Registries::parse("").unwrap().mirrors.is_empty());
        let missing = Registries::load(Path::new("/nonexistent/registries.yaml")).unwrap();
        assert!(missing.mirrors.is_empty());
    }
}
