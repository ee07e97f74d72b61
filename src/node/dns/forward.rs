//! Forwarding questions outside the cluster to the node's upstream resolvers, with a small
//! cache of their answers.
//!
//! Upstreams come from the node's resolver file (`--resolv-conf`, `/etc/resolv.conf` by
//! default), loopback stubs included: keelson runs on the host, where a local stub such as
//! systemd-resolved's 127.0.0.53 is reachable (CoreDNS in a pod cannot reach it, which is why
//! kubelet's docs say to skip them there). Each question goes over UDP from a fresh socket
//! (a random source port per question, and a random id), then over TCP when the upstream
//! truncates; an upstream that does not answer within [`UPSTREAM_TIMEOUT`] is skipped for the
//! next one.
//!
//! Invariants: the cache holds at most [`CACHE_ENTRIES`] answers, each for at most
//! [`MAX_CACHE_TTL`]; failures (SERVFAIL, REFUSED, truncated replies) are never cached.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Longest wait for one upstream before trying the next.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers kept; past this the expired go first, then an arbitrary one.
pub const CACHE_ENTRIES: usize = 1024;
/// Longest an upstream answer is reused (K3s's Corefile: `cache 30`).
pub const MAX_CACHE_TTL: u32 = 30;
/// The most upstreams used (glibc's MAXNS).
const MAX_UPSTREAMS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no upstream resolver (the node's resolver file names no nameserver)")]
    NoUpstream,
    #[error("no upstream resolver answered ({tried} tried)")]
    NoAnswer { tried: usize },
}

/// The node's upstream resolvers and the answers they gave.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    /// Lower-case.
    name: String,
    qtype: u16,
    qclass: u16,
}

struct Cached {
    reply: Message,
    stored: Instant,
    expires: Instant,
}

// === impl Forwarder ===

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The upstreams a resolver file names; an unreadable file names none (logged).
    pub fn from_resolv_conf(path: &Path) -> Forwarder {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the resolver file: names outside the cluster will not resolve");
                String::new()
            }
        };
        Forwarder::new(upstreams(&text))
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The upstream's reply to `request` (with the request's id), from the cache if fresh.
    pub async fn forward(&self, request: &Message) -> Result<Message, Error> {
        let Some(query) = request.queries.first() else {
            return Err(Error::NoAnswer { tried: 0 });
        };
        let key = CacheKey::of(query);
        if let Some(mut hit) = self.cached(&key) {
            hit.metadata.id = request.metadata.id;
            return Ok(hit);
        }
        if self.upstreams.is_empty() {
            return Err(Error::NoUpstream);
        }
        let mut outgoing = request.clone();
        outgoing.metadata.id = random_id();
        let bytes = outgoing
            .to_vec()
            .map_err(|_| Error::NoAnswer { tried: 0 })?;
        for upstream in &self.upstreams {
            let reply = match ask_udp(*upstream, &bytes, &outgoing).await {
                Some(r) if r.metadata.truncation => ask_tcp(*upstream, &bytes, &outgoing).await,
                other => other,
            };
            let Some(mut reply) = reply else { continue };
            self.store(key, &reply);
            reply.metadata.id = request.metadata.id;
            return Ok(reply);
        }
        Err(Error::NoAnswer {
            tried: self.upstreams.len(),
        })
    }

    fn cached(&self, key: &CacheKey) -> Option<Message> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.get(key)?;
        let now = Instant::now();
        if now >= entry.expires {
            return None;
        }
        // Records age while cached, as a resolver's would, and never outlive the entry.
        let age = now.duration_since(entry.stored).as_secs() as u32;
        let left = entry.expires.duration_since(now).as_secs().max(1) as u32;
        let mut reply = entry.reply.clone();
        for r in reply
            .answers
            .iter_mut()
            .chain(reply.authorities.iter_mut())
            .chain(reply.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age).min(left);
        }
        Some(reply)
    }

    fn store(&self, key: CacheKey, reply: &Message) {
        let Some(ttl) = cache_ttl(reply) else {
            return;
        };
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= CACHE_ENTRIES
                && let Some(k) = cache.keys().next().cloned()
            {
                cache.remove(&k);
            }
        }
        cache.insert(
            key,
            Cached {
                reply: reply.clone(),
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
            },
        );
    }
}

// === impl CacheKey ===

impl CacheKey {
    fn of(q: &Query) -> CacheKey {
        CacheKey {
            name: q.name().to_ascii().to_ascii_lowercase(),
            qtype: u16::from(q.query_type()),
            qclass: u16::from(q.query_class()),
        }
    }
}

/// The nameservers of a resolv.conf, port 53, at most three.
pub fn upstreams(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next()?;
            let mut fields = line.split_whitespace();
            (fields.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 address (fe80::1%eth0) is not usable from here: skipped.
            let ip: IpAddr = fields.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .take(MAX_UPSTREAMS)
        .collect()
}

/// How long a reply may be cached: its smallest TTL (the SOA minimum for a negative answer),
/// capped; `None` for what must not be cached.
fn cache_ttl(reply: &Message) -> Option<u32> {
    if reply.metadata.truncation
        || !matches!(
            reply.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        )
    {
        return None;
    }
    let ttl = if reply.answers.is_empty() {
        reply
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .unwrap_or(0)
    } else {
        reply.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
    };
    (ttl > 0).then_some(ttl.min(MAX_CACHE_TTL))
}

/// Whether `reply` answers `sent` (id and question), so a stray datagram is not taken for it.
fn matches(reply: &Message, sent: &Message) -> bool {
    reply.metadata.id == sent.metadata.id && reply.queries == sent.queries
}

async fn ask_udp(upstream: SocketAddr, bytes: &[u8], sent: &Message) -> Option<Message> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(bytes).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        if let Ok(reply) = Message::from_vec(&buf[..n])
            && matches(&reply, sent)
        {
            return Some(reply);
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, bytes: &[u8], sent: &Message) -> Option<Message> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await.ok()?;
        let len = u16::try_from(bytes.len()).ok()?;
        let mut frame = Vec::with_capacity(bytes.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(bytes);
        stream.write_all(&frame).await.ok()?;
        let len = stream.read_u16().await.ok()?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.ok()?;
        Message::from_vec(&buf).ok().filter(|r| matches(r, sent))
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

fn random_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    // The system RNG does not fail on Linux after boot; a fixed id would still work.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}
