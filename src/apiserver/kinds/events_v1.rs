//! events.k8s.io/v1 Event: a view of the stored core/v1 Events in the newer API's field
//! names, with its stricter checks on create and its immutable fields on update.
//!
//! Kubernetes stores both as one object (its internal Event) and converts at the API edge
//! (pkg/apis/events/v1 conversion): `note` is core's `message`, `regarding` is
//! `involvedObject`, `reportingController` is `reportingComponent`, `deprecatedSource`,
//! `deprecatedFirstTimestamp`, `deprecatedLastTimestamp` and `deprecatedCount` are `source`,
//! `firstTimestamp`, `lastTimestamp` and `count`; the other fields share their names. So an
//! Event written through either API is read through both. Invariant: the conversion is a
//! bijection on the known fields; a field named in the other API's spelling is dropped on the
//! way through (it is unknown here), so it can never shadow the renamed one.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::{Column, Strategy, age, plain, text};
use crate::api::labels;

pub struct EventsV1;

/// (events.k8s.io name, core/v1 name) of every field the two APIs name differently.
const RENAMES: [(&str, &str); 7] = [
    ("note", "message"),
    ("regarding", "involvedObject"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Kubernetes' limits on an Event's strings (pkg/apis/core/validation/events.go).
const REPORTING_INSTANCE_LIMIT: usize = 128;
const ACTION_LIMIT: usize = 128;
const REASON_LIMIT: usize = 128;
const NOTE_LIMIT: usize = 1024;

/// What may not change once an Event exists, besides `series` (checked when it changes).
const IMMUTABLE: [&str; 13] = [
    "regarding",
    "reason",
    "note",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
    "type",
    "eventTime",
    "action",
    "related",
    "reportingController",
    "reportingInstance",
];

impl Strategy for EventsV1 {
    /// What every write gets, as Kubernetes checks Events of any version: an Event with an
    /// `eventTime` names who reported what; its subject lives in its namespace.
    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let namespace = text(obj, "/metadata/namespace");
        let subject_ns = text(obj, "/regarding/namespace");
        let new_style = !is_unset(obj.get("eventTime"));
        let ns_ok = match (subject_ns.is_empty(), new_style) {
            (true, false) => namespace.is_empty() || namespace == "default",
            (true, true) => namespace == "default" || namespace == "kube-system",
            (false, _) => subject_ns == namespace,
        };
        if !ns_ok {
            causes.push(format!(
                "regarding.namespace: Invalid value: {subject_ns:?}: does not match event.namespace {namespace:?}"
            ));
        }
        if !new_style {
            return;
        }
        let controller = text(obj, "/reportingController");
        if controller.is_empty() {
            causes.push(
                "reportingController: Required value: the controller that emitted the event, e.g. `kubernetes.io/kubelet`".into(),
            );
        } else if labels::validate_label_key(&controller).is_err() {
            causes.push(format!(
                "reportingController: Invalid value: {controller:?}: must be a qualified name (an optional DNS subdomain and '/', then at most 63 letters, digits, '-', '_' or '.')"
            ));
        }
        required_within(obj, "reportingInstance", REPORTING_INSTANCE_LIMIT, causes);
        required_within(obj, "action", ACTION_LIMIT, causes);
        required_within(obj, "reason", REASON_LIMIT, causes);
        if text(obj, "/note").len() > NOTE_LIMIT {
            causes.push(format!(
                "note: Invalid value: can have at most {NOTE_LIMIT} characters"
            ));
        }
    }

    /// events.k8s.io/v1's own rules for new Events (kube-apiserver's `ValidateEventCreate`).
    fn validate_create(&self, obj: &Value, causes: &mut Vec<String>) {
        if is_unset(obj.get("eventTime")) {
            causes.push(
                "eventTime: Required value: the time the event was first observed (a MicroTime, e.g. 2026-01-10T12:00:00.000000Z)".into(),
            );
        }
        let kind = text(obj, "/type");
        if kind != "Normal" && kind != "Warning" {
            causes.push(format!(
                "type: Invalid value: {kind:?}: must be \"Normal\" or \"Warning\""
            ));
        }
        validate_series(obj, causes);
        for field in [
            "deprecatedFirstTimestamp",
            "deprecatedLastTimestamp",
            "deprecatedCount",
        ] {
            if !is_unset(obj.get(field)) {
                causes.push(format!(
                    "{field}: Invalid value: needs to be unset on a new events.k8s.io/v1 Event"
                ));
            }
        }
        let source = obj.get("deprecatedSource");
        if !text(obj, "/deprecatedSource/component").is_empty()
            || !text(obj, "/deprecatedSource/host").is_empty()
        {
            causes.push(format!(
                "deprecatedSource: Invalid value: {}: needs to be unset on a new events.k8s.io/v1 Event",
                source.cloned().unwrap_or_default()
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        for field in IMMUTABLE {
            if unset_as_null(old.get(field)) != unset_as_null(new.get(field)) {
                causes.push(format!("{field}: Invalid value: field is immutable"));
            }
        }
        if old.get("series") != new.get("series") {
            validate_series(new, causes);
        }
    }

    fn to_stored<'a>(&self, obj: &'a Value) -> Cow<'a, Value> {
        let Value::Object(fields) = obj else {
            return Cow::Borrowed(obj);
        };
        let mut out = fields.clone();
        // core/v1 spellings are unknown fields here.
        for (_, core) in RENAMES {
            out.remove(core);
        }
        rename(&mut out, RENAMES.iter().map(|&(v1, core)| (v1, core)));
        out.insert("apiVersion".into(), json!("v1"));
        Cow::Owned(Value::Object(out))
    }

    fn to_served(&self, obj: Value) -> Value {
        let Value::Object(mut fields) = obj else {
            return obj;
        };
        for (v1, _) in RENAMES {
            fields.remove(v1);
        }
        rename(&mut fields, RENAMES.iter().map(|&(v1, core)| (core, v1)));
        fields.insert("apiVersion".into(), json!("events.k8s.io/v1"));
        // Required in this API (and written as null by kube-apiserver when unset): typed
        // clients fail on an Event without it, as old core Events are.
        fields.entry("eventTime").or_insert(Value::Null);
        Value::Object(fields)
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

/// Moves each `from` field to `to`.
fn rename<'a>(fields: &mut Map<String, Value>, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
    for (from, to) in pairs {
        if let Some(v) = fields.remove(from) {
            fields.insert(to.into(), v);
        }
    }
}

fn is_unset(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        _ => false,
    }
}

fn unset_as_null(v: Option<&Value>) -> &Value {
    match v {
        Some(v) if !is_unset(Some(v)) => v,
        _ => &Value::Null,
    }
}

fn required_within(obj: &Value, field: &str, limit: usize, causes: &mut Vec<String>) {
    let v = text(obj, &format!("/{field}"));
    if v.is_empty() {
        causes.push(format!("{field}: Required value"));
    } else if v.len() > limit {
        causes.push(format!(
            "{field}: Invalid value: can have at most {limit} characters"
        ));
    }
}

fn validate_series(obj: &Value, causes: &mut Vec<String>) {
    let Some(series) = obj.get("series").filter(|s| !s.is_null()) else {
        return;
    };
    if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
        causes.push("series.count: Invalid value: should be at least 2".into());
    }
    if is_unset(series.get("lastObservedTime")) {
        causes.push("series.lastObservedTime: Required value".into());
    }
}

/// kube-apiserver prints both APIs' Events alike (one printer for its internal Event), so
/// these are core's columns over this API's field names.
static COLUMNS: [Column; 5] = [
    plain(
        "Last Seen",
        "The last time the event was seen",
        0,
        |e, now| {
            let at = [
                "/deprecatedLastTimestamp",
                "/series/lastObservedTime",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .map(|p| text(e, p))
            .find(|t| !t.is_empty())
            .unwrap_or_default();
            json!(age(&at, now))
        },
    ),
    plain("Type", "Type of this event (Normal, Warning)", 0, |e, _| {
        json!(text(e, "/type"))
    }),
    plain(
        "Reason",
        "Short, machine understandable string that gives the reason for the transition into the object's current status.",
        0,
        |e, _| json!(text(e, "/reason")),
    ),
    plain(
        "Object",
        "The object that this event is about.",
        0,
        |e, _| {
            let kind = text(e, "/regarding/kind").to_lowercase();
            let name = text(e, "/regarding/name");
            json!(if name.is_empty() {
                kind
            } else {
                format!("{kind}/{name}")
            })
        },
    ),
    plain(
        "Message",
        "A human-readable description of the status of this operation.",
        0,
        |e, _| json!(text(e, "/note").trim()),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn v1_event() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "boot", "namespace": "default"},
            "eventTime": "2026-01-10T12:00:00.000000Z",
            "reportingController": "example.com/boot",
            "reportingInstance": "pi-1",
            "action": "Start",
            "reason": "Booted",
            "type": "Normal",
            "note": "up",
            "regarding": {"kind": "Node", "name": "pi-1"},
            "related": {"kind": "Pod", "name": "p", "namespace": "default"},
            "series": {"count": 2, "lastObservedTime": "2026-01-10T12:00:01.000000Z"},
        })
    }

    #[test]
    fn fields_map_to_core_names_and_back() {
        let v1 = v1_event();
        let core = EventsV1.to_stored(&v1).into_owned();
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["message"], "up");
        assert_eq!(core["involvedObject"]["kind"], "Node");
        assert_eq!(core["reportingComponent"], "example.com/boot");
        for same in [
            "eventTime",
            "reportingInstance",
            "action",
            "reason",
            "type",
            "related",
            "series",
        ] {
            assert_eq!(core[same], v1[same], "{same}");
        }
        for (name, _) in RENAMES {
            assert!(core.get(name).is_none(), "{name} left in {core}");
        }
        assert_eq!(EventsV1.to_served(core), v1);
    }

    #[test]
    fn a_core_event_reads_with_deprecated_fields_and_a_null_event_time() {
        let core = json!({
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
            "message": "m", "count": 3, "firstTimestamp": "2026-01-10T12:00:00Z",
            "lastTimestamp": "2026-01-10T12:05:00Z", "source": {"component": "kubelet"},
        });
        let v1 = EventsV1.to_served(core.clone());
        assert_eq!(v1["apiVersion"], "events.k8s.io/v1");
        assert_eq!(v1["note"], "m");
        assert_eq!(v1["deprecatedCount"], 3);
        assert_eq!(v1["deprecatedLastTimestamp"], "2026-01-10T12:05:00Z");
        assert_eq!(v1["deprecatedSource"]["component"], "kubelet");
        assert_eq!(v1["eventTime"], Value::Null);
        // The null eventTime goes back as it came: unset.
        let back = EventsV1.to_stored(&v1).into_owned();
        assert_eq!(back["message"], "m");
        assert_eq!(back["count"], 3);
    }

    #[test]
    fn another_apis_spelling_cannot_shadow_a_field() {
        let mut v1 = v1_event();
        v1["message"] = json!("sneaked in");
        let core = EventsV1.to_stored(&v1).into_owned();
        assert_eq!(core["message"], "up");
    }

    #[test]
    fn new_events_need_who_reported_what() {
        let mut causes = Vec::new();
        let mut e = v1_event();
        EventsV1.validate(&e, &mut causes);
        EventsV1.validate_create(&e, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        e.as_object_mut().unwrap().remove("reportingController");
        e.as_object_mut().unwrap().remove("eventTime");
        e["deprecatedCount"] = json!(4);
        EventsV1.validate_create(&e, &mut causes);
        // Without an eventTime, the legacy rules ask for no reporter.
        EventsV1.validate(&e, &mut causes);
        assert!(
            causes[0].starts_with("eventTime: Required value"),
            "{causes:?}"
        );
        assert!(
            causes[1].starts_with("deprecatedCount: Invalid"),
            "{causes:?}"
        );
        assert_eq!(causes.len(), 2, "{causes:?}");
        causes.clear();
        e["eventTime"] = json!("2026-01-10T12:00:00.000000Z");
        EventsV1.validate(&e, &mut causes);
        assert_eq!(
            causes,
            [
                "reportingController: Required value: the controller that emitted the event, e.g. `kubernetes.io/kubelet`"
            ]
        );
    }

    #[test]
    fn only_the_series_may_change() {
        let old = v1_event();
        let mut new = old.clone();
        new["series"] = json!({"count": 3, "lastObservedTime": "2026-01-10T12:00:02.000000Z"});
        let mut causes = Vec::new();
        EventsV1.validate_update(&old, &new, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        new["note"] = json!("changed");
        new["series"]["count"] = json!(1);
        EventsV1.validate_update(&old, &new, &mut causes);
        assert_eq!(
            causes,
            [
                "note: Invalid value: field is immutable",
                "series.count: Invalid value: should be at least 2"
            ]
        );
    }
}
