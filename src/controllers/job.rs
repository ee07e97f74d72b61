//! The Job controller: runs a Job's pods until enough succeed, or gives up.
//!
//! Pods are counted by phase: `Succeeded` and `Failed` are what the node reported. Up to
//! `parallelism` pods run at once, never more than the completions still missing; after a
//! failure the next pod waits 10 s, doubling per failure up to 6 min, as Kubernetes backs
//! off. The Job fails when more pods failed than `backoffLimit` allows, or when it ran
//! longer than `activeDeadlineSeconds`; it completes when `completions` pods succeeded (in
//! Indexed mode: one per index, each pod knowing its index from the
//! `batch.kubernetes.io/job-completion-index` annotation and the `JOB_COMPLETION_INDEX`
//! variable). A finished Job's remaining pods are deleted; with `ttlSecondsAfterFinished` the
//! Job itself goes that long after it finished.
//!
//! Invariant: the succeeded and failed counts in the status never go down, even when
//! finished pods are deleted; a Job's `Complete` or `Failed` condition, once set, is final.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::events::{Recorder, Type};
use super::owner::{self, ref_of};
use super::replicaset::{claim, create_pod, pod_from_template};
use crate::apiserver::registry::{Part, Propagation, now_rfc3339};
use crate::apiserver::resources::{JOBS, ObjectRef, PODS, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::{AsJson, Frozen, Json};

pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const BACKOFF_BASE: i64 = 10;
/// Most pods one reconcile creates.
const MAX_CREATES: usize = 256;
const BACKOFF_MAX: i64 = 360;

pub struct Jobs {
    pub events: Recorder,
}

impl Jobs {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 2] = [&JOBS, &PODS];
}

impl Reconciler for Jobs {
    fn name(&self) -> &'static str {
        "job"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        owner::owner_keys(change, cache, &JOBS, &PODS)
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        owner::all_keys(cache, &JOBS)
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let r = ref_of(&JOBS, key);
        let Some(job) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        // The Job is read as a value (its pods are made from it); its pods stay frozen.
        let job = job.thaw();
        let now = OffsetDateTime::now_utc();
        if let Some(finished_at) = finished(&job) {
            return self.after_finish(ctx, &r, &job, finished_at, now).await;
        }
        if owner::is_terminating(&job) {
            return Ok(Action::Done);
        }
        let pods = claim(
            ctx,
            &JOBS,
            &job,
            &ctx.cache.list_in(&PODS, owner::namespace(&job)),
        )
        .await?;
        let phase = |p: &Frozen| p["status"]["phase"].as_str().unwrap_or("").to_owned();
        let active: Vec<&Frozen> = pods.iter().map(|p| &**p).filter(owner::is_active).collect();
        let failed_pods = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let indexed = job["spec"]["completionMode"] == "Indexed";
        let completions = job["spec"]["completions"].as_i64();
        let parallelism = owner::int(&job, "/spec/parallelism", 1).max(0);
        let succeeded_indexes: BTreeSet<i64> = pods
            .iter()
            .filter(|p| phase(p) == "Succeeded")
            .filter_map(index_of)
            .collect();
        let succeeded_pods = if indexed {
            succeeded_indexes.len() as i64
        } else {
            pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64
        };
        let succeeded = succeeded_pods.max(owner::int(&job, "/status/succeeded", 0));
        let failed = failed_pods.max(owner::int(&job, "/status/failed", 0));
        let start = job["status"]["startTime"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let suspended = job["spec"]["suspend"] == true;

        // Why it ends, if it does.
        let backoff_limit = owner::int(&job, "/spec/backoffLimit", 6);
        let deadline = job["spec"]["activeDeadlineSeconds"].as_i64();
        let outcome = if completions.is_some_and(|c| succeeded >= c)
            || (completions.is_none() && succeeded > 0 && active.is_empty())
        {
            Some(("Complete", "", ""))
        } else if failed > backoff_limit {
            Some((
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if let (Some(d), Some(s)) = (deadline, start)
            && (now - s).whole_seconds() >= d
            && !suspended
        {
            Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else {
            None
        };

        let mut next = Action::Done;
        if let Some((kind, reason, message)) = outcome {
            for p in &active {
                owner::delete(ctx, &PODS, p).await?;
            }
            if kind == "Failed" {
                self.events
                    .record(&JOBS, &job, Type::Warning, reason, message)
                    .await;
            } else {
                self.events
                    .record(&JOBS, &job, Type::Normal, "Completed", "Job completed")
                    .await;
            }
            let status = status(
                &[],
                succeeded,
                failed,
                indexed.then_some(&succeeded_indexes),
                start.is_none(),
            );
            let conditions = finish_conditions(kind, reason, message);
            let o = ctx
                .registry
                .modify(&r, Part::Status, |o| {
                    merge(o, &status);
                    o["status"]["conditions"] = conditions.clone();
                    if kind == "Complete" {
                        o["status"]["completionTime"] = json!(now_rfc3339());
                    }
                })
                .await?;
            ctx.wrote(&o);
            return Ok(Action::Done);
        }

        let want = if suspended {
            0
        } else {
            match completions {
                Some(c) => parallelism.min(c - succeeded).max(0),
                None => parallelism,
            }
        };
        let running = active.len() as i64;
        if running > want {
            // Newest first, as Kubernetes picks which to stop.
            let mut extra = active.clone();
            extra.sort_by_key(|p| {
                std::cmp::Reverse(owner::timestamp(p, "/metadata/creationTimestamp"))
            });
            for p in extra.into_iter().take((running - want) as usize) {
                owner::delete(ctx, &PODS, p).await?;
            }
        } else if running < want {
            let wait = backoff_left(&pods, failed, now);
            if wait > 0 {
                next = Action::RequeueAfter(Duration::from_secs(wait as u64));
            } else {
                // At most a batch per reconcile: `parallelism` is the user's number, and the
                // pods made wake this Job again for the rest.
                let missing = ((want - running) as usize).min(MAX_CREATES);
                let indexes = if indexed {
                    let taken: BTreeSet<i64> = active.iter().filter_map(index_of).collect();
                    (0..completions.unwrap_or(0))
                        .filter(|i| !succeeded_indexes.contains(i) && !taken.contains(i))
                        .take(missing)
                        .map(Some)
                        .collect::<Vec<_>>()
                } else {
                    vec![None; missing]
                };
                for index in indexes {
                    let pod = job_pod(&job, index);
                    create_pod(ctx, &self.events, &JOBS, &job, pod).await?;
                }
            }
        }
        if let (Some(d), Some(s)) = (deadline, start) {
            let left = d - (now - s).whole_seconds();
            let at = Duration::from_secs(left.max(1) as u64);
            next = match next {
                Action::RequeueAfter(n) => Action::RequeueAfter(n.min(at)),
                Action::Done => Action::RequeueAfter(at),
            };
        }
        let status = status(
            &active,
            succeeded,
            failed,
            indexed.then_some(&succeeded_indexes),
            start.is_none() && !suspended,
        );
        let changed = status
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| k != "startTime" && job["status"][k] != *v)
            || (status.get("startTime").is_some() && job["status"]["startTime"].is_null());
        if changed {
            let o = ctx
                .registry
                .modify(&r, Part::Status, |o| merge(o, &status))
                .await?;
            ctx.wrote(&o);
        }
        Ok(next)
    }
}

impl Jobs {
    /// A finished Job: its time-to-live, if it has one.
    async fn after_finish(
        &self,
        ctx: &Context,
        r: &ObjectRef,
        job: &Value,
        finished_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Action, ApiError> {
        let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() else {
            return Ok(Action::Done);
        };
        let left = ttl - (now - finished_at).whole_seconds();
        if left > 0 {
            return Ok(Action::RequeueAfter(Duration::from_secs(left as u64)));
        }
        if owner::is_terminating(job) {
            return Ok(Action::Done);
        }
        // Its pods go with it, as the TTL controller deletes in the foreground.
        match ctx
            .registry
            .delete_with(r, None, Propagation::Foreground)
            .await
        {
            Ok(o) => ctx.wrote(&o),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(Action::Done)
    }
}

/// When a Job finished (its Complete or Failed condition became True), if it did.
fn finished(job: &Value) -> Option<OffsetDateTime> {
    job.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .map(|c| owner::timestamp(c, "/lastTransitionTime"))
        .map(|t| {
            if t == OffsetDateTime::UNIX_EPOCH {
                OffsetDateTime::now_utc()
            } else {
                t
            }
        })
}

fn index_of(pod: &impl AsJson) -> Option<i64> {
    pod.json()["metadata"]["annotations"][COMPLETION_INDEX]
        .as_str()
        .and_then(|i: &str| i.parse().ok())
}

/// Seconds the next pod must still wait after the last failure: 10 s doubling per failure
/// in a row, at most 6 min.
fn backoff_left(pods: &[std::sync::Arc<Frozen>], failed: i64, now: OffsetDateTime) -> i64 {
    if failed == 0 {
        return 0;
    }
    let last_failure = pods
        .iter()
        .filter(|p| p["status"]["phase"] == "Failed")
        .map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .and_then(|c| {
                    c.iter()
                        .filter_map(|c| c["state"]["terminated"]["finishedAt"].as_str())
                        .max()
                })
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                .unwrap_or_else(|| owner::timestamp(p, "/metadata/creationTimestamp"))
        })
        .max();
    let Some(last) = last_failure else {
        // The failed pods are gone: nothing to date the backoff from.
        return 0;
    };
    let delay = (BACKOFF_BASE << (failed - 1).min(6)).min(BACKOFF_MAX);
    (delay - (now - last).whole_seconds()).max(0)
}

/// A pod of the Job's template; in Indexed mode, for `index`.
fn job_pod(job: &Value, index: Option<i64>) -> Value {
    let mut pod = pod_from_template(&JOBS, job);
    if let Some(i) = index {
        let name = owner::name(job);
        pod["metadata"]["generateName"] = json!(format!("{name}-{i}-"));
        pod["metadata"]["annotations"][COMPLETION_INDEX] = json!(i.to_string());
        pod["metadata"]["labels"][COMPLETION_INDEX] = json!(i.to_string());
        pod["spec"]["hostname"] = json!(format!("{name}-{i}"));
        for list in ["containers", "initContainers"] {
            if let Some(cs) = pod["spec"][list].as_array_mut() {
                for c in cs {
                    if !c["env"].is_array() {
                        c["env"] = json!([]);
                    }
                    if let Some(env) = c["env"].as_array_mut() {
                        env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": i.to_string()}));
                    }
                }
            }
        }
    }
    pod
}

/// `0-2,4`: Kubernetes' form of a set of indexes.
fn ranges(indexes: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = vec![];
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// The status the pods show: `active` pods running now.
fn status(
    active: &[&Frozen],
    succeeded: i64,
    failed: i64,
    succeeded_indexes: Option<&BTreeSet<i64>>,
    starting: bool,
) -> Value {
    let ready = active.iter().filter(owner::is_ready).count();
    let mut s = json!({
        "active": active.len(),
        "succeeded": succeeded,
        "failed": failed,
        "ready": ready,
    });
    if let Some(indexes) = succeeded_indexes {
        s["completedIndexes"] = json!(ranges(indexes));
    }
    if starting {
        s["startTime"] = json!(now_rfc3339());
    }
    s
}

fn merge(o: &mut Value, status: &Value) {
    for (k, v) in status.as_object().into_iter().flatten() {
        if k == "startTime" && !o["status"]["startTime"].is_null() {
            continue;
        }
        o["status"][k] = v.clone();
    }
}

fn finish_conditions(kind: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    let mut conditions = vec![];
    if kind == "Failed" {
        conditions.push(json!({"type": "FailureTarget", "status": "True", "reason": reason, "message": message, "lastProbeTime": now, "lastTransitionTime": now}));
    } else {
        conditions.push(json!({"type": "SuccessCriteriaMet", "status": "True", "lastProbeTime": now, "lastTransitionTime": now}));
    }
    let mut main =
        json!({"type": kind, "status": "True", "lastProbeTime": now, "lastTransitionTime": now});
    if !reason.is_empty() {
        main["reason"] = json!(reason);
        main["message"] = json!(message);
    }
    conditions.push(main);
    Value::Array(conditions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_sets_print_as_ranges() {
        let set: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(ranges(&set), "0-2,4,6-7");
        assert_eq!(ranges(&BTreeSet::new()), "");
    }

    #[test]
    fn indexed_pods_know_their_index() {
        let job = json!({
            "metadata": {"name": "work", "namespace": "default", "uid": "u"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}
        });
        let pod = job_pod(&job, Some(3));
        assert_eq!(pod["metadata"]["generateName"], "work-3-");
        assert_eq!(pod["metadata"]["annotations"][COMPLETION_INDEX], "3");
        assert_eq!(pod["spec"]["hostname"], "work-3");
        assert_eq!(pod["spec"]["containers"][0]["env"][0]["value"], "3");
        assert_eq!(index_of(&pod), Some(3));
    }

    #[test]
    fn failures_back_off_doubling_from_ten_seconds() {
        let now = OffsetDateTime::parse("2026-01-01T00:01:00Z", &Rfc3339).unwrap();
        let failed_at = |t: &str| {
            std::sync::Arc::new(Frozen::from(
                json!({"status": {"phase": "Failed", "containerStatuses": [
                    {"state": {"terminated": {"finishedAt": t}}}
                ]}}),
            ))
        };
        let pods = vec![failed_at("2026-01-01T00:00:55Z")];
        assert_eq!(backoff_left(&pods, 1, now), 5);
        assert_eq!(backoff_left(&pods, 3, now), 35);
        assert_eq!(backoff_left(&pods, 30, now), 355);
        assert_eq!(backoff_left(&pods, 0, now), 0);
    }
}
