//! The CronJob controller: starts a Job from a CronJob's template at each scheduled time, as
//! Kubernetes' CronJob controller (v2) does.
//!
//! Each reconcile looks at one CronJob and the Jobs it controls: it brings `status.active` to
//! the unfinished ones, notes the finished ones (`SawCompletedJob`, `lastSuccessfulTime`),
//! deletes the oldest finished Jobs beyond the history limits, and, unless the CronJob is
//! suspended, starts the Job of the latest scheduled time missed since `lastScheduleTime` (or
//! creation), as `startingDeadlineSeconds` and `concurrencyPolicy` allow. It then asks to be
//! woken at the next scheduled time; a change to the CronJob or to one of its Jobs wakes it
//! sooner. Parsing and time arithmetic live in [`crate::api::cron`]; what a Job counts as finished
//! is the Job controller's `Complete` or `Failed` condition.
//!
//! Invariants: a scheduled time has one Job name, `<cronjob>-<Unix minutes>`, so a retry after
//! a crash between creating the Job and writing the status finds that Job (AlreadyExists)
//! instead of starting a second; only Jobs whose controller reference carries the CronJob's
//! uid are touched; `lastScheduleTime` only moves forward, so a time is started at most once.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::events::{Recorder, Type};
use super::owner::{self, controller_of, controller_ref, is_controlled_by, key_of, ref_of};
use crate::api::cron::{Schedule, Zone, Zones};
use crate::apiserver::registry::Part;
use crate::apiserver::resources::{CRONJOBS, JOBS, ObjectRef, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};

/// The annotation a CronJob's Job carries with its scheduled time (RFC 3339, in the
/// CronJob's zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// How long after a scheduled time the controller looks, so the clock has surely passed it.
const AFTER_SCHEDULE: Duration = Duration::from_millis(100);

pub struct CronJobs {
    pub events: Recorder,
    /// Where `spec.timeZone` names are looked up.
    pub zones: Zones,
}

impl CronJobs {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 2] = [&CRONJOBS, &JOBS];
}

/// `spec.concurrencyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Concurrency {
    /// Start each time's Job whatever still runs.
    Allow,
    /// Skip a time while a Job still runs.
    Forbid,
    /// Delete the running Jobs, then start the new one.
    Replace,
}

/// What to do about the schedule now; decided by [`decide`] from the status alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// No scheduled time came since the last Job (or creation): wait for the next.
    Wait,
    /// The latest time is more than `startingDeadlineSeconds` ago: skip it (`MissSchedule`).
    TooLate(OffsetDateTime),
    /// The latest time's Job is running already.
    Started,
    /// `Forbid`, and a Job still runs: skip this time (`JobAlreadyActive`).
    Forbidden(OffsetDateTime),
    /// Start the Job of `at`, first deleting the running ones if `replace`; `too_many` times
    /// were missed to start each (`TooManyMissedTimes`).
    Start {
        at: OffsetDateTime,
        replace: bool,
        too_many: bool,
    },
}

/// What [`decide`] needs to know about one CronJob.
struct Due<'a> {
    /// The CronJob's name.
    name: &'a str,
    schedule: &'a Schedule,
    zone: &'a Zone,
    /// `lastScheduleTime`, or the creation time before the first Job.
    since: OffsetDateTime,
    /// `startingDeadlineSeconds`.
    deadline: Option<i64>,
    policy: Concurrency,
    /// Names of the CronJob's unfinished Jobs.
    active: Vec<String>,
}

/// The status fields this controller owns, as the next write should leave them.
struct Status {
    /// `status.active`.
    active: Vec<Value>,
    /// `status.lastScheduleTime`: only ever moves forward.
    last_schedule: Option<String>,
    /// `status.lastSuccessfulTime`.
    last_successful: Option<String>,
}

/// What the Jobs a CronJob controls say, compared with its status.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    /// `status.active`: a reference to each unfinished Job, by name.
    active: Vec<Value>,
    /// Jobs listed active before that finished since: (name, condition).
    completed: Vec<(String, &'static str)>,
    /// Jobs listed active before that are gone.
    missing: Vec<String>,
    /// The latest completion of a successful Job, if later than the status says.
    last_successful: Option<String>,
}

// === impl CronJobs ===

impl Reconciler for CronJobs {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn keys(&self, change: &Change, _cache: &Cache) -> Vec<String> {
        let Some(obj) = change.object() else {
            return vec![];
        };
        if change.resource == &CRONJOBS {
            return key_of(obj).into_iter().collect();
        }
        if change.resource != &JOBS {
            return vec![];
        }
        // A Job wakes the CronJob that controls it (CronJobs adopt nothing).
        let mut keys: Vec<String> = [change.old.as_deref(), change.new.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|j| match controller_of(j) {
                Some(("CronJob", name, _)) => Some(format!("{}/{name}", owner::namespace(j))),
                _ => None,
            })
            .collect();
        keys.dedup();
        keys
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        cache.list(&CRONJOBS).iter().filter_map(key_of).collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let r = ref_of(&CRONJOBS, key);
        let Some(cj) = ctx.cache.get(&r) else {
            return Ok(Action::Done);
        };
        // A CronJob and its few Jobs (history limits keep them few) are read as values.
        let cj = cj.thaw();
        let now = OffsetDateTime::now_utc();
        let jobs: Vec<Arc<Value>> = ctx
            .cache
            .list_in(&JOBS, owner::namespace(&cj))
            .into_iter()
            .filter(|j| is_controlled_by(j, &cj))
            .map(|j| Arc::new(j.thaw()))
            .collect();
        let seen = observe(&cj, &jobs);
        for (name, condition) in &seen.completed {
            self.event(
                &cj,
                Type::Normal,
                "SawCompletedJob",
                &format!("Saw completed job: {name}, condition: {condition}"),
            )
            .await;
        }
        for name in &seen.missing {
            self.event(
                &cj,
                Type::Normal,
                "MissingJob",
                &format!("Active job went missing: {name}"),
            )
            .await;
        }
        let mut status = Status {
            active: seen.active,
            last_schedule: cj
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
                .map(str::to_owned),
            last_successful: seen.last_successful.or_else(|| {
                cj.pointer("/status/lastSuccessfulTime")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }),
        };
        if owner::is_terminating(&cj) {
            return self.write_status(ctx, &r, &cj, &status, None).await;
        }
        for job in beyond_history(&cj, &jobs) {
            self.delete_job(ctx, &cj, owner::name(job)).await?;
        }

        let zone_name = cj.pointer("/spec/timeZone").and_then(Value::as_str);
        let zone = match self.zones.zone(zone_name) {
            Ok(zone) => zone,
            Err(e) => {
                let name = zone_name.unwrap_or_default();
                self.event(
                    &cj,
                    Type::Warning,
                    "UnknownTimeZone",
                    &format!("invalid timeZone: {name:?}: {e}"),
                )
                .await;
                return self.write_status(ctx, &r, &cj, &status, None).await;
            }
        };
        if cj["spec"]["suspend"] == true {
            return self.write_status(ctx, &r, &cj, &status, None).await;
        }
        let text = cj
            .pointer("/spec/schedule")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let schedule = match Schedule::parse(text) {
            Ok(s) => s,
            Err(e) => {
                // Stored before the server checked schedules: nothing to do until it changes.
                self.event(
                    &cj,
                    Type::Warning,
                    "UnparseableSchedule",
                    &format!("unparseable schedule: {text:?} : {e}"),
                )
                .await;
                return self.write_status(ctx, &r, &cj, &status, None).await;
            }
        };
        let since = cj
            .pointer("/status/lastScheduleTime")
            .and_then(Value::as_str)
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .unwrap_or_else(|| owner::timestamp(&cj, "/metadata/creationTimestamp"));
        let due = Due {
            name: owner::name(&cj),
            schedule: &schedule,
            zone: &zone,
            since,
            deadline: cj
                .pointer("/spec/startingDeadlineSeconds")
                .and_then(Value::as_i64),
            policy: match cj["spec"]["concurrencyPolicy"].as_str() {
                Some("Forbid") => Concurrency::Forbid,
                Some("Replace") => Concurrency::Replace,
                _ => Concurrency::Allow,
            },
            active: status
                .active
                .iter()
                .filter_map(|a| a["name"].as_str().map(str::to_owned))
                .collect(),
        };
        match decide(&due, now) {
            Decision::Wait | Decision::Started => {}
            Decision::TooLate(at) => {
                self.event(
                    &cj,
                    Type::Warning,
                    "MissSchedule",
                    &format!(
                        "Missed scheduled time to start a job: {}",
                        rfc1123z(at).unwrap_or_default()
                    ),
                )
                .await
            }
            Decision::Forbidden(_) => {
                self.event(
                    &cj,
                    Type::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                )
                .await
            }
            Decision::Start {
                at,
                replace,
                too_many,
            } => {
                if too_many {
                    self.event(
                        &cj,
                        Type::Warning,
                        "TooManyMissedTimes",
                        "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                    )
                    .await;
                }
                if replace {
                    for name in &due.active {
                        self.delete_job(ctx, &cj, name).await?;
                    }
                    status.active.clear();
                }
                if let Err(e) = self.start(ctx, &cj, at, &zone, &mut status).await {
                    // Whatever was deleted is out of the status before the retry.
                    self.write_status(ctx, &r, &cj, &status, None).await?;
                    return Err(e);
                }
            }
        }
        let anchor = status
            .last_schedule
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .unwrap_or(since);
        let next = next_time(&schedule, &zone, anchor, now);
        self.write_status(ctx, &r, &cj, &status, next.map(|t| wait_until(t, now)))
            .await
    }
}

impl CronJobs {
    async fn event(&self, cj: &Value, kind: Type, reason: &str, message: &str) {
        self.events
            .record(&CRONJOBS, cj, kind, reason, message)
            .await;
    }

    /// Creates the Job of `at`, or finds it made by an earlier try, and lists it as active.
    async fn start(
        &self,
        ctx: &Context,
        cj: &Value,
        at: OffsetDateTime,
        zone: &Zone,
        status: &mut Status,
    ) -> Result<(), ApiError> {
        let job = job_for(cj, at, zone);
        let namespace = owner::namespace(cj);
        let created = match ctx.registry.create(&JOBS, Some(namespace), job).await {
            Ok(j) => {
                ctx.wrote(&j);
                self.event(
                    cj,
                    Type::Normal,
                    "SuccessfulCreate",
                    &format!("Created job {}", owner::name(&j)),
                )
                .await;
                j
            }
            Err(ApiError::AlreadyExists { .. }) => {
                let r = job_ref(namespace, &job_name(cj, at));
                let j = ctx.registry.get(&r).await?;
                if !is_controlled_by(&j, cj) {
                    // Someone else's Job under our name: leave it, and the time, alone.
                    tracing::info!(
                        job = r.name,
                        "a Job not made by its CronJob has the name of this scheduled time"
                    );
                    return Ok(());
                }
                j
            }
            Err(e) => {
                self.event(
                    cj,
                    Type::Warning,
                    "FailedCreate",
                    &format!("Error creating job: {e}"),
                )
                .await;
                return Err(e);
            }
        };
        // A Job found from an earlier try may have finished since (or an `@every` shorter
        // than a minute named two times alike): only a running one is active.
        if finished(&created).is_none()
            && !status
                .active
                .iter()
                .any(|a| a["uid"] == owner::uid(&created))
        {
            status.active.push(reference(&created));
        }
        status.last_schedule = Some(rfc3339(at));
        Ok(())
    }

    /// Deletes a Job and, through background propagation, its pods.
    async fn delete_job(&self, ctx: &Context, cj: &Value, name: &str) -> Result<(), ApiError> {
        match ctx
            .registry
            .delete(&job_ref(owner::namespace(cj), name), None)
            .await
        {
            Ok(last) => {
                ctx.wrote(&last);
                self.event(
                    cj,
                    Type::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted job {name}"),
                )
                .await;
                Ok(())
            }
            Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => {
                self.event(
                    cj,
                    Type::Warning,
                    "FailedDelete",
                    &format!("Error deleting job {name}: {e}"),
                )
                .await;
                Err(e)
            }
        }
    }

    /// Writes `status` if it differs from what is stored; then waits `next`, if any.
    async fn write_status(
        &self,
        ctx: &Context,
        r: &ObjectRef,
        cj: &Value,
        status: &Status,
        next: Option<Duration>,
    ) -> Result<Action, ApiError> {
        let mut want = cj.get("status").cloned().unwrap_or_else(|| json!({}));
        if !want.is_object() {
            want = json!({});
        }
        set_or_remove(
            &mut want,
            "active",
            (!status.active.is_empty()).then(|| json!(status.active)),
        );
        set_or_remove(
            &mut want,
            "lastScheduleTime",
            status.last_schedule.as_ref().map(|t| json!(t)),
        );
        set_or_remove(
            &mut want,
            "lastSuccessfulTime",
            status.last_successful.as_ref().map(|t| json!(t)),
        );
        // No status yet reads as an empty one, so a CronJob that never ran is not rewritten.
        let current = cj.get("status").cloned().unwrap_or_else(|| json!({}));
        if current != want {
            match ctx
                .registry
                .modify(r, Part::Status, |o| {
                    for k in ["active", "lastScheduleTime", "lastSuccessfulTime"] {
                        set_or_remove(&mut o["status"], k, want.get(k).cloned());
                    }
                })
                .await
            {
                Ok(o) => ctx.wrote(&o),
                Err(ApiError::NotFound { .. }) => return Ok(Action::Done),
                Err(e) => return Err(e),
            }
        }
        Ok(next.map_or(Action::Done, Action::RequeueAfter))
    }
}

// === decisions, pure ===

/// What is due at `now`: the latest time missed since the last Job, and whether policy and
/// deadline let it start.
fn decide(due: &Due, now: OffsetDateTime) -> Decision {
    let Some(missed) = due.schedule.missed(due.zone, due.since, now) else {
        return Decision::Wait;
    };
    let at = missed.latest;
    let window_start = due
        .deadline
        .map(|s| now - time::Duration::seconds(s.max(0)));
    if window_start.is_some_and(|start| at < start) {
        return Decision::TooLate(at);
    }
    let name = job_name_at(due.name, at);
    if due.active.contains(&name) {
        return Decision::Started;
    }
    // With a deadline, only the times inside it count as missed (Kubernetes' advice for too
    // many missed times is to set one).
    let too_many = match window_start {
        Some(start) if start > due.since => due
            .schedule
            .missed(due.zone, start, now)
            .is_some_and(|m| m.too_many()),
        _ => missed.too_many(),
    };
    match due.policy {
        Concurrency::Forbid if !due.active.is_empty() => Decision::Forbidden(at),
        Concurrency::Replace => Decision::Start {
            at,
            replace: !due.active.is_empty(),
            too_many,
        },
        _ => Decision::Start {
            at,
            replace: false,
            too_many,
        },
    }
}

/// Compares the Jobs `cj` controls with its status.
fn observe(cj: &Value, jobs: &[Arc<Value>]) -> Seen {
    let listed: Vec<&Value> = cj
        .pointer("/status/active")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let was_listed = |job: &Value| listed.iter().any(|a| a["uid"] == owner::uid(job));
    let mut seen = Seen::default();
    let mut sorted: Vec<&Value> = jobs.iter().map(|j| &**j).collect();
    sorted.sort_by_key(|j| owner::name(*j));
    let mut latest_success = cj
        .pointer("/status/lastSuccessfulTime")
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    for job in sorted {
        match finished(job) {
            None => seen.active.push(
                // The entry as listed (same resourceVersion), so an unchanged set is no write.
                listed
                    .iter()
                    .find(|a| a["uid"] == owner::uid(job))
                    .map_or_else(|| reference(job), |a| (*a).clone()),
            ),
            Some(condition) => {
                if was_listed(job) {
                    seen.completed
                        .push((owner::name(job).to_owned(), condition));
                }
                if condition == "Complete"
                    && let Some(done) = completion(job)
                    && latest_success.is_none_or(|l| done > l)
                {
                    latest_success = Some(done);
                    seen.last_successful = Some(rfc3339(done));
                }
            }
        }
    }
    for a in listed {
        if !jobs.iter().any(|j| a["uid"] == owner::uid(j)) {
            seen.missing
                .push(a["name"].as_str().unwrap_or_default().to_owned());
        }
    }
    seen
}

/// `Complete` or `Failed` once the Job has that condition True; `None` while it runs.
fn finished(job: &Value) -> Option<&'static str> {
    let conditions = job.pointer("/status/conditions")?.as_array()?;
    ["Complete", "Failed"].into_iter().find(|kind| {
        conditions
            .iter()
            .any(|c| c["type"] == *kind && c["status"] == "True")
    })
}

/// When a successful Job completed: `completionTime`, or when its `Complete` condition
/// became True.
fn completion(job: &Value) -> Option<OffsetDateTime> {
    let parse = |t: &Value| OffsetDateTime::parse(t.as_str()?, &Rfc3339).ok();
    job.pointer("/status/completionTime")
        .and_then(parse)
        .or_else(|| {
            job.pointer("/status/conditions")?
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Complete")
                .and_then(|c| parse(&c["lastTransitionTime"]))
        })
}

/// The finished Jobs beyond `successfulJobsHistoryLimit` and `failedJobsHistoryLimit`,
/// oldest first.
fn beyond_history<'a>(cj: &Value, jobs: &'a [Arc<Value>]) -> Vec<&'a Value> {
    let mut doomed = vec![];
    for (condition, limit) in [
        (
            "Complete",
            owner::int(cj, "/spec/successfulJobsHistoryLimit", 3),
        ),
        ("Failed", owner::int(cj, "/spec/failedJobsHistoryLimit", 1)),
    ] {
        let mut kept: Vec<&Value> = jobs
            .iter()
            .map(|j| &**j)
            .filter(|j| !owner::is_terminating(j) && finished(j) == Some(condition))
            .collect();
        let excess = kept
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        // Kubernetes orders by start time; a Job not started yet counts from its creation.
        kept.sort_by_key(|j| {
            let started = owner::timestamp(j, "/status/startTime");
            let at = if started == OffsetDateTime::UNIX_EPOCH {
                owner::timestamp(j, "/metadata/creationTimestamp")
            } else {
                started
            };
            (at, owner::name(j).to_owned())
        });
        doomed.extend(kept.into_iter().take(excess));
    }
    doomed
}

/// The Job of scheduled time `at`: the template's labels, annotations and spec, the scheduled
/// time, and the CronJob as controller.
fn job_for(cj: &Value, at: OffsetDateTime, zone: &Zone) -> Value {
    let template = &cj["spec"]["jobTemplate"];
    let mut meta = Map::new();
    meta.insert("name".into(), json!(job_name(cj, at)));
    if let Some(labels) = template
        .pointer("/metadata/labels")
        .filter(|l| l.is_object())
    {
        meta.insert("labels".into(), labels.clone());
    }
    let mut annotations = template
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let local = at.to_offset(zone.offset(at));
    annotations.insert(SCHEDULED_TIMESTAMP.into(), json!(rfc3339(local)));
    meta.insert("annotations".into(), Value::Object(annotations));
    meta.insert(
        "ownerReferences".into(),
        json!([controller_ref(&CRONJOBS, cj)]),
    );
    json!({
        "apiVersion": JOBS.api_version(),
        "kind": JOBS.kind,
        "metadata": meta,
        "spec": template["spec"],
    })
}

fn job_name(cj: &Value, at: OffsetDateTime) -> String {
    job_name_at(owner::name(cj), at)
}

/// `<cronjob>-<scheduled time in Unix minutes>`, as Kubernetes names them.
fn job_name_at(cronjob: &str, at: OffsetDateTime) -> String {
    format!("{cronjob}-{}", at.unix_timestamp().div_euclid(60))
}

fn job_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        resource: &JOBS,
        namespace: Some(namespace.to_owned()),
        name: name.to_owned(),
    }
}

/// An `ObjectReference` to a Job, as `status.active` lists them.
fn reference(job: &Value) -> Value {
    json!({
        "apiVersion": JOBS.api_version(),
        "kind": JOBS.kind,
        "namespace": owner::namespace(job),
        "name": owner::name(job),
        "uid": owner::uid(job),
        "resourceVersion": job["metadata"]["resourceVersion"],
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Go's `time.RFC1123Z`, as Kubernetes' events print times.
fn rfc1123z(t: OffsetDateTime) -> Option<String> {
    t.format(time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
    ))
    .ok()
}

/// The first scheduled time after `now`, counted from `anchor` (the last Job's time, or
/// creation): `@every` times step from there, not from now.
fn next_time(
    schedule: &Schedule,
    zone: &Zone,
    anchor: OffsetDateTime,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let latest = schedule
        .missed(zone, anchor, now)
        .map_or(anchor, |m| m.latest);
    schedule.next_after_in(zone, latest)
}

/// How long from `now` until just after `t`.
fn wait_until(t: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(t - now).unwrap_or_default() + AFTER_SCHEDULE
}

fn set_or_remove(obj: &mut Value, key: &str, value: Option<Value>) {
    if !obj.is_object() {
        *obj = json!({});
    }
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match value {
        Some(v) => {
            map.insert(key.to_owned(), v);
        }
        None => {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
