//! The kubelet side of keelson, shared by servers' own nodes and agents: what a node must run
//! and what it reports about it.
//!
//! So far only the reporting half exists: [`pods`] tracks the pods the server assigns to this
//! node and writes their status; [`hollow`] is a simulated runtime for `keelson loadgen`. The
//! real runtime (images, runc) is a later step and plugs in as another
//! [`pods::PodRuntime`].
pub mod hollow;
pub mod hook;
pub mod logs;
pub mod monitor;
pub mod pods;
pub mod runc;
pub mod status;
