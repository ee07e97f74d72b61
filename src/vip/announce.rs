//! Telling the LAN where the virtual IP lives: gratuitous ARP (IPv4) and unsolicited
//! neighbour advertisements (IPv6).
//!
//! Switches and hosts differ in which gratuitous ARP form they honour, so every announcement
//! sends both: an ARP request and an ARP reply, each with sender = target = the VIP, from this
//! interface's MAC address to the broadcast address.

#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const ETH_P_ARP: u16 = 0x0806;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the MAC address of {iface}: {source}")]
    Mac {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot open a socket to announce an address: {0} (keelson needs CAP_NET_RAW for --vip and load-balancer addresses)"
    )]
    Socket(#[source] io::Error),
    #[error("cannot send an announcement for {ip} on {iface}: {source}")]
    Send {
        ip: IpAddr,
        iface: String,
        #[source]
        source: io::Error,
    },
}

pub struct Announcer {
    ip: IpAddr,
    iface: String,
    index: u32,
    mac: [u8; 6],
    socket: Sock,
}

enum Sock {
    Packet(OwnedFd),
    Icmp6(Socket),
}

impl Announcer {
    pub fn new(ip: IpAddr, iface: &str, index: u32) -> Result<Announcer, Error> {
        let mac = read_mac(iface).map_err(|source| Error::Mac {
            iface: iface.to_owned(),
            source,
        })?;
        let socket = match ip {
            IpAddr::V4(_) => Sock::Packet(packet_socket().map_err(Error::Socket)?),
            IpAddr::V6(_) => {
                let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                    .map_err(Error::Socket)?;
                // RFC 4861: neighbour discovery packets must arrive with hop limit 255.
                s.set_multicast_hops_v6(255).map_err(Error::Socket)?;
                s.set_multicast_if_v6(index).map_err(Error::Socket)?;
                Sock::Icmp6(s)
            }
        };
        Ok(Announcer {
            ip,
            iface: iface.to_owned(),
            index,
            mac,
            socket,
        })
    }

    /// Sends one announcement (both ARP forms, or one unsolicited NA).
    pub fn announce(&self) -> Result<(), Error> {
        let sent = match (&self.socket, self.ip) {
            (Sock::Packet(fd), IpAddr::V4(ip)) => send_frame(fd, self.index, &arp(1, self.mac, ip))
                .and_then(|()| send_frame(fd, self.index, &arp(2, self.mac, ip))),
            (Sock::Icmp6(s), IpAddr::V6(ip)) => {
                let all_nodes =
                    SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, self.index);
                s.send_to(&neighbour_advert(self.mac, ip), &SockAddr::from(all_nodes))
                    .map(|_| ())
            }
            _ => Ok(()),
        };
        sent.map_err(|source| Error::Send {
            ip: self.ip,
            iface: self.iface.clone(),
            source,
        })
    }
}

fn read_mac(iface: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    bytes
        .try_into()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not an Ethernet address"))
}

/// An Ethernet frame holding a gratuitous ARP `op` (1 request, 2 reply) for `ip`.
fn arp(op: u8, mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]); // broadcast
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, op]);
    f.extend_from_slice(&mac); // sender hardware address
    f.extend_from_slice(&ip.octets()); // sender protocol address
    // Target hardware address: zero in a request; in the reply form, broadcast.
    f.extend_from_slice(if op == 1 { &[0; 6] } else { &[0xff; 6] });
    f.extend_from_slice(&ip.octets());
    f
}

/// ICMPv6 unsolicited neighbour advertisement (override set, solicited clear) for `ip`; the
/// kernel fills in the checksum on raw ICMPv6 sockets.
fn neighbour_advert(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let mut p = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    p.extend_from_slice(&ip.octets());
    p.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 bytes
    p.extend_from_slice(&mac);
    p
}

fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a negative return is an error and is checked
    // before the descriptor is used.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_frame(fd: &OwnedFd, index: u32, frame: &[u8]) -> io::Result<()> {
    let mut addr = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: ETH_P_ARP.to_be(),
        sll_ifindex: index as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0; 8],
    };
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `frame` is a live slice whose pointer and length are passed together; `addr` is
    // a fully initialised sockaddr_ll that outlives the call, and its exact size is passed;
    // the kernel only reads both.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_frames_have_both_forms() {
        let mac = [2, 0, 0, 0, 0, 1];
        let ip = Ipv4Addr::new(198, 18, 0, 100);
        let req = arp(1, mac, ip);
        let rep = arp(2, mac, ip);
        assert_eq!(req.len(), 42);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!((req[21], rep[21]), (1, 2));
        // Sender and target protocol addresses are both the VIP.
        assert_eq!(&req[28..32], &ip.octets());
        assert_eq!(&req[38..42], &ip.octets());
        assert_eq!(&rep[32..38], &[0xff; 6]);
    }

    #[test]
    fn neighbour_advert_overrides_and_carries_the_mac() {
        let na = neighbour_advert([2, 0, 0, 0, 0, 1], "2001:db8::1".parse().unwrap());
        assert_eq!((na[0], na[4]), (136, 0x20));
        assert_eq!(&na[24..26], &[2, 1]);
        assert_eq!(na.len(), 32);
    }
}
