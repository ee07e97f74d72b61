//! Pods get network interfaces through CNI, checked on one board (a keelson server whose own
//! node runs the pods) inside network namespaces this test creates:
//!
//! ```text
//!   kcni-<tag>-c (client)  ── veth ──  kcni-<tag>-b (board: keelson server, cni0, pods)
//!   198.18.77.2/24                     198.18.77.1/24, pods in 198.19.0.0/17
//! ```
//!
//! With keelson's own configuration (`--flannel-backend vxlan`, the default) two pods get
//! addresses from the node's block, reach each other, the board reaches them, hostPort works
//! from the client, a deleted pod's address and veth are gone, and a restarted server adopts
//! the running pods' interfaces without calling ADD again. With `--flannel-backend none` and a
//! test-written configuration whose last plugin misbehaves (fails, hangs, prints garbage),
//! each pod gets a clear event and waiting message and nothing is left behind.
//!
//! Every address is in 198.18.0.0/15 and lives only in these namespaces (no default routes),
//! so nothing leaves them. keelson runs under `nsenter --net` (not `ip netns exec`, which
//! would give it a mount namespace of its own and hide the pods' namespace mounts from a
//! restarted server). Namespaces, the processes and the containers go when a [`Board`] drops,
//! also on panic; namespaces left by a killed test run are removed by the next.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const BOARD_IP: &str = "198.18.77.1";
const CLIENT_IP: &str = "198.18.77.2";
const CLUSTER_CIDR: &str = "198.19.0.0/17";
const SERVICE_CIDR: &str = "198.19.128.0/17";
/// The block of the test-written configuration (`--flannel-backend none`).
const OWN_SUBNET: &str = "198.19.100.0/24";
const HOST_PORT: u16 = 18080;
const NS_PREFIX: &str = "kcni-";
const WAIT: Duration = Duration::from_secs(90);

static BOARDS: AtomicU32 = AtomicU32::new(0);

/// The directory holding bridge, host-local and portmap, or a failure (a loud skip with `KEELSON_ALLOW_SKIP=1`).
fn prerequisites(test: &str) -> Option<PathBuf> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    for (tool, package) in [
        ("runc", "runc"),
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("kubectl", "kubectl"),
        ("curl", "curl"),
        ("iptables", "iptables (portmap programs hostPorts with it)"),
    ] {
        if Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"),
            ])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            missing.push(format!("{tool} ({package})"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (busybox-static)".into());
    }
    let plugins = ["/opt/cni/bin", "/usr/lib/cni"]
        .map(PathBuf::from)
        .into_iter()
        .find(|d| {
            ["bridge", "host-local", "portmap"]
                .iter()
                .all(|p| d.join(p).exists())
        });
    if plugins.is_none() {
        missing.push(
            "the CNI plugins bridge, host-local, portmap (containernetworking-plugins)".into(),
        );
    }
    if missing.is_empty() {
        return plugins;
    }
    let msg = format!("the pod network test needs: {}", missing.join(", "));
    common::skip::missing(test, &msg);
    None
}

/// A board namespace running a keelson server, and a client namespace beside it.
struct Board {
    board: String,
    client: String,
    dir: tempfile::TempDir,
    flags: Vec<String>,
    child: Option<Child>,
    starts: u32,
}

impl Board {
    fn new(flags: &[String]) -> Board {
        remove_stale_namespaces();
        let n = BOARDS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{}", std::process::id(), n);
        let board = format!("{NS_PREFIX}{tag}-b");
        let client = format!("{NS_PREFIX}{tag}-c");
        let dir = tempfile::Builder::new()
            .prefix("keelson-podnet-")
            .tempdir()
            .expect("temp dir");
        let b = Board {
            board,
            client,
            dir,
            flags: flags.to_vec(),
            child: None,
            starts: 0,
        };
        let (vb, vc) = (format!("kcb{tag}"), format!("kcc{tag}"));
        for args in [
            vec!["netns", "add", &b.board],
            vec!["netns", "add", &b.client],
            vec!["link", "add", &vb, "type", "veth", "peer", "name", &vc],
            vec!["link", "set", &vb, "netns", &b.board],
            vec!["link", "set", &vc, "netns", &b.client],
            vec![
                "-n",
                &b.board,
                "addr",
                "add",
                &format!("{BOARD_IP}/24"),
                "dev",
                &vb,
            ],
            vec![
                "-n",
                &b.client,
                "addr",
                "add",
                &format!("{CLIENT_IP}/24"),
                "dev",
                &vc,
            ],
            vec!["-n", &b.board, "link", "set", &vb, "up"],
            vec!["-n", &b.client, "link", "set", &vc, "up"],
            vec!["-n", &b.board, "link", "set", "lo", "up"],
            vec!["-n", &b.client, "link", "set", "lo", "up"],
        ] {
            ip(&args);
        }
        fs::create_dir_all(b.data_dir().join("agent/images")).expect("images dir");
        write_busybox_archive(&b.data_dir().join("agent/images/busybox.tar"));
        b
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig.yaml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("server-{}.log", self.starts))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// A command run in namespace `ns` (network only).
    fn in_ns(ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program);
        cmd
    }

    fn start(&mut self) {
        self.starts += 1;
        let log = fs::File::create(self.log_path()).expect("log");
        let mut cmd = Board::in_ns(&self.board, env!("CARGO_BIN_EXE_keelson"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KEELSON_") {
                cmd.env_remove(&key);
            }
        }
        cmd.arg("server")
            .arg(format!(
                "--config={}",
                self.dir.path().join("none.yaml").display()
            ))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!(
                "--write-kubeconfig={}",
                self.kubeconfig().display()
            ))
            .arg(format!("--bind-address={BOARD_IP}"))
            .arg(format!("--node-ip={BOARD_IP}"))
            .arg("--node-name=board")
            .arg(format!("--cluster-cidr={CLUSTER_CIDR}"))
            .arg(format!("--service-cidr={SERVICE_CIDR}"))
            .arg("--runtime=runc")
            .arg(format!(
                "--private-registry={}",
                self.dir.path().join("no-registries.yaml").display()
            ))
            .arg(format!("--cni-conf-dir={}", self.conf_dir().display()))
            .args(&self.flags)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        fs::write(self.dir.path().join("none.yaml"), "").expect("config");
        self.child = Some(cmd.spawn().expect("spawn keelson"));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("keelson exited ({status}):\n{}", self.log_tail());
            }
            let out = self.board_cmd(
                "curl",
                &[
                    "-sk",
                    "--max-time",
                    "2",
                    &format!("https://{BOARD_IP}:6443/readyz"),
                ],
            );
            if String::from_utf8_lossy(&out.stdout) == "ok" {
                break;
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
        // The node registered and its pod block (if the controllers hand one out) arrived.
        self.wait("the node to be Ready", |b| {
            b.kubectl(&[
                "get",
                "node",
                "board",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            ])
            .0 == "True"
        });
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn board_cmd(&self, program: &str, args: &[&str]) -> Output {
        common::run(
            Board::in_ns(&self.board, program).args(args),
            common::COMMAND_TIMEOUT,
        )
    }

    fn client_cmd(&self, program: &str, args: &[&str]) -> Output {
        common::run(
            Board::in_ns(&self.client, program).args(args),
            common::COMMAND_TIMEOUT,
        )
    }

    /// kubectl in the board's namespace: (stdout, stderr, success).
    fn kubectl(&self, args: &[&str]) -> (String, String, bool) {
        let mut full = vec![format!("--kubeconfig={}", self.kubeconfig().display())];
        full.extend(args.iter().map(|s| s.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let mut cmd = Board::in_ns(&self.board, "kubectl");
        cmd.args(&full)
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"));
        let out = common::run(&mut cmd, common::COMMAND_TIMEOUT);
        (
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            out.status.success(),
        )
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let (out, err, ok) = self.kubectl(args);
        assert!(ok, "kubectl {args:?}: {err}\n{}", self.log_tail());
        out
    }

    fn apply(&self, yaml: &str) {
        let file = self.dir.path().join("manifest.yaml");
        fs::write(&file, yaml).expect("manifest");
        self.kubectl_ok(&["apply", "-f", &file.display().to_string()]);
    }

    fn pod(&self, name: &str) -> Value {
        let out = self.kubectl_ok(&["get", "pod", name, "-o", "json"]);
        serde_json::from_str(&out).expect("pod json")
    }

    fn wait(&self, what: &str, mut ok: impl FnMut(&Board) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn wait_running(&self, name: &str) -> String {
        self.wait(&format!("pod {name} Running"), |b| {
            b.pod(name)["status"]["phase"] == "Running"
        });
        self.pod(name)["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The host ends of the pods' veths in the board's namespace.
    fn veths(&self) -> Vec<String> {
        let out = self.board_cmd("ip", &["-o", "link", "show", "type", "veth"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n.starts_with("veth"))
            .collect()
    }

    /// The addresses host-local holds in `dir` (one file per address).
    fn held(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    fn events_of(&self, pod: &str) -> String {
        self.kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={pod}"),
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ])
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- keelson log tail ---\n{}", self.log_tail());
        }
        self.stop();
        common::remove_containers(&self.data_dir());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.board])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .output();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces of test processes that no longer run.
fn remove_stale_namespaces() {
    for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        // The tag is the test process's pid, `x` and a counter.
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// busybox as a docker-archive tarball for the air-gapped import.
fn write_busybox_archive(path: &Path) {
    let layer = common::registry::busybox_layer(&common::registry::host_platform(), true);
    let diff_id = common::registry::sha256(&layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": ["docker.io/library/busybox:1.36"], "Layers": ["layer.tar"],
    }])
    .to_string();
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("manifest.json", manifest.as_bytes()),
        ("config.json", config.as_bytes()),
        ("layer.tar", &layer[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        tar.append_data(&mut h, name, bytes).expect("tar");
    }
    fs::write(path, tar.into_inner().expect("tar")).expect("write the image archive");
}

/// A pod serving `hello-<name>` over HTTP on 8080, optionally on a hostPort.
fn web_pod(name: &str, host_port: Option<u16>) -> String {
    let ports = match host_port {
        Some(p) => format!("\n    ports: [{{containerPort: 8080, hostPort: {p}}}]"),
        None => String::new(),
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo hello-{name} > /www/index.html && exec busybox httpd -f -p 8080 -h /www"]{ports}
"#
    )
}

fn within(ip: &str, cidr: &str) -> bool {
    let (net, prefix) = cidr.split_once('/').expect("cidr");
    let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (ip.parse().expect("ip"), net.parse().expect("net"));
    let prefix: u32 = prefix.parse().expect("prefix");
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(a) & mask == u32::from(b) & mask
}

#[test]
fn pods_get_addresses_reach_each_other_and_give_them_back() {
    let Some(_plugins) = prerequisites("pods_get_addresses_reach_each_other_and_give_them_back")
    else {
        return;
    };
    let mut b = Board::new(&[]);
    b.start();
    let block = b.kubectl_ok(&["get", "node", "board", "-o", "jsonpath={.spec.podCIDR}"]);
    assert!(
        within(block.split('/').next().unwrap_or(""), CLUSTER_CIDR),
        "{block}"
    );
    b.wait("keelson's CNI config", |b| {
        b.conf_dir().join("10-keelson.conflist").exists()
    });
    let conf = fs::read_to_string(b.conf_dir().join("10-keelson.conflist")).unwrap();
    assert!(
        conf.contains(&block),
        "the config names the node's block {block}:\n{conf}"
    );
    let forwarding = b.board_cmd("cat", &["/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "1");

    b.apply(
        &[
            web_pod("one", None),
            web_pod("two", None),
            web_pod("three", Some(HOST_PORT)),
        ]
        .join("---\n"),
    );
    let one = b.wait_running("one");
    let two = b.wait_running("two");
    let three = b.wait_running("three");
    for ip in [&one, &two, &three] {
        assert!(
            within(ip, &block),
            "pod IP {ip} outside the node's block {block}"
        );
    }
    assert!(
        one != two && two != three && one != three,
        "{one} {two} {three}"
    );
    let wide = b.kubectl_ok(&["get", "pods", "-o", "wide"]);
    println!("{wide}");
    for ip in [&one, &two, &three] {
        assert!(
            wide.contains(ip.as_str()),
            "kubectl get pods -o wide shows {ip}:\n{wide}"
        );
    }
    let pod = b.pod("one");
    assert_eq!(pod["status"]["podIPs"][0]["ip"], one.as_str());
    let hosts = b.kubectl_ok(&["exec", "one", "--", "busybox", "cat", "/etc/hosts"]);
    assert!(
        hosts.contains(&format!("{one}\tone")),
        "/etc/hosts:\n{hosts}"
    );
    assert_eq!(b.veths().len(), 3, "{:?}", b.veths());

    // Pod to pod, the board to a pod, and a hostPort from the client namespace.
    // httpd may need a moment after the container starts.
    // httpd may need a moment after the container starts. (busybox-static's wget crashes
    // in a rootfs without glibc's NSS modules; nc does not resolve anything.)
    b.wait("pod one to fetch from pod two", |b| {
        let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {two} 8080");
        let (out, _, _) = b.kubectl(&["exec", "one", "--", "sh", "-c", &request]);
        out.ends_with("hello-two")
    });
    let fetched = b.board_cmd(
        "curl",
        &["-s", "--max-time", "5", &format!("http://{one}:8080/")],
    );
    assert_eq!(String::from_utf8_lossy(&fetched.stdout).trim(), "hello-one");
    let via_host_port = b.client_cmd(
        "curl",
        &[
            "-s",
            "--max-time",
            "5",
            &format!("http://{BOARD_IP}:{HOST_PORT}/"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&via_host_port.stdout).trim(),
        "hello-three",
        "hostPort {HOST_PORT} from the client: {}",
        String::from_utf8_lossy(&via_host_port.stderr)
    );

    // A deleted pod's address is free again and its veth is gone.
    let held = b.data_dir().join("agent/cni/networks/keelson");
    assert!(
        Board::held(&held).contains(&two),
        "{:?}",
        Board::held(&held)
    );
    b.kubectl_ok(&["delete", "pod", "two", "--wait=true"]);
    b.wait("two's address released", |_| {
        !Board::held(&held).contains(&two)
    });
    b.wait("two's veth removed", |b| b.veths().len() == 2);

    // A restarted server adopts the running pods: same addresses, same veths, no new ADD.
    let veths = b.veths();
    b.stop();
    b.start();
    b.wait("one reported again", |b| {
        b.pod("one")["status"]["podIP"] == one.as_str()
    });
    assert_eq!(b.veths(), veths, "no interface was added or removed");
    assert!(
        b.log().contains("adopting the pod's network interface"),
        "{}",
        b.log_tail()
    );
    let fetched = b.board_cmd(
        "curl",
        &["-s", "--max-time", "5", &format!("http://{one}:8080/")],
    );
    assert_eq!(String::from_utf8_lossy(&fetched.stdout).trim(), "hello-one");
    // A pod that ran to completion gives its address back (kubelet stops its sandbox).
    b.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  restartPolicy: Never
  containers:
  - {name: c, image: busybox:1.36, imagePullPolicy: Never, command: ["sh", "-c", "exit 0"]}
"#,
    );
    b.wait("pod done Succeeded", |b| {
        b.pod("done")["status"]["phase"] == "Succeeded"
    });
    let done = b.pod("done")["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(within(&done, &block), "{done}");
    b.wait("done's address released", |_| {
        !Board::held(&held).contains(&done)
    });
    b.wait("done's veth removed", |b| b.veths().len() == 2);
    b.kubectl_ok(&["delete", "pod", "done", "--wait=true"]);
    // A new pod never gets an address that is in use.
    b.apply(&web_pod("four", None));
    let four = b.wait_running("four");
    assert!(four != one && four != three, "{four}");
    let mut addresses = Board::held(&held);
    addresses.sort();
    let mut want = vec![one.clone(), three.clone(), four.clone()];
    want.sort();
    assert_eq!(
        addresses, want,
        "host-local holds exactly the running pods' addresses"
    );
}

#[test]
fn misbehaving_plugins_give_clear_messages_and_leave_nothing_behind() {
    let Some(plugins) =
        prerequisites("misbehaving_plugins_give_clear_messages_and_leave_nothing_behind")
    else {
        return;
    };
    let mut b = Board::new(&[
        "--flannel-backend=none".into(),
        "--cni-plugin-timeout=3s".into(),
    ]);
    // Another CNI's configuration: bridge + host-local, then a plugin the test steers.
    let bin = b.dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let mode = b.dir.path().join("mode");
    fs::write(&mode, "pass").unwrap();
    let script = format!(
        r#"#!/bin/sh
if [ "$CNI_COMMAND" = ADD ]; then
  case "$(cat {mode})" in
    fail) cat > /dev/null; echo '{{"cniVersion": "1.0.0", "code": 999, "msg": "the test says no", "details": "mode fail"}}'; exit 1 ;;
    hang) exec sleep 600 ;;
    garbage) cat > /dev/null; echo 'this is not a CNI result'; exit 0 ;;
  esac
fi
exec {portmap}
"#,
        mode = mode.display(),
        portmap = plugins.join("portmap").display()
    );
    fs::write(bin.join("steered"), script).unwrap();
    fs::set_permissions(bin.join("steered"), fs::Permissions::from_mode(0o755)).unwrap();
    let held = b.dir.path().join("ipam");
    fs::create_dir_all(b.conf_dir()).unwrap();
    b.flags.push(format!(
        "--cni-bin-dir={},{}",
        bin.display(),
        plugins.display()
    ));
    b.start();

    // No configuration yet: the pod waits with kubelet's message, and starts once one exists.
    b.apply(&web_pod("fine", None));
    b.wait("the NetworkNotReady event", |b| {
        b.events_of("fine").contains("NetworkNotReady")
    });
    let events = b.events_of("fine");
    println!("before any config: events of fine:\n{events}");
    assert!(events.contains("cni config uninitialized"), "{events}");
    let waiting = b.pod("fine")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.contains("network is not ready")),
        "{waiting}"
    );
    fs::write(
        b.conf_dir().join("50-other.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "other",
            "plugins": [
                {"type": "bridge", "bridge": "cni9", "isGateway": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": OWN_SUBNET}]], "dataDir": held.display().to_string()}},
                {"type": "steered"},
            ],
        })
        .to_string(),
    )
    .unwrap();
    // The plugins work: the pod gets an address from the test's configuration.
    let fine = b.wait_running("fine");
    assert!(within(&fine, OWN_SUBNET), "{fine}");
    assert!(
        !b.conf_dir().join("10-keelson.conflist").exists(),
        "none: keelson writes no config"
    );

    for (which, says) in [
        ("fail", "the test says no"),
        ("hang", "did not finish ADD within 3s and was killed"),
        ("garbage", "this is not a CNI result"),
    ] {
        fs::write(&mode, which).unwrap();
        let name = format!("bad-{which}");
        b.apply(&web_pod(&name, None));
        b.wait(&format!("the {which} plugin's event"), |b| {
            b.events_of(&name).contains(says)
        });
        let events = b.events_of(&name);
        println!("{which}: events of {name}:\n{events}");
        assert!(
            events.contains("FailedCreatePodSandBox") && events.contains("\"steered\""),
            "{events}"
        );
        let pod = b.pod(&name);
        let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        assert_eq!(waiting["reason"], "ContainerCreating", "{pod}");
        assert!(
            waiting["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "the pod's status says why: {waiting}"
        );
        assert!(pod["status"]["podIP"].is_null(), "{}", pod["status"]);
        // Nothing half set up: between tries only the good pod's veth and address exist (a
        // try under way holds its own until its DEL; a missing DEL would pile them up).
        b.wait(&format!("{which}: nothing left of the failed tries"), |b| {
            b.veths().len() == 1 && Board::held(&held.join("other")) == vec![fine.clone()]
        });
        // Once the plugin behaves, the pod starts (tried again with back-off).
        fs::write(&mode, "pass").unwrap();
        let ip = b.wait_running(&name);
        assert!(ip != fine, "{ip}");
        b.kubectl_ok(&["delete", "pod", &name, "--wait=true"]);
        b.wait("its address released", |_| {
            Board::held(&held.join("other")) == vec![fine.clone()]
        });
    }
}
