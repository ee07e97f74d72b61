//! Reads a Kubernetes protobuf message by its [`schema`](super::schema) and writes it as the
//! JSON Kubernetes itself would write for the same Go object, which is the form keelson stores
//! and serves. Nesting deeper than [`MAX_DEPTH`] is refused, so no body can run the stack out
//! (today's schemas are not recursive; CRDs' `JSONSchemaProps` would be).
//!
//! The generic rules: a field's JSON name is the schema's (Kubernetes' own, from its OpenAPI
//! definitions); a Go embedded struct (`Volume.volumeSource`, `Probe.handler`) writes its
//! fields into its parent; `bytes` become base64 strings; maps become objects; lists become
//! arrays.
//! Absent fields stay absent. Go's generated marshallers write every non-pointer field, so a
//! singular scalar at its zero value (`""`, `0`, `false`) is dropped, as Go's `omitempty`
//! would drop it on the way to JSON — except the pointer fields in [`EXPLICIT_ZERO`], where an
//! explicit zero means something (`replicas: 0`). Messages are kept even when empty (`"status":
//! {}`), as Go writes structs.
//!
//! apimachinery's types with a JSON form of their own are written in it: `IntOrString` as a
//! number or a string, `Quantity` as its string, `Time` and `MicroTime` as RFC 3339 (`null`
//! when zero), `Duration` as Go prints it (`1h0m0s`), `RawExtension` and `FieldsV1` as the JSON
//! they carry.

use std::fmt;

use base64::Engine;
use serde_json::{Map, Number, Value};
use time::OffsetDateTime;
use time::macros::format_description;

use super::schema::{Field, Label, Message, Special, Type};
use super::wire::{Fields, Malformed, Reader, Wire};

/// Pointer fields of the served kinds whose explicit zero or `false` differs from absence (a
/// default applies when absent), as (message relative to `k8s.io.api.`, field). The `.proto`
/// files cannot say which Go fields are pointers; this list does for the ones that matter.
/// Invariant: every entry names a real scalar field (see the tests).
pub const EXPLICIT_ZERO: &[(&str, &str)] = &[
    ("apps.v1.DeploymentSpec", "replicas"),
    ("apps.v1.DeploymentSpec", "revisionHistoryLimit"),
    ("apps.v1.DeploymentSpec", "progressDeadlineSeconds"),
    ("apps.v1.ReplicaSetSpec", "replicas"),
    ("apps.v1.StatefulSetSpec", "replicas"),
    ("apps.v1.StatefulSetSpec", "revisionHistoryLimit"),
    ("apps.v1.DaemonSetSpec", "revisionHistoryLimit"),
    ("batch.v1.JobSpec", "parallelism"),
    ("batch.v1.JobSpec", "completions"),
    ("batch.v1.JobSpec", "activeDeadlineSeconds"),
    ("batch.v1.JobSpec", "backoffLimit"),
    ("batch.v1.JobSpec", "ttlSecondsAfterFinished"),
    ("batch.v1.JobSpec", "suspend"),
    ("batch.v1.JobSpec", "manualSelector"),
    ("batch.v1.CronJobSpec", "startingDeadlineSeconds"),
    ("batch.v1.CronJobSpec", "suspend"),
    ("batch.v1.CronJobSpec", "successfulJobsHistoryLimit"),
    ("batch.v1.CronJobSpec", "failedJobsHistoryLimit"),
    ("core.v1.PodSpec", "terminationGracePeriodSeconds"),
    ("core.v1.PodSpec", "activeDeadlineSeconds"),
    ("core.v1.PodSpec", "automountServiceAccountToken"),
    ("core.v1.PodSpec", "enableServiceLinks"),
    ("core.v1.PodSpec", "shareProcessNamespace"),
    ("core.v1.PodSpec", "hostUsers"),
    ("core.v1.SecurityContext", "runAsUser"),
    ("core.v1.SecurityContext", "runAsGroup"),
    ("core.v1.SecurityContext", "runAsNonRoot"),
    ("core.v1.SecurityContext", "privileged"),
    ("core.v1.SecurityContext", "allowPrivilegeEscalation"),
    ("core.v1.SecurityContext", "readOnlyRootFilesystem"),
    ("core.v1.PodSecurityContext", "runAsUser"),
    ("core.v1.PodSecurityContext", "runAsGroup"),
    ("core.v1.PodSecurityContext", "runAsNonRoot"),
    ("core.v1.PodSecurityContext", "fsGroup"),
    ("core.v1.ServiceAccount", "automountServiceAccountToken"),
    ("core.v1.ConfigMap", "immutable"),
    ("core.v1.Secret", "immutable"),
    ("core.v1.ConfigMapVolumeSource", "defaultMode"),
    ("core.v1.SecretVolumeSource", "defaultMode"),
    ("core.v1.KeyToPath", "mode"),
    ("core.v1.ServiceSpec", "allocateLoadBalancerNodePorts"),
    ("discovery.v1.EndpointConditions", "ready"),
    ("discovery.v1.EndpointConditions", "serving"),
    ("discovery.v1.EndpointConditions", "terminating"),
    ("discovery.v1.EndpointPort", "port"),
    ("coordination.v1.LeaseSpec", "leaseDurationSeconds"),
    ("coordination.v1.LeaseSpec", "leaseTransitions"),
];

/// How many messages deep a body may nest; the served kinds need about a dozen.
pub const MAX_DEPTH: usize = 64;

/// A field that cannot be read, or has no JSON form.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FieldError {
    /// Where, as kubectl's error messages say it: `spec.template.metadata.creationTimestamp`.
    pub path: String,
    pub reason: Reason,
}

#[derive(Debug, thiserror::Error)]
pub enum Reason {
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("wire type {wire} does not fit a field of type {ty:?}")]
    WireMismatch { wire: &'static str, ty: Type },
    #[error("the string is not UTF-8")]
    NotUtf8,
    #[error("time {seconds}s {nanos}ns is out of range")]
    TimeOutOfRange { seconds: i64, nanos: i64 },
    #[error("IntOrString type {0} is neither 0 (int) nor 1 (string)")]
    IntOrStringType(i64),
    #[error("the embedded object is not JSON: {0}")]
    EmbeddedNotJson(#[source] serde_json::Error),
    #[error("the number {0} has no JSON form")]
    NotANumber(f64),
    #[error("messages are nested more than {MAX_DEPTH} deep")]
    TooDeep,
    #[error("a field's schema is broken (a keelson bug)")]
    Schema,
}

pub type Result<T, E = FieldError> = std::result::Result<T, E>;

/// The JSON object of a message's bytes (without TypeMeta, which protobuf objects do not
/// carry).
pub fn object(msg: &Message, bytes: &[u8]) -> Result<Map<String, Value>> {
    fields(msg, bytes, &Path::Root)
}

// === impl Path ===

/// Where in the object the transcoder is, built on the stack and spelled out only on error.
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => write!(f, "(the object)"),
            Path::Field(Path::Root, name) => write!(f, "{name}"),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
            Path::Key(parent, key) => write!(f, "{parent}[{key:?}]"),
        }
    }
}

impl Path<'_> {
    /// How many fields, items and keys lie between the root and here.
    fn depth(&self) -> usize {
        match self {
            Path::Root => 0,
            Path::Field(p, _) | Path::Index(p, _) | Path::Key(p, _) => 1 + p.depth(),
        }
    }

    fn error(&self, reason: impl Into<Reason>) -> FieldError {
        FieldError {
            path: self.to_string(),
            reason: reason.into(),
        }
    }
}

// === transcoding ===

/// The fields of one message as a JSON object. Unknown field numbers are skipped, as Go
/// skips them; a singular field seen twice keeps its last value (protobuf would merge two
/// halves of a message field; no Kubernetes client splits one).
fn fields(msg: &Message, bytes: &[u8], path: &Path<'_>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for item in Fields::new(bytes) {
        let (number, wire) = item.map_err(|e| path.error(e))?;
        let Some(field) = msg.field(number) else {
            continue;
        };
        let here = Path::Field(path, field.name());
        match field.label {
            Label::Singular => {
                let value = value(field.ty, wire, &here)?;
                if field.ty.message().is_none() && is_zero(&value) && !keeps_zero(msg, field) {
                    out.remove(field.name());
                } else {
                    out.insert(field.name().to_owned(), value);
                }
            }
            Label::Repeated => {
                let list = out
                    .entry(field.name())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else {
                    return Err(here.error(Reason::Schema));
                };
                match wire {
                    // Packed numbers: one length-delimited run of values.
                    Wire::Bytes(run) if field.ty.packs() => packed(field.ty, run, list, &here)?,
                    wire => {
                        let item = value(field.ty, wire, &Path::Index(&here, list.len()))?;
                        list.push(item);
                    }
                }
            }
            Label::Map => {
                let (Some(entry), Wire::Bytes(b)) = (field.ty.message(), wire) else {
                    return Err(here.error(mismatch(wire, field.ty)));
                };
                let (key, value) = map_entry(entry, b, &here)?;
                let map = out
                    .entry(field.name())
                    .or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(map) = map else {
                    return Err(here.error(Reason::Schema));
                };
                map.insert(key, value);
            }
            Label::Inline => {
                // A Go embedded struct: its fields are the parent's in JSON (the schema has
                // no inline chains, so this does not nest further).
                let (Some(inner), Wire::Bytes(b)) = (field.ty.message(), wire) else {
                    return Err(here.error(mismatch(wire, field.ty)));
                };
                out.extend(fields(inner, b, path)?);
            }
        }
    }
    Ok(out)
}

/// One map entry: key (field 1, a string in every Kubernetes map) and value (field 2).
fn map_entry(entry: &Message, bytes: &[u8], path: &Path<'_>) -> Result<(String, Value)> {
    let (mut key, mut raw) = (String::new(), None);
    for item in Fields::new(bytes) {
        match item.map_err(|e| path.error(e))? {
            (1, Wire::Bytes(b)) => key = text(b, path)?,
            (2, wire) => raw = Some(wire),
            _ => {}
        }
    }
    let here = Path::Key(path, &key);
    let ty = entry.field(2).ok_or_else(|| here.error(Reason::Schema))?.ty;
    let value = match raw {
        Some(wire) => value(ty, wire, &here)?,
        // An absent value is the type's zero value: an empty string, empty bytes, `{}`.
        None => match ty.message() {
            Some(m) => message(m, &[], &here)?,
            None if ty == Type::String || ty == Type::Bytes => Value::String(String::new()),
            None => Value::from(0),
        },
    };
    Ok((key, value))
}

/// One value of a field's type: a singular field, a list item or a map value.
fn value(ty: Type, wire: Wire<'_>, path: &Path<'_>) -> Result<Value> {
    // Narrowing casts are protobuf's own rules: an int32 travels as a 64-bit varint.
    Ok(match (ty, wire) {
        (Type::Bool, Wire::Varint(n)) => Value::Bool(n != 0),
        (Type::Int32 | Type::Enum, Wire::Varint(n)) => Value::from(n as i32),
        (Type::Int64, Wire::Varint(n)) => Value::from(n as i64),
        (Type::Uint32, Wire::Varint(n)) => Value::from(n as u32),
        (Type::Uint64, Wire::Varint(n)) => Value::from(n),
        (Type::Sint32, Wire::Varint(n)) => Value::from(zigzag(n) as i32),
        (Type::Sint64, Wire::Varint(n)) => Value::from(zigzag(n)),
        (Type::Fixed32, Wire::Fixed32(n)) => Value::from(n),
        (Type::Sfixed32, Wire::Fixed32(n)) => Value::from(n as i32),
        (Type::Float, Wire::Fixed32(n)) => float(f64::from(f32::from_bits(n)), path)?,
        (Type::Fixed64, Wire::Fixed64(n)) => Value::from(n),
        (Type::Sfixed64, Wire::Fixed64(n)) => Value::from(n as i64),
        (Type::Double, Wire::Fixed64(n)) => float(f64::from_bits(n), path)?,
        (Type::String, Wire::Bytes(b)) => Value::String(text(b, path)?),
        (Type::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Type::Message(_), Wire::Bytes(b)) => {
            let msg = ty.message().ok_or_else(|| path.error(Reason::Schema))?;
            message(msg, b, path)?
        }
        (ty, wire) => return Err(path.error(mismatch(wire, ty))),
    })
}

/// A packed run of numbers, appended to `list`.
fn packed(ty: Type, run: &[u8], list: &mut Vec<Value>, path: &Path<'_>) -> Result<()> {
    let mut r = Reader::new(run);
    while !r.is_empty() {
        let here = Path::Index(path, list.len());
        let wire = match ty {
            Type::Fixed32 | Type::Sfixed32 | Type::Float => r.fixed32().map(Wire::Fixed32),
            Type::Fixed64 | Type::Sfixed64 | Type::Double => r.fixed64().map(Wire::Fixed64),
            _ => r.varint().map(Wire::Varint),
        };
        let wire = wire.map_err(|e| here.error(e))?;
        list.push(value(ty, wire, &here)?);
    }
    Ok(())
}

fn message(msg: &Message, bytes: &[u8], path: &Path<'_>) -> Result<Value> {
    // Each message level adds at least one step to the path (two for list items and map
    // values), so this bounds the recursion at or below MAX_DEPTH messages.
    if path.depth() > 2 * MAX_DEPTH {
        return Err(path.error(Reason::TooDeep));
    }
    if msg.special == Special::Embedded {
        return embedded(bytes, path);
    }
    // The special types read their fields the generic way: absent and zero are alike there.
    let obj = fields(msg, bytes, path)?;
    let int = |name: &str| obj.get(name).and_then(Value::as_i64).unwrap_or(0);
    let string = |name: &str| {
        obj.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    match msg.special {
        Special::None | Special::Embedded => Ok(Value::Object(obj)),
        Special::IntOrString => match int("type") {
            0 => Ok(Value::from(int("intVal"))),
            1 => Ok(Value::String(string("strVal"))),
            other => Err(path.error(Reason::IntOrStringType(other))),
        },
        // Go writes a zero Quantity as "0".
        Special::Quantity => Ok(Value::String(
            Some(string("string"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "0".into()),
        )),
        // Go marshals a zero time as no bytes at all, and writes it to JSON as null.
        Special::Time | Special::MicroTime if bytes.is_empty() => Ok(Value::Null),
        Special::Time => time(int("seconds"), int("nanos"), path, Precision::Seconds),
        Special::MicroTime => time(int("seconds"), int("nanos"), path, Precision::Micros),
        Special::Duration => Ok(Value::String(go_duration(int("duration")))),
    }
}

enum Precision {
    Seconds,
    Micros,
}

/// `Time` and `MicroTime` in UTC, as Go's JSON writes them.
fn time(seconds: i64, nanos: i64, path: &Path<'_>, precision: Precision) -> Result<Value> {
    let out_of_range = || path.error(Reason::TimeOutOfRange { seconds, nanos });
    let at = u32::try_from(nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .and_then(|n| {
            OffsetDateTime::from_unix_timestamp(seconds)
                .ok()?
                .replace_nanosecond(n)
                .ok()
        })
        // RFC 3339 has four-digit years.
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or_else(out_of_range)?;
    let formatted = match precision {
        Precision::Seconds => at.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        )),
        Precision::Micros => at.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        )),
    };
    formatted.map(Value::String).map_err(|_| out_of_range())
}

/// `RawExtension` and `FieldsV1` carry JSON in their bytes (field 1); none is `null`.
fn embedded(bytes: &[u8], path: &Path<'_>) -> Result<Value> {
    let mut raw: &[u8] = &[];
    for item in Fields::new(bytes) {
        if let (1, Wire::Bytes(b)) = item.map_err(|e| path.error(e))? {
            raw = b;
        }
    }
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(raw).map_err(|e| path.error(Reason::EmbeddedNotJson(e)))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5s`, `100ms`, `0s`.
pub(super) fn go_duration(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n == 0 {
        return "0s".into();
    }
    if n < 1_000_000_000 {
        let (scale, unit) = match n {
            0..1_000 => (1, "ns"),
            1_000..1_000_000 => (1_000, "µs"),
            _ => (1_000_000, "ms"),
        };
        return format!("{sign}{}{}{unit}", n / scale, fraction(n % scale, scale));
    }
    let secs = n / 1_000_000_000;
    let frac = fraction(n % 1_000_000_000, 1_000_000_000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{sign}{s}{frac}s"),
        (0, m) => format!("{sign}{m}m{s}{frac}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}{frac}s"),
    }
}

/// `.5` for 500 of 1000; empty for 0. Trailing zeros dropped, as Go does.
fn fraction(rest: u64, scale: u64) -> String {
    if rest == 0 {
        return String::new();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{rest:0width$}");
    format!(".{}", digits.trim_end_matches('0'))
}

fn float(n: f64, path: &Path<'_>) -> Result<Value> {
    Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| path.error(Reason::NotANumber(n)))
}

fn text(b: &[u8], path: &Path<'_>) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| path.error(Reason::NotUtf8))
}

fn zigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn mismatch(wire: Wire<'_>, ty: Type) -> Reason {
    let wire = match wire {
        Wire::Varint(_) => "varint",
        Wire::Fixed64(_) => "fixed64",
        Wire::Bytes(_) => "length-delimited",
        Wire::Fixed32(_) => "fixed32",
    };
    Reason::WireMismatch { wire, ty }
}

/// Go's zero values: what `omitempty` leaves out.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    }
}

fn keeps_zero(msg: &Message, field: &Field) -> bool {
    msg.name().strip_prefix("k8s.io.api.").is_some_and(|m| {
        EXPLICIT_ZERO
            .iter()
            .any(|(name, f)| *name == m && *f == field.name())
    })
}

// === impl Type ===

impl Type {
    /// Whether a repeated field of this type may arrive packed.
    fn packs(self) -> bool {
        !matches!(self, Type::String | Type::Bytes | Type::Message(_))
    }
}

// === impl FieldError ===

/// Broken bytes outside any named field (the envelope's own framing).
impl From<Malformed> for FieldError {
    fn from(e: Malformed) -> Self {
        Path::Root.error(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_past_the_bound_is_refused() {
        fn nest(levels: usize, parent: &Path<'_>) -> Result<Value> {
            match levels {
                0 => {
                    let msg = super::super::schema::message("k8s.io.api.core.v1.PodSpec");
                    message(
                        msg.ok_or_else(|| parent.error(Reason::Schema))?,
                        &[],
                        parent,
                    )
                }
                n => nest(n - 1, &Path::Field(parent, "x")),
            }
        }
        assert!(nest(2 * MAX_DEPTH, &Path::Root).is_ok());
        let err = nest(2 * MAX_DEPTH + 1, &Path::Root).unwrap_err();
        assert!(matches!(err.reason, Reason::TooDeep), "{err}");
    }
}
