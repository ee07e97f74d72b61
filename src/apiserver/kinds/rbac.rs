//! rbac.authorization.k8s.io/v1 Role, ClusterRole, RoleBinding, ClusterRoleBinding: stored and
//! validated the Kubernetes way (rules need verbs and a target; a binding's `roleRef` is
//! required and immutable; names are path segments, like `system:basic-user`). Enforced by
//! [`crate::apiserver::rbac`] for every caller but `system:masters` and nodes.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, NameRule, Strategy, plain, text};

const GROUP: &str = "rbac.authorization.k8s.io";

/// Roles and ClusterRoles; `cluster` allows `nonResourceURLs` rules.
pub struct Roles {
    pub cluster: bool,
}

/// RoleBindings and ClusterRoleBindings; `cluster` bindings may only name ClusterRoles.
pub struct Bindings {
    pub cluster: bool,
}

impl Strategy for Roles {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        for (i, rule) in obj
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let list = |f: &str| rule.get(f).and_then(Value::as_array).map_or(0, Vec::len);
            if list("verbs") == 0 {
                causes.push(format!(
                    "rules[{i}].verbs: Required value: verbs must contain at least one value"
                ));
            }
            let urls = list("nonResourceURLs") > 0;
            if urls && !self.cluster {
                causes.push(format!(
                    "rules[{i}].nonResourceURLs: Invalid value: namespaced rules cannot apply to non-resource URLs"
                ));
            }
            if urls && (list("resources") > 0 || list("apiGroups") > 0) {
                causes.push(format!(
                    "rules[{i}].nonResourceURLs: Invalid value: rules cannot apply to both regular resources and non-resource URLs"
                ));
            }
            if !urls && list("resources") == 0 {
                causes.push(format!("rules[{i}].resources: Required value: resource rules must supply at least one resource"));
            }
            if !urls && rule.get("apiGroups").is_none() {
                causes.push(format!("rules[{i}].apiGroups: Required value: resource rules must supply at least one api group"));
            }
        }
    }

    fn columns(&self) -> &'static [Column] {
        &ROLE_COLUMNS
    }
}

impl Strategy for Bindings {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let role_kind = text(obj, "/roleRef/kind");
        if text(obj, "/roleRef/apiGroup") != GROUP {
            causes.push(format!(
                "roleRef.apiGroup: Unsupported value: {:?}: supported values: \"{GROUP}\"",
                text(obj, "/roleRef/apiGroup")
            ));
        }
        let kinds: &[&str] = if self.cluster {
            &["ClusterRole"]
        } else {
            &["Role", "ClusterRole"]
        };
        if !kinds.contains(&role_kind.as_str()) {
            causes.push(format!(
                "roleRef.kind: Unsupported value: {role_kind:?}: supported values: {}",
                kinds
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if text(obj, "/roleRef/name").is_empty() {
            causes.push("roleRef.name: Required value".into());
        }
        for (i, s) in obj
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let kind = text(s, "/kind");
            if !matches!(kind.as_str(), "User" | "Group" | "ServiceAccount") {
                causes.push(format!(
                    "subjects[{i}].kind: Unsupported value: {kind:?}: supported values: \"ServiceAccount\", \"User\", \"Group\""
                ));
            }
            if text(s, "/name").is_empty() {
                causes.push(format!("subjects[{i}].name: Required value"));
            }
            if kind == "ServiceAccount" && self.cluster && text(s, "/namespace").is_empty() {
                causes.push(format!("subjects[{i}].namespace: Required value"));
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        if old.get("roleRef") != new.get("roleRef") {
            causes.push("roleRef: Invalid value: cannot change roleRef".into());
        }
    }

    fn columns(&self) -> &'static [Column] {
        &BINDING_COLUMNS
    }
}

static ROLE_COLUMNS: [Column; 2] = [
    NAME,
    plain(
        "Created At",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
        |r, _| json!(text(r, "/metadata/creationTimestamp")),
    ),
];

static BINDING_COLUMNS: [Column; 6] = [
    NAME,
    plain("Role", "The role that this binding grants.", 0, |b, _| {
        json!(format!(
            "{}/{}",
            text(b, "/roleRef/kind"),
            text(b, "/roleRef/name")
        ))
    }),
    AGE,
    plain("Users", "The users this binding applies to.", 1, |b, _| {
        json!(subjects(b, "User"))
    }),
    plain(
        "Groups",
        "The groups this binding applies to.",
        1,
        |b, _| json!(subjects(b, "Group")),
    ),
    plain(
        "ServiceAccounts",
        "The service accounts this binding applies to.",
        1,
        |b, _| json!(subjects(b, "ServiceAccount")),
    ),
];

fn subjects(b: &Value, kind: &str) -> String {
    b.get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind)
        .map(|s| {
            let name = text(s, "/name");
            match (kind, text(s, "/namespace")) {
                ("ServiceAccount", ns) if !ns.is_empty() => format!("{ns}/{name}"),
                _ => name,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_need_verbs_and_targets_and_bindings_a_fixed_role() {
        let mut causes = Vec::new();
        Roles { cluster: false }.validate(
            &json!({"rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods"]},
                {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
            ]}),
            &mut causes,
        );
        assert_eq!(causes.len(), 2, "{causes:?}");
        causes.clear();
        Roles { cluster: true }.validate(
            &json!({"rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]}),
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
        let binding = json!({
            "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "shop"}, {"kind": "User", "name": "ann"}],
        });
        Bindings { cluster: false }.validate(&binding, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        Bindings { cluster: true }.validate(&binding, &mut causes);
        assert_eq!(
            causes.len(),
            1,
            "a cluster binding may not name a Role: {causes:?}"
        );
        causes.clear();
        let mut other = binding.clone();
        other["roleRef"]["name"] = json!("writer");
        Bindings { cluster: false }.validate_update(&binding, &other, &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(subjects(&binding, "ServiceAccount"), "shop/default");
    }
}
