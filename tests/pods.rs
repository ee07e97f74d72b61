//! Pods run: real runc containers from images in a local registry, on a server's own node and
//! on a real agent, with `kubectl logs` and `kubectl exec` through the tunnel's dial-back.
//!
//! Needs root, runc, Debian's docker-registry and busybox-static (`.ci/run` installs them);
//! without them each test says so loudly and is skipped, or fails under CI=true.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::pods::{
    IMAGE, Images, Step, apply, available, kubectl, kubectl_with_pty, phase, pod, read_until,
    server_with_runtime, wait_running,
};
use common::{Server, wait_until};
use serde_json::Value;

/// A pod (JSON) running `script` in busybox's shell, on `node` if given.
fn apply_pod(s: &Server, name: &str, script: &str, policy: &str, node: Option<&str>) {
    let mut spec = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", script]}],
        },
    });
    if let Some(n) = node {
        spec["spec"]["nodeName"] = n.into();
    }
    apply(s, &spec.to_string());
}

/// A real agent named `name` pulling from the test registry, once its Node exists.
fn agent_with_images(s: &Server, images: &Images, name: &str) -> Agent {
    let flags = images.flags();
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = Agent::start(&s.url(), &s.token(), name, &extra);
    wait_until("the agent's node", Duration::from_secs(30), || {
        s.kubectl(&["get", "node", name]).status.success()
    });
    agent
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn a_pod_runs_and_serves_logs_and_exec() {
    if !available("a_pod_runs_and_serves_logs_and_exec") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    apply_pod(
        &s,
        "web",
        "i=0; while true; do echo line $i; i=$((i+1)); sleep 1; done",
        "Always",
        None,
    );
    wait_running(&s, "web");
    let p = pod(&s, "web");
    let c = &p["status"]["containerStatuses"][0];
    assert_eq!(c["ready"], true, "{c}");
    assert!(c["state"]["running"]["startedAt"].is_string(), "{c}");
    assert!(
        c["containerID"]
            .as_str()
            .unwrap_or_default()
            .starts_with("keelson://"),
        "{c}"
    );
    assert!(
        c["imageID"]
            .as_str()
            .unwrap_or_default()
            .contains("@sha256:"),
        "{c}"
    );
    let conditions = p["status"]["conditions"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert!(conditions >= 4, "{}", p["status"]);

    // Logs: what the container wrote, and a line seen by `logs -f` soon after its write.
    wait_until("the first log line", Duration::from_secs(10), || {
        String::from_utf8_lossy(&s.kubectl(&["logs", "web"]).stdout).contains("line 0")
    });
    let mut follow = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", s.kubeconfig().display()))
        .args(["logs", "-f", "web", "--tail=0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    std::thread::sleep(Duration::from_millis(500));
    let written = Instant::now();
    // Writes to the container's own stdout (its PID 1's), as the app would.
    let (code, _, err) = kubectl(
        &s,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo MARK-1 > /proc/1/fd/1",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let mut out = follow.stdout.take().expect("stdout");
    let seen = read_until(&mut out, "MARK-1", Duration::from_secs(5));
    let latency = written.elapsed();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen, "logs -f never showed the line written by exec");
    eprintln!("logs -f latency (exec round trip included): {latency:?}");
    assert!(latency < Duration::from_secs(2), "logs -f took {latency:?}");

    // Exec: exit codes, stdin, and a terminal.
    let (code, _, _) = kubectl(&s, &["exec", "web", "--", "sh", "-c", "exit 3"], None);
    assert_eq!(code, 3, "kubectl exec should exit with the command's code");
    let (code, out, err) = kubectl(
        &s,
        &["exec", "-i", "web", "--", "sh", "-c", "read x; echo got $x"],
        Some("hello\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "got hello");
    let tty = exec_with_pty(&s, "web", "echo $((6*7)); tty; exit\n");
    assert!(
        tty.contains("42"),
        "the shell over the terminal did not answer: {tty:?}"
    );
    assert!(
        tty.contains("/dev/pts/"),
        "no terminal in the container: {tty:?}"
    );

    // Port-forward: busybox's httpd in the pod, reached from the test through kubectl.
    let (code, _, err) = kubectl(
        &s,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo hello-from-the-pod > /tmp/www/index.html && httpd -p 8080 -h /tmp/www",
        ],
        None,
    );
    assert_eq!(code, 0, "start httpd: {err}");
    let local = free_port();
    let mut forward = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", s.kubeconfig().display()))
        .args(["port-forward", "pod/web", &format!("{local}:8080")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let mut page = String::new();
    wait_until(
        "a page through port-forward",
        Duration::from_secs(20),
        || {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "--max-time",
                    "3",
                    &format!("http://127.0.0.1:{local}/"),
                ])
                .output()
                .expect("curl");
            page = String::from_utf8_lossy(&out.stdout).into_owned();
            page.contains("hello-from-the-pod")
        },
    );
    let _ = forward.kill();
    let _ = forward.wait();

    // kubectl cp both ways (tar over exec, stdin closed by the client when the archive ends).
    let work = tempfile::tempdir().expect("tempdir");
    let sent = work.path().join("sent.txt");
    let body: String = (0..2000)
        .map(|i| format!("line {i} of the copy\n"))
        .collect();
    std::fs::write(&sent, &body).expect("write the file to copy");
    let (code, _, err) = kubectl(
        &s,
        &["cp", &sent.display().to_string(), "web:/tmp/copied.txt"],
        None,
    );
    assert_eq!(code, 0, "kubectl cp into the pod: {err}");
    let (code, out, err) = kubectl(
        &s,
        &["exec", "web", "--", "sh", "-c", "wc -c < /tmp/copied.txt"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        body.len().to_string(),
        "the copy in the pod has another size"
    );
    let back = work.path().join("back.txt");
    let (code, _, err) = kubectl(
        &s,
        &["cp", "web:/tmp/copied.txt", &back.display().to_string()],
        None,
    );
    assert_eq!(code, 0, "kubectl cp out of the pod: {err}");
    assert_eq!(
        std::fs::read_to_string(&back).unwrap_or_default(),
        body,
        "the round trip changed the file"
    );

    // Errors a user can act on.
    let (code, _, err) = kubectl(&s, &["logs", "web", "-c", "nope"], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );

    // Deleting the pod stops its container and removes its files.
    let uid = p["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let pod_dir = s.data_dir().join("agent/pods").join(&uid);
    assert!(
        pod_dir.exists(),
        "{} should exist while the pod runs",
        pod_dir.display()
    );
    s.kubectl_ok(&["delete", "pod", "web", "--wait=false"]);
    wait_until("the pod's directory to go", Duration::from_secs(20), || {
        !pod_dir.exists()
    });
    let runc = runc_list(&s.data_dir());
    assert!(
        !runc.contains(&uid),
        "a container of the deleted pod is left: {runc}"
    );
}

#[test]
fn containers_end_restart_and_fail_as_kubelet_reports() {
    if !available("containers_end_restart_and_fail_as_kubelet_reports") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    apply_pod(&s, "done", "echo bye; exit 0", "Never", None);
    apply_pod(&s, "broken", "exit 2", "Never", None);
    apply_pod(&s, "crashy", "echo crashing; exit 1", "Always", None);
    wait_until("done to succeed", Duration::from_secs(60), || {
        phase(&s, "done") == "Succeeded"
    });
    wait_until("broken to fail", Duration::from_secs(30), || {
        phase(&s, "broken") == "Failed"
    });
    let broken = pod(&s, "broken");
    assert_eq!(
        broken["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 2,
        "{}",
        broken["status"]
    );
    assert_eq!(
        broken["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Error"
    );
    wait_until("crashy to restart", Duration::from_secs(30), || {
        pod(&s, "crashy")["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    let crashy = pod(&s, "crashy");
    let c = &crashy["status"]["containerStatuses"][0];
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1, "{c}");
    assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff", "{c}");
    let (_, out, err) = kubectl(&s, &["logs", "crashy", "--previous"], None);
    assert!(out.contains("crashing"), "logs --previous: {out:?} {err}");

    // An image the registry does not have.
    let spec = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ghost"},
        "spec": {"containers": [{"name": "c", "image": "busybox:does-not-exist"}]}});
    apply(&s, &spec.to_string());
    wait_until("ghost to say why it waits", Duration::from_secs(30), || {
        let w = &pod(&s, "ghost")["status"]["containerStatuses"][0]["state"]["waiting"];
        matches!(
            w["reason"].as_str(),
            Some("ErrImagePull" | "ImagePullBackOff")
        ) && w["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not found")
    });
    drop(images);
}

#[test]
fn an_agents_containers_outlive_its_process() {
    if !available("an_agents_containers_outlive_its_process") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    let mut agent = agent_with_images(&s, &images, "pi-1");
    apply_pod(
        &s,
        "steady",
        "while true; do sleep 1; done",
        "Always",
        Some("pi-1"),
    );
    apply_pod(&s, "finisher", "sleep 4; exit 7", "Never", Some("pi-1"));
    wait_running(&s, "steady");
    wait_running(&s, "finisher");
    let before = container_pid(&agent.data_dir(), &s, "steady");
    let started = pod(&s, "steady")["status"]["startTime"].clone();
    // The logs of a pod on an agent come through the agent's dial-back.
    let (code, _, err) = kubectl(&s, &["exec", "steady", "--", "sh", "-c", "exit 5"], None);
    assert_eq!(code, 5, "{err}");

    // A stop as systemd does it (SIGTERM), then a power cut of the process (SIGKILL); each
    // time a container ends while the agent is away and is reported when it is back.
    for (stop, finisher, code) in [("SIGTERM", "finisher", 7), ("SIGKILL", "finisher-2", 9)] {
        if stop == "SIGTERM" {
            agent.terminate(Duration::from_secs(20));
        } else {
            apply_pod(&s, finisher, "sleep 3; exit 9", "Never", Some("pi-1"));
            wait_running(&s, finisher);
            agent.kill();
        }
        std::thread::sleep(Duration::from_secs(5));
        assert!(
            Path::new(&format!("/proc/{before}")).exists(),
            "the container (pid {before}) died with the agent ({stop})"
        );
        agent.spawn();
        wait_until(
            &format!("{finisher}'s exit code to be reported after {stop}"),
            Duration::from_secs(30),
            || phase(&s, finisher) == "Failed",
        );
        let f = pod(&s, finisher);
        assert_eq!(
            f["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], code,
            "{}",
            f["status"]
        );
        let after = container_pid(&agent.data_dir(), &s, "steady");
        assert_eq!(
            before, after,
            "the container was started again instead of adopted ({stop})"
        );
        let steady = pod(&s, "steady");
        assert_eq!(steady["status"]["containerStatuses"][0]["restartCount"], 0);
        assert!(
            steady["status"]["containerStatuses"][0]["imageID"]
                .as_str()
                .is_some_and(|id| id.contains("@sha256:")),
            "an adopted container lost its imageID ({stop}): {}",
            steady["status"]
        );
        assert_eq!(
            steady["status"]["startTime"], started,
            "the pod's startTime moved with the restart ({stop})"
        );
        let ready = steady["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_default();
        assert!(
            ready["status"] == "True" && ready.get("reason").is_none_or(Value::is_null),
            "Ready after adoption: {ready}"
        );
        assert_eq!(steady["status"]["phase"], "Running");
    }
    let steady = pod(&s, "steady");
    s.kubectl_ok(&[
        "delete",
        "pod",
        "steady",
        "finisher",
        "finisher-2",
        "--wait=false",
    ]);
    let uid = steady["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_until(
        "the agent to remove the pod",
        Duration::from_secs(20),
        || !runc_list(&agent.data_dir()).contains(&uid),
    );
}

#[test]
fn a_node_cut_off_from_its_server_keeps_running_and_reports_afterwards() {
    if !available("a_node_cut_off_from_its_server_keeps_running_and_reports_afterwards") {
        return;
    }
    let images = Images::new();
    let mut s = server_with_runtime(&images);
    let agent = agent_with_images(&s, &images, "pi-3");
    apply_pod(
        &s,
        "steady",
        "while true; do sleep 1; done",
        "Always",
        Some("pi-3"),
    );
    apply_pod(&s, "crasher", "sleep 1; exit 1", "Always", Some("pi-3"));
    wait_running(&s, "steady");
    wait_running(&s, "crasher");
    let before = container_pid(&agent.data_dir(), &s, "steady");
    // Started only now, so it ends while the node has no server.
    apply_pod(&s, "finisher", "sleep 3; exit 7", "Never", Some("pi-3"));
    wait_running(&s, "finisher");
    let restarts_before = pod(&s, "crasher")["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0);

    // The only server goes away (a power cut of its board) for long enough that the
    // finisher ends and the crasher restarts at least once on their own.
    s.kill();
    std::thread::sleep(Duration::from_secs(15));
    assert!(
        Path::new(&format!("/proc/{before}")).exists(),
        "the container stopped while the node was cut off"
    );
    s.restart();
    wait_until(
        "the finisher's end to be reported after the outage",
        Duration::from_secs(60),
        || phase(&s, "finisher") == "Failed",
    );
    let f = pod(&s, "finisher");
    assert_eq!(
        f["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 7,
        "{}",
        f["status"]
    );
    wait_until(
        "the crasher's restarts during the outage to be reported",
        Duration::from_secs(30),
        || {
            pod(&s, "crasher")["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0)
                > restarts_before
        },
    );
    assert_eq!(container_pid(&agent.data_dir(), &s, "steady"), before);
    let steady = pod(&s, "steady");
    assert_eq!(steady["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(steady["status"]["phase"], "Running");
}

/// The host PID of a pod's container `c`, from runc's state on the node that runs it.
/// A board shutting down (systemd's manager says `stopping`) stops its pods' containers with
/// their grace period before the agent exits — rather than leaving them to systemd's final kill,
/// which a PID 1 ignoring SIGTERM holds up for 90 s — and keeps the pods, which run again when
/// the board is back. A plain stop of the service leaves them running (the test above).
#[test]
fn a_system_shutdown_stops_the_containers_gracefully_and_keeps_the_pods() {
    if !available("a_system_shutdown_stops_the_containers_gracefully_and_keeps_the_pods") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    // A stand-in for systemctl answering `is-system-running` from a file the test writes.
    let bin = tempfile::tempdir().expect("a temporary directory");
    let state = bin.path().join("state");
    std::fs::write(&state, "running\n").unwrap();
    let systemctl = bin.path().join("systemctl");
    std::fs::write(
        &systemctl,
        format!(
            "#!/bin/sh\n[ \"$1\" = is-system-running ] && cat {}\n",
            state.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &systemctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let flags = images.flags();
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env = [
        ("PATH", std::ffi::OsStr::new(&path)),
        ("INVOCATION_ID", std::ffi::OsStr::new("0123456789abcdef")),
    ];
    let mut agent = Agent::start_with_env(&s.url(), &s.token(), "pi-1", &extra, &env);
    wait_until("the agent's node", Duration::from_secs(30), || {
        s.kubectl(&["get", "node", "pi-1"]).status.success()
    });
    let mut spec = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "graceful"},
        "spec": {
            "nodeName": "pi-1",
            "terminationGracePeriodSeconds": 20,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c",
                "trap 'echo got-TERM; exit 0' TERM; echo up; while true; do sleep 1; done"]}],
        },
    });
    apply(&s, &spec.to_string());
    // A PID 1 with no handler: SIGTERM means nothing to it, only the final SIGKILL ends it.
    spec["metadata"]["name"] = "deaf".into();
    spec["spec"]["terminationGracePeriodSeconds"] = 3.into();
    spec["spec"]["containers"][0]["command"] = serde_json::json!(["sh", "-c", "exec sleep 100000"]);
    apply(&s, &spec.to_string());
    for name in ["graceful", "deaf"] {
        wait_until(
            &format!("{name}'s container to run"),
            Duration::from_secs(60),
            || pod(&s, name)["status"]["containerStatuses"][0]["state"]["running"].is_object(),
        );
    }
    let graceful = container_pid(&agent.data_dir(), &s, "graceful");
    let deaf = container_pid(&agent.data_dir(), &s, "deaf");
    let uid = pod(&s, "graceful")["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    std::fs::write(&state, "stopping\n").unwrap();
    let started = Instant::now();
    let status = agent.terminate(Duration::from_secs(40));
    let took = started.elapsed();
    assert!(status.success(), "the agent failed to stop: {status:?}");
    for (name, pid) in [("graceful", graceful), ("deaf", deaf)] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name}'s container (pid {pid}) outlived the shutdown\n{}",
            agent.log_tail()
        );
    }
    assert!(
        runc_list(&agent.data_dir()).trim().is_empty(),
        "containers left in runc after the shutdown: {}",
        runc_list(&agent.data_dir())
    );
    // SIGTERM first (the trap ran), and the deaf one was killed after its 3 s, not 90 s.
    let log = std::fs::read_to_string(format!("/var/log/pods/default_graceful_{uid}/c/0.log"))
        .unwrap_or_default();
    assert!(
        log.contains("got-TERM"),
        "the container never saw SIGTERM: {log:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "the shutdown took {took:?}: a container's grace period was not honoured or capped"
    );
    println!(
        "system shutdown with 2 pods (grace 20 s trapped, 3 s ignored): agent exited in {took:.1?}"
    );

    // The board is back: the same pods run again, in new containers.
    std::fs::write(&state, "running\n").unwrap();
    agent.spawn();
    wait_until("graceful to run again", Duration::from_secs(60), || {
        let p = pod(&s, "graceful");
        p["metadata"]["uid"] == uid.as_str()
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
            && runc_list(&agent.data_dir()).contains(&uid)
    });
    assert_ne!(container_pid(&agent.data_dir(), &s, "graceful"), graceful);
    assert_eq!(phase(&s, "deaf"), "Running");
}

fn container_pid(data_dir: &Path, s: &Server, pod_name: &str) -> u32 {
    let p = pod(s, pod_name);
    let id = p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|c| c.strip_prefix("keelson://"))
        .unwrap_or_default()
        .to_owned();
    let out = Command::new("runc")
        .arg(format!("--root={}", data_dir.join("agent/runc").display()))
        .args(["state", &id])
        .output()
        .expect("runc state");
    let state: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    state["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid for {id}: {}", String::from_utf8_lossy(&out.stderr)))
        as u32
}

fn runc_list(data_dir: &Path) -> String {
    let out = Command::new("runc")
        .arg(format!("--root={}", data_dir.join("agent/runc").display()))
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `kubectl exec -it POD -- sh` under a pseudo-terminal, typing `input`; returns what
/// the terminal showed.
fn exec_with_pty(s: &Server, pod: &str, input: &str) -> String {
    kubectl_with_pty(
        s,
        &["exec", "-it", pod, "--", "sh"],
        &[Step::Sleep(Duration::from_millis(1500)), Step::Type(input)],
        Duration::from_secs(15),
    )
}

#[test]
fn workloads_roll_out_with_probes_on_servers_and_agents() {
    if !available("workloads_roll_out_with_probes_on_servers_and_agents") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    let _agent = agent_with_images(&s, &images, "pi-2");
    // Ready only once the readiness probe sees the file the container makes after a second;
    // one replica per node (required anti-affinity), so both nodes run it.
    let manifests = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{app: web}}}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: {IMAGE}
        command: ["sh", "-c", "sleep 1; touch /tmp/ready; while true; do sleep 1; done"]
        readinessProbe:
          exec: {{command: ["sh", "-c", "cat /tmp/ready"]}}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: agent
        image: {IMAGE}
        command: ["sh", "-c", "while true; do sleep 1; done"]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: once}}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: once
        image: {IMAGE}
        command: ["sh", "-c", "echo job done"]
---
apiVersion: v1
kind: Pod
metadata: {{name: sick}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: sick
    image: {IMAGE}
    command: ["sh", "-c", "while true; do sleep 1; done"]
    livenessProbe:
      exec: {{command: ["sh", "-c", "cat /nonexistent"]}}
      periodSeconds: 1
      failureThreshold: 2
"#
    );
    apply(&s, &manifests);
    let (code, out, err) = kubectl(
        &s,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
        None,
    );
    assert_eq!(code, 0, "rollout status: {out}\n{err}\n{}", s.log_tail());
    let (code, out, err) = kubectl(
        &s,
        &["rollout", "status", "daemonset/agent", "--timeout=60s"],
        None,
    );
    assert_eq!(code, 0, "daemonset rollout: {out}\n{err}");
    let nodes: Vec<String> =
        s.kubectl_json(&["get", "pods", "-l", "app=web", "-o", "json"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
            .collect();
    assert!(
        nodes.contains(&"pi-2".to_owned()) && nodes.len() == 2,
        "one web replica on each node: {nodes:?}"
    );
    let (code, out, err) = kubectl(
        &s,
        &[
            "wait",
            "--for=condition=complete",
            "job/once",
            "--timeout=60s",
        ],
        None,
    );
    assert_eq!(code, 0, "job: {out}\n{err}");
    let (_, out, _) = kubectl(&s, &["logs", "job/once"], None);
    assert!(out.contains("job done"), "job logs: {out:?}");
    // The failing liveness probe restarts the container, with back-off and events.
    wait_until(
        "the sick pod to be restarted",
        Duration::from_secs(60),
        || {
            pod(&s, "sick")["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    );
    let events = String::from_utf8_lossy(
        &s.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sick",
        ])
        .stdout,
    )
    .into_owned();
    assert!(
        events.contains("Unhealthy") && events.contains("Liveness probe failed"),
        "events: {events}"
    );
}

#[test]
fn a_pods_containers_share_one_process_namespace() {
    if !available("a_pods_containers_share_one_process_namespace") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    apply(
        &s,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: shared}}
spec:
  shareProcessNamespace: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: a
    image: {IMAGE}
    command: ["sh", "-c", "while true; do sleep 1; done # marker-of-a"]
  - name: b
    image: {IMAGE}
    command: ["sh", "-c", "while true; do sleep 1; done"]
"#
        ),
    );
    wait_running(&s, "shared");
    let cmdlines = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done";
    let (code, out, err) = kubectl(
        &s,
        &["exec", "shared", "-c", "b", "--", "sh", "-c", cmdlines],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("marker-of-a"),
        "container b does not see container a's processes:\n{out}"
    );
    // PID 1 is the pod's own init (as the pause container is for kubelet), not a container.
    let (_, init, _) = kubectl(
        &s,
        &[
            "exec",
            "shared",
            "-c",
            "b",
            "--",
            "sh",
            "-c",
            "tr '\\0' ' ' < /proc/1/cmdline",
        ],
        None,
    );
    assert!(init.contains("pod-init"), "PID 1 of the pod: {init:?}");
    // Deleting the pod ends its init too.
    let uid = pod(&s, "shared")["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let inits = || {
        let out = Command::new("pgrep")
            .args(["-f", &format!("pod-init --ns-dir .*{uid}")])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(!inits().is_empty(), "no init process for the pod");
    s.kubectl_ok(&["delete", "pod", "shared", "--wait=false"]);
    wait_until("the pod's init to end", Duration::from_secs(20), || {
        inits().is_empty()
    });
}

#[test]
fn a_memory_hog_is_oom_killed_and_reported() {
    if !available("a_memory_hog_is_oom_killed_and_reported") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    let spec = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "hog", "image": IMAGE,
            "command": ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"],
            "resources": {"limits": {"memory": "32Mi"}}}]}});
    apply(&s, &spec.to_string());
    wait_until("the hog to end", Duration::from_secs(60), || {
        matches!(phase(&s, "hog").as_str(), "Failed" | "Succeeded")
    });
    let p = pod(&s, "hog");
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{}", p["status"]);
    assert_eq!(t["exitCode"], 137, "{t}");
}
