//! Writes the OpenAPI v3 schemas keelson serves (`src/apiserver/openapi/*.json.deflate`) from
//! the `k8s-openapi` crate, which carries Kubernetes 1.32's definitions and descriptions.
//!
//! One file per served group version: the `components.schemas` map of that group version's
//! kinds and of every definition they reach, as kube-apiserver names them
//! (`io.k8s.api.apps.v1.Deployment`), compressed with raw DEFLATE. The generator adds only
//! what the crate leaves out and the server's behaviour decides:
//! `x-kubernetes-group-version-kind` on each kind, and `x-kubernetes-patch-strategy: merge`
//! with `x-kubernetes-patch-merge-key` on exactly the lists keelson's strategic merge patch
//! merges by key (kubectl computes `apply` patches from these; a key advertised but not
//! honoured would corrupt lists). The server's tests check both against its own tables.
//!
//! The same kinds, and the definitions they reach, give the protobuf schema tables
//! (`src/apiserver/protobuf/tables.rs`, see [`protobuf`]) their messages and JSON names.
//!
//! `cargo run --release` (in this folder) rewrites the files; `cargo test` fails when the
//! committed files are not what this generator writes now.

mod protobuf;

use std::path::{Path, PathBuf};

use k8s_openapi::api::{apps, batch, coordination, core, discovery, events, policy, rbac, storage};
use k8s_openapi::{
    Resource,
    api::{authentication, authorization, autoscaling},
};
use schemars::JsonSchema;
use schemars::r#gen::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

/// Where the generated files go, relative to this crate.
const OUT_DIR: &str = "../../src/apiserver/openapi";

/// Lists merged by key in keelson's strategic merge patch (`src/apiserver/patch.rs`), as
/// (definition, property, merge key). Status `conditions` lists are added for every kind
/// below (they merge by `type`).
const MERGE_KEYS: &[(&str, &str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "name"),
    ("io.k8s.api.core.v1.Container", "env", "name"),
    ("io.k8s.api.core.v1.Container", "ports", "containerPort"),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", "type"),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "port"),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "uid",
    ),
];

fn main() {
    let dir = out_dir();
    let out = generate();
    for (name, json) in &out.files {
        let path = dir.join(name);
        let packed = miniz_oxide::deflate::compress_to_vec(json, 10);
        if let Err(e) = std::fs::write(&path, &packed) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        println!("{name}: {} bytes, {} compressed", json.len(), packed.len());
    }
    let tables = out.tables();
    let path = tables_path();
    if let Err(e) = std::fs::write(&path, &tables) {
        eprintln!("cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    println!("{}: {} bytes", protobuf::OUT_FILE, tables.len());
}

/// What the generator makes of the served kinds.
#[derive(Default)]
struct Output {
    /// Each OpenAPI file's name and uncompressed contents.
    files: Vec<(String, Vec<u8>)>,
    /// Every definition of every file, by name.
    definitions: Map<String, Value>,
    /// The definition names of the served kinds.
    kinds: Vec<String>,
}

impl Output {
    /// The protobuf tables' Rust source: the served kinds, and the bodies of the
    /// subresources that take one of their own.
    fn tables(&self) -> String {
        let mut generator = SchemaGenerator::new(SchemaSettings::openapi3());
        generator.subschema_for::<policy::v1::Eviction>();
        generator.subschema_for::<core::v1::Binding>();
        // Bodies that are answered, never stored: `serviceaccounts/<name>/token`
        // (`kubectl create token`) and the self reviews of `kubectl auth can-i`. (`whoami`'s
        // SelfSubjectReview body is never read: it asks nothing.)
        generator.subschema_for::<authentication::v1::TokenRequest>();
        generator.subschema_for::<authorization::v1::SelfSubjectAccessReview>();
        generator.subschema_for::<authorization::v1::SelfSubjectRulesReview>();
        const BODIES: [&str; 5] = [
            ".Eviction",
            ".Binding",
            ".TokenRequest",
            ".SelfSubjectAccessReview",
            ".SelfSubjectRulesReview",
        ];
        let mut definitions = self.definitions.clone();
        let mut kinds = self.kinds.clone();
        for (name, schema) in generator.take_definitions() {
            definitions
                .entry(name.clone())
                .or_insert_with(|| serde_json::to_value(schema).expect("schemas are JSON"));
            if BODIES.iter().any(|b| name.ends_with(b)) {
                kinds.push(name);
            }
        }
        protobuf::generate(&definitions, &kinds)
    }
}

/// Every file's name and uncompressed contents, and the definitions in them.
fn generate() -> Output {
    let mut out = Output::default();
    let mut gv = GroupVersion::new();
    gv.kind::<core::v1::ConfigMap>();
    gv.kind::<core::v1::Endpoints>();
    gv.kind::<core::v1::Event>();
    gv.kind::<core::v1::Namespace>();
    gv.kind::<core::v1::Node>();
    gv.kind::<core::v1::PersistentVolumeClaim>();
    gv.kind::<core::v1::PersistentVolume>();
    gv.kind::<core::v1::Pod>();
    gv.kind::<core::v1::ReplicationController>();
    gv.kind::<core::v1::Secret>();
    gv.kind::<core::v1::ServiceAccount>();
    gv.kind::<core::v1::Service>();
    // The scale subresource's body (ReplicationControllers').
    gv.kind::<autoscaling::v1::Scale>();
    gv.finish(&mut out, "core_v1");

    let mut gv = GroupVersion::new();
    gv.kind::<apps::v1::ControllerRevision>();
    gv.kind::<apps::v1::DaemonSet>();
    gv.kind::<apps::v1::Deployment>();
    gv.kind::<apps::v1::ReplicaSet>();
    gv.kind::<apps::v1::StatefulSet>();
    // The scale subresource's body.
    gv.kind::<autoscaling::v1::Scale>();
    gv.finish(&mut out, "apps_v1");

    let mut gv = GroupVersion::new();
    gv.kind::<batch::v1::CronJob>();
    gv.kind::<batch::v1::Job>();
    gv.finish(&mut out, "batch_v1");

    let mut gv = GroupVersion::new();
    gv.kind::<coordination::v1::Lease>();
    gv.finish(&mut out, "coordination.k8s.io_v1");

    let mut gv = GroupVersion::new();
    gv.kind::<rbac::v1::ClusterRoleBinding>();
    gv.kind::<rbac::v1::ClusterRole>();
    gv.kind::<rbac::v1::RoleBinding>();
    gv.kind::<rbac::v1::Role>();
    gv.finish(&mut out, "rbac.authorization.k8s.io_v1");

    let mut gv = GroupVersion::new();
    gv.kind::<policy::v1::PodDisruptionBudget>();
    gv.finish(&mut out, "policy_v1");

    let mut gv = GroupVersion::new();
    gv.kind::<discovery::v1::EndpointSlice>();
    gv.finish(&mut out, "discovery.k8s.io_v1");

    // The same stored objects as core/v1 Events, in the newer API's field names.
    let mut gv = GroupVersion::new();
    gv.kind::<events::v1::Event>();
    gv.finish(&mut out, "events.k8s.io_v1");

    let mut gv = GroupVersion::new();
    gv.kind::<storage::v1::StorageClass>();
    gv.finish(&mut out, "storage.k8s.io_v1");
    out
}

/// The definitions of one group version's kinds, collected through one schemars generator.
struct GroupVersion {
    generator: SchemaGenerator,
    /// Definition name and `{group, kind, version}` of each kind added.
    kinds: Vec<(String, Value)>,
}

impl GroupVersion {
    fn new() -> GroupVersion {
        // OpenAPI 3 settings: refs under `#/components/schemas/`, and a `$ref` with a
        // description beside it wrapped in `allOf`, as kube-apiserver writes them.
        GroupVersion {
            generator: SchemaGenerator::new(SchemaSettings::openapi3()),
            kinds: Vec::new(),
        }
    }

    fn kind<T: JsonSchema + Resource>(&mut self) {
        self.generator.subschema_for::<T>();
        let gvk = json!({"group": T::GROUP, "kind": T::KIND, "version": T::VERSION});
        self.kinds.push((T::schema_name(), gvk));
    }

    fn finish(mut self, out: &mut Output, file: &str) {
        let mut definitions = self.generator.take_definitions();
        // The OpenAPI 3 visitors (`$ref` siblings into `allOf`, …) run on root schemas
        // only; these definitions are served as they are, so they get them here.
        for visitor in self.generator.visitors_mut() {
            for schema in definitions.values_mut() {
                visitor.visit_schema(schema);
            }
        }
        let mut schemas: Map<String, Value> = definitions
            .into_iter()
            .map(|(name, schema)| {
                (
                    name,
                    serde_json::to_value(schema).expect("schemas are JSON"),
                )
            })
            .collect();
        for (name, gvk) in &self.kinds {
            let Some(Value::Object(def)) = schemas.get_mut(name) else {
                panic!("{name} has no definition");
            };
            def.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
            // The kind's status conditions merge by type.
            let status = def
                .get("properties")
                .and_then(|p| p.get("status"))
                .and_then(reference);
            if let Some(status) = status
                && has_property(&schemas, &status, "conditions")
            {
                merge_key(&mut schemas, &status, "conditions", "type");
            }
        }
        for (def, property, key) in MERGE_KEYS {
            if schemas.contains_key(*def) {
                merge_key(&mut schemas, def, property, key);
            }
        }
        let json = serde_json::to_vec(&Value::Object(schemas.clone())).expect("schemas are JSON");
        out.files.push((format!("{file}.json.deflate"), json));
        out.kinds
            .extend(self.kinds.into_iter().map(|(name, _)| name));
        out.definitions.extend(schemas);
    }
}

/// The definition a property's schema refers to (`$ref`, or `allOf: [{$ref}]`).
fn reference(schema: &Value) -> Option<String> {
    let r = schema
        .get("$ref")
        .or_else(|| schema.get("allOf")?.get(0)?.get("$ref"))?;
    r.as_str()?
        .strip_prefix("#/components/schemas/")
        .map(str::to_owned)
}

fn has_property(schemas: &Map<String, Value>, def: &str, property: &str) -> bool {
    schemas
        .get(def)
        .and_then(|d| d.get("properties"))
        .and_then(|p| p.get(property))
        .is_some()
}

fn merge_key(schemas: &mut Map<String, Value>, def: &str, property: &str, key: &str) {
    let Some(Value::Object(p)) = schemas
        .get_mut(def)
        .and_then(|d| d.get_mut("properties"))
        .and_then(|p| p.get_mut(property))
    else {
        panic!("{def} has no property {property}");
    };
    p.insert("x-kubernetes-patch-merge-key".into(), json!(key));
    p.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
}

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(OUT_DIR)
}

fn tables_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(protobuf::OUT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed files decompress to exactly what the generator writes now; run
    /// `cargo run --release` here after changing it or k8s-openapi.
    #[test]
    fn committed_files_are_current() {
        let out = generate();
        for (name, json) in &out.files {
            let path = out_dir().join(name);
            let packed = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; run `cargo run --release`", path.display()));
            let committed = miniz_oxide::inflate::decompress_to_vec(&packed)
                .unwrap_or_else(|e| panic!("{name} is not raw DEFLATE: {e:?}"));
            assert!(
                &committed == json,
                "{name} is stale: run `cargo run --release` in .ci/openapi-gen/"
            );
        }
        let committed = std::fs::read_to_string(tables_path()).unwrap_or_default();
        assert!(
            committed == out.tables(),
            "{} is stale: run `cargo run --release` in .ci/openapi-gen/",
            protobuf::OUT_FILE
        );
    }
}
