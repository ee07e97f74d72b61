//! The DNS server's sockets: UDP and TCP port 53 on the cluster DNS address, answering from
//! the current [`Zone`] and forwarding the rest through the [`Forwarder`].
//!
//! Bounds: at most [`MAX_TCP`] TCP connections (a permit taken before `accept`), each idle
//! for at most [`TCP_IDLE`]; at most [`MAX_FORWARDS`] questions waiting on upstreams (past
//! that, SERVFAIL at once); per source address, [`FORWARD_RATE`] forwarded questions a second
//! (burst [`FORWARD_BURST`]) — cluster names are answered from memory in microseconds and are
//! not limited, questions that cost an upstream round trip are. Malformed input is answered
//! with FORMERR or dropped, never a panic.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

use super::forward::Forwarder;
use super::message::{self, Incoming, Request};
use super::zone::{Lookup, Zone};

/// Concurrent TCP connections.
pub const MAX_TCP: usize = 64;
/// A TCP connection with no complete question for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Questions waiting on upstream resolvers at once.
pub const MAX_FORWARDS: usize = 256;
/// Forwarded questions per second per source address.
pub const FORWARD_RATE: f64 = 500.0;
pub const FORWARD_BURST: f64 = 1000.0;
/// Source addresses tracked by the rate limit; past this the table starts afresh.
const RATE_SOURCES: usize = 4096;
/// The biggest datagram read (anything larger is not a DNS query).
const UDP_BUFFER: usize = 4096;

/// What every socket task answers with.
pub struct Resolver {
    zone: watch::Receiver<Arc<Zone>>,
    forwarder: Arc<Forwarder>,
    forwards: Arc<Semaphore>,
    rates: Mutex<Rates>,
}

/// Token buckets of forwarded questions, per source address.
#[derive(Default)]
pub struct Rates {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

// === impl Resolver ===

impl Resolver {
    pub fn new(zone: watch::Receiver<Arc<Zone>>, forwarder: Arc<Forwarder>) -> Resolver {
        Resolver {
            zone,
            forwarder,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            rates: Mutex::new(Rates::default()),
        }
    }

    /// The reply bytes for one request (within `limit`), or nothing for input to ignore.
    pub async fn handle(&self, bytes: &[u8], source: IpAddr, limit: usize) -> Option<Vec<u8>> {
        let reply = match message::parse(bytes) {
            Incoming::Drop => return None,
            Incoming::Refuse(reply) => reply,
            Incoming::Question(req) => match self.local(&req) {
                Some(reply) => reply,
                None => self.resolve(&req, source).await,
            },
        };
        message::encode(&reply, limit)
    }

    /// The reply when no upstream is needed; `None` when one is.
    pub fn local(&self, req: &Request) -> Option<Message> {
        let query = req.query();
        if !message::is_internet(query) {
            return None;
        }
        let zone = self.zone.borrow().clone();
        match zone.lookup(query.name(), query.query_type()) {
            Lookup::Outside | Lookup::Alias { .. } => None,
            found => Some(req.answer(found, &zone)),
        }
    }

    /// The full answer: forwarded (rate-limited, bounded) or an ExternalName chased.
    pub async fn resolve(&self, req: &Request, source: IpAddr) -> Message {
        let query = req.query().clone();
        let zone = self.zone.borrow().clone();
        let lookup = if message::is_internet(&query) {
            zone.lookup(query.name(), query.query_type())
        } else {
            Lookup::Outside
        };
        match lookup {
            Lookup::Outside => match self.upstream(&req.message, source).await {
                Ok(reply) => reply,
                Err(code) => req.reply(code),
            },
            Lookup::Alias { cname, target } => {
                let answer = match zone.lookup(&target, query.query_type()) {
                    Lookup::Outside => {
                        let mut ask = req.message.clone();
                        ask.queries = vec![Query::query(target, query.query_type())];
                        self.upstream(&ask, source).await.ok()
                    }
                    // One level only: an alias to another alias in the cluster stops here.
                    Lookup::Alias { .. } => None,
                    inner => Some(req.answer(inner, &zone)),
                };
                req.alias_reply(cname, answer)
            }
            other => req.answer(other, &zone),
        }
    }

    async fn upstream(&self, ask: &Message, source: IpAddr) -> Result<Message, ResponseCode> {
        if !self.admit(source) {
            return Err(ResponseCode::Refused);
        }
        let Ok(_permit) = self.forwards.try_acquire() else {
            return Err(ResponseCode::ServFail);
        };
        self.forwarder.forward(ask).await.map_err(|e| {
            tracing::debug!(error = %e, "forwarding failed");
            ResponseCode::ServFail
        })
    }

    fn admit(&self, source: IpAddr) -> bool {
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        rates.admit(source, Instant::now())
    }
}

// === impl Rates ===

impl Rates {
    /// Takes one token from `source`'s bucket, if it has one.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= RATE_SOURCES && !self.buckets.contains_key(&source) {
            self.buckets.clear();
        }
        let (tokens, last) = self.buckets.entry(source).or_insert((FORWARD_BURST, now));
        let refill = now.duration_since(*last).as_secs_f64() * FORWARD_RATE;
        *tokens = (*tokens + refill).min(FORWARD_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Answers datagrams until the task is dropped. Local answers are sent inline; questions for
/// upstreams run in their own tasks (bounded by the forward permits).
pub async fn serve_udp(socket: Arc<UdpSocket>, resolver: Arc<Resolver>) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier replies surface here; the socket is still fine.
                tracing::debug!(error = %e, "udp receive");
                continue;
            }
        };
        let bytes = &buf[..n];
        let reply = match message::parse(bytes) {
            Incoming::Drop => continue,
            Incoming::Refuse(r) => message::encode(&r, message::PLAIN_UDP),
            Incoming::Question(req) => match resolver.local(&req) {
                Some(r) => message::encode(&r, req.udp_limit()),
                None => {
                    spawn_forward(&socket, &resolver, req, peer);
                    continue;
                }
            },
        };
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

fn spawn_forward(
    socket: &Arc<UdpSocket>,
    resolver: &Arc<Resolver>,
    req: Request,
    peer: SocketAddr,
) {
    if resolver.forwards.available_permits() == 0 {
        // Fail fast rather than queue tasks behind stuck upstreams.
        if let Some(reply) = message::encode(&req.reply(ResponseCode::ServFail), req.udp_limit()) {
            let _ = socket.try_send_to(&reply, peer);
        }
        return;
    }
    let (socket, resolver) = (socket.clone(), resolver.clone());
    tokio::spawn(async move {
        let reply = resolver.resolve(&req, peer.ip()).await;
        if let Some(bytes) = message::encode(&reply, req.udp_limit()) {
            let _ = socket.send_to(&bytes, peer).await;
        }
    });
}

/// Accepts TCP connections (at most [`MAX_TCP`] at once) until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, resolver: Arc<Resolver>) {
    let permits = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "tcp accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            let _permit = permit;
            connection(stream, peer.ip(), &resolver).await;
        });
    }
}

/// One TCP client: length-prefixed questions answered in order, until it closes or idles.
async fn connection(mut stream: TcpStream, peer: IpAddr, resolver: &Resolver) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(reply) = resolver.handle(&buf, peer, usize::from(u16::MAX)).await else {
            continue;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(reply.len() + 2);
        frame.extend_from_slice(&n.to_be_bytes());
        frame.extend_from_slice(&reply);
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}
