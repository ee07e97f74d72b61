use serde_json::json;

use super::*;
use crate::node::sandbox::Namespace;
use crate::node::volumes::{Kind, Volume};

/// A node that has every capability but CAP_SYS_RESOURCE (like the CI container).
fn node() -> NodeSettings {
    NodeSettings {
        cgroup_parent: "/keelson".into(),
        pids_limit: Some(1024),
        capabilities: capabilities_of_mask(0x1ff_feff_ffff),
        cgroup_namespace: false,
    }
}

fn sandbox(dir: &Path) -> Sandbox {
    Sandbox {
        pod_dir: dir.to_path_buf(),
        network: Namespace::Path(dir.join("ns/net")),
        ipc: Namespace::Path(dir.join("ns/ipc")),
        uts: Namespace::Path(dir.join("ns/uts")),
        hostname: "web".into(),
        shm: Some(dir.join("shm")),
        hosts: dir.join("etc-hosts"),
        hostname_file: dir.join("etc-hostname"),
        resolv_conf: dir.join("resolv.conf"),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    sandbox: Sandbox,
    volumes: Volumes,
    node: NodeSettings,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::create_dir_all(rootfs.join("real")).unwrap();
        fs::write(
            rootfs.join("real/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nwww:x:33:33::/var/www:/bin/false\n\
             app:x:1000:1001::/home/app:/bin/sh\nbroken-line\n",
        )
        .unwrap();
        // Absolute links are resolved inside the rootfs, never on the host.
        std::os::unix::fs::symlink("/real/passwd", rootfs.join("etc/passwd")).unwrap();
        fs::write(
            rootfs.join("etc/group"),
            "root:x:0:\nwww:x:33:app\napp:x:1001:\nvideo:x:44:app,www\nstaff:x:50:\n",
        )
        .unwrap();
        let volumes_dir = dir.path().join("volumes");
        let volumes = Volumes {
            list: vec![
                Volume {
                    name: "data".into(),
                    kind: Kind::EmptyDir { memory: false },
                    path: volumes_dir.join("kubernetes.io~empty-dir/data"),
                },
                Volume {
                    name: "cfg".into(),
                    kind: Kind::ConfigMap,
                    path: volumes_dir.join("kubernetes.io~configmap/cfg"),
                },
            ],
        };
        Fixture {
            sandbox: sandbox(dir.path()),
            rootfs,
            volumes,
            node: node(),
            dir,
        }
    }

    fn spec(&self, pod: &Value, image: &ImageConfig, env: &[(String, String)]) -> Result<Value> {
        spec(&self.input(pod, image, env))
    }

    fn input<'a>(
        &'a self,
        pod: &'a Value,
        image: &'a ImageConfig,
        env: &'a [(String, String)],
    ) -> ContainerInput<'a> {
        ContainerInput {
            pod,
            container: &pod["spec"]["containers"][0],
            image,
            env,
            rootfs: &self.rootfs,
            sandbox: &self.sandbox,
            volumes: &self.volumes,
            node: &self.node,
            pod_pid_namespace: None,
            extra_mounts: &[],
        }
    }
}

fn pod(container: Value, pod_security: Value) -> Value {
    let mut c = json!({"name": "main", "image": "busybox"});
    for (k, v) in container.as_object().unwrap() {
        c[k] = v.clone();
    }
    json!({
        "metadata": {"name": "web", "namespace": "shop", "uid": "1234-abcd"},
        "spec": {"containers": [c], "securityContext": pod_security},
    })
}

fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
    ImageConfig {
        entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..ImageConfig::default()
    }
}

#[test]
fn command_and_args_follow_the_kubernetes_table() {
    let img = image(&["/entry"], &["--image-cmd"]);
    let env = [("WHO".to_string(), "world".to_string())];
    let args = |container: Value, image: &ImageConfig| process_args(&container, image, &env);
    // Neither: the image's Entrypoint + Cmd.
    assert_eq!(args(json!({}), &img).unwrap(), ["/entry", "--image-cmd"]);
    // command only: it alone (the image's Cmd is dropped too).
    assert_eq!(
        args(json!({"command": ["/bin/echo"]}), &img).unwrap(),
        ["/bin/echo"]
    );
    // args only: the image's Entrypoint with them.
    assert_eq!(
        args(json!({"args": ["hello"]}), &img).unwrap(),
        ["/entry", "hello"]
    );
    // Both: command + args.
    assert_eq!(
        args(
            json!({"command": ["/bin/echo"], "args": ["hi $(WHO)", "$$(WHO)"]}),
            &img
        )
        .unwrap(),
        ["/bin/echo", "hi world", "$(WHO)"]
    );
    // An image with only Cmd, and an empty command list counts as none.
    assert_eq!(
        args(json!({"command": []}), &image(&[], &["/bin/sh"])).unwrap(),
        ["/bin/sh"]
    );
    assert!(matches!(
        args(json!({}), &image(&[], &[])),
        Err(BundleError::NoCommand)
    ));
    assert!(matches!(
        args(json!({"args": []}), &image(&[], &[])),
        Err(BundleError::NoCommand)
    ));
}

#[test]
fn users_resolve_from_security_context_then_image() {
    let f = Fixture::new();
    let user = |container: Value, pod_sc: Value, image_user: &str| {
        let pod = pod(container, pod_sc);
        let mut img = image(&["/bin/true"], &[]);
        img.user = image_user.to_string();
        let input = f.input(&pod, &img, &[]);
        user(&input, &SecurityContext::of(&pod, input.container))
            .map(|u| (u.uid, u.gid, u.additional_gids))
    };
    let sc = |v: Value| json!({"securityContext": v});
    assert_eq!(user(json!({}), json!({}), "").unwrap(), (0, 0, vec![0]));
    // A name from /etc/passwd (through an absolute symlink, inside the rootfs), with its groups.
    assert_eq!(
        user(json!({}), json!({}), "app").unwrap(),
        (1000, 1001, vec![1001, 33, 44])
    );
    assert_eq!(
        user(json!({}), json!({}), "www:staff").unwrap(),
        (33, 50, vec![50, 44])
    );
    assert_eq!(
        user(json!({}), json!({}), "1000:7").unwrap(),
        (1000, 7, vec![7, 33, 44])
    );
    // A uid without an entry: gid 0.
    assert_eq!(
        user(json!({}), json!({}), "4242").unwrap(),
        (4242, 0, vec![0])
    );
    assert!(
        matches!(user(json!({}), json!({}), "ghost"), Err(BundleError::UnknownUser(u)) if u == "ghost")
    );
    assert!(matches!(
        user(json!({}), json!({}), "app:nogroup"),
        Err(BundleError::UnknownGroup(_))
    ));
    // runAsUser beats the image; pod-level applies, container-level wins.
    assert_eq!(
        user(sc(json!({"runAsUser": 33})), json!({}), "app").unwrap(),
        (33, 33, vec![33, 44])
    );
    assert_eq!(
        user(
            sc(json!({"runAsGroup": 9})),
            json!({"runAsUser": 1000, "runAsGroup": 8,
            "supplementalGroups": [300, 9], "fsGroup": 2000}),
            ""
        )
        .unwrap(),
        (1000, 9, vec![9, 33, 44, 300, 2000])
    );
}

#[test]
fn run_as_non_root_is_refused_with_kubelets_messages() {
    let f = Fixture::new();
    let err = |container_sc: Value, image_user: &str| {
        let pod = pod(
            json!({"securityContext": container_sc}),
            json!({"runAsNonRoot": true}),
        );
        let mut img = image(&["/bin/true"], &[]);
        img.user = image_user.to_string();
        f.spec(&pod, &img, &[]).err().map(|e| e.to_string())
    };
    assert_eq!(
        err(json!({"runAsUser": 0}), "app").unwrap(),
        "container's runAsUser breaks non-root policy (pod: \"web_shop(1234-abcd)\", container: main)"
    );
    assert_eq!(
        err(json!({}), "").unwrap(),
        "container has runAsNonRoot and image will run as root (pod: \"web_shop(1234-abcd)\", \
         container: main)"
    );
    assert_eq!(err(json!({}), "0:0"), err(json!({}), ""));
    assert_eq!(
        err(json!({}), "app").unwrap(),
        "container has runAsNonRoot and image has non-numeric user (app), cannot verify user is \
         non-root (pod: \"web_shop(1234-abcd)\", container: main)"
    );
    assert_eq!(err(json!({}), "1000"), None);
    assert_eq!(err(json!({"runAsUser": 1000}), ""), None);
    // The container can lift the pod's requirement.
    assert_eq!(err(json!({"runAsNonRoot": false}), ""), None);
}

#[test]
fn capability_sets_follow_containerd() {
    let node = node().capabilities;
    let caps = |add: &[&str], drop: &[&str]| {
        capabilities(&json!({"add": add, "drop": drop}), &node, false)
    };
    let default: Vec<String> = caps(&[], &[]).unwrap();
    assert_eq!(default.len(), 14);
    assert!(default.contains(&"CAP_NET_RAW".to_string()));
    assert!(!default.contains(&"CAP_SYS_ADMIN".to_string()));
    let some = caps(
        &["NET_ADMIN", "cap_sys_time"],
        &["NET_RAW", "CAP_KILL", "NOT_A_CAP"],
    )
    .unwrap();
    assert!(
        some.contains(&"CAP_NET_ADMIN".to_string()) && some.contains(&"CAP_SYS_TIME".to_string())
    );
    assert!(!some.contains(&"CAP_NET_RAW".to_string()) && !some.contains(&"CAP_KILL".to_string()));
    assert_eq!(some.len(), 14);
    assert_eq!(
        caps(&["NET_BIND_SERVICE"], &["ALL"]).unwrap(),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert!(caps(&[], &["ALL"]).unwrap().is_empty());
    let all = caps(&["ALL"], &["SYS_ADMIN"]).unwrap();
    assert_eq!(all.len(), node.len() - 1);
    assert!(!all.contains(&"CAP_SYS_ADMIN".to_string()));
    assert!(
        matches!(caps(&["SYS_FLY"], &[]), Err(BundleError::UnknownCapability(c)) if c == "CAP_SYS_FLY")
    );
    // Not on this node: a clear error, not a runc failure at start.
    assert!(matches!(
        caps(&["SYS_RESOURCE"], &[]),
        Err(BundleError::CapabilityUnavailable(c)) if c == "CAP_SYS_RESOURCE"
    ));
    let privileged = capabilities(&json!({"drop": ["ALL"]}), &node, true).unwrap();
    assert_eq!(
        privileged, node,
        "privileged: all the node has, drops ignored"
    );
    assert_eq!(
        capabilities_of_mask(0b101),
        ["CAP_CHOWN", "CAP_DAC_READ_SEARCH"]
    );
}

#[test]
fn cpu_and_memory_convert_like_kubelet() {
    assert_eq!(cpu_shares(250), 256);
    assert_eq!(cpu_shares(1500), 1536);
    assert_eq!(cpu_shares(1), 2);
    assert_eq!(cpu_shares(0), 2);
    assert_eq!(cpu_shares(1_000_000), 262_144);
    assert_eq!(cpu_quota(250), 25_000);
    assert_eq!(cpu_quota(1500), 150_000);
    assert_eq!(cpu_quota(1), 1_000);
    let res = |r: Value| resources(&json!({"resources": r}), Some(100), false).unwrap();
    let r = res(json!({"requests": {"cpu": "250m"}, "limits": {"cpu": "1.5", "memory": "128Mi"}}));
    assert_eq!(
        r["cpu"],
        json!({"shares": 256, "quota": 150_000, "period": 100_000})
    );
    assert_eq!(r["memory"]["limit"], 134_217_728);
    assert_eq!(r["pids"]["limit"], 100);
    assert_eq!(r["devices"], json!([{"allow": false, "access": "rwm"}]));
    // Only a limit: the request defaults to it. "1G" is decimal.
    let r = res(json!({"limits": {"cpu": "500m", "memory": "1G"}}));
    assert_eq!(
        r["cpu"],
        json!({"shares": 512, "quota": 50_000, "period": 100_000})
    );
    assert_eq!(r["memory"]["limit"], 1_000_000_000);
    // Best effort: minimum shares, no quota, no memory limit.
    let r = res(json!({}));
    assert_eq!(r["cpu"], json!({"shares": 2}));
    assert!(r.get("memory").is_none());
    let bad = resources(
        &json!({"resources": {"limits": {"memory": "lots"}}}),
        None,
        false,
    );
    assert!(
        matches!(bad, Err(BundleError::Quantity { field, .. }) if field == "resources.limits.memory")
    );
}

#[test]
fn spec_has_the_pods_namespaces_mounts_and_cgroup() {
    let f = Fixture::new();
    let pod = pod(
        json!({
            "workingDir": "/work",
            "volumeMounts": [
                {"name": "data", "mountPath": "/data/inner"},
                {"name": "cfg", "mountPath": "/etc/app"},
                {"name": "data", "mountPath": "/data", "readOnly": true},
                {"name": "data", "mountPath": "/dev/shm"},
            ],
            "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false},
        }),
        json!({"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}),
    );
    let mut img = image(&["/bin/sh"], &[]);
    img.env = vec!["PATH=/bin".into(), "LANG=C".into(), "HOSTNAME=img".into()];
    let env = [
        ("LANG".to_string(), "en".to_string()),
        ("A".to_string(), "1".to_string()),
    ];
    let s = f.spec(&pod, &img, &env).unwrap();
    assert_eq!(s["ociVersion"], "1.0.2");
    assert_eq!(s["process"]["cwd"], "/work");
    assert_eq!(
        s["process"]["env"],
        json!(["HOSTNAME=img", "PATH=/bin", "LANG=en", "A=1"])
    );
    assert_eq!(s["process"]["noNewPrivileges"], true);
    assert_eq!(s["root"], json!({"path": f.rootfs, "readonly": true}));
    assert_eq!(s["linux"]["cgroupsPath"], "/keelson/pod1234-abcd/main");
    assert_eq!(
        s["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
        "0"
    );
    let ns = &s["linux"]["namespaces"];
    assert_eq!(
        ns,
        &json!([
            {"type": "mount"},
            {"type": "pid"},
            {"type": "network", "path": f.dir.path().join("ns/net")},
            {"type": "ipc", "path": f.dir.path().join("ns/ipc")},
            {"type": "uts", "path": f.dir.path().join("ns/uts")},
        ])
    );
    assert!(
        s["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore"))
    );
    assert!(
        s["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/sys"))
    );
    let mounts = s["mounts"].as_array().unwrap();
    let dests: Vec<&str> = mounts
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/data",
            "/data/inner",
            "/etc/app",
            "/dev/shm",
        ],
        "the volume replaces the default /dev/shm; parents before children"
    );
    let by_dest = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap();
    assert_eq!(
        by_dest("/etc/app")["options"],
        json!(["rbind", "rprivate", "ro"]),
        "configMaps are ro"
    );
    assert_eq!(
        by_dest("/data")["options"],
        json!(["rbind", "rprivate", "ro"])
    );
    assert_eq!(
        by_dest("/data/inner")["options"],
        json!(["rbind", "rprivate", "rw"])
    );
    assert_eq!(
        by_dest("/etc/hosts")["options"],
        json!(["rbind", "rprivate", "ro"]),
        "ro root, ro etc files"
    );
    assert_eq!(
        by_dest("/etc/hosts")["source"],
        json!(f.dir.path().join("etc-hosts"))
    );

    // Host namespaces and hostPID.
    let mut host = f.sandbox.clone();
    host.network = Namespace::Host;
    host.uts = Namespace::Host;
    let mut p = pod.clone();
    p["spec"]["hostPID"] = json!(true);
    let input = ContainerInput {
        sandbox: &host,
        ..f.input(&p, &img, &env)
    };
    let s = spec(&input).unwrap();
    assert_eq!(
        s["linux"]["namespaces"],
        json!([{"type": "mount"}, {"type": "ipc", "path": f.dir.path().join("ns/ipc")}])
    );
    let mut p = pod.clone();
    p["spec"]["shareProcessNamespace"] = json!(true);
    assert!(matches!(
        f.spec(&p, &img, &env),
        Err(BundleError::Unsupported(_))
    ));
    let input = ContainerInput {
        pod_pid_namespace: Some(Path::new("/run/pid-holder")),
        ..f.input(&p, &img, &env)
    };
    assert_eq!(
        spec(&input).unwrap()["linux"]["namespaces"][1],
        json!({"type": "pid", "path": "/run/pid-holder"})
    );
}

#[test]
fn privileged_gets_all_caps_devices_and_no_masks() {
    let f = Fixture::new();
    let pod = pod(json!({"securityContext": {"privileged": true}}), json!({}));
    let s = f.spec(&pod, &image(&["/bin/sh"], &[]), &[]).unwrap();
    assert_eq!(
        s["process"]["capabilities"]["bounding"],
        json!(f.node.capabilities)
    );
    assert!(s["linux"].get("maskedPaths").is_none());
    assert!(s["linux"].get("readonlyPaths").is_none());
    assert_eq!(
        s["linux"]["resources"]["devices"],
        json!([{"allow": true, "access": "rwm"}])
    );
    let devices = s["linux"]["devices"].as_array().unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d["path"] == "/dev/null" && d["type"] == "c")
    );
    let sys = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/sys")
        .unwrap();
    assert!(sys["options"].as_array().unwrap().contains(&json!("rw")));
}

#[test]
fn sub_paths_that_escape_are_refused_before_any_mount() {
    let f = Fixture::new();
    let env = [("DIR".to_string(), "..".to_string())];
    let img = image(&["/bin/sh"], &[]);
    for vm in [
        json!({"name": "data", "mountPath": "/x", "subPath": "../../etc"}),
        json!({"name": "data", "mountPath": "/x", "subPath": "/etc"}),
        json!({"name": "data", "mountPath": "/x", "subPathExpr": "$(DIR)/etc"}),
    ] {
        let pod = pod(json!({"volumeMounts": [vm.clone()]}), json!({}));
        let err = f.spec(&pod, &img, &env).unwrap_err();
        assert!(
            matches!(&err, BundleError::Volume(v) if matches!(**v, VolumeError::SubPath { .. })),
            "{vm}: {err}"
        );
    }
    let pod = pod(
        json!({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
        json!({}),
    );
    assert_eq!(
        f.spec(&pod, &img, &env).unwrap_err().to_string(),
        "volumeMount \"/x\" names volume \"nope\", which the pod does not have"
    );
    let pod = pod_with_propagation("Bidirectional");
    assert!(matches!(
        f.spec(&pod, &img, &env),
        Err(BundleError::Invalid { .. })
    ));
    let pod = pod_with_propagation("HostToContainer");
    let s = f.spec(&pod, &img, &env).unwrap();
    assert_eq!(s["linux"]["rootfsPropagation"], "rslave");
}

fn pod_with_propagation(mode: &str) -> Value {
    pod(
        json!({"volumeMounts": [{"name": "data", "mountPath": "/x", "mountPropagation": mode}]}),
        json!({}),
    )
}

#[test]
fn seccomp_localhost_is_refused_and_bad_ids_are_errors() {
    let f = Fixture::new();
    let img = image(&["/bin/sh"], &[]);
    let pod = pod(
        json!({}),
        json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "x"}}),
    );
    assert!(matches!(
        f.spec(&pod, &img, &[]),
        Err(BundleError::Unsupported(_))
    ));
    let pod = pod_default(json!({"runAsUser": -1}));
    assert!(matches!(
        f.spec(&pod, &img, &[]),
        Err(BundleError::Invalid { .. })
    ));
}

fn pod_default(pod_sc: Value) -> Value {
    pod(json!({}), pod_sc)
}
