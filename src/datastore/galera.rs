//! MariaDB Galera (multi-primary) support: what keelson does differently when the MySQL
//! endpoint is one node of a Galera cluster, and every server writes through its own node.
//!
//! Galera replicates each transaction's write set to every node and *certifies* it at commit:
//! of two transactions on different nodes that touched the same row, the one ordered first
//! commits everywhere and the other fails with `ER_LOCK_DEADLOCK` (1213), also when it was
//! already waiting in `COMMIT`, and having changed nothing. Row locks (`FOR UPDATE`) are local
//! to a node. keelson's revision counter is one row that every write updates, so:
//!
//! - revisions stay gapless and ordered across nodes: any two concurrent writes conflict on
//!   that row, so exactly one commits each revision and the other is certified away whole;
//! - a certification failure is retried by the writer ([`retry`]), the batch decided again
//!   against the state that won, and never reaches a caller; nor does 1047 ("WSREP has not yet
//!   prepared node for application use": the node is joining or outside the primary
//!   component) for the few seconds a view change takes;
//! - every connection reads causally ([`prepare`]: `wsrep_sync_wait` with the READ bit), so a
//!   write acknowledged through one node is seen by a read, a refusal (not found, conflict,
//!   already exists: decided without a write set, so never certified) or a parked doorbell
//!   statement that starts afterwards on any other node;
//! - the doorbell rings the parked statements of the other nodes too ([`peer_url`]; see
//!   `doorbell`), since each node's process list shows only its own sessions.
//!
//! Invariants: only errors Galera guarantees rolled back (1213, 1047) are retried; a
//! connection error in flight stays in doubt, as on any database. keelson uses no
//! `AUTO_INCREMENT` column (the revision is its own counter), so Galera's
//! `wsrep_auto_increment_control` and `auto_increment_increment` change nothing for it.

use std::time::Duration;

use sqlx::{AnyConnection, Row};

/// A Galera certification failure or a brute-force abort by a replicated write set: the
/// transaction was rolled back whole. Also plain InnoDB's deadlock.
pub const ER_LOCK_DEADLOCK: u16 = 1213;
/// "WSREP has not yet prepared node for application use": the node is not in the primary
/// component (joining, or cut off from the majority). Nothing was executed.
pub const ER_UNKNOWN_COM_ERROR: u16 = 1047;

/// How long a write keeps being retried after conflicts or a node not ready, before its caller
/// is told the datastore is unavailable (503, retry later). Covers a Galera view change after
/// a node dies (`evs.suspect_timeout`, 5 s by default) with some to spare.
pub const RETRY_FOR: Duration = Duration::from_secs(10);
/// First and largest pause between retries; jittered, so writers on different nodes that
/// keep colliding drift apart.
const BACKOFF_MIN: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Why a statement may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Certification conflict or deadlock: rolled back, try at once with fresh state.
    Conflict,
    /// The node cannot serve yet (view change, joining): try after a pause.
    NotReady,
}

/// Whether `e` is an error Galera (or InnoDB) guarantees left nothing written, and so may be
/// retried by the writer that got it.
pub fn retry(e: &super::Error) -> Option<Retry> {
    let super::Error::Unavailable(sqlx::Error::Database(db)) = e else {
        return None;
    };
    match mysql_code(&**db)? {
        ER_LOCK_DEADLOCK => Some(Retry::Conflict),
        ER_UNKNOWN_COM_ERROR => Some(Retry::NotReady),
        _ => None,
    }
}

/// The pause before retry number `attempt` (0-based): exponential from [`BACKOFF_MIN`] to
/// [`BACKOFF_MAX`], a random point in its upper half.
pub fn backoff(attempt: u32, why: Retry) -> Duration {
    let base = match why {
        // The winner has committed: the next try usually goes through.
        Retry::Conflict => BACKOFF_MIN,
        Retry::NotReady => BACKOFF_MAX / 4,
    };
    let d = base.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
    let half = d / 2;
    half + Duration::from_micros(random() % (half.as_micros() as u64 + 1))
}

/// On a Galera node, makes this connection's reads causal: each statement first waits until the
/// node applied every transaction the cluster committed before it started (the READ bit of
/// `wsrep_sync_wait`, added to whatever the operator configured). Returns whether the
/// database is a Galera node. On anything else (plain MariaDB or MySQL) nothing is changed.
pub async fn prepare(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    if !is_galera(conn).await? {
        return Ok(false);
    }
    sqlx::raw_sql("SET SESSION wsrep_sync_wait = @@wsrep_sync_wait | 1")
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Whether the connection's server replicates through a Galera provider. `SHOW VARIABLES`
/// answers on every MySQL flavour (without the rows where there is no wsrep).
pub async fn is_galera(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query("SHOW VARIABLES WHERE Variable_name IN ('wsrep_on', 'wsrep_provider')")
        .fetch_all(&mut *conn)
        .await?;
    let mut on = false;
    let mut provider = false;
    for row in rows {
        let name: String = row.try_get(0)?;
        let value: String = row.try_get(1)?;
        match name.as_str() {
            "wsrep_on" => on = value.eq_ignore_ascii_case("ON"),
            "wsrep_provider" => provider = !value.is_empty() && value != "none",
            _ => {}
        }
    }
    Ok(on && provider)
}

/// The cluster as this node sees it: its own identity and the client addresses
/// (`host:port`) of every member, itself included (`wsrep_incoming_addresses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// This node's `wsrep_gcomm_uuid`: how a ringer tells its own node among the addresses.
    pub own: String,
    pub addresses: Vec<String>,
}

/// Reads [`Members`] from a Galera node; `None` on a database without Galera.
pub async fn members(conn: &mut AnyConnection) -> Result<Option<Members>, sqlx::Error> {
    let rows = sqlx::query(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_incoming_addresses', 'wsrep_gcomm_uuid')",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut own = None;
    let mut addresses = None;
    for row in rows {
        let name: String = row.try_get(0)?;
        let value: String = row.try_get(1)?;
        match name.to_ascii_lowercase().as_str() {
            "wsrep_gcomm_uuid" => own = Some(value),
            "wsrep_incoming_addresses" => addresses = Some(parse_addresses(&value)),
            _ => {}
        }
    }
    Ok(match (own, addresses) {
        (Some(own), Some(addresses)) if !own.is_empty() => Some(Members { own, addresses }),
        _ => None,
    })
}

/// This node's `wsrep_gcomm_uuid`, to recognise it behind another address.
pub async fn node_id(conn: &mut AnyConnection) -> Result<String, sqlx::Error> {
    let row = sqlx::query("SHOW GLOBAL STATUS LIKE 'wsrep_gcomm_uuid'")
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => row.try_get(1),
        None => Ok(String::new()),
    }
}

/// `wsrep_incoming_addresses`: comma-separated `host:port`, where a node that has not said
/// yet shows as `AUTO` or empty; those are left out, as are duplicates.
pub fn parse_addresses(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in value.split(',').map(str::trim) {
        let usable = !a.is_empty()
            && !a.eq_ignore_ascii_case("AUTO")
            && a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if usable && !out.iter().any(|o| o == a) {
            out.push(a.to_owned());
        }
    }
    out
}

/// The endpoint's URL (`mysql://creds@host[:port]/db[?params]`, as [`super::Endpoint`] builds
/// it) pointed at another node's `address` (`host:port`): same credentials, database and TLS
/// settings; a Unix socket, which only reaches the local node, is dropped. `None` if the URL
/// is not of that form.
pub fn peer_url(url: &str, address: &str) -> Option<String> {
    let rest = url.strip_prefix("mysql://")?;
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    // Database names hold no '/', so the last one starts the database; a '@' in the
    // credentials is percent-encoded in the URL form, so the last '@' before it ends them.
    let (authority, db) = base.rsplit_once('/')?;
    let creds = authority.rsplit_once('@').map(|(c, _)| c);
    let params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("socket="))
        .collect();
    let mut out = String::from("mysql://");
    if let Some(creds) = creds {
        out.push_str(creds);
        out.push('@');
    }
    out.push_str(address);
    out.push('/');
    out.push_str(db);
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    Some(out)
}

/// MySQL's numeric error code (sqlx exposes the SQLSTATE as `code`).
pub fn mysql_code(e: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number())
}

/// Enough randomness to spread retries, not for secrets: the std hasher's per-process random
/// keys over a counter.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_keep_credentials_database_and_tls_but_not_a_socket() {
        assert_eq!(
            peer_url("mysql://u:p%40ss@10.0.0.1:3306/k3s", "10.0.0.2:3307").as_deref(),
            Some("mysql://u:p%40ss@10.0.0.2:3307/k3s")
        );
        assert_eq!(
            peer_url(
                "mysql://u@db:3306/k?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem",
                "198.18.7.3:3306"
            )
            .as_deref(),
            Some("mysql://u@198.18.7.3:3306/k?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem")
        );
        assert_eq!(
            peer_url(
                "mysql://root@localhost/kubernetes?socket=/run/mysqld/mysqld.sock",
                "198.18.7.2:3306"
            )
            .as_deref(),
            Some("mysql://root@198.18.7.2:3306/kubernetes")
        );
        assert_eq!(peer_url("postgres://u@h/db", "h2:1"), None);
        assert_eq!(peer_url("mysql://nodatabase", "h2:1"), None);
    }

    #[test]
    fn incoming_addresses_skip_nodes_without_one() {
        assert_eq!(
            parse_addresses("198.18.7.1:3306,AUTO,,198.18.7.3:3306, 198.18.7.1:3306,h:0,:3306"),
            vec!["198.18.7.1:3306", "198.18.7.3:3306"]
        );
        assert!(parse_addresses("").is_empty());
    }

    #[test]
    fn only_errors_that_wrote_nothing_are_retried() {
        let io = super::super::Error::Unavailable(sqlx::Error::Io(std::io::Error::other("x")));
        assert_eq!(retry(&io), None);
        assert_eq!(retry(&super::super::Error::NotFound("/x".into())), None);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let first = backoff(0, Retry::Conflict);
        assert!(
            first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN,
            "{first:?}"
        );
        for attempt in [5, 10, 40] {
            let d = backoff(attempt, Retry::Conflict);
            assert!(d <= BACKOFF_MAX, "{d:?}");
        }
        let late = backoff(40, Retry::NotReady);
        assert!(late >= BACKOFF_MAX / 2, "{late:?}");
    }
}
