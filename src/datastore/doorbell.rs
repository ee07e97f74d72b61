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
//!
//! On a Galera cluster (see `galera`), each node's process list shows only its own sessions,
//! and the servers of other nodes park there. The ringer therefore also rings every other
//! node of the cluster: it learns their client addresses from `wsrep_incoming_addresses`
//! (again every [`MEMBERS_REFRESH`]) and keeps one connection to each, with the endpoint's
//! credentials, database and TLS settings, to query that node's process list and interrupt
//! the statements parked there. A ring reaches a node maybe before that node applied the
//! write; it still wakes the right revision, because parked statements on Galera read
//! causally (`wsrep_sync_wait`): the statement re-run after the ring first waits until its
//! node applied everything committed before it started, the rung write included. A node
//! that cannot be reached (down, or its reported address unroutable from here) only costs
//! the servers parked there their early wake-up: their feeds still poll every [`PARK`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tokio::sync::{Notify, watch};

use super::galera;

/// How long a parked statement sleeps when nothing happens.
pub const PARK: Duration = Duration::from_secs(5);
/// Rings closer together than this are merged: under write load a server rings at most
/// this often, and a remote watcher waits at most this much longer.
const RING_SPACING: Duration = Duration::from_millis(25);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the ringer re-reads a Galera cluster's members, to ring nodes that joined and
/// stop ringing nodes that left.
const MEMBERS_REFRESH: Duration = Duration::from_secs(5);
/// Longest a ring of another node, or a connection to it, may take: a node that is gone
/// must not hold up the rings of the others (each node is rung by a task of its own).
const PEER_DEADLINE: Duration = Duration::from_secs(2);

/// Marks the parked statement in the process list; the ring query matches on it.
const MARK: &str = "SELECT /* keelson-doorbell */";
const PARKED: &str = "SELECT /* keelson-doorbell */ CONNECTION_ID(), value, IF(value > ?, 0, SLEEP(5)) FROM keelson_meta WHERE name = 'revision'";
/// `ID <> ?` leaves out this server's own parked connection: its feed was woken locally.
const PARKED_ELSEWHERE: &str = "SELECT ID FROM information_schema.PROCESSLIST \
     WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND ID <> ? AND INFO LIKE ?";

const ER_QUERY_INTERRUPTED: &str = "70100";
const ER_NO_SUCH_THREAD: u16 = 1094;
const ER_KILL_DENIED: u16 = 1095;

/// One server's doorbell: the parked connection, the ringer and, on Galera, the ringers of
/// the other nodes. All tasks end when it drops.
pub struct Doorbell {
    ring: Arc<Notify>,
    shared: Arc<Shared>,
    /// The parker, the local ringer, and the task that keeps one ringer per other Galera node
    /// (those live in its `JoinSet`, so they end with it).
    tasks: [tokio::task::AbortHandle; 3],
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
        // Counts rings for the other nodes' ringers; a watch, so rings merge while one runs.
        let (rings, rung) = watch::channel(0u64);
        let parker = tokio::spawn(tracing::Instrument::instrument(
            park_forever(url.clone(), wake, shared.clone(), health),
            tracing::debug_span!("doorbell-park"),
        ));
        let ringer = tokio::spawn(tracing::Instrument::instrument(
            ring_forever(pool.clone(), ring.clone(), shared.clone(), rings),
            tracing::debug_span!("doorbell-ring"),
        ));
        let peers = tokio::spawn(tracing::Instrument::instrument(
            ring_peers_forever(url, pool, rung, shared.clone()),
            tracing::debug_span!("doorbell-peers"),
        ));
        Doorbell {
            ring,
            shared,
            tasks: [
                parker.abort_handle(),
                ringer.abort_handle(),
                peers.abort_handle(),
            ],
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
    // On Galera the parked statement reads causally, so one re-run after a ring from another
    // node sees that node's write (see the module doc).
    galera::prepare(&mut conn).await?;
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

async fn ring_forever(
    pool: AnyPool,
    ring: Arc<Notify>,
    shared: Arc<Shared>,
    rings: watch::Sender<u64>,
) {
    let pattern = format!("{MARK}%");
    let mut warned = false;
    loop {
        ring.notified().await;
        // The other nodes first: their rings run in tasks of their own, beside this one.
        rings.send_modify(|n| *n = n.wrapping_add(1));
        let own = shared.parked_id.load(Ordering::Relaxed) as i64;
        let rung = match pool.acquire().await {
            Ok(mut conn) => ring_node(&mut conn, own, &pattern, &shared, &mut warned).await,
            Err(e) => Err(e),
        };
        if let Err(e) = rung {
            // The others' feeds still poll; only their latency suffers.
            tracing::debug!(error = %e, "could not ring the other servers' doorbells");
        }
        tokio::time::sleep(RING_SPACING).await;
    }
}

/// Interrupts the statements parked on the node `conn` is connected to, except the one of
/// connection `own` (0: none).
async fn ring_node(
    conn: &mut AnyConnection,
    own: i64,
    pattern: &str,
    shared: &Shared,
    warned: &mut bool,
) -> Result<(), sqlx::Error> {
    shared.statements.fetch_add(1, Ordering::Relaxed);
    let ids: Vec<i64> = sqlx::query_scalar(PARKED_ELSEWHERE)
        .bind(own)
        .bind(pattern)
        .fetch_all(&mut *conn)
        .await?;
    for id in ids {
        shared.statements.fetch_add(1, Ordering::Relaxed);
        // `KILL` takes no placeholders; `id` is an integer the database just gave us.
        let kill = format!("KILL QUERY {id}");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(kill))
            .execute(&mut *conn)
            .await
        {
            Ok(_) => {}
            // The parked statement's connection closed in between.
            Err(sqlx::Error::Database(e)) if galera::mysql_code(&*e) == Some(ER_NO_SUCH_THREAD) => {
            }
            Err(sqlx::Error::Database(e)) if galera::mysql_code(&*e) == Some(ER_KILL_DENIED) => {
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

/// On a Galera cluster, keeps one ringer per other node, following the cluster's members.
/// Ends at once on a database that is not a Galera node.
async fn ring_peers_forever(
    url: String,
    pool: AnyPool,
    rung: watch::Receiver<u64>,
    shared: Arc<Shared>,
) {
    // Address → its ringer. The set owns the tasks: aborting this one ends them all.
    let mut ringers = tokio::task::JoinSet::new();
    let mut running: Vec<(String, tokio::task::AbortHandle)> = Vec::new();
    loop {
        let members = match pool.acquire().await {
            Ok(mut conn) => galera::members(&mut conn).await,
            Err(e) => Err(e),
        };
        match members {
            Ok(None) => return,
            Ok(Some(members)) => {
                running.retain(|(address, task)| {
                    let keep = members.addresses.contains(address);
                    if !keep {
                        tracing::debug!(%address, "no longer a member: not ringing it");
                        task.abort();
                    }
                    keep
                });
                for address in members.addresses {
                    if running.iter().any(|(a, _)| *a == address) {
                        continue;
                    }
                    let Some(peer) = galera::peer_url(&url, &address) else {
                        tracing::warn!(
                            "cannot ring the other Galera nodes' doorbells: the endpoint's URL has an unexpected form; their servers see changes by polling (up to 5 s)"
                        );
                        return;
                    };
                    let task = ringers.spawn(tracing::Instrument::instrument(
                        ring_peer(peer, members.own.clone(), rung.clone(), shared.clone()),
                        tracing::debug_span!("doorbell-peer", %address),
                    ));
                    running.push((address, task));
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read the Galera cluster's members"),
        }
        // Finished ringers (the own node, found behind its address) stay listed, so they are
        // not started again; only their results are collected.
        while ringers.try_join_next().is_some() {}
        tokio::time::sleep(MEMBERS_REFRESH).await;
    }
}

/// Rings the node at `url` after every local ring, over a connection of its own. Ends if the
/// node turns out to be this server's own (`own`, its `wsrep_gcomm_uuid`): that one is rung
/// through the pool.
async fn ring_peer(url: String, own: String, mut rung: watch::Receiver<u64>, shared: Arc<Shared>) {
    let pattern = format!("{MARK}%");
    let mut warned = false;
    let mut delay = Duration::from_millis(250);
    loop {
        let connected = tokio::time::timeout(PEER_DEADLINE, async {
            let mut conn = AnyConnection::connect(&url).await?;
            let id = galera::node_id(&mut conn).await?;
            Ok::<_, sqlx::Error>((conn, id))
        })
        .await;
        let mut conn = match connected {
            Ok(Ok((_, id))) if id == own => return,
            Ok(Ok((conn, _))) => conn,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, retry_in = ?delay, "cannot reach a Galera node to ring it");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
            Err(_) => {
                tracing::debug!(retry_in = ?delay, "a Galera node did not answer within {PEER_DEADLINE:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
        };
        delay = Duration::from_millis(250);
        // A ring now, at once: rings made while this node could not be reached were lost.
        loop {
            rung.borrow_and_update();
            let rang = tokio::time::timeout(
                PEER_DEADLINE,
                ring_node(&mut conn, 0, &pattern, &shared, &mut warned),
            )
            .await;
            match rang {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "could not ring a Galera node's doorbells");
                    break;
                }
                Err(_) => {
                    tracing::debug!("a Galera node's ring took over {PEER_DEADLINE:?}");
                    break;
                }
            }
            tokio::time::sleep(RING_SPACING).await;
            if rung.changed().await.is_err() {
                return;
            }
        }
    }
}
