//! The RBAC authorizer: what a request asks to do ([`Attributes`]), and whether the Roles,
//! ClusterRoles and their bindings allow it, evaluated as Kubernetes' RBAC authorizer does.
//!
//! IO-free: the policy objects come from an [`Objects`] view (the API server's in-memory
//! copy, kept current from the change feed by [`super::access`]), never from the datastore.
//! Deny is the default: a request is allowed only if some binding that names the user (by
//! name, group or service account) points at a role with a rule that covers the request.
//! There are no deny rules, so the order bindings are visited in never changes the answer.

pub mod defaults;

use std::sync::Arc;

use hyper::Method;
use serde_json::Value;

use crate::runtime::frozen::{Frozen, Json};

use super::resources::{CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES, Resource};

/// The objects authorisation reads, held in memory.
pub trait Objects: Send + Sync {
    /// The object of `resource` named `name` (in `namespace` for namespaced kinds).
    fn get(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Arc<Frozen>>;
    /// Every object of `resource` (in `namespace` only, if given).
    fn list(&self, resource: &'static Resource, namespace: Option<&str>) -> Vec<Arc<Frozen>>;
}

/// Namespace subresources: `namespaces/<name>/status` is a subresource of the namespace,
/// not a collection inside it.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// What a request asks to do, in the terms rules are written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: String,
        namespace: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

// === impl Attributes ===

impl Attributes {
    /// Reads a request the way Kubernetes' request-info parser does: `/api/v1/...` and
    /// `/apis/<group>/<version>/...` with at least one part after the version are resource
    /// requests; everything else (discovery, `/version`, `/metrics`) is a path.
    pub fn of_request(method: &Method, path: &str, query: Option<&str>) -> Attributes {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let rest = match segs.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => Some(("", rest)),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => Some((*group, rest)),
            _ => None,
        };
        let Some((group, mut parts)) = rest else {
            return Attributes::NonResource {
                verb: method.as_str().to_ascii_lowercase(),
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.into()
                },
            };
        };
        let mut namespace = "";
        if parts[0] == "namespaces" && parts.len() > 1 {
            namespace = parts[1];
            if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
                parts = &parts[2..];
            }
        }
        let resource = parts[0];
        let name = parts.get(1).copied().unwrap_or_default();
        let subresource = parts.get(2).copied().unwrap_or_default();
        let query: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let param = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
        // A watch of one object (`kubectl get pod x -w`) names it in its field selector.
        let field_name = param("fieldSelector")
            .and_then(|f| f.split(',').find_map(|t| t.strip_prefix("metadata.name=")))
            .unwrap_or_default();
        let name = if name.is_empty() { field_name } else { name };
        let verb = match *method {
            Method::GET | Method::HEAD if parts.len() == 1 => {
                if matches!(param("watch"), Some("true" | "1")) {
                    "watch"
                } else {
                    "list"
                }
            }
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if parts.len() == 1 => "deletecollection",
            Method::DELETE => "delete",
            _ => "",
        };
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        }
    }

    /// The refusal, worded as Kubernetes words it (kubectl prints it as is).
    pub fn forbidden(&self, user: &str) -> String {
        match self {
            Attributes::NonResource { verb, path } => {
                format!("forbidden: User {user:?} cannot {verb} path {path:?}")
            }
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => {
                let qualified = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                let combined = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                let head = if name.is_empty() {
                    format!("{qualified} is forbidden")
                } else {
                    format!("{qualified} {name:?} is forbidden")
                };
                let scope = if namespace.is_empty() {
                    "at the cluster scope".to_owned()
                } else {
                    format!("in the namespace {namespace:?}")
                };
                format!(
                    "{head}: User {user:?} cannot {verb} resource {combined:?} in API group {group:?} {scope}"
                )
            }
        }
    }
}

/// Whether a binding's subjects name this user, as Kubernetes matches them: a ServiceAccount
/// subject without a namespace means the binding's own.
pub fn applies_to<J: Json>(binding: &J, user: &str, groups: &[String]) -> bool {
    let binding_ns = binding
        .pointer("/metadata/namespace")
        .and_then(J::as_str)
        .unwrap_or_default();
    binding
        .get("subjects")
        .and_then(J::as_array)
        .into_iter()
        .flatten()
        .any(|s| {
            let field = |f: &str| s.get(f).and_then(J::as_str).unwrap_or_default();
            match field("kind") {
                "User" => field("name") == user,
                "Group" => groups.iter().any(|g| g == field("name")),
                "ServiceAccount" => {
                    let ns = match field("namespace") {
                        "" => binding_ns,
                        ns => ns,
                    };
                    !ns.is_empty()
                        && user
                            .strip_prefix("system:serviceaccount:")
                            .and_then(|rest| rest.split_once(':'))
                            == Some((ns, field("name")))
                }
                _ => false,
            }
        })
}

/// Whether one PolicyRule covers the request.
pub fn rule_allows<J: Json>(rule: &J, attrs: &Attributes) -> bool {
    let list = |f: &str| -> Vec<&str> {
        rule.get(f)
            .and_then(J::as_array)
            .into_iter()
            .flatten()
            .filter_map(J::as_str)
            .collect()
    };
    let verb_ok = list("verbs")
        .iter()
        .any(|v| *v == "*" || *v == attrs.verb());
    if !verb_ok {
        return false;
    }
    match attrs {
        Attributes::Resource {
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let combined = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let groups_ok = list("apiGroups").iter().any(|g| *g == "*" || g == group);
            let resources_ok = list("resources").iter().any(|r| {
                *r == "*"
                    || *r == combined
                    || (!subresource.is_empty()
                        && r.strip_prefix("*/") == Some(subresource.as_str()))
            });
            let names = list("resourceNames");
            let names_ok = names.is_empty() || names.contains(&name.as_str());
            groups_ok && resources_ok && names_ok
        }
        Attributes::NonResource { path, .. } => list("nonResourceURLs").iter().any(|u| {
            *u == "*"
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        }),
    }
}

/// Whether the user (with `groups`) may do what `attrs` says: some ClusterRoleBinding, or a
/// RoleBinding in the request's namespace, binds them to a role with a rule that allows it.
pub fn allows(objects: &dyn Objects, user: &str, groups: &[String], attrs: &Attributes) -> bool {
    let mut allowed = false;
    visit_rules(objects, user, groups, namespace_of(attrs), |rule| {
        allowed = rule_allows(rule, attrs);
        allowed
    });
    allowed
}

/// Every rule that applies to the user in `namespace` (cluster-wide ones too): what
/// `SelfSubjectRulesReview` (`kubectl auth can-i --list`) shows.
pub fn rules(objects: &dyn Objects, user: &str, groups: &[String], namespace: &str) -> Vec<Value> {
    let mut out = Vec::new();
    visit_rules(objects, user, groups, Some(namespace), |rule| {
        let rule = rule.thaw();
        if !out.contains(&rule) {
            out.push(rule);
        }
        false
    });
    out
}

/// The namespace whose RoleBindings count: the request's (for a Namespace object, its own
/// name, which the request parser reads as its namespace).
fn namespace_of(attrs: &Attributes) -> Option<&str> {
    match attrs {
        Attributes::Resource { namespace, .. } if !namespace.is_empty() => Some(namespace),
        _ => None,
    }
}

/// Calls `f` with each rule of each role bound to the user, until `f` returns true.
fn visit_rules(
    objects: &dyn Objects,
    user: &str,
    groups: &[String],
    namespace: Option<&str>,
    mut f: impl FnMut(&Frozen) -> bool,
) {
    let mut role_rules = |binding: &Frozen, namespace: Option<&str>| -> bool {
        let name = binding
            .pointer("/roleRef/name")
            .and_then(Frozen::as_str)
            .unwrap_or_default();
        let role = match binding.pointer("/roleRef/kind").and_then(Frozen::as_str) {
            Some("ClusterRole") => objects.get(&CLUSTERROLES, None, name),
            Some("Role") if namespace.is_some() => objects.get(&ROLES, namespace, name),
            _ => None,
        };
        role.iter()
            .flat_map(|r| r.get("rules").and_then(Frozen::as_array))
            .flatten()
            .any(&mut f)
    };
    for binding in objects.list(&CLUSTERROLEBINDINGS, None) {
        if applies_to(&*binding, user, groups) && role_rules(&binding, None) {
            return;
        }
    }
    if let Some(ns) = namespace {
        for binding in objects.list(&ROLEBINDINGS, Some(ns)) {
            if applies_to(&*binding, user, groups) && role_rules(&binding, Some(ns)) {
                return;
            }
        }
    }
}

/// The rules an aggregated ClusterRole should hold: those of every other ClusterRole that
/// one of its `aggregationRule.clusterRoleSelectors` selects, each once, in name order.
/// `None` for a ClusterRole without an aggregation rule.
pub fn aggregated_rules(role: &Frozen, all: &[Arc<Frozen>]) -> Option<Vec<Value>> {
    let selectors = role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Frozen::as_array)?;
    let own = role.pointer("/metadata/name");
    let mut sources: Vec<&Arc<Frozen>> = all
        .iter()
        .filter(|r| r.pointer("/metadata/name") != own)
        .filter(|r| {
            let labels = r.pointer("/metadata/labels").unwrap_or(Frozen::null());
            selectors
                .iter()
                .any(|s| super::kinds::workload::selects(s, labels))
        })
        .collect();
    sources.sort_by_key(|r| {
        r.pointer("/metadata/name")
            .and_then(Frozen::as_str)
            .map(str::to_owned)
    });
    let mut rules: Vec<Value> = Vec::new();
    for r in sources {
        for rule in r
            .get("rules")
            .and_then(Frozen::as_array)
            .into_iter()
            .flatten()
        {
            let rule = rule.thaw();
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }
    Some(rules)
}

#[cfg(test)]
mod tests;
