//! Observability of a real server: `/metrics` under kube-apiserver's names and its
//! authorisation (`get` on the non-resource URL, as `system:monitoring` grants), the Grafana
//! dashboard in `deploy/grafana` against what a server exposes, and `--log-format json`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Options, Reply, Server, wait_until};
use serde_json::Value;

/// How long an RBAC change may take to reach the server's view (the change feed polls about
/// once a second).
const PROPAGATION: Duration = Duration::from_secs(10);

#[test]
fn metrics_need_get_on_the_metrics_url() {
    let s = Server::start(Options::default());
    let url = format!("{}/metrics", s.url());

    let anonymous = s.curl_anonymous(&[&url]);
    assert_eq!(anonymous.status, Some(401), "anonymous: {}", anonymous.body);

    let admin = s.curl(&["--include", &url]);
    assert_eq!(admin.status, Some(200), "admin: {}", admin.body);
    assert!(
        admin
            .body
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        admin.body
    );

    s.kubectl_ok(&["create", "serviceaccount", "scraper"]);
    let token = s
        .kubectl_ok(&["create", "token", "scraper"])
        .trim()
        .to_owned();
    let r = bearer(&s, &token, "/metrics");
    assert_eq!(r.status, Some(403), "a token without the role: {}", r.body);
    assert!(
        r.body.contains(
            r#"User \"system:serviceaccount:default:scraper\" cannot get path \"/metrics\""#
        ),
        "{}",
        r.body
    );

    s.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "scraper-monitoring",
        "--clusterrole=system:monitoring",
        "--serviceaccount=default:scraper",
    ]);
    wait_until(
        "the binding to system:monitoring lets the token scrape",
        PROPAGATION,
        || bearer(&s, &token, "/metrics").status == Some(200),
    );
    let r = bearer(&s, &token, "/metrics");
    assert!(r.body.contains("apiserver_request_total{"), "{}", r.body);
    // The role reads metrics and health, nothing else.
    let r = bearer(&s, &token, "/api/v1/namespaces/default/pods");
    assert_eq!(r.status, Some(403), "{}", r.body);
}

#[test]
fn metrics_use_kube_apiserver_names_beside_keelson_figures() {
    let s = Server::start(Options::default());
    s.kubectl_ok(&["get", "pods"]);
    s.kubectl_ok(&["create", "configmap", "c", "--from-literal=a=b"]);
    let body = scrape(&s);
    for line in [
        r#"apiserver_request_total{verb="LIST",dry_run="",group="",version="v1",resource="pods",subresource="",scope="namespace",component="apiserver",code="200"} "#,
        r#"apiserver_request_total{verb="POST",dry_run="",group="",version="v1",resource="configmaps",subresource="",scope="resource",component="apiserver",code="201"} "#,
        r#"apiserver_request_duration_seconds_bucket{verb="LIST",dry_run="",group="",version="v1",resource="pods",subresource="",scope="namespace",component="apiserver",le="0.005"} "#,
        r#"apiserver_current_inflight_requests{request_kind="readOnly"} "#,
        r#"apiserver_current_inflight_requests{request_kind="mutating"} "#,
        "process_resident_memory_bytes ",
        "process_virtual_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "keelson_datastore_statements_total ",
        "keelson_feed_revision ",
        "keelson_tunnels ",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(line)),
            "no line starting {line:?} in:\n{body}"
        );
    }
    // One histogram over kube-apiserver's 23 buckets, and +Inf.
    let buckets = body
        .lines()
        .filter(|l| {
            l.starts_with(r#"apiserver_request_duration_seconds_bucket{verb="LIST",dry_run="",group="",version="v1",resource="pods",subresource="",scope="namespace""#)
        })
        .count();
    assert_eq!(buckets, 24, "{body}");
    assert!(s.metric("process_resident_memory_bytes") > 1 << 20);
    let started: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("process_start_time_seconds "))
        .and_then(|v| v.parse().ok())
        .expect("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - started).abs() < 600.0,
        "started {started}, now {now}"
    );
    // A lone server takes the controllers lease.
    wait_until(
        "this server holds the controllers lease",
        PROPAGATION * 3,
        || scrape(&s).contains("keelson_lease_holder{lease=\"keelson-controllers\"} 1\n"),
    );
    // The lease holder counts pods by phase from its cache: two bound to a node that never
    // runs them stay Pending; a deleted one leaves the count.
    for name in ["p1", "p2"] {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "elsewhere", "containers": [{"name": "c", "image": "busybox"}]},
        });
        common::pods::apply(&s, &pod.to_string());
    }
    wait_until("keelson_pods to count 2 Pending", PROPAGATION * 3, || {
        scrape(&s).contains("keelson_pods{phase=\"Pending\"} 2\n")
    });
    assert!(scrape(&s).contains("keelson_pods{phase=\"Running\"} 0\n"));
    s.kubectl_ok(&["delete", "pod", "p1", "--grace-period=0", "--force"]);
    wait_until("keelson_pods to count 1 Pending", PROPAGATION * 3, || {
        scrape(&s).contains("keelson_pods{phase=\"Pending\"} 1\n")
    });
}

#[test]
fn the_grafana_dashboard_loads_and_reads_only_what_a_server_exposes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/keelson.json");
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    for field in ["title", "uid"] {
        assert!(
            dashboard[field].as_str().is_some_and(|s| !s.is_empty()),
            "no {field}"
        );
    }
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "no schemaVersion"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_u64().expect("a panel id")),
            "id of {title} repeated"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(p["datasource"].is_object(), "{title}: no datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"].as_str().expect("a target's expr");
            exprs.push((title.to_owned(), expr.to_owned()));
        }
    }

    let s = Server::start(Options::default());
    s.kubectl_ok(&["get", "pods"]);
    let exposed = exposed_names(&scrape(&s));
    let mut missing = Vec::new();
    for (title, expr) in &exprs {
        for name in metric_names(expr) {
            if !exposed.contains(&name) {
                missing.push(format!("{title}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the dashboard reads that the server does not expose:\n{}\nexposed: {exposed:?}",
        missing.join("\n")
    );
    let covered: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for needed in [
        "apiserver_request_total",
        "apiserver_request_duration_seconds_bucket",
        "apiserver_current_inflight_requests",
        "keelson_datastore_statements_total",
        "keelson_datastore_reachable",
        "keelson_datastore_outages_total",
        "keelson_feed_revision",
        "keelson_tunnels",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(covered.contains(needed), "no panel reads {needed}");
    }
}

#[test]
fn json_logs_are_one_object_a_line() {
    let mut s = Server::start(Options::default().env("KEELSON_LOG_FORMAT", "json"));
    s.kubectl_ok(&["get", "pods"]);
    let stopped = s.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    let log = s.log();
    let mut messages = Vec::new();
    for line in log.lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{log}"));
        for field in ["timestamp", "level", "target"] {
            assert!(event[field].is_string(), "no {field}: {line}");
        }
        let message = event["fields"]["message"].as_str();
        messages.push(message.expect("fields.message").to_owned());
    }
    assert!(
        messages.iter().any(|m| m == "API serving"),
        "no \"API serving\" event in:\n{log}"
    );
}

// === helpers ===

/// GET `path` with only the bearer token (no client certificate).
fn bearer(s: &Server, token: &str, path: &str) -> Reply {
    s.curl_anonymous(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{}{path}", s.url()),
    ])
}

fn scrape(s: &Server) -> String {
    let r = s.curl(&[&format!("{}/metrics", s.url())]);
    assert_eq!(r.status, Some(200), "/metrics: {}", r.body);
    r.body
}

/// The names of the samples in a scrape (a family with no samples exposes nothing).
fn exposed_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The metric names in a PromQL expression: its identifiers with a keelson, kube-apiserver or
/// process prefix (label names and functions have none of these).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut quoted = false;
    let mut rest = expr;
    while !rest.is_empty() {
        let start = rest
            .find(|c: char| c.is_ascii_alphabetic() || c == '_')
            .unwrap_or(rest.len());
        let (before, from) = rest.split_at(start);
        let len = from
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(from.len());
        let word = &from[..len];
        quoted ^= before.matches('"').count() % 2 == 1;
        if !quoted
            && ["apiserver_", "keelson_", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
        {
            names.insert(word.to_owned());
        }
        rest = &from[len.max(1).min(from.len())..];
    }
    names
}
