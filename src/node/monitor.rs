//! The per-container monitor: a small process (this same binary, `keelson monitor container`)
//! that starts one container with runc, holds its stdout/stderr pipes and copies them into the
//! CRI log, reaps its init process and writes how it ended to an exit file. It outlives the
//! agent or server that spawned it, so restarting or upgrading keelson (even `kill -9`) leaves
//! containers running; the next keelson process reads the state files and carries on.
//!
//! Process layout: [`spawn`] runs `keelson monitor container …` (the *launcher*), which forks
//! the monitor proper, waits for its one-line report on a pipe ("started PID" or runc's error),
//! prints it and exits. The monitor has its own session (no terminal, not in the caller's
//! process group), stdio on /dev/null, and is re-parented once the launcher exits. It is a
//! child subreaper, so the container's init, whose runc parents exit, becomes its child.
//!
//! The monitor stays in the caller's cgroup: under systemd, the unit that runs keelson needs
//! `KillMode=process` (as K3s's units have for containerd's shims), or stopping the unit kills
//! every monitor with it (the containers, in their own cgroups, would run on unwatched).
//!
//! The monitor is single-threaded, uses std and nix only (no async runtime, no allocator
//! tuning: it is dispatched in `main` before either starts) and allocates a few small buffers.
//!
//! Input ([`Input`]): a container has stdin on /dev/null unless it asked for `stdin: true`
//! (then a pipe whose write end the monitor holds) or `tty: true` (runc makes a terminal and
//! passes its master over `--console-socket`; the monitor copies the master's output to the
//! log as `stdout`, as containerd does for terminals). Either way the monitor listens on the
//! attach socket ([`crate::node::attach`], served by [`sessions`]) for the node's stdin bytes
//! and resizes; the socket is the monitor's, so attaching works again after keelson restarts.
//! Sockets are bound through `/proc/self/fd/<state dir>/…`, so a state directory's length
//! never meets the 108-byte limit of a socket path.
//!
//! State directory (one per container, chosen by the caller), all written atomically
//! (temporary file, then rename):
//! - `monitor.json`: the monitor's pid, process start time and boot id; after a successful
//!   start also the container's init pid, start time and `startedAt`;
//! - `exit.json` ([`ExitRecord`]): written once, after the log is complete; its existence
//!   means the monitor is done (or is just exiting);
//! - `container.pid` (runc's pid file) and `runc.log` (runc's own JSON log);
//! - `attach.sock` while the container runs, if it has stdin or a terminal, and
//!   `console.sock` while runc creates a container with a terminal.
//!
//! Invariants:
//! - the exit file is written only after the container's init was reaped and the pipes were
//!   drained (EOF, or [`DRAIN_LIMIT`] after the exit) into the log file, so a log follower
//!   that sees it can finish; the attach socket is removed before it;
//! - a pid in `monitor.json` is trusted only together with its start time and boot id, so a
//!   recycled pid is never taken for the monitor or the container;
//! - the monitor never deletes the runc container: whoever reads the exit file does;
//! - after [`IDLE_AFTER`] without work, the monitor has unmapped the pages of the executable
//!   and libc that start-up and its last output touched, so an idle monitor keeps resident
//!   only its loop (measured: 0.97 MiB RSS, 0.74 MiB PSS for a release build on x86_64).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::attach;
use super::logs::{CriWriter, LineSplitter, Rotation, Stream, Tag, Timestamp};
use super::runc::{self, Runc};

pub mod podinit;
mod sessions;

/// The monitor's own state, in the container's state directory.
pub const MONITOR_FILE: &str = "monitor.json";
/// How the container ended ([`ExitRecord`]).
pub const EXIT_FILE: &str = "exit.json";
/// runc's `--pid-file`.
const PID_FILE: &str = "container.pid";
/// runc's `--log` (JSON lines).
const RUNC_LOG: &str = "runc.log";
/// After the container's init exits, how long the monitor waits for the pipes to reach EOF
/// (a process that escaped the container may still hold them) before it writes the exit file.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// A line without its newline waits this long before it is logged as a partial record.
const PARTIAL_FLUSH_AFTER: Duration = Duration::from_secs(1);
/// The same while someone is attached: a prompt or a typed key's echo shows at once.
const ATTACHED_FLUSH_AFTER: Duration = Duration::from_millis(10);
/// runc's `--console-socket`, in the state directory, while a terminal is created.
const CONSOLE_SOCKET: &str = "console.sock";
/// Longest wait for runc's terminal message once its connection is accepted (it was sent
/// before `runc run` returned, so this only bounds a broken runc).
const CONSOLE_WAIT: Duration = Duration::from_secs(5);
/// After this long without output or children exiting, a monitor unmaps the file pages its
/// last work touched (see the loop).
pub const IDLE_AFTER: Duration = Duration::from_secs(3);
/// Bytes read from a pipe at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Longest report (runc's error text) the launcher passes on.
const MAX_REPORT: u64 = 8 * 1024;
/// Exit code recorded when runc could not start the container (as containerd reports a
/// StartError).
pub const START_ERROR_EXIT_CODE: i32 = 128;

/// What went wrong starting or observing a monitor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Our executable could not be run (retryable only if the cause was transient, e.g.
    /// EAGAIN).
    #[error("cannot run the container monitor: {0}")]
    Spawn(#[source] io::Error),
    /// runc refused the container; its message is kept. Not retryable without a change.
    #[error("container {id} did not start: {message}")]
    Start { id: String, message: String },
    /// The state directory has a live monitor already: starting another would run the
    /// container twice. Not retryable; observe it instead.
    #[error("{dir} already has a running monitor (pid {pid})")]
    AlreadyMonitored { dir: PathBuf, pid: i32 },
    /// The launcher's report was not what this binary writes (our bug).
    #[error("the container monitor reported something unexpected: {0:?}")]
    Report(String),
    #[error("cannot read or write {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A state file exists but is not what a monitor writes (damaged disk or a bug).
    #[error("{path} is damaged: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One container to run under a monitor.
#[derive(Debug, Clone)]
pub struct MonitorSpec {
    /// runc's container id.
    pub id: String,
    /// The OCI bundle (config.json and rootfs).
    pub bundle: PathBuf,
    /// The container's own directory for the monitor's files; created if missing.
    pub state_dir: PathBuf,
    /// The current CRI log file (kubelet: `/var/log/pods/<ns>_<pod>_<uid>/<ctr>/<n>.log`);
    /// its directory is created if missing.
    pub log_path: PathBuf,
    pub rotation: Rotation,
    pub runc: Runc,
    pub input: Input,
}

/// The container's input, from its spec (`stdin`, `stdinOnce`, `tty`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Input {
    /// Keep a pipe to the container's stdin (or, with `tty`, take input on the terminal).
    pub stdin: bool,
    /// The first attach session that feeds stdin closes it when it ends.
    pub stdin_once: bool,
    /// Give the container a terminal.
    pub tty: bool,
}

/// A started container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spawned {
    pub monitor_pid: i32,
    pub container_pid: i32,
}

/// How a container ended: the monitor's exit file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// The exit status, 128 + the signal's number when a signal ended it (as kubelet
    /// reports), [`START_ERROR_EXIT_CODE`] when it never started.
    pub exit_code: i32,
    /// The signal that ended the init process, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// `None` when the container never started.
    #[serde(default, with = "rfc3339_opt")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "rfc3339")]
    pub finished_at: OffsetDateTime,
    /// The kernel's OOM killer killed a process of the container's cgroup while it ran.
    #[serde(default)]
    pub oom_killed: bool,
    /// runc's error when the container could not be started.
    #[serde(default)]
    pub start_error: Option<String>,
}

/// What the state directory says about a container's monitor, for a keelson process that
/// (re)adopts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Observed {
    /// No monitor was ever started here (or its first file was not written yet).
    Absent,
    /// The monitor runs and has not reported a start yet: observe again shortly.
    #[serde(rename_all = "camelCase")]
    Starting { monitor_pid: i32 },
    /// The monitor runs and so does the container (until [`Observed::Exited`] is seen).
    #[serde(rename_all = "camelCase")]
    Running {
        monitor_pid: i32,
        container_pid: i32,
        #[serde(with = "rfc3339_opt")]
        started_at: Option<OffsetDateTime>,
    },
    /// The monitor is done: how the container ended. Read the log, then `runc delete`.
    Exited(ExitRecord),
    /// The monitor died without an exit file (killed, or the machine rebooted). The
    /// container's init may still run (`container_pid`), without anyone holding its pipes or
    /// reaping it; the caller kills and deletes it through runc and starts it again.
    #[serde(rename_all = "camelCase")]
    Lost { container_pid: Option<i32> },
}

/// Starts a monitor for `spec` and waits until runc has started the container (or failed).
/// The monitor and the container then run on their own: nothing of this process keeps them.
///
/// Refuses a state directory whose monitor still runs; the files of a finished or lost one
/// are removed first (the caller has read them, or decided to start afresh).
pub async fn spawn(spec: &MonitorSpec) -> Result<Spawned> {
    match observe(&spec.state_dir)? {
        Observed::Starting { monitor_pid: pid }
        | Observed::Running {
            monitor_pid: pid, ..
        } => {
            return Err(Error::AlreadyMonitored {
                dir: spec.state_dir.clone(),
                pid,
            });
        }
        Observed::Absent => {}
        Observed::Exited(_) | Observed::Lost { .. } => {
            for name in [EXIT_FILE, MONITOR_FILE] {
                let path = spec.state_dir.join(name);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(Error::File { path, source: e });
                    }
                    _ => {}
                }
            }
        }
    }
    for dir in [Some(spec.state_dir.as_path()), spec.log_path.parent()]
        .into_iter()
        .flatten()
    {
        fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.to_owned(),
            source,
        })?;
    }
    // The running executable even if its file was replaced by an upgrade since.
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.args(["monitor", "container"])
        .args(spec_args(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd.output().await.map_err(Error::Spawn)?;
    let report = String::from_utf8_lossy(&out.stdout);
    parse_report(&spec.id, report.trim_end(), &out.stderr)
}

/// Reads the container's state directory: is its monitor alive, is the container running,
/// has it exited? Safe to call at any time, from any process.
pub fn observe(state_dir: &Path) -> Result<Observed> {
    let monitor_path = state_dir.join(MONITOR_FILE);
    let Some(file) = read_json::<MonitorFile>(&monitor_path)? else {
        return Ok(Observed::Absent);
    };
    // Liveness first, the exit file second: a monitor seen alive that has not written its
    // exit file yet was running at that moment; one seen dead wrote its exit file before it
    // died, if it ever will.
    let boot_id = current_boot_id();
    let same_boot = boot_id.as_deref() == Some(file.boot_id.as_str());
    let monitor_alive = same_boot && file.monitor.is_alive();
    if let Some(exit) = read_json::<ExitRecord>(&state_dir.join(EXIT_FILE))? {
        return Ok(Observed::Exited(exit));
    }
    match (monitor_alive, file.container) {
        (true, None) => Ok(Observed::Starting {
            monitor_pid: file.monitor.pid,
        }),
        (true, Some(c)) => Ok(Observed::Running {
            monitor_pid: file.monitor.pid,
            container_pid: c.pid,
            started_at: file.started_at.as_deref().and_then(parse_time),
        }),
        (false, c) => Ok(Observed::Lost {
            container_pid: c.filter(|c| same_boot && c.is_alive()).map(|c| c.pid),
        }),
    }
}

/// `keelson monitor …`, dispatched by `main` before anything else runs. `args` follow
/// `monitor`.
pub fn main(args: &[OsString]) -> ExitCode {
    let (mode, rest) = match args.split_first() {
        Some((mode, rest)) => (mode.to_str().unwrap_or(""), rest),
        None => ("", args),
    };
    match mode {
        "container" => match MonitorArgs::parse(rest) {
            Ok(args) => launch(args),
            Err(e) => usage(&e),
        },
        "exec" => exec_reaper(rest),
        "pod-init" => podinit::main(rest),
        _ => usage("expected `container`, `exec` or `pod-init`"),
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "error: {problem}\nkeelson monitor is started by keelson itself:\n  \
         keelson monitor container --id ID --bundle DIR --state-dir DIR --log FILE \
         --runtime RUNC --runc-root DIR [--log-max-size BYTES] [--log-max-files N] \
         [--stdin true] [--stdin-once true] [--tty true]\n  \
         keelson monitor exec --pid-file FILE -- RUNC-EXEC-COMMAND…\n  \
         keelson monitor pod-init --ns-dir DIR"
    );
    ExitCode::from(2)
}

/// The launcher's report on its stdout, as [`spawn`] reads it.
fn parse_report(id: &str, report: &str, stderr: &[u8]) -> Result<Spawned> {
    if let Some(pids) = report.strip_prefix("started ") {
        let mut it = pids.split(' ').map(str::parse::<i32>);
        if let (Some(Ok(monitor_pid)), Some(Ok(container_pid)), None) =
            (it.next(), it.next(), it.next())
        {
            return Ok(Spawned {
                monitor_pid,
                container_pid,
            });
        }
    }
    if let Some(message) = report.strip_prefix("failed ") {
        return Err(Error::Start {
            id: id.to_owned(),
            message: message.to_owned(),
        });
    }
    let stderr = String::from_utf8_lossy(stderr);
    Err(Error::Report(format!("{report} {}", stderr.trim())))
}

/// The monitor's arguments, as [`spawn`] writes them.
#[derive(Debug)]
struct MonitorArgs {
    id: String,
    bundle: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    rotation: Rotation,
    runtime: PathBuf,
    runc_root: PathBuf,
    input: Input,
}

fn spec_args(spec: &MonitorSpec) -> Vec<OsString> {
    let pairs: [(&str, &OsStr); 8] = [
        ("--id", spec.id.as_ref()),
        ("--bundle", spec.bundle.as_os_str()),
        ("--state-dir", spec.state_dir.as_os_str()),
        ("--log", spec.log_path.as_os_str()),
        ("--runtime", spec.runc.binary().as_os_str()),
        ("--runc-root", spec.runc.root().as_os_str()),
        ("--log-max-size", OsStr::new("")),
        ("--log-max-files", OsStr::new("")),
    ];
    let size = spec.rotation.max_size.to_string();
    let files = spec.rotation.max_files.to_string();
    let mut out = Vec::with_capacity(16);
    for (flag, value) in pairs {
        out.push(OsString::from(flag));
        out.push(match flag {
            "--log-max-size" => OsString::from(&size),
            "--log-max-files" => OsString::from(&files),
            _ => value.to_owned(),
        });
    }
    // Only when set, so a container without input is started exactly as before.
    let input = spec.input;
    for (flag, on) in [
        ("--stdin", input.stdin),
        ("--stdin-once", input.stdin_once),
        ("--tty", input.tty),
    ] {
        if on {
            out.push(OsString::from(flag));
            out.push(OsString::from("true"));
        }
    }
    out
}

// === impl MonitorArgs ===

impl MonitorArgs {
    fn parse(args: &[OsString]) -> Result<MonitorArgs, String> {
        let mut id = None;
        let mut bundle = None;
        let mut state_dir = None;
        let mut log = None;
        let mut runtime = None;
        let mut runc_root = None;
        let mut rotation = Rotation::default();
        let mut input = Input::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))?;
            let number = || {
                value
                    .to_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| format!("{} needs a number", flag.to_string_lossy()))
            };
            let boolean = || match value.to_str() {
                Some("true") => Ok(true),
                Some("false") => Ok(false),
                _ => Err(format!("{} needs true or false", flag.to_string_lossy())),
            };
            match flag.to_str().unwrap_or("") {
                "--stdin" => input.stdin = boolean()?,
                "--stdin-once" => input.stdin_once = boolean()?,
                "--tty" => input.tty = boolean()?,
                "--id" => id = value.to_str().map(str::to_owned),
                "--bundle" => bundle = Some(PathBuf::from(value)),
                "--state-dir" => state_dir = Some(PathBuf::from(value)),
                "--log" => log = Some(PathBuf::from(value)),
                "--runtime" => runtime = Some(PathBuf::from(value)),
                "--runc-root" => runc_root = Some(PathBuf::from(value)),
                "--log-max-size" => rotation.max_size = number()?,
                "--log-max-files" => {
                    rotation.max_files = u32::try_from(number()?).map_err(|e| e.to_string())?
                }
                other => return Err(format!("unknown flag {other:?}")),
            }
        }
        let missing = |name: &str| format!("{name} is required");
        Ok(MonitorArgs {
            id: id.ok_or_else(|| missing("--id"))?,
            bundle: bundle.ok_or_else(|| missing("--bundle"))?,
            state_dir: state_dir.ok_or_else(|| missing("--state-dir"))?,
            log: log.ok_or_else(|| missing("--log"))?,
            rotation,
            runtime: runtime.ok_or_else(|| missing("--runtime"))?,
            runc_root: runc_root.ok_or_else(|| missing("--runc-root"))?,
            input,
        })
    }
}

/// The launcher: forks the monitor, relays its one-line report to stdout and exits (0 when
/// the container started), which re-parents the monitor away from the caller.
#[allow(unsafe_code)]
fn launch(args: MonitorArgs) -> ExitCode {
    let (report_r, report_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            println!("failed cannot make the monitor's report pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: `keelson monitor` is dispatched at the top of `main`, before any thread,
    // runtime or allocator tuning exists, and nothing here starts one: the process is
    // single-threaded, so the child's copy of memory has no lock held by another thread and
    // may run any code (allocate, print) until it exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            println!("failed cannot fork the monitor: {e}");
            ExitCode::FAILURE
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(report_w);
            let mut report = String::new();
            let _ = File::from(report_r)
                .take(MAX_REPORT)
                .read_to_string(&mut report);
            let report = report.trim_end();
            let ok = report.starts_with("started ");
            let line = match report.strip_prefix("started ") {
                Some(pid) => format!("started {child} {pid}"),
                None if report.is_empty() => {
                    "failed the monitor exited before reporting (see its runc.log)".to_owned()
                }
                None => report.to_owned(),
            };
            // The caller may be gone (killed while we waited); the monitor runs on anyway.
            let _ = writeln!(io::stdout(), "{line}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(report_r);
            let code = monitor(&args, report_w);
            std::process::exit(code)
        }
    }
}

/// The monitor proper. Returns its exit code (0 once the exit file is written).
fn monitor(args: &MonitorArgs, report: OwnedFd) -> i32 {
    let mut report = Some(File::from(report));
    let fail = |report: &mut Option<File>, message: &str| {
        if let Some(mut r) = report.take() {
            let _ = writeln!(r, "failed {}", one_line(message));
        }
    };
    if let Err(e) = detach() {
        fail(&mut report, &format!("cannot detach the monitor: {e}"));
        return 1;
    }
    let state_dir = &args.state_dir;
    let boot_id = current_boot_id().unwrap_or_default();
    let me = ProcessStamp::of(nix::unistd::getpid().as_raw()).unwrap_or(ProcessStamp {
        pid: nix::unistd::getpid().as_raw(),
        start_time: 0,
    });
    let mut state = MonitorFile {
        boot_id,
        monitor: me,
        container: None,
        started_at: None,
    };
    if let Err(e) = write_json_atomic(&state_dir.join(MONITOR_FILE), &state) {
        fail(&mut report, &e.to_string());
        return 1;
    }
    match run_container(args, &mut state, &mut report) {
        Ok(()) => 0,
        Err(message) => {
            // On disk before the report, so a caller told "failed" observes it as exited.
            let record = ExitRecord {
                exit_code: START_ERROR_EXIT_CODE,
                signal: None,
                started_at: None,
                finished_at: OffsetDateTime::now_utc(),
                oom_killed: false,
                start_error: Some(message.clone()),
            };
            let _ = write_json_atomic(&state_dir.join(EXIT_FILE), &record);
            fail(&mut report, &message);
            1
        }
    }
}

/// New session, stdio on /dev/null, child subreaper.
fn detach() -> io::Result<()> {
    nix::unistd::setsid()?;
    // Hold no directory of the caller's busy (an unmount, a removed pod directory).
    std::env::set_current_dir("/")?;
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// Creates and starts the container, reports the start, then copies its output until it
/// exits and writes the exit file. `Err` is a start failure's message.
fn run_container(
    args: &MonitorArgs,
    state: &mut MonitorFile,
    report: &mut Option<File>,
) -> Result<(), String> {
    let dir = &args.state_dir;
    let runc = Runc::new(&args.runtime, &args.runc_root);
    let pid_file = dir.join(PID_FILE);
    let runc_log = dir.join(RUNC_LOG);
    let _ = fs::remove_file(&pid_file);
    let mut log = CriWriter::open(&args.log, args.rotation)
        .map_err(|e| format!("cannot open the log {}: {e}", args.log.display()))?;

    // SIGCHLD arrives through a descriptor the loop polls (std's Command resets the mask in
    // runc, so the container never inherits it blocked).
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block()
        .map_err(|e| format!("cannot block SIGCHLD: {e}"))?;
    let signals = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot make a signalfd: {e}"))?;

    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot make a pipe: {e}"))
    };
    let input = args.input;
    // The state directory, for sockets: only a container with input has any.
    let sockets = if input.stdin || input.tty {
        let d = attach::Dir::open(dir)
            .map_err(|e| format!("cannot open the state directory {}: {e}", dir.display()))?;
        Some(d)
    } else {
        None
    };
    let bind = |d: &attach::Dir, name: &str| {
        let path = d.path(name);
        let _ = fs::remove_file(&path);
        std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| format!("cannot listen on {}: {e}", dir.join(name).display()))
    };
    let mut create = runc.command();
    create
        .arg("--log")
        .arg(&runc_log)
        // One `runc run --detach` rather than `create` then `start`: a Go process fewer on
        // every start (8–20 ms on this machine, a third of a bare `runc run`).
        .args(["--log-format", "json", "run", "--detach", "--bundle"])
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file);
    let mut outputs = (None, None);
    let mut stdin = None;
    let mut console = None;
    match &sockets {
        Some(d) if input.tty => {
            // runc makes the terminal and sends its master here (runc runs in its own
            // process, so it reaches the directory through our pid, not `self`).
            console = Some(bind(d, CONSOLE_SOCKET)?);
            create
                .arg("--console-socket")
                .arg(d.path_for_others(CONSOLE_SOCKET))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
        _ => {
            // runc's "pass-through" mode: its stdio become the container's; its own
            // messages go to runc.log.
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            outputs = (Some(out_r), Some(err_r));
            create.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
            if input.stdin {
                let (in_r, in_w) = pipe()?;
                stdin = Some(in_w);
                create.stdin(Stdio::from(in_r));
            } else {
                create.stdin(Stdio::null());
            }
        }
    }
    let created = create.arg(&args.id).status();
    // The Command holds our copies of the pipes' container ends: drop it, so EOF comes when
    // the container's processes have closed theirs (not only at the drain limit).
    drop(create);
    let created = created.map_err(|e| {
        runc::Error::Missing {
            binary: args.runtime.clone(),
            source: e,
        }
        .to_string()
    })?;
    if !created.success() {
        let mut message = runc_error(&runc_log);
        if message.is_empty() {
            message = format!("runc run exited with {created}");
        }
        return Err(message);
    }
    let container_pid = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .ok_or_else(|| format!("runc run wrote no pid to {}", pid_file.display()))?;
    let mut terminal = None;
    if let (Some(listener), Some(d)) = (console, &sockets) {
        // runc connected and sent the master before `create` returned: it waits in the
        // backlog.
        let master = receive_terminal(&listener);
        let _ = fs::remove_file(d.path(CONSOLE_SOCKET));
        terminal = Some(master?);
    }
    let attach = match &sockets {
        Some(d) => {
            let listener = bind(d, attach::SOCKET)?;
            let copy = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|e| format!("cannot copy the terminal's descriptor: {e}"))
            };
            let (input_fd, resize_fd) = match &terminal {
                Some(t) => (input.stdin.then(|| copy(t)).transpose()?, Some(copy(t)?)),
                None => (stdin.take(), None),
            };
            let s = sessions::Sessions::new(listener, input_fd, resize_fd, input.stdin_once)
                .map_err(|e| format!("cannot set up the attach socket: {e}"))?;
            Some(s)
        }
        None => None,
    };
    if let Some(t) = terminal {
        // Its output is the container's stdout (a terminal merges stderr into it).
        outputs = (Some(t), None);
    }
    // The container runs already (it may even have ended): its cgroup is found through its
    // pid while it lives, else from the bundle (a new cgroup: its OOM count started at 0).
    let oom = OomCounter::find(container_pid).or_else(|| OomCounter::of_bundle(&args.bundle));
    let container = ProcessStamp::of(container_pid);
    let started_at = SystemTime::now();
    state.container = Some(container.unwrap_or(ProcessStamp {
        pid: container_pid,
        start_time: 0,
    }));
    state.started_at =
        Some(String::from_utf8_lossy(Timestamp::new(started_at).as_bytes()).into_owned());
    let _ = write_json_atomic(&dir.join(MONITOR_FILE), state);
    if let Some(mut r) = report.take() {
        // The caller may be gone; the container runs on regardless.
        let _ = writeln!(r, "started {container_pid}");
    }

    let status = copy_until_exit(container_pid, outputs, attach, &signals, &mut log);
    if let Some(d) = &sockets {
        // Before the exit file: whoever sees that finds no socket of a finished monitor.
        let _ = fs::remove_file(d.path(attach::SOCKET));
    }
    let (exit_code, signal) = match status {
        Some(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, Some(sig as i32)),
        Some(WaitStatus::Exited(_, code)) => (code, None),
        // The init vanished without a status we saw (cannot happen to a subreaper's
        // descendant); record it as killed.
        _ => (128 + Signal::SIGKILL as i32, Some(Signal::SIGKILL as i32)),
    };
    let record = ExitRecord {
        exit_code,
        signal,
        started_at: Some(OffsetDateTime::from(started_at)),
        finished_at: OffsetDateTime::now_utc(),
        oom_killed: oom.is_some_and(|o| o.fired()),
        start_error: None,
    };
    let _ = write_json_atomic(&dir.join(EXIT_FILE), &record);
    Ok(())
}

/// One of the container's pipes and what has been read from it.
struct Pipe {
    fd: Option<OwnedFd>,
    stream: Stream,
    lines: LineSplitter,
    /// When the current unfinished line started waiting.
    waiting_since: Option<Instant>,
}

/// The loop: copies the pipes (or the terminal) into the log, serves attach sessions and
/// reaps children until the init has exited and the output is drained. Returns the init's
/// status.
fn copy_until_exit(
    init: i32,
    (out, err): (Option<OwnedFd>, Option<OwnedFd>),
    mut attach: Option<sessions::Sessions>,
    signals: &SignalFd,
    log: &mut CriWriter,
) -> Option<WaitStatus> {
    let mut pipes = [
        Pipe {
            fd: out,
            stream: Stream::Stdout,
            lines: LineSplitter::default(),
            waiting_since: None,
        },
        Pipe {
            fd: err,
            stream: Stream::Stderr,
            lines: LineSplitter::default(),
            waiting_since: None,
        },
    ];
    let mut buf = vec![0u8; READ_CHUNK];
    let mut exited: Option<(WaitStatus, Instant)> = None;
    // Taken once: a single-threaded process's mappings of its executable and libraries stay.
    let file_pages = crate::memory::FilePages::mapped_now();
    // Whether the file pages were released since the loop last did anything.
    let mut released = false;
    // The init may have exited (and been reaped by nobody yet) before the loop starts.
    let mut reap_now = true;
    loop {
        if reap_now {
            reap_now = false;
            if let Some(status) = reap_children(init) {
                exited = Some((status, Instant::now()));
            }
        }
        let open = pipes.iter().any(|p| p.fd.is_some());
        if let Some((status, at)) = exited
            && (!open || at.elapsed() >= DRAIN_LIMIT)
        {
            for p in &mut pipes {
                finish_pipe(p, log);
            }
            let _ = log.flush();
            return Some(status);
        }
        // Wake for: an unfinished line that has waited long enough, the drain limit.
        let now = Instant::now();
        let flush_after = match &attach {
            Some(a) if a.attached() => ATTACHED_FLUSH_AFTER,
            _ => PARTIAL_FLUSH_AFTER,
        };
        let mut wake: Option<Instant> = exited.map(|(_, at)| at + DRAIN_LIMIT);
        for since in pipes.iter().filter_map(|p| p.waiting_since) {
            let at = since + flush_after;
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        let timeout = match wake {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        // Nothing pending: sleep until something happens, but after a quiet spell first
        // release the pages the last burst of work touched.
        let timeout = match (timeout == PollTimeout::NONE, released) {
            (true, false) => PollTimeout::try_from(IDLE_AFTER).unwrap_or(PollTimeout::MAX),
            _ => timeout,
        };
        let (ready_pipes, ready_signal, ready_attach) = {
            let mut fds: Vec<PollFd> = Vec::with_capacity(4);
            fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
            let mut which = [None, None];
            for (i, p) in pipes.iter().enumerate() {
                if let Some(fd) = &p.fd {
                    which[i] = Some(fds.len());
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            let registered = attach.as_ref().map(|a| a.register(&mut fds));
            match nix::poll::poll(&mut fds, timeout) {
                Ok(0) if exited.is_none() && pipes.iter().all(|p| p.waiting_since.is_none()) => {
                    // Quiet for IDLE_AFTER. Start-up (argument parsing, JSON, spawning runc)
                    // and the last output touched pages of the executable and libc that an
                    // idle monitor does not run: unmap them (they stay in the page cache and
                    // come back on first use), and give free heap pages back.
                    let _ = file_pages.release();
                    crate::memory::trim();
                    released = true;
                    continue;
                }
                Ok(_) | Err(Errno::EINTR) => {}
                // Cannot poll (not expected): avoid spinning, keep reaping.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(PollFd::revents)
                    .is_some_and(|r| !r.is_empty())
            };
            let ready_attach = registered.map(|r| r.ready(&fds));
            (which.map(|w| w.is_some_and(ready)), ready(0), ready_attach)
        };
        released = false;
        if let (Some(a), Some(ready)) = (attach.as_mut(), ready_attach) {
            a.handle(ready);
        }
        if ready_signal {
            // Drain the queued SIGCHLDs; the reap loop below collects every child.
            while let Ok(Some(_)) = signals.read_signal() {}
            reap_now = true;
        }
        let ts = Timestamp::new(SystemTime::now());
        for (p, ready) in pipes.iter_mut().zip(ready_pipes) {
            if ready {
                read_pipe(p, &mut buf, &ts, log);
            }
            if let Some(since) = p.waiting_since
                && since.elapsed() >= flush_after
            {
                let stream = p.stream;
                p.lines.flush_partial(&mut |tag, text| {
                    let _ = log.record(&ts, stream, tag, text);
                });
                p.waiting_since = None;
            }
        }
        let _ = log.flush();
    }
}

/// Reads what the pipe has (one chunk) into the log; closes it at EOF.
fn read_pipe(p: &mut Pipe, buf: &mut [u8], ts: &Timestamp, log: &mut CriWriter) {
    let Some(fd) = &p.fd else { return };
    match nix::unistd::read(fd, buf) {
        Ok(0) => finish_pipe(p, log),
        Ok(n) => {
            let stream = p.stream;
            p.lines.push(&buf[..n], &mut |tag: Tag, text: &[u8]| {
                // A full disk loses log lines, never the container.
                let _ = log.record(ts, stream, tag, text);
            });
            if !p.lines.has_pending() {
                p.waiting_since = None;
            } else if p.waiting_since.is_none() {
                p.waiting_since = Some(Instant::now());
            }
        }
        Err(Errno::EINTR | Errno::EAGAIN) => {}
        Err(_) => finish_pipe(p, log),
    }
}

/// The pipe ended (or will not be waited for): log its unfinished line and close it.
fn finish_pipe(p: &mut Pipe, log: &mut CriWriter) {
    let ts = Timestamp::new(SystemTime::now());
    let stream = p.stream;
    p.lines.finish(&mut |tag, text| {
        let _ = log.record(&ts, stream, tag, text);
    });
    p.waiting_since = None;
    p.fd = None;
}

/// The terminal master runc sent to the console socket while it created the container.
fn receive_terminal(listener: &std::os::unix::net::UnixListener) -> Result<OwnedFd, String> {
    let failed = |e: io::Error| format!("cannot receive the container's terminal from runc: {e}");
    listener.set_nonblocking(true).map_err(failed)?;
    let (stream, _) = listener.accept().map_err(failed)?;
    runc::receive_fd_blocking(&stream, CONSOLE_WAIT).map_err(failed)
}

/// Reaps every child that has exited; returns the init's status if it was among them.
fn reap_children(init: i32) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(status) => {
                if status.pid().map(Pid::as_raw) == Some(init)
                    && matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..))
                {
                    found = Some(status);
                }
            }
        }
    }
}

/// The last error runc wrote to its JSON log.
fn runc_error(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    // Only the end matters; bound what is read.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = std::io::Seek::seek(&mut f, io::SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut text = Vec::new();
    let _ = f.read_to_end(&mut text);
    runc::error_text(&text)
        .rsplit("; ")
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// The container's OOM kill counter, read when it was created and again when it ends.
#[derive(Debug, Clone)]
struct OomCounter {
    file: PathBuf,
    key: &'static str,
    before: u64,
}

// === impl OomCounter ===

impl OomCounter {
    /// Finds the memory cgroup of `pid` (cgroup v1's `memory` controller, else the unified
    /// hierarchy) and reads its OOM kill counter.
    fn find(pid: i32) -> Option<OomCounter> {
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let (file, key) = oom_file(
            &cgroups,
            Path::new("/sys/fs/cgroup")
                .join("cgroup.controllers")
                .exists(),
        )?;
        let before = read_counter(&file, key)?;
        Some(OomCounter { file, key, before })
    }

    /// The counter of the cgroup the bundle's `linux.cgroupsPath` names (cgroupfs style,
    /// as keelson writes it), counting from 0: for a container that ended before its pid
    /// could be looked up.
    fn of_bundle(bundle: &Path) -> Option<OomCounter> {
        let config: serde_json::Value =
            serde_json::from_slice(&fs::read(bundle.join("config.json")).ok()?).ok()?;
        let path = config.pointer("/linux/cgroupsPath")?.as_str()?;
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        // The same shape as /proc/<pid>/cgroup: the v1 memory line, else the v2 line.
        let proc_cgroup = if unified {
            format!("0::{path}\n")
        } else {
            format!("4:memory:{path}\n")
        };
        let (file, key) = oom_file(&proc_cgroup, unified)?;
        Some(OomCounter {
            file,
            key,
            before: 0,
        })
    }

    fn fired(&self) -> bool {
        read_counter(&self.file, self.key).is_some_and(|now| now > self.before)
    }
}

/// The file and key holding the OOM kill count for the cgroups in `/proc/<pid>/cgroup`.
/// `unified_root`: cgroup v2 is mounted at /sys/fs/cgroup itself (not hybrid).
fn oom_file(proc_cgroup: &str, unified_root: bool) -> Option<(PathBuf, &'static str)> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let dir = Path::new("/sys/fs/cgroup/memory").join(rel);
            return Some((dir.join("memory.oom_control"), "oom_kill"));
        }
        if controllers.is_empty() {
            let base = if unified_root {
                "/sys/fs/cgroup"
            } else {
                "/sys/fs/cgroup/unified"
            };
            v2 = Some((Path::new(base).join(rel).join("memory.events"), "oom_kill"));
        }
    }
    v2
}

/// `key N` from a flat-keyed cgroup file.
fn read_counter(file: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    parse_counter(&text, key)
}

fn parse_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `keelson monitor exec --pid-file P -- CMD…`: runs a detached `runc exec` (CMD) as a child
/// subreaper, waits for the process runc started (its pid in P) and exits with its status
/// (128 + signal when signalled). runc's errors pass through on stderr. This is what makes an
/// exec with a terminal (where runc must detach to hand over the console) report its exit
/// code.
pub fn exec_reaper(args: &[OsString]) -> ExitCode {
    let (pid_file, cmd) = match args {
        [flag, pid_file, dashes, cmd @ ..]
            if flag == "--pid-file" && dashes == "--" && !cmd.is_empty() =>
        {
            (PathBuf::from(pid_file), cmd)
        }
        _ => return usage("exec needs --pid-file FILE -- COMMAND…"),
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("error: cannot become a subreaper: {e}");
        return ExitCode::from(255);
    }
    let status = match std::process::Command::new(&cmd[0]).args(&cmd[1..]).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot run {}: {e}", cmd[0].to_string_lossy());
            return ExitCode::from(255);
        }
    };
    if !status.success() {
        return ExitCode::from(u8::try_from(exit_code_of(status)).unwrap_or(255));
    }
    let pid = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let _ = fs::remove_file(&pid_file);
    let Some(pid) = pid else {
        eprintln!("error: runc exec wrote no pid to {}", pid_file.display());
        return ExitCode::from(255);
    };
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => {
                return ExitCode::from(u8::try_from(code).unwrap_or(255));
            }
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                return ExitCode::from(u8::try_from(128 + sig as i32).unwrap_or(255));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("error: lost the exec'd process {pid}: {e}");
                return ExitCode::from(255);
            }
        }
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// `monitor.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MonitorFile {
    /// `/proc/sys/kernel/random/boot_id` when written: pids mean nothing across a reboot.
    boot_id: String,
    monitor: ProcessStamp,
    #[serde(default)]
    container: Option<ProcessStamp>,
    /// RFC 3339, when `runc run` returned.
    #[serde(default)]
    started_at: Option<String>,
}

/// A process told apart from any later one that reuses its pid: its start time in clock
/// ticks after boot (field 22 of `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessStamp {
    pid: i32,
    start_time: u64,
}

// === impl ProcessStamp ===

impl ProcessStamp {
    fn of(pid: i32) -> Option<ProcessStamp> {
        let (_, start_time) = proc_stat(pid)?;
        Some(ProcessStamp { pid, start_time })
    }

    /// The same process still exists and has not exited (a zombie has).
    fn is_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }
}

/// State letter and start time from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 lie between the state (3) and the start time (22).
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn current_boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Reads a JSON state file; `None` when it does not exist.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Corrupt {
                path: path.to_owned(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::File {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `value` as JSON to `path` through a temporary file and a rename, so a reader sees
/// the old file or the whole new one.
fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let file_err = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec(value).map_err(|e| file_err(io::Error::other(e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(file_err)?;
    f.write_all(&bytes).map_err(file_err)?;
    // Durable before it becomes visible: after a power cut the file is whole or absent.
    f.sync_all().map_err(file_err)?;
    fs::rename(&tmp, path).map_err(file_err)?;
    Ok(())
}

/// `OffsetDateTime` as RFC 3339 text.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests;
