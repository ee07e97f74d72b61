//! core/v1 PersistentVolumeClaim: access modes and a positive storage request required,
//! Kubernetes' defaults (`Filesystem` mode, phase `Pending`), a spec fixed after create but
//! for what the binder and resizing may change, and the `kubectl get pvc` columns.
//!
//! The API server adds [`PROTECTION_FINALIZER`] to every new claim (Kubernetes'
//! StorageObjectInUseProtection admission) and, when the claim names no class, the default
//! StorageClass's name (DefaultStorageClass admission: see
//! [`super::storageclass::default_class`]; the registry lists the classes). Binding is the
//! binder's.

use serde_json::{Map, Value, json};

use super::persistentvolume::{
    BETA_CLASS_ANNOTATION, access_modes_text, class_text, default_phase, default_volume_mode,
    parse_quantity, phase_text, quantity_text, unset_or, validate_access_modes,
    validate_class_name, validate_positive, validate_volume_mode,
};
use super::{AGE, Column, NAME, Strategy, plain, text};

pub struct PersistentVolumeClaims;

/// Held by every claim until no pod uses it (removed by the protection controller).
pub const PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";

impl Strategy for PersistentVolumeClaims {
    fn prepare_create(&self, obj: &mut Value) {
        super::persistentvolume::start_protected(obj, PROTECTION_FINALIZER);
    }

    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        default_volume_mode(&mut obj["spec"]);
        default_phase(obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let spec = &obj["spec"];
        validate_access_modes(
            spec,
            "spec.accessModes",
            "at least 1 access mode is required",
            causes,
        );
        match spec.pointer("/resources/requests/storage") {
            None | Some(Value::Null) => {
                causes.push("spec.resources[storage]: Required value".into())
            }
            Some(q) => validate_positive(q, "spec.resources[storage]", causes),
        }
        validate_volume_mode(spec, causes);
        validate_class_name(spec, causes);
    }

    /// Kubernetes' ValidatePersistentVolumeClaimUpdate: the spec is fixed, except that the
    /// binder may fill in `volumeName` and (for a claim made before there was a default
    /// class) `storageClassName` once, a bound claim's requests may grow, and its
    /// `volumeAttributesClassName` may change.
    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        let (Some(was), Some(now)) = (old["spec"].as_object(), new["spec"].as_object()) else {
            if old["spec"] != new["spec"] {
                causes.push(IMMUTABLE.into());
            }
            return;
        };
        let mut allowed = was.clone();
        let bound = text(old, "/status/phase") == "Bound";
        if bound {
            let storage = |spec: &Map<String, Value>| {
                spec.get("resources")
                    .and_then(|r| r.pointer("/requests/storage"))
                    .and_then(parse_quantity)
                    .map(|q| q.milli())
            };
            if let (Some(before), Some(after)) = (storage(was), storage(now))
                && after < before
            {
                causes.push(
                    "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
                        .into(),
                );
            }
            let requests = now.get("resources").and_then(|r| r.get("requests"));
            match (
                allowed.get_mut("resources").and_then(Value::as_object_mut),
                requests,
            ) {
                (Some(resources), Some(requests)) => {
                    resources.insert("requests".into(), requests.clone());
                }
                (Some(resources), None) => {
                    resources.remove("requests");
                }
                (None, _) => {}
            }
        }
        copy_field(&mut allowed, now, "volumeAttributesClassName");
        if text(&old["spec"], "/volumeName").is_empty() {
            copy_field(&mut allowed, now, "volumeName");
        }
        let beta_class = old
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(BETA_CLASS_ANNOTATION))
            .is_some();
        if was.get("storageClassName").is_none_or(Value::is_null) && !beta_class {
            copy_field(&mut allowed, now, "storageClassName");
        }
        if &allowed != now {
            causes.push(IMMUTABLE.into());
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

const IMMUTABLE: &str = "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims";

/// Makes `to[key]` what `from[key]` is, present or absent.
fn copy_field(to: &mut Map<String, Value>, from: &Map<String, Value>, key: &str) {
    match from.get(key) {
        Some(v) => {
            to.insert(key.into(), v.clone());
        }
        None => {
            to.remove(key);
        }
    }
}

/// Whether the claim names its volume (capacity and access modes are shown only then).
fn has_volume(c: &Value) -> bool {
    !text(c, "/spec/volumeName").is_empty()
}

static COLUMNS: [Column; 9] = [
    NAME,
    plain(
        "Status",
        "phase represents the current phase of PersistentVolumeClaim.",
        0,
        |c, _| json!(phase_text(c)),
    ),
    plain(
        "Volume",
        "volumeName is the binding reference to the PersistentVolume backing this claim.",
        0,
        |c, _| json!(text(c, "/spec/volumeName")),
    ),
    plain(
        "Capacity",
        "capacity represents the actual resources of the underlying volume.",
        0,
        |c, _| {
            json!(if has_volume(c) {
                quantity_text(c.pointer("/status/capacity/storage"))
            } else {
                String::new()
            })
        },
    ),
    plain(
        "Access Modes",
        "accessModes contains the actual access modes the volume backing the PVC has.",
        0,
        |c, _| {
            json!(if has_volume(c) {
                access_modes_text(c.pointer("/status/accessModes"))
            } else {
                String::new()
            })
        },
    ),
    plain("StorageClass", "StorageClass of the pvc", 0, |c, _| {
        json!(class_text(c))
    }),
    plain(
        "VolumeAttributesClass",
        "VolumeAttributesClass of the pvc",
        0,
        |c, _| json!(unset_or(c, "/spec/volumeAttributesClassName")),
    ),
    AGE,
    plain(
        "VolumeMode",
        "volumeMode defines what type of volume is required by the claim.",
        1,
        |c, _| json!(unset_or(c, "/spec/volumeMode")),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(spec: Value) -> Value {
        let mut c = json!({"metadata": {"name": "data", "namespace": "default"}, "spec": spec});
        PersistentVolumeClaims.prepare_create(&mut c);
        PersistentVolumeClaims.default("data", &mut c);
        c
    }

    fn causes(c: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        PersistentVolumeClaims.validate(c, &mut causes);
        causes
    }

    fn good() -> Value {
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}})
    }

    fn update(old: &Value, new: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        PersistentVolumeClaims.validate_update(old, new, &mut causes);
        causes
    }

    #[test]
    fn a_new_claim_is_pending_on_a_filesystem_and_protected_once() {
        let mut c = json!({
            "metadata": {"name": "data", "finalizers": [PROTECTION_FINALIZER]},
            "spec": good(),
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}},
        });
        PersistentVolumeClaims.prepare_create(&mut c);
        PersistentVolumeClaims.default("data", &mut c);
        assert_eq!(c["metadata"]["finalizers"], json!([PROTECTION_FINALIZER]));
        assert_eq!(c["status"], json!({"phase": "Pending"}));
        assert_eq!(c["spec"]["volumeMode"], "Filesystem");
        assert_eq!(
            claim(good())["metadata"]["finalizers"],
            json!([PROTECTION_FINALIZER])
        );
        let mut block = good();
        block["volumeMode"] = json!("Block");
        assert_eq!(claim(block)["spec"]["volumeMode"], "Block");
    }

    #[test]
    fn a_claim_needs_access_modes_and_a_positive_storage_request() {
        assert_eq!(causes(&claim(good())), Vec::<String>::new());
        let mut rwop = good();
        rwop["accessModes"] = json!(["ReadWriteOncePod"]);
        rwop["resources"]["requests"]["storage"] = json!(1_000_000);
        rwop["storageClassName"] = json!("");
        assert_eq!(causes(&claim(rwop)), Vec::<String>::new());
        assert_eq!(
            causes(&claim(json!({}))),
            [
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value",
            ]
        );
        let bad = claim(json!({
            "accessModes": ["ReadWriteOncePod", "ReadWriteMany"],
            "resources": {"requests": {"storage": "0Gi"}},
            "volumeMode": "Raw",
            "storageClassName": "Local_Path",
        }));
        let found = causes(&bad);
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(
            found[0],
            "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes"
        );
        assert_eq!(
            found[1],
            "spec.resources[storage]: Invalid value: \"0Gi\": must be greater than zero"
        );
        assert!(found[2].starts_with("spec.volumeMode: Unsupported value: \"Raw\""));
        assert!(found[3].starts_with("spec.storageClassName: Invalid value: \"Local_Path\""));
        let mut junk = good();
        junk["resources"]["requests"]["storage"] = json!("lots");
        assert!(
            causes(&claim(junk))[0].starts_with("spec.resources[storage]: Invalid value: \"lots\"")
        );
    }

    #[test]
    fn the_binder_may_fill_in_the_volume_and_class_once() {
        let old = claim(good());
        let mut new = old.clone();
        new["spec"]["volumeName"] = json!("pvc-1234");
        new["spec"]["storageClassName"] = json!("local-path");
        assert_eq!(update(&old, &new), Vec::<String>::new());
        // Once set they are fixed.
        let mut again = new.clone();
        again["spec"]["volumeName"] = json!("pvc-5678");
        assert_eq!(update(&new, &again), [IMMUTABLE]);
        let mut again = new.clone();
        again["spec"]["storageClassName"] = json!("other");
        assert_eq!(update(&new, &again), [IMMUTABLE]);
        // An empty class is a choice (no class), not a gap.
        let mut none = old.clone();
        none["spec"]["storageClassName"] = json!("");
        let mut filled = none.clone();
        filled["spec"]["storageClassName"] = json!("local-path");
        assert_eq!(update(&none, &filled), [IMMUTABLE]);
        let mut modes = old.clone();
        modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(update(&old, &modes), [IMMUTABLE]);
        // Status and metadata are not the spec.
        let mut status = old.clone();
        status["status"]["phase"] = json!("Lost");
        status["metadata"]["labels"] = json!({"app": "db"});
        assert_eq!(update(&old, &status), Vec::<String>::new());
    }

    #[test]
    fn only_a_bound_claim_may_grow_and_never_shrink() {
        let old = claim(good());
        let mut bigger = old.clone();
        bigger["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert_eq!(update(&old, &bigger), [IMMUTABLE]);
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pvc-1234");
        bound["status"]["phase"] = json!("Bound");
        let mut bigger = bound.clone();
        bigger["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        bigger["spec"]["volumeAttributesClassName"] = json!("fast");
        assert_eq!(update(&bound, &bigger), Vec::<String>::new());
        let mut smaller = bound.clone();
        smaller["spec"]["resources"]["requests"]["storage"] = json!("512Mi");
        assert_eq!(
            update(&bound, &smaller),
            [
                "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
            ]
        );
        let mut limits = bound.clone();
        limits["spec"]["resources"]["limits"] = json!({"storage": "4Gi"});
        assert_eq!(update(&bound, &limits), [IMMUTABLE]);
    }

    #[test]
    fn columns_read_like_kubectl_get_pvc() {
        let now = time::OffsetDateTime::parse(
            "2026-01-10T12:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let mut c = claim(good());
        c["metadata"]["creationTimestamp"] = json!("2026-01-10T11:56:48Z");
        c["spec"]["storageClassName"] = json!("local-path");
        let row =
            |c: &Value| -> Vec<Value> { COLUMNS.iter().map(|col| (col.cell)(c, now)).collect() };
        assert_eq!(
            row(&c),
            [
                "data",
                "Pending",
                "",
                "",
                "",
                "local-path",
                "<unset>",
                "3m12s",
                "Filesystem"
            ]
        );
        c["spec"]["volumeName"] = json!("pvc-1234");
        c["status"] = json!({
            "phase": "Bound",
            "capacity": {"storage": "2Gi"},
            "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
        });
        c["spec"]["volumeAttributesClassName"] = json!("fast");
        assert_eq!(
            row(&c),
            [
                "data",
                "Bound",
                "pvc-1234",
                "2Gi",
                "ROX,RWX",
                "local-path",
                "fast",
                "3m12s",
                "Filesystem"
            ]
        );
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Status",
                "Volume",
                "Capacity",
                "Access Modes",
                "StorageClass",
                "VolumeAttributesClass",
                "Age",
                "VolumeMode"
            ]
        );
        assert_eq!(COLUMNS[8].priority, 1);
    }
}
