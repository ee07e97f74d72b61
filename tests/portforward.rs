//! The real `kubectl port-forward` against a real server: kubectl's upgrade (a websocket
//! carrying SPDY, and the plain SPDY upgrade it falls back to), its SPDY streams and the error
//! stream, end to end. Nodes here run no containers, so what a user can see is the errors:
//! the node's refusal of a forwarded connection, and Kubernetes' answer for a pod on no node.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Options, Server, create, refused};

/// Longest kubectl may take to forward, fail, or exit after failing.
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn port_forward_over_a_websocket_prints_the_nodes_refusal() {
    let s = Server::start(Options::default());
    let uid = running_pod(&s, Some(s.node_name()));
    let stderr = forward_once(&s, &[]);
    // kubectl 1.31+ tunnels SPDY in a websocket (a GET answered 101), and does not fall back.
    assert!(
        stderr.contains("GET ") && stderr.contains("/pods/web/portforward 101"),
        "kubectl did not use the websocket tunnel:\n{stderr}"
    );
    assert!(
        !stderr.contains("POST "),
        "kubectl fell back to SPDY:\n{stderr}"
    );
    assert_refused(&stderr, &uid);
}

#[test]
fn port_forward_over_a_spdy_upgrade_prints_the_nodes_refusal() {
    let s = Server::start(Options::default());
    let uid = running_pod(&s, Some(s.node_name()));
    // kubectl's switch for its pre-1.31 behaviour: `Upgrade: SPDY/3.1` on a POST.
    let stderr = forward_once(&s, &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")]);
    assert!(
        stderr.contains("POST ") && stderr.contains("/pods/web/portforward 101"),
        "kubectl did not use the SPDY upgrade:\n{stderr}"
    );
    assert_refused(&stderr, &uid);
}

#[test]
fn port_forward_to_a_pod_on_no_node_prints_kubernetes_message() {
    let s = Server::start(Options::default());
    running_pod(&s, None);
    let stderr = refused(&s, &["port-forward", "pod/web", ":8080"]);
    assert!(
        stderr.contains("pod web does not have a host assigned"),
        "{stderr}"
    );
}

#[test]
fn port_forward_over_websocket_channels_opens_the_ports_channels() {
    // The form other clients than kubectl use: ports in the query, `v4.channel.k8s.io`. curl
    // cannot speak websocket, but shows the answer and the first frames the server sends.
    let s = Server::start(Options::default());
    let uid = running_pod(&s, Some(s.node_name()));
    let upgrade = |query: &str| {
        let url = format!(
            "{}/api/v1/namespaces/default/pods/web/portforward{query}",
            s.url()
        );
        s.curl(&[
            "--http1.1",
            "--max-time",
            "3",
            "--include",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "-H",
            "Sec-WebSocket-Protocol: v4.channel.k8s.io",
            &url,
        ])
    };
    let r = upgrade("");
    assert_eq!(r.status, Some(400), "{}", r.body);
    assert!(
        r.body.contains(r#"query parameter \"ports\" is required"#),
        "{}",
        r.body
    );
    let r = upgrade("?ports=8080");
    assert_eq!(r.status, Some(101), "{}", r.body);
    assert!(
        r.body
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: v4.channel.k8s.io"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains(&format!(
            "error forwarding port 8080 to pod default/web, uid {uid}: pod default/web has no containers on this node"
        )),
        "the error channel did not carry the node's refusal:\n{}",
        r.body
    );
}

/// Creates pod `web` on `node` (or on none: a selector no node matches) and marks it Running,
/// which kubectl checks before it forwards; nothing here runs it. Returns its uid.
fn running_pod(s: &Server, node: Option<&str>) -> String {
    let placement = match node {
        Some(n) => format!("  nodeName: {n}\n"),
        None => "  nodeSelector:\n    shelf: none\n".to_owned(),
    };
    create(
        s,
        "web",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n{placement}  containers:\n  - name: app\n    image: busybox\n"
        ),
    );
    s.kubectl_ok(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
    s.kubectl_ok(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"])
}

/// Runs `kubectl port-forward pod/web :8080`, makes one connection through it, and returns
/// what kubectl printed on stderr once it exited (it gives up when a connection fails).
fn forward_once(s: &Server, env: &[(&str, &str)]) -> String {
    let mut cmd = s.kubectl_command(
        &s.kubeconfig(),
        &["port-forward", "pod/web", ":8080", "-v=6"],
    );
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Killed(cmd.spawn().expect("spawn kubectl port-forward"));
    let stdout = child.0.stdout.take().expect("piped stdout");
    let stderr = child.0.stderr.take().expect("piped stderr");
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let port = loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("kubectl did not start forwarding"));
        if let Some(p) = line
            .strip_prefix("Forwarding from 127.0.0.1:")
            .and_then(|rest| rest.split(' ').next())
        {
            break p.parse::<u16>().expect("a local port");
        }
    };
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to kubectl");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n");
    // The node refuses: kubectl closes the connection without a byte from the pod.
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "bytes from a pod that does not run: {got:?}"
    );
    let start = Instant::now();
    while child.0.try_wait().expect("wait for kubectl").is_none() {
        assert!(
            start.elapsed() < WAIT,
            "kubectl kept running after the error"
        );
        thread::sleep(Duration::from_millis(20));
    }
    stderr.join().expect("kubectl's stderr")
}

/// What kubectl prints when the node refuses a forwarded connection: the error stream's text.
fn assert_refused(stderr: &str, uid: &str) {
    let expected = format!(
        "-> 8080: error forwarding port 8080 to pod default/web, uid {uid}: pod default/web has no containers on this node: the node runs no container runtime"
    );
    assert!(
        stderr.contains("an error occurred forwarding") && stderr.contains(&expected),
        "kubectl did not print the node's refusal:\n{stderr}"
    );
}

/// A child process killed when the test is done with it, passed or failed.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
