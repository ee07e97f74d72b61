use serde_json::{Value, json};

use super::*;

/// A Ready node with 4 cpus, 8Gi, 110 pods and no labels but its hostname.
fn node(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// An unbound pod with one container asking for `cpu` and `memory` (None: no request).
fn pod(name: &str, cpu: Option<&str>, memory: Option<&str>) -> Value {
    let mut requests = serde_json::Map::new();
    if let Some(c) = cpu {
        requests.insert("cpu".into(), json!(c));
    }
    if let Some(m) = memory {
        requests.insert("memory".into(), json!(m));
    }
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {}},
        "spec": {
            "schedulerName": "default-scheduler",
            "containers": [{"name": "c", "image": "x", "resources": {"requests": requests}}],
        },
        "status": {"phase": "Pending"},
    })
}

fn bound(mut p: Value, node: &str) -> Value {
    p["spec"]["nodeName"] = json!(node);
    p["status"]["phase"] = json!("Running");
    p
}

fn with(mut v: Value, pointer: &str, value: Value) -> Value {
    // Creates the path's objects as needed.
    let mut at = &mut v;
    for part in pointer.trim_start_matches('/').split('/') {
        at = match part.parse::<usize>() {
            Ok(i) if at.is_array() => &mut at[i],
            _ => &mut at[part],
        };
    }
    *at = value;
    v
}

const NO_PODS: [&Value; 0] = [];
const NO_NODES: [&Value; 0] = [];

enum Want {
    Node(&'static str),
    Message(&'static str),
}

struct Case {
    name: &'static str,
    nodes: Vec<Value>,
    pods: Vec<Value>,
    pod: Value,
    want: Want,
}

fn check(cases: Vec<Case>) {
    for c in cases {
        let snap = Snapshot::new(&c.nodes, &c.pods);
        let got = snap.schedule(&c.pod);
        match c.want {
            Want::Node(n) => assert_eq!(got.as_deref(), Ok(n), "{}", c.name),
            Want::Message(m) => match got {
                Err(e) => assert_eq!(e.message(), m, "{}", c.name),
                Ok(n) => panic!("{}: scheduled to {n}, wanted {m:?}", c.name),
            },
        }
    }
}

#[test]
fn each_filter_refuses_with_kubernetes_words() {
    let cases = vec![
        Case {
            name: "cordoned node",
            nodes: vec![
                with(node("a"), "/spec/unschedulable", json!(true)),
                node("b"),
            ],
            pods: vec![],
            pod: pod("p", None, None),
            want: Want::Node("b"),
        },
        Case {
            name: "cordoned node, message",
            nodes: vec![with(node("a"), "/spec/unschedulable", json!(true))],
            pods: vec![],
            pod: pod("p", None, None),
            want: Want::Message("0/1 nodes are available: 1 node(s) were unschedulable."),
        },
        Case {
            name: "cordoned node tolerated",
            nodes: vec![with(node("a"), "/spec/unschedulable", json!(true))],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/tolerations",
                json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]),
            ),
            want: Want::Node("a"),
        },
        Case {
            name: "not ready node is tainted not-ready",
            nodes: vec![
                with(
                    node("a"),
                    "/status/conditions",
                    json!([{"type": "Ready", "status": "False"}]),
                ),
                with(
                    node("b"),
                    "/status/conditions",
                    json!([{"type": "Ready", "status": "Unknown"}]),
                ),
                with(node("c"), "/status/conditions", json!([])),
            ],
            pods: vec![],
            pod: pod("p", None, None),
            want: Want::Message(
                "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 2 node(s) had untolerated taint {node.kubernetes.io/not-ready: }.",
            ),
        },
        Case {
            name: "NoSchedule and NoExecute taints, untolerated",
            nodes: vec![
                with(
                    node("a"),
                    "/spec/taints",
                    json!([{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}]),
                ),
                with(
                    node("b"),
                    "/spec/taints",
                    json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
                ),
            ],
            pods: vec![],
            pod: pod("p", None, None),
            want: Want::Message(
                "0/2 nodes are available: 1 node(s) had untolerated taint {CriticalAddonsOnly: true}, 1 node(s) had untolerated taint {dedicated: gpu}.",
            ),
        },
        Case {
            name: "Equal toleration",
            nodes: vec![
                with(
                    node("a"),
                    "/spec/taints",
                    json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
                ),
                with(
                    node("b"),
                    "/spec/taints",
                    json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
                ),
            ],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/tolerations",
                json!([{"key": "dedicated", "operator": "Equal", "value": "db"}]),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "empty key with Exists tolerates everything",
            nodes: vec![with(
                node("a"),
                "/spec/taints",
                json!([{"key": "x", "effect": "NoSchedule"}, {"key": "y", "value": "z", "effect": "NoExecute"}]),
            )],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/tolerations",
                json!([{"operator": "Exists"}]),
            ),
            want: Want::Node("a"),
        },
        Case {
            name: "toleration for another effect does not tolerate",
            nodes: vec![with(
                node("a"),
                "/spec/taints",
                json!([{"key": "x", "effect": "NoExecute"}]),
            )],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/tolerations",
                json!([{"key": "x", "operator": "Exists", "effect": "NoSchedule"}]),
            ),
            want: Want::Message("0/1 nodes are available: 1 node(s) had untolerated taint {x: }."),
        },
        Case {
            name: "nodeSelector",
            nodes: vec![
                node("a"),
                with(node("b"), "/metadata/labels/disk", json!("ssd")),
            ],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/nodeSelector",
                json!({"disk": "ssd"}),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "required node affinity: terms ORed, expressions ANDed",
            nodes: vec![
                with(
                    node("a"),
                    "/metadata/labels",
                    json!({"zone": "z1", "gen": "3"}),
                ),
                with(
                    node("b"),
                    "/metadata/labels",
                    json!({"zone": "z2", "gen": "5"}),
                ),
                with(node("c"), "/metadata/labels", json!({"zone": "z3"})),
            ],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!({"nodeSelectorTerms": [
                    {"matchExpressions": [
                        {"key": "zone", "operator": "In", "values": ["z1", "z2"]},
                        {"key": "gen", "operator": "Gt", "values": ["4"]},
                    ]},
                    {"matchExpressions": [{"key": "nothing", "operator": "Exists"}]},
                ]}),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "NotIn, DoesNotExist, Lt",
            nodes: vec![
                with(
                    node("a"),
                    "/metadata/labels",
                    json!({"zone": "z1", "gen": "3"}),
                ),
                with(
                    node("b"),
                    "/metadata/labels",
                    json!({"zone": "z2", "gen": "3", "spot": "true"}),
                ),
                with(
                    node("c"),
                    "/metadata/labels",
                    json!({"zone": "z3", "gen": "9"}),
                ),
            ],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!({"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "zone", "operator": "NotIn", "values": ["z1"]},
                    {"key": "spot", "operator": "DoesNotExist"},
                    {"key": "gen", "operator": "Lt", "values": ["10"]},
                ]}]}),
            ),
            want: Want::Node("c"),
        },
        Case {
            name: "node affinity message",
            nodes: vec![node("a"), node("b")],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/nodeSelector",
                json!({"disk": "ssd"}),
            ),
            want: Want::Message(
                "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
            ),
        },
        Case {
            name: "required node affinity without terms matches no node",
            nodes: vec![node("a")],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!({"nodeSelectorTerms": []}),
            ),
            want: Want::Message(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
            ),
        },
        Case {
            name: "matchFields metadata.name (a DaemonSet pod)",
            nodes: vec![node("a"), node("b"), node("c")],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!({"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["b"]},
                ]}]}),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "matchFields metadata.name, node full",
            nodes: vec![
                node("a"),
                with(node("b"), "/status/allocatable/pods", json!("0")),
            ],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!({"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["b"]},
                ]}]}),
            ),
            want: Want::Message(
                "0/2 nodes are available: 1 Too many pods, 1 node(s) didn't satisfy plugin(s) [NodeAffinity].",
            ),
        },
        Case {
            name: "cpu",
            nodes: vec![
                node("a"),
                with(node("b"), "/status/allocatable/cpu", json!("8")),
            ],
            pods: vec![],
            pod: pod("p", Some("6"), None),
            want: Want::Node("b"),
        },
        Case {
            name: "cpu and memory short, every resource named",
            nodes: vec![node("a"), node("b")],
            pods: vec![bound(pod("x", Some("3500m"), None), "b")],
            pod: pod("p", Some("1"), Some("9Gi")),
            want: Want::Message(
                "0/2 nodes are available: 1 Insufficient cpu, 2 Insufficient memory.",
            ),
        },
        Case {
            name: "ephemeral storage",
            nodes: vec![node("a")],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/containers/0/resources/requests/ephemeral-storage",
                json!("200Gi"),
            ),
            want: Want::Message("0/1 nodes are available: 1 Insufficient ephemeral-storage."),
        },
        Case {
            name: "allocatable falls back to capacity",
            nodes: vec![with(
                node("a"),
                "/status/allocatable",
                json!({"pods": "110"}),
            )],
            pods: vec![],
            pod: pod("p", Some("3"), Some("1Gi")),
            want: Want::Node("a"),
        },
        Case {
            name: "init containers count as their max",
            nodes: vec![node("a")],
            pods: vec![],
            pod: with(
                pod("p", Some("1"), None),
                "/spec/initContainers",
                json!([
                    {"name": "i1", "image": "x", "resources": {"requests": {"cpu": "2"}}},
                    {"name": "i2", "image": "x", "resources": {"requests": {"cpu": "5"}}},
                ]),
            ),
            want: Want::Message("0/1 nodes are available: 1 Insufficient cpu."),
        },
        Case {
            name: "a pod without requests still counts towards pods",
            nodes: vec![with(node("a"), "/status/allocatable/pods", json!("2"))],
            pods: vec![
                bound(pod("x", None, None), "a"),
                bound(pod("y", None, None), "a"),
                // Finished pods hold nothing.
                with(
                    bound(pod("z", None, None), "a"),
                    "/status/phase",
                    json!("Succeeded"),
                ),
            ],
            pod: pod("p", None, None),
            want: Want::Message("0/1 nodes are available: 1 Too many pods."),
        },
        Case {
            name: "a pod being deleted still holds its resources; one on an unknown node holds none",
            nodes: vec![node("a")],
            pods: vec![
                with(
                    bound(pod("x", Some("3"), None), "a"),
                    "/metadata/deletionTimestamp",
                    json!("2026-01-01T00:00:00Z"),
                ),
                bound(pod("y", Some("3"), None), "gone"),
            ],
            pod: pod("p", Some("2"), None),
            want: Want::Message("0/1 nodes are available: 1 Insufficient cpu."),
        },
        Case {
            name: "sidecars add to the containers",
            nodes: vec![node("a")],
            pods: vec![],
            pod: with(
                pod("p", Some("3"), None),
                "/spec/initContainers",
                json!([{"name": "side", "image": "x", "restartPolicy": "Always", "resources": {"requests": {"cpu": "1500m"}}}]),
            ),
            want: Want::Message("0/1 nodes are available: 1 Insufficient cpu."),
        },
        Case {
            name: "plain init containers do not add to the containers",
            nodes: vec![node("a")],
            pods: vec![],
            pod: with(
                pod("p", Some("3"), None),
                "/spec/initContainers",
                json!([{"name": "init", "image": "x", "resources": {"requests": {"cpu": "3900m"}}}]),
            ),
            want: Want::Node("a"),
        },
        Case {
            name: "host ports",
            nodes: vec![node("a"), node("b")],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/spec/containers/0/ports",
                    json!([{"containerPort": 80, "hostPort": 8080}]),
                ),
                "a",
            )],
            pod: with(
                pod("p", None, None),
                "/spec/containers/0/ports",
                json!([{"containerPort": 80, "hostPort": 8080, "protocol": "TCP"}]),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "host ports: other protocol or other address is free",
            nodes: vec![node("a")],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/spec/containers/0/ports",
                    json!([{"containerPort": 53, "hostPort": 53, "protocol": "UDP"}, {"containerPort": 1, "hostPort": 9000, "hostIP": "10.0.0.1"}]),
                ),
                "a",
            )],
            pod: with(
                pod("p", None, None),
                "/spec/containers/0/ports",
                json!([{"containerPort": 53, "hostPort": 53}, {"containerPort": 1, "hostPort": 9000, "hostIP": "10.0.0.2"}]),
            ),
            want: Want::Node("a"),
        },
        Case {
            name: "host ports message",
            nodes: vec![node("a")],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/spec/containers/0/ports",
                    json!([{"containerPort": 1, "hostPort": 9000, "hostIP": "10.0.0.1"}]),
                ),
                "a",
            )],
            pod: with(
                pod("p", None, None),
                "/spec/containers/0/ports",
                json!([{"containerPort": 1, "hostPort": 9000}]),
            ),
            want: Want::Message(
                "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports.",
            ),
        },
        Case {
            name: "required anti-affinity on hostname",
            nodes: vec![node("a"), node("b")],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/metadata/labels",
                    json!({"app": "db"}),
                ),
                "a",
            )],
            pod: with(
                with(
                    pod("p", None, None),
                    "/metadata/labels",
                    json!({"app": "db"}),
                ),
                "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!([{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "required anti-affinity message",
            nodes: vec![node("a")],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/metadata/labels",
                    json!({"app": "db"}),
                ),
                "a",
            )],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!([{"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}, "topologyKey": "kubernetes.io/hostname"}]),
            ),
            want: Want::Message(
                "0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules.",
            ),
        },
        Case {
            name: "anti-affinity of an existing pod refuses the newcomer",
            nodes: vec![node("a"), node("b")],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                    json!([{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]),
                ),
                "b",
            )],
            pod: with(
                pod("p", None, None),
                "/metadata/labels",
                json!({"app": "web"}),
            ),
            want: Want::Node("a"),
        },
        Case {
            name: "anti-affinity of an existing pod, message",
            nodes: vec![node("a")],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                    json!([{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]),
                ),
                "a",
            )],
            pod: with(
                pod("p", None, None),
                "/metadata/labels",
                json!({"app": "web"}),
            ),
            want: Want::Message(
                "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules.",
            ),
        },
        Case {
            name: "anti-affinity looks in the pod's namespace only",
            nodes: vec![node("a")],
            pods: vec![bound(
                with(
                    with(
                        pod("x", None, None),
                        "/metadata/labels",
                        json!({"app": "db"}),
                    ),
                    "/metadata/namespace",
                    json!("other"),
                ),
                "a",
            )],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!([{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]),
            ),
            want: Want::Node("a"),
        },
        Case {
            name: "required pod affinity",
            nodes: vec![node("a"), node("b")],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/metadata/labels",
                    json!({"app": "cache"}),
                ),
                "b",
            )],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!([{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "required pod affinity message",
            nodes: vec![node("a")],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                json!([{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]),
            ),
            want: Want::Message(
                "0/1 nodes are available: 1 node(s) didn't match pod affinity rules.",
            ),
        },
        Case {
            name: "DoNotSchedule spread with maxSkew 1",
            nodes: vec![node("a"), node("b")],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/metadata/labels",
                    json!({"app": "web"}),
                ),
                "b",
            )],
            pod: with(
                with(
                    pod("p", None, None),
                    "/metadata/labels",
                    json!({"app": "web"}),
                ),
                "/spec/topologySpreadConstraints",
                json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]),
            ),
            want: Want::Node("a"),
        },
        Case {
            name: "DoNotSchedule spread message",
            nodes: vec![
                node("a"),
                with(node("b"), "/spec/unschedulable", json!(true)),
            ],
            pods: vec![bound(
                with(
                    pod("x", None, None),
                    "/metadata/labels",
                    json!({"app": "web"}),
                ),
                "a",
            )],
            pod: with(
                with(
                    pod("p", None, None),
                    "/metadata/labels",
                    json!({"app": "web"}),
                ),
                "/spec/topologySpreadConstraints",
                json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]),
            ),
            want: Want::Message(
                "0/2 nodes are available: 1 node(s) didn't match pod topology spread constraints, 1 node(s) were unschedulable.",
            ),
        },
        Case {
            name: "DoNotSchedule spread on a key a node lacks",
            nodes: vec![
                with(node("a"), "/metadata/labels/zone", json!("z1")),
                node("b"),
            ],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/topologySpreadConstraints",
                json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]),
            ),
            want: Want::Node("a"),
        },
        Case {
            name: "a malformed request makes the pod unschedulable",
            nodes: vec![node("a")],
            pods: vec![],
            pod: pod("p", Some("lots"), None),
            want: Want::Message(
                "invalid pod: spec.containers[0].resources.requests.cpu: quantity \"lots\" does not start with a number",
            ),
        },
        Case {
            name: "a malformed request of a bound pod counts as zero",
            nodes: vec![node("a")],
            pods: vec![bound(pod("x", Some("lots"), None), "a")],
            pod: pod("p", Some("4"), None),
            want: Want::Node("a"),
        },
    ];
    check(cases);
}

#[test]
fn each_score_prefers_the_right_node() {
    let cases = vec![
        Case {
            name: "preferred node affinity weights",
            nodes: vec![
                with(node("a"), "/metadata/labels/disk", json!("hdd")),
                with(node("b"), "/metadata/labels/disk", json!("ssd")),
                with(node("c"), "/metadata/labels/fast", json!("yes")),
            ],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution",
                json!([
                    {"weight": 80, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                    {"weight": 20, "preference": {"matchExpressions": [{"key": "fast", "operator": "Exists"}]}},
                ]),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "PreferNoSchedule taints: fewer is better",
            nodes: vec![
                with(
                    node("a"),
                    "/spec/taints",
                    json!([{"key": "x", "effect": "PreferNoSchedule"}, {"key": "y", "effect": "PreferNoSchedule"}]),
                ),
                with(
                    node("b"),
                    "/spec/taints",
                    json!([{"key": "x", "effect": "PreferNoSchedule"}]),
                ),
                with(
                    node("c"),
                    "/spec/taints",
                    json!([{"key": "x", "effect": "PreferNoSchedule"}, {"key": "z", "effect": "PreferNoSchedule"}]),
                ),
            ],
            pods: vec![],
            pod: pod("p", None, None),
            want: Want::Node("b"),
        },
        Case {
            name: "PreferNoSchedule taints tolerated do not count",
            nodes: vec![
                with(
                    node("a"),
                    "/spec/taints",
                    json!([{"key": "x", "effect": "PreferNoSchedule"}, {"key": "y", "effect": "PreferNoSchedule"}]),
                ),
                with(
                    node("b"),
                    "/spec/taints",
                    json!([{"key": "z", "effect": "PreferNoSchedule"}]),
                ),
            ],
            pods: vec![],
            pod: with(
                pod("p", None, None),
                "/spec/tolerations",
                json!([{"key": "x", "operator": "Exists"}, {"key": "y", "operator": "Exists"}]),
            ),
            want: Want::Node("a"),
        },
        Case {
            name: "least allocated",
            nodes: vec![node("a"), node("b"), node("c")],
            pods: vec![
                bound(pod("x", Some("2"), Some("2Gi")), "a"),
                bound(pod("y", Some("500m"), Some("1Gi")), "b"),
                bound(pod("z", Some("1"), Some("4Gi")), "c"),
            ],
            pod: pod("p", Some("100m"), Some("100Mi")),
            want: Want::Node("b"),
        },
        Case {
            name: "request-less pods count at the scoring defaults",
            nodes: vec![node("a"), node("b")],
            pods: (0..5)
                .map(|i| bound(pod(&format!("x{i}"), None, None), "a"))
                .collect(),
            pod: pod("p", None, None),
            want: Want::Node("b"),
        },
        Case {
            name: "pods of one controller spread over nodes",
            nodes: vec![node("a"), node("b")],
            pods: vec![
                bound(
                    with(
                        pod("x", None, None),
                        "/metadata/ownerReferences",
                        json!([{"uid": "rs-1", "controller": true}]),
                    ),
                    "a",
                ),
                // Another controller's pods make b busier by resources.
                bound(pod("y", Some("1"), Some("1Gi")), "b"),
            ],
            pod: with(
                pod("p", None, None),
                "/metadata/ownerReferences",
                json!([{"uid": "rs-1", "controller": true}]),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "pods of one controller spread over nodes without hostname labels too",
            nodes: vec![
                with(node("a"), "/metadata/labels", json!({})),
                with(node("b"), "/metadata/labels", json!({})),
            ],
            pods: vec![
                bound(
                    with(
                        pod("x", None, None),
                        "/metadata/ownerReferences",
                        json!([{"uid": "rs-1", "controller": true}]),
                    ),
                    "a",
                ),
                bound(pod("y", Some("1"), Some("1Gi")), "b"),
            ],
            pod: with(
                pod("p", None, None),
                "/metadata/ownerReferences",
                json!([{"uid": "rs-1", "controller": true}]),
            ),
            want: Want::Node("b"),
        },
        Case {
            name: "ScheduleAnyway spread",
            nodes: vec![node("a"), node("b"), node("c")],
            pods: vec![
                bound(
                    with(
                        pod("x", None, None),
                        "/metadata/labels",
                        json!({"app": "web"}),
                    ),
                    "a",
                ),
                bound(
                    with(
                        pod("y", None, None),
                        "/metadata/labels",
                        json!({"app": "web"}),
                    ),
                    "b",
                ),
                // Busier by resources, but holds none of the set.
                bound(pod("z", Some("1"), Some("2Gi")), "c"),
            ],
            pod: with(
                with(
                    pod("p", None, None),
                    "/metadata/labels",
                    json!({"app": "web"}),
                ),
                "/spec/topologySpreadConstraints",
                json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]),
            ),
            want: Want::Node("c"),
        },
    ];
    check(cases);
}

#[test]
fn reasons_are_counted_and_sorted_as_kubernetes_sorts_them() {
    let tainted = |n: &str| {
        with(
            node(n),
            "/spec/taints",
            json!([{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoSchedule"}]),
        )
    };
    let nodes = vec![tainted("a"), node("b"), node("c")];
    let snap = Snapshot::new(&nodes, NO_PODS);
    let err = snap.schedule(&pod("p", None, Some("9Gi"))).unwrap_err();
    assert_eq!(
        err.message(),
        "0/3 nodes are available: 1 node(s) had untolerated taint {CriticalAddonsOnly: true}, 2 Insufficient memory."
    );
    // As strings: "10 ..." sorts before "2 ...".
    let mut nodes: Vec<Value> = (0..10).map(|i| tainted(&format!("t{i}"))).collect();
    nodes.extend((0..2).map(|i| node(&format!("n{i}"))));
    let snap = Snapshot::new(&nodes, NO_PODS);
    assert_eq!(
        snap.schedule(&pod("p", None, Some("9Gi")))
            .unwrap_err()
            .message(),
        "0/12 nodes are available: 10 node(s) had untolerated taint {CriticalAddonsOnly: true}, 2 Insufficient memory."
    );
}

#[test]
fn zero_nodes_says_so_as_kube_scheduler_does() {
    let snap = Snapshot::new(NO_NODES, NO_PODS);
    let err = snap.schedule(&pod("p", None, None)).unwrap_err();
    assert_eq!(err, Unschedulable::NoNodes);
    assert_eq!(err.message(), "no nodes available to schedule pods");
}

#[test]
fn conflicting_node_name_terms_refuse_before_filtering() {
    let nodes = vec![node("a"), node("b")];
    let snap = Snapshot::new(&nodes, NO_PODS);
    let p = with(
        pod("p", None, None),
        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
        json!({"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["a"]},
            {"key": "metadata.name", "operator": "In", "values": ["b"]},
        ]}]}),
    );
    assert_eq!(
        snap.schedule(&p).unwrap_err().message(),
        "0/2 nodes are available: pod affinity terms conflict."
    );
}

#[test]
fn assume_sends_the_next_pod_elsewhere_when_resources_run_out() {
    let nodes = vec![
        node("a"),
        with(node("b"), "/status/allocatable/cpu", json!("2")),
    ];
    let mut snap = Snapshot::new(&nodes, NO_PODS);
    let first = pod("p1", Some("3"), None);
    assert_eq!(snap.schedule(&first).as_deref(), Ok("a"));
    snap.assume(&first, "a");
    // a has 1 cpu left, b has 2: a 2-cpu pod must go to b.
    let second = pod("p2", Some("2"), None);
    assert_eq!(snap.schedule(&second).as_deref(), Ok("b"));
    snap.assume(&second, "b");
    assert_eq!(
        snap.schedule(&pod("p3", Some("2"), None))
            .unwrap_err()
            .message(),
        "0/2 nodes are available: 2 Insufficient cpu."
    );
}

#[test]
fn assume_keeps_selector_counts_current() {
    let nodes = vec![node("a"), node("b")];
    let mut snap = Snapshot::new(&nodes, NO_PODS);
    let replica = |i: usize| {
        with(
            with(
                pod(&format!("db-{i}"), None, None),
                "/metadata/labels",
                json!({"app": "db"}),
            ),
            "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            json!([{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]),
        )
    };
    let mut placed = Vec::new();
    for i in 0..2 {
        let p = replica(i);
        let n = snap.schedule(&p).expect("fits");
        snap.assume(&p, &n);
        placed.push(n);
    }
    placed.sort();
    assert_eq!(placed, ["a", "b"]);
    assert_eq!(
        snap.schedule(&replica(2)).unwrap_err().message(),
        "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
    );
}

#[test]
fn four_replicas_over_two_equal_nodes_go_two_and_two() {
    let nodes = vec![node("a"), node("b")];
    let mut snap = Snapshot::new(&nodes, NO_PODS);
    let mut per_node = std::collections::BTreeMap::new();
    for i in 0..4 {
        let p = with(
            pod(&format!("web-{i}"), Some("100m"), Some("128Mi")),
            "/metadata/ownerReferences",
            json!([{"uid": "rs-web", "controller": true, "kind": "ReplicaSet", "name": "web"}]),
        );
        let n = snap.schedule(&p).expect("fits");
        snap.assume(&p, &n);
        *per_node.entry(n).or_insert(0) += 1;
    }
    assert_eq!(
        per_node.into_iter().collect::<Vec<_>>(),
        [("a".to_string(), 2), ("b".to_string(), 2)]
    );
}

#[test]
fn equal_nodes_are_shared_not_taken_alphabetically() {
    let nodes: Vec<Value> = (0..4).map(|i| node(&format!("n{i}"))).collect();
    let snap = Snapshot::new(&nodes, NO_PODS);
    let chosen: std::collections::BTreeSet<String> = (0..40)
        .map(|i| {
            snap.schedule(&pod(&format!("p{i}"), None, None))
                .expect("fits")
        })
        .collect();
    assert!(chosen.len() > 1, "every pod went to {chosen:?}");
    // And a pod's choice does not change from one call to the next.
    let p = pod("same", None, None);
    assert_eq!(snap.schedule(&p), snap.schedule(&p));
}

#[test]
fn malformed_objects_are_read_without_panicking() {
    let nodes = vec![
        json!(null),
        json!(42),
        json!({"metadata": {"name": 5}}),
        json!({
            "metadata": {"name": "odd", "labels": [1]},
            "spec": {"taints": "bad", "unschedulable": "yes"},
            "status": {"allocatable": {"cpu": {}, "pods": "many"}, "capacity": [], "conditions": 3},
        }),
        with(
            node("a"),
            "/spec/taints",
            json!([{"key": 1}, {"effect": "NoSchedule"}, 7]),
        ),
        node("b"),
    ];
    let weird_pods = vec![
        json!(null),
        json!("pod"),
        json!({"spec": {"containers": {"a": 1}, "nodeName": 4}}),
        json!({"metadata": {"labels": "x", "ownerReferences": {}}, "spec": {
            "nodeName": "b",
            "containers": [{"resources": {"requests": {"cpu": [1], "memory": "-1"}}, "ports": [{"hostPort": "80"}, {"hostPort": 80, "protocol": 6}]}],
            "initContainers": "none",
            "overhead": {"cpu": true},
        }}),
        json!({"spec": {
            "nodeSelector": ["a"],
            "tolerations": [{"operator": "Sometimes"}, {"effect": 3}, 9],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["x", "y"]}]}, 5]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": "10"}, {"weight": 5, "preference": 3}],
                },
                "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchExpressions": [{"operator": 5}]}}]},
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [7, {"labelSelector": {}, "topologyKey": 1, "namespaceSelector": {"matchLabels": {"a": "b"}}}]},
            },
            "topologySpreadConstraints": [{"maxSkew": "1"}, {"maxSkew": 0, "topologyKey": "k"}, {"maxSkew": 1, "topologyKey": "k", "minDomains": "x"}],
        }}),
    ];
    let bound_pods: Vec<Value> = weird_pods
        .iter()
        .map(|p| {
            let mut p = p.clone();
            if p.is_object() {
                p["spec"]["nodeName"] = json!("a");
            }
            p
        })
        .collect();
    let mut snap = Snapshot::new(&nodes, &bound_pods);
    for p in &weird_pods {
        if let Ok(n) = snap.schedule(p) {
            snap.assume(p, &n);
        }
        let _ = wants(p);
    }
    // The readable nodes are still usable.
    assert!(snap.schedule(&pod("p", Some("100m"), None)).is_ok());
}

#[test]
fn wants_only_unbound_live_pods_for_the_default_scheduler() {
    let p = pod("p", None, None);
    assert!(wants(&p));
    assert!(wants(&with(p.clone(), "/spec/schedulerName", Value::Null)));
    assert!(!wants(&with(p.clone(), "/spec/nodeName", json!("a"))));
    assert!(!wants(&with(
        p.clone(),
        "/spec/schedulerName",
        json!("other")
    )));
    assert!(!wants(&with(p.clone(), "/status/phase", json!("Failed"))));
    assert!(!wants(&with(
        p.clone(),
        "/metadata/deletionTimestamp",
        json!("2026-01-01T00:00:00Z")
    )));
    assert!(!wants(&with(
        p.clone(),
        "/spec/schedulingGates",
        json!([{"name": "wait"}])
    )));
}

/// `cargo test --release -- --ignored bench_decisions --nocapture`
#[test]
#[ignore]
fn bench_decisions() {
    const NODES: usize = 1000;
    const PODS: usize = 3000;
    let nodes: Vec<Value> = (0..NODES)
        .map(|i| {
            let mut n = node(&format!("node-{i:04}"));
            n["metadata"]["labels"]["zone"] = json!(format!("z{}", i % 3));
            if i % 10 == 0 {
                n["spec"]["taints"] =
                    json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]);
            }
            n
        })
        .collect();
    // A mix: plain pods of 30 controllers, some with a zone preference, some spread, some
    // keeping apart from their siblings.
    let pods: Vec<Value> = (0..PODS)
        .map(|i| {
            let mut p = pod(&format!("p-{i}"), Some("250m"), Some("256Mi"));
            p["metadata"]["labels"] = json!({"app": format!("app-{}", i % 30)});
            p["metadata"]["ownerReferences"] = json!([{"uid": format!("rs-{}", i % 30), "controller": true}]);
            if i % 3 == 0 {
                p["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = json!([
                    {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}},
                ]);
            }
            if i % 7 == 0 {
                p["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!([{
                    "labelSelector": {"matchLabels": {"app": format!("app-{}", i % 30)}},
                    "topologyKey": "kubernetes.io/hostname",
                }]);
            }
            if i % 5 == 0 {
                p["spec"]["topologySpreadConstraints"] = json!([{
                    "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app": format!("app-{}", i % 30)}},
                }]);
            }
            p
        })
        .collect();
    let mut snap = Snapshot::new(&nodes, NO_PODS);
    let start = std::time::Instant::now();
    let mut placed = 0;
    for p in &pods {
        if let Ok(n) = snap.schedule(p) {
            snap.assume(p, &n);
            placed += 1;
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(placed, PODS);
    println!(
        "bench_decisions: {PODS} pods over {NODES} nodes in {:.3}s: {:.0} decisions/s",
        elapsed.as_secs_f64(),
        PODS as f64 / elapsed.as_secs_f64()
    );
}

// === VolumeBinding ===

mod volume_binding {
    use std::sync::Arc;

    use super::*;
    use crate::controllers::scheduler::volumes::{VolumeNeeds, needs};
    use crate::runtime::frozen::Frozen;

    fn claim_pod() -> Value {
        with(
            pod("db-0", None, None),
            "/spec/volumes",
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]),
        )
    }

    fn frozen(v: Value) -> Option<Arc<Frozen>> {
        Some(Arc::new(Frozen::from(v)))
    }

    fn pinned(node: &str) -> Value {
        json!({"metadata": {"name": "pv-1"}, "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
    }

    fn with_storage(n: Value) -> Value {
        with(
            n,
            "/metadata/annotations",
            json!({volumes::LOCAL_STORAGE_ANNOTATION: "/var/lib/keelson/storage"}),
        )
    }

    #[test]
    fn a_bound_volume_pins_the_pod_to_its_node() {
        let p = claim_pod();
        let got = needs(
            &p,
            |_| frozen(json!({"metadata": {"name": "data-db-0"}, "spec": {"volumeName": "pv-1"}})),
            |_| frozen(pinned("b")),
            |_| None,
        )
        .expect("readable claims");
        let (a, b) = (node("a"), node("b"));
        let snap = Snapshot::new([&a, &b], NO_PODS);
        assert_eq!(snap.schedule_with(&p, got.clone()), Ok("b".to_string()));
        let only_a = Snapshot::new([&a], NO_PODS);
        assert_eq!(
            only_a.schedule_with(&p, got).map_err(|e| e.message()),
            Err("0/1 nodes are available: 1 node(s) had volume node affinity conflict.".into())
        );
    }

    #[test]
    fn a_waiting_claim_goes_where_local_storage_is_offered_and_is_named() {
        let p = claim_pod();
        let got = needs(
            &p,
            |_| frozen(json!({"metadata": {"name": "data-db-0"}, "spec": {"storageClassName": "local-path"}})),
            |_| None,
            |_| frozen(json!({"metadata": {"name": "local-path"}, "provisioner": volumes::LOCAL_PATH_PROVISIONER,
                "volumeBindingMode": "WaitForFirstConsumer"})),
        )
        .expect("readable claims");
        assert_eq!(got.delayed, ["data-db-0"]);
        assert!(got.local_storage);
        let (hollow, board) = (node("hollow"), with_storage(node("board")));
        let snap = Snapshot::new([&hollow, &board], NO_PODS);
        assert_eq!(snap.schedule_with(&p, got.clone()), Ok("board".to_string()));
        let none = Snapshot::new([&hollow], NO_PODS);
        assert_eq!(
            none.schedule_with(&p, got).map_err(|e| e.message()),
            Err("0/1 nodes are available: 1 node(s) didn't find available persistent volumes to bind.".into())
        );
    }

    #[test]
    fn unreadable_or_unbound_immediate_claims_refuse_before_any_node() {
        let p = claim_pod();
        let missing = needs(&p, |_| None, |_| None, |_| None);
        assert_eq!(
            missing,
            Err("persistentvolumeclaim \"data-db-0\" not found".into())
        );
        let deleting = needs(
            &p,
            |_| {
                frozen(
                    json!({"metadata": {"name": "data-db-0", "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
                )
            },
            |_| None,
            |_| None,
        );
        assert_eq!(
            deleting,
            Err("persistentvolumeclaim \"data-db-0\" is being deleted".into())
        );
        let immediate = needs(
            &p,
            |_| {
                frozen(
                    json!({"metadata": {"name": "data-db-0"}, "spec": {"storageClassName": "fast"}}),
                )
            },
            |_| None,
            |_| {
                frozen(
                    json!({"metadata": {"name": "fast"}, "provisioner": "x", "volumeBindingMode": "Immediate"}),
                )
            },
        );
        assert_eq!(
            immediate,
            Err("pod has unbound immediate PersistentVolumeClaims".into())
        );
        // A pod without claims asks nothing.
        assert_eq!(
            needs(&pod("p", None, None), |_| None, |_| None, |_| None),
            Ok(VolumeNeeds::default())
        );
    }
}
