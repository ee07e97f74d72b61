//! Turns a node's report into its Node object, for a server's own node and for agents alike.
//!
//! Labels are (re)applied at every registration; taints only when the Node object is
//! created, so taints changed later with kubectl survive restarts (kubelet's
//! `--register-with-taints`). Status is written only when it changes: liveness lives in the
//! batched heartbeat rows (see [`crate::tunnel::sessions`]), so a thousand idle nodes cause no
//! revisions.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::node::NodeOptions;
use super::sysinfo::{self, SystemInfo};
use crate::apiserver::Api;
use crate::apiserver::registry::{Part, Registry, now_rfc3339};
use crate::apiserver::resources::{NODES, ObjectRef};
use crate::apiserver::status::ApiError;
use crate::node::resources::Conditions;
use crate::node::storage::STORAGE_PATH_ANNOTATION;
use crate::tunnel::NodeReport;
use crate::tunnel::sessions::{SERVER_ADDRESS_ANNOTATION, Sessions, record_server};

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// The label that marks servers; agents may not set `node-role.kubernetes.io/*` labels
/// (as Kubernetes's NodeRestriction).
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// How often a node measures itself again (pressure, addresses); a changed report is sent.
/// Above the server's shortest interval between two reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// A server's own node: registered in-process, heartbeated like any tunnelled agent.
pub struct NodeAgent {
    pub api: Arc<Api>,
    pub sessions: Arc<Sessions>,
    pub opts: NodeOptions,
    /// `host:port` agents use to reach this server.
    pub server_address: String,
}

impl NodeAgent {
    /// Registers (retrying with capped backoff), then stays present until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let info = SystemInfo::read();
        let mut pressure = Conditions::new(self.opts.pressure_transition);
        let mut current = report(&self.opts, info.clone(), &mut pressure);
        let mut delay = RETRY_MIN;
        loop {
            let store = self.api.registry.store();
            // The name is claimed first, so no agent can join with it (and get a certificate
            // for this server's node); then the server record agents learn the address from.
            let registered = async {
                crate::bootstrap::join::claim_for_server(store, &current.name).await?;
                register(&self.api.registry, &current, Some(&self.server_address)).await?;
                record_server(store, &current.name, &self.server_address).await?;
                Ok::<_, ApiError>(())
            };
            match registered.await {
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
        let _presence = self.sessions.enter(&self.opts.name);
        self.api.node_registered.store(true, Ordering::Relaxed);
        tracing::info!(node = %self.opts.name, "node registered");
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(REPORT_INTERVAL) => {}
            }
            let next = report(&self.opts, info.clone(), &mut pressure);
            if next != current {
                match register(&self.api.registry, &next, Some(&self.server_address)).await {
                    Ok(()) => current = next,
                    Err(e) => tracing::warn!(error = %e, "cannot update this server's node"),
                }
            }
        }
    }
}

/// What a node built from `opts` reports; `pressure` keeps the pressure conditions between
/// reports (they outlast the measurement by `--eviction-pressure-transition-period`).
pub fn report(opts: &NodeOptions, mut info: SystemInfo, pressure: &mut Conditions) -> NodeReport {
    let usage = crate::node::resources::Usage::measure(&opts.data_dir);
    let measured = usage.pressure(&opts.reservations.eviction);
    info.nodefs_bytes = usage.nodefs_total;
    NodeReport {
        name: opts.name.clone(),
        labels: opts
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        taints: opts.taints.clone(),
        addresses: sysinfo::node_ips(&opts.ips),
        info,
        reservations: opts.reservations,
        pressure: pressure.observe(measured, tokio::time::Instant::now()),
        local_storage: Some(&opts.local_storage)
            .filter(|p| p.is_absolute())
            .and_then(|p| p.to_str())
            .map(str::to_owned),
    }
}

/// Creates or updates the Node for `report`. `server_address` is set for servers only: it
/// gives the node the control-plane role and publishes the address to agents.
pub async fn register(
    registry: &Registry,
    report: &NodeReport,
    server_address: Option<&str>,
) -> Result<(), ApiError> {
    let r = ObjectRef::cluster(&NODES, &report.name);
    let labels = labels(report, server_address.is_some());
    match registry.get(&r).await {
        Ok(_) => {
            registry
                .modify(&r, Part::Main, |node| {
                    for (k, v) in labels.as_object().into_iter().flatten() {
                        node["metadata"]["labels"][k] = v.clone();
                    }
                    if let Some(addr) = server_address {
                        node["metadata"]["annotations"][SERVER_ADDRESS_ANNOTATION] = json!(addr);
                    }
                    set_storage_path(node, report.local_storage.as_deref());
                })
                .await?;
        }
        Err(ApiError::NotFound { .. }) => {
            let mut node = json!({
                "metadata": {"name": report.name, "labels": labels},
                "spec": {},
            });
            if let Some(addr) = server_address {
                node["metadata"]["annotations"] = json!({ SERVER_ADDRESS_ANNOTATION: addr });
            }
            set_storage_path(&mut node, report.local_storage.as_deref());
            if !report.taints.is_empty() {
                node["spec"]["taints"] = json!(report.taints);
            }
            match registry.create(&NODES, None, node).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    let status = status(report);
    registry
        .modify(&r, Part::Status, |node| {
            let old = node["status"]["conditions"].clone();
            let mut next = status.clone();
            // An unreachable node stays so until the lifecycle controller sees heartbeats.
            next["conditions"] = if old.as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "Unknown")
            }) {
                old
            } else {
                conditions(&old, Some(report.pressure))
            };
            node["status"] = next;
        })
        .await?;
    Ok(())
}

/// Sets (or, for a node that no longer reports one, removes) the Node's storage path
/// annotation, which the local-path provisioner reads.
fn set_storage_path(node: &mut Value, path: Option<&str>) {
    match path {
        Some(path) => node["metadata"]["annotations"][STORAGE_PATH_ANNOTATION] = json!(path),
        None => {
            if let Some(annotations) = node["metadata"]["annotations"].as_object_mut() {
                annotations.remove(STORAGE_PATH_ANNOTATION);
            }
        }
    }
}

fn labels(report: &NodeReport, server: bool) -> Value {
    let arch = &report.info.architecture;
    // A label value has at most 63 characters, a node name up to 253: a longer name's host
    // part (its first DNS label, at most 63) stands for it, as a hostname would.
    let hostname = if crate::api::labels::validate_label_value(&report.name).is_ok() {
        report.name.as_str()
    } else {
        report.name.split('.').next().unwrap_or_default()
    };
    let mut labels = json!({
        "kubernetes.io/hostname": hostname,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch,
    });
    if server {
        labels[CONTROL_PLANE_LABEL] = json!("true");
    }
    for (k, v) in &report.labels {
        labels[k] = json!(v);
    }
    labels
}

fn status(report: &NodeReport) -> Value {
    let mut addresses: Vec<Value> = report
        .addresses
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": report.name}));
    let (capacity, allocatable) = report.info.capacity(&report.reservations);
    // No kubelet port is advertised: nothing listens on the node (streams dial back).
    json!({
        "addresses": addresses,
        "capacity": capacity,
        "allocatable": allocatable,
        "nodeInfo": report.info.node_info(),
    })
}

/// The conditions of a healthy node, keeping transition times that did not change.
/// `pressure` is the node's latest measurement; `None` keeps each pressure condition's status
/// as it is (the lifecycle controller knows the node is back, not what it measures).
pub fn conditions(old: &Value, pressure: Option<crate::node::resources::Pressure>) -> Value {
    let now = now_rfc3339();
    let prior = |kind: &str| {
        old.as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == kind))
            .is_some_and(|c| c["status"] == "True")
    };
    let p = pressure.unwrap_or(crate::node::resources::Pressure {
        memory: prior("MemoryPressure"),
        disk: prior("DiskPressure"),
        pid: prior("PIDPressure"),
    });
    let pick = |on: bool, yes: (&'static str, &'static str), no: (&'static str, &'static str)| {
        if on {
            ("True", yes.0, yes.1)
        } else {
            ("False", no.0, no.1)
        }
    };
    let (ms, mr, mm) = pick(
        p.memory,
        (
            "KubeletHasInsufficientMemory",
            "keelson has insufficient memory available",
        ),
        (
            "KubeletHasSufficientMemory",
            "keelson has sufficient memory available",
        ),
    );
    let (ds, dr, dm) = pick(
        p.disk,
        ("KubeletHasDiskPressure", "keelson has disk pressure"),
        ("KubeletHasNoDiskPressure", "keelson has no disk pressure"),
    );
    let (ps, pr, pm) = pick(
        p.pid,
        (
            "KubeletHasInsufficientPID",
            "keelson has insufficient PID available",
        ),
        (
            "KubeletHasSufficientPID",
            "keelson has sufficient PID available",
        ),
    );
    let want = [
        (
            "Ready",
            "True",
            "KubeletReady",
            "keelson is posting ready status",
        ),
        ("MemoryPressure", ms, mr, mm),
        ("DiskPressure", ds, dr, dm),
        ("PIDPressure", ps, pr, pm),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_path_is_annotated_and_removed_when_no_longer_reported() {
        let mut node = json!({"metadata": {"name": "n1"}});
        set_storage_path(&mut node, Some("/var/lib/keelson/storage"));
        assert_eq!(
            node["metadata"]["annotations"][STORAGE_PATH_ANNOTATION],
            "/var/lib/keelson/storage"
        );
        set_storage_path(&mut node, None);
        assert!(
            node["metadata"]["annotations"]
                .get(STORAGE_PATH_ANNOTATION)
                .is_none()
        );
    }
}
