//! Filters: whether a node can take the pod at all, and if not, why.
//!
//! [`Cycle::new`] does once per decision what kube-scheduler's PreFilter plugins do: the
//! node names a `metadata.name` affinity narrows the pod to, pod counts per topology domain
//! for the pod's affinity terms and spread constraints, and the domains that existing pods'
//! anti-affinity closes to it. [`Cycle::filter`] then checks one node in the default
//! profile's plugin order and stops at the first plugin that refuses it, as
//! kube-scheduler's framework does; that plugin may give more than one reason (the
//! resource check names every resource that is short).

use std::collections::HashMap;

use super::view::{Effect, NodeView, PodView, Taint};
use super::{Reason, Snapshot, Unschedulable};

/// The taint NodeUnschedulable lets a pod tolerate to land on a cordoned node.
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// What one decision precomputes before looking at nodes.
pub(super) struct Cycle<'a> {
    pub snap: &'a Snapshot,
    pub pod: &'a PodView,
    /// `Some`: only these nodes are candidates (NodeAffinity's PreFilter result).
    named: Option<Vec<&'a str>>,
    /// Topology domains (key, value) where a bound pod's anti-affinity refuses this pod.
    blocked: Vec<(&'a str, &'a str)>,
    affinity: Vec<TermDomains<'a>>,
    /// No pod anywhere matches the pod's affinity terms but the pod matches them all
    /// itself: the first of a group may go anywhere (as kube-scheduler allows).
    affinity_bootstrap: bool,
    anti: Vec<TermDomains<'a>>,
    hard_spread: Vec<Spread<'a>>,
}

/// Matching pods per value of one topology key.
pub(super) struct TermDomains<'a> {
    pub key: &'a str,
    pub domains: HashMap<&'a str, i64>,
}

/// A `DoNotSchedule` spread constraint, counted over the nodes it applies to.
struct Spread<'a> {
    key: &'a str,
    max_skew: i64,
    /// 1 when the pod matches its own selector: placing it raises its domain's count.
    self_match: i64,
    domains: HashMap<&'a str, i64>,
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
        let mut blocked = Vec::new();
        for existing in &snap.anti {
            let labels = &snap.nodes[existing.node].view.labels;
            for term in &existing.terms {
                if term.matches(&pod.namespace, &pod.labels)
                    && let Some(value) = labels.get(&term.topology_key)
                {
                    blocked.push((term.topology_key.as_str(), value.as_str()));
                }
            }
        }
        let term_domains = |term: &'a super::PodTerm| -> TermDomains<'a> {
            let counts = match &term.selector {
                Some(sel) => snap.counts(&term.namespaces, sel),
                None => vec![0; snap.nodes.len()],
            };
            domain_counts(snap, &term.topology_key, &counts, |_| true)
        };
        let affinity: Vec<TermDomains> = pod.affinity.iter().map(term_domains).collect();
        let affinity_bootstrap = !affinity.is_empty()
            && affinity.iter().all(|t| t.domains.values().all(|&n| n == 0))
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
                let min = if (t.domains.len() as i64) < c.min_domains {
                    0
                } else {
                    t.domains.values().copied().min().unwrap_or(0)
                };
                Spread {
                    key: t.key,
                    max_skew: c.max_skew,
                    self_match: i64::from(
                        c.selector.as_ref().is_some_and(|s| s.matches(&pod.labels)),
                    ),
                    domains: t.domains,
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
        // PodTopologySpread
        for c in &self.hard_spread {
            let Some(value) = node.labels.get(c.key) else {
                out.push(Reason::SpreadMissingLabel);
                return;
            };
            let count = c.domains.get(value.as_str()).copied().unwrap_or(0);
            if count + c.self_match - c.min > c.max_skew {
                out.push(Reason::Spread);
                return;
            }
        }
        // InterPodAffinity: the pod's affinity, its anti-affinity, then existing pods'.
        if !self.affinity_bootstrap
            && !self.affinity.iter().all(|t| {
                node.labels
                    .get(t.key)
                    .is_some_and(|v| t.domains.get(v.as_str()).is_some_and(|&n| n > 0))
            })
        {
            out.push(Reason::Affinity);
            return;
        }
        if self.anti.iter().any(|t| {
            node.labels
                .get(t.key)
                .is_some_and(|v| t.domains.get(v.as_str()).is_some_and(|&n| n > 0))
        }) {
            out.push(Reason::AntiAffinity);
            return;
        }
        if self
            .blocked
            .iter()
            .any(|(k, v)| node.labels.get(*k).is_some_and(|x| x == v))
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

/// Sums per-node `counts` by the value of `key` over the nodes `include` accepts; every
/// such node's domain appears, with 0 if nothing matches there.
pub(super) fn domain_counts<'a>(
    snap: &'a Snapshot,
    key: &'a str,
    counts: &[u32],
    include: impl Fn(&NodeView) -> bool,
) -> TermDomains<'a> {
    let mut domains: HashMap<&str, i64> = HashMap::new();
    for (info, &n) in snap.nodes.iter().zip(counts) {
        if let Some(value) = info.view.labels.get(key)
            && include(&info.view)
        {
            *domains.entry(value.as_str()).or_default() += i64::from(n);
        }
    }
    TermDomains { key, domains }
}
