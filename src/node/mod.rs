//! The kubelet side of keelson, shared by servers' own nodes and agents: what a node must run
//! and what it reports about it.
//!
//! So far only the reporting half exists: [`pods`] tracks the pods the server assigns to this
//! node and writes their status; [`hollow`] is a simulated runtime for `keelson loadgen`. The
//! real runtime (images, runc) is a later step and plugs in as another
//! [`pods::PodRuntime`]. Its container-configuration half exists: [`env`] resolves a
//! container's environment, [`volumes`] materialises a pod's volumes, [`sandbox`] holds a
//! pod's shared namespaces and `/etc` files, and [`bundle`] writes the OCI spec runc runs.
//! They are synchronous and touch the filesystem and the kernel briefly (mounts, a short-lived
//! thread for namespaces): call them from `spawn_blocking`, not on an async worker.

pub mod hollow;
pub mod pods;
pub mod status;

// The container-configuration half of the runc runtime: called by the pod runtime, which is
// written beside these modules (issue 13); until it lands nothing in the binary calls them.
#[allow(dead_code)]
pub mod bundle;
#[allow(dead_code)]
pub mod env;
#[allow(dead_code)]
pub mod sandbox;
#[allow(dead_code)]
pub mod volumes;
