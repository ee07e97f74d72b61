//! Controllers that must run on exactly one server at a time: the holder of a database lease.
//!
//! [`lease`] elects the holder and fences it; the rest run under it, on the shared runtime
//! ([`crate::runtime`]): [`node_lifecycle`] marks silent nodes, [`replicaset`] keeps pods of a
//! template, and [`events`] records what they did. [`owner`] holds what they share about
//! objects.

pub mod events;
pub mod lease;
pub mod node_lifecycle;
pub mod owner;
pub mod replicaset;

use std::time::Duration;

use crate::apiserver::registry::Registry;
use crate::apiserver::resources::{NODES, Resource};
use crate::runtime::controller::{self, Reconciler, Starter};

/// What runs under the controllers lease: the kinds their cache holds, and what starts them
/// once it is synced.
pub fn under_lease(registry: Registry, grace: Duration) -> (Vec<&'static Resource>, Starter) {
    let replicasets = move || replicaset::ReplicaSets {
        events: events::Recorder::new(registry.clone(), "replicaset-controller"),
    };
    let mut kinds: Vec<&'static Resource> = vec![&NODES];
    kinds.extend(replicasets().kinds());
    kinds.sort_by_key(|r| r.plural);
    kinds.dedup_by_key(|r| r.plural);
    let starter: Starter = Box::new(move |ctx, set| {
        set.spawn(node_lifecycle::NodeLifecycle { grace }.run(ctx.clone()));
        set.spawn(controller::run(replicasets(), ctx));
    });
    (kinds, starter)
}
