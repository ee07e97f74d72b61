//! The harness the fuzz targets share. The patch targets split the fuzzer's bytes into a
//! target object and a patch, apply the patch, and check what every stored object must
//! satisfy; the protobuf target feeds bytes to the protobuf body reader; the spdy target
//! feeds bytes to the SPDY frame decoder. The code under test
//! (`src/apiserver/patch.rs`, `src/apiserver/protobuf/`) is built here from source because
//! keelson is a binary without a library.

use serde_json::{Value, json};

#[path = "../../src/apiserver/patch.rs"]
pub mod patch;

#[allow(dead_code)] // The server uses parts of the module this harness does not.
#[path = "../../src/apiserver/protobuf/mod.rs"]
pub mod protobuf;

#[path = "../../src/apiserver/spdy.rs"]
pub mod spdy;

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
