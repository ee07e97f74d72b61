//! Parsing of `--datastore-endpoint` values in the forms K3s documents.
//!
//! The output is a typed [`Endpoint`]: which SQL dialect, the URL sqlx understands, and the
//! database name. Credentials never appear in [`Endpoint::redacted`], which is what logs show.
//!
//! TLS to MySQL and PostgreSQL is always explicit in the URL handed to sqlx ([`TlsMode`], from
//! `--datastore-tls`, the endpoint's own `sslmode`/`ssl-mode`, or the default), so the mode in
//! force is the one logged, and no driver default or `PGSSLMODE` decides it silently.

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

/// How the connection to MySQL or PostgreSQL is protected (`--datastore-tls`), named as
/// PostgreSQL's `sslmode`, which K3s users know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext.
    Disable,
    /// TLS if the database offers it, else plaintext: anyone on the path can force plaintext.
    Prefer,
    /// TLS or no connection; the database's certificate is not checked.
    Require,
    /// TLS, with the database's certificate checked against `--datastore-cafile` and its name
    /// against the endpoint's host.
    VerifyFull,
}

/// `--datastore-cafile`, `--datastore-certfile` and `--datastore-keyfile`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles<'a> {
    pub ca: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

/// A TLS setting that cannot be honoured as given. Bad configuration: never retryable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TlsError {
    #[error(
        "--datastore-tls {0:?} is not a TLS mode (expected disable, prefer, require or verify-full)"
    )]
    UnknownMode(String),
    #[error(
        "--datastore-tls applies to MySQL and PostgreSQL only: an SQLite endpoint has no connection to protect; remove it"
    )]
    Sqlite,
    #[error(
        "{origin} needs --datastore-cafile, the CA that signed the database's certificate \
         (keelson does not fall back to a built-in list of public CAs)"
    )]
    VerifyWithoutCa { origin: String },
    #[error("{origin} contradicts {files}: remove one or the other")]
    DisableWithFiles { origin: String, files: String },
    #[error("--datastore-endpoint sets {param} but --datastore-tls is {flag}: remove one of them")]
    Contradiction { param: String, flag: TlsMode },
    #[error("--datastore-endpoint sets both {0} and {1}: keep one")]
    Twice(String, String),
    #[error(
        "--datastore-endpoint sets {0}, which keelson does not take: use --datastore-tls \
         disable, prefer, require or verify-full instead"
    )]
    UnsupportedParam(String),
}

#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub dialect: Dialect,
    /// The connection URL in the form sqlx expects. Holds the password: never log it.
    pub url: String,
    /// Database name (for SQLite, the file path).
    pub database: String,
    redacted: String,
    /// The host reached over TCP; `None` for a Unix socket or an SQLite file.
    tcp_host: Option<String>,
    /// The TLS mode in force, once [`Endpoint::with_tls`] chose it; `None` for SQLite.
    tls: Option<TlsMode>,
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
            tcp_host: None,
            tls: None,
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

    /// Chooses the TLS mode and adds it, with the `--datastore-cafile/-certfile/-keyfile`
    /// paths, to the URL. The mode is `flag` (`--datastore-tls`) if given, else the endpoint's
    /// own `sslmode`/`ssl-mode`, else `verify-full` with a CA file, `require` with only a
    /// client certificate, and `prefer` without either. SQLite takes no TLS setting.
    pub fn with_tls(
        mut self,
        flag: Option<TlsMode>,
        files: TlsFiles<'_>,
    ) -> Result<Endpoint, TlsError> {
        let (mode_key, ca_key, cert_key, key_key) = match self.dialect {
            Dialect::Sqlite if flag.is_some() => return Err(TlsError::Sqlite),
            Dialect::Sqlite => return Ok(self),
            Dialect::Postgres => ("sslmode", "sslrootcert", "sslcert", "sslkey"),
            Dialect::Mysql => ("ssl-mode", "ssl-ca", "ssl-cert", "ssl-key"),
        };
        let in_url = self.tls_in_url()?;
        // What chose the mode, for errors.
        let (mode, origin) = match (flag, &in_url) {
            (Some(flag), Some((mode, param))) if flag != *mode => {
                return Err(TlsError::Contradiction {
                    param: param.clone(),
                    flag,
                });
            }
            (Some(flag), _) => (flag, format!("--datastore-tls {flag}")),
            (None, Some((mode, param))) => (*mode, format!("--datastore-endpoint's {param}")),
            (None, None) => {
                let mode = match (files.ca, files.cert) {
                    (Some(_), _) => TlsMode::VerifyFull,
                    (None, Some(_)) => TlsMode::Require,
                    (None, None) => TlsMode::Prefer,
                };
                (mode, format!("TLS mode {mode}"))
            }
        };
        if mode == TlsMode::VerifyFull && files.ca.is_none() {
            return Err(TlsError::VerifyWithoutCa { origin });
        }
        let given: Vec<&str> = [
            ("--datastore-cafile", files.ca),
            ("--datastore-certfile", files.cert),
            ("--datastore-keyfile", files.key),
        ]
        .iter()
        .filter(|(_, f)| f.is_some())
        .map(|(flag, _)| *flag)
        .collect();
        if mode == TlsMode::Disable && !given.is_empty() {
            return Err(TlsError::DisableWithFiles {
                origin,
                files: given.join(", "),
            });
        }
        let mut params = Vec::new();
        if in_url.is_none() {
            params.push(format!("{mode_key}={}", mode.param(self.dialect)));
        }
        for (k, v) in [
            (ca_key, files.ca),
            (cert_key, files.cert),
            (key_key, files.key),
        ] {
            if let Some(v) = v {
                params.push(format!("{k}={}", query_value(v)));
            }
        }
        if !params.is_empty() {
            let sep = if self.url.contains('?') { '&' } else { '?' };
            self.url = format!("{}{sep}{}", self.url, params.join("&"));
            let sep = if self.redacted.contains('?') {
                '&'
            } else {
                '?'
            };
            self.redacted = format!("{}{sep}{}", self.redacted, params.join("&"));
        }
        self.tls = Some(mode);
        Ok(self)
    }

    /// The host, when a network attacker could force this connection to plaintext: TLS mode
    /// `prefer` over TCP to a host that is not this machine.
    pub fn downgradable(&self) -> Option<&str> {
        let host = self.tcp_host.as_deref()?;
        let local = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (self.tls == Some(TlsMode::Prefer) && !local).then_some(host)
    }

    /// The mode the endpoint's own query sets, with the parameter as written.
    fn tls_in_url(&self) -> Result<Option<(TlsMode, String)>, TlsError> {
        let query = self.url.split_once('?').map_or("", |(_, q)| q);
        let mut found: Option<(TlsMode, String)> = None;
        for param in query.split('&') {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            if key != "sslmode" && key != "ssl-mode" {
                continue;
            }
            let mode = TlsMode::from_param(self.dialect, value)
                .ok_or_else(|| TlsError::UnsupportedParam(param.to_owned()))?;
            match &found {
                Some((first, written)) if *first != mode => {
                    return Err(TlsError::Twice(written.clone(), param.to_owned()));
                }
                Some(_) => {}
                None => found = Some((mode, param.to_owned())),
            }
        }
        Ok(found)
    }

    /// Whether `e` says the database itself does not exist (so it may be created). Left out of
    /// the fuzz build (`fuzz/`), which parses endpoints without linking sqlx.
    #[cfg(not(fuzzing))]
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

// === impl TlsMode ===

impl TlsMode {
    /// The value of `--datastore-tls`.
    pub fn parse(raw: &str) -> Result<TlsMode, TlsError> {
        match raw.trim() {
            "disable" => Ok(TlsMode::Disable),
            "prefer" => Ok(TlsMode::Prefer),
            "require" => Ok(TlsMode::Require),
            "verify-full" => Ok(TlsMode::VerifyFull),
            _ => Err(TlsError::UnknownMode(raw.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// The driver's value: PostgreSQL's `sslmode` or MySQL's `ssl-mode`.
    fn param(self, dialect: Dialect) -> &'static str {
        match (dialect, self) {
            (Dialect::Mysql, TlsMode::Disable) => "DISABLED",
            (Dialect::Mysql, TlsMode::Prefer) => "PREFERRED",
            (Dialect::Mysql, TlsMode::Require) => "REQUIRED",
            (Dialect::Mysql, TlsMode::VerifyFull) => "VERIFY_IDENTITY",
            _ => self.as_str(),
        }
    }

    /// A driver value written in an endpoint (case-insensitive, as sqlx reads it); `None` for
    /// the modes keelson does not offer (`allow`, `verify-ca`, `VERIFY_CA`) and unknown ones.
    fn from_param(dialect: Dialect, value: &str) -> Option<TlsMode> {
        let value = value.to_ascii_lowercase();
        [
            TlsMode::Disable,
            TlsMode::Prefer,
            TlsMode::Require,
            TlsMode::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.param(dialect).eq_ignore_ascii_case(&value))
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    let socket = params.iter().any(|p| p.starts_with("socket="));
    Ok(Endpoint {
        tcp_host: (!socket).then(|| host_of(&host).to_owned()),
        tls: None,
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
    // sqlx lets `?host=` override the address: a path there is a socket.
    let tcp_host = match params.iter().rev().find_map(|p| p.strip_prefix("host=")) {
        Some(h) if h.starts_with('/') => None,
        Some(h) => Some(h.to_owned()),
        None if socket => None,
        None => Some(host_of(host).to_owned()),
    };
    Ok(Endpoint {
        tcp_host,
        tls: None,
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

/// `host` of `host:port`, `[v6]:port` or a bare host.
fn host_of(address: &str) -> &str {
    if let Some(v6) = address.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match address.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => address,
    }
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

/// Best-effort redaction of an endpoint we could not parse, so errors never echo a password:
/// whatever lies between the user's `:` and the last `@` goes, also when the `://` is missing
/// or mistyped (`mysql:/u:pass@host`), where the credentials are read from the start.
fn redact_raw(raw: &str) -> String {
    let Some(at) = raw.rfind('@') else {
        return raw.to_owned();
    };
    let start = raw[..at].find("://").map_or(0, |s| s + 3);
    match raw[start..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:REDACTED{}", &raw[..start], &raw[at..]),
        None => raw.to_owned(),
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

    fn tls(raw: &str, flag: Option<&str>, files: TlsFiles<'_>) -> Result<Endpoint, TlsError> {
        let flag = flag.map(|f| TlsMode::parse(f).unwrap());
        Endpoint::parse(raw).unwrap().with_tls(flag, files)
    }

    /// Only a CA file, `/ca.pem`.
    fn ca() -> TlsFiles<'static> {
        TlsFiles {
            ca: Some(Path::new("/ca.pem")),
            cert: None,
            key: None,
        }
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
        let e = e.with_tls(None, ca()).unwrap();
        assert_eq!(
            e.url,
            "mysql://u:p@h:3306/k?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem"
        );
        assert_eq!(
            e.admin_url().unwrap(),
            "mysql://u:p@h:3306?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem"
        );
        let e = tls(
            "postgres://u@h/k",
            None,
            TlsFiles {
                ca: None,
                cert: Some(Path::new("/c")),
                key: Some(Path::new("/k")),
            },
        )
        .unwrap();
        assert_eq!(
            e.url,
            "postgres://u@h/k?sslmode=require&sslcert=/c&sslkey=/k"
        );
    }

    #[test]
    fn tls_file_paths_reach_sqlx_unchanged() {
        let ca = "/etc/keelson/db+certs/ca #1&2%.pem";
        for raw in ["postgres://u@h/k", "mysql://u@tcp(h:3306)/k"] {
            let files = TlsFiles {
                ca: Some(Path::new(ca)),
                cert: Some(Path::new("/c")),
                key: Some(Path::new("/k")),
            };
            let e = tls(raw, None, files).unwrap();
            let (_, query) = e.url.split_once('?').unwrap();
            // How sqlx reads the query (url's `query_pairs`).
            let values: Vec<String> = form_urlencoded::parse(query.as_bytes())
                .map(|(_, v)| v.into_owned())
                .collect();
            assert_eq!(values[1..], [ca, "/c", "/k"], "{}", e.url);
        }
    }

    #[test]
    fn the_tls_mode_is_always_explicit_and_defaults_to_prefer_without_files() {
        let e = tls("postgres://u:secret@db:5432/k", None, TlsFiles::default()).unwrap();
        assert_eq!(e.url, "postgres://u:secret@db:5432/k?sslmode=prefer");
        assert_eq!(e.redacted(), "postgres://u@db:5432/k?sslmode=prefer");
        assert_eq!(e.tls, Some(TlsMode::Prefer));
        let e = tls("mysql://u@tcp(db:3306)/k", None, TlsFiles::default()).unwrap();
        assert_eq!(e.url, "mysql://u@db:3306/k?ssl-mode=PREFERRED");
        let e = tls("postgres://u@db/k", None, ca()).unwrap();
        assert_eq!(e.tls, Some(TlsMode::VerifyFull));
        assert_eq!(
            e.url,
            "postgres://u@db/k?sslmode=verify-full&sslrootcert=/ca.pem"
        );
    }

    #[test]
    fn each_tls_flag_maps_to_the_drivers_mode() {
        for (flag, pg, my) in [
            ("disable", "sslmode=disable", "ssl-mode=DISABLED"),
            ("prefer", "sslmode=prefer", "ssl-mode=PREFERRED"),
            ("require", "sslmode=require", "ssl-mode=REQUIRED"),
        ] {
            let e = tls("postgres://u@db/k", Some(flag), TlsFiles::default()).unwrap();
            assert_eq!(e.url, format!("postgres://u@db/k?{pg}"));
            assert_eq!(e.tls.map(TlsMode::as_str), Some(flag));
            let e = tls("mysql://u@tcp(db:3306)/k", Some(flag), TlsFiles::default()).unwrap();
            assert_eq!(e.url, format!("mysql://u@db:3306/k?{my}"));
        }
        let e = tls("mysql://u@tcp(db:3306)/k", Some("verify-full"), ca()).unwrap();
        assert_eq!(
            e.url,
            "mysql://u@db:3306/k?ssl-mode=VERIFY_IDENTITY&ssl-ca=/ca.pem"
        );
        // require with a CA file: encrypted; the CA is handed over but, as asked, not enforced.
        let e = tls("postgres://u@db/k", Some("require"), ca()).unwrap();
        assert_eq!(
            e.url,
            "postgres://u@db/k?sslmode=require&sslrootcert=/ca.pem"
        );
        assert_eq!(
            TlsMode::parse("verify-ca"),
            Err(TlsError::UnknownMode("verify-ca".into()))
        );
        assert!(
            TlsError::UnknownMode("x".into())
                .to_string()
                .contains("disable, prefer, require or verify-full")
        );
    }

    #[test]
    fn verify_full_without_a_ca_names_both_flags() {
        let msg = tls(
            "postgres://u@db/k",
            Some("verify-full"),
            TlsFiles::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("--datastore-tls verify-full") && msg.contains("--datastore-cafile"),
            "{msg}"
        );
        // Also when the endpoint asked for it.
        let msg = tls(
            "postgres://u@db/k?sslmode=verify-full",
            None,
            TlsFiles::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("sslmode=verify-full") && msg.contains("--datastore-cafile"),
            "{msg}"
        );
    }

    #[test]
    fn disable_with_tls_files_is_refused() {
        let files = TlsFiles {
            ca: None,
            cert: Some(Path::new("/c")),
            key: Some(Path::new("/k")),
        };
        let msg = tls("mysql://u@tcp(db:3306)/k", Some("disable"), files)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("--datastore-tls disable")
                && msg.contains("--datastore-certfile, --datastore-keyfile"),
            "{msg}"
        );
        assert!(tls("postgres://u@db/k", Some("disable"), ca()).is_err());
        assert!(tls("postgres://u@db/k?sslmode=disable", None, ca()).is_err());
    }

    #[test]
    fn a_mode_in_the_endpoint_must_agree_with_the_flag() {
        let none = TlsFiles::default();
        let err = tls("postgres://u@db/k?sslmode=disable", Some("require"), none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--datastore-endpoint sets sslmode=disable but --datastore-tls is require: remove one of them"
        );
        let raw = "mysql://u@tcp(db:3306)/k?ssl-mode=PREFERRED";
        let msg = tls(raw, Some("verify-full"), ca()).unwrap_err().to_string();
        assert!(
            msg.contains("ssl-mode=PREFERRED") && msg.contains("--datastore-tls is verify-full"),
            "{msg}"
        );
        // Agreeing: kept once, not repeated.
        let e = tls("postgres://u@db/k?sslmode=require", Some("require"), none).unwrap();
        assert_eq!(e.url, "postgres://u@db/k?sslmode=require");
        // Without the flag the endpoint's mode is the one in force, even against the default.
        let e = tls("postgres://u@db/k?ssl-mode=Require", None, ca()).unwrap();
        assert_eq!(e.tls, Some(TlsMode::Require));
        assert_eq!(
            e.url,
            "postgres://u@db/k?ssl-mode=Require&sslrootcert=/ca.pem"
        );
        // Modes keelson does not offer, and two different modes, are refused.
        for raw in [
            "postgres://u@db/k?sslmode=verify-ca",
            "postgres://u@db/k?sslmode=allow",
            "mysql://u@tcp(db:3306)/k?ssl-mode=VERIFY_CA",
        ] {
            let msg = tls(raw, None, ca()).unwrap_err().to_string();
            assert!(
                msg.contains("does not take") && msg.contains("--datastore-tls"),
                "{msg}"
            );
        }
        let raw = "postgres://u@db/k?sslmode=require&ssl-mode=disable";
        let err = tls(raw, None, none).unwrap_err();
        assert!(matches!(err, TlsError::Twice(..)), "{err}");
    }

    #[test]
    fn sqlite_takes_no_tls_mode() {
        let e = Endpoint::parse("sqlite:///x.db").unwrap();
        assert_eq!(
            e.clone()
                .with_tls(Some(TlsMode::Prefer), TlsFiles::default()),
            Err(TlsError::Sqlite)
        );
        let e = e.with_tls(None, TlsFiles::default()).unwrap();
        assert_eq!((e.tls, e.downgradable()), (None, None));
    }

    #[test]
    fn prefer_is_downgradable_only_over_the_network() {
        let none = TlsFiles::default();
        for (raw, host) in [
            ("postgres://u@10.0.0.1:5432/k", Some("10.0.0.1")),
            ("postgres://u@db.example/k", Some("db.example")),
            ("postgres://u@[fd00::1]:5432/k", Some("fd00::1")),
            ("postgres://u@/k?host=10.0.0.2", Some("10.0.0.2")),
            ("mysql://u@tcp(db:3306)/k", Some("db")),
            ("postgres://u@127.0.0.1:5432/k", None),
            ("postgres://u@localhost/k", None),
            ("postgres://u@[::1]:5432/k", None),
            ("postgres://u@/k?host=/var/run/postgresql", None),
            ("mysql://u@unix(/run/mysqld/mysqld.sock)/k", None),
            ("mysql://u@tcp(127.0.0.1:3306)/k", None),
        ] {
            let e = tls(raw, None, none).unwrap();
            assert_eq!(e.downgradable(), host, "{raw}");
        }
        for flag in ["require", "disable"] {
            let e = tls("postgres://u@10.0.0.1/k", Some(flag), none).unwrap();
            assert_eq!(e.downgradable(), None, "{flag}");
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

    #[test]
    fn mistyped_schemes_hide_the_password() {
        // Found by fuzz/fuzz_targets/endpoint.rs: without a `://` before the `@`, the
        // password was echoed whole.
        for raw in [
            "mysql:/u:hunter2@tcp(db:3306)/k3s",
            "mysql//u:hunter2@db/k3s",
            "u:hunter2@db:5432/k",
            "u:hunter2@db/k?x=sqlite://",
        ] {
            let msg = Endpoint::parse(raw).unwrap_err().to_string();
            assert!(!msg.contains("hunter2"), "{msg}");
            assert!(msg.contains(":REDACTED@"), "{msg}");
        }
    }
}
