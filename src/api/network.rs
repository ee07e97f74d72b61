//! The network facts every node needs, as compact typed values: the cluster's network settings,
//! each node's addresses and pod blocks, and the Services and EndpointSlices that nodes turn
//! into routes, packet rules and DNS answers.
//!
//! Servers build these from the stored objects and send them down the tunnel; a node keeps
//! only these (a few hundred bytes per Service), never the objects themselves. Conversion is
//! forgiving: a field the API validated but this view cannot use (an unknown protocol, an
//! address that does not parse) is left out, never a reason to drop the whole object.
//!
//! Invariants: a [`ServiceInfo`] with `cluster_ips` empty is headless (or ExternalName); an
//! endpoint's `addresses` are never empty; ports are in the object's order.

// Its node-side readers (routes, Service rules, DNS) land next.
#![allow(dead_code)]

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cidr::Cidr;

/// A namespaced object's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

/// `--flannel-backend`: how pod traffic reaches other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// Encapsulated in UDP (port 8472), for nodes that do not share a link.
    Vxlan,
    /// Plain routes via each node's address, for nodes on one LAN.
    HostGw,
    /// Nothing: another CNI makes the pod network.
    None,
}

/// Settings every server of a cluster shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    pub cluster_cidrs: Vec<Cidr>,
    pub service_cidrs: Vec<Cidr>,
    /// `--cluster-dns`: the address pods use as their nameserver.
    pub cluster_dns: Option<IpAddr>,
    pub cluster_domain: String,
    pub backend: Backend,
    /// How LoadBalancer address leases are timed: servers grant by it, nodes hold by it.
    pub lb_timing: LbTiming,
}

/// `--service-lb-lease-duration`, `--service-lb-renew-deadline`, `--service-lb-retry-period`, in
/// milliseconds. Invariant (checked where the flags are read): retry < renew deadline < lease,
/// so a holder lets go before anyone else can take its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbTiming {
    pub lease_ms: u32,
    pub renew_deadline_ms: u32,
    pub retry_ms: u32,
}

impl Default for LbTiming {
    /// The virtual IP's: failover in about a second, 10 statements/s per address.
    fn default() -> LbTiming {
        LbTiming {
            lease_ms: 1000,
            renew_deadline_ms: 700,
            retry_ms: 200,
        }
    }
}

/// One node as the others' routes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNet {
    pub name: String,
    /// `InternalIP` addresses first, then `ExternalIP`.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs`; empty until the controllers gave the node a block.
    pub pod_cidrs: Vec<Cidr>,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// What the node's labels say about holding LoadBalancer addresses.
    pub lb: LbLabel,
}

/// A node's labels as far as LoadBalancer addresses go (see [`lb_candidates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LbLabel {
    /// Neither label: eligible unless some node carries [`ENABLE_LB_LABEL`].
    #[default]
    Unlabelled,
    /// [`EXCLUDE_LB_LABEL`] is set (any value): never eligible.
    Excluded,
    /// [`ENABLE_LB_LABEL`] is set; eligible only when it says `"true"`.
    EnableLb(bool),
}

/// The standard label that keeps a node out of external load balancing.
pub const EXCLUDE_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// K3s's ServiceLB label: once any node carries it, only nodes with `"true"` take part.
pub const ENABLE_LB_LABEL: &str = "svccontroller.k3s.cattle.io/enablelb";
/// How many nodes contend for one LoadBalancer address: the one that should hold it and a
/// standby, so the database never sees more than this many contenders per address.
pub const LB_CANDIDATES: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// Where a Service port sends its traffic in a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetPort {
    Number(u16),
    /// A container port's name, looked up in the EndpointSlice's ports.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Empty for a Service's only port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    /// A DNS alias; no addresses, no packet rules.
    ExternalName(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub key: Key,
    pub kind: ServiceKind,
    /// `spec.clusterIPs`; empty for headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `publishNotReadyAddresses`: DNS names not-ready endpoints too.
    pub publish_not_ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Never empty.
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    /// The pod behind the address, for reverse lookups.
    pub pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceInfo {
    pub key: Key,
    /// The `kubernetes.io/service-name` label: the Service this slice belongs to.
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

// === impl Key ===

impl Key {
    pub fn of(obj: &Value) -> Option<Key> {
        let meta = &obj["metadata"];
        Some(Key {
            namespace: meta["namespace"].as_str()?.to_owned(),
            name: meta["name"].as_str()?.to_owned(),
        })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl Backend ===

impl Backend {
    pub const NAMES: &'static str = "vxlan, host-gw, none";

    pub fn parse(raw: &str) -> Option<Backend> {
        match raw {
            "vxlan" => Some(Backend::Vxlan),
            "host-gw" => Some(Backend::HostGw),
            "none" => Some(Backend::None),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::None => "none",
        }
    }
}

// === impl NodeNet ===

impl NodeNet {
    pub fn from_node(node: &Value) -> Option<NodeNet> {
        let name = node["metadata"]["name"].as_str()?.to_owned();
        let listed = &node["status"]["addresses"];
        let of_type = |t: &'static str| {
            listed
                .as_array()
                .into_iter()
                .flatten()
                .filter(move |a| a["type"] == t)
                .filter_map(|a| a["address"].as_str()?.parse::<IpAddr>().ok())
        };
        let addresses = of_type("InternalIP").chain(of_type("ExternalIP")).collect();
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let labels = &node["metadata"]["labels"];
        let lb = if !labels[EXCLUDE_LB_LABEL].is_null() {
            LbLabel::Excluded
        } else if let Some(v) = labels[ENABLE_LB_LABEL].as_str() {
            LbLabel::EnableLb(v == "true")
        } else {
            LbLabel::Unlabelled
        };
        Some(NodeNet {
            name,
            addresses,
            pod_cidrs: strings(&node["spec"]["podCIDRs"])
                .filter_map(|c| Cidr::parse(c).ok())
                .collect(),
            ready,
            lb,
        })
    }
}

/// The nodes that contend for LoadBalancer address `address`, best first: at most
/// [`LB_CANDIDATES`] of the ready, eligible nodes, ranked by a rendezvous hash of the address
/// and the node's name. Every node and every server computes this from its own network view
/// and gets the same answer once the views agree; a node joining or leaving moves only the
/// addresses it ranks high for. Eligibility follows K3s's ServiceLB: never a node labelled
/// [`EXCLUDE_LB_LABEL`]; when any node carries [`ENABLE_LB_LABEL`], only those set to `"true"`.
pub fn lb_candidates<'a>(
    address: IpAddr,
    nodes: impl Iterator<Item = &'a NodeNet> + Clone,
) -> Vec<&'a str> {
    let opt_in = nodes.clone().any(|n| matches!(n.lb, LbLabel::EnableLb(_)));
    let key = address.to_string();
    let mut ranked: Vec<(u64, &str)> = nodes
        .filter(|n| n.ready)
        .filter(|n| match n.lb {
            LbLabel::Excluded => false,
            LbLabel::EnableLb(on) => on,
            LbLabel::Unlabelled => !opt_in,
        })
        .map(|n| (rendezvous(&key, &n.name), n.name.as_str()))
        .collect();
    // Highest score first; the name breaks (unlikely) ties so the order is total.
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked
        .into_iter()
        .take(LB_CANDIDATES)
        .map(|(_, name)| name)
        .collect()
}

/// The addresses nodes hold for LoadBalancer Services: every `status.loadBalancer.ingress`
/// IP of a `LoadBalancer` Service, except nodes' own addresses (without a pool the ingress is
/// the nodes' addresses, K3s's way, and those are never moved).
pub fn lb_addresses<'a>(
    services: impl Iterator<Item = &'a ServiceInfo>,
    nodes: impl Iterator<Item = &'a NodeNet>,
) -> std::collections::BTreeSet<IpAddr> {
    let own: std::collections::HashSet<IpAddr> =
        nodes.flat_map(|n| n.addresses.iter().copied()).collect();
    services
        .filter(|s| s.kind == ServiceKind::LoadBalancer)
        .flat_map(|s| s.load_balancer_ips.iter().copied())
        .filter(|a| !own.contains(a))
        .collect()
}

/// A score for (address, node) that every build computes alike: FNV-1a over both strings
/// (std's hasher may change between Rust releases, and servers and agents need not be built
/// by the same one), finished with splitmix64's mixer so close names spread apart.
fn rendezvous(address: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in address.bytes().chain([0]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

// === impl Protocol ===

impl Protocol {
    /// Kubernetes' default when `protocol` is absent is TCP.
    fn parse(v: &Value) -> Option<Protocol> {
        match v.as_str().unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

// === impl ServiceInfo ===

impl ServiceInfo {
    pub fn from_object(svc: &Value) -> Option<ServiceInfo> {
        let key = Key::of(svc)?;
        let spec = &svc["spec"];
        let kind = match spec["type"].as_str().unwrap_or("ClusterIP") {
            "NodePort" => ServiceKind::NodePort,
            "LoadBalancer" => ServiceKind::LoadBalancer,
            "ExternalName" => {
                ServiceKind::ExternalName(spec["externalName"].as_str().unwrap_or("").to_owned())
            }
            _ => ServiceKind::ClusterIp,
        };
        let cluster_ips = match kind {
            ServiceKind::ExternalName(_) => Vec::new(),
            _ => addresses(&spec["clusterIPs"]),
        };
        let ports = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(ServicePort {
                    name: p["name"].as_str().unwrap_or("").to_owned(),
                    protocol: Protocol::parse(&p["protocol"])?,
                    port: port(&p["port"])?,
                    target_port: match &p["targetPort"] {
                        Value::String(name) => match name.parse::<u16>() {
                            Ok(n) => TargetPort::Number(n),
                            Err(_) => TargetPort::Name(name.clone()),
                        },
                        // Kubernetes defaults targetPort to port.
                        Value::Null => TargetPort::Number(port(&p["port"])?),
                        n => TargetPort::Number(port(n)?),
                    },
                    node_port: port(&p["nodePort"]),
                })
            })
            .collect();
        let affinity_timeout = (spec["sessionAffinity"] == "ClientIP").then(|| {
            spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                // Kubernetes' default: three hours.
                .unwrap_or(10_800)
        });
        let load_balancer_ips = svc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str()?.parse().ok())
            .collect();
        Some(ServiceInfo {
            key,
            kind,
            cluster_ips,
            ports,
            affinity_timeout,
            external_local: spec["externalTrafficPolicy"] == "Local",
            internal_local: spec["internalTrafficPolicy"] == "Local",
            external_ips: addresses(&spec["externalIPs"]),
            load_balancer_ips,
            publish_not_ready: spec["publishNotReadyAddresses"] == true,
        })
    }

    /// No cluster address: DNS answers with the endpoints' addresses instead.
    pub fn is_headless(&self) -> bool {
        self.cluster_ips.is_empty() && !matches!(self.kind, ServiceKind::ExternalName(_))
    }
}

// === impl SliceInfo ===

impl SliceInfo {
    pub fn from_object(slice: &Value) -> Option<SliceInfo> {
        let key = Key::of(slice)?;
        let service = slice["metadata"]["labels"]["kubernetes.io/service-name"]
            .as_str()?
            .to_owned();
        let ports = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(SlicePort {
                    name: p["name"].as_str().unwrap_or("").to_owned(),
                    protocol: Protocol::parse(&p["protocol"])?,
                    port: port(&p["port"])?,
                })
            })
            .collect();
        let endpoints = slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let addresses = addresses(&e["addresses"]);
                if addresses.is_empty() {
                    return None;
                }
                let cond = &e["conditions"];
                // EndpointSlice semantics: an absent `ready` means ready; `serving` defaults
                // to `ready`; `terminating` to false.
                let ready = cond["ready"].as_bool().unwrap_or(true);
                let pod = (e["targetRef"]["kind"] == "Pod")
                    .then(|| e["targetRef"]["name"].as_str().map(str::to_owned))
                    .flatten();
                Some(Endpoint {
                    addresses,
                    ready,
                    serving: cond["serving"].as_bool().unwrap_or(ready),
                    terminating: cond["terminating"].as_bool().unwrap_or(false),
                    hostname: e["hostname"].as_str().map(str::to_owned),
                    node_name: e["nodeName"].as_str().map(str::to_owned),
                    pod,
                })
            })
            .collect();
        Some(SliceInfo {
            key,
            service,
            ports,
            endpoints,
        })
    }
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn addresses(v: &Value) -> Vec<IpAddr> {
    strings(v).filter_map(|a| a.parse().ok()).collect()
}

fn port(v: &Value) -> Option<u16> {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_keeps_what_packet_rules_and_dns_need() {
        let svc = json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {
                "type": "NodePort", "clusterIPs": ["10.43.0.20", "fd00::20"],
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353},
                    {"name": "plain", "port": 8080},
                    {"name": "odd", "protocol": "QUIC", "port": 1}
                ],
                "sessionAffinity": "ClientIP",
                "externalTrafficPolicy": "Local"
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.5.1"}, {"hostname": "x"}]}}
        });
        let info = ServiceInfo::from_object(&svc).unwrap();
        assert_eq!(info.kind, ServiceKind::NodePort);
        assert_eq!(info.cluster_ips.len(), 2);
        assert_eq!(
            info.ports.len(),
            3,
            "an unknown protocol leaves one port out"
        );
        assert_eq!(info.ports[0].target_port, TargetPort::Name("http".into()));
        assert_eq!(info.ports[0].node_port, Some(30080));
        assert_eq!(info.ports[1].protocol, Protocol::Udp);
        assert_eq!(info.ports[2].target_port, TargetPort::Number(8080));
        assert_eq!(info.affinity_timeout, Some(10_800));
        assert!(info.external_local && !info.internal_local);
        assert_eq!(
            info.load_balancer_ips,
            vec!["198.18.5.1".parse::<IpAddr>().unwrap()]
        );
        assert!(!info.is_headless());

        let headless = json!({"metadata": {"namespace": "a", "name": "db"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        assert!(ServiceInfo::from_object(&headless).unwrap().is_headless());
        let alias = json!({"metadata": {"namespace": "a", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}});
        let alias = ServiceInfo::from_object(&alias).unwrap();
        assert!(!alias.is_headless());
        assert_eq!(alias.kind, ServiceKind::ExternalName("example.org".into()));
    }

    #[test]
    fn a_slice_keeps_addressed_endpoints_with_their_conditions() {
        let slice = json!({
            "metadata": {"namespace": "shop", "name": "web-abc",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.1.5"], "conditions": {"ready": true},
                 "hostname": "web-0", "nodeName": "pi1",
                 "targetRef": {"kind": "Pod", "name": "web-0"}},
                {"addresses": ["10.42.2.6"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": [], "conditions": {"ready": true}},
                {"addresses": ["10.42.3.7"]}
            ]
        });
        let info = SliceInfo::from_object(&slice).unwrap();
        assert_eq!(info.service, "web");
        assert_eq!(info.ports[0].port, 8080);
        assert_eq!(
            info.endpoints.len(),
            3,
            "an endpoint without addresses is left out"
        );
        assert!(info.endpoints[0].ready && info.endpoints[0].serving);
        assert_eq!(info.endpoints[0].pod.as_deref(), Some("web-0"));
        assert!(!info.endpoints[1].ready && info.endpoints[1].terminating);
        assert!(info.endpoints[2].ready, "absent conditions mean ready");
        let unlabelled = json!({"metadata": {"namespace": "a", "name": "x"}});
        assert!(SliceInfo::from_object(&unlabelled).is_none());
    }

    #[test]
    fn a_node_lists_internal_addresses_first_and_its_pod_blocks() {
        let node = json!({
            "metadata": {"name": "pi1"},
            "spec": {"podCIDRs": ["10.42.1.0/24", "bogus"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "pi1"},
                {"type": "ExternalIP", "address": "203.0.113.4"},
                {"type": "InternalIP", "address": "192.168.1.4"}
            ]}
        });
        let n = NodeNet::from_node(&node).unwrap();
        assert_eq!(
            n.addresses,
            vec![
                "192.168.1.4".parse::<IpAddr>().unwrap(),
                "203.0.113.4".parse().unwrap()
            ]
        );
        assert_eq!(n.pod_cidrs, vec![Cidr::parse("10.42.1.0/24").unwrap()]);
        assert!(!n.ready, "no Ready condition means not ready");
        assert_eq!(n.lb, LbLabel::Unlabelled);
    }

    fn lb_node(name: &str, ready: bool, lb: LbLabel) -> NodeNet {
        NodeNet {
            name: name.into(),
            addresses: vec![],
            pod_cidrs: vec![],
            ready,
            lb,
        }
    }

    #[test]
    fn a_node_reads_ready_and_its_load_balancer_labels() {
        let node = |labels: Value, ready: &str| {
            NodeNet::from_node(&json!({
                "metadata": {"name": "pi1", "labels": labels},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}
            }))
            .unwrap()
        };
        let n = node(json!({}), "True");
        assert!(n.ready);
        assert_eq!(n.lb, LbLabel::Unlabelled);
        assert!(!node(json!({}), "Unknown").ready);
        assert_eq!(
            node(
                json!({EXCLUDE_LB_LABEL: "", ENABLE_LB_LABEL: "true"}),
                "True"
            )
            .lb,
            LbLabel::Excluded,
            "exclusion wins"
        );
        assert_eq!(
            node(json!({ENABLE_LB_LABEL: "false"}), "True").lb,
            LbLabel::EnableLb(false)
        );
    }

    #[test]
    fn lb_candidates_are_stable_ready_eligible_and_at_most_two() {
        let ip: IpAddr = "198.18.3.10".parse().unwrap();
        let nodes: Vec<NodeNet> = (0..6)
            .map(|i| lb_node(&format!("pi{i}"), true, LbLabel::Unlabelled))
            .collect();
        let top = lb_candidates(ip, nodes.iter());
        assert_eq!(top.len(), LB_CANDIDATES);
        // Any order of the same nodes gives the same answer.
        assert_eq!(lb_candidates(ip, nodes.iter().rev()), top);
        // Taking out a node that is not a candidate changes nothing (rendezvous hashing).
        let others: Vec<NodeNet> = nodes
            .iter()
            .filter(|n| n.name == top[0] || n.name == top[1] || n.name == "pi9")
            .cloned()
            .collect();
        assert_eq!(lb_candidates(ip, others.iter()), top);
        // Different addresses spread over the nodes.
        let firsts: std::collections::BTreeSet<&str> = (10..40)
            .map(|i| lb_candidates(IpAddr::from([198, 18, 3, i]), nodes.iter())[0])
            .collect();
        assert!(firsts.len() >= 3, "{firsts:?}");

        // The first candidate unready or excluded: the standby moves up.
        let mut changed = nodes.clone();
        changed.iter_mut().for_each(|n| {
            if n.name == top[0] {
                n.ready = false;
            }
        });
        assert_eq!(lb_candidates(ip, changed.iter())[0], top[1]);
        changed.iter_mut().for_each(|n| {
            if n.name == top[1] {
                n.lb = LbLabel::Excluded;
            }
        });
        let now = lb_candidates(ip, changed.iter());
        assert!(!now.contains(&top[0]) && !now.contains(&top[1]));
        assert_eq!(now.len(), 2);
    }

    #[test]
    fn lb_addresses_leave_out_node_addresses_and_other_kinds() {
        let svc = |name: &str, kind: &str, ips: &[&str]| {
            ServiceInfo::from_object(&json!({
                "metadata": {"namespace": "a", "name": name},
                "spec": {"type": kind},
                "status": {"loadBalancer": {"ingress":
                    ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}}
            }))
            .unwrap()
        };
        let services = [
            svc("pool", "LoadBalancer", &["198.18.3.10"]),
            svc("nodes", "LoadBalancer", &["198.18.2.2"]),
            svc("stale", "ClusterIP", &["198.18.3.11"]),
        ];
        let mut node = lb_node("b2", true, LbLabel::Unlabelled);
        node.addresses = vec!["198.18.2.2".parse().unwrap()];
        let got = lb_addresses(services.iter(), std::iter::once(&node));
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec!["198.18.3.10".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn lb_candidates_follow_k3s_enablelb_once_any_node_has_it() {
        let ip: IpAddr = "198.18.3.11".parse().unwrap();
        let nodes = [
            lb_node("a", true, LbLabel::Unlabelled),
            lb_node("b", true, LbLabel::EnableLb(true)),
            lb_node("c", true, LbLabel::EnableLb(false)),
            lb_node("d", false, LbLabel::EnableLb(true)),
        ];
        assert_eq!(lb_candidates(ip, nodes.iter()), vec!["b"]);
        assert!(lb_candidates(ip, nodes[..1].iter()).contains(&"a"));
        assert!(lb_candidates(ip, std::iter::empty()).is_empty());
    }

    #[test]
    fn views_travel_through_postcard() {
        let net = ClusterNetwork {
            cluster_cidrs: vec![Cidr::parse("10.42.0.0/16").unwrap()],
            service_cidrs: vec![Cidr::parse("fd00:43::/112").unwrap()],
            cluster_dns: Some("10.43.0.10".parse().unwrap()),
            cluster_domain: "cluster.local".into(),
            backend: Backend::HostGw,
            lb_timing: Default::default(),
        };
        let bytes = postcard::to_stdvec(&net).unwrap();
        assert_eq!(postcard::from_bytes::<ClusterNetwork>(&bytes).unwrap(), net);
    }
}
