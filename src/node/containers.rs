//! Runs a node's pods with runc: the [`PodRuntime`] of real nodes (agents and servers alike).
//!
//! One task per pod (kubelet's "pod worker"): it sets up the sandbox and volumes, pulls each
//! image, runs the init containers in order and then the app containers, each as an OCI
//! bundle on an overlay of the image's layers, started by a detached `keelson monitor`
//! ([`super::monitor`]) so containers outlive this process. It watches the monitors' files,
//! restarts containers per `restartPolicy` with kubelet's back-off, and publishes the pod's
//! [`PodState`] for the worker to report. Removing a pod stops its containers (SIGTERM, the
//! grace period, SIGKILL) and removes everything it had on disk. Evicting a pod
//! ([`super::eviction`]) kills its containers at once and reports it Failed, keeping its
//! files until the pod is deleted.
//!
//! On disk, under `<data-dir>/agent/pods/<uid>/`: `pod.json` (the assignment being run, so a
//! restarted process knows what it finds), the sandbox and volumes, and per container
//! `containers/<name>/<run>/` (bundle, overlay upper and work dirs, the monitor's state).
//! `<run>` counts from 0 and is the container's restart count.
//!
//! Invariants: a container run is started at most once (its run directory exists before the
//! monitor is spawned, and a later process adopts what it finds there rather than start it
//! again); the restart count only grows; a pod's directory is removed only after every
//! container of it was seen stopped.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::exitwatch::{ExitWatch, Watch};
use super::images::{Image, ImageStore, PullError};
use super::logs::Rotation;
use super::monitor::{self, ExitRecord, MonitorSpec, Observed};
use super::objects::{ObjectClient, ObjectError, Wanted};
use super::pods::{
    ContainerState, ContainerStatus, Phase, PodAssignment, PodKey, PodNote, PodRuntime, PodState,
    RestartPolicy,
};
use super::probes::{self, Probe};
use super::runc::Runc;
use super::status::now_rfc3339;

/// How often a pod's task looks at its monitors' files.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How often a pod whose containers all run looks at them anyway (kubelet's relist period):
/// exits wake it at once through [`ExitWatch`], so this only bounds a missed wake-up.
const RELIST_INTERVAL: Duration = Duration::from_secs(1);
/// In a run's directory: the image's repo digest (`imageID`), for a process that adopts it.
const IMAGE_ID_FILE: &str = "image-id";
/// kubelet's container restart back-off: 10 s, doubling, at most 5 minutes.
const BACKOFF_MIN: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long without exiting starts its next back-off from the minimum.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often ConfigMap and Secret volumes are brought up to date (kubelet: its sync period,
/// a minute, plus its cache's TTL).
const VOLUME_REFRESH: Duration = Duration::from_secs(30);
/// The cluster's DNS domain until the node's network view says otherwise.
const CLUSTER_DOMAIN: &str = "cluster.local";
/// How often unused images are looked at for garbage collection.
const IMAGE_GC_INTERVAL: Duration = Duration::from_secs(300);
/// Where pods' cgroups go (cgroupfs style): `/keelson/pod<uid>/<container>`.
const CGROUP_PARENT: &str = "/keelson";
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Back-off between tries of a pod network set-up that failed (a plugin error or timeout):
/// from the first, doubling, up to the last.
const NETWORK_BACKOFF_MIN: Duration = Duration::from_secs(1);
const NETWORK_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Tries of a pod's network removal (CNI DEL) before the pod is removed anyway.
const DETACH_TRIES: u32 = 3;
/// Back-off between tries of a pod whose claims are missing or not bound yet: short at first,
/// since the provisioner binds a claim right after the scheduler binds the pod; doubling up to
/// the last. At 250 ms a pod with a new claim ran 250 ms after one without (benches/pods.py):
/// the binding takes a few tens of milliseconds, so the first retries come sooner.
const CLAIM_BACKOFF_MIN: Duration = Duration::from_millis(50);
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(16);

/// Where and how this node runs containers.
#[derive(Clone)]
pub struct Config {
    /// `<data-dir>/agent`.
    pub root: PathBuf,
    /// kubelet's `/var/log/pods`.
    pub log_root: PathBuf,
    pub runc: Runc,
    pub rotation: Rotation,
    pub host_ips: Vec<IpAddr>,
    /// Most processes one container may run (`--pod-max-pids`, kubelet's flag; none if 0).
    pub pids_limit: i64,
    /// Disk usage (percent) at which unused images go, and down to which
    /// (`--image-gc-high-threshold`, `--image-gc-low-threshold`).
    pub image_gc: (u8, u8),
    /// The node's resolver file (`--resolv-conf`), for pods with `dnsPolicy: Default`.
    pub resolv_conf: PathBuf,
    /// The cluster network as the node knows it: the cluster DNS server and domain pods'
    /// `resolv.conf` names.
    pub view: Option<Arc<super::network::Network>>,
    /// Gives pods with their own network namespace an interface and addresses (CNI).
    pub network: Arc<super::cni::PodNetwork>,
    /// `--default-local-storage-path`: where local-path volumes live.
    pub local_storage: PathBuf,
}

/// The node's pods and their tasks.
pub struct Containers {
    shared: Arc<Shared>,
    tasks: HashMap<PodKey, PodTask>,
    /// Pods found on disk at start, by uid: adopted when the server assigns them again,
    /// removed once the first listing shows it does not.
    found: HashMap<String, PathBuf>,
    /// Held while the sweep of released local volumes runs; dropping it stops the sweep.
    _sweep: Option<tokio::sync::oneshot::Sender<()>>,
}

struct PodTask {
    uid: String,
    commands: mpsc::UnboundedSender<Command>,
}

enum Command {
    /// The assignment changed (a new deletion time, new annotations).
    Update(Box<PodAssignment>),
    Stop,
    /// Node-pressure eviction: end the pod now, with this message.
    Evict(String),
    /// The system shuts down: stop the containers within this long, keep the pod, end the
    /// task. The sender is dropped when they have stopped.
    Shutdown(Duration, mpsc::Sender<()>),
}

/// What the pod tasks share with the runtime and with the stream server.
pub struct Shared {
    pub config: Config,
    pub images: ImageStore,
    pub objects: ObjectClient,
    node_settings: super::bundle::NodeSettings,
    /// Events about pods, for `kubectl describe` (dropped when the queue is full).
    notes: mpsc::Sender<PodNote>,
    states: Mutex<HashMap<PodKey, PodState>>,
    changed: Mutex<Vec<PodKey>>,
    notify: Arc<Notify>,
    /// Where each pod's containers run now, for logs and exec.
    running: Mutex<HashMap<PodKey, PodRuns>>,
    /// Wakes a pod's task when a monitor writes its files.
    exits: ExitWatch,
    /// The pods that have not ended, for the eviction manager: added when a pod's task
    /// starts, removed when the pod is removed or its end is stored.
    evictable: Mutex<HashMap<PodKey, Evictable>>,
    /// The server's first listing has been applied (every pod assigned here has a task).
    listed: AtomicBool,
}

struct Evictable {
    uid: String,
    pod: Arc<Value>,
    commands: mpsc::UnboundedSender<Command>,
}

/// A pod's containers as the stream server finds them.
#[derive(Debug, Clone, Default)]
pub struct PodRuns {
    pub uid: String,
    /// Container name → the current run and its runc id (if it ever started).
    pub containers: HashMap<String, Run>,
    /// The pod's network namespace file; `None` for `hostNetwork` (or not set up yet).
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Run {
    pub number: u32,
    pub runc_id: Option<String>,
    pub state_dir: PathBuf,
    /// The container's state now, for "waiting to start" answers.
    pub state: ContainerState,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read what this node allows containers (capabilities, cgroups): {0}")]
    Node(std::io::Error),
}

// === impl Containers ===

impl Containers {
    /// The runtime, with the pods a previous process left under `config.root`.
    pub fn new(
        config: Config,
        images: ImageStore,
        objects: ObjectClient,
        notes: mpsc::Sender<PodNote>,
    ) -> Result<Containers, SetupError> {
        let pods_dir = config.root.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(|source| SetupError::Dir {
            path: pods_dir.clone(),
            source,
        })?;
        let mut found = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&pods_dir) {
            for e in entries.flatten() {
                if let Some(uid) = e.file_name().to_str() {
                    found.insert(uid.to_owned(), e.path());
                }
            }
        }
        let pids_limit = (config.pids_limit > 0).then_some(config.pids_limit);
        let node_settings = super::bundle::NodeSettings::detect(CGROUP_PARENT, pids_limit)
            .map_err(SetupError::Node)?;
        if !found.is_empty() {
            tracing::info!(
                pods = found.len(),
                "found pods of an earlier run; adopting those still assigned here"
            );
        }
        Ok(Containers {
            shared: Arc::new(Shared {
                config,
                images,
                objects,
                node_settings,
                notes,
                states: Mutex::new(HashMap::new()),
                changed: Mutex::new(Vec::new()),
                notify: Arc::new(Notify::new()),
                running: Mutex::new(HashMap::new()),
                exits: ExitWatch::start(),
                evictable: Mutex::new(HashMap::new()),
                listed: AtomicBool::new(false),
            }),
            tasks: HashMap::new(),
            found,
            _sweep: None,
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Removes images no pod here uses when the disk passes kubelet's threshold, every
    /// [`IMAGE_GC_INTERVAL`], until the runtime is dropped.
    pub fn collect_images(&self) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IMAGE_GC_INTERVAL).await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let in_use: HashSet<String> = lock(&shared.states)
                    .values()
                    .flat_map(|s| s.containers.iter().chain(&s.init_containers))
                    .flat_map(|c| [c.image.clone(), c.image_id.clone()])
                    .filter(|s| !s.is_empty())
                    .collect();
                let images = shared.images.clone();
                let (high, low) = shared.config.image_gc;
                let result =
                    tokio::task::spawn_blocking(move || images.gc(&in_use, high, low)).await;
                match result {
                    Ok(Ok(report)) if !report.removed.is_empty() => {
                        tracing::info!(removed = ?report.removed, freed = report.freed_bytes, "image garbage collection")
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "image garbage collection failed"),
                    _ => {}
                }
            }
        });
    }

    /// Removes the directories of released local-path volumes ([`super::storage`]), now and
    /// periodically, until the runtime is dropped.
    pub fn sweep_local_volumes(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let sweeper = super::storage::Sweeper::new(
            self.shared.config.local_storage.clone(),
            self.shared.config.root.join("pods"),
            self.shared.objects.clone(),
        );
        let span = tracing::info_span!("local-volume-sweep");
        tokio::spawn(tracing::Instrument::instrument(sweeper.run(stopped), span));
        self._sweep = Some(stop);
    }

    /// Evicts pods when the node crosses `thresholds` (`--eviction-hard`), until the runtime
    /// is dropped.
    pub fn evict_under_pressure(&self, thresholds: super::resources::Eviction) {
        let manager = super::eviction::Manager {
            thresholds,
            layout: super::eviction::Layout {
                root: self.shared.config.root.clone(),
                log_root: self.shared.config.log_root.clone(),
                cgroup_parent: CGROUP_PARENT.into(),
            },
        };
        let shared: Arc<dyn super::eviction::Pods> = self.shared.clone();
        tokio::spawn(manager.run(Arc::downgrade(&shared)));
    }

    fn spawn(&mut self, pod: &PodAssignment) {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.shared.evictable).insert(
            pod.key.clone(),
            Evictable {
                uid: pod.uid.clone(),
                pod: Arc::new(serde_json::from_str(&pod.pod).unwrap_or(Value::Null)),
                commands: tx.clone(),
            },
        );
        self.found.remove(&pod.uid);
        let task = PodRunner::new(self.shared.clone(), pod.clone());
        tokio::spawn(task.run(rx));
        self.tasks.insert(
            pod.key.clone(),
            PodTask {
                uid: pod.uid.clone(),
                commands: tx,
            },
        );
    }
}

impl PodRuntime for Containers {
    fn sync(&mut self, pod: &PodAssignment, _now: Instant) {
        match self.tasks.get(&pod.key) {
            Some(t) if t.uid == pod.uid => {
                let _ = t.commands.send(Command::Update(Box::new(pod.clone())));
            }
            Some(_) => {
                self.remove(&pod.key);
                self.spawn(pod);
            }
            None => self.spawn(pod),
        }
    }

    fn finished(&mut self, pod: &PodAssignment) {
        lock(&self.shared.evictable).remove(&pod.key);
        // Its containers have all ended; the task keeps their logs until the pod is deleted.
        match self.tasks.get(&pod.key) {
            Some(t) if t.uid == pod.uid => {
                let _ = t.commands.send(Command::Update(Box::new(pod.clone())));
            }
            _ => self.remove(&pod.key),
        }
    }

    fn remove(&mut self, key: &PodKey) {
        if let Some(t) = self.tasks.remove(key) {
            let _ = t.commands.send(Command::Stop);
        }
        lock(&self.shared.evictable).remove(key);
        lock(&self.shared.states).remove(key);
    }

    fn next_wake(&self) -> Option<Instant> {
        None
    }

    fn poll(&mut self, _now: Instant) -> Vec<PodKey> {
        std::mem::take(&mut *lock(&self.shared.changed))
    }

    fn state(&self, key: &PodKey) -> Option<PodState> {
        lock(&self.shared.states).get(key).cloned()
    }

    fn waker(&self) -> Option<Arc<Notify>> {
        Some(self.shared.notify.clone())
    }

    fn shutdown(&mut self, grace: Duration) -> super::pods::BoxFuture {
        let (done, mut all_done) = mpsc::channel(1);
        for t in self.tasks.values() {
            let _ = t.commands.send(Command::Shutdown(grace, done.clone()));
        }
        drop(done);
        // Each task drops its sender once its containers stopped; a task that cannot say so
        // in time (a hung runc) is not waited for beyond the grace and the final kills.
        let cap = grace + Duration::from_secs(10);
        Box::pin(async move {
            let _ = tokio::time::timeout(cap, all_done.recv()).await;
        })
    }

    fn listed(&mut self) {
        self.shared.listed.store(true, Ordering::Relaxed);
        // Pods left on disk by an earlier process that the server no longer assigns here.
        for (uid, dir) in std::mem::take(&mut self.found) {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                tracing::info!(%uid, "removing a pod of an earlier run that is no longer assigned here");
                remove_orphan(&shared, &dir).await;
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// === impl Shared ===

impl super::eviction::Pods for Shared {
    fn active(&self) -> Option<Vec<super::eviction::Active>> {
        if !self.listed.load(Ordering::Relaxed) {
            return None;
        }
        let pods = lock(&self.evictable);
        Some(
            pods.iter()
                .map(|(key, e)| super::eviction::Active {
                    key: key.clone(),
                    uid: e.uid.clone(),
                    pod: e.pod.clone(),
                })
                .collect(),
        )
    }

    fn evict(&self, key: &PodKey, uid: &str, message: String) {
        let mut pods = lock(&self.evictable);
        // Once asked, the pod is no candidate any more (its end is on its way).
        if let Some(e) = pods.remove(key).filter(|e| e.uid == uid) {
            let _ = e.commands.send(Command::Evict(message));
        }
    }
}

impl Shared {
    fn publish(&self, key: &PodKey, state: PodState) {
        let changed = {
            let mut states = lock(&self.states);
            let old = states.insert(key.clone(), state.clone());
            old.as_ref() != Some(&state)
        };
        if changed {
            lock(&self.changed).push(key.clone());
            self.notify.notify_one();
        }
    }

    /// The reason a container of `pod` waits, if it does.
    pub fn waiting_reason(&self, pod: &PodKey, container: &str) -> Option<String> {
        let states = lock(&self.states);
        let state = states.get(pod)?;
        state
            .containers
            .iter()
            .chain(&state.init_containers)
            .find(|c| c.name == container)
            .and_then(|c| match &c.state {
                ContainerState::Waiting { reason, .. } => Some(reason.clone()),
                _ => None,
            })
    }

    /// The pod's network namespace file (`Some(None)` for a `hostNetwork` pod), if the pod
    /// with `uid` runs here.
    pub fn netns_of(&self, pod: &PodKey, uid: &str) -> Option<Option<PathBuf>> {
        let running = lock(&self.running);
        let runs = running.get(pod).filter(|r| r.uid == uid)?;
        Some(runs.netns.clone())
    }

    /// Where `pod`'s container runs now, if the pod is here.
    pub fn run_of(&self, pod: &PodKey, container: &str) -> Option<(String, Run)> {
        let running = lock(&self.running);
        let runs = running.get(pod)?;
        Some((runs.uid.clone(), runs.containers.get(container)?.clone()))
    }

    fn set_netns(&self, pod: &PodKey, uid: &str, netns: Option<PathBuf>) {
        let mut running = lock(&self.running);
        let runs = running.entry(pod.clone()).or_default();
        runs.uid = uid.to_owned();
        runs.netns = netns;
    }

    fn set_run(&self, pod: &PodKey, uid: &str, container: &str, run: Run) {
        let mut running = lock(&self.running);
        let runs = running.entry(pod.clone()).or_default();
        runs.uid = uid.to_owned();
        runs.containers.insert(container.to_owned(), run);
    }

    /// kubelet's log directory of one container of a pod.
    pub fn log_dir(&self, pod: &PodKey, uid: &str, container: &str) -> PathBuf {
        self.config
            .log_root
            .join(format!("{}_{}_{}", pod.namespace, pod.name, uid))
            .join(container)
    }
}

/// A container's run directory and runc id, from its pod and run number. runc ids are kept
/// short: the pod's uid is unique on the node, and names are DNS labels.
fn run_paths(pod_dir: &Path, uid: &str, container: &str, run: u32) -> (PathBuf, String) {
    let dir = pod_dir
        .join("containers")
        .join(container)
        .join(run.to_string());
    (dir, format!("{uid}-{container}-{run}"))
}

// === The pod task ===

/// One container of the pod, as its task tracks it.
struct Tracked {
    spec: Value,
    init: bool,
    status: ContainerStatus,
    /// The run under way (started, or being started).
    run: Option<ActiveRun>,
    /// When the back-off of a failed run ends.
    backoff_until: Option<Instant>,
    backoff: Duration,
    /// The image this container runs.
    image: Option<Image>,
    /// The last run ended for good (restart policy says no more).
    done: bool,
    /// This run's probes, made when it starts.
    startup: Option<Probe>,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
}

struct ActiveRun {
    number: u32,
    runc_id: String,
    dir: PathBuf,
    started: Instant,
    /// Wakes the pod's task when the monitor writes its state (held for the run's life).
    _watch: Option<Watch>,
}

impl ActiveRun {
    fn new(
        number: u32,
        runc_id: String,
        dir: PathBuf,
        exits: &ExitWatch,
        wake: &Arc<Notify>,
    ) -> Self {
        let _watch = exits.watch(&dir.join("state"), wake.clone());
        ActiveRun {
            number,
            runc_id,
            dir,
            started: Instant::now(),
            _watch,
        }
    }
}

struct PodRunner {
    shared: Arc<Shared>,
    pod: PodAssignment,
    spec: Value,
    dir: PathBuf,
    key: PodKey,
    containers: Vec<Tracked>,
    start_time: String,
    ready_since: String,
    was_ready: bool,
    /// Why the pod cannot start yet (sandbox, network or volume trouble), shown as a
    /// waiting message.
    setup_error: Option<String>,
    /// When a failed network set-up is tried again, and the back-off after that.
    setup_retry: Option<(Instant, Duration)>,
    /// The pod's addresses: from CNI, or the node's with `hostNetwork`; empty until set up.
    pod_ips: Vec<IpAddr>,
    /// The pod's namespaces and volumes, once set up.
    sandbox: Option<(super::sandbox::Sandbox, super::volumes::Volumes)>,
    /// The pod's shared PID namespace (`shareProcessNamespace`), once set up.
    pid_namespace: Option<PathBuf>,
    /// When ConfigMap and Secret volumes were last brought up to date.
    volumes_refreshed: Instant,
    /// Notified by the [`ExitWatch`] when one of this pod's monitors writes its files.
    wake: Arc<Notify>,
    /// The node evicted the pod (kubelet's message): nothing of it runs again.
    evicted: Option<String>,
    /// Service account tokens for the pod's projected volumes, by (audience, lifetime asked
    /// for); fetched again once 80% of a token's lifetime has passed (kubelet's rule).
    tokens: std::sync::Mutex<HashMap<(String, i64), HeldToken>>,
}

/// A service account token the node holds for a pod.
struct HeldToken {
    token: String,
    fetched: Instant,
    lifetime: Duration,
}

impl PodRunner {
    fn new(shared: Arc<Shared>, pod: PodAssignment) -> PodRunner {
        let spec: Value = serde_json::from_str(&pod.pod).unwrap_or(Value::Null);
        let dir = shared.config.root.join("pods").join(&pod.uid);
        let mut containers = Vec::new();
        for (field, init) in [("initContainers", true), ("containers", false)] {
            for c in spec
                .pointer(&format!("/spec/{field}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = c["name"].as_str().unwrap_or_default().to_owned();
                let image = c["image"].as_str().unwrap_or_default().to_owned();
                containers.push(Tracked {
                    spec: c.clone(),
                    init,
                    status: ContainerStatus {
                        name,
                        image,
                        image_id: String::new(),
                        container_id: String::new(),
                        ready: false,
                        restart_count: 0,
                        state: waiting(
                            if init {
                                "PodInitializing"
                            } else {
                                "ContainerCreating"
                            },
                            "",
                        ),
                        last_state: None,
                    },
                    run: None,
                    backoff_until: None,
                    backoff: BACKOFF_MIN,
                    image: None,
                    done: false,
                    startup: None,
                    liveness: None,
                    readiness: None,
                });
            }
        }
        let now = now_rfc3339();
        PodRunner {
            key: pod.key.clone(),
            shared,
            pod,
            spec,
            dir,
            containers,
            start_time: now.clone(),
            ready_since: now,
            was_ready: false,
            setup_error: None,
            setup_retry: None,
            pod_ips: Vec::new(),
            sandbox: None,
            pid_namespace: None,
            volumes_refreshed: Instant::now(),
            wake: Arc::new(Notify::new()),
            evicted: None,
            tokens: std::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        tracing::debug!(pod = %self.key.name, namespace = %self.key.namespace, "pod task starts");
        self.adopt();
        self.publish();
        let wake = self.wake.clone();
        // The first look is at once: a new pod has everything still to do.
        let mut next = Instant::now();
        loop {
            tokio::select! {
                c = commands.recv() => match c {
                    Some(Command::Update(pod)) => {
                        let ended = pod.finished && !self.pod.finished;
                        self.pod = *pod;
                        if ended && self.sandbox.is_some() {
                            // Nothing of it runs again: its addresses go back now, as kubelet
                            // stops a finished pod's sandbox (its status keeps the podIP).
                            detach_network(&self.shared, &self.dir, &self.key.name).await;
                        }
                    }
                    Some(Command::Stop) | None => {
                        self.stop().await;
                        return;
                    }
                    Some(Command::Shutdown(grace, _done)) => {
                        // Its files stay: the next start of this node adopts the pod and
                        // starts its containers again, as after a power cut.
                        self.stop_containers(grace).await;
                        tracing::info!(pod = %self.key.name, namespace = %self.key.namespace, "containers stopped for the system shutdown");
                        return;
                    }
                    Some(Command::Evict(message)) => {
                        self.evict(message).await;
                        self.publish();
                    }
                },
                // A finished pod starts nothing again; it waits (logs kept) for its deletion.
                _ = tokio::time::sleep_until(next), if !self.pod.finished => {
                    self.step().await;
                    self.publish();
                    next = self.next_look();
                }
                _ = wake.notified(), if !self.pod.finished => {
                    self.step().await;
                    self.publish();
                    next = self.next_look();
                }
            }
        }
    }

    /// When the task should look at its containers next: soon while something is to be
    /// started or set up, at the next probe that falls due, else after the relist period (an
    /// exit wakes it earlier). Without inotify it keeps the short interval throughout.
    fn next_look(&self) -> Instant {
        let now = Instant::now();
        if self.evicted.is_some() {
            // Nothing of it starts again; it waits for its deletion.
            return now + RELIST_INTERVAL;
        }
        // A set-up waiting out its back-off (a claim being bound, the network) is looked at
        // when that ends: sooner than the watch interval for a claim's first tries.
        if self.sandbox.is_none()
            && let Some((at, _)) = self.setup_retry
        {
            return at.max(now);
        }
        let waiting =
            self.sandbox.is_none() || self.containers.iter().any(|c| c.run.is_none() && !c.done);
        if waiting || !self.shared.exits.active() {
            return now + WATCH_INTERVAL;
        }
        self.containers
            .iter()
            .flat_map(|c| [&c.startup, &c.liveness, &c.readiness])
            .flatten()
            .map(Probe::next_due)
            .fold(now + RELIST_INTERVAL, Instant::min)
            .max(now)
    }

    /// Reads what an earlier process of this node left for this pod: the runs it started.
    fn adopt(&mut self) {
        let Ok(first_set_up) = std::fs::metadata(self.dir.join("pod.json")) else {
            return;
        };
        // The pod started here when its directory was first set up, not now (kubelet keeps
        // `startTime` across its restarts too).
        if let Ok(at) = first_set_up.modified() {
            self.start_time = rfc3339(time::OffsetDateTime::from(at));
        }
        let uid = self.pod.uid.clone();
        let (exits, wake) = (self.shared.exits.clone(), self.wake.clone());
        for c in &mut self.containers {
            let base = self.dir.join("containers").join(&c.status.name);
            let Some(last) = std::fs::read_dir(&base)
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .max()
            else {
                continue;
            };
            let (dir, runc_id) = run_paths(&self.dir, &uid, &c.status.name, last);
            c.status.restart_count = last;
            if let Ok(id) = std::fs::read_to_string(dir.join(IMAGE_ID_FILE)) {
                c.status.image_id = id;
            }
            reset_probes(c);
            tracing::info!(pod = %self.key.name, container = %c.status.name, run = last, "adopting a container run of an earlier process");
            c.run = Some(ActiveRun::new(last, runc_id, dir, &exits, &wake));
        }
    }

    /// One look at every container: notice exits, start what should run.
    async fn step(&mut self) {
        if self.evicted.is_some() {
            return;
        }
        if self.sandbox.is_none() {
            if let Some((at, _)) = self.setup_retry
                && Instant::now() < at
            {
                return;
            }
            match self.set_up_pod().await {
                Ok((sandbox, volumes, pid_namespace)) => {
                    let parts = (sandbox, volumes);
                    self.pid_namespace = pid_namespace;
                    let netns = match &parts.0.network {
                        super::sandbox::Namespace::Path(p) => Some(p.clone()),
                        super::sandbox::Namespace::Host => None,
                    };
                    self.shared.set_netns(&self.key, &self.pod.uid, netns);
                    tracing::debug!(pod = %self.key.name, "pod sandbox set up");
                    self.sandbox = Some(parts);
                    self.setup_error = None;
                    self.setup_retry = None;
                }
                Err(SetUpError::Claim(why) | SetUpError::Mount(why)) => {
                    // Waiting for a claim to exist or be bound (nothing of the pod is set up
                    // meanwhile), or a volume that would not mount: tried again soon, then
                    // less often, told once per distinct reason.
                    if self.setup_error.as_deref() != Some(why.as_str()) {
                        tracing::info!(pod = %self.key.name, namespace = %self.key.namespace, "{why}");
                        self.note(true, "FailedMount", why.clone());
                    }
                    let wait = self.setup_retry.map_or(CLAIM_BACKOFF_MIN, |(_, w)| w);
                    self.setup_retry =
                        Some((Instant::now() + wait, (wait * 2).min(CLAIM_BACKOFF_MAX)));
                    self.setup_error = Some(why);
                    return;
                }
                Err(SetUpError::Other(why)) => {
                    if self.setup_error.as_deref() != Some(why.as_str()) {
                        tracing::warn!(pod = %self.key.name, namespace = %self.key.namespace, error = %why, "cannot set the pod up");
                    }
                    self.setup_error = Some(why);
                    return;
                }
                Err(SetUpError::Network(e)) => {
                    let why = e.to_string();
                    let new = self.setup_error.as_deref() != Some(why.as_str());
                    if let super::cni::CniError::NotReady(_) = e {
                        // Waiting for the node's pod block: checked again shortly (not at
                        // once: each try also fetches the pod's objects).
                        if new {
                            tracing::info!(pod = %self.key.name, namespace = %self.key.namespace, "{why}");
                            self.note(true, "NetworkNotReady", why.clone());
                        }
                        self.setup_retry =
                            Some((Instant::now() + NETWORK_BACKOFF_MIN, NETWORK_BACKOFF_MIN));
                    } else {
                        // kubelet's event for a sandbox whose network set-up failed.
                        tracing::warn!(pod = %self.key.name, namespace = %self.key.namespace, error = %why, "cannot set up the pod's network");
                        self.note(
                            true,
                            "FailedCreatePodSandBox",
                            format!(
                                "Failed to create pod sandbox: failed to set up network for pod {:?}: {why}",
                                self.pod.uid
                            ),
                        );
                        let wait = self.setup_retry.map_or(NETWORK_BACKOFF_MIN, |(_, w)| w);
                        self.setup_retry =
                            Some((Instant::now() + wait, (wait * 2).min(NETWORK_BACKOFF_MAX)));
                    }
                    self.setup_error = Some(why);
                    return;
                }
            }
        }
        if self.volumes_refreshed.elapsed() >= VOLUME_REFRESH {
            self.volumes_refreshed = Instant::now();
            self.refresh_volumes().await;
        }
        let policy = self.pod.restart_policy;
        for i in 0..self.containers.len() {
            self.observe(i, policy).await;
            self.probe(i).await;
        }
        // Init containers run one at a time, in order; app containers once all succeeded.
        let next_init = self
            .containers
            .iter()
            .position(|c| c.init && !init_succeeded(c));
        let startable: Vec<usize> = match next_init {
            Some(i) => vec![i],
            None => (0..self.containers.len())
                .filter(|&i| !self.containers[i].init)
                .collect(),
        };
        for i in startable {
            let c = &self.containers[i];
            if c.run.is_some() || c.done {
                continue;
            }
            if let Some(until) = c.backoff_until
                && Instant::now() < until
            {
                continue;
            }
            self.start(i).await;
        }
    }

    /// Sets the pod up: namespaces, its network interface (CNI ADD, or the record of an
    /// earlier process's), its etc files with its addresses, volumes, the shared PID
    /// namespace.
    async fn set_up_pod(
        &mut self,
    ) -> Result<
        (
            super::sandbox::Sandbox,
            super::volumes::Volumes,
            Option<PathBuf>,
        ),
        SetUpError,
    > {
        let dir = self.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Written once: its time is the pod's startTime for a process that adopts it.
        let marker = dir.join("pod.json");
        if !marker.exists() {
            write_atomic(&marker, self.pod.pod.as_bytes())
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let objects = self.fetch_objects(true).await?;
        // A claim not bound yet is waited for before the sandbox and network are made.
        if let Err(e) = super::volumes::claims::check_bound(&self.spec, &objects) {
            return Err(SetUpError::Claim(e.to_string()));
        }
        let config = &self.shared.config;
        let host = super::sandbox::host_files(&config.resolv_conf).map_err(|e| e.to_string())?;
        let cluster = config
            .view
            .as_ref()
            .and_then(|n| n.read(|v| v.cluster.clone()));
        let dns = super::sandbox::ClusterDns {
            server: cluster.as_ref().and_then(|c| c.cluster_dns),
            domain: cluster
                .map(|c| c.cluster_domain.trim_end_matches('.').to_ascii_lowercase())
                .unwrap_or_else(|| CLUSTER_DOMAIN.to_owned()),
        };
        let spec = self.spec.clone();
        let host_ips = self.shared.config.host_ips.clone();
        let local_storage = self.shared.config.local_storage.clone();
        let sandbox = {
            let (dir, spec, host) = (dir.clone(), spec.clone(), host.clone());
            tokio::task::spawn_blocking(move || super::sandbox::create(&dir, &spec, &host))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };
        let pod_ips = match &sandbox.network {
            super::sandbox::Namespace::Host => host_ips.clone(),
            super::sandbox::Namespace::Path(netns) => {
                let identity = super::cni::PodIdentity {
                    namespace: self.key.namespace.clone(),
                    name: self.key.name.clone(),
                    uid: self.pod.uid.clone(),
                };
                let ports = super::cni::port_mappings(&spec);
                let network = &self.shared.config.network;
                let attached = network
                    .attach(&dir, &identity, netns, ports)
                    .await
                    .map_err(SetUpError::Network)?;
                if attached.adopted {
                    tracing::info!(pod = %self.key.name, ips = ?attached.ips, "adopting the pod's network interface of an earlier process");
                    // The spec's CHECK tells whether it is still as ADD left it; a pod whose
                    // network broke while no keelson ran is reported, not rebuilt under it.
                    if let Err(e) = network.check(&dir).await {
                        tracing::warn!(pod = %self.key.name, error = %e, "the pod's network fails its CNI CHECK");
                        self.note(true, "NetworkCheckFailed", e.to_string());
                    }
                } else {
                    tracing::info!(pod = %self.key.name, namespace = %self.key.namespace, ips = ?attached.ips, "pod network interface set up");
                }
                attached.ips
            }
        };
        self.pod_ips = pod_ips.clone();
        tokio::task::spawn_blocking(move || {
            let ctx = pod_context(&spec, &pod_ips, &host_ips);
            super::sandbox::write_files(&sandbox, &spec, ctx.pod_ips, &host, &dns)
                .map_err(|e| e.to_string())?;
            let sources = super::volumes::Sources {
                pod: ctx,
                objects: &objects,
                local_storage: &local_storage,
            };
            // kubelet's FailedMount: told to the pod's events, tried again with a back-off.
            let volumes = super::volumes::set_up(&dir, &sources)
                .map_err(|e| SetUpError::Mount(e.to_string()))?;
            // shareProcessNamespace: one PID namespace for the pod, held by its own init.
            let shared_pid = spec["spec"]["shareProcessNamespace"].as_bool() == Some(true)
                && spec["spec"]["hostPID"].as_bool() != Some(true);
            let pid_namespace = if shared_pid {
                Some(monitor::podinit::ensure(&dir.join("ns"))?)
            } else {
                None
            };
            Ok((sandbox, volumes, pid_namespace))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Brings ConfigMap, Secret and projected volumes up to date with their objects (as
    /// kubelet's periodic sync does); a container sees the new files at once (atomic swap).
    async fn refresh_volumes(&mut self) {
        let has_api_volumes = self.spec["spec"]["volumes"].as_array().is_some_and(|v| {
            v.iter().any(|v| {
                v.get("configMap").is_some()
                    || v.get("secret").is_some()
                    || v.get("projected").is_some()
            })
        });
        if !has_api_volumes {
            return;
        }
        let objects = match self.fetch_objects(false).await {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(pod = %self.key.name, error = %e, "cannot refresh the pod's volumes now");
                return;
            }
        };
        let (dir, spec, pod_ips, host_ips, local_storage) = (
            self.dir.clone(),
            self.spec.clone(),
            self.pod_ips.clone(),
            self.shared.config.host_ips.clone(),
            self.shared.config.local_storage.clone(),
        );
        let updated = tokio::task::spawn_blocking(move || {
            let sources = super::volumes::Sources {
                pod: pod_context(&spec, &pod_ips, &host_ips),
                objects: &objects,
                local_storage: &local_storage,
            };
            super::volumes::update(&dir, &sources)
        })
        .await;
        match updated {
            Ok(Ok(names)) if !names.is_empty() => {
                tracing::info!(pod = %self.key.name, volumes = ?names, "volumes updated from their objects")
            }
            Ok(Err(e)) => {
                tracing::warn!(pod = %self.key.name, error = %e, "cannot update the pod's volumes")
            }
            _ => {}
        }
    }

    /// The ConfigMaps and Secrets the pod references, and with `claims` its
    /// PersistentVolumeClaims (needed only to set the pod up). A missing one is left out (the
    /// consumer decides whether it was optional); any other failure is an error.
    async fn fetch_objects(&self, claims: bool) -> Result<super::env::Prefetched, String> {
        let ns = self.key.namespace.clone();
        let mut out = super::env::Prefetched::default();
        let refs = super::env::references(&self.spec);
        let claims =
            refs.claims
                .into_iter()
                .filter(|_| claims)
                .map(|name| Wanted::PersistentVolumeClaim {
                    namespace: ns.clone(),
                    name,
                });
        let wanted = refs
            .config_maps
            .into_iter()
            .map(|name| Wanted::ConfigMap {
                namespace: ns.clone(),
                name,
            })
            .chain(refs.secrets.into_iter().map(|name| Wanted::Secret {
                namespace: ns.clone(),
                name,
            }))
            .chain(claims);
        for w in wanted {
            match self.shared.objects.get(&w).await {
                Ok(obj) => {
                    out = match w {
                        Wanted::ConfigMap { .. } => out.with_config_map(obj),
                        Wanted::Secret { .. } => out.with_secret(obj),
                        Wanted::PersistentVolumeClaim { namespace, name } => {
                            out.claims
                                .insert(super::env::ObjectKey { namespace, name }, obj);
                            out
                        }
                        Wanted::ServiceAccountToken { .. }
                        | Wanted::LocalVolume { .. }
                        | Wanted::LocalVolumeCleaned { .. } => out,
                    }
                }
                Err(ObjectError::NotFound(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        out.tokens = self.fetch_tokens().await?;
        Ok(out)
    }

    /// The pod's service account tokens: those held while under 80% of their lifetime, the
    /// others asked of the server again (bound to this pod, for its own service account).
    async fn fetch_tokens(&self) -> Result<HashMap<(String, i64), String>, String> {
        let mut out = HashMap::new();
        let account = self.spec["spec"]["serviceAccountName"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned();
        for (audience, seconds) in super::env::token_sources(&self.spec) {
            let key = (audience.clone(), seconds);
            let fresh = {
                let held = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                held.get(&key)
                    .filter(|t| t.fetched.elapsed() < t.lifetime.mul_f64(0.8))
                    .map(|t| t.token.clone())
            };
            if let Some(token) = fresh {
                out.insert(key, token);
                continue;
            }
            let wanted = Wanted::ServiceAccountToken {
                namespace: self.key.namespace.clone(),
                pod: self.key.name.clone(),
                pod_uid: self.pod.uid.clone(),
                service_account: account.clone(),
                audience,
                seconds,
            };
            let answer = self
                .shared
                .objects
                .get(&wanted)
                .await
                .map_err(|e| e.to_string())?;
            let token = answer["token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("the server's answer for {wanted} holds no token"))?
                .to_owned();
            let lifetime = answer["expirationSeconds"]
                .as_u64()
                .map_or(Duration::from_secs(600), Duration::from_secs);
            tracing::debug!(pod = %self.key.name, ?lifetime, "fetched a service account token");
            self.tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    key.clone(),
                    HeldToken {
                        token: token.clone(),
                        fetched: Instant::now(),
                        lifetime,
                    },
                );
            out.insert(key, token);
        }
        Ok(out)
    }

    /// Looks at container `i`'s run: has it exited? Then decide about a restart.
    async fn observe(&mut self, i: usize, policy: RestartPolicy) {
        let Some(run) = &self.containers[i].run else {
            return;
        };
        let state_dir = run.dir.join("state");
        let runc_id = run.runc_id.clone();
        let observed = match monitor::observe(&state_dir) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(pod = %self.key.name, error = %e, "cannot read a container's monitor files");
                return;
            }
        };
        let exit = match observed {
            Observed::Absent | Observed::Starting { .. } => return,
            Observed::Running { started_at, .. } => {
                let c = &mut self.containers[i];
                let started = started_at.map(rfc3339).unwrap_or_else(now_rfc3339);
                if !matches!(c.status.state, ContainerState::Running { .. }) {
                    c.status.state = ContainerState::Running {
                        started_at: started,
                    };
                    c.status.container_id = format!("keelson://{runc_id}");
                }
                c.status.ready = !c.init && is_ready(c);
                return;
            }
            Observed::Exited(record) => record,
            Observed::Lost { container_pid } => {
                // The monitor is gone (killed, or the machine rebooted): nobody holds the
                // container's pipes or will reap it. Stop it and count it as a failed run.
                let runc = self.shared.config.runc.clone();
                if container_pid.is_some() {
                    let _ = runc.kill(&runc_id, Signal::SIGKILL, true).await;
                }
                ExitRecord {
                    exit_code: 137,
                    signal: Some(9),
                    started_at: None,
                    finished_at: time::OffsetDateTime::now_utc(),
                    oom_killed: false,
                    start_error: Some("the container's monitor was lost (node restarted?)".into()),
                }
            }
        };
        self.finish_run(i, exit, policy).await;
    }

    /// Runs container `i`'s probes that are due: startup first, then liveness and readiness.
    /// A failed startup or liveness probe kills the container (it restarts per policy).
    async fn probe(&mut self, i: usize) {
        let now = Instant::now();
        let c = &self.containers[i];
        let (Some(run), ContainerState::Running { .. }) = (&c.run, &c.status.state) else {
            return;
        };
        let runc_id = run.runc_id.clone();
        let netns = match self.sandbox.as_ref() {
            Some((s, _)) if !s.host_network() => match &s.network {
                super::sandbox::Namespace::Path(p) => Some(p.clone()),
                super::sandbox::Namespace::Host => None,
            },
            _ => None,
        };
        let runc = self.shared.config.runc.clone();
        let target = probes::Target {
            runc: &runc,
            runc_id: &runc_id,
            netns: netns.as_deref(),
        };
        let name = c.status.name.clone();
        let started = c.startup.as_ref().is_none_or(|p| p.healthy == Some(true));
        let mut kill = None;
        for which in ["startup", "liveness", "readiness"] {
            if which != "startup" && !started {
                break;
            }
            let c = &mut self.containers[i];
            let probe = match which {
                "startup" => c.startup.as_mut(),
                "liveness" => c.liveness.as_mut(),
                _ => c.readiness.as_mut(),
            };
            let Some(probe) = probe.filter(|p| p.due(now)) else {
                continue;
            };
            if which == "startup" && probe.healthy == Some(true) {
                continue;
            }
            let outcome = probes::run(&probe.spec, &target).await;
            let verdict = probe.record(&outcome, Instant::now());
            if let probes::Outcome::Failure(why) = &outcome {
                let label = format!("{}{}", which[..1].to_uppercase(), &which[1..]);
                let msg = format!("{label} probe failed: {why}");
                self.note(true, "Unhealthy", msg);
            }
            if verdict == Some(false) && which != "readiness" {
                kill = Some(format!(
                    "Container {name} failed {which} probe, will be restarted"
                ));
            }
        }
        let c = &mut self.containers[i];
        c.status.ready = !c.init && is_ready(c);
        if let Some(why) = kill {
            tracing::info!(pod = %self.key.name, container = %name, "{why}");
            self.note(false, "Killing", why);
            let _ = runc.kill(&runc_id, Signal::SIGKILL, true).await;
        }
    }

    async fn finish_run(&mut self, i: usize, exit: ExitRecord, policy: RestartPolicy) {
        let shared = self.shared.clone();
        let c = &mut self.containers[i];
        let Some(run) = c.run.take() else { return };
        let ran_for = run.started.elapsed();
        let _ = shared.config.runc.delete(&run.runc_id, true).await;
        let rootfs = run.dir.join("bundle").join("rootfs");
        unmount_quietly(&rootfs);
        // Keep the run directory: its number is the restart count, and its exit file the
        // last state. Only its bulky parts go.
        let _ = std::fs::remove_dir_all(run.dir.join("upper"));
        let _ = std::fs::remove_dir_all(run.dir.join("work"));
        let started_at = exit
            .started_at
            .map(rfc3339)
            .or_else(|| match &c.status.state {
                ContainerState::Running { started_at } => Some(started_at.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let message = termination_message(
            &run.dir,
            &c.spec,
            exit.exit_code,
            &shared,
            &self.key,
            &self.pod.uid,
            run.number,
        )
        .or_else(|| exit.start_error.clone())
        .unwrap_or_default();
        let reason = if exit.oom_killed {
            "OOMKilled"
        } else if exit.start_error.is_some() {
            "StartError"
        } else if exit.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let terminated = ContainerState::Terminated {
            exit_code: exit.exit_code,
            reason: reason.into(),
            message,
            started_at,
            finished_at: rfc3339(exit.finished_at),
        };
        tracing::info!(pod = %self.key.name, namespace = %self.key.namespace, container = %c.status.name, exit_code = exit.exit_code, reason, "container exited");
        c.status.ready = false;
        let restart = match policy {
            RestartPolicy::Always => !c.init || exit.exit_code != 0,
            RestartPolicy::OnFailure => exit.exit_code != 0,
            RestartPolicy::Never => false,
        };
        if !restart {
            c.status.state = terminated;
            c.done = true;
            return;
        }
        if ran_for >= BACKOFF_RESET {
            c.backoff = BACKOFF_MIN;
        }
        let wait = c.backoff;
        c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
        c.backoff_until = Some(Instant::now() + wait);
        c.status.last_state = Some(terminated);
        c.status.restart_count = run.number + 1;
        let back_off_note = format!(
            "Back-off restarting failed container {} in pod {}_{}({})",
            c.status.name, self.key.name, self.key.namespace, self.pod.uid
        );
        c.status.state = waiting(
            "CrashLoopBackOff",
            &format!(
                "back-off {}s restarting failed container={} pod={}_{}({})",
                wait.as_secs(),
                c.status.name,
                self.key.name,
                self.key.namespace,
                self.pod.uid
            ),
        );
        self.note(true, "BackOff", back_off_note);
    }

    /// Starts container `i`'s next run: image, environment, rootfs, bundle, monitor.
    async fn start(&mut self, i: usize) {
        let number = self.containers[i].status.restart_count;
        let name = self.containers[i].status.name.clone();
        let image = match self.image(i).await {
            Some(image) => image,
            None => return,
        };
        let (dir, runc_id) = run_paths(&self.dir, &self.pod.uid, &name, number);
        let spec = self.containers[i].spec.clone();
        match self.create_run(&spec, &image, &dir, &runc_id, number).await {
            Ok(()) => {
                // For a later process that adopts this run: which image it runs.
                let _ = write_atomic(&dir.join(IMAGE_ID_FILE), image.repo_digest.as_bytes());
                let run =
                    ActiveRun::new(number, runc_id.clone(), dir, &self.shared.exits, &self.wake);
                let c = &mut self.containers[i];
                c.run = Some(run);
                c.backoff_until = None;
                reset_probes(c);
                c.status.container_id = format!("keelson://{runc_id}");
                c.status.state = ContainerState::Running {
                    started_at: now_rfc3339(),
                };
                c.status.ready = !c.init && is_ready(c);
                self.note(false, "Started", format!("Started container {name}"));
                self.publish();
            }
            Err(Failure::Config(why)) => {
                // Nothing ran: kubelet's CreateContainerConfigError; tried again shortly.
                self.note(true, "Failed", format!("Error: {why}"));
                let c = &mut self.containers[i];
                c.status.state = waiting("CreateContainerConfigError", &why);
                c.backoff_until = Some(Instant::now() + Duration::from_secs(2));
            }
            Err(Failure::Start(why)) => {
                tracing::warn!(pod = %self.key.name, container = %name, error = %why, "cannot start a container");
                let exit = ExitRecord {
                    exit_code: monitor::START_ERROR_EXIT_CODE,
                    signal: None,
                    started_at: None,
                    finished_at: time::OffsetDateTime::now_utc(),
                    oom_killed: false,
                    start_error: Some(why),
                };
                // Nothing to watch: the run ends here.
                let c = &mut self.containers[i];
                c.run = Some(ActiveRun {
                    number,
                    runc_id,
                    dir,
                    started: Instant::now(),
                    _watch: None,
                });
                let policy = self.pod.restart_policy;
                self.finish_run(i, exit, policy).await;
            }
        }
    }

    /// The container's image, pulled per its `imagePullPolicy`; `None` (with the waiting
    /// state set) while it cannot be had.
    async fn image(&mut self, i: usize) -> Option<Image> {
        if let Some(image) = &self.containers[i].image {
            return Some(image.clone());
        }
        let c = &self.containers[i];
        let reference = c.status.image.clone();
        let policy = c.spec["imagePullPolicy"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| default_pull_policy(&reference).into());
        let local = self.shared.images.get(&reference);
        let result = match (policy.as_str(), local) {
            ("Never", Some(image)) | ("IfNotPresent", Some(image)) => Ok(image),
            ("Never", None) => Err((
                "ErrImageNeverPull",
                format!("Container image \"{reference}\" is not present with pull policy of Never"),
            )),
            _ => {
                self.containers[i].status.state = waiting("ContainerCreating", "");
                self.publish();
                let auths = self.pull_secrets().await;
                let key = self.key.clone();
                let progress = move |p: super::images::Progress| {
                    tracing::debug!(pod = %key.name, progress = ?p, "pulling");
                };
                tracing::info!(pod = %self.key.name, image = %reference, "pulling image");
                self.note(false, "Pulling", format!("Pulling image \"{reference}\""));
                let pull_started = Instant::now();
                match self.shared.images.pull(&reference, &auths, &progress).await {
                    Ok(image) => {
                        tracing::info!(pod = %self.key.name, image = %reference, id = %image.id, "pulled image");
                        self.note(
                            false,
                            "Pulled",
                            format!(
                                "Successfully pulled image \"{reference}\" in {:.3}s",
                                pull_started.elapsed().as_secs_f64()
                            ),
                        );
                        Ok(image)
                    }
                    Err(e) => Err(("ErrImagePull", pull_message(&reference, &e))),
                }
            }
        };
        let c = &mut self.containers[i];
        match result {
            Ok(image) => {
                c.status.image_id = image.repo_digest.clone();
                c.image = Some(image.clone());
                Some(image)
            }
            Err((reason, message)) => {
                // ErrImagePull now, ImagePullBackOff while waiting for the next try.
                let again = c.backoff;
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
                c.backoff_until = Some(Instant::now() + again);
                let shown = if matches!(c.status.state, ContainerState::Waiting { ref reason, .. } if reason == "ErrImagePull" || reason == "ImagePullBackOff")
                {
                    "ImagePullBackOff"
                } else {
                    reason
                };
                tracing::warn!(pod = %self.key.name, image = %c.status.image, "{message}");
                c.status.state = waiting(shown, &message);
                let image = c.status.image.clone();
                if shown == "ImagePullBackOff" {
                    self.note(
                        true,
                        "BackOff",
                        format!("Back-off pulling image \"{image}\""),
                    );
                } else {
                    self.note(true, "Failed", message);
                }
                None
            }
        }
    }

    async fn pull_secrets(&self) -> Vec<super::images::RegistryAuth> {
        let mut out = Vec::new();
        for s in self.spec["spec"]["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(name) = s["name"].as_str() else {
                continue;
            };
            let w = Wanted::Secret {
                namespace: self.key.namespace.clone(),
                name: name.to_owned(),
            };
            let Ok(secret) = self.shared.objects.get(&w).await else {
                continue;
            };
            for (key, bytes) in super::env::secret_bytes(&secret) {
                if (key == ".dockerconfigjson" || key == ".dockercfg")
                    && let Ok(auths) = super::images::auths_from_dockerconfigjson(&bytes)
                {
                    out.extend(auths);
                }
            }
        }
        out
    }

    async fn create_run(
        &self,
        spec: &Value,
        image: &Image,
        dir: &Path,
        runc_id: &str,
        number: u32,
    ) -> Result<(), Failure> {
        let objects = self.fetch_objects(false).await.map_err(Failure::Config)?;
        let ctx = pod_context(&self.spec, &self.pod_ips, &self.shared.config.host_ips);
        let services: Vec<super::env::ServiceLink> = self
            .shared
            .config
            .view
            .as_ref()
            .map(|v| {
                v.read(|v| {
                    v.services
                        .values()
                        .filter_map(|s| service_link(s))
                        .collect()
                })
            })
            .unwrap_or_default();
        let base = super::env::service_vars(&self.spec, &services);
        let env = super::env::resolve_with(&ctx, spec, &objects, base)
            .map_err(|e| Failure::Config(e.to_string()))?;
        for w in &env.warnings {
            tracing::warn!(pod = %self.key.name, "{w}");
        }
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in [&rootfs, &dir.join("upper"), &dir.join("work")] {
            std::fs::create_dir_all(d)
                .map_err(|e| Failure::Start(format!("{}: {e}", d.display())))?;
        }
        mount_overlay(
            &image.layers,
            &dir.join("upper"),
            &dir.join("work"),
            &rootfs,
        )
        .map_err(Failure::Start)?;
        tracing::debug!(pod = %self.key.name, "container rootfs mounted");
        let Some((sandbox, volumes)) = &self.sandbox else {
            unmount_quietly(&rootfs);
            return Err(Failure::Start("the pod's sandbox is not set up".into()));
        };
        // kubelet's termination message: a file of the node's, bind-mounted where the
        // container writes it, read when the container ends.
        let message_file = dir.join("termination-log");
        let _ = std::fs::write(&message_file, b"");
        let message_path = spec["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log");
        let extra = [super::bundle::Mount {
            destination: message_path.to_owned(),
            kind: "bind".into(),
            source: message_file.display().to_string(),
            options: vec!["rbind".into(), "rw".into()],
        }];
        let image_config = super::bundle::ImageConfig {
            entrypoint: image.config.entrypoint.clone(),
            cmd: image.config.cmd.clone(),
            env: image.config.env.clone(),
            working_dir: image.config.working_dir.clone(),
            user: image.config.user.clone(),
        };
        let input = super::bundle::ContainerInput {
            pod: &self.spec,
            container: spec,
            image: &image_config,
            env: &env.vars,
            rootfs: &rootfs,
            sandbox,
            volumes,
            node: &self.shared.node_settings,
            pod_pid_namespace: self.pid_namespace.as_deref(),
            extra_mounts: &extra,
        };
        if let Err(e) = super::bundle::write(&bundle, &input) {
            unmount_quietly(&rootfs);
            return Err(Failure::Config(e.to_string()));
        }
        tracing::debug!(pod = %self.key.name, "container bundle written");
        let name = spec["name"].as_str().unwrap_or_default();
        let log_path = self
            .shared
            .log_dir(&self.key, &self.pod.uid, name)
            .join(format!("{number}.log"));
        let monitor_spec = MonitorSpec {
            id: runc_id.to_owned(),
            bundle: bundle.clone(),
            state_dir: dir.join("state"),
            log_path,
            rotation: self.shared.config.rotation,
            runc: self.shared.config.runc.clone(),
            input: monitor::Input {
                stdin: spec["stdin"].as_bool().unwrap_or(false),
                stdin_once: spec["stdinOnce"].as_bool().unwrap_or(false),
                tty: spec["tty"].as_bool().unwrap_or(false),
            },
        };
        match monitor::spawn(&monitor_spec).await {
            Ok(s) => {
                tracing::info!(pod = %self.key.name, namespace = %self.key.namespace, container = name, pid = s.container_pid, "container started");
                Ok(())
            }
            // A monitor already runs this very run (started by an earlier process): the
            // container is live and is adopted, never deleted.
            Err(monitor::Error::AlreadyMonitored { pid, .. }) => {
                tracing::info!(pod = %self.key.name, container = name, monitor = pid, "adopting a container whose monitor already runs");
                Ok(())
            }
            Err(e) => {
                let _ = self.shared.config.runc.delete(runc_id, true).await;
                unmount_quietly(&rootfs);
                Err(Failure::Start(e.to_string()))
            }
        }
    }

    /// Tells the stream server where each container's current (or last) run is.
    fn sync_runs(&self) {
        for c in &self.containers {
            let (number, runc_id) = match &c.run {
                Some(r) => (r.number, Some(r.runc_id.clone())),
                None if c.done => (c.status.restart_count, None),
                None if c.status.restart_count > 0 => (c.status.restart_count - 1, None),
                None => continue,
            };
            let (dir, _) = run_paths(&self.dir, &self.pod.uid, &c.status.name, number);
            self.shared.set_run(
                &self.key,
                &self.pod.uid,
                &c.status.name,
                Run {
                    number,
                    runc_id,
                    state_dir: dir.join("state"),
                    state: c.status.state.clone(),
                },
            );
        }
    }

    /// Records an event about the pod (best effort).
    fn note(&self, warning: bool, reason: &str, message: String) {
        let _ = self.shared.notes.try_send(PodNote {
            key: self.key.clone(),
            uid: self.pod.uid.clone(),
            warning,
            reason: reason.into(),
            message,
        });
    }

    fn publish(&mut self) {
        self.sync_runs();
        let state = self.state();
        if state.ready != self.was_ready {
            self.was_ready = state.ready;
            self.ready_since = now_rfc3339();
        }
        let mut state = state;
        state.ready_since = self.ready_since.clone();
        self.shared.publish(&self.key, state);
    }

    fn state(&self) -> PodState {
        let mut init = Vec::new();
        let mut main = Vec::new();
        for c in &self.containers {
            let mut status = c.status.clone();
            if let Some(why) = &self.setup_error
                && matches!(status.state, ContainerState::Waiting { .. })
            {
                status.state = waiting("ContainerCreating", why);
            }
            if c.init {
                init.push(status);
            } else {
                main.push(status);
            }
        }
        let initialized = self
            .containers
            .iter()
            .filter(|c| c.init)
            .all(init_succeeded);
        let mut phase = phase(self.pod.restart_policy, initialized, &init, &main);
        if self.evicted.is_some() {
            phase = Phase::Failed;
        }
        let ready = phase == Phase::Running && initialized && main.iter().all(|c| c.ready);
        PodState {
            phase,
            pod_ips: self.pod_ips.clone(),
            start_time: self.start_time.clone(),
            ready,
            ready_since: self.ready_since.clone(),
            containers: main,
            init_containers: init,
            initialized,
            ended_by_node: self
                .evicted
                .as_ref()
                .map(|message| super::pods::StatusReason {
                    reason: super::eviction::REASON.into(),
                    message: message.clone(),
                }),
        }
    }

    /// Node-pressure eviction: kills every container at once (kubelet's grace period 0 for a
    /// hard threshold), records their ends and marks the pod evicted, so it reports Failed
    /// and nothing of it starts again. Its files stay until the pod is deleted.
    async fn evict(&mut self, message: String) {
        if self.evicted.is_some() || self.pod.finished {
            return;
        }
        self.note(true, "Evicted", message.clone());
        self.evicted = Some(message);
        let runc = self.shared.config.runc.clone();
        for c in self.containers.iter().filter(|c| c.run.is_some()) {
            self.note(
                false,
                "Killing",
                format!("Stopping container {}", c.status.name),
            );
        }
        for c in &self.containers {
            if let Some(run) = &c.run {
                let _ = runc.kill(&run.runc_id, Signal::SIGKILL, true).await;
            }
        }
        // The monitors record the ends; wait for them briefly so the Failed report carries
        // each container's exit.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && self.containers.iter().any(|c| c.run.is_some()) {
            for i in 0..self.containers.len() {
                self.observe(i, RestartPolicy::Never).await;
            }
            if self.containers.iter().any(|c| c.run.is_some()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for c in &mut self.containers {
            c.done = true;
            c.status.ready = false;
        }
    }

    /// Stops every container (SIGTERM, the grace period, SIGKILL) and removes the pod.
    async fn stop(&mut self) {
        self.stop_containers(Duration::MAX).await;
        lock(&self.shared.running).remove(&self.key);
        detach_network(&self.shared, &self.dir, &self.key.name).await;
        remove_pod_dir(&self.shared, &self.dir).await;
        if let Err(e) = super::bundle::remove_pod_cgroup(CGROUP_PARENT, &self.pod.uid) {
            tracing::debug!(pod = %self.key.name, error = %e, "cannot remove the pod's cgroup");
        }
        let log_dir = self.shared.config.log_root.join(format!(
            "{}_{}_{}",
            self.key.namespace, self.key.name, self.pod.uid
        ));
        let _ = std::fs::remove_dir_all(log_dir);
        tracing::info!(pod = %self.key.name, namespace = %self.key.namespace, "pod stopped and removed");
    }

    /// Ends every container the way kubelet does: preStop hooks, SIGTERM, the pod's grace
    /// period (at most `cap`), SIGKILL; then removes them from runc. The pod's files stay.
    async fn stop_containers(&mut self, cap: Duration) {
        let grace = self
            .spec
            .pointer("/metadata/deletionGracePeriodSeconds")
            .or_else(|| self.spec.pointer("/spec/terminationGracePeriodSeconds"))
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_GRACE)
            .min(cap);
        let runc = self.shared.config.runc.clone();
        let runs: Vec<(String, PathBuf)> = self
            .containers
            .iter()
            .filter_map(|c| c.run.as_ref().map(|r| (r.runc_id.clone(), r.dir.clone())))
            .collect();
        for c in self.containers.iter().filter(|c| c.run.is_some()) {
            self.note(
                false,
                "Killing",
                format!("Stopping container {}", c.status.name),
            );
        }
        let deadline = Instant::now() + grace;
        // preStop hooks run first, within the grace period (kubelet's order), all at once.
        let netns = match self.sandbox.as_ref() {
            Some((s, _)) if !s.host_network() => match &s.network {
                super::sandbox::Namespace::Path(p) => Some(p.clone()),
                super::sandbox::Namespace::Host => None,
            },
            _ => None,
        };
        let hooks: Vec<(String, probes::Spec)> = self
            .containers
            .iter()
            .filter_map(|c| {
                let run = c.run.as_ref()?;
                let spec = probes::Spec::of(&c.spec["lifecycle"], "preStop")
                    .ok()
                    .flatten()?;
                Some((
                    run.runc_id.clone(),
                    probes::Spec {
                        timeout: grace,
                        ..spec
                    },
                ))
            })
            .collect();
        let runs_hooks = hooks.iter().map(|(id, spec)| {
            let runc = &runc;
            let netns = netns.as_deref();
            async move {
                let target = probes::Target {
                    runc,
                    runc_id: id,
                    netns,
                };
                if let probes::Outcome::Failure(why) = probes::run(spec, &target).await {
                    tracing::info!(container = %id, "preStop hook failed: {why}");
                }
            }
        });
        futures_util::future::join_all(runs_hooks).await;
        for (id, _) in &runs {
            let _ = runc.kill(id, Signal::SIGTERM, false).await;
        }
        for (id, dir) in &runs {
            while Instant::now() < deadline {
                match monitor::observe(&dir.join("state")) {
                    Ok(Observed::Running { .. } | Observed::Starting { .. }) => {
                        tokio::time::sleep(WATCH_INTERVAL).await;
                    }
                    _ => break,
                }
            }
            let _ = runc.kill(id, Signal::SIGKILL, true).await;
        }
        for (id, dir) in &runs {
            // The monitor writes the exit file once the container is gone; wait for it
            // briefly so no process of the pod outlives its directory.
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until
                && matches!(
                    monitor::observe(&dir.join("state")),
                    Ok(Observed::Running { .. } | Observed::Starting { .. })
                )
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = runc.delete(id, true).await;
        }
    }
}

/// What the container left at its termination message path, or with
/// `FallbackToLogsOnError` and a failure, the end of its log (kubelet: at most 4 KiB, 80 lines).
fn termination_message(
    run_dir: &Path,
    spec: &Value,
    exit_code: i32,
    shared: &Shared,
    pod: &PodKey,
    uid: &str,
    number: u32,
) -> Option<String> {
    const MAX: usize = 4096;
    let read_tail = |bytes: Vec<u8>| {
        let start = bytes.len().saturating_sub(MAX);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    };
    if let Ok(bytes) = std::fs::read(run_dir.join("termination-log"))
        && !bytes.is_empty()
    {
        return Some(read_tail(bytes));
    }
    if exit_code != 0 && spec["terminationMessagePolicy"].as_str() == Some("FallbackToLogsOnError")
    {
        let name = spec["name"].as_str().unwrap_or_default();
        let log = shared.log_dir(pod, uid, name).join(format!("{number}.log"));
        let text = std::fs::read(log).ok()?;
        let lines: Vec<String> = String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
            .collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        return Some(read_tail(tail.into_bytes()));
    }
    None
}

enum Failure {
    /// The container's configuration cannot be made (a missing ConfigMap key...).
    Config(String),
    /// runc or the rootfs failed.
    Start(String),
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState::Waiting {
        reason: reason.into(),
        message: message.into(),
    }
}

/// A running container is ready once its startup probe (if any) and readiness probe (if
/// any) have succeeded.
fn is_ready(c: &Tracked) -> bool {
    c.startup.as_ref().is_none_or(|p| p.healthy == Some(true))
        && c.readiness.as_ref().is_none_or(|p| p.healthy == Some(true))
}

/// Fresh probes for a new run of `c` (a probe that cannot be parsed is logged and left out:
/// the API validated it, so this is a node that knows less than the server).
fn reset_probes(c: &mut Tracked) {
    let now = Instant::now();
    let make = |field: &str| match probes::Spec::of(&c.spec, field) {
        Ok(spec) => spec.map(|s| Probe::new(s, now)),
        Err(e) => {
            tracing::warn!(container = %c.status.name, "{e}");
            None
        }
    };
    let (startup, liveness, readiness) = (
        make("startupProbe"),
        make("livenessProbe"),
        make("readinessProbe"),
    );
    c.startup = startup;
    c.liveness = liveness;
    c.readiness = readiness;
}

fn init_succeeded(c: &Tracked) -> bool {
    matches!(
        c.status.state,
        ContainerState::Terminated { exit_code: 0, .. }
    )
}

/// Kubernetes' pod phase from its containers (kubelet's `getPhase`).
fn phase(
    policy: RestartPolicy,
    initialized: bool,
    init: &[ContainerStatus],
    main: &[ContainerStatus],
) -> Phase {
    let failed = |c: &ContainerStatus| matches!(c.state, ContainerState::Terminated { exit_code, .. } if exit_code != 0);
    if !initialized {
        // An init container that failed for good fails the pod.
        if policy == RestartPolicy::Never && init.iter().any(failed) {
            return Phase::Failed;
        }
        return Phase::Pending;
    }
    let running = main
        .iter()
        .filter(|c| matches!(c.state, ContainerState::Running { .. }))
        .count();
    let waiting = main
        .iter()
        .filter(|c| matches!(c.state, ContainerState::Waiting { .. }))
        .count();
    let terminated = main.len() - running - waiting;
    let restarting = main
        .iter()
        .filter(|c| matches!(c.state, ContainerState::Waiting { .. }) && c.last_state.is_some())
        .count();
    if waiting > restarting {
        return Phase::Pending;
    }
    if running > 0 || restarting > 0 {
        return Phase::Running;
    }
    if terminated == main.len() && !main.is_empty() {
        if main.iter().any(failed) {
            return Phase::Failed;
        }
        return Phase::Succeeded;
    }
    Phase::Pending
}

/// kubelet's default: `Always` for `:latest` or no tag, `IfNotPresent` otherwise.
fn default_pull_policy(reference: &str) -> &'static str {
    if reference.contains('@') {
        return "IfNotPresent";
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn pull_message(reference: &str, e: &PullError) -> String {
    format!("Failed to pull image \"{reference}\": {e}")
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A Service as containers' environment sees it: only those with a cluster IP.
fn service_link(s: &crate::api::network::ServiceInfo) -> Option<super::env::ServiceLink> {
    Some(super::env::ServiceLink {
        namespace: s.key.namespace.clone(),
        name: s.key.name.clone(),
        ip: *s.cluster_ips.first()?,
        ports: s
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.protocol.name(), p.port))
            .collect(),
    })
}

fn pod_context<'a>(
    pod: &'a Value,
    pod_ips: &'a [IpAddr],
    host_ips: &'a [IpAddr],
) -> super::env::PodContext<'a> {
    super::env::PodContext {
        pod,
        pod_ips,
        host_ips,
        allocatable: super::env::Allocatable::default(),
    }
}

/// Mounts an overlay of `layers` (lowest first) with `upper` on top at `target`.
fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    if layers.is_empty() {
        return Err("the image has no layers".into());
    }
    // overlayfs lists lower layers top first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() >= 4096 {
        return Err(format!(
            "the image has too many layers ({}) for one overlay mount",
            layers.len()
        ));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| {
        format!(
            "cannot mount the container's root filesystem at {}: {e}",
            target.display()
        )
    })
}

/// Writes `path` whole or not at all (temp file, then rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn unmount_quietly(target: &Path) {
    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
}

/// Removes a pod's directory: volumes and sandbox first (they hold mounts), never following
/// a symlink out of it.
async fn remove_pod_dir(_shared: &Shared, dir: &Path) {
    let dir = dir.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        let _ = super::volumes::tear_down(&dir);
        // The shared PID namespace's init first (its containers are gone by now).
        let _ = monitor::podinit::tear_down(&dir.join("ns"));
        let _ = super::sandbox::tear_down(&dir);
        let _ = super::volumes::unmount_below(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// Stops whatever an earlier process left running for a pod no longer assigned here.
async fn remove_orphan(shared: &Shared, dir: &Path) {
    let containers = dir.join("containers");
    for c in std::fs::read_dir(&containers)
        .into_iter()
        .flatten()
        .flatten()
    {
        for run in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            let uid = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let name = c.file_name().to_string_lossy().into_owned();
            let number = run
                .file_name()
                .to_string_lossy()
                .parse::<u32>()
                .unwrap_or(0);
            let (_, id) = run_paths(dir, uid, &name, number);
            let _ = shared.config.runc.kill(&id, Signal::SIGKILL, true).await;
            let _ = shared.config.runc.delete(&id, true).await;
            unmount_quietly(&run.path().join("bundle").join("rootfs"));
        }
    }
    let uid = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    detach_network(shared, dir, uid).await;
    remove_pod_dir(shared, dir).await;
}

/// Removes the pod's network interface and releases its addresses (CNI DEL) while its
/// network namespace still exists, tried a few times; a DEL that keeps failing is logged and
/// the pod removed anyway (its namespace, and with it the interface, goes with the pod).
async fn detach_network(shared: &Shared, dir: &Path, pod: &str) {
    let mut wait = NETWORK_BACKOFF_MIN;
    for attempt in 1..=DETACH_TRIES {
        match shared.config.network.detach(dir).await {
            Ok(()) => return,
            Err(e) if attempt == DETACH_TRIES => {
                tracing::error!(%pod, error = %e, "cannot remove the pod's network (CNI DEL); its addresses may stay allocated");
            }
            Err(e) => {
                tracing::warn!(%pod, error = %e, "cannot remove the pod's network (CNI DEL); trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

/// Why a pod could not be set up.
enum SetUpError {
    /// Its network (CNI): waiting for the node's pod block, or a plugin failed.
    Network(super::cni::CniError),
    /// A claim the pod uses is missing or not bound yet: retried soon, with a back-off.
    Claim(String),
    /// A volume could not be set up (kubelet's `FailedMount`): retried with the same back-off.
    Mount(String),
    /// Anything else (namespaces, volumes, objects), as a message for the pod's status.
    Other(String),
}

impl From<String> for SetUpError {
    fn from(why: String) -> SetUpError {
        SetUpError::Other(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: ContainerState, last: Option<ContainerState>) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            image: "busybox".into(),
            image_id: String::new(),
            container_id: String::new(),
            ready: false,
            restart_count: 0,
            state,
            last_state: last,
        }
    }

    fn exited(code: i32) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            reason: "x".into(),
            message: String::new(),
            started_at: String::new(),
            finished_at: String::new(),
        }
    }

    fn running() -> ContainerState {
        ContainerState::Running {
            started_at: String::new(),
        }
    }

    #[test]
    fn phases_follow_kubelet() {
        use RestartPolicy::*;
        let creating = status(waiting("ContainerCreating", ""), None);
        assert_eq!(
            phase(Always, true, &[], std::slice::from_ref(&creating)),
            Phase::Pending
        );
        assert_eq!(
            phase(Always, true, &[], &[status(running(), None)]),
            Phase::Running
        );
        let backoff = status(waiting("CrashLoopBackOff", ""), Some(exited(1)));
        assert_eq!(phase(Always, true, &[], &[backoff]), Phase::Running);
        assert_eq!(
            phase(Never, true, &[], &[status(exited(0), None)]),
            Phase::Succeeded
        );
        assert_eq!(
            phase(
                Never,
                true,
                &[],
                &[status(exited(0), None), status(exited(2), None)]
            ),
            Phase::Failed
        );
        assert_eq!(
            phase(
                Never,
                true,
                &[],
                &[status(exited(0), None), status(running(), None)]
            ),
            Phase::Running
        );
        // Init containers: pending until they succeed; one failed for good fails the pod.
        assert_eq!(
            phase(
                Always,
                false,
                std::slice::from_ref(&creating),
                std::slice::from_ref(&creating)
            ),
            Phase::Pending
        );
        assert_eq!(
            phase(Never, false, &[status(exited(1), None)], &[creating]),
            Phase::Failed
        );
    }

    #[test]
    fn pull_policy_defaults_like_kubelet() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(default_pull_policy("registry:5000/nginx"), "Always");
        assert_eq!(default_pull_policy("registry:5000/nginx:1"), "IfNotPresent");
        assert_eq!(default_pull_policy("nginx@sha256:abcd"), "IfNotPresent");
    }
}
