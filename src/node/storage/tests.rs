use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::symlink;

use serde_json::{Value, json};

use super::*;

const DIR: &str = "pvc-u1_default_data";

/// A local-path volume as the provisioner makes it, for `DIR` under `storage`, being deleted.
fn released(storage: &Path) -> Value {
    json!({
        "metadata": {"name": "pvc-u1", "deletionTimestamp": "2025-01-01T00:00:00Z",
                     "finalizers": ["kubernetes.io/pv-protection", CLEANUP_FINALIZER]},
        "spec": {"persistentVolumeReclaimPolicy": "Delete",
                 "hostPath": {"path": storage.join(DIR), "type": "DirectoryOrCreate"},
                 "claimRef": {"namespace": "default", "name": "data", "uid": "u1"}},
    })
}

fn key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: namespace.into(),
        name: name.into(),
    }
}

#[test]
fn the_sweep_removes_only_a_released_deleted_volume_nobody_uses() {
    let storage = Path::new("/var/lib/keelson/storage");
    let dir = OsStr::new(DIR);
    let none = HashSet::new();
    let decide_for = |pv: &Value, in_use: &HashSet<ObjectKey>| decide(storage, dir, Ok(pv), in_use);

    let pv = released(storage);
    assert_eq!(decide_for(&pv, &none), Decision::Remove);

    let mut retained = pv.clone();
    retained["spec"]["persistentVolumeReclaimPolicy"] = json!("Retain");
    assert_eq!(decide_for(&retained, &none), Decision::Keep(Keep::Retained));

    let mut live = pv.clone();
    live["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("deletionTimestamp");
    assert_eq!(decide_for(&live, &none), Decision::Keep(Keep::Live));

    let mut cleaned = pv.clone();
    cleaned["metadata"]["finalizers"] = json!(["kubernetes.io/pv-protection"]);
    assert_eq!(decide_for(&cleaned, &none), Decision::Keep(Keep::Live));

    let mut elsewhere = pv.clone();
    elsewhere["spec"]["hostPath"]["path"] = json!("/srv/other/pvc-u1_default_data");
    assert!(matches!(
        decide_for(&elsewhere, &none),
        Decision::Keep(Keep::OtherPath(_))
    ));

    // Used by a pod on this node: by the directory's name, or by the volume's claimRef.
    let used = HashSet::from([key("default", "data")]);
    assert_eq!(decide_for(&pv, &used), Decision::Keep(Keep::InUse));
    let mut renamed = pv.clone();
    renamed["spec"]["claimRef"]["name"] = json!("other");
    let other = HashSet::from([key("default", "other")]);
    assert_eq!(
        decide(storage, OsStr::new("pvc-u1"), Ok(&renamed), &other),
        Decision::Keep(Keep::InUse)
    );
    // Another namespace's claim of the same name is another claim.
    let elsewhere_ns = HashSet::from([key("prod", "data")]);
    assert_eq!(decide_for(&pv, &elsewhere_ns), Decision::Remove);

    let gone = ObjectError::NotFound(Wanted::LocalVolume {
        name: "pvc-u1".into(),
    });
    assert_eq!(
        decide(storage, dir, Err(&gone), &none),
        Decision::Keep(Keep::VolumeGone)
    );
    let refused = ObjectError::Forbidden("not pinned".into());
    assert!(matches!(
        decide(storage, dir, Err(&refused), &none),
        Decision::Keep(Keep::NoAnswer(_))
    ));
}

#[test]
fn directory_names_give_the_volume_and_the_claim() {
    assert_eq!(volume_name(OsStr::new(DIR)), Some("pvc-u1"));
    assert_eq!(volume_name(OsStr::new("pvc-u2")), Some("pvc-u2"));
    assert_eq!(volume_name(OsStr::new("pvc-_x_y")), None);
    assert_eq!(claim_of(OsStr::new(DIR)), Some(key("default", "data")));
    assert_eq!(claim_of(OsStr::new("pvc-u2")), None);
}

#[test]
fn removal_stays_inside_the_volume_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(storage.join(DIR).join("a/b")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("keep"), "x").unwrap();
    fs::write(storage.join(DIR).join("a/b/file"), "data").unwrap();
    symlink(&outside, storage.join(DIR).join("a/link")).unwrap();
    symlink(outside.join("keep"), storage.join(DIR).join("file-link")).unwrap();
    fs::write(storage.join("pvc-neighbour"), "n").unwrap();

    remove_volume_dir(&storage, OsStr::new(DIR)).unwrap();
    assert!(!storage.join(DIR).exists());
    assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "x");
    assert!(storage.join("pvc-neighbour").exists());

    // A symlink in the volume's place is not followed.
    symlink(&outside, storage.join("pvc-link")).unwrap();
    assert!(remove_volume_dir(&storage, OsStr::new("pvc-link")).is_err());
    assert!(outside.join("keep").exists());
    // Names that are not one plain entry are refused.
    for bad in ["..", ".", "", "a/../..", "pvc-x/../../outside"] {
        assert!(
            remove_volume_dir(&storage, OsStr::new(bad)).is_err(),
            "{bad:?}"
        );
    }
    assert!(outside.join("keep").exists());
}

#[test]
fn a_storage_path_that_is_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir_all(real.join(DIR)).unwrap();
    let storage = tmp.path().join("storage");
    symlink(&real, &storage).unwrap();
    assert!(remove_volume_dir(&storage, OsStr::new(DIR)).is_err());
    assert!(real.join(DIR).exists(), "nothing deleted");
}

/// Answers the sweep's requests as a server would, recording them.
fn server(
    mut requests: tokio::sync::mpsc::Receiver<super::super::objects::ObjectRequest>,
    volume: Option<Value>,
) -> tokio::task::JoinHandle<Vec<Wanted>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(r) = requests.recv().await {
            let answer = match (&r.wanted, &volume) {
                (Wanted::LocalVolume { .. }, Some(pv)) => Ok(pv.to_string()),
                (Wanted::LocalVolume { .. }, None) => Err((404, "not found".into())),
                (Wanted::LocalVolumeCleaned { .. }, _) => Ok("{}".into()),
                _ => Err((403, "no".into())),
            };
            seen.push(r.wanted);
            let _ = r.reply.send(answer);
        }
        seen
    })
}

#[tokio::test]
async fn a_sweep_removes_then_confirms_and_asks_nothing_without_volume_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let pods = tmp.path().join("pods");
    fs::create_dir_all(&pods).unwrap();

    // Nothing under the storage path (not even the path itself): no question at all.
    let (client, requests) = super::super::objects::channel();
    let answers = server(requests, Some(released(&storage)));
    let mut sweeper = Sweeper::new(storage.clone(), pods.clone(), client);
    sweeper.sweep().await;
    fs::create_dir_all(storage.join("not-a-volume")).unwrap();
    sweeper.sweep().await;
    drop(sweeper);
    assert!(answers.await.unwrap().is_empty());

    // A pod here uses the claim: kept, and not even asked about.
    fs::create_dir_all(storage.join(DIR)).unwrap();
    fs::create_dir_all(pods.join("uid-1")).unwrap();
    let pod = json!({"metadata": {"namespace": "default", "name": "p"},
                     "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}});
    fs::write(pods.join("uid-1/pod.json"), pod.to_string()).unwrap();
    let (client, requests) = super::super::objects::channel();
    let answers = server(requests, Some(released(&storage)));
    let mut sweeper = Sweeper::new(storage.clone(), pods.clone(), client);
    sweeper.sweep().await;
    drop(sweeper);
    assert!(answers.await.unwrap().is_empty());
    assert!(storage.join(DIR).exists());

    // The pod is gone: removed, then confirmed.
    fs::remove_dir_all(pods.join("uid-1")).unwrap();
    let (client, requests) = super::super::objects::channel();
    let answers = server(requests, Some(released(&storage)));
    let mut sweeper = Sweeper::new(storage.clone(), pods.clone(), client);
    sweeper.sweep().await;
    drop(sweeper);
    let name = "pvc-u1".to_string();
    assert_eq!(
        answers.await.unwrap(),
        [
            Wanted::LocalVolume { name: name.clone() },
            Wanted::LocalVolumeCleaned { name }
        ]
    );
    assert!(!storage.join(DIR).exists());

    // The volume is gone from the API: the directory stays.
    fs::create_dir_all(storage.join(DIR)).unwrap();
    let (client, requests) = super::super::objects::channel();
    let answers = server(requests, None);
    let mut sweeper = Sweeper::new(storage.clone(), pods, client);
    sweeper.sweep().await;
    assert_eq!(sweeper.warned.len(), 1);
    drop(sweeper);
    assert_eq!(answers.await.unwrap().len(), 1);
    assert!(storage.join(DIR).exists());
}

#[tokio::test]
async fn a_cleanup_the_server_did_not_hear_of_is_confirmed_next_round() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    fs::create_dir_all(storage.join(DIR)).unwrap();
    let (client, mut requests) = super::super::objects::channel();
    let pv = released(&storage);
    let answers = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(r) = requests.recv().await {
            let answer = match &r.wanted {
                Wanted::LocalVolume { .. } => Ok(pv.to_string()),
                // The first confirmation meets a server that cannot write.
                _ if seen.len() == 1 => Err((503, "database down".into())),
                _ => Ok("{}".into()),
            };
            seen.push(r.wanted);
            let _ = r.reply.send(answer);
        }
        seen
    });
    let mut sweeper = Sweeper::new(storage.clone(), tmp.path().join("pods"), client);
    sweeper.sweep().await;
    assert!(!storage.join(DIR).exists());
    assert_eq!(sweeper.unconfirmed.len(), 1);
    sweeper.sweep().await;
    assert!(sweeper.unconfirmed.is_empty());
    drop(sweeper);
    let name = "pvc-u1".to_string();
    assert_eq!(
        answers.await.unwrap(),
        [
            Wanted::LocalVolume { name: name.clone() },
            Wanted::LocalVolumeCleaned { name: name.clone() },
            Wanted::LocalVolumeCleaned { name }
        ]
    );
}

#[test]
fn the_volume_module_names_what_the_controllers_write() {
    // volumes.rs compiles standalone (tests/bundle.rs), so it keeps its own copies.
    assert_eq!(
        claims::PROVISIONER,
        crate::api::storage::LOCAL_PATH_PROVISIONER
    );
    assert_eq!(claims::PROVISIONED_BY, crate::api::storage::PROVISIONED_BY);
}
