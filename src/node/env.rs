//! A container's environment, resolved the way kubelet resolves it: `envFrom` sources, then
//! `env` entries (literal values with `$(VAR)` expansion, `valueFrom` field, resource, ConfigMap
//! and Secret references), and the same `$(VAR)` expansion for `command` and `args`.
//!
//! What it owns: turning the pod and container JSON plus the objects they name into a list of
//! `NAME=value` pairs. What it leaves to others: fetching ConfigMaps and Secrets (the caller
//! prefetches them behind [`Objects`]), the image's own environment and the defaults a runtime
//! adds (`PATH`, `HOSTNAME`: see [`super::bundle`]), and Service environment variables (they
//! come with cluster DNS and Services on the node, a later step).
//!
//! Invariants:
//! - Nothing here touches the filesystem or the network: same input, same output.
//! - A later definition of a name replaces the earlier one in place, so the order of first
//!   appearance is kept and every name appears once.
//! - `$(VAR)` in an `env[].value` sees only what was defined before it (envFrom, then earlier
//!   `env` entries); `command` and `args` see the whole resolved list. Unknown references stay
//!   as written and `$$` is a literal `$`, as in Kubernetes.
//! - This module (like `volumes`, `sandbox` and `bundle`) imports only its siblings and
//!   `crate::api::quantity`: `tests/bundle.rs` compiles these files by path to drive runc.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use base64::Engine;
use serde_json::Value;

use crate::api::quantity;

/// Why a container's environment could not be resolved. Kubelet reports these as the
/// container's `CreateContainerConfigError`; they are fixed by creating the missing object or
/// key, or by correcting the pod. Retry when the named object changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        key: String,
        namespace: String,
        name: String,
    },
    /// A `fieldRef.fieldPath` kubelet does not offer here.
    #[error("unsupported fieldPath: {0}")]
    FieldPath(String),
    /// A `resourceFieldRef.resource` kubelet does not offer.
    #[error("unsupported container resource : {0}")]
    Resource(String),
    /// `resourceFieldRef.containerName` names no container of the pod.
    #[error("resourceFieldRef names container {0:?}, which the pod does not have")]
    NoSuchContainer(String),
    #[error("{field}: {source}")]
    Quantity {
        field: String,
        #[source]
        source: quantity::Error,
    },
    /// The object has a malformed shape (e.g. a `valueFrom` with no source).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
}

pub type Result<T, E = EnvError> = std::result::Result<T, E>;

/// The ConfigMaps and Secrets a pod references, fetched by the caller beforehand. Each is the
/// object's JSON as the API serves it (`data` of strings; a Secret's `data` base64).
pub trait Objects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<&Value>;
    fn secret(&self, namespace: &str, name: &str) -> Option<&Value>;
    /// A PersistentVolumeClaim the pod uses and the volume it names, as the server answers
    /// for it: `{"claim": <PVC>, "volume": <PV or null>}`.
    fn claim(&self, _namespace: &str, _name: &str) -> Option<&Value> {
        None
    }
    /// The pod's service account token for `audience` (empty: the API's) asked for with a
    /// lifetime of `seconds`, if the caller got one.
    fn service_account_token(&self, _audience: &str, _seconds: i64) -> Option<&str> {
        None
    }
}

/// A ready-made [`Objects`]: what the caller fetched, keyed by namespace and name.
#[derive(Debug, Default, Clone)]
pub struct Prefetched {
    pub config_maps: HashMap<ObjectKey, Value>,
    pub secrets: HashMap<ObjectKey, Value>,
    /// Claims with their volumes (see [`Objects::claim`]), by the claim's namespace and name.
    pub claims: HashMap<ObjectKey, Value>,
    /// Service account tokens by (audience, requested lifetime in seconds).
    pub tokens: HashMap<(String, i64), String>,
}

/// A namespaced object's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

/// The facts about a pod that the downward API exposes, beside the pod's own JSON.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    /// The pod as the API serves it (`metadata`, `spec`).
    pub pod: &'a Value,
    /// The pod's addresses (from the network set-up), first one is `status.podIP`.
    pub pod_ips: &'a [IpAddr],
    /// The node's addresses, first one is `status.hostIP`.
    pub host_ips: &'a [IpAddr],
    /// What a container without a limit may use: kubelet reports node allocatable for an
    /// unset `limits.cpu` / `limits.memory` / `limits.ephemeral-storage`.
    pub allocatable: Allocatable,
}

/// Node allocatable, in the units [`resource_value`] needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub cpu_milli: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

/// A container's resolved environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedEnv {
    /// `NAME`, value; each name once, in order of first definition.
    pub vars: Vec<(String, String)>,
    /// What kubelet reports as a Warning event but does not fail on: `envFrom` keys that are
    /// no valid variable name and were skipped.
    pub warnings: Vec<String>,
}

/// The ConfigMaps, Secrets and PersistentVolumeClaims a pod names (in its own namespace), for
/// prefetching them into [`Prefetched`]: env and envFrom of every container and init
/// container, and configMap, secret, projected and persistentVolumeClaim volumes. Image pull
/// secrets are not included (they are the image puller's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
    pub claims: BTreeSet<String>,
}

/// What [`References`] a pod has.
pub fn references(pod: &Value) -> References {
    let mut out = References::default();
    let note = |set: &mut BTreeSet<String>, name: Option<&str>| {
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            set.insert(n.to_string());
        }
    };
    let spec = &pod["spec"];
    for c in ["containers", "initContainers"]
        .iter()
        .flat_map(|f| array(spec, f))
    {
        for e in array(c, "env") {
            let from = &e["valueFrom"];
            note(
                &mut out.config_maps,
                from["configMapKeyRef"]["name"].as_str(),
            );
            note(&mut out.secrets, from["secretKeyRef"]["name"].as_str());
        }
        for e in array(c, "envFrom") {
            note(&mut out.config_maps, e["configMapRef"]["name"].as_str());
            note(&mut out.secrets, e["secretRef"]["name"].as_str());
        }
    }
    for v in array(spec, "volumes") {
        note(&mut out.config_maps, v["configMap"]["name"].as_str());
        note(&mut out.secrets, v["secret"]["secretName"].as_str());
        note(
            &mut out.claims,
            v["persistentVolumeClaim"]["claimName"].as_str(),
        );
        for source in array(&v["projected"], "sources") {
            note(&mut out.config_maps, source["configMap"]["name"].as_str());
            note(&mut out.secrets, source["secret"]["name"].as_str());
        }
    }
    out
}

/// Resolves `container`'s `envFrom` and `env` against the pod and the prefetched objects.
// Tests resolve without Services; the runtime always passes the node's (`resolve_with`).
#[cfg(test)]
pub fn resolve(ctx: &PodContext, container: &Value, objects: &dyn Objects) -> Result<ResolvedEnv> {
    resolve_with(ctx, container, objects, Vec::new())
}

/// [`resolve`], starting from `base` (the Services' variables, [`service_vars`]): the
/// container's own `envFrom` and `env` override them and may refer to them with `$(NAME)`.
pub fn resolve_with(
    ctx: &PodContext,
    container: &Value,
    objects: &dyn Objects,
    base: Vec<(String, String)>,
) -> Result<ResolvedEnv> {
    let namespace = str_at(ctx.pod, &["metadata", "namespace"]).unwrap_or("default");
    let mut out = ResolvedEnv {
        vars: base,
        warnings: Vec::new(),
    };
    for source in array(container, "envFrom") {
        let prefix = source["prefix"].as_str().unwrap_or("");
        let (data, kind, name) = if let Some(r) = source.get("configMapRef") {
            let name = str_field(r, "name", "envFrom.configMapRef")?;
            match objects.config_map(namespace, name) {
                Some(cm) => (string_data(cm), "configMap", name),
                None if optional(r) => continue,
                None => return Err(EnvError::ConfigMapNotFound(name.to_string())),
            }
        } else if let Some(r) = source.get("secretRef") {
            let name = str_field(r, "name", "envFrom.secretRef")?;
            match objects.secret(namespace, name) {
                Some(s) => (secret_data(s), "secret", name),
                None if optional(r) => continue,
                None => return Err(EnvError::SecretNotFound(name.to_string())),
            }
        } else {
            return Err(invalid("envFrom", "needs configMapRef or secretRef"));
        };
        let mut skipped = Vec::new();
        for (key, value) in data {
            let var = format!("{prefix}{key}");
            if is_env_var_name(&var) {
                set(&mut out.vars, var, value);
            } else {
                skipped.push(var);
            }
        }
        if !skipped.is_empty() {
            skipped.sort();
            out.warnings.push(format!(
                "Keys [{}] from the EnvFrom {kind} {namespace}/{name} were skipped since they \
                 are considered invalid environment variable names.",
                skipped.join(", ")
            ));
        }
    }
    for entry in array(container, "env") {
        let name = str_field(entry, "name", "env")?;
        let value = match (entry.get("value"), entry.get("valueFrom")) {
            (_, Some(from)) if !from.is_null() => {
                match value_from(ctx, container, namespace, from, objects)? {
                    Some(v) => v,
                    None => continue,
                }
            }
            (Some(Value::String(v)), _) => {
                let defined = &out.vars;
                expand(v, |n| lookup(defined, n))
            }
            _ => String::new(),
        };
        set(&mut out.vars, name.to_string(), value);
    }
    Ok(out)
}

/// Expands `$(VAR)` references in `input` with `vars`, by Kubernetes' rules: `$$` is a literal
/// `$`, a reference `vars` does not know stays as written, an unclosed `$(` and a `$` before
/// anything else are kept.
pub fn expand<'v>(input: &str, vars: impl Fn(&str) -> Option<&'v str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A trailing `$` is itself.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match vars(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push('$');
                    out.push_str(after);
                    rest = "";
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = chars.as_str();
            }
        }
    }
    out.push_str(rest);
    out
}

/// The container's `command` and `args`, each expanded with the resolved environment.
pub fn expand_command(container: &Value, env: &[(String, String)]) -> (Vec<String>, Vec<String>) {
    let map: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let list = |field| {
        array(container, field)
            .filter_map(Value::as_str)
            .map(|s| expand(s, |n| map.get(n).copied()))
            .collect()
    };
    (list("command"), list("args"))
}

/// The value of a downward-API `fieldPath` for the pod. `labels` and `annotations` whole (only
/// allowed in volumes) are kubelet's `key="value"` lines, sorted by key.
pub fn field_value(ctx: &PodContext, path: &str) -> Result<String> {
    let pod = ctx.pod;
    let meta = |f: &str| str_at(pod, &["metadata", f]).unwrap_or("").to_string();
    let subscript = |prefix: &str| -> Option<String> {
        let inner = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(inner.to_string())
    };
    let ip = |ips: &[IpAddr]| ips.first().map(IpAddr::to_string).unwrap_or_default();
    let ips = |ips: &[IpAddr]| {
        ips.iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    Ok(match path {
        "metadata.name" => meta("name"),
        "metadata.namespace" => meta("namespace"),
        "metadata.uid" => meta("uid"),
        "metadata.labels" => format_map(&pod["metadata"]["labels"]),
        "metadata.annotations" => format_map(&pod["metadata"]["annotations"]),
        "spec.nodeName" => str_at(pod, &["spec", "nodeName"]).unwrap_or("").to_string(),
        "spec.serviceAccountName" => str_at(pod, &["spec", "serviceAccountName"])
            .unwrap_or("")
            .to_string(),
        "status.podIP" => ip(ctx.pod_ips),
        "status.podIPs" => ips(ctx.pod_ips),
        "status.hostIP" => ip(ctx.host_ips),
        "status.hostIPs" => ips(ctx.host_ips),
        _ => {
            if let Some(k) = subscript("metadata.labels['") {
                str_at(pod, &["metadata", "labels", &k])
                    .unwrap_or("")
                    .to_string()
            } else if let Some(k) = subscript("metadata.annotations['") {
                str_at(pod, &["metadata", "annotations", &k])
                    .unwrap_or("")
                    .to_string()
            } else {
                return Err(EnvError::FieldPath(path.to_string()));
            }
        }
    })
}

/// The value of a `resourceFieldRef` (`limits.cpu`, `requests.memory`, ...) for `container`,
/// divided by `divisor` and rounded up, as kubelet prints it. An unset limit is node
/// allocatable.
pub fn resource_value(
    ctx: &PodContext,
    container: &Value,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String> {
    let quantity_at = |field: &str, text: &str| {
        quantity::parse(text).map_err(|source| EnvError::Quantity {
            field: field.to_string(),
            source,
        })
    };
    let divisor = match divisor {
        Some(d) if !d.is_empty() => quantity_at("divisor", d)?,
        _ => quantity_at("divisor", "1")?,
    };
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| EnvError::Resource(resource.to_string()))?;
    if !matches!(section, "limits" | "requests") {
        return Err(EnvError::Resource(resource.to_string()));
    }
    let set = container["resources"][section][name].as_str();
    // API defaulting copies limits into unset requests; do it here too for pods made without it.
    let set = set.or_else(|| {
        (section == "requests")
            .then(|| container["resources"]["limits"][name].as_str())
            .flatten()
    });
    let given = |field: String| -> Result<Option<quantity::Quantity>> {
        set.map(|t| quantity_at(&field, t)).transpose()
    };
    let q = given(format!("resources.{resource}"))?;
    let ratio = |v: i64, d: i64| -> String {
        if d <= 0 {
            return "0".to_string();
        }
        // Rounded up, like kubelet's math.Ceil of the quotient.
        (v / d + i64::from(v % d > 0)).to_string()
    };
    Ok(match name {
        "cpu" => {
            let milli = match (q, section) {
                (Some(q), _) => q.milli(),
                (None, "limits") => ctx.allocatable.cpu_milli,
                (None, _) => 0,
            };
            ratio(milli, divisor.milli())
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match (q, section) {
                (Some(q), _) => q.value(),
                (None, "limits") if name == "memory" => ctx.allocatable.memory,
                (None, "limits") => ctx.allocatable.ephemeral_storage,
                (None, _) => 0,
            };
            ratio(bytes, divisor.value())
        }
        n if n.starts_with("hugepages-") => {
            ratio(q.map(|q| q.value()).unwrap_or(0), divisor.value())
        }
        _ => return Err(EnvError::Resource(resource.to_string())),
    })
}

/// Kubernetes' `IsEnvVarName`: letters, digits, `_`, `-` and `.`, not starting with a digit.
pub fn is_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || matches!(b, b'_' | b'-' | b'.') => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A ConfigMap's `data` as strings (binaryData is not offered to the environment, as in
/// kubelet), sorted by key.
pub fn string_data(config_map: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = config_map["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    out.sort();
    out
}

/// A Secret's `data`, decoded, sorted by key. Values that are not UTF-8 are made so with
/// replacement characters: an OCI spec is JSON and cannot carry other bytes. A value that is
/// not base64 is left out.
pub fn secret_data(secret: &Value) -> Vec<(String, String)> {
    secret_bytes(secret)
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// A Secret's `data` decoded, sorted by key.
pub fn secret_bytes(secret: &Value) -> Vec<(String, Vec<u8>)> {
    base64_map(&secret["data"])
}

/// A map of base64 strings (a Secret's `data`, a ConfigMap's `binaryData`) decoded, sorted.
pub fn base64_map(map: &Value) -> Vec<(String, Vec<u8>)> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out: Vec<(String, Vec<u8>)> = map
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), engine.decode(v.as_str()?).ok()?)))
        .collect();
    out.sort();
    out
}

// === impl Prefetched ===

impl Prefetched {
    pub fn with_config_map(mut self, object: Value) -> Prefetched {
        if let Some(key) = ObjectKey::of(&object) {
            self.config_maps.insert(key, object);
        }
        self
    }

    pub fn with_secret(mut self, object: Value) -> Prefetched {
        if let Some(key) = ObjectKey::of(&object) {
            self.secrets.insert(key, object);
        }
        self
    }
}

impl Objects for Prefetched {
    fn config_map(&self, namespace: &str, name: &str) -> Option<&Value> {
        self.config_maps.get(&ObjectKey::new(namespace, name))
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<&Value> {
        self.secrets.get(&ObjectKey::new(namespace, name))
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<&Value> {
        self.claims.get(&ObjectKey::new(namespace, name))
    }

    fn service_account_token(&self, audience: &str, seconds: i64) -> Option<&str> {
        self.tokens
            .get(&(audience.to_owned(), seconds))
            .map(String::as_str)
    }
}

/// Kubernetes' default lifetime of a projected service account token.
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// The (audience, lifetime) of every projected `serviceAccountToken` source of a pod.
pub fn token_sources(pod: &Value) -> BTreeSet<(String, i64)> {
    array(&pod["spec"], "volumes")
        .flat_map(|v| array(&v["projected"], "sources"))
        .filter_map(|s| s.get("serviceAccountToken"))
        .map(|t| {
            (
                t["audience"].as_str().unwrap_or_default().to_owned(),
                t["expirationSeconds"]
                    .as_i64()
                    .unwrap_or(DEFAULT_TOKEN_SECONDS),
            )
        })
        .collect()
}

// === impl ObjectKey ===

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of an object's JSON; `None` without a name. No namespace means `default`.
    pub fn of(object: &Value) -> Option<ObjectKey> {
        let name = str_at(object, &["metadata", "name"])?;
        let namespace = str_at(object, &["metadata", "namespace"]).unwrap_or("default");
        Some(ObjectKey::new(namespace, name))
    }
}

/// One `env[].valueFrom`; `None` when an optional source is missing (the variable is left out).
fn value_from(
    ctx: &PodContext,
    container: &Value,
    namespace: &str,
    from: &Value,
    objects: &dyn Objects,
) -> Result<Option<String>> {
    if let Some(f) = from.get("fieldRef") {
        let path = str_field(f, "fieldPath", "valueFrom.fieldRef")?;
        // `labels` and `annotations` whole are for volumes only.
        if matches!(path, "metadata.labels" | "metadata.annotations") {
            return Err(EnvError::FieldPath(path.to_string()));
        }
        return field_value(ctx, path).map(Some);
    }
    if let Some(r) = from.get("resourceFieldRef") {
        let resource = str_field(r, "resource", "valueFrom.resourceFieldRef")?;
        let target = match r["containerName"].as_str() {
            Some(n) if !n.is_empty() => find_container(ctx.pod, n)
                .ok_or_else(|| EnvError::NoSuchContainer(n.to_string()))?,
            _ => container,
        };
        return resource_value(ctx, target, resource, divisor(r).as_deref()).map(Some);
    }
    if let Some(r) = from.get("configMapKeyRef") {
        let name = str_field(r, "name", "valueFrom.configMapKeyRef")?;
        let key = str_field(r, "key", "valueFrom.configMapKeyRef")?;
        let Some(cm) = objects.config_map(namespace, name) else {
            return if optional(r) {
                Ok(None)
            } else {
                Err(EnvError::ConfigMapNotFound(name.to_string()))
            };
        };
        return match cm["data"][key].as_str() {
            Some(v) => Ok(Some(v.to_string())),
            None if optional(r) => Ok(None),
            None => Err(EnvError::ConfigMapKey {
                key: key.to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
            }),
        };
    }
    if let Some(r) = from.get("secretKeyRef") {
        let name = str_field(r, "name", "valueFrom.secretKeyRef")?;
        let key = str_field(r, "key", "valueFrom.secretKeyRef")?;
        let Some(secret) = objects.secret(namespace, name) else {
            return if optional(r) {
                Ok(None)
            } else {
                Err(EnvError::SecretNotFound(name.to_string()))
            };
        };
        return match secret_data(secret).into_iter().find(|(k, _)| k == key) {
            Some((_, v)) => Ok(Some(v)),
            None if optional(r) => Ok(None),
            None => Err(EnvError::SecretKey {
                key: key.to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
            }),
        };
    }
    Err(invalid(
        "valueFrom",
        "needs fieldRef, resourceFieldRef, configMapKeyRef or secretKeyRef",
    ))
}

/// A `divisor` as text: the API serves quantities as strings, but a hand-written pod may give
/// a number.
pub(crate) fn divisor(r: &Value) -> Option<String> {
    match &r["divisor"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The container (or init container) of the pod called `name`.
pub(crate) fn find_container<'p>(pod: &'p Value, name: &str) -> Option<&'p Value> {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|f| array(&pod["spec"], f))
        .find(|c| c["name"].as_str() == Some(name))
}

/// Kubelet's `FormatMap`: `key="value"` lines sorted by key, values quoted Go-style.
fn format_map(map: &Value) -> String {
    let mut pairs: Vec<(&String, &str)> = map
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k, v.as_str()?)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A string quoted like Go's `%q`: backslash escapes for quotes, backslashes and control
/// characters; printable Unicode kept.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Service as the variables of [`service_vars`] see it (one with a cluster IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLink {
    pub namespace: String,
    pub name: String,
    /// The primary cluster IP.
    pub ip: IpAddr,
    /// Name (may be empty), protocol in lower case (`tcp`), port; in the Service's order.
    pub ports: Vec<(String, &'static str, u16)>,
}

/// The variables kubelet gives every container about Services, as Docker links did: for the
/// `default/kubernetes` Service always, and for every Service of the pod's namespace unless
/// the pod says `enableServiceLinks: false` — `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`,
/// `<NAME>_SERVICE_PORT_<PORT NAME>`, `<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>` and its
/// `_PROTO`, `_PORT`, `_ADDR`. Names are upper-cased with `-` as `_`. A Service of the pod's
/// namespace wins over `default/kubernetes` for the same names, as in kubelet.
pub fn service_vars(pod: &Value, services: &[ServiceLink]) -> Vec<(String, String)> {
    let namespace = str_at(pod, &["metadata", "namespace"]).unwrap_or("default");
    let links = pod["spec"]["enableServiceLinks"].as_bool().unwrap_or(true);
    let mut chosen: Vec<&ServiceLink> = services
        .iter()
        .filter(|s| {
            (s.namespace == "default" && s.name == "kubernetes")
                || (links && s.namespace == namespace)
        })
        .collect();
    // The pod's own namespace last, so its Services' values win.
    chosen.sort_by_key(|s| (s.namespace == namespace, s.name.clone()));
    let mut vars = Vec::new();
    for s in chosen {
        let Some((_, first_proto, first_port)) = s.ports.first() else {
            continue;
        };
        let name = s.name.to_ascii_uppercase().replace('-', "_");
        let host = s.ip.to_string();
        set(&mut vars, format!("{name}_SERVICE_HOST"), host.clone());
        set(
            &mut vars,
            format!("{name}_SERVICE_PORT"),
            first_port.to_string(),
        );
        for (port_name, _, port) in s.ports.iter().filter(|p| !p.0.is_empty()) {
            let port_name = port_name.to_ascii_uppercase().replace('-', "_");
            set(
                &mut vars,
                format!("{name}_SERVICE_PORT_{port_name}"),
                port.to_string(),
            );
        }
        // Docker link variables; an IPv6 address in brackets, as kubelet writes it.
        let addr = match s.ip {
            IpAddr::V6(_) => format!("[{host}]"),
            IpAddr::V4(_) => host.clone(),
        };
        set(
            &mut vars,
            format!("{name}_PORT"),
            format!("{first_proto}://{addr}:{first_port}"),
        );
        for (_, proto, port) in &s.ports {
            let prefix = format!("{name}_PORT_{port}_{}", proto.to_ascii_uppercase());
            set(
                &mut vars,
                prefix.clone(),
                format!("{proto}://{addr}:{port}"),
            );
            set(&mut vars, format!("{prefix}_PROTO"), (*proto).to_owned());
            set(&mut vars, format!("{prefix}_PORT"), port.to_string());
            set(&mut vars, format!("{prefix}_ADDR"), host.clone());
        }
    }
    vars
}

fn set(vars: &mut Vec<(String, String)>, name: String, value: String) {
    match vars.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => vars.push((name, value)),
    }
}

fn lookup<'v>(vars: &'v [(String, String)], name: &str) -> Option<&'v str> {
    vars.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn optional(r: &Value) -> bool {
    r["optional"].as_bool().unwrap_or(false)
}

fn invalid(field: &str, reason: &str) -> EnvError {
    EnvError::Invalid {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn str_field<'v>(v: &'v Value, key: &str, context: &str) -> Result<&'v str> {
    v[key]
        .as_str()
        .ok_or_else(|| invalid(context, &format!("{key} must be a string")))
}

pub(crate) fn array<'v>(v: &'v Value, key: &str) -> impl Iterator<Item = &'v Value> {
    v[key].as_array().into_iter().flatten()
}

pub(crate) fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

// Named by path so the file resolves the same when tests/bundle.rs compiles this module.
#[cfg(test)]
#[path = "env/tests.rs"]
mod tests;
