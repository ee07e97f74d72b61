//! OCI and Docker schema 2 manifests, indexes (manifest lists) and image configs: decoding
//! untrusted bytes into typed values, and choosing an index's entry for a platform.
//!
//! IO-free; the fuzz target `manifest` feeds it arbitrary bytes. Every list in a decoded value
//! is bounded ([`MAX_ENTRIES`]), and callers bound the bytes before decoding
//! ([`MAX_MANIFEST_BYTES`], [`MAX_CONFIG_BYTES`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// What we send as `Accept` for manifests.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or index we read (containerd's limit too).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config we read; real ones are a few KiB, with long histories ~100 KiB.
pub const MAX_CONFIG_BYTES: usize = 8 << 20;
/// Most layers or index entries we accept (overlayfs stacks at most ~500 lower dirs anyway).
pub const MAX_ENTRIES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Index(Vec<Descriptor>),
    Image(ImageManifest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    pub config: Descriptor,
    /// Lowest first.
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// `os/architecture[/variant]`, with architecture names normalised as containerd does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The parts of an image config a container runtime needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigFile {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// Digests of the uncompressed layers, lowest first.
    pub diff_ids: Vec<Digest>,
    pub platform: Platform,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid JSON for a manifest: {0}")]
    Json(String),
    #[error("answered {0:?}, which is not an OCI or Docker schema 2 manifest or index")]
    UnknownType(String),
    #[error(
        "Docker schema 1 manifests are not supported (push the image again with a current tool)"
    )]
    Schema1,
    #[error("the manifest has {0} entries, more than {MAX_ENTRIES}")]
    TooMany(usize),
    #[error("the image has no layers")]
    NoLayers,
    #[error("the config has {diff_ids} layer digests but the manifest {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
}

/// No entry of an index runs on the wanted platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {wanted} entry in index (has: {})", if available.is_empty() { "none".to_owned() } else { available.join(", ") })]
pub struct NoPlatform {
    pub wanted: Platform,
    pub available: Vec<String>,
}

/// Decodes a manifest or index. `content_type` is the HTTP header (or the descriptor's media
/// type), used when the document does not name its own.
pub fn decode(content_type: Option<&str>, bytes: &[u8]) -> Result<Manifest, ManifestError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<u32>,
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<Vec<Descriptor>>,
        #[serde(default)]
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Option<Vec<Descriptor>>,
        #[serde(rename = "fsLayers", default)]
        fs_layers: Option<serde::de::IgnoredAny>,
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
    let raw: Raw = match serde_json::from_slice(bytes) {
        Ok(raw) => raw,
        // A web page or a file where a manifest should be: say what came instead.
        Err(_) if header.is_some_and(|h| !h.contains("json")) => {
            return Err(ManifestError::UnknownType(
                header.unwrap_or_default().to_owned(),
            ));
        }
        Err(e) => return Err(ManifestError::Json(e.to_string())),
    };
    if raw.schema_version == Some(1) || raw.fs_layers.is_some() {
        return Err(ManifestError::Schema1);
    }
    let media_type = raw.media_type.as_deref().or(header);
    let is_index = match media_type {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(t) if t.starts_with(DOCKER_SCHEMA1) => return Err(ManifestError::Schema1),
        Some(t) => return Err(ManifestError::UnknownType(t.to_owned())),
        // OCI allows leaving mediaType out; the shape tells.
        None => raw.manifests.is_some(),
    };
    if is_index {
        let entries = raw
            .manifests
            .ok_or_else(|| ManifestError::Json("an index without `manifests`".into()))?;
        if entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooMany(entries.len()));
        }
        return Ok(Manifest::Index(entries));
    }
    let config = raw
        .config
        .ok_or_else(|| ManifestError::Json("a manifest without `config`".into()))?;
    let layers = raw.layers.unwrap_or_default();
    if layers.len() > MAX_ENTRIES {
        return Err(ManifestError::TooMany(layers.len()));
    }
    if layers.is_empty() {
        return Err(ManifestError::NoLayers);
    }
    Ok(Manifest::Image(ImageManifest { config, layers }))
}

/// Decodes an image config and checks it against its manifest's layer count.
pub fn decode_config(bytes: &[u8], layers: usize) -> Result<ConfigFile, ManifestError> {
    #[derive(Deserialize, Default)]
    struct Raw {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
        #[serde(default)]
        variant: Option<String>,
        #[serde(default)]
        config: Option<Exec>,
        rootfs: RootFs,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Exec {
        #[serde(default)]
        entrypoint: Option<Vec<String>>,
        #[serde(default)]
        cmd: Option<Vec<String>>,
        #[serde(default)]
        env: Option<Vec<String>>,
        #[serde(default)]
        working_dir: Option<String>,
        #[serde(default)]
        user: Option<String>,
    }
    #[derive(Deserialize, Default)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<Digest>,
    }
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if raw.rootfs.diff_ids.len() != layers {
        return Err(ManifestError::LayerCount {
            diff_ids: raw.rootfs.diff_ids.len(),
            layers,
        });
    }
    let exec = raw.config.unwrap_or_default();
    Ok(ConfigFile {
        entrypoint: exec.entrypoint.unwrap_or_default(),
        cmd: exec.cmd.unwrap_or_default(),
        env: exec.env.unwrap_or_default(),
        working_dir: exec.working_dir.unwrap_or_default(),
        user: exec.user.unwrap_or_default(),
        diff_ids: raw.rootfs.diff_ids,
        platform: Platform::new(&raw.os, &raw.architecture, raw.variant.as_deref()),
    })
}

/// The index entry that runs best on `wanted`, or the list of what the index has.
pub fn select<'a>(
    entries: &'a [Descriptor],
    wanted: &Platform,
) -> Result<&'a Descriptor, NoPlatform> {
    entries
        .iter()
        .filter_map(|d| {
            let p = d.platform.as_ref()?;
            let p = Platform::new(&p.os, &p.architecture, p.variant.as_deref());
            wanted.rank(&p).map(|rank| (rank, d))
        })
        // The first of the best-ranked entries, as containerd picks.
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
        .ok_or_else(|| NoPlatform {
            wanted: wanted.clone(),
            available: entries
                .iter()
                .filter_map(|d| d.platform.as_ref())
                // Attestation manifests ("unknown/unknown") are not images to run.
                .filter(|p| p.os != "unknown")
                .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref()).to_string())
                .collect(),
        })
}

// === impl Platform ===

impl Platform {
    /// Normalises as containerd: `aarch64` → `arm64` (variant `v8` implied), `x86_64` →
    /// `amd64`, `armhf` → `arm/v7`, `armel` → `arm/v6`.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let variant = variant.filter(|v| !v.is_empty());
        let (architecture, variant) = match (architecture, variant) {
            ("aarch64" | "arm64", None | Some("v8" | "8")) => ("arm64", None),
            ("aarch64", v) => ("arm64", v),
            ("x86_64" | "x86-64", v) => ("amd64", v),
            ("armhf", _) => ("arm", Some("v7")),
            ("armel", _) => ("arm", Some("v6")),
            ("arm", Some(v)) if !v.starts_with('v') => ("arm", Some(v)),
            (a, v) => (a, v),
        };
        let variant = match (architecture, variant) {
            ("arm", Some("7")) => Some("v7".to_owned()),
            ("arm", Some("6")) => Some("v6".to_owned()),
            ("arm", Some("5")) => Some("v5".to_owned()),
            (_, v) => v.map(str::to_owned),
        };
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant,
        }
    }

    /// The platform this binary was built for (what its containers can run).
    pub fn host() -> Platform {
        let (arch, variant) = if cfg!(target_arch = "x86_64") {
            ("amd64", None)
        } else if cfg!(target_arch = "aarch64") {
            ("arm64", None)
        } else if cfg!(target_arch = "arm") {
            if cfg!(target_feature = "v7") {
                ("arm", Some("v7"))
            } else {
                ("arm", Some("v6"))
            }
        } else if cfg!(target_arch = "x86") {
            ("386", None)
        } else if cfg!(target_arch = "riscv64") {
            ("riscv64", None)
        } else {
            (std::env::consts::ARCH, None)
        };
        Platform::new("linux", arch, variant)
    }

    /// How well an image for `candidate` runs here: `None` if it does not, lower is better.
    /// An arm/v7 host runs v7, then variant-less arm, then v6 and v5 images; arm64 treats a
    /// missing variant as v8.
    fn rank(&self, candidate: &Platform) -> Option<u8> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        if self.architecture == "arm" {
            let level = |v: Option<&str>| match v {
                Some("v8") => Some(8),
                Some("v7") => Some(7),
                Some("v6") => Some(6),
                Some("v5") => Some(5),
                None => None,
                Some(_) => Some(u8::MAX),
            };
            let mine = level(self.variant.as_deref()).unwrap_or(7);
            return match level(candidate.variant.as_deref()) {
                None => Some(1),
                Some(theirs) if theirs == mine => Some(0),
                Some(theirs) if theirs < mine => Some(2 + (mine - theirs)),
                Some(_) => None,
            };
        }
        match (&self.variant, &candidate.variant) {
            (a, b) if a == b => Some(0),
            (_, None) => Some(1),
            // amd64 v2/v3 images need CPU features we do not check; arm64 v9 likewise.
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    /// `os/arch[/variant]`.
    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform::new(os, arch, None)),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() => {
                Ok(Platform::new(os, arch, Some(v)))
            }
            _ => Err(format!("{s:?} is not os/architecture[/variant]")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn entry(n: u8, platform: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest(n),
            size: 1,
            platform: Some(platform.parse().unwrap()),
            annotations: None,
        }
    }

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn selects_by_platform_including_variant() {
        let index = [
            entry(1, "linux/amd64"),
            entry(2, "linux/arm/v6"),
            entry(3, "linux/arm64/v8"),
            entry(4, "linux/arm/v7"),
            entry(5, "unknown/unknown"),
        ];
        assert_eq!(
            select(&index, &p("linux/arm/v7")).unwrap().digest,
            digest(4)
        );
        assert_eq!(
            select(&index, &p("linux/arm/v6")).unwrap().digest,
            digest(2)
        );
        assert_eq!(select(&index, &p("linux/arm64")).unwrap().digest, digest(3));
        assert_eq!(
            select(&index, &p("linux/arm64/v8")).unwrap().digest,
            digest(3)
        );
        assert_eq!(select(&index, &p("linux/amd64")).unwrap().digest, digest(1));
        // arm64 entries without a variant are v8.
        let plain = [entry(1, "linux/amd64"), entry(6, "linux/aarch64")];
        assert_eq!(
            select(&plain, &p("linux/arm64/v8")).unwrap().digest,
            digest(6)
        );
        // A v7 board runs a v6 image when nothing better exists, never a v8 one.
        let old = [entry(2, "linux/arm/v6"), entry(7, "linux/arm/v8")];
        assert_eq!(select(&old, &p("linux/arm/v7")).unwrap().digest, digest(2));
        let err = select(&index[..3], &p("linux/riscv64")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no linux/riscv64 entry in index (has: linux/amd64, linux/arm/v6, linux/arm64)"
        );
        let v6_only_v7 = [entry(4, "linux/arm/v7")];
        assert!(select(&v6_only_v7, &p("linux/arm/v6")).is_err());
    }

    #[test]
    fn host_platform_is_the_build_target() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host.to_string(), "linux/amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(host.to_string(), "linux/arm64");
    }

    #[test]
    fn decodes_oci_and_docker_shapes() {
        let d = digest(1);
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":3,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}}]}}"#
        );
        let Manifest::Index(entries) = decode(None, index.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(
            entries[0].platform.as_ref().unwrap().to_string(),
            "linux/arm/v7"
        );
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{d}","size":1}},"layers":[{{"mediaType":"x","digest":"{d}","size":1}}]}}"#
        );
        assert!(matches!(
            decode(None, image.as_bytes()),
            Ok(Manifest::Image(_))
        ));
        let no_type = image.replace(&format!(r#""mediaType":"{DOCKER_MANIFEST}","#), "");
        assert!(matches!(
            decode(Some(OCI_MANIFEST), no_type.as_bytes()),
            Ok(Manifest::Image(_))
        ));
        assert!(matches!(
            decode(
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                b"{}"
            ),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            decode(None, br#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            decode(Some("text/html"), b"{}"),
            Err(ManifestError::UnknownType(_))
        ));
        assert!(matches!(
            decode(None, b"<html>"),
            Err(ManifestError::Json(_))
        ));
        let bad_digest = image.replace(d.hex(), "zz");
        assert!(matches!(
            decode(None, bad_digest.as_bytes()),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn config_must_match_the_layer_count() {
        let d = digest(9);
        let cfg = format!(
            r#"{{"architecture":"arm64","os":"linux","config":{{"Entrypoint":["/bin/sh"],"Env":["A=1"],"WorkingDir":"/w","User":"1000"}},"rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#
        );
        let c = decode_config(cfg.as_bytes(), 1).unwrap();
        assert_eq!(c.entrypoint, ["/bin/sh"]);
        assert_eq!(c.cmd, Vec::<String>::new());
        assert_eq!(c.working_dir, "/w");
        assert_eq!(c.diff_ids, [d]);
        assert_eq!(c.platform.to_string(), "linux/arm64");
        assert!(matches!(
            decode_config(cfg.as_bytes(), 2),
            Err(ManifestError::LayerCount { .. })
        ));
    }
}
