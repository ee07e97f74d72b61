use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use serde_json::{Value, json};

use super::super::env::{Allocatable, ObjectKey, PodContext, Prefetched};
use super::super::{Kind, Sources, VolumeError, set_up as set_up_volumes};
use super::*;

/// The server's answer for claim `data`, bound to a volume with `spec`.
fn answer(spec: Value, local_path: bool) -> Value {
    let annotations = if local_path {
        json!({ PROVISIONED_BY: PROVISIONER })
    } else {
        json!({})
    };
    let mut volume = json!({
        "metadata": {"name": "pvc-u1", "annotations": annotations},
        "spec": spec,
    });
    volume["spec"]["claimRef"] = json!({"namespace": "ns", "name": "data", "uid": "u1"});
    json!({
        "claim": {"metadata": {"name": "data", "namespace": "ns", "uid": "u1"},
                  "spec": {"volumeName": "pvc-u1"}, "status": {"phase": "Bound"}},
        "volume": volume,
    })
}

fn objects(answer: Value) -> Prefetched {
    let mut out = Prefetched::default();
    out.claims.insert(
        ObjectKey {
            namespace: "ns".into(),
            name: "data".into(),
        },
        answer,
    );
    out
}

fn pod(source: Value, security: Value) -> Value {
    json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "pod-uid"},
        "spec": {"containers": [{"name": "c"}], "securityContext": security,
                 "volumes": [{"name": "data", "persistentVolumeClaim": source}]},
    })
}

fn set_up_pod(
    pod_dir: &Path,
    storage: &Path,
    pod: &Value,
    objects: &Prefetched,
) -> super::super::Result<super::super::Volumes> {
    let sources = Sources {
        pod: PodContext {
            pod,
            pod_ips: &[],
            host_ips: &[],
            allocatable: Allocatable::default(),
        },
        objects,
        local_storage: storage,
    };
    set_up_volumes(pod_dir, &sources)
}

fn cause(e: VolumeError) -> Cause {
    match e {
        VolumeError::SetUp { cause, .. } => *cause,
        other => panic!("not a set-up error: {other}"),
    }
}

/// Everything under `dir`, for "nothing was created" checks.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(tree(&e.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_claim_is_used_only_when_bound_both_ways() {
    let ok = answer(json!({"hostPath": {"path": "/x"}}), false);
    assert!(bound("data", Some(&ok)).is_ok());
    let err = bound("data", None).unwrap_err();
    assert_eq!(err.to_string(), "persistentvolumeclaim \"data\" not found");

    let mut pending = ok.clone();
    pending["claim"]["status"]["phase"] = json!("Pending");
    let err = bound("data", Some(&pending)).unwrap_err();
    assert!(matches!(err, Cause::ClaimNotBound(_)));
    assert_eq!(
        err.to_string(),
        "persistentvolumeclaim \"data\" is not bound"
    );

    let mut no_volume = ok.clone();
    no_volume["volume"] = Value::Null;
    assert!(matches!(
        bound("data", Some(&no_volume)),
        Err(Cause::ClaimNotBound(_))
    ));

    // The volume names an earlier claim of the same name.
    let mut stale = ok.clone();
    stale["volume"]["spec"]["claimRef"]["uid"] = json!("u0");
    assert!(matches!(
        bound("data", Some(&stale)),
        Err(Cause::ClaimNotBound(_))
    ));
}

#[test]
fn an_unbound_claim_fails_the_pod_check_with_kubelets_words() {
    let mut pending = answer(json!({"hostPath": {"path": "/x"}}), true);
    pending["claim"]["status"]["phase"] = json!("Pending");
    let p = pod(json!({"claimName": "data"}), json!({}));
    let err = check_bound(&p, &objects(pending)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"data\" : persistentvolumeclaim \"data\" is not bound"
    );
    let ok = answer(json!({"hostPath": {"path": "/x"}}), true);
    assert!(check_bound(&p, &objects(ok)).is_ok());
    // A pod without claims has nothing to wait for.
    assert!(check_bound(&json!({"spec": {}}), &Prefetched::default()).is_ok());
}

#[test]
fn a_local_path_volume_is_created_under_the_storage_path_for_anyone_to_write() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let path = storage.join("pvc-u1_ns_data");
    let a = answer(
        json!({"hostPath": {"path": path, "type": "DirectoryOrCreate"}}),
        true,
    );
    let p = pod(json!({"claimName": "data"}), json!({}));
    let volumes = set_up_pod(&tmp.path().join("pod"), &storage, &p, &objects(a)).unwrap();
    let v = volumes.get("data").unwrap();
    assert_eq!(v.path, path);
    assert_eq!(v.kind, Kind::PersistentVolumeClaim { read_only: false });
    assert!(!v.always_read_only());
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o777);
    // Set up again (a restart): the existing directory and its content are kept.
    fs::write(path.join("file"), "kept").unwrap();
    let a = answer(
        json!({"hostPath": {"path": path, "type": "DirectoryOrCreate"}}),
        true,
    );
    set_up_pod(&tmp.path().join("pod"), &storage, &p, &objects(a)).unwrap();
    assert_eq!(fs::read_to_string(path.join("file")).unwrap(), "kept");
}

#[test]
fn local_path_volumes_outside_the_storage_path_or_through_symlinks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&storage).unwrap();
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, storage.join("link")).unwrap();
    symlink(&outside, storage.join("pvc-leaf")).unwrap();
    let p = pod(json!({"claimName": "data"}), json!({}));
    let before = tree(tmp.path());
    for path in [
        storage.join("../outside/pvc-x"),
        PathBuf::from(format!("{}/./pvc-x", storage.display())),
        outside.join("pvc-x"),
        storage.clone(),
        PathBuf::from("relative/pvc-x"),
        storage.join("link/pvc-x"),
        storage.join("pvc-leaf"),
    ] {
        let a = answer(
            json!({"hostPath": {"path": path, "type": "DirectoryOrCreate"}}),
            true,
        );
        let err =
            cause(set_up_pod(&tmp.path().join("pod"), &storage, &p, &objects(a)).unwrap_err());
        assert!(
            matches!(err, Cause::Storage { .. }),
            "{}: {err}",
            path.display()
        );
        assert!(
            err.to_string().contains("--default-local-storage-path"),
            "{err}"
        );
    }
    // Nothing made anywhere (the pod dir neither: the volume failed first).
    assert_eq!(tree(tmp.path()), before);
    assert!(tree(&outside).is_empty());
}

#[test]
fn a_storage_path_that_is_a_symlink_is_refused_and_nothing_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir_all(&real).unwrap();
    let storage = tmp.path().join("storage");
    symlink(&real, &storage).unwrap();
    let a = answer(
        json!({"hostPath": {"path": storage.join("pvc-u1_ns_data"), "type": "DirectoryOrCreate"}}),
        true,
    );
    let p = pod(json!({"claimName": "data"}), json!({}));
    let err = cause(set_up_pod(&tmp.path().join("pod"), &storage, &p, &objects(a)).unwrap_err());
    assert!(err.to_string().contains("is a symlink"), "{err}");
    assert!(tree(&real).is_empty());
}

#[test]
fn a_read_only_claim_is_mounted_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let a = answer(
        json!({"hostPath": {"path": storage.join("pvc-u1_ns_data")}}),
        true,
    );
    let p = pod(json!({"claimName": "data", "readOnly": true}), json!({}));
    let volumes = set_up_pod(&tmp.path().join("pod"), &storage, &p, &objects(a)).unwrap();
    let v = volumes.get("data").unwrap();
    assert_eq!(v.kind, Kind::PersistentVolumeClaim { read_only: true });
    assert!(v.always_read_only());
}

/// A group to give volumes to: any as root, else our own (chown to it is always allowed).
fn some_group() -> u32 {
    if nix::unistd::geteuid().is_root() {
        4321
    } else {
        nix::unistd::getegid().as_raw()
    }
}

#[test]
fn fs_group_owns_a_local_path_volume_and_on_root_mismatch_skips_a_matching_root() {
    let gid = some_group();
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let path = storage.join("pvc-u1_ns_data");
    let spec = json!({"hostPath": {"path": path, "type": "DirectoryOrCreate"}});
    let p = pod(json!({"claimName": "data"}), json!({"fsGroup": gid}));
    set_up_pod(
        &tmp.path().join("pod"),
        &storage,
        &p,
        &objects(answer(spec.clone(), true)),
    )
    .unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.mode() & 0o2070, 0o2070, "setgid, group rwx");

    // A file the pod's group cannot write: OnRootMismatch leaves it (the root matches) ...
    let file = path.join("f");
    fs::write(&file, "x").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let skip = pod(
        json!({"claimName": "data"}),
        json!({"fsGroup": gid, "fsGroupChangePolicy": "OnRootMismatch"}),
    );
    set_up_pod(
        &tmp.path().join("pod"),
        &storage,
        &skip,
        &objects(answer(spec.clone(), true)),
    )
    .unwrap();
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    // ... Always (the default) walks the volume.
    set_up_pod(
        &tmp.path().join("pod"),
        &storage,
        &p,
        &objects(answer(spec, true)),
    )
    .unwrap();
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o660);
}

#[test]
fn static_host_path_volumes_follow_their_type_and_keep_their_owner() {
    let gid = some_group();
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    fs::create_dir_all(&host).unwrap();
    fs::set_permissions(&host, fs::Permissions::from_mode(0o700)).unwrap();
    let storage = tmp.path().join("storage");
    let p = pod(json!({"claimName": "data"}), json!({"fsGroup": gid}));
    // Not under the storage path, not provisioned by local-path: the host's own directory.
    let a = answer(
        json!({"hostPath": {"path": host, "type": "Directory"}}),
        false,
    );
    let volumes = set_up_pod(&tmp.path().join("pod"), &storage, &p, &objects(a)).unwrap();
    assert_eq!(volumes.get("data").unwrap().path, host);
    assert_eq!(
        fs::metadata(&host).unwrap().mode() & 0o7777,
        0o700,
        "left alone"
    );
    let a = answer(
        json!({"hostPath": {"path": host.join("missing"), "type": "Directory"}}),
        false,
    );
    let err = cause(set_up_pod(&tmp.path().join("pod"), &storage, &p, &objects(a)).unwrap_err());
    assert!(matches!(err, Cause::HostPathType { .. }), "{err}");
    // A local volume's path must exist.
    let a = answer(json!({"local": {"path": host.join("missing")}}), false);
    let err = cause(set_up_pod(&tmp.path().join("pod"), &storage, &p, &objects(a)).unwrap_err());
    assert!(matches!(err, Cause::Io { op: "stat", .. }), "{err}");
    // Other sources need drivers keelson does not have.
    let a = answer(json!({"nfs": {"server": "x", "path": "/"}}), false);
    let err = cause(set_up_pod(&tmp.path().join("pod"), &storage, &p, &objects(a)).unwrap_err());
    assert!(matches!(err, Cause::Unsupported(_)), "{err}");
}

#[test]
fn paths_below_the_storage_path_are_plain_and_strict() {
    let s = Path::new("/var/lib/keelson/storage");
    assert_eq!(
        below_storage(s, Path::new("/var/lib/keelson/storage/pvc-1_a_b")).map(|p| p.len()),
        Some(1)
    );
    for bad in [
        "/var/lib/keelson/storage",
        "/var/lib/keelson/storage/",
        "/var/lib/keelson/storage/../x",
        "/var/lib/keelson/storage/./x",
        "/var/lib/keelson/storagex/pvc",
        "/var/lib/keelson/other/pvc",
        "var/lib/keelson/storage/pvc",
    ] {
        assert!(below_storage(s, Path::new(bad)).is_none(), "{bad}");
    }
}
