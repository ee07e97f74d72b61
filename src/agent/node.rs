//! Node identity as the user configures it: name, labels and taints, parsed from flags (their
//! grammar is in [`crate::api::labels`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::api::labels::Taint;

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Applied when the node object is first created (like kubelet's `--register-with-taints`).
    pub taints: Vec<Taint>,
    pub ips: Vec<IpAddr>,
    /// What is set aside from pods (`--kube-reserved`, `--system-reserved`, `--eviction-hard`).
    pub reservations: crate::node::resources::Reservations,
    /// The data dir, whose filesystem is the node's ephemeral storage (kubelet's nodefs).
    pub data_dir: std::path::PathBuf,
    /// `--default-local-storage-path`: where local-path volumes live (default
    /// `<data-dir>/storage`); reported on the Node object for the provisioner.
    pub local_storage: std::path::PathBuf,
    /// `--eviction-pressure-transition-period`.
    pub pressure_transition: std::time::Duration,
}
