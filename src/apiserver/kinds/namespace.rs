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
        obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
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
