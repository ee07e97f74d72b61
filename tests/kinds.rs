//! The core kinds real manifests use, through the real kubectl: ConfigMaps, Secrets,
//! ServiceAccounts, Services, Endpoints, Events and Pods with Kubernetes' defaults,
//! validation and `kubectl get` columns; `kubectl get all`; bodies of the wrong kind refused.

mod common;

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
    let post = |path: &str, body: &str| {
        s.curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &format!("{}{path}", s.url()),
        ])
    };
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
        let r = post(path, body);
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
