//! The change feed: one poller per process reads new revisions from the database and fans
//! them out in memory to every watcher.
//!
//! The database sees one query per poll interval whatever the number of watchers; a local
//! commit wakes the poller at once, so watchers on this server see their own writes without
//! waiting for the interval.
//!
//! Invariants: a [`Subscription`] yields every revision after its start exactly once, in
//! order. A watcher that falls behind the in-memory queue is not dropped: it catches up from
//! the database in bounded pages, and only history that was compacted is ever refused.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use super::{Error, Event, Result, Store};

/// Events kept in memory for watchers; a watcher further behind reads from the database.
pub const QUEUE: usize = 1024;
/// Events read per query, by the poller and by a catching-up watcher.
pub const PAGE: i64 = 256;

/// A handle to the change feed; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    store: Store,
    events: broadcast::Sender<Arc<Event>>,
    latest: watch::Receiver<i64>,
    /// The compaction mark the poller last had to jump to (0: never). A jump means live
    /// subscribers missed history: each ends with `Compacted` and its client relists.
    jumps: watch::Receiver<i64>,
}

/// The poller task. Ends when `shutdown` resolves.
pub struct Poller {
    store: Store,
    events: broadcast::Sender<Arc<Event>>,
    latest: watch::Sender<i64>,
    jumps: watch::Sender<i64>,
}

// === impl Feed ===

impl Feed {
    /// Creates the feed starting at the current revision, and the poller that drives it.
    pub async fn new(store: Store) -> Result<(Feed, Poller)> {
        let start = store.current_revision().await?;
        let (events, _) = broadcast::channel(QUEUE);
        let (latest_tx, latest) = watch::channel(start);
        let (jumps_tx, jumps) = watch::channel(0);
        let feed = Feed {
            store: store.clone(),
            events: events.clone(),
            latest,
            jumps,
        };
        let poller = Poller {
            store,
            events,
            latest: latest_tx,
            jumps: jumps_tx,
        };
        Ok((feed, poller))
    }

    /// The newest revision the feed has delivered.
    pub fn latest(&self) -> i64 {
        *self.latest.borrow()
    }

    /// Records that a request could not reach the database: the health prober looks now
    /// instead of at its next period, and decides (a slow or busy database is not a down one).
    pub fn mark_unreachable(&self) {
        self.store.health().suspect();
    }

    /// Whether the database answers, by the store's health prober.
    pub fn reachable(&self) -> bool {
        self.store.health().is_up()
    }

    /// Every event after `after`, first from history, then live.
    pub async fn subscribe(&self, after: i64) -> Result<Subscription> {
        // Subscribe before reading `latest`: anything published in between is both in the
        // queue and in history, and the revision check drops the second copy.
        let live = self.events.subscribe();
        let mut jumps = self.jumps.clone();
        jumps.mark_unchanged();
        let latest = self.latest();
        let compacted = self.store.compacted_revision().await?;
        if after < compacted {
            return Err(Error::Compacted {
                requested: after,
                compacted,
            });
        }
        Ok(Subscription {
            store: self.store.clone(),
            live,
            jumps,
            page: VecDeque::new(),
            last: after,
            history_until: latest,
            lagged: false,
        })
    }
}

/// One watcher's position in the feed.
pub struct Subscription {
    store: Store,
    live: broadcast::Receiver<Arc<Event>>,
    /// The poller's jumps over compacted history (see [`Feed`]).
    jumps: watch::Receiver<i64>,
    /// Events read from the database and not yet handed out. Invariant: at most one page.
    page: VecDeque<Arc<Event>>,
    /// The last revision handed out.
    last: i64,
    /// History up to here is read from the database; after it, from the live queue.
    history_until: i64,
    /// The live queue overran this subscriber: the next call catches up from the database
    /// first. A flag rather than a step inside one call, so a call dropped midway (a watch
    /// racing its bookmark timer) leaves it set and skips nothing.
    lagged: bool,
}

// === impl Subscription ===

impl Subscription {
    /// The next event, in revision order. `Err` means this subscription cannot continue
    /// (history it needs was compacted, or the database is unreachable while catching up).
    ///
    /// Cancel-safe: every await leaves the subscription as it was or at a consistent later
    /// point (a page read is kept only once complete; a catch-up is redone until it finishes),
    /// so a caller may drop the future between events and call again.
    pub async fn next(&mut self) -> Result<Arc<Event>> {
        loop {
            if self.lagged {
                // Subscribe before reading the revision: anything published in between is
                // both in the queue and in history, and the revision check drops the copy.
                let live = self.live.resubscribe();
                let until = self.live_latest().await?;
                self.live = live;
                self.history_until = until;
                self.lagged = false;
                continue;
            }
            if let Some(ev) = self.page.pop_front() {
                self.last = ev.revision;
                return Ok(ev);
            }
            if self.last < self.history_until {
                let events = self.store.events_after(self.last, PAGE).await?;
                let until = self.history_until;
                self.page.extend(
                    events
                        .into_iter()
                        .filter(|e| e.revision <= until)
                        .map(Arc::new),
                );
                if self.page.is_empty() {
                    // Nothing more in history: everything later comes live.
                    self.history_until = self.last;
                }
                continue;
            }
            let received = tokio::select! {
                received = self.live.recv() => received,
                changed = self.jumps.changed() => {
                    let mark = *self.jumps.borrow_and_update();
                    if changed.is_ok() && mark > self.last {
                        return Err(Error::Compacted { requested: self.last, compacted: mark });
                    }
                    continue;
                }
            };
            match received {
                Ok(ev) if ev.revision <= self.last => continue,
                // Live events come one revision after another; a hole means the feed skipped
                // history (a restore, or compaction overtook it): never hand out what follows
                // as if nothing was missed.
                Ok(ev) if ev.revision != self.last + 1 => {
                    return Err(Error::Compacted {
                        requested: self.last,
                        compacted: ev.revision - 1,
                    });
                }
                Ok(ev) => {
                    self.last = ev.revision;
                    return Ok(ev);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the in-memory queue: catch up from the database.
                    self.lagged = true;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::NotFound("change feed (server shutting down)".into()));
                }
            }
        }
    }

    /// The last revision handed out: every change up to it has been seen.
    pub fn position(&self) -> i64 {
        self.last
    }

    async fn live_latest(&self) -> Result<i64> {
        self.store.current_revision().await
    }
}

// === impl Poller ===

impl Poller {
    /// The store's interval, or one second while the datastore is unreachable so service
    /// resumes promptly when it returns.
    fn interval(&self) -> std::time::Duration {
        let normal = self.store.poll_interval();
        if self.store.health().is_up() {
            normal
        } else {
            normal.min(std::time::Duration::from_secs(1))
        }
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last = *self.latest.borrow();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.store.committed() => {}
                _ = tokio::time::sleep(self.interval()) => {}
            }
            loop {
                match self.store.events_after(last, PAGE).await {
                    Ok(events) => {
                        let full = events.len() as i64 == PAGE;
                        for ev in events {
                            if ev.revision != last + 1 {
                                // Cannot happen with the serialised counter; say so loudly if it does.
                                tracing::error!(
                                    expected = last + 1,
                                    got = ev.revision,
                                    "change feed gap"
                                );
                            }
                            last = ev.revision;
                            // No receivers is fine: nobody is watching.
                            let _ = self.events.send(Arc::new(ev));
                        }
                        self.latest.send_replace(last);
                        if !full {
                            break;
                        }
                    }
                    Err(Error::Compacted { compacted, .. }) => {
                        // A restore (see `restore`) or compaction overtaking this poller.
                        tracing::warn!(
                            from = last,
                            to = compacted,
                            "the change feed's history was compacted past it (a restored datastore, or a poller far behind): every watch ends with 410 Gone and its client relists"
                        );
                        last = compacted;
                        self.latest.send_replace(last);
                        self.jumps.send_replace(compacted);
                    }
                    Err(e) => {
                        // The store told the prober already if it was a connection error.
                        tracing::debug!(error = %e, "the change feed's poll failed");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{Endpoint, PoolConfig};

    #[tokio::test]
    async fn subscription_replays_history_then_goes_live() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Endpoint::sqlite(dir.path().join("s.db")),
            &PoolConfig::default(),
        )
        .await
        .unwrap();
        for i in 0..3 {
            store.create(&format!("/r/{i}"), b"{}").await.unwrap();
        }
        let (feed, poller) = Feed::new(store.clone()).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(poller.run(async {
            let _ = stop_rx.await;
        }));
        let mut sub = feed.subscribe(1).await.unwrap();
        assert_eq!(sub.next().await.unwrap().revision, 2);
        assert_eq!(sub.next().await.unwrap().revision, 3);
        store.create("/r/live", b"{}").await.unwrap();
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((ev.revision, ev.path.as_str()), (4, "/r/live"));
        let _ = stop_tx.send(());
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_restore_under_a_live_subscription_ends_it_as_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Endpoint::sqlite(dir.path().join("s.db")),
            &PoolConfig::default(),
        )
        .await
        .unwrap();
        store.create("/r/a", b"{}").await.unwrap();
        let (feed, poller) = Feed::new(store.clone()).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(poller.run(async {
            let _ = stop_rx.await;
        }));
        let mut sub = feed.subscribe(1).await.unwrap();
        // Nothing else is written: the jump alone must end the subscription.
        let marked = store.mark_restored(100, 0).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
            .await
            .expect("the subscription learned of the restore");
        assert!(
            matches!(got, Err(Error::Compacted { requested: 1, compacted }) if compacted == marked.to),
            "{:?}",
            got.map(|e| e.revision)
        );
        // A new subscription from before the restore is refused; from the mark it works.
        assert!(matches!(
            feed.subscribe(1).await,
            Err(Error::Compacted { .. })
        ));
        let mut sub = feed.subscribe(marked.to).await.unwrap();
        store.create("/r/b", b"{}").await.unwrap();
        let ev = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((ev.revision, ev.path.as_str()), (marked.to + 1, "/r/b"));
        let _ = stop_tx.send(());
        task.await.unwrap();
    }
}
