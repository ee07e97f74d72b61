//! The VolumeBinding filter's inputs: what a pod's PersistentVolumeClaims allow, read from the
//! claims, volumes and classes before a decision (kube-scheduler's VolumeBinding PreFilter).
//!
//! A claim bound to a volume pins the pod to the nodes the volume's `nodeAffinity` admits
//! ("node(s) had volume node affinity conflict" elsewhere). A claim not bound yet whose class
//! binds `WaitForFirstConsumer` lets the pod go to any node that can provision it (for the
//! built-in local-path provisioner: a node that offers local storage); the scheduler then
//! names the chosen node on the claim (`volume.kubernetes.io/selected-node`) and the binder
//! provisions there. Any other unbound claim keeps the pod waiting with Kubernetes' message.
//!
//! Invariant: nothing here writes; a pod whose claims cannot be read is refused before any
//! node is looked at (a PreFilter refusal), with the claim named.

use crate::runtime::frozen::Json;

use super::view::{NodeSelectorTerm, node_selector_terms};

pub use crate::api::storage::{LOCAL_PATH_PROVISIONER, LOCAL_STORAGE_ANNOTATION, SELECTED_NODE};

/// What a pod's claims ask of its node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeNeeds {
    /// One entry per bound claim whose volume has node affinity: the node must match one
    /// term of every entry.
    pub affinity: Vec<Vec<NodeSelectorTerm>>,
    /// Some claim waits for its first consumer and is provisioned by local-path: the node
    /// must offer local storage.
    pub local_storage: bool,
    /// Claims (names, in the pod's namespace) that wait for a node: the scheduler annotates
    /// them with the node it picks.
    pub delayed: Vec<String>,
}

/// Reads what the pod's claims ask for. `claim`, `volume` and `class` look objects up by
/// name (claims in the pod's namespace). `Err` is the PreFilter refusal's text.
pub fn needs<J, C, V, S>(pod: &J, claim: C, volume: V, class: S) -> Result<VolumeNeeds, String>
where
    J: Json,
    C: Fn(&str) -> Option<std::sync::Arc<crate::runtime::frozen::Frozen>>,
    V: Fn(&str) -> Option<std::sync::Arc<crate::runtime::frozen::Frozen>>,
    S: Fn(&str) -> Option<std::sync::Arc<crate::runtime::frozen::Frozen>>,
{
    let mut out = VolumeNeeds::default();
    let mut unbound_immediate = false;
    let mut missing_volume = false;
    let volumes = pod["spec"]["volumes"].as_array().unwrap_or(&[]);
    for v in volumes {
        let Some(name) = v["persistentVolumeClaim"]["claimName"].as_str() else {
            continue;
        };
        let Some(c) = claim(name) else {
            return Err(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        if !c["metadata"]["deletionTimestamp"].is_null() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        match c["spec"]["volumeName"].as_str().filter(|n| !n.is_empty()) {
            Some(pv) => match volume(pv) {
                Some(pv) => {
                    let required = &pv["spec"]["nodeAffinity"]["required"];
                    if required.is_object() {
                        out.affinity.push(node_selector_terms(required));
                    }
                }
                None => missing_volume = true,
            },
            None => {
                let class_name = c["spec"]["storageClassName"].as_str().unwrap_or_default();
                let sc = (!class_name.is_empty())
                    .then(|| class(class_name))
                    .flatten();
                match sc {
                    Some(sc) if sc["volumeBindingMode"] == "WaitForFirstConsumer" => {
                        if sc["provisioner"] == LOCAL_PATH_PROVISIONER {
                            out.local_storage = true;
                        }
                        out.delayed.push(name.to_string());
                    }
                    _ => unbound_immediate = true,
                }
            }
        }
    }
    if missing_volume {
        return Err(
            "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)".into(),
        );
    }
    if unbound_immediate {
        return Err("pod has unbound immediate PersistentVolumeClaims".into());
    }
    Ok(out)
}

/// Whether `node` is one the volume `pv`'s node affinity admits (a volume without one is
/// reachable from every node).
pub fn volume_fits_node<J: Json, N: Json>(pv: &J, node: &N) -> bool {
    let required = &pv["spec"]["nodeAffinity"]["required"];
    if !required.is_object() {
        return true;
    }
    let Some(node) = super::view::NodeView::parse(node) else {
        return false;
    };
    node_selector_terms(required)
        .iter()
        .any(|t| t.matches(&node))
}
