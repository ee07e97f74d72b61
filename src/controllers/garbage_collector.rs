//! The garbage collector: deletes objects whose owners are gone, and carries out foreground
//! and orphan deletions.
//!
//! Keys are either an object's datastore path (look at its owners, or at its deletion
//! finalizers) or `gone/<uid>` (an owner went: look at its dependents). An owner reference
//! names its owner by uid; an owner of a kind the cache does not hold is assumed alive, so
//! nothing is deleted on a guess.
//!
//! Invariants: an object is deleted only when every owner it names (of a cached kind) is
//! gone — one living owner keeps it, minus the references to the dead ones; an object held
//! by `foregroundDeletion` goes only once no dependent is left; one held by `orphan` goes
//! once no dependent names it any more.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use super::owner;
use crate::apiserver::registry::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Part, Propagation};
use crate::apiserver::resources::{ObjectRef, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change, path_of};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::Frozen;

const GONE: &str = "gone/";

pub struct GarbageCollector;

impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        let mut keys = vec![];
        match (change.old.as_deref(), change.new.as_deref()) {
            (Some(old), None) => {
                keys.push(format!("{GONE}{}", owner::uid(old)));
                // A dependent went: an owner waiting in the foreground may be done.
                keys.extend(owner_paths(old, cache));
            }
            (_, Some(new)) => {
                if has_owners(new) || holds_deletion(new) {
                    keys.extend(path_of(change.resource, new));
                }
            }
            (None, None) => {}
        }
        keys
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        cache
            .kinds()
            .into_iter()
            .flat_map(|r| cache.list(r).into_iter().map(move |o| (r, o)))
            .filter(|(_, o)| has_owners(o) || holds_deletion(o))
            .filter_map(|(r, o)| path_of(r, &o))
            .collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        if let Some(uid) = key.strip_prefix(GONE) {
            return self.owner_gone(ctx, uid).await;
        }
        let Some(r) = ObjectRef::from_path(key) else {
            return Ok(Action::Done);
        };
        let Some(obj) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        if owner::is_terminating(&obj) && has_finalizer(&obj, ORPHAN_FINALIZER) {
            return self.orphan(ctx, &r, &obj).await;
        }
        if owner::is_terminating(&obj) && has_finalizer(&obj, FOREGROUND_FINALIZER) {
            return self.foreground(ctx, &r, &obj).await;
        }
        self.check_owners(ctx, &r, &obj).await
    }
}

impl GarbageCollector {
    /// Each dependent of `uid` loses that owner: deleted if it was its last.
    async fn owner_gone(&self, ctx: &Context, uid: &str) -> Result<Action, ApiError> {
        if uid.is_empty() {
            return Ok(Action::Done);
        }
        // Most objects that go own nothing: one scan for dependents, the second only if any.
        let deps = dependents(&ctx.cache, uid);
        if deps.is_empty() || alive(&ctx.cache, uid) {
            return Ok(Action::Done);
        }
        for (r, dep) in deps {
            self.check_owners(ctx, &r, &dep).await?;
        }
        Ok(Action::Done)
    }

    /// Deletes `obj` if all its owners are gone; drops references to dead owners otherwise.
    async fn check_owners(
        &self,
        ctx: &Context,
        r: &ObjectRef,
        obj: &Frozen,
    ) -> Result<Action, ApiError> {
        let refs: Vec<&Frozen> = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Frozen::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        if refs.is_empty() {
            return Ok(Action::Done);
        }
        let dead: HashSet<String> = refs
            .iter()
            .filter(|o| owner_known_dead(&ctx.cache, o))
            .filter_map(|o| o["uid"].as_str().map(str::to_owned))
            .collect();
        if dead.is_empty() {
            return Ok(Action::Done);
        }
        if dead.len() == refs.len() {
            if owner::is_terminating(obj) {
                return Ok(Action::Done);
            }
            tracing::debug!(object = %r, "deleting an object whose owners are gone");
            match ctx.registry.delete(r, None).await {
                Ok(last) => ctx.wrote(&last),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        } else {
            let updated = ctx
                .registry
                .modify(r, Part::Main, |o| {
                    if let Some(list) = o["metadata"]["ownerReferences"].as_array_mut() {
                        list.retain(|x| x["uid"].as_str().is_none_or(|u| !dead.contains(u)));
                    }
                })
                .await;
            match updated {
                Ok(o) => ctx.wrote(&o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Action::Done)
    }

    /// Foreground deletion: delete the dependents, and let the owner go once none is left.
    async fn foreground(
        &self,
        ctx: &Context,
        r: &ObjectRef,
        obj: &Frozen,
    ) -> Result<Action, ApiError> {
        let deps = dependents(&ctx.cache, owner::uid(obj));
        if deps.is_empty() {
            let o = remove_finalizer(ctx, r, FOREGROUND_FINALIZER).await?;
            ctx.wrote(&o);
            return Ok(Action::Done);
        }
        for (dr, dep) in deps {
            if owner::is_terminating(&dep) {
                continue;
            }
            // Their own dependents go first too, as Kubernetes does.
            match ctx
                .registry
                .delete_with(&dr, None, Propagation::Foreground)
                .await
            {
                Ok(o) => ctx.wrote(&o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // The dependents' deletions wake this key; the delay is only a safety net.
        Ok(Action::RequeueAfter(Duration::from_secs(5)))
    }

    /// Orphan deletion: release the dependents, then let the owner go.
    async fn orphan(&self, ctx: &Context, r: &ObjectRef, obj: &Frozen) -> Result<Action, ApiError> {
        let uid = owner::uid(obj).to_owned();
        for (dr, _) in dependents(&ctx.cache, &uid) {
            match ctx
                .registry
                .modify(&dr, Part::Main, |o| {
                    if let Some(list) = o["metadata"]["ownerReferences"].as_array_mut() {
                        list.retain(|x| x["uid"] != uid.as_str());
                    }
                })
                .await
            {
                Ok(o) => ctx.wrote(&o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let o = remove_finalizer(ctx, r, ORPHAN_FINALIZER).await?;
        ctx.wrote(&o);
        Ok(Action::Done)
    }
}

async fn remove_finalizer(
    ctx: &Context,
    r: &ObjectRef,
    finalizer: &str,
) -> Result<Value, ApiError> {
    ctx.registry
        .modify(r, Part::Main, |o| {
            if let Some(list) = o["metadata"]["finalizers"].as_array_mut() {
                list.retain(|f| f != finalizer);
            }
        })
        .await
}

fn has_owners(obj: &Frozen) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Frozen::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn has_finalizer(obj: &Frozen, finalizer: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Frozen::as_array)
        .is_some_and(|a| a.iter().any(|f| f == finalizer))
}

fn holds_deletion(obj: &Frozen) -> bool {
    owner::is_terminating(obj)
        && (has_finalizer(obj, FOREGROUND_FINALIZER) || has_finalizer(obj, ORPHAN_FINALIZER))
}

/// The cached resource an owner reference names, by its apiVersion and kind.
fn owner_resource(reference: &Frozen, cache: &Cache) -> Option<&'static Resource> {
    let api_version = reference["apiVersion"].as_str()?;
    let kind = reference["kind"].as_str()?;
    Resource::all()
        .find(|r| r.kind == kind && r.api_version() == api_version)
        .filter(|r| cache.caches(r))
}

/// Whether the owner a reference names is surely gone: its kind is cached and no cached
/// object of it has its uid.
fn owner_known_dead(cache: &Cache, reference: &Frozen) -> bool {
    let Some(resource) = owner_resource(reference, cache) else {
        return false;
    };
    let uid = reference["uid"].as_str().unwrap_or_default();
    !cache.list(resource).iter().any(|o| owner::uid(o) == uid)
}

fn alive(cache: &Cache, uid: &str) -> bool {
    cache
        .kinds()
        .into_iter()
        .any(|r| cache.list(r).iter().any(|o| owner::uid(o) == uid))
}

/// Every cached object naming `uid` among its owners.
fn dependents(cache: &Cache, uid: &str) -> Vec<(ObjectRef, std::sync::Arc<Frozen>)> {
    let mut out = vec![];
    for resource in cache.kinds() {
        for obj in cache.list(resource) {
            let names = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Frozen::as_array)
                .is_some_and(|refs| refs.iter().any(|x| x["uid"] == uid));
            if names
                && let Some(path) = path_of(resource, &obj)
                && let Some(r) = ObjectRef::from_path(&path)
            {
                out.push((r, obj));
            }
        }
    }
    out
}

/// Paths of the cached owners `obj` names.
fn owner_paths(obj: &Frozen, cache: &Cache) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Frozen::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| {
            let resource = owner_resource(x, cache)?;
            let name = x["name"].as_str()?;
            let namespace = resource.namespaced.then(|| owner::namespace(obj));
            Some(format!("{}{name}", resource.prefix(namespace)))
        })
        .collect()
}
