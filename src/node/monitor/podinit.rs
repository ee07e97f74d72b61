//! A pod's shared PID namespace (`shareProcessNamespace: true`), held by a tiny init process
//! (`keelson monitor pod-init`), which is what the pause container does for kubelet.
//!
//! A PID namespace lives only while its first process (its PID 1) does: when that process
//! ends, every other process in it is killed and no process can join it. So the namespace
//! needs a process of its own, outliving keelson like the monitors do, and reaping the
//! orphans of the pod's containers (as PID 1 it inherits them).
//!
//! `keelson monitor pod-init --ns-dir DIR`: detaches (new session, cwd `/`, stdio on
//! /dev/null once it has reported), unshares a PID namespace, forks its PID 1, bind-mounts
//! `/proc/<pid 1>/ns/pid` at `DIR/pid` (a stable path for runc's config), records the init's
//! pid and start time in `DIR/pid-init.json`, prints `ready <pid>` and exits.
//!
//! Invariants:
//! - `DIR/pid` is a mount of a live namespace only while `pid-init.json` names a live init
//!   (pid, start time and boot id): [`ensure`] checks both and makes a new namespace
//!   otherwise (after a reboot, or an init killed by someone);
//! - [`tear_down`] kills the init (verified by its stamp, never a recycled pid) before it
//!   unmounts, so the namespace never outlives the pod's directory.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use serde::{Deserialize, Serialize};

use super::{ProcessStamp, current_boot_id, write_json_atomic};

/// The namespace file runc's config names.
pub const NS_FILE: &str = "pid";
/// Who holds it.
const INIT_FILE: &str = "pid-init.json";
/// Longest wait for a new init to report.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitFile {
    boot_id: String,
    init: ProcessStamp,
}

/// The pod's PID namespace file under `ns_dir`, made (with its init) if it does not exist or
/// its init is gone. Blocking: call off the async runtime.
pub fn ensure(ns_dir: &Path) -> Result<PathBuf, String> {
    let file = ns_dir.join(NS_FILE);
    if alive(ns_dir) && is_mount_point(&file) {
        return Ok(file);
    }
    // A namespace whose init died is unusable: start afresh.
    tear_down(ns_dir).map_err(|e| format!("cannot clear {}: {e}", file.display()))?;
    fs::create_dir_all(ns_dir).map_err(|e| format!("{}: {e}", ns_dir.display()))?;
    let mut child = std::process::Command::new("/proc/self/exe")
        .args(["monitor", "pod-init", "--ns-dir"])
        .arg(ns_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the pod's PID namespace init: {e}"))?;
    let mut report = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = out.take(1024).read_to_string(&mut report);
    }
    let started = std::time::Instant::now();
    // The launcher exits right after its report; reap it (bounded, it never blocks long).
    while started.elapsed() < READY_WAIT {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    match report.trim().strip_prefix("ready ") {
        Some(_) if alive(ns_dir) => Ok(file),
        _ => Err(format!(
            "the pod's PID namespace init did not start: {}",
            report.trim()
        )),
    }
}

/// Kills the namespace's init (if it is still the one recorded), unmounts and removes the
/// namespace file and the record. Idempotent.
pub fn tear_down(ns_dir: &Path) -> io::Result<()> {
    if let Some(rec) = record(ns_dir)
        && current_boot_id().as_deref() == Some(rec.boot_id.as_str())
        && rec.init.is_alive()
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(rec.init.pid), Signal::SIGKILL);
    }
    let file = ns_dir.join(NS_FILE);
    // Repeat: a path can hold stacked mounts.
    loop {
        match nix::mount::umount2(&file, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => break,
            Err(e) => return Err(e.into()),
        }
    }
    for f in [file, ns_dir.join(INIT_FILE)] {
        match fs::remove_file(&f) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn record(ns_dir: &Path) -> Option<InitFile> {
    serde_json::from_slice(&fs::read(ns_dir.join(INIT_FILE)).ok()?).ok()
}

fn alive(ns_dir: &Path) -> bool {
    record(ns_dir).is_some_and(|r| {
        current_boot_id().as_deref() == Some(r.boot_id.as_str()) && r.init.is_alive()
    })
}

fn is_mount_point(file: &Path) -> bool {
    // A bind-mounted namespace file is on nsfs; the empty file under it is not.
    nix::sys::statfs::statfs(file)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// `keelson monitor pod-init …` (single-threaded: dispatched before any runtime starts).
pub fn main(args: &[OsString]) -> ExitCode {
    let ns_dir = match args {
        [flag, dir] if flag == "--ns-dir" => PathBuf::from(dir),
        _ => {
            eprintln!("usage: keelson monitor pod-init --ns-dir DIR (started by keelson itself)");
            return ExitCode::from(2);
        }
    };
    match start(&ns_dir) {
        Ok(pid) => {
            let _ = writeln!(io::stdout(), "ready {pid}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(io::stdout(), "failed {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes the namespace and its init; returns the init's pid as seen from here.
#[allow(unsafe_code)]
fn start(ns_dir: &Path) -> Result<i32, String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare: {e}"))?;
    // SAFETY: `keelson monitor` runs single-threaded (dispatched at the top of `main`, before
    // any thread or runtime exists), so the child may run any code after the fork.
    let child = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(format!("fork: {e}")),
        Ok(nix::unistd::ForkResult::Child) => std::process::exit(init()),
        Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
    };
    let fail = |e: String| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL);
        e
    };
    let init = ProcessStamp::of(child)
        .ok_or_else(|| fail(format!("the init (pid {child}) ended at once")))?;
    let file = ns_dir.join(NS_FILE);
    fs::write(&file, b"").map_err(|e| fail(format!("{}: {e}", file.display())))?;
    nix::mount::mount(
        Some(Path::new(&format!("/proc/{child}/ns/pid"))),
        &file,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        fail(format!(
            "bind-mount the namespace at {}: {e}",
            file.display()
        ))
    })?;
    let rec = InitFile {
        boot_id: current_boot_id().unwrap_or_default(),
        init,
    };
    write_json_atomic(&ns_dir.join(INIT_FILE), &rec).map_err(|e| fail(e.to_string()))?;
    Ok(child)
}

/// PID 1 of the pod: reaps whatever is re-parented to it, until killed. Signals sent from
/// inside the namespace have no effect on it (the kernel drops those an init does not
/// handle), so only the node's SIGKILL ends it.
fn init() -> i32 {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    if chld.thread_block().is_err() {
        return 1;
    }
    let Ok(signals) = SignalFd::with_flags(&chld, SfdFlags::empty()) else {
        return 1;
    };
    loop {
        // Blocks until a child of ours changes state.
        let _ = signals.read_signal();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
