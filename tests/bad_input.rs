//! Bad input, from the command line, the config file or HTTP clients, gets a clear refusal
//! that names what was wrong, never a panic or a half-started server.

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{Options, Server};

/// A server that accepted its flags by mistake is killed (and the test fails) after this.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn each_bad_flag_value_exits_2_with_an_error_naming_the_flag() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("missing-token");
    let token_file = format!("--token-file={}", missing.display());
    let token_file_error = format!("--token-file {}: cannot read it", missing.display());
    let cases: [(&str, &str); 8] = [
        ("--node-taint=x", "--node-taint \"x\""),
        ("--node-label=novalue", "--node-label \"novalue\""),
        ("--bind-address=nowhere", "--bind-address \"nowhere\""),
        (
            "--write-kubeconfig-mode=999",
            "--write-kubeconfig-mode \"999\"",
        ),
        ("--datastore-endpoint=redis://x", "--datastore-endpoint"),
        (&token_file, &token_file_error),
        ("--token=K10zz::server:x", "--token is malformed"),
        ("--compact-interval=soon", "--compact-interval \"soon\""),
    ];
    let mut wrong = Vec::new();
    for (flag, expected) in cases {
        let case = tempfile::tempdir().expect("temporary directory");
        let stderr = refused(case.path(), &[flag], "");
        if !has_error_line(&stderr, expected) {
            wrong.push(format!(
                "{flag}: no `error:` line with {expected:?} in:\n{stderr}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn bad_service_cidrs_exit_2_naming_the_flag_and_what_is_wrong() {
    let cases = [
        ("10.43.0.0/16,10.44.0.0/16", "are both IPv4"),
        (
            "fd00:43::/64",
            "for 128-bit addresses, the mask must be >= 108",
        ),
        ("10.0.0.0/8", "for 32-bit addresses, the mask must be >= 12"),
        ("10.43.0.0/16,fd00::/112,fd01::/112", "3 ranges given"),
        ("10.43.0.0", "has no /PREFIX"),
        ("fd00:43::/127", "too small"),
    ];
    let mut wrong = Vec::new();
    for (value, expected) in cases {
        let case = tempfile::tempdir().expect("temporary directory");
        let stderr = refused(case.path(), &[&format!("--service-cidr={value}")], "");
        let named = format!("--service-cidr {value:?}");
        if !stderr
            .lines()
            .any(|l| l.starts_with("error:") && l.contains(&named) && l.contains(expected))
        {
            wrong.push(format!(
                "{value}: no `error:` line with {named} and {expected:?} in:\n{stderr}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn every_bad_flag_is_reported_not_just_the_first() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let stderr = refused(
        dir.path(),
        &[
            "--node-taint=x",
            "--node-label=novalue",
            "--bind-address=nowhere",
            "--write-kubeconfig-mode=999",
            "--datastore-endpoint=redis://x",
        ],
        "",
    );
    for flag in [
        "--node-taint",
        "--node-label",
        "--bind-address",
        "--write-kubeconfig-mode",
        "--datastore-endpoint",
    ] {
        assert!(
            has_error_line(&stderr, flag),
            "{flag} not reported:\n{stderr}"
        );
    }
}

#[test]
fn bad_datastore_endpoint_lists_the_accepted_forms_and_hides_the_password() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let stderr = refused(
        dir.path(),
        &["--datastore-endpoint=redis://u:hunter2@db/k"],
        "",
    );
    assert!(has_error_line(&stderr, "--datastore-endpoint"), "{stderr}");
    assert!(stderr.contains("accepted forms"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password was printed:\n{stderr}"
    );
}

#[test]
fn unknown_config_file_key_is_named() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let stderr = refused(dir.path(), &[], "node-nmae: typo\n");
    assert!(
        has_error_line(&stderr, "unknown key \"node-nmae\""),
        "{stderr}"
    );
    assert!(
        stderr.contains(&dir.path().join("config.yaml").display().to_string()),
        "the config file is not named:\n{stderr}"
    );
}

#[test]
fn unreadable_config_file_is_named() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("no-such-config.yaml");
    let stderr = refused_with_config(dir.path(), &missing, &[]);
    assert!(
        has_error_line(&stderr, &format!("--config {}", missing.display())),
        "{stderr}"
    );
}

#[test]
fn a_token_secret_under_8_characters_exits_2_naming_the_flag_unless_weak_tokens_are_allowed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let short_file = dir.path().join("short-token");
    fs::write(&short_file, "abc\n").expect("write the token file");
    let short_file_flag = format!("--token-file={}", short_file.display());
    let short_file_source = format!("--token-file {}:", short_file.display());
    // The length that counts is the secret's: a K10 token's hash and user do not make it longer.
    let k10_agent = format!("--agent-token=K10{}::node:1234567", "ab".repeat(32));
    let cases: [(&str, &str); 3] = [
        ("--token=abc", "--token:"),
        (&short_file_flag, &short_file_source),
        (&k10_agent, "--agent-token:"),
    ];
    let mut wrong = Vec::new();
    for (flag, source) in cases {
        let case = tempfile::tempdir().expect("temporary directory");
        let stderr = refused(case.path(), &[flag], "");
        let named = stderr.lines().any(|l| {
            l.starts_with("error:")
                && l.contains(source)
                && l.contains("at least 8")
                && l.contains("--allow-weak-token")
        });
        if !named {
            wrong.push(format!(
                "{flag}: no `error:` line naming {source:?}, the minimum and --allow-weak-token in:\n{stderr}"
            ));
        }
    }
    // The config file's form is checked the same way.
    let case = tempfile::tempdir().expect("temporary directory");
    let stderr = refused(case.path(), &[], "agent-token: abc\n");
    if !has_error_line(
        &stderr,
        "--agent-token: the token secret is 3 characters long",
    ) {
        wrong.push(format!(
            "config file agent-token: not refused as short:\n{stderr}"
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));

    // With --allow-weak-token (here from the config file) it starts, and says what it thinks.
    let s = Server::start(Options::default().config("token: abc\nallow-weak-token: true\n"));
    let log = s.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("--token: the token secret is only 3 characters long")),
        "no warning about the short token:\n{log}"
    );
}

#[test]
fn oversized_body_gets_413_as_a_status() {
    let s = Server::start(Options::default());
    let body = s.dir().join("big.json");
    let padding = "x".repeat(4 * 1024 * 1024);
    fs::write(
        &body,
        format!(r#"{{"metadata":{{"name":"big","annotations":{{"pad":"{padding}"}}}}}}"#),
    )
    .expect("write the body");
    let reply = s.curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("{}/api/v1/namespaces", s.url()),
    ]);
    assert_eq!(reply.status, Some(413), "{:?}", reply.curl);
    assert_status(&reply.json(), 413);
    // Refusing the body did not hurt the server.
    s.kubectl_ok(&["get", "nodes"]);
}

#[test]
fn malformed_json_gets_400_as_a_status() {
    let s = Server::start(Options::default());
    let reply = s.curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        r#"{"metadata": "#,
        &format!("{}/api/v1/namespaces", s.url()),
    ]);
    assert_eq!(reply.status, Some(400), "{reply:?}");
    assert_status(&reply.json(), 400);
}

#[test]
fn patch_with_an_unsupported_content_type_gets_415_as_a_status() {
    let s = Server::start(Options::default());
    let reply = s.curl(&[
        "-X",
        "PATCH",
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        r#"{"metadata":{"labels":{"a":"b"}}}"#,
        &format!("{}/api/v1/nodes/{}", s.url(), s.node_name()),
    ]);
    assert_eq!(reply.status, Some(415), "{reply:?}");
    assert_status(&reply.json(), 415);
    assert!(
        s.node()["metadata"]["labels"].get("a").is_none(),
        "the patch was applied"
    );
}

/// Runs `keelson server` in `dir` with `flags` and `config_yaml` as its config file; requires
/// exit code 2, no panic and nothing written, and returns stderr.
fn refused(dir: &Path, flags: &[&str], config_yaml: &str) -> String {
    let config = dir.join("config.yaml");
    fs::write(&config, config_yaml).expect("write the config file");
    refused_with_config(dir, &config, flags)
}

fn refused_with_config(dir: &Path, config: &Path, flags: &[&str]) -> String {
    let data_dir = dir.join("data");
    let kubeconfig = dir.join("kubeconfig.yaml");
    let mut args: Vec<OsString> = vec![
        "server".into(),
        format!("--config={}", config.display()).into(),
        format!("--data-dir={}", data_dir.display()).into(),
        format!("--write-kubeconfig={}", kubeconfig.display()).into(),
        "--https-listen-port=0".into(),
        "--node-name=bad-input".into(),
    ];
    if !flags.iter().any(|f| f.starts_with("--bind-address")) {
        args.push("--bind-address=127.0.0.1".into());
    }
    args.extend(flags.iter().map(OsString::from));
    let out = common::keelson(&args, REFUSAL_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "{flags:?} made keelson panic:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{flags:?}: {}\n{stderr}",
        out.status
    );
    assert!(
        !data_dir.exists(),
        "{flags:?}: the refused start created the data dir"
    );
    assert!(
        !kubeconfig.exists(),
        "{flags:?}: the refused start wrote a kubeconfig"
    );
    stderr
}

fn has_error_line(stderr: &str, expected: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.starts_with("error:") && l.contains(expected))
}

fn assert_status(status: &serde_json::Value, code: u16) {
    assert_eq!(status["kind"], "Status", "{status:#}");
    assert_eq!(status["status"], "Failure", "{status:#}");
    assert_eq!(status["code"], code, "{status:#}");
    assert!(
        status["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {status:#}"
    );
}
