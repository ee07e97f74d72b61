//! SIMULATION: hollow nodes. `keelson loadgen` runs real agent code for many nodes and plays
//! the node's part for pods bound to them (Running and Ready after a delay, Job pods exit), so
//! scheduling and the workload controllers can be checked end to end without containers.
//! Also: what a node certificate may write of pods (NodeRestriction), through the real API.

mod common;

use std::time::Duration;

use common::agent::Loadgen;
use common::{Options, Server, curl, wait_until};
use serde_json::Value;

const NODES: usize = 20;
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// 40 pods placed and reported by 20 hollow nodes with a 1 s start delay, in a debug build on
/// a shared machine.
const SETTLE: Duration = Duration::from_secs(60);

fn apply(s: &Server, name: &str, yaml: &str) {
    let path = s.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    s.kubectl_ok(&["apply", "--validate=false", "-f", path.to_str().unwrap()]);
}

fn pods(s: &Server, selector: &str) -> Vec<Value> {
    let list = s.kubectl_json(&["get", "pods", "-l", selector, "-o", "json"]);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn condition<'a>(pod: &'a Value, kind: &str) -> Option<&'a Value> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == kind)
}

fn running_and_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

fn phase(s: &Server, name: &str) -> String {
    let pod = s.kubectl_json(&["get", "pod", name, "-o", "json"]);
    pod["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
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

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 40
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: "busybox:1.36", resources: {requests: {cpu: 10m, memory: 16Mi}}}]
"#;

fn job_pod(name: &str, annotations: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: job}}, annotations: {{{annotations}}}}}
spec:
  restartPolicy: Never
  containers: [{{name: work, image: "busybox:1.36"}}]
"#
    )
}

#[test]
fn hollow_nodes_run_a_deployment_and_job_pods_to_completion() {
    // The server's own node is kept for control-plane pods, so every pod lands on a hollow node.
    let s =
        Server::start(Options::default().arg("--node-taint", "CriticalAddonsOnly=true:NoExecute"));
    let lg = Loadgen::start_with(
        &s.url(),
        &s.token(),
        NODES,
        "hollow",
        &["--pod-start-delay=1s", "--pod-run-time=2s"],
    );
    wait_until("every hollow node Ready", JOIN_TIMEOUT, || {
        ready_nodes(&s) == NODES + 1
    });

    apply(&s, "web", DEPLOYMENT);
    let took = wait_until("40 web pods Running and Ready", SETTLE, || {
        let p = pods(&s, "app=web");
        p.len() == 40 && p.iter().all(running_and_ready)
    });
    eprintln!("40 pods Running and Ready {took:?} after apply (hollow nodes, simulation)");
    wait_until("the Deployment 40/40 available", SETTLE, || {
        let d = s.kubectl_json(&["get", "deployment", "web", "-o", "json"]);
        d["status"]["availableReplicas"] == 40 && d["status"]["readyReplicas"] == 40
    });
    let row = s.kubectl_ok(&["get", "deployment", "web", "--no-headers"]);
    assert!(row.contains("40/40"), "{row}");

    // What a kubelet reports, with the simulation visible where a real node names images.
    let pod = &pods(&s, "app=web")[0];
    let st = &pod["status"];
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        let c = condition(pod, kind).unwrap_or_else(|| panic!("no {kind} condition: {st}"));
        assert_eq!(c["status"], "True", "{kind}: {st}");
        assert!(c["lastTransitionTime"].is_string(), "{kind}: {st}");
    }
    let pod_ip = st["podIP"].as_str().unwrap_or_default();
    assert!(
        pod_ip.starts_with("198.19."),
        "pod IP from 198.18.0.0/15: {st}"
    );
    assert!(
        st["hostIP"]
            .as_str()
            .unwrap_or_default()
            .starts_with("198.18."),
        "{st}"
    );
    assert!(st["startTime"].is_string(), "{st}");
    let c = &st["containerStatuses"][0];
    assert_eq!(c["name"], "c");
    assert_eq!(c["image"], "busybox:1.36");
    assert_eq!(c["imageID"], "hollow://busybox:1.36");
    assert_eq!(
        (&c["ready"], &c["started"], &c["restartCount"]),
        (&Value::Bool(true), &Value::Bool(true), &Value::from(0))
    );
    assert!(c["state"]["running"]["startedAt"].is_string(), "{st}");

    // Job pods: exit 0 by default, or the annotation's code.
    apply(&s, "done", &job_pod("done", ""));
    apply(
        &s,
        "broken",
        &job_pod("broken", r#""keelson.io/hollow-exit-code": "3""#),
    );
    wait_until("the job pods finish", SETTLE, || {
        phase(&s, "done") == "Succeeded" && phase(&s, "broken") == "Failed"
    });
    let broken = s.kubectl_json(&["get", "pod", "broken", "-o", "json"]);
    let term = &broken["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 3, "{}", broken["status"]);
    assert_eq!(term["reason"], "Error");
    assert_eq!(
        condition(&broken, "Ready").map(|c| c["reason"].clone()),
        Some(Value::from("PodCompleted"))
    );

    // Scaled down: deleted pods leave their nodes, which keep reporting the rest.
    s.kubectl_ok(&["scale", "deployment", "web", "--replicas=10"]);
    wait_until("10 web pods left, all Ready", SETTLE, || {
        let p = pods(&s, "app=web");
        p.len() == 10 && p.iter().all(running_and_ready)
    });

    // NodeRestriction through the API: a node certificate may write the status of its own
    // pods only.
    let pod = &pods(&s, "app=web")[0];
    let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let owner = pod["spec"]["nodeName"].as_str().unwrap().to_owned();
    let other = (0..NODES)
        .map(|i| format!("hollow-{i}"))
        .find(|n| *n != owner)
        .unwrap();
    let as_node = |node: &str, path: &str, body: &str| {
        let d = lg.credentials_dir(node);
        let args: Vec<String> = [
            "--cacert",
            d.join("server-ca.crt").to_str().unwrap(),
            "--cert",
            d.join("client-node.crt").to_str().unwrap(),
            "--key",
            d.join("client-node.key").to_str().unwrap(),
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/merge-patch+json",
            "--data-binary",
            body,
            &format!("{}/api/v1/namespaces/default/pods/{name}{path}", s.url()),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        curl(&args)
    };
    let status = r#"{"status":{"message":"hello from the node"}}"#;
    let r = as_node(&owner, "/status", status);
    assert_eq!(r.status, Some(200), "its own pod's status: {}", r.body);
    let r = as_node(&other, "/status", status);
    assert_eq!(r.status, Some(403), "another node's pod: {}", r.body);
    assert!(
        r.body.contains(&format!("node \\\"{other}\\\"")),
        "{}",
        r.body
    );
    let r = as_node(&owner, "", r#"{"spec":{"activeDeadlineSeconds":5}}"#);
    assert_eq!(
        r.status,
        Some(403),
        "a spec, even of its own pod: {}",
        r.body
    );
    drop(lg);
}
