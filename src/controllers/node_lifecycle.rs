//! Node lifecycle: marks nodes whose heartbeats stopped as unreachable, and back.
//!
//! Runs on every server but acts only while this server holds the controllers lease. Every
//! [`MONITOR_PERIOD`] it reads all heartbeat ages (one statement, aged by the database's
//! clock) and the nodes. A node silent for longer than the grace period gets its conditions
//! set to `Unknown` and the `node.kubernetes.io/unreachable` taints with the NoSchedule and
//! NoExecute effects, as Kubernetes's node lifecycle controller does; when its heartbeats
//! resume, the taints go and it is Ready again. Level-triggered and idempotent: it looks at
//! the current objects, never at events, so a new leader simply carries on.
//! After a failed pass (datastore out of reach, so heartbeats could not be written either) it
//! marks nothing unreachable for one grace period, so a database outage does not flap every
//! node NotReady. Every [`REGISTRATION_SWEEP`] it also forgets agent registrations (node
//! password rows) whose node never appeared, which a holder of the agent token could otherwise
//! pile up one made-up name at a time.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::lease::Role;
use crate::agent::registration::healthy_conditions;
use crate::apiserver::registry::{Part, Registry, now_rfc3339};
use crate::apiserver::resources::{NODES, ObjectRef};
use crate::apiserver::status::ApiError;

pub const MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// How often orphaned registrations are looked for.
pub const REGISTRATION_SWEEP: Duration = Duration::from_secs(600);
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

pub struct NodeLifecycle {
    pub registry: Registry,
    pub role: watch::Receiver<Role>,
    /// `--node-monitor-grace-period`.
    pub grace: Duration,
}

impl NodeLifecycle {
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut leader_since: Option<Instant> = None;
        // After the datastore was out of reach, heartbeats could not be written either: every
        // node looks silent until the servers wrote them again. Give them one grace period.
        let mut failed_at: Option<Instant> = None;
        let mut swept_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(MONITOR_PERIOD) => {}
            }
            if !matches!(*self.role.borrow(), Role::Leader { .. }) {
                leader_since = None;
                continue;
            }
            let since = *leader_since.get_or_insert_with(Instant::now);
            if swept_at.is_none_or(|t| t.elapsed() >= REGISTRATION_SWEEP) {
                swept_at = Some(Instant::now());
                match self.sweep_registrations().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        forgotten = n,
                        "forgot registrations of nodes that never appeared"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot sweep node registrations"),
                }
            }
            let trusted = failed_at.is_none_or(|t| t.elapsed() > self.grace);
            match self.reconcile(since, trusted).await {
                Ok(()) => {
                    if trusted {
                        failed_at = None;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node lifecycle pass failed");
                    failed_at = Some(Instant::now());
                }
            }
        }
    }

    async fn sweep_registrations(&self) -> Result<usize, ApiError> {
        let (_, nodes) = self.registry.list(&NODES, None).await?;
        let names: std::collections::HashSet<&str> = nodes
            .iter()
            .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str))
            .collect();
        crate::bootstrap::join::forget_orphans(self.registry.store(), |n| names.contains(n)).await
    }

    /// `trusted`: heartbeat ages can be believed (no recent datastore failure); otherwise
    /// nodes are only marked ready again, never unreachable.
    async fn reconcile(&self, leader_since: Instant, trusted: bool) -> Result<(), ApiError> {
        let grace_ms = self.grace.as_millis() as i64;
        let ages: HashMap<String, i64> = self
            .registry
            .store()
            .heartbeat_ages()
            .await?
            .into_iter()
            .collect();
        let (_, nodes) = self.registry.list(&NODES, None).await?;
        for node in nodes {
            let Some(name) = node.pointer("/metadata/name").and_then(Value::as_str) else {
                continue;
            };
            let silent = trusted
                && match ages.get(name) {
                    Some(age) => *age > grace_ms,
                    // Never heard from since the table was made: give it one grace period from now.
                    None => leader_since.elapsed() > self.grace,
                };
            let r = ObjectRef::cluster(&NODES, name);
            match (silent, is_unreachable(&node)) {
                (true, false) => {
                    tracing::info!(
                        node = name,
                        "node stopped sending heartbeats; marking it unreachable"
                    );
                    self.registry.modify(&r, Part::Status, mark_unknown).await?;
                    self.registry
                        .modify(&r, Part::Main, add_unreachable_taints)
                        .await?;
                }
                (false, true) => {
                    tracing::info!(
                        node = name,
                        "node is sending heartbeats again; marking it ready"
                    );
                    self.registry
                        .modify(&r, Part::Main, remove_unreachable_taints)
                        .await?;
                    self.registry
                        .modify(&r, Part::Status, |n| {
                            n["status"]["conditions"] =
                                healthy_conditions(&n["status"]["conditions"]);
                        })
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn is_unreachable(node: &Value) -> bool {
    let ready_unknown = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "Unknown")
        });
    let tainted = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
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
        node["status"]["conditions"] = healthy_conditions(&node["status"]["conditions"]);
        assert!(!is_unreachable(&node));
        assert_eq!(
            node["spec"]["taints"].as_array().unwrap().len(),
            1,
            "the user's taint stays"
        );
    }
}
