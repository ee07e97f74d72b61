//! A server's life across starts and stops: what survives a restart, how watches resume and
//! expire, how it stops, and who it lets in.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Options, Server};
use serde_json::Value;

/// SIGTERM must end the process within this, watches or not.
const STOP_BOUND: Duration = Duration::from_secs(5);

#[test]
fn restart_keeps_token_ca_and_node_and_the_old_kubeconfig_still_works() {
    let mut s = Server::start(Options::default());
    let token = s.token();
    let ca = cacerts(&s);
    let uid = s.node()["metadata"]["uid"].clone();
    let old_kubeconfig = s.dir().join("kubeconfig-before-restart.yaml");
    fs::copy(s.kubeconfig(), &old_kubeconfig).expect("keep the first kubeconfig");

    assert!(s.stop().status.success());
    s.restart();

    assert_eq!(s.token(), token, "the token file changed");
    assert_eq!(cacerts(&s), ca, "the CA changed");
    assert_eq!(s.node()["metadata"]["uid"], uid, "the node was re-created");
    let out = s.kubectl_with(
        &old_kubeconfig,
        &["get", "node", s.node_name(), "-o", "name"],
    );
    assert!(
        out.status.success(),
        "the kubeconfig from before the restart was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn watch_from_an_old_resource_version_delivers_the_changes_in_between() {
    let s = Server::start(Options::default());
    let from = resource_version(&s.node());
    for step in ["1", "2", "3"] {
        s.kubectl_ok(&[
            "label",
            "node",
            s.node_name(),
            &format!("step={step}"),
            "--overwrite",
        ]);
    }
    let events = watch_from(&s, &from);
    assert_eq!(steps(&events), ["1", "2", "3"], "events: {events:#?}");
}

#[test]
fn watch_from_before_a_restart_delivers_the_changes_after_it() {
    let mut s = Server::start(Options::default());
    let from = resource_version(&s.node());
    for step in ["1", "2", "3"] {
        s.kubectl_ok(&[
            "label",
            "node",
            s.node_name(),
            &format!("step={step}"),
            "--overwrite",
        ]);
    }
    assert!(s.stop().status.success());
    s.restart();
    let events = watch_from(&s, &from);
    assert_eq!(steps(&events), ["1", "2", "3"], "events: {events:#?}");
}

#[test]
fn watch_from_compacted_history_gets_410_gone() {
    let s = Server::start(Options::default().arg("--compact-interval", "1s"));
    let deadline = Instant::now() + Duration::from_secs(30);
    for tick in 0.. {
        s.kubectl_ok(&[
            "label",
            "node",
            s.node_name(),
            &format!("tick={tick}"),
            "--overwrite",
        ]);
        let path = "/api/v1/nodes?watch=true&resourceVersion=1&timeoutSeconds=1";
        let events = common::watch_events(&s.kubectl_ok(&["get", "--raw", path]));
        if let Some(error) = events.iter().find(|e| e["type"] == "ERROR") {
            let status = &error["object"];
            assert_eq!(status["kind"], "Status", "{error:#}");
            assert_eq!(status["code"], 410, "{error:#}");
            assert_eq!(status["reason"], "Expired", "{error:#}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {tick} changes over 30 s, a watch from resourceVersion 1 still replays history"
        );
    }
}

#[test]
fn sigterm_exits_zero_within_five_seconds() {
    let mut s = Server::start(Options::default());
    let stopped = s.stop();
    assert_eq!(stopped.status.code(), Some(0), "{stopped:?}");
    assert!(stopped.elapsed < STOP_BOUND, "took {:?}", stopped.elapsed);
}

#[test]
fn sigterm_exits_zero_within_five_seconds_while_kubectl_watches() {
    let mut s = Server::start(Options::default());
    let _watch = s.watch(&["nodes"]);
    let stopped = s.stop();
    assert_eq!(stopped.status.code(), Some(0), "{stopped:?}");
    assert!(stopped.elapsed < STOP_BOUND, "took {:?}", stopped.elapsed);
}

#[test]
fn client_without_a_certificate_gets_401() {
    let s = Server::start(Options::default());
    let reply = s.curl_anonymous(&[&format!("{}/api/v1/nodes", s.url())]);
    assert_eq!(reply.status, Some(401), "{reply:?}");
    let status = reply.json();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 401);
    assert_eq!(status["reason"], "Unauthorized");
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let s = Server::start(Options::default());
    let url = format!("{}/api/v1/nodes", s.url());
    // The same request with the cluster's own admin certificate works.
    assert_eq!(s.curl(&[&url]).status, Some(200));

    let (ca, _, _) = s.admin_credentials();
    let (cert, key) = foreign_admin_certificate(s.dir());
    let reply = common::curl(&[
        "--cacert".into(),
        ca.display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
        url,
    ]);
    assert_eq!(
        reply.status, None,
        "a foreign certificate got an HTTP answer: {reply:?}"
    );
    assert!(!reply.curl.status.success());
}

#[test]
fn a_different_token_on_an_existing_data_dir_refuses_to_start_and_changes_nothing() {
    let mut s = Server::start(Options::default());
    let token = s.token();
    let kubeconfig = fs::read(s.kubeconfig()).expect("read the kubeconfig");
    assert!(s.stop().status.success());

    let refused = s
        .try_restart(&["--token=not-this-clusters-token"])
        .expect_err("the server started with a different token");
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused.log.contains("token does not open the cluster data"),
        "the refusal does not say why:\n{}",
        refused.log
    );
    assert_eq!(s.token(), token, "the refused start rewrote the token");
    assert_eq!(
        fs::read(s.kubeconfig()).expect("read the kubeconfig"),
        kubeconfig,
        "the refused start rewrote the kubeconfig"
    );

    s.restart();
    s.kubectl_ok(&["get", "node", s.node_name()]);
}

#[test]
fn token_file_and_kubeconfig_are_private_and_the_token_is_in_secure_form() {
    let s = Server::start(Options::default());
    assert_eq!(mode(&s.token_path()), 0o600, "token file mode");
    assert_eq!(mode(&s.kubeconfig()), 0o600, "kubeconfig mode");
    let token = s.token();
    let (hash, secret) = secure_token_parts(&token);
    assert_eq!(
        hash,
        sha256_hex(&cacerts(&s)),
        "the token's CA hash is not the CA's: {token}"
    );
    assert!(!secret.is_empty(), "{token}");
}

#[test]
fn short_token_is_written_in_secure_form_with_the_same_secret() {
    let s = Server::start(Options::default().arg("--token", "mysecret"));
    let token = s.token();
    let (hash, secret) = secure_token_parts(&token);
    assert_eq!(secret, "mysecret", "{token}");
    assert_eq!(hash, sha256_hex(&cacerts(&s)), "{token}");
}

#[test]
fn version_flag_prints_the_version() {
    let out = common::keelson(&["--version".into()], common::COMMAND_TIMEOUT);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("keelson {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
}

/// The CA bundle, as served anonymously at `/cacerts`.
fn cacerts(s: &Server) -> String {
    let reply = s.curl_anonymous(&[&format!("{}/cacerts", s.url())]);
    assert_eq!(reply.status, Some(200), "{reply:?}");
    assert!(reply.body.contains("BEGIN CERTIFICATE"), "{}", reply.body);
    reply.body
}

fn resource_version(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("metadata.resourceVersion")
        .to_owned()
}

/// The node events after revision `from`, through a watch that ends after two seconds.
fn watch_from(s: &Server, from: &str) -> Vec<Value> {
    let path = format!("/api/v1/nodes?watch=true&resourceVersion={from}&timeoutSeconds=2");
    common::watch_events(&s.kubectl_ok(&["get", "--raw", &path]))
}

/// The `step` label through a watch's events, each value once (heartbeats repeat it). Every
/// event must be a MODIFIED event of the node.
fn steps(events: &[Value]) -> Vec<String> {
    let mut steps: Vec<String> = Vec::new();
    for e in events {
        assert_eq!(e["type"], "MODIFIED", "unexpected event {e:#}");
        if let Some(step) = e["object"]["metadata"]["labels"]["step"].as_str()
            && steps.last().map(String::as_str) != Some(step)
        {
            steps.push(step.to_owned());
        }
    }
    steps
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Splits `K10<64 hex>::server:<secret>` into the hash and the secret.
fn secure_token_parts(token: &str) -> (&str, &str) {
    let parse = || {
        let rest = token.strip_prefix("K10")?;
        let (hash, creds) = rest.split_once("::")?;
        let secret = creds.strip_prefix("server:")?;
        (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some((hash, secret))
    };
    parse().unwrap_or_else(|| panic!("{token:?} is not K10<64 hex>::server:<secret>"))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

/// A client certificate for `system:admin` in `system:masters`, issued by a CA that is not
/// the cluster's: made with openssl, or taken from a second keelson cluster without it.
fn foreign_admin_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join("foreign");
    fs::create_dir_all(&out).expect("create a directory");
    let (cert, key) = (out.join("client.pem"), out.join("client-key.pem"));
    let has_openssl = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openssl {
        let other = Server::start(Options::default());
        let (_, other_cert, other_key) = other.admin_credentials();
        fs::copy(other_cert, &cert).expect("copy the certificate");
        fs::copy(other_key, &key).expect("copy the key");
        return (cert, key);
    }
    let openssl = |args: &[&str]| {
        let result = common::run(
            Command::new("openssl").args(args).current_dir(&out),
            common::COMMAND_TIMEOUT,
        );
        assert!(
            result.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    };
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &new_key,
            &["-keyout", "ca-key.pem", "-out", "ca.pem"],
            &["-subj", "/CN=another-cluster-ca", "-days", "1"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &new_key,
            &["-keyout", "client-key.pem", "-out", "client.csr"],
            &["-subj", "/O=system:masters/CN=system:admin"],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "client.pem",
        "-days",
        "1",
    ]);
    (cert, key)
}
