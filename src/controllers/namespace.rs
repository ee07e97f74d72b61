//! The namespace controller: empties a namespace that is being deleted, then lets it go.
//!
//! A deleted Namespace stays, `Terminating`, while its `spec.finalizers` holds `kubernetes`
//! (the registry marks it so and refuses new content in it). This controller deletes every
//! namespaced object in it with the background deletion a user's `kubectl delete` makes, so
//! an object's own finalizers hold it as they would anyway; reports what is left in the
//! namespace's conditions, with Kubernetes' types, reasons and messages (`kubectl describe
//! ns`); and once a pass finds nothing left, removes `kubernetes` through
//! `namespaces/<name>/finalize`, after which the namespace goes.
//!
//! It reads Namespaces from the shared cache and the content from the registry, since most
//! namespaced kinds are not cached; so an idle cluster costs nothing, and a terminating
//! namespace one list per namespaced kind per pass. A change to a cached object in a
//! terminating namespace (a pod going) starts a pass at once; other kinds (a ConfigMap's
//! finalizer removed) are seen by the next pass, every [`CONTENT_POLL`].
//!
//! Invariant: `kubernetes` is removed only after a pass listed every namespaced kind in the
//! namespace and found nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::owner;
use crate::apiserver::registry::{NAMESPACE_FINALIZER, Part, now_rfc3339};
use crate::apiserver::resources::{NAMESPACES, ObjectRef, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::{AsJson, Json};

/// How soon a namespace whose content is still held (by finalizers, or failed deletions) is
/// looked at again when nothing cached wakes it sooner.
pub const CONTENT_POLL: Duration = Duration::from_secs(2);
/// After a pass that deleted everything it found: the next pass, which should find nothing
/// and finalize.
const RECHECK: Duration = Duration::from_millis(100);

pub struct Namespaces;

impl Namespaces {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 1] = [&NAMESPACES];
}

impl Reconciler for Namespaces {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        if change.resource == &NAMESPACES {
            return change
                .new
                .as_deref()
                .filter(is_finalizing)
                .map(|ns| owner::name(ns).to_owned())
                .into_iter()
                .collect();
        }
        // Something in a terminating namespace changed or went: it may be the last.
        let Some(obj) = change.object() else {
            return vec![];
        };
        let ns = owner::namespace(obj);
        if ns.is_empty() {
            return vec![];
        }
        match cache.get(&ObjectRef::cluster(&NAMESPACES, ns)) {
            Some(n) if is_finalizing(&n) => vec![ns.to_owned()],
            _ => vec![],
        }
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        cache
            .list(&NAMESPACES)
            .iter()
            .filter(is_finalizing)
            .map(|ns| owner::name(ns).to_owned())
            .collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let r = ObjectRef::cluster(&NAMESPACES, key);
        let Some(ns) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        if !is_finalizing(&ns) {
            return Ok(Action::Done);
        }
        let pass = delete_content(ctx, key).await?;
        if pass.found == 0 {
            // Nothing left: let the namespace go (or wait for its own metadata finalizers).
            let finalized = ctx
                .registry
                .modify(&r, Part::Finalize, |n| {
                    if let Some(list) = n["spec"]["finalizers"].as_array_mut() {
                        list.retain(|f| f != NAMESPACE_FINALIZER);
                    }
                })
                .await;
            return match finalized {
                Ok(n) => {
                    ctx.wrote(&n);
                    tracing::info!(namespace = key, "namespace emptied and finalized");
                    Ok(Action::Done)
                }
                Err(ApiError::NotFound { .. }) => Ok(Action::Done),
                Err(e) => Err(e),
            };
        }
        let conditions = pass.conditions();
        let written = ctx
            .registry
            .modify(&r, Part::Status, |n| {
                let merged = merge_conditions(n.pointer("/status/conditions"), &conditions);
                if !n["status"].is_object() {
                    n["status"] = json!({});
                }
                n["status"]["phase"] = json!("Terminating");
                n["status"]["conditions"] = merged;
            })
            .await;
        match written {
            Ok(n) => ctx.wrote(&n),
            Err(ApiError::NotFound { .. }) => return Ok(Action::Done),
            Err(e) => return Err(e),
        }
        Ok(Action::RequeueAfter(
            if pass.remaining.is_empty() && pass.failures.is_empty() {
                RECHECK
            } else {
                CONTENT_POLL
            },
        ))
    }
}

/// What one pass over a namespace's content found and did.
#[derive(Default)]
struct Pass {
    /// Objects listed, whatever became of them.
    found: usize,
    /// Objects still there after the pass (held by finalizers, or not deleted), by
    /// `<resource>.<group>` as Kubernetes names them in its message (`pods.` for core).
    remaining: BTreeMap<String, usize>,
    /// Objects carrying each finalizer among those remaining.
    finalizers: BTreeMap<String, usize>,
    /// Deletions that failed, as their errors.
    failures: Vec<String>,
}

impl Pass {
    fn remains(&mut self, resource: &Resource, obj: &Value) {
        *self
            .remaining
            .entry(format!("{}.{}", resource.plural, resource.group))
            .or_default() += 1;
        for f in obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            *self.finalizers.entry(f.to_owned()).or_default() += 1;
        }
    }

    /// Kubernetes' five namespace deletion conditions for this pass, as
    /// `(type, status, reason, message)`.
    fn conditions(&self) -> Vec<(&'static str, bool, &'static str, String)> {
        let listed = |m: &BTreeMap<String, usize>, sep: &str| {
            m.iter()
                .map(|(k, n)| format!("{k}{sep}{n} resource instances"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            (
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".into(),
            ),
            (
                "NamespaceDeletionGroupVersionParsingFailure",
                false,
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed".into(),
            ),
            if self.failures.is_empty() {
                (
                    "NamespaceDeletionContentFailure",
                    false,
                    "ContentDeleted",
                    "All content successfully deleted, may be waiting on finalization".into(),
                )
            } else {
                (
                    "NamespaceDeletionContentFailure",
                    true,
                    "ContentDeletionFailed",
                    format!(
                        "Failed to delete all resource types, {} remaining: {}",
                        self.failures.len(),
                        self.failures.join(", ")
                    ),
                )
            },
            if self.remaining.is_empty() {
                (
                    "NamespaceContentRemaining",
                    false,
                    "ContentRemoved",
                    "All content successfully removed".into(),
                )
            } else {
                (
                    "NamespaceContentRemaining",
                    true,
                    "SomeResourcesRemain",
                    format!(
                        "Some resources are remaining: {}",
                        listed(&self.remaining, " has ")
                    ),
                )
            },
            if self.finalizers.is_empty() {
                (
                    "NamespaceFinalizersRemaining",
                    false,
                    "ContentHasNoFinalizers",
                    "All content-preserving finalizers finished".into(),
                )
            } else {
                (
                    "NamespaceFinalizersRemaining",
                    true,
                    "SomeFinalizersRemain",
                    format!(
                        "Some content in the namespace has finalizers remaining: {}",
                        listed(&self.finalizers, " in ")
                    ),
                )
            },
        ]
    }
}

/// Deletes every namespaced object in `namespace` that is not already being deleted.
async fn delete_content(ctx: &Context, namespace: &str) -> Result<Pass, ApiError> {
    let mut pass = Pass::default();
    for resource in Resource::stored().filter(|r| r.namespaced) {
        let (_, objects) = ctx.registry.list(resource, Some(namespace)).await?;
        for obj in objects {
            pass.found += 1;
            if owner::is_terminating(&obj) {
                pass.remains(resource, &obj);
                continue;
            }
            let r = owner::ref_to(resource, &obj);
            match ctx.registry.delete(&r, None).await {
                // Marked, not gone: its own finalizers hold it.
                Ok(left) if owner::is_terminating(&left) => pass.remains(resource, &left),
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => {
                    pass.failures.push(format!("{r}: {e}"));
                    pass.remains(resource, &obj);
                }
            }
        }
    }
    Ok(pass)
}

/// Whether `ns` is being deleted and still held for its content.
fn is_finalizing(ns: &impl AsJson) -> bool {
    owner::is_terminating(ns)
        && ns
            .json()
            .pointer("/spec/finalizers")
            .and_then(Json::as_array)
            .is_some_and(|f| f.iter().any(|f| f == NAMESPACE_FINALIZER))
}

/// `wanted` as namespace conditions, keeping the `lastTransitionTime` of each whose status did
/// not change, so a pass that finds the same as the last writes nothing.
fn merge_conditions(
    current: Option<&Value>,
    wanted: &[(&'static str, bool, &'static str, String)],
) -> Value {
    let old: Vec<&Value> = current
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let now = now_rfc3339();
    let list: Vec<Value> = wanted
        .iter()
        .map(|(kind, on, reason, message)| {
            let status = if *on { "True" } else { "False" };
            let since = old
                .iter()
                .find(|c| c["type"] == *kind && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str())
                .map_or_else(|| now.clone(), str::to_owned);
            json!({
                "type": kind,
                "status": status,
                "lastTransitionTime": since,
                "reason": reason,
                "message": message,
            })
        })
        .collect();
    Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{CONFIGMAPS, DEPLOYMENTS, PODS};

    #[test]
    fn remaining_content_is_named_as_kubernetes_names_it() {
        let mut pass = Pass::default();
        let held = json!({"metadata": {"finalizers": ["example.com/keep"]}});
        pass.remains(&PODS, &held);
        pass.remains(&PODS, &held);
        pass.remains(&DEPLOYMENTS, &json!({"metadata": {}}));
        pass.remains(&CONFIGMAPS, &held);
        let conditions = pass.conditions();
        let find = |t: &str| conditions.iter().find(|c| c.0 == t).unwrap();
        assert_eq!(
            find("NamespaceContentRemaining").3,
            "Some resources are remaining: configmaps. has 1 resource instances, deployments.apps has 1 resource instances, pods. has 2 resource instances"
        );
        assert_eq!(
            find("NamespaceFinalizersRemaining").3,
            "Some content in the namespace has finalizers remaining: example.com/keep in 3 resource instances"
        );
        assert!(find("NamespaceFinalizersRemaining").1);
        assert!(!find("NamespaceDeletionContentFailure").1);
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let wanted = Pass::default().conditions();
        let first = merge_conditions(None, &wanted);
        let mut aged = first.clone();
        for c in aged.as_array_mut().unwrap() {
            c["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        }
        let again = merge_conditions(Some(&aged), &wanted);
        assert_eq!(again, aged, "the same conditions are written as they were");
        assert_eq!(again.as_array().unwrap().len(), 5);
    }
}
