//! `--datastore-cafile`, `--datastore-certfile` and `--datastore-keyfile` against real
//! TLS-only PostgreSQL and MariaDB servers that this file starts for itself (see
//! `common::tlsdb`), one of each, on free loopback ports.
//!
//! On each database a real `keelson server`:
//! - with the CA and a password user, verifies the database and becomes ready;
//! - with the CA and a client certificate, logs in by that certificate;
//! - with a client certificate and no CA, still encrypts (and does not verify);
//! - with the CA but no client certificate where one is required, stays unready, and its log
//!   gives the database's refusal;
//! - with a wrong CA, stays unready, its log says the certificate was not trusted, and it never
//!   falls back to plaintext (PostgreSQL would even take that user without TLS).
//!
//! Every ready server shows its node Ready in `kubectl get nodes`, and the database itself
//! reports every connection keelson holds as TLS.
//!
//! Against a private PostgreSQL without TLS, `--datastore-tls require` stays unready with
//! "server does not support TLS" in `/readyz`, where `prefer` connects in plaintext. Missing
//! database programs fail the test unless `KEELSON_ALLOW_SKIP=1` (see `common::skip`).

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use common::tlsdb::{CLIENT_CN, Engine, MariaDb, Pki, Postgres};
use common::{Options, Reply, Server};

/// The password of the `keelson_pw` user on both databases.
const PASSWORD: &str = "tls-test-pw";
/// Longest an unready server may take to log why it cannot open the datastore. The first
/// attempt is made at once; this leaves room for a loaded machine.
const LOG_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a ready server's node may take to show Ready.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// pg_hba.conf of the private PostgreSQL: TLS for every keelson user, by password or by
/// client certificate, plaintext refused, except that `keelson_wrongca` would be let in
/// without TLS, so a server that fell back to plaintext would get in.
const PG_HBA: &str = "\
# TYPE    DATABASE  USER             ADDRESS       METHOD
local     all       postgres                       trust
hostssl   all       keelson_pw       127.0.0.1/32  scram-sha-256
hostssl   all       keelson          127.0.0.1/32  cert
host      all       keelson_wrongca  127.0.0.1/32  trust
hostnossl all       all              0.0.0.0/0     reject
";

#[test]
fn postgres_tls_flags_verify_the_database_and_present_the_client_certificate() {
    if !Engine::Postgres.available("postgres_tls_flags") {
        return;
    }
    let pki = Pki::new();
    let pg = Postgres::start(&pki, PG_HBA);
    pg.psql(&format!(
        "CREATE ROLE keelson LOGIN CREATEDB; \
         CREATE ROLE keelson_pw LOGIN CREATEDB PASSWORD '{PASSWORD}'; \
         CREATE ROLE keelson_wrongca LOGIN CREATEDB"
    ))
    .expect("create the roles");
    // The instance itself: plaintext refused, verified TLS accepted.
    let refused = pg
        .psql_tcp(
            &format!("user=keelson_pw password={PASSWORD} dbname=postgres sslmode=disable"),
            "SELECT 1",
        )
        .expect_err("the private PostgreSQL accepted a plaintext connection");
    assert!(refused.contains("no encryption"), "{refused}");
    pg.psql_tcp(
        &format!(
            "user=keelson_pw password={PASSWORD} dbname=postgres sslmode=verify-full sslrootcert={}",
            pki.ca().display()
        ),
        "SELECT 1",
    )
    .expect("psql over verified TLS");

    tls_scenarios(&PgCheck(&pg), &pki);
}

#[test]
fn mariadb_tls_flags_verify_the_database_and_present_the_client_certificate() {
    if !Engine::MariaDb.available("mariadb_tls_flags") {
        return;
    }
    let pki = Pki::new();
    let db = MariaDb::start(&pki);
    db.sql(&format!(
        "CREATE USER keelson_pw@'127.0.0.1' IDENTIFIED BY '{PASSWORD}' REQUIRE SSL; \
         CREATE USER keelson@'127.0.0.1' REQUIRE X509; \
         CREATE USER keelson_wrongca@'127.0.0.1'; \
         CREATE USER probe@'127.0.0.1'; \
         GRANT ALL ON *.* TO keelson_pw@'127.0.0.1', keelson@'127.0.0.1', keelson_wrongca@'127.0.0.1'"
    ))
    .expect("create the users");
    // The instance itself: plaintext refused (require_secure_transport), TLS accepted.
    db.sql_tcp(&["-uprobe", "--skip-ssl"], "SELECT 1")
        .expect_err("the private MariaDB accepted a plaintext connection");
    // ... and the refused plaintext attempt is on record, which is what
    // `assert_never_connected` looks for.
    let connects = db.connect_log();
    assert!(
        connects
            .iter()
            .any(|l| l.contains("probe@127.0.0.1") && l.contains("using TCP/IP")),
        "the general log does not show the refused plaintext login:\n{}",
        connects.join("\n")
    );
    let ca = format!("--ssl-ca={}", pki.ca().display());
    db.sql_tcp(&["-uprobe", &ca, "--ssl-verify-server-cert"], "SELECT 1")
        .expect("mariadb over verified TLS");

    tls_scenarios(&MariaDbCheck(&db), &pki);
}

/// pg_hba.conf of the plaintext-only PostgreSQL: everyone in, without TLS (it has none).
const PLAIN_HBA: &str = "\
# TYPE  DATABASE  USER      ADDRESS       METHOD
local   all       postgres                trust
host    all       all       127.0.0.1/32  trust
";

#[test]
fn datastore_tls_require_refuses_a_database_without_tls_where_prefer_falls_back_to_plaintext() {
    if !Engine::Postgres.available("datastore_tls_require") {
        return;
    }
    // What a database without TLS answers is also what an attacker in the path can answer.
    let pg = Postgres::start_plaintext(PLAIN_HBA);
    pg.psql(
        "CREATE ROLE keelson_require LOGIN CREATEDB; CREATE ROLE keelson_prefer LOGIN CREATEDB",
    )
    .expect("create the roles");
    let endpoint = |user: &str| format!("postgres://{user}@127.0.0.1:{}/{user}", pg.port());

    // require: no connection at all, and /readyz says it is TLS that is missing.
    let mut required = Unready::start(
        "tls-require",
        &endpoint("keelson_require"),
        &["--datastore-tls=require".into()],
    );
    // prefer (the default without a CA file): in, in plaintext.
    let s =
        Server::start(named("tls-prefer").arg("--datastore-endpoint", &endpoint("keelson_prefer")));
    assert!(
        s.log().contains("/keelson_prefer?sslmode=prefer"),
        "the mode in force is not logged:\n{}",
        s.log()
    );
    let ssl = pg
        .psql(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
             WHERE a.datname = 'keelson_prefer'",
        )
        .expect("query pg_stat_ssl");
    assert!(
        !ssl.is_empty() && ssl.lines().all(|l| l == "f"),
        "prefer should have fallen back to plaintext (ssl per connection: {ssl:?})"
    );

    let why = "server does not support TLS";
    required.wait_for_log(why);
    required.assert_waiting_for_the_datastore(why);
    assert!(
        required.log().contains("sslmode=require"),
        "{}",
        required.log()
    );
    PgCheck(&pg).assert_never_connected("keelson_require");
}

// === the scenarios, shared by both databases ===

/// What the scenarios need from the database under test.
trait Database {
    /// The endpoint as an operator writes it.
    fn endpoint(&self, user: &str, password: Option<&str>, database: &str) -> String;
    /// Asserts that the database has connections open to `database` and that every one is
    /// TLS; with `client_cert`, that each logged in by the client certificate.
    fn assert_all_tls(&self, database: &str, client_cert: bool);
    /// What the database answers a login that needs a client certificate and has none.
    fn missing_client_cert_error(&self) -> String;
    /// Asserts that `user` never got a connection in and never tried one in plaintext.
    fn assert_never_connected(&self, user: &str);
}

fn tls_scenarios(db: &dyn Database, pki: &Pki) {
    let started = Instant::now();
    let (ca, wrong_ca) = (pki.ca(), pki.wrong_ca());
    let (cert, key) = (pki.client_cert(), pki.client_key());
    // The servers that must not get ready go first, so their retries overlap the rest.
    let mut no_cert = Unready::start(
        "no-client-cert",
        &db.endpoint("keelson", None, "keelson_no_client_cert"),
        &[flag("--datastore-cafile", &ca)],
    );
    let mut untrusted = Unready::start(
        "wrong-ca",
        &db.endpoint("keelson_wrongca", None, "keelson_wrong_ca"),
        &[
            flag("--datastore-cafile", &wrong_ca),
            flag("--datastore-certfile", &cert),
            flag("--datastore-keyfile", &key),
        ],
    );

    // The CA and a password: the database is verified (its certificate names 127.0.0.1).
    let s = Server::start(
        named("ca-password")
            .arg(
                "--datastore-endpoint",
                &db.endpoint("keelson_pw", Some(PASSWORD), "keelson_ca_password"),
            )
            .arg("--datastore-cafile", &ca.display().to_string()),
    );
    assert_node_ready(&s);
    db.assert_all_tls("keelson_ca_password", false);
    assert!(
        !s.log().contains(PASSWORD),
        "the server log shows the datastore password:\n{}",
        s.log()
    );
    drop(s);

    // The CA and a client certificate, which is how the database knows the user.
    let s = Server::start(
        named("ca-client-cert")
            .arg(
                "--datastore-endpoint",
                &db.endpoint("keelson", None, "keelson_ca_client_cert"),
            )
            .arg("--datastore-cafile", &ca.display().to_string())
            .arg("--datastore-certfile", &cert.display().to_string())
            .arg("--datastore-keyfile", &key.display().to_string()),
    );
    assert_node_ready(&s);
    db.assert_all_tls("keelson_ca_client_cert", true);
    drop(s);

    // A client certificate without a CA: encrypted, the database's certificate unchecked
    // (its CA is in no trust store).
    let s = Server::start(
        named("client-cert-no-ca")
            .arg(
                "--datastore-endpoint",
                &db.endpoint("keelson", None, "keelson_client_cert_no_ca"),
            )
            .arg("--datastore-certfile", &cert.display().to_string())
            .arg("--datastore-keyfile", &key.display().to_string()),
    );
    assert_node_ready(&s);
    db.assert_all_tls("keelson_client_cert_no_ca", true);
    drop(s);

    // A client certificate required and none given: the database's refusal in the log, and
    // only its class on the anonymous `/readyz` (MariaDB's text names the user and the client
    // address).
    let refusal = db.missing_client_cert_error();
    no_cert.wait_for_log(&refusal);
    no_cert.assert_waiting_for_the_datastore("the database refused the login (SQLSTATE 28000");
    no_cert.assert_readyz_lacks(&refusal);
    no_cert.assert_readyz_lacks("keelson");

    // A CA that did not sign the database's certificate: refused before any login, and no
    // retry without TLS.
    untrusted.wait_for_log("invalid peer certificate: UnknownIssuer");
    untrusted.assert_waiting_for_the_datastore("invalid peer certificate: UnknownIssuer");
    db.assert_never_connected("keelson_wrongca");

    eprintln!("TLS scenarios took {:?}", started.elapsed());
}

fn named(node: &str) -> Options {
    let mut o = Options::default();
    o.node_name = node.to_owned();
    o
}

/// Asserts that `kubectl get nodes` lists the server's node as Ready (within a few seconds).
fn assert_node_ready(s: &Server) {
    let deadline = Instant::now() + NODE_READY_TIMEOUT;
    loop {
        let out = s.kubectl_ok(&["get", "nodes", "--no-headers"]);
        let status = out.lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(s.node_name())).then(|| cols.next().map(str::to_owned))
        });
        if status == Some(Some("Ready".into())) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} is not Ready after {NODE_READY_TIMEOUT:?}; kubectl get nodes:\n{out}",
            s.node_name()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

// === PostgreSQL ===

struct PgCheck<'a>(&'a Postgres);

impl Database for PgCheck<'_> {
    fn endpoint(&self, user: &str, password: Option<&str>, database: &str) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_owned(),
        };
        format!("postgres://{auth}@127.0.0.1:{}/{database}", self.0.port())
    }

    fn assert_all_tls(&self, database: &str, client_cert: bool) {
        let rows = self
            .0
            .psql(&format!(
                "SELECT a.usename, s.ssl, coalesce(s.client_dn, '') \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
                 WHERE a.datname = '{database}'"
            ))
            .expect("query pg_stat_ssl");
        assert!(
            !rows.is_empty(),
            "PostgreSQL shows no connection to {database}"
        );
        for row in rows.lines() {
            let cols: Vec<&str> = row.split('|').collect();
            assert!(
                matches!(cols.as_slice(), [_, "t", _]),
                "a keelson connection to {database} is not TLS (user|ssl|client_dn: {row}); all:\n{rows}"
            );
            if client_cert {
                assert!(
                    cols.get(2)
                        .is_some_and(|dn| dn.contains(&format!("CN={CLIENT_CN}"))),
                    "a keelson connection to {database} shows no client certificate (user|ssl|client_dn: {row})"
                );
            }
        }
    }

    fn missing_client_cert_error(&self) -> String {
        "connection requires a valid client certificate".into()
    }

    fn assert_never_connected(&self, user: &str) {
        let log = self.0.log();
        assert!(
            !log.contains(&format!("connection authorized: user={user} ")),
            "PostgreSQL let {user} in:\n{log}"
        );
        let open = self
            .0
            .psql(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'"
            ))
            .expect("query pg_stat_activity");
        assert_eq!(open, "0", "PostgreSQL has connections from {user}");
    }
}

// === MariaDB ===

struct MariaDbCheck<'a>(&'a MariaDb);

impl Database for MariaDbCheck<'_> {
    fn endpoint(&self, user: &str, password: Option<&str>, database: &str) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_owned(),
        };
        // K3s's Go DSN form.
        format!("mysql://{auth}@tcp(127.0.0.1:{})/{database}", self.0.port())
    }

    fn assert_all_tls(&self, database: &str, client_cert: bool) {
        let rows = self
            .0
            .sql(&format!(
                "SELECT t.PROCESSLIST_USER, s.VARIABLE_VALUE \
                 FROM performance_schema.threads t LEFT JOIN performance_schema.status_by_thread s \
                 ON s.THREAD_ID = t.THREAD_ID AND s.VARIABLE_NAME = 'Ssl_cipher' \
                 WHERE t.PROCESSLIST_DB = '{database}'"
            ))
            .expect("query performance_schema");
        assert!(
            !rows.is_empty(),
            "MariaDB shows no connection to {database}"
        );
        for row in rows.lines() {
            let cols: Vec<&str> = row.split('\t').collect();
            assert!(
                matches!(cols.as_slice(), [_, cipher] if !cipher.is_empty() && *cipher != "NULL"),
                "a keelson connection to {database} is not TLS (user, Ssl_cipher: {row}); all:\n{rows}"
            );
            if client_cert {
                // `keelson` is `REQUIRE X509`: in only with a client certificate the CA signed.
                assert_eq!(
                    cols.first(),
                    Some(&"keelson"),
                    "unexpected user on {database}: {row}"
                );
            }
        }
    }

    fn missing_client_cert_error(&self) -> String {
        "Access denied for user 'keelson'@'127.0.0.1'".into()
    }

    fn assert_never_connected(&self, user: &str) {
        // With require_secure_transport a plaintext login is refused before any account
        // counter moves; the general log has every attempt, refused or not, with its transport.
        let attempts: Vec<String> = self
            .0
            .connect_log()
            .into_iter()
            .filter(|l| l.contains(&format!("{user}@")) || l.contains(&format!("'{user}'")))
            .collect();
        assert!(
            attempts.is_empty(),
            "{user} got as far as a login on MariaDB (a TLS handshake that failed leaves no \
             line; `using TCP/IP` is plaintext):\n{}",
            attempts.join("\n")
        );
        let connections = self
            .0
            .sql(&format!(
                "SELECT COALESCE(SUM(TOTAL_CONNECTIONS), 0) FROM performance_schema.accounts \
                 WHERE USER = '{user}'"
            ))
            .expect("query performance_schema.accounts");
        assert_eq!(connections, "0", "MariaDB let {user} in");
    }
}

// === a server that must not get ready ===

/// A `keelson server` started without waiting for it to get ready; killed, and its
/// directory removed, when dropped. Its log is printed with a failure.
struct Unready {
    /// Data dir, kubeconfig, config file and log.
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    what: &'static str,
}

impl Unready {
    fn start(what: &'static str, endpoint: &str, flags: &[String]) -> Unready {
        let dir = tempfile::Builder::new()
            .prefix("keelson-test-")
            .tempdir()
            .expect("create a temporary directory");
        let d = dir.path();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        fs::write(d.join("config.yaml"), "").expect("write the config file");
        let log = fs::File::create(d.join("server.log")).expect("create the log");
        let child = common::keelson_command()
            .arg("server")
            .arg(flag("--config", &d.join("config.yaml")))
            .arg(flag("--data-dir", &d.join("data")))
            .arg(flag("--write-kubeconfig", &d.join("kubeconfig.yaml")))
            .arg(format!("--https-listen-port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--node-name={what}"))
            .arg(format!("--datastore-endpoint={endpoint}"))
            .args(flags)
            .env("HOME", d.join("home"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn keelson server");
        Unready {
            dir,
            port,
            child: Some(child),
            what,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits until the server logs that it cannot open the datastore because of `why`.
    fn wait_for_log(&mut self, why: &str) -> String {
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            let log = self.log();
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("cannot open the datastore") && l.contains(why))
            {
                return line.to_owned();
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "the {} server did not log \"cannot open the datastore … {why}\" within {LOG_TIMEOUT:?}:\n{log}",
                self.what
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts that the server still runs, retrying, and that `/readyz` says it is not ready
    /// for want of the datastore, and why.
    fn assert_waiting_for_the_datastore(&mut self, why: &str) {
        self.assert_running();
        let r: Reply = common::curl(&[
            "--insecure".into(),
            format!("https://127.0.0.1:{}/readyz", self.port),
        ]);
        assert_eq!(
            r.status,
            Some(503),
            "/readyz of the {} server: {r:?}",
            self.what
        );
        assert!(
            r.body.contains("datastore") && r.body.contains(why),
            "/readyz of the {} server does not name the datastore and \"{why}\": {}",
            self.what,
            r.body
        );
    }

    /// Asserts that the anonymous `/readyz` does not show `text`.
    fn assert_readyz_lacks(&mut self, text: &str) {
        let r: Reply = common::curl(&[
            "--insecure".into(),
            format!("https://127.0.0.1:{}/readyz", self.port),
        ]);
        assert!(
            !r.body.contains(text),
            "/readyz of the {} server shows {text:?} to anonymous callers: {}",
            self.what,
            r.body
        );
    }

    fn assert_running(&mut self) {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "the {} server exited ({exited:?}) instead of retrying:\n{}",
            self.what,
            self.log()
        );
    }
}

impl Drop for Unready {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- {} server log ---\n{}\n--- end ---",
                self.what,
                self.log()
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn flag(name: &str, path: &Path) -> String {
    format!("{name}={}", path.display())
}
