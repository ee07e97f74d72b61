//! The server's end of LoadBalancer address leases: a node's renewal (from its tunnel, or from
//! the server's own node in-process) becomes one compare-and-swap on the lease
//! `keelson-lb-<address>` with the node's name as holder ([`Store::acquire_lease`], the
//! database's clock), answered by a [`Grant`].
//!
//! The server checks the request against its own network view first: the address must be a
//! LoadBalancer address ([`crate::api::network::lb_addresses`]) and the node one of its candidates
//! ([`lb_candidates`]); otherwise the answer is `held: false` and nothing touches the
//! database, so a confused or hostile node can neither take nor keep an address it should not
//! have. The fencing itself is the node's ([`crate::node::loadbalancer::claims`]): a database
//! error or timeout gets no answer at all, and the node's deadline does the rest.
//!
//! Each new holder is shown, best effort, as the Lease `kube-system/keelson-lb-<address>` and
//! as a `NodeAssigned` Event on the address's Services.
//!
//! Invariants: one [`Leases`] per tunnel session; it remembers only leases the database
//! granted to this node, for addresses that passed the check (so its size is bounded by the
//! number of LoadBalancer addresses).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::network::{NetRoutes, Snapshot};
use crate::api::network::{Key, ServiceKind, lb_candidates};
use crate::apiserver::registry::Registry;
use crate::apiserver::resources::{ObjectRef, SERVICES};
use crate::controllers::events::{Recorder, Type};
use crate::datastore::Store;
use crate::datastore::leases::Held;
use crate::node::loadbalancer::claims::Grant;
use crate::node::loadbalancer::claims::Timing;

/// Longest showing a new holder (Lease object, Events) may take; best effort.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);
/// The `source.component` of the Events on Services.
const EVENT_COMPONENT: &str = "keelson-lb";

/// Why a node may not have an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this server has not listed the network view yet")]
    Unlisted,
    #[error("{0} is not the address of a LoadBalancer Service")]
    NoLoadBalancer(IpAddr),
    #[error("node {node} is not a candidate for {address} (candidates: {candidates:?})")]
    OtherCandidates {
        node: String,
        address: IpAddr,
        candidates: Vec<String>,
    },
}

/// The leases one node holds through this server.
pub struct Leases {
    node: String,
    registry: Registry,
    /// What the database last granted this node, per address, and when that attempt
    /// started: renewing it costs one statement. Invariant: only passed on to the database
    /// while younger than the renew deadline, as the controllers' elector does: an older one
    /// may have expired and changed hands since, and the store would answer a renewal of it
    /// with the old epoch.
    held: HashMap<IpAddr, (Held, Instant)>,
    /// The epoch last shown (Lease object, Service events) per address, so a renewal is not
    /// shown again. Bounded like `held`.
    recorded: HashMap<IpAddr, i64>,
    events: Recorder,
    /// The cluster's `--service-lb-*` timing, as this server's network view last said.
    timing: Timing,
}

/// The database row's name for `address`'s lease.
pub fn lease_name(address: IpAddr) -> String {
    format!("keelson-lb-{address}")
}

/// Whether `node` may contend for `address` by this view; the Services the address is for.
pub fn check(view: Option<&Snapshot>, node: &str, address: IpAddr) -> Result<Vec<Key>, Refusal> {
    let view = view.ok_or(Refusal::Unlisted)?;
    let nodes = || view.nodes.values().map(|n| &**n);
    // What `lb_addresses` says for this one address, without building the whole set: this
    // runs under the view's lock for every renewal.
    let services: Vec<Key> = view
        .services
        .values()
        .filter(|s| s.kind == ServiceKind::LoadBalancer && s.load_balancer_ips.contains(&address))
        .map(|s| s.key.clone())
        .collect();
    if services.is_empty() || nodes().any(|n| n.addresses.contains(&address)) {
        return Err(Refusal::NoLoadBalancer(address));
    }
    let candidates = lb_candidates(address, nodes());
    if !candidates.contains(&node) {
        return Err(Refusal::OtherCandidates {
            node: node.to_owned(),
            address,
            candidates: candidates.into_iter().map(str::to_owned).collect(),
        });
    }
    Ok(services)
}

// === impl Leases ===

impl Leases {
    pub fn new(node: &str, registry: Registry) -> Leases {
        Leases {
            node: node.to_owned(),
            events: Recorder::new(registry.clone(), EVENT_COMPONENT),
            registry,
            held: HashMap::new(),
            recorded: HashMap::new(),
            timing: Timing::from(crate::api::network::LbTiming::default()),
        }
    }

    /// Takes or renews `address`'s lease for the node. `None`: the database did not answer
    /// in time or failed; the node is not told (its renew deadline covers it).
    pub async fn renew(&mut self, routes: &NetRoutes, address: IpAddr, seq: u64) -> Option<Grant> {
        let refused = Grant {
            address,
            seq,
            held: false,
            epoch: 0,
        };
        self.timing = Timing::from(routes.cluster.lb_timing);
        let services = match routes.read(|v| check(v, &self.node, address)) {
            Ok(services) => services,
            Err(why) => {
                tracing::debug!(node = %self.node, %address, reason = %why, "refused a load-balancer lease");
                self.held.remove(&address);
                return Some(refused);
            }
        };
        let name = lease_name(address);
        let started = Instant::now();
        let before = self
            .held
            .get(&address)
            .filter(|(_, at)| at.elapsed() < self.timing.renew_deadline)
            .map(|(h, _)| *h);
        let attempt = self.store().acquire_lease(
            &name,
            &self.node,
            self.timing.lease.as_millis() as i64,
            before,
        );
        match tokio::time::timeout(self.timing.renew_deadline, attempt).await {
            Ok(Ok(Some(held))) => {
                if self.recorded.get(&address) != Some(&held.epoch) {
                    self.recorded.insert(address, held.epoch);
                    self.record(&name, address, held.epoch, services);
                }
                self.held.insert(address, (held, started));
                Some(Grant {
                    held: true,
                    epoch: held.epoch,
                    ..refused
                })
            }
            Ok(Ok(None)) => {
                self.held.remove(&address);
                Some(refused)
            }
            Ok(Err(e)) => {
                tracing::debug!(node = %self.node, %address, error = %e, "a load-balancer lease renewal failed");
                None
            }
            Err(_) => {
                tracing::debug!(node = %self.node, %address, "a load-balancer lease renewal timed out");
                None
            }
        }
    }

    /// Releases `address`'s lease, if this node holds it: the node has removed the address.
    pub async fn release(&mut self, address: IpAddr) {
        self.held.remove(&address);
        self.recorded.remove(&address);
        let name = lease_name(address);
        let release = self.store().release_lease(&name, &self.node);
        match tokio::time::timeout(self.timing.lease, release).await {
            Ok(Ok(())) => {
                tracing::debug!(node = %self.node, %address, "released a load-balancer lease")
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %self.node, %address, error = %e, "cannot release a load-balancer lease; it will expire")
            }
            Err(_) => {
                tracing::warn!(node = %self.node, %address, "releasing a load-balancer lease timed out; it will expire")
            }
        }
    }

    fn store(&self) -> &Store {
        self.registry.store()
    }

    /// Shows the new holder as the Lease `kube-system/keelson-lb-<address>` (`:` of IPv6 as
    /// `-`) and as a `NodeAssigned` Event on each Service of the address (MetalLB's reason), in
    /// a task of its own: best effort, never in the way of a renewal, ended within
    /// [`RECORD_TIMEOUT`].
    fn record(&self, name: &str, address: IpAddr, epoch: i64, services: Vec<Key>) {
        let (registry, events) = (self.registry.clone(), self.events.clone());
        let object = name.replace(':', "-");
        let node = self.node.clone();
        let lease = self.timing.lease;
        tokio::spawn(async move {
            let write = async {
                if let Err(e) = registry
                    .record_lease(&object, &node, lease, epoch - 1)
                    .await
                {
                    tracing::debug!(lease = %object, error = %e, "could not record the lease as a Lease object");
                }
                let message =
                    format!("announcing {address} from node {node} (lease epoch {epoch})");
                for key in services {
                    let r = ObjectRef {
                        resource: &SERVICES,
                        namespace: Some(key.namespace),
                        name: key.name,
                    };
                    // The Service's uid ties the Event to it (`kubectl describe service`).
                    match registry.get(&r).await {
                        Ok(svc) => {
                            events
                                .record(&SERVICES, &svc, Type::Normal, "NodeAssigned", &message)
                                .await
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "no Event for a load-balancer holder")
                        }
                    }
                }
            };
            if tokio::time::timeout(RECORD_TIMEOUT, write).await.is_err() {
                tracing::debug!(lease = %object, "recording the new holder timed out");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::network::{LbLabel, NodeNet, ServiceInfo};
    use std::sync::Arc;

    fn view(lb_ip: &str, nodes: &[(&str, bool, LbLabel)]) -> Snapshot {
        let mut v = Snapshot::default();
        for (name, ready, lb) in nodes {
            v.nodes.insert(
                (*name).to_owned(),
                Arc::new(NodeNet {
                    name: (*name).to_owned(),
                    addresses: vec![],
                    pod_cidrs: vec![],
                    ready: *ready,
                    lb: *lb,
                }),
            );
        }
        let key = Key {
            namespace: "shop".into(),
            name: "web".into(),
        };
        v.services.insert(
            key.clone(),
            Arc::new(ServiceInfo {
                key,
                kind: ServiceKind::LoadBalancer,
                cluster_ips: vec!["198.19.128.5".parse().unwrap()],
                ports: vec![],
                affinity_timeout: None,
                external_local: false,
                internal_local: false,
                external_ips: vec![],
                load_balancer_ips: vec![lb_ip.parse().unwrap()],
                publish_not_ready: false,
            }),
        );
        v
    }

    #[test]
    fn only_candidates_may_contend_and_only_for_load_balancer_addresses() {
        let ip: IpAddr = "198.18.3.10".parse().unwrap();
        let v = view(
            "198.18.3.10",
            &[
                ("a", true, LbLabel::EnableLb(true)),
                ("b", true, LbLabel::EnableLb(true)),
                ("c", true, LbLabel::Unlabelled),
                ("d", false, LbLabel::EnableLb(true)),
            ],
        );
        let services = check(Some(&v), "a", ip).unwrap();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].name, "web");
        assert!(check(Some(&v), "b", ip).is_ok());
        assert!(matches!(
            check(Some(&v), "c", ip),
            Err(Refusal::OtherCandidates { candidates, .. }) if candidates.len() == 2
        ));
        assert!(matches!(
            check(Some(&v), "d", ip),
            Err(Refusal::OtherCandidates { .. })
        ));
        // Not an address of any LoadBalancer Service (a cluster IP, or made up).
        assert_eq!(
            check(Some(&v), "a", "198.19.128.5".parse().unwrap()),
            Err(Refusal::NoLoadBalancer("198.19.128.5".parse().unwrap()))
        );
        assert_eq!(check(None, "a", ip), Err(Refusal::Unlisted));
        // A node's own address (the ingress without a pool) is never moved.
        let mut own = v.clone();
        let mut c = NodeNet::clone(&own.nodes["c"]);
        c.addresses = vec![ip];
        own.nodes.insert("c".into(), Arc::new(c));
        assert_eq!(check(Some(&own), "a", ip), Err(Refusal::NoLoadBalancer(ip)));
    }

    #[tokio::test]
    async fn a_refused_renewal_touches_no_lease_and_a_granted_one_holds_it() {
        use crate::api::cidr::Cidr;
        use crate::api::network::{Backend, ClusterNetwork};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &crate::datastore::Endpoint::sqlite(dir.path().join("s.db")),
            &crate::datastore::PoolConfig::default(),
        )
        .await
        .unwrap();
        let routes = NetRoutes::new(ClusterNetwork {
            cluster_cidrs: vec![Cidr::parse("10.42.0.0/16").unwrap()],
            service_cidrs: vec![],
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            backend: Backend::HostGw,
            lb_timing: Default::default(),
        });
        routes.replace(view(
            "198.18.3.10",
            &[
                ("a", true, LbLabel::EnableLb(true)),
                ("b", true, LbLabel::EnableLb(true)),
                ("c", true, LbLabel::EnableLb(false)),
            ],
        ));
        let ip: IpAddr = "198.18.3.10".parse().unwrap();
        let registry = Registry::new(store.clone());
        let mut c = Leases::new("c", registry.clone());
        let g = c.renew(&routes, ip, 1).await.unwrap();
        assert!(!g.held && g.seq == 1);
        let mut a = Leases::new("a", registry.clone());
        let g = a
            .renew(&routes, "198.18.3.99".parse().unwrap(), 2)
            .await
            .unwrap();
        assert!(!g.held, "not a LoadBalancer address");
        let g = a.renew(&routes, ip, 3).await.unwrap();
        assert!(g.held && g.seq == 3);
        let mut b = Leases::new("b", registry.clone());
        assert!(!b.renew(&routes, ip, 1).await.unwrap().held, "a holds it");
        assert_eq!(a.renew(&routes, ip, 4).await.unwrap().epoch, g.epoch);
        a.release(ip).await;
        let taken = b.renew(&routes, ip, 2).await.unwrap();
        assert!(taken.held && taken.epoch == g.epoch + 1);
    }
}
