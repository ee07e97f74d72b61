//! The cluster DNS address on the node: a dummy link (`keelson-dns`) holding the address, so
//! packets from pods (routed to the node by their default route) are delivered locally and
//! the server can bind it. Each call is one short netlink exchange (microseconds).
//!
//! Invariants: the address is added with a host prefix and a preferred lifetime of 0 (no
//! subnet route, never picked as a source address for the node's own traffic); a
//! [`DnsLink`] that made the link removes it, and so the address, when dropped (keelson
//! stopping); an adopted link (left by a killed keelson) stays.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The dummy link's name.
pub const LINK: &str = "keelson-dns";

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

/// The link holding the cluster DNS address; removed on drop.
#[derive(Debug)]
pub struct DnsLink {
    index: u32,
    /// Made by this process (not adopted from an earlier run or another process): only then
    /// is it removed on drop, so a second keelson that fails to bind never takes the first's.
    created: bool,
}

// === impl DnsLink ===

impl DnsLink {
    /// Creates (or adopts) the link, brings it up and puts `ip` on it.
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
        let created = match request(
            RouteNetlinkMessage::NewLink(create),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(err("create the link keelson-dns")(e)),
        };
        let index = nix::net::if_::if_nametoindex(LINK)
            .map_err(|e| err("find the link keelson-dns")(io::Error::from(e)))?;
        let mut up = LinkMessage::default();
        up.header.index = index;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        request(RouteNetlinkMessage::SetLink(up), 0).map_err(err("bring keelson-dns up"))?;
        request(
            RouteNetlinkMessage::NewAddress(address(index, ip)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(err("add the address to keelson-dns"))?;
        Ok(DnsLink { index, created })
    }
}

impl Drop for DnsLink {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let mut del = LinkMessage::default();
        del.header.index = self.index;
        if let Err(e) = request(RouteNetlinkMessage::DelLink(del), 0)
            && e.raw_os_error() != Some(libc::ENODEV)
        {
            tracing::warn!(error = %e, "cannot remove the link keelson-dns");
        }
    }
}

fn address(index: u32, ip: IpAddr) -> AddressMessage {
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
    msg.attributes.push(AddressAttribute::Local(ip));
    msg.attributes.push(AddressAttribute::Address(ip));
    let mut lifetimes = CacheInfo::default();
    lifetimes.ifa_preferred = 0;
    lifetimes.ifa_valid = u32::MAX;
    msg.attributes.push(AddressAttribute::CacheInfo(lifetimes));
    msg
}

/// Sends one request and waits for the kernel's acknowledgement.
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut nl = NetlinkMessage::from(msg);
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    nl.header.sequence_number = 1;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let ack = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match ack.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        _ => Ok(()),
    }
}
