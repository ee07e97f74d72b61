//! The nodes this server keeps alive: its own node and every agent tunnelled to it.
//!
//! Heartbeats cost the database O(servers): every [`HEARTBEAT_INTERVAL`] one statement
//! records every node present here, whatever their number, and agents that just arrived are
//! recorded together after a short coalescing delay, so a node that moved from a dead server
//! is alive again at once. Also publishes the set of servers agents may use, so agents learn
//! it without any server-to-server protocol.
//!
//! Invariant: the server list is built only from server records (`/registry/keelson.io/
//! servers/<node>`), which only servers write and no API path reaches, never from a field a
//! node can write: a node certificate cannot redirect agents, joins or the VIP's balancer.
//! A record counts while its server's Node exists and is not known to be down.
//!
//! Invariant: a node is present while at least one of its sessions is open; a guard removes
//! it when the last one ends, so a node can never be heartbeated by a server it left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, Semaphore, watch};

use crate::apiserver::registry::Registry;
use crate::apiserver::resources::NODES;
use crate::datastore::feed::Feed;

/// How often every present node's heartbeat is written: well inside the default 15 s grace.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Arrivals within this window share one statement.
const ARRIVAL_COALESCE: Duration = Duration::from_millis(250);
/// How often the server list is recomputed. Only if anything in the datastore changed, so an
/// idle cluster pays nothing, and a server that joins is known to agents and to the VIP's
/// balancer within a second.
const SERVERS_REFRESH: Duration = Duration::from_secs(1);
/// Most heartbeats in one statement (far below every database's bound-parameter limit).
const HEARTBEAT_CHUNK: usize = 5000;
/// Most tunnels one server holds; more agents get 503 and go to another server.
pub const MAX_TUNNELS: usize = 8192;
/// Most tunnels one node may hold on one server. An agent needs one; a second overlaps for a
/// moment when it reconnects. Without a cap one node certificate could take every tunnel.
pub const MAX_TUNNELS_PER_NODE: usize = 4;
/// Annotation on a server's own Node: where agents reach its API and tunnel endpoint. For
/// people (`kubectl describe node`); the server list reads the server records instead.
pub const SERVER_ADDRESS_ANNOTATION: &str = "keelson.io/server-address";
/// Where servers record their addresses: outside every API resource's prefix.
const SERVER_RECORDS: &str = "/registry/keelson.io/servers/";

/// Records (or updates) that the server whose node is `node` is reached at `address`.
pub async fn record_server(
    store: &crate::datastore::Store,
    node: &str,
    address: &str,
) -> Result<(), crate::datastore::Error> {
    let path = format!("{SERVER_RECORDS}{node}");
    let value = serde_json::json!({"node": node, "address": address}).to_string();
    match store.get(&path).await? {
        Some(rec) if rec.value == value.as_bytes() => Ok(()),
        Some(_) => store.update(&path, None, value.as_bytes()).await.map(drop),
        None => match store.create(&path, value.as_bytes()).await {
            Err(crate::datastore::Error::AlreadyExists(_)) => {
                store.update(&path, None, value.as_bytes()).await.map(drop)
            }
            other => other.map(drop),
        },
    }
}

pub struct Sessions {
    present: Mutex<HashMap<String, usize>>,
    /// Open tunnels per node; entries go when their count reaches zero.
    tunnels_by_node: Mutex<HashMap<String, usize>>,
    arrivals: Mutex<Vec<String>>,
    arrived: Notify,
    servers: watch::Sender<Vec<String>>,
    pub tunnel_permits: Arc<Semaphore>,
    /// Pods bound to nodes, pushed to their tunnels (see [`super::pods`]).
    pub pods: Arc<super::pods::PodRoutes>,
    /// The network view, pushed to the tunnels of nodes that run pods (see [`super::network`]).
    pub network: Arc<super::network::NetRoutes>,
    /// Streams (`kubectl logs`, `exec`) waiting for their node to dial back.
    pub streams: Arc<super::streams::Broker>,
    /// Records the events nodes report about their pods (made at the first one).
    notes: std::sync::OnceLock<crate::controllers::events::Recorder>,
    tunnels_opened: AtomicU64,
    tunnels_refused: AtomicU64,
}

/// Keeps a node present while held.
pub struct Presence {
    sessions: Arc<Sessions>,
    node: String,
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Ok(mut present) = self.sessions.present.lock()
            && let Some(n) = present.get_mut(&self.node)
        {
            *n -= 1;
            if *n == 0 {
                present.remove(&self.node);
            }
        }
    }
}

/// One of a node's tunnels; uncounted on drop.
pub struct NodeTunnel {
    sessions: Arc<Sessions>,
    node: String,
}

impl Drop for NodeTunnel {
    fn drop(&mut self) {
        let mut map = self
            .sessions
            .tunnels_by_node
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.node);
            }
        }
    }
}

impl Sessions {
    /// Counts a tunnel of `node`, unless it already holds [`MAX_TUNNELS_PER_NODE`].
    pub fn node_tunnel(self: &Arc<Self>, node: &str) -> Option<NodeTunnel> {
        let mut map = self
            .tunnels_by_node
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = map.entry(node.to_owned()).or_insert(0);
        if *n >= MAX_TUNNELS_PER_NODE {
            return None;
        }
        *n += 1;
        Some(NodeTunnel {
            sessions: self.clone(),
            node: node.to_owned(),
        })
    }

    pub fn new(cluster: crate::api::network::ClusterNetwork) -> Arc<Sessions> {
        Arc::new(Sessions {
            present: Mutex::new(HashMap::new()),
            tunnels_by_node: Mutex::new(HashMap::new()),
            arrivals: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            servers: watch::Sender::new(Vec::new()),
            tunnel_permits: Arc::new(Semaphore::new(MAX_TUNNELS)),
            pods: super::pods::PodRoutes::new(),
            network: super::network::NetRoutes::new(cluster),
            streams: Arc::new(super::streams::Broker::default()),
            notes: std::sync::OnceLock::new(),
            tunnels_opened: AtomicU64::new(0),
            tunnels_refused: AtomicU64::new(0),
        })
    }

    /// Records an event a node reports about one of its pods, if that pod is bound to it.
    pub async fn record_note(
        &self,
        registry: &Registry,
        node: &str,
        note: crate::node::pods::PodNote,
    ) {
        if !self.pods.is_bound(node, &note.key, &note.uid) {
            tracing::debug!(%node, pod = %note.key.name, "dropped an event about a pod not bound to the node");
            return;
        }
        let recorder = self
            .notes
            .get_or_init(|| crate::controllers::events::Recorder::new(registry.clone(), "kubelet"));
        let pod = serde_json::json!({"metadata": {
            "name": note.key.name, "namespace": note.key.namespace, "uid": note.uid,
        }});
        let kind = if note.warning {
            crate::controllers::events::Type::Warning
        } else {
            crate::controllers::events::Type::Normal
        };
        let message: String = note.message.chars().take(1024).collect();
        recorder
            .record(
                &crate::apiserver::resources::PODS,
                &pod,
                kind,
                &note.reason,
                &message,
            )
            .await;
    }

    /// Marks `node` present (heartbeated by this server) until the guard is dropped.
    pub fn enter(self: &Arc<Self>, node: &str) -> Presence {
        if let Ok(mut present) = self.present.lock() {
            *present.entry(node.to_owned()).or_insert(0) += 1;
        }
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.push(node.to_owned());
        }
        self.arrived.notify_one();
        Presence {
            sessions: self.clone(),
            node: node.to_owned(),
        }
    }

    pub fn tunnel_opened(&self) {
        self.tunnels_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tunnel_refused(&self) {
        self.tunnels_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Open tunnels right now.
    pub fn tunnels(&self) -> usize {
        MAX_TUNNELS - self.tunnel_permits.available_permits()
    }

    pub fn counters(&self) -> (u64, u64) {
        (
            self.tunnels_opened.load(Ordering::Relaxed),
            self.tunnels_refused.load(Ordering::Relaxed),
        )
    }

    pub fn servers(&self) -> watch::Receiver<Vec<String>> {
        self.servers.subscribe()
    }

    fn present(&self) -> Vec<String> {
        self.present
            .lock()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes heartbeats until `shutdown`: all present nodes every interval, arrivals soon.
    pub async fn run_heartbeats(
        self: Arc<Self>,
        registry: Registry,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let nodes = tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Ok(mut a) = self.arrivals.lock() { a.clear(); }
                    self.present()
                }
                _ = self.arrived.notified() => {
                    tokio::time::sleep(ARRIVAL_COALESCE).await;
                    let mut a = self.arrivals.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
                    a.sort();
                    a.dedup();
                    a
                }
            };
            for chunk in nodes.chunks(HEARTBEAT_CHUNK) {
                if let Err(e) = registry.store().heartbeat(chunk).await {
                    tracing::warn!(error = %e, nodes = chunk.len(), "heartbeat write failed");
                }
            }
        }
    }

    /// Keeps the published server list current until `shutdown`.
    pub async fn run_server_list(
        self: Arc<Self>,
        registry: Registry,
        feed: Feed,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut seen = None;
        loop {
            let latest = feed.latest();
            if seen != Some(latest) {
                let lists = async {
                    let (_, records) = registry.store().list(SERVER_RECORDS).await?;
                    let (_, nodes) = registry.list(&NODES, None).await?;
                    Ok::<_, crate::apiserver::status::ApiError>((records, nodes))
                };
                match lists.await {
                    Ok((records, nodes)) => {
                        seen = Some(latest);
                        let list = server_addresses(&records, &nodes);
                        self.servers.send_if_modified(|current| {
                            if *current == list {
                                false
                            } else {
                                tracing::info!(servers = ?list, "servers for agents changed");
                                *current = list;
                                true
                            }
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot list servers"),
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                // Until the first server (usually this one) has registered, look often:
                // agents and the VIP's balancer wait for this list.
                _ = tokio::time::sleep(if self.servers.borrow().is_empty() {
                    SERVERS_REFRESH / 5
                } else {
                    SERVERS_REFRESH
                }) => {}
            }
        }
    }
}

/// Addresses of recorded servers whose Node exists and is not known to be down, sorted.
fn server_addresses(records: &[crate::datastore::Record], nodes: &[Value]) -> Vec<String> {
    let up = crate::apiserver::kinds::node::not_known_down(nodes);
    let mut list: Vec<String> = records
        .iter()
        .filter_map(|rec| serde_json::from_slice::<Value>(&rec.value).ok())
        .filter(|r| r["node"].as_str().is_some_and(|n| up.contains(n)))
        .filter_map(|r| r["address"].as_str().map(str::to_owned))
        .collect();
    list.sort();
    list.dedup();
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_stays_present_until_its_last_session_ends() {
        let s = Sessions::new(test_network());
        let a = s.enter("pi-1");
        let b = s.enter("pi-1");
        drop(a);
        assert_eq!(s.present(), vec!["pi-1".to_owned()]);
        drop(b);
        assert!(s.present().is_empty());
    }

    #[test]
    fn a_node_holds_at_most_its_share_of_tunnels() {
        let s = Sessions::new(test_network());
        let held: Vec<_> = (0..MAX_TUNNELS_PER_NODE)
            .map(|_| s.node_tunnel("pi-1").unwrap())
            .collect();
        assert!(s.node_tunnel("pi-1").is_none());
        assert!(s.node_tunnel("pi-2").is_some());
        drop(held);
        assert!(s.node_tunnel("pi-1").is_some());
    }

    #[test]
    fn servers_are_recorded_servers_whose_node_is_up() {
        let record = |node: &str, address: &str| crate::datastore::Record {
            path: format!("{SERVER_RECORDS}{node}"),
            create_revision: 1,
            revision: 1,
            value: json!({"node": node, "address": address})
                .to_string()
                .into_bytes(),
        };
        let records = [
            record("s1", "198.18.0.1:6443"),
            record("s2", "198.18.0.2:6443"),
            record("s3", "198.18.0.3:6443"),
            record("gone", "198.18.0.4:6443"),
        ];
        let nodes = [
            json!({"metadata": {"name": "s2"},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            json!({"metadata": {"name": "s3"},
                   "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
            json!({"metadata": {"name": "s1"}}),
            // An agent that wrote the annotation itself (as a node could, before
            // NodeRestriction) is not a server.
            json!({"metadata": {"name": "agent", "annotations": {SERVER_ADDRESS_ANNOTATION: "203.0.113.9:6443"}}}),
        ];
        assert_eq!(
            server_addresses(&records, &nodes),
            vec!["198.18.0.1:6443".to_owned(), "198.18.0.2:6443".to_owned()]
        );
    }

    fn test_network() -> crate::api::network::ClusterNetwork {
        crate::api::network::ClusterNetwork {
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            backend: crate::api::network::Backend::Vxlan,
            lb_timing: Default::default(),
        }
    }
}
