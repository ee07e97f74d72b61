//! The StatefulSet controller: pods with stable names (`<set>-0`, `<set>-1`, …), made and
//! removed in order.
//!
//! With `OrderedReady` (the default) pod N is created only once pods 0…N-1 are Running and
//! Ready, and scaling down removes the highest ordinal first, one at a time, while the others
//! are ready; with `Parallel` all are created or removed at once. Each pod carries its
//! template's revision (`controller-revision-hash`); a RollingUpdate replaces pods of an old
//! revision from the highest ordinal down to `partition`, one at a time and only while every
//! pod is ready; OnDelete replaces only pods someone else deleted. Pods get `hostname` = their
//! name and `subdomain` = `serviceName`, so the networking issue's DNS can give each a stable
//! name.
//!
//! Each `volumeClaimTemplates` entry gives every ordinal its own claim,
//! `<template>-<set>-<ordinal>`, made before the pod and mounted by it; a replica that is
//! deleted, rescheduled or scaled away and back finds its claim (and so its data) again.
//! Claims outlive their pods unless `persistentVolumeClaimRetentionPolicy` says otherwise:
//! `whenDeleted: Delete` makes the set their owner (the garbage collector deletes them with
//! it), `whenScaled: Delete` deletes an ordinal's claims when scaling down removes its pod.
//!
//! Invariant: never two active pods of one ordinal; an ordinal ≥ replicas is always deleted
//! before anything is updated.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::daemonset::REVISION_HASH;
use super::events::{Recorder, Type};
use super::owner::{self, ref_of};
use super::replicaset::{claim, pod_from_template};
use crate::apiserver::resources::{
    ObjectRef, PERSISTENTVOLUMECLAIMS, PODS, Resource, STATEFULSETS,
};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::Frozen;

const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

pub struct StatefulSets {
    pub events: Recorder,
}

impl StatefulSets {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 3] = [&STATEFULSETS, &PODS, &PERSISTENTVOLUMECLAIMS];
}

impl Reconciler for StatefulSets {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        owner::owner_keys(change, cache, &STATEFULSETS, &PODS)
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        owner::all_keys(cache, &STATEFULSETS)
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let r = ref_of(&STATEFULSETS, key);
        let Some(set) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        // The set is read as a value (its pods are made from it); its pods stay frozen.
        let set = set.thaw();
        let name = owner::name(&set).to_owned();
        let pods = claim(
            ctx,
            &STATEFULSETS,
            &set,
            &ctx.cache.list_in(&PODS, owner::namespace(&set)),
        )
        .await?;
        let revision = format!(
            "{name}-{}",
            super::deployment::template_hash(&set["spec"]["template"], None)
        );
        let replicas = owner::int(&set, "/spec/replicas", 1).max(0);
        let start = owner::int(&set, "/spec/ordinals/start", 0).max(0);
        // Both are the user's numbers: the range they make must not overflow.
        let end = start.saturating_add(replicas);
        let parallel = set["spec"]["podManagementPolicy"] == "Parallel";
        let min_ready = owner::int(&set, "/spec/minReadySeconds", 0);
        let now = OffsetDateTime::now_utc();

        // Pods by ordinal; a pod whose name is no ordinal of this set is not its to keep.
        let mut by_ordinal: BTreeMap<i64, Arc<Frozen>> = BTreeMap::new();
        let mut strays = vec![];
        for p in pods.iter().filter(owner::is_active_or_terminating) {
            match ordinal_of(&name, owner::name(p)) {
                Some(i) if !by_ordinal.contains_key(&i) => {
                    by_ordinal.insert(i, p.clone());
                }
                _ => strays.push(p.clone()),
            }
        }
        let terminating = owner::is_terminating(&set);
        let healthy = |p: &Frozen| {
            !owner::is_terminating(p) && p["status"]["phase"] == "Running" && owner::is_ready(p)
        };
        let delete_scaled_claims =
            set["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete";
        if !terminating {
            for p in &strays {
                owner::delete(ctx, &PODS, p).await?;
            }
            // Scale down first: the highest ordinal beyond the wanted range.
            let beyond: Vec<(i64, Arc<Frozen>)> = by_ordinal
                .range(end..)
                .rev()
                .map(|(i, p)| (*i, p.clone()))
                .collect();
            let all_healthy_below = |limit: i64| {
                by_ordinal
                    .range(..limit)
                    .filter(|(i, _)| **i >= start)
                    .all(|(_, p)| healthy(p))
            };
            let mut busy = false;
            for (i, p) in beyond {
                if owner::is_terminating(&p) {
                    busy = true;
                    if !parallel {
                        break;
                    }
                    continue;
                }
                if !parallel && !all_healthy_below(i) {
                    busy = true;
                    break;
                }
                owner::delete(ctx, &PODS, &p).await?;
                if delete_scaled_claims {
                    // In-use protection keeps each claim until the pod is gone.
                    for claim in claim_names(&set, i) {
                        let r = ObjectRef::namespaced(
                            &PERSISTENTVOLUMECLAIMS,
                            owner::namespace(&set),
                            &claim,
                        );
                        if let Some(c) = ctx.cache.get(&r) {
                            owner::delete(ctx, &PERSISTENTVOLUMECLAIMS, &c).await?;
                        }
                    }
                }
                self.events
                    .record(
                        &STATEFULSETS,
                        &set,
                        Type::Normal,
                        "SuccessfulDelete",
                        &format!(
                            "delete Pod {} in StatefulSet {name} successful",
                            owner::name(&p)
                        ),
                    )
                    .await;
                busy = true;
                if !parallel {
                    break;
                }
            }
            // Create what is missing, in order.
            if !busy || parallel {
                for i in start..end {
                    match by_ordinal.get(&i) {
                        Some(p) if healthy(p) || parallel => continue,
                        Some(_) => break,
                        None => {
                            // The ordinal's claims first: a pod never starts without them.
                            if !self.ensure_claims(ctx, &set, i).await? {
                                break;
                            }
                            let pod = stateful_pod(&set, i, &revision);
                            match ctx
                                .registry
                                .create(&PODS, Some(owner::namespace(&set)), pod)
                                .await
                            {
                                Ok(p) => {
                                    ctx.wrote(&p);
                                    self.events
                                        .record(&STATEFULSETS, &set, Type::Normal, "SuccessfulCreate", &format!("create Pod {name}-{i} in StatefulSet {name} successful"))
                                        .await;
                                }
                                // The old pod of this ordinal is still going away.
                                Err(ApiError::AlreadyExists { .. }) => {}
                                Err(e) => return Err(e),
                            }
                            if !parallel {
                                break;
                            }
                        }
                    }
                }
            }
            // Rolling update: the highest old-revision ordinal at or above the partition,
            // once every pod is healthy.
            let rolling = set["spec"]["updateStrategy"]["type"] != "OnDelete";
            let partition = owner::int(&set, "/spec/updateStrategy/rollingUpdate/partition", 0);
            let wanted: Vec<&Arc<Frozen>> = by_ordinal.range(start..end).map(|(_, p)| p).collect();
            if rolling
                && wanted.len() as i64 == replicas
                && wanted.iter().all(|p| healthy(p))
                && let Some((_, old)) = by_ordinal
                    .range(start.saturating_add(partition).min(end)..end)
                    .rev()
                    .find(|(_, p)| owner::labels(p)[REVISION_HASH] != revision.as_str())
            {
                owner::delete(ctx, &PODS, old).await?;
            }
        }

        // Status.
        let active: Vec<&Arc<Frozen>> = by_ordinal
            .values()
            .filter(|p| !owner::is_terminating(p))
            .collect();
        let count = |f: &dyn Fn(&Frozen) -> bool| active.iter().filter(|p| f(p)).count() as i64;
        let updated = count(&|p| owner::labels(p)[REVISION_HASH] == revision.as_str());
        let current_revision = if updated == replicas && active.len() as i64 == replicas {
            revision.clone()
        } else {
            set["status"]["currentRevision"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| revision.clone())
        };
        let current = count(&|p| owner::labels(p)[REVISION_HASH] == current_revision.as_str());
        let status = json!({
            "observedGeneration": owner::generation(&set),
            "replicas": active.len(),
            "readyReplicas": count(&|p| owner::is_ready(p)),
            "availableReplicas": count(&|p| owner::is_available(p, min_ready, now)),
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": revision,
            "collisionCount": 0,
        });
        owner::write_status(ctx, &STATEFULSETS, &set, &status).await?;
        Ok(Action::Done)
    }
}

impl StatefulSets {
    /// Makes the claims of `ordinal` that are missing. `false` while one of them is still
    /// being deleted (the pod must wait for a fresh one rather than mount the old).
    async fn ensure_claims(
        &self,
        ctx: &Context,
        set: &Value,
        ordinal: i64,
    ) -> Result<bool, ApiError> {
        let namespace = owner::namespace(set);
        for template in set["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let claim = claim_for(set, template, ordinal);
            let name = owner::name(&claim).to_owned();
            let r = ObjectRef::namespaced(&PERSISTENTVOLUMECLAIMS, namespace, &name);
            match ctx.cache.get(&r) {
                Some(c) if owner::is_terminating(&c) => return Ok(false),
                Some(_) => continue,
                None => {}
            }
            match ctx
                .registry
                .create(&PERSISTENTVOLUMECLAIMS, Some(namespace), claim)
                .await
            {
                Ok(c) => {
                    ctx.wrote(&c);
                    self.events
                        .record(
                            &STATEFULSETS,
                            set,
                            Type::Normal,
                            "SuccessfulCreate",
                            &format!(
                                "create Claim {name} Pod {}-{ordinal} in StatefulSet {} success",
                                owner::name(set),
                                owner::name(set)
                            ),
                        )
                        .await;
                }
                Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => {
                    self.events
                        .record(&STATEFULSETS, set, Type::Warning, "FailedCreate", &format!(
                            "create Claim {name} for Pod {}-{ordinal} in StatefulSet {} failed error: {e}",
                            owner::name(set),
                            owner::name(set)
                        ))
                        .await;
                    return Err(e);
                }
            }
        }
        Ok(true)
    }
}

/// The names of `ordinal`'s claims: `<template>-<set>-<ordinal>`.
fn claim_names(set: &Value, ordinal: i64) -> Vec<String> {
    set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["metadata"]["name"].as_str())
        .map(|t| format!("{t}-{}-{ordinal}", owner::name(set)))
        .collect()
}

/// The claim `template` gives `ordinal`: the template's metadata and spec, the set's
/// selector labels, and the set as owner when `whenDeleted: Delete`.
fn claim_for(set: &Value, template: &Value, ordinal: i64) -> Value {
    let template_name = template["metadata"]["name"].as_str().unwrap_or_default();
    let name = format!("{template_name}-{}-{ordinal}", owner::name(set));
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    for (k, v) in set["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        labels[k] = v.clone();
    }
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": owner::namespace(set), "labels": labels},
        "spec": template["spec"].clone(),
    });
    if let Some(a) = template["metadata"]["annotations"].as_object() {
        claim["metadata"]["annotations"] = json!(a);
    }
    if set["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete" {
        claim["metadata"]["ownerReferences"] = json!([owner::controller_ref(&STATEFULSETS, set)]);
    }
    claim
}

/// The ordinal in a pod name `<set>-<n>`.
fn ordinal_of(set: &str, pod: &str) -> Option<i64> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok()
}

/// Pod `ordinal` of `set`, at template `revision`.
fn stateful_pod(set: &Value, ordinal: i64, revision: &str) -> Value {
    let name = format!("{}-{ordinal}", owner::name(set));
    let mut pod = pod_from_template(&STATEFULSETS, set);
    if let Some(meta) = pod["metadata"].as_object_mut() {
        meta.remove("generateName");
        meta.insert("name".into(), json!(name));
    }
    pod["metadata"]["labels"][POD_NAME] = json!(name);
    pod["metadata"]["labels"][POD_INDEX] = json!(ordinal.to_string());
    pod["metadata"]["labels"][REVISION_HASH] = json!(revision);
    pod["spec"]["hostname"] = json!(name);
    // Each claim template is mounted as the ordinal's own claim, in place of any pod
    // volume of the same name.
    for (template, claim) in set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(claim_names(set, ordinal))
    {
        let volume = template["metadata"]["name"].clone();
        if !pod["spec"]["volumes"].is_array() {
            pod["spec"]["volumes"] = json!([]);
        }
        if let Some(list) = pod["spec"]["volumes"].as_array_mut() {
            list.retain(|v| v["name"] != volume);
            list.push(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim}}));
        }
    }
    if let Some(svc) = set["spec"]["serviceName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        pod["spec"]["subdomain"] = json!(svc);
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_names_exactly() {
        assert_eq!(ordinal_of("db", "db-0"), Some(0));
        assert_eq!(ordinal_of("db", "db-12"), Some(12));
        assert_eq!(ordinal_of("db", "db-01"), None);
        assert_eq!(ordinal_of("db", "db-x"), None);
        assert_eq!(ordinal_of("db", "dbx-1"), None);
        assert_eq!(ordinal_of("db", "db-"), None);
    }

    #[test]
    fn stateful_pods_have_stable_names_and_hostnames() {
        let set = json!({
            "metadata": {"name": "db", "namespace": "default", "uid": "u"},
            "spec": {"serviceName": "db", "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": []}}}
        });
        let pod = stateful_pod(&set, 2, "db-abc");
        assert_eq!(pod["metadata"]["name"], "db-2");
        assert!(pod["metadata"].get("generateName").is_none());
        assert_eq!(pod["spec"]["hostname"], "db-2");
        assert_eq!(pod["spec"]["subdomain"], "db");
        assert_eq!(pod["metadata"]["labels"][POD_INDEX], "2");
        assert_eq!(pod["metadata"]["labels"][REVISION_HASH], "db-abc");
    }

    #[test]
    fn each_ordinal_mounts_its_own_claim_from_each_template() {
        let set = json!({
            "metadata": {"name": "db", "namespace": "apps", "uid": "u"},
            "spec": {
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": {"tier": "disk"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
            }
        });
        let pod = stateful_pod(&set, 1, "db-abc");
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(
            volumes.len(),
            2,
            "the template's volume of the same name is replaced"
        );
        let data = volumes.iter().find(|v| v["name"] == "data").unwrap();
        assert_eq!(data["persistentVolumeClaim"]["claimName"], "data-db-1");
        let claim = claim_for(&set, &set["spec"]["volumeClaimTemplates"][0], 1);
        assert_eq!(claim["metadata"]["name"], "data-db-1");
        assert_eq!(claim["metadata"]["namespace"], "apps");
        assert_eq!(
            claim["metadata"]["labels"],
            json!({"tier": "disk", "app": "db"})
        );
        assert!(
            claim["metadata"]["ownerReferences"].is_null(),
            "Retain by default"
        );
        let mut deleting = set.clone();
        deleting["spec"]["persistentVolumeClaimRetentionPolicy"] = json!({"whenDeleted": "Delete"});
        let owned = claim_for(&deleting, &set["spec"]["volumeClaimTemplates"][0], 1);
        assert_eq!(owned["metadata"]["ownerReferences"][0]["uid"], "u");
        assert_eq!(claim_names(&set, 3), ["data-db-3"]);
    }
}
