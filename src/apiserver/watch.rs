//! Watches: a stream of `{"type": ..., "object": ...}` lines fed from the change feed.
//!
//! One task per watch reads its [`Subscription`] and writes encoded events into a small
//! bounded channel that the HTTP body drains; a slow client therefore back-pressures its own
//! subscription (which catches up from the database) and nothing else. The watch ends when
//! the client goes away, its timeout passes, or the server shuts down.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Api;
use super::auth::Identity;
use super::resources::{ObjectRef, Resource};
use super::selector::Selector;
use super::status::ApiError;
use super::table::{self, Include};
use crate::datastore::{self, EventKind};

/// Encoded events buffered per watch before the writer waits for the client.
const WATCH_BUFFER: usize = 16;
/// Longest a watch lives when the client names no timeout (the API server uses 30–60 min).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest any watch lives, whatever `timeoutSeconds` asks: clients re-watch from their last
/// resourceVersion, and no client can pin a task and a timer forever.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// Current state as ADDED events, then changes (resourceVersion unset or "0").
    Now,
    /// Changes after this revision.
    After(i64),
}

pub struct WatchRequest {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub selector: Selector,
    pub start: Start,
    pub timeout: Duration,
    /// `Some` when the client asked for Table output.
    pub table: Option<Include>,
    /// `allowWatchBookmarks`: a BOOKMARK with the revision the watch has reached every
    /// `bookmark_interval`, whether or not anything changed.
    pub bookmarks: bool,
    /// How often bookmarks go out (`--watch-bookmark-interval`; kube-apiserver: about a minute).
    pub bookmark_interval: Duration,
    /// `sendInitialEvents`: the current objects as ADDED, then a BOOKMARK marking their end.
    pub initial_events: bool,
}

/// Starts the watch task for `user`; the receiver yields the encoded lines for the response
/// body. Refused (429) when the user has `--max-watches-per-user` watches open already.
pub fn spawn(
    api: Arc<Api>,
    user: &Identity,
    req: WatchRequest,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let Identity::User { name, .. } = user else {
        return Err(ApiError::Unauthorized);
    };
    // Held by the task, so the place is given back when the watch ends however it ends.
    let place = api
        .inflight
        .watch(name)
        .map_err(|e| ApiError::TooManyRequests(e.to_string()))?;
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    let span = tracing::debug_span!("watch", resource = req.resource.plural);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _place = place;
            let mut shutdown = api.shutdown.clone();
            let timeout = tokio::time::sleep(req.timeout);
            tokio::pin!(timeout);
            tokio::select! {
                _ = run(&api, &req, &tx) => {}
                _ = tx.closed() => {}
                _ = &mut timeout => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        },
        span,
    ));
    Ok(rx)
}

async fn run(api: &Api, req: &WatchRequest, tx: &mpsc::Sender<Bytes>) {
    let mut writer = Writer {
        req,
        tx,
        sent_definitions: false,
    };
    let after = match req.start {
        Start::After(rev) => rev,
        Start::Now => match api
            .registry
            .list(req.resource, req.namespace.as_deref())
            .await
        {
            Ok((rev, items)) => {
                for obj in items.into_iter().filter(|o| req.selector.matches(o)) {
                    if !writer.send("ADDED", obj).await {
                        return;
                    }
                }
                if req.initial_events && !writer.bookmark(rev, true).await {
                    return;
                }
                rev
            }
            Err(e) => return writer.error(&e).await,
        },
    };
    let mut sub = match api.feed.subscribe(after).await {
        Ok(sub) => sub,
        Err(e) => return writer.error(&ApiError::from(e)).await,
    };
    let prefix = req.resource.prefix(req.namespace.as_deref());
    let mut bookmark_due = tokio::time::Instant::now() + req.bookmark_interval;
    loop {
        // `next` is cancel-safe, so the timer may win the race at any moment.
        let ev = tokio::select! {
            ev = sub.next() => ev,
            _ = tokio::time::sleep_until(bookmark_due), if req.bookmarks => {
                bookmark_due = tokio::time::Instant::now() + req.bookmark_interval;
                // Every change up to the subscription's position was sent or filtered out
                // (revisions are gapless and in order): the client may resume from it.
                if !writer.bookmark(sub.position(), false).await {
                    return;
                }
                continue;
            }
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return writer.error(&ApiError::from(e)).await,
        };
        // A view's watch sees its stored resource's changes (converted by `decode`).
        let ours = ev.path.starts_with(&prefix)
            && ObjectRef::from_path(&ev.path).is_some_and(|r| r.resource == req.resource.storage());
        if !ours {
            continue;
        }
        let rec = datastore::Record {
            path: ev.path.clone(),
            create_revision: ev.create_revision,
            revision: ev.revision,
            value: ev.value.clone(),
        };
        let Ok(obj) = api.registry.decode_fresh(req.resource, &rec).await else {
            continue;
        };
        if !req.selector.matches(&obj) {
            continue;
        }
        let kind = match ev.kind {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        };
        if !writer.send(kind, obj).await {
            return;
        }
    }
}

struct Writer<'a> {
    req: &'a WatchRequest,
    tx: &'a mpsc::Sender<Bytes>,
    sent_definitions: bool,
}

impl Writer<'_> {
    /// Sends one event; false when the client is gone.
    async fn send(&mut self, kind: &str, obj: Value) -> bool {
        let object = match self.req.table {
            Some(include) => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let t = table::table(
                    self.req.resource,
                    std::slice::from_ref(&obj),
                    rv,
                    include,
                    !self.sent_definitions,
                );
                self.sent_definitions = true;
                t
            }
            None => obj,
        };
        self.line(json!({"type": kind, "object": object})).await
    }

    /// A BOOKMARK: only the kind and the revision the client may resume from.
    async fn bookmark(&mut self, revision: i64, initial_events_end: bool) -> bool {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.req.resource.kind,
            "apiVersion": self.req.resource.api_version(),
            "metadata": meta,
        });
        self.line(json!({"type": "BOOKMARK", "object": object}))
            .await
    }

    async fn error(&mut self, e: &ApiError) {
        self.line(json!({"type": "ERROR", "object": e.to_status()}))
            .await;
    }

    async fn line(&self, v: Value) -> bool {
        let mut buf = serde_json::to_vec(&v).unwrap_or_default();
        buf.push(b'\n');
        self.tx.send(Bytes::from(buf)).await.is_ok()
    }
}
