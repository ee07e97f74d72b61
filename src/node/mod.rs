//! The kubelet side of keelson, shared by servers' own nodes and agents: what a node must run
//! and what it reports about it.
//!
//! [`pods`] tracks the pods the server assigns to this node and reports their status through
//! a [`pods::PodRuntime`]; [`streams`] serves `kubectl logs`/`exec` from the runtime;
//! [`objects`] reads the ConfigMaps, Secrets and claims pods use; [`storage`] removes the
//! directories of released local volumes. [`hollow`] is a simulated runtime
//! for `keelson loadgen`.
//! The runc runtime ([`containers`]) is built from [`images`] (the image store), [`env`],
//! [`volumes`], [`sandbox`] and [`bundle`] (a container's OCI spec), [`monitor`] and [`runc`].
//! [`resources`] measures the node; [`eviction`] ends pods when it runs short.
//! The configuration modules are synchronous and touch the filesystem and the kernel briefly
//! (mounts, a short-lived thread for namespaces): call them from `spawn_blocking`.

pub mod attach;
pub mod bundle;
pub mod cni;
pub mod containers;
pub mod dns;
pub mod env;
pub mod eviction;
pub mod exec;
pub mod exitwatch;
pub mod hollow;
pub mod hook;
pub mod images;
pub mod loadbalancer;
pub mod logs;
pub mod monitor;
pub mod network;
pub mod objects;
pub mod pods;
pub mod probes;
pub mod resources;
pub mod routes;
pub mod runc;
pub mod sandbox;
pub mod services;
pub mod status;
pub mod storage;
pub mod streams;
pub mod volumes;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

/// What runs a node's pods, and what it needs from the cluster.
pub struct Runtime {
    pub pods: Box<dyn pods::PodRuntime>,
    pub streams: Arc<dyn streams::StreamServer>,
    /// The runtime's reads of ConfigMaps and Secrets, for the transport to answer.
    pub objects: mpsc::Receiver<objects::ObjectRequest>,
    /// Events about pods, for the transport to record.
    pub notes: mpsc::Receiver<pods::PodNote>,
    /// The cluster network as this node knows it; `None` when the node runs no containers.
    pub network: Option<Arc<network::Network>>,
    /// The Service rules' task, for the transport to run with the node; `None` without a
    /// network view or with `--disable-kube-proxy`.
    pub services: Option<services::ServiceRules>,
    /// The task that holds LoadBalancer addresses, for the transport to run with the node
    /// (it carries the task's [`loadbalancer::Link`]); `None` whenever `services` is.
    pub loadbalancer: Option<loadbalancer::Holder>,
}

/// kubelet's and K3s's default `--resolv-conf`.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Events queued for the transport; past this the runtime drops them (events are best effort).
pub const NOTE_QUEUE: usize = 64;

impl Runtime {
    /// A runtime that runs no containers and reads no objects (simulated or absent).
    pub fn without_containers(pods: Box<dyn pods::PodRuntime>) -> Runtime {
        let (_, objects) = objects::channel();
        let (_, notes) = mpsc::channel(1);
        Runtime {
            pods,
            streams: Arc::new(streams::NoContainers),
            objects,
            notes,
            network: None,
            services: None,
            loadbalancer: None,
        }
    }
}

/// How a node runs containers (`--runtime`, `--private-registry`, log rotation).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// The OCI runtime binary; `None` for `--runtime none`.
    pub runtime: Option<PathBuf>,
    pub registries: PathBuf,
    pub rotation: logs::Rotation,
    pub reservations: resources::Reservations,
    /// `--image-gc-high-threshold`, `--image-gc-low-threshold` (percent of the disk).
    pub image_gc: (u8, u8),
    /// `--eviction-pressure-transition-period`.
    pub pressure_transition: std::time::Duration,
    /// `--flannel-iface`: the interface pod traffic to other nodes leaves through.
    pub flannel_iface: Option<String>,
    /// Program Service rules (not `--disable-kube-proxy`).
    pub services: bool,
    /// `--resolv-conf`: the node's resolvers, for cluster DNS forwarding and `Default` pods.
    pub resolv_conf: PathBuf,
    /// `--cni-conf-dir`, `--cni-bin-dir`, `--cni-plugin-timeout`.
    pub cni: cni::Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "--runtime {path:?}: {why}; install runc (Debian: apt install runc), give its path with --runtime, or pass --runtime none for a node that runs no containers"
    )]
    Missing { path: PathBuf, why: String },
    #[error("--private-registry {path}: {why}")]
    Registries { path: PathBuf, why: String },
    #[error("the image store: {0}")]
    Images(String),
    #[error(transparent)]
    Setup(#[from] containers::SetupError),
}

impl RuntimeOptions {
    /// From the flags; problems go to `problems` naming the flag.
    pub fn from_args(args: &crate::cli::RuntimeArgs, problems: &mut Vec<String>) -> RuntimeOptions {
        let runtime = match args.runtime.as_str() {
            "none" => None,
            other => Some(PathBuf::from(other)),
        };
        let max_size = match crate::api::quantity::parse(&args.container_log_max_size) {
            Ok(q) if q.value() > 0 => q.value() as u64,
            _ => {
                problems.push(format!(
                    "--container-log-max-size {:?}: expected a positive size such as 10Mi",
                    args.container_log_max_size
                ));
                0
            }
        };
        if args.container_log_max_files < 1 {
            problems.push("--container-log-max-files: at least 1 (the current file)".into());
        }
        let mut reserved = resources::Reserved::default();
        for (flag, text) in [
            ("--kube-reserved", &args.kube_reserved),
            ("--system-reserved", &args.system_reserved),
        ] {
            match resources::parse_reserved(flag, text) {
                Ok(r) => {
                    reserved.cpu_milli += r.cpu_milli;
                    reserved.memory += r.memory;
                    reserved.ephemeral_storage += r.ephemeral_storage;
                    reserved.pids += r.pids;
                }
                Err(e) => problems.push(e),
            }
        }
        let (high, low) = (args.image_gc_high_threshold, args.image_gc_low_threshold);
        if high > 100 || low > high {
            problems.push(format!(
                "--image-gc-high-threshold {high} / --image-gc-low-threshold {low}: expected percentages with low <= high <= 100"
            ));
        }
        let eviction = resources::parse_eviction(&args.eviction_hard).unwrap_or_else(|e| {
            problems.push(e);
            resources::Eviction::default()
        });
        let pressure_transition = crate::config::parse_duration(
            "--eviction-pressure-transition-period",
            &args.eviction_pressure_transition_period,
        )
        .unwrap_or_else(|e| {
            problems.push(e);
            resources::DEFAULT_PRESSURE_TRANSITION
        });
        let cni_timeout =
            crate::config::parse_duration("--cni-plugin-timeout", &args.cni_plugin_timeout)
                .unwrap_or_else(|e| {
                    problems.push(e);
                    cni::DEFAULT_TIMEOUT
                });
        RuntimeOptions {
            runtime,
            registries: args.private_registry.clone(),
            rotation: logs::Rotation {
                max_size,
                max_files: args.container_log_max_files.max(1) as u32,
            },
            reservations: resources::Reservations { reserved, eviction },
            image_gc: (high.min(100), low.min(high.min(100))),
            pressure_transition,
            flannel_iface: args.flannel_iface.clone(),
            services: !args.disable_kube_proxy,
            resolv_conf: args.resolv_conf.clone(),
            cni: cni::Settings {
                conf_dir: args.cni_conf_dir.clone(),
                bin_dirs: args.cni_bin_dir.clone(),
                timeout: cni_timeout,
            },
        }
    }

    /// A node that runs no containers (`keelson loadgen`'s simulated nodes).
    pub fn none() -> RuntimeOptions {
        RuntimeOptions {
            runtime: None,
            registries: PathBuf::new(),
            rotation: logs::Rotation::default(),
            reservations: resources::Reservations::default(),
            image_gc: (85, 80),
            pressure_transition: resources::DEFAULT_PRESSURE_TRANSITION,
            flannel_iface: None,
            services: false,
            resolv_conf: PathBuf::from(DEFAULT_RESOLV_CONF),
            cni: cni::Settings {
                conf_dir: PathBuf::from(cni::DEFAULT_CONF_DIR),
                bin_dirs: cni::DEFAULT_BIN_DIRS
                    .split(',')
                    .map(PathBuf::from)
                    .collect(),
                timeout: cni::DEFAULT_TIMEOUT,
            },
        }
    }

    /// The runtime for this node: runc with the image store under `<data_dir>/agent`, or
    /// none. Imports image tarballs found in `<data_dir>/agent/images` (air-gapped installs).
    /// Starts the node's cluster DNS task ([`dns`]), so it must run inside the tokio runtime.
    /// `local_storage` is where local-path volumes live (`--default-local-storage-path`).
    pub fn build(
        &self,
        data_dir: &Path,
        node_name: &str,
        host_ips: Vec<IpAddr>,
        local_storage: &Path,
    ) -> Result<Runtime, RuntimeError> {
        let Some(binary) = &self.runtime else {
            tracing::info!("--runtime none: this node runs no containers");
            return Ok(Runtime::without_containers(Box::new(pods::Absent)));
        };
        let root = data_dir.join("agent");
        let runc = runc::Runc::new(binary.clone(), root.join("runc"));
        let version = runc.check().map_err(|e| RuntimeError::Missing {
            path: binary.clone(),
            why: e.to_string(),
        })?;
        tracing::info!(runtime = %binary.display(), %version, "running containers with this OCI runtime");
        let registries =
            images::Registries::load(&self.registries).map_err(|e| RuntimeError::Registries {
                path: self.registries.clone(),
                why: e.to_string(),
            })?;
        let images_dir = root.join("images");
        let store = images::ImageStore::open(&images_dir, registries)
            .map_err(|e| RuntimeError::Images(e.to_string()))?;
        match store.import_dir(&images_dir) {
            Ok(report) => tracing::info!(?report, "imported image tarballs"),
            Err(e) => tracing::warn!(error = %e, "cannot import image tarballs"),
        }
        let host_ip = host_ips.first().copied();
        let network = network::Network::new(node_name);
        // Cluster DNS lives as long as the node's network view (see node::dns).
        dns::spawn(&network, self.resolv_conf.clone());
        let (client, requests) = objects::channel();
        let (notes_tx, notes) = mpsc::channel(NOTE_QUEUE);
        // Stops when the node's network view is dropped with the runtime.
        let pod_network = cni::PodNetwork::new(self.cni.clone(), root.join("cni"), network.clone());
        pod_network.spawn_config_writer();
        let config = containers::Config {
            root,
            log_root: PathBuf::from("/var/log/pods"),
            runc,
            rotation: self.rotation,
            host_ips,
            pids_limit: 0,
            image_gc: self.image_gc,
            resolv_conf: self.resolv_conf.clone(),
            view: Some(network.clone()),
            network: pod_network,
            local_storage: local_storage.to_path_buf(),
        };
        let mut pods = containers::Containers::new(config, store, client, notes_tx)?;
        pods.collect_images();
        pods.sweep_local_volumes();
        pods.evict_under_pressure(self.reservations.eviction);
        let shared = pods.shared();
        // Runs for as long as the node holds its network view.
        routes::spawn(
            &network,
            routes::Options {
                iface: self.flannel_iface.clone(),
                nft: "nft".to_owned(),
            },
        );
        let (services, loadbalancer) = if self.services {
            (
                Some(services::ServiceRules::new(network.clone())),
                Some(loadbalancer::Holder::new(
                    network.clone(),
                    self.flannel_iface.clone(),
                    host_ip,
                    data_dir.join("agent").join("lb-addresses"),
                )),
            )
        } else {
            tracing::info!(
                "--disable-kube-proxy: this node programs no Service rules and holds no LoadBalancer addresses"
            );
            (None, None)
        };
        Ok(Runtime {
            pods: Box::new(pods),
            streams: Arc::new(exec::RuncStreams { shared }),
            objects: requests,
            notes,
            network: Some(network),
            services,
            loadbalancer,
        })
    }
}
