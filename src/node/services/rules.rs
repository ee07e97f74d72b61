//! What the `keelson-services` nftables table must hold for a set of Services and
//! EndpointSlices ([`Ruleset`]), what it holds now in compact form ([`Programmed`]), and the
//! `nft -f` text that creates the table or turns one into the other. IO-free: the caller runs
//! the text through `nft`.
//!
//! The layout is kube-proxy's nftables mode (KEP 3866), in one `inet` table so both families
//! share the base chains and one transaction changes everything:
//! - `services` (from the nat prerouting and output hooks) looks the destination up in the
//!   `service-ips-v4|v6` verdict maps (`daddr . l4proto . dport : goto service-…` for cluster
//!   IPs, `goto external-…` for external and load-balancer IPs) and, for addresses of this
//!   node (`fib daddr type local`), in `service-nodeports-v4|v6`;
//! - `service-<id>` (one per Service port and family) marks traffic from outside the cluster
//!   CIDR for masquerade, keeps ClientIP affinity, then picks an endpoint with
//!   `numgen random mod N vmap`; `endpoint-<id>` marks hairpin traffic (an endpoint reaching
//!   its own Service) and DNATs; `external-<id>` masquerades (policy Cluster) or sends to this
//!   node's endpoints only, keeping the client address (policy Local);
//! - a Service port without endpoints has its keys in `no-endpoint-*` maps, which the filter
//!   hooks turn into `reject`; the postrouting hook masquerades what was marked.
//!
//! Invariants: a [`Ruleset`] never claims one map key twice (the first Service in key order
//! keeps it, the others are reported as [`Skip`]s), so its text never fails on a duplicate;
//! chain and set names derive from a stable hash of what they stand for, so an unchanged
//! Service renders to the same names and bodies and the diff leaves it alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;
use std::net::IpAddr;

use crate::api::cidr::{Cidr, Family};
use crate::api::network::{Key, Protocol, ServiceInfo, ServiceKind, ServicePort, SliceInfo};

/// The table's name (family `inet`).
pub const TABLE: &str = "keelson-services";
/// The packet mark meaning "masquerade on the way out" (kube-proxy's value).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Which of a Service port's chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChainKind {
    /// Picks an endpoint (cluster IPs, and external traffic with policy Cluster).
    Service,
    /// Where external IPs, load-balancer IPs and node ports arrive.
    External,
    /// Masquerade marking and DNAT for one endpoint.
    Endpoint,
}

/// A per-Service chain: its kind and a hash of what it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainId {
    pub kind: ChainKind,
    pub id: u64,
}

/// The verdict maps of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Map {
    ServiceIps(Family),
    NodePorts(Family),
    NoEndpointServices(Family),
    NoEndpointNodePorts(Family),
}

/// A map element's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElementKey {
    /// `daddr . l4proto . dport`.
    Address(IpAddr, Protocol, u16),
    /// `l4proto . dport` (node ports, on every local address).
    Port(Protocol, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Goto(ChainId),
    /// No endpoints: refuse the connection.
    Reject,
}

/// Something of a Service the table cannot hold; the rest of the Service is programmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Skip {
    pub service: Key,
    pub port: String,
    pub why: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Another Service (first in name order) already uses this address and port.
    AddressTaken(IpAddr, Protocol, u16),
    /// Another Service already uses this node port.
    NodePortTaken(Protocol, u16),
    /// A NodePort or LoadBalancer Service's port without a node port.
    NoNodePort,
}

/// Everything the table must hold.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ruleset {
    /// Per-Service chains and their rules.
    pub chains: BTreeMap<ChainId, Vec<String>>,
    /// ClientIP affinity sets, one per endpoint chain (by its id): family and timeout.
    pub sets: BTreeMap<u64, (Family, u32)>,
    pub elements: BTreeMap<(Map, ElementKey), Verdict>,
}

/// What the table holds, compact: chain bodies as hashes. Only what a diff needs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Programmed {
    chains: HashMap<ChainId, u64>,
    sets: HashSet<u64>,
    elements: HashMap<(Map, ElementKey), Verdict>,
}

/// What a node needs to know besides Services and slices.
pub struct Context<'a> {
    /// `--cluster-cidr`: traffic from outside it to a cluster IP is masqueraded.
    pub cluster_cidrs: &'a [Cidr],
    /// This node's name: `externalTrafficPolicy: Local` uses only endpoints on it.
    pub node: &'a str,
    /// `--cluster-dns`: the node answers on it itself, so the Service holding it
    /// (`kube-system/kube-dns`, without endpoints) gets no rules — they would reject queries.
    pub cluster_dns: Option<IpAddr>,
}

/// One endpoint of a Service port, in one family.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    addr: IpAddr,
    port: u16,
    ready: bool,
    /// Serving and terminating: used only when no endpoint is ready.
    fallback: bool,
    local: bool,
}

// === impl Ruleset ===

impl Ruleset {
    /// The table for `services` (in key order) and their `slices`.
    pub fn build<'a>(
        ctx: &Context<'_>,
        services: impl IntoIterator<Item = &'a ServiceInfo>,
        slices: impl IntoIterator<Item = &'a SliceInfo>,
    ) -> (Ruleset, Vec<Skip>) {
        let mut by_service: BTreeMap<(&str, &str), Vec<&SliceInfo>> = BTreeMap::new();
        for s in slices {
            by_service
                .entry((s.key.namespace.as_str(), s.service.as_str()))
                .or_default()
                .push(s);
        }
        let mut rs = Ruleset::default();
        let mut skips = Vec::new();
        // Keys claimed so far, over the maps that share a lookup (a key in both
        // `service-ips` and `no-endpoint-services` would reject a working Service).
        let mut addresses: HashSet<(IpAddr, Protocol, u16)> = HashSet::new();
        let mut node_ports: HashSet<(Family, Protocol, u16)> = HashSet::new();
        for svc in services {
            if svc.cluster_ips.is_empty() || matches!(svc.kind, ServiceKind::ExternalName(_)) {
                // Headless and ExternalName Services are DNS only.
                continue;
            }
            if ctx
                .cluster_dns
                .is_some_and(|dns| svc.cluster_ips.contains(&dns))
            {
                continue;
            }
            let slices = by_service
                .get(&(svc.key.namespace.as_str(), svc.key.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            for port in &svc.ports {
                let node_port = match (&svc.kind, port.node_port) {
                    (ServiceKind::NodePort | ServiceKind::LoadBalancer, Some(p)) => Some(p),
                    (ServiceKind::NodePort | ServiceKind::LoadBalancer, None) => {
                        skips.push(Skip {
                            service: svc.key.clone(),
                            port: port.name.clone(),
                            why: SkipReason::NoNodePort,
                        });
                        None
                    }
                    _ => None,
                };
                for family in [Family::V4, Family::V6] {
                    let mut claim = Claims {
                        svc,
                        port,
                        family,
                        addresses: &mut addresses,
                        node_ports: &mut node_ports,
                        skips: &mut skips,
                    };
                    rs.add_port(ctx, &mut claim, slices, node_port);
                }
            }
        }
        (rs, skips)
    }

    /// One Service port in one family.
    fn add_port(
        &mut self,
        ctx: &Context<'_>,
        claim: &mut Claims<'_, '_>,
        slices: &[&SliceInfo],
        node_port: Option<u16>,
    ) {
        let (svc, port, family) = (claim.svc, claim.port, claim.family);
        let of_family = |a: &&IpAddr| family_of(**a) == family;
        let cluster_ips: Vec<IpAddr> = svc.cluster_ips.iter().filter(of_family).copied().collect();
        let external: Vec<IpAddr> = svc
            .external_ips
            .iter()
            .chain(&svc.load_balancer_ips)
            .filter(of_family)
            .copied()
            .collect();
        if cluster_ips.is_empty() {
            // A single-stack Service has nothing in the other family (external IPs of a
            // family without a cluster IP cannot be reached through one either).
            return;
        }
        let cluster_ips: Vec<IpAddr> = cluster_ips
            .into_iter()
            .filter(|ip| claim.address(*ip))
            .collect();
        let external: Vec<IpAddr> = external
            .into_iter()
            .filter(|ip| claim.address(*ip))
            .collect();
        let node_port = node_port.filter(|p| claim.node_port(*p));

        let targets = targets(ctx, port, family, slices);
        let chosen = usable(targets.iter());
        let proto = port.protocol;
        if chosen.is_empty() {
            for ip in cluster_ips.iter().chain(&external) {
                self.elements.insert(
                    (
                        Map::NoEndpointServices(family),
                        ElementKey::Address(*ip, proto, port.port),
                    ),
                    Verdict::Reject,
                );
            }
            if let Some(np) = node_port {
                self.elements.insert(
                    (
                        Map::NoEndpointNodePorts(family),
                        ElementKey::Port(proto, np),
                    ),
                    Verdict::Reject,
                );
            }
            return;
        }

        let base = service_hash(&svc.key, port, family, svc.affinity_timeout);
        let service = ChainId {
            kind: ChainKind::Service,
            id: base,
        };
        let ip = ip_word(family);
        let mut body = Vec::new();
        let cidrs: Vec<&Cidr> = ctx
            .cluster_cidrs
            .iter()
            .filter(|c| c.family() == family)
            .collect();
        if !cidrs.is_empty() {
            for cip in &cluster_ips {
                body.push(format!(
                    "{ip} daddr {cip} meta l4proto {} th dport {} {ip} saddr != {} jump mark-for-masquerade",
                    proto.name(),
                    port.port,
                    set_of(&cidrs)
                ));
            }
        }
        let chains: Vec<ChainId> = chosen
            .iter()
            .map(|t| self.add_endpoint(base, t, proto, family, svc.affinity_timeout))
            .collect();
        pick(&mut body, &chains, family, svc.affinity_timeout.is_some());
        self.chains.insert(service, body);
        for cip in &cluster_ips {
            self.elements.insert(
                (
                    Map::ServiceIps(family),
                    ElementKey::Address(*cip, proto, port.port),
                ),
                Verdict::Goto(service),
            );
        }

        if external.is_empty() && node_port.is_none() {
            return;
        }
        let ext = ChainId {
            kind: ChainKind::External,
            id: base,
        };
        let mut body = Vec::new();
        if svc.external_local {
            // Pods and the node itself still reach every endpoint (kube-proxy does the same);
            // traffic from elsewhere only this node's, with the client address kept.
            if !cidrs.is_empty() {
                body.push(format!("{ip} saddr {} goto {service}", set_of(&cidrs)));
            }
            body.push("fib saddr type local jump mark-for-masquerade".to_owned());
            body.push(format!("fib saddr type local goto {service}"));
            let local = usable(targets.iter().filter(|t| t.local));
            let chains: Vec<ChainId> = local
                .iter()
                .map(|t| self.add_endpoint(base, t, proto, family, svc.affinity_timeout))
                .collect();
            if chains.is_empty() {
                body.push("drop".to_owned());
            } else {
                pick(&mut body, &chains, family, svc.affinity_timeout.is_some());
            }
        } else {
            body.push("jump mark-for-masquerade".to_owned());
            body.push(format!("goto {service}"));
        }
        self.chains.insert(ext, body);
        for eip in &external {
            self.elements.insert(
                (
                    Map::ServiceIps(family),
                    ElementKey::Address(*eip, proto, port.port),
                ),
                Verdict::Goto(ext),
            );
        }
        if let Some(np) = node_port {
            self.elements.insert(
                (Map::NodePorts(family), ElementKey::Port(proto, np)),
                Verdict::Goto(ext),
            );
        }
    }

    /// The chain (and affinity set) of one endpoint; the same for the same endpoint however
    /// often it is asked for.
    fn add_endpoint(
        &mut self,
        base: u64,
        t: &Target,
        proto: Protocol,
        family: Family,
        affinity: Option<u32>,
    ) -> ChainId {
        let mut h = Fnv::new();
        h.u64(base);
        h.str(&t.addr.to_string());
        h.u64(t.port.into());
        let chain = ChainId {
            kind: ChainKind::Endpoint,
            id: h.finish(),
        };
        let ip = ip_word(family);
        let mut body = vec![format!("{ip} saddr {} jump mark-for-masquerade", t.addr)];
        if let Some(timeout) = affinity {
            self.sets.insert(chain.id, (family, timeout));
            body.push(format!(
                "update @{} {{ {ip} saddr }}",
                affinity_set(chain.id)
            ));
        }
        body.push(format!(
            "meta l4proto {} dnat {ip} to {}",
            proto.name(),
            socket(t.addr, t.port)
        ));
        self.chains.insert(chain, body);
        chain
    }

    /// The compact form kept after the table holds this.
    pub fn programmed(&self) -> Programmed {
        Programmed {
            chains: self
                .chains
                .iter()
                .map(|(id, body)| (*id, body_hash(body)))
                .collect(),
            sets: self.sets.keys().copied().collect(),
            elements: self.elements.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }

    /// The whole table, replacing whatever table of that name exists, in one transaction.
    pub fn full(&self) -> String {
        let mut out = String::with_capacity(4096 + self.chains.len() * 200);
        // `add` first so `delete` never fails on a node that has no table yet.
        let _ = writeln!(out, "add table inet {TABLE}");
        let _ = writeln!(out, "delete table inet {TABLE}");
        out.push_str(&base_table());
        for (id, (family, timeout)) in &self.sets {
            add_set(&mut out, *id, *family, *timeout);
        }
        for id in self.chains.keys() {
            let _ = writeln!(out, "add chain inet {TABLE} {id}");
        }
        for (id, body) in &self.chains {
            add_rules(&mut out, *id, body);
        }
        for ((map, key), verdict) in &self.elements {
            add_element(&mut out, *map, key, *verdict);
        }
        out
    }

    /// The transaction that turns the table `now` holds into this one; `None` when nothing
    /// changed. Order matters inside it: nothing is deleted while still referenced.
    pub fn diff(&self, now: &Programmed) -> Option<String> {
        let mut out = String::new();
        for (id, (family, timeout)) in &self.sets {
            if !now.sets.contains(id) {
                add_set(&mut out, *id, *family, *timeout);
            }
        }
        for id in self.chains.keys() {
            if !now.chains.contains_key(id) {
                let _ = writeln!(out, "add chain inet {TABLE} {id}");
            }
        }
        for (id, body) in &self.chains {
            match now.chains.get(id) {
                None => add_rules(&mut out, *id, body),
                Some(h) if *h != body_hash(body) => {
                    let _ = writeln!(out, "flush chain inet {TABLE} {id}");
                    add_rules(&mut out, *id, body);
                }
                Some(_) => {}
            }
        }
        for ((map, key), verdict) in &now.elements {
            if self.elements.get(&(*map, *key)) != Some(verdict) {
                let _ = writeln!(
                    out,
                    "delete element inet {TABLE} {} {{ {} }}",
                    map_name(*map),
                    element_key(key)
                );
            }
        }
        for ((map, key), verdict) in &self.elements {
            if now.elements.get(&(*map, *key)) != Some(verdict) {
                add_element(&mut out, *map, key, *verdict);
            }
        }
        // Sorted, so the text is the same for the same change.
        let gone: BTreeSet<ChainId> = now
            .chains
            .keys()
            .filter(|id| !self.chains.contains_key(id))
            .copied()
            .collect();
        // Flushed first: a gone service chain still jumps to gone endpoint chains.
        for id in &gone {
            let _ = writeln!(out, "flush chain inet {TABLE} {id}");
        }
        for id in &gone {
            let _ = writeln!(out, "delete chain inet {TABLE} {id}");
        }
        let gone_sets: BTreeSet<u64> = now
            .sets
            .iter()
            .filter(|id| !self.sets.contains_key(id))
            .copied()
            .collect();
        for id in gone_sets {
            let _ = writeln!(out, "delete set inet {TABLE} {}", affinity_set(id));
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Hands out map keys: each address and node port to the first Service that asks.
struct Claims<'s, 'a> {
    svc: &'s ServiceInfo,
    port: &'s ServicePort,
    family: Family,
    addresses: &'a mut HashSet<(IpAddr, Protocol, u16)>,
    node_ports: &'a mut HashSet<(Family, Protocol, u16)>,
    skips: &'a mut Vec<Skip>,
}

impl Claims<'_, '_> {
    fn address(&mut self, ip: IpAddr) -> bool {
        let key = (ip, self.port.protocol, self.port.port);
        let free = self.addresses.insert(key);
        if !free {
            self.skip(SkipReason::AddressTaken(key.0, key.1, key.2));
        }
        free
    }

    fn node_port(&mut self, p: u16) -> bool {
        let free = self.node_ports.insert((self.family, self.port.protocol, p));
        if !free {
            self.skip(SkipReason::NodePortTaken(self.port.protocol, p));
        }
        free
    }

    fn skip(&mut self, why: SkipReason) {
        self.skips.push(Skip {
            service: self.svc.key.clone(),
            port: self.port.name.clone(),
            why,
        });
    }
}

// === impl Programmed ===

impl Programmed {
    pub fn chains(&self) -> usize {
        self.chains.len()
    }

    pub fn elements(&self) -> usize {
        self.elements.len()
    }
}

// === impl ChainId ===

impl std::fmt::Display for ChainId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ChainKind::Service => "service",
            ChainKind::External => "external",
            ChainKind::Endpoint => "endpoint",
        };
        write!(f, "{kind}-{:016x}", self.id)
    }
}

// === impl Skip ===

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::AddressTaken(ip, proto, port) => write!(
                f,
                "{ip} {}/{port} is already another Service's (the first by namespace/name keeps it)",
                proto.name()
            ),
            SkipReason::NodePortTaken(proto, port) => write!(
                f,
                "node port {}/{port} is already another Service's (the first by namespace/name keeps it)",
                proto.name()
            ),
            SkipReason::NoNodePort => f.write_str("the port has no nodePort"),
        }
    }
}

// === free functions ===

/// The endpoints of `port` in `family` from the Service's slices: the slice port of the same
/// name and protocol gives the number (the endpoint controller resolved named target ports
/// into it, per pod; a slice without that port adds nothing, as in kube-proxy); duplicates
/// across slices count once.
fn targets(
    ctx: &Context<'_>,
    port: &ServicePort,
    family: Family,
    slices: &[&SliceInfo],
) -> Vec<Target> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(number) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
            .map(|p| p.port)
        else {
            continue;
        };
        for e in &slice.endpoints {
            // All of an endpoint's addresses are one family; kube-proxy uses the first.
            let Some(addr) = e.addresses.first().filter(|a| family_of(**a) == family) else {
                continue;
            };
            out.push(Target {
                addr: *addr,
                port: number,
                ready: e.ready,
                fallback: e.serving && e.terminating,
                local: e.node_name.as_deref() == Some(ctx.node),
            });
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
    out
}

/// Ready endpoints; if none, serving-and-terminating ones (kube-proxy's fallback, so
/// connections during a rolling restart still land somewhere).
fn usable<'t>(candidates: impl Iterator<Item = &'t Target> + Clone) -> Vec<&'t Target> {
    let ready: Vec<&Target> = candidates.clone().filter(|t| t.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates.filter(|t| t.fallback).collect()
}

/// The rules that choose among `chains`: affinity first, then one at random.
fn pick(body: &mut Vec<String>, chains: &[ChainId], family: Family, affinity: bool) {
    if affinity {
        for c in chains {
            body.push(format!(
                "{} saddr @{} goto {c}",
                ip_word(family),
                affinity_set(c.id)
            ));
        }
    }
    match chains {
        [one] => body.push(format!("goto {one}")),
        many => {
            let mut rule = format!("numgen random mod {} vmap {{ ", many.len());
            for (i, c) in many.iter().enumerate() {
                let sep = if i + 1 == many.len() { " " } else { ", " };
                let _ = write!(rule, "{i} : goto {c}{sep}");
            }
            rule.push('}');
            body.push(rule);
        }
    }
}

/// The chains, maps and hooks every table has; the per-Service parts go into them.
fn base_table() -> String {
    let mut t = format!("table inet {TABLE} {{\n");
    for f in ["v4", "v6"] {
        let addr = if f == "v4" { "ipv4_addr" } else { "ipv6_addr" };
        for map in ["service-ips", "no-endpoint-services"] {
            let _ = writeln!(
                t,
                "\tmap {map}-{f} {{ type {addr} . inet_proto . inet_service : verdict; }}"
            );
        }
        for map in ["service-nodeports", "no-endpoint-nodeports"] {
            let _ = writeln!(
                t,
                "\tmap {map}-{f} {{ type inet_proto . inet_service : verdict; }}"
            );
        }
    }
    let _ = writeln!(
        t,
        "\tchain mark-for-masquerade {{ mark set mark or {MASQUERADE_MARK:#x}; }}"
    );
    let _ = writeln!(
        t,
        "\tchain masquerading {{ mark and {MASQUERADE_MARK:#x} == 0 return; mark set mark xor {MASQUERADE_MARK:#x}; masquerade fully-random; }}"
    );
    // `!= 127.0.0.0/8`: node ports are not served on loopback (kube-proxy's default).
    let lookups = |ips: &str, ports: &str, out: &mut String| {
        let _ = writeln!(
            out,
            "\t\tip daddr . meta l4proto . th dport vmap @{ips}-v4;"
        );
        let _ = writeln!(
            out,
            "\t\tip6 daddr . meta l4proto . th dport vmap @{ips}-v6;"
        );
        let _ = writeln!(
            out,
            "\t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{ports}-v4;"
        );
        let _ = writeln!(
            out,
            "\t\tfib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @{ports}-v6;"
        );
    };
    t.push_str("\tchain services {\n");
    lookups("service-ips", "service-nodeports", &mut t);
    t.push_str("\t}\n");
    t.push_str("\tchain reject-chain { reject; }\n");
    t.push_str("\tchain endpoints-check {\n");
    lookups("no-endpoint-services", "no-endpoint-nodeports", &mut t);
    t.push_str("\t}\n");
    for (chain, hook, priority, jump) in [
        (
            "nat-prerouting",
            "nat hook prerouting",
            "dstnat",
            "jump services",
        ),
        ("nat-output", "nat hook output", "-100", "jump services"),
        (
            "nat-postrouting",
            "nat hook postrouting",
            "srcnat",
            "jump masquerading",
        ),
        // Before DNAT (-100): only Services without endpoints are looked up here.
        (
            "filter-input",
            "filter hook input",
            "-110",
            "ct state new jump endpoints-check",
        ),
        (
            "filter-forward",
            "filter hook forward",
            "-110",
            "ct state new jump endpoints-check",
        ),
        (
            "filter-output",
            "filter hook output",
            "-110",
            "ct state new jump endpoints-check",
        ),
    ] {
        let _ = writeln!(
            t,
            "\tchain {chain} {{ type {hook} priority {priority}; policy accept; {jump}; }}"
        );
    }
    t.push_str("}\n");
    t
}

fn add_set(out: &mut String, id: u64, family: Family, timeout: u32) {
    let ty = match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let _ = writeln!(
        out,
        "add set inet {TABLE} {} {{ type {ty}; flags dynamic,timeout; timeout {timeout}s; }}",
        affinity_set(id)
    );
}

fn add_rules(out: &mut String, id: ChainId, body: &[String]) {
    for rule in body {
        let _ = writeln!(out, "add rule inet {TABLE} {id} {rule}");
    }
}

fn add_element(out: &mut String, map: Map, key: &ElementKey, verdict: Verdict) {
    let target = match verdict {
        Verdict::Goto(c) => format!("goto {c}"),
        Verdict::Reject => "goto reject-chain".to_owned(),
    };
    let _ = writeln!(
        out,
        "add element inet {TABLE} {} {{ {} : {target} }}",
        map_name(map),
        element_key(key)
    );
}

fn map_name(map: Map) -> String {
    let (name, family) = match map {
        Map::ServiceIps(f) => ("service-ips", f),
        Map::NodePorts(f) => ("service-nodeports", f),
        Map::NoEndpointServices(f) => ("no-endpoint-services", f),
        Map::NoEndpointNodePorts(f) => ("no-endpoint-nodeports", f),
    };
    let f = match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    };
    format!("{name}-{f}")
}

fn element_key(key: &ElementKey) -> String {
    match key {
        ElementKey::Address(ip, proto, port) => format!("{ip} . {} . {port}", proto.name()),
        ElementKey::Port(proto, port) => format!("{} . {port}", proto.name()),
    }
}

fn affinity_set(id: u64) -> String {
    format!("affinity-{id:016x}")
}

fn ip_word(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

fn socket(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn set_of(cidrs: &[&Cidr]) -> String {
    match cidrs {
        [one] => one.to_string(),
        many => {
            let list: Vec<String> = many.iter().map(|c| c.to_string()).collect();
            format!("{{ {} }}", list.join(", "))
        }
    }
}

/// Names a Service port's chains: the Service, the port's name and protocol, the family, and
/// the affinity timeout (a changed timeout makes new sets, which nft cannot alter in place).
fn service_hash(key: &Key, port: &ServicePort, family: Family, affinity: Option<u32>) -> u64 {
    let mut h = Fnv::new();
    h.str(&key.namespace);
    h.str(&key.name);
    h.str(&port.name);
    h.str(port.protocol.name());
    h.u64(match family {
        Family::V4 => 4,
        Family::V6 => 6,
    });
    h.u64(affinity.map_or(0, |t| u64::from(t) + 1));
    h.finish()
}

fn body_hash(body: &[String]) -> u64 {
    let mut h = Fnv::new();
    for rule in body {
        h.str(rule);
    }
    h.finish()
}

/// FNV-1a, 64 bits: stable across builds and toolchains (std's hasher is not promised to
/// be), so names in logs and tests do not move.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for byte in b {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// With a terminator, so ("ab", "c") and ("a", "bc") differ.
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
        self.bytes(&[0xff]);
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests;
