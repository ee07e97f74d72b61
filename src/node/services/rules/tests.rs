use super::*;
use crate::api::network::{Endpoint, SlicePort, TargetPort};

const NODE: &str = "pi1";
const CLUSTER_DNS: &str = "198.19.128.53";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(name: &str) -> Key {
    Key {
        namespace: "shop".into(),
        name: name.into(),
    }
}

fn port(name: &str, port: u16, target: TargetPort) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port,
        target_port: target,
        node_port: None,
    }
}

fn svc(name: &str, ips: &[&str]) -> ServiceInfo {
    ServiceInfo {
        key: key(name),
        kind: ServiceKind::ClusterIp,
        cluster_ips: ips.iter().map(|a| ip(a)).collect(),
        ports: vec![port("", 80, TargetPort::Number(8080))],
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        external_ips: vec![],
        load_balancer_ips: vec![],
        publish_not_ready: false,
    }
}

fn ep(addr: &str, ready: bool, node: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        ready,
        serving: ready,
        terminating: false,
        hostname: None,
        node_name: Some(node.into()),
        pod: None,
    }
}

fn slice(
    service: &str,
    suffix: &str,
    ports: &[(&str, u16)],
    endpoints: Vec<Endpoint>,
) -> SliceInfo {
    SliceInfo {
        key: key(&format!("{service}-{suffix}")),
        service: service.into(),
        ports: ports
            .iter()
            .map(|(n, p)| SlicePort {
                name: (*n).into(),
                protocol: Protocol::Tcp,
                port: *p,
            })
            .collect(),
        endpoints,
    }
}

fn cidrs() -> Vec<Cidr> {
    vec![
        Cidr::parse("198.19.0.0/17").unwrap(),
        Cidr::parse("fd00:19::/64").unwrap(),
    ]
}

fn build(services: &[ServiceInfo], slices: &[SliceInfo]) -> (Ruleset, Vec<Skip>) {
    let cidrs = cidrs();
    let ctx = Context {
        cluster_cidrs: &cidrs,
        node: NODE,
        cluster_dns: Some(CLUSTER_DNS.parse().unwrap()),
    };
    Ruleset::build(&ctx, services, slices)
}

/// The transaction that adds these Services to a table that holds none, with chain and set
/// hashes replaced by `#n` in order of appearance so the expected text stays readable (one
/// test below pins the hashes themselves).
fn added(services: &[ServiceInfo], slices: &[SliceInfo]) -> String {
    let (rs, skips) = build(services, slices);
    assert!(skips.is_empty(), "{skips:?}");
    readable(&rs.diff(&Programmed::default()).unwrap_or_default())
}

fn readable(text: &str) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut out = String::new();
    let mut rest = text;
    'outer: while !rest.is_empty() {
        for prefix in ["service-", "external-", "endpoint-", "affinity-"] {
            if let Some(tail) = rest.strip_prefix(prefix) {
                let hex: String = tail.chars().take(16).collect();
                if hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    let n = match names.iter().position(|h| *h == hex) {
                        Some(n) => n,
                        None => {
                            names.push(hex);
                            names.len() - 1
                        }
                    };
                    out.push_str(&format!("{prefix}#{n}"));
                    rest = &tail[16..];
                    continue 'outer;
                }
            }
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn two_ready_one_unready() -> SliceInfo {
    slice(
        "web",
        "a",
        &[("", 8080)],
        vec![
            ep("198.19.1.5", true, "pi1"),
            ep("198.19.2.6", true, "pi2"),
            ep("198.19.3.7", false, "pi2"),
        ],
    )
}

/// Every shape at once, for the real-nft check and the printout.
fn shapes() -> (Vec<ServiceInfo>, Vec<SliceInfo>) {
    let mut named = svc("named", &["198.19.128.11"]);
    named.ports = vec![port("http", 80, TargetPort::Name("web".into()))];
    let mut np = svc("np", &["198.19.128.12"]);
    np.kind = ServiceKind::NodePort;
    np.ports[0].node_port = Some(30080);
    np.external_ips = vec![ip("198.18.10.50")];
    let mut local = np.clone();
    local.key = key("local");
    local.cluster_ips = vec![ip("198.19.128.13")];
    local.ports[0].node_port = Some(30081);
    local.external_ips = vec![];
    local.external_local = true;
    let mut sticky = svc("sticky", &["198.19.128.14"]);
    sticky.affinity_timeout = Some(600);
    let mut empty = svc("empty", &["198.19.128.15"]);
    empty.kind = ServiceKind::NodePort;
    empty.ports[0].node_port = Some(30082);
    let dual = svc("dual", &["198.19.128.16", "fd00:43::16"]);
    let services = vec![
        svc("web", &["198.19.128.10"]),
        named,
        np,
        local,
        sticky,
        empty,
        dual,
    ];
    let one = |name: &str| {
        slice(
            name,
            "a",
            &[("", 8080)],
            vec![ep("198.19.1.5", true, "pi1"), ep("198.19.2.6", true, "pi2")],
        )
    };
    let slices = vec![
        two_ready_one_unready(),
        slice(
            "named",
            "a",
            &[("metrics", 9090), ("http", 8080)],
            vec![ep("198.19.1.8", true, "pi1")],
        ),
        one("np"),
        one("local"),
        one("sticky"),
        slice(
            "dual",
            "v4",
            &[("", 8080)],
            vec![ep("198.19.1.9", true, "pi1")],
        ),
        slice(
            "dual",
            "v6",
            &[("", 8080)],
            vec![ep("fd00:19::9", true, "pi1")],
        ),
    ];
    (services, slices)
}

#[test]
fn a_cluster_ip_balances_over_ready_endpoints_only() {
    let (services, slices) = shapes();
    assert_eq!(
        added(&services[0..=0], &slices),
        r#"add chain inet keelson-services service-#0
add chain inet keelson-services endpoint-#1
add chain inet keelson-services endpoint-#2
add rule inet keelson-services service-#0 ip daddr 198.19.128.10 meta l4proto tcp th dport 80 ip saddr != 198.19.0.0/17 jump mark-for-masquerade
add rule inet keelson-services service-#0 numgen random mod 2 vmap { 0 : goto endpoint-#1, 1 : goto endpoint-#2 }
add rule inet keelson-services endpoint-#1 ip saddr 198.19.1.5 jump mark-for-masquerade
add rule inet keelson-services endpoint-#1 meta l4proto tcp dnat ip to 198.19.1.5:8080
add rule inet keelson-services endpoint-#2 ip saddr 198.19.2.6 jump mark-for-masquerade
add rule inet keelson-services endpoint-#2 meta l4proto tcp dnat ip to 198.19.2.6:8080
add element inet keelson-services service-ips-v4 { 198.19.128.10 . tcp . 80 : goto service-#0 }
"#
    );
}

#[test]
fn a_named_target_port_takes_the_number_of_the_slice_port_of_the_same_name() {
    let (services, slices) = shapes();
    assert_eq!(
        added(&services[1..=1], &slices),
        r#"add chain inet keelson-services service-#0
add chain inet keelson-services endpoint-#1
add rule inet keelson-services service-#0 ip daddr 198.19.128.11 meta l4proto tcp th dport 80 ip saddr != 198.19.0.0/17 jump mark-for-masquerade
add rule inet keelson-services service-#0 goto endpoint-#1
add rule inet keelson-services endpoint-#1 ip saddr 198.19.1.8 jump mark-for-masquerade
add rule inet keelson-services endpoint-#1 meta l4proto tcp dnat ip to 198.19.1.8:8080
add element inet keelson-services service-ips-v4 { 198.19.128.11 . tcp . 80 : goto service-#0 }
"#
    );
}

#[test]
fn a_node_port_and_an_external_ip_masquerade_and_use_every_endpoint() {
    let (services, slices) = shapes();
    assert_eq!(
        added(&services[2..=2], &slices),
        r#"add chain inet keelson-services service-#0
add chain inet keelson-services external-#0
add chain inet keelson-services endpoint-#1
add chain inet keelson-services endpoint-#2
add rule inet keelson-services service-#0 ip daddr 198.19.128.12 meta l4proto tcp th dport 80 ip saddr != 198.19.0.0/17 jump mark-for-masquerade
add rule inet keelson-services service-#0 numgen random mod 2 vmap { 0 : goto endpoint-#1, 1 : goto endpoint-#2 }
add rule inet keelson-services external-#0 jump mark-for-masquerade
add rule inet keelson-services external-#0 goto service-#0
add rule inet keelson-services endpoint-#1 ip saddr 198.19.1.5 jump mark-for-masquerade
add rule inet keelson-services endpoint-#1 meta l4proto tcp dnat ip to 198.19.1.5:8080
add rule inet keelson-services endpoint-#2 ip saddr 198.19.2.6 jump mark-for-masquerade
add rule inet keelson-services endpoint-#2 meta l4proto tcp dnat ip to 198.19.2.6:8080
add element inet keelson-services service-ips-v4 { 198.18.10.50 . tcp . 80 : goto external-#0 }
add element inet keelson-services service-ips-v4 { 198.19.128.12 . tcp . 80 : goto service-#0 }
add element inet keelson-services service-nodeports-v4 { tcp . 30080 : goto external-#0 }
"#
    );
}

#[test]
fn external_policy_local_uses_only_this_nodes_endpoints_and_keeps_the_client() {
    let (services, slices) = shapes();
    assert_eq!(
        added(&services[3..=3], &slices),
        r#"add chain inet keelson-services service-#0
add chain inet keelson-services external-#0
add chain inet keelson-services endpoint-#1
add chain inet keelson-services endpoint-#2
add rule inet keelson-services service-#0 ip daddr 198.19.128.13 meta l4proto tcp th dport 80 ip saddr != 198.19.0.0/17 jump mark-for-masquerade
add rule inet keelson-services service-#0 numgen random mod 2 vmap { 0 : goto endpoint-#2, 1 : goto endpoint-#1 }
add rule inet keelson-services external-#0 ip saddr 198.19.0.0/17 goto service-#0
add rule inet keelson-services external-#0 fib saddr type local jump mark-for-masquerade
add rule inet keelson-services external-#0 fib saddr type local goto service-#0
add rule inet keelson-services external-#0 goto endpoint-#2
add rule inet keelson-services endpoint-#1 ip saddr 198.19.2.6 jump mark-for-masquerade
add rule inet keelson-services endpoint-#1 meta l4proto tcp dnat ip to 198.19.2.6:8080
add rule inet keelson-services endpoint-#2 ip saddr 198.19.1.5 jump mark-for-masquerade
add rule inet keelson-services endpoint-#2 meta l4proto tcp dnat ip to 198.19.1.5:8080
add element inet keelson-services service-ips-v4 { 198.19.128.13 . tcp . 80 : goto service-#0 }
add element inet keelson-services service-nodeports-v4 { tcp . 30081 : goto external-#0 }
"#
    );
}

#[test]
fn client_ip_affinity_remembers_each_client_per_endpoint() {
    let (services, slices) = shapes();
    assert_eq!(
        added(&services[4..=4], &slices),
        r#"add set inet keelson-services affinity-#0 { type ipv4_addr; flags dynamic,timeout; timeout 600s; }
add set inet keelson-services affinity-#1 { type ipv4_addr; flags dynamic,timeout; timeout 600s; }
add chain inet keelson-services service-#2
add chain inet keelson-services endpoint-#0
add chain inet keelson-services endpoint-#1
add rule inet keelson-services service-#2 ip daddr 198.19.128.14 meta l4proto tcp th dport 80 ip saddr != 198.19.0.0/17 jump mark-for-masquerade
add rule inet keelson-services service-#2 ip saddr @affinity-#1 goto endpoint-#1
add rule inet keelson-services service-#2 ip saddr @affinity-#0 goto endpoint-#0
add rule inet keelson-services service-#2 numgen random mod 2 vmap { 0 : goto endpoint-#1, 1 : goto endpoint-#0 }
add rule inet keelson-services endpoint-#0 ip saddr 198.19.2.6 jump mark-for-masquerade
add rule inet keelson-services endpoint-#0 update @affinity-#0 { ip saddr }
add rule inet keelson-services endpoint-#0 meta l4proto tcp dnat ip to 198.19.2.6:8080
add rule inet keelson-services endpoint-#1 ip saddr 198.19.1.5 jump mark-for-masquerade
add rule inet keelson-services endpoint-#1 update @affinity-#1 { ip saddr }
add rule inet keelson-services endpoint-#1 meta l4proto tcp dnat ip to 198.19.1.5:8080
add element inet keelson-services service-ips-v4 { 198.19.128.14 . tcp . 80 : goto service-#2 }
"#
    );
}

#[test]
fn a_service_without_endpoints_rejects() {
    let (services, slices) = shapes();
    assert_eq!(
        added(&services[5..=5], &slices),
        r#"add element inet keelson-services no-endpoint-services-v4 { 198.19.128.15 . tcp . 80 : goto reject-chain }
add element inet keelson-services no-endpoint-nodeports-v4 { tcp . 30082 : goto reject-chain }
"#
    );
}

#[test]
fn a_dual_stack_service_gets_a_chain_per_family() {
    let (services, slices) = shapes();
    assert_eq!(
        added(&services[6..=6], &slices),
        r#"add chain inet keelson-services service-#0
add chain inet keelson-services service-#1
add chain inet keelson-services endpoint-#2
add chain inet keelson-services endpoint-#3
add rule inet keelson-services service-#0 ip6 daddr fd00:43::16 meta l4proto tcp th dport 80 ip6 saddr != fd00:19::/64 jump mark-for-masquerade
add rule inet keelson-services service-#0 goto endpoint-#2
add rule inet keelson-services service-#1 ip daddr 198.19.128.16 meta l4proto tcp th dport 80 ip saddr != 198.19.0.0/17 jump mark-for-masquerade
add rule inet keelson-services service-#1 goto endpoint-#3
add rule inet keelson-services endpoint-#2 ip6 saddr fd00:19::9 jump mark-for-masquerade
add rule inet keelson-services endpoint-#2 meta l4proto tcp dnat ip6 to [fd00:19::9]:8080
add rule inet keelson-services endpoint-#3 ip saddr 198.19.1.9 jump mark-for-masquerade
add rule inet keelson-services endpoint-#3 meta l4proto tcp dnat ip to 198.19.1.9:8080
add element inet keelson-services service-ips-v4 { 198.19.128.16 . tcp . 80 : goto service-#1 }
add element inet keelson-services service-ips-v6 { fd00:43::16 . tcp . 80 : goto service-#0 }
"#
    );
}

#[test]
fn headless_and_external_name_services_get_no_rules() {
    let mut headless = svc("db", &[]);
    headless.cluster_ips.clear();
    let mut alias = svc("ext", &[]);
    alias.kind = ServiceKind::ExternalName("example.org".into());
    let slices = [slice(
        "db",
        "a",
        &[("", 8080)],
        vec![ep("198.19.1.5", true, "pi1")],
    )];
    let (rs, skips) = build(&[headless, alias], &slices);
    assert_eq!(rs, Ruleset::default());
    assert!(skips.is_empty());
}

#[test]
fn without_ready_endpoints_serving_terminating_ones_are_used() {
    let mut leaving = ep("198.19.1.5", false, "pi1");
    leaving.serving = true;
    leaving.terminating = true;
    let slices = [slice(
        "web",
        "a",
        &[("", 8080)],
        vec![leaving, ep("198.19.2.6", false, "pi2")],
    )];
    let text = added(&[svc("web", &["198.19.128.10"])], &slices);
    assert!(text.contains("dnat ip to 198.19.1.5:8080"), "{text}");
    assert!(!text.contains("198.19.2.6"), "{text}");
    assert!(!text.contains("reject"), "{text}");
}

/// Chain names are a stable hash of what they stand for: the same in every build and run.
#[test]
fn chain_names_are_stable() {
    let (rs, _) = build(
        &[svc("web", &["198.19.128.10"])],
        &[two_ready_one_unready()],
    );
    let names: Vec<String> = rs.chains.keys().map(|c| c.to_string()).collect();
    assert_eq!(
        names,
        [
            "service-0e6e86b9199b202e",
            "endpoint-1f54f1b223780e5a",
            "endpoint-352bdef506b110b6"
        ]
    );
}

#[test]
fn changing_one_endpoint_touches_only_that_services_chains() {
    let (services, mut slices) = shapes();
    let (before, _) = build(&services, &slices);
    let programmed = before.programmed();
    assert_eq!(
        before.diff(&programmed),
        None,
        "nothing changed, nothing sent"
    );
    // web's 198.19.2.6 becomes unready.
    slices[0].endpoints[1].ready = false;
    slices[0].endpoints[1].serving = false;
    let (after, _) = build(&services, &slices);
    let diff = readable(&after.diff(&programmed).unwrap());
    assert_eq!(
        diff,
        r#"flush chain inet keelson-services service-#0
add rule inet keelson-services service-#0 ip daddr 198.19.128.10 meta l4proto tcp th dport 80 ip saddr != 198.19.0.0/17 jump mark-for-masquerade
add rule inet keelson-services service-#0 goto endpoint-#1
flush chain inet keelson-services endpoint-#2
delete chain inet keelson-services endpoint-#2
"#
    );
    let web = before.chains.keys().next().unwrap().to_string();
    assert!(readable(&format!("{web}\n")).starts_with("service-#0"));

    // The Service goes: its chains and its element, and nothing else.
    let (gone, _) = build(&services[1..], &slices);
    let diff = readable(&gone.diff(&programmed).unwrap());
    assert_eq!(
        diff,
        r#"delete element inet keelson-services service-ips-v4 { 198.19.128.10 . tcp . 80 }
flush chain inet keelson-services service-#0
flush chain inet keelson-services endpoint-#1
flush chain inet keelson-services endpoint-#2
delete chain inet keelson-services service-#0
delete chain inet keelson-services endpoint-#1
delete chain inet keelson-services endpoint-#2
"#
    );
}

#[test]
fn an_address_two_services_claim_goes_to_the_first_and_the_other_is_reported() {
    let mut a = svc("a", &["198.19.128.20"]);
    a.external_ips = vec![ip("198.18.10.50")];
    let mut b = svc("b", &["198.19.128.21"]);
    b.external_ips = vec![ip("198.18.10.50")];
    let slices = [
        slice("a", "1", &[("", 8080)], vec![ep("198.19.1.5", true, "pi1")]),
        slice("b", "1", &[("", 8080)], vec![ep("198.19.1.6", true, "pi1")]),
    ];
    let (rs, skips) = build(&[a, b], &slices);
    assert_eq!(
        skips,
        vec![Skip {
            service: key("b"),
            port: String::new(),
            why: SkipReason::AddressTaken(ip("198.18.10.50"), Protocol::Tcp, 80),
        }]
    );
    let external = rs
        .elements
        .keys()
        .filter(|(_, k)| *k == ElementKey::Address(ip("198.18.10.50"), Protocol::Tcp, 80))
        .count();
    assert_eq!(
        external, 1,
        "claimed once: the transaction cannot fail on it"
    );
    assert!(
        rs.elements.contains_key(&(
            Map::ServiceIps(Family::V4),
            ElementKey::Address(ip("198.19.128.21"), Protocol::Tcp, 80)
        )),
        "b's cluster IP still works"
    );
}

#[test]
fn the_full_table_replaces_any_previous_one_in_one_transaction() {
    let (services, slices) = shapes();
    let (rs, _) = build(&services, &slices);
    let full = rs.full();
    assert!(full.starts_with(
        "add table inet keelson-services\ndelete table inet keelson-services\ntable inet keelson-services {\n"
    ));
    for hook in [
        "type nat hook prerouting priority dstnat",
        "type nat hook output priority -100",
        "type nat hook postrouting priority srcnat",
        "type filter hook input priority -110",
        "type filter hook forward priority -110",
        "type filter hook output priority -110",
    ] {
        assert!(full.contains(hook), "{hook}");
    }
    assert!(full.contains("masquerade fully-random"));
    assert!(full.contains("add element inet keelson-services no-endpoint-nodeports-v4 { tcp . 30082 : goto reject-chain }"));
}

#[test]
fn the_cluster_dns_service_gets_no_rules_as_the_node_answers_on_its_address() {
    // Without endpoints, any other Service's address rejects; the DNS Service's must reach
    // the node's own DNS server.
    let dns = svc("kube-dns", &[CLUSTER_DNS]);
    let other = svc("empty", &["198.19.128.54"]);
    let (rs, skips) = build(&[dns, other], &[]);
    assert!(skips.is_empty(), "{skips:?}");
    let text = rs.diff(&Programmed::default()).unwrap_or_default();
    assert!(!text.contains(CLUSTER_DNS), "{text}");
    assert!(
        text.contains("no-endpoint-services-v4 { 198.19.128.54 . tcp . 80 : goto reject-chain }"),
        "{text}"
    );
}
