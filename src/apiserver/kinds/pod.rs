//! core/v1 Pod: Kubernetes' defaults (so `kubectl get -o yaml` looks familiar), the fields a
//! pod must have, a spec that is immutable but for images, `activeDeadlineSeconds` and added
//! tolerations, and the `kubectl get pods` columns.

use serde_json::{Map, Value, json};

use super::{AGE, Column, NAME, Strategy, or_none, plain, text};

/// Seconds a pod stays on a node that went not-ready or unreachable (kube-apiserver's
/// `--default-not-ready-toleration-seconds` / `--default-unreachable-toleration-seconds`).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

pub struct Pods;

impl Strategy for Pods {
    fn default(&self, _name: &str, obj: &mut Value) {
        if obj.pointer("/status/phase").is_none() {
            obj["status"]["phase"] = json!("Pending");
        }
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        default_spec(spec);
        admit_spec(spec);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        validate_spec(obj.get("spec"), "spec", causes);
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        if mutable_view(old.get("spec")) != mutable_view(new.get("spec")) {
            causes.push(
                "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`".into(),
            );
        }
        let tolerations = |v: &Value| {
            v.pointer("/spec/tolerations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let (before, after) = (tolerations(old), tolerations(new));
        if before.iter().any(|t| !after.contains(t)) {
            causes.push(
                "spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds".into(),
            );
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

/// Kubernetes' defaults for a PodSpec (also a template's, for the workload kinds).
pub fn default_spec(spec: &mut Map<String, Value>) {
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
    ] {
        spec.entry(k).or_insert(v);
    }
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                default_container(c);
            }
        }
    }
}

/// What Kubernetes' admission adds to a pod, never to a template (so a Deployment's template
/// reads as written): the service account, the priority, and the not-ready/unreachable
/// tolerations.
fn admit_spec(spec: &mut Map<String, Value>) {
    for (k, v) in [
        ("serviceAccountName", json!("default")),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
    ] {
        spec.entry(k).or_insert(v);
    }
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        spec.entry("serviceAccount").or_insert(sa);
    }
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Value::Array(list) = tolerations {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let has = list
                .iter()
                .any(|t| t["key"] == key && (t["effect"] == "NoExecute" || t["effect"].is_null()));
            if !has {
                list.push(json!({
                    "key": key, "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
                }));
            }
        }
    }
}

fn default_container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let policy = if image_tag(image).is_none_or(|t| t == "latest") && !image.contains('@') {
        "Always"
    } else {
        "IfNotPresent"
    };
    c.entry("imagePullPolicy").or_insert(json!(policy));
    c.entry("terminationMessagePath")
        .or_insert(json!("/dev/termination-log"));
    c.entry("terminationMessagePolicy").or_insert(json!("File"));
    c.entry("resources").or_insert(json!({}));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert(json!("TCP"));
        }
    }
}

/// The tag of an image reference, if it has one (`nginx:1.27`, not `registry:5000/nginx`).
fn image_tag(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split('@').next()?.split_once(':').map(|(_, t)| t)
}

/// Checks a PodSpec at `at` (`spec`, or `spec.template.spec` for the workload kinds).
pub fn validate_spec(spec: Option<&Value>, at: &str, causes: &mut Vec<String>) {
    let Some(spec) = spec.filter(|s| s.is_object()) else {
        causes.push(format!("{at}: Required value"));
        return;
    };
    match spec.get("containers").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            let mut names = std::collections::HashSet::new();
            for (i, c) in list.iter().enumerate() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.is_empty() {
                    causes.push(format!("{at}.containers[{i}].name: Required value"));
                } else if !crate::api::labels::is_dns_label(name) {
                    causes.push(format!(
                        "{at}.containers[{i}].name: Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"
                    ));
                } else if !names.insert(name) {
                    causes.push(format!(
                        "{at}.containers[{i}].name: Duplicate value: {name:?}"
                    ));
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(format!("{at}.containers[{i}].image: Required value"));
                }
            }
        }
        _ => causes.push(format!("{at}.containers: Required value")),
    }
    if let Some(p) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(p, "Always" | "OnFailure" | "Never")
    {
        causes.push(format!(
            "{at}.restartPolicy: Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
        ));
    }
}

/// The spec without what an update may change.
fn mutable_view(spec: Option<&Value>) -> Value {
    let mut spec = spec.cloned().unwrap_or(Value::Null);
    if let Some(m) = spec.as_object_mut() {
        for k in [
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
        ] {
            m.remove(k);
        }
        // Binding sets the node once; until a scheduler binds through `/binding`, an update
        // may set it on an unbound pod.
        m.remove("nodeName");
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(cs)) = m.get_mut(list) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
    }
    spec
}

static COLUMNS: [Column; 9] = [
    NAME,
    plain(
        "Ready",
        "The aggregate readiness state of this pod for accepting traffic.",
        0,
        |p, _| {
            let containers = p
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses(p).map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
            json!(format!("{ready}/{containers}"))
        },
    ),
    plain(
        "Status",
        "The aggregate status of the containers in this pod.",
        0,
        |p, _| json!(text(p, "/status/phase")),
    ),
    plain(
        "Restarts",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        0,
        |p, _| {
            let n: i64 = statuses(p).map_or(0, |s| {
                s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
            });
            json!(n.to_string())
        },
    ),
    AGE,
    plain(
        "IP",
        "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
        1,
        |p, _| json!(or_none(text(p, "/status/podIP"))),
    ),
    plain(
        "Node",
        "NodeName is a request to schedule this pod onto a specific node.",
        1,
        |p, _| json!(or_none(text(p, "/spec/nodeName"))),
    ),
    plain(
        "Nominated Node",
        "nominatedNodeName is set when this pod preempts other pods on the node.",
        1,
        |p, _| json!(or_none(text(p, "/status/nominatedNodeName"))),
    ),
    plain(
        "Readiness Gates",
        "If specified, all readiness gates will be evaluated for pod readiness.",
        1,
        |_, _| json!("<none>"),
    ),
];

fn statuses(p: &Value) -> Option<&Vec<Value>> {
    p.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_pod_gets_kubernetes_defaults() {
        let mut pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [
            {"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "busybox:1.36"},
        ]}});
        Pods.default("web", &mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            spec["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
        assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(spec["tolerations"][1]["tolerationSeconds"], 300);
        assert_eq!(pod["status"]["phase"], "Pending");
        // Defaulting twice changes nothing.
        let again = {
            let mut p = pod.clone();
            Pods.default("web", &mut p);
            p
        };
        assert_eq!(again, pod);
    }

    #[test]
    fn a_pod_needs_containers_with_names_and_images_and_its_spec_is_fixed() {
        let mut causes = Vec::new();
        Pods.validate(&json!({"spec": {"containers": [{"name": "a"}, {"image": "x"}, {"name": "a", "image": "y"}]}}), &mut causes);
        assert_eq!(causes.len(), 3, "{causes:?}");
        causes.clear();
        Pods.validate(&json!({"spec": {}}), &mut causes);
        assert_eq!(causes, ["spec.containers: Required value"]);
        let old = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}});
        let mut causes = Vec::new();
        Pods.validate_update(
            &old,
            &json!({"spec": {"containers": [{"name": "a", "image": "x:2"}]}}),
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
        Pods.validate_update(
            &old,
            &json!({"spec": {"containers": [{"name": "b", "image": "x:1"}]}}),
            &mut causes,
        );
        assert_eq!(causes.len(), 1, "{causes:?}");
    }
}
