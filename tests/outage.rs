//! Honest, fast failure detection: a server between which and its real PostgreSQL / MariaDB
//! the test puts a TCP proxy it controls, then takes the database away three ways.
//!
//! - **refuse**: the proxy resets every connection and stops listening (connections refused);
//! - **blackhole**: the proxy keeps every socket open and accepts new ones, but forwards
//!   nothing, silently (no RST, no FIN: what a dropped route looks like to the server);
//! - **slow**: every reply from the database is held 1–1.5 s.
//!
//! For the first two, `/readyz` and an API request (`GET /api/v1/namespaces` with the admin
//! client certificate) must say 503 within 2 s, and `/readyz` must be ok again within about
//! a second of the proxy forwarding again. A slow database must not flap readiness at all.
//! Detection and recovery times are printed as `FIGURE` lines.
//!
//! The machine's databases are shared: nothing here stops them. Each test makes its own
//! database and drops it; a database server that does not answer fails the test unless
//! `KEELSON_ALLOW_SKIP=1` (see `common::db`, `common::skip`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::db::{Db, TestDb};
use common::{Options, Server};

/// What the API promises: 503 within this long of the database going away.
const DETECT: Duration = Duration::from_secs(2);
/// Readiness must come back within this long of the database answering again.
const RECOVER: Duration = Duration::from_millis(1500);
/// How long readiness is watched under a slow database.
const SLOW_FOR: Duration = Duration::from_secs(15);
/// The slow proxy holds each reply this long, plus up to [`SLOW_JITTER`].
const SLOW_BASE: Duration = Duration::from_millis(1000);
const SLOW_JITTER: Duration = Duration::from_millis(500);

// === the proxy ===

/// How the proxy treats traffic; the test switches it while the server runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Forward,
    Refuse,
    Blackhole,
    Slow,
}

/// A TCP proxy in front of a database, on its own threads. Dropping it closes everything.
struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    mode: Mutex<Mode>,
    /// `None` while refusing: the port is closed, so connecting is refused by the kernel.
    listener: Mutex<Option<TcpListener>>,
    /// Both sockets of every forwarded connection, to reset them on [`Mode::Refuse`].
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
    upstream: u16,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("make the proxy's listener non-blocking");
        let port = listener.local_addr().expect("the proxy's address").port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Forward),
            listener: Mutex::new(Some(listener)),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            upstream,
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(&s));
        Proxy { port, shared }
    }

    fn mode(&self) -> Mode {
        *self.shared.mode.lock().unwrap()
    }

    /// Switches to `mode`; returns the instant it took effect.
    fn set(&self, mode: Mode) -> Instant {
        let was = self.mode();
        if was == Mode::Refuse && mode != Mode::Refuse {
            self.listen_again();
        }
        *self.shared.mode.lock().unwrap() = mode;
        if mode == Mode::Refuse {
            // Closed port first, then every connection reset: nothing slips in between.
            *self.shared.listener.lock().unwrap() = None;
            for s in self.shared.open.lock().unwrap().drain(..) {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        Instant::now()
    }

    fn listen_again(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("cannot listen on {} again yet: {e}", self.port);
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot listen on the proxy's port {} again: {e}", self.port),
            }
        };
        listener
            .set_nonblocking(true)
            .expect("make the proxy's listener non-blocking");
        *self.shared.listener.lock().unwrap() = Some(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.set(Mode::Refuse);
    }
}

fn accept_loop(shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let accepted = {
            let listener = shared.listener.lock().unwrap();
            listener.as_ref().map(|l| l.accept())
        };
        match accepted {
            Some(Ok((client, _))) => {
                let Ok(server) = TcpStream::connect(("127.0.0.1", shared.upstream)) else {
                    continue; // the client sees its connection closed
                };
                let _ = client.set_nonblocking(false);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                {
                    let mut open = shared.open.lock().unwrap();
                    open.push(c2.try_clone().expect("clone a socket"));
                    open.push(s2.try_clone().expect("clone a socket"));
                }
                relay(shared.clone(), client, s2, false);
                relay(shared.clone(), server, c2, true);
            }
            Some(Err(e)) if e.kind() != ErrorKind::WouldBlock => {
                eprintln!("the proxy failed to accept: {e}");
                thread::sleep(Duration::from_millis(5));
            }
            _ => thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Copies `from` to `to` through a delay line: a reader thread stamps each chunk with when it
/// may leave (later by 1–1.5 s for replies while slow), a writer thread sends it then — and
/// holds everything, silently, while the proxy blackholes.
fn relay(shared: Arc<Shared>, mut from: TcpStream, mut to: TcpStream, replies: bool) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_shared = shared.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let mut seed = u64::from(std::process::id()) << 32 | u64::from(from_port(&from)) | 1;
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let slow = replies && *reader_shared.mode.lock().unwrap() == Mode::Slow;
                    let delay = if slow {
                        // xorshift: jitter without a dependency.
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        SLOW_BASE + SLOW_JITTER.mul_f64((seed % 1000) as f64 / 1000.0)
                    } else {
                        Duration::ZERO
                    };
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // The writer sends what is queued, then ends both sockets.
    });
    thread::spawn(move || {
        for (at, chunk) in rx {
            while *shared.mode.lock().unwrap() == Mode::Blackhole {
                thread::sleep(Duration::from_millis(2));
            }
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

fn from_port(s: &TcpStream) -> u16 {
    s.peer_addr().map(|a| a.port()).unwrap_or(0)
}

// === the checks ===

/// `/readyz`'s status and body; status `None` if the server did not answer at all.
fn readyz(s: &Server) -> (Option<u16>, String) {
    let r = s.curl_anonymous(&["--max-time", "5", &format!("{}/readyz", s.url())]);
    (r.status, r.body)
}

/// One API request as the admin; its status, body and how long it took.
fn namespaces(s: &Server) -> (Option<u16>, String, Duration) {
    let start = Instant::now();
    let r = s.curl(&[
        "--max-time",
        "10",
        &format!("{}/api/v1/namespaces", s.url()),
    ]);
    (r.status, r.body, start.elapsed())
}

/// Polls `check` on a thread of its own from `from` until it returns `Some`, for at most
/// `limit`; the time from `from` to the first `Some`, and its value.
fn first<T: Send + 'static>(
    from: Instant,
    limit: Duration,
    check: impl Fn() -> Option<T> + Send + 'static,
) -> thread::JoinHandle<Option<(Duration, T)>> {
    thread::spawn(move || {
        while from.elapsed() < limit {
            if let Some(v) = check() {
                return Some((from.elapsed(), v));
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    })
}

/// Takes the database away with `mode`, checks that `/readyz` and the API say 503 within
/// [`DETECT`], then forwards again and checks that `/readyz` is ok within [`RECOVER`].
fn outage(s: &Arc<Server>, proxy: &Proxy, db: Db, mode: Mode) {
    let what = format!("{db} {mode:?}");
    assert_eq!(
        readyz(s).0,
        Some(200),
        "{what}: not ready before the outage"
    );
    // A request already on its way when the database goes: it must not wait it out.
    let in_flight = {
        let s = s.clone();
        thread::spawn(move || namespaces(&s))
    };
    let cut = proxy.set(mode);
    let ready = {
        let s = s.clone();
        first(cut, DETECT * 3, move || {
            let (status, body) = readyz(&s);
            (status == Some(503)).then_some(body)
        })
    };
    let api = {
        let s = s.clone();
        first(cut, DETECT * 3, move || {
            let (status, body, took) = namespaces(&s);
            (status == Some(503)).then_some((body, took))
        })
    };
    let ready = ready.join().expect("the readyz poller panicked");
    let api = api.join().expect("the API poller panicked");
    let (status, body, took) = in_flight.join().expect("the in-flight request panicked");

    let (ready_at, ready_body) =
        ready.unwrap_or_else(|| panic!("{what}: /readyz never said 503 within {:?}", DETECT * 3));
    let (api_at, (api_body, _)) = api.unwrap_or_else(|| {
        panic!(
            "{what}: GET /api/v1/namespaces never said 503 within {:?}",
            DETECT * 3
        )
    });
    println!(
        "FIGURE outage {what}: /readyz 503 after {ready_at:.2?}, API 503 after {api_at:.2?}, request in flight at the cut answered {status:?} after {took:.2?}"
    );
    assert!(
        ready_body.contains("datastore"),
        "{what}: /readyz does not name the datastore: {ready_body}"
    );
    let status_json: serde_json::Value = serde_json::from_str(&api_body)
        .unwrap_or_else(|e| panic!("{what}: the 503 is not JSON ({e}): {api_body}"));
    assert_eq!(status_json["kind"], "Status", "{what}: {api_body}");
    assert_eq!(
        status_json["reason"], "ServiceUnavailable",
        "{what}: {api_body}"
    );
    assert!(
        status_json["message"]
            .as_str()
            .is_some_and(|m| m.contains("datastore")),
        "{what}: the 503 does not name the datastore: {api_body}"
    );
    assert!(
        ready_at < DETECT,
        "{what}: /readyz said 503 only {ready_at:?} after the database went away"
    );
    assert!(
        api_at < DETECT,
        "{what}: the API said 503 only {api_at:?} after the database went away"
    );
    assert!(
        took < DETECT + Duration::from_millis(500),
        "{what}: a request in flight when the database went away took {took:?} ({status:?} {body})"
    );
    assert!(
        matches!(status, Some(200 | 503)),
        "{what}: the request in flight was answered {status:?}: {body}"
    );

    // Down for a while, as outages are: still saying so at the end.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        readyz(s).0,
        Some(503),
        "{what}: ready again while still cut off"
    );

    let back = proxy.set(Mode::Forward);
    let recovered = {
        let s = s.clone();
        first(back, RECOVER * 4, move || {
            (readyz(&s).0 == Some(200)).then_some(())
        })
    }
    .join()
    .expect("the recovery poller panicked");
    let (recovered_at, ()) = recovered.unwrap_or_else(|| {
        panic!(
            "{what}: /readyz not ok {:?} after the database returned",
            RECOVER * 4
        )
    });
    println!(
        "FIGURE outage {what}: /readyz ok again {recovered_at:.2?} after the database returned"
    );
    assert!(
        recovered_at < RECOVER,
        "{what}: /readyz ok only {recovered_at:?} after the database returned"
    );
    common::wait_until(
        &format!("{what}: the API serving again"),
        Duration::from_secs(10),
        || namespaces(s).0 == Some(200),
    );
}

/// Every reply held 1–1.5 s: `/readyz` must say ok throughout, also while API requests wait
/// on the slow database and time out on the pool (each of which makes the prober look).
fn slow(s: &Arc<Server>, proxy: &Proxy, db: Db) {
    proxy.set(Mode::Slow);
    let start = Instant::now();
    let requests = {
        let s = s.clone();
        thread::spawn(move || {
            let mut answers = Vec::new();
            while start.elapsed() < SLOW_FOR - Duration::from_secs(2) {
                let (status, body, took) = namespaces(&s);
                answers.push((status, took));
                assert!(
                    matches!(status, Some(200 | 503)),
                    "{db}: the API under a slow database answered {status:?}: {body}"
                );
            }
            answers
        })
    };
    let mut checks = 0;
    while start.elapsed() < SLOW_FOR {
        let (status, body) = readyz(s);
        assert_eq!(
            status,
            Some(200),
            "{db}: /readyz flapped {:?} into a slow database: {body}",
            start.elapsed()
        );
        checks += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let answers = requests.join().expect("the API requests panicked");
    proxy.set(Mode::Forward);
    println!(
        "FIGURE outage {db} Slow: /readyz ok in all {checks} checks over {SLOW_FOR:?} with replies held 1-1.5 s; API requests meanwhile (status, time): {answers:.1?}"
    );
}

fn fails_fast_and_recovers(db: Db) {
    let Some(test_db) = TestDb::new(db, "outage") else {
        return;
    };
    let proxy = Proxy::start(db.port());
    let mut opts = Options::default();
    opts.node_name = "outage".into();
    let s = Arc::new(Server::start(
        opts.arg("--datastore-endpoint", &test_db.url_endpoint_at(proxy.port)),
    ));
    assert_eq!(namespaces(&s).0, Some(200));
    // An idle server, as outages find them: nothing in flight, the feed waiting.
    thread::sleep(Duration::from_secs(1));
    outage(&s, &proxy, db, Mode::Refuse);
    thread::sleep(Duration::from_secs(1));
    outage(&s, &proxy, db, Mode::Blackhole);
    thread::sleep(Duration::from_secs(1));
    slow(&s, &proxy, db);
    let log = s.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("the datastore is down"),
        "the log does not say the datastore went down"
    );
    drop(s);
    drop(proxy);
    drop(test_db);
}

#[test]
fn postgres_outages_are_told_within_two_seconds_and_slowness_is_not() {
    fails_fast_and_recovers(Db::Postgres);
}

#[test]
fn mariadb_outages_are_told_within_two_seconds_and_slowness_is_not() {
    fails_fast_and_recovers(Db::MariaDb);
}
