//! The cluster DNS address on the node: a dummy link (`keelson-dns`) holding the address, so
//! packets from pods (routed to the node by their default route) are delivered locally and
//! the server can bind it; on a kernel built without the dummy driver, the address goes on
//! `lo`. Each call is one short netlink exchange (microseconds).
//!
//! Invariants: the address is added with a host prefix and a preferred lifetime of 0 (no
//! subnet route, never picked as a source address for the node's own traffic); a
//! [`DnsLink`] removes what it made (the link, or its address on `lo`) when dropped (keelson
//! stopping); what it adopted (left by a killed keelson, or another process's) stays.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;

use crate::netlink::request;
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};

/// The dummy link's name.
pub const LINK: &str = "keelson-dns";
/// The label of an IPv4 address keelson puts on `lo`: an address with it is keelson's (left by
/// a keelson that was killed), one without it someone else's.
const LOOPBACK_LABEL: &str = "lo:keelson-dns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot {action} for the cluster DNS address {ip}: {source} (keelson needs CAP_NET_ADMIN to serve cluster DNS)"
    )]
    Netlink {
        action: &'static str,
        ip: IpAddr,
        #[source]
        source: io::Error,
    },
}

/// The link holding the cluster DNS address; what this process added is removed on drop.
#[derive(Debug)]
pub struct DnsLink {
    ip: IpAddr,
    /// `keelson-dns`, or `lo` without the dummy driver.
    pub interface: &'static str,
    index: u32,
    held: Held,
}

/// What this process made, and so takes away again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The dummy link (and with it the address).
    Link,
    /// The address on `lo` (a kernel without the dummy driver).
    LoopbackAddress,
    /// Nothing: adopted from an earlier run or another process, so a second keelson that
    /// fails to bind never takes the first's address away.
    Nothing,
}

// === impl DnsLink ===

impl DnsLink {
    /// Creates (or adopts) the link, brings it up and puts `ip` on it. Without the kernel's
    /// dummy driver the address goes on `lo` instead (the same local delivery).
    pub fn ensure(ip: IpAddr) -> Result<DnsLink, Error> {
        let err = |action| move |source| Error::Netlink { action, ip, source };
        let mut create = LinkMessage::default();
        create
            .attributes
            .push(LinkAttribute::IfName(LINK.to_owned()));
        create
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        let (name, mut held) = match request(
            RouteNetlinkMessage::NewLink(create),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => (LINK, Held::Link),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => (LINK, Held::Nothing),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::debug!(
                    "no dummy link driver in this kernel: the cluster DNS address goes on lo"
                );
                ("lo", Held::Nothing)
            }
            Err(e) => return Err(err("create the link keelson-dns")(e)),
        };
        let index = nix::net::if_::if_nametoindex(name)
            .map_err(|e| err("find the link keelson-dns")(io::Error::from(e)))?;
        let mut up = LinkMessage::default();
        up.header.index = index;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        request(RouteNetlinkMessage::SetLink(up), 0).map_err(err("bring the link up"))?;
        let on_lo = name == "lo";
        if on_lo && !present(name, ip) {
            held = Held::LoopbackAddress;
        }
        request(
            RouteNetlinkMessage::NewAddress(address(index, ip, on_lo)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(err("add the address"))?;
        Ok(DnsLink {
            ip,
            interface: name,
            index,
            held,
        })
    }

    /// Leaves the address in place when this is dropped: for a process that could not bind
    /// it because another one serves there.
    pub fn release(mut self) {
        self.held = Held::Nothing;
    }
}

impl Drop for DnsLink {
    fn drop(&mut self) {
        let done = match self.held {
            Held::Nothing => return,
            Held::Link => {
                let mut del = LinkMessage::default();
                del.header.index = self.index;
                request(RouteNetlinkMessage::DelLink(del), 0)
            }
            Held::LoopbackAddress => request(
                RouteNetlinkMessage::DelAddress(address(self.index, self.ip, true)),
                0,
            ),
        };
        if let Err(e) = done
            && !matches!(
                e.raw_os_error(),
                Some(libc::ENODEV | libc::EADDRNOTAVAIL | libc::ENOENT)
            )
        {
            tracing::warn!(error = %e, ip = %self.ip, "cannot remove the cluster DNS address");
        }
    }
}

/// Whether `iface` holds `ip` now (an address labelled [`LOOPBACK_LABEL`] shows under its
/// label, so it is not counted as `lo`'s).
fn present(iface: &str, ip: IpAddr) -> bool {
    nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
        addrs.any(|a| {
            a.interface_name == iface
                && a.address.as_ref().is_some_and(|s| {
                    s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                        || s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip)
                })
        })
    })
}

fn address(index: u32, ip: IpAddr, on_lo: bool) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    let (family, prefix) = match ip {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    msg.header.family = family;
    msg.header.prefix_len = prefix;
    if ip.is_ipv6() {
        // No duplicate-address detection: the address would be unusable ("tentative") at first.
        msg.header.flags = AddressHeaderFlags::Nodad;
    }
    if on_lo && ip.is_ipv4() {
        msg.attributes
            .push(AddressAttribute::Label(LOOPBACK_LABEL.to_owned()));
    }
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    let mut lifetimes = CacheInfo::default();
    lifetimes.ifa_preferred = 0;
    lifetimes.ifa_valid = u32::MAX;
    msg.attributes.push(AddressAttribute::CacheInfo(lifetimes));
    msg
}
