//! Joining a cluster: know the cluster's CA before any credential leaves, then trade the
//! token for a node certificate.
//!
//! Order matters and is the security of the join. Once an agent has joined, the CA it saved
//! is pinned ([`Trust::Pinned`]): every later join (a renewal, a rejoin) verifies the server
//! against it and never asks `/cacerts` again, so a server with another CA is refused before
//! anything is sent. On a first join with a K10 token the CA is fetched anonymously and
//! checked against the token's SHA-256 *before* any credential is sent. A first join with a
//! short token (no CA hash) trusts whichever server answers, and only with
//! `--unsafe-skip-ca-verification`. Either way the token secret then goes out only over TLS
//! verified against that CA.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};

use super::credentials::ClientCert;
use super::https::{self, Target};
use crate::bootstrap::Token;
use crate::bootstrap::join::{JoinRequest, JoinResponse, PATH, basic_authorization};
use crate::bootstrap::token::ca_hash;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "refusing to join through {server}: its CA hash {actual} does not match the token's {expected}; \
         no credential was sent. Check --server and use the token of this cluster"
    )]
    CaMismatch {
        server: String,
        expected: String,
        actual: String,
    },
    #[error(
        "refusing to join through {server}: it cannot prove it belongs to the cluster whose CA this \
         agent saved at its first join ({}): {why}; no credential was sent. If the cluster was \
         rebuilt on purpose, remove that file and join with the new cluster's K10 token",
        ca_file.display()
    )]
    NotPinnedCa {
        server: String,
        ca_file: PathBuf,
        why: String,
    },
    #[error(
        "the token has no CA hash, so this agent cannot tell the cluster's servers from an impostor \
         on its first join: use the K10 token from a server's <data-dir>/server/token, or pass \
         --unsafe-skip-ca-verification (KEELSON_UNSAFE_SKIP_CA_VERIFICATION) to trust whichever \
         server answers the first join (its CA is pinned from then on)"
    )]
    Unpinned,
    #[error(
        "the token's CA hash {token} is not the hash {saved} of the cluster CA this agent saved at \
         its first join ({}): the token belongs to another cluster. If the cluster was rebuilt on \
         purpose, remove that file and join again",
        ca_file.display()
    )]
    TokenForAnotherCa {
        token: String,
        saved: String,
        ca_file: PathBuf,
    },
    #[error(
        "the token was rejected by {server} (401): it is neither the cluster's server token nor its agent token"
    )]
    TokenRejected { server: String },
    #[error("{server} refused this node: {message}")]
    NodeRefused { server: String, message: String },
    #[error("{0}")]
    Unreachable(#[from] https::Error),
    #[error("{server} answered {status}: {message}")]
    Unavailable {
        server: String,
        status: StatusCode,
        message: String,
    },
}

impl Error {
    /// Whether trying again (later, or through another server) can help: not for bad TLS
    /// material (an unreadable saved CA), which will not fix itself.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable(e) => !matches!(e, https::Error::Config(_)),
            Error::Unavailable { .. } => true,
            _ => false,
        }
    }
}

/// How a join knows it talks to the agent's cluster.
#[derive(Clone)]
pub enum Trust {
    /// The CA saved at the first join (in `file`): every connection is verified against it,
    /// and `/cacerts` is never asked.
    Pinned { ca_pem: String, file: PathBuf },
    /// A first join with a K10 token: `/cacerts` must have this SHA-256.
    TokenHash([u8; 32]),
    /// A first join with a short token and `--unsafe-skip-ca-verification`: whatever CA the
    /// server shows is taken (and then pinned).
    Unverified,
}

pub struct Joined {
    pub ca_pem: String,
    pub cert: ClientCert,
    pub servers: Vec<String>,
}

// === impl Trust ===

impl Trust {
    /// The saved CA (`saved`, read from `file`) if there is one, and the token's hash must then
    /// name it; else the token's hash; else nothing, only if `skip_verification`.
    pub fn decide(
        saved: Option<String>,
        file: &Path,
        token: &Token,
        skip_verification: bool,
    ) -> Result<Trust, Error> {
        match (saved, token.ca_hash) {
            (Some(ca_pem), Some(expected)) if ca_hash(&ca_pem) != expected => {
                Err(Error::TokenForAnotherCa {
                    token: hex::encode(expected),
                    saved: hex::encode(ca_hash(&ca_pem)),
                    ca_file: file.to_owned(),
                })
            }
            (Some(ca_pem), _) => Ok(Trust::Pinned {
                ca_pem,
                file: file.to_owned(),
            }),
            (None, Some(hash)) => Ok(Trust::TokenHash(hash)),
            (None, None) if skip_verification => Ok(Trust::Unverified),
            (None, None) => Err(Error::Unpinned),
        }
    }
}

pub async fn join(
    addr: &str,
    trust: &Trust,
    token: &Token,
    node: &str,
    password: &str,
) -> Result<Joined, Error> {
    let ca_pem = match trust {
        Trust::Pinned { ca_pem, .. } => ca_pem.clone(),
        Trust::TokenHash(expected) => {
            let ca_pem = fetch_ca(addr).await?;
            let actual = hex::encode(ca_hash(&ca_pem));
            if hex::encode(expected) != actual {
                return Err(Error::CaMismatch {
                    server: addr.to_owned(),
                    expected: hex::encode(expected),
                    actual,
                });
            }
            ca_pem
        }
        Trust::Unverified => {
            let ca_pem = fetch_ca(addr).await?;
            tracing::warn!(
                server = addr,
                ca_hash = %hex::encode(ca_hash(&ca_pem)),
                "the token has no CA hash and --unsafe-skip-ca-verification is set, so the server was NOT verified; \
                 its CA is pinned from now on; use the K10 token from a server's <data-dir>/server/token"
            );
            ca_pem
        }
    };
    let verified = Target::new(addr, https::tls_config(&ca_pem, None)?)?;
    let body = serde_json::to_vec(&JoinRequest {
        node_name: node.to_owned(),
        node_password: password.to_owned(),
    })
    .expect("a join request serialises");
    let req = Request::post(PATH)
        .header(hyper::header::HOST, addr)
        .header(
            hyper::header::AUTHORIZATION,
            basic_authorization(&token.secret),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a join request is well-formed");
    let (status, body) = match (verified.send(req).await, trust) {
        (Err(https::Error::Untrusted { why, .. }), Trust::Pinned { file, .. }) => {
            return Err(Error::NotPinnedCa {
                server: addr.to_owned(),
                ca_file: file.clone(),
                why,
            });
        }
        (r, _) => r?,
    };
    match status {
        StatusCode::OK => {
            let r: JoinResponse =
                serde_json::from_slice(&body).map_err(|e| Error::Unavailable {
                    server: addr.to_owned(),
                    status,
                    message: format!("unreadable join answer: {e}"),
                })?;
            Ok(Joined {
                ca_pem,
                cert: ClientCert {
                    cert_pem: r.certificate,
                    key_pem: r.key,
                },
                servers: r.servers,
            })
        }
        StatusCode::UNAUTHORIZED => Err(Error::TokenRejected {
            server: addr.to_owned(),
        }),
        StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST => Err(Error::NodeRefused {
            server: addr.to_owned(),
            message: status_message(&body),
        }),
        _ => Err(unavailable(addr, status, &body)),
    }
}

/// The CA `/cacerts` shows, asked without verifying the server: only for a first join, and
/// the answer is checked (against the token's hash) or explicitly taken on trust by the caller.
pub(crate) async fn fetch_ca(addr: &str) -> Result<String, Error> {
    let anon = Target::new(addr, https::unverified_tls()?)?;
    let (status, body) = anon.send(get("/cacerts", addr)).await?;
    if status != StatusCode::OK {
        return Err(unavailable(addr, status, &body));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn get(path: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("a GET request is well-formed")
}

fn unavailable(server: &str, status: StatusCode, body: &[u8]) -> Error {
    Error::Unavailable {
        server: server.to_owned(),
        status,
        message: status_message(body),
    }
}

/// The message of a Kubernetes Status body, or the body itself.
pub fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(raw: &str) -> Token {
        Token::parse(raw, "--token").unwrap()
    }

    #[test]
    fn a_saved_ca_is_pinned_whatever_the_token() {
        let file = Path::new("/d/agent/server-ca.crt");
        let matching = format!("K10{}::node:secret", hex::encode(ca_hash("CA")));
        for t in ["a-short-secret", matching.as_str()] {
            for skip in [false, true] {
                let trust = Trust::decide(Some("CA".into()), file, &token(t), skip).unwrap();
                assert!(
                    matches!(&trust, Trust::Pinned { ca_pem, file: f } if ca_pem == "CA" && f == file),
                    "{t} {skip}"
                );
            }
        }
        let other = format!("K10{}::node:secret", "ab".repeat(32));
        let err = Trust::decide(Some("CA".into()), file, &token(&other), true)
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains(&"ab".repeat(32)) && msg.contains("/d/agent/server-ca.crt"),
            "{msg}"
        );
    }

    #[test]
    fn a_first_join_needs_the_tokens_hash_or_the_unsafe_flag() {
        let file = Path::new("/d/agent/server-ca.crt");
        let k10 = token(&format!("K10{}::node:secret", "ab".repeat(32)));
        assert!(matches!(
            Trust::decide(None, file, &k10, false),
            Ok(Trust::TokenHash(h)) if h == [0xab; 32]
        ));
        let short = token("a-short-secret");
        let err = Trust::decide(None, file, &short, false).err().unwrap();
        assert!(matches!(err, Error::Unpinned));
        assert!(
            err.to_string().contains("--unsafe-skip-ca-verification")
                && err.to_string().contains("<data-dir>/server/token"),
            "{err}"
        );
        assert!(!err.is_transient());
        assert!(matches!(
            Trust::decide(None, file, &short, true),
            Ok(Trust::Unverified)
        ));
    }
}
