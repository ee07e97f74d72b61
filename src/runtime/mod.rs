//! What every controller shares: an in-memory cache of the objects they read, kept current
//! from the change feed; a de-duplicating work queue; and the loop that runs a reconciler
//! only while this server holds the controllers lease.
//!
//! The split follows kube-runtime's (watcher → reflector → controller): [`reflector`] lists
//! each cached kind once and then applies the feed's events to the [`cache::Cache`] — no
//! database statement beyond the feed while nothing changes; [`queue::WorkQueue`] holds keys,
//! never objects, so a burst of changes to one object is one reconcile; [`controller`] drives
//! a [`controller::Reconciler`] from cache changes and its own retries.
//!
//! Invariants: the cache is built fresh each time this server becomes the holder and dropped
//! when it stops being one (a follower holds nothing); a reconciler sees its own writes
//! before its next reconcile of any key (the runner waits until the cache reached the
//! revisions it wrote).

pub mod cache;
pub mod controller;
pub mod frozen;
pub mod queue;
pub mod reflector;
pub mod trim;
