//! The ReplicaSet controller: keeps `spec.replicas` active pods of a ReplicaSet's template.
//!
//! Level-triggered: each reconcile compares the pods the cache shows with the desired count.
//! Pods matching the selector without a controller are adopted; pods it controls that stopped
//! matching are released. Excess pods are deleted least valuable first, as Kubernetes does
//! (unscheduled, then pending, then not ready, then the newest); missing pods are created in
//! batches that double (1, 2, 4, …) while creates succeed, so a broken template fails once,
//! not `replicas` times.
//!
//! ReplicationControllers run through the same code, as in kube-controller-manager: a second
//! instance keyed by [`REPLICATIONCONTROLLERS`] reads their plain-map selector through the
//! kind's [`label_selector`](crate::apiserver::kinds::Strategy::label_selector) and
//! writes the same status.
//!
//! Invariant: it acts only on pods whose controller reference carries the owner's uid.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::events::{Recorder, Type};
use super::owner::{self, controller_of, controller_ref, is_controlled_by, ref_of};
use crate::apiserver::kinds::workload::selects;
use crate::apiserver::registry::Part;
use crate::apiserver::resources::{ObjectRef, PODS, REPLICASETS, REPLICATIONCONTROLLERS, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::{AsJson, Frozen, Json};

/// Most pods created at once.
const MAX_BATCH: usize = 256;

pub struct ReplicaSets {
    /// The kind it keeps pods for: [`REPLICASETS`] or [`REPLICATIONCONTROLLERS`].
    resource: &'static Resource,
    events: Recorder,
}

impl ReplicaSets {
    /// What it reads from the cache (both instances).
    pub const KINDS: [&'static Resource; 3] = [&REPLICASETS, &REPLICATIONCONTROLLERS, &PODS];

    pub fn new(events: Recorder) -> ReplicaSets {
        ReplicaSets {
            resource: &REPLICASETS,
            events,
        }
    }

    pub fn replication_controllers(events: Recorder) -> ReplicaSets {
        ReplicaSets {
            resource: &REPLICATIONCONTROLLERS,
            events,
        }
    }
}

impl Reconciler for ReplicaSets {
    fn name(&self) -> &'static str {
        if self.resource == &REPLICATIONCONTROLLERS {
            "replicationcontroller"
        } else {
            "replicaset"
        }
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        owner::owner_keys(change, cache, self.resource, &PODS)
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        owner::all_keys(cache, self.resource)
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let r = ref_of(self.resource, key);
        let Some(rs) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        let pods = claim(
            ctx,
            self.resource,
            &rs,
            &ctx.cache.list_in(&PODS, owner::namespace(&rs)),
        )
        .await?;
        let active: Vec<&Frozen> = pods.iter().map(|p| &**p).filter(owner::is_active).collect();
        let want = owner::int(&rs, "/spec/replicas", 1).max(0) as usize;
        let min_ready = owner::int(&rs, "/spec/minReadySeconds", 0);
        if !owner::is_terminating(&rs) {
            if active.len() < want {
                if let Err(e) = self.create_pods(ctx, &rs, want - active.len()).await {
                    // Kubernetes' ReplicaFailure condition says why the replicas are short
                    // (`kubectl describe rs`); the pass is retried with a back-off.
                    let failure = e.to_string();
                    update_status(ctx, &r, &rs, &active, min_ready, Some(&failure)).await?;
                    return Err(e);
                }
            } else if active.len() > want {
                self.delete_pods(ctx, &rs, &active, active.len() - want)
                    .await?;
            }
        }
        let next = update_status(ctx, &r, &rs, &active, min_ready, None).await?;
        Ok(next)
    }
}

impl ReplicaSets {
    async fn create_pods(
        &self,
        ctx: &Context,
        rs: &Frozen,
        missing: usize,
    ) -> Result<(), ApiError> {
        let pod = pod_from_template(self.resource, rs);
        let mut created = 0;
        let mut batch = 1;
        while created < missing {
            let n = batch.min(missing - created);
            let results = futures_util::future::join_all((0..n).map(|_| {
                ctx.registry
                    .create(&PODS, Some(owner::namespace(rs)), pod.clone())
            }))
            .await;
            let mut failed = None;
            for res in results {
                match res {
                    Ok(p) => {
                        ctx.wrote(&p);
                        created += 1;
                        self.events
                            .record(
                                self.resource,
                                rs,
                                Type::Normal,
                                "SuccessfulCreate",
                                &format!("Created pod: {}", owner::name(&p)),
                            )
                            .await;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                // A namespace being deleted takes this ReplicaSet with it: nothing to retry.
                if matches!(e, ApiError::NamespaceTerminating { .. }) {
                    return Ok(());
                }
                self.events
                    .record(
                        self.resource,
                        rs,
                        Type::Warning,
                        "FailedCreate",
                        &format!("Error creating: {e}"),
                    )
                    .await;
                return Err(e);
            }
            batch = (batch * 2).min(MAX_BATCH);
        }
        Ok(())
    }

    async fn delete_pods(
        &self,
        ctx: &Context,
        rs: &Frozen,
        active: &[&Frozen],
        excess: usize,
    ) -> Result<(), ApiError> {
        let mut ranked: Vec<&Frozen> = active.to_vec();
        ranked.sort_by_key(deletion_rank);
        for pod in ranked.into_iter().take(excess) {
            let r = ObjectRef {
                resource: &PODS,
                namespace: Some(owner::namespace(pod).to_owned()),
                name: owner::name(pod).to_owned(),
            };
            match ctx.registry.delete(&r, None).await {
                Ok(last) => {
                    ctx.wrote(&last);
                    self.events
                        .record(
                            self.resource,
                            rs,
                            Type::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {}", r.name),
                        )
                        .await;
                }
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Adopts matching orphans and releases controlled pods that stopped matching; returns the
/// pods `owner` controls afterwards. Used by every controller of pods.
pub async fn claim(
    ctx: &Context,
    resource: &'static Resource,
    owner_obj: &(impl AsJson + Sync),
    pods: &[Arc<Frozen>],
) -> Result<Vec<Arc<Frozen>>, ApiError> {
    let selector = owner::selector(resource, owner_obj);
    let mut mine = vec![];
    for pod in pods {
        let matches = selects(&selector, owner::labels(pod));
        let r = ObjectRef {
            resource: &PODS,
            namespace: Some(owner::namespace(pod).to_owned()),
            name: owner::name(pod).to_owned(),
        };
        if is_controlled_by(pod, owner_obj) {
            if matches || owner::is_terminating(owner_obj) {
                mine.push(pod.clone());
            } else {
                let uid = owner::uid(owner_obj).to_owned();
                let p = ctx
                    .registry
                    .modify(&r, Part::Main, |p| {
                        if let Some(refs) = p["metadata"]["ownerReferences"].as_array_mut() {
                            refs.retain(|o| o["uid"] != uid.as_str());
                        }
                    })
                    .await?;
                ctx.wrote(&p);
            }
        } else if matches
            && controller_of(pod).is_none()
            && owner::is_active(pod)
            && !owner::is_terminating(owner_obj)
        {
            let reference = controller_ref(resource, owner_obj);
            let adopted = ctx
                .registry
                .modify(&r, Part::Main, |p| {
                    if controller_of(p).is_some() {
                        return;
                    }
                    match p["metadata"]["ownerReferences"].as_array_mut() {
                        Some(refs) => refs.push(reference.clone()),
                        None => p["metadata"]["ownerReferences"] = json!([reference.clone()]),
                    }
                })
                .await;
            match adopted {
                Ok(p) => {
                    ctx.wrote(&p);
                    if is_controlled_by(&p, owner_obj) {
                        mine.push(Arc::new(Frozen::from(p)));
                    }
                }
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(mine)
}

/// Creates `pod` for `owner_obj` (of `resource`) and records the event Kubernetes'
/// controllers record, `SuccessfulCreate` or `FailedCreate`.
pub async fn create_pod(
    ctx: &Context,
    events: &Recorder,
    resource: &'static Resource,
    owner_obj: &(impl AsJson + Sync),
    pod: Value,
) -> Result<Value, ApiError> {
    match ctx
        .registry
        .create(&PODS, Some(owner::namespace(owner_obj)), pod)
        .await
    {
        Ok(p) => {
            ctx.wrote(&p);
            let message = format!("Created pod: {}", owner::name(&p));
            events
                .record(
                    resource,
                    owner_obj,
                    Type::Normal,
                    "SuccessfulCreate",
                    &message,
                )
                .await;
            Ok(p)
        }
        // The namespace is going, with its events: nothing to tell.
        Err(e @ ApiError::NamespaceTerminating { .. }) => Err(e),
        Err(e) => {
            let message = format!("Error creating: {e}");
            events
                .record(resource, owner_obj, Type::Warning, "FailedCreate", &message)
                .await;
            Err(e)
        }
    }
}

/// A new pod of `owner`'s template (of `resource`): its labels and annotations, a generated
/// name, and the controller reference.
pub fn pod_from_template(resource: &'static Resource, owner_obj: &impl AsJson) -> Value {
    let template = &owner_obj.json()["spec"]["template"];
    let mut meta = match template["metadata"].thaw() {
        Value::Object(meta) => meta,
        _ => Default::default(),
    };
    meta.remove("name");
    meta.remove("namespace");
    meta.insert(
        "generateName".into(),
        json!(format!("{}-", owner::name(owner_obj))),
    );
    meta.insert(
        "ownerReferences".into(),
        json!([controller_ref(resource, owner_obj)]),
    );
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template["spec"].thaw(),
    })
}

/// The condition a ReplicaSet carries while it cannot create its pods.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// Puts `condition` (a `ReplicaFailure`) into `status.conditions`, or takes it out (`None`);
/// other conditions stay, and so does the time of one that did not change.
fn set_replica_failure(status: &mut Value, condition: Option<&Value>) {
    let mut list: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let old = list.iter().position(|c| c["type"] == REPLICA_FAILURE);
    match (old, condition) {
        (Some(i), Some(new)) if list[i]["message"] == new["message"] => {}
        (Some(i), Some(new)) => list[i] = new.clone(),
        (None, Some(new)) => list.push(new.clone()),
        (Some(i), None) => {
            list.remove(i);
        }
        (None, None) => {}
    }
    if list.is_empty() {
        if let Some(s) = status.as_object_mut() {
            s.remove("conditions");
        }
    } else {
        status["conditions"] = Value::Array(list);
    }
}

/// Sort key: the pods to delete first come first (Kubernetes' ActivePods order).
fn deletion_rank(pod: &impl AsJson) -> (bool, u8, bool, std::cmp::Reverse<OffsetDateTime>) {
    let pod = pod.json();
    let assigned = pod
        .pointer("/spec/nodeName")
        .and_then(Json::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.pointer("/status/phase").and_then(Json::as_str) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    (
        assigned,
        phase,
        owner::is_ready(pod),
        std::cmp::Reverse(owner::timestamp(pod, "/metadata/creationTimestamp")),
    )
}

/// Writes the status the pods show, with the `ReplicaFailure` condition while pods cannot be
/// created (`failure`) and without it otherwise; asks to look again when a pod will become
/// available.
async fn update_status(
    ctx: &Context,
    r: &ObjectRef,
    rs: &Frozen,
    active: &[&Frozen],
    min_ready: i64,
    failure: Option<&str>,
) -> Result<Action, ApiError> {
    let now = OffsetDateTime::now_utc();
    let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
    let ready = active.iter().filter(owner::is_ready).count();
    let available = active
        .iter()
        .filter(|p| owner::is_available(p, min_ready, now))
        .count();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            template_labels
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| owner::labels(p).get(k) == Some(v))
        })
        .count();
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": owner::generation(rs),
    });
    let current = &rs["status"];
    let same = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .all(|k| current[k].as_i64().unwrap_or(0) == status[k].as_i64().unwrap_or(0));
    let shown = current["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == REPLICA_FAILURE))
        .map(|c| c["message"].as_str().unwrap_or_default().to_owned());
    if !same || shown.as_deref() != failure {
        let condition = failure.map(|message| {
            json!({
                "type": REPLICA_FAILURE, "status": "True", "reason": "FailedCreate",
                "message": message, "lastTransitionTime": crate::apiserver::registry::now_rfc3339(),
            })
        });
        match ctx
            .registry
            .modify(r, Part::Status, |o| {
                for (k, v) in status.as_object().into_iter().flatten() {
                    o["status"][k] = v.clone();
                }
                set_replica_failure(&mut o["status"], condition.as_ref());
            })
            .await
        {
            Ok(o) => ctx.wrote(&o),
            Err(ApiError::NotFound { .. }) => return Ok(Action::Done),
            Err(e) => return Err(e),
        }
    }
    // A ready pod not yet available for minReadySeconds becomes so without any change.
    if ready > available && min_ready > 0 {
        return Ok(Action::RequeueAfter(Duration::from_secs(1)));
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {

    #[test]
    fn replica_failure_is_set_replaced_and_cleared_leaving_other_conditions() {
        let failed = |m: &str| json!({"type": REPLICA_FAILURE, "status": "True", "reason": "FailedCreate", "message": m, "lastTransitionTime": "t1"});
        let mut status = json!({"replicas": 1});
        set_replica_failure(&mut status, Some(&failed("quota")));
        assert_eq!(status["conditions"][0]["message"], "quota");
        // The same message keeps its time; another replaces it.
        let mut again = failed("quota");
        again["lastTransitionTime"] = json!("t2");
        set_replica_failure(&mut status, Some(&again));
        assert_eq!(status["conditions"][0]["lastTransitionTime"], "t1");
        set_replica_failure(&mut status, Some(&failed("forbidden")));
        assert_eq!(status["conditions"][0]["message"], "forbidden");
        status["conditions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "Other"}));
        set_replica_failure(&mut status, None);
        assert_eq!(status["conditions"], json!([{"type": "Other"}]));
        set_replica_failure(&mut status, None);
        status["conditions"] = json!([failed("x")]);
        set_replica_failure(&mut status, None);
        assert!(status.get("conditions").is_none(), "{status}");
    }

    use super::*;

    #[test]
    fn unscheduled_pending_and_unready_pods_go_first() {
        let pod = |node: &str, phase: &str, ready: bool, created: &str| {
            json!({
                "metadata": {"name": format!("{node}{phase}{ready}{created}"), "creationTimestamp": created},
                "spec": {"nodeName": node},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            })
        };
        let running_ready_old = pod("n1", "Running", true, "2026-01-01T00:00:00Z");
        let running_ready_new = pod("n1", "Running", true, "2026-01-02T00:00:00Z");
        let running_unready = pod("n1", "Running", false, "2026-01-01T00:00:00Z");
        let pending = pod("n1", "Pending", false, "2026-01-01T00:00:00Z");
        let unscheduled = pod("", "Pending", false, "2026-01-01T00:00:00Z");
        let mut pods = [
            &running_ready_old,
            &running_ready_new,
            &running_unready,
            &pending,
            &unscheduled,
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<_> = pods.iter().map(|p| p["metadata"]["name"].clone()).collect();
        assert_eq!(
            order,
            vec![
                unscheduled["metadata"]["name"].clone(),
                pending["metadata"]["name"].clone(),
                running_unready["metadata"]["name"].clone(),
                running_ready_new["metadata"]["name"].clone(),
                running_ready_old["metadata"]["name"].clone(),
            ]
        );
    }

    #[test]
    fn pods_carry_the_template_and_a_controller_reference() {
        let rs = json!({
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "u1"},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}, "name": "ignored"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
        });
        let pod = pod_from_template(&REPLICASETS, &rs);
        assert_eq!(pod["metadata"]["generateName"], "web-abc-");
        assert!(pod["metadata"].get("name").is_none());
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(pod["spec"]["containers"][0]["image"], "nginx");
        let rc = pod_from_template(&REPLICATIONCONTROLLERS, &rs);
        assert_eq!(
            rc["metadata"]["ownerReferences"][0],
            json!({"apiVersion": "v1", "kind": "ReplicationController", "name": "web-abc",
                   "uid": "u1", "controller": true, "blockOwnerDeletion": true})
        );
    }

    #[test]
    fn a_replication_controllers_label_map_selects_like_match_labels() {
        let rc = json!({"spec": {"selector": {"app": "web"}}});
        let selector = owner::selector(&REPLICATIONCONTROLLERS, &rc);
        assert!(selects(&selector, &json!({"app": "web", "x": "y"})));
        assert!(!selects(&selector, &json!({"app": "db"})));
        assert!(!selects(&selector, &json!({})));
    }
}
