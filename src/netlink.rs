//! One rtnetlink exchange: the request/acknowledge round trip every module that changes the
//! kernel's links, addresses, routes and neighbours makes (the virtual IP, load-balancer
//! addresses, the cluster DNS link, pod routes, a pod's loopback).
//!
//! Each call opens its own socket, so a call made on a thread inside another network
//! namespace talks to that namespace's kernel tables.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Sends one change (with `flags` besides REQUEST and ACK) and waits for the kernel's
/// acknowledgement.
pub fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    exchange(msg, flags).map(drop)
}

/// Sends one request (with `flags` besides REQUEST and ACK) and collects the kernel's
/// answers until its acknowledgement, its error, or the end of a dump.
pub fn exchange(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
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
    let mut out = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        if datagram.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "netlink closed before its answer ended",
            ));
        }
        let mut offset = 0;
        while offset < datagram.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(out),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if len == 0 {
                break;
            }
            // Messages are aligned to 4 bytes (NLMSG_ALIGN).
            offset += (len + 3) & !3;
        }
    }
}
