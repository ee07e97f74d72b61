//! Overload (issue 17 item 7): the connection bound (with every one of the API's 512
//! connections held open by authenticated clients, the next client — kubectl included — is
//! answered at once with a clear 503, not left hanging until its TLS handshake times out; once
//! connections close, clients are served again), the in-flight bound (429 with Retry-After),
//! the per-user watch bound (429 naming `--max-watches-per-user`, other users untouched), and
//! 2000 idle watches with a request flood: memory per watch bounded, nodes Ready, the admin
//! answered within a second, the flood refused with 429 rather than left to time out.
//!
//! The watches are opened by a small HTTP/2 client in this file (hyper's, over rustls), as
//! client-go opens them: many streams on a few connections, chosen by ALPN `h2`. Raw
//! HTTP/1.1 connections, one per watch, are what the connection-bound test uses (python), and
//! what the memory test opens afterwards for comparison.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::agent::Loadgen;
use common::{Options, Server, wait_until};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::Value;

/// What the server holds at most (src/apiserver/mod.rs `MAX_CONNECTIONS`).
const MAX_CONNECTIONS: usize = 512;

/// Opens `n` TLS connections with the admin's client certificate, each with a watch on it (an
/// idle connection is closed after 10 s without a request), and keeps them until killed.
/// Prints `open <n>` once every watch has its response headers.
const HOLDER: &str = r#"
import socket, ssl, sys
port, ca, cert, key, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.check_hostname = False
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    t = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    t.sendall(b"GET /api/v1/namespaces?watch=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    held.append(t)
for t in held:
    head = t.recv(64)
    if not head.startswith(b"HTTP/1.1 200"):
        print("watch refused:", head, flush=True)
        sys.exit(1)
print("open", len(held), flush=True)
sys.stdin.read()
"#;

#[test]
fn at_the_connection_bound_the_next_client_is_refused_at_once_and_served_again_later() {
    let s = Server::start(Options::default());
    let (ca, cert, key) = s.admin_credentials();
    let mut holder = Command::new("python3")
        .args(["-c", HOLDER, &s.port().to_string()])
        .args([&ca, &cert, &key])
        .arg(MAX_CONNECTIONS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        format!("open {MAX_CONNECTIONS}"),
        "the holder could not open its connections"
    );
    // The server counts a connection once its handshake is done; give the last ones a moment.
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let reply = s.curl(&[
        "--max-time",
        "10",
        &format!("{}/api/v1/namespaces", s.url()),
    ]);
    let took = started.elapsed();
    assert_eq!(reply.status, Some(503), "{reply:?}");
    assert!(reply.body.contains("all the connections"), "{}", reply.body);
    assert!(took < Duration::from_secs(2), "the refusal took {took:?}");

    let started = Instant::now();
    let out = s.kubectl(&["get", "namespaces", "--request-timeout=3s"]);
    let kubectl_took = started.elapsed();
    assert!(
        !out.status.success(),
        "kubectl got a connection beyond the bound"
    );
    // kubectl retries a 503 with Retry-After itself, then gives up with its own words; what
    // matters is that it was answered, not left in a TLS handshake.
    println!(
        "FIGURE connection bound: curl refused in {:.0} ms, kubectl gave up in {:.1} s (with its own retries)",
        took.as_secs_f64() * 1000.0,
        kubectl_took.as_secs_f64()
    );

    // Closing the holder's connections frees the places.
    let _ = holder.stdin.take().map(|mut i| i.write_all(b""));
    let _ = holder.kill();
    let _ = holder.wait();
    wait_until("kubectl is served again", Duration::from_secs(20), || {
        s.kubectl(&["get", "namespaces"]).status.success()
    });
}

/// kube-apiserver's `--max-requests-inflight`: a flood beyond the bound gets 429 with
/// `Retry-After` at once, while `system:masters` (the admin kubeconfig) is never limited.
#[test]
fn a_flood_beyond_max_requests_inflight_gets_429_and_the_admin_is_still_served() {
    let s = Server::start(
        Options::default()
            .arg("--max-requests-inflight", "1")
            .arg("--max-mutating-requests-inflight", "1"),
    );
    let (ca, _, _) = s.admin_credentials();
    // 600 requests without credentials, 30 at a time (their share of connections): each is
    // refused by authorization (401) unless the in-flight bound refused it first (429).
    let url = format!("{}/api/v1/namespaces/default/configmaps", s.url());
    let flood = std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["--silent", "--parallel", "--parallel-max", "30", "--cacert"])
            .arg(&ca)
            // Bodies may land on stdout too: each answer ends with its own marked line.
            .args([
                "--write-out",
                "\nANSWER %{http_code} %header{retry-after}\n",
            ])
            .args((0..600).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    // Meanwhile the admin is answered every time (curl does not retry a 429), even ten at once.
    let mut slowest = Duration::ZERO;
    let mut admin = 0;
    let admin_url = format!("{}/api/v1/namespaces", s.url());
    while !flood.is_finished() || admin == 0 {
        let mut args: Vec<&str> = vec![
            "--parallel",
            "--parallel-max",
            "10",
            "--write-out",
            "\nANSWER %{http_code}\n",
        ];
        for _ in 0..20 {
            args.extend(["-o", "/dev/null", admin_url.as_str()]);
        }
        let started = Instant::now();
        let reply = s.curl(&args);
        slowest = slowest.max(started.elapsed());
        let answers: Vec<&str> = reply
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("ANSWER "))
            .collect();
        assert!(
            answers.len() == 20 && answers.iter().all(|c| *c == "200"),
            "the admin was limited: {answers:?}"
        );
        admin += 20;
    }
    let out = flood.join().unwrap();
    let codes: String = out
        .lines()
        .filter_map(|l| l.strip_prefix("ANSWER "))
        .map(|l| format!("{l}\n"))
        .collect();
    let refused: Vec<&str> = codes.lines().filter(|l| l.starts_with("429")).collect();
    let unauthorized = codes.lines().filter(|l| l.starts_with("401")).count();
    assert!(
        !refused.is_empty(),
        "no request was over the bound:\n{codes}"
    );
    assert!(
        refused.iter().all(|l| l.trim_end() == "429 1"),
        "a 429 without Retry-After: 1: {refused:?}"
    );
    assert_eq!(refused.len() + unauthorized, 600, "{codes}");
    assert!(
        slowest < Duration::from_secs(3),
        "the admin waited {slowest:?} during the flood"
    );
    println!(
        "FIGURE inflight bound 1: {} of 600 flood requests got 429, {unauthorized} were served (401); {admin} admin requests (10 at a time) all served, slowest batch of 20 {:.2} s",
        refused.len(),
        slowest.as_secs_f64()
    );
}

/// The per-user watch bound: beyond `--max-watches-per-user` a user's next watch is refused
/// with 429 and a Status naming the flag, while other users (the admin here) still watch; a
/// closed watch gives its place back.
#[test]
fn a_user_at_its_watch_bound_gets_429_and_other_users_still_watch() {
    const BOUND: usize = 5;
    let s = Server::start(Options::default().arg("--max-watches-per-user", &BOUND.to_string()));
    let alice = service_account_token(&s, "alice");
    let rt = runtime();
    rt.block_on(async {
        let alice = Client::bearer(&s, &alice);
        let admin = Client::admin(&s);
        let mut conn = alice.h2().await;
        let mut held = Vec::new();
        for i in 0..BOUND {
            let resp = conn.get(&alice, &watch_path(i)).await.expect("a watch");
            assert_eq!(resp.status(), 200, "alice's watch {i}");
            held.push(resp);
        }
        let (code, body) = conn.text(&alice, &watch_path(BOUND)).await;
        assert_eq!(code, 429, "alice's watch beyond the bound: {body}");
        assert!(
            body.contains("--max-watches-per-user")
                && body.contains(&format!("has {BOUND} watches open"))
                && body.contains("system:serviceaccount:default:alice"),
            "{body}"
        );
        // Another user is not touched by alice's share.
        let mut admin_conn = admin.h2().await;
        let theirs = admin_conn
            .get(&admin, &watch_path(0))
            .await
            .expect("the admin's watch");
        assert_eq!(theirs.status(), 200);
        // Closing one (the client resets its stream) frees its place.
        held.pop();
        let started = Instant::now();
        loop {
            let resp = conn.get(&alice, &watch_path(0)).await.expect("a watch");
            if resp.status() == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "a closed watch's place was not given back: {}",
                resp.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// 2000 idle watches (two users' 1000 each, the default bound, on HTTP/2 as client-go opens
/// them) and a flood of lists beyond `--max-requests-inflight`: the server's memory grows by at
/// most [`MAX_KIB_PER_WATCH`] per watch, the hollow nodes stay Ready, the admin's kubectl
/// answers within a second, and the flood is answered 429 — never left to time out.
#[test]
fn two_thousand_watches_and_a_flood_leave_memory_bounded_nodes_ready_and_the_admin_served() {
    const WATCHES_PER_USER: usize = 1000;
    const NODES: usize = 3;
    let s = Server::start(Options::default().arg("--max-requests-inflight", "8"));
    let lg = Loadgen::start(&s.url(), &s.token(), NODES, "hollow");
    wait_until("the hollow nodes Ready", Duration::from_secs(90), || {
        ready_nodes(&s) == NODES + 1
    });
    let tokens = ["alice", "bob", "flood"].map(|u| service_account_token(&s, u));
    let pid = server_pid(&s);
    let rt = runtime();
    rt.block_on(async {
        let users = [Client::bearer(&s, &tokens[0]), Client::bearer(&s, &tokens[1])];
        // The server has served HTTP/2 and a watch once before the baseline.
        let mut warm = users[0].h2().await;
        drop(warm.get(&users[0], &watch_path(0)).await.expect("a first watch"));
        drop(warm);
        tokio::time::sleep(SETTLE).await;
        let before = rss_kib(pid);
        let heap_before = s.metric(HEAP_IN_USE);

        let started = Instant::now();
        let mut held = Vec::new();
        for user in &users {
            held.extend(open_watches(user, WATCHES_PER_USER).await);
        }
        let opened = started.elapsed();
        // One more of alice's is over her share: refused, not queued.
        let mut extra = users[0].h2().await;
        let (code, body) = extra.text(&users[0], &watch_path(0)).await;
        assert_eq!(code, 429, "alice's watch {}: {body}", WATCHES_PER_USER + 1);
        assert!(body.contains("--max-watches-per-user"), "{body}");
        drop(extra);

        tokio::time::sleep(SETTLE).await;
        let after = rss_kib(pid);
        let heap_after = s.metric(HEAP_IN_USE);
        let watches = held.iter().map(|(_, w)| w.len()).sum::<usize>();
        assert_eq!(watches, 2 * WATCHES_PER_USER);
        let per_watch = after.saturating_sub(before) as f64 / watches as f64;
        // malloc's live bytes: what the watches hold; RSS beyond it is what the burst of
        // opening them left free inside malloc's heap.
        let live = heap_after.saturating_sub(heap_before) as f64 / 1024.0 / watches as f64;
        println!(
            "FIGURE idle watches over HTTP/2: server RSS {:.1} MiB before, {:.1} MiB with {watches} watches on {} connections: {per_watch:.2} KiB per watch, {live:.2} KiB of it live heap (opened in {:.1} s)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            held.len(),
            opened.as_secs_f64()
        );
        assert!(
            per_watch <= MAX_KIB_PER_WATCH,
            "{per_watch:.2} KiB per idle watch, more than {MAX_KIB_PER_WATCH}"
        );

        // The flood: lists from a user without privileges, far more at once than the bound.
        let flooder = Client::bearer(&s, &tokens[2]);
        let flood = tokio::spawn(flood(flooder, FLOOD_FOR));
        let mut slowest = Duration::ZERO;
        let mut asked = 0;
        let flood_started = Instant::now();
        while flood_started.elapsed() < FLOOD_FOR {
            let s = &s;
            let took = tokio::task::spawn_blocking({
                let kubeconfig = s.kubeconfig();
                let cmd = s.kubectl_command(&kubeconfig, &["get", "nodes", "--request-timeout=5s"]);
                move || {
                    let mut cmd = cmd;
                    let started = Instant::now();
                    let out = cmd.output().expect("run kubectl");
                    (started.elapsed(), out)
                }
            })
            .await
            .expect("kubectl thread");
            let (elapsed, out) = took;
            assert!(
                out.status.success(),
                "the admin's kubectl failed during the flood: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            slowest = slowest.max(elapsed);
            asked += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let tally = flood.await.expect("the flood task");
        let ready = tokio::task::spawn_blocking({
            let kubeconfig = s.kubeconfig();
            let cmd = s.kubectl_command(&kubeconfig, &["get", "nodes", "-o", "json"]);
            move || {
                let mut cmd = cmd;
                ready_in(&cmd.output().expect("run kubectl").stdout)
            }
        })
        .await
        .expect("kubectl thread");
        let during = rss_kib(pid);
        println!(
            "FIGURE flood for {} s beside {watches} watches: {} requests, {} served, {} got 429 (all with Retry-After), {} timed out; admin kubectl get nodes {asked} times, slowest {:.2} s; {ready}/{} nodes Ready after; server RSS {:.1} MiB",
            FLOOD_FOR.as_secs(),
            tally.total(),
            tally.served,
            tally.refused,
            tally.timed_out,
            slowest.as_secs_f64(),
            NODES + 1,
            during as f64 / 1024.0,
        );
        assert_eq!(tally.timed_out, 0, "flood requests timed out: {tally:?}");
        assert_eq!(tally.other, 0, "flood requests got something else: {tally:?}");
        assert!(tally.refused > 0, "the flood never passed the bound: {tally:?}");
        assert_eq!(tally.refused, tally.retry_after, "a 429 without Retry-After");
        assert!(
            slowest < Duration::from_secs(1),
            "the admin's kubectl took {slowest:?}"
        );
        assert_eq!(ready, NODES + 1, "a node went NotReady during the flood");
        // The watches were served all along: one of the first opened sees a new object.
        let created = tokio::task::spawn_blocking({
            let kubeconfig = s.kubeconfig();
            let cmd = s.kubectl_command(
                &kubeconfig,
                &["create", "configmap", "after-the-flood", "--from-literal=a=b"],
            );
            move || {
                let mut cmd = cmd;
                cmd.output().expect("run kubectl").status.success()
            }
        })
        .await
        .expect("kubectl thread");
        assert!(created, "kubectl create configmap failed");
        // Alice's second watch, opened first of all: `watch_path(1)`, configmaps.
        assert!(watch_path(1).contains("/configmaps?"));
        let watch = &mut held[0].1[1];
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            let mut text = String::new();
            while let Some(Ok(frame)) = watch.body_mut().frame().await {
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                }
                if text.contains("after-the-flood") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(seen, Ok(true), "an open watch missed the new configmap");
    });
    drop(lg);
    drop(s);

    // For comparison, the same idle watch on HTTP/1.1, one TLS connection each (what clients
    // without HTTP/2 do), on a fresh server: memory the first server freed would hide it.
    let s = Server::start(Options::default());
    let pid = server_pid(&s);
    rt.block_on(async {
        let admin = Client::admin(&s).http1();
        let mut warm = admin.h1().await;
        drop(warm.get(&admin, &watch_path(0)).await.expect("a first watch"));
        drop(warm);
        tokio::time::sleep(SETTLE).await;
        let before = rss_kib(pid);
        let mut held = Vec::new();
        for i in 0..HTTP1_WATCHES {
            let mut conn = admin.h1().await;
            let resp = conn.get(&admin, &watch_path(i)).await.expect("an HTTP/1.1 watch");
            assert_eq!(resp.status(), 200);
            held.push((conn, resp));
        }
        tokio::time::sleep(SETTLE).await;
        let after = rss_kib(pid);
        println!(
            "FIGURE idle watches over HTTP/1.1 (one connection each), for comparison: server RSS {:.1} MiB before, {:.1} MiB with {HTTP1_WATCHES}: {:.2} KiB per watch",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / HTTP1_WATCHES as f64
        );
    });
}

/// How long the server is left alone before its memory is read: longer than its malloc
/// trimmer's period (src/memory.rs, 5 s), so freed pages of a burst are given back first, as
/// on a server left idle.
const SETTLE: Duration = Duration::from_secs(6);
/// malloc's live bytes in the server (`/metrics`).
const HEAP_IN_USE: &str = r#"keelson_heap_bytes{state="in_use"}"#;
/// What an idle watch may cost the server (issue 17 item 7).
const MAX_KIB_PER_WATCH: f64 = 8.0;
/// How long the flood lasts: longer than `--node-monitor-grace-period` (15 s), so a node whose
/// heartbeats were starved would be NotReady by its end.
const FLOOD_FOR: Duration = Duration::from_secs(20);
/// Requests the flood keeps open at once, on one HTTP/2 connection each group of 100.
const FLOOD_CONCURRENCY: usize = 200;
/// How long a flood request may take before it counts as timed out.
const FLOOD_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/1.1 watches opened for the comparison (each a connection among the 512).
const HTTP1_WATCHES: usize = 300;

/// The paths the watchers follow in turn: what an informer watches, with bookmarks.
fn watch_path(i: usize) -> String {
    let kind = ["pods", "configmaps", "services", "endpoints"][i % 4];
    format!("/api/v1/namespaces/default/{kind}?watch=1&allowWatchBookmarks=true")
}

/// Opens `n` watches as `user` on as few HTTP/2 connections as the server's stream bound
/// allows; returns each connection with its open watches.
async fn open_watches(user: &Client, n: usize) -> Vec<(Conn, Vec<hyper::Response<Incoming>>)> {
    let mut tasks = Vec::new();
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let here = left.min(STREAMS_PER_CONNECTION);
        left -= here;
        let user = user.clone();
        let first = i;
        i += here;
        tasks.push(tokio::spawn(async move {
            let conn = user.h2().await;
            let opens = (first..first + here).map(|j| {
                let mut conn = conn.clone();
                let user = user.clone();
                async move {
                    let resp = conn.get(&user, &watch_path(j)).await.expect("a watch");
                    assert_eq!(resp.status(), 200, "watch {j}");
                    resp
                }
            });
            let watches = futures_util::future::join_all(opens).await;
            (conn, watches)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("a watch opener"));
    }
    out
}

/// What the server lets one connection carry (src/apiserver/mod.rs `MAX_STREAMS`).
const STREAMS_PER_CONNECTION: usize = 250;

#[derive(Debug, Default)]
struct Tally {
    served: usize,
    refused: usize,
    retry_after: usize,
    timed_out: usize,
    other: usize,
}

impl Tally {
    fn total(&self) -> usize {
        self.served + self.refused + self.timed_out + self.other
    }
}

/// Lists configmaps as `user`, [`FLOOD_CONCURRENCY`] at a time, for `how_long`.
async fn flood(user: Client, how_long: Duration) -> Tally {
    let until = Instant::now() + how_long;
    let mut workers = Vec::new();
    let mut conn = user.h2().await;
    for i in 0..FLOOD_CONCURRENCY {
        if i > 0 && i % 100 == 0 {
            conn = user.h2().await;
        }
        let (mut conn, user) = (conn.clone(), user.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < until {
                let asked = conn.get(&user, "/api/v1/namespaces/default/configmaps");
                match tokio::time::timeout(FLOOD_TIMEOUT, async {
                    let resp = asked.await.ok()?;
                    let retry = resp.headers().get("retry-after").is_some();
                    let code = resp.status().as_u16();
                    resp.into_body().collect().await.ok()?;
                    Some((code, retry))
                })
                .await
                {
                    Err(_) => tally.timed_out += 1,
                    Ok(Some((200, _))) => tally.served += 1,
                    Ok(Some((429, retry))) => {
                        tally.refused += 1;
                        tally.retry_after += usize::from(retry);
                    }
                    Ok(_) => tally.other += 1,
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for w in workers {
        let t = w.await.expect("a flood worker");
        all.served += t.served;
        all.refused += t.refused;
        all.retry_after += t.retry_after;
        all.timed_out += t.timed_out;
        all.other += t.other;
    }
    all
}

/// A bearer token of a new service account `name` that may read (the `view` role).
fn service_account_token(s: &Server, name: &str) -> String {
    s.kubectl_ok(&["create", "serviceaccount", name]);
    s.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        &format!("{name}-view"),
        "--clusterrole=view",
        &format!("--serviceaccount=default:{name}"),
    ]);
    let token = s.kubectl_ok(&["create", "token", name]).trim().to_owned();
    wait_until("the token may list pods", Duration::from_secs(10), || {
        s.curl_anonymous(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/api/v1/namespaces/default/pods", s.url()),
        ])
        .status
            == Some(200)
    });
    token
}

fn ready_nodes(s: &Server) -> usize {
    let out = s.kubectl(&["get", "nodes", "-o", "json"]);
    ready_in(&out.stdout)
}

fn ready_in(json: &[u8]) -> usize {
    let nodes: Value = serde_json::from_slice(json).unwrap_or_default();
    nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .count()
}

/// The server process: the one whose command line names this server's directory.
fn server_pid(s: &Server) -> u32 {
    let dir = s.dir().display().to_string();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&dir) && cmdline.split('\0').any(|a| a == "server")
        })
        .expect("the server's process")
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// How the test's client reaches the API: TLS to the server's port, verified against the
/// cluster CA, as the admin (client certificate) or with a bearer token.
#[derive(Clone)]
struct Client {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    bearer: Option<String>,
}

/// One connection's request sender, HTTP/2 (shared by many streams) or HTTP/1.1.
#[derive(Clone)]
enum Conn {
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    H1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>),
}

impl Client {
    fn admin(s: &Server) -> Client {
        let (ca, cert, key) = s.admin_credentials();
        Client::new(s, &ca, Some((cert.as_path(), key.as_path())), None)
    }

    fn bearer(s: &Server, token: &str) -> Client {
        let (ca, _, _) = s.admin_credentials();
        Client::new(s, &ca, None, Some(token.to_owned()))
    }

    fn new(s: &Server, ca: &Path, cert: Option<(&Path, &Path)>, bearer: Option<String>) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).expect("the CA"))
            .expect("add the CA");
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let mut tls = match cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(cert).expect("the certificate")],
                    PrivateKeyDer::from_pem_file(key).expect("the key"),
                )
                .expect("a client certificate"),
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Client {
            port: s.port(),
            tls: Arc::new(tls),
            bearer,
        }
    }

    /// The same client offering only HTTP/1.1.
    fn http1(mut self) -> Client {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.tls = Arc::new(tls);
        self
    }

    async fn tls(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to the server");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a name");
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .expect("a TLS handshake")
    }

    /// A new HTTP/2 connection (the server must choose `h2`).
    async fn h2(&self) -> Conn {
        let tls = self.tls().await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the server did not choose HTTP/2"
        );
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tls))
            .await
            .expect("an HTTP/2 handshake");
        tokio::spawn(conn);
        Conn::H2(send)
    }

    /// A new HTTP/1.1 connection.
    async fn h1(&self) -> Conn {
        let tls = self.tls().await;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("an HTTP/1.1 handshake");
        tokio::spawn(conn);
        Conn::H1(Arc::new(tokio::sync::Mutex::new(send)))
    }

    fn request(&self, path: &str) -> hyper::Request<Empty<Bytes>> {
        let mut req = hyper::Request::get(format!("https://127.0.0.1:{}{path}", self.port));
        if let Some(token) = &self.bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req.body(Empty::new()).expect("a request")
    }
}

impl Conn {
    /// Sends a GET; resolves with the response head (the body, a watch's events, follows).
    fn get(
        &mut self,
        client: &Client,
        path: &str,
    ) -> impl std::future::Future<Output = hyper::Result<hyper::Response<Incoming>>> + Send + 'static
    {
        let mut req = client.request(path);
        let conn = self.clone();
        async move {
            match conn {
                Conn::H2(mut send) => send.send_request(req).await,
                Conn::H1(send) => {
                    // HTTP/1.1 wants the path and a Host header, not the whole URL.
                    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned());
                    *req.uri_mut() = path.unwrap_or_default().parse().expect("a path");
                    req.headers_mut()
                        .insert("host", hyper::header::HeaderValue::from_static("127.0.0.1"));
                    let mut send = send.lock().await;
                    send.ready().await?;
                    send.send_request(req).await
                }
            }
        }
    }

    /// A whole answer: its status and body. A body still open after 5 s (a watch that was let
    /// in) is cut short, so a test expecting a refusal fails instead of waiting forever.
    async fn text(&mut self, client: &Client, path: &str) -> (u16, String) {
        let resp = self.get(client, path).await.expect("an answer");
        let code = resp.status().as_u16();
        let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
        let body = match body {
            Ok(body) => String::from_utf8_lossy(&body.expect("a body").to_bytes()).into_owned(),
            Err(_) => "(the body was still open after 5 s)".to_owned(),
        };
        (code, body)
    }
}
