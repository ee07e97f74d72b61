//! The Service network as in-cluster clients see it, through the real kubectl: the
//! `default/kubernetes` Service's Endpoints and EndpointSlice listing every live server (one
//! server, and two on the real PostgreSQL and MariaDB, one of them killed), written only when
//! they change;
//! IPv6 and dual-stack `--service-cidr` ranges and the Services' `ipFamilies`, `clusterIPs`;
//! LoadBalancer Services' addresses from `--service-lb-pool`, or their nodes' without one.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::db::{Db, TestDb};
use common::{Options, Server, cell, create, get_rows, refused, wait_until};

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

    // A server with another service range may not join: addresses would be handed out twice.
    let mut other = Options::default()
        .arg("--datastore-endpoint", &db.endpoint())
        .arg("--token-file", &a.token_path().display().to_string())
        .arg("--service-cidr", "10.43.0.0/16,fd00:43::/112");
    other.node_name = "server-c".into();
    match Server::try_start(other) {
        Ok(_) => panic!("a server with a different --service-cidr joined"),
        Err(e) => assert!(
            e.log.contains(
                r#"--service-cidr is "10.43.0.0/16,fd00:43::/112" here but "10.43.0.0/16" in the cluster"#
            ),
            "{}",
            e.log
        ),
    }

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

fn service(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}  selector:\n    app: {name}\n  ports:\n  - port: 80\n"
    )
}

fn spec_of(s: &Server, name: &str) -> Value {
    s.kubectl_json(&["get", "svc", name, "-o", "json"])["spec"].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_dual_stack_cluster_gives_dual_stack_services_an_address_in_each_family() {
    let s = Server::start(Options::default().arg("--service-cidr", "10.43.0.0/16,fd00:43::/112"));
    let k = spec_of(&s, "kubernetes");
    assert_eq!(k["clusterIP"], "10.43.0.1", "{k}");
    assert_eq!(strings(&k["ipFamilies"]), ["IPv4"], "{k}");

    create(
        &s,
        "both",
        &service("both", "  ipFamilyPolicy: PreferDualStack\n"),
    );
    let both = spec_of(&s, "both");
    let ips = strings(&both["clusterIPs"]);
    assert_eq!(ips.len(), 2, "{both}");
    assert!(
        ips[0].starts_with("10.43.") && ips[1].starts_with("fd00:43::"),
        "{both}"
    );
    assert_eq!(both["clusterIP"], ips[0].as_str());
    assert_eq!(strings(&both["ipFamilies"]), ["IPv4", "IPv6"]);
    assert_eq!(both["ipFamilyPolicy"], "PreferDualStack");
    let rows = get_rows(&s, &["get", "svc", "both"]);
    assert_eq!(
        cell(&rows[0], "CLUSTER-IP"),
        ips[0],
        "kubectl shows the primary address"
    );

    // IPv6 first, by ipFamilies.
    create(
        &s,
        "six",
        &service(
            "six",
            "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n",
        ),
    );
    let six = spec_of(&s, "six");
    let six_ips = strings(&six["clusterIPs"]);
    assert!(
        six_ips[0].starts_with("fd00:43::") && six_ips[1].starts_with("10.43."),
        "{six}"
    );
    let rows = get_rows(&s, &["get", "svc", "six"]);
    assert_eq!(cell(&rows[0], "CLUSTER-IP"), six_ips[0]);

    // A chosen IPv6 address: inside the range it is taken, outside refused as Kubernetes does.
    create(
        &s,
        "pinned",
        &service("pinned", "  clusterIP: fd00:43::beef\n"),
    );
    let pinned = spec_of(&s, "pinned");
    assert_eq!(strings(&pinned["clusterIPs"]), ["fd00:43::beef"]);
    assert_eq!(strings(&pinned["ipFamilies"]), ["IPv6"]);
    let path = s.dir().join("outside.yaml");
    std::fs::write(&path, service("outside", "  clusterIP: fd00:99::1\n")).unwrap();
    let err = refused(&s, &["create", "-f", &path.display().to_string()]);
    assert!(
        err.contains("spec.clusterIPs: Invalid value: []string{\"fd00:99::1\"}: failed to allocate IP fd00:99::1: the provided IP (fd00:99::1) is not in the valid range. The range of valid IPs is fd00:43::/112"),
        "{err}"
    );

    // Deleting a dual-stack Service frees both of its addresses.
    s.kubectl_ok(&["delete", "svc", "both"]);
    create(
        &s,
        "again",
        &service(
            "again",
            &format!(
                "  ipFamilyPolicy: RequireDualStack\n  clusterIPs: [{}, {}]\n",
                ips[0], ips[1]
            ),
        ),
    );
    assert_eq!(strings(&spec_of(&s, "again")["clusterIPs"]), ips);
    let path = s.dir().join("copy.yaml");
    std::fs::write(
        &path,
        service("copy", &format!("  clusterIP: {}\n", ips[1])),
    )
    .unwrap();
    let err = refused(&s, &["create", "-f", &path.display().to_string()]);
    assert!(err.contains("provided IP is already allocated"), "{err}");
}

#[test]
fn a_single_stack_ipv6_cluster_works_and_refuses_dual_stack_requirements() {
    let s = Server::start(Options::default().arg("--service-cidr", "fd00:43::/112"));
    let k = spec_of(&s, "kubernetes");
    assert_eq!(k["clusterIP"], "fd00:43::1", "{k}");
    assert_eq!(strings(&k["ipFamilies"]), ["IPv6"], "{k}");
    create(&s, "web", &service("web", ""));
    let web = spec_of(&s, "web");
    let ip = web["clusterIP"].as_str().unwrap_or_default();
    assert!(ip.starts_with("fd00:43::") && ip != "fd00:43::1", "{web}");
    assert_eq!(strings(&web["ipFamilies"]), ["IPv6"]);
    assert_eq!(web["ipFamilyPolicy"], "SingleStack");
    // PreferDualStack settles for the one family there is; RequireDualStack is refused.
    create(
        &s,
        "prefer",
        &service("prefer", "  ipFamilyPolicy: PreferDualStack\n"),
    );
    assert_eq!(strings(&spec_of(&s, "prefer")["clusterIPs"]).len(), 1);
    let path = s.dir().join("require.yaml");
    std::fs::write(
        &path,
        service("require", "  ipFamilyPolicy: RequireDualStack\n"),
    )
    .unwrap();
    let err = refused(&s, &["create", "-f", &path.display().to_string()]);
    assert!(
        err.contains("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"),
        "{err}"
    );
    // The `kubernetes` endpoints still list the server (its address is IPv4 here).
    wait_until(
        "the kubernetes Endpoints list this server",
        Duration::from_secs(20),
        || endpoint_addresses(&s) == [format!("127.0.0.1:{}", s.port())],
    );
}

#[test]
fn two_servers_on_mariadb_are_both_endpoints_and_a_dead_one_leaves() {
    both_servers_listed_and_a_dead_one_dropped(Db::MariaDb);
}

fn lb_service(name: &str, extra: &str) -> String {
    service(name, &format!("  type: LoadBalancer\n{extra}"))
}

/// The addresses `kubectl get svc` shows under EXTERNAL-IP (`<pending>` while there are none).
fn external_ip(s: &Server, name: &str) -> String {
    let rows = get_rows(s, &["get", "svc", name]);
    cell(&rows[0], "EXTERNAL-IP").to_owned()
}

fn events_of(s: &Server, name: &str) -> String {
    s.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
    ])
}

#[test]
fn load_balancers_get_addresses_from_the_pool_and_wait_when_it_runs_out() {
    let s =
        Server::start(Options::default().arg("--service-lb-pool", "198.18.200.10-198.18.200.11"));
    create(&s, "first", &lb_service("first", ""));
    create(&s, "second", &lb_service("second", ""));
    let limit = Duration::from_secs(20);
    wait_until("both Services get an address", limit, || {
        external_ip(&s, "first") != "<pending>" && external_ip(&s, "second") != "<pending>"
    });
    let mut got = [external_ip(&s, "first"), external_ip(&s, "second")];
    got.sort();
    assert_eq!(got, ["198.18.200.10", "198.18.200.11"]);
    let status = s.kubectl_json(&["get", "svc", "first", "-o", "json"])["status"].clone();
    assert_eq!(
        status["loadBalancer"]["ingress"][0]["ipMode"], "VIP",
        "{status}"
    );

    // The pool is used up: the third waits, and says why.
    create(&s, "third", &lb_service("third", ""));
    wait_until("the third Service explains why it waits", limit, || {
        events_of(&s, "third").contains(
            "no available IPv4 address in --service-lb-pool (198.18.200.10-198.18.200.11)",
        )
    });
    assert_eq!(external_ip(&s, "third"), "<pending>");
    // An address no one may have, and one outside the pool: refused with the reason.
    create(
        &s,
        "outside",
        &lb_service("outside", "  loadBalancerIP: 198.18.9.9\n"),
    );
    wait_until("an address outside the pool is refused", limit, || {
        events_of(&s, "outside")
            .contains("spec.loadBalancerIP 198.18.9.9 is not in --service-lb-pool")
    });

    // A freed address goes to the one waiting; the others keep theirs.
    let first = external_ip(&s, "first");
    let second = external_ip(&s, "second");
    s.kubectl_ok(&["delete", "svc", "first"]);
    wait_until("the waiting Service gets the freed address", limit, || {
        external_ip(&s, "third") == first
    });
    assert_eq!(external_ip(&s, "second"), second);
    assert!(events_of(&s, "third").contains(&format!("Assigned IP [{first}]")));

    // A LoadBalancer that becomes a ClusterIP gives its address back.
    s.kubectl_ok(&[
        "patch",
        "svc",
        "second",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    wait_until("a former LoadBalancer loses its address", limit, || {
        s.kubectl_json(&["get", "svc", "second", "-o", "json"])["status"]["loadBalancer"]
            .get("ingress")
            .is_none()
    });
}

#[test]
fn without_a_pool_a_load_balancer_is_reached_at_its_nodes_and_bad_pools_are_refused() {
    let s = Server::start(Options::default());
    create(&s, "web", &lb_service("web", ""));
    let node_ip = s.node()["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .expect("the server's node has an InternalIP")
        .to_owned();
    wait_until(
        "the Service shows its node's address",
        Duration::from_secs(20),
        || external_ip(&s, "web") == node_ip,
    );

    let bad = Server::try_start(
        Options::default().arg("--service-lb-pool", "198.18.200.20-198.18.200.10"),
    );
    let Err(exited) = bad else {
        panic!("a pool whose first address is after its last was accepted");
    };
    assert!(
        exited.log.contains(
            "--service-lb-pool \"198.18.200.20-198.18.200.10\": the first address is after the last"
        ),
        "{}",
        exited.log
    );
}
