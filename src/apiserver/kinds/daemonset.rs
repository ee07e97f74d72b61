//! apps/v1 DaemonSet: Kubernetes' defaults (a rolling update of one node at a time, history,
//! the template's pod defaults), a selector that selects the template and may not change, and
//! the `kubectl get daemonsets` columns. `controllers::daemonset` makes their pods.

use serde_json::{Value, json};

use super::workload::{self, CONTAINERS, IMAGES, SELECTOR, count};
use super::{AGE, Column, NAME, Strategy, integer, or_none, plain};

pub struct DaemonSets;

impl Strategy for DaemonSets {
    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        workload::or_insert(obj, "/spec", "revisionHistoryLimit", json!(10));
        if let Some(strategy) = workload::map_at(obj, "/spec/updateStrategy") {
            strategy.entry("type").or_insert(json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(r) = rolling.as_object_mut() {
                    r.entry("maxUnavailable").or_insert(json!(1));
                    r.entry("maxSurge").or_insert(json!(0));
                }
            }
        }
        workload::default_template(obj, "/spec/template");
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        for p in ["/spec/minReadySeconds", "/spec/revisionHistoryLimit"] {
            workload::non_negative(obj, p, causes);
        }
        workload::validate_controller(obj, "daemonset", &["Always"], causes);
        workload::one_of(
            obj,
            "/spec/updateStrategy/type",
            &["OnDelete", "RollingUpdate"],
            causes,
        );
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        workload::immutable(old, new, "/spec/selector", causes);
    }

    fn has_generation(&self) -> bool {
        true
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 11] = [
    NAME,
    integer(
        "Desired",
        "The desired number of nodes that should be running the daemon pod.",
        0,
        |d, _| json!(count(d, "/status/desiredNumberScheduled")),
    ),
    integer(
        "Current",
        "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
        0,
        |d, _| json!(count(d, "/status/currentNumberScheduled")),
    ),
    integer(
        "Ready",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
        0,
        |d, _| json!(count(d, "/status/numberReady")),
    ),
    integer(
        "Up-to-date",
        "The total number of nodes that are running updated daemon pod",
        0,
        |d, _| json!(count(d, "/status/updatedNumberScheduled")),
    ),
    integer(
        "Available",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
        0,
        |d, _| json!(count(d, "/status/numberAvailable")),
    ),
    plain(
        "Node Selector",
        "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node.",
        0,
        |d, _| json!(node_selector(d)),
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

/// `spec.template.spec.nodeSelector` as `k=v,…` sorted by key, or `<none>`.
fn node_selector(d: &Value) -> String {
    let mut pairs: Vec<String> = d
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    or_none(pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemonset_rolls_one_node_at_a_time_by_default() {
        let mut ds = json!({"spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                                  "containers": [{"name": "agent", "image": "agent:1"}]}}}});
        DaemonSets.default("agent", &mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
        assert!(ds["spec"].get("replicas").is_none());
        let mut causes = Vec::new();
        DaemonSets.validate(&ds, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut moved = ds.clone();
        moved["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        moved["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        DaemonSets.validate_update(&ds, &moved, &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");

        let now = time::OffsetDateTime::now_utc();
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&ds, now)).collect();
        assert_eq!(
            cells[1..6],
            [json!(0), json!(0), json!(0), json!(0), json!(0)]
        );
        assert_eq!(cells[6], "kubernetes.io/os=linux");
    }
}
