//! core/v1 Namespace: label names, the `kubernetes` finalizer and `Active` phase.

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
