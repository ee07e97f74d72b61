//! The harness the fuzz targets share. The patch targets split the fuzzer's bytes into a
//! target object and a patch, apply the patch, and check what every stored object must
//! satisfy; the protobuf target feeds bytes to the protobuf body reader; the image targets
//! feed registry answers to the manifest decoder and layer tarballs to the unpacker; the spdy
//! target feeds bytes to the SPDY frame decoder. The code under test
//! (`src/apiserver/patch.rs`, `src/apiserver/protobuf/`, `src/node/images/`,
//! `src/apiserver/spdy.rs`) is built here from source because keelson is a binary without a
//! library.

use serde_json::{Value, json};

#[path = "../../src/apiserver/patch.rs"]
pub mod patch;

#[allow(dead_code)] // The server uses parts of the module this harness does not.
#[path = "../../src/apiserver/protobuf/mod.rs"]
pub mod protobuf;

// The IO-free and file-system-only parts of the image store, at the crate root because they
// name each other as `super::digest`.
#[allow(dead_code)] // The node uses parts these harnesses do not.
#[path = "../../src/node/images/digest.rs"]
pub mod digest;
#[allow(dead_code)]
#[path = "../../src/node/images/manifest.rs"]
pub mod manifest;
#[allow(dead_code)]
#[path = "../../src/node/images/reference.rs"]
pub mod reference;
#[allow(dead_code)]
#[path = "../../src/node/images/unpack.rs"]
pub mod unpack;
#[path = "../../src/apiserver/spdy.rs"]
pub mod spdy;
#[path = "../../src/node/attach.rs"]
pub mod attach;

pub use patch::Kind;

/// Reads two JSON values from `data`, the target and the patch, and applies one to the other.
///
/// Panics (a finding) if the patch engine panics, or if it returns an object that fails
/// `check_limits`, does not encode and decode back to itself, or would not decode inside the
/// deepest envelope the server sends (a Table row in a watch event).
pub fn check(kind: Kind, data: &[u8]) {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let (Some(Ok(target)), Some(Ok(patch))) = (values.next(), values.next()) else {
        return;
    };
    let Ok(out) = patch::apply(kind, &target, &patch) else {
        return;
    };
    assert_eq!(patch::check_limits(&out), Ok(()));
    let bytes = serde_json::to_vec(&out).expect("a Value always encodes");
    assert!(
        bytes.len() <= patch::MAX_OBJECT_BYTES,
        "{} bytes",
        bytes.len()
    );
    let back: Value = serde_json::from_slice(&bytes).expect("the result decodes");
    assert_eq!(back, out);
    let event = json!({"type": "ADDED", "object": {"rows": [{"object": out}]}});
    let wrapped = serde_json::to_vec(&event).expect("a Value always encodes");
    serde_json::from_slice::<Value>(&wrapped).expect("the result decodes inside envelopes");
    if kind == Kind::Merge {
        // RFC 7386 patches are idempotent.
        assert_eq!(patch::apply(kind, &out, &patch).as_ref(), Ok(&out));
    }
}

/// Reads `data` as a protobuf request body. Panics (a finding) if the reader panics, or if it
/// accepts a body and returns something the server could not store: not an object, or one
/// without its apiVersion and kind.
pub fn check_protobuf(data: &[u8]) {
    let Ok(obj) = protobuf::decode(data) else {
        return;
    };
    assert!(
        obj["apiVersion"].is_string() && obj["kind"].is_string(),
        "{obj}"
    );
    let bytes = serde_json::to_vec(&obj).expect("a Value always encodes");
    let back: Value = serde_json::from_slice(&bytes).expect("the result decodes");
    assert_eq!(back, obj);
}

/// Bytes as a registry's manifest answer: the first byte picks a Content-Type, the rest is the
/// body. Decoding must never panic; an index must choose only entries that run on the wanted
/// platform; a config must match the layer count it is checked against.
pub fn check_manifest(data: &[u8]) {
    use manifest::{Manifest, Platform};
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = match selector % 5 {
        0 => None,
        1 => Some(manifest::OCI_INDEX),
        2 => Some(manifest::DOCKER_MANIFEST),
        3 => Some("text/html"),
        _ => Some("application/json"),
    };
    match manifest::decode(content_type, body) {
        Ok(Manifest::Index(entries)) => {
            assert!(entries.len() <= manifest::MAX_ENTRIES);
            for wanted in ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6"] {
                let wanted: Platform = wanted.parse().expect("a valid platform");
                if let Ok(chosen) = manifest::select(&entries, &wanted) {
                    let p = chosen
                        .platform
                        .as_ref()
                        .expect("chosen entries have a platform");
                    let p = Platform::new(&p.os, &p.architecture, p.variant.as_deref());
                    assert_eq!((&p.os, &p.architecture), (&wanted.os, &wanted.architecture));
                }
            }
        }
        Ok(Manifest::Image(m)) => {
            assert!(!m.layers.is_empty() && m.layers.len() <= manifest::MAX_ENTRIES);
        }
        Err(_) => {}
    }
    // The same bytes as an image reference: parsing never panics, and the normalised form
    // parses back to the same reference.
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(r) = reference::Reference::parse(text)
    {
        let again = reference::Reference::parse(&r.to_string());
        assert_eq!(again.as_ref().ok(), Some(&r), "{text:?} → {r}");
    }
    for layers in [0, 1, 3] {
        if let Ok(c) = manifest::decode_config(body, layers) {
            assert_eq!(c.diff_ids.len(), layers);
        }
    }
}

/// Bytes as a layer blob, unpacked into a fresh directory beside a sentinel file. Whatever the
/// bytes, the unpacker must not panic and must not touch anything outside its directory.
pub fn check_unpack(data: &[u8]) {
    use std::fs;
    // /dev/shm keeps the file system work in memory where there is one.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("a scratch directory");
    let layer = base.path().join("layer");
    fs::create_dir(&layer).expect("the layer directory");
    let sentinel = base.path().join("sentinel");
    fs::write(&sentinel, b"untouched").expect("the sentinel");
    let result = unpack::unpack(data, &layer);
    let names: Vec<_> = fs::read_dir(base.path())
        .expect("list the scratch directory")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "something was created beside the layer: {names:?}"
    );
    assert_eq!(
        fs::read(&sentinel).expect("read the sentinel"),
        b"untouched"
    );
    if let Ok(u) = result {
        // The diff ID is the digest of the tar stream, which for an uncompressed layer is
        // the input itself.
        if unpack::detect(data) == unpack::Compression::None {
            assert_eq!(u.diff_id, digest::Digest::of(data));
        }
    }
}

/// Feeds `data` to a SPDY decoder in pieces (the first byte sets their size, as websocket
/// messages and socket reads cut a stream anywhere). Panics (a finding) if the decoder panics,
/// or if a frame it accepted does not encode and decode back to itself.
pub fn check_spdy(data: &[u8]) {
    let Some((&size, bytes)) = data.split_first() else {
        return;
    };
    let mut decoder = spdy::Decoder::new();
    let mut frames = Vec::new();
    'feed: for piece in bytes.chunks(usize::from(size).max(1)) {
        decoder.push(piece);
        loop {
            match decoder.next() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    let mut encoder = spdy::Encoder::new();
    let mut wire = Vec::new();
    for frame in &frames {
        encoder.encode(frame, &mut wire).expect("a decoded frame encodes");
    }
    let mut again = spdy::Decoder::new();
    again.push(&wire);
    for frame in &frames {
        assert_eq!(again.next().expect("it decodes again").as_ref(), Some(frame));
    }
}

/// Decodes `data` as a stream of attach-socket frames (what a monitor reads from a node's
/// connection) until the first error. Panics (a finding) if the decoder panics, takes more
/// than it was given or more than one frame's worth, or if a frame does not encode and
/// decode back to itself.
pub fn check_attach(data: &[u8]) {
    let mut rest = data;
    while !rest.is_empty() {
        let Ok((frame, used)) = attach::decode(rest) else {
            return;
        };
        assert!(used <= rest.len() && used <= attach::MAX_FRAME && used >= attach::HEADER);
        let mut wire = Vec::new();
        attach::encode(&frame, &mut wire);
        let (again, again_used) = attach::decode(&wire).expect("an encoded frame decodes");
        assert_eq!(again, frame);
        assert_eq!(again_used, wire.len());
        rest = &rest[used..];
    }
}
