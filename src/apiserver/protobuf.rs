//! Just enough of Kubernetes's protobuf encoding to accept what kubectl's typed clients send.
//!
//! kubectl writes built-in objects it constructs itself (`kubectl create namespace`) as
//! `application/vnd.kubernetes.protobuf`: the `k8s\0` magic, then a `runtime.Unknown` holding
//! the type and the object's own bytes. keelson decodes the fields it stores (metadata name,
//! labels, annotations, finalizers; namespace spec) into the JSON it works with, and answers
//! unsupported kinds with 415 so the caller knows to send JSON. Every read is bounds-checked.

use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// Decodes a protobuf request body into its JSON form.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or("the body lacks the k8s protobuf magic")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for field in Fields(unknown) {
        match field? {
            (1, Wire::Bytes(type_meta)) => {
                for f in Fields(type_meta) {
                    match f? {
                        (1, Wire::Bytes(v)) => api_version = text(v)?,
                        (2, Wire::Bytes(v)) => kind = text(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(v)) => raw = v,
            _ => {}
        }
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(raw),
        _ => Err(format!(
            "protobuf bodies of {api_version}/{kind} are not supported; send JSON"
        )),
    }
}

fn namespace(raw: &[u8]) -> Result<Value, String> {
    let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}});
    for field in Fields(raw) {
        match field? {
            (1, Wire::Bytes(meta)) => obj["metadata"] = object_meta(meta)?,
            (2, Wire::Bytes(spec)) => {
                let mut finalizers = Vec::new();
                for f in Fields(spec) {
                    if let (1, Wire::Bytes(v)) = f? {
                        finalizers.push(Value::String(text(v)?));
                    }
                }
                obj["spec"] = json!({"finalizers": finalizers});
            }
            _ => {}
        }
    }
    Ok(obj)
}

fn object_meta(raw: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for field in Fields(raw) {
        match field? {
            (1, Wire::Bytes(v)) => _ = meta.insert("name".into(), text(v)?.into()),
            (2, Wire::Bytes(v)) => _ = meta.insert("generateName".into(), text(v)?.into()),
            (3, Wire::Bytes(v)) => _ = meta.insert("namespace".into(), text(v)?.into()),
            (6, Wire::Bytes(v)) => _ = meta.insert("resourceVersion".into(), text(v)?.into()),
            (11, Wire::Bytes(entry)) => {
                let (k, v) = map_entry(entry)?;
                labels.insert(k, v.into());
            }
            (12, Wire::Bytes(entry)) => {
                let (k, v) = map_entry(entry)?;
                annotations.insert(k, v.into());
            }
            (14, Wire::Bytes(v)) => finalizers.push(Value::String(text(v)?)),
            _ => {}
        }
    }
    for (key, value) in [
        ("labels", Value::Object(labels)),
        ("annotations", Value::Object(annotations)),
    ] {
        if value.as_object().is_some_and(|m| !m.is_empty()) {
            meta.insert(key.into(), value);
        }
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

fn map_entry(raw: &[u8]) -> Result<(String, String), String> {
    let (mut k, mut v) = (String::new(), String::new());
    for f in Fields(raw) {
        match f? {
            (1, Wire::Bytes(b)) => k = text(b)?,
            (2, Wire::Bytes(b)) => v = text(b)?,
            _ => {}
        }
    }
    Ok((k, v))
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_owned())
}

enum Wire<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

/// Iterates over the fields of one message.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        Some(self.field())
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u64, Wire<'a>), String> {
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => {
                self.varint()?;
                Wire::Varint
            }
            1 => self.skip(8).map(|_| Wire::Fixed)?,
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                Wire::Bytes(self.skip(len)?)
            }
            5 => self.skip(4).map(|_| Wire::Fixed)?,
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        Ok((key >> 3, wire))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or("truncated protobuf varint")?;
            self.0 = rest;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("protobuf varint too long".into())
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated protobuf field".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(num << 3) | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_namespace_as_kubectl_sends_it() {
        let label = [field(1, b"team"), field(2, b"edge")].concat();
        let meta = [field(1, b"scratch"), field(11, &label)].concat();
        let ns = field(1, &meta);
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &ns)].concat();
        let obj = decode(&body).unwrap();
        assert_eq!(obj["metadata"]["name"], "scratch");
        assert_eq!(obj["metadata"]["labels"]["team"], "edge");
        assert_eq!(obj["kind"], "Namespace");
    }

    #[test]
    fn garbage_and_other_kinds_are_refused_without_panicking() {
        assert!(decode(b"k8s\0\x0a\xff\xff\xff").is_err());
        assert!(decode(b"nope").is_err());
        let type_meta = [field(1, b"v1"), field(2, b"Pod")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta)].concat();
        assert!(decode(&body).unwrap_err().contains("send JSON"));
    }
}
