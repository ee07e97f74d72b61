//! The HTTPS API: TLS with client certificates, connection limits, graceful shutdown.
//!
//! Owns the listener and the connections; request handling is in [`routes`], object
//! semantics in [`registry`]. Invariants: at most [`MAX_CONNECTIONS`] connections with a
//! client certificate or still in the TLS handshake are open, and at most [`MAX_ANONYMOUS`]
//! without one, so anonymous clients (joins, health checks) can never take the slots kubectl
//! and agents need; one source address holds at most [`PER_SOURCE_HANDSHAKES`] handshakes (a
//! new one ends its oldest, so a stalled handshake cannot keep a prompt client out) and
//! [`PER_SOURCE_ANONYMOUS`] anonymous connections (refused at once beyond that). A
//! connection beyond [`MAX_CONNECTIONS`] is answered 503 at once (at most [`MAX_REFUSING`]
//! being answered, the rest closed), never left waiting in the accept queue. On
//! shutdown no new connection is accepted, watches end, and in-flight requests get
//! [`DRAIN_GRACE`] to finish.
//!
//! Each connection speaks the protocol its TLS handshake chose by ALPN: HTTP/2 for clients
//! that offer `h2` (kubectl, client-go, curl), so a client's watches share one connection
//! instead of a TLS session and its buffers each; HTTP/1.1 for the rest, and for every
//! upgrade — exec, attach and port-forward (SPDY, websockets) and the agents' tunnel, whose
//! clients offer only `http/1.1` (client-go does so for upgrades itself). Invariants: an
//! HTTP/2 connection carries at most [`MAX_STREAMS`] requests at once, so the connection
//! bound still bounds the requests and the per-user watch bound and in-flight limits
//! ([`inflight`]) count every stream; one with no stream open for [`IDLE_TIMEOUT`] is
//! closed, as HTTP/1.1's header timeout closes an idle one; a refusal (503) is answered in
//! the protocol the client chose.

pub mod access;
pub mod admission;
pub mod allocator;
pub mod apply;
pub mod auth;
pub mod certificates;
pub mod discovery;
pub mod encrypt;
pub mod eviction;
pub mod features;
pub mod field_validation;
pub mod inflight;
pub mod kinds;
pub mod metrics;
pub mod openapi;
pub mod patch;
pub mod podstreams;
pub mod portforward;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod resources;
pub mod reviews;
pub mod routes;
pub mod scale;
pub mod selector;
pub mod spdy;
pub mod status;
pub mod table;
pub mod token_request;
pub mod tokens;
pub mod upgrade;
pub mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch as signal};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::bootstrap::ClusterCa;
use crate::bootstrap::pki::{Issued, pem_to_der};
use crate::datastore::feed::Feed;
use registry::Registry;

pub type Body = BoxBody<Bytes, Infallible>;

/// Open connections at most; further clients are answered 503 at once (see [`refuse_full`]).
pub const MAX_CONNECTIONS: usize = 512;
/// Connections being refused for [`MAX_CONNECTIONS`] at once; beyond them a connection is
/// closed unanswered (still at once, not left waiting).
const MAX_REFUSING: usize = 32;
/// How long a refused connection's TLS handshake may take.
const REFUSAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections without a client certificate at most, beside [`MAX_CONNECTIONS`].
pub const MAX_ANONYMOUS: usize = 256;
/// Connections one source address may have in the TLS handshake at once; a new one beyond
/// this ends the oldest, which has been stalling longest.
pub const PER_SOURCE_HANDSHAKES: usize = 64;
/// Connections without a client certificate one source address may hold at once. Agents
/// behind one NAT, or joining through the VIP's balancer, share an address: beyond this they
/// get 503 and retry.
pub const PER_SOURCE_ANONYMOUS: usize = 32;
/// Connections refused since start because their source, or all anonymous clients, held
/// their share (for `/metrics`).
pub static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Connections accepted since start (all listeners of the process), for `/metrics`.
pub static ACCEPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// How long in-flight requests may run after shutdown begins.
pub const DRAIN_GRACE: Duration = Duration::from_secs(4);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests (HTTP/2 streams) one connection may carry at once. kube-apiserver's default
/// (`--http2-max-streams-per-connection`) is 250 too; client-go opens another connection
/// beyond it. Every stream is a watch or a request counted by [`inflight`], so this bounds
/// only how the load spreads over connections, not how much there is.
pub const MAX_STREAMS: u32 = 250;
/// An HTTP/2 connection without a request open this long is closed (GOAWAY; clients
/// reconnect when they next need one), as an idle HTTP/1.1 connection is by
/// [`HEADER_TIMEOUT`]: an idle connection must not hold one of the [`MAX_CONNECTIONS`].
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings a connection after this long without a frame from the client, and closes it
/// if the ping is not answered within [`PING_TIMEOUT`]: a vanished client's watches (up to
/// [`MAX_STREAMS`] of them, and its places among its user's watches) end within a minute and
/// a half instead of when their timeout passes.
const PING_INTERVAL: Duration = Duration::from_secs(60);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of a response HTTP/2 buffers per stream before waiting for the client (hyper's
/// default is 400 KiB): a watch has at most a few events queued, and with [`MAX_STREAMS`]
/// streams a slow reader could otherwise pin 100 MiB.
const STREAM_SEND_BUFFER: usize = 64 * 1024;
/// What a client may send before the server reads it, per stream and per connection
/// (HTTP/2 flow control; hyper's default is 1 MiB each). A request body (3 MiB at most) is
/// read as it arrives, so this only bounds what a client can park in the server's memory.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// ALPN: HTTP/2 first, so clients that speak both use it.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// What handlers share. Held in an `Arc` by every connection.
pub struct Api {
    pub registry: Registry,
    pub feed: Feed,
    /// The CA bundle served at `/cacerts` (its hash is in the token).
    pub ca_pem: String,
    /// `host:port` clients should use, for `/api` discovery.
    pub server_address: String,
    /// Set once this server's node is registered.
    pub node_registered: AtomicBool,
    /// Flips to `true` when the server begins shutting down.
    pub shutdown: signal::Receiver<bool>,
    pub joiner: crate::bootstrap::join::Joiner,
    /// How often watches that allow bookmarks get one (`--watch-bookmark-interval`).
    pub bookmark_interval: std::time::Duration,
    /// The node tunnels, wired in by the server.
    pub tunnels: Arc<dyn features::NodeTunnels>,
    /// The virtual IP's load balancer's figures, while this server runs it.
    pub lb_stats: std::sync::Mutex<Option<Arc<dyn features::Metrics>>>,
    /// Bearer tokens, impersonation and RBAC.
    pub access: access::Access,
    /// What `/metrics` shows; its request instruments are updated by [`routes::handle`].
    pub metrics: metrics::Metrics,
    /// `--max-requests-inflight`, `--max-mutating-requests-inflight`.
    pub inflight: inflight::Limits,
}

impl Api {
    /// Ok when this server can serve the API; otherwise what is missing, for `/readyz` (which
    /// answers anyone: the datastore's reason names no endpoint, see `datastore::health`).
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(why) = self.datastore_down() {
            return Err(format!("datastore failed: {why}"));
        }
        if !self.node_registered.load(Ordering::Relaxed) {
            return Err("node not registered yet".into());
        }
        if !self.access.synced() {
            return Err("authorization cache not loaded yet".into());
        }
        Ok(())
    }

    /// Why the datastore counts as down, and since when; `None` while it answers.
    pub fn datastore_down(&self) -> Option<String> {
        self.registry.store().health().down_reason()
    }
}

/// What the listener serves once the cluster data is open.
pub struct Serving {
    pub tls: TlsAcceptor,
    pub api: Arc<Api>,
}

/// What the listener answers with, published by the server as it starts.
#[derive(Clone)]
pub enum Phase {
    /// Not serving the API yet; why (shown by `/readyz`), e.g. the last datastore error.
    Starting(Arc<str>),
    Serving(Arc<Serving>),
}

/// The listener. Until [`Phase::Serving`] is published it answers with a temporary
/// self-signed certificate: `/livez` is ok, `/readyz` and everything else say what the server
/// is waiting for (so a board whose database is down says why instead of refusing connections).
pub struct Server {
    listener: TcpListener,
    starting_tls: TlsAcceptor,
    phase: signal::Receiver<Phase>,
}

// === impl Server ===

impl Server {
    /// `share_port`: the virtual IP's load balancer will listen on the same port (on the
    /// VIP only); SO_REUSEPORT lets both sockets exist, and the kernel gives connections for
    /// the VIP to the more specific one.
    pub async fn bind(
        addr: SocketAddr,
        share_port: bool,
        phase: signal::Receiver<Phase>,
    ) -> Result<Server, Error> {
        let bind = || -> std::io::Result<TcpListener> {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            if share_port {
                socket.set_reuseport(true)?;
            }
            socket.bind(addr)?;
            socket.listen(1024)
        };
        let listener = bind().map_err(|source| Error::Bind { addr, source })?;
        let starting_tls = TlsAcceptor::from(Arc::new(starting_tls_config()?));
        Ok(Server {
            listener,
            starting_tls,
            phase,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` flips to true, then drains.
    pub async fn run(self, mut stop: signal::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
        let shares = Arc::new(Shares::new());
        let mut conns = JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stopped(&mut stop) => break,
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            // Reap finished connections so the set stays as small as the open count.
            while conns.try_join_next().is_some() {}
            let phase = self.phase.borrow().clone();
            let tls = match &phase {
                Phase::Serving(s) => s.tls.clone(),
                Phase::Starting(_) => self.starting_tls.clone(),
            };
            // At the bound, a clear answer at once rather than a client left hanging in the
            // accept queue until its TLS handshake times out.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                match refusing.clone().try_acquire_owned() {
                    Ok(place) => {
                        conns.spawn(async move {
                            refuse_full(tls, tcp).await;
                            drop(place);
                        });
                    }
                    // Refusals are bounded too: beyond them the connection is just closed.
                    Err(_) => drop(tcp),
                }
                continue;
            };
            let handshake = shares.handshakes.begin(peer.ip(), PER_SOURCE_HANDSHAKES);
            let slot = Slot {
                permit,
                handshake,
                shares: shares.clone(),
            };
            let stop = stop.clone();
            conns.spawn(tracing::Instrument::instrument(
                serve_connection(tls, tcp, peer, phase, stop, slot),
                tracing::debug_span!("conn", %peer),
            ));
        }
        drop(self.listener);
        tracing::info!(
            open = conns.len(),
            "API stopped accepting; draining connections"
        );
        if tokio::time::timeout(DRAIN_GRACE, async {
            while conns.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                open = conns.len(),
                "grace period over; closing remaining connections"
            );
            conns.abort_all();
        }
    }
}

/// What one connection holds while it is open.
struct Slot {
    /// Its place among [`MAX_CONNECTIONS`]; given back once an anonymous connection holds an
    /// anonymous place instead.
    permit: tokio::sync::OwnedSemaphorePermit,
    /// Its place among its source's handshakes, released once the handshake is over.
    handshake: Handshake,
    shares: Arc<Shares>,
}

/// The anonymous pool and the per-source counts, shared by all connections of a listener.
struct Shares {
    anonymous: Arc<Semaphore>,
    handshakes: Handshakes,
    anonymous_by_source: SourceCounts,
}

impl Shares {
    fn new() -> Shares {
        Shares {
            anonymous: Arc::new(Semaphore::new(MAX_ANONYMOUS)),
            handshakes: Handshakes::default(),
            anonymous_by_source: SourceCounts::default(),
        }
    }
}

/// Open connections per source address. Entries go when their count reaches zero, so the map
/// is bounded by the open connections.
#[derive(Default, Clone)]
struct SourceCounts(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One counted connection; uncounted on drop.
struct SourceGuard {
    counts: SourceCounts,
    source: std::net::IpAddr,
}

impl SourceCounts {
    /// Counts a connection from `source` unless it already has `cap` (at least 1).
    fn enter(&self, source: std::net::IpAddr, cap: usize) -> Option<SourceGuard> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(source).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            counts: self.clone(),
            source,
        })
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// TLS handshakes in progress per source address, oldest first. Entries go when their list
/// empties, so the map is bounded by the open connections.
#[derive(Default, Clone)]
struct Handshakes(Arc<std::sync::Mutex<HandshakeTable>>);

/// The last handshake id handed out, and each source's handshakes (id, how to end it).
type HandshakeTable = (
    u64,
    std::collections::HashMap<
        std::net::IpAddr,
        std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>,
    >,
);

/// One handshake in progress; `ended` fires if a newer one from the same source ended it.
struct Handshake {
    handshakes: Handshakes,
    source: std::net::IpAddr,
    id: u64,
    ended: tokio::sync::oneshot::Receiver<()>,
}

impl Handshakes {
    /// Registers a handshake from `source`, ending its oldest one if it already has `cap`.
    fn begin(&self, source: std::net::IpAddr, cap: usize) -> Handshake {
        let (tx, ended) = tokio::sync::oneshot::channel();
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        let id = state.0;
        let list = state.1.entry(source).or_default();
        while list.len() >= cap.max(1) {
            if let Some((_, oldest)) = list.pop_front() {
                let _ = oldest.send(());
            }
        }
        list.push_back((id, tx));
        Handshake {
            handshakes: self.clone(),
            source,
            id,
            ended,
        }
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut state = self.handshakes.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = state.1.get_mut(&self.source) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                state.1.remove(&self.source);
            }
        }
    }
}

fn refused(peer: SocketAddr, why: &str) {
    REFUSED.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, reason = why, "connection refused");
}

/// Serves one connection in the phase the server was in when it was accepted.
async fn serve_connection(
    tls: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    phase: Phase,
    stop: signal::Receiver<bool>,
    slot: Slot,
) {
    let _ = tcp.set_nodelay(true);
    let Slot {
        permit,
        mut handshake,
        shares,
    } = slot;
    let accepted = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)) => r,
        _ = &mut handshake.ended => {
            refused(peer, "the oldest of too many TLS handshakes from this address");
            return;
        }
    };
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    drop(handshake);
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| auth::Identity::from_certificate(c.as_ref()))
        .unwrap_or(auth::Identity::Anonymous);
    // Anonymous connections move to their own pool, so they never hold the places of
    // authenticated clients; beyond their share they are answered 503 at once.
    let mut held = (Some(permit), None, None);
    if identity == auth::Identity::Anonymous {
        let place = shares.anonymous.clone().try_acquire_owned().ok();
        let counted = place
            .is_some()
            .then(|| {
                shares
                    .anonymous_by_source
                    .enter(peer.ip(), PER_SOURCE_ANONYMOUS)
            })
            .flatten();
        match (place, counted) {
            (Some(place), Some(counted)) => held = (None, Some(place), Some(counted)),
            _ => {
                refused(peer, "too many connections without a client certificate");
                answer_unavailable(
                    stream,
                    "too many connections without a client certificate from this address, or from all; retry shortly",
                    Duration::from_secs(1),
                )
                .await;
                return;
            }
        }
    }
    let _held = held;
    let caller = Arc::new(routes::Caller {
        identity,
        source: peer.ip(),
    });
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(stream, phase, caller, stop).await
    } else {
        serve_h1(stream, phase, caller, stop).await
    }
}

/// Answers one request with the API (or with the starting phase's answers). The future is
/// boxed: the request handler's state is large, and HTTP/2 keeps a stream's task (its
/// allocation sized for this future) for as long as the response lasts — a watch's whole
/// life — while the box is freed as soon as the response has begun.
fn answer(
    phase: &Phase,
    caller: &Arc<routes::Caller>,
    req: hyper::Request<hyper::body::Incoming>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<hyper::Response<Body>, Infallible>> + Send>> {
    let phase = phase.clone();
    let caller = caller.clone();
    Box::pin(async move {
        Ok::<_, Infallible>(match phase {
            Phase::Serving(s) => routes::handle(s.api.clone(), &caller, req).await,
            Phase::Starting(why) => routes::starting(&req, &why),
        })
    })
}

/// HTTP/1.1: one request at a time; upgrades (tunnels, exec, port-forward) leave the
/// connection, which ends when they do.
async fn serve_h1(
    stream: Tls,
    phase: Phase,
    caller: Arc<routes::Caller>,
    mut stop: signal::Receiver<bool>,
) {
    let service = service_fn(move |req| answer(&phase, &caller, req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        // Tunnels leave as upgrades; the connection (and its permit) ends when one does.
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r { tracing::debug!(error = %e, "connection ended with an error"); }
            return;
        }
        _ = stopped(&mut stop) => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error during shutdown");
    }
}

/// HTTP/2: up to [`MAX_STREAMS`] requests at once, each answered on its own task; the
/// connection ends after [`IDLE_TIMEOUT`] without one, on shutdown (GOAWAY, then the open
/// streams finish), or when the client goes.
async fn serve_h2(
    stream: Tls,
    phase: Phase,
    caller: Arc<routes::Caller>,
    mut stop: signal::Receiver<bool>,
) {
    let (streams, mut idle) = signal::channel(Streams::default());
    let streams = Arc::new(streams);
    let service = service_fn(move |req| {
        let busy = Busy::enter(&streams);
        let answer = answer(&phase, &caller, req);
        async move {
            let resp = answer.await?;
            // The stream is open until its response body is done or dropped.
            Ok::<_, Infallible>(resp.map(|body| {
                BodyExt::boxed(BodyExt::map_frame(body, move |frame| {
                    let _ = &busy;
                    frame
                }))
            }))
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(Spawn(tracing::Span::current()))
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buf_size(STREAM_SEND_BUFFER)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r { tracing::debug!(error = %e, "connection ended with an error"); }
            return;
        }
        _ = stopped(&mut stop) => conn.as_mut().graceful_shutdown(),
        _ = idle_for(&mut idle, IDLE_TIMEOUT) => {
            tracing::debug!("closing an idle HTTP/2 connection");
            conn.as_mut().graceful_shutdown();
        }
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error while closing");
    }
}

/// The server side of a TLS connection.
type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Resolves once no stream has been open for `limit`.
async fn idle_for(streams: &mut signal::Receiver<Streams>, limit: Duration) {
    loop {
        // Err: the service is gone, so is the connection; there is nothing to wait for.
        let quiet = streams.wait_for(|s| s.open == 0).await.map(|s| s.started);
        let Ok(since) = quiet else {
            return std::future::pending().await;
        };
        // A stream that opened, even one already over, starts the count again.
        let woken = tokio::time::timeout(
            limit,
            streams.wait_for(|s| s.open > 0 || s.started != since),
        )
        .await
        .map(|r| r.is_ok());
        match woken {
            Err(_) => return,
            Ok(false) => return std::future::pending().await,
            Ok(true) => {}
        }
    }
}

/// An HTTP/2 connection's streams, for [`idle_for`].
#[derive(Debug, Default, Clone, Copy)]
struct Streams {
    /// Open now.
    open: usize,
    /// Opened since the connection began, so a stream that came and went between two looks
    /// is still seen.
    started: u64,
}

/// One HTTP/2 stream open, from its request to the end of its response.
struct Busy(Arc<signal::Sender<Streams>>);

impl Busy {
    fn enter(streams: &Arc<signal::Sender<Streams>>) -> Busy {
        streams.send_modify(|s| {
            s.open += 1;
            s.started += 1;
        });
        Busy(streams.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|s| s.open = s.open.saturating_sub(1));
    }
}

/// Runs an HTTP/2 connection's stream tasks on tokio, inside the connection's span.
#[derive(Clone)]
struct Spawn(tracing::Span);

impl<F> hyper::rt::Executor<F> for Spawn
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(tracing::Instrument::instrument(fut, self.0.clone()));
    }
}

/// Completes the handshake only to say the server is full: 503 with `Retry-After`, which
/// kubectl and client-go retry.
async fn refuse_full(tls: TlsAcceptor, tcp: tokio::net::TcpStream) {
    let started = tokio::time::Instant::now();
    let Ok(Ok(stream)) = tokio::time::timeout(REFUSAL_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await
    else {
        return;
    };
    let why = format!(
        "the API server has all the connections it serves ({MAX_CONNECTIONS}) open; retry shortly"
    );
    let left = REFUSAL_HANDSHAKE_TIMEOUT.saturating_sub(started.elapsed());
    answer_unavailable(stream, &why, left.max(Duration::from_millis(500))).await;
}

/// Answers the connection's first request with 503, `Retry-After: 1` and a `Status` saying
/// `why`, then closes it; in the protocol its handshake chose (an HTTP/2 client cannot read
/// HTTP/1.1 bytes), for at most `limit`.
async fn answer_unavailable(mut stream: Tls, why: &str, limit: Duration) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let _ = tokio::time::timeout(limit, async {
        if !h2 {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(&unavailable(why)).await;
            let _ = stream.shutdown().await;
            return;
        }
        let answered = Arc::new(tokio::sync::Notify::new());
        let service = {
            let (answered, body) = (answered.clone(), unavailable_status(why));
            service_fn(move |_req| {
                // A permit is kept if nobody waits yet, so the notice cannot be missed.
                answered.notify_one();
                let mut resp = hyper::Response::new(BodyExt::boxed(http_body_util::Full::new(
                    Bytes::from(body.clone()),
                )));
                *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                let headers = resp.headers_mut();
                headers.insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                headers.insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from_static("1"),
                );
                async move { Ok::<_, Infallible>(resp) }
            })
        };
        let conn = hyper::server::conn::http2::Builder::new(Spawn(tracing::Span::current()))
            .timer(TokioTimer::new())
            .max_concurrent_streams(4)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = answered.notified() => conn.as_mut().graceful_shutdown(),
        }
        let _ = conn.await;
    })
    .await;
}

/// A whole HTTP/1.1 503 answer, written straight to the stream.
fn unavailable(why: &str) -> Vec<u8> {
    let body = unavailable_status(why);
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `Status` of a 503, which kubectl and agents can read.
fn unavailable_status(why: &str) -> String {
    status::ApiError::Unavailable(why.into())
        .to_status()
        .to_string()
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut signal::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A throwaway self-signed certificate for the starting phase (no CA exists yet, or the
/// datastore holding it is unreachable). Clients cannot verify it, which is right: nothing
/// but health is served with it.
fn starting_tls_config() -> Result<rustls::ServerConfig, Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let cert = rcgen::CertificateParams::new(vec!["keelson-starting".to_owned()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| Error::Tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// TLS for the API: the serving certificate, and client certificates verified against the
/// cluster CA when offered (anonymous clients may only reach the public endpoints).
pub fn tls_config(
    ca: &ClusterCa,
    serving: &Issued,
) -> Result<(rustls::ServerConfig, Arc<ServingCert>), Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = ca.cert_der().map_err(|e| Error::Tls(e.to_string()))?;
    roots
        .add(ca_der.into())
        .map_err(|e| Error::Tls(e.to_string()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| Error::Tls(e.to_string()))?;
    let cert = Arc::new(ServingCert {
        current: std::sync::RwLock::new(certified_key(&provider, ca, serving)?),
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert.clone());
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok((config, cert))
}

/// The API's serving certificate, replaced in place when it is renewed: new handshakes get
/// the new one, connections already open keep theirs, and the listener never restarts.
#[derive(Debug)]
pub struct ServingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServingCert {
    /// From the next handshake on, serves `serving` (issued by `ca`).
    pub fn replace(&self, ca: &ClusterCa, serving: &Issued) -> Result<(), Error> {
        let key = certified_key(&self.provider, ca, serving)?;
        // A poisoned lock only means a panic elsewhere while replacing: the value is whole.
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        *slot = key;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The serving certificate followed by the CA (clients that pinned only the CA still build
/// the chain), with its key.
fn certified_key(
    provider: &rustls::crypto::CryptoProvider,
    ca: &ClusterCa,
    serving: &Issued,
) -> Result<Arc<rustls::sign::CertifiedKey>, Error> {
    let ca_der = ca.cert_der().map_err(|e| Error::Tls(e.to_string()))?;
    let cert = pem_to_der(&serving.cert_pem)
        .ok_or_else(|| Error::Tls("serving certificate is not PEM".into()))?;
    let key =
        pem_to_der(&serving.key_pem).ok_or_else(|| Error::Tls("serving key is not PEM".into()))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.into(), ca_der.into()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_idle_only_after_its_last_stream_ends() {
        let (open, mut idle) = signal::channel(Streams::default());
        let open = Arc::new(open);
        let limit = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        let busy = Busy::enter(&open);
        let second = Busy::enter(&open);
        let waiting = tokio::spawn(async move {
            idle_for(&mut idle, limit).await;
            tokio::time::Instant::now()
        });
        // Long past the limit, with streams open, it is not idle.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "idle with two streams open");
        drop(busy);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "idle with a stream open");
        // A stream that opens and ends inside the limit starts the count again.
        drop(second);
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(Busy::enter(&open));
        let idle_at = waiting.await.expect("the waiter");
        assert_eq!(
            idle_at - started,
            Duration::from_secs(125) + limit,
            "idle {limit:?} after the last stream ended"
        );
    }

    #[test]
    fn http2_is_offered_first_and_http1_still_offered_for_upgrades() {
        assert_eq!(ALPN, [&b"h2"[..], &b"http/1.1"[..]]);
        // The starting phase answers health only, over HTTP/1.1.
        let starting = starting_tls_config().expect("a starting config");
        assert_eq!(starting.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
