//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): field ownership recorded
//! in `metadata.managedFields`, merges of an applier's configuration into the live object,
//! and the conflicts that name the other manager, as kube-apiserver's structured merge does.
//!
//! A field set is the set of paths a manager owns: leaves (scalars, atomic lists and maps,
//! empty objects), the items of associative lists (by their key fields) and the values of set
//! lists. Which lists are associative comes from the kind's OpenAPI schema (its patch merge
//! keys, plus the extra key fields Kubernetes declares for ports); everything else is atomic.
//! On the wire a set is kube's `FieldsV1` trie (`f:name`, `k:{"name":"web"}`, `v:"x"`, `.`).
//!
//! Invariants: an apply never removes a field another manager still owns; an apply that
//! would change a field owned by another manager fails with every such conflict named,
//! unless forced, and then the field changes hands; a manager that stops applying a field
//! it alone owned removes it from the object. Updates (PUT, merge patches) move ownership of
//! the fields they change to their manager and never conflict. Objects nobody has applied
//! carry no managedFields and cost nothing here (kube-apiserver records every write's manager;
//! keelson starts tracking at the first apply — said in the README). Bookkeeping fields
//! (name, uid, resourceVersion, status on the main resource…) are never owned.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value, json};

/// References followed in a row while resolving one schema node.
const MAX_REF_HOPS: usize = 16;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    /// A struct field or map key.
    Field(String),
    /// An associative list's item, by its key fields as compact JSON (keys sorted).
    Key(String),
    /// A set list's element, as JSON.
    Value(String),
    /// An atomic list's item by position (only read from managedFields written elsewhere).
    Index(usize),
}

pub type Path = Vec<Elem>;
pub type FieldSet = BTreeSet<Path>;

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: an item of this list lacks its key field {key:?}")]
    MissingKey { path: String, key: String },
    #[error("{path}: duplicate entries for key {key}")]
    DuplicateKey { path: String, key: String },
    #[error("{0}: the items of this list must be objects")]
    NotAnObject(String),
    #[error("metadata.managedFields: {0}")]
    ManagedFields(String),
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
}

/// A field the applier would change that another manager owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    /// The field, as kube prints it: `.spec.template.spec.containers[name="web"].image`.
    pub field: String,
}

/// How a list's items are told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListKind<'a> {
    Atomic,
    /// Items are objects keyed by these fields (with their defaults when missing).
    Map(Vec<&'a str>),
    Set,
}

/// The kind's schemas, or none (then every object is granular and every list atomic).
#[derive(Clone, Copy)]
pub struct Types<'a> {
    schemas: Option<&'a Map<String, Value>>,
}

/// A schema node as written at a field (before its references are followed: merge keys sit
/// on the field), or unknown.
#[derive(Clone, Copy)]
pub struct Ty<'a>(Option<&'a Value>);

/// Lists Kubernetes keys by more than their patch merge key (or declares keyed where the
/// embedded schema names no merge key at all), by the items' definition.
const EXTRA_KEYS: [(&str, &[&str]); 2] = [
    (
        "io.k8s.api.core.v1.ContainerPort",
        &["containerPort", "protocol"],
    ),
    ("io.k8s.api.core.v1.ServicePort", &["port", "protocol"]),
];

/// Structs Kubernetes declares atomic (`+structType=atomic`): replaced whole by an apply.
const ATOMIC_STRUCTS: [&str; 4] = [
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.NodeSelector",
];

// === impl Types ===

impl<'a> Types<'a> {
    pub fn new(schemas: Option<&'a Map<String, Value>>) -> Types<'a> {
        Types { schemas }
    }

    /// The type of a kind's whole object.
    pub fn root(&self, definition: &str) -> Ty<'a> {
        Ty(self.schemas.and_then(|s| s.get(definition)))
    }

    /// Follows `$ref` and kube's `allOf: [{$ref}]`; returns the node and the name of the
    /// last definition reached.
    fn resolve(&self, ty: Ty<'a>) -> (Option<&'a Value>, Option<&'a str>) {
        let (Some(schemas), Some(mut node)) = (self.schemas, ty.0) else {
            return (None, None);
        };
        let mut name = None;
        for _ in 0..MAX_REF_HOPS {
            let next = match node.get("allOf").and_then(Value::as_array) {
                Some(all) if all.len() == 1 => all[0].get("$ref"),
                _ => node.get("$ref"),
            };
            let Some(target) = next
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            else {
                return (Some(node), name);
            };
            name = Some(target);
            match schemas.get(target) {
                Some(n) => node = n,
                None => return (None, name),
            }
        }
        (None, name)
    }

    fn field(&self, ty: Ty<'a>, name: &str) -> Ty<'a> {
        let (node, _) = self.resolve(ty);
        Ty(node.and_then(|n| {
            n.get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| n.get("additionalProperties").filter(|a| a.is_object()))
        }))
    }

    fn items(&self, ty: Ty<'a>) -> Ty<'a> {
        let (node, _) = self.resolve(ty);
        Ty(node.and_then(|n| n.get("items")))
    }

    fn atomic_object(&self, ty: Ty<'a>) -> bool {
        if ty.0.and_then(|n| n.get("x-kubernetes-map-type")) == Some(&json!("atomic")) {
            return true;
        }
        let (node, name) = self.resolve(ty);
        node.and_then(|n| n.get("x-kubernetes-map-type")) == Some(&json!("atomic"))
            || name.is_some_and(|n| ATOMIC_STRUCTS.contains(&n))
    }

    /// `field` is the list's name in its parent (ObjectMeta's finalizers are a set).
    fn list_kind(&self, ty: Ty<'a>, field: Option<&str>) -> ListKind<'a> {
        let Some(node) = ty.0 else {
            return ListKind::Atomic;
        };
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => return ListKind::Set,
            Some("atomic") => return ListKind::Atomic,
            _ => {}
        }
        let merges = node
            .get("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
            .is_some_and(|s| s.split(',').any(|s| s == "merge"));
        let key = node
            .get("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str);
        let (_, item_def) = self.resolve(self.items(ty));
        if let Some((_, keys)) = EXTRA_KEYS.iter().find(|(def, _)| Some(*def) == item_def) {
            return ListKind::Map(keys.to_vec());
        }
        match (merges, key) {
            (true, Some(key)) => ListKind::Map(vec![key]),
            (true, None) => ListKind::Set,
            _ if field == Some("finalizers") => ListKind::Set,
            _ => ListKind::Atomic,
        }
    }
}

/// The value a key field has when an item leaves it out (kube's `+default` on list keys).
fn key_default(field: &str) -> Option<Value> {
    (field == "protocol").then(|| json!("TCP"))
}

// === field sets ===

/// The paths `value` sets, under `path`, typed by `ty`.
fn collect(
    types: &Types<'_>,
    ty: Ty<'_>,
    field: Option<&str>,
    value: &Value,
    path: &mut Path,
    out: &mut FieldSet,
) -> Result<(), Error> {
    match value {
        Value::Object(map) if !map.is_empty() && !types.atomic_object(ty) => {
            for (k, v) in map {
                if v.is_null() {
                    continue;
                }
                path.push(Elem::Field(k.clone()));
                collect(types, types.field(ty, k), Some(k), v, path, out)?;
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match types.list_kind(ty, field) {
            ListKind::Atomic => {
                out.insert(path.clone());
            }
            ListKind::Set => {
                for item in items {
                    path.push(Elem::Value(item.to_string()));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                let item_ty = types.items(ty);
                let mut seen = BTreeSet::new();
                for item in items {
                    let key = key_of(item, &keys, path)?;
                    if !seen.insert(key.clone()) {
                        return Err(Error::DuplicateKey {
                            path: display(path),
                            key,
                        });
                    }
                    path.push(Elem::Key(key));
                    out.insert(path.clone());
                    for (k, v) in item.as_object().into_iter().flatten() {
                        if v.is_null() {
                            continue;
                        }
                        path.push(Elem::Field(k.clone()));
                        collect(types, types.field(item_ty, k), Some(k), v, path, out)?;
                        path.pop();
                    }
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
    Ok(())
}

/// An item's key fields as compact JSON with sorted keys (`serde_json`'s maps are sorted).
fn key_of(item: &Value, keys: &[&str], path: &Path) -> Result<String, Error> {
    let Some(obj) = item.as_object() else {
        return Err(Error::NotAnObject(display(path)));
    };
    let mut key = Map::new();
    for k in keys {
        match obj
            .get(*k)
            .filter(|v| !v.is_null())
            .cloned()
            .or_else(|| key_default(k))
        {
            Some(v) => {
                key.insert((*k).to_owned(), v);
            }
            None => {
                return Err(Error::MissingKey {
                    path: display(path),
                    key: (*k).to_owned(),
                });
            }
        }
    }
    Ok(Value::Object(key).to_string())
}

/// Whether `item` is the one `key` (an `Elem::Key` string) names.
fn matches_key(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter()
        .all(|(k, want)| match item.get(k).filter(|v| !v.is_null()) {
            Some(v) => v == want,
            None => key_default(k).as_ref() == Some(want),
        })
}

/// The value at `path` in `obj`, if there is one.
fn value_at<'v>(obj: &'v Value, path: &[Elem]) -> Option<&'v Value> {
    let mut cur = obj;
    for e in path {
        cur = match e {
            Elem::Field(k) => cur.get(k)?,
            Elem::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?.iter().find(|i| matches_key(i, &key))?
            }
            Elem::Value(v) => {
                let v: Value = serde_json::from_str(v).ok()?;
                cur.as_array()?.iter().find(|i| **i == v)?
            }
            Elem::Index(i) => cur.as_array()?.get(*i)?,
        };
    }
    Some(cur).filter(|v| !v.is_null())
}

/// Whether `path` holds something different in `a` and `b`: for list items and set
/// elements, whether one has it and the other not (their fields are paths of their own).
fn differs(a: &Value, b: &Value, path: &Path) -> bool {
    match path.last() {
        Some(Elem::Key(_) | Elem::Value(_) | Elem::Index(_)) => {
            value_at(a, path).is_some() != value_at(b, path).is_some()
        }
        _ => value_at(a, path) != value_at(b, path),
    }
}

/// Removes what `path` names from `obj` (nothing if it is not there).
fn remove_at(obj: &mut Value, path: &[Elem]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for e in parent {
        let next = match e {
            Elem::Field(k) => cur.get_mut(k),
            Elem::Key(k) => match serde_json::from_str::<Map<String, Value>>(k) {
                Ok(key) => cur
                    .as_array_mut()
                    .and_then(|a| a.iter_mut().find(|i| matches_key(i, &key))),
                Err(_) => None,
            },
            Elem::Value(_) => None,
            Elem::Index(i) => cur.as_array_mut().and_then(|a| a.get_mut(*i)),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Elem::Field(k) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(k);
            }
        }
        Elem::Key(k) => {
            if let (Ok(key), Some(a)) = (
                serde_json::from_str::<Map<String, Value>>(k),
                cur.as_array_mut(),
            ) {
                a.retain(|i| !matches_key(i, &key));
            }
        }
        Elem::Value(v) => {
            if let (Ok(v), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut()) {
                a.retain(|i| *i != v);
            }
        }
        Elem::Index(i) => {
            if let Some(a) = cur.as_array_mut()
                && *i < a.len()
            {
                a.remove(*i);
            }
        }
    }
}

/// Whether `path` is a key field of the list item it is in (removing it alone would break
/// the item).
fn is_key_field(path: &[Elem]) -> bool {
    match path {
        [.., Elem::Key(key), Elem::Field(f)] => {
            serde_json::from_str::<Map<String, Value>>(key).is_ok_and(|k| k.contains_key(f))
        }
        _ => false,
    }
}

/// Whether `set` holds `path` or anything below it.
fn covers(set: &FieldSet, path: &Path) -> bool {
    set.range(path.clone()..)
        .next()
        .is_some_and(|p| p.starts_with(path))
}

/// Drops `path` and everything below it from `set`.
fn remove_under(set: &mut FieldSet, path: &Path) {
    let below: Vec<Path> = set
        .range(path.clone()..)
        .take_while(|p| p.starts_with(path))
        .cloned()
        .collect();
    for p in below {
        set.remove(&p);
    }
}

/// A path as kube prints it in conflicts: `.spec.containers[name="web"].image`.
pub fn display(path: &[Elem]) -> String {
    let mut s = String::new();
    for e in path {
        match e {
            Elem::Field(k) => {
                s.push('.');
                s.push_str(k);
            }
            Elem::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Elem::Value(v) => s.push_str(&format!("[={v}]")),
            Elem::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let mut s = format!(
        "Apply failed with {n} conflict{}: ",
        if n == 1 { "" } else { "s" }
    );
    if let [c] = conflicts {
        s.push_str(&format!(
            "conflict with \"{}\" using {}: {}",
            c.manager, c.api_version, c.field
        ));
        return s;
    }
    let mut by_manager: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for c in conflicts {
        match by_manager
            .iter_mut()
            .find(|(m, v, _)| *m == c.manager && *v == c.api_version)
        {
            Some((_, _, fields)) => fields.push(&c.field),
            None => by_manager.push((&c.manager, &c.api_version, vec![&c.field])),
        }
    }
    let parts: Vec<String> = by_manager
        .iter()
        .map(|(m, v, fields)| {
            let list: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
            format!("conflicts with \"{m}\" using {v}:\n{}", list.join("\n"))
        })
        .collect();
    s.push_str(&parts.join("\n"));
    s
}

// === managedFields ===

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.is_none()
    }
}

/// The entries an object carries (none when it was never applied).
pub fn entries(obj: &Value) -> Result<Vec<Entry>, Error> {
    let Some(list) = obj.pointer("/metadata/managedFields") else {
        return Ok(Vec::new());
    };
    let bad = |why: &str| Error::ManagedFields(why.to_owned());
    let list = list.as_array().ok_or_else(|| bad("must be a list"))?;
    let mut out = Vec::new();
    for e in list {
        let text = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
        // `[{}]` is how a client clears the list.
        let Some(manager) = text("manager") else {
            continue;
        };
        let mut fields = FieldSet::new();
        if let Some(trie) = e.get("fieldsV1") {
            decode_trie(trie, &mut Vec::new(), &mut fields)?;
        }
        out.push(Entry {
            manager,
            operation: text("operation").unwrap_or_else(|| "Update".into()),
            api_version: text("apiVersion").unwrap_or_default(),
            time: text("time").unwrap_or_default(),
            subresource: text("subresource"),
            fields,
        });
    }
    Ok(out)
}

/// The entries an object carries; none if they cannot be read, so a malformed list (written
/// by a client through a plain update) is replaced rather than blocking every later write.
fn entries_or_reset(obj: &Value) -> Vec<Entry> {
    entries(obj).unwrap_or_else(|e| {
        tracing::info!(error = %e, "managedFields unreadable; field ownership starts over");
        Vec::new()
    })
}

fn decode_trie(node: &Value, path: &mut Path, out: &mut FieldSet) -> Result<(), Error> {
    let node = node
        .as_object()
        .ok_or_else(|| Error::ManagedFields("fieldsV1 nodes must be objects".into()))?;
    for (k, child) in node {
        if k == "." {
            out.insert(path.clone());
            continue;
        }
        let elem = match k.split_at_checked(2) {
            Some(("f:", name)) => Elem::Field(name.to_owned()),
            Some(("k:", key)) => Elem::Key(canonical(key)?),
            Some(("v:", v)) => Elem::Value(canonical(v)?),
            Some(("i:", i)) => Elem::Index(
                i.parse()
                    .map_err(|_| Error::ManagedFields(format!("bad index {k:?}")))?,
            ),
            _ => return Err(Error::ManagedFields(format!("unknown path element {k:?}"))),
        };
        path.push(elem);
        if child.as_object().is_some_and(Map::is_empty) {
            out.insert(path.clone());
        } else {
            decode_trie(child, path, out)?;
        }
        path.pop();
    }
    Ok(())
}

/// JSON re-encoded compactly with sorted keys, so equal keys compare equal.
fn canonical(json: &str) -> Result<String, Error> {
    serde_json::from_str::<Value>(json)
        .map(|v| v.to_string())
        .map_err(|e| Error::ManagedFields(format!("bad JSON in a path element: {e}")))
}

fn encode_trie(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for (i, e) in path.iter().enumerate() {
            let name = match e {
                Elem::Field(k) => format!("f:{k}"),
                Elem::Key(k) => format!("k:{k}"),
                Elem::Value(v) => format!("v:{v}"),
                Elem::Index(i) => format!("i:{i}"),
            };
            let child = node.entry(name).or_insert_with(|| json!({}));
            let Some(child) = child.as_object_mut() else {
                break;
            };
            node = child;
            // A member with members below keeps itself as `.` (it was inserted first: paths
            // sort before their descendants).
            if i + 1 < path.len() && node.is_empty() && fields.contains(&path[..=i].to_vec()) {
                node.insert(".".into(), json!({}));
            }
        }
    }
    Value::Object(root)
}

fn encode(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": encode_trie(&e.fields),
                });
                if let Some(s) = &e.subresource {
                    v["subresource"] = json!(s);
                }
                v
            })
            .collect(),
    )
}

fn store_entries(obj: &mut Value, entries: Vec<Entry>) {
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), encode(&entries));
        }
    }
}

// === apply and update ===

/// What an object holds that managers can own: without type meta, bookkeeping metadata and
/// the status (written through its own subresource).
fn ownable(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["apiVersion", "kind", "status"] {
            m.remove(k);
        }
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            meta.remove(k);
        }
        if meta.is_empty() {
            v.as_object_mut().map(|m| m.remove("metadata"));
        }
    }
    v
}

fn field_set(types: &Types<'_>, root: Ty<'_>, obj: &Value) -> Result<FieldSet, Error> {
    let mut out = FieldSet::new();
    let obj = ownable(obj);
    if obj.as_object().is_some_and(|m| !m.is_empty()) {
        collect(types, root, None, &obj, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// Merges an applied configuration into `live`: objects field by field, associative lists
/// item by item (new items after the live ones), sets by union, everything else replaced.
fn merge(
    types: &Types<'_>,
    ty: Ty<'_>,
    field: Option<&str>,
    live: Value,
    config: &Value,
    path: &mut Path,
) -> Result<Value, Error> {
    match (live, config) {
        (live, Value::Object(cfg)) if !types.atomic_object(ty) => {
            let mut out = match live {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            for (k, v) in cfg {
                if v.is_null() {
                    continue;
                }
                let cur = out.remove(k).unwrap_or(Value::Null);
                path.push(Elem::Field(k.clone()));
                let merged = merge(types, types.field(ty, k), Some(k), cur, v, path)?;
                path.pop();
                out.insert(k.clone(), merged);
            }
            Ok(Value::Object(out))
        }
        (Value::Array(mut out), Value::Array(cfg)) => match types.list_kind(ty, field) {
            ListKind::Atomic => Ok(Value::Array(cfg.clone())),
            ListKind::Set => {
                for item in cfg {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Ok(Value::Array(out))
            }
            ListKind::Map(keys) => {
                let item_ty = types.items(ty);
                for item in cfg {
                    let key = key_of(item, &keys, path)?;
                    let parsed: Map<String, Value> = serde_json::from_str(&key).unwrap_or_default();
                    path.push(Elem::Key(key));
                    match out.iter().position(|i| matches_key(i, &parsed)) {
                        Some(at) => {
                            let cur = std::mem::take(&mut out[at]);
                            out[at] = merge(types, item_ty, None, cur, item, path)?;
                        }
                        None => out.push(merge(types, item_ty, None, Value::Null, item, path)?),
                    }
                    path.pop();
                }
                Ok(Value::Array(out))
            }
        },
        (_, cfg) => Ok(without_nulls(cfg)),
    }
}

/// `cfg` with its `null` fields left out (an applier's `null` owns nothing and sets nothing).
fn without_nulls(cfg: &Value) -> Value {
    match cfg {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        v => v.clone(),
    }
}

/// Who applies, and how.
pub struct Applier<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub force: bool,
    /// RFC 3339, for the entry's `time`.
    pub now: &'a str,
}

/// The object after `applier` applies `config` to `live` (`None`: it does not exist yet).
/// The caller defaults, validates and stores the result.
pub fn apply(
    types: &Types<'_>,
    root: Ty<'_>,
    live: Option<&Value>,
    config: &Value,
    applier: &Applier<'_>,
) -> Result<Value, Error> {
    let mut entries = live.map(entries_or_reset).unwrap_or_default();
    let applied = field_set(types, root, config)?;
    let mut cfg = config.clone();
    if let Some(meta) = cfg.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    if let Some(m) = cfg.as_object_mut() {
        m.remove("status");
    }
    let base = live.cloned().unwrap_or(Value::Null);
    let mut merged = merge(types, root, None, base.clone(), &cfg, &mut Vec::new())?;

    let mine = |e: &Entry| e.is(applier.manager, "Apply");
    if live.is_some() {
        let changed: Vec<&Path> = applied
            .iter()
            .filter(|p| differs(&base, &merged, p))
            .collect();
        let mut conflicts = Vec::new();
        for e in entries.iter_mut().filter(|e| !mine(e)) {
            for p in &changed {
                if covers(&e.fields, p) {
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        api_version: e.api_version.clone(),
                        field: display(p),
                    });
                    if applier.force {
                        remove_under(&mut e.fields, p);
                    }
                }
            }
        }
        if !conflicts.is_empty() && !applier.force {
            return Err(Error::Conflicts(conflicts));
        }
    }

    // Fields this manager applied before and applies no more go, unless someone else holds
    // them (or something below them).
    let before = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut others = FieldSet::new();
    for e in entries.iter().filter(|e| !mine(e)) {
        others.extend(e.fields.iter().cloned());
    }
    // Shallowest first (a path sorts before its descendants): an item that goes takes its
    // fields along; one that stays for another manager keeps its key fields.
    for p in before.difference(&applied) {
        if !covers(&others, p) && !covers(&applied, p) && !is_key_field(p) {
            remove_at(&mut merged, p);
            // A map the removal emptied (the last label) goes too, unless someone owns it
            // as it is.
            for depth in (1..p.len()).rev() {
                let up = &p[..depth];
                let emptied = value_at(&merged, up)
                    .and_then(Value::as_object)
                    .is_some_and(Map::is_empty);
                let owned = |set: &FieldSet| set.contains(&up.to_vec());
                if !emptied || owned(&others) || owned(&applied) {
                    break;
                }
                remove_at(&mut merged, up);
            }
        }
    }

    match entries.iter_mut().find(|e| mine(e)) {
        // Nothing to record: the entry keeps its time, so an apply that changes nothing
        // leaves the object as it was (and the registry writes nothing).
        Some(e) if e.fields == applied && e.api_version == applier.api_version => {}
        Some(e) => {
            e.fields = applied;
            e.time = applier.now.to_owned();
            e.api_version = applier.api_version.to_owned();
        }
        None => entries.push(Entry {
            manager: applier.manager.to_owned(),
            operation: "Apply".into(),
            api_version: applier.api_version.to_owned(),
            time: applier.now.to_owned(),
            subresource: None,
            fields: applied,
        }),
    }
    if !merged.is_object() {
        merged = json!({});
    }
    store_entries(&mut merged, entries);
    Ok(merged)
}

/// Moves ownership for an update (PUT or a merge/JSON patch) of `old` into `new` by
/// `manager`: what it changed becomes its own and no one else's; what it removed no one
/// owns any more. Does nothing to objects without managedFields.
pub fn track_update(
    types: &Types<'_>,
    root: Ty<'_>,
    old: &Value,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    now: &str,
) -> Result<(), Error> {
    let mut entries = entries_or_reset(new);
    if entries.is_empty() {
        // None, or unreadable (a client wrote garbage there): start over, as kube does.
        if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        return Ok(());
    }
    let before = field_set(types, root, old)?;
    let after = field_set(types, root, new)?;
    let changed: Vec<&Path> = after.iter().filter(|p| differs(old, new, p)).collect();
    let removed: Vec<&Path> = before.difference(&after).collect();
    if changed.is_empty() && removed.is_empty() {
        return Ok(());
    }
    let me = |e: &Entry| e.is(manager, "Update");
    for e in entries.iter_mut() {
        for p in &removed {
            remove_under(&mut e.fields, p);
        }
        if !me(e) {
            for p in &changed {
                remove_under(&mut e.fields, p);
            }
        }
    }
    let changed: FieldSet = changed.into_iter().cloned().collect();
    match entries.iter_mut().find(|e| me(e)) {
        Some(e) => {
            e.fields.extend(changed);
            e.time = now.to_owned();
            e.api_version = api_version.to_owned();
        }
        None if !changed.is_empty() => entries.push(Entry {
            manager: manager.to_owned(),
            operation: "Update".into(),
            api_version: api_version.to_owned(),
            time: now.to_owned(),
            subresource: None,
            fields: changed,
        }),
        None => {}
    }
    store_entries(new, entries);
    Ok(())
}

/// The manager of a write that names none: the client's User-Agent up to its first `/`
/// (`kubectl/v1.32.4 (linux/amd64)` → `kubectl`), at most 128 characters, as kube does.
pub fn default_manager(user_agent: Option<&str>) -> String {
    let ua = user_agent
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
        .trim();
    let name: String = ua.chars().take(128).collect();
    if name.is_empty() {
        "unknown".into()
    } else {
        name
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conflict with \"{}\" using {}",
            self.manager, self.api_version
        )
    }
}

#[cfg(test)]
mod tests;
