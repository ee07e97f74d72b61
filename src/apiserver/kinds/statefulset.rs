//! apps/v1 StatefulSet: Kubernetes' defaults (replicas, ordered pod management, a rolling
//! update from partition 0, history, retained claims, the template's pod defaults), a
//! selector that selects the template, a spec of which only replicas, ordinals, template,
//! updateStrategy, persistentVolumeClaimRetentionPolicy and minReadySeconds may change, and
//! the `kubectl get statefulsets` columns. `controllers::statefulset` makes their pods (claims
//! wait for storage).

use serde_json::{Value, json};

use super::workload::{self, CONTAINERS, IMAGES, count};
use super::{AGE, Column, NAME, Strategy, plain};

pub struct StatefulSets;

/// What an update may change in a StatefulSet's spec.
const MUTABLE: [&str; 6] = [
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

impl Strategy for StatefulSets {
    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        for (k, v) in [
            ("replicas", json!(1)),
            ("podManagementPolicy", json!("OrderedReady")),
            ("revisionHistoryLimit", json!(10)),
            (
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            ),
        ] {
            workload::or_insert(obj, "/spec", k, v);
        }
        if let Some(strategy) = workload::map_at(obj, "/spec/updateStrategy") {
            strategy.entry("type").or_insert(json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(r) = rolling.as_object_mut() {
                    r.entry("partition").or_insert(json!(0));
                }
            }
        }
        workload::default_template(obj, "/spec/template");
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        for p in [
            "/spec/replicas",
            "/spec/minReadySeconds",
            "/spec/revisionHistoryLimit",
            "/spec/updateStrategy/rollingUpdate/partition",
        ] {
            workload::non_negative(obj, p, causes);
        }
        workload::validate_controller(obj, "statefulset", &["Always"], causes);
        workload::one_of(
            obj,
            "/spec/podManagementPolicy",
            &["OrderedReady", "Parallel"],
            causes,
        );
        workload::one_of(
            obj,
            "/spec/updateStrategy/type",
            &["OnDelete", "RollingUpdate"],
            causes,
        );
        for (i, claim) in obj
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if claim
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(format!(
                    "spec.volumeClaimTemplates[{i}].metadata.name: Required value"
                ));
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        if fixed_view(old) != fixed_view(new) {
            causes.push(
                "spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into(),
            );
        }
    }

    fn has_generation(&self) -> bool {
        true
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

/// The spec without what an update may change: selector, serviceName, volumeClaimTemplates,
/// podManagementPolicy, revisionHistoryLimit and the rest.
fn fixed_view(obj: &Value) -> Value {
    let mut spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(m) = spec.as_object_mut() {
        for k in MUTABLE {
            m.remove(k);
        }
        // Kubernetes lets the history limit change too.
        m.remove("revisionHistoryLimit");
    }
    spec
}

static COLUMNS: [Column; 5] = [
    NAME,
    plain("Ready", "Number of the pod with ready state", 0, |s, _| {
        json!(format!(
            "{}/{}",
            count(s, "/status/readyReplicas"),
            count(s, "/spec/replicas")
        ))
    }),
    AGE,
    CONTAINERS,
    IMAGES,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Value {
        json!({"spec": {
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                         "spec": {"containers": [{"name": "db", "image": "postgres:17"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})
    }

    #[test]
    fn a_statefulset_gets_kubernetes_defaults() {
        let mut s = db();
        StatefulSets.default("db", &mut s);
        let spec = &s["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        let mut causes = Vec::new();
        StatefulSets.validate(&s, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn only_replicas_template_and_strategy_of_a_statefulset_change() {
        let mut old = db();
        StatefulSets.default("db", &mut old);
        let mut causes = Vec::new();
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        scaled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("postgres:18");
        StatefulSets.validate_update(&old, &scaled, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        for (field, value) in [
            ("serviceName", json!("other")),
            ("podManagementPolicy", json!("Parallel")),
            ("volumeClaimTemplates", json!([])),
            ("selector", json!({"matchLabels": {"app": "db", "x": "y"}})),
        ] {
            let mut changed = old.clone();
            changed["spec"][field] = value;
            let mut causes = Vec::new();
            StatefulSets.validate_update(&old, &changed, &mut causes);
            assert_eq!(causes.len(), 1, "{field}: {causes:?}");
            assert!(causes[0].starts_with("spec: Forbidden"), "{causes:?}");
        }

        let now = time::OffsetDateTime::now_utc();
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&scaled, now)).collect();
        assert_eq!(cells[1], "0/3");
        assert_eq!(cells[4], "postgres:18");
    }
}
