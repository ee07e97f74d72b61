//! Cluster IPs (from `--service-cidr`, one IPv4 range, one IPv6 range, or one of each) and
//! node ports (30000–32767) for Services.
//!
//! Servers share no memory, so the datastore arbitrates: every address or port in use is a
//! reservation record (`/registry/keelson.io/clusterips/<ip>`,
//! `/registry/keelson.io/nodeports/<port>`, outside every API resource) created
//! insert-if-absent; whoever creates it owns it. Invariant: a Service's cluster IPs and node
//! ports are reserved before the Service is stored and released after it is deleted, so two
//! Services never share one, whichever servers made them.
//!
//! Ranges follow kube-apiserver: at most 20 host bits (IPv4 /12, IPv6 /108 or longer), the
//! network address never handed out, nor an IPv4 range's broadcast address; the first address
//! after the network is the `kubernetes` Service's.

use std::net::IpAddr;

use ring::rand::SecureRandom;
use serde_json::json;

use super::status::ApiError;
use crate::api::cidr::{self, Cidr, Family};
use crate::datastore::{self, Store};

const CLUSTER_IPS: &str = "/registry/keelson.io/clusterips/";
const NODE_PORTS: &str = "/registry/keelson.io/nodeports/";
/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Reservations tried at random before an allocation reads which addresses are taken: each
/// is a statement, and a range with no free entry among this many is nearly full.
const MAX_PROBES: u32 = 512;
/// kube-apiserver's bound on a service range (`maxCIDRBits`): the bitmap of a larger range
/// would be too big to keep, and no cluster has that many Services.
const MAX_HOST_BITS: u8 = 20;

/// Why `--service-cidr` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("no range given")]
    Empty,
    #[error("{raw:?} is not a CIDR such as 10.43.0.0/16 or fd00:43::/112: {source}")]
    Cidr {
        raw: String,
        #[source]
        source: cidr::Error,
    },
    #[error(
        "{cidr} is too large; for {bits}-bit addresses, the mask must be >= {min} (as kube-apiserver requires)"
    )]
    TooLarge { cidr: Cidr, bits: u8, min: u8 },
    #[error(
        "{cidr} is too small: it leaves no address for a Service besides `kubernetes` (IPv4: /30 at most, IPv6: /126)"
    )]
    TooSmall { cidr: Cidr },
    #[error(
        "{first} and {second} are both {family}; give one IPv4 range, one IPv6 range, or one of each"
    )]
    SameFamily {
        first: Cidr,
        second: Cidr,
        family: &'static str,
    },
    #[error("{0} ranges given; give one IPv4 range, one IPv6 range, or one of each")]
    TooMany(usize),
}

/// One family's service range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    /// Invariant: at most [`MAX_HOST_BITS`] host bits, and at least one address past the
    /// `kubernetes` one.
    cidr: Cidr,
}

/// The cluster's service ranges: the first one given is the primary family (the
/// `kubernetes` Service's, and a single-stack Service's unless it asks otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidrs {
    pub primary: ServiceCidr,
    /// Invariant: of the other family.
    pub secondary: Option<ServiceCidr>,
}

// === impl ServiceCidr ===

impl ServiceCidr {
    /// `10.43.0.0/16` or `fd00:43::/112`.
    pub fn parse(raw: &str) -> Result<ServiceCidr, RangeError> {
        let raw = raw.trim();
        let cidr = Cidr::parse(raw).map_err(|source| RangeError::Cidr {
            raw: raw.to_owned(),
            source,
        })?;
        let bits = cidr.family().bits();
        let host_bits = bits - cidr.prefix();
        if host_bits > MAX_HOST_BITS {
            return Err(RangeError::TooLarge {
                cidr,
                bits,
                min: bits - MAX_HOST_BITS,
            });
        }
        let range = ServiceCidr { cidr };
        if range.last_offset() < 2 {
            return Err(RangeError::TooSmall { cidr });
        }
        Ok(range)
    }

    pub fn family(&self) -> Family {
        self.cidr.family()
    }

    /// The first usable address: the `kubernetes` Service's, as in Kubernetes.
    pub fn first(&self) -> IpAddr {
        self.at(1)
    }

    /// The address `index` places into the range (K3s's `--cluster-dns` default is the 10th),
    /// or the last usable one for a range smaller than that.
    pub fn nth(&self, index: u32) -> IpAddr {
        self.at(index.min(self.last_offset()))
    }

    /// The address at `offset`. Invariant: `offset <= last_offset()`.
    fn at(&self, offset: u32) -> IpAddr {
        // Within the network by the invariant, so `nth` has an address to give.
        self.cidr
            .nth(u128::from(offset))
            .unwrap_or_else(|| unreachable!("offset {offset} is inside {}", self.cidr))
    }

    /// Whether Services may have `ip`: inside the range, not its network (nor IPv4 broadcast)
    /// address.
    fn holds(&self, ip: IpAddr) -> bool {
        self.cidr
            .index_of(ip)
            .is_some_and(|i| (1..=u128::from(self.last_offset())).contains(&i))
    }

    /// The last offset handed out: an IPv4 range keeps its broadcast address out.
    fn last_offset(&self) -> u32 {
        // At most 2^20 addresses by the invariant.
        let size = 1u32 << (self.cidr.family().bits() - self.cidr.prefix());
        match self.family() {
            Family::V4 => size.saturating_sub(2),
            Family::V6 => size - 1,
        }
    }
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.cidr.fmt(f)
    }
}

// === impl ServiceCidrs ===

impl ServiceCidrs {
    /// `--service-cidr`: `10.43.0.0/16`, `fd00:43::/112`, or `10.43.0.0/16,fd00:43::/112`.
    pub fn parse(raw: &str) -> Result<ServiceCidrs, RangeError> {
        let parts: Vec<&str> = raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let ranges = parts
            .iter()
            .map(|p| ServiceCidr::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        match ranges[..] {
            [] => Err(RangeError::Empty),
            [primary] => Ok(ServiceCidrs {
                primary,
                secondary: None,
            }),
            [first, second] if first.family() == second.family() => Err(RangeError::SameFamily {
                first: first.cidr,
                second: second.cidr,
                family: first.family().name(),
            }),
            [primary, secondary] => Ok(ServiceCidrs {
                primary,
                secondary: Some(secondary),
            }),
            _ => Err(RangeError::TooMany(ranges.len())),
        }
    }

    /// The range of `family`, if the cluster has one.
    pub fn of(&self, family: Family) -> Option<&ServiceCidr> {
        std::iter::once(&self.primary)
            .chain(&self.secondary)
            .find(|r| r.family() == family)
    }

    pub fn is_dual_stack(&self) -> bool {
        self.secondary.is_some()
    }

    /// Each range, as an IP network.
    pub fn cidrs(&self) -> impl Iterator<Item = Cidr> + '_ {
        std::iter::once(self.primary.cidr).chain(self.secondary.map(|r| r.cidr))
    }
}

impl std::fmt::Display for ServiceCidrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.secondary {
            None => self.primary.fmt(f),
            Some(s) => write!(f, "{},{s}", self.primary),
        }
    }
}

/// The families and addresses a new Service gets, from its `spec.ipFamilyPolicy`,
/// `spec.ipFamilies`, `spec.clusterIP(s)` and the cluster's ranges, as kube-apiserver decides
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub policy: &'static str,
    /// One per address the Service gets, primary first. Invariant: each has a range.
    pub families: Vec<Family>,
    /// The address the user asked for in each family, in `families` order.
    pub asked: Vec<Option<IpAddr>>,
    /// `clusterIP: None`: families, but no addresses.
    pub headless: bool,
}

// === impl Plan ===

impl Plan {
    /// Resolves `spec` against `ranges`; the causes (Kubernetes' field errors) otherwise.
    pub fn of(ranges: &ServiceCidrs, spec: &serde_json::Value) -> Result<Plan, Vec<String>> {
        let mut causes = Vec::new();
        let policy = match spec.get("ipFamilyPolicy").and_then(|p| p.as_str()) {
            None | Some("") => None,
            Some(p @ ("SingleStack" | "PreferDualStack" | "RequireDualStack")) => Some(match p {
                "SingleStack" => "SingleStack",
                "PreferDualStack" => "PreferDualStack",
                _ => "RequireDualStack",
            }),
            Some(other) => {
                causes.push(format!(
                    "spec.ipFamilyPolicy: Unsupported value: {other:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
                ));
                None
            }
        };
        let cluster_ip = spec.get("clusterIP").and_then(|v| v.as_str()).unwrap_or("");
        let mut given: Vec<String> = spec
            .get("clusterIPs")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if given.is_empty() && !cluster_ip.is_empty() {
            given.push(cluster_ip.to_owned());
        } else if !cluster_ip.is_empty() && given.first().map(String::as_str) != Some(cluster_ip) {
            causes.push(format!(
                "spec.clusterIPs[0]: Invalid value: {:?}: must be same as clusterIP",
                given.first().cloned().unwrap_or_default()
            ));
        }
        let headless = given.first().is_some_and(|ip| ip == "None");
        if given.len() > 2 {
            causes.push(format!(
                "spec.clusterIPs: Too many: {}: must have at most 2 items",
                given.len()
            ));
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        if !headless {
            for (i, raw) in given.iter().enumerate().take(2) {
                match raw.parse::<IpAddr>() {
                    Ok(ip) => ips.push(ip),
                    Err(_) => causes.push(format!(
                        "spec.clusterIPs[{i}]: Invalid value: {raw:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                    )),
                }
            }
        }
        let mut families: Vec<Family> = Vec::new();
        for (i, f) in spec
            .get("ipFamilies")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            match f.as_str() {
                Some("IPv4") => families.push(Family::V4),
                Some("IPv6") => families.push(Family::V6),
                _ => causes.push(format!(
                    "spec.ipFamilies[{i}]: Unsupported value: {f}: supported values: \"IPv4\", \"IPv6\""
                )),
            }
        }
        if families.len() > 2 {
            causes.push(format!(
                "spec.ipFamilies: Too many: {}: must have at most 2 items",
                families.len()
            ));
        }
        if families.len() == 2 && families[0] == families[1] {
            causes.push(format!(
                "spec.ipFamilies[1]: Duplicate value: {:?}",
                families[1].name()
            ));
        }
        if ips.len() == 2 && family_of(ips[0]) == family_of(ips[1]) {
            causes.push(format!(
                "spec.clusterIPs[1]: Invalid value: {:?}: may not have the same IP family as clusterIPs[0]",
                ips[1].to_string()
            ));
        }
        // Families the addresses imply, where ipFamilies does not say.
        for (i, ip) in ips.iter().enumerate() {
            match families.get(i) {
                Some(f) if *f != family_of(*ip) => causes.push(format!(
                    "spec.clusterIPs[{i}]: Invalid value: {:?}: expected an {} value as indicated by `ipFamilies[{i}]`",
                    ip.to_string(),
                    f.name()
                )),
                Some(_) => {}
                None => families.push(family_of(*ip)),
            }
        }
        // As kube-apiserver defaults it: two families asked for mean dual-stack.
        let policy = policy.unwrap_or(if families.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        });
        if policy == "SingleStack" && families.len() > 1 {
            causes.push(
                "spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified".into(),
            );
        }
        if policy == "RequireDualStack" && !ranges.is_dual_stack() {
            causes.push(
                "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into(),
            );
        }
        for (i, f) in families.iter().enumerate() {
            if ranges.of(*f).is_none() {
                causes.push(format!(
                    "spec.ipFamilies[{i}]: Invalid value: {:?}: not configured on this cluster (--service-cidr {ranges})",
                    f.name()
                ));
            }
        }
        if !causes.is_empty() {
            return Err(causes);
        }
        if families.is_empty() {
            families.push(ranges.primary.family());
        }
        if policy != "SingleStack"
            && let Some(other) = ranges
                .cidrs()
                .map(|c| c.family())
                .find(|f| !families.contains(f))
            && families.len() < 2
        {
            families.push(other);
        }
        let asked = (0..families.len()).map(|i| ips.get(i).copied()).collect();
        Ok(Plan {
            policy,
            families,
            asked,
            headless,
        })
    }
}

fn family_of(ip: IpAddr) -> Family {
    if ip.is_ipv6() { Family::V6 } else { Family::V4 }
}

/// Takes a free cluster IP from `range` for `owner` (`namespace/name`).
pub async fn allocate_ip(
    store: &Store,
    range: &ServiceCidr,
    owner: &str,
) -> Result<IpAddr, ApiError> {
    // Offsets 2..=last: the first address is kept for the `kubernetes` Service.
    let candidates = range.last_offset() - 1;
    let start = random_below(candidates);
    for i in 0..candidates.min(MAX_PROBES) {
        let ip = range.at(2 + (start + i) % candidates);
        if reserve(store, &format!("{CLUSTER_IPS}{ip}"), owner).await? {
            return Ok(ip);
        }
    }
    // Nearly full: read what is taken and try the free addresses in order, so the last free
    // address of a large range is found too.
    if candidates > MAX_PROBES {
        let (_, taken) = store.list(CLUSTER_IPS).await.map_err(ApiError::from)?;
        let taken: std::collections::HashSet<&str> = taken
            .iter()
            .filter_map(|rec| rec.path.strip_prefix(CLUSTER_IPS))
            .collect();
        for offset in 2..=range.last_offset() {
            let ip = range.at(offset);
            if !taken.contains(ip.to_string().as_str())
                && reserve(store, &format!("{CLUSTER_IPS}{ip}"), owner).await?
            {
                return Ok(ip);
            }
        }
    }
    Err(ApiError::Internal(format!(
        "no free cluster IP left in --service-cidr range {range}; delete unused Services or widen the range"
    )))
}

/// Reserves the cluster IP a Service asked for, or says why it cannot have it (Kubernetes'
/// messages, for `spec.clusterIPs`).
pub async fn reserve_ip(
    store: &Store,
    range: &ServiceCidr,
    ip: IpAddr,
    owner: &str,
) -> Result<(), ApiError> {
    if !range.holds(ip) {
        return Err(invalid(format!(
            "spec.clusterIPs: Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
        )));
    }
    if reserve(store, &format!("{CLUSTER_IPS}{ip}"), owner).await? {
        Ok(())
    } else {
        Err(invalid(format!(
            "spec.clusterIPs: Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"
        )))
    }
}

/// Takes a free node port for `owner`.
pub async fn allocate_node_port(store: &Store, owner: &str) -> Result<u16, ApiError> {
    let span = u32::from(NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start()) + 1;
    let start = random_below(span);
    for i in 0..span.min(MAX_PROBES) {
        let port = NODE_PORT_RANGE.start() + ((start + i) % span) as u16;
        if reserve(store, &format!("{NODE_PORTS}{port}"), owner).await? {
            return Ok(port);
        }
    }
    Err(ApiError::Internal(
        "no free node port found in 30000-32767; delete unused NodePort Services".into(),
    ))
}

/// Reserves the node port a Service asked for.
pub async fn reserve_node_port(store: &Store, port: u16, owner: &str) -> Result<(), ApiError> {
    if !NODE_PORT_RANGE.contains(&port) {
        return Err(invalid(format!(
            "spec.ports[].nodePort: Invalid value: {port}: provided port is not in the valid range. The range of valid ports is 30000-32767"
        )));
    }
    if reserve(store, &format!("{NODE_PORTS}{port}"), owner).await? {
        Ok(())
    } else {
        Err(invalid(format!(
            "spec.ports[].nodePort: Invalid value: {port}: provided port is already allocated"
        )))
    }
}

/// Gives back cluster IPs and node ports (a deleted Service's, or a failed creation's).
pub async fn release(store: &Store, ips: &[IpAddr], ports: &[u16]) {
    let paths = ips
        .iter()
        .map(|ip| format!("{CLUSTER_IPS}{ip}"))
        .chain(ports.iter().map(|p| format!("{NODE_PORTS}{p}")));
    for path in paths {
        match store.delete(&path, None).await {
            Ok(_) | Err(datastore::Error::NotFound(_)) => {}
            Err(e) => tracing::warn!(%path, error = %e, "cannot release a Service's reservation"),
        }
    }
}

/// Whether this call created the reservation at `path`.
async fn reserve(store: &Store, path: &str, owner: &str) -> Result<bool, ApiError> {
    let value = json!({"owner": owner}).to_string();
    match store.create(path, value.as_bytes()).await {
        Ok(_) => Ok(true),
        Err(datastore::Error::AlreadyExists(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn invalid(cause: String) -> ApiError {
    ApiError::Unprocessable(cause)
}

fn random_below(n: u32) -> u32 {
    let mut b = [0u8; 4];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator failed");
    u32::from_le_bytes(b) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn store(dir: &tempfile::TempDir) -> Store {
        Store::open(
            &crate::datastore::Endpoint::sqlite(dir.path().join("s.db")),
            &crate::datastore::PoolConfig::default(),
        )
        .await
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn service_ranges_parse_and_keep_the_first_address() {
        let c = ServiceCidr::parse("10.43.0.0/16").unwrap();
        assert_eq!(c.first(), ip("10.43.0.1"));
        assert_eq!(c.nth(10), ip("10.43.0.10"));
        assert!(c.holds(ip("10.43.255.254")));
        assert!(!c.holds(ip("10.43.255.255")), "the broadcast address");
        assert!(!c.holds(ip("10.43.0.0")), "the network address");
        assert!(!c.holds(ip("10.44.0.1")));
        assert_eq!(ServiceCidr::parse("10.43.7.9/16"), Ok(c));
        let v6 = ServiceCidr::parse("fd00:43::/112").unwrap();
        assert_eq!(v6.first(), ip("fd00:43::1"));
        assert_eq!(v6.nth(10), ip("fd00:43::a"));
        assert!(
            v6.holds(ip("fd00:43::ffff")),
            "IPv6 has no broadcast address"
        );
        assert!(!v6.holds(ip("fd00:43::")));
        assert!(!v6.holds(ip("10.43.0.1")));
        assert!(ServiceCidr::parse("fd00::/108").is_ok());
        assert_eq!(
            ServiceCidr::parse("fd00::/64").unwrap_err().to_string(),
            "fd00::/64 is too large; for 128-bit addresses, the mask must be >= 108 (as kube-apiserver requires)"
        );
        assert!(matches!(
            ServiceCidr::parse("10.0.0.0/8"),
            Err(RangeError::TooLarge { min: 12, .. })
        ));
        assert!(matches!(
            ServiceCidr::parse("10.43.0.0/31"),
            Err(RangeError::TooSmall { .. })
        ));
        assert!(matches!(
            ServiceCidr::parse("fd00::/127"),
            Err(RangeError::TooSmall { .. })
        ));
        assert!(matches!(
            ServiceCidr::parse("10.43.0.0"),
            Err(RangeError::Cidr { .. })
        ));
    }

    #[test]
    fn one_range_per_family_and_the_first_is_primary() {
        let both = ServiceCidrs::parse("fd00:43::/112, 10.43.0.0/16").unwrap();
        assert_eq!(both.primary.family(), Family::V6);
        assert!(both.is_dual_stack());
        assert_eq!(
            both.of(Family::V4).map(ServiceCidr::first),
            Some(ip("10.43.0.1"))
        );
        assert_eq!(both.to_string(), "fd00:43::/112,10.43.0.0/16");
        let v4 = ServiceCidrs::parse("10.43.0.0/16").unwrap();
        assert!(!v4.is_dual_stack() && v4.of(Family::V6).is_none());
        assert!(matches!(
            ServiceCidrs::parse("10.43.0.0/16,10.44.0.0/16"),
            Err(RangeError::SameFamily { family: "IPv4", .. })
        ));
        assert!(matches!(
            ServiceCidrs::parse("10.43.0.0/16,fd00::/112,fd01::/112"),
            Err(RangeError::TooMany(3))
        ));
        assert_eq!(ServiceCidrs::parse(" , "), Err(RangeError::Empty));
    }

    fn plan(ranges: &str, spec: serde_json::Value) -> Result<Plan, Vec<String>> {
        Plan::of(&ServiceCidrs::parse(ranges).unwrap(), &spec)
    }

    #[test]
    fn families_follow_the_policy_and_the_cluster_ranges() {
        let dual = "10.43.0.0/16,fd00:43::/112";
        let p = plan(dual, json!({})).unwrap();
        assert_eq!(
            (p.policy, &p.families[..]),
            ("SingleStack", &[Family::V4][..])
        );
        let p = plan(dual, json!({"ipFamilyPolicy": "PreferDualStack"})).unwrap();
        assert_eq!(p.families, [Family::V4, Family::V6]);
        let p = plan(
            dual,
            json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6"]}),
        )
        .unwrap();
        assert_eq!(p.families, [Family::V6, Family::V4]);
        // Two families asked for without a policy: RequireDualStack, as kube-apiserver defaults.
        let p = plan(dual, json!({"clusterIPs": ["fd00:43::5", "10.43.0.5"]})).unwrap();
        assert_eq!(p.policy, "RequireDualStack");
        assert_eq!(p.asked, [Some(ip("fd00:43::5")), Some(ip("10.43.0.5"))]);
        // A given IPv6 address picks the family of a single-stack Service.
        let p = plan(dual, json!({"clusterIP": "fd00:43::9"})).unwrap();
        assert_eq!(p.families, [Family::V6]);
        // PreferDualStack on a single-stack cluster: one family.
        let p = plan(
            "fd00:43::/112",
            json!({"ipFamilyPolicy": "PreferDualStack"}),
        )
        .unwrap();
        assert_eq!(p.families, [Family::V6]);
        let p = plan("10.43.0.0/16", json!({"clusterIP": "None"})).unwrap();
        assert!(p.headless && p.families == [Family::V4]);

        let err = plan(
            "10.43.0.0/16",
            json!({"ipFamilyPolicy": "RequireDualStack"}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            [
                "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"
            ]
        );
        let err = plan("10.43.0.0/16", json!({"ipFamilies": ["IPv6"]})).unwrap_err();
        assert!(
            err[0].starts_with("spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured"),
            "{err:?}"
        );
        let err = plan(
            dual,
            json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}),
        )
        .unwrap_err();
        assert!(
            err[0].starts_with("spec.ipFamilyPolicy: Invalid value: \"SingleStack\""),
            "{err:?}"
        );
        let err = plan(
            dual,
            json!({"ipFamilies": ["IPv4"], "clusterIP": "fd00:43::3"}),
        )
        .unwrap_err();
        assert!(err[0].contains("expected an IPv4 value"), "{err:?}");
        let err = plan(dual, json!({"ipFamilyPolicy": "Both"})).unwrap_err();
        assert!(
            err[0].starts_with("spec.ipFamilyPolicy: Unsupported value"),
            "{err:?}"
        );
        let err = plan(dual, json!({"clusterIP": "10.43.0.300"})).unwrap_err();
        assert!(
            err[0].starts_with("spec.clusterIPs[0]: Invalid value"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_small_range_hands_out_each_address_once_then_says_it_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        // A /29: 8 addresses, 6 usable, the first kept for `kubernetes`.
        let c = ServiceCidr::parse("198.18.0.0/29").unwrap();
        reserve_ip(&store, &c, c.first(), "default/kubernetes")
            .await
            .unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                allocate_ip(&store, &c, &format!("default/s{i}"))
                    .await
                    .unwrap(),
            );
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got.iter().all(|ip| c.holds(*ip) && *ip != c.first()));
        assert!(allocate_ip(&store, &c, "default/extra").await.is_err());
        assert!(matches!(
            reserve_ip(&store, &c, got[0], "default/copy").await,
            Err(ApiError::Unprocessable(m)) if m.contains("already allocated")
        ));
        release(&store, &[got[0]], &[]).await;
        assert_eq!(
            allocate_ip(&store, &c, "default/again").await.unwrap(),
            got[0]
        );
        let port = allocate_node_port(&store, "default/np").await.unwrap();
        assert!(NODE_PORT_RANGE.contains(&port));
        assert!(
            reserve_node_port(&store, port, "default/other")
                .await
                .is_err()
        );
        assert!(
            reserve_node_port(&store, 80, "default/other")
                .await
                .is_err()
        );
    }

    /// Fills a whole IPv6 /112 (65534 Services' addresses besides `kubernetes`): the random
    /// probes stop finding free addresses long before the end, and the last ones are still
    /// found; then the range is full, and a released address is handed out again.
    #[tokio::test]
    async fn an_ipv6_112_is_handed_out_to_the_last_address_then_refills() {
        // 65534 synchronous SQLite commits: on tmpfs where there is one (seconds, not minutes).
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let store = store(&dir).await;
        let c = ServiceCidr::parse("fd00:43::/112").unwrap();
        reserve_ip(&store, &c, c.first(), "default/kubernetes")
            .await
            .unwrap();
        // Most addresses taken one by one as users would ask for them, leaving 3 spread out.
        let left = [ip("fd00:43::2"), ip("fd00:43::8000"), ip("fd00:43::ffff")];
        for offset in 2..=0xffffu32 {
            let a = c.at(offset);
            if !left.contains(&a) {
                reserve_ip(&store, &c, a, "default/filler").await.unwrap();
            }
        }
        let mut got = Vec::new();
        for i in 0..3 {
            got.push(
                allocate_ip(&store, &c, &format!("default/s{i}"))
                    .await
                    .unwrap(),
            );
        }
        got.sort();
        assert_eq!(got, left);
        let full = allocate_ip(&store, &c, "default/extra").await.unwrap_err();
        assert!(full.to_string().contains("fd00:43::/112"), "{full}");
        release(&store, &[ip("fd00:43::8000")], &[]).await;
        assert_eq!(
            allocate_ip(&store, &c, "default/again").await.unwrap(),
            ip("fd00:43::8000")
        );
        // Outside the range: Kubernetes' message, naming the range.
        let err = reserve_ip(&store, &c, ip("fd00:44::1"), "default/x")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("the provided IP (fd00:44::1) is not in the valid range. The range of valid IPs is fd00:43::/112"),
            "{err}"
        );
    }
}
