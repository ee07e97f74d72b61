//! Writes a decoded Kubernetes protobuf message as the JSON Kubernetes itself would write for
//! the same Go object, which is the form keelson stores and serves.
//!
//! The generic rules: a field's JSON name is its proto name (go-to-protobuf names fields after
//! their JSON tags); `bytes` become base64 strings; maps become objects; lists become arrays.
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
use prost_reflect::{DynamicMessage, FieldDescriptor, MapKey, ReflectMessage, Value as Proto};
use serde_json::{Map, Number, Value};
use time::OffsetDateTime;
use time::macros::format_description;

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

/// A field that decoded as protobuf but has no JSON form.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FieldError {
    /// Where, as kubectl's error messages say it: `spec.template.metadata.creationTimestamp`.
    pub path: String,
    pub reason: Reason,
}

#[derive(Debug, thiserror::Error)]
pub enum Reason {
    #[error("time {seconds}s {nanos}ns is out of range")]
    TimeOutOfRange { seconds: i64, nanos: i32 },
    #[error("IntOrString type {0} is neither 0 (int) nor 1 (string)")]
    IntOrStringType(i64),
    #[error("the embedded object is not JSON: {0}")]
    EmbeddedNotJson(#[source] serde_json::Error),
    #[error("the number {0} has no JSON form")]
    NotANumber(f64),
}

pub type Result<T, E = FieldError> = std::result::Result<T, E>;

/// The JSON object of a message (without TypeMeta, which protobuf objects do not carry).
pub fn object(msg: &DynamicMessage) -> Result<Map<String, Value>> {
    fields(msg, &Path::Root)
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
            Path::Root => write!(f, "(object)"),
            Path::Field(Path::Root, name) => write!(f, "{name}"),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
            Path::Key(parent, key) => write!(f, "{parent}[{key:?}]"),
        }
    }
}

impl Path<'_> {
    fn error(&self, reason: Reason) -> FieldError {
        FieldError {
            path: self.to_string(),
            reason,
        }
    }
}

// === transcoding ===

fn fields(msg: &DynamicMessage, path: &Path<'_>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        let here = Path::Field(path, field.name());
        let json = match value {
            Proto::List(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| single(v, &Path::Index(&here, i)))
                    .collect::<Result<_>>()?,
            ),
            Proto::Map(entries) => {
                let mut map = Map::new();
                for (key, v) in entries {
                    let key = map_key(key);
                    let json = single(v, &Path::Key(&here, &key))?;
                    map.insert(key, json);
                }
                Value::Object(map)
            }
            v if is_zero(v) && !keeps_zero(&field) => continue,
            v => single(v, &here)?,
        };
        out.insert(field.name().to_owned(), json);
    }
    Ok(out)
}

/// One value: a singular field, a list item or a map value.
fn single(value: &Proto, path: &Path<'_>) -> Result<Value> {
    Ok(match value {
        Proto::Bool(b) => Value::Bool(*b),
        Proto::I32(n) | Proto::EnumNumber(n) => Value::from(*n),
        Proto::I64(n) => Value::from(*n),
        Proto::U32(n) => Value::from(*n),
        Proto::U64(n) => Value::from(*n),
        Proto::F32(n) => float(f64::from(*n), path)?,
        Proto::F64(n) => float(*n, path)?,
        Proto::String(s) => Value::String(s.clone()),
        Proto::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Proto::Message(m) => message(m, path)?,
        // Protobuf has no lists of lists or maps in lists; a descriptor cannot declare them.
        Proto::List(_) | Proto::Map(_) => Value::Null,
    })
}

fn message(msg: &DynamicMessage, path: &Path<'_>) -> Result<Value> {
    let name = msg.descriptor();
    let name = name.full_name();
    let Some(special) = name.strip_prefix("k8s.io.apimachinery.pkg.") else {
        return Ok(Value::Object(fields(msg, path)?));
    };
    match special {
        "util.intstr.IntOrString" => match int(msg, 1) {
            0 => Ok(Value::from(int(msg, 2))),
            1 => Ok(Value::String(text(msg, 3))),
            other => Err(path.error(Reason::IntOrStringType(other))),
        },
        // Go writes a zero Quantity as "0".
        "api.resource.Quantity" | "api.resource.QuantityValue" => Ok(Value::String(
            Some(text(msg, 1))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "0".into()),
        )),
        "apis.meta.v1.Time" => time(msg, path, Precision::Seconds),
        "apis.meta.v1.MicroTime" => time(msg, path, Precision::Micros),
        "apis.meta.v1.Duration" => Ok(Value::String(go_duration(int(msg, 1)))),
        "runtime.RawExtension" | "apis.meta.v1.FieldsV1" => embedded(msg, path),
        _ => Ok(Value::Object(fields(msg, path)?)),
    }
}

enum Precision {
    Seconds,
    Micros,
}

/// `Time` and `MicroTime` in UTC, as Go's JSON writes them; a zero time (an empty message,
/// which is how Go marshals it) is `null`.
fn time(msg: &DynamicMessage, path: &Path<'_>, precision: Precision) -> Result<Value> {
    if msg.fields().next().is_none() {
        return Ok(Value::Null);
    }
    let (seconds, nanos) = (int(msg, 1), i32::try_from(int(msg, 2)).unwrap_or(-1));
    let at = u32::try_from(nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .and_then(|n| {
            OffsetDateTime::from_unix_timestamp(seconds)
                .ok()?
                .replace_nanosecond(n)
                .ok()
        })
        .filter(|t| (0..=9999).contains(&t.year()));
    let at = at.ok_or_else(|| path.error(Reason::TimeOutOfRange { seconds, nanos }))?;
    let formatted = match precision {
        Precision::Seconds => at.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        )),
        Precision::Micros => at.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        )),
    };
    // The year is checked above, so every component has its fixed width.
    formatted
        .map(Value::String)
        .map_err(|_| path.error(Reason::TimeOutOfRange { seconds, nanos }))
}

/// `RawExtension` and `FieldsV1` carry JSON in their bytes; empty bytes are `null`.
fn embedded(msg: &DynamicMessage, path: &Path<'_>) -> Result<Value> {
    let raw = msg.get_field_by_number(1);
    let raw = raw.as_deref().and_then(Proto::as_bytes);
    match raw {
        None => Ok(Value::Null),
        Some(b) if b.is_empty() => Ok(Value::Null),
        Some(b) => serde_json::from_slice(b).map_err(|e| path.error(Reason::EmbeddedNotJson(e))),
    }
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

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

fn is_zero(value: &Proto) -> bool {
    match value {
        Proto::Bool(b) => !b,
        Proto::I32(n) | Proto::EnumNumber(n) => *n == 0,
        Proto::I64(n) => *n == 0,
        Proto::U32(n) => *n == 0,
        Proto::U64(n) => *n == 0,
        Proto::F32(n) => *n == 0.0,
        Proto::F64(n) => *n == 0.0,
        Proto::String(s) => s.is_empty(),
        Proto::Bytes(b) => b.is_empty(),
        Proto::Message(_) | Proto::List(_) | Proto::Map(_) => false,
    }
}

fn keeps_zero(field: &FieldDescriptor) -> bool {
    let message = field.parent_message().full_name();
    message.strip_prefix("k8s.io.api.").is_some_and(|m| {
        EXPLICIT_ZERO
            .iter()
            .any(|(msg, name)| *msg == m && *name == field.name())
    })
}

/// An integer field of a special type by number; absent reads as 0, as in Go.
fn int(msg: &DynamicMessage, number: u32) -> i64 {
    match msg.get_field_by_number(number).as_deref() {
        Some(Proto::I64(n)) => *n,
        Some(Proto::I32(n)) => i64::from(*n),
        _ => 0,
    }
}

fn text(msg: &DynamicMessage, number: u32) -> String {
    msg.get_field_by_number(number)
        .as_deref()
        .and_then(Proto::as_str)
        .unwrap_or_default()
        .to_owned()
}
