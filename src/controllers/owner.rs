//! What the workload controllers share about objects: keys, controller references, and pod
//! states as Kubernetes' controllers judge them.
//!
//! A key is `namespace/name`. A controller reference is the one `ownerReferences` entry with
//! `controller: true`; an object has at most one, and only its controller may act on it.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::apiserver::kinds::workload::selects;
use crate::apiserver::registry::Part;
use crate::apiserver::resources::{ObjectRef, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::Context;
use crate::runtime::frozen::{AsJson, Json};

/// `namespace/name` of an object.
pub fn key_of<O: AsJson>(obj: &O) -> Option<String> {
    let obj = obj.json();
    let name = obj.pointer("/metadata/name").and_then(Json::as_str)?;
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Json::as_str)
        .unwrap_or_default();
    Some(format!("{ns}/{name}"))
}

/// The reference a key names.
pub fn ref_of(resource: &'static Resource, key: &str) -> ObjectRef {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    ObjectRef {
        resource,
        namespace: resource.namespaced.then(|| ns.to_owned()),
        name: name.to_owned(),
    }
}

pub fn uid<O: AsJson>(obj: &O) -> &str {
    let obj = obj.json();
    obj.pointer("/metadata/uid")
        .and_then(Json::as_str)
        .unwrap_or_default()
}

pub fn name<O: AsJson>(obj: &O) -> &str {
    let obj = obj.json();
    obj.pointer("/metadata/name")
        .and_then(Json::as_str)
        .unwrap_or_default()
}

pub fn namespace<O: AsJson>(obj: &O) -> &str {
    let obj = obj.json();
    obj.pointer("/metadata/namespace")
        .and_then(Json::as_str)
        .unwrap_or_default()
}

/// The controller reference: `(kind, name, uid)`.
pub fn controller_of<O: AsJson>(obj: &O) -> Option<(&str, &str, &str)> {
    let obj = obj.json();
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default(),
                r["uid"].as_str().unwrap_or_default(),
            )
        })
}

/// Whether `obj` is controlled by `owner` (by uid: a namesake made later is another owner).
pub fn is_controlled_by(obj: &impl AsJson, owner: &impl AsJson) -> bool {
    controller_of(obj).is_some_and(|(_, _, u)| u == uid(owner))
}

/// The controller reference `owner` (of `resource`) puts on what it makes or adopts.
pub fn controller_ref(resource: &Resource, owner: &impl AsJson) -> Value {
    json!({
        "apiVersion": resource.api_version(),
        "kind": resource.kind,
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The `LabelSelector` that picks `obj`'s pods (`obj` of `resource`), whatever form its kind
/// writes it in; null (which selects everything) when it has none.
pub fn selector(resource: &Resource, obj: &impl AsJson) -> Value {
    let Some(selector) = obj.json().pointer("/spec/selector").map(Json::thaw) else {
        return Value::Null;
    };
    resource
        .strategy
        .label_selector(&selector)
        .map(std::borrow::Cow::into_owned)
        .unwrap_or(Value::Null)
}

pub fn labels<O: AsJson>(obj: &O) -> &O::J {
    let obj = obj.json();
    obj.pointer("/metadata/labels").unwrap_or(Json::null())
}

pub fn is_terminating<O: AsJson>(obj: &O) -> bool {
    let obj = obj.json();
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

pub fn generation<O: AsJson>(obj: &O) -> i64 {
    let obj = obj.json();
    obj.pointer("/metadata/generation")
        .and_then(Json::as_i64)
        .unwrap_or(0)
}

/// A pod that counts toward its controller's replicas: not finished, not being deleted.
pub fn is_active<O: AsJson>(pod: &O) -> bool {
    let pod = pod.json();
    !is_terminating(pod)
        && !matches!(
            pod.pointer("/status/phase").and_then(Json::as_str),
            Some("Succeeded" | "Failed")
        )
}

/// A pod that has not finished (it may be on its way out).
pub fn is_active_or_terminating<O: AsJson>(pod: &O) -> bool {
    let pod = pod.json();
    !matches!(
        pod.pointer("/status/phase").and_then(Json::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn ready_condition<O: AsJson>(pod: &O) -> Option<&O::J> {
    let pod = pod.json();
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

pub fn is_ready<O: AsJson>(pod: &O) -> bool {
    ready_condition(pod).is_some_and(|c| c["status"] == "True")
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available<O: AsJson>(pod: &O, min_ready_seconds: i64, now: OffsetDateTime) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_condition(pod)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .is_some_and(|since| (now - since).whole_seconds() >= min_ready_seconds)
}

/// An RFC 3339 timestamp, or the epoch for one missing or malformed (sorts first).
pub fn timestamp<O: AsJson>(obj: &O, pointer: &str) -> OffsetDateTime {
    let obj = obj.json();
    obj.pointer(pointer)
        .and_then(Json::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// An int-or-percent (`maxSurge: 1`, `maxUnavailable: "25%"`) in pods out of `total`,
/// percentages rounded up or down; `default` when absent or malformed.
pub fn scaled<O: AsJson>(v: &O, total: i64, round_up: bool, default: &str) -> i64 {
    let v = v.json();
    // Saturating: the percentage is the user's text, and an overflow must not wrap or panic.
    let percent = |p: i64| {
        let scaled = p.saturating_mul(total);
        if round_up {
            scaled.saturating_add(99) / 100
        } else {
            scaled / 100
        }
    };
    let from_text = |s: &str| match s.strip_suffix('%') {
        Some(p) => p.parse::<i64>().ok().map(percent),
        None => s.parse::<i64>().ok(),
    };
    v.as_i64()
        .or_else(|| v.as_str().and_then(from_text))
        .or_else(|| from_text(default))
        .unwrap_or(0)
        .max(0)
}

/// An `int32` field, or `default` if absent.
pub fn int<O: AsJson>(obj: &O, pointer: &str, default: i64) -> i64 {
    let obj = obj.json();
    obj.pointer(pointer)
        .and_then(Json::as_i64)
        .unwrap_or(default)
}

/// The keys a change concerns for the controller of `owners` whose objects are `children`:
/// the owner itself when it changed; for a child (as it was or is now), its controller of
/// that kind, or — an orphan — every owner whose selector would adopt it.
pub fn owner_keys(
    change: &Change,
    cache: &Cache,
    owners: &'static Resource,
    children: &'static Resource,
) -> Vec<String> {
    if change.resource == owners {
        return change.object().and_then(key_of).into_iter().collect();
    }
    if change.resource != children {
        return vec![];
    }
    let mut keys = vec![];
    for o in [change.old.as_deref(), change.new.as_deref()]
        .into_iter()
        .flatten()
    {
        match controller_of(o) {
            Some((kind, name, _)) if kind == owners.kind => {
                keys.push(format!("{}/{name}", namespace(o)))
            }
            Some(_) => {}
            None => keys.extend(
                cache
                    .list_in(owners, namespace(o))
                    .iter()
                    .filter(|x| selects(&selector(owners, x), labels(o)))
                    .filter_map(key_of),
            ),
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Every cached object of `resource`, as keys.
pub fn all_keys(cache: &Cache, resource: &'static Resource) -> Vec<String> {
    cache.list(resource).iter().filter_map(key_of).collect()
}

/// The reference of a cached object of `resource`.
pub fn ref_to(resource: &'static Resource, obj: &impl AsJson) -> ObjectRef {
    ObjectRef {
        resource,
        namespace: resource.namespaced.then(|| namespace(obj).to_owned()),
        name: name(obj).to_owned(),
    }
}

/// Deletes `obj` (of `resource`); one already gone is fine.
pub async fn delete(
    ctx: &Context,
    resource: &'static Resource,
    obj: &(impl AsJson + Sync),
) -> Result<(), ApiError> {
    match ctx.registry.delete(&ref_to(resource, obj), None).await {
        Ok(last) => {
            ctx.wrote(&last);
            Ok(())
        }
        Err(ApiError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes the fields of `status` into the status of `obj` (of `resource`), unless they are
/// already what it shows. An object gone meanwhile is fine.
pub async fn write_status(
    ctx: &Context,
    resource: &'static Resource,
    obj: &(impl AsJson + Sync),
    status: &Value,
) -> Result<(), ApiError> {
    let fields = status.as_object().into_iter().flatten();
    if fields
        .clone()
        .all(|(k, v)| obj.json()["status"][k.as_str()] == *v)
    {
        return Ok(());
    }
    match ctx
        .registry
        .modify(&ref_to(resource, obj), Part::Status, |o| {
            for (k, v) in fields.clone() {
                o["status"][k] = v.clone();
            }
        })
        .await
    {
        Ok(o) => {
            ctx.wrote(&o);
            Ok(())
        }
        Err(ApiError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_references_are_found_by_uid() {
        let owner = json!({"metadata": {"name": "web", "uid": "u1"}});
        let pod = json!({"metadata": {"ownerReferences": [
            {"kind": "Other", "name": "x", "uid": "u0"},
            {"kind": "ReplicaSet", "name": "web", "uid": "u1", "controller": true}
        ]}});
        assert_eq!(controller_of(&pod), Some(("ReplicaSet", "web", "u1")));
        assert!(is_controlled_by(&pod, &owner));
        let namesake = json!({"metadata": {"name": "web", "uid": "u2"}});
        assert!(!is_controlled_by(&pod, &namesake));
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let pod = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]}});
        let t = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
        assert!(is_available(&pod, 0, t("2026-01-01T00:00:00Z")));
        assert!(!is_available(&pod, 10, t("2026-01-01T00:00:05Z")));
        assert!(is_available(&pod, 10, t("2026-01-01T00:00:10Z")));
        assert!(is_active(&pod));
        assert!(!is_active(&json!({"status": {"phase": "Succeeded"}})));
    }
}
