//! A pod's sandbox without a pause container: the network, IPC and UTS namespaces its
//! containers share, kept alive as bind-mounted namespace files under the pod directory (as
//! `ip netns add` keeps a network namespace), the pod's `/dev/shm`, and the pod's
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`.
//!
//! What it owns, under `<pod dir>`: `ns/net`, `ns/ipc`, `ns/uts` (nsfs bind mounts), `shm` (a
//! 64 MiB tmpfs, like containerd's sandbox shm), `etc-hosts`, `etc-hostname`, `resolv.conf`.
//! What it leaves to others: the pod's network interface and address (CNI, after [`create`]:
//! the caller runs it in [`Sandbox::network`], then calls [`write_files`] with the address),
//! the cluster DNS server itself (`node::dns`; this module only names it in `resolv.conf`), and
//! the pod directory itself.
//!
//! Invariants:
//! - A namespace file exists under the pod dir only while it is a mount of a live namespace:
//!   [`create`] makes namespaces in a dedicated thread that `unshare`s, sets the hostname,
//!   brings `lo` up and bind-mounts `/proc/thread-self/ns/*`, so no other thread of the
//!   process ever changes namespace; a failure half-way removes what was made.
//! - [`create`] is idempotent: namespaces that exist are adopted (a restarted keelson finds
//!   its pods' namespaces where it left them).
//! - `hostNetwork` pods have no net or UTS file (they use the node's); `hostIPC` pods no IPC
//!   file and no shm (they use the node's `/dev/shm`).
//! - Like `env`, this module imports only its siblings and external crates.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde_json::Value;

use super::env;
use super::volumes;

/// The most nameservers a resolver reads (glibc's MAXNS); kubelet keeps the first three.
const MAX_NAMESERVERS: usize = 3;
/// Kubelet's bound on search domains.
const MAX_SEARCHES: usize = 32;
/// The longest hostname (a DNS label).
const MAX_HOSTNAME: usize = 63;
/// The pod's `/dev/shm` size: containerd's default for a sandbox.
const SHM_SIZE: &str = "size=65536k";
/// Kubelet's header lines.
const HOSTS_HEADER: &str = "# Kubernetes-managed hosts file.\n";
const HOST_NETWORK_HOSTS_HEADER: &str = "# Kubernetes-managed hosts file (host network).\n";

/// Why a sandbox could not be made or removed. All are the node's problem (a missing
/// privilege, a kernel without namespaces) except `Hostname`, which is the pod's.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("pod hostname {0:?} is not a valid DNS label")]
    Hostname(String),
    #[error("creating the pod's namespaces: {op}: {source}")]
    Namespace {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// A pod's sandbox, as a container's bundle needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub pod_dir: PathBuf,
    pub network: Namespace,
    pub ipc: Namespace,
    pub uts: Namespace,
    /// The pod's hostname (the node's with `hostNetwork`).
    pub hostname: String,
    /// The pod's `/dev/shm`; `None` with `hostIPC` (the node's).
    pub shm: Option<PathBuf>,
    pub hosts: PathBuf,
    pub hostname_file: PathBuf,
    pub resolv_conf: PathBuf,
}

/// Where a container's namespace of one kind comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// The node's own.
    Host,
    /// The pod's, held by this bind-mounted namespace file.
    Path(PathBuf),
}

/// The cluster DNS pods with `dnsPolicy: ClusterFirst` use (`--cluster-dns`,
/// `--cluster-domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// `None` when the node does not know one (yet): pods get the node's resolver.
    pub server: Option<IpAddr>,
    /// Lower-case, without a final dot (`cluster.local`).
    pub domain: String,
}

/// What the node's own files say, for pods that take the node's resolver or hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFiles {
    pub hostname: String,
    /// The node's `/etc/hosts` (copied for `hostNetwork` pods, as kubelet does).
    pub hosts: String,
    /// The resolver configuration pods with `dnsPolicy: Default` get.
    pub resolv_conf: String,
}

/// Makes (or adopts) the pod's namespaces and `/dev/shm` under `pod_dir`.
pub fn create(pod_dir: &Path, pod: &Value, host: &HostFiles) -> Result<Sandbox> {
    let spec = &pod["spec"];
    let host_network = spec["hostNetwork"].as_bool().unwrap_or(false);
    let host_ipc = spec["hostIPC"].as_bool().unwrap_or(false);
    let hostname = if host_network {
        host.hostname.clone()
    } else {
        pod_hostname(pod)?.0
    };
    let ns_dir = pod_dir.join("ns");
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxError::Io { op, path, source }
    };
    fs::create_dir_all(&ns_dir).map_err(io("create", &ns_dir))?;
    let mut wanted = Vec::new();
    if !host_network {
        wanted.push(Kind::Net);
        wanted.push(Kind::Uts);
    }
    if !host_ipc {
        wanted.push(Kind::Ipc);
    }
    let missing: Vec<Kind> = wanted
        .iter()
        .copied()
        .filter(|k| !is_namespace_file(&ns_dir.join(k.file())))
        .collect();
    if !missing.is_empty() {
        make_namespaces(&ns_dir, &missing, &hostname)?;
    }
    let shm = if host_ipc {
        None
    } else {
        let shm = pod_dir.join("shm");
        fs::create_dir_all(&shm).map_err(io("create", &shm))?;
        if !volumes::is_mount_point(&shm) {
            nix::mount::mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(format!("mode=1777,{SHM_SIZE}").as_str()),
            )
            .map_err(|e| io("mount tmpfs on", &shm)(e.into()))?;
        }
        Some(shm)
    };
    let ns = |kind: Kind, host: bool| {
        if host {
            Namespace::Host
        } else {
            Namespace::Path(ns_dir.join(kind.file()))
        }
    };
    Ok(Sandbox {
        pod_dir: pod_dir.to_path_buf(),
        network: ns(Kind::Net, host_network),
        uts: ns(Kind::Uts, host_network),
        ipc: ns(Kind::Ipc, host_ipc),
        hostname,
        shm,
        hosts: pod_dir.join("etc-hosts"),
        hostname_file: pod_dir.join("etc-hostname"),
        resolv_conf: pod_dir.join("resolv.conf"),
    })
}

/// Writes the pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, each replaced by a
/// rename. Call after the pod has its addresses and before its containers start: a running
/// container keeps the file it was started with (its bind mount holds the old inode), as with
/// kubelet, which writes them once.
pub fn write_files(
    sandbox: &Sandbox,
    pod: &Value,
    pod_ips: &[IpAddr],
    host: &HostFiles,
    cluster: &ClusterDns,
) -> Result<()> {
    let host_network = pod["spec"]["hostNetwork"].as_bool().unwrap_or(false);
    let hosts = if host_network {
        let mut s = HOST_NETWORK_HOSTS_HEADER.to_string();
        s.push_str(&host.hosts);
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&host_aliases(pod));
        s
    } else {
        let (name, domain) = pod_hostname(pod)?;
        hosts_file(
            &name,
            domain_of(pod, &cluster.domain, domain).as_deref(),
            pod_ips,
            pod,
        )
    };
    let hostname = if host_network {
        host.hostname.clone()
    } else {
        sandbox.hostname.clone()
    };
    write_replace(&sandbox.hosts, hosts.as_bytes())?;
    write_replace(&sandbox.hostname_file, format!("{hostname}\n").as_bytes())?;
    write_replace(
        &sandbox.resolv_conf,
        resolv_conf(pod, &host.resolv_conf, cluster).as_bytes(),
    )?;
    Ok(())
}

/// Unmounts and removes the namespace files and the shm, and removes the pod's etc files.
/// Idempotent; a namespace lives on while a container still runs in it.
pub fn tear_down(pod_dir: &Path) -> Result<()> {
    let ns_dir = pod_dir.join("ns");

    for kind in [Kind::Net, Kind::Ipc, Kind::Uts] {
        let file = ns_dir.join(kind.file());
        unmount(&file)?;
        remove(&file, false)?;
    }
    remove(&ns_dir, true)?;
    let shm = pod_dir.join("shm");
    unmount(&shm)?;
    remove(&shm, true)?;
    for f in ["etc-hosts", "etc-hostname", "resolv.conf"] {
        remove(&pod_dir.join(f), false)?;
    }
    Ok(())
}

/// The pod's hostname and subdomain, by kubelet's rules: `spec.hostname` or the pod name,
/// cut to 63 characters without a trailing `-` or `.`. (`setHostnameAsFQDN` is not applied
/// yet: the hostname stays the short name.)
pub fn pod_hostname(pod: &Value) -> Result<(String, Option<String>)> {
    let name = env::str_at(pod, &["metadata", "name"]).unwrap_or("");
    let hostname = match env::str_at(pod, &["spec", "hostname"]) {
        Some(h) if !h.is_empty() => {
            if !is_dns_label(h) {
                return Err(SandboxError::Hostname(h.to_string()));
            }
            h
        }
        _ => name,
    };
    let mut hostname = hostname.to_string();
    if hostname.len() > MAX_HOSTNAME {
        hostname.truncate(MAX_HOSTNAME);
        while hostname.ends_with(['-', '.']) {
            hostname.pop();
        }
    }
    let subdomain = env::str_at(pod, &["spec", "subdomain"])
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok((hostname, subdomain))
}

/// The node's files: `/etc/hostname` (or the kernel's), `/etc/hosts`, and the resolver
/// configuration (`--resolv-conf`), K3s's way: when it names only loopback servers (a local
/// stub such as systemd-resolved's, unreachable from a pod's network), systemd-resolved's
/// upstream list in `/run/systemd/resolve/resolv.conf` instead, if it exists.
pub fn host_files(resolv_conf_path: &Path) -> io::Result<HostFiles> {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .map_err(io::Error::from)?;
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut resolv_conf = fs::read_to_string(resolv_conf_path).unwrap_or_default();
    let servers = parse_resolv_conf(&resolv_conf).nameservers;
    let loopback_only = !servers.is_empty()
        && servers
            .iter()
            .all(|s| s.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    if loopback_only && let Ok(upstream) = fs::read_to_string("/run/systemd/resolve/resolv.conf") {
        resolv_conf = upstream;
    }
    Ok(HostFiles {
        hostname,
        hosts,
        resolv_conf,
    })
}

/// The pod's `/etc/resolv.conf` by its `dnsPolicy` and `dnsConfig`, as kubelet writes it:
/// `ClusterFirst` (the default; `ClusterFirstWithHostNet` for `hostNetwork` pods) gets the
/// cluster DNS server, the search list `<ns>.svc.<domain> svc.<domain> <domain>` followed by
/// the node's, and `options ndots:5`; `ClusterFirst` on the host network, and `Default`, get the
/// node's resolver; `None` only `dnsConfig`. Without a cluster DNS server `ClusterFirst` falls
/// back to the node's resolver, as kubelet does without `--cluster-dns`. `dnsConfig` is then
/// merged in: nameservers and searches appended without duplicates, options replacing the
/// node's of the same name.
pub fn resolv_conf(pod: &Value, host_resolv_conf: &str, cluster: &ClusterDns) -> String {
    let spec = &pod["spec"];
    let host_network = spec["hostNetwork"].as_bool().unwrap_or(false);
    let cluster_first = match spec["dnsPolicy"].as_str() {
        Some("ClusterFirstWithHostNet") => true,
        Some("Default") | Some("None") => false,
        _ => !host_network,
    };
    let mut conf = match (spec["dnsPolicy"].as_str(), cluster.server) {
        (Some("None"), _) => ResolvConf::default(),
        (_, Some(server)) if cluster_first => {
            let host = parse_resolv_conf(host_resolv_conf);
            let namespace = env::str_at(pod, &["metadata", "namespace"]).unwrap_or("default");
            let domain = &cluster.domain;
            let mut searches = vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.clone(),
            ];
            searches.extend(host.searches);
            ResolvConf {
                nameservers: vec![server.to_string()],
                searches,
                options: vec!["ndots:5".to_string()],
            }
        }
        _ => parse_resolv_conf(host_resolv_conf),
    };
    let dns = &spec["dnsConfig"];
    let strings = |key| {
        env::array(dns, key)
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    conf.nameservers.extend(strings("nameservers"));
    conf.searches.extend(strings("searches"));
    for option in env::array(dns, "options") {
        let Some(name) = option["name"].as_str() else {
            continue;
        };
        let text = match option["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        };
        // A pod's option replaces the node's of the same name.
        conf.options.retain(|o| o.split(':').next() != Some(name));
        conf.options.push(text);
    }
    dedup(&mut conf.nameservers);
    dedup(&mut conf.searches);
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    let mut out = String::new();
    if !conf.searches.is_empty() {
        out.push_str(&format!("search {}\n", conf.searches.join(" ")));
    }
    for ns in &conf.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !conf.options.is_empty() {
        out.push_str(&format!("options {}\n", conf.options.join(" ")));
    }
    out
}

// === impl Sandbox ===

impl Sandbox {
    /// Whether the pod uses the node's network (and UTS) namespace.
    pub fn host_network(&self) -> bool {
        self.network == Namespace::Host
    }
}

/// The namespace kinds a sandbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Net,
    Ipc,
    Uts,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// Makes new namespaces of `kinds` in a thread of their own and pins each with a bind mount
/// at `ns_dir/<kind>`. On failure, nothing made stays mounted.
fn make_namespaces(ns_dir: &Path, kinds: &[Kind], hostname: &str) -> Result<()> {
    let ns_dir = ns_dir.to_path_buf();
    let kinds = kinds.to_vec();
    let hostname = hostname.to_string();
    let worker = std::thread::Builder::new()
        .name("pod-namespaces".into())
        .spawn(move || -> Result<()> {
            let fail = |op| {
                move |e: Errno| SandboxError::Namespace {
                    op,
                    source: e.into(),
                }
            };
            let flags = kinds.iter().fold(CloneFlags::empty(), |f, k| f | k.flag());
            // Only this thread moves: namespaces are per thread until exec.
            nix::sched::unshare(flags).map_err(fail("unshare"))?;
            if kinds.contains(&Kind::Uts) {
                nix::unistd::sethostname(&hostname).map_err(fail("sethostname"))?;
            }
            if kinds.contains(&Kind::Net) {
                loopback_up().map_err(|source| SandboxError::Namespace {
                    op: "bring lo up",
                    source,
                })?;
            }
            let mut made = Vec::new();
            for kind in &kinds {
                let file = ns_dir.join(kind.file());
                let pinned = fs::File::create(&file)
                    .map_err(|source| SandboxError::Io {
                        op: "create",
                        path: file.clone(),
                        source,
                    })
                    .and_then(|_| {
                        let source = format!("/proc/thread-self/ns/{}", kind.file());
                        nix::mount::mount(
                            Some(source.as_str()),
                            &file,
                            None::<&str>,
                            MsFlags::MS_BIND,
                            None::<&str>,
                        )
                        .map_err(fail("bind-mount the namespace"))
                    });
                if let Err(e) = pinned {
                    for f in made.iter().chain([&file]) {
                        let _ = nix::mount::umount2(f, MntFlags::MNT_DETACH);
                        let _ = fs::remove_file(f);
                    }
                    return Err(e);
                }
                made.push(file);
            }
            Ok(())
        })
        .map_err(|source| SandboxError::Namespace {
            op: "spawn a thread",
            source,
        })?;
    worker.join().unwrap_or_else(|_| {
        Err(SandboxError::Namespace {
            op: "the namespace thread",
            source: io::Error::other("panicked"),
        })
    })
}

/// Brings up `lo` (index 1 in every new network namespace) through rtnetlink, in the calling
/// thread's network namespace.
fn loopback_up() -> io::Result<()> {
    use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_packet_route::link::{LinkFlags, LinkMessage};
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    const LOOPBACK_INDEX: u32 = 1;
    let mut link = LinkMessage::default();
    link.header.index = LOOPBACK_INDEX;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::SetLink(link));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let ack = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match ack.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
        },
        _ => Ok(()),
    }
}

/// Whether `path` is a bind mount of a namespace (nsfs), i.e. a live pinned namespace.
fn is_namespace_file(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

fn unmount(path: &Path) -> Result<()> {
    // Repeat: a path can hold stacked mounts (e.g. two racing creates).
    loop {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(SandboxError::Io {
                    op: "unmount",
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
}

fn remove(path: &Path, dir: bool) -> Result<()> {
    let r = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(m) if dir && m.is_dir() => fs::remove_dir(path),
        Ok(_) => fs::remove_file(path),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SandboxError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replaces `path` with `data` by writing a sibling and renaming it over.
fn write_replace(path: &Path, data: &[u8]) -> Result<()> {
    let io = |op, source| SandboxError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(|e| io("write", e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(|e| io("chmod", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename", e))
}

/// Kubelet's managed `/etc/hosts` for a pod with its own network.
fn hosts_file(name: &str, domain: Option<&str>, pod_ips: &[IpAddr], pod: &Value) -> String {
    let mut s = String::from(HOSTS_HEADER);
    s.push_str("127.0.0.1\tlocalhost\n");
    s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    s.push_str("fe00::0\tip6-localnet\n");
    s.push_str("fe00::0\tip6-mcastprefix\n");
    s.push_str("fe00::1\tip6-allnodes\n");
    s.push_str("fe00::2\tip6-allrouters\n");
    for ip in pod_ips {
        match domain {
            Some(d) => s.push_str(&format!("{ip}\t{name}.{d}\t{name}\n")),
            None => s.push_str(&format!("{ip}\t{name}\n")),
        }
    }
    s.push_str(&host_aliases(pod));
    s
}

/// Kubelet's `hostAliases` section, empty without aliases.
fn host_aliases(pod: &Value) -> String {
    let aliases: Vec<&Value> = env::array(&pod["spec"], "hostAliases").collect();
    if aliases.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n# Entries added by HostAliases.\n");
    for a in aliases {
        let names: Vec<&str> = env::array(a, "hostnames")
            .filter_map(Value::as_str)
            .collect();
        s.push_str(&format!(
            "{}\t{}\n",
            a["ip"].as_str().unwrap_or(""),
            names.join("\t")
        ));
    }
    s
}

/// `<subdomain>.<namespace>.svc.<cluster domain>` for a pod with a subdomain.
fn domain_of(pod: &Value, cluster_domain: &str, subdomain: Option<String>) -> Option<String> {
    let namespace = env::str_at(pod, &["metadata", "namespace"]).unwrap_or("default");
    subdomain.map(|s| format!("{s}.{namespace}.svc.{cluster_domain}"))
}

#[derive(Debug, Default, PartialEq, Eq)]
struct ResolvConf {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

/// The parts of a resolv.conf kubelet keeps: nameservers, the last `search` line, options.
fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => conf.nameservers.extend(fields.next().map(str::to_string)),
            Some("search") => conf.searches = fields.map(str::to_string).collect(),
            Some("options") => conf.options.extend(fields.map(str::to_string)),
            _ => {}
        }
    }
    conf
}

fn dedup(list: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|s| seen.insert(s.clone()));
}

/// RFC 1123 label: lower-case alphanumerics and `-`, starting and ending alphanumeric.
fn is_dns_label(s: &str) -> bool {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= MAX_HOSTNAME
        && s.bytes().all(|c| ok(c) || c == b'-')
        && s.bytes().next().is_some_and(ok)
        && s.bytes().last().is_some_and(ok)
}

// Named by path so the file resolves the same when tests/bundle.rs compiles this module.
#[cfg(test)]
#[path = "sandbox/tests.rs"]
mod tests;
