//! apps/v1 ReplicaSet: one replica by default, the template's pod defaults, a selector that
//! selects the template and may not change, and the `kubectl get replicasets` columns.

use serde_json::{Value, json};

use super::workload::{self, CONTAINERS, IMAGES, SELECTOR, count};
use super::{AGE, Column, NAME, Strategy, integer};

pub struct ReplicaSets;

impl Strategy for ReplicaSets {
    fn default(&self, _name: &str, obj: &mut Value) {
        workload::or_insert(obj, "/spec", "replicas", json!(1));
        workload::default_template(obj, "/spec/template");
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        for p in ["/spec/replicas", "/spec/minReadySeconds"] {
            workload::non_negative(obj, p, causes);
        }
        workload::validate_controller(obj, "replicaset", &["Always"], causes);
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

static COLUMNS: [Column; 8] = [
    NAME, DESIRED, CURRENT, READY, AGE, CONTAINERS, IMAGES, SELECTOR,
];

/// The counts ReplicaSets and ReplicationControllers print.
pub const DESIRED: Column = integer("Desired", "Number of desired pods.", 0, |r, _| {
    json!(count(r, "/spec/replicas"))
});

pub const CURRENT: Column = integer("Current", "Number of actual running pods.", 0, |r, _| {
    json!(count(r, "/status/replicas"))
});

pub const READY: Column = integer("Ready", "Number of ready pods.", 0, |r, _| {
    json!(count(r, "/status/readyReplicas"))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicaset_gets_one_replica_and_keeps_its_selector() {
        let mut rs = json!({"spec": {
            "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        ReplicaSets.default("web", &mut rs);
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(rs["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        let mut causes = Vec::new();
        ReplicaSets.validate(&rs, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");

        let mut other = rs.clone();
        other["spec"]["selector"]["matchExpressions"][0]["values"] = json!(["db"]);
        ReplicaSets.validate(&other, &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");
        ReplicaSets.validate_update(&rs, &other, &mut causes);
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(causes[1].starts_with("spec.selector: Invalid value"));

        rs["status"] = json!({"replicas": 1});
        let now = time::OffsetDateTime::now_utc();
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&rs, now)).collect();
        assert_eq!(cells[1..4], [json!(1), json!(1), json!(0)]);
        assert_eq!(cells[7], "app in (web)");
    }
}
