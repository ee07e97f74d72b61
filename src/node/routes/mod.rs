//! Cross-node pod routes: the kernel state that carries pod traffic to the other nodes'
//! pod blocks, with K3s's `--flannel-backend` choices, and the masquerade of pod traffic that
//! leaves the cluster.
//!
//! - `host-gw`: a route `podCIDR via <peer's LAN address>` per peer (peers must share a subnet
//!   of `--flannel-iface`; one that does not is logged and left out).
//! - `vxlan` (default): the device `keelson.1` (VNI 1, UDP 8472, learning off, MTU of the
//!   underlay minus 50) holding this node's VTEP address (the first address of its pod block,
//!   as /32), and per peer a route `podCIDR via <peer VTEP> dev keelson.1 onlink`, a permanent
//!   neighbour entry (peer VTEP → peer VTEP MAC) and an FDB entry (peer VTEP MAC → peer
//!   address). VTEP MACs are derived from the pod block ([`plan::vtep_mac`]).
//! - `none`: nothing at all (another CNI owns the pod network).
//!
//! The task is a consumer of the node's [`Network`] view and level-triggered: each pass
//! computes the desired state from the whole view ([`plan`]), reads what keelson has in the
//! kernel ([`kernel`]: routes tagged with its protocol number, entries on its device), and
//! changes only the difference; it also runs every [`RESYNC`] so a route someone deleted comes
//! back. A restart therefore removes whatever is stale and duplicates nothing.
//!
//! On shutdown everything stays in place, as K3s leaves flannel's: pods keep talking across
//! nodes while keelson restarts, and the next start reconciles. The task ends when the view's
//! last holder drops it (the node stopped).

pub mod kernel;
pub mod masquerade;
pub mod plan;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use self::plan::{Desired, Local, Skipped};
use super::network::Network;
use crate::api::network::{Backend, ClusterNetwork, NodeNet};

/// How often a pass runs without a change, to repair what someone else removed.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How soon a failed pass is tried again.
pub const RETRY: Duration = Duration::from_secs(5);

/// `--flannel-iface` and the tools the routes use.
#[derive(Debug, Clone)]
pub struct Options {
    /// The interface whose address peers reach this node at; `None`: the interface holding
    /// the node's first address, else the default route's.
    pub iface: Option<String>,
    /// The `nft` binary.
    pub nft: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--flannel-iface {0:?}: no such interface")]
    NoInterface(String),
    #[error(
        "cannot tell which interface carries pod traffic (no interface holds the node's address and there is no default route); pass --flannel-iface"
    )]
    NoDefaultInterface,
    #[error("this node's addresses are not known yet")]
    NoOwnAddress,
    #[error("interface {0} has no IPv4 address for pod traffic to leave from")]
    NoAddress(String),
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error(transparent)]
    Masquerade(#[from] masquerade::Error),
}

/// Starts programming routes from `network`'s view; the task ends when the view is dropped.
pub fn spawn(network: &Arc<Network>, options: Options) -> tokio::task::JoinHandle<()> {
    let task = Routes {
        network: Arc::downgrade(network),
        changes: network.subscribe(),
        programmer: Programmer::new(options),
    };
    let span = tracing::info_span!("routes", node = network.node());
    tokio::spawn(tracing::Instrument::instrument(task.run(), span))
}

/// The consumer task.
struct Routes {
    /// Weak, so the task does not keep the view (and itself) alive after the node stopped.
    network: Weak<Network>,
    /// Ends (`Err`) when the view is dropped.
    changes: watch::Receiver<u64>,
    /// Moved onto a blocking thread for each pass and back.
    programmer: Programmer,
}

/// What one pass reads from the view.
struct Snapshot {
    me: String,
    cluster: Option<ClusterNetwork>,
    nodes: BTreeMap<String, Arc<NodeNet>>,
    synced: bool,
}

/// The state kept between passes; the kernel holds the rest.
struct Programmer {
    options: Options,
    /// The `keelson-net` script last applied; `None` until the first apply.
    nft_applied: Option<String>,
    /// Peers left out at the last pass (logged when this changes).
    skipped: BTreeMap<String, Skipped>,
    /// The backend of the last pass (logged when it changes).
    backend: Option<Backend>,
}

// === impl Routes ===

impl Routes {
    async fn run(mut self) {
        loop {
            let Some(network) = self.network.upgrade() else {
                return;
            };
            self.changes.borrow_and_update();
            let snapshot = network.read(|v| Snapshot {
                me: network.node().to_owned(),
                cluster: v.cluster.clone(),
                nodes: v.nodes.clone(),
                synced: v.synced,
            });
            drop(network);
            let mut programmer = self.programmer;
            let span = tracing::Span::current();
            let pass = tokio::task::spawn_blocking(move || {
                let _span = span.enter();
                let result = programmer.pass(&snapshot);
                (programmer, result)
            })
            .await;
            let wait = match pass {
                Ok((programmer, result)) => {
                    self.programmer = programmer;
                    match result {
                        Ok(()) => RESYNC,
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?RETRY, "cannot program pod routes");
                            RETRY
                        }
                    }
                }
                Err(e) => {
                    // A panic in a pass is our bug; the routes stay as they are.
                    tracing::error!(error = %e, "the pod-route pass failed; pod routes are no longer updated");
                    return;
                }
            };
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

// === impl Programmer ===

impl Programmer {
    fn new(options: Options) -> Programmer {
        Programmer {
            options,
            nft_applied: None,
            skipped: BTreeMap::new(),
            backend: None,
        }
    }

    /// One level-triggered pass: the kernel is made to match the view.
    fn pass(&mut self, snap: &Snapshot) -> Result<(), Error> {
        let (true, Some(cluster)) = (snap.synced, &snap.cluster) else {
            // Until the first listing, absence means unknown: remove nothing.
            return Ok(());
        };
        if self.backend != Some(cluster.backend) {
            tracing::info!(backend = cluster.backend.name(), "pod network backend");
            self.backend = Some(cluster.backend);
        }
        if cluster.backend == Backend::None {
            return Ok(());
        }
        let own_addresses = snap
            .nodes
            .get(&snap.me)
            .map(|n| n.addresses.clone())
            .unwrap_or_default();
        let (iface, local) = match self.local(&own_addresses) {
            Err(Error::NoOwnAddress) => return Ok(()),
            other => other?,
        };
        let want = plan::desired(cluster.backend, &snap.me, &snap.nodes, &local);
        self.log_skipped(&want);
        enable_forwarding();

        let vxlan_index = match (cluster.backend, want.vtep) {
            (Backend::Vxlan, Some(vtep)) => {
                let underlay =
                    kernel::link(&iface)?.ok_or_else(|| Error::NoInterface(iface.clone()))?;
                let mtu = underlay.mtu.saturating_sub(kernel::VXLAN_OVERHEAD);
                Some(kernel::ensure_vxlan(&vtep, underlay.index, mtu)?)
            }
            // No pod block yet: no VTEP address, nothing to route from.
            (Backend::Vxlan, None) => return Ok(()),
            _ => {
                // host-gw: a device left by an earlier vxlan run goes (with its routes).
                if let Some(old) = kernel::link(kernel::DEVICE)? {
                    tracing::info!(
                        device = kernel::DEVICE,
                        "removing the vxlan device (the backend is host-gw)"
                    );
                    kernel::delete_link(old.index)?;
                }
                None
            }
        };
        self.program(&want, vxlan_index)?;

        let script = masquerade::script(&cluster.cluster_cidrs, &cluster.service_cidrs);
        if self.nft_applied.as_ref() != Some(&script) {
            masquerade::apply(&self.options.nft, &script)?;
            tracing::info!(table = masquerade::TABLE, "pod masquerade rules programmed");
            self.nft_applied = Some(script);
        }
        Ok(())
    }

    /// Routes, then (vxlan) neighbours and FDB entries: removals first, so a changed entry
    /// is never briefly doubled.
    fn program(&self, want: &Desired, vxlan_index: Option<u32>) -> Result<(), Error> {
        let have = kernel::routes(vxlan_index)?.into_iter().collect();
        let routes = plan::diff(&have, &want.routes);
        for r in &routes.remove {
            kernel::delete_route(r, vxlan_index)?;
            tracing::info!(route = %kernel::describe(r), "removed pod route");
        }
        for r in &routes.add {
            kernel::add_route(r, vxlan_index)?;
            tracing::info!(route = %kernel::describe(r), "added pod route");
        }
        let Some(index) = vxlan_index else {
            return Ok(());
        };
        let have = kernel::neighbours(index)?.into_iter().collect();
        let neighbours = plan::diff(&have, &want.neighbours);
        for n in &neighbours.remove {
            kernel::delete_neighbour(index, n)?;
        }
        for n in &neighbours.add {
            kernel::add_neighbour(index, n)?;
        }
        let have = kernel::fdb(index)?.into_iter().collect();
        let fdb = plan::diff(&have, &want.fdb);
        for f in &fdb.remove {
            kernel::delete_fdb(index, f)?;
        }
        for f in &fdb.add {
            kernel::add_fdb(index, f)?;
        }
        if !(neighbours.add.is_empty()
            && neighbours.remove.is_empty()
            && fdb.add.is_empty()
            && fdb.remove.is_empty())
        {
            tracing::info!(
                neighbours = want.neighbours.len(),
                fdb = want.fdb.len(),
                "vxlan neighbour and fdb entries updated"
            );
        }
        Ok(())
    }

    /// The underlay interface and its IPv4 networks.
    fn local(&self, own: &[IpAddr]) -> Result<(String, Local), Error> {
        let addrs = interface_addresses();
        let iface = match &self.options.iface {
            Some(name) => {
                if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
                    return Err(Error::NoInterface(name.clone()));
                }
                name.clone()
            }
            None => own
                .iter()
                .find_map(|ip| addrs.iter().find(|(_, a, _)| IpAddr::V4(*a) == *ip))
                .map(|(name, _, _)| name.clone())
                .or_else(default_route_interface)
                .ok_or(if own.is_empty() {
                    // The node's addresses are not in the view yet: the next change brings them.
                    Error::NoOwnAddress
                } else {
                    Error::NoDefaultInterface
                })?,
        };
        // The node's own address first when it is on this interface (it is the one peers
        // were told about).
        let mut links: Vec<(Ipv4Addr, u8)> = addrs
            .iter()
            .filter(|(name, _, _)| *name == iface)
            .map(|(_, a, p)| (*a, *p))
            .collect();
        links.sort_by_key(|(a, _)| !own.contains(&IpAddr::V4(*a)));
        if links.is_empty() {
            return Err(Error::NoAddress(iface));
        }
        Ok((iface, Local { links }))
    }

    fn log_skipped(&mut self, want: &Desired) {
        if want.skipped == self.skipped {
            return;
        }
        for (peer, why) in &want.skipped {
            if self.skipped.get(peer) == Some(why) {
                continue;
            }
            match why {
                // Usual for a moment while a node registers.
                Skipped::NoAddress => {
                    tracing::debug!(%peer, "node reports no IPv4 address (yet): no route to its pods")
                }
                Skipped::NotOnLink(addresses) => tracing::warn!(
                    %peer, ?addresses,
                    "node is not on a subnet of this node's --flannel-iface: host-gw needs all nodes on one LAN (use --flannel-backend vxlan for routed networks); no route to its pods"
                ),
            }
        }
        self.skipped = want.skipped.clone();
    }
}

/// Packets between pod networks are forwarded by the node (K3s turns this on as well).
fn enable_forwarding() {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    match std::fs::write(PATH, "1") {
        Ok(()) => tracing::info!("turned on IPv4 forwarding for pod traffic"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot turn on IPv4 forwarding ({PATH}); pods on this node cannot reach other nodes")
        }
    }
}

/// Every IPv4 address with its interface and prefix length.
fn interface_addresses() -> Vec<(String, Ipv4Addr, u8)> {
    nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|ifa| {
                let ip = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
                let prefix = ifa
                    .netmask
                    .as_ref()
                    .and_then(|m| m.as_sockaddr_in())
                    .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
                Some((ifa.interface_name, ip, prefix))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// The interface of the IPv4 default route (`/proc/net/route` is per network namespace).
fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|l| {
        let mut fields = l.split_whitespace();
        let iface = fields.next()?;
        (fields.next()? == "00000000").then(|| iface.to_owned())
    })
}
