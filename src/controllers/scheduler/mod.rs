//! The scheduler's decision core: which node a pending pod goes to, or why none fits.
//!
//! Pure logic, no I/O. The scheduling loop (informer cache, work queue, leadership, binding;
//! issue 12) builds a [`Snapshot`] from the nodes and pods its cache holds, asks
//! [`Snapshot::schedule`] for each pod that [`wants`] a scheduler, binds it, and records the
//! placement with [`Snapshot::assume`] so the next decision from the same snapshot sees it.
//!
//! A decision works as kube-scheduler's default profile does, plugin by plugin in its
//! order: filters (NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts,
//! NodeResourcesFit, PodTopologySpread, InterPodAffinity; the first that refuses a node gives
//! that node's reasons, see [`filters`]) and then weighted scores (see [`scores`]). Equal
//! totals are broken by a hash of the pod's uid and the node's name, so equal nodes share
//! the load instead of the alphabetically first one taking it all. When nothing fits,
//! [`Unschedulable::message`] is kube-scheduler's text. keelson has no preemption, and
//! kube-scheduler prints no `preemption: ...` tail when no PostFilter plugin is configured,
//! so neither do we.
//!
//! Invariants:
//! - A decision costs O(nodes) (times the pod's own terms and constraints), never a scan
//!   of all pods per node: per-node aggregates (requests, ports, owners) are summed when
//!   the snapshot is built and updated by `assume`; pod counts by label selector are
//!   computed once per distinct selector and kept up to date by `assume` (see [`Memo`]).
//!   The one per-decision walk over pods is over those with required anti-affinity, whose
//!   terms the incoming pod must not match (kube-scheduler walks the same list).
//! - Nothing from an object is trusted: a missing field is what Kubernetes defaults it
//!   to, and a malformed request of the pod being scheduled makes it unschedulable with
//!   the field named ([`Unschedulable::InvalidPod`]).

mod filters;
mod run;
mod scores;
#[cfg(test)]
mod tests;
mod view;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::runtime::frozen::{AsJson, Json};

pub use run::Scheduler;
use view::{
    HostPort, LabelSelector, Labels, Namespaces, NodeView, PodTerm, PodView, Resources, Strictness,
};

/// The topology key that stands for the node itself (one domain per node). Empty, so no
/// label key can be it.
const NODE_DOMAIN: &str = "";

/// `spec.schedulerName` of the pods this scheduler places.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// How many distinct (namespaces, selector) pod counts, and topology keys, a snapshot
/// keeps. Each costs a `u32` per node (and a selector check per `assume`); past the bound
/// the oldest count goes (topology keys, being few, start over).
const MEMO_CAPACITY: usize = 64;

/// Whether `pod` is this scheduler's to place: unbound, for `default-scheduler`, not
/// finished, not being deleted, and with no scheduling gates left (kube-scheduler does not
/// try a gated pod; it reports it as `SchedulingGated` until the gates are removed).
pub fn wants(pod: &impl AsJson) -> bool {
    let pod = pod.json();
    let spec = &pod["spec"];
    spec["nodeName"].as_str().is_none_or(str::is_empty)
        && spec["schedulerName"]
            .as_str()
            .is_none_or(|s| s.is_empty() || s == SCHEDULER_NAME)
        && !is_terminal(pod)
        && pod["metadata"]["deletionTimestamp"].is_null()
        && spec["schedulingGates"]
            .as_array()
            .is_none_or(<[_]>::is_empty)
}

/// Whether one toleration tolerates one taint (both in their JSON form), as kube's
/// `ToleratesTaint`; malformed ones tolerate and are nothing.
pub fn tolerates<T: Json, U: Json>(toleration: &T, taint: &U) -> bool {
    match (
        view::Toleration::parse(toleration),
        view::Taint::parse(taint),
    ) {
        (Some(t), Some(taint)) => t.tolerates(&taint),
        _ => false,
    }
}

/// Why a pod fits no node. Retryable: the loop tries again when nodes or pods change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unschedulable {
    /// The snapshot has no nodes at all.
    #[error("no nodes available to schedule pods")]
    NoNodes,
    /// Every node was refused; `reasons` counts the nodes per reason (a node refused by the
    /// resource check for cpu and memory counts under both).
    #[error("{}", fit_message(*.nodes, .prefilter.as_deref(), .reasons))]
    NoFit {
        nodes: usize,
        /// A refusal before any node was looked at (conflicting node-name terms).
        prefilter: Option<String>,
        reasons: BTreeMap<Reason, usize>,
    },
    /// The pod itself cannot be read (a request that is no quantity).
    #[error("invalid pod: {0}")]
    InvalidPod(String),
}

/// Why one node was refused, worded as kube-scheduler's plugins word it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// NodeAffinity's PreFilter named other nodes (`matchFields` on `metadata.name`).
    NotNamed,
    Unschedulable,
    UntoleratedTaint {
        key: String,
        value: String,
    },
    NodeAffinity,
    Ports,
    TooManyPods,
    Insufficient(&'static str),
    SpreadMissingLabel,
    Spread,
    ExistingAntiAffinity,
    Affinity,
    AntiAffinity,
    VolumeNodeAffinity,
    NoVolumeToBind,
}

/// The nodes and the pods bound to them, as one decision needs them.
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Bound pods with required anti-affinity: the incoming pod must not join a topology
    /// domain whose pods' terms it matches ("existing pods anti-affinity").
    anti: Vec<ExistingAnti>,
    /// Pod counts per node by selector. Behind a mutex because `schedule` takes `&self`
    /// and fills it lazily; held only while a count is read or made, never across a
    /// decision.
    memo: Mutex<Vec<Memo>>,
    /// Each topology key's domains, made on first use. Nodes never change after `new`, so
    /// an entry never goes stale.
    topologies: Mutex<HashMap<String, Arc<Topology>>>,
}

/// A node and what is bound to it.
struct NodeInfo {
    view: NodeView,
    /// Sum of the bound pods' requests (`pods`: how many are bound).
    requested: Resources,
    /// Sum of the bound pods' cpu and memory with scoring defaults for request-less
    /// containers.
    nonzero: (i64, i64),
    ports: Vec<HostPort>,
    /// Bound pods per owner uid, for spreading a controller's pods.
    owners: HashMap<String, u32>,
    /// Namespace and labels of every bound pod, for the selector counts.
    members: Vec<Member>,
}

struct Member {
    namespace: String,
    labels: Labels,
}

struct ExistingAnti {
    node: usize,
    terms: Vec<PodTerm>,
}

/// The domains of one topology key: nodes with the same label value share a domain.
struct Topology {
    /// Per node, its domain's index; `None` when the node lacks the label.
    of_node: Vec<Option<u32>>,
    domains: usize,
}

/// How many pods on each node match `selector` within `namespaces`.
/// Invariant: `counts[i]` is exact for `nodes[i]`, including assumed pods.
struct Memo {
    namespaces: Namespaces,
    selector: LabelSelector,
    counts: Vec<u32>,
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds a snapshot from Node and Pod objects. Pods count on their node when bound
    /// (`spec.nodeName` names a node of the snapshot) and not finished (phase Succeeded or
    /// Failed); pods being deleted still hold their resources until they are gone. Nodes
    /// without a name are skipped; a second node of the same name replaces the first.
    pub fn new<'a, N: AsJson + 'a, P: AsJson + 'a>(
        nodes: impl IntoIterator<Item = &'a N>,
        pods: impl IntoIterator<Item = &'a P>,
    ) -> Snapshot {
        let mut snapshot = Snapshot {
            nodes: Vec::new(),
            index: HashMap::new(),
            anti: Vec::new(),
            memo: Mutex::new(Vec::new()),
            topologies: Mutex::new(HashMap::new()),
        };
        for view in nodes.into_iter().filter_map(|n| NodeView::parse(n.json())) {
            let info = NodeInfo {
                view,
                requested: Resources::default(),
                nonzero: (0, 0),
                ports: Vec::new(),
                owners: HashMap::new(),
                members: Vec::new(),
            };
            match snapshot.index.get(&info.view.name) {
                Some(&i) => snapshot.nodes[i] = info,
                None => {
                    snapshot
                        .index
                        .insert(info.view.name.clone(), snapshot.nodes.len());
                    snapshot.nodes.push(info);
                }
            }
        }
        for pod in pods {
            let pod = pod.json();
            let Some(node) = pod["spec"]["nodeName"].as_str() else {
                continue;
            };
            if !is_terminal(pod) {
                snapshot.assume(pod, node);
            }
        }
        snapshot
    }

    /// Picks the node for `pod`: the best-scoring node that every filter accepts.
    pub fn schedule(&self, pod: &impl AsJson) -> Result<String, Unschedulable> {
        self.schedule_with(pod, volumes::VolumeNeeds::default())
    }

    /// [`Snapshot::schedule`] for a pod whose claims ask `volumes` of its node.
    pub fn schedule_with(
        &self,
        pod: &impl AsJson,
        volumes: volumes::VolumeNeeds,
    ) -> Result<String, Unschedulable> {
        let mut pod =
            PodView::parse(pod.json(), Strictness::Strict).map_err(Unschedulable::InvalidPod)?;
        pod.volumes = volumes;
        if self.nodes.is_empty() {
            return Err(Unschedulable::NoNodes);
        }
        let cycle = filters::Cycle::new(self, &pod)?;
        let mut feasible = Vec::new();
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        let mut refused = Vec::new();
        for i in 0..self.nodes.len() {
            refused.clear();
            cycle.filter(i, &mut refused);
            if refused.is_empty() {
                feasible.push(i);
            }
            for r in refused.drain(..) {
                *reasons.entry(r).or_default() += 1;
            }
        }
        let best = match feasible.as_slice() {
            [] => {
                return Err(Unschedulable::NoFit {
                    nodes: self.nodes.len(),
                    prefilter: None,
                    reasons,
                });
            }
            // kube-scheduler does not score a single candidate either.
            [only] => *only,
            _ => scores::best(self, &cycle, &feasible),
        };
        Ok(self.nodes[best].view.name.clone())
    }

    /// Records `pod` as bound to `node`, so later decisions from this snapshot count it.
    /// A node the snapshot does not have is ignored (the pod is not counted anywhere).
    pub fn assume(&mut self, pod: &impl AsJson, node: &str) {
        let Some(&i) = self.index.get(node) else {
            return;
        };
        // Lossy: a bound pod occupies its node whatever its requests say.
        let Ok(view) = PodView::parse(pod.json(), Strictness::Lossy) else {
            return;
        };
        let info = &mut self.nodes[i];
        let r = &mut info.requested;
        r.milli_cpu = r.milli_cpu.saturating_add(view.requests.milli_cpu);
        r.memory = r.memory.saturating_add(view.requests.memory);
        r.ephemeral = r.ephemeral.saturating_add(view.requests.ephemeral);
        r.pods += 1;
        info.nonzero.0 = info.nonzero.0.saturating_add(view.nonzero.0);
        info.nonzero.1 = info.nonzero.1.saturating_add(view.nonzero.1);
        info.ports.extend(view.ports.iter().cloned());
        if let Some(owner) = &view.owner {
            *info.owners.entry(owner.clone()).or_default() += 1;
        }
        let memo = self.memo.get_mut().unwrap_or_else(|e| e.into_inner());
        for m in memo.iter_mut() {
            if m.namespaces.contains(&view.namespace) && m.selector.matches(&view.labels) {
                m.counts[i] += 1;
            }
        }
        if !view.anti_affinity.is_empty() {
            self.anti.push(ExistingAnti {
                node: i,
                terms: view.anti_affinity,
            });
        }
        info.members.push(Member {
            namespace: view.namespace,
            labels: view.labels,
        });
    }

    /// The domains of topology key `key`.
    fn topology(&self, key: &str) -> Arc<Topology> {
        let mut cache = self.topologies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.get(key) {
            return t.clone();
        }
        let t = if key == NODE_DOMAIN {
            Arc::new(Topology {
                of_node: (0..self.nodes.len() as u32).map(Some).collect(),
                domains: self.nodes.len(),
            })
        } else {
            let mut ids: HashMap<&str, u32> = HashMap::new();
            let of_node = self
                .nodes
                .iter()
                .map(|n| {
                    let value = n.view.labels.get(key)?;
                    let next = ids.len() as u32;
                    Some(*ids.entry(value.as_str()).or_insert(next))
                })
                .collect();
            Arc::new(Topology {
                of_node,
                domains: ids.len(),
            })
        };
        if cache.len() >= MEMO_CAPACITY {
            cache.clear();
        }
        cache.insert(key.to_string(), t.clone());
        t
    }

    /// How many pods on each node match `selector` in `namespaces`; made once per
    /// distinct pair and kept current by `assume`.
    fn counts(&self, namespaces: &Namespaces, selector: &LabelSelector) -> Vec<u32> {
        // A poisoned lock only means a panic elsewhere mid-read; the counts stay exact.
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = memo
            .iter()
            .find(|m| m.namespaces == *namespaces && m.selector == *selector)
        {
            return m.counts.clone();
        }
        let counts: Vec<u32> = self
            .nodes
            .iter()
            .map(|n| {
                n.members
                    .iter()
                    .filter(|p| namespaces.contains(&p.namespace) && selector.matches(&p.labels))
                    .count() as u32
            })
            .collect();
        if memo.len() >= MEMO_CAPACITY {
            // The oldest goes; a selector still in use is simply counted again.
            memo.remove(0);
        }
        memo.push(Memo {
            namespaces: namespaces.clone(),
            selector: selector.clone(),
            counts: counts.clone(),
        });
        counts
    }
}

// === impl Unschedulable ===

impl Unschedulable {
    /// kube-scheduler's text, as the PodScheduled condition and the FailedScheduling event
    /// carry it.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// `0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient memory.`:
/// one "count reason" per reason, sorted as strings (so "10 x" sorts before "2 y", as in
/// kube-scheduler's `sort.Strings`).
fn fit_message(nodes: usize, prefilter: Option<&str>, reasons: &BTreeMap<Reason, usize>) -> String {
    let mut text = format!("0/{nodes} nodes are available:");
    if let Some(pre) = prefilter {
        text.push_str(&format!(" {pre}."));
        return text;
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if !parts.is_empty() {
        text.push_str(&format!(" {}.", parts.join(", ")));
    }
    text
}

// === impl Reason ===

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotNamed => f.write_str("node(s) didn't satisfy plugin(s) [NodeAffinity]"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::Ports => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Reason::SpreadMissingLabel => f.write_str(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ),
            Reason::Spread => f.write_str("node(s) didn't match pod topology spread constraints"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Reason::Affinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::AntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::VolumeNodeAffinity => f.write_str("node(s) had volume node affinity conflict"),
            Reason::NoVolumeToBind => {
                f.write_str("node(s) didn't find available persistent volumes to bind")
            }
        }
    }
}

fn is_terminal<J: Json>(pod: &J) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}
