//! The datastore: the cluster's only shared state, a key-value history in SQL.
//!
//! Owns the bounded connection pool, the schema, object reads and writes with a global
//! revision, and compaction. The change feed that fans revisions out to watchers lives in
//! [`feed`]. Keys are opaque paths (`/registry/nodes/pi-1`); what they mean is the API
//! server's business.
//!
//! Invariants: revisions are gapless and handed out in commit order (see [`schema`]);
//! nothing is acknowledged to a caller before its transaction committed.

pub mod compactor;
mod doorbell;
pub mod endpoint;
pub mod feed;
mod galera;
mod group_commit;
pub mod health;
pub mod leases;
mod notify;
pub mod restore;
pub mod schema;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tokio::sync::Notify;

pub use endpoint::{Dialect, Endpoint};
pub use health::Health;

/// How the pool is bounded; the defaults suit a Raspberry Pi and a shared database.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_open: u32,
    /// Idle connections kept at most; the others are closed (K3s's max-idle, Go's default 2).
    pub max_idle: u32,
    pub max_lifetime: Option<Duration>,
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_open: 4,
            max_idle: 2,
            max_lifetime: Some(Duration::from_secs(300)),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Errors at the datastore boundary. `Unavailable` is retryable; the others are answers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{path} was modified concurrently (expected revision {expected}, found {current})")]
    Conflict {
        path: String,
        expected: i64,
        current: i64,
    },
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("the datastore is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The health probe found the database gone ([`health`]); nothing was sent.
    #[error("the datastore is down: {0}")]
    Down(Arc<str>),
    /// The database went down while this write was queued or in flight: it may or may not
    /// have been applied.
    #[error(
        "the datastore went down while this write was in flight ({0}); it may or may not have been applied: read the object before retrying"
    )]
    InDoubt(Arc<str>),
    #[error("refusing to start: {0}")]
    Schema(schema::TooNew),
    #[error("cannot open the datastore {endpoint}: {source}")]
    Open {
        endpoint: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the datastore directory {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// === impl Error ===

impl Error {
    /// Whether the error means the database cannot be reached or cannot serve anyone right now
    /// (connection, TLS, pool, the server's own resource or shutdown errors), as opposed to
    /// refusing one statement because of what it carried. Only the first kind may close the
    /// API's fast-fail gate: input must never be able to take the whole server to 503.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Unavailable(e) | Error::Open { source: e, .. } => sqlx_is_connection(e),
            Error::CreateDir { .. } | Error::Down(_) | Error::InDoubt(_) => true,
            _ => false,
        }
    }

    /// What may be shown to anyone (`/readyz` answers anonymous callers): the class of the
    /// failure and the database's error code, never the endpoint, user, client address or
    /// SQL text, which stay in the server's log.
    pub fn public_reason(&self) -> String {
        match self {
            Error::Unavailable(e) | Error::Open { source: e, .. } => sqlx_public_reason(e),
            Error::CreateDir { .. } => "cannot create the datastore directory".into(),
            // The probe's reasons name no endpoint (see `health`).
            Error::Down(reason) => reason.to_string(),
            other => other.to_string(),
        }
    }
}

fn sqlx_is_connection(e: &sqlx::Error) -> bool {
    match e {
        // A Galera cluster that kept rolling a write back (certification conflicts) after the
        // writer's retries: the cluster cannot take it now, which is no fault of its input.
        sqlx::Error::Database(db)
            if galera::mysql_code(&**db) == Some(galera::ER_LOCK_DEADLOCK) =>
        {
            true
        }
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // SQLSTATE classes: 08 connection exception, 53 insufficient resources, 57
            // operator intervention (shutdown, cancelled by an administrator), 28 the login
            // itself was refused.
            ["08", "53", "57", "28"]
                .iter()
                .any(|class| c.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

fn sqlx_public_reason(e: &sqlx::Error) -> String {
    match e {
        // An OS error's text ("Connection refused (os error 111)") names no address.
        sqlx::Error::Io(io) => io.to_string(),
        // rustls' reasons ("invalid peer certificate: UnknownIssuer") name no host.
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let class = match code.get(..2).unwrap_or("") {
                "28" => "the database refused the login",
                "40" => "the database kept rolling the transaction back for conflicts",
                "08" => "the database refused the connection",
                "3D" => "the database does not exist",
                "42" if code == "42000" => "the database refused: permission or syntax",
                "53" => "the database is out of resources",
                "57" => "the database is shutting down or cancelled the statement",
                _ => "the database refused a statement",
            };
            format!("{class} (SQLSTATE {code}; the full reason is in the server's log)")
        }
        sqlx::Error::PoolTimedOut => "timed out waiting for a datastore connection".into(),
        sqlx::Error::PoolClosed => "the datastore connection pool is closed".into(),
        sqlx::Error::Protocol(_) => {
            "the database answered something unexpected (see the server's log)".into()
        }
        _ => "datastore error (see the server's log)".into(),
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Unavailable(e)
    }
}

/// One stored object.
#[derive(Debug, Clone)]
pub struct Record {
    pub path: String,
    pub create_revision: i64,
    /// The revision of the object's last modification (its resourceVersion).
    pub revision: i64,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One entry of the change history.
#[derive(Debug, Clone)]
pub struct Event {
    pub revision: i64,
    pub kind: EventKind,
    pub path: String,
    pub create_revision: i64,
    /// The object after the change; for a deletion, its last state.
    pub value: Vec<u8>,
}

/// A handle to the datastore; cheap to clone, all clones share one bounded pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    dialect: Dialect,
    sql: &'static Statements,
    /// Woken after every local commit (and, on PostgreSQL, every remote one) so the change
    /// feed picks it up at once.
    committed: Arc<Notify>,
    /// Statements sent, for `/metrics` and the benchmarks.
    statements: Arc<AtomicU64>,
    /// Lease rows known to exist, so a follower's attempt is one statement. Bounded by the
    /// number of lease names the program uses; a std mutex, never held across an await.
    lease_rows: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The PostgreSQL LISTEN task; aborted when the last handle drops.
    listener: Option<tokio::task::AbortHandle>,
    /// MySQL's stand-in for LISTEN/NOTIFY; its tasks end when the last handle drops.
    doorbell: Option<doorbell::Doorbell>,
    /// Closes idle connections beyond `--datastore-max-idle-connections`; aborted likewise.
    trimmer: Option<tokio::task::AbortHandle>,
    /// Whether the database answers. Every call fails fast while it is down, and a call in
    /// flight when it goes down fails then ([`Store::guard`]).
    health: Health,
    /// The health prober ([`health::Prober`]); aborted when the last handle drops. `None` on
    /// SQLite, which has no connection to lose: its health stays up.
    prober: Option<tokio::task::AbortHandle>,
    /// The server's single writer ([`group_commit`]); it ends when the last handle drops.
    writer: tokio::sync::mpsc::Sender<group_commit::Queued>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in [&self.listener, &self.trimmer, &self.prober]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

// === impl Store ===

impl Store {
    /// Connects (creating the SQLite file and directory if needed), bounded by `pool`, and
    /// brings the schema up to date.
    pub async fn open(endpoint: &Endpoint, pool_cfg: &PoolConfig) -> Result<Store> {
        let pool = pool_cfg;
        sqlx::any::install_default_drivers();
        if let Some(dir) = endpoint.sqlite_path().and_then(|p| p.parent()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
            set_mode(dir, 0o700);
        }
        let dialect = endpoint.dialect;
        // The bound is shared out in order of need: the pool gets one connection, the health
        // probe the next (a server must be able to say it cannot reach its database), the
        // LISTEN connection on PostgreSQL or the parked doorbell connection on MySQL the next
        // (without it the change feed polls), and the pool the rest.
        let networked = dialect != Dialect::Sqlite;
        let probe = networked && pool.max_open >= 2;
        let listen = dialect == Dialect::Postgres && pool.max_open >= 3;
        let park = dialect == Dialect::Mysql && pool.max_open >= 3;
        let max = pool
            .max_open
            .saturating_sub(u32::from(probe) + u32::from(listen || park))
            .max(1);
        let open_err = |source| Error::Open {
            endpoint: endpoint.redacted().to_owned(),
            source,
        };
        let opts = AnyPoolOptions::new()
            .max_connections(max)
            .min_connections(0)
            .idle_timeout(Some(Duration::from_secs(60)))
            .max_lifetime(pool.max_lifetime)
            .acquire_timeout(pool.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL lets readers run beside the single writer; FULL keeps every
                        // acknowledged commit across a power cut.
                        sqlx::raw_sql("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; PRAGMA foreign_keys=OFF")
                            .execute(conn)
                            .await?;
                    } else if dialect == Dialect::Mysql {
                        // On a Galera node, causal reads: what was acknowledged through
                        // another node is seen here (see `galera`).
                        galera::prepare(conn).await?;
                    }
                    Ok(())
                })
            });
        // One direct attempt first: the pool would retry until its acquire timeout and then
        // report only that, while this fails at once with the reason a user can act on
        // (refused, unknown host, TLS, authentication) and finds a missing database.
        if dialect != Dialect::Sqlite {
            let probe =
                tokio::time::timeout(pool.acquire_timeout, AnyConnection::connect(&endpoint.url))
                    .await
                    .unwrap_or_else(|_| {
                        Err(sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "no answer within {:?} (--datastore-acquire-timeout)",
                                pool.acquire_timeout
                            ),
                        )))
                    });
            match probe {
                Ok(conn) => {
                    let _ = conn.close().await;
                }
                Err(e) if endpoint.is_missing_database(&e) => {
                    create_database(endpoint).await.map_err(open_err)?;
                }
                Err(e) => return Err(open_err(e)),
            }
        }
        let pool = opts.connect(&endpoint.url).await.map_err(open_err)?;
        if let Some(path) = endpoint.sqlite_path() {
            set_mode(path, 0o600);
        }
        migrate_retrying(&pool, dialect)
            .await
            .map_err(|e| match e {
                Error::Unavailable(source) => open_err(source),
                other => other,
            })?;
        let committed = Arc::new(Notify::new());
        let health = Health::up();
        let prober = networked.then(|| {
            let task = if probe {
                let target = health::Database {
                    url: endpoint.url.clone(),
                };
                tokio::spawn(tracing::Instrument::instrument(
                    health::Prober::new(target, health.clone()).run(),
                    tracing::debug_span!("datastore-probe"),
                ))
            } else {
                // A bound of one leaves the probe no connection of its own: it pings through
                // the pool, where a busy pool can look like a silent database.
                let target = health::Pooled { pool: pool.clone() };
                tokio::spawn(tracing::Instrument::instrument(
                    health::Prober::new(target, health.clone()).run(),
                    tracing::debug_span!("datastore-probe"),
                ))
            };
            task.abort_handle()
        });
        let listener = listen.then(|| {
            notify::spawn_listener(endpoint.url.clone(), committed.clone(), health.clone())
        });
        let statements = Arc::new(AtomicU64::new(0));
        let doorbell = park.then(|| {
            doorbell::Doorbell::spawn(
                endpoint.url.clone(),
                pool.clone(),
                committed.clone(),
                statements.clone(),
                health.clone(),
            )
        });
        let trimmer =
            (pool_cfg.max_idle < max).then(|| spawn_idle_trimmer(pool.clone(), pool_cfg.max_idle));
        let sql = Statements::for_dialect(dialect);
        let writer = group_commit::spawn(group_commit::Writer {
            pool: pool.clone(),
            dialect,
            sql,
            committed: committed.clone(),
            statements: statements.clone(),
            health: health.clone(),
        });
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                dialect,
                sql,
                committed,
                statements,
                lease_rows: Default::default(),
                listener,
                doorbell,
                trimmer,
                health,
                prober,
                writer,
            }),
        })
    }

    /// Whether the database answers ([`health`]).
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// Runs one datastore call unless the database is known to be down, and gives up on it
    /// the moment it goes down: the call's own error would come only after the pool's acquire
    /// timeout, or never on a blackholed route. A connection error makes the prober look at
    /// once; only the prober changes the verdict. A statement abandoned midway may still
    /// land: the ones guarded here are reads, or writes whose callers re-read or repeat them
    /// (leases, heartbeats, sealed secrets); object writes go through [`Store::write`].
    ///
    /// On MySQL, a call that a Galera cluster rolled back whole (a certification conflict
    /// with a write through another node, or a node not ready during a view change: see
    /// [`galera`]) is made again, for up to [`galera::RETRY_FOR`]: servers starting together
    /// on different nodes collide on the cluster's secrets and lease rows, and the node's own
    /// single retry of an autocommit statement (`wsrep_retry_autocommit`) is not always
    /// enough. `call` makes the call afresh each time.
    async fn guard<T, F>(&self, mut call: impl FnMut() -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let health = &self.inner.health;
        if let health::State::Down { reason, .. } = health.state() {
            return Err(Error::Down(reason));
        }
        let galera = self.inner.dialect == Dialect::Mysql;
        let retried = async {
            let until = tokio::time::Instant::now() + galera::RETRY_FOR;
            let mut attempt = 0;
            loop {
                let result = call().await;
                match result.as_ref().err().and_then(galera::retry) {
                    Some(why) if galera && tokio::time::Instant::now() < until => {
                        tokio::time::sleep(galera::backoff(attempt, why)).await;
                        attempt += 1;
                    }
                    _ => return result,
                }
            }
        };
        let result = tokio::select! {
            biased;
            result = retried => result,
            reason = health.down() => Err(Error::Down(reason)),
        };
        if result.as_ref().is_err_and(Error::is_connection) {
            health.suspect();
        }
        result
    }

    /// Connections open in the pool, and how many of them are idle.
    #[cfg(test)]
    pub fn connections(&self) -> (u32, usize) {
        (self.inner.pool.size(), self.inner.pool.num_idle())
    }

    /// How often the change feed polls when nothing woke it: rarely where PostgreSQL
    /// notifications or MySQL doorbells wake it, often where the pool bound left no
    /// connection for them.
    pub fn poll_interval(&self) -> Duration {
        let woken = self.inner.listener.is_some() || self.inner.doorbell.is_some();
        match (self.inner.dialect, woken) {
            (Dialect::Sqlite, _) => Duration::from_secs(1),
            (_, true) => doorbell::PARK,
            // 550 ms keeps an idle server under two statements a second with a median
            // feed latency under 300 ms.
            (_, false) => Duration::from_millis(550),
        }
    }

    /// Resolves when a local write committed; used by the change feed.
    pub(crate) async fn committed(&self) {
        self.inner.committed.notified().await
    }

    pub async fn get(&self, path: &str) -> Result<Option<Record>> {
        self.guard(|| async move {
            self.count(1);
            let row = sqlx::query(self.inner.sql.get)
                .bind(path)
                .fetch_optional(&self.inner.pool)
                .await?;
            row.map(|r| record(path, &r)).transpose()
        })
        .await
    }

    /// Every object whose path starts with `prefix`, sorted by path, and the revision the
    /// list is consistent with (one statement, so one snapshot).
    pub async fn list(&self, prefix: &str) -> Result<(i64, Vec<Record>)> {
        self.guard(|| async move {
            self.count(1);
            let rows = sqlx::query(self.inner.sql.list)
                .bind(prefix)
                .bind(prefix_end(prefix))
                .fetch_all(&self.inner.pool)
                .await?;
            let mut revision = 0;
            let mut out = Vec::with_capacity(rows.len().saturating_sub(1));
            for row in rows {
                let path: String = row.try_get(0)?;
                if path.is_empty() {
                    revision = row.try_get(2)?;
                } else {
                    out.push(record(&path, &row)?);
                }
            }
            Ok((revision, out))
        })
        .await
    }

    /// At most `limit` objects under `prefix` from `start` on (a path under the prefix), in
    /// path order, the current revision, and the path the next page starts at, if any. Pages are read as the
    /// objects are now, not at one revision: an object that exists throughout a paginated
    /// list appears in exactly one page.
    pub async fn list_page(
        &self,
        prefix: &str,
        start: Option<&str>,
        limit: usize,
    ) -> Result<(i64, Vec<Record>, Option<String>)> {
        self.guard(|| async move {
            self.count(1);
            let from = start.filter(|s| s.starts_with(prefix)).unwrap_or(prefix);
            // One row for the revision, one to tell whether more follow.
            let fetch = i64::try_from(limit.saturating_add(2)).unwrap_or(i64::MAX);
            let rows = sqlx::query(self.inner.sql.list_page)
                .bind(from)
                .bind(prefix_end(prefix))
                .bind(fetch)
                .fetch_all(&self.inner.pool)
                .await?;
            let mut revision = 0;
            let mut out = Vec::with_capacity(limit.min(rows.len()));
            let mut next = None;
            for row in rows {
                let path: String = row.try_get(0)?;
                if path.is_empty() {
                    revision = row.try_get(2)?;
                } else if out.len() == limit {
                    next = Some(path);
                } else {
                    out.push(record(&path, &row)?);
                }
            }
            Ok((revision, out, next))
        })
        .await
    }

    /// The newest revision handed out.
    pub async fn current_revision(&self) -> Result<i64> {
        self.guard(|| async move {
            self.count(1);
            Ok(sqlx::query(self.inner.sql.meta)
                .bind("revision")
                .fetch_one(&self.inner.pool)
                .await?
                .try_get(0)?)
        })
        .await
    }

    pub async fn create(&self, path: &str, value: &[u8]) -> Result<i64> {
        self.write(path, Op::Create(value.to_vec()))
            .await
            .map(|(rev, _)| rev)
    }

    /// Replaces an object; with `expected` set, only if its revision still matches.
    pub async fn update(&self, path: &str, expected: Option<i64>, value: &[u8]) -> Result<i64> {
        self.write(path, Op::Update(expected, value.to_vec()))
            .await
            .map(|(rev, _)| rev)
    }

    /// Deletes an object, returning the deletion's revision and the object's last state.
    pub async fn delete(&self, path: &str, expected: Option<i64>) -> Result<(i64, Record)> {
        let (rev, last) = self.write(path, Op::Delete(expected)).await?;
        // `write` only returns Ok for Delete after it found the object.
        let last = last.ok_or_else(|| Error::NotFound(path.to_owned()))?;
        Ok((rev, last))
    }

    /// The one write path. The operation is decided against the current object inside the
    /// transaction, after the revision counter is locked, so no other writer can change it in
    /// between. The writes of many callers share a transaction ([`group_commit`]).
    ///
    /// While the database is down nothing is queued. A write queued or in flight when it goes
    /// down is answered at once with [`Error::InDoubt`]: the writer may still be waiting on
    /// a connection that will deliver it later.
    async fn write(&self, path: &str, op: Op) -> Result<(i64, Option<Record>)> {
        let health = &self.inner.health;
        if let health::State::Down { reason, .. } = health.state() {
            return Err(Error::Down(reason));
        }
        let written = tokio::select! {
            biased;
            written = group_commit::submit(&self.inner.writer, path, op) => written,
            reason = health.down() => Err(Error::InDoubt(reason)),
        };
        if written.as_ref().is_err_and(Error::is_connection) {
            health.suspect();
        }
        if written.is_ok()
            && let Some(doorbell) = &self.inner.doorbell
        {
            doorbell.ring();
        }
        written
    }

    /// Up to `limit` events after `after`, in revision order. One statement when nothing
    /// was compacted away: compaction keeps the event at its mark, so a missing `after + 1`
    /// shows up as a gap, and only then is the mark read.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<Event>> {
        self.guard(|| async move {
            self.count(1);
            let rows = sqlx::query(self.inner.sql.events_after)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.inner.pool)
                .await?;
            let events: Vec<Event> = rows.iter().map(event).collect::<Result<_>>()?;
            if events.first().is_some_and(|e| e.revision != after + 1) {
                let compacted = self.compacted_revision().await?;
                if after < compacted {
                    return Err(Error::Compacted {
                        requested: after,
                        compacted,
                    });
                }
            }
            Ok(events)
        })
        .await
    }

    /// Statements this process has sent to the datastore (BEGIN and COMMIT included).
    pub fn statements(&self) -> u64 {
        self.inner.statements.load(Ordering::Relaxed)
    }

    fn count(&self, n: u64) {
        self.inner.statements.fetch_add(n, Ordering::Relaxed);
    }

    /// The compaction mark: watchers may resume from any revision at or after it.
    pub async fn compacted_revision(&self) -> Result<i64> {
        self.guard(|| async move {
            self.count(1);
            Ok(sqlx::query(self.inner.sql.meta)
                .bind("compact")
                .fetch_one(&self.inner.pool)
                .await?
                .try_get(0)?)
        })
        .await
    }

    /// Drops history before `through` (never the current objects), keeping the event at
    /// `through` itself as the sentinel `events_after` detects gaps by. Afterwards watchers
    /// may resume from `through` on. Idempotent and safe to race: the mark only moves forward.
    pub async fn compact(&self, through: i64) -> Result<()> {
        self.guard(|| async move {
            self.count(4);
            let mut tx = self.inner.pool.begin().await?;
            sqlx::query(self.inner.sql.compact_mark)
                .bind(through)
                .bind(through)
                .execute(&mut *tx)
                .await?;
            sqlx::query(self.inner.sql.compact_events)
                .bind(through)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.guard(|| async move {
            self.count(1);
            let row = sqlx::query(self.inner.sql.get_secret)
                .bind(name)
                .fetch_optional(&self.inner.pool)
                .await?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })
        .await
    }

    /// Every secret whose name starts with `prefix` (which may not contain `%`, `_` or `\\`).
    pub async fn secrets_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.guard(|| async move {
            debug_assert!(
                !prefix.contains(['%', '_', '\\']),
                "LIKE wildcard in {prefix:?}"
            );
            self.count(1);
            let rows = sqlx::query(self.inner.sql.secrets_with_prefix)
                .bind(format!("{prefix}%"))
                .fetch_all(&self.inner.pool)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
        .await
    }

    /// Stores a secret unless one of that name exists; returns whether this call stored it.
    pub async fn insert_secret(&self, name: &str, value: &[u8]) -> Result<bool> {
        self.guard(|| async move {
            self.count(1);
            let done = sqlx::query(self.inner.sql.insert_secret)
                .bind(name)
                .bind(value)
                .execute(&self.inner.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Replaces a secret only if it still holds `old` (a compare-and-swap on the whole
    /// value); returns whether this call replaced it.
    pub async fn replace_secret(&self, name: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        self.guard(|| async move {
            self.count(1);
            let done = sqlx::query(self.inner.sql.replace_secret)
                .bind(new)
                .bind(name)
                .bind(old)
                .execute(&self.inner.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    pub async fn delete_secret(&self, name: &str) -> Result<()> {
        self.guard(|| async move {
            self.count(1);
            sqlx::query(self.inner.sql.delete_secret)
                .bind(name)
                .execute(&self.inner.pool)
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn close(&self) {
        if let Some(doorbell) = &self.inner.doorbell {
            doorbell.close(&self.inner.pool).await;
        }
        self.inner.pool.close().await
    }
}

/// Creates the schema, holding the database's migration lock so servers that start at the
/// same moment do not race on DDL.
async fn migrate(pool: &AnyPool, dialect: Dialect) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let (lock, unlock) = match dialect {
        Dialect::Postgres => (
            "SELECT pg_advisory_lock(7411020)",
            "SELECT pg_advisory_unlock(7411020)",
        ),
        Dialect::Mysql => (
            "SELECT GET_LOCK('keelson_migrate', 60)",
            "SELECT RELEASE_LOCK('keelson_migrate')",
        ),
        Dialect::Sqlite => ("SELECT 1", "SELECT 1"),
    };
    sqlx::query(lock).execute(&mut *conn).await?;
    let result = migrate_locked(&mut conn, dialect).await;
    sqlx::query(unlock).execute(&mut *conn).await?;
    result
}

/// [`migrate`], again while a Galera cluster rolls it back: servers starting at once on
/// different nodes can collide on the seed rows, and only one of them is certified.
async fn migrate_retrying(pool: &AnyPool, dialect: Dialect) -> Result<()> {
    let until = tokio::time::Instant::now() + galera::RETRY_FOR;
    let mut attempt = 0;
    loop {
        let result = migrate(pool, dialect).await;
        match result.as_ref().err().and_then(galera::retry) {
            Some(why) if dialect == Dialect::Mysql && tokio::time::Instant::now() < until => {
                tokio::time::sleep(galera::backoff(attempt, why)).await;
                attempt += 1;
            }
            _ => return result,
        }
    }
}

/// The base tables, then the schema version check and any forward steps.
async fn migrate_locked(conn: &mut AnyConnection, dialect: Dialect) -> Result<()> {
    for stmt in schema::ddl(dialect).iter().chain(schema::seed(dialect)) {
        sqlx::query(*stmt).execute(&mut *conn).await?;
    }
    let meta = |name: &'static str| {
        let sql = match dialect {
            Dialect::Postgres => "SELECT value FROM keelson_meta WHERE name = $1",
            _ => "SELECT value FROM keelson_meta WHERE name = ?",
        };
        sqlx::query(sql).bind(name)
    };
    let stored: i64 = meta("schema").fetch_one(&mut *conn).await?.try_get(0)?;
    let stored_min: i64 = match meta("schema_min").fetch_optional(&mut *conn).await? {
        Some(row) => row.try_get(0)?,
        None => stored,
    };
    match schema::plan(stored, stored_min, schema::VERSION, schema::MIGRATIONS)
        .map_err(Error::Schema)?
    {
        schema::Plan::UpToDate => {}
        schema::Plan::Newer { stored } => tracing::info!(
            stored,
            ours = schema::VERSION,
            "the datastore's schema was migrated by a newer keelson; this server still works with it (upgrade it soon)"
        ),
        schema::Plan::Migrate {
            steps,
            oldest_reader,
        } => {
            for step in schema::MIGRATIONS.iter().filter(|m| steps.contains(&m.to)) {
                for stmt in (step.ddl)(dialect) {
                    sqlx::query(*stmt).execute(&mut *conn).await?;
                }
                tracing::info!(to = step.to, "migrated the datastore schema");
            }
            let set = |name: &'static str, value: i64| {
                let sql = match dialect {
                    Dialect::Postgres => "UPDATE keelson_meta SET value = $1 WHERE name = $2",
                    _ => "UPDATE keelson_meta SET value = ? WHERE name = ?",
                };
                sqlx::query(sql).bind(value).bind(name)
            };
            set("schema", schema::VERSION).execute(&mut *conn).await?;
            sqlx::query("DELETE FROM keelson_meta WHERE name = 'schema_min'")
                .execute(&mut *conn)
                .await?;
            let insert = match dialect {
                Dialect::Postgres => {
                    "INSERT INTO keelson_meta (name, value) VALUES ('schema_min', $1)"
                }
                _ => "INSERT INTO keelson_meta (name, value) VALUES ('schema_min', ?)",
            };
            sqlx::query(insert)
                .bind(oldest_reader)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Creates the endpoint's database through the server's administrative database. Losing a
/// race with another server creating it is fine.
async fn create_database(endpoint: &Endpoint) -> std::result::Result<(), sqlx::Error> {
    use sqlx::Connection;
    let Some(admin) = endpoint.admin_url() else {
        return Ok(());
    };
    let name = &endpoint.database;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(sqlx::Error::Configuration(
            format!("database {name:?} does not exist, and keelson only creates databases named with letters, digits, '_' and '-'").into(),
        ));
    }
    let mut conn = sqlx::AnyConnection::connect(&admin).await?;
    let stmt = match endpoint.dialect {
        Dialect::Postgres => format!("CREATE DATABASE \"{name}\""),
        _ => format!("CREATE DATABASE IF NOT EXISTS `{name}`"),
    };
    tracing::info!(database = %name, "creating the database");
    // The name was checked above to hold no quoting characters.
    let created = sqlx::query(sqlx::AssertSqlSafe(stmt))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    match created {
        Ok(_) => Ok(()),
        // 42P04 duplicate_database; a concurrent CREATE can also trip the catalog's unique index.
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => {
            Ok(())
        }
        Err(e) if e.to_string().contains("duplicate key") => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a caller asks of one object.
enum Op {
    Create(Vec<u8>),
    /// Replace, only if the revision is still the expected one (when given).
    Update(Option<i64>, Vec<u8>),
    Delete(Option<i64>),
}

/// What the transaction does once the operation was decided.
enum Write<'v> {
    Put(&'v [u8]),
    Delete,
}

impl Op {
    /// The write this operation makes of `current`, or why it is refused.
    fn decide<'v>(&'v self, path: &str, current: Option<&Record>) -> Result<Write<'v>> {
        match (self, current) {
            (Op::Create(_), Some(_)) => Err(Error::AlreadyExists(path.to_owned())),
            (Op::Create(value), None) => Ok(Write::Put(value)),
            (Op::Update(..) | Op::Delete(_), None) => Err(Error::NotFound(path.to_owned())),
            (Op::Update(expected, value), Some(cur)) => {
                check_expected(path, *expected, cur.revision)?;
                Ok(Write::Put(value))
            }
            (Op::Delete(expected), Some(cur)) => {
                check_expected(path, *expected, cur.revision)?;
                Ok(Write::Delete)
            }
        }
    }
}

fn check_expected(path: &str, expected: Option<i64>, current: i64) -> Result<()> {
    match expected {
        Some(expected) if expected != current => Err(Error::Conflict {
            path: path.to_owned(),
            expected,
            current,
        }),
        _ => Ok(()),
    }
}

fn record(path: &str, row: &AnyRow) -> Result<Record> {
    let off = row.columns().len() - 3;
    Ok(Record {
        path: path.to_owned(),
        create_revision: row.try_get(off)?,
        revision: row.try_get(off + 1)?,
        value: row.try_get(off + 2)?,
    })
}

fn event(row: &AnyRow) -> Result<Event> {
    let kind: i64 = row.try_get(2)?;
    Ok(Event {
        revision: row.try_get(0)?,
        path: row.try_get(1)?,
        kind: EventKind::from_code(kind),
        create_revision: row.try_get(3)?,
        value: row.try_get(4)?,
    })
}

/// The smallest string greater than every string with this prefix (prefixes end in '/').
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_owned();
    match end.pop() {
        Some(c) => end.push(char::from_u32(c as u32 + 1).unwrap_or(char::MAX)),
        None => end.push(char::MAX),
    }
    end
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    // Best effort: the file may not exist yet (SQLite creates it lazily) or be on a
    // filesystem without modes; neither is an error for the caller.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

// === impl EventKind ===

impl EventKind {
    fn code(self) -> i64 {
        match self {
            EventKind::Added => 0,
            EventKind::Modified => 1,
            EventKind::Deleted => 2,
        }
    }

    fn from_code(code: i64) -> EventKind {
        match code {
            0 => EventKind::Added,
            2 => EventKind::Deleted,
            _ => EventKind::Modified,
        }
    }
}

/// The statements, in each dialect's placeholder style. Built once per process.
struct Statements {
    get: &'static str,
    list: &'static str,
    list_page: &'static str,
    meta: &'static str,
    bump: &'static str,
    /// For dialects whose UPDATE can return the new value; otherwise `bump` then `meta`.
    bump_returning: Option<&'static str>,
    insert_object: &'static str,
    update_object: &'static str,
    delete_object: &'static str,
    insert_event: &'static str,
    events_after: &'static str,
    compact_mark: &'static str,
    compact_events: &'static str,
    get_secret: &'static str,
    secrets_with_prefix: &'static str,
    insert_secret: &'static str,
    replace_secret: &'static str,
    delete_secret: &'static str,
    lease_ensure: &'static str,
    lease_take: &'static str,
    lease_epoch: &'static str,
    lease_release: &'static str,
    heartbeat_ages: &'static str,
}

impl Statements {
    /// Built once per dialect and process.
    fn for_dialect(dialect: Dialect) -> &'static Statements {
        static BUILT: [std::sync::OnceLock<Statements>; 3] =
            [const { std::sync::OnceLock::new() }; 3];
        let slot = match dialect {
            Dialect::Sqlite => 0,
            Dialect::Postgres => 1,
            Dialect::Mysql => 2,
        };
        BUILT[slot].get_or_init(|| Statements::build(dialect))
    }

    fn build(dialect: Dialect) -> Statements {
        // Leaked once per dialect (see `for_dialect`), so statements are plain `&'static str`.
        let s = |sql: &str| -> &'static str {
            match dialect {
                Dialect::Postgres => Box::leak(sql.to_owned().into_boxed_str()),
                // `$n` → `?`: every statement binds its parameters in order.
                _ => Box::leak(dollar_to_question(sql).into_boxed_str()),
            }
        };
        let now = leases::now_ms(dialect);
        let lease_ensure = match dialect {
            Dialect::Sqlite => {
                "INSERT OR IGNORE INTO keelson_leases (name, holder, epoch, expires_at) VALUES (?, '', 0, 0)"
            }
            Dialect::Mysql => {
                "INSERT IGNORE INTO keelson_leases (name, holder, epoch, expires_at) VALUES (?, '', 0, 0)"
            }
            Dialect::Postgres => {
                "INSERT INTO keelson_leases (name, holder, epoch, expires_at) VALUES ($1, '', 0, 0) ON CONFLICT (name) DO NOTHING"
            }
        };
        let insert_secret = match dialect {
            Dialect::Sqlite => "INSERT OR IGNORE INTO keelson_secrets (name, value) VALUES (?, ?)",
            Dialect::Mysql => "INSERT IGNORE INTO keelson_secrets (name, value) VALUES (?, ?)",
            Dialect::Postgres => {
                "INSERT INTO keelson_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
            }
        };
        Statements {
            get: s("SELECT create_revision, revision, value FROM keelson_objects WHERE path = $1"),
            list: s(
                "SELECT path, create_revision, revision, value FROM keelson_objects WHERE path >= $1 AND path < $2 \
                     UNION ALL SELECT '', 0, value, NULL FROM keelson_meta WHERE name = 'revision' ORDER BY 1",
            ),
            // The revision row sorts first (''), so the limit counts it.
            list_page: s(
                "SELECT path, create_revision, revision, value FROM keelson_objects WHERE path >= $1 AND path < $2 \
                     UNION ALL SELECT '', 0, value, NULL FROM keelson_meta WHERE name = 'revision' ORDER BY 1 LIMIT $3",
            ),
            meta: s("SELECT value FROM keelson_meta WHERE name = $1"),
            bump: "UPDATE keelson_meta SET value = value + 1 WHERE name = 'revision'",
            bump_returning: (dialect != Dialect::Mysql).then_some(
                "UPDATE keelson_meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
            ),
            insert_object: s(
                "INSERT INTO keelson_objects (path, create_revision, revision, value) VALUES ($1, $2, $3, $4)",
            ),
            update_object: s(
                "UPDATE keelson_objects SET revision = $1, value = $2 WHERE path = $3",
            ),
            delete_object: s("DELETE FROM keelson_objects WHERE path = $1"),
            insert_event: s(
                "INSERT INTO keelson_events (revision, path, kind, create_revision, value) VALUES ($1, $2, $3, $4, $5)",
            ),
            events_after: s(
                "SELECT revision, path, kind, create_revision, value FROM keelson_events WHERE revision > $1 ORDER BY revision LIMIT $2",
            ),
            compact_mark: s(
                "UPDATE keelson_meta SET value = $1 WHERE name = 'compact' AND value < $2",
            ),
            compact_events: s("DELETE FROM keelson_events WHERE revision < $1"),
            get_secret: s("SELECT value FROM keelson_secrets WHERE name = $1"),
            // Callers' prefixes hold no LIKE wildcards (checked in `secrets_with_prefix`).
            secrets_with_prefix: s(
                "SELECT name, value FROM keelson_secrets WHERE name LIKE $1 ORDER BY name",
            ),
            insert_secret,
            replace_secret: s(
                "UPDATE keelson_secrets SET value = $1 WHERE name = $2 AND value = $3",
            ),
            delete_secret: s("DELETE FROM keelson_secrets WHERE name = $1"),
            lease_ensure,
            // The epoch is assigned first: MySQL evaluates SET left to right.
            lease_take: s(&format!(
                "UPDATE keelson_leases SET epoch = CASE WHEN holder = $1 THEN epoch ELSE epoch + 1 END, holder = $2, \
                 expires_at = {now} + $3 WHERE name = $4 AND (holder = $5 OR expires_at < {now})"
            )),
            lease_epoch: s("SELECT epoch FROM keelson_leases WHERE name = $1 AND holder = $2"),
            lease_release: s(
                "UPDATE keelson_leases SET expires_at = 0 WHERE name = $1 AND holder = $2",
            ),
            heartbeat_ages: s(&format!(
                "SELECT node, {now} - seen_at FROM keelson_heartbeats"
            )),
        }
    }
}

/// sqlx keeps every idle connection until `idle_timeout`; K3s's `--datastore-max-idle-connections`
/// bounds how many stay open. Once a second, idle connections beyond the bound are taken out
/// of the pool and closed cleanly (no statement is sent).
fn spawn_idle_trimmer(pool: AnyPool, max_idle: u32) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if pool.is_closed() {
                return;
            }
            while pool.num_idle() > max_idle as usize {
                let Some(conn) = pool.try_acquire() else {
                    break;
                };
                let _ = sqlx::Connection::close(conn.detach()).await;
            }
        }
    })
    .abort_handle()
}

fn dollar_to_question(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod sqlite_tests {
    use super::*;

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Endpoint::sqlite(dir.path().join("db/state.db")),
            &PoolConfig::default(),
        )
        .await
        .unwrap();
        (dir, store)
    }

    #[test]
    fn placeholders_are_rewritten_in_order() {
        assert_eq!(dollar_to_question("a = $1 AND b < $12"), "a = ? AND b < ?");
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end("/registry/nodes/"), "/registry/nodes0");
    }

    #[tokio::test]
    async fn revisions_are_gapless_even_after_refused_writes() {
        let (_dir, store) = temp_store().await;
        let r1 = store.create("/registry/nodes/a", b"{}").await.unwrap();
        assert!(matches!(
            store.create("/registry/nodes/a", b"{}").await,
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            store.update("/registry/nodes/a", Some(r1 + 5), b"{}").await,
            Err(Error::Conflict { .. })
        ));
        let r2 = store
            .update("/registry/nodes/a", Some(r1), b"{\"x\":1}")
            .await
            .unwrap();
        let (r3, last) = store.delete("/registry/nodes/a", None).await.unwrap();
        assert_eq!((r2, r3), (r1 + 1, r1 + 2));
        assert_eq!(last.value, b"{\"x\":1}");
        let events = store.events_after(0, 100).await.unwrap();
        let revs: Vec<i64> = events.iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![r1, r1 + 1, r1 + 2]);
        assert_eq!(events[2].kind, EventKind::Deleted);
        assert_eq!(events[2].value, b"{\"x\":1}");
    }

    #[tokio::test]
    async fn list_is_prefix_scoped_and_carries_the_revision() {
        let (_dir, store) = temp_store().await;
        store.create("/registry/nodes/b", b"1").await.unwrap();
        store.create("/registry/nodes/a", b"2").await.unwrap();
        let r = store.create("/registry/namespaces/x", b"3").await.unwrap();
        let (rev, items) = store.list("/registry/nodes/").await.unwrap();
        assert_eq!(rev, r);
        let paths: Vec<&str> = items.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, vec!["/registry/nodes/a", "/registry/nodes/b"]);
    }

    #[tokio::test]
    async fn compacted_history_is_refused() {
        let (_dir, store) = temp_store().await;
        for i in 0..5 {
            store
                .create(&format!("/registry/nodes/{i}"), b"{}")
                .await
                .unwrap();
        }
        store.compact(3).await.unwrap();
        assert!(matches!(
            store.events_after(1, 10).await,
            Err(Error::Compacted {
                requested: 1,
                compacted: 3
            })
        ));
        let rest = store.events_after(3, 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![4, 5]
        );
        // The mark never moves back.
        store.compact(2).await.unwrap();
        assert_eq!(store.compacted_revision().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn concurrent_writers_never_skip_a_revision() {
        let (_dir, store) = temp_store().await;
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    store
                        .create(&format!("/registry/x/{w}-{i}"), b"{}")
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let events = store.events_after(0, 1000).await.unwrap();
        let revs: Vec<i64> = events.iter().map(|e| e.revision).collect();
        assert_eq!(revs, (1..=80).collect::<Vec<i64>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_writes_shares_transactions_and_each_gets_its_own_answer() {
        let (_dir, store) = temp_store().await;
        let base = store.create("/registry/x/base", b"{}").await.unwrap();
        let before = store.statements();
        let mut tasks = Vec::new();
        // 200 distinct creates, 20 creates racing for one name, 20 updates expecting a
        // revision that is gone: one burst.
        for i in 0..240 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                match i {
                    0..200 => store
                        .create(&format!("/registry/x/{i}"), b"{}")
                        .await
                        .map(|_| ()),
                    200..220 => store.create("/registry/x/race", b"{}").await.map(|_| ()),
                    _ => store
                        .update("/registry/x/base", Some(base - 1), b"{}")
                        .await
                        .map(|_| ()),
                }
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert!(results[..200].iter().all(Result::is_ok));
        let race_won = results[200..220].iter().filter(|r| r.is_ok()).count();
        assert_eq!(race_won, 1, "exactly one create of a name succeeds");
        assert!(
            results[200..220]
                .iter()
                .filter(|r| r.is_err())
                .all(|r| matches!(r, Err(Error::AlreadyExists(_))))
        );
        assert!(
            results[220..]
                .iter()
                .all(|r| matches!(r, Err(Error::Conflict { .. })))
        );
        // Refusals took no revision: 1 + 200 + 1, gapless.
        let revs: Vec<i64> = store
            .events_after(0, 1000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(revs, (1..=202).collect::<Vec<i64>>());
        // One transaction per write would be 6 statements each (BEGIN, read, bump, write,
        // event, COMMIT); shared transactions save the BEGIN/COMMIT pairs.
        let used = store.statements() - before;
        assert!(
            used < 240 * 5,
            "{used} statements: the writes were not grouped"
        );
    }

    #[tokio::test]
    async fn writes_to_one_path_in_one_batch_see_each_other() {
        let (_dir, store) = temp_store().await;
        let (a, b, c) = tokio::join!(
            store.create("/registry/x/p", b"1"),
            store.update("/registry/x/p", None, b"2"),
            store.delete("/registry/x/p", None),
        );
        // Queued in this order, so applied in this order, in one transaction or several.
        let (a, b, (c, last)) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert!(a < b && b < c);
        assert_eq!(last.value, b"2");
        assert!(store.get("/registry/x/p").await.unwrap().is_none());
    }
}
