//! `/openapi/v2`: the same schemas as one Swagger 2.0 document of `definitions`, as JSON or as
//! the protobuf (`openapi_v2.Document` of gnostic) that kubectl asks for.
//!
//! kubectl 1.32 reads v3 first; it falls back to v2 only where v3 cannot answer: client-side
//! validation of a `kind: List` file (`kubectl apply -f` of `kubectl get -o yaml` output),
//! and `kubectl explain --output=plaintext-openapiv2`. Both need only the definitions, so the
//! document has no paths. Its definitions are the union of every group version's schemas in
//! v2's form: references under `#/definitions/`, and kube's v3 `allOf: [{$ref}]` back to a
//! plain `$ref` (kubectl's v2 parser ignores `allOf`, and would then check nothing below).
//!
//! Invariant: built per request from the embedded schemas and dropped with the response,
//! like the v3 documents.

use serde_json::{Map, Value, json};

use super::{Result, SCHEMAS};

/// The media type kubectl asks for (client-go's `openAPIV2mimePb`); kube-apiserver answers
/// it, and the newer spelling, with [`PROTOBUF`] (Go's media type parser refuses the `@`).
pub const PROTOBUF_ASKED: &str = "com.github.proto-openapi.spec.v2";
/// The protobuf document's `Content-Type`, as kube-apiserver sends it.
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The v2 document as JSON.
pub fn json_document() -> Result<Vec<u8>> {
    let doc = json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": crate::KUBE_VERSION},
        "paths": {},
        "definitions": definitions()?,
    });
    Ok(doc.to_string().into_bytes())
}

/// The v2 document as gnostic's `openapi_v2.Document` protobuf.
pub fn protobuf_document() -> Result<Vec<u8>> {
    let definitions = definitions()?;
    let mut out = Vec::new();
    string(&mut out, 1, "2.0");
    message(&mut out, 2, |info| {
        string(info, 1, "Kubernetes");
        string(info, 2, crate::KUBE_VERSION);
    });
    message(&mut out, 8, |_| {});
    message(&mut out, 9, |defs| {
        for (name, schema) in &definitions {
            message(defs, 1, |named| {
                string(named, 1, name);
                message(named, 2, |s| encode_schema(s, schema));
            });
        }
    });
    Ok(out)
}

/// Every group version's schemas, in v2's form. A definition several group versions share
/// (`ObjectMeta`, `PodSpec`) is the same in each.
fn definitions() -> Result<Map<String, Value>> {
    let mut all = Map::new();
    for (gv, _) in SCHEMAS.iter() {
        let schemas = super::schemas(gv)?;
        for (name, schema) in schemas {
            all.entry(name).or_insert_with(|| to_v2(schema));
        }
    }
    Ok(all)
}

/// A v3 schema in v2's form. Recurses along the schema, which is ours and shallow.
fn to_v2(schema: Value) -> Value {
    match schema {
        Value::Object(mut m) => {
            m.remove("nullable");
            // `{allOf: [{$ref}], description}` → `{$ref, description}`.
            let single_ref = match m.get("allOf").and_then(Value::as_array) {
                Some(all) if all.len() == 1 => all
                    .first()
                    .and_then(|a| a.get("$ref"))
                    .filter(|_| all.first().and_then(Value::as_object).map(Map::len) == Some(1))
                    .cloned(),
                _ => None,
            };
            if let Some(r) = single_ref {
                m.remove("allOf");
                m.insert("$ref".into(), r);
            }
            let m = m
                .into_iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        let r = r.replacen("#/components/schemas/", "#/definitions/", 1);
                        (k, Value::String(r))
                    }
                    // Values, not schemas.
                    ("default" | "enum" | "example", v) => (k, v),
                    (_, v) if k.starts_with("x-") => (k, v),
                    ("properties", Value::Object(props)) => {
                        let props = props.into_iter().map(|(n, s)| (n, to_v2(s))).collect();
                        (k, Value::Object(props))
                    }
                    (_, v) => (k, to_v2(v)),
                })
                .collect();
            Value::Object(m)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(to_v2).collect()),
        other => other,
    }
}

/// One `openapi_v2.Schema`. Fields kubectl never reads from a Kubernetes schema (numeric
/// bounds, patterns, xml) are left out.
fn encode_schema(out: &mut Vec<u8>, schema: &Value) {
    let Some(fields) = schema.as_object() else {
        return;
    };
    for (k, v) in fields {
        match (k.as_str(), v) {
            ("$ref", Value::String(s)) => string(out, 1, s),
            ("format", Value::String(s)) => string(out, 2, s),
            ("title", Value::String(s)) => string(out, 3, s),
            ("description", Value::String(s)) => string(out, 4, s),
            ("default", v) => message(out, 5, |a| any(a, v)),
            ("uniqueItems", Value::Bool(b)) => boolean(out, 16, *b),
            ("required", Value::Array(names)) => {
                for n in names.iter().filter_map(Value::as_str) {
                    string(out, 19, n);
                }
            }
            ("enum", Value::Array(values)) => {
                for v in values {
                    message(out, 20, |a| any(a, v));
                }
            }
            ("additionalProperties", v) => message(out, 21, |a| match v {
                Value::Bool(b) => boolean(a, 2, *b),
                s => message(a, 1, |s2| encode_schema(s2, s)),
            }),
            ("type", v) => message(out, 22, |t| {
                for name in std::iter::once(v)
                    .chain(v.as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                {
                    string(t, 1, name);
                }
            }),
            ("items", v) => message(out, 23, |items| {
                for s in std::iter::once(v)
                    .filter(|v| v.is_object())
                    .chain(v.as_array().into_iter().flatten())
                {
                    message(items, 1, |s2| encode_schema(s2, s));
                }
            }),
            ("allOf", Value::Array(all)) => {
                for s in all {
                    message(out, 24, |s2| encode_schema(s2, s));
                }
            }
            ("properties", Value::Object(props)) => message(out, 25, |p| {
                for (name, s) in props {
                    message(p, 1, |named| {
                        string(named, 1, name);
                        message(named, 2, |s2| encode_schema(s2, s));
                    });
                }
            }),
            ("readOnly", Value::Bool(b)) => boolean(out, 27, *b),
            (name, v) if name.starts_with("x-") => message(out, 31, |ext| {
                string(ext, 1, name);
                message(ext, 2, |a| any(a, v));
            }),
            _ => {}
        }
    }
}

/// gnostic's `Any`: the value as YAML text (JSON is YAML).
fn any(out: &mut Vec<u8>, v: &Value) {
    string(out, 2, &v.to_string());
}

// === protobuf wire format: varints and length-delimited fields ===

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    tag(out, field, 2);
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn boolean(out: &mut Vec<u8>, field: u32, b: bool) {
    tag(out, field, 0);
    varint(out, u64::from(b));
}

/// A nested message, written by `f` and then length-prefixed.
fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    tag(out, field, 2);
    varint(out, inner.len() as u64);
    out.extend_from_slice(&inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_use_v2_references_and_no_all_of() {
        let defs = definitions().unwrap();
        let spec = &defs["io.k8s.api.apps.v1.DeploymentSpec"];
        assert_eq!(
            spec["properties"]["template"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.PodTemplateSpec"
        );
        assert!(spec["properties"]["template"]["description"].is_string());
        let text = Value::Object(defs.clone()).to_string();
        assert!(!text.contains("#/components/schemas/"));
        assert!(!text.contains("\"allOf\""));
        // Every reference resolves within the one document, as kubectl's parser requires.
        for r in text.split("\"$ref\":\"#/definitions/").skip(1) {
            let name = r.split('"').next().unwrap();
            assert!(defs.contains_key(name), "{name}");
        }
        assert!(defs.contains_key("io.k8s.api.batch.v1.CronJob"));
        assert!(defs.contains_key("io.k8s.api.core.v1.Pod"));
    }

    #[test]
    fn protobuf_fields_are_length_delimited_as_protobuf_says() {
        let mut out = Vec::new();
        string(&mut out, 1, "2.0");
        assert_eq!(out, [0x0a, 3, b'2', b'.', b'0']);
        let mut out = Vec::new();
        message(&mut out, 9, |m| string(m, 1, &"x".repeat(200)));
        // Field 9, wire type 2; 203 bytes as a two-byte varint.
        assert_eq!(&out[..3], &[0x4a, 0xcb, 0x01]);
        assert_eq!(out.len(), 3 + 203);
        let doc = protobuf_document().unwrap();
        assert_eq!(&doc[..5], &[0x0a, 3, b'2', b'.', b'0']);
        let json: Value = serde_json::from_slice(&json_document().unwrap()).unwrap();
        assert_eq!(json["swagger"], "2.0");
    }
}
