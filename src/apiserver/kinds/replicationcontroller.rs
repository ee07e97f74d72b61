//! core/v1 ReplicationController: the ReplicaSet's predecessor, whose `spec.selector` is a
//! plain label map (`{app: web}`, what a ReplicaSet writes as `matchLabels`). One replica by
//! default; an empty selector, and empty labels, are taken from the template, as Kubernetes
//! does; the selector must select the template; the `kubectl get rc` columns.
//!
//! Everything that selects pods reads the selector through [`Strategy::label_selector`], which
//! gives the `LabelSelector` form, so the ReplicaSet machinery (controller, scale, columns)
//! runs ReplicationControllers unchanged. Unlike a ReplicaSet's, the selector may change.

use std::borrow::Cow;

use serde_json::{Value, json};

use super::replicaset::{CURRENT, DESIRED, READY};
use super::workload::{self, CONTAINERS, IMAGES, selector_string};
use super::{AGE, Column, NAME, Strategy, or_none, plain};

pub struct ReplicationControllers;

impl Strategy for ReplicationControllers {
    fn default(&self, _name: &str, obj: &mut Value) {
        workload::or_insert(obj, "/spec", "replicas", json!(1));
        let template_labels = obj
            .pointer("/spec/template/metadata/labels")
            .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
            .cloned();
        if let Some(labels) = template_labels {
            let empty =
                |v: Option<&Value>| v.is_none_or(|v| v.as_object().is_none_or(|m| m.is_empty()));
            if empty(obj.pointer("/spec/selector"))
                && let Some(spec) = workload::map_at(obj, "/spec")
            {
                spec.insert("selector".into(), labels.clone());
            }
            if empty(obj.pointer("/metadata/labels"))
                && let Some(meta) = workload::map_at(obj, "/metadata")
            {
                meta.insert("labels".into(), labels);
            }
        }
        workload::default_template(obj, "/spec/template");
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        for p in ["/spec/replicas", "/spec/minReadySeconds"] {
            workload::non_negative(obj, p, causes);
        }
        let selector = match obj.pointer("/spec/selector") {
            None | Some(Value::Null) => {
                causes.push("spec.selector: Required value".into());
                None
            }
            Some(Value::Object(m)) if m.is_empty() => {
                causes.push("spec.selector: Required value".into());
                None
            }
            Some(s @ Value::Object(m)) if m.values().all(Value::is_string) => {
                Some(as_label_selector(s))
            }
            Some(other) => {
                causes.push(format!(
                    "spec.selector: Invalid value: {other}: must be a map of label names to values"
                ));
                None
            }
        };
        workload::validate_template(
            obj.pointer("/spec/template"),
            selector.as_ref(),
            "spec",
            &["Always"],
            causes,
        );
    }

    fn has_generation(&self) -> bool {
        true
    }

    fn label_selector<'a>(&self, selector: &'a Value) -> Option<Cow<'a, Value>> {
        selector
            .is_object()
            .then(|| Cow::Owned(as_label_selector(selector)))
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

/// The selector (a label map) as a `LabelSelector`: `{matchLabels: selector}`.
fn as_label_selector(selector: &Value) -> Value {
    json!({"matchLabels": selector})
}

static COLUMNS: [Column; 8] = [
    NAME,
    DESIRED,
    CURRENT,
    READY,
    AGE,
    CONTAINERS,
    IMAGES,
    // A ReplicaSet's SELECTOR column, reading the label map as a LabelSelector.
    plain(
        "Selector",
        "Label selector for pods; the pods it selects are the ones this controller manages.",
        1,
        |o, _| {
            let selector = as_label_selector(o.pointer("/spec/selector").unwrap_or(&Value::Null));
            json!(or_none(selector_string(Some(&selector))))
        },
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replication_controller_takes_its_selector_from_the_template() {
        let mut rc = json!({"metadata": {"name": "web"}, "spec": {
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        ReplicationControllers.default("web", &mut rc);
        assert_eq!(rc["spec"]["replicas"], 1);
        assert_eq!(rc["spec"]["selector"], json!({"app": "web"}));
        assert_eq!(rc["metadata"]["labels"], json!({"app": "web"}));
        let mut causes = Vec::new();
        ReplicationControllers.validate(&rc, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");

        rc["status"] = json!({"replicas": 2, "readyReplicas": 1});
        let now = time::OffsetDateTime::now_utc();
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&rc, now)).collect();
        assert_eq!(cells[1..4], [json!(1), json!(2), json!(1)]);
        assert_eq!(cells[7], "app=web");
    }

    #[test]
    fn a_selector_that_misses_the_template_or_is_not_a_map_is_refused() {
        let rc = |selector: Value| {
            json!({"spec": {"replicas": 1, "selector": selector,
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
        };
        let mut causes = Vec::new();
        ReplicationControllers.validate(&rc(json!({"app": "db"})), &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert!(causes[0].starts_with("spec.template.metadata.labels: Invalid value"));
        causes.clear();
        ReplicationControllers.validate(&rc(json!({"app": 1})), &mut causes);
        assert!(
            causes[0].starts_with("spec.selector: Invalid value"),
            "{causes:?}"
        );
        causes.clear();
        ReplicationControllers.validate(&rc(json!({})), &mut causes);
        assert_eq!(causes, ["spec.selector: Required value"]);
    }
}
