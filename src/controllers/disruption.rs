//! The disruption controller: keeps each PodDisruptionBudget's status — how many of its pods
//! are healthy, how many must be, and so how many may be evicted now.
//!
//! Expected pods are the pods the selector matches (not finished, not being deleted);
//! `minAvailable` and `maxUnavailable` may be numbers or percentages of them (rounded up, as
//! Kubernetes does). Pods recently evicted (`status.disruptedPods`) but not yet gone count as
//! unhealthy, so an allowance the eviction subresource took is not given back before the
//! pod is really gone; entries older than two minutes are dropped.
//!
//! Invariant: `disruptionsAllowed = max(0, currentHealthy - desiredHealthy)`, recomputed from
//! the pods each time, never adjusted in place here.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::owner::{self, key_of, ref_of};
use crate::apiserver::kinds::workload::selects;
use crate::apiserver::registry::now_rfc3339;
use crate::apiserver::resources::{PODDISRUPTIONBUDGETS, PODS, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};

/// How long an eviction is remembered while its pod is still there.
const DISRUPTION_MEMORY: i64 = 120;

pub struct Disruption;

impl Disruption {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 2] = [&PODDISRUPTIONBUDGETS, &PODS];
}

impl Reconciler for Disruption {
    fn name(&self) -> &'static str {
        "disruption"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        let Some(obj) = change.object() else {
            return vec![];
        };
        if change.resource == &PODDISRUPTIONBUDGETS {
            return key_of(obj).into_iter().collect();
        }
        if change.resource != &PODS {
            return vec![];
        }
        cache
            .list_in(&PODDISRUPTIONBUDGETS, owner::namespace(obj))
            .iter()
            .filter(|b| {
                [change.old.as_deref(), change.new.as_deref()]
                    .into_iter()
                    .flatten()
                    .any(|p| selects(&b["spec"]["selector"], owner::labels(p)))
            })
            .filter_map(key_of)
            .collect()
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        cache
            .list(&PODDISRUPTIONBUDGETS)
            .iter()
            .filter_map(key_of)
            .collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let r = ref_of(&PODDISRUPTIONBUDGETS, key);
        let Some(pdb) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        // The budget is read as a value (its status is rewritten from it).
        let pdb = pdb.thaw();
        let pods: Vec<_> = ctx
            .cache
            .list_in(&PODS, owner::namespace(&pdb))
            .into_iter()
            .filter(|p| selects(&pdb["spec"]["selector"], owner::labels(p)))
            .filter(owner::is_active)
            .collect();
        let now = OffsetDateTime::now_utc();
        // Evictions still under way: their pods are unhealthy already.
        let disrupted: BTreeMap<String, Value> = pdb["status"]["disruptedPods"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, at)| {
                let t = owner::timestamp(&json!({"t": at}), "/t");
                (now - t).whole_seconds() < DISRUPTION_MEMORY
                    && pods.iter().any(|p| owner::name(p) == name.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let expected = pods.len() as i64;
        let healthy = pods
            .iter()
            .filter(|p| owner::is_ready(p) && !disrupted.contains_key(owner::name(p)))
            .count() as i64;
        let desired = desired_healthy(&pdb["spec"], expected);
        let allowed = (healthy - desired).max(0);
        let status = json!({
            "observedGeneration": owner::generation(&pdb),
            "expectedPods": expected,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "disruptionsAllowed": allowed,
            "disruptedPods": disrupted,
        });
        let same = [
            "observedGeneration",
            "expectedPods",
            "currentHealthy",
            "desiredHealthy",
            "disruptionsAllowed",
        ]
        .iter()
        .all(|k| pdb["status"][k] == status[k])
            && pdb["status"]["disruptedPods"]
                .as_object()
                .map_or(0, |m| m.len())
                == disrupted.len();
        if !same {
            let mut next = pdb.clone();
            for (k, v) in status.as_object().into_iter().flatten() {
                next["status"][k] = v.clone();
            }
            let (reason, message, ok) = if allowed > 0 {
                ("SufficientPods", "", "True")
            } else {
                (
                    "InsufficientPods",
                    "Not enough pods are healthy to allow a disruption.",
                    "False",
                )
            };
            let old = pdb["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed"))
                .cloned();
            let since = match &old {
                Some(c) if c["status"] == ok => c["lastTransitionTime"].clone(),
                _ => json!(now_rfc3339()),
            };
            next["status"]["conditions"] = json!([{
                "type": "DisruptionAllowed", "status": ok, "reason": reason, "message": message,
                "observedGeneration": owner::generation(&pdb), "lastTransitionTime": since,
            }]);
            // A compare-and-swap: an eviction taking an allowance meanwhile wins, and this
            // pass runs again from what it left.
            match ctx.registry.replace_status(&r, &pdb, next).await {
                Ok(o) => ctx.wrote(&o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Action::Done)
    }
}

/// How many of `expected` pods must stay healthy under `spec`.
fn desired_healthy(spec: &Value, expected: i64) -> i64 {
    if !spec["minAvailable"].is_null() {
        return owner::scaled(&spec["minAvailable"], expected, true, "0");
    }
    if !spec["maxUnavailable"].is_null() {
        return (expected - owner::scaled(&spec["maxUnavailable"], expected, true, "0")).max(0);
    }
    // Neither: Kubernetes' default is minAvailable 1.
    1.min(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_as_numbers_and_percentages() {
        assert_eq!(desired_healthy(&json!({"minAvailable": 2}), 4), 2);
        assert_eq!(desired_healthy(&json!({"minAvailable": "50%"}), 3), 2);
        assert_eq!(desired_healthy(&json!({"maxUnavailable": 1}), 4), 3);
        assert_eq!(desired_healthy(&json!({"maxUnavailable": "30%"}), 4), 2);
        assert_eq!(desired_healthy(&json!({}), 4), 1);
        assert_eq!(desired_healthy(&json!({"maxUnavailable": 5}), 4), 0);
    }
}
