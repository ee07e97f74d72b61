//! One description per served kind: how its objects are defaulted, validated (on create and
//! against the stored object on update) and printed as `kubectl get` columns.
//!
//! Adding a kind is a file here with a [`Strategy`] and a row in [`super::resources`]; so is
//! adding a view of a stored kind in another group (its strategy converts). The
//! registry applies the strategy to every write, whoever makes it; checks common to every kind
//! (names, labels, the body's kind, size bounds) stay in the registry. Invariant: strategies
//! are pure functions of the objects they are given.

pub mod configmap;
pub mod controllerrevision;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod event;
pub mod events_v1;
pub mod job;
pub mod lease;
pub mod namespace;
pub mod node;
pub mod persistentvolume;
pub mod persistentvolumeclaim;
pub mod pod;
pub mod poddisruptionbudget;
pub mod rbac;
pub mod replicaset;
pub mod replicationcontroller;
pub mod secret;
pub mod service;
pub mod serviceaccount;
pub mod statefulset;
pub mod storageclass;
pub mod workload;

use std::borrow::Cow;

use serde_json::{Value, json};
use time::OffsetDateTime;

/// What a kind's names must be (Kubernetes' rules differ per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: most kinds.
    Subdomain,
    /// RFC 1123 label: namespaces.
    Label,
    /// RFC 1035 label (starts with a letter): services.
    Dns1035,
    /// Anything usable as one path segment (not `.` or `..`, no `/` or `%`): RBAC objects,
    /// whose names are like `system:basic-user`.
    PathSegment,
}

/// The per-kind behaviour the registry and the table printer use.
pub trait Strategy: Sync {
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Kubernetes' defaults for a new object (and for a replaced one, as the API server
    /// defaults every decoded body).
    fn default(&self, _name: &str, _obj: &mut Value) {}

    /// What the server sets on a new object whatever the client sent (a Namespace starts
    /// `Active`), before the defaults.
    fn prepare_create(&self, _obj: &mut Value) {}

    /// Field checks; one cause per problem, as `field.path: Invalid value: …`.
    fn validate(&self, _obj: &Value, _causes: &mut Vec<String>) {}

    /// Checks against the stored object: immutable fields.
    fn validate_update(&self, _old: &Value, _new: &Value, _causes: &mut Vec<String>) {}

    /// Checks only a new object gets (events.k8s.io's stricter rules for new Events).
    fn validate_create(&self, _obj: &Value, _causes: &mut Vec<String>) {}

    /// A view's object (in its group's form) as the stored resource keeps it. Stored kinds
    /// keep what they are given.
    fn to_stored<'a>(&self, obj: &'a Value) -> Cow<'a, Value> {
        Cow::Borrowed(obj)
    }

    /// A stored object in a view's form: the inverse of [`Strategy::to_stored`].
    fn to_served(&self, obj: Value) -> Value {
        obj
    }

    /// Whether the server keeps `metadata.generation`: 1 on create, one more each time an
    /// update changes `spec` (not on status or metadata-only writes).
    fn has_generation(&self) -> bool {
        false
    }

    /// The object's `spec.selector` (`selector`) as the `LabelSelector` that picks its pods.
    /// A kind whose selector has another form converts it here, so one selector code path
    /// serves every kind; `None` for one that selects nothing it can read.
    fn label_selector<'a>(&self, selector: &'a Value) -> Option<Cow<'a, Value>> {
        Some(Cow::Borrowed(selector))
    }

    /// The `kubectl get` columns, as the Kubernetes API server prints them.
    fn columns(&self) -> &'static [Column] {
        &NAME_AGE
    }
}

/// One column of a `meta.k8s.io/v1 Table`, with how to compute its cell.
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
    pub cell: fn(&Value, OffsetDateTime) -> Value,
}

// === columns every kind shares ===

pub const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: "Name must be unique within a namespace.",
    priority: 0,
    cell: |obj, _| json!(text(obj, "/metadata/name")),
};

pub const AGE: Column = Column {
    name: "Age",
    kind: "string",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
    cell: |obj, now| json!(age(&text(obj, "/metadata/creationTimestamp"), now)),
};

/// The columns of a kind without its own: what kubectl shows for any object.
pub static NAME_AGE: [Column; 2] = [NAME, AGE];

/// A column of a plain string field.
pub const fn plain(
    name: &'static str,
    description: &'static str,
    priority: u8,
    cell: fn(&Value, OffsetDateTime) -> Value,
) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description,
        priority,
        cell,
    }
}

/// A column of an integer field.
pub const fn integer(
    name: &'static str,
    description: &'static str,
    priority: u8,
    cell: fn(&Value, OffsetDateTime) -> Value,
) -> Column {
    Column {
        kind: "integer",
        ..plain(name, description, priority, cell)
    }
}

/// The string at `pointer`, or empty.
pub fn text(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `<none>` for an empty cell, as kubectl prints it.
pub fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

/// How many entries the maps at `pointers` hold together.
pub fn entries(obj: &Value, pointers: &[&str]) -> usize {
    pointers
        .iter()
        .filter_map(|p| obj.pointer(p).and_then(Value::as_object))
        .map(|m| m.len())
        .sum()
}

/// Refuses changes to `pointers` once the stored object says `immutable: true`, and refuses
/// unsetting it (ConfigMaps and Secrets).
pub fn immutable_data(old: &Value, new: &Value, pointers: &[&str], causes: &mut Vec<String>) {
    if old.get("immutable") != Some(&Value::Bool(true)) {
        return;
    }
    if new.get("immutable") != Some(&Value::Bool(true)) {
        causes.push("immutable: Forbidden: field is immutable when `immutable` is set".into());
    }
    for p in pointers {
        if old.pointer(p) != new.pointer(p) {
            causes.push(format!(
                "{}: Forbidden: field is immutable when `immutable` is set",
                p.trim_start_matches('/').replace('/', ".")
            ));
        }
    }
}

/// Keys of a ConfigMap's or Secret's data: `[-._a-zA-Z0-9]+`, at most 253 characters.
pub fn validate_data_keys(obj: &Value, field: &str, causes: &mut Vec<String>) {
    let Some(map) = obj.get(field) else { return };
    let Some(map) = map.as_object() else {
        if !map.is_null() {
            causes.push(format!("{field}: Invalid value: must be a map"));
        }
        return;
    };
    for key in map.keys() {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && key != "."
            && key != "..";
        if !ok {
            causes.push(format!(
                "{field}[{key:?}]: Invalid value: {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
            ));
        }
    }
}

/// Kubernetes' human-readable age (`45s`, `3m12s`, `5h`, `2d3h`, `90d`).
pub fn age(created: &str, now: OffsetDateTime) -> String {
    let Ok(t) = OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
    else {
        return "<unknown>".into();
    };
    let secs = (now - t).whole_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match () {
        _ if secs < 120 => format!("{secs}s"),
        _ if m < 10 => {
            let s = secs % 60;
            if s == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{s}s")
            }
        }
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => {
            let mm = m % 60;
            if mm == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{mm}m")
            }
        }
        _ if h < 48 => format!("{h}h"),
        _ if h < 192 => {
            let hh = h % 24;
            if hh == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{hh}h")
            }
        }
        _ if d < 730 => format!("{d}d"),
        _ => {
            let (y, dd) = (d / 365, d % 365);
            if y < 8 && dd != 0 {
                format!("{y}y{dd}d")
            } else {
                format!("{y}y")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = OffsetDateTime::parse(
            "2026-01-10T12:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(age("2026-01-10T11:59:15Z", now), "45s");
        assert_eq!(age("2026-01-10T11:56:48Z", now), "3m12s");
        assert_eq!(age("2026-01-10T07:00:00Z", now), "5h");
        assert_eq!(age("2026-01-07T09:00:00Z", now), "3d3h");
        assert_eq!(age("junk", now), "<unknown>");
    }

    #[test]
    fn immutable_data_may_not_change_or_become_mutable() {
        let old = json!({"immutable": true, "data": {"a": "1"}});
        let mut causes = Vec::new();
        immutable_data(
            &old,
            &json!({"immutable": true, "data": {"a": "1"}}),
            &["/data"],
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
        immutable_data(
            &old,
            &json!({"immutable": false, "data": {"a": "2"}}),
            &["/data"],
            &mut causes,
        );
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(causes[1].starts_with("data: Forbidden"), "{causes:?}");
    }

    #[test]
    fn config_keys_follow_kubernetes() {
        let mut causes = Vec::new();
        validate_data_keys(
            &json!({"data": {"app.conf": "", "a_b-c": "", "bad/key": "", "..": ""}}),
            "data",
            &mut causes,
        );
        assert_eq!(causes.len(), 2, "{causes:?}");
    }
}
