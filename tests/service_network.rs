//! The Service network as in-cluster clients see it, through the real kubectl: the
//! `default/kubernetes` Service's Endpoints and EndpointSlice listing every live server (one
//! server, and two on the real PostgreSQL, one of them killed), written only when they change;
//! IPv6 and dual-stack `--service-cidr` ranges and the Services' `ipFamilies`, `clusterIPs`.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::db::{Db, TestDb};
use common::{Options, Server, wait_until};

/// `address:port` of each endpoint in the `kubernetes` Endpoints (every subset), sorted.
fn endpoint_addresses(s: &Server) -> Vec<String> {
    let out = s.kubectl(&["get", "endpoints", "kubernetes", "-o", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let ep: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut list = Vec::new();
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        for p in subset["ports"].as_array().into_iter().flatten() {
            assert_eq!(p["name"], "https", "{ep}");
            assert_eq!(p["protocol"], "TCP", "{ep}");
            for a in subset["addresses"].as_array().into_iter().flatten() {
                list.push(format!("{}:{}", a["ip"].as_str().unwrap_or("?"), p["port"]));
            }
        }
    }
    list.sort();
    list
}

/// The `kubernetes` Service's EndpointSlices, as the label selector finds them.
fn kubernetes_slices(s: &Server) -> Vec<Value> {
    let list = s.kubectl_json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=kubernetes",
        "-o",
        "json",
    ]);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn resource_version(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_kubernetes_service_lists_the_server_and_is_not_rewritten_while_idle() {
    let s = Server::start(Options::default());
    let me = format!("127.0.0.1:{}", s.port());
    let took = wait_until(
        "the kubernetes Endpoints list this server",
        Duration::from_secs(20),
        || endpoint_addresses(&s) == [me.clone()],
    );
    eprintln!("the kubernetes Endpoints listed the server {took:?} after it was ready");
    let ep = s.kubectl_json(&["get", "endpoints", "kubernetes", "-o", "json"]);
    assert_eq!(
        ep["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"], "true",
        "{ep}"
    );
    let slices = kubernetes_slices(&s);
    assert_eq!(slices.len(), 1, "{slices:?}");
    let slice = &slices[0];
    assert_eq!(slice["metadata"]["name"], "kubernetes");
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["endpoints"][0]["addresses"][0], "127.0.0.1",
        "{slice}"
    );
    assert_eq!(
        slice["endpoints"][0]["conditions"]["ready"], true,
        "{slice}"
    );
    assert_eq!(
        slice["ports"][0],
        serde_json::json!({"name": "https", "port": s.port(), "protocol": "TCP"})
    );

    // Idle: neither object is written again.
    let before = (resource_version(&ep), resource_version(slice));
    std::thread::sleep(Duration::from_secs(12));
    let ep = s.kubectl_json(&["get", "endpoints", "kubernetes", "-o", "json"]);
    let slice = kubernetes_slices(&s).remove(0);
    assert_eq!(
        (resource_version(&ep), resource_version(&slice)),
        before,
        "the kubernetes Endpoints or EndpointSlice were rewritten on an idle cluster"
    );

    // Someone deletes them: they come back.
    s.kubectl_ok(&["delete", "endpoints", "kubernetes"]);
    s.kubectl_ok(&["delete", "endpointslice", "kubernetes"]);
    wait_until(
        "the kubernetes Endpoints and slice are back",
        Duration::from_secs(10),
        || endpoint_addresses(&s) == [me.clone()] && kubernetes_slices(&s).len() == 1,
    );
}

fn both_servers_listed_and_a_dead_one_dropped(db: Db) {
    let Some(db) = TestDb::new(db, "kubeep") else {
        return;
    };
    let mut opts = Options::default().arg("--datastore-endpoint", &db.endpoint());
    opts.node_name = "server-a".into();
    let a = Server::start(opts.clone());
    opts.node_name = "server-b".into();
    let mut b = Server::start(opts.arg("--token-file", &a.token_path().display().to_string()));
    let (ea, eb) = (
        format!("127.0.0.1:{}", a.port()),
        format!("127.0.0.1:{}", b.port()),
    );
    let mut both = vec![ea.clone(), eb.clone()];
    both.sort();
    let took = wait_until(
        "the kubernetes Endpoints list both servers",
        Duration::from_secs(30),
        || endpoint_addresses(&a) == both,
    );
    eprintln!(
        "{}: both servers listed {took:?} after the second was ready",
        db.db
    );
    // Same address, two ports: one slice per port.
    let slices = kubernetes_slices(&b);
    assert_eq!(slices.len(), 2, "{slices:?}");

    b.kill();
    let killed = Instant::now();
    wait_until(
        "the killed server leaves the kubernetes Endpoints",
        Duration::from_secs(60),
        || endpoint_addresses(&a) == [ea.clone()],
    );
    eprintln!(
        "{}: the killed server left the Endpoints {:?} after SIGKILL",
        db.db,
        killed.elapsed()
    );
    wait_until(
        "the killed server's slice goes",
        Duration::from_secs(10),
        || kubernetes_slices(&a).len() == 1,
    );
}

#[test]
fn two_servers_on_postgres_are_both_endpoints_and_a_dead_one_leaves() {
    both_servers_listed_and_a_dead_one_dropped(Db::Postgres);
}
