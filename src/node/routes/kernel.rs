//! The kernel side of the routes: one short synchronous netlink exchange per change (routes,
//! the vxlan device, its address, neighbour and forwarding-database entries), and dumps that
//! read back what keelson programmed before, so a pass compares with the kernel itself and a
//! restart cleans up whatever a previous run left.
//!
//! keelson's routes carry routing protocol number [`PROTOCOL`] (`ip route show proto 75`), so a
//! dump finds exactly its own and never touches another program's routes. Everything on the
//! vxlan device [`DEVICE`] is keelson's. Calls take microseconds; the caller runs a whole pass
//! on a blocking thread.

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::plan::{Fdb, Neighbour, Net4, Route, Via, Vtep};

/// The routing protocol number on keelson's routes (unassigned in iproute2's rt_protos).
pub const PROTOCOL: u8 = 75;
/// The vxlan device's name (flannel's is `flannel.1`: `.1` for VNI 1).
pub const DEVICE: &str = "keelson.1";
/// VNI of the vxlan device (flannel's default).
pub const VNI: u32 = 1;
/// UDP port of the vxlan device (Linux's and flannel's, not IANA's 4789).
pub const VXLAN_PORT: u16 = 8472;
/// Bytes the vxlan encapsulation adds (outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// A netlink request the kernel refused; `op` names it for the log.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source} (keelson needs CAP_NET_ADMIN to program pod routes)")]
pub struct Error {
    pub op: String,
    #[source]
    pub source: io::Error,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the kernel says about a link keelson cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mtu: u32,
    pub mac: Vec<u8>,
    /// vxlan devices only.
    pub vxlan: Option<VxlanSettings>,
}

/// The settings of a vxlan device that keelson compares with what it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VxlanSettings {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    /// The underlay link's index.
    pub link: u32,
}

/// The link called `name`; `None` if there is none.
pub fn link(name: &str) -> Result<Option<Link>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    match crate::netlink::exchange(RouteNetlinkMessage::GetLink(msg), 0) {
        Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(&l)),
            _ => None,
        })),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(source) => Err(Error {
            op: format!("reading link {name}"),
            source,
        }),
    }
}

/// Makes [`DEVICE`] a vxlan device for `vtep` on the link `underlay_index` with `mtu`, up,
/// learning off, with the VTEP address as /32. A device that differs is replaced (its routes,
/// neighbours and FDB entries go with it and are added back by the same pass).
pub fn ensure_vxlan(vtep: &Vtep, underlay_index: u32, mtu: u32) -> Result<u32> {
    let want_vxlan = Some(VxlanSettings {
        vni: VNI,
        local: Some(vtep.underlay),
        port: VXLAN_PORT,
        link: underlay_index,
    });
    let current = link(DEVICE)?;
    let index = match current {
        Some(l) if l.vxlan == want_vxlan && l.mac == vtep.mac && l.mtu == mtu => l.index,
        other => {
            if let Some(old) = other {
                tracing::info!(
                    device = DEVICE,
                    ?old,
                    "replacing the vxlan device (its settings changed)"
                );
                delete_link(old.index)?;
            }
            let mut msg = LinkMessage::default();
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
            msg.attributes
                .push(LinkAttribute::IfName(DEVICE.to_owned()));
            msg.attributes
                .push(LinkAttribute::Address(vtep.mac.to_vec()));
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(VNI),
                    InfoVxlan::Link(underlay_index),
                    InfoVxlan::Local(vtep.underlay),
                    InfoVxlan::Port(VXLAN_PORT),
                    InfoVxlan::Learning(false),
                ])),
            ]));
            request(
                RouteNetlinkMessage::NewLink(msg),
                NLM_F_CREATE | NLM_F_EXCL,
                || format!("creating the vxlan device {DEVICE}"),
            )?;
            tracing::info!(device = DEVICE, vtep = %vtep.address, underlay = %vtep.underlay, mtu, "created the vxlan device");
            link(DEVICE)?
                .ok_or_else(|| Error {
                    op: format!("creating the vxlan device {DEVICE}"),
                    source: io::Error::from_raw_os_error(libc::ENODEV),
                })?
                .index
        }
    };
    // Idempotent: replaces the address if it is there already.
    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet;
    addr.header.prefix_len = 32;
    addr.header.index = index;
    addr.attributes
        .push(AddressAttribute::Local(vtep.address.into()));
    addr.attributes
        .push(AddressAttribute::Address(vtep.address.into()));
    request(
        RouteNetlinkMessage::NewAddress(addr),
        NLM_F_CREATE | NLM_F_REPLACE,
        || format!("adding {}/32 to {DEVICE}", vtep.address),
    )?;
    Ok(index)
}

/// Removes the link with `index`; one already gone is fine.
pub fn delete_link(index: u32) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    ignore_missing(request(RouteNetlinkMessage::DelLink(msg), 0, || {
        format!("removing link {index}")
    }))
}

/// keelson's routes in the main table. `vxlan_index` tells vxlan routes (through that device)
/// from host-gw routes.
pub fn routes(vxlan_index: Option<u32>) -> Result<Vec<Route>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    let replies = crate::netlink::exchange(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)
        .map_err(|source| Error {
            op: "listing routes".into(),
            source,
        })?;
    Ok(replies
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .filter(|r| {
            r.header.protocol == RouteProtocol::Other(PROTOCOL)
                && r.header.table == RouteHeader::RT_TABLE_MAIN
        })
        .filter_map(|r| {
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let dst = Net4 {
                addr: dst?,
                prefix: r.header.destination_prefix_length,
            };
            let gateway = gateway?;
            let via = if oif.is_some() && oif == vxlan_index {
                Via::Vtep(gateway)
            } else {
                Via::Gateway(gateway)
            };
            Some(Route { dst, via })
        })
        .collect())
}

/// Adds (or replaces) one route; vxlan routes need the device's index.
pub fn add_route(route: &Route, vxlan_index: Option<u32>) -> Result<()> {
    let msg = route_message(route, vxlan_index);
    request(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
        || format!("adding route {}", describe(route)),
    )
}

/// Removes one route; one already gone (with its device) is fine.
pub fn delete_route(route: &Route, vxlan_index: Option<u32>) -> Result<()> {
    let msg = route_message(route, vxlan_index);
    ignore_missing(request(RouteNetlinkMessage::DelRoute(msg), 0, || {
        format!("removing route {}", describe(route))
    }))
}

/// The permanent IPv4 neighbour entries on the device `index`.
pub fn neighbours(index: u32) -> Result<Vec<Neighbour>> {
    Ok(neighbour_dump(AddressFamily::Inet, index)?
        .into_iter()
        .filter(|n| n.header.state == NeighbourState::Permanent)
        .filter_map(|n| {
            let (dst, mac) = neighbour_fields(&n);
            match (dst?, mac?) {
                (NeighbourAddress::Inet(vtep), mac) => Some(Neighbour { vtep, mac }),
                _ => None,
            }
        })
        .collect())
}

pub fn add_neighbour(index: u32, n: &Neighbour) -> Result<()> {
    let msg = neighbour_message(AddressFamily::Inet, index, n.vtep, n.mac);
    request(
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
        || format!("adding neighbour {} on {DEVICE}", n.vtep),
    )
}

pub fn delete_neighbour(index: u32, n: &Neighbour) -> Result<()> {
    let msg = neighbour_message(AddressFamily::Inet, index, n.vtep, n.mac);
    ignore_missing(request(RouteNetlinkMessage::DelNeighbour(msg), 0, || {
        format!("removing neighbour {} on {DEVICE}", n.vtep)
    }))
}

/// The forwarding-database entries with a remote address on the device `index`.
pub fn fdb(index: u32) -> Result<Vec<Fdb>> {
    Ok(neighbour_dump(AddressFamily::Bridge, index)?
        .into_iter()
        .filter_map(|n| {
            let (dst, mac) = neighbour_fields(&n);
            let remote = match dst? {
                NeighbourAddress::Inet(remote) => remote,
                // The parser reads NDA_DST by the message's family, and AF_BRIDGE is neither
                // IPv4 nor IPv6: the vxlan device's IPv4 remote arrives as 4 raw bytes.
                NeighbourAddress::Other(raw) => <[u8; 4]>::try_from(raw.as_slice()).ok()?.into(),
                _ => return None,
            };
            Some(Fdb { mac: mac?, remote })
        })
        .collect())
}

pub fn add_fdb(index: u32, f: &Fdb) -> Result<()> {
    let msg = neighbour_message(AddressFamily::Bridge, index, f.remote, f.mac);
    request(
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
        || {
            format!(
                "adding fdb entry {} → {} on {DEVICE}",
                mac_text(&f.mac),
                f.remote
            )
        },
    )
}

pub fn delete_fdb(index: u32, f: &Fdb) -> Result<()> {
    let msg = neighbour_message(AddressFamily::Bridge, index, f.remote, f.mac);
    ignore_missing(request(RouteNetlinkMessage::DelNeighbour(msg), 0, || {
        format!("removing fdb entry {} on {DEVICE}", mac_text(&f.mac))
    }))
}

pub fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn describe(route: &Route) -> String {
    match route.via {
        Via::Gateway(gw) => format!("{} via {gw}", route.dst),
        Via::Vtep(vtep) => format!("{} via {vtep} dev {DEVICE} onlink", route.dst),
    }
}

// --- helpers ---

fn route_message(route: &Route, vxlan_index: Option<u32>) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = route.dst.prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Other(PROTOCOL);
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            route.dst.addr,
        )));
    let gateway = match route.via {
        Via::Gateway(gw) => gw,
        Via::Vtep(vtep) => {
            // The peer's VTEP is on no subnet of the device (it holds a /32): `onlink` tells
            // the kernel to use it as a next hop anyway.
            msg.header.flags = RouteFlags::Onlink;
            if let Some(index) = vxlan_index {
                msg.attributes.push(RouteAttribute::Oif(index));
            }
            vtep
        }
    };
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    msg
}

fn neighbour_message(
    family: AddressFamily,
    index: u32,
    dst: Ipv4Addr,
    mac: [u8; 6],
) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    if family == AddressFamily::Bridge {
        // NTF_SELF: the entry belongs to the vxlan device itself, not to a bridge above it.
        msg.header.flags = NeighbourFlags::Own;
    }
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg
}

fn neighbour_dump(family: AddressFamily, index: u32) -> Result<Vec<NeighbourMessage>> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    let replies = crate::netlink::exchange(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP)
        .map_err(|source| Error {
            op: format!("listing the neighbours of {DEVICE}"),
            source,
        })?;
    Ok(replies
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => Some(n),
            _ => None,
        })
        .collect())
}

fn neighbour_fields(n: &NeighbourMessage) -> (Option<NeighbourAddress>, Option<[u8; 6]>) {
    let mut dst = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(d) => dst = Some(d.clone()),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    (dst, mac)
}

// === impl Link ===

impl Link {
    fn from_message(l: &LinkMessage) -> Link {
        let mut link = Link {
            index: l.header.index,
            mtu: 0,
            mac: Vec::new(),
            vxlan: None,
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(mac) => link.mac = mac.clone(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
                            let mut settings = VxlanSettings::default();
                            for d in data {
                                match d {
                                    InfoVxlan::Id(v) => settings.vni = *v,
                                    InfoVxlan::Local(v) => settings.local = Some(*v),
                                    InfoVxlan::Port(v) => settings.port = *v,
                                    InfoVxlan::Link(v) => settings.link = *v,
                                    _ => {}
                                }
                            }
                            link.vxlan = Some(settings);
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn ignore_missing(r: Result<()>) -> Result<()> {
    match r {
        Err(e)
            if matches!(
                e.source.raw_os_error(),
                Some(libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Sends one change and waits for the kernel's acknowledgement.
fn request(msg: RouteNetlinkMessage, flags: u16, op: impl FnOnce() -> String) -> Result<()> {
    crate::netlink::request(msg, flags).map_err(|source| Error { op: op(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own in a fresh network namespace (unshare affects only the
    /// calling thread); without root (CAP_SYS_ADMIN) a failure, or `None` with
    /// `KEELSON_ALLOW_SKIP=1`.
    fn in_private_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        std::thread::spawn(move || {
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                // As tests/common/skip.rs: a failure unless KEELSON_ALLOW_SKIP=1, never a skip
                // under CI.
                assert!(
                    std::env::var("CI").as_deref() != Ok("true")
                        && std::env::var("KEELSON_ALLOW_SKIP").as_deref() == Ok("1"),
                    "the netlink test needs root (unshare CLONE_NEWNET); KEELSON_ALLOW_SKIP=1 \
                     skips it (not under CI=true)"
                );
                eprintln!("!!! SKIPPING the netlink round trip (KEELSON_ALLOW_SKIP=1): not root");
                return None;
            }
            Some(f())
        })
        .join()
        .expect("the netns thread")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn programs_reads_back_and_removes_vxlan_state() {
        in_private_netns(|| {
            let lo = link("lo").unwrap().expect("lo exists in every namespace");
            let vtep = Vtep {
                address: ip("198.19.0.0"),
                mac: super::super::plan::vtep_mac(ip("198.19.0.0")),
                underlay: ip("127.0.0.1"),
            };
            let index = ensure_vxlan(&vtep, lo.index, 1400).unwrap();
            // A second call changes nothing.
            assert_eq!(ensure_vxlan(&vtep, lo.index, 1400).unwrap(), index);
            let dev = link(DEVICE).unwrap().unwrap();
            assert_eq!(dev.mtu, 1400);
            assert_eq!(
                dev.vxlan,
                Some(VxlanSettings {
                    vni: VNI,
                    local: Some(vtep.underlay),
                    port: VXLAN_PORT,
                    link: lo.index,
                })
            );

            let peer = Neighbour {
                vtep: ip("198.19.1.0"),
                mac: super::super::plan::vtep_mac(ip("198.19.1.0")),
            };
            let fdb_entry = Fdb {
                mac: peer.mac,
                remote: ip("198.18.2.2"),
            };
            let route = Route {
                dst: Net4 {
                    addr: ip("198.19.1.0"),
                    prefix: 24,
                },
                via: Via::Vtep(peer.vtep),
            };
            add_neighbour(index, &peer).unwrap();
            add_fdb(index, &fdb_entry).unwrap();
            add_route(&route, Some(index)).unwrap();
            add_route(&route, Some(index)).unwrap();
            assert_eq!(neighbours(index).unwrap(), vec![peer]);
            assert_eq!(fdb(index).unwrap(), vec![fdb_entry]);
            assert_eq!(routes(Some(index)).unwrap(), vec![route]);

            delete_route(&route, Some(index)).unwrap();
            delete_neighbour(index, &peer).unwrap();
            delete_fdb(index, &fdb_entry).unwrap();
            assert!(routes(Some(index)).unwrap().is_empty());
            assert!(
                neighbours(index).unwrap().is_empty(),
                "the neighbour entry stays"
            );
            assert!(fdb(index).unwrap().is_empty(), "the fdb entry stays");

            // A changed VTEP replaces the device.
            let moved = Vtep {
                address: ip("198.19.5.0"),
                mac: super::super::plan::vtep_mac(ip("198.19.5.0")),
                ..vtep
            };
            ensure_vxlan(&moved, lo.index, 1400).unwrap();
            assert_eq!(link(DEVICE).unwrap().unwrap().mac, moved.mac.to_vec());
        });
    }
}
