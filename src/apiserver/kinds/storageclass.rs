//! storage.k8s.io/v1 StorageClass: a provisioner required, Kubernetes' defaults (reclaim
//! policy `Delete`, binding `Immediate`), what provisioning reads fixed after create, the
//! `kubectl get sc` columns, and which class is the default one.
//!
//! The default class ([`default_class`]) is what the API server writes into a new claim that
//! names none (Kubernetes' DefaultStorageClass admission); the registry lists the classes and
//! calls it, so the choice stays a pure function of them.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AGE, Column, NAME, Strategy, plain, text};
use crate::api::labels;

pub struct StorageClasses;

/// The annotation that makes a class the default one (`"true"`).
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// Its older form, which Kubernetes still honours.
const BETA_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// The fields provisioning reads: fixed once the class exists, with the field's name as
/// Kubernetes' messages say it.
const FIXED: [&str; 4] = [
    "parameters",
    "provisioner",
    "reclaimPolicy",
    "volumeBindingMode",
];

impl Strategy for StorageClasses {
    fn default(&self, _name: &str, obj: &mut Value) {
        if obj.get("reclaimPolicy").is_none_or(Value::is_null) {
            obj["reclaimPolicy"] = json!("Delete");
        }
        if obj.get("volumeBindingMode").is_none_or(Value::is_null) {
            obj["volumeBindingMode"] = json!("Immediate");
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let provisioner = text(obj, "/provisioner");
        if provisioner.is_empty() {
            causes.push("provisioner: Required value".into());
        } else if let Err(e) = labels::validate_label_key(&provisioner) {
            causes.push(format!("provisioner: Invalid value: {provisioner:?}: {e}"));
        }
        match obj.get("parameters") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    if !v.is_string() {
                        causes.push(format!("parameters[{k}]: Invalid value: must be a string"));
                    }
                }
            }
            Some(_) => causes.push("parameters: Invalid value: must be a map of strings".into()),
        }
        let policy = text(obj, "/reclaimPolicy");
        if !matches!(policy.as_str(), "Delete" | "Retain") {
            causes.push(format!(
                "reclaimPolicy: Unsupported value: {policy:?}: supported values: \"Delete\", \"Retain\""
            ));
        }
        let mode = text(obj, "/volumeBindingMode");
        if !matches!(mode.as_str(), "Immediate" | "WaitForFirstConsumer") {
            causes.push(format!(
                "volumeBindingMode: Unsupported value: {mode:?}: supported values: \"Immediate\", \"WaitForFirstConsumer\""
            ));
        }
        match obj.get("allowVolumeExpansion") {
            None | Some(Value::Null | Value::Bool(_)) => {}
            Some(v) => causes.push(format!(
                "allowVolumeExpansion: Invalid value: {v}: must be a boolean"
            )),
        }
        match obj.get("mountOptions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) if list.iter().all(Value::is_string) => {}
            Some(_) => causes.push("mountOptions: Invalid value: must be a list of strings".into()),
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        for field in FIXED {
            if old.get(field) != new.get(field) {
                causes.push(format!(
                    "{field}: Forbidden: updates to {field} are forbidden."
                ));
            }
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

/// Whether `class` is annotated as the default one.
pub fn is_default(class: &Value) -> bool {
    let annotations = class.pointer("/metadata/annotations");
    [DEFAULT_CLASS_ANNOTATION, BETA_DEFAULT_CLASS_ANNOTATION]
        .iter()
        .any(|a| annotations.and_then(|m| m.get(*a)) == Some(&json!("true")))
}

/// The name of the default class among `classes`: of those annotated default, the newest
/// by `creationTimestamp`, then the first by name (as Kubernetes 1.28 and later choose);
/// `None` when no class is the default.
pub fn default_class<'a>(classes: impl IntoIterator<Item = &'a Value>) -> Option<String> {
    let created =
        |c: &Value| OffsetDateTime::parse(&text(c, "/metadata/creationTimestamp"), &Rfc3339).ok();
    classes
        .into_iter()
        .filter(|c| is_default(c))
        .map(|c| (created(c), text(c, "/metadata/name")))
        .filter(|(_, name)| !name.is_empty())
        // Newest first, then by name: the greatest time, and among equals the least name.
        .max_by(|(t1, n1), (t2, n2)| t1.cmp(t2).then_with(|| n2.cmp(n1)))
        .map(|(_, name)| name)
}

static COLUMNS: [Column; 6] = [
    // The shared Name column, but marking the default class as kubectl does.
    Column {
        cell: |c, _| {
            let name = text(c, "/metadata/name");
            json!(if is_default(c) {
                format!("{name} (default)")
            } else {
                name
            })
        },
        ..NAME
    },
    plain(
        "Provisioner",
        "provisioner indicates the type of the provisioner.",
        0,
        |c, _| json!(text(c, "/provisioner")),
    ),
    plain(
        "ReclaimPolicy",
        "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class.",
        0,
        |c, _| json!(or(text(c, "/reclaimPolicy"), "Delete")),
    ),
    plain(
        "VolumeBindingMode",
        "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.",
        0,
        |c, _| json!(or(text(c, "/volumeBindingMode"), "Immediate")),
    ),
    plain(
        "AllowVolumeExpansion",
        "allowVolumeExpansion shows whether the storage class allow volume expand.",
        0,
        |c, _| json!(c["allowVolumeExpansion"].as_bool().unwrap_or(false)),
    ),
    AGE,
];

fn or(v: String, fallback: &str) -> String {
    if v.is_empty() { fallback.into() } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(body: Value) -> Value {
        let mut c = body;
        StorageClasses.default("c", &mut c);
        c
    }

    fn causes(c: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        StorageClasses.validate(c, &mut causes);
        causes
    }

    fn named(name: &str, created: &str, default: bool) -> Value {
        json!({
            "metadata": {
                "name": name,
                "creationTimestamp": created,
                "annotations": {DEFAULT_CLASS_ANNOTATION: if default { "true" } else { "false" }},
            },
            "provisioner": "rancher.io/local-path",
        })
    }

    #[test]
    fn defaults_and_validation_follow_kubernetes() {
        let c = class(
            json!({"metadata": {"name": "local-path"}, "provisioner": "rancher.io/local-path"}),
        );
        assert_eq!(
            (&c["reclaimPolicy"], &c["volumeBindingMode"]),
            (&json!("Delete"), &json!("Immediate"))
        );
        assert_eq!(causes(&c), Vec::<String>::new());
        let c = class(json!({
            "provisioner": "rancher.io/local-path",
            "reclaimPolicy": "Retain",
            "volumeBindingMode": "WaitForFirstConsumer",
            "allowVolumeExpansion": true,
            "mountOptions": ["noatime"],
            "parameters": {"nodePath": "/srv"},
        }));
        assert_eq!(c["reclaimPolicy"], "Retain");
        assert_eq!(causes(&c), Vec::<String>::new());
        let bad = class(json!({
            "reclaimPolicy": "Recycle",
            "volumeBindingMode": "Later",
            "parameters": {"n": 1},
        }));
        assert_eq!(
            causes(&bad),
            [
                "provisioner: Required value",
                "parameters[n]: Invalid value: must be a string",
                "reclaimPolicy: Unsupported value: \"Recycle\": supported values: \"Delete\", \"Retain\"",
                "volumeBindingMode: Unsupported value: \"Later\": supported values: \"Immediate\", \"WaitForFirstConsumer\"",
            ]
        );
        assert!(
            causes(&class(json!({"provisioner": "bad provisioner"})))[0]
                .starts_with("provisioner: Invalid value: \"bad provisioner\"")
        );
    }

    #[test]
    fn what_provisioning_reads_is_fixed_the_rest_may_change() {
        let old = class(named("local-path", "2026-01-10T12:00:00Z", true));
        let check = |new: &Value| {
            let mut causes = Vec::new();
            StorageClasses.validate_update(&old, new, &mut causes);
            causes
        };
        let mut new = old.clone();
        new["allowVolumeExpansion"] = json!(true);
        new["mountOptions"] = json!(["noatime"]);
        new["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] = json!("false");
        assert_eq!(check(&new), Vec::<String>::new());
        new["provisioner"] = json!("example.com/nfs");
        new["parameters"] = json!({"a": "b"});
        new["reclaimPolicy"] = json!("Retain");
        new["volumeBindingMode"] = json!("WaitForFirstConsumer");
        assert_eq!(
            check(&new),
            [
                "parameters: Forbidden: updates to parameters are forbidden.",
                "provisioner: Forbidden: updates to provisioner are forbidden.",
                "reclaimPolicy: Forbidden: updates to reclaimPolicy are forbidden.",
                "volumeBindingMode: Forbidden: updates to volumeBindingMode are forbidden.",
            ]
        );
    }

    #[test]
    fn the_default_class_is_the_newest_annotated_then_the_first_by_name() {
        let a = named("a", "2026-01-10T12:00:00Z", true);
        let b = named("b", "2026-01-10T12:00:00Z", true);
        let older = named("older", "2026-01-09T12:00:00Z", true);
        let newest_plain = named("plain", "2026-01-11T12:00:00Z", false);
        assert_eq!(
            default_class([&older, &b, &a, &newest_plain]),
            Some("a".into())
        );
        assert_eq!(default_class([&older, &newest_plain]), Some("older".into()));
        assert_eq!(default_class([&newest_plain]), None);
        assert_eq!(default_class([]), None);
        let mut beta = named("beta", "2026-01-08T12:00:00Z", false);
        beta["metadata"]["annotations"] = json!({BETA_DEFAULT_CLASS_ANNOTATION: "true"});
        assert_eq!(default_class([&beta, &newest_plain]), Some("beta".into()));
    }

    #[test]
    fn columns_read_like_kubectl_get_sc() {
        let now = OffsetDateTime::parse("2026-01-10T12:00:45Z", &Rfc3339).unwrap();
        let mut c = class(named("local-path", "2026-01-10T12:00:00Z", true));
        c["volumeBindingMode"] = json!("WaitForFirstConsumer");
        let row =
            |c: &Value| -> Vec<Value> { COLUMNS.iter().map(|col| (col.cell)(c, now)).collect() };
        assert_eq!(
            row(&c),
            [
                json!("local-path (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false),
                json!("45s")
            ]
        );
        c["metadata"]["annotations"] = json!({});
        c["allowVolumeExpansion"] = json!(true);
        assert_eq!(row(&c)[0], "local-path");
        assert_eq!(row(&c)[4], true);
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Provisioner",
                "ReclaimPolicy",
                "VolumeBindingMode",
                "AllowVolumeExpansion",
                "Age"
            ]
        );
    }
}
