//! Whole-binary tests of the per-container monitor, the runc wrapper and CRI logs (issue 13,
//! items 3 and 4): real runc running containers from a busybox root filesystem and an OCI
//! `config.json` that each test writes itself, driven through the hidden `keelson node-test`
//! hook, which calls the same `monitor::spawn`, `monitor::observe`, `Runc::exec` and
//! `logs::copy_logs` the pod runtime calls.
//!
//! Needs root, runc and `/bin/busybox` (busybox-static): without them the test fails unless
//! `KEELSON_ALLOW_SKIP=1` (see `common/skip.rs`). Every container gets the cgroup
//! `/keelson-test/<id>`, removed (with the container) when the test ends, pass or fail.

#[path = "common/skip.rs"]
mod skip;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

const KEELSON: &str = env!("CARGO_BIN_EXE_keelson");
/// Longest a container may take to reach the state a test waits for.
const WAIT: Duration = Duration::from_secs(30);
/// busybox applets the test root filesystems link.
const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "head", "tr", "stty", "tty", "printf", "test", "[",
];

/// Root, runc and busybox, or `None` (after a loud message) outside CI.
fn lab(test: &str) -> Option<Lab> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (runc needs it)".to_owned());
    }
    let runc = [
        "/usr/sbin/runc",
        "/usr/bin/runc",
        "/usr/local/sbin/runc",
        "/usr/local/bin/runc",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if runc.is_none() {
        missing.push("runc (apt-get install -y runc)".to_owned());
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (apt-get install -y busybox-static)".to_owned());
    }
    if missing.is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let runc_root = dir.path().join("runc");
        return Some(Lab {
            dir,
            runc: runc.unwrap(),
            runc_root,
        });
    }
    let msg = format!("the monitor tests need: {}", missing.join("; "));
    skip::missing(test, &msg);
    None
}

struct Lab {
    dir: TempDir,
    runc: PathBuf,
    runc_root: PathBuf,
}

/// One container's bundle, state directory and log; deleted with its cgroup on drop.
struct Container<'a> {
    lab: &'a Lab,
    id: String,
    bundle: PathBuf,
    state: PathBuf,
    log: PathBuf,
    /// A host directory the container sees as /shared.
    shared: PathBuf,
}

struct Bundle<'a> {
    args: &'a [&'a str],
    memory_limit: Option<u64>,
}

impl Lab {
    fn container(&self, name: &str, bundle: Bundle<'_>) -> Container<'_> {
        let id = format!("kt-{}-{name}", std::process::id());
        let base = self.dir.path().join(name);
        let rootfs = base.join("bundle/rootfs");
        for d in ["bin", "proc", "dev", "tmp", "shared"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let shared = base.join("shared");
        fs::create_dir_all(&shared).unwrap();
        let mut resources = json!({});
        if let Some(limit) = bundle.memory_limit {
            resources = json!({ "memory": { "limit": limit } });
        }
        // A minimal OCI runtime spec, written by hand: no network namespace (the host's),
        // no capabilities, a read-only root with tmpfs /tmp and /dev.
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": bundle.args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
                "noNewPrivileges": true,
                "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }]
            },
            "root": { "path": "rootfs", "readonly": true },
            "hostname": "kt",
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                  "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
                { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "nodev", "mode=1777"] },
                { "destination": "/shared", "type": "bind", "source": shared,
                  "options": ["rbind", "rw"] }
            ],
            "linux": {
                "namespaces": [
                    { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }
                ],
                "cgroupsPath": format!("/keelson-test/{id}"),
                "resources": resources
            }
        });
        fs::write(
            base.join("bundle/config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        Container {
            lab: self,
            id,
            bundle: base.join("bundle"),
            state: base.join("state"),
            log: base.join("logs/0.log"),
            shared,
        }
    }

    fn runc_args(&self) -> Vec<String> {
        vec![
            "--runtime".into(),
            self.runc.display().to_string(),
            "--runc-root".into(),
            self.runc_root.display().to_string(),
        ]
    }
}

impl Container<'_> {
    fn spawn_args(&self) -> Vec<String> {
        let mut args = vec!["node-test".to_owned(), "spawn".to_owned()];
        args.extend(self.lab.runc_args());
        for (flag, value) in [
            ("--id", self.id.clone()),
            ("--bundle", self.bundle.display().to_string()),
            ("--state-dir", self.state.display().to_string()),
            ("--log", self.log.display().to_string()),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        args
    }

    /// `monitor::spawn`; the JSON it reports.
    fn spawn(&self) -> Value {
        let out = keelson(&self.spawn_args());
        assert!(out.status.success(), "spawn failed: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn observe(&self) -> Value {
        let out = keelson(&[
            "node-test",
            "observe",
            "--state-dir",
            &self.state.display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "observe failed: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Observes until the state is `state`.
    fn wait_for(&self, state: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.observe();
            if seen["state"] == state {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "not {state} after {WAIT:?}: {seen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kubectl logs` as the API server will serve it.
    fn logs(&self, extra: &[&str]) -> String {
        let mut args = vec![
            "node-test".to_owned(),
            "logs".to_owned(),
            "--current".to_owned(),
            self.log.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = keelson(&args);
        assert!(out.status.success(), "logs failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn exec(&self, tty: bool, input: &str, extra: &[&str], argv: &[&str]) -> Value {
        let mut args = vec!["node-test".to_owned(), "exec".to_owned()];
        args.extend(self.lab.runc_args());
        args.extend(["--id".to_owned(), self.id.clone()]);
        if tty {
            args.push("--tty".into());
        }
        args.extend(["--input".to_owned(), input.to_owned()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(argv.iter().map(|s| s.to_string()));
        let out = keelson(&args);
        assert!(out.status.success(), "exec failed: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn runc(&self, op: &[&str]) -> Output {
        let mut args = vec!["node-test".to_owned(), "runc".to_owned()];
        args.extend(self.lab.runc_args());
        args.extend(op.iter().map(|s| s.to_string()));
        keelson(&args)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "--force", &self.id]);
        // runc removes the container's cgroups on delete; these are for a failed create.
        if let Ok(controllers) = fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = fs::remove_dir(c.path().join("keelson-test").join(&self.id));
                // Fails while another test's container is in it; the last one removes it.
                let _ = fs::remove_dir(c.path().join("keelson-test"));
            }
        }
    }
}

fn keelson<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(KEELSON)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pid_of(v: &Value, key: &str) -> i32 {
    v[key].as_i64().unwrap_or_else(|| panic!("no {key} in {v}")) as i32
}

/// Start time (ticks after boot) of a live, non-zombie process.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    f.nth(18)?.parse().ok()
}

#[test]
fn output_lines_land_in_the_cri_log_and_the_exit_code_is_recorded() {
    let Some(lab) = lab("output_lines_land_in_the_cri_log_and_the_exit_code_is_recorded") else {
        return;
    };
    // A line that waits more than a second for its end is logged as a partial record
    // first, so `kubectl logs -f` shows prompts and progress.
    let script = "echo hello; echo oops >&2; head -c 40000 /dev/zero | tr '\\0' x; echo; \
                  printf 'wait'; sleep 1.5; echo ' done'; printf 'no newline'; exit 3";
    let c = lab.container(
        "exit3",
        Bundle {
            args: &["sh", "-c", script],
            memory_limit: None,
        },
    );
    let spawned = c.spawn();
    assert!(pid_of(&spawned, "containerPid") > 0);
    let exited = c.wait_for("exited");
    assert_eq!(exited["exitCode"], 3, "{exited}");
    assert_eq!(exited["signal"], Value::Null);
    assert_eq!(exited["oomKilled"], false);
    assert!(exited["startedAt"].as_str().unwrap() <= exited["finishedAt"].as_str().unwrap());

    // The file itself is CRI: `<RFC3339Nano> <stream> <P|F> <text>`, long lines in 16 KiB
    // partial records.
    let raw = fs::read_to_string(&c.log).unwrap();
    let records: Vec<(&str, &str, &str)> = raw
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let ts = p.next().unwrap();
            assert_eq!(ts.len(), 30, "timestamp {ts:?}");
            assert!(
                ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                "timestamp {ts:?}"
            );
            (p.next().unwrap(), p.next().unwrap(), p.next().unwrap_or(""))
        })
        .collect();
    assert!(records.contains(&("stdout", "F", "hello")), "{raw}");
    assert!(records.contains(&("stderr", "F", "oops")), "{raw}");
    let long: Vec<_> = records.iter().filter(|r| r.2.starts_with('x')).collect();
    let shape: Vec<(&str, usize)> = long.iter().map(|r| (r.1, r.2.len())).collect();
    assert_eq!(
        shape,
        [("P", 16384), ("P", 16384), ("F", 40000 - 2 * 16384)]
    );
    let waited = records
        .iter()
        .position(|r| r.2 == "wait")
        .expect("a partial record");
    assert_eq!(records[waited].1, "P");
    assert_eq!(records[waited + 1], ("stdout", "F", " done"));
    // The last line had no newline: complete at the end of the stream.
    assert_eq!(records.last(), Some(&("stdout", "F", "no newline")));

    // What `kubectl logs` shows: partial records joined, both streams.
    let shown = c.logs(&[]);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 5, "{shown}");
    assert!(lines.contains(&"wait done"), "{shown}");
    assert!(
        lines.contains(&"hello") && lines.contains(&"oops"),
        "{shown}"
    );
    assert!(lines.contains(&"x".repeat(40000).as_str()));
    assert_eq!(c.logs(&["--tail", "1"]), "no newline\n");
    let stamped = c.logs(&["--tail", "1", "--timestamps"]);
    assert!(stamped.ends_with("Z no newline\n"), "{stamped}");
}

#[test]
fn a_container_that_cannot_start_reports_runcs_error() {
    let Some(lab) = lab("a_container_that_cannot_start_reports_runcs_error") else {
        return;
    };
    let c = lab.container(
        "nostart",
        Bundle {
            args: &["/bin/no-such-program"],
            memory_limit: None,
        },
    );
    let out = keelson(&c.spawn_args());
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("did not start") && err.contains("no-such-program"),
        "{err}"
    );
    let seen = c.observe();
    assert_eq!(seen["state"], "exited", "{seen}");
    assert_eq!(seen["exitCode"], 128);
    assert!(
        seen["startError"]
            .as_str()
            .unwrap()
            .contains("no-such-program")
    );
}

#[test]
fn containers_outlive_a_killed_spawner_and_their_exit_is_kept() {
    let Some(lab) = lab("containers_outlive_a_killed_spawner_and_their_exit_is_kept") else {
        return;
    };
    let c = lab.container(
        "outlive",
        Bundle {
            args: &[
                "sh",
                "-c",
                "echo up; while [ ! -e /shared/go ]; do sleep 0.1; done; echo bye; exit 42",
            ],
            memory_limit: None,
        },
    );
    // The spawner plays an agent: it spawns the monitor and then stays, in its own process
    // group, until it is killed with SIGKILL — the whole group, as a crude supervisor would.
    let mut args = c.spawn_args();
    args.push("--hold".into());
    let mut spawner = Command::new(KEELSON)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(spawner.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let spawned: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let container = pid_of(&spawned, "containerPid");
    let monitor = pid_of(&spawned, "monitorPid");
    let container_started = start_time(container).expect("the container runs");
    let monitor_started = start_time(monitor).expect("the monitor runs");
    let group = nix::unistd::Pid::from_raw(-(spawner.id() as i32));
    nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL).unwrap();
    spawner.wait().unwrap();

    // Nobody watches now, but the same container process and its monitor run on.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        start_time(container),
        Some(container_started),
        "container {container}"
    );
    assert_eq!(
        start_time(monitor),
        Some(monitor_started),
        "monitor {monitor}"
    );
    let seen = c.observe();
    assert_eq!(seen["state"], "running", "{seen}");
    assert_eq!(pid_of(&seen, "containerPid"), container);
    assert_eq!(c.logs(&[]), "up\n");
    // A restarted agent that tried to start it again would run it twice: refused.
    let again = keelson(&c.spawn_args());
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already has a running monitor"),
        "{}",
        text(&again.stderr)
    );

    // The container exits while no keelson process exists; its code is on disk afterwards.
    fs::write(c.shared.join("go"), "").unwrap();
    let deadline = Instant::now() + WAIT;
    while start_time(monitor).is_some() {
        assert!(Instant::now() < deadline, "the monitor did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A later keelson process adopts it: exited, with the code and the whole log.
    let seen = c.observe();
    assert_eq!(seen["state"], "exited", "{seen}");
    assert_eq!(seen["exitCode"], 42);
    assert_eq!(c.logs(&[]), "up\nbye\n");
}

#[test]
fn a_memory_hog_is_recorded_as_oom_killed() {
    let Some(lab) = lab("a_memory_hog_is_recorded_as_oom_killed") else {
        return;
    };
    let c = lab.container(
        "oom",
        Bundle {
            // The shell keeps 256 MB of output in a variable: far past the 32 MiB limit.
            args: &[
                "sh",
                "-c",
                "x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo survived",
            ],
            memory_limit: Some(32 << 20),
        },
    );
    c.spawn();
    let exited = c.wait_for("exited");
    assert_eq!(exited["oomKilled"], true, "{exited}");
    assert_eq!(exited["exitCode"], 137, "{exited}");
    assert_eq!(exited["signal"], 9, "{exited}");
    assert!(!c.logs(&[]).contains("survived"));
}

#[test]
fn exec_runs_commands_with_and_without_a_terminal() {
    let Some(lab) = lab("exec_runs_commands_with_and_without_a_terminal") else {
        return;
    };
    let c = lab.container(
        "exec",
        Bundle {
            args: &["sleep", "1000"],
            memory_limit: None,
        },
    );
    c.spawn();
    let got = c.exec(
        false,
        "piped in\n",
        &[],
        &["sh", "-c", "cat; echo out; echo err >&2; exit 7"],
    );
    assert_eq!(got["exitCode"], 7, "{got}");
    assert_eq!(got["stdout"], "piped in\nout\n", "{got}");
    assert_eq!(got["stderr"], "err\n", "{got}");

    // The OCI process form (runc's --process).
    let process = lab.dir.path().join("process.json");
    let spec = json!({
        "terminal": false, "user": { "uid": 0, "gid": 0 }, "cwd": "/tmp",
        "env": ["PATH=/bin", "WHO=spec"], "args": ["sh", "-c", "echo $WHO in $PWD; exit 4"]
    });
    fs::write(&process, spec.to_string()).unwrap();
    let got = c.exec(
        false,
        "",
        &["--process", &process.display().to_string()],
        &[],
    );
    assert_eq!(got["exitCode"], 4, "{got}");
    assert_eq!(got["stdout"], "spec in /tmp\n", "{got}");

    let got = c.exec(
        true,
        "stty size; tty; exit 5\n",
        &["--resize", "33,101"],
        &["sh"],
    );
    assert_eq!(got["exitCode"], 5, "{got}");
    let output = got["output"].as_str().unwrap();
    assert!(
        output.contains("33 101"),
        "terminal size not set: {output:?}"
    );
    assert!(output.contains("/dev/pts/"), "no terminal: {output:?}");

    // A failing exec is runc's error, not a hang.
    let out = keelson(&{
        let mut a = vec!["node-test".to_owned(), "exec".to_owned()];
        a.extend(lab.runc_args());
        a.extend(["--id", "kt-no-such-container", "--tty", "--", "sh"].map(String::from));
        a
    });
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("kt-no-such-container"),
        "{}",
        text(&out.stderr)
    );

    // Stopping it through runc: the monitor records the signal.
    let killed = c.runc(&["kill", &c.id, "SIGKILL"]);
    assert!(killed.status.success(), "{}", text(&killed.stderr));
    let exited = c.wait_for("exited");
    assert_eq!(
        (exited["exitCode"].as_i64(), exited["signal"].as_i64()),
        (Some(137), Some(9))
    );
    let state: Value = serde_json::from_slice(&c.runc(&["state", &c.id]).stdout).unwrap();
    assert_eq!(state["status"], "stopped");
}

#[test]
fn a_log_follower_sees_lines_as_they_come_and_ends_with_the_container() {
    let Some(lab) = lab("a_log_follower_sees_lines_as_they_come_and_ends_with_the_container")
    else {
        return;
    };
    let c = lab.container(
        "follow",
        Bundle {
            args: &[
                "sh",
                "-c",
                "echo one; while [ ! -e /shared/go ]; do sleep 0.05; done; echo two; exit 0",
            ],
            memory_limit: None,
        },
    );
    c.spawn();
    let mut follower = Command::new(KEELSON)
        .args(["node-test", "logs", "--follow", "--current"])
        .arg(&c.log)
        .arg("--exit-file")
        .arg(c.state.join("exit.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    // A follower that never ends would hang the test: a watchdog owns the process, kills it
    // after WAIT, and reports whether it had ended by itself.
    let (ended_tx, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = follower.try_wait().unwrap() {
                let _ = ended_tx.send(status.success());
                return;
            }
            if Instant::now() > deadline {
                let _ = follower.kill();
                let _ = follower.wait();
                let _ = ended_tx.send(false);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "one\n");
    let written = Instant::now();
    fs::write(c.shared.join("go"), "").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "two\n");
    // Container poll (50 ms) + monitor + follower poll (100 ms), on a busy machine.
    assert!(
        written.elapsed() < Duration::from_secs(1),
        "{:?}",
        written.elapsed()
    );
    // Then the follower ends by itself: the exit file is there and the log is drained.
    line.clear();
    assert_eq!(out.read_line(&mut line).unwrap(), 0, "{line:?}");
    assert!(ended.recv().unwrap(), "the follower did not end by itself");
}

#[test]
fn an_idle_monitor_holds_well_under_a_mebibyte() {
    let Some(lab) = lab("an_idle_monitor_holds_well_under_a_mebibyte") else {
        return;
    };
    let c = lab.container(
        "idle",
        Bundle {
            args: &["sleep", "1000"],
            memory_limit: None,
        },
    );
    let spawned = c.spawn();
    let monitor = pid_of(&spawned, "monitorPid");
    let memory = || -> (u64, u64, u64) {
        let rollup = fs::read_to_string(format!("/proc/{monitor}/smaps_rollup")).unwrap();
        let field = |name: &str| -> u64 {
            rollup
                .lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .trim()
                        .strip_suffix("kB")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {name} in {rollup}"))
        };
        (field("Rss:"), field("Pss:"), field("Pss_Anon:"))
    };
    std::thread::sleep(Duration::from_millis(500));
    let busy = memory();
    // After 3 s without work (monitor::IDLE_AFTER) the monitor unmaps the executable's and
    // libc's pages that start-up touched.
    std::thread::sleep(Duration::from_secs(4));
    let (rss, pss, anon) = memory();
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "idle monitor, {build} build: RSS {rss} kB, PSS {pss} kB, anonymous {anon} kB \
         (RSS {} kB before it went idle)",
        busy.0
    );
    assert!(
        rss * 2 < busy.0,
        "start-up pages were not released: {busy:?} -> {rss} kB"
    );
    if cfg!(debug_assertions) {
        // A debug executable is 200 MB with 1 MiB of relocated constants; only a sanity bound.
        assert!(anon < 2048, "anonymous {anon} kB");
    } else {
        // The goal: under 1 MiB of everything keelson adds per running container.
        assert!(
            pss < 1024 && anon < 1024,
            "PSS {pss} kB, anonymous {anon} kB"
        );
    }
}
