//! The CronJob controller with a real server and the real kubectl: Jobs start on schedule and
//! are owned by their CronJob, Forbid holds back a second Job while the first runs, Replace
//! swaps it, history limits delete old finished Jobs, a time missed by more than
//! startingDeadlineSeconds is skipped, and a suspended CronJob or one in an unknown time zone
//! starts nothing.
//!
//! Schedules run on the wall clock, so the one-minute cases share one server and one wait:
//! everything is created at once, and the history case (which needs no clock) runs while the
//! first minute passes.
//! No Job controller runs here, so the test plays its part by writing Job conditions as an
//! admin, and says so; job templates are suspended so that a Job controller merged later
//! cannot finish them behind the test's back.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Options, Server, wait_until};
use serde_json::Value;

/// A minute boundary, and the controller's reaction to it, with room for a busy machine.
const MINUTE: Duration = Duration::from_secs(80);

fn apply(s: &Server, name: &str, yaml: &str) {
    let path = s.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    s.kubectl_ok(&["apply", "--validate=false", "-f", path.to_str().unwrap()]);
}

/// A CronJob whose Jobs are created suspended (their pods would never run here anyway).
fn cronjob(name: &str, schedule: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: CronJob
metadata: {{name: {name}}}
spec:
  schedule: "{schedule}"
{extra_spec}
  jobTemplate:
    metadata: {{labels: {{cron: {name}}}}}
    spec:
      suspend: true
      template:
        spec:
          restartPolicy: Never
          containers: [{{name: c, image: "busybox:1.36", command: [sleep, "3600"]}}]
"#
    )
}

/// The Jobs whose controller is the CronJob `owner`, by name.
fn jobs_of(s: &Server, owner: &str) -> Vec<Value> {
    let list = s.kubectl_json(&["get", "jobs", "-o", "json"]);
    let mut jobs: Vec<Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|j| {
            j["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["kind"] == "CronJob" && r["name"] == owner && r["controller"] == true)
        })
        .collect();
    jobs.sort_by_key(|j| name(j).to_owned());
    jobs
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn condition(job: &Value) -> Option<&str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["status"] == "True")?["type"]
        .as_str()
}

/// Plays the Job controller: marks a Job finished.
fn finish(s: &Server, job: &str, condition: &str) {
    let patch =
        format!(r#"{{"status":{{"conditions":[{{"type":"{condition}","status":"True"}}]}}}}"#);
    s.kubectl_ok(&[
        "patch",
        "job",
        job,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

/// Reasons of the events recorded about `object`.
fn reasons(s: &Server, object: &str) -> Vec<String> {
    let list = s.kubectl_json(&["get", "events", "-o", "json"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == object)
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

fn unix_minutes() -> u64 {
    unix_seconds() / 60
}

/// The scheduled minute a CronJob's Job is named for.
fn minute_of(job: &str) -> u64 {
    job.rsplit('-')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("a Job name ends in its minute")
}

#[test]
fn cronjobs_start_jobs_on_schedule_within_their_policies() {
    let s = Server::start(Options::default());

    // The imperative form first; until protobuf bodies are accepted it falls back to YAML.
    let created = s.kubectl(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=* * * * *",
    ]);
    if !created.status.success() {
        eprintln!(
            "kubectl create cronjob failed ({}); applying YAML instead",
            String::from_utf8_lossy(&created.stderr).trim()
        );
        apply(
            &s,
            "tick",
            r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: tick, image: busybox}]
"#,
        );
    }
    apply(
        &s,
        "forbid",
        &cronjob("forbid", "* * * * *", "  concurrencyPolicy: Forbid"),
    );
    apply(
        &s,
        "paused",
        &cronjob("paused", "* * * * *", "  suspend: true"),
    );
    apply(
        &s,
        "replace",
        &cronjob("replace", "* * * * *", "  concurrencyPolicy: Replace"),
    );
    apply(
        &s,
        "late",
        &cronjob(
            "late",
            "* * * * *",
            "  suspend: true\n  startingDeadlineSeconds: 10",
        ),
    );
    // Wall-clock minutes in Berlin are minutes in UTC too; the Job's scheduled time is
    // written with Berlin's offset. Only where the system has the zone database.
    let has_berlin = std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists();
    if has_berlin {
        apply(
            &s,
            "berlin",
            &cronjob("berlin", "* * * * *", "  timeZone: Europe/Berlin"),
        );
    }
    apply(
        &s,
        "zoned",
        &cronjob("zoned", "* * * * *", "  timeZone: Nowhere/Atlantis"),
    );
    apply(
        &s,
        "history",
        &cronjob(
            "history",
            "0 0 1 1 *",
            "  suspend: true\n  successfulJobsHistoryLimit: 2\n  failedJobsHistoryLimit: 1",
        ),
    );
    let start_minute = unix_minutes();

    // History limits, while the first minute passes (and even while suspended): Jobs the
    // CronJob controls, finished four times successfully and twice not, oldest first; only
    // the newest two and the newest one stay.
    let uid = s.kubectl_json(&["get", "cronjob", "history", "-o", "json"])["metadata"]["uid"]
        .as_str()
        .expect("a CronJob has a uid")
        .to_owned();
    let outcomes = [
        "Complete", "Failed", "Complete", "Complete", "Failed", "Complete",
    ];
    let mut manifest = String::new();
    for i in 0..outcomes.len() {
        manifest.push_str(&format!(
            r#"
---
apiVersion: batch/v1
kind: Job
metadata:
  name: history-{i}
  ownerReferences: [{{apiVersion: batch/v1, kind: CronJob, name: history, uid: {uid}, controller: true}}]
spec:
  suspend: true
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: c, image: "busybox:1.36"}}]
"#
        ));
    }
    apply(&s, "history-jobs", &manifest);
    for (i, outcome) in outcomes.iter().enumerate() {
        finish(&s, &format!("history-{i}"), outcome);
    }
    wait_until(
        "only the newest finished Jobs are kept",
        Duration::from_secs(30),
        || {
            let names: Vec<String> = jobs_of(&s, "history")
                .iter()
                .map(|j| name(j).to_owned())
                .collect();
            names == ["history-3", "history-4", "history-5"]
        },
    );
    let history = reasons(&s, "history");
    assert_eq!(
        history.iter().filter(|r| *r == "SuccessfulDelete").count(),
        3,
        "each deletion is recorded: {history:?}"
    );

    // The first minute: tick's Job, named for its minute and owned by it.
    wait_until("tick starts a Job", MINUTE, || {
        !jobs_of(&s, "tick").is_empty()
    });
    let cj = s.kubectl_json(&["get", "cronjob", "tick", "-o", "json"]);
    let last = cj["status"]["lastScheduleTime"]
        .as_str()
        .expect("lastScheduleTime is set");
    let last = time::OffsetDateTime::parse(last, &time::format_description::well_known::Rfc3339)
        .expect("lastScheduleTime is RFC 3339");
    let jobs = jobs_of(&s, "tick");
    let job = &jobs[0];
    assert_eq!(name(job), format!("tick-{}", last.unix_timestamp() / 60));
    assert!(
        last.unix_timestamp() as u64 / 60 >= start_minute,
        "the Job is for a minute after the CronJob was made"
    );
    assert_eq!(
        job["metadata"]["ownerReferences"][0]["uid"],
        cj["metadata"]["uid"]
    );
    assert!(
        job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .is_string()
    );
    if condition(job).is_none() {
        assert_eq!(cj["status"]["active"][0]["name"], name(job), "{cj}");
    }
    assert!(reasons(&s, "tick").iter().any(|r| r == "SuccessfulCreate"));

    // Forbid: its first Job never finishes, so the next minute starts nothing. Replace: the
    // next minute's Job takes the first one's place.
    wait_until("forbid starts a Job", MINUTE, || {
        !jobs_of(&s, "forbid").is_empty()
    });
    let first = name(&jobs_of(&s, "forbid")[0]).to_owned();
    wait_until("replace starts a Job", MINUTE, || {
        !jobs_of(&s, "replace").is_empty()
    });
    let replaced = name(&jobs_of(&s, "replace")[0]).to_owned();
    let first_minute = minute_of(&first).max(minute_of(&replaced));
    wait_until("the next minute comes", MINUTE, || {
        unix_minutes() > first_minute
    });
    wait_until("forbid holds back", Duration::from_secs(20), || {
        reasons(&s, "forbid")
            .iter()
            .any(|r| r == "JobAlreadyActive")
    });
    let names: Vec<String> = jobs_of(&s, "forbid")
        .iter()
        .map(|j| name(j).to_owned())
        .collect();
    assert_eq!(names, std::slice::from_ref(&first), "one Job at a time");
    // Meanwhile Allow started another.
    assert!(jobs_of(&s, "tick").len() >= 2, "tick runs every minute");

    wait_until(
        "replace deletes the running Job and starts the next",
        Duration::from_secs(20),
        || {
            let jobs = jobs_of(&s, "replace");
            jobs.len() == 1 && name(&jobs[0]) != replaced
        },
    );
    assert!(
        reasons(&s, "replace")
            .iter()
            .any(|r| r == "SuccessfulDelete"),
        "{:?}",
        reasons(&s, "replace")
    );

    // Resumed more than startingDeadlineSeconds after the minute it missed: that minute is
    // skipped (well before the next one comes).
    wait_until("a quarter past the minute", MINUTE, || {
        (15..=40).contains(&(unix_seconds() % 60))
    });
    s.kubectl_ok(&[
        "patch",
        "cronjob",
        "late",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    wait_until("late records the miss", Duration::from_secs(15), || {
        reasons(&s, "late").iter().any(|r| r == "MissSchedule")
    });
    assert!(
        jobs_of(&s, "late").is_empty(),
        "a missed time starts nothing"
    );

    if has_berlin {
        let jobs = jobs_of(&s, "berlin");
        let job = jobs.first().expect("berlin runs every minute too");
        let at = job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .unwrap_or_default();
        // Central European time, summer or winter.
        assert!(
            at.ends_with(":00+01:00") || at.ends_with(":00+02:00"),
            "the scheduled time in Berlin's offset: {at}"
        );
    }

    // Suspended, and in a zone nobody knows: nothing.
    assert!(jobs_of(&s, "paused").is_empty());
    let paused = s.kubectl_json(&["get", "cronjob", "paused", "-o", "json"]);
    assert!(paused["status"]["lastScheduleTime"].is_null(), "{paused}");
    assert!(jobs_of(&s, "zoned").is_empty());
    assert!(
        reasons(&s, "zoned").iter().any(|r| r == "UnknownTimeZone"),
        "{:?}",
        reasons(&s, "zoned")
    );
}
