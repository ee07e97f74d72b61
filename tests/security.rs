//! The holes a security review found, each attempted for real with an agent's node
//! certificate, the agent token or an anonymous client, against the real binary; each test
//! asserts the refusal (status and reason) and that nothing else changed.
//!
//! Tests on PostgreSQL and MariaDB need the machine's databases: without them a test fails
//! unless `KEELSON_ALLOW_SKIP=1` (see `common::db`, `common::skip`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::db::{Db, TestDb};
use common::{Options, Reply, Server, wait_until};
use serde_json::{Value, json};

const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A server and one agent that joined it, with the agent's Node Ready.
fn server_and_agent(node: &str, extra: &[&str]) -> (Server, Agent) {
    let s = Server::start(Options::default());
    let agent = Agent::start(&s.url(), &s.token(), node, extra);
    agent.wait_log("tunnel connected", JOIN_TIMEOUT);
    wait_until("the agent's Node exists", JOIN_TIMEOUT, || {
        s.kubectl(&["get", "node", node]).status.success()
    });
    (s, agent)
}

/// A PATCH of `path` with `body` as `content_type`, sent as the agent's node.
fn node_patch(s: &Server, agent: &Agent, path: &str, content_type: &str, body: &str) -> Reply {
    agent.curl(&[
        "-X",
        "PATCH",
        "-H",
        &format!("Content-Type: {content_type}"),
        "--data-binary",
        body,
        &format!("{}{path}", s.url()),
    ])
}

/// The secret part of the server's K10 token (`K10<hash>::server:<secret>`).
fn token_secret(s: &Server) -> String {
    let token = s.token();
    token
        .rsplit_once(':')
        .map(|(_, secret)| secret.to_owned())
        .unwrap_or(token)
}

/// A join request with `secret` (none if empty) and a JSON body, from an anonymous client.
fn join(s: &Server, secret: &str, node: &str, password: &str) -> Reply {
    let body = json!({"nodeName": node, "nodePassword": password}).to_string();
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
    ];
    let user = format!("node:{secret}");
    if !secret.is_empty() {
        args.extend(["-u", &user]);
    }
    let url = format!("{}/v1-keelson/join", s.url());
    args.push(&url);
    s.curl_anonymous(&args)
}

fn reason(r: &Reply) -> String {
    serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The fields a node must not be able to change, as stored.
fn guarded(n: &Value) -> Value {
    json!({
        "labels": n["metadata"]["labels"],
        "annotations": n["metadata"]["annotations"],
        "taints": n["spec"]["taints"],
        "unschedulable": n["spec"]["unschedulable"],
        "resourceVersion": n["metadata"]["resourceVersion"],
    })
}

#[test]
fn a_node_cannot_take_a_role_move_the_server_list_or_lift_what_an_admin_set() {
    let (s, agent) = server_and_agent("pi-sec", &["--node-taint=dedicated=edge:NoSchedule"]);
    s.kubectl_ok(&["cordon", "pi-sec"]);
    let before = s.kubectl_json(&["get", "node", "pi-sec", "-o", "json"]);
    let own = "/api/v1/nodes/pi-sec";
    let merge = "application/merge-patch+json";
    let strategic = "application/strategic-merge-patch+json";
    let attempts = [
        (
            "the control-plane role",
            merge,
            r#"{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":"true"}}}"#,
            "node-role.kubernetes.io/control-plane",
        ),
        (
            "a server address",
            merge,
            r#"{"metadata":{"annotations":{"keelson.io/server-address":"198.18.9.9:6443"}}}"#,
            "keelson.io/server-address",
        ),
        (
            "a restricted label",
            merge,
            r#"{"metadata":{"labels":{"node-restriction.kubernetes.io/pool":"gpu"}}}"#,
            "node-restriction.kubernetes.io/pool",
        ),
        (
            "the admin's taint removed",
            strategic,
            r#"{"spec":{"taints":[]}}"#,
            "spec.taints",
        ),
        (
            "an uncordon",
            strategic,
            r#"{"spec":{"unschedulable":false}}"#,
            "uncordon",
        ),
    ];
    for (what, content_type, body, named) in attempts {
        let r = node_patch(&s, &agent, own, content_type, body);
        assert_eq!(r.status, Some(403), "{what}: {}", r.body);
        assert_eq!(reason(&r), "Forbidden", "{what}: {}", r.body);
        assert!(
            r.body.contains(named),
            "{what}: the refusal names {named}: {}",
            r.body
        );
    }
    // A whole-object PUT with the role is refused the same way.
    let mut replaced = before.clone();
    replaced["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("true");
    let r = agent.curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &replaced.to_string(),
        &format!("{}{own}", s.url()),
    ]);
    assert_eq!(r.status, Some(403), "PUT: {}", r.body);
    let after = s.kubectl_json(&["get", "node", "pi-sec", "-o", "json"]);
    assert_eq!(
        guarded(&after),
        guarded(&before),
        "a refused write changed the Node"
    );
    // Its own ordinary labels it may still set.
    let r = node_patch(
        &s,
        &agent,
        own,
        merge,
        r#"{"metadata":{"labels":{"zone":"b"}}}"#,
    );
    assert_eq!(r.status, Some(200), "{}", r.body);
    let row = s.kubectl_ok(&["get", "node", "pi-sec", "--no-headers"]);
    assert!(
        row.contains("SchedulingDisabled") && !row.contains("control-plane"),
        "{row}"
    );

    // The server list comes from the servers' own records: not even an admin's annotation
    // and role on an agent's Node put it there.
    s.kubectl_ok(&[
        "annotate",
        "node",
        "pi-sec",
        "keelson.io/server-address=198.18.9.9:6443",
    ]);
    s.kubectl_ok(&[
        "label",
        "node",
        "pi-sec",
        "node-role.kubernetes.io/control-plane=true",
    ]);
    thread::sleep(Duration::from_secs(3));
    let servers = std::fs::read_to_string(agent.data_dir().join("agent/servers")).unwrap();
    assert!(
        !servers.contains("198.18.9.9"),
        "agents were redirected: {servers}"
    );
    assert!(
        servers.contains(&format!("127.0.0.1:{}", s.port())),
        "{servers}"
    );
    let joined = join(&s, &token_secret(&s), "pi-new", &"p".repeat(32));
    assert_eq!(joined.status, Some(200), "{}", joined.body);
    assert!(!joined.body.contains("198.18.9.9"), "{}", joined.body);
}

#[test]
fn copy_and_depth_bombs_are_refused_and_listing_nodes_keeps_working() {
    let (s, agent) = server_and_agent("pi-bomb", &[]);
    let own = "/api/v1/nodes/pi-bomb";
    let json_patch = "application/json-patch+json";
    let before = s.kubectl_json(&["get", "node", "pi-bomb", "-o", "json"]);

    // Forty copies, each doubling an annotation map: 2^40 values if nothing stops it.
    let mut ops = vec![json!({
        "op": "add", "path": "/metadata/annotations", "value": {"a": "y".repeat(1024)}
    })];
    for i in 0..40 {
        ops.push(json!({
            "op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/c{i}")
        }));
    }
    let started = Instant::now();
    let r = node_patch(&s, &agent, own, json_patch, &Value::Array(ops).to_string());
    assert_eq!(r.status, Some(413), "copy bomb: {}", r.body);
    assert_eq!(reason(&r), "RequestEntityTooLarge", "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the copy bomb took {:?}",
        started.elapsed()
    );

    // A value nested 100 deep, copied into itself twice: deeper than any decoder reads.
    let mut deep = json!("leaf");
    for _ in 0..100 {
        deep = json!({ "a": deep });
    }
    let inner = format!("/spec/deep{}", "/a".repeat(99));
    let ops = json!([
        {"op": "add", "path": "/spec/deep", "value": deep},
        {"op": "copy", "from": "/spec/deep", "path": format!("{inner}/a")},
        {"op": "copy", "from": "/spec/deep", "path": format!("{inner}/b")},
    ]);
    for (who, r) in [
        (
            "node",
            node_patch(&s, &agent, own, json_patch, &ops.to_string()),
        ),
        (
            "admin",
            s.curl(&[
                "-X",
                "PATCH",
                "-H",
                &format!("Content-Type: {json_patch}"),
                "--data-binary",
                &ops.to_string(),
                &format!("{}{own}", s.url()),
            ]),
        ),
    ] {
        assert_eq!(r.status, Some(422), "depth bomb by the {who}: {}", r.body);
    }

    let after = s.kubectl_json(&["get", "node", "pi-bomb", "-o", "json"]);
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "a refused patch was stored"
    );
    let table = s.kubectl_ok(&["get", "nodes", "--no-headers"]);
    assert!(
        table.contains("pi-bomb") && table.contains(s.node_name()),
        "{table}"
    );
}

#[test]
fn a_join_with_a_servers_node_name_is_refused() {
    let s = Server::start(Options::default());
    let r = join(&s, &token_secret(&s), s.node_name(), &"p".repeat(32));
    assert_eq!(r.status, Some(403), "{}", r.body);
    assert!(r.body.contains("belongs to a server"), "{}", r.body);
    assert!(!r.body.contains("BEGIN CERTIFICATE"), "{}", r.body);
    // A real agent with that name stops with the reason.
    let mut impostor = Agent::start(&s.url(), &s.token(), s.node_name(), &[]);
    impostor.wait_failure(JOIN_TIMEOUT);
    assert!(
        impostor.log().contains("belongs to a server"),
        "{}",
        impostor.log_tail()
    );
}

/// Holds a TLS connection without a client certificate that sends the head of a join (with
/// the right token, so it gets past the token check to the body) and then trickles the body,
/// one byte a second, until the server closes it or `stop`. `tried` counts attackers whose
/// request was sent or turned away.
fn slow_join(
    port: u16,
    ca: &std::path::Path,
    secret: &str,
    stop: Arc<AtomicBool>,
    tried: Arc<std::sync::atomic::AtomicUsize>,
) {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("node:{secret}"))
    };
    let head = format!(
        "POST /v1-keelson/join HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: 3000\r\n\r\n{{"
    );
    let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)) else {
        tried.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // Patient through the handshake (the server is busy with 600 of them), then polling.
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let sent = tls.write_all(head.as_bytes()).and_then(|_| tls.flush());
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(50)));
    tried.fetch_add(1, Ordering::Relaxed);
    if sent.is_ok() {
        trickle(&mut tls, &stop);
    }
}

/// Sends a byte a second until the server closes the connection or `stop`.
fn trickle(tls: &mut impl ReadWrite, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if tls.write_all(b" ").is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            match tls.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn six_hundred_slow_anonymous_joins_do_not_stall_kubectl() {
    let s = Server::start(Options::default());
    let (ca, _, _) = s.admin_credentials();
    // Warm kubectl's discovery cache, so each later call is one request.
    s.kubectl_ok(&["get", "nodes"]);
    let stop = Arc::new(AtomicBool::new(false));
    let secret = token_secret(&s);
    let tried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attackers: Vec<_> = (0..600)
        .map(|_| {
            let (stop, ca, port, secret) = (stop.clone(), ca.clone(), s.port(), secret.clone());
            let tried = tried.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || slow_join(port, &ca, &secret, stop, tried))
                .unwrap()
        })
        .collect();
    // Until every attacker has sent its first request (or been turned away).
    let _ = std::panic::catch_unwind(|| {
        wait_until("600 attackers tried", Duration::from_secs(20), || {
            tried.load(Ordering::Relaxed) >= 600
        })
    });
    eprintln!("{} attackers tried", tried.load(Ordering::Relaxed));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let out = s.kubectl(&["get", "nodes", "--request-timeout=5s"]);
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "kubectl failed under the attack: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        slowest = slowest.max(took);
        thread::sleep(Duration::from_millis(500));
    }
    let refused = s.metric("keelson_connections_refused_total");
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }
    eprintln!("slowest kubectl under 600 slow joins: {slowest:?}; connections refused: {refused}");
    assert!(
        slowest < Duration::from_secs(1),
        "kubectl took {slowest:?} under the attack"
    );
    assert!(
        refused > 0,
        "no connection was refused over the anonymous share"
    );
    assert_eq!(
        s.curl_anonymous(&[&format!("{}/readyz", s.url())]).status,
        Some(200)
    );
}

#[test]
fn a_node_opening_tunnels_beyond_its_cap_is_refused_and_the_server_stays_ready() {
    let (s, mut agent) = server_and_agent("pi-tunnels", &[]);
    agent.kill();
    let mut open = Vec::new();
    for i in 0..4 {
        let (head, tls) = common::agent::open_raw_tunnel(s.port(), &agent);
        assert!(head.starts_with("HTTP/1.1 101"), "tunnel {i}: {head}");
        open.push(tls);
    }
    let (head, _) = common::agent::open_raw_tunnel(s.port(), &agent);
    assert!(head.starts_with("HTTP/1.1 429"), "a fifth tunnel: {head}");
    assert!(s.metric("keelson_tunnels_refused_total") >= 1);
    // One node's excess is its own problem: the server stays ready and serves.
    let ready = s.curl_anonymous(&[&format!("{}/readyz", s.url())]);
    assert_eq!(ready.status, Some(200), "{}", ready.body);
    s.kubectl_ok(&["get", "nodes"]);
    drop(open);
}

/// The longest node name (253 characters, labels of at most 63), ending in `last`.
fn longest_name(last: char) -> String {
    format!("{0}.{0}.{0}.{1}{last}", "n".repeat(63), "n".repeat(60))
}

fn long_names_join_and_rejoin(s: &Server) {
    let secret = token_secret(s);
    let (a, b) = (longest_name('a'), longest_name('b'));
    assert_eq!(a.len(), 253);
    for round in ["join", "re-join"] {
        for (name, pw) in [(&a, "a".repeat(32)), (&b, "b".repeat(32))] {
            let r = join(s, &secret, name, &pw);
            assert_eq!(
                r.status,
                Some(200),
                "{round} of {}…: {}",
                &name[..8],
                r.body
            );
        }
    }
    // Names that share 252 characters are still two registrations.
    let r = join(s, &secret, &a, &"b".repeat(32));
    assert_eq!(r.status, Some(403), "{}", r.body);
}

#[test]
fn a_253_character_node_name_joins_and_rejoins_on_sqlite() {
    let s = Server::start(Options::default());
    long_names_join_and_rejoin(&s);
    // A real agent with such a name gets its Node.
    let name = longest_name('c');
    let agent = Agent::start(&s.url(), &s.token(), &name, &[]);
    agent.wait_log("tunnel connected", JOIN_TIMEOUT);
    wait_until("the long-named Node exists", JOIN_TIMEOUT, || {
        s.kubectl(&["get", "node", &name]).status.success()
    });
}

fn long_names_on(db: Db) {
    let Some(db) = TestDb::new(db, "longnames") else {
        return;
    };
    let s = Server::start(Options::default().arg("--datastore-endpoint", &db.endpoint()));
    long_names_join_and_rejoin(&s);
}

#[test]
fn a_253_character_node_name_joins_and_rejoins_on_postgres() {
    long_names_on(Db::Postgres);
}

#[test]
fn a_253_character_node_name_joins_and_rejoins_on_mariadb() {
    long_names_on(Db::MariaDb);
}

#[test]
fn failed_joins_are_throttled_per_source_and_logged() {
    let s = Server::start(Options::default());
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(join(&s, "wrong-secret", "pi-guess", &"p".repeat(32)).status);
    }
    assert_eq!(&statuses[..5], &[Some(401); 5], "{statuses:?}");
    assert!(
        statuses[5..].contains(&Some(429)),
        "no throttling after 5 failures: {statuses:?}"
    );
    // While blocked, even the right token waits: guessing costs time whatever the guess.
    let r = join(&s, &token_secret(&s), "pi-right", &"p".repeat(32));
    assert_eq!(r.status, Some(429), "{}", r.body);
    assert_eq!(reason(&r), "TooManyRequests");
    assert!(s.metric("keelson_join_failures_total") >= 6);
    assert!(s.metric("keelson_join_throttled_total") >= 1);
    assert!(
        s.log().contains("join requests with a wrong token"),
        "{}",
        s.log_tail()
    );
    // Once the wait is over, the right token joins.
    wait_until(
        "the right token joins again",
        Duration::from_secs(30),
        || join(&s, &token_secret(&s), "pi-right", &"p".repeat(32)).status == Some(200),
    );
}

#[test]
fn a_deleted_and_rejoined_nodes_old_certificate_is_refused() {
    let (s, mut first) = server_and_agent("pi-reused", &[]);
    let own = format!("{}/api/v1/nodes/pi-reused", s.url());
    assert_eq!(first.curl(&[&own]).status, Some(200));
    first.kill();
    s.kubectl_ok(&["delete", "node", "pi-reused"]);
    // The old certificate means nothing once its Node is deleted …
    assert_eq!(first.curl(&[&own]).status, Some(401));
    // … nor after a replacement board registered the name.
    let replacement = Agent::start(&s.url(), &s.token(), "pi-reused", &[]);
    replacement.wait_log("tunnel connected", JOIN_TIMEOUT);
    assert_eq!(replacement.curl(&[&own]).status, Some(200));
    let r = first.curl(&[
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/merge-patch+json",
        "-d",
        r#"{"metadata":{"labels":{"owner":"old"}}}"#,
        &own,
    ]);
    assert_eq!(r.status, Some(401), "{}", r.body);
    let (head, _) = common::agent::open_raw_tunnel(s.port(), &first);
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "the old certificate opened a tunnel: {head}"
    );
    let n = s.kubectl_json(&["get", "node", "pi-reused", "-o", "json"]);
    assert!(n["metadata"]["labels"].get("owner").is_none(), "{n}");
}
