//! High availability on the real PostgreSQL and MariaDB of this machine: several servers on one
//! database, shared trust, refused joins that leave no trace, concurrent first starts, a bounded
//! pool, and a database outage under a running server.
//!
//! Every scenario runs once per database (one test fn each, one shared body). Every test makes
//! its own database (`keelson_ha_<test>_<pid>`) and drops it, also when it fails. A database
//! server that does not answer fails the test unless
//! `KEELSON_ALLOW_SKIP=1` (see `common::skip`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::db::{Db, TestDb};
use common::{Options, Server, wait_until};

fn named(node: impl Into<String>) -> Options {
    let mut o = Options::default();
    o.node_name = node.into();
    o
}

fn opts(node: &str, db: &TestDb) -> Options {
    named(node).arg("--datastore-endpoint", &db.endpoint())
}

/// `/cacerts`, fetched anonymously.
fn cacerts(s: &Server) -> String {
    let r = s.curl_anonymous(&[&format!("{}/cacerts", s.url())]);
    assert_eq!(
        r.status,
        Some(200),
        "/cacerts on {}: {:?}",
        s.node_name(),
        r.curl
    );
    assert!(
        r.body.contains("-----BEGIN CERTIFICATE-----"),
        "/cacerts is not PEM: {}",
        r.body
    );
    r.body
}

/// Names of the nodes whose Ready condition is True, sorted, as `s` lists them.
fn ready_nodes(s: &Server) -> Vec<String> {
    let list = s.kubectl_json(&["get", "nodes", "-o", "json"]);
    let mut names: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn labels(s: &Server) -> Value {
    s.node()["metadata"]["labels"].clone()
}

// === two servers, one cluster ===

fn two_servers_form_one_cluster(db: Db) {
    let Some(db) = TestDb::new(db, "two") else {
        return;
    };
    let a = Server::start(opts("server-a", &db));
    let b = Server::start(
        opts("server-b", &db).arg("--token-file", &a.token_path().display().to_string()),
    );

    let both = vec!["server-a".to_owned(), "server-b".to_owned()];
    for s in [&a, &b] {
        wait_until(
            &format!("both nodes Ready through {}'s kubeconfig", s.node_name()),
            Duration::from_secs(30),
            || ready_nodes(s) == both,
        );
    }
    assert_eq!(
        cacerts(&a),
        cacerts(&b),
        "both servers must serve the one cluster CA"
    );
    // One trust: A's admin credentials work against B, and B's serving certificate verifies
    // with A's CA.
    let out = b.kubectl_with(
        &a.kubeconfig(),
        &["--server", &b.url(), "get", "nodes", "-o", "name"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("node/server-a")
            && stdout.contains("node/server-b"),
        "A's kubeconfig against B: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let watch = b.watch(&["nodes"]);
    let written = Instant::now();
    a.kubectl_ok(&["label", "node", "server-a", "written-through=a"]);
    watch.next(
        |n| {
            n["metadata"]["name"] == "server-a" && n["metadata"]["labels"]["written-through"] == "a"
        },
        "the label written through server A, on a watch held on server B",
    );
    eprintln!(
        "{}: B's watch saw A's write {:?} after it was sent",
        db.db,
        written.elapsed()
    );
}

#[test]
fn two_servers_on_postgres_form_one_cluster() {
    two_servers_form_one_cluster(Db::Postgres);
}

#[test]
fn two_servers_on_mariadb_k3s_dsn_form_one_cluster() {
    two_servers_form_one_cluster(Db::MariaDb);
}

// === refusals leave no trace ===

fn refused_servers_leave_no_trace(db: Db) {
    let Some(db) = TestDb::new(db, "refused") else {
        return;
    };
    let a = Server::start(opts("server-a", &db));
    wait_until("server-a Ready", Duration::from_secs(30), || {
        ready_nodes(&a) == ["server-a"]
    });
    // The first server's own start-up writes must be over before the snapshot.
    let mut before = db.snapshot();
    wait_until("the database quiet", Duration::from_secs(20), || {
        thread::sleep(Duration::from_secs(1));
        let now = db.snapshot();
        let quiet = now == before;
        before = now;
        quiet
    });

    let secrets = &before[2].1;
    assert!(
        secrets.contains("cluster") && secrets.contains("settings"),
        "keelson_secrets lacks the cluster data or the settings: {secrets}"
    );

    let wrong = Server::try_start(opts("intruder", &db).arg("--token", "not-the-cluster-token"));
    let e = wrong.err().expect("a server with the wrong token started");
    assert_eq!(e.status.code(), Some(1), "{}", e.log);
    assert!(
        e.log.contains("the token does not open the cluster data"),
        "{}",
        e.log
    );

    let odd = Server::try_start(
        opts("mismatched", &db)
            .arg("--token-file", &a.token_path().display().to_string())
            .arg("--cluster-cidr", "10.99.0.0/16")
            .arg("--cluster-domain", "example.internal")
            .arg("--disable", "traefik"),
    );
    let e = odd
        .err()
        .expect("a server with different cluster settings started");
    assert_eq!(e.status.code(), Some(1), "{}", e.log);
    for want in [
        r#"--cluster-cidr is "10.99.0.0/16" here but "10.42.0.0/16" in the cluster"#,
        r#"--cluster-domain is "example.internal" here but "cluster.local" in the cluster"#,
        // The harness gives every server `--disable coredns` (KEELSON_DISABLE).
        r#"--disable is "traefik" here but "coredns" in the cluster"#,
    ] {
        assert!(e.log.contains(want), "missing {want:?} in:\n{}", e.log);
    }

    assert_eq!(
        db.snapshot(),
        before,
        "a refused server wrote to the database"
    );
    for table_check in [
        "SELECT count(*) FROM keelson_objects WHERE path LIKE '%intruder%' OR path LIKE '%mismatched%'",
        "SELECT count(*) FROM keelson_heartbeats WHERE node IN ('intruder', 'mismatched')",
        "SELECT count(*) FROM keelson_leases WHERE holder LIKE '%intruder%' OR holder LIKE '%mismatched%'",
    ] {
        assert_eq!(db.query(table_check), "0", "{table_check}");
    }
    let nodes = a.kubectl_ok(&["get", "nodes", "-o", "name"]);
    assert_eq!(
        nodes.trim(),
        "node/server-a",
        "a refused server registered a node"
    );
}

#[test]
fn refused_servers_leave_no_trace_on_postgres() {
    refused_servers_leave_no_trace(Db::Postgres);
}

#[test]
fn refused_servers_leave_no_trace_on_mariadb() {
    refused_servers_leave_no_trace(Db::MariaDb);
}

// === three at once ===

/// Log lines that show trouble at start-up: errors, panics, and warnings about the datastore
/// or its schema (a lost migration race is retried, and logged as a warning).
fn startup_trouble(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            let lower = l.to_lowercase();
            l.contains("ERROR ")
                || l.contains("panicked")
                || (l.contains(" WARN ")
                    && ["migrat", "schema", "datastore", "duplicate", "deadlock"]
                        .iter()
                        .any(|w| lower.contains(w)))
        })
        .collect()
}

fn three_servers_at_once_make_one_ca(db: Db) {
    let Some(db) = TestDb::new(db, "three") else {
        return;
    };
    let endpoint = db.endpoint();
    let go = Arc::new(Barrier::new(3));
    let starts: Vec<_> = (0..3)
        .map(|i| {
            let (endpoint, go) = (endpoint.clone(), go.clone());
            thread::spawn(move || {
                let o = named(format!("server-{i}"))
                    .arg("--datastore-endpoint", &endpoint)
                    .arg("--token", "one-secret-for-all-three");
                go.wait();
                Server::start(o)
            })
        })
        .collect();
    // Join all before failing, so every server is stopped before the database is dropped.
    let started: Vec<_> = starts.into_iter().map(|t| t.join()).collect();
    let servers: Vec<Server> = started
        .into_iter()
        .map(|r| r.unwrap_or_else(|_| panic!("a server failed to start (see its panic above)")))
        .collect();

    let all = vec!["server-0", "server-1", "server-2"];
    for s in &servers {
        wait_until(
            &format!("all three nodes Ready through {}", s.node_name()),
            Duration::from_secs(30),
            || ready_nodes(s) == all,
        );
    }
    let ca = cacerts(&servers[0]);
    assert_eq!(
        ca.matches("-----BEGIN CERTIFICATE-----").count(),
        1,
        "/cacerts must hold exactly one CA:\n{ca}"
    );
    for s in &servers {
        assert_eq!(cacerts(s), ca, "{} serves another CA", s.node_name());
        let trouble = startup_trouble(&s.log()).join("\n");
        assert!(
            trouble.is_empty(),
            "{} logged trouble while starting beside the others:\n{trouble}",
            s.node_name()
        );
        // Every server's admin credentials work against the first.
        let out = servers[0].kubectl_with(
            &s.kubeconfig(),
            &["--server", &servers[0].url(), "get", "nodes"],
        );
        assert!(
            out.status.success(),
            "{}'s kubeconfig against server-0: {}",
            s.node_name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn three_servers_started_at_once_on_postgres_make_one_ca() {
    three_servers_at_once_make_one_ca(Db::Postgres);
}

#[test]
fn three_servers_started_at_once_on_mariadb_make_one_ca() {
    three_servers_at_once_make_one_ca(Db::MariaDb);
}

// === the pool bound ===

/// `keelson_datastore_statements_total` from `/metrics`.
fn statements(s: &Server) -> u64 {
    let r = s.curl(&[&format!("{}/metrics", s.url())]);
    assert_eq!(r.status, Some(200), "/metrics: {} {:?}", r.body, r.curl);
    r.body
        .lines()
        .find(|l| l.starts_with("keelson_datastore_statements_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no keelson_datastore_statements_total in:\n{}", r.body))
}

const LOAD_WORKERS: usize = 30;
const LOAD_ROUNDS: usize = 2;

fn pool_bound_holds_under_load(db: Db) {
    let Some(db) = TestDb::new(db, "pool") else {
        return;
    };
    let s = Arc::new(Server::start(
        named("pool")
            .arg("--datastore-endpoint", &db.url_endpoint_at(db.db.port()))
            .arg("--datastore-max-open-connections", "2"),
    ));
    let statements_before = statements(&s);
    let db = Arc::new(db);
    let done = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (db, done, samples) = (db.clone(), done.clone(), samples.clone());
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(n) = db.connections() {
                    samples.lock().unwrap().push(n);
                }
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let go = Arc::new(Barrier::new(LOAD_WORKERS));
    let load_start = Instant::now();
    let workers: Vec<_> = (0..LOAD_WORKERS)
        .map(|w| {
            let (s, go) = (s.clone(), go.clone());
            thread::spawn(move || {
                let mut failures = Vec::new();
                go.wait();
                for i in 0..LOAD_ROUNDS {
                    let body = format!(r#"{{"metadata":{{"labels":{{"load-{w}":"{i}"}}}}}}"#);
                    let r = s.curl(&[
                        "-X",
                        "PATCH",
                        "-H",
                        "Content-Type: application/merge-patch+json",
                        "--data",
                        &body,
                        &format!("{}/api/v1/nodes/pool", s.url()),
                    ]);
                    if r.status != Some(200) {
                        failures.push(format!("PATCH: {:?} {}", r.status, r.body));
                    }
                    let r = s.curl(&[&format!("{}/api/v1/nodes", s.url())]);
                    if r.status != Some(200) {
                        failures.push(format!("LIST: {:?} {}", r.status, r.body));
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a load worker panicked"))
        .collect();
    let load_took = load_start.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.join().expect("the sampler panicked");
    let samples = samples.lock().unwrap().clone();
    let max = samples.iter().copied().max().unwrap_or(0);
    eprintln!(
        "{}: {} requests in {load_took:?}; {} connection samples, max {max}",
        db.db,
        LOAD_WORKERS * LOAD_ROUNDS * 2,
        samples.len()
    );

    assert!(
        failures.is_empty(),
        "{} of {} requests failed under load: {failures:#?}",
        failures.len(),
        LOAD_WORKERS * LOAD_ROUNDS * 2
    );
    assert!(
        samples.len() >= 5,
        "only {} connection samples during the load",
        samples.len()
    );
    assert!(max >= 1, "the sampler never saw the server's connections");
    assert!(
        max <= 2,
        "the database saw {max} connections from a server bounded to 2 (samples: {samples:?})"
    );
    let labels = labels(&s);
    for w in 0..LOAD_WORKERS {
        assert_eq!(
            labels[format!("load-{w}")],
            (LOAD_ROUNDS - 1).to_string(),
            "{labels}"
        );
    }
    let sent = statements(&s) - statements_before;
    assert!(
        sent >= (LOAD_WORKERS * LOAD_ROUNDS * 2) as u64,
        "keelson_datastore_statements_total grew by only {sent} over {} requests",
        LOAD_WORKERS * LOAD_ROUNDS * 2
    );
}

#[test]
fn pool_bound_holds_under_load_on_postgres() {
    pool_bound_holds_under_load(Db::Postgres);
}

#[test]
fn pool_bound_holds_under_load_on_mariadb() {
    pool_bound_holds_under_load(Db::MariaDb);
}

// === a database outage ===

/// A TCP forwarder to the database that the test can cut: [`Forwarder::cut`] closes the
/// listening port (new connections are refused) and shuts down every forwarded connection, as
/// if the database had gone away; [`Forwarder::restore`] listens on the same port again.
struct Forwarder {
    port: u16,
    relay: Arc<Mutex<Relay>>,
    stop: Arc<AtomicBool>,
}

struct Relay {
    /// `None` while cut.
    listener: Option<TcpListener>,
    /// Both ends of every forwarded connection.
    open: Vec<TcpStream>,
}

impl Forwarder {
    fn start(upstream: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the forwarder");
        listener
            .set_nonblocking(true)
            .expect("make the forwarder's listener non-blocking");
        let port = listener
            .local_addr()
            .expect("the forwarder's address")
            .port();
        let relay = Arc::new(Mutex::new(Relay {
            listener: Some(listener),
            open: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (relay.clone(), stop.clone());
        thread::spawn(move || accept_loop(&r, &s, upstream));
        Forwarder { port, relay, stop }
    }

    fn cut(&self) {
        let mut relay = self.relay.lock().unwrap();
        relay.listener = None;
        for s in relay.open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        listen_again(&self.relay, self.port);
    }
}

/// [`Forwarder::restore`], for a thread that holds only the relay.
fn listen_again(relay: &Mutex<Relay>, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cannot listen on {port} again yet: {e}");
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("cannot listen on the forwarder's port {port} again: {e}"),
        }
    };
    listener
        .set_nonblocking(true)
        .expect("make the forwarder's listener non-blocking");
    relay.lock().unwrap().listener = Some(listener);
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// Accepts while listening. A connection is registered under the same lock [`Forwarder::cut`]
/// takes, so none slips through a cut.
fn accept_loop(relay: &Mutex<Relay>, stop: &AtomicBool, upstream: u16) {
    while !stop.load(Ordering::SeqCst) {
        let mut r = relay.lock().unwrap();
        let accepted = r.listener.as_ref().map(|l| l.accept());
        match accepted {
            Some(Ok((client, _))) => {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue; // the client sees its connection closed
                };
                let _ = client.set_nonblocking(false);
                let clones = (client.try_clone(), server.try_clone());
                let (Ok(client2), Ok(server2)) = clones else {
                    continue;
                };
                r.open.push(client2.try_clone().expect("clone a socket"));
                r.open.push(server2.try_clone().expect("clone a socket"));
                pipe(client, server2);
                pipe(server, client2);
            }
            Some(Err(e)) if e.kind() != ErrorKind::WouldBlock => {
                eprintln!("the forwarder failed to accept: {e}");
                drop(r);
                thread::sleep(Duration::from_millis(5));
            }
            _ => {
                drop(r);
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Copies `from` to `to` on a thread until either side ends, then shuts both down.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// `/readyz`'s status; `None` if the server did not answer at all.
fn readyz(s: &Server) -> Option<u16> {
    s.curl_anonymous(&["--max-time", "5", &format!("{}/readyz", s.url())])
        .status
}

const OUTAGE: Duration = Duration::from_secs(20);
/// Longest a request may take to fail while the database is away.
const FAIL_FAST: Duration = Duration::from_secs(10);
/// Longest `/readyz` may keep saying `ok` after the server failed a request for want of the
/// database.
const READY_AGREES: Duration = Duration::from_secs(2);

/// A server that boots before its database: it listens, `/readyz` says it is not ready and
/// why, and it serves by itself once the database appears.
fn waits_for_a_database_that_is_not_there_yet(db: Db) {
    let Some(db) = TestDb::new(db, "late") else {
        return;
    };
    let fwd = Forwarder::start(db.db.port());
    fwd.cut();
    let restorer = {
        let (relay, port) = (fwd.relay.clone(), fwd.port);
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(4));
            listen_again(&relay, port);
        })
    };
    let started = Instant::now();
    let s = Server::start(named("late").arg("--datastore-endpoint", &db.url_endpoint_at(fwd.port)));
    let took = started.elapsed();
    restorer.join().unwrap();
    assert!(
        s.not_ready
            .iter()
            .any(|b| b.contains("datastore") && b.contains("Connection refused")),
        "/readyz never said the datastore refused connections while it was away: {:?}",
        s.not_ready
    );
    // `/readyz` answers anyone: the reason, but not where the database is.
    let at = format!(":{}", fwd.port);
    assert!(
        s.not_ready.iter().all(|b| !b.contains(&at)),
        "/readyz shows the datastore endpoint to anonymous callers: {:?}",
        s.not_ready
    );
    assert!(
        s.log().contains("cannot open the datastore"),
        "the log does not say the datastore could not be opened:\n{}",
        s.log()
    );
    assert!(
        took < Duration::from_secs(4 + 15),
        "ready {took:?} after start, the database came at 4 s"
    );
    assert!(ready_nodes(&s).contains(&"late".to_owned()));
    drop(s);
    drop(fwd);
    drop(db);
}

#[test]
fn waits_for_postgres_to_appear_and_says_why_until_then() {
    waits_for_a_database_that_is_not_there_yet(Db::Postgres);
}

#[test]
fn waits_for_mariadb_to_appear_and_says_why_until_then() {
    waits_for_a_database_that_is_not_there_yet(Db::MariaDb);
}

fn survives_a_database_outage(db: Db) {
    let Some(db) = TestDb::new(db, "outage") else {
        return;
    };
    let fwd = Forwarder::start(db.db.port());
    let s =
        Server::start(named("outage").arg("--datastore-endpoint", &db.url_endpoint_at(fwd.port)));
    for i in 0..3 {
        s.kubectl_ok(&["label", "node", "outage", &format!("before-{i}=kept")]);
    }

    // The outage hits an idle server, as outages do: nothing in flight, the change feed
    // waiting for its next poll.
    thread::sleep(Duration::from_secs(1));
    fwd.cut();
    let cut_at = Instant::now();
    // A write at once: it must fail fast, with a 503 Status, not hang.
    let r = s.curl(&[
        "--max-time",
        "30",
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/merge-patch+json",
        "--data",
        r#"{"metadata":{"labels":{"during-curl":"lost"}}}"#,
        &format!("{}/api/v1/nodes/outage", s.url()),
    ]);
    let answered = Instant::now();
    let took = answered - cut_at;
    assert!(
        took < FAIL_FAST,
        "a PATCH during the outage took {took:?} to fail"
    );
    assert_eq!(
        r.status,
        Some(503),
        "a PATCH during the outage: {} {:?}",
        r.body,
        r.curl
    );
    let status = r.json();
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["code"], 503, "{status}");
    eprintln!("{}: a PATCH failed with 503 after {took:?}", db.db);
    // Once the server has told a client that the datastore is unavailable, /readyz must not
    // keep telling load balancers that it is ready.
    let readyz_at = Instant::now();
    let ready_lag = wait_until(
        "/readyz answering 503 once the server answered a request with 503",
        READY_AGREES,
        || readyz(&s) == Some(503),
    );
    eprintln!(
        "{}: /readyz went 503 {:?} into the outage",
        db.db,
        readyz_at + ready_lag - cut_at
    );

    let started = Instant::now();
    let out = s.kubectl(&[
        "label",
        "node",
        "outage",
        "during-kubectl=lost",
        "--request-timeout=30s",
    ]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kubectl label succeeded while the database was cut off"
    );
    assert!(
        took < FAIL_FAST,
        "kubectl label during the outage took {took:?} to fail: {err}"
    );
    assert!(err.contains("ServiceUnavailable"), "{err}");

    thread::sleep(OUTAGE.saturating_sub(cut_at.elapsed()));
    assert_eq!(
        readyz(&s),
        Some(503),
        "at the end of the outage the server must still answer /readyz, with 503"
    );

    fwd.restore();
    let recovered = wait_until(
        "/readyz ok and kubectl working after the database returned",
        Duration::from_secs(15),
        || readyz(&s) == Some(200) && s.kubectl(&["get", "node", "outage"]).status.success(),
    );
    eprintln!(
        "{}: service back {recovered:?} after the database returned",
        db.db
    );
    s.kubectl_ok(&["label", "node", "outage", "after=landed"]);
    let labels = labels(&s);
    for i in 0..3 {
        assert_eq!(
            labels[format!("before-{i}")],
            "kept",
            "a write acknowledged before the outage was lost: {labels}"
        );
    }
    assert_eq!(labels["after"], "landed", "{labels}");
    for refused in ["during-curl", "during-kubectl"] {
        assert!(
            labels.get(refused).is_none(),
            "a write answered 503 during the outage was applied: {labels}"
        );
    }
    let log = s.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn survives_a_postgres_outage_without_losing_acknowledged_writes() {
    survives_a_database_outage(Db::Postgres);
}

#[test]
fn survives_a_mariadb_outage_without_losing_acknowledged_writes() {
    survives_a_database_outage(Db::MariaDb);
}

// === node lifecycle under the controllers lease ===

/// Whether the node is NotReady (Ready Unknown) with both unreachable taints.
fn unreachable(s: &Server, node: &str) -> bool {
    let n = s.kubectl_json(&["get", "node", node, "-o", "json"]);
    let ready_unknown = n["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "Unknown")
    });
    let effects: Vec<&str> = n["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] == "node.kubernetes.io/unreachable")
        .filter_map(|t| t["effect"].as_str())
        .collect();
    ready_unknown && effects.contains(&"NoSchedule") && effects.contains(&"NoExecute")
}

fn ready_and_untainted(s: &Server, node: &str) -> bool {
    let n = s.kubectl_json(&["get", "node", node, "-o", "json"]);
    let ready = n["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable")
    });
    ready && !tainted
}

/// A server killed outright goes NotReady with the unreachable taints within the grace period
/// (plus one monitor pass), comes back Ready and untainted when it returns, and when the
/// lease holder itself dies the other server takes over the controller.
#[test]
fn silent_nodes_go_unreachable_and_the_controller_survives_its_holder_on_postgres() {
    let Some(db) = TestDb::new(Db::Postgres, "lifecycle") else {
        return;
    };
    let grace = Duration::from_secs(6);
    let with_grace = |o: Options| o.arg("--node-monitor-grace-period", "6s");
    let mut a = Server::start(with_grace(opts("holder", &db)));
    // Let `holder` take the lease before the second server starts.
    thread::sleep(Duration::from_secs(1));
    let token = a.token_path().display().to_string();
    let mut b = Server::start(with_grace(opts("other", &db).arg("--token-file", &token)));

    b.kill();
    let took = wait_until(
        "the killed server's node marked unreachable",
        grace + Duration::from_secs(10),
        || unreachable(&a, "other"),
    );
    eprintln!("killed server marked NotReady after {took:?} (grace {grace:?})");
    b.restart();
    wait_until(
        "the returning node ready and untainted",
        Duration::from_secs(15),
        || ready_and_untainted(&a, "other"),
    );

    // Now kill the lease holder: the other server must take over and mark it unreachable
    // within one lease period (15 s) plus the grace period and a monitor pass.
    a.kill();
    let took = wait_until(
        "the dead holder marked unreachable by the new holder",
        Duration::from_secs(15 + 6 + 10),
        || unreachable(&b, "holder"),
    );
    eprintln!("dead lease holder marked NotReady by the other server after {took:?}");
    assert!(b.log().contains("took the lease"), "{}", b.log());
}

// === agents across servers ===

fn metric(s: &Server, name: &str) -> u64 {
    let r = s.curl(&["--max-time", "2", &format!("{}/metrics", s.url())]);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Three agents tunnelled to two servers: kill the one holding most of them with SIGKILL and
/// every agent is tunnelled to the other within 2 s; no agent's node ever shows NotReady, also
/// after the surviving server took over the node lifecycle controller.
#[test]
fn agents_fail_over_to_the_other_server_within_two_seconds_on_postgres() {
    use common::agent::Agent;
    let Some(db) = TestDb::new(Db::Postgres, "agents") else {
        return;
    };
    let a = Server::start(opts("srv-a", &db));
    let token = a.token_path().display().to_string();
    let b = Server::start(opts("srv-b", &db).arg("--token-file", &token));
    let names = ["edge-1", "edge-2", "edge-3"];
    let agents: Vec<Agent> = names
        .iter()
        .map(|n| Agent::start(&a.url(), &a.token(), n, &[]))
        .collect();
    for agent in &agents {
        agent.wait_log("tunnel connected", Duration::from_secs(60));
    }
    // Every agent has learnt both servers (and kept them in its data dir).
    wait_until(
        "the agents learnt both servers",
        Duration::from_secs(30),
        || {
            agents.iter().all(|ag| {
                std::fs::read_to_string(ag.data_dir().join("agent/servers"))
                    .is_ok_and(|s| s.lines().count() == 2)
            })
        },
    );
    wait_until(
        "the agents' nodes are Ready",
        Duration::from_secs(30),
        || names.iter().all(|n| ready_and_untainted(&b, n)),
    );
    // Agents balance their tunnels over the servers they know: kill the server holding more
    // of them, so at least two must move.
    let (on_a, on_b) = (metric(&a, "keelson_tunnels"), metric(&b, "keelson_tunnels"));
    assert_eq!(on_a + on_b, 3, "every agent holds one tunnel");
    let (mut victim, survivor, victim_name) = if on_a >= on_b {
        (a, b, "srv-a")
    } else {
        (b, a, "srv-b")
    };

    victim.kill();
    let killed = Instant::now();
    while metric(&survivor, "keelson_tunnels") < 3 {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the agents did not reach the surviving server"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed();
    eprintln!(
        "{} agents tunnelled to the surviving server {took:?} after the kill",
        on_a.max(on_b)
    );
    assert!(took <= Duration::from_secs(2), "failover took {took:?}");

    // Through the grace period, the lease takeover and the dead server's own NotReady, the
    // agents' nodes stay Ready.
    let watch_until = Instant::now() + Duration::from_secs(35);
    let mut server_marked = false;
    while Instant::now() < watch_until {
        for n in names {
            assert!(
                ready_and_untainted(&survivor, n),
                "{n} showed NotReady after the failover"
            );
        }
        server_marked = server_marked || unreachable(&survivor, victim_name);
        if server_marked && killed.elapsed() > Duration::from_secs(20) {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        server_marked,
        "the dead server's node was never marked unreachable by the survivor"
    );
}

/// The pods of `selector` as `(name, node)`.
fn pods_of(s: &Server, selector: &str) -> Vec<(String, String)> {
    let list = s.kubectl_json(&["get", "pods", "-l", selector, "-o", "json"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_controllers_move_to_the_other_server_mid_scale_up_and_finish_exactly() {
    let Some(db) = TestDb::new(Db::Postgres, "ctrl") else {
        return;
    };
    let mut a = Server::start(opts("server-a", &db));
    let mut b = Server::start(
        opts("server-b", &db).arg("--token-file", &a.token_path().display().to_string()),
    );
    let both = vec!["server-a".to_owned(), "server-b".to_owned()];
    wait_until("both nodes Ready", Duration::from_secs(30), || {
        ready_nodes(&a) == both
    });
    let holder = || {
        let lease = a.kubectl_json(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "keelson-controllers",
            "-o",
            "json",
        ]);
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    wait_until(
        "a controllers lease holder",
        Duration::from_secs(30),
        || !holder().is_empty(),
    );
    let a_leads = holder().starts_with("server-a");
    let (leader, survivor) = if a_leads {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    let manifest = survivor.dir().join("big.yaml");
    std::fs::write(
        &manifest,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: big}
spec:
  replicas: 200
  selector: {matchLabels: {app: big}}
  template:
    metadata: {labels: {app: big}}
    spec:
      containers: [{name: c, image: "busybox:1.36", resources: {requests: {cpu: 1m, memory: 1Mi}}}]
"#,
    )
    .unwrap();
    survivor.kubectl_ok(&["apply", "-f", &manifest.display().to_string()]);
    // Kill the holder in the middle of the scale-up.
    wait_until("the scale-up has begun", Duration::from_secs(30), || {
        !pods_of(survivor, "app=big").is_empty()
    });
    leader.kill();
    let took = wait_until(
        "200 pods, all bound, after the takeover",
        Duration::from_secs(90),
        || {
            let p = pods_of(survivor, "app=big");
            p.len() == 200 && p.iter().all(|(_, n)| !n.is_empty())
        },
    );
    eprintln!("took {took:?} after the kill");
    // Exactly 200, and stays so: nothing made twice by the two holders.
    std::thread::sleep(Duration::from_secs(3));
    let p = pods_of(survivor, "app=big");
    assert_eq!(p.len(), 200);
    let mut names: Vec<&String> = p.iter().map(|(n, _)| n).collect();
    names.dedup();
    assert_eq!(names.len(), 200);
    let rs = survivor.kubectl_json(&["get", "rs", "-l", "app=big", "-o", "json"]);
    assert_eq!(
        rs["items"].as_array().map(Vec::len),
        Some(1),
        "one ReplicaSet"
    );
}

/// `kubectl logs` through a server the pod's node is not tunnelled to still reaches the node:
/// the request goes through the datastore to the server that holds the tunnel, and the node
/// dials the asking server back. (The agent runs no containers, so the node's own refusal is
/// what proves the request reached it.)
#[test]
fn pod_streams_reach_a_node_tunnelled_to_another_server() {
    use common::agent::Agent;
    let Some(db) = TestDb::new(Db::Postgres, "streams") else {
        return;
    };
    let a = Server::start(opts("srv-a", &db));
    let token = a.token_path().display().to_string();
    let b = Server::start(opts("srv-b", &db).arg("--token-file", &token));
    let agent = Agent::start(&a.url(), &a.token(), "edge-s", &[]);
    agent.wait_log("tunnel connected", Duration::from_secs(60));
    wait_until("the agent's node is Ready", Duration::from_secs(30), || {
        ready_and_untainted(&b, "edge-s")
    });
    let (holder, other) = if metric(&a, "keelson_tunnels") == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    other.kubectl_ok(&[
        "run",
        "far",
        "--image=busybox",
        "--restart=Never",
        "--overrides={\"spec\":{\"nodeName\":\"edge-s\"}}",
    ]);
    for (s, what) in [(other, "the other server"), (holder, "the tunnel's server")] {
        let out = s.kubectl(&["logs", "far"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("the node runs no container runtime"),
            "logs through {what} should reach the node and carry its answer: {err}"
        );
    }
}
