//! `keelson secrets-encrypt status|rotate-keys`: asks a running server (`--server`, this board's
//! by default) over HTTPS with the server token, as `k3s secrets-encrypt` does; the server
//! holds the keys and does the work (see `apiserver::encrypt`).
//!
//! Trust: the server's CA must have the hash in the K10 token before the token is sent, as for
//! an agent's first join, so the token never goes to an impostor.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use serde_json::Value;

use crate::agent::https::{self, Target};
use crate::apiserver::encrypt::{ROTATE_PATH, STATUS_PATH};
use crate::bootstrap::Token;
use crate::bootstrap::join::basic_authorization;
use crate::bootstrap::token::ca_hash;
use crate::cli::{SecretsEncryptArgs, SecretsEncryptCommand};
use crate::config::{Host, ServerUrl};

/// How long a rotation may take to answer: it re-encrypts every Secret first (a few
/// milliseconds each) and may wait up to 30 s for other servers to reload.
const ROTATE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadServer(String),
    #[error(
        "no token: pass --token (KEELSON_TOKEN), or run this on a server board whose token file exists (tried {}: {why})",
        path.display()
    )]
    NoToken { path: PathBuf, why: std::io::Error },
    #[error(transparent)]
    Token(#[from] crate::bootstrap::token::Error),
    #[error(
        "the token has no CA hash, so the server cannot be verified before the token is sent to it: \
         use the K10 token from a server's <data-dir>/server/token"
    )]
    Unpinned,
    #[error(
        "refusing to send the token to {server}: its CA hash {actual} is not the token's {expected}; \
         check --server and --token"
    )]
    CaMismatch {
        server: String,
        expected: String,
        actual: String,
    },
    #[error("cannot reach the keelson server at {server}: {why}")]
    Unreachable { server: String, why: String },
    #[error("{server} refused the token (401): it is not this cluster's server token")]
    TokenRejected { server: String },
    #[error("{server}: {message}")]
    Refused { server: String, message: String },
    #[error("{server} answered something unreadable: {why}")]
    Unreadable { server: String, why: String },
}

pub async fn run(args: SecretsEncryptArgs) -> anyhow::Result<()> {
    let url = ServerUrl::parse(&args.server).map_err(Error::BadServer)?;
    let addr = url.address();
    let token = token(&args)?;
    let (path, method, timeout) = match args.command {
        SecretsEncryptCommand::Status => (STATUS_PATH, hyper::Method::GET, https::REQUEST_TIMEOUT),
        SecretsEncryptCommand::RotateKeys => (ROTATE_PATH, hyper::Method::POST, ROTATE_TIMEOUT),
    };
    let answer = ask(&args.server, &addr, &token, method, path, timeout).await?;
    if args.output == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        return Ok(());
    }
    match args.command {
        SecretsEncryptCommand::Status => print_status(&answer),
        SecretsEncryptCommand::RotateKeys => print_rotation(&answer),
    }
    Ok(())
}

fn token(args: &SecretsEncryptArgs) -> Result<Token, Error> {
    if let Some(raw) = &args.token {
        return Ok(Token::parse(raw, "--token")?);
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| Host::current().default_data_dir());
    let path = data_dir.join("server/token");
    let raw = std::fs::read_to_string(&path).map_err(|why| Error::NoToken {
        path: path.clone(),
        why,
    })?;
    Ok(Token::parse(
        &raw,
        &format!("token file {}", path.display()),
    )?)
}

/// Verifies the server's CA against the token, then sends the request with the token.
async fn ask(
    server: &str,
    addr: &str,
    token: &Token,
    method: hyper::Method,
    path: &str,
    timeout: Duration,
) -> Result<Value, Error> {
    let unreachable = |why: String| Error::Unreachable {
        server: server.to_owned(),
        why,
    };
    let expected = token.ca_hash.ok_or(Error::Unpinned)?;
    let ca_pem = crate::agent::join::fetch_ca(addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if ca_hash(&ca_pem) != expected {
        return Err(Error::CaMismatch {
            server: server.to_owned(),
            expected: hex::encode(expected),
            actual: hex::encode(ca_hash(&ca_pem)),
        });
    }
    let tls = https::tls_config(&ca_pem, None).map_err(|e| unreachable(e.to_string()))?;
    let target = Target::new(addr, tls).map_err(|e| unreachable(e.to_string()))?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr)
        .header(
            hyper::header::AUTHORIZATION,
            basic_authorization(&token.secret),
        )
        .body(Full::new(Bytes::new()))
        .map_err(|e| unreachable(e.to_string()))?;
    let (status, body) = target
        .send_within(req, timeout)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    match status {
        StatusCode::OK => serde_json::from_slice(&body).map_err(|e| Error::Unreadable {
            server: server.to_owned(),
            why: e.to_string(),
        }),
        StatusCode::UNAUTHORIZED => Err(Error::TokenRejected {
            server: server.to_owned(),
        }),
        _ => Err(Error::Refused {
            server: server.to_owned(),
            message: crate::agent::join::status_message(&body),
        }),
    }
}

fn print_status(s: &Value) {
    let enabled = s["enabled"].as_bool().unwrap_or(false);
    println!(
        "Encryption Status: {}",
        if enabled { "Enabled" } else { "Disabled" }
    );
    if !enabled {
        println!(
            "(start the cluster's servers with --secrets-encryption to encrypt Secrets at rest)"
        );
        print_counts(s);
        return;
    }
    println!("Current Rotation Stage: {}", text(&s["stage"]));
    let servers = s["servers"].as_array().cloned().unwrap_or_default();
    let hashes: std::collections::BTreeSet<&str> =
        servers.iter().filter_map(|v| v["hash"].as_str()).collect();
    if hashes.len() <= 1 {
        println!("Server Encryption Hashes: All hashes match");
    } else {
        println!(
            "Server Encryption Hashes: hashes differ (a server has not reloaded the keys yet)"
        );
    }
    for v in &servers {
        println!(
            "  {}: {} (active key {})",
            text(&v["node"]),
            text(&v["hash"]),
            text(&v["activeKey"])
        );
    }
    println!("Active Key: {}", text(&s["activeKey"]));
    let keys: Vec<&str> = s["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!("Keys: {} ({})", keys.len(), keys.join(", "));
    print_counts(s);
}

fn print_counts(s: &Value) {
    println!("\nKEY\tSECRETS");
    if let Some(counts) = s["secretsByKey"].as_object() {
        for (k, n) in counts {
            println!("{k}\t{n}");
        }
    }
}

fn print_rotation(r: &Value) {
    let rewritten: u64 = r["passes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["rewritten"].as_u64())
        .sum();
    let retried: u64 = r["passes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["retried"].as_u64())
        .sum();
    println!(
        "rotated: active key {} (was {}); {} Secrets re-encrypted ({} retried after concurrent writes)",
        text(&r["activeKey"]),
        text(&r["previousKey"]),
        rewritten,
        retried,
    );
    if r["serversInSync"] == false {
        println!(
            "warning: not every server reported the new key in time; run `keelson secrets-encrypt status` to check"
        );
    }
    for path in r["passes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["unreadable"].as_array())
        .flatten()
    {
        println!(
            "warning: {} does not decrypt and was left as it is (its key is kept)",
            text(path)
        );
    }
    let remaining = r["remaining"].as_u64().unwrap_or(0);
    if remaining > 0 {
        println!(
            "warning: {remaining} Secrets are still not under the active key; run rotate-keys again"
        );
    }
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}
