//! batch/v1 CronJob: Kubernetes' defaults (concurrency, suspension, history limits, the job
//! template's pod defaults), a schedule in cron form, a job template whose pods restart
//! `OnFailure` or `Never`, and the `kubectl get cronjobs` columns. Nothing schedules them yet.
//!
//! As in Kubernetes, the job template's own JobSpec fields (completions, backoffLimit…) are not
//! defaulted here; each Job made from it is.

use serde_json::{Value, json};

use super::workload;
use super::{AGE, Column, NAME, Strategy, age, integer, or_none, plain, text};

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
                if let Err(why) = check_schedule(s) {
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

/// The `@`-forms cron accepts instead of five fields.
const MACROS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Checks a schedule as Kubernetes' cron parser reads it: five fields (minute, hour, day of
/// month, month, day of week), or a macro, or `@every <duration>`.
fn check_schedule(schedule: &str) -> Result<(), String> {
    let s = schedule.trim();
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if s.starts_with('@') {
        if MACROS.contains(&s) {
            return Ok(());
        }
        return match s.strip_prefix("@every ") {
            Some(d) if plausible_duration(d.trim()) => Ok(()),
            _ => Err(format!("unrecognized descriptor: {s}")),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: {s}",
            fields.len()
        ));
    }
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let bounds: [(u32, u32, &[&str]); 5] = [
        (0, 59, &[]),
        (0, 23, &[]),
        (1, 31, &[]),
        (1, 12, &MONTHS),
        (0, 6, &DAYS),
    ];
    for (field, (min, max, names)) in fields.iter().zip(bounds) {
        check_field(field, min, max, names)?;
    }
    Ok(())
}

/// One cron field: a comma list of `*`, `?`, `N`, `N-M` (numbers or names), each with an
/// optional `/step`.
fn check_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<(), String> {
    let value = |v: &str| -> Result<u32, String> {
        let lower = v.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, day names from 0 (Sunday).
            return Ok(u32::try_from(i).unwrap_or(0) + min);
        }
        let n: u32 = v
            .parse()
            .map_err(|_| format!("failed to parse int from {v}"))?;
        if n < min || n > max {
            return Err(format!("end of range ({n}) above maximum ({max}): {v}"));
        }
        Ok(n)
    };
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(n) if n > 0 => {}
                _ => return Err(format!("failed to parse step from {part}")),
            }
        }
        match range {
            "*" | "?" => {}
            r => match r.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (value(a)?, value(b)?);
                    if a > b {
                        return Err(format!(
                            "beginning of range ({a}) beyond end of range ({b}): {r}"
                        ));
                    }
                }
                None => {
                    value(r)?;
                }
            },
        }
    }
    Ok(())
}

/// `90s`, `1h30m`: Go duration syntax, roughly.
fn plausible_duration(d: &str) -> bool {
    !d.is_empty()
        && d.starts_with(|c: char| c.is_ascii_digit())
        && d.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'h' | 'm' | 's' | 'u' | 'n' | 'µ'))
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
            assert_eq!(check_schedule(ok), Ok(()), "{ok}");
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
            assert!(check_schedule(bad).is_err(), "{bad}");
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
