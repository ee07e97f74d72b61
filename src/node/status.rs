//! A pod's status as Kubernetes' kubelet writes it, built from a runtime's [`PodState`].
//!
//! Only what a node knows goes in: phase, the Initialized / ContainersReady / Ready
//! conditions, addresses, start time and container states. `PodScheduled` is the scheduler's
//! (set when the pod is bound); the server merges conditions by type, so it is kept.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::pods::{ContainerState, Phase, PodState};

/// The JSON of `status` for a pod in `state` on a node at `host_ip`.
pub fn pod_status(state: &PodState, host_ip: Option<IpAddr>) -> Value {
    let finished = matches!(state.phase, Phase::Succeeded | Phase::Failed);
    let (ready_status, ready_reason) = match (state.ready, finished) {
        (true, _) => ("True", None),
        (false, true) => ("False", Some("PodCompleted")),
        (false, false) => ("False", Some("ContainersNotReady")),
    };
    let condition = |kind: &str, status: &str, since: &str, reason: Option<&str>| {
        // The server merges conditions by type (a strategic merge, as for kubelet's patches):
        // a reason that no longer applies must be sent as null, or the old one would stay
        // ("True" with reason ContainersNotReady).
        json!({
            "type": kind, "status": status,
            "lastProbeTime": null, "lastTransitionTime": since,
            "reason": reason, "message": null,
        })
    };
    let mut status = json!({
        "phase": phase(state.phase),
        "startTime": state.start_time,
        "conditions": [
            if state.initialized {
                condition("Initialized", "True", &state.start_time, None)
            } else {
                condition("Initialized", "False", &state.start_time, Some("ContainersNotInitialized"))
            },
            condition("ContainersReady", ready_status, &state.ready_since, ready_reason),
            condition("Ready", ready_status, &state.ready_since, ready_reason),
        ],
        "containerStatuses": state.containers.iter().map(container_status).collect::<Vec<_>>(),
    });
    if !state.init_containers.is_empty() {
        status["initContainerStatuses"] =
            state.init_containers.iter().map(container_status).collect();
    }
    if let Some(ip) = host_ip {
        status["hostIP"] = json!(ip.to_string());
        status["hostIPs"] = json!([{"ip": ip.to_string()}]);
    }
    if let Some(ended) = &state.ended_by_node {
        // kubelet's eviction manager: the reason and message, and a DisruptionTarget
        // condition saying the kubelet ended the pod.
        status["reason"] = json!(ended.reason);
        status["message"] = json!(ended.message);
        if let Some(conditions) = status["conditions"].as_array_mut() {
            conditions.push(json!({
                "type": "DisruptionTarget", "status": "True",
                "reason": "TerminationByKubelet", "message": ended.message,
                "lastProbeTime": null, "lastTransitionTime": state.ready_since,
            }));
        }
    }
    if let Some(ip) = state.pod_ips.first() {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = state
            .pod_ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
    }
    status
}

fn container_status(c: &super::pods::ContainerStatus) -> Value {
    let mut s = json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id,
        "containerID": c.container_id,
        "ready": c.ready,
        "started": matches!(c.state, ContainerState::Running { .. }),
        "restartCount": c.restart_count,
        "state": container_state(&c.state),
        "lastState": c.last_state.as_ref().map(container_state).unwrap_or(json!({})),
    });
    if c.container_id.is_empty() {
        // Never started: kubelet leaves these out rather than write empty strings.
        s.as_object_mut().map(|o| o.remove("containerID"));
    }
    if c.image_id.is_empty() {
        s["imageID"] = json!("");
    }
    s
}

fn phase(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
    }
}

fn container_state(s: &ContainerState) -> Value {
    match s {
        ContainerState::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({ "waiting": w })
        }
        ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        ContainerState::Terminated {
            exit_code,
            reason,
            message,
            started_at,
            finished_at,
        } => {
            let mut t = json!({
                "exitCode": exit_code, "reason": reason,
                "startedAt": started_at, "finishedAt": finished_at,
            });
            if !message.is_empty() {
                t["message"] = json!(message);
            }
            json!({ "terminated": t })
        }
    }
}

/// Now, as Kubernetes writes times (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::pods::ContainerStatus;

    #[test]
    fn a_running_pod_reads_as_kubelet_writes_it() {
        let state = PodState {
            phase: Phase::Running,
            pod_ips: vec!["198.19.0.7".parse().unwrap()],
            start_time: "2026-01-01T00:00:00Z".into(),
            ready: true,
            ready_since: "2026-01-01T00:00:01Z".into(),
            containers: vec![ContainerStatus {
                name: "c".into(),
                image: "busybox:1.36".into(),
                image_id: "hollow://busybox:1.36".into(),
                container_id: "hollow://u/c".into(),
                ready: true,
                restart_count: 0,
                state: ContainerState::Running {
                    started_at: "2026-01-01T00:00:01Z".into(),
                },
                last_state: None,
            }],
            init_containers: vec![],
            initialized: true,
            ended_by_node: None,
        };
        let s = pod_status(&state, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["hostIP"], "198.18.0.1");
        assert_eq!(s["podIP"], "198.19.0.7");
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:01Z");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["started"], true);
        assert_eq!(c["state"]["running"]["startedAt"], "2026-01-01T00:00:01Z");
        assert_eq!(c["restartCount"], 0);
    }

    /// What the server stores after a pod went from not ready to ready: the statuses are
    /// applied as strategic merges (conditions merge by type), as `tunnel::pods` does.
    #[test]
    fn a_ready_condition_loses_the_reason_it_had_while_not_ready() {
        use crate::apiserver::patch;
        let mut state = PodState {
            phase: Phase::Running,
            pod_ips: vec![],
            start_time: "2026-01-01T00:00:00Z".into(),
            ready: false,
            ready_since: "2026-01-01T00:00:00Z".into(),
            containers: vec![],
            init_containers: vec![],
            initialized: true,
            ended_by_node: None,
        };
        let pod = serde_json::json!({"metadata": {"name": "p"}, "status": {}});
        let before = serde_json::json!({ "status": pod_status(&state, None) });
        let stored = patch::apply(patch::Kind::Strategic, &pod, &before).unwrap();
        state.ready = true;
        let after = serde_json::json!({ "status": pod_status(&state, None) });
        let stored = patch::apply(patch::Kind::Strategic, &stored, &after).unwrap();
        for c in stored["status"]["conditions"].as_array().unwrap() {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                assert_eq!(c["status"], "True", "{c}");
                assert!(c.get("reason").is_none_or(Value::is_null), "{c}");
            }
        }
    }
}
