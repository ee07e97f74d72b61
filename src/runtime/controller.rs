//! Runs reconcilers from cache changes, and all of them only while this server leads.
//!
//! A [`Reconciler`] maps each change to the keys it concerns (the object itself, its owner)
//! and brings one key at a time to its desired state. [`lead`] builds a fresh cache whenever
//! this server becomes the controllers-lease holder, starts the controllers once it is
//! synced, and stops them and drops the cache when the lease is lost.
//!
//! Invariants: one reconcile per controller at a time; before a controller takes its next
//! key, the cache shows every write its last reconcile made (bounded by
//! [`READ_YOUR_WRITES`]: a stalled feed delays a controller, never stops it).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use crate::apiserver::registry::Registry;
use crate::apiserver::resources::Resource;
use crate::apiserver::status::ApiError;
use crate::controllers::lease::Role;
use crate::datastore::feed::Feed;

use super::cache::{Cache, Change};
use super::queue::WorkQueue;
use super::reflector;

/// Longest a controller waits for the cache to show its own writes.
pub const READ_YOUR_WRITES: Duration = Duration::from_secs(5);

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes.
    Done,
    /// Look again after this long even if nothing changes (a deadline, a delay).
    RequeueAfter(Duration),
}

/// What reconcilers share: the registry for writes, the cache for reads.
pub struct Context {
    pub registry: Registry,
    pub cache: Cache,
    written: AtomicI64,
}

impl Context {
    pub fn new(registry: Registry, cache: Cache) -> Arc<Context> {
        Arc::new(Context {
            registry,
            cache,
            written: AtomicI64::new(0),
        })
    }

    /// Notes a write's result, so the runner waits until the cache shows it.
    pub fn wrote(&self, obj: &Value) {
        if let Some(rv) = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<i64>().ok())
        {
            self.written.fetch_max(rv, Ordering::Relaxed);
        }
    }

    pub async fn settle(&self) {
        let rev = self.written.swap(0, Ordering::Relaxed);
        if rev > 0 && !self.cache.wait_for(rev, READ_YOUR_WRITES).await {
            tracing::debug!(
                revision = rev,
                "the cache did not show a controller's write in time"
            );
        }
    }
}

/// One controller's logic.
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name in logs.
    fn name(&self) -> &'static str;
    /// The keys a change concerns.
    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String>;
    /// Every key, after a start or when changes were missed.
    fn all(&self, cache: &Cache) -> Vec<String>;
    /// Brings `key` to its desired state.
    fn reconcile(
        &self,
        key: &str,
        ctx: &Context,
    ) -> impl Future<Output = Result<Action, ApiError>> + Send;
}

/// Runs `r` until its task is aborted.
pub async fn run<R: Reconciler>(r: R, ctx: Arc<Context>) {
    let mut changes = ctx.cache.subscribe();
    let mut queue = WorkQueue::new();
    for key in r.all(&ctx.cache) {
        queue.add(key);
    }
    loop {
        tokio::select! {
            change = changes.recv() => {
                let mut next = change;
                // Take in every change already waiting before the next reconcile: after a
                // burst (thousands of pods changing) one reconcile per key covers them all,
                // instead of one reconcile per change read.
                loop {
                    match next {
                        Ok(change) => {
                            for key in r.keys(&change, &ctx.cache) {
                                queue.add(key);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(controller = r.name(), missed = n, "resyncing after missed changes");
                            for key in r.all(&ctx.cache) {
                                queue.add(key);
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                    next = match changes.try_recv() {
                        Ok(change) => Ok(change),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => Err(broadcast::error::RecvError::Lagged(n)),
                        Err(broadcast::error::TryRecvError::Closed) => Err(broadcast::error::RecvError::Closed),
                        Err(broadcast::error::TryRecvError::Empty) => break,
                    };
                }
            }
            key = queue.next() => {
                match r.reconcile(&key, &ctx).await {
                    // Nothing can be created in a namespace being deleted, and the owner goes
                    // with it: retrying would only log until it is gone.
                    Ok(Action::Done) | Err(ApiError::NamespaceTerminating { .. }) => queue.forget(&key),
                    Ok(Action::RequeueAfter(d)) => {
                        queue.forget(&key);
                        queue.add_after(key, d);
                    }
                    Err(e) => {
                        let delay = queue.retry(key.clone());
                        tracing::info!(controller = r.name(), key, error = %e, retry_in = ?delay, "reconcile failed");
                    }
                }
                ctx.settle().await;
            }
        }
    }
}

/// Starts what runs under the lease, given the synced context.
pub type Starter = Box<dyn Fn(Arc<Context>, &mut JoinSet<()>) + Send + Sync>;

/// Runs the controllers while `role` says this server leads, until `shutdown`.
pub async fn lead(
    mut role: watch::Receiver<Role>,
    registry: Registry,
    feed: Feed,
    kinds: Vec<&'static Resource>,
    start: Starter,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            r = role.wait_for(|r| matches!(r, Role::Leader { .. })) => if r.is_err() { return },
        }
        tracing::info!("this server leads the controllers; building their cache");
        let cache = Cache::new(&kinds);
        let mut tasks = JoinSet::new();
        tasks.spawn(reflector::run(
            registry.clone(),
            feed.clone(),
            cache.clone(),
        ));
        let started = async {
            cache.synced().await;
            start(Context::new(registry.clone(), cache.clone()), &mut tasks);
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = started => {}
            r = role.wait_for(|r| !matches!(r, Role::Leader { .. })) => if r.is_err() { return },
        }
        // Aborting in the middle of a reconcile is safe: every write is one compare-and-swap,
        // and the next holder starts from a fresh list.
        tasks.abort_all();
        tracing::info!("this server no longer leads the controllers; dropped their cache");
    }
}
