//! The server end of the network view: every node's addresses and pod blocks, every Service
//! and every EndpointSlice, in their compact node form ([`crate::api::network`]), pushed to the
//! tunnels of nodes that run pods.
//!
//! As for pod assignments ([`super::pods`]), one task per server follows the change feed for
//! all its nodes: it lists nodes, Services and slices once, then decodes each change once and
//! hands the same compact value to every listener. A change that leaves the compact value as it
//! was (a node's heartbeat, a Service's status) sends nothing, so idle clusters are silent.
//!
//! Invariants: a listener first receives the cluster settings and a full listing (once the
//! index is synced), then every change after it in feed order; a listener whose queue is full
//! is dropped, not waited for (its session listens again and gets a fresh listing).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::api::network::{ClusterNetwork, Key, NodeNet, ServiceInfo, SliceInfo};
use crate::apiserver::registry::Registry;
use crate::apiserver::resources::{ENDPOINTSLICES, NODES, ObjectRef, Resource, SERVICES};
use crate::apiserver::status::ApiError;
use crate::datastore::feed::Feed;
use crate::datastore::{EventKind, Record};
use crate::node::network::NetEvent;

/// Changes queued for one tunnel before it counts as stuck and is made to list again. Larger
/// than the pods' queue: creating a thousand Services is a burst every node hears.
pub const LISTENER_QUEUE: usize = 4096;
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What a tunnel session sends its node.
#[derive(Debug, Clone)]
pub enum Push {
    /// The settings and everything now (a listing).
    List(Arc<Snapshot>),
    Change(Arc<NetEvent>),
}

/// Everything a listing holds.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: BTreeMap<String, Arc<NodeNet>>,
    pub services: BTreeMap<Key, Arc<ServiceInfo>>,
    pub slices: BTreeMap<Key, Arc<SliceInfo>>,
}

/// The cluster's network view, and the tunnels that follow it.
pub struct NetRoutes {
    pub cluster: ClusterNetwork,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    synced: bool,
    now: Snapshot,
    listeners: HashMap<u64, mpsc::Sender<Push>>,
    next_id: u64,
}

/// One tunnel's subscription; unsubscribes on drop. `rx` ends (`None`) when the tunnel fell
/// behind: listen again for a fresh listing.
pub struct Listener {
    pub rx: mpsc::Receiver<Push>,
    routes: Arc<NetRoutes>,
    id: u64,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.routes.lock().listeners.remove(&self.id);
    }
}

/// The next push for a transport that listens; never for one that does not (a node that asked
/// for no network view).
pub async fn next(listener: &mut Option<Listener>) -> Option<Push> {
    match listener {
        Some(l) => l.rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Snapshot {
    /// The frames of a listing, in order.
    pub fn events(&self, cluster: &ClusterNetwork) -> Vec<NetEvent> {
        let mut evs =
            Vec::with_capacity(self.nodes.len() + self.services.len() + self.slices.len() + 3);
        evs.push(NetEvent::Cluster(cluster.clone()));
        evs.push(NetEvent::Listing);
        evs.extend(
            self.nodes
                .values()
                .map(|n| NetEvent::Node(NodeNet::clone(n))),
        );
        evs.extend(
            self.services
                .values()
                .map(|s| NetEvent::Service(ServiceInfo::clone(s))),
        );
        evs.extend(
            self.slices
                .values()
                .map(|s| NetEvent::Slice(SliceInfo::clone(s))),
        );
        evs.push(NetEvent::Listed);
        evs
    }
}

// === impl NetRoutes ===

impl NetRoutes {
    pub fn new(cluster: ClusterNetwork) -> Arc<NetRoutes> {
        Arc::new(NetRoutes {
            cluster,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each change is a few map operations that cannot panic half-way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the view (`None` before its first listing); keep `f` short, it holds the lock
    /// every change is applied under.
    pub fn read<R>(&self, f: impl FnOnce(Option<&Snapshot>) -> R) -> R {
        let state = self.lock();
        f(state.synced.then_some(&state.now))
    }

    pub fn listen(self: &Arc<Self>) -> Listener {
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        let mut state = self.lock();
        if state.synced {
            let _ = tx.try_send(Push::List(Arc::new(state.now.clone())));
        }
        state.next_id += 1;
        let id = state.next_id;
        state.listeners.insert(id, tx);
        Listener {
            rx,
            routes: self.clone(),
            id,
        }
    }

    /// Follows nodes, Services and slices until `shutdown`, listing again whenever the feed
    /// cannot continue.
    pub async fn run(
        self: Arc<Self>,
        registry: Registry,
        feed: Feed,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut delay = RETRY_MIN;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                r = self.follow(&registry, &feed) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, retry_in = ?delay, "the network view lost the change feed; listing again");
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    async fn follow(&self, registry: &Registry, feed: &Feed) -> Result<(), ApiError> {
        const FOLLOWED: [&Resource; 3] = [&NODES, &SERVICES, &ENDPOINTSLICES];
        let start = registry.store().current_revision().await?;
        let mut sub = feed.subscribe(start).await?;
        let mut now = Snapshot::default();
        let mut listed_at = [0; 3];
        for (i, resource) in FOLLOWED.iter().enumerate() {
            let (at, objects) = registry.list(resource, None).await?;
            listed_at[i] = at;
            for obj in &objects {
                if let Some(ev) = compact(resource, obj) {
                    now.insert(ev);
                }
            }
        }
        self.replace(now);
        let prefixes = FOLLOWED.map(|r| r.prefix(None));
        loop {
            let ev = sub.next().await?;
            let Some(i) = prefixes.iter().position(|p| ev.path.starts_with(p)) else {
                continue;
            };
            // The listing already holds everything up to its revision.
            if ev.revision <= listed_at[i] {
                continue;
            }
            let resource = FOLLOWED[i];
            let Some(r) = ObjectRef::from_path(&ev.path).filter(|r| r.resource == resource) else {
                continue;
            };
            let change = match ev.kind {
                EventKind::Deleted => gone(resource, r.namespace.unwrap_or_default(), r.name),
                EventKind::Added | EventKind::Modified => {
                    let rec = Record {
                        path: ev.path.clone(),
                        create_revision: ev.create_revision,
                        revision: ev.revision,
                        value: ev.value.clone(),
                    };
                    match registry.decode(resource, &rec) {
                        Ok(obj) => compact(resource, &obj),
                        Err(e) => {
                            tracing::error!(path = %ev.path, error = %e, "the network view leaves an undecodable object out");
                            None
                        }
                    }
                }
            };
            if let Some(change) = change {
                self.apply(change);
            }
        }
    }

    pub(super) fn replace(&self, now: Snapshot) {
        let mut state = self.lock();
        state.now = now;
        state.synced = true;
        let list = Push::List(Arc::new(state.now.clone()));
        state.push(list);
    }

    /// Records a change and tells every listener, unless it changes nothing they see.
    fn apply(&self, ev: NetEvent) {
        let mut state = self.lock();
        if !state.now.insert(ev.clone()) {
            return;
        }
        state.push(Push::Change(Arc::new(ev)));
    }
}

impl State {
    fn push(&mut self, push: Push) {
        self.listeners
            .retain(|_, tx| match tx.try_send(push.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!("a tunnel fell behind the network view; it will list again");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }
}

impl Snapshot {
    /// Applies one change; `false` when it changed nothing.
    fn insert(&mut self, ev: NetEvent) -> bool {
        fn put<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, Arc<V>>, k: K, v: V) -> bool {
            if map.get(&k).is_some_and(|old| **old == v) {
                return false;
            }
            map.insert(k, Arc::new(v));
            true
        }
        match ev {
            NetEvent::Node(n) => put(&mut self.nodes, n.name.clone(), n),
            NetEvent::NodeGone(name) => self.nodes.remove(&name).is_some(),
            NetEvent::Service(s) => put(&mut self.services, s.key.clone(), s),
            NetEvent::ServiceGone(k) => self.services.remove(&k).is_some(),
            NetEvent::Slice(s) => put(&mut self.slices, s.key.clone(), s),
            NetEvent::SliceGone(k) => self.slices.remove(&k).is_some(),
            NetEvent::Cluster(_) | NetEvent::Listing | NetEvent::Listed => false,
        }
    }
}

/// The compact form of a stored object, as a change.
fn compact(resource: &Resource, obj: &serde_json::Value) -> Option<NetEvent> {
    if std::ptr::eq(resource, &NODES) {
        NodeNet::from_node(obj).map(NetEvent::Node)
    } else if std::ptr::eq(resource, &SERVICES) {
        ServiceInfo::from_object(obj).map(NetEvent::Service)
    } else {
        SliceInfo::from_object(obj).map(NetEvent::Slice)
    }
}

fn gone(resource: &Resource, namespace: String, name: String) -> Option<NetEvent> {
    Some(if std::ptr::eq(resource, &NODES) {
        NetEvent::NodeGone(name)
    } else if std::ptr::eq(resource, &SERVICES) {
        NetEvent::ServiceGone(Key { namespace, name })
    } else {
        NetEvent::SliceGone(Key { namespace, name })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cidr::Cidr;
    use crate::api::network::Backend;

    fn cluster() -> ClusterNetwork {
        ClusterNetwork {
            cluster_cidrs: vec![Cidr::parse("10.42.0.0/16").unwrap()],
            service_cidrs: vec![],
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            backend: Backend::Vxlan,
            lb_timing: Default::default(),
        }
    }

    fn node(name: &str, addr: &str) -> NetEvent {
        NetEvent::Node(NodeNet {
            name: name.into(),
            addresses: vec![addr.parse().unwrap()],
            pod_cidrs: vec![],
            ready: true,
            lb: Default::default(),
        })
    }

    #[test]
    fn listeners_get_a_listing_then_only_real_changes() {
        let routes = NetRoutes::new(cluster());
        let mut early = routes.listen();
        assert!(
            early.rx.try_recv().is_err(),
            "nothing before the first listing"
        );
        let mut now = Snapshot::default();
        now.insert(node("pi1", "198.18.0.1"));
        routes.replace(now);
        match early.rx.try_recv() {
            Ok(Push::List(s)) => assert_eq!(s.events(&routes.cluster).len(), 4),
            other => panic!("expected a listing, got {other:?}"),
        }
        // The same node again (a heartbeat changes nothing here): silence.
        routes.apply(node("pi1", "198.18.0.1"));
        assert!(early.rx.try_recv().is_err());
        routes.apply(node("pi1", "198.18.0.9"));
        assert!(matches!(early.rx.try_recv(), Ok(Push::Change(_))));
        let mut late = routes.listen();
        assert!(matches!(late.rx.try_recv(), Ok(Push::List(s)) if s.nodes.len() == 1));
        routes.apply(NetEvent::NodeGone("pi1".into()));
        routes.apply(NetEvent::NodeGone("pi1".into()));
        assert!(matches!(late.rx.try_recv(), Ok(Push::Change(_))));
        assert!(late.rx.try_recv().is_err(), "a second delete is no change");
    }

    #[test]
    fn a_stuck_tunnel_is_dropped_not_waited_for() {
        let routes = NetRoutes::new(cluster());
        routes.replace(Snapshot::default());
        let mut stuck = routes.listen();
        for i in 0..LISTENER_QUEUE + 1 {
            routes.apply(node("pi1", &format!("198.18.{}.{}", i / 250, i % 250 + 1)));
        }
        let mut n = 0;
        while stuck.rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, LISTENER_QUEUE);
        assert!(matches!(
            stuck.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
