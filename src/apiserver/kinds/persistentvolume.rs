//! core/v1 PersistentVolume: exactly one volume source (keelson's node mounts `hostPath` and
//! `local`; the others are stored for clients that read them), a positive storage capacity,
//! Kubernetes' defaults (reclaim policy `Retain`, `Filesystem` mode, phase `Pending`), the
//! fields fixed once set, and the `kubectl get pv` columns.
//!
//! The API server adds [`PROTECTION_FINALIZER`] to every new volume, as Kubernetes'
//! StorageObjectInUseProtection admission does; the protection controller removes it. Phases
//! after `Pending` are the binder's. The checks shared with claims (access modes, volume
//! mode, quantities) live here too.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, Strategy, plain, text};
use crate::api::labels;
use crate::api::quantity::Quantity;

pub struct PersistentVolumes;

/// Held by every volume until no claim is bound to it (removed by the protection controller).
pub const PROTECTION_FINALIZER: &str = "kubernetes.io/pv-protection";

/// The sources of a `PersistentVolumeSpec`; a volume names exactly one.
const SOURCES: [&str; 22] = [
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

const RECLAIM_POLICIES: [&str; 3] = ["Delete", "Recycle", "Retain"];
const HOST_PATH_TYPES: [&str; 8] = [
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];

impl Strategy for PersistentVolumes {
    fn prepare_create(&self, obj: &mut Value) {
        start_protected(obj, PROTECTION_FINALIZER);
    }

    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let spec = &mut obj["spec"];
        if text(spec, "/persistentVolumeReclaimPolicy").is_empty() {
            spec["persistentVolumeReclaimPolicy"] = json!("Retain");
        }
        default_volume_mode(spec);
        if let Some(host) = spec.get_mut("hostPath").and_then(Value::as_object_mut) {
            host.entry("type").or_insert(json!(""));
        }
        default_phase(obj);
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let spec = &obj["spec"];
        validate_access_modes(spec, "spec.accessModes", "", causes);
        match spec.get("capacity").and_then(Value::as_object) {
            None => causes.push("spec.capacity: Required value".into()),
            Some(capacity) if capacity.is_empty() => {
                causes.push("spec.capacity: Required value".into())
            }
            Some(capacity) => {
                if capacity.len() > 1 || !capacity.contains_key("storage") {
                    let names: Vec<&String> = capacity.keys().collect();
                    causes.push(format!(
                        "spec.capacity: Unsupported value: {names:?}: supported values: \"storage\""
                    ));
                }
                if let Some(q) = capacity.get("storage") {
                    validate_positive(q, "spec.capacity[storage]", causes);
                }
            }
        }
        let policy = text(spec, "/persistentVolumeReclaimPolicy");
        if !RECLAIM_POLICIES.contains(&policy.as_str()) {
            causes.push(format!(
                "spec.persistentVolumeReclaimPolicy: Unsupported value: {policy:?}: supported values: \"Delete\", \"Recycle\", \"Retain\""
            ));
        }
        validate_volume_mode(spec, causes);
        validate_class_name(spec, causes);
        validate_source(spec, causes);
        match spec.get("nodeAffinity") {
            None | Some(Value::Null) if spec.get("local").is_some_and(|l| !l.is_null()) => causes
                .push(
                    "spec.nodeAffinity: Required value: Local volume requires node affinity".into(),
                ),
            None | Some(Value::Null) => {}
            Some(affinity) => {
                if affinity.get("required").is_none_or(Value::is_null) {
                    causes.push(
                        "spec.nodeAffinity.required: Required value: must specify required node constraints"
                            .into(),
                    );
                }
            }
        }
        if let Some(claim) = spec.get("claimRef").filter(|c| !c.is_null())
            && text(claim, "/name").is_empty()
        {
            causes.push("spec.claimRef.name: Required value".into());
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        // The source says where the data is: changing it would move the data.
        let source = |v: &Value| -> Vec<(&'static str, Value)> {
            SOURCES
                .iter()
                .filter_map(|s| Some((*s, v["spec"].get(*s).filter(|x| !x.is_null())?.clone())))
                .collect()
        };
        if source(old) != source(new) {
            causes.push(
                "spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation"
                    .into(),
            );
        }
        if old["spec"]["volumeMode"] != new["spec"]["volumeMode"] {
            causes.push(format!(
                "spec.volumeMode: Invalid value: {}: field is immutable",
                new["spec"]["volumeMode"]
            ));
        }
        let affinity = &old["spec"]["nodeAffinity"];
        if !affinity.is_null() && *affinity != new["spec"]["nodeAffinity"] {
            causes.push("spec.nodeAffinity: Invalid value: field is immutable".into());
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 11] = [
    NAME,
    plain(
        "Capacity",
        "capacity is the description of the persistent volume's resources and capacity.",
        0,
        |v, _| json!(quantity_text(v.pointer("/spec/capacity/storage"))),
    ),
    plain(
        "Access Modes",
        "accessModes contains all ways the volume can be mounted.",
        0,
        |v, _| json!(access_modes_text(v.pointer("/spec/accessModes"))),
    ),
    plain(
        "Reclaim Policy",
        "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
        0,
        |v, _| json!(text(v, "/spec/persistentVolumeReclaimPolicy")),
    ),
    plain(
        "Status",
        "phase indicates if a volume is available, bound to a claim, or released by a claim.",
        0,
        |v, _| json!(phase_text(v)),
    ),
    plain(
        "Claim",
        "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
        0,
        |v, _| {
            json!(
                match v.pointer("/spec/claimRef").filter(|c| c.is_object()) {
                    Some(c) => format!("{}/{}", text(c, "/namespace"), text(c, "/name")),
                    None => String::new(),
                }
            )
        },
    ),
    plain("StorageClass", "StorageClass of the pv", 0, |v, _| {
        json!(class_text(v))
    }),
    plain(
        "VolumeAttributesClass",
        "VolumeAttributesClass of the pv",
        0,
        |v, _| json!(unset_or(v, "/spec/volumeAttributesClassName")),
    ),
    plain(
        "Reason",
        "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
        0,
        |v, _| json!(text(v, "/status/reason")),
    ),
    AGE,
    plain(
        "VolumeMode",
        "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
        1,
        |v, _| json!(unset_or(v, "/spec/volumeMode")),
    ),
];

// === helpers shared with claims ===

/// Adds `finalizer` to `metadata.finalizers` unless it is there already.
pub(super) fn add_finalizer(obj: &mut Value, finalizer: &str) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    match meta.get_mut("finalizers").and_then(Value::as_array_mut) {
        Some(list) if list.iter().any(|f| f == finalizer) => {}
        Some(list) => list.push(json!(finalizer)),
        None => meta["finalizers"] = json!([finalizer]),
    }
}

/// `status.phase` is `Pending` until a controller says otherwise.
pub(super) fn default_phase(obj: &mut Value) {
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if text(obj, "/status/phase").is_empty() {
        obj["status"]["phase"] = json!("Pending");
    }
}

pub(super) fn default_volume_mode(spec: &mut Value) {
    if spec.get("volumeMode").is_none_or(Value::is_null) {
        spec["volumeMode"] = json!("Filesystem");
    }
}

/// Each mode one Kubernetes knows; `ReadWriteOncePod` alone. `required` is the detail of
/// the cause when there is none (claims say more than volumes).
pub(super) fn validate_access_modes(
    spec: &Value,
    field: &str,
    required: &str,
    causes: &mut Vec<String>,
) {
    let modes = spec
        .get("accessModes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if modes.is_empty() {
        causes.push(if required.is_empty() {
            format!("{field}: Required value")
        } else {
            format!("{field}: Required value: {required}")
        });
        return;
    }
    for mode in modes {
        if !mode
            .as_str()
            .is_some_and(|m| ACCESS_MODES.iter().any(|(name, _)| *name == m))
        {
            causes.push(format!(
                "{field}: Unsupported value: {mode}: supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\""
            ));
        }
    }
    if modes.len() > 1 && modes.iter().any(|m| m == "ReadWriteOncePod") {
        causes.push(format!(
            "{field}: Forbidden: may not use ReadWriteOncePod with other access modes"
        ));
    }
}

pub(super) fn validate_volume_mode(spec: &Value, causes: &mut Vec<String>) {
    match spec.get("volumeMode") {
        None | Some(Value::Null) => {}
        Some(mode) if mode == "Filesystem" || mode == "Block" => {}
        Some(mode) => causes.push(format!(
            "spec.volumeMode: Unsupported value: {mode}: supported values: \"Block\", \"Filesystem\""
        )),
    }
}

/// A class name, when given and not empty, is a DNS subdomain (the StorageClass's name).
pub(super) fn validate_class_name(spec: &Value, causes: &mut Vec<String>) {
    match spec.get("storageClassName") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) if name.is_empty() || labels::is_dns_subdomain(name) => {}
        Some(name) => causes.push(format!(
            "spec.storageClassName: Invalid value: {name}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        )),
    }
}

/// A quantity (a JSON string or number) greater than zero.
pub(super) fn validate_positive(q: &Value, field: &str, causes: &mut Vec<String>) {
    match parse_quantity(q) {
        Some(parsed) if parsed.milli() > 0 => {}
        Some(_) => causes.push(format!(
            "{field}: Invalid value: {}: must be greater than zero",
            json!(quantity_text(Some(q)))
        )),
        None => causes.push(format!(
            "{field}: Invalid value: {q}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )),
    }
}

pub(super) fn parse_quantity(q: &Value) -> Option<Quantity> {
    match q {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

/// A quantity as `kubectl get` shows it (as it was written).
pub(super) fn quantity_text(q: Option<&Value>) -> String {
    match q {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Access modes as kubectl abbreviates them: `RWO,ROX,RWX,RWOP`, each once, in that order.
pub(super) fn access_modes_text(modes: Option<&Value>) -> String {
    let modes = modes
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    ACCESS_MODES
        .iter()
        .filter(|(name, _)| modes.iter().any(|m| m == name))
        .map(|(_, short)| *short)
        .collect::<Vec<_>>()
        .join(",")
}

/// The phase, or `Terminating` once deletion was asked for.
pub(super) fn phase_text(obj: &Value) -> String {
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return "Terminating".into();
    }
    text(obj, "/status/phase")
}

/// The class: the beta annotation when set (as Kubernetes still honours it), else the field.
pub(super) fn class_text(obj: &Value) -> String {
    match obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(BETA_CLASS_ANNOTATION))
        .and_then(Value::as_str)
    {
        Some(class) => class.to_owned(),
        None => text(obj, "/spec/storageClassName"),
    }
}

/// The string at `pointer`, or `<unset>` when it is absent.
pub(super) fn unset_or(obj: &Value, pointer: &str) -> String {
    match obj.pointer(pointer).and_then(Value::as_str) {
        Some(s) => s.to_owned(),
        None => "<unset>".into(),
    }
}

/// The class a volume or claim names in Kubernetes' older form.
pub const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// Every access mode and its abbreviation, in kubectl's order.
const ACCESS_MODES: [(&str, &str); 4] = [
    ("ReadWriteOnce", "RWO"),
    ("ReadOnlyMany", "ROX"),
    ("ReadWriteMany", "RWX"),
    ("ReadWriteOncePod", "RWOP"),
];

/// Exactly one source; `hostPath` and `local` paths absolute and without `..`.
fn validate_source(spec: &Value, causes: &mut Vec<String>) {
    let given: Vec<&str> = SOURCES
        .iter()
        .copied()
        .filter(|s| spec.get(*s).is_some_and(|v| !v.is_null()))
        .collect();
    match given.as_slice() {
        [] => causes.push("spec: Required value: must specify a volume type".into()),
        [_, more @ ..] => {
            for s in more {
                causes.push(format!(
                    "spec.{s}: Forbidden: may not specify more than 1 volume type"
                ));
            }
        }
    }
    for source in ["hostPath", "local"] {
        let Some(src) = spec.get(source).filter(|v| !v.is_null()) else {
            continue;
        };
        let path = text(src, "/path");
        if path.is_empty() {
            causes.push(format!("spec.{source}.path: Required value"));
        } else if !path.starts_with('/') {
            causes.push(format!(
                "spec.{source}.path: Invalid value: {path:?}: must be an absolute path"
            ));
        } else if path.split('/').any(|part| part == "..") {
            causes.push(format!(
                "spec.{source}.path: Invalid value: {path:?}: must not contain '..'"
            ));
        }
    }
    if let Some(kind) = spec.pointer("/hostPath/type")
        && !kind.is_null()
        && !kind.as_str().is_some_and(|k| HOST_PATH_TYPES.contains(&k))
    {
        causes.push(format!(
            "spec.hostPath.type: Unsupported value: {kind}: supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\""
        ));
    }
}

/// What a new volume or claim starts as: no status but what the binder writes (then
/// `Pending` by default) and its in-use protection finalizer (Kubernetes' admission).
pub(super) fn start_protected(obj: &mut Value, finalizer: &str) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("status".into(), json!({}));
    }
    add_finalizer(obj, finalizer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(spec: Value) -> Value {
        let mut v = json!({"metadata": {"name": "pv-1"}, "spec": spec});
        PersistentVolumes.default("pv-1", &mut v);
        v
    }

    fn causes(v: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        PersistentVolumes.validate(v, &mut causes);
        causes
    }

    fn host_path() -> Value {
        json!({
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/srv/data"},
        })
    }

    #[test]
    fn defaults_are_kubernetes_ones() {
        let v = volume(host_path());
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(v["spec"]["volumeMode"], "Filesystem");
        assert_eq!(v["spec"]["hostPath"]["type"], "");
        assert_eq!(v["status"]["phase"], "Pending");
        // What a client set stays.
        let mut spec = host_path();
        spec["persistentVolumeReclaimPolicy"] = json!("Delete");
        spec["volumeMode"] = json!("Block");
        let v = volume(spec);
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(v["spec"]["volumeMode"], "Block");
    }

    #[test]
    fn a_new_volume_gets_the_protection_finalizer_once_and_no_status() {
        let mut v = json!({
            "metadata": {"name": "pv-1", "finalizers": ["example.com/keep"]},
            "spec": host_path(),
            "status": {"phase": "Bound"},
        });
        PersistentVolumes.prepare_create(&mut v);
        PersistentVolumes.default("pv-1", &mut v);
        assert_eq!(
            v["metadata"]["finalizers"],
            json!(["example.com/keep", PROTECTION_FINALIZER])
        );
        assert_eq!(v["status"], json!({"phase": "Pending"}));
        PersistentVolumes.prepare_create(&mut v);
        assert_eq!(
            v["metadata"]["finalizers"].as_array().map(Vec::len),
            Some(2)
        );
        let mut bare = json!({"metadata": {"name": "pv-2"}});
        PersistentVolumes.prepare_create(&mut bare);
        assert_eq!(
            bare["metadata"]["finalizers"],
            json!([PROTECTION_FINALIZER])
        );
    }

    #[test]
    fn a_valid_host_path_or_local_volume_passes() {
        assert_eq!(causes(&volume(host_path())), Vec::<String>::new());
        let local = volume(json!({
            "capacity": {"storage": "10G"},
            "accessModes": ["ReadWriteOncePod"],
            "local": {"path": "/mnt/disks/ssd1"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["pi-1"]}]}]}},
            "storageClassName": "local-storage",
            "claimRef": {"namespace": "default", "name": "data"},
        }));
        assert_eq!(causes(&local), Vec::<String>::new());
        // Sources keelson does not mount are stored.
        let nfs = volume(json!({
            "capacity": {"storage": 1073741824},
            "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
            "nfs": {"server": "nas", "path": "/export"},
        }));
        assert_eq!(causes(&nfs), Vec::<String>::new());
    }

    #[test]
    fn bad_volumes_are_refused_with_kubernetes_causes() {
        let v = volume(json!({}));
        assert_eq!(
            causes(&v),
            [
                "spec.accessModes: Required value",
                "spec.capacity: Required value",
                "spec: Required value: must specify a volume type",
            ]
        );
        let mut spec = host_path();
        spec["nfs"] = json!({"server": "nas", "path": "/export"});
        spec["capacity"] = json!({"storage": "0"});
        spec["accessModes"] = json!(["ReadWriteOnce", "ReadWriteOncePod", "WriteSometimes"]);
        spec["persistentVolumeReclaimPolicy"] = json!("Keep");
        spec["volumeMode"] = json!("Raw");
        assert_eq!(
            causes(&volume(spec)),
            [
                "spec.accessModes: Unsupported value: \"WriteSometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\"",
                "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes",
                "spec.capacity[storage]: Invalid value: \"0\": must be greater than zero",
                "spec.persistentVolumeReclaimPolicy: Unsupported value: \"Keep\": supported values: \"Delete\", \"Recycle\", \"Retain\"",
                "spec.volumeMode: Unsupported value: \"Raw\": supported values: \"Block\", \"Filesystem\"",
                "spec.nfs: Forbidden: may not specify more than 1 volume type",
            ]
        );
        let mut spec = host_path();
        spec["hostPath"] = json!({"path": "srv/data", "type": "Folder"});
        spec["capacity"] = json!({"storage": "-1Gi", "cpu": "1"});
        let found = causes(&volume(spec));
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].starts_with("spec.capacity: Unsupported value"));
        assert!(found[1].starts_with("spec.capacity[storage]: Invalid value: \"-1Gi\""));
        assert_eq!(
            found[2],
            "spec.hostPath.path: Invalid value: \"srv/data\": must be an absolute path"
        );
        assert!(found[3].starts_with("spec.hostPath.type: Unsupported value: \"Folder\""));
    }

    #[test]
    fn a_local_volume_needs_node_affinity_and_a_clean_path() {
        let v = volume(json!({
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "local": {"path": "/mnt/../etc"},
        }));
        assert_eq!(
            causes(&v),
            [
                "spec.local.path: Invalid value: \"/mnt/../etc\": must not contain '..'",
                "spec.nodeAffinity: Required value: Local volume requires node affinity",
            ]
        );
    }

    #[test]
    fn source_volume_mode_and_node_affinity_are_fixed_but_the_rest_may_change() {
        let mut old = volume(host_path());
        old["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": []}});
        let check = |new: &Value| {
            let mut causes = Vec::new();
            PersistentVolumes.validate_update(&old, new, &mut causes);
            causes
        };
        let mut new = old.clone();
        new["spec"]["capacity"]["storage"] = json!("2Gi");
        new["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        new["spec"]["claimRef"] = json!({"namespace": "default", "name": "data"});
        new["spec"]["storageClassName"] = json!("manual");
        assert_eq!(check(&new), Vec::<String>::new());
        new["spec"]["hostPath"]["path"] = json!("/elsewhere");
        new["spec"]["volumeMode"] = json!("Block");
        new["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{}]}});
        let found = check(&new);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("spec.persistentvolumesource: Forbidden"));
        assert!(found[1].starts_with("spec.volumeMode: Invalid value: \"Block\""));
        assert_eq!(
            found[2],
            "spec.nodeAffinity: Invalid value: field is immutable"
        );
    }

    #[test]
    fn columns_read_like_kubectl_get_pv() {
        let now = time::OffsetDateTime::parse(
            "2026-01-10T12:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let v = json!({
            "metadata": {"name": "pvc-1234", "creationTimestamp": "2026-01-10T11:59:15Z"},
            "spec": {
                "capacity": {"storage": "5Gi"},
                "accessModes": ["ReadWriteOncePod", "ReadWriteOnce", "ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "db", "name": "data-0"},
                "storageClassName": "local-path",
                "volumeMode": "Filesystem",
                "hostPath": {"path": "/var/lib/keelson/storage/pvc-1234_db_data-0"},
            },
            "status": {"phase": "Bound"},
        });
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&v, now)).collect();
        assert_eq!(
            cells,
            [
                "pvc-1234",
                "5Gi",
                "RWO,RWOP",
                "Delete",
                "Bound",
                "db/data-0",
                "local-path",
                "<unset>",
                "",
                "45s",
                "Filesystem"
            ]
        );
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Capacity",
                "Access Modes",
                "Reclaim Policy",
                "Status",
                "Claim",
                "StorageClass",
                "VolumeAttributesClass",
                "Reason",
                "Age",
                "VolumeMode"
            ]
        );
        assert_eq!(COLUMNS[10].priority, 1);
        let mut gone = v.clone();
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-10T11:59:50Z");
        gone["spec"].as_object_mut().unwrap().remove("claimRef");
        gone["spec"].as_object_mut().unwrap().remove("volumeMode");
        gone["metadata"]["annotations"] = json!({BETA_CLASS_ANNOTATION: "old-class"});
        let cell = |i: usize| (COLUMNS[i].cell)(&gone, now);
        assert_eq!(
            (cell(4), cell(5), cell(6), cell(10)),
            (
                json!("Terminating"),
                json!(""),
                json!("old-class"),
                json!("<unset>")
            )
        );
    }
}
