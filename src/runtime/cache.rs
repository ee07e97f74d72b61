//! The controllers' view of the cluster: every object of the cached kinds, in memory.
//!
//! Written only by the [`super::reflector`]; read by controllers, which never query the
//! database for what the cache holds. Each change is also published as a [`Change`], so a
//! controller can map it to the keys it must look at again. Pods are cached trimmed of what
//! only their node reads ([`super::trim`]).
//!
//! Invariants: an object's entry only ever moves forward in revision (an event at or below the
//! revision a kind was listed at is already in the list and is dropped); [`Cache::revision`]
//! is a lower bound of what the cache shows: every write at or below it is visible.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::frozen::{AsJson, Frozen, Json};
use super::trim::split;
use crate::apiserver::resources::{ObjectRef, Resource};

/// Changes buffered for a controller busy reconciling; one further behind resyncs. The ring
/// keeps its last values alive (each a previous version of an object), so it is kept small:
/// at 8192, 3000 pods' old versions held ~35 MiB more at idle (hollow-node bench).
const CHANGES: usize = 1024;

/// One object appeared, changed or went away.
#[derive(Debug)]
pub struct Change {
    pub resource: &'static Resource,
    pub old: Option<Arc<Frozen>>,
    pub new: Option<Arc<Frozen>>,
}

impl Change {
    /// The object as it is now, or as it was last when it went away.
    pub fn object(&self) -> Option<&Frozen> {
        self.new.as_deref().or(self.old.as_deref())
    }
}

/// A handle to the cache; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    kinds: RwLock<HashMap<&'static str, Kind>>,
    revision: watch::Sender<i64>,
    synced: watch::Sender<bool>,
    changes: broadcast::Sender<Arc<Change>>,
}

#[derive(Default)]
struct Kind {
    /// The revision of the last list: events at or below it are already in `objects`.
    listed_at: i64,
    /// By datastore path, so one namespace's objects are one range.
    objects: BTreeMap<String, Arc<Frozen>>,
    /// Whole copies of the pods waiting for the scheduler, beside their trimmed entries in
    /// `objects` (at the same revision); see [`super::trim::split`].
    whole: HashMap<String, Arc<Frozen>>,
}

// === impl Cache ===

impl Cache {
    /// An empty cache of `kinds`; nothing is cached for any other kind.
    pub fn new(kinds: &[&'static Resource]) -> Cache {
        let (changes, _) = broadcast::channel(CHANGES);
        Cache {
            inner: Arc::new(Inner {
                kinds: RwLock::new(kinds.iter().map(|r| (r.plural, Kind::default())).collect()),
                revision: watch::channel(0).0,
                synced: watch::channel(false).0,
                changes,
            }),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&HashMap<&'static str, Kind>) -> T) -> T {
        // A panic while holding the lock cannot leave a map half-written (each write is one
        // insert or remove), so a poisoned lock's data is still sound.
        let guard = self
            .inner
            .kinds
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    fn write<T>(&self, f: impl FnOnce(&mut HashMap<&'static str, Kind>) -> T) -> T {
        let mut guard = self
            .inner
            .kinds
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Every cached object of `resource`, in path order.
    pub fn list(&self, resource: &'static Resource) -> Vec<Arc<Frozen>> {
        self.read(|k| {
            k.get(resource.plural)
                .map(|k| k.objects.values().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// The cached objects of `resource` in one namespace.
    pub fn list_in(&self, resource: &'static Resource, namespace: &str) -> Vec<Arc<Frozen>> {
        let prefix = resource.prefix(Some(namespace));
        self.read(|k| {
            k.get(resource.plural)
                .map(|k| {
                    k.objects
                        .range(prefix.clone()..)
                        .take_while(|(p, _)| p.starts_with(&prefix))
                        .map(|(_, v)| v.clone())
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    pub fn get(&self, r: &ObjectRef) -> Option<Arc<Frozen>> {
        self.read(|k| k.get(r.resource.plural)?.objects.get(&r.path()).cloned())
    }

    /// The untrimmed object, for a pod waiting for the scheduler (at the revision [`get`]
    /// shows); `None` for everything else.
    ///
    /// [`get`]: Cache::get
    pub fn whole(&self, r: &ObjectRef) -> Option<Arc<Frozen>> {
        self.read(|k| k.get(r.resource.plural)?.whole.get(&r.path()).cloned())
    }

    /// How many objects of `resource` are cached.
    pub fn len(&self, resource: &'static Resource) -> usize {
        self.read(|k| k.get(resource.plural).map_or(0, |k| k.objects.len()))
    }

    pub fn caches(&self, resource: &'static Resource) -> bool {
        self.read(|k| k.contains_key(resource.plural))
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.inner.changes.subscribe()
    }

    /// Every write at or below this revision is visible.
    #[cfg(test)]
    pub fn revision(&self) -> i64 {
        *self.inner.revision.borrow()
    }

    /// Waits until writes up to `revision` are visible; false if that took longer than
    /// `timeout` (the feed is stalled: the caller goes on with what it has).
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.inner.revision.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await,
            Ok(Ok(_))
        )
    }

    /// Whether the first list of every kind is in.
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Waits until the first list of every kind is in.
    pub async fn synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    // --- the reflector's side ---

    /// Replaces what is cached of `resource` by a fresh list taken at `revision`, and
    /// publishes the difference (so a controller also hears of deletions it missed).
    pub(super) fn replace(&self, resource: &'static Resource, revision: i64, items: Vec<Value>) {
        let mut fresh: BTreeMap<String, Arc<Frozen>> = BTreeMap::new();
        let mut whole = HashMap::new();
        for obj in items {
            let (obj, full) = split(resource, obj);
            if let Some(path) = path_of(resource, &obj) {
                if let Some(full) = full {
                    whole.insert(path.clone(), Arc::new(full));
                }
                fresh.insert(path, Arc::new(Frozen::from(obj)));
            }
        }
        let old = self.write(|k| {
            let kind = k.entry(resource.plural).or_default();
            kind.listed_at = revision;
            kind.whole = whole;
            std::mem::replace(&mut kind.objects, fresh.clone())
        });
        for (path, obj) in &fresh {
            match old.get(path) {
                Some(prev) if version(prev) == version(obj) => {}
                prev => self.publish(resource, prev.cloned(), Some(obj.clone())),
            }
        }
        for (path, prev) in old {
            if !fresh.contains_key(&path) {
                self.publish(resource, Some(prev), None);
            }
        }
    }

    /// Applies one event at `revision`: `obj` is the object after it, or `None` if deleted.
    pub(super) fn apply(
        &self,
        resource: &'static Resource,
        path: &str,
        revision: i64,
        obj: Option<Value>,
    ) {
        let (obj, full) = match obj.map(|o| split(resource, o)) {
            Some((o, full)) => (Some(Arc::new(Frozen::from(o))), full.map(Arc::new)),
            None => (None, None),
        };
        let old = self.write(|k| {
            let kind = k.get_mut(resource.plural)?;
            if revision <= kind.listed_at {
                return None;
            }
            match full {
                Some(full) => kind.whole.insert(path.to_owned(), full),
                None => kind.whole.remove(path),
            };
            Some(match &obj {
                Some(o) => kind.objects.insert(path.to_owned(), o.clone()),
                None => kind.objects.remove(path),
            })
        });
        if let Some(old) = old {
            self.publish(resource, old, obj);
        }
    }

    pub(super) fn advance(&self, revision: i64) {
        self.inner.revision.send_if_modified(|r| {
            let newer = revision > *r;
            if newer {
                *r = revision;
            }
            newer
        });
    }

    pub(super) fn mark_synced(&self) {
        self.inner.synced.send_replace(true);
    }

    fn publish(
        &self,
        resource: &'static Resource,
        old: Option<Arc<Frozen>>,
        new: Option<Arc<Frozen>>,
    ) {
        // Nobody listening is fine: controllers start after the first sync.
        let _ = self
            .inner
            .changes
            .send(Arc::new(Change { resource, old, new }));
    }

    /// The kinds cached.
    pub fn kinds(&self) -> Vec<&'static Resource> {
        self.read(|k| {
            k.keys()
                .filter_map(|plural| Resource::by_plural(plural))
                .collect()
        })
    }
}

// The API server's own cache of service accounts and RBAC objects is one of these.
impl crate::apiserver::rbac::Objects for Cache {
    fn get(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Arc<Frozen>> {
        Cache::get(
            self,
            &ObjectRef {
                resource,
                namespace: namespace.filter(|_| resource.namespaced).map(str::to_owned),
                name: name.to_owned(),
            },
        )
    }

    fn list(&self, resource: &'static Resource, namespace: Option<&str>) -> Vec<Arc<Frozen>> {
        match namespace {
            Some(ns) => self.list_in(resource, ns),
            None => Cache::list(self, resource),
        }
    }
}

impl crate::apiserver::access::View for Cache {
    fn synced(&self) -> bool {
        self.is_synced()
    }
}

fn version(obj: &Frozen) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Frozen::as_str)
}

/// Where `obj` of `resource` is stored.
pub fn path_of(resource: &'static Resource, obj: &impl AsJson) -> Option<String> {
    let obj = obj.json();
    let name = obj.pointer("/metadata/name").and_then(Json::as_str)?;
    let namespace = obj.pointer("/metadata/namespace").and_then(Json::as_str);
    Some(format!(
        "{}{name}",
        resource.prefix(namespace.filter(|_| resource.namespaced))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{NODES, PODS};
    use serde_json::json;

    fn pod(name: &str, rv: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string()}})
    }

    #[test]
    fn events_at_or_below_the_list_are_dropped_and_later_ones_applied() {
        let cache = Cache::new(&[&PODS]);
        let mut changes = cache.subscribe();
        cache.replace(&PODS, 10, vec![pod("a", 5), pod("b", 9)]);
        assert_eq!(cache.len(&PODS), 2);
        // Both list entries are news to a subscriber.
        assert!(changes.try_recv().is_ok() && changes.try_recv().is_ok());
        // An event already in the list is not applied twice, nor published.
        cache.apply(&PODS, "/registry/pods/default/b", 9, None);
        assert_eq!(cache.len(&PODS), 2);
        assert!(changes.try_recv().is_err());
        cache.apply(&PODS, "/registry/pods/default/b", 11, None);
        assert_eq!(cache.len(&PODS), 1);
        let ch = changes.try_recv().unwrap();
        assert!(ch.new.is_none() && ch.old.is_some());
        // Kinds not cached are ignored.
        cache.apply(&NODES, "/registry/nodes/n", 12, Some(json!({})));
        assert!(!cache.caches(&NODES));
    }

    #[test]
    fn a_relist_publishes_only_the_difference() {
        let cache = Cache::new(&[&PODS]);
        cache.replace(&PODS, 10, vec![pod("a", 5), pod("b", 9)]);
        let mut changes = cache.subscribe();
        cache.replace(&PODS, 20, vec![pod("a", 5), pod("c", 15)]);
        let mut seen = vec![];
        while let Ok(ch) = changes.try_recv() {
            seen.push((
                ch.old.as_ref().map(|o| o["metadata"]["name"].thaw()),
                ch.new.as_ref().map(|o| o["metadata"]["name"].thaw()),
            ));
        }
        assert_eq!(
            seen,
            vec![(None, Some(json!("c"))), (Some(json!("b")), None)]
        );
        assert_eq!(cache.list_in(&PODS, "default").len(), 2);
        assert!(cache.list_in(&PODS, "other").is_empty());
    }

    #[test]
    fn a_pod_is_kept_whole_only_while_it_waits_for_the_scheduler() {
        let cache = Cache::new(&[&PODS]);
        let pending = json!({"metadata": {"name": "a", "namespace": "default", "resourceVersion": "5"},
            "spec": {"containers": [{"name": "c", "env": [{"name": "X", "value": "1"}]}]}});
        cache.replace(&PODS, 10, vec![pending.clone()]);
        let r = ObjectRef::from_path("/registry/pods/default/a").unwrap();
        assert_eq!(*cache.whole(&r).unwrap(), pending);
        assert!(
            cache.get(&r).unwrap()["spec"]["containers"][0]
                .get("env")
                .is_none()
        );
        let mut bound = pending;
        bound["metadata"]["resourceVersion"] = json!("11");
        bound["spec"]["nodeName"] = json!("pi-1");
        cache.apply(&PODS, "/registry/pods/default/a", 11, Some(bound));
        assert!(cache.whole(&r).is_none(), "bound: trimmed only");
        cache.apply(&PODS, "/registry/pods/default/a", 12, None);
        assert!(cache.get(&r).is_none() && cache.whole(&r).is_none());
    }

    #[tokio::test]
    async fn waiting_for_a_revision_ends_when_it_is_reached() {
        let cache = Cache::new(&[&PODS]);
        assert!(!cache.wait_for(5, Duration::from_millis(20)).await);
        let c = cache.clone();
        let waiter = tokio::spawn(async move { c.wait_for(5, Duration::from_secs(5)).await });
        cache.advance(3);
        cache.advance(6);
        assert!(waiter.await.unwrap());
        cache.advance(4);
        assert_eq!(cache.revision(), 6, "the revision never goes back");
    }
}
