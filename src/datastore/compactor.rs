//! Drops old history on a timer, keeping at least one interval's worth.
//!
//! At each tick, history up to the revision seen at the previous tick is dropped, so a
//! watcher can always resume from any revision younger than one interval. Idempotent, so
//! several servers may run it at once.

use std::time::Duration;

use super::Store;

pub struct Compactor {
    pub store: Store,
    pub interval: Duration,
}

impl Compactor {
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        if self.interval.is_zero() {
            return;
        }
        tokio::pin!(shutdown);
        let mut previous: Option<i64> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            let current = match self.store.current_revision().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "compaction skipped");
                    continue;
                }
            };
            if let Some(through) = previous {
                match self.store.compact(through).await {
                    Ok(()) => tracing::debug!(through, "compacted history"),
                    Err(e) => tracing::warn!(error = %e, "compaction failed"),
                }
            }
            previous = Some(current);
        }
    }
}
