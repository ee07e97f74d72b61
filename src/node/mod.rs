//! The kubelet side of keelson, shared by servers' own nodes and agents: what a node must run
//! and what it reports about it.
//!
//! [`pods`] tracks the pods the server assigns to this node and reports their status through
//! a [`pods::PodRuntime`]; [`streams`] serves `kubectl logs`/`exec` from the runtime;
//! [`objects`] reads the ConfigMaps and Secrets pods use. [`hollow`] is a simulated runtime
//! for `keelson loadgen`.

pub mod hollow;
pub mod objects;
pub mod pods;
pub mod status;
pub mod streams;

use std::sync::Arc;

use tokio::sync::mpsc;

/// What runs a node's pods, and what it needs from the cluster.
pub struct Runtime {
    pub pods: Box<dyn pods::PodRuntime>,
    pub streams: Arc<dyn streams::StreamServer>,
    /// The runtime's reads of ConfigMaps and Secrets, for the transport to answer.
    pub objects: mpsc::Receiver<objects::ObjectRequest>,
}

impl Runtime {
    /// A runtime that runs no containers and reads no objects (simulated or absent).
    pub fn without_containers(pods: Box<dyn pods::PodRuntime>) -> Runtime {
        let (_, objects) = objects::channel();
        Runtime {
            pods,
            streams: Arc::new(streams::NoContainers),
            objects,
        }
    }
}
