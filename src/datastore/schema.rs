//! The tables keelson keeps, per dialect, and how they are created.
//!
//! | table | rows | purpose |
//! |---|---|---|
//! | `keelson_meta` | `revision`, `compact`, `schema` | the global revision counter (last revision handed out), the revision history is compacted through, and the schema version |
//! | `keelson_objects` | one per live object | `path` (`/registry/<resource>/[<namespace>/]<name>`), `create_revision`, `revision` (last modification), `value` (JSON without `metadata.resourceVersion`) |
//! | `keelson_events` | one per change | `revision` (primary key, gapless), `path`, `kind` (0 added, 1 modified, 2 deleted), `create_revision`, `value` (the object after the change, or its last state for a deletion) |
//! | `keelson_secrets` | `cluster`, `settings` | cluster secrets (CA, keys) sealed with the token-derived key; agreed settings |
//! | `keelson_leases` | one per lease | `holder`, `epoch` (grows with each new holder), `expires_at` (ms, database clock) |
//! | `keelson_heartbeats` | one per node | `seen_at` (ms, database clock) of the node's last heartbeat |
//!
//! Invariant: every write transaction starts by incrementing `keelson_meta.revision`. That row
//! lock serialises writers, so revisions are handed out in commit order and a rolled-back
//! transaction returns its number: the change feed never sees a gap or a late commit.

use super::endpoint::Dialect;

/// The schema version this build writes (`keelson_meta.schema`).
///
/// Rolling upgrades on one database: a newer server migrates forward, additively, under the
/// migration lock, and records in `schema_min` the oldest version that can still use the
/// result — so servers one version behind keep working beside it, and an older one refuses
/// to start, naming both versions, rather than half understanding the tables.
pub const VERSION: i64 = 1;

/// One forward step: the DDL that takes the schema from `to - 1` to `to` (additive: new
/// tables, new nullable columns, new rows), and the oldest version whose servers can still use
/// the schema afterwards (`to - 1` for an additive step).
pub struct Migration {
    pub to: i64,
    pub oldest_reader: i64,
    pub ddl: fn(Dialect) -> &'static [&'static str],
}

/// The steps after version 1 (whose tables [`ddl`] creates), in order.
pub const MIGRATIONS: &[Migration] = &[];

/// What opening a database of schema `stored` (usable from `stored_min` on) means for a
/// server of schema `ours`.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    UpToDate,
    /// A newer server migrated it; this one is within the versions it kept working.
    Newer {
        stored: i64,
    },
    /// Run these steps, then record `VERSION` and `oldest_reader`.
    Migrate {
        steps: Vec<i64>,
        oldest_reader: i64,
    },
}

/// The schema is too new for this server.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the datastore's schema is version {stored}, written by a newer keelson, and works only with servers of schema version {stored_min} or later; this keelson ({}) has schema version {ours}: upgrade this server",
    env!("CARGO_PKG_VERSION")
)]
pub struct TooNew {
    pub stored: i64,
    pub stored_min: i64,
    pub ours: i64,
}

pub fn plan(
    stored: i64,
    stored_min: i64,
    ours: i64,
    migrations: &[Migration],
) -> Result<Plan, TooNew> {
    if stored_min > ours {
        return Err(TooNew {
            stored,
            stored_min,
            ours,
        });
    }
    if stored > ours {
        return Ok(Plan::Newer { stored });
    }
    if stored == ours {
        return Ok(Plan::UpToDate);
    }
    let steps: Vec<&Migration> = migrations
        .iter()
        .filter(|m| m.to > stored && m.to <= ours)
        .collect();
    let oldest_reader = steps.iter().map(|m| m.oldest_reader).min().unwrap_or(ours);
    Ok(Plan::Migrate {
        steps: steps.iter().map(|m| m.to).collect(),
        oldest_reader,
    })
}

/// DDL statements, run in order; each is idempotent.
pub fn ddl(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Sqlite => &[
            "CREATE TABLE IF NOT EXISTS keelson_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_objects (path TEXT PRIMARY KEY, create_revision INTEGER NOT NULL, revision INTEGER NOT NULL, value BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_events (revision INTEGER PRIMARY KEY, path TEXT NOT NULL, kind INTEGER NOT NULL, create_revision INTEGER NOT NULL, value BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL, expires_at INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_heartbeats (node TEXT PRIMARY KEY, seen_at INTEGER NOT NULL)",
        ],
        Dialect::Postgres => &[
            "CREATE TABLE IF NOT EXISTS keelson_meta (name VARCHAR(64) PRIMARY KEY, value BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_objects (path VARCHAR(512) COLLATE \"C\" PRIMARY KEY, create_revision BIGINT NOT NULL, revision BIGINT NOT NULL, value BYTEA NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_events (revision BIGINT PRIMARY KEY, path VARCHAR(512) COLLATE \"C\" NOT NULL, kind BIGINT NOT NULL, create_revision BIGINT NOT NULL, value BYTEA NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_secrets (name VARCHAR(64) PRIMARY KEY, value BYTEA NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_leases (name VARCHAR(64) PRIMARY KEY, holder VARCHAR(255) NOT NULL, epoch BIGINT NOT NULL, expires_at BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS keelson_heartbeats (node VARCHAR(255) PRIMARY KEY, seen_at BIGINT NOT NULL)",
        ],
        Dialect::Mysql => &[
            "CREATE TABLE IF NOT EXISTS keelson_meta (name VARCHAR(64) PRIMARY KEY, value BIGINT NOT NULL) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS keelson_objects (path VARCHAR(512) CHARACTER SET ascii COLLATE ascii_bin PRIMARY KEY, create_revision BIGINT NOT NULL, revision BIGINT NOT NULL, value LONGBLOB NOT NULL) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS keelson_events (revision BIGINT PRIMARY KEY, path VARCHAR(512) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, kind BIGINT NOT NULL, create_revision BIGINT NOT NULL, value LONGBLOB NOT NULL) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS keelson_secrets (name VARCHAR(64) PRIMARY KEY, value LONGBLOB NOT NULL) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS keelson_leases (name VARCHAR(64) PRIMARY KEY, holder VARCHAR(255) NOT NULL, epoch BIGINT NOT NULL, expires_at BIGINT NOT NULL) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS keelson_heartbeats (node VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin PRIMARY KEY, seen_at BIGINT NOT NULL) ENGINE=InnoDB",
        ],
    }
}

/// Seeds the meta rows; run after the DDL, idempotent (a row that exists is left alone).
pub fn seed(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Sqlite => &[
            "INSERT OR IGNORE INTO keelson_meta (name, value) VALUES ('revision', 0), ('compact', 0), ('schema', 1)",
        ],
        Dialect::Postgres => &[
            "INSERT INTO keelson_meta (name, value) VALUES ('revision', 0), ('compact', 0), ('schema', 1) ON CONFLICT (name) DO NOTHING",
        ],
        Dialect::Mysql => &[
            "INSERT IGNORE INTO keelson_meta (name, value) VALUES ('revision', 0), ('compact', 0), ('schema', 1)",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: Dialect) -> &'static [&'static str] {
        &[]
    }

    const STEPS: &[Migration] = &[
        Migration {
            to: 2,
            oldest_reader: 1,
            ddl: none,
        },
        Migration {
            to: 3,
            oldest_reader: 2,
            ddl: none,
        },
    ];

    #[test]
    fn n_minus_one_keeps_working_and_older_servers_are_refused_by_name() {
        assert_eq!(plan(1, 1, 1, STEPS), Ok(Plan::UpToDate));
        // Version 2 servers on a database version 3 migrated: still usable.
        assert_eq!(plan(3, 2, 2, STEPS), Ok(Plan::Newer { stored: 3 }));
        // Version 1 servers on it: refused, naming both versions.
        let err = plan(3, 2, 1, STEPS).unwrap_err();
        assert_eq!(
            err,
            TooNew {
                stored: 3,
                stored_min: 2,
                ours: 1
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("version 3") && text.contains("schema version 1"),
            "{text}"
        );
        // Forward, one step at a time, recording who may still read it.
        assert_eq!(
            plan(1, 1, 3, STEPS),
            Ok(Plan::Migrate {
                steps: vec![2, 3],
                oldest_reader: 1
            })
        );
        assert_eq!(
            plan(2, 1, 3, STEPS),
            Ok(Plan::Migrate {
                steps: vec![3],
                oldest_reader: 2
            })
        );
    }
}
