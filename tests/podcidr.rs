//! Node IPAM against a real server and real agents, checked with kubectl: every node gets its
//! own block of `--cluster-cidr`, a deleted node's block goes to the next node, a full range
//! leaves a node without one (with kube-controller-manager's `CIDRNotAvailable` event) until
//! a block is freed, a set pod CIDR cannot be changed, and bad flags stop the server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::agent::Agent;
use common::{Options, Server, wait_until};
use serde_json::Value;

const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Every node's `spec.podCIDR` as `kubectl get nodes -o jsonpath` prints it ("" for none).
fn pod_cidrs(s: &Server) -> BTreeMap<String, String> {
    s.kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR}{"\n"}{end}"#,
    ])
    .lines()
    .filter_map(|l| l.split_once('='))
    .map(|(n, c)| (n.to_owned(), c.to_owned()))
    .collect()
}

/// Waits until exactly `names` are the nodes and `with_block` of them have a pod CIDR.
fn wait_for_blocks(
    s: &Server,
    names: &[&str],
    with_block: usize,
    agents: &[&Agent],
) -> BTreeMap<String, String> {
    let want: BTreeSet<&str> = names.iter().copied().collect();
    let mut seen = BTreeMap::new();
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the nodes' pod CIDRs", JOIN_TIMEOUT, || {
            seen = pod_cidrs(s);
            seen.keys().map(String::as_str).collect::<BTreeSet<_>>() == want
                && seen.values().filter(|c| !c.is_empty()).count() == with_block
        })
    }));
    if waited.is_err() {
        let logs: Vec<String> = agents.iter().map(|a| a.log_tail()).collect();
        panic!(
            "wanted {with_block} of {names:?} with a pod CIDR, saw {seen:?}\n{}\n{}",
            s.log_tail(),
            logs.join("\n")
        );
    }
    seen
}

fn cidr_events(s: &Server) -> Vec<Value> {
    let events = s.kubectl_json(&["get", "events", "-A", "-o", "json"]);
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "CIDRNotAvailable")
        .cloned()
        .collect()
}

#[test]
fn each_node_gets_its_own_block_and_a_deleted_nodes_block_goes_to_the_next_node() {
    let s = Server::start(Options::default());
    let server_node = s.node_name().to_owned();
    let mut a1 = Agent::start(&s.url(), &s.token(), "cidr-a1", &[]);
    let a2 = Agent::start(&s.url(), &s.token(), "cidr-a2", &[]);
    let names = [server_node.as_str(), "cidr-a1", "cidr-a2"];
    let blocks = wait_for_blocks(&s, &names, 3, &[&a1, &a2]);
    // Three nodes, lowest blocks first: whichever order they joined in, these three.
    let taken: BTreeSet<&str> = blocks.values().map(String::as_str).collect();
    assert_eq!(
        taken,
        BTreeSet::from(["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]),
        "{blocks:?}"
    );
    let node = s.kubectl_json(&["get", "node", "cidr-a1", "-o", "json"]);
    assert_eq!(
        node["spec"]["podCIDRs"],
        serde_json::json!([blocks["cidr-a1"]]),
        "{node}"
    );

    // Set once, fixed: as in Kubernetes, not even an administrator may change it.
    let patch = r#"{"spec":{"podCIDR":"10.42.200.0/24","podCIDRs":["10.42.200.0/24"]}}"#;
    let out = s.kubectl(&["patch", "node", "cidr-a2", "--type=merge", "-p", patch]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("node updates may not change podCIDR except from \"\" to valid"),
        "{err}"
    );

    // The agent goes and its Node is deleted: its block is free, and the next node gets it.
    let freed = blocks["cidr-a1"].clone();
    a1.terminate(Duration::from_secs(15));
    s.kubectl_ok(&["delete", "node", "cidr-a1"]);
    let a3 = Agent::start(&s.url(), &s.token(), "cidr-a3", &[]);
    let names = [server_node.as_str(), "cidr-a2", "cidr-a3"];
    let blocks = wait_for_blocks(&s, &names, 3, &[&a2, &a3]);
    assert_eq!(blocks["cidr-a3"], freed, "{blocks:?}");
    assert!(cidr_events(&s).is_empty(), "{:?}", cidr_events(&s));
}

#[test]
fn a_full_cluster_cidr_leaves_a_node_without_a_block_until_one_is_freed() {
    let s = Server::start(Options::default().arg("--cluster-cidr", "10.99.0.0/23"));
    let server_node = s.node_name().to_owned();
    let mut b1 = Agent::start(&s.url(), &s.token(), "cidr-b1", &[]);
    let mut b2 = Agent::start(&s.url(), &s.token(), "cidr-b2", &[]);
    let names = [server_node.as_str(), "cidr-b1", "cidr-b2"];
    let blocks = wait_for_blocks(&s, &names, 2, &[&b1, &b2]);
    let taken: BTreeSet<&str> = blocks
        .values()
        .map(String::as_str)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        taken,
        BTreeSet::from(["10.99.0.0/24", "10.99.1.0/24"]),
        "{blocks:?}"
    );
    let (left_out, _) = blocks
        .iter()
        .find(|(_, c)| c.is_empty())
        .expect("one node without a block");
    wait_until("a CIDRNotAvailable event", JOIN_TIMEOUT, || {
        !cidr_events(&s).is_empty()
    });
    let events = cidr_events(&s);
    let event = &events[0];
    assert_eq!(event["involvedObject"]["kind"], "Node", "{event}");
    assert_eq!(
        event["involvedObject"]["name"],
        left_out.as_str(),
        "{event}"
    );
    assert_eq!(
        event["message"],
        format!("Node {left_out} status is now: CIDRNotAvailable"),
        "{event}"
    );
    assert!(
        s.log().contains("the cluster CIDR is full"),
        "{}",
        s.log_tail()
    );
    // Its own updates free nothing: they are not told again (no event per status change).
    for i in 0..3 {
        s.kubectl_ok(&[
            "label",
            "node",
            left_out.as_str(),
            &format!("touch={i}"),
            "--overwrite",
        ]);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let events = cidr_events(&s);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0]["count"].as_i64().unwrap_or(1) == 1,
        "told again: {}",
        events[0]
    );

    // An agent holding a block goes and its Node is deleted: the node left out gets the block.
    let left_out = left_out.clone();
    let gone = if left_out == "cidr-b1" {
        &mut b2
    } else {
        &mut b1
    };
    let freed = blocks[&gone.name].clone();
    gone.terminate(Duration::from_secs(15));
    s.kubectl_ok(&["delete", "node", &gone.name]);
    wait_until(
        "the freed block to be given out again",
        JOIN_TIMEOUT,
        || pod_cidrs(&s).get(&left_out) == Some(&freed),
    );
}

#[test]
fn a_dual_stack_cluster_cidr_gives_a_node_one_block_per_family() {
    let s = Server::start(
        Options::default()
            .arg("--cluster-cidr", "10.42.0.0/16,fd00:10:244::/56")
            .arg("--node-cidr-mask-size-ipv6", "64"),
    );
    let mut node = Value::Null;
    wait_until(
        "the server's node to get its pod CIDRs",
        JOIN_TIMEOUT,
        || {
            node = s.node();
            node["spec"]["podCIDRs"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        },
    );
    assert_eq!(
        node["spec"]["podCIDRs"],
        serde_json::json!(["10.42.0.0/24", "fd00:10:244::/64"]),
        "{node}"
    );
    assert_eq!(node["spec"]["podCIDR"], "10.42.0.0/24", "{node}");
}

#[test]
fn bad_pod_network_flags_keep_the_server_from_starting() {
    for (flags, named) in [
        (&[("--cluster-cidr", "10.42.0.0/33")][..], "--cluster-cidr"),
        (&[("--cluster-cidr", "pods")], "--cluster-cidr"),
        (
            &[("--cluster-cidr", "10.42.0.0/16,10.43.0.0/16")],
            "--cluster-cidr",
        ),
        (&[("--node-cidr-mask-size", "8")], "--node-cidr-mask-size 8"),
    ] {
        let mut opts = Options::default();
        for (flag, value) in flags {
            opts = opts.arg(flag, value);
        }
        let Err(exited) = Server::try_start(opts) else {
            panic!("the server started with {flags:?}")
        };
        assert!(
            !exited.status.success() && exited.log.contains(named),
            "{flags:?}: {}",
            exited.log
        );
    }
}
