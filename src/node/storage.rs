//! The node's local storage: the names it shares with the server about local-path volumes,
//! and the sweep that removes the directories of released ones.
//!
//! The local-path provisioner (a controller) makes a PersistentVolume whose `hostPath` is
//! `<storage path>/pvc-<claim uid>_<namespace>_<claim>` on the node the pod was scheduled to,
//! with the [`CLEANUP_FINALIZER`]; this node creates the directory when a pod first mounts it
//! ([`super::volumes::claims`]). When such a volume is deleted (reclaim policy `Delete`), only
//! its node can remove the directory: the [`Sweeper`] does, then tells the server, which
//! removes the finalizer so the volume goes.
//!
//! Invariants:
//! - A node with no `pvc-*` directory under its storage path never asks the server anything.
//! - A directory is removed only if no pod directory on this node names its claim, and the
//!   server says its volume is pinned here, is being deleted, has reclaim policy `Delete`,
//!   still has the finalizer, and has this very directory as its path ([`decide`]).
//! - Removal never follows a symlink, never crosses into another filesystem (a mount), never
//!   leaves the storage path, and refuses a storage path that is itself a symlink; the server
//!   is told only after the directory is gone, and told again next round if it did not hear.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use serde_json::Value;
use tokio::sync::oneshot;

use super::env::ObjectKey;
use super::objects::{ObjectClient, ObjectError, Wanted};
use super::volumes::claims;

pub use crate::api::storage::{
    CLEANUP_FINALIZER, LOCAL_STORAGE_ANNOTATION as STORAGE_PATH_ANNOTATION,
};
/// The storage path's default, under the data dir.
pub const DEFAULT_DIR: &str = "storage";
/// How often the storage path is looked at.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// The names of local-path volume directories start so.
const DIR_PREFIX: &str = "pvc-";

/// What to do with one `pvc-*` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Remove it, then send [`Wanted::LocalVolumeCleaned`].
    Remove,
    /// Leave it; looked at again next round.
    Keep(Keep),
}

/// Why a directory stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// A pod on this node names its claim.
    InUse,
    /// The volume is not being deleted (or its deletion is not ours to finish).
    Live,
    /// The volume's reclaim policy is not `Delete`: the data stays.
    Retained,
    /// The volume is gone (404): nobody will ask for the data again, but nothing proves it
    /// was released either; logged once.
    VolumeGone,
    /// The volume's path is not this directory (the storage path changed?); logged once.
    OtherPath(String),
    /// The server would not or could not answer (refused: not pinned here; unavailable).
    NoAnswer(String),
}

/// The sweep of one node's storage path; [`Sweeper::run`] until its stop sender drops.
pub struct Sweeper {
    /// `--default-local-storage-path`.
    storage: PathBuf,
    /// `<data-dir>/agent/pods`: each pod directory's `pod.json` says which claims it uses.
    pods: PathBuf,
    objects: ObjectClient,
    /// Directories whose [`Keep::VolumeGone`] or [`Keep::OtherPath`] was logged already.
    warned: HashSet<OsString>,
    /// Volumes whose directory is gone but whose [`Wanted::LocalVolumeCleaned`] found no
    /// answer: asked again each round (in memory only; a restarted node leaves them to the
    /// controller). Bounded by the volumes this node ever held.
    unconfirmed: HashSet<String>,
}

// === impl Sweeper ===

impl Sweeper {
    pub fn new(storage: PathBuf, pods: PathBuf, objects: ObjectClient) -> Sweeper {
        Sweeper {
            storage,
            pods,
            objects,
            warned: HashSet::new(),
            unconfirmed: HashSet::new(),
        }
    }

    /// Sweeps now and every [`SWEEP_INTERVAL`] until `stop` resolves or its sender drops (the
    /// runtime holds the sender).
    pub async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            self.sweep().await;
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    }

    async fn sweep(&mut self) {
        for name in std::mem::take(&mut self.unconfirmed) {
            self.confirm(&name).await;
        }
        let (storage, pods) = (self.storage.clone(), self.pods.clone());
        let found = tokio::task::spawn_blocking(move || {
            let dirs = volume_dirs(&storage)?;
            let in_use = if dirs.is_empty() {
                HashSet::new()
            } else {
                claims_in_use(&pods)
            };
            Ok::<_, io::Error>((dirs, in_use))
        })
        .await;
        let (dirs, in_use) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::debug!(storage = %self.storage.display(), error = %e, "cannot list the local storage path");
                return;
            }
            Err(_) => return,
        };
        self.warned.retain(|d| dirs.contains(d));
        for dir in dirs {
            if let Some(claim) = claim_of(&dir)
                && in_use.contains(&claim)
            {
                continue;
            }
            let Some(name) = volume_name(&dir).map(str::to_owned) else {
                continue;
            };
            let wanted = Wanted::LocalVolume { name: name.clone() };
            let answer = self.objects.get(&wanted).await;
            match decide(&self.storage, &dir, answer.as_ref(), &in_use) {
                Decision::Remove => self.remove(dir, &name).await,
                Decision::Keep(why @ (Keep::VolumeGone | Keep::OtherPath(_))) => {
                    if self.warned.insert(dir.clone()) {
                        tracing::warn!(directory = %self.storage.join(&dir).display(), reason = ?why, "keeping a local volume directory");
                    }
                }
                Decision::Keep(why) => {
                    tracing::trace!(directory = %self.storage.join(&dir).display(), reason = ?why, "keeping a local volume directory");
                }
            }
        }
    }

    async fn remove(&mut self, dir: OsString, name: &str) {
        let (storage, entry) = (self.storage.clone(), dir.clone());
        let removed =
            tokio::task::spawn_blocking(move || remove_volume_dir(&storage, &entry)).await;
        let path = self.storage.join(&dir);
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(directory = %path.display(), error = %e, "cannot remove a released local volume");
                return;
            }
            Err(_) => return,
        }
        tracing::info!(directory = %path.display(), volume = name, "removed a released local volume");
        self.confirm(name).await;
    }

    /// Tells the server the directory of `name` is gone; kept for the next round if it
    /// could not be told (refusals are final: the volume is not this node's to release).
    async fn confirm(&mut self, name: &str) {
        let cleaned = Wanted::LocalVolumeCleaned {
            name: name.to_owned(),
        };
        match self.objects.get(&cleaned).await {
            Ok(_) | Err(ObjectError::NotFound(_)) => {}
            Err(e @ ObjectError::Forbidden(_)) => {
                tracing::warn!(volume = name, error = %e, "the server refused the cleanup of a local volume")
            }
            Err(e @ ObjectError::Unavailable(..)) => {
                tracing::warn!(volume = name, error = %e, "cannot tell the server a local volume was cleaned up; trying again");
                self.unconfirmed.insert(name.to_owned());
            }
        }
    }
}

/// The sweep's decision for the directory `dir` under `storage`, given the server's answer
/// for its volume and the claims pods on this node use.
pub fn decide(
    storage: &Path,
    dir: &OsStr,
    volume: Result<&Value, &ObjectError>,
    in_use: &HashSet<ObjectKey>,
) -> Decision {
    if claim_of(dir).is_some_and(|c| in_use.contains(&c)) {
        return Decision::Keep(Keep::InUse);
    }
    let pv = match volume {
        Ok(pv) => pv,
        Err(ObjectError::NotFound(_)) => return Decision::Keep(Keep::VolumeGone),
        Err(e) => return Decision::Keep(Keep::NoAnswer(e.to_string())),
    };
    let claim_ref = &pv["spec"]["claimRef"];
    if let (Some(namespace), Some(name)) =
        (claim_ref["namespace"].as_str(), claim_ref["name"].as_str())
        && in_use.contains(&ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    {
        return Decision::Keep(Keep::InUse);
    }
    if pv["metadata"]["deletionTimestamp"].as_str().is_none() {
        return Decision::Keep(Keep::Live);
    }
    let finalized = pv["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f.as_str() == Some(CLEANUP_FINALIZER)));
    if !finalized {
        return Decision::Keep(Keep::Live);
    }
    if pv["spec"]["persistentVolumeReclaimPolicy"].as_str() != Some("Delete") {
        return Decision::Keep(Keep::Retained);
    }
    let path = pv["spec"]["hostPath"]["path"]
        .as_str()
        .or_else(|| pv["spec"]["local"]["path"].as_str())
        .unwrap_or("");
    if Path::new(path) != storage.join(dir) {
        return Decision::Keep(Keep::OtherPath(path.to_owned()));
    }
    Decision::Remove
}

/// The `pvc-*` directories (not symlinks) directly under `storage`; none if it is missing.
fn volume_dirs(storage: &Path) -> io::Result<Vec<OsString>> {
    let entries = match std::fs::read_dir(storage) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.as_bytes().starts_with(DIR_PREFIX.as_bytes())
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The volume a directory belongs to: its name up to the first `_`.
fn volume_name(dir: &OsStr) -> Option<&str> {
    let name = dir.to_str()?;
    let volume = name.split('_').next()?;
    (volume.len() > DIR_PREFIX.len()).then_some(volume)
}

/// The claim a directory's name records (`pvc-<uid>_<namespace>_<claim>`), if it does.
fn claim_of(dir: &OsStr) -> Option<ObjectKey> {
    let mut parts = dir.to_str()?.splitn(3, '_');
    let (_, namespace, name) = (parts.next()?, parts.next()?, parts.next()?);
    (!namespace.is_empty() && !name.is_empty()).then(|| ObjectKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// The claims named by the pods whose directories are on this node (`<pods>/<uid>/pod.json`):
/// every pod from its set-up until its directory is removed, earlier processes' included.
fn claims_in_use(pods: &Path) -> HashSet<ObjectKey> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir(pods).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read(entry.path().join("pod.json")) else {
            continue;
        };
        let Ok(pod) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        for name in super::env::references(&pod).claims {
            out.insert(ObjectKey {
                namespace: namespace.to_owned(),
                name,
            });
        }
    }
    out
}

/// Removes the directory `dir` directly under `storage` and everything in it, by descriptor:
/// see the module invariants.
pub fn remove_volume_dir(storage: &Path, dir: &OsStr) -> io::Result<()> {
    if dir.is_empty() || dir.as_bytes().contains(&b'/') || dir == "." || dir == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a directory name",
        ));
    }
    let root = claims::open_storage(storage, false).map_err(io::Error::other)?;
    let dev = nix::sys::stat::fstat(root.as_fd())?.st_dev;
    remove_tree(&root, dir, dev)
}

/// Removes `name` in `parent` (a directory, not followed if a symlink) with its content,
/// staying on the device `dev`.
fn remove_tree(parent: &OwnedFd, name: &OsStr, dev: u64) -> io::Result<()> {
    let dir = nix::fcntl::openat(
        parent.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => io::Error::other(format!("{} is a symlink", name.to_string_lossy())),
        e => e.into(),
    })?;
    if nix::sys::stat::fstat(dir.as_fd())?.st_dev != dev {
        return Err(io::Error::other(format!(
            "{} is on another filesystem (a mount)",
            name.to_string_lossy()
        )));
    }
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let entry_name = OsStr::from_bytes(entry.file_name().to_bytes());
        if entry_name != "." && entry_name != ".." {
            names.push(entry_name.to_owned());
        }
    }
    for entry in names {
        let stat =
            nix::sys::stat::fstatat(dir.as_fd(), entry.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            remove_tree(&dir, &entry, dev)?;
        } else {
            nix::unistd::unlinkat(dir.as_fd(), entry.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    nix::unistd::unlinkat(parent.as_fd(), name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}

#[cfg(test)]
#[path = "storage/tests.rs"]
mod tests;
