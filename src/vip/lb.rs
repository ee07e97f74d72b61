//! The layer-4 (TCP) load balancer the virtual IP's holder runs in front of every server.
//!
//! Owns one listening socket, the client connections accepted on it and one health checker
//! per backend. It forwards bytes and nothing else: TLS passes through untouched, so clients
//! still verify the servers' certificates and present their own to them. Which backends exist
//! is the caller's business: a `watch` of `host:port` strings that may change at any time.
//!
//! Invariants:
//! - A new client goes to a backend whose checks say it is up: the one with the fewest open
//!   connections, ties taken in turn. Only while *no* backend is up does one that has not
//!   finished its first check count: at failover every backend is unchecked, and refusing
//!   clients during that first check would lengthen the outage for nothing.
//! - At most [`Config::max_connections`] clients are open. The permit is taken before
//!   `accept`, so further clients wait in the kernel's accept queue, not in our memory.
//! - A connection that moves no bytes in either direction for [`Config::idle_timeout`] is
//!   closed. Idle connections hold no copy buffer: one exists only while bytes flow.
//! - Once `stop` resolves nothing more is accepted; open connections get
//!   [`Config::drain_grace`], then close.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::agent::https;
use crate::apiserver::metrics;
use crate::cli::LbArgs;

/// Bytes one direction of one connection copies at a time; allocated only while bytes flow
/// (see [`pump`]). 16 KiB is one full TLS record and HAProxy's default `bufsize`. Measured
/// on loopback (2 cores, one stream): 8 KiB ≈ 650 MB/s, 16 KiB ≈ 0.95× HAProxy (≈ 1.1–1.2
/// GB/s), 32 KiB +15%, 64 KiB +25%. A board's link (1 Gbit/s ≈ 118 MB/s) is ten times below
/// the 16 KiB figure, so larger buffers would only cost memory during bursts.
const BUFFER: usize = 16 * 1024;
/// Clients refused by a backend are tried on this many backends in all before giving up.
const CONNECT_ATTEMPTS: usize = 3;
/// A backend that has not completed the TCP handshake by then counts as refusing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pending connections the kernel queues for us once the connection bound holds `accept`.
const LISTEN_BACKLOG: u32 = 1024;
/// At most one warning per this period for each recurring condition (bound hit, no backend).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How the balancer runs. [`LoadBalancer::bind`] rejects zero bounds and periods.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Time between two health checks of one backend.
    pub check_interval: Duration,
    /// Consecutive good checks that bring a down backend up.
    pub rise: u32,
    /// Consecutive failed checks that take an up backend down.
    pub fall: u32,
    /// A check that has not answered by then failed.
    pub check_timeout: Duration,
    /// How long open connections may go on once `stop` resolves.
    pub drain_grace: Duration,
}

impl Default for Config {
    /// HAProxy's check defaults (`inter 2s rise 2 fall 3`); the API's port and drain grace.
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 6443)),
            max_connections: 4096,
            idle_timeout: Duration::from_secs(3600),
            check_interval: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            check_timeout: Duration::from_secs(1),
            drain_grace: crate::apiserver::DRAIN_GRACE,
        }
    }
}

/// How a backend's health is checked.
pub enum Check {
    /// The backend accepts a TCP connection.
    Tcp,
    /// `GET /readyz` over TLS (verified with this configuration) answers 200.
    Readyz(Arc<rustls::ClientConfig>),
}

/// Why the balancer cannot start. `Bind` may succeed later (the address may not be on an
/// interface yet, or the port still taken); the others are bad configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("load balancer configuration: {field} must be greater than zero")]
    Zero { field: &'static str },
    /// Every bad `keelson lb` flag, one per line.
    #[error("bad flags for `keelson lb`:\n  {}", .0.join("\n  "))]
    Flags(Vec<String>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one backend's checks have shown; [`Stats::backends`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Added, first check not finished. Gets clients only while no backend is up.
    Unchecked,
    /// Its checks pass; gets new clients.
    Up,
    /// Its checks fail; gets no new clients (open ones go on).
    Down,
}

/// One backend as `/metrics` and tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStats {
    pub addr: String,
    pub status: Status,
    /// Client connections forwarded to it now.
    pub active: u64,
    /// Client connections forwarded to it since it was added.
    pub total: u64,
}

/// A handle on a running balancer's counters and backends; cheap to clone, valid after the
/// balancer ends (then it shows the last state).
#[derive(Clone)]
pub struct Stats(Arc<Shared>);

/// The listening socket, bound; [`LoadBalancer::run`] serves on it.
pub struct LoadBalancer {
    /// Dropped as soon as `stop` resolves, so new clients are refused from then on.
    listener: TcpListener,
    cfg: Config,
    shared: Arc<Shared>,
}

// === impl LoadBalancer ===

impl LoadBalancer {
    /// Binds `cfg.listen` with SO_REUSEADDR and SO_REUSEPORT: the API server may already
    /// listen on the same port on the wildcard address (it sets SO_REUSEPORT too, see
    /// [`crate::apiserver::Server::bind`]). Linux then hands connections for the exact
    /// (virtual) address to this more specific socket and everything else to the API's, so
    /// the two never share a connection.
    pub async fn bind(cfg: Config) -> Result<LoadBalancer> {
        for (field, zero) in [
            ("max_connections", cfg.max_connections == 0),
            ("idle_timeout", cfg.idle_timeout.is_zero()),
            ("check_interval", cfg.check_interval.is_zero()),
            ("check_timeout", cfg.check_timeout.is_zero()),
            ("rise", cfg.rise == 0),
            ("fall", cfg.fall == 0),
        ] {
            if zero {
                return Err(Error::Zero { field });
            }
        }
        let addr = cfg.listen;
        let bind = || -> io::Result<TcpListener> {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        };
        let listener = bind().map_err(|source| Error::Bind { addr, source })?;
        Ok(LoadBalancer {
            listener,
            cfg,
            shared: Arc::new(Shared::default()),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn stats(&self) -> Stats {
        Stats(self.shared.clone())
    }

    /// Serves until `stop` resolves, then drains. Backends follow `backends` as it changes
    /// (if its sender goes away, the last list stays).
    pub async fn run(
        self,
        mut backends: watch::Receiver<Vec<String>>,
        check: Check,
        stop: impl Future<Output = ()>,
    ) {
        let LoadBalancer {
            listener,
            cfg,
            shared,
        } = self;
        let mut checkers = Checkers {
            running: HashMap::new(),
            check: Arc::new(check),
            cfg: cfg.clone(),
        };
        shared.set_backends(&backends.borrow_and_update(), &mut checkers);
        let permits = Arc::new(Semaphore::new(cfg.max_connections));
        let mut permit: Option<OwnedSemaphorePermit> = None;
        // Set while we wait for a permit, so one wait counts (and warns) once.
        let mut full = false;
        let mut watching = true;
        let mut conns = JoinSet::new();
        tokio::pin!(stop);
        loop {
            if permit.is_none() {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => {
                        permit = Some(p);
                        full = false;
                    }
                    Err(_) if !full => {
                        full = true;
                        shared.limit_reached.fetch_add(1, Relaxed);
                        if shared.limit_warning.due() {
                            tracing::warn!(
                                limit = cfg.max_connections,
                                "load balancer connection limit reached; new clients wait in the kernel's accept queue"
                            );
                        }
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                // Take the permit before accepting, so the bound also holds the accept queue back.
                p = permits.clone().acquire_owned(), if permit.is_none() => {
                    // The semaphore is never closed, so this is always a permit.
                    permit = p.ok();
                    full = false;
                }
                r = listener.accept(), if permit.is_some() => match r {
                    Ok((client, peer)) => {
                        shared.accepted.fetch_add(1, Relaxed);
                        let permit = permit.take();
                        let shared = shared.clone();
                        let idle = cfg.idle_timeout;
                        conns.spawn(
                            async move {
                                serve(client, &shared, idle).await;
                                drop(permit);
                            }
                            .instrument(tracing::debug_span!("lb_conn", %peer)),
                        );
                    }
                    Err(e) => {
                        // Out of file descriptors, most likely; give closing ones a moment.
                        tracing::warn!(error = %e, "load balancer accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                changed = backends.changed(), if watching => match changed {
                    Ok(()) => shared.set_backends(&backends.borrow_and_update(), &mut checkers),
                    Err(_) => watching = false,
                },
                // Reap finished connections so the set stays as small as the open count.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        drop(checkers);
        tracing::info!(
            open = conns.len(),
            "load balancer stopped accepting; draining connections"
        );
        let drained = tokio::time::timeout(cfg.drain_grace, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!(
                open = conns.len(),
                "load balancer grace period over; closing remaining connections"
            );
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }
    }
}

// === impl Stats ===

impl Stats {
    /// Client connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.0.accepted.load(Relaxed)
    }

    /// Times the connection bound was reached (each wait for a free slot counts once).
    pub fn limit_reached(&self) -> u64 {
        self.0.limit_reached.load(Relaxed)
    }

    /// Clients closed because no backend was up or every one tried refused them.
    pub fn unserved(&self) -> u64 {
        self.0.unserved.load(Relaxed)
    }

    /// The current backends, in address order.
    pub fn backends(&self) -> Vec<BackendStats> {
        self.0
            .pool()
            .backends
            .iter()
            .map(|b| BackendStats {
                addr: b.addr.clone(),
                status: b.status(),
                active: b.active.load(Relaxed),
                total: b.total.load(Relaxed),
            })
            .collect()
    }

    /// Writes these figures to `/metrics`.
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "for the server's /metrics, which is wired up separately"
        )
    )]
    pub fn encode_metrics(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        metrics::counter(
            enc,
            "keelson_lb_connections",
            "Client connections the load balancer accepted.",
            self.accepted(),
        )?;
        metrics::counter(
            enc,
            "keelson_lb_limit_reached",
            "Times the load balancer held its most connections and clients had to wait.",
            self.limit_reached(),
        )?;
        metrics::counter(
            enc,
            "keelson_lb_unserved",
            "Clients closed because no backend could take them.",
            self.unserved(),
        )?;
        let backends = self.backends();
        type Value = fn(&BackendStats) -> u64;
        // Name (a counter's without `_total`), type, help, and the figure for one backend.
        let families: [(&str, MetricType, &str, Value); 3] = [
            (
                "keelson_lb_backend_up",
                MetricType::Gauge,
                "Whether the backend's health checks pass.",
                |b| u64::from(b.status == Status::Up),
            ),
            (
                "keelson_lb_backend_connections",
                MetricType::Gauge,
                "Client connections forwarded to the backend now.",
                |b| b.active,
            ),
            (
                "keelson_lb_backend_connections",
                MetricType::Counter,
                "Client connections forwarded to the backend.",
                |b| b.total,
            ),
        ];
        for (name, kind, help, value) in families {
            let mut family = enc.encode_descriptor(name, help, None, kind)?;
            for b in &backends {
                let labels = [("backend", b.addr.as_str())];
                let metric = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(value(b)).encode(metric)?,
                    _ => ConstGauge::new(metrics::saturating(value(b))).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}

/// Runs `keelson lb`: the balancer alone, in front of fixed backends, until `stop` flips.
/// For benchmarks and for trying the balancer out without a cluster.
pub async fn standalone(args: LbArgs, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let (cfg, check, backends) = parse_args(&args)?;
    let lb = LoadBalancer::bind(cfg).await?;
    let stats = lb.stats();
    tracing::info!(
        listen = ?lb.local_addr(),
        backends = ?backends,
        check = %args.check,
        "load balancer listening"
    );
    // Held until the balancer ends, so the backend list stays as given.
    let (_backends, list) = watch::channel(backends);
    lb.run(list, check, async move {
        crate::apiserver::stopped(&mut stop).await
    })
    .await;
    // A summary for benchmarks and trials: did the clients spread as expected?
    let spread: Vec<(String, u64)> = stats
        .backends()
        .into_iter()
        .map(|b| (b.addr, b.total))
        .collect();
    tracing::info!(
        accepted = stats.accepted(),
        limit_reached = stats.limit_reached(),
        unserved = stats.unserved(),
        ?spread,
        "load balancer stopped"
    );
    Ok(())
}

/// Turns `keelson lb`'s flags into a configuration, reporting every bad one at once.
fn parse_args(args: &LbArgs) -> Result<(Config, Check, Vec<String>)> {
    let mut bad = Vec::new();
    let listen = args.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        bad.push(format!(
            "--listen {:?} is not an address:port (e.g. 127.0.0.1:7443)",
            args.listen
        ));
        Config::default().listen
    });
    for b in &args.backend {
        if !is_host_port(b) {
            bad.push(format!(
                "--backend {b:?} is not host:port (e.g. 10.0.0.2:6443)"
            ));
        }
    }
    let idle_timeout = match crate::config::parse_duration("--idle-timeout", &args.idle_timeout) {
        Ok(d) if d.is_zero() => {
            bad.push("--idle-timeout must be greater than zero".into());
            d
        }
        Ok(d) => d,
        Err(e) => {
            bad.push(e);
            Duration::ZERO
        }
    };
    if args.max_connections == 0 {
        bad.push("--max-connections must be at least 1".into());
    }
    let check = match (args.check.as_str(), &args.ca_file) {
        ("tcp", None) => Some(Check::Tcp),
        ("tcp", Some(_)) => {
            bad.push("--ca-file is only used with --check readyz".into());
            None
        }
        ("readyz", None) => {
            bad.push("--check readyz needs --ca-file (the cluster CA bundle)".into());
            None
        }
        ("readyz", Some(path)) => match readyz_tls(path) {
            Ok(tls) => {
                for b in &args.backend {
                    if is_host_port(b)
                        && let Err(e) = https::Target::new(b, tls.clone())
                    {
                        bad.push(format!("--backend {b:?}: {e}"));
                    }
                }
                Some(Check::Readyz(tls))
            }
            Err(e) => {
                bad.push(e);
                None
            }
        },
        (other, _) => {
            bad.push(format!("--check {other:?} is not \"tcp\" or \"readyz\""));
            None
        }
    };
    match check {
        Some(check) if bad.is_empty() => Ok((
            Config {
                listen,
                max_connections: args.max_connections,
                idle_timeout,
                ..Config::default()
            },
            check,
            args.backend.clone(),
        )),
        _ => Err(Error::Flags(bad)),
    }
}

fn readyz_tls(path: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
    https::tls_config(&pem, None).map_err(|e| format!("--ca-file {}: {e}", path.display()))
}

/// `host:port` or `[v6]:port`, with a nonzero port.
fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
        }
        None => false,
    }
}

// === Shared state ===

/// What the accept loop, the connections, the checkers and [`Stats`] share.
#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    limit_reached: AtomicU64,
    unserved: AtomicU64,
    /// Only the accept loop changes the backend list; connections pick from it. A std mutex:
    /// every critical section is a short scan with no `.await`.
    pool: Mutex<Pool>,
    limit_warning: Every,
    unserved_warning: Every,
}

/// The backends that may get new clients.
#[derive(Default)]
struct Pool {
    /// Sorted by address, no duplicates. A removed backend leaves this list at once; its
    /// open connections keep it alive (through their [`Lease`]) until they end.
    backends: Vec<Arc<Backend>>,
    /// Where the next tie-break scan starts: one past the last backend picked, so equal
    /// backends take new clients in turn.
    next: usize,
}

struct Backend {
    addr: String,
    /// A [`Status`]; written by its checker only.
    status: AtomicU8,
    /// Clients forwarded (or being connected) to it now. Raised under the pool lock when
    /// picked, so concurrent picks see each other; lowered when the [`Lease`] drops.
    active: AtomicU64,
    /// Connections established to it since it was added.
    total: AtomicU64,
}

/// One client's claim on a backend's `active` count; dropping it gives the claim back.
struct Lease(Arc<Backend>);

// === impl Shared ===

impl Shared {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        // Every change to the pool is complete before the lock is released, so a poisoned
        // lock still guards a consistent list.
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the pool hold exactly `addrs`: new ones start unchecked with a checker of their
    /// own, removed ones lose their checker and get no new clients.
    fn set_backends(&self, addrs: &[String], checkers: &mut Checkers) {
        let mut wanted: Vec<&str> = addrs
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut pool = self.pool();
        let mut old: HashMap<String, Arc<Backend>> = pool
            .backends
            .drain(..)
            .map(|b| (b.addr.clone(), b))
            .collect();
        for addr in wanted {
            let backend = match old.remove(addr) {
                Some(b) => b,
                None => {
                    let b = Arc::new(Backend::new(addr));
                    checkers.start(b.clone());
                    tracing::info!(backend = addr, "load balancer backend added");
                    b
                }
            };
            pool.backends.push(backend);
        }
        for addr in old.keys() {
            checkers.running.remove(addr);
            tracing::info!(backend = %addr, "load balancer backend removed");
        }
        pool.next %= pool.backends.len().max(1);
    }

    /// The backend a new client should go to: among those eligible and not in `skip`, the
    /// one with the fewest open connections, ties taken in turn.
    fn pick(&self, skip: &[Arc<Backend>]) -> Option<Lease> {
        let mut pool = self.pool();
        let any_up = pool.backends.iter().any(|b| b.status() == Status::Up);
        let eligible = |b: &Arc<Backend>| {
            let wanted = if any_up {
                Status::Up
            } else {
                Status::Unchecked
            };
            b.status() == wanted && !skip.iter().any(|s| Arc::ptr_eq(s, b))
        };
        let n = pool.backends.len();
        let mut best: Option<(usize, u64)> = None;
        for (i, b) in pool
            .backends
            .iter()
            .enumerate()
            .cycle()
            .skip(pool.next)
            .take(n)
        {
            let active = b.active.load(Relaxed);
            if eligible(b) && best.is_none_or(|(_, fewest)| active < fewest) {
                best = Some((i, active));
            }
        }
        let (i, _) = best?;
        pool.next = (i + 1) % n;
        let backend = pool.backends.get(i)?.clone();
        backend.active.fetch_add(1, Relaxed);
        Some(Lease(backend))
    }
}

// === impl Backend ===

impl Backend {
    fn new(addr: &str) -> Backend {
        Backend {
            addr: addr.to_owned(),
            status: AtomicU8::new(Status::Unchecked as u8),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn status(&self) -> Status {
        match self.status.load(Relaxed) {
            s if s == Status::Up as u8 => Status::Up,
            s if s == Status::Down as u8 => Status::Down,
            _ => Status::Unchecked,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

// === Connections ===

/// How a forwarded connection ended.
enum End {
    /// Both sides closed their sending half; bytes client → backend and back.
    Closed {
        up: u64,
        down: u64,
    },
    Idle,
    /// Reset or another socket error on either side.
    Failed(io::Error),
}

/// Forwards one client to a backend until either side is done, it idles out, or the
/// balancer's drain aborts it.
async fn serve(mut client: TcpStream, shared: &Shared, idle: Duration) {
    // Pure forwarding: the endpoints already decided when to send, Nagle would only delay.
    let _ = client.set_nodelay(true);
    let Some((mut backend, lease)) = connect(shared).await else {
        shared.unserved.fetch_add(1, Relaxed);
        if shared.unserved_warning.due() {
            tracing::warn!("load balancer has no backend to take a client; closing it");
        }
        return;
    };
    let backend_addr = lease.0.addr.as_str();
    match forward(&mut client, &mut backend, idle).await {
        End::Closed { up, down } => {
            tracing::debug!(
                backend = backend_addr,
                up,
                down,
                "load balancer connection closed"
            );
        }
        End::Idle => tracing::debug!(
            backend = backend_addr,
            "load balancer connection idle; closed"
        ),
        End::Failed(e) => {
            tracing::debug!(backend = backend_addr, error = %e, "load balancer connection failed");
        }
    }
}

/// Connects to the best backend; if it refuses, to the next best, [`CONNECT_ATTEMPTS`] in all.
async fn connect(shared: &Shared) -> Option<(TcpStream, Lease)> {
    let mut tried: Vec<Arc<Backend>> = Vec::with_capacity(CONNECT_ATTEMPTS);
    for _ in 0..CONNECT_ATTEMPTS {
        let lease = shared.pick(&tried)?;
        let addr = lease.0.addr.as_str();
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                lease.0.total.fetch_add(1, Relaxed);
                return Some((stream, lease));
            }
            Ok(Err(e)) => tracing::debug!(backend = addr, error = %e, "backend refused a client"),
            Err(_) => tracing::debug!(backend = addr, "backend connect timed out"),
        }
        tried.push(lease.0.clone());
    }
    None
}

/// Copies both ways until both sides have closed, either fails, or nothing moves for `idle`.
async fn forward(client: &mut TcpStream, backend: &mut TcpStream, idle: Duration) -> End {
    let activity = Activity::new();
    let (client_in, client_out) = client.split();
    let (backend_in, backend_out) = backend.split();
    let both = async {
        tokio::try_join!(
            pump(client_in, backend_out, &activity),
            pump(backend_in, client_out, &activity)
        )
    };
    tokio::pin!(both);
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            r = &mut both => return match r {
                Ok((up, down)) => End::Closed { up, down },
                Err(e) => End::Failed(e),
            },
            // Re-armed from the latest activity; fires at most once per idle period.
            _ = tokio::time::sleep_until(deadline) => {
                if activity.last() + idle <= Instant::now() {
                    return End::Idle;
                }
            }
        }
    }
}

/// Copies `from` → `to` until `from` ends, then ends `to`'s sending half, so the far side
/// sees the close the near side sent (half-closed connections keep working the other way).
///
/// Not `tokio::io::copy_bidirectional`: that keeps both of its buffers for the whole life
/// of the connection, and most connections through the VIP (agent tunnels, watches) sit
/// idle most of the time. Here a buffer exists only from "readable" until the socket has
/// nothing more to read: 1000 idle connections cost ≈ 2 MiB of RSS instead of ≈ 25 MiB
/// (`benches/lb.sh` and the same build with `copy_bidirectional_with_sizes`), at the same
/// throughput and latency.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    activity: &Activity,
) -> io::Result<u64> {
    let mut moved = 0u64;
    loop {
        // Not `readable()`: that ignores tokio's cooperative budget, and once the budget is
        // spent `read_now` finds nothing, so the loop would never give the thread back.
        std::future::poll_fn(|cx| from.as_ref().poll_read_ready(cx)).await?;
        let mut buf = Vec::with_capacity(BUFFER);
        // Drain what is there. A short read tells tokio the socket is empty, so the read
        // after it costs no system call: it finds no readiness and hands the buffer back.
        while let Some(n) = read_now(&mut from, &mut buf).await? {
            if n == 0 {
                // The peer may be gone already; then there is nobody to tell.
                let _ = to.shutdown().await;
                return Ok(moved);
            }
            activity.touch();
            to.write_all(&buf).await?;
            activity.touch();
            moved += n as u64;
            buf.clear();
        }
    }
}

/// Reads what `from` holds now into `buf`'s spare capacity (not zeroed); `None` if nothing
/// is there yet. Waits for nothing, so no buffer is held while the connection is quiet.
async fn read_now(from: &mut ReadHalf<'_>, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let read = from.read_buf(buf);
    tokio::pin!(read);
    std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Pending => Poll::Ready(Ok(None)),
        Poll::Ready(r) => Poll::Ready(r.map(Some)),
    })
    .await
}

/// When bytes last moved on a connection, either way. Both copy directions touch it; the
/// idle timer reads it. An atomic rather than a `Cell` only so the future stays `Send`.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Relaxed))
    }
}

// === Health checks ===

/// The checker tasks, one per backend in the pool. Dropping this (or removing an entry)
/// stops them.
struct Checkers {
    running: HashMap<String, AbortOnDrop>,
    check: Arc<Check>,
    cfg: Config,
}

/// A spawned task that is aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Checkers {
    fn start(&mut self, backend: Arc<Backend>) {
        let span = tracing::debug_span!("lb_check", backend = %backend.addr);
        let addr = backend.addr.clone();
        let task = tokio::spawn(
            check_loop(backend, self.check.clone(), self.cfg.clone()).instrument(span),
        );
        self.running.insert(addr, AbortOnDrop(task));
    }
}

/// Checks `backend` every `check_interval`, first at once, and publishes its status.
async fn check_loop(backend: Arc<Backend>, check: Arc<Check>, cfg: Config) {
    let mut health = Health::Unchecked;
    let mut tick = tokio::time::interval(cfg.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = tokio::time::timeout(cfg.check_timeout, check.probe(&backend.addr))
            .await
            .unwrap_or(Err(CheckError::TimedOut(cfg.check_timeout)));
        if let Err(e) = &result {
            tracing::debug!(backend = %backend.addr, error = %e, "health check failed");
        }
        let next = health.step(result.is_ok(), cfg.rise, cfg.fall);
        if next.status() != health.status() {
            backend.status.store(next.status() as u8, Relaxed);
            match (next.status(), result) {
                (Status::Up, _) => {
                    tracing::info!(backend = %backend.addr, "load balancer backend up");
                }
                (_, Err(e)) => {
                    tracing::info!(backend = %backend.addr, error = %e, "load balancer backend down");
                }
                (_, Ok(())) => {}
            }
        }
        health = next;
    }
}

/// What one backend's checks have shown so far; owned by its checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Waits for the first check, which decides alone: passes → `Up`, fails → `Down`. One
    /// check instead of `rise`, so a new VIP holder serves within milliseconds.
    Unchecked,
    /// Waits for `fall` consecutive failures (has seen `failures`) to go `Down`.
    Up { failures: u32 },
    /// Waits for `rise` consecutive passes (has seen `passes`) to go `Up`.
    Down { passes: u32 },
}

impl Health {
    fn step(self, ok: bool, rise: u32, fall: u32) -> Health {
        match (self, ok) {
            (Health::Unchecked, true) => Health::Up { failures: 0 },
            (Health::Unchecked, false) => Health::Down { passes: 0 },
            (Health::Up { .. }, true) => Health::Up { failures: 0 },
            (Health::Up { failures }, false) if failures + 1 >= fall => Health::Down { passes: 0 },
            (Health::Up { failures }, false) => Health::Up {
                failures: failures + 1,
            },
            (Health::Down { passes }, true) if passes + 1 >= rise => Health::Up { failures: 0 },
            (Health::Down { passes }, true) => Health::Down { passes: passes + 1 },
            (Health::Down { .. }, false) => Health::Down { passes: 0 },
        }
    }

    fn status(self) -> Status {
        match self {
            Health::Unchecked => Status::Unchecked,
            Health::Up { .. } => Status::Up,
            Health::Down { .. } => Status::Down,
        }
    }
}

/// Why one health check failed (logged, never returned).
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Https(#[from] https::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("/readyz answered {0}")]
    NotReady(StatusCode),
}

impl Check {
    async fn probe(&self, addr: &str) -> Result<(), CheckError> {
        match self {
            Check::Tcp => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(CheckError::Connect),
            Check::Readyz(tls) => {
                let target = https::Target::new(addr, tls.clone())?;
                let req = hyper::Request::get("/readyz")
                    .header(hyper::header::HOST, addr)
                    .body(Full::new(Bytes::new()))?;
                match target.send(req).await? {
                    (StatusCode::OK, _) => Ok(()),
                    (status, _) => Err(CheckError::NotReady(status)),
                }
            }
        }
    }
}

/// Says "due" at most once per [`WARN_EVERY`]: one warning for a condition that recurs per
/// connection, not one per connection.
#[derive(Default)]
struct Every(Mutex<Option<Instant>>);

impl Every {
    fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl crate::apiserver::features::Metrics for Stats {
    fn encode_metrics(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        Stats::encode_metrics(self, enc)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU16;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    use super::*;

    /// Short timings so state changes take milliseconds.
    fn quick() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_connections: 64,
            idle_timeout: Duration::from_secs(30),
            check_interval: Duration::from_millis(50),
            rise: 2,
            fall: 3,
            check_timeout: Duration::from_millis(500),
            drain_grace: Duration::from_millis(400),
        }
    }

    /// A running balancer and the handles a test drives it with.
    struct Running {
        addr: SocketAddr,
        stats: Stats,
        backends: watch::Sender<Vec<String>>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    async fn start(cfg: Config, backends: &[SocketAddr], check: Check) -> Running {
        let lb = LoadBalancer::bind(cfg).await.unwrap();
        let addr = lb.local_addr().unwrap();
        let stats = lb.stats();
        let (tx, rx) = watch::channel(backends.iter().map(|b| b.to_string()).collect());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(lb.run(rx, check, async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            stats,
            backends: tx,
            stop: Some(stop),
            task,
        }
    }

    impl Running {
        fn backend(&self, addr: SocketAddr) -> BackendStats {
            let addr = addr.to_string();
            self.stats
                .backends()
                .into_iter()
                .find(|b| b.addr == addr)
                .unwrap()
        }

        fn totals(&self) -> Vec<u64> {
            self.stats.backends().iter().map(|b| b.total).collect()
        }

        async fn all_up(&self) {
            let stats = self.stats.clone();
            eventually("every backend up", move || {
                let backends = stats.backends();
                !backends.is_empty() && backends.iter().all(|b| b.status == Status::Up)
            })
            .await;
        }
    }

    /// An echo server; dropping it (or `close`) closes its listener, not its connections.
    struct Echo {
        addr: SocketAddr,
        accept: Option<AbortOnDrop>,
    }

    impl Echo {
        async fn start() -> Echo {
            Echo::on(SocketAddr::from(([127, 0, 0, 1], 0))).await
        }

        async fn on(addr: SocketAddr) -> Echo {
            let listener = TcpListener::bind(addr).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
            });
            Echo {
                addr,
                accept: Some(AbortOnDrop(accept)),
            }
        }

        /// Returns once the listener is closed.
        async fn close(&mut self) {
            if let Some(mut a) = self.accept.take() {
                a.0.abort();
                let _ = (&mut a.0).await;
            }
        }
    }

    async fn client(lb: &Running) -> TcpStream {
        TcpStream::connect(lb.addr).await.unwrap()
    }

    /// Sends `msg` and expects it back.
    async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(got, msg);
    }

    /// Whether the peer has closed `s` (EOF or reset) within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut b = [0u8; 64];
        match tokio::time::timeout(within, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => panic!("unexpected bytes"),
            Err(_) => false,
        }
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn health_rises_and_falls_after_consecutive_checks_only() {
        let step = |h: Health, ok| h.step(ok, 2, 3);
        assert_eq!(step(Health::Unchecked, true).status(), Status::Up);
        assert_eq!(step(Health::Unchecked, false).status(), Status::Down);
        // Up: two failures, a pass (resets), then three failures.
        let mut h = Health::Up { failures: 0 };
        for ok in [false, false, true, false, false] {
            h = step(h, ok);
            assert_eq!(h.status(), Status::Up);
        }
        h = step(h, false);
        assert_eq!(h.status(), Status::Down);
        // Down: a pass, a failure (resets), then two passes.
        for ok in [true, false, true] {
            h = step(h, ok);
            assert_eq!(h.status(), Status::Down);
        }
        assert_eq!(step(h, true).status(), Status::Up);
    }

    #[test]
    fn bad_flags_are_all_reported() {
        let args = LbArgs {
            listen: "nowhere".into(),
            backend: vec!["10.0.0.1:6443".into(), "10.0.0.2".into(), "[::1]:0".into()],
            check: "ping".into(),
            ca_file: None,
            max_connections: 0,
            idle_timeout: "soon".into(),
            debug: false,
        };
        let Err(Error::Flags(bad)) = parse_args(&args) else {
            panic!("flags accepted")
        };
        assert_eq!(bad.len(), 6, "{bad:#?}");
        let ok = LbArgs {
            listen: "127.0.0.1:7443".into(),
            backend: vec!["10.0.0.1:6443".into(), "[fd00::1]:6443".into()],
            check: "tcp".into(),
            max_connections: 10,
            idle_timeout: "90s".into(),
            ..args
        };
        let (cfg, check, backends) = parse_args(&ok).unwrap();
        assert_eq!(cfg.idle_timeout, Duration::from_secs(90));
        assert!(matches!(check, Check::Tcp));
        assert_eq!(backends.len(), 2);
        let readyz = LbArgs {
            check: "readyz".into(),
            ..ok
        };
        assert!(matches!(parse_args(&readyz), Err(Error::Flags(b)) if b.len() == 1));
    }

    #[tokio::test]
    async fn forwards_both_ways_and_passes_half_close_on() {
        let echo = Echo::start().await;
        let lb = start(quick(), &[echo.addr], Check::Tcp).await;
        lb.all_up().await;
        let mut c = client(&lb).await;
        round_trip(&mut c, b"hello").await;
        // More than one buffer's worth, written while the answer is read.
        let big: Vec<u8> = (0..BUFFER * 20).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = c.into_split();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            // The echo server answers our close with its own.
            w.shutdown().await.unwrap();
            w
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, big);
        drop(writer.await.unwrap());
        assert_eq!(lb.stats.accepted(), 1);
        assert_eq!(lb.backend(echo.addr).total, 1);
        eventually("the connection to end", || {
            lb.backend(echo.addr).active == 0
        })
        .await;
    }

    #[test]
    fn a_long_transfer_keeps_flowing() {
        // Regression: a copy loop that ignored tokio's cooperative budget spun forever once
        // the budget ran out. Two workers, so the timeout still fires if one spins, and a
        // background shutdown, so a spinning worker cannot hold the test up either.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        const TOTAL: usize = 64 << 20;
        let got = rt.block_on(async {
            let echo = Echo::start().await;
            let lb = start(quick(), &[echo.addr], Check::Tcp).await;
            lb.all_up().await;
            let (mut r, mut w) = client(&lb).await.into_split();
            tokio::spawn(async move {
                let chunk = vec![5u8; 1 << 20];
                for _ in 0..TOTAL / chunk.len() {
                    w.write_all(&chunk).await.unwrap();
                }
                w.shutdown().await.unwrap();
            });
            let read_all = async {
                let mut buf = vec![0u8; 1 << 16];
                let mut got = 0;
                loop {
                    match r.read(&mut buf).await.unwrap() {
                        0 => return got,
                        n => got += n,
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(30), read_all).await
        });
        rt.shutdown_background();
        assert_eq!(got.expect("the transfer stalled"), TOTAL);
    }

    #[tokio::test]
    async fn equal_backends_share_evenly() {
        let echoes = [
            Echo::start().await,
            Echo::start().await,
            Echo::start().await,
        ];
        let addrs: Vec<_> = echoes.iter().map(|e| e.addr).collect();
        let lb = start(quick(), &addrs, Check::Tcp).await;
        lb.all_up().await;
        // Held open: each new client sees the earlier ones in the active counts.
        let mut held = Vec::new();
        for _ in 0..30 {
            let mut c = client(&lb).await;
            round_trip(&mut c, b"x").await;
            held.push(c);
        }
        assert_eq!(lb.totals(), [10, 10, 10]);
        drop(held);
        let stats = lb.stats.clone();
        eventually("all closed", || {
            stats.backends().iter().all(|b| b.active == 0)
        })
        .await;
        // One at a time, each closed before the next: ties, taken in turn.
        for _ in 0..30 {
            let mut c = client(&lb).await;
            round_trip(&mut c, b"x").await;
            drop(c);
            let stats = lb.stats.clone();
            eventually("closed", || stats.backends().iter().all(|b| b.active == 0)).await;
        }
        assert_eq!(lb.totals(), [20, 20, 20]);
    }

    #[tokio::test]
    async fn least_connections_prefers_the_idle_backend() {
        let (a, b) = (Echo::start().await, Echo::start().await);
        let lb = start(quick(), &[a.addr, b.addr], Check::Tcp).await;
        lb.all_up().await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(open(&lb).await);
        }
        assert_eq!(
            (lb.backend(a.addr).active, lb.backend(b.addr).active),
            (2, 2)
        );
        // Close one backend's clients: the next two both go there, though taking turns
        // would send one of them to the other backend.
        let idle = held[1].1.clone();
        held.retain(|(_, on)| *on != idle);
        let stats = lb.stats.clone();
        eventually("one backend idle", || {
            stats.backends().iter().any(|b| b.active == 0)
        })
        .await;
        for _ in 0..2 {
            let (c, on) = open(&lb).await;
            assert_eq!(on, idle);
            held.push((c, on));
        }
        assert_eq!(
            (lb.backend(a.addr).active, lb.backend(b.addr).active),
            (2, 2)
        );
    }

    /// A client through the balancer that has had one echo, and the backend it went to.
    async fn open(lb: &Running) -> (TcpStream, String) {
        let before = lb.stats.backends();
        let mut c = client(lb).await;
        round_trip(&mut c, b"x").await;
        let after = lb.stats.backends();
        let on = after
            .iter()
            .zip(&before)
            .find(|(now, then)| now.total > then.total)
            .map(|(now, _)| now.addr.clone())
            .unwrap();
        (c, on)
    }

    #[tokio::test]
    async fn a_failed_backend_goes_down_gets_no_clients_and_comes_back() {
        let a = Echo::start().await;
        let mut b = Echo::start().await;
        let lb = start(quick(), &[a.addr, b.addr], Check::Tcp).await;
        lb.all_up().await;
        b.close().await;
        let closed_at = Instant::now();
        eventually("b down", || lb.backend(b.addr).status == Status::Down).await;
        // `fall` = 3 failed checks, 50 ms apart: not before the third.
        assert!(closed_at.elapsed() >= Duration::from_millis(90));
        for _ in 0..6 {
            let mut c = client(&lb).await;
            round_trip(&mut c, b"x").await;
        }
        assert_eq!(lb.backend(b.addr).total, 0);
        let b = Echo::on(b.addr).await;
        eventually("b up again", || lb.backend(b.addr).status == Status::Up).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut c = client(&lb).await;
            round_trip(&mut c, b"x").await;
            held.push(c);
        }
        assert!(lb.backend(b.addr).total >= 2, "{:?}", lb.stats.backends());
    }

    #[tokio::test]
    async fn a_refusing_backend_is_skipped_before_its_checks_notice() {
        let a = Echo::start().await;
        let mut b = Echo::start().await;
        let cfg = Config {
            check_interval: Duration::from_secs(3600),
            ..quick()
        };
        let lb = start(cfg, &[a.addr, b.addr], Check::Tcp).await;
        lb.all_up().await;
        b.close().await;
        for _ in 0..6 {
            let mut c = client(&lb).await;
            round_trip(&mut c, b"x").await;
        }
        assert_eq!(lb.backend(a.addr).total, 6);
        assert_eq!(lb.backend(b.addr).status, Status::Up);
        assert_eq!(lb.stats.unserved(), 0);
    }

    #[tokio::test]
    async fn a_client_with_no_backend_is_closed() {
        let lb = start(quick(), &[], Check::Tcp).await;
        let mut c = client(&lb).await;
        assert!(closed_within(&mut c, Duration::from_secs(2)).await);
        assert_eq!(lb.stats.unserved(), 1);
    }

    #[tokio::test]
    async fn backends_follow_the_list() {
        let (a, b) = (Echo::start().await, Echo::start().await);
        let lb = start(quick(), &[a.addr], Check::Tcp).await;
        lb.all_up().await;
        lb.backends
            .send_replace(vec![a.addr.to_string(), b.addr.to_string()]);
        eventually("b added and up", || {
            lb.stats.backends().len() == 2 && lb.backend(b.addr).status == Status::Up
        })
        .await;
        let mut on_a = Vec::new();
        for _ in 0..4 {
            let mut c = client(&lb).await;
            round_trip(&mut c, b"x").await;
            on_a.push(c);
        }
        assert_eq!((lb.backend(a.addr).total, lb.backend(b.addr).total), (2, 2));
        lb.backends.send_replace(vec![b.addr.to_string()]);
        let stats = lb.stats.clone();
        eventually("a removed", || stats.backends().len() == 1).await;
        // Open connections to a removed backend go on; new ones go elsewhere.
        for c in &mut on_a {
            round_trip(c, b"still here").await;
        }
        for _ in 0..3 {
            let mut c = client(&lb).await;
            round_trip(&mut c, b"x").await;
        }
        assert_eq!(lb.backend(b.addr).total, 5);
    }

    #[tokio::test]
    async fn the_connection_bound_holds() {
        let echo = Echo::start().await;
        let cfg = Config {
            max_connections: 2,
            ..quick()
        };
        let lb = start(cfg, &[echo.addr], Check::Tcp).await;
        lb.all_up().await;
        let mut first = client(&lb).await;
        round_trip(&mut first, b"1").await;
        let mut second = client(&lb).await;
        round_trip(&mut second, b"2").await;
        // The kernel completes the handshake, but nobody accepts it yet.
        let mut third = client(&lb).await;
        third.write_all(b"3").await.unwrap();
        let mut got = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut got));
        assert!(early.await.is_err(), "the third client was served");
        assert_eq!(lb.stats.accepted(), 2);
        assert_eq!(lb.stats.limit_reached(), 1);
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), third.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"3");
        assert_eq!(lb.stats.accepted(), 3);
        round_trip(&mut second, b"2").await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed_busy_ones_kept() {
        let echo = Echo::start().await;
        let cfg = Config {
            idle_timeout: Duration::from_millis(300),
            ..quick()
        };
        let lb = start(cfg, &[echo.addr], Check::Tcp).await;
        lb.all_up().await;
        let mut idle = client(&lb).await;
        round_trip(&mut idle, b"x").await;
        let mut busy = client(&lb).await;
        let began = Instant::now();
        for _ in 0..8 {
            round_trip(&mut busy, b"tick").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(closed_within(&mut idle, Duration::from_secs(2)).await);
        assert!(began.elapsed() >= Duration::from_millis(300));
        // Busy for 800 ms with 100 ms gaps: still open.
        round_trip(&mut busy, b"tock").await;
    }

    #[tokio::test]
    async fn stop_refuses_new_clients_and_closes_open_ones_after_the_grace() {
        let echo = Echo::start().await;
        let mut lb = start(quick(), &[echo.addr], Check::Tcp).await;
        lb.all_up().await;
        let mut open = client(&lb).await;
        round_trip(&mut open, b"x").await;
        let stopped_at = Instant::now();
        let _ = lb.stop.take().unwrap().send(());
        let addr = lb.addr;
        let deadline = Instant::now() + Duration::from_secs(2);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Within the grace period the open connection still works.
        round_trip(&mut open, b"draining").await;
        assert!(closed_within(&mut open, Duration::from_secs(2)).await);
        assert!(stopped_at.elapsed() >= Duration::from_millis(350));
        tokio::time::timeout(Duration::from_secs(2), &mut lb.task)
            .await
            .expect("run ends after the grace")
            .unwrap();
    }

    #[tokio::test]
    async fn readyz_check_follows_the_answer_and_tls_passes_through() {
        let ca = crate::bootstrap::ClusterCa::generate().unwrap();
        let serving = ca
            .issue_serving(&[], &[std::net::IpAddr::from([127, 0, 0, 1])])
            .unwrap();
        let (server_tls, _) = crate::apiserver::tls_config(&ca, &serving).unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let server = ReadyzServer::start(Arc::new(server_tls), status.clone()).await;
        let tls = https::tls_config(&ca.cert_pem, None).unwrap();
        let lb = start(quick(), &[server.addr], Check::Readyz(tls.clone())).await;
        lb.all_up().await;
        // Through the balancer, the client verifies the backend's own certificate.
        let through = https::Target::new(&lb.addr.to_string(), tls).unwrap();
        let req = hyper::Request::get("/readyz")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(through.send(req).await.unwrap().0, StatusCode::OK);
        status.store(503, Relaxed);
        eventually("down on 503", || {
            lb.backend(server.addr).status == Status::Down
        })
        .await;
        status.store(200, Relaxed);
        eventually("up on 200", || lb.backend(server.addr).status == Status::Up).await;
    }

    /// A TLS server answering `/readyz` with a settable status.
    struct ReadyzServer {
        addr: SocketAddr,
        _accept: AbortOnDrop,
    }

    impl ReadyzServer {
        async fn start(tls: Arc<rustls::ServerConfig>, status: Arc<AtomicU16>) -> ReadyzServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            let accept = tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, status) = (acceptor.clone(), status.clone());
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |_req| {
                            let code = StatusCode::from_u16(status.load(Relaxed)).unwrap();
                            async move {
                                let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                                *resp.status_mut() = code;
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            ReadyzServer {
                addr,
                _accept: AbortOnDrop(accept),
            }
        }
    }

    /// The balancer's figures as `/metrics` shows them.
    fn encoded(stats: &Stats) -> String {
        struct Figures(Stats);
        impl std::fmt::Debug for Figures {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Figures")
            }
        }
        impl prometheus_client::collector::Collector for Figures {
            fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
                self.0.encode_metrics(&mut enc)
            }
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Figures(stats.clone())));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_name_every_backend() {
        let echo = Echo::start().await;
        let lb = start(quick(), &[echo.addr], Check::Tcp).await;
        lb.all_up().await;
        let mut c = client(&lb).await;
        round_trip(&mut c, b"x").await;
        let out = encoded(&lb.stats);
        assert!(out.contains("keelson_lb_connections_total 1\n"), "{out}");
        let b = echo.addr;
        assert!(out.contains(&format!("keelson_lb_backend_up{{backend=\"{b}\"}} 1\n")));
        assert!(out.contains(&format!(
            "keelson_lb_backend_connections{{backend=\"{b}\"}} 1\n"
        )));
    }

    #[tokio::test]
    async fn binds_beside_a_wildcard_listener_on_the_same_port() {
        // What the API server does with --vip: the wildcard address, SO_REUSEPORT.
        let wildcard = tokio::net::TcpSocket::new_v4().unwrap();
        wildcard.set_reuseaddr(true).unwrap();
        wildcard.set_reuseport(true).unwrap();
        wildcard.bind(SocketAddr::from(([0, 0, 0, 0], 0))).unwrap();
        let port = wildcard.local_addr().unwrap().port();
        let _api = wildcard.listen(16).unwrap();
        let echo = Echo::start().await;
        let cfg = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            ..quick()
        };
        let lb = start(cfg, &[echo.addr], Check::Tcp).await;
        lb.all_up().await;
        let mut c = client(&lb).await;
        round_trip(&mut c, b"to the specific socket").await;
    }
}
