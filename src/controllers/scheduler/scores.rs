//! Scores: among the nodes that fit, which one is best.
//!
//! Each score plugin of kube-scheduler's default profile that we have gives every feasible
//! node 0..=100 after its own normalisation, times the profile's weight:
//! TaintToleration ×3 (fewer untolerated PreferNoSchedule taints), NodeAffinity ×2 (the
//! preferred terms' weights), PodTopologySpread ×2 (the pod's `ScheduleAnyway` constraints,
//! or, for a pod without constraints, its controller's pods spread over hostnames as the
//! system default constraint does), NodeResourcesFit ×1 (least allocated cpu and memory).
//! The highest total wins; equal totals go to the node with the smallest hash of pod uid
//! and node name, which is deterministic for a pod yet differs from pod to pod, so
//! identical nodes share the load (kube-scheduler picks among them at random).
//!
//! Not scored (yet): NodeResourcesBalancedAllocation and ImageLocality (×1 each in the
//! default profile), preferred pod (anti-)affinity terms (InterPodAffinity ×2), and the
//! system default's second constraint (zones, `maxSkew: 5`). So where those would tip the
//! balance, kube-scheduler may pick another of the nodes that fit.

use super::NODE_DOMAIN;
use super::Snapshot;
use super::filters::{Cycle, TermDomains, domain_counts, spread_counts};
use super::view::Effect;

const MAX_SCORE: i64 = 100;

const TAINT_WEIGHT: i64 = 3;
const NODE_AFFINITY_WEIGHT: i64 = 2;
const SPREAD_WEIGHT: i64 = 2;
const FIT_WEIGHT: i64 = 1;

/// The system default constraint kube-scheduler applies to a pod that has none: a soft
/// `maxSkew: 3` over hostnames among the pods of the same controller. We spread over the
/// nodes themselves, which is the same where every node has its hostname label and still
/// spreads where one lacks it.
const DEFAULT_SPREAD_SKEW: i64 = 3;

/// The index (into `snap.nodes`) of the best of `feasible`, which is not empty.
pub(super) fn best(snap: &Snapshot, cycle: &Cycle, feasible: &[usize]) -> usize {
    let mut total = vec![0i64; feasible.len()];
    add(&mut total, &taints(snap, cycle, feasible), TAINT_WEIGHT);
    add(
        &mut total,
        &node_affinity(snap, cycle, feasible),
        NODE_AFFINITY_WEIGHT,
    );
    add(&mut total, &spread(snap, cycle, feasible), SPREAD_WEIGHT);
    add(
        &mut total,
        &least_allocated(snap, cycle, feasible),
        FIT_WEIGHT,
    );
    let uid = cycle.pod.uid.as_bytes();
    let mut best = 0;
    let mut best_key = (i64::MIN, 0u64);
    for (k, &i) in feasible.iter().enumerate() {
        // Highest total first, then the smallest tie hash.
        let key = (total[k], !tie_hash(uid, snap.nodes[i].view.name.as_bytes()));
        if key > best_key {
            best_key = key;
            best = i;
        }
    }
    best
}

fn add(total: &mut [i64], scores: &[i64], weight: i64) {
    for (t, s) in total.iter_mut().zip(scores) {
        *t += s * weight;
    }
}

/// Untolerated PreferNoSchedule taints, fewest best.
fn taints(snap: &Snapshot, cycle: &Cycle, feasible: &[usize]) -> Vec<i64> {
    let counts: Vec<i64> = feasible
        .iter()
        .map(|&i| {
            snap.nodes[i]
                .view
                .taints
                .iter()
                .filter(|t| t.effect == Effect::PreferNoSchedule && !cycle.pod.tolerates(t))
                .count() as i64
        })
        .collect();
    normalize(&counts, true)
}

/// Sum of the weights of the preferred node affinity terms a node matches.
fn node_affinity(snap: &Snapshot, cycle: &Cycle, feasible: &[usize]) -> Vec<i64> {
    let sums: Vec<i64> = feasible
        .iter()
        .map(|&i| {
            cycle
                .pod
                .preferred_terms
                .iter()
                .filter(|(_, term)| term.matches(&snap.nodes[i].view))
                .map(|(w, _)| *w)
                .sum()
        })
        .collect();
    normalize(&sums, false)
}

/// kube's `DefaultNormalizeScore`: scale so the largest is 100 (reversed: the smallest).
fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&s| {
            let scaled = if max > 0 {
                (i128::from(s) * i128::from(MAX_SCORE) / i128::from(max)) as i64
            } else {
                0
            };
            if reverse { MAX_SCORE - scaled } else { scaled }
        })
        .collect()
}

/// One soft constraint as scoring sees it: pods matching per domain.
struct Soft {
    max_skew: i64,
    domains: TermDomains,
}

/// PodTopologySpread's score: per soft constraint, the matching pods already in the
/// node's domain (plus `maxSkew - 1`), weighted by the log of the number of domains so
/// constraints over many small domains weigh more; fewest best. A node missing a
/// constraint's key scores 0.
fn spread(snap: &Snapshot, cycle: &Cycle, feasible: &[usize]) -> Vec<i64> {
    let pod = cycle.pod;
    let soft: Vec<Soft> = if pod.spread.is_empty() {
        let Some(owner) = &pod.owner else {
            return vec![0; feasible.len()];
        };
        let counts: Vec<u32> = snap
            .nodes
            .iter()
            .map(|n| n.owners.get(owner).copied().unwrap_or(0))
            .collect();
        let t = domain_counts(snap, NODE_DOMAIN, &counts, |n| pod.node_affinity_matches(n));
        vec![Soft {
            max_skew: DEFAULT_SPREAD_SKEW,
            domains: t,
        }]
    } else {
        let soft: Vec<_> = pod.spread.iter().filter(|c| !c.hard).collect();
        soft.iter()
            .map(|c| {
                let counts = spread_counts(snap, pod, c.selector.as_ref());
                let t = domain_counts(snap, &c.topology_key, &counts, |n| {
                    pod.node_affinity_matches(n)
                        && soft.iter().all(|c| n.labels.contains_key(&c.topology_key))
                });
                Soft {
                    max_skew: c.max_skew,
                    domains: t,
                }
            })
            .collect()
    };
    if soft.is_empty() {
        return vec![0; feasible.len()];
    }
    let weights: Vec<f64> = soft
        .iter()
        .map(|c| ((c.domains.len() + 2) as f64).ln())
        .collect();
    // None: the node lacks a key and is ignored (scores 0).
    let raw: Vec<Option<i64>> = feasible
        .iter()
        .map(|&i| {
            let mut score = 0.0;
            for (c, weight) in soft.iter().zip(&weights) {
                let count = c.domains.at(i)?;
                score += (count + c.max_skew - 1) as f64 * weight;
            }
            Some(score.round() as i64)
        })
        .collect();
    let max = raw.iter().flatten().copied().max().unwrap_or(0);
    let min = raw.iter().flatten().copied().min().unwrap_or(0);
    raw.iter()
        .map(|s| match s {
            None => 0,
            Some(_) if max == 0 => MAX_SCORE,
            Some(s) => MAX_SCORE * (max + min - s) / max,
        })
        .collect()
}

/// NodeResourcesFit's LeastAllocated: the share of cpu and memory left free after the pod,
/// counting request-less containers at the scoring defaults.
fn least_allocated(snap: &Snapshot, cycle: &Cycle, feasible: &[usize]) -> Vec<i64> {
    let free = |capacity: i64, requested: i64| {
        if capacity <= 0 || requested > capacity {
            0
        } else {
            // In i128: a saturated capacity times 100 must not overflow.
            (i128::from(capacity - requested) * i128::from(MAX_SCORE) / i128::from(capacity)) as i64
        }
    };
    let (cpu, memory) = cycle.pod.nonzero;
    feasible
        .iter()
        .map(|&i| {
            let n = &snap.nodes[i];
            let a = &n.view.allocatable;
            (free(a.milli_cpu, n.nonzero.0.saturating_add(cpu))
                + free(a.memory, n.nonzero.1.saturating_add(memory)))
                / 2
        })
        .collect()
}

/// FNV-1a over the pod uid, a separator and the node name.
fn tie_hash(uid: &[u8], node: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in uid.iter().chain(&[0u8]).chain(node) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
