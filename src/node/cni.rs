//! Pod network interfaces through CNI: a client of the CNI spec (1.0.0; 0.4.0 and 0.3.x
//! results are read too) that gives a pod's network namespace its interface and addresses,
//! and the writer of keelson's default network configuration.
//!
//! What it owns: the call of each plugin of the node's network configuration list (ADD,
//! DEL, CHECK with the spec's environment, `prevResult` chaining, `runtimeConfig.portMappings`
//! for plugins that declare the capability, a timeout per call), the pod's attachment record
//! `<pod dir>/network.json`, and — when keelson makes the pod network (`--flannel-backend`
//! other than `none`) — `10-keelson.conflist` in `--cni-conf-dir` (bridge `cni0` + host-local
//! IPAM on the node's pod blocks + portmap), rewritten when the node's blocks change, and the
//! node's IP forwarding. What it leaves to others: routes to other nodes, masquerade, Service
//! rules (`routes`, `services`); the network namespace itself (`sandbox`).
//!
//! Invariants:
//! - The attachment record is written before ADD runs and removed only after a DEL that
//!   succeeded, so a pod whose ADD failed or was cut short (a crash, a timeout) is always
//!   DELeted before anything else is tried for it, and a pod's addresses are never leaked.
//! - A record holding a result means the pod is attached: a restarted keelson re-adopts it
//!   (its addresses come from the record) and never runs ADD for it again.
//! - DEL runs with the configuration ADD ran with (kept in the record), not today's file.
//! - A plugin call never outlives its timeout: the plugin's whole process group is killed.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::network::Network;
use crate::api::cidr::{Cidr, Family};
use crate::api::network::Backend;

mod result;
pub use result::{CniError, Command, IFNAME, Result};
use result::{parse_error, parse_result, quote, result_ips};

/// The file keelson writes into the conf dir when it makes the pod network.
pub const DEFAULT_CONFIG: &str = "10-keelson.conflist";
/// The name of keelson's network (the conflist's `name`).
pub const NETWORK_NAME: &str = "keelson";
/// The bridge pods hang off.
pub const BRIDGE: &str = "cni0";
/// kubelet's and containerd's defaults.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_BIN_DIRS: &str = "/opt/cni/bin,/usr/lib/cni";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The attachment record, in the pod's directory.
const RECORD: &str = "network.json";
/// Most bytes read of a plugin's stdout (a result is a few hundred) and stderr.
const MAX_OUTPUT: u64 = 1 << 20;
const MAX_STDERR: u64 = 16 << 10;

/// Where the node finds its CNI configuration and plugins (`--cni-conf-dir`, `--cni-bin-dir`,
/// `--cni-plugin-timeout`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

/// The pod a plugin call is for (`CNI_ARGS`, `CNI_CONTAINERID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A `hostPort` of one of the pod's containers, as portmap's `runtimeConfig` wants it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub host_ip: String,
}

/// What a successful ADD gave the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The pod's addresses in the result's order (the first is `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// Found in an earlier run's record: nothing was called.
    pub adopted: bool,
}

/// The pod network of one node: its settings, its view of the cluster, and whether the
/// configuration keelson writes is in place.
pub struct PodNetwork {
    settings: Settings,
    /// `<data-dir>/agent/cni`: host-local's state lives under it (`networks/`).
    state_dir: PathBuf,
    network: Arc<Network>,
    /// What the config writer last found; read by every pod set-up.
    readiness: Mutex<Readiness>,
}

/// The config writer's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    /// Waiting for the cluster settings or this node's pod block (why).
    Waiting(String),
    /// keelson's configuration is written for these blocks.
    Managed(Vec<Cidr>),
    /// `--flannel-backend none`: the conf dir holds another CNI's configuration.
    Delegated,
}

/// The pod's attachment record (`<pod dir>/network.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// The network configuration list ADD ran with (DEL and CHECK use it again).
    list: Value,
    container_id: String,
    if_name: String,
    netns: PathBuf,
    args: String,
    port_mappings: Vec<PortMapping>,
    /// The chain's result; `None` while ADD has not completed.
    result: Option<Value>,
}

// === impl PodNetwork ===

impl PodNetwork {
    pub fn new(settings: Settings, state_dir: PathBuf, network: Arc<Network>) -> Arc<PodNetwork> {
        Arc::new(PodNetwork {
            settings,
            state_dir,
            network,
            readiness: Mutex::new(Readiness::Waiting(
                "the cluster's network settings have not arrived".into(),
            )),
        })
    }

    /// Keeps keelson's configuration in step with the node's pod blocks, until the node's
    /// [`Network`] is dropped. Level-triggered: every wake compares the view with what was
    /// written last.
    pub fn spawn_config_writer(self: &Arc<Self>) {
        let weak: Weak<PodNetwork> = Arc::downgrade(self);
        let mut changes = self.network.subscribe();
        let span = tracing::info_span!("cni-config", node = %self.network.node());
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    let Some(me) = weak.upgrade() else { return };
                    let me2 = me.clone();
                    let done = tokio::task::spawn_blocking(move || {
                        if let Some(blocks) = me2.reconcile() {
                            enable_forwarding(&blocks);
                        }
                    })
                    .await;
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "the CNI config writer failed");
                    }
                    drop(me);
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            },
            span,
        ));
    }

    /// Gives the pod its interface (ADD), or finds the one an earlier process gave it.
    /// A record of an ADD that did not complete is DELeted first. When ADD fails, DEL runs
    /// at once so nothing stays half set up; if that DEL fails too, the record stays and the
    /// next try (or the pod's removal) DELetes again.
    pub async fn attach(
        &self,
        pod_dir: &Path,
        pod: &PodIdentity,
        netns: &Path,
        ports: Vec<PortMapping>,
    ) -> Result<Attachment> {
        let path = pod_dir.join(RECORD);
        if let Some(record) = read_record(&path)? {
            if let Some(result) = &record.result {
                let ips = result_ips(result);
                return Ok(Attachment { ips, adopted: true });
            }
            tracing::info!(pod = %pod.name, "removing a network set-up that did not complete");
            self.run_del(&record).await?;
            remove_record(&path)?;
        }
        let list = self.config_list()?;
        let mut record = Record {
            list,
            container_id: pod.uid.clone(),
            if_name: IFNAME.into(),
            netns: netns.to_path_buf(),
            args: cni_args(pod),
            port_mappings: ports,
            result: None,
        };
        write_record(&path, &record)?;
        match self.run_add(&record).await {
            Ok(result) => {
                let ips = result_ips(&result);
                record.result = Some(result);
                write_record(&path, &record)?;
                Ok(Attachment {
                    ips,
                    adopted: false,
                })
            }
            Err(e) => {
                match self.run_del(&record).await {
                    Ok(()) => remove_record(&path)?,
                    Err(del) => {
                        tracing::warn!(pod = %pod.name, error = %del, "cleaning up after a failed network set-up failed too; tried again later")
                    }
                }
                Err(e)
            }
        }
    }

    /// Removes the pod's interface and releases its addresses (DEL), if it has any.
    /// Idempotent: without a record there is nothing to do.
    pub async fn detach(&self, pod_dir: &Path) -> Result<()> {
        let path = pod_dir.join(RECORD);
        let Some(record) = read_record(&path)? else {
            return Ok(());
        };
        self.run_del(&record).await?;
        remove_record(&path)
    }

    /// CHECK of the pod's attachment, for a plugin chain that allows it.
    pub async fn check(&self, pod_dir: &Path) -> Result<()> {
        let Some(record) = read_record(&pod_dir.join(RECORD))? else {
            return Ok(());
        };
        let Some(result) = &record.result else {
            return Ok(());
        };
        if record.list["disableCheck"].as_bool() == Some(true) {
            return Ok(());
        }
        let mut prev = Some(result.clone());
        for plugin in plugins(&record.list) {
            self.call(Command::Check, &record, plugin, &mut prev)
                .await?;
        }
        Ok(())
    }

    /// The configuration list ADD uses now.
    fn config_list(&self) -> Result<Value> {
        let readiness = self
            .readiness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match readiness {
            Readiness::Waiting(why) => Err(CniError::NotReady(why)),
            Readiness::Managed(_) | Readiness::Delegated => {
                match load_config_list(&self.settings.conf_dir)? {
                    Some((_, list)) => Ok(list),
                    None => Err(CniError::NotReady(format!(
                        "no network config found in {}",
                        self.settings.conf_dir.display()
                    ))),
                }
            }
        }
    }

    async fn run_add(&self, record: &Record) -> Result<Value> {
        let mut prev = None;
        for plugin in plugins(&record.list) {
            let out = self.call(Command::Add, record, plugin, &mut prev).await?;
            prev = Some(out);
        }
        prev.ok_or_else(|| CniError::Config {
            path: self.settings.conf_dir.clone(),
            why: "the network config lists no plugins".into(),
        })
    }

    /// DEL through every plugin, last first. A plugin that fails does not stop the others
    /// (each releases what it holds); the first failure is returned.
    async fn run_del(&self, record: &Record) -> Result<()> {
        let mut first = None;
        let list: Vec<&Value> = plugins(&record.list).collect();
        for plugin in list.into_iter().rev() {
            let mut prev = record.result.clone();
            if let Err(e) = self.call(Command::Del, record, plugin, &mut prev).await {
                tracing::warn!(error = %e, "CNI DEL");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Runs one plugin; `prev` is the previous result given to it (ADD's output for the next).
    async fn call(
        &self,
        command: Command,
        record: &Record,
        plugin: &Value,
        prev: &mut Option<Value>,
    ) -> Result<Value> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_owned();
        let binary = find_plugin(&kind, &self.settings.bin_dirs)?;
        let stdin = plugin_config(&record.list, plugin, prev.as_ref(), &record.port_mappings);
        let env = environment(command, record, &self.settings.bin_dirs);
        let out = exec(&binary, &kind, command, &env, &stdin, self.settings.timeout).await?;
        match command {
            Command::Add => parse_result(&kind, command, &out),
            // DEL and CHECK print nothing on success.
            Command::Del | Command::Check => Ok(Value::Null),
        }
    }

    /// Writes keelson's configuration when it makes the network and the node has its blocks;
    /// returns those blocks then (the node must forward for them).
    fn reconcile(&self) -> Option<Vec<Cidr>> {
        let (backend, cidrs) = self.network.read(|v| {
            (
                v.cluster.as_ref().map(|c| c.backend),
                v.nodes
                    .get(self.network.node())
                    .map(|n| n.pod_cidrs.clone())
                    .unwrap_or_default(),
            )
        });
        let next = match backend {
            None => Readiness::Waiting("the cluster's network settings have not arrived".into()),
            Some(Backend::None) => {
                // Another CNI makes the network: a file keelson wrote earlier must not shadow
                // its configuration (keelson's name sorts first).
                let ours = self.settings.conf_dir.join(DEFAULT_CONFIG);
                if std::fs::remove_file(&ours).is_ok() {
                    tracing::info!(file = %ours.display(), "--flannel-backend none: removed keelson's pod network config");
                }
                Readiness::Delegated
            }
            Some(_) if cidrs.is_empty() => {
                Readiness::Waiting(format!("node {} has no pod CIDR yet", self.network.node()))
            }
            Some(_) => {
                let text = render_default(&cidrs, &self.state_dir.join("networks"));
                match write_if_changed(&self.settings.conf_dir, &text) {
                    Ok(true) => {
                        let blocks: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
                        tracing::info!(conf_dir = %self.settings.conf_dir.display(), pod_cidrs = ?blocks, "wrote the pod network config")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let why = format!(
                            "cannot write {}: {e}",
                            self.settings.conf_dir.join(DEFAULT_CONFIG).display()
                        );
                        tracing::warn!("{why}; give a writable --cni-conf-dir");
                        *self.readiness.lock().unwrap_or_else(|p| p.into_inner()) =
                            Readiness::Waiting(why);
                        return None;
                    }
                }
                Readiness::Managed(cidrs)
            }
        };
        let mut readiness = self.readiness.lock().unwrap_or_else(|p| p.into_inner());
        if *readiness != next {
            tracing::debug!(?next, "pod network readiness");
            *readiness = next.clone();
        }
        match next {
            Readiness::Managed(blocks) => Some(blocks),
            _ => None,
        }
    }
}

/// The first network configuration in `dir` in lexical order (`.conflist`, or a single
/// `.conf`/`.json` plugin wrapped as a list), as libcni picks it; `None` when there is none.
pub fn load_config_list(dir: &Path) -> Result<Option<(PathBuf, Value)>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CniError::Config {
                path: dir.to_path_buf(),
                why: e.to_string(),
            });
        }
    };
    files.sort();
    let Some(path) = files.into_iter().next() else {
        return Ok(None);
    };
    let bad = |why: String| CniError::Config {
        path: path.clone(),
        why,
    };
    let text = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let list = if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
        value
    } else {
        // A single plugin's config becomes a list of one (libcni's ConfListFromConf).
        json!({
            "cniVersion": value["cniVersion"],
            "name": value["name"],
            "plugins": [value],
        })
    };
    validate_list(&list).map_err(bad)?;
    Ok(Some((path, list)))
}

/// keelson's configuration for a node with `cidrs`: bridge `cni0` (the pods' gateway, no
/// masquerade — that is the node's nftables rules' job — hairpin on for a pod reaching its
/// own Service), host-local IPAM keeping its state in `data_dir`, and portmap for hostPorts.
pub fn render_default(cidrs: &[Cidr], data_dir: &Path) -> String {
    let ranges: Vec<Value> = cidrs
        .iter()
        .map(|c| json!([{ "subnet": c.to_string() }]))
        .collect();
    let mut routes = Vec::new();
    if cidrs.iter().any(|c| c.family() == Family::V4) {
        routes.push(json!({"dst": "0.0.0.0/0"}));
    }
    if cidrs.iter().any(|c| c.family() == Family::V6) {
        routes.push(json!({"dst": "::/0"}));
    }
    let list = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": ranges,
                    "routes": routes,
                    "dataDir": data_dir.display().to_string(),
                },
            },
            {
                "type": "portmap",
                "capabilities": {"portMappings": true},
            },
        ],
    });
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

/// The pod's hostPorts (kubelet hands only ports with a `hostPort` to portmap).
pub fn port_mappings(pod: &Value) -> Vec<PortMapping> {
    let containers = pod["spec"]["containers"].as_array().into_iter().flatten();
    containers
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| {
            let host_port = u16::try_from(p["hostPort"].as_u64()?).ok()?;
            let container_port = u16::try_from(p["containerPort"].as_u64()?).ok()?;
            (host_port > 0).then(|| PortMapping {
                host_port,
                container_port,
                protocol: p["protocol"].as_str().unwrap_or("TCP").to_lowercase(),
                host_ip: p["hostIP"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

// === plugin calls ===

fn plugins(list: &Value) -> impl DoubleEndedIterator<Item = &Value> {
    list["plugins"].as_array().into_iter().flatten()
}

fn validate_list(list: &Value) -> Result<(), String> {
    if list["name"].as_str().is_none_or(str::is_empty) {
        return Err("no network \"name\"".into());
    }
    if list["cniVersion"].as_str().is_none() {
        return Err("no \"cniVersion\"".into());
    }
    let plugins = list["plugins"].as_array().ok_or("no \"plugins\" list")?;
    if plugins.is_empty() {
        return Err("the \"plugins\" list is empty".into());
    }
    for p in plugins {
        let kind = p["type"].as_str().unwrap_or_default();
        // A plugin name is a file name in the bin dirs, never a path.
        if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
            return Err(format!("plugin type {:?} is not a plugin name", p["type"]));
        }
    }
    Ok(())
}

/// The configuration one plugin reads on stdin: its own object with the list's `name` and
/// `cniVersion`, the previous result, and the runtime values of the capabilities it declares.
fn plugin_config(
    list: &Value,
    plugin: &Value,
    prev: Option<&Value>,
    ports: &[PortMapping],
) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    if plugin["capabilities"]["portMappings"].as_bool() == Some(true) && !ports.is_empty() {
        conf["runtimeConfig"] = json!({ "portMappings": ports });
    }
    conf
}

/// `CNI_ARGS` as kubelet's runtimes set them.
fn cni_args(pod: &PodIdentity) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        pod.namespace, pod.name, pod.uid, pod.uid
    )
}

/// The spec's environment for a call.
fn environment(
    command: Command,
    record: &Record,
    bin_dirs: &[PathBuf],
) -> Vec<(&'static str, String)> {
    let path = bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    vec![
        ("CNI_COMMAND", command.name().to_owned()),
        ("CNI_CONTAINERID", record.container_id.clone()),
        ("CNI_NETNS", record.netns.display().to_string()),
        ("CNI_IFNAME", record.if_name.clone()),
        ("CNI_ARGS", record.args.clone()),
        ("CNI_PATH", path),
        // Plugins that shell out (iptables) need a PATH of their own.
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
    ]
}

fn find_plugin(kind: &str, dirs: &[PathBuf]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if kind.is_empty() || kind.contains('/') {
        return Err(CniError::PluginMissing {
            plugin: kind.into(),
            dirs: "(not a plugin name)".into(),
        });
    }
    dirs.iter()
        .map(|d| d.join(kind))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| CniError::PluginMissing {
            plugin: kind.into(),
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Runs a plugin with `stdin`, in a process group of its own that is killed whole when the
/// call takes longer than `timeout` (a plugin's children must not outlive it either).
async fn exec(
    binary: &Path,
    kind: &str,
    command: Command,
    env: &[(&'static str, String)],
    stdin: &Value,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| CniError::Spawn {
        path: binary.to_path_buf(),
        source,
    })?;
    let pid = child.id();
    let input = serde_json::to_vec(stdin).unwrap_or_default();
    let mut pipe_in = child.stdin.take();
    let mut pipe_out = child.stdout.take();
    let mut pipe_err = child.stderr.take();
    let work = async {
        let write = async {
            if let Some(mut p) = pipe_in.take() {
                // A plugin that does not read its config gets EPIPE: not our error.
                let _ = p.write_all(&input).await;
            }
        };
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(p) = pipe_out.take() {
                let _ = p.take(MAX_OUTPUT).read_to_end(&mut buf).await;
            }
            buf
        };
        let read_err = async {
            let mut buf = Vec::new();
            if let Some(p) = pipe_err.take() {
                let _ = p.take(MAX_STDERR).read_to_end(&mut buf).await;
            }
            buf
        };
        let ((), out, err) = tokio::join!(write, read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    let (status, out, err) = match tokio::time::timeout(timeout, work).await {
        Ok(done) => done,
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(CniError::Timeout {
                plugin: kind.into(),
                command,
                after: timeout,
            });
        }
    };
    let status = status.map_err(|source| CniError::Spawn {
        path: binary.to_path_buf(),
        source,
    })?;
    if status.success() {
        return Ok(out);
    }
    // The spec's error object on stdout, or (a plugin not following it) whatever it said.
    if let Some(e) = parse_error(kind, command, &out) {
        return Err(e);
    }
    Err(CniError::Exited {
        plugin: kind.into(),
        command,
        status: status.to_string(),
        stderr: quote(&[&out[..], &err[..]].concat()),
    })
}

// === files ===

fn read_record(path: &Path) -> Result<Option<Record>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CniError::Record {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CniError::Record {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
}

fn write_record(path: &Path, record: &Record) -> Result<()> {
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    write_atomic(path, &bytes).map_err(|source| CniError::Record {
        path: path.to_path_buf(),
        source,
    })
}

fn remove_record(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CniError::Record {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Writes keelson's file into `dir` unless it already says `text`; `true` when written.
fn write_if_changed(dir: &Path, text: &str) -> io::Result<bool> {
    let path = dir.join(DEFAULT_CONFIG);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    write_atomic(&path, text.as_bytes())?;
    Ok(true)
}

/// Whole or not at all: a plugin reading the file never sees half of it.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Pods route through the node: forwarding on for each family the node has a block of.
fn enable_forwarding(cidrs: &[Cidr]) {
    let mut knobs = vec!["/proc/sys/net/ipv4/ip_forward"];
    if cidrs.iter().any(|c| c.family() == Family::V6) {
        knobs.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for knob in knobs {
        if std::fs::read_to_string(knob).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        match std::fs::write(knob, "1") {
            Ok(()) => tracing::info!(%knob, "enabled IP forwarding for pods"),
            Err(e) => {
                tracing::warn!(%knob, error = %e, "cannot enable IP forwarding; pods cannot reach beyond this node")
            }
        }
    }
}

#[cfg(test)]
#[path = "cni/tests.rs"]
mod tests;
