use std::os::fd::AsFd;

use serde_json::json;

use super::*;

fn root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    // As tests/common/skip.rs: a failure unless KEELSON_ALLOW_SKIP=1, never a skip under CI.
    if std::env::var("CI").is_ok_and(|v| v == "true")
        || !std::env::var("KEELSON_ALLOW_SKIP").is_ok_and(|v| v == "1")
    {
        panic!(
            "`{test}` needs root (namespaces); KEELSON_ALLOW_SKIP=1 skips it (not under CI=true)"
        );
    }
    eprintln!("!!! SKIPPING `{test}` (KEELSON_ALLOW_SKIP=1): needs root (namespaces)");
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

const HOST_RESOLV: &str = "# generated\nnameserver 192.168.1.1\nnameserver 192.168.1.2 # second\n\
    search old.example\nsearch lan example.com\noptions ndots:2 edns0\n";

fn no_cluster_dns() -> ClusterDns {
    ClusterDns {
        server: None,
        domain: "cluster.local".into(),
    }
}

fn cluster_dns() -> ClusterDns {
    ClusterDns {
        server: Some("10.43.0.10".parse().unwrap()),
        domain: "cluster.local".into(),
    }
}

#[test]
fn resolv_conf_follows_dns_policy_and_dns_config() {
    let pod = |spec: serde_json::Value| json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec});
    // ClusterFirst (the default): the cluster's server, search list and ndots:5 (not the
    // node's options), the node's search list after the cluster's.
    let cluster_first = "search shop.svc.cluster.local svc.cluster.local cluster.local lan \
        example.com\nnameserver 10.43.0.10\noptions ndots:5\n";
    assert_eq!(
        resolv_conf(&pod(json!({})), HOST_RESOLV, &cluster_dns()),
        cluster_first
    );
    assert_eq!(
        resolv_conf(
            &pod(json!({"dnsPolicy": "ClusterFirst"})),
            HOST_RESOLV,
            &cluster_dns()
        ),
        cluster_first
    );
    // On the host network ClusterFirst means the node's resolver; ClusterFirstWithHostNet
    // asks for the cluster's.
    let node = "search lan example.com\nnameserver 192.168.1.1\nnameserver 192.168.1.2\n\
         options ndots:2 edns0\n";
    assert_eq!(
        resolv_conf(
            &pod(json!({"hostNetwork": true})),
            HOST_RESOLV,
            &cluster_dns()
        ),
        node
    );
    assert_eq!(
        resolv_conf(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            HOST_RESOLV,
            &cluster_dns()
        ),
        cluster_first
    );
    // Without a cluster DNS server ClusterFirst falls back to the node's resolver.
    assert_eq!(
        resolv_conf(&pod(json!({})), HOST_RESOLV, &no_cluster_dns()),
        node
    );
    assert_eq!(
        resolv_conf(
            &pod(json!({"dnsPolicy": "Default"})),
            HOST_RESOLV,
            &cluster_dns()
        ),
        node
    );
    let merged = resolv_conf(
        &pod(json!({"dnsPolicy": "Default", "dnsConfig": {
            "nameservers": ["192.168.1.2", "9.9.9.9", "1.1.1.1"],
            "searches": ["svc.local", "lan"],
            "options": [{"name": "ndots", "value": "5"}, {"name": "single-request"}],
        }})),
        HOST_RESOLV,
        &cluster_dns(),
    );
    assert_eq!(
        merged,
        "search lan example.com svc.local\nnameserver 192.168.1.1\nnameserver 192.168.1.2\n\
         nameserver 9.9.9.9\noptions edns0 ndots:5 single-request\n",
        "duplicates dropped, three nameservers at most, the pod's option wins"
    );
    let merged = resolv_conf(
        &pod(json!({"dnsConfig": {
            "nameservers": ["10.43.0.10", "198.18.0.1"],
            "searches": ["extra.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
        }})),
        HOST_RESOLV,
        &cluster_dns(),
    );
    assert_eq!(
        merged,
        "search shop.svc.cluster.local svc.cluster.local cluster.local lan example.com \
         extra.example\nnameserver 10.43.0.10\nnameserver 198.18.0.1\noptions ndots:2 edns0\n",
        "ClusterFirst merged with dnsConfig"
    );
    let none = resolv_conf(
        &pod(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.0.0.10"]}})),
        HOST_RESOLV,
        &cluster_dns(),
    );
    assert_eq!(none, "nameserver 10.0.0.10\n");
}

#[test]
fn hostname_and_hosts_file_follow_kubelet() {
    let long = "a".repeat(62) + "-bcd";
    let pod = json!({"metadata": {"name": long, "namespace": "ns"}, "spec": {}});
    assert_eq!(pod_hostname(&pod).unwrap(), ("a".repeat(62), None));
    let pod = json!({"metadata": {"name": "web-0", "namespace": "shop"},
        "spec": {"hostname": "db", "subdomain": "cluster",
                 "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}});
    let (name, sub) = pod_hostname(&pod).unwrap();
    assert_eq!(name, "db");
    let domain = domain_of(&pod, "cluster.local", sub);
    let ips: [IpAddr; 1] = ["10.42.0.9".parse().unwrap()];
    assert_eq!(
        hosts_file(&name, domain.as_deref(), &ips, &pod),
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
         10.42.0.9\tdb.cluster.shop.svc.cluster.local\tdb\n\n\
         # Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"
    );
    let bad = json!({"metadata": {"name": "p"}, "spec": {"hostname": "Not_A_Label"}});
    assert!(matches!(pod_hostname(&bad), Err(SandboxError::Hostname(_))));
}

#[test]
fn namespaces_are_pinned_set_up_and_torn_down() {
    if !root("namespaces_are_pinned_set_up_and_torn_down") {
        return;
    }
    let tmp = pod_dir();
    let pod = json!({"metadata": {"name": "box", "namespace": "ns"}, "spec": {}});
    let host = HostFiles {
        hostname: "node-1".into(),
        hosts: "127.0.0.1 localhost\n".into(),
        resolv_conf: HOST_RESOLV.into(),
    };
    let sandbox = create(tmp.path(), &pod, &host).unwrap();
    let Namespace::Path(net) = &sandbox.network else {
        panic!("own network expected")
    };
    let Namespace::Path(uts) = &sandbox.uts else {
        panic!("own UTS expected")
    };
    assert!(is_namespace_file(net) && is_namespace_file(uts));
    assert_ne!(
        fs::metadata(net)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap(),
        fs::metadata("/proc/self/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap(),
        "a namespace of its own"
    );
    // Inside: the pod's hostname, and lo up.
    let (net, uts) = (net.clone(), uts.clone());
    let (hostname, lo_up) = std::thread::spawn(move || {
        let join = |path: &Path, kind| {
            let f = fs::File::open(path).unwrap();
            nix::sched::setns(f.as_fd(), kind).unwrap();
        };
        join(&uts, CloneFlags::CLONE_NEWUTS);
        join(&net, CloneFlags::CLONE_NEWNET);
        let hostname = nix::unistd::gethostname().unwrap();
        let lo_up = nix::ifaddrs::getifaddrs().unwrap().any(|i| {
            i.interface_name == "lo" && i.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
        });
        (hostname.into_string().unwrap(), lo_up)
    })
    .join()
    .unwrap();
    assert_eq!(hostname, "box");
    assert!(lo_up);
    assert!(volumes::is_mount_point(sandbox.shm.as_ref().unwrap()));
    // Adopted, not made again.
    let again = create(tmp.path(), &pod, &host).unwrap();
    assert_eq!(again, sandbox);
    let base = fs::canonicalize(tmp.path()).unwrap();
    assert_eq!(
        volumes::mounts_below(&base).unwrap().len(),
        4,
        "net, uts, ipc, shm"
    );

    let ips: [IpAddr; 1] = ["10.42.0.9".parse().unwrap()];
    write_files(&sandbox, &pod, &ips, &host, &no_cluster_dns()).unwrap();
    assert_eq!(fs::read_to_string(&sandbox.hostname_file).unwrap(), "box\n");
    assert!(
        fs::read_to_string(&sandbox.hosts)
            .unwrap()
            .contains("10.42.0.9\tbox\n")
    );

    tear_down(tmp.path()).unwrap();
    assert!(volumes::mounts_below(&base).unwrap().is_empty());
    assert!(!tmp.path().join("ns").exists());
    tear_down(tmp.path()).unwrap();
}

#[test]
fn host_network_pods_use_the_nodes_namespaces() {
    if !root("host_network_pods_use_the_nodes_namespaces") {
        return;
    }
    let tmp = pod_dir();
    let pod = json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true, "hostIPC": true}});
    let host = HostFiles {
        hostname: "node-1".into(),
        hosts: "127.0.0.1 localhost".into(),
        resolv_conf: String::new(),
    };
    let sandbox = create(tmp.path(), &pod, &host).unwrap();
    assert_eq!(sandbox.network, Namespace::Host);
    assert_eq!(sandbox.uts, Namespace::Host);
    assert_eq!(sandbox.ipc, Namespace::Host);
    assert_eq!(sandbox.shm, None);
    assert_eq!(sandbox.hostname, "node-1");
    write_files(&sandbox, &pod, &[], &host, &no_cluster_dns()).unwrap();
    assert_eq!(
        fs::read_to_string(&sandbox.hosts).unwrap(),
        "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n"
    );
    tear_down(tmp.path()).unwrap();
}
