//! What a CNI plugin says: its ADD result and its error object, read from its stdout; the
//! errors of a plugin call. Pure (bytes in, typed values out), so the fuzz build (`fuzz/`)
//! feeds it arbitrary plugin output; running plugins stays in [`super`].

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::api::cidr::Cidr;

/// The pod's interface.
pub const IFNAME: &str = "eth0";
/// How much of a malformed output an error quotes.
const QUOTE: usize = 200;
/// Result versions whose layout this client reads (0.3.x and 0.4.0 share 1.0.0's fields).
const RESULT_VERSIONS: [&str; 4] = ["1.0.0", "0.4.0", "0.3.1", "0.3.0"];

/// Why a pod's network could not be set up or torn down. `NotReady` is the node waiting for
/// its pod block (retried soon); the plugin variants name the plugin and what it said and
/// are retried with back-off; `Config` is a broken configuration file (the operator's).
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error(
        "network is not ready: container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:cni config uninitialized ({0})"
    )]
    NotReady(String),
    #[error("network config {path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error(
        "CNI plugin {plugin:?} not found in {dirs} (install containernetworking-plugins, or give --cni-bin-dir)"
    )]
    PluginMissing { plugin: String, dirs: String },
    #[error("plugin type={plugin:?} failed ({command}): {msg} (code {code}){details}", details = details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Plugin {
        plugin: String,
        command: Command,
        code: u64,
        msg: String,
        details: Option<String>,
    },
    #[error("plugin type={plugin:?} failed ({command}): {status}{stderr}", stderr = if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Exited {
        plugin: String,
        command: Command,
        status: String,
        stderr: String,
    },
    #[error("plugin type={plugin:?} did not finish {command} within {}s and was killed", after.as_secs_f32())]
    Timeout {
        plugin: String,
        command: Command,
        after: Duration,
    },
    #[error(
        "plugin type={plugin:?} ({command}) printed no valid CNI result: {why}; output: {output:?}"
    )]
    Malformed {
        plugin: String,
        command: Command,
        why: String,
        output: String,
    },
    #[error("cannot run plugin {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the pod's network record {path}: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
}

// === impl Command ===

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

// === plugin output ===

/// The spec's error object (`code`, `msg`, `details`), if `out` is one.
pub fn parse_error(kind: &str, command: Command, out: &[u8]) -> Option<CniError> {
    let v: Value = serde_json::from_slice(out).ok()?;
    let code = v["code"].as_u64()?;
    Some(CniError::Plugin {
        plugin: kind.into(),
        command,
        code,
        msg: v["msg"].as_str().unwrap_or_default().to_owned(),
        details: v["details"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
    })
}

/// Reads an ADD result: a JSON object of a known version whose `ips` are addresses.
pub fn parse_result(kind: &str, command: Command, out: &[u8]) -> Result<Value> {
    let malformed = |why: String| CniError::Malformed {
        plugin: kind.into(),
        command,
        why,
        output: quote(out),
    };
    let v: Value = serde_json::from_slice(out).map_err(|e| malformed(format!("not JSON ({e})")))?;
    if !v.is_object() {
        return Err(malformed("not a JSON object".into()));
    }
    let version = v["cniVersion"]
        .as_str()
        .ok_or_else(|| malformed("no cniVersion".into()))?;
    if !RESULT_VERSIONS.contains(&version) {
        return Err(malformed(format!(
            "result version {version:?} is not one this node reads ({})",
            RESULT_VERSIONS.join(", ")
        )));
    }
    for ip in v["ips"].as_array().into_iter().flatten() {
        let address = ip["address"].as_str().unwrap_or_default();
        let host = address
            .split('/')
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok());
        if Cidr::parse(address).is_err() || host.is_none() {
            return Err(malformed(format!(
                "ips[].address {:?} is not ADDRESS/PREFIX",
                ip["address"]
            )));
        }
    }
    if v.get("ips").is_some_and(|i| !i.is_array()) {
        return Err(malformed("\"ips\" is not a list".into()));
    }
    Ok(v)
}

/// The pod's addresses in a result: those on the interface in the pod's namespace (or all,
/// when the result names no interfaces).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let interfaces = result["interfaces"].as_array();
    let in_pod = |i: &Value| {
        let Some(idx) = i["interface"].as_u64() else {
            return true;
        };
        interfaces
            .and_then(|list| list.get(usize::try_from(idx).ok()?))
            .is_none_or(|iface| {
                iface["sandbox"].as_str().is_some_and(|s| !s.is_empty())
                    || iface["name"].as_str() == Some(IFNAME)
            })
    };
    let mut seen = BTreeMap::new();
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| in_pod(i))
        .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
        // The loopback plugin reports lo's addresses; a pod's address is never one of them.
        .filter(|ip: &IpAddr| !ip.is_loopback())
        .filter(|ip: &IpAddr| seen.insert(*ip, ()).is_none())
        .collect()
}

pub fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(QUOTE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
