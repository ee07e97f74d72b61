//! Private, TLS-only PostgreSQL and MariaDB servers for the datastore TLS tests, and the
//! throwaway PKI they and keelson use (and one plaintext-only PostgreSQL, to show what each
//! `--datastore-tls` mode does where no TLS is offered).
//!
//! Each instance lives in its own temporary directory (under `/dev/shm` when there is one: fsync
//! is free there, so `mariadb-install-db` takes half a second instead of four), listens on a free
//! port on 127.0.0.1 only, and refuses plaintext connections. Its guard stops the server and
//! removes the directory when dropped, also when the test panics, and prints the server's log
//! with a failure. The machine's own database servers (5432, 3306) and their configuration are
//! never touched.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::{Pid, User};
use tempfile::TempDir;

use super::{COMMAND_TIMEOUT, run};

/// The common name of the client certificate, and so the database user that PostgreSQL's
/// `cert` authentication lets it log in as.
pub const CLIENT_CN: &str = "keelson";
/// Longest a database server may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a database server may take to exit after it was asked to, before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a database server's log shown with a failure.
const LOG_TAIL_LINES: usize = 30;

/// Which database server an instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    MariaDb,
}

/// A throwaway CA, a server certificate for 127.0.0.1 and localhost, a client certificate for
/// [`CLIENT_CN`], and an unrelated CA that signed neither. Removed on drop.
///
/// The directory's name holds a `+`, so every path given to keelson does too: a path must
/// reach the database driver exactly as the flag gave it.
pub struct Pki {
    dir: TempDir,
}

/// A PostgreSQL server running as the `postgres` user with `ssl=on` (or, from
/// [`Postgres::start_plaintext`], `ssl=off`).
pub struct Postgres {
    /// Data dir, Unix socket, server key and log; removed on drop, after the server stopped.
    dir: TempDir,
    port: u16,
    /// The postmaster; `None` once stopped.
    child: Option<Child>,
}

/// A MariaDB server with `require_secure_transport=ON`, the performance schema on (it shows
/// each connection's TLS cipher) and the general log in a file (every login attempt).
pub struct MariaDb {
    /// Data dir, Unix socket and logs; removed on drop, after the server stopped.
    dir: TempDir,
    port: u16,
    /// `mariadbd`; `None` once stopped.
    child: Option<Child>,
}

// === impl Engine ===

impl Engine {
    /// What this machine lacks to run an instance (programs, the `postgres` user), by name.
    pub fn missing(self) -> Vec<String> {
        let mut missing = Vec::new();
        let mut need = |name: &str, found: bool| {
            if !found {
                missing.push(name.to_owned());
            }
        };
        need("openssl", program("openssl").is_some());
        // To run PostgreSQL as its own user, and MariaDB with --user=root.
        need("root", nix::unistd::Uid::effective().is_root());
        match self {
            Engine::Postgres => {
                need("PostgreSQL's initdb and postgres", pg_bin_dir().is_some());
                need("psql", program("psql").is_some());
                need(
                    "the postgres user",
                    User::from_name("postgres").ok().flatten().is_some(),
                );
            }
            Engine::MariaDb => {
                need(
                    "mariadb-install-db",
                    program("mariadb-install-db").is_some(),
                );
                need("mariadbd", program("mariadbd").is_some());
                need("mariadb", program("mariadb").is_some());
            }
        }
        missing
    }

    /// Whether a test can run an instance. Without the programs it fails the test, or, with
    /// `KEELSON_ALLOW_SKIP=1`, prints a loud line and returns false (see [`super::skip`]).
    pub fn available(self, test: &str) -> bool {
        let missing = self.missing();
        if missing.is_empty() {
            return true;
        }
        let name = match self {
            Engine::Postgres => "PostgreSQL",
            Engine::MariaDb => "MariaDB",
        };
        let msg = format!("a private {name} needs {}", missing.join(", "));
        super::skip::missing(test, &msg);
        false
    }
}

// === impl Pki ===

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("keelson-tls+pki-")
            .tempdir()
            .expect("create the PKI directory");
        let pki = Pki { dir };
        pki.write("ext.cnf", EXTENSIONS);
        pki.self_signed("ca", "keelson-test-ca");
        pki.self_signed("wrong-ca", "keelson-test-unrelated-ca");
        pki.issue("server", "127.0.0.1", "server");
        pki.issue("client", CLIENT_CN, "client");
        pki
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA that signed nothing here.
    pub fn wrong_ca(&self) -> PathBuf {
        self.path("wrong-ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.path("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.path(name), text).expect("write a PKI file");
    }

    fn self_signed(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// A key and a certificate signed by `ca.pem`, with the extensions of section `section`.
    fn issue(&self, name: &str, cn: &str, section: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-extensions",
            section,
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = run(
            Command::new("openssl")
                .args(args)
                .current_dir(self.dir.path()),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "openssl {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

// === impl Postgres ===

impl Postgres {
    /// Initialises a cluster (superuser `postgres`, trusted on the Unix socket only), installs
    /// `hba` as pg_hba.conf and starts PostgreSQL with TLS from `pki` (the CA also verifies
    /// client certificates). Panics with the server's log if it does not come up.
    pub fn start(pki: &Pki, hba: &str) -> Postgres {
        Postgres::launch(Some(pki), hba)
    }

    /// Like [`Postgres::start`], but with `ssl=off`: the server answers every TLS request
    /// with "no", as a database without TLS, or an attacker in the path, does.
    pub fn start_plaintext(hba: &str) -> Postgres {
        Postgres::launch(None, hba)
    }

    fn launch(pki: Option<&Pki>, hba: &str) -> Postgres {
        let user = User::from_name("postgres")
            .ok()
            .flatten()
            .expect("the postgres user exists (checked by Engine::available)");
        let bin = pg_bin_dir().expect("PostgreSQL is installed (checked by Engine::available)");
        let dir = instance_dir("keelson-tlsdb-pg-");
        // PostgreSQL insists on owning its data dir and on a private server key.
        for (from, name) in pki.iter().flat_map(|pki| {
            [
                (pki.server_cert(), "server.pem"),
                (pki.server_key(), "server.key"),
                (pki.ca(), "ca.pem"),
            ]
        }) {
            let to = dir.path().join(name);
            fs::copy(&from, &to).expect("copy a certificate for PostgreSQL");
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).expect("chmod");
            nix::unistd::chown(&to, Some(user.uid), Some(user.gid)).expect("chown");
        }
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown");
        let data = dir.path().join("data");
        let out = run(
            Command::new(bin.join("initdb"))
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "-D",
                ])
                .arg(&data)
                .current_dir(dir.path())
                .uid(user.uid.as_raw())
                .gid(user.gid.as_raw()),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        let mut pg = Postgres {
            dir,
            port: 0,
            child: None,
        };
        // A port picked by binding :0 can be taken before PostgreSQL binds it; then another
        // one is tried.
        for _ in 0..3 {
            pg.port = free_port();
            let d = pg.dir.path();
            let log = fs::File::create(d.join("postgres.log")).expect("create the log");
            let mut cmd = Command::new(bin.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .args(["-p", &pg.port.to_string(), "-k"])
                .arg(d)
                .args(["-c", "listen_addresses=127.0.0.1"]);
            if pki.is_some() {
                cmd.args(["-c", "ssl=on"])
                    .args([
                        "-c",
                        &format!("ssl_cert_file={}", d.join("server.pem").display()),
                    ])
                    .args([
                        "-c",
                        &format!("ssl_key_file={}", d.join("server.key").display()),
                    ])
                    .args(["-c", &format!("ssl_ca_file={}", d.join("ca.pem").display())]);
            } else {
                cmd.args(["-c", "ssl=off"]);
            }
            cmd.args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
                // Who got in, and whether over TLS, for the tests to read.
                .args(["-c", "log_connections=on"])
                .current_dir(d)
                .uid(user.uid.as_raw())
                .gid(user.gid.as_raw())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log handle"))
                .stderr(log);
            pg.child = Some(cmd.spawn().expect("spawn postgres"));
            match wait_started(&mut pg.child, || pg_ready(d, pg.port)) {
                Ok(()) => return pg,
                Err(()) if pg.log().contains("Address already in use") => continue,
                Err(()) => break,
            }
        }
        panic!(
            "the private PostgreSQL did not start:\n{}",
            tail(&pg.log(), LOG_TAIL_LINES)
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs SQL as the superuser over the Unix socket, in database `postgres`.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        sql_result(run(
            Command::new("psql")
                .args(["-qAtX", "-U", "postgres", "-d", "postgres", "-h"])
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-c", sql])
                .env("PGCONNECT_TIMEOUT", "5"),
            COMMAND_TIMEOUT,
        ))
    }

    /// Connects with psql over TCP with a libpq connection string (`host=127.0.0.1 port=… …`).
    pub fn psql_tcp(&self, conninfo: &str, sql: &str) -> Result<String, String> {
        sql_result(run(
            Command::new("psql")
                .arg("-qAtX")
                .arg(format!("host=127.0.0.1 port={} {conninfo}", self.port))
                .args(["-c", sql])
                .env("PGCONNECT_TIMEOUT", "5"),
            COMMAND_TIMEOUT,
        ))
    }

    /// Everything the server logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- private PostgreSQL log ---\n{}\n--- end ---",
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
        // SIGINT: fast shutdown, which ends every backend too.
        stop(&mut self.child, Signal::SIGINT);
    }
}

// === impl MariaDb ===

impl MariaDb {
    /// Initialises a data dir (root authenticated by the Unix socket only) and starts MariaDB
    /// with TLS from `pki`. Panics with the server's log if it does not come up.
    pub fn start(pki: &Pki) -> MariaDb {
        let installer = program("mariadb-install-db").expect("checked by Engine::available");
        let mariadbd = program("mariadbd").expect("checked by Engine::available");
        let dir = instance_dir("keelson-tlsdb-mariadb-");
        let d = dir.path().to_owned();
        let data = d.join("data");
        let out = run(
            Command::new(installer)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                    "--skip-name-resolve",
                    "--user=root",
                    "--innodb-log-file-size=8M",
                ]),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = MariaDb {
            dir,
            port: 0,
            child: None,
        };
        for _ in 0..3 {
            db.port = free_port();
            let _ = fs::remove_file(d.join("error.log"));
            let path = |name: &str| d.join(name).display().to_string();
            let mut cmd = Command::new(&mariadbd);
            // --no-defaults must come first; --user=root because the tests run as root.
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", path("mysqld.sock")))
                .arg(format!("--pid-file={}", path("mysqld.pid")))
                .arg(format!("--log-error={}", path("error.log")))
                // Every login attempt, refused ones too, with its transport: the only record
                // of a plaintext attempt that require_secure_transport refused (no account
                // counter moves, and the error log has it only at log_warnings >= 2).
                .arg("--general-log=ON")
                .arg("--log-output=FILE")
                .arg(format!("--general-log-file={}", path("general.log")))
                .arg(format!("--tmpdir={}", d.display()))
                .arg(format!("--port={}", db.port))
                .arg(format!("--ssl-ca={}", pki.ca().display()))
                .arg(format!("--ssl-cert={}", pki.server_cert().display()))
                .arg(format!("--ssl-key={}", pki.server_key().display()))
                .args([
                    "--bind-address=127.0.0.1",
                    "--skip-name-resolve",
                    "--require-secure-transport=ON",
                    "--performance-schema=ON",
                    "--skip-log-bin",
                    "--innodb-log-file-size=8M",
                    "--innodb-buffer-pool-size=32M",
                    "--user=root",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            db.child = Some(cmd.spawn().expect("spawn mariadbd"));
            let socket = d.join("mysqld.sock");
            match wait_started(&mut db.child, || {
                socket.exists() && sql_socket(&socket, "SELECT 1").is_ok()
            }) {
                Ok(()) => return db,
                Err(()) if db.log().contains("Address already in use") => continue,
                Err(()) => break,
            }
        }
        panic!(
            "the private MariaDB did not start:\n{}",
            tail(&db.log(), LOG_TAIL_LINES)
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs SQL as root over the Unix socket; tab-separated rows without headers.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        sql_socket(&self.dir.path().join("mysqld.sock"), sql)
    }

    /// Connects with the mariadb client over TCP with `args` (user, TLS options) and runs `sql`.
    pub fn sql_tcp(&self, args: &[&str], sql: &str) -> Result<String, String> {
        sql_result(run(
            Command::new("mariadb")
                .args(["--no-defaults", "--connect-timeout=5", "-N", "-B"])
                .args(["-h", "127.0.0.1", "-P", &self.port.to_string()])
                .args(args)
                .args(["-e", sql]),
            COMMAND_TIMEOUT,
        ))
    }

    /// The server's error log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The `Connect` lines of the general log: one per login attempt, `user@host on db using
    /// TCP/IP` (plaintext), `… using SSL/TLS` or `… using Socket`, and a second line
    /// `Access denied for user 'user'@'host' …` for a refused one. A connection that failed
    /// in the TLS handshake never reaches a login and leaves no line.
    pub fn connect_log(&self) -> Vec<String> {
        // Queries carry keelson's binary values, so the file is not UTF-8; a log that cannot
        // be read must fail the caller, never read as "no attempts".
        let log = fs::read(self.dir.path().join("general.log")).expect("read the general log");
        String::from_utf8_lossy(&log)
            .lines()
            // `[time]\t\t<id> <command>\t<argument>`: the id and command share a column.
            .filter(|l| {
                l.split('\t').any(|col| {
                    let mut words = col.split_whitespace();
                    words.next().is_some_and(|id| id.parse::<u64>().is_ok())
                        && words.next() == Some("Connect")
                        && words.next().is_none()
                })
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- private MariaDB log ---\n{}\n--- end ---",
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
        stop(&mut self.child, Signal::SIGTERM);
    }
}

// === free functions ===

/// `[section]`s of openssl extensions for the certificates the PKI issues.
const EXTENSIONS: &str = "\
[server]
subjectAltName = IP:127.0.0.1, DNS:localhost
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
";

/// A temporary directory for an instance, in memory when possible, that other users (the
/// `postgres` user) may traverse.
fn instance_dir(prefix: &str) -> TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix(prefix).to_owned();
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    }
    .expect("create a database directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

/// Waits until `ready` holds, or the process exits, or [`START_TIMEOUT`] passes (then it is
/// killed).
fn wait_started(child: &mut Option<Child>, ready: impl Fn() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(c) = child.as_mut()
            && c.try_wait().ok().flatten().is_some()
        {
            *child = None;
            return Err(());
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            stop(child, Signal::SIGKILL);
            return Err(());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `sig`, waits up to [`STOP_TIMEOUT`] for the exit, then kills and reaps.
fn stop(child: &mut Option<Child>, sig: Signal) {
    let Some(mut c) = child.take() else { return };
    if let Ok(pid) = i32::try_from(c.id()) {
        let _ = signal::kill(Pid::from_raw(pid), sig);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if c.try_wait().ok().flatten().is_some() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn pg_ready(socket_dir: &Path, port: u16) -> bool {
    run(
        Command::new("psql")
            .args(["-qAtX", "-U", "postgres", "-d", "postgres", "-h"])
            .arg(socket_dir)
            .args(["-p", &port.to_string(), "-c", "SELECT 1"]),
        COMMAND_TIMEOUT,
    )
    .status
    .success()
}

fn sql_socket(socket: &Path, sql: &str) -> Result<String, String> {
    sql_result(run(
        Command::new("mariadb")
            .args(["--no-defaults", "--connect-timeout=5", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", socket.display()))
            .args(["-e", sql]),
        COMMAND_TIMEOUT,
    ))
}

fn sql_result(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding both `initdb` and `postgres`.
fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// `name` on `PATH`, or in the sbin directories a test's `PATH` may lack.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
