//! Multi-primary MariaDB Galera: three database nodes in network namespaces
//! (`common::galera`), one keelson server per node, every server writing.
//!
//! - Concurrent writes through all three servers: every write is answered 201 (certification
//!   conflicts are retried inside the datastore, never a 500); every server's watch shows the
//!   same strictly increasing revisions; each node's history is gapless and identical. The same
//!   load through three servers on the machine's one plain MariaDB gives the throughput beside
//!   it (`FIGURE` lines).
//! - Cross-node change feed: a write through one server reaches watches held on the other two
//!   (other nodes) within 100 ms at the median; p50/p99 printed as `FIGURE`.
//! - kill -9 of one node's `mariadbd` under write load: the servers of the other two keep
//!   answering writes, the third says it cannot reach its database, and every acknowledged
//!   write is there afterwards, in one gapless history.
//!
//! The clusters are heavy for a two-core machine (three `mariadbd`, three debug servers), so
//! the tests of this file take turns. Missing prerequisites (root, mariadb-server, galera-4,
//! rsync) fail unless `KEELSON_ALLOW_SKIP=1`.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::db::{Db, TestDb};
use common::galera::Cluster;
use common::{Options, Server, wait_until};

/// Bounds asserted on the cross-node feed latency. The goal is 100 ms for every write; on this
/// noisy, shared two-core machine (debug servers, three `mariadbd`) the median is held to it
/// and the 99th percentile to 500 ms. Without cross-node rings both would be seconds (a write
/// waits for the other servers' 5 s park to end).
const FEED_P50: Duration = Duration::from_millis(100);
const FEED_P99: Duration = Duration::from_millis(500);

/// One Galera cluster at a time per test process.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn named(node: &str) -> Options {
    let mut o = Options::default();
    o.node_name = node.into();
    o
}

/// One keelson server per database node: `server-1` first (it creates the schema, the
/// cluster's CA and the system objects), then the two others at the same moment, joining
/// with its token through other nodes.
fn servers_on(cluster: &Cluster) -> Vec<Server> {
    let first = Server::start(named("server-1").arg("--datastore-endpoint", &cluster.endpoint(0)));
    let token = first.token_path().display().to_string();
    let mut servers = vec![first];
    servers.extend(start_at_once(cluster, &[1, 2], &["--token-file", &token]));
    assert_one_ca(&servers);
    servers
}

/// Servers `server-<i+1>` on nodes `which`, started at the same moment with `extra` flags.
fn start_at_once(cluster: &Cluster, which: &[usize], extra: &[&str]) -> Vec<Server> {
    let go = std::sync::Barrier::new(which.len());
    let started: Vec<_> = thread::scope(|scope| {
        let starts: Vec<_> = which
            .iter()
            .map(|&i| {
                let go = &go;
                let mut o = named(&format!("server-{}", i + 1))
                    .arg("--datastore-endpoint", &cluster.endpoint(i));
                for pair in extra.chunks(2) {
                    if let [flag, value] = pair {
                        o = o.arg(flag, value);
                    }
                }
                scope.spawn(move || {
                    go.wait();
                    Server::start(o)
                })
            })
            .collect();
        // Join all before failing, so every server is stopped before the cluster goes.
        starts.into_iter().map(|t| t.join()).collect()
    });
    started
        .into_iter()
        .map(|r| r.unwrap_or_else(|_| panic!("a server failed to start (see its panic above)")))
        .collect()
}

/// Every server serves the one cluster CA.
fn assert_one_ca(servers: &[Server]) {
    let cacerts = |s: &Server| {
        let r = s.curl_anonymous(&[&format!("{}/cacerts", s.url())]);
        assert_eq!(r.status, Some(200), "/cacerts on {}", s.node_name());
        r.body
    };
    let ca = cacerts(&servers[0]);
    assert_eq!(
        ca.matches("-----BEGIN CERTIFICATE-----").count(),
        1,
        "/cacerts must hold exactly one CA:\n{ca}"
    );
    for s in &servers[1..] {
        assert_eq!(cacerts(s), ca, "{} serves another CA", s.node_name());
    }
}

// === clients ===

/// The admin's TLS options for curl, in a `-K` config.
fn tls_config(s: &Server) -> String {
    let (ca, cert, key) = s.admin_credentials();
    format!(
        "cacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// One create's answer: the HTTP status (0: none), when curl started, and when the request
/// had been sent (curl's own pre-transfer time after its start) and answered.
#[derive(Debug, Clone)]
struct Answer {
    name: String,
    status: u16,
    sent: Instant,
    answered: Instant,
}

/// Creates ConfigMaps `names` in `default` through `s`, one after the other, with one curl
/// process per request (so each has its own timing).
fn create_each(s: &Server, names: &[String]) -> Vec<Answer> {
    let url = format!("{}/api/v1/namespaces/default/configmaps", s.url());
    let (ca, cert, key) = s.admin_credentials();
    names
        .iter()
        .map(|name| {
            let started = Instant::now();
            let out = common::run(
                Command::new("curl")
                    .args(["--silent", "--max-time", "30", "-o", "/dev/null"])
                    .args(["--write-out", "%{http_code} %{time_pretransfer}"])
                    .arg("--cacert")
                    .arg(&ca)
                    .arg("--cert")
                    .arg(&cert)
                    .arg("--key")
                    .arg(&key)
                    .args(["-H", "Content-Type: application/json", "--data-binary"])
                    .arg(format!(r#"{{"metadata":{{"name":"{name}"}}}}"#))
                    .arg(&url),
                Duration::from_secs(40),
            );
            let answered = Instant::now();
            let text = String::from_utf8_lossy(&out.stdout);
            let mut fields = text.split_whitespace();
            let status = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            let pretransfer = fields
                .next()
                .and_then(|t| t.parse::<f64>().ok())
                .unwrap_or(0.0);
            Answer {
                name: name.clone(),
                status,
                sent: started + Duration::from_secs_f64(pretransfer),
                answered,
            }
        })
        .collect()
}

/// Creates ConfigMaps `names` through `s` with one curl process (a `-K` config of many
/// requests, each on a kept-alive connection): the statuses, in order.
fn create_bulk(s: &Server, names: &[String]) -> Vec<u16> {
    let url = format!("{}/api/v1/namespaces/default/configmaps", s.url());
    let tls = tls_config(s);
    let mut config = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            config.push_str("next\n");
        }
        config.push_str(&tls);
        config.push_str(&format!(
            "url = \"{url}\"\nheader = \"Content-Type: application/json\"\ndata = \"{{\\\"metadata\\\":{{\\\"name\\\":\\\"{name}\\\"}}}}\"\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\n"
        ));
    }
    let path = s.dir().join(format!(
        "bulk-{}.curl",
        names.first().map_or("none", String::as_str)
    ));
    fs::write(&path, config).expect("write the curl config");
    let out = common::run(
        Command::new("curl")
            .args(["--silent", "--max-time", "60", "-K"])
            .arg(&path),
        Duration::from_secs(600),
    );
    let statuses: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect();
    assert_eq!(
        statuses.len(),
        names.len(),
        "curl answered {} of {} creates: {}",
        statuses.len(),
        names.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    statuses
}

/// The ConfigMaps list of `default` through `s`: its resourceVersion and the items' names.
fn list(s: &Server) -> (i64, Vec<String>) {
    let r = s.curl(&[&format!("{}/api/v1/namespaces/default/configmaps", s.url())]);
    assert_eq!(
        r.status,
        Some(200),
        "list through {}: {}",
        s.node_name(),
        r.body
    );
    let v = r.json();
    let rv = v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("the list has a resourceVersion");
    let names = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    (rv, names)
}

/// A raw watch of `default`'s ConfigMaps from a resourceVersion, held by curl; every event is
/// kept with the moment it arrived.
struct Stream {
    child: Child,
    events: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Stream {
    fn open(s: &Server, from: i64) -> Stream {
        let (ca, cert, key) = s.admin_credentials();
        let mut child = Command::new("curl")
            .args(["--silent", "--no-buffer", "--max-time", "600"])
            .arg("--cacert")
            .arg(ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg(format!(
                "{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={from}",
                s.url()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn curl for a watch");
        let stdout = child.stdout.take().expect("piped stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        thread::spawn(move || {
            // One event per line: the arrival time is taken as its line is complete.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let at = Instant::now();
                if let Ok(ev) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push((at, ev));
                }
            }
        });
        Stream { child, events }
    }

    /// (arrival, resourceVersion, name) of every ADDED event so far whose name starts with
    /// `prefix`, in arrival order.
    fn added(&self, prefix: &str) -> Vec<(Instant, i64, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, ev)| ev["type"] == "ADDED")
            .filter_map(|(at, ev)| {
                let meta = &ev["object"]["metadata"];
                let name = meta["name"].as_str()?;
                let rv = meta["resourceVersion"].as_str()?.parse().ok()?;
                name.starts_with(prefix).then(|| (*at, rv, name.to_owned()))
            })
            .collect()
    }

    /// Waits until `n` events with `prefix` arrived; panics after `limit`.
    fn wait_for(&self, prefix: &str, n: usize, limit: Duration, what: &str) {
        let start = Instant::now();
        loop {
            let got = self.added(prefix).len();
            if got >= n {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{what}: the watch showed {got} of {n} creates within {limit:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === checks ===

/// The node's `keelson_events` revisions: (count, lowest, highest, a checksum of revisions
/// and paths), to show a gapless history and compare nodes.
fn history(cluster: &Cluster, i: usize) -> (i64, i64, i64, String) {
    let out = cluster
        .sql(
            i,
            true,
            "SELECT COUNT(*), MIN(revision), MAX(revision), \
             BIT_XOR(CRC32(CONCAT(revision, ' ', path, ' ', kind))) FROM keelson_events",
        )
        .unwrap_or_else(|e| panic!("read node {}'s history: {e}", i + 1));
    let f: Vec<&str> = out.split_whitespace().collect();
    let num = |k: usize| -> i64 { f.get(k).and_then(|v| v.parse().ok()).unwrap_or(-1) };
    (num(0), num(1), num(2), f.get(3).unwrap_or(&"").to_string())
}

/// Every node in `nodes` holds the same history, and it has no gap.
fn assert_one_gapless_history(cluster: &Cluster, nodes: &[usize]) -> (i64, i64) {
    // A node may still be applying the last write sets: give it a moment to agree.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = nodes
            .iter()
            .map(|&i| history(cluster, i))
            .collect::<Vec<_>>();
        if seen.windows(2).all(|w| w[0] == w[1]) || Instant::now() > deadline {
            break seen;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "the nodes {nodes:?} hold different histories (count, min, max, checksum): {seen:?}"
    );
    let (count, min, max, _) = &seen[0];
    assert_eq!(
        *count,
        max - min + 1,
        "the history has gaps: {count} events between revisions {min} and {max}"
    );
    (*min, *max)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `per_server` creates through each server, `streams` curl processes per server at
/// once; returns every status and the elapsed time.
fn concurrent_creates(
    servers: &[&Server],
    prefix: &str,
    streams: usize,
    per_stream: usize,
) -> (Vec<u16>, Duration) {
    let start = Instant::now();
    let statuses = thread::scope(|scope| {
        let mut handles = Vec::new();
        for (k, s) in servers.iter().enumerate() {
            for t in 0..streams {
                let names: Vec<String> = (0..per_stream)
                    .map(|i| format!("{prefix}{k}-{t}-{i:04}"))
                    .collect();
                handles.push(scope.spawn(move || create_bulk(s, &names)));
            }
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a writer thread"))
            .collect::<Vec<u16>>()
    });
    (statuses, start.elapsed())
}

fn status_counts(statuses: &[u16]) -> Vec<(u16, usize)> {
    let mut counts: Vec<(u16, usize)> = Vec::new();
    for s in statuses {
        match counts.iter_mut().find(|(c, _)| c == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((*s, 1)),
        }
    }
    counts.sort();
    counts
}

// === tests ===

/// Writers on three nodes collide on the revision row all the time; the datastore retries what
/// Galera certified away, so callers see only 201s, and all three watches agree on one order.
#[test]
fn concurrent_writes_through_three_nodes_keep_one_gapless_order_and_never_answer_500() {
    let _turn = serial();
    let Some(cluster) = Cluster::new("order") else {
        return;
    };
    let servers = servers_on(&cluster);
    let (rv, _) = list(&servers[0]);
    let streams: Vec<Stream> = servers.iter().map(|s| Stream::open(s, rv)).collect();
    let conflicts_before = cluster.conflicts();

    const STREAMS: usize = 2;
    const EACH: usize = 60;
    let total = 3 * STREAMS * EACH;
    let refs: Vec<&Server> = servers.iter().collect();
    let (statuses, took) = concurrent_creates(&refs, "gw-", STREAMS, EACH);
    let conflicts = cluster.conflicts() - conflicts_before;
    let counts = status_counts(&statuses);
    eprintln!(
        "FIGURE galera write throughput: {total} creates through 3 servers on 3 Galera nodes \
         ({STREAMS} curl streams each) in {:.2} s = {:.0} creates/s; {conflicts} transactions \
         rolled back by Galera and retried; answers {counts:?}",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    assert_eq!(
        counts,
        vec![(201, total)],
        "every create through every server must be answered 201 Created"
    );
    assert!(
        conflicts > 0,
        "no certification conflict happened, so this run did not show that they are retried"
    );

    // Every watch shows every create, in one order, the same on all three servers.
    for (s, stream) in servers.iter().zip(&streams) {
        stream.wait_for("gw-", total, Duration::from_secs(30), s.node_name());
    }
    let orders: Vec<Vec<(i64, String)>> = streams
        .iter()
        .map(|st| {
            st.added("gw-")
                .into_iter()
                .map(|(_, rv, name)| (rv, name))
                .collect()
        })
        .collect();
    for (s, order) in servers.iter().zip(&orders) {
        assert!(
            order.windows(2).all(|w| w[0].0 < w[1].0),
            "{}'s watch delivered revisions out of order: {:?}",
            s.node_name(),
            order.iter().map(|(rv, _)| rv).collect::<Vec<_>>()
        );
        assert_eq!(
            order,
            &orders[0],
            "{}'s watch differs from {}'s",
            s.node_name(),
            servers[0].node_name()
        );
    }
    let (min, max) = assert_one_gapless_history(&cluster, &[0, 1, 2]);
    eprintln!("galera: one gapless history on all three nodes, revisions {min}..={max}");

    // The same load through three servers on the machine's one plain MariaDB, for the figure.
    drop(streams);
    drop(servers);
    drop(cluster);
    let Some(db) = TestDb::new(Db::MariaDb, "galera_baseline") else {
        return;
    };
    let first = Server::start(named("plain-1").arg("--datastore-endpoint", &db.endpoint()));
    let token = first.token_path().display().to_string();
    let others: Vec<Server> = (2..=3)
        .map(|i| {
            Server::start(
                named(&format!("plain-{i}"))
                    .arg("--datastore-endpoint", &db.endpoint())
                    .arg("--token-file", &token),
            )
        })
        .collect();
    let refs: Vec<&Server> = std::iter::once(&first).chain(&others).collect();
    let (statuses, plain) = concurrent_creates(&refs, "gp-", STREAMS, EACH);
    let counts = status_counts(&statuses);
    eprintln!(
        "FIGURE plain MariaDB write throughput: the same {total} creates through 3 servers on one \
         MariaDB in {:.2} s = {:.0} creates/s (Galera took {:.2}x as long); answers {counts:?}",
        plain.as_secs_f64(),
        total as f64 / plain.as_secs_f64(),
        took.as_secs_f64() / plain.as_secs_f64()
    );
    assert_eq!(counts, vec![(201, total)]);
}

/// A write through one server reaches the watches held on the servers of the two other nodes
/// at once: the writer rings the parked statements on every node, not only its own.
#[test]
fn a_write_through_one_node_reaches_watches_on_the_others_within_100ms() {
    let _turn = serial();
    let Some(cluster) = Cluster::new("feed") else {
        return;
    };
    let servers = servers_on(&cluster);
    let (rv, _) = list(&servers[0]);
    let streams: Vec<Stream> = servers.iter().map(|s| Stream::open(s, rv)).collect();
    // Quiet first: the servers' own start-up writes are done, parked statements are parked.
    thread::sleep(Duration::from_secs(2));

    const ROUNDS: usize = 20;
    // Per write, from its event on the writing server's own watch (woken by the commit
    // itself) to the same event on each other server's: the cross-node part alone.
    let mut cross = Vec::new();
    // From the request leaving the client, the write's own time included.
    let mut end_to_end = Vec::new();
    for round in 0..ROUNDS {
        for (k, writer) in servers.iter().enumerate() {
            let name = format!("gf-{k}-{round:03}");
            let answer = create_each(writer, std::slice::from_ref(&name)).remove(0);
            assert_eq!(
                answer.status,
                201,
                "create {name} through {}",
                writer.node_name()
            );
            let arrivals: Vec<Instant> = streams
                .iter()
                .enumerate()
                .map(|(j, stream)| {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        if let Some((at, _, _)) =
                            stream.added(&name).into_iter().find(|(_, _, n)| *n == name)
                        {
                            return at;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "{name}, written through {}, never reached {}'s watch",
                            writer.node_name(),
                            servers[j].node_name()
                        );
                        thread::sleep(Duration::from_millis(1));
                    }
                })
                .collect();
            for (j, at) in arrivals.iter().enumerate() {
                if j != k {
                    cross.push(at.saturating_duration_since(arrivals[k]));
                    end_to_end.push(at.saturating_duration_since(answer.sent));
                }
            }
            // Apart, so each write is timed on its own (and rings are not merged).
            thread::sleep(Duration::from_millis(100));
        }
    }
    cross.sort();
    end_to_end.sort();
    let (p50, p99, max) = (
        percentile(&cross, 0.5),
        percentile(&cross, 0.99),
        cross[cross.len() - 1],
    );
    eprintln!(
        "FIGURE galera cross-node feed latency ({} samples: a write's event on a watch held on \
         a server of another node, after the same event on the writing server's own watch): \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; from the request leaving the client, the \
         write included: p50 {:.1} ms, p99 {:.1} ms",
        cross.len(),
        ms(p50),
        ms(p99),
        ms(max),
        ms(percentile(&end_to_end, 0.5)),
        ms(percentile(&end_to_end, 0.99)),
    );
    assert!(
        p50 <= FEED_P50 && p99 <= FEED_P99,
        "cross-node feed latency p50 {:.1} ms (bound {FEED_P50:?}), p99 {:.1} ms (bound {FEED_P99:?})",
        ms(p50),
        ms(p99)
    );
}

/// A database node dies under write load: the servers of the other two keep answering writes,
/// the third says it cannot reach its database, and nothing that was acknowledged is lost.
#[test]
fn killing_one_database_node_leaves_the_other_two_servers_serving_and_loses_nothing() {
    let _turn = serial();
    let Some(mut cluster) = Cluster::new("kill") else {
        return;
    };
    let servers = servers_on(&cluster);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let killed_at: Mutex<Option<Instant>> = Mutex::new(None);

    // Two writers per server, so writes through different nodes also collide (and are
    // certified away and retried) while the cluster changes its view.
    const WRITERS: usize = 2;
    let answers: Vec<Vec<Answer>> = thread::scope(|scope| {
        let writers: Vec<Vec<_>> = servers
            .iter()
            .enumerate()
            .map(|(k, s)| {
                (0..WRITERS)
                    .map(|t| {
                        let stop = &stop;
                        scope.spawn(move || {
                            let mut out = Vec::new();
                            let mut i = 0;
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                let name = format!("gk-{k}-{t}-{i:05}");
                                out.extend(create_each(s, &[name]));
                                i += 1;
                                // Bounded: a few hundred creates at most.
                                if i >= 400 {
                                    break;
                                }
                            }
                            out
                        })
                    })
                    .collect()
            })
            .collect();
        thread::sleep(Duration::from_secs(4));
        cluster.kill(2);
        *killed_at.lock().unwrap() = Some(Instant::now());
        eprintln!("galera: killed node 3's mariadbd (kill -9) under write load");
        thread::sleep(Duration::from_secs(10));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writers
            .into_iter()
            .map(|per_server| {
                per_server
                    .into_iter()
                    .flat_map(|w| w.join().expect("a writer thread"))
                    .collect()
            })
            .collect()
    });
    let killed_at = killed_at.lock().unwrap().expect("the node was killed");

    // The servers of the surviving nodes answered every write, before and after, with 201.
    for (k, s) in servers.iter().enumerate().take(2) {
        let after: Vec<&Answer> = answers[k].iter().filter(|a| a.sent > killed_at).collect();
        let bad: Vec<(&str, u16)> = answers[k]
            .iter()
            .filter(|a| a.status != 201)
            .map(|a| (a.name.as_str(), a.status))
            .collect();
        assert!(bad.is_empty(), "{} refused writes: {bad:?}", s.node_name());
        assert!(
            after.len() >= 5,
            "{} answered only {} writes after the node died",
            s.node_name(),
            after.len()
        );
        let slowest = answers[k]
            .iter()
            .map(|a| a.answered - a.sent)
            .max()
            .unwrap_or_default();
        eprintln!(
            "FIGURE galera node loss: {} answered {} creates ({} after the kill), all 201; \
             slowest {:.0} ms",
            s.node_name(),
            answers[k].len(),
            after.len(),
            ms(slowest)
        );
    }
    // The third server's database is gone: it says so (503), never 500.
    let third: Vec<(&str, u16)> = answers[2]
        .iter()
        .filter(|a| a.status != 201)
        .map(|a| (a.name.as_str(), a.status))
        .collect();
    assert!(
        third.iter().all(|(_, s)| *s == 503),
        "server-3 answered other than 201 or 503: {third:?}"
    );
    wait_until(
        "server-3 to say it is not ready",
        Duration::from_secs(10),
        || {
            let r = servers[2].curl_anonymous(&[
                "--max-time",
                "5",
                &format!("{}/readyz", servers[2].url()),
            ]);
            r.status == Some(503)
        },
    );

    // Nothing acknowledged is lost: every name answered 201 anywhere is listed by both
    // surviving servers, and their nodes hold one gapless history.
    let acknowledged: Vec<&str> = answers
        .iter()
        .flatten()
        .filter(|a| a.status == 201)
        .map(|a| a.name.as_str())
        .collect();
    for s in &servers[..2] {
        let (_, names) = list(s);
        let missing: Vec<&&str> = acknowledged
            .iter()
            .filter(|n| !names.iter().any(|m| m == **n))
            .collect();
        assert!(
            missing.is_empty(),
            "{} lost acknowledged writes: {missing:?}",
            s.node_name()
        );
    }
    cluster.wait_formed(&[0, 1], Duration::from_secs(30));
    let (min, max) = assert_one_gapless_history(&cluster, &[0, 1]);
    eprintln!(
        "galera: {} acknowledged creates all present after node 3 died; history {min}..={max} \
         gapless on nodes 1 and 2; {} transactions rolled back there by Galera and retried",
        acknowledged.len(),
        cluster.conflicts()
    );
}

/// All three servers started at the same moment on the empty cluster with one token (as after
/// a power cut of every board): schema, CA and settings race on three nodes and end as one
/// cluster; the datastore retries what Galera rolls back. The start also races on the
/// `kubernetes` Service: the losing create is refused for its address, which
/// `Registry::ensure_kubernetes_service` takes as the other server's win once the Service is
/// there (before, one server in a few exited).
#[test]
fn three_servers_started_at_once_on_three_nodes_make_one_cluster() {
    let _turn = serial();
    let Some(cluster) = Cluster::new("once") else {
        return;
    };
    let servers = start_at_once(
        &cluster,
        &[0, 1, 2],
        &["--token", "one-galera-token-for-all-three"],
    );
    assert_one_ca(&servers);
    let (_, _) = list(&servers[2]);
}
