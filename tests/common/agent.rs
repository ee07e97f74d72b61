//! A `keelson agent` process with its own throwaway data dir and log.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::keelson_command;

/// Lines of agent log shown with a failure.
const LOG_TAIL_LINES: usize = 30;

pub struct Agent {
    dir: TempDir,
    pub name: String,
    args: Vec<String>,
    token: String,
    child: Option<Child>,
    starts: u32,
    /// Extra environment variables for the process.
    env: Vec<(String, OsString)>,
}

impl Agent {
    /// Starts `keelson agent --server <server> --node-name <name> <extra>` with the token in
    /// `KEELSON_TOKEN`; does not wait for anything.
    pub fn start(server: &str, token: &str, name: &str, extra: &[&str]) -> Agent {
        Agent::start_with_env(server, token, name, extra, &[])
    }

    /// [`Agent::start`] with extra environment variables.
    pub fn start_with_env(
        server: &str,
        token: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &OsStr)],
    ) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("keelson-agent-")
            .tempdir()
            .expect("create a temporary directory");
        let mut args = vec![format!("--server={server}"), format!("--node-name={name}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut agent = Agent {
            dir,
            name: name.to_owned(),
            args,
            token: token.to_owned(),
            child: None,
            starts: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_os_string()))
                .collect(),
        };
        agent.spawn();
        agent
    }

    /// Starts the process again (same data dir, same flags).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the agent is still running");
        self.starts += 1;
        let log = fs::File::create(self.log_path()).expect("create the agent log");
        let mut cmd = keelson_command();
        cmd.arg("agent")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!(
                "--config={}",
                self.dir.path().join("none.yaml").display()
            ))
            .args(&self.args)
            .env("KEELSON_TOKEN", &self.token)
            .env("HOME", self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        fs::write(self.dir.path().join("none.yaml"), "").expect("write an empty config");
        self.child = Some(cmd.spawn().expect("spawn keelson agent"));
    }

    /// Sends an HTTP request with curl as this agent's node (its saved CA and certificate).
    pub fn curl(&self, args: &[&str]) -> super::Reply {
        let d = self.data_dir().join("agent");
        let mut all = vec![
            "--cacert".to_owned(),
            d.join("server-ca.crt").display().to_string(),
            "--cert".to_owned(),
            d.join("client-node.crt").display().to_string(),
            "--key".to_owned(),
            d.join("client-node.key").display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        super::curl(&all)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("agent-{}.log", self.starts))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- agent {} log (last {} lines) ---\n{}",
            self.name,
            lines.len() - from,
            lines[from..].join("\n")
        )
    }

    /// Waits until the log holds `needle`; panics with the log after `limit`.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < limit,
                "agent {} did not log {needle:?} within {limit:?}\n{}",
                self.name,
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself; `None` if it is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the agent to exit, which it must do within `limit` and with a failure.
    pub fn wait_failure(&mut self, limit: Duration) {
        let status = self
            .wait_exit(limit)
            .unwrap_or_else(|| panic!("the agent kept running\n{}", self.log_tail()));
        assert!(
            !status.success(),
            "the agent exited successfully\n{}",
            self.log_tail()
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, as `systemctl stop` does, then waits for the exit (which must come within
    /// `limit`).
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let pid = self.pid().expect("the agent runs");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the agent");
        self.wait_exit(limit)
            .unwrap_or_else(|| panic!("the agent ignored SIGTERM\n{}", self.log_tail()))
    }

    /// SIGKILL, as a power cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        self.kill();
        super::remove_containers(&self.data_dir());
    }
}

/// `keelson loadgen`: many simulated agents in one process.
pub struct Loadgen {
    dir: TempDir,
    child: Child,
}

impl Loadgen {
    pub fn start(server: &str, token: &str, agents: usize, prefix: &str) -> Loadgen {
        Loadgen::start_with(server, token, agents, prefix, &[])
    }

    /// As [`Loadgen::start`], with further flags (e.g. the hollow pod timings).
    pub fn start_with(
        server: &str,
        token: &str,
        agents: usize,
        prefix: &str,
        extra: &[&str],
    ) -> Loadgen {
        let dir = tempfile::Builder::new()
            .prefix("keelson-loadgen-")
            .tempdir()
            .expect("create a temporary directory");
        let log = fs::File::create(dir.path().join("loadgen.log")).expect("create the log");
        let child = keelson_command()
            .arg("loadgen")
            .arg(format!("--server={server}"))
            .arg(format!("--agents={agents}"))
            .arg(format!("--name-prefix={prefix}"))
            .args(extra)
            .arg(format!(
                "--data-dir={}",
                dir.path().join("agents").display()
            ))
            .env("KEELSON_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn keelson loadgen");
        Loadgen { dir, child }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("loadgen.log")).unwrap_or_default()
    }

    /// Where the simulated node `name` keeps its credentials (`client-node.crt`, ...).
    pub fn credentials_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("agents").join(name).join("agent")
    }
}

impl Drop for Loadgen {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- loadgen log tail ---\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks for a tunnel with `agent`'s node certificate on a raw TLS stream, to send what no real
/// agent would; returns the response head (`HTTP/1.1 101 …` when accepted) and the stream.
pub fn open_raw_tunnel(
    port: u16,
    agent: &Agent,
) -> (
    String,
    rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    use std::io::{Read, Write};
    let d = agent.data_dir().join("agent");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(d.join("server-ca.crt")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(d.join("client-node.crt")).unwrap()],
            PrivateKeyDer::from_pem_file(d.join("client-node.key")).unwrap(),
        )
        .unwrap();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "127.0.0.1".try_into().unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET /v1-keelson/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), tls)
}
