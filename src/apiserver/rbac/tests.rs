use serde_json::json;
use std::collections::BTreeMap;

use super::*;

/// Policy objects in a map, by (plural, namespace, name).
#[derive(Default)]
struct Fake(BTreeMap<(&'static str, String, String), Arc<Frozen>>);

impl Fake {
    fn add(mut self, resource: &'static Resource, obj: Value) -> Fake {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        self.0
            .insert((resource.plural, ns, name), Arc::new(Frozen::from(obj)));
        self
    }
}

impl Objects for Fake {
    fn get(
        &self,
        resource: &'static Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Arc<Frozen>> {
        self.0
            .get(&(
                resource.plural,
                ns.unwrap_or_default().to_owned(),
                name.to_owned(),
            ))
            .cloned()
    }
    fn list(&self, resource: &'static Resource, ns: Option<&str>) -> Vec<Arc<Frozen>> {
        self.0
            .iter()
            .filter(|((p, n, _), _)| *p == resource.plural && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn req(method: Method, path: &str) -> Attributes {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    Attributes::of_request(&method, path, Some(query))
}

#[test]
fn requests_read_as_kubernetes_reads_them() {
    let res = |verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str| {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    };
    for (method, path, want) in [
        (
            Method::GET,
            "/api/v1/namespaces/team/pods",
            res("list", "", "pods", "", "team", ""),
        ),
        (
            Method::GET,
            "/api/v1/namespaces/team/pods?watch=true",
            res("watch", "", "pods", "", "team", ""),
        ),
        (
            Method::GET,
            "/api/v1/namespaces/team/pods?watch=1&fieldSelector=metadata.name%3Dweb",
            res("watch", "", "pods", "", "team", "web"),
        ),
        (
            Method::GET,
            "/api/v1/namespaces/team/pods/web",
            res("get", "", "pods", "", "team", "web"),
        ),
        (
            Method::GET,
            "/api/v1/namespaces/team/pods/web/log",
            res("get", "", "pods", "log", "team", "web"),
        ),
        (
            Method::POST,
            "/api/v1/namespaces/team/serviceaccounts/bot/token",
            res("create", "", "serviceaccounts", "token", "team", "bot"),
        ),
        (
            Method::DELETE,
            "/api/v1/namespaces/team/configmaps",
            res("deletecollection", "", "configmaps", "", "team", ""),
        ),
        (
            Method::DELETE,
            "/api/v1/namespaces/team/configmaps/c",
            res("delete", "", "configmaps", "", "team", "c"),
        ),
        (
            Method::PATCH,
            "/apis/apps/v1/namespaces/team/deployments/web/scale",
            res("patch", "apps", "deployments", "scale", "team", "web"),
        ),
        (
            Method::PUT,
            "/api/v1/nodes/pi-1/status",
            res("update", "", "nodes", "status", "", "pi-1"),
        ),
        (
            Method::GET,
            "/api/v1/pods",
            res("list", "", "pods", "", "", ""),
        ),
        // A namespace is its own namespace; its status a subresource.
        (
            Method::GET,
            "/api/v1/namespaces/team",
            res("get", "", "namespaces", "", "team", "team"),
        ),
        (
            Method::PUT,
            "/api/v1/namespaces/team/finalize",
            res("update", "", "namespaces", "finalize", "team", "team"),
        ),
        (
            Method::GET,
            "/api/v1/namespaces",
            res("list", "", "namespaces", "", "", ""),
        ),
        (
            Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            res(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "",
                "",
                "",
            ),
        ),
    ] {
        assert_eq!(req(method.clone(), path), want, "{method} {path}");
    }
    for (method, path, verb) in [
        (Method::GET, "/api", "get"),
        (Method::GET, "/api/v1", "get"),
        (Method::GET, "/apis/apps/v1", "get"),
        (Method::GET, "/apis/apps", "get"),
        (Method::GET, "/version", "get"),
        (Method::POST, "/metrics", "post"),
    ] {
        assert_eq!(
            req(method.clone(), path),
            Attributes::NonResource {
                verb: verb.into(),
                path: path.into()
            },
            "{method} {path}"
        );
    }
}

#[test]
fn refusals_are_worded_as_kubernetes_words_them() {
    let u = "system:serviceaccount:default:x";
    assert_eq!(
        req(Method::GET, "/api/v1/namespaces/default/pods").forbidden(u),
        r#"pods is forbidden: User "system:serviceaccount:default:x" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    assert_eq!(
        req(
            Method::GET,
            "/apis/apps/v1/namespaces/team/deployments/web/scale"
        )
        .forbidden("bob"),
        r#"deployments.apps "web" is forbidden: User "bob" cannot get resource "deployments/scale" in API group "apps" in the namespace "team""#
    );
    assert_eq!(
        req(Method::GET, "/api/v1/nodes").forbidden("bob"),
        r#"nodes is forbidden: User "bob" cannot list resource "nodes" in API group "" at the cluster scope"#
    );
    assert_eq!(
        req(Method::GET, "/metrics").forbidden("bob"),
        r#"forbidden: User "bob" cannot get path "/metrics""#
    );
}

fn rule(v: Value) -> Value {
    v
}

/// One rule against one request: the table Kubernetes' own rule matcher is specified by.
#[test]
fn rules_match_groups_resources_subresources_verbs_names_and_urls() {
    let pods_read =
        rule(json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}));
    let star = rule(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}));
    let logs = rule(json!({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}));
    let any_status =
        rule(json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["update"]}));
    let one_cm = rule(
        json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["app"], "verbs": ["get", "update"]}),
    );
    let apps = rule(json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]}));
    let urls = rule(json!({"nonResourceURLs": ["/healthz", "/apis/*"], "verbs": ["get"]}));
    let all_urls = rule(json!({"nonResourceURLs": ["*"], "verbs": ["*"]}));
    let no_verbs = rule(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": []}));
    for (rule, method, path, want) in [
        (&pods_read, Method::GET, "/api/v1/namespaces/a/pods", true),
        (
            &pods_read,
            Method::GET,
            "/api/v1/namespaces/a/pods?watch=true",
            true,
        ),
        (&pods_read, Method::GET, "/api/v1/namespaces/a/pods/p", true),
        (
            &pods_read,
            Method::DELETE,
            "/api/v1/namespaces/a/pods/p",
            false,
        ),
        // A resource does not cover its subresources, nor another group's same plural.
        (
            &pods_read,
            Method::GET,
            "/api/v1/namespaces/a/pods/p/log",
            false,
        ),
        (
            &pods_read,
            Method::GET,
            "/apis/metrics.k8s.io/v1beta1/namespaces/a/pods",
            false,
        ),
        (&logs, Method::GET, "/api/v1/namespaces/a/pods/p/log", true),
        (&logs, Method::GET, "/api/v1/namespaces/a/pods/p", false),
        (
            &star,
            Method::DELETE,
            "/apis/apps/v1/namespaces/a/deployments/d",
            true,
        ),
        (&star, Method::GET, "/api/v1/namespaces/a/pods/p/log", true),
        (&star, Method::GET, "/healthz", false),
        (&any_status, Method::PUT, "/api/v1/nodes/n/status", true),
        (&any_status, Method::PUT, "/api/v1/nodes/n", false),
        (
            &any_status,
            Method::PUT,
            "/api/v1/namespaces/a/pods/p/statusx",
            false,
        ),
        (
            &one_cm,
            Method::GET,
            "/api/v1/namespaces/a/configmaps/app",
            true,
        ),
        (
            &one_cm,
            Method::GET,
            "/api/v1/namespaces/a/configmaps/other",
            false,
        ),
        // A list names no object, so a rule with resourceNames does not allow it.
        (
            &one_cm,
            Method::GET,
            "/api/v1/namespaces/a/configmaps",
            false,
        ),
        (
            &apps,
            Method::PATCH,
            "/apis/apps/v1/namespaces/a/deployments/d",
            true,
        ),
        (
            &apps,
            Method::PATCH,
            "/apis/extensions/v1beta1/namespaces/a/deployments/d",
            false,
        ),
        (&urls, Method::GET, "/healthz", true),
        (&urls, Method::GET, "/healthz/etcd", false),
        (&urls, Method::GET, "/apis/apps", true),
        (&urls, Method::GET, "/api", false),
        (&urls, Method::POST, "/healthz", false),
        (&urls, Method::GET, "/api/v1/namespaces/a/pods", false),
        (&all_urls, Method::POST, "/anything", true),
        (&no_verbs, Method::GET, "/api/v1/pods", false),
    ] {
        assert_eq!(
            rule_allows(rule, &req(method.clone(), path)),
            want,
            "{rule} {method} {path}"
        );
    }
}

fn policy() -> Fake {
    Fake::default()
        .add(&CLUSTERROLES, json!({"metadata": {"name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}))
        .add(&CLUSTERROLES, json!({"metadata": {"name": "discovery"}, "rules": [{"nonResourceURLs": ["/api", "/api/*"], "verbs": ["get"]}]}))
        .add(&ROLES, json!({"metadata": {"name": "cm", "namespace": "team"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}))
        .add(&ROLES, json!({"metadata": {"name": "cm", "namespace": "other"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}))
        // A namespaced binding of a ClusterRole grants it in that namespace only.
        .add(&ROLEBINDINGS, json!({"metadata": {"name": "b1", "namespace": "team"}, "roleRef": {"kind": "ClusterRole", "name": "pod-reader"}, "subjects": [{"kind": "ServiceAccount", "name": "bot"}]}))
        .add(&ROLEBINDINGS, json!({"metadata": {"name": "b2", "namespace": "team"}, "roleRef": {"kind": "Role", "name": "cm"}, "subjects": [{"kind": "Group", "name": "readers"}]}))
        .add(&ROLEBINDINGS, json!({"metadata": {"name": "b3", "namespace": "other"}, "roleRef": {"kind": "Role", "name": "missing"}, "subjects": [{"kind": "User", "name": "alice"}]}))
        .add(&CLUSTERROLEBINDINGS, json!({"metadata": {"name": "c1"}, "roleRef": {"kind": "ClusterRole", "name": "discovery"}, "subjects": [{"kind": "Group", "name": "system:authenticated"}]}))
        .add(&CLUSTERROLEBINDINGS, json!({"metadata": {"name": "c2"}, "roleRef": {"kind": "ClusterRole", "name": "pod-reader"}, "subjects": [{"kind": "ServiceAccount", "name": "watcher", "namespace": "ops"}, {"kind": "User", "name": "alice"}]}))
}

#[test]
fn bindings_grant_their_roles_to_their_subjects_only() {
    let p = policy();
    let bot = "system:serviceaccount:team:bot";
    let sa_groups = |ns: &str| {
        vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_owned(),
        ]
    };
    let none: Vec<String> = vec![];
    let readers = vec!["readers".to_owned()];
    for (user, groups, method, path, want) in [
        (
            bot,
            sa_groups("team"),
            Method::GET,
            "/api/v1/namespaces/team/pods",
            true,
        ),
        (
            bot,
            sa_groups("team"),
            Method::GET,
            "/api/v1/namespaces/other/pods",
            false,
        ),
        (bot, sa_groups("team"), Method::GET, "/api/v1/pods", false),
        (bot, sa_groups("team"), Method::GET, "/api", true),
        (bot, sa_groups("team"), Method::GET, "/metrics", false),
        // The same name in another namespace is another account.
        (
            "system:serviceaccount:other:bot",
            sa_groups("other"),
            Method::GET,
            "/api/v1/namespaces/team/pods",
            false,
        ),
        (
            "system:serviceaccount:ops:watcher",
            sa_groups("ops"),
            Method::GET,
            "/api/v1/pods",
            true,
        ),
        (
            "system:serviceaccount:ops:watcher",
            sa_groups("ops"),
            Method::GET,
            "/api/v1/namespaces/x/pods",
            true,
        ),
        (
            "carol",
            readers.clone(),
            Method::GET,
            "/api/v1/namespaces/team/configmaps/c",
            true,
        ),
        (
            "carol",
            readers.clone(),
            Method::GET,
            "/api/v1/namespaces/other/configmaps/c",
            false,
        ),
        ("carol", readers.clone(), Method::GET, "/api", false),
        (
            "alice",
            none.clone(),
            Method::GET,
            "/api/v1/namespaces/other/secrets/s",
            false,
        ),
        ("alice", none.clone(), Method::GET, "/api/v1/pods", true),
        (
            "bob",
            none.clone(),
            Method::GET,
            "/api/v1/namespaces/team/pods",
            false,
        ),
        // A group named like a user, or a user like a group, is not them.
        (
            "readers",
            none.clone(),
            Method::GET,
            "/api/v1/namespaces/team/configmaps/c",
            false,
        ),
    ] {
        assert_eq!(
            allows(&p, user, &groups, &req(method.clone(), path)),
            want,
            "{user} {method} {path}"
        );
    }
}

#[test]
fn rules_review_lists_what_applies_in_a_namespace() {
    let p = policy();
    let groups = vec!["system:authenticated".to_owned()];
    let got = rules(&p, "system:serviceaccount:team:bot", &groups, "team");
    assert_eq!(
        got,
        vec![
            json!({"nonResourceURLs": ["/api", "/api/*"], "verbs": ["get"]}),
            json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}),
        ]
    );
    assert_eq!(
        rules(&p, "system:serviceaccount:team:bot", &[], "other"),
        Vec::<Value>::new()
    );
}

#[test]
fn aggregation_collects_the_selected_roles_rules_once() {
    let all: Vec<Arc<Frozen>> = [
        json!({"metadata": {"name": "admin"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg/admin": "true"}}]}, "rules": []}),
        json!({"metadata": {"name": "edit", "labels": {"agg/admin": "true"}}, "rules": [{"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]}]}),
        json!({"metadata": {"name": "extra", "labels": {"agg/admin": "true"}}, "rules": [{"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "apiGroups": ["x"], "resources": ["y"]}]}),
        json!({"metadata": {"name": "unrelated"}, "rules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]}),
    ]
    .into_iter()
    .map(|r| Arc::new(Frozen::from(r)))
    .collect();
    assert_eq!(
        aggregated_rules(&all[0], &all),
        Some(vec![
            json!({"verbs": ["create"], "apiGroups": [""], "resources": ["pods"]}),
            json!({"verbs": ["get"], "apiGroups": ["x"], "resources": ["y"]}),
        ])
    );
    assert_eq!(aggregated_rules(&all[1], &all), None);
}
