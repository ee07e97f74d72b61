//! Registers a node and keeps its Ready condition fresh.
//!
//! Labels are (re)applied at every start; taints only when the node object is created, so
//! taints changed later with kubectl survive restarts (kubelet's `--register-with-taints`).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::node::NodeOptions;
use super::sysinfo::{self, ARCH, SystemInfo};
use crate::apiserver::Api;
use crate::apiserver::registry::{Part, now_rfc3339};
use crate::apiserver::resources::{NODES, ObjectRef};
use crate::apiserver::status::ApiError;

/// How often the node says it is alive: one batched heartbeat statement per server, read by
/// the node lifecycle controller. Well inside the default 15 s grace period.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How often the node's status (and its conditions' `lastHeartbeatTime`) is rewritten while
/// nothing changes, as kubelet's `nodeStatusReportFrequency`. Each refresh is a revision every
/// watcher receives, so liveness goes through heartbeats instead.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(300);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

pub struct NodeAgent {
    api: Arc<Api>,
    opts: NodeOptions,
    info: SystemInfo,
    ips: Vec<IpAddr>,
}

impl NodeAgent {
    pub fn new(api: Arc<Api>, opts: NodeOptions) -> NodeAgent {
        let ips = sysinfo::node_ips(&opts.ips);
        NodeAgent {
            api,
            opts,
            info: SystemInfo::read(),
            ips,
        }
    }

    /// Registers (retrying with capped backoff), then heartbeats until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut delay = RETRY_MIN;
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "node registration failed");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
        self.api.node_registered.store(true, Ordering::Relaxed);
        tracing::info!(node = %self.opts.name, "node registered");
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self
                .api
                .registry
                .store()
                .heartbeat(std::slice::from_ref(&self.opts.name))
                .await
            {
                tracing::warn!(error = %e, "node heartbeat failed");
            }
            if last_status.elapsed() >= STATUS_INTERVAL {
                last_status = tokio::time::Instant::now();
                if let Err(e) = self.refresh_status().await {
                    tracing::warn!(error = %e, "node status refresh failed");
                }
            }
        }
    }

    async fn register(&self) -> Result<(), ApiError> {
        let r = ObjectRef::cluster(&NODES, &self.opts.name);
        let labels = self.labels();
        match self.api.registry.get(&r).await {
            Ok(_) => {
                self.api
                    .registry
                    .modify(&r, Part::Main, |node| {
                        for (k, v) in labels.as_object().into_iter().flatten() {
                            node["metadata"]["labels"][k] = v.clone();
                        }
                    })
                    .await?;
            }
            Err(ApiError::NotFound { .. }) => {
                let taints: Vec<Value> = self.opts.taints.iter().map(|t| json!(t)).collect();
                let mut node = json!({
                    "metadata": {"name": self.opts.name, "labels": labels},
                    "spec": {},
                });
                if !taints.is_empty() {
                    node["spec"]["taints"] = json!(taints);
                }
                match self.api.registry.create(&NODES, None, node).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        let status = self.status();
        self.api
            .registry
            .modify(&r, Part::Status, |node| {
                let old = node["status"]["conditions"].clone();
                node["status"] = status.clone();
                node["status"]["conditions"] = healthy_conditions(&old);
            })
            .await?;
        Ok(())
    }

    async fn refresh_status(&self) -> Result<(), ApiError> {
        let r = ObjectRef::cluster(&NODES, &self.opts.name);
        let now = now_rfc3339();
        self.api
            .registry
            .modify(&r, Part::Status, |node| {
                let mut conds = healthy_conditions(&node["status"]["conditions"]);
                for c in conds.as_array_mut().into_iter().flatten() {
                    c["lastHeartbeatTime"] = json!(now);
                }
                node["status"]["conditions"] = conds;
            })
            .await
            .map(|_| ())
    }

    fn labels(&self) -> Value {
        let mut labels = json!({
            "kubernetes.io/hostname": self.opts.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": ARCH,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": ARCH,
        });
        if self.opts.control_plane {
            labels["node-role.kubernetes.io/control-plane"] = json!("true");
        }
        for (k, v) in &self.opts.labels {
            labels[k] = json!(v);
        }
        labels
    }

    fn status(&self) -> Value {
        let mut addresses: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
            .collect();
        addresses.push(json!({"type": "Hostname", "address": self.opts.name}));
        json!({
            "addresses": addresses,
            "capacity": self.info.capacity(),
            "allocatable": self.info.capacity(),
            "nodeInfo": self.info.node_info(),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        })
    }
}

/// The conditions of a healthy node, keeping transition times that did not change.
pub fn healthy_conditions(old: &Value) -> Value {
    let now = now_rfc3339();
    let want = [
        (
            "Ready",
            "True",
            "KubeletReady",
            "keelson is posting ready status",
        ),
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "keelson has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "keelson has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "keelson has sufficient PID available",
        ),
    ];
    let list: Vec<Value> = want
        .iter()
        .map(|(kind, status, reason, message)| {
            let prev = old
                .as_array()
                .and_then(|a| a.iter().find(|c| c["type"] == *kind));
            let transition = match prev {
                Some(p) if p["status"] == *status => p["lastTransitionTime"].clone(),
                _ => json!(now),
            };
            let heartbeat = prev
                .map(|p| p["lastHeartbeatTime"].clone())
                .filter(|h| h.is_string())
                .unwrap_or(json!(now));
            json!({
                "type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition,
            })
        })
        .collect();
    json!(list)
}
