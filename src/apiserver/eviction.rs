//! The `pods/eviction` subresource: a deletion that honours PodDisruptionBudgets (what
//! `kubectl drain` uses).
//!
//! A ready pod covered by a budget is evicted only while the budget's
//! `status.disruptionsAllowed` (kept by the disruption controller) is above zero; the
//! allowance is taken by a compare-and-swap on the budget before the pod is deleted, so two
//! evictions racing for the last allowed disruption cannot both win. A pod that is not ready
//! costs the budget nothing and is always evicted. Refusals are 429 with Kubernetes' message,
//! which kubectl drain retries.
//!
//! Invariant: a budget's allowance only goes down here; only the disruption controller raises
//! it again, from the pods it sees.

use serde_json::{Value, json};

use super::kinds::workload::selects;
use super::registry::{Registry, now_rfc3339};
use super::resources::{ObjectRef, PODDISRUPTIONBUDGETS};
use super::status::{ApiError, Result};

/// Attempts at taking an allowance under contention.
const RETRIES: usize = 16;

/// `POST …/pods/<name>/eviction`.
pub async fn evict(registry: &Registry, r: &ObjectRef, body: &Value) -> Result<Value> {
    if let Some(kind) = body["kind"].as_str()
        && kind != "Eviction"
    {
        return Err(ApiError::BadRequest(format!(
            "the body of an eviction must be an Eviction, not a {kind}"
        )));
    }
    if let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str)
        && name != r.name
    {
        return Err(ApiError::BadRequest(format!(
            "name in URL does not match name in Eviction object: {name:?} vs {:?}",
            r.name
        )));
    }
    let pod = registry.get(r).await?;
    let namespace = r.namespace.as_deref().unwrap_or("default");
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
    let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
    if ready && !terminating {
        take_allowance(registry, namespace, &pod).await?;
    }
    match registry.delete(r, None).await {
        Ok(_) | Err(ApiError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// Takes one allowed disruption from the budget covering `pod`, or refuses.
async fn take_allowance(registry: &Registry, namespace: &str, pod: &Value) -> Result<()> {
    let labels = &pod["metadata"]["labels"];
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    for _ in 0..RETRIES {
        let (_, budgets) = registry
            .list(&PODDISRUPTIONBUDGETS, Some(namespace))
            .await?;
        let covering: Vec<&Value> = budgets
            .iter()
            .filter(|b| !b["spec"]["selector"].is_null() && selects(&b["spec"]["selector"], labels))
            .collect();
        let budget = match covering.as_slice() {
            [] => return Ok(()),
            [one] => *one,
            _ => {
                return Err(ApiError::Internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
                ));
            }
        };
        let name = budget["metadata"]["name"].as_str().unwrap_or_default();
        let status = &budget["status"];
        let generation = |v: &Value| v.as_i64().unwrap_or(0);
        if generation(&status["observedGeneration"]) < generation(&budget["metadata"]["generation"])
        {
            return Err(too_many(
                name,
                "DisruptionBudget",
                "The disruption budget is still being processed by the server.".into(),
            ));
        }
        let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
        if allowed <= 0 {
            let cause = format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                status["desiredHealthy"].as_i64().unwrap_or(0),
                status["currentHealthy"].as_i64().unwrap_or(0)
            );
            return Err(too_many(name, "DisruptionBudget", cause));
        }
        let mut next = budget.clone();
        next["status"]["disruptionsAllowed"] = json!(allowed - 1);
        next["status"]["disruptedPods"][pod_name] = json!(now_rfc3339());
        let r = ObjectRef {
            resource: &PODDISRUPTIONBUDGETS,
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
        };
        match registry.replace_status(&r, budget, next).await {
            Ok(_) => return Ok(()),
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::TooManyRequests(
        "the pod's disruption budget is changing too fast; try again".into(),
    ))
}

fn too_many(budget: &str, reason: &str, cause: String) -> ApiError {
    ApiError::DisruptionBudget {
        message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        cause: json!({"reason": reason, "message": cause, "field": budget}),
    }
}
