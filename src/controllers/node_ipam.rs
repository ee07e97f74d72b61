//! Node IPAM: gives every Node a block of the pod network (`spec.podCIDR` / `spec.podCIDRs`),
//! as kube-controller-manager's range allocator does.
//!
//! [`PodNetwork`] is `--cluster-cidr` (one CIDR, or an IPv4,IPv6 pair in either order) with
//! the block size of each family (`--node-cidr-mask-size`, `-ipv4`, `-ipv6`; 24 and 64 by
//! default). [`NodeIpam`] runs under the controllers lease on the controllers' cache: a node
//! without pod CIDRs gets the lowest block of each family that no cached Node holds. There is
//! no table of allocations: the Nodes are the record, so a new lease holder starts from its
//! fresh cache, and a deleted Node's block is free as soon as it left the cache. A node that
//! finds the range full gets none, a `CIDRNotAvailable` event and a log line, and is looked at
//! again whenever a Node goes away.
//!
//! Invariants: a write sets the pod CIDRs of a node that had none, with one compare-and-swap
//! on the resourceVersion the decision was made from (a node changed meanwhile is re-read and
//! decided again); the API server refuses any later change of them (see
//! [`crate::apiserver::kinds::node`]). Blocks this controller wrote but its cache does not
//! show yet count as taken, so a slow change feed cannot make it hand one block out twice.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde_json::json;

use super::events::{Recorder, Type};
use crate::api::cidr::{self, Cidr, Family};
use crate::apiserver::admission::Writer;
use crate::apiserver::registry::Part;
use crate::apiserver::resources::{NODES, ObjectRef, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::{Frozen, Json};

/// kube-controller-manager's default block sizes.
pub const DEFAULT_MASK_IPV4: u8 = 24;
pub const DEFAULT_MASK_IPV6: u8 = 64;
/// The event reason kube-controller-manager's range allocator records on a full range.
pub const CIDR_NOT_AVAILABLE: &str = "CIDRNotAvailable";
/// The `source.component` of its events, as kube-controller-manager names it.
pub const COMPONENT: &str = "cidrAllocator";

/// A `--cluster-cidr` / `--node-cidr-mask-size*` combination that cannot work; the server
/// refuses to start. Always the operator's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--cluster-cidr {raw:?} is not a CIDR such as 10.42.0.0/16: {source}")]
    NotCidr {
        raw: String,
        #[source]
        source: cidr::Error,
    },
    #[error(
        "--cluster-cidr {0:?}: expected one CIDR, or two (one IPv4 and one IPv6, comma-separated) for dual-stack"
    )]
    NotAPair(String),
    #[error(
        "--node-cidr-mask-size is not allowed with dual-stack clusters: use --node-cidr-mask-size-ipv4 and --node-cidr-mask-size-ipv6"
    )]
    GeneralMaskWithDualStack,
    #[error(
        "--node-cidr-mask-size-ipv4 and --node-cidr-mask-size-ipv6 are not allowed if --node-cidr-mask-size is set"
    )]
    GeneralAndFamilyMasks,
    #[error(
        "{flag} {mask} is smaller than the prefix of --cluster-cidr {cluster} (blocks must lie inside it: at least {min})"
    )]
    MaskShorterThanCluster {
        flag: &'static str,
        mask: u8,
        cluster: Cidr,
        min: u8,
    },
    #[error("{flag} {mask} is longer than an {family} address ({max} bits)")]
    MaskTooLong {
        flag: &'static str,
        mask: u8,
        family: &'static str,
        max: u8,
    },
}

/// The node block-size flags as given (`None`: not set).
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskFlags {
    pub general: Option<u8>,
    pub ipv4: Option<u8>,
    pub ipv6: Option<u8>,
}

/// The pod network: one pool per address family, in `--cluster-cidr` order (the first is the
/// node's `spec.podCIDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// Invariant: one or two pools, of different families; each mask lies within its family
    /// and is at least the pool's prefix.
    pools: Vec<Pool>,
    /// Ranges no node block may overlap: the Services' (`--service-cidr`), as
    /// kube-controller-manager's allocator marks it taken when it lies inside the cluster CIDR.
    reserved: Vec<Cidr>,
}

/// One family's range and the size of the blocks cut from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub cluster: Cidr,
    pub mask: u8,
}

/// No free block left in `pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free /{} left in the cluster CIDR {}", .pool.mask, .pool.cluster)]
pub struct Exhausted {
    pub pool: Pool,
}

/// The allocating controller.
pub struct NodeIpam {
    network: PodNetwork,
    events: Recorder,
    /// Blocks written for a node whose cached object does not show them yet, by node name.
    /// Pruned at every reconcile, so it holds at most the nodes written since the cache last
    /// caught up.
    written: Mutex<HashMap<String, Vec<Cidr>>>,
    /// Nodes already told the range is full (one event and one log line each): their own
    /// updates cannot free a block, so only a node going away looks at them again.
    waiting: Mutex<HashSet<String>>,
}

// === impl PodNetwork ===

impl PodNetwork {
    /// Parses `--cluster-cidr` and picks each family's block size as kube-controller-manager
    /// does: `--node-cidr-mask-size` applies to a single-stack cluster only and excludes the
    /// per-family flags.
    pub fn parse(cluster_cidr: &str, masks: MaskFlags) -> Result<PodNetwork, ConfigError> {
        let parts: Vec<&str> = cluster_cidr.split(',').map(str::trim).collect();
        let mut clusters = Vec::with_capacity(2);
        for part in &parts {
            let cidr = Cidr::parse(part).map_err(|source| ConfigError::NotCidr {
                raw: cluster_cidr.to_owned(),
                source,
            })?;
            clusters.push(cidr);
        }
        let dual = match clusters.as_slice() {
            [_] => false,
            [a, b] if a.family() != b.family() => true,
            _ => return Err(ConfigError::NotAPair(cluster_cidr.to_owned())),
        };
        let (mut v4, mut v6) = (DEFAULT_MASK_IPV4, DEFAULT_MASK_IPV6);
        let (mut v4_flag, mut v6_flag) =
            ("--node-cidr-mask-size-ipv4", "--node-cidr-mask-size-ipv6");
        match masks.general {
            Some(_) if dual => return Err(ConfigError::GeneralMaskWithDualStack),
            Some(_) if masks.ipv4.is_some() || masks.ipv6.is_some() => {
                return Err(ConfigError::GeneralAndFamilyMasks);
            }
            Some(m) => {
                (v4, v6) = (m, m);
                (v4_flag, v6_flag) = ("--node-cidr-mask-size", "--node-cidr-mask-size");
            }
            None => {
                v4 = masks.ipv4.unwrap_or(v4);
                v6 = masks.ipv6.unwrap_or(v6);
            }
        }
        let pools = clusters
            .into_iter()
            .map(|cluster| {
                let family = cluster.family();
                let (mask, flag) = match family {
                    Family::V4 => (v4, v4_flag),
                    Family::V6 => (v6, v6_flag),
                };
                if mask > family.bits() {
                    return Err(ConfigError::MaskTooLong {
                        flag,
                        mask,
                        family: family.name(),
                        max: family.bits(),
                    });
                }
                if mask < cluster.prefix() {
                    return Err(ConfigError::MaskShorterThanCluster {
                        flag,
                        mask,
                        cluster,
                        min: cluster.prefix(),
                    });
                }
                Ok(Pool { cluster, mask })
            })
            .collect::<Result<_, _>>()?;
        Ok(PodNetwork {
            pools,
            reserved: Vec::new(),
        })
    }

    /// Keeps node blocks off `range` (the Services' range, if it lies in the cluster CIDR).
    pub fn reserve(mut self, range: Cidr) -> PodNetwork {
        self.reserved.push(range);
        self
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// One block per pool, in pool order, each overlapping none of `used`; all or none.
    pub fn allocate(&self, used: &[Cidr]) -> Result<Vec<Cidr>, Exhausted> {
        let with_reserved: Vec<Cidr>;
        let used = if self.reserved.is_empty() {
            used
        } else {
            with_reserved = used.iter().chain(&self.reserved).copied().collect();
            &with_reserved
        };
        self.pools
            .iter()
            .map(|pool| {
                pool.cluster
                    .lowest_free(pool.mask, used)
                    .ok_or(Exhausted { pool: *pool })
            })
            .collect()
    }
}

// === impl NodeIpam ===

impl NodeIpam {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 1] = [&NODES];

    pub fn new(network: PodNetwork, events: Recorder) -> NodeIpam {
        NodeIpam {
            network,
            events,
            written: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashSet::new()),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every block a cached node holds, and those written but not cached yet.
    fn used(&self, cache: &Cache) -> Vec<Cidr> {
        let nodes = cache.list(&NODES);
        let mut used: Vec<Cidr> = nodes.iter().flat_map(|n| pod_cidrs(&**n)).collect();
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Forget what the cache shows now (or whose node is gone: its block is free again).
        written.retain(|name, _| {
            cache
                .get(&ObjectRef::cluster(&NODES, name))
                .is_some_and(|n| pod_cidrs(&*n).is_empty())
        });
        used.extend(written.values().flatten().copied());
        used
    }
}

impl Reconciler for NodeIpam {
    fn name(&self) -> &'static str {
        "node-ipam"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        if change.resource != &NODES {
            return vec![];
        }
        match change.new.as_deref() {
            Some(node) if needs_cidrs(node) && !self.waiting().contains(name(node)) => {
                vec![name(node).to_owned()]
            }
            Some(_) => vec![],
            // A node went away and took its blocks along: whoever waits may get one now.
            None => self.all(cache),
        }
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        cache
            .list(&NODES)
            .iter()
            .filter(|n| needs_cidrs(&***n))
            .map(|n| name(n).to_owned())
            .collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let r = ObjectRef::cluster(&NODES, key);
        let Some(node) = ctx.cache.get(&r) else {
            self.waiting().remove(key);
            return Ok(Action::Done);
        };
        if !needs_cidrs(&*node) {
            self.waiting().remove(key);
            return Ok(Action::Done);
        }
        let used = self.used(&ctx.cache);
        let blocks = match self.network.allocate(&used) {
            Ok(blocks) => blocks,
            Err(e) => {
                if !self.waiting().insert(key.to_owned()) {
                    // Told already; looked at again when a node goes away.
                    return Ok(Action::Done);
                }
                tracing::warn!(node = key, error = %e, "no pod CIDR for the node: the cluster CIDR is full");
                self.events
                    .record(
                        &NODES,
                        &node,
                        Type::Normal,
                        CIDR_NOT_AVAILABLE,
                        &format!("Node {key} status is now: {CIDR_NOT_AVAILABLE}"),
                    )
                    .await;
                // Looked at again when a node goes away (see `keys`).
                return Ok(Action::Done);
            }
        };
        let texts: Vec<String> = blocks.iter().map(Cidr::to_string).collect();
        let mut next = node.thaw();
        next["spec"]["podCIDR"] = json!(texts[0]);
        next["spec"]["podCIDRs"] = json!(texts);
        // `next` keeps the cached resourceVersion: the update is a compare-and-swap on it, so
        // a node someone changed meanwhile (its CIDRs set by hand, say) fails with 409 and is
        // decided again from the newer object.
        let written = ctx
            .registry
            .update(&r, Part::Main, Writer::Trusted, next)
            .await?;
        ctx.wrote(&written);
        self.written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key.to_owned(), blocks);
        self.waiting().remove(key);
        tracing::info!(node = key, pod_cidrs = ?texts, "allocated the node's pod CIDRs");
        Ok(Action::Done)
    }
}

/// The node's `spec.podCIDRs` (or `spec.podCIDR` alone), parsed; unparsable entries are
/// skipped (the API server refuses them, so they come only from older data).
pub fn pod_cidrs<J: Json>(node: &J) -> Vec<Cidr> {
    let spec = &node["spec"];
    let listed: Vec<&str> = spec["podCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(J::as_str)
        .collect();
    let texts = if listed.is_empty() {
        spec["podCIDR"].as_str().into_iter().collect()
    } else {
        listed
    };
    texts
        .into_iter()
        .filter_map(|t| Cidr::parse(t).ok())
        .collect()
}

/// A node without pod CIDRs that is not being deleted.
fn needs_cidrs<J: Json>(node: &J) -> bool {
    let empty = |v: &J| {
        v.is_null()
            || v.as_str().is_some_and(str::is_empty)
            || v.as_array().is_some_and(<[J]>::is_empty)
    };
    empty(&node["spec"]["podCIDR"])
        && empty(&node["spec"]["podCIDRs"])
        && node
            .pointer("/metadata/deletionTimestamp")
            .is_none_or(J::is_null)
}

fn name(node: &Frozen) -> &str {
    node.pointer("/metadata/name")
        .and_then(Frozen::as_str)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    fn network(cidr: &str, masks: MaskFlags) -> PodNetwork {
        PodNetwork::parse(cidr, masks).unwrap()
    }

    #[test]
    fn no_block_overlaps_the_service_range() {
        // --cluster-cidr 10.42.0.0/15 holds the default --service-cidr 10.43.0.0/16.
        let net = network("10.42.0.0/15", MaskFlags::default()).reserve(c("10.43.0.0/16"));
        let mut used = Vec::new();
        let blocks = allocate_n(&net, &mut used, 256);
        assert_eq!(blocks.last().unwrap(), "10.42.255.0/24");
        assert!(
            net.allocate(&used).is_err(),
            "a block was cut from the Services' range"
        );
    }

    /// Allocates for `n` nodes in turn, each seeing the ones before it.
    fn allocate_n(net: &PodNetwork, used: &mut Vec<Cidr>, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let blocks = net.allocate(used).unwrap();
                used.extend(&blocks);
                blocks
                    .iter()
                    .map(Cidr::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    #[test]
    fn nodes_get_the_lowest_free_block() {
        let net = network("10.42.0.0/16", MaskFlags::default());
        let mut used = vec![];
        assert_eq!(
            allocate_n(&net, &mut used, 3),
            ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]
        );
    }

    #[test]
    fn a_deleted_nodes_block_is_reused_first() {
        let net = network("10.42.0.0/16", MaskFlags::default());
        let mut used = vec![];
        allocate_n(&net, &mut used, 3);
        // The second node is deleted: it is simply no longer among the used blocks.
        used.retain(|b| *b != c("10.42.1.0/24"));
        assert_eq!(
            allocate_n(&net, &mut used, 2),
            ["10.42.1.0/24", "10.42.3.0/24"]
        );
    }

    #[test]
    fn a_full_range_gives_no_block_until_one_is_freed() {
        let net = network("10.99.0.0/23", MaskFlags::default());
        let mut used = vec![];
        assert_eq!(
            allocate_n(&net, &mut used, 2),
            ["10.99.0.0/24", "10.99.1.0/24"]
        );
        let Err(e) = net.allocate(&used) else {
            panic!("a third /24 in a /23")
        };
        assert_eq!(
            e.to_string(),
            "no free /24 left in the cluster CIDR 10.99.0.0/23"
        );
        used.remove(0);
        assert_eq!(net.allocate(&used), Ok(vec![c("10.99.0.0/24")]));
    }

    #[test]
    fn ipv6_blocks_are_64s_and_dual_stack_gives_one_per_family_or_none() {
        let net = network("fd00:10:244::/56", MaskFlags::default());
        let mut used = vec![];
        assert_eq!(
            allocate_n(&net, &mut used, 2),
            ["fd00:10:244::/64", "fd00:10:244:1::/64"]
        );
        let mut used: Vec<Cidr> = (0..255u16)
            .map(|i| c(&format!("fd00:10:244:{i:x}::/64")))
            .collect();
        assert_eq!(allocate_n(&net, &mut used, 1), ["fd00:10:244:ff::/64"]);
        assert!(net.allocate(&used).is_err(), "256 /64s fill a /56");

        // IPv6 first: the node's podCIDR is the IPv6 block, as --cluster-cidr orders them.
        let dual = network("fd00:10:244::/56,10.42.0.0/16", MaskFlags::default());
        let mut used = vec![c("10.42.0.0/24")];
        assert_eq!(
            allocate_n(&dual, &mut used, 1),
            ["fd00:10:244::/64,10.42.1.0/24"]
        );
        let small = network("10.42.0.0/24,fd00::/64", MaskFlags::default());
        assert_eq!(
            allocate_n(&small, &mut vec![], 1),
            ["10.42.0.0/24,fd00::/64"]
        );
        assert!(
            small.allocate(&[c("fd00::/64")]).is_err(),
            "no IPv4 block without an IPv6 one"
        );
    }

    #[test]
    fn masks_are_chosen_and_checked_as_kube_controller_manager_does() {
        let masks = |general, ipv4, ipv6| MaskFlags {
            general,
            ipv4,
            ipv6,
        };
        let sizes = |cidr: &str, m: MaskFlags| {
            PodNetwork::parse(cidr, m).map(|n| n.pools().iter().map(|p| p.mask).collect::<Vec<_>>())
        };
        assert_eq!(sizes("10.42.0.0/16", masks(None, None, None)), Ok(vec![24]));
        assert_eq!(
            sizes("10.42.0.0/16", masks(Some(26), None, None)),
            Ok(vec![26])
        );
        assert_eq!(
            sizes("10.42.0.0/16", masks(None, Some(25), None)),
            Ok(vec![25])
        );
        assert_eq!(
            sizes("fd00::/48", masks(Some(80), None, None)),
            Ok(vec![80])
        );
        assert_eq!(
            sizes("10.42.0.0/16,fd00::/48", masks(None, Some(20), Some(96))),
            Ok(vec![20, 96])
        );
        let refused =
            |cidr: &str, m: MaskFlags| PodNetwork::parse(cidr, m).unwrap_err().to_string();
        assert_eq!(
            refused("10.42.0.0/16", masks(Some(8), None, None)),
            "--node-cidr-mask-size 8 is smaller than the prefix of --cluster-cidr 10.42.0.0/16 (blocks must lie inside it: at least 16)"
        );
        assert!(
            refused("10.42.0.0/16", masks(None, Some(12), None))
                .starts_with("--node-cidr-mask-size-ipv4 12")
        );
        assert!(
            refused("10.42.0.0/16", masks(Some(33), None, None))
                .starts_with("--node-cidr-mask-size 33 is longer")
        );
        assert!(
            refused("10.42.0.0/16,fd00::/48", masks(Some(24), None, None))
                .contains("not allowed with dual-stack")
        );
        assert!(
            refused("10.42.0.0/16", masks(Some(24), Some(24), None))
                .contains("not allowed if --node-cidr-mask-size is set")
        );
        assert!(
            refused("10.42.0.0/16,10.43.0.0/16", masks(None, None, None))
                .contains("one IPv4 and one IPv6")
        );
        assert!(
            refused("10.42.0.0/16,fd00::/48,fd01::/48", masks(None, None, None))
                .contains("one IPv4 and one IPv6")
        );
        assert!(
            refused("10.42.0.0", masks(None, None, None))
                .starts_with("--cluster-cidr \"10.42.0.0\" is not a CIDR")
        );
        assert!(refused("", masks(None, None, None)).starts_with("--cluster-cidr"));
    }

    #[test]
    fn a_nodes_cidrs_come_from_the_list_or_the_single_field() {
        let node = json!({"spec": {"podCIDR": "10.42.7.0/24"}});
        assert_eq!(pod_cidrs(&node), vec![c("10.42.7.0/24")]);
        let node =
            json!({"spec": {"podCIDR": "10.42.7.0/24", "podCIDRs": ["10.42.7.0/24", "fd00::/64"]}});
        assert_eq!(pod_cidrs(&node), vec![c("10.42.7.0/24"), c("fd00::/64")]);
        assert!(needs_cidrs(&json!({"spec": {}})));
        assert!(needs_cidrs(
            &json!({"spec": {"podCIDR": "", "podCIDRs": []}})
        ));
        assert!(!needs_cidrs(&json!({"spec": {"podCIDR": "10.42.7.0/24"}})));
        assert!(!needs_cidrs(
            &json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}, "spec": {}})
        ));
    }
}
