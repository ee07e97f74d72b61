//! The `scale` subresource of the kinds with replicas (Deployments, ReplicaSets,
//! ReplicationControllers, StatefulSets): an `autoscaling/v1 Scale` read from the parent object, and writes of it
//! turned into a merge patch of the parent's `spec.replicas`.
//!
//! Nothing is stored here: every write goes through [`Registry::patch`], so the parent's
//! validation, admission, generation and optimistic concurrency apply to a scale as to any
//! other change of its spec.

use serde_json::{Value, json};

use super::admission::Writer;
use super::kinds::workload;
use super::patch;
use super::registry::{Part, Registry};
use super::resources::ObjectRef;
use super::status::{ApiError, Result};

/// Attempts at read-patch-write before a scale patch gives up under contention.
const RETRIES: usize = 16;

/// `GET …/scale`.
pub async fn get(registry: &Registry, r: &ObjectRef) -> Result<Value> {
    Ok(view(r, &registry.get(r).await?))
}

/// `PUT …/scale`: sets the parent's replicas to the body's `spec.replicas`. With
/// `metadata.resourceVersion`, only if the parent is still at that version.
pub async fn update(
    registry: &Registry,
    r: &ObjectRef,
    writer: Writer<'_>,
    body: Value,
) -> Result<Value> {
    check_body(r, &body)?;
    let replicas = replicas(&body)?;
    let mut change = json!({"spec": {"replicas": replicas}});
    if let Some(rv) = body
        .pointer("/metadata/resourceVersion")
        .filter(|v| !v.is_null())
    {
        change["metadata"] = json!({"resourceVersion": rv});
    }
    let parent = registry
        .patch(r, Part::Main, writer, patch::Kind::Merge, change)
        .await?;
    Ok(view(r, &parent))
}

/// `PATCH …/scale` (what `kubectl scale` sends): the patch applies to the Scale, and the
/// replicas it ends with are written to the parent, retried on conflicts unless the patch
/// names a resourceVersion.
pub async fn patch(
    registry: &Registry,
    r: &ObjectRef,
    writer: Writer<'_>,
    kind: patch::Kind,
    body: Value,
) -> Result<Value> {
    let precondition = body.pointer("/metadata/resourceVersion").is_some();
    for _ in 0..RETRIES {
        let scale = view(r, &registry.get(r).await?);
        let patched =
            patch::apply(kind, &scale, &body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        check_body(r, &patched)?;
        let change = json!({
            "metadata": {"resourceVersion": patched.pointer("/metadata/resourceVersion")},
            "spec": {"replicas": replicas(&patched)?},
        });
        match registry
            .patch(r, Part::Main, writer, patch::Kind::Merge, change)
            .await
        {
            Err(ApiError::Conflict { .. }) if !precondition => continue,
            other => return other.map(|parent| view(r, &parent)),
        }
    }
    Err(ApiError::Conflict {
        resource: r.resource.group_resource(),
        name: r.name.clone(),
    })
}

/// The Scale of a parent object: its identity, `spec.replicas`, and the replicas and
/// selector its status reports (in the string form, whatever form the parent's kind has).
pub fn view(r: &ObjectRef, parent: &Value) -> Value {
    let meta = &parent["metadata"];
    let mut metadata = json!({});
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(field) {
            metadata[field] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": workload::count(parent, "/spec/replicas")},
        "status": {
            "replicas": workload::count(parent, "/status/replicas"),
            "selector": workload::selector_string(
                parent
                    .pointer("/spec/selector")
                    .and_then(|s| r.resource.strategy.label_selector(s))
                    .as_deref(),
            ),
        },
    })
}

/// A Scale body for this object: the right kind, and no other object's name.
fn check_body(r: &ObjectRef, body: &Value) -> Result<()> {
    if !body.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a Scale object".into(),
        ));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != "Scale"
    {
        return Err(ApiError::BadRequest(format!(
            "the kind {kind:?} of the body does not match the endpoint, which serves \"Scale\""
        )));
    }
    if let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str)
        && name != r.name
    {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            r.name
        )));
    }
    Ok(())
}

/// `spec.replicas` of a Scale (0 when absent, as Kubernetes reads it); negative values are
/// left to the parent's validation, which names the field.
fn replicas(scale: &Value) -> Result<i64> {
    match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_i64().ok_or_else(|| ApiError::Invalid {
            kind: "Scale.autoscaling".into(),
            name: scale
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            causes: vec![format!(
                "spec.replicas: Invalid value: {v}: must be an integer"
            )],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{DEPLOYMENTS, REPLICATIONCONTROLLERS};
    use crate::datastore::{Endpoint, PoolConfig, Store};

    #[test]
    fn a_scale_shows_desired_and_current_replicas_and_the_selector() {
        let d = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "7", "labels": {"a": "b"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": 2}});
        let web = |resource| ObjectRef {
            resource,
            namespace: Some("default".into()),
            name: "web".into(),
        };
        let scale = json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "7"},
            "spec": {"replicas": 3}, "status": {"replicas": 2, "selector": "app=web"}});
        assert_eq!(view(&web(&DEPLOYMENTS), &d), scale);
        // A ReplicationController's selector is a plain label map.
        let mut rc = d.clone();
        rc["spec"]["selector"] = json!({"app": "web"});
        assert_eq!(view(&web(&REPLICATIONCONTROLLERS), &rc), scale);
    }

    #[tokio::test]
    async fn writing_a_scale_sets_the_parents_replicas_through_its_validation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Endpoint::sqlite(dir.path().join("s.db")),
            &PoolConfig::default(),
        )
        .await
        .unwrap();
        let registry = Registry::new(store);
        registry.ensure_system_namespaces().await.unwrap();
        registry
            .create(
                &DEPLOYMENTS,
                Some("default"),
                json!({"metadata": {"name": "web"}, "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
            )
            .await
            .unwrap();
        let r = ObjectRef {
            resource: &DEPLOYMENTS,
            namespace: Some("default".into()),
            name: "web".into(),
        };
        let scaled = patch(
            &registry,
            &r,
            Writer::Trusted,
            patch::Kind::Merge,
            json!({"spec": {"replicas": 3}}),
        )
        .await
        .unwrap();
        assert_eq!(scaled["spec"]["replicas"], 3);
        let current = get(&registry, &r).await.unwrap();
        let mut body = current.clone();
        body["spec"]["replicas"] = json!(5);
        let put = update(&registry, &r, Writer::Trusted, body.clone())
            .await
            .unwrap();
        assert_eq!(put["spec"]["replicas"], 5);
        let parent = registry.get(&r).await.unwrap();
        assert_eq!(parent["spec"]["replicas"], 5);
        assert_eq!(parent["metadata"]["generation"], 3);
        // A stale resourceVersion conflicts; a negative count is the parent's 422.
        assert!(matches!(
            update(&registry, &r, Writer::Trusted, body).await,
            Err(ApiError::Conflict { .. })
        ));
        let negative = update(
            &registry,
            &r,
            Writer::Trusted,
            json!({"spec": {"replicas": -1}}),
        )
        .await;
        match negative {
            Err(ApiError::Invalid { causes, .. }) => {
                assert!(
                    causes[0].starts_with("spec.replicas: Invalid value: -1"),
                    "{causes:?}"
                )
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
}
