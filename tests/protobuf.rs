//! kubectl's typed `create` commands (and `expose`) send Kubernetes protobuf, not JSON. Each
//! one here runs with default flags against a fresh server, must succeed without a word on
//! stderr, and must store the object users expect to read back with `get -o json`.

mod common;

use std::fs;

use common::{Options, Server};
use serde_json::{Value, json};

/// Runs kubectl, requires success and an empty stderr, and returns stdout.
fn quiet(s: &Server, args: &[&str]) -> String {
    let out = s.kubectl(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl {}: {}\n{stderr}",
        args.join(" "),
        out.status
    );
    assert_eq!(stderr, "", "kubectl {} complained", args.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get(s: &Server, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    let out = quiet(s, &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}\n{out}"))
}

#[test]
fn workload_commands_send_protobuf_that_is_stored_as_users_expect() {
    let s = Server::start(Options::default());
    quiet(
        &s,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx:1.27",
            "--replicas=2",
        ],
    );
    let d = get(&s, &["deployment", "web"]);
    assert_eq!(d["spec"]["replicas"], 2, "{d}");
    assert_eq!(d["spec"]["selector"]["matchLabels"], json!({"app": "web"}));
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:1.27", "{d}");
    assert_eq!(pod["spec"]["containers"][0]["name"], "nginx");
    // Go writes every non-pointer field; its zero values must not land as data.
    assert!(d["metadata"].get("generateName").is_none(), "{d}");
    assert!(d["metadata"]["creationTimestamp"].is_string(), "{d}");

    // `--replicas=0` is an explicit zero, not "unset, default 1".
    quiet(
        &s,
        &[
            "create",
            "deployment",
            "idle",
            "--image=nginx:1.27",
            "--replicas=0",
        ],
    );
    assert_eq!(get(&s, &["deployment", "idle"])["spec"]["replicas"], 0);

    quiet(
        &s,
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8080",
        ],
    );
    let svc = get(&s, &["service", "web"]);
    assert_eq!(svc["spec"]["selector"], json!({"app": "web"}), "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80, "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080, "{svc}");
    assert!(svc["spec"]["ports"][0].get("nodePort").is_none(), "{svc}");

    quiet(
        &s,
        &[
            "create",
            "job",
            "once",
            "--image=busybox:1.36",
            "--",
            "echo",
            "hi",
        ],
    );
    let job = get(&s, &["job", "once"]);
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "busybox:1.36", "{job}");
    assert_eq!(c["command"], json!(["echo", "hi"]), "{job}");
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");

    quiet(
        &s,
        &[
            "create",
            "cronjob",
            "tick",
            "--image=busybox:1.36",
            "--schedule=*/5 * * * *",
        ],
    );
    let cj = get(&s, &["cronjob", "tick"]);
    assert_eq!(cj["spec"]["schedule"], "*/5 * * * *", "{cj}");
    let c = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "busybox:1.36", "{cj}");

    quiet(
        &s,
        &[
            "create",
            "poddisruptionbudget",
            "web",
            "--selector=app=web",
            "--min-available=1",
        ],
    );
    let pdb = get(&s, &["pdb", "web"]);
    assert_eq!(pdb["spec"]["minAvailable"], 1, "{pdb}");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        json!({"app": "web"})
    );
    quiet(
        &s,
        &[
            "create",
            "pdb",
            "half",
            "--selector=app=web",
            "--max-unavailable=50%",
        ],
    );
    assert_eq!(get(&s, &["pdb", "half"])["spec"]["maxUnavailable"], "50%");
}

#[test]
fn config_and_access_commands_send_protobuf_that_is_stored_as_users_expect() {
    let s = Server::start(Options::default());
    quiet(&s, &["create", "namespace", "shop"]);
    assert_eq!(get(&s, &["namespace", "shop"])["status"]["phase"], "Active");

    let file = s.dir().join("app.conf");
    fs::write(&file, "mode=fast\n").unwrap();
    let from_file = format!("--from-file={}", file.display());
    quiet(
        &s,
        &[
            "create",
            "configmap",
            "app",
            "-n",
            "shop",
            &from_file,
            "--from-literal=level=3",
        ],
    );
    let cm = get(&s, &["configmap", "app", "-n", "shop"]);
    assert_eq!(
        cm["data"],
        json!({"app.conf": "mode=fast\n", "level": "3"}),
        "{cm}"
    );

    quiet(
        &s,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=hunter2",
        ],
    );
    let secret = get(&s, &["secret", "db"]);
    assert_eq!(
        secret["data"],
        json!({"password": "aHVudGVyMg=="}),
        "{secret}"
    );
    assert_eq!(secret["type"], "Opaque");

    quiet(
        &s,
        &["create", "service", "clusterip", "api", "--tcp=80:8080"],
    );
    let svc = get(&s, &["service", "api"]);
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["port"], 80, "{svc}");
    assert_eq!(port["targetPort"], 8080, "{svc}");
    assert_eq!(port["name"], "80-8080", "{svc}");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert!(port.get("nodePort").is_none(), "{svc}");

    quiet(&s, &["create", "serviceaccount", "robot"]);
    assert_eq!(
        get(&s, &["serviceaccount", "robot"])["metadata"]["name"],
        "robot"
    );

    quiet(
        &s,
        &[
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods",
        ],
    );
    let role = get(&s, &["role", "reader"]);
    assert_eq!(role["rules"][0]["verbs"], json!(["get", "list"]), "{role}");
    assert_eq!(role["rules"][0]["resources"], json!(["pods"]), "{role}");

    quiet(
        &s,
        &[
            "create",
            "rolebinding",
            "robot-reads",
            "--role=reader",
            "--serviceaccount=default:robot",
        ],
    );
    let rb = get(&s, &["rolebinding", "robot-reads"]);
    assert_eq!(rb["roleRef"]["name"], "reader", "{rb}");
    assert_eq!(rb["roleRef"]["kind"], "Role");
    assert_eq!(
        rb["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "robot", "namespace": "default"}),
        "{rb}"
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
    let cr = get(&s, &["clusterrole", "node-reader"]);
    assert_eq!(cr["rules"][0]["verbs"], json!(["get"]), "{cr}");
}
