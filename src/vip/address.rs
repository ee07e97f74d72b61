//! Adding and removing the virtual IP on an interface, through rtnetlink.
//!
//! The address is added with a host prefix (/32, /128) so it brings no subnet route, with a
//! preferred lifetime of 0 so the kernel never picks it as a source address for this host's
//! own connections, and (IPv6) without duplicate-address detection, which would otherwise
//! hold it "tentative" for a second during a failover. Each call is one short synchronous
//! netlink exchange with the kernel (microseconds), so callers need not move it off the runtime.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;

use crate::netlink::request;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error(
        "cannot {action} {ip} on {iface}: {source} (keelson needs CAP_NET_ADMIN for --vip and load-balancer addresses)"
    )]
    Netlink {
        action: &'static str,
        ip: IpAddr,
        iface: String,
        #[source]
        source: io::Error,
    },
}

/// One address on one interface.
#[derive(Debug, Clone)]
pub struct VipAddress {
    pub ip: IpAddr,
    pub iface: String,
    pub index: u32,
}

impl VipAddress {
    pub fn new(ip: IpAddr, iface: &str) -> Result<VipAddress, Error> {
        let index = nix::net::if_::if_nametoindex(iface)
            .map_err(|_| Error::NoInterface(iface.to_owned()))?;
        Ok(VipAddress {
            ip,
            iface: iface.to_owned(),
            index,
        })
    }

    /// Adds the address (or refreshes it if it is there already).
    pub fn add(&self) -> Result<(), Error> {
        let msg = RouteNetlinkMessage::NewAddress(self.message());
        request(msg, NLM_F_CREATE | NLM_F_REPLACE).map_err(|source| self.err("add", source))
    }

    /// Removes the address; an address that is already gone is fine.
    pub fn remove(&self) -> Result<(), Error> {
        let msg = RouteNetlinkMessage::DelAddress(self.message());
        match request(msg, 0) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(source) => Err(self.err("remove", source)),
        }
    }

    /// Whether the interface holds the address now.
    pub fn present(&self) -> bool {
        nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
            addrs.any(|a| {
                a.interface_name == self.iface
                    && a.address.as_ref().is_some_and(|s| {
                        s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(self.ip)
                            || s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(self.ip)
                    })
            })
        })
    }

    fn err(&self, action: &'static str, source: io::Error) -> Error {
        Error::Netlink {
            action,
            ip: self.ip,
            iface: self.iface.clone(),
            source,
        }
    }

    fn message(&self) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.index = self.index;
        let (family, prefix) = match self.ip {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        msg.header.family = family;
        msg.header.prefix_len = prefix;
        if self.ip.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        msg.attributes.push(AddressAttribute::Local(self.ip));
        msg.attributes.push(AddressAttribute::Address(self.ip));
        let mut lifetimes = CacheInfo::default();
        lifetimes.ifa_preferred = 0;
        lifetimes.ifa_valid = u32::MAX;
        msg.attributes.push(AddressAttribute::CacheInfo(lifetimes));
        msg
    }
}
