//! The cluster network as a user sees it, on three boards (a server and two agents, each in a
//! network namespace of the board lab), with host-gw and with vxlan: a Deployment of two
//! busybox web servers, one on each agent, behind a NodePort Service `web`; a client pod on
//! the server board finds the Service by its DNS name (in full, and as `web` through the
//! search list) and reaches both replicas through its cluster IP, so its requests cross boards
//! over the backend; a client on the LAN reaches them at the node port of every board's
//! address. A replica whose readiness probe starts failing is out of rotation within a second
//! of the API showing it unready, and back in once it is ready again; deleted, it is out within
//! a second of the API showing it gone. Afterwards the machine's
//! own namespace holds nothing new.
//!
//! The client is busybox-static, whose `wget` crashes in a rootfs without glibc's NSS modules
//! and whose `nc` resolves no names. So each request asks the cluster DNS for `web` with busybox
//! `nslookup` (its own DNS client, reading the pod's resolv.conf and search list) and sends
//! HTTP/1.0 with `nc` to the address it got. One `kubectl exec` runs the whole request loop,
//! each line stamped with `/proc/uptime` before the connection is made: the same clock the test
//! reads when a watch reports a change, and no `kubectl exec` start-up between requests.
//!
//! Needs what the board lab needs, plus the CNI plugins bridge, host-local and portmap.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use common::boards::{BUSYBOX, Boards, RootView, board_ip, cni_plugins};
use common::wait_until;

/// The bound the issue sets: from the API showing a pod unready until no request reaches it.
const OUT_OF_ROTATION: f64 = 1.0;
/// How long requests keep going after the pod is unready: long enough that a missed update
/// would show as replies from it.
const WATCH_AFTER: f64 = 3.0;
/// Pods starting on fresh boards (the image is imported before the node registers).
const PODS_READY: Duration = Duration::from_secs(120);
/// A change the test makes reaching the API or the requests (a probe runs every second).
const CHANGE: Duration = Duration::from_secs(15);

/// One lab at a time: two labs' six keelson processes on a small CI machine would put the
/// other lab's start-up into this one's timing.
static ONE_LAB: Mutex<()> = Mutex::new(());

#[test]
fn host_gw_service_reaches_replicas_by_name_and_drops_unready() {
    service_across_boards("host-gw");
}

#[test]
fn vxlan_service_reaches_replicas_by_name_and_drops_unready() {
    service_across_boards("vxlan");
}

fn service_across_boards(backend: &str) {
    let test = format!("cluster_network_{backend}");
    if !cni_plugins(&test) {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(PoisonError::into_inner);
    let before = RootView::now();
    {
        let Some(mut lab) = Boards::new(&test, 2) else {
            return;
        };
        let flag = format!("--flannel-backend={backend}");
        let took = lab.start(&[&flag], &[]);
        eprintln!("{test}: three boards up in {took:?}");
        user_view(&lab, backend);
    }
    // The lab is gone: whatever it made in the machine's own namespace would show now.
    let after = RootView::now();
    after.assert_nothing_new(&before);
}

/// Steps 2 to 5 of the issue's scenario, on a started lab.
fn user_view(lab: &Boards, backend: &str) {
    let manifest = lab.dir().join("web.yaml");
    fs::write(&manifest, manifest_text()).expect("write the manifest");
    lab.kubectl_ok(&["apply", "-f", &manifest.display().to_string()]);

    // Two ready replicas, one on each agent; the client on the server board.
    let mut replicas = Vec::new();
    wait_until("both replicas ready on the agents", PODS_READY, || {
        replicas = web_pods(lab);
        let nodes: BTreeSet<&str> = replicas.iter().map(|p| p.node.as_str()).collect();
        replicas.len() == 2 && replicas.iter().all(|p| p.ready) && nodes == ["b2", "b3"].into()
    });
    wait_until("the client pod running on b1", PODS_READY, || {
        let pod = pod_json(lab, "client");
        pod["status"]["phase"] == "Running" && pod["spec"]["nodeName"] == "b1"
    });
    for p in &replicas {
        let block = lab.pod_cidr(if p.node == "b2" { 1 } else { 2 });
        assert!(
            within(&p.ip, &block),
            "replica {} ({}) is outside {}'s pod block {block}",
            p.name,
            p.ip,
            p.node
        );
    }
    let cluster_ip = lab
        .kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .to_owned();
    assert!(cluster_ip.starts_with("198.19."), "{cluster_ip}");

    // The Service by its names, asked from the pod (the cluster DNS on the server board).
    // busybox nslookup asks every search domain at once and exits 1 when any of them is
    // NXDOMAIN, as `web.svc.cluster.local` is: the answer section is what counts.
    for name in ["web.default.svc.cluster.local", "web"] {
        let out = lab.kubectl(&[
            "exec", "client", "--", "busybox", "nslookup", "-type=a", name,
        ]);
        let answer = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            answer.contains("Name:\tweb.default.svc.cluster.local")
                && answer_addresses(&answer) == [cluster_ip.clone()],
            "nslookup {name} in the client pod, want only {cluster_ip}:\n{answer}"
        );
    }
    // The pod's nameserver is the address the `kube-system/kube-dns` Service holds, as in K3s
    // (and that Service, which has no endpoints, must not make the nodes reject queries).
    let dns_ip = lab
        .kubectl_ok(&[
            "get",
            "service",
            "kube-dns",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_owned();
    let resolv = lab.kubectl_ok(&["exec", "client", "--", "busybox", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {dns_ip}")),
        "kube-dns holds {dns_ip:?}; the pod's resolv.conf:\n{resolv}"
    );

    // Requests through the Service, by name, reach both replicas (so both other boards).
    let requests = Stream::spawn(
        lab.kubectl_command()
            .args(["exec", "client", "--", "sh", "-c", REQUEST_LOOP]),
        "the client's request loop",
    );
    let names: BTreeSet<String> = replicas.iter().map(|p| p.name.clone()).collect();
    wait_until("requests answered by both replicas", CHANGE, || {
        let seen: BTreeSet<String> = replies(&requests)
            .into_iter()
            .filter_map(|r| r.by)
            .collect();
        requests.assert_running();
        seen == names
    });
    let warm = replies(&requests);
    eprintln!(
        "{backend}: {} requests so far, answered by {:?}",
        warm.len(),
        names
    );
    // They cross to the agents over the backend: the server board's route to each replica.
    for p in &replicas {
        let board = &lab.boards[if p.node == "b2" { 1 } else { 2 }];
        let over = if backend == "vxlan" {
            "dev keelson.1 ".to_owned()
        } else {
            format!("via {} dev {} ", board.ip, lab.boards[0].iface)
        };
        let route = lab.sh_ok(0, &format!("ip route get {}", p.ip));
        assert!(
            route.contains(&over),
            "b1 does not send to {} on {} {over}({backend}): {route}",
            p.name,
            p.node
        );
    }
    // The same Service at its node port on every board's own address, from the client
    // namespace on the LAN: each board forwards to the replicas, on the other boards too.
    let node_port = lab
        .kubectl_ok(&[
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .trim()
        .to_owned();
    for i in 0..lab.boards.len() {
        let url = format!("http://{}:{node_port}/", board_ip(i));
        wait_until(&format!("{url} answered by a replica"), CHANGE, || {
            let out = lab.client(&lab.tools.curl, &["-s", "--max-time", "2", &url]);
            let body = String::from_utf8_lossy(&out.stdout);
            names.iter().any(|n| body.contains(n.as_str()))
        });
    }

    let vxlan_sent = || -> u64 {
        lab.sh_ok(0, "cat /sys/class/net/keelson.1/statistics/tx_packets")
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let sent_before = if backend == "vxlan" { vxlan_sent() } else { 0 };

    // One replica turns unready. Watches report the API's view, a poller the nftables rules
    // on the client's board; the requests say when the replica stopped answering.
    let (victim, other) = (&replicas[0], &replicas[1]);
    let ready = Stream::spawn(
        lab.kubectl_command().args([
            "get",
            "pod",
            &victim.name,
            "--watch",
            "--output=jsonpath={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}",
        ]),
        "the watch of the replica's Ready condition",
    );
    let slices = Stream::spawn(
        lab.kubectl_command().args([
            "get",
            "endpointslices",
            "--selector=kubernetes.io/service-name=web",
            "--watch",
            // kubectl fails on `range` after a watch's first object: two lists instead.
            "--output=jsonpath={.endpoints[*].targetRef.name}={.endpoints[*].conditions.ready}{\"\\n\"}",
        ]),
        "the watch of web's EndpointSlices",
    );
    let victim_ready = |line: &str| slice_says_ready(line, &victim.name);
    wait_until("both watches started", CHANGE, || {
        ready.first(0.0, |l| l == "True").is_some() && slices.first(0.0, victim_ready).is_some()
    });
    let rules = RulesPoller::start(lab);
    wait_until("b1's rules pick among two endpoints", CHANGE, || {
        rules.two_now()
    });

    let removed = uptime();
    lab.kubectl_ok(&[
        "exec",
        &victim.name,
        "--",
        "busybox",
        "rm",
        "-f",
        "/tmp/ready",
    ]);
    let mut unready = 0.0;
    wait_until("the API to show the replica unready", CHANGE, || {
        unready = ready.first(removed, |l| l == "False").unwrap_or(0.0);
        unready > 0.0
    });
    // The requests say whether the replica left rotation; the slice and the rules say where
    // the time went, or where it stopped.
    while uptime() < unready + WATCH_AFTER {
        requests.assert_running();
        thread::sleep(Duration::from_millis(100));
    }
    rules.stop();
    let sliced = slices.first(removed, |l| !victim_ready(l));
    let ruled = rules.first_without_two(removed);
    let since_unready = |at: Option<f64>| {
        at.map_or(format!("not within {WATCH_AFTER} s"), |at| {
            format!("{:+.2} s", at - unready)
        })
    };
    if backend == "vxlan" {
        let sent = vxlan_sent() - sent_before;
        let answered = replies(&requests)
            .iter()
            .filter(|r| r.at > warm.last().map_or(0.0, |w| w.at) && r.by.is_some())
            .count() as u64;
        // A request is at least a SYN, the request and an ACK towards the replica.
        assert!(
            sent >= 3 * answered,
            "b1's vxlan device sent {sent} packets for {answered} answered requests"
        );
    }

    let all = replies(&requests);
    let last_victim = all
        .iter()
        .filter(|r| r.by.as_deref() == Some(victim.name.as_str()))
        .map(|r| r.at)
        .fold(f64::MIN, f64::max);
    let out = last_victim - unready;
    let after: Vec<&Reply> = all.iter().filter(|r| r.at > last_victim).collect();
    let failed: Vec<&Reply> = all
        .iter()
        .filter(|r| r.at >= removed && r.by.is_none())
        .collect();
    let breakdown = format!(
        "{backend}: after `rm /tmp/ready` at {removed:.2}: the API showed the replica unready \
         {:+.2} s later; relative to that: EndpointSlice {}, b1's nftables rules {}, last \
         request answered by it {out:+.2} s; then {} requests, all to {}",
        unready - removed,
        since_unready(sliced),
        since_unready(ruled),
        after.len(),
        other.name
    );
    eprintln!(
        "FIGURE unready replica out of rotation ({backend}): {out:+.2} s after the API showed it unready\n{breakdown}"
    );
    assert!(
        out <= OUT_OF_ROTATION,
        "the unready replica still answered {out:.2} s after the API showed it unready (bound \
         {OUT_OF_ROTATION} s)\n{breakdown}"
    );
    assert!(
        sliced.is_some() && ruled.is_some(),
        "the replica left rotation, but not through the EndpointSlice and b1's rules\n\
         {breakdown}\nslice watch: {:?}",
        slices.lines()
    );
    assert!(
        after.len() >= 10
            && after
                .iter()
                .all(|r| r.by.as_deref() == Some(other.name.as_str())),
        "after the replica's last answer, requests went to {} only: {after:?}",
        other.name
    );
    assert!(
        failed.is_empty(),
        "requests failed while a replica turned unready (the other was serving): {failed:?}"
    );

    // Ready again: back in rotation.
    let readied = uptime();
    lab.kubectl_ok(&["exec", &victim.name, "--", "busybox", "touch", "/tmp/ready"]);
    let mut ready_again = 0.0;
    wait_until("the API to show the replica ready again", CHANGE, || {
        ready_again = ready.first(readied, |l| l == "True").unwrap_or(0.0);
        ready_again > 0.0
    });
    let mut back = 0.0;
    wait_until("the replica answering requests again", CHANGE, || {
        requests.assert_running();
        back = replies(&requests)
            .iter()
            .find(|r| r.at > readied && r.by.as_deref() == Some(victim.name.as_str()))
            .map_or(0.0, |r| r.at);
        back > 0.0
    });
    eprintln!(
        "FIGURE ready replica back in rotation ({backend}): first answer {:+.2} s after the API \
         showed it ready ({:+.2} s after `touch /tmp/ready`)",
        back - ready_again,
        back - readied
    );

    // Deleted: out of rotation within the same bound of the API showing it gone (keelson
    // deletes a pod at once and its node stops it within the grace period). Its container is
    // stopped at once (grace 1 s), so a request still sent its way fails rather than being
    // answered by it: both count as still in rotation.
    let deleting = Stream::spawn(
        lab.kubectl_command().args([
            "get",
            "pod",
            &victim.name,
            "--watch",
            "--output-watch-events",
            "--output=jsonpath={.type}{\"\\n\"}",
        ]),
        "the watch of the replica's deletion",
    );
    wait_until("the deletion watch started", CHANGE, || {
        deleting.first(0.0, |l| l == "ADDED").is_some()
    });
    let deleted = uptime();
    lab.kubectl_ok(&["delete", "pod", &victim.name, "--wait=false"]);
    let mut terminating = 0.0;
    let limit = uptime() + CHANGE.as_secs_f64();
    while terminating == 0.0 {
        terminating = deleting.first(deleted, |l| l == "DELETED").unwrap_or(0.0);
        assert!(
            uptime() < limit,
            "the API did not show the replica deleted: {:?} {}",
            deleting.lines(),
            deleting.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
    while uptime() < terminating + WATCH_AFTER {
        requests.assert_running();
        thread::sleep(Duration::from_millis(100));
    }
    let to_victim: Vec<Reply> = replies(&requests)
        .into_iter()
        .filter(|r| r.at > deleted)
        .filter(|r| r.by.as_deref().is_none_or(|by| by == victim.name))
        .collect();
    let gone = to_victim.iter().map(|r| r.at).fold(terminating, f64::max) - terminating;
    eprintln!(
        "FIGURE deleted replica out of rotation ({backend}): {gone:+.2} s after the API showed it \
         deleted ({} requests went its way after the delete)",
        to_victim.len()
    );
    assert!(
        gone <= OUT_OF_ROTATION,
        "requests still went to the deleted replica {gone:.2} s after the API showed it \
         deleted (bound {OUT_OF_ROTATION} s): {to_victim:?}"
    );
    drop(deleting);

    // The loop ends by itself once told to; a loop that had died would have shown above.
    lab.kubectl_ok(&["exec", "client", "--", "busybox", "touch", "/tmp/stop"]);
    let total = requests.wait_exit(CHANGE);
    eprintln!("{backend}: {total} requests in all");
    drop(ready);
    drop(slices);
}

/// The Deployment, its Service and the client pod. The replicas keep off the server board
/// (a required node affinity) and off each other's board (a required anti-affinity), so
/// every request from the client crosses to another board. Each serves its own name; its
/// readiness is the file `/tmp/ready`, probed every second, one failure enough.
fn manifest_text() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - {{key: kubernetes.io/hostname, operator: NotIn, values: [b1]}}
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{app: web}}}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: {BUSYBOX}
        imagePullPolicy: Never
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        command:
        - sh
        - -c
        - busybox mkdir -p /www && echo "$POD_NAME" > /www/index.html && busybox touch /tmp/ready && exec busybox httpd -f -p 8080 -h /www
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe:
          exec: {{command: [test, -f, /tmp/ready]}}
          periodSeconds: 1
          failureThreshold: 1
          successThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default}}
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {{kubernetes.io/hostname: b1}}
  containers:
  - name: client
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [busybox, sleep, "3600"]
"#
    )
}

/// Runs in the client pod until `/tmp/stop` exists (or ten minutes pass): resolve `web`,
/// stamp, ask it for `/`, print `<uptime> <address> <who answered>`. A failed lookup prints
/// `-` and `dns-failed`, a request without an answer `no-answer`.
const REQUEST_LOOP: &str = r#"
read up _ < /proc/uptime
end=$(( ${up%.*} + 600 ))
while [ ! -e /tmp/stop ] && [ "${up%.*}" -lt "$end" ]; do
  ip=$(busybox nslookup -type=a web 2>/dev/null | busybox awk '/^Address: /{a=$2} END{print a}')
  read up _ < /proc/uptime
  if [ -z "$ip" ]; then
    echo "$up - dns-failed"
    busybox sleep 0.1
    continue
  fi
  by=$(printf 'GET / HTTP/1.0\r\n\r\n' | busybox nc -w 2 "$ip" 80 | busybox tail -n 1)
  echo "$up $ip ${by:-no-answer}"
done
"#;

/// One line of the request loop.
#[derive(Debug, Clone)]
struct Reply {
    /// `/proc/uptime` in the client pod just before it connected.
    at: f64,
    /// The replica that answered; `None` for a failed lookup or request.
    by: Option<String>,
}

fn replies(requests: &Stream) -> Vec<Reply> {
    requests
        .lines()
        .into_iter()
        .filter_map(|(_, line)| {
            let mut fields = line.split_whitespace();
            let at = fields.next()?.parse().ok()?;
            let _address = fields.next()?;
            let by = fields.next()?;
            let failed = by == "dns-failed" || by == "no-answer";
            Some(Reply {
                at,
                by: (!failed).then(|| by.to_owned()),
            })
        })
        .collect()
}

/// Whether a line of the EndpointSlice watch (`<names>=<ready flags>`, each list separated by
/// spaces) has `pod` as a ready endpoint.
fn slice_says_ready(line: &str, pod: &str) -> bool {
    let Some((names, ready)) = line.split_once('=') else {
        return false;
    };
    names
        .split_whitespace()
        .zip(ready.split_whitespace())
        .any(|(name, ready)| name == pod && ready == "true")
}

/// The addresses in the answer section of busybox `nslookup` (the server's own line is
/// `Address:\t…`, answers are `Address: …`).
fn answer_addresses(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("Address: "))
        .map(|a| a.trim().to_owned())
        .collect()
}

/// A replica of the Deployment, as the API shows it.
#[derive(Debug, Clone)]
struct WebPod {
    name: String,
    node: String,
    ip: String,
    ready: bool,
}

fn web_pods(lab: &Boards) -> Vec<WebPod> {
    let out = lab.kubectl(&["get", "pods", "--selector=app=web", "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| WebPod {
            name: p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            node: p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ip: p["status"]["podIP"].as_str().unwrap_or_default().to_owned(),
            ready: p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        })
        .collect()
}

fn pod_json(lab: &Boards, name: &str) -> Value {
    let out = lab.kubectl(&["get", "pod", name, "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn within(ip: &str, cidr: &str) -> bool {
    let Some((net, prefix)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(net), Ok(prefix)) = (
        ip.parse::<std::net::Ipv4Addr>(),
        net.parse::<std::net::Ipv4Addr>(),
        prefix.parse::<u32>(),
    ) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - prefix.min(32)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Seconds since boot (`/proc/uptime`, 10 ms steps): the one clock both the test and the
/// pods can read, since they share the kernel.
fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/uptime holds the seconds since boot")
}

// === impl Stream ===

/// A process whose output lines are collected as they come, each with the uptime it arrived
/// at. Killed (with its reader threads joined) on drop.
struct Stream {
    what: String,
    child: Mutex<Child>,
    lines: Arc<Mutex<Vec<(f64, String)>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Stream {
    fn spawn(cmd: &mut Command, what: &str) -> Stream {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&lines);
            readers.push(thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let at = uptime();
                    lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((at, line));
                }
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            let stderr = Arc::clone(&stderr);
            readers.push(thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                stderr
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&text);
            }));
        }
        Stream {
            what: what.to_owned(),
            child: Mutex::new(child),
            lines,
            stderr,
            readers,
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn lines(&self) -> Vec<(f64, String)> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When the first line arriving after `since` that satisfies `want` arrived.
    fn first(&self, since: f64, want: impl Fn(&str) -> bool) -> Option<f64> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(at, l)| *at >= since && want(l))
            .map(|(at, _)| *at)
    }

    /// Fails the test if the process has exited.
    fn assert_running(&self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(Some(status)) = child.try_wait() {
            drop(child);
            thread::sleep(Duration::from_millis(100));
            panic!(
                "{} exited ({status}); stderr:\n{}\nlast lines: {:?}",
                self.what,
                self.stderr(),
                self.lines().iter().rev().take(5).collect::<Vec<_>>()
            );
        }
    }

    /// Waits for a successful exit; the number of lines it printed.
    fn wait_exit(&self, limit: Duration) -> usize {
        let mut status = None;
        wait_until(&format!("{} to exit", self.what), limit, || {
            let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        assert!(
            status.is_some_and(|s| s.success()),
            "{} exited with {status:?}; stderr:\n{}",
            self.what,
            self.stderr()
        );
        self.lines().len()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

// === impl RulesPoller ===

/// Reads the `keelson-services` table on the server board (where the client's packets are
/// DNATed) over and over, noting when it last picked among two endpoints: with two replicas,
/// `web`'s chain is the only one with `numgen random mod 2`.
struct RulesPoller {
    stop: Arc<AtomicBool>,
    /// (uptime when `nft` was started, whether the table picked among two endpoints).
    polls: Arc<Mutex<Vec<(f64, bool)>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RulesPoller {
    fn start(lab: &Boards) -> RulesPoller {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(Mutex::new(Vec::new()));
        let (ip, ns, nft) = (
            lab.tools.ip.clone(),
            lab.boards[0].ns.clone(),
            lab.tools.nft.clone(),
        );
        let thread = {
            let (stop, polls) = (Arc::clone(&stop), Arc::clone(&polls));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let at = uptime();
                    // A read that failed says nothing about the rules.
                    if let Some(table) = list_services_table(&ip, &ns, &nft) {
                        let two = table.contains("numgen random mod 2 ");
                        polls
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((at, two));
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            })
        };
        RulesPoller {
            stop,
            polls,
            thread: Some(thread),
        }
    }

    /// Whether the latest read picked among two endpoints.
    fn two_now(&self) -> bool {
        self.polls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .is_some_and(|(_, two)| *two)
    }

    /// When the first read started at or after `since` found no choice among two.
    fn first_without_two(&self, since: f64) -> Option<f64> {
        self.polls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(at, two)| *at >= since && !two)
            .map(|(at, _)| *at)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for RulesPoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn list_services_table(ip: &Path, ns: &str, nft: &Path) -> Option<String> {
    let out = Command::new(ip)
        .args(["netns", "exec", ns])
        .arg(nft)
        .args(["list", "table", "inet", "keelson-services"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
