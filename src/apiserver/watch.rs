//! Watches: a stream of `{"type": ..., "object": ...}` lines fed from the change feed.
//!
//! A watch is no task of its own: it is the response body, a state machine ([`State`]) that
//! makes its next line when the connection asks for one. A slow client therefore
//! back-pressures its own subscription (which catches up from the database) and nothing else,
//! and an idle watch costs only its state — no task, no queue of encoded events (about 2 KiB
//! against 4 with a task and a channel; HTTP/2 streams make that the bulk of a watch's cost).
//! The watch ends when the client goes away (the body is dropped), its timeout passes, or the
//! server shuts down. Invariant: a watch holds its user's [`WatchPlace`] exactly as long as
//! its body exists, so `--max-watches-per-user` counts open watches, however they end.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::watch as signal;

use super::Api;
use super::auth::Identity;
use super::inflight::WatchPlace;
use super::resources::{ObjectRef, Resource};
use super::selector::Selector;
use super::status::ApiError;
use super::table::{self, Include};
use crate::datastore::feed::Subscription;
use crate::datastore::{self, EventKind};

/// Longest a watch lives when the client names no timeout (the API server uses 30–60 min).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest any watch lives, whatever `timeoutSeconds` asks: clients re-watch from their last
/// resourceVersion, and no client can pin a subscription and a timer forever.
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

/// Opens a watch for `user`: the stream yields the encoded lines of the response body and
/// ends with the watch. Refused (429) when the user has `--max-watches-per-user` watches open
/// already.
pub fn open(
    api: Arc<Api>,
    user: &Identity,
    req: WatchRequest,
) -> Result<impl Stream<Item = Bytes> + Send + Sync + 'static, ApiError> {
    let Identity::User { name, .. } = user else {
        return Err(ApiError::Unauthorized);
    };
    let place = api
        .inflight
        .watch(name)
        .map_err(|e| ApiError::TooManyRequests(e.to_string()))?;
    let watch = Watch {
        ends: Ends {
            timeout: Box::pin(tokio::time::sleep(req.timeout)),
            shutdown: api.shutdown.clone(),
        },
        lines: Lines {
            state: State::Start,
            writer: Writer {
                bookmark_due: tokio::time::Instant::now() + req.bookmark_interval,
                api,
                req,
                sent_definitions: false,
            },
        },
        _place: place,
    };
    let lines = futures_util::stream::unfold(watch, |mut w| async move {
        let line = w.next().await?;
        Some((line, w))
    });
    Ok(Exclusive(std::sync::Mutex::new(Box::pin(lines))))
}

/// A stream that is `Sync` because it is only ever used through `&mut` (a response body must
/// be `Sync`; the database futures inside a watch are not). The mutex is never locked: it is
/// reached with `get_mut`, which costs nothing.
struct Exclusive<S>(std::sync::Mutex<Pin<Box<S>>>);

impl<S: Stream> Stream for Exclusive<S> {
    type Item = S::Item;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        // Poisoning needs a panic while locked, and it is never locked.
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        inner.as_mut().poll_next(cx)
    }
}

/// One open watch, owned by its response body.
struct Watch {
    ends: Ends,
    lines: Lines,
    /// The user's place among its open watches; given back when the body is dropped.
    _place: WatchPlace,
}

/// What ends a watch besides its client.
struct Ends {
    /// `timeoutSeconds` (bounded by [`MAX_TIMEOUT`]). Boxed: a timer entry must not move,
    /// and the watch moves in and out of the stream between lines.
    timeout: Pin<Box<tokio::time::Sleep>>,
    /// Flips to true when the server begins shutting down.
    shutdown: signal::Receiver<bool>,
}

/// Where the watch is, and what makes its lines.
struct Lines {
    state: State,
    writer: Writer,
}

/// Where a watch is. Each step makes at most one line and may move on.
enum State {
    /// Nothing sent yet. Next: the current objects ([`State::Listing`]) for [`Start::Now`],
    /// else the subscription ([`State::Subscribing`]); a failed list ends with an ERROR line.
    Start,
    /// Sending the current objects as ADDED, then (with `sendInitialEvents`) the BOOKMARK
    /// marking their end, then subscribing after `revision`.
    Listing {
        items: std::vec::IntoIter<Value>,
        revision: i64,
    },
    /// Next: subscribe to changes after this revision; if history is gone, an ERROR line (410)
    /// and the end.
    Subscribing(i64),
    /// Sending the changes under `prefix` as they come, and bookmarks when due. A feed error
    /// ends the watch with an ERROR line.
    Following {
        subscription: Subscription,
        prefix: String,
    },
    /// Over (an ERROR line was the last): the stream ends.
    Done,
}

/// Makes the lines of one watch.
struct Writer {
    api: Arc<Api>,
    req: WatchRequest,
    /// Table output: the column definitions go with the first row only.
    sent_definitions: bool,
    /// When the next BOOKMARK is due (with `allowWatchBookmarks`).
    bookmark_due: tokio::time::Instant,
}

/// What one wait on the feed made.
enum Followed {
    Line(Bytes),
    /// The last line: the watch ends after it.
    Error(Bytes),
    /// A change this watch does not show.
    Nothing,
}

// === impl Watch ===

impl Watch {
    /// The next line, or `None` once the watch is over. A step cut short here is never
    /// resumed: the watch ends with it.
    async fn next(&mut self) -> Option<Bytes> {
        tokio::select! {
            line = self.lines.next() => line,
            _ = self.ends.reached() => None,
        }
    }
}

// === impl Ends ===

impl Ends {
    async fn reached(&mut self) {
        tokio::select! {
            _ = &mut self.timeout => {}
            _ = self.shutdown.wait_for(|stop| *stop) => {}
        }
    }
}

// === impl Lines ===

impl Lines {
    /// Steps until a line is made or the watch is over.
    async fn next(&mut self) -> Option<Bytes> {
        let w = &mut self.writer;
        loop {
            match &mut self.state {
                State::Done => return None,
                State::Start => match w.req.start {
                    Start::After(revision) => self.state = State::Subscribing(revision),
                    // Boxed, as every rare step's future, so that a watch's idle state holds
                    // only the feed's wait: it is what each open watch keeps.
                    Start::Now => {
                        let list = w
                            .api
                            .registry
                            .list(w.req.resource, w.req.namespace.as_deref());
                        match Box::pin(list).await {
                            Ok((revision, items)) => {
                                self.state = State::Listing {
                                    items: items.into_iter(),
                                    revision,
                                }
                            }
                            Err(e) => {
                                self.state = State::Done;
                                return Some(w.error(&e));
                            }
                        }
                    }
                },
                State::Listing { items, revision } => {
                    let revision = *revision;
                    if let Some(obj) = items.by_ref().find(|o| w.req.selector.matches(o)) {
                        return Some(w.event("ADDED", obj));
                    }
                    self.state = State::Subscribing(revision);
                    if w.req.initial_events {
                        return Some(w.bookmark(revision, true));
                    }
                }
                State::Subscribing(after) => {
                    let after = *after;
                    match Box::pin(w.api.feed.subscribe(after)).await {
                        Ok(subscription) => {
                            self.state = State::Following {
                                subscription,
                                prefix: w.req.resource.prefix(w.req.namespace.as_deref()),
                            }
                        }
                        Err(e) => {
                            self.state = State::Done;
                            return Some(w.error(&ApiError::from(e)));
                        }
                    }
                }
                State::Following {
                    subscription,
                    prefix,
                } => match w.follow(subscription, prefix).await {
                    Followed::Line(line) => return Some(line),
                    Followed::Error(line) => {
                        self.state = State::Done;
                        return Some(line);
                    }
                    Followed::Nothing => {}
                },
            }
        }
    }
}

// === impl Writer ===

impl Writer {
    /// Waits for the next change (or bookmark) and makes its line.
    async fn follow(&mut self, subscription: &mut Subscription, prefix: &str) -> Followed {
        // `next` is cancel-safe, so the timer may win the race at any moment.
        let ev = tokio::select! {
            ev = subscription.next() => ev,
            _ = tokio::time::sleep_until(self.bookmark_due), if self.req.bookmarks => {
                self.bookmark_due = tokio::time::Instant::now() + self.req.bookmark_interval;
                // Every change up to the subscription's position was sent or filtered out
                // (revisions are gapless and in order): the client may resume from it.
                return Followed::Line(self.bookmark(subscription.position(), false));
            }
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return Followed::Error(self.error(&ApiError::from(e))),
        };
        // A view's watch sees its stored resource's changes (converted by `decode`).
        let ours = ev.path.starts_with(prefix)
            && ObjectRef::from_path(&ev.path)
                .is_some_and(|r| r.resource == self.req.resource.storage());
        if !ours {
            return Followed::Nothing;
        }
        let rec = datastore::Record {
            path: ev.path.clone(),
            create_revision: ev.create_revision,
            revision: ev.revision,
            value: ev.value.clone(),
        };
        let decoded = Box::pin(self.api.registry.decode_fresh(self.req.resource, &rec)).await;
        let Ok(obj) = decoded else {
            return Followed::Nothing;
        };
        if !self.req.selector.matches(&obj) {
            return Followed::Nothing;
        }
        let kind = match ev.kind {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        };
        Followed::Line(self.event(kind, obj))
    }

    /// One event's line.
    fn event(&mut self, kind: &str, obj: Value) -> Bytes {
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
        line(json!({"type": kind, "object": object}))
    }

    /// A BOOKMARK: only the kind and the revision the client may resume from.
    fn bookmark(&self, revision: i64, initial_events_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.req.resource.kind,
            "apiVersion": self.req.resource.api_version(),
            "metadata": meta,
        });
        line(json!({"type": "BOOKMARK", "object": object}))
    }

    fn error(&self, e: &ApiError) -> Bytes {
        line(json!({"type": "ERROR", "object": e.to_status()}))
    }
}

fn line(v: Value) -> Bytes {
    let mut buf = serde_json::to_vec(&v).unwrap_or_default();
    buf.push(b'\n');
    Bytes::from(buf)
}
