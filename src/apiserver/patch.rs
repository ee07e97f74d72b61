//! The three patch formats kubectl sends: JSON merge patch (RFC 7386), strategic merge patch
//! (the subset of Kubernetes's rules that the served kinds need) and JSON patch (RFC 6902);
//! and the bounds on size and nesting that every stored object keeps (`check_limits`).
//!
//! Pure functions over `serde_json::Value`; the caller retries them against the newest
//! object on a conflict, so concurrent patches all apply. This file imports nothing from the
//! crate, so `fuzz/` can build it alone.
//!
//! Invariant: an `Ok` from `apply` passes `check_limits`: at most `MAX_OBJECT_BYTES` as
//! compact JSON and at most `MAX_DEPTH` objects and arrays deep.
//! Invariant: a JSON patch has at most `MAX_OPERATIONS` operations and keeps a running budget
//! while it applies them (`Budget`): every value an operation adds, copies or moves is
//! measured before it is cloned or placed and nothing is ever credited back, so the document
//! never grows past the bounds even for a moment, and the walks that measure it add up to at
//! most `MAX_OBJECT_BYTES` of work for the whole patch. Its inserts and removes shift at most
//! `MAX_SHIFTS` list elements along in all, so long lists cannot make it slow either.
//! Invariant: merge and strategic patches take time linear in target plus patch (list merges
//! find items through hash indexes, not by scanning), and their result is no larger than
//! target plus patch, so one `check_limits` at the end bounds them.
//! Invariant: no recursion here goes deeper than the input's own nesting, which is bounded:
//! `merge` and `strategic` recurse along the patch, and `serde_json`'s parser refuses
//! anything nested more than 128 deep; JSON patch, the only format whose result can nest
//! deeper than its input, checks the depth of each value before it places it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;

use serde_json::{Map, Value};

/// Largest encoded object we store: etcd's default request limit, so an object that fits
/// here would also fit in a Kubernetes cluster.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// Deepest nesting of objects and arrays we store (a scalar adds no level; `{}` is 1 deep).
/// `serde_json` refuses to decode anything 128 or more deep, so an object must stay well
/// under that to decode again after we wrap it: a watch event (`{"object": ...}`) adds 1, a
/// list (`{"items": [...]}`) 2, a Table row (`{"rows": [{"object": ...}]}`) 3. 100 leaves 27
/// levels for envelopes and is far beyond any real Kubernetes object (a Pod is about 10).
pub const MAX_DEPTH: usize = 100;

/// Most operations in one JSON patch, as Kubernetes allows.
pub const MAX_OPERATIONS: usize = 10_000;

/// Most list elements one JSON patch may shift along by inserting or removing before them.
/// Each such operation moves the rest of the list in memory, so without this bound 10000
/// removals from the front of the longest list a stored object can hold (about
/// `MAX_OBJECT_BYTES / 2` elements) would take seconds. This allows eight times that longest
/// list, a few tens of milliseconds, and far more than any real patch shifts.
pub const MAX_SHIFTS: usize = 4 * MAX_OBJECT_BYTES;

/// Why a patch was refused. The patch (or, for `TooLarge` and `TooDeep`, the object it would
/// make) is at fault every time, so retrying it unchanged fails the same way.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("a JSON patch must be an array of operations")]
    NotAnArray,
    #[error("JSON patch operation {index}: {reason}")]
    Operation { index: usize, reason: String },
    #[error("the strategic merge patch is invalid: {0}")]
    Strategic(String),
    #[error("a JSON patch may have at most {limit} operations; split it into several patches")]
    TooManyOperations { limit: usize },
    #[error("the object would be larger than {limit} bytes as JSON; keep bulky data out of it")]
    TooLarge { limit: usize },
    #[error("the object would nest objects and arrays more than {limit} deep; flatten it")]
    TooDeep { limit: usize },
    #[error(
        "a JSON patch may shift at most {limit} list elements by inserting or removing before \
         them; use fewer operations on long lists, or replace the list whole"
    )]
    TooManyShifts { limit: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Merge,
    Strategic,
    Json,
}

/// Applies `patch` to a copy of `target`. Any `Ok` passes `check_limits`.
pub fn apply(kind: Kind, target: &Value, patch: &Value) -> Result<Value, Error> {
    let out = match kind {
        Kind::Merge => merge(target.clone(), patch),
        Kind::Strategic => strategic(target.clone(), patch, Some(""))?,
        // Held to the limits operation by operation: copies can double the document each
        // time, so a check at the end would come after the memory is gone.
        Kind::Json => return json_patch(target.clone(), patch),
    };
    check_limits(&out)?;
    Ok(out)
}

/// Refuses an object larger than `MAX_OBJECT_BYTES` as compact JSON or nested deeper than
/// `MAX_DEPTH`. Stops walking as soon as either is passed, and never recurses, so it is
/// safe on anything, however large or deep.
pub fn check_limits(obj: &Value) -> Result<(), Error> {
    measure(obj, 0, MAX_OBJECT_BYTES).map(drop)
}

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
///
/// Recurses along `patch`, so only as deep as the parser let the patch be. The result is not
/// checked against the limits; `apply` does that.
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
pub(crate) fn merge_key(path: Option<&str>) -> Option<&'static str> {
    let path = path?;
    // A workload's pod template (a CronJob's inside its job template) holds a PodSpec, whose
    // lists merge as a Pod's do (`kubectl set image deployment/web` sends one container).
    let path = POD_TEMPLATES
        .iter()
        .find_map(|t| {
            path.strip_prefix(t)
                .filter(|rest| rest.starts_with(".spec."))
        })
        .unwrap_or(path);
    match path {
        ".status.conditions" | ".status.addresses" => Some("type"),
        // A Service's ports (`kubectl patch svc` and the Python client's default patch name
        // one port and expect its name and the others kept).
        ".spec.ports" => Some("port"),
        // Init containers are Containers too: the OpenAPI schema (one `Container`
        // definition) tells kubectl their lists merge alike.
        ".spec.containers"
        | ".spec.initContainers"
        | ".spec.volumes"
        | ".spec.containers[].env"
        | ".spec.containers[].ports"
        | ".spec.initContainers[].env"
        | ".spec.initContainers[].ports" => Some(if path.ends_with("ports") {
            "containerPort"
        } else {
            "name"
        }),
        // Every ObjectMeta's, templates' too, as the schema's `ObjectMeta` says.
        p if p.ends_with(".metadata.ownerReferences") => Some("uid"),
        ".status.images" => None,
        _ => None,
    }
}

/// The path of `key` under `parent`, or `None` once it is longer than any path `merge_key`
/// names. Spelling out every path would cost the length of all the keys above at every
/// level, quadratic for a patch of long keys nested deep.
fn child_path(parent: Option<&str>, key: &str) -> Option<String> {
    let parent = parent?;
    (parent.len() + 1 + key.len() <= MAX_TRACKED_PATH).then(|| format!("{parent}.{key}"))
}

/// Recurses along `patch` (and through `merge_list` into its list items), so only as deep as
/// the parser let the patch be.
fn strategic(target: Value, patch: &Value, path: Option<&str>) -> Result<Value, Error> {
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
                let remove: HashSet<&Value> = remove.iter().collect();
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        if v.is_null() {
            target.remove(k);
            continue;
        }
        let child = child_path(path, k);
        let cur = target.remove(k).unwrap_or(Value::Null);
        let merged = match (cur, v, merge_key(child.as_deref())) {
            (Value::Array(cur), Value::Array(items), Some(key)) => {
                let child = child.as_deref().unwrap_or_default();
                Value::Array(merge_list(cur, items, key, child)?)
            }
            (cur, v @ Value::Object(_), _) => strategic(cur, v, child.as_deref())?,
            (_, v, _) => v.clone(),
        };
        if !merged.is_null() {
            target.insert(k.clone(), merged);
        }
    }
    Ok(Value::Object(target))
}

/// Merges `patch` into `cur` item by item, matched on `key`: a match is merged in place (or
/// dropped by `$patch: delete`), and the rest are appended in patch order. Where `cur` holds
/// several items with one key, the first still there is the match.
fn merge_list(
    cur: Vec<Value>,
    patch: &[Value],
    key: &str,
    path: &str,
) -> Result<Vec<Value>, Error> {
    // A deleted item leaves a hole rather than shifting the rest, so slot numbers stay valid
    // and the merge is linear.
    let mut slots: Vec<Option<Value>> = cur.into_iter().map(Some).collect();
    // Invariant: every slot in `index[id]` holds an item whose `key` is `id`, in list order.
    let mut index: HashMap<Value, VecDeque<usize>> = HashMap::new();
    for (i, item) in slots.iter().enumerate() {
        if let Some(id) = item.as_ref().and_then(|item| item.get(key)) {
            index.entry(id.clone()).or_default().push_back(i);
        }
    }
    let item_path = format!("{path}[]");
    for item in patch {
        let id = item.get(key).ok_or_else(|| {
            Error::Strategic(format!(
                "an item of {} lacks its merge key {key:?}",
                path.strip_prefix('.').unwrap_or(path)
            ))
        })?;
        let deleting = item.get("$patch").and_then(Value::as_str) == Some("delete");
        let found = index.get_mut(id).and_then(|slots| slots.front().copied());
        match (found, deleting) {
            (Some(i), true) => {
                slots[i] = None;
                unindex(&mut index, id);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Some(old) = slots[i].take() {
                    let merged = strategic(old, item, Some(&item_path))?;
                    // A `null` key in the patch removes the key, so nothing matches it again.
                    if merged.get(key) != Some(id) {
                        unindex(&mut index, id);
                    }
                    slots[i] = Some(merged);
                }
            }
            (None, false) => {
                let added = strategic(Value::Null, item, Some(&item_path))?;
                if added.get(key) == Some(id) {
                    index.entry(id.clone()).or_default().push_back(slots.len());
                }
                slots.push(Some(added));
            }
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

fn unindex(index: &mut HashMap<Value, VecDeque<usize>>, id: &Value) {
    if let Some(slots) = index.get_mut(id) {
        slots.pop_front();
        if slots.is_empty() {
            index.remove(id);
        }
    }
}

/// RFC 6902 with RFC 6901 pointers, held to the limits as it runs (see `Budget`).
pub fn json_patch(mut doc: Value, ops: &Value) -> Result<Value, Error> {
    let ops = ops.as_array().ok_or(Error::NotAnArray)?;
    if ops.len() > MAX_OPERATIONS {
        return Err(Error::TooManyOperations {
            limit: MAX_OPERATIONS,
        });
    }
    let mut budget = Budget::new(&doc)?;
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
                .ok_or_else(|| fail("missing \"value\"".into()))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| fail("missing \"from\"".into()))
        };
        match name {
            "add" => {
                let v = value()?;
                budget.charge(path, v)?;
                add(&mut doc, path, v.clone(), &mut budget, &fail)?;
            }
            "remove" => {
                remove(&mut doc, path, &mut budget, &fail)?;
            }
            "replace" => {
                let v = value()?;
                budget.charge(path, v)?;
                // In place: removing and inserting would shift the rest of a list twice.
                let slot = doc
                    .pointer_mut(path)
                    .ok_or_else(|| fail(format!("{path:?} does not exist")))?;
                *slot = v.clone();
            }
            "move" => {
                let v = remove(&mut doc, from()?, &mut budget, &fail)?;
                // Moving does not grow the document, but charging for it bounds the walks
                // that measure its depth, which could otherwise repeat over one big value.
                budget.charge(path, &v)?;
                add(&mut doc, path, v, &mut budget, &fail)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .ok_or_else(|| fail("\"from\" does not exist".into()))?;
                budget.charge(path, v)?;
                let v = v.clone();
                add(&mut doc, path, v, &mut budget, &fail)?;
            }
            "test" => {
                if doc.pointer(path) != Some(value()?) {
                    return Err(fail(format!("test failed at {path}")));
                }
            }
            other => return Err(fail(format!("unknown op {other:?}"))),
        }
    }
    debug_assert_eq!(check_limits(&doc), Ok(()), "the budget bounds the result");
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

fn add(
    doc: &mut Value,
    path: &str,
    value: Value,
    budget: &mut Budget,
    fail: &impl Fn(String) -> Error,
) -> Result<(), Error> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path).map_err(fail)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let idx = if last == "-" {
                a.len()
            } else {
                last.parse()
                    .map_err(|_| fail(format!("bad index {last:?}")))?
            };
            if idx > a.len() {
                return Err(fail(format!("index {idx} is out of bounds")));
            }
            budget.shift(a.len() - idx)?;
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(fail(format!("the parent of {path:?} does not exist"))),
    }
}

fn remove(
    doc: &mut Value,
    path: &str,
    budget: &mut Budget,
    fail: &impl Fn(String) -> Error,
) -> Result<Value, Error> {
    let (parent, last) = split_pointer(path).map_err(fail)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .ok_or_else(|| fail(format!("{path:?} does not exist"))),
        Some(Value::Array(a)) => {
            let idx: usize = last
                .parse()
                .map_err(|_| fail(format!("bad index {last:?}")))?;
            if idx >= a.len() {
                return Err(fail(format!("index {idx} is out of bounds")));
            }
            budget.shift(a.len() - idx - 1)?;
            Ok(a.remove(idx))
        }
        _ => Err(fail(format!("{path:?} does not exist"))),
    }
}

/// What a JSON patch may still do: how large its document could have grown, counting its
/// size at the start plus everything operations have put in since and never crediting what
/// they took out; and how many list elements inserts and removes have shifted along.
///
/// Invariant: `used` ≥ the document's encoded size, and `used` ≤ `MAX_OBJECT_BYTES`.
/// Invariant: `shifted` ≤ `MAX_SHIFTS`.
struct Budget {
    used: usize,
    shifted: usize,
}

// === impl Budget ===

impl Budget {
    fn new(doc: &Value) -> Result<Self, Error> {
        Ok(Self {
            used: measure(doc, 0, MAX_OBJECT_BYTES)?,
            shifted: 0,
        })
    }

    /// Pays for putting `value` at `path`, before it is cloned or placed: fails if the
    /// document could then pass `MAX_OBJECT_BYTES` or nest deeper than `MAX_DEPTH`.
    fn charge(&mut self, path: &str, value: &Value) -> Result<(), Error> {
        // Each pointer token is one object or array around the value.
        let depth = path.bytes().filter(|&b| b == b'/').count();
        // A value comes with its key: quotes, colon and comma. The token as written in the
        // pointer is never shorter as JSON than the key it names.
        let key = path.rsplit('/').next().map_or(0, string_len) + 2;
        let left = MAX_OBJECT_BYTES.saturating_sub(self.used.saturating_add(key));
        let size = measure(value, depth, left)?;
        self.used += key + size;
        Ok(())
    }

    /// Pays for inserting into or removing from a list with `n` elements after the spot.
    fn shift(&mut self, n: usize) -> Result<(), Error> {
        self.shifted = self.shifted.saturating_add(n);
        if self.shifted > MAX_SHIFTS {
            return Err(Error::TooManyShifts { limit: MAX_SHIFTS });
        }
        Ok(())
    }
}

/// The compact-JSON size of `value`, walked with an explicit stack and abandoned the moment
/// it passes `budget` bytes (`TooLarge`) or nests more than `MAX_DEPTH` objects and arrays
/// counting the `depth` already around it (`TooDeep`). Every value costs at least one byte,
/// so the walk does at most `budget` steps; the stack holds one iterator per level, so at
/// most `MAX_DEPTH`.
fn measure(value: &Value, depth: usize, budget: usize) -> Result<usize, Error> {
    enum Level<'a> {
        Array(std::slice::Iter<'a, Value>),
        Object(serde_json::map::Iter<'a>),
    }
    let too_large = Error::TooLarge {
        limit: MAX_OBJECT_BYTES,
    };
    let mut stack: Vec<Level> = Vec::new();
    let mut size = 0usize;
    let mut next = Some(value);
    loop {
        if let Some(v) = next.take() {
            let opened = match v {
                Value::Array(a) => Some((Level::Array(a.iter()), a.len(), 0)),
                // Each entry adds a colon beside its key.
                Value::Object(m) => Some((Level::Object(m.iter()), m.len(), m.len())),
                scalar => {
                    size = size.saturating_add(scalar_len(scalar));
                    None
                }
            };
            if let Some((level, len, colons)) = opened {
                if depth + stack.len() + 1 > MAX_DEPTH {
                    return Err(Error::TooDeep { limit: MAX_DEPTH });
                }
                // Brackets, commas and colons, before a single child is visited.
                size = size.saturating_add(2 + len.saturating_sub(1) + colons);
                stack.push(level);
            }
            if size > budget {
                return Err(too_large);
            }
        }
        let Some(level) = stack.last_mut() else {
            return Ok(size);
        };
        next = match level {
            Level::Array(items) => items.next(),
            Level::Object(entries) => entries.next().map(|(k, v)| {
                size = size.saturating_add(string_len(k));
                v
            }),
        };
        if next.is_none() {
            stack.pop();
        }
    }
}

/// A string's length as JSON, quotes included, escaped as `serde_json` escapes.
fn string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

fn scalar_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::String(s) => string_len(s),
        // Formatting is the only exact way to know; the number is at most a few dozen bytes.
        Value::Number(n) => {
            let mut count = Count(0);
            match serde_json::to_writer(&mut count, n) {
                Ok(()) => count.0,
                // Counting cannot fail; if it ever did, assume the longest a number can be.
                Err(_) => 32,
            }
        }
        Value::Array(_) | Value::Object(_) => 0,
    }
}

/// An `io::Write` that only counts.
struct Count(usize);

// === impl Count ===

impl io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the workload kinds hold a pod template, longest first.
const POD_TEMPLATES: [&str; 2] = [".spec.jobTemplate.spec.template", ".spec.template"];

/// No path `merge_key` names is longer than this (the longest, a CronJob's ephemeral volume
/// claim template's owner references, is 101).
const MAX_TRACKED_PATH: usize = 128;

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
    fn strategic_patch_merges_pod_template_containers_by_name() {
        let container = json!({"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]});
        let patch = json!({"containers": [{"name": "web", "image": "nginx:1.27"}]});
        for (target, patch, at) in [
            (
                json!({"spec": {"template": {"spec": {"containers": [container.clone()]}}}}),
                json!({"spec": {"template": {"spec": patch.clone()}}}),
                "/spec/template/spec/containers/0",
            ),
            (
                json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [container.clone()]}}}}}}),
                json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": patch.clone()}}}}}),
                "/spec/jobTemplate/spec/template/spec/containers/0",
            ),
        ] {
            let out = apply(Kind::Strategic, &target, &patch).unwrap();
            let c = out.pointer(at).unwrap();
            assert_eq!(c["image"], "nginx:1.27", "{out}");
            assert_eq!(c["ports"][0]["containerPort"], 80, "{out}");
        }
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
    fn strategic_delete_from_primitive_list_is_linear() {
        let finalizers: Vec<Value> = (0..20_000).map(|i| json!(format!("f{i}"))).collect();
        // Every odd one, and as many that are not there.
        let remove: Vec<Value> = (0..20_000)
            .map(|i| json!(format!("f{}", if i % 2 == 0 { i + 1 } else { 100_000 + i })))
            .collect();
        let target = json!({"metadata": {"finalizers": finalizers}});
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": remove}});
        let began = std::time::Instant::now();
        let out = apply(Kind::Strategic, &target, &patch).unwrap();
        assert!(began.elapsed() < std::time::Duration::from_secs(1));
        let kept: Vec<Value> = (0..20_000)
            .step_by(2)
            .map(|i| json!(format!("f{i}")))
            .collect();
        assert_eq!(out["metadata"]["finalizers"], Value::Array(kept));
    }

    #[test]
    fn strategic_keyed_merge_is_linear() {
        let containers = keyed("name", "c", 0..20_000, json!({"image": "old"}));
        // The first half of the containers, even ones deleted and odd ones updated, then
        // 10000 new ones.
        let mut patch = Vec::new();
        for i in 0..10_000 {
            patch.push(if i % 2 == 0 {
                json!({"name": format!("c{i}"), "$patch": "delete"})
            } else {
                json!({"name": format!("c{i}"), "image": "new"})
            });
        }
        patch.extend(keyed("name", "n", 0..10_000, json!({"image": "added"})));
        let target = json!({"spec": {"containers": containers}});
        let patch = json!({"spec": {"containers": patch}});
        let began = std::time::Instant::now();
        let out = apply(Kind::Strategic, &target, &patch).unwrap();
        assert!(began.elapsed() < std::time::Duration::from_secs(1));
        let mut want: Vec<Value> = (1..10_000)
            .step_by(2)
            .map(|i| json!({"name": format!("c{i}"), "image": "new"}))
            .collect();
        want.extend(keyed("name", "c", 10_000..20_000, json!({"image": "old"})));
        want.extend(keyed("name", "n", 0..10_000, json!({"image": "added"})));
        assert_eq!(out["spec"]["containers"], Value::Array(want));
    }

    #[test]
    fn strategic_keyed_merge_matches_the_first_item_still_there() {
        let target = json!({"spec": {"containers": [
            {"name": "a", "v": 1}, {"name": "b"}, {"name": "a", "v": 2}, {"image": "no name"}
        ]}});
        let patch = json!({"spec": {"containers": [
            {"name": "a", "$patch": "delete"},
            {"name": "a", "x": 1},
            {"name": "c", "y": 1},
            {"name": "c", "y": 2},
            {"name": "b", "$patch": "delete"},
            {"name": "b", "z": 1},
        ]}});
        let out = apply(Kind::Strategic, &target, &patch).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "v": 2, "x": 1}, {"image": "no name"}, {"name": "c", "y": 2}, {"name": "b", "z": 1}])
        );
    }

    #[test]
    fn strategic_patch_of_long_keys_nested_deep_is_linear() {
        let key = "k".repeat(10_000);
        let leaves: Map<String, Value> = (0..50_000).map(|i| (format!("l{i}"), json!(i))).collect();
        let patch = (0..80).fold(Value::Object(leaves), |v, _| {
            Value::Object(Map::from_iter([(key.clone(), v)]))
        });
        let began = std::time::Instant::now();
        let out = apply(Kind::Strategic, &json!({}), &patch).unwrap();
        assert!(began.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(out, patch);
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

    /// A list of `n` objects `{key: "<prefix><i>", ...extra}`.
    fn keyed(key: &str, prefix: &str, n: std::ops::Range<usize>, extra: Value) -> Vec<Value> {
        n.map(|i| {
            let mut item = extra.clone();
            item[key] = json!(format!("{prefix}{i}"));
            item
        })
        .collect()
    }

    /// Nests `{"a": ...}` `levels` deep around `inner`.
    fn nested(levels: usize, inner: Value) -> Value {
        // Not `json!`, which would serialize `v` again at every level.
        (0..levels).fold(inner, |v, _| {
            Value::Object(Map::from_iter([("a".to_owned(), v)]))
        })
    }

    /// Takes a nest apart level by level: dropping one deeper than the stack allows would
    /// recurse once per level.
    fn dismantle(mut v: Value) {
        while let Some(inner) = v.as_object_mut().and_then(|m| m.remove("a")) {
            v = inner;
        }
    }

    #[test]
    fn measure_counts_exactly_what_serde_json_writes() {
        let values = [
            json!(null),
            json!([]),
            json!({}),
            json!([[], {}, [[]]]),
            json!({"a": {"b": [1, -2, 3.5, 1e300, -0.0, 18446744073709551615u64]}}),
            json!({"q\"\\\u{0}\u{1f}\n\r\t\u{8}\u{c}é€😀\u{7f}": ["\u{2028}", true, false]}),
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"taints": []}}),
        ];
        for v in values {
            let len = serde_json::to_vec(&v).unwrap().len();
            assert_eq!(measure(&v, 0, usize::MAX), Ok(len), "{v}");
            assert_eq!(
                measure(&v, 0, len - 1),
                Err(Error::TooLarge {
                    limit: MAX_OBJECT_BYTES
                })
            );
        }
    }

    #[test]
    fn check_limits_accepts_a_node() {
        let images: Vec<Value> = (0..50)
            .map(|i| {
                json!({
                    "names": [
                        format!("registry.example.com/team/image-{i}@sha256:{}", "0".repeat(64)),
                        format!("registry.example.com/team/image-{i}:v1.2.3"),
                    ],
                    "sizeBytes": 123_456_789 + i,
                })
            })
            .collect();
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "board-1",
                "labels": {"kubernetes.io/arch": "arm64", "kubernetes.io/hostname": "board-1"},
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                "resourceVersion": "12345",
            },
            "spec": {"podCIDR": "10.42.1.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "capacity": {"cpu": "4", "memory": "3884Mi", "pods": "110"},
                "conditions": keyed("type", "Cond", 0..5, json!({"status": "False"})),
                "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}],
                "images": images,
                "nodeInfo": {"kubeletVersion": "v1.31.0", "architecture": "arm64"},
            },
        });
        assert_eq!(check_limits(&node), Ok(()));
    }

    #[test]
    fn check_limits_refuses_too_large() {
        let obj = json!({"metadata": {"annotations": {"a": "x".repeat(MAX_OBJECT_BYTES)}}});
        assert_eq!(
            check_limits(&obj),
            Err(Error::TooLarge {
                limit: MAX_OBJECT_BYTES
            })
        );
        // Just at the limit is fine.
        let fits = json!("x".repeat(MAX_OBJECT_BYTES - 2));
        assert_eq!(check_limits(&fits), Ok(()));
        let wide = Value::Array(vec![Value::Null; MAX_OBJECT_BYTES / 4]);
        assert!(matches!(check_limits(&wide), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn check_limits_refuses_too_deep_without_recursing() {
        assert_eq!(check_limits(&nested(MAX_DEPTH - 1, json!({}))), Ok(()));
        assert_eq!(
            check_limits(&nested(MAX_DEPTH, json!({}))),
            Err(Error::TooDeep { limit: MAX_DEPTH })
        );
        assert_eq!(
            check_limits(&nested(MAX_DEPTH, json!(1))),
            Ok(()),
            "a scalar adds no level"
        );
        // Deeper than a recursive walk could go on a test thread's 2 MiB stack.
        let deep = nested(100_000, json!({}));
        assert_eq!(
            check_limits(&deep),
            Err(Error::TooDeep { limit: MAX_DEPTH })
        );
        dismantle(deep);
    }

    #[test]
    fn objects_at_max_depth_still_decode_inside_envelopes() {
        let obj = nested(MAX_DEPTH - 1, json!({}));
        assert_eq!(check_limits(&obj), Ok(()));
        // A watch event of a Table, the deepest wrapping the server sends.
        let event = json!({"type": "ADDED", "object": {"rows": [{"object": obj}]}});
        let bytes = serde_json::to_vec(&event).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), event);
    }

    #[test]
    fn apply_refuses_merge_and_strategic_results_past_the_limits() {
        let half = "x".repeat(MAX_OBJECT_BYTES / 2 + 1);
        let target = json!({"metadata": {"annotations": {"a": half}}});
        let patch = json!({"metadata": {"annotations": {"b": half}}});
        for kind in [Kind::Merge, Kind::Strategic] {
            assert_eq!(
                apply(kind, &target, &patch),
                Err(Error::TooLarge {
                    limit: MAX_OBJECT_BYTES
                })
            );
        }
        let target = nested(MAX_DEPTH - 10, json!({}));
        let patch = nested(MAX_DEPTH, json!({}));
        for kind in [Kind::Merge, Kind::Strategic] {
            assert_eq!(
                apply(kind, &target, &patch),
                Err(Error::TooDeep { limit: MAX_DEPTH })
            );
        }
    }

    #[test]
    fn json_patch_copy_bomb_stops_before_the_object_passes_the_limit() {
        let annotations: Map<String, Value> = (0..16)
            .map(|i| (format!("k{i}"), json!("v".repeat(48))))
            .collect();
        let doc = json!({"metadata": {"annotations": annotations}});
        let start = serde_json::to_vec(&doc).unwrap().len();
        // Each copy puts the whole map inside itself, doubling it.
        let ops: Vec<Value> = (0..40)
            .map(|i| {
                json!({"op": "copy", "from": "/metadata/annotations",
                       "path": format!("/metadata/annotations/c{i}")})
            })
            .collect();
        let began = std::time::Instant::now();
        let err = json_patch(doc, &Value::Array(ops)).unwrap_err();
        assert_eq!(
            err,
            Error::TooLarge {
                limit: MAX_OBJECT_BYTES
            }
        );
        // Refused at the first copy that would pass the limit: nothing larger was built.
        let doublings = (MAX_OBJECT_BYTES / start).ilog2() as usize;
        assert!((10..=12).contains(&doublings), "{start} B to start");
        assert!(began.elapsed() < std::time::Duration::from_secs(1));
        let ops: Vec<Value> = (0..doublings - 1)
            .map(|i| {
                json!({"op": "copy", "from": "/metadata/annotations",
                       "path": format!("/metadata/annotations/c{i}")})
            })
            .collect();
        let doc = json!({"metadata": {"annotations": annotations}});
        let out = json_patch(doc, &Value::Array(ops)).unwrap();
        assert_eq!(check_limits(&out), Ok(()));
    }

    #[test]
    fn json_patch_add_chain_stops_at_max_depth() {
        let ops: Vec<Value> = (1..=MAX_DEPTH + 20)
            .map(|n| json!({"op": "add", "path": "/a".repeat(n), "value": {}}))
            .collect();
        assert_eq!(
            json_patch(json!({}), &Value::Array(ops)),
            // `/a` repeated 99 times adds the 100th level; the next one is too deep.
            Err(Error::TooDeep { limit: MAX_DEPTH })
        );
        let ops: Vec<Value> = (1..MAX_DEPTH)
            .map(|n| json!({"op": "add", "path": "/a".repeat(n), "value": {}}))
            .collect();
        let out = json_patch(json!({}), &Value::Array(ops)).unwrap();
        assert_eq!(check_limits(&out), Ok(()));
    }

    #[test]
    fn json_patch_move_chain_stops_at_max_depth() {
        // Each round wraps /c in one more object: {"c": X} becomes {"c": {"c": X}}.
        let round = [
            json!({"op": "add", "path": "/n", "value": {}}),
            json!({"op": "move", "from": "/c", "path": "/n/c"}),
            json!({"op": "move", "from": "/n", "path": "/c"}),
        ];
        let ops: Vec<Value> = round.iter().cycle().take(3 * 200).cloned().collect();
        let err = json_patch(json!({"c": {}}), &Value::Array(ops)).unwrap_err();
        assert_eq!(err, Error::TooDeep { limit: MAX_DEPTH });
    }

    #[test]
    fn json_patch_refuses_more_than_max_operations() {
        let test = json!({"op": "test", "path": "", "value": {}});
        let ops = Value::Array(vec![test.clone(); MAX_OPERATIONS]);
        assert_eq!(json_patch(json!({}), &ops), Ok(json!({})));
        let ops = Value::Array(vec![test; MAX_OPERATIONS + 1]);
        assert_eq!(
            json_patch(json!({}), &ops),
            Err(Error::TooManyOperations {
                limit: MAX_OPERATIONS
            })
        );
    }

    #[test]
    fn json_patch_bounds_shifting_long_lists() {
        let doc = json!({"a": vec![Value::Null; 100_000]});
        let front = json!({"op": "remove", "path": "/a/0"});
        assert_eq!(
            json_patch(doc.clone(), &Value::Array(vec![front; 10_000])),
            Err(Error::TooManyShifts { limit: MAX_SHIFTS })
        );
        // Removing from the end, or replacing in place, shifts nothing.
        let back: Vec<Value> = (0..10_000)
            .map(|i| json!({"op": "remove", "path": format!("/a/{}", 99_999 - i)}))
            .collect();
        let out = json_patch(doc.clone(), &Value::Array(back)).unwrap();
        assert_eq!(out["a"].as_array().map(Vec::len), Some(90_000));
        let replace = json!({"op": "replace", "path": "/a/0", "value": null});
        assert!(json_patch(doc, &Value::Array(vec![replace; 10_000])).is_ok());
    }

    #[test]
    fn json_patch_replace_needs_an_existing_value() {
        let doc = json!({"a": [1, 2], "b": {"c": 1}});
        let ops = json!([
            {"op": "replace", "path": "/a/1", "value": 3},
            {"op": "replace", "path": "/b/c", "value": 4},
        ]);
        assert_eq!(
            json_patch(doc.clone(), &ops),
            Ok(json!({"a": [1, 3], "b": {"c": 4}}))
        );
        for missing in ["/a/2", "/a/-", "/b/d", "/c/d"] {
            let ops = json!([{"op": "replace", "path": missing, "value": 0}]);
            assert!(
                matches!(
                    json_patch(doc.clone(), &ops),
                    Err(Error::Operation { index: 0, .. })
                ),
                "{missing}"
            );
        }
        let root = json!([{"op": "replace", "path": "", "value": {"d": 1}}]);
        assert_eq!(json_patch(doc, &root), Ok(json!({"d": 1})));
    }

    #[test]
    fn json_patch_refuses_a_target_already_past_the_limits() {
        let doc = json!({"a": "x".repeat(MAX_OBJECT_BYTES)});
        assert!(matches!(
            json_patch(doc, &json!([])),
            Err(Error::TooLarge { .. })
        ));
    }
}
