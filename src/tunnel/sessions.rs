//! The nodes this server keeps alive: its own node and every agent tunnelled to it.
//!
//! Heartbeats cost the database O(servers): every [`HEARTBEAT_INTERVAL`] one statement
//! records every node present here, whatever their number, and agents that just arrived are
//! recorded together after a short coalescing delay, so a node that moved from a dead server
//! is alive again at once. Also publishes the set of servers agents may use, read from the
//! servers' Node objects, so agents learn it without any server-to-server protocol.
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
/// Annotation on a server's own Node: where agents reach its API and tunnel endpoint.
pub const SERVER_ADDRESS_ANNOTATION: &str = "keelson.io/server-address";

pub struct Sessions {
    present: Mutex<HashMap<String, usize>>,
    arrivals: Mutex<Vec<String>>,
    arrived: Notify,
    servers: watch::Sender<Vec<String>>,
    pub tunnel_permits: Arc<Semaphore>,
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

impl Sessions {
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions {
            present: Mutex::new(HashMap::new()),
            arrivals: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            servers: watch::Sender::new(Vec::new()),
            tunnel_permits: Arc::new(Semaphore::new(MAX_TUNNELS)),
            tunnels_opened: AtomicU64::new(0),
            tunnels_refused: AtomicU64::new(0),
        })
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
                match registry.list(&NODES, None).await {
                    Ok((_, nodes)) => {
                        seen = Some(latest);
                        let list = server_addresses(&nodes);
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

/// Addresses of servers whose node is not known to be down, sorted.
fn server_addresses(nodes: &[Value]) -> Vec<String> {
    let mut list: Vec<String> = nodes
        .iter()
        .filter(|n| {
            !n.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] != "True")
                })
        })
        .filter_map(|n| {
            n.pointer("/metadata/annotations")
                .and_then(|a| a.get(SERVER_ADDRESS_ANNOTATION))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
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
        let s = Sessions::new();
        let a = s.enter("pi-1");
        let b = s.enter("pi-1");
        drop(a);
        assert_eq!(s.present(), vec!["pi-1".to_owned()]);
        drop(b);
        assert!(s.present().is_empty());
    }

    #[test]
    fn servers_are_ready_nodes_with_an_address() {
        let nodes = [
            json!({"metadata": {"annotations": {SERVER_ADDRESS_ANNOTATION: "198.18.0.2:6443"}},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            json!({"metadata": {"annotations": {SERVER_ADDRESS_ANNOTATION: "198.18.0.3:6443"}},
                   "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
            json!({"metadata": {"name": "agent"}}),
            json!({"metadata": {"annotations": {SERVER_ADDRESS_ANNOTATION: "198.18.0.1:6443"}}}),
        ];
        assert_eq!(
            server_addresses(&nodes),
            vec!["198.18.0.1:6443".to_owned(), "198.18.0.2:6443".to_owned()]
        );
    }
}
