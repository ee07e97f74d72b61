//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets.
//!
//! Each distinct template gets one ReplicaSet named `<deployment>-<pod-template-hash>`, with
//! the hash also in its labels and selector so the pods of two templates never mix. The
//! RollingUpdate strategy scales the new ReplicaSet up while the total stays within
//! `replicas + maxSurge`, and the old ones down while at least `replicas - maxUnavailable`
//! pods are available; Recreate scales the old ones to zero first. Revisions are the
//! `deployment.kubernetes.io/revision` annotations `kubectl rollout history/undo` read; going
//! back to an old template reuses its ReplicaSet and gives it the newest revision.
//!
//! Invariants: only ReplicaSets whose controller reference carries the Deployment's uid are
//! touched; a paused Deployment starts no new rollout; the status always describes the
//! ReplicaSets as the cache showed them when it was written.

use serde_json::{Value, json};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::events::{Recorder, Type};
use super::owner::{self, controller_of, controller_ref, is_controlled_by, key_of, ref_of};
use crate::apiserver::kinds::workload::selects;
use crate::apiserver::registry::{Part, now_rfc3339};
use crate::apiserver::resources::{DEPLOYMENTS, ObjectRef, REPLICASETS, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::AsJson;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
pub const HASH_LABEL: &str = "pod-template-hash";

pub struct Deployments {
    pub events: Recorder,
}

impl Deployments {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 2] = [&DEPLOYMENTS, &REPLICASETS];
}

impl Reconciler for Deployments {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        owner::owner_keys(change, cache, &DEPLOYMENTS, &REPLICASETS)
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        owner::all_keys(cache, &DEPLOYMENTS)
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let Some(d) = ctx.cache.get(&ref_of(&DEPLOYMENTS, key)) else {
            return Ok(Action::Done);
        };
        // A deployment and its few ReplicaSets are worked on as values: the rollout below
        // changes its copies of the sets as it writes them.
        let d = d.thaw();
        if owner::is_terminating(&d) {
            return Ok(Action::Done);
        }
        let namespace = owner::namespace(&d).to_owned();
        let candidates = ctx.cache.list_in(&REPLICASETS, &namespace);
        let mut sets: Vec<Value> = vec![];
        for rs in candidates.iter() {
            if is_controlled_by(rs, &d) {
                sets.push(rs.thaw());
            } else if controller_of(rs).is_none()
                && selects(&d["spec"]["selector"], owner::labels(rs))
            {
                // Adopt a matching orphan (one left by `--cascade=orphan`).
                let reference = controller_ref(&DEPLOYMENTS, &d);
                let adopted = ctx
                    .registry
                    .modify(&rs_ref(rs), Part::Main, |o| {
                        if controller_of(o).is_none() {
                            match o["metadata"]["ownerReferences"].as_array_mut() {
                                Some(refs) => refs.push(reference.clone()),
                                None => {
                                    o["metadata"]["ownerReferences"] = json!([reference.clone()])
                                }
                            }
                        }
                    })
                    .await?;
                ctx.wrote(&adopted);
                if is_controlled_by(&adopted, &d) {
                    sets.push(adopted);
                }
            }
        }
        let hash = template_hash(&d["spec"]["template"], collision_count(&d));
        let new_name = format!("{}-{hash}", owner::name(&d));
        let new_index = sets.iter().position(|rs| {
            owner::name(rs) == new_name || same_template(rs, &d["spec"]["template"])
        });
        let paused = d["spec"]["paused"] == true;
        let replicas = owner::int(&d, "/spec/replicas", 1).max(0);
        let mut new_rs = match new_index {
            Some(i) => Some(sets.remove(i)),
            None if paused => None,
            None => Some(self.create_new(ctx, &d, &new_name, &hash, &sets).await?),
        };
        let mut olds = sets;
        olds.sort_by_key(|rs| owner::timestamp(rs, "/metadata/creationTimestamp"));

        if let Some(rs) = new_rs.as_mut() {
            let newest = max_revision(&olds);
            if revision(rs) <= newest && !paused {
                // An old template came back (rollout undo): its ReplicaSet is the newest
                // revision now.
                let want = (newest + 1).to_string();
                let cause = d["metadata"]["annotations"][CHANGE_CAUSE].clone();
                *rs = ctx
                    .registry
                    .modify(&rs_ref(rs), Part::Main, |o| {
                        o["metadata"]["annotations"][REVISION] = json!(want);
                        if !cause.is_null() {
                            o["metadata"]["annotations"][CHANGE_CAUSE] = cause.clone();
                        }
                    })
                    .await?;
                ctx.wrote(rs);
            }
        }

        let (max_surge, max_unavailable) = limits(&d, replicas);
        if !paused && let Some(new) = new_rs.as_mut() {
            match d.pointer("/spec/strategy/type").and_then(Value::as_str) {
                Some("Recreate") => {
                    let old_running: i64 = olds
                        .iter()
                        .map(|rs| owner::int(rs, "/status/replicas", 0))
                        .sum();
                    for rs in olds.iter_mut() {
                        self.scale(ctx, &d, rs, 0).await?;
                    }
                    if old_running == 0 {
                        self.scale(ctx, &d, new, replicas).await?;
                    }
                }
                _ => {
                    self.roll(
                        ctx,
                        &d,
                        new,
                        &mut olds,
                        replicas,
                        max_surge,
                        max_unavailable,
                    )
                    .await?
                }
            }
        } else if let Some(new) = new_rs.as_mut()
            && olds
                .iter()
                .all(|rs| owner::int(rs, "/spec/replicas", 0) == 0)
        {
            // Paused: scaling still applies to a finished rollout.
            self.scale(ctx, &d, new, replicas).await?;
        }
        self.cleanup(ctx, &d, &olds).await?;
        self.write_status(ctx, &d, new_rs.as_ref(), &olds, replicas, max_unavailable)
            .await
    }
}

impl Deployments {
    async fn create_new(
        &self,
        ctx: &Context,
        d: &Value,
        name: &str,
        hash: &str,
        olds: &[Value],
    ) -> Result<Value, ApiError> {
        let mut template = d["spec"]["template"].clone();
        template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let replicas = owner::int(d, "/spec/replicas", 1).max(0);
        let (max_surge, _) = limits(d, replicas);
        let mut annotations = json!({
            REVISION: (max_revision(olds) + 1).to_string(),
            DESIRED: replicas.to_string(),
            MAX_REPLICAS: (replicas + max_surge).to_string(),
        });
        if let Some(cause) = d["metadata"]["annotations"].get(CHANGE_CAUSE) {
            annotations[CHANGE_CAUSE] = cause.clone();
        }
        let mut labels = d["spec"]["template"]["metadata"]["labels"].clone();
        labels[HASH_LABEL] = json!(hash);
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": owner::namespace(d),
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [controller_ref(&DEPLOYMENTS, d)],
            },
            "spec": {
                // Starts empty; the rollout below decides how many.
                "replicas": 0,
                "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
                "selector": selector,
                "template": template,
            },
        });
        match ctx
            .registry
            .create(&REPLICASETS, Some(owner::namespace(d)), rs)
            .await
        {
            Ok(rs) => {
                ctx.wrote(&rs);
                self.events
                    .record(
                        &DEPLOYMENTS,
                        d,
                        Type::Normal,
                        "ScalingReplicaSet",
                        &format!("Created new replica set \"{name}\""),
                    )
                    .await;
                Ok(rs)
            }
            Err(ApiError::AlreadyExists { .. }) => {
                // A namesake with another template (or another owner): count the collision
                // so the next hash differs, as Kubernetes does.
                let r = ref_of(&DEPLOYMENTS, &key_of(d).unwrap_or_default());
                let updated = ctx
                    .registry
                    .modify(&r, Part::Status, |o| {
                        let n = o["status"]["collisionCount"].as_i64().unwrap_or(0);
                        o["status"]["collisionCount"] = json!(n + 1);
                    })
                    .await?;
                ctx.wrote(&updated);
                Err(ApiError::ConflictWith(format!(
                    "replica set {name} exists with another template; trying the next name"
                )))
            }
            Err(e) => Err(e),
        }
    }

    async fn scale(
        &self,
        ctx: &Context,
        d: &Value,
        rs: &mut Value,
        to: i64,
    ) -> Result<(), ApiError> {
        let from = owner::int(rs, "/spec/replicas", 0);
        let replicas = owner::int(d, "/spec/replicas", 1).max(0);
        let (max_surge, _) = limits(d, replicas);
        let desired = replicas.to_string();
        let max = (replicas + max_surge).to_string();
        let annotations_current = rs["metadata"]["annotations"][DESIRED].as_str()
            == Some(desired.as_str())
            && rs["metadata"]["annotations"][MAX_REPLICAS].as_str() == Some(max.as_str());
        if from == to && annotations_current {
            return Ok(());
        }
        *rs = ctx
            .registry
            .modify(&rs_ref(rs), Part::Main, |o| {
                o["spec"]["replicas"] = json!(to);
                o["metadata"]["annotations"][DESIRED] = json!(desired);
                o["metadata"]["annotations"][MAX_REPLICAS] = json!(max);
            })
            .await?;
        ctx.wrote(rs);
        if from != to {
            let verb = if to > from { "up" } else { "down" };
            self.events
                .record(
                    &DEPLOYMENTS,
                    d,
                    Type::Normal,
                    "ScalingReplicaSet",
                    &format!(
                        "Scaled {verb} replica set {} from {from} to {to}",
                        owner::name(rs)
                    ),
                )
                .await;
        }
        Ok(())
    }

    /// One step of a rolling update: up as far as the surge allows, down as far as
    /// availability allows.
    #[allow(clippy::too_many_arguments)]
    async fn roll(
        &self,
        ctx: &Context,
        d: &Value,
        new: &mut Value,
        olds: &mut [Value],
        replicas: i64,
        max_surge: i64,
        max_unavailable: i64,
    ) -> Result<(), ApiError> {
        let spec = |rs: &Value| owner::int(rs, "/spec/replicas", 0);
        let total: i64 = spec(new) + olds.iter().map(spec).sum::<i64>();
        let new_replicas = spec(new);
        let only_new = olds.iter().all(|rs| spec(rs) == 0);
        if only_new {
            // Nothing to replace: plain scaling.
            return self.scale(ctx, d, new, replicas).await;
        }
        if new_replicas < replicas {
            let room = (replicas + max_surge - total).max(0);
            let want = (new_replicas + room).min(replicas);
            if want != new_replicas {
                self.scale(ctx, d, new, want).await?;
            }
        } else if new_replicas > replicas {
            self.scale(ctx, d, new, replicas).await?;
        }
        // Scale old ReplicaSets down, as far as availability allows: first their pods that
        // are not available (they serve nobody), then available ones. The bound comes from
        // the replicas asked for, which the cache shows as written, because ReplicaSets'
        // status (what is available) lags behind their scaling: counted from status alone,
        // an old set scaled down a moment ago still looks full and would be cut twice.
        let available = |rs: &Value| owner::int(rs, "/status/availableReplicas", 0);
        let min_available = replicas - max_unavailable;
        let total_now: i64 = spec(new) + olds.iter().map(spec).sum::<i64>();
        let new_unavailable = (spec(new) - available(new)).max(0);
        let mut bound = (total_now - min_available - new_unavailable).max(0);
        for rs in olds.iter_mut() {
            let unhealthy = (spec(rs) - available(rs)).max(0);
            let cut = unhealthy.min(bound);
            if cut > 0 {
                let to = spec(rs) - cut;
                self.scale(ctx, d, rs, to).await?;
                bound -= cut;
            }
        }
        let all_available: i64 = available(new)
            + olds
                .iter()
                .map(|rs| available(rs).min(spec(rs)))
                .sum::<i64>();
        let mut budget = (all_available - min_available).max(0).min(bound);
        for rs in olds.iter_mut() {
            if budget == 0 {
                break;
            }
            let cut = spec(rs).min(budget);
            if cut > 0 {
                let to = spec(rs) - cut;
                self.scale(ctx, d, rs, to).await?;
                budget -= cut;
            }
        }
        Ok(())
    }

    /// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit`, oldest first.
    async fn cleanup(&self, ctx: &Context, d: &Value, olds: &[Value]) -> Result<(), ApiError> {
        let limit = owner::int(d, "/spec/revisionHistoryLimit", 10).max(0) as usize;
        let empty: Vec<&Value> = olds
            .iter()
            .filter(|rs| {
                owner::int(*rs, "/spec/replicas", 0) == 0
                    && owner::int(*rs, "/status/replicas", 0) == 0
                    && !owner::is_terminating(*rs)
            })
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        for rs in &empty[..empty.len() - limit] {
            match ctx.registry.delete(&rs_ref(*rs), None).await {
                Ok(last) => ctx.wrote(&last),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn write_status(
        &self,
        ctx: &Context,
        d: &Value,
        new: Option<&Value>,
        olds: &[Value],
        replicas: i64,
        max_unavailable: i64,
    ) -> Result<Action, ApiError> {
        let all: Vec<&Value> = new.into_iter().chain(olds.iter()).collect();
        let sum = |p: &str| all.iter().map(|rs| owner::int(*rs, p, 0)).sum::<i64>();
        let total = sum("/status/replicas");
        let ready = sum("/status/readyReplicas");
        let available = sum("/status/availableReplicas");
        let updated = new.map_or(0, |rs| owner::int(rs, "/status/replicas", 0));
        let new_available = new.map_or(0, |rs| owner::int(rs, "/status/availableReplicas", 0));
        let new_observed = new.is_none_or(|rs| {
            owner::int(rs, "/status/observedGeneration", 0) >= owner::generation(rs)
        });
        let complete = new.is_some()
            && updated == replicas
            && total == replicas
            && new_available == replicas
            && new_observed;
        let now = now_rfc3339();
        let conditions = d["status"]["conditions"].clone();
        let find = |t: &str| {
            conditions
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == t).cloned())
        };
        let mut next = Action::Done;
        let available_cond = if available >= replicas - max_unavailable {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        let new_name = new.map(owner::name).unwrap_or_default();
        let deadline = owner::int(d, "/spec/progressDeadlineSeconds", 600);
        let old_progress = find("Progressing");
        let progressed = d["status"]["updatedReplicas"].as_i64() != Some(updated)
            || d["status"]["availableReplicas"].as_i64() != Some(available)
            || d["status"]["replicas"].as_i64() != Some(total);
        let progressing = if d["spec"]["paused"] == true {
            (
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".to_owned(),
                true,
            )
        } else if complete {
            (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                old_progress
                    .as_ref()
                    .is_none_or(|c| c["reason"] != "NewReplicaSetAvailable"),
            )
        } else {
            let since = old_progress
                .as_ref()
                .and_then(|c| c["lastUpdateTime"].as_str())
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
            let elapsed = since.map_or(0, |s| (OffsetDateTime::now_utc() - s).whole_seconds());
            let was_exceeded = old_progress
                .as_ref()
                .is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded");
            if !progressed && (was_exceeded || elapsed > deadline) {
                (
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                    !was_exceeded,
                )
            } else {
                next = Action::RequeueAfter(Duration::from_secs(
                    (deadline - elapsed).clamp(1, deadline.max(1)) as u64,
                ));
                (
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{new_name}\" is progressing."),
                    progressed || old_progress.is_none(),
                )
            }
        };
        let condition = |t: &str, (status, reason, message): (&str, &str, &str), touched: bool| {
            let old = find(t);
            let same_status = old.as_ref().is_some_and(|c| c["status"] == status);
            json!({
                "type": t,
                "status": status,
                "reason": reason,
                "message": message,
                "lastUpdateTime": if touched || old.is_none() || !same_status || old.as_ref().is_some_and(|c| c["reason"] != reason) { json!(now) } else { old.as_ref().map_or(json!(now), |c| c["lastUpdateTime"].clone()) },
                "lastTransitionTime": if same_status { old.as_ref().map_or(json!(now), |c| c["lastTransitionTime"].clone()) } else { json!(now) },
            })
        };
        let status = json!({
            "observedGeneration": owner::generation(d),
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (total - available).max(replicas - available).max(0),
            "collisionCount": d["status"]["collisionCount"],
            "conditions": [
                condition("Available", available_cond, false),
                condition("Progressing", (progressing.0, progressing.1, &progressing.2), progressing.3),
            ],
        });
        // A ReplicaSet that cannot create its pods says why on the Deployment too, as
        // Kubernetes' controller does; gone once no ReplicaSet fails.
        let failure = all.iter().find_map(|rs| {
            rs["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == super::replicaset::REPLICA_FAILURE && c["status"] == "True")
                .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
        });
        let mut status = status;
        if let (Some(message), Some(list)) = (failure, status["conditions"].as_array_mut()) {
            let mut c = condition(
                super::replicaset::REPLICA_FAILURE,
                ("True", "FailedCreate", &message),
                false,
            );
            c["message"] = json!(message);
            list.push(c);
        }
        let unchanged = [
            "observedGeneration",
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
        ]
        .iter()
        .all(|k| d["status"][k].as_i64().unwrap_or(0) == status[k].as_i64().unwrap_or(0))
            && same_conditions(&d["status"]["conditions"], &status["conditions"]);
        let revision_current = new.is_none_or(|rs| {
            d["metadata"]["annotations"][REVISION] == rs["metadata"]["annotations"][REVISION]
        });
        let r = ref_of(&DEPLOYMENTS, &key_of(d).unwrap_or_default());
        if !revision_current && let Some(rs) = new {
            let rev = rs["metadata"]["annotations"][REVISION].clone();
            let o = ctx
                .registry
                .modify(&r, Part::Main, |o| {
                    o["metadata"]["annotations"][REVISION] = rev.clone();
                })
                .await?;
            ctx.wrote(&o);
        }
        if !unchanged {
            let o = ctx
                .registry
                .modify(&r, Part::Status, |o| {
                    let collision = o["status"]["collisionCount"].clone();
                    o["status"] = status.clone();
                    match collision {
                        Value::Null => {
                            o["status"]
                                .as_object_mut()
                                .map(|m| m.remove("collisionCount"));
                        }
                        c => o["status"]["collisionCount"] = c,
                    }
                })
                .await?;
            ctx.wrote(&o);
        }
        Ok(next)
    }
}

/// Conditions equal but for their timestamps.
fn same_conditions(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| -> Vec<(Value, Value, Value)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["type"].clone(), c["status"].clone(), c["reason"].clone()))
            .collect()
    };
    strip(a) == strip(b)
}

fn rs_ref(rs: &impl AsJson) -> ObjectRef {
    ObjectRef {
        resource: &REPLICASETS,
        namespace: Some(owner::namespace(rs).to_owned()),
        name: owner::name(rs).to_owned(),
    }
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn max_revision(sets: &[Value]) -> i64 {
    sets.iter().map(revision).max().unwrap_or(0)
}

fn collision_count(d: &Value) -> Option<u32> {
    d.pointer("/status/collisionCount")
        .and_then(Value::as_u64)
        .map(|n| n as u32)
}

/// Whether `rs` runs `template` (its own template without the hash label).
fn same_template(rs: &Value, template: &Value) -> bool {
    let mut t = normal(&rs["spec"]["template"]);
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    t == normal(template)
}

/// A template without what carries no meaning: kubectl's `creationTimestamp: null` (which
/// `rollout undo` sends back) and empty maps.
fn normal(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, v| {
            !(v.is_null() || (k != "labels" && v.as_object().is_some_and(|m| m.is_empty())))
        });
    }
    t
}

/// The `pod-template-hash`: FNV-1a over the template's canonical JSON (and the collision
/// count), spelled in Kubernetes' vowel-free alphabet.
pub fn template_hash(template: &Value, collisions: Option<u32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    // serde_json's maps are sorted by key, so equal templates give equal text.
    eat(normal(template).to_string().as_bytes());
    if let Some(c) = collisions {
        eat(&c.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

/// `(maxSurge, maxUnavailable)` in pods: percentages of `replicas`, surge rounded up and
/// unavailability down; both zero would stall, so unavailability is then one.
pub fn limits(d: &Value, replicas: i64) -> (i64, i64) {
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    if d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") {
        return (0, replicas);
    }
    let surge = owner::scaled(&ru["maxSurge"], replicas, true, "25%");
    let unavailable = owner::scaled(&ru["maxUnavailable"], replicas, false, "25%");
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailability_down() {
        let d = |surge: Value, unavailable: Value| json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}});
        assert_eq!(limits(&d(json!("25%"), json!("25%")), 10), (3, 2));
        assert_eq!(limits(&d(json!(0), json!(0)), 10), (0, 1));
        assert_eq!(limits(&d(json!(2), json!("50%")), 3), (2, 1));
        assert_eq!(limits(&json!({"spec": {}}), 4), (1, 1));
        assert_eq!(
            limits(&json!({"spec": {"strategy": {"type": "Recreate"}}}), 4),
            (0, 4)
        );
    }

    #[test]
    fn equal_templates_hash_alike_and_collisions_move_the_hash() {
        let a = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"image": "nginx:1"}]}});
        let b = json!({"spec": {"containers": [{"image": "nginx:1"}]}, "metadata": {"labels": {"app": "web"}}});
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"image": "nginx:2"}]}});
        assert_eq!(template_hash(&a, None), template_hash(&b, None));
        assert_ne!(template_hash(&a, None), template_hash(&c, None));
        assert_ne!(template_hash(&a, None), template_hash(&a, Some(1)));
        let h = template_hash(&a, None);
        assert!(
            h.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
    }

    #[test]
    fn a_replicaset_runs_the_template_whatever_its_hash_label() {
        let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}});
        let rs = json!({"spec": {"template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}}, "spec": {"containers": []}}}});
        assert!(same_template(&rs, &template));
        // What `kubectl rollout undo` sends back.
        let undone = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "web"}}, "spec": {"containers": []}});
        assert!(same_template(&rs, &undone));
        assert_eq!(template_hash(&undone, None), template_hash(&template, None));
    }
}
