//! `/v1-keelson/encrypt/status` and `/v1-keelson/encrypt/rotate-keys`: what
//! `keelson secrets-encrypt` asks a running server (K3s's CLI does the same against its
//! `/v1-k3s/encrypt` endpoints), so an operator runs one command on any server board and the
//! server, which holds the keys and the datastore, does the work.
//!
//! Only the server token is accepted (HTTP basic, as for joins, and throttled the same way):
//! a board holding the agent token can neither read nor rotate keys. The rotation runs in its
//! own task, so a client that goes away does not stop it halfway; one runs per server at a
//! time. The keys themselves are [`crate::bootstrap::encryption`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, header};
use serde::Serialize;
use serde_json::Value;

use super::Api;
use super::resources::{NODES, SECRETS};
use super::status::{ApiError, Result};
use crate::bootstrap::encryption::{self, Encryption, Pass, SERVER_HASHES, key_name};

pub const STATUS_PATH: &str = "/v1-keelson/encrypt/status";
pub const ROTATE_PATH: &str = "/v1-keelson/encrypt/rotate-keys";
/// Longest a rotation waits for every running server to hold the new key before it
/// re-encrypts. Servers hear of it through the change feed within a poll interval (at once on
/// PostgreSQL and MariaDB); a server that misses this still reads everything (it reloads on
/// meeting an unknown key), and the later passes rewrite what it wrote meanwhile.
const SERVERS_SETTLE: Duration = Duration::from_secs(30);
/// Re-encryption passes at most. The first rewrites every Secret; the later ones rewrite what
/// a server wrote under the previous key before it reloaded; the rotation stops at the first
/// pass that finds nothing to do.
const MAX_PASSES: usize = 5;
/// Pause between passes, so writes in flight on other servers land first.
const PASS_PAUSE: Duration = Duration::from_millis(500);
/// Name the status uses for Secrets stored as plaintext (kube-apiserver's provider name).
const PLAINTEXT: &str = "identity";

/// The answer to `status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub enabled: bool,
    /// K3s's rotation stage names: `start` (one key, never rotated), `reencrypt_finished`
    /// (every Secret under the active key), `reencrypt_pending` (some are not: a rotation is
    /// running, or stopped early and `rotate-keys` should be run again).
    pub stage: String,
    pub active_key: Option<String>,
    pub keys: Vec<String>,
    /// How many Secrets are stored under each key (`identity`: plaintext).
    pub secrets_by_key: BTreeMap<String, usize>,
    /// The key-set hash each running server holds.
    pub servers: Vec<ServerHash>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerHash {
    pub node: String,
    pub hash: String,
    pub active_key: String,
}

/// The answer to `rotate-keys`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    pub previous_key: String,
    pub active_key: String,
    pub keys: Vec<String>,
    /// Whether every running server held the new key before re-encryption began.
    pub servers_in_sync: bool,
    pub passes: Vec<Pass>,
    /// Secrets still not under the active key after the last pass.
    pub remaining: usize,
}

/// `GET /v1-keelson/encrypt/status`.
pub async fn status(
    api: Arc<Api>,
    source: std::net::IpAddr,
    req: &Request<Incoming>,
) -> Result<Status> {
    authenticate(&api, source, req)?;
    let secrets_by_key = secrets_by_key(&api).await?;
    let Some(enc) = api.registry.encryption() else {
        return Ok(Status {
            enabled: false,
            stage: "disabled".into(),
            active_key: None,
            keys: Vec::new(),
            secrets_by_key,
            servers: Vec::new(),
        });
    };
    let held = enc.summary();
    let outside = secrets_by_key
        .iter()
        .filter(|(k, _)| **k != held.active)
        .map(|(_, n)| n)
        .sum::<usize>();
    let stage = if outside > 0 {
        "reencrypt_pending"
    } else if held.keys.len() == 1 && held.active == "key1" {
        "start"
    } else {
        "reencrypt_finished"
    };
    Ok(Status {
        enabled: true,
        stage: stage.into(),
        active_key: Some(held.active),
        keys: held.keys,
        secrets_by_key,
        servers: server_hashes(&api).await?,
    })
}

/// `POST /v1-keelson/encrypt/rotate-keys`: a new active key, every server told, every Secret
/// re-encrypted under it.
pub async fn rotate_keys(
    api: Arc<Api>,
    source: std::net::IpAddr,
    req: &Request<Incoming>,
) -> Result<Rotation> {
    authenticate(&api, source, req)?;
    let Some(enc) = api.registry.encryption().cloned() else {
        return Err(ApiError::BadRequest(
            "secrets encryption is off on this cluster: there are no keys to rotate \
             (encryption is chosen when the cluster is created: every server with --secrets-encryption)"
                .into(),
        ));
    };
    // In its own task: the rotation finishes even if the client disconnects.
    tokio::spawn(rotate(api, enc))
        .await
        .map_err(|e| ApiError::Internal(format!("the key rotation failed: {e}")))?
}

async fn rotate(api: Arc<Api>, enc: Arc<Encryption>) -> Result<Rotation> {
    let _slot = enc
        .begin_rotation()
        .map_err(|e| ApiError::ConflictWith(e.to_string()))?;
    let store = api.registry.store();
    let prefix = SECRETS.prefix(None);
    let previous = enc.summary().active;
    let (_, records) = store.list(&prefix).await?;
    let in_use: BTreeSet<String> = records.iter().filter_map(|r| key_name(&r.value)).collect();
    let active = enc.add_key(store, &in_use).await.map_err(internal)?;
    enc.announce(store).await.map_err(internal)?;
    let hash = enc.summary().hash;
    let servers_in_sync = wait_for_servers(&api, &hash).await;
    if !servers_in_sync {
        tracing::warn!(
            "not every running server reported the new secrets-encryption key within {} s; re-encrypting anyway (they reload when they meet it)",
            SERVERS_SETTLE.as_secs()
        );
    }
    let mut passes = Vec::new();
    for i in 0..MAX_PASSES {
        if i > 0 {
            tokio::time::sleep(PASS_PAUSE).await;
        }
        let pass = enc.reencrypt(store, &prefix).await.map_err(internal)?;
        let done = pass.rewritten == 0;
        passes.push(pass);
        if done {
            break;
        }
    }
    let remaining = secrets_by_key(&api)
        .await?
        .iter()
        .filter(|(k, _)| **k != active)
        .map(|(_, n)| n)
        .sum();
    tracing::info!(%previous, %active, remaining, passes = passes.len(), "secrets-encryption keys rotated");
    Ok(Rotation {
        previous_key: previous,
        active_key: active,
        keys: enc.summary().keys,
        servers_in_sync,
        passes,
        remaining,
    })
}

fn authenticate(api: &Api, source: std::net::IpAddr, req: &Request<Incoming>) -> Result<()> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    api.joiner.authenticate_server(auth, source)?;
    Ok(())
}

fn internal(e: encryption::Error) -> ApiError {
    match e {
        encryption::Error::Datastore(e) => e.into(),
        encryption::Error::RotationRunning | encryption::Error::Contended => {
            ApiError::ConflictWith(e.to_string())
        }
        e => ApiError::Internal(e.to_string()),
    }
}

/// Stored Secrets counted by the key that encrypts them.
async fn secrets_by_key(api: &Api) -> Result<BTreeMap<String, usize>> {
    let (_, records) = api.registry.store().list(&SECRETS.prefix(None)).await?;
    let mut counts = BTreeMap::new();
    for r in &records {
        let key = key_name(&r.value).unwrap_or_else(|| PLAINTEXT.into());
        *counts.entry(key).or_insert(0) += 1;
    }
    Ok(counts)
}

/// The hash each running server recorded. A server counts while its Node exists and is not
/// known to be down (as for the server list agents get), so a server that is gone for good
/// does not hold rotations up.
async fn server_hashes(api: &Api) -> Result<Vec<ServerHash>> {
    let (_, records) = api.registry.store().list(SERVER_HASHES).await?;
    let (_, nodes) = api.registry.list(&NODES, None).await?;
    let up = super::kinds::node::not_known_down(&nodes);
    Ok(records
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
        .filter_map(|v| {
            Some(ServerHash {
                node: v["node"].as_str()?.to_owned(),
                hash: v["hash"].as_str()?.to_owned(),
                active_key: v["active"].as_str()?.to_owned(),
            })
        })
        .filter(|s| up.contains(s.node.as_str()))
        .collect())
}

/// Waits until every running server reports `hash`; false if they did not within
/// [`SERVERS_SETTLE`].
async fn wait_for_servers(api: &Api, hash: &str) -> bool {
    let deadline = tokio::time::Instant::now() + SERVERS_SETTLE;
    loop {
        match server_hashes(api).await {
            Ok(servers) if servers.iter().all(|s| s.hash == hash) => return true,
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the servers' key hashes"),
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
