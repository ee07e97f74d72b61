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
//! RollingUpdate and `maxUnavailable`, pods of an old template are deleted while at most
//! `maxUnavailable` of the DaemonSet's nodes are without an available pod, and the
//! replacements come from the current template; with `maxSurge` instead, a node's new pod
//! starts beside its old one, which goes once the new one is available (`minReadySeconds`
//! honoured), on at most `maxSurge` nodes at a time; with OnDelete, only pods deleted by
//! someone else are replaced.
//!
//! A node that only refuses *new* pods — not ready, unreachable (conditions the scheduler reads
//! as NoSchedule taints), or given a NoSchedule taint — keeps the daemon pod it has
//! (Kubernetes' `shouldContinueRunning`): a board that reboots or loses its link for a while
//! gets no new pod meanwhile, but its pod is not deleted, and it counts again once Ready.
//!
//! Invariant: at most one active pod per node (extras are deleted, newest first) — two, one
//! of the current template and one older, while a surge replaces it — and none on a node
//! that should not run it and should not keep it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
use crate::runtime::frozen::{AsJson, Frozen, Json};

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
            // A node came, went, or changed labels, taints or the conditions the scheduler
            // reads as taints (Ready, pressure): every DaemonSet looks again.
            let relevant = match (change.old.as_deref(), change.new.as_deref()) {
                (Some(a), Some(b)) => {
                    a["metadata"]["labels"] != b["metadata"]["labels"]
                        || a["spec"] != b["spec"]
                        || condition_states(a) != condition_states(b)
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
        // One DaemonSet, read as a value: pods are made from its template.
        let ds = ds.thaw();
        let pods = claim(
            ctx,
            &DAEMONSETS,
            &ds,
            &ctx.cache.list_in(&PODS, owner::namespace(&ds)),
        )
        .await?;
        let nodes = ctx.cache.list(&NODES);
        let hash = super::deployment::template_hash(&ds["spec"]["template"], None);
        let min_ready = owner::int(&ds, "/spec/minReadySeconds", 0);
        let now = OffsetDateTime::now_utc();
        let mut by_node: HashMap<String, Vec<Arc<Frozen>>> = HashMap::new();
        for pod in pods.iter().filter(owner::is_active) {
            by_node
                .entry(pinned_node(pod).unwrap_or_default())
                .or_default()
                .push(pod.clone());
        }
        let probe = eligibility_probe(&ds);
        let eligible: Vec<&Arc<Frozen>> = nodes
            .iter()
            .filter(|n| should_run(&probe, n.as_ref()))
            .collect();
        let desired = eligible.len() as i64;
        let rolling = ds
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            != Some("OnDelete");
        let max_surge = if rolling {
            owner::scaled(
                &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"],
                desired,
                true,
                "0",
            )
        } else {
            0
        };
        let surge = Surge {
            max: max_surge,
            hash: &hash,
            min_ready,
            now,
        };

        // Each eligible node with the pods that stay on it.
        let mut placed: Vec<(String, Vec<Arc<Frozen>>)> = vec![];
        let mut wanted = vec![];
        let mut to_delete: Vec<Arc<Frozen>> = vec![];
        for node in &eligible {
            let name = owner::name(node);
            let mut here = by_node.remove(name).unwrap_or_default();
            if here.is_empty() {
                wanted.push(name.to_owned());
            } else if here.len() > 1 {
                to_delete.extend(surge.extras(&mut here));
            }
            placed.push((name.to_owned(), here));
        }
        // Nodes that refuse new pods but keep the ones they have (eligible nodes' pods have
        // left `by_node` above, so only the others are looked at).
        for node in &nodes {
            let name = owner::name(node);
            if by_node.contains_key(name) && should_continue(&probe, node.as_ref()) {
                by_node.remove(name);
            }
        }
        // Pods of nodes that should not run one, that are gone, or that were never pinned.
        let misscheduled: Vec<Arc<Frozen>> = by_node.into_values().flatten().collect();
        let misscheduled_count = misscheduled.len();
        to_delete.extend(misscheduled);

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

        let on_nodes = |test: &dyn Fn(&Frozen) -> bool| {
            placed
                .iter()
                .filter(|(_, here)| here.iter().any(|p| test(p)))
                .count() as i64
        };
        let available = on_nodes(&|p| owner::is_available(p, min_ready, now));
        if rolling && !terminating {
            if surge.max > 0 {
                for node in surge.nodes_to_surge(&placed) {
                    let pod = daemon_pod(&ds, node, &hash);
                    create_pod(ctx, &self.events, &DAEMONSETS, &ds, pod).await?;
                }
            } else {
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
                let mut old: Vec<&Arc<Frozen>> = placed
                    .iter()
                    .flat_map(|(_, here)| here)
                    .filter(|p| !surge.is_current(p))
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
        }
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": on_nodes(&|_| true),
            "numberMisscheduled": misscheduled_count,
            "numberReady": on_nodes(&owner::is_ready::<Frozen>),
            "updatedNumberScheduled": on_nodes(&|p| surge.is_current(p)),
            "numberAvailable": available,
            "numberUnavailable": (desired - available).max(0),
            "observedGeneration": owner::generation(&ds),
        });
        owner::write_status(ctx, &DAEMONSETS, &ds, &status).await?;
        // A pod Ready but not yet for minReadySeconds becomes available with no change to
        // wake this key: look again then.
        Ok(placed
            .iter()
            .flat_map(|(_, here)| here)
            .filter_map(|p| until_available(p, min_ready, now))
            .min()
            .map_or(Action::Done, Action::RequeueAfter))
    }
}

/// A surging rolling update (`maxSurge` > 0), as Kubernetes' DaemonSet controller runs one:
/// a node's new pod starts beside its old one, and the old one goes once the new one is
/// available.
struct Surge<'a> {
    /// Nodes that may have two pods at once (`maxSurge` of the desired nodes, rounded up).
    max: i64,
    hash: &'a str,
    min_ready: i64,
    now: OffsetDateTime,
}

impl Surge<'_> {
    fn is_current(&self, pod: &Frozen) -> bool {
        owner::labels(pod)[REVISION_HASH] == self.hash
    }

    /// Which of a node's several pods go. Without a surge, all but the oldest. With one, the
    /// oldest of the current template and the oldest of an older one may both stay while the
    /// old one is ready and the new one not yet available; otherwise the old one goes too.
    fn extras(&self, here: &mut Vec<Arc<Frozen>>) -> Vec<Arc<Frozen>> {
        here.sort_by_key(|p| owner::timestamp(p, "/metadata/creationTimestamp"));
        if self.max == 0 {
            return here.drain(1..).collect();
        }
        let (mut new, mut old, mut extra) = (None, None, vec![]);
        for p in here.drain(..) {
            let slot = if self.is_current(&p) {
                &mut new
            } else {
                &mut old
            };
            match slot {
                None => *slot = Some(p),
                Some(_) => extra.push(p),
            }
        }
        if let (Some(n), Some(o)) = (&new, &old)
            && (!owner::is_ready(o) || owner::is_available(n, self.min_ready, self.now))
        {
            extra.extend(old.take());
        }
        here.extend(new.into_iter().chain(old));
        extra
    }

    /// The nodes that get a pod of the current template beside their old one now: every node
    /// whose old pod is unavailable anyway, and as many others (in name order) as keep the
    /// nodes with a new pod not yet available within `max`.
    fn nodes_to_surge<'p>(&self, placed: &'p [(String, Vec<Arc<Frozen>>)]) -> Vec<&'p str> {
        let available = |p: &Frozen| owner::is_available(p, self.min_ready, self.now);
        let (mut surging, mut replace, mut candidates) = (0, vec![], vec![]);
        for (node, here) in placed {
            let new = here.iter().find(|p| self.is_current(p));
            let old = here.iter().find(|p| !self.is_current(p));
            match (new, old) {
                (_, None) => {}
                (None, Some(o)) if !available(o) => replace.push(node.as_str()),
                (None, Some(_)) => candidates.push(node.as_str()),
                (Some(n), Some(_)) => surging += i64::from(!available(n)),
            }
        }
        candidates.sort_unstable();
        let room = usize::try_from((self.max - surging).max(0)).unwrap_or(0);
        replace.extend(candidates.into_iter().take(room));
        replace
    }
}

/// How long until a Ready pod has been Ready for `min_ready` seconds, if it is not yet.
fn until_available(pod: &Frozen, min_ready: i64, now: OffsetDateTime) -> Option<Duration> {
    if min_ready <= 0 || !owner::is_ready(pod) || owner::is_available(pod, min_ready, now) {
        return None;
    }
    let since = pod
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .get("lastTransitionTime")?
        .as_str()
        .and_then(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })?;
    let left = min_ready
        .saturating_sub((now - since).whole_seconds())
        .max(1);
    Some(Duration::from_secs(u64::try_from(left).unwrap_or(1)))
}

impl DaemonSets {
    async fn delete(&self, ctx: &Context, ds: &Value, pod: &Frozen) -> Result<(), ApiError> {
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
fn pinned_node(pod: &impl AsJson) -> Option<String> {
    let pod = pod.json();
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

fn should_run<N: Json + AsJson>(probe: &Value, node: &N) -> bool {
    const NO_PODS: [&Value; 0] = [];
    // `spec.unschedulable` is tolerated by daemon pods (as its taint is in Kubernetes).
    if node["spec"]["unschedulable"] == true {
        let mut node = node.thaw();
        if let Some(spec) = node["spec"].as_object_mut() {
            spec.remove("unschedulable");
        }
        return Snapshot::new([&node], NO_PODS).schedule(probe).is_ok();
    }
    Snapshot::new([node], NO_PODS).schedule(probe).is_ok()
}

/// Whether a node keeps a daemon pod it already has: only NoExecute taints and what the pod
/// must match (selector, affinity) count; readiness and NoSchedule taints do not.
fn should_continue<N: Json + AsJson>(probe: &Value, node: &N) -> bool {
    const NO_PODS: [&Value; 0] = [];
    let mut node = node.thaw();
    if let Some(spec) = node["spec"].as_object_mut() {
        spec.remove("unschedulable");
        if let Some(taints) = spec.get_mut("taints").and_then(Value::as_array_mut) {
            taints.retain(|t| t["effect"] == "NoExecute");
        }
    }
    node["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
    Snapshot::new([&node], NO_PODS).schedule(probe).is_ok()
}

/// The node conditions eligibility depends on, for noticing a change.
fn condition_states<N: Json>(node: &N) -> Vec<(String, String)> {
    const KINDS: [&str; 5] = [
        "Ready",
        "MemoryPressure",
        "DiskPressure",
        "PIDPressure",
        "NetworkUnavailable",
    ];
    let Some(conditions) = node["status"]["conditions"].as_array() else {
        return Vec::new();
    };
    conditions
        .iter()
        .filter_map(|c| {
            let kind = c["type"].as_str()?;
            KINDS.contains(&kind).then(|| {
                (
                    kind.to_owned(),
                    c["status"].as_str().unwrap_or("").to_owned(),
                )
            })
        })
        .collect()
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
    fn a_node_that_is_not_ready_keeps_its_daemon_pod_but_gets_no_new_one() {
        let plain = eligibility_probe(&ds(json!({"containers": [{"name": "c", "image": "x"}]})));
        let mut rebooting = node("board", json!({}), json!([]));
        rebooting["status"]["conditions"] = json!([{"type": "Ready", "status": "Unknown"}]);
        assert!(
            !should_run(&plain, &rebooting),
            "no new pod while unreachable"
        );
        assert!(should_continue(&plain, &rebooting), "the pod it has stays");
        let mut tainted = node("board", json!({}), json!([]));
        tainted["spec"]["taints"] = json!([{"key": "maintenance", "effect": "NoSchedule"}]);
        assert!(!should_run(&plain, &tainted) && should_continue(&plain, &tainted));
        tainted["spec"]["taints"] = json!([{"key": "maintenance", "effect": "NoExecute"}]);
        assert!(
            !should_continue(&plain, &tainted),
            "an untolerated NoExecute taint evicts"
        );
        let ready = node("board", json!({}), json!([]));
        assert_ne!(condition_states(&ready), condition_states(&rebooting));
    }

    fn pod(name: &str, hash: &str, created: &str, ready: Option<&str>) -> Arc<Frozen> {
        let mut p = json!({"metadata": {"name": name, "creationTimestamp": created,
                                        "labels": {REVISION_HASH: hash}}});
        if let Some(since) = ready {
            p["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": since}]);
        }
        Arc::new(Frozen::from(p))
    }

    #[test]
    fn a_surge_keeps_the_old_pod_until_the_new_one_is_available() {
        let now = time::macros::datetime!(2026-12-06 12:00:10 UTC);
        let surge = Surge {
            max: 1,
            hash: "new",
            min_ready: 5,
            now,
        };
        let old = pod(
            "old",
            "old",
            "2026-12-06T11:00:00Z",
            Some("2026-12-06T11:00:01Z"),
        );
        // New and Ready for 3 s of 5: both stay.
        let mut here = vec![
            old.clone(),
            pod(
                "n",
                "new",
                "2026-12-06T12:00:00Z",
                Some("2026-12-06T12:00:07Z"),
            ),
        ];
        assert!(surge.extras(&mut here).is_empty());
        assert_eq!(
            until_available(&here[0], 5, now).or(until_available(&here[1], 5, now)),
            Some(Duration::from_secs(2))
        );
        // Ready for 5 s: the old one goes.
        let mut here = vec![
            old.clone(),
            pod(
                "n",
                "new",
                "2026-12-06T12:00:00Z",
                Some("2026-12-06T12:00:05Z"),
            ),
        ];
        let gone = surge.extras(&mut here);
        assert_eq!(owner::name(&gone[0]), "old");
        // An old pod not ready goes at once.
        let mut here = vec![
            pod("o", "old", "2026-12-06T11:00:00Z", None),
            pod("n", "new", "2026-12-06T12:00:00Z", None),
        ];
        assert_eq!(owner::name(&surge.extras(&mut here)[0]), "o");

        // Three nodes with available old pods: one surges at a time; a node whose old pod
        // is unavailable is replaced besides.
        let placed = vec![
            ("c".to_owned(), vec![old.clone()]),
            ("a".to_owned(), vec![old.clone()]),
            (
                "b".to_owned(),
                vec![pod("o", "old", "2026-12-06T11:00:00Z", None)],
            ),
        ];
        assert_eq!(surge.nodes_to_surge(&placed), ["b", "a"]);
        let placed = vec![
            (
                "a".to_owned(),
                vec![old.clone(), pod("n", "new", "2026-12-06T12:00:00Z", None)],
            ),
            ("c".to_owned(), vec![old.clone()]),
        ];
        assert!(
            surge.nodes_to_surge(&placed).is_empty(),
            "a is still surging"
        );
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
