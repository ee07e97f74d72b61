//! Node lifecycle: marks nodes whose heartbeats stopped as unreachable, and back; taints
//! nodes by their pressure conditions.
//!
//! Runs only while this server holds the controllers lease. At least every [`MONITOR_PERIOD`],
//! and as soon as the next node would pass its grace period, it reads all heartbeat ages (one
//! statement, aged by the database's clock); the nodes come from the controllers' cache. A node silent for longer than the grace period gets its conditions
//! set to `Unknown` and the `node.kubernetes.io/unreachable` taints with the NoSchedule and
//! NoExecute effects, as Kubernetes's node lifecycle controller does; when its heartbeats
//! resume, the taints go and it is Ready again. Level-triggered and idempotent: it looks at
//! the current objects, never at events, so a new leader simply carries on.
//! Each pass also gives a node the `node.kubernetes.io/{memory,disk,pid}-pressure` NoSchedule
//! taint while its MemoryPressure, DiskPressure or PIDPressure condition is True, and takes it
//! away when the condition is not (Kubernetes' TaintNodesByCondition, which lives in this
//! controller, not in the kubelet: a node reports conditions, and NodeRestriction keeps it
//! from editing its own taints). The scheduler reads these conditions too, so a pod is kept
//! off a node under pressure even before this pass tainted it.
//! After a failed pass (datastore out of reach, so heartbeats could not be written either) it
//! marks nothing unreachable for one grace period, so a database outage does not flap every
//! node NotReady. Every [`REGISTRATION_SWEEP`] it also forgets agent registrations (node
//! password rows) whose node never appeared, which a holder of the agent token could otherwise
//! pile up one made-up name at a time.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::agent::registration::conditions;
use crate::apiserver::registry::{Part, now_rfc3339};
use crate::apiserver::resources::{NODES, ObjectRef};
use crate::apiserver::status::ApiError;
use crate::runtime::controller::Context;
use crate::runtime::frozen::{Frozen, Json};

pub const MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// Added to a node's due time so its age has surely passed the grace period when looked at.
const DUE_SLACK: Duration = Duration::from_millis(100);
/// Shortest pause between passes, however many nodes fall due.
const MIN_PAUSE: Duration = Duration::from_millis(500);
/// How often orphaned registrations are looked for.
pub const REGISTRATION_SWEEP: Duration = Duration::from_secs(600);
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Each pressure condition and the NoSchedule taint it puts on its node while True.
pub const PRESSURE_TAINTS: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];

pub struct NodeLifecycle {
    /// `--node-monitor-grace-period`.
    pub grace: Duration,
}

impl NodeLifecycle {
    /// Runs while this server leads the controllers (the caller aborts it when that ends).
    pub async fn run(self, ctx: Arc<Context>) {
        let leader_since = Instant::now();
        // After the datastore was out of reach, heartbeats could not be written either: every
        // node looks silent until the servers wrote them again. Give them one grace period.
        let mut failed_at: Option<Instant> = None;
        let mut swept_at: Option<Instant> = None;
        let mut pause = MONITOR_PERIOD;
        loop {
            tokio::time::sleep(pause).await;
            if swept_at.is_none_or(|t| t.elapsed() >= REGISTRATION_SWEEP) {
                swept_at = Some(Instant::now());
                match self.sweep_registrations(&ctx).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        forgotten = n,
                        "forgot registrations of nodes that never appeared"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot sweep node registrations"),
                }
                match crate::tunnel::streams::sweep_dials(ctx.registry.store()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        swept = n,
                        "removed stream requests left by servers that stopped while waiting"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot sweep stale stream requests"),
                }
            }
            let trusted = failed_at.is_none_or(|t| t.elapsed() > self.grace);
            pause = match self.reconcile(&ctx, leader_since, trusted).await {
                Ok(next_due) => {
                    if trusted {
                        failed_at = None;
                    }
                    // Look again when the next node would pass its grace period, so a death
                    // is seen at grace, not up to a whole period later.
                    next_due.map_or(MONITOR_PERIOD, |d| {
                        (d + DUE_SLACK).clamp(MIN_PAUSE, MONITOR_PERIOD)
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node lifecycle pass failed");
                    failed_at = Some(Instant::now());
                    MONITOR_PERIOD
                }
            };
        }
    }

    async fn sweep_registrations(&self, ctx: &Context) -> Result<usize, ApiError> {
        let nodes = ctx.cache.list(&NODES);
        let names: std::collections::HashSet<&str> = nodes
            .iter()
            .filter_map(|n| n.pointer("/metadata/name").and_then(Frozen::as_str))
            .collect();
        Ok(
            crate::bootstrap::join::forget_orphans(ctx.registry.store(), |n| names.contains(n))
                .await?,
        )
    }

    /// `trusted`: heartbeat ages can be believed (no recent datastore failure); otherwise
    /// nodes are only marked ready again, never unreachable. Returns how long until the next
    /// node that is heard from now would pass its grace period.
    async fn reconcile(
        &self,
        ctx: &Context,
        leader_since: Instant,
        trusted: bool,
    ) -> Result<Option<Duration>, ApiError> {
        let grace_ms = self.grace.as_millis() as i64;
        let ages: HashMap<String, i64> = ctx
            .registry
            .store()
            .heartbeat_ages()
            .await?
            .into_iter()
            .collect();
        let mut next_due: Option<Duration> = None;
        for node in ctx.cache.list(&NODES) {
            let Some(name) = node.pointer("/metadata/name").and_then(Frozen::as_str) else {
                continue;
            };
            let silent = trusted
                && match ages.get(name) {
                    Some(age) => *age > grace_ms,
                    // Never heard from since the table was made: give it one grace period from now.
                    None => leader_since.elapsed() > self.grace,
                };
            if let Some(age) = ages.get(name).filter(|a| **a <= grace_ms) {
                let due = Duration::from_millis((grace_ms - age) as u64);
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
            }
            let r = ObjectRef::cluster(&NODES, name);
            match (silent, is_unreachable(&*node)) {
                (true, false) => {
                    tracing::info!(
                        node = name,
                        "node stopped sending heartbeats; marking it unreachable"
                    );
                    ctx.registry.modify(&r, Part::Status, mark_unknown).await?;
                    ctx.registry
                        .modify(&r, Part::Main, add_unreachable_taints)
                        .await?;
                }
                (false, true) => {
                    tracing::info!(
                        node = name,
                        "node is sending heartbeats again; marking it ready"
                    );
                    ctx.registry
                        .modify(&r, Part::Main, remove_unreachable_taints)
                        .await?;
                    ctx.registry
                        .modify(&r, Part::Status, |n| {
                            n["status"]["conditions"] =
                                conditions(&n["status"]["conditions"], None);
                        })
                        .await?;
                }
                _ => {}
            }
            if pressure_taints_stale(&*node) {
                ctx.registry
                    .modify(&r, Part::Main, set_pressure_taints)
                    .await?;
            }
        }
        Ok(next_due)
    }
}

fn is_unreachable<J: Json>(node: &J) -> bool {
    let ready_unknown = node
        .pointer("/status/conditions")
        .and_then(J::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "Unknown")
        });
    let tainted = node
        .pointer("/spec/taints")
        .and_then(J::as_array)
        .is_some_and(|t| t.iter().any(|t| t["key"] == UNREACHABLE_TAINT));
    ready_unknown || tainted
}

fn mark_unknown(node: &mut Value) {
    let now = now_rfc3339();
    if let Some(conds) = node
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for c in conds {
            if c["status"] != "Unknown" {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(now);
            }
        }
    }
}

fn add_unreachable_taints(node: &mut Value) {
    if !node["spec"]["taints"].is_array() {
        node["spec"]["taints"] = json!([]);
    }
    if let Some(taints) = node["spec"]["taints"].as_array_mut() {
        for effect in ["NoSchedule", "NoExecute"] {
            if !taints
                .iter()
                .any(|t| t["key"] == UNREACHABLE_TAINT && t["effect"] == effect)
            {
                let mut t = json!({"key": UNREACHABLE_TAINT, "effect": effect});
                if effect == "NoExecute" {
                    t["timeAdded"] = json!(now_rfc3339());
                }
                taints.push(t);
            }
        }
    }
}

fn remove_unreachable_taints(node: &mut Value) {
    if let Some(taints) = node["spec"]["taints"].as_array_mut() {
        taints.retain(|t| t["key"] != UNREACHABLE_TAINT);
    }
}

/// The pressure taints the node's conditions call for (`true`: the taint should be there).
fn wanted_pressure_taints<J: Json>(node: &J) -> [(&'static str, bool); 3] {
    let conditions = node
        .pointer("/status/conditions")
        .and_then(J::as_array)
        .unwrap_or(&[]);
    PRESSURE_TAINTS.map(|(kind, key)| {
        let on = conditions
            .iter()
            .any(|c| c["type"] == kind && c["status"] == "True");
        (key, on)
    })
}

fn has_taint<J: Json>(node: &J, key: &str) -> bool {
    node.pointer("/spec/taints")
        .and_then(J::as_array)
        .is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == key && t["effect"] == "NoSchedule")
        })
}

fn pressure_taints_stale<J: Json>(node: &J) -> bool {
    wanted_pressure_taints(node)
        .iter()
        .any(|(key, on)| has_taint(node, key) != *on)
}

fn set_pressure_taints(node: &mut Value) {
    for (key, on) in wanted_pressure_taints(node) {
        if on && !has_taint(node, key) {
            if !node["spec"]["taints"].is_array() {
                node["spec"]["taints"] = json!([]);
            }
            if let Some(taints) = node["spec"]["taints"].as_array_mut() {
                taints.push(json!({"key": key, "effect": "NoSchedule"}));
            }
        } else if !on && let Some(taints) = node["spec"]["taints"].as_array_mut() {
            taints.retain(|t| !(t["key"] == key && t["effect"] == "NoSchedule"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_marks_come_and_go_idempotently() {
        let mut node = json!({
            "spec": {"taints": [{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        assert!(!is_unreachable(&node));
        mark_unknown(&mut node);
        add_unreachable_taints(&mut node);
        add_unreachable_taints(&mut node);
        assert!(is_unreachable(&node));
        assert_eq!(node["status"]["conditions"][0]["status"], "Unknown");
        let taints = node["spec"]["taints"].as_array().unwrap();
        assert_eq!(taints.len(), 3);
        assert!(taints.iter().any(|t| t["effect"] == "NoExecute"
            && t["key"] == UNREACHABLE_TAINT
            && t["timeAdded"].is_string()));
        remove_unreachable_taints(&mut node);
        node["status"]["conditions"] = conditions(&node["status"]["conditions"], None);
        assert!(!is_unreachable(&node));
        assert_eq!(
            node["spec"]["taints"].as_array().unwrap().len(),
            1,
            "the user's taint stays"
        );
    }

    #[test]
    fn pressure_conditions_taint_their_node_while_true() {
        let mut node = json!({
            "spec": {"taints": [{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "MemoryPressure", "status": "True"},
                {"type": "DiskPressure", "status": "False"},
            ]}
        });
        assert!(pressure_taints_stale(&node));
        set_pressure_taints(&mut node);
        set_pressure_taints(&mut node);
        assert!(!pressure_taints_stale(&node));
        let keys = |n: &Value| -> Vec<String> {
            n["spec"]["taints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["key"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            keys(&node),
            ["CriticalAddonsOnly", "node.kubernetes.io/memory-pressure"]
        );
        node["status"]["conditions"][1]["status"] = json!("False");
        assert!(pressure_taints_stale(&node));
        set_pressure_taints(&mut node);
        assert_eq!(keys(&node), ["CriticalAddonsOnly"]);
        // A node without conditions or taints needs nothing.
        assert!(!pressure_taints_stale(&json!({"spec": {}})));
    }
}
