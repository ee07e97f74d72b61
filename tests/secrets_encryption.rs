//! `keelson secrets-encrypt status` and `rotate-keys` against real servers: on SQLite (rows
//! read straight from the file), and with two servers on the machine's PostgreSQL and
//! MariaDB while a client keeps writing Secrets through the other server.

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::db::{Db, TestDb};
use common::{Options, Server, wait_until};

const SECRETS_PREFIX: &str = "/registry/secrets/";
/// Secrets stored before the rotation in the two-server test.
const OLD: usize = 300;

/// Runs `keelson secrets-encrypt <args>` against `s`, with the token from its data dir.
fn secrets_encrypt(s: &Server, args: &[&str]) -> Output {
    let mut argv: Vec<std::ffi::OsString> = vec!["secrets-encrypt".into()];
    argv.extend(args.iter().map(Into::into));
    argv.extend([
        "--data-dir".into(),
        s.data_dir().into_os_string(),
        "--server".into(),
        s.url().into(),
    ]);
    common::keelson(&argv, Duration::from_secs(120))
}

fn ok(s: &Server, args: &[&str]) -> String {
    let out = secrets_encrypt(s, args);
    assert!(
        out.status.success(),
        "keelson secrets-encrypt {args:?} failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every stored Secret's raw value, by path, straight from the SQLite file.
fn sqlite_rows(s: &Server) -> BTreeMap<String, Vec<u8>> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             [print(p, h) for p, h in c.execute(\"SELECT path, hex(value) FROM keelson_objects WHERE path LIKE ?\", (sys.argv[2] + '%',))]",
        ])
        .arg(s.data_dir().join("server/db/state.db"))
        .arg(SECRETS_PREFIX)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, h)| (p.to_owned(), hex::decode(h).expect("hex from sqlite")))
        .collect()
}

/// `data` of every Secret in `default`, by name, as kubectl shows it through `s`.
fn secret_data(s: &Server) -> BTreeMap<String, serde_json::Value> {
    let list = s.kubectl_json(&["get", "secrets", "-n", "default", "-o", "json"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                i["data"].clone(),
            )
        })
        .collect()
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"))
}

#[test]
fn rotate_keys_leaves_every_secret_readable_on_sqlite() {
    let s = Server::start(Options::default().flag("--secrets-encryption"));
    let manifest: String = (0..6)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s{i}\nstringData:\n  password: plaintext-{i}-hunter2\n---\n"
            )
        })
        .collect();
    let path = s.dir().join("secrets.yaml");
    std::fs::write(&path, manifest).unwrap();
    s.kubectl_ok(&["apply", "-f", &path.display().to_string()]);
    let before = secret_data(&s);
    assert_eq!(before.len(), 6, "{before:?}");

    let status = ok(&s, &["status"]);
    assert_eq!(
        line(&status, "Encryption Status:"),
        "Encryption Status: Enabled"
    );
    assert_eq!(line(&status, "Active Key:"), "Active Key: key1");
    assert_eq!(
        line(&status, "Current Rotation Stage:"),
        "Current Rotation Stage: start"
    );
    let stored = sqlite_rows(&s).len();
    assert!(status.contains(&format!("key1\t{stored}\n")), "{status}");

    for (round, key) in [(1, "key2"), (2, "key3")] {
        let out = ok(&s, &["rotate-keys"]);
        assert!(
            out.contains(&format!("active key {key}"))
                && out.contains(&format!("{stored} Secrets re-encrypted")),
            "round {round}: {out}"
        );
        // Every Secret reads back the same through kubectl.
        assert_eq!(secret_data(&s), before, "round {round}");
        // Straight from the file: every row names the new key and holds no plaintext.
        let rows = sqlite_rows(&s);
        assert_eq!(rows.len(), stored);
        for (p, v) in &rows {
            assert!(
                v.starts_with(format!("k8s:enc:aesgcm:v1:{key}:").as_bytes()),
                "round {round}: {p} is stored as {:?}",
                String::from_utf8_lossy(&v[..v.len().min(40)])
            );
            for plain in ["hunter2", "password", "cGxhaW50ZXh0"] {
                assert!(
                    !v.windows(plain.len()).any(|w| w == plain.as_bytes()),
                    "round {round}: {p} holds {plain:?}"
                );
            }
        }
        let status = ok(&s, &["status"]);
        assert_eq!(line(&status, "Active Key:"), format!("Active Key: {key}"));
        assert_eq!(
            line(&status, "Current Rotation Stage:"),
            "Current Rotation Stage: reencrypt_finished"
        );
        assert!(status.contains(&format!("{key}\t{stored}\n")), "{status}");
        assert_eq!(
            line(&status, "Server Encryption Hashes:"),
            "Server Encryption Hashes: All hashes match"
        );
    }
    // key1 is no longer used by any Secret, so the second rotation dropped it; key2, the
    // previous active key, stays.
    let status = ok(&s, &["status"]);
    assert_eq!(line(&status, "Keys:"), "Keys: 2 (key2, key3)");

    // A restart opens the rotated keys row with the token.
    s.kubectl_ok(&["get", "secret", "s0"]);
    let mut s = s;
    s.stop();
    s.restart();
    assert_eq!(secret_data(&s), before, "after a restart");
}

#[test]
fn secrets_encrypt_says_what_is_wrong() {
    let s = Server::start(Options::default().arg("--agent-token", "agent-secret-0123456789"));
    // Encryption off: status says so; rotate-keys refuses.
    let status = ok(&s, &["status"]);
    assert_eq!(
        line(&status, "Encryption Status:"),
        "Encryption Status: Disabled"
    );
    let out = secrets_encrypt(&s, &["rotate-keys"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rotate-keys without encryption succeeded"
    );
    assert!(
        stderr.contains("secrets encryption is off on this cluster")
            && stderr.contains("--secrets-encryption"),
        "{stderr}"
    );

    // The agent token (with the right CA hash) is refused: it may join, not manage keys.
    let server_token = s.token();
    let hash = server_token
        .strip_prefix("K10")
        .and_then(|t| t.split_once("::"))
        .map(|(h, _)| h.to_owned())
        .expect("a K10 token");
    let mut argv: Vec<std::ffi::OsString> = vec!["secrets-encrypt".into(), "status".into()];
    argv.extend(["--server".into(), s.url().into(), "--token".into()]);
    argv.push(format!("K10{hash}::node:agent-secret-0123456789").into());
    let out = common::keelson(&argv, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("refused the token"),
        "{stderr}"
    );

    // Nobody there: the error names the address tried.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{port}");
    let mut argv: Vec<std::ffi::OsString> = vec!["secrets-encrypt".into(), "status".into()];
    argv.extend([
        "--server".into(),
        url.clone().into(),
        "--token".into(),
        server_token.into(),
    ]);
    let out = common::keelson(&argv, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!("cannot reach the keelson server at {url}")),
        "{stderr}"
    );
}

/// Rotates through server A while a client keeps creating and updating Secrets through
/// server B; afterwards every Secret reads back, through both servers, with its last
/// acknowledged value, and every stored Secret is under the new key.
fn rotation_under_writes_on_two_servers(db: Db) {
    let Some(db) = TestDb::new(db, "rotate") else {
        return;
    };
    let named = |n: &str| {
        let mut o = Options::default().flag("--secrets-encryption");
        o.node_name = n.into();
        o.arg("--datastore-endpoint", &db.endpoint())
    };
    let a = Server::start(named("server-a"));
    let b =
        Server::start(named("server-b").arg("--token-file", &a.token_path().display().to_string()));
    // Many Secrets, so a pass takes a while and writes land in the middle of it; the hot
    // one sorts last, so it is rewritten at the end of the pass, after its list was read.
    let manifest: String = (0..OLD)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: old-{i}\nstringData:\n  v: old-{i}\n---\n"
            )
        })
        .collect();
    let path = b.dir().join("old.yaml");
    std::fs::write(&path, manifest).unwrap();
    b.kubectl_ok(&["apply", "-f", &path.display().to_string()]);
    wait_until(
        "both servers report their key hash",
        Duration::from_secs(30),
        || ok(&a, &["status"]).matches("(active key key1)").count() == 2,
    );

    // The writer: new Secrets, and updates of one hot Secret, through B; it records what
    // B acknowledged. Each update adds a data key, so an update lost to a stale rewrite stays
    // lost whatever is written after it.
    b.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "zz-hot",
        "--from-literal=k0=0",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    // (Secret, data key) → value.
    let acked: Arc<Mutex<BTreeMap<(String, String), String>>> = Arc::default();
    acked
        .lock()
        .unwrap()
        .insert(("zz-hot".into(), "k0".into()), "0".into());
    // Two writers through B: one creates Secrets, one keeps adding keys to the hot one.
    let writer = |creates: bool| {
        let (stop, acked) = (stop.clone(), acked.clone());
        let kubeconfig = b.kubeconfig();
        let server = b.url();
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let kubectl = |args: &[&str]| {
                    std::process::Command::new("kubectl")
                        .arg(format!("--kubeconfig={}", kubeconfig.display()))
                        .arg(format!("--server={server}"))
                        .args(args)
                        .output()
                        .expect("run kubectl")
                        .status
                        .success()
                };
                if creates {
                    let name = format!("new-{n}");
                    let value = format!("new-{n}");
                    let literal = format!("--from-literal=v={value}");
                    if kubectl(&["create", "secret", "generic", &name, &literal]) {
                        acked.lock().unwrap().insert((name, "v".into()), value);
                    }
                } else {
                    let patch = format!(r#"{{"stringData":{{"k{n}":"{n}"}}}}"#);
                    if kubectl(&["patch", "secret", "zz-hot", "--type=merge", "-p", &patch]) {
                        let key = ("zz-hot".into(), format!("k{n}"));
                        acked.lock().unwrap().insert(key, n.to_string());
                    }
                }
            }
            n
        })
    };
    let writers = [writer(true), writer(false)];
    thread::sleep(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let out = ok(&a, &["rotate-keys"]);
    let took = started.elapsed();
    assert!(out.contains("active key key2 (was key1)"), "{out}");
    assert!(!out.contains("warning"), "{out}");
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let rounds: Vec<usize> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer thread"))
        .collect();
    eprintln!(
        "{}: rotation in {took:?} under {rounds:?} creates/updates through B: {out}",
        db.db
    );

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 3,
        "the writer got too few writes through: {acked:?}"
    );
    for s in [&a, &b] {
        let data = secret_data(s);
        for i in 0..OLD {
            let want = base64(&format!("old-{i}"));
            assert_eq!(
                data[&format!("old-{i}")]["v"],
                want,
                "through {}",
                s.node_name()
            );
        }
        for ((name, key), value) in &acked {
            assert_eq!(
                data.get(name).map(|d| d[key].clone()),
                Some(serde_json::Value::from(base64(value))),
                "{name}'s {key} through {}: an acknowledged write was lost",
                s.node_name()
            );
        }
    }
    // B learned the new key: nothing it wrote after the rotation is under key1.
    let status = ok(&b, &["status"]);
    assert_eq!(line(&status, "Active Key:"), "Active Key: key2");
    assert_eq!(
        line(&status, "Server Encryption Hashes:"),
        "Server Encryption Hashes: All hashes match"
    );
    assert!(!status.contains("\nkey1\t"), "{status}");
    assert_eq!(
        line(&status, "Current Rotation Stage:"),
        "Current Rotation Stage: reencrypt_finished"
    );
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn rotation_under_writes_on_two_servers_on_postgres() {
    rotation_under_writes_on_two_servers(Db::Postgres);
}

#[test]
fn rotation_under_writes_on_two_servers_on_mariadb() {
    rotation_under_writes_on_two_servers(Db::MariaDb);
}
