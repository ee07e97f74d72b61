//! Node-pressure eviction with real runc containers: a node past its `--eviction-hard`
//! threshold evicts a BestEffort pod before a Guaranteed one, never a mirror pod, reports each
//! as kubelet does (Failed, `Evicted`, its message, an event), and carries the pressure
//! condition and taint that keep new pods off it.
//!
//! Pressure is made deterministic with a threshold no machine meets
//! (`memory.available<1000Ti`), given to the server only on a restart: the pods run first, and
//! the restarted node re-adopts all of them before its first eviction pass, so the ranking —
//! not the order the pods arrived in — decides which goes first.
//!
//! Needs root, runc, Debian's docker-registry and busybox-static, as tests/pods.rs.

mod common;

use std::time::Duration;

use common::pods::{
    IMAGE, Images, apply, available, phase, pod, server_with_runtime, wait_running,
};
use common::{Server, wait_until};
use serde_json::{Value, json};

/// Longer than two eviction passes (10 s apart) and a server restart.
const EVICTION_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_node_under_memory_pressure_evicts_besteffort_first_and_keeps_new_pods_off() {
    if !available("a_node_under_memory_pressure_evicts_besteffort_first_and_keeps_new_pods_off") {
        return;
    }
    let images = Images::new();
    let mut s = server_with_runtime(&images);
    let sleeper = |name: &str, resources: Value, annotations: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "terminationGracePeriodSeconds": 30,
                "containers": [{"name": "c", "image": IMAGE,
                    "command": ["sh", "-c", "while true; do sleep 1; done"],
                    "resources": resources}],
            },
        })
        .to_string()
    };
    let guaranteed = json!({"requests": {"cpu": "50m", "memory": "64Mi"},
                            "limits": {"cpu": "50m", "memory": "64Mi"}});
    // Applied Guaranteed first: the order of arrival must not decide.
    apply(&s, &sleeper("guaranteed", guaranteed, json!({})));
    apply(&s, &sleeper("besteffort", json!({}), json!({})));
    apply(
        &s,
        &sleeper(
            "mirror",
            json!({}),
            json!({"kubernetes.io/config.mirror": "made-up-hash"}),
        ),
    );
    for name in ["guaranteed", "besteffort", "mirror"] {
        wait_running(&s, name);
    }
    assert_no_pressure(&s);

    s.stop();
    if let Err(e) = s.try_restart(&["--eviction-hard=memory.available<1000Ti"]) {
        panic!("the server did not restart: {}\n{}", e.status, e.log);
    }
    wait_until("the BestEffort pod to be evicted", EVICTION_LIMIT, || {
        phase(&s, "besteffort") == "Failed"
    });
    // One pod per pass: the Guaranteed one is still running when the BestEffort one is gone.
    let g = pod(&s, "guaranteed");
    assert_eq!(
        g["status"]["phase"], "Running",
        "the Guaranteed pod went with the BestEffort one: {}",
        g["status"]
    );
    assert_evicted(&s, "besteffort");
    wait_until("the Guaranteed pod to be evicted", EVICTION_LIMIT, || {
        phase(&s, "guaranteed") == "Failed"
    });
    assert_evicted(&s, "guaranteed");
    // The mirror pod is critical: the next pass finds nothing it may evict.
    wait_until(
        "an eviction pass with nothing left to evict",
        EVICTION_LIMIT,
        || s.log().contains("has no pod it may evict"),
    );
    assert_eq!(phase(&s, "mirror"), "Running");

    // The node says why, and the lifecycle controller taints it.
    wait_until("the memory-pressure taint", EVICTION_LIMIT, || {
        node_taints(&s).contains(&"node.kubernetes.io/memory-pressure".to_owned())
    });
    let node = s.node();
    let memory = condition(&node, "MemoryPressure");
    assert_eq!(memory["status"], "True", "{memory}");
    assert_eq!(memory["reason"], "KubeletHasInsufficientMemory", "{memory}");
    let taint = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["key"] == "node.kubernetes.io/memory-pressure")
        .cloned()
        .unwrap_or_default();
    assert_eq!(taint["effect"], "NoSchedule", "{taint}");

    // A new pod is not scheduled onto the node while the taint lasts.
    apply(
        &s,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late"},
            "spec": {"containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}]}})
        .to_string(),
    );
    wait_until(
        "the scheduler to refuse the new pod",
        EVICTION_LIMIT,
        || {
            condition(&pod(&s, "late"), "PodScheduled")["message"]
                .as_str()
                .is_some_and(|m| {
                    m.contains("untolerated taint {node.kubernetes.io/memory-pressure: }")
                })
        },
    );
    assert_eq!(phase(&s, "late"), "Pending");
    s.kubectl_ok(&["delete", "pod", "--all", "--wait=false"]);
}

/// Before the restart the node runs with kubelet's defaults and this machine is not short.
fn assert_no_pressure(s: &Server) {
    let node = s.node();
    assert_eq!(
        condition(&node, "MemoryPressure")["status"],
        "False",
        "{}",
        node["status"]
    );
}

fn assert_evicted(s: &Server, name: &str) {
    let p = pod(s, name);
    let status = &p["status"];
    assert_eq!(status["reason"], "Evicted", "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "The node was low on resource: memory. Threshold quantity: 1000Ti, available: "
        ),
        "{message:?}"
    );
    assert_eq!(
        condition(&p, "DisruptionTarget")["reason"],
        "TerminationByKubelet",
        "{status}"
    );
    // Killed at once (no grace period for a hard threshold), not restarted.
    let c = &status["containerStatuses"][0];
    assert_eq!(c["state"]["terminated"]["exitCode"], 137, "{c}");
    assert_eq!(c["restartCount"], 0, "{c}");
    let events = s.kubectl_json(&["get", "events", "-o", "json"]);
    let event = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["involvedObject"]["name"] == name && e["reason"] == "Evicted")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        event["type"], "Warning",
        "no Evicted event for {name}: {events}"
    );
    assert_eq!(event["message"], message, "{event}");
}

fn condition(obj: &Value, kind: &str) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or_default()
}

fn node_taints(s: &Server) -> Vec<String> {
    s.node()["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["key"].as_str().map(str::to_owned))
        .collect()
}
