//! What the pod tests share: the machine check, a local registry holding busybox as docker.io's
//! mirror, a server that runs containers with runc, and reading pods back.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::registry::Registry;
use super::{Options, Server};

/// The image every test runs: busybox from the local registry, reached as docker.io's mirror.
pub const IMAGE: &str = "busybox:1.36";

/// Whether this machine can run the tests: root, runc and the registry's tools.
pub fn available(test: &str) -> bool {
    let mut missing = Vec::new();
    if Command::new("runc").arg("--version").output().is_err() {
        missing.push("runc");
    }
    if !missing.is_empty() {
        let msg = format!("the pod tests need {}", missing.join(", "));
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("\n\n!!! {msg}\n!!! CI=true: refusing to skip `{test}`\n");
        }
        eprintln!("\n!!! SKIPPING `{test}`: {msg}\n");
        return false;
    }
    Registry::available(test)
}

/// A registry holding busybox, and a `registries.yaml` making it docker.io's mirror.
pub struct Images {
    /// Kept for its lifetime: the registry stops when this drops.
    _registry: Registry,
    config: PathBuf,
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
        Images {
            _registry: registry,
            config,
            _dir: dir,
        }
    }

    pub fn flags(&self) -> Vec<String> {
        vec![
            "--runtime=runc".into(),
            format!("--private-registry={}", self.config.display()),
        ]
    }
}

pub fn server_with_runtime(images: &Images) -> Server {
    let mut opts = Options::default();
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
