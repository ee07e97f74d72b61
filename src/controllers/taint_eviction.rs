//! Taint-based eviction: pods leave nodes whose NoExecute taints they do not tolerate.
//!
//! A pod that tolerates none of a node's NoExecute taint is deleted at once; one that
//! tolerates it for `tolerationSeconds` is deleted that long after the taint was added
//! (`timeAdded`), as Kubernetes' taint manager does. That is how pods leave a dead node (the
//! node lifecycle controller's `node.kubernetes.io/unreachable` taint, tolerated for 300 s by
//! default) and a server started with `--node-taint CriticalAddonsOnly=true:NoExecute`; their
//! controllers then make replacements, which the scheduler places elsewhere.
//!
//! Invariant: a pod is only ever deleted for a taint its node has now; a taint removed before
//! the deadline (the node came back) evicts nothing.

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use super::events::{Recorder, Type};
use super::owner::{self, key_of, ref_of};
use super::scheduler::tolerates;
use crate::apiserver::resources::{NODES, ObjectRef, PODS, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::{Frozen, Json};

pub struct TaintEviction {
    pub events: Recorder,
}

impl TaintEviction {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 2] = [&NODES, &PODS];
}

impl Reconciler for TaintEviction {
    fn name(&self) -> &'static str {
        "taint-eviction"
    }

    fn keys(&self, change: &Change, _cache: &Cache) -> Vec<String> {
        let Some(obj) = change.new.as_deref() else {
            return vec![];
        };
        if change.resource == &NODES {
            return key_of(obj).into_iter().collect();
        }
        if change.resource == &PODS
            && let Some(node) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
        {
            return vec![format!("/{node}")];
        }
        vec![]
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        cache
            .list(&NODES)
            .iter()
            .filter(|n| !no_execute_taints(n).is_empty())
            .filter_map(key_of)
            .collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let Some(node) = ctx.cache.get(&ref_of(&NODES, key)) else {
            return Ok(Action::Done);
        };
        let taints = no_execute_taints(&node);
        if taints.is_empty() {
            return Ok(Action::Done);
        }
        let name = owner::name(&node);
        let now = OffsetDateTime::now_utc();
        let mut next: Option<Duration> = None;
        for pod in ctx.cache.list(&PODS) {
            if pod["spec"]["nodeName"] != name || owner::is_terminating(&pod) {
                continue;
            }
            match eviction_due(&*pod, &taints, now) {
                Due::Never => {}
                Due::In(d) => next = Some(next.map_or(d, |n| n.min(d))),
                Due::Now(taint) => {
                    let r = ObjectRef {
                        resource: &PODS,
                        namespace: Some(owner::namespace(&pod).to_owned()),
                        name: owner::name(&pod).to_owned(),
                    };
                    tracing::info!(pod = %r, node = name, taint, "evicting a pod that does not tolerate its node's NoExecute taint");
                    self.events
                        .record(
                            &PODS,
                            &pod,
                            Type::Normal,
                            "TaintManagerEviction",
                            &format!(
                                "Marking for deletion Pod {}/{}",
                                r.namespace.as_deref().unwrap_or_default(),
                                r.name
                            ),
                        )
                        .await;
                    match ctx.registry.delete(&r, None).await {
                        Ok(last) => ctx.wrote(&last),
                        Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(match next {
            Some(d) => Action::RequeueAfter(d),
            None => Action::Done,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// Tolerated forever.
    Never,
    /// Tolerated for this long still.
    In(Duration),
    /// Not tolerated (any more); the taint's key.
    Now(String),
}

fn no_execute_taints(node: &Frozen) -> Vec<Value> {
    node.pointer("/spec/taints")
        .and_then(Frozen::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == "NoExecute")
        .map(Frozen::thaw)
        .collect()
}

/// When `pod` must leave a node with `taints` (all NoExecute), seen at `now`.
fn eviction_due<J: Json>(pod: &J, taints: &[Value], now: OffsetDateTime) -> Due {
    let tolerations: Vec<&J> = pod
        .pointer("/spec/tolerations")
        .and_then(J::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut due = Due::Never;
    for taint in taints {
        let matching: Vec<&&J> = tolerations
            .iter()
            .filter(|t| tolerates(**t, taint))
            .collect();
        if matching.is_empty() {
            return Due::Now(taint["key"].as_str().unwrap_or_default().to_owned());
        }
        // The shortest bounded toleration counts; one without a bound tolerates forever.
        if matching.iter().any(|t| t["tolerationSeconds"].is_null()) {
            continue;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t["tolerationSeconds"].as_i64())
            .min()
            .unwrap_or(0)
            .max(0);
        let added = owner::timestamp(taint, "/timeAdded");
        // A taint without `timeAdded` counts from now (it is about to be seen for the first
        // time); the epoch fallback would evict at once.
        let added = if added == OffsetDateTime::UNIX_EPOCH {
            now
        } else {
            added
        };
        // `tolerationSeconds` comes from the pod: one too large to add is as good as forever.
        let Some(until) = added.checked_add(time::Duration::seconds(seconds)) else {
            continue;
        };
        let left = until - now;
        if left <= time::Duration::ZERO {
            return Due::Now(taint["key"].as_str().unwrap_or_default().to_owned());
        }
        let left = Duration::from_millis(left.whole_milliseconds().max(0) as u64);
        due = match due {
            Due::In(d) => Due::In(d.min(left)),
            _ => Due::In(left),
        };
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::format_description::well_known::Rfc3339;

    #[test]
    fn tolerations_decide_when_a_pod_leaves() {
        let now = OffsetDateTime::parse("2026-01-01T00:10:00Z", &Rfc3339).unwrap();
        let critical = json!({"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"});
        let unreachable = json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-01-01T00:08:00Z"});
        let plain = json!({"spec": {"tolerations": []}});
        assert_eq!(
            eviction_due(&plain, std::slice::from_ref(&critical), now),
            Due::Now("CriticalAddonsOnly".into())
        );
        let addon =
            json!({"spec": {"tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]}});
        assert_eq!(
            eviction_due(&addon, std::slice::from_ref(&critical), now),
            Due::Never
        );
        // The default 300 s toleration: added 120 s ago, 180 s left.
        let defaulted = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]}});
        assert_eq!(
            eviction_due(&defaulted, std::slice::from_ref(&unreachable), now),
            Due::In(Duration::from_secs(180))
        );
        let short = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
        ]}});
        assert_eq!(
            eviction_due(&short, std::slice::from_ref(&unreachable), now),
            Due::Now("node.kubernetes.io/unreachable".into())
        );
        // A toleration too long to date is forever, not a crash.
        let huge = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": i64::MAX}
        ]}});
        assert_eq!(
            eviction_due(&huge, std::slice::from_ref(&unreachable), now),
            Due::Never
        );
        // Every taint must be tolerated.
        assert_eq!(
            eviction_due(&addon, &[critical, unreachable], now),
            Due::Now("node.kubernetes.io/unreachable".into())
        );
    }
}
