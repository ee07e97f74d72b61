//! kube-apiserver's `--max-requests-inflight` and `--max-mutating-requests-inflight`: beyond
//! them a request is answered 429 with `Retry-After` at once, which kubectl and client-go
//! retry, instead of queueing until everything times out.
//!
//! As in kube-apiserver's max-in-flight filter: long-running requests (watches, logs, exec)
//! are not counted; `system:masters` is never limited, so an administrator can still act on
//! a flooded server; reads and writes have separate bounds, so a flood of one cannot starve
//! the other. Invariant: a place is held exactly as long as its request is being answered.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// kube-apiserver's defaults.
pub const DEFAULT_READ_ONLY: usize = 400;
pub const DEFAULT_MUTATING: usize = 200;

/// The two bounds; `0` turns one off.
pub struct Limits {
    read_only: Option<Arc<Semaphore>>,
    mutating: Option<Arc<Semaphore>>,
}

/// A request's place among the bound; given back on drop.
pub struct Place(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Limits {
    pub fn new(read_only: usize, mutating: usize) -> Limits {
        let bound = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n)));
        Limits {
            read_only: bound(read_only),
            mutating: bound(mutating),
        }
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
        Limits::new(DEFAULT_READ_ONLY, DEFAULT_MUTATING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_have_their_own_bounds_and_watches_and_masters_none() {
        let limits = Limits::new(2, 1);
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
        let open = Limits::new(0, 0);
        let held: Vec<_> = (0..1000)
            .filter_map(|_| open.enter(false, false, false))
            .collect();
        assert_eq!(held.len(), 1000);
    }
}
