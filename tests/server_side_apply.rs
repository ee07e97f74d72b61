//! Server-side apply through the real kubectl (`apply --server-side`, as Flux, Argo CD and
//! Helm 4 apply) and through a client sending YAML itself: field ownership in managedFields,
//! conflicts naming the other manager, `--force-conflicts`, fields dropped from a manager's
//! configuration leaving the object, re-applies that write nothing, dry runs and diffs.

mod common;

use std::fs;

use common::Server;
use serde_json::Value;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
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
    tier: front
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
  - name: http
    port: 80
  - name: dns
    port: 53
    protocol: UDP
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
          - name: report
            image: busybox
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
"#;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
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
      containers:
      - name: web
        image: nginx:1.27
"#;

fn write(s: &Server, name: &str, yaml: &str) -> String {
    let path = s.dir().join(format!("{name}.yaml"));
    fs::write(&path, yaml).expect("write manifest");
    path.display().to_string()
}

/// The managers of an object and their operations, from `--show-managed-fields`.
fn managers(s: &Server, what: &[&str]) -> Vec<String> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
    let obj = s.kubectl_json(&args);
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}:{}",
                e["manager"].as_str().unwrap_or("?"),
                e["operation"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// Whether `manager`'s entry owns the field at `trie` (`["f:spec", "f:replicas"]`).
fn owns(obj: &Value, manager: &str, trie: &[&str]) -> bool {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["manager"] == manager)
        .any(|e| {
            trie.iter()
                .try_fold(&e["fieldsV1"], |node, k| node.get(*k))
                .is_some()
        })
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_managers_conflict_until_one_forces_and_updates_take_ownership() {
    let s = Server::start(common::Options::default());
    let v1 = write(&s, "v1", DEPLOYMENT);
    let out = s.kubectl_ok(&["apply", "--server-side", "--field-manager=alice", "-f", &v1]);
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let d = s.kubectl_json(&[
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    assert!(owns(&d, "alice", &["f:spec", "f:replicas"]), "{d}");
    let web = r#"k:{"name":"web"}"#;
    assert!(
        owns(
            &d,
            "alice",
            &[
                "f:spec",
                "f:template",
                "f:spec",
                "f:containers",
                web,
                "f:image"
            ]
        ),
        "containers are keyed by name: {d}"
    );
    // Defaults belong to nobody.
    assert!(!owns(&d, "alice", &["f:spec", "f:strategy"]), "{d}");
    assert_eq!(managers(&s, &["deploy", "web"]), ["alice:Apply"]);

    // bob wants 3 replicas: alice owns that field.
    let v3 = write(&s, "v3", &DEPLOYMENT.replace("replicas: 2", "replicas: 3"));
    let out = s.kubectl(&["apply", "--server-side", "--field-manager=bob", "-f", &v3]);
    assert!(!out.status.success(), "a conflict must fail");
    let err = stderr(&out);
    assert!(
        err.contains(
            r#"Apply failed with 1 conflict: conflict with "alice" using apps/v1: .spec.replicas"#
        ),
        "{err}"
    );
    // kubectl recognised a conflict (409, reason Conflict) and gave its advice.
    assert!(err.contains("--force-conflicts"), "{err}");
    assert_eq!(
        s.kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );

    let out = s.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=bob",
        "--force-conflicts",
        "-f",
        &v3,
    ]);
    assert!(out.contains("serverside-applied"), "{out}");
    let d = s.kubectl_json(&[
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert!(owns(&d, "bob", &["f:spec", "f:replicas"]), "{d}");
    assert!(!owns(&d, "alice", &["f:spec", "f:replicas"]), "{d}");
    // What both apply with one value is shared.
    assert!(owns(
        &d,
        "alice",
        &[
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            web,
            "f:image"
        ]
    ));
    assert!(owns(
        &d,
        "bob",
        &[
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            web,
            "f:image"
        ]
    ));

    // An ordinary patch takes the field it changes; bob's next apply conflicts with it.
    s.kubectl_ok(&["patch", "deploy", "web", "-p", r#"{"spec":{"replicas":5}}"#]);
    assert_eq!(
        managers(&s, &["deploy", "web"]),
        ["alice:Apply", "bob:Apply", "kubectl-patch:Update"]
    );
    let out = s.kubectl(&["apply", "--server-side", "--field-manager=bob", "-f", &v3]);
    assert!(
        stderr(&out).contains(r#"conflict with "kubectl-patch" using apps/v1: .spec.replicas"#),
        "{}",
        stderr(&out)
    );

    // alice stops applying the label `app` on the Deployment and the container: bob still
    // applies them, so they stay; when bob stops too, they go.
    // (alice leaves replicas to the patcher too.)
    let fewer = DEPLOYMENT
        .replace("  labels:\n    app: web\nspec:", "spec:")
        .replace("  replicas: 2\n", "");
    let fewer = write(&s, "fewer", &fewer);
    s.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=alice",
        "-f",
        &fewer,
    ]);
    let labels = s.kubectl_json(&["get", "deploy", "web", "-o", "jsonpath={.metadata.labels}"]);
    assert_eq!(labels["app"], "web", "bob still owns it: {labels}");
    let bob_fewer = write(
        &s,
        "bob-fewer",
        &DEPLOYMENT
            .replace("  labels:\n    app: web\nspec:", "spec:")
            .replace("replicas: 2", "replicas: 5"),
    );
    s.kubectl_ok(&[
        "apply",
        "--server-side",
        "--field-manager=bob",
        "-f",
        &bob_fewer,
    ]);
    let d = s.kubectl_json(&["get", "deploy", "web", "-o", "json"]);
    assert_eq!(
        d["metadata"].get("labels"),
        None,
        "nobody applies labels: {d}"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
}

#[test]
fn a_manifest_applies_server_side_re_applies_without_writes_and_merges_edits() {
    let s = Server::start(common::Options::default());
    let file = write(&s, "all", MANIFEST);
    let out = s.kubectl(&["apply", "--server-side", "-f", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "kubectl printed on stderr");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "namespace/shop serverside-applied",
        "configmap/web serverside-applied",
        "secret/web serverside-applied",
        "deployment.apps/web serverside-applied",
        "service/web serverside-applied",
        "cronjob.batch/nightly serverside-applied",
        "role.rbac.authorization.k8s.io/reader serverside-applied",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert_eq!(
        s.kubectl_ok(&[
            "get",
            "secret",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.password}"
        ]),
        "aHVudGVyMg=="
    );
    // Service ports are keyed by port and protocol, as Kubernetes keys them.
    let svc = s.kubectl_json(&[
        "get",
        "svc",
        "web",
        "-n",
        "shop",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    assert!(
        owns(
            &svc,
            "kubectl",
            &["f:spec", "f:ports", r#"k:{"port":53,"protocol":"UDP"}"#]
        ),
        "{svc}"
    );

    // The same manifest again: nothing is written (watchers and revisions stay quiet).
    let versions = || {
        s.kubectl_ok(&[
            "get",
            "cm,secret,deploy,svc,cronjob,role",
            "-n",
            "shop",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.resourceVersion} {end}",
        ])
    };
    let before = versions();
    let out = s.kubectl(&["apply", "--server-side", "-f", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(versions(), before, "a re-apply of the same manifest wrote");

    // An edit: new image, one env var fewer, one label fewer, another port.
    let edited = MANIFEST
        .replace("image: nginx:1.27", "image: nginx:1.28")
        .replace("        - name: LEVEL\n          value: \"3\"\n", "")
        .replace("    tier: front\n", "")
        .replace(
            "        - containerPort: 80\n",
            "        - containerPort: 80\n        - containerPort: 443\n",
        );
    let edited = write(&s, "edited", &edited);
    // A server-side dry run and a diff show it, and store nothing.
    s.kubectl_ok(&["apply", "--server-side", "--dry-run=server", "-f", &edited]);
    assert_eq!(versions(), before, "a dry run stored something");
    let out = s.kubectl(&["diff", "--server-side", "-f", &edited]);
    let diff = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{diff}{}", stderr(&out));
    assert!(diff.contains("+        image: nginx:1.28"), "{diff}");
    assert!(diff.contains("-    tier: front"), "{diff}");

    s.kubectl_ok(&["apply", "--server-side", "-f", &edited]);
    let d = s.kubectl_json(&["get", "deploy", "web", "-n", "shop", "-o", "json"]);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:1.28", "{c}");
    let env: Vec<&str> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(env, ["MODE"], "{c}");
    let ports: Vec<i64> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert_eq!(ports, [80, 443], "{c}");
    assert_eq!(d["metadata"]["labels"].get("tier"), None, "{d}");
    assert_eq!(d["metadata"]["labels"]["app"], "web");
    assert_eq!(d["metadata"]["generation"], 2);
}

#[test]
fn apply_requests_of_other_clients_yaml_bodies_and_bad_requests() {
    let s = Server::start(common::Options::default());
    let url = format!("{}/api/v1/namespaces/default/configmaps/cfg", s.url());
    let apply = |query: &str, body: &str| {
        s.curl(&[
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/apply-patch+yaml",
            "--data-binary",
            body,
            &format!("{url}?{query}"),
        ])
    };
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  a: \"1\"\n";
    // As Helm and client-go send it: YAML, a field manager; the first apply creates.
    let r = apply("fieldManager=helm", yaml);
    assert_eq!(r.status, Some(201), "{}", r.body);
    let r = apply("fieldManager=helm", &yaml.replace("\"1\"", "\"2\""));
    assert_eq!(r.status, Some(200), "{}", r.body);
    let cm: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(cm["data"]["a"], "2");
    assert_eq!(cm["metadata"]["managedFields"][0]["manager"], "helm");

    let r = apply("", yaml);
    assert_eq!(r.status, Some(400), "{}", r.body);
    assert!(
        r.body.contains("fieldManager: Required value"),
        "{}",
        r.body
    );
    let r = apply("fieldManager=helm", "data: [unclosed");
    assert_eq!(r.status, Some(400), "{}", r.body);
    assert!(r.body.contains("not valid YAML"), "{}", r.body);
    let r = apply(
        "fieldManager=helm",
        &yaml.replace("name: cfg", "name: other"),
    );
    assert_eq!(r.status, Some(400), "{}", r.body);
    assert!(
        r.body.contains("does not match the name on the URL"),
        "{}",
        r.body
    );
    let r = apply(
        "fieldManager=helm",
        &yaml.replace("kind: ConfigMap", "kind: Secret"),
    );
    assert_eq!(r.status, Some(400), "{}", r.body);

    // `force` belongs to apply only.
    let r = s.curl(&[
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/merge-patch+json",
        "--data-binary",
        r#"{"data":{"b":"1"}}"#,
        &format!("{url}?force=true"),
    ]);
    assert_eq!(r.status, Some(422), "{}", r.body);
    assert!(
        r.body.contains("may not be specified for non-apply patch"),
        "{}",
        r.body
    );

    // A second manager's conflicting value: 409 with one FieldManagerConflict cause.
    let r = apply("fieldManager=flux", &yaml.replace("\"1\"", "\"3\""));
    assert_eq!(r.status, Some(409), "{}", r.body);
    let status: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(
        status["details"]["causes"][0]["reason"],
        "FieldManagerConflict"
    );
    assert_eq!(status["details"]["causes"][0]["field"], ".data.a");
    assert!(
        status["details"]["causes"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"conflict with "helm""#)),
        "{status}"
    );
}
