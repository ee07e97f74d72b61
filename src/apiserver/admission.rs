//! What a caller may change, beyond what its path allows: Kubernetes' NodeRestriction for
//! node client certificates.
//!
//! [`super::auth`] decides which objects a caller may reach; this decides which *fields* of
//! them it may change, by comparing the stored object with the one about to be written. It
//! runs after a patch is applied and before anything is stored, so a refused write changes
//! nothing.
//!
//! Invariant: a node may change only what describes itself (its own labels outside the
//! restricted prefixes, status, addresses); never what an administrator or a server decides:
//! roles, restricted labels, taints, a cordon, the pod CIDR, or keelson's annotations, which
//! servers read and act on. Of pods it may write only the status, and only of pods bound to
//! itself (as a kubelet writes `pods/<name>/status`): never a spec, metadata, or another
//! node's pod.

use serde_json::Value;

use super::status::ApiError;

/// Label prefixes only administrators and servers may set, as Kubernetes' NodeRestriction.
const RESTRICTED_LABEL_PREFIXES: &[&str] = &[
    "node-role.kubernetes.io/",
    "node-restriction.kubernetes.io/",
];
/// Annotation domain of keelson's own bookkeeping.
const KEELSON_DOMAIN: &str = "keelson.io";
/// Spec fields a node may not change (Kubernetes forbids the same of a kubelet).
const FIXED_SPEC_FIELDS: &[&str] = &["taints", "podCIDR", "podCIDRs", "providerID"];

/// Who is writing, as far as field-level rules go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer<'a> {
    /// An administrator or the server itself: only validation applies.
    Trusted,
    /// The node of this name, with its client certificate.
    Node(&'a str),
}

/// Refuses a write by `writer` that turns `old` into `new` if it touches what the writer may
/// not change. `kind` is the object's kind (Nodes and Pods have field rules; a node may write
/// no other kind).
pub fn admit(writer: Writer<'_>, kind: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    match writer {
        Writer::Trusted => Ok(()),
        Writer::Node(node) if kind == "Node" => node_restriction(node, old, new),
        Writer::Node(node) if kind == "Pod" => pod_restriction(node, old, new),
        Writer::Node(node) => Err(ApiError::Forbidden(format!(
            "node \"{node}\" may not write {kind} objects"
        ))),
    }
}

fn node_restriction(node: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let refuse = |what: String| {
        Err(ApiError::Forbidden(format!(
            "node \"{node}\" is not allowed to {what}"
        )))
    };
    for key in changed_keys(old, new, "/metadata/labels") {
        if is_restricted_label(&key) {
            return refuse(format!("set or change the label {key:?}"));
        }
    }
    for key in changed_keys(old, new, "/metadata/annotations") {
        if in_domain(&key, KEELSON_DOMAIN) {
            return refuse(format!("set or change the annotation {key:?}"));
        }
    }
    for field in FIXED_SPEC_FIELDS {
        let at = format!("/spec/{field}");
        if present(old, &at) != present(new, &at) {
            return refuse(format!("modify spec.{field}"));
        }
    }
    let cordoned = |v: &Value| v.pointer("/spec/unschedulable") == Some(&Value::Bool(true));
    if cordoned(old) && !cordoned(new) {
        return refuse("uncordon itself (spec.unschedulable)".into());
    }
    Ok(())
}

fn pod_restriction(node: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
        v.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
    let pod = format!(
        "{}/{}",
        text(old, "/metadata/namespace"),
        text(old, "/metadata/name")
    );
    let bound = text(old, "/spec/nodeName");
    if bound != node || text(new, "/spec/nodeName") != node {
        let to = if bound.is_empty() {
            "it is not bound to any node".to_owned()
        } else {
            format!("it is bound to node \"{bound}\"")
        };
        return Err(ApiError::Forbidden(format!(
            "node \"{node}\" may not write pod {pod}: {to}"
        )));
    }
    // Everything but the status must stay as it is (bookkeeping the server sets aside).
    let fixed = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("status");
        }
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        v
    };
    if fixed(old) != fixed(new) {
        let what = if old.get("spec") != new.get("spec") {
            "spec"
        } else {
            "metadata"
        };
        return Err(ApiError::Forbidden(format!(
            "node \"{node}\" may not change the {what} of pod {pod}: a node writes only the status of pods bound to it"
        )));
    }
    Ok(())
}

/// A field's value, with null and absent (and an empty list) alike.
fn present<'a>(obj: &'a Value, pointer: &str) -> Option<&'a Value> {
    obj.pointer(pointer)
        .filter(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
}

/// Keys of the string map at `pointer` that were added, removed or changed.
fn changed_keys(old: &Value, new: &Value, pointer: &str) -> Vec<String> {
    let empty = serde_json::Map::new();
    let map = |v: &Value| v.pointer(pointer).and_then(Value::as_object).cloned();
    let (old, new) = (map(old), map(new));
    let (old, new) = (
        old.as_ref().unwrap_or(&empty),
        new.as_ref().unwrap_or(&empty),
    );
    let mut keys: Vec<String> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(
        new.iter()
            .filter(|(k, _)| !old.contains_key(*k))
            .map(|(k, _)| k.clone()),
    );
    keys
}

/// Whether a label is one only administrators and servers may set (also checked on the
/// labels an agent reports through its tunnel).
pub fn is_restricted_label(key: &str) -> bool {
    RESTRICTED_LABEL_PREFIXES.iter().any(|p| key.starts_with(p))
        || key
            .split_once('/')
            .is_some_and(|(domain, _)| in_domain(domain, "node-restriction.kubernetes.io"))
}

/// Whether a key's prefix (`domain/name`), or a bare domain, is `domain` or a subdomain of it.
fn in_domain(key: &str, domain: &str) -> bool {
    let prefix = key.split_once('/').map_or(key, |(p, _)| p);
    prefix == domain || prefix.ends_with(&format!(".{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({
            "metadata": {
                "name": "pi-1",
                "labels": {"kubernetes.io/hostname": "pi-1", "zone": "a", "node-role.kubernetes.io/worker": "true"},
                "annotations": {"keelson.io/server-address": "198.18.0.1:6443", "note": "x"},
            },
            "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}], "unschedulable": true},
        })
    }

    fn changed(f: impl FnOnce(&mut Value)) -> Value {
        let mut n = node();
        f(&mut n);
        n
    }

    #[test]
    fn a_node_may_change_its_ordinary_labels_annotations_and_status() {
        let new = changed(|n| {
            n["metadata"]["labels"]["zone"] = json!("b");
            n["metadata"]["labels"]["new"] = json!("1");
            n["metadata"]["annotations"]["note"] = json!("y");
            n["status"] = json!({"conditions": []});
            n["spec"]["unschedulable"] = json!(true);
        });
        admit(Writer::Node("pi-1"), "Node", &node(), &new).unwrap();
        // Cordoning itself is harmless; an empty taint list is no taints.
        let open = changed(|n| n["spec"] = json!({"taints": []}));
        let closed = changed(|n| n["spec"] = json!({"unschedulable": true}));
        admit(Writer::Node("pi-1"), "Node", &open, &closed).unwrap();
    }

    #[test]
    fn a_node_may_not_touch_roles_restrictions_taints_cordons_or_keelson_annotations() {
        let attempts: Vec<(&str, Value)> = vec![
            (
                "control-plane role added",
                changed(|n| {
                    n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("true")
                }),
            ),
            (
                "role removed",
                changed(|n| {
                    n["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove("node-role.kubernetes.io/worker");
                }),
            ),
            (
                "restricted label",
                changed(|n| {
                    n["metadata"]["labels"]["node-restriction.kubernetes.io/x"] = json!("1")
                }),
            ),
            (
                "restricted subdomain label",
                changed(|n| {
                    n["metadata"]["labels"]["a.node-restriction.kubernetes.io/x"] = json!("1")
                }),
            ),
            (
                "server address moved",
                changed(|n| {
                    n["metadata"]["annotations"]["keelson.io/server-address"] =
                        json!("203.0.113.9:6443")
                }),
            ),
            (
                "keelson annotation added",
                changed(|n| n["metadata"]["annotations"]["x.keelson.io/y"] = json!("1")),
            ),
            (
                "annotations dropped",
                changed(|n| n["metadata"]["annotations"] = json!(null)),
            ),
            (
                "taints removed",
                changed(|n| n["spec"]["taints"] = json!([])),
            ),
            (
                "taint added",
                changed(|n| {
                    let taints = n["spec"]["taints"].as_array_mut().unwrap();
                    taints.push(json!({"key": "k", "effect": "NoExecute"}));
                }),
            ),
            (
                "uncordoned",
                changed(|n| n["spec"]["unschedulable"] = json!(false)),
            ),
            (
                "pod CIDR",
                changed(|n| n["spec"]["podCIDR"] = json!("10.42.9.0/24")),
            ),
        ];
        for (what, new) in attempts {
            match admit(Writer::Node("pi-1"), "Node", &node(), &new) {
                Err(ApiError::Forbidden(m)) => assert!(m.contains("pi-1"), "{what}: {m}"),
                other => panic!("{what}: expected Forbidden, got {other:?}"),
            }
            admit(Writer::Trusted, "Node", &node(), &new).unwrap();
        }
    }

    fn pod(node: &str) -> Value {
        json!({
            "metadata": {"namespace": "default", "name": "web-1", "labels": {"app": "web"},
                         "resourceVersion": "7"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Pending"},
        })
    }

    #[test]
    fn a_node_may_write_the_status_of_pods_bound_to_it() {
        let mut new = pod("pi-1");
        new["status"] = json!({"phase": "Running", "podIP": "198.19.0.1"});
        new["metadata"]["resourceVersion"] = json!("8");
        admit(Writer::Node("pi-1"), "Pod", &pod("pi-1"), &new).unwrap();
    }

    #[test]
    fn a_node_may_not_write_other_nodes_pods_or_any_pod_spec() {
        let running = |mut p: Value| {
            p["status"] = json!({"phase": "Running"});
            p
        };
        let attempts: Vec<(&str, Value, Value)> = vec![
            ("another node's pod", pod("pi-2"), running(pod("pi-2"))),
            ("an unbound pod", pod(""), running(pod(""))),
            ("moving a pod to itself", pod("pi-2"), pod("pi-1")),
            ("moving its pod away", pod("pi-1"), pod("pi-2")),
            ("changing the spec", pod("pi-1"), {
                let mut p = pod("pi-1");
                p["spec"]["containers"][0]["image"] = json!("evil");
                p
            }),
            ("changing labels", pod("pi-1"), {
                let mut p = pod("pi-1");
                p["metadata"]["labels"]["app"] = json!("db");
                p
            }),
        ];
        for (what, old, new) in attempts {
            match admit(Writer::Node("pi-1"), "Pod", &old, &new) {
                Err(ApiError::Forbidden(m)) => {
                    assert!(m.contains("node \"pi-1\""), "{what}: {m}");
                    assert!(m.contains("default/web-1"), "{what}: {m}");
                }
                other => panic!("{what}: expected Forbidden, got {other:?}"),
            }
            admit(Writer::Trusted, "Pod", &old, &new).unwrap();
        }
    }

    #[test]
    fn a_node_may_not_write_other_kinds() {
        let obj = json!({"metadata": {"name": "x"}});
        assert!(matches!(
            admit(Writer::Node("pi-1"), "Deployment", &obj, &obj),
            Err(ApiError::Forbidden(_))
        ));
    }
}
