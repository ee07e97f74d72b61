//! OpenAPI and server-side field validation through the real kubectl with its default flags:
//! `apply` and `create` of real manifests validate without `--validate=false` and print
//! nothing on stderr, unknown fields are refused (or warned about with `--validate=warn`)
//! naming the field, re-applies merge as kubectl computed from the schemas, and `explain`
//! prints the kinds' descriptions.

mod common;

use std::fs;

use common::{Server, cell, get_rows, refused};
use serde_json::Value;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web
  namespace: shop
data:
  mode: fast
---
apiVersion: v1
kind: Secret
metadata:
  name: web
  namespace: shop
stringData:
  password: hunter2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
        env:
        - name: MODE
          value: fast
        - name: LEVEL
          value: "3"
        resources:
          limits:
            memory: 64Mi
            cpu: 500m
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  namespace: shop
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
      - name: agent
        image: busybox
        command: ["sleep", "3600"]
---
apiVersion: batch/v1
kind: Job
metadata:
  name: once
  namespace: shop
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: once
        image: busybox
        command: ["true"]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
  namespace: shop
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: nightly
            image: busybox
            command: ["true"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: reader
  namespace: shop
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: web-reads
  namespace: shop
subjects:
- kind: ServiceAccount
  name: web
  namespace: shop
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: reader
"#;

#[test]
fn apply_with_default_flags_validates_on_the_server_and_prints_nothing_on_stderr() {
    let s = Server::start(common::Options::default());
    let file = write(&s, "all", MANIFEST);
    let out = s.kubectl(&["apply", "-f", &file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl apply: {stderr}");
    assert_eq!(stderr, "", "kubectl apply printed on stderr");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "namespace/shop created",
        "deployment.apps/web created",
        "cronjob.batch/nightly created",
        "rolebinding.rbac.authorization.k8s.io/web-reads created",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    // The same manifest again: unchanged, and still quiet.
    let out = s.kubectl(&["apply", "-f", &file]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web unchanged"));

    // An edited version: a new image, one env var fewer, one more port. kubectl computes a
    // strategic merge patch from the served merge keys; the server must merge it to exactly
    // the edited manifest.
    let edited = MANIFEST
        .replace("image: nginx:1.27", "image: nginx:1.28")
        .replace("        - name: LEVEL\n          value: \"3\"\n", "")
        .replace(
            "        - containerPort: 80\n",
            "        - containerPort: 80\n        - containerPort: 443\n",
        );
    let file = write(&s, "edited", &edited);
    // `kubectl diff` (a server-side dry run of the same patch) shows the change, exit 1.
    let out = s.kubectl(&["diff", "-f", &file]);
    let diff = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{diff}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(diff.contains("+        image: nginx:1.28"), "{diff}");
    assert!(diff.contains("-        - name: LEVEL"), "{diff}");
    let out = s.kubectl(&["apply", "-f", &file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl apply (edited): {stderr}");
    assert_eq!(stderr, "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web configured"));
    let d = s.kubectl_json(&["get", "deploy", "web", "-n", "shop", "-o", "json"]);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:1.28", "{c}");
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(env, ["MODE"], "{c}");
    let ports: Vec<i64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert_eq!(ports, [80, 443], "{c}");
    assert_eq!(c["resources"]["limits"]["memory"], "64Mi");
    assert_eq!(d["metadata"]["generation"], 2, "{}", d["metadata"]);

    let rows = get_rows(&s, &["get", "cronjobs", "-n", "shop"]);
    assert_eq!(cell(&rows[0], "SCHEDULE"), "0 3 * * *");
}

#[test]
fn unknown_fields_are_refused_by_default_and_warned_about_with_validate_warn() {
    let s = Server::start(common::Options::default());
    let bad = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: typo
spec:
  selector:
    matchLabels:
      app: typo
  foo: 1
  template:
    metadata:
      labels:
        app: typo
    spec:
      containers:
      - name: web
        image: nginx
        imagePullPolicyy: Always
"#;
    let file = write(&s, "bad", bad);
    let err = refused(&s, &["apply", "-f", &file]);
    assert!(err.contains(r#"unknown field "spec.foo""#), "{err}");
    assert!(
        err.contains(r#"unknown field "spec.template.spec.containers[0].imagePullPolicyy""#),
        "{err}"
    );
    assert!(err.contains("strict decoding error"), "{err}");
    let err = refused(&s, &["create", "-f", &file]);
    assert!(err.contains(r#"unknown field "spec.foo""#), "{err}");
    let out = s.kubectl(&["get", "deploy", "typo"]);
    assert!(!out.status.success(), "a refused Deployment was stored");

    // Warn: stored, with one warning per field.
    let out = s.kubectl(&["apply", "--validate=warn", "-f", &file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"Warning: unknown field "spec.foo""#),
        "{stderr}"
    );
    assert!(stderr.contains("imagePullPolicyy"), "{stderr}");
    s.kubectl_ok(&["get", "deploy", "typo"]);

    // An update with an unknown field is refused as well (a patch, from apply).
    let good = bad
        .replace("  foo: 1\n", "")
        .replace("        imagePullPolicyy: Always\n", "");
    let file = write(&s, "good", &good);
    s.kubectl_ok(&["apply", "-f", &file]);
    let worse = good.replace("  selector:\n", "  replicaz: 3\n  selector:\n");
    let file = write(&s, "worse", &worse);
    let err = refused(&s, &["apply", "-f", &file]);
    assert!(err.contains(r#"unknown field "spec.replicaz""#), "{err}");
    // kubectl patch sends no fieldValidation: the server's default, Warn, as in Kubernetes.
    let out = s.kubectl(&[
        "patch",
        "deploy",
        "typo",
        "--type=merge",
        "-p",
        r#"{"spec":{"paused":true,"pausd":true}}"#,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), r#"Warning: unknown field "spec.pausd""#);
    // A JSON patch asking for Strict is refused, naming the field where it would go.
    let reply = s.curl(&[
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/json-patch+json",
        "--data-binary",
        r#"[{"op":"add","path":"/spec/template/spec/containers/0/imagePullPolicyy","value":"Always"}]"#,
        &format!(
            "{}/apis/apps/v1/namespaces/default/deployments/typo?fieldValidation=Strict",
            s.url()
        ),
    ]);
    assert_eq!(reply.status, Some(400), "{}", reply.body);
    assert!(
        reply.body.contains(
            r#"strict decoding error: unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""#
        ),
        "{}",
        reply.body
    );
    // A field named twice in a JSON body: Strict refuses it naming the field, the default
    // stores the last value and warns (a parser keeps the last; a user meant one of them).
    let twice = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"twice"},"data":{"a":"1","a":"2"}}"#;
    let post = |query: &str| {
        s.curl(&[
            "-i",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            twice,
            &format!("{}/api/v1/namespaces/default/configmaps{query}", s.url()),
        ])
    };
    let reply = post("?fieldValidation=Strict");
    assert!(
        reply
            .body
            .contains(r#"strict decoding error: duplicate field \"data.a\""#),
        "{}",
        reply.body
    );
    let reply = post("");
    assert!(
        reply.body.starts_with("HTTP/1.1 201") || reply.body.starts_with("HTTP/2 201"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .to_lowercase()
            .contains(r#"warning: 299 - "duplicate field \"data.a\"""#),
        "{}",
        reply.body
    );
    assert_eq!(
        s.kubectl_ok(&["get", "cm", "twice", "-o", "jsonpath={.data.a}"]),
        "2"
    );
    // Ignore: accepted silently.
    let out = s.kubectl(&["apply", "--validate=false", "-f", &file]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn create_with_validation_and_api_resources() {
    let s = Server::start(common::Options::default());
    let file = write(
        &s,
        "cm",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  a: b\n",
    );
    let out = s.kubectl(&["create", "-f", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let bad = write(
        &s,
        "cm-bad",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app2\n  lables:\n    a: b\n",
    );
    let err = refused(&s, &["create", "-f", &bad]);
    assert!(err.contains(r#"unknown field "metadata.lables""#), "{err}");

    let rows = get_rows(&s, &["api-resources"]);
    for (name, group) in [
        ("deployments", "apps"),
        ("configmaps", ""),
        ("leases", "coordination.k8s.io"),
    ] {
        assert!(
            rows.iter()
                .any(|r| cell(r, "NAME") == name && cell(r, "APIVERSION").starts_with(group)),
            "{name}: {rows:?}"
        );
    }
}

#[test]
fn explain_prints_the_descriptions() {
    let s = Server::start(common::Options::default());
    let out = s.kubectl(&["explain", "deployment.spec"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(stdout.contains("GROUP:      apps"), "{stdout}");
    assert!(stdout.contains("KIND:       Deployment"), "{stdout}");
    assert!(
        stdout.contains("DeploymentSpec is the specification of the desired behavior"),
        "{stdout}"
    );
    assert!(stdout.contains("replicas\t<integer>"), "{stdout}");
    assert!(
        stdout.contains("template\t<PodTemplateSpec> -required-")
            || stdout.contains("template\t<PodTemplateSpec>"),
        "{stdout}"
    );

    let out = s.kubectl_ok(&["explain", "pod.spec.containers"]);
    assert!(out.contains("FIELD: containers <[]Container>"), "{out}");
    assert!(
        out.contains("List of containers belonging to the pod."),
        "{out}"
    );
    assert!(out.contains("image\t<string>"), "{out}");

    let out = s.kubectl_ok(&["explain", "cronjobs.spec.schedule"]);
    assert!(out.contains("Cron format"), "{out}");
    let out = s.kubectl(&["explain", "deployment.spec.nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

/// kubectl validates a `kind: List` file itself, from `/openapi/v2` (protobuf): the file
/// `kubectl get -o yaml` writes must apply again with the default flags.
#[test]
fn a_list_file_applies_with_default_flags_through_openapi_v2() {
    let s = Server::start(common::Options::default());
    let file = write(&s, "all", MANIFEST);
    s.kubectl_ok(&["apply", "-f", &file]);
    let listed = s.kubectl_ok(&["get", "deploy,cm,svc", "-n", "shop", "-o", "yaml"]);
    assert!(listed.contains("kind: List"), "{listed}");
    let file = write(&s, "listed", &listed);
    let out = s.kubectl(&["apply", "-f", &file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl apply of a List: {stderr}");
    // kubectl warns that the objects were not applied by `apply` before; nothing else.
    for line in stderr.lines() {
        assert!(
            line.contains("missing the kubectl.kubernetes.io/last-applied-configuration")
                || line.contains("patched automatically"),
            "{stderr}"
        );
    }

    // kubectl's own validation against the v2 schemas names the unknown field.
    let bad = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: listed\n    namespace: shop\n  dta:\n    a: b\n";
    let file = write(&s, "bad-list", bad);
    let err = refused(&s, &["apply", "-f", &file]);
    assert!(err.contains("unknown field \"dta\""), "{err}");

    let out = s.kubectl_ok(&[
        "explain",
        "deployment.spec.replicas",
        "--output=plaintext-openapiv2",
    ]);
    assert!(out.contains("Number of desired pods."), "{out}");
}

#[test]
fn documents_are_cached_by_hash_and_etag() {
    let s = Server::start(common::Options::default());
    let index: Value =
        serde_json::from_str(&s.curl(&[&format!("{}/openapi/v3", s.url())]).body).unwrap();
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    let reply = s.curl(&["-i", &format!("{}{url}", s.url())]);
    assert_eq!(reply.status, Some(200), "{}", reply.body);
    assert!(
        reply.body.contains("immutable"),
        "{}",
        &reply.body[..400.min(reply.body.len())]
    );
    let etag = reply
        .body
        .lines()
        .find_map(|l| {
            l.strip_prefix("etag: ")
                .or_else(|| l.strip_prefix("ETag: "))
        })
        .expect("an ETag")
        .trim()
        .to_owned();
    let again = s.curl(&[
        "-i",
        "-H",
        &format!("If-None-Match: {etag}"),
        &format!("{}/openapi/v3/apis/apps/v1", s.url()),
    ]);
    assert_eq!(again.status, Some(304), "{}", again.body);
    assert_eq!(
        s.curl(&[&format!("{}/openapi/v3/apis/apps/v9", s.url())])
            .status,
        Some(404)
    );
}

fn write(s: &Server, name: &str, yaml: &str) -> String {
    let path = s.dir().join(format!("{name}.yaml"));
    fs::write(&path, yaml).unwrap();
    path.display().to_string()
}
