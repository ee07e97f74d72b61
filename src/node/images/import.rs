//! Air-gapped import, as K3s does it: image tarballs dropped in `<data-dir>/agent/images/` are
//! imported at start; a file whose size and modification time are unchanged since its last
//! import is skipped.
//!
//! Two archive layouts, each as `.tar`, `.tar.gz`/`.tgz` or `.tar.zst`/`.tzst` (detected by
//! magic number, the extension only selects the file): `docker save`'s docker-archive
//! (`manifest.json` with `Config`, `RepoTags`, `Layers`) and an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`), images named by `io.containerd.image.name` or
//! `org.opencontainers.image.ref.name` annotations.
//!
//! The archive is first extracted (regular files only, paths checked as layers' are) into the
//! store's `tmp/`, because both layouts name their parts in any order. Every blob is checked
//! against its digest and every layer against the config's diff ID before anything is
//! recorded; a docker-archive gets a Docker schema 2 manifest written for it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ImageStore;
use super::digest::Digest;
use super::manifest::{self, Descriptor, Manifest};
use super::reference::Reference;
use super::store::{self, Record, StoreError, io_err};
use super::unpack;

/// Where the fingerprints of imported files are kept, beside the index.
const IMPORTED_FILE: &str = "imported.json";
/// Most bytes an archive's small JSON files (manifest.json, index.json) may have.
const MAX_JSON: u64 = 4 << 20;

/// What [`import_dir`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// References imported, with the file each came from.
    pub imported: Vec<(PathBuf, String)>,
    /// Files unchanged since their last import.
    pub skipped: Vec<PathBuf>,
    /// Files that failed, with why; the others are imported regardless.
    pub failed: Vec<(PathBuf, String)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Imported {
    files: BTreeMap<String, Fingerprint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    size: u64,
    mtime_ns: i128,
}

pub fn import_dir(images: &ImageStore, dir: &Path) -> Result<ImportReport, StoreError> {
    let mut report = ImportReport::default();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_archive_name(p) && p.is_file())
        .collect();
    files.sort();
    let record_path = images.root().join(IMPORTED_FILE);
    let mut imported: Imported = fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    // Forget files that are gone, so the record stays as small as the directory.
    let present: std::collections::HashSet<String> =
        files.iter().map(|f| f.display().to_string()).collect();
    imported
        .files
        .retain(|k, _| present.contains(k) || !k.starts_with(&dir.display().to_string()));
    for file in files {
        let key = file.display().to_string();
        let Some(print) = fingerprint(&file) else {
            continue;
        };
        if imported.files.get(&key) == Some(&print) {
            report.skipped.push(file);
            continue;
        }
        match import_file(images, &file) {
            Ok(refs) => {
                tracing::info!(file = %file.display(), images = ?refs, "imported image archive");
                imported.files.insert(key, print);
                report
                    .imported
                    .extend(refs.into_iter().map(|r| (file.clone(), r)));
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), "image archive not imported: {e}");
                report.failed.push((file, e.to_string()));
            }
        }
    }
    let bytes =
        serde_json::to_vec_pretty(&imported).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let tmp = record_path.with_extension("json.part");
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &record_path).map_err(io_err(&record_path))?;
    Ok(report)
}

/// Imports one archive; returns the references it recorded.
pub fn import_file(images: &ImageStore, file: &Path) -> Result<Vec<String>, StoreError> {
    let store = images.store();
    let _guard = store.write_guard()?;
    let staging = store.temp_dir()?;
    let result = extract(file, &staging).and_then(|()| {
        if staging.join("manifest.json").is_file() {
            import_docker_archive(images, &staging)
        } else if staging.join("index.json").is_file() {
            import_oci_layout(images, &staging)
        } else {
            Err(StoreError::Invalid(format!(
                "{}: neither a docker-archive (manifest.json) nor an OCI layout (index.json)",
                file.display()
            )))
        }
    });
    let _ = store::remove_any(&staging);
    result.map_err(|e| match e {
        StoreError::Invalid(why) if !why.starts_with(&file.display().to_string()) => {
            StoreError::Invalid(format!("{}: {why}", file.display()))
        }
        e => e,
    })
}

fn is_archive_name(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

fn fingerprint(p: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(p).ok()?;
    Some(Fingerprint {
        size: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Extracts the archive's regular files into `dest`. Symlinks (older `docker save` links a
/// repeated layer to its first copy) become copies of their target if it is inside.
fn extract(file: &Path, dest: &Path) -> Result<(), StoreError> {
    let f = fs::File::open(file).map_err(io_err(file))?;
    let mut reader = io::BufReader::new(f);
    let mut head = [0u8; 4];
    let n = reader.read(&mut head).map_err(io_err(file))?;
    let raw = io::Cursor::new(head[..n].to_vec()).chain(reader);
    let decoded: Box<dyn Read> = match unpack::detect(&head[..n]) {
        unpack::Compression::None => Box::new(raw),
        unpack::Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        unpack::Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(raw)
                .map_err(|e| StoreError::Invalid(format!("{}: bad zstd: {e}", file.display())))?,
        ),
    };
    let bad = |why: String| StoreError::Invalid(format!("{}: {why}", file.display()));
    let mut archive = tar::Archive::new(decoded);
    let mut links = Vec::new();
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let rel = unpack::clean_path(&path)
            .map_err(|why| bad(format!("entry {}: {why}", path.display())))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let out = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = out.parent() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                let mut f = fs::File::create(&out).map_err(io_err(&out))?;
                let n = io::copy(&mut entry, &mut f).map_err(io_err(&out))?;
                if n != entry.size() {
                    return Err(bad("the archive ends inside a file".into()));
                }
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Ok(Some(target)) = entry.link_name() {
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        rel.parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_default()
                            .join(target)
                    } else {
                        target.into_owned()
                    };
                    links.push((rel, base));
                }
            }
            _ => {}
        }
    }
    for (link, target) in links {
        // Resolve `..` lexically inside the archive; anything leaving it is ignored.
        let mut resolved = PathBuf::new();
        let mut inside = true;
        for c in target.components() {
            match c {
                std::path::Component::Normal(n) => resolved.push(n),
                std::path::Component::ParentDir => inside &= resolved.pop(),
                std::path::Component::CurDir => {}
                _ => inside = false,
            }
        }
        let from = dest.join(&resolved);
        let to = dest.join(&link);
        if inside && fs::symlink_metadata(&from).is_ok_and(|m| m.is_file()) {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            fs::copy(&from, &to).map_err(io_err(&to))?;
        }
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, StoreError> {
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    if len > MAX_JSON {
        return Err(StoreError::Invalid(format!(
            "{} is over {MAX_JSON} bytes",
            path.display()
        )));
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))
}

/// Reads a file inside the staging directory named by the archive, refusing escapes.
fn inside(staging: &Path, name: &str) -> Result<PathBuf, StoreError> {
    let rel = unpack::clean_path(Path::new(name))
        .map_err(|why| StoreError::Invalid(format!("{name:?}: {why}")))?;
    let p = staging.join(rel);
    if !p.is_file() {
        return Err(StoreError::Invalid(format!(
            "the archive names {name:?}, which it does not hold"
        )));
    }
    Ok(p)
}

fn import_docker_archive(images: &ImageStore, staging: &Path) -> Result<Vec<String>, StoreError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = read_json(&staging.join("manifest.json"))?;
    let store = images.store();
    let mut out = Vec::new();
    for e in entries {
        let config_path = inside(staging, &e.config)?;
        let config_bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
        let config_digest = Digest::of(&config_bytes);
        let config = manifest::decode_config(&config_bytes, e.layers.len())
            .map_err(|err| StoreError::Invalid(format!("{}: {err}", e.config)))?;
        let mut layers = Vec::new();
        let mut size = 0;
        for (name, diff_id) in e.layers.iter().zip(&config.diff_ids) {
            let path = inside(staging, name)?;
            let (digest, len, bytes) = import_layer(images, &path, None, diff_id)?;
            size += bytes;
            layers.push(Descriptor {
                media_type: manifest::DOCKER_LAYER_TAR.to_owned(),
                digest,
                size: len,
                platform: None,
                annotations: None,
            });
        }
        // What a registry would have served for this image.
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::DOCKER_MANIFEST,
            "config": {"mediaType": manifest::DOCKER_CONFIG, "digest": config_digest, "size": config_bytes.len()},
            "layers": layers,
        });
        let manifest_bytes =
            serde_json::to_vec(&m).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let manifest_digest = Digest::of(&manifest_bytes);
        store.put_blob(&config_digest, &config_bytes)?;
        store.put_blob(&manifest_digest, &manifest_bytes)?;
        for tag in e.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&tag).map_err(|err| StoreError::Invalid(err.to_string()))?;
            let record = Record {
                top: manifest_digest.clone(),
                manifest: manifest_digest.clone(),
                config: config_digest.clone(),
                layers: config.diff_ids.clone(),
                size,
                last_used: store::now_secs(),
            };
            out.push(images.commit(&r, record)?.reference);
        }
    }
    Ok(out)
}

fn import_oci_layout(images: &ImageStore, staging: &Path) -> Result<Vec<String>, StoreError> {
    let store = images.store();
    let blob = |d: &Digest| inside(staging, &format!("blobs/sha256/{}", d.hex()));
    let small_blob = |d: &Digest, limit: usize| -> Result<Vec<u8>, StoreError> {
        let p = blob(d)?;
        let len = fs::metadata(&p).map_err(io_err(&p))?.len();
        if len > limit as u64 {
            return Err(StoreError::Invalid(format!(
                "blob {d} is over {limit} bytes"
            )));
        }
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        if Digest::of(&bytes) != *d {
            return Err(StoreError::Invalid(format!("digest mismatch for blob {d}")));
        }
        Ok(bytes)
    };
    let index_bytes = fs::read(staging.join("index.json")).map_err(io_err(staging))?;
    let Manifest::Index(entries) = manifest::decode(Some(manifest::OCI_INDEX), &index_bytes)
        .map_err(|e| StoreError::Invalid(format!("index.json: {e}")))?
    else {
        return Err(StoreError::Invalid("index.json is not an index".into()));
    };
    let mut out = Vec::new();
    for entry in entries {
        let annotations = entry.annotations.clone().unwrap_or_default();
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
            .filter(|n| n.contains(':') || n.contains('/'));
        let Some(name) = name else {
            tracing::warn!(digest = %entry.digest, "OCI layout entry without an image name; skipped");
            continue;
        };
        let r = Reference::parse(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let top_bytes = small_blob(&entry.digest, manifest::MAX_MANIFEST_BYTES)?;
        let decoded = manifest::decode(Some(&entry.media_type), &top_bytes)
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", entry.digest)))?;
        let (manifest_digest, manifest_bytes, image) = match decoded {
            Manifest::Image(m) => (entry.digest.clone(), top_bytes.clone(), m),
            Manifest::Index(list) => {
                let chosen = manifest::select(&list, images.platform())
                    .map_err(|e| StoreError::Invalid(format!("{name}: {e}")))?;
                let bytes = small_blob(&chosen.digest, manifest::MAX_MANIFEST_BYTES)?;
                match manifest::decode(Some(&chosen.media_type), &bytes)
                    .map_err(|e| StoreError::Invalid(format!("{}: {e}", chosen.digest)))?
                {
                    Manifest::Image(m) => (chosen.digest.clone(), bytes, m),
                    Manifest::Index(_) => {
                        return Err(StoreError::Invalid("an index inside an index".into()));
                    }
                }
            }
        };
        let config_bytes = small_blob(&image.config.digest, manifest::MAX_CONFIG_BYTES)?;
        let config = manifest::decode_config(&config_bytes, image.layers.len())
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", image.config.digest)))?;
        let mut size = 0;
        for (desc, diff_id) in image.layers.iter().zip(&config.diff_ids) {
            if store.has_layer(diff_id) {
                size += store::dir_size(&store.layer_path(diff_id));
                continue;
            }
            let (_, _, bytes) =
                import_layer(images, &blob(&desc.digest)?, Some(&desc.digest), diff_id)?;
            size += bytes;
        }
        store.put_blob(&image.config.digest, &config_bytes)?;
        store.put_blob(&manifest_digest, &manifest_bytes)?;
        store.put_blob(&entry.digest, &top_bytes)?;
        let record = Record {
            top: entry.digest.clone(),
            manifest: manifest_digest,
            config: image.config.digest.clone(),
            layers: config.diff_ids.clone(),
            size,
            last_used: store::now_secs(),
        };
        out.push(images.commit(&r, record)?.reference);
    }
    if out.is_empty() {
        return Err(StoreError::Invalid(
            "the OCI layout names no image (no ref.name annotation)".into(),
        ));
    }
    Ok(out)
}

/// Unpacks a layer file unless present; checks its digest (if known) and diff ID. Returns
/// (blob digest, blob size, content bytes).
fn import_layer(
    images: &ImageStore,
    path: &Path,
    expected: Option<&Digest>,
    diff_id: &Digest,
) -> Result<(Digest, u64, u64), StoreError> {
    let store = images.store();
    let f = fs::File::open(path).map_err(io_err(path))?;
    let mut hashing = HashingFile {
        inner: io::BufReader::new(f),
        hasher: super::digest::Hasher::new(),
    };
    if store.has_layer(diff_id) {
        io::copy(&mut hashing, &mut io::sink()).map_err(io_err(path))?;
        let len = hashing.hasher.len();
        return Ok((
            hashing.hasher.finish(),
            len,
            store::dir_size(&store.layer_path(diff_id)),
        ));
    }
    let tmp = store.temp_dir()?;
    let result = unpack::unpack(&mut hashing, &tmp);
    // Whatever follows the compressed stream still counts for the blob digest.
    let drained = io::copy(&mut hashing, &mut io::sink());
    let fail = |why: String| {
        let _ = store::remove_any(&tmp);
        Err(StoreError::Invalid(why))
    };
    let unpacked = match (result, drained) {
        (Ok(u), Ok(_)) => u,
        (Err(e), _) => return fail(format!("layer {}: {e}", path.display())),
        (_, Err(e)) => return fail(format!("layer {}: {e}", path.display())),
    };
    let len = hashing.hasher.len();
    let digest = hashing.hasher.finish();
    if let Some(want) = expected
        && *want != digest
    {
        return fail(format!("digest mismatch for blob {want} (got {digest})"));
    }
    if unpacked.diff_id != *diff_id {
        return fail(format!(
            "digest mismatch for layer diff ID {diff_id} (got {})",
            unpacked.diff_id
        ));
    }
    store.commit_layer(&tmp, diff_id)?;
    Ok((digest, len, unpacked.bytes))
}

struct HashingFile<R> {
    inner: R,
    hasher: super::digest::Hasher,
}

impl<R: Read> Read for HashingFile<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
