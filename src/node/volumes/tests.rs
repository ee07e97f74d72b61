use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use super::env::{Allocatable, Prefetched};
use super::*;

/// Tests that mount need root: without it a failure, or a loud skip with `KEELSON_ALLOW_SKIP=1`.
fn root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    // As tests/common/skip.rs: a failure unless KEELSON_ALLOW_SKIP=1, never a skip under CI.
    if std::env::var("CI").is_ok_and(|v| v == "true")
        || !std::env::var("KEELSON_ALLOW_SKIP").is_ok_and(|v| v == "1")
    {
        panic!("`{test}` needs root (mounts); KEELSON_ALLOW_SKIP=1 skips it (not under CI=true)");
    }
    eprintln!("!!! SKIPPING `{test}` (KEELSON_ALLOW_SKIP=1): needs root (mounts)");
    false
}

/// A temporary pod directory that is torn down (unmounted) before it is removed, also when a
/// test fails half-way.
struct PodDir(tempfile::TempDir);

impl std::ops::Deref for PodDir {
    type Target = tempfile::TempDir;
    fn deref(&self) -> &tempfile::TempDir {
        &self.0
    }
}

impl Drop for PodDir {
    fn drop(&mut self) {
        let _ = tear_down(self.0.path());
    }
}

fn pod_dir() -> PodDir {
    PodDir(tempfile::tempdir().unwrap())
}

fn pod(volumes: Value) -> Value {
    json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "a"}},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}],
                 "volumes": volumes},
    })
}

fn objects(data: Value) -> Prefetched {
    Prefetched::default()
        .with_config_map(
            json!({"metadata": {"name": "cfg", "namespace": "ns"}, "data": data,
                                "binaryData": {"blob": "AAEC"}}),
        )
        .with_secret(json!({"metadata": {"name": "sec", "namespace": "ns"},
                            "data": {"token": "czNjcjN0"}}))
}

fn set_up_with(dir: &Path, pod: &Value, objects: &Prefetched) -> Result<Volumes> {
    let sources = Sources {
        pod: PodContext {
            pod,
            pod_ips: &[],
            host_ips: &[],
            allocatable: Allocatable::default(),
        },
        objects,
        local_storage: Path::new("/nonexistent/storage"),
    };
    set_up(dir, &sources)
}

fn update_with(dir: &Path, pod: &Value, objects: &Prefetched) -> Result<Vec<String>> {
    let sources = Sources {
        pod: PodContext {
            pod,
            pod_ips: &[],
            host_ips: &[],
            allocatable: Allocatable::default(),
        },
        objects,
        local_storage: Path::new("/nonexistent/storage"),
    };
    update(dir, &sources)
}

#[test]
fn item_paths_that_escape_are_refused() {
    for bad in [
        "../x",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "..data",
        "..x/y",
        "./..data",
        ".//..x",
        "",
        ".",
    ] {
        assert!(check_item_path(bad).is_err(), "{bad:?} must be refused");
    }
    for good in ["a", "a/b/c", "./a", "x..y", "a/.hidden", "a..", "dir/..x"] {
        assert!(check_item_path(good).is_ok(), "{good:?} must be accepted");
    }
    // Through a whole volume: refused, and nothing is written.
    let tmp = pod_dir();
    let pod = pod(json!([{"name": "v", "configMap": {"name": "cfg",
        "items": [{"key": "a", "path": "../../escaped"}]}}]));
    let err = set_up_with(tmp.path(), &pod, &objects(json!({"a": "1"}))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"v\" : invalid path \"../../escaped\": must not \
         contain '..'"
    );
    assert!(!tmp.path().join("escaped").exists());
    assert!(!tmp.path().join("volumes").join("escaped").exists());
}

#[test]
fn sub_paths_are_relative_without_dot_dot() {
    for bad in ["/etc", "../x", "a/../../x", "a/.."] {
        assert!(check_sub_path(bad).is_err(), "{bad:?}");
    }
    for good in ["a", "a/b", "", "..x", "a/./b"] {
        assert!(check_sub_path(good).is_ok(), "{good:?}");
    }
}

#[test]
fn host_path_types_are_checked_like_kubelet() {
    let tmp = pod_dir();
    let base = tmp.path();
    fs::write(base.join("file"), "x").unwrap();
    fs::create_dir(base.join("dir")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(base.join("sock")).unwrap();
    let check = |path: &Path, kind: &str| {
        host_path(&json!({"path": path, "type": kind})).map_err(|e| e.to_string())
    };
    let not = |path: &Path, what: &str| {
        Err(format!(
            "hostPath type check failed: {} is not a {what}",
            path.display()
        ))
    };
    let (file, dir, sock) = (base.join("file"), base.join("dir"), base.join("sock"));
    let missing = base.join("missing");
    assert_eq!(check(&dir, "Directory"), Ok(dir.clone()));
    assert_eq!(check(&file, "Directory"), not(&file, "directory"));
    assert_eq!(check(&missing, "Directory"), not(&missing, "directory"));
    assert_eq!(check(&file, "File"), Ok(file.clone()));
    assert_eq!(check(&dir, "File"), not(&dir, "file"));
    assert_eq!(check(&dir, "FileOrCreate"), not(&dir, "file"));
    assert_eq!(check(&file, "DirectoryOrCreate"), not(&file, "directory"));
    assert_eq!(check(&sock, "Socket"), Ok(sock.clone()));
    assert_eq!(check(&file, "Socket"), not(&file, "socket file"));
    let null = Path::new("/dev/null");
    assert_eq!(check(null, "CharDevice"), Ok(null.to_path_buf()));
    assert_eq!(check(null, "BlockDevice"), not(null, "block device"));
    assert_eq!(check(&file, "CharDevice"), not(&file, "character device"));
    // Unset: no check at all, even for a missing path.
    assert_eq!(check(&missing, ""), Ok(missing.clone()));
    assert!(!missing.exists());
    // The OrCreate kinds make what is missing.
    let made_dir = base.join("new/deep");
    assert_eq!(check(&made_dir, "DirectoryOrCreate"), Ok(made_dir.clone()));
    assert!(made_dir.is_dir());
    let made_file = base.join("new-file");
    assert_eq!(check(&made_file, "FileOrCreate"), Ok(made_file.clone()));
    assert!(made_file.is_file());
    // FileOrCreate needs the parent, as in kubelet.
    assert!(check(&base.join("no/parent"), "FileOrCreate").is_err());
    assert!(check(Path::new("relative"), "").is_err());
    assert!(check(&file, "Fiel").is_err());
}

#[test]
fn config_map_volume_is_updated_atomically() {
    let tmp = pod_dir();
    let pod = pod(json!([{"name": "cfg-vol", "configMap": {"name": "cfg", "defaultMode": 0o640}}]));
    let v = set_up_with(tmp.path(), &pod, &objects(json!({"a": "one", "b": "bee"}))).unwrap();
    let dir = &v.get("cfg-vol").unwrap().path;
    assert_eq!(
        dir,
        &tmp.path().join("volumes/kubernetes.io~configmap/cfg-vol")
    );
    assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "one");
    assert_eq!(
        fs::read(dir.join("blob")).unwrap(),
        [0, 1, 2],
        "binaryData too"
    );
    // kubelet's layout: name -> ..data/name, ..data -> ..<timestamp>.
    assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
    let first = fs::read_link(dir.join("..data")).unwrap();
    assert!(first.to_str().unwrap().starts_with("..20"), "{first:?}");
    let mode = fs::metadata(dir.join("a")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    // A reader that resolved the old generation keeps a consistent old view until the swap.
    let old_file = dir.join(&first).join("a");

    // Same content: nothing is rewritten.
    let same = update_with(tmp.path(), &pod, &objects(json!({"a": "one", "b": "bee"}))).unwrap();
    assert!(same.is_empty());
    assert_eq!(fs::read_link(dir.join("..data")).unwrap(), first);

    // New content: a new generation, swapped in; removed keys disappear.
    let changed = update_with(tmp.path(), &pod, &objects(json!({"a": "two", "c": "sea"}))).unwrap();
    assert_eq!(changed, ["cfg-vol"]);
    let second = fs::read_link(dir.join("..data")).unwrap();
    assert_ne!(first, second);
    assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "two");
    assert_eq!(fs::read_to_string(dir.join("c")).unwrap(), "sea");
    assert!(fs::symlink_metadata(dir.join("b")).is_err(), "b is gone");
    assert!(!old_file.exists(), "the old generation is removed");
    assert!(!dir.join("..data_tmp").exists());
    let entries: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries.len(),
        5,
        "a, blob, c, ..data and one generation: {entries:?}"
    );
}

#[test]
fn secret_items_pick_keys_paths_and_modes() {
    let tmp = pod_dir();
    let pod = pod(json!([
        {"name": "s", "secret": {"secretName": "sec", "items": [
            {"key": "token", "path": "deep/dir/tok", "mode": 0o400}]}},
        {"name": "missing-key", "secret": {"secretName": "sec", "optional": true, "items": [
            {"key": "nope", "path": "n"}]}},
        {"name": "missing-secret", "secret": {"secretName": "ghost", "optional": true}},
    ]));
    let v = set_up_with(tmp.path(), &pod, &objects(json!({}))).unwrap();
    let dir = &v.get("s").unwrap().path;
    assert_eq!(
        fs::read_to_string(dir.join("deep/dir/tok")).unwrap(),
        "s3cr3t"
    );
    let mode = fs::metadata(dir.join("deep/dir/tok"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);
    assert_eq!(
        fs::read_link(dir.join("deep")).unwrap(),
        Path::new("..data/deep")
    );
    let empty = &v.get("missing-secret").unwrap().path;
    assert!(empty.join("..data").exists());

    let err = |volumes: Value| {
        set_up_with(tmp.path(), &self::pod(volumes), &objects(json!({})))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(json!([{"name": "x", "secret": {"secretName": "ghost"}}])),
        "MountVolume.SetUp failed for volume \"x\" : secret \"ghost\" not found"
    );
    assert_eq!(
        err(
            json!([{"name": "x", "secret": {"secretName": "sec", "items": [{"key": "k", "path": "k"}]}}])
        ),
        "MountVolume.SetUp failed for volume \"x\" : references non-existent secret key: k"
    );
    assert_eq!(
        err(json!([{"name": "x", "configMap": {"name": "ghost"}}])),
        "MountVolume.SetUp failed for volume \"x\" : configmap \"ghost\" not found"
    );
    assert_eq!(
        err(
            json!([{"name": "x", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "k"}]}}])
        ),
        "MountVolume.SetUp failed for volume \"x\" : configmap references non-existent config key: k"
    );
    assert_eq!(
        err(json!([{"name": "x", "persistentVolumeClaim": {"claimName": "c"}}])),
        "MountVolume.SetUp failed for volume \"x\" : persistentvolumeclaim \"c\" not found"
    );
    assert_eq!(
        err(json!([{"name": "x", "nfs": {"server": "s", "path": "/"}}])),
        "MountVolume.SetUp failed for volume \"x\" : volume type nfs is not supported by keelson yet"
    );
}

#[test]
fn projected_and_downward_api_volumes() {
    let tmp = pod_dir();
    let pod = pod(json!([
        {"name": "all", "projected": {"defaultMode": 0o444, "sources": [
            {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "cfg/a"}]}},
            {"secret": {"name": "sec"}},
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ]}},
        {"name": "down", "downwardAPI": {"items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory",
                                                 "divisor": "1Mi"}},
        ]}},
    ]));
    let v = set_up_with(tmp.path(), &pod, &objects(json!({"a": "1"}))).unwrap();
    let all = &v.get("all").unwrap().path;
    assert_eq!(fs::read_to_string(all.join("cfg/a")).unwrap(), "1");
    assert_eq!(fs::read_to_string(all.join("token")).unwrap(), "s3cr3t");
    assert_eq!(fs::read_to_string(all.join("labels")).unwrap(), "app=\"a\"");
    let mode = fs::metadata(all.join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
    let down = &v.get("down").unwrap().path;
    assert_eq!(fs::read_to_string(down.join("name")).unwrap(), "p");
    assert_eq!(fs::read_to_string(down.join("mem")).unwrap(), "64");

    let token = self::pod(
        json!([{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}]),
    );
    let err = set_up_with(tmp.path(), &token, &objects(json!({}))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"kube-api-access\" : no service account token \
         for the pod yet (the server did not issue one)"
    );
    let mut with_token = objects(json!({}));
    // Only a token for the source's audience and lifetime is the source's.
    with_token
        .tokens
        .insert((String::new(), 3600), "wrong-lifetime".into());
    assert!(set_up_with(tmp.path(), &token, &with_token).is_err());
    with_token
        .tokens
        .insert((String::new(), 3607), "eyJ.token.sig".into());
    let v = set_up_with(tmp.path(), &token, &with_token).unwrap();
    let dir = &v.get("kube-api-access").unwrap().path;
    assert_eq!(
        fs::read_to_string(dir.join("token")).unwrap(),
        "eyJ.token.sig"
    );
    assert_eq!(fs::read_to_string(dir.join("namespace")).unwrap(), "ns");
    let status = self::pod(json!([{"name": "d", "downwardAPI": {"items": [
        {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}}]));
    assert!(set_up_with(tmp.path(), &status, &objects(json!({}))).is_err());
}

#[test]
fn sub_paths_stay_inside_their_volume() {
    if !root("sub_paths_stay_inside_their_volume") {
        return;
    }
    let tmp = pod_dir();
    let pod = pod(json!([{"name": "scratch", "emptyDir": {}}]));
    let v = set_up_with(tmp.path(), &pod, &objects(json!({}))).unwrap();
    let vol = v.get("scratch").unwrap();
    fs::create_dir(vol.path.join("inside")).unwrap();
    fs::write(vol.path.join("inside/f"), "ok").unwrap();
    std::os::unix::fs::symlink("/etc", vol.path.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../..", vol.path.join("up")).unwrap();
    std::os::unix::fs::symlink("inside", vol.path.join("good-link")).unwrap();
    for bad in ["abs/passwd", "abs", "up/etc", "up", "../x", "/etc"] {
        let err = pin_subpath(tmp.path(), vol, bad, "c", 0).unwrap_err();
        assert!(matches!(err, VolumeError::SubPath { .. }), "{bad}: {err}");
    }
    // A symlink that stays inside is fine; the pin is a bind mount of what was checked.
    let pin = pin_subpath(tmp.path(), vol, "good-link/f", "c", 1).unwrap();
    assert_eq!(fs::read_to_string(&pin).unwrap(), "ok");
    // A missing subPath is made as a directory, as kubelet does.
    let made = pin_subpath(tmp.path(), vol, "new/dir", "c", 2).unwrap();
    assert!(vol.path.join("new/dir").is_dir());
    fs::write(made.join("through-pin"), "x").unwrap();
    assert!(vol.path.join("new/dir/through-pin").exists());
    // Pinning again (a restarted container) replaces the old pin.
    pin_subpath(tmp.path(), vol, "good-link/f", "c", 1).unwrap();
    tear_down(tmp.path()).unwrap();
    assert!(!tmp.path().join("volumes").exists());
    assert!(!tmp.path().join("volume-subpaths").exists());
    assert!(
        Path::new("/etc/passwd").exists(),
        "teardown never follows links out"
    );
}

#[test]
fn memory_empty_dir_is_a_sized_tmpfs_and_teardown_unmounts_it() {
    if !root("memory_empty_dir_is_a_sized_tmpfs_and_teardown_unmounts_it") {
        return;
    }
    let tmp = pod_dir();
    let pod = pod(json!([
        {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
        {"name": "ram2", "emptyDir": {"medium": "Memory"}},
    ]));
    let v = set_up_with(tmp.path(), &pod, &objects(json!({}))).unwrap();
    let ram = &v.get("ram").unwrap().path;
    let st = nix::sys::statfs::statfs(ram).unwrap();
    assert_eq!(st.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    assert_eq!(st.blocks() * st.block_size() as u64, 4 << 20);
    // Without sizeLimit: the pod's memory limit (the container's 64Mi).
    let st2 = nix::sys::statfs::statfs(&v.get("ram2").unwrap().path).unwrap();
    assert_eq!(st2.blocks() * st2.block_size() as u64, 64 << 20);
    let mode = fs::metadata(ram).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o777);
    // Set-up again (a restarted runtime) does not stack a second mount.
    set_up_with(tmp.path(), &pod, &objects(json!({}))).unwrap();
    let base = fs::canonicalize(tmp.path()).unwrap();
    assert_eq!(mounts_below(&base).unwrap().len(), 2);
    tear_down(tmp.path()).unwrap();
    assert!(mounts_below(&base).unwrap().is_empty());
    assert!(!tmp.path().join("volumes").exists());
}

#[test]
fn mountinfo_paths_are_unescaped() {
    assert_eq!(unescape_mount_path("/a\\040b\\011c\\134d"), "/a b\tc\\d");
    assert_eq!(unescape_mount_path("/plain\\04"), "/plain\\04");
}

#[test]
fn teardown_never_follows_symlinks_out_of_the_pod_dir() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("precious"), "keep").unwrap();
    // A container planted links in its emptyDir; one pod even has `volumes` itself a link.
    let tmp = pod_dir();
    let pod = pod(json!([{"name": "scratch", "emptyDir": {}}]));
    let v = set_up_with(tmp.path(), &pod, &objects(json!({}))).unwrap();
    let scratch = &v.get("scratch").unwrap().path;
    std::os::unix::fs::symlink(outside.path(), scratch.join("dir-link")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("precious"), scratch.join("file-link")).unwrap();
    tear_down(tmp.path()).unwrap();
    assert!(!tmp.path().join("volumes").exists());
    let other = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), other.path().join("volumes")).unwrap();
    tear_down(other.path()).unwrap();
    assert!(fs::symlink_metadata(other.path().join("volumes")).is_err());
    assert_eq!(
        fs::read_to_string(outside.path().join("precious")).unwrap(),
        "keep"
    );
}
