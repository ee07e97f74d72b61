//! Server-side printing: `meta.k8s.io/v1 Table` for `kubectl get`, with the same columns
//! (and `-o wide` priorities) as the Kubernetes API server.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::resources::Resource;

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
        resource
            .strategy
            .columns()
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
            let cells: Vec<Value> = resource
                .strategy
                .columns()
                .iter()
                .map(|c| (c.cell)(obj, now))
                .collect();
            let mut row = json!({"cells": cells});
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{LEASES, NODES};

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
