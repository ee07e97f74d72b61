//! PostgreSQL LISTEN/NOTIFY: every write notifies a channel at commit, and each server's
//! listener wakes its change feed at once instead of waiting for the next poll.
//!
//! A wake-up carries no data: the feed still reads revisions from the table, so a lost
//! notification only costs latency (the poll catches up), never a revision.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::Health;

pub const CHANNEL: &str = "keelson_revisions";
pub const NOTIFY: &str = "NOTIFY keelson_revisions";

const RETRY_MAX: Duration = Duration::from_secs(10);

/// Listens until aborted. A lost LISTEN connection is the first sign of a database going away
/// (the others' connections sit idle in the pool): `health` is told to look at once.
pub fn spawn_listener(url: String, wake: Arc<Notify>, health: Health) -> tokio::task::AbortHandle {
    let task = async move {
        let mut delay = Duration::from_millis(250);
        loop {
            let lost = listen(&url, &wake).await;
            health.suspect();
            match lost {
                Ok(()) => delay = Duration::from_millis(250),
                Err(e) => {
                    tracing::debug!(error = %e, retry_in = ?delay, "datastore LISTEN connection lost");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(
        task,
        tracing::debug_span!("pg-listen"),
    ))
    .abort_handle()
}

async fn listen(url: &str, wake: &Notify) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    // Anything committed while we were not listening is picked up by this wake.
    wake.notify_one();
    loop {
        match listener.try_recv().await? {
            Some(_) => wake.notify_one(),
            None => return Ok(()), // connection lost; reconnect
        }
    }
}
