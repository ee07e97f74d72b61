//! apps/v1 ControllerRevision: an immutable snapshot of a DaemonSet's or StatefulSet's
//! template, with its revision number, and the `kubectl get controllerrevisions` columns.

use serde_json::{Value, json};

use super::workload;
use super::{AGE, Column, NAME, Strategy, integer, plain, text};

pub struct ControllerRevisions;

impl Strategy for ControllerRevisions {
    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        workload::non_negative(obj, "/revision", causes);
        if obj.get("data").is_none_or(Value::is_null) {
            causes.push("data: Required value: data is mandatory".into());
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        workload::immutable(old, new, "/data", causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 4] = [
    NAME,
    plain("Controller", "Controller of the object", 0, |r, _| {
        json!(controller(r))
    }),
    integer(
        "Revision",
        "Revision indicates the revision of the state represented by Data.",
        0,
        |r, _| json!(workload::count(r, "/revision")),
    ),
    AGE,
];

/// `daemonset.apps/web` for the owner reference marked controller, or `<none>`.
fn controller(r: &Value) -> String {
    let owner = r
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|o| o["controller"] == true);
    let Some(owner) = owner else {
        return "<none>".into();
    };
    let group = text(owner, "/apiVersion")
        .rsplit_once('/')
        .map(|(g, _)| g.to_owned())
        .unwrap_or_default();
    let kind = text(owner, "/kind").to_lowercase();
    let name = text(owner, "/name");
    if group.is_empty() {
        format!("{kind}/{name}")
    } else {
        format!("{kind}.{group}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_keeps_its_data_and_names_its_controller() {
        let rev = json!({"metadata": {"name": "web-5d8f", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "web", "uid": "u", "controller": true}]},
            "data": {"spec": {}}, "revision": 2});
        let mut causes = Vec::new();
        ControllerRevisions.validate(&rev, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        ControllerRevisions.validate(&json!({"revision": -1}), &mut causes);
        assert_eq!(causes.len(), 2, "{causes:?}");
        let mut changed = rev.clone();
        changed["data"] = json!({"spec": {"x": 1}});
        let mut causes = Vec::new();
        ControllerRevisions.validate_update(&rev, &changed, &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");
        let now = time::OffsetDateTime::now_utc();
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&rev, now)).collect();
        assert_eq!(cells[1..3], [json!("daemonset.apps/web"), json!(2)]);
    }
}
