//! The node's view of the cluster network: the cluster's network settings, every node's
//! addresses and pod blocks, and the Services and EndpointSlices, as the server sends them.
//!
//! The transport (a tunnel, or a server's own node in-process) feeds [`NetEvent`]s in; the parts
//! that program the node (pod interfaces, routes to other nodes, Service packet rules, DNS)
//! read the [`View`] and wake on [`Network::subscribe`]. They are level-triggered: each compares
//! the view with what it last programmed and changes only the difference, so a burst of
//! changes is one pass and a missed wake-up is impossible.
//!
//! Invariants: a listing (between [`NetEvent::Listing`] and [`NetEvent::Listed`]) replaces the
//! view only when it ends, so a reader never sees half a listing; the generation number only
//! grows, once per change that readers can see.

// Its readers (pod interfaces, routes, Service rules, DNS) land next.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::api::cidr::Cidr;
use crate::api::network::{ClusterNetwork, Key, NodeNet, ServiceInfo, SliceInfo};

/// One change the server tells a node about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NetEvent {
    /// The cluster's settings; sent before each listing.
    Cluster(ClusterNetwork),
    /// A full listing of nodes, Services and slices follows.
    Listing,
    Node(NodeNet),
    NodeGone(String),
    Service(ServiceInfo),
    ServiceGone(Key),
    Slice(SliceInfo),
    SliceGone(Key),
    /// The listing ended: what it did not name is gone.
    Listed,
}

/// What a node knows of the cluster network.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub cluster: Option<ClusterNetwork>,
    pub nodes: BTreeMap<String, Arc<NodeNet>>,
    pub services: BTreeMap<Key, Arc<ServiceInfo>>,
    pub slices: BTreeMap<Key, Arc<SliceInfo>>,
    /// A first listing arrived: absence now means gone, not unknown.
    pub synced: bool,
}

/// The view and its readers' doorbell; shared by the transport and the node's programmers.
pub struct Network {
    node: String,
    state: Mutex<State>,
    generation: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    view: View,
    /// The listing being received.
    incoming: Option<View>,
}

impl Network {
    pub fn new(node: &str) -> Arc<Network> {
        Arc::new(Network {
            node: node.to_owned(),
            state: Mutex::new(State::default()),
            generation: watch::Sender::new(0),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is a few map operations that cannot panic half-way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes whenever the view changed (`changed()`); the value is the generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reads the view; keep `f` short (it holds the lock the transport writes under).
    pub fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        f(&self.lock().view)
    }

    /// This node's pod blocks (empty until the controllers gave it some).
    pub fn own_pod_cidrs(&self) -> Vec<Cidr> {
        self.read(|v| {
            v.nodes
                .get(&self.node)
                .map(|n| n.pod_cidrs.clone())
                .unwrap_or_default()
        })
    }

    pub fn apply(&self, ev: NetEvent) {
        let mut state = self.lock();
        let visible = match ev {
            NetEvent::Listing => {
                state.incoming = Some(View {
                    cluster: state.view.cluster.clone(),
                    synced: true,
                    ..View::default()
                });
                false
            }
            NetEvent::Listed => match state.incoming.take() {
                Some(view) => {
                    state.view = view;
                    true
                }
                None => false,
            },
            NetEvent::Cluster(c) => {
                let changed = state.view.cluster.as_ref() != Some(&c);
                if let Some(v) = state.incoming.as_mut() {
                    v.cluster = Some(c.clone());
                }
                state.view.cluster = Some(c);
                changed
            }
            ev => {
                let listing = state.incoming.is_some();
                let view = match state.incoming.as_mut() {
                    Some(v) => v,
                    None => &mut state.view,
                };
                match ev {
                    NetEvent::Node(n) => {
                        view.nodes.insert(n.name.clone(), Arc::new(n));
                    }
                    NetEvent::NodeGone(name) => {
                        view.nodes.remove(&name);
                    }
                    NetEvent::Service(s) => {
                        view.services.insert(s.key.clone(), Arc::new(s));
                    }
                    NetEvent::ServiceGone(k) => {
                        view.services.remove(&k);
                    }
                    NetEvent::Slice(s) => {
                        view.slices.insert(s.key.clone(), Arc::new(s));
                    }
                    NetEvent::SliceGone(k) => {
                        view.slices.remove(&k);
                    }
                    NetEvent::Cluster(_) | NetEvent::Listing | NetEvent::Listed => {}
                }
                !listing
            }
        };
        drop(state);
        if visible {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::network::Backend;

    fn node(name: &str, cidr: &str) -> NetEvent {
        NetEvent::Node(NodeNet {
            name: name.into(),
            addresses: vec![],
            pod_cidrs: vec![Cidr::parse(cidr).unwrap()],
            ready: true,
            lb: Default::default(),
        })
    }

    #[test]
    fn a_listing_replaces_the_view_only_when_it_ends() {
        let net = Network::new("pi1");
        let mut rx = net.subscribe();
        net.apply(NetEvent::Cluster(ClusterNetwork {
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            backend: Backend::Vxlan,
            lb_timing: Default::default(),
        }));
        net.apply(NetEvent::Listing);
        net.apply(node("pi1", "10.42.1.0/24"));
        net.apply(node("pi2", "10.42.2.0/24"));
        assert!(
            net.read(|v| v.nodes.is_empty() && !v.synced),
            "half a listing is not seen"
        );
        net.apply(NetEvent::Listed);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert_eq!(
            net.own_pod_cidrs(),
            vec![Cidr::parse("10.42.1.0/24").unwrap()]
        );

        // A second listing that leaves pi2 out removes it; the cluster settings stay.
        net.apply(NetEvent::Listing);
        net.apply(node("pi1", "10.42.1.0/24"));
        net.apply(NetEvent::Listed);
        assert!(net.read(|v| v.synced && v.nodes.len() == 1 && v.cluster.is_some()));

        net.apply(NetEvent::NodeGone("pi1".into()));
        assert!(rx.has_changed().unwrap());
        assert!(net.own_pod_cidrs().is_empty());
    }
}
