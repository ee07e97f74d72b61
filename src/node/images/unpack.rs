//! Unpacks one layer (a tar stream, gzip-, zstd- or not compressed) into a directory in the
//! format overlayfs reads as a lower directory, and computes the layer's diff ID on the way.
//!
//! OCI whiteouts become overlayfs's: `.wh.NAME` → a character device 0:0 named `NAME`;
//! `.wh..wh..opq` → the xattr `trusted.overlay.opaque=y` on its directory.
//!
//! Invariant: nothing is created, changed or removed outside `dest`. Every entry path is
//! relative and free of `..` (else the layer is refused); every directory on the way to an
//! entry is checked with `lstat` to be a real directory inside `dest`, so a symlink a layer
//! made earlier is never followed; files are created with `O_EXCL` after any previous entry
//! of the same name is removed; hardlink targets obey the same rules. Symlink *targets* are
//! stored as written (`/bin/sh` is normal in an image): they are only ever resolved inside
//! the container's root.
//!
//! Invariant: a compressed layer never expands past [`MAX_EXPANSION`] times the compressed
//! bytes read so far plus [`EXPANSION_ALLOWANCE`]; past that it is refused
//! ([`UnpackError::TooLarge`]) before more is written, so a decompression bomb (a few MiB of
//! gzip or zstd that inflate to terabytes) cannot fill the node's disk. Real layers compress
//! 2–10×; deflate itself cannot exceed about 1032×, zstd can go far beyond. The price: a
//! layer that is mostly one huge run of zeros (a preallocated file) is refused too, with an
//! error that says why. The caller discards the directory of a refused layer, as of any
//! failed one. containerd and kubelet have no such limit; an SD card needs one.
//!
//! Xattrs from the archive are applied only in the `user.` and `security.` namespaces:
//! `trusted.overlay.*` from a layer could forge opaque directories or redirects.
//!
//! Needs root (CAP_MKNOD for whiteouts, CAP_CHOWN, CAP_SYS_ADMIN for `trusted.` xattrs),
//! as any container runtime does.

use std::cell::Cell;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use super::digest::{Digest, Hasher};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Bytes moved per read/write when writing a file's content.
const COPY_BUFFER: usize = 256 * 1024;
/// Read-ahead over the (compressed) layer stream, so the decompressor reads in large pieces.
const READ_BUFFER: usize = 256 * 1024;
/// How many times its compressed size a layer may expand to (see the module doc).
pub const MAX_EXPANSION: u64 = 100;
/// Expansion every compressed layer is allowed on top, so small layers holding a few
/// zero-filled files are not refused for their ratio alone.
pub const EXPANSION_ALLOWANCE: u64 = 64 << 20;

/// What unpacking a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// SHA-256 of the uncompressed tar stream (what the image config lists).
    pub diff_id: Digest,
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer names a path outside its directory; it is refused whole.
    #[error("layer entry {path:?} would escape the layer directory ({why})")]
    Escape { path: String, why: &'static str },
    #[error("layer is not a valid tar stream: {0}")]
    Malformed(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the (possibly compressed) stream failed: cut off, or bad compression.
    #[error("reading the layer failed: {0}")]
    Read(io::Error),
    /// The layer decompresses to far more than its compressed size: a decompression bomb,
    /// or a layer of mostly zeros. Refused as published (pulling again gives the same).
    #[error(
        "layer expands to more than {uncompressed} bytes from {compressed} compressed bytes          (the limit is {MAX_EXPANSION}× plus {EXPANSION_ALLOWANCE} bytes): refused as a          decompression bomb"
    )]
    TooLarge { compressed: u64, uncompressed: u64 },
}

/// Unpacks the layer read from `reader` into `dest`, an existing empty directory.
pub fn unpack(reader: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    let mut reader = reader;
    let mut head = [0u8; 4];
    let n = read_up_to(&mut reader, &mut head).map_err(UnpackError::Read)?;
    let compression = detect(&head[..n]);
    let compressed = Rc::new(Cell::new(0u64));
    let mut raw = io::BufReader::with_capacity(
        READ_BUFFER,
        CountingReader {
            inner: io::Cursor::new(head[..n].to_vec()).chain(reader),
            count: compressed.clone(),
        },
    );
    let decoded: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(&mut raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut raw)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(&mut raw)
                .map_err(|e| UnpackError::Read(io::Error::other(e.to_string())))?,
        ),
    };
    let mut hashing = HashingReader {
        inner: decoded,
        hasher: Hasher::new(),
        limit: (compression != Compression::None).then_some(compressed),
        read: 0,
        exceeded: None,
    };
    let mut stats = (0u64, 0u64);
    // One buffer for every file of the layer (a fresh 256 KiB per file would be an mmap each).
    let mut buf = vec![0u8; COPY_BUFFER];
    let entries = (|| {
        {
            let mut archive = tar::Archive::new(&mut hashing);
            let entries = archive
                .entries()
                .map_err(|e| UnpackError::Malformed(e.to_string()))?;
            for entry in entries {
                let mut entry = entry.map_err(read_or_malformed)?;
                stats.0 += 1;
                stats.1 += apply(&mut entry, dest, &mut buf)?;
            }
        }
        // tar stops at its end-of-archive blocks; the diff ID covers the padding after them.
        io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Read)?;
        Ok(())
    })();
    // The limit surfaces inside tar as an I/O error; report it as what it is.
    if let Some((compressed, uncompressed)) = hashing.exceeded {
        return Err(UnpackError::TooLarge {
            compressed,
            uncompressed,
        });
    }
    entries?;
    let diff_id = hashing.hasher.finish();
    Ok(Unpacked {
        diff_id,
        entries: stats.0,
        bytes: stats.1,
    })
}

/// Compression by magic number: gzip `1f 8b`, zstd `28 b5 2f fd`, else a plain tar.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A relative path free of `..`, or why not. `.` components are dropped; the empty result is
/// the layer root itself.
pub fn clean_path(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' in the path"),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path"),
        }
    }
    Ok(out)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_or_malformed(e: io::Error) -> UnpackError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::TimedOut | io::ErrorKind::ConnectionReset => {
            UnpackError::Read(e)
        }
        _ => UnpackError::Malformed(e.to_string()),
    }
}

/// Writes one entry; returns the bytes of content written.
fn apply<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    buf: &mut [u8],
) -> Result<u64, UnpackError> {
    let raw_path = entry
        .path()
        .map_err(|e| UnpackError::Malformed(e.to_string()))?
        .into_owned();
    let shown = raw_path.display().to_string();
    let escape = |why| UnpackError::Escape {
        path: shown.clone(),
        why,
    };
    let rel = clean_path(&raw_path).map_err(escape)?;
    let kind = entry.header().entry_type();
    let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        // The layer root ("./"): nothing to create.
        return Ok(0);
    };
    let parent_rel = rel.parent().unwrap_or(Path::new(""));
    let parent = ensure_dirs(dest, parent_rel).map_err(|e| match e {
        DirError::Symlink => escape("a directory on its path is a symlink"),
        DirError::NotDir => UnpackError::Malformed(format!("{shown}: a parent is not a directory")),
        DirError::Io(path, source) => UnpackError::Write { path, source },
    })?;
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| UnpackError::Write { path, source }
    };

    if name == OPAQUE_MARKER {
        rustix::fs::lsetxattr(&parent, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
            .map_err(|e| UnpackError::Write {
                path: parent.clone(),
                source: e.into(),
            })?;
        return Ok(0);
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(escape("a whiteout of '.' or '..'"));
        }
        let target = parent.join(hidden);
        remove_existing(&target, false).map_err(write_err(&target))?;
        nix::sys::stat::mknod(
            &target,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .map_err(|e| UnpackError::Write {
            path: target.clone(),
            source: e.into(),
        })?;
        return Ok(0);
    }

    let path = parent.join(&name);
    let header = entry.header();
    let mode = header.mode().unwrap_or(0o644) & 0o7777;
    let uid = header.uid().unwrap_or(0);
    let gid = header.gid().unwrap_or(0);
    let mut written = 0;
    use tar::EntryType as T;
    match kind {
        T::Directory => {
            remove_existing(&path, true).map_err(write_err(&path))?;
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(write_err(&path)(e)),
            }
        }
        T::Regular | T::Continuous | T::GNUSparse => {
            remove_existing(&path, false).map_err(write_err(&path))?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(write_err(&path))?;
            written = copy_content(entry, &mut file, &path, buf)?;
            // The tar reader hands out at most the header's size, and less only when the
            // stream ended early.
            // (A GNU sparse file reads as its full size, which the header does not give.)
            if kind != T::GNUSparse && written != entry.size() {
                return Err(UnpackError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{shown}: the layer ends inside the file"),
                )));
            }
        }
        T::Symlink => {
            let target = entry
                .link_name()
                .map_err(|e| UnpackError::Malformed(e.to_string()))?
                .ok_or_else(|| {
                    UnpackError::Malformed(format!("{shown}: a symlink without a target"))
                })?;
            remove_existing(&path, false).map_err(write_err(&path))?;
            std::os::unix::fs::symlink(&target, &path).map_err(write_err(&path))?;
        }
        T::Link => {
            let target_raw = entry
                .link_name()
                .map_err(|e| UnpackError::Malformed(e.to_string()))?
                .ok_or_else(|| {
                    UnpackError::Malformed(format!("{shown}: a hardlink without a target"))
                })?;
            let target_rel = clean_path(&target_raw).map_err(|why| UnpackError::Escape {
                path: format!("{shown} (hardlink to {})", target_raw.display()),
                why,
            })?;
            let target_parent = target_rel.parent().unwrap_or(Path::new(""));
            match existing_dirs(dest, target_parent) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(UnpackError::Malformed(format!(
                        "{shown}: hardlink to {} which is not in the layer",
                        target_raw.display()
                    )));
                }
                Err(()) => {
                    return Err(UnpackError::Escape {
                        path: format!("{shown} (hardlink to {})", target_raw.display()),
                        why: "a directory on the target's path is a symlink",
                    });
                }
            }
            let target = dest.join(&target_rel);
            if target == path {
                return Ok(0);
            }
            remove_existing(&path, false).map_err(write_err(&path))?;
            fs::hard_link(&target, &path).map_err(write_err(&path))?;
            // A hardlink shares its target's owner and mode; nothing else to set.
            return Ok(0);
        }
        T::Char | T::Block | T::Fifo => {
            use nix::sys::stat::SFlag;
            let flag = match kind {
                T::Char => SFlag::S_IFCHR,
                T::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            let dev = nix::sys::stat::makedev(
                u64::from(header.device_major().ok().flatten().unwrap_or(0)),
                u64::from(header.device_minor().ok().flatten().unwrap_or(0)),
            );
            remove_existing(&path, false).map_err(write_err(&path))?;
            nix::sys::stat::mknod(&path, flag, nix::sys::stat::Mode::empty(), dev).map_err(
                |e| UnpackError::Write {
                    path: path.clone(),
                    source: e.into(),
                },
            )?;
        }
        // Pax and GNU long-name headers are consumed by the tar reader; anything else
        // (sockets, vendor types) has no meaning in a root filesystem.
        _ => return Ok(0),
    }
    // Owner first: chown clears set-id bits, which the mode then puts back.
    match std::os::unix::fs::lchown(&path, u32::try_from(uid).ok(), u32::try_from(gid).ok()) {
        Ok(()) => {}
        // Unprivileged (tests as a user): keep the files as ours.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        Err(e) => return Err(write_err(&path)(e)),
    }
    if kind != T::Symlink {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(write_err(&path))?;
    }
    if let Ok(Some(pax)) = entry.pax_extensions() {
        for ext in pax.flatten() {
            let Ok(key) = ext.key() else { continue };
            let Some(attr) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            if attr.starts_with("user.") || attr.starts_with("security.") {
                // Best effort, as containerd: a file system without xattrs still runs the image.
                let _ = rustix::fs::lsetxattr(
                    &path,
                    attr,
                    ext.value_bytes(),
                    rustix::fs::XattrFlags::empty(),
                );
            }
        }
    }
    Ok(written)
}

/// Copies a file's content in large pieces: `io::copy`'s 8 KiB steps cost a write(2) and a
/// trip through the decompressor per 8 KiB, which made unpacking the slow end of a pull.
fn copy_content(
    from: &mut impl Read,
    to: &mut fs::File,
    path: &Path,
    buf: &mut [u8],
) -> Result<u64, UnpackError> {
    let mut total = 0;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_or_malformed(e)),
        };
        io::Write::write_all(to, &buf[..n]).map_err(|source| UnpackError::Write {
            path: path.to_owned(),
            source,
        })?;
        total += n as u64;
    }
}

enum DirError {
    Symlink,
    NotDir,
    Io(PathBuf, io::Error),
}

/// Creates the directories of `rel` under `dest` as needed, refusing to pass a symlink.
fn ensure_dirs(dest: &Path, rel: &Path) -> Result<PathBuf, DirError> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(DirError::Symlink),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(DirError::NotDir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(|e| DirError::Io(cur.clone(), e))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(|e| DirError::Io(cur.clone(), e))?;
            }
            Err(e) => return Err(DirError::Io(cur.clone(), e)),
        }
    }
    Ok(cur)
}

/// Whether every directory of `rel` exists under `dest` as a real directory; `Err` if one is
/// a symlink.
fn existing_dirs(dest: &Path, rel: &Path) -> Result<bool, ()> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(()),
            Ok(m) if m.is_dir() => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Removes what a previous entry left at `path` (never following a symlink). A directory is
/// kept when `keep_dir` (a directory entry over an existing directory updates it).
fn remove_existing(path: &Path, keep_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The decompressed stream: hashed for the diff ID, and held to the expansion limit.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    /// The compressed bytes read so far, for a compressed layer (`None`: no limit).
    limit: Option<Rc<Cell<u64>>>,
    /// Decompressed bytes read so far.
    read: u64,
    /// (compressed, decompressed) when the limit was passed; every read fails from then on.
    exceeded: Option<(u64, u64)>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded.is_some() {
            return Err(io::Error::other("the layer expands too much"));
        }
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n as u64);
        if let Some(compressed) = &self.limit {
            let compressed = compressed.get();
            let allowed = compressed
                .saturating_mul(MAX_EXPANSION)
                .saturating_add(EXPANSION_ALLOWANCE);
            if self.read > allowed {
                self.exceeded = Some((compressed, self.read));
                return Err(io::Error::other("the layer expands too much"));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Counts the bytes of the compressed stream the decompressor has taken.
struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get().saturating_add(n as u64));
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A tar entry for tests, written with raw header fields so paths the `tar` builder
    /// refuses (`..`, absolute) can be made.
    pub(crate) enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    pub(crate) fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let mut h = tar::Header::new_ustar();
            let (path, kind, link, data): (&str, tar::EntryType, Option<&str>, &[u8]) = match e {
                E::File(p, d) => (p, tar::EntryType::Regular, None, d),
                E::Dir(p) => (p, tar::EntryType::Directory, None, b""),
                E::Symlink(p, t) => (p, tar::EntryType::Symlink, Some(t), b""),
                E::Hardlink(p, t) => (p, tar::EntryType::Link, Some(t), b""),
            };
            let raw = h.as_old_mut();
            raw.name = [0; 100];
            raw.name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                raw.linkname = [0; 100];
                raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn unpack_into(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        fs::create_dir(&layer).unwrap();
        let r = unpack(bytes, &layer);
        (dir, r)
    }

    #[test]
    fn unpacks_files_and_computes_the_diff_id() {
        let tar = tar_of(&[
            E::Dir("bin/"),
            E::File("bin/busybox", b"#!fake"),
            E::Symlink("bin/sh", "/bin/busybox"),
            E::Hardlink("bin/ls", "bin/busybox"),
            E::File("./etc/hostname", b"x\n"),
        ]);
        let (dir, r) = unpack_into(&tar);
        let u = r.unwrap();
        assert_eq!(u.diff_id, Digest::of(&tar));
        assert_eq!(u.entries, 5);
        let layer = dir.path().join("layer");
        assert_eq!(fs::read(layer.join("bin/busybox")).unwrap(), b"#!fake");
        assert_eq!(
            fs::read_link(layer.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(fs::metadata(layer.join("bin/ls")).unwrap().nlink(), 2);
        assert_eq!(fs::read(layer.join("etc/hostname")).unwrap(), b"x\n");
    }

    #[test]
    fn gzip_and_zstd_layers_have_the_uncompressed_diff_id() {
        use std::io::Write;
        let tar = tar_of(&[E::File("a", b"hello")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let (_d, r) = unpack_into(&gz);
        assert_eq!(r.unwrap().diff_id, Digest::of(&tar));
        let zst = ruzstd::encoding::compress_to_vec(
            &tar[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(detect(&zst), Compression::Zstd);
        let (_d, r) = unpack_into(&zst);
        assert_eq!(r.unwrap().diff_id, Digest::of(&tar));
    }

    #[test]
    fn whiteouts_become_overlayfs_devices_and_opaque_xattrs() {
        let tar = tar_of(&[
            E::Dir("etc/"),
            E::File("etc/.wh.passwd", b""),
            E::Dir("var/cache/"),
            E::File("var/cache/.wh..wh..opq", b""),
        ]);
        let (dir, r) = unpack_into(&tar);
        r.unwrap();
        let layer = dir.path().join("layer");
        let m = fs::symlink_metadata(layer.join("etc/passwd")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
        assert!(!layer.join("etc/.wh.passwd").exists());
        let v =
            rustix::fs::lgetxattr(layer.join("var/cache"), OPAQUE_XATTR, &mut [0u8; 8]).unwrap();
        assert_eq!(v, 1);
        assert!(!layer.join("var/cache/.wh..wh..opq").exists());
    }

    #[test]
    fn refuses_paths_that_escape_the_layer() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        let cases: Vec<Vec<u8>> = vec![
            tar_of(&[E::File("../escape", b"x")]),
            tar_of(&[E::File("a/../../escape", b"x")]),
            tar_of(&[E::File("/abs", b"x")]),
            // A symlink to outside, then a file through it.
            tar_of(&[
                E::Symlink("link", outside.path().to_str().unwrap()),
                E::File("link/victim", b"x"),
            ]),
            tar_of(&[E::Symlink("rel", "../../.."), E::File("rel/victim", b"x")]),
            tar_of(&[E::Hardlink("h", "../../etc/passwd")]),
            tar_of(&[E::Hardlink("h", "/etc/passwd")]),
            tar_of(&[
                E::Symlink("l", outside.path().to_str().unwrap()),
                E::Hardlink("h", "l/victim"),
            ]),
            tar_of(&[E::File(".wh...", b"")]),
        ];
        fs::write(&victim, b"original").unwrap();
        for (i, tar) in cases.iter().enumerate() {
            let (_dir, r) = unpack_into(tar);
            assert!(
                matches!(r, Err(UnpackError::Escape { .. })),
                "case {i}: {r:?}"
            );
        }
        assert_eq!(fs::read(&victim).unwrap(), b"original");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_later_entry_replaces_a_symlink_instead_of_following_it() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("t");
        fs::write(&target, b"original").unwrap();
        let tar = tar_of(&[
            E::Symlink("f", target.to_str().unwrap()),
            E::File("f", b"replaced"),
        ]);
        let (dir, r) = unpack_into(&tar);
        r.unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"original");
        assert_eq!(fs::read(dir.path().join("layer/f")).unwrap(), b"replaced");
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_it_fills_the_disk() {
        use std::io::Write;
        // 1 GiB of zeros in one file: about 1 MiB of gzip, far past 100× plus 64 MiB.
        let size: u64 = 1 << 30;
        let mut header = tar::Header::new_ustar();
        header.set_path("bomb").unwrap();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let member = |bytes: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(bytes).unwrap();
            gz.finish().unwrap()
        };
        // Concatenated gzip members are one stream (as `cat a.gz b.gz`): the header, then the
        // same compressed MiB of zeros over and over, then the end-of-archive blocks.
        let mib = member(&vec![0u8; 1 << 20]);
        let mut gz = member(header.as_bytes());
        for _ in 0..(size >> 20) {
            gz.extend_from_slice(&mib);
        }
        gz.extend_from_slice(&member(&[0u8; 1024]));
        assert!(gz.len() < 2 << 20, "{}", gz.len());
        let (dir, r) = unpack_into(&gz);
        match r {
            Err(UnpackError::TooLarge {
                compressed,
                uncompressed,
            }) => {
                assert!(compressed <= gz.len() as u64, "{compressed}");
                assert!(
                    uncompressed <= compressed * MAX_EXPANSION + EXPANSION_ALLOWANCE + (1 << 20),
                    "{uncompressed}"
                );
            }
            other => panic!("the bomb was not refused: {other:?}"),
        }
        // What was written before the refusal is bounded by the limit, not by the bomb.
        let written = fs::metadata(dir.path().join("layer/bomb")).map_or(0, |m| m.len());
        assert!(
            written <= gz.len() as u64 * MAX_EXPANSION + EXPANSION_ALLOWANCE,
            "{written}"
        );
        // An uncompressed layer has no ratio to keep, and an ordinary gzip layer passes.
        let tar = tar_of(&[E::File("a", &[0u8; 200_000])]);
        let (_d, r) = unpack_into(&tar);
        r.unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar).unwrap();
        let (_d, r) = unpack_into(&gz.finish().unwrap());
        r.unwrap();
    }

    #[test]
    fn truncated_and_garbage_streams_are_errors() {
        let tar = tar_of(&[E::File("a", &[7u8; 4000])]);
        let (_d, r) = unpack_into(&tar[..1500]);
        assert!(r.is_err(), "{r:?}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let (_d, r) = unpack_into(&gz[..gz.len() / 2]);
        assert!(r.is_err(), "{r:?}");
        let (_d, r) = unpack_into(&[0x1f, 0x8b, 0, 1, 2, 3]);
        assert!(r.is_err());
    }
}
