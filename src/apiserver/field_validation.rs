//! Server-side field validation: the `fieldValidation` query parameter of create, update and
//! patch, and the walk that finds a body's unknown fields in its kind's OpenAPI schema.
//!
//! kubectl ≥ 1.25 leaves validation to the server when the OpenAPI says the server takes
//! `fieldValidation` (see [`super::openapi`]), so the server must do it: `Strict` refuses a
//! body with unknown fields (400, `strict decoding error: unknown field "spec.foo"`, worded
//! as kube-apiserver does), `Warn` (the default, as in Kubernetes) accepts it with one
//! `Warning` header per field, `Ignore` says nothing. Unknown fields are dropped nowhere: the
//! stored object keeps what the registry keeps, as before.
//!
//! The walk follows `properties`, `$ref` (and kube's `allOf: [{$ref}]`), arrays' `items`,
//! maps' `additionalProperties`, and stops at `x-kubernetes-preserve-unknown-fields` and at
//! objects whose schema names no fields (free-form: `RawExtension`). It reads only names,
//! not types or values; those are the kinds' strategies' job. Invariant: it recurses along
//! the body, which the JSON parser bounds (128 levels), and follows at most [`MAX_REF_HOPS`]
//! references per level, so a cyclic schema cannot make it loop.

use serde_json::{Map, Value};

use super::openapi;
use super::resources::Resource;
use super::status::ApiError;

/// References followed in a row without descending into the body.
const MAX_REF_HOPS: usize = 16;

/// What to do about unknown fields, from the `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Say nothing.
    Ignore,
    /// Accept the request with a `Warning` header per field (the default).
    Warn,
    /// Refuse the request with 400 naming every field.
    Strict,
}

/// What a request body is, which decides how it is read against the schema.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// A whole object (create, update).
    Object(&'a Value),
    /// A JSON merge or strategic merge patch: shaped like the object, with `null`s that
    /// delete and `$`-directives that are not fields.
    MergePatch(&'a Value),
    /// An RFC 6902 JSON patch: the values it adds or replaces, at their paths.
    JsonPatch(&'a Value),
}

/// Which write is checked; it decides the wording of a refusal, as kube-apiserver's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Create,
    Update,
    Patch,
}

// === impl Directive ===

impl Directive {
    pub fn parse(value: Option<&str>) -> Result<Directive, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(Directive::Warn),
            Some("Ignore") => Ok(Directive::Ignore),
            Some("Strict") => Ok(Directive::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation {other:?} is not supported: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Checks `body`, written to `resource` (or, with `scale`, to its scale subresource), as
/// `directive` says: the warnings to send back, or the 400 that refuses it. `duplicates` are
/// the fields the raw body named twice ([`duplicate_fields`]).
pub fn check(
    directive: Directive,
    resource: &Resource,
    scale: bool,
    write: Write,
    body: Body<'_>,
    duplicates: &[String],
) -> Result<Vec<String>, ApiError> {
    if directive == Directive::Ignore {
        return Ok(Vec::new());
    }
    let gv = openapi::group_version(resource).ok_or_else(|| {
        ApiError::Internal(format!(
            "no OpenAPI schemas are embedded for {}",
            resource.api_version()
        ))
    })?;
    let schemas = openapi::schemas(gv).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (definition, kind, version) = if scale {
        (openapi::SCALE.to_owned(), "Scale", "v1")
    } else {
        (
            openapi::definition(resource),
            resource.kind,
            resource.version,
        )
    };
    let fields = unknown_fields(&schemas, &definition, body);
    let problems: Vec<String> = duplicates
        .iter()
        .map(|f| format!("duplicate field {f:?}"))
        .chain(fields.iter().map(|f| format!("unknown field {f:?}")))
        .collect();
    if directive == Directive::Warn || problems.is_empty() {
        return Ok(problems);
    }
    let strict = format!("strict decoding error: {}", problems.join(", "));
    Err(ApiError::BadRequest(match write {
        Write::Patch => strict,
        Write::Create | Write::Update => {
            format!("{kind} in version {version:?} cannot be handled as a {kind}: {strict}")
        }
    }))
}

/// The paths of the fields of `body` that the schema `definition` does not name, in
/// kube-apiserver's form (`spec.template.spec.containers[0].foo`), in body order.
pub fn unknown_fields(
    schemas: &Map<String, Value>,
    definition: &str,
    body: Body<'_>,
) -> Vec<String> {
    let root = Value::String(format!("#/components/schemas/{definition}"));
    let root = Value::Object(Map::from_iter([("$ref".to_owned(), root)]));
    let mut walk = Walk {
        schemas,
        patch: !matches!(body, Body::Object(_)),
        out: Vec::new(),
    };
    match body {
        Body::Object(v) | Body::MergePatch(v) => walk.value(&root, v, &mut String::new()),
        Body::JsonPatch(ops) => {
            for op in ops.as_array().into_iter().flatten() {
                let adds = matches!(
                    op.get("op").and_then(Value::as_str),
                    Some("add" | "replace" | "test")
                );
                if let (true, Some(pointer), Some(value)) = (
                    adds,
                    op.get("path").and_then(Value::as_str),
                    op.get("value"),
                ) {
                    walk.at_pointer(&root, pointer, value);
                }
            }
        }
    }
    walk.out
}

/// One walk over a body, collecting the unknown fields' paths.
struct Walk<'a> {
    schemas: &'a Map<String, Value>,
    /// Whether the body is a merge patch (`null`s and `$`-directives are not fields).
    patch: bool,
    out: Vec<String>,
}

/// What a schema says a value may hold, once its references are followed.
enum Shape<'a> {
    /// Anything: no fields named, or `x-kubernetes-preserve-unknown-fields`.
    Free,
    Object {
        properties: Option<&'a Map<String, Value>>,
        /// The schema of every value of a map.
        additional: Option<&'a Value>,
    },
    Array(&'a Value),
}

// === impl Walk ===

impl<'a> Walk<'a> {
    fn value(&mut self, schema: &'a Value, value: &Value, path: &mut String) {
        match (self.shape(schema), value) {
            (
                Shape::Object {
                    properties,
                    additional,
                },
                Value::Object(map),
            ) => {
                for (k, v) in map {
                    if self.patch && (v.is_null() || k.starts_with('$')) {
                        continue;
                    }
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    match properties.and_then(|p| p.get(k)).or(additional) {
                        Some(sub) => self.value(sub, v, path),
                        None => self.out.push(path.clone()),
                    }
                    path.truncate(len);
                }
            }
            (Shape::Array(items), Value::Array(values)) => {
                for (i, v) in values.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    self.value(items, v, path);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }

    /// Follows a JSON pointer (`/spec/template/metadata/labels/app`) down the schema, then
    /// checks the value placed there.
    fn at_pointer(&mut self, root: &'a Value, pointer: &str, value: &Value) {
        let mut schema = root;
        let mut path = String::new();
        for raw in pointer.split('/').skip(1) {
            let seg = raw.replace("~1", "/").replace("~0", "~");
            match self.shape(schema) {
                Shape::Object {
                    properties,
                    additional,
                } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&seg);
                    match properties.and_then(|p| p.get(&seg)).or(additional) {
                        Some(sub) => schema = sub,
                        None => {
                            self.out.push(path);
                            return;
                        }
                    }
                }
                Shape::Array(items) => {
                    path.push_str(&format!("[{seg}]"));
                    schema = items;
                }
                Shape::Free => return,
            }
        }
        self.value(schema, value, &mut path);
    }

    fn shape(&self, mut schema: &'a Value) -> Shape<'a> {
        for _ in 0..MAX_REF_HOPS {
            if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
                return Shape::Free;
            }
            let next = match schema.get("allOf").and_then(Value::as_array) {
                Some(all) if all.len() == 1 => all.first(),
                _ => schema.get("$ref"),
            };
            if let Some(next) = next {
                let target = match next {
                    Value::String(r) => r
                        .strip_prefix("#/components/schemas/")
                        .and_then(|name| self.schemas.get(name)),
                    other => Some(other),
                };
                match target {
                    Some(t) => {
                        schema = t;
                        continue;
                    }
                    // A reference we cannot follow names no fields we could check.
                    None => return Shape::Free,
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
                return Shape::Array(items);
            }
            if properties.is_none() && additional.is_none() {
                return Shape::Free;
            }
            return Shape::Object {
                properties,
                additional,
            };
        }
        Shape::Free
    }
}

/// The fields a JSON body names twice, in kube-apiserver's form (`data.a`,
/// `spec.containers[0].name`). A JSON object may legally repeat a key and the parser keeps the
/// last value, so a second walk over the bytes finds them; strict decoding refuses them and
/// the default warns, as kube-apiserver does. Recurses as deep as the body, which the parser
/// that already read it bounds (128 levels); a body that does not parse yields nothing here.
pub fn duplicate_fields(json: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(json);
    let _ = serde::de::DeserializeSeed::deserialize(
        Duplicates {
            path: String::new(),
            out: &mut out,
        },
        &mut de,
    );
    out
}

/// One level of [`duplicate_fields`]' walk.
struct Duplicates<'a> {
    path: String,
    out: &'a mut Vec<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Duplicates<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Duplicates<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                self.out.push(path.clone());
            }
            map.next_value_seed(Duplicates {
                path,
                out: &mut *self.out,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(Duplicates {
                path: format!("{}[{i}]", self.path),
                out: &mut *self.out,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{APPS_V1, CONFIGMAPS, CORE_V1, DEPLOYMENTS, PODS};
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "web",
                            "image": "nginx",
                            "env": [{"name": "A", "value": "1"}],
                            "resources": {"limits": {"memory": "64Mi", "cpu": 1}},
                            "ports": [{"containerPort": 80}],
                        }],
                    },
                },
            },
            "status": {"replicas": 1},
        })
    }

    fn unknown(definition: &str, body: Body<'_>) -> Vec<String> {
        let gv = if definition.contains(".apps.") {
            &APPS_V1
        } else {
            &CORE_V1
        };
        unknown_fields(&openapi::schemas(gv).unwrap(), definition, body)
    }

    #[test]
    fn a_known_object_has_no_unknown_fields() {
        let d = deployment();
        assert_eq!(
            unknown("io.k8s.api.apps.v1.Deployment", Body::Object(&d)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn unknown_fields_are_named_by_their_path_through_refs_lists_and_maps() {
        let mut d = deployment();
        d["spec"]["foo"] = json!(1);
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["valu"] = json!("x");
        d["spec"]["selector"]["matchLabels"]["anything"] = json!("goes");
        d["spec"]["strategy"]["rollingUpdate"]["maxSurges"] = json!(1);
        d["top"] = json!({"nested": true});
        assert_eq!(
            unknown("io.k8s.api.apps.v1.Deployment", Body::Object(&d)),
            [
                "spec.foo",
                "spec.strategy.rollingUpdate.maxSurges",
                "spec.template.spec.containers[0].env[0].valu",
                "spec.template.spec.containers[0].imagePullPolicyy",
                "top",
            ]
        );
    }

    #[test]
    fn maps_and_free_form_values_take_any_key() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"any.key": "v"}, "binaryData": {"b": "AA=="}});
        assert!(unknown("io.k8s.api.core.v1.ConfigMap", Body::Object(&cm)).is_empty());
        let rev = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"},
            "revision": 1, "data": {"spec": {"whatever": {"deep": [1]}}}});
        assert!(unknown("io.k8s.api.apps.v1.ControllerRevision", Body::Object(&rev)).is_empty());
    }

    #[test]
    fn preserve_unknown_fields_stops_the_walk() {
        let schemas = Map::from_iter([(
            "x.Y".to_owned(),
            json!({"properties": {"a": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}),
        )]);
        let body = json!({"a": {"b": 1}, "c": 2});
        assert_eq!(unknown_fields(&schemas, "x.Y", Body::Object(&body)), ["c"]);
    }

    #[test]
    fn cyclic_references_end() {
        let schemas = Map::from_iter([
            ("a".to_owned(), json!({"$ref": "#/components/schemas/b"})),
            ("b".to_owned(), json!({"$ref": "#/components/schemas/a"})),
        ]);
        assert!(unknown_fields(&schemas, "a", Body::Object(&json!({"x": 1}))).is_empty());
    }

    #[test]
    fn patches_skip_directives_and_deletions() {
        let patch = json!({
            "metadata": {"annotations": {"x": null}, "bogus": null},
            "spec": {
                "$setElementOrder/containers": [{"name": "web"}],
                "template": {"spec": {"containers": [
                    {"name": "web", "$patch": "delete"},
                    {"name": "side", "imag": "x"},
                ]}},
            },
        });
        assert_eq!(
            unknown("io.k8s.api.apps.v1.Deployment", Body::MergePatch(&patch)),
            ["spec.template.spec.containers[1].imag"]
        );
        // In a whole object a `$` key is a field like any other.
        let obj = json!({"metadata": {"$patch": "x"}});
        assert_eq!(
            unknown("io.k8s.api.apps.v1.Deployment", Body::Object(&obj)),
            ["metadata.$patch"]
        );
    }

    #[test]
    fn json_patches_are_checked_at_their_paths() {
        let ops = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "B", "vlue": "2"}},
            {"op": "add", "path": "/metadata/labels/a~1b", "value": "x"},
            {"op": "add", "path": "/spec/nope/deeper", "value": 1},
            {"op": "remove", "path": "/spec/gone"},
        ]);
        assert_eq!(
            unknown("io.k8s.api.apps.v1.Deployment", Body::JsonPatch(&ops)),
            ["spec.template.spec.containers[0].env[-].vlue", "spec.nope"]
        );
    }

    #[test]
    fn strict_refuses_as_kube_apiserver_words_it_and_warn_returns_the_fields() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        assert!(
            check(
                Directive::Strict,
                &PODS,
                false,
                Write::Create,
                Body::Object(&pod),
                &[],
            )
            .unwrap()
            .is_empty()
        );
        pod["spec"]["foo"] = json!(1);
        let err = check(
            Directive::Strict,
            &PODS,
            false,
            Write::Create,
            Body::Object(&pod),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.code(), 400);
        assert_eq!(
            err.to_string(),
            "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.foo\""
        );
        let err = check(
            Directive::Strict,
            &PODS,
            false,
            Write::Patch,
            Body::MergePatch(&pod),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "strict decoding error: unknown field \"spec.foo\""
        );
        assert_eq!(
            check(
                Directive::Warn,
                &PODS,
                false,
                Write::Update,
                Body::Object(&pod),
                &[],
            )
            .unwrap(),
            ["unknown field \"spec.foo\""]
        );
        assert!(
            check(
                Directive::Ignore,
                &PODS,
                false,
                Write::Update,
                Body::Object(&pod),
                &[],
            )
            .unwrap()
            .is_empty()
        );
        let scale = json!({"spec": {"replicas": 2, "replica": 3}});
        assert_eq!(
            check(
                Directive::Warn,
                &DEPLOYMENTS,
                true,
                Write::Patch,
                Body::MergePatch(&scale),
                &[],
            )
            .unwrap(),
            ["unknown field \"spec.replica\""]
        );
        let cm = json!({"data": {"k": "v"}, "dta": {}});
        assert_eq!(
            check(
                Directive::Warn,
                &CONFIGMAPS,
                false,
                Write::Update,
                Body::Object(&cm),
                &[],
            )
            .unwrap(),
            ["unknown field \"dta\""]
        );
        // Fields named twice in the raw body are refused alike, before unknown ones.
        let err = check(
            Directive::Strict,
            &PODS,
            false,
            Write::Create,
            Body::Object(&pod),
            &["metadata.name".to_owned()],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("strict decoding error: duplicate field \"metadata.name\", unknown field \"spec.foo\""),
            "{err}"
        );
    }

    #[test]
    fn directives_parse_as_kubernetes_spells_them() {
        assert_eq!(Directive::parse(None).unwrap(), Directive::Warn);
        assert_eq!(Directive::parse(Some("Strict")).unwrap(), Directive::Strict);
        assert_eq!(Directive::parse(Some("Ignore")).unwrap(), Directive::Ignore);
        assert_eq!(Directive::parse(Some("strict")).unwrap_err().code(), 400);
    }

    #[test]
    fn repeated_keys_are_found_with_their_paths() {
        let body = br#"{"data":{"a":"1","a":"2"},"items":[{"name":"x","name":"y"}],"kind":"A"}"#;
        assert_eq!(super::duplicate_fields(body), ["data.a", "items[0].name"]);
        assert!(super::duplicate_fields(br#"{"a":{"b":1},"c":{"b":2}}"#).is_empty());
    }
}
