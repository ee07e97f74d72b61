//! Reads `application/vnd.kubernetes.protobuf` request bodies into the JSON the server stores.
//!
//! kubectl's typed clients (`kubectl create deployment|configmap|secret|job|…`, `expose`) send
//! the objects they build as Kubernetes protobuf: the `k8s\0` magic, then a `runtime.Unknown`
//! envelope holding the object's apiVersion and kind and the object's own bytes. Both the
//! envelope and the object are decoded by [`prost_reflect`] against descriptors that `build.rs`
//! compiles from Kubernetes' own `.proto` files (proto/), so every kind in those files is read
//! without per-kind code; [`json`] then writes the message as Kubernetes' JSON form. This module
//! only decodes: whether the kind is served at this endpoint, and whether the object is valid,
//! is the registry's business, exactly as for a JSON body.
//!
//! Invariant: nothing stays in memory between requests. The descriptor set is a static in the
//! binary (read-only pages, not resident until touched); each body builds its descriptor pool,
//! decodes and drops it. That costs about a millisecond per protobuf request, and only
//! kubectl's typed `create` commands send protobuf, so an idle server holds nothing here.
//! Decoding is bounded by the request body cap and prost's nesting limit (100 levels), which
//! also bounds the recursion in [`json`].

mod json;

use prost_reflect::prost::DecodeError;
use prost_reflect::{DescriptorPool, DynamicMessage, Value as Proto};
use serde_json::Value;

pub use json::FieldError;

/// What `build.rs` compiled from proto/: the served API groups and apimachinery's types.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kubernetes.pb"));

const MAGIC: &[u8] = b"k8s\0";
const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";

/// Why a protobuf body could not be read. None is retryable: the same bytes fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something else under a protobuf content type (415: send JSON).
    #[error("the body lacks the Kubernetes protobuf magic \"k8s\\0\"; send JSON instead")]
    NoMagic,
    /// The client sent a kind this server has no protobuf schema for (415: send JSON).
    #[error("protobuf bodies of {api_version:?}/{kind:?} are not supported; send JSON")]
    Unsupported { api_version: String, kind: String },
    /// The envelope asks for a content encoding (gzip) that kubectl never uses (415).
    #[error("protobuf bodies with content encoding {0:?} are not supported; send JSON")]
    ContentEncoding(String),
    /// The peer sent broken bytes (400).
    #[error("the runtime.Unknown envelope of the protobuf body is malformed: {0}")]
    Envelope(#[source] DecodeError),
    /// The peer sent broken bytes for the object itself (400).
    #[error("the {kind} in the protobuf body is malformed: {source}")]
    Object {
        kind: String,
        #[source]
        source: DecodeError,
    },
    /// One field decoded but has no JSON form (400): a time out of range, an embedded
    /// object that is not JSON.
    #[error("the {kind} in the protobuf body has a bad field: {source}")]
    Field {
        kind: String,
        #[source]
        source: FieldError,
    },
    /// The descriptors built into this binary do not load: a keelson bug (500).
    #[error("the built-in Kubernetes protobuf descriptors are broken: {0}")]
    Descriptors(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Decodes a protobuf request body into the object's JSON form, `apiVersion` and `kind`
/// included.
pub fn decode(body: &[u8]) -> Result<Value> {
    let envelope = body.strip_prefix(MAGIC).ok_or(Error::NoMagic)?;
    let pool =
        DescriptorPool::decode(DESCRIPTORS).map_err(|e| Error::Descriptors(e.to_string()))?;
    let unknown = pool
        .get_message_by_name(UNKNOWN)
        .ok_or_else(|| Error::Descriptors(format!("{UNKNOWN} is missing")))?;
    let unknown = DynamicMessage::decode(unknown, envelope).map_err(Error::Envelope)?;
    let type_meta = unknown.get_field_by_name("typeMeta");
    let type_meta = type_meta.as_deref().and_then(Proto::as_message);
    let api_version = string(type_meta, "apiVersion");
    let kind = string(type_meta, "kind");
    let encoding = string(Some(&unknown), "contentEncoding");
    if !encoding.is_empty() {
        return Err(Error::ContentEncoding(encoding));
    }
    let Some(desc) = message_name(&api_version, &kind).and_then(|n| pool.get_message_by_name(&n))
    else {
        return Err(Error::Unsupported { api_version, kind });
    };
    let raw = unknown.get_field_by_name("raw");
    let raw = raw
        .as_deref()
        .and_then(Proto::as_bytes)
        .cloned()
        .unwrap_or_default();
    let object = DynamicMessage::decode(desc, raw).map_err(|source| Error::Object {
        kind: kind.clone(),
        source,
    })?;
    let mut out = json::object(&object).map_err(|source| Error::Field {
        kind: kind.clone(),
        source,
    })?;
    // A protobuf object carries no TypeMeta: the envelope does.
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(out))
}

/// The protobuf message of an apiVersion's kind: `apps/v1` `Deployment` is
/// `k8s.io.api.apps.v1.Deployment`, the core group's `v1` is `k8s.io.api.core.v1`, and a group
/// named like a domain (`rbac.authorization.k8s.io`) goes by its first label.
fn message_name(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => "core",
        g => g.split('.').next().unwrap_or(g),
    };
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    (plain(package) && plain(version) && plain(kind))
        .then(|| format!("k8s.io.api.{package}.{version}.{kind}"))
}

/// A string field of a message that may be absent; absent reads as empty, as in Go.
fn string(msg: Option<&DynamicMessage>, field: &str) -> String {
    msg.and_then(|m| m.get_field_by_name(field))
        .as_deref()
        .and_then(Proto::as_str)
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests;
