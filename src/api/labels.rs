//! Labels, taints and object names in Kubernetes' grammar (`--node-label k=v`, `--node-taint
//! k=v:NoExecute`, RFC 1123 names), shared by the flags that set them, the API that validates
//! them and the scheduler that reads taints — so habits from K3s and kubectl carry over.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// `kubernetes.io/arch` for this build, in Go's GOARCH spelling.
pub const ARCH: &str = match std::env::consts::ARCH.as_bytes() {
    b"aarch64" => "arm64",
    b"arm" => "arm",
    b"x86_64" => "amd64",
    b"x86" => "386",
    b"riscv64" => "riscv64",
    _ => std::env::consts::ARCH,
};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Taint {
    pub key: String,
    /// Left out of JSON when empty, as Kubernetes writes it (see the `Serialize` impl).
    #[serde(default)]
    pub value: String,
    pub effect: String,
}

pub const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

// === impl Taint ===

impl Serialize for Taint {
    /// JSON leaves an empty value out, as Kubernetes does. A format without field names
    /// (postcard, the tunnel's frames) writes every field: one left out there makes the reader
    /// take the effect for the value, and a node tainted `KEY:EFFECT` could not connect.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let omit = s.is_human_readable() && self.value.is_empty();
        let mut t = s.serialize_struct("Taint", if omit { 2 } else { 3 })?;
        t.serialize_field("key", &self.key)?;
        if omit {
            t.skip_field("value")?;
        } else {
            t.serialize_field("value", &self.value)?;
        }
        t.serialize_field("effect", &self.effect)?;
        t.end()
    }
}

/// `KEY=VALUE` (value may be empty).
pub fn parse_label(raw: &str) -> Result<(String, String), String> {
    let (k, v) = raw
        .split_once('=')
        .ok_or_else(|| format!("--node-label {raw:?} must be KEY=VALUE"))?;
    validate_label_key(k).map_err(|e| format!("--node-label {raw:?}: {e}"))?;
    validate_label_value(v).map_err(|e| format!("--node-label {raw:?}: {e}"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// `KEY[=VALUE]:EFFECT`.
pub fn parse_taint(raw: &str) -> Result<Taint, String> {
    let err = |why: String| {
        format!(
            "--node-taint {raw:?}: {why} (expected KEY[=VALUE]:EFFECT, EFFECT one of NoSchedule, PreferNoSchedule, NoExecute)"
        )
    };
    let (kv, effect) = raw
        .rsplit_once(':')
        .ok_or_else(|| err("no effect".into()))?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    let taint = Taint {
        key: key.into(),
        value: value.into(),
        effect: effect.into(),
    };
    validate_taint(&taint).map_err(err)?;
    Ok(taint)
}

pub fn validate_taint(t: &Taint) -> Result<(), String> {
    validate_label_key(&t.key)?;
    validate_label_value(&t.value)?;
    if !EFFECTS.contains(&t.effect.as_str()) {
        return Err(format!(
            "effect {:?} is not one of NoSchedule, PreferNoSchedule, NoExecute",
            t.effect
        ));
    }
    Ok(())
}

/// A qualified name with an optional DNS-subdomain prefix, as Kubernetes label keys are.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Err(format!("key prefix {p:?} must be a DNS subdomain"));
    }
    if name.is_empty() || name.len() > 63 || !is_qualified_name(name) {
        return Err(format!(
            "key {key:?} must be at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 || !is_qualified_name(value) {
        return Err(format!(
            "value {value:?} must be at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain: what Kubernetes requires of node names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// RFC 1123 label: what Kubernetes requires of namespace names.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_in_kubernetes_syntax() {
        let t = parse_taint("CriticalAddonsOnly=true:NoExecute").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_str(), t.effect.as_str()),
            ("CriticalAddonsOnly", "true", "NoExecute")
        );
        let t = parse_taint("dedicated:NoSchedule").unwrap();
        assert_eq!((t.value.as_str(), t.effect.as_str()), ("", "NoSchedule"));
        assert!(parse_taint("a=b:Sometimes").unwrap_err().contains("effect"));
        assert!(parse_taint("a=b").is_err());
    }

    #[test]
    fn taints_without_a_value_cross_the_tunnel() {
        // Found by fuzz/fuzz_targets/tunnel.rs: postcard has no field names, so a value left
        // out made `dedicated:NoSchedule` decode as value "NoSchedule" and a missing effect.
        let t = parse_taint("dedicated:NoSchedule").unwrap();
        let wire = postcard::to_stdvec(&vec![t.clone(), t.clone()]).unwrap();
        assert_eq!(
            postcard::from_bytes::<Vec<Taint>>(&wire).unwrap(),
            vec![t.clone(), t.clone()]
        );
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"key": "dedicated", "effect": "NoSchedule"})
        );
        assert_eq!(serde_json::from_value::<Taint>(json).unwrap(), t);
        let valued = parse_taint("CriticalAddonsOnly=true:NoExecute").unwrap();
        assert_eq!(serde_json::to_value(&valued).unwrap()["value"], "true");
    }

    #[test]
    fn labels_are_validated() {
        assert!(parse_label("node.kubernetes.io/zone=shelf-2").is_ok());
        assert!(parse_label("bad key=x").is_err());
        assert!(parse_label("k=-bad").is_err());
        assert!(is_dns_subdomain("pi-1.lan") && !is_dns_subdomain("Pi_1"));
    }
}
