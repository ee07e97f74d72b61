//! Agents against a real server (SQLite), driven and checked with the real kubectl and curl:
//! joining, CA pinning (from the token, and of the CA saved at the first join), node
//! passwords, node authorization, unreachable nodes, bad frames, and the database cost of
//! many agents.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::agent::Agent;
use common::{Options, Server, wait_until};
use serde_json::Value;

const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The node lifecycle pass's longest pause (`node_lifecycle::MONITOR_PERIOD`). It looks again
/// when the next node falls due, so a silent node is seen about one grace period after its
/// last heartbeat; a full period late is the worst case it allows.
const LIFECYCLE_PERIOD: Duration = Duration::from_secs(5);
/// What the test itself adds beyond that worst case: kubectl polls every 200 ms and takes
/// up to a few seconds in a debug build on a loaded machine.
const OBSERVE_MARGIN: Duration = Duration::from_secs(5);

fn node(s: &Server, name: &str) -> Option<Value> {
    let out = s.kubectl(&["get", "node", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn ready(n: &Value) -> &str {
    n.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}

fn unreachable_taints(n: &Value) -> Vec<String> {
    let mut effects: Vec<String> = n
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t["key"] == "node.kubernetes.io/unreachable")
        .filter_map(|t| t["effect"].as_str().map(str::to_owned))
        .collect();
    effects.sort();
    effects
}

fn is_ready(s: &Server, name: &str) -> bool {
    node(s, name).is_some_and(|n| ready(&n) == "True" && unreachable_taints(&n).is_empty())
}

#[test]
fn an_agent_joins_and_is_ready_as_a_worker_with_its_labels_and_taints() {
    let s = Server::start(Options::default());
    let agent = Agent::start(
        &s.url(),
        &s.token(),
        "pi-worker",
        &[
            "--node-label=zone=shelf-2",
            "--node-taint=dedicated=edge:NoSchedule",
            "--node-ip=198.18.0.7",
        ],
    );
    agent.wait_log("tunnel connected", JOIN_TIMEOUT);
    wait_until("both nodes are Ready", JOIN_TIMEOUT, || {
        is_ready(&s, "pi-worker") && is_ready(&s, s.node_name())
    });

    // What a user sees with the real kubectl.
    let table = s.kubectl_ok(&["get", "nodes", "-o", "wide", "--no-headers"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("pi-worker "))
        .unwrap_or_else(|| panic!("no pi-worker row:\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "Ready", "{row}");
    assert_eq!(cols[2], "<none>", "an agent has no role: {row}");
    assert_eq!(cols[5], "198.18.0.7", "INTERNAL-IP as reported: {row}");
    assert!(row.contains("keelson://"), "{row}");
    let server_row = table
        .lines()
        .find(|l| l.starts_with(s.node_name()))
        .unwrap();
    assert!(server_row.contains("control-plane"), "{server_row}");
    let n = node(&s, "pi-worker").unwrap();
    assert_eq!(n["metadata"]["labels"]["zone"], "shelf-2");
    assert_eq!(
        n["spec"]["taints"],
        serde_json::json!([{"key": "dedicated", "value": "edge", "effect": "NoSchedule"}])
    );
    assert!(
        n["status"]["nodeInfo"]["kernelVersion"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );

    // The agent's secrets are private; its certificate names the node.
    use std::os::unix::fs::PermissionsExt;
    for f in ["node-password", "client-node.key"] {
        let mode = std::fs::metadata(agent.data_dir().join("agent").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(agent.data_dir().join("agent/client-node.crt"))
        .output()
        .expect("run openssl");
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("O = system:nodes") && subject.contains("CN = system:node:pi-worker"),
        "{subject}"
    );

    // Node authorization: its own Node only.
    let own = format!("{}/api/v1/nodes/pi-worker", s.url());
    assert_eq!(agent.curl(&[&own]).status, Some(200));
    let patched = agent.curl(&[
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/merge-patch+json",
        "-d",
        r#"{"metadata":{"labels":{"self":"set"}}}"#,
        &own,
    ]);
    assert_eq!(patched.status, Some(200), "{}", patched.body);
    for other in [
        format!("{}/api/v1/nodes/{}", s.url(), s.node_name()),
        format!("{}/api/v1/nodes", s.url()),
        format!("{}/api/v1/namespaces", s.url()),
    ] {
        let r = agent.curl(&[&other]);
        assert_eq!(r.status, Some(403), "{other}: {}", r.body);
    }
    let del = agent.curl(&["-X", "DELETE", &own]);
    assert_eq!(del.status, Some(403), "{}", del.body);
}

#[test]
fn a_token_for_another_ca_is_refused_before_any_credential_is_sent() {
    let s = Server::start(Options::default());
    let token = s.token();
    let secret = token.rsplit_once(':').unwrap().1;
    let foreign = format!("K10{}::node:{secret}", "ab".repeat(32));
    let mut agent = Agent::start(&s.url(), &foreign, "pi-pinned", &[]);
    agent.wait_failure(JOIN_TIMEOUT);
    let log = agent.log();
    assert!(log.contains("does not match"), "{log}");
    assert!(
        log.contains(&"ab".repeat(32)),
        "names the token's hash: {log}"
    );
    let actual = token
        .strip_prefix("K10")
        .unwrap()
        .split("::")
        .next()
        .unwrap();
    assert!(log.contains(actual), "names the server's hash: {log}");
    assert_eq!(
        s.metric("keelson_join_requests_total"),
        0,
        "no credential may reach the server"
    );
    assert!(node(&s, "pi-pinned").is_none());

    // The right CA but a wrong secret: a clear refusal.
    let wrong = format!("K10{actual}::node:not-the-secret");
    let mut agent = Agent::start(&s.url(), &wrong, "pi-pinned", &[]);
    agent.wait_failure(JOIN_TIMEOUT);
    assert!(
        agent.log().contains("the token was rejected"),
        "{}",
        agent.log()
    );
    assert_eq!(s.metric("keelson_join_requests_total"), 1);
}

/// A short token: the bare secret, with no CA hash to check a server against.
const SHORT_TOKEN: &str = "a-short-token-for-tofu-tests";

#[test]
fn a_short_token_agent_without_the_unsafe_flag_refuses_to_join() {
    let s = Server::start(Options::default().arg("--token", SHORT_TOKEN));
    let mut agent = Agent::start(&s.url(), SHORT_TOKEN, "pi-short", &[]);
    agent.wait_failure(JOIN_TIMEOUT);
    let log = agent.log();
    assert!(
        log.contains("error:")
            && log.contains("--unsafe-skip-ca-verification")
            && log.contains("<data-dir>/server/token"),
        "the refusal names the flag and the K10 token: {log}"
    );
    assert!(
        !agent.data_dir().join("agent").exists(),
        "the refused agent wrote to its data dir"
    );
    assert_eq!(s.metric("keelson_join_requests_total"), 0);
    assert!(node(&s, "pi-short").is_none());
}

#[test]
fn a_short_token_agent_pins_the_ca_of_its_first_join_and_sends_nothing_to_another() {
    let mut s = Server::start(Options::default().arg("--token", SHORT_TOKEN));
    let mut agent = Agent::start(
        &s.url(),
        SHORT_TOKEN,
        "pi-tofu",
        &["--unsafe-skip-ca-verification"],
    );
    agent.wait_log("tunnel connected", JOIN_TIMEOUT);
    assert!(agent.log().contains("NOT verified"), "{}", agent.log());
    let ca_file = agent.data_dir().join("agent/server-ca.crt");
    let pinned = std::fs::read_to_string(&ca_file).expect("the agent saved the CA");
    agent.kill();

    // Another cluster at the same address, with the same short token: the same server
    // process started on a fresh SQLite database makes a new CA.
    s.stop();
    let impostor_db = s.dir().join("impostor.db");
    s.try_restart(&[&format!(
        "--datastore-endpoint=sqlite://{}",
        impostor_db.display()
    )])
    .unwrap_or_else(|e| panic!("the impostor did not start: {}\n{}", e.status, e.log));
    let impostor_ca = s.curl_anonymous(&[&format!("{}/cacerts", s.url())]).body;
    assert_ne!(impostor_ca, pinned, "the impostor must have another CA");
    let address = format!("127.0.0.1:{}", s.port());

    // With its certificate still valid, the agent only tunnels: the impostor's certificate is
    // not signed by the pinned CA, so no tunnel opens.
    agent.spawn();
    agent.wait_log(
        "not signed by the cluster CA this agent pinned",
        JOIN_TIMEOUT,
    );
    let log = agent.log();
    assert!(log.contains(&ca_file.display().to_string()), "{log}");
    assert!(!log.contains("tunnel connected"), "{log}");
    agent.kill();

    // Due for a new certificate (here: none left), it must join: the impostor is refused
    // before the token secret or the node password goes out.
    std::fs::remove_file(agent.data_dir().join("agent/client-node.crt")).unwrap();
    std::fs::remove_file(agent.data_dir().join("agent/client-node.key")).unwrap();
    agent.spawn();
    agent.wait_failure(JOIN_TIMEOUT);
    let log = agent.log();
    assert!(
        log.contains(&format!("refusing to join through {address}"))
            && log.contains(&ca_file.display().to_string())
            && log.contains("no credential was sent"),
        "the refusal names the server and the saved CA file: {log}"
    );
    assert_eq!(
        std::fs::read_to_string(&ca_file).unwrap(),
        pinned,
        "the pinned CA is kept"
    );
    assert_eq!(
        s.metric("keelson_join_requests_total"),
        0,
        "no credential may reach the impostor"
    );
    assert_eq!(s.metric("keelson_tunnels_opened_total"), 0);
    assert!(node(&s, "pi-tofu").is_none());
}

#[test]
fn a_second_board_cannot_take_an_existing_node_name() {
    let s = Server::start(Options::default());
    let first = Agent::start(&s.url(), &s.token(), "pi-dup", &[]);
    first.wait_log("tunnel connected", JOIN_TIMEOUT);

    let mut second = Agent::start(&s.url(), &s.token(), "pi-dup", &[]);
    second.wait_failure(JOIN_TIMEOUT);
    let log = second.log();
    assert!(log.contains("already registered by another board"), "{log}");
    assert!(log.contains("--with-node-id"), "{log}");

    // With --with-node-id it gets a unique, persistent name.
    let third = Agent::start(&s.url(), &s.token(), "pi-dup", &["--with-node-id"]);
    third.wait_log("tunnel connected", JOIN_TIMEOUT);
    let id = std::fs::read_to_string(third.data_dir().join("agent/node-id")).unwrap();
    let name = format!("pi-dup-{}", id.trim());
    wait_until("the suffixed node is Ready", JOIN_TIMEOUT, || {
        is_ready(&s, &name)
    });
    assert!(is_ready(&s, "pi-dup"), "the first board keeps its node");
}

#[test]
fn a_killed_agent_goes_unreachable_and_comes_back() {
    let grace = Duration::from_secs(6);
    let s = Server::start(Options::default().arg("--node-monitor-grace-period", "6s"));
    let mut agent = Agent::start(&s.url(), &s.token(), "pi-flaky", &[]);
    agent.wait_log("tunnel connected", JOIN_TIMEOUT);
    wait_until("the agent is Ready", JOIN_TIMEOUT, || {
        is_ready(&s, "pi-flaky")
    });

    agent.kill();
    let bound = grace + LIFECYCLE_PERIOD + OBSERVE_MARGIN;
    let took = wait_until(
        "the killed agent is NotReady with both unreachable taints",
        bound + Duration::from_secs(15),
        || {
            node(&s, "pi-flaky").is_some_and(|n| {
                ready(&n) == "Unknown" && unreachable_taints(&n) == ["NoExecute", "NoSchedule"]
            })
        },
    );
    assert!(
        took <= bound,
        "took {took:?}, more than grace ({grace:?}) + one lifecycle period ({LIFECYCLE_PERIOD:?}) \
         + {OBSERVE_MARGIN:?} margin"
    );
    eprintln!("the killed agent was NotReady after {took:?} (grace {grace:?}, bound {bound:?})");
    assert!(
        is_ready(&s, s.node_name()),
        "the server's own node is unaffected"
    );

    agent.spawn();
    wait_until(
        "the restarted agent is Ready without taints",
        JOIN_TIMEOUT,
        || is_ready(&s, "pi-flaky"),
    );
    assert!(
        agent.log().contains("tunnel connected") && !agent.log().contains("joined the cluster"),
        "a restarted agent reuses its certificate:\n{}",
        agent.log()
    );
}

/// A websocket client on a raw TLS stream, to send what no real agent would.
fn raw_tunnel(
    s: &Server,
    agent: &Agent,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let (head, tls) = common::agent::open_raw_tunnel(s.port(), agent);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    tls
}

/// A masked client frame with `len` claimed and `payload` sent.
fn frame(opcode: u8, len: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    let mask = [1u8, 2, 3, 4];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads until the server closes; true if it sent a close frame or ended the stream.
fn closed_by_server(tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) if buf[..n].contains(&0x88) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn malformed_and_oversized_frames_close_only_that_connection() {
    let s = Server::start(Options::default());
    let agent = Agent::start(&s.url(), &s.token(), "pi-steady", &[]);
    agent.wait_log("tunnel connected", JOIN_TIMEOUT);
    let opened = s.metric("keelson_tunnels_opened_total");

    let mut malformed = raw_tunnel(&s, &agent);
    malformed
        .write_all(&frame(0x2, 5, &[0xff, 0xff, 0xff, 0xff, 0x0f]))
        .unwrap();
    malformed.flush().unwrap();
    assert!(
        closed_by_server(&mut malformed),
        "a malformed frame must close the connection"
    );

    let mut oversized = raw_tunnel(&s, &agent);
    oversized
        .write_all(&frame(0x2, 1 << 20, &[0u8; 1024]))
        .unwrap();
    oversized.flush().unwrap();
    assert!(
        closed_by_server(&mut oversized),
        "an oversized frame must close the connection"
    );

    let log = s.log();
    assert!(
        log.contains("malformed frame"),
        "the reason is logged:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("closing tunnel") && l.contains("too long")
                || l.contains("closing tunnel") && l.contains("larger")),
        "the oversized frame's reason is logged:\n{log}"
    );
    // The real agent never noticed, and the server serves on.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        agent.log().matches("tunnel connected").count(),
        1,
        "{}",
        agent.log()
    );
    assert!(!agent.log().contains("tunnel lost"), "{}", agent.log());
    assert!(is_ready(&s, "pi-steady"));
    assert_eq!(s.metric("keelson_tunnels"), 1);
    assert_eq!(s.metric("keelson_tunnels_opened_total"), opened + 2);
    assert!(s.kubectl(&["get", "nodes"]).status.success());
}

/// Starts `keelson loadgen` with `n` agents named `<prefix>-i`.
fn loadgen(s: &Server, n: usize, prefix: &str) -> common::agent::Loadgen {
    common::agent::Loadgen::start(&s.url(), &s.token(), n, prefix)
}

fn statements_per_second(s: &Server, window: Duration) -> f64 {
    let before = s.metric("keelson_datastore_statements_total");
    thread::sleep(window);
    let after = s.metric("keelson_datastore_statements_total");
    (after - before) as f64 / window.as_secs_f64()
}

#[test]
fn database_statements_do_not_grow_with_the_number_of_agents() {
    let s = Server::start(Options::default());
    let _ten = loadgen(&s, 10, "ten");
    wait_until("10 tunnels are open", JOIN_TIMEOUT, || {
        s.metric("keelson_tunnels") == 10
    });
    thread::sleep(Duration::from_secs(6));
    let with_10 = statements_per_second(&s, Duration::from_secs(15));

    let _more = loadgen(&s, 190, "more");
    wait_until("200 tunnels are open", Duration::from_secs(180), || {
        s.metric("keelson_tunnels") == 200
    });
    thread::sleep(Duration::from_secs(6));
    let with_200 = statements_per_second(&s, Duration::from_secs(15));
    eprintln!("statements/s: {with_10:.2} with 10 agents, {with_200:.2} with 200");
    assert!(
        with_200 <= 2.0 * with_10.max(0.5),
        "statements/s grew from {with_10:.2} (10 agents) to {with_200:.2} (200 agents)"
    );
}

#[test]
fn the_agent_token_joins_agents_but_cannot_start_a_server() {
    let mut s = Server::start(Options::default().arg("--agent-token", "agents-only-secret"));
    // In its K10 form, with the cluster CA's hash from the server token.
    let hash = s.token()[3..].split("::").next().unwrap().to_owned();
    let agent_token = format!("K10{hash}::node:agents-only-secret");
    let agent = Agent::start(&s.url(), &agent_token, "pi-agent-token", &[]);
    agent.wait_log("tunnel connected", JOIN_TIMEOUT);
    wait_until("the agent is Ready", JOIN_TIMEOUT, || {
        is_ready(&s, "pi-agent-token")
    });

    // A server on the same datastore holding only the agent token is refused: while the first
    // runs, because one SQLite file serves one server; once it stopped, for the token.
    let db = s.data_dir().join("server/db/state.db");
    let would_be = || {
        let mut o = Options::default()
            .arg(
                "--datastore-endpoint",
                &format!("sqlite://{}", db.display()),
            )
            .arg("--token", "agents-only-secret");
        o.node_name = "would-be-server".into();
        Server::try_start(o)
            .err()
            .expect("a server must not start with the agent token")
    };
    let refused = would_be();
    assert!(!refused.status.success());
    assert!(
        refused.log.contains("a keelson server is running on"),
        "{}",
        refused.log
    );
    s.stop();
    let refused = would_be();
    assert!(!refused.status.success());
    assert!(
        refused.log.contains("does not open the cluster data"),
        "{}",
        refused.log
    );
}
