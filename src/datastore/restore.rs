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
//! sentinel, as compaction does) so a server that was behind sees the jump as a gap at once;
//! it refuses while any server still holds a lease.

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

/// A server still holds a lease in the database being marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveServer {
    pub lease: String,
    pub holder: String,
    /// How long until the lease expires if nobody renews it.
    pub expires_in_ms: i64,
}

impl Store {
    /// Unexpired leases: a server (or a crashed one whose leases have not run out yet) that
    /// would keep serving the old revisions.
    pub async fn live_leases(&self) -> Result<Vec<LiveServer>> {
        let now = leases::now_ms(self.inner.dialect);
        let rows = sqlx::query(sql(format!(
            "SELECT name, holder, expires_at - {now} FROM keelson_leases WHERE holder <> '' AND expires_at > {now} ORDER BY name"
        )))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LiveServer {
                    lease: r.try_get(0)?,
                    holder: r.try_get(1)?,
                    expires_in_ms: r.try_get(2)?,
                })
            })
            .collect()
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
        let epoch: i64 = match sqlx::query(sql(meta("epoch"))).fetch_optional(&mut *tx).await? {
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
        sqlx::query(sql(format!("UPDATE keelson_heartbeats SET seen_at = {now}")))
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

impl std::fmt::Display for LiveServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} holds the lease {} for {:.1} s more",
            self.holder,
            self.lease,
            self.expires_in_ms as f64 / 1000.0
        )
    }
}

/// The statements here are built only from constants (placeholders, the dialect's clock
/// expression, fixed row names); every value is bound.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}
