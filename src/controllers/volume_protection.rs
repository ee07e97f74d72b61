//! Storage object in-use protection: a deleted claim stays (Terminating) while a pod still
//! uses it, a deleted volume while it is still bound — Kubernetes' `kubernetes.io/pvc-protection`
//! and `kubernetes.io/pv-protection` finalizers, which the API server puts on every new claim
//! and volume and this controller takes off once nothing needs the object.
//!
//! Invariant: a finalizer is removed only after the cache shows no pod that is not finished
//! referencing the claim (pods being deleted still count: their containers may be running),
//! or, for a volume, a phase other than Bound.

use serde_json::Value;

use super::owner;
use super::persistentvolume::{PV_PROTECTION, remove_finalizer};
use crate::apiserver::registry::Part;
use crate::apiserver::resources::{
    ObjectRef, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, PODS, Resource,
};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::{AsJson, Frozen, Json};

pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

pub struct VolumeProtection;

impl VolumeProtection {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 3] = [&PERSISTENTVOLUMECLAIMS, &PERSISTENTVOLUMES, &PODS];
}

impl Reconciler for VolumeProtection {
    fn name(&self) -> &'static str {
        "volume-protection"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        let Some(obj) = change.object() else {
            return vec![];
        };
        if change.resource == &PERSISTENTVOLUMECLAIMS {
            return guarded(obj, PVC_PROTECTION)
                .then(|| format!("c/{}/{}", owner::namespace(obj), owner::name(obj)))
                .into_iter()
                .collect();
        }
        if change.resource == &PERSISTENTVOLUMES {
            return guarded(obj, PV_PROTECTION)
                .then(|| format!("v/{}", owner::name(obj)))
                .into_iter()
                .collect();
        }
        if change.resource != &PODS {
            return vec![];
        }
        // A pod that finished or went may have been the last user of a deleted claim.
        let ns = owner::namespace(obj);
        [change.old.as_deref(), change.new.as_deref()]
            .into_iter()
            .flatten()
            .flat_map(claims_of)
            .filter(|name| {
                cache
                    .get(&ObjectRef::namespaced(&PERSISTENTVOLUMECLAIMS, ns, name))
                    .is_some_and(|c| guarded(&c, PVC_PROTECTION))
            })
            .map(|name| format!("c/{ns}/{name}"))
            .collect()
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        let claims = cache
            .list(&PERSISTENTVOLUMECLAIMS)
            .into_iter()
            .filter(|c| guarded(c, PVC_PROTECTION))
            .map(|c| format!("c/{}/{}", owner::namespace(&c), owner::name(&c)));
        let volumes = cache
            .list(&PERSISTENTVOLUMES)
            .into_iter()
            .filter(|v| guarded(v, PV_PROTECTION))
            .map(|v| format!("v/{}", owner::name(&v)));
        claims.chain(volumes).collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let (r, finalizer, free) = if let Some(name) = key.strip_prefix("v/") {
            let r = ObjectRef::cluster(&PERSISTENTVOLUMES, name);
            let Some(pv) = ctx.cache.get(&r) else {
                return Ok(Action::Done);
            };
            let free = pv["status"]["phase"] != "Bound";
            (r, PV_PROTECTION, free && guarded(&pv, PV_PROTECTION))
        } else if let Some((ns, name)) = key.strip_prefix("c/").and_then(|k| k.split_once('/')) {
            let r = ObjectRef::namespaced(&PERSISTENTVOLUMECLAIMS, ns, name);
            let Some(claim) = ctx.cache.get(&r) else {
                return Ok(Action::Done);
            };
            let used = ctx
                .cache
                .list_in(&PODS, ns)
                .iter()
                .filter(|p| !is_finished(&***p))
                .any(|p| claims_of(&**p).any(|c| c == name));
            (r, PVC_PROTECTION, !used && guarded(&claim, PVC_PROTECTION))
        } else {
            return Ok(Action::Done);
        };
        if !free {
            return Ok(Action::Done);
        }
        match ctx
            .registry
            .modify(&r, Part::Main, |o: &mut Value| {
                remove_finalizer(o, finalizer)
            })
            .await
        {
            Ok(o) => ctx.wrote(&o),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(Action::Done)
    }
}

/// Being deleted and still holding `finalizer`.
fn guarded(obj: &Frozen, finalizer: &str) -> bool {
    owner::is_terminating(obj)
        && obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| *f == finalizer))
}

/// The claims a pod's volumes name.
fn claims_of<J: Json>(pod: &J) -> impl Iterator<Item = &str> {
    pod["spec"]["volumes"]
        .as_array()
        .unwrap_or(&[])
        .iter()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
}

fn is_finished(pod: &impl AsJson) -> bool {
    matches!(
        pod.json()["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_deleted_objects_holding_the_finalizer_are_guarded() {
        let deleted = |finalizers: Value| {
            Frozen::from(
                json!({"metadata": {"name": "c", "deletionTimestamp": "2026-01-01T00:00:00Z",
                "finalizers": finalizers}}),
            )
        };
        assert!(guarded(&deleted(json!([PVC_PROTECTION])), PVC_PROTECTION));
        assert!(!guarded(&deleted(json!(["other"])), PVC_PROTECTION));
        let live = Frozen::from(json!({"metadata": {"name": "c", "finalizers": [PVC_PROTECTION]}}));
        assert!(!guarded(&live, PVC_PROTECTION));
    }

    #[test]
    fn a_pod_uses_the_claims_its_volumes_name() {
        let pod = Frozen::from(json!({"spec": {"volumes": [
            {"name": "a", "persistentVolumeClaim": {"claimName": "data-0"}},
            {"name": "b", "emptyDir": {}},
        ]}, "status": {"phase": "Running"}}));
        assert_eq!(claims_of(&pod).collect::<Vec<_>>(), ["data-0"]);
        assert!(!is_finished(&pod));
    }
}
