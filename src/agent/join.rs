//! Joining a cluster: pin the CA from the token, then trade the token for a node certificate.
//!
//! Order matters and is the security of the join: the CA is fetched anonymously and checked
//! against the SHA-256 in a K10 token *before* any credential is sent; only then does the
//! token secret go out, over TLS verified against that CA. A short token (no CA hash) still
//! joins, with a warning that the server was not verified.

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
    /// Whether trying again (later, or through another server) can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unreachable(_) | Error::Unavailable { .. })
    }
}

pub struct Joined {
    pub ca_pem: String,
    pub cert: ClientCert,
    pub servers: Vec<String>,
}

pub async fn join(addr: &str, token: &Token, node: &str, password: &str) -> Result<Joined, Error> {
    let anon = Target::new(addr, https::unverified_tls()?)?;
    let (status, body) = anon.send(get("/cacerts", addr)).await?;
    if status != StatusCode::OK {
        return Err(unavailable(addr, status, &body));
    }
    let ca_pem = String::from_utf8_lossy(&body).into_owned();
    let actual = hex::encode(ca_hash(&ca_pem));
    match token.ca_hash {
        Some(expected) if hex::encode(expected) != actual => {
            return Err(Error::CaMismatch {
                server: addr.to_owned(),
                expected: hex::encode(expected),
                actual,
            });
        }
        Some(_) => {}
        None => tracing::warn!(
            server = addr,
            ca_hash = %actual,
            "the token has no CA hash, so the server was NOT verified; use the K10 token from a server's <data-dir>/server/token"
        ),
    }
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
    let (status, body) = verified.send(req).await?;
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
