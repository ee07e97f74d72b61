//! The on-disk, content-addressed image store under `<data-dir>/agent/images`.
//!
//! ```text
//! blobs/sha256/<hex>     manifests, indexes and configs, named by their digest
//! layers/<hex>/          one unpacked layer (an overlayfs lower dir), named by its diff ID
//! tmp/                   work in progress; emptied on open
//! index.json             reference → record (top digest, manifest, config, layer diff IDs)
//! index.lock, gc.lock    flock(2) files: index updates; pulls (shared) vs. sweeps (exclusive)
//! *.tar, *.tar.gz, …     air-gapped images to import (see `import.rs`), never touched here
//! ```
//!
//! Invariants:
//! - A blob file's content hashes to its name; a layer directory is complete. Both are
//!   written under `tmp/` and renamed into place only after verification, so a crash or a
//!   cut-off pull leaves at most debris in `tmp/`, which the next open removes.
//! - `index.json` names only blobs and layers already in place: it is written (temp file,
//!   then rename) after them, under `index.lock`, re-read inside the lock so two processes
//!   (the node and `keelson images`) never lose each other's updates.
//! - A sweep deletes only what no index record names, and only while holding `gc.lock`
//!   exclusively; a pull holds it shared from before it writes anything until its record is
//!   in the index, so a sweep never takes a layer a pull is about to name.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image store index {path} is damaged: {why}")]
    Index { path: PathBuf, why: String },
    #[error("no image {0} in the store")]
    NotFound(String),
    #[error("the stored {what} {digest} is missing or damaged")]
    Damaged { what: &'static str, digest: Digest },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What the index knows about one reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What the reference resolved to: an index (multi-platform) or a manifest.
    pub top: Digest,
    /// The manifest for this node's platform.
    pub manifest: Digest,
    pub config: Digest,
    /// Diff IDs, lowest layer first.
    pub layers: Vec<Digest>,
    /// Bytes of file content in the layers.
    pub size: u64,
    /// Unix seconds of the last pull or import; GC removes the least recently used first.
    pub last_used: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Index {
    pub images: BTreeMap<String, Record>,
}

/// The store's directory and its locks.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
}

/// Held while a pull or import writes; keeps sweeps out.
pub struct WriteGuard {
    _lock: nix::fcntl::Flock<fs::File>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

// === impl Store ===

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_owned(),
        };
        for dir in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        // Debris of pulls that a crash or kill cut off. Only when no other process is
        // writing: a held gc.lock means a pull is under way there.
        if let Ok(guard) = store.try_exclusive() {
            let tmp = root.join("tmp");
            for e in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
                let _ = remove_any(&e.path());
            }
            drop(guard);
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the shared write lock (blocking while a sweep runs).
    pub fn write_guard(&self) -> Result<WriteGuard> {
        let file = self.lock_file("gc.lock")?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockShared)
            .map_err(|(_, e)| io_err(&self.root.join("gc.lock"))(e.into()))?;
        Ok(WriteGuard { _lock: lock })
    }

    fn exclusive(&self) -> Result<nix::fcntl::Flock<fs::File>> {
        let file = self.lock_file("gc.lock")?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(&self.root.join("gc.lock"))(e.into()))
    }

    fn try_exclusive(&self) -> Result<nix::fcntl::Flock<fs::File>> {
        let file = self.lock_file("gc.lock")?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io_err(&self.root.join("gc.lock"))(e.into()))
    }

    fn lock_file(&self, name: &str) -> Result<fs::File> {
        let path = self.root.join(name);
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    /// A stored blob, checked against its digest (a damaged one reads as absent).
    pub fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        let bytes = fs::read(self.blob_path(digest)).ok()?;
        (Digest::of(&bytes) == *digest).then_some(bytes)
    }

    /// Stores a small blob whose digest the caller has verified.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        if Digest::of(bytes) != *digest {
            return Err(StoreError::Damaged {
                what: "blob",
                digest: digest.clone(),
            });
        }
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        self.write_atomically(&path, bytes)
    }

    /// A fresh directory under `tmp/` for a layer being unpacked.
    pub fn temp_dir(&self) -> Result<PathBuf> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Moves an unpacked layer into place. If another pull got there first, its copy stays.
    pub fn commit_layer(&self, tmp: &Path, diff_id: &Digest) -> Result<PathBuf> {
        let dest = self.layer_path(diff_id);
        // The layer's files reach the disk before the name that says they are complete.
        sync_fs(tmp);
        match fs::rename(tmp, &dest) {
            Ok(()) => Ok(dest),
            Err(_) if dest.is_dir() => {
                let _ = remove_any(tmp);
                Ok(dest)
            }
            Err(e) => {
                let _ = remove_any(tmp);
                Err(io_err(&dest)(e))
            }
        }
    }

    pub fn read_index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Index {
                path,
                why: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Read-modify-write of the index under `index.lock`.
    pub fn update_index<T>(&self, change: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let file = self.lock_file("index.lock")?;
        let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(&self.root.join("index.lock"))(e.into()))?;
        let mut index = self.read_index()?;
        let out = change(&mut index)?;
        let bytes =
            serde_json::to_vec_pretty(&index).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.write_atomically(&self.root.join("index.json"), &bytes)?;
        Ok(out)
    }

    /// Deletes blobs and layers no record names. Returns the bytes of layer content freed
    /// (as recorded) and how many entries were removed.
    pub fn sweep(&self) -> Result<(u64, usize)> {
        let _lock = self.exclusive()?;
        let index = self.read_index()?;
        let mut keep_blobs = HashSet::new();
        let mut keep_layers = HashSet::new();
        for r in index.images.values() {
            keep_blobs.insert(r.top.hex().to_owned());
            keep_blobs.insert(r.manifest.hex().to_owned());
            keep_blobs.insert(r.config.hex().to_owned());
            keep_layers.extend(r.layers.iter().map(|l| l.hex().to_owned()));
        }
        let mut removed = 0;
        let mut freed = 0;
        for (dir, keep) in [("blobs/sha256", &keep_blobs), ("layers", &keep_layers)] {
            let path = self.root.join(dir);
            for e in fs::read_dir(&path).map_err(io_err(&path))?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    if dir == "layers" {
                        freed += dir_size(&e.path());
                    }
                    remove_any(&e.path()).map_err(io_err(&e.path()))?;
                    removed += 1;
                }
            }
        }
        Ok((freed, removed))
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{n}.part", std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    }
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Removes a file, a symlink or a whole directory tree (never following symlinks).
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Bytes of regular-file content under `path` (not following symlinks).
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if m.is_file() {
            total += m.len();
        }
    }
    total
}

/// Flushes the file system holding `path` (one syscall instead of an fsync per file).
fn sync_fs(path: &Path) {
    if let Ok(dir) = fs::File::open(path) {
        let _ = nix::unistd::syncfs(&dir);
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(layers: &[&[u8]]) -> Record {
        Record {
            top: Digest::of(b"top"),
            manifest: Digest::of(b"manifest"),
            config: Digest::of(b"config"),
            layers: layers.iter().map(|l| Digest::of(l)).collect(),
            size: 0,
            last_used: 0,
        }
    }

    #[test]
    fn blobs_are_verified_on_the_way_in_and_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        assert!(matches!(
            store.put_blob(&d, b"jello"),
            Err(StoreError::Damaged { .. })
        ));
        assert_eq!(store.blob(&d), None);
        store.put_blob(&d, b"hello").unwrap();
        assert_eq!(store.blob(&d).unwrap(), b"hello");
        fs::write(store.blob_path(&d), b"bit rot").unwrap();
        assert_eq!(store.blob(&d), None);
    }

    #[test]
    fn open_removes_debris_and_sweep_keeps_what_the_index_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = store.temp_dir().unwrap();
        fs::write(t.join("half"), b"x").unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        for l in [b"a" as &[u8], b"b"] {
            let t = store.temp_dir().unwrap();
            fs::write(t.join("f"), l).unwrap();
            store.commit_layer(&t, &Digest::of(l)).unwrap();
        }
        store.put_blob(&Digest::of(b"config"), b"config").unwrap();
        store.put_blob(&Digest::of(b"orphan"), b"orphan").unwrap();
        store
            .update_index(|i| {
                i.images.insert("x".into(), record(&[b"a"]));
                Ok(())
            })
            .unwrap();
        let (_, removed) = store.sweep().unwrap();
        assert_eq!(removed, 2);
        assert!(store.has_layer(&Digest::of(b"a")));
        assert!(!store.has_layer(&Digest::of(b"b")));
        assert!(store.blob(&Digest::of(b"config")).is_some());
        assert!(store.blob(&Digest::of(b"orphan")).is_none());
    }

    #[test]
    fn a_second_commit_of_the_same_layer_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::of(b"l");
        let a = store.temp_dir().unwrap();
        fs::write(a.join("f"), b"first").unwrap();
        let b = store.temp_dir().unwrap();
        fs::write(b.join("f"), b"second").unwrap();
        fs::write(b.join("g"), b"second").unwrap();
        store.commit_layer(&a, &d).unwrap();
        store.commit_layer(&b, &d).unwrap();
        assert_eq!(fs::read(store.layer_path(&d).join("f")).unwrap(), b"first");
        assert!(!b.exists());
    }
}
