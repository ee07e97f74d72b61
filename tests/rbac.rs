//! In-cluster API access from outside the admin's certificate: service account tokens from
//! the TokenRequest API (`kubectl create token`), accepted as bearer tokens, and RBAC deciding
//! what they may do — checked with the real kubectl and curl against a real server.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::pods::{
    IMAGE, Images, apply, available, kubectl, pod, server_with_runtime, wait_running,
};
use common::{Options, Reply, Server, wait_until};
use serde_json::Value;

/// How long RBAC and service account changes may take to reach the server's view (the
/// change feed polls about once a second).
const PROPAGATION: Duration = Duration::from_secs(10);

#[test]
fn a_service_account_token_lists_pods_only_where_a_role_binding_allows() {
    let s = Server::start(Options::default());
    s.kubectl_ok(&["create", "serviceaccount", "bot"]);
    let token = create_token(&s, &["bot"]);

    // The token: ES256 with a key id, Kubernetes' claims.
    let (header, claims) = decode(&token);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert!(
        header["kid"].as_str().is_some_and(|k| k.len() > 20),
        "{header}"
    );
    let sa = s.kubectl_json(&["get", "serviceaccount", "bot", "-o", "json"]);
    assert_eq!(
        claims["iss"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(claims["sub"], "system:serviceaccount:default:bot");
    assert_eq!(
        claims["aud"],
        serde_json::json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(claims["kubernetes.io"]["namespace"], "default");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "bot");
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        sa["metadata"]["uid"]
    );
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 3600, "Kubernetes' default lifetime: {claims}");
    assert_eq!(claims["nbf"], claims["iat"]);

    // Authenticated, but nothing granted yet beyond discovery.
    assert_eq!(bearer(&s, &token, "/api").status, Some(200));
    let r = bearer(&s, &token, "/api/v1/namespaces/default/pods");
    assert_eq!(r.status, Some(403), "{}", r.body);
    let status: Value = serde_json::from_str(&r.body).expect("a Status body");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        r#"pods is forbidden: User "system:serviceaccount:default:bot" cannot list resource "pods" in API group "" in the namespace "default""#
    );

    s.kubectl_ok(&[
        "create",
        "rolebinding",
        "bot-view",
        "--clusterrole=view",
        "--serviceaccount=default:bot",
    ]);
    wait_until(
        "the RoleBinding lets the token list pods",
        PROPAGATION,
        || bearer(&s, &token, "/api/v1/namespaces/default/pods").status == Some(200),
    );
    let r = bearer(&s, &token, "/api/v1/namespaces/default/pods");
    let list: Value = serde_json::from_str(&r.body).expect("a PodList");
    assert_eq!(list["kind"], "PodList", "{}", r.body);
    // Only in the binding's namespace; view does not read Secrets; no writes.
    for path in [
        "/api/v1/namespaces/kube-system/pods",
        "/api/v1/pods",
        "/api/v1/namespaces/default/secrets",
        "/api/v1/nodes",
    ] {
        assert_eq!(bearer(&s, &token, path).status, Some(403), "{path}");
    }
    let r = s.curl_anonymous(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-X",
        "DELETE",
        &format!("{}/api/v1/namespaces/default/serviceaccounts/bot", s.url()),
    ]);
    assert_eq!(r.status, Some(403), "{}", r.body);

    // kubectl auth can-i, for the account (impersonated by the admin) and as the account.
    let can = |kubeconfig: &Path, args: &[&str]| {
        let out = s.kubectl_with(kubeconfig, args);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let admin = s.kubeconfig();
    let as_bot = "--as=system:serviceaccount:default:bot";
    assert_eq!(
        can(&admin, &["auth", "can-i", "list", "pods", as_bot]),
        "yes"
    );
    assert_eq!(
        can(
            &admin,
            &["auth", "can-i", "list", "pods", "-n", "kube-system", as_bot]
        ),
        "no"
    );
    assert_eq!(
        can(&admin, &["auth", "can-i", "get", "secrets", as_bot]),
        "no"
    );
    assert_eq!(can(&admin, &["auth", "can-i", "delete", "nodes"]), "yes");
    let kubeconfig = token_kubeconfig(&s, &token);
    assert_eq!(can(&kubeconfig, &["auth", "can-i", "list", "pods"]), "yes");
    assert_eq!(
        can(
            &kubeconfig,
            &["auth", "can-i", "list", "pods", "-n", "kube-system"]
        ),
        "no"
    );
    assert_eq!(can(&kubeconfig, &["auth", "can-i", "create", "pods"]), "no");
    let list = can(&kubeconfig, &["auth", "can-i", "--list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );
    // The account may not impersonate others.
    let out = s.kubectl_with(&kubeconfig, &["get", "pods", "--as=system:admin"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot impersonate resource \"users\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl with the token: get works where allowed, is refused elsewhere.
    s.kubectl_ok(&["get", "pods"]);
    let out = s.kubectl_with(&kubeconfig, &["get", "pods"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.kubectl_with(&kubeconfig, &["get", "pods", "-n", "kube-system"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            r#"pods is forbidden: User "system:serviceaccount:default:bot" cannot list resource "pods" in API group "" in the namespace "kube-system""#
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl auth whoami, for the admin and for the token.
    let me = s.kubectl_json(&["auth", "whoami", "-o", "json"]);
    assert_eq!(me["status"]["userInfo"]["username"], "system:admin", "{me}");
    let out = s.kubectl_with(&kubeconfig, &["auth", "whoami", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me: Value = serde_json::from_slice(&out.stdout).expect("whoami JSON");
    assert_eq!(
        me["status"]["userInfo"]["username"],
        "system:serviceaccount:default:bot"
    );
    assert_eq!(
        me["status"]["userInfo"]["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );

    // Kubernetes' bounds on a requested lifetime, and a requested audience.
    let out = s.kubectl(&["create", "token", "bot", "--duration=5m"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vault = create_token(&s, &["bot", "--audience=vault", "--duration=20m"]);
    let (_, claims) = decode(&vault);
    assert_eq!(claims["aud"], serde_json::json!(["vault"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1200
    );
    // A token for another audience is no key to the API.
    assert_eq!(bearer(&s, &vault, "/api").status, Some(401));
}

#[test]
fn expired_tampered_and_orphaned_tokens_get_401() {
    let s = Server::start(Options::default().arg("--service-account-min-token-expiration", "1s"));
    s.kubectl_ok(&["create", "serviceaccount", "bot"]);
    s.kubectl_ok(&["create", "serviceaccount", "doomed"]);

    // Expired: a two-second token works, then is refused.
    let short = create_token(&s, &["bot", "--duration=2s"]);
    let issued = Instant::now();
    assert_eq!(bearer(&s, &short, "/api").status, Some(200));
    std::thread::sleep(Duration::from_secs(3).saturating_sub(issued.elapsed()));
    let r = bearer(&s, &short, "/api");
    assert_unauthorized(&r, "an expired token");

    // Tampered: another account's name under the old signature, or a signature cut short.
    let token = create_token(&s, &["bot"]);
    assert_eq!(bearer(&s, &token, "/api").status, Some(200));
    let parts: Vec<&str> = token.split('.').collect();
    let (_, mut claims) = decode(&token);
    claims["sub"] = "system:serviceaccount:kube-system:bot".into();
    claims["kubernetes.io"]["namespace"] = "kube-system".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_unauthorized(&bearer(&s, &forged, "/api"), "a changed payload");
    let cut = &token[..token.len() - 4];
    assert_unauthorized(&bearer(&s, cut, "/api"), "a cut signature");
    assert_unauthorized(&bearer(&s, "not-a-jwt", "/api"), "garbage");
    // A client certificate still wins over a bad token, as in Kubernetes.
    let r = s.curl(&[
        "-H",
        "Authorization: Bearer not-a-jwt",
        &format!("{}/api/v1/namespaces", s.url()),
    ]);
    assert_eq!(r.status, Some(200), "{}", r.body);

    // Orphaned: the account is deleted, and a new one of the same name is another account.
    let doomed = create_token(&s, &["doomed"]);
    assert_eq!(bearer(&s, &doomed, "/api").status, Some(200));
    s.kubectl_ok(&["delete", "serviceaccount", "doomed"]);
    wait_until(
        "the deleted account's token is refused",
        PROPAGATION,
        || bearer(&s, &doomed, "/api").status == Some(401),
    );
    s.kubectl_ok(&["create", "serviceaccount", "doomed"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_unauthorized(
        &bearer(&s, &doomed, "/api"),
        "a re-created account's old token",
    );
    let fresh = create_token(&s, &["doomed"]);
    assert_eq!(bearer(&s, &fresh, "/api").status, Some(200));

    // A token bound to a pod lives as long as the pod.
    s.kubectl_ok(&[
        "run",
        "holder",
        "--image=registry.invalid/none:1",
        "--restart=Never",
        "--overrides={\"spec\":{\"nodeName\":\"nowhere\"}}",
    ]);
    let bound = create_token(
        &s,
        &[
            "bot",
            "--bound-object-kind=Pod",
            "--bound-object-name=holder",
        ],
    );
    let (_, claims) = decode(&bound);
    let pod = s.kubectl_json(&["get", "pod", "holder", "-o", "json"]);
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "holder");
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"],
        pod["metadata"]["uid"]
    );
    assert_eq!(bearer(&s, &bound, "/api").status, Some(200));
    s.kubectl_ok(&["delete", "pod", "holder", "--grace-period=0", "--force"]);
    wait_until("the deleted pod's token is refused", PROPAGATION, || {
        bearer(&s, &bound, "/api").status == Some(401)
    });
}

#[test]
fn default_cluster_roles_exist_and_aggregate_labelled_roles() {
    let s = Server::start(Options::default());
    let binding = s.kubectl_json(&["get", "clusterrolebinding", "cluster-admin", "-o", "json"]);
    assert_eq!(binding["roleRef"]["name"], "cluster-admin");
    assert_eq!(binding["subjects"][0]["name"], "system:masters");
    for (name, group) in [
        ("system:discovery", "system:authenticated"),
        ("system:basic-user", "system:authenticated"),
        ("system:public-info-viewer", "system:unauthenticated"),
    ] {
        let b = s.kubectl_json(&["get", "clusterrolebinding", name, "-o", "json"]);
        assert!(
            b["subjects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|sub| sub["name"] == group),
            "{b}"
        );
    }
    let grants = |role: &str, resource: &str, verb: &str| {
        let r = s.kubectl_json(&["get", "clusterrole", role, "-o", "json"]);
        r["rules"].as_array().into_iter().flatten().any(|rule| {
            rule["resources"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|x| x == resource))
                && rule["verbs"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(|v| v == verb))
        })
    };
    wait_until("admin, edit and view are aggregated", PROPAGATION, || {
        grants("view", "pods", "list")
            && grants("edit", "pods", "create")
            && grants("edit", "pods", "list")
            && grants("admin", "roles", "create")
            && grants("admin", "pods", "list")
    });
    assert!(!grants("view", "secrets", "get"), "view reads no Secrets");
    assert!(!grants("edit", "roles", "create"), "edit grants no roles");

    // A user's role labelled for view lands in view, edit and admin.
    s.kubectl_ok(&[
        "create",
        "clusterrole",
        "widget-reader",
        "--verb=get",
        "--resource=configmaps",
    ]);
    s.kubectl_ok(&[
        "label",
        "clusterrole",
        "widget-reader",
        "rbac.authorization.k8s.io/aggregate-to-view=true",
    ]);
    wait_until("the labelled role is aggregated", PROPAGATION, || {
        let has = |role: &str| {
            let r = s.kubectl_json(&["get", "clusterrole", role, "-o", "json"]);
            r["rules"].as_array().into_iter().flatten().any(|rule| {
                rule["resources"] == serde_json::json!(["configmaps"])
                    && rule["verbs"] == serde_json::json!(["get"])
            })
        };
        has("view") && has("edit") && has("admin")
    });
}

/// A real runc pod gets its service account's token, the CA and its namespace at Kubernetes'
/// path, and the token works against the API from the host (needs root, runc and the test
/// registry's tools, as tests/pods.rs).
#[test]
fn a_pod_gets_a_bound_token_that_lists_pods_once_a_role_binding_allows() {
    if !available("a_pod_gets_a_bound_token_that_lists_pods_once_a_role_binding_allows") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    s.kubectl_ok(&["create", "serviceaccount", "robot"]);
    let spec = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "serviceAccountName": "robot",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", "sleep 3600"]}],
        },
    });
    apply(&s, &spec.to_string());
    // What admission added: the projected volume, mounted read-only at Kubernetes' path.
    let p = pod(&s, "client");
    let volume = p["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kube-api-access-"))
        })
        .unwrap_or_else(|| panic!("no kube-api-access volume: {}", p["spec"]))
        .clone();
    let name = volume["name"].as_str().unwrap().to_owned();
    assert_eq!(name.len(), "kube-api-access-".len() + 5, "{name}");
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3607
    );
    assert_eq!(
        p["spec"]["containers"][0]["volumeMounts"][0],
        serde_json::json!({"name": name, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    );
    wait_running(&s, "client");

    // The files, inside the container and under the pod's volume directory on the node.
    let read = |file: &str| {
        let (code, out, err) = kubectl(
            &s,
            &[
                "exec",
                "client",
                "--",
                "/bin/busybox",
                "cat",
                &format!("/var/run/secrets/kubernetes.io/serviceaccount/{file}"),
            ],
            None,
        );
        assert_eq!(code, 0, "{file}: {err}");
        out
    };
    let token = read("token");
    assert_eq!(read("namespace"), "default");
    let ca = std::fs::read_to_string(s.admin_credentials().0).unwrap();
    assert_eq!(read("ca.crt").trim(), ca.trim());
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let on_node = find_file(
        &s.data_dir(),
        &format!("pods/{uid}/volumes/kubernetes.io~projected/{name}/token"),
    )
    .unwrap_or_else(|| {
        panic!(
            "no token file for pod {uid} under {}",
            s.data_dir().display()
        )
    });
    assert_eq!(std::fs::read_to_string(on_node).unwrap(), token);
    let cm = s.kubectl_json(&["get", "configmap", "kube-root-ca.crt", "-o", "json"]);
    assert_eq!(cm["data"]["ca.crt"].as_str().unwrap().trim(), ca.trim());

    // Bound to the pod, for its service account.
    let (_, claims) = decode(&token);
    assert_eq!(claims["sub"], "system:serviceaccount:default:robot");
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "client");
    assert_eq!(claims["kubernetes.io"]["pod"]["uid"], uid);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3607
    );

    // From the host: 403 until a RoleBinding allows it, then the pod list.
    let r = bearer(&s, &token, "/api/v1/namespaces/default/pods");
    assert_eq!(r.status, Some(403), "{}", r.body);
    s.kubectl_ok(&[
        "create",
        "rolebinding",
        "robot-view",
        "--clusterrole=view",
        "--serviceaccount=default:robot",
    ]);
    wait_until("the pod's token lists pods", PROPAGATION, || {
        bearer(&s, &token, "/api/v1/namespaces/default/pods").status == Some(200)
    });
    assert!(
        bearer(&s, &token, "/api/v1/namespaces/default/pods")
            .body
            .contains("\"client\"")
    );

    // A pod that opts out gets no volume.
    let quiet = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "quiet"},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", "sleep 3600"]}],
        },
    });
    apply(&s, &quiet.to_string());
    assert!(
        pod(&s, "quiet")["spec"]["volumes"].is_null(),
        "{}",
        pod(&s, "quiet")["spec"]
    );

    // The pod's token dies with the pod.
    s.kubectl_ok(&["delete", "pod", "client", "--wait=false"]);
    wait_until(
        "the deleted pod's token is refused",
        Duration::from_secs(30),
        || bearer(&s, &token, "/api/v1/namespaces/default/pods").status == Some(401),
    );
}

/// The first file under `root` whose path ends with `suffix`.
fn find_file(root: &Path, suffix: &str) -> Option<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).ok()?;
            if path.to_string_lossy().ends_with(suffix) {
                return Some(path);
            }
            if meta.is_dir() {
                dirs.push(path);
            }
        }
    }
    None
}

/// `kubectl create token <args>`'s token.
fn create_token(s: &Server, args: &[&str]) -> String {
    let mut all = vec!["create", "token"];
    all.extend_from_slice(args);
    s.kubectl_ok(&all).trim().to_owned()
}

/// GET `path` with only the bearer token (no client certificate).
fn bearer(s: &Server, token: &str, path: &str) -> Reply {
    s.curl_anonymous(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{}{path}", s.url()),
    ])
}

fn assert_unauthorized(r: &Reply, what: &str) {
    assert_eq!(r.status, Some(401), "{what}: {}", r.body);
    let status: Value = serde_json::from_str(&r.body).expect("a Status body");
    assert_eq!(status["kind"], "Status", "{what}");
    assert_eq!(status["reason"], "Unauthorized", "{what}");
}

/// A JWT's header and claims.
fn decode(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let raw = token.split('.').nth(i).expect("three JWT parts");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(raw).expect("base64url"))
            .expect("JSON in a JWT part")
    };
    (part(0), part(1))
}

/// A kubeconfig that authenticates with `token` only.
fn token_kubeconfig(s: &Server, token: &str) -> PathBuf {
    let (ca, _, _) = s.admin_credentials();
    let path = s
        .dir()
        .join(format!("token-{}.yaml", &token[token.len() - 8..]));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: x\n",
            s.url(),
            ca.display()
        ),
    )
    .expect("write a kubeconfig");
    path
}
