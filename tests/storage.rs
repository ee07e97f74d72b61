//! Storage on the board: the built-in local-path provisioner under a StatefulSet with real runc
//! pods on a server and an agent, static volumes bound the Kubernetes way, and bad input.
//!
//! The StatefulSet test needs root, runc, Debian's docker-registry and busybox-static
//! (`.ci/run` installs them); without them it says so loudly and is skipped, or fails under
//! CI=true. The others are control-plane only.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::agent::Agent;
use common::pods::{IMAGE, Images, apply, available, server_with_runtime};
use common::{Options, Server, cell, get_rows, wait_until};
use serde_json::{Value, json};

const SET: &str = "db";
const LIMIT: Duration = Duration::from_secs(90);

/// A real agent named `name` pulling from the test registry, once its Node is Ready.
fn agent_with_images(s: &Server, images: &Images, name: &str) -> Agent {
    let flags = images.flags();
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = Agent::start(&s.url(), &s.token(), name, &extra);
    wait_ready(s, name);
    agent
}

fn wait_ready(s: &Server, node: &str) {
    wait_until(&format!("node {node} Ready"), LIMIT, || {
        let n = s.kubectl(&["get", "node", node, "-o", "json"]);
        n.status.success()
            && serde_json::from_slice::<Value>(&n.stdout).is_ok_and(|n| {
                n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
    });
}

/// A two-replica StatefulSet, one replica per node (required anti-affinity), each writing a
/// fresh random token into its volume the first time it starts and printing what it finds.
fn statefulset(replicas: u32) -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": SET},
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": SET}},
            "template": {
                "metadata": {"labels": {"app": SET}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": SET}}, "topologyKey": "kubernetes.io/hostname"}
                    ]}},
                    "containers": [{
                        "name": "c", "image": IMAGE,
                        "command": ["sh", "-c",
                            "[ -f /data/who ] || echo \"$(hostname) $RANDOM$RANDOM\" > /data/who; cat /data/who; sleep 3600"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
            }],
        },
    })
    .to_string()
}

fn json_of(s: &Server, args: &[&str]) -> Value {
    s.kubectl_json(args)
}

/// Pod name → (node, what it wrote), once every replica runs.
fn replicas(s: &Server, count: usize) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    wait_until(&format!("{count} running replicas"), LIMIT, || {
        let pods = json_of(
            s,
            &["get", "pods", "-l", &format!("app={SET}"), "-o", "json"],
        );
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let running: Vec<&Value> = items
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .collect();
        if running.len() != count || items.len() != count {
            return false;
        }
        out = running
            .iter()
            .map(|p| {
                let name = p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let node = p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                (name, node, String::new())
            })
            .collect();
        true
    });
    for (name, _, who) in &mut out {
        wait_until(&format!("{name} wrote its token"), LIMIT, || {
            let got = s.kubectl(&["exec", name.as_str(), "--", "sh", "-c", "cat /data/who"]);
            *who = String::from_utf8_lossy(&got.stdout).trim().to_owned();
            if !got.status.success() {
                eprintln!(
                    "exec {name}: {}",
                    String::from_utf8_lossy(&got.stderr).trim()
                );
            }
            got.status.success() && !who.is_empty()
        });
        assert!(
            who.starts_with(name.as_str()),
            "{name} found another replica's data: {who}"
        );
    }
    out.sort();
    out
}

/// The volume directories under a node's storage path.
fn volume_dirs(storage: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(storage)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("pvc-"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
fn a_statefulset_keeps_each_replicas_data_on_its_node() {
    let test = "a_statefulset_keeps_each_replicas_data_on_its_node";
    if !available(test) {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    let server_node = s.node_name().to_owned();
    wait_ready(&s, &server_node);
    let mut agent = agent_with_images(&s, &images, "pi-storage");
    let (server_storage, agent_storage) = (
        s.data_dir().join("storage"),
        agent.data_dir().join("storage"),
    );
    let storage_of = |node: &str| -> PathBuf {
        if node == server_node {
            server_storage.clone()
        } else {
            agent_storage.clone()
        }
    };

    // The default class is K3s's.
    let classes = get_rows(&s, &["get", "storageclass"]);
    assert_eq!(
        cell(&classes[0], "NAME"),
        "local-path (default)",
        "{classes:?}"
    );
    assert_eq!(cell(&classes[0], "PROVISIONER"), "rancher.io/local-path");
    assert_eq!(
        cell(&classes[0], "VOLUMEBINDINGMODE"),
        "WaitForFirstConsumer"
    );

    // A claim nobody uses waits for its first consumer.
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "idle"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}})
        .to_string(),
    );

    apply(&s, &statefulset(2));
    let first = replicas(&s, 2);
    let nodes: Vec<&str> = first.iter().map(|(_, n, _)| n.as_str()).collect();
    assert!(
        nodes.contains(&server_node.as_str()) && nodes.contains(&"pi-storage"),
        "{first:?}"
    );
    let claims = get_rows(&s, &["get", "pvc"]);
    for ordinal in 0..2 {
        let row = claims
            .iter()
            .find(|r| cell(r, "NAME") == format!("data-{SET}-{ordinal}"))
            .unwrap_or_else(|| panic!("claim of ordinal {ordinal}: {claims:?}"));
        assert_eq!(cell(row, "STATUS"), "Bound", "{row:?}");
        // "ACCESS MODES" splits in two header words: its value lands under "ACCESS".
        assert_eq!(cell(row, "ACCESS"), "RWO", "{row:?}");
    }
    let idle = json_of(&s, &["get", "pvc", "idle", "-o", "json"]);
    assert_eq!(idle["status"]["phase"], "Pending", "{idle}");
    let events = s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=idle",
    ]);
    assert!(events.contains("WaitForFirstConsumer"), "{events}");
    // Each node holds exactly its replica's directory, with the replica's data in it.
    for (name, node, who) in &first {
        let dirs = volume_dirs(&storage_of(node));
        assert_eq!(dirs.len(), 1, "{node}: {dirs:?}");
        assert!(
            dirs[0].ends_with(&format!("_default_data-{name}")),
            "{dirs:?}"
        );
        let on_disk = std::fs::read_to_string(storage_of(node).join(&dirs[0]).join("who"))
            .unwrap_or_default();
        assert_eq!(on_disk.trim(), who, "{node}");
    }

    // Deleted pods come back on their volumes' nodes and find their own data.
    s.kubectl_ok(&[
        "delete",
        "pod",
        &format!("{SET}-0"),
        &format!("{SET}-1"),
        "--wait=false",
    ]);
    wait_until("the old pods gone", LIMIT, || {
        let pods = json_of(
            &s,
            &["get", "pods", "-l", &format!("app={SET}"), "-o", "json"],
        );
        pods["items"].as_array().is_some_and(|p| {
            p.iter()
                .all(|p| p["metadata"]["deletionTimestamp"].is_null())
        })
    });
    assert_eq!(
        replicas(&s, 2),
        first,
        "same nodes, same data after the pods were deleted"
    );

    // Scaling to zero keeps the claims; scaling back finds the data.
    s.kubectl_ok(&["scale", "statefulset", SET, "--replicas=0"]);
    wait_until("no replicas", LIMIT, || {
        json_of(
            &s,
            &["get", "pods", "-l", &format!("app={SET}"), "-o", "json"],
        )["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    let kept = json_of(&s, &["get", "pvc", "-o", "json"]);
    assert_eq!(
        kept["items"]
            .as_array()
            .map(|c| c.iter().filter(|c| c["status"]["phase"] == "Bound").count()),
        Some(2),
        "{kept}"
    );
    s.kubectl_ok(&["scale", "statefulset", SET, "--replicas=2"]);
    assert_eq!(
        replicas(&s, 2),
        first,
        "same nodes, same data after scaling 0 → 2"
    );

    // The agent holding a replica's volume dies: its replica waits for that node, with
    // Kubernetes' message, and runs there again with its data when the node is back.
    let on_agent = first
        .iter()
        .find(|(_, n, _)| n == "pi-storage")
        .expect("a replica on the agent");
    agent.kill();
    wait_until("the agent's node not Ready", LIMIT, || {
        let n = json_of(&s, &["get", "node", "pi-storage", "-o", "json"]);
        n["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] != "True")
        })
    });
    s.kubectl_ok(&["delete", "pod", &on_agent.0, "--force", "--grace-period=0"]);
    let mut message = String::new();
    wait_until("the replica pending on its volume's node", LIMIT, || {
        let p = json_of(&s, &["get", "pod", &on_agent.0, "-o", "json"]);
        message = p["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_owned();
        message.contains("node(s) had volume node affinity conflict")
    });
    assert!(message.starts_with("0/2 nodes are available:"), "{message}");
    agent.spawn();
    wait_ready(&s, "pi-storage");
    assert_eq!(
        replicas(&s, 2),
        first,
        "the replica is back on its node with its data"
    );

    // Scale to zero and delete the claims: the volumes and their directories go.
    s.kubectl_ok(&["scale", "statefulset", SET, "--replicas=0"]);
    s.kubectl_ok(&[
        "delete",
        "pvc",
        &format!("data-{SET}-0"),
        &format!("data-{SET}-1"),
        "--wait=false",
    ]);
    wait_until("the provisioned volumes deleted", LIMIT, || {
        json_of(&s, &["get", "pv", "-o", "json"])["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    for node in [server_node.as_str(), "pi-storage"] {
        assert_eq!(
            volume_dirs(&storage_of(node)),
            Vec::<String>::new(),
            "{node}"
        );
    }
    drop(agent);
}

#[test]
fn a_static_volume_binds_the_claim_that_fits_and_is_kept_when_released() {
    let s = Server::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "shelf", "labels": {"tier": "fast"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "manual", "hostPath": {"path": dir.path().to_string_lossy()}}})
        .to_string(),
    );
    let claim = |name: &str, size: &str, selector: Value| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                "resources": {"requests": {"storage": size}}, "selector": selector}})
        .to_string()
    };
    apply(&s, &claim("too-big", "5Gi", json!(null)));
    apply(
        &s,
        &claim(
            "wrong-tier",
            "1Gi",
            json!({"matchLabels": {"tier": "slow"}}),
        ),
    );
    apply(
        &s,
        &claim("fits", "500Mi", json!({"matchLabels": {"tier": "fast"}})),
    );
    wait_until("the fitting claim bound", LIMIT, || {
        json_of(&s, &["get", "pvc", "fits", "-o", "json"])["status"]["phase"] == "Bound"
    });
    // kubectl's table (multi-word headers: read as text).
    let table = s.kubectl_ok(&["get", "pv"]);
    let row = table.lines().nth(1).unwrap_or_default().to_owned();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..7],
        [
            "shelf",
            "1Gi",
            "RWO",
            "Retain",
            "Bound",
            "default/fits",
            "manual"
        ],
        "{table}"
    );
    let fits = json_of(&s, &["get", "pvc", "fits", "-o", "json"]);
    assert_eq!(fits["spec"]["volumeName"], "shelf");
    assert_eq!(
        fits["status"]["capacity"]["storage"], "1Gi",
        "a claim gets the volume's size"
    );
    for pending in ["too-big", "wrong-tier"] {
        let c = json_of(&s, &["get", "pvc", pending, "-o", "json"]);
        assert_eq!(c["status"]["phase"], "Pending", "{c}");
    }
    // Released, not deleted: Retain keeps the volume and its data.
    s.kubectl_ok(&["delete", "pvc", "fits"]);
    wait_until("the volume released", LIMIT, || {
        json_of(&s, &["get", "pv", "shelf", "-o", "json"])["status"]["phase"] == "Released"
    });
    assert!(dir.path().exists());
}

#[test]
fn claims_of_unknown_classes_and_provisioners_wait_and_say_why() {
    let s = Server::start(Options::default());
    apply(
        &s,
        &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "nas"}, "provisioner": "example.com/nas"})
        .to_string(),
    );
    for (name, class) in [("ghost", "no-such-class"), ("remote", "nas")] {
        apply(
            &s,
            &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                    "resources": {"requests": {"storage": "1Gi"}}}})
            .to_string(),
        );
    }
    for (name, reason, text) in [
        (
            "ghost",
            "ProvisioningFailed",
            "storageclass.storage.k8s.io \"no-such-class\" not found",
        ),
        (
            "remote",
            "ExternalProvisioning",
            "external provisioner 'example.com/nas'",
        ),
    ] {
        let mut events = String::new();
        wait_until(&format!("an event for {name}"), LIMIT, || {
            events = s.kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={name}"),
            ]);
            events.contains(reason) && events.contains(text)
        });
        let c = json_of(&s, &["get", "pvc", name, "-o", "json"]);
        assert_eq!(c["status"]["phase"], "Pending", "{c}");
    }
    // No volume was made for either.
    assert_eq!(
        json_of(&s, &["get", "pv", "-o", "json"])["items"],
        json!([])
    );
}

#[test]
fn disabling_local_storage_removes_the_default_class() {
    let s = Server::start(Options::default().flag("--disable=coredns,local-storage"));
    let classes = json_of(&s, &["get", "storageclass", "-o", "json"]);
    assert_eq!(classes["items"], json!([]), "{classes}");
}

#[test]
fn a_storage_path_through_a_symlink_or_a_volume_outside_it_is_refused() {
    let test = "a_storage_path_through_a_symlink_or_a_volume_outside_it_is_refused";
    if !available(test) {
        return;
    }
    let images = Images::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let real = dir.path().join("real");
    let link = dir.path().join("link");
    std::fs::create_dir(&real).expect("mkdir");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let outside = dir.path().join("outside");
    let mut opts = Options::default().flag("--flannel-backend=none");
    for f in images.flags() {
        opts = opts.flag(&f);
    }
    let s = Server::start(opts.arg("--default-local-storage-path", &link.to_string_lossy()));
    wait_ready(&s, s.node_name());

    // A claim provisioned on this node: the node refuses the symlinked storage path.
    let pod = |name: &str, claim: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
                "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", "sleep 3600"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}})
        .to_string()
    };
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "linked"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}})
        .to_string(),
    );
    apply(&s, &pod("linked", "linked"));

    // A volume claiming to be local-path's, pointing outside the storage path.
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "escape", "annotations": {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"}},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                "hostPath": {"path": outside.to_string_lossy(), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": "default", "name": "escape"}}})
        .to_string(),
    );
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "escape"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": "escape",
                "resources": {"requests": {"storage": "1Mi"}}}})
        .to_string(),
    );
    apply(&s, &pod("escape", "escape"));

    for (name, says) in [
        ("linked", "symlink"),
        ("escape", "--default-local-storage-path"),
    ] {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let events = s.kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={name}"),
            ]);
            if events.contains("FailedMount") && events.contains(says) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} not refused with {says:?}:\n{events}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let p = json_of(&s, &["get", "pod", name, "-o", "json"]);
        assert_ne!(p["status"]["phase"], "Running", "{p}");
    }
    // Nothing was made through the link or outside the storage path.
    assert_eq!(std::fs::read_dir(&real).map(|d| d.count()).unwrap_or(0), 0);
    assert!(!outside.exists(), "{} was created", outside.display());
}
