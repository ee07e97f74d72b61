//! Real containers from keelson's own bundles: each test builds a pod's sandbox, volumes and
//! per-container `config.json` with the node modules (`src/node/{env,volumes,sandbox,bundle}.rs`)
//! and runs them with `runc run` on a busybox root filesystem, then checks what the process
//! inside saw.
//!
//! Why the modules are compiled here by path: keelson is one binary with no library target, so
//! an integration test cannot call into it, and a hidden subcommand in the shipped binary is
//! not wanted. `#[path]` compiles the very same source files into this test crate (their unit
//! tests come along and run here too); it works because those modules import only each other
//! and `crate::api::quantity`, which is mirrored below. Root, runc and `/bin/busybox` are
//! required: without them the test fails unless `KEELSON_ALLOW_SKIP=1`.

mod common;

use std::fs;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use bundle::{ContainerInput, ImageConfig, NodeSettings};
use common::rootfs::{self, ContainerTools};
use env::{Allocatable, PodContext, Prefetched};
use sandbox::{Namespace, Sandbox};
use volumes::{Sources, Volumes};

// The node modules, compiled from their source files. `#[path]` inside an inline module would
// resolve below a `tests/<module>/` directory that does not exist, so they sit at the crate
// root, where `super::` finds their siblings, and `api`/`node` re-export them under the
// paths they use (`crate::api::quantity`, `crate::node::...`).
#[allow(dead_code)]
#[path = "../src/node/bundle.rs"]
mod bundle;
#[allow(dead_code)]
#[path = "../src/node/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "../src/api/quantity.rs"]
mod quantity;
#[allow(dead_code)]
#[path = "../src/node/sandbox.rs"]
mod sandbox;
#[allow(dead_code)]
#[path = "../src/node/volumes.rs"]
mod volumes;

mod api {
    pub(crate) use super::quantity;
}

mod node {
    #[allow(unused_imports)]
    pub(crate) use super::{bundle, env, sandbox, volumes};
}

/// Longest one container may run before the test gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// The cgroup parent test pods go under (beside a real node's `/keelson`).
const CGROUP_PARENT: &str = "/keelson-test";
const POD_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 42, 0, 9));

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// One pod on this machine: its directory, sandbox, volumes, a busybox root filesystem its
/// containers share, and the runc state; all removed on drop.
struct PodRun {
    tools: ContainerTools,
    /// Holds the pod dir, the rootfs and runc's state directory.
    tmp: TempDir,
    pod: Value,
    objects: Prefetched,
    sandbox: Sandbox,
    volumes: Volumes,
    rootfs: PathBuf,
    node: NodeSettings,
    /// Container ids given to runc, deleted on drop.
    started: std::cell::RefCell<Vec<String>>,
}

impl PodRun {
    /// Sets the pod up (sandbox, /etc files, volumes) as the runtime will.
    fn new(tools: ContainerTools, mut pod: Value, objects: Prefetched) -> PodRun {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let uid = format!("uid-{}-{n}", std::process::id());
        pod["metadata"]["uid"] = json!(uid);
        pod["metadata"]["namespace"] = json!("default");
        let tmp = tempfile::Builder::new()
            .prefix("keelson-bundle-")
            .tempdir()
            .unwrap();
        let rootfs = tmp.path().join("rootfs");
        rootfs::busybox(&rootfs, &tools).unwrap();
        let pod_dir = tmp.path().join("pod");
        fs::create_dir_all(&pod_dir).unwrap();
        let host = sandbox::host_files(std::path::Path::new("/etc/resolv.conf")).unwrap();
        let sandbox = sandbox::create(&pod_dir, &pod, &host).unwrap();
        sandbox::write_files(
            &sandbox,
            &pod,
            &[POD_IP],
            &host,
            &sandbox::ClusterDns {
                server: None,
                domain: "cluster.local".into(),
            },
        )
        .unwrap();
        let volumes = volumes::set_up(
            &pod_dir,
            &Sources {
                pod: context(&pod),
                objects: &objects,
                local_storage: Path::new("/nonexistent/storage"),
            },
        )
        .unwrap();
        let node = NodeSettings::detect(CGROUP_PARENT, Some(256)).unwrap();
        PodRun {
            tools,
            tmp,
            pod,
            objects,
            sandbox,
            volumes,
            rootfs,
            node,
            started: Default::default(),
        }
    }

    /// Writes the bundle of container `name` and returns its directory.
    fn bundle(&self, name: &str, image: &ImageConfig) -> PathBuf {
        let container = self.pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let env = env::resolve(&context(&self.pod), container, &self.objects).unwrap();
        let dir = self.tmp.path().join("bundles").join(name);
        let input = ContainerInput {
            pod: &self.pod,
            container,
            image,
            env: &env.vars,
            rootfs: &self.rootfs,
            sandbox: &self.sandbox,
            volumes: &self.volumes,
            node: &self.node,
            pod_pid_namespace: None,
            extra_mounts: &[],
        };
        bundle::write(&dir, &input).unwrap();
        dir
    }

    /// Starts container `name` under `runc run` (foreground, stdout and stderr piped).
    fn spawn(&self, name: &str, image: &ImageConfig) -> Child {
        let dir = self.bundle(name, image);
        let id = format!(
            "keelson-test-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        self.started.borrow_mut().push(id.clone());
        self.runc()
            .args(["run", "--bundle"])
            .arg(&dir)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs container `name` to its end; returns its output.
    fn run(&self, name: &str, image: &ImageConfig) -> Output {
        wait(self.spawn(name, image))
    }

    fn runc(&self) -> Command {
        let mut cmd = Command::new(&self.tools.runc);
        cmd.arg("--root").arg(self.tmp.path().join("runc"));
        cmd
    }

    fn uid(&self) -> &str {
        self.pod["metadata"]["uid"].as_str().unwrap()
    }
}

impl Drop for PodRun {
    fn drop(&mut self) {
        for id in self.started.borrow().iter() {
            let _ = self.runc().args(["delete", "--force", id]).output();
        }
        let pod_dir = &self.sandbox.pod_dir;
        if let Err(e) = volumes::tear_down(pod_dir) {
            eprintln!("volume teardown: {e}");
        }
        if let Err(e) = sandbox::tear_down(pod_dir) {
            eprintln!("sandbox teardown: {e}");
        }
        let _ = bundle::remove_pod_cgroup(CGROUP_PARENT, self.uid());
    }
}

fn context(pod: &Value) -> PodContext<'_> {
    PodContext {
        pod,
        pod_ips: &[POD_IP],
        host_ips: &[],
        allocatable: Allocatable {
            cpu_milli: 2000,
            memory: 1 << 30,
            ephemeral_storage: 1 << 30,
        },
    }
}

/// Waits for a container's runc with a deadline; kills it past the deadline.
fn wait(mut child: Child) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

/// The output's stdout, after checking the container exited 0.
fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "container failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn pod(containers: Value, volumes: Value) -> Value {
    json!({
        "metadata": {"name": "bundle-test", "labels": {"app": "web"}},
        "spec": {"containers": containers, "volumes": volumes},
    })
}

fn shell(script: &str) -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec![script.into()],
        env: vec!["PATH=/bin".into(), "FROM_IMAGE=yes".into()],
        ..ImageConfig::default()
    }
}

/// A `Status:` line of /proc/self/status printed by the container, as a number.
fn status_hex(output: &str, field: &str) -> u64 {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {output}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn a_container_sees_its_args_env_cwd_and_user() {
    let Some(tools) = rootfs::container_prerequisites("a_container_sees_its_args_env_cwd_and_user")
    else {
        return;
    };
    let objects = Prefetched::default().with_config_map(json!({
        "metadata": {"name": "settings", "namespace": "default"},
        "data": {"GREETING": "hello"},
    }));
    let pod = pod(
        json!([{
            "name": "main",
            // args replace the image's Cmd, the image's Entrypoint (sh -c) stays.
            "args": ["echo \"args:$0:$1\"; echo \"env:$GREETING:$WHO:$POD:$FROM_IMAGE\"; pwd; id",
                     "$(GREETING)", "$$(GREETING)"],
            "workingDir": "/home/app",
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "GREETING"}}},
                {"name": "WHO", "value": "$(GREETING)-world"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            "securityContext": {"runAsGroup": 44},
        }]),
        json!([]),
    );
    let run = PodRun::new(tools, pod, objects);
    let mut image = shell("echo the image's Cmd must not run");
    image.user = "app".into();
    let out = ok(&run.run("main", &image));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "args:hello:$(GREETING)");
    assert_eq!(lines[1], "env:hello:hello-world:bundle-test:yes");
    assert_eq!(lines[2], "/home/app");
    // The image's user by name (1000), runAsGroup for the primary group, /etc/group memberships.
    assert!(
        lines[3].starts_with("uid=1000(app) gid=44(video) groups="),
        "{out}"
    );
    assert!(
        lines[3].contains("44(video)") && !lines[3].contains("0(root)"),
        "{out}"
    );
}

#[test]
fn capabilities_are_dropped_and_added() {
    let Some(tools) = rootfs::container_prerequisites("capabilities_are_dropped_and_added") else {
        return;
    };
    let script = "grep -E '^Cap(Eff|Bnd):' /proc/self/status";
    let pod = pod(
        json!([
            {"name": "default"},
            {"name": "minimal", "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}},
            {"name": "no-raw", "securityContext": {"capabilities": {"drop": ["NET_RAW", "CHOWN"]}}},
        ]),
        json!([]),
    );
    let run = PodRun::new(tools, pod, Prefetched::default());
    let mask = |names: &[&str]| {
        names
            .iter()
            .map(|n| {
                1u64 << bundle::ALL_CAPABILITIES
                    .iter()
                    .position(|c| c == n)
                    .unwrap()
            })
            .fold(0, |a, b| a | b)
    };
    let default = mask(&bundle::DEFAULT_CAPABILITIES);
    let out = ok(&run.run("default", &shell(script)));
    assert_eq!(status_hex(&out, "CapEff:"), default, "{out}");
    assert_eq!(status_hex(&out, "CapBnd:"), default, "{out}");
    let out = ok(&run.run("minimal", &shell(script)));
    assert_eq!(
        status_hex(&out, "CapEff:"),
        mask(&["CAP_NET_BIND_SERVICE"]),
        "{out}"
    );
    let out = ok(&run.run("no-raw", &shell(script)));
    assert_eq!(
        status_hex(&out, "CapEff:"),
        default & !mask(&["CAP_NET_RAW", "CAP_CHOWN"]),
        "{out}"
    );
}

#[test]
fn a_read_only_root_filesystem_refuses_writes_but_volumes_take_them() {
    let Some(tools) = rootfs::container_prerequisites(
        "a_read_only_root_filesystem_refuses_writes_but_volumes_take_them",
    ) else {
        return;
    };
    let pod = pod(
        json!([{
            "name": "ro",
            "securityContext": {"readOnlyRootFilesystem": true},
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        }]),
        json!([{"name": "scratch", "emptyDir": {}}]),
    );
    let run = PodRun::new(tools, pod, Prefetched::default());
    let out = ok(&run.run(
        "ro",
        &shell("touch /root-file 2>/dev/null && echo root:wrote || echo root:refused; touch /scratch/f && echo scratch:wrote"),
    ));
    assert_eq!(out, "root:refused\nscratch:wrote\n");
    assert!(!run.rootfs.join("root-file").exists());
}

#[test]
fn cpu_and_memory_limits_show_in_the_cgroup() {
    let Some(tools) = rootfs::container_prerequisites("cpu_and_memory_limits_show_in_the_cgroup")
    else {
        return;
    };
    let pod = pod(
        json!([{"name": "limited", "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}}]),
        json!([]),
    );
    let run = PodRun::new(tools, pod, Prefetched::default());
    // cgroup v1 shows each controller at /sys/fs/cgroup/<controller>; v2 in one directory.
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                  cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max; \
                  cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max";
    let out = ok(&run.run("limited", &shell(script)));
    assert_eq!(out, "67108864\n50000\n256\n");
}

#[test]
fn a_config_map_volume_shows_its_content_and_an_atomic_update() {
    let Some(tools) = rootfs::container_prerequisites(
        "a_config_map_volume_shows_its_content_and_an_atomic_update",
    ) else {
        return;
    };
    let config = |v: &str| {
        Prefetched::default().with_config_map(json!({
            "metadata": {"name": "settings", "namespace": "default"},
            "data": {"greeting": v, "other": format!("other-{v}")},
        }))
    };
    let pod = pod(
        json!([
            {"name": "reader", "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]},
            // A subPath through the volume's `name -> ..data/name` symlinks.
            {"name": "pinned", "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/greeting", "subPath": "greeting"}]},
        ]),
        json!([{"name": "cfg", "configMap": {"name": "settings"}}]),
    );
    let mut run = PodRun::new(tools, pod, config("v1"));
    assert_eq!(ok(&run.run("pinned", &shell("cat /etc/greeting"))), "v1");
    // The reader waits (at most 20 s) for the update and checks that both files move together.
    let script = "cat /etc/cfg/greeting; echo; \
        i=0; while [ \"$(cat /etc/cfg/greeting)\" != v2 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; \
        cat /etc/cfg/greeting /etc/cfg/other; echo; \
        touch /etc/cfg/new 2>/dev/null && echo writable || echo read-only";
    let child = run.spawn("reader", &shell(script));
    // Let the container start and read v1 first.
    std::thread::sleep(Duration::from_millis(1500));
    run.objects = config("v2");
    let changed = volumes::update(
        &run.sandbox.pod_dir,
        &Sources {
            pod: context(&run.pod),
            objects: &run.objects,
            local_storage: Path::new("/nonexistent/storage"),
        },
    )
    .unwrap();
    assert_eq!(changed, ["cfg"]);
    let out = ok(&wait(child));
    assert_eq!(out, "v1\nv2other-v2\nread-only\n");
}

#[test]
fn two_containers_of_a_pod_share_network_hostname_ipc_and_an_empty_dir() {
    let Some(tools) = rootfs::container_prerequisites(
        "two_containers_of_a_pod_share_network_hostname_ipc_and_an_empty_dir",
    ) else {
        return;
    };
    let mount = json!([{"name": "shared", "mountPath": "/shared"}]);
    let pod = pod(
        json!([
            {"name": "first", "volumeMounts": mount},
            {"name": "second", "volumeMounts": mount},
        ]),
        json!([{"name": "shared", "emptyDir": {}}]),
    );
    let run = PodRun::new(tools, pod, Prefetched::default());
    let script = "for ns in net uts ipc; do readlink /proc/self/ns/$ns; done; hostname; \
        cat /etc/hostname; grep -c . /proc/net/dev; \
        [ -e /shared/from-first ] && cat /shared/from-first || echo first-was-here > /shared/from-first";
    // Both running at once: the second sees the first's file only through the shared volume.
    let first = run.spawn("first", &shell(&format!("{script}; sleep 1")));
    std::thread::sleep(Duration::from_millis(500));
    let second = ok(&run.run("second", &shell(script)));
    let first = ok(&wait(first));
    let (a, b): (Vec<&str>, Vec<&str>) = (first.lines().collect(), second.lines().collect());
    let ns_id = |path: &Path| format!("[{}]", fs::metadata(path).unwrap().ino());
    let Namespace::Path(net) = &run.sandbox.network else {
        panic!("the pod has its own network namespace")
    };
    assert_eq!(a.len(), 6, "first (writes, prints no 7th line):\n{first}");
    assert_eq!(b.len(), 7, "second:\n{second}");
    assert_eq!(a[0], b[0], "the same network namespace");
    assert_eq!(a[0], format!("net:{}", ns_id(net)), "the sandbox's");
    assert_ne!(
        a[0],
        fs::read_link("/proc/self/ns/net")
            .unwrap()
            .to_string_lossy(),
        "not the host's"
    );
    assert_eq!(a[1], b[1], "the same UTS namespace");
    assert_eq!(a[2], b[2], "the same IPC namespace");
    assert_eq!(
        &a[3..5],
        ["bundle-test", "bundle-test"],
        "the pod's hostname"
    );
    assert_eq!(b[3], "bundle-test");
    assert_eq!(a[5], b[5], "the same /proc/net/dev (lo only)");
    assert_eq!(b[6], "first-was-here");
}

#[test]
fn a_host_network_pod_uses_the_nodes_network_and_hostname() {
    let Some(tools) =
        rootfs::container_prerequisites("a_host_network_pod_uses_the_nodes_network_and_hostname")
    else {
        return;
    };
    let mut pod = pod(json!([{"name": "host"}]), json!([]));
    pod["spec"]["hostNetwork"] = json!(true);
    let run = PodRun::new(tools, pod, Prefetched::default());
    assert_eq!(run.sandbox.network, Namespace::Host);
    let out = ok(&run.run(
        "host",
        &shell(
            "readlink /proc/self/ns/net; readlink /proc/self/ns/uts; hostname; head -1 /etc/hosts",
        ),
    ));
    let lines: Vec<&str> = out.lines().collect();
    let host_ns = |kind: &str| fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
    assert_eq!(lines[0], host_ns("net").to_string_lossy());
    assert_eq!(lines[1], host_ns("uts").to_string_lossy());
    assert_eq!(
        lines[2],
        nix::unistd::gethostname().unwrap().to_string_lossy()
    );
    assert_eq!(lines[3], "# Kubernetes-managed hosts file (host network).");
}

#[test]
fn a_privileged_container_gets_the_nodes_capabilities_and_devices() {
    let Some(tools) = rootfs::container_prerequisites(
        "a_privileged_container_gets_the_nodes_capabilities_and_devices",
    ) else {
        return;
    };
    let pod = pod(
        json!([{"name": "priv", "securityContext": {"privileged": true}}]),
        json!([]),
    );
    let run = PodRun::new(tools, pod, Prefetched::default());
    let out = ok(&run.run(
        "priv",
        &shell("grep '^CapEff:' /proc/self/status; [ -c /dev/null ] && echo null-ok; grep -c . /proc/self/mountinfo; cat /proc/sys/kernel/hostname > /proc/sys/kernel/hostname && echo proc-sys-writable"),
    ));
    let own = fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(
        status_hex(&out, "CapEff:"),
        status_hex(&own, "CapBnd:"),
        "{out}"
    );
    assert!(out.contains("null-ok\n"), "{out}");
    assert!(
        out.contains("proc-sys-writable\n"),
        "no read-only /proc/sys: {out}"
    );
}

#[test]
fn runtime_default_seccomp_refuses_namespaces_and_mounts_unless_capabilities_allow() {
    let Some(tools) = rootfs::container_prerequisites(
        "runtime_default_seccomp_refuses_namespaces_and_mounts_unless_capabilities_allow",
    ) else {
        return;
    };
    let runtime_default = json!({"seccompProfile": {"type": "RuntimeDefault"}});
    let pod = pod(
        json!([
            {"name": "unconfined"},
            {"name": "confined", "securityContext": runtime_default},
            {"name": "admin", "securityContext": {
                "seccompProfile": {"type": "RuntimeDefault"},
                "capabilities": {"add": ["SYS_ADMIN"]}}},
            {"name": "privileged", "securityContext": {
                "seccompProfile": {"type": "RuntimeDefault"}, "privileged": true}},
        ]),
        json!([]),
    );
    // A new user namespace needs no capability, so only a seccomp filter refuses it; mounting
    // a tmpfs needs CAP_SYS_ADMIN, which `admin` has and the profile then lets through.
    let script = "grep '^Seccomp:' /proc/self/status; \
                  unshare -U true 2>&1; echo unshare=$?; \
                  mkdir -p /tmp/m && mount -t tmpfs none /tmp/m 2>&1; echo mount=$?";
    let field = |out: &str, key: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .trim()
            .to_owned()
    };
    let run = PodRun::new(tools, pod, Prefetched::default());
    let out = ok(&run.run("unconfined", &shell(script)));
    assert_eq!(field(&out, "Seccomp:"), "0", "{out}");
    assert_eq!(field(&out, "unshare="), "0", "{out}");
    let out = ok(&run.run("confined", &shell(script)));
    assert_eq!(field(&out, "Seccomp:"), "2", "{out}");
    assert_eq!(field(&out, "unshare="), "1", "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert_ne!(field(&out, "mount="), "0", "{out}");
    let out = ok(&run.run("admin", &shell(script)));
    assert_eq!(field(&out, "Seccomp:"), "2", "{out}");
    assert_eq!(field(&out, "unshare="), "0", "{out}");
    assert_eq!(field(&out, "mount="), "0", "{out}");
    let out = ok(&run.run("privileged", &shell(script)));
    assert_eq!(field(&out, "Seccomp:"), "0", "{out}");
}
