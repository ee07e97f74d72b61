//! The DaemonSet controller: one pod of the template on every node that should run it.
//!
//! A node should run the pod when the template's node selector and required node affinity
//! match it and the pod tolerates its NoSchedule and NoExecute taints — decided by the
//! scheduler's own filters, with the template's resource requests and host ports left out
//! (a full node still gets its daemon pod, which then waits, as in Kubernetes). Pods are
//! pinned to their node with a required node affinity on `metadata.name` and placed by the
//! scheduler, as Kubernetes' DaemonSets are. Their pods tolerate the `node.kubernetes.io/*`
//! taints Kubernetes gives daemon pods, so they stay on nodes that are not ready, unreachable,
//! under pressure or cordoned.
//!
//! Updates: each pod carries the `controller-revision-hash` of its template; with
//! RollingUpdate, pods of an old template are deleted while at most `maxUnavailable` of the
//! DaemonSet's pods are unavailable, and the replacements come from the current template;
//! with OnDelete, only pods deleted by someone else are replaced.
//!
//! Invariant: at most one active pod per node (extras are deleted, newest first), and none on
//! a node that should not run it.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::events::{Recorder, Type};
use super::owner::{self, ref_of};
use super::replicaset::{claim, create_pod, pod_from_template};
use super::scheduler::Snapshot;
use crate::apiserver::resources::{DAEMONSETS, NODES, PODS, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};

pub const REVISION_HASH: &str = "controller-revision-hash";

/// The taints every daemon pod tolerates (Kubernetes' `AddOrUpdateDaemonPodTolerations`).
const TOLERATED: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

pub struct DaemonSets {
    pub events: Recorder,
}

impl DaemonSets {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 3] = [&DAEMONSETS, &PODS, &NODES];
}

impl Reconciler for DaemonSets {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        if change.resource == &NODES {
            // A node came, went, or changed labels or taints: every DaemonSet looks again.
            let relevant = match (change.old.as_deref(), change.new.as_deref()) {
                (Some(a), Some(b)) => {
                    a["metadata"]["labels"] != b["metadata"]["labels"] || a["spec"] != b["spec"]
                }
                _ => true,
            };
            return if relevant { self.all(cache) } else { vec![] };
        }
        owner::owner_keys(change, cache, &DAEMONSETS, &PODS)
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        owner::all_keys(cache, &DAEMONSETS)
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let r = ref_of(&DAEMONSETS, key);
        let Some(ds) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        let pods = claim(
            ctx,
            &DAEMONSETS,
            &ds,
            &ctx.cache.list_in(&PODS, owner::namespace(&ds)),
        )
        .await?;
        let nodes = ctx.cache.list(&NODES);
        let hash = super::deployment::template_hash(&ds["spec"]["template"], None);
        let mut by_node: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
        for pod in pods.iter().filter(|p| owner::is_active(p)) {
            by_node
                .entry(pinned_node(pod).unwrap_or_default())
                .or_default()
                .push(pod.clone());
        }
        let probe = eligibility_probe(&ds);
        let mut wanted = vec![];
        let mut to_delete: Vec<Arc<Value>> = vec![];
        let mut desired = 0;
        for node in &nodes {
            let name = owner::name(node);
            let should_run = should_run(&probe, node);
            let mut here = by_node.remove(name).unwrap_or_default();
            if should_run {
                desired += 1;
                if here.is_empty() {
                    wanted.push(name.to_owned());
                } else if here.len() > 1 {
                    // Keep the oldest.
                    here.sort_by_key(|p| owner::timestamp(p, "/metadata/creationTimestamp"));
                    to_delete.extend(here.drain(1..));
                }
            } else {
                to_delete.extend(here);
            }
        }
        // Pods of nodes that are gone (or never pinned).
        to_delete.extend(by_node.into_values().flatten());

        let terminating = owner::is_terminating(&ds);
        if !terminating {
            for p in &to_delete {
                self.delete(ctx, &ds, p).await?;
            }
            for node in &wanted {
                let pod = daemon_pod(&ds, node, &hash);
                create_pod(ctx, &self.events, &DAEMONSETS, &ds, pod).await?;
            }
        }

        // The pods that stay, for the rolling update and the status.
        let current: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| owner::is_active(p) && !to_delete.iter().any(|d| Arc::ptr_eq(d, p)))
            .collect();
        let min_ready = owner::int(&ds, "/spec/minReadySeconds", 0);
        let now = OffsetDateTime::now_utc();
        let available = current
            .iter()
            .filter(|p| owner::is_available(p, min_ready, now))
            .count() as i64;
        let updated = current
            .iter()
            .filter(|p| owner::labels(p)[REVISION_HASH] == hash.as_str())
            .count() as i64;
        let rolling = ds
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            != Some("OnDelete");
        if rolling && !terminating {
            let max_unavailable = owner::scaled(
                &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
                desired,
                true,
                "1",
            )
            .max(1);
            let unavailable = desired - available;
            let mut budget = (max_unavailable - unavailable).max(0);
            // Old pods that serve nobody go first; they cost no availability.
            let mut old: Vec<&&Arc<Value>> = current
                .iter()
                .filter(|p| owner::labels(p)[REVISION_HASH] != hash.as_str())
                .collect();
            old.sort_by_key(|p| owner::is_available(p, min_ready, now));
            for p in old {
                if owner::is_available(p, min_ready, now) {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                }
                self.delete(ctx, &ds, p).await?;
            }
        }
        let ready = current.iter().filter(|p| owner::is_ready(p)).count() as i64;
        let scheduled = current.len() as i64;
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": scheduled,
            "numberMisscheduled": to_delete.len(),
            "numberReady": ready,
            "updatedNumberScheduled": updated,
            "numberAvailable": available,
            "numberUnavailable": (desired - available).max(0),
            "observedGeneration": owner::generation(&ds),
        });
        owner::write_status(ctx, &DAEMONSETS, &ds, &status).await?;
        Ok(Action::Done)
    }
}

impl DaemonSets {
    async fn delete(&self, ctx: &Context, ds: &Value, pod: &Value) -> Result<(), ApiError> {
        owner::delete(ctx, &PODS, pod).await?;
        self.events
            .record(
                &DAEMONSETS,
                ds,
                Type::Normal,
                "SuccessfulDelete",
                &format!("Deleted pod: {}", owner::name(pod)),
            )
            .await;
        Ok(())
    }
}

/// The node a daemon pod is for: its binding, or the node its affinity pins it to.
fn pinned_node(pod: &Value) -> Option<String> {
    if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Some(n.to_owned());
    }
    pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")?
        .as_array()?
        .iter()
        .flat_map(|t| t["matchFields"].as_array().into_iter().flatten())
        .find(|f| f["key"] == "metadata.name" && f["operator"] == "In")
        .and_then(|f| f["values"][0].as_str())
        .map(str::to_owned)
}

/// The template as a pod for eligibility: its placement rules and the daemon tolerations,
/// without requests or host ports, which decide only whether it fits now.
fn eligibility_probe(ds: &Value) -> Value {
    let mut pod = json!({
        "metadata": {"name": "probe", "namespace": owner::namespace(ds), "uid": "probe"},
        "spec": ds["spec"]["template"]["spec"].clone(),
    });
    if let Some(containers) = pod["spec"]["containers"].as_array_mut() {
        for c in containers {
            if let Some(m) = c.as_object_mut() {
                m.remove("resources");
                m.remove("ports");
            }
        }
    }
    if let Some(m) = pod["spec"].as_object_mut() {
        m.remove("initContainers");
        m.remove("nodeName");
    }
    add_daemon_tolerations(&mut pod["spec"]);
    pod
}

fn should_run(probe: &Value, node: &Value) -> bool {
    // `spec.unschedulable` is tolerated by daemon pods (as its taint is in Kubernetes).
    let mut node = node.clone();
    if let Some(spec) = node["spec"].as_object_mut() {
        spec.remove("unschedulable");
    }
    Snapshot::new([&node], std::iter::empty())
        .schedule(probe)
        .is_ok()
}

fn add_daemon_tolerations(spec: &mut Value) {
    if !spec["tolerations"].is_array() {
        spec["tolerations"] = json!([]);
    }
    if let Some(list) = spec["tolerations"].as_array_mut() {
        for (key, effect) in TOLERATED {
            if !list
                .iter()
                .any(|t| t["key"] == key && t["operator"] == "Exists" && t["effect"] == effect)
            {
                list.push(json!({"key": key, "operator": "Exists", "effect": effect}));
            }
        }
    }
}

/// A pod of `ds`'s template for `node`, pinned there for the scheduler.
fn daemon_pod(ds: &Value, node: &str, hash: &str) -> Value {
    let mut pod = pod_from_template(&DAEMONSETS, ds);
    pod["metadata"]["labels"][REVISION_HASH] = json!(hash);
    pod["metadata"]["labels"]["pod-template-generation"] = json!(owner::generation(ds).to_string());
    let terms = json!([{"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": [node]}
    ]}]);
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] =
        terms;
    add_daemon_tolerations(&mut pod["spec"]);
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "allocatable": {"cpu": "1", "memory": "1Gi", "pods": "110"}
            }
        })
    }

    fn ds(spec: Value) -> Value {
        json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "u1", "generation": 2},
            "spec": {"template": {"metadata": {"labels": {"app": "agent"}}, "spec": spec}}
        })
    }

    #[test]
    fn eligibility_follows_selectors_and_taints_not_resources() {
        let server = node(
            "server",
            json!({"role": "cp"}),
            json!([{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}]),
        );
        let board = node("board", json!({"role": "edge"}), json!([]));
        let plain = eligibility_probe(&ds(json!({"containers": [
            {"name": "c", "image": "x", "resources": {"requests": {"cpu": "64"}}}
        ]})));
        assert!(!should_run(&plain, &server), "untolerated NoExecute taint");
        assert!(
            should_run(&plain, &board),
            "requests do not decide eligibility"
        );
        let tolerant = eligibility_probe(&ds(json!({
            "containers": [{"name": "c", "image": "x"}],
            "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]
        })));
        assert!(should_run(&tolerant, &server));
        let selective = eligibility_probe(&ds(json!({
            "containers": [{"name": "c", "image": "x"}],
            "nodeSelector": {"role": "edge"}
        })));
        assert!(!should_run(&selective, &server));
        assert!(should_run(&selective, &board));
        let mut cordoned = board.clone();
        cordoned["spec"]["unschedulable"] = json!(true);
        assert!(
            should_run(&plain, &cordoned),
            "daemon pods stay on cordoned nodes"
        );
        let mut unreachable = board.clone();
        unreachable["spec"]["taints"] =
            json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
        assert!(should_run(&plain, &unreachable));
    }

    #[test]
    fn daemon_pods_are_pinned_and_carry_their_revision() {
        let pod = daemon_pod(
            &ds(json!({"containers": [{"name": "c", "image": "x"}]})),
            "board",
            "abc",
        );
        assert_eq!(pinned_node(&pod).as_deref(), Some("board"));
        assert_eq!(pod["metadata"]["labels"][REVISION_HASH], "abc");
        assert_eq!(pod["metadata"]["labels"]["pod-template-generation"], "2");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
        let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tolerations.len(), TOLERATED.len());
    }
}
