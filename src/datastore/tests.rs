//! Datastore behaviour on the real PostgreSQL and MariaDB of the machine.
//!
//! Each test makes its own database and drops it. When a database server is missing the
//! test says so loudly, and fails under `CI=true` instead of skipping.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::Connection;

use super::feed::Feed;
use super::*;

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const MYSQL_ADMIN: &str = "mysql://root@127.0.0.1:3306";

/// A database made for one test, dropped when the test ends.
pub struct TestDb {
    pub endpoint: Endpoint,
    admin: &'static str,
    name: String,
}

impl TestDb {
    /// `None` (with a loud message) when the server is not running and this is not CI.
    pub async fn new(dialect: Dialect, test: &str) -> Option<TestDb> {
        sqlx::any::install_default_drivers();
        let name = format!("keelson_t_{}_{}", test, std::process::id());
        let (admin, raw) = match dialect {
            Dialect::Postgres => (
                PG_ADMIN,
                format!("postgres://postgres@127.0.0.1:5432/{name}"),
            ),
            Dialect::Mysql => (
                MYSQL_ADMIN,
                format!("mysql://root@tcp(127.0.0.1:3306)/{name}"),
            ),
            Dialect::Sqlite => unreachable!("SQLite needs no server"),
        };
        match sqlx::AnyConnection::connect(admin).await {
            Ok(c) => drop(c),
            Err(e) => {
                let msg = format!("{dialect:?} is not reachable at {admin}: {e}");
                // As tests/common/skip.rs: a failure unless KEELSON_ALLOW_SKIP=1, never a skip
                // under CI.
                if std::env::var("CI").is_ok_and(|v| v == "true")
                    || !std::env::var("KEELSON_ALLOW_SKIP").is_ok_and(|v| v == "1")
                {
                    panic!("{msg} (set KEELSON_ALLOW_SKIP=1 to skip outside CI)");
                }
                eprintln!("\n!!! SKIPPING {test}: {msg}\n");
                return None;
            }
        }
        let db = TestDb {
            endpoint: Endpoint::parse(&raw).unwrap(),
            admin,
            name,
        };
        db.drop_database().await;
        Some(db)
    }

    async fn drop_database(&self) {
        if let Ok(mut c) = sqlx::AnyConnection::connect(self.admin).await {
            let stmt = match self.endpoint.dialect {
                Dialect::Postgres => {
                    format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)
                }
                _ => format!("DROP DATABASE IF EXISTS `{}`", self.name),
            };
            let _ = sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(&mut c).await;
        }
    }

    pub async fn cleanup(self) {
        self.drop_database().await;
    }
}

/// Several servers (stores with their own pools and feeds) writing at once: every feed
/// delivers every revision exactly once and in order, although writers on different pools
/// commit interleaved.
async fn every_feed_sees_every_revision_in_order(dialect: Dialect) {
    let Some(db) = TestDb::new(dialect, "feed_order").await else {
        return;
    };
    let pool = PoolConfig::default();
    let mut stores = Vec::new();
    let mut feeds = Vec::new();
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    for _ in 0..3 {
        let store = Store::open(&db.endpoint, &pool).await.unwrap();
        let (feed, poller) = Feed::new(store.clone()).await.unwrap();
        let mut stop = stop_tx.subscribe();
        tokio::spawn(poller.run(async move {
            let _ = stop.recv().await;
        }));
        feeds.push(feed);
        stores.push(store);
    }
    let mut subs = Vec::new();
    for f in &feeds {
        subs.push(f.subscribe(0).await.unwrap());
    }
    const PER_WRITER: usize = 15;
    let mut writers = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for w in 0..3 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..PER_WRITER {
                    let path = format!("/registry/x/{s}-{w}-{i}");
                    store.create(&path, b"{}").await.unwrap();
                    store.update(&path, None, b"{\"v\":2}").await.unwrap();
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let total = (stores.len() * 3 * PER_WRITER * 2) as i64;
    for (n, sub) in subs.iter_mut().enumerate() {
        let mut revs = Vec::new();
        let mut paths = BTreeSet::new();
        while (revs.len() as i64) < total {
            let ev = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .unwrap_or_else(|_| panic!("feed {n} stalled after {} events", revs.len()))
                .unwrap();
            revs.push(ev.revision);
            paths.insert(ev.path.clone());
        }
        assert_eq!(
            revs,
            (1..=total).collect::<Vec<_>>(),
            "feed {n} skipped or reordered a revision"
        );
        assert_eq!(paths.len() as i64, total / 2);
    }
    let _ = stop_tx.send(());
    for s in stores {
        s.close().await;
    }
    db.cleanup().await;
}

/// Three servers opening an empty database at the same moment: one schema, no DDL error.
async fn concurrent_start_migrates_once(dialect: Dialect) {
    let Some(db) = TestDb::new(dialect, "migrate").await else {
        return;
    };
    let opens = (0..3).map(|_| {
        let ep = db.endpoint.clone();
        tokio::spawn(async move { Store::open(&ep, &PoolConfig::default()).await })
    });
    let stores: Vec<Store> = futures_util::future::join_all(opens)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("concurrent open failed"))
        .collect();
    assert_eq!(stores[0].current_revision().await.unwrap(), 0);
    for s in stores {
        s.close().await;
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_feeds_never_skip_or_reorder() {
    every_feed_sees_every_revision_in_order(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_feeds_never_skip_or_reorder() {
    every_feed_sees_every_revision_in_order(Dialect::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_start_migrates_once() {
    concurrent_start_migrates_once(Dialect::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_concurrent_start_migrates_once() {
    concurrent_start_migrates_once(Dialect::Mysql).await;
}

/// `--datastore-max-idle-connections`: after a burst opened several connections, the idle ones
/// beyond the bound are closed within a couple of seconds, and the pool still serves.
async fn idle_connections_are_trimmed_to_the_bound(dialect: Dialect) {
    let Some(db) = TestDb::new(dialect, "idle").await else {
        return;
    };
    let cfg = PoolConfig {
        max_open: 5,
        max_idle: 1,
        ..PoolConfig::default()
    };
    let store = Store::open(&db.endpoint, &cfg).await.unwrap();
    let burst = (0..16).map(|_| {
        let s = store.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                s.current_revision().await.unwrap();
            }
        })
    });
    for t in futures_util::future::join_all(burst).await {
        t.unwrap();
    }
    let peak = store.connections().0;
    assert!(
        peak >= 2,
        "the burst should have opened several connections ({peak})"
    );
    let mut trimmed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (open, idle) = store.connections();
        if idle <= 1 && open <= 1 {
            trimmed = true;
            break;
        }
    }
    assert!(
        trimmed,
        "idle connections stayed at {:?}",
        store.connections()
    );
    store.current_revision().await.unwrap();
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn idle_connections_are_trimmed_on_postgres() {
    idle_connections_are_trimmed_to_the_bound(Dialect::Postgres).await;
}

#[tokio::test]
async fn idle_connections_are_trimmed_on_mariadb() {
    idle_connections_are_trimmed_to_the_bound(Dialect::Mysql).await;
}

/// MySQL has no LISTEN/NOTIFY; the doorbell stands in for it. A write through one server
/// reaches another server's feed long before that feed's own poll would, and an idle server
/// sends the database well under one statement a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_doorbell_wakes_other_servers_at_once() {
    let Some(db) = TestDb::new(Dialect::Mysql, "doorbell").await else {
        return;
    };
    let pool = PoolConfig::default();
    let a = Store::open(&db.endpoint, &pool).await.unwrap();
    let b = Store::open(&db.endpoint, &pool).await.unwrap();
    assert!(b.poll_interval() >= Duration::from_secs(5));
    let (feed, poller) = Feed::new(b.clone()).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(poller.run(async move {
        let _ = stop_rx.await;
    }));
    // Let both parked statements settle, then count what an idle server sends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = b.statements();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = b.statements() - before;
    assert!(idle <= 3, "{idle} statements in 5 s from an idle server");

    let mut sub = feed.subscribe(feed.latest()).await.unwrap();
    let mut latencies = Vec::new();
    for i in 0..9 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = std::time::Instant::now();
        a.create(&format!("/registry/x/{i}"), b"{}").await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the other server's feed never saw the write")
            .unwrap();
        assert_eq!(ev.path, format!("/registry/x/{i}"));
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!("idle: {idle} statements in 5 s; cross-server latencies {latencies:?}");
    assert!(
        median < Duration::from_millis(150),
        "median cross-server latency {median:?} (all: {latencies:?}); the feed polls every 5 s, so the doorbell did not ring"
    );
    let _ = stop_tx.send(());
    a.close().await;
    b.close().await;
    drop((a, b, feed, sub));
    db.cleanup().await;
}
