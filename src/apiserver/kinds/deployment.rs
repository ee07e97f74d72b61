//! apps/v1 Deployment: Kubernetes' defaults (replicas, a 25 %/25 % rolling update, history and
//! progress deadline, the template's pod defaults), a selector that selects the template and
//! may not change, and the `kubectl get deployments` columns. `controllers::deployment` rolls
//! them out.

use serde_json::{Value, json};

use super::workload::{self, CONTAINERS, IMAGES, SELECTOR, count};
use super::{AGE, Column, NAME, Strategy, integer, plain};

pub struct Deployments;

impl Strategy for Deployments {
    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        for (k, v) in [
            ("replicas", json!(1)),
            ("revisionHistoryLimit", json!(10)),
            ("progressDeadlineSeconds", json!(600)),
        ] {
            workload::or_insert(obj, "/spec", k, v);
        }
        if let Some(strategy) = workload::map_at(obj, "/spec/strategy") {
            strategy.entry("type").or_insert(json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(r) = rolling.as_object_mut() {
                    r.entry("maxUnavailable").or_insert(json!("25%"));
                    r.entry("maxSurge").or_insert(json!("25%"));
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
            "/spec/progressDeadlineSeconds",
        ] {
            workload::non_negative(obj, p, causes);
        }
        workload::validate_controller(obj, "deployment", &["Always"], causes);
        workload::one_of(
            obj,
            "/spec/strategy/type",
            &["Recreate", "RollingUpdate"],
            causes,
        );
        if obj.pointer("/spec/strategy/type") == Some(&json!("Recreate"))
            && obj
                .pointer("/spec/strategy/rollingUpdate")
                .is_some_and(|r| !r.is_null())
        {
            causes.push(
                "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'".into(),
            );
        }
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
    NAME,
    plain("Ready", "Number of the pod with ready state", 0, |d, _| {
        json!(format!(
            "{}/{}",
            count(d, "/status/readyReplicas"),
            count(d, "/spec/replicas")
        ))
    }),
    integer(
        "Up-to-date",
        "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
        0,
        |d, _| json!(count(d, "/status/updatedReplicas")),
    ),
    integer(
        "Available",
        "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
        0,
        |d, _| json!(count(d, "/status/availableReplicas")),
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Value {
        json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}})
    }

    #[test]
    fn a_deployment_gets_kubernetes_defaults() {
        let mut d = web();
        Deployments.default("web", &mut d);
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            spec["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        let mut again = d.clone();
        Deployments.default("web", &mut again);
        assert_eq!(again, d);
        // A Recreate strategy gets no rolling update.
        let mut r = web();
        r["spec"]["strategy"] = json!({"type": "Recreate"});
        Deployments.default("web", &mut r);
        assert_eq!(r["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn a_deployment_is_validated_and_its_selector_is_fixed() {
        let mut d = web();
        Deployments.default("web", &mut d);
        let mut causes = Vec::new();
        Deployments.validate(&d, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut bad = d.clone();
        bad["spec"]["replicas"] = json!(-1);
        bad["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        bad["spec"]["strategy"]["type"] = json!("Sometimes");
        Deployments.validate(&bad, &mut causes);
        assert_eq!(causes.len(), 4, "{causes:?}");
        assert!(causes[0].starts_with("spec.replicas: Invalid value: -1"));
        assert!(causes[1].starts_with("spec.template.metadata.labels: Invalid value"));
        assert!(causes[2].starts_with("spec.template.spec.restartPolicy: Unsupported value"));
        assert!(causes[3].starts_with("spec.strategy.type: Unsupported value"));

        let mut causes = Vec::new();
        let mut scaled = d.clone();
        scaled["spec"]["replicas"] = json!(3);
        Deployments.validate_update(&d, &scaled, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut moved = d.clone();
        moved["spec"]["selector"] = json!({"matchLabels": {"app": "web", "v": "2"}});
        Deployments.validate_update(&d, &moved, &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert!(
            causes[0].starts_with("spec.selector: Invalid value")
                && causes[0].ends_with("field is immutable")
        );
    }

    #[test]
    fn a_deployment_row_shows_ready_of_desired() {
        let mut d = web();
        Deployments.default("web", &mut d);
        d["spec"]["replicas"] = json!(3);
        d["status"] = json!({"readyReplicas": 2, "updatedReplicas": 3});
        let now = time::OffsetDateTime::now_utc();
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&d, now)).collect();
        assert_eq!(cells[..4], [json!("web"), json!("2/3"), json!(3), json!(0)]);
        assert_eq!(
            cells[5..],
            [json!("web"), json!("nginx:1.27"), json!("app=web")]
        );
    }
}
