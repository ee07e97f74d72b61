//! The official Kubernetes Python client (`pip install kubernetes`) against a real server on
//! SQLite: `tests/python/client_roundtrip.py` creates, reads, patches, replaces, lists and
//! deletes a Deployment, a Service, a ConfigMap and a Job through the typed APIs, and its
//! watch, a list-then-watch loop and the client's informer must see every ConfigMap change.
//!
//! The client deserializes each answer into typed models, so a field of the wrong type or a
//! malformed reply fails the script. Without the `kubernetes` module the test fails unless
//! `KEELSON_ALLOW_SKIP=1` (`.ci/run` installs it).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Options, Server, run};

/// The script's own watchers give up after 60 s; the whole run is bounded above that.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);
/// The server's `--compact-interval`: long beside the script's steps (live watches never fall
/// that far behind), short enough to wait out.
const COMPACT_SECONDS: u64 = 2;

#[test]
fn the_official_python_client_round_trips_four_kinds_and_watches_every_change() {
    if !python_client_available(
        "the_official_python_client_round_trips_four_kinds_and_watches_every_change",
    ) {
        return;
    }
    // History goes quickly, so the script can resume a watch from a compacted
    // resourceVersion and see its informer loop relist on 410 Gone.
    let s =
        Server::start(Options::default().arg("--compact-interval", &format!("{COMPACT_SECONDS}s")));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_roundtrip.py");
    let out = run(
        Command::new("python3")
            .arg(&script)
            .arg(s.kubeconfig())
            .arg(COMPACT_SECONDS.to_string()),
        SCRIPT_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the Python client script failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status,
        s.log_tail()
    );
    assert!(
        stdout.contains("PASS: the Python client round trip"),
        "the script ended without its PASS line:\n{stdout}"
    );
}

/// Whether `python3 -c 'import kubernetes'` works: without it a failure unless
/// `KEELSON_ALLOW_SKIP=1`.
fn python_client_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    let msg = "the Python client test needs python3 with the `kubernetes` module (pip install kubernetes)";
    common::skip::missing(test, msg);
    false
}
