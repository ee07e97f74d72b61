//! What travels between server and node about pods (the tunnel's frames carry these): data
//! only, so the fuzz build (`fuzz/`) decodes frames without the node's pod worker. What a
//! node does with them stays in [`super`].

use serde::{Deserialize, Serialize};

/// A pod, by namespace and name. A pod made again under the same name is told apart by its
/// uid, which travels beside the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
}

/// What a node is told about a pod bound to it: enough to run and report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAssignment {
    pub key: PodKey,
    pub uid: String,
    pub restart_policy: RestartPolicy,
    pub containers: Vec<ContainerSpec>,
    /// The pod's `keelson.io/*` annotations.
    pub annotations: Vec<(String, String)>,
    /// The pod reached Succeeded or Failed: it must not run again.
    pub finished: bool,
    /// The pod as the runtime needs it, as JSON: `spec` and the metadata a container may see
    /// (name, namespace, uid, labels, annotations, deletion time), never its status nor
    /// bookkeeping fields, so a status report coming back changes no assignment.
    pub pod: String,
}

/// A pod's status as the node reports it: the JSON of `status`, as a kubelet would patch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReport {
    pub key: PodKey,
    /// The pod the status is for; the server drops a report for an earlier pod of the name.
    pub uid: String,
    pub status: String,
}

/// Something that happened to a pod on the node, for an Event (`kubectl describe pod`): an
/// image pulled, a container started, killed or backing off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNote {
    pub key: PodKey,
    pub uid: String,
    pub warning: bool,
    pub reason: String,
    pub message: String,
}
