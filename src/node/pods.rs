//! The pods this node must run, as its server assigns them, and the loop that hands them to a
//! [`PodRuntime`] and reports their status.
//!
//! Assignments arrive over the node's tunnel (see [`crate::tunnel`]: the server follows the
//! change feed once for all its nodes and pushes each node only its own pods), so a node holds
//! no watch and the server no per-node query. Status goes back up the same tunnel as the JSON
//! a kubelet would `PATCH` to `pods/<name>/status`; the server applies it as this node, through
//! NodeRestriction.
//!
//! The core ([`PodWorker`]) is IO-free: events and the clock go in, status reports come out;
//! [`PodWorker::run`] is the thin driver that owns the channels.
//!
//! Invariants: the worker holds exactly the pods the server last said are bound here (a
//! listing replaces the set; pods missing from it are dropped from the runtime); a pod the
//! server reports finished (Succeeded/Failed) is never started again; a runtime that runs
//! nothing ([`Absent`]) reports nothing, so a node without a real runtime never claims a pod
//! is running.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::status;

mod wire;
pub use wire::{ContainerSpec, PodAssignment, PodKey, PodNote, PodReport, RestartPolicy};

/// Status reports queued for the tunnel session (more wait in the worker, one per pod).
pub const REPORT_QUEUE: usize = 64;
/// Assignments queued from the tunnel to the worker.
pub const EVENT_QUEUE: usize = 64;
/// Annotations a node receives: keelson's own only (others, such as kubectl's
/// last-applied-configuration, can be large and mean nothing to a node).
const NODE_ANNOTATION_DOMAIN: &str = "keelson.io/";
/// Metadata a node passes on to containers (downward API) or needs to stop a pod.
const NODE_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "labels",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the tunnel delivers to the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum PodEvent {
    /// A full listing follows; pods not in it are gone once it ends.
    Listing,
    /// This pod is bound here (new, or its assignment changed).
    Assigned(PodAssignment),
    /// This pod is no longer bound here (deleted, or the listing left it out).
    Gone(PodKey),
    /// The listing ended.
    Listed,
}

/// A pod's phase (Kubernetes' `PodPhase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// What a runtime says about one pod; [`status`] turns it into Kubernetes' JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub phase: Phase,
    /// The pod's addresses, `status.podIP` first; empty until its network is set up.
    pub pod_ips: Vec<IpAddr>,
    /// When the node accepted the pod (RFC 3339).
    pub start_time: String,
    pub ready: bool,
    /// When readiness last changed (RFC 3339): the Ready and ContainersReady transition time.
    pub ready_since: String,
    pub containers: Vec<ContainerStatus>,
    /// Init containers, in order; empty for a pod without them.
    pub init_containers: Vec<ContainerStatus>,
    /// Every init container has succeeded (true for a pod without them).
    pub initialized: bool,
    /// Why the node itself ended the pod (an eviction); `None` for a pod that ran its course.
    pub ended_by_node: Option<StatusReason>,
}

/// kubelet's `status.reason` and `status.message` (e.g. `Evicted`, "The node was low on
/// resource: memory. ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReason {
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    /// Where the image came from; a simulated runtime says so here (`hollow://...`).
    pub image_id: String,
    pub container_id: String,
    pub ready: bool,
    pub restart_count: u32,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Waiting {
        reason: String,
        /// Why, for people (`kubectl describe`): a pull error, the back-off left.
        message: String,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        /// The container's termination message, if it left one.
        message: String,
        started_at: String,
        finished_at: String,
    },
}

/// Runs the pods of one node. Implementations: [`Absent`] (no runtime: real agents until the
/// runc runtime exists), [`super::hollow::Hollow`] (simulation, `keelson loadgen` only).
pub trait PodRuntime: Send {
    /// Starts `pod` if it is new; notes a changed assignment otherwise.
    fn sync(&mut self, pod: &PodAssignment, now: Instant);
    /// Stops and forgets the pod.
    fn remove(&mut self, key: &PodKey);
    /// The pod's end is stored (Succeeded or Failed): nothing of it may run again. A runtime
    /// may keep what kubelet keeps of a finished pod (its logs) until the pod is deleted.
    fn finished(&mut self, pod: &PodAssignment) {
        self.remove(&pod.key);
    }
    /// The earliest time [`PodRuntime::poll`] has something to do, if any.
    fn next_wake(&self) -> Option<Instant>;
    /// Moves every pod forward to `now`; returns the pods whose state changed.
    fn poll(&mut self, now: Instant) -> Vec<PodKey>;
    /// The pod's current state, once the runtime has something to say about it.
    fn state(&self, key: &PodKey) -> Option<PodState>;
    /// A listing from the server ended: every pod bound here has been synced. A runtime
    /// that found pods of an earlier run may now remove those no longer assigned.
    fn listed(&mut self) {}
    /// Woken when the runtime's own tasks changed a pod (a runtime driven only by
    /// [`PodRuntime::next_wake`] has none).
    fn waker(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// The system is shutting down: stop every container gracefully (preStop, SIGTERM, at
    /// most `grace`, SIGKILL) but keep the pods, which start again when the node is back, as
    /// after a power cut. The future ends when they have stopped.
    fn shutdown(&mut self, _grace: std::time::Duration) -> BoxFuture {
        Box::pin(std::future::ready(()))
    }
}

/// What [`PodRuntime::shutdown`] returns: it runs after the runtime's borrow ended.
pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The longest a system shutdown waits for the node's pods: within systemd's default stop
/// timeout (90 s) with room for the rest of the process's own shutdown.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// No runtime: the node tracks its assignments and leaves the pods alone. It reports nothing,
/// so pods bound here stay Pending rather than pretend to run. Real agents use this until the
/// runc runtime exists.
#[derive(Debug, Default)]
pub struct Absent;

impl PodRuntime for Absent {
    fn sync(&mut self, _: &PodAssignment, _: Instant) {}
    fn remove(&mut self, _: &PodKey) {}
    fn next_wake(&self) -> Option<Instant> {
        None
    }
    fn poll(&mut self, _: Instant) -> Vec<PodKey> {
        Vec::new()
    }
    fn state(&self, _: &PodKey) -> Option<PodState> {
        None
    }
}

/// The node's end of the tunnel's pod traffic, handed to every tunnel session in turn.
pub struct PodLink {
    pub events: mpsc::Sender<PodEvent>,
    pub reports: mpsc::Receiver<PodReport>,
    /// The runtime's reads of ConfigMaps and Secrets.
    pub objects: mpsc::Receiver<super::objects::ObjectRequest>,
    /// Events the runtime records about its pods.
    pub notes: mpsc::Receiver<PodNote>,
    /// What serves the streams the server asks for.
    pub streams: std::sync::Arc<dyn super::streams::StreamServer>,
    /// The node's network view, fed by the transport; `None` for a node that runs no pods of
    /// its own (simulated, `--runtime none`).
    pub network: Option<std::sync::Arc<super::network::Network>>,
    /// The LoadBalancer address holder's requests and grants; set by the transport once it
    /// spawned the holder, `None` where no holder runs.
    pub lb: Option<super::loadbalancer::Link>,
}

/// The node's pod tracking: the set of pods bound here, and their runtime.
pub struct PodWorker {
    runtime: Box<dyn PodRuntime>,
    /// Invariant: exactly the pods the server last said are bound here.
    pods: HashMap<PodKey, Tracked>,
    /// Set while a listing is arriving.
    listing: bool,
    /// The node's address, reported as each pod's `hostIP`.
    host_ip: Option<IpAddr>,
}

struct Tracked {
    pod: PodAssignment,
    /// Whether the current listing named it (meaningless outside a listing).
    listed: bool,
}

// === impl PodWorker ===

impl PodWorker {
    pub fn new(runtime: Box<dyn PodRuntime>, host_ip: Option<IpAddr>) -> PodWorker {
        PodWorker {
            runtime,
            pods: HashMap::new(),
            listing: false,
            host_ip,
        }
    }

    /// The worker for `runtime` (started on the returned parts by [`PodWorker::run`]) and the
    /// link its tunnel sessions use.
    pub fn start(
        runtime: super::Runtime,
        host_ip: Option<IpAddr>,
    ) -> (
        PodWorker,
        PodLink,
        mpsc::Receiver<PodEvent>,
        mpsc::Sender<PodReport>,
    ) {
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (reports_tx, reports) = mpsc::channel(REPORT_QUEUE);
        let link = PodLink {
            events,
            reports,
            objects: runtime.objects,
            notes: runtime.notes,
            streams: runtime.streams,
            network: runtime.network,
            lb: None,
        };
        (
            PodWorker::new(runtime.pods, host_ip),
            link,
            events_rx,
            reports_tx,
        )
    }

    /// Applies one event from the server; returns the reports it causes.
    pub fn on_event(&mut self, ev: PodEvent, now: Instant) -> Vec<PodReport> {
        match ev {
            PodEvent::Listing => {
                self.listing = true;
                for t in self.pods.values_mut() {
                    t.listed = false;
                }
                Vec::new()
            }
            PodEvent::Assigned(pod) => {
                let key = pod.key.clone();
                let replaced = self.pods.get(&key).is_some_and(|t| t.pod.uid != pod.uid);
                if replaced {
                    // Another pod under the same name: the old one is gone.
                    self.runtime.remove(&key);
                }
                if pod.finished {
                    // Its end was reported (and stored): nothing is left to run.
                    self.runtime.finished(&pod);
                } else {
                    self.runtime.sync(&pod, now);
                }
                self.pods.insert(key, Tracked { pod, listed: true });
                self.poll(now)
            }
            PodEvent::Gone(key) => {
                self.pods.remove(&key);
                self.runtime.remove(&key);
                Vec::new()
            }
            PodEvent::Listed => {
                if !std::mem::take(&mut self.listing) {
                    return Vec::new();
                }
                let gone: Vec<PodKey> = self
                    .pods
                    .iter()
                    .filter(|(_, t)| !t.listed)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in gone {
                    self.pods.remove(&key);
                    self.runtime.remove(&key);
                }
                self.runtime.listed();
                // After a (re)connect the server may have missed reports sent on the old
                // tunnel: say everything again (the server skips writes that change nothing).
                let mut keys: Vec<PodKey> = self.pods.keys().cloned().collect();
                keys.sort();
                keys.iter().filter_map(|k| self.report(k)).collect()
            }
        }
    }

    /// Moves the runtime forward to `now`; returns the reports for pods that changed.
    pub fn poll(&mut self, now: Instant) -> Vec<PodReport> {
        let changed = self.runtime.poll(now);
        changed.iter().filter_map(|k| self.report(k)).collect()
    }

    pub fn next_wake(&self) -> Option<Instant> {
        self.runtime.next_wake()
    }

    /// How many pods are bound here.
    #[cfg(test)]
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    fn report(&self, key: &PodKey) -> Option<PodReport> {
        let tracked = self.pods.get(key)?;
        if tracked.pod.finished {
            return None;
        }
        let state = self.runtime.state(key)?;
        Some(PodReport {
            key: key.clone(),
            uid: tracked.pod.uid.clone(),
            status: status::pod_status(&state, self.host_ip).to_string(),
        })
    }

    /// Runs until `stop` flips: events from the tunnel in, reports out, timers in between.
    /// Reports wait here while the tunnel is down (at most one per pod: a newer one replaces
    /// an unsent older one), so the worker never blocks the tunnel that feeds it. When `stop`
    /// flips because the system shuts down, the pods' containers are stopped before it returns;
    /// otherwise they keep running for the next process to adopt.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<PodEvent>,
        reports: mpsc::Sender<PodReport>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut pending: VecDeque<PodReport> = VecDeque::new();
        let waker = self.runtime.waker();
        loop {
            let wake = self.next_wake();
            let out = tokio::select! {
                _ = crate::apiserver::stopped(&mut stop) => {
                    if crate::systemd::shutdown::system_stopping().await {
                        tracing::info!(pods = self.pods.len(), "the system is shutting down: stopping this node's containers");
                        let stopped = self.runtime.shutdown(SHUTDOWN_GRACE);
                        stopped.await;
                        tracing::info!("this node's containers have stopped");
                    }
                    return;
                }
                _ = notified(waker.as_deref()) => self.poll(Instant::now()),
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev, Instant::now()),
                    None => return,
                },
                _ = sleep_until(wake) => self.poll(Instant::now()),
                permit = reports.reserve(), if !pending.is_empty() => {
                    let Ok(permit) = permit else { return };
                    if let Some(r) = pending.pop_front() {
                        permit.send(r);
                    }
                    Vec::new()
                }
            };
            for r in out {
                match pending.iter_mut().find(|p| p.key == r.key) {
                    Some(older) => *older = r,
                    None => pending.push_back(r),
                }
            }
        }
    }
}

async fn notified(n: Option<&tokio::sync::Notify>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// === impl PodAssignment ===

impl PodAssignment {
    /// The node a stored Pod is bound to and what that node is told about it; `None` for a pod
    /// not bound to any node (or not a pod).
    pub fn from_pod(pod: &Value) -> Option<(String, PodAssignment)> {
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str)?;
        if node.is_empty() {
            return None;
        }
        let text = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let restart_policy = match text("/spec/restartPolicy") {
            "Never" => RestartPolicy::Never,
            "OnFailure" => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        };
        let containers = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| ContainerSpec {
                name: c["name"].as_str().unwrap_or_default().to_owned(),
                image: c["image"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        let mut annotations: Vec<(String, String)> = pod
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(NODE_ANNOTATION_DOMAIN))
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        annotations.sort();
        let finished = matches!(text("/status/phase"), "Succeeded" | "Failed");
        let mut meta = serde_json::Map::new();
        if let Some(m) = pod.get("metadata").and_then(Value::as_object) {
            for field in NODE_METADATA {
                if let Some(v) = m.get(*field) {
                    meta.insert((*field).to_owned(), v.clone());
                }
            }
            if let Some(a) = m.get("annotations").and_then(Value::as_object) {
                // kubectl's copy of the whole object would double the assignment's size.
                let kept: serde_json::Map<String, Value> = a
                    .iter()
                    .filter(|(k, _)| k.as_str() != LAST_APPLIED)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !kept.is_empty() {
                    meta.insert("annotations".into(), Value::Object(kept));
                }
            }
        }
        let trimmed = serde_json::json!({
            "metadata": meta,
            "spec": pod.get("spec").cloned().unwrap_or(Value::Null),
        });
        Some((
            node.to_owned(),
            PodAssignment {
                key: PodKey {
                    namespace: text("/metadata/namespace").to_owned(),
                    name: text("/metadata/name").to_owned(),
                },
                uid: text("/metadata/uid").to_owned(),
                restart_policy,
                containers,
                annotations,
                finished,
                pod: trimmed.to_string(),
            },
        ))
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::node::hollow::{Hollow, Timing};
    use serde_json::json;
    use std::time::Duration;

    pub(crate) fn assignment(name: &str, uid: &str, policy: RestartPolicy) -> PodAssignment {
        PodAssignment {
            key: PodKey {
                namespace: "default".into(),
                name: name.into(),
            },
            uid: uid.into(),
            restart_policy: policy,
            containers: vec![ContainerSpec {
                name: "c".into(),
                image: "busybox:1.36".into(),
            }],
            annotations: vec![],
            finished: false,
            pod: "{}".into(),
        }
    }

    fn hollow_worker() -> PodWorker {
        let timing = Timing {
            start_delay: Duration::from_secs(1),
            run_time: Duration::from_secs(2),
        };
        PodWorker::new(
            Box::new(Hollow::new(timing, 0)),
            Some("198.18.0.1".parse().unwrap()),
        )
    }

    #[test]
    fn assignments_come_from_bound_pods_only() {
        let pod = json!({
            "metadata": {"namespace": "ns", "name": "p", "uid": "u1",
                         "annotations": {"keelson.io/hollow-exit-code": "3",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
            "spec": {"nodeName": "sim-1", "restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Pending"},
        });
        let (node, a) = PodAssignment::from_pod(&pod).unwrap();
        assert_eq!(node, "sim-1");
        assert_eq!(a.restart_policy, RestartPolicy::Never);
        assert_eq!(a.annotation("keelson.io/hollow-exit-code"), Some("3"));
        assert_eq!(a.annotations.len(), 1, "only keelson.io annotations travel");
        assert!(!a.finished);
        let carried: Value = serde_json::from_str(&a.pod).unwrap();
        assert_eq!(carried["spec"]["containers"][0]["image"], "busybox");
        assert_eq!(carried["metadata"]["uid"], "u1");
        assert!(carried.get("status").is_none(), "status never travels down");
        assert!(
            carried["metadata"]["annotations"]
                .get("kubectl.kubernetes.io/last-applied-configuration")
                .is_none()
        );
        let mut unbound = pod.clone();
        unbound["spec"]["nodeName"] = json!(null);
        assert!(PodAssignment::from_pod(&unbound).is_none());
        let mut done = pod;
        done["status"]["phase"] = json!("Succeeded");
        assert!(PodAssignment::from_pod(&done).unwrap().1.finished);
    }

    #[test]
    fn a_node_without_a_runtime_reports_nothing() {
        let mut w = PodWorker::new(Box::new(Absent), None);
        let now = Instant::now();
        let out = w.on_event(
            PodEvent::Assigned(assignment("p", "u1", RestartPolicy::Always)),
            now,
        );
        assert!(out.is_empty());
        assert!(w.poll(now + Duration::from_secs(60)).is_empty());
        assert_eq!(w.pod_count(), 1);
        assert!(w.on_event(PodEvent::Listed, now).is_empty());
    }

    #[test]
    fn a_listing_drops_pods_it_leaves_out() {
        let mut w = hollow_worker();
        let now = Instant::now();
        for name in ["a", "b"] {
            w.on_event(
                PodEvent::Assigned(assignment(name, name, RestartPolicy::Always)),
                now,
            );
        }
        w.on_event(PodEvent::Listing, now);
        w.on_event(
            PodEvent::Assigned(assignment("b", "b", RestartPolicy::Always)),
            now,
        );
        w.on_event(PodEvent::Listed, now);
        assert_eq!(w.pod_count(), 1);
        // The dropped pod's timers are gone too: only b reports.
        let out = w.poll(now + Duration::from_secs(5));
        assert_eq!(
            out.iter().map(|r| r.key.name.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn a_listing_reports_known_pods_again() {
        let mut w = hollow_worker();
        let now = Instant::now();
        w.on_event(
            PodEvent::Assigned(assignment("a", "a", RestartPolicy::Always)),
            now,
        );
        assert_eq!(w.poll(now + Duration::from_secs(2)).len(), 1);
        w.on_event(PodEvent::Listing, now);
        w.on_event(
            PodEvent::Assigned(assignment("a", "a", RestartPolicy::Always)),
            now,
        );
        let again = w.on_event(PodEvent::Listed, now);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].uid, "a");
    }

    #[test]
    fn finished_pods_are_not_run_again() {
        let mut w = hollow_worker();
        let now = Instant::now();
        let mut pod = assignment("job", "u", RestartPolicy::Never);
        pod.finished = true;
        w.on_event(PodEvent::Assigned(pod), now);
        assert!(w.poll(now + Duration::from_secs(60)).is_empty());
        assert_eq!(w.next_wake(), None);
    }
}
