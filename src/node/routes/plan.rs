//! What the kernel should hold for this node to reach the other nodes' pods: the pure
//! computation from the network view (nodes, their addresses and pod blocks) to routes,
//! neighbour entries and forwarding-database entries, and the difference between two such sets.
//!
//! No IO here: [`desired`] takes this node's underlay addresses in, and [`diff`] compares sets,
//! so every decision (which peer address, which VTEP, which MAC) is unit-tested without root.
//!
//! Only IPv4 pod blocks are routed (an IPv6 block of a dual-stack node is left out); the
//! underlay is IPv4 too.
//!
//! Invariants: a [`Desired`] never holds a route for this node's own pod block, nor two routes
//! for one destination (pod blocks are disjoint: the controllers hand them out).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::api::cidr::Cidr;
use crate::api::network::{Backend, NodeNet};

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net4 {
    /// Invariant: no bits set past `prefix` when built by [`Net4::of`].
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// How a route reaches a peer's pod block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// host-gw: the peer's own address on the shared LAN.
    Gateway(Ipv4Addr),
    /// vxlan: the peer's VTEP address, `onlink` through the vxlan device.
    Vtep(Ipv4Addr),
}

/// `dst via …` in the main table, tagged with keelson's routing protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Net4,
    pub via: Via,
}

/// A permanent ARP entry on the vxlan device: the peer's VTEP address has the peer's VTEP MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub vtep: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A forwarding-database entry on the vxlan device: frames for `mac` go in UDP to `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    pub mac: [u8; 6],
    pub remote: Ipv4Addr,
}

/// This node's own VTEP: the vxlan device's address and MAC, and the underlay address that
/// encapsulated packets leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vtep {
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    pub underlay: Ipv4Addr,
}

/// This node as the routes see it.
#[derive(Debug, Clone)]
pub struct Local {
    /// The networks of the `--flannel-iface` addresses (the address with its prefix), which say
    /// which peers are directly reachable.
    pub links: Vec<(Ipv4Addr, u8)>,
}

/// Why a peer gets no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// It reports no IPv4 address.
    NoAddress,
    /// host-gw needs the peer on a subnet of `--flannel-iface`; none of its addresses is.
    NotOnLink(Vec<IpAddr>),
}

/// The kernel state one pass wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// vxlan: this node's VTEP (`None` for host-gw, or until this node has a pod block).
    pub vtep: Option<Vtep>,
    pub routes: BTreeSet<Route>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<Fdb>,
    /// Peers left out, and why (logged once per change).
    pub skipped: BTreeMap<String, Skipped>,
}

/// What to remove and what to add to go from one set to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<T> {
    pub remove: Vec<T>,
    pub add: Vec<T>,
}

/// The routes, neighbours and FDB entries `backend` needs on node `me`, given every node in
/// the view. `None` backend: nothing.
pub fn desired(
    backend: Backend,
    me: &str,
    nodes: &BTreeMap<String, Arc<NodeNet>>,
    local: &Local,
) -> Desired {
    let mut out = Desired::default();
    if backend == Backend::None {
        return out;
    }
    let underlay = local.links.first().map(|(a, _)| *a);
    if backend == Backend::Vxlan {
        let own_block = nodes.get(me).and_then(|n| first_v4_block(&n.pod_cidrs));
        out.vtep = own_block.zip(underlay).map(|(block, underlay)| Vtep {
            address: block.addr,
            mac: vtep_mac(block.addr),
            underlay,
        });
    }
    for (name, node) in nodes {
        if name == me {
            continue;
        }
        let Some(block) = first_v4_block(&node.pod_cidrs) else {
            // No block yet (or IPv6 only): nothing to route to.
            continue;
        };
        let v4: Vec<Ipv4Addr> = node
            .addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        // The address on one of our links, InternalIP first (the view's order).
        let on_link = v4.iter().copied().find(|a| local.on_link(*a));
        match backend {
            Backend::HostGw => match on_link {
                Some(gw) => {
                    out.routes.insert(Route {
                        dst: block,
                        via: Via::Gateway(gw),
                    });
                }
                None if v4.is_empty() => {
                    out.skipped.insert(name.clone(), Skipped::NoAddress);
                }
                None => {
                    out.skipped
                        .insert(name.clone(), Skipped::NotOnLink(node.addresses.clone()));
                }
            },
            Backend::Vxlan => {
                // Encapsulated packets are routed like any other: a peer off our LAN works.
                let Some(remote) = on_link.or_else(|| v4.first().copied()) else {
                    out.skipped.insert(name.clone(), Skipped::NoAddress);
                    continue;
                };
                let vtep = block.addr;
                let mac = vtep_mac(vtep);
                out.routes.insert(Route {
                    dst: block,
                    via: Via::Vtep(vtep),
                });
                out.neighbours.insert(Neighbour { vtep, mac });
                out.fdb.insert(Fdb { mac, remote });
            }
            Backend::None => {}
        }
    }
    out
}

/// The VTEP MAC of the node whose VTEP address (the first address of its pod block) is
/// `vtep`: `02:4b` (locally administered, unicast; 0x4b is 'K') followed by the four octets
/// of the address. Every node derives every peer's MAC from the pod block the view already
/// carries, so nothing extra is reported (flannel reports its MAC in a node annotation
/// instead); two nodes never share a MAC because the controllers never give two nodes
/// overlapping blocks.
pub fn vtep_mac(vtep: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = vtep.octets();
    [0x02, 0x4b, a, b, c, d]
}

/// `have` → `want`: entries only in `have` are removed, entries only in `want` added.
pub fn diff<T: Ord + Clone>(have: &BTreeSet<T>, want: &BTreeSet<T>) -> Diff<T> {
    Diff {
        remove: have.difference(want).cloned().collect(),
        add: want.difference(have).cloned().collect(),
    }
}

/// The first IPv4 block of a node (IPv6 blocks are not routed yet).
fn first_v4_block(blocks: &[Cidr]) -> Option<Net4> {
    blocks.iter().find_map(Net4::of)
}

// === impl Net4 ===

impl Net4 {
    /// An IPv4 [`Cidr`]; `None` for IPv6.
    pub fn of(cidr: &Cidr) -> Option<Net4> {
        match cidr.nth(0)? {
            IpAddr::V4(addr) => Some(Net4 {
                addr,
                prefix: cidr.prefix(),
            }),
            IpAddr::V6(_) => None,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl std::fmt::Display for Net4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// === impl Local ===

impl Local {
    /// Whether `ip` is on one of this node's `--flannel-iface` subnets (and not its own).
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        self.links.iter().any(|(own, prefix)| {
            *own != ip
                && Net4 {
                    addr: *own,
                    prefix: *prefix,
                }
                .contains(ip)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addrs: &[&str], cidr: Option<&str>) -> (String, Arc<NodeNet>) {
        (
            name.to_owned(),
            Arc::new(NodeNet {
                name: name.into(),
                addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                pod_cidrs: cidr.map(|c| Cidr::parse(c).unwrap()).into_iter().collect(),
                ready: true,
                lb: Default::default(),
            }),
        )
    }

    fn lab() -> BTreeMap<String, Arc<NodeNet>> {
        [
            node("b1", &["198.18.1.1"], Some("198.19.0.0/24")),
            node("b2", &["198.18.1.2"], Some("198.19.1.0/24")),
            // ExternalIP off the LAN listed after the InternalIP on it: the InternalIP wins.
            node(
                "b3",
                &["fd00::3", "198.18.1.3", "198.18.9.3"],
                Some("198.19.2.0/24"),
            ),
            // No block yet: no route.
            node("b4", &["198.18.1.4"], None),
        ]
        .into_iter()
        .collect()
    }

    fn local() -> Local {
        Local {
            links: vec![("198.18.1.1".parse().unwrap(), 24)],
        }
    }

    fn net(s: &str) -> Net4 {
        Net4::of(&Cidr::parse(s).unwrap()).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn host_gw_routes_every_other_block_via_the_peers_lan_address() {
        let d = desired(Backend::HostGw, "b1", &lab(), &local());
        let want: BTreeSet<Route> = [
            Route {
                dst: net("198.19.1.0/24"),
                via: Via::Gateway(ip("198.18.1.2")),
            },
            Route {
                dst: net("198.19.2.0/24"),
                via: Via::Gateway(ip("198.18.1.3")),
            },
        ]
        .into();
        assert_eq!(d.routes, want);
        assert!(d.vtep.is_none() && d.neighbours.is_empty() && d.fdb.is_empty());
        assert!(d.skipped.is_empty());
    }

    #[test]
    fn host_gw_skips_a_peer_that_is_not_on_the_lan() {
        let mut nodes = lab();
        nodes.extend([node("far", &["203.0.113.9"], Some("198.19.7.0/24"))]);
        let d = desired(Backend::HostGw, "b1", &nodes, &local());
        assert!(d.routes.iter().all(|r| r.dst != net("198.19.7.0/24")));
        assert_eq!(
            d.skipped.get("far"),
            Some(&Skipped::NotOnLink(vec!["203.0.113.9".parse().unwrap()]))
        );
    }

    #[test]
    fn vxlan_gives_each_peer_a_route_a_neighbour_and_an_fdb_entry() {
        let mut nodes = lab();
        // Off the LAN is fine for vxlan: the encapsulated packet is routed.
        nodes.extend([node("far", &["203.0.113.9"], Some("198.19.7.0/24"))]);
        let d = desired(Backend::Vxlan, "b1", &nodes, &local());
        assert_eq!(
            d.vtep,
            Some(Vtep {
                address: ip("198.19.0.0"),
                mac: [0x02, 0x4b, 198, 19, 0, 0],
                underlay: ip("198.18.1.1"),
            })
        );
        assert_eq!(d.routes.len(), 3);
        assert!(d.routes.contains(&Route {
            dst: net("198.19.2.0/24"),
            via: Via::Vtep(ip("198.19.2.0")),
        }));
        assert!(d.neighbours.contains(&Neighbour {
            vtep: ip("198.19.2.0"),
            mac: [0x02, 0x4b, 198, 19, 2, 0],
        }));
        assert!(d.fdb.contains(&Fdb {
            mac: [0x02, 0x4b, 198, 19, 2, 0],
            remote: ip("198.18.1.3"),
        }));
        assert!(d.fdb.contains(&Fdb {
            mac: [0x02, 0x4b, 198, 19, 7, 0],
            remote: ip("203.0.113.9"),
        }));
        assert_eq!(d.neighbours.len(), 3);
        assert_eq!(d.fdb.len(), 3);
    }

    #[test]
    fn vxlan_has_no_vtep_until_this_node_has_a_block() {
        let d = desired(Backend::Vxlan, "b4", &lab(), &local());
        assert!(d.vtep.is_none());
        // Peers are still routable once the device exists; the driver waits for the VTEP.
        assert_eq!(d.routes.len(), 3);
    }

    #[test]
    fn none_programs_nothing() {
        assert_eq!(
            desired(Backend::None, "b1", &lab(), &local()),
            Desired::default()
        );
    }

    #[test]
    fn a_peer_that_leaves_or_moves_is_one_removal_and_one_addition() {
        let before = desired(Backend::Vxlan, "b1", &lab(), &local());
        let mut nodes = lab();
        nodes.remove("b2");
        // b3 re-registered with a new address.
        nodes.extend([node("b3", &["198.18.1.33"], Some("198.19.2.0/24"))]);
        let after = desired(Backend::Vxlan, "b1", &nodes, &local());
        let routes = diff(&before.routes, &after.routes);
        assert_eq!(
            routes.remove,
            vec![Route {
                dst: net("198.19.1.0/24"),
                via: Via::Vtep(ip("198.19.1.0")),
            }]
        );
        assert!(routes.add.is_empty(), "b3's route did not change");
        let fdb = diff(&before.fdb, &after.fdb);
        assert_eq!(fdb.remove.len(), 2, "b2's entry and b3's old one");
        assert_eq!(
            fdb.add,
            vec![Fdb {
                mac: vtep_mac(ip("198.19.2.0")),
                remote: ip("198.18.1.33"),
            }]
        );
        let same = diff(&after.neighbours, &after.neighbours);
        assert!(same.add.is_empty() && same.remove.is_empty());
    }

    #[test]
    fn net4_contains_and_on_link() {
        assert!(net("198.18.1.0/24").contains(ip("198.18.1.200")));
        assert!(!net("198.18.1.0/24").contains(ip("198.18.2.1")));
        assert!(net("0.0.0.0/0").contains(ip("1.2.3.4")));
        let l = local();
        assert!(l.on_link(ip("198.18.1.2")));
        assert!(!l.on_link(ip("198.18.1.1")), "not our own address");
        assert!(!l.on_link(ip("198.18.2.2")));
    }
}
