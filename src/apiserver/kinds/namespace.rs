//! core/v1 Namespace: label names, the `kubernetes` finalizer and the `Active` phase of a new
//! one. `Terminating` is set by the registry when a deletion is asked for; who may change
//! `spec.finalizers` (only `namespaces/<name>/finalize`) is the registry's rule too.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, NameRule, Strategy, plain, text};

pub struct Namespaces;

impl Strategy for Namespaces {
    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn default(&self, name: &str, obj: &mut Value) {
        // Labels that are not a map are left for validation to refuse (indexing into them
        // would panic).
        let labels = &mut obj["metadata"]["labels"];
        if labels.is_null() {
            *labels = json!({});
        }
        if let Some(labels) = labels.as_object_mut() {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
        if obj.pointer("/spec/finalizers").is_none() {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        // A replaced namespace keeps its phase: the registry carries the stored status over.
        if obj.pointer("/status/phase").is_none() {
            if !obj["status"].is_object() {
                obj["status"] = json!({});
            }
            obj["status"]["phase"] = json!("Active");
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 3] = [
    NAME,
    plain("Status", "The status of the namespace", 0, |n, _| {
        json!(text(n, "/status/phase"))
    }),
    AGE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_that_are_not_a_map_are_left_for_validation() {
        let mut ns = json!({"metadata": {"name": "bad", "labels": "x"}});
        Namespaces.default("bad", &mut ns);
        assert_eq!(ns["metadata"]["labels"], "x");
        let mut ns = json!({"metadata": {"name": "ok"}});
        Namespaces.default("ok", &mut ns);
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "ok"
        );
    }
}
