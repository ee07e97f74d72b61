//! What a restored database needs before a server may use it: revisions that never go back.
//!
//! A snapshot (or a `pg_dump`) holds the history up to the moment it was taken; the clients of
//! the live cluster saw revisions past it. Served as it is, the restored database would hand
//! out those revisions again for other changes, and a client resuming a watch would silently
//! miss the restore. So a restore moves the revision counter past anything a client can hold
//! (the live database's revision, and a margin for a live database that is lost) and marks
//! everything up to there compacted: every resourceVersion from before the restore is then
//! "too old" (410 Gone), and every client and controller relists. This is what etcd's
//! `etcdutl snapshot restore --bump-revision --mark-compacted` does for Kubernetes.
//!
//! Invariants: the mark is one transaction; it keeps the event at the compaction mark (a
//! sentinel, as compaction does) so a server that was behind sees the jump as a gap at once.

use sqlx::Row;

use super::{Dialect, Result, Store, leases};

/// How far past the snapshot's revision a restore moves the counter when nothing bigger is
/// known: more revisions than a cluster of boards writes in years (etcd's documentation
/// suggests the same figure for `--bump-revision`).
pub const DEFAULT_BUMP: i64 = 1_000_000_000;

/// The path of the sentinel event left at the compaction mark. Outside `/registry/`, so no
/// watch ever matches it; it is only there for the gap check.
pub const SENTINEL: &str = "/keelson/restored";

/// What a restore mark did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    /// The revision the restored data was at.
    pub from: i64,
    /// Where revisions continue (and history is compacted through).
    pub to: i64,
    /// How many restores this database has seen, this one included.
    pub epoch: i64,
}

impl Store {
    /// Other sessions connected to this database (a running server keeps at least its health
    /// probe's), as far as this login may see them: MySQL shows only one's own sessions
    /// without the PROCESS privilege, so there 0 proves little (see [`Store::activity`]).
    pub async fn other_sessions(&self) -> Result<i64> {
        let query = match self.inner.dialect {
            Dialect::Postgres => {
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            }
            Dialect::Mysql => {
                "SELECT COUNT(*) FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            }
            Dialect::Sqlite => return Ok(0),
        };
        let row = sqlx::query(query).fetch_one(&self.inner.pool).await?;
        Ok(row.try_get(0)?)
    }

    /// A fingerprint of what running servers keep changing (lease renewals every few seconds,
    /// node heartbeats, the revision): two that differ a lease's retry period apart mean a
    /// server is still at work. Lease rows alone cannot tell: a dump taken a minute ago holds
    /// leases that look unexpired.
    pub async fn activity(&self) -> Result<(i64, i64, i64)> {
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(MAX(expires_at), 0) FROM keelson_leases), \
                    (SELECT COALESCE(MAX(seen_at), 0) FROM keelson_heartbeats), \
                    (SELECT value FROM keelson_meta WHERE name = 'revision')",
        )
        .fetch_one(&self.inner.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }

    /// Marks the data as restored: revisions continue at `max(revision + bump, floor)`, all
    /// history before is compacted, leases are released (the servers that held them are gone)
    /// and nodes' heartbeats count from now (so no node is judged dead for the time the
    /// cluster was down, and none of its pods is evicted for it).
    pub async fn mark_restored(&self, bump: i64, floor: i64) -> Result<Marked> {
        let dialect = self.inner.dialect;
        let p = |n: usize| match dialect {
            Dialect::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        };
        let now = leases::now_ms(dialect);
        let meta = |name: &str| format!("SELECT value FROM keelson_meta WHERE name = '{name}'");
        let mut tx = self.inner.pool.begin().await?;
        let from: i64 = sqlx::query(sql(meta("revision")))
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let epoch: i64 = match sqlx::query(sql(meta("epoch")))
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(row) => row.try_get::<i64, _>(0)? + 1,
            None => 1,
        };
        let to = from.saturating_add(bump.max(1)).max(floor);
        sqlx::query(sql(format!(
            "UPDATE keelson_meta SET value = {} WHERE name IN ('revision', 'compact')",
            p(1)
        )))
        .bind(to)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM keelson_meta WHERE name = 'epoch'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql(format!(
            "INSERT INTO keelson_meta (name, value) VALUES ('epoch', {})",
            p(1)
        )))
        .bind(epoch)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM keelson_events")
            .execute(&mut *tx)
            .await?;
        let note = serde_json::json!({ "restoredFrom": from, "epoch": epoch }).to_string();
        sqlx::query(sql(format!(
            "INSERT INTO keelson_events (revision, path, kind, create_revision, value) VALUES ({}, {}, 1, {}, {})",
            p(1),
            p(2),
            p(3),
            p(4)
        )))
        .bind(to)
        .bind(SENTINEL)
        .bind(to)
        .bind(note.into_bytes())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE keelson_leases SET holder = '', expires_at = 0")
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql(format!(
            "UPDATE keelson_heartbeats SET seen_at = {now}"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Marked { from, to, epoch })
    }

    /// The number of restores this database has seen (0: never restored).
    pub async fn restore_epoch(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM keelson_meta WHERE name = 'epoch'")
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => 0,
        })
    }

    /// How many objects the database holds (for the restore's report).
    pub async fn object_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM keelson_objects")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}

/// The statements here are built only from constants (placeholders, the dialect's clock
/// expression, fixed row names); every value is bound.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}
