use super::*;

fn t(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

fn due<'a>(schedule: &'a Schedule, since: &str, policy: Concurrency, active: &[&str]) -> Due<'a> {
    Due {
        name: "tick",
        schedule,
        zone: &Zone::Utc,
        since: t(since),
        deadline: None,
        policy,
        active: active.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn the_latest_missed_time_starts_as_the_concurrency_policy_allows() {
    let every_minute = Schedule::parse("* * * * *").unwrap();
    let created = "2026-12-01T10:00:30Z";
    let at = t("2026-12-01T10:01:00Z");
    let now = t("2026-12-01T10:01:00.1Z");
    use Concurrency::*;

    // Nothing came since creation yet.
    let d = due(&every_minute, created, Allow, &[]);
    assert_eq!(decide(&d, t("2026-12-01T10:00:59Z")), Decision::Wait);
    assert_eq!(
        decide(&d, now),
        Decision::Start {
            at,
            replace: false,
            too_many: false
        }
    );
    // Allow starts beside a running Job; Forbid skips; Replace replaces.
    let running = ["tick-29410859"];
    let d = due(&every_minute, created, Allow, &running);
    assert_eq!(
        decide(&d, now),
        Decision::Start {
            at,
            replace: false,
            too_many: false
        }
    );
    let d = due(&every_minute, created, Forbid, &running);
    assert_eq!(decide(&d, now), Decision::Forbidden(at));
    let d = due(&every_minute, created, Forbid, &[]);
    assert!(matches!(decide(&d, now), Decision::Start { .. }));
    let d = due(&every_minute, created, Replace, &running);
    assert_eq!(
        decide(&d, now),
        Decision::Start {
            at,
            replace: true,
            too_many: false
        }
    );
    let d = due(&every_minute, created, Replace, &[]);
    assert_eq!(
        decide(&d, now),
        Decision::Start {
            at,
            replace: false,
            too_many: false
        }
    );
    // This time's Job runs already (the status was written, the time not yet).
    let d = due(&every_minute, created, Forbid, &[&job_name_at("tick", at)]);
    assert_eq!(decide(&d, now), Decision::Started);
}

#[test]
fn a_starting_deadline_skips_late_times_and_bounds_the_missed_count() {
    let every_minute = Schedule::parse("* * * * *").unwrap();
    let mut d = due(
        &every_minute,
        "2026-12-01T10:00:30Z",
        Concurrency::Allow,
        &[],
    );
    d.deadline = Some(10);
    assert_eq!(
        decide(&d, t("2026-12-01T10:01:30Z")),
        Decision::TooLate(t("2026-12-01T10:01:00Z"))
    );
    assert!(matches!(
        decide(&d, t("2026-12-01T10:01:05Z")),
        Decision::Start {
            too_many: false,
            ..
        }
    ));
    // A month away: too many missed, unless a deadline narrows what counts.
    let mut d = due(
        &every_minute,
        "2026-11-01T00:00:00Z",
        Concurrency::Allow,
        &[],
    );
    let now = t("2026-12-01T10:01:05Z");
    assert_eq!(
        decide(&d, now),
        Decision::Start {
            at: t("2026-12-01T10:01:00Z"),
            replace: false,
            too_many: true
        }
    );
    d.deadline = Some(600);
    assert_eq!(
        decide(&d, now),
        Decision::Start {
            at: t("2026-12-01T10:01:00Z"),
            replace: false,
            too_many: false
        }
    );
}

#[test]
fn the_next_wake_up_counts_every_intervals_from_the_last_job() {
    let every = Schedule::parse("@every 5s").unwrap();
    let (last, now) = (t("2026-12-01T10:00:03Z"), t("2026-12-01T10:00:04.5Z"));
    assert_eq!(
        next_time(&every, &Zone::Utc, last, now),
        Some(t("2026-12-01T10:00:08Z"))
    );
    // A skipped time (Forbid) does not move the anchor: the next one still follows the grid.
    let now = t("2026-12-01T10:00:09Z");
    assert_eq!(
        next_time(&every, &Zone::Utc, last, now),
        Some(t("2026-12-01T10:00:13Z"))
    );
    let minutely = Schedule::parse("* * * * *").unwrap();
    assert_eq!(
        next_time(&minutely, &Zone::Utc, last, now),
        Some(t("2026-12-01T10:01:00Z"))
    );
    assert_eq!(
        wait_until(t("2026-12-01T10:01:00Z"), t("2026-12-01T10:00:59Z")),
        Duration::from_millis(1100)
    );
}

fn job(name: &str, uid: &str, status: Value) -> Arc<Value> {
    Arc::new(json!({
        "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "7",
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "ownerReferences": [{"kind": "CronJob", "name": "tick", "uid": "cj", "controller": true}]},
        "status": status,
    }))
}

fn done(kind: &str, at: &str) -> Value {
    json!({"startTime": at, "conditions": [{"type": kind, "status": "True", "lastTransitionTime": at}]})
}

#[test]
fn finished_jobs_leave_the_active_list_and_gone_ones_are_noticed() {
    let cj = json!({"metadata": {"name": "tick", "uid": "cj"}, "status": {
        "active": [
            {"name": "tick-1", "uid": "u1", "resourceVersion": "3"},
            {"name": "tick-2", "uid": "u2"},
            {"name": "tick-gone", "uid": "u9"}
        ],
        "lastSuccessfulTime": "2026-12-01T09:00:00Z"
    }});
    let jobs = [
        job("tick-1", "u1", json!({})),
        job("tick-2", "u2", done("Complete", "2026-12-01T10:05:00Z")),
        job("tick-3", "u3", json!({})),
        job("tick-4", "u4", done("Failed", "2026-12-01T10:06:00Z")),
    ];
    let seen = observe(&cj, &jobs);
    let names: Vec<&Value> = seen.active.iter().map(|a| &a["name"]).collect();
    assert_eq!(names, [&json!("tick-1"), &json!("tick-3")]);
    // A listed entry is kept as it was; a new one gets a full reference.
    assert_eq!(seen.active[0]["resourceVersion"], "3");
    assert_eq!(seen.active[1]["kind"], "Job");
    assert_eq!(seen.active[1]["uid"], "u3");
    assert_eq!(seen.completed, [("tick-2".to_string(), "Complete")]);
    assert_eq!(seen.missing, ["tick-gone"]);
    assert_eq!(
        seen.last_successful.as_deref(),
        Some("2026-12-01T10:05:00Z")
    );
    // Nothing new: nothing seen.
    let settled = json!({"metadata": {"name": "tick", "uid": "cj"}, "status": {
        "active": seen.active, "lastSuccessfulTime": "2026-12-01T10:05:00Z"}});
    let again = observe(&settled, &jobs);
    assert!(again.completed.is_empty() && again.missing.is_empty());
    assert_eq!(again.last_successful, None);
}

#[test]
fn the_oldest_finished_jobs_beyond_the_history_limits_go() {
    let cj = json!({"spec": {"successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1}});
    let jobs = [
        job("tick-5", "u5", done("Complete", "2026-12-01T10:05:00Z")),
        job("tick-1", "u1", done("Complete", "2026-12-01T10:01:00Z")),
        job("tick-3", "u3", done("Complete", "2026-12-01T10:03:00Z")),
        job("tick-4", "u4", done("Complete", "2026-12-01T10:04:00Z")),
        job("tick-2", "u2", done("Failed", "2026-12-01T10:02:00Z")),
        job("tick-6", "u6", done("Failed", "2026-12-01T10:06:00Z")),
        job("tick-7", "u7", json!({})),
    ];
    let doomed: Vec<&str> = beyond_history(&cj, &jobs)
        .into_iter()
        .map(owner::name)
        .collect();
    assert_eq!(doomed, ["tick-1", "tick-3", "tick-2"]);
    let keep_all =
        json!({"spec": {"successfulJobsHistoryLimit": 10, "failedJobsHistoryLimit": 10}});
    assert!(beyond_history(&keep_all, &jobs).is_empty());
}

#[test]
fn a_job_is_named_for_its_minute_and_carries_the_template_and_its_owner() {
    let cj = json!({
        "metadata": {"name": "tick", "namespace": "default", "uid": "cj"},
        "spec": {"jobTemplate": {
            "metadata": {"labels": {"app": "tick"}, "annotations": {"note": "x"}},
            "spec": {"backoffLimit": 2, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}
    });
    let at = t("2026-12-01T10:01:00Z");
    let job = job_for(&cj, at, &Zone::Utc);
    assert_eq!(
        job["metadata"]["name"],
        format!("tick-{}", at.unix_timestamp() / 60)
    );
    assert_eq!(job["metadata"]["name"], "tick-29935321");
    assert_eq!(job["metadata"]["labels"]["app"], "tick");
    assert_eq!(job["metadata"]["annotations"]["note"], "x");
    assert_eq!(
        job["metadata"]["annotations"][SCHEDULED_TIMESTAMP],
        "2026-12-01T10:01:00Z"
    );
    let owner = &job["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "CronJob");
    assert_eq!(owner["uid"], "cj");
    assert_eq!(owner["controller"], true);
    assert_eq!(job["spec"]["backoffLimit"], 2);
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(rfc1123z(at).unwrap(), "Tue, 01 Dec 2026 10:01:00 +0000");
}
