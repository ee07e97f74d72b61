//! Node-pressure eviction: kubelet's eviction manager for hard thresholds. When the node's
//! measurement crosses an `--eviction-hard` threshold (memory, nodefs, pids; see
//! [`super::resources`]), the node ends one of its pods, then looks again a pass later.
//!
//! Which pod: kubelet's order for the signal ([`rank`]). For memory and disk, pods whose usage
//! exceeds their requests come first, then lower priority, then the larger usage above the
//! requests — so in effect BestEffort pods (no requests) go before Burstable ones, and
//! Guaranteed pods (usage within requests = limits) last. For pids, lower priority first, then
//! more processes. Critical pods are never chosen: static and mirror pods and those at
//! `system-node-critical`'s priority or above, as kubelet's `IsCriticalPod`.
//!
//! How: the runtime ([`Pods::evict`]) kills the pod's containers at once (grace period 0, as
//! kubelet does for a hard threshold), records an `Evicted` event, and reports the pod Failed
//! with reason `Evicted` and kubelet's message ("The node was low on resource: memory. ...").
//! Its controller, if any, makes a replacement, which the scheduler keeps off this node while
//! the node's pressure taint lasts (see [`crate::controllers::node_lifecycle`]).
//!
//! What it leaves to others: the node's conditions (reported with the node, see
//! [`super::resources::Conditions`]), reclaiming node-level resources first (image garbage
//! collection runs on its own timer), soft thresholds and admission of new pods (not done).
//!
//! Invariants:
//! - at most one pod is evicted per pass ([`MONITOR_INTERVAL`]), so the node sees what an
//!   eviction freed before it chooses again;
//! - nothing is evicted before the runtime has every pod the server assigns here (its first
//!   listing): a restarted node ranks all its pods, not the first few it re-adopted;
//! - a value that cannot be read counts as no usage, never as a reason to evict.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;

use super::pods::PodKey;
use super::resources::{Eviction, Threshold, Usage};

/// How often the node looks at its thresholds (kubelet's `evictionMonitoringPeriod`).
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(10);
/// `scheduling.SystemCriticalPriority`: pods at or above it are never evicted.
pub const SYSTEM_CRITICAL_PRIORITY: i64 = 2_000_000_000;
/// kubelet's status reason for an evicted pod.
pub const REASON: &str = "Evicted";
/// The annotations kubelet marks static and mirror pods with.
const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Deepest directory level walked when adding up a pod's disk usage.
const MAX_DEPTH: usize = 64;

/// A measured signal that can cross its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `memory.available`.
    Memory,
    /// `nodefs.available`.
    Disk,
    /// `pid.available`.
    Pids,
}

/// The pods a runtime runs, as the eviction manager sees them.
pub trait Pods: Send + Sync {
    /// The pods running here that have not ended; `None` until the runtime has had the
    /// server's first listing.
    fn active(&self) -> Option<Vec<Active>>;
    /// Ends the pod now (no grace period) and reports it Failed with `reason`.
    fn evict(&self, key: &PodKey, uid: &str, message: String);
}

/// One pod the runtime runs.
#[derive(Debug, Clone)]
pub struct Active {
    pub key: PodKey,
    pub uid: String,
    /// The pod as the runtime has it (metadata and spec).
    pub pod: Arc<Value>,
}

/// Where a pod's usage is read from.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<data-dir>/agent`: the filesystem measured as nodefs; pods are under `pods/<uid>`.
    pub root: PathBuf,
    /// kubelet's `/var/log/pods`.
    pub log_root: PathBuf,
    /// Where pods' cgroups go (`/keelson`): `<parent>/pod<uid>/<container>`.
    pub cgroup_parent: String,
}

/// What the ranking knows of one pod for one signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: PodKey,
    pub uid: String,
    pub priority: i64,
    /// The pod's usage: bytes for memory and disk, processes for pids.
    pub usage: u64,
    /// What its containers request (0 for BestEffort, and always for pids).
    pub request: u64,
    /// Per container: name, usage and request (for the message).
    pub containers: Vec<(String, u64, u64)>,
}

/// The node-pressure eviction manager of one node.
pub struct Manager {
    pub thresholds: Eviction,
    pub layout: Layout,
}

// === impl Manager ===

impl Manager {
    /// Looks every [`MONITOR_INTERVAL`] until the runtime (`pods`) is dropped.
    pub async fn run(self, pods: Weak<dyn Pods>) {
        let this = Arc::new(self);
        loop {
            tokio::time::sleep(MONITOR_INTERVAL).await;
            let Some(pods) = pods.upgrade() else {
                return;
            };
            let Some(active) = pods.active() else {
                continue;
            };
            // The node's own figures are a few cheap reads, taken here; the pods' (cgroup files,
            // a walk of their directories) only under pressure, off the runtime's thread. An
            // idle node so keeps no blocking thread alive (an agent runs on one thread).
            let usage = Usage::measure(&this.layout.root);
            let Some(signal) = crossed(&usage, &this.thresholds) else {
                continue;
            };
            let this = this.clone();
            let chosen =
                tokio::task::spawn_blocking(move || this.choose_under(signal, &usage, &active))
                    .await;
            if let Ok(Some((key, uid, message))) = chosen {
                tracing::warn!(pod = %key.name, namespace = %key.namespace, "evicting a pod: {message}");
                pods.evict(&key, &uid, message);
            }
        }
    }

    /// The pod to evict for `signal`, crossed in `usage`, and kubelet's message.
    fn choose_under(
        &self,
        signal: Signal,
        usage: &Usage,
        active: &[Active],
    ) -> Option<(PodKey, String, String)> {
        let mut candidates: Vec<Candidate> = active
            .iter()
            .filter(|a| !is_critical(&a.pod))
            .map(|a| self.candidate(signal, a))
            .collect();
        rank(signal, &mut candidates);
        let chosen = candidates.into_iter().next();
        if chosen.is_none() {
            tracing::info!(
                ?signal,
                "the node is under pressure but has no pod it may evict"
            );
        }
        let chosen = chosen?;
        let message = message(signal, usage, &self.thresholds, &chosen);
        Some((chosen.key, chosen.uid, message))
    }

    fn candidate(&self, signal: Signal, a: &Active) -> Candidate {
        let names: Vec<String> = a.pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect();
        let resource = signal.resource();
        let containers: Vec<(String, u64, u64)> = names
            .iter()
            .map(|name| {
                let used = match signal {
                    Signal::Memory => self.memory_of(&a.uid, Some(name)),
                    Signal::Disk => self.disk_of_container(a, name),
                    Signal::Pids => 0,
                };
                (
                    name.clone(),
                    used,
                    container_request(&a.pod, name, resource),
                )
            })
            .collect();
        let usage = match signal {
            Signal::Memory => self.memory_of(&a.uid, None),
            Signal::Disk => self.disk_of_pod(a),
            Signal::Pids => self.pids_of(&a.uid),
        };
        Candidate {
            key: a.key.clone(),
            uid: a.uid.clone(),
            priority: a.pod["spec"]["priority"].as_i64().unwrap_or(0),
            usage,
            request: match signal {
                Signal::Pids => 0,
                _ => pod_request(&a.pod, resource),
            },
            containers,
        }
    }

    /// The working set (usage less inactive file pages, as kubelet counts it) of the pod's
    /// cgroup, or of one container's.
    fn memory_of(&self, uid: &str, container: Option<&str>) -> u64 {
        let rel = self.cgroup_rel(uid, container);
        let v2 = Path::new("/sys/fs/cgroup").join(&rel);
        let (usage, stat, inactive) = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            (
                v2.join("memory.current"),
                v2.join("memory.stat"),
                "inactive_file",
            )
        } else {
            let v1 = Path::new("/sys/fs/cgroup/memory").join(&rel);
            (
                v1.join("memory.usage_in_bytes"),
                v1.join("memory.stat"),
                "total_inactive_file",
            )
        };
        let usage = read_number(&usage).unwrap_or(0);
        let inactive = fs::read_to_string(stat)
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == inactive).then(|| v.trim().parse::<u64>().ok())?
                })
            })
            .unwrap_or(0);
        usage.saturating_sub(inactive)
    }

    fn pids_of(&self, uid: &str) -> u64 {
        let rel = self.cgroup_rel(uid, None);
        let path = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Path::new("/sys/fs/cgroup").join(rel).join("pids.current")
        } else {
            Path::new("/sys/fs/cgroup/pids")
                .join(rel)
                .join("pids.current")
        };
        read_number(&path).unwrap_or(0)
    }

    /// What the pod writes to the node's disk: its directory (container upper layers,
    /// emptyDirs on disk), not crossing into mounts (image layers, tmpfs), and its logs.
    fn disk_of_pod(&self, a: &Active) -> u64 {
        let pod_dir = self.layout.root.join("pods").join(&a.uid);
        dir_size(&pod_dir).saturating_add(dir_size(&self.log_dir(a)))
    }

    fn disk_of_container(&self, a: &Active, name: &str) -> u64 {
        let runs = self
            .layout
            .root
            .join("pods")
            .join(&a.uid)
            .join("containers")
            .join(name);
        dir_size(&runs).saturating_add(dir_size(&self.log_dir(a).join(name)))
    }

    fn log_dir(&self, a: &Active) -> PathBuf {
        self.layout
            .log_root
            .join(format!("{}_{}_{}", a.key.namespace, a.key.name, a.uid))
    }

    fn cgroup_rel(&self, uid: &str, container: Option<&str>) -> PathBuf {
        let mut rel = PathBuf::from(self.layout.cgroup_parent.trim_matches('/'));
        rel.push(format!("pod{uid}"));
        if let Some(c) = container {
            rel.push(c);
        }
        rel
    }
}

// === impl Signal ===

impl Signal {
    /// The resource kubelet names in its message and in requests.
    pub fn resource(self) -> &'static str {
        match self {
            Signal::Memory => "memory",
            Signal::Disk => "ephemeral-storage",
            Signal::Pids => "pids",
        }
    }
}

/// The signal to act on, if any crossed its threshold: memory first, then disk, then pids
/// (kubelet acts on memory before other signals).
pub fn crossed(usage: &Usage, thresholds: &Eviction) -> Option<Signal> {
    let p = usage.pressure(thresholds);
    [
        (p.memory, Signal::Memory),
        (p.disk, Signal::Disk),
        (p.pid, Signal::Pids),
    ]
    .into_iter()
    .find_map(|(on, s)| on.then_some(s))
}

/// Sorts `pods` in kubelet's eviction order for `signal`, the first to go first.
pub fn rank(signal: Signal, pods: &mut [Candidate]) {
    let above = |c: &Candidate| c.usage as i128 - c.request as i128;
    match signal {
        // kubelet: exceedMemoryRequests / exceedDiskRequests, priority, usage above requests.
        Signal::Memory | Signal::Disk => pods.sort_by(|a, b| {
            let exceeds = |c: &Candidate| c.usage > c.request;
            exceeds(b)
                .cmp(&exceeds(a))
                .then(a.priority.cmp(&b.priority))
                .then(above(b).cmp(&above(a)))
        }),
        // kubelet: priority, then the most processes.
        Signal::Pids => {
            pods.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.usage.cmp(&a.usage)))
        }
    }
}

/// kubelet's `IsCriticalPod`: a static or mirror pod, or one at system-critical priority.
pub fn is_critical(pod: &Value) -> bool {
    let annotation = |k: &str| pod["metadata"]["annotations"][k].as_str();
    let static_pod = annotation(CONFIG_SOURCE_ANNOTATION).is_some_and(|s| s != "api");
    static_pod
        || annotation(MIRROR_ANNOTATION).is_some()
        || pod["spec"]["priority"]
            .as_i64()
            .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY)
}

/// kubelet's eviction message: the resource, the threshold met and what each container used
/// beyond its request.
pub fn message(signal: Signal, usage: &Usage, thresholds: &Eviction, chosen: &Candidate) -> String {
    let resource = signal.resource();
    let mut out = format!("The node was low on resource: {resource}. ");
    let (threshold, total, available) = match signal {
        Signal::Memory => (
            thresholds.memory_available,
            usage.memory_total,
            usage.memory_available,
        ),
        Signal::Disk => (
            thresholds.nodefs_available,
            usage.nodefs_total,
            usage.nodefs_available,
        ),
        Signal::Pids => (
            thresholds.pids_available,
            usage.pids_max,
            usage.pids_max.saturating_sub(usage.pids_used),
        ),
    };
    if let Some(t) = threshold {
        let quantity = match t {
            Threshold::Bytes(b) => b,
            Threshold::Percent(p) => total / 100 * p as u64,
        };
        let show = |n: u64| match signal {
            Signal::Pids => n.to_string(),
            _ => binary_quantity(n),
        };
        out += &format!(
            "Threshold quantity: {}, available: {}. ",
            show(quantity),
            show(available)
        );
    }
    if signal != Signal::Pids {
        for (name, used, request) in &chosen.containers {
            if used > request {
                out += &format!(
                    "Container {name} was using {}, request is {}, has larger consumption of {resource}. ",
                    binary_quantity(*used),
                    binary_quantity(*request)
                );
            }
        }
    }
    out
}

/// A byte count as Kubernetes prints a binary quantity: the largest of Ki, Mi, Gi, Ti that
/// divides it, else plain bytes.
pub fn binary_quantity(n: u64) -> String {
    if n == 0 {
        return "0".into();
    }
    for (shift, suffix) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if n.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// A container's request for `resource` (its limit when no request, as the API defaults it).
fn container_request(pod: &Value, name: &str, resource: &str) -> u64 {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str() == Some(name))
        .map_or(0, |c| request_of(c, resource))
}

/// kubelet's pod request: the app containers' sum, or the largest init container's if more.
fn pod_request(pod: &Value, resource: &str) -> u64 {
    let of = |field: &str| {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| request_of(c, resource))
            .collect::<Vec<u64>>()
    };
    let sum = of("containers").into_iter().fold(0u64, u64::saturating_add);
    let init = of("initContainers").into_iter().max().unwrap_or(0);
    sum.max(init)
}

fn request_of(container: &Value, resource: &str) -> u64 {
    let r = &container["resources"];
    r["requests"][resource]
        .as_str()
        .or_else(|| r["limits"][resource].as_str())
        .and_then(|q| crate::api::quantity::parse(q).ok())
        .map_or(0, |q| q.value().max(0) as u64)
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The bytes of the regular files under `dir`, staying on `dir`'s filesystem (mounts below it
/// are image layers, tmpfs and binds, counted elsewhere or not disk at all) and never
/// following a symlink.
fn dir_size(dir: &Path) -> u64 {
    fn walk(dir: &Path, dev: u64, depth: usize, total: &mut u64) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                let _ = walk(&entry.path(), dev, depth + 1, total);
            } else if meta.is_file() {
                // Blocks actually allocated, as `du` counts them (sparse files are small).
                *total = total.saturating_add(meta.blocks().saturating_mul(512));
            }
        }
        Ok(())
    }
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = 0;
    let _ = walk(dir, meta.dev(), 0, &mut total);
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MI: u64 = 1 << 20;

    fn pod(name: &str, priority: i64, usage: u64, request: u64) -> Candidate {
        Candidate {
            key: PodKey {
                namespace: "default".into(),
                name: name.into(),
            },
            uid: name.into(),
            priority,
            usage,
            request,
            containers: vec![("c".into(), usage, request)],
        }
    }

    fn names(pods: &[Candidate]) -> Vec<&str> {
        pods.iter().map(|p| p.key.name.as_str()).collect()
    }

    #[test]
    fn pods_over_their_requests_go_first_then_by_priority_then_by_excess() {
        let mut pods = vec![
            // Guaranteed: within its request (= limit).
            pod("guaranteed", 0, 60 * MI, 64 * MI),
            // Burstable under its request.
            pod("burstable-under", 0, 10 * MI, 32 * MI),
            // Burstable over its request by 8 Mi.
            pod("burstable-over", 0, 40 * MI, 32 * MI),
            // BestEffort: no request, so any usage exceeds it.
            pod("besteffort", 0, 5 * MI, 0),
            // BestEffort but important: after the other exceeders of lower priority.
            pod("besteffort-important", 1000, 50 * MI, 0),
            // A low-priority Guaranteed pod goes before the other pods within requests.
            pod("guaranteed-low", -10, MI, 64 * MI),
        ];
        rank(Signal::Memory, &mut pods);
        assert_eq!(
            names(&pods),
            [
                "burstable-over",
                "besteffort",
                "besteffort-important",
                "guaranteed-low",
                // Within their requests, the one closer to its request first (kubelet's
                // order: usage minus request, 4 Mi short before 22 Mi short).
                "guaranteed",
                "burstable-under",
            ]
        );
        // Among exceeders of one priority, the largest excess first.
        let mut two = vec![pod("small", 0, 2 * MI, 0), pod("big", 0, 9 * MI, 0)];
        rank(Signal::Disk, &mut two);
        assert_eq!(names(&two), ["big", "small"]);
    }

    #[test]
    fn pid_pressure_ranks_by_priority_then_processes() {
        let mut pods = vec![
            pod("few", 0, 3, 0),
            pod("many", 0, 300, 0),
            pod("low", -1, 1, 0),
        ];
        rank(Signal::Pids, &mut pods);
        assert_eq!(names(&pods), ["low", "many", "few"]);
    }

    #[test]
    fn static_mirror_and_critical_pods_are_never_candidates() {
        assert!(!is_critical(&json!({"metadata": {}, "spec": {}})));
        assert!(!is_critical(&json!({"metadata": {"annotations": {
            "kubernetes.io/config.source": "api"}}, "spec": {}})));
        assert!(is_critical(&json!({"metadata": {"annotations": {
            "kubernetes.io/config.source": "file"}}, "spec": {}})));
        assert!(is_critical(&json!({"metadata": {"annotations": {
            "kubernetes.io/config.mirror": "abc"}}, "spec": {}})));
        assert!(is_critical(
            &json!({"metadata": {}, "spec": {"priority": 2_000_001_000}})
        ));
        assert!(!is_critical(
            &json!({"metadata": {}, "spec": {"priority": 1_000_000}})
        ));
    }

    #[test]
    fn requests_default_to_limits_and_init_containers_count_when_larger() {
        let p = json!({"spec": {
        "initContainers": [{"name": "i", "resources": {"requests": {"memory": "300Mi"}}}],
        "containers": [
            {"name": "a", "resources": {"requests": {"memory": "100Mi"}}},
            {"name": "b", "resources": {"limits": {"memory": "150Mi"}}},
            {"name": "c"},
        ]}});
        assert_eq!(pod_request(&p, "memory"), 300 * MI);
        assert_eq!(container_request(&p, "b", "memory"), 150 * MI);
        assert_eq!(container_request(&p, "c", "memory"), 0);
        assert_eq!(pod_request(&p, "ephemeral-storage"), 0);
    }

    #[test]
    fn the_message_reads_like_kubelets() {
        let usage = Usage {
            memory_total: 4096 * MI,
            memory_available: 50 * MI,
            nodefs_total: 1000 * MI,
            nodefs_available: 500 * MI,
            pids_max: 1000,
            pids_used: 100,
        };
        let thresholds = super::super::resources::parse_eviction("memory.available<100Mi").unwrap();
        assert_eq!(crossed(&usage, &thresholds), Some(Signal::Memory));
        let chosen = Candidate {
            containers: vec![("web".into(), 1234 * 1024, 0), ("side".into(), MI, 2 * MI)],
            ..pod("p", 0, 1234 * 1024 + MI, 2 * MI)
        };
        assert_eq!(
            message(Signal::Memory, &usage, &thresholds, &chosen),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. \
             Container web was using 1234Ki, request is 0, has larger consumption of memory. "
        );
        let none = super::super::resources::parse_eviction("memory.available<10Mi").unwrap();
        assert_eq!(crossed(&usage, &none), None);
        assert_eq!(binary_quantity(1000), "1000");
        assert_eq!(binary_quantity(3 << 30), "3Gi");
    }

    #[test]
    fn disk_usage_stays_on_one_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), vec![1u8; 64 * 1024]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("a/escape")).unwrap();
        let size = dir_size(dir.path());
        assert!((64 * 1024..128 * 1024).contains(&size), "{size}");
        assert_eq!(dir_size(&dir.path().join("missing")), 0);
    }
}
