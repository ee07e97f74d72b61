//! The machine's real PostgreSQL and MariaDB, one throwaway database per test.
//!
//! Every test makes its own database (`keelson_ha_<test>_<pid>`) and drops it, also when it
//! fails. A database server that does not answer fails the test unless
//! `KEELSON_ALLOW_SKIP=1` (see [`super::skip`]).

use std::fmt;
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Db {
    Postgres,
    MariaDb,
}

impl Db {
    /// The machine's port, or `KEELSON_TEST_POSTGRES_PORT` / `KEELSON_TEST_MARIADB_PORT` for a
    /// private instance (when the shared one cannot be used and must not be touched).
    pub fn port(self) -> u16 {
        let (var, default) = match self {
            Db::Postgres => ("KEELSON_TEST_POSTGRES_PORT", 5432),
            Db::MariaDb => ("KEELSON_TEST_MARIADB_PORT", 3306),
        };
        std::env::var(var)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(default)
    }
}

impl fmt::Display for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Db::Postgres => "PostgreSQL",
            Db::MariaDb => "MariaDB",
        })
    }
}

/// A database for one test, dropped when the guard goes (after the servers, which are declared
/// later and so dropped first).
pub struct TestDb {
    pub db: Db,
    pub name: String,
}

impl TestDb {
    /// Checks that the database server answers and names a database for `test` that does not
    /// exist yet (the first keelson server creates it). When the database server does not
    /// answer: a failure, or `None` after a loud line with `KEELSON_ALLOW_SKIP=1`.
    pub fn new(db: Db, test: &str) -> Option<TestDb> {
        if let Err(e) = run_sql(db, None, "SELECT 1") {
            let msg = format!(
                "{db} not reachable on 127.0.0.1:{}: {}",
                db.port(),
                e.trim()
            );
            super::skip::missing(&format!("{test} on {db}"), &msg);
            return None;
        }
        let t = TestDb {
            db,
            name: format!("keelson_ha_{test}_{}", std::process::id()),
        };
        t.drop_database();
        Some(t)
    }

    /// The endpoint as an operator writes it; for MariaDB, K3s's Go DSN form.
    pub fn endpoint(&self) -> String {
        match self.db {
            Db::Postgres => self.url_endpoint_at(self.db.port()),
            Db::MariaDb => format!(
                "mysql://root@tcp(127.0.0.1:{})/{}",
                self.db.port(),
                self.name
            ),
        }
    }

    /// The endpoint in URL form, at another port (a forwarder's).
    pub fn url_endpoint_at(&self, port: u16) -> String {
        match self.db {
            Db::Postgres => format!("postgres://postgres@127.0.0.1:{port}/{}", self.name),
            Db::MariaDb => format!("mysql://root@127.0.0.1:{port}/{}", self.name),
        }
    }

    /// Runs SQL on a connection with no default database (MariaDB) or on `postgres`, so it is
    /// never counted as one of the server's connections.
    pub fn admin(&self, sql: &str) -> Result<String, String> {
        run_sql(self.db, None, sql)
    }

    /// Runs SQL in the test's database.
    pub fn query(&self, sql: &str) -> String {
        run_sql(self.db, Some(&self.name), sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// How many connections the database server has open to this test's database.
    pub fn connections(&self) -> Option<usize> {
        let sql = match self.db {
            Db::Postgres => format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ),
            Db::MariaDb => format!(
                "SELECT count(*) FROM information_schema.processlist WHERE db = '{}'",
                self.name
            ),
        };
        self.admin(&sql).ok()?.parse().ok()
    }

    pub fn drop_database(&self) {
        let sql = match self.db {
            Db::Postgres => format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            Db::MariaDb => format!("DROP DATABASE IF EXISTS `{}`", self.name),
        };
        if let Err(e) = self.admin(&sql) {
            eprintln!("!!! could not drop the test database {}: {e}", self.name);
        }
    }

    /// Everything a refused server could have written to the cluster's history: the event
    /// count, the revision counter, the sealed cluster data and settings, and every object's
    /// revision.
    pub fn snapshot(&self) -> Vec<(&'static str, String)> {
        let md5 = match self.db {
            Db::Postgres => "SELECT name, md5(value) FROM keelson_secrets ORDER BY name",
            Db::MariaDb => "SELECT name, MD5(value) FROM keelson_secrets ORDER BY name",
        };
        vec![
            ("events", self.query("SELECT count(*) FROM keelson_events")),
            (
                "revision",
                self.query("SELECT value FROM keelson_meta WHERE name = 'revision'"),
            ),
            ("secrets", self.query(md5)),
            (
                "objects",
                self.query("SELECT path, revision FROM keelson_objects ORDER BY path"),
            ),
        ]
    }
}

/// Runs SQL with the database's command-line client, in `database` or in none (MariaDB) or
/// `postgres`.
pub fn run_sql(db: Db, database: Option<&str>, sql: &str) -> Result<String, String> {
    let mut cmd = match db {
        Db::Postgres => {
            let mut c = Command::new("psql");
            c.env("PGCONNECT_TIMEOUT", "5")
                .args(["-qAt", "-h", "127.0.0.1", "-U", "postgres"])
                .args(["-p", &db.port().to_string(), "-d"])
                .arg(database.unwrap_or("postgres"))
                .args(["-c", sql]);
            c
        }
        Db::MariaDb => {
            let mut c = Command::new("mariadb");
            c.args([
                "--connect-timeout=5",
                "-h",
                "127.0.0.1",
                "-P",
                &db.port().to_string(),
                "-uroot",
                "-N",
                "-B",
                "-e",
            ])
            .arg(sql)
            .args(database);
            c
        }
    };
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.drop_database();
    }
}
