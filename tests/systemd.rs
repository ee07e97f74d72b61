//! keelson under systemd, without systemd: a test socket plays the manager of a
//! `Type=notify` unit and hears the real server's notifications, and `systemd-analyze verify`
//! checks the unit files `keelson unit` prints.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::{Options, Server};

/// Longest a notification may take to arrive after what it announces.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// One datagram the server sent, and, for `READY=1`, what `/readyz` answered right then.
struct Heard {
    text: String,
    at: Instant,
    readyz_at_ready: Option<String>,
}

#[test]
fn server_notifies_ready_once_its_api_answers_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
    let (heard_tx, heard) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let listener = thread::spawn({
        let done = done.clone();
        move || listen(socket, heard_tx, &done)
    });
    let mut seen = Vec::new();

    let mut server = Server::start(
        Options::default()
            .env("NOTIFY_SOCKET", path.as_os_str())
            // Pings every 100 ms.
            .env("WATCHDOG_USEC", "200000"),
    );
    let ready = next(&heard, &mut seen, "READY=1", &server);
    assert_eq!(
        ready.readyz_at_ready.as_deref(),
        Some("ok"),
        "READY=1 came before the API answered /readyz: {:?}\n{}",
        ready.text,
        server.log_tail()
    );
    assert!(
        ready
            .text
            .contains(&format!("STATUS=API serving at {}", server.url())),
        "{:?}",
        ready.text
    );
    assert!(
        seen.iter().any(|m| m.starts_with("STATUS=starting")),
        "no start-up STATUS= before READY=1: {seen:?}"
    );
    // The watchdog keeps pinging while the server runs.
    let first = next(&heard, &mut seen, "WATCHDOG=1", &server);
    next(&heard, &mut seen, "WATCHDOG=1", &server);
    let third = next(&heard, &mut seen, "WATCHDOG=1", &server);
    assert!(
        third.at - first.at < Duration::from_secs(2),
        "WATCHDOG=1 every {:?} or so, not every 100 ms",
        (third.at - first.at) / 2
    );

    let stopped = server.stop();
    assert!(stopped.status.success(), "{}", server.log_tail());
    next(&heard, &mut seen, "STOPPING=1", &server);
    done.store(true, Ordering::Relaxed);
    drop(heard);
    seen.extend(listener.join().expect("the listener thread"));
    let readies = seen.iter().filter(|m| m.starts_with("READY=1")).count();
    assert_eq!(readies, 1, "READY=1 sent {readies} times: {seen:?}");
}

#[test]
fn agent_notifies_ready_once_its_node_is_registered_and_stopping_on_sigterm() {
    let server = Server::start(Options::default());
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
    let (heard_tx, heard) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let listener = thread::spawn({
        let done = done.clone();
        move || listen(socket, heard_tx, &done)
    });
    let mut seen = Vec::new();

    let mut agent = Agent::start_with_env(
        &server.url(),
        &server.token(),
        "pi-notify",
        &[],
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    let ready = next(&heard, &mut seen, "READY=1", &server);
    assert_eq!(
        ready.text,
        "READY=1\nSTATUS=node registered; tunnel to the server up",
        "{}",
        agent.log_tail()
    );
    // Registered before READY=1: the node is there at once.
    server.kubectl_ok(&["get", "node", "pi-notify"]);
    assert!(
        seen.first()
            .is_some_and(|m| m == "STATUS=joining the cluster"),
        "{seen:?}"
    );

    assert!(
        agent.terminate(Duration::from_secs(15)).success(),
        "{}",
        agent.log_tail()
    );
    next(&heard, &mut seen, "STOPPING=1", &server);
    done.store(true, Ordering::Relaxed);
    drop(heard);
    seen.extend(listener.join().expect("the listener thread"));
    let readies = seen.iter().filter(|m| m.starts_with("READY=1")).count();
    assert_eq!(readies, 1, "READY=1 sent {readies} times: {seen:?}");
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if !systemd_analyze_available() {
        return;
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_keelson"))
        .parent()
        .expect("the test binary is in a directory");
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut units = Vec::new();
    for (role, name) in [
        ("server", "keelson.service"),
        ("agent", "keelson-agent.service"),
    ] {
        let out = common::keelson(
            &[
                "unit".into(),
                role.into(),
                "--bin-dir".into(),
                bin_dir.into(),
            ],
            common::COMMAND_TIMEOUT,
        );
        assert!(out.status.success(), "keelson unit {role}: {out:?}");
        let unit = String::from_utf8(out.stdout).expect("a unit is text");
        assert!(
            unit.contains(&format!("ExecStart={}/keelson {role}\n", bin_dir.display())),
            "{unit}"
        );
        let path = dir.path().join(name);
        std::fs::write(&path, unit).expect("write the unit");
        units.push(path);
    }
    let out = common::run(
        Command::new("systemd-analyze").arg("verify").args(&units),
        common::COMMAND_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are warnings with exit code 0: any output is a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify ({}):\n{}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Receives datagrams and passes them on until `done`, then returns what came after.
/// A `READY=1` is checked against `/readyz` at once, at the URL its status names.
fn listen(socket: UnixDatagram, heard: mpsc::Sender<Heard>, done: &AtomicBool) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set a read timeout");
    let mut buf = vec![0u8; 4096];
    let mut rest = Vec::new();
    loop {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            // Nothing for a while: everything sent has arrived.
            Err(_) if done.load(Ordering::Relaxed) => return rest,
            Err(_) => continue,
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let readyz_at_ready = text.starts_with("READY=1").then(|| readyz(&text)).flatten();
        let message = Heard {
            text: text.clone(),
            at: Instant::now(),
            readyz_at_ready,
        };
        if heard.send(message).is_err() {
            rest.push(text);
        }
    }
}

/// `/readyz` at the URL in `STATUS=API serving at URL`, if there is one.
fn readyz(ready: &str) -> Option<String> {
    let url = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=API serving at "))?;
    let out = common::run(
        Command::new("curl").args([
            "--silent",
            "--insecure",
            "--max-time",
            "2",
            &format!("{url}/readyz"),
        ]),
        common::COMMAND_TIMEOUT,
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The next notification starting with `prefix`; every one received is added to `seen`.
fn next(
    heard: &mpsc::Receiver<Heard>,
    seen: &mut Vec<String>,
    prefix: &str,
    server: &Server,
) -> Heard {
    let deadline = Instant::now() + NOTIFY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match heard.recv_timeout(left) {
            Ok(m) => {
                seen.push(m.text.clone());
                if m.text.starts_with(prefix) {
                    return m;
                }
            }
            Err(_) => panic!(
                "no {prefix} within {NOTIFY_TIMEOUT:?}; heard {seen:?}\n{}",
                server.log_tail()
            ),
        }
    }
}

/// Whether `systemd-analyze` runs here (Debian's `systemd` package); under CI=true its
/// absence fails the test instead of skipping it.
fn systemd_analyze_available() -> bool {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    let msg = "systemd-analyze is not installed (apt-get install systemd)";
    common::skip::missing("units_pass_systemd_analyze_verify", msg);
    false
}
