//! Label and field selectors (`?labelSelector=`, `?fieldSelector=`), parsed once per request
//! and matched against JSON objects.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{param} {raw:?} is invalid: {reason}")]
pub struct Error {
    param: &'static str,
    raw: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Selector {
    pub fn parse(label: Option<&str>, field: Option<&str>) -> Result<Selector, Error> {
        let labels = match label {
            Some(raw) => parse_requirements(raw, true).map_err(|reason| Error {
                param: "labelSelector",
                raw: raw.into(),
                reason,
            })?,
            None => Vec::new(),
        };
        let fields = match field {
            Some(raw) => parse_requirements(raw, false).map_err(|reason| Error {
                param: "fieldSelector",
                raw: raw.into(),
                reason,
            })?,
            None => Vec::new(),
        };
        Ok(Selector { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label_ok = self.labels.iter().all(|r| {
            let v = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            r.matches(v)
        });
        label_ok
            && self.fields.iter().all(|r| {
                let v = field_value(obj, &r.key);
                r.matches(Some(&v))
            })
    }
}

impl Requirement {
    fn matches(&self, v: Option<&str>) -> bool {
        match &self.op {
            Op::Eq(want) => v == Some(want.as_str()),
            Op::NotEq(want) => v != Some(want.as_str()),
            Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
            Op::NotIn(set) => !v.is_some_and(|v| set.iter().any(|s| s == v)),
            Op::Exists => v.is_some(),
            Op::NotExists => v.is_none(),
        }
    }
}

/// A field's value as field selectors see it: strings as-is, scalars printed, missing "".
fn field_value(obj: &Value, key: &str) -> String {
    let pointer = format!("/{}", key.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn parse_requirements(raw: &str, set_based: bool) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for term in split_terms(raw) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let req = if let Some((k, v)) = term.split_once("!=") {
            Requirement {
                key: k.trim().into(),
                op: Op::NotEq(v.trim().into()),
            }
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement {
                key: k.trim().into(),
                op: Op::Eq(v.trim().into()),
            }
        } else if set_based && (term.contains(" in ") || term.contains(" notin ")) {
            let (k, rest, negate) = match term.split_once(" notin ") {
                Some((k, r)) => (k, r, true),
                None => match term.split_once(" in ") {
                    Some((k, r)) => (k, r, false),
                    None => return Err(format!("cannot parse {term:?}")),
                },
            };
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("{term:?}: values must be in parentheses"))?;
            let set = inner
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            Requirement {
                key: k.trim().into(),
                op: if negate { Op::NotIn(set) } else { Op::In(set) },
            }
        } else if set_based {
            match term.strip_prefix('!') {
                Some(k) => Requirement {
                    key: k.trim().into(),
                    op: Op::NotExists,
                },
                None => Requirement {
                    key: term.into(),
                    op: Op::Exists,
                },
            }
        } else {
            return Err(format!(
                "{term:?} must be FIELD=VALUE, FIELD==VALUE or FIELD!=VALUE"
            ));
        };
        if req.key.is_empty() || req.key.contains(char::is_whitespace) {
            return Err(format!("{term:?} has an invalid key"));
        }
        out.push(req);
    }
    Ok(out)
}

/// Splits on commas outside parentheses.
fn split_terms(raw: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in raw.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&raw[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&raw[start..]);
    terms
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_and_field_selectors() {
        let pod = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "fe"}}, "spec": {"nodeName": "pi-1"}, "status": {"phase": "Running"}});
        let m = |l: Option<&str>, f: Option<&str>| Selector::parse(l, f).unwrap().matches(&pod);
        assert!(m(Some("app=web,tier in (fe, be)"), None));
        assert!(!m(Some("app!=web"), None));
        assert!(m(Some("!missing,app"), None));
        assert!(!m(Some("tier notin (fe)"), None));
        assert!(m(
            None,
            Some("spec.nodeName=pi-1,status.phase!=Succeeded,status.phase!=Failed")
        ));
        assert!(!m(None, Some("metadata.name=b")));
        assert!(Selector::parse(None, Some("justakey")).is_err());
        assert!(Selector::parse(Some("a in b"), None).is_err());
    }
}
