//! Typed views of the parts of Pods and Nodes the scheduler reads, parsed once per object.
//!
//! Everything here is read from Kubernetes JSON (`serde_json::Value`) and never fails on a
//! missing or odd field that Kubernetes itself would ignore: absent lists are empty, an
//! unknown operator matches nothing. The one thing that can fail is a resource quantity of
//! the pod being scheduled ([`Strictness::Strict`]): it makes that pod unschedulable with the
//! field named. Pods already bound are read [`Strictness::Lossy`]: a bad request counts as
//! zero, as the pod still occupies its slot.

use std::collections::BTreeMap;

use crate::api::quantity;
use crate::runtime::frozen::Json;

pub type Labels = BTreeMap<String, String>;

/// Default requests the scoring (not the fit check) assumes for a container that asks for
/// nothing, as kube-scheduler's `DefaultMilliCPURequest` / `DefaultMemoryRequest` do, so a
/// node full of request-less pods does not look empty.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// What a bad quantity in a pod does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// The pod is being scheduled: a bad request refuses it.
    Strict,
    /// The pod is already bound: a bad request counts as zero.
    Lossy,
}

/// cpu (millicores), memory and ephemeral storage (bytes), and a pod count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral: i64,
    pub pods: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    /// Empty: every key.
    pub key: String,
    pub op: TolerationOp,
    /// `None`: every effect.
    pub effect: Option<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TolerationOp {
    Exists,
    Equal(String),
}

/// A host port a container binds: conflicts are per protocol and port, on the same address
/// or when either side binds every address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i64,
}

/// A label selector (`matchLabels` and `matchExpressions`, ANDed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    labels: Vec<(String, String)>,
    exprs: Vec<(String, SetOp)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SetOp {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    /// An operator the selector grammar does not know: matches nothing.
    Unknown,
}

/// One `nodeSelectorTerms` entry: its expressions and fields are ANDed; a term with neither
/// matches no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSelectorTerm {
    exprs: Vec<(String, NodeOp)>,
    fields: Vec<(String, NodeOp)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeOp {
    Set(SetOp),
    Gt(Option<i64>),
    Lt(Option<i64>),
}

/// Which namespaces a pod affinity term looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespaces {
    All,
    Listed(Vec<String>),
}

/// A required pod (anti-)affinity term. `selector: None` (no `labelSelector`) matches no pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTerm {
    pub namespaces: Namespaces,
    pub selector: Option<LabelSelector>,
    pub topology_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadConstraint {
    pub max_skew: i64,
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
    pub selector: Option<LabelSelector>,
    pub min_domains: i64,
}

/// The scheduler's view of a pod.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub uid: String,
    pub namespace: String,
    pub labels: Labels,
    /// The uid of the controller that owns it (the `controller: true` ownerReference, else
    /// the first one): its siblings are spread apart.
    pub owner: Option<String>,
    /// What the fit check counts (`pods` is always 1).
    pub requests: Resources,
    /// cpu and memory with [`DEFAULT_MILLI_CPU`] / [`DEFAULT_MEMORY`] for containers that
    /// ask for none: what scoring counts.
    pub nonzero: (i64, i64),
    pub ports: Vec<HostPort>,
    pub tolerations: Vec<Toleration>,
    pub node_selector: Vec<(String, String)>,
    /// `None`: no required node affinity.
    pub required_terms: Option<Vec<NodeSelectorTerm>>,
    pub preferred_terms: Vec<(i64, NodeSelectorTerm)>,
    pub affinity: Vec<PodTerm>,
    pub anti_affinity: Vec<PodTerm>,
    pub spread: Vec<SpreadConstraint>,
    /// What the pod's PersistentVolumeClaims ask of the node (filled from the claims by the
    /// scheduling loop, not from the pod).
    pub volumes: super::volumes::VolumeNeeds,
}

/// The scheduler's view of a node, without what is bound to it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub labels: Labels,
    /// `spec.taints`, plus the taints Kubernetes' node lifecycle controller would add for
    /// the node's conditions (see [`condition_taints`]).
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    /// The node provisions local-path volumes (it reports its storage path).
    pub local_storage: bool,
}

// === impl PodView ===

impl PodView {
    /// Reads `pod`; with [`Strictness::Strict`] a bad quantity is an error naming its field.
    pub fn parse<J: Json>(pod: &J, strictness: Strictness) -> Result<PodView, String> {
        let meta = &pod["metadata"];
        let spec = &pod["spec"];
        let namespace = str_at(meta, "namespace").unwrap_or("default").to_string();
        let owners = meta["ownerReferences"].as_array();
        let owner = owners.and_then(|refs| {
            refs.iter()
                .find(|r| r["controller"] == true)
                .or_else(|| refs.first())
                .and_then(|r| str_at(r, "uid"))
                .map(str::to_string)
        });
        let (requests, nonzero) = pod_requests(spec, strictness)?;
        let affinity = &spec["affinity"];
        let node_affinity = &affinity["nodeAffinity"];
        let required_terms = node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_object()
            .then(|| {
                array(&node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"])
                    .iter()
                    .map(NodeSelectorTerm::parse)
                    .collect()
            });
        let preferred_terms =
            array(&node_affinity["preferredDuringSchedulingIgnoredDuringExecution"])
                .iter()
                .filter_map(|p| {
                    let weight = p["weight"].as_i64()?;
                    Some((weight, NodeSelectorTerm::parse(&p["preference"])))
                })
                .collect();
        let pod_terms = |kind: &str| -> Vec<PodTerm> {
            array(&affinity[kind]["requiredDuringSchedulingIgnoredDuringExecution"])
                .iter()
                .map(|t| PodTerm::parse(t, &namespace))
                .collect()
        };
        Ok(PodView {
            uid: str_at(meta, "uid").unwrap_or_default().to_string(),
            labels: string_map(&meta["labels"]),
            owner,
            requests,
            nonzero,
            ports: host_ports(spec),
            tolerations: array(&spec["tolerations"])
                .iter()
                .filter_map(Toleration::parse)
                .collect(),
            node_selector: string_map(&spec["nodeSelector"]).into_iter().collect(),
            required_terms,
            preferred_terms,
            affinity: pod_terms("podAffinity"),
            anti_affinity: pod_terms("podAntiAffinity"),
            spread: array(&spec["topologySpreadConstraints"])
                .iter()
                .filter_map(SpreadConstraint::parse)
                .collect(),
            namespace,
            volumes: Default::default(),
        })
    }

    /// Whether the pod's nodeSelector and required node affinity accept `node`.
    pub fn node_affinity_matches(&self, node: &NodeView) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
            && self
                .required_terms
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(node)))
    }

    /// The node names a required node affinity of only `metadata.name In` fields narrows
    /// the pod to, as kube-scheduler's NodeAffinity PreFilter computes them: `None` when
    /// some term does not name nodes (every node is a candidate).
    pub fn named_nodes(&self) -> Option<Vec<&str>> {
        // No terms at all narrows nothing (and then matches no node in the filter).
        let terms = self.required_terms.as_ref().filter(|t| !t.is_empty())?;
        let mut names: Vec<&str> = Vec::new();
        for term in terms {
            let mut term_names: Option<Vec<&str>> = None;
            for (key, op) in &term.fields {
                if let (FIELD_NAME, NodeOp::Set(SetOp::In(values))) = (key.as_str(), op) {
                    let these: Vec<&str> = values.iter().map(String::as_str).collect();
                    term_names = Some(match term_names {
                        None => these,
                        Some(before) => before.into_iter().filter(|n| these.contains(n)).collect(),
                    });
                }
            }
            names.extend(term_names?);
        }
        names.sort_unstable();
        names.dedup();
        Some(names)
    }

    pub fn tolerates(&self, taint: &Taint) -> bool {
        self.tolerations.iter().any(|t| t.tolerates(taint))
    }
}

const FIELD_NAME: &str = "metadata.name";

/// The pod's requests: the larger of the containers' sum (with sidecars) and any one init
/// container's (with the sidecars started before it), plus `spec.overhead`; as the
/// scheduler's `computePodResourceRequest`.
fn pod_requests<J: Json>(
    spec: &J,
    strictness: Strictness,
) -> Result<(Resources, (i64, i64)), String> {
    let mut sum = Requests::default();
    for (i, c) in array(&spec["containers"]).iter().enumerate() {
        sum.add(&container_requests(
            c,
            &format!("spec.containers[{i}]"),
            strictness,
        )?);
    }
    let mut sidecars = Requests::default();
    let mut init_max = Requests::default();
    for (i, c) in array(&spec["initContainers"]).iter().enumerate() {
        let r = container_requests(c, &format!("spec.initContainers[{i}]"), strictness)?;
        if c["restartPolicy"] == "Always" {
            sidecars.add(&r);
            sum.add(&r);
            // A sidecar starts and keeps running: later init containers run beside it.
            init_max.max(&sidecars);
        } else {
            let mut with_sidecars = sidecars;
            with_sidecars.add(&r);
            init_max.max(&with_sidecars);
        }
    }
    sum.max(&init_max);
    let overhead = resource_list(&spec["overhead"], "spec.overhead", strictness)?;
    let total = Resources {
        milli_cpu: sum.actual.milli_cpu.saturating_add(overhead.milli_cpu),
        memory: sum.actual.memory.saturating_add(overhead.memory),
        ephemeral: sum.actual.ephemeral.saturating_add(overhead.ephemeral),
        pods: 1,
    };
    Ok((
        total,
        (
            sum.nonzero.0.saturating_add(overhead.milli_cpu),
            sum.nonzero.1.saturating_add(overhead.memory),
        ),
    ))
}

/// A container's (or sum of containers') requests, actual and with scoring defaults.
#[derive(Debug, Clone, Copy, Default)]
struct Requests {
    actual: Resources,
    nonzero: (i64, i64),
}

impl Requests {
    fn add(&mut self, o: &Requests) {
        self.actual.milli_cpu = self.actual.milli_cpu.saturating_add(o.actual.milli_cpu);
        self.actual.memory = self.actual.memory.saturating_add(o.actual.memory);
        self.actual.ephemeral = self.actual.ephemeral.saturating_add(o.actual.ephemeral);
        self.nonzero.0 = self.nonzero.0.saturating_add(o.nonzero.0);
        self.nonzero.1 = self.nonzero.1.saturating_add(o.nonzero.1);
    }

    fn max(&mut self, o: &Requests) {
        self.actual.milli_cpu = self.actual.milli_cpu.max(o.actual.milli_cpu);
        self.actual.memory = self.actual.memory.max(o.actual.memory);
        self.actual.ephemeral = self.actual.ephemeral.max(o.actual.ephemeral);
        self.nonzero.0 = self.nonzero.0.max(o.nonzero.0);
        self.nonzero.1 = self.nonzero.1.max(o.nonzero.1);
    }
}

fn container_requests<J: Json>(
    c: &J,
    at: &str,
    strictness: Strictness,
) -> Result<Requests, String> {
    let list = &c["resources"]["requests"];
    let actual = resource_list(list, &format!("{at}.resources.requests"), strictness)?;
    let has = |name: &str| !list[name].is_null();
    Ok(Requests {
        actual,
        nonzero: (
            if has("cpu") {
                actual.milli_cpu
            } else {
                DEFAULT_MILLI_CPU
            },
            if has("memory") {
                actual.memory
            } else {
                DEFAULT_MEMORY
            },
        ),
    })
}

/// cpu, memory, ephemeral-storage and pods of a ResourceList (other names are ignored).
fn resource_list<J: Json>(list: &J, at: &str, strictness: Strictness) -> Result<Resources, String> {
    let read = |name: &str, milli: bool| -> Result<i64, String> {
        let v = &list[name];
        if v.is_null() {
            return Ok(0);
        }
        let parsed = parse_quantity(v)
            .map_err(|e| e.to_string())
            .map(|q| if milli { q.milli() } else { q.value() })
            .and_then(|n| {
                // The API refuses negative requests; one here must not free up a node.
                if n < 0 {
                    Err(format!("quantity {} must not be negative", v.thaw()))
                } else {
                    Ok(n)
                }
            });
        match parsed {
            Ok(n) => Ok(n),
            Err(e) if strictness == Strictness::Strict => Err(format!("{at}.{name}: {e}")),
            Err(_) => Ok(0),
        }
    };
    Ok(Resources {
        milli_cpu: read("cpu", true)?,
        memory: read("memory", false)?,
        ephemeral: read("ephemeral-storage", false)?,
        pods: read("pods", false)?,
    })
}

/// A quantity as the API serves it (a string), or as a client may have written it (a bare
/// JSON number).
fn parse_quantity<J: Json>(v: &J) -> quantity::Result<quantity::Quantity> {
    match (v.as_str(), v.as_number()) {
        (Some(s), _) => quantity::parse(s),
        (_, Some(n)) => quantity::parse(&n.to_string()),
        _ => quantity::parse(&v.thaw().to_string()),
    }
}

fn host_ports<J: Json>(spec: &J) -> Vec<HostPort> {
    array(&spec["containers"])
        .iter()
        .flat_map(|c| array(&c["ports"]))
        .filter_map(|p| {
            let port = p["hostPort"].as_i64().filter(|&p| p > 0)?;
            Some(HostPort {
                ip: str_at(p, "hostIP")
                    .filter(|s| !s.is_empty())
                    .unwrap_or("0.0.0.0")
                    .to_string(),
                protocol: str_at(p, "protocol")
                    .filter(|s| !s.is_empty())
                    .unwrap_or("TCP")
                    .to_string(),
                port,
            })
        })
        .collect()
}

// === impl HostPort ===

impl HostPort {
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

// === impl Toleration ===

impl Toleration {
    pub fn parse<J: Json>(t: &J) -> Option<Toleration> {
        let key = str_at(t, "key").unwrap_or_default().to_string();
        let op = match str_at(t, "operator").unwrap_or("Equal") {
            "Exists" => TolerationOp::Exists,
            "Equal" | "" => TolerationOp::Equal(str_at(t, "value").unwrap_or_default().into()),
            // An operator the API would have refused tolerates nothing.
            _ => return None,
        };
        let effect = match str_at(t, "effect").unwrap_or_default() {
            "" => None,
            e => Some(parse_effect(e)?),
        };
        Some(Toleration { key, op, effect })
    }

    /// kube's `ToleratesTaint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        // An empty key matches every key (the API allows it only with Exists).
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match &self.op {
            TolerationOp::Exists => true,
            TolerationOp::Equal(v) => *v == taint.value,
        }
    }
}

impl Taint {
    pub fn parse<J: Json>(t: &J) -> Option<Taint> {
        Some(Taint {
            key: str_at(t, "key")?.to_string(),
            value: str_at(t, "value").unwrap_or_default().to_string(),
            effect: parse_effect(str_at(t, "effect")?)?,
        })
    }
}

fn parse_effect(e: &str) -> Option<Effect> {
    match e {
        "NoSchedule" => Some(Effect::NoSchedule),
        "PreferNoSchedule" => Some(Effect::PreferNoSchedule),
        "NoExecute" => Some(Effect::NoExecute),
        _ => None,
    }
}

// === impl LabelSelector ===

impl LabelSelector {
    /// `None` for a missing or null selector, which matches nothing.
    pub fn parse<J: Json>(v: &J) -> Option<LabelSelector> {
        if !v.is_object() {
            return None;
        }
        let exprs = array(&v["matchExpressions"])
            .iter()
            .map(|e| {
                let key = str_at(e, "key").unwrap_or_default().to_string();
                let values = strings(&e["values"]);
                let op = match str_at(e, "operator").unwrap_or_default() {
                    "In" => SetOp::In(values),
                    "NotIn" => SetOp::NotIn(values),
                    "Exists" => SetOp::Exists,
                    "DoesNotExist" => SetOp::DoesNotExist,
                    _ => SetOp::Unknown,
                };
                (key, op)
            })
            .collect();
        Some(LabelSelector {
            labels: string_map(&v["matchLabels"]).into_iter().collect(),
            exprs,
        })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self
                .exprs
                .iter()
                .all(|(k, op)| op.matches(labels.get(k).map(String::as_str)))
    }
}

impl SetOp {
    fn matches(&self, value: Option<&str>) -> bool {
        match self {
            SetOp::In(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            SetOp::NotIn(values) => value.is_none_or(|v| !values.iter().any(|x| x == v)),
            SetOp::Exists => value.is_some(),
            SetOp::DoesNotExist => value.is_none(),
            SetOp::Unknown => false,
        }
    }
}

/// The terms of a `NodeSelector` (`{nodeSelectorTerms: [...]}`): a node matches when it
/// matches any one of them.
pub fn node_selector_terms<J: Json>(selector: &J) -> Vec<NodeSelectorTerm> {
    array(&selector["nodeSelectorTerms"])
        .iter()
        .map(NodeSelectorTerm::parse)
        .collect()
}

// === impl NodeSelectorTerm ===

impl NodeSelectorTerm {
    fn parse<J: Json>(v: &J) -> NodeSelectorTerm {
        let reqs = |list: &J| -> Vec<(String, NodeOp)> {
            array(list)
                .iter()
                .map(|e| {
                    let key = str_at(e, "key").unwrap_or_default().to_string();
                    let values = strings(&e["values"]);
                    // Gt and Lt take exactly one integer; anything else matches nothing.
                    let int = || match values.as_slice() {
                        [one] => one.parse::<i64>().ok(),
                        _ => None,
                    };
                    let op = match str_at(e, "operator").unwrap_or_default() {
                        "In" => NodeOp::Set(SetOp::In(values.clone())),
                        "NotIn" => NodeOp::Set(SetOp::NotIn(values.clone())),
                        "Exists" => NodeOp::Set(SetOp::Exists),
                        "DoesNotExist" => NodeOp::Set(SetOp::DoesNotExist),
                        "Gt" => NodeOp::Gt(int()),
                        "Lt" => NodeOp::Lt(int()),
                        _ => NodeOp::Set(SetOp::Unknown),
                    };
                    (key, op)
                })
                .collect()
        };
        NodeSelectorTerm {
            exprs: reqs(&v["matchExpressions"]),
            fields: reqs(&v["matchFields"]),
        }
    }

    pub fn matches(&self, node: &NodeView) -> bool {
        if self.exprs.is_empty() && self.fields.is_empty() {
            return false;
        }
        self.exprs
            .iter()
            .all(|(k, op)| op.matches(node.labels.get(k).map(String::as_str)))
            && self.fields.iter().all(|(k, op)| {
                // metadata.name is the only field a node selector may name, with In/NotIn.
                k == FIELD_NAME
                    && matches!(op, NodeOp::Set(SetOp::In(_) | SetOp::NotIn(_)))
                    && op.matches(Some(&node.name))
            })
    }
}

impl NodeOp {
    fn matches(&self, value: Option<&str>) -> bool {
        let int = || value.and_then(|v| v.parse::<i64>().ok());
        match self {
            NodeOp::Set(op) => op.matches(value),
            NodeOp::Gt(bound) => matches!((int(), bound), (Some(v), Some(b)) if v > *b),
            NodeOp::Lt(bound) => matches!((int(), bound), (Some(v), Some(b)) if v < *b),
        }
    }
}

// === impl PodTerm ===

impl PodTerm {
    fn parse<J: Json>(t: &J, own_namespace: &str) -> PodTerm {
        let listed = strings(&t["namespaces"]);
        let ns_selector = &t["namespaceSelector"];
        let namespaces = if ns_selector
            .entries()
            .is_some_and(|mut m| m.next().is_none())
        {
            // An empty namespaceSelector selects every namespace.
            Namespaces::All
        } else if listed.is_empty() {
            // Without namespace objects a non-empty namespaceSelector cannot be evaluated
            // here; it then adds no namespace, and the pod's own is the default.
            Namespaces::Listed(vec![own_namespace.to_string()])
        } else {
            Namespaces::Listed(listed)
        };
        PodTerm {
            namespaces,
            selector: LabelSelector::parse(&t["labelSelector"]),
            topology_key: str_at(t, "topologyKey").unwrap_or_default().to_string(),
        }
    }

    pub fn matches(&self, namespace: &str, labels: &Labels) -> bool {
        self.namespaces.contains(namespace)
            && self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

impl Namespaces {
    pub fn contains(&self, ns: &str) -> bool {
        match self {
            Namespaces::All => true,
            Namespaces::Listed(list) => list.iter().any(|n| n == ns),
        }
    }
}

// === impl SpreadConstraint ===

impl SpreadConstraint {
    fn parse<J: Json>(c: &J) -> Option<SpreadConstraint> {
        Some(SpreadConstraint {
            // The API requires maxSkew ≥ 1; a constraint without it is ignored.
            max_skew: c["maxSkew"].as_i64().filter(|&s| s >= 1)?,
            topology_key: str_at(c, "topologyKey")?.to_string(),
            hard: str_at(c, "whenUnsatisfiable") != Some("ScheduleAnyway"),
            selector: LabelSelector::parse(&c["labelSelector"]),
            min_domains: c["minDomains"].as_i64().unwrap_or(1),
        })
    }
}

// === impl NodeView ===

impl NodeView {
    pub fn parse<J: Json>(node: &J) -> Option<NodeView> {
        let name = str_at(&node["metadata"], "name")?.to_string();
        let labels = string_map(&node["metadata"]["labels"]);
        let mut taints: Vec<Taint> = array(&node["spec"]["taints"])
            .iter()
            .filter_map(Taint::parse)
            .collect();
        let conditions = array(&node["status"]["conditions"]);
        for implied in condition_taints(conditions) {
            if !taints
                .iter()
                .any(|t| t.key == implied.key && t.effect == implied.effect)
            {
                taints.push(implied);
            }
        }
        let status = &node["status"];
        let capacity =
            resource_list(&status["capacity"], "", Strictness::Lossy).unwrap_or_default();
        let given =
            resource_list(&status["allocatable"], "", Strictness::Lossy).unwrap_or_default();
        let has = |name: &str| !status["allocatable"][name].is_null();
        // Allocatable, resource by resource, else capacity.
        let allocatable = Resources {
            milli_cpu: if has("cpu") {
                given.milli_cpu
            } else {
                capacity.milli_cpu
            },
            memory: if has("memory") {
                given.memory
            } else {
                capacity.memory
            },
            ephemeral: if has("ephemeral-storage") {
                given.ephemeral
            } else {
                capacity.ephemeral
            },
            pods: if has("pods") {
                given.pods
            } else {
                capacity.pods
            },
        };
        Some(NodeView {
            name,
            labels,
            taints,
            unschedulable: node["spec"]["unschedulable"] == true,
            allocatable,
            local_storage: node["metadata"]["annotations"]
                [super::volumes::LOCAL_STORAGE_ANNOTATION]
                .as_str()
                .is_some_and(|p| !p.is_empty()),
        })
    }
}

/// The NoSchedule taints Kubernetes' node lifecycle controller puts on a node for its
/// conditions (TaintNodesByCondition): kube-scheduler has no "node not ready" filter, it
/// sees these taints, so a not-ready node is refused with
/// `node(s) had untolerated taint {node.kubernetes.io/not-ready: }` and a pod that
/// tolerates the taint may still go there. keelson's lifecycle controller sets only the
/// unreachable taints, so the scheduler reads the rest off the conditions itself. A node
/// that has not reported Ready yet counts as not ready, as the kubelet registers nodes
/// with the not-ready taint.
fn condition_taints<J: Json>(conditions: &[J]) -> Vec<Taint> {
    let status = |kind: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == kind)
            .and_then(|c| c["status"].as_str())
    };
    let taint = |key: &str| Taint {
        key: key.to_string(),
        value: String::new(),
        effect: Effect::NoSchedule,
    };
    let mut out = Vec::new();
    match status("Ready") {
        Some("True") => {}
        Some("Unknown") => out.push(taint("node.kubernetes.io/unreachable")),
        _ => out.push(taint("node.kubernetes.io/not-ready")),
    }
    for (kind, key) in [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
        (
            "NetworkUnavailable",
            "node.kubernetes.io/network-unavailable",
        ),
    ] {
        if status(kind) == Some("True") {
            out.push(taint(key));
        }
    }
    out
}

fn array<J: Json>(v: &J) -> &[J] {
    v.as_array().unwrap_or(&[])
}

fn str_at<'a, J: Json>(v: &'a J, key: &str) -> Option<&'a str> {
    v.get(key).and_then(J::as_str)
}

fn strings<J: Json>(v: &J) -> Vec<String> {
    array(v)
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn string_map<J: Json>(v: &J) -> Labels {
    v.entries()
        .map(|m| {
            m.filter_map(|(k, v)| Some((k.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}
