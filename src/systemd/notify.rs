//! The sd_notify protocol: tells the service manager of a `Type=notify` unit that keelson is
//! ready, what it is doing, that it is stopping, and that it is still alive (the watchdog).
//!
//! A notification is one datagram of `KEY=VALUE` lines to the socket `$NOTIFY_SOCKET` names:
//! a path, or an abstract name when it starts with `@`. The environment is read once, at
//! start, by [`Notify::from_env`]; without `NOTIFY_SOCKET` every call does nothing. A
//! notification that cannot be sent is logged at debug and forgotten: keelson never fails
//! because systemd is absent or slow.
//!
//! The variables stay in the environment, so children inherit them; the OCI runtime must not
//! see `NOTIFY_SOCKET` (runc would wait for a container's own `READY=1`), and
//! [`crate::node::runc`] removes it from every runc command line it builds.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

/// A handle on the service manager's notification socket, cheap to clone; inert when
/// keelson was not started as a notify service.
#[derive(Clone, Debug, Default)]
pub struct Notify {
    /// `None`: no `NOTIFY_SOCKET` (or one that could not be used). Shared by every clone;
    /// the socket closes when the last clone drops.
    target: Option<Arc<Target>>,
    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the manager watches
    /// this process. Invariant: `Some` only when `target` is.
    watchdog: Option<Duration>,
}

/// One notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Start-up is done (the unit becomes active); `status` says what is served now.
    Ready { status: &'a str },
    /// What keelson is doing, shown by `systemctl status`.
    Status(&'a str),
    /// Shutdown began (the unit becomes deactivating).
    Stopping,
    /// Still alive: restarts the manager's `WatchdogSec=` timer.
    Watchdog,
}

/// Why the notification environment cannot be used. Not retryable: the environment does
/// not change while the process runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract name (@NAME)")]
    Address(OsString),
    #[error("NOTIFY_SOCKET={value:?}: {source}")]
    Socket {
        value: OsString,
        #[source]
        source: std::io::Error,
    },
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    WatchdogUsec(OsString),
    #[error("WATCHDOG_PID={0:?} is not a process ID")]
    WatchdogPid(OsString),
}

/// Ends a background task when dropped.
#[derive(Debug)]
pub struct Task(Option<tokio::task::JoinHandle<()>>);

/// The shortest watchdog interval: a `WATCHDOG_USEC` of a microsecond or two must not make
/// a busy loop (or a zero period, which tokio refuses).
const MIN_WATCHDOG_INTERVAL: Duration = Duration::from_millis(1);

// === impl Notify ===

impl Notify {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. An unusable value is
    /// logged as a warning and makes an inert handle.
    pub fn from_env() -> Notify {
        Notify::from_vars(std::process::id(), |name| std::env::var_os(name)).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "not notifying systemd");
            Notify::default()
        })
    }

    /// [`Notify::from_env`] over any variable lookup, for this process ID.
    pub fn from_vars(pid: u32, var: impl Fn(&str) -> Option<OsString>) -> Result<Notify, Error> {
        let Some(value) = var("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(Notify::default());
        };
        let addr = address(&value)?;
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|source| Error::Socket {
                value: value.clone(),
                source,
            })?;
        let watchdog = match var("WATCHDOG_USEC").filter(|v| !v.is_empty()) {
            None => None,
            Some(usec) => {
                let micros = usec
                    .to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| Error::WatchdogUsec(usec.clone()))?;
                // WATCHDOG_PID names the process meant, when the variables were inherited.
                let ours = match var("WATCHDOG_PID").filter(|v| !v.is_empty()) {
                    None => true,
                    Some(p) => {
                        p.to_str()
                            .and_then(|s| s.parse::<u32>().ok())
                            .ok_or_else(|| Error::WatchdogPid(p.clone()))?
                            == pid
                    }
                };
                ours.then(|| (Duration::from_micros(micros) / 2).max(MIN_WATCHDOG_INTERVAL))
            }
        };
        Ok(Notify {
            target: Some(Arc::new(Target { addr, socket })),
            watchdog,
        })
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(Message::Ready { status });
    }

    pub fn status(&self, status: &str) {
        self.send(Message::Status(status));
    }

    pub fn stopping(&self) {
        self.send(Message::Stopping);
    }

    /// Sends `message`, if there is a socket; a failure is logged at debug.
    pub fn send(&self, message: Message<'_>) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = target
            .socket
            .send_to_addr(message.encode().as_bytes(), &target.addr)
        {
            tracing::debug!(error = %e, ?message, "cannot notify systemd");
        }
    }

    /// Sends `WATCHDOG=1` every half `WATCHDOG_USEC` until the returned task drops; nothing
    /// when the manager does not watch this process. Must be called inside the runtime: the
    /// pings come from the runtime itself, so a stuck runtime misses them.
    pub fn spawn_watchdog(&self) -> Task {
        let Some(every) = self.watchdog else {
            return Task(None);
        };
        let notify = self.clone();
        let ping = async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                notify.send(Message::Watchdog);
            }
        };
        Task(Some(tokio::spawn(
            ping.instrument(tracing::info_span!("watchdog")),
        )))
    }

    /// An agent's readiness: `READY=1` the first time `tunnel_up` turns true (the server
    /// registered the node and welcomed its tunnel), then a status line at each change.
    /// Must be called inside the runtime.
    pub fn spawn_follow_tunnel(&self, mut tunnel_up: watch::Receiver<bool>) -> Task {
        if self.target.is_none() {
            return Task(None);
        }
        let notify = self.clone();
        let follow = async move {
            notify.status("joining the cluster");
            if tunnel_up.wait_for(|up| *up).await.is_err() {
                return;
            }
            notify.ready("node registered; tunnel to the server up");
            while tunnel_up.changed().await.is_ok() {
                let up = *tunnel_up.borrow_and_update();
                notify.status(if up {
                    "node registered; tunnel to the server up"
                } else {
                    "tunnel lost; connecting to a server"
                });
            }
        };
        Task(Some(tokio::spawn(
            follow.instrument(tracing::info_span!("notify")),
        )))
    }
}

/// Parses `NOTIFY_SOCKET`: `@NAME` is an abstract socket, anything else must be an
/// absolute path.
fn address(value: &OsString) -> Result<SocketAddr, Error> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = value.as_bytes();
    let addr = match bytes.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name),
        Some((b'/', _)) => SocketAddr::from_pathname(value),
        _ => return Err(Error::Address(value.clone())),
    };
    addr.map_err(|source| Error::Socket {
        value: value.clone(),
        source,
    })
}

// === impl Message ===

impl Message<'_> {
    /// The datagram: newline-separated assignments. A status is kept to one line, as the
    /// protocol needs.
    pub fn encode(&self) -> String {
        match self {
            Message::Ready { status } => format!("READY=1\nSTATUS={}", one_line(status)),
            Message::Status(status) => format!("STATUS={}", one_line(status)),
            Message::Stopping => "STOPPING=1\nSTATUS=shutting down".to_owned(),
            Message::Watchdog => "WATCHDOG=1".to_owned(),
        }
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Where notifications go.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    /// Unbound and non-blocking: a send never waits for the manager.
    socket: UnixDatagram,
}

// === impl Task ===

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notification socket bound in a temporary directory, and the variables naming it.
    struct Manager {
        socket: UnixDatagram,
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Manager {
        fn new() -> Manager {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            Manager {
                socket,
                path,
                _dir: dir,
            }
        }

        fn notify(&self, vars: &[(&str, &str)]) -> Notify {
            let path = self.path.clone();
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Notify::from_vars(42, move |name| {
                if name == "NOTIFY_SOCKET" {
                    return Some(path.clone().into_os_string());
                }
                vars.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| OsString::from(v))
            })
            .unwrap()
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    fn env(vars: &[(&str, &str)]) -> Result<Notify, Error> {
        let vars: Vec<(String, OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Notify::from_vars(42, move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn messages_are_the_protocol_s_assignments_one_per_line() {
        assert_eq!(
            Message::Ready {
                status: "API serving at https://127.0.0.1:6443"
            }
            .encode(),
            "READY=1\nSTATUS=API serving at https://127.0.0.1:6443"
        );
        assert_eq!(
            Message::Status("cannot open\nthe datastore\r").encode(),
            "STATUS=cannot open the datastore "
        );
        assert_eq!(
            Message::Stopping.encode(),
            "STOPPING=1\nSTATUS=shutting down"
        );
        assert_eq!(Message::Watchdog.encode(), "WATCHDOG=1");
    }

    #[test]
    fn notifications_arrive_on_the_socket_notify_socket_names() {
        let manager = Manager::new();
        let notify = manager.notify(&[]);
        notify.ready("serving");
        assert_eq!(manager.recv(), "READY=1\nSTATUS=serving");
        notify.stopping();
        assert_eq!(manager.recv(), "STOPPING=1\nSTATUS=shutting down");
    }

    #[test]
    fn abstract_socket_names_start_with_an_at_sign() {
        let name = format!("keelson-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notify = env(&[("NOTIFY_SOCKET", &format!("@{name}"))]).unwrap();
        notify.status("hello");
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=hello");
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
        let notify = env(&[("WATCHDOG_USEC", "1000000")]).unwrap();
        assert!(notify.target.is_none() && notify.watchdog.is_none());
        notify.ready("serving");
        let notify = env(&[("NOTIFY_SOCKET", "")]).unwrap();
        assert!(notify.target.is_none());
    }

    #[test]
    fn a_manager_that_went_away_is_not_an_error() {
        let manager = Manager::new();
        let notify = manager.notify(&[]);
        drop(manager);
        notify.ready("serving");
        notify.stopping();
    }

    #[test]
    fn unusable_variables_are_refused() {
        assert!(matches!(
            env(&[("NOTIFY_SOCKET", "relative/path")]),
            Err(Error::Address(_))
        ));
        let long = format!("/{}", "x".repeat(200));
        assert!(matches!(
            env(&[("NOTIFY_SOCKET", &long)]),
            Err(Error::Socket { .. })
        ));
        let with = |usec: &str, pid: &str| {
            env(&[
                ("NOTIFY_SOCKET", "@x"),
                ("WATCHDOG_USEC", usec),
                ("WATCHDOG_PID", pid),
            ])
        };
        assert!(matches!(with("0", ""), Err(Error::WatchdogUsec(_))));
        assert!(matches!(with("soon", ""), Err(Error::WatchdogUsec(_))));
        assert!(matches!(with("100", "me"), Err(Error::WatchdogPid(_))));
    }

    #[test]
    fn the_watchdog_pings_at_half_its_period_and_only_for_its_own_process() {
        let with = |pid: &str| {
            env(&[
                ("NOTIFY_SOCKET", "@x"),
                ("WATCHDOG_USEC", "3000000"),
                ("WATCHDOG_PID", pid),
            ])
            .unwrap()
            .watchdog
        };
        assert_eq!(with(""), Some(Duration::from_millis(1500)));
        assert_eq!(with("42"), Some(Duration::from_millis(1500)));
        assert_eq!(with("43"), None);
    }

    #[tokio::test]
    async fn the_watchdog_task_sends_until_dropped() {
        let manager = Manager::new();
        let notify = manager.notify(&[("WATCHDOG_USEC", "20000")]);
        let task = notify.spawn_watchdog();
        let socket = manager.socket.try_clone().unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            (0..3)
                .map(|_| {
                    let n = socket.recv(&mut buf).unwrap();
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert_eq!(got, ["WATCHDOG=1"; 3]);
        drop(task);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Drain what was in flight at the drop, then nothing more comes.
        manager.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        while manager.socket.recv(&mut buf).is_ok() {}
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(manager.socket.recv(&mut buf).is_err());
    }

    #[tokio::test]
    async fn an_agent_is_ready_once_its_tunnel_is_up() {
        let manager = Manager::new();
        let notify = manager.notify(&[]);
        let (up, tunnel_up) = watch::channel(false);
        let _task = notify.spawn_follow_tunnel(tunnel_up);
        let recv = |m: &Manager| {
            let socket = m.socket.try_clone().unwrap();
            tokio::task::spawn_blocking(move || {
                let mut buf = [0u8; 256];
                let n = socket.recv(&mut buf).unwrap();
                String::from_utf8_lossy(&buf[..n]).into_owned()
            })
        };
        assert_eq!(recv(&manager).await.unwrap(), "STATUS=joining the cluster");
        up.send_replace(true);
        assert_eq!(
            recv(&manager).await.unwrap(),
            "READY=1\nSTATUS=node registered; tunnel to the server up"
        );
        up.send_replace(false);
        assert_eq!(
            recv(&manager).await.unwrap(),
            "STATUS=tunnel lost; connecting to a server"
        );
    }
}
