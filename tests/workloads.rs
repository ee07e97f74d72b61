//! The apps/v1 and batch/v1 kinds through the real kubectl: Deployments, ReplicaSets,
//! DaemonSets, StatefulSets, Jobs and CronJobs applied from YAML with Kubernetes' defaults and
//! `kubectl get` columns, `kubectl get all`, `kubectl scale` through the scale subresource,
//! `kubectl set image`, and invalid or immutable changes refused with 422. Nothing runs them
//! yet, so every status count is 0.

mod common;

use common::{Options, Server, cell, create, get_rows, refused, table};
use serde_json::Value;

const WORKLOADS: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.26
        ports:
        - containerPort: 80
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: cache
spec:
  replicas: 2
  selector:
    matchExpressions:
    - {key: app, operator: In, values: [cache]}
  template:
    metadata:
      labels:
        app: cache
    spec:
      containers:
      - name: redis
        image: redis:7
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      nodeSelector:
        kubernetes.io/os: linux
      containers:
      - name: agent
        image: busybox:1.36
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      containers:
      - name: db
        image: postgres:17
---
apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: pi
        image: perl:5.34
        command: ["perl", "-Mbignum=bpi", "-wle", "print bpi(20)"]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: hello
spec:
  schedule: "*/5 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: hello
            image: busybox:1.36
"#;

/// The header of one `kubectl get` table, as its words.
fn header(out: &str) -> Vec<&str> {
    out.lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

#[test]
fn workloads_apply_get_defaults_and_kubectl_columns() {
    let s = Server::start(Options::default());
    let path = s.dir().join("workloads.yaml");
    std::fs::write(&path, WORKLOADS).unwrap();
    s.kubectl_ok(&["apply", "-f", &path.display().to_string()]);

    let web = s.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(web["spec"]["replicas"], 1);
    assert_eq!(web["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(web["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(web["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(web["metadata"]["generation"], 1);
    let template = &web["spec"]["template"]["spec"];
    assert_eq!(template["restartPolicy"], "Always");
    assert_eq!(template["dnsPolicy"], "ClusterFirst");
    let db = s.kubectl_json(&["get", "sts", "db", "-o", "json"]);
    assert_eq!(db["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        db["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
        0
    );
    let pi = s.kubectl_json(&["get", "job", "pi", "-o", "json"]);
    assert_eq!(pi["spec"]["backoffLimit"], 6);
    assert_eq!(pi["spec"]["completionMode"], "NonIndexed");
    let uid = pi["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        pi["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    let hello = s.kubectl_json(&["get", "cj", "hello", "-o", "json"]);
    assert_eq!(hello["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(hello["spec"]["successfulJobsHistoryLimit"], 3);

    // One table per kind, in the order asked for, with Kubernetes' columns.
    let out = s.kubectl_ok(&["get", "deploy,rs,ds,sts,job,cj"]);
    let blocks: Vec<&str> = out.split("\n\n").filter(|b| !b.trim().is_empty()).collect();
    let want: [&[&str]; 6] = [
        &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        &[
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE",
            "SELECTOR",
            "AGE",
        ],
        &["NAME", "READY", "AGE"],
        &["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        &[
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE",
        ],
    ];
    assert_eq!(blocks.len(), want.len(), "{out}");
    for (block, columns) in blocks.iter().zip(want) {
        assert_eq!(header(block), columns, "{out}");
    }
    let names: Vec<String> = blocks
        .iter()
        .flat_map(|b| table(b))
        .map(|row| cell(&row, "NAME").to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "deployment.apps/web",
            "replicaset.apps/cache",
            "daemonset.apps/agent",
            "statefulset.apps/db",
            "job.batch/pi",
            "cronjob.batch/hello"
        ],
        "{out}"
    );

    let rows = get_rows(&s, &["get", "deploy", "web", "-o", "wide"]);
    assert_eq!(cell(&rows[0], "READY"), "0/1", "{rows:?}");
    assert_eq!(cell(&rows[0], "UP-TO-DATE"), "0", "{rows:?}");
    assert_eq!(cell(&rows[0], "IMAGES"), "nginx:1.26", "{rows:?}");
    assert_eq!(cell(&rows[0], "SELECTOR"), "app=web", "{rows:?}");
    let rows = get_rows(&s, &["get", "rs", "cache", "-o", "wide"]);
    assert_eq!(cell(&rows[0], "DESIRED"), "2", "{rows:?}");
    assert_eq!(cell(&rows[0], "CURRENT"), "0", "{rows:?}");
    assert_eq!(cell(&rows[0], "SELECTOR"), "app in (cache)", "{rows:?}");
    let ds = s.kubectl_ok(&["get", "ds", "agent"]);
    assert!(ds.contains("kubernetes.io/os=linux"), "{ds}");
    let rows = get_rows(&s, &["get", "sts", "db"]);
    assert_eq!(cell(&rows[0], "READY"), "0/1", "{rows:?}");
    let rows = get_rows(&s, &["get", "job", "pi"]);
    assert_eq!(cell(&rows[0], "STATUS"), "Running", "{rows:?}");
    assert_eq!(cell(&rows[0], "COMPLETIONS"), "0/1", "{rows:?}");
    let rows = get_rows(&s, &["get", "cj", "hello"]);
    assert_eq!(cell(&rows[0], "SCHEDULE"), "*/5 * * * *", "{rows:?}");
    assert_eq!(cell(&rows[0], "SUSPEND"), "False", "{rows:?}");
    assert_eq!(cell(&rows[0], "ACTIVE"), "0", "{rows:?}");
    let crs = s.kubectl(&["get", "controllerrevisions"]);
    assert!(
        crs.status.success(),
        "{}",
        String::from_utf8_lossy(&crs.stderr)
    );

    let all = s.kubectl_ok(&["get", "all"]);
    for name in [
        "deployment.apps/web",
        "replicaset.apps/cache",
        "daemonset.apps/agent",
        "statefulset.apps/db",
        "job.batch/pi",
        "cronjob.batch/hello",
    ] {
        assert!(all.contains(name), "{name} in\n{all}");
    }
}

#[test]
fn kubectl_scales_and_sets_images_and_bad_workloads_get_422() {
    let s = Server::start(Options::default());
    let deployment = WORKLOADS.split("---").next().unwrap();
    create(&s, "web", deployment);
    let generation = |s: &Server| {
        s.kubectl_ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
    };
    assert_eq!(generation(&s), "1");

    // A merge patch of the scale subresource.
    s.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]);
    let replicas = s.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "3");
    assert_eq!(generation(&s), "2");
    let rows = get_rows(&s, &["get", "deploy", "web"]);
    assert_eq!(cell(&rows[0], "READY"), "0/3", "{rows:?}");
    // With a precondition kubectl reads the Scale and PUTs it back.
    s.kubectl_ok(&[
        "scale",
        "deployment",
        "web",
        "--current-replicas=3",
        "--replicas=4",
    ]);
    let scale: Value = s.kubectl_json(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]);
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=web");
    let err = refused(
        &s,
        &[
            "scale",
            "deployment",
            "web",
            "--current-replicas=1",
            "--replicas=5",
        ],
    );
    assert!(err.contains("Expected replicas to be 1, was 4"), "{err}");

    // The template's containers merge by name: the port stays.
    s.kubectl_ok(&["set", "image", "deployment/web", "web=nginx:1.27"]);
    let web = s.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
    let container = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(container["ports"][0]["containerPort"], 80);
    assert_eq!(web["metadata"]["generation"], 4);
    // Labels alone leave the generation as it is.
    s.kubectl_ok(&["label", "deploy", "web", "tier=front"]);
    assert_eq!(generation(&s), "4");

    let err = refused(
        &s,
        &[
            "patch",
            "deploy",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"selector":{"matchLabels":{"app":"web","v":"2"}},"template":{"metadata":{"labels":{"v":"2"}}}}}"#,
        ],
    );
    assert!(
        err.contains("spec.selector: Invalid value") && err.contains("field is immutable"),
        "{err}"
    );

    let cases = [
        (
            "a Deployment whose selector does not select its template",
            "/apis/apps/v1/namespaces/default/deployments",
            r#"{"metadata":{"name":"bad"},"spec":{"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"other"}},"spec":{"containers":[{"name":"web","image":"nginx"}]}}}}"#,
            "spec.template.metadata.labels",
        ),
        (
            "a Deployment without a selector",
            "/apis/apps/v1/namespaces/default/deployments",
            r#"{"metadata":{"name":"bad"},"spec":{"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"web","image":"nginx"}]}}}}"#,
            "spec.selector",
        ),
        (
            "a Job whose pods restart Always",
            "/apis/batch/v1/namespaces/default/jobs",
            r#"{"metadata":{"name":"bad"},"spec":{"template":{"spec":{"restartPolicy":"Always","containers":[{"name":"a","image":"busybox"}]}}}}"#,
            "spec.template.spec.restartPolicy",
        ),
        (
            "a CronJob with a bad schedule",
            "/apis/batch/v1/namespaces/default/cronjobs",
            r#"{"metadata":{"name":"bad"},"spec":{"schedule":"every minute","jobTemplate":{"spec":{"template":{"spec":{"restartPolicy":"Never","containers":[{"name":"a","image":"busybox"}]}}}}}}"#,
            "spec.schedule",
        ),
    ];
    for (what, path, body, field) in cases {
        let r = s.post_json(path, body);
        assert_eq!(r.status, Some(422), "{what}: {}", r.body);
        let status = r.json();
        let fields: Vec<&str> = status["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["field"].as_str())
            .collect();
        assert_eq!(fields, [field], "{what}: {}", r.body);
    }
    // kubectl prints the cause.
    let job = s.dir().join("job.yaml");
    std::fs::write(
        &job,
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: always\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        image: busybox\n",
    )
    .unwrap();
    let err = refused(&s, &["create", "-f", &job.display().to_string()]);
    assert!(
        err.contains("spec.template.spec.restartPolicy: Unsupported value: \"Always\""),
        "{err}"
    );
}
