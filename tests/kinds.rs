//! The core kinds real manifests use, through the real kubectl: ConfigMaps, Secrets,
//! ServiceAccounts, Services, Endpoints, Events and Pods with Kubernetes' defaults,
//! validation and `kubectl get` columns; `kubectl get all`; bodies of the wrong kind refused.

mod common;

use std::time::Duration;

use common::{Options, Server, cell, create, get_rows, refused};
use serde_json::Value;

#[test]
fn configmaps_secrets_and_service_accounts_work_with_kubectl() {
    let s = Server::start(Options::default());
    create(
        &s,
        "cm",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  mode: fast\n  level: \"3\"\n",
    );
    let rows = get_rows(&s, &["get", "cm", "app"]);
    assert_eq!(cell(&rows[0], "DATA"), "2", "{rows:?}");
    create(
        &s,
        "secret",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: hunter2\n",
    );
    let rows = get_rows(&s, &["get", "secrets", "db"]);
    assert_eq!(cell(&rows[0], "TYPE"), "Opaque");
    assert_eq!(cell(&rows[0], "DATA"), "1");
    let data = s.kubectl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    assert_eq!(data, "aHVudGVyMg==");
    // Every namespace has a `default` ServiceAccount, new ones too.
    s.kubectl_ok(&["create", "namespace", "shop"]);
    for ns in ["default", "kube-system", "shop"] {
        let rows = get_rows(&s, &["get", "sa", "-n", ns]);
        assert!(
            rows.iter().any(|r| cell(r, "NAME") == "default"),
            "{ns}: {rows:?}"
        );
    }
    // An immutable ConfigMap's data stays as it is.
    s.kubectl_ok(&[
        "patch",
        "cm",
        "app",
        "--type=merge",
        "-p",
        r#"{"immutable":true}"#,
    ]);
    let err = refused(
        &s,
        &[
            "patch",
            "cm",
            "app",
            "--type=merge",
            "-p",
            r#"{"data":{"mode":"slow"}}"#,
        ],
    );
    assert!(err.contains("data: Forbidden"), "{err}");
}

#[test]
fn pods_get_defaults_and_services_their_columns_and_get_all_lists_both() {
    let s = Server::start(Options::default());
    s.kubectl_ok(&["run", "web", "--image=nginx", "--port=80"]);
    let pod: Value = s.kubectl_json(&["get", "pod", "web", "-o", "json"]);
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(spec["schedulerName"], "default-scheduler");
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
    assert_eq!(spec["tolerations"].as_array().map(Vec::len), Some(2));
    // Only the image of a pod's containers may change.
    s.kubectl_ok(&["set", "image", "pod/web", "web=nginx:1.27"]);
    let err = refused(
        &s,
        &[
            "patch",
            "pod",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/restartPolicy","value":"Never"}]"#,
        ],
    );
    assert!(err.contains("spec: Forbidden"), "{err}");

    create(
        &s,
        "svc",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    let rows = get_rows(&s, &["get", "svc", "web", "-o", "wide"]);
    assert_eq!(cell(&rows[0], "TYPE"), "ClusterIP", "{rows:?}");
    assert_eq!(cell(&rows[0], "PORT(S)"), "80/TCP", "{rows:?}");
    assert_eq!(cell(&rows[0], "SELECTOR"), "app=web", "{rows:?}");

    let all = s.kubectl_ok(&["get", "all"]);
    assert!(
        all.contains("pod/web") && all.contains("service/web"),
        "{all}"
    );
    let events = s.kubectl(&["get", "events"]);
    assert!(
        events.status.success(),
        "{}",
        String::from_utf8_lossy(&events.stderr)
    );
    let ep = s.kubectl(&["get", "endpoints"]);
    assert!(
        ep.status.success(),
        "{}",
        String::from_utf8_lossy(&ep.stderr)
    );
}

#[test]
fn invalid_objects_get_kubernetes_status_codes_naming_the_field() {
    let s = Server::start(Options::default());
    let cases = [
        (
            "a Node posted as a Namespace",
            "/api/v1/namespaces",
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"sneaky"}}"#,
            400,
            "does not match the endpoint",
        ),
        (
            "a pod without containers",
            "/api/v1/namespaces/default/pods",
            r#"{"metadata":{"name":"empty"},"spec":{}}"#,
            422,
            "spec.containers: Required value",
        ),
        (
            "a container without an image",
            "/api/v1/namespaces/default/pods",
            r#"{"metadata":{"name":"noimage"},"spec":{"containers":[{"name":"a"}]}}"#,
            422,
            "spec.containers[0].image: Required value",
        ),
        (
            "a service named like a number",
            "/api/v1/namespaces/default/services",
            r#"{"metadata":{"name":"1web"},"spec":{"ports":[{"port":80}]}}"#,
            422,
            "metadata.name",
        ),
        (
            "a service port out of range",
            "/api/v1/namespaces/default/services",
            r#"{"metadata":{"name":"web"},"spec":{"ports":[{"port":70000}]}}"#,
            422,
            "spec.ports[0].port",
        ),
        (
            "a secret that is not base64",
            "/api/v1/namespaces/default/secrets",
            r#"{"metadata":{"name":"s"},"data":{"k":"not base64!"}}"#,
            422,
            "data[\"k\"]",
        ),
    ];
    for (what, path, body, code, names) in cases {
        let r = s.post_json(path, body);
        assert_eq!(r.status, Some(code), "{what}: {}", r.body);
        let status = r.json();
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(names),
            "{what}: the Status names {names}: {}",
            r.body
        );
        if code == 422 {
            // kubectl prints an Invalid error from its causes.
            let fields: Vec<&str> = status["details"]["causes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["field"].as_str())
                .collect();
            assert!(
                !fields.is_empty(),
                "{what}: no causes for kubectl: {}",
                r.body
            );
        }
    }
    assert!(!s.kubectl(&["get", "namespace", "sneaky"]).status.success());
}

#[test]
fn rbac_policy_and_discovery_kinds_are_stored_validated_and_listed() {
    let s = Server::start(Options::default());
    create(
        &s,
        "rbac",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: reader\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n  verbs: [get, list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: read-pods\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: reader\nsubjects:\n- kind: ServiceAccount\n  name: default\n  namespace: default\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: health\nrules:\n- nonResourceURLs: [/healthz]\n  verbs: [get]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: web\nspec:\n  minAvailable: 1\n  selector:\n    matchLabels:\n      app: web\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-abc\naddressType: IPv4\nports:\n- port: 80\nendpoints:\n- addresses: [198.18.0.5]\n",
    );
    let rows = get_rows(&s, &["get", "rolebindings", "-o", "wide"]);
    assert_eq!(cell(&rows[0], "ROLE"), "Role/reader", "{rows:?}");
    assert_eq!(
        cell(&rows[0], "SERVICEACCOUNTS"),
        "default/default",
        "{rows:?}"
    );
    let rows = get_rows(&s, &["get", "pdb", "web"]);
    // (The table reader splits "MIN AVAILABLE" at the space.)
    assert_eq!(cell(&rows[0], "MIN"), "1", "{rows:?}");
    assert_eq!(cell(&rows[0], "MAX"), "N/A", "{rows:?}");
    // (The `kubernetes` Service's slice, listing the server, is there too.)
    let rows = get_rows(&s, &["get", "endpointslices", "web-abc"]);
    assert_eq!(cell(&rows[0], "ENDPOINTS"), "198.18.0.5", "{rows:?}");
    let rows = get_rows(&s, &["get", "clusterroles"]);
    assert!(rows.iter().any(|r| cell(r, "NAME") == "health"), "{rows:?}");
    // A binding's role is fixed once made.
    let err = refused(
        &s,
        &[
            "patch",
            "rolebinding",
            "read-pods",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"name":"writer"}}"#,
        ],
    );
    assert!(err.contains("roleRef"), "{err}");
    let resources = s.kubectl_ok(&["api-resources", "--no-headers"]);
    for kind in [
        "ClusterRoleBinding",
        "PodDisruptionBudget",
        "EndpointSlice",
        "ConfigMap",
    ] {
        assert!(
            resources.contains(kind),
            "api-resources lacks {kind}:\n{resources}"
        );
    }
}

#[test]
fn storage_kinds_get_defaults_the_default_class_and_kubectl_columns() {
    // The servers' own default class (`local-path`) is the default one here.
    let s = Server::start(Options::default());
    create(
        &s,
        "storage",
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: slow\nprovisioner: example.com/nfs\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n---\napiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: pv-1\nspec:\n  capacity:\n    storage: 2Gi\n  accessModes: [ReadWriteOnce, ReadOnlyMany]\n  hostPath:\n    path: /srv/pv-1\n",
    );
    let header = |args: &[&str]| {
        let out = s.kubectl_ok(args);
        out.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        header(&["get", "sc"]),
        [
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE"
        ]
    );
    let rows = get_rows(&s, &["get", "sc"]);
    assert_eq!(cell(&rows[0], "NAME"), "local-path (default)", "{rows:?}");
    assert_eq!(cell(&rows[0], "RECLAIMPOLICY"), "Delete", "{rows:?}");
    assert_eq!(
        cell(&rows[0], "VOLUMEBINDINGMODE"),
        "WaitForFirstConsumer",
        "{rows:?}"
    );
    assert_eq!(cell(&rows[0], "ALLOWVOLUMEEXPANSION"), "false", "{rows:?}");
    assert_eq!(cell(&rows[1], "VOLUMEBINDINGMODE"), "Immediate", "{rows:?}");

    assert_eq!(
        header(&["get", "pvc", "-o", "wide"]),
        [
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS",
            "MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE",
            "VOLUMEMODE"
        ]
    );
    let rows = get_rows(&s, &["get", "pvc", "-o", "wide"]);
    assert_eq!(cell(&rows[0], "STATUS"), "Pending", "{rows:?}");
    assert_eq!(cell(&rows[0], "STORAGECLASS"), "local-path", "{rows:?}");
    assert_eq!(
        cell(&rows[0], "VOLUMEATTRIBUTESCLASS"),
        "<unset>",
        "{rows:?}"
    );
    assert_eq!(cell(&rows[0], "VOLUMEMODE"), "Filesystem", "{rows:?}");
    let claim: Value =
        serde_json::from_str(&s.kubectl_ok(&["get", "pvc", "data", "-o", "json"])).unwrap();
    assert_eq!(
        claim["metadata"]["finalizers"],
        serde_json::json!(["kubernetes.io/pvc-protection"])
    );

    assert_eq!(
        header(&["get", "pv"]),
        [
            "NAME",
            "CAPACITY",
            "ACCESS",
            "MODES",
            "RECLAIM",
            "POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE"
        ]
    );
    // A new volume starts Pending; the PersistentVolume controller makes a free one Available.
    let mut rows = Vec::new();
    common::wait_until("pv-1 Available", std::time::Duration::from_secs(10), || {
        rows = get_rows(&s, &["get", "pv"]);
        cell(&rows[0], "STATUS") == "Available"
    });
    assert_eq!(cell(&rows[0], "CAPACITY"), "2Gi", "{rows:?}");
    assert_eq!(cell(&rows[0], "ACCESS"), "RWO,ROX", "{rows:?}");
    assert_eq!(cell(&rows[0], "RECLAIM"), "Retain", "{rows:?}");
    for args in [
        ["describe", "sc", "local-path"],
        ["describe", "pvc", "data"],
        ["describe", "pv", "pv-1"],
    ] {
        assert!(!s.kubectl_ok(&args).trim().is_empty(), "{args:?}");
    }

    // Kubernetes' causes, naming the field.
    let err = refused(
        &s,
        &[
            "patch",
            "sc",
            "slow",
            "--type=merge",
            "-p",
            r#"{"provisioner":"example.com/other"}"#,
        ],
    );
    assert!(
        err.contains("updates to provisioner are forbidden"),
        "{err}"
    );
    let err = refused(
        &s,
        &[
            "patch",
            "pvc",
            "data",
            "--type=merge",
            "-p",
            r#"{"spec":{"accessModes":["ReadWriteMany"]}}"#,
        ],
    );
    assert!(err.contains("spec is immutable after creation"), "{err}");
    let err = refused(
        &s,
        &[
            "patch",
            "pv",
            "pv-1",
            "--type=merge",
            "-p",
            r#"{"spec":{"hostPath":{"path":"/elsewhere"}}}"#,
        ],
    );
    assert!(err.contains("spec.persistentvolumesource"), "{err}");

    let resources = s.kubectl_ok(&["api-resources", "--no-headers"]);
    for (name, short) in [
        ("persistentvolumeclaims", "pvc"),
        ("persistentvolumes", "pv"),
        ("storageclasses", "sc"),
    ] {
        assert!(
            resources
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([name, short])),
            "api-resources lacks {name}:\n{resources}"
        );
    }
}

/// The stored bytes of the Secret `default/db`, read straight from the datastore.
fn stored_secret(s: &Server, db: Option<&common::db::TestDb>) -> Vec<u8> {
    const PATH: &str = "/registry/secrets/default/db";
    let hex = match db {
        None => {
            let file = s.data_dir().join("server/db/state.db");
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
                     print(c.execute('SELECT hex(value) FROM keelson_objects WHERE path=?', (sys.argv[2],)).fetchone()[0])",
                ])
                .arg(&file)
                .arg(PATH)
                .output()
                .expect("run python3");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
        Some(db) => db.query(&match db.db {
            common::db::Db::Postgres => {
                format!("SELECT encode(value, 'hex') FROM keelson_objects WHERE path = '{PATH}'")
            }
            common::db::Db::MariaDb => {
                format!("SELECT HEX(value) FROM keelson_objects WHERE path = '{PATH}'")
            }
        }),
    };
    hex::decode(hex.trim()).expect("the datastore returns hex")
}

fn secrets_are_encrypted_at_rest(db: Option<common::db::Db>) {
    let test_db = match db {
        Some(db) => match common::db::TestDb::new(db, "secretsenc") {
            Some(t) => Some(t),
            None => return,
        },
        None => None,
    };
    let mut opts = Options::default().flag("--secrets-encryption");
    if let Some(t) = &test_db {
        opts = opts.arg("--datastore-endpoint", &t.endpoint());
    }
    let s = Server::start(opts);
    // Applied, so kubectl's last-applied annotation carries the plaintext too.
    let path = s.dir().join("db.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: hunter2-plaintext\n",
    )
    .unwrap();
    s.kubectl_ok(&["apply", "-f", &path.display().to_string()]);
    let stored = stored_secret(&s, test_db.as_ref());
    assert!(
        stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "{:?}",
        String::from_utf8_lossy(&stored)
    );
    for plain in ["hunter2-plaintext", "aHVudGVyMi1wbGFpbnRleHQ", "password"] {
        assert!(
            !stored.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "the stored Secret holds {plain:?}"
        );
    }
    let data = s.kubectl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    assert_eq!(data, "aHVudGVyMi1wbGFpbnRleHQ=");
    // A ConfigMap stays plain JSON.
    create(
        &s,
        "cm",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n",
    );
}

#[test]
fn secrets_are_encrypted_at_rest_on_sqlite() {
    secrets_are_encrypted_at_rest(None);
}

#[test]
fn secrets_are_encrypted_at_rest_on_postgres() {
    secrets_are_encrypted_at_rest(Some(common::db::Db::Postgres));
}

#[test]
fn secrets_are_encrypted_at_rest_on_mariadb() {
    secrets_are_encrypted_at_rest(Some(common::db::Db::MariaDb));
}

#[test]
fn kubectl_follows_continue_tokens_through_small_pages() {
    let s = Server::start(Options::default());
    // Every namespace holds the cluster CA's ConfigMap (as on Kubernetes), published by a
    // controller just after start: waited for, so the pages below are the same every run.
    common::wait_until(
        "kube-root-ca.crt is published",
        Duration::from_secs(20),
        || {
            s.kubectl(&["get", "cm", "kube-root-ca.crt"])
                .status
                .success()
        },
    );
    let manifest: String = (0..7)
        .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: page-{i}\n---\n"))
        .collect();
    create(&s, "pages", &manifest);
    // kubectl asks for `limit=2` and follows `metadata.continue` to the end.
    let names = s.kubectl_ok(&["get", "cm", "--chunk-size=2", "-o", "name"]);
    let listed: Vec<&str> = names.lines().collect();
    let want: Vec<String> = std::iter::once("configmap/kube-root-ca.crt".to_owned())
        .chain((0..7).map(|i| format!("configmap/page-{i}")))
        .collect();
    assert_eq!(listed, want, "{names}");
    let first = s.curl(&[&format!(
        "{}/api/v1/namespaces/default/configmaps?limit=3",
        s.url()
    )]);
    let page = first.json();
    assert_eq!(
        page["items"].as_array().map(Vec::len),
        Some(3),
        "{}",
        first.body
    );
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token");
    let next = s.curl(&[&format!(
        "{}/api/v1/namespaces/default/configmaps?limit=3&continue={token}",
        s.url()
    )]);
    // kube-root-ca.crt, page-0 and page-1 were the first page.
    assert_eq!(
        next.json()["items"][0]["metadata"]["name"],
        "page-2",
        "{}",
        next.body
    );
}

#[test]
fn server_dry_run_validates_and_answers_but_stores_nothing() {
    let s = Server::start(Options::default());
    let path = s.dir().join("dry.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dry\ndata:\n  a: \"1\"\n",
    )
    .unwrap();
    let file = path.display().to_string();
    let out = s.kubectl_ok(&["apply", "--dry-run=server", "-f", &file]);
    assert!(out.contains("created (server dry run)"), "{out}");
    assert!(
        !s.kubectl(&["get", "cm", "dry"]).status.success(),
        "a dry run stored the object"
    );
    s.kubectl_ok(&["apply", "-f", &file]);
    let before = s.kubectl_json(&["get", "cm", "dry", "-o", "json"]);
    s.kubectl_ok(&[
        "patch",
        "cm",
        "dry",
        "--dry-run=server",
        "-p",
        r#"{"data":{"a":"2"}}"#,
    ]);
    s.kubectl_ok(&["delete", "cm", "dry", "--dry-run=server"]);
    let after = s.kubectl_json(&["get", "cm", "dry", "-o", "json"]);
    assert_eq!(
        after, before,
        "a dry-run patch or delete changed the object"
    );
    // Dry runs are checked like real writes.
    let bad = s.dir().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec: {}\n",
    )
    .unwrap();
    let err = refused(
        &s,
        &[
            "create",
            "--dry-run=server",
            "-f",
            &bad.display().to_string(),
        ],
    );
    assert!(err.contains("spec.containers"), "{err}");
}

#[test]
fn services_get_cluster_ips_and_node_ports_that_are_never_shared() {
    let s = Server::start(Options::default());
    // Every cluster has `kubernetes` at the first address of --service-cidr.
    let ip = s.kubectl_ok(&[
        "get",
        "svc",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(ip, "10.43.0.1");
    let svc = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{extra}  selector:\n    app: {name}\n  ports:\n  - port: 80\n"
        )
    };
    create(&s, "web", &svc("web", ""));
    create(&s, "edge", &svc("edge", "  type: NodePort\n"));
    let web = s.kubectl_json(&["get", "svc", "web", "-o", "json"]);
    let web_ip = web["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        web_ip.starts_with("10.43.") && web_ip != "10.43.0.1",
        "{web}"
    );
    let edge = s.kubectl_json(&["get", "svc", "edge", "-o", "json"]);
    let node_port = edge["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .unwrap_or_default();
    assert!((30000..=32767).contains(&node_port), "{edge}");
    assert_ne!(edge["spec"]["clusterIP"], web["spec"]["clusterIP"]);
    let rows = get_rows(&s, &["get", "svc", "edge"]);
    assert_eq!(
        cell(&rows[0], "PORT(S)"),
        format!("80:{node_port}/TCP"),
        "{rows:?}"
    );
    // An address or port in use is refused; once its Service is gone, it is free again.
    let path = s.dir().join("copy.yaml");
    std::fs::write(&path, svc("copy", &format!("  clusterIP: {web_ip}\n"))).unwrap();
    let file = path.display().to_string();
    let err = refused(&s, &["create", "-f", &file]);
    assert!(err.contains("already allocated"), "{err}");
    s.kubectl_ok(&["delete", "svc", "web"]);
    s.kubectl_ok(&["create", "-f", &file]);
    let copy = s.kubectl_ok(&["get", "svc", "copy", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(copy, web_ip);
}

#[test]
fn an_object_with_finalizers_waits_for_them_before_it_goes() {
    let s = Server::start(Options::default());
    create(
        &s,
        "held",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers:\n  - example.com/hold\n",
    );
    s.kubectl_ok(&["delete", "cm", "held", "--wait=false"]);
    let cm = s.kubectl_json(&["get", "cm", "held", "-o", "json"]);
    assert!(cm["metadata"]["deletionTimestamp"].is_string(), "{cm}");
    // No new finalizer while it is being deleted; the deletion mark is the server's.
    let err = refused(
        &s,
        &[
            "patch",
            "cm",
            "held",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/metadata/finalizers/-","value":"example.com/more"}]"#,
        ],
    );
    assert!(err.contains("no new finalizers"), "{err}");
    s.kubectl_ok(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    assert!(
        !s.kubectl(&["get", "cm", "held"]).status.success(),
        "the object outlived its last finalizer"
    );
}

#[test]
fn watches_can_send_initial_events_and_lists_honour_resource_version_match() {
    let s = Server::start(Options::default());
    create(
        &s,
        "w",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\n",
    );
    let url = |q: &str| format!("{}/api/v1/namespaces/default/configmaps?{q}", s.url());
    let r = s.curl(&[&url(
        "watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=2",
    )]);
    // The cluster CA's ConfigMap, which a controller publishes in every namespace, is not
    // this test's business.
    let events: Vec<_> = common::watch_events(&r.body)
        .into_iter()
        .filter(|e| e["object"]["metadata"]["name"] != "kube-root-ca.crt")
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["ADDED", "BOOKMARK"], "{}", r.body);
    assert_eq!(events[0]["object"]["metadata"]["name"], "watched");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // Initial events need bookmarks to say where they end.
    let r = s.curl(&[&url("watch=true&sendInitialEvents=true&timeoutSeconds=1")]);
    assert_eq!(r.status, Some(422), "{}", r.body);
    // An exact older revision cannot be listed; the current one and NotOlderThan can.
    let list = s.curl(&[&url("")]).json();
    let rv: i64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ok = s.curl(&[&url(&format!(
        "resourceVersion={rv}&resourceVersionMatch=Exact"
    ))]);
    assert_eq!(ok.status, Some(200), "{}", ok.body);
    let old = s.curl(&[&url(&format!(
        "resourceVersion={}&resourceVersionMatch=Exact",
        rv - 1
    ))]);
    assert_eq!(old.status, Some(410), "{}", old.body);
    let newer = s.curl(&[&url("resourceVersion=1&resourceVersionMatch=NotOlderThan")]);
    assert_eq!(newer.status, Some(200), "{}", newer.body);
    let bad = s.curl(&[&url("resourceVersionMatch=Sometimes")]);
    assert_eq!(bad.status, Some(400), "{}", bad.body);
}

#[test]
fn pages_of_a_large_list_hold_each_object_once_while_writes_go_on() {
    let s = Server::start(Options::default());
    common::bulk_create_configmaps(&s, "pg", 2500);
    // Writes while paging: new objects come and go, listed ones change.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let kubeconfig = s.kubeconfig();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let kubectl = |args: &[&str]| {
                    std::process::Command::new("kubectl")
                        .arg("--kubeconfig")
                        .arg(&kubeconfig)
                        .args(args)
                        .output()
                };
                let name = format!("aa-{i}");
                let _ = kubectl(&["create", "configmap", &name]);
                let _ = kubectl(&[
                    "label",
                    "configmap",
                    &format!("pg-{:05}", (i * 97) % 2500),
                    &format!("round={i}"),
                    "--overwrite",
                ]);
                let _ = kubectl(&["delete", "configmap", &name, "--wait=false"]);
                i += 1;
            }
        })
    };
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{}/api/v1/namespaces/default/configmaps?limit=100", s.url());
        if let Some(t) = &token {
            url.push_str(&format!("&continue={t}"));
        }
        let page = s.curl(&[&url]).json();
        pages += 1;
        for item in page["items"].as_array().into_iter().flatten() {
            *seen
                .entry(item["metadata"]["name"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => break,
        }
        // Give the writer room between pages.
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.join();
    for i in 0..2500 {
        let name = format!("pg-{i:05}");
        assert_eq!(seen.get(&name), Some(&1), "{name} in {pages} pages");
    }
    assert!(seen.values().all(|n| *n == 1), "no object twice");
    assert!(pages >= 25, "{pages} pages of 100");
}

#[test]
fn watches_get_bookmarks_on_an_idle_cluster_and_can_resume_from_them() {
    let s = Server::start(Options::default().arg("--watch-bookmark-interval", "1s"));
    let url = |q: &str| format!("{}/api/v1/namespaces/default/configmaps?{q}", s.url());
    let list = s.curl(&[&url("")]).json();
    let listed: i64 = list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("list resourceVersion");
    // Nothing changes for 3.5 s: bookmarks still come, each at the revision reached.
    let r = s.curl(&[&url(&format!(
        "watch=true&allowWatchBookmarks=true&resourceVersion={listed}&timeoutSeconds=3"
    ))]);
    let events = common::watch_events(&r.body);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        kinds.len() >= 2 && kinds.iter().all(|k| *k == "BOOKMARK"),
        "{}",
        r.body
    );
    let at: i64 = events[0]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("bookmark resourceVersion");
    assert!(at >= listed, "{at} < {listed}");
    assert_eq!(events[0]["object"]["kind"], "ConfigMap");
    // A change, then a watch resumed from the old bookmark sees it, and its next bookmark
    // is at or past the change.
    create(
        &s,
        "b",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: after-bookmark\n",
    );
    let r = s.curl(&[&url(&format!(
        "watch=true&allowWatchBookmarks=true&resourceVersion={at}&timeoutSeconds=2"
    ))]);
    let events = common::watch_events(&r.body);
    assert_eq!(events[0]["type"], "ADDED", "{}", r.body);
    assert_eq!(events[0]["object"]["metadata"]["name"], "after-bookmark");
    let changed: i64 = events[0]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("object resourceVersion");
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .unwrap_or_else(|| panic!("no bookmark in {}", r.body));
    let at: i64 = bookmark["object"]["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("bookmark resourceVersion");
    assert!(at >= changed, "bookmark {at} before the change {changed}");
}
