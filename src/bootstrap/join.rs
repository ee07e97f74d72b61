//! The server side of joining: check an agent's token and node password, issue its
//! client certificate.
//!
//! `POST /v1-keelson/join` with `Authorization: Basic <base64 of user:secret>` (the token's
//! secret; the user part is ignored, as the K10 form's `node`/`server` only says which token
//! it came from) and a JSON [`JoinRequest`]. Either the server token or the agent token
//! (`--agent-token`) is accepted; only the server token opens the sealed cluster data, so a
//! board holding the agent token can join as an agent but can never start a server.
//!
//! Node passwords: the first join of a node name stores the SHA-256 of its password (a 256-bit
//! random value, so a plain hash is enough) in the datastore; a later join of that name must
//! present the same password. Deleting the Node frees the name. Secrets are compared as
//! hashes of equal length, so timing reveals nothing about them.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::pki::ClusterCa;
use crate::apiserver::auth::{NODE_USER_PREFIX, NODES_GROUP};
use crate::apiserver::status::ApiError;
use crate::datastore::Store;

pub const PATH: &str = "/v1-keelson/join";

/// The datastore row holding a node's password hash.
pub fn node_password_secret(node: &str) -> String {
    format!("node-password/{node}")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub node_name: String,
    pub node_password: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    /// PEM client certificate for `system:node:<name>`.
    pub certificate: String,
    pub key: String,
    /// Every server's `host:port`, for the agent's balancer.
    pub servers: Vec<String>,
}

pub struct Joiner {
    ca: ClusterCa,
    /// SHA-256 of every secret that may join an agent.
    accepted: Vec<[u8; 32]>,
    requests: AtomicU64,
}

impl Joiner {
    pub fn new(ca: ClusterCa, server_secret: &str, agent_secret: Option<&str>) -> Joiner {
        let mut accepted = vec![sha256(server_secret.as_bytes())];
        accepted.extend(agent_secret.map(|s| sha256(s.as_bytes())));
        Joiner {
            ca,
            accepted,
            requests: AtomicU64::new(0),
        }
    }

    /// Join requests that carried credentials, since start (a metric: a client that refused
    /// the server's CA must never add to it).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub async fn join(
        &self,
        store: &Store,
        authorization: Option<&str>,
        body: &[u8],
        servers: Vec<String>,
    ) -> Result<JoinResponse, ApiError> {
        let secret = basic_password(authorization).ok_or(ApiError::Unauthorized)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let given = sha256(secret.as_bytes());
        // Every candidate is compared in full, so the time taken does not depend on which
        // (if any) matched.
        let ok = self
            .accepted
            .iter()
            .fold(false, |ok, a| ok | ring_eq(a, &given));
        if !ok {
            return Err(ApiError::Unauthorized);
        }
        let req: JoinRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the join request is not valid: {e}")))?;
        if !crate::agent::node::is_dns_subdomain(&req.node_name) {
            return Err(ApiError::BadRequest(format!(
                "node name {:?} is not a valid node name (lower-case letters, digits, '-' and '.')",
                req.node_name
            )));
        }
        if req.node_password.len() < 16 {
            return Err(ApiError::BadRequest(
                "the node password is missing or too short".into(),
            ));
        }
        let key = node_password_secret(&req.node_name);
        let hash = hex::encode(sha256(req.node_password.as_bytes()));
        if !store.insert_secret(&key, hash.as_bytes()).await? {
            let stored = store.secret(&key).await?.unwrap_or_default();
            let stored: [u8; 32] = hex::decode(&stored)
                .ok()
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 32]);
            if !ring_eq(&stored, &sha256(req.node_password.as_bytes())) {
                tracing::warn!(node = %req.node_name, "join refused: node password differs from the one this node name registered with");
                return Err(ApiError::Forbidden(format!(
                    "node {:?} is already registered by another board (its node password differs). \
                     Start this agent with --with-node-id to give it a unique name, or, if the board \
                     was replaced, delete the old node first (kubectl delete node {})",
                    req.node_name, req.node_name
                )));
            }
        }
        let issued = self
            .ca
            .issue_client(&format!("{NODE_USER_PREFIX}{}", req.node_name), NODES_GROUP)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        tracing::info!(node = %req.node_name, "agent joined; issued its client certificate");
        Ok(JoinResponse {
            certificate: issued.cert_pem,
            key: issued.key_pem,
            servers,
        })
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time equality of two hashes.
fn ring_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The password of a `Basic` authorization header.
fn basic_password(header: Option<&str>) -> Option<String> {
    use base64::Engine;
    let encoded = header?.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// The `Authorization` header an agent sends for `secret`.
pub fn basic_authorization(secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("node:{secret}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_round_trip() {
        assert_eq!(
            basic_password(Some(&basic_authorization("s3cret"))).as_deref(),
            Some("s3cret")
        );
        assert_eq!(basic_password(Some("Bearer x")), None);
        assert_eq!(basic_password(Some("Basic !!!")), None);
        assert_eq!(basic_password(None), None);
    }

    #[tokio::test]
    async fn wrong_secret_and_taken_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &crate::datastore::Endpoint::sqlite(dir.path().join("s.db")),
            &crate::datastore::PoolConfig::default(),
        )
        .await
        .unwrap();
        let j = Joiner::new(
            ClusterCa::generate().unwrap(),
            "server-secret",
            Some("agent-secret"),
        );
        let body = |pw: &str| {
            serde_json::to_vec(&JoinRequest {
                node_name: "pi-1".into(),
                node_password: pw.into(),
            })
            .unwrap()
        };
        let pw1 = "a".repeat(32);
        let auth = basic_authorization("wrong");
        assert!(matches!(
            j.join(&store, Some(&auth), &body(&pw1), vec![]).await,
            Err(ApiError::Unauthorized)
        ));
        let auth = basic_authorization("agent-secret");
        j.join(&store, Some(&auth), &body(&pw1), vec![])
            .await
            .unwrap();
        // The same board again: fine.
        j.join(&store, Some(&auth), &body(&pw1), vec![])
            .await
            .unwrap();
        match j
            .join(&store, Some(&auth), &body(&"b".repeat(32)), vec![])
            .await
        {
            Err(ApiError::Forbidden(m)) => assert!(m.contains("--with-node-id"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(j.requests(), 4);
    }
}
