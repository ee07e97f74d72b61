//! Placement and workload control with a real server, real agents and the real kubectl: the
//! taint-aware scheduler on a dedicated control plane, ReplicaSets, ReplicationControllers and
//! Deployments turning templates into pods, and rollouts. Nothing runs containers yet (the node runtime is its own
//! issue), so where a test needs pods to be Ready it plays the kubelet's part by writing pod
//! status as an admin, and says so.

mod common;

use std::time::Duration;

use common::agent::Agent;
use common::{Options, Server, wait_until};
use serde_json::Value;

const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(30);

fn apply(s: &Server, name: &str, yaml: &str) {
    let path = s.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    s.kubectl_ok(&["apply", "-f", path.to_str().unwrap()]);
}

fn pods(s: &Server, selector: &str) -> Vec<Value> {
    let list = s.kubectl_json(&["get", "pods", "-l", selector, "-o", "json"]);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn node_of(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or("")
}

/// Pods per node among those matching `selector` (unbound ones under "").
fn spread(s: &Server, selector: &str) -> std::collections::BTreeMap<String, usize> {
    let mut by_node = std::collections::BTreeMap::new();
    for p in pods(s, selector) {
        *by_node.entry(node_of(&p).to_owned()).or_default() += 1;
    }
    by_node
}

fn ready_nodes(s: &Server) -> usize {
    let nodes = s.kubectl_json(&["get", "nodes", "-o", "json"]);
    nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .count()
}

fn deployment(name: &str, replicas: u32, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: c, image: "busybox:1.36", resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}}}]
{extra_spec}
"#
    )
}

#[test]
fn a_dedicated_control_plane_gets_only_pods_that_tolerate_it() {
    let s =
        Server::start(Options::default().arg("--node-taint", "CriticalAddonsOnly=true:NoExecute"));
    let agents: Vec<Agent> = ["board-1", "board-2"]
        .iter()
        .map(|n| Agent::start(&s.url(), &s.token(), n, &[]))
        .collect();
    for a in &agents {
        a.wait_log("tunnel connected", JOIN_TIMEOUT);
    }
    wait_until("three Ready nodes", JOIN_TIMEOUT, || ready_nodes(&s) == 3);

    // Ordinary pods: only on the agents, spread evenly.
    apply(&s, "web", &deployment("web", 4, ""));
    wait_until("4 web pods bound", SETTLE, || {
        let p = pods(&s, "app=web");
        p.len() == 4 && p.iter().all(|p| !node_of(p).is_empty())
    });
    let by_node = spread(&s, "app=web");
    assert_eq!(
        by_node.get(s.node_name()),
        None,
        "no ordinary pod on the tainted server: {by_node:?}"
    );
    assert_eq!(by_node.get("board-1"), Some(&2), "{by_node:?}");
    assert_eq!(by_node.get("board-2"), Some(&2), "{by_node:?}");
    let deploy = s.kubectl_ok(&["get", "deployment", "web", "--no-headers"]);
    assert!(deploy.contains("0/4"), "no pod is Ready yet: {deploy}");

    // A workload that tolerates the taint may use the server too: one per node.
    apply(
        &s,
        "addon",
        &deployment(
            "addon",
            3,
            r#"      tolerations: [{key: CriticalAddonsOnly, operator: Exists}]
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: addon}}
            topologyKey: kubernetes.io/hostname"#,
        ),
    );
    wait_until("3 addon pods bound", SETTLE, || {
        let p = pods(&s, "app=addon");
        p.len() == 3 && p.iter().all(|p| !node_of(p).is_empty())
    });
    let by_node = spread(&s, "app=addon");
    assert_eq!(by_node.len(), 3, "one addon pod per node: {by_node:?}");
    assert_eq!(by_node.get(s.node_name()), Some(&1), "{by_node:?}");

    // DaemonSets: one pod per node that should run it, bound there by the scheduler.
    let daemonset = |name: &str, tolerations: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: c, image: "busybox:1.36"}}]
{tolerations}
"#
        )
    };
    apply(&s, "logs", &daemonset("logs", ""));
    apply(
        &s,
        "netd",
        &daemonset(
            "netd",
            "      tolerations: [{key: CriticalAddonsOnly, operator: Exists, effect: NoExecute}]",
        ),
    );
    wait_until("daemon pods bound", SETTLE, || {
        let bound = |sel: &str| {
            pods(&s, sel)
                .iter()
                .filter(|p| !node_of(p).is_empty())
                .count()
        };
        bound("app=logs") == 2 && bound("app=netd") == 3
    });
    let logs = spread(&s, "app=logs");
    assert_eq!(logs.get("board-1"), Some(&1), "{logs:?}");
    assert_eq!(logs.get("board-2"), Some(&1), "{logs:?}");
    let netd = spread(&s, "app=netd");
    assert_eq!(netd.len(), 3, "on every node, the server too: {netd:?}");
    let ds = s.kubectl_json(&["get", "daemonset", "netd", "-o", "json"]);
    assert_eq!(
        ds["status"]["desiredNumberScheduled"], 3,
        "{}",
        ds["status"]
    );

    // A pod put on the server by hand (no scheduler asked) is evicted by the NoExecute taint.
    apply(
        &s,
        "squatter",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: squatter}}
spec:
  nodeName: {}
  containers: [{{name: c, image: "busybox:1.36"}}]
"#,
            s.node_name()
        ),
    );
    wait_until("the squatter is evicted", SETTLE, || {
        !s.kubectl(&["get", "pod", "squatter"]).status.success()
    });

    // A pod that fits nowhere says why, in Kubernetes' words, where users look.
    apply(
        &s,
        "lost",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: lost}
spec:
  nodeSelector: {disk: ssd}
  containers: [{name: c, image: "busybox:1.36"}]
"#,
    );
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {CriticalAddonsOnly: true}, 2 node(s) didn't match Pod's node affinity/selector.";
    wait_until("the lost pod is marked unschedulable", SETTLE, || {
        s.kubectl_ok(&["describe", "pod", "lost"]).contains(want)
    });
    let described = s.kubectl_ok(&["describe", "pod", "lost"]);
    assert!(
        described.contains("FailedScheduling"),
        "the event is shown: {described}"
    );
    let pod = s.kubectl_json(&["get", "pod", "lost", "-o", "json"]);
    assert_eq!(node_of(&pod), "");

    // Labelling a board makes room: the waiting pod is placed without any timer.
    s.kubectl_ok(&["label", "node", "board-2", "disk=ssd"]);
    wait_until(
        "the lost pod is bound to board-2",
        Duration::from_secs(10),
        || node_of(&s.kubectl_json(&["get", "pod", "lost", "-o", "json"])) == "board-2",
    );

    // Scaling down removes pods; the deployment's ReplicaSet follows.
    s.kubectl_ok(&["scale", "deployment", "web", "--replicas=1"]);
    wait_until("web scaled to 1", SETTLE, || pods(&s, "app=web").len() == 1);
}

/// Plays the kubelet for every pod of `selector` that is bound: Running and Ready.
fn mark_ready(s: &Server, selector: &str) {
    for p in pods(s, selector) {
        let ready = p
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        if node_of(&p).is_empty() || ready {
            continue;
        }
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        // Ignore failures: the pod may have been deleted by the rollout meanwhile.
        let _ = s.kubectl(&[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#,
        ]);
    }
}

#[test]
fn a_rolling_update_keeps_enough_pods_available_and_undo_restores_the_template() {
    let s = Server::start(Options::default());
    wait_until("the server's node is Ready", JOIN_TIMEOUT, || {
        ready_nodes(&s) == 1
    });
    apply(
        &s,
        "web",
        &deployment(
            "web",
            4,
            "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}",
        ),
    );
    wait_until("4 web pods Ready", SETTLE, || {
        mark_ready(&s, "app=web");
        s.kubectl_ok(&["get", "deployment", "web", "--no-headers"])
            .contains("4/4")
    });
    let first_rs = s.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "name"]);

    s.kubectl_ok(&["set", "image", "deployment/web", "c=busybox:1.37"]);
    // Through the rollout, never fewer than replicas - maxUnavailable pods are Ready.
    let mut lowest = usize::MAX;
    wait_until("the rollout finishes", Duration::from_secs(90), || {
        mark_ready(&s, "app=web");
        let ready = pods(&s, "app=web")
            .iter()
            .filter(|p| {
                p.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .count();
        lowest = lowest.min(ready);
        let d = s.kubectl_json(&["get", "deployment", "web", "-o", "json"]);
        d["status"]["updatedReplicas"] == 4
            && d["status"]["availableReplicas"] == 4
            && d["status"]["replicas"] == 4
    });
    assert!(
        lowest >= 3,
        "ready pods fell to {lowest} (maxUnavailable 1 of 4)"
    );
    let status = s.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let images: Vec<String> = pods(&s, "app=web")
        .iter()
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(images.iter().all(|i| i == "busybox:1.37"), "{images:?}");
    let history = s.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );

    // Undo goes back to the first template, reusing its ReplicaSet.
    s.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    wait_until("the undo finishes", Duration::from_secs(90), || {
        mark_ready(&s, "app=web");
        let d = s.kubectl_json(&["get", "deployment", "web", "-o", "json"]);
        d["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox:1.36"
            && d["status"]["updatedReplicas"] == 4
            && d["status"]["availableReplicas"] == 4
            && d["status"]["replicas"] == 4
    });
    let sets = s.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "name"]);
    assert_eq!(
        sets.lines().count(),
        2,
        "undo reused the first ReplicaSet: {sets}"
    );
    let first = first_rs.trim();
    let rs = s.kubectl_json(&["get", first, "-o", "json"]);
    assert_eq!(rs["spec"]["replicas"], 4, "{first} runs again");
    assert_eq!(
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );

    // Paused, a new template waits; resumed, it rolls out.
    s.kubectl_ok(&["rollout", "pause", "deployment/web"]);
    s.kubectl_ok(&["set", "image", "deployment/web", "c=busybox:1.38"]);
    std::thread::sleep(Duration::from_secs(2));
    let sets = s.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "name"]);
    assert_eq!(sets.lines().count(), 2, "no rollout while paused: {sets}");
    let d = s.kubectl_json(&["get", "deployment", "web", "-o", "json"]);
    let progressing = d["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Progressing").cloned());
    assert_eq!(
        progressing.as_ref().map(|c| c["reason"].clone()),
        Some(serde_json::json!("DeploymentPaused")),
        "{}",
        d["status"]
    );
    s.kubectl_ok(&["rollout", "resume", "deployment/web"]);
    wait_until(
        "the resumed rollout finishes",
        Duration::from_secs(90),
        || {
            mark_ready(&s, "app=web");
            let d = s.kubectl_json(&["get", "deployment", "web", "-o", "json"]);
            d["status"]["updatedReplicas"] == 4
                && d["status"]["availableReplicas"] == 4
                && d["status"]["replicas"] == 4
                && pods(&s, "app=web")
                    .iter()
                    .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.38")
        },
    );
}

fn count(s: &Server, what: &str, selector: &str) -> usize {
    s.kubectl_ok(&["get", what, "-l", selector, "-o", "name"])
        .lines()
        .count()
}

#[test]
fn deleting_a_deployment_cascades_in_the_background_the_foreground_or_not_at_all() {
    let s = Server::start(Options::default());
    for name in ["bg", "fg", "keep"] {
        apply(&s, name, &deployment(name, 2, ""));
    }
    for name in ["bg", "fg", "keep"] {
        wait_until(&format!("2 {name} pods"), SETTLE, || {
            count(&s, "pods", &format!("app={name}")) == 2
        });
    }

    // kubectl's default: background. The Deployment goes at once, then its ReplicaSet and pods.
    s.kubectl_ok(&["delete", "deployment", "bg"]);
    wait_until("bg's ReplicaSet and pods are gone", SETTLE, || {
        count(&s, "rs", "app=bg") == 0 && count(&s, "pods", "app=bg") == 0
    });

    // Foreground: the Deployment stays, terminating, until its dependents are gone.
    s.kubectl_ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--wait=false",
    ]);
    wait_until("fg and everything under it are gone", SETTLE, || {
        !s.kubectl(&["get", "deployment", "fg"]).status.success()
            && count(&s, "rs", "app=fg") == 0
            && count(&s, "pods", "app=fg") == 0
    });

    // Orphan: the Deployment goes; its ReplicaSet and pods stay, owned by nobody.
    s.kubectl_ok(&["delete", "deployment", "keep", "--cascade=orphan"]);
    wait_until("keep's deployment is gone", SETTLE, || {
        !s.kubectl(&["get", "deployment", "keep"]).status.success()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&s, "rs", "app=keep"), 1, "the ReplicaSet stays");
    assert_eq!(count(&s, "pods", "app=keep"), 2, "its pods stay");
    let rs = s.kubectl_json(&["get", "rs", "-l", "app=keep", "-o", "json"]);
    assert!(
        rs["items"][0]["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "released: {}",
        rs["items"][0]["metadata"]
    );
    // Deleting the orphaned ReplicaSet takes its pods with it.
    s.kubectl_ok(&["delete", "rs", "-l", "app=keep"]);
    wait_until("keep's pods are gone", SETTLE, || {
        count(&s, "pods", "app=keep") == 0
    });
}

const REPLICATION_CONTROLLER: &str = r#"apiVersion: v1
kind: ReplicationController
metadata:
  name: old
spec:
  replicas: 3
  selector:
    app: old
  template:
    metadata:
      labels:
        app: old
    spec:
      containers:
      - name: web
        image: busybox:1.36
"#;

/// Names of the pods matching `selector`.
fn pod_names(s: &Server, selector: &str) -> Vec<String> {
    pods(s, selector)
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn a_replication_controller_keeps_its_pods_scales_and_takes_them_when_deleted() {
    let s = Server::start(Options::default());
    // A pod its label map does not select is left alone.
    s.kubectl_ok(&["run", "stray", "--image=busybox:1.36", "--labels=app=other"]);
    apply(&s, "old", REPLICATION_CONTROLLER);
    wait_until("3 pods of the ReplicationController", SETTLE, || {
        count(&s, "pods", "app=old") == 3
    });
    let uid = s.kubectl_ok(&["get", "rc", "old", "-o", "jsonpath={.metadata.uid}"]);
    for pod in pods(&s, "app=old") {
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicationController", "{owner}");
        assert_eq!(owner["apiVersion"], "v1", "{owner}");
        assert_eq!(owner["controller"], true, "{owner}");
        assert_eq!(owner["uid"].as_str(), Some(uid.as_str()), "{owner}");
    }
    wait_until("the status counts 3 pods", SETTLE, || {
        s.kubectl_ok(&["get", "rc", "old", "-o", "jsonpath={.status.replicas}"]) == "3"
    });
    let stray = s.kubectl_json(&["get", "pod", "stray", "-o", "json"]);
    assert!(
        stray["metadata"].get("ownerReferences").is_none(),
        "{}",
        stray["metadata"]
    );
    let out = s.kubectl_ok(&["get", "rc"]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "{out}"
    );
    let rows = common::table(&out);
    assert_eq!(common::cell(&rows[0], "DESIRED"), "3", "{out}");
    assert_eq!(common::cell(&rows[0], "CURRENT"), "3", "{out}");
    let wide = common::get_rows(&s, &["get", "rc", "old", "-o", "wide"]);
    assert_eq!(common::cell(&wide[0], "SELECTOR"), "app=old", "{wide:?}");

    // kubectl scale goes through the scale subresource.
    s.kubectl_ok(&["scale", "rc", "old", "--replicas=1"]);
    wait_until("1 pod left", SETTLE, || count(&s, "pods", "app=old") == 1);
    let scale = s.kubectl_json(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/replicationcontrollers/old/scale",
    ]);
    assert_eq!(scale["spec"]["replicas"], 1, "{scale}");
    assert_eq!(scale["status"]["selector"], "app=old", "{scale}");

    // A pod deleted by hand is replaced.
    let first = pod_names(&s, "app=old");
    s.kubectl_ok(&["delete", "pod", &first[0], "--wait=false"]);
    wait_until("a new pod replaces the deleted one", SETTLE, || {
        let now = pod_names(&s, "app=old");
        now.len() == 1 && now[0] != first[0]
    });

    // Orphan: the ReplicationController goes, its pod stays, released.
    s.kubectl_ok(&["delete", "rc", "old", "--cascade=orphan"]);
    wait_until("the pod is released", SETTLE, || {
        !s.kubectl(&["get", "rc", "old"]).status.success()
            && pods(&s, "app=old").iter().all(|p| {
                p["metadata"]["ownerReferences"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
            })
    });
    std::thread::sleep(Duration::from_secs(2));
    let kept = pod_names(&s, "app=old");
    assert_eq!(kept.len(), 1, "the pod stays: {kept:?}");

    // A new ReplicationController of 1 adopts the orphan instead of making a pod.
    let one = REPLICATION_CONTROLLER.replace("replicas: 3", "replicas: 1");
    apply(&s, "old", &one);
    let uid = s.kubectl_ok(&["get", "rc", "old", "-o", "jsonpath={.metadata.uid}"]);
    wait_until("the orphan is adopted", SETTLE, || {
        pods(&s, "app=old")
            .iter()
            .any(|p| p["metadata"]["ownerReferences"][0]["uid"].as_str() == Some(uid.as_str()))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pod_names(&s, "app=old"), kept, "adopted, not replaced");

    // Deleting it (background, kubectl's default) takes its pods.
    s.kubectl_ok(&["delete", "rc", "old"]);
    wait_until("the pods are gone", SETTLE, || {
        count(&s, "pods", "app=old") == 0
    });
}

#[test]
fn pods_of_a_dead_board_are_replaced_elsewhere_after_their_toleration() {
    let s = Server::start(
        Options::default()
            .arg("--node-taint", "CriticalAddonsOnly=true:NoExecute")
            .arg("--node-monitor-grace-period", "4s"),
    );
    let mut agents: Vec<Agent> = ["board-1", "board-2"]
        .iter()
        .map(|n| Agent::start(&s.url(), &s.token(), n, &[]))
        .collect();
    for a in &agents {
        a.wait_log("tunnel connected", JOIN_TIMEOUT);
    }
    wait_until("three Ready nodes", JOIN_TIMEOUT, || ready_nodes(&s) == 3);
    // Tolerate an unreachable node for 2 s instead of the default 300 s.
    apply(
        &s,
        "web",
        &deployment(
            "web",
            4,
            r#"      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}"#,
        ),
    );
    wait_until("4 web pods bound", SETTLE, || {
        let p = pods(&s, "app=web");
        p.len() == 4 && p.iter().all(|p| !node_of(p).is_empty())
    });
    let before = spread(&s, "app=web");
    assert_eq!(before.get("board-1"), Some(&2), "{before:?}");

    agents[0].kill();
    let took = wait_until("all web pods on board-2", Duration::from_secs(60), || {
        let p = pods(&s, "app=web");
        p.len() == 4 && p.iter().all(|p| node_of(p) == "board-2")
    });
    // Grace 4 s + toleration 2 s, plus the moves themselves.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let events = s.kubectl_ok(&["get", "events"]);
    assert!(events.contains("TaintManagerEviction"), "{events}");
}

#[test]
fn a_service_lists_the_pods_it_selects_as_endpoints_and_slices() {
    let s = Server::start(Options::default());
    apply(
        &s,
        "web",
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: "busybox:1.36", ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#,
    );
    wait_until("2 web pods bound", SETTLE, || {
        let p = pods(&s, "app=web");
        p.len() == 2 && p.iter().all(|p| !node_of(p).is_empty())
    });
    // Play the kubelet: an IP for each, only the first Ready.
    for (i, p) in pods(&s, "app=web").iter().enumerate() {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": format!("198.18.7.{}", i + 10),
            "conditions": [{"type": "Ready", "status": if i == 0 { "True" } else { "False" }}]
        }});
        s.kubectl_ok(&[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
    }
    wait_until("the endpoints list both pods", SETTLE, || {
        let e = s.kubectl_json(&["get", "endpoints", "web", "-o", "json"]);
        e["subsets"][0]["addresses"][0]["ip"] == "198.18.7.10"
            && e["subsets"][0]["notReadyAddresses"][0]["ip"] == "198.18.7.11"
    });
    let e = s.kubectl_json(&["get", "endpoints", "web", "-o", "json"]);
    assert_eq!(
        e["subsets"][0]["ports"][0]["port"], 8080,
        "named port resolved: {e}"
    );
    let row = s.kubectl_ok(&["get", "endpoints", "web", "--no-headers"]);
    assert!(row.contains("198.18.7.10:8080"), "{row}");
    let slices = s.kubectl_json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "json",
    ]);
    let slice = &slices["items"][0];
    assert_eq!(slice["ports"][0]["port"], 8080, "{slice}");
    assert_eq!(
        slice["endpoints"].as_array().map(Vec::len),
        Some(2),
        "{slice}"
    );

    // Deleting the Service takes its Endpoints and slices with it.
    s.kubectl_ok(&["delete", "service", "web"]);
    wait_until("endpoints and slices gone", SETTLE, || {
        !s.kubectl(&["get", "endpoints", "web"]).status.success()
            && s.kubectl_ok(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "name",
            ])
            .trim()
            .is_empty()
    });
}

/// Plays the kubelet in the background: every bound pod is reported Running and Ready.
struct Kubelet {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kubelet {
    fn start(s: &Server) -> Kubelet {
        use std::process::Command;
        let kubeconfig = s.kubeconfig();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let kubectl = |args: &[&str]| {
                Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(args)
                    .output()
            };
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(out) = kubectl(&["get", "pods", "-o", "json"])
                    && let Ok(list) = serde_json::from_slice::<Value>(&out.stdout)
                {
                    for p in list["items"].as_array().into_iter().flatten() {
                        let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        });
                        if node_of(p).is_empty() || ready {
                            continue;
                        }
                        let name = p["metadata"]["name"].as_str().unwrap_or_default();
                        let _ = kubectl(&[
                            "patch",
                            "pod",
                            name,
                            "--subresource=status",
                            "--type=merge",
                            "-p",
                            r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#,
                        ]);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Kubelet {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ready_count(s: &Server, selector: &str) -> usize {
    pods(s, selector)
        .iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .count()
}

#[test]
fn drain_moves_pods_off_a_board_without_breaking_their_disruption_budget() {
    let s =
        Server::start(Options::default().arg("--node-taint", "CriticalAddonsOnly=true:NoExecute"));
    let agents: Vec<Agent> = ["board-1", "board-2"]
        .iter()
        .map(|n| Agent::start(&s.url(), &s.token(), n, &[]))
        .collect();
    for a in &agents {
        a.wait_log("tunnel connected", JOIN_TIMEOUT);
    }
    wait_until("three Ready nodes", JOIN_TIMEOUT, || ready_nodes(&s) == 3);
    let _kubelet = Kubelet::start(&s);
    apply(&s, "web", &deployment("web", 4, ""));
    apply(
        &s,
        "budget",
        r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 3
  selector: {matchLabels: {app: web}}
"#,
    );
    wait_until("4 web pods Ready and the budget allows 1", SETTLE, || {
        let b = s.kubectl_json(&["get", "pdb", "web", "-o", "json"]);
        ready_count(&s, "app=web") == 4 && b["status"]["disruptionsAllowed"] == 1
    });
    let row = s.kubectl_ok(&["get", "pdb", "web", "--no-headers"]);
    assert!(row.contains(" 3 ") && row.contains(" 1 "), "{row}");

    // Drain board-1 while watching availability from the side.
    let mut drain = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args(["drain", "board-1", "--ignore-daemonsets", "--timeout=90s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kubectl drain");
    let mut lowest = usize::MAX;
    let status = loop {
        if let Some(status) = drain.try_wait().expect("poll kubectl drain") {
            break status;
        }
        lowest = lowest.min(ready_count(&s, "app=web"));
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = drain.wait_with_output().expect("kubectl drain output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.success(),
        "drain failed: {}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        lowest >= 3,
        "ready pods fell to {lowest} under a budget of 3"
    );
    assert!(
        stderr.contains("disruption budget"),
        "the second eviction had to wait for the budget: {stderr}"
    );
    // The last evicted pod's replacement may still be on its way to the scheduler when
    // kubectl drain returns.
    wait_until("all 4 web pods on board-2", SETTLE, || {
        spread(&s, "app=web").get("board-2") == Some(&4)
    });
    let node = s.kubectl_json(&["get", "node", "board-1", "-o", "json"]);
    assert_eq!(node["spec"]["unschedulable"], true, "drain cordons");
    s.kubectl_ok(&["uncordon", "board-1"]);
    let node = s.kubectl_json(&["get", "node", "board-1", "-o", "json"]);
    assert!(node["spec"]["unschedulable"].is_null() || node["spec"]["unschedulable"] == false);
}

#[test]
fn a_statefulset_makes_named_pods_in_order_and_updates_them_from_the_top() {
    let s = Server::start(Options::default());
    wait_until("the server's node is Ready", JOIN_TIMEOUT, || {
        ready_nodes(&s) == 1
    });
    // No kubelet yet: OrderedReady stops at db-0 until it is Ready.
    apply(
        &s,
        "db",
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: c, image: "busybox:1.36"}]
"#,
    );
    wait_until("db-0 exists", SETTLE, || pods(&s, "app=db").len() == 1);
    std::thread::sleep(Duration::from_secs(1));
    let names: Vec<String> = pods(&s, "app=db")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(names, ["db-0"], "db-1 waits for db-0 to be Ready");

    let _kubelet = Kubelet::start(&s);
    wait_until("db-0, db-1, db-2 Ready", SETTLE, || {
        ready_count(&s, "app=db") == 3
    });
    let pod = s.kubectl_json(&["get", "pod", "db-2", "-o", "json"]);
    assert_eq!(pod["spec"]["hostname"], "db-2");
    assert_eq!(pod["spec"]["subdomain"], "db");

    s.kubectl_ok(&["set", "image", "statefulset/db", "c=busybox:1.37"]);
    let status = s.kubectl_ok(&["rollout", "status", "statefulset/db", "--timeout=60s"]);
    assert!(
        status.contains("complete") || status.contains("rolling update complete"),
        "{status}"
    );
    for p in pods(&s, "app=db") {
        assert_eq!(
            p["spec"]["containers"][0]["image"], "busybox:1.37",
            "{}",
            p["metadata"]["name"]
        );
    }

    s.kubectl_ok(&["scale", "statefulset/db", "--replicas=1"]);
    wait_until("only db-0 is left", SETTLE, || {
        let names: Vec<String> = pods(&s, "app=db")
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect();
        names == ["db-0"]
    });

    // Each ordinal gets its own claim from the template, made before its pod, which mounts it
    // (tests/storage.rs runs such a set on real nodes).
    apply(
        &s,
        "claims",
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: store}
spec:
  serviceName: store
  replicas: 1
  selector: {matchLabels: {app: store}}
  template:
    metadata: {labels: {app: store}}
    spec:
      containers: [{name: c, image: "busybox:1.36"}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#,
    );
    wait_until("store-0 with its claim", SETTLE, || {
        pods(&s, "app=store").len() == 1
    });
    let claim = s.kubectl_json(&["get", "pvc", "data-store-0", "-o", "json"]);
    assert_eq!(claim["metadata"]["labels"]["app"], "store", "{claim}");
    assert_eq!(claim["spec"]["storageClassName"], "local-path", "{claim}");
    let pod = s.kubectl_json(&["get", "pod", "store-0", "-o", "json"]);
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == "data"
                && v["persistentVolumeClaim"]["claimName"] == "data-store-0"),
        "{volumes:?}"
    );
}

#[test]
fn events_expire_after_the_event_ttl() {
    let s = Server::start(Options::default().arg("--event-ttl", "3s"));
    apply(&s, "web", &deployment("web", 2, ""));
    let events = || {
        s.kubectl_json(&["get", "events", "-o", "json"])["items"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_until("the controllers' events", SETTLE, || events() > 0);
    let took = wait_until("the events expired", SETTLE, || events() == 0);
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// Plays the kubelet for one pod: Running and Ready from now on (the transition time in
/// whole seconds, as Kubernetes writes it, so a pod is never seen Ready for longer than it is).
fn mark_ready_now(s: &Server, name: &str) {
    let now = time::OffsetDateTime::now_utc();
    let since = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format a timestamp");
    // Ignore failures: the pod may have been deleted meanwhile.
    let _ = s.kubectl(&[
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"True","lastTransitionTime":"{since}"}}]}}}}"#
        ),
    ]);
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Seconds since a Ready pod's `lastTransitionTime`.
fn ready_for(pod: &Value) -> f64 {
    let since = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .expect("a Ready pod has a transition time");
    (time::OffsetDateTime::now_utc() - since).as_seconds_f64()
}

#[test]
fn a_daemonset_with_max_surge_keeps_every_node_served_through_an_update() {
    let s = Server::start(Options::default());
    let agents: Vec<Agent> = ["board-1", "board-2"]
        .iter()
        .map(|n| Agent::start(&s.url(), &s.token(), n, &[]))
        .collect();
    for a in &agents {
        a.wait_log("tunnel connected", JOIN_TIMEOUT);
    }
    wait_until("three Ready nodes", JOIN_TIMEOUT, || ready_nodes(&s) == 3);
    let daemonset = |rolling: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: surge}}
spec:
  selector: {{matchLabels: {{app: surge}}}}
  minReadySeconds: 5
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {rolling}}}
  template:
    metadata: {{labels: {{app: surge}}}}
    spec:
      containers: [{{name: c, image: "busybox:1.36"}}]
"#
        )
    };

    // Kubernetes' rule: exactly one of maxSurge and maxUnavailable is not zero.
    let path = s.dir().join("zero.yaml");
    std::fs::write(&path, daemonset("{maxSurge: 0, maxUnavailable: 0}")).unwrap();
    let err = common::refused(&s, &["apply", "-f", path.to_str().unwrap()]);
    assert!(
        err.contains(
            "spec.updateStrategy.rollingUpdate.maxUnavailable: Required value: cannot be 0 when maxSurge is 0"
        ),
        "{err}"
    );
    std::fs::write(&path, daemonset("{maxSurge: 1}")).unwrap();
    let err = common::refused(&s, &["apply", "-f", path.to_str().unwrap()]);
    assert!(
        err.contains("spec.updateStrategy.rollingUpdate.maxSurge: Invalid value: 1: may not be set when maxUnavailable is non-zero"),
        "{err}"
    );

    apply(&s, "surge", &daemonset("{maxSurge: 1, maxUnavailable: 0}"));
    wait_until("a Ready daemon pod on each node", SETTLE, || {
        for p in pods(&s, "app=surge") {
            if !is_ready(&p) && !node_of(&p).is_empty() {
                mark_ready_now(&s, p["metadata"]["name"].as_str().unwrap_or_default());
            }
        }
        let p = pods(&s, "app=surge");
        p.len() == 3 && p.iter().all(is_ready)
    });
    wait_until("all 3 available after minReadySeconds", SETTLE, || {
        s.kubectl_json(&["get", "daemonset", "surge", "-o", "json"])["status"]["numberAvailable"]
            == 3
    });

    s.kubectl_ok(&["set", "image", "daemonset/surge", "c=busybox:1.37"]);
    let is_new = |p: &Value| p["spec"]["containers"][0]["image"] == "busybox:1.37";
    let mut most_doubled = 0;
    let mut replaced = std::collections::BTreeSet::new();
    wait_until("the update finishes", Duration::from_secs(120), || {
        let live: Vec<Value> = pods(&s, "app=surge")
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let mut by_node: std::collections::BTreeMap<String, Vec<&Value>> = Default::default();
        for p in &live {
            by_node.entry(node_of(p).to_owned()).or_default().push(p);
        }
        for node in [s.node_name(), "board-1", "board-2"] {
            let here = by_node.get(node).cloned().unwrap_or_default();
            assert!(
                here.iter().any(|p| is_ready(p)),
                "{node} has no Ready daemon pod during the update: {by_node:#?}"
            );
            // An old pod went: its successor had been available (minReadySeconds 5).
            if let [only] = here.as_slice()
                && is_new(only)
                && replaced.insert(node.to_owned())
            {
                let age = ready_for(only);
                assert!(
                    age >= 4.0,
                    "{node}'s old pod went when its new one had been Ready {age:.1} s"
                );
            }
        }
        let doubled = by_node.values().filter(|h| h.len() == 2).count();
        assert!(
            doubled <= 1 && by_node.values().all(|h| h.len() <= 2),
            "maxSurge 1, yet: {by_node:#?}"
        );
        most_doubled = most_doubled.max(doubled);
        // One new pod at a time becomes Ready, so each surge is seen.
        if let Some(p) = live.iter().find(|p| !is_ready(p) && !node_of(p).is_empty()) {
            mark_ready_now(&s, p["metadata"]["name"].as_str().unwrap_or_default());
        }
        live.len() == 3 && live.iter().all(|p| is_new(p) && is_ready(p))
    });
    assert_eq!(most_doubled, 1, "the new pods started beside the old ones");
    s.kubectl_ok(&["rollout", "status", "daemonset/surge", "--timeout=30s"]);
}
