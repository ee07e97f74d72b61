//! The real kubectl against a fresh server: what a user sees from the everyday commands.

mod common;

use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::{Options, Server, cell, table};
use serde_json::{Value, json};

#[test]
fn get_nodes_shows_the_node_ready_as_control_plane() {
    let s = Server::start(Options::default());
    let out = s.kubectl(&["get", "nodes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl get nodes failed: {stderr}");
    assert_eq!(stderr, "", "kubectl get nodes complained");

    let rows = table(&stdout);
    assert_eq!(rows.len(), 1, "expected one node:\n{stdout}");
    assert_eq!(cell(&rows[0], "NAME"), s.node_name());
    assert_eq!(cell(&rows[0], "STATUS"), "Ready", "\n{stdout}");
    assert_eq!(cell(&rows[0], "ROLES"), "control-plane", "\n{stdout}");
}

#[test]
fn node_carries_standard_labels_and_those_from_flags_and_the_flag_taint() {
    let s = Server::start(
        Options::default()
            .arg("--node-label", "topology.kubernetes.io/zone=shelf-2")
            .arg("--node-taint", "CriticalAddonsOnly=true:NoExecute"),
    );
    let node = s.node();
    let labels = &node["metadata"]["labels"];
    for (key, value) in [
        ("kubernetes.io/hostname", s.node_name()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", go_arch()),
        ("node-role.kubernetes.io/control-plane", "true"),
        ("topology.kubernetes.io/zone", "shelf-2"),
    ] {
        assert_eq!(labels[key], json!(value), "label {key} in {labels:#}");
    }
    assert_eq!(
        node["spec"]["taints"],
        json!([{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}]),
    );
}

#[test]
fn label_taint_and_cordon_change_the_node_and_reach_a_watching_kubectl() {
    let s = Server::start(Options::default());
    let name = s.node_name();
    let watch = s.watch(&["nodes"]);

    s.kubectl_ok(&["label", "node", name, "shelf=top"]);
    assert_eq!(s.node()["metadata"]["labels"]["shelf"], "top");
    watch.next(
        |n| n["metadata"]["labels"]["shelf"] == "top",
        "the new label",
    );

    s.kubectl_ok(&["taint", "node", name, "dedicated=storage:NoSchedule"]);
    let has_taint = |n: &Value| {
        n["spec"]["taints"].as_array().is_some_and(|ts| {
            ts.contains(&json!({"key": "dedicated", "value": "storage", "effect": "NoSchedule"}))
        })
    };
    assert!(
        has_taint(&s.node()),
        "taint missing: {:#}",
        s.node()["spec"]
    );
    watch.next(has_taint, "the new taint");

    s.kubectl_ok(&["cordon", name]);
    assert_eq!(s.node()["spec"]["unschedulable"], true);
    watch.next(|n| n["spec"]["unschedulable"] == true, "the node cordoned");

    assert_eq!(watch.stop(), "", "kubectl --watch complained");
}

#[test]
fn forty_concurrent_label_commands_all_land() {
    const LABELS: usize = 40;
    let s = Server::start(Options::default());
    // Fill the discovery cache once, so the concurrent commands only race on the node.
    s.kubectl_ok(&["get", "nodes"]);

    let failures: Vec<String> = thread::scope(|scope| {
        let s = &s;
        let running: Vec<_> = (0..LABELS)
            .map(|i| {
                scope.spawn(move || {
                    let label = format!("key-{i}=v");
                    (
                        label.clone(),
                        s.kubectl(&["label", "node", s.node_name(), &label]),
                    )
                })
            })
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("kubectl thread"))
            .filter(|(_, out)| !out.status.success())
            .map(|(label, out)| format!("{label}: {}", String::from_utf8_lossy(&out.stderr)))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "failed label commands:\n{}",
        failures.join("\n")
    );

    let labels = &s.node()["metadata"]["labels"];
    let missing: Vec<String> = (0..LABELS)
        .map(|i| format!("key-{i}"))
        .filter(|k| labels[k] != "v")
        .collect();
    assert!(missing.is_empty(), "labels lost: {missing:?}");
}

#[test]
fn wide_output_fills_internal_ip_os_image_and_kernel_version() {
    let s = Server::start(Options::default());
    let out = s.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    let rows = table(&out);
    assert_eq!(rows.len(), 1, "expected one node:\n{out}");
    let row = &rows[0];
    let ip = cell(row, "INTERNAL-IP");
    assert!(ip.parse::<IpAddr>().is_ok(), "INTERNAL-IP {ip:?}:\n{out}");
    for column in ["OS-IMAGE", "KERNEL-VERSION"] {
        let value = cell(row, column);
        assert!(
            !value.is_empty() && !value.starts_with('<'),
            "{column} is {value:?}:\n{out}"
        );
    }
}

#[test]
fn system_namespaces_exist_and_kube_system_cannot_be_deleted() {
    let s = Server::start(Options::default());
    let list = s.kubectl_json(&["get", "namespaces", "-o", "json"]);
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|ns| ns["metadata"]["name"].as_str())
        .collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&ns), "{ns} missing from {names:?}");
    }

    let out = s.kubectl(&["delete", "namespace", "kube-system"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "deleting kube-system succeeded");
    assert!(stderr.contains("Forbidden"), "{stderr}");
    s.kubectl_ok(&["get", "namespace", "kube-system"]);
}

#[test]
fn kubectl_create_namespace_then_delete_it() {
    let s = Server::start(Options::default());
    let created = s.kubectl(&["create", "namespace", "scratch"]);
    assert!(
        created.status.success(),
        "kubectl create namespace failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert_eq!(
        s.kubectl_json(&["get", "namespace", "scratch", "-o", "json"])["status"]["phase"],
        "Active"
    );

    s.kubectl_ok(&["delete", "namespace", "scratch"]);
    let gone = s.kubectl(&["get", "namespace", "scratch"]);
    assert!(!gone.status.success(), "the namespace is still there");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
}

#[test]
fn describe_node_prints_the_node_without_errors() {
    let s =
        Server::start(Options::default().arg("--node-taint", "CriticalAddonsOnly=true:NoExecute"));
    let out = s.kubectl(&["describe", "node", s.node_name()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl describe failed: {stderr}");
    assert_eq!(stderr, "", "kubectl describe complained");
    for expected in [
        format!("Name:               {}", s.node_name()),
        "Roles:              control-plane".into(),
        "Taints:             CriticalAddonsOnly=true:NoExecute".into(),
        "Ready ".into(),
    ] {
        assert!(
            stdout.contains(&expected),
            "{expected:?} missing:\n{stdout}"
        );
    }
}

#[test]
fn keelson_kubectl_runs_kubectl_with_the_written_kubeconfig() {
    let s = Server::start(Options::default());
    let out = common::run(
        common::keelson_command()
            .args(["kubectl", "get", "nodes", "-o", "name"])
            .env("KEELSON_KUBECONFIG_OUTPUT", s.kubeconfig())
            .env_remove("KUBECONFIG")
            .env("HOME", s.dir().join("home"))
            .env("KUBECACHEDIR", s.dir().join("kube-cache")),
        common::COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "keelson kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("node/{}", s.node_name())
    );
}

#[test]
fn leases_in_kube_system_show_the_controllers_holder() {
    let s = Server::start(Options::default());
    // The Lease object is written just after the election, which may trail readiness.
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = s.kubectl_ok(&["get", "leases", "-n", "kube-system"]);
        if out.contains("keelson-controllers") || Instant::now() > deadline {
            break out;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let rows = table(&out);
    let row = rows
        .iter()
        .find(|r| cell(r, "NAME") == "keelson-controllers")
        .unwrap_or_else(|| panic!("no keelson-controllers lease:\n{out}"));
    assert_eq!(
        rows.first()
            .map(|r| r.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()),
        Some(vec!["NAME", "HOLDER", "AGE"]),
        "\n{out}"
    );
    // The identity is `<node-name>-<pid>`, and the pid is this test's server.
    let holder = cell(row, "HOLDER");
    let pid: u32 = holder
        .strip_prefix(&format!("{}-", s.node_name()))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("HOLDER {holder:?} is not <node-name>-<pid>:\n{out}"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let data_dir = s.data_dir().display().to_string();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&data_dir),
        "process {pid} is not the server of {data_dir}"
    );

    let lease = s.kubectl_json(&[
        "get",
        "lease",
        "keelson-controllers",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]);
    assert_eq!(lease["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(lease["kind"], "Lease");
    let spec = &lease["spec"];
    assert_eq!(spec["holderIdentity"], holder, "{spec:#}");
    assert_eq!(spec["leaseDurationSeconds"], 15, "{spec:#}");
    assert_eq!(spec["leaseTransitions"], 0, "{spec:#}");
    for field in ["acquireTime", "renewTime"] {
        let t = spec[field].as_str().unwrap_or_default();
        // MicroTime: 2026-11-26T20:15:02.928230Z
        assert!(
            t.len() == 27 && t.ends_with('Z') && t.get(19..20) == Some("."),
            "{field} {t:?} is not a MicroTime"
        );
    }

    let yaml = s.kubectl_ok(&[
        "get",
        "lease",
        "keelson-controllers",
        "-n",
        "kube-system",
        "-o",
        "yaml",
    ]);
    assert!(
        yaml.contains(&format!("holderIdentity: {holder}")),
        "\n{yaml}"
    );
    // Listed across all namespaces too, with the namespace kubectl adds.
    let all = s.kubectl_ok(&["get", "leases", "-A"]);
    assert!(
        table(&all)
            .iter()
            .any(|r| cell(r, "NAMESPACE") == "kube-system"
                && cell(r, "NAME") == "keelson-controllers"
                && cell(r, "HOLDER") == holder),
        "\n{all}"
    );
}

#[test]
fn kubectl_creates_edits_and_deletes_a_lease_of_its_own() {
    let s = Server::start(Options::default());
    let manifest = s.dir().join("lease.json");
    std::fs::write(
        &manifest,
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "mine", "namespace": "default"},
            "spec": {"holderIdentity": "me", "leaseDurationSeconds": 30}
        })
        .to_string(),
    )
    .expect("write the manifest");
    // No OpenAPI document is served, so kubectl's client-side validation is off.
    s.kubectl_ok(&["create", "-f", manifest.to_str().expect("utf-8 path")]);
    s.kubectl_ok(&[
        "patch",
        "lease",
        "mine",
        "--type=merge",
        "-p",
        r#"{"spec":{"holderIdentity":"you"}}"#,
    ]);
    let lease = s.kubectl_json(&["get", "lease", "mine", "-o", "json"]);
    assert_eq!(lease["spec"]["holderIdentity"], "you");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 30);

    s.kubectl_ok(&["delete", "lease", "mine"]);
    let gone = s.kubectl(&["get", "lease", "mine"]);
    assert!(!gone.status.success(), "the lease is still there");
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        stderr.contains(r#"leases.coordination.k8s.io "mine" not found"#),
        "{stderr}"
    );
}

/// `kubernetes.io/arch` for the machine running the tests, in Go's spelling.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}
