//! Jobs with a real server and the real kubectl: completions and parallelism, Indexed mode,
//! the backoff limit, and the time-to-live after finishing. No node runs containers yet, so
//! the test plays the kubelet's part: it reports pods Succeeded or Failed by writing their
//! status as an admin.

mod common;

use std::time::Duration;

use common::{Options, Server, wait_until};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(30);

fn apply(s: &Server, name: &str, yaml: &str) {
    let path = s.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    s.kubectl_ok(&["apply", "-f", path.to_str().unwrap()]);
}

fn job_pods(s: &Server, job: &str) -> Vec<Value> {
    let list = s.kubectl_json(&[
        "get",
        "pods",
        "-l",
        &format!("batch.kubernetes.io/job-name={job}"),
        "-o",
        "json",
    ]);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

/// Reports a pod as finished, as its node would.
fn finish(s: &Server, pod: &Value, phase: &str, exit_code: i32) {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format the time");
    let patch = serde_json::json!({"status": {
        "phase": phase,
        "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0, "image": "busybox",
            "imageID": "", "state": {"terminated": {"exitCode": exit_code,
            "finishedAt": now}}}]
    }});
    s.kubectl_ok(&[
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
}

fn job(name: &str, spec: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{spec}
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: c, image: "busybox:1.36"}}]
"#
    )
}

#[test]
fn a_job_runs_parallel_pods_until_its_completions_succeed() {
    let s = Server::start(Options::default());
    apply(
        &s,
        "batch",
        &job("batch", "  completions: 3\n  parallelism: 2"),
    );
    wait_until("2 pods run at once", SETTLE, || {
        job_pods(&s, "batch").len() == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        job_pods(&s, "batch").len(),
        2,
        "never more than parallelism"
    );
    for p in job_pods(&s, "batch") {
        finish(&s, &p, "Succeeded", 0);
    }
    // One completion is still missing: one more pod, not two.
    wait_until("a third pod", SETTLE, || {
        job_pods(&s, "batch")
            .iter()
            .filter(|p| phase(p) != "Succeeded")
            .count()
            == 1
    });
    let last = job_pods(&s, "batch")
        .into_iter()
        .find(|p| phase(p) != "Succeeded")
        .unwrap();
    finish(&s, &last, "Succeeded", 0);
    s.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/batch",
        "--timeout=30s",
    ]);
    let j = s.kubectl_json(&["get", "job", "batch", "-o", "json"]);
    assert_eq!(j["status"]["succeeded"], 3, "{}", j["status"]);
    assert!(j["status"]["completionTime"].is_string());
    let row = s.kubectl_ok(&["get", "job", "batch", "--no-headers"]);
    assert!(row.contains("3/3"), "{row}");
}

#[test]
fn an_indexed_job_gives_each_pod_its_index() {
    let s = Server::start(Options::default());
    apply(
        &s,
        "shards",
        &job(
            "shards",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed",
        ),
    );
    wait_until("3 pods", SETTLE, || job_pods(&s, "shards").len() == 3);
    let mut indexes: Vec<String> = job_pods(&s, "shards")
        .iter()
        .map(|p| {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);
    for p in job_pods(&s, "shards") {
        finish(&s, &p, "Succeeded", 0);
    }
    s.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/shards",
        "--timeout=30s",
    ]);
    let j = s.kubectl_json(&["get", "job", "shards", "-o", "json"]);
    assert_eq!(j["status"]["completedIndexes"], "0-2", "{}", j["status"]);
}

#[test]
fn a_job_fails_past_its_backoff_limit_and_goes_after_its_ttl() {
    let s = Server::start(Options::default());
    apply(
        &s,
        "flaky",
        &job("flaky", "  backoffLimit: 1\n  ttlSecondsAfterFinished: 2"),
    );
    wait_until("a first pod", SETTLE, || job_pods(&s, "flaky").len() == 1);
    finish(&s, &job_pods(&s, "flaky")[0], "Failed", 1);
    // The retry waits out the 10 s backoff.
    let took = wait_until("a retry", SETTLE, || job_pods(&s, "flaky").len() == 2);
    assert!(
        took >= Duration::from_secs(5),
        "retried after {took:?}, before the backoff"
    );
    let retry = job_pods(&s, "flaky")
        .into_iter()
        .find(|p| phase(p) != "Failed")
        .unwrap();
    finish(&s, &retry, "Failed", 1);
    wait_until("the job failed", SETTLE, || {
        let j = s.kubectl_json(&["get", "job", "flaky", "-o", "json"]);
        j["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Failed" && c["reason"] == "BackoffLimitExceeded")
        })
    });
    let described = s.kubectl_ok(&["describe", "job", "flaky"]);
    assert!(described.contains("BackoffLimitExceeded"), "{described}");
    // ttlSecondsAfterFinished: the Job and its pods go.
    wait_until("the finished job is deleted", SETTLE, || {
        !s.kubectl(&["get", "job", "flaky"]).status.success() && job_pods(&s, "flaky").is_empty()
    });
}
