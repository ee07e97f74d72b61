//! Cluster IPs (from `--service-cidr`) and node ports (30000–32767) for Services.
//!
//! Servers share no memory, so the datastore arbitrates: every address or port in use is a
//! reservation record (`/registry/keelson.io/clusterips/<ip>`,
//! `/registry/keelson.io/nodeports/<port>`, outside every API resource) created
//! insert-if-absent; whoever creates it owns it. Invariant: a Service's clusterIP and node
//! ports are reserved before the Service is stored and released after it is deleted, so two
//! Services never share one, whichever servers made them.

use std::net::Ipv4Addr;

use ring::rand::SecureRandom;
use serde_json::json;

use super::status::ApiError;
use crate::datastore::{self, Store};

const CLUSTER_IPS: &str = "/registry/keelson.io/clusterips/";
const NODE_PORTS: &str = "/registry/keelson.io/nodeports/";
/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Reservations tried before an allocation gives up: each is a statement, and a range with
/// no free entry among this many random-start probes is as good as full.
const MAX_PROBES: u32 = 512;

/// An IPv4 service range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    network: u32,
    /// Addresses in the range, network and broadcast included.
    size: u32,
}

// === impl ServiceCidr ===

impl ServiceCidr {
    /// `10.43.0.0/16`; `None` for anything else (IPv6 ranges are not allocated from yet).
    pub fn parse(raw: &str) -> Option<ServiceCidr> {
        let (ip, bits) = raw.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let bits: u32 = bits.parse().ok()?;
        if !(8..=30).contains(&bits) {
            return None;
        }
        let size = 1u32 << (32 - bits);
        Some(ServiceCidr {
            network: u32::from(ip) & !(size - 1),
            size,
        })
    }

    /// The first usable address: the `kubernetes` Service's, as in Kubernetes.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(self.network) < self.size
    }

    /// Usable offsets: neither the network nor the broadcast address.
    fn usable(&self) -> u32 {
        self.size - 2
    }
}

/// Takes a free cluster IP for `owner` (`namespace/name`).
pub async fn allocate_ip(
    store: &Store,
    cidr: &ServiceCidr,
    owner: &str,
) -> Result<Ipv4Addr, ApiError> {
    let start = random_below(cidr.usable());
    for i in 0..cidr.usable().min(MAX_PROBES) {
        // Offsets 1..=size-2; the first address is kept for the `kubernetes` Service.
        let offset = 2 + (start + i) % (cidr.usable() - 1);
        let ip = Ipv4Addr::from(cidr.network + offset);
        if reserve(store, &format!("{CLUSTER_IPS}{ip}"), owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::Internal(
        "no free cluster IP found in --service-cidr; delete unused Services or widen the range"
            .into(),
    ))
}

/// Reserves the cluster IP a Service asked for, or says why it cannot have it.
pub async fn reserve_ip(
    store: &Store,
    cidr: &ServiceCidr,
    ip: Ipv4Addr,
    owner: &str,
) -> Result<(), ApiError> {
    if !cidr.contains(ip) || u32::from(ip) == cidr.network {
        return Err(invalid(format!(
            "spec.clusterIP: Invalid value: \"{ip}\": provided IP is not in the valid range. The range of valid IPs is the cluster's --service-cidr"
        )));
    }
    if reserve(store, &format!("{CLUSTER_IPS}{ip}"), owner).await? {
        Ok(())
    } else {
        Err(invalid(format!(
            "spec.clusterIP: Invalid value: \"{ip}\": provided IP is already allocated"
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

/// Gives back a cluster IP and node ports (a deleted Service's, or a failed creation's).
pub async fn release(store: &Store, ip: Option<Ipv4Addr>, ports: &[u16]) {
    let paths = ip
        .map(|ip| format!("{CLUSTER_IPS}{ip}"))
        .into_iter()
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

    #[test]
    fn service_ranges_parse_and_keep_the_first_address() {
        let c = ServiceCidr::parse("10.43.0.0/16").unwrap();
        assert_eq!(c.first(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 43, 255, 254)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert_eq!(ServiceCidr::parse("10.43.7.9/16"), Some(c));
        assert_eq!(ServiceCidr::parse("fd00::/108"), None);
        assert_eq!(ServiceCidr::parse("10.43.0.0/31"), None);
    }

    #[tokio::test]
    async fn a_small_range_hands_out_each_address_once_then_says_it_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &crate::datastore::Endpoint::sqlite(dir.path().join("s.db")),
            &crate::datastore::PoolConfig::default(),
        )
        .await
        .unwrap();
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
        assert!(got.iter().all(|ip| c.contains(*ip) && *ip != c.first()));
        assert!(allocate_ip(&store, &c, "default/extra").await.is_err());
        assert!(matches!(
            reserve_ip(&store, &c, got[0], "default/copy").await,
            Err(ApiError::Unprocessable(m)) if m.contains("already allocated")
        ));
        release(&store, Some(got[0]), &[]).await;
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
}
