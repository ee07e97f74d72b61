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

/// The schema version this build writes (`keelson_meta.schema`). A snapshot or database of a
/// newer version is refused rather than half understood.
pub const VERSION: i64 = 1;

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
