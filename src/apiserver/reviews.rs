//! What a caller may ask about itself: `SelfSubjectAccessReview` (`kubectl auth can-i`),
//! `SelfSubjectRulesReview` (`kubectl auth can-i --list`) and `SelfSubjectReview`
//! (`kubectl auth whoami`). Nothing is stored; each answer is the request with its status.

use serde_json::{Value, json};

use super::access::{Access, with_authenticated};
use super::auth::Identity;
use super::rbac::Attributes;
use super::status::{ApiError, Result};

/// Answers a `SelfSubjectAccessReview`: may the caller do what its spec describes?
pub fn access(access: &Access, id: &Identity, body: Value) -> Result<Value> {
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let field = |v: &Value, f: &str| {
        v.get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let attrs = match (
        spec.get("resourceAttributes"),
        spec.get("nonResourceAttributes"),
    ) {
        (Some(r), None) if r.is_object() => Attributes::Resource {
            verb: field(r, "verb"),
            group: field(r, "group"),
            resource: field(r, "resource"),
            subresource: field(r, "subresource"),
            namespace: field(r, "namespace"),
            name: field(r, "name"),
        },
        (None, Some(n)) if n.is_object() => Attributes::NonResource {
            verb: field(n, "verb"),
            path: field(n, "path"),
        },
        _ => {
            return Err(ApiError::Invalid {
                kind: "SelfSubjectAccessReview.authorization.k8s.io".into(),
                name: String::new(),
                causes: vec![
                    "spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
                ],
            });
        }
    };
    let allowed = access.allows(id, &attrs)?;
    let mut status = json!({"allowed": allowed});
    if allowed {
        status["reason"] = json!(match id {
            Identity::User { groups, .. } if groups.iter().any(|g| g == super::auth::MASTERS) =>
                "the user is in system:masters",
            _ => "allowed by a role binding",
        });
    }
    Ok(json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    }))
}

/// Answers a `SelfSubjectRulesReview`: the rules that apply to the caller in a namespace.
pub fn rules(access: &Access, id: &Identity, body: Value) -> Result<Value> {
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let namespace = spec
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (mut resource_rules, mut non_resource_rules) = (Vec::new(), Vec::new());
    for rule in access.rules(id, namespace)? {
        if rule.get("nonResourceURLs").is_some() {
            non_resource_rules.push(json!({
                "verbs": rule.get("verbs").cloned().unwrap_or(json!([])),
                "nonResourceURLs": rule["nonResourceURLs"],
            }));
        } else {
            let mut r = json!({"verbs": rule.get("verbs").cloned().unwrap_or(json!([]))});
            for f in ["apiGroups", "resources", "resourceNames"] {
                if let Some(v) = rule.get(f) {
                    r[f] = v.clone();
                }
            }
            resource_rules.push(r);
        }
    }
    Ok(json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": {
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": false,
        },
    }))
}

/// Answers a `SelfSubjectReview` (in `api_version`, which the client chose): who the
/// caller is.
pub fn whoami(id: &Identity, api_version: &str) -> Value {
    let (name, groups) = match id {
        Identity::User { name, groups, .. } => (name.clone(), with_authenticated(groups)),
        Identity::Anonymous => (
            "system:anonymous".to_owned(),
            vec!["system:unauthenticated".to_owned()],
        ),
    };
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": name, "groups": groups}},
    })
}
