use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::api::network::{ClusterNetwork, NodeNet};
use crate::node::network::NetEvent;

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).unwrap()
}

fn pod() -> PodIdentity {
    PodIdentity {
        namespace: "default".into(),
        name: "web".into(),
        uid: "0b7c6c1e-uid".into(),
    }
}

fn record(list: Value) -> Record {
    Record {
        list,
        container_id: "0b7c6c1e-uid".into(),
        if_name: IFNAME.into(),
        netns: "/var/lib/keelson/agent/pods/0b7c6c1e-uid/ns/net".into(),
        args: cni_args(&pod()),
        port_mappings: vec![],
        result: None,
    }
}

#[test]
fn the_default_config_names_the_nodes_blocks_and_a_private_state_dir() {
    let text = render_default(
        &[cidr("198.19.3.0/24"), cidr("fd00:19::/64")],
        Path::new("/data/agent/cni/networks"),
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["name"], NETWORK_NAME);
    let bridge = &v["plugins"][0];
    assert_eq!(bridge["type"], "bridge");
    assert_eq!(bridge["bridge"], "cni0");
    assert_eq!(bridge["isGateway"], true);
    assert_eq!(
        bridge["ipMasq"], false,
        "masquerade is the node's nftables job"
    );
    assert_eq!(bridge["hairpinMode"], true);
    let ipam = &bridge["ipam"];
    assert_eq!(ipam["type"], "host-local");
    assert_eq!(ipam["dataDir"], "/data/agent/cni/networks");
    assert_eq!(
        ipam["ranges"],
        json!([[{"subnet": "198.19.3.0/24"}], [{"subnet": "fd00:19::/64"}]])
    );
    assert_eq!(
        ipam["routes"],
        json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
    );
    assert_eq!(v["plugins"][1]["type"], "portmap");
    assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    assert_eq!(v["plugins"].as_array().unwrap().len(), 2);

    let v4: Value =
        serde_json::from_str(&render_default(&[cidr("198.19.3.0/24")], Path::new("/d"))).unwrap();
    assert_eq!(
        v4["plugins"][0]["ipam"]["routes"],
        json!([{"dst": "0.0.0.0/0"}])
    );
}

#[test]
fn the_first_config_file_in_lexical_order_wins_and_a_single_conf_becomes_a_list() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load_config_list(dir.path()).unwrap().is_none());
    assert!(
        load_config_list(&dir.path().join("absent"))
            .unwrap()
            .is_none()
    );
    std::fs::write(dir.path().join("README"), "not a config").unwrap();
    std::fs::write(
        dir.path().join("20-other.conf"),
        r#"{"cniVersion": "0.4.0", "name": "other", "type": "ptp"}"#,
    )
    .unwrap();
    let (path, list) = load_config_list(dir.path()).unwrap().unwrap();
    assert!(path.ends_with("20-other.conf"));
    assert_eq!(list["name"], "other");
    assert_eq!(list["cniVersion"], "0.4.0");
    assert_eq!(list["plugins"][0]["type"], "ptp");

    std::fs::write(
        dir.path().join("10-keelson.conflist"),
        render_default(&[cidr("198.19.0.0/24")], Path::new("/d")),
    )
    .unwrap();
    let (path, list) = load_config_list(dir.path()).unwrap().unwrap();
    assert!(path.ends_with("10-keelson.conflist"));
    assert_eq!(list["name"], "keelson");

    // A broken first file is an error naming it, never a silent fall-through.
    std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
    let err = load_config_list(dir.path()).unwrap_err().to_string();
    assert!(err.contains("05-broken.conflist"), "{err}");
    std::fs::write(
        dir.path().join("05-broken.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "../../bin/sh"}]}"#,
    )
    .unwrap();
    let err = load_config_list(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a plugin name"), "{err}");
}

#[test]
fn results_of_1_0_0_and_0_4_0_give_the_pods_addresses() {
    let v1 = br#"{"cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0", "mac": "aa"}, {"name": "veth1", "mac": "bb"},
                       {"name": "eth0", "mac": "cc", "sandbox": "/x/ns/net"}],
        "ips": [{"address": "198.19.0.5/24", "gateway": "198.19.0.1", "interface": 2},
                {"address": "fd00:19::5/64", "interface": 2},
                {"address": "198.19.0.1/24", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}]}"#;
    let r = parse_result("bridge", Command::Add, v1).unwrap();
    assert_eq!(
        result_ips(&r),
        vec![
            "198.19.0.5".parse::<IpAddr>().unwrap(),
            "fd00:19::5".parse().unwrap()
        ],
        "only the pod's interface counts, in the result's order"
    );
    // The loopback plugin's result: lo's addresses are no pod IPs.
    let lo = br#"{"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": "/x/ns/net"}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}, {"address": "::1/128", "interface": 0}]}"#;
    let r = parse_result("loopback", Command::Add, lo).unwrap();
    assert!(result_ips(&r).is_empty());
    let v04 = br#"{"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "198.19.0.6/24"}]}"#;
    let r = parse_result("bridge", Command::Add, v04).unwrap();
    assert_eq!(
        result_ips(&r),
        vec!["198.19.0.6".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn malformed_results_are_clear_errors_naming_the_plugin() {
    for (out, says) in [
        (&b"hello, I am not JSON"[..], "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{\"ips\": []}", "no cniVersion"),
        (b"{\"cniVersion\": \"9.9.9\"}", "9.9.9"),
        (
            b"{\"cniVersion\": \"1.0.0\", \"ips\": [{\"address\": \"banana\"}]}",
            "banana",
        ),
        (b"{\"cniVersion\": \"1.0.0\", \"ips\": 5}", "not a list"),
        (b"", "not JSON"),
    ] {
        let e = parse_result("fancy", Command::Add, out).unwrap_err();
        assert!(matches!(e, CniError::Malformed { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("fancy") && text.contains(says), "{text}");
    }
}

#[test]
fn plugin_errors_carry_code_msg_and_details() {
    let e = parse_error(
        "bridge",
        Command::Add,
        br#"{"cniVersion": "1.0.0", "code": 11, "msg": "no more addresses", "details": "range 198.19.0.0/24 is full"}"#,
    )
    .unwrap();
    let text = e.to_string();
    assert!(
        text.contains("\"bridge\"")
            && text.contains("ADD")
            && text.contains("no more addresses")
            && text.contains("code 11")
            && text.contains("range 198.19.0.0/24 is full"),
        "{text}"
    );
    assert!(parse_error("bridge", Command::Add, b"oops").is_none());
}

#[test]
fn the_environment_follows_the_spec() {
    let r = record(json!({}));
    let env: BTreeMap<&str, String> = environment(
        Command::Add,
        &r,
        &[PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
    )
    .into_iter()
    .collect();
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "0b7c6c1e-uid");
    assert_eq!(
        env["CNI_NETNS"],
        "/var/lib/keelson/agent/pods/0b7c6c1e-uid/ns/net"
    );
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(env["CNI_PATH"], "/opt/cni/bin:/usr/lib/cni");
    assert_eq!(
        env["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=0b7c6c1e-uid;K8S_POD_UID=0b7c6c1e-uid"
    );
    let del: BTreeMap<&str, String> = environment(Command::Del, &r, &[]).into_iter().collect();
    assert_eq!(del["CNI_COMMAND"], "DEL");
}

#[test]
fn each_plugin_gets_the_lists_name_version_prev_result_and_only_its_capabilities() {
    let list: Value =
        serde_json::from_str(&render_default(&[cidr("198.19.0.0/24")], Path::new("/d"))).unwrap();
    let ports = vec![PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: String::new(),
    }];
    let bridge = plugin_config(&list, &list["plugins"][0], None, &ports);
    assert_eq!(bridge["name"], "keelson");
    assert_eq!(bridge["cniVersion"], "1.0.0");
    assert!(bridge.get("prevResult").is_none());
    assert!(
        bridge.get("runtimeConfig").is_none(),
        "bridge does not ask for port mappings"
    );
    let prev = json!({"cniVersion": "1.0.0", "ips": []});
    let portmap = plugin_config(&list, &list["plugins"][1], Some(&prev), &ports);
    assert_eq!(portmap["prevResult"], prev);
    assert_eq!(
        portmap["runtimeConfig"]["portMappings"],
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    );
}

#[test]
fn host_ports_come_from_the_containers_ports() {
    let pod = json!({"spec": {"containers": [
        {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080},
                                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "198.18.0.1"},
                                {"containerPort": 9000}]},
        {"name": "b"}]}});
    assert_eq!(
        port_mappings(&pod),
        vec![
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new()
            },
            PortMapping {
                host_port: 5353,
                container_port: 53,
                protocol: "udp".into(),
                host_ip: "198.18.0.1".into()
            },
        ]
    );
}

// === plugin calls with fake plugins (shell scripts; no root needed) ===

/// A node whose conf dir lists `plugins` (by type), with fake plugin scripts in a bin dir;
/// every call is logged to `calls` as `COMMAND TYPE`.
struct Fake {
    dir: tempfile::TempDir,
    net: Arc<PodNetwork>,
}

impl Fake {
    fn new(plugins: &[(&str, &str)], timeout: Duration) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        let calls = dir.path().join("calls");
        for (name, body) in plugins {
            let script = format!(
                "#!/bin/sh\ncat > /dev/null\necho \"$CNI_COMMAND {name}\" >> {}\n{body}\n",
                calls.display()
            );
            let path = bin.join(name);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let list = json!({
            "cniVersion": "1.0.0", "name": "fake",
            "plugins": plugins.iter().map(|(n, _)| json!({"type": n})).collect::<Vec<_>>(),
        });
        std::fs::write(conf.join("50-fake.conflist"), list.to_string()).unwrap();
        let network = Network::new("pi1");
        network.apply(NetEvent::Cluster(ClusterNetwork {
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            backend: Backend::None,
            lb_timing: Default::default(),
        }));
        let net = PodNetwork::new(
            Settings {
                conf_dir: conf,
                bin_dirs: vec![dir.path().join("nowhere"), bin],
                timeout,
            },
            dir.path().join("state"),
            network,
        );
        net.reconcile();
        std::fs::create_dir_all(dir.path().join("pod")).unwrap();
        Fake { dir, net }
    }

    fn pod_dir(&self) -> PathBuf {
        self.dir.path().join("pod")
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    async fn attach(&self) -> Result<Attachment> {
        self.net
            .attach(
                &self.pod_dir(),
                &pod(),
                Path::new("/nonexistent/netns"),
                vec![],
            )
            .await
    }
}

const GOOD: &str = r#"echo '{"cniVersion": "1.0.0", "ips": [{"address": "198.19.0.9/24"}]}'"#;
const PASS: &str = r#"if [ "$CNI_COMMAND" = ADD ]; then echo '{"cniVersion": "1.0.0", "ips": [{"address": "198.19.0.9/24"}]}'; fi"#;

#[tokio::test]
async fn add_runs_the_chain_and_a_restarted_node_adopts_without_calling_again() {
    let fake = Fake::new(
        &[("first", GOOD), ("second", PASS)],
        Duration::from_secs(10),
    );
    let a = fake.attach().await.unwrap();
    assert_eq!(a.ips, vec!["198.19.0.9".parse::<IpAddr>().unwrap()]);
    assert!(!a.adopted);
    assert_eq!(fake.calls(), ["ADD first", "ADD second"]);
    // A second attach (a restarted keelson setting the pod up again) reads the record.
    let again = fake.attach().await.unwrap();
    assert!(again.adopted && again.ips == a.ips);
    assert_eq!(fake.calls().len(), 2, "no second ADD");
    fake.net.check(&fake.pod_dir()).await.unwrap();
    assert_eq!(fake.calls()[2..], ["CHECK first", "CHECK second"]);
    fake.net.detach(&fake.pod_dir()).await.unwrap();
    assert_eq!(
        fake.calls()[4..],
        ["DEL second", "DEL first"],
        "DEL runs last first"
    );
    assert!(!fake.pod_dir().join(RECORD).exists());
    // Idempotent.
    fake.net.detach(&fake.pod_dir()).await.unwrap();
    assert_eq!(fake.calls().len(), 6);
}

#[tokio::test]
async fn a_failing_plugin_is_reported_and_what_ran_before_it_is_undone() {
    let fails = r#"if [ "$CNI_COMMAND" = ADD ]; then echo '{"cniVersion": "1.0.0", "code": 7, "msg": "bad weather", "details": "try later"}'; exit 1; fi"#;
    let fake = Fake::new(
        &[("first", GOOD), ("flaky", fails)],
        Duration::from_secs(10),
    );
    let e = fake.attach().await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("flaky") && text.contains("bad weather") && text.contains("try later"),
        "{text}"
    );
    assert_eq!(
        fake.calls(),
        ["ADD first", "ADD flaky", "DEL flaky", "DEL first"]
    );
    assert!(
        !fake.pod_dir().join(RECORD).exists(),
        "nothing half set up is left"
    );
}

#[tokio::test]
async fn a_plugin_that_prints_garbage_or_dies_is_a_clear_error() {
    let garbage =
        r#"if [ "$CNI_COMMAND" = ADD ]; then echo 'Segmentation fault (core dumped)'; fi"#;
    let fake = Fake::new(
        &[("first", GOOD), ("noisy", garbage)],
        Duration::from_secs(10),
    );
    let text = fake.attach().await.unwrap_err().to_string();
    assert!(
        text.contains("noisy") && text.contains("Segmentation fault"),
        "{text}"
    );
    assert_eq!(fake.calls()[2..], ["DEL noisy", "DEL first"]);

    let dies = r#"if [ "$CNI_COMMAND" = ADD ]; then echo 'it hurts' >&2; exit 3; fi"#;
    let fake = Fake::new(&[("grumpy", dies)], Duration::from_secs(10));
    let text = fake.attach().await.unwrap_err().to_string();
    assert!(
        text.contains("grumpy") && text.contains("it hurts") && text.contains("3"),
        "{text}"
    );
}

#[tokio::test]
async fn a_hung_plugin_is_killed_with_its_children_at_the_timeout() {
    let marker = tempfile::tempdir().unwrap();
    let child_pid = marker.path().join("child.pid");
    let hangs = format!(
        r#"if [ "$CNI_COMMAND" = ADD ]; then sleep 60 & echo $! > {}; wait; fi"#,
        child_pid.display()
    );
    let fake = Fake::new(
        &[("first", GOOD), ("sleepy", &hangs)],
        Duration::from_millis(500),
    );
    let started = std::time::Instant::now();
    let e = fake.attach().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, CniError::Timeout { .. }), "{e:?}");
    assert!(
        e.to_string().contains("sleepy") && e.to_string().contains("killed"),
        "{e}"
    );
    assert_eq!(fake.calls()[2..], ["DEL sleepy", "DEL first"]);
    let pid: i32 = std::fs::read_to_string(&child_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The plugin's child went with it (a zombie reaped by init at most, never sleeping on).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state.split(' ').nth(2).is_some_and(|s| s != "Z");
        if !alive {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin's child still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_failed_cleanup_keeps_the_record_and_the_next_try_deletes_first() {
    let fails_always = r#"echo '{"cniVersion": "1.0.0", "code": 100, "msg": "broken"}'; exit 1"#;
    let fake = Fake::new(
        &[("first", GOOD), ("broken", fails_always)],
        Duration::from_secs(10),
    );
    assert!(fake.attach().await.is_err());
    assert!(
        fake.pod_dir().join(RECORD).exists(),
        "DEL failed: the record stays for a retry"
    );
    assert!(fake.attach().await.is_err());
    assert_eq!(
        fake.calls(),
        [
            "ADD first",
            "ADD broken",
            "DEL broken",
            "DEL first",
            "DEL broken",
            "DEL first"
        ],
        "the retry DELetes the half set-up first and adds nothing on top of it"
    );
}

#[tokio::test]
async fn a_missing_plugin_names_the_dirs_searched() {
    let fake = Fake::new(&[("first", GOOD)], Duration::from_secs(10));
    let list = json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "ghost"}]});
    std::fs::write(
        fake.net.settings.conf_dir.join("01-x.conflist"),
        list.to_string(),
    )
    .unwrap();
    let text = fake.attach().await.unwrap_err().to_string();
    assert!(
        text.contains("\"ghost\" not found") && text.contains("nowhere"),
        "{text}"
    );
}

#[test]
fn keelson_writes_its_config_once_the_node_has_a_block_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let network = Network::new("pi1");
    let net = PodNetwork::new(
        Settings {
            conf_dir: dir.path().join("net.d"),
            bin_dirs: vec![],
            timeout: DEFAULT_TIMEOUT,
        },
        dir.path().join("cni"),
        network.clone(),
    );
    let not_ready = |net: &PodNetwork| match net.config_list() {
        Err(CniError::NotReady(why)) => why,
        other => panic!("{other:?}"),
    };
    net.reconcile();
    assert!(not_ready(&net).contains("settings"));
    network.apply(NetEvent::Cluster(ClusterNetwork {
        cluster_cidrs: vec![cidr("198.19.0.0/17")],
        service_cidrs: vec![],
        cluster_dns: None,
        cluster_domain: "cluster.local".into(),
        backend: Backend::HostGw,
        lb_timing: Default::default(),
    }));
    net.reconcile();
    let why = not_ready(&net);
    assert!(why.contains("no pod CIDR"), "{why}");
    assert!(
        CniError::NotReady(why)
            .to_string()
            .contains("cni config uninitialized"),
        "kubelet's words"
    );
    let node = |block: &str| {
        NetEvent::Node(NodeNet {
            name: "pi1".into(),
            addresses: vec![],
            pod_cidrs: vec![cidr(block)],
            ready: true,
            lb: Default::default(),
        })
    };
    network.apply(node("198.19.4.0/24"));
    net.reconcile();
    let list = net.config_list().unwrap();
    assert_eq!(
        list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "198.19.4.0/24"
    );
    assert_eq!(
        list["plugins"][0]["ipam"]["dataDir"],
        dir.path().join("cni/networks").display().to_string()
    );
    network.apply(node("198.19.5.0/24"));
    net.reconcile();
    let list = net.config_list().unwrap();
    assert_eq!(
        list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "198.19.5.0/24"
    );

    // A conf dir that cannot be written is the reason pods wait, not a stale config.
    std::fs::remove_dir_all(dir.path().join("net.d")).unwrap();
    std::fs::write(dir.path().join("net.d"), "a file, not a directory").unwrap();
    network.apply(node("198.19.6.0/24"));
    assert_eq!(net.reconcile(), None);
    let why = not_ready(&net);
    assert!(
        why.contains("cannot write") && why.contains("10-keelson.conflist"),
        "{why}"
    );

    // With another CNI, keelson's own file goes (it would sort first and shadow theirs).
    std::fs::remove_file(dir.path().join("net.d")).unwrap();
    net.reconcile();
    assert!(dir.path().join("net.d/10-keelson.conflist").exists());
    network.apply(NetEvent::Cluster(ClusterNetwork {
        cluster_cidrs: vec![cidr("198.19.0.0/17")],
        service_cidrs: vec![],
        cluster_dns: None,
        cluster_domain: "cluster.local".into(),
        backend: Backend::None,
        lb_timing: Default::default(),
    }));
    assert_eq!(net.reconcile(), None);
    assert!(!dir.path().join("net.d/10-keelson.conflist").exists());
}
