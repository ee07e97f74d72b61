//! Filters: whether a node can take the pod at all, and if not, why.
//!
//! [`Cycle::new`] does once per decision what kube-scheduler's PreFilter plugins do: the
//! node names a `metadata.name` affinity narrows the pod to, pod counts per topology domain
//! for the pod's affinity terms and spread constraints, and the domains that existing pods'
//! anti-affinity closes to it. [`Cycle::filter`] then checks one node in the default
//! profile's plugin order and stops at the first plugin that refuses it, as
//! kube-scheduler's framework does; that plugin may give more than one reason (the
//! resource check names every resource that is short).

use std::sync::Arc;

use super::view::{Effect, NodeView, PodView, Taint};
use super::{Reason, Snapshot, Topology, Unschedulable};

/// The taint NodeUnschedulable lets a pod tolerate to land on a cordoned node.
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// What one decision precomputes before looking at nodes.
pub(super) struct Cycle<'a> {
    pub snap: &'a Snapshot,
    pub pod: &'a PodView,
    /// `Some`: only these nodes are candidates (NodeAffinity's PreFilter result).
    named: Option<Vec<&'a str>>,
    /// Per topology key, the domains where a bound pod's anti-affinity refuses this pod.
    blocked: Vec<Blocked>,
    affinity: Vec<TermDomains>,
    /// No pod anywhere matches the pod's affinity terms but the pod matches them all
    /// itself: the first of a group may go anywhere (as kube-scheduler allows).
    affinity_bootstrap: bool,
    anti: Vec<TermDomains>,
    hard_spread: Vec<Spread>,
}

/// Matching pods per domain of one topology key.
pub(super) struct TermDomains {
    topology: Arc<Topology>,
    /// Per domain: the matching pods on the nodes counted.
    counts: Vec<i64>,
    /// Per domain: whether any node counted is in it (a domain of only excluded nodes
    /// does not exist for spreading).
    present: Vec<bool>,
}

/// The domains of one topology key that existing pods' anti-affinity closes.
struct Blocked {
    key: String,
    topology: Arc<Topology>,
    /// Per domain: closed.
    domains: Vec<bool>,
}

/// A `DoNotSchedule` spread constraint, counted over the nodes it applies to.
struct Spread {
    max_skew: i64,
    /// 1 when the pod matches its own selector: placing it raises its domain's count.
    self_match: i64,
    domains: TermDomains,
    /// The smallest domain count (0 when fewer domains than `minDomains` exist).
    min: i64,
}

// === impl Cycle ===

impl<'a> Cycle<'a> {
    pub fn new(snap: &'a Snapshot, pod: &'a PodView) -> Result<Cycle<'a>, Unschedulable> {
        let named = pod.named_nodes();
        if named.as_ref().is_some_and(Vec::is_empty) {
            // Every term names nodes but their names never overlap.
            return Err(Unschedulable::NoFit {
                nodes: snap.nodes.len(),
                prefilter: Some("pod affinity terms conflict".into()),
                reasons: Default::default(),
            });
        }
        let mut blocked: Vec<Blocked> = Vec::new();
        for existing in &snap.anti {
            for term in &existing.terms {
                if !term.matches(&pod.namespace, &pod.labels) {
                    continue;
                }
                let key = term.topology_key.as_str();
                let entry = match blocked.iter().position(|b| b.key == key) {
                    Some(at) => &mut blocked[at],
                    None => {
                        let topology = snap.topology(key);
                        let domains = vec![false; topology.domains];
                        blocked.push(Blocked {
                            key: key.to_string(),
                            topology,
                            domains,
                        });
                        let last = blocked.len() - 1;
                        &mut blocked[last]
                    }
                };
                // A node without the key is in no domain: its pods' terms block nothing.
                if let Some(Some(d)) = entry.topology.of_node.get(existing.node) {
                    entry.domains[*d as usize] = true;
                }
            }
        }
        let term_domains = |term: &'a super::PodTerm| -> TermDomains {
            let counts = match &term.selector {
                Some(sel) => snap.counts(&term.namespaces, sel),
                None => vec![0; snap.nodes.len()],
            };
            domain_counts(snap, &term.topology_key, &counts, |_| true)
        };
        let affinity: Vec<TermDomains> = pod.affinity.iter().map(term_domains).collect();
        let affinity_bootstrap = !affinity.is_empty()
            && affinity.iter().all(|t| t.counts.iter().all(|&n| n == 0))
            && pod
                .affinity
                .iter()
                .all(|t| t.matches(&pod.namespace, &pod.labels));
        let anti = pod.anti_affinity.iter().map(term_domains).collect();
        let hard: Vec<_> = pod.spread.iter().filter(|c| c.hard).collect();
        // Only nodes the pod could go to by node affinity, and that carry every hard
        // constraint's key, count towards the skew.
        let eligible = |n: &NodeView| {
            pod.node_affinity_matches(n)
                && hard.iter().all(|c| n.labels.contains_key(&c.topology_key))
        };
        let hard_spread = hard
            .iter()
            .map(|c| {
                let counts = spread_counts(snap, pod, c.selector.as_ref());
                let t = domain_counts(snap, &c.topology_key, &counts, eligible);
                let min = if (t.len() as i64) < c.min_domains {
                    0
                } else {
                    t.min()
                };
                Spread {
                    max_skew: c.max_skew,
                    self_match: i64::from(
                        c.selector.as_ref().is_some_and(|s| s.matches(&pod.labels)),
                    ),
                    domains: t,
                    min,
                }
            })
            .collect();
        Ok(Cycle {
            snap,
            pod,
            named,
            blocked,
            affinity,
            affinity_bootstrap,
            anti,
            hard_spread,
        })
    }

    /// Pushes the reasons node `i` is refused; pushes nothing if it fits.
    pub fn filter(&self, i: usize, out: &mut Vec<Reason>) {
        let info = &self.snap.nodes[i];
        let node = &info.view;
        let pod = self.pod;
        if let Some(named) = &self.named
            && !named.contains(&node.name.as_str())
        {
            out.push(Reason::NotNamed);
            return;
        }
        // NodeUnschedulable
        if node.unschedulable
            && !pod.tolerates(&Taint {
                key: UNSCHEDULABLE_TAINT.into(),
                value: String::new(),
                effect: Effect::NoSchedule,
            })
        {
            out.push(Reason::Unschedulable);
            return;
        }
        // TaintToleration: the first NoSchedule or NoExecute taint not tolerated.
        if let Some(t) = node.taints.iter().find(|t| {
            matches!(t.effect, Effect::NoSchedule | Effect::NoExecute) && !pod.tolerates(t)
        }) {
            out.push(Reason::UntoleratedTaint {
                key: t.key.clone(),
                value: t.value.clone(),
            });
            return;
        }
        // NodeAffinity
        if !pod.node_affinity_matches(node) {
            out.push(Reason::NodeAffinity);
            return;
        }
        // NodePorts
        if pod
            .ports
            .iter()
            .any(|want| info.ports.iter().any(|used| used.conflicts(want)))
        {
            out.push(Reason::Ports);
            return;
        }
        // NodeResourcesFit: every short resource is named.
        let (a, r, p) = (&node.allocatable, &info.requested, &pod.requests);
        if r.pods + 1 > a.pods {
            out.push(Reason::TooManyPods);
        }
        for (want, free, name) in [
            (p.milli_cpu, a.milli_cpu.saturating_sub(r.milli_cpu), "cpu"),
            (p.memory, a.memory.saturating_sub(r.memory), "memory"),
            (
                p.ephemeral,
                a.ephemeral.saturating_sub(r.ephemeral),
                "ephemeral-storage",
            ),
        ] {
            if want > 0 && want > free {
                out.push(Reason::Insufficient(name));
            }
        }
        if !out.is_empty() {
            return;
        }
        // VolumeBinding: bound volumes' node affinity, then room to provision.
        let volumes = &pod.volumes;
        if !volumes
            .affinity
            .iter()
            .all(|terms| terms.iter().any(|t| t.matches(node)))
        {
            out.push(Reason::VolumeNodeAffinity);
            return;
        }
        if volumes.local_storage && !node.local_storage {
            out.push(Reason::NoVolumeToBind);
            return;
        }
        // PodTopologySpread
        for c in &self.hard_spread {
            let Some(count) = c.domains.at(i) else {
                out.push(Reason::SpreadMissingLabel);
                return;
            };
            if count + c.self_match - c.min > c.max_skew {
                out.push(Reason::Spread);
                return;
            }
        }
        // InterPodAffinity: the pod's affinity, its anti-affinity, then existing pods'.
        if !self.affinity_bootstrap && !self.affinity.iter().all(|t| t.at(i).is_some_and(|n| n > 0))
        {
            out.push(Reason::Affinity);
            return;
        }
        if self.anti.iter().any(|t| t.at(i).is_some_and(|n| n > 0)) {
            out.push(Reason::AntiAffinity);
            return;
        }
        if self
            .blocked
            .iter()
            .any(|b| b.topology.of_node[i].is_some_and(|d| b.domains[d as usize]))
        {
            out.push(Reason::ExistingAntiAffinity);
        }
    }
}

/// Per node, the pods a spread constraint counts: the pod's namespace, its selector (a
/// constraint without one counts nothing).
pub(super) fn spread_counts(
    snap: &Snapshot,
    pod: &PodView,
    selector: Option<&super::LabelSelector>,
) -> Vec<u32> {
    match selector {
        Some(sel) => snap.counts(&super::Namespaces::Listed(vec![pod.namespace.clone()]), sel),
        None => vec![0; snap.nodes.len()],
    }
}

/// Sums per-node `counts` by the domain of `key` over the nodes `include` accepts; every
/// such node's domain is present, with 0 if nothing matches there.
pub(super) fn domain_counts(
    snap: &Snapshot,
    key: &str,
    counts: &[u32],
    include: impl Fn(&NodeView) -> bool,
) -> TermDomains {
    let topology = snap.topology(key);
    let mut sums = vec![0i64; topology.domains];
    let mut present = vec![false; topology.domains];
    for ((info, &n), domain) in snap.nodes.iter().zip(counts).zip(&topology.of_node) {
        if let Some(d) = domain
            && include(&info.view)
        {
            sums[*d as usize] += i64::from(n);
            present[*d as usize] = true;
        }
    }
    TermDomains {
        topology,
        counts: sums,
        present,
    }
}

// === impl TermDomains ===

impl TermDomains {
    /// The count in node `i`'s domain; `None` when the node lacks the key.
    pub fn at(&self, i: usize) -> Option<i64> {
        let d = self.topology.of_node.get(i).copied().flatten()?;
        self.counts.get(d as usize).copied()
    }

    /// How many domains are present.
    pub fn len(&self) -> usize {
        self.present.iter().filter(|&&p| p).count()
    }

    /// The smallest count among present domains (0 if none is).
    pub fn min(&self) -> i64 {
        self.counts
            .iter()
            .zip(&self.present)
            .filter(|(_, p)| **p)
            .map(|(c, _)| *c)
            .min()
            .unwrap_or(0)
    }
}
