//! High availability on the real PostgreSQL and MariaDB of this machine: several servers on one
//! database, shared trust, refused joins that leave no trace, a bounded pool, and a database
//! outage under a running server.
//!
//! Every test makes its own database and drops it. A missing database server is a loud skip on
//! a developer's machine and a failure under `CI=true`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Options, Server};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Db {
    Postgres,
    MariaDb,
}

/// A database for one test, dropped when the guard goes.
struct TestDb {
    db: Db,
    name: String,
}

impl TestDb {
    fn new(db: Db, test: &str) -> Option<TestDb> {
        let t = TestDb {
            db,
            name: format!("keelson_ha_{test}_{}", std::process::id()),
        };
        if let Err(e) = t.admin("SELECT 1") {
            let msg = format!("{db:?} is not reachable on 127.0.0.1: {e}");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg} (required in CI: .ci/run starts it)");
            }
            eprintln!("\n!!! SKIPPING {test}: {msg}\n");
            return None;
        }
        t.drop_database();
        Some(t)
    }

    /// The endpoint as an operator writes it (K3s's Go DSN form for MariaDB).
    fn endpoint(&self) -> String {
        self.endpoint_at(match self.db {
            Db::Postgres => 5432,
            Db::MariaDb => 3306,
        })
    }

    fn endpoint_at(&self, port: u16) -> String {
        match self.db {
            Db::Postgres => format!("postgres://postgres@127.0.0.1:{port}/{}", self.name),
            Db::MariaDb => format!("mysql://root@tcp(127.0.0.1:{port})/{}", self.name),
        }
    }

    /// Runs SQL through the command-line client connected to the server's own admin database,
    /// so the sampling connection is never counted as one of ours.
    fn admin(&self, sql: &str) -> Result<String, String> {
        self.run(None, sql)
    }

    /// Runs SQL in the test's database.
    fn query(&self, sql: &str) -> String {
        self.run(Some(&self.name), sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn run(&self, database: Option<&str>, sql: &str) -> Result<String, String> {
        let out = match self.db {
            Db::Postgres => Command::new("psql")
                .args([
                    "-qAt",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    database.unwrap_or("postgres"),
                    "-c",
                    sql,
                ])
                .output(),
            Db::MariaDb => {
                let mut c = Command::new("mariadb");
                c.args(["-h", "127.0.0.1", "-uroot", "-N", "-B", "-e", sql]);
                if let Some(d) = database {
                    c.arg(d);
                }
                c.output()
            }
        }
        .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn connections(&self) -> usize {
        let sql = match self.db {
            Db::Postgres => format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ),
            Db::MariaDb => format!(
                "SELECT count(*) FROM information_schema.processlist WHERE db = '{}'",
                self.name
            ),
        };
        self.admin(&sql)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn drop_database(&self) {
        let sql = match self.db {
            Db::Postgres => format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            Db::MariaDb => format!("DROP DATABASE IF EXISTS `{}`", self.name),
        };
        let _ = self.admin(&sql);
    }

    /// What a refused server could have touched: history, the counter, secrets, nodes.
    fn snapshot(&self) -> String {
        self.query(
            "SELECT (SELECT count(*) FROM keelson_events), (SELECT value FROM keelson_meta WHERE name = 'revision'), \
             (SELECT count(*) FROM keelson_secrets), (SELECT count(*) FROM keelson_objects)",
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.drop_database();
    }
}

fn named(node: impl Into<String>) -> Options {
    let mut o = Options::default();
    o.node_name = node.into();
    o
}

fn opts(node: &str, db: &TestDb) -> Options {
    named(node).arg("--datastore-endpoint", &db.endpoint())
}

fn cacerts(s: &Server) -> String {
    let r = s.curl_anonymous(&[&format!("{}/cacerts", s.url())]);
    assert_eq!(r.status, Some(200), "{:?}", r.curl);
    r.body
}

fn ready_nodes(s: &Server) -> Vec<String> {
    let list = s.kubectl_json(&["get", "nodes", "-o", "json"]);
    list["items"]
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
        .collect()
}

// === two servers, one cluster ===

fn two_servers_form_one_cluster(db: Db) {
    let Some(db) = TestDb::new(db, "two") else {
        return;
    };
    let a = Server::start(opts("server-a", &db));
    let token_file = a.token_path();
    let b =
        Server::start(opts("server-b", &db).arg("--token-file", &token_file.display().to_string()));

    for s in [&a, &b] {
        let mut nodes = ready_nodes(s);
        nodes.sort();
        assert_eq!(
            nodes,
            vec!["server-a", "server-b"],
            "through {}",
            s.node_name()
        );
    }
    assert_eq!(
        cacerts(&a),
        cacerts(&b),
        "both servers must serve certificates from the one CA"
    );
    // A kubeconfig from either server works against the other (same CA, same admin trust).
    let out = b.kubectl_with(&a.kubeconfig(), &["get", "node", "server-b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let watch = b.watch(&["nodes"]);
    a.kubectl_ok(&["label", "node", "server-a", "written-through=a"]);
    watch.next(
        |n| {
            n["metadata"]["name"] == "server-a" && n["metadata"]["labels"]["written-through"] == "a"
        },
        "the label written through server A, on a watch held on server B",
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
    let before = db.snapshot();

    let wrong = Server::try_start(opts("intruder", &db).arg("--token", "not-the-cluster-token"));
    let e = wrong.err().expect("a server with the wrong token started");
    assert!(!e.status.success());
    assert!(
        e.log.contains("the token does not open the cluster data"),
        "{}",
        e.log
    );

    let token = a.token();
    let odd = Server::try_start(
        opts("odd", &db)
            .arg("--token", &token)
            .arg("--cluster-cidr", "10.99.0.0/16")
            .arg("--disable", "traefik"),
    );
    let e = odd.err().expect("a server with different settings started");
    assert!(
        e.log
            .contains(r#"--cluster-cidr is "10.99.0.0/16" here but "10.42.0.0/16" in the cluster"#),
        "{}",
        e.log
    );
    assert!(
        e.log
            .contains(r#"--disable is "traefik" here but "" in the cluster"#),
        "{}",
        e.log
    );

    assert_eq!(
        db.snapshot(),
        before,
        "a refused server wrote to the database"
    );
    let nodes = a.kubectl_ok(&["get", "nodes", "-o", "name"]);
    assert!(
        !nodes.contains("intruder") && !nodes.contains("odd"),
        "{nodes}"
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

fn three_servers_at_once_make_one_ca(db: Db) {
    let Some(db) = TestDb::new(db, "three") else {
        return;
    };
    let endpoint = db.endpoint();
    let starts: Vec<_> = (0..3)
        .map(|i| {
            let endpoint = endpoint.clone();
            thread::spawn(move || {
                Server::start(
                    named(format!("server-{i}"))
                        .arg("--datastore-endpoint", &endpoint)
                        .arg("--token", "one-secret-for-all-three"),
                )
            })
        })
        .collect();
    let servers: Vec<Server> = starts
        .into_iter()
        .map(|t| t.join().expect("a server failed to start"))
        .collect();
    let ca = cacerts(&servers[0]);
    for s in &servers {
        assert_eq!(cacerts(s), ca, "{} serves another CA", s.node_name());
        let log = s.log();
        assert!(
            !log.contains("ERROR") && !log.to_lowercase().contains("migrat"),
            "{log}"
        );
    }
    assert_eq!(
        db.query("SELECT count(*) FROM keelson_secrets WHERE name = 'cluster'"),
        "1"
    );
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

fn pool_bound_holds_under_load(db: Db) {
    let Some(db) = TestDb::new(db, "pool") else {
        return;
    };
    let s = Arc::new(Server::start(
        opts("pool", &db).arg("--datastore-max-open-connections", "2"),
    ));
    let db = Arc::new(db);
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (db, done, max_seen) = (db.clone(), done.clone(), max_seen.clone());
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                max_seen.fetch_max(db.connections(), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let workers: Vec<_> = (0..12)
        .map(|w| {
            let s = s.clone();
            thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..5 {
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
        .flat_map(|w| w.join().unwrap())
        .collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(
        failures.is_empty(),
        "requests failed under load: {failures:?}"
    );
    let max = max_seen.load(Ordering::Relaxed);
    assert!(max >= 1, "the sampler never saw the server's connections");
    assert!(
        max <= 2,
        "the database saw {max} connections from a server bounded to 2"
    );
    let labels = s.node()["metadata"]["labels"].clone();
    for w in 0..12 {
        assert_eq!(labels[format!("load-{w}")], "4", "{labels}");
    }
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

/// A TCP forwarder the test can cut: while cut, open connections are shut down and new ones
/// are closed at once, as if the database had gone away.
struct Forwarder {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Forwarder {
    fn start(upstream: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut conns = o.lock().unwrap();
                conns.push(client.try_clone().unwrap());
                conns.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Forwarder { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

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
    });
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

fn readyz(s: &Server) -> Option<u16> {
    s.curl_anonymous(&["--max-time", "5", &format!("{}/readyz", s.url())])
        .status
}

fn survives_a_database_outage(db: Db) {
    let Some(db) = TestDb::new(db, "outage") else {
        return;
    };
    let upstream = match db.db {
        Db::Postgres => 5432,
        Db::MariaDb => 3306,
    };
    let fwd = Forwarder::start(upstream);
    let s = Server::start(
        named("outage")
            .arg("--datastore-endpoint", &db.endpoint_at(fwd.port))
            .arg("--datastore-acquire-timeout", "2s"),
    );
    for i in 0..3 {
        s.kubectl_ok(&["label", "node", "outage", &format!("before-{i}=kept")]);
    }

    fwd.cut();
    let cut_at = Instant::now();
    wait_until("/readyz reporting 503", Duration::from_secs(15), || {
        readyz(&s) == Some(503)
    });
    let started = Instant::now();
    let out = s.kubectl(&[
        "label",
        "node",
        "outage",
        "during=lost",
        "--request-timeout=20s",
    ]);
    let took = started.elapsed();
    assert!(
        !out.status.success(),
        "a write succeeded while the database was cut off"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ServiceUnavailable")
            || err.contains("unavailable")
            || err.contains("unreachable"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the failing write took {took:?}"
    );
    thread::sleep(Duration::from_secs(20).saturating_sub(cut_at.elapsed()));
    assert_eq!(
        readyz(&s),
        Some(503),
        "ready while the database is still cut off"
    );

    fwd.restore();
    let recovered = wait_until(
        "recovery after the database returned",
        Duration::from_secs(15),
        || readyz(&s) == Some(200) && s.kubectl(&["get", "node", "outage"]).status.success(),
    );
    eprintln!(
        "{:?}: service back {recovered:?} after the database returned",
        db.db
    );
    s.kubectl_ok(&["label", "node", "outage", "after=landed"]);
    let labels = s.node()["metadata"]["labels"].clone();
    for i in 0..3 {
        assert_eq!(
            labels[format!("before-{i}")],
            "kept",
            "an acknowledged write was lost: {labels}"
        );
    }
    assert_eq!(labels["after"], "landed");
    assert!(!s.log().contains("panicked"), "{}", s.log());
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
