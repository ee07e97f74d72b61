//! Helpers of the tests that run real pods (tests/pods.rs, tests/attach.rs): the busybox
//! image in a local registry, a server with the runc runtime, kubectl with piped input or
//! under a pseudo-terminal.
//!
//! These nodes run in the machine's own network namespace, so their pods must not get
//! keelson's bridge and addresses there: the server runs with `--flannel-backend none` and
//! every node with a `--cni-conf-dir` holding only the `loopback` plugin (pods keep loopback
//! only and no pod IP; tests/pod_network.rs covers the pod network in namespaces of its own).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::registry::Registry;
use super::{COMMAND_TIMEOUT, Options, Server};

/// The image every test runs: busybox from the local registry, reached as docker.io's mirror.
pub const IMAGE: &str = "busybox:1.36";

/// Whether this machine can run the tests: root, runc and the registry's tools.
pub fn available(test: &str) -> bool {
    let mut missing = Vec::new();
    if Command::new("runc").arg("--version").output().is_err() {
        missing.push("runc");
    }
    if loopback_plugin_dir().is_none() {
        missing.push("the CNI loopback plugin (containernetworking-plugins)");
    }
    if !missing.is_empty() {
        let msg = format!("the pod tests need {}", missing.join(", "));
        super::skip::missing(test, &msg);
        return false;
    }
    Registry::available(test)
}

/// A registry holding busybox, and a `registries.yaml` making it docker.io's mirror.
pub struct Images {
    /// Kept for its lifetime: the registry stops when this drops.
    _registry: Registry,
    config: PathBuf,
    /// `--cni-conf-dir`: a loopback-only network configuration.
    cni_conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Images {
    pub fn new() -> Images {
        let registry = Registry::start_plain();
        registry.push_busybox("library/busybox:1.36");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("registries.yaml");
        std::fs::write(
            &config,
            format!(
                "mirrors:\n  docker.io:\n    endpoint:\n      - \"http://{}\"\n",
                registry.addr
            ),
        )
        .expect("write registries.yaml");
        let cni_conf = dir.path().join("net.d");
        std::fs::create_dir_all(&cni_conf).expect("create the CNI conf dir");
        std::fs::write(
            cni_conf.join("99-loopback.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "loopback-only", "plugins": [{"type": "loopback"}]}"#,
        )
        .expect("write the loopback-only CNI config");
        Images {
            _registry: registry,
            config,
            cni_conf,
            _dir: dir,
        }
    }

    pub fn flags(&self) -> Vec<String> {
        vec![
            "--runtime=runc".into(),
            format!("--private-registry={}", self.config.display()),
            format!("--cni-conf-dir={}", self.cni_conf.display()),
        ]
    }
}

/// Where Debian (or the CNI project's layout) keeps the `loopback` plugin.
fn loopback_plugin_dir() -> Option<PathBuf> {
    ["/opt/cni/bin", "/usr/lib/cni"]
        .map(PathBuf::from)
        .into_iter()
        .find(|d| d.join("loopback").exists())
}

pub fn server_with_runtime(images: &Images) -> Server {
    // keelson's own pod network would put a bridge into the machine's namespace.
    let mut opts = Options::default().flag("--flannel-backend=none");
    for f in images.flags() {
        opts = opts.flag(&f);
    }
    Server::start(opts)
}

pub fn pod(s: &Server, name: &str) -> Value {
    s.kubectl_json(&["get", "pod", name, "-o", "json"])
}

pub fn phase(s: &Server, name: &str) -> String {
    pod(s, name)["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn wait_running(s: &Server, name: &str) {
    let limit = Duration::from_secs(60);
    let start = Instant::now();
    loop {
        let p = pod(s, name);
        if p["status"]["phase"] == "Running" {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "pod {name} not Running within {limit:?}: {}\n{}",
            p["status"],
            s.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl apply -f` of `manifests` (JSON or YAML).
pub fn apply(s: &Server, manifests: &str) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), manifests).expect("write manifests");
    s.kubectl_ok(&["apply", "-f", &file.path().display().to_string()]);
}

/// Runs kubectl against `s` (killed after [`COMMAND_TIMEOUT`]: exit code 137), returning
/// (exit code, stdout, stderr).
pub fn kubectl(s: &Server, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    // Bounded, so a stream that never ends fails the test instead of hanging it.
    let mut cmd = Command::new("timeout");
    cmd.args([
        "--signal=KILL",
        &COMMAND_TIMEOUT.as_secs().to_string(),
        "kubectl",
    ])
    .arg(format!("--kubeconfig={}", s.kubeconfig().display()))
    .args(args)
    .stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("kubectl output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads `from` until `needle` shows up or `limit` passes.
pub fn read_until(from: &mut (impl std::io::Read + Send), needle: &str, limit: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Reading blocks; a thread reports each chunk so the deadline holds.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while let Ok(n) = from.read(&mut chunk) {
                if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + limit;
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(bytes) => {
                    buf.extend(bytes);
                    if String::from_utf8_lossy(&buf).contains(needle) {
                        break true;
                    }
                }
                Err(_) => break false,
            }
        };
        drop(rx);
        found
    })
}

/// One step of [`kubectl_with_pty`].
pub enum Step<'a> {
    /// Wait this long.
    Sleep(Duration),
    /// Type this on the terminal.
    Type(&'a str),
    /// Give the terminal this many rows and columns (kubectl gets SIGWINCH).
    Resize(u16, u16),
}

/// Runs kubectl with `args` under a pseudo-terminal of 24×80 (python's pty module), plays
/// `steps`, reads what the terminal shows for `drain` more and then ends kubectl (SIGKILL if
/// it has not exited); returns what the terminal showed.
pub fn kubectl_with_pty(s: &Server, args: &[&str], steps: &[Step<'_>], drain: Duration) -> String {
    let script = r#"
import fcntl, json, os, pty, select, signal, struct, sys, termios, time
argv = sys.argv[1:]
steps = json.loads(sys.stdin.read())
def size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
pid, fd = pty.fork()
if pid == 0:
    size(0, 24, 80)
    os.execvp(argv[0], argv)
out = b""
exited = False
def read_for(seconds):
    global out, exited
    end = time.time() + seconds
    while time.time() < end and not exited:
        r, _, _ = select.select([fd], [], [], 0.05)
        if fd in r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                exited = True
                break
            out += data
for step in steps:
    kind, value = step
    if kind == "sleep":
        read_for(value)
    elif kind == "type":
        os.write(fd, value.encode())
    elif kind == "resize":
        size(fd, value[0], value[1])
if not exited:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
"#;
    let mut plan: Vec<Value> = steps
        .iter()
        .map(|step| match step {
            Step::Sleep(d) => serde_json::json!(["sleep", d.as_secs_f64()]),
            Step::Type(t) => serde_json::json!(["type", t]),
            Step::Resize(rows, cols) => serde_json::json!(["resize", [rows, cols]]),
        })
        .collect();
    plan.push(serde_json::json!(["sleep", drain.as_secs_f64()]));
    let mut child = Command::new("python3")
        .args(["-c", script, "kubectl"])
        .arg(format!("--kubeconfig={}", s.kubeconfig().display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 pty");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(Value::from(plan).to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("pty output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
