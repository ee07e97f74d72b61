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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::pki::ClusterCa;
use super::pki::{NODE_USER_PREFIX, NODES_GROUP};
use crate::datastore::{self, Store};

/// Why a join, a node's certificate check or a name claim was refused. The API answers each
/// with its HTTP status (`From<JoinError> for ApiError`); this module knows nothing of HTTP
/// beyond that, so the API may build on it without a circle.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// 401: no token, a wrong one, or a node certificate of an older registration.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403, with what the caller may not do.
    #[error("{0}")]
    Forbidden(String),
    /// 400: the request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 429: this source sent too many wrong tokens.
    #[error("{0}")]
    TooManyRequests(String),
    /// 500: signing failed.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Datastore(#[from] datastore::Error),
}

pub const PATH: &str = "/v1-keelson/join";
/// Largest join body read: a name of at most 253 characters and a password.
pub const MAX_BODY: usize = 4 * 1024;
/// Wrong tokens a source may send before it must wait between attempts.
const FREE_FAILURES: u32 = 5;
/// The wait after the first failure past the free ones; it doubles with each further one.
const BLOCK_MIN: Duration = Duration::from_secs(1);
/// The longest wait. Agents behind one NAT (or the VIP's balancer) share an address, so a
/// misconfigured one may not lock the others out for long.
const BLOCK_MAX: Duration = Duration::from_secs(60);
/// A source's failures are forgotten after this long without one.
const STRIKES_FORGOTTEN: Duration = Duration::from_secs(600);
/// Sources tracked at most; beyond it the oldest entries make room (bounded memory whatever
/// the number of addresses an attacker has).
const MAX_SOURCES: usize = 4096;
/// At most one log line about failed joins per this interval.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Registrations of agents that never showed up as a Node are forgotten after this long.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(3600);
/// Prefix of the password rows.
const PASSWORD_PREFIX: &str = "node-password/";
/// Width of `keelson_secrets.name`: longer names are keyed by their hash.
const SECRET_NAME_MAX: usize = 64;

/// The datastore row holding a node name's registration. Names too long for the column
/// (node names may have 253 characters) are keyed by their SHA-256, so no database ever
/// truncates two names to one key.
pub fn node_password_secret(node: &str) -> String {
    let plain = format!("{PASSWORD_PREFIX}{node}");
    if plain.len() <= SECRET_NAME_MAX {
        return plain;
    }
    use base64::Engine;
    // '#' never occurs in a node name, so hashed keys cannot meet plain ones.
    format!(
        "{PASSWORD_PREFIX}#{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(node.as_bytes()))
    )
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

/// Who owns a node name: what its password row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// A server's own node. No join may take the name.
    Server,
    /// An agent board, known by the hash of its node password. `generation` changes every
    /// time the name is registered anew (after the Node was deleted), and node certificates
    /// carry it, so a deleted board's certificate does not act on its replacement. Rows
    /// written before generations existed have none (and no creation time).
    Agent {
        hash: [u8; 32],
        generation: Option<String>,
        created: Option<i64>,
    },
}

// === impl Registration ===

impl Registration {
    fn new_agent(password: &str) -> Registration {
        Registration::Agent {
            hash: sha256(password.as_bytes()),
            generation: Some(super::pki::random_hex(8)),
            created: Some(unix_now()),
        }
    }

    fn encode(&self, node: &str) -> Vec<u8> {
        let v = match self {
            Registration::Server => json!({"owner": "server", "node": node}),
            Registration::Agent {
                hash,
                generation,
                created,
            } => json!({
                "owner": "agent",
                "node": node,
                "hash": hex::encode(hash),
                "generation": generation,
                "created": created,
            }),
        };
        v.to_string().into_bytes()
    }

    /// Reads a row; `None` for one that is neither form (treated as owned by nobody we can
    /// verify, so every join for the name is refused until the Node is deleted).
    fn decode(raw: &[u8]) -> Option<(Option<String>, Registration)> {
        // Before generations a row was the hex SHA-256 of the password alone. Told apart by
        // content, not length: a JSON row can be 64 bytes long too.
        if raw.first() != Some(&b'{') {
            let hash = hex::decode(raw).ok()?.try_into().ok()?;
            return Some((
                None,
                Registration::Agent {
                    hash,
                    generation: None,
                    created: None,
                },
            ));
        }
        let v: Value = serde_json::from_slice(raw).ok()?;
        let node = v["node"].as_str().map(str::to_owned);
        let reg = match v["owner"].as_str()? {
            "server" => Registration::Server,
            "agent" => Registration::Agent {
                hash: hex::decode(v["hash"].as_str()?).ok()?.try_into().ok()?,
                generation: v["generation"].as_str().map(str::to_owned),
                created: v["created"].as_i64(),
            },
            _ => return None,
        };
        Some((node, reg))
    }
}

/// Proof that a request's token was checked; [`Joiner::join`] takes one, so nothing reads a
/// join body before its token was accepted.
pub struct Authenticated(());

pub struct Joiner {
    ca: ClusterCa,
    /// SHA-256 of every secret that may join an agent.
    accepted: Vec<[u8; 32]>,
    requests: AtomicU64,
    failures: AtomicU64,
    throttled: AtomicU64,
    throttle: Mutex<Throttle>,
}

impl Joiner {
    pub fn new(ca: ClusterCa, server_secret: &str, agent_secret: Option<&str>) -> Joiner {
        let mut accepted = vec![sha256(server_secret.as_bytes())];
        accepted.extend(agent_secret.map(|s| sha256(s.as_bytes())));
        Joiner {
            ca,
            accepted,
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            throttle: Mutex::new(Throttle::default()),
        }
    }

    /// Join requests that carried credentials, since start (a metric: a client that refused
    /// the server's CA must never add to it).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Joins refused for a wrong or missing token, and joins refused unread because their
    /// source sent too many wrong tokens (metrics).
    pub fn refusals(&self) -> (u64, u64) {
        (
            self.failures.load(Ordering::Relaxed),
            self.throttled.load(Ordering::Relaxed),
        )
    }

    /// Checks the token of a join request from `source`, before its body is read. A source
    /// that keeps sending wrong tokens waits between attempts (429), whether or not its next
    /// token is right, so guessing costs time.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        source: IpAddr,
    ) -> Result<Authenticated, JoinError> {
        self.check(authorization, source, &self.accepted, true)
    }

    /// Checks a request that only the server token may make (`keelson secrets-encrypt`): the
    /// agent token is refused. Wrong tokens are throttled like joins.
    pub fn authenticate_server(
        &self,
        authorization: Option<&str>,
        source: IpAddr,
    ) -> Result<Authenticated, JoinError> {
        // Invariant: `accepted` starts with the server token's hash (see `new`).
        self.check(authorization, source, &self.accepted[..1], false)
    }

    fn check(
        &self,
        authorization: Option<&str>,
        source: IpAddr,
        accepted: &[[u8; 32]],
        join: bool,
    ) -> Result<Authenticated, JoinError> {
        let now = Instant::now();
        if let Some(wait) = self.lock_throttle().blocked(source, now) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(JoinError::TooManyRequests(format!(
                "too many failed joins from this address; try again in {} s",
                wait.as_secs().max(1)
            )));
        }
        let secret = basic_password(authorization);
        if secret.is_some() && join {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        let given = sha256(secret.unwrap_or_default().as_bytes());
        // Every candidate is compared in full, so the time taken does not depend on which
        // (if any) matched.
        let ok = accepted.iter().fold(false, |ok, a| ok | ring_eq(a, &given));
        let mut throttle = self.lock_throttle();
        if ok {
            throttle.forgive(source);
            return Ok(Authenticated(()));
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        throttle.strike(source, now);
        if let Some(report) = throttle.report(now) {
            tracing::warn!(
                failed = report.failed,
                sources = report.sources,
                last_source = %source,
                "join requests with a wrong token (reported at most every {} s)",
                FAILURE_LOG_INTERVAL.as_secs()
            );
        }
        Err(JoinError::Unauthorized)
    }

    fn lock_throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        // The throttle is bookkeeping; a panic while it was held leaves it usable.
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn join(
        &self,
        store: &Store,
        _token_checked: Authenticated,
        body: &[u8],
        servers: Vec<String>,
    ) -> Result<JoinResponse, JoinError> {
        let req: JoinRequest = serde_json::from_slice(body)
            .map_err(|e| JoinError::BadRequest(format!("the join request is not valid: {e}")))?;
        if !crate::api::labels::is_dns_subdomain(&req.node_name) {
            return Err(JoinError::BadRequest(format!(
                "node name {:?} is not a valid node name (at most 253 lower-case letters, digits, '-' and '.')",
                req.node_name
            )));
        }
        if req.node_password.len() < 16 {
            return Err(JoinError::BadRequest(
                "the node password is missing or too short".into(),
            ));
        }
        let key = node_password_secret(&req.node_name);
        let fresh = Registration::new_agent(&req.node_password);
        let registration = if store
            .insert_secret(&key, &fresh.encode(&req.node_name))
            .await?
        {
            fresh
        } else {
            let stored = store.secret(&key).await?.unwrap_or_default();
            match Registration::decode(&stored) {
                Some((_, Registration::Server)) => {
                    tracing::warn!(node = %req.node_name, "join refused: the name belongs to a server");
                    return Err(JoinError::Forbidden(format!(
                        "node name {:?} belongs to a server of this cluster; an agent may not join with it. \
                         Give this agent another --node-name (or --with-node-id)",
                        req.node_name
                    )));
                }
                Some((_, reg @ Registration::Agent { hash, .. }))
                    if ring_eq(&hash, &sha256(req.node_password.as_bytes())) =>
                {
                    reg
                }
                _ => {
                    tracing::warn!(node = %req.node_name, "join refused: node password differs from the one this node name registered with");
                    return Err(JoinError::Forbidden(format!(
                        "node {:?} is already registered by another board (its node password differs). \
                         Start this agent with --with-node-id to give it a unique name, or, if the board \
                         was replaced, delete the old node first (kubectl delete node {})",
                        req.node_name, req.node_name
                    )));
                }
            }
        };
        let user = format!("{NODE_USER_PREFIX}{}", req.node_name);
        let issued = match &registration {
            Registration::Agent {
                generation: Some(g),
                ..
            } => self.ca.issue_node_client(&user, NODES_GROUP, g),
            _ => self.ca.issue_client(&user, NODES_GROUP),
        }
        .map_err(|e| JoinError::Internal(e.to_string()))?;
        tracing::info!(node = %req.node_name, "agent joined; issued its client certificate");
        Ok(JoinResponse {
            certificate: issued.cert_pem,
            key: issued.key_pem,
            servers,
        })
    }
}

/// Claims `node` for a server (its own node registers in-process, without a password): from
/// then on no join may take the name. Fails if an agent board registered the name first.
pub async fn claim_for_server(store: &Store, node: &str) -> Result<(), JoinError> {
    let key = node_password_secret(node);
    if store
        .insert_secret(&key, &Registration::Server.encode(node))
        .await?
    {
        return Ok(());
    }
    match store
        .secret(&key)
        .await?
        .as_deref()
        .map(Registration::decode)
    {
        Some(Some((_, Registration::Server))) => Ok(()),
        _ => Err(JoinError::Forbidden(format!(
            "node name {node:?} is registered by an agent board; this server cannot use it. \
             Start the server with another --node-name, or delete that node first (kubectl delete node {node})"
        ))),
    }
}

/// Whether a node certificate (for `node`, carrying `generation`) still belongs to the
/// registration of that name: refused once the Node was deleted (and maybe taken again), and
/// always for a server's name (such a certificate was never meant to exist).
pub async fn verify_node(
    store: &Store,
    node: &str,
    generation: Option<&str>,
) -> Result<(), JoinError> {
    let stored = store.secret(&node_password_secret(node)).await?;
    let current = stored.as_deref().and_then(Registration::decode);
    match current {
        Some((
            _,
            Registration::Agent {
                generation: ref g, ..
            },
        )) if g.as_deref() == generation => Ok(()),
        other => {
            let why = match other {
                None => "the node's registration is gone (the Node was deleted)",
                Some((_, Registration::Server)) => "the name belongs to a server",
                Some(_) => "it was issued for an earlier registration of this name",
            };
            tracing::info!(%node, reason = why, "refused a node certificate");
            Err(JoinError::Unauthorized)
        }
    }
}

/// Frees a deleted node's name for a replacement board (as K3s does). A server's claim on
/// its name stays: only its own start or an admin's database work can change that.
pub async fn forget_node(store: &Store, node: &str) -> Result<(), JoinError> {
    let key = node_password_secret(node);
    if let Some(raw) = store.secret(&key).await?
        && matches!(Registration::decode(&raw), Some((_, Registration::Server)))
    {
        return Ok(());
    }
    store.delete_secret(&key).await?;
    Ok(())
}

/// Deletes agent registrations older than [`ORPHAN_AFTER`] whose node never registered (a
/// holder of the agent token can create one per name it makes up). `is_node` says whether a
/// Node of that name exists. Returns how many were deleted.
pub async fn forget_orphans(
    store: &Store,
    is_node: impl Fn(&str) -> bool,
) -> Result<usize, JoinError> {
    let now = unix_now();
    let mut forgotten = 0;
    for (key, raw) in store.secrets_with_prefix(PASSWORD_PREFIX).await? {
        let Some((
            Some(node),
            Registration::Agent {
                created: Some(created),
                ..
            },
        )) = Registration::decode(&raw)
        else {
            continue;
        };
        let age = u64::try_from(now - created).unwrap_or(0);
        if age >= ORPHAN_AFTER.as_secs() && !is_node(&node) {
            store.delete_secret(&key).await?;
            forgotten += 1;
        }
    }
    Ok(forgotten)
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Failed joins per source address, and the waits they earned.
#[derive(Default)]
struct Throttle {
    sources: HashMap<IpAddr, Strikes>,
    unreported: u64,
    unreported_sources: std::collections::HashSet<IpAddr>,
    last_report: Option<Instant>,
}

struct Strikes {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

struct Report {
    failed: u64,
    sources: usize,
}

// === impl Throttle ===

impl Throttle {
    fn blocked(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.sources.get(&source_key(source))?.blocked_until?;
        (until > now).then(|| until - now)
    }

    fn strike(&mut self, source: IpAddr, now: Instant) {
        let key = source_key(source);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            self.sources
                .retain(|_, s| now.duration_since(s.last) < STRIKES_FORGOTTEN);
            if self.sources.len() >= MAX_SOURCES
                && let Some(oldest) = self
                    .sources
                    .iter()
                    .min_by_key(|(_, s)| s.last)
                    .map(|(k, _)| *k)
            {
                self.sources.remove(&oldest);
            }
        }
        let s = self.sources.entry(key).or_insert(Strikes {
            count: 0,
            last: now,
            blocked_until: None,
        });
        if now.duration_since(s.last) >= STRIKES_FORGOTTEN {
            s.count = 0;
        }
        s.count += 1;
        s.last = now;
        if s.count > FREE_FAILURES {
            let doublings = (s.count - FREE_FAILURES - 1).min(16);
            s.blocked_until = Some(now + (BLOCK_MIN * 2u32.pow(doublings)).min(BLOCK_MAX));
        }
        self.unreported += 1;
        if self.unreported_sources.len() < MAX_SOURCES {
            self.unreported_sources.insert(key);
        }
    }

    fn forgive(&mut self, source: IpAddr) {
        self.sources.remove(&source_key(source));
    }

    /// What to log now, if the last line is old enough.
    fn report(&mut self, now: Instant) -> Option<Report> {
        if self
            .last_report
            .is_some_and(|t| now.duration_since(t) < FAILURE_LOG_INTERVAL)
        {
            return None;
        }
        self.last_report = Some(now);
        let report = Report {
            failed: std::mem::take(&mut self.unreported),
            sources: self.unreported_sources.len(),
        };
        self.unreported_sources.clear();
        Some(report)
    }
}

/// IPv6 clients usually hold a whole /64: count them as one source.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ),
        v4 => v4,
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

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(
            &crate::datastore::Endpoint::sqlite(dir.path().join("s.db")),
            &crate::datastore::PoolConfig::default(),
        )
        .await
        .unwrap()
    }

    fn body(name: &str, pw: &str) -> Vec<u8> {
        serde_json::to_vec(&JoinRequest {
            node_name: name.into(),
            node_password: pw.into(),
        })
        .unwrap()
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A joiner whose server secret is `server-secret`.
    fn joiner() -> Joiner {
        Joiner::new(ClusterCa::generate().unwrap(), "server-secret", None)
    }

    fn authenticated(j: &Joiner) -> Authenticated {
        j.authenticate(Some(&basic_authorization("server-secret")), HOME)
            .unwrap()
    }

    #[tokio::test]
    async fn wrong_secret_and_taken_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let j = Joiner::new(
            ClusterCa::generate().unwrap(),
            "server-secret",
            Some("agent-secret"),
        );
        let pw1 = "a".repeat(32);
        let auth = basic_authorization("wrong");
        assert!(matches!(
            j.authenticate(Some(&auth), HOME),
            Err(JoinError::Unauthorized)
        ));
        let auth = basic_authorization("agent-secret");
        let ok = || j.authenticate(Some(&auth), HOME).unwrap();
        j.join(&store, ok(), &body("pi-1", &pw1), vec![])
            .await
            .unwrap();
        // The same board again: fine.
        j.join(&store, ok(), &body("pi-1", &pw1), vec![])
            .await
            .unwrap();
        match j
            .join(&store, ok(), &body("pi-1", &"b".repeat(32)), vec![])
            .await
        {
            Err(JoinError::Forbidden(m)) => assert!(m.contains("--with-node-id"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(j.requests(), 4);
        assert_eq!(j.refusals(), (1, 0));
    }

    #[tokio::test]
    async fn a_servers_name_cannot_be_joined_and_an_agents_cannot_be_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let j = joiner();
        let ok = || j.authenticate(Some(&basic_authorization("server-secret")), HOME);
        claim_for_server(&store, "server-1").await.unwrap();
        claim_for_server(&store, "server-1").await.unwrap();
        match j
            .join(
                &store,
                ok().unwrap(),
                &body("server-1", &"a".repeat(32)),
                vec![],
            )
            .await
        {
            Err(JoinError::Forbidden(m)) => assert!(m.contains("belongs to a server"), "{m}"),
            other => panic!("{other:?}"),
        }
        j.join(
            &store,
            ok().unwrap(),
            &body("pi-1", &"a".repeat(32)),
            vec![],
        )
        .await
        .unwrap();
        assert!(matches!(
            claim_for_server(&store, "pi-1").await,
            Err(JoinError::Forbidden(_))
        ));
        // Deleting a server's Node leaves its claim; an agent's is freed.
        forget_node(&store, "server-1").await.unwrap();
        assert!(claim_for_server(&store, "server-1").await.is_ok());
        assert!(
            store
                .secret(&node_password_secret("server-1"))
                .await
                .unwrap()
                .is_some()
        );
        forget_node(&store, "pi-1").await.unwrap();
        assert!(
            store
                .secret(&node_password_secret("pi-1"))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn certificates_are_bound_to_one_registration_of_the_name() {
        use crate::apiserver::auth::Identity;
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let j = joiner();
        let ok = || authenticated(&j);
        let identity = |r: &JoinResponse| {
            Identity::from_certificate(&crate::bootstrap::pki::pem_to_der(&r.certificate).unwrap())
        };
        let first = j
            .join(&store, ok(), &body("pi-1", &"a".repeat(32)), vec![])
            .await
            .unwrap();
        let first = identity(&first);
        verify_node(&store, "pi-1", first.generation())
            .await
            .unwrap();
        // A renewal keeps the generation.
        let renewed = j
            .join(&store, ok(), &body("pi-1", &"a".repeat(32)), vec![])
            .await
            .unwrap();
        assert_eq!(identity(&renewed).generation(), first.generation());
        forget_node(&store, "pi-1").await.unwrap();
        assert!(matches!(
            verify_node(&store, "pi-1", first.generation()).await,
            Err(JoinError::Unauthorized)
        ));
        let replacement = j
            .join(&store, ok(), &body("pi-1", &"b".repeat(32)), vec![])
            .await
            .unwrap();
        let replacement = identity(&replacement);
        assert_ne!(replacement.generation(), first.generation());
        verify_node(&store, "pi-1", replacement.generation())
            .await
            .unwrap();
        assert!(matches!(
            verify_node(&store, "pi-1", first.generation()).await,
            Err(JoinError::Unauthorized)
        ));
        assert!(matches!(
            verify_node(&store, "pi-1", None).await,
            Err(JoinError::Unauthorized)
        ));
    }

    #[tokio::test]
    async fn long_names_get_keys_that_fit_and_do_not_collide() {
        // The longest node name: 253 characters in labels of at most 63.
        let long = |last: char| format!("{0}.{0}.{0}.{1}{last}", "x".repeat(63), "x".repeat(60));
        let (a, b) = (long('a'), long('b'));
        assert_eq!(a.len(), 253);
        for name in [&a, &b] {
            assert!(node_password_secret(name).len() <= SECRET_NAME_MAX);
        }
        assert_ne!(node_password_secret(&a), node_password_secret(&b));
        assert_eq!(node_password_secret("pi-1"), "node-password/pi-1");
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let j = joiner();
        let ok = || authenticated(&j);
        j.join(&store, ok(), &body(&a, &"a".repeat(32)), vec![])
            .await
            .unwrap();
        j.join(&store, ok(), &body(&b, &"b".repeat(32)), vec![])
            .await
            .unwrap();
        j.join(&store, ok(), &body(&a, &"a".repeat(32)), vec![])
            .await
            .unwrap();
    }

    #[test]
    fn rows_are_read_by_their_form_whatever_their_length() {
        // `{"node":"<36 characters>","owner":"server"}` is 64 bytes, as a legacy hash row.
        let name = "s".repeat(36);
        let row = Registration::Server.encode(&name);
        assert_eq!(row.len(), 64);
        assert_eq!(
            Registration::decode(&row),
            Some((Some(name), Registration::Server))
        );
        let legacy = hex::encode([7u8; 32]);
        assert!(matches!(
            Registration::decode(legacy.as_bytes()),
            Some((
                None,
                Registration::Agent {
                    generation: None,
                    ..
                }
            ))
        ));
    }

    #[tokio::test]
    async fn orphaned_registrations_are_forgotten_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let old = Registration::Agent {
            hash: [1; 32],
            generation: Some("g".into()),
            created: Some(unix_now() - ORPHAN_AFTER.as_secs() as i64 - 1),
        };
        for name in ["ghost", "live"] {
            store
                .insert_secret(&node_password_secret(name), &old.encode(name))
                .await
                .unwrap();
        }
        let young = Registration::new_agent(&"c".repeat(32));
        store
            .insert_secret(&node_password_secret("young"), &young.encode("young"))
            .await
            .unwrap();
        claim_for_server(&store, "server-1").await.unwrap();
        let n = forget_orphans(&store, |n| n == "live").await.unwrap();
        assert_eq!(n, 1);
        for (name, kept) in [
            ("ghost", false),
            ("live", true),
            ("young", true),
            ("server-1", true),
        ] {
            let row = store.secret(&node_password_secret(name)).await.unwrap();
            assert_eq!(row.is_some(), kept, "{name}");
        }
    }

    #[test]
    fn a_source_that_keeps_failing_waits_longer_each_time() {
        let mut t = Throttle::default();
        let now = Instant::now();
        let other: IpAddr = "198.18.0.9".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            t.strike(HOME, now);
        }
        assert_eq!(t.blocked(HOME, now), None);
        t.strike(HOME, now);
        assert_eq!(t.blocked(HOME, now), Some(BLOCK_MIN));
        t.strike(HOME, now);
        assert_eq!(t.blocked(HOME, now), Some(BLOCK_MIN * 2));
        for _ in 0..40 {
            t.strike(HOME, now);
        }
        assert_eq!(t.blocked(HOME, now), Some(BLOCK_MAX));
        assert_eq!(t.blocked(other, now), None);
        assert_eq!(t.blocked(HOME, now + BLOCK_MAX), None);
        t.forgive(HOME);
        assert_eq!(t.blocked(HOME, now), None);
        // One log line per interval, counting everything since the last.
        assert_eq!(t.report(now).map(|r| (r.failed, r.sources)), Some((47, 1)));
        t.strike(other, now);
        assert!(t.report(now).is_none());
        assert_eq!(
            t.report(now + FAILURE_LOG_INTERVAL).map(|r| r.failed),
            Some(1)
        );
        // IPv6 neighbours in one /64 are one source.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
    }
}
