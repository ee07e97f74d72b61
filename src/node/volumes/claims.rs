//! persistentVolumeClaim volumes: from a prefetched claim and the PersistentVolume it is bound
//! to, to the directory a container mounts.
//!
//! What it owns: the binding check, the PersistentVolume's path (a `hostPath` or `local`
//! source), the creation of local-path directories under the node's storage path, and their
//! group ownership for the pod's `fsGroup`. What it leaves to others: fetching the claim
//! (behind [`Objects::claim`]), binding it (the controllers), removing a released volume's
//! directory (`super::super::storage`, which uses [`open_storage`]).
//!
//! Invariants:
//! - A claim is used only when bound both ways: `status.phase == Bound`, the volume present,
//!   and the volume's `spec.claimRef.uid` the claim's uid. Anything else is
//!   [`Cause::ClaimNotBound`] (or [`Cause::ClaimNotFound`]), which the caller retries soon.
//! - A volume provisioned by [`PROVISIONER`] is used only if its path lies strictly under the
//!   storage path, spelt without `.` or `..`, the storage path itself is no symlink, and no
//!   component below it is a symlink or anything but a directory; each component is opened
//!   relative to its parent's descriptor without following symlinks, so what was checked is
//!   what gets created. A refused path creates nothing.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde_json::Value;

use super::{Cause, Sources, give_to_group, host_path};

/// The built-in local-path provisioner's name (K3s's).
pub const PROVISIONER: &str = "rancher.io/local-path";
/// The annotation naming the provisioner that made a PersistentVolume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// A local-path volume's directory, as local-path makes it: anyone in the pod may write.
const LOCAL_PATH_MODE: u32 = 0o777;
/// Directories made between the storage path and a volume's directory.
const PARENT_MODE: u32 = 0o755;

/// The directory of the claim a pod volume names (`source` is its `persistentVolumeClaim`),
/// made ready: created under the storage path for a local-path volume, checked as its type
/// says for a static `hostPath` one, required to exist for a `local` one; then group-owned by
/// the pod's `fsGroup` when the volume supports ownership management (local-path and `local`
/// volumes; a static hostPath is the host's and left alone, as kubelet does).
pub fn set_up(source: &Value, read_only: bool, sources: &Sources) -> Result<PathBuf, Cause> {
    let pod = sources.pod.pod;
    let namespace = super::env::str_at(pod, &["metadata", "namespace"]).unwrap_or("default");
    let name = claim_name(source)?;
    let (_, volume) = bound(name, sources.objects.claim(namespace, name))?;
    let spec = &volume["spec"];
    if spec["volumeMode"].as_str() == Some("Block") {
        return Err(Cause::Unsupported("a Block-mode persistent volume".into()));
    }
    let local_path =
        volume["metadata"]["annotations"][PROVISIONED_BY].as_str() == Some(PROVISIONER);
    let (path, owned) = if let Some(path) = spec["hostPath"]["path"].as_str() {
        if local_path {
            (create_under(sources.local_storage, Path::new(path))?, true)
        } else {
            (host_path(&spec["hostPath"])?, false)
        }
    } else if let Some(path) = spec["local"]["path"].as_str() {
        if local_path {
            (create_under(sources.local_storage, Path::new(path))?, true)
        } else {
            (existing_local(Path::new(path))?, true)
        }
    } else {
        let other = spec
            .as_object()
            .and_then(|o| o.keys().find(|k| is_source(k)))
            .map(String::as_str)
            .unwrap_or("no source");
        return Err(Cause::Unsupported(format!(
            "a persistent volume with {other}"
        )));
    };
    if owned && let Some(gid) = super::fs_group(pod) {
        let on_root_mismatch = pod["spec"]["securityContext"]["fsGroupChangePolicy"].as_str()
            == Some("OnRootMismatch");
        apply_fs_group(&path, gid, read_only, on_root_mismatch).map_err(|source| Cause::Io {
            op: "chown",
            path: path.clone(),
            source,
        })?;
    }
    Ok(path)
}

/// Checks that every claim the pod's volumes name is bound (see the module invariants),
/// before anything of the pod is set up.
pub fn check_bound(pod: &Value, objects: &dyn super::Objects) -> Result<(), super::VolumeError> {
    let namespace = super::env::str_at(pod, &["metadata", "namespace"]).unwrap_or("default");
    for spec in super::env::array(&pod["spec"], "volumes") {
        let Some(source) = spec.get("persistentVolumeClaim").filter(|s| !s.is_null()) else {
            continue;
        };
        let fail = |cause| super::VolumeError::SetUp {
            volume: spec["name"].as_str().unwrap_or("").to_string(),
            cause: Box::new(cause),
        };
        let name = claim_name(source).map_err(fail)?;
        bound(name, objects.claim(namespace, name)).map_err(fail)?;
    }
    Ok(())
}

/// The claim and its volume, if `answer` (the server's `{"claim", "volume"}`) shows it bound.
pub fn bound<'a>(name: &str, answer: Option<&'a Value>) -> Result<(&'a Value, &'a Value), Cause> {
    let answer = answer.ok_or_else(|| Cause::ClaimNotFound(name.to_string()))?;
    let (claim, volume) = (&answer["claim"], &answer["volume"]);
    if !claim.is_object() {
        return Err(Cause::ClaimNotFound(name.to_string()));
    }
    let uid = claim["metadata"]["uid"].as_str().filter(|u| !u.is_empty());
    let bound = claim["status"]["phase"].as_str() == Some("Bound")
        && volume.is_object()
        && uid.is_some()
        && volume["spec"]["claimRef"]["uid"].as_str() == uid;
    if !bound {
        return Err(Cause::ClaimNotBound(name.to_string()));
    }
    Ok((claim, volume))
}

/// Opens the storage path as a directory, refusing it if it is a symlink; with `create`, a
/// missing storage path is made first (0755, parents too).
pub fn open_storage(storage: &Path, create: bool) -> Result<OwnedFd, Cause> {
    let refuse = |reason: &str| Cause::Storage {
        path: storage.to_path_buf(),
        storage: storage.to_path_buf(),
        reason: reason.to_string(),
    };
    let io = |op, source| Cause::Io {
        op,
        path: storage.to_path_buf(),
        source,
    };
    if !storage.is_absolute() {
        return Err(refuse("the storage path is not absolute"));
    }
    match fs::symlink_metadata(storage) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(refuse("the storage path is a symlink"));
        }
        Ok(m) if !m.is_dir() => return Err(refuse("the storage path is not a directory")),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            fs::create_dir_all(storage).map_err(|e| io("create", e))?;
        }
        Err(e) => return Err(io("stat", e)),
    }
    nix::fcntl::open(
        storage,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => refuse("the storage path is a symlink"),
        e => io("open", e.into()),
    })
}

/// The parts of `path` below `storage`, if `path` lies strictly under it, spelt plainly
/// (absolute, no `.` or `..`).
pub fn below_storage<'p>(storage: &Path, path: &'p Path) -> Option<Vec<&'p std::ffi::OsStr>> {
    if !path.is_absolute() || !storage.is_absolute() {
        return None;
    }
    // `components()` drops `.` in the middle and repeated slashes; a `.` or `..` spelt in the
    // text is refused, not normalised.
    let text = path.as_os_str().as_encoded_bytes();
    if text
        .split(|b| *b == b'/')
        .any(|part| part == b"." || part == b"..")
    {
        return None;
    }
    let rel = path.strip_prefix(storage).ok()?;
    let parts: Vec<_> = rel
        .components()
        .map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect::<Option<_>>()?;
    (!parts.is_empty()).then_some(parts)
}

/// Makes (or finds) the local-path directory `path` under `storage`; see the module
/// invariants. A new directory gets [`LOCAL_PATH_MODE`].
fn create_under(storage: &Path, path: &Path) -> Result<PathBuf, Cause> {
    let refuse = |reason: String| Cause::Storage {
        path: path.to_path_buf(),
        storage: storage.to_path_buf(),
        reason,
    };
    let parts = below_storage(storage, path).ok_or_else(|| {
        refuse("the volume's path is not a plain path below the storage path".into())
    })?;
    let mut dir = open_storage(storage, true)?;
    let last = parts.len() - 1;
    for (i, part) in parts.iter().enumerate() {
        let open = |dir: &OwnedFd| {
            nix::fcntl::openat(
                dir.as_fd(),
                *part,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        let shown = || Path::new(part).display().to_string();
        let io = |op, e: Errno| Cause::Io {
            op,
            path: path.to_path_buf(),
            source: e.into(),
        };
        dir = match open(&dir) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let mode = if i == last {
                    LOCAL_PATH_MODE
                } else {
                    PARENT_MODE
                };
                match nix::sys::stat::mkdirat(dir.as_fd(), *part, Mode::from_bits_truncate(mode)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io("create", e)),
                }
                let fd = open(&dir).map_err(|e| match e {
                    Errno::ELOOP | Errno::ENOTDIR => {
                        refuse(format!("{} is a symlink or not a directory", shown()))
                    }
                    e => io("open", e),
                })?;
                if i == last {
                    // Set explicitly: the process umask must not narrow it.
                    nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
                        .map_err(|e| io("chmod", e))?;
                }
                fd
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(refuse(format!(
                    "{} is a symlink or not a directory",
                    shown()
                )));
            }
            Err(e) => return Err(io("open", e)),
        };
    }
    Ok(path.to_path_buf())
}

/// A `local` volume's path: it must exist (kubelet's wording).
fn existing_local(path: &Path) -> Result<PathBuf, Cause> {
    if !path.is_absolute() {
        return Err(Cause::Invalid(format!(
            "local.path {} must be an absolute path",
            path.display()
        )));
    }
    fs::metadata(path).map_err(|source| Cause::Io {
        op: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(path.to_path_buf())
}

/// Kubelet's `SetVolumeOwnership`, skipped with `fsGroupChangePolicy: OnRootMismatch` when the
/// volume's root already has the group and the permissions it would get.
fn apply_fs_group(
    path: &Path,
    gid: u32,
    read_only: bool,
    on_root_mismatch: bool,
) -> io::Result<()> {
    if on_root_mismatch && root_matches(path, gid, read_only)? {
        return Ok(());
    }
    give_to_group(path, gid, read_only)
}

/// Kubelet's `requireSameGroupAndPermissions` on the volume's root.
fn root_matches(path: &Path, gid: u32, read_only: bool) -> io::Result<bool> {
    let meta = fs::symlink_metadata(path)?;
    let mut want = if read_only { 0o440 } else { 0o660 };
    if meta.is_dir() {
        want |= 0o2110;
    }
    Ok(meta.gid() == gid && meta.mode() & want == want)
}

fn claim_name(source: &Value) -> Result<&str, Cause> {
    source["claimName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Cause::Invalid("persistentVolumeClaim.claimName is required".into()))
}

/// Whether a PersistentVolume spec field names a volume source (for the refusal message).
fn is_source(key: &str) -> bool {
    !matches!(
        key,
        "accessModes"
            | "capacity"
            | "claimRef"
            | "mountOptions"
            | "nodeAffinity"
            | "persistentVolumeReclaimPolicy"
            | "storageClassName"
            | "volumeMode"
            | "volumeAttributesClassName"
    )
}

#[cfg(test)]
#[path = "claims_tests.rs"]
mod tests;
