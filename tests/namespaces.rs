//! Namespace deletion as Kubernetes does it, with a real server and the real kubectl: a
//! deleted namespace turns `Terminating`, refuses new content (403 with the
//! `NamespaceTerminating` cause), is emptied by the namespace controller — object finalizers
//! honoured and reported in its conditions — and goes once nothing is left, which
//! `kubectl delete ns` waits for.

mod common;

use std::time::{Duration, Instant};

use common::{Options, Server, create, refused, wait_until};
use serde_json::Value;

/// Longest `kubectl delete ns` may take for a namespace of a few objects and pods.
const DELETE_BOUND: Duration = Duration::from_secs(30);

fn content(ns: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: c, image: "busybox:1.36"}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}}}
data: {{mode: fast}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: flags, namespace: {ns}}}
data: {{beta: "on"}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: token, namespace: {ns}}}
stringData: {{token: s3cret}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      containers: [{{name: c, image: "busybox:1.36"}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: batch, namespace: {ns}}}
spec:
  parallelism: 2
  completions: 50
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: c, image: "busybox:1.36"}}]
"#
    )
}

/// What `kubectl get all,cm,secret -n <ns>` lists, one `kind/name` a line.
fn everything(s: &Server, ns: &str) -> Vec<String> {
    let out = s.kubectl_ok(&["get", "all,cm,secret", "-n", ns, "-o", "name"]);
    out.lines().map(str::to_owned).collect()
}

fn pods_bound(s: &Server, ns: &str) -> usize {
    let list = s.kubectl_json(&["get", "pods", "-n", ns, "-o", "json"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        })
        .count()
}

fn condition<'a>(ns: &'a Value, kind: &str) -> Option<&'a Value> {
    ns.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

#[test]
fn kubectl_delete_namespace_waits_until_its_deployment_pods_and_config_are_gone() {
    let s = Server::start(Options::default());
    s.kubectl_ok(&["create", "namespace", "shop"]);
    create(&s, "shop", &content("shop"));
    wait_until(
        "the Deployment's 3 pods, the DaemonSet's and the Job's 2 are bound to the server's node",
        Duration::from_secs(30),
        || pods_bound(&s, "shop") == 6,
    );
    let before = everything(&s, "shop");
    assert!(
        before.len() >= 9,
        "pods, rs, deploy, svc, 2 cm, secret: {before:?}"
    );

    let watch = s.watch(&["namespace", "shop"]);
    let start = Instant::now();
    s.kubectl_ok(&["delete", "namespace", "shop", "--timeout=45s"]);
    let took = start.elapsed();
    eprintln!("kubectl delete namespace shop returned after {took:?}");
    assert!(took < DELETE_BOUND, "deleting took {took:?}");
    // Before it went, the namespace was Terminating, with its deletion marked.
    let terminating = watch.next(
        |ns| ns["status"]["phase"] == "Terminating",
        "the namespace Terminating",
    );
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());
    watch.stop();

    let gone = refused(&s, &["get", "namespace", "shop"]);
    assert!(gone.contains("NotFound"), "{gone}");
    assert_eq!(everything(&s, "shop"), Vec::<String>::new());
    // The controllers whose pods went with the namespace neither retried creating new ones
    // nor logged each refusal while it terminated.
    let log = s.log();
    let retried: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reconcile failed") && l.contains("being terminated"))
        .collect();
    assert!(retried.is_empty(), "{retried:#?}");

    // The same name again is a new, empty namespace (but for the cluster CA's ConfigMap,
    // published in every namespace, as on Kubernetes).
    s.kubectl_ok(&["create", "namespace", "shop"]);
    let fresh: Vec<String> = everything(&s, "shop")
        .into_iter()
        .filter(|o| o != "configmap/kube-root-ca.crt")
        .collect();
    assert_eq!(fresh, Vec::<String>::new());
    let ns = s.kubectl_json(&["get", "namespace", "shop", "-o", "json"]);
    assert_eq!(ns["status"]["phase"], "Active");
    // A Service of the same name gets an address again (the old one's was released).
    create(&s, "shop-again", &content("shop"));
    wait_until(
        "the new workloads' pods are bound",
        Duration::from_secs(30),
        || pods_bound(&s, "shop") == 6,
    );
}

#[test]
fn an_object_with_a_finalizer_keeps_its_namespace_terminating_until_it_is_removed() {
    let s = Server::start(Options::default());
    s.kubectl_ok(&["create", "namespace", "held"]);
    create(
        &s,
        "held",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: keeper, namespace: held, finalizers: [example.com/hold]}}
spec:
  containers: [{{name: c, image: "busybox:1.36"}}]
---
{}"#,
            content("held")
        ),
    );

    s.kubectl_ok(&["delete", "namespace", "held", "--wait=false"]);
    let out = s.kubectl_ok(&["get", "namespace", "held", "--no-headers"]);
    assert!(out.contains("Terminating"), "kubectl get ns: {out}");

    // Nothing new may join it: kubectl prints the 403 as Kubernetes words it.
    let err = refused(
        &s,
        &[
            "create",
            "configmap",
            "late",
            "-n",
            "held",
            "--from-literal=a=b",
        ],
    );
    assert!(
        err.contains(
            "configmaps \"late\" is forbidden: unable to create new content in namespace held because it is being terminated"
        ),
        "{err}"
    );
    let reply = s.post_json(
        "/api/v1/namespaces/held/configmaps",
        r#"{"metadata": {"name": "late"}}"#,
    );
    assert_eq!(reply.status, Some(403), "{}", reply.body);
    let status = reply.json();
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["details"]["causes"][0]["reason"], "NamespaceTerminating",
        "{status}"
    );

    // Everything else goes; the pod stays, named in the namespace's conditions.
    let mut ns = Value::Null;
    wait_until(
        "the conditions name the pod and its finalizer",
        Duration::from_secs(30),
        || {
            ns = s.kubectl_json(&["get", "namespace", "held", "-o", "json"]);
            condition(&ns, "NamespaceFinalizersRemaining").is_some_and(|c| c["status"] == "True")
                && everything(&s, "held") == ["pod/keeper"]
        },
    );
    assert_eq!(
        condition(&ns, "NamespaceContentRemaining").unwrap()["message"],
        "Some resources are remaining: pods. has 1 resource instances"
    );
    assert_eq!(
        condition(&ns, "NamespaceFinalizersRemaining").unwrap()["message"],
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    );
    assert_eq!(
        condition(&ns, "NamespaceDeletionContentFailure").unwrap()["reason"],
        "ContentDeleted"
    );
    let describe = s.kubectl_ok(&["describe", "namespace", "held"]);
    assert!(describe.contains("SomeFinalizersRemain"), "{describe}");
    // It stays while the finalizer does.
    std::thread::sleep(Duration::from_secs(3));
    let out = s.kubectl_ok(&["get", "namespace", "held", "--no-headers"]);
    assert!(out.contains("Terminating"), "kubectl get ns: {out}");

    // Only `finalize` may drop the namespace's own finalizer.
    s.kubectl_ok(&[
        "patch",
        "namespace",
        "held",
        "--type=merge",
        "-p",
        r#"{"spec":{"finalizers":[]}}"#,
    ]);
    let ns = s.kubectl_json(&["get", "namespace", "held", "-o", "json"]);
    assert_eq!(ns["spec"]["finalizers"], serde_json::json!(["kubernetes"]));

    // The finalizer removed, the pod goes and the namespace after it.
    s.kubectl_ok(&[
        "patch",
        "pod",
        "keeper",
        "-n",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let start = Instant::now();
    s.kubectl_ok(&["wait", "--for=delete", "namespace/held", "--timeout=30s"]);
    eprintln!(
        "the namespace went {:?} after its last finalizer",
        start.elapsed()
    );
    assert_eq!(everything(&s, "held"), Vec::<String>::new());
}

#[test]
fn kubectl_replace_raw_finalize_lets_a_stuck_namespace_go() {
    let s = Server::start(Options::default());
    s.kubectl_ok(&["create", "namespace", "stuck"]);
    create(
        &s,
        "stuck",
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: keeper, namespace: stuck, finalizers: [example.com/hold]}
"#,
    );
    s.kubectl_ok(&["delete", "namespace", "stuck", "--wait=false"]);
    let mut ns = Value::Null;
    wait_until(
        "the namespace reports the held ConfigMap",
        Duration::from_secs(30),
        || {
            ns = s.kubectl_json(&["get", "namespace", "stuck", "-o", "json"]);
            condition(&ns, "NamespaceContentRemaining").is_some_and(|c| {
                c["message"] == "Some resources are remaining: configmaps. has 1 resource instances"
            })
        },
    );
    // What operators do with a namespace stuck on a finalizer nobody will remove: PUT it to
    // `finalize` without its own. Nothing else in the body is taken.
    ns["spec"]["finalizers"] = serde_json::json!([]);
    ns["metadata"]["labels"]["changed"] = serde_json::json!("yes");
    let path = s.dir().join("stuck.json");
    std::fs::write(&path, ns.to_string()).unwrap();
    let out = s.kubectl_ok(&[
        "replace",
        "--raw",
        "/api/v1/namespaces/stuck/finalize",
        "-f",
        path.to_str().unwrap(),
    ]);
    let answered: Value = serde_json::from_str(&out).unwrap();
    assert!(
        answered["metadata"]["labels"].get("changed").is_none(),
        "{answered}"
    );
    s.kubectl_ok(&["wait", "--for=delete", "namespace/stuck", "--timeout=10s"]);
}
