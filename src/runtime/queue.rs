//! A de-duplicating work queue of keys, with delayed and rate-limited retries.
//!
//! Invariants: a key is at most once in the ready queue (adding it again while it waits is a
//! no-op, so a burst of changes is one reconcile); a key that keeps failing waits twice as long
//! each time, up to [`MAX_BACKOFF`], until it succeeds and is forgotten.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

const BASE_BACKOFF: Duration = Duration::from_millis(20);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct WorkQueue {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    /// Keys to add once their moment comes; the sequence number keeps equal moments apart.
    delayed: BTreeMap<(Instant, u64), String>,
    seq: u64,
    failures: HashMap<String, u32>,
}

impl WorkQueue {
    pub fn new() -> WorkQueue {
        WorkQueue::default()
    }

    pub fn add(&mut self, key: String) {
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    pub fn add_after(&mut self, key: String, delay: Duration) {
        self.seq += 1;
        self.delayed.insert((Instant::now() + delay, self.seq), key);
    }

    /// Adds `key` again after its backoff, which doubles with each failure in a row.
    pub fn retry(&mut self, key: String) -> Duration {
        let n = self.failures.entry(key.clone()).or_insert(0);
        let delay = BASE_BACKOFF
            .saturating_mul(1u32 << (*n).min(20))
            .min(MAX_BACKOFF);
        *n += 1;
        self.add_after(key, delay);
        delay
    }

    /// The key succeeded: its next failure starts from the base backoff again.
    pub fn forget(&mut self, key: &str) {
        self.failures.remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    fn promote_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.add(key);
        }
    }

    /// Takes the next key that is due, waiting for one. Cancel-safe: the queue changes only
    /// when a key is returned.
    pub async fn next(&mut self) -> String {
        loop {
            self.promote_due();
            if let Some(key) = self.ready.pop_front() {
                self.queued.remove(&key);
                return key;
            }
            match self.delayed.first_key_value() {
                Some(((at, _), _)) => tokio::time::sleep_until(*at).await,
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Every key that is due now, without waiting.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the scheduler batches with it next")
    )]
    pub fn drain_ready(&mut self) -> Vec<String> {
        self.promote_due();
        self.queued.clear();
        self.ready.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keys_are_deduplicated_and_retries_back_off() {
        let mut q = WorkQueue::new();
        q.add("a".into());
        q.add("b".into());
        q.add("a".into());
        assert_eq!(q.next().await, "a");
        assert_eq!(q.next().await, "b");
        assert_eq!(q.len(), 0);
        // Once taken, a key may be added again.
        q.add("a".into());
        assert_eq!(q.next().await, "a");

        assert_eq!(q.retry("c".into()), BASE_BACKOFF);
        assert_eq!(q.retry("c".into()), BASE_BACKOFF * 2);
        let start = Instant::now();
        assert_eq!(q.next().await, "c");
        assert!(start.elapsed() >= BASE_BACKOFF);
        q.forget("c");
        assert_eq!(q.retry("c".into()), BASE_BACKOFF);
        for _ in 0..40 {
            q.retry("d".into());
        }
        assert_eq!(q.retry("d".into()), MAX_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_takes_what_is_due() {
        let mut q = WorkQueue::new();
        q.add("a".into());
        q.add_after("later".into(), Duration::from_secs(5));
        assert_eq!(q.drain_ready(), vec!["a".to_string()]);
        assert!(q.drain_ready().is_empty());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(q.drain_ready(), vec!["later".to_string()]);
    }
}
