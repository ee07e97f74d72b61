//! A three-node MariaDB Galera cluster in network namespaces, for one test.
//!
//! ```text
//!                  kgal-<tag>-br:  bridge kg<tag>b
//!        ┌──────────────┬──────────────┬──────────────┐
//!    kg<tag>p1      kg<tag>p2      kg<tag>p3      kg<tag>ph      (bridge side of each veth)
//!        │              │              │              │
//!   kgal-<tag>-n1   …-n2           …-n3           kg<tag>h in the machine's namespace
//!   198.19.S.1      198.19.S.2     198.19.S.3     198.19.S.254   (S from the test's pid)
//!   mariadbd        mariadbd       mariadbd       keelson servers, curl, the test
//! ```
//!
//! Each node runs its own `mariadbd` (datadir, socket and logs under the cluster's temporary
//! directory) with `wsrep_on`, Debian's `galera-4` provider and rsync state transfers; the
//! first bootstraps the cluster (`--wsrep-new-cluster`), the others join it. keelson servers
//! run in the machine's namespace, which reaches the nodes through its end of a veth on the
//! bridge: the only address this adds to the machine is 198.19.S.254/24, and its only route
//! leads into the namespaces, so the cluster's traffic never leaves them.
//!
//! Everything (processes, namespaces and with them the bridge and veths, the temporary
//! directory) is removed when the [`Cluster`] is dropped, also when the test panics; the
//! nodes' error logs are printed with a failure (`KEELSON_LAB_KEEP=1` keeps the directory).
//! A cluster left behind by a test process that was killed is removed by the next one.
//! Missing prerequisites fail the test unless `KEELSON_ALLOW_SKIP=1` (see [`super::skip`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::lab::base36;
use super::{COMMAND_TIMEOUT, run};

/// The database user keelson connects as (created on the first node, replicated).
pub const USER: &str = "keelson";
pub const PASSWORD: &str = "galera-test-pw";
/// The database every keelson server of a test uses (the first creates it).
pub const DATABASE: &str = "keelson_galera";
/// Prefix of every namespace a cluster creates.
const NS_PREFIX: &str = "kgal-";
/// Longest the cluster may take to form (a bootstrap, two rsync state transfers).
const FORM_TIMEOUT: Duration = Duration::from_secs(120);
/// The provider, where Debian's `galera-4` puts it.
const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";
/// Lines of each node's error log shown with a failure.
const LOG_TAIL_LINES: usize = 25;

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// One database node.
pub struct Node {
    pub ns: String,
    pub ip: String,
    dir: PathBuf,
    /// The `mariadbd` process (`ip netns exec` execs it, so this is its own pid); `None`
    /// before it starts and after [`Cluster::kill`].
    child: Option<Child>,
}

pub struct Cluster {
    pub tag: String,
    test: String,
    bridge_ns: String,
    host_if: String,
    pub nodes: Vec<Node>,
    /// Namespaces created so far, deleted in reverse order.
    namespaces: Vec<String>,
    /// Whether the machine-side address was added (removed with its veth).
    host_addr: bool,
    dir: TempDir,
    ip: PathBuf,
}

// === prerequisites ===

/// Everything a cluster needs, or what is missing (as a failure, or a loud skip with
/// `KEELSON_ALLOW_SKIP=1`).
fn prerequisites(test: &str) -> Option<PathBuf> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces and addresses need it)".to_owned());
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("mariadbd", "mariadb-server"),
        ("mariadb-install-db", "mariadb-server"),
        ("mariadb", "mariadb-client"),
        ("rsync", "rsync"),
        ("wsrep_sst_rsync", "mariadb-server"),
        ("curl", "curl"),
    ] {
        if super::boards::find_tool(tool).is_none() {
            missing.push(format!("{tool} (apt-get install -y {package})"));
        }
    }
    if !Path::new(PROVIDER).exists() {
        missing.push(format!("{PROVIDER} (apt-get install -y galera-4)"));
    }
    if missing.is_empty() {
        return super::boards::find_tool("ip");
    }
    super::skip::missing(
        &format!("{test} on a Galera cluster"),
        &format!("missing: {}", missing.join(", ")),
    );
    None
}

// === impl Cluster ===

impl Cluster {
    /// Builds the namespaces and starts a three-node cluster for `test`, waiting until every
    /// node is synced. `None` when a prerequisite is missing outside CI.
    pub fn new(test: &str) -> Option<Cluster> {
        let ip = prerequisites(test)?;
        remove_stale(&ip);
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{}", base36(pid, 5), base36(n, 2));
        // One /24 per test process (and cluster), so clusters of parallel test processes
        // (rarely) share one only if their pids agree modulo 250.
        let subnet = format!("198.19.{}", 1 + (pid + n) % 250);
        let dir = tempfile::Builder::new()
            .prefix(&format!("keelson-galera-{tag}-"))
            .tempdir()
            .expect("create a temporary directory");
        // mariadbd runs as `mysql` (as root, the rsync daemon of a state transfer writes as
        // `nobody` and fails): the directory must be traversable, each node's its own.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
                .expect("open the cluster directory to the mysql user");
        }
        let nodes = (1..=3)
            .map(|i| {
                let dir = dir.path().join(format!("n{i}"));
                fs::create_dir_all(dir.join("data")).expect("create a node directory");
                let chown = run(
                    Command::new("chown").args(["-R", "mysql:mysql"]).arg(&dir),
                    COMMAND_TIMEOUT,
                );
                assert!(
                    chown.status.success(),
                    "chown mysql {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&chown.stderr)
                );
                Node {
                    ns: format!("{NS_PREFIX}{tag}-n{i}"),
                    ip: format!("{subnet}.{i}"),
                    dir,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            test: test.to_owned(),
            bridge_ns: format!("{NS_PREFIX}{tag}-br"),
            host_if: format!("kg{tag}h"),
            nodes,
            namespaces: Vec::new(),
            host_addr: false,
            tag,
            dir,
            ip,
        };
        let started = Instant::now();
        cluster.build_network(&subnet);
        cluster.form();
        eprintln!(
            "galera cluster {} ({test}): nodes {} formed in {} ms",
            cluster.tag,
            cluster
                .nodes
                .iter()
                .map(|n| format!("{}={}", n.ns, n.ip))
                .collect::<Vec<_>>()
                .join(" "),
            started.elapsed().as_millis()
        );
        Some(cluster)
    }

    /// `--datastore-endpoint` for a keelson server that uses node `i` (0-based).
    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "mysql://{USER}:{PASSWORD}@{}:3306/{DATABASE}",
            self.nodes[i].ip
        )
    }

    /// Runs SQL on node `i` as root through its socket (the machine's filesystem reaches it),
    /// in the test's database when `in_db`.
    pub fn sql(&self, i: usize, in_db: bool, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new("mariadb");
        cmd.arg(format!("--socket={}", self.socket(i).display()))
            .args(["--connect-timeout=5", "-uroot", "-N", "-B", "-e", sql]);
        if in_db {
            cmd.arg(DATABASE);
        }
        let out = run(&mut cmd, COMMAND_TIMEOUT);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// A `SHOW GLOBAL STATUS` value of node `i`, if it answers.
    pub fn status(&self, i: usize, name: &str) -> Option<String> {
        let out = self
            .sql(i, false, &format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .ok()?;
        out.split_whitespace().nth(1).map(str::to_owned)
    }

    /// Transactions the nodes still running rolled back for Galera conflicts so far:
    /// certification failures plus brute-force aborts (local transactions cut short by a
    /// replicated write set).
    pub fn conflicts(&self) -> u64 {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .flat_map(|i| {
                ["wsrep_local_cert_failures", "wsrep_local_bf_aborts"]
                    .map(|name| self.status(i, name))
            })
            .flatten()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum()
    }

    /// Kills node `i`'s `mariadbd` with SIGKILL, as a crash or a power cut would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the nodes in `which` all report a primary cluster of `which.len()` nodes
    /// and are synced; panics with their logs after `limit`.
    pub fn wait_formed(&self, which: &[usize], limit: Duration) -> Duration {
        let start = Instant::now();
        let want = which.len().to_string();
        loop {
            let ok = which.iter().all(|&i| {
                self.status(i, "wsrep_cluster_size").as_deref() == Some(want.as_str())
                    && self.status(i, "wsrep_local_state_comment").as_deref() == Some("Synced")
                    && self.status(i, "wsrep_cluster_status").as_deref() == Some("Primary")
            });
            if ok {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "the Galera nodes {which:?} did not form a synced cluster of {want} within {limit:?}:\n{}",
                self.log_tails()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of every node's error log, labelled.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let log = fs::read_to_string(n.dir.join("err.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            out.push_str(&format!(
                "--- galera node {} ({}, {}) error log, last {} lines ---\n{}\n",
                i + 1,
                n.ns,
                n.ip,
                lines.len() - from,
                lines[from..].join("\n")
            ));
        }
        out
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("sock")
    }

    /// Runs `ip ARGS`, failing the test on an error.
    fn ip(&self, args: &[&str]) {
        let out = run(Command::new(&self.ip).args(args), COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn build_network(&mut self, subnet: &str) {
        let (br_ns, tag) = (self.bridge_ns.clone(), self.tag.clone());
        let bridge = format!("kg{tag}b");
        let node_ns: Vec<String> = self.nodes.iter().map(|n| n.ns.clone()).collect();
        for ns in std::iter::once(&br_ns).chain(&node_ns) {
            self.ip(&["netns", "add", ns]);
            self.namespaces.push(ns.clone());
            self.ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        self.ip(&["-n", &br_ns, "link", "add", &bridge, "type", "bridge"]);
        self.ip(&["-n", &br_ns, "link", "set", &bridge, "up"]);
        for (i, ns) in node_ns.iter().enumerate() {
            let port = format!("kg{tag}p{}", i + 1);
            // Both ends are created directly in their namespaces.
            self.ip(&[
                "-n", &br_ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ]);
            self.ip(&["-n", &br_ns, "link", "set", &port, "master", &bridge, "up"]);
            let addr = format!("{subnet}.{}/24", i + 1);
            self.ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"]);
            self.ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        // The machine's end: created here, its peer moved into the bridge's namespace, so
        // deleting that namespace removes the pair.
        let port = format!("kg{tag}ph");
        let host_if = self.host_if.clone();
        self.ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &port,
        ]);
        self.host_addr = true;
        self.ip(&["link", "set", &port, "netns", &br_ns]);
        self.ip(&["-n", &br_ns, "link", "set", &port, "master", &bridge, "up"]);
        self.ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &host_if]);
        self.ip(&["link", "set", &host_if, "up"]);
    }

    fn config(&self, i: usize) -> PathBuf {
        let n = &self.nodes[i];
        let members: Vec<&str> = self.nodes.iter().map(|n| n.ip.as_str()).collect();
        let d = n.dir.display();
        let cnf = format!(
            "[mariadbd]\n\
             user=mysql\n\
             datadir={d}/data\n\
             socket={d}/sock\n\
             pid-file={d}/pid\n\
             log-error={d}/err.log\n\
             port=3306\n\
             bind-address={ip}\n\
             skip-name-resolve\n\
             innodb_buffer_pool_size=32M\n\
             innodb_log_file_size=16M\n\
             innodb_flush_log_at_trx_commit=1\n\
             binlog_format=ROW\n\
             default_storage_engine=InnoDB\n\
             innodb_autoinc_lock_mode=2\n\
             wsrep_on=ON\n\
             wsrep_provider={PROVIDER}\n\
             wsrep_cluster_name=keelson-{tag}\n\
             wsrep_cluster_address=gcomm://{members}\n\
             wsrep_node_address={ip}\n\
             wsrep_node_name=n{num}\n\
             wsrep_sst_method=rsync\n\
             wsrep_provider_options=\"gcache.size=32M;evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT5S\"\n",
            ip = n.ip,
            tag = self.tag,
            members = members.join(","),
            num = i + 1,
        );
        let path = n.dir.join("my.cnf");
        fs::write(&path, cnf).expect("write a node's config");
        path
    }

    fn start_node(&mut self, i: usize, bootstrap: bool) {
        let cnf = self.config(i);
        let n = &self.nodes[i];
        let out = fs::File::create(n.dir.join("out.log")).expect("create a node's output log");
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &n.ns, "mariadbd"])
            .arg(format!("--defaults-file={}", cnf.display()));
        if bootstrap {
            cmd.arg("--wsrep-new-cluster");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone a log handle"))
            .stderr(out)
            .spawn()
            .expect("spawn mariadbd");
        self.nodes[i].child = Some(child);
    }

    /// Installs the first node's system tables, bootstraps the cluster on it, creates the
    /// test's user (replicated), then lets the other two join by state transfer.
    fn form(&mut self) {
        let cnf = self.config(0);
        let install = run(
            Command::new("mariadb-install-db")
                .arg(format!("--defaults-file={}", cnf.display()))
                .args([
                    "--user=mysql",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ]),
            COMMAND_TIMEOUT,
        );
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );
        self.start_node(0, true);
        self.wait_formed(&[0], FORM_TIMEOUT);
        let grant = format!(
            "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON *.* TO '{USER}'@'%'"
        );
        if let Err(e) = self.sql(0, false, &grant) {
            panic!("cannot create the test's database user: {e}");
        }
        self.start_node(1, false);
        self.start_node(2, false);
        self.wait_formed(&[0, 1, 2], FORM_TIMEOUT);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- galera cluster {} ({}) ---\n{}",
                self.tag,
                self.test,
                self.log_tails()
            );
        }
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for ns in self.namespaces.iter().rev() {
            super::boards::kill_namespace(&self.ip, ns);
        }
        if self.host_addr {
            // Normally gone with the bridge's namespace; this covers a build that failed
            // between creating the pair and moving its peer.
            let _ = Command::new(&self.ip)
                .args(["link", "del", &self.host_if])
                .stderr(Stdio::null())
                .output();
        }
        if std::env::var_os("KEELSON_LAB_KEEP").is_some_and(|v| !v.is_empty()) {
            self.dir.disable_cleanup(true);
            eprintln!(
                "galera cluster {}: KEELSON_LAB_KEEP is set; files kept in {}",
                self.tag,
                self.dir.path().display()
            );
        }
    }
}

/// Removes the namespaces (and so the processes, bridges and veths) of clusters whose test
/// process is gone.
fn remove_stale(ip: &Path) {
    let Ok(out) = Command::new(ip).args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&out.stdout);
    let mut stale: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.get(..5))
                .and_then(|pid| u32::from_str_radix(pid, 36).ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    stale.sort();
    stale.dedup();
    for ns in stale {
        eprintln!("galera: removing namespace {ns} left by a test process that no longer runs");
        super::boards::kill_namespace(ip, ns);
    }
}
