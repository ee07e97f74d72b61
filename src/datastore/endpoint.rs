//! Parsing of `--datastore-endpoint` values in the forms K3s documents.
//!
//! The output is a typed [`Endpoint`]: which SQL dialect, the URL sqlx understands, and the
//! database name. Credentials never appear in [`Endpoint::redacted`], which is what logs show.

use std::fmt;
use std::path::{Path, PathBuf};

/// The database name used when an endpoint names none, as in K3s.
pub const DEFAULT_DATABASE: &str = "kubernetes";

/// The accepted forms, shown to the user whenever an endpoint cannot be parsed.
pub const ACCEPTED_FORMS: &str = "accepted forms:\n  \
    sqlite://PATH\n  \
    mysql://USER:PASS@tcp(HOST:3306)/DB\n  \
    mysql://USER:PASS@HOST:3306/DB\n  \
    mysql://USER@unix(/run/mysqld/mysqld.sock)/DB\n  \
    postgres://USER:PASS@HOST:5432/DB (or postgresql://)\n  \
    postgres://USER@/DB?host=/var/run/postgresql";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--datastore-endpoint {endpoint:?} is not valid: {reason}\n{ACCEPTED_FORMS}")]
pub struct Error {
    endpoint: String,
    reason: &'static str,
}

/// The SQL dialect behind an endpoint. Everything dialect-specific (placeholders, DDL, locking)
/// is chosen from this one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub dialect: Dialect,
    /// The connection URL in the form sqlx expects. Holds the password: never log it.
    pub url: String,
    /// Database name (for SQLite, the file path).
    pub database: String,
    redacted: String,
}

// === impl Endpoint ===

impl Endpoint {
    /// The default endpoint: an SQLite file under the data dir.
    pub fn sqlite_default(data_dir: &Path) -> Endpoint {
        Endpoint::sqlite(data_dir.join("server/db/state.db"))
    }

    pub fn parse(raw: &str) -> Result<Endpoint, Error> {
        let err = |reason| Error {
            endpoint: redact_raw(raw),
            reason,
        };
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or_else(|| err("it has no scheme://"))?;
        match scheme {
            "sqlite" => {
                let path = rest.split('?').next().unwrap_or_default();
                if path.is_empty() {
                    return Err(err("the sqlite path is empty"));
                }
                Ok(Endpoint::sqlite(PathBuf::from(path)))
            }
            "mysql" => parse_mysql(rest).map_err(err),
            "postgres" | "postgresql" => parse_postgres(rest).map_err(err),
            _ => Err(err(
                "the scheme must be sqlite, mysql, postgres or postgresql",
            )),
        }
    }

    pub fn sqlite(path: PathBuf) -> Endpoint {
        let path = path.to_string_lossy().into_owned();
        Endpoint {
            dialect: Dialect::Sqlite,
            url: format!("sqlite://{path}?mode=rwc"),
            redacted: format!("sqlite://{path}"),
            database: path,
        }
    }

    /// The endpoint as it may appear in logs and errors: no password.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The URL of the server's administrative database, used to create ours if it is missing.
    pub fn admin_url(&self) -> Option<String> {
        let (base, query) = self
            .url
            .split_once('?')
            .map_or((self.url.as_str(), ""), |(b, q)| (b, q));
        let base = base.strip_suffix(&self.database)?;
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        match self.dialect {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some(format!("{base}postgres{query}")),
            Dialect::Mysql => Some(format!("{}{query}", base.trim_end_matches('/'))),
        }
    }

    /// Adds TLS settings from `--datastore-cafile/--datastore-certfile/--datastore-keyfile`.
    /// With a CA the server's certificate and name are verified; without, the link is only
    /// encrypted.
    pub fn with_tls(
        mut self,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Endpoint {
        let mut params = Vec::new();
        let (mode, ca_key, cert_key, key_key) = match self.dialect {
            Dialect::Sqlite => return self,
            Dialect::Postgres => (
                if ca.is_some() {
                    "sslmode=verify-full"
                } else {
                    "sslmode=require"
                },
                "sslrootcert",
                "sslcert",
                "sslkey",
            ),
            Dialect::Mysql => (
                if ca.is_some() {
                    "ssl-mode=VERIFY_IDENTITY"
                } else {
                    "ssl-mode=REQUIRED"
                },
                "ssl-ca",
                "ssl-cert",
                "ssl-key",
            ),
        };
        if ca.is_none() && cert.is_none() && key.is_none() {
            return self;
        }
        params.push(mode.to_owned());
        for (k, v) in [(ca_key, ca), (cert_key, cert), (key_key, key)] {
            if let Some(v) = v {
                params.push(format!("{k}={}", query_value(v)));
            }
        }
        let sep = if self.url.contains('?') { '&' } else { '?' };
        self.url = format!("{}{sep}{}", self.url, params.join("&"));
        self.redacted = format!("{}{sep}{}", self.redacted, params.join("&"));
        self
    }

    /// Whether `e` says the database itself does not exist (so it may be created).
    pub fn is_missing_database(&self, e: &sqlx::Error) -> bool {
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned());
        match self.dialect {
            Dialect::Postgres => code.as_deref() == Some("3D000"),
            // ER_BAD_DB_ERROR; the Any driver reports MySQL's SQLSTATE 42000 with the number in the message.
            Dialect::Mysql => {
                e.to_string().contains("1049") || e.to_string().contains("Unknown database")
            }
            Dialect::Sqlite => false,
        }
    }

    /// The SQLite file, when this is an SQLite endpoint.
    pub fn sqlite_path(&self) -> Option<&Path> {
        (self.dialect == Dialect::Sqlite).then(|| Path::new(&self.database))
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `user:pass@tcp(host:port)/db`, `user@unix(/sock)/db` or `user:pass@host:port/db`.
fn parse_mysql(rest: &str) -> Result<Endpoint, &'static str> {
    let (creds, after) = rest
        .rsplit_once('@')
        .ok_or("a mysql endpoint needs USER@ before the address")?;
    let (user, pass) = split_credentials(creds)?;
    let (address, path) = split_path(after);
    let (db, params) = database_and_params(path);
    let mut params: Vec<String> = params.map(str::to_owned).collect();
    let host = if let Some(inner) = strip_wrapped(address, "tcp(") {
        if inner.is_empty() {
            "127.0.0.1:3306".to_owned()
        } else {
            inner.to_owned()
        }
    } else if let Some(socket) = strip_wrapped(address, "unix(") {
        if socket.is_empty() {
            return Err("unix() needs the socket path");
        }
        params.push(format!("socket={socket}"));
        "localhost".to_owned()
    } else if address.contains('(') {
        return Err("the address must be tcp(HOST:PORT), unix(SOCKET) or HOST:PORT");
    } else if address.is_empty() {
        "127.0.0.1:3306".to_owned()
    } else {
        address.to_owned()
    };
    // Go-driver options such as parseTime have no meaning for sqlx: keep only ones it knows.
    params.retain(|p| {
        let key = p.split('=').next().unwrap_or_default();
        matches!(
            key,
            "socket" | "ssl-mode" | "ssl-ca" | "ssl-cert" | "ssl-key" | "charset"
        )
    });
    let auth = match pass {
        Some(p) => format!("{user}:{p}"),
        None => user.to_owned(),
    };
    let query = join_params(&params);
    Ok(Endpoint {
        dialect: Dialect::Mysql,
        url: format!("mysql://{auth}@{host}/{db}{query}"),
        redacted: format!(
            "mysql://{user}@{host}/{db}{}",
            join_params(&redact_params(&params))
        ),
        database: db.to_owned(),
    })
}

/// `user:pass@host:port/db?params`; `host` may be empty when `?host=/socket/dir` is given.
fn parse_postgres(rest: &str) -> Result<Endpoint, &'static str> {
    let (creds, after) = match rest.rsplit_once('@') {
        Some((c, a)) => (Some(c), a),
        None => (None, rest),
    };
    let (address, path) = split_path(after);
    if address.contains('(') {
        return Err("postgres addresses are HOST:PORT, not tcp(...)");
    }
    let (db, params) = database_and_params(path);
    let params: Vec<String> = params.map(str::to_owned).collect();
    let socket = params.iter().any(|p| p.starts_with("host=/"));
    let host = match (address.is_empty(), socket) {
        (false, _) => address,
        (true, true) => "localhost",
        (true, false) => "127.0.0.1:5432",
    };
    let (auth, user) = match creds {
        Some(c) => {
            let (user, pass) = split_credentials(c)?;
            let auth = match pass {
                Some(p) => format!("{user}:{p}@"),
                None => format!("{user}@"),
            };
            (auth, format!("{user}@"))
        }
        None => (String::new(), String::new()),
    };
    let query = join_params(&params);
    Ok(Endpoint {
        dialect: Dialect::Postgres,
        url: format!("postgres://{auth}{host}/{db}{query}"),
        redacted: format!(
            "postgres://{user}{host}/{db}{}",
            join_params(&redact_params(&params))
        ),
        database: db.to_owned(),
    })
}

/// A file path as a URL query value. sqlx decodes query values as form data, so a `+` would
/// reach it as a space and `&`, `#` or `%` would cut or change the path: every byte but
/// unreserved characters and `/` is percent-encoded.
fn query_value(path: &Path) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn split_credentials(creds: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (user, pass) = match creds.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (creds, None),
    };
    if user.is_empty() {
        return Err("the user name is empty");
    }
    Ok((user, pass))
}

/// Splits `address/path` where the address may hold a parenthesised socket path with slashes.
fn split_path(after: &str) -> (&str, &str) {
    let search_from = after.find(')').map_or(0, |i| i + 1);
    match after[search_from..].find('/') {
        Some(i) => (&after[..search_from + i], &after[search_from + i + 1..]),
        None => match after[search_from..].find('?') {
            Some(i) => (&after[..search_from + i], &after[search_from + i..]),
            None => (after, ""),
        },
    }
}

fn database_and_params(path: &str) -> (&str, impl Iterator<Item = &str>) {
    let (db, query) = path.split_once('?').unwrap_or((path, ""));
    let db = if db.is_empty() { DEFAULT_DATABASE } else { db };
    (db, query.split('&').filter(|p| !p.is_empty()))
}

fn strip_wrapped<'a>(address: &'a str, open: &str) -> Option<&'a str> {
    address.strip_prefix(open)?.strip_suffix(')')
}

fn join_params(params: &[String]) -> String {
    if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    }
}

fn redact_params(params: &[String]) -> Vec<String> {
    params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.contains("password") => format!("{k}=REDACTED"),
            _ => p.clone(),
        })
        .collect()
}

/// Best-effort redaction of an endpoint we could not parse, so errors never echo a password.
fn redact_raw(raw: &str) -> String {
    match (raw.find("://"), raw.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &raw[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:REDACTED{}", &raw[..s + 3], &raw[at..]),
                None => raw.to_owned(),
            }
        }
        _ => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_go_dsn_form() {
        let e = Endpoint::parse("mysql://u:p@tcp(db.example:3307)/k3s").unwrap();
        assert_eq!(e.dialect, Dialect::Mysql);
        assert_eq!(e.url, "mysql://u:p@db.example:3307/k3s");
        assert_eq!(e.database, "k3s");
        assert_eq!(e.redacted(), "mysql://u@db.example:3307/k3s");
    }

    #[test]
    fn mysql_unix_socket_and_default_database() {
        let e = Endpoint::parse("mysql://root@unix(/run/mysqld/mysqld.sock)/").unwrap();
        assert_eq!(
            e.url,
            "mysql://root@localhost/kubernetes?socket=/run/mysqld/mysqld.sock"
        );
        assert_eq!(e.database, "kubernetes");
    }

    #[test]
    fn mysql_plain_url_drops_go_only_options() {
        let e = Endpoint::parse("mysql://u:p@127.0.0.1:3306/db?parseTime=true").unwrap();
        assert_eq!(e.url, "mysql://u:p@127.0.0.1:3306/db");
    }

    #[test]
    fn postgres_forms() {
        let e = Endpoint::parse("postgres://u:secret@10.0.0.1:5432/k?sslmode=disable").unwrap();
        assert_eq!(e.url, "postgres://u:secret@10.0.0.1:5432/k?sslmode=disable");
        assert!(!e.redacted().contains("secret"));
        let e = Endpoint::parse("postgresql://postgres@/?host=/var/run/postgresql").unwrap();
        assert_eq!(
            e.url,
            "postgres://postgres@localhost/kubernetes?host=/var/run/postgresql"
        );
    }

    #[test]
    fn admin_urls_and_tls() {
        let e = Endpoint::parse("postgres://u:p@h:5432/k?sslmode=disable").unwrap();
        assert_eq!(
            e.admin_url().unwrap(),
            "postgres://u:p@h:5432/postgres?sslmode=disable"
        );
        let e = Endpoint::parse("mysql://u:p@tcp(h:3306)/k").unwrap();
        assert_eq!(e.admin_url().unwrap(), "mysql://u:p@h:3306");
        let e = e.with_tls(Some(Path::new("/ca.pem")), None, None);
        assert_eq!(
            e.url,
            "mysql://u:p@h:3306/k?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem"
        );
        let e = Endpoint::parse("postgres://u@h/k").unwrap().with_tls(
            None,
            Some(Path::new("/c")),
            Some(Path::new("/k")),
        );
        assert_eq!(
            e.url,
            "postgres://u@h/k?sslmode=require&sslcert=/c&sslkey=/k"
        );
    }

    #[test]
    fn tls_file_paths_reach_sqlx_unchanged() {
        let ca = "/etc/keelson/db+certs/ca #1&2%.pem";
        for raw in ["postgres://u@h/k", "mysql://u@tcp(h:3306)/k"] {
            let e = Endpoint::parse(raw).unwrap().with_tls(
                Some(Path::new(ca)),
                Some(Path::new("/c")),
                Some(Path::new("/k")),
            );
            let (_, query) = e.url.split_once('?').unwrap();
            // How sqlx reads the query (url's `query_pairs`).
            let values: Vec<String> = form_urlencoded::parse(query.as_bytes())
                .map(|(_, v)| v.into_owned())
                .collect();
            assert_eq!(values[1..], [ca, "/c", "/k"], "{}", e.url);
        }
    }

    #[test]
    fn sqlite_path() {
        let e = Endpoint::parse("sqlite:///var/lib/keelson/server/db/state.db").unwrap();
        assert_eq!(
            e.sqlite_path(),
            Some(Path::new("/var/lib/keelson/server/db/state.db"))
        );
    }

    #[test]
    fn malformed_endpoints_name_the_problem_and_hide_the_password() {
        let err = Endpoint::parse("redis://u:hunter2@host/db").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("scheme must be"), "{msg}");
        assert!(msg.contains("accepted forms"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(Endpoint::parse("mysql://host:3306/db").is_err());
        assert!(Endpoint::parse("no-scheme").is_err());
        assert!(Endpoint::parse("mysql://u@foo(bar)/db").is_err());
    }
}
