//! A thin wrapper over the `runc` command line: the OCI runtime that isolates containers.
//!
//! Every call runs `runc --root <root> …` with the state directory the caller chose (e.g.
//! `<data-dir>/agent/runc`), so keelson's containers never mix with anyone else's. Creating
//! and starting containers is the monitor's job ([`super::monitor`]): it must hold the
//! container's pipes and reap its init. This module covers what the pod runtime does to a
//! running container: state, list, kill, delete and exec (with or without a terminal).
//!
//! Invariants:
//! - runc's own words reach the caller: a failure carries runc's stderr (or, for JSON-logging
//!   calls, its last error message), never a guess;
//! - a terminal's master end is held only by the [`Console`] it is handed to (close-on-exec,
//!   so no child inherits it), and its exec's process is reaped by a helper subreaper whose
//!   exit code is the process's.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest stderr text of a failed runc call kept in an error.
const MAX_ERROR_TEXT: usize = 4096;
/// Console sockets made so far by this process (part of their unique names).
static CONSOLE_SOCKETS: AtomicU64 = AtomicU64::new(0);
/// systemd's notification socket variable, never passed to runc (go-runc drops it too).
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// What went wrong running runc. Retryable only where noted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration: fix `--runtime` or install runc.
    #[error(
        "cannot run the OCI runtime {binary:?}: {source} (install runc, or point --runtime at it)"
    )]
    Missing {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The container named does not exist in this runc root.
    #[error("container {id} does not exist")]
    NotFound { id: String },
    /// runc refused or failed; its own message is kept.
    #[error("runc {op} {id} failed ({status}): {message}")]
    Failed {
        op: &'static str,
        id: String,
        status: std::process::ExitStatus,
        message: String,
    },
    /// runc answered with something that is not what its documentation says (our bug or an
    /// incompatible runc).
    #[error("runc {op}: unexpected output: {source}")]
    Output {
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Setting up or receiving an exec's terminal failed.
    #[error("cannot set up the terminal for exec in {id}: {source}")]
    Console {
        id: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The runc binary and the state directory it keeps its containers in.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

/// What `runc state` / `runc list` report about a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub id: String,
    /// The init process; 0 once it has stopped.
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
    #[serde(other)]
    Unknown,
}

/// The process an exec runs.
#[derive(Debug, Clone)]
pub enum ExecProcess {
    /// A command line, with environment (`KEY=value`), working directory and user (uid, gid).
    Args {
        argv: Vec<String>,
        env: Vec<String>,
        cwd: Option<PathBuf>,
        user: Option<(u32, u32)>,
    },
    /// An OCI `process` JSON file (runc's `--process`); with a terminal, its `terminal` must
    /// be true.
    Spec(PathBuf),
}

/// A running exec. Without a terminal, `child` is runc itself with piped stdin, stdout and
/// stderr; with one, `child` is a helper whose exit code is the process's, and the process's
/// input and output go through `console`.
#[derive(Debug)]
pub struct Exec {
    pub child: tokio::process::Child,
    pub console: Option<Console>,
}

/// The master end of an exec's pseudo-terminal: read the process's output, write its input,
/// resize it. Dropping it hangs the terminal up.
#[derive(Debug)]
pub struct Console {
    fd: AsyncFd<OwnedFd>,
}

// === impl Runc ===

impl Runc {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Runc {
        Runc {
            binary: binary.into(),
            root: root.into(),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `runc --version` and returns its first line; at start, so a missing runtime is
    /// a clear error naming `--runtime` instead of a failure at the first pod.
    pub fn check(&self) -> Result<String> {
        let out = std::process::Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Missing {
                binary: self.binary.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Missing {
                binary: self.binary.clone(),
                source: io::Error::other(format!(
                    "`--version` failed ({}): {}",
                    out.status,
                    error_text(&out.stderr)
                )),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    /// `runc --root <root>`, for the caller to add a command to (the monitor runs `create`
    /// and `start` this way, without an async runtime).
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        // Under a systemd notify unit keelson's environment names systemd's socket; runc would
        // pass it into the container and make `start` wait for the container's READY=1.
        cmd.env_remove(NOTIFY_SOCKET);
        cmd
    }

    pub async fn state(&self, id: &str) -> Result<State> {
        let out = self.run("state", id, &["state", id]).await?;
        serde_json::from_slice(&out).map_err(|source| Error::Output {
            op: "state",
            source,
        })
    }

    /// Every container in this root.
    pub async fn list(&self) -> Result<Vec<State>> {
        let out = self.run("list", "", &["list", "--format", "json"]).await?;
        // runc prints `null` for an empty root.
        let list: Option<Vec<State>> =
            serde_json::from_slice(&out).map_err(|source| Error::Output { op: "list", source })?;
        Ok(list.unwrap_or_default())
    }

    /// Sends `signal` to the init process, or with `all` to every process of the container.
    pub async fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let number = (signal as i32).to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, number.as_str()]);
        self.run("kill", id, &args).await.map(drop)
    }

    /// Removes a stopped container (with `force`, kills a running one first).
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.run("delete", id, &args).await.map(drop)
    }

    /// Starts a process inside a running container.
    ///
    /// Without `tty`, runc stays the process's parent (and subreaper), so its exit code is the
    /// process's and its stdio are piped to the caller. With `tty`, runc must detach to hand
    /// the terminal's master over its console socket; `keelson monitor exec` (a small subreaper,
    /// see [`super::monitor::exec_reaper`]) runs it and waits for the process instead.
    pub async fn exec(&self, id: &str, process: &ExecProcess, tty: bool) -> Result<Exec> {
        let mut args: Vec<OsString> = vec!["exec".into()];
        match process {
            ExecProcess::Args { env, cwd, user, .. } => {
                for e in env {
                    args.push("--env".into());
                    args.push(e.into());
                }
                if let Some(cwd) = cwd {
                    args.push("--cwd".into());
                    args.push(cwd.into());
                }
                if let Some((uid, gid)) = user {
                    args.push("--user".into());
                    args.push(format!("{uid}:{gid}").into());
                }
            }
            ExecProcess::Spec(path) => {
                args.push("--process".into());
                args.push(path.into());
            }
        }
        if !tty {
            let mut cmd = tokio::process::Command::from(self.command());
            cmd.args(&args);
            push_target(&mut cmd, id, process);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let child = cmd.spawn().map_err(|source| Error::Missing {
                binary: self.binary.clone(),
                source,
            })?;
            return Ok(Exec {
                child,
                console: None,
            });
        }
        let console_err = |source| Error::Console {
            id: id.to_owned(),
            source,
        };
        let n = CONSOLE_SOCKETS.fetch_add(1, Ordering::Relaxed);
        let socket = self
            .root
            .join(format!(".console-{}-{n}.sock", std::process::id()));
        let pid_file = self
            .root
            .join(format!(".exec-{}-{n}.pid", std::process::id()));
        std::fs::create_dir_all(&self.root).map_err(console_err)?;
        let listener = tokio::net::UnixListener::bind(&socket).map_err(console_err)?;
        let _cleanup = RemoveOnDrop(vec![socket.clone(), pid_file.clone()]);
        let exe = std::env::current_exe().map_err(console_err)?;
        let mut cmd = tokio::process::Command::new(exe);
        // The monitor runs runc: see `command`.
        cmd.env_remove(NOTIFY_SOCKET);
        cmd.args(["monitor", "exec", "--pid-file"])
            .arg(&pid_file)
            .arg("--")
            .arg(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .args(&args)
            .args(["--detach", "--tty", "--console-socket"])
            .arg(&socket)
            .arg("--pid-file")
            .arg(&pid_file);
        push_target(&mut cmd, id, process);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(console_err)?;
        // runc connects once the terminal exists; if it fails first, the helper exits with
        // runc's error on its stderr.
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.map_err(console_err)?;
                let master = receive_fd(&stream).await.map_err(console_err)?;
                let console = Console::new(master).map_err(console_err)?;
                Ok(Exec { child, console: Some(console) })
            }
            status = child.wait() => {
                let status = status.map_err(console_err)?;
                let mut stderr = Vec::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = (&mut e).take(MAX_ERROR_TEXT as u64).read_to_end(&mut stderr).await;
                }
                Err(Error::Failed { op: "exec", id: id.to_owned(), status, message: error_text(&stderr) })
            }
        }
    }

    /// Runs `runc --root <root> <args>` and returns its stdout, or its error.
    async fn run(&self, op: &'static str, id: &str, args: &[&str]) -> Result<Vec<u8>> {
        let mut cmd = tokio::process::Command::from(self.command());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = cmd.output().await.map_err(|source| Error::Missing {
            binary: self.binary.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let message = error_text(&out.stderr);
        // runc has no exit code for "no such container"; its message is the only sign.
        if message.contains("does not exist") {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        Err(Error::Failed {
            op,
            id: id.to_owned(),
            status: out.status,
            message,
        })
    }
}

/// Adds the container id and, for the argv form, the command line.
fn push_target(cmd: &mut tokio::process::Command, id: &str, process: &ExecProcess) {
    cmd.arg(id);
    if let ExecProcess::Args { argv, .. } = process {
        cmd.args(argv);
    }
}

/// runc's stderr as one trimmed line of bounded length. runc writes a JSON log line when
/// started with `--log-format json` and a plain line otherwise; the message is what matters.
pub fn error_text(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(&stderr[..stderr.len().min(MAX_ERROR_TEXT)]);
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        #[derive(Deserialize)]
        struct LogLine {
            level: Option<String>,
            msg: Option<String>,
        }
        match serde_json::from_str::<LogLine>(line) {
            Ok(LogLine {
                level: Some(level),
                msg: Some(msg),
            }) => {
                if level == "error" || level == "fatal" {
                    lines.push(msg);
                }
            }
            _ => lines.push(line.to_owned()),
        }
    }
    lines.dedup();
    lines.join("; ")
}

/// Receives the one file descriptor runc sends over its console socket.
async fn receive_fd(stream: &tokio::net::UnixStream) -> io::Result<OwnedFd> {
    loop {
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || {
            receive_fds(stream.as_raw_fd())
        }) {
            Ok(fds) => return only_one(fds),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// [`receive_fd`] for a caller without a runtime (the monitor): waits at most `limit`.
pub fn receive_fd_blocking(
    stream: &std::os::unix::net::UnixStream,
    limit: std::time::Duration,
) -> io::Result<OwnedFd> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(limit))?;
    only_one(receive_fds(stream.as_raw_fd())?)
}

fn only_one(mut fds: Vec<OwnedFd>) -> io::Result<OwnedFd> {
    match fds.len() {
        1 => Ok(fds.remove(0)),
        n => Err(io::Error::other(format!(
            "expected one terminal descriptor from runc, got {n}"
        ))),
    }
}

/// One `recvmsg` on runc's console connection: the descriptors it carried, owned.
#[allow(unsafe_code)]
fn receive_fds(fd: std::os::fd::RawFd) -> io::Result<Vec<OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    // runc sends the terminal's name as the data; the fd rides as SCM_RIGHTS.
    let mut name = [0u8; 256];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut raw = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            raw.extend(received);
        }
    }
    Ok(raw
        .into_iter()
        // SAFETY: the kernel just installed each of these descriptors in our table for
        // this message (SCM_RIGHTS); nothing else in the process knows their numbers, so
        // each OwnedFd is their sole owner and closes it exactly once.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect())
}

struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

// === impl Console ===

impl Console {
    #[allow(unsafe_code)]
    fn new(master: OwnedFd) -> io::Result<Console> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_truncate(fcntl(&master, FcntlArg::F_GETFL)?);
        fcntl(&master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: an OwnedFd's `as_raw_fd` always returns the descriptor it owns, which stays
        // open and refers to the same terminal until the OwnedFd is dropped; the AsyncFd owns
        // it and is never taken apart (no `into_inner`), so that is exactly its lifetime.
        let fd = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
        Ok(Console { fd })
    }

    /// Sets the terminal's size (TIOCSWINSZ); the process gets SIGWINCH.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        set_terminal_size(std::os::fd::AsFd::as_fd(self.fd.get_ref()), rows, cols)
    }
}

impl Console {
    /// Reads the process's output; takes `&self` so one terminal can be read, written and
    /// resized from different tasks.
    pub fn poll_read_shared(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The last process holding the terminal's other end exited: end of output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes the process's input (see [`Console::poll_read_shared`]).
    pub fn poll_write_shared(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncRead for Console {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_shared(cx, buf)
    }
}

impl AsyncWrite for Console {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_shared(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Sets a terminal's size (TIOCSWINSZ); its foreground process gets SIGWINCH.
#[allow(unsafe_code)]
pub fn set_terminal_size(
    terminal: std::os::fd::BorrowedFd<'_>,
    rows: u16,
    cols: u16,
) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points at a live,
    // initialised local for the whole call; the descriptor is borrowed, so it stays open
    // across the call. The kernel validates the descriptor and the request.
    let rc = unsafe {
        libc::ioctl(
            terminal.as_raw_fd(),
            libc::TIOCSWINSZ,
            &size as *const libc::winsize,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_errors_are_its_messages() {
        let json = br#"{"level":"warning","msg":"deprecated","time":"x"}
{"level":"error","msg":"container with id exists: c1","time":"x"}
"#;
        assert_eq!(error_text(json), "container with id exists: c1");
        assert_eq!(error_text(b"  plain failure\n\n"), "plain failure");
    }

    #[test]
    fn state_is_parsed_from_runcs_json() {
        let json = br#"{"ociVersion":"1.0.2-dev","id":"c1","pid":42,"status":"running",
            "bundle":"/b","rootfs":"/b/rootfs","created":"2026-12-06T13:05:34Z","owner":""}"#;
        let s: State = serde_json::from_slice(json).unwrap();
        assert_eq!(
            s,
            State {
                id: "c1".into(),
                pid: 42,
                status: Status::Running,
                bundle: "/b".into()
            }
        );
    }

    #[test]
    fn a_missing_runtime_names_the_flag() {
        let runc = Runc::new("/nonexistent/runc", "/tmp");
        let err = runc.check().unwrap_err().to_string();
        assert!(err.contains("--runtime"), "{err}");
        assert!(err.contains("/nonexistent/runc"), "{err}");
    }
}
