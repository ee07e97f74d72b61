//! Group commit: writes queued by many callers of one server go to disk in one transaction.
//!
//! Every write takes the next revision, so writers queue on one lock anyway (SQLite's write
//! lock; the revision row on PostgreSQL and MySQL), and every commit waits for the disk (an
//! fsync; SQLite runs with `synchronous=FULL`). Written one transaction each, a burst (a
//! ReplicaSet creating a thousand pods, the scheduler binding them) costs one flush and one
//! lock hand-over per object. Here one task per server owns writing: it takes every write
//! waiting at that moment (at most [`MAX_BATCH`]), applies them in order inside one
//! transaction that holds the lock from its start (`BEGIN IMMEDIATE` on SQLite, the revision
//! row `FOR UPDATE` elsewhere), and commits once (with one `NOTIFY` on PostgreSQL). A lone
//! write is not delayed: nothing waits for company.
//!
//! Invariants: each write in a batch is decided against the state the writes before it left
//! (same path twice in one batch behaves as two transactions would); a refused write (conflict,
//! not found, already exists) takes no revision and does not disturb the others; no caller is
//! answered before the batch committed; if the batch fails as a whole, every write in it is
//! tried again in a transaction of its own, so each caller gets its own answer and one bad
//! write cannot fail its neighbours.

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::{Dialect, Error, EventKind, Op, Record, Result, Statements, Write, galera, record};

/// Most writes in one transaction: enough to amortise the flush, small enough that the first
/// caller of a batch is not kept long.
pub const MAX_BATCH: usize = 128;
/// Writes waiting for the writer before callers wait to queue.
const QUEUE: usize = 1024;

/// One write waiting for the writer, and where its answer goes.
pub(super) struct Queued {
    pub path: String,
    pub op: Op,
    pub reply: oneshot::Sender<Result<(i64, Option<Record>)>>,
}

/// What the writer needs of the store.
pub(super) struct Writer {
    pub pool: AnyPool,
    pub dialect: Dialect,
    pub sql: &'static Statements,
    pub committed: std::sync::Arc<tokio::sync::Notify>,
    pub statements: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Consulted before each transaction: writes waiting while the database is down are
    /// refused unwritten, so a write whose caller was told 503 does not land minutes later.
    pub health: super::Health,
}

/// Starts the writer; it ends when every sender is gone.
pub(super) fn spawn(writer: Writer) -> mpsc::Sender<Queued> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(writer.run(rx));
    tx
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            // Callers that gave up (their request was cancelled) are still written: the write
            // was asked for, and an unanswered write is one whose answer was lost.
            // One retry window for the batch and, if it fails as a whole, its writes one by one.
            let until = tokio::time::Instant::now() + galera::RETRY_FOR;
            match self.commit_unless_down(&batch, until).await {
                Ok(results) => {
                    for (q, r) in batch.drain(..).zip(results) {
                        let _ = q.reply.send(r);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, writes = batch.len(), "a group commit failed; writing its writes one by one");
                    for q in batch.drain(..) {
                        let r = self
                            .commit_unless_down(std::slice::from_ref(&q), until)
                            .await;
                        let r = r.and_then(|mut rs| rs.pop().unwrap_or_else(|| Err(lost())));
                        let _ = q.reply.send(r);
                    }
                }
            }
        }
    }

    /// Commits `batch`, unless the database is down. On MySQL, a transaction a Galera cluster
    /// rolled back whole (certified away by a write through another node, or a node not
    /// ready during a view change, see [`galera`]) is decided and written again, for up to
    /// `until` (the batch's first try plus [`galera::RETRY_FOR`]): callers never see those.
    /// Anything else is answered as it came.
    async fn commit_unless_down(
        &self,
        batch: &[Queued],
        until: tokio::time::Instant,
    ) -> Result<Vec<Result<(i64, Option<Record>)>>> {
        let mut attempt = 0;
        loop {
            if let super::health::State::Down { reason, .. } = self.health.state() {
                return Err(Error::Down(reason));
            }
            let result = self.commit(batch).await;
            let why = match &result {
                Err(e) if self.dialect == Dialect::Mysql => galera::retry(e),
                _ => None,
            };
            match why {
                Some(why) if tokio::time::Instant::now() < until => {
                    tracing::debug!(
                        ?why,
                        attempt,
                        "the database cluster rolled a write back; writing it again"
                    );
                    tokio::time::sleep(galera::backoff(attempt, why)).await;
                    attempt += 1;
                }
                Some(why) => {
                    tracing::warn!(
                        ?why,
                        attempts = attempt + 1,
                        "the database cluster kept refusing a write for {:?}; answering that it is unavailable",
                        galera::RETRY_FOR
                    );
                    return result;
                }
                None => return result,
            }
        }
    }

    fn count(&self, n: usize) {
        self.statements
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Applies `batch` in one transaction: per write, its own answer; `Err` when the
    /// transaction itself failed (nothing of it was written).
    async fn commit(&self, batch: &[Queued]) -> Result<Vec<Result<(i64, Option<Record>)>>> {
        let mut conn = self.pool.acquire().await?;
        // The lock is taken first, so what each write reads cannot change before it writes
        // (no other server writes meanwhile), and no revision is taken for a refused write.
        let begun = match self.dialect {
            Dialect::Sqlite => {
                self.count(1);
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await
            }
            Dialect::Postgres | Dialect::Mysql => {
                self.count(2);
                match sqlx::raw_sql("BEGIN").execute(&mut *conn).await {
                    Ok(_) => {
                        sqlx::raw_sql(
                            "SELECT value FROM keelson_meta WHERE name = 'revision' FOR UPDATE",
                        )
                        .execute(&mut *conn)
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let applied = match begun {
            Ok(_) => self.apply_all(&mut conn, batch).await,
            Err(e) => Err(Error::from(e)),
        };
        let finished = match applied {
            Ok(results) => {
                let notified =
                    if self.dialect == Dialect::Postgres && results.iter().any(Result::is_ok) {
                        // Delivered at commit, to every server's LISTEN connection.
                        self.count(1);
                        sqlx::raw_sql(super::notify::NOTIFY)
                            .execute(&mut *conn)
                            .await
                            .map(|_| ())
                    } else {
                        Ok(())
                    };
                self.count(1);
                match notified {
                    Err(e) => Err(Error::from(e)),
                    Ok(()) => match sqlx::raw_sql("COMMIT").execute(&mut *conn).await {
                        Ok(_) => Ok(results),
                        Err(e) => Err(Error::from(e)),
                    },
                }
            }
            Err(e) => Err(e),
        };
        if finished.is_err() {
            // A connection left inside a transaction must not go back to the pool.
            if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                let _ = conn.detach();
            }
            return finished;
        }
        self.committed.notify_one();
        finished
    }

    async fn apply_all(
        &self,
        conn: &mut sqlx::AnyConnection,
        batch: &[Queued],
    ) -> Result<Vec<Result<(i64, Option<Record>)>>> {
        let sql = self.sql;
        let mut results = Vec::with_capacity(batch.len());
        for q in batch {
            self.count(1);
            let current = sqlx::query(sql.get)
                .bind(q.path.as_str())
                .fetch_optional(&mut *conn)
                .await?
                .map(|r| record(&q.path, &r))
                .transpose()?;
            let write = match q.op.decide(&q.path, current.as_ref()) {
                Ok(w) => w,
                Err(refused) => {
                    results.push(Err(refused));
                    continue;
                }
            };
            let revision: i64 = match sql.bump_returning {
                Some(bump) => {
                    self.count(3);
                    sqlx::query(bump).fetch_one(&mut *conn).await?.try_get(0)?
                }
                // MySQL: no RETURNING; the row is ours until commit, so read it back.
                None => {
                    self.count(4);
                    sqlx::query(sql.bump).execute(&mut *conn).await?;
                    sqlx::query(sql.meta)
                        .bind("revision")
                        .fetch_one(&mut *conn)
                        .await?
                        .try_get(0)?
                }
            };
            let (kind, create_revision, value) = match (write, &current) {
                (Write::Put(value), None) => {
                    sqlx::query(sql.insert_object)
                        .bind(q.path.as_str())
                        .bind(revision)
                        .bind(revision)
                        .bind(value)
                        .execute(&mut *conn)
                        .await?;
                    (EventKind::Added, revision, value)
                }
                (Write::Put(value), Some(cur)) => {
                    sqlx::query(sql.update_object)
                        .bind(revision)
                        .bind(value)
                        .bind(q.path.as_str())
                        .execute(&mut *conn)
                        .await?;
                    (EventKind::Modified, cur.create_revision, value)
                }
                (Write::Delete, Some(cur)) => {
                    sqlx::query(sql.delete_object)
                        .bind(q.path.as_str())
                        .execute(&mut *conn)
                        .await?;
                    (
                        EventKind::Deleted,
                        cur.create_revision,
                        cur.value.as_slice(),
                    )
                }
                // `decide` refuses a delete of nothing.
                (Write::Delete, None) => {
                    results.push(Err(Error::NotFound(q.path.clone())));
                    continue;
                }
            };
            sqlx::query(sql.insert_event)
                .bind(revision)
                .bind(q.path.as_str())
                .bind(kind.code())
                .bind(create_revision)
                .bind(value)
                .execute(&mut *conn)
                .await?;
            results.push(Ok((revision, current)));
        }
        Ok(results)
    }
}

fn lost() -> Error {
    Error::Unavailable(sqlx::Error::Protocol(
        "the datastore writer gave no answer".into(),
    ))
}

/// Hands a write to the writer and waits for its answer.
pub(super) async fn submit(
    queue: &mpsc::Sender<Queued>,
    path: &str,
    op: Op,
) -> Result<(i64, Option<Record>)> {
    let (reply, answer) = oneshot::channel();
    queue
        .send(Queued {
            path: path.to_owned(),
            op,
            reply,
        })
        .await
        .map_err(|_| lost())?;
    answer.await.map_err(|_| lost())?
}
