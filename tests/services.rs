//! Services programmed with nftables on a node, seen from real TCP clients: a keelson server
//! (a node with the runc runtime, so it follows the network view and writes the
//! `inet keelson-services` table) inside a network namespace this test creates, two
//! "endpoint" namespaces running a tiny TCP server that answers its own name, and a client
//! namespace routed through the board.
//!
//! ```text
//!   ksvc-<tag>-c  198.18.10.2 ──── 198.18.10.1 ┐
//!   ksvc-<tag>-e1 198.18.11.2 ──── 198.18.11.1 ├ ksvc-<tag>-b (the board: keelson server,
//!   ksvc-<tag>-e2 198.18.12.2 ──── 198.18.12.1 ┘  198.19.128.0/17 routed towards e1)
//! ```
//!
//! Every address is inside 198.18.0.0/15 and every route stays inside the namespaces; the
//! namespaces (and with them links and the nftables table) go when the lab is dropped, also on
//! a panic. Services have no selector; the test writes their EndpointSlices by hand.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{COMMAND_TIMEOUT, READY_TIMEOUT, run, wait_until};

const BOARD_IP: &str = "198.18.10.1";
const EP1_IP: &str = "198.18.11.2";
const EP2_IP: &str = "198.18.12.2";
// Off every lab link: the client reaches it only through the board.
const EXTERNAL_IP: &str = "198.18.20.50";
const PORT: u16 = 8080;
const NODE_PORT: u16 = 30080;

static LABS: AtomicU32 = AtomicU32::new(0);

/// Root, `ip`, `nft`, `runc`, `python3`, `kubectl`, `curl`: missing ones fail the test
/// unless `KEELSON_ALLOW_SKIP=1` (see `common::skip`).
fn prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces and nftables need it)".to_owned());
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("runc", "runc"),
        ("python3", "python3"),
        ("kubectl", "kubectl"),
        ("curl", "curl"),
    ] {
        let found = Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(format!("{tool} (apt-get install -y {package})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("the Service rules test needs: {}", missing.join("; "));
    common::skip::missing(test, &msg);
    false
}

/// The namespaces, the processes in them and the board's keelson server.
struct Lab {
    tag: String,
    dir: tempfile::TempDir,
    /// Killed (and reaped) on drop, before the namespaces go.
    children: Vec<Child>,
    server: Option<Child>,
}

impl Lab {
    fn new() -> Lab {
        remove_stale_labs();
        let tag = format!(
            "{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            tag,
            dir: tempfile::Builder::new()
                .prefix("keelson-svc-")
                .tempdir()
                .expect("temp dir"),
            children: Vec::new(),
            server: None,
        };
        let short = lab.tag.replace('-', "");
        for ns in ["b", "c", "e1", "e2"] {
            sh(&format!("ip netns add {}", lab.ns(ns)));
            sh(&format!("ip -n {} link set lo up", lab.ns(ns)));
        }
        let b = lab.ns("b");
        for (ns, net) in [("c", 10), ("e1", 11), ("e2", 12)] {
            let (inner, outer) = (format!("v{short}{ns}"), format!("b{short}{ns}"));
            sh(&format!(
                "ip link add {outer} netns {b} type veth peer name {inner} netns {}",
                lab.ns(ns)
            ));
            sh(&format!("ip -n {b} addr add 198.18.{net}.1/24 dev {outer}"));
            sh(&format!("ip -n {b} link set {outer} up"));
            sh(&format!(
                "ip -n {} addr add 198.18.{net}.2/24 dev {inner}",
                lab.ns(ns)
            ));
            sh(&format!("ip -n {} link set {inner} up", lab.ns(ns)));
            // Everything of the lab's range through the board; nothing anywhere else.
            sh(&format!(
                "ip -n {} route add 198.18.0.0/15 via 198.18.{net}.1",
                lab.ns(ns)
            ));
        }
        sh(&format!(
            "ip netns exec {b} sysctl -qw net.ipv4.ip_forward=1"
        ));
        // The Service range is routed somewhere on the board, as on a node with a default
        // route: packets to a cluster IP without endpoints reach the filter hooks (and are
        // rejected there) instead of failing the route lookup. Not back towards the client:
        // the ICMP redirect that would cause uses up the per-host ICMP budget the reject's
        // port-unreachable needs. (An unrejected packet would loop until its TTL ends.)
        sh(&format!(
            "ip -n {b} route add 198.19.128.0/17 via 198.18.11.2"
        ));
        lab
    }

    fn ns(&self, which: &str) -> String {
        format!("ksvc-{}-{which}", self.tag)
    }

    /// A TCP server on port 8080 in `ns` that answers every connection with `name`.
    fn echo_name(&mut self, ns: &str, name: &str) {
        let script = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{PORT}))\ns.listen(128)\nwhile True:\n    c,_=s.accept()\n    c.sendall(b'{name}\\n')\n    c.close()\n"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), "python3", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the echo server");
        self.children.push(child);
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig.yaml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `keelson server` on the board with the runc runtime (so the node follows the network
    /// view) and the lab's ranges; waits until it is ready.
    fn start_server(&mut self) {
        let log = fs::File::create(self.log_path()).expect("create the server log");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns("b"),
            env!("CARGO_BIN_EXE_keelson"),
        ])
        .arg("server")
        .arg(format!("--data-dir={}", self.data_dir().display()))
        .arg(format!(
            "--write-kubeconfig={}",
            self.kubeconfig().display()
        ))
        .args([
            "--node-name=board",
            "--runtime=runc",
            "--cluster-cidr=198.19.0.0/17",
            "--service-cidr=198.19.128.0/17",
            "--flannel-backend=none",
            "--debug",
        ])
        .arg(format!(
            "--private-registry={}",
            self.dir.path().join("registries.yaml").display()
        ))
        .env("HOME", self.dir.path().join("home"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log"))
        .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KEELSON_") {
                cmd.env_remove(&key);
            }
        }
        self.server = Some(cmd.spawn().expect("spawn keelson server"));
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("keelson server exited ({status}):\n{}", self.log());
            }
            let out = self.exec(
                "b",
                &[
                    "curl",
                    "--silent",
                    "--insecure",
                    "--max-time",
                    "2",
                    "https://127.0.0.1:6443/readyz",
                ],
            );
            if out.stdout == b"ok" {
                return;
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "keelson server not ready within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs a command in namespace `ns` (bounded).
    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        run(
            Command::new("ip")
                .args(["netns", "exec", &self.ns(ns)])
                .args(args),
            COMMAND_TIMEOUT,
        )
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig().display());
        let mut all = vec!["kubectl", &kubeconfig];
        all.extend_from_slice(args);
        let out = self.exec("b", &all);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, name: &str, yaml: &str) {
        let path = self.dir.path().join(format!("{name}.yaml"));
        fs::write(&path, yaml).expect("write a manifest");
        self.kubectl(&["apply", "-f", &path.display().to_string()]);
    }

    /// The board's table, as `nft list` prints it (empty if there is none).
    fn table(&self) -> String {
        let out = self.exec("b", &["nft", "list", "table", "inet", "keelson-services"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `count` connections from `ns` to `addr:port`, one after another; each answer is the
    /// endpoint's name, `refused` or `timeout`, with the Unix time it came back at.
    fn ask(
        &self,
        ns: &str,
        addr: &str,
        port: u16,
        count: usize,
        pause_ms: u64,
    ) -> Vec<(f64, String)> {
        let script = format!(
            r#"import socket, time
for i in range({count}):
    try:
        s = socket.create_connection(("{addr}", {port}), timeout=2)
        s.settimeout(2)
        got = s.recv(64).decode().strip() or "empty"
        s.close()
    except ConnectionRefusedError:
        got = "refused"
    except OSError as e:
        got = "timeout" if isinstance(e, socket.timeout) else "error:" + type(e).__name__
    print("%.3f %s" % (time.time(), got), flush=True)
    time.sleep({pause_ms} / 1000)
"#
        );
        let out = self.exec(ns, &["python3", "-c", &script]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (t, name) = l.split_once(' ')?;
                Some((t.parse().ok()?, name.to_owned()))
            })
            .collect()
    }

    fn names(&self, ns: &str, addr: &str, port: u16, count: usize) -> Vec<String> {
        let mut names: Vec<String> = self
            .ask(ns, addr, port, count, 0)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- keelson server log (last lines) ---\n{}",
            lines[from..].join("\n")
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}\n--- nft table ---\n{}", self.log_tail(), self.table());
        }
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        common::remove_containers(&self.data_dir());
        for ns in ["b", "c", "e1", "e2"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(ns)])
                .output();
        }
    }
}

/// Namespaces of labs whose test process is gone (killed before it could clean up).
fn remove_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("ksvc-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

fn sh(cmd: &str) {
    let out = run(Command::new("sh").args(["-c", cmd]), COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Service without a selector, port 80 (named `web`) to the endpoints' 8080.
fn service(name: &str, node_port: Option<u16>, extra_spec: &str) -> String {
    let node_port = node_port.map_or(String::new(), |p| format!("    nodePort: {p}\n"));
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  ports:\n  - name: web\n    port: 80\n    targetPort: {PORT}\n{node_port}{extra_spec}"
    )
}

fn slice(service: &str, endpoints: &[(&str, bool)]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n- name: web\n  port: {PORT}\n  protocol: TCP\nendpoints:\n"
    );
    for (addr, ready) in endpoints {
        y.push_str(&format!(
            "- addresses: [\"{addr}\"]\n  conditions:\n    ready: {ready}\n"
        ));
    }
    y
}

#[test]
fn services_are_programmed_with_nftables_and_follow_their_endpoints() {
    if !prerequisites("services_are_programmed_with_nftables_and_follow_their_endpoints") {
        return;
    }
    let mut lab = Lab::new();
    lab.echo_name("e1", "ep1");
    lab.echo_name("e2", "ep2");
    lab.start_server();

    // A NodePort Service with an external IP, without a selector, and its slice by hand.
    lab.apply(
        "echo",
        &format!(
            "{}---\n{}",
            service(
                "echo",
                Some(NODE_PORT),
                &format!("  type: NodePort\n  externalIPs: [\"{EXTERNAL_IP}\"]\n")
            ),
            slice("echo", &[(EP1_IP, true), (EP2_IP, true)])
        ),
    );
    let cluster_ip = lab
        .kubectl(&["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .to_owned();
    assert!(cluster_ip.starts_with("198.19."), "{cluster_ip}");
    wait_until(
        "the board programs the Service",
        Duration::from_secs(20),
        || {
            let t = lab.table();
            t.contains(&format!("{cluster_ip} . tcp . 80")) && t.contains(EP2_IP)
        },
    );

    // What the table holds for echo (and the `kubernetes` Service): what must remain at the end.
    let chains_before = lab.table().matches("\tchain ").count();

    // ClusterIP from the board itself (locally generated) and from the client routed
    // through it: both endpoints answer.
    let both = vec!["ep1".to_owned(), "ep2".to_owned()];
    assert_eq!(lab.names("b", &cluster_ip, 80, 30), both, "from the board");
    assert_eq!(lab.names("c", &cluster_ip, 80, 30), both, "from the client");
    // NodePort on the board's address, from the client; the external IP too.
    assert_eq!(lab.names("c", BOARD_IP, NODE_PORT, 30), both, "NodePort");
    assert_eq!(
        lab.names("b", BOARD_IP, NODE_PORT, 30),
        both,
        "NodePort from the board"
    );
    assert_eq!(lab.names("c", EXTERNAL_IP, 80, 30), both, "external IP");

    // ep2 made not ready: out of rotation within a second of the API taking the change.
    let path = lab.dir.path().join("unready.yaml");
    fs::write(&path, slice("echo", &[(EP1_IP, true), (EP2_IP, false)])).unwrap();
    let kubeconfig = format!("--kubeconfig={}", lab.kubeconfig().display());
    let applied = lab.exec(
        "b",
        &[
            "kubectl",
            &kubeconfig,
            "apply",
            "-f",
            &path.display().to_string(),
        ],
    );
    assert!(applied.status.success());
    let changed_at = unix_now();
    let answers = lab.ask("c", &cluster_ip, 80, 150, 10);
    // Seconds from the apply's return to the last answer from ep2 (answers carry the Unix
    // time they came back at).
    let last_ep2 = answers
        .iter()
        .filter(|(_, n)| n == "ep2")
        .map(|(t, _)| *t - changed_at)
        .fold(0.0_f64, f64::max);
    assert!(
        last_ep2 < 1.0,
        "ep2 still answered {last_ep2:.3}s after it was marked not ready: {answers:?}"
    );
    let tail: Vec<&String> = answers.iter().rev().take(50).map(|(_, n)| n).collect();
    assert!(tail.iter().all(|n| *n == "ep1"), "{answers:?}");
    eprintln!("an unready endpoint was out of rotation after {last_ep2:.3}s (last answer from it)");

    // Session affinity: every connection of the client sticks to one endpoint.
    lab.apply(
        "echo-ready",
        &slice("echo", &[(EP1_IP, true), (EP2_IP, true)]),
    );
    lab.apply(
        "sticky",
        &format!(
            "{}---\n{}",
            service("sticky", None, "  sessionAffinity: ClientIP\n"),
            slice("sticky", &[(EP1_IP, true), (EP2_IP, true)])
        ),
    );
    let sticky_ip = lab
        .kubectl(&[
            "get",
            "service",
            "sticky",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_owned();
    wait_until("the board programs sticky", Duration::from_secs(20), || {
        lab.table().contains(&format!("{sticky_ip} . tcp . 80"))
    });
    let stuck = lab.names("c", &sticky_ip, 80, 30);
    assert_eq!(stuck.len(), 1, "ClientIP affinity: {stuck:?}");
    assert!(stuck[0].starts_with("ep"), "{stuck:?}");
    wait_until(
        "echo has both endpoints again",
        Duration::from_secs(10),
        || lab.names("c", &cluster_ip, 80, 20) == both,
    );

    // No endpoints: refused at once, from the board and from the client.
    lab.apply("empty", &service("empty", None, ""));
    let empty_ip = lab
        .kubectl(&[
            "get",
            "service",
            "empty",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_owned();
    wait_until("the board programs empty", Duration::from_secs(20), || {
        lab.table()
            .contains(&format!("{empty_ip} . tcp . 80 : goto reject-chain"))
    });
    for ns in ["b", "c"] {
        let asked = unix_now();
        let answers = lab.ask(ns, &empty_ip, 80, 3, 0);
        assert!(
            answers.iter().all(|(_, n)| n == "refused"),
            "from {ns}: {answers:?}"
        );
        let took = answers.last().map_or(9.0, |(t, _)| *t) - asked;
        assert!(took < 1.5, "three refusals took {took}s");
    }

    // Two Services claim the same external IP and port: the second is skipped with a log,
    // the first keeps working, the table stays whole.
    lab.apply(
        "thief",
        &format!(
            "{}---\n{}",
            service(
                "thief",
                None,
                &format!("  externalIPs: [\"{EXTERNAL_IP}\"]\n")
            ),
            slice("thief", &[(EP1_IP, true)])
        ),
    );
    wait_until("the skip is logged", Duration::from_secs(20), || {
        lab.log().contains("Service port not programmed")
    });
    assert!(lab.log().contains("default/thief"), "{}", lab.log_tail());
    assert_eq!(
        lab.names("c", EXTERNAL_IP, 80, 30),
        both,
        "echo keeps its external IP"
    );

    // Deleting a Service removes everything of it.
    lab.kubectl(&["delete", "service", "sticky", "empty", "thief"]);
    wait_until("their rules are gone", Duration::from_secs(20), || {
        let t = lab.table();
        !t.contains(&sticky_ip) && !t.contains(&empty_ip) && !t.contains("affinity-")
    });
    let t = lab.table();
    assert_eq!(
        t.matches("\tchain ").count(),
        chains_before,
        "only echo's chains remain:\n{t}"
    );
    assert!(t.contains(&format!("{cluster_ip} . tcp . 80")));
}
