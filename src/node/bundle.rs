//! One container's OCI runtime spec (`config.json`, runtime-spec 1.0.2 as runc 1.1.5 reads
//! it), built from the pod, the container, the image's configuration, the resolved
//! environment, the pod's sandbox and its materialised volumes.
//!
//! What it owns: Kubernetes' rules for turning those into a process (command/args vs. the
//! image's Entrypoint/Cmd, env, cwd, user and groups, capabilities, no_new_privs), mounts,
//! namespaces, masked paths and cgroup resources, the way kubelet and containerd's CRI do.
//! What it leaves to others: the root filesystem (the caller mounts the image layers and
//! passes the path), the sandbox and volumes ([`super::sandbox`], [`super::volumes`]), running
//! runc and watching the process (the pod runtime and its monitor).
//!
//! Invariants:
//! - [`spec`] is a function of its input and of three read-only looks at the machine: the
//!   root filesystem's `/etc/passwd` and `/etc/group` (read with the kernel keeping every path
//!   inside the rootfs, `RESOLVE_IN_ROOT`), and `/dev` for privileged containers. Its only
//!   write is pinning `subPath` mounts under the pod directory ([`volumes::pin_subpath`]).
//! - A container never gets a capability the node's bounding set lacks: asking for one is an
//!   error naming it, not a runc failure at start.
//! - `runAsNonRoot` is checked before anything is resolved, with kubelet's messages.
//! - Like `env`, this module imports only its siblings and `crate::api::quantity`.
//!
//! Seccomp: `RuntimeDefault` (the pod's or the container's `seccompProfile`) gets keelson's
//! own profile ([`seccomp`]: everything but the calls containerd's and Docker's defaults keep
//! from unprivileged containers, which fail with `EPERM`; capabilities let theirs through);
//! `Unconfined`, no profile (kubelet's default without `--seccomp-default`) and privileged
//! containers run without a filter.
//!
//! Not done yet, plainly: a `Localhost` seccomp profile is refused. AppArmor and SELinux
//! options are not applied.
//! `oomScoreAdj` by QoS class is not set (the process inherits keelson's). Pod-level cgroup
//! limits are not set (only each container's). `setHostnameAsFQDN` is not applied. No
//! `rlimits` are written, so a container inherits keelson's. A container with `tty: true`
//! gets `terminal: true`; the monitor passes runc `--console-socket` and keeps the terminal
//! (see [`super::monitor`]).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::env;
use super::sandbox::{Namespace, Sandbox};
use super::volumes::{self, VolumeError, Volumes};
use crate::api::quantity;

// By path, as `tests` below, so tests/bundle.rs finds it when it compiles this module.
#[path = "bundle/seccomp.rs"]
pub mod seccomp;

/// The runtime-spec version written; runc 1.1.5 implements 1.0.2.
pub const OCI_VERSION: &str = "1.0.2";
/// `PATH` when the image sets none (containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period for cpu limits, in microseconds (kubelet's default).
pub const CPU_PERIOD: u64 = 100_000;
/// Kubelet's bounds on cpu shares and on a quota.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
const MIN_QUOTA: i64 = 1_000;
/// The largest `/etc/passwd` or `/etc/group` read from an image (bigger ones are refused).
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// The capabilities a container gets by default: containerd's set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux knows, by number.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// containerd's masked and read-only paths for unprivileged containers.
const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Why a container's spec could not be made. Most are the pod's (fix the pod or the image and
/// the next attempt works); `Io` is the node's. Kubelet reports the pod's as
/// `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("container's runAsUser breaks non-root policy (pod: {pod:?}, container: {container})")]
    RunAsUserRoot { pod: String, container: String },
    #[error(
        "container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {container})"
    )]
    ImageRunsAsRoot { pod: String, container: String },
    #[error(
        "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user \
         is non-root (pod: {pod:?}, container: {container})"
    )]
    NonNumericUser {
        user: String,
        pod: String,
        container: String,
    },
    /// Neither the container nor the image says what to run.
    #[error("no command specified")]
    NoCommand,
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("capability {0} is not in this node's bounding set, so no container here can have it")]
    CapabilityUnavailable(String),
    #[error("volumeMount {mount_path:?} names volume {volume:?}, which the pod does not have")]
    NoSuchVolume { volume: String, mount_path: String },
    /// A volume mount's subPath (boxed: it is large and rare).
    #[error(transparent)]
    Volume(Box<VolumeError>),
    #[error("{field}: {source}")]
    Quantity {
        field: String,
        #[source]
        source: quantity::Error,
    },
    #[error("{0} is not supported by keelson yet")]
    Unsupported(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = BundleError> = std::result::Result<T, E>;

impl From<VolumeError> for BundleError {
    fn from(e: VolumeError) -> BundleError {
        BundleError::Volume(Box::new(e))
    }
}

/// The parts of an image's configuration a container's spec needs (the caller maps its image
/// type onto this).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` strings.
    pub env: Vec<String>,
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; empty means root.
    pub user: String,
}

/// Facts about the node every spec uses; make once with [`NodeSettings::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// The cgroup under which pods go, cgroupfs style (`/keelson`).
    pub cgroup_parent: String,
    /// `pids.max` for every container (kubelet's `--pod-max-pids`, here per container).
    pub pids_limit: Option<i64>,
    /// The capabilities keelson itself may hand out (its bounding set): what `privileged`
    /// and `ALL` mean here.
    pub capabilities: Vec<String>,
    /// Give containers a private cgroup namespace (the unified hierarchy only, as containerd).
    pub cgroup_namespace: bool,
}

/// Everything one container's spec is made from.
#[derive(Clone, Copy)]
pub struct ContainerInput<'a> {
    /// The pod as the API serves it.
    pub pod: &'a Value,
    /// This container's entry of `spec.containers` (or `initContainers`).
    pub container: &'a Value,
    pub image: &'a ImageConfig,
    /// The container's environment from [`env::resolve_with`].
    pub env: &'a [(String, String)],
    /// The mounted root filesystem.
    pub rootfs: &'a Path,
    pub sandbox: &'a Sandbox,
    pub volumes: &'a Volumes,
    pub node: &'a NodeSettings,
    /// The pod's PID namespace for `shareProcessNamespace` (held by its init, see
    /// `monitor::podinit`). Without it such a pod is refused.
    pub pod_pid_namespace: Option<&'a Path>,
    /// More mounts from the runtime (e.g. `/dev/termination-log`), after the volumes.
    pub extra_mounts: &'a [Mount],
}

/// One OCI mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The process's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The primary group first, then the image's memberships, supplementalGroups, fsGroup.
    pub additional_gids: Vec<u32>,
}

/// Writes `dir/config.json` for the container (atomically: a sibling renamed over).
pub fn write(dir: &Path, input: &ContainerInput) -> Result<()> {
    let spec = spec(input)?;
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { op, path, source }
    };
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = dir.join("config.json.tmp");
    let text = serde_json::to_vec_pretty(&spec).map_err(|e| io("encode", &tmp)(e.into()))?;
    fs::write(&tmp, text).map_err(io("write", &tmp))?;
    let target = dir.join("config.json");
    fs::rename(&tmp, &target).map_err(io("rename", &target))
}

/// The container's OCI runtime spec.
pub fn spec(input: &ContainerInput) -> Result<Value> {
    let container_name = input.container["name"].as_str().unwrap_or("");
    let uid = env::str_at(input.pod, &["metadata", "uid"]).unwrap_or("");
    check_name("container name", container_name)?;
    check_name("pod uid", uid)?;
    let sc = SecurityContext::of(input.pod, input.container);
    let privileged = sc.bool("privileged").unwrap_or(false);
    if sc.seccomp_type() == Some("Localhost") {
        {
            return Err(BundleError::Unsupported(
                "a Localhost seccomp profile".into(),
            ));
        }
    }
    let user = user(input, &sc)?;
    let caps = capabilities(
        &input.container["securityContext"]["capabilities"],
        &input.node.capabilities,
        privileged,
    )?;
    let seccomp = match sc.seccomp_type() {
        _ if privileged => None,
        Some("RuntimeDefault") => Some(seccomp::runtime_default(&caps)),
        Some("Unconfined") | None => None,
        Some(other) => {
            return Err(invalid(
                "securityContext.seccompProfile.type",
                &format!("unknown type {other:?}"),
            ));
        }
    };
    let args = process_args(input.container, input.image, input.env)?;
    let env = process_env(input);
    let cwd = match input.container["workingDir"].as_str() {
        Some(w) if !w.is_empty() => w.to_string(),
        _ if !input.image.working_dir.is_empty() => input.image.working_dir.clone(),
        _ => "/".to_string(),
    };
    if !cwd.starts_with('/') {
        return Err(invalid(
            "workingDir",
            &format!("{cwd:?} is not an absolute path"),
        ));
    }
    let no_new_privileges = sc.container_bool("allowPrivilegeEscalation") == Some(false);
    let (mounts, root_propagation) = mounts(input, privileged)?;
    let mut linux = json!({
        "cgroupsPath": cgroups_path(&input.node.cgroup_parent, uid, container_name),
        "resources": resources(input.container, input.node.pids_limit, privileged)?,
        "namespaces": namespaces(input)?,
    });
    if let Some(p) = root_propagation {
        linux["rootfsPropagation"] = json!(p);
    }
    if let Some(profile) = seccomp {
        linux["seccomp"] = profile;
    }
    if privileged {
        linux["devices"] = Value::Array(host_devices());
    } else {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    let sysctls: Map<String, Value> = env::array(&input.pod["spec"]["securityContext"], "sysctls")
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), json!(s["value"].as_str()?))))
        .collect();
    if !sysctls.is_empty() {
        linux["sysctl"] = Value::Object(sysctls);
    }
    let meta = |f| env::str_at(input.pod, &["metadata", f]).unwrap_or("");
    Ok(json!({
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": input.container["tty"].as_bool().unwrap_or(false),
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                "additionalGids": user.additional_gids,
            },
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": no_new_privileges,
        },
        "root": {
            "path": input.rootfs,
            "readonly": sc.container_bool("readOnlyRootFilesystem").unwrap_or(false),
        },
        "mounts": mounts,
        "annotations": {
            "io.kubernetes.pod.name": meta("name"),
            "io.kubernetes.pod.namespace": meta("namespace"),
            "io.kubernetes.pod.uid": meta("uid"),
            "io.kubernetes.container.name": container_name,
        },
        "linux": linux,
    }))
}

/// The process's arguments by Kubernetes' rules: `command` replaces the image's Entrypoint
/// (and then the image's Cmd is not used); `args` replaces the image's Cmd. Both are
/// `$(VAR)`-expanded with the container's environment.
pub fn process_args(
    container: &Value,
    image: &ImageConfig,
    env: &[(String, String)],
) -> Result<Vec<String>> {
    let (command, args) = env::expand_command(container, env);
    let mut out = if !command.is_empty() {
        command
    } else {
        image.entrypoint.clone()
    };
    if !args.is_empty() {
        out.extend(args);
    } else if container["command"].as_array().is_none_or(|c| c.is_empty()) {
        out.extend(image.cmd.iter().cloned());
    }
    if out.is_empty() {
        return Err(BundleError::NoCommand);
    }
    Ok(out)
}

/// The capability set by containerd's rules: the default set (those the node has), or all
/// of the node's when privileged; then `add: [ALL]`, `drop: [ALL]`, each add, each drop — so
/// `drop: [ALL], add: [NET_BIND_SERVICE]` leaves just that one. Names may omit `CAP_`.
pub fn capabilities(spec: &Value, node: &[String], privileged: bool) -> Result<Vec<String>> {
    let listed = |key| -> Vec<String> {
        env::array(spec, key)
            .filter_map(Value::as_str)
            .map(normalize_capability)
            .collect()
    };
    let (add, drop) = (listed("add"), listed("drop"));
    let on_node = |c: &str| node.iter().any(|n| n == c);
    let mut set: BTreeSet<usize> = if privileged {
        node.iter().filter_map(|c| capability_number(c)).collect()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .filter(|c| on_node(c))
            .filter_map(|c| capability_number(c))
            .collect()
    };
    if !privileged {
        if add.iter().any(|c| c == "CAP_ALL") {
            set.extend(node.iter().filter_map(|c| capability_number(c)));
        }
        if drop.iter().any(|c| c == "CAP_ALL") {
            set.clear();
        }
        for c in add.iter().filter(|c| *c != "CAP_ALL") {
            let n =
                capability_number(c).ok_or_else(|| BundleError::UnknownCapability(c.clone()))?;
            if !on_node(c) {
                return Err(BundleError::CapabilityUnavailable(c.clone()));
            }
            set.insert(n);
        }
        for c in drop.iter().filter(|c| *c != "CAP_ALL") {
            if let Some(n) = capability_number(c) {
                set.remove(&n);
            }
        }
    }
    Ok(set
        .into_iter()
        .map(|n| ALL_CAPABILITIES[n].to_string())
        .collect())
}

/// Who the process runs as: `runAsUser`/`runAsGroup` (container's, else the pod's), else the
/// image's `USER` (numeric or a name looked up in the rootfs' `/etc/passwd` and
/// `/etc/group`). A uid without a passwd entry gets gid 0, as in containerd.
pub fn user(input: &ContainerInput, sc: &SecurityContext) -> Result<User> {
    let pod_name = format!(
        "{}_{}({})",
        env::str_at(input.pod, &["metadata", "name"]).unwrap_or(""),
        env::str_at(input.pod, &["metadata", "namespace"]).unwrap_or(""),
        env::str_at(input.pod, &["metadata", "uid"]).unwrap_or(""),
    );
    let container = input.container["name"].as_str().unwrap_or("").to_string();
    let run_as_user = sc.id("runAsUser")?;
    let run_as_group = sc.id("runAsGroup")?;
    let (image_user, image_group) = match input.image.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (input.image.user.as_str(), None),
    };
    if sc.bool("runAsNonRoot") == Some(true) {
        match run_as_user {
            Some(0) => {
                return Err(BundleError::RunAsUserRoot {
                    pod: pod_name,
                    container,
                });
            }
            Some(_) => {}
            None if image_user.is_empty() || image_user.parse::<u32>() == Ok(0) => {
                return Err(BundleError::ImageRunsAsRoot {
                    pod: pod_name,
                    container,
                });
            }
            None if image_user.parse::<u32>().is_err() => {
                return Err(BundleError::NonNumericUser {
                    user: image_user.to_string(),
                    pod: pod_name,
                    container,
                });
            }
            None => {}
        }
    }
    let passwd = Accounts::passwd(&read_in_root(input.rootfs, "etc/passwd")?);
    let groups = Accounts::group(&read_in_root(input.rootfs, "etc/group")?);
    let by_uid = |uid: u32| passwd.iter().find(|e| e.id == uid);
    let (uid, mut gid, name) = match run_as_user {
        Some(uid) => match by_uid(uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone())),
            None => (uid, 0, None),
        },
        None => {
            let found = match image_user.parse::<u32>() {
                _ if image_user.is_empty() => by_uid(0).map(|e| (0, e.gid, Some(e.name.clone()))),
                Ok(uid) => {
                    Some(by_uid(uid).map_or((uid, 0, None), |e| (uid, e.gid, Some(e.name.clone()))))
                }
                Err(_) => passwd
                    .iter()
                    .find(|e| e.name == image_user)
                    .map(|e| (e.id, e.gid, Some(e.name.clone()))),
            };
            let (uid, mut gid, name) = match found {
                Some(f) => f,
                None if image_user.is_empty() => (0, 0, None),
                None => return Err(BundleError::UnknownUser(image_user.to_string())),
            };
            if let Some(g) = image_group.filter(|g| !g.is_empty()) {
                gid = match g.parse::<u32>() {
                    Ok(gid) => gid,
                    Err(_) => groups
                        .iter()
                        .find(|e| e.name == g)
                        .map(|e| e.id)
                        .ok_or_else(|| BundleError::UnknownGroup(g.to_string()))?,
                };
            }
            (uid, gid, name)
        }
    };
    if let Some(g) = run_as_group {
        gid = g;
    }
    let mut additional = vec![gid];
    if let Some(name) = &name {
        additional.extend(
            groups
                .iter()
                .filter(|g| g.members.contains(name))
                .map(|g| g.id),
        );
    }
    for g in env::array(&input.pod["spec"]["securityContext"], "supplementalGroups") {
        if let Some(g) = g.as_u64().and_then(|g| u32::try_from(g).ok()) {
            additional.push(g);
        }
    }
    if let Some(g) = volumes::fs_group(input.pod) {
        additional.push(g);
    }
    let mut seen = BTreeSet::new();
    additional.retain(|g| seen.insert(*g));
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// `linux.resources`: cpu shares from the request (the limit when no request; 2 without
/// either), quota from the limit, memory limit, pids limit, and the device rules.
pub fn resources(container: &Value, pids_limit: Option<i64>, privileged: bool) -> Result<Value> {
    let res = &container["resources"];
    let parse = |section: &str, name: &str| -> Result<Option<quantity::Quantity>> {
        match res[section][name].as_str() {
            None => Ok(None),
            Some(text) => quantity::parse(text)
                .map(Some)
                .map_err(|source| BundleError::Quantity {
                    field: format!("resources.{section}.{name}"),
                    source,
                }),
        }
    };
    let cpu_limit = parse("limits", "cpu")?;
    let cpu_request = parse("requests", "cpu")?.or(cpu_limit);
    let memory_limit = parse("limits", "memory")?;
    let mut cpu = json!({"shares": cpu_shares(cpu_request.map_or(0, |q| q.milli()))});
    if let Some(limit) = cpu_limit {
        cpu["quota"] = json!(cpu_quota(limit.milli()));
        cpu["period"] = json!(CPU_PERIOD);
    }
    let mut out = json!({
        "cpu": cpu,
        "devices": [{"allow": privileged, "access": "rwm"}],
    });
    if let Some(m) = memory_limit {
        out["memory"] = json!({"limit": m.value()});
    }
    if let Some(p) = pids_limit {
        out["pids"] = json!({"limit": p});
    }
    Ok(out)
}

/// Kubelet's `MilliCPUToShares`: milli × 1024 / 1000, at least 2, at most 262144.
pub fn cpu_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    ((milli as u64).saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// Kubelet's `MilliCPUToQuota` for [`CPU_PERIOD`]: at least 1 ms.
pub fn cpu_quota(milli: i64) -> i64 {
    (milli.saturating_mul(CPU_PERIOD as i64) / 1000).max(MIN_QUOTA)
}

/// The container's cgroup, cgroupfs style: `<parent>/pod<uid>/<container>`.
pub fn cgroups_path(parent: &str, pod_uid: &str, container: &str) -> String {
    format!("{}/pod{pod_uid}/{container}", parent.trim_end_matches('/'))
}

/// Removes the pod's cgroup directories (runc removes each container's, not their parent).
/// Call once every container of the pod is deleted; a cgroup still in use stays (EBUSY).
pub fn remove_pod_cgroup(parent: &str, pod_uid: &str) -> io::Result<()> {
    check_name("pod uid", pod_uid)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let rel = format!("{}/pod{pod_uid}", parent.trim_matches('/'));
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    if !root.join("cgroup.controllers").exists() {
        // cgroup v1 (or hybrid): one directory per mounted hierarchy.
        hierarchies = fs::read_dir(root)?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
    }
    for h in hierarchies {
        match fs::remove_dir(h.join(&rel)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// === impl NodeSettings ===

impl NodeSettings {
    /// Reads the node's facts: keelson's capability bounding set and the cgroup layout.
    pub fn detect(cgroup_parent: &str, pids_limit: Option<i64>) -> io::Result<NodeSettings> {
        let status = fs::read_to_string("/proc/self/status")?;
        let bounding = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .ok_or_else(|| io::Error::other("no CapBnd line in /proc/self/status"))?;
        Ok(NodeSettings {
            cgroup_parent: cgroup_parent.to_string(),
            pids_limit,
            capabilities: capabilities_of_mask(bounding),
            cgroup_namespace: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        })
    }
}

/// The names of the capabilities set in a mask (as in `/proc/*/status`).
pub fn capabilities_of_mask(mask: u64) -> Vec<String> {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(n, _)| mask & (1 << n) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

// === impl SecurityContext ===

/// A container's security settings with the pod's as fallback, as Kubernetes merges them.
pub struct SecurityContext<'a> {
    container: &'a Value,
    pod: &'a Value,
}

impl<'a> SecurityContext<'a> {
    pub fn of(pod: &'a Value, container: &'a Value) -> SecurityContext<'a> {
        SecurityContext {
            container: &container["securityContext"],
            pod: &pod["spec"]["securityContext"],
        }
    }

    /// A field the pod-level context also has (container wins).
    fn field(&self, key: &str) -> &'a Value {
        match self.container.get(key) {
            Some(v) if !v.is_null() => v,
            _ => &self.pod[key],
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        self.field(key).as_bool()
    }

    /// A field only the container's context has.
    fn container_bool(&self, key: &str) -> Option<bool> {
        self.container[key].as_bool()
    }

    fn id(&self, key: &str) -> Result<Option<u32>> {
        let v = self.field(key);
        if v.is_null() {
            return Ok(None);
        }
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    &format!("securityContext.{key}"),
                    "must be a uid/gid from 0 to 4294967295",
                )
            })
    }

    fn seccomp_type(&self) -> Option<&'a str> {
        self.field("seccompProfile")["type"].as_str()
    }
}

/// The process environment: `PATH` (containerd's default if the image sets none),
/// `HOSTNAME`, the image's, then the container's; a later name replaces an earlier in place.
fn process_env(input: &ContainerInput) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match vars.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => vars.push((k.to_string(), v.to_string())),
    };
    if !input.image.env.iter().any(|e| e.starts_with("PATH=")) {
        set("PATH", DEFAULT_PATH);
    }
    set("HOSTNAME", &input.sandbox.hostname);
    for e in &input.image.env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k, v);
    }
    for (k, v) in input.env {
        set(k, v);
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The mounts: containerd's defaults, the sandbox's files and shm, the volume mounts (by
/// depth, so a parent is mounted before what lies inside it) and the runtime's extras; a
/// volume mounted where a default would go replaces it. Returns the rootfs propagation the
/// mounts need.
fn mounts(input: &ContainerInput, privileged: bool) -> Result<(Vec<Mount>, Option<&'static str>)> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let m = |dest: &str, kind: &str, source: &str, options: &[&str]| Mount {
        destination: dest.to_string(),
        kind: kind.to_string(),
        source: source.to_string(),
        options: options.iter().map(|s| s.to_string()).collect(),
    };
    let bind = |dest: &str, source: &Path, options: [&str; 3]| Mount {
        destination: dest.to_string(),
        kind: "bind".to_string(),
        source: source.to_string_lossy().into_owned(),
        options: options.iter().map(|s| s.to_string()).collect(),
    };
    let read_only_root =
        input.container["securityContext"]["readOnlyRootFilesystem"].as_bool() == Some(true);
    let etc_mode = if read_only_root { "ro" } else { "rw" };
    let mut defaults = vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
        bind(
            "/dev/shm",
            input
                .sandbox
                .shm
                .as_deref()
                .unwrap_or(Path::new("/dev/shm")),
            ["rbind", "rprivate", "rw"],
        ),
        bind(
            "/etc/hosts",
            &input.sandbox.hosts,
            ["rbind", "rprivate", etc_mode],
        ),
        bind(
            "/etc/hostname",
            &input.sandbox.hostname_file,
            ["rbind", "rprivate", etc_mode],
        ),
        bind(
            "/etc/resolv.conf",
            &input.sandbox.resolv_conf,
            ["rbind", "rprivate", etc_mode],
        ),
    ];
    let container_name = input.container["name"].as_str().unwrap_or("");
    let env_map = |n: &str| {
        input
            .env
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let mut user = Vec::new();
    let mut propagation = None;
    for (index, vm) in env::array(input.container, "volumeMounts").enumerate() {
        let name = vm["name"].as_str().unwrap_or("");
        let mount_path = vm["mountPath"].as_str().unwrap_or("");
        if !mount_path.starts_with('/') {
            return Err(invalid(
                "volumeMounts.mountPath",
                &format!("{mount_path:?} must be an absolute path"),
            ));
        }
        let volume = input
            .volumes
            .get(name)
            .ok_or_else(|| BundleError::NoSuchVolume {
                volume: name.to_string(),
                mount_path: mount_path.to_string(),
            })?;
        let sub_path = match (vm["subPath"].as_str(), vm["subPathExpr"].as_str()) {
            (Some(s), Some(e)) if !s.is_empty() && !e.is_empty() => {
                return Err(invalid(
                    "volumeMounts",
                    "subPath and subPathExpr are mutually exclusive",
                ));
            }
            (Some(s), _) if !s.is_empty() => Some(s.to_string()),
            (_, Some(e)) if !e.is_empty() => Some(env::expand(e, env_map)),
            _ => None,
        };
        let source = match sub_path {
            Some(sub) => {
                volumes::pin_subpath(&input.sandbox.pod_dir, volume, &sub, container_name, index)?
            }
            None => volume.path.clone(),
        };
        let mode = match vm["mountPropagation"].as_str() {
            None | Some("None") | Some("") => "rprivate",
            Some("HostToContainer") => {
                propagation = propagation.or(Some("rslave"));
                "rslave"
            }
            Some("Bidirectional") if privileged => {
                propagation = Some("rshared");
                "rshared"
            }
            Some("Bidirectional") => {
                return Err(invalid(
                    "volumeMounts.mountPropagation",
                    "Bidirectional needs a privileged container",
                ));
            }
            Some(other) => {
                return Err(invalid(
                    "volumeMounts.mountPropagation",
                    &format!("unknown mode {other:?}"),
                ));
            }
        };
        let read_only = vm["readOnly"].as_bool().unwrap_or(false) || volume.always_read_only();
        user.push(bind(
            mount_path,
            &source,
            ["rbind", mode, if read_only { "ro" } else { "rw" }],
        ));
    }
    user.extend(input.extra_mounts.iter().cloned());
    defaults.retain(|d| {
        !user
            .iter()
            .any(|u| clean_path(&u.destination) == d.destination)
    });
    // Stable: mounts of equal depth keep the pod's order.
    user.sort_by_key(|m| Path::new(&m.destination).components().count());
    defaults.extend(user);
    Ok((defaults, propagation))
}

/// The namespaces: a new mount (and, on the unified hierarchy, cgroup) namespace; PID new
/// unless hostPID or shareProcessNamespace; network, IPC and UTS the sandbox's.
fn namespaces(input: &ContainerInput) -> Result<Value> {
    let spec = &input.pod["spec"];
    let mut out = vec![json!({"type": "mount"})];
    if input.node.cgroup_namespace {
        out.push(json!({"type": "cgroup"}));
    }
    if spec["hostPID"].as_bool() != Some(true) {
        if spec["shareProcessNamespace"].as_bool() == Some(true) {
            let path = input.pod_pid_namespace.ok_or_else(|| {
                BundleError::Unsupported(
                    "shareProcessNamespace without a pod PID namespace from the runtime".into(),
                )
            })?;
            out.push(json!({"type": "pid", "path": path}));
        } else {
            out.push(json!({"type": "pid"}));
        }
    }
    for (kind, ns) in [
        ("network", &input.sandbox.network),
        ("ipc", &input.sandbox.ipc),
        ("uts", &input.sandbox.uts),
    ] {
        if let Namespace::Path(p) = ns {
            out.push(json!({"type": kind, "path": p}));
        }
    }
    Ok(Value::Array(out))
}

/// The node's devices for a privileged container, as containerd's `WithHostDevices` lists them
/// (`/dev` without pts, shm, mqueue, fd and console).
fn host_devices() -> Vec<Value> {
    fn walk(dir: &Path, out: &mut Vec<Value>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if matches!(
                name.to_str(),
                Some("pts" | "shm" | "mqueue" | "fd" | "console" | ".lxc" | ".udev")
            ) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                walk(&path, out);
                continue;
            }
            let letter = if kind.is_char_device() {
                "c"
            } else if kind.is_block_device() {
                "b"
            } else {
                continue;
            };
            out.push(json!({
                "path": path,
                "type": letter,
                "major": nix::sys::stat::major(meta.rdev()),
                "minor": nix::sys::stat::minor(meta.rdev()),
                "fileMode": meta.mode() & 0o777,
                "uid": meta.uid(),
                "gid": meta.gid(),
            }));
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out);
    out
}

/// One account line: `name:x:id:gid:...` (passwd) or `name:x:id:member,...` (group).
#[derive(Debug)]
struct Account {
    name: String,
    id: u32,
    gid: u32,
    members: Vec<String>,
}

struct Accounts;

impl Accounts {
    fn passwd(text: &str) -> Vec<Account> {
        Self::parse(text, |f| {
            Some(Account {
                name: f.first()?.to_string(),
                id: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                members: Vec::new(),
            })
        })
    }

    fn group(text: &str) -> Vec<Account> {
        Self::parse(text, |f| {
            let id = f.get(2)?.parse().ok()?;
            Some(Account {
                name: f.first()?.to_string(),
                id,
                gid: id,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
    }

    fn parse(text: &str, entry: impl Fn(&[&str]) -> Option<Account>) -> Vec<Account> {
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| entry(&l.split(':').collect::<Vec<_>>()))
            .collect()
    }
}

/// Reads `rel` from the root filesystem with every path step (symlinks included) kept inside
/// it; a missing file reads as empty.
fn read_in_root(root: &Path, rel: &str) -> Result<String> {
    let io = |op, source| BundleError::Io {
        op,
        path: root.join(rel),
        source,
    };
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open", e.into()))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match nix::fcntl::openat2(dir.as_fd(), rel, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(String::new()),
        Err(e) => return Err(io("open", e.into())),
    };
    let file = fs::File::from(fd);
    if !file.metadata().map_err(|e| io("stat", e))?.is_file() {
        return Err(io("read", io::Error::other("not a regular file")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ACCOUNT_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io("read", e))?;
    if bytes.len() as u64 > MAX_ACCOUNT_FILE {
        return Err(io("read", io::Error::other("larger than 4 MiB")));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn normalize_capability(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

fn capability_number(name: &str) -> Option<usize> {
    ALL_CAPABILITIES.iter().position(|c| *c == name)
}

/// A name that becomes a path component (cgroup, subpath pin): no `/`, not `.`-led, not empty.
fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
        return Err(invalid(what, &format!("{name:?} cannot name a directory")));
    }
    Ok(())
}

/// A mount destination without a trailing slash or `.` parts, for comparing destinations.
fn clean_path(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

fn invalid(field: &str, reason: &str) -> BundleError {
    BundleError::Invalid {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

// Named by path so the file resolves the same when tests/bundle.rs compiles this module.
#[cfg(test)]
#[path = "bundle/tests.rs"]
mod tests;
