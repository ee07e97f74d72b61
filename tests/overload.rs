//! Overload (issue 17 item 7), the connection bound: with every one of the API's 512
//! connections held open by authenticated clients, the next client — kubectl included — is
//! answered at once with a clear 503, not left hanging until its TLS handshake times out; and
//! once connections close, clients are served again.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Options, Server, wait_until};

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
