//! The server end of pod assignment: which pods each tunnelled node must run, and the pod
//! status nodes send back.
//!
//! One task per server follows the change feed for all its nodes: it lists pods once, keeps a
//! compact [`PodAssignment`] of every bound pod, and on each pod event pushes the one node
//! concerned (if it has a tunnel here) what changed. A thousand nodes therefore cost one feed
//! subscription and one decode per pod event, not a watch, a connection and a decode per node.
//! A status-only change (the node's own report coming back) changes no assignment and sends
//! nothing.
//!
//! Invariants: a node's listener first receives a full listing (as soon as the index is
//! synced), then every change after it, in feed order; a listener whose queue is full is
//! dropped rather than waited for (its session lists again), so one stuck tunnel never holds
//! up the others. Status is written only through [`crate::apiserver::registry::Registry::patch`]
//! as [`Writer::Node`], so NodeRestriction decides what a node may write.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::apiserver::admission::Writer;
use crate::apiserver::patch;
use crate::apiserver::registry::{Part, Registry};
use crate::apiserver::resources::{ObjectRef, PODS};
use crate::apiserver::status::ApiError;
use crate::datastore::feed::Feed;
use crate::datastore::{EventKind, Record};
use crate::node::pods::{PodAssignment, PodKey, PodReport};
use crate::node::storage::CLEANUP_FINALIZER;

/// The kinds a node reads for its pods' claims, as [`references`] and messages name them.
const CLAIM: &str = "persistentvolumeclaim";
const VOLUME: &str = "persistentvolume";
/// Their resources' plurals.
const CLAIMS: &str = "persistentvolumeclaims";
const VOLUMES: &str = "persistentvolumes";
/// The label a local volume's node affinity names its node by.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Pushes queued for one tunnel before it counts as stuck and is made to list again.
pub const LISTENER_QUEUE: usize = 256;
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What a node's tunnel session sends its node.
#[derive(Debug, Clone)]
pub enum Push {
    /// Every pod bound to the node now (a listing).
    List(Vec<Arc<PodAssignment>>),
    Pod(Arc<PodAssignment>),
    Gone(PodKey),
}

/// Every bound pod, by node, and the tunnels waiting for their node's changes.
pub struct PodRoutes {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Set once the first listing is in; until then listeners wait for it.
    synced: bool,
    by_node: HashMap<String, BTreeMap<PodKey, Arc<PodAssignment>>>,
    /// Invariant: `node_of[k] == n` exactly when `by_node[n]` holds `k`.
    node_of: HashMap<PodKey, String>,
    listeners: HashMap<String, Vec<(u64, mpsc::Sender<Push>)>>,
    next_id: u64,
}

/// One tunnel's subscription to its node's pods; unsubscribes on drop. `rx` ends (`None`) if
/// the tunnel fell behind: subscribe again to get a fresh listing.
pub struct Listener {
    pub rx: mpsc::Receiver<Push>,
    routes: Arc<PodRoutes>,
    node: String,
    id: u64,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut state = self.routes.lock();
        if let Some(list) = state.listeners.get_mut(&self.node) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                state.listeners.remove(&self.node);
            }
        }
    }
}

// === impl PodRoutes ===

impl PodRoutes {
    pub fn new() -> Arc<PodRoutes> {
        Arc::new(PodRoutes {
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Each change under the lock is a handful of map operations that cannot panic
        // half-way, so a poisoned lock's data is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes a tunnel of `node`: a listing now (or once the index is synced), then changes.
    pub fn listen(self: &Arc<Self>, node: &str) -> Listener {
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        let mut state = self.lock();
        if state.synced {
            // A fresh channel has room for one push.
            let _ = tx.try_send(Push::List(state.pods_of(node)));
        }
        state.next_id += 1;
        let id = state.next_id;
        state
            .listeners
            .entry(node.to_owned())
            .or_default()
            .push((id, tx));
        Listener {
            rx,
            routes: self.clone(),
            node: node.to_owned(),
            id,
        }
    }

    /// Follows the pods in the datastore until `shutdown`, listing again whenever the feed
    /// cannot continue.
    pub async fn run(
        self: Arc<Self>,
        registry: Registry,
        feed: Feed,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut delay = RETRY_MIN;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                r = self.follow(&registry, &feed) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, retry_in = ?delay, "pod assignments lost the change feed; listing pods again");
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    async fn follow(&self, registry: &Registry, feed: &Feed) -> Result<(), ApiError> {
        let start = registry.store().current_revision().await?;
        let mut sub = feed.subscribe(start).await?;
        let (listed_at, pods) = registry.list(&PODS, None).await?;
        self.replace(&pods);
        let prefix = PODS.prefix(None);
        loop {
            let ev = sub.next().await?;
            // The listing already holds everything up to its revision.
            if ev.revision <= listed_at || !ev.path.starts_with(&prefix) {
                continue;
            }
            let Some(r) = ObjectRef::from_path(&ev.path).filter(|r| r.resource == &PODS) else {
                continue;
            };
            let key = PodKey {
                namespace: r.namespace.unwrap_or_default(),
                name: r.name,
            };
            let assignment = match ev.kind {
                EventKind::Deleted => None,
                EventKind::Added | EventKind::Modified => {
                    let rec = Record {
                        path: ev.path.clone(),
                        create_revision: ev.create_revision,
                        revision: ev.revision,
                        value: ev.value.clone(),
                    };
                    match registry.decode(&PODS, &rec) {
                        Ok(pod) => PodAssignment::from_pod(&pod),
                        Err(e) => {
                            tracing::error!(path = %ev.path, error = %e, "pod assignments leave an undecodable pod out");
                            None
                        }
                    }
                }
            };
            self.apply(key, assignment);
        }
    }

    /// Replaces the index with `pods` and lists every listener's pods again.
    fn replace(&self, pods: &[Value]) {
        let mut state = self.lock();
        state.by_node.clear();
        state.node_of.clear();
        for (node, a) in pods.iter().filter_map(PodAssignment::from_pod) {
            state.node_of.insert(a.key.clone(), node.clone());
            state
                .by_node
                .entry(node)
                .or_default()
                .insert(a.key.clone(), Arc::new(a));
        }
        state.synced = true;
        let nodes: Vec<String> = state.listeners.keys().cloned().collect();
        for node in nodes {
            let list = state.pods_of(&node);
            state.push(&node, Push::List(list));
        }
    }

    /// Records that the pod `key` is now `assignment` (`None`: deleted or unbound) and tells
    /// the nodes concerned.
    fn apply(&self, key: PodKey, assignment: Option<(String, PodAssignment)>) {
        let mut state = self.lock();
        let before = state.node_of.get(&key).cloned();
        match assignment {
            Some((node, a)) => {
                if before.as_deref() == Some(node.as_str())
                    && state
                        .by_node
                        .get(&node)
                        .and_then(|m| m.get(&key))
                        .is_some_and(|old| **old == a)
                {
                    // A status change: nothing the node is told about changed.
                    return;
                }
                if let Some(old) = before.filter(|b| *b != node) {
                    state.remove(&old, &key);
                    state.push(&old, Push::Gone(key.clone()));
                }
                let a = Arc::new(a);
                state.node_of.insert(key.clone(), node.clone());
                state
                    .by_node
                    .entry(node.clone())
                    .or_default()
                    .insert(key, a.clone());
                state.push(&node, Push::Pod(a));
            }
            None => {
                if let Some(old) = before {
                    state.remove(&old, &key);
                    state.node_of.remove(&key);
                    state.push(&old, Push::Gone(key));
                }
            }
        }
    }

    /// Whether the pod `key` with `uid` is bound to `node` now.
    pub fn is_bound(&self, node: &str, key: &PodKey, uid: &str) -> bool {
        let state = self.lock();
        state.node_of.get(key).is_some_and(|n| n == node)
            && state
                .by_node
                .get(node)
                .and_then(|pods| pods.get(key))
                .is_some_and(|a| a.uid == uid)
    }

    /// The uid of the pod `key` if it is bound to a node now; `None` also before the first
    /// listing is in.
    pub fn bound_uid(&self, key: &PodKey) -> Option<String> {
        let state = self.lock();
        let node = state.node_of.get(key)?;
        state.by_node.get(node)?.get(key).map(|a| a.uid.clone())
    }

    /// Bound pods known.
    #[cfg(test)]
    pub fn pod_count(&self) -> usize {
        self.lock().node_of.len()
    }
}

// === impl State ===

impl State {
    fn pods_of(&self, node: &str) -> Vec<Arc<PodAssignment>> {
        self.by_node
            .get(node)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn remove(&mut self, node: &str, key: &PodKey) {
        if let Some(m) = self.by_node.get_mut(node) {
            m.remove(key);
            if m.is_empty() {
                self.by_node.remove(node);
            }
        }
    }

    /// Queues `push` for every tunnel of `node`; a tunnel whose queue is full is dropped.
    fn push(&mut self, node: &str, push: Push) {
        let Some(list) = self.listeners.get_mut(node) else {
            return;
        };
        list.retain(|(_, tx)| match tx.try_send(push.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%node, queued = LISTENER_QUEUE, "a tunnel fell behind its pod assignments; it lists them again");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if list.is_empty() {
            self.listeners.remove(node);
        }
    }
}

/// Writes the status `node` reports for a pod, as that node: a strategic-merge patch of
/// `pods/<name>/status` (conditions merge by type, so the scheduler's `PodScheduled` stays).
/// An object a node asked for, if a pod bound to it references it (NodeRestriction: a node
/// reads only the ConfigMaps, Secrets and claims its own pods use, and only the local volumes
/// pinned to it). `Err((404, …))` for a referenced object that does not exist, so the node can
/// tell a missing optional reference from a refusal (403).
pub async fn object_for_node(
    api: &crate::apiserver::Api,
    routes: &PodRoutes,
    node: &str,
    wanted: &crate::node::objects::Wanted,
) -> Result<String, (u16, String)> {
    use crate::apiserver::resources::{CONFIGMAPS, SECRETS};
    use crate::node::objects::Wanted;
    let registry = &api.registry;
    let (resource, kind, namespace, name) = match wanted {
        Wanted::ConfigMap { namespace, name } => (&CONFIGMAPS, "configmap", namespace, name),
        Wanted::Secret { namespace, name } => (&SECRETS, "secret", namespace, name),
        Wanted::PersistentVolumeClaim { namespace, name } => {
            if !referenced(routes, node, namespace, CLAIM, name) {
                return Err(not_referenced(CLAIM, namespace, name, node));
            }
            return claim_for_node(registry, namespace, name).await;
        }
        Wanted::LocalVolume { name } => return local_volume(registry, node, name).await,
        Wanted::LocalVolumeCleaned { name } => {
            return local_volume_cleaned(registry, node, name).await;
        }
        Wanted::ServiceAccountToken {
            namespace,
            pod,
            pod_uid,
            service_account,
            audience,
            seconds,
        } => {
            let key = PodKey {
                namespace: namespace.clone(),
                name: pod.clone(),
            };
            let request = crate::apiserver::token_request::PodToken {
                namespace,
                pod,
                pod_uid,
                service_account,
                audience,
                seconds: *seconds,
            };
            return token_for_node(api, routes, node, &key, request).await;
        }
    };
    if !referenced(routes, node, namespace, kind, name) {
        return Err(not_referenced(kind, namespace, name, node));
    }
    let r = ObjectRef {
        resource,
        namespace: Some(namespace.clone()),
        name: name.clone(),
    };
    match registry.get(&r).await {
        Ok(obj) => Ok(obj.to_string()),
        Err(ApiError::NotFound { .. }) => Err((404, format!("{kind} \"{name}\" not found"))),
        Err(e) => Err((503, e.to_string())),
    }
}

/// Whether a pod bound to `node` in `namespace` references the object (see [`references`]).
fn referenced(routes: &PodRoutes, node: &str, namespace: &str, kind: &str, name: &str) -> bool {
    routes
        .lock()
        .pods_of(node)
        .iter()
        .filter(|a| a.key.namespace == namespace)
        .any(|a| {
            serde_json::from_str::<Value>(&a.pod).is_ok_and(|pod| references(&pod, kind, name))
        })
}

fn not_referenced(kind: &str, namespace: &str, name: &str, node: &str) -> (u16, String) {
    (
        403,
        format!("{kind} {namespace}/{name}: no pod bound to node {node:?} references it"),
    )
}

/// `{"claim": <PVC>, "volume": <PV or null>}` for a claim a pod of the node references.
async fn claim_for_node(
    registry: &Registry,
    namespace: &str,
    name: &str,
) -> Result<String, (u16, String)> {
    let claims = storage_resource(CLAIMS)?;
    let r = ObjectRef::namespaced(claims, namespace, name);
    let claim = match registry.get(&r).await {
        Ok(claim) => claim,
        Err(ApiError::NotFound { .. }) => {
            return Err((404, format!("{CLAIM} \"{name}\" not found")));
        }
        Err(e) => return Err((503, e.to_string())),
    };
    let volume = match claim["spec"]["volumeName"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        Some(volume) => {
            let r = ObjectRef::cluster(storage_resource(VOLUMES)?, volume);
            match registry.get(&r).await {
                Ok(pv) => pv,
                Err(ApiError::NotFound { .. }) => Value::Null,
                Err(e) => return Err((503, e.to_string())),
            }
        }
        None => Value::Null,
    };
    Ok(json!({"claim": claim, "volume": volume}).to_string())
}

/// A PersistentVolume pinned to `node` (403 if it is not, 404 if there is none).
async fn local_volume(
    registry: &Registry,
    node: &str,
    name: &str,
) -> Result<String, (u16, String)> {
    let r = ObjectRef::cluster(storage_resource(VOLUMES)?, name);
    match registry.get(&r).await {
        Ok(pv) if pinned_to(&pv, node) => Ok(pv.to_string()),
        Ok(_) => Err(not_pinned(name, node)),
        Err(ApiError::NotFound { .. }) => Err((404, format!("{VOLUME} \"{name}\" not found"))),
        Err(e) => Err((503, e.to_string())),
    }
}

/// Removes [`CLEANUP_FINALIZER`] from the PersistentVolume `name`, as the system, if it is
/// pinned to `node` and being deleted: the node removed its directory. The condition is
/// checked on the very revision written, so a volume recreated meanwhile is left alone.
async fn local_volume_cleaned(
    registry: &Registry,
    node: &str,
    name: &str,
) -> Result<String, (u16, String)> {
    let r = ObjectRef::cluster(storage_resource(VOLUMES)?, name);
    let mut refused = None;
    let written = registry
        .modify(&r, Part::Main, |pv| match may_clean(pv, node) {
            Ok(()) => {
                refused = None;
                if let Some(list) = pv["metadata"]["finalizers"].as_array_mut() {
                    list.retain(|f| f.as_str() != Some(CLEANUP_FINALIZER));
                }
            }
            Err(why) => refused = Some(why),
        })
        .await;
    match (written, refused) {
        (_, Some(why)) => Err(why),
        (Ok(_), None) => Ok("{}".to_owned()),
        (Err(ApiError::NotFound { .. }), None) => {
            Err((404, format!("{VOLUME} \"{name}\" not found")))
        }
        (Err(e), None) => Err((503, e.to_string())),
    }
}

/// Whether `node` may have the cleanup finalizer of `pv` removed (NodeRestriction).
fn may_clean(pv: &Value, node: &str) -> Result<(), (u16, String)> {
    let name = pv["metadata"]["name"].as_str().unwrap_or_default();
    if !pinned_to(pv, node) {
        return Err(not_pinned(name, node));
    }
    if pv["metadata"]["deletionTimestamp"].as_str().is_none() {
        return Err((
            403,
            format!(
                "{VOLUME} {name:?} is not being deleted: its directory is not the node's to clean up"
            ),
        ));
    }
    Ok(())
}

fn not_pinned(name: &str, node: &str) -> (u16, String) {
    (
        403,
        format!("{VOLUME} {name:?} is not pinned to node {node:?}"),
    )
}

/// Whether the PersistentVolume `pv` can only be used on `node`: its
/// `spec.nodeAffinity.required` has terms, and every term requires
/// `kubernetes.io/hostname In [<node>]` (terms are alternatives, so one without it would let
/// the volume go elsewhere).
pub fn pinned_to(pv: &Value, node: &str) -> bool {
    let terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"].as_array();
    terms.is_some_and(|terms| {
        !terms.is_empty()
            && terms.iter().all(|term| {
                term["matchExpressions"].as_array().is_some_and(|exprs| {
                    exprs.iter().any(|e| {
                        e["key"].as_str() == Some(HOSTNAME_LABEL)
                            && e["operator"].as_str() == Some("In")
                            && e["values"]
                                .as_array()
                                .is_some_and(|v| v.len() == 1 && v[0].as_str() == Some(node))
                    })
                })
            })
    })
}

/// The storage resource stored under `plural`. Looked up by plural so this compiles before the
/// storage kinds exist; a server without them answers 503.
fn storage_resource(
    plural: &str,
) -> Result<&'static crate::apiserver::resources::Resource, (u16, String)> {
    crate::apiserver::resources::Resource::by_plural(plural)
        .ok_or_else(|| (503, format!("this server does not serve {plural}")))
}

/// A token for a pod bound to `node`, of the pod's own service account (NodeRestriction:
/// a node gets tokens only for its pods, and only as the accounts they run as).
async fn token_for_node(
    api: &crate::apiserver::Api,
    routes: &PodRoutes,
    node: &str,
    key: &PodKey,
    request: crate::apiserver::token_request::PodToken<'_>,
) -> Result<String, (u16, String)> {
    let refused = |why: String| Err((403, why));
    if !routes.is_bound(node, key, request.pod_uid) {
        return refused(format!(
            "pod {}/{} (uid {}) is not bound to node {node:?}",
            key.namespace, key.name, request.pod_uid
        ));
    }
    let assignment = routes
        .lock()
        .by_node
        .get(node)
        .and_then(|pods| pods.get(key))
        .cloned();
    let runs_as = assignment
        .and_then(|a| serde_json::from_str::<Value>(&a.pod).ok())
        .map(|pod| {
            pod["spec"]["serviceAccountName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_owned()
        });
    if runs_as.as_deref() != Some(request.service_account) {
        return refused(format!(
            "pod {}/{} does not run as serviceaccount {:?}",
            key.namespace, key.name, request.service_account
        ));
    }
    match crate::apiserver::token_request::for_pod(api, request).await {
        Ok(answer) => Ok(answer.to_string()),
        Err(ApiError::NotFound { resource, name }) => {
            Err((404, format!("{resource} \"{name}\" not found")))
        }
        Err(e) => Err((503, e.to_string())),
    }
}

/// Whether a pod's spec names the ConfigMap, Secret or PersistentVolumeClaim (`kind` is
/// `configmap`, `secret` or [`CLAIM`]) through a volume, a projected source, an env or envFrom
/// reference, or (Secrets) an image pull secret.
pub fn references(pod: &Value, kind: &str, name: &str) -> bool {
    let refs = crate::node::env::references(pod);
    match kind {
        "configmap" => refs.config_maps.contains(name),
        CLAIM => refs.claims.contains(name),
        _ => {
            refs.secrets.contains(name)
                || pod["spec"]["imagePullSecrets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"].as_str() == Some(name))
        }
    }
}

/// A report for a pod that is gone, or for an earlier pod of the same name, is dropped; one
/// that would change nothing is not written.
pub async fn apply_status(
    registry: &Registry,
    node: &str,
    report: PodReport,
) -> Result<(), ApiError> {
    let status: Value = serde_json::from_str(&report.status).map_err(|e| {
        ApiError::BadRequest(format!(
            "node {node:?} sent a pod status that is not JSON: {e}"
        ))
    })?;
    if !status.is_object() {
        return Err(ApiError::BadRequest(format!(
            "node {node:?} sent a pod status that is not a JSON object"
        )));
    }
    let r = ObjectRef {
        resource: &PODS,
        namespace: Some(report.key.namespace),
        name: report.key.name,
    };
    let current = match registry.get(&r).await {
        Ok(pod) => pod,
        Err(ApiError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if current.pointer("/metadata/uid").and_then(Value::as_str) != Some(report.uid.as_str()) {
        return Ok(());
    }
    let body = json!({ "status": status });
    if patch::apply(patch::Kind::Strategic, &current, &body).is_ok_and(|p| p == current) {
        return Ok(());
    }
    registry
        .patch(
            &r,
            Part::Status,
            Writer::Node(node),
            patch::Kind::Strategic,
            body,
        )
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str) -> Value {
        json!({
            "metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": phase},
        })
    }

    fn key(name: &str) -> PodKey {
        PodKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn drain(l: &mut Listener) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(p) = l.rx.try_recv() {
            out.push(match p {
                Push::List(list) => format!(
                    "list[{}]",
                    list.iter()
                        .map(|a| a.key.name.clone())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Push::Pod(a) => format!("pod {}", a.key.name),
                Push::Gone(k) => format!("gone {}", k.name),
            });
        }
        out
    }

    #[test]
    fn each_node_hears_only_about_its_own_pods() {
        let routes = PodRoutes::new();
        let mut one = routes.listen("n1");
        let mut two = routes.listen("n2");
        assert!(
            drain(&mut one).is_empty(),
            "no listing before the index is synced"
        );
        routes.replace(&[
            pod("a", Some("n1"), "Pending"),
            pod("b", Some("n2"), "Pending"),
        ]);
        assert_eq!(drain(&mut one), ["list[a]"]);
        assert_eq!(drain(&mut two), ["list[b]"]);
        routes.apply(
            key("c"),
            PodAssignment::from_pod(&pod("c", Some("n1"), "Pending")),
        );
        assert_eq!(drain(&mut one), ["pod c"]);
        assert!(drain(&mut two).is_empty());
        // A status change alone tells nobody anything.
        routes.apply(
            key("c"),
            PodAssignment::from_pod(&pod("c", Some("n1"), "Running")),
        );
        assert!(drain(&mut one).is_empty());
        // Finishing does: the node must not run it again.
        routes.apply(
            key("c"),
            PodAssignment::from_pod(&pod("c", Some("n1"), "Succeeded")),
        );
        assert_eq!(drain(&mut one), ["pod c"]);
        routes.apply(key("a"), None);
        assert_eq!(drain(&mut one), ["gone a"]);
        assert_eq!(routes.pod_count(), 2);
        // A listener arriving later starts with a listing.
        let mut late = routes.listen("n2");
        assert_eq!(drain(&mut late), ["list[b]"]);
    }

    #[test]
    fn a_stuck_tunnel_is_dropped_not_waited_for() {
        let routes = PodRoutes::new();
        routes.replace(&[]);
        let mut stuck = routes.listen("n1");
        for i in 0..LISTENER_QUEUE + 1 {
            let name = format!("p{i}");
            routes.apply(
                key(&name),
                PodAssignment::from_pod(&pod(&name, Some("n1"), "Pending")),
            );
        }
        // The queue held what it could; then the listener was dropped, and its channel ends.
        let mut n = 0;
        while let Ok(_p) = stuck.rx.try_recv() {
            n += 1;
        }
        assert_eq!(n, LISTENER_QUEUE);
        assert!(matches!(
            stuck.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        // Listening again gives every pod at once.
        let mut again = routes.listen("n1");
        assert!(matches!(again.rx.try_recv(), Ok(Push::List(l)) if l.len() == LISTENER_QUEUE + 1));
    }

    #[test]
    fn a_pod_references_what_its_volumes_env_and_pull_secrets_name() {
        let pod = json!({"spec": {
            "volumes": [{"name": "v", "configMap": {"name": "cfg"}},
                        {"name": "s", "secret": {"secretName": "tls"}},
                        {"name": "p", "projected": {"sources": [{"configMap": {"name": "proj"}}]}}],
            "imagePullSecrets": [{"name": "regcred"}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "a"}}},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "b"}}}]}]}});
        for name in ["cfg", "proj", "env-cm"] {
            assert!(references(&pod, "configmap", name), "{name}");
            assert!(!references(&pod, "secret", name), "{name} is not a secret");
        }
        for name in ["tls", "regcred", "init-env", "env-secret"] {
            assert!(references(&pod, "secret", name), "{name}");
        }
        assert!(!references(&pod, "secret", "other"));
        assert!(!references(&pod, "configmap", "tls"));
    }

    fn pod_with_claim(name: &str, node: &str, namespace: &str, claim: &str) -> Value {
        json!({
            "metadata": {"namespace": namespace, "name": name, "uid": format!("uid-{name}")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]},
            "status": {"phase": "Pending"},
        })
    }

    #[test]
    fn a_node_reads_only_the_claims_its_own_pods_use() {
        let routes = PodRoutes::new();
        routes.replace(&[
            pod_with_claim("a", "n1", "default", "data"),
            pod_with_claim("b", "n2", "prod", "other"),
        ]);
        assert!(references(
            &pod_with_claim("a", "n1", "default", "data"),
            CLAIM,
            "data"
        ));
        assert!(referenced(&routes, "n1", "default", CLAIM, "data"));
        // Another node's pod's claim, a claim of the same name in another namespace, a claim
        // nobody uses, and a ConfigMap of the claim's name: all refused.
        assert!(!referenced(&routes, "n1", "prod", CLAIM, "other"));
        assert!(!referenced(&routes, "n2", "default", CLAIM, "data"));
        assert!(!referenced(&routes, "n1", "default", CLAIM, "nobody"));
        assert!(!referenced(&routes, "n1", "default", "configmap", "data"));
    }

    fn volume(values: Value) -> Value {
        json!({
            "metadata": {"name": "pvc-1"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": values}]}]}}},
        })
    }

    #[test]
    fn a_volume_is_a_nodes_only_when_every_term_pins_it_there() {
        assert!(pinned_to(&volume(json!(["n1"])), "n1"));
        assert!(!pinned_to(&volume(json!(["n2"])), "n1"));
        // A volume several nodes may use is no one node's to read or clean.
        assert!(!pinned_to(&volume(json!(["n1", "n2"])), "n1"));
        let mut not_in = volume(json!(["n1"]));
        not_in["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
            ["operator"] = json!("NotIn");
        assert!(!pinned_to(&not_in, "n1"));
        // A second term lets the volume go anywhere with the label.
        let mut two_terms = volume(json!(["n1"]));
        two_terms["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
            .as_array_mut()
            .unwrap()
            .push(
                json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}),
            );
        assert!(!pinned_to(&two_terms, "n1"));
        assert!(!pinned_to(&json!({"spec": {}}), "n1"));
    }

    #[test]
    fn a_node_clears_the_cleanup_finalizer_only_of_its_own_deleted_volumes() {
        let mut deleting = volume(json!(["n1"]));
        deleting["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        assert!(may_clean(&deleting, "n1").is_ok());
        assert_eq!(may_clean(&deleting, "n2").map_err(|e| e.0), Err(403));
        let live = volume(json!(["n1"]));
        assert_eq!(may_clean(&live, "n1").map_err(|e| e.0), Err(403));
    }
}
