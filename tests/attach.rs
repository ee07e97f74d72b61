//! `kubectl attach` and `kubectl run -i`: containers with `stdin: true` / `tty: true` on a
//! server's own node, their input through the container's monitor and their output from the
//! CRI log, before and after the server is killed.
//!
//! Needs root, runc, Debian's docker-registry, busybox-static and python3 (for a
//! pseudo-terminal); without them each test says so loudly and is skipped, or fails under
//! CI=true.

mod common;

use std::time::Duration;

use common::pods::{
    IMAGE, Images, Step, apply, available, kubectl, kubectl_with_pty, phase, server_with_runtime,
    wait_running,
};
use common::wait_until;

/// A pod whose one container `c` runs `command` with the given input settings.
fn input_pod(name: &str, command: &[&str], stdin: bool, tty: bool) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "command": command,
                "stdin": stdin, "tty": tty}],
        },
    })
    .to_string()
}

/// `kubectl attach -it POD` under a terminal: types a command, resizes the terminal, asks
/// the shell for its size; returns what the terminal showed.
fn attach_tty(s: &common::Server, pod: &str) -> String {
    kubectl_with_pty(
        s,
        &["attach", "-it", pod],
        &[
            Step::Sleep(Duration::from_secs(2)),
            Step::Type("echo $((6*7))\n"),
            Step::Sleep(Duration::from_secs(1)),
            Step::Resize(30, 100),
            Step::Sleep(Duration::from_secs(1)),
            Step::Type("stty size\n"),
        ],
        Duration::from_secs(3),
    )
}

#[test]
fn a_terminal_container_takes_input_resizes_and_logs_its_output() {
    if !available("a_terminal_container_takes_input_resizes_and_logs_its_output") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    apply(&s, &input_pod("shell", &["sh"], true, true));
    wait_running(&s, "shell");

    let shown = attach_tty(&s, "shell");
    assert!(
        shown.contains("42"),
        "the shell over attach did not answer: {shown:?}\n{}",
        s.log_tail()
    );
    assert!(
        shown.contains("30 100"),
        "the resize did not reach the container's terminal: {shown:?}"
    );
    // A terminal's output is the container's stdout in its log.
    let (code, logs, err) = kubectl(&s, &["logs", "shell"], None);
    assert_eq!(code, 0, "{err}");
    assert!(logs.contains("42"), "kubectl logs: {logs:?}");
    // Attach is the container's, not a new process: still the same one running.
    assert_eq!(phase(&s, "shell"), "Running");
    drop(images);
}

#[test]
fn a_stdin_container_echoes_what_attach_sends() {
    if !available("a_stdin_container_echoes_what_attach_sends") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    apply(
        &s,
        &input_pod(
            "echo",
            &["sh", "-c", "while read l; do echo echo:$l; done"],
            true,
            false,
        ),
    );
    wait_running(&s, "echo");
    // kubectl ends when its stdin does (the container goes on); the answer comes first.
    let (_, out, err) = kubectl(&s, &["attach", "-i", "echo"], Some("ping\n"));
    assert!(
        out.contains("echo:ping"),
        "attach -i got no echo: {out:?} {err}\n{}",
        s.log_tail()
    );
    // Without stdinOnce the container's stdin stays open for the next session.
    let (_, out, err) = kubectl(&s, &["attach", "-i", "echo"], Some("again\n"));
    assert!(out.contains("echo:again"), "second attach: {out:?} {err}");
    drop(images);
}

#[test]
fn kubectl_run_interactive_feeds_stdin_once_and_removes_the_pod() {
    if !available("kubectl_run_interactive_feeds_stdin_once_and_removes_the_pod") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    let (code, out, err) = kubectl(
        &s,
        &[
            "run",
            "-i",
            "--rm",
            "--restart=Never",
            &format!("--image={IMAGE}"),
            "once",
            "--",
            "sh",
            "-c",
            // `cat` ends only at EOF: stdinOnce closes the container's stdin when kubectl's
            // ends.
            "read l; echo got $l; cat; echo stdin ended",
        ],
        Some("hello\n"),
    );
    assert_eq!(code, 0, "kubectl run -i: {out}\n{err}\n{}", s.log_tail());
    assert!(out.contains("got hello"), "kubectl run -i: {out:?} {err}");
    assert!(
        out.contains("stdin ended"),
        "no EOF on stdin: {out:?} {err}"
    );
    wait_until("the pod to be removed", Duration::from_secs(30), || {
        !s.kubectl(&["get", "pod", "once"]).status.success()
    });
    drop(images);
}

#[test]
fn attaching_stdin_to_a_container_without_it_is_refused_clearly() {
    if !available("attaching_stdin_to_a_container_without_it_is_refused_clearly") {
        return;
    }
    let images = Images::new();
    let s = server_with_runtime(&images);
    apply(
        &s,
        &input_pod(
            "quiet",
            &["sh", "-c", "while true; do sleep 1; done"],
            false,
            false,
        ),
    );
    wait_running(&s, "quiet");
    let (code, out, err) = kubectl(&s, &["attach", "-i", "quiet"], Some("x\n"));
    assert_ne!(code, 0, "attach -i to a container without stdin: {out}");
    assert!(
        err.contains("stdin is not enabled for this container"),
        "not a clear error: {err}"
    );
    drop(images);
}

#[test]
fn attach_works_again_after_the_server_is_killed() {
    if !available("attach_works_again_after_the_server_is_killed") {
        return;
    }
    let images = Images::new();
    let mut s = server_with_runtime(&images);
    apply(&s, &input_pod("shell", &["sh"], true, true));
    wait_running(&s, "shell");
    s.kill();
    s.restart();
    wait_until("the pod to be adopted", Duration::from_secs(60), || {
        phase(&s, "shell") == "Running"
    });
    let shown = attach_tty(&s, "shell");
    assert!(
        shown.contains("42") && shown.contains("30 100"),
        "attach after a restart: {shown:?}\n{}",
        s.log_tail()
    );
    let restarts =
        common::pods::pod(&s, "shell")["status"]["containerStatuses"][0]["restartCount"].as_u64();
    assert_eq!(restarts, Some(0), "the container was started again");
    drop(images);
}
