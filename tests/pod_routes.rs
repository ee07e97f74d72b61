//! Cross-node pod routes on three boards (a server and two agents in network namespaces):
//! with host-gw and with vxlan, each board's routing table holds exactly the other boards'
//! pod blocks, traffic between pod addresses crosses (encapsulated in UDP 8472 with vxlan,
//! plain with host-gw), pod traffic leaving the cluster is masqueraded, a board that leaves
//! has its routes removed from the others, and a restart leaves no stale or doubled routes.
//!
//! The pod interfaces themselves (CNI) are not used here: each board gets an empty bridge `kpod0` holding
//! the first host address of its own pod block, standing in for `cni0`.
//!
//! Needs root, iproute2, nftables, tcpdump, runc, kubectl and busybox-static; iperf3 for the
//! throughput figure it prints (skipped without it).

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::boards::{Boards, find_tool};

/// How long a change in the cluster may take to reach every board's kernel.
const CONVERGE: Duration = Duration::from_secs(30);

#[test]
fn host_gw_routes_follow_the_boards() {
    routes_follow_the_boards("host-gw");
}

#[test]
fn vxlan_routes_follow_the_boards() {
    routes_follow_the_boards("vxlan");
}

fn routes_follow_the_boards(backend: &str) {
    let test = format!("pod_routes_{backend}");
    let Some(mut lab) = Boards::new(&test, 2) else {
        return;
    };
    let flag = format!("--flannel-backend={backend}");
    lab.start(&[&flag], &[]);
    let cidrs: Vec<String> = (0..3).map(|i| lab.pod_cidr(i)).collect();
    eprintln!("{test}: pod blocks {cidrs:?}");
    for (i, cidr) in cidrs.iter().enumerate() {
        assert!(
            cidr.starts_with("198.19."),
            "{cidr} is outside the test range"
        );
        stand_in_pod(&lab, i, cidr);
    }

    // Every board routes exactly the other boards' blocks.
    for i in 0..3 {
        let others: BTreeSet<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| cidrs[j].clone())
            .collect();
        wait_routes(&lab, i, &others, backend);
    }
    if backend == "vxlan" {
        for i in 0..3 {
            check_vxlan_device(&lab, i, &cidrs);
        }
    }

    // Real traffic crosses between the stand-in pod addresses, both ways, every pair.
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                ping(&lab, i, &pod_ip(&cidrs[i]), &pod_ip(&cidrs[j]));
            }
        }
    }
    // What it looks like on the wire, on board 2's side of the bridge.
    let capture = if backend == "vxlan" {
        "udp port 8472".to_owned()
    } else {
        format!("icmp and host {}", pod_ip(&cidrs[1]))
    };
    let seen = capture_while(&lab, 1, &capture, || {
        ping(&lab, 0, &pod_ip(&cidrs[0]), &pod_ip(&cidrs[1]));
    });
    if backend == "vxlan" {
        assert!(
            // tcpdump names UDP 8472 (Linux's vxlan port) OTV; the inner packet follows.
            seen.contains(&format!("IP {}.", lab.boards[0].ip))
                && seen.contains(&format!("> {}.8472", lab.boards[1].ip))
                && seen.contains(&format!(
                    "{} > {}: ICMP echo request",
                    pod_ip(&cidrs[0]),
                    pod_ip(&cidrs[1])
                )),
            "pod traffic to board 2 is not vxlan-encapsulated between the boards' addresses:\n{seen}"
        );
    } else {
        assert!(
            seen.contains(&format!("{} > {}", pod_ip(&cidrs[0]), pod_ip(&cidrs[1])))
                && !seen.contains("8472"),
            "pod traffic to board 2 does not travel plain (host-gw):\n{seen}"
        );
    }

    // Masquerade: pod → a board's own address (outside the cluster CIDR) leaves with the
    // node's address; pod → pod keeps the pod's.
    let table = lab.sh_ok(0, "nft list table inet keelson-net");
    assert!(table.contains("masquerade"), "{table}");
    let seen = capture_while(&lab, 1, "icmp", || {
        ping(&lab, 0, &pod_ip(&cidrs[0]), &lab.boards[1].ip);
    });
    assert!(
        seen.contains(&format!(
            "{} > {}: ICMP echo request",
            lab.boards[0].ip, lab.boards[1].ip
        )),
        "pod traffic leaving the cluster CIDR is not masqueraded:\n{seen}"
    );

    figure(&lab, backend, &cidrs);

    // A board that restarts leaves the routes as they were: no duplicates, nothing stale.
    let before: Vec<String> = (0..3).map(|i| kernel_state(&lab, i)).collect();
    let stopped = lab.stop(1);
    assert!(
        stopped.is_some_and(|s| s.success()),
        "board 2 did not exit cleanly on SIGTERM: {stopped:?}\n{}",
        lab.log_tail(1)
    );
    // What an earlier run could have left behind: a keelson route (protocol 75) to a block no
    // node has any more. The restart removes it.
    lab.sh_ok(
        1,
        &format!(
            "ip route add 198.19.99.0/24 via {} proto 75",
            lab.boards[0].ip
        ),
    );
    lab.spawn(1);
    lab.wait_nodes(common::READY_TIMEOUT);
    // Give the restarted node a pass (and a resync on the others).
    wait_for(CONVERGE, "the restarted board's routes", || {
        lab.log(1).contains("pod network backend") && kernel_state(&lab, 1) == before[1]
    });
    for (i, state) in before.iter().enumerate() {
        assert_eq!(
            &kernel_state(&lab, i),
            state,
            "board {} changed across a restart",
            i + 1
        );
    }
    ping(&lab, 1, &pod_ip(&cidrs[1]), &pod_ip(&cidrs[2]));

    // A route someone else deleted comes back; a route keelson did not make is left alone.
    lab.sh_ok(0, &format!("ip route del {}", cidrs[2]));
    lab.sh_ok(0, "ip route add 198.19.120.0/24 dev lo proto static");
    thread::sleep(Duration::from_secs(1));
    // A change in the view (a label) wakes the pass at once.
    lab.kubectl_ok(&["label", "node", "b3", "wake=1"]);
    let others: BTreeSet<String> = [cidrs[1].clone(), cidrs[2].clone()].into();
    wait_routes(&lab, 0, &others, backend);
    assert!(
        lab.sh_ok(0, "ip route show 198.19.120.0/24")
            .contains("198.19.120.0/24")
    );

    if backend == "vxlan" {
        // The device is compared, not re-created, on every pass (its routes would blink).
        assert_eq!(
            lab.log(0).matches("created the vxlan device").count(),
            1,
            "board 1 re-created keelson.1:\n{}",
            lab.log_tail(0)
        );
    }

    // A board that leaves: killed and deleted; the others drop its routes.
    lab.kill(2);
    // Deleted by kubectl on the LAN (the client namespace), through the server's address.
    let kubeconfig = format!("--kubeconfig={}", lab.client_kubeconfig().display());
    let cache = format!("--cache-dir={}", lab.dir().join("client-cache").display());
    let out = lab.client(
        &lab.tools.kubectl,
        &[
            &kubeconfig,
            &cache,
            "--request-timeout=20s",
            "delete",
            "node",
            "b3",
        ],
    );
    assert!(
        out.status.success(),
        "kubectl delete node b3 from the client namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..2 {
        let others: BTreeSet<String> = [cidrs[1 - i].clone()].into();
        wait_routes(&lab, i, &others, backend);
        if backend == "vxlan" {
            // Routes go first in a pass, then neighbours and fdb entries.
            let gone = || {
                let fdb = lab.sh_ok(i, "bridge fdb show dev keelson.1");
                let neigh = lab.sh_ok(i, "ip neigh show dev keelson.1");
                !fdb.contains(&lab.boards[2].ip) && !neigh.contains(&vtep(&cidrs[2]))
            };
            wait_for(
                CONVERGE,
                &format!(
                    "board 3's fdb and neighbour entries gone from board {}",
                    i + 1
                ),
                gone,
            );
        }
    }
}

/// An empty bridge holding the first host address of `cidr`, as `cni0` would (the `dummy`
/// module may be missing where tests run).
fn stand_in_pod(lab: &Boards, i: usize, cidr: &str) {
    let prefix = cidr.split('/').nth(1).expect("a prefix");
    lab.sh_ok(
        i,
        &format!(
            "ip link add kpod0 type bridge && ip addr add {}/{prefix} dev kpod0 && ip link set kpod0 up",
            pod_ip(cidr)
        ),
    );
}

/// The `.1` of a pod block.
fn pod_ip(cidr: &str) -> String {
    let net = cidr.split('/').next().expect("an address");
    let (head, _) = net.rsplit_once('.').expect("IPv4");
    format!("{head}.1")
}

/// The VTEP address of a pod block (its `.0`).
fn vtep(cidr: &str) -> String {
    cidr.split('/').next().expect("an address").to_owned()
}

/// Board `i`'s keelson routes (`proto 75`) as (destination, rest of line).
fn routes(lab: &Boards, i: usize) -> Vec<String> {
    lab.sh_ok(i, "ip -4 route show proto 75")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_routes(lab: &Boards, i: usize, want: &BTreeSet<String>, backend: &str) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let lines = routes(lab, i);
        let dsts: Vec<String> = lines
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        let unique: BTreeSet<String> = dsts.iter().cloned().collect();
        let shaped = lines.iter().all(|l| {
            if backend == "vxlan" {
                l.contains("dev keelson.1") && l.contains("onlink")
            } else {
                !l.contains("keelson.1")
            }
        });
        if &unique == want && dsts.len() == want.len() && shaped {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "board {} routes {lines:?}, want exactly {want:?} ({backend})\n{}",
            i + 1,
            lab.all_log_tails()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn check_vxlan_device(lab: &Boards, i: usize, cidrs: &[String]) {
    let link = lab.sh_ok(i, "ip -d link show keelson.1");
    for want in ["vxlan id 1 ", "dstport 8472", "nolearning", "mtu 1450"] {
        assert!(
            link.contains(want),
            "board {}: keelson.1 lacks {want:?}:\n{link}",
            i + 1
        );
    }
    assert!(
        link.contains(&format!("local {}", lab.boards[i].ip)),
        "{link}"
    );
    let addr = lab.sh_ok(i, "ip -4 addr show dev keelson.1");
    assert!(addr.contains(&format!("{}/32", vtep(&cidrs[i]))), "{addr}");
    let fdb = lab.sh_ok(i, "bridge fdb show dev keelson.1");
    let neigh = lab.sh_ok(i, "ip neigh show dev keelson.1");
    for j in (0..3).filter(|j| *j != i) {
        assert!(
            fdb.lines()
                .any(|l| l.contains(&format!("dst {} ", lab.boards[j].ip))
                    && l.contains("permanent")),
            "board {}: no fdb entry for board {}:\n{fdb}",
            i + 1,
            j + 1
        );
        assert!(
            neigh.lines().any(|l| l.starts_with(&format!("{} ", vtep(&cidrs[j]))) && l.contains("PERMANENT")),
            "board {}: no neighbour entry for board {}'s VTEP:\n{neigh}",
            i + 1,
            j + 1
        );
    }
    assert_eq!(
        fdb.lines().filter(|l| l.contains(" dst ")).count(),
        2,
        "{fdb}"
    );
    assert_eq!(neigh.lines().count(), 2, "{neigh}");
}

/// Routes, fdb and neighbour entries of board `i`, sorted, for before/after comparisons.
fn kernel_state(lab: &Boards, i: usize) -> String {
    let mut lines: Vec<String> = routes(lab, i);
    let out = lab.sh(
        i,
        "bridge fdb show dev keelson.1 2>/dev/null; ip neigh show dev keelson.1 2>/dev/null",
    );
    lines.extend(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned),
    );
    lines.sort();
    lines.join("\n")
}

fn ping(lab: &Boards, i: usize, from: &str, to: &str) {
    let out = lab.sh(i, &format!("/bin/busybox ping -c 1 -W 2 -I {from} {to}"));
    assert!(
        out.status.success(),
        "board {}: ping {to} from {from} failed:\n{}{}\nroutes: {:?}",
        i + 1,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        routes(lab, i)
    );
}

/// Runs `tcpdump FILTER` on board `i`'s bridge port while `traffic` runs; its text.
fn capture_while(lab: &Boards, i: usize, filter: &str, traffic: impl FnOnce()) -> String {
    let port = &lab.boards[i].bridge_port;
    let child = Command::new(&lab.tools.ip)
        .args(["netns", "exec", &lab.bridge_ns])
        .arg(&lab.tools.tcpdump)
        .args(["-l", "-n", "-i", port, "-c", "4"])
        .args(filter.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcpdump");
    // tcpdump says "listening on" once its capture is open; give it that moment.
    thread::sleep(Duration::from_millis(700));
    traffic();
    thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let out = child.wait_with_output().expect("wait for tcpdump");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        thread::sleep(Duration::from_millis(300));
    }
}

/// Throughput of one TCP transfer between boards 1 and 2: between the stand-in pod
/// addresses, and between the boards' own addresses, in one run (a figure, not a check).
fn figure(lab: &Boards, backend: &str, cidrs: &[String]) {
    let Some(iperf) = find_tool("iperf3") else {
        eprintln!("!!! no throughput figure: iperf3 is not installed (apt-get install -y iperf3)");
        return;
    };
    let iperf = iperf.display().to_string();
    let mut server = Command::new(&lab.tools.ip)
        .args([
            "netns",
            "exec",
            &lab.boards[1].ns,
            &iperf,
            "-s",
            "-1",
            "-B",
            "0.0.0.0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iperf3 -s");
    let mut run = |from: &str, to: &str| -> f64 {
        // -s -1 serves one client; start a fresh one for the second run.
        let out = lab.sh(0, &format!("{iperf} -c {to} -B {from} -t 3 -J"));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        let _ = server.wait();
        server = Command::new(&lab.tools.ip)
            .args(["netns", "exec", &lab.boards[1].ns, &iperf, "-s", "-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn iperf3 -s");
        thread::sleep(Duration::from_millis(300));
        bps / 1e9
    };
    thread::sleep(Duration::from_millis(300));
    let nodes = run(&lab.boards[0].ip, &lab.boards[1].ip);
    let pods = run(&pod_ip(&cidrs[0]), &pod_ip(&cidrs[1]));
    let _ = server.kill();
    let _ = server.wait();
    eprintln!(
        "FIGURE pod-to-pod TCP throughput ({backend}, veth lab, iperf3 -t 3, one run): \
         node→node {nodes:.2} Gbit/s, pod→pod {pods:.2} Gbit/s, ratio {:.2}",
        if nodes > 0.0 { pods / nodes } else { 0.0 }
    );
}
