//! A pod's volumes, materialised under its pod directory the way kubelet lays them out:
//! `<pod dir>/volumes/<plugin>/<name>` (`kubernetes.io~empty-dir`, `kubernetes.io~configmap`,
//! `kubernetes.io~secret`, `kubernetes.io~projected`, `kubernetes.io~downward-api`); a
//! hostPath volume is the host path itself, and a persistentVolumeClaim volume the path of the
//! PersistentVolume it is bound to ([`claims`]). Also the safe resolution of a volume mount's
//! `subPath` ([`pin_subpath`]) and the teardown of all of it.
//!
//! What it owns: the files and mounts under `<pod dir>/volumes` and `<pod dir>/volume-subpaths`,
//! and the creation of local-path volume directories under the node's storage path.
//! What it leaves to others: fetching the ConfigMaps, Secrets and claims (the caller
//! prefetches them behind [`Objects`]), deciding when to call [`update`] (when a referenced
//! object changes), the pod directory itself and the sandbox's files in it, and removing
//! released local volumes (`super::storage`).
//!
//! Invariants:
//! - ConfigMap, Secret, projected and downwardAPI volumes are written kubelet's atomic way: the
//!   files live in a `..<timestamp>` directory, `..data` is a symlink to it, and each top-level
//!   name is a symlink through `..data`. An update writes a new timestamped directory and swaps
//!   `..data` with one `rename`, so a reader sees the old set or the new set, never a mix.
//! - No `items[].path` is absolute, contains a `..` component or starts with `..`: such a path
//!   is refused before anything is written.
//! - A `subPath` is resolved by the kernel beneath its volume (`openat2` with
//!   `RESOLVE_BENEATH`: symlinks may not lead out) and pinned with a bind mount of the opened
//!   file descriptor, so swapping a directory for a symlink afterwards changes nothing.
//! - Teardown unmounts everything mounted below the pod directory before it deletes, deletes
//!   without following symlinks, and deletes nothing while a mount below remains.
//! - Like `env`, this module imports only its siblings and `crate::api::quantity`.
//!
//! Projected `serviceAccountToken` sources are written from the tokens the caller fetched
//! (through [`Objects`], like ConfigMaps).
//!
//! Not done: a non-memory emptyDir's `sizeLimit` is not enforced (kubelet does it by eviction);
//! projected `clusterTrustBundle` sources are refused; volume types that need a storage driver
//! (nfs, csi, ephemeral, …) are refused, as are PersistentVolumes of other sources than
//! `hostPath` and `local`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use serde_json::Value;

use super::env::{self, Objects, PodContext};
use crate::api::quantity;

pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
pub const CONFIG_MAP: &str = "kubernetes.io~configmap";
pub const SECRET: &str = "kubernetes.io~secret";
pub const PROJECTED: &str = "kubernetes.io~projected";
pub const DOWNWARD_API: &str = "kubernetes.io~downward-api";

// Named by path so the file resolves the same when tests/bundle.rs compiles this module.
#[path = "volumes/claims.rs"]
pub mod claims;

/// Kubernetes' default file mode for API-data volumes (0644).
const DEFAULT_MODE: u32 = 0o644;
/// Kubelet's limits for an item path and each of its parts.
const MAX_PATH_LENGTH: usize = 4096;
const MAX_NAME_LENGTH: usize = 255;
/// The `..data` symlink that names the current generation, and its stand-in during a swap.
const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// Why a volume could not be set up or torn down. Set-up errors are the pod's
/// `MountVolume.SetUp failed` events: fix the pod or create the missing object, and retry
/// when it changes. Teardown errors are the node's (a busy mount, a permission problem) and
/// are retried.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume {volume:?} : {cause}")]
    SetUp { volume: String, cause: Box<Cause> },
    #[error("volume teardown failed at {path}: {source}")]
    TearDown {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A `subPath`/`subPathExpr` that is malformed, escapes its volume or cannot be pinned.
    #[error("subPath {sub_path:?} of volume {volume:?}: {cause}")]
    SubPath {
        volume: String,
        sub_path: String,
        cause: Box<Cause>,
    },
}

/// What went wrong with one volume (the part after the volume name in kubelet's message).
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    /// Retryable: the claim may be created yet.
    #[error("persistentvolumeclaim {0:?} not found")]
    ClaimNotFound(String),
    /// Retryable: the binder (or local-path provisioner) binds it soon after the scheduler
    /// binds the pod.
    #[error("persistentvolumeclaim {0:?} is not bound")]
    ClaimNotBound(String),
    /// A local-path volume whose directory is not safely under the node's storage path.
    #[error(
        "{path}: {reason} (local-path volumes live under the node's storage path {storage}, set with --default-local-storage-path)"
    )]
    Storage {
        path: PathBuf,
        storage: PathBuf,
        reason: String,
    },
    #[error("configmap references non-existent config key: {0}")]
    ConfigMapKey(String),
    #[error("references non-existent secret key: {0}")]
    SecretKey(String),
    /// An item path or subPath that is not a plain relative path inside the volume.
    #[error("invalid path {path:?}: {reason}")]
    Path { path: String, reason: &'static str },
    /// Two sources of one projected volume write the same path.
    #[error("conflicting duplicate paths: {0}")]
    DuplicatePath(String),
    /// A hostPath `type` check failed (kubelet's wording).
    #[error("hostPath type check failed: {path} is not a {expected}")]
    HostPathType {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{0}")]
    Field(#[from] env::EnvError),
    #[error("{field}: {source}")]
    Quantity {
        field: String,
        source: quantity::Error,
    },
    #[error("{0} is not supported by keelson yet")]
    Unsupported(String),
    /// The node has no token for a projected serviceAccountToken source (yet).
    #[error("no service account token for the pod yet (the server did not issue one)")]
    NoToken,
    #[error("invalid volume: {0}")]
    Invalid(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

/// A pod's materialised volumes, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Volumes {
    /// Invariant: one entry per volume of the pod spec, in spec order, names unique.
    pub list: Vec<Volume>,
}

/// One materialised volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub kind: Kind,
    /// What a container mounts: the directory under the pod dir, the hostPath, or the path of
    /// the claim's PersistentVolume.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    EmptyDir {
        memory: bool,
    },
    HostPath,
    ConfigMap,
    Secret,
    Projected,
    DownwardApi,
    /// `readOnly` is the pod volume's own (a mount may also ask for read-only).
    PersistentVolumeClaim {
        read_only: bool,
    },
}

/// Everything a volume's content is computed from.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub pod: PodContext<'a>,
    pub objects: &'a dyn Objects,
    /// The node's storage path (`--default-local-storage-path`), where local-path volumes are.
    pub local_storage: &'a Path,
}

/// One file of an API-data volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative, validated by [`check_item_path`].
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Materialises every volume of the pod under `pod_dir` (idempotent: a volume already set up
/// is kept, an API-data volume's content brought up to date).
pub fn set_up(pod_dir: &Path, sources: &Sources) -> Result<Volumes> {
    let fs_group = fs_group(sources.pod.pod);
    let mut out = Volumes::default();
    for spec in env::array(&sources.pod.pod["spec"], "volumes") {
        let name = spec["name"].as_str().unwrap_or("");
        let fail = |cause| VolumeError::SetUp {
            volume: name.to_string(),
            cause: Box::new(cause),
        };
        check_volume_name(name).map_err(fail)?;
        let kind = kind_of(spec).map_err(fail)?;
        let path = match kind {
            Kind::HostPath => host_path(&spec["hostPath"]).map_err(fail)?,
            Kind::PersistentVolumeClaim { read_only } => {
                claims::set_up(&spec["persistentVolumeClaim"], read_only, sources).map_err(fail)?
            }
            _ => pod_dir.join("volumes").join(plugin(kind)).join(name),
        };
        match kind {
            Kind::EmptyDir { memory } => {
                empty_dir(&path, memory, &spec["emptyDir"], sources.pod.pod, fs_group)
                    .map_err(fail)?
            }
            Kind::HostPath | Kind::PersistentVolumeClaim { .. } => {}
            _ => {
                let files = payload(spec, kind, sources).map_err(fail)?;
                write_atomic(&path, &files, fs_group).map_err(fail)?;
            }
        }
        out.list.push(Volume {
            name: name.to_string(),
            kind,
            path,
        });
    }
    Ok(out)
}

/// Rewrites the API-data volumes whose content changed (call it when a ConfigMap or Secret
/// the pod references changes, or its labels/annotations do). Returns the names of the
/// volumes that changed; a running container sees the new files at once, except through a
/// `subPath` (pinned to the old file, as in Kubernetes).
pub fn update(pod_dir: &Path, sources: &Sources) -> Result<Vec<String>> {
    let fs_group = fs_group(sources.pod.pod);
    let mut changed = Vec::new();
    for spec in env::array(&sources.pod.pod["spec"], "volumes") {
        let name = spec["name"].as_str().unwrap_or("");
        let fail = |cause| VolumeError::SetUp {
            volume: name.to_string(),
            cause: Box::new(cause),
        };
        check_volume_name(name).map_err(fail)?;
        let kind = kind_of(spec).map_err(fail)?;
        if matches!(
            kind,
            Kind::EmptyDir { .. } | Kind::HostPath | Kind::PersistentVolumeClaim { .. }
        ) {
            continue;
        }
        let path = pod_dir.join("volumes").join(plugin(kind)).join(name);
        let files = payload(spec, kind, sources).map_err(fail)?;
        if write_atomic(&path, &files, fs_group).map_err(fail)? {
            changed.push(name.to_string());
        }
    }
    Ok(changed)
}

/// Unmounts everything mounted below `pod_dir` (memory emptyDirs, pinned subPaths) and
/// removes `<pod dir>/volumes` and `<pod dir>/volume-subpaths`, without following symlinks.
/// Nothing is removed while anything below the pod dir is still mounted.
pub fn tear_down(pod_dir: &Path) -> Result<()> {
    unmount_below(pod_dir)?;
    for sub in ["volume-subpaths", "volumes"] {
        let dir = pod_dir.join(sub);
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(VolumeError::TearDown { path: dir, source }),
            // A symlink in place of our directory: remove the link, never what it points at.
            Ok(m) if m.file_type().is_symlink() => fs::remove_file(&dir),
            Ok(_) => fs::remove_dir_all(&dir),
        }
        .map_err(|source| VolumeError::TearDown { path: dir, source })?;
    }
    Ok(())
}

/// Unmounts (lazily) every mount point strictly below `dir`, deepest first, and checks that
/// none is left.
pub fn unmount_below(dir: &Path) -> Result<()> {
    let tear = |source| VolumeError::TearDown {
        path: dir.to_path_buf(),
        source,
    };
    let base = match fs::canonicalize(dir) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(tear(e)),
    };
    for mount in mounts_below(&base).map_err(tear)?.iter().rev() {
        unmount_all(mount).map_err(|source| VolumeError::TearDown {
            path: mount.clone(),
            source,
        })?;
    }
    if let Some(left) = mounts_below(&base).map_err(tear)?.first() {
        return Err(VolumeError::TearDown {
            path: left.clone(),
            source: io::Error::other("still mounted after unmount"),
        });
    }
    Ok(())
}

/// Resolves `sub_path` inside `volume`, creating missing directories as kubelet does, and
/// pins it with a bind mount at `<pod dir>/volume-subpaths/<volume>/<container>/<index>`,
/// which it returns: the container mounts that path.
///
/// Refused: an absolute path, a `..` component, and any path whose symlinks lead out of the
/// volume (the kernel resolves it beneath the volume root, `RESOLVE_BENEATH`).
pub fn pin_subpath(
    pod_dir: &Path,
    volume: &Volume,
    sub_path: &str,
    container: &str,
    index: usize,
) -> Result<PathBuf> {
    let fail = |cause| VolumeError::SubPath {
        volume: volume.name.clone(),
        sub_path: sub_path.to_string(),
        cause: Box::new(cause),
    };
    let io_fail = |op, path: &Path, e: io::Error| {
        fail(Cause::Io {
            op,
            path: path.to_path_buf(),
            source: e,
        })
    };
    check_sub_path(sub_path).map_err(fail)?;
    if container.is_empty() || container.contains('/') || container.starts_with('.') {
        return Err(fail(Cause::Invalid(format!(
            "bad container name {container:?}"
        ))));
    }
    let root = open_path(&volume.path).map_err(|e| io_fail("open", &volume.path, e))?;
    let target_fd = open_beneath(&root, sub_path, true).map_err(fail)?;
    let is_dir = nix::sys::stat::fstat(target_fd.as_fd())
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map_err(|e| io_fail("stat", &volume.path.join(sub_path), e.into()))?;
    let pin = pod_dir
        .join("volume-subpaths")
        .join(&volume.name)
        .join(container)
        .join(index.to_string());
    let parent = pin.parent().unwrap_or(pod_dir);
    fs::create_dir_all(parent).map_err(|e| io_fail("create", parent, e))?;
    // A pin from an earlier start of this container: replace it. (Bind mounts from the same
    // filesystem keep the device number, so only the mount table tells.)
    unmount_all(&pin).map_err(|e| io_fail("unmount", &pin, e))?;
    match fs::symlink_metadata(&pin) {
        Ok(m) if m.is_dir() == is_dir && !m.file_type().is_symlink() => {}
        Ok(m) => {
            if m.is_dir() {
                fs::remove_dir(&pin)
            } else {
                fs::remove_file(&pin)
            }
            .map_err(|e| io_fail("remove", &pin, e))?;
        }
        Err(_) => {}
    }
    if fs::symlink_metadata(&pin).is_err() {
        if is_dir {
            fs::create_dir(&pin)
        } else {
            fs::File::create(&pin).map(drop)
        }
        .map_err(|e| io_fail("create", &pin, e))?;
    }
    // The fd, not the path: what was checked is what gets mounted.
    let source = PathBuf::from(format!("/proc/self/fd/{}", target_fd.as_raw_fd()));
    nix::mount::mount(
        Some(&source),
        &pin,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io_fail("bind-mount onto", &pin, e.into()))?;
    Ok(pin)
}

/// Checks an `items[].path` (kubelet's atomic writer rules and API validation).
pub fn check_item_path(path: &str) -> Result<(), Cause> {
    let bad = |reason| {
        Err(Cause::Path {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("must not be empty");
    }
    if path.starts_with('/') {
        return bad("must be a relative path");
    }
    if path.len() > MAX_PATH_LENGTH {
        return bad("must not be longer than 4096 characters");
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.contains(&"..") {
        return bad("must not contain '..'");
    }
    if parts.iter().any(|p| p.len() > MAX_NAME_LENGTH) {
        return bad("must not have a part longer than 255 characters");
    }
    // `..data`, `..<timestamp>` are the writer's own names: no item may land among them, even
    // spelt `./..x`.
    let mut named = parts.iter().filter(|p| !p.is_empty() && **p != ".");
    match named.next() {
        None => return bad("must name a file"),
        Some(first) if first.starts_with("..") => return bad("must not start with '..'"),
        Some(_) => {}
    }
    Ok(())
}

/// Checks a `subPath` (API validation: relative, no `..` component).
pub fn check_sub_path(sub_path: &str) -> Result<(), Cause> {
    let bad = |reason| {
        Err(Cause::Path {
            path: sub_path.to_string(),
            reason,
        })
    };
    let p = Path::new(sub_path);
    if p.is_absolute() {
        return bad("must be a relative path");
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return bad("must not contain '..'");
    }
    Ok(())
}

/// Writes `files` into `dir` the atomic way (see the module doc). Returns whether anything
/// changed: an identical payload is left alone.
pub fn write_atomic(dir: &Path, files: &[FileEntry], fs_group: Option<u32>) -> Result<bool, Cause> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| Cause::Io { op, path, source }
    };
    for f in files {
        check_item_path(&f.path)?;
    }
    let wanted: BTreeMap<String, (Vec<u8>, u32)> = files
        .iter()
        .map(|f| (clean(&f.path), (f.data.clone(), f.mode)))
        .collect();
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let link = dir.join(DATA_LINK);
    let old = match fs::read_link(&link) {
        Ok(target) => generation_name(&target),
        Err(_) => None,
    };
    if let Some(old) = &old
        && read_tree(&dir.join(old)).is_ok_and(|have| have == wanted)
    {
        return Ok(false);
    }
    let generation = new_generation(dir).map_err(io("create", dir))?;
    let gen_dir = dir.join(&generation);
    for (path, (data, mode)) in &wanted {
        let file = gen_dir.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        fs::write(&file, data).map_err(io("write", &file))?;
        // Set explicitly: the process umask must not narrow what the pod asked for.
        fs::set_permissions(&file, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io("chmod", &file))?;
    }
    if let Some(gid) = fs_group {
        give_to_group(&gen_dir, gid, true).map_err(io("chown", &gen_dir))?;
    }
    let tmp = dir.join(DATA_LINK_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&generation, &tmp).map_err(io("symlink", &tmp))?;
    fs::rename(&tmp, &link).map_err(io("rename", &link))?;
    // User-visible names: one symlink per top-level part, through `..data`.
    let top: BTreeSet<&str> = wanted.keys().filter_map(|p| p.split('/').next()).collect();
    for name in &top {
        let visible = dir.join(name);
        if fs::symlink_metadata(&visible).is_err() {
            symlink(Path::new(DATA_LINK).join(name), &visible).map_err(io("symlink", &visible))?;
        }
    }
    for entry in fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if !name.starts_with("..") && is_link && !top.contains(name.as_ref()) {
            fs::remove_file(entry.path()).map_err(io("remove", &entry.path()))?;
        }
    }
    if let Some(old) = old {
        let old_dir = dir.join(old);
        if fs::symlink_metadata(&old_dir).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&old_dir).map_err(io("remove", &old_dir))?;
        }
    }
    Ok(true)
}

/// The files of one API-data volume (configMap, secret, projected, downwardAPI).
pub fn payload(spec: &Value, kind: Kind, sources: &Sources) -> Result<Vec<FileEntry>, Cause> {
    let namespace = env::str_at(sources.pod.pod, &["metadata", "namespace"]).unwrap_or("default");
    let source = |key: &str| &spec[key];
    let files = match kind {
        Kind::ConfigMap => {
            let s = source("configMap");
            let mode = mode(s, "defaultMode", DEFAULT_MODE)?;
            config_map_files(s, namespace, mode, sources)?
        }
        Kind::Secret => {
            let s = source("secret");
            let mode = mode(s, "defaultMode", DEFAULT_MODE)?;
            secret_files(s, "secretName", namespace, mode, sources)?
        }
        Kind::DownwardApi => {
            let s = source("downwardAPI");
            let mode = mode(s, "defaultMode", DEFAULT_MODE)?;
            downward_files(s, mode, sources)?
        }
        Kind::Projected => {
            let p = source("projected");
            let mode = mode(p, "defaultMode", DEFAULT_MODE)?;
            let mut all: Vec<FileEntry> = Vec::new();
            for s in env::array(p, "sources") {
                let part = if let Some(c) = s.get("configMap") {
                    config_map_files(c, namespace, mode, sources)?
                } else if let Some(c) = s.get("secret") {
                    secret_files(c, "name", namespace, mode, sources)?
                } else if let Some(c) = s.get("downwardAPI") {
                    downward_files(c, mode, sources)?
                } else if let Some(t) = s.get("serviceAccountToken") {
                    token_file(t, mode, sources)?
                } else if s.get("clusterTrustBundle").is_some() {
                    return Err(Cause::Unsupported(
                        "a projected clusterTrustBundle source".into(),
                    ));
                } else {
                    return Err(Cause::Invalid(
                        "a projected source with no known kind".into(),
                    ));
                };
                for f in part {
                    if all.iter().any(|g| clean(&g.path) == clean(&f.path)) {
                        return Err(Cause::DuplicatePath(f.path));
                    }
                    all.push(f);
                }
            }
            all
        }
        Kind::EmptyDir { .. } | Kind::HostPath | Kind::PersistentVolumeClaim { .. } => Vec::new(),
    };
    for f in &files {
        check_item_path(&f.path)?;
    }
    Ok(files)
}

/// The pod's `securityContext.fsGroup`, which group-owns its writable and API-data volumes.
pub fn fs_group(pod: &Value) -> Option<u32> {
    pod["spec"]["securityContext"]["fsGroup"]
        .as_u64()
        .and_then(|g| u32::try_from(g).ok())
}

// === impl Volumes ===

impl Volumes {
    pub fn get(&self, name: &str) -> Option<&Volume> {
        self.list.iter().find(|v| v.name == name)
    }
}

// === impl Volume ===

impl Volume {
    /// API-data volumes are always mounted read-only, as kubelet does, and so is a claim the
    /// pod's volume asks for `readOnly`.
    pub fn always_read_only(&self) -> bool {
        matches!(
            self.kind,
            Kind::ConfigMap
                | Kind::Secret
                | Kind::Projected
                | Kind::DownwardApi
                | Kind::PersistentVolumeClaim { read_only: true }
        )
    }
}

/// A volume name becomes a directory name: it must be one plain path part.
fn check_volume_name(name: &str) -> Result<(), Cause> {
    if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
        return Err(Cause::Invalid(format!("bad volume name {name:?}")));
    }
    Ok(())
}

fn kind_of(spec: &Value) -> Result<Kind, Cause> {
    let has = |k: &str| spec.get(k).is_some_and(|v| !v.is_null());
    Ok(if has("emptyDir") {
        Kind::EmptyDir {
            memory: spec["emptyDir"]["medium"].as_str() == Some("Memory"),
        }
    } else if has("hostPath") {
        Kind::HostPath
    } else if has("configMap") {
        Kind::ConfigMap
    } else if has("secret") {
        Kind::Secret
    } else if has("projected") {
        Kind::Projected
    } else if has("downwardAPI") {
        Kind::DownwardApi
    } else if has("persistentVolumeClaim") {
        Kind::PersistentVolumeClaim {
            read_only: spec["persistentVolumeClaim"]["readOnly"].as_bool() == Some(true),
        }
    } else {
        let other = spec
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "name"))
            .map(String::as_str)
            .unwrap_or("a volume without a source");
        return Err(Cause::Unsupported(format!("volume type {other}")));
    })
}

fn plugin(kind: Kind) -> &'static str {
    match kind {
        Kind::EmptyDir { .. } => EMPTY_DIR,
        Kind::ConfigMap => CONFIG_MAP,
        Kind::Secret => SECRET,
        Kind::Projected => PROJECTED,
        Kind::DownwardApi => DOWNWARD_API,
        // Never joined to the pod dir.
        Kind::HostPath => "kubernetes.io~host-path",
        Kind::PersistentVolumeClaim { .. } => "kubernetes.io~persistent-volume-claim",
    }
}

/// An emptyDir: a directory anyone in the pod may write (0777, as kubelet makes it), or a
/// tmpfs for `medium: Memory`, sized by `sizeLimit`, else by the pod's memory limits when
/// every container has one, else the kernel's default (half of RAM).
fn empty_dir(
    dir: &Path,
    memory: bool,
    spec: &Value,
    pod: &Value,
    fs_group: Option<u32>,
) -> Result<(), Cause> {
    let io = |op, source| Cause::Io {
        op,
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    if memory && !is_mount_point(dir) {
        let size = match spec["sizeLimit"].as_str() {
            Some(text) => Some(
                quantity::parse(text)
                    .map_err(|source| Cause::Quantity {
                        field: "emptyDir.sizeLimit".into(),
                        source,
                    })?
                    .value(),
            ),
            None => pod_memory_limit(pod),
        };
        let mut options = "mode=0777".to_string();
        if let Some(size) = size.filter(|s| *s > 0) {
            options.push_str(&format!(",size={size}"));
        }
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| io("mount tmpfs on", e.into()))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).map_err(|e| io("chmod", e))?;
    if let Some(gid) = fs_group {
        give_to_group(dir, gid, false).map_err(|e| io("chown", e))?;
    }
    Ok(())
}

/// The sum of the containers' memory limits, if every container has one.
fn pod_memory_limit(pod: &Value) -> Option<i64> {
    env::array(&pod["spec"], "containers").try_fold(0i64, |sum, c| {
        let text = c["resources"]["limits"]["memory"].as_str()?;
        Some(sum.saturating_add(quantity::parse(text).ok()?.value()))
    })
}

/// A hostPath volume's path, after its `type` checks (kubelet's order and wording).
fn host_path(spec: &Value) -> Result<PathBuf, Cause> {
    let path = PathBuf::from(spec["path"].as_str().unwrap_or(""));
    if !path.is_absolute() {
        return Err(Cause::Invalid(format!(
            "hostPath.path {} must be an absolute path",
            path.display()
        )));
    }
    let io = |op, source| Cause::Io {
        op,
        path: path.clone(),
        source,
    };
    let meta = fs::metadata(&path).ok();
    let wrong = |expected| {
        Err(Cause::HostPathType {
            path: path.clone(),
            expected,
        })
    };
    use std::os::unix::fs::FileTypeExt;
    match spec["type"].as_str().unwrap_or("") {
        "" => {}
        "DirectoryOrCreate" if meta.is_none() => {
            fs::create_dir_all(&path).map_err(|e| io("create", e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(|e| io("chmod", e))?;
        }
        "DirectoryOrCreate" | "Directory" => {
            if !meta.is_some_and(|m| m.is_dir()) {
                return wrong("directory");
            }
        }
        "FileOrCreate" if meta.is_none() => {
            // The parent must exist, as in kubelet.
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io("create", e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                .map_err(|e| io("chmod", e))?;
        }
        "FileOrCreate" | "File" => {
            if !meta.is_some_and(|m| m.is_file()) {
                return wrong("file");
            }
        }
        "Socket" => {
            if !meta.is_some_and(|m| m.file_type().is_socket()) {
                return wrong("socket file");
            }
        }
        "CharDevice" => {
            if !meta.is_some_and(|m| m.file_type().is_char_device()) {
                return wrong("character device");
            }
        }
        "BlockDevice" => {
            if !meta.is_some_and(|m| m.file_type().is_block_device()) {
                return wrong("block device");
            }
        }
        other => return Err(Cause::Invalid(format!("unknown hostPath type {other:?}"))),
    }
    Ok(path)
}

/// A projected `serviceAccountToken` source: the token the caller fetched for its audience
/// and lifetime, at its `path`.
fn token_file(s: &Value, default_mode: u32, sources: &Sources) -> Result<Vec<FileEntry>, Cause> {
    let path = s["path"].as_str().unwrap_or("");
    if path.is_empty() {
        return Err(Cause::Invalid(
            "a serviceAccountToken source needs a path".into(),
        ));
    }
    let audience = s["audience"].as_str().unwrap_or("");
    let seconds = s["expirationSeconds"]
        .as_i64()
        .unwrap_or(env::DEFAULT_TOKEN_SECONDS);
    let token = sources
        .objects
        .service_account_token(audience, seconds)
        .ok_or(Cause::NoToken)?;
    Ok(vec![FileEntry {
        path: path.to_owned(),
        data: token.as_bytes().to_vec(),
        mode: default_mode,
    }])
}

fn config_map_files(
    s: &Value,
    namespace: &str,
    default_mode: u32,
    sources: &Sources,
) -> Result<Vec<FileEntry>, Cause> {
    let name = s["name"].as_str().unwrap_or("");
    let optional = s["optional"].as_bool().unwrap_or(false);
    let Some(cm) = sources.objects.config_map(namespace, name) else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(Cause::ConfigMapNotFound(name.to_string()))
        };
    };
    let mut data: BTreeMap<String, Vec<u8>> = env::string_data(cm)
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in env::base64_map(&cm["binaryData"]) {
        data.entry(k).or_insert(v);
    }
    select(s, data, default_mode, optional, Cause::ConfigMapKey)
}

fn secret_files(
    s: &Value,
    name_field: &str,
    namespace: &str,
    default_mode: u32,
    sources: &Sources,
) -> Result<Vec<FileEntry>, Cause> {
    let name = s[name_field].as_str().unwrap_or("");
    let optional = s["optional"].as_bool().unwrap_or(false);
    let Some(secret) = sources.objects.secret(namespace, name) else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(Cause::SecretNotFound(name.to_string()))
        };
    };
    let data = env::secret_bytes(secret).into_iter().collect();
    select(s, data, default_mode, optional, Cause::SecretKey)
}

/// Every key as a file, or only `items` (key → path, mode) when given.
fn select(
    s: &Value,
    data: BTreeMap<String, Vec<u8>>,
    default_mode: u32,
    optional: bool,
    missing: fn(String) -> Cause,
) -> Result<Vec<FileEntry>, Cause> {
    let Some(items) = s["items"].as_array().filter(|i| !i.is_empty()) else {
        return Ok(data
            .into_iter()
            .map(|(path, data)| FileEntry {
                path,
                data,
                mode: default_mode,
            })
            .collect());
    };
    let mut out = Vec::new();
    for item in items {
        let key = item["key"].as_str().unwrap_or("");
        let path = item["path"].as_str().unwrap_or("");
        check_item_path(path)?;
        let Some(bytes) = data.get(key) else {
            if optional {
                continue;
            }
            return Err(missing(key.to_string()));
        };
        out.push(FileEntry {
            path: path.to_string(),
            data: bytes.clone(),
            mode: mode(item, "mode", default_mode)?,
        });
    }
    Ok(out)
}

fn downward_files(
    s: &Value,
    default_mode: u32,
    sources: &Sources,
) -> Result<Vec<FileEntry>, Cause> {
    let mut out = Vec::new();
    for item in env::array(s, "items") {
        let path = item["path"].as_str().unwrap_or("");
        check_item_path(path)?;
        let value = if let Some(f) = item.get("fieldRef") {
            let field = f["fieldPath"].as_str().unwrap_or("");
            // Volumes offer the pod's metadata only; spec and status are for env.
            if !field.starts_with("metadata.") {
                return Err(env::EnvError::FieldPath(field.to_string()).into());
            }
            env::field_value(&sources.pod, field)?
        } else if let Some(r) = item.get("resourceFieldRef") {
            let container = r["containerName"].as_str().unwrap_or("");
            let c = env::find_container(sources.pod.pod, container)
                .ok_or_else(|| env::EnvError::NoSuchContainer(container.to_string()))?;
            let resource = r["resource"].as_str().unwrap_or("");
            env::resource_value(&sources.pod, c, resource, env::divisor(r).as_deref())?
        } else {
            return Err(Cause::Invalid(format!(
                "downwardAPI item {path:?} needs fieldRef or resourceFieldRef"
            )));
        };
        out.push(FileEntry {
            path: path.to_string(),
            data: value.into_bytes(),
            mode: mode(item, "mode", default_mode)?,
        });
    }
    Ok(out)
}

fn mode(v: &Value, key: &str, default: u32) -> Result<u32, Cause> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(m) => m
            .as_u64()
            .filter(|m| *m <= 0o777)
            .map(|m| m as u32)
            .ok_or_else(|| Cause::Invalid(format!("{key} {m} is not a file mode (0 to 0777)"))),
    }
}

/// A validated item path without empty and `.` parts.
fn clean(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The generation directory a `..data` link names, if it is one of ours (`..` + one part).
fn generation_name(target: &Path) -> Option<String> {
    let name = target.to_str()?;
    (name.starts_with("..") && name.len() > 2 && !name.contains('/')).then(|| name.to_string())
}

/// Creates a fresh `..<UTC timestamp>.<nanoseconds>` directory in `dir`, as kubelet names them.
fn new_generation(dir: &Path) -> io::Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let mut n = now.nanosecond();
    loop {
        let name = format!("{stamp}.{n}");
        match fs::create_dir(dir.join(&name)) {
            Ok(()) => {
                fs::set_permissions(dir.join(&name), fs::Permissions::from_mode(0o755))?;
                return Ok(name);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n = n.wrapping_add(1),
            Err(e) => return Err(e),
        }
    }
}

/// A generation's files: relative path → (content, mode). Symlinks are not followed.
fn read_tree(dir: &Path) -> io::Result<BTreeMap<String, (Vec<u8>, u32)>> {
    fn walk(base: &Path, rel: &str, out: &mut BTreeMap<String, (Vec<u8>, u32)>) -> io::Result<()> {
        for entry in fs::read_dir(base.join(rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                walk(base, &rel, out)?;
            } else if meta.is_file() {
                out.insert(rel, (fs::read(entry.path())?, meta.mode() & 0o7777));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out)?;
    Ok(out)
}

/// Kubelet's `SetVolumeOwnership`: group-owned by `gid`, group-readable (and writable unless
/// `read_only`), directories setgid so new files inherit the group. Symlinks are skipped.
fn give_to_group(path: &Path, gid: u32, read_only: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    let mut mask = if read_only { 0o440 } else { 0o660 };
    if meta.is_dir() {
        mask |= 0o2110;
        for entry in fs::read_dir(path)? {
            give_to_group(&entry?.path(), gid, read_only)?;
        }
    }
    fs::set_permissions(
        path,
        fs::Permissions::from_mode((meta.mode() & 0o7777) | mask),
    )
}

/// Opens a directory as an `O_PATH` handle.
fn open_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `rel` beneath `root` with the kernel keeping every step (symlinks included) inside
/// `root`. With `create`, missing parts are made as directories (0755), each beneath `root`.
fn open_beneath(root: &OwnedFd, rel: &str, create: bool) -> Result<OwnedFd, Cause> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let escape = |e: Errno| match e {
        Errno::EXDEV | Errno::ELOOP => Cause::Path {
            path: rel.to_string(),
            reason: "leads outside the volume",
        },
        Errno::ENOSYS => {
            Cause::Unsupported("subPath on a kernel without openat2 (Linux < 5.6)".into())
        }
        e => Cause::Io {
            op: "open",
            path: PathBuf::from(rel),
            source: e.into(),
        },
    };
    let rel = if rel.is_empty() { "." } else { rel };
    match nix::fcntl::openat2(root.as_fd(), rel, how()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create => {}
        Err(e) => return Err(escape(e)),
    }
    // Walk down, making what is missing; each prefix is opened beneath the root again, so a
    // symlink planted meanwhile cannot lead out either.
    let mut prefix = PathBuf::new();
    let mut dir = nix::fcntl::openat2(root.as_fd(), ".", how()).map_err(escape)?;
    for part in Path::new(rel).components() {
        let Component::Normal(part) = part else {
            continue;
        };
        prefix.push(part);
        dir = match nix::fcntl::openat2(root.as_fd(), &prefix, how()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match nix::sys::stat::mkdirat(dir.as_fd(), part, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(escape(e)),
                }
                nix::fcntl::openat2(root.as_fd(), &prefix, how()).map_err(escape)?
            }
            Err(e) => return Err(escape(e)),
        };
    }
    Ok(dir)
}

/// Lazily unmounts every mount stacked on `path`; nothing mounted there is no error.
fn unmount_all(path: &Path) -> io::Result<()> {
    loop {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            // Not (or no longer) a mount point, or gone with a parent's lazy unmount.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let (Ok(me), Some(Ok(parent))) = (
        fs::symlink_metadata(path),
        path.parent().map(fs::symlink_metadata),
    ) else {
        return false;
    };
    !me.file_type().is_symlink() && (me.dev() != parent.dev() || me.ino() == parent.ino())
}

/// Mount points strictly below `base` (a canonical path), sorted so parents come first.
pub(crate) fn mounts_below(base: &Path) -> io::Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(base) && p != base)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if b[i] == b'\\' && octal {
            let v = u16::from(b[i + 1] - b'0') * 64
                + u16::from(b[i + 2] - b'0') * 8
                + u16::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// Named by path so the file resolves the same when tests/bundle.rs compiles this module.
#[cfg(test)]
#[path = "volumes/tests.rs"]
mod tests;
