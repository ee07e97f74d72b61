//! Container images on a node: pulling from OCI / Docker registries, a content-addressed
//! store of unpacked layers shared by every pod, air-gapped import, and garbage collection.
//!
//! The data path, one module per stage: [`reference`] (what the user wrote → a normalised
//! name) → [`registries`] (K3s's `registries.yaml`: which endpoints, which credentials and
//! TLS) → [`client`] (Registry API v2 over HTTP(S), auth challenges) → [`manifest`] (indexes,
//! manifests, configs; platform choice) → [`unpack`] (layer tar → overlayfs lower dir) →
//! [`store`] (blobs, layers and the reference index on disk). [`import`] feeds tarballs into
//! the same store. This module holds the public API the pod runtime and `keelson images` use.
//!
//! Invariants (see `store.rs` for how they are kept):
//! - An [`Image`] returned by [`ImageStore::get`] or [`ImageStore::pull`] is complete: every
//!   blob it names was verified against its digest while it streamed in, every layer was
//!   fully unpacked and its diff ID checked against the config, before the reference was
//!   recorded. A crash or a cut-off pull never leaves a half image that `get` returns.
//! - Nothing is written outside the store's directory (`unpack.rs` refuses escaping paths).
//! - A pull of an image whose layers are present downloads only its manifest (to see whether
//!   the tag moved) and, for an index, the platform manifest.
//!
//! Threading: [`ImageStore`] is `Clone + Send + Sync`. `pull` is async; `get` and `list` do
//! small file reads; `remove`, `gc` and `import_*` do file system work and take the store's
//! sweep lock, so call them from a blocking thread (`spawn_blocking`) inside the runtime.

pub mod auth;
pub mod client;
pub mod digest;
pub mod import;
pub mod manifest;
pub mod reference;
pub mod registries;
pub mod store;
pub mod unpack;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

#[allow(unused_imports)] // For the pod runtime (imagePullSecrets).
pub use auth::{RegistryAuth, auths_from_dockerconfigjson};
pub use import::ImportReport;
pub use manifest::Platform;
pub use reference::{Reference, ReferenceError};
pub use registries::Registries;
pub use store::StoreError;

use auth::Credentials;
use client::Client;
use digest::{Digest, Verifier};
use manifest::{ImageManifest, Manifest};
use registries::Candidate;
use store::{Record, Store};

/// Chunks of a layer in flight between the download and the unpacker (~16 KiB each as hyper
/// reads them), so a slow disk slows the download instead of filling memory.
const LAYER_CHANNEL_CHUNKS: usize = 64;
/// Layer downloads at once, across all pulls of this store.
const MAX_CONCURRENT_DOWNLOADS: usize = 3;
/// Progress for a layer is reported at most once per this many bytes.
const PROGRESS_STEP: u64 = 8 << 20;

/// The node's image store. Cheap to clone; all clones share one directory.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registries: Registries,
    platform: Platform,
    /// Layer downloads running at once across all pulls (containerd's default is 3 too).
    downloads: tokio::sync::Semaphore,
    /// One lock per layer being fetched, so two pulls sharing a layer download it once: the
    /// second waits, then finds it in the store. Entries go when their last holder drops.
    fetching: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// An image ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The normalised reference, e.g. `docker.io/library/busybox:1.36`.
    pub reference: String,
    /// `sha256:<config digest>`: Kubernetes' image ID.
    pub id: String,
    /// `docker.io/library/busybox@sha256:<manifest or index digest>`.
    pub repo_digest: String,
    pub config: ImageConfig,
    /// Unpacked overlay-format layer directories, lowest first.
    pub layers: Vec<PathBuf>,
}

/// What the runtime needs from an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// One line of `keelson images list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub reference: String,
    pub id: String,
    pub repo_digest: String,
    /// Bytes of file content in its layers.
    pub size: u64,
    pub last_used: u64,
}

/// What [`ImageStore::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Disk usage in percent when GC started and when it ended.
    pub usage_before: u8,
    pub usage_after: u8,
    /// References removed, least recently used first.
    pub removed: Vec<String>,
    pub freed_bytes: u64,
}

/// Pull progress, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The reference resolved at an endpoint to this manifest (or index) digest.
    Resolved { registry: String, digest: String },
    /// A layer is present already and is not downloaded.
    LayerCached { digest: String },
    /// Bytes of a layer downloaded so far.
    Layer {
        digest: String,
        downloaded: u64,
        total: u64,
    },
    /// A layer was downloaded, verified and unpacked.
    LayerDone { digest: String, bytes: u64 },
    /// The image is complete; `downloaded` counts blob bytes fetched by this pull.
    Done { reference: String, downloaded: u64 },
}

/// Why a pull failed. Every message names the registry endpoint and what it said.
/// Retryable: `Network` (and `NotFound`/`Unauthorized` once the cause is fixed); `Corrupt`
/// kinds are retried by pulling again, since nothing of the failed pull was kept.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{registry}: {what}: not found")]
    NotFound { registry: String, what: String },
    #[error("{registry}: unauthorized: {why}")]
    Unauthorized { registry: String, why: String },
    #[error("{registry}: {why}")]
    Network { registry: String, why: String },
    #[error("{registry}: bad answer: {why}")]
    BadResponse { registry: String, why: String },
    #[error("{registry}: digest mismatch for {what} {expected} (got {actual})")]
    DigestMismatch {
        registry: String,
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error("{registry}: {source}")]
    Manifest {
        registry: String,
        #[source]
        source: manifest::ManifestError,
    },
    #[error("{registry}: {source}")]
    NoPlatform {
        registry: String,
        #[source]
        source: manifest::NoPlatform,
    },
    #[error("{registry}: layer {digest}: {source}")]
    Layer {
        registry: String,
        digest: Digest,
        #[source]
        source: unpack::UnpackError,
    },
    #[error("{registry}: bad configuration: {why}")]
    Config { registry: String, why: String },
    #[error(
        "no endpoint to pull {image} from: the default endpoint is disabled and no mirror is configured for its registry"
    )]
    NoEndpoint { image: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Several endpoints were tried; `first` is the most telling failure.
    #[error("{first} (also tried: {others})")]
    Endpoints {
        first: Box<PullError>,
        others: String,
    },
}

/// What kind of failure a [`PullError`] is, for pod status reasons and retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullErrorKind {
    /// The image, tag or digest does not exist.
    NotFound,
    /// Credentials missing or refused.
    Unauthorized,
    /// Could not reach the registry, or it stopped answering; worth retrying.
    Network,
    /// The registry sent something wrong: garbage, a digest mismatch, an unsafe layer.
    Corrupt,
    /// The image exists but not for this platform, or in a format we do not read.
    Unsupported,
    /// The reference or configuration is malformed.
    Invalid,
    /// The node's own disk or store failed.
    Local,
}

// === impl PullError ===

impl PullError {
    pub fn kind(&self) -> PullErrorKind {
        use PullErrorKind as K;
        match self {
            PullError::Reference(_) | PullError::Config { .. } | PullError::NoEndpoint { .. } => {
                K::Invalid
            }
            PullError::NotFound { .. } => K::NotFound,
            PullError::Unauthorized { .. } => K::Unauthorized,
            PullError::Network { .. } => K::Network,
            PullError::BadResponse { .. } | PullError::DigestMismatch { .. } => K::Corrupt,
            PullError::Layer { source, .. } => match source {
                unpack::UnpackError::Write { .. } => K::Local,
                _ => K::Corrupt,
            },
            PullError::Manifest { source, .. } => match source {
                manifest::ManifestError::Schema1 | manifest::ManifestError::UnknownType(_) => {
                    K::Unsupported
                }
                _ => K::Corrupt,
            },
            PullError::NoPlatform { .. } => K::Unsupported,
            PullError::Store(_) => K::Local,
            PullError::Endpoints { first, .. } => first.kind(),
        }
    }

    /// How telling an error is when several endpoints failed: a registry's definite answer
    /// beats "could not connect" to another one.
    fn weight(&self) -> u8 {
        match self.kind() {
            PullErrorKind::Network => 0,
            PullErrorKind::NotFound => 1,
            _ => 2,
        }
    }
}

// === impl ImageStore ===

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, e.g. `<data-dir>/agent/images`.
    pub fn open(root: &Path, registries: Registries) -> Result<ImageStore, StoreError> {
        ImageStore::open_for(root, registries, Platform::host())
    }

    /// As [`ImageStore::open`], pulling images for `platform` instead of this host's.
    pub fn open_for(
        root: &Path,
        registries: Registries,
        platform: Platform,
    ) -> Result<ImageStore, StoreError> {
        Ok(ImageStore {
            inner: Arc::new(Inner {
                store: Store::open(root)?,
                registries,
                platform,
                downloads: tokio::sync::Semaphore::new(MAX_CONCURRENT_DOWNLOADS),
                fetching: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        self.inner.store.root()
    }

    /// Local lookup, no network. `None` if absent, malformed or damaged.
    pub fn get(&self, reference: &str) -> Option<Image> {
        let r = Reference::parse(reference).ok()?;
        let name = r.to_string();
        let index = self.inner.store.read_index().ok()?;
        let record = index.images.get(&name)?;
        self.image(&name, &r, record).ok()
    }

    /// Pulls the image for this node's platform, or finds it complete in the store. `auths`
    /// come from the pod's imagePullSecrets and are offered to the image's own registry only
    /// (mirrors use their `registries.yaml` credentials).
    pub async fn pull(
        &self,
        reference: &str,
        auths: &[RegistryAuth],
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, PullError> {
        let r = Reference::parse(reference)?;
        // Content named by digest cannot change: a complete copy needs no registry (and so
        // works on a node cut off from it).
        if r.digest.is_some()
            && let Some(image) = self.get(&r.to_string())
        {
            progress(Progress::Done {
                reference: image.reference.clone(),
                downloaded: 0,
            });
            return Ok(image);
        }
        let candidates = self.inner.registries.candidates(&r);
        if candidates.is_empty() {
            return Err(PullError::NoEndpoint {
                image: r.to_string(),
            });
        }
        let store = self.clone();
        let guard = tokio::task::spawn_blocking(move || store.inner.store.write_guard())
            .await
            .map_err(|e| StoreError::Invalid(format!("lock task failed: {e}")))??;
        let mut errors: Vec<PullError> = Vec::new();
        for c in candidates {
            let credentials = credentials_for(&c, auths);
            let registry = c.endpoint.to_string();
            match self.pull_from(&r, c, credentials, progress).await {
                Ok(image) => {
                    drop(guard);
                    return Ok(image);
                }
                Err(e) => {
                    tracing::warn!(image = %r, %registry, "pull failed: {e}");
                    // A broken local store will not get better at the next endpoint.
                    if e.kind() == PullErrorKind::Local {
                        return Err(e);
                    }
                    errors.push(e);
                }
            }
        }
        drop(guard);
        Err(combine(errors))
    }

    pub fn list(&self) -> Vec<ImageSummary> {
        let Ok(index) = self.inner.store.read_index() else {
            return Vec::new();
        };
        index
            .images
            .iter()
            .filter_map(|(name, rec)| {
                let r = Reference::parse(name).ok()?;
                Some(ImageSummary {
                    reference: name.clone(),
                    id: rec.config.to_string(),
                    repo_digest: format!("{}@{}", r.repository(), rec.top),
                    size: rec.size,
                    last_used: rec.last_used,
                })
            })
            .collect()
    }

    /// Removes a reference (or, given an image ID `sha256:…`, every reference to it), then
    /// deletes the blobs and layers nothing names any more.
    pub fn remove(&self, reference: &str) -> Result<(), StoreError> {
        let by_id = Digest::parse(reference).ok();
        let name = match &by_id {
            Some(_) => None,
            None => Some(
                Reference::parse(reference)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?
                    .to_string(),
            ),
        };
        // The index is written through tmp/, which another process's open would otherwise
        // be free to clear.
        let guard = self.inner.store.write_guard()?;
        let updated = self.inner.store.update_index(|index| {
            let before = index.images.len();
            match (&by_id, &name) {
                (Some(id), _) => index.images.retain(|_, r| r.config != *id),
                (None, Some(n)) => {
                    index.images.remove(n);
                }
                (None, None) => {}
            }
            if index.images.len() == before {
                return Err(StoreError::NotFound(
                    name.clone().unwrap_or_else(|| reference.to_owned()),
                ));
            }
            Ok(())
        });
        drop(guard);
        updated?;
        self.inner.store.sweep()?;
        Ok(())
    }

    /// Imports every image tarball in `dir` (K3s's air-gap directory), skipping files
    /// unchanged since their last import.
    pub fn import_dir(&self, dir: &Path) -> Result<ImportReport, StoreError> {
        import::import_dir(self, dir)
    }

    /// Imports one tarball (docker-archive or OCI layout; .tar, .tar.gz, .tar.zst).
    pub fn import_file(&self, file: &Path) -> Result<Vec<String>, StoreError> {
        import::import_file(self, file)
    }

    /// When the file system holding the store is at least `high_pct` full, removes images
    /// not in `in_use` (image IDs, references or repo digests), least recently used first,
    /// until usage is at most `low_pct`. Kubelet's `--image-gc-high-threshold` (85) and
    /// `--image-gc-low-threshold` (80).
    pub fn gc(
        &self,
        in_use: &HashSet<String>,
        high_pct: u8,
        low_pct: u8,
    ) -> Result<GcReport, StoreError> {
        let root = self.root().to_owned();
        self.gc_with(in_use, high_pct, low_pct, &mut || disk_usage_pct(&root))
    }

    fn gc_with(
        &self,
        in_use: &HashSet<String>,
        high_pct: u8,
        low_pct: u8,
        usage: &mut dyn FnMut() -> Result<u8, StoreError>,
    ) -> Result<GcReport, StoreError> {
        if low_pct > high_pct || high_pct > 100 {
            return Err(StoreError::Invalid(format!(
                "image GC thresholds: low {low_pct}% must not exceed high {high_pct}% (≤ 100)"
            )));
        }
        let before = usage()?;
        let mut report = GcReport {
            usage_before: before,
            usage_after: before,
            ..GcReport::default()
        };
        if before < high_pct {
            return Ok(report);
        }
        let mut victims: Vec<(u64, String)> = self
            .list()
            .into_iter()
            .filter(|s| {
                !in_use.contains(&s.id)
                    && !in_use.contains(&s.reference)
                    && !in_use.contains(&s.repo_digest)
            })
            .map(|s| (s.last_used, s.reference))
            .collect();
        victims.sort();
        let mut current = before;
        for (_, reference) in victims {
            if current <= low_pct {
                break;
            }
            let guard = self.inner.store.write_guard()?;
            let updated = self.inner.store.update_index(|index| {
                index.images.remove(&reference);
                Ok(())
            });
            drop(guard);
            updated?;
            let (freed, _) = self.inner.store.sweep()?;
            report.freed_bytes += freed;
            report.removed.push(reference);
            current = usage()?;
        }
        report.usage_after = current;
        Ok(report)
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    /// Builds the [`Image`] of a record, checking that its config and layers are present.
    fn image(&self, name: &str, r: &Reference, record: &Record) -> Result<Image, StoreError> {
        let store = &self.inner.store;
        let damaged = |what, digest: &Digest| StoreError::Damaged {
            what,
            digest: digest.clone(),
        };
        let bytes = store
            .blob(&record.config)
            .ok_or_else(|| damaged("config", &record.config))?;
        let cfg = manifest::decode_config(&bytes, record.layers.len())
            .map_err(|_| damaged("config", &record.config))?;
        let mut layers = Vec::with_capacity(record.layers.len());
        for l in &record.layers {
            if !store.has_layer(l) {
                return Err(damaged("layer", l));
            }
            layers.push(store.layer_path(l));
        }
        Ok(Image {
            reference: name.to_owned(),
            id: record.config.to_string(),
            repo_digest: format!("{}@{}", r.repository(), record.top),
            config: ImageConfig {
                entrypoint: cfg.entrypoint,
                cmd: cfg.cmd,
                env: cfg.env,
                working_dir: cfg.working_dir,
                user: cfg.user,
            },
            layers,
        })
    }

    /// Records `name` → `record` and returns the image.
    pub(crate) fn commit(&self, r: &Reference, record: Record) -> Result<Image, StoreError> {
        let name = r.to_string();
        let image = self.image(&name, r, &record)?;
        self.inner.store.update_index(|index| {
            index.images.insert(name.clone(), record);
            Ok(())
        })?;
        Ok(image)
    }

    async fn pull_from(
        &self,
        r: &Reference,
        candidate: Candidate,
        credentials: Option<Credentials>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, PullError> {
        let client = Client::new(candidate, credentials)?;
        let registry = client.registry();
        let manifest_err = |source| PullError::Manifest {
            registry: client.registry(),
            source,
        };
        let (content_type, top_bytes) = client.manifest(r.manifest_ref()).await?;
        let top = Digest::of(&top_bytes);
        if let Some(want) = &r.digest
            && *want != top
        {
            return Err(PullError::DigestMismatch {
                registry,
                what: "manifest",
                expected: want.clone(),
                actual: top,
            });
        }
        progress(Progress::Resolved {
            registry: registry.clone(),
            digest: top.to_string(),
        });
        let decoded =
            manifest::decode(content_type.as_deref(), &top_bytes).map_err(manifest_err)?;
        let (manifest_digest, manifest_bytes, image): (Digest, Bytes, ImageManifest) = match decoded
        {
            Manifest::Image(m) => (top.clone(), top_bytes.clone(), m),
            Manifest::Index(entries) => {
                let entry = manifest::select(&entries, &self.inner.platform).map_err(|source| {
                    PullError::NoPlatform {
                        registry: registry.clone(),
                        source,
                    }
                })?;
                let (ct, bytes) = client.manifest(entry.digest.as_str()).await?;
                let actual = Digest::of(&bytes);
                if actual != entry.digest {
                    return Err(PullError::DigestMismatch {
                        registry,
                        what: "manifest",
                        expected: entry.digest.clone(),
                        actual,
                    });
                }
                let media_type = ct.or_else(|| Some(entry.media_type.clone()));
                match manifest::decode(media_type.as_deref(), &bytes).map_err(manifest_err)? {
                    Manifest::Image(m) => (entry.digest.clone(), bytes, m),
                    Manifest::Index(_) => {
                        return Err(manifest_err(manifest::ManifestError::UnknownType(
                            "an index inside an index".into(),
                        )));
                    }
                }
            }
        };
        for l in &image.layers {
            if l.media_type.contains("encrypted") {
                return Err(manifest_err(manifest::ManifestError::UnknownType(
                    l.media_type.clone(),
                )));
            }
        }

        let store = &self.inner.store;
        let mut downloaded = 0u64;
        let config_bytes = match store.blob(&image.config.digest) {
            Some(b) => Bytes::from(b),
            None => {
                let resp = client.blob(&image.config.digest).await?;
                let b = client.read_body(resp, manifest::MAX_CONFIG_BYTES).await?;
                downloaded += b.len() as u64;
                let actual = Digest::of(&b);
                if actual != image.config.digest {
                    return Err(PullError::DigestMismatch {
                        registry,
                        what: "config blob",
                        expected: image.config.digest.clone(),
                        actual,
                    });
                }
                b
            }
        };
        let config =
            manifest::decode_config(&config_bytes, image.layers.len()).map_err(manifest_err)?;

        let mut size = 0;
        for (desc, diff_id) in image.layers.iter().zip(&config.diff_ids) {
            let lock = self.layer_lock(diff_id);
            let _fetching = lock.lock().await;
            if store.has_layer(diff_id) {
                progress(Progress::LayerCached {
                    digest: desc.digest.to_string(),
                });
                size += store::dir_size(&store.layer_path(diff_id));
                continue;
            }
            let permit = self.inner.downloads.acquire().await;
            let fetched = self.fetch_layer(&client, desc, diff_id, progress).await;
            drop(permit);
            let (fetched, bytes) = fetched?;
            downloaded += fetched;
            size += bytes;
        }
        store.put_blob(&image.config.digest, &config_bytes)?;
        store.put_blob(&manifest_digest, &manifest_bytes)?;
        store.put_blob(&top, &top_bytes)?;
        let record = Record {
            top,
            manifest: manifest_digest,
            config: image.config.digest.clone(),
            layers: config.diff_ids.clone(),
            size,
            last_used: store::now_secs(),
        };
        let out = self.commit(r, record)?;
        progress(Progress::Done {
            reference: out.reference.clone(),
            downloaded,
        });
        Ok(out)
    }

    /// The lock for fetching one layer; dropping the last `Arc` outside the map lets the
    /// next call remove the entry.
    fn layer_lock(&self, diff_id: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .inner
            .fetching
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(diff_id.clone()).or_default().clone()
    }

    /// Streams one layer blob into the unpacker, verifying its digest on the way and its
    /// diff ID at the end; commits it only if both match. Returns (bytes downloaded, bytes
    /// of content unpacked).
    async fn fetch_layer(
        &self,
        client: &Client,
        desc: &manifest::Descriptor,
        diff_id: &Digest,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(u64, u64), PullError> {
        let store = &self.inner.store;
        let registry = client.registry();
        let resp = client.blob(&desc.digest).await?;
        let total = client::content_length(&resp).unwrap_or(desc.size);
        let tmp = store.temp_dir()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(LAYER_CHANNEL_CHUNKS);
        let dest = tmp.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            unpack::unpack(
                ChannelReader {
                    rx,
                    current: Bytes::new(),
                },
                &dest,
            )
        });
        let mut verifier = Verifier::new(desc.digest.clone());
        let mut body = resp.into_body();
        let mut last_report = 0;
        let mut sender = Some(tx);
        let download = async {
            while let Some(chunk) = client.next_chunk(&mut body).await? {
                verifier.update(&chunk);
                if verifier.len() > desc.size {
                    return Err(PullError::BadResponse {
                        registry: registry.clone(),
                        why: format!(
                            "blob {} is larger than the {} bytes its manifest says",
                            desc.digest, desc.size
                        ),
                    });
                }
                if verifier.len() - last_report >= PROGRESS_STEP {
                    last_report = verifier.len();
                    progress(Progress::Layer {
                        digest: desc.digest.to_string(),
                        downloaded: last_report,
                        total,
                    });
                }
                // If the unpacker stopped (a bad layer), keep reading to tell a corrupt
                // download (digest mismatch) from a layer that is bad as published.
                if let Some(tx) = &sender
                    && tx.send(chunk).await.is_err()
                {
                    sender = None;
                }
            }
            Ok(())
        }
        .await;
        drop(sender);
        let unpacked = unpacker
            .await
            .map_err(|e| StoreError::Invalid(format!("the unpacker task failed: {e}")));
        let fetched = verifier.len();
        let discard = |e: PullError| {
            let _ = store::remove_any(&tmp);
            Err(e)
        };
        if let Err(e) = download {
            return discard(e);
        }
        if fetched != desc.size {
            return discard(PullError::BadResponse {
                registry,
                why: format!(
                    "blob {} has {fetched} bytes, its manifest says {}",
                    desc.digest, desc.size
                ),
            });
        }
        if let Err(actual) = verifier.finish() {
            return discard(PullError::DigestMismatch {
                registry,
                what: "blob",
                expected: desc.digest.clone(),
                actual,
            });
        }
        let unpacked = match unpacked {
            Ok(Ok(u)) => u,
            Ok(Err(source)) => {
                return discard(PullError::Layer {
                    registry,
                    digest: desc.digest.clone(),
                    source,
                });
            }
            Err(e) => return discard(e.into()),
        };
        if unpacked.diff_id != *diff_id {
            return discard(PullError::DigestMismatch {
                registry,
                what: "uncompressed layer (diff ID)",
                expected: diff_id.clone(),
                actual: unpacked.diff_id,
            });
        }
        store.commit_layer(&tmp, diff_id)?;
        progress(Progress::LayerDone {
            digest: desc.digest.to_string(),
            bytes: fetched,
        });
        Ok((fetched, unpacked.bytes))
    }
}

/// Credentials for one endpoint: its `registries.yaml` entry, else a pull secret for the
/// endpoint's host, else (default endpoint only) a pull secret for the image's registry.
fn credentials_for(c: &Candidate, auths: &[RegistryAuth]) -> Option<Credentials> {
    if let Some(creds) = &c.config.credentials {
        return Some(creds.clone());
    }
    let host = auth::normalise_registry(&c.endpoint.authority);
    auths
        .iter()
        .find(|a| a.registry == host || (!c.is_mirror && a.registry == c.registry))
        .map(|a| a.credentials.clone())
}

/// One error for a pull that failed everywhere: the most telling one, naming the rest.
fn combine(mut errors: Vec<PullError>) -> PullError {
    if errors.len() == 1 {
        return errors.remove(0);
    }
    let best = (0..errors.len())
        .max_by_key(|&i| (errors[i].weight(), std::cmp::Reverse(i)))
        .unwrap_or(0);
    let first = errors.remove(best);
    let others = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    PullError::Endpoints {
        first: Box::new(first),
        others,
    }
}

/// Percent of the file system holding `path` in use, as `df` counts it.
fn disk_usage_pct(path: &Path) -> Result<u8, StoreError> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| StoreError::Io {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let total = s.blocks() as u128;
    let free = s.blocks_available() as u128;
    if total == 0 {
        return Ok(0);
    }
    let used = total.saturating_sub(free);
    Ok(((used * 100).div_ceil(total)).min(100) as u8)
}

/// The unpacker's side of the download channel: a blocking `Read` over chunks.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                // The download ended (or was cut off; the downloader reports that).
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(images: &[(&str, u64)]) -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ImageStore::open(dir.path(), Registries::default()).unwrap();
        for (i, (name, used)) in images.iter().enumerate() {
            let layer = [i as u8];
            let t = s.store().temp_dir().unwrap();
            std::fs::write(t.join("f"), layer).unwrap();
            let diff = Digest::of(&layer);
            s.store().commit_layer(&t, &diff).unwrap();
            let cfg =
                format!(r#"{{"rootfs":{{"diff_ids":["{diff}"]}},"config":{{"Cmd":["sh"]}}}}"#);
            let cd = Digest::of(cfg.as_bytes());
            s.store().put_blob(&cd, cfg.as_bytes()).unwrap();
            let r = Reference::parse(name).unwrap();
            let rec = Record {
                top: cd.clone(),
                manifest: cd.clone(),
                config: cd,
                layers: vec![diff],
                size: 1,
                last_used: *used,
            };
            s.commit(&r, rec).unwrap();
        }
        (dir, s)
    }

    #[test]
    fn the_store_and_a_pull_in_flight_can_move_between_threads() {
        fn send_sync<T: Send + Sync + Clone>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let (_d, s) = store_with(&[]);
        send_sync(&s);
        let quiet = |_: Progress| {};
        // Never polled: this only has to compile (tokio::spawn needs a Send future).
        send(s.pull("busybox", &[], &quiet));
    }

    #[test]
    fn a_registry_definite_answer_beats_an_unreachable_one() {
        let net = |r: &str| PullError::Network {
            registry: r.into(),
            why: "cannot connect".into(),
        };
        let missing = PullError::NotFound {
            registry: "http://mirror".into(),
            what: "library/x: manifest latest".into(),
        };
        let e = combine(vec![net("https://a"), missing, net("https://b")]);
        assert_eq!(e.kind(), PullErrorKind::NotFound);
        let text = e.to_string();
        assert!(text.starts_with("http://mirror: library/x: manifest latest: not found (also tried: https://a: cannot connect; https://b"), "{text}");
        assert_eq!(
            combine(vec![net("https://a")]).kind(),
            PullErrorKind::Network
        );
    }

    #[test]
    fn get_finds_by_any_spelling_and_list_shows_ids() {
        let (_d, s) = store_with(&[("busybox:1.36", 1)]);
        let img = s.get("docker.io/library/busybox:1.36").unwrap();
        assert_eq!(img.reference, "docker.io/library/busybox:1.36");
        assert_eq!(s.get("busybox:1.36").unwrap(), img);
        assert!(s.get("busybox").is_none());
        assert_eq!(img.config.cmd, ["sh"]);
        assert_eq!(img.layers.len(), 1);
        assert!(
            img.repo_digest
                .starts_with("docker.io/library/busybox@sha256:")
        );
        assert_eq!(s.list()[0].id, img.id);
    }

    #[test]
    fn a_record_whose_layer_is_gone_is_not_returned() {
        let (_d, s) = store_with(&[("a", 1)]);
        let img = s.get("a").unwrap();
        std::fs::remove_dir_all(&img.layers[0]).unwrap();
        assert!(s.get("a").is_none());
    }

    #[test]
    fn remove_deletes_unreferenced_layers_only() {
        let (_d, s) = store_with(&[("a", 1), ("b", 2)]);
        let a = s.get("a").unwrap();
        let b = s.get("b").unwrap();
        s.remove("a").unwrap();
        assert!(s.get("a").is_none());
        assert!(!a.layers[0].exists());
        assert!(b.layers[0].exists());
        assert!(matches!(s.remove("a"), Err(StoreError::NotFound(_))));
        s.remove(&b.id).unwrap();
        assert!(s.list().is_empty());
    }

    #[test]
    fn gc_removes_least_recently_used_unused_images_down_to_the_low_threshold() {
        let (_d, s) = store_with(&[("old", 1), ("in-use", 0), ("newer", 5), ("newest", 9)]);
        let in_use: HashSet<String> = [s.get("in-use").unwrap().id].into();
        // Each removal frees 10 points of a disk at 95 %.
        let mut level = 95u8;
        let mut removed = 0;
        let mut usage = || {
            let now = level - removed * 10;
            removed += 1;
            Ok(now)
        };
        let report = s.gc_with(&in_use, 85, 80, &mut usage).unwrap();
        assert_eq!(
            report.removed,
            [
                "docker.io/library/old:latest",
                "docker.io/library/newer:latest"
            ]
        );
        assert_eq!(report.usage_after, 75);
        assert!(s.get("in-use").is_some() && s.get("newest").is_some());
        level = 50;
        removed = 0;
        let mut low = || Ok(level - removed);
        let idle = s.gc_with(&HashSet::new(), 85, 80, &mut low).unwrap();
        assert!(idle.removed.is_empty());
        assert!(s.gc_with(&HashSet::new(), 80, 85, &mut || Ok(1)).is_err());
    }
}
