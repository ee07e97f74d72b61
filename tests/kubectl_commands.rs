//! Every everyday kubectl command against a fresh server, with kubectl 1.32's default flags:
//! each must succeed and print nothing on stderr (no warnings, no "unable to decode", no
//! fallbacks), as against a Kubernetes cluster. What each prints is checked where a user would
//! look at it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use common::{COMMAND_TIMEOUT, Options, Server};

/// Runs kubectl and requires success with a silent stderr; returns stdout.
fn quiet(s: &Server, args: &[&str]) -> String {
    checked(args, s.kubectl(args))
}

fn checked(args: &[&str], out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl {} failed ({}): {stderr}\nstdout: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr, "", "kubectl {} printed on stderr", args.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn everyday_kubectl_commands_work_with_default_flags_and_say_nothing_on_stderr() {
    let s = Server::start(Options::default());
    let dir = s.dir().to_owned();

    // create …
    quiet(&s, &["create", "namespace", "shop"]);
    quiet(
        &s,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx:1.27",
            "--replicas=2",
            "-n",
            "shop",
        ],
    );
    fs::write(dir.join("app.properties"), "mode=fast\nlevel=3\n").expect("write a file");
    let from_file = format!("--from-file={}", dir.join("app.properties").display());
    quiet(
        &s,
        &["create", "configmap", "app", &from_file, "-n", "shop"],
    );
    quiet(
        &s,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=hunter2",
            "-n",
            "shop",
        ],
    );
    quiet(
        &s,
        &[
            "create",
            "job",
            "once",
            "--image=busybox",
            "-n",
            "shop",
            "--",
            "true",
        ],
    );
    quiet(
        &s,
        &[
            "create",
            "cronjob",
            "nightly",
            "--image=busybox",
            "--schedule=0 3 * * *",
            "-n",
            "shop",
            "--",
            "true",
        ],
    );
    quiet(&s, &["create", "serviceaccount", "robot", "-n", "shop"]);
    quiet(
        &s,
        &[
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=configmaps",
            "-n",
            "shop",
        ],
    );
    quiet(
        &s,
        &[
            "create",
            "rolebinding",
            "robot-reads",
            "--role=reader",
            "--serviceaccount=shop:robot",
            "-n",
            "shop",
        ],
    );
    quiet(
        &s,
        &[
            "create",
            "clusterrole",
            "node-reader",
            "--verb=get",
            "--resource=nodes",
        ],
    );
    quiet(
        &s,
        &[
            "create",
            "clusterrolebinding",
            "robot-nodes",
            "--clusterrole=node-reader",
            "--serviceaccount=shop:robot",
        ],
    );
    quiet(
        &s,
        &[
            "create",
            "poddisruptionbudget",
            "web",
            "--selector=app=web",
            "--min-available=1",
            "-n",
            "shop",
        ],
    );
    quiet(
        &s,
        &["expose", "deployment", "web", "--port=80", "-n", "shop"],
    );
    let yaml = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\n  namespace: shop\nspec:\n  selector:\n    matchLabels: {app: agent}\n  template:\n    metadata:\n      labels: {app: agent}\n    spec:\n      containers:\n      - {name: agent, image: busybox}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: shop\nspec:\n  serviceName: db\n  replicas: 1\n  selector:\n    matchLabels: {app: db}\n  template:\n    metadata:\n      labels: {app: db}\n    spec:\n      containers:\n      - {name: db, image: busybox}\n---\napiVersion: v1\nkind: ReplicationController\nmetadata:\n  name: old\n  namespace: shop\nspec:\n  replicas: 1\n  selector: {app: old}\n  template:\n    metadata:\n      labels: {app: old}\n    spec:\n      containers:\n      - {name: old, image: busybox}\n---\napiVersion: apps/v1\nkind: ControllerRevision\nmetadata:\n  name: agent-1\n  namespace: shop\nrevision: 1\ndata: {}\n";
    let file = dir.join("more.yaml");
    fs::write(&file, yaml).expect("write a manifest");
    quiet(&s, &["apply", "-f", &file.display().to_string()]);

    // … change …
    quiet(
        &s,
        &["scale", "deployment", "web", "--replicas=3", "-n", "shop"],
    );
    quiet(
        &s,
        &[
            "set",
            "image",
            "deployment/web",
            "nginx=nginx:1.28",
            "-n",
            "shop",
        ],
    );
    quiet(
        &s,
        &["label", "deployment", "web", "tier=front", "-n", "shop"],
    );
    quiet(
        &s,
        &[
            "annotate",
            "deployment",
            "web",
            "owner=shop-team",
            "-n",
            "shop",
        ],
    );
    // `kubectl edit` with an editor that raises the replicas in the file it is given.
    let editor = dir.join("editor.sh");
    fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/replicas: 3/replicas: 4/' \"$1\"\n",
    )
    .expect("write the editor");
    fs::set_permissions(&editor, fs::Permissions::from_mode(0o755)).expect("chmod");
    let args = ["edit", "deployment", "web", "-n", "shop"];
    let mut edit = s.kubectl_command(&s.kubeconfig(), &args);
    edit.env("EDITOR", &editor);
    let out = checked(&args, common::run(&mut edit, COMMAND_TIMEOUT));
    assert!(out.contains("deployment.apps/web edited"), "{out}");
    let d = s.kubectl_json(&["get", "deploy", "web", "-n", "shop", "-o", "json"]);
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.28"
    );
    assert_eq!(d["metadata"]["labels"]["tier"], "front");
    assert_eq!(d["metadata"]["annotations"]["owner"], "shop-team");

    // … read, in every output format.
    for format in ["yaml", "json", "wide", "name"] {
        quiet(&s, &["get", "deployments", "-n", "shop", "-o", format]);
    }
    assert_eq!(
        quiet(
            &s,
            &[
                "get",
                "deploy",
                "web",
                "-n",
                "shop",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}"
            ]
        ),
        "nginx:1.28"
    );
    let cols = quiet(
        &s,
        &[
            "get",
            "deploy",
            "-n",
            "shop",
            "-o",
            "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas",
        ],
    );
    assert!(
        cols.lines().any(|l| l.split_whitespace().eq(["web", "4"])),
        "{cols}"
    );
    let labelled = quiet(
        &s,
        &[
            "get",
            "deploy",
            "-n",
            "shop",
            "--show-labels",
            "-l",
            "tier=front",
        ],
    );
    assert!(labelled.contains("tier=front"), "{labelled}");
    let all = quiet(&s, &["get", "all", "-n", "shop"]);
    for kind in [
        "deployment.apps/web",
        "replicationcontroller/old",
        "service/web",
        "daemonset.apps/agent",
        "statefulset.apps/db",
        "cronjob.batch/nightly",
        "job.batch/once",
    ] {
        assert!(all.contains(kind), "get all lacks {kind}:\n{all}");
    }
    let explained = quiet(&s, &["explain", "deployment.spec"]);
    assert!(explained.contains("replicas"), "{explained}");
    let resources = quiet(&s, &["api-resources"]);
    assert!(resources.contains("deployments"), "{resources}");
    let versions = quiet(&s, &["api-versions"]);
    assert!(
        versions.contains("apps/v1") && versions.contains("events.k8s.io/v1"),
        "{versions}"
    );

    // describe, for every kind served (namespaced ones in `shop`, where they exist).
    let node = s.node_name().to_owned();
    for (kind, name, namespaced) in [
        ("deployment", "web", true),
        ("replicaset", "", true),
        ("pod", "", true),
        ("service", "web", true),
        ("endpoints", "web", true),
        ("endpointslice", "", true),
        ("configmap", "app", true),
        ("secret", "db", true),
        ("serviceaccount", "robot", true),
        ("job", "once", true),
        ("cronjob", "nightly", true),
        ("daemonset", "agent", true),
        ("statefulset", "db", true),
        ("replicationcontroller", "old", true),
        ("controllerrevision", "", true),
        ("role", "reader", true),
        ("rolebinding", "robot-reads", true),
        ("poddisruptionbudget", "web", true),
        ("event", "", true),
        ("lease", "", false),
        ("namespace", "shop", false),
        ("node", node.as_str(), false),
        ("clusterrole", "node-reader", false),
        ("clusterrolebinding", "robot-nodes", false),
    ] {
        let mut args = vec!["describe", kind];
        if !name.is_empty() {
            args.push(name);
        }
        if namespaced {
            args.extend(["-n", "shop"]);
        } else if kind == "lease" {
            args.extend(["-n", "kube-system"]);
        }
        let out = quiet(&s, &args);
        assert!(
            !out.trim().is_empty(),
            "kubectl {} printed nothing",
            args.join(" ")
        );
    }
    // The Deployment's events are in its description.
    let described = quiet(&s, &["describe", "deployment", "web", "-n", "shop"]);
    assert!(described.contains("ScalingReplicaSet"), "{described}");

    // wait, for a condition and for a deletion.
    quiet(
        &s,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("node/{node}"),
            "--timeout=30s",
        ],
    );
    quiet(
        &s,
        &["delete", "configmap", "app", "-n", "shop", "--wait=false"],
    );
    quiet(
        &s,
        &[
            "wait",
            "--for=delete",
            "configmap/app",
            "-n",
            "shop",
            "--timeout=30s",
        ],
    );

    // delete with each cascade.
    quiet(
        &s,
        &[
            "delete",
            "deployment",
            "web",
            "-n",
            "shop",
            "--cascade=orphan",
        ],
    );
    let rs = quiet(
        &s,
        &["get", "rs", "-n", "shop", "-l", "app=web", "-o", "name"],
    );
    assert!(!rs.trim().is_empty(), "orphaned ReplicaSets stay");
    quiet(
        &s,
        &[
            "delete",
            "rs",
            "-n",
            "shop",
            "-l",
            "app=web",
            "--cascade=foreground",
        ],
    );
    quiet(
        &s,
        &[
            "delete",
            "statefulset",
            "db",
            "-n",
            "shop",
            "--cascade=background",
        ],
    );
    quiet(&s, &["delete", "namespace", "shop"]);
    let out = s.kubectl(&["get", "namespace", "shop"]);
    assert!(!out.status.success(), "the namespace is gone");
}
