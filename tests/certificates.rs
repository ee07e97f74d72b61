//! Certificates for years (issue 17 item 4), tried with a 30-second validity: the API's serving
//! certificate is renewed in place (new handshakes get the new one, an open watch goes on, the
//! server never restarts) and the admin kubeconfig is rewritten before its certificate
//! expires, so the cluster keeps serving past the first certificates' expiry.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Options, Server, wait_until};

/// The serving certificate a new TLS handshake gets: (serial, notAfter) as openssl prints them.
fn served_certificate(s: &Server) -> (String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{} </dev/null 2>/dev/null | openssl x509 -noout -serial -enddate",
            s.port()
        ))
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in openssl's output: {text:?}"))
            .to_owned()
    };
    (field("serial="), field("notAfter="))
}

#[test]
fn short_lived_certificates_are_renewed_in_place_and_the_cluster_keeps_serving() {
    let validity = Duration::from_secs(30);
    let s = Server::start(Options::default().arg("--leaf-certificate-validity", "30s"));
    let started = Instant::now();
    let first = served_certificate(&s);
    // The expiry of every certificate the server keeps is on /metrics, the serving one within
    // the validity from now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let metrics = s.curl(&[&format!("{}/metrics", s.url())]).body;
    let expiry = |which: &str| -> u64 {
        let prefix =
            format!("keelson_certificate_expiration_timestamp_seconds{{certificate=\"{which}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!("no expiry of the {which} certificate on /metrics:\n{metrics}")
            })
    };
    assert!(expiry("serving") <= now + validity.as_secs() + 1);
    assert!(expiry("admin") <= now + validity.as_secs() + 1);
    assert!(
        expiry("ca") > now + 300 * 24 * 3600,
        "the CA lives for years"
    );
    let first_kubeconfig = std::fs::read_to_string(s.kubeconfig()).unwrap();
    let stale = s.dir().join("stale-kubeconfig.yaml");
    std::fs::write(&stale, &first_kubeconfig).unwrap();
    let watch = s.watch(&["configmaps"]);

    // Renewed with a third of the life left: ~20 s after start.
    wait_until(
        "the serving certificate was renewed",
        Duration::from_secs(40),
        || s.log().contains("renewed the API serving certificate"),
    );
    let renewed = served_certificate(&s);
    assert_ne!(
        first.0, renewed.0,
        "a new handshake still gets the first certificate"
    );
    assert_ne!(first.1, renewed.1);
    wait_until(
        "the admin kubeconfig was rewritten",
        Duration::from_secs(10),
        || std::fs::read_to_string(s.kubeconfig()).unwrap() != first_kubeconfig,
    );

    // Past the first certificates' expiry: the stale kubeconfig is refused (the validity is
    // real), the current one works, and the watch opened before the renewal goes on.
    let past = validity + Duration::from_secs(5);
    if let Some(rest) = past.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let out = s.kubectl_with(&stale, &["get", "configmaps"]);
    assert!(
        !out.status.success(),
        "a client certificate past its expiry was accepted"
    );
    s.kubectl_ok(&["create", "configmap", "after-expiry"]);
    watch.next(
        |o| o["metadata"]["name"] == "after-expiry",
        "the ConfigMap created after the first certificates expired",
    );
    assert_eq!(
        s.log().matches("starting keelson server").count(),
        1,
        "the server restarted"
    );
    watch.stop();
}
