use hyper::Method;

use super::*;

fn of(method: Method, target: &str) -> Request {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    Request::of(&method, path, query, false)
}

#[test]
fn requests_are_labelled_as_kube_apiserver_labels_them() {
    let r = of(Method::GET, "/api/v1/namespaces/default/pods");
    assert_eq!(
        (r.verb, r.group, r.version, r.resource, r.scope),
        ("LIST", "", "v1", "pods", "namespace")
    );
    let r = of(Method::GET, "/apis/apps/v1/deployments?watch=true");
    assert_eq!(
        (r.verb, r.group, r.resource, r.scope),
        ("WATCH", "apps", "deployments", "cluster")
    );
    assert!(r.long_running() && !r.mutating());
    let r = of(Method::GET, "/api/v1/namespaces/default/pods/web");
    assert_eq!((r.verb, r.scope), ("GET", "resource"));
    let r = of(Method::POST, "/api/v1/namespaces/default/pods?dryRun=All");
    assert_eq!((r.verb, r.scope, r.dry_run), ("POST", "resource", "All"));
    assert!(r.mutating());
    let r = of(Method::PUT, "/api/v1/namespaces/default/pods/web/status");
    assert_eq!((r.verb, r.subresource), ("PUT", "status"));
    let r = of(Method::POST, "/api/v1/namespaces/default/pods/web/exec");
    assert_eq!((r.verb, r.subresource), ("CONNECT", "exec"));
    assert!(r.long_running());
    let r = of(Method::DELETE, "/api/v1/namespaces/default/configmaps");
    assert_eq!(r.verb, "DELETECOLLECTION");
    let r = Request::of(
        &Method::PATCH,
        "/api/v1/namespaces/default/configmaps/c",
        None,
        true,
    );
    assert_eq!(r.verb, "APPLY");
    let r = of(Method::GET, "/api/v1/namespaces/kube-system");
    assert_eq!((r.resource, r.scope), ("namespaces", "resource"));
}

/// A client picks paths and names: none of them may become a label value.
#[test]
fn labels_never_carry_what_a_client_chose() {
    for target in [
        "/api/v1/namespaces/default/no-such-things",
        "/apis/example.com/v1/widgets",
        "/api/v1/namespaces/default/pods/web/no-such-subresource",
        "/metrics",
        "/healthz/anything",
    ] {
        let r = of(Method::GET, target);
        assert_eq!(
            (r.group, r.version, r.resource, r.subresource, r.scope),
            ("", "", "", "", ""),
            "{target}"
        );
    }
    let r = of(Method::from_bytes(b"BREW").unwrap(), "/api/v1/pods");
    assert_eq!(r.verb, "other");
}

#[test]
fn render_has_the_request_families_and_no_long_running_durations() {
    let metrics = Metrics::new(Weak::new());
    metrics.begin(of(Method::GET, "/api/v1/pods")).done(200);
    metrics
        .begin(of(Method::GET, "/api/v1/pods?watch=1"))
        .done(200);
    let text = metrics.render();
    assert!(
        text.contains("# TYPE apiserver_request_total counter"),
        "{text}"
    );
    assert!(
        text.contains(r#"apiserver_request_total{verb="LIST",dry_run="",group="",version="v1",resource="pods",subresource="",scope="cluster",component="apiserver",code="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"apiserver_request_total{verb="WATCH""#),
        "{text}"
    );
    assert!(
        text.contains(r#"apiserver_request_duration_seconds_bucket{verb="LIST""#),
        "{text}"
    );
    assert!(
        text.contains(r#"le="60.0""#) || text.contains(r#"le="60""#),
        "{text}"
    );
    assert!(
        !text.contains(r#"apiserver_request_duration_seconds_bucket{verb="WATCH""#),
        "{text}"
    );
    assert!(
        text.contains(r#"apiserver_current_inflight_requests{request_kind="readOnly"} 0"#),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
}

#[test]
fn inflight_counts_while_a_request_is_served() {
    let metrics = Metrics::new(Weak::new());
    let serving = metrics.begin(of(Method::POST, "/api/v1/namespaces/a/configmaps"));
    assert!(
        metrics
            .render()
            .contains(r#"apiserver_current_inflight_requests{request_kind="mutating"} 1"#)
    );
    serving.done(201);
    assert!(
        metrics
            .render()
            .contains(r#"apiserver_current_inflight_requests{request_kind="mutating"} 0"#)
    );
}
