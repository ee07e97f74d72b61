//! batch/v1 CronJob: Kubernetes' defaults (concurrency, suspension, history limits, the job
//! template's pod defaults), a schedule the CronJob controller's own parser accepts, a job
//! template whose pods restart `OnFailure` or `Never`, and the `kubectl get cronjobs` columns.
//! The controller ([`crate::controllers::cronjob`]) runs them.
//!
//! As in Kubernetes, the job template's own JobSpec fields (completions, backoffLimit…) are not
//! defaulted here; each Job made from it is.

use serde_json::{Value, json};

use super::workload;
// The one parser: what the server accepts is what the controller runs.
use super::{AGE, Column, NAME, Strategy, age, integer, or_none, plain, text};
use crate::api::cron::Schedule;

pub struct CronJobs;

/// A CronJob's name becomes its Jobs' names with an 11-character suffix.
const MAX_NAME: usize = 52;

impl Strategy for CronJobs {
    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        for (k, v) in [
            ("concurrencyPolicy", json!("Allow")),
            ("suspend", json!(false)),
            ("successfulJobsHistoryLimit", json!(3)),
            ("failedJobsHistoryLimit", json!(1)),
        ] {
            workload::or_insert(obj, "/spec", k, v);
        }
        workload::default_template(obj, "/spec/jobTemplate/spec/template");
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let name = text(obj, "/metadata/name");
        if name.len() > MAX_NAME {
            causes.push(format!(
                "metadata.name: Invalid value: {name:?}: must be no more than {MAX_NAME} characters"
            ));
        }
        match obj.pointer("/spec/schedule").and_then(Value::as_str) {
            None | Some("") => causes.push("spec.schedule: Required value".into()),
            Some(s) => {
                if let Err(why) = Schedule::parse(s) {
                    causes.push(format!("spec.schedule: Invalid value: {s:?}: {why}"));
                }
            }
        }
        if let Some(tz) = obj.pointer("/spec/timeZone").and_then(Value::as_str)
            && !plausible_time_zone(tz)
        {
            causes.push(format!(
                "spec.timeZone: Invalid value: {tz:?}: unknown time zone {tz}"
            ));
        }
        workload::one_of(
            obj,
            "/spec/concurrencyPolicy",
            &["Allow", "Forbid", "Replace"],
            causes,
        );
        for p in [
            "/spec/startingDeadlineSeconds",
            "/spec/successfulJobsHistoryLimit",
            "/spec/failedJobsHistoryLimit",
        ] {
            workload::non_negative(obj, p, causes);
        }
        match obj
            .pointer("/spec/jobTemplate/spec")
            .filter(|s| s.is_object())
        {
            Some(spec) => super::job::validate_spec(spec, "spec.jobTemplate.spec", false, causes),
            None => causes.push("spec.jobTemplate.spec: Required value".into()),
        }
    }

    fn has_generation(&self) -> bool {
        true
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

/// An IANA zone name's form (`Europe/Berlin`, `UTC`, `Etc/GMT+2`); the zone database itself
/// is not consulted.
fn plausible_time_zone(tz: &str) -> bool {
    !tz.is_empty()
        && tz != "Local"
        && !tz.starts_with('/')
        && !tz.contains("..")
        && tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
}

/// The containers of the job template's pods.
const TEMPLATE: &str = "/spec/jobTemplate/spec/template/spec";

static COLUMNS: [Column; 10] = [
    NAME,
    plain(
        "Schedule",
        "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
        0,
        |c, _| json!(text(c, "/spec/schedule")),
    ),
    plain(
        "Timezone",
        "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
        0,
        |c, _| json!(or_none(text(c, "/spec/timeZone"))),
    ),
    plain(
        "Suspend",
        "This flag tells the controller to suspend subsequent executions.",
        0,
        |c, _| {
            json!(match c.pointer("/spec/suspend").and_then(Value::as_bool) {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            })
        },
    ),
    integer(
        "Active",
        "A list of pointers to currently running jobs.",
        0,
        |c, _| {
            json!(
                c.pointer("/status/active")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            )
        },
    ),
    plain(
        "Last Schedule",
        "Information when was the last time the job was successfully scheduled.",
        0,
        |c, now| {
            let last = text(c, "/status/lastScheduleTime");
            json!(if last.is_empty() {
                "<none>".into()
            } else {
                age(&last, now)
            })
        },
    ),
    AGE,
    plain(
        "Containers",
        "Names of each container in the template.",
        1,
        |c, _| json!(workload::containers(c, TEMPLATE, "name")),
    ),
    plain(
        "Images",
        "Images referenced by each container in the template.",
        1,
        |c, _| json!(workload::containers(c, TEMPLATE, "image")),
    ),
    plain(
        "Selector",
        "A label query over pods that should match the pod count.",
        1,
        |c, _| {
            json!(or_none(workload::selector_string(
                c.pointer("/spec/jobTemplate/spec/selector")
            )))
        },
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(schedule: &str, restart: &str) -> Value {
        json!({"metadata": {"name": "hello"}, "spec": {"schedule": schedule, "jobTemplate": {"spec": {
            "template": {"spec": {"restartPolicy": restart,
                "containers": [{"name": "hello", "image": "busybox:1.36"}]}}}}}})
    }

    #[test]
    fn a_cronjob_gets_kubernetes_defaults() {
        let mut cj = hello("*/5 * * * *", "OnFailure");
        CronJobs.default("hello", &mut cj);
        let spec = &cj["spec"];
        assert_eq!(spec["concurrencyPolicy"], "Allow");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["successfulJobsHistoryLimit"], 3);
        assert_eq!(spec["failedJobsHistoryLimit"], 1);
        let template = &spec["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(template["dnsPolicy"], "ClusterFirst");
        assert_eq!(template["restartPolicy"], "OnFailure");
        let mut causes = Vec::new();
        CronJobs.validate(&cj, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");

        let mut cj = cj.clone();
        cj["status"] = json!({"active": [{"name": "hello-1"}]});
        let now = time::OffsetDateTime::now_utc();
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&cj, now)).collect();
        assert_eq!(
            cells[1..6],
            [
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("<none>")
            ]
        );
        assert_eq!(cells[8], "busybox:1.36");
    }

    #[test]
    fn a_cronjob_needs_a_cron_schedule_and_pods_that_do_not_restart_always() {
        for ok in [
            "0 * * * *",
            "@hourly",
            "@every 90s",
            "*/15 9-17 * JAN-MAR mon-fri",
            "0,30 1 1 12 0",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "* * * *",
            "61 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "5-1 * * * *",
            "*/0 * * * *",
            "@sometimes",
            "TZ=UTC 0 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        let mut causes = Vec::new();
        let mut cj = hello("every minute", "Always");
        CronJobs.default("hello", &mut cj);
        CronJobs.validate(&cj, &mut causes);
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(causes[0].starts_with("spec.schedule: Invalid value"));
        assert!(causes[1].starts_with(
            "spec.jobTemplate.spec.template.spec.restartPolicy: Unsupported value: \"Always\""
        ));
        let mut causes = Vec::new();
        CronJobs.validate(&json!({"spec": {}}), &mut causes);
        assert_eq!(
            causes,
            [
                "spec.schedule: Required value",
                "spec.jobTemplate.spec: Required value"
            ]
        );
    }
}
