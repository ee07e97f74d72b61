//! A read-only JSON value laid out for a long life in memory: what the controllers' cache
//! holds instead of [`serde_json::Value`].
//!
//! A decoded `Value` spends most of its bytes on maps: each is a B-tree node of about 630
//! bytes however few keys it holds, and Kubernetes objects are maps of a few keys all the way
//! down (a running pod of 3 KB of JSON is 29 KB decoded, in 268 allocations). Here a map is
//! one boxed slice of its entries, sorted by key, an array one boxed slice, and keys and
//! strings are `CompactString`s, which keep up to 24 bytes inline — nearly every key and most
//! values of an API object: the same pod is about 7 KB in 61 allocations.
//!
//! The reading side mirrors `Value`'s (`obj["spec"]["nodeName"].as_str()`, `get`, `pointer`,
//! comparisons with `&str` and numbers), so code reading the cache reads like code reading an
//! API object. Nothing changes a frozen value in place; [`Frozen::thaw`] gives a `Value` to
//! build a new object from.
//!
//! Invariants: an object's keys are sorted and unique, so lookups are binary searches and
//! [`Frozen::thaw`] and serialisation give what the `Value` it was made from gives (the same
//! keys in the same order).

use std::borrow::Cow;
use std::fmt;
use std::ops::Index;

use compact_str::CompactString;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

/// A JSON value that is never changed once made.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Frozen {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(CompactString),
    Array(Box<[Frozen]>),
    Object(Object),
}

/// A JSON object: entries sorted by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object(Box<[(CompactString, Frozen)]>);

static NULL: Frozen = Frozen::Null;

// === impl Frozen ===

impl Frozen {
    /// The member `key` of an object or the element `key` of an array.
    pub fn get<I: Key>(&self, key: I) -> Option<&Frozen> {
        key.find(self)
    }

    /// The value at a JSON pointer (RFC 6901), as `Value::pointer`.
    pub fn pointer(&self, pointer: &str) -> Option<&Frozen> {
        if pointer.is_empty() {
            return Some(self);
        }
        let rest = pointer.strip_prefix('/')?;
        rest.split('/')
            // Escapes are rare; unescaped tokens are read in place (this runs for every
            // field a controller reads).
            .map(|t| match t.contains('~') {
                true => Cow::Owned(t.replace("~1", "/").replace("~0", "~")),
                false => Cow::Borrowed(t),
            })
            .try_fold(self, |v, token| match v {
                Frozen::Object(o) => o.get(&token),
                Frozen::Array(a) => token.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            })
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Frozen::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Frozen::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Frozen::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Frozen]> {
        match self {
            Frozen::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Frozen::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Frozen::Null)
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Frozen::Object(_))
    }

    /// A `Value` equal to this one, to build a new object from.
    pub fn thaw(&self) -> Value {
        match self {
            Frozen::Null => Value::Null,
            Frozen::Bool(b) => Value::Bool(*b),
            Frozen::Number(n) => Value::Number(n.clone()),
            Frozen::String(s) => Value::String(s.to_string()),
            Frozen::Array(a) => Value::Array(a.iter().map(Frozen::thaw).collect()),
            Frozen::Object(o) => Value::Object(o.thaw()),
        }
    }
}

impl From<Value> for Frozen {
    fn from(v: Value) -> Frozen {
        match v {
            Value::Null => Frozen::Null,
            Value::Bool(b) => Frozen::Bool(b),
            Value::Number(n) => Frozen::Number(n),
            Value::String(s) => Frozen::String(CompactString::from(s)),
            Value::Array(a) => Frozen::Array(a.into_iter().map(Frozen::from).collect()),
            Value::Object(m) => Frozen::Object(Object::from(m)),
        }
    }
}

impl From<&Value> for Frozen {
    /// A frozen copy, made without a decoded copy in between.
    fn from(v: &Value) -> Frozen {
        match v {
            Value::Null => Frozen::Null,
            Value::Bool(b) => Frozen::Bool(*b),
            Value::Number(n) => Frozen::Number(n.clone()),
            Value::String(s) => Frozen::String(CompactString::from(s.as_str())),
            Value::Array(a) => Frozen::Array(a.iter().map(Frozen::from).collect()),
            // serde_json's map iterates in key order (see `Object::from`), which `sorted`
            // checks rather than trusts.
            Value::Object(m) => Frozen::Object(Object::sorted(
                m.iter()
                    .map(|(k, v)| (CompactString::from(k.as_str()), Frozen::from(v)))
                    .collect(),
            )),
        }
    }
}

impl From<&Frozen> for Value {
    fn from(f: &Frozen) -> Value {
        f.thaw()
    }
}

impl<I: Key> Index<I> for Frozen {
    type Output = Frozen;

    /// Like `Value`'s: `Null` for a missing key, an index out of range or a value that is
    /// neither object nor array, so chains of lookups never panic.
    fn index(&self, key: I) -> &Frozen {
        key.find(self).unwrap_or(&NULL)
    }
}

impl fmt::Display for Frozen {
    /// Compact JSON, as `Value`'s `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Frozen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Frozen::Null => s.serialize_unit(),
            Frozen::Bool(b) => s.serialize_bool(*b),
            Frozen::Number(n) => n.serialize(s),
            Frozen::String(v) => s.serialize_str(v),
            Frozen::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a.iter() {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Frozen::Object(o) => o.serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Frozen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Frozen, D::Error> {
        Value::deserialize(d).map(Frozen::from)
    }
}

impl PartialEq<Value> for Frozen {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Frozen::Null, Value::Null) => true,
            (Frozen::Bool(a), Value::Bool(b)) => a == b,
            (Frozen::Number(a), Value::Number(b)) => a == b,
            (Frozen::String(a), Value::String(b)) => **a == **b,
            (Frozen::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
            }
            (Frozen::Object(a), Value::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka == kb && va == vb)
            }
            _ => false,
        }
    }
}

impl PartialEq<Frozen> for Value {
    fn eq(&self, other: &Frozen) -> bool {
        other == self
    }
}

impl PartialEq<str> for Frozen {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}

impl PartialEq<&str> for Frozen {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl PartialEq<bool> for Frozen {
    fn eq(&self, other: &bool) -> bool {
        self.as_bool() == Some(*other)
    }
}

impl PartialEq<i64> for Frozen {
    fn eq(&self, other: &i64) -> bool {
        self.as_i64() == Some(*other)
    }
}

// === impl Object ===

impl Object {
    pub fn get(&self, key: &str) -> Option<&Frozen> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Frozen)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn thaw(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|(k, v)| (k.to_string(), v.thaw()))
            .collect()
    }
}

impl Object {
    fn sorted(mut entries: Vec<(CompactString, Frozen)>) -> Object {
        // serde_json's map iterates in key order unless its `preserve_order` feature is on
        // (another crate in the build could turn it on); sorting keeps lookups correct.
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Object(entries.into_boxed_slice())
    }
}

impl From<Map<String, Value>> for Object {
    fn from(m: Map<String, Value>) -> Object {
        Object::sorted(
            m.into_iter()
                .map(|(k, v)| (CompactString::from(k), Frozen::from(v)))
                .collect(),
        )
    }
}

impl<'a> IntoIterator for &'a Object {
    type Item = (&'a str, &'a Frozen);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (CompactString, Frozen)>,
        fn(&'a (CompactString, Frozen)) -> (&'a str, &'a Frozen),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (&**k, v))
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            map.serialize_entry(&**k, v)?;
        }
        map.end()
    }
}

/// Reading a JSON value whether decoded ([`Value`]) or frozen ([`Frozen`]), for code that
/// reads both: label selectors, an object's metadata and state. The methods answer as
/// `Value`'s namesakes do.
pub trait Json:
    Sized
    + 'static
    + for<'a> Index<&'a str, Output = Self>
    + Index<usize, Output = Self>
    + PartialEq<bool>
    + PartialEq<str>
    + for<'a> PartialEq<&'a str>
    + PartialEq<i64>
    + PartialEq<Value>
{
    /// `Null`, to lend where a value is missing.
    fn null() -> &'static Self;
    fn get(&self, key: &str) -> Option<&Self>;
    fn pointer(&self, pointer: &str) -> Option<&Self>;
    fn as_str(&self) -> Option<&str>;
    fn as_i64(&self) -> Option<i64>;
    fn is_null(&self) -> bool;
    fn is_object(&self) -> bool;
    fn as_number(&self) -> Option<&Number>;
    fn as_array(&self) -> Option<&[Self]>;
    /// An object's entries in key order; `None` for anything else.
    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Self)>>;
    fn thaw(&self) -> Value;
}

impl Json for Value {
    fn null() -> &'static Value {
        static NULL_VALUE: Value = Value::Null;
        &NULL_VALUE
    }
    fn get(&self, key: &str) -> Option<&Value> {
        Value::get(self, key)
    }
    fn pointer(&self, pointer: &str) -> Option<&Value> {
        Value::pointer(self, pointer)
    }
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn as_i64(&self) -> Option<i64> {
        Value::as_i64(self)
    }
    fn is_null(&self) -> bool {
        Value::is_null(self)
    }
    fn is_object(&self) -> bool {
        Value::is_object(self)
    }
    fn as_number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&[Value]> {
        Value::as_array(self).map(Vec::as_slice)
    }
    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Value)>> {
        Value::as_object(self).map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }
    fn thaw(&self) -> Value {
        self.clone()
    }
}

impl Json for Frozen {
    fn null() -> &'static Frozen {
        &NULL
    }
    fn get(&self, key: &str) -> Option<&Frozen> {
        Frozen::get(self, key)
    }
    fn pointer(&self, pointer: &str) -> Option<&Frozen> {
        Frozen::pointer(self, pointer)
    }
    fn as_str(&self) -> Option<&str> {
        Frozen::as_str(self)
    }
    fn as_i64(&self) -> Option<i64> {
        Frozen::as_i64(self)
    }
    fn is_null(&self) -> bool {
        Frozen::is_null(self)
    }
    fn is_object(&self) -> bool {
        Frozen::is_object(self)
    }
    fn as_number(&self) -> Option<&Number> {
        match self {
            Frozen::Number(n) => Some(n),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&[Frozen]> {
        Frozen::as_array(self)
    }
    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Frozen)>> {
        Frozen::as_object(self).map(Object::iter)
    }
    fn thaw(&self) -> Value {
        Frozen::thaw(self)
    }
}

/// What holds a JSON value to read: a [`Json`] value itself or a reference or `Arc` to one,
/// so helpers take cached objects (`&Arc<Frozen>`) and decoded ones (`&Value`) alike.
pub trait AsJson {
    type J: Json + AsJson;
    fn json(&self) -> &Self::J;
}

impl AsJson for Value {
    type J = Value;
    fn json(&self) -> &Value {
        self
    }
}

impl AsJson for Frozen {
    type J = Frozen;
    fn json(&self) -> &Frozen {
        self
    }
}

impl<T: AsJson + ?Sized> AsJson for &T {
    type J = T::J;
    fn json(&self) -> &T::J {
        (**self).json()
    }
}

impl<T: AsJson + ?Sized> AsJson for std::sync::Arc<T> {
    type J = T::J;
    fn json(&self) -> &T::J {
        (**self).json()
    }
}

/// What can index a [`Frozen`]: a key of an object or a position in an array.
pub trait Key {
    fn find(self, v: &Frozen) -> Option<&Frozen>;
}

impl Key for &str {
    fn find(self, v: &Frozen) -> Option<&Frozen> {
        v.as_object()?.get(self)
    }
}

impl Key for &String {
    fn find(self, v: &Frozen) -> Option<&Frozen> {
        v.as_object()?.get(self)
    }
}

impl<T: Key + Copy> Key for &T {
    fn find(self, v: &Frozen) -> Option<&Frozen> {
        (*self).find(v)
    }
}

impl Key for usize {
    fn find(self, v: &Frozen) -> Option<&Frozen> {
        v.as_array()?.get(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::counting::live_bytes;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "metadata": {"name": "web-1", "labels": {"app": "web", "tier": "a/b", "kubernetes.io/hostname": "n1"}},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}], "replicas": 3},
            "status": {"ready": true, "ratio": 0.5, "delta": -2, "gone": null}
        })
    }

    #[test]
    fn reads_like_the_value_it_was_made_from() {
        let v = sample();
        let f = Frozen::from(v.clone());
        assert_eq!(f["metadata"]["name"].as_str(), Some("web-1"));
        assert_eq!(f["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
        assert_eq!(f["spec"]["replicas"].as_i64(), Some(3));
        assert_eq!(f["status"]["delta"].as_i64(), Some(-2));
        assert_eq!(f["status"]["ratio"], json!(0.5));
        assert_eq!(f["status"]["ready"], true);
        assert!(f["status"]["gone"].is_null() && f["status"].get("gone").is_some());
        assert!(f["no"]["such"][7].is_null() && f.get("no").is_none());
        assert_eq!(f["metadata"]["labels"]["tier"], "a/b");
        assert_eq!(
            f.pointer("/spec/containers/0/name"),
            Some(&Frozen::String("c".into()))
        );
        assert_eq!(f.pointer(""), Some(&f));
        assert_eq!(
            f.pointer("/metadata/labels/kubernetes.io~1hostname"),
            Some(&Frozen::String("n1".into()))
        );
        assert!(f.pointer("spec").is_none() && f.pointer("/spec/containers/9").is_none());
        let keys: Vec<&str> = f["metadata"]["labels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["app", "kubernetes.io/hostname", "tier"]);
    }

    #[test]
    fn thaws_and_serialises_to_what_it_was_made_from() {
        let v = sample();
        let f = Frozen::from(v.clone());
        assert_eq!(f.thaw(), v);
        assert_eq!(f, v);
        assert_eq!(v, f);
        assert_eq!(serde_json::to_string(&f).unwrap(), v.to_string());
        assert_eq!(f.to_string(), v.to_string());
        let back: Frozen = serde_json::from_str(&v.to_string()).unwrap();
        assert_eq!(back, f);
        let one = Frozen::from(json!({"a": 1}));
        assert_ne!(one, json!({"a": 2}));
        assert_ne!(one, json!({"a": 1, "b": 1}));
    }

    #[test]
    fn a_frozen_object_costs_a_fraction_of_its_decoded_value() {
        let text = sample().to_string();
        let (v, decoded) = live_bytes(|| serde_json::from_str::<Value>(&text).unwrap());
        let (f, frozen) = live_bytes(|| Frozen::from(v.clone()));
        eprintln!(
            "{} B of JSON: {decoded} B decoded, {frozen} B frozen",
            text.len()
        );
        assert!(
            frozen * 3 < decoded,
            "{frozen} B frozen vs {decoded} B decoded"
        );
        drop((v, f));
    }
}
