//! The scheduling loop: places pending pods in batches, one snapshot per batch.
//!
//! Pods that [`super::wants`] a scheduler are queued as the cache shows them; each round takes
//! every queued pod, builds one [`Snapshot`] from the cache, decides for each pod in creation
//! order (recording each decision with `assume`, so one round never over-fills a node), and
//! binds through the registry's compare-and-swap, many bindings at a time. A pod that fits
//! nowhere gets `PodScheduled=False` with the reason and a `FailedScheduling` event, and waits
//! until a node changes or a pod goes away — never a timer.
//!
//! Invariants: a pod is bound at most once (the binding is a compare-and-swap on an unbound
//! pod); a round starts only once the cache shows the previous round's bindings, so a
//! snapshot never misses a pod this scheduler placed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::volumes::{self, SELECTED_NODE, VolumeNeeds};
use super::{Snapshot, Unschedulable, wants};
use crate::apiserver::registry::{Part, now_rfc3339};
use crate::apiserver::resources::{
    NODES, ObjectRef, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, PODS, STORAGECLASSES,
};
use crate::apiserver::status::ApiError;
use crate::controllers::events::{Recorder, Type};
use crate::controllers::owner;
use crate::runtime::cache::Change;
use crate::runtime::controller::Context;
use crate::runtime::frozen::Frozen;

/// Bindings in flight at once.
const PARALLEL_BINDS: usize = 32;

/// A binding that did not happen: the pod and why.
type FailedBind = (ObjectRef, Arc<Frozen>, ApiError);

pub struct Scheduler {
    pub events: Recorder,
}

/// Where a waiting pod is: ready for the next round, or waiting for the cluster to change.
#[derive(Default)]
struct Queue {
    /// By (creation time, path): older pods are placed first.
    active: BTreeMap<(String, String), ()>,
    /// Pods that fit nowhere, by path, with the message they were given.
    unschedulable: HashMap<String, (String, String)>,
}

impl Queue {
    fn offer(&mut self, pod: &Frozen) {
        let Some(path) = crate::runtime::cache::path_of(&PODS, pod) else {
            return;
        };
        let created = pod["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.unschedulable.remove(&path);
        self.active.insert((created, path), ());
    }

    fn forget(&mut self, pod: &Frozen) {
        if let Some(path) = crate::runtime::cache::path_of(&PODS, pod) {
            let created = pod["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            self.active.remove(&(created, path.clone()));
            self.unschedulable.remove(&path);
        }
    }

    /// The cluster changed in a way that may make room: try the waiting pods again.
    fn retry_unschedulable(&mut self) {
        for (path, (created, _)) in self.unschedulable.drain() {
            self.active.insert((created, path), ());
        }
    }

    fn note(&mut self, change: &Change) {
        // A claim, volume or class that came or changed may be what a waiting pod lacks.
        let storage = change.resource == &PERSISTENTVOLUMECLAIMS
            || change.resource == &PERSISTENTVOLUMES
            || change.resource == &STORAGECLASSES;
        if change.resource == &NODES || storage {
            // A node came, changed (uncordoned, untainted, relabelled) or went.
            if change.new.is_some() {
                self.retry_unschedulable();
            }
            return;
        }
        if change.resource != &PODS {
            return;
        }
        match change.new.as_deref() {
            Some(pod) if wants(pod) => {
                // A pod already waiting for room stays waiting unless its spec changed.
                let path = crate::runtime::cache::path_of(&PODS, pod).unwrap_or_default();
                let spec_changed = change
                    .old
                    .as_deref()
                    .is_none_or(|old| old["spec"] != pod["spec"]);
                if spec_changed || !self.unschedulable.contains_key(&path) {
                    self.offer(pod);
                }
            }
            Some(pod) => {
                self.forget(pod);
                // A pod that finished frees its node's room.
                let finished =
                    !owner::is_active(pod) && change.old.as_deref().is_some_and(owner::is_active);
                if finished {
                    self.retry_unschedulable();
                }
            }
            None => {
                if let Some(old) = change.old.as_deref() {
                    self.forget(old);
                    if old["spec"]["nodeName"]
                        .as_str()
                        .is_some_and(|n| !n.is_empty())
                    {
                        self.retry_unschedulable();
                    }
                }
            }
        }
    }
}

impl Scheduler {
    /// Runs until its task is aborted (leadership ends).
    pub async fn run(self, ctx: Arc<Context>) {
        let mut changes = ctx.cache.subscribe();
        let mut queue = Queue::default();
        for pod in ctx.cache.list(&PODS) {
            if wants(&pod) {
                queue.offer(&pod);
            }
        }
        loop {
            if queue.active.is_empty() {
                match changes.recv().await {
                    Ok(change) => queue.note(&change),
                    Err(broadcast::error::RecvError::Lagged(_)) => resync(&ctx, &mut queue),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            // Take in everything that already happened before deciding.
            loop {
                match changes.try_recv() {
                    Ok(change) => queue.note(&change),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => resync(&ctx, &mut queue),
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                }
            }
            if !queue.active.is_empty() {
                self.round(&ctx, &mut queue).await;
            }
        }
    }

    /// Decides for every queued pod from one snapshot and binds them.
    async fn round(&self, ctx: &Context, queue: &mut Queue) {
        let nodes = ctx.cache.list(&NODES);
        let pods = ctx.cache.list(&PODS);
        let mut snapshot = Snapshot::new(nodes.iter().map(|n| &**n), pods.iter().map(|p| &**p));
        let batch: Vec<(String, String)> = std::mem::take(&mut queue.active).into_keys().collect();
        let mut binds = vec![];
        let mut refused = vec![];
        for (created, path) in batch {
            let Some(r) = ObjectRef::from_path(&path) else {
                continue;
            };
            let Some(pod) = ctx.cache.get(&r) else {
                continue;
            };
            if !wants(&pod) {
                continue;
            }
            let decided = volume_needs(ctx, &pod).and_then(|needs| {
                let delayed = needs.delayed.clone();
                snapshot
                    .schedule_with(&pod, needs)
                    .map(|node| (node, delayed))
            });
            match decided {
                Ok((node, delayed)) => {
                    snapshot.assume(&pod, &node);
                    binds.push((r, pod, node, delayed));
                }
                Err(why) => refused.push((created, path, r, pod, why.message())),
            }
        }
        let registry = &ctx.registry;
        let events = &self.events;
        let cache = &ctx.cache;
        let results: Vec<Result<Value, FailedBind>> = futures_util::stream::iter(binds)
            .map(|(r, pod, node, delayed)| async move {
                // Claims waiting for their first consumer learn the node first, so the
                // binder provisions where the pod goes.
                for claim in &delayed {
                    select_node(registry, &r, claim, &node)
                        .await
                        .map_err(|e| (r.clone(), pod.clone(), e))?;
                }
                // The cached pod's revision makes the binding a compare-and-swap: a pod that
                // changed since the snapshot is not bound, and is decided again next round.
                // The cache keeps waiting pods whole, so binding needs no read; a whole copy
                // at another revision than the one decided on is not used.
                let whole = cache.whole(&r).filter(|w| {
                    w["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"]
                });
                let bound = match whole {
                    Some(whole) => registry.bind_from(&r, &whole.thaw(), &node).await,
                    None => registry.bind_seen(&r, &pod, &node).await,
                };
                match bound {
                    Ok(bound) => {
                        events
                            .record(
                                &PODS,
                                &bound,
                                Type::Normal,
                                "Scheduled",
                                &format!(
                                    "Successfully assigned {}/{} to {node}",
                                    owner::namespace(&bound),
                                    r.name
                                ),
                            )
                            .await;
                        Ok(bound)
                    }
                    Err(e) => Err((r, pod, e)),
                }
            })
            .buffer_unordered(PARALLEL_BINDS)
            .collect()
            .await;
        for result in results {
            match result {
                Ok(bound) => ctx.wrote(&bound),
                // Bound by someone else, or gone: nothing left to do for it.
                Err((_, _, ApiError::ConflictWith(_) | ApiError::NotFound { .. })) => {}
                Err((r, pod, e)) => {
                    tracing::info!(pod = %r, error = %e, "binding failed; trying again next round");
                    queue.offer(&pod);
                }
            }
        }
        for (created, path, r, pod, message) in refused {
            self.refuse(ctx, &r, &pod, &message).await;
            queue.unschedulable.insert(path, (created, message));
        }
        ctx.settle().await;
    }

    /// Tells the pod's owner why it waits: the PodScheduled condition and an event, each
    /// written only when the message changed.
    async fn refuse(&self, ctx: &Context, r: &ObjectRef, pod: &Frozen, message: &str) {
        let current = pod
            .pointer("/status/conditions")
            .and_then(Frozen::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"));
        if current.is_some_and(|c| c["status"] == "False" && c["message"] == message) {
            return;
        }
        let condition = json!({
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": now_rfc3339(),
        });
        match ctx
            .registry
            .modify(r, Part::Status, |p| {
                if !p["status"]["conditions"].is_array() {
                    p["status"]["conditions"] = json!([]);
                }
                if let Some(conds) = p["status"]["conditions"].as_array_mut() {
                    conds.retain(|c| c["type"] != "PodScheduled");
                    conds.push(condition.clone());
                }
            })
            .await
        {
            Ok(p) => ctx.wrote(&p),
            Err(e) => tracing::debug!(pod = %r, error = %e, "could not mark a pod unschedulable"),
        }
        self.events
            .record(&PODS, pod, Type::Warning, "FailedScheduling", message)
            .await;
    }
}

/// What `pod`'s claims ask of its node, read from the cache; `Err` refuses the pod before any
/// node is looked at.
fn volume_needs(ctx: &Context, pod: &Frozen) -> Result<VolumeNeeds, Unschedulable> {
    let namespace = owner::namespace(pod);
    let cache = &ctx.cache;
    volumes::needs(
        pod,
        |name| {
            cache.get(&ObjectRef::namespaced(
                &PERSISTENTVOLUMECLAIMS,
                namespace,
                name,
            ))
        },
        |name| cache.get(&ObjectRef::cluster(&PERSISTENTVOLUMES, name)),
        |name| cache.get(&ObjectRef::cluster(&STORAGECLASSES, name)),
    )
    .map_err(|message| Unschedulable::NoFit {
        nodes: ctx.cache.len(&NODES),
        prefilter: Some(message),
        reasons: Default::default(),
    })
}

/// Names `node` on a delayed-binding claim of the pod `r` (once; a claim already given
/// another node keeps it, as Kubernetes' binder would not move a provisioning claim).
async fn select_node(
    registry: &crate::apiserver::registry::Registry,
    r: &ObjectRef,
    claim: &str,
    node: &str,
) -> Result<(), ApiError> {
    let namespace = r.namespace.as_deref().unwrap_or("default");
    let claim_ref = ObjectRef::namespaced(&PERSISTENTVOLUMECLAIMS, namespace, claim);
    registry
        .modify(&claim_ref, Part::Main, |c| {
            if c["metadata"]["annotations"][SELECTED_NODE].is_null() {
                c["metadata"]["annotations"][SELECTED_NODE] = json!(node);
            }
        })
        .await
        .map(|_| ())
}

/// Changes were missed: every pod that wants a node is queued again.
fn resync(ctx: &Context, queue: &mut Queue) {
    queue.unschedulable.clear();
    for pod in ctx.cache.list(&PODS) {
        if wants(&pod) {
            queue.offer(&pod);
        }
    }
}
