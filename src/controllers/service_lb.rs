//! LoadBalancer Services on bare metal: the addresses in `status.loadBalancer.ingress`.
//!
//! With `--service-lb-pool` (address ranges `A-B` and CIDRs, several allowed) each
//! LoadBalancer Service gets one address of its family from the pools, as MetalLB allocates:
//! `spec.loadBalancerIP` when it is in a pool and free, otherwise the lowest free address; an
//! address once given stays with its Service. Without pools it does what K3s's ServiceLB
//! does: the ingress is the addresses of the nodes that may carry the traffic (every Ready
//! node, or those labelled `svccontroller.k3s.cattle.io/enablelb=true` when any node is, never
//! one labelled `node.kubernetes.io/exclude-from-external-load-balancers`), ExternalIP before
//! InternalIP. Services naming a `spec.loadBalancerClass` other than ours are left to whoever
//! implements that class, as Kubernetes asks of a default implementation.
//!
//! Invariants: no address is given to two Services (decisions are made for all Services in
//! one pass, oldest Service first, by the one controllers-lease holder); only the status of
//! Services this controller handles is written, and only when it changes; a Service that stops
//! being a LoadBalancer loses the ingress it was given.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{Value, json};

use super::events::{Recorder, Type};
use super::owner;
use crate::api::cidr::Cidr;
use crate::apiserver::registry::Part;
use crate::apiserver::resources::{NODES, ObjectRef, Resource, SERVICES};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::Frozen;

/// The `spec.loadBalancerClass` this controller answers for (besides none at all).
pub const CLASS: &str = "keelson.io/service-lb";
/// K3s's ServiceLB node label: when any node has it `true`, only those nodes carry traffic.
pub const ENABLE_LABEL: &str = "svccontroller.k3s.cattle.io/enablelb";
const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The one work-queue key: addresses are decided for all Services together.
const KEY: &str = "all";

/// `--service-lb-pool`: address ranges, inclusive, each within one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pools {
    ranges: Vec<(IpAddr, IpAddr)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(
        "{0:?}: expected an address range FIRST-LAST or a CIDR, such as 192.168.1.240-192.168.1.250 or 192.168.1.240/28"
    )]
    Syntax(String),
    #[error("{0:?}: the first address is after the last, or they are of different families")]
    Order(String),
    #[error("{0:?} overlaps {1:?}")]
    Overlap(String, String),
}

impl Pools {
    /// Each item a range or a CIDR (items may also be comma-separated within one value).
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Pools, PoolError> {
        let mut ranges: Vec<(IpAddr, IpAddr, String)> = vec![];
        for raw in items
            .into_iter()
            .flat_map(|i| i.split(','))
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let (first, last) = if let Some((a, b)) = raw.split_once('-') {
                let (Ok(a), Ok(b)) = (a.trim().parse::<IpAddr>(), b.trim().parse::<IpAddr>())
                else {
                    return Err(PoolError::Syntax(raw.into()));
                };
                (a, b)
            } else if raw.contains('/') {
                let cidr = Cidr::parse(raw).map_err(|_| PoolError::Syntax(raw.into()))?;
                let size = 1u128 << (cidr.family().bits() - cidr.prefix()).min(127);
                let (mut lo, mut hi) = (0, size - 1);
                // An IPv4 network's own and broadcast addresses are not handed out (hosts
                // and switches treat them specially), except in /31 and /32.
                if cidr.family() == crate::api::cidr::Family::V4 && cidr.prefix() < 31 {
                    lo += 1;
                    hi -= 1;
                }
                match (cidr.nth(lo), cidr.nth(hi)) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return Err(PoolError::Syntax(raw.into())),
                }
            } else {
                let a = raw
                    .parse::<IpAddr>()
                    .map_err(|_| PoolError::Syntax(raw.into()))?;
                (a, a)
            };
            if first.is_ipv4() != last.is_ipv4() || bits(first) > bits(last) {
                return Err(PoolError::Order(raw.into()));
            }
            if let Some((_, _, other)) = ranges.iter().find(|(a, b, _)| {
                a.is_ipv4() == first.is_ipv4() && bits(first) <= bits(*b) && bits(*a) <= bits(last)
            }) {
                return Err(PoolError::Overlap(raw.into(), other.clone()));
            }
            ranges.push((first, last, raw.to_owned()));
        }
        Ok(Pools {
            ranges: ranges.into_iter().map(|(a, b, _)| (a, b)).collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|(a, b)| {
            a.is_ipv4() == ip.is_ipv4() && bits(*a) <= bits(ip) && bits(ip) <= bits(*b)
        })
    }

    /// The lowest address of `family` (IPv4 when `v4`) not in `taken`.
    fn lowest_free(&self, v4: bool, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        for (a, b) in self.ranges.iter().filter(|(a, _)| a.is_ipv4() == v4) {
            // Walk past taken addresses only: at most |taken| + 1 steps per range.
            let mut n = bits(*a);
            while n <= bits(*b) {
                let ip = from_bits(n, v4);
                if !taken.contains(&ip) {
                    return Some(ip);
                }
                n += 1;
            }
        }
        None
    }

    /// As the flag was given, for the settings every server must agree on.
    pub fn describe(&self) -> String {
        self.ranges
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_bits(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::from(std::net::Ipv4Addr::from(n as u32))
    } else {
        IpAddr::from(std::net::Ipv6Addr::from(n))
    }
}

pub struct ServiceLb {
    pub pools: Pools,
    pub events: Recorder,
}

impl ServiceLb {
    pub const KINDS: [&'static Resource; 2] = [&SERVICES, &NODES];
}

impl Reconciler for ServiceLb {
    fn name(&self) -> &'static str {
        "service-lb"
    }

    fn keys(&self, change: &Change, _cache: &Cache) -> Vec<String> {
        let concerns = if change.resource == &SERVICES {
            [change.old.as_deref(), change.new.as_deref()]
                .into_iter()
                .flatten()
                .any(|s| s["spec"]["type"] == "LoadBalancer")
        } else {
            // Nodes matter only when their addresses are the ingress (no pools).
            self.pools.is_empty()
        };
        if concerns {
            vec![KEY.to_owned()]
        } else {
            vec![]
        }
    }

    fn all(&self, _cache: &Cache) -> Vec<String> {
        vec![KEY.to_owned()]
    }

    async fn reconcile(&self, _key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let services = ctx.cache.list(&SERVICES);
        let nodes = ctx.cache.list(&NODES);
        let plan = decide(&self.pools, &services, &nodes);
        for (svc, outcome) in services.iter().zip(plan) {
            let want = match outcome {
                Outcome::Ignore => continue,
                Outcome::Clear => json!({}),
                Outcome::Ingress(ips) => {
                    json!({"ingress": ips.iter().map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect::<Vec<_>>()})
                }
                Outcome::Refused(why) => {
                    if svc["status"]["loadBalancer"] != json!({}) {
                        self.write(ctx, svc, json!({})).await?;
                    }
                    self.events
                        .record(&SERVICES, svc, Type::Warning, "AllocationFailed", &why)
                        .await;
                    continue;
                }
            };
            let now = match &svc["status"]["loadBalancer"] {
                Frozen::Null => json!({}),
                v => v.thaw(),
            };
            if now != want {
                let ips: Vec<String> = want["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["ip"].as_str().map(str::to_owned))
                    .collect();
                self.write(ctx, svc, want).await?;
                if !ips.is_empty() {
                    self.events
                        .record(
                            &SERVICES,
                            svc,
                            Type::Normal,
                            "IPAllocated",
                            &format!("Assigned IP [{}]", ips.join(", ")),
                        )
                        .await;
                }
            }
        }
        Ok(Action::Done)
    }
}

impl ServiceLb {
    async fn write(&self, ctx: &Context, svc: &Frozen, lb: Value) -> Result<(), ApiError> {
        let r = ObjectRef {
            resource: &SERVICES,
            namespace: Some(owner::namespace(svc).to_owned()),
            name: owner::name(svc).to_owned(),
        };
        match ctx
            .registry
            .modify(&r, Part::Status, |o| {
                o["status"]["loadBalancer"] = lb.clone();
            })
            .await
        {
            Ok(o) => {
                ctx.wrote(&o);
                Ok(())
            }
            Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What a Service's load-balancer status should be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Not ours (another class, or never a LoadBalancer): left alone.
    Ignore,
    /// No longer a LoadBalancer: its ingress goes.
    Clear,
    Ingress(Vec<IpAddr>),
    /// Pending, and why (an event).
    Refused(String),
}

/// Decides for every Service at once (in the order given), so no address goes to two.
fn decide(
    pools: &Pools,
    services: &[std::sync::Arc<Frozen>],
    nodes: &[std::sync::Arc<Frozen>],
) -> Vec<Outcome> {
    let ours = |s: &Frozen| match s["spec"]["loadBalancerClass"].as_str() {
        None => true,
        Some(c) => c == CLASS,
    };
    let is_lb = |s: &Frozen| s["spec"]["type"] == "LoadBalancer" && ours(s);
    if pools.is_empty() {
        let ips = node_addresses(nodes);
        return services
            .iter()
            .map(|s| {
                if is_lb(s) {
                    Outcome::Ingress(ips.clone())
                } else if has_ingress(s) && ours(s) {
                    Outcome::Clear
                } else {
                    Outcome::Ignore
                }
            })
            .collect();
    }
    // Oldest first: an address someone holds stays theirs.
    let mut order: Vec<usize> = (0..services.len()).collect();
    order.sort_by_key(|&i| {
        (
            services[i]["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            owner::namespace(&services[i]).to_owned(),
            owner::name(&services[i]).to_owned(),
        )
    });
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    let mut kept: BTreeMap<usize, IpAddr> = BTreeMap::new();
    // First, every address already given that is still valid for its Service.
    for &i in &order {
        let s = &services[i];
        if !is_lb(s) {
            continue;
        }
        let wanted: Option<IpAddr> = s["spec"]["loadBalancerIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok());
        let current = s["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str()?.parse::<IpAddr>().ok())
            .find(|ip| pools.contains(*ip) && wanted.is_none_or(|w| w == *ip));
        if let Some(ip) = current.filter(|ip| !taken.contains(ip)) {
            taken.insert(ip);
            kept.insert(i, ip);
        }
    }
    let mut out = vec![Outcome::Ignore; services.len()];
    for &i in &order {
        let s = &services[i];
        if !is_lb(s) {
            if has_ingress(s) && ours(s) {
                out[i] = Outcome::Clear;
            }
            continue;
        }
        if let Some(ip) = kept.get(&i) {
            out[i] = Outcome::Ingress(vec![*ip]);
            continue;
        }
        out[i] = match s["spec"]["loadBalancerIP"]
            .as_str()
            .filter(|w| !w.is_empty())
        {
            Some(w) => match w.parse::<IpAddr>() {
                Err(_) => {
                    Outcome::Refused(format!("spec.loadBalancerIP {w:?} is not an IP address"))
                }
                Ok(ip) if !pools.contains(ip) => Outcome::Refused(format!(
                    "spec.loadBalancerIP {ip} is not in --service-lb-pool ({})",
                    pools.describe()
                )),
                Ok(ip) if taken.contains(&ip) => Outcome::Refused(format!(
                    "spec.loadBalancerIP {ip} is already in use by another Service"
                )),
                Ok(ip) => {
                    taken.insert(ip);
                    Outcome::Ingress(vec![ip])
                }
            },
            None => {
                let v4 = s["spec"]["ipFamilies"][0].as_str() != Some("IPv6");
                match pools.lowest_free(v4, &taken) {
                    Some(ip) => {
                        taken.insert(ip);
                        Outcome::Ingress(vec![ip])
                    }
                    None => Outcome::Refused(format!(
                        "no available {} address in --service-lb-pool ({})",
                        if v4 { "IPv4" } else { "IPv6" },
                        pools.describe()
                    )),
                }
            }
        };
    }
    out
}

fn has_ingress(s: &Frozen) -> bool {
    s["status"]["loadBalancer"]["ingress"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
}

/// ServiceLB's ingress without pools: the addresses of the nodes that carry traffic.
fn node_addresses(nodes: &[std::sync::Arc<Frozen>]) -> Vec<IpAddr> {
    let ready = |n: &Frozen| {
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    let label = |n: &Frozen, k: &str| n["metadata"]["labels"][k].as_str().map(str::to_owned);
    let enabled_somewhere = nodes
        .iter()
        .any(|n| label(n, ENABLE_LABEL).as_deref() == Some("true"));
    let mut ips = BTreeSet::new();
    for n in nodes.iter().filter(|n| ready(n)) {
        if label(n, EXCLUDE_LABEL).is_some()
            || (enabled_somewhere && label(n, ENABLE_LABEL).as_deref() != Some("true"))
        {
            continue;
        }
        let of = |t: &str| -> Vec<IpAddr> {
            n["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["type"] == t)
                .filter_map(|a| a["address"].as_str()?.parse().ok())
                .collect()
        };
        let external = of("ExternalIP");
        ips.extend(if external.is_empty() {
            of("InternalIP")
        } else {
            external
        });
    }
    ips.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn svc(name: &str, created: &str, spec: Value, lb: Value) -> Arc<Frozen> {
        Arc::new(Frozen::from(json!({
            "metadata": {"namespace": "default", "name": name, "creationTimestamp": created},
            "spec": spec,
            "status": {"loadBalancer": lb}
        })))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pools_parse_ranges_and_cidrs_and_refuse_nonsense() {
        let p = Pools::parse(["198.18.5.240-198.18.5.242", "198.18.6.0/30,fd00::10/127"]).unwrap();
        assert!(p.contains(ip("198.18.5.241")) && !p.contains(ip("198.18.5.243")));
        // A /30's network and broadcast addresses are not given out.
        assert!(!p.contains(ip("198.18.6.0")) && p.contains(ip("198.18.6.1")));
        assert!(!p.contains(ip("198.18.6.3")) && p.contains(ip("fd00::11")));
        assert!(matches!(
            Pools::parse(["198.18.5.9-198.18.5.1"]),
            Err(PoolError::Order(_))
        ));
        assert!(matches!(
            Pools::parse(["198.18.5.1-fd00::1"]),
            Err(PoolError::Order(_))
        ));
        assert!(matches!(
            Pools::parse(["pool-a"]),
            Err(PoolError::Syntax(_))
        ));
        assert!(matches!(
            Pools::parse(["198.18.5.0/24", "198.18.5.10-198.18.5.20"]),
            Err(PoolError::Overlap(..))
        ));
        assert!(Pools::parse([""]).unwrap().is_empty());
    }

    #[test]
    fn addresses_are_kept_requested_or_lowest_free_and_never_shared() {
        let pools = Pools::parse(["198.18.5.240-198.18.5.242"]).unwrap();
        let lb = json!({"type": "LoadBalancer"});
        let services = vec![
            // Already holds .241: keeps it.
            svc(
                "old",
                "2026-01-01T00:00:00Z",
                lb.clone(),
                json!({"ingress": [{"ip": "198.18.5.241"}]}),
            ),
            // Asks for .241 too, but is younger: refused.
            svc(
                "wants-241",
                "2026-01-02T00:00:00Z",
                json!({"type": "LoadBalancer", "loadBalancerIP": "198.18.5.241"}),
                json!({}),
            ),
            svc("new", "2026-01-03T00:00:00Z", lb.clone(), json!({})),
            svc("newer", "2026-01-04T00:00:00Z", lb.clone(), json!({})),
            // The pool is empty by now.
            svc("newest", "2026-01-05T00:00:00Z", lb.clone(), json!({})),
            svc(
                "other-class",
                "2026-01-01T00:00:00Z",
                json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}),
                json!({}),
            ),
            svc(
                "was-lb",
                "2026-01-01T00:00:00Z",
                json!({"type": "ClusterIP"}),
                json!({"ingress": [{"ip": "198.18.5.242"}]}),
            ),
            svc(
                "outside",
                "2026-01-06T00:00:00Z",
                json!({"type": "LoadBalancer", "loadBalancerIP": "198.18.9.9"}),
                json!({}),
            ),
        ];
        let out = decide(&pools, &services, &[]);
        assert_eq!(out[0], Outcome::Ingress(vec![ip("198.18.5.241")]));
        assert!(matches!(&out[1], Outcome::Refused(m) if m.contains("already in use")));
        assert_eq!(out[2], Outcome::Ingress(vec![ip("198.18.5.240")]));
        assert_eq!(
            out[3],
            Outcome::Ingress(vec![ip("198.18.5.242")]),
            "a former LoadBalancer's address is free again"
        );
        assert!(matches!(&out[4], Outcome::Refused(m) if m.contains("no available IPv4 address")));
        assert_eq!(out[5], Outcome::Ignore);
        assert_eq!(out[6], Outcome::Clear);
        assert!(matches!(&out[7], Outcome::Refused(m) if m.contains("not in --service-lb-pool")));
    }

    #[test]
    fn without_pools_the_ingress_is_the_nodes_that_carry_traffic() {
        let node = |name: &str, ready: bool, labels: Value, addrs: Value| {
            Arc::new(Frozen::from(json!({
                "metadata": {"name": name, "labels": labels},
                "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                           "addresses": addrs}
            })))
        };
        let internal = |a: &str| json!([{"type": "InternalIP", "address": a}]);
        let nodes = vec![
            node("a", true, json!({}), internal("198.18.0.1")),
            node(
                "b",
                true,
                json!({}),
                json!([{"type": "InternalIP", "address": "198.18.0.2"}, {"type": "ExternalIP", "address": "198.18.1.2"}]),
            ),
            node("c", false, json!({}), internal("198.18.0.3")),
            node(
                "d",
                true,
                json!({EXCLUDE_LABEL: ""}),
                internal("198.18.0.4"),
            ),
        ];
        assert_eq!(
            node_addresses(&nodes),
            vec![ip("198.18.0.1"), ip("198.18.1.2")]
        );
        let mut labelled = nodes.clone();
        labelled.push(node(
            "e",
            true,
            json!({ENABLE_LABEL: "true"}),
            internal("198.18.0.5"),
        ));
        assert_eq!(node_addresses(&labelled), vec![ip("198.18.0.5")]);
        let services = vec![svc(
            "web",
            "2026-01-01T00:00:00Z",
            json!({"type": "LoadBalancer"}),
            json!({}),
        )];
        assert_eq!(
            decide(&Pools::default(), &services, &nodes),
            vec![Outcome::Ingress(vec![ip("198.18.0.1"), ip("198.18.1.2")])]
        );
    }
}
