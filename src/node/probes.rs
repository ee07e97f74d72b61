//! Container probes (liveness, readiness, startup) the way kubelet runs them: `exec` through
//! runc, `httpGet` and `tcpSocket` from inside the pod's network namespace.
//!
//! Pods have no address reachable from the node until the pod network exists, so network
//! probes connect from a thread that has entered the pod's network namespace (to `host`, or
//! 127.0.0.1 — where the container listens); a `hostNetwork` pod is probed from the node.
//! The thread is a fresh one each time and ends with the probe, so no thread of the process
//! is ever left in another namespace.
//!
//! Invariants: a probe never takes longer than its `timeoutSeconds`; a result changes only
//! after `successThreshold` successes or `failureThreshold` failures in a row.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::runc::{ExecProcess, Runc};

/// Largest HTTP answer a probe reads (kubelet reads 10 KiB of the body).
const MAX_ANSWER: usize = 10 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        https: bool,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
}

/// A probe of a container spec, with Kubernetes' defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// One probe's running state.
#[derive(Debug, Clone)]
pub struct Probe {
    pub spec: Spec,
    next: Instant,
    successes: u32,
    failures: u32,
    /// The probe's verdict so far: `None` until the first threshold is reached.
    pub healthy: Option<bool>,
}

/// What one run of a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// Where a probe runs.
pub struct Target<'a> {
    pub runc: &'a Runc,
    pub runc_id: &'a str,
    /// The pod's network namespace file; `None` for the node's own (`hostNetwork`).
    pub netns: Option<&'a Path>,
}

impl Spec {
    /// The probe at `field` of `container` (`livenessProbe`, `readinessProbe`,
    /// `startupProbe`), if it has one. Named ports are looked up in the container's ports.
    pub fn of(container: &Value, field: &str) -> Result<Option<Spec>, String> {
        let Some(p) = container.get(field).filter(|p| p.is_object()) else {
            return Ok(None);
        };
        let secs = |k: &str, default: u64| Duration::from_secs(p[k].as_u64().unwrap_or(default));
        let count = |k: &str, default: u64| p[k].as_u64().unwrap_or(default).max(1) as u32;
        let port = |v: &Value| -> Result<u16, String> {
            if let Some(n) = v.as_u64() {
                return u16::try_from(n).map_err(|_| format!("{field}: port {n} is out of range"));
            }
            let name = v.as_str().unwrap_or_default();
            container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|cp| cp["name"].as_str() == Some(name))
                .and_then(|cp| cp["containerPort"].as_u64())
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("{field}: the container has no port named {name:?}"))
        };
        let action = if let Some(e) = p.get("exec") {
            let command: Vec<String> = e["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            if command.is_empty() {
                return Err(format!("{field}: exec needs a command"));
            }
            Action::Exec(command)
        } else if let Some(h) = p.get("httpGet") {
            Action::Http {
                host: h["host"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
                port: port(&h["port"])?,
                path: h["path"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("/")
                    .to_owned(),
                https: h["scheme"].as_str() == Some("HTTPS"),
                headers: h["httpHeaders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|hd| {
                        Some((
                            hd["name"].as_str()?.to_owned(),
                            hd["value"].as_str()?.to_owned(),
                        ))
                    })
                    .collect(),
            }
        } else if let Some(t) = p.get("tcpSocket") {
            Action::Tcp {
                host: t["host"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
                port: port(&t["port"])?,
            }
        } else {
            return Err(format!(
                "{field}: no handler (exec, httpGet or tcpSocket); grpc probes are not supported yet"
            ));
        };
        Ok(Some(Spec {
            action,
            initial_delay: secs("initialDelaySeconds", 0),
            period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
            success_threshold: count("successThreshold", 1),
            failure_threshold: count("failureThreshold", 3),
        }))
    }
}

impl Probe {
    /// A probe of a container that started `now`.
    pub fn new(spec: Spec, now: Instant) -> Probe {
        Probe {
            next: now + spec.initial_delay,
            spec,
            successes: 0,
            failures: 0,
            healthy: None,
        }
    }

    /// When the probe falls due next.
    pub fn next_due(&self) -> Instant {
        self.next
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Counts one result; returns the verdict if this result changed it.
    pub fn record(&mut self, outcome: &Outcome, now: Instant) -> Option<bool> {
        self.next = now + self.spec.period;
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= self.spec.success_threshold && self.healthy != Some(true) {
                    self.healthy = Some(true);
                    return Some(true);
                }
            }
            Outcome::Failure(_) => {
                self.successes = 0;
                self.failures += 1;
                if self.failures >= self.spec.failure_threshold && self.healthy != Some(false) {
                    self.healthy = Some(false);
                    return Some(false);
                }
            }
        }
        None
    }
}

/// Runs the probe's action once, within its timeout.
pub async fn run(spec: &Spec, target: &Target<'_>) -> Outcome {
    match tokio::time::timeout(spec.timeout, act(&spec.action, target)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failure(format!("timeout: no answer within {:?}", spec.timeout)),
    }
}

async fn act(action: &Action, target: &Target<'_>) -> Outcome {
    match action {
        Action::Exec(command) => {
            let process = ExecProcess::Args {
                argv: command.clone(),
                env: Vec::new(),
                cwd: None,
                user: None,
            };
            let exec = match target.runc.exec(target.runc_id, &process, false).await {
                Ok(e) => e,
                Err(e) => return Outcome::Failure(e.to_string()),
            };
            match exec.child.wait_with_output().await {
                Ok(out) if out.status.success() => Outcome::Success,
                Ok(out) => {
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    Outcome::Failure(format!(
                        "command {command:?} exited with {}: {}",
                        out.status.code().unwrap_or(-1),
                        text.trim()
                    ))
                }
                Err(e) => Outcome::Failure(e.to_string()),
            }
        }
        Action::Tcp { host, port } => match connect(target.netns, host.as_deref(), *port).await {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Failure(format!(
                "dial tcp {}:{port}: {e}",
                host.as_deref().unwrap_or("127.0.0.1")
            )),
        },
        Action::Http {
            host,
            port,
            path,
            https,
            headers,
        } => {
            if *https {
                return Outcome::Failure("HTTPS probes are not supported yet".into());
            }
            let where_ = format!(
                "http://{}:{port}{path}",
                host.as_deref().unwrap_or("127.0.0.1")
            );
            let mut stream = match connect(target.netns, host.as_deref(), *port).await {
                Ok(s) => s,
                Err(e) => return Outcome::Failure(format!("Get \"{where_}\": {e}")),
            };
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n",
                host.as_deref().unwrap_or("127.0.0.1")
            );
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            if let Err(e) = stream.write_all(req.as_bytes()).await {
                return Outcome::Failure(format!("Get \"{where_}\": {e}"));
            }
            let mut answer = Vec::new();
            let _ = (&mut stream)
                .take(MAX_ANSWER as u64)
                .read_to_end(&mut answer)
                .await;
            let text = String::from_utf8_lossy(&answer);
            let code = text
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.parse::<u16>().ok());
            match code {
                Some(c) if (200..400).contains(&c) => Outcome::Success,
                Some(c) => Outcome::Failure(format!("HTTP probe failed with statuscode: {c}")),
                None => Outcome::Failure(format!("Get \"{where_}\": no HTTP answer")),
            }
        }
    }
}

/// A TCP connection to `host` (default 127.0.0.1) from inside `netns` (or the node's).
pub async fn connect(
    netns: Option<&Path>,
    host: Option<&str>,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let ip: IpAddr = match host {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(h) => h.parse().map_err(|_| {
            std::io::Error::other(format!(
                "host {h:?} is not an IP address (names are not resolved)"
            ))
        })?,
    };
    let addr = SocketAddr::new(ip, port);
    let Some(netns) = netns else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    let netns: PathBuf = netns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(connect_in(&netns, addr));
    });
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the probe thread ended"))??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

/// Connects from this (fresh, short-lived) thread after entering `netns`; the socket stays
/// in that namespace when handed back to the runtime.
fn connect_in(netns: &Path, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let file = std::fs::File::open(netns)?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probes_parse_with_kubernetes_defaults() {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": "http", "path": "/healthz"}},
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}, "periodSeconds": 2, "failureThreshold": 1},
            "startupProbe": {"tcpSocket": {"port": 9}}});
        let r = Spec::of(&c, "readinessProbe").unwrap().unwrap();
        assert_eq!(r.period, Duration::from_secs(10));
        assert_eq!(r.timeout, Duration::from_secs(1));
        assert_eq!((r.success_threshold, r.failure_threshold), (1, 3));
        assert!(
            matches!(r.action, Action::Http { port: 8080, ref path, .. } if path == "/healthz")
        );
        let l = Spec::of(&c, "livenessProbe").unwrap().unwrap();
        assert_eq!(l.period, Duration::from_secs(2));
        assert_eq!(l.action, Action::Exec(vec!["cat".into(), "/tmp/ok".into()]));
        assert!(Spec::of(&c, "nope").unwrap().is_none());
        let bad = json!({"readinessProbe": {"httpGet": {"port": "web"}}});
        assert!(
            Spec::of(&bad, "readinessProbe")
                .unwrap_err()
                .contains("no port named \"web\"")
        );
    }

    #[test]
    fn verdicts_change_only_at_thresholds() {
        let now = Instant::now();
        let spec = Spec {
            action: Action::Tcp {
                host: None,
                port: 1,
            },
            initial_delay: Duration::from_secs(5),
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        };
        let mut p = Probe::new(spec, now);
        assert!(!p.due(now));
        assert!(p.due(now + Duration::from_secs(5)));
        assert_eq!(p.record(&Outcome::Success, now), None);
        assert_eq!(p.record(&Outcome::Success, now), Some(true));
        assert_eq!(
            p.record(&Outcome::Success, now),
            None,
            "no change, no verdict"
        );
        let fail = Outcome::Failure("x".into());
        assert_eq!(p.record(&fail, now), None);
        assert_eq!(p.record(&fail, now), None);
        assert_eq!(p.record(&fail, now), Some(false));
    }

    #[tokio::test]
    async fn a_tcp_probe_from_the_node_sees_a_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(connect(None, None, port).await.is_ok());
        drop(l);
        assert!(connect(None, None, port).await.is_err());
    }
}
