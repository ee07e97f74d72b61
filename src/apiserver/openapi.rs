//! OpenAPI v3 documents: `/openapi/v3` (the index) and `/openapi/v3/api/v1`,
//! `/openapi/v3/apis/<group>/<version>` (one document per served group version).
//!
//! kubectl reads them to find that the server validates fields itself (the `fieldValidation`
//! parameter of each kind's PATCH operation), to compute `apply` patches (the kinds'
//! `x-kubernetes-patch-merge-key`s) and for `kubectl explain`. A document is the group
//! version's `paths`, written here from [`super::resources`] so they name exactly what is
//! served, and its `components.schemas`, generated from the `k8s-openapi` crate by
//! `.ci/openapi-gen/` and embedded compressed (raw DEFLATE, `openapi/*.json.deflate`).
//!
//! Invariants: nothing is decompressed at start-up or kept afterwards: each request inflates
//! what it needs (at most [`MAX_INFLATED`] bytes) and drops it with the response. A
//! document's hash covers its compressed schemas and its paths, so it changes exactly when
//! the document does and kubectl's cache (keyed by the index's `?hash=`) stays right.
//!
//! [`v2`] serves the same schemas as the one Swagger 2.0 document kubectl still reads in a
//! few places.

pub mod v2;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use super::Body;
use super::resources::{
    APPS_V1, BATCH_V1, COORDINATION_V1, CORE_V1, DISCOVERY_V1, EVENTS_K8S_IO_V1, GroupVersion,
    POLICY_V1, RBAC_V1, Resource, STORAGE_V1,
};
use super::routes;
use super::status::ApiError;

/// Largest inflated schema file accepted (the largest, core/v1, is about 0.26 MiB).
pub const MAX_INFLATED: usize = 8 * 1024 * 1024;

/// The embedded schemas of each served group version.
static SCHEMAS: [(&GroupVersion, &[u8]); 9] = [
    (&CORE_V1, include_bytes!("openapi/core_v1.json.deflate")),
    (&APPS_V1, include_bytes!("openapi/apps_v1.json.deflate")),
    (&BATCH_V1, include_bytes!("openapi/batch_v1.json.deflate")),
    (
        &COORDINATION_V1,
        include_bytes!("openapi/coordination.k8s.io_v1.json.deflate"),
    ),
    (
        &RBAC_V1,
        include_bytes!("openapi/rbac.authorization.k8s.io_v1.json.deflate"),
    ),
    (&POLICY_V1, include_bytes!("openapi/policy_v1.json.deflate")),
    (
        &DISCOVERY_V1,
        include_bytes!("openapi/discovery.k8s.io_v1.json.deflate"),
    ),
    (
        &EVENTS_K8S_IO_V1,
        include_bytes!("openapi/events.k8s.io_v1.json.deflate"),
    ),
    (
        &STORAGE_V1,
        include_bytes!("openapi/storage.k8s.io_v1.json.deflate"),
    ),
];

/// Why a schema could not be served. Each is our bug (a corrupt or oversized embedded file),
/// never the client's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no OpenAPI schemas are embedded for {0}")]
    NotEmbedded(String),
    #[error("the embedded OpenAPI schemas of {gv} do not inflate: {why}")]
    Corrupt { gv: String, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Answers `GET /openapi/v3/<rest>`: the index, or one document with its `ETag`. A document
/// asked for by its current hash may be cached for good, as kube-apiserver allows; one asked
/// for without it (or by an old hash) must be revalidated.
pub fn serve<B>(req: &Request<B>, rest: &[&str]) -> Response<Body> {
    if rest.is_empty() {
        return routes::json(StatusCode::OK, &index());
    }
    let Some(gv) = by_path(rest) else {
        return routes::error(&ApiError::UnknownPath);
    };
    let hash = hash(gv);
    let asked = req
        .uri()
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "hash"))
        .map(|(_, v)| v.into_owned());
    let immutable = asked.as_deref() == Some(hash.as_str());
    respond(req, &hash, immutable, "application/json", || document(gv))
}

/// Answers `GET /openapi/v2`, as protobuf when kubectl asks for it, JSON otherwise.
pub fn serve_v2<B>(req: &Request<B>) -> Response<Body> {
    let protobuf = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(v2::PROTOBUF_ASKED));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(crate::KUBE_VERSION.as_bytes());
    ctx.update(&[u8::from(protobuf)]);
    for (_, packed) in SCHEMAS.iter() {
        ctx.update(packed);
    }
    let hash = hex::encode_upper(ctx.finish().as_ref());
    if protobuf {
        respond(req, &hash, false, v2::PROTOBUF, v2::protobuf_document)
    } else {
        respond(req, &hash, false, "application/json", v2::json_document)
    }
}

/// A document with its `ETag`, or 304 when the client holds it already.
fn respond<B>(
    req: &Request<B>,
    hash: &str,
    immutable: bool,
    content_type: &'static str,
    body: impl FnOnce() -> Result<Vec<u8>>,
) -> Response<Body> {
    let etag = format!("\"{hash}\"");
    let held = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let mut resp = if held {
        let mut resp = Response::new(Full::new(Bytes::new()).boxed());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp
    } else {
        match body() {
            Ok(doc) => {
                let mut resp = Response::new(Full::new(Bytes::from(doc)).boxed());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(content_type),
                );
                resp
            }
            Err(e) => return routes::error(&ApiError::Internal(e.to_string())),
        }
    };
    let cache = if immutable {
        "public, immutable, max-age=31536000"
    } else {
        "no-cache, private"
    };
    let headers = resp.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(cache),
    );
    if let Ok(v) = header::HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    resp
}

/// `/openapi/v3`: each group version's document path, with its hash as kubectl caches it.
pub fn index() -> Value {
    let paths: Map<String, Value> = served()
        .map(|gv| {
            let path = document_path(gv);
            let url = format!("/openapi/v3/{path}?hash={}", hash(gv));
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({ "paths": paths })
}

/// The group version whose document `/openapi/v3/<path>` is (`api/v1`, `apis/apps/v1`).
pub fn by_path(segs: &[&str]) -> Option<&'static GroupVersion> {
    match segs {
        ["api", "v1"] => Some(&CORE_V1),
        ["apis", group, version] => GroupVersion::named(group, version),
        _ => None,
    }
}

/// The document's hash: hex SHA-256 of its paths and compressed schemas.
pub fn hash(gv: &GroupVersion) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(crate::KUBE_VERSION.as_bytes());
    ctx.update(paths(gv).to_string().as_bytes());
    ctx.update(packed(gv).unwrap_or_default());
    hex::encode_upper(ctx.finish().as_ref())
}

/// The whole document of one group version, as JSON bytes.
pub fn document(gv: &GroupVersion) -> Result<Vec<u8>> {
    let schemas = inflate(gv)?;
    let head = json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::KUBE_VERSION},
        "paths": paths(gv),
    })
    .to_string();
    // The schemas are spliced in as they are stored: a parse and re-encode would cost
    // several times their size in memory for nothing.
    let head = head.strip_suffix('}').unwrap_or(&head);
    let mut doc = Vec::with_capacity(head.len() + schemas.len() + 32);
    doc.extend_from_slice(head.as_bytes());
    doc.extend_from_slice(br#","components":{"schemas":"#);
    doc.extend_from_slice(&schemas);
    doc.extend_from_slice(b"}}");
    Ok(doc)
}

/// The `components.schemas` of one group version, parsed (for field validation).
pub fn schemas(gv: &GroupVersion) -> Result<Map<String, Value>> {
    let corrupt = |why: String| Error::Corrupt {
        gv: gv.api_version(),
        why,
    };
    match serde_json::from_slice(&inflate(gv)?) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(corrupt("not a JSON object".into())),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

/// The group version whose schemas describe `r`.
pub fn group_version(r: &Resource) -> Option<&'static GroupVersion> {
    served().find(|gv| gv.group == r.group && gv.version == r.version)
}

/// The name of a resource's kind among the schemas: `io.k8s.api.apps.v1.Deployment`
/// (the group's first label, `core` for the core group).
pub fn definition(r: &Resource) -> String {
    let group = match r.group.split('.').next() {
        Some("") | None => "core",
        Some(g) => g,
    };
    format!("io.k8s.api.{group}.{}.{}", r.version, r.kind)
}

/// The definition of the `autoscaling/v1 Scale` a scale subresource reads and writes.
pub const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";

/// Every group version with embedded schemas, core first.
pub(crate) fn served() -> impl Iterator<Item = &'static GroupVersion> {
    SCHEMAS.iter().map(|(gv, _)| *gv)
}

fn packed(gv: &GroupVersion) -> Result<&'static [u8]> {
    SCHEMAS
        .iter()
        .find(|(g, _)| *g == gv)
        .map(|(_, bytes)| *bytes)
        .ok_or_else(|| Error::NotEmbedded(gv.api_version()))
}

fn inflate(gv: &GroupVersion) -> Result<Vec<u8>> {
    miniz_oxide::inflate::decompress_to_vec_with_limit(packed(gv)?, MAX_INFLATED).map_err(|e| {
        Error::Corrupt {
            gv: gv.api_version(),
            why: e.to_string(),
        }
    })
}

/// `api/v1` or `apis/<group>/<version>`.
fn document_path(gv: &GroupVersion) -> String {
    if gv.group.is_empty() {
        format!("api/{}", gv.version)
    } else {
        format!("apis/{}/{}", gv.group, gv.version)
    }
}

/// The operations served for each resource of `gv`, as kube-apiserver describes them: what
/// kubectl reads is each operation's `x-kubernetes-group-version-kind`, the PATCH
/// operations' `fieldValidation` parameter and their request content types.
fn paths(gv: &GroupVersion) -> Value {
    let prefix = format!("/{}", document_path(gv));
    let mut paths = Map::new();
    for r in gv.resources {
        let kind = Op::new(
            r,
            definition(r),
            json!({"group": r.group, "version": r.version, "kind": r.kind}),
        );
        let (collection, object) = if r.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
            )
        } else {
            (
                format!("{prefix}/{}", r.plural),
                format!("{prefix}/{}/{{name}}", r.plural),
            )
        };
        if r.namespaced {
            paths.insert(
                format!("{prefix}/{}", r.plural),
                json!({"get": kind.op("list", &format!("list {} in all namespaces", r.plural))}),
            );
        }
        paths.insert(
            collection,
            json!({
                "get": kind.op("list", &format!("list or watch {}", r.plural)),
                "post": kind.write("create", &format!("create a {}", r.kind)),
                "delete": kind.op("deletecollection", &format!("delete a collection of {}", r.plural)),
            }),
        );
        paths.insert(object.clone(), kind.object(r.kind));
        if r.has_status {
            paths.insert(format!("{object}/status"), kind.object(r.kind));
        }
        if r.has_scale {
            let scale = Op::new(
                r,
                SCALE.to_owned(),
                json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
            );
            paths.insert(format!("{object}/scale"), scale.object("Scale"));
        }
    }
    Value::Object(paths)
}

/// How to describe the operations on one kind.
struct Op {
    definition: String,
    gvk: Value,
    namespaced: bool,
}

// === impl Op ===

impl Op {
    fn new(r: &Resource, definition: String, gvk: Value) -> Op {
        Op {
            definition,
            gvk,
            namespaced: r.namespaced,
        }
    }

    fn op(&self, action: &str, summary: &str) -> Value {
        let mut parameters = vec![param("path", "name", "name of the object")];
        if self.namespaced {
            parameters.push(param("path", "namespace", "object name and auth scope"));
        }
        json!({
            "description": summary,
            "parameters": parameters,
            "responses": {"200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": self.reference()}}},
            }},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": self.gvk,
        })
    }

    /// An operation with a body: create, replace or patch.
    fn write(&self, action: &str, summary: &str) -> Value {
        let mut op = self.op(action, summary);
        let body = if action == "patch" {
            let patch = json!({"schema": {"type": "object"}});
            json!({
                "application/json-patch+json": patch,
                "application/merge-patch+json": patch,
                "application/strategic-merge-patch+json": patch,
            })
        } else {
            json!({"*/*": {"schema": {"$ref": self.reference()}}})
        };
        op["requestBody"] = json!({"content": body, "required": true});
        if let Some(Value::Array(params)) = op.get_mut("parameters") {
            params.push(param("query", "dryRun", "When present, indicates that modifications should not be persisted. The only valid value is All."));
            params.push(param(
                "query",
                "fieldManager",
                "A name associated with the actor or entity that is making these changes.",
            ));
            params.push(param("query", "fieldValidation", "How the server treats unknown fields in the request body: Ignore drops them silently, Warn (the default) drops them with a Warning header each, Strict refuses the request with 400 BadRequest naming them."));
        }
        op
    }

    /// The operations on one object (or one of its subresources).
    fn object(&self, kind: &str) -> Value {
        json!({
            "get": self.op("get", &format!("read the specified {kind}")),
            "put": self.write("put", &format!("replace the specified {kind}")),
            "patch": self.write("patch", &format!("partially update the specified {kind}")),
            "delete": self.op("delete", &format!("delete a {kind}")),
        })
    }

    fn reference(&self) -> String {
        format!("#/components/schemas/{}", self.definition)
    }
}

fn param(place: &str, name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": place,
        "description": description,
        "required": place == "path",
        "schema": {"type": "string", "uniqueItems": true},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_kind_has_a_schema_with_its_group_version_kind() {
        for gv in std::iter::once(&CORE_V1).chain(super::super::resources::GROUPS) {
            let schemas = schemas(gv).unwrap();
            for r in gv.resources {
                let def = schemas
                    .get(&definition(r))
                    .unwrap_or_else(|| panic!("{} has no schema", definition(r)));
                assert_eq!(
                    def["x-kubernetes-group-version-kind"],
                    json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
                    "{}",
                    r.kind
                );
                assert!(
                    def["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{} has no description",
                    r.kind
                );
            }
            if gv.resources.iter().any(|r| r.has_scale) {
                assert!(schemas.contains_key(SCALE), "{}", gv.api_version());
            }
        }
    }

    #[test]
    fn documents_parse_and_reference_only_their_own_schemas() {
        for gv in served() {
            let doc: Value = serde_json::from_slice(&document(gv).unwrap()).unwrap();
            assert_eq!(doc["openapi"], "3.0.0");
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let mut refs = Vec::new();
            collect_refs(&doc, &mut refs);
            for r in refs {
                let name = r.strip_prefix("#/components/schemas/").unwrap();
                assert!(
                    schemas.contains_key(name),
                    "{} refers to {r}",
                    gv.api_version()
                );
            }
        }
    }

    #[test]
    fn patch_operations_offer_field_validation_and_strategic_merge() {
        let doc: Value = serde_json::from_slice(&document(&APPS_V1).unwrap()).unwrap();
        let path = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        let patch = &path["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(
            patch["requestBody"]["content"]
                .get("application/strategic-merge-patch+json")
                .is_some()
        );
        let scale = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
        assert_eq!(
            scale["patch"]["x-kubernetes-group-version-kind"]["kind"],
            "Scale"
        );
        // Every PATCH of a kind offers the parameter: kubectl looks at the first it finds.
        for (path, ops) in doc["paths"].as_object().unwrap() {
            if let Some(patch) = ops.get("patch") {
                assert!(
                    patch["parameters"].to_string().contains("fieldValidation"),
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn the_index_names_every_document_with_its_hash() {
        let index = index();
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert_eq!(
            url,
            format!("/openapi/v3/apis/apps/v1?hash={}", hash(&APPS_V1))
        );
        assert!(index["paths"]["api/v1"].is_object());
        assert_eq!(index["paths"].as_object().unwrap().len(), SCHEMAS.len());
        assert_ne!(hash(&APPS_V1), hash(&BATCH_V1));
        assert_eq!(by_path(&["apis", "batch", "v1"]), Some(&BATCH_V1));
        assert_eq!(by_path(&["api", "v1"]), Some(&CORE_V1));
        assert_eq!(by_path(&["apis", "batch", "v2"]), None);
    }

    /// kubectl computes `apply` patches from the advertised merge keys, and the server merges
    /// them with its own (`patch::merge_key`): a list one side merges and the other replaces
    /// would lose or corrupt items. So every list reachable from every kind must agree.
    #[test]
    fn advertised_merge_keys_are_the_ones_the_server_merges_by() {
        let mut checked = 0;
        let mut differ = Vec::new();
        for gv in served() {
            let schemas = schemas(gv).unwrap();
            for r in gv.resources {
                let root = json!({"$ref": format!("#/components/schemas/{}", definition(r))});
                let mut lists = Vec::new();
                lists_of(&schemas, &root, String::new(), 0, &mut lists);
                for (path, advertised) in lists {
                    let server = crate::apiserver::patch::merge_key(Some(&path));
                    if server != advertised.as_deref() {
                        differ.push(format!(
                            "{} {path}: server {server:?}, schema {advertised:?}",
                            r.kind
                        ));
                    }
                    checked += 1;
                }
            }
        }
        assert!(differ.is_empty(), "{}", differ.join("\n"));
        assert!(checked > 100, "{checked}");
        // Spot checks that the walk reaches where it matters.
        let apps = schemas(&APPS_V1).unwrap();
        let root = json!({"$ref": "#/components/schemas/io.k8s.api.apps.v1.Deployment"});
        let mut lists = Vec::new();
        lists_of(&apps, &root, String::new(), 0, &mut lists);
        for (path, key) in [
            (".spec.template.spec.containers", "name"),
            (".spec.template.spec.containers[].env", "name"),
            (
                ".spec.template.spec.initContainers[].ports",
                "containerPort",
            ),
            (".status.conditions", "type"),
            (".metadata.ownerReferences", "uid"),
        ] {
            assert!(
                lists.contains(&(path.to_owned(), Some(key.to_owned()))),
                "{path}"
            );
        }
    }

    /// Every list property under `schema` (JSON path in `patch.rs`'s form, `[]` for list
    /// items) with its advertised merge key.
    fn lists_of(
        schemas: &Map<String, Value>,
        schema: &Value,
        path: String,
        depth: usize,
        out: &mut Vec<(String, Option<String>)>,
    ) {
        if depth > 16 {
            return;
        }
        let mut s = schema;
        while let Some(r) = s.get("$ref").or_else(|| {
            s.get("allOf")
                .and_then(|a| a.get(0))
                .and_then(|a| a.get("$ref"))
        }) {
            let name = r
                .as_str()
                .unwrap()
                .trim_start_matches("#/components/schemas/");
            s = &schemas[name];
        }
        if let Some(items) = s.get("items") {
            lists_of(schemas, items, format!("{path}[]"), depth + 1, out);
            return;
        }
        for (k, sub) in s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let p = format!("{path}.{k}");
            if sub.get("type") == Some(&json!("array")) {
                let key = sub
                    .get("x-kubernetes-patch-merge-key")
                    .and_then(Value::as_str);
                out.push((p.clone(), key.map(str::to_owned)));
            }
            lists_of(schemas, sub, p, depth + 1, out);
        }
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(s)) => out.push(s.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
