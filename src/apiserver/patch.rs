//! The three patch formats kubectl sends: JSON merge patch (RFC 7386), strategic merge patch
//! (the subset of Kubernetes's rules that the served kinds need) and JSON patch (RFC 6902).
//!
//! Pure functions over `serde_json::Value`; the caller retries them against the newest
//! object on a conflict, so concurrent patches all apply.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("a JSON patch must be an array of operations")]
    NotAnArray,
    #[error("JSON patch operation {index}: {reason}")]
    Operation { index: usize, reason: String },
    #[error("the strategic merge patch is invalid: {0}")]
    Strategic(String),
    #[error("too large {limit}")]
    TooLarge { limit: usize },
    #[error("too deep {limit}")]
    TooDeep { limit: usize },
    #[error("too many {limit}")]
    TooManyOperations { limit: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Merge,
    Strategic,
    Json,
}

pub fn apply(kind: Kind, target: &Value, patch: &Value) -> Result<Value, Error> {
    match kind {
        Kind::Merge => Ok(merge(target.clone(), patch)),
        Kind::Strategic => strategic(target.clone(), patch, ""),
        Kind::Json => json_patch(target.clone(), patch),
    }
}

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge(target: Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut target = match target {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            let cur = target.remove(k).unwrap_or(Value::Null);
            target.insert(k.clone(), merge(cur, v));
        }
    }
    Value::Object(target)
}

/// Lists merged by a key instead of replaced, by JSON path; the rest of Kubernetes's
/// `patchStrategy:"merge"` fields that the served kinds have.
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        ".status.conditions" | ".status.addresses" => Some("type"),
        ".spec.containers"
        | ".spec.initContainers"
        | ".spec.volumes"
        | ".spec.containers[].env"
        | ".spec.containers[].ports" => Some(if path.ends_with("ports") {
            "containerPort"
        } else {
            "name"
        }),
        ".metadata.ownerReferences" => Some("uid"),
        ".status.images" => None,
        _ => None,
    }
}

fn strategic(target: Value, patch: &Value, path: &str) -> Result<Value, Error> {
    let Value::Object(patch) = patch else {
        return Ok(patch.clone());
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        p.remove("$patch");
        return Ok(Value::Object(p));
    }
    if patch.get("$patch").and_then(Value::as_str) == Some("delete") {
        return Ok(Value::Null);
    }
    let mut target = match target {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (k, v) in patch {
        // Ordering hints and key-retention directives do not change content we keep.
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(remove)) = (target.get_mut(field), v) {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        let child = format!("{path}.{k}");
        if v.is_null() {
            target.remove(k);
            continue;
        }
        let cur = target.remove(k).unwrap_or(Value::Null);
        let merged = match (cur, v, merge_key(&child)) {
            (Value::Array(cur), Value::Array(items), Some(key)) => {
                Value::Array(merge_list(cur, items, key, &child)?)
            }
            (cur, v @ Value::Object(_), _) => strategic(cur, v, &child)?,
            (_, v, _) => v.clone(),
        };
        if !merged.is_null() {
            target.insert(k.clone(), merged);
        }
    }
    Ok(Value::Object(target))
}

fn merge_list(
    mut cur: Vec<Value>,
    patch: &[Value],
    key: &str,
    path: &str,
) -> Result<Vec<Value>, Error> {
    for item in patch {
        let id = item.get(key).ok_or_else(|| {
            Error::Strategic(format!(
                "an item of {} lacks its merge key {key:?}",
                &path[1..]
            ))
        })?;
        let pos = cur.iter().position(|c| c.get(key) == Some(id));
        let deleting = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, deleting) {
            (Some(i), true) => {
                cur.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                let old = std::mem::take(&mut cur[i]);
                cur[i] = strategic(old, item, &format!("{path}[]"))?;
            }
            (None, false) => cur.push(strategic(Value::Null, item, &format!("{path}[]"))?),
        }
    }
    Ok(cur)
}

/// RFC 6902 with RFC 6901 pointers.
pub fn json_patch(mut doc: Value, ops: &Value) -> Result<Value, Error> {
    let ops = ops.as_array().ok_or(Error::NotAnArray)?;
    for (index, op) in ops.iter().enumerate() {
        let fail = |reason: String| Error::Operation { index, reason };
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("missing \"op\"".into()))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("missing \"path\"".into()))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| fail("missing \"value\"".into()))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| fail("missing \"from\"".into()))
        };
        match name {
            "add" => add(&mut doc, path, value()?).map_err(fail)?,
            "remove" => {
                remove(&mut doc, path).map_err(fail)?;
            }
            "replace" => {
                remove(&mut doc, path).map_err(fail)?;
                add(&mut doc, path, value()?).map_err(fail)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?).map_err(fail)?;
                add(&mut doc, path, v).map_err(fail)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| fail("\"from\" does not exist".into()))?;
                add(&mut doc, path, v).map_err(fail)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(fail(format!("test failed at {path}")));
                }
            }
            other => return Err(fail(format!("unknown op {other:?}"))),
        }
    }
    Ok(doc)
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("path {path:?} must start with '/'"))?;
    Ok((
        parent.to_owned(),
        last.replace("~1", "/").replace("~0", "~"),
    ))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let idx = if last == "-" {
                a.len()
            } else {
                last.parse().map_err(|_| format!("bad index {last:?}"))?
            };
            if idx > a.len() {
                return Err(format!("index {idx} is out of bounds"));
            }
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(format!("the parent of {path:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .ok_or_else(|| format!("{path:?} does not exist")),
        Some(Value::Array(a)) => {
            let idx: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if idx >= a.len() {
                return Err(format!("index {idx} is out of bounds"));
            }
            Ok(a.remove(idx))
        }
        _ => Err(format!("{path:?} does not exist")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_deletes_labels() {
        let node = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = merge(
            node,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        );
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
    }

    #[test]
    fn strategic_patch_replaces_taints_and_merges_conditions() {
        let node = json!({
            "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}]}
        });
        let patch = json!({
            "spec": {"taints": [{"key": "b", "effect": "NoExecute"}], "unschedulable": true},
            "status": {"$setElementOrder/conditions": [{"type": "Ready"}], "conditions": [{"type": "Ready", "status": "Unknown"}]}
        });
        let out = apply(Kind::Strategic, &node, &patch).unwrap();
        assert_eq!(
            out["spec"]["taints"],
            json!([{"key": "b", "effect": "NoExecute"}])
        );
        assert_eq!(out["spec"]["unschedulable"], json!(true));
        assert_eq!(out["status"]["conditions"][0]["status"], json!("Unknown"));
        assert_eq!(
            out["status"]["conditions"][1]["type"],
            json!("DiskPressure")
        );
    }

    #[test]
    fn strategic_patch_deletes_list_items_by_key() {
        let node = json!({"status": {"conditions": [{"type": "Ready"}, {"type": "X"}]}});
        let out = apply(
            Kind::Strategic,
            &node,
            &json!({"status": {"conditions": [{"type": "X", "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(out["status"]["conditions"], json!([{"type": "Ready"}]));
    }

    #[test]
    fn json_patch_operations() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"taints": []}});
        let ops = json!([
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "remove", "path": "/metadata/labels/a"},
            {"op": "add", "path": "/spec/taints/-", "value": {"key": "k", "effect": "NoSchedule"}},
            {"op": "test", "path": "/metadata/labels/b~1c", "value": "2"}
        ]);
        let out = json_patch(doc, &ops).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b/c": "2"}));
        assert_eq!(out["spec"]["taints"][0]["key"], json!("k"));
        let err = json_patch(json!({}), &json!([{"op": "remove", "path": "/nope"}])).unwrap_err();
        assert!(matches!(err, Error::Operation { index: 0, .. }));
        assert_eq!(json_patch(json!({}), &json!({})), Err(Error::NotAnArray));
    }
}

// TEMPORARY: replaced by the bounded patch engine from branch sec-patch at merge.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;
pub fn check_limits(obj: &Value) -> Result<(), Error> {
    if serde_json::to_vec(obj).map(|v| v.len()).unwrap_or(0) > MAX_OBJECT_BYTES {
        return Err(Error::TooLarge {
            limit: MAX_OBJECT_BYTES,
        });
    }
    Ok(())
}
