//! batch/v1 Job: Kubernetes' defaults (one completion at a time, six retries, a generated
//! selector on `batch.kubernetes.io/controller-uid` with the matching template labels, the
//! template's pod defaults), a template whose pods restart `OnFailure` or `Never`, a selector,
//! template and completion mode that may not change, and the `kubectl get jobs` columns.
//! `controllers::job` runs them.
//!
//! A template without a restartPolicy gets a Pod's default, `Always`, and is refused, as in
//! Kubernetes.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::workload::{self, CONTAINERS, IMAGES, SELECTOR, count};
use super::{AGE, Column, NAME, Strategy, age, plain, text};

pub struct Jobs;

/// The label a generated selector selects on: the Job's uid.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// The label a Job's pods carry with its name.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// What a Job's pods may do when a container exits.
pub const RESTART_POLICIES: [&str; 2] = ["OnFailure", "Never"];

impl Strategy for Jobs {
    fn default(&self, name: &str, obj: &mut Value) {
        let uid = text(obj, "/metadata/uid");
        let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
            return;
        };
        default_spec(spec);
        if spec["manualSelector"] != true && !uid.is_empty() {
            generate_selector(spec, name, &uid);
        }
        // A Job without labels is labelled as its pods are.
        let labels = spec.pointer("/template/metadata/labels").cloned();
        if let Some(labels) = labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
            && obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
            && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("labels".into(), labels);
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let Some(spec) = obj.get("spec").filter(|s| s.is_object()) else {
            causes.push("spec: Required value".into());
            return;
        };
        validate_spec(spec, "spec", true, causes);
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        for p in ["/spec/selector", "/spec/template", "/spec/completionMode"] {
            workload::immutable(old, new, p, causes);
        }
        if text(new, "/spec/completionMode") != "Indexed" {
            workload::immutable(old, new, "/spec/completions", causes);
        }
    }

    fn has_generation(&self) -> bool {
        true
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

/// Kubernetes' defaults for a JobSpec (a Job's; a CronJob's job template keeps its own).
fn default_spec(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    if m.get("completions").is_none_or(Value::is_null)
        && m.get("parallelism").is_none_or(Value::is_null)
    {
        m.insert("completions".into(), json!(1));
    }
    m.entry("parallelism").or_insert(json!(1));
    if m.get("backoffLimitPerIndex").is_none_or(Value::is_null) {
        m.entry("backoffLimit").or_insert(json!(6));
    }
    m.entry("completionMode").or_insert(json!("NonIndexed"));
    m.entry("suspend").or_insert(json!(false));
    let replacement = if m.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    m.entry("podReplacementPolicy")
        .or_insert(json!(replacement));
    workload::default_template(spec, "/template");
}

/// Selects the Job's own pods by its uid, and labels the template to match (as Kubernetes,
/// with the legacy unprefixed labels too).
fn generate_selector(spec: &mut Value, name: &str, uid: &str) {
    if let Some(labels) = workload::map_at(spec, "/template/metadata/labels") {
        for (k, v) in [
            ("job-name", name),
            (JOB_NAME, name),
            ("controller-uid", uid),
            (CONTROLLER_UID, uid),
        ] {
            labels.entry(k).or_insert(json!(v));
        }
    }
    if let Some(selector) = workload::map_at(spec, "/selector/matchLabels") {
        selector.entry(CONTROLLER_UID).or_insert(json!(uid));
    }
}

/// Checks a JobSpec at `at` (`spec`, or `spec.jobTemplate.spec`); a Job's needs a selector
/// (generated unless `manualSelector`), a CronJob's template gets one per Job.
pub fn validate_spec(spec: &Value, at: &str, selector_required: bool, causes: &mut Vec<String>) {
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        let mut own = Vec::new();
        workload::non_negative(spec, &format!("/{field}"), &mut own);
        causes.extend(own.into_iter().map(|c| format!("{at}.{c}")));
    }
    let mut own = Vec::new();
    workload::one_of(
        spec,
        "/completionMode",
        &["NonIndexed", "Indexed"],
        &mut own,
    );
    causes.extend(own.into_iter().map(|c| format!("{at}.{c}")));
    if spec["completionMode"] == "Indexed" && spec.get("completions").is_none_or(Value::is_null) {
        causes.push(format!(
            "{at}.completions: Required value: when completion mode is Indexed"
        ));
    }
    let selector = spec.get("selector").filter(|s| !s.is_null());
    if selector.is_none() && selector_required {
        causes.push(format!("{at}.selector: Required value"));
    }
    workload::validate_template(
        spec.get("template"),
        selector,
        at,
        &RESTART_POLICIES,
        causes,
    );
}

static COLUMNS: [Column; 8] = [
    NAME,
    plain("Status", "Status of the job.", 0, |j, _| json!(status(j))),
    plain(
        "Completions",
        "The desired number of successfully finished pods the job should be run with.",
        0,
        |j, _| json!(completions(j)),
    ),
    plain(
        "Duration",
        "Time required to complete the job.",
        0,
        |j, now| json!(duration(j, now)),
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

/// Complete, Failed, Terminating, Suspended, FailureTarget, SuccessCriteriaMet or Running, as
/// kubectl 1.32 prints them.
fn status(j: &Value) -> &'static str {
    let has = |kind: &str| {
        j.pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["type"] == kind && c["status"] == "True")
    };
    match () {
        _ if has("Complete") => "Complete",
        _ if has("Failed") => "Failed",
        _ if j.pointer("/metadata/deletionTimestamp").is_some() => "Terminating",
        _ if has("Suspended") => "Suspended",
        _ if has("FailureTarget") => "FailureTarget",
        _ if has("SuccessCriteriaMet") => "SuccessCriteriaMet",
        _ => "Running",
    }
}

/// `1/3`, or for a work queue without completions `0/1 of 4`.
fn completions(j: &Value) -> String {
    let succeeded = count(j, "/status/succeeded");
    match j.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(n) => format!("{succeeded}/{n}"),
        None => match count(j, "/spec/parallelism") {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    }
}

/// From start to completion (or to now while running); empty before the job starts.
fn duration(j: &Value, now: OffsetDateTime) -> String {
    let start = text(j, "/status/startTime");
    if start.is_empty() {
        return String::new();
    }
    let end = OffsetDateTime::parse(
        &text(j, "/status/completionTime"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or(now);
    age(&start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pi(restart: Option<&str>) -> Value {
        let mut job = json!({"metadata": {"name": "pi", "uid": "0b1c"}, "spec": {"template": {"spec": {
            "containers": [{"name": "pi", "image": "perl:5.34"}]}}}});
        if let Some(p) = restart {
            job["spec"]["template"]["spec"]["restartPolicy"] = json!(p);
        }
        job
    }

    #[test]
    fn a_job_gets_kubernetes_defaults_and_a_selector_of_its_own() {
        let mut job = pi(Some("Never"));
        Jobs.default("pi", &mut job);
        let spec = &job["spec"];
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {CONTROLLER_UID: "0b1c"}})
        );
        assert_eq!(spec["template"]["metadata"]["labels"][JOB_NAME], "pi");
        assert_eq!(job["metadata"]["labels"]["job-name"], "pi");
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
        let mut again = job.clone();
        Jobs.default("pi", &mut again);
        assert_eq!(again, job);
        let mut causes = Vec::new();
        Jobs.validate(&job, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        // A work queue: parallelism without completions.
        let mut queue = pi(Some("OnFailure"));
        queue["spec"]["parallelism"] = json!(4);
        Jobs.default("q", &mut queue);
        assert!(queue["spec"].get("completions").is_none());
        assert_eq!(completions(&queue), "0/1 of 4");
    }

    #[test]
    fn a_job_whose_pods_restart_always_is_refused() {
        for restart in [None, Some("Always")] {
            let mut job = pi(restart);
            Jobs.default("pi", &mut job);
            let mut causes = Vec::new();
            Jobs.validate(&job, &mut causes);
            assert_eq!(
                causes,
                [
                    "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
                ]
            );
        }
        let mut job = pi(Some("Never"));
        job["spec"]["manualSelector"] = json!(true);
        Jobs.default("pi", &mut job);
        let mut causes = Vec::new();
        Jobs.validate(&job, &mut causes);
        assert_eq!(causes, ["spec.selector: Required value"]);
    }

    #[test]
    fn a_jobs_selector_and_template_are_fixed_and_its_row_shows_progress() {
        let mut job = pi(Some("Never"));
        Jobs.default("pi", &mut job);
        let mut suspended = job.clone();
        suspended["spec"]["suspend"] = json!(true);
        let mut causes = Vec::new();
        Jobs.validate_update(&job, &suspended, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut changed = job.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:5.40");
        changed["spec"]["completions"] = json!(2);
        Jobs.validate_update(&job, &changed, &mut causes);
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(causes[0].starts_with("spec.template: Invalid value"));
        assert!(causes[1].starts_with("spec.completions: Invalid value"));

        job["status"] = json!({"succeeded": 1, "startTime": "2026-01-10T12:00:00Z",
            "completionTime": "2026-01-10T12:00:42Z",
            "conditions": [{"type": "Complete", "status": "True"}]});
        let now = OffsetDateTime::now_utc();
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&job, now)).collect();
        assert_eq!(cells[1..4], [json!("Complete"), json!("1/1"), json!("42s")]);
        assert_eq!(cells[7], format!("{CONTROLLER_UID}=0b1c"));
        assert_eq!(status(&pi(None)), "Running");
        assert_eq!(duration(&pi(None), now), "");
    }
}
