//! Keeps a [`Cache`] current: one list per cached kind, then the change feed's events.
//!
//! Invariants: the cache is marked synced only once every kind was listed; when the feed
//! cannot continue (history compacted away while this fell behind, the datastore out of
//! reach while catching up), every kind is listed again and the difference published, so no
//! change is ever lost — at worst it arrives as part of a relist.

use std::time::Duration;

use crate::apiserver::registry::Registry;
use crate::apiserver::resources::ObjectRef;
use crate::apiserver::status::ApiError;
use crate::datastore::feed::Feed;
use crate::datastore::{EventKind, Record};

use super::cache::Cache;

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Runs until dropped (the caller aborts it when leadership ends).
pub async fn run(registry: Registry, feed: Feed, cache: Cache) {
    let mut delay = RETRY_MIN;
    loop {
        match follow(&registry, &feed, &cache).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "controller cache lost the change feed; listing again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Lists every kind, then applies events until the feed fails.
async fn follow(registry: &Registry, feed: &Feed, cache: &Cache) -> Result<(), ApiError> {
    // Events after `start` are applied; the lists, each taken at or after it, already hold
    // some of them, which `Cache::apply` drops by revision.
    let start = registry.store().current_revision().await?;
    let mut subscription = feed.subscribe(start).await?;
    for resource in cache.kinds() {
        let (revision, items) = registry.list(resource, None).await?;
        cache.replace(resource, revision, items);
    }
    cache.advance(start);
    cache.mark_synced();
    loop {
        let ev = subscription.next().await?;
        if let Some(r) = ObjectRef::from_path(&ev.path)
            && cache.caches(r.resource)
        {
            let record = Record {
                path: ev.path.clone(),
                create_revision: ev.create_revision,
                revision: ev.revision,
                value: ev.value.clone(),
            };
            let obj = match ev.kind {
                EventKind::Deleted => None,
                EventKind::Added | EventKind::Modified => {
                    match registry.decode_fresh(r.resource, &record).await {
                        Ok(obj) => Some(obj),
                        Err(e) => {
                            // Leave it out, as lists do; the next valid write brings it back.
                            tracing::error!(path = %ev.path, error = %e, "controller cache leaves an undecodable object out");
                            None
                        }
                    }
                }
            };
            cache.apply(r.resource, &ev.path, ev.revision, obj);
        }
        cache.advance(ev.revision);
    }
}
