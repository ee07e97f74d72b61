//! core/v1 Node: taints validated; columns with status, roles and the node's software.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, Strategy, plain, text};
use crate::agent::node as node_fields;

pub struct Nodes;

impl Strategy for Nodes {
    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
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

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
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
