//! kube-apiserver's `--max-requests-inflight` and `--max-mutating-requests-inflight`: beyond
//! them a request is answered 429 with `Retry-After` at once, which kubectl and client-go
//! retry, instead of queueing until everything times out.
//!
//! As in kube-apiserver's max-in-flight filter: long-running requests (watches, logs, exec)
//! are not counted; `system:masters` is never limited, so an administrator can still act on
//! a flooded server; reads and writes have separate bounds, so a flood of one cannot starve
//! the other. Invariant: a place is held exactly as long as its request is being answered.
//!
//! Watches have a bound of their own, per user (`--max-watches-per-user`; kube-apiserver has
//! no such flag, its priority-and-fairness seats are per request): an open watch costs memory
//! for as long as it lasts, so one client that leaks watches could otherwise take the
//! server's memory from everyone. The user is the one the request acts as (certificate,
//! bearer token or impersonation), so each node, service account and person has its own
//! share; `system:masters` counts too, as its watches cost the same memory (its plain
//! requests stay unlimited). Nodes are not affected: agents watch through their tunnel, not
//! the HTTP API. Invariant: a user's count is the number of its [`WatchPlace`]s alive, and
//! a user without one has no entry, so the table is bounded by the open watches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// kube-apiserver's defaults.
pub const DEFAULT_READ_ONLY: usize = 400;
pub const DEFAULT_MUTATING: usize = 200;
/// Open watches per user by default: far above what a real client holds (kubectl one, a
/// controller one or two per kind it follows, client-go's informers of a large operator a
/// few hundred), far below what fills a small board's memory (about 8 KiB each idle).
pub const DEFAULT_WATCHES_PER_USER: usize = 1000;

/// The bounds; `0` turns one off.
pub struct Limits {
    read_only: Option<Arc<Semaphore>>,
    mutating: Option<Arc<Semaphore>>,
    /// Open watches per user; `None` is no bound.
    watches_per_user: Option<usize>,
    /// Open watches of each user that has any (see the module's invariant).
    watches: Arc<Mutex<HashMap<String, usize>>>,
}

/// A request's place among the bound; given back on drop.
pub struct Place(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// One open watch of a user, held by the watch's task; uncounted on drop.
pub struct WatchPlace {
    watches: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

/// A user over `--max-watches-per-user`: the Status message (429) names the bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "user {user:?} has {limit} watches open, the most this server allows one user (--max-watches-per-user); close some and retry"
)]
pub struct TooManyWatches {
    pub user: String,
    pub limit: usize,
}

// === impl Limits ===

impl Limits {
    pub fn new(read_only: usize, mutating: usize, watches_per_user: usize) -> Limits {
        let bound = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n)));
        Limits {
            read_only: bound(read_only),
            mutating: bound(mutating),
            watches_per_user: (watches_per_user > 0).then_some(watches_per_user),
            watches: Arc::default(),
        }
    }

    /// A place for one more watch of `user`, or why not.
    pub fn watch(&self, user: &str) -> Result<WatchPlace, TooManyWatches> {
        // A poisoned lock only means a panic elsewhere between two plain integer updates.
        let mut open = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        // An entry is only made for a watch that is let in (limit is at least 1).
        let n = open.get(user).copied().unwrap_or(0);
        if let Some(limit) = self.watches_per_user
            && n >= limit
        {
            return Err(TooManyWatches {
                user: user.to_owned(),
                limit,
            });
        }
        open.insert(user.to_owned(), n + 1);
        Ok(WatchPlace {
            watches: self.watches.clone(),
            user: user.to_owned(),
        })
    }

    /// How many watches `user` has open.
    #[cfg(test)]
    fn watches_of(&self, user: &str) -> usize {
        let open = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        open.get(user).copied().unwrap_or(0)
    }

    /// A place for a request of this kind, or `None` when its bound is full.
    pub fn enter(&self, long_running: bool, mutating: bool, privileged: bool) -> Option<Place> {
        if long_running || privileged {
            return Some(Place(None));
        }
        let bound = if mutating {
            &self.mutating
        } else {
            &self.read_only
        };
        match bound {
            None => Some(Place(None)),
            Some(s) => s.clone().try_acquire_owned().ok().map(|p| Place(Some(p))),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::new(
            DEFAULT_READ_ONLY,
            DEFAULT_MUTATING,
            DEFAULT_WATCHES_PER_USER,
        )
    }
}

// === impl WatchPlace ===

impl Drop for WatchPlace {
    fn drop(&mut self) {
        let mut open = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_have_their_own_bounds_and_watches_and_masters_none() {
        let limits = Limits::new(2, 1, 0);
        let a = limits.enter(false, false, false).expect("first read");
        let _b = limits.enter(false, false, false).expect("second read");
        assert!(limits.enter(false, false, false).is_none(), "a third read");
        // Writes are not starved by reads, and the other way round.
        let w = limits.enter(false, true, false).expect("a write");
        assert!(limits.enter(false, true, false).is_none());
        // Watches and system:masters pass whatever the load.
        assert!(limits.enter(true, false, false).is_some());
        assert!(limits.enter(false, false, true).is_some());
        drop(a);
        assert!(limits.enter(false, false, false).is_some(), "a freed place");
        drop(w);
        assert!(limits.enter(false, true, false).is_some());
        // 0 is no bound.
        let open = Limits::new(0, 0, 0);
        let held: Vec<_> = (0..1000)
            .filter_map(|_| open.enter(false, false, false))
            .collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn one_user_at_its_watch_bound_leaves_the_others_theirs() {
        let limits = Limits::new(1, 1, 2);
        let a1 = limits.watch("alice").expect("alice's first");
        let _a2 = limits.watch("alice").expect("alice's second");
        let refused = limits.watch("alice").err().expect("alice's third is over");
        assert_eq!(refused.limit, 2);
        let message = refused.to_string();
        assert!(
            message.contains("--max-watches-per-user") && message.contains("\"alice\" has 2"),
            "{message}"
        );
        // Another user is not touched by alice's share.
        let _b = limits.watch("bob").expect("bob's first");
        assert_eq!(limits.watches_of("bob"), 1);
        // Watches are not in-flight requests: the read bound of 1 is still free.
        assert!(limits.enter(false, false, false).is_some());
        drop(a1);
        let _a3 = limits
            .watch("alice")
            .expect("a closed watch frees its place");
        assert_eq!(limits.watches_of("alice"), 2);
    }

    #[test]
    fn a_user_without_open_watches_leaves_no_entry() {
        let limits = Limits::new(1, 1, 3);
        let held: Vec<_> = (0..3).map(|_| limits.watch("carol").unwrap()).collect();
        assert!(limits.watch("carol").is_err());
        drop(held);
        let open = limits.watches.lock().unwrap();
        assert!(open.is_empty(), "{open:?}");
        drop(open);
        // 0 is no bound.
        let open = Limits::new(0, 0, 0);
        let held: Vec<_> = (0..5000).map(|_| open.watch("dave").unwrap()).collect();
        assert_eq!(open.watches_of("dave"), 5000);
        drop(held);
        assert_eq!(open.watches_of("dave"), 0);
    }
}
