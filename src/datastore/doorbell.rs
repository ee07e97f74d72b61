//! Cross-server wake-ups on MySQL/MariaDB, which has no LISTEN/NOTIFY.
//!
//! Each server parks one connection in a statement that returns at once when the revision
//! counter moved past what it last saw, and otherwise sleeps for up to [`PARK`]:
//! `SELECT /* keelson-doorbell */ CONNECTION_ID(), value, IF(value > ?, 0, SLEEP(5)) ...`.
//! After a commit, the writing server rings: it finds the parked statements of this database
//! in the process list (a user sees its own sessions there without extra privileges) and
//! interrupts each with `KILL QUERY`. The parked server re-runs its statement, sees the new
//! revision and wakes its change feed.
//!
//! Invariants: a ring is only ever an early wake-up; the change feed still reads revisions
//! from the table, so a lost ring (a parked statement restarting at that moment, servers that
//! use different database users, a network error) costs latency up to [`PARK`], never a
//! revision. The check and the sleep are one statement, so a commit that lands between two
//! parked statements is seen by the second, and one that lands during a parked statement is
//! rung after it committed, while that statement still sleeps.
//!
//! An idle server costs the database one statement per [`PARK`]; a busy one at most one ring
//! (a process-list query plus one `KILL QUERY` per other server) per [`RING_SPACING`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tokio::sync::Notify;

/// How long a parked statement sleeps when nothing happens.
pub const PARK: Duration = Duration::from_secs(5);
/// Rings closer together than this are merged: under write load a server rings at most
/// this often, and a remote watcher waits at most this much longer.
const RING_SPACING: Duration = Duration::from_millis(25);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Marks the parked statement in the process list; the ring query matches on it.
const MARK: &str = "SELECT /* keelson-doorbell */";
const PARKED: &str = "SELECT /* keelson-doorbell */ CONNECTION_ID(), value, IF(value > ?, 0, SLEEP(5)) FROM keelson_meta WHERE name = 'revision'";
/// `ID <> ?` leaves out this server's own parked connection: its feed was woken locally.
const PARKED_ELSEWHERE: &str = "SELECT ID FROM information_schema.PROCESSLIST \
     WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND ID <> ? AND INFO LIKE ?";

const ER_QUERY_INTERRUPTED: &str = "70100";
const ER_NO_SUCH_THREAD: u16 = 1094;
const ER_KILL_DENIED: u16 = 1095;

/// One server's doorbell: the parked connection and the ringer. Both tasks end when it drops.
pub struct Doorbell {
    ring: Arc<Notify>,
    shared: Arc<Shared>,
    tasks: [tokio::task::AbortHandle; 2],
}

/// What the two tasks share.
struct Shared {
    /// This server's parked connection id, 0 while it has none.
    parked_id: AtomicU64,
    /// Statements sent, added to the store's counter.
    statements: Arc<AtomicU64>,
}

impl Doorbell {
    /// Parks a connection of its own on `url` and rings through `pool`. `wake` is the change
    /// feed's wake-up.
    pub fn spawn(
        url: String,
        pool: AnyPool,
        wake: Arc<Notify>,
        statements: Arc<AtomicU64>,
        health: super::Health,
    ) -> Doorbell {
        let shared = Arc::new(Shared {
            parked_id: AtomicU64::new(0),
            statements,
        });
        let ring = Arc::new(Notify::new());
        let parker = tokio::spawn(tracing::Instrument::instrument(
            park_forever(url, wake, shared.clone(), health),
            tracing::debug_span!("doorbell-park"),
        ));
        let ringer = tokio::spawn(tracing::Instrument::instrument(
            ring_forever(pool, ring.clone(), shared.clone()),
            tracing::debug_span!("doorbell-ring"),
        ));
        Doorbell {
            ring,
            shared,
            tasks: [parker.abort_handle(), ringer.abort_handle()],
        }
    }

    /// Called after every local commit; cheap, and merged with rings already pending.
    pub fn ring(&self) {
        self.ring.notify_one();
    }
}

impl Doorbell {
    /// Stops both tasks and interrupts the parked statement, which would otherwise hold its
    /// table open on the database for up to [`PARK`] after the connection is gone.
    pub async fn close(&self, pool: &AnyPool) {
        for task in &self.tasks {
            task.abort();
        }
        let id = self.shared.parked_id.swap(0, Ordering::Relaxed);
        if id != 0 {
            let kill = format!("KILL QUERY {id}");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(kill)).execute(pool).await;
        }
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Parks until aborted. The parked connection is the one that is always busy on the
/// database, so losing it is the first sign of the database going away: `health` is told to
/// look at once.
async fn park_forever(url: String, wake: Arc<Notify>, shared: Arc<Shared>, health: super::Health) {
    // The revision last seen, kept across reconnects so a commit made while the parked
    // connection was down still wakes the feed.
    let seen = AtomicI64::new(-1);
    let mut delay = Duration::from_millis(250);
    loop {
        let Err(e) = park(&url, &wake, &shared, &seen, &mut delay).await;
        health.suspect();
        shared.parked_id.store(0, Ordering::Relaxed);
        tracing::debug!(error = %e, retry_in = ?delay, "doorbell connection lost");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn park(
    url: &str,
    wake: &Notify,
    shared: &Shared,
    seen: &AtomicI64,
    delay: &mut Duration,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut conn = AnyConnection::connect(url).await?;
    *delay = Duration::from_millis(250);
    loop {
        shared.statements.fetch_add(1, Ordering::Relaxed);
        let row = sqlx::query(PARKED)
            .bind(seen.load(Ordering::Relaxed))
            .fetch_one(&mut conn)
            .await;
        match row {
            Ok(row) => {
                let id: i64 = row.try_get(0)?;
                let revision: i64 = row.try_get(1)?;
                shared.parked_id.store(id as u64, Ordering::Relaxed);
                if seen.swap(revision, Ordering::Relaxed) != revision {
                    wake.notify_one();
                }
            }
            // Rung: run the statement again, which returns at once with the new revision.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(ER_QUERY_INTERRUPTED) => {}
            Err(e) => return Err(e),
        }
    }
}

async fn ring_forever(pool: AnyPool, ring: Arc<Notify>, shared: Arc<Shared>) {
    let pattern = format!("{MARK}%");
    let mut warned = false;
    loop {
        ring.notified().await;
        if let Err(e) = ring_once(&pool, &pattern, &shared, &mut warned).await {
            // The others' feeds still poll; only their latency suffers.
            tracing::debug!(error = %e, "could not ring the other servers' doorbells");
        }
        tokio::time::sleep(RING_SPACING).await;
    }
}

async fn ring_once(
    pool: &AnyPool,
    pattern: &str,
    shared: &Shared,
    warned: &mut bool,
) -> Result<(), sqlx::Error> {
    shared.statements.fetch_add(1, Ordering::Relaxed);
    let own = shared.parked_id.load(Ordering::Relaxed) as i64;
    let ids: Vec<i64> = sqlx::query_scalar(PARKED_ELSEWHERE)
        .bind(own)
        .bind(pattern)
        .fetch_all(pool)
        .await?;
    for id in ids {
        shared.statements.fetch_add(1, Ordering::Relaxed);
        // `KILL` takes no placeholders; `id` is an integer the database just gave us.
        let kill = format!("KILL QUERY {id}");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(kill)).execute(pool).await {
            Ok(_) => {}
            // The parked statement's connection closed in between.
            Err(sqlx::Error::Database(e)) if mysql_code(&*e) == Some(ER_NO_SUCH_THREAD) => {}
            Err(sqlx::Error::Database(e)) if mysql_code(&*e) == Some(ER_KILL_DENIED) => {
                if !std::mem::replace(warned, true) {
                    tracing::warn!(
                        "cannot wake another server's change feed: it connects as a different database user; give every server the same --datastore-endpoint user, or changes reach the others only by polling (up to 5 s)"
                    );
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// MySQL's numeric error code (sqlx exposes the SQLSTATE as `code`).
fn mysql_code(e: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number())
}
