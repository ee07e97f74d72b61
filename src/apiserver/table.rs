//! Server-side printing: `meta.k8s.io/v1 Table` for `kubectl get`, with the same columns
//! (and `-o wide` priorities) as the Kubernetes API server.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::resources::{Printer, Resource};

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

const fn col(
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
) -> Column {
    Column {
        name,
        kind,
        format,
        description,
        priority,
    }
}

const NODE: [Column; 10] = [
    col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    ),
    col("Status", "string", "", "The status of the node", 0),
    col("Roles", "string", "", "The roles of the node", 0),
    col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    ),
    col(
        "Version",
        "string",
        "",
        "Kubelet Version reported by the node.",
        0,
    ),
    col(
        "Internal-IP",
        "string",
        "",
        "List of addresses reachable to the node.",
        1,
    ),
    col(
        "External-IP",
        "string",
        "",
        "List of addresses reachable to the node.",
        1,
    ),
    col(
        "OS-Image",
        "string",
        "",
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
        1,
    ),
    col(
        "Kernel-Version",
        "string",
        "",
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
        1,
    ),
    col(
        "Container-Runtime",
        "string",
        "",
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
        1,
    ),
];

const NAMESPACE: [Column; 3] = [
    col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    ),
    col("Status", "string", "", "The status of the namespace", 0),
    col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    ),
];

const POD: [Column; 9] = [
    col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    ),
    col(
        "Ready",
        "string",
        "",
        "The aggregate readiness state of this pod for accepting traffic.",
        0,
    ),
    col(
        "Status",
        "string",
        "",
        "The aggregate status of the containers in this pod.",
        0,
    ),
    col(
        "Restarts",
        "string",
        "",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        0,
    ),
    col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    ),
    col(
        "IP",
        "string",
        "",
        "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
        1,
    ),
    col(
        "Node",
        "string",
        "",
        "NodeName is a request to schedule this pod onto a specific node.",
        1,
    ),
    col(
        "Nominated Node",
        "string",
        "",
        "nominatedNodeName is set when this pod preempts other pods on the node.",
        1,
    ),
    col(
        "Readiness Gates",
        "string",
        "",
        "If specified, all readiness gates will be evaluated for pod readiness.",
        1,
    ),
];

const LEASE: [Column; 3] = [
    col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    ),
    col(
        "Holder",
        "string",
        "",
        "holderIdentity contains the identity of the holder of a current lease.",
        0,
    ),
    col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    ),
];

fn columns(printer: Printer) -> &'static [Column] {
    match printer {
        Printer::Node => &NODE,
        Printer::Namespace => &NAMESPACE,
        Printer::Pod => &POD,
        Printer::Lease => &LEASE,
    }
}

/// What a row carries besides its cells (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

/// A Table of `items`. Column definitions are left out when `definitions` is false (later
/// watch events, as the Kubernetes API server does).
pub fn table(
    resource: &Resource,
    items: &[Value],
    resource_version: Option<String>,
    include: Include,
    definitions: bool,
) -> Value {
    let defs: Vec<Value> = if definitions {
        columns(resource.printer)
            .iter()
            .map(|c| {
                json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority})
            })
            .collect()
    } else {
        Vec::new()
    };
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(resource.printer, obj, now)});
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or_default(),
                    })
                }
                Include::Object => row["object"] = obj.clone(),
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

fn cells(printer: Printer, obj: &Value, now: OffsetDateTime) -> Vec<Value> {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let name = s("/metadata/name");
    let age = age(&s("/metadata/creationTimestamp"), now);
    match printer {
        Printer::Node => {
            let addr = |kind: &str| {
                obj.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|x| x["type"] == kind))
                    .and_then(|x| x["address"].as_str())
                    .unwrap_or("<none>")
                    .to_owned()
            };
            vec![
                json!(name),
                json!(node_status(obj)),
                json!(node_roles(obj)),
                json!(age),
                json!(s("/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(or_unknown(s("/status/nodeInfo/osImage"))),
                json!(or_unknown(s("/status/nodeInfo/kernelVersion"))),
                json!(or_unknown(s("/status/nodeInfo/containerRuntimeVersion"))),
            ]
        }
        Printer::Namespace => vec![json!(name), json!(s("/status/phase")), json!(age)],
        // An unheld lease shows an empty holder, as the Kubernetes API server prints it.
        Printer::Lease => vec![json!(name), json!(s("/spec/holderIdentity")), json!(age)],
        Printer::Pod => {
            let containers = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
            let restarts: i64 = statuses.map_or(0, |s| {
                s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
            });
            let none = |v: String| if v.is_empty() { "<none>".to_owned() } else { v };
            vec![
                json!(name),
                json!(format!("{ready}/{containers}")),
                json!(s("/status/phase")),
                json!(restarts.to_string()),
                json!(age),
                json!(none(s("/status/podIP"))),
                json!(none(s("/spec/nodeName"))),
                json!("<none>"),
                json!("<none>"),
            ]
        }
    }
}

fn or_unknown(v: String) -> String {
    if v.is_empty() { "<unknown>".into() } else { v }
}

/// `Ready`, `NotReady` or `Unknown`, plus `,SchedulingDisabled` when cordoned.
pub fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str());
    let mut status = match ready {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    }
    .to_owned();
    if node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// Roles from `node-role.kubernetes.io/<role>` and `kubernetes.io/role` labels.
fn node_roles(node: &Value) -> String {
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

/// Kubernetes's human-readable age (`45s`, `3m12s`, `5h`, `2d3h`, `90d`).
pub fn age(created: &str, now: OffsetDateTime) -> String {
    let Ok(t) = OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
    else {
        return "<unknown>".into();
    };
    let secs = (now - t).whole_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match () {
        _ if secs < 120 => format!("{secs}s"),
        _ if m < 10 => {
            let s = secs % 60;
            if s == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{s}s")
            }
        }
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => {
            let mm = m % 60;
            if mm == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{mm}m")
            }
        }
        _ if h < 48 => format!("{h}h"),
        _ if h < 192 => {
            let hh = h % 24;
            if hh == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{hh}h")
            }
        }
        _ if d < 730 => format!("{d}d"),
        _ => {
            let (y, dd) = (d / 365, d % 365);
            if y < 8 && dd != 0 {
                format!("{y}y{dd}d")
            } else {
                format!("{y}y")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{LEASES, NODES};

    #[test]
    fn ages_read_like_kubectl() {
        let now = OffsetDateTime::parse(
            "2026-01-10T12:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(age("2026-01-10T11:59:15Z", now), "45s");
        assert_eq!(age("2026-01-10T11:56:48Z", now), "3m12s");
        assert_eq!(age("2026-01-10T07:00:00Z", now), "5h");
        assert_eq!(age("2026-01-07T09:00:00Z", now), "3d3h");
        assert_eq!(age("junk", now), "<unknown>");
    }

    #[test]
    fn node_row_shows_status_and_roles() {
        let node = json!({
            "metadata": {"name": "pi", "labels": {"node-role.kubernetes.io/control-plane": "true"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.32.0"}}
        });
        let t = table(&NODES, &[node], Some("5".into()), Include::Metadata, true);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "Ready,SchedulingDisabled");
        assert_eq!(cells[2], "control-plane");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 10);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn lease_row_shows_the_holder() {
        let lease = json!({
            "metadata": {"name": "keelson-controllers", "namespace": "kube-system"},
            "spec": {"holderIdentity": "pi-1-42", "leaseDurationSeconds": 15}
        });
        let t = table(&LEASES, &[lease], None, Include::None, true);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["Name", "Holder", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "keelson-controllers");
        assert_eq!(cells[1], "pi-1-42");
        assert!(t["rows"][0].get("object").is_none());
    }
}
