//! core/v1 Node: taints and pod CIDRs validated, pod CIDRs fixed once set; columns with status, roles and the node's software.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, Strategy, plain, text};
use crate::api::cidr::Cidr;
use crate::api::labels as node_fields;

pub struct Nodes;

impl Strategy for Nodes {
    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        // The two fields are one value in Kubernetes' internal Node (podCIDRs; podCIDR is
        // its first entry), so a client that sets either gets both.
        let spec = &mut obj["spec"];
        let single = spec["podCIDR"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let first = spec["podCIDRs"].get(0).cloned();
        match (single, first) {
            (Some(single), None) if is_empty_list(&spec["podCIDRs"]) => {
                spec["podCIDRs"] = json!([single]);
            }
            (None, Some(first)) => spec["podCIDR"] = first,
            _ => {}
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        validate_pod_cidrs(&obj["spec"], causes);
        match obj.pointer("/spec/taints") {
            None | Some(Value::Null) => {}
            Some(Value::Array(taints)) => {
                for (i, t) in taints.iter().enumerate() {
                    let parsed: Result<node_fields::Taint, _> = serde_json::from_value(t.clone());
                    if let Err(e) = parsed
                        .map_err(|e| e.to_string())
                        .and_then(|t| node_fields::validate_taint(&t))
                    {
                        causes.push(format!("spec.taints[{i}]: Invalid value: {e}"));
                    }
                }
            }
            Some(_) => causes.push("spec.taints: Invalid value: must be a list".into()),
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        // Kubernetes' ValidateNodeUpdate: the controller manager may assign CIDRs to a node
        // that has none; after that they are fixed (pods hold addresses from them).
        let old_cidrs = &old["spec"]["podCIDRs"];
        if !is_empty_list(old_cidrs) && old_cidrs != &new["spec"]["podCIDRs"] {
            causes.push(
                "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"
                    .into(),
            );
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

fn is_empty_list(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(Vec::is_empty)
}

/// Kubernetes' ValidateNode rules for `spec.podCIDRs`: each a CIDR, at most one per family,
/// and `spec.podCIDR` its first entry.
fn validate_pod_cidrs(spec: &Value, causes: &mut Vec<String>) {
    let cidrs = match &spec["podCIDRs"] {
        Value::Null => return,
        Value::Array(a) => a,
        _ => {
            causes.push("spec.podCIDRs: Invalid value: must be a list of strings".into());
            return;
        }
    };
    let mut families = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        match c.as_str().map(Cidr::parse) {
            Some(Ok(cidr)) => families.push(cidr.family()),
            _ => causes.push(format!(
                "spec.podCIDRs[{i}]: Invalid value: {c}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
            )),
        }
    }
    if cidrs.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
        causes.push(format!(
            "spec.podCIDRs: Invalid value: {}: may specify no more than one CIDR for each IP family",
            Value::Array(cidrs.clone())
        ));
    }
    if let (Some(single), Some(first)) = (spec["podCIDR"].as_str(), cidrs.first())
        && !single.is_empty()
        && first.as_str() != Some(single)
    {
        causes.push(format!(
            "spec.podCIDR: Invalid value: {single:?}: must be the first entry of spec.podCIDRs"
        ));
    }
}

static COLUMNS: [Column; 10] = [
    NAME,
    plain("Status", "The status of the node", 0, |n, _| {
        json!(status(n))
    }),
    plain("Roles", "The roles of the node", 0, |n, _| json!(roles(n))),
    AGE,
    plain(
        "Version",
        "Kubelet Version reported by the node.",
        0,
        |n, _| json!(text(n, "/status/nodeInfo/kubeletVersion")),
    ),
    plain(
        "Internal-IP",
        "List of addresses reachable to the node.",
        1,
        |n, _| json!(address(n, "InternalIP")),
    ),
    plain(
        "External-IP",
        "List of addresses reachable to the node.",
        1,
        |n, _| json!(address(n, "ExternalIP")),
    ),
    plain(
        "OS-Image",
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
        1,
        |n, _| json!(or_unknown(text(n, "/status/nodeInfo/osImage"))),
    ),
    plain(
        "Kernel-Version",
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
        1,
        |n, _| json!(or_unknown(text(n, "/status/nodeInfo/kernelVersion"))),
    ),
    plain(
        "Container-Runtime",
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
        1,
        |n, _| {
            json!(or_unknown(text(
                n,
                "/status/nodeInfo/containerRuntimeVersion"
            )))
        },
    ),
];

fn or_unknown(v: String) -> String {
    if v.is_empty() { "<unknown>".into() } else { v }
}

fn address(node: &Value, kind: &str) -> String {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["type"] == kind))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("<none>")
        .to_owned()
}

/// `Ready`, `NotReady` (Ready False or Unknown, as kubectl prints a silent node) or `Unknown`
/// (no Ready condition at all), plus `,SchedulingDisabled` when cordoned.
/// The names of the Nodes not known to be down (Ready, or not reported yet): whose servers
/// agents may use and whose key hashes a rotation waits for.
pub fn not_known_down(nodes: &[Value]) -> std::collections::HashSet<&str> {
    nodes
        .iter()
        .filter(|n| {
            !n.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] != "True")
                })
        })
        .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str))
        .collect()
}

pub fn status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str());
    let mut status = match ready {
        Some("True") => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }
    .to_owned();
    if node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// Roles from `node-role.kubernetes.io/<role>` and `kubernetes.io/role` labels.
fn roles(node: &Value) -> String {
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        (!role.is_empty()).then(|| role.to_owned())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().filter(|r| !r.is_empty()).map(str::to_owned)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(old: Option<Value>, mut new: Value) -> Vec<String> {
        let mut causes = Vec::new();
        Nodes.default("n", &mut new);
        Nodes.validate(&new, &mut causes);
        if let Some(mut old) = old {
            Nodes.default("n", &mut old);
            Nodes.validate_update(&old, &new, &mut causes);
        }
        causes
    }

    #[test]
    fn pod_cidrs_may_be_set_once_and_never_changed() {
        let none = json!({"spec": {}});
        let set = json!({"spec": {"podCIDR": "10.42.1.0/24"}});
        assert!(causes(Some(none.clone()), set.clone()).is_empty());
        assert!(causes(Some(set.clone()), set.clone()).is_empty());
        let forbidden = vec![
            "spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"
                .to_owned(),
        ];
        let other = json!({"spec": {"podCIDR": "10.42.2.0/24", "podCIDRs": ["10.42.2.0/24"]}});
        assert_eq!(causes(Some(set.clone()), other), forbidden);
        assert_eq!(causes(Some(set.clone()), none), forbidden);
        let added = json!({"spec": {"podCIDRs": ["10.42.1.0/24", "fd00::/64"]}});
        assert_eq!(causes(Some(set), added), forbidden);
    }

    #[test]
    fn pod_cidrs_are_valid_cidrs_one_per_family() {
        let mut node = json!({"spec": {"podCIDRs": ["10.42.1.0/24", "fd00::/64"]}});
        assert!(causes(None, node.clone()).is_empty());
        Nodes.default("n", &mut node);
        assert_eq!(node["spec"]["podCIDR"], "10.42.1.0/24");
        let bad = causes(None, json!({"spec": {"podCIDRs": ["10.42.1.0"]}}));
        assert!(
            bad[0].starts_with("spec.podCIDRs[0]: Invalid value"),
            "{bad:?}"
        );
        let twice = causes(
            None,
            json!({"spec": {"podCIDRs": ["10.42.1.0/24", "10.42.2.0/24"]}}),
        );
        assert!(
            twice[0].contains("no more than one CIDR for each IP family"),
            "{twice:?}"
        );
        let apart = causes(
            None,
            json!({"spec": {"podCIDR": "10.42.9.0/24", "podCIDRs": ["10.42.1.0/24"]}}),
        );
        assert!(
            apart[0].starts_with("spec.podCIDR: Invalid value"),
            "{apart:?}"
        );
    }
}
