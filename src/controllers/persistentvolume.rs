//! The PersistentVolume controller: binds claims to volumes, provisions local-path volumes
//! (keelson's built-in provisioner, K3s's `rancher.io/local-path`), and moves volumes through
//! their phases (Available, Bound, Released, Failed), reclaiming released ones.
//!
//! A claim binds to the smallest Available volume of its class whose access modes, capacity,
//! volume mode and labels (the claim's selector) fit, a volume pre-bound to it (`claimRef`)
//! first. A claim of a `WaitForFirstConsumer` class waits until the scheduler names a node
//! (`volume.kubernetes.io/selected-node`), and then binds only to a volume that node can
//! reach, or gets a new local-path volume there: a directory under the node's storage path
//! (reported by the node as `keelson.io/local-storage-path`), which the node creates when a
//! pod mounts it and removes when the volume is reclaimed (the `keelson.io/local-volume-cleanup`
//! finalizer is the node's to drop; a volume whose node is gone for good has it dropped here).
//!
//! Invariants: a volume is bound to at most one claim — its `claimRef` is written first, as a
//! compare-and-swap, and a claim takes a volume only once the volume names it; nothing is
//! deleted but a released volume this provisioner made, whose policy is `Delete`.

use serde_json::{Value, json};

use super::events::{Recorder, Type};
use super::owner;
use super::scheduler::volumes::volume_fits_node;
use crate::api::storage::{
    CLEANUP_FINALIZER, LOCAL_PATH_PROVISIONER, LOCAL_STORAGE_ANNOTATION, PROVISIONED_BY,
    SELECTED_NODE,
};
use crate::apiserver::kinds::workload::selects;
use crate::apiserver::registry::{Part, Registry};
use crate::apiserver::resources::{
    NODES, ObjectRef, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, Resource, STORAGECLASSES,
};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::{Frozen, Json};

pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// The default StorageClass servers create (K3s's name and settings).
pub const DEFAULT_CLASS: &str = "local-path";
const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// Marks the default class as keelson's own, so `--disable local-storage` removes only it.
const OWN_CLASS_LABEL: &str = "keelson.io/packaged";
/// How long the node holding a deleted local-path volume has to confirm it removed the
/// directory. A node sweeps every few seconds while it holds volume directories, so past this
/// it has none for this volume (it was never mounted there) or cannot remove it; either way
/// the volume object goes and the node, finding no volume, leaves any directory in place.
const CLEANUP_GRACE: time::Duration = time::Duration::minutes(2);
/// How soon a claim waiting for its node's storage path is looked at again.
const WAIT_FOR_NODE: std::time::Duration = std::time::Duration::from_secs(5);

pub struct PersistentVolumes {
    pub events: Recorder,
    /// `false` with `--disable local-storage`: local-path classes are left to someone else.
    pub local_path: bool,
}

impl PersistentVolumes {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 4] = [
        &PERSISTENTVOLUMECLAIMS,
        &PERSISTENTVOLUMES,
        &STORAGECLASSES,
        &NODES,
    ];
}

/// A work key: `c/<namespace>/<name>` for a claim, `v/<name>` for a volume.
fn claim_key(namespace: &str, name: &str) -> String {
    format!("c/{namespace}/{name}")
}

fn volume_key(name: &str) -> String {
    format!("v/{name}")
}

impl Reconciler for PersistentVolumes {
    fn name(&self) -> &'static str {
        "persistentvolume"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        let versions = [change.old.as_deref(), change.new.as_deref()];
        let mut keys = Vec::new();
        if change.resource == &PERSISTENTVOLUMECLAIMS {
            for c in versions.into_iter().flatten() {
                keys.push(claim_key(owner::namespace(c), owner::name(c)));
                if let Some(v) = c["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
                    keys.push(volume_key(v));
                }
            }
            // A claim that went away releases every volume that named it.
            if change.new.is_none()
                && let Some(old) = change.old.as_deref()
            {
                for pv in cache.list(&PERSISTENTVOLUMES) {
                    let r = &pv["spec"]["claimRef"];
                    if r["name"] == owner::name(old) && r["namespace"] == owner::namespace(old) {
                        keys.push(volume_key(owner::name(&pv)));
                    }
                }
            }
        } else if change.resource == &PERSISTENTVOLUMES {
            for v in versions.into_iter().flatten() {
                keys.push(volume_key(owner::name(v)));
                let r = &v["spec"]["claimRef"];
                if let (Some(ns), Some(name)) = (r["namespace"].as_str(), r["name"].as_str()) {
                    keys.push(claim_key(ns, name));
                }
            }
            // A new or freed volume may fit a waiting claim of its class (one it names is
            // keyed above); a bound or deleted volume fits nobody else, so the pending claims
            // are not looked at again on every status write.
            if let Some(v) = change.new.as_deref()
                && v["spec"]["claimRef"].is_null()
                && !owner::is_terminating(v)
            {
                let class = v["spec"]["storageClassName"].as_str().unwrap_or_default();
                keys.extend(pending_claims(cache, |c| {
                    c["spec"]["storageClassName"].as_str().unwrap_or_default() == class
                }));
            }
        } else if change.resource == &STORAGECLASSES {
            if let Some(sc) = change.object() {
                let class = owner::name(sc);
                keys.extend(pending_claims(cache, |c| {
                    c["spec"]["storageClassName"] == class
                }));
            }
        } else if change.resource == &NODES {
            // A node gone for good frees its volumes' cleanup; one that starts offering
            // storage lets its waiting claims be provisioned.
            let offers = |n: Option<&Frozen>| {
                n.map(|n| n["metadata"]["annotations"][LOCAL_STORAGE_ANNOTATION].clone())
            };
            if change.new.is_none() {
                keys.extend(
                    cache
                        .list(&PERSISTENTVOLUMES)
                        .iter()
                        .filter(owner::is_terminating)
                        .map(|v| volume_key(owner::name(v))),
                );
            } else if offers(change.old.as_deref()) != offers(change.new.as_deref())
                && let Some(node) = change.object()
            {
                let name = owner::name(node);
                keys.extend(pending_claims(cache, |c| {
                    c["metadata"]["annotations"][SELECTED_NODE] == name
                }));
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        let claims = cache
            .list(&PERSISTENTVOLUMECLAIMS)
            .into_iter()
            .map(|c| claim_key(owner::namespace(&c), owner::name(&c)));
        let volumes = cache
            .list(&PERSISTENTVOLUMES)
            .into_iter()
            .map(|v| volume_key(owner::name(&v)));
        claims.chain(volumes).collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        if let Some(name) = key.strip_prefix("v/") {
            return self.volume(ctx, name).await;
        }
        let Some((ns, name)) = key.strip_prefix("c/").and_then(|k| k.split_once('/')) else {
            return Ok(Action::Done);
        };
        self.claim(ctx, ns, name).await
    }
}

/// Keys of unbound claims that `want`s pick.
fn pending_claims(cache: &Cache, want: impl Fn(&Frozen) -> bool) -> Vec<String> {
    cache
        .list(&PERSISTENTVOLUMECLAIMS)
        .iter()
        .filter(|c| c["spec"]["volumeName"].as_str().is_none_or(str::is_empty))
        .filter(|c| want(c))
        .map(|c| claim_key(owner::namespace(c), owner::name(c)))
        .collect()
}

impl PersistentVolumes {
    async fn claim(&self, ctx: &Context, ns: &str, name: &str) -> Result<Action, ApiError> {
        let r = ObjectRef::namespaced(&PERSISTENTVOLUMECLAIMS, ns, name);
        let Some(claim) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        if owner::is_terminating(&claim) {
            return Ok(Action::Done);
        }
        let uid = owner::uid(&claim);
        if let Some(volume) = claim["spec"]["volumeName"]
            .as_str()
            .filter(|v| !v.is_empty())
        {
            let Some(pv) = ctx
                .cache
                .get(&ObjectRef::cluster(&PERSISTENTVOLUMES, volume))
            else {
                if claim["status"]["phase"] == "Bound" {
                    self.lose(ctx, &claim, "ClaimLost",
                        "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!")
                        .await?;
                }
                return Ok(Action::Done);
            };
            let claim_ref = &pv["spec"]["claimRef"];
            if claim_ref.is_null() || names(claim_ref, &claim) {
                // Pre-bound by the user (`volumeName`), or half-way through our own binding.
                self.bind(ctx, &pv, &claim, false).await?;
            } else if claim["status"]["phase"] != "Lost" {
                self.lose(
                    ctx,
                    &claim,
                    "ClaimMisbound",
                    "Two claims are bound to the same volume, this one is bound incorrectly",
                )
                .await?;
            }
            return Ok(Action::Done);
        }

        let class_name = claim["spec"]["storageClassName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let class = (!class_name.is_empty())
            .then(|| {
                ctx.cache
                    .get(&ObjectRef::cluster(&STORAGECLASSES, &class_name))
            })
            .flatten();
        let delayed = class
            .as_ref()
            .is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer");
        let selected = claim["metadata"]["annotations"][SELECTED_NODE]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        if !delayed || selected.is_some() {
            let node = selected
                .as_deref()
                .and_then(|n| ctx.cache.get(&ObjectRef::cluster(&NODES, n)));
            if selected.is_some() && node.is_none() {
                self.warn(
                    &claim,
                    "ProvisioningFailed",
                    &format!(
                        "node {:?} chosen for this claim does not exist",
                        selected.as_deref().unwrap_or_default()
                    ),
                )
                .await;
                return Ok(Action::RequeueAfter(WAIT_FOR_NODE));
            }
            let volumes = ctx.cache.list(&PERSISTENTVOLUMES);
            if let Some(pv) = best_volume(
                &claim,
                &class_name,
                volumes.iter().map(|v| &**v),
                node.as_deref(),
            ) {
                self.bind(ctx, pv, &claim, true).await?;
                return Ok(Action::Done);
            }
        }
        let Some(class) = class else {
            if class_name.is_empty() {
                self.note(
                    &claim,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
            } else {
                self.warn(
                    &claim,
                    "ProvisioningFailed",
                    &format!("storageclass.storage.k8s.io {class_name:?} not found"),
                )
                .await;
            }
            return Ok(Action::Done);
        };
        if delayed && selected.is_none() {
            self.note(
                &claim,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            .await;
            return Ok(Action::Done);
        }
        let provisioner = class["provisioner"].as_str().unwrap_or_default();
        if provisioner != LOCAL_PATH_PROVISIONER || !self.local_path {
            self.note(&claim, "ExternalProvisioning", &format!(
                "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
            ))
            .await;
            return Ok(Action::Done);
        }
        let Some(node_name) = selected else {
            // local-path needs a node: an `Immediate` class has none to give it.
            self.warn(&claim, "ProvisioningFailed", &format!(
                "configuration error, no node was specified: StorageClass {class_name:?} must use volumeBindingMode WaitForFirstConsumer for the {LOCAL_PATH_PROVISIONER} provisioner"
            ))
            .await;
            return Ok(Action::Done);
        };
        let base = ctx
            .cache
            .get(&ObjectRef::cluster(&NODES, &node_name))
            .and_then(|n| {
                n["metadata"]["annotations"][LOCAL_STORAGE_ANNOTATION]
                    .as_str()
                    .map(str::to_owned)
            })
            .filter(|p| p.starts_with('/'));
        let Some(base) = base else {
            self.warn(&claim, "ProvisioningFailed", &format!(
                "node {node_name:?} offers no local storage (it reports no {LOCAL_STORAGE_ANNOTATION} annotation; is it a keelson node of this version?)"
            ))
            .await;
            return Ok(Action::RequeueAfter(WAIT_FOR_NODE));
        };
        let Some(size) = claim["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .map(str::to_owned)
        else {
            self.warn(
                &claim,
                "ProvisioningFailed",
                "spec.resources.requests.storage is not set",
            )
            .await;
            return Ok(Action::Done);
        };
        let pv_name = format!("pvc-{uid}");
        let pv = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": pv_name,
                "annotations": {PROVISIONED_BY: LOCAL_PATH_PROVISIONER},
                "finalizers": [PV_PROTECTION, CLEANUP_FINALIZER],
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": claim["spec"]["accessModes"].thaw(),
                "volumeMode": claim["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
                "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
                "storageClassName": class_name,
                "hostPath": {
                    "path": format!("{}/{pv_name}_{ns}_{name}", base.trim_end_matches('/')),
                    "type": "DirectoryOrCreate",
                },
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                    "key": "kubernetes.io/hostname", "operator": "In", "values": [node_name],
                }]}]}},
                "claimRef": {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": ns, "name": name, "uid": uid,
                },
            },
        });
        let created = match ctx.registry.create(&PERSISTENTVOLUMES, None, pv).await {
            Ok(pv) => {
                ctx.wrote(&pv);
                self.note(
                    &claim,
                    "ProvisioningSucceeded",
                    &format!("Successfully provisioned volume {pv_name} on node {node_name}"),
                )
                .await;
                pv
            }
            // Made by an earlier pass whose claim update was lost.
            Err(ApiError::AlreadyExists { .. }) => {
                ctx.registry
                    .get(&ObjectRef::cluster(&PERSISTENTVOLUMES, &pv_name))
                    .await?
            }
            Err(e) => {
                self.warn(&claim, "ProvisioningFailed", &e.to_string())
                    .await;
                return Err(e);
            }
        };
        self.bind(ctx, &Frozen::from(&created), &claim, false)
            .await?;
        Ok(Action::Done)
    }

    /// Binds `pv` to `claim`: the volume's `claimRef` first (a compare-and-swap: a volume
    /// another claim took meanwhile is left alone), then the claim, then both statuses.
    async fn bind(
        &self,
        ctx: &Context,
        pv: &Frozen,
        claim: &Frozen,
        chosen: bool,
    ) -> Result<(), ApiError> {
        let pv_ref = ObjectRef::cluster(&PERSISTENTVOLUMES, owner::name(pv));
        let claim_ref = ObjectRef::namespaced(
            &PERSISTENTVOLUMECLAIMS,
            owner::namespace(claim),
            owner::name(claim),
        );
        let (ns, name, uid) = (
            owner::namespace(claim),
            owner::name(claim),
            owner::uid(claim),
        );
        let reference = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": ns, "name": name, "uid": uid,
        });
        let mut pv_now = pv.thaw();
        if pv["spec"]["claimRef"]["uid"] != uid {
            pv_now = match ctx
                .registry
                .modify(&pv_ref, Part::Main, |v| {
                    let free = v["spec"]["claimRef"].is_null();
                    let ours = v["spec"]["claimRef"]["name"] == name
                        && v["spec"]["claimRef"]["namespace"] == ns
                        && v["spec"]["claimRef"]["uid"]
                            .as_str()
                            .is_none_or(|u| u.is_empty() || u == uid);
                    if free || ours {
                        if free {
                            v["metadata"]["annotations"][BOUND_BY_CONTROLLER] = json!("yes");
                        }
                        v["spec"]["claimRef"] = reference.clone();
                    }
                })
                .await
            {
                Ok(v) => v,
                Err(ApiError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            ctx.wrote(&pv_now);
            if pv_now["spec"]["claimRef"]["uid"] != uid {
                // Another claim won the volume; this one is decided again.
                return Err(ApiError::Conflict {
                    resource: PERSISTENTVOLUMES.group_resource(),
                    name: owner::name(pv).to_owned(),
                });
            }
        }
        let volume = owner::name(pv).to_owned();
        let claim_now = match ctx
            .registry
            .modify(&claim_ref, Part::Main, |c| {
                if c["spec"]["volumeName"].as_str().is_none_or(str::is_empty) {
                    c["spec"]["volumeName"] = json!(volume);
                }
                if c["spec"]["volumeName"] == volume.as_str() {
                    c["metadata"]["annotations"][BIND_COMPLETED] = json!("yes");
                    if chosen {
                        c["metadata"]["annotations"][BOUND_BY_CONTROLLER] = json!("yes");
                    }
                }
            })
            .await
        {
            Ok(c) => c,
            Err(ApiError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        ctx.wrote(&claim_now);
        if claim_now["spec"]["volumeName"] != volume.as_str() {
            return Ok(());
        }
        let status = json!({
            "phase": "Bound",
            "accessModes": pv_now["spec"]["accessModes"],
            "capacity": pv_now["spec"]["capacity"],
        });
        owner::write_status(ctx, &PERSISTENTVOLUMECLAIMS, &claim_now, &status).await?;
        owner::write_status(ctx, &PERSISTENTVOLUMES, &pv_now, &json!({"phase": "Bound"})).await
    }

    async fn volume(&self, ctx: &Context, name: &str) -> Result<Action, ApiError> {
        let r = ObjectRef::cluster(&PERSISTENTVOLUMES, name);
        let Some(pv) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        if owner::is_terminating(&pv) {
            if !has_finalizer(&pv, CLEANUP_FINALIZER) {
                return Ok(Action::Done);
            }
            // The node that held the directory is gone for good (nobody else can clean up),
            // or has not confirmed in time.
            let node = pinned_node(&pv);
            let node_gone =
                node.is_some_and(|n| ctx.cache.get(&ObjectRef::cluster(&NODES, n)).is_none());
            let waited = time::OffsetDateTime::now_utc()
                - owner::timestamp(&pv, "/metadata/deletionTimestamp");
            if !node_gone && waited < CLEANUP_GRACE {
                let left = (CLEANUP_GRACE - waited).unsigned_abs();
                return Ok(Action::RequeueAfter(
                    left + std::time::Duration::from_secs(1),
                ));
            }
            if !node_gone {
                self.events
                    .record(&PERSISTENTVOLUMES, &pv, Type::Warning, "VolumeFailedDelete", &format!(
                        "node {:?} did not confirm removing {} within {CLEANUP_GRACE}; the volume goes, any directory left there stays",
                        node.unwrap_or_default(),
                        pv["spec"]["hostPath"]["path"].as_str().unwrap_or_default(),
                    ))
                    .await;
            }
            {
                match ctx
                    .registry
                    .modify(&r, Part::Main, |v| remove_finalizer(v, CLEANUP_FINALIZER))
                    .await
                {
                    Ok(v) => ctx.wrote(&v),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(Action::Done);
        }
        let claim_ref = &pv["spec"]["claimRef"];
        let phase = |p: &str| json!({"phase": p});
        if claim_ref.is_null() {
            owner::write_status(ctx, &PERSISTENTVOLUMES, &pv, &phase("Available")).await?;
            return Ok(Action::Done);
        }
        let wanted_uid = claim_ref["uid"].as_str().unwrap_or_default();
        let claim = match (claim_ref["namespace"].as_str(), claim_ref["name"].as_str()) {
            (Some(ns), Some(n)) => {
                ctx.cache
                    .get(&ObjectRef::namespaced(&PERSISTENTVOLUMECLAIMS, ns, n))
            }
            _ => None,
        }
        .filter(|c| wanted_uid.is_empty() || owner::uid(c) == wanted_uid);
        match claim {
            Some(c) if c["spec"]["volumeName"] == name => {
                owner::write_status(ctx, &PERSISTENTVOLUMES, &pv, &phase("Bound")).await?;
            }
            Some(c) if c["spec"]["volumeName"].as_str().is_none_or(str::is_empty) => {
                // Named by a claim not bound yet: the claim's pass binds it.
                owner::write_status(ctx, &PERSISTENTVOLUMES, &pv, &phase("Available")).await?;
            }
            Some(_) => {
                // The claim took another volume. Free this one if we were the ones who
                // named the claim on it; a user's pre-binding is theirs to undo.
                if pv["metadata"]["annotations"][BOUND_BY_CONTROLLER] == "yes" {
                    match ctx
                        .registry
                        .modify(&r, Part::Main, |v| {
                            if let Some(spec) = v["spec"].as_object_mut() {
                                spec.remove("claimRef");
                            }
                        })
                        .await
                    {
                        Ok(v) => ctx.wrote(&v),
                        Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            None if wanted_uid.is_empty() => {
                // Pre-bound to a claim that does not exist yet.
                owner::write_status(ctx, &PERSISTENTVOLUMES, &pv, &phase("Available")).await?;
            }
            None => return self.reclaim(ctx, &pv).await,
        }
        Ok(Action::Done)
    }

    /// The claim of a bound volume is gone: Released, then what its policy says.
    async fn reclaim(&self, ctx: &Context, pv: &Frozen) -> Result<Action, ApiError> {
        let policy = pv["spec"]["persistentVolumeReclaimPolicy"]
            .as_str()
            .unwrap_or("Retain");
        let ours = pv["metadata"]["annotations"][PROVISIONED_BY] == LOCAL_PATH_PROVISIONER;
        match policy {
            "Delete" if ours => {
                owner::write_status(ctx, &PERSISTENTVOLUMES, pv, &json!({"phase": "Released"}))
                    .await?;
                // The node removes the directory, then its finalizer; the volume goes after.
                owner::delete(ctx, &PERSISTENTVOLUMES, pv).await?;
            }
            "Delete" | "Recycle" => {
                let message = format!(
                    "error getting deleter volume plugin for volume {:?}: no deletable volume plugin matched",
                    owner::name(pv)
                );
                if pv["status"]["phase"] != "Failed" {
                    self.events
                        .record(
                            &PERSISTENTVOLUMES,
                            pv,
                            Type::Warning,
                            "VolumeFailedDelete",
                            &message,
                        )
                        .await;
                }
                owner::write_status(
                    ctx,
                    &PERSISTENTVOLUMES,
                    pv,
                    &json!({"phase": "Failed", "message": message}),
                )
                .await?;
            }
            _ => {
                owner::write_status(ctx, &PERSISTENTVOLUMES, pv, &json!({"phase": "Released"}))
                    .await?;
            }
        }
        Ok(Action::Done)
    }

    /// The claim's volume is gone or another's: phase `Lost`, with a Warning saying why.
    async fn lose(
        &self,
        ctx: &Context,
        claim: &Frozen,
        reason: &str,
        message: &str,
    ) -> Result<(), ApiError> {
        self.warn(claim, reason, message).await;
        owner::write_status(
            ctx,
            &PERSISTENTVOLUMECLAIMS,
            claim,
            &json!({"phase": "Lost"}),
        )
        .await
    }

    async fn warn(&self, claim: &Frozen, reason: &str, message: &str) {
        self.events
            .record(
                &PERSISTENTVOLUMECLAIMS,
                claim,
                Type::Warning,
                reason,
                message,
            )
            .await;
    }

    async fn note(&self, claim: &Frozen, reason: &str, message: &str) {
        self.events
            .record(
                &PERSISTENTVOLUMECLAIMS,
                claim,
                Type::Normal,
                reason,
                message,
            )
            .await;
    }
}

/// Whether a `claimRef` names `claim` (a reference without a uid names any claim of that
/// name: a user's pre-binding).
fn names<J: Json>(claim_ref: &J, claim: &Frozen) -> bool {
    claim_ref.get("name").and_then(J::as_str) == Some(owner::name(claim))
        && claim_ref.get("namespace").and_then(J::as_str) == Some(owner::namespace(claim))
        && claim_ref
            .get("uid")
            .and_then(J::as_str)
            .is_none_or(|u| u.is_empty() || u == owner::uid(claim))
}

/// The Available volume `claim` binds to: one pre-bound to it first, else the smallest that
/// fits; on `node` when the claim's node is chosen.
fn best_volume<'a>(
    claim: &Frozen,
    class: &str,
    volumes: impl Iterator<Item = &'a Frozen>,
    node: Option<&Frozen>,
) -> Option<&'a Frozen> {
    let spec = &claim["spec"];
    let want = bytes(&spec["resources"]["requests"]["storage"]).unwrap_or(0);
    let modes: Vec<&str> = spec["accessModes"]
        .as_array()
        .unwrap_or(&[])
        .iter()
        .filter_map(Frozen::as_str)
        .collect();
    let mode = spec["volumeMode"].as_str().unwrap_or("Filesystem");
    volumes
        .filter(|v| !owner::is_terminating(*v))
        .filter(|v| {
            let r = &v["spec"]["claimRef"];
            r.is_null() || names(r, claim)
        })
        .filter(|v| !matches!(v["status"]["phase"].as_str(), Some("Released" | "Failed")))
        .filter(|v| v["spec"]["storageClassName"].as_str().unwrap_or_default() == class)
        .filter(|v| v["spec"]["volumeMode"].as_str().unwrap_or("Filesystem") == mode)
        .filter(|v| {
            let has: Vec<&str> = v["spec"]["accessModes"]
                .as_array()
                .unwrap_or(&[])
                .iter()
                .filter_map(Frozen::as_str)
                .collect();
            modes.iter().all(|m| has.contains(m))
        })
        .filter(|v| bytes(&v["spec"]["capacity"]["storage"]).is_some_and(|have| have >= want))
        .filter(|v| selects(&spec["selector"], &v["metadata"]["labels"]))
        .filter(|v| node.is_none_or(|n| volume_fits_node(*v, n)))
        .min_by_key(|v| {
            (
                v["spec"]["claimRef"].is_null(),
                bytes(&v["spec"]["capacity"]["storage"]).unwrap_or(i64::MAX),
                owner::name(*v).to_owned(),
            )
        })
}

fn bytes(q: &Frozen) -> Option<i64> {
    crate::api::quantity::parse(q.as_str()?)
        .ok()
        .map(|q| q.value())
}

/// The node a local volume is pinned to (`kubernetes.io/hostname In [node]`).
fn pinned_node(pv: &Frozen) -> Option<&str> {
    pv.pointer("/spec/nodeAffinity/required/nodeSelectorTerms/0/matchExpressions/0")
        .filter(|e| e["key"] == "kubernetes.io/hostname" && e["operator"] == "In")
        .and_then(|e| e["values"].as_array())
        .and_then(|v| match v {
            [one] => one.as_str(),
            _ => None,
        })
}

fn has_finalizer(obj: &Frozen, finalizer: &str) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| *f == finalizer))
}

/// Removes `finalizer` from an object being modified.
pub fn remove_finalizer(obj: &mut Value, finalizer: &str) {
    if let Some(list) = obj["metadata"]["finalizers"].as_array_mut() {
        list.retain(|f| f != finalizer);
    }
}

/// The default StorageClass: made when local storage is on and it is missing (a user's
/// edits are kept), removed when `--disable local-storage` and it is still keelson's own.
pub async fn ensure_default_class(registry: &Registry, enabled: bool) -> Result<(), ApiError> {
    let r = ObjectRef::cluster(&STORAGECLASSES, DEFAULT_CLASS);
    let current = match registry.get(&r).await {
        Ok(sc) => Some(sc),
        Err(ApiError::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    if !enabled {
        if let Some(sc) = current.filter(|sc| sc["metadata"]["labels"][OWN_CLASS_LABEL] == "true") {
            match registry
                .delete(&r, crate::apiserver::registry::revision_of(&sc))
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) | Err(ApiError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    if current.is_some() {
        return Ok(());
    }
    let sc = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": DEFAULT_CLASS,
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
            "labels": {OWN_CLASS_LABEL: "true"},
        },
        "provisioner": LOCAL_PATH_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    });
    match registry.create(&STORAGECLASSES, None, sc).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(spec: Value) -> Frozen {
        Frozen::from(json!({
            "metadata": {"name": "data", "namespace": "default", "uid": "c1"},
            "spec": spec,
        }))
    }

    fn volume(name: &str, size: &str, extra: Value) -> Frozen {
        let v = json!({
            "metadata": {"name": name, "labels": {"tier": "fast"}},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": "manual", "hostPath": {"path": "/srv"}},
            "status": {"phase": "Available"},
        });
        Frozen::from(crate::apiserver::patch::merge(v, &extra))
    }

    fn pick<'a>(c: &Frozen, vs: &'a [Frozen], node: Option<&Frozen>) -> Option<&'a str> {
        let class = c["spec"]["storageClassName"].as_str().unwrap_or_default();
        best_volume(c, class, vs.iter(), node).map(owner::name)
    }

    #[test]
    fn a_claim_binds_the_smallest_volume_that_fits() {
        let c = claim(
            json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
            "resources": {"requests": {"storage": "1Gi"}}}),
        );
        let vs = [
            volume("big", "10Gi", json!({})),
            volume("small", "1Gi", json!({})),
            volume("tiny", "500Mi", json!({})),
            volume(
                "other-class",
                "1Gi",
                json!({"spec": {"storageClassName": "slow"}}),
            ),
            volume(
                "rox",
                "1Gi",
                json!({"spec": {"accessModes": ["ReadOnlyMany"]}}),
            ),
            volume(
                "taken",
                "1Gi",
                json!({"spec": {"claimRef": {"namespace": "x", "name": "y", "uid": "u"}}}),
            ),
            volume("released", "1Gi", json!({"status": {"phase": "Released"}})),
        ];
        assert_eq!(pick(&c, &vs, None), Some("small"));
        // Only bigger ones left: the next smallest.
        assert_eq!(pick(&c, &vs[..1], None), Some("big"));
        assert_eq!(pick(&c, &vs[2..], None), None);
    }

    #[test]
    fn a_pre_bound_volume_wins_and_selectors_and_classes_must_match() {
        let c = claim(
            json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
            "resources": {"requests": {"storage": "1Gi"}},
            "selector": {"matchLabels": {"tier": "fast"}}}),
        );
        let vs = [
            volume("small", "1Gi", json!({})),
            volume(
                "mine",
                "5Gi",
                json!({"spec": {"claimRef": {"namespace": "default", "name": "data"}}}),
            ),
            volume(
                "slow",
                "1Gi",
                json!({"metadata": {"labels": {"tier": "slow"}}}),
            ),
        ];
        assert_eq!(pick(&c, &vs, None), Some("mine"));
        assert_eq!(
            pick(&c, &vs[2..], None),
            None,
            "the selector refuses the slow tier"
        );
        let classless = claim(json!({"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}));
        assert_eq!(
            pick(&classless, &vs, None),
            None,
            "no class binds only class-less volumes"
        );
    }

    #[test]
    fn a_chosen_node_must_reach_the_volume() {
        let c = claim(
            json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
            "resources": {"requests": {"storage": "1Gi"}}}),
        );
        let pinned = |node: &str| {
            json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
        };
        let vs = [
            volume("on-a", "1Gi", pinned("a")),
            volume("on-b", "2Gi", pinned("b")),
        ];
        let node_b = Frozen::from(
            json!({"metadata": {"name": "b", "labels": {"kubernetes.io/hostname": "b"}}}),
        );
        assert_eq!(pick(&c, &vs, None), Some("on-a"));
        assert_eq!(pick(&c, &vs, Some(&node_b)), Some("on-b"));
        assert_eq!(pinned_node(&vs[0]), Some("a"));
    }
}
