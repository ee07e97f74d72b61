//! Command-line flags, with K3s's names and `KEELSON_*` environment variables.
//!
//! Only the shape of the command line lives here; [`crate::config`] layers in the config
//! file and turns raw strings into typed, validated settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "keelson",
    version = crate::VERSION_STRING,
    about = "A small, Raft-free, Kubernetes-compatible control plane for ARM boards",
    propagate_version = true,
    // A flag given twice takes its last value (a unit file's flags, then an operator's).
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server: API, datastore client and controllers (and this board as a node)
    Server(Box<ServerArgs>),
    /// Run an agent: join a cluster through a server's address and register this board as a node
    Agent(Box<AgentArgs>),
    /// Benchmark helper: run many simulated agents' real join and tunnel code in one process
    #[command(hide = true)]
    Loadgen(LoadgenArgs),
    /// Benchmark helper: run only the layer-4 load balancer in front of given backends
    #[command(hide = true)]
    Lb(LbArgs),
    /// Manage this node's container images: list, pull, import, remove (like `k3s crictl images`)
    Images(ImagesArgs),
    /// Back up and restore the datastore: snapshots of SQLite, finishing a restore of MySQL/PostgreSQL (like `k3s etcd-snapshot`)
    Datastore(DatastoreArgs),
    /// Rotate the keys Secrets are encrypted with, or show their state (like `k3s secrets-encrypt`)
    SecretsEncrypt(SecretsEncryptArgs),
    /// Test hook: drives the node's monitor, runc and log code from whole-binary tests
    #[command(hide = true, subcommand)]
    NodeTest(crate::node::hook::NodeTest),
    /// Print the systemd unit for a server or an agent (what install.sh and the packages install)
    #[command(hide = true)]
    Unit(UnitArgs),
    /// Configure a flashed board from keelson.yaml on its boot partition (keelson-firstboot.service runs it)
    Firstboot(FirstbootArgs),
    /// Run the system kubectl against this node's admin kubeconfig
    #[command(disable_help_flag = true)]
    Kubectl {
        /// Arguments passed to kubectl unchanged
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Config file whose keys are flag names; flags and environment variables override it
    #[arg(
        short = 'c',
        long,
        env = "KEELSON_CONFIG_FILE",
        default_value = "/etc/keelson/config.yaml"
    )]
    pub config: PathBuf,

    /// Directory for state [default: /var/lib/keelson as root, ~/.local/share/keelson otherwise]
    #[arg(short = 'd', long, env = "KEELSON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Shared secret for servers to join (K10 secure form or a plain secret) [default: generated, written to <data-dir>/server/token]
    #[arg(short = 't', long, env = "KEELSON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the token
    #[arg(long, env = "KEELSON_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Secret agents may join with (instead of the server token); servers cannot use it. Give every server the same one
    #[arg(long, env = "KEELSON_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,

    /// File holding the agent token
    #[arg(long, env = "KEELSON_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,

    /// Accept a token secret shorter than 8 characters (anyone who guesses it joins the cluster)
    #[arg(long, env = "KEELSON_ALLOW_WEAK_TOKEN")]
    pub allow_weak_token: bool,

    /// Datastore: sqlite://PATH, mysql://USER:PASS@tcp(HOST:3306)/DB, postgres://USER:PASS@HOST:5432/DB [default: sqlite://<data-dir>/server/db/state.db]
    #[arg(long, env = "KEELSON_DATASTORE_ENDPOINT", hide_env_values = true)]
    pub datastore_endpoint: Option<String>,

    /// CA bundle to verify the datastore's TLS certificate
    #[arg(long, env = "KEELSON_DATASTORE_CAFILE")]
    pub datastore_cafile: Option<PathBuf>,

    /// Client certificate for TLS to the datastore
    #[arg(long, env = "KEELSON_DATASTORE_CERTFILE")]
    pub datastore_certfile: Option<PathBuf>,

    /// Client key for TLS to the datastore
    #[arg(long, env = "KEELSON_DATASTORE_KEYFILE")]
    pub datastore_keyfile: Option<PathBuf>,

    /// TLS to MySQL/PostgreSQL: disable, prefer (TLS if offered: downgradable), require (TLS, database not verified), verify-full [default: verify-full with --datastore-cafile, require with only a client certificate, else prefer]
    #[arg(long, env = "KEELSON_DATASTORE_TLS")]
    pub datastore_tls: Option<String>,

    /// Most connections this server opens to the datastore
    #[arg(
        long,
        env = "KEELSON_DATASTORE_MAX_OPEN_CONNECTIONS",
        default_value_t = 4
    )]
    pub datastore_max_open_connections: u32,

    /// Most idle connections this server keeps open to the datastore (the rest are closed)
    #[arg(
        long,
        env = "KEELSON_DATASTORE_MAX_IDLE_CONNECTIONS",
        default_value_t = 2
    )]
    pub datastore_max_idle_connections: u32,

    /// Longest a datastore connection is reused (e.g. 5m, 30s; 0 = forever)
    #[arg(long, default_value = "5m")]
    pub datastore_connection_max_lifetime: String,

    /// Longest a request waits for a free datastore connection before it fails
    #[arg(long, default_value = "5s")]
    pub datastore_acquire_timeout: String,

    /// Address the API listens on
    #[arg(long, env = "KEELSON_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: String,

    /// Port of the API (and of agent endpoints)
    #[arg(long, env = "KEELSON_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,

    /// IP address agents use to reach this server [default: --bind-address if set, else the node's first IP]
    #[arg(long, env = "KEELSON_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// Port agents use to reach this server [default: --https-listen-port]
    #[arg(long)]
    pub advertise_port: Option<u16>,

    /// Virtual IP the servers elect one holder for, ADDR[/PREFIX]: the cluster's fixed address, fronted by a layer-4 load balancer
    #[arg(long, env = "KEELSON_VIP")]
    pub vip: Option<String>,

    /// Interface to add the virtual IP to [default: the interface holding the node's IP]
    #[arg(long)]
    pub vip_interface: Option<String>,

    /// Port of the load balancer on the virtual IP
    #[arg(long, default_value_t = 6443)]
    pub lb_port: u16,

    /// Most client connections the load balancer holds at once
    #[arg(long, default_value_t = 4096)]
    pub lb_max_connections: usize,

    /// How long the virtual IP's lease lasts without renewal (a lost holder is replaced about this much later)
    #[arg(long, default_value = "1s")]
    pub vip_lease_duration: String,

    /// A holder that could not renew for this long gives the address up (must be below the lease duration)
    #[arg(long, default_value = "700ms")]
    pub vip_renew_deadline: String,

    /// How often the holder renews and the others try to take over
    #[arg(long, default_value = "200ms")]
    pub vip_retry_period: String,

    /// Extra host names or IPs in the serving certificate (repeatable, or comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub tls_san: Vec<String>,

    /// Node name [default: the hostname]
    #[arg(long, env = "KEELSON_NODE_NAME")]
    pub node_name: Option<String>,

    /// Node label KEY=VALUE (repeatable)
    #[arg(long)]
    pub node_label: Vec<String>,

    /// Node taint KEY[=VALUE]:EFFECT, applied when the node registers (repeatable)
    #[arg(long)]
    pub node_taint: Vec<String>,

    /// IP address to advertise for the node (repeatable) [default: the addresses of the default route's interface]
    #[arg(long, value_delimiter = ',')]
    pub node_ip: Vec<String>,

    /// Cluster domain (must agree across servers)
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Pod network CIDR, or an IPv4,IPv6 pair for dual-stack; each node gets a block of it (must agree across servers)
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,

    /// Prefix length of each node's block of a single-stack --cluster-cidr (kube-controller-manager's flag) [default: 24 for IPv4, 64 for IPv6]
    #[arg(long)]
    pub node_cidr_mask_size: Option<u8>,

    /// Prefix length of each node's IPv4 block (kube-controller-manager's flag) [default: 24]
    #[arg(long)]
    pub node_cidr_mask_size_ipv4: Option<u8>,

    /// Prefix length of each node's IPv6 block (kube-controller-manager's flag) [default: 64]
    #[arg(long)]
    pub node_cidr_mask_size_ipv6: Option<u8>,

    /// Service network CIDRs: one IPv4, one IPv6, or one of each, comma-separated; the first is the primary family (must agree across servers)
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,

    /// Cluster DNS service IP [default: the 10th address of the first --service-cidr range, 10.43.0.10] (must agree across servers)
    #[arg(long)]
    pub cluster_dns: Option<String>,

    /// How pod traffic reaches other nodes: vxlan (UDP 8472, for routed networks), host-gw (routes, for nodes on one LAN) or none (another CNI makes the pod network) (must agree across servers)
    #[arg(long, env = "KEELSON_FLANNEL_BACKEND", default_value = "vxlan")]
    pub flannel_backend: String,

    /// Addresses for LoadBalancer Services: ranges FIRST-LAST or CIDRs (repeatable, comma-separated) [default: none — like K3s's ServiceLB, a LoadBalancer's addresses are its nodes'] (must agree across servers)
    #[arg(long, value_delimiter = ',')]
    pub service_lb_pool: Vec<String>,

    /// How long a LoadBalancer address's lease lasts without renewal: a lost holder is replaced about this much later (must agree across servers)
    #[arg(long, default_value = "1s")]
    pub service_lb_lease_duration: String,

    /// A LoadBalancer address's holder that could not renew for this long lets it go (below the lease duration; must agree across servers)
    #[arg(long, default_value = "700ms")]
    pub service_lb_renew_deadline: String,

    /// How often a LoadBalancer address's holder renews and its standby tries: one datastore statement each (must agree across servers)
    #[arg(long, default_value = "200ms")]
    pub service_lb_retry_period: String,

    /// Do not deploy a packaged component: coredns (keelson's cluster DNS on every node), servicelb, traefik, local-storage, metrics-server, runtimes (repeatable; must agree across servers)
    #[arg(long, env = "KEELSON_DISABLE", value_delimiter = ',')]
    pub disable: Vec<String>,

    /// Encrypt secrets at rest (must agree across servers)
    #[arg(long, env = "KEELSON_SECRETS_ENCRYPTION")]
    pub secrets_encryption: bool,

    /// Where to write the admin kubeconfig [default: /etc/keelson/keelson.yaml as root, <data-dir>/keelson.yaml otherwise]
    #[arg(short = 'o', long, env = "KEELSON_KUBECONFIG_OUTPUT")]
    pub write_kubeconfig: Option<PathBuf>,

    /// File mode of the kubeconfig, in octal
    #[arg(long, env = "KEELSON_KUBECONFIG_MODE", default_value = "0600")]
    pub write_kubeconfig_mode: String,

    /// How long a node may send no heartbeat before it is marked NotReady and tainted unreachable
    #[arg(long, default_value = "15s")]
    pub node_monitor_grace_period: String,

    /// How long Events are kept after they were last seen (kube-apiserver's flag)
    #[arg(long, default_value = "1h")]
    pub event_ttl: String,

    /// Keep history for this long before compacting it (e.g. 5m); watches older than that get 410 Gone
    #[arg(long, default_value = "5m")]
    pub compact_interval: String,

    /// When to snapshot the embedded SQLite datastore, as a cron schedule in UTC (K3s's etcd-snapshot-schedule-cron) [default: "0 */12 * * *" on SQLite; MySQL/PostgreSQL are backed up with their own tools]
    #[arg(long, env = "KEELSON_DATASTORE_SNAPSHOT_SCHEDULE_CRON")]
    pub datastore_snapshot_schedule_cron: Option<String>,

    /// Scheduled snapshots to keep; older ones are deleted (K3s's etcd-snapshot-retention)
    #[arg(long, default_value_t = 5)]
    pub datastore_snapshot_retention: usize,

    /// Directory for datastore snapshots [default: <data-dir>/server/db/snapshots]
    #[arg(long, env = "KEELSON_DATASTORE_SNAPSHOT_DIR")]
    pub datastore_snapshot_dir: Option<PathBuf>,

    /// Take no scheduled snapshots of the SQLite datastore (K3s's etcd-disable-snapshots)
    #[arg(long)]
    pub datastore_disable_snapshots: bool,

    /// Most non-mutating requests served at once; beyond it 429 with Retry-After (watches and system:masters not counted; 0 = no bound)
    #[arg(long, default_value_t = crate::apiserver::inflight::DEFAULT_READ_ONLY)]
    pub max_requests_inflight: usize,

    /// Most mutating requests served at once; beyond it 429 with Retry-After (0 = no bound)
    #[arg(long, default_value_t = crate::apiserver::inflight::DEFAULT_MUTATING)]
    pub max_mutating_requests_inflight: usize,

    /// Most watches one user may hold open; beyond it 429 (system:masters included: each costs memory; 0 = no bound)
    #[arg(long, default_value_t = crate::apiserver::inflight::DEFAULT_WATCHES_PER_USER)]
    pub max_watches_per_user: usize,

    /// How long the certificates this server issues are valid (365 days; tests shorten it to see renewals)
    #[arg(long, default_value = "8760h", hide = true)]
    pub leaf_certificate_validity: String,

    /// How often a watch that allows bookmarks gets one, changes or not (tests shorten it)
    #[arg(long, default_value = "1m", hide = true)]
    pub watch_bookmark_interval: String,

    /// Shortest lifetime a TokenRequest may ask for (Kubernetes' 10 minutes; tests shorten it
    /// to see tokens expire)
    #[arg(long, default_value = "10m", hide = true)]
    pub service_account_min_token_expiration: String,

    #[command(flatten)]
    pub node_runtime: RuntimeArgs,

    /// Turn on debug logs
    #[arg(long, env = "KEELSON_DEBUG")]
    pub debug: bool,

    /// How log lines are written to stderr: text, or json (one object a line)
    #[arg(long, env = "KEELSON_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// Config file whose keys are flag names; flags and environment variables override it
    #[arg(
        short = 'c',
        long,
        env = "KEELSON_CONFIG_FILE",
        default_value = "/etc/keelson/config.yaml"
    )]
    pub config: PathBuf,

    /// Server to join, https://HOST[:PORT] (the cluster's fixed address)
    #[arg(short = 's', long, env = "KEELSON_URL")]
    pub server: Option<String>,

    /// Token to join with (the server or the agent token, best in its K10 form)
    #[arg(short = 't', long, env = "KEELSON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the token
    #[arg(long, env = "KEELSON_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Allow the first join with a token that has no CA hash: whichever server answers is trusted, and its CA pinned from then on
    #[arg(long, env = "KEELSON_UNSAFE_SKIP_CA_VERIFICATION")]
    pub unsafe_skip_ca_verification: bool,

    /// Directory for state [default: /var/lib/keelson as root, ~/.local/share/keelson otherwise]
    #[arg(short = 'd', long, env = "KEELSON_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Node name [default: the hostname]
    #[arg(long, env = "KEELSON_NODE_NAME")]
    pub node_name: Option<String>,

    /// Append a random suffix, kept in the data dir, to the node name
    #[arg(long)]
    pub with_node_id: bool,

    /// Node label KEY=VALUE (repeatable)
    #[arg(long)]
    pub node_label: Vec<String>,

    /// Node taint KEY[=VALUE]:EFFECT, applied when the node registers (repeatable)
    #[arg(long)]
    pub node_taint: Vec<String>,

    /// IP address to advertise for the node (repeatable) [default: the addresses of the default route's interface]
    #[arg(long, value_delimiter = ',')]
    pub node_ip: Vec<String>,

    #[command(flatten)]
    pub node_runtime: RuntimeArgs,

    /// Turn on debug logs
    #[arg(long, env = "KEELSON_DEBUG")]
    pub debug: bool,

    /// How log lines are written to stderr: text, or json (one object a line)
    #[arg(long, env = "KEELSON_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How a node runs containers; the same flags on servers and agents (servers are nodes too).
#[derive(Debug, Args, Clone)]
pub struct RuntimeArgs {
    /// OCI runtime that runs containers: a path or a name on PATH, or "none" for a node that runs no containers
    #[arg(long, env = "KEELSON_RUNTIME", default_value = "runc")]
    pub runtime: String,

    /// Private registry configuration file (K3s's registries.yaml format)
    #[arg(
        long,
        env = "KEELSON_PRIVATE_REGISTRY",
        default_value = "/etc/keelson/registries.yaml"
    )]
    pub private_registry: PathBuf,

    /// Largest container log file before it is rotated, e.g. 10Mi (kubelet's flag)
    #[arg(long, default_value = "10Mi")]
    pub container_log_max_size: String,

    /// Most log files kept per container, the current one included (kubelet's flag)
    #[arg(long, default_value_t = 5)]
    pub container_log_max_files: usize,

    /// Resources set aside for keelson and the node's agents, e.g. cpu=100m,memory=256Mi (kubelet's flag)
    #[arg(long, default_value = "")]
    pub kube_reserved: String,

    /// Resources set aside for the operating system, e.g. memory=128Mi (kubelet's flag)
    #[arg(long, default_value = "")]
    pub system_reserved: String,

    /// Disk usage (percent) past which unused images are removed (kubelet's flag)
    #[arg(long, default_value_t = 85)]
    pub image_gc_high_threshold: u8,

    /// Disk usage (percent) image garbage collection brings the disk down to (kubelet's flag)
    #[arg(long, default_value_t = 80)]
    pub image_gc_low_threshold: u8,

    /// Interface whose address other nodes reach this node's pods through (K3s's flag) [default: the interface holding the node's address, else the default route's]
    #[arg(long, env = "KEELSON_FLANNEL_IFACE")]
    pub flannel_iface: Option<String>,
    /// The node's resolver file: upstreams for cluster DNS and what pods with dnsPolicy Default get (kubelet's and K3s's flag)
    #[arg(long, env = "KEELSON_RESOLV_CONF", default_value = crate::node::DEFAULT_RESOLV_CONF)]
    pub resolv_conf: PathBuf,

    /// Hard eviction thresholds, e.g. memory.available<100Mi,nodefs.available<10% (kubelet's flag and default)
    #[arg(long, default_value = crate::node::resources::DEFAULT_EVICTION_HARD)]
    pub eviction_hard: String,

    /// How long a pressure condition stays True after its threshold was last crossed (kubelet's flag and default)
    #[arg(long, default_value = "5m")]
    pub eviction_pressure_transition_period: String,

    /// Do not program Service rules (the nftables table keelson-services) on this node, e.g. when another proxy does (K3s's flag)
    #[arg(long, env = "KEELSON_DISABLE_KUBE_PROXY")]
    pub disable_kube_proxy: bool,
    /// Directory of CNI network configurations: keelson writes 10-keelson.conflist there unless --flannel-backend=none; the first file in lexical order is used
    #[arg(long, env = "KEELSON_CNI_CONF_DIR", default_value = crate::node::cni::DEFAULT_CONF_DIR)]
    pub cni_conf_dir: PathBuf,

    /// Directories searched for CNI plugins, in order (comma-separated)
    #[arg(long, env = "KEELSON_CNI_BIN_DIR", value_delimiter = ',', default_value = crate::node::cni::DEFAULT_BIN_DIRS)]
    pub cni_bin_dir: Vec<PathBuf>,

    /// Directory of this node's local-path volumes, one directory per claim (K3s's flag) [default: <data-dir>/storage]
    #[arg(long, env = "KEELSON_DEFAULT_LOCAL_STORAGE_PATH")]
    pub default_local_storage_path: Option<PathBuf>,

    /// Longest one CNI plugin call may take before the plugin is killed and the pod's network set-up fails
    #[arg(long, default_value = "30s")]
    pub cni_plugin_timeout: String,
}

#[derive(Debug, Args, Clone)]
pub struct ImagesArgs {
    /// Directory for state; images live under <data-dir>/agent/images [default: /var/lib/keelson as root, ~/.local/share/keelson otherwise]
    #[arg(short = 'd', long, env = "KEELSON_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Registry mirrors and credentials, in K3s's registries.yaml format
    #[arg(
        long,
        env = "KEELSON_PRIVATE_REGISTRY",
        default_value = crate::node::images::registries::DEFAULT_PATH,
        global = true
    )]
    pub private_registry: PathBuf,

    /// Pull only from the mirrors in registries.yaml, never from a registry's own endpoint
    #[arg(long, global = true)]
    pub disable_default_registry_endpoint: bool,

    /// Turn on debug logs
    #[arg(long, env = "KEELSON_DEBUG", global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Debug, Subcommand, Clone)]
pub enum ImagesCommand {
    /// List the images in the store
    #[command(alias = "ls")]
    List {
        /// Print only image IDs
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Pull an image for this node's platform (progress on stderr)
    Pull {
        /// Image reference, e.g. busybox:1.36 or registry.local:5000/app@sha256:...
        image: String,
        /// USER:PASSWORD for the image's registry
        #[arg(long, hide_env_values = true)]
        creds: Option<String>,
        /// Pull for another platform, os/arch[/variant] (e.g. linux/arm/v7) [default: this node's]
        #[arg(long)]
        platform: Option<String>,
    },
    /// Import image tarballs (docker-archive or OCI layout; .tar, .tar.gz, .tar.zst) [default: every tarball in <data-dir>/agent/images]
    Import {
        /// Tarballs, or directories whose tarballs to import
        paths: Vec<PathBuf>,
    },
    /// Remove images by reference or image ID, and the layers nothing else uses
    #[command(alias = "rmi")]
    Remove {
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Debug, Args, Clone)]
pub struct SecretsEncryptArgs {
    /// Directory for state; the token is read from <data-dir>/server/token [default: /var/lib/keelson as root, ~/.local/share/keelson otherwise]
    #[arg(short = 'd', long, env = "KEELSON_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// The server to ask, https://HOST[:PORT]
    #[arg(
        short = 's',
        long,
        env = "KEELSON_URL",
        default_value = "https://127.0.0.1:6443",
        global = true
    )]
    pub server: String,

    /// The server token (K10 form) [default: read from <data-dir>/server/token]
    #[arg(
        short = 't',
        long,
        env = "KEELSON_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,

    /// Print the server's answer as JSON
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text", global = true)]
    pub output: String,

    #[command(subcommand)]
    pub command: SecretsEncryptCommand,
}

#[derive(Debug, Subcommand, Clone)]
pub enum SecretsEncryptCommand {
    /// Show whether Secrets are encrypted, the active key, and how many Secrets each key holds
    Status,
    /// Add a new key, make it active on every server, and re-encrypt every Secret under it
    RotateKeys,
}

#[derive(Debug, Args, Clone)]
pub struct UnitArgs {
    /// Which unit: server (keelson.service) or agent (keelson-agent.service)
    #[arg(value_enum)]
    pub role: crate::systemd::Role,

    /// Directory the unit runs the keelson binary from (absolute: systemd needs it so)
    #[arg(long, default_value = crate::systemd::DEFAULT_BIN_DIR, value_parser = crate::systemd::parse_bin_dir)]
    pub bin_dir: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct FirstbootArgs {
    /// The mounted boot (FAT) partition holding keelson.yaml
    #[arg(long, default_value = "/boot/firmware")]
    pub boot: PathBuf,

    /// The root of the system to configure (another directory for tests and image builds)
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

#[derive(Debug, Args, Clone)]
pub struct LoadgenArgs {
    /// Server to join, https://HOST[:PORT]
    #[arg(short = 's', long)]
    pub server: String,

    /// Token to join with
    #[arg(short = 't', long, env = "KEELSON_TOKEN", hide_env_values = true)]
    pub token: String,

    /// How many agents to simulate
    #[arg(long, default_value_t = 100)]
    pub agents: usize,

    /// Parent of the simulated agents' data dirs
    #[arg(short = 'd', long)]
    pub data_dir: PathBuf,

    /// Node names are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "sim")]
    pub name_prefix: String,

    /// SIMULATION: how long after a pod is bound to a simulated node it is reported Running and Ready, e.g. 1s, 500ms
    #[arg(long, default_value = "1s", value_parser = |s: &str| crate::config::parse_duration("--pod-start-delay", s))]
    pub pod_start_delay: std::time::Duration,

    /// SIMULATION: how long a Job pod (restartPolicy Never or OnFailure) runs before it exits
    #[arg(long, default_value = "2s", value_parser = |s: &str| crate::config::parse_duration("--pod-run-time", s))]
    pub pod_run_time: std::time::Duration,

    /// Turn on debug logs
    #[arg(long)]
    pub debug: bool,
}

#[derive(Debug, Args, Clone)]
pub struct LbArgs {
    /// Address to accept on, e.g. 127.0.0.1:7443
    #[arg(long)]
    pub listen: String,

    /// Backend host:port (repeatable)
    #[arg(long, required = true)]
    pub backend: Vec<String>,

    /// Health check: "tcp" (connect) or "readyz" (TLS GET /readyz, needs --ca-file)
    #[arg(long, default_value = "tcp")]
    pub check: String,

    /// CA bundle for --check readyz
    #[arg(long)]
    pub ca_file: Option<PathBuf>,

    /// Most concurrent client connections
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,

    /// Close a connection idle this long (e.g. 1h, 30s)
    #[arg(long, default_value = "1h")]
    pub idle_timeout: String,

    /// Turn on debug logs
    #[arg(long)]
    pub debug: bool,
}

#[derive(Debug, Args, Clone)]
pub struct DatastoreArgs {
    /// Config file whose data-dir, datastore-endpoint, token, token-file, node-name and datastore-snapshot-dir are used unless given here
    #[arg(
        short = 'c',
        long,
        env = "KEELSON_CONFIG_FILE",
        default_value = "/etc/keelson/config.yaml",
        global = true
    )]
    pub config: PathBuf,

    /// The server's data dir [default: /var/lib/keelson as root, ~/.local/share/keelson otherwise]
    #[arg(short = 'd', long, env = "KEELSON_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// The server's datastore [default: sqlite://<data-dir>/server/db/state.db]
    #[arg(long, env = "KEELSON_DATASTORE_ENDPOINT", global = true)]
    pub datastore_endpoint: Option<String>,

    /// Directory for snapshots [default: <data-dir>/server/db/snapshots]
    #[arg(long, env = "KEELSON_DATASTORE_SNAPSHOT_DIR", global = true)]
    pub datastore_snapshot_dir: Option<PathBuf>,

    /// The cluster's server token: a restore checks that it opens the snapshot [default: read from <data-dir>/server/token]
    #[arg(
        short = 't',
        long,
        env = "KEELSON_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,

    /// File holding the token
    #[arg(long, env = "KEELSON_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// Node name in snapshot names [default: the hostname]
    #[arg(long, env = "KEELSON_NODE_NAME", global = true)]
    pub node_name: Option<String>,

    #[command(subcommand)]
    pub command: DatastoreCommand,
}

#[derive(Debug, Subcommand, Clone)]
pub enum DatastoreCommand {
    /// Snapshots of the embedded SQLite datastore
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// After restoring MySQL/MariaDB or PostgreSQL with the database's own tools, and before
    /// starting any server: move revisions past the old ones so every client relists
    MarkRestored {
        /// Revisions continue this far past the restored data's (past any a client can hold)
        #[arg(long, default_value_t = crate::datastore::restore::DEFAULT_BUMP)]
        bump_revision: i64,
    },
}

#[derive(Debug, Subcommand, Clone)]
pub enum SnapshotCommand {
    /// Take a consistent snapshot now (safe while the server runs)
    Save {
        /// Name prefix; the file is <name>-<node>-<unix time>
        #[arg(long, default_value = crate::datastore::snapshot::ON_DEMAND_PREFIX)]
        name: String,
    },
    /// List snapshots
    #[command(alias = "list")]
    Ls,
    /// Delete snapshots by name
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Delete all but the newest N snapshots of one name prefix and this node
    Prune {
        /// Snapshots to keep
        #[arg(long, default_value_t = 5)]
        snapshot_retention: usize,
        /// Name prefix [default: the scheduled snapshots']
        #[arg(long, default_value = crate::datastore::snapshot::SCHEDULED_PREFIX)]
        name: String,
    },
    /// Replace the datastore with a snapshot (the server must be stopped); the old database is kept beside it
    Restore {
        /// Snapshot name (see ls) or path to a snapshot file
        snapshot: String,
        /// Revisions continue this far past the snapshot's (past any a client can hold)
        #[arg(long, default_value_t = crate::datastore::restore::DEFAULT_BUMP)]
        bump_revision: i64,
    },
}

/// `--log-format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, as `tracing` formats it.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields (with the message), span.
    Json,
}
