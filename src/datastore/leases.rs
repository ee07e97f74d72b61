//! Leases and heartbeats, timed by the database's clock.
//!
//! A lease row is taken by compare-and-swap: one UPDATE that succeeds only for the current
//! holder or once the lease has expired by the database's `now()`. Each change of holder
//! increments the row's epoch, so anything done under a lease can be fenced by it. No node's
//! wall clock is ever compared with another's.
//!
//! Heartbeats are one row per node, written for all of a server's nodes in one statement, and
//! read back as ages computed by the database, so the cost is O(servers), not O(nodes).

use sqlx::Row;

use super::{Dialect, Result, Store};

/// Milliseconds since the epoch by the database's clock.
pub(super) fn now_ms(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        Dialect::Mysql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
        Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

fn placeholder(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

/// A lease this process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Grows by one with every new holder.
    pub epoch: i64,
}

impl Store {
    /// Takes or renews the lease `name` for `holder` for `duration_ms` of database time.
    /// `None` when someone else holds an unexpired lease. `held` is what the caller held
    /// until now: renewing it costs one statement.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        duration_ms: i64,
        held: Option<Held>,
    ) -> Result<Option<Held>> {
        self.guard(|| async move {
            let sql = self.inner.sql;
            let take = || {
                sqlx::query(sql.lease_take)
                    .bind(holder)
                    .bind(holder)
                    .bind(duration_ms)
                    .bind(name)
                    .bind(holder)
            };
            self.count(1);
            let done = take().execute(&self.inner.pool).await?;
            if done.rows_affected() == 1 && held.is_some() {
                // Renewed: neither the holder nor the epoch changed.
                return Ok(held);
            }
            if done.rows_affected() == 0 {
                // Either someone else holds it, or the row does not exist yet (once per cluster).
                let known = self
                    .inner
                    .lease_rows
                    .lock()
                    .map(|rows| rows.contains(name))
                    .unwrap_or(false);
                if known {
                    return Ok(None);
                }
                self.count(2);
                let created = sqlx::query(sql.lease_ensure)
                    .bind(name)
                    .execute(&self.inner.pool)
                    .await?;
                if let Ok(mut rows) = self.inner.lease_rows.lock() {
                    rows.insert(name.to_owned());
                }
                if created.rows_affected() == 0 {
                    return Ok(None);
                }
                let done = take().execute(&self.inner.pool).await?;
                if done.rows_affected() == 0 {
                    return Ok(None);
                }
            }
            self.count(1);
            let row = sqlx::query(sql.lease_epoch)
                .bind(name)
                .bind(holder)
                .fetch_optional(&self.inner.pool)
                .await?;
            Ok(row
                .map(|r| r.try_get(0))
                .transpose()?
                .map(|epoch| Held { epoch }))
        })
        .await
    }

    /// Gives the lease up at once (on shutdown), if `holder` still has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.guard(|| async move {
            self.count(1);
            sqlx::query(self.inner.sql.lease_release)
                .bind(name)
                .bind(holder)
                .execute(&self.inner.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Records that `nodes` are alive, now by the database's clock: one statement for all.
    pub async fn heartbeat(&self, nodes: &[String]) -> Result<()> {
        self.guard(|| async move {
            if nodes.is_empty() {
                return Ok(());
            }
            let d = self.inner.dialect;
            let now = now_ms(d);
            let values: Vec<String> = (1..=nodes.len())
                .map(|i| format!("({}, {now})", placeholder(d, i)))
                .collect();
            let upsert = match d {
                Dialect::Mysql => " ON DUPLICATE KEY UPDATE seen_at = VALUES(seen_at)",
                _ => " ON CONFLICT (node) DO UPDATE SET seen_at = excluded.seen_at",
            };
            let sql = format!(
                "INSERT INTO keelson_heartbeats (node, seen_at) VALUES {}{upsert}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for n in nodes {
                q = q.bind(n.as_str());
            }
            self.count(1);
            q.execute(&self.inner.pool).await?;
            Ok(())
        })
        .await
    }

    /// Every node's time since its last heartbeat, in milliseconds of database time.
    pub async fn heartbeat_ages(&self) -> Result<Vec<(String, i64)>> {
        self.guard(|| async move {
            self.count(1);
            let rows = sqlx::query(self.inner.sql.heartbeat_ages)
                .fetch_all(&self.inner.pool)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::datastore::{Endpoint, PoolConfig, Store};

    #[tokio::test]
    async fn one_holder_at_a_time_and_the_epoch_grows_with_each_new_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Endpoint::sqlite(dir.path().join("s.db")),
            &PoolConfig::default(),
        )
        .await
        .unwrap();
        let a = store
            .acquire_lease("controllers", "a", 60_000, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store
                .acquire_lease("controllers", "b", 60_000, None)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .acquire_lease("controllers", "a", 60_000, None)
                .await
                .unwrap(),
            Some(a),
            "renewal keeps the epoch"
        );
        store.release_lease("controllers", "a").await.unwrap();
        let b = store
            .acquire_lease("controllers", "b", 60_000, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.epoch, a.epoch + 1);
        // An expired lease can be taken over.
        store
            .acquire_lease("short", "a", -1, None)
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .acquire_lease("short", "b", 1000, None)
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn heartbeats_are_batched_and_aged_by_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &Endpoint::sqlite(dir.path().join("s.db")),
            &PoolConfig::default(),
        )
        .await
        .unwrap();
        store.heartbeat(&["a".into(), "b".into()]).await.unwrap();
        store.heartbeat(&["a".into()]).await.unwrap();
        let mut ages = store.heartbeat_ages().await.unwrap();
        ages.sort();
        assert_eq!(ages.len(), 2);
        assert!(
            ages.iter().all(|(_, age)| (0..5_000).contains(age)),
            "{ages:?}"
        );
    }
}
