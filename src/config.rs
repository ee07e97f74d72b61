//! Settings for a run, from flags, `KEELSON_*` environment variables and the config file.
//!
//! Precedence is flag > environment > file > default. The file's keys are flag names
//! (`node-label: [...]`, `token: ...`). Everything is parsed here, once: the rest of the
//! program only sees typed values. Every problem is reported, not just the first.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::agent::node;
use crate::api::labels::{self, Taint};
use crate::api::network::{Backend, ClusterNetwork};
use crate::bootstrap::{ClusterSettings, Token};
use crate::cli::{Cli, ServerArgs};
use crate::controllers::node_ipam::{MaskFlags, PodNetwork};
use crate::datastore::endpoint::{TlsFiles, TlsMode};
use crate::datastore::{Endpoint, PoolConfig};

pub mod file;

/// A command line that could not be turned into settings; `main` prints it and exits 2.
#[derive(Debug)]
pub enum Error {
    /// clap's own error (also `--help` and `--version`, which are not failures).
    Clap(clap::Error),
    Invalid(Vec<String>),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Clap(e) => write!(f, "{e}"),
            Error::Invalid(problems) => {
                for p in problems {
                    writeln!(f, "error: {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parses the command line and, for `server`, layers the config file under it.
pub fn parse_command_line(argv: Vec<OsString>) -> Result<Cli, Error> {
    let cmd = Cli::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(&argv)
        .map_err(Error::Clap)?;
    let (role, sub) = match matches.subcommand() {
        Some((role @ ("server" | "agent"), sub)) => (role, sub),
        _ => return Cli::from_arg_matches(&matches).map_err(Error::Clap),
    };
    let path: PathBuf = sub
        .get_one::<PathBuf>("config")
        .cloned()
        .unwrap_or_default();
    let explicit = sub.value_source("config") != Some(ValueSource::DefaultValue);
    let file = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
        Err(e) => {
            return Err(Error::Invalid(vec![format!(
                "--config {}: cannot read the config file: {e}",
                path.display()
            )]));
        }
    };
    let role_cmd = cmd
        .find_subcommand(role)
        .expect("the server and agent subcommands are defined");
    let file_args = file::args(&file, &path, role_cmd, |id| {
        matches!(sub.value_source(id), None | Some(ValueSource::DefaultValue))
    })
    .map_err(Error::Invalid)?;
    if file_args.is_empty() {
        return Cli::from_arg_matches(&matches).map_err(Error::Clap);
    }
    // Insert the file's values right after the subcommand: they only fill flags that neither
    // the command line nor the environment set, so nothing conflicts.
    let pos = argv
        .iter()
        .position(|a| a == role)
        .map_or(argv.len(), |p| p + 1);
    let mut full = argv[..pos].to_vec();
    full.extend(file_args.into_iter().map(OsString::from));
    full.extend_from_slice(&argv[pos..]);
    let matches = Cli::command()
        .try_get_matches_from(full)
        .map_err(Error::Clap)?;
    Cli::from_arg_matches(&matches).map_err(Error::Clap)
}

/// Everything a server needs, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub token: Option<Token>,
    /// `--agent-token`: a second secret that joins agents only.
    pub agent_token: Option<Token>,
    pub advertise_address: Option<IpAddr>,
    pub advertise_port: Option<u16>,
    /// `--vip` and its companions.
    pub vip: Option<crate::vip::VipConfig>,
    /// Where the server writes the cluster token (`<data-dir>/server/token`).
    pub token_path: PathBuf,
    pub endpoint: Endpoint,
    pub pool: PoolConfig,
    pub bind: SocketAddr,
    pub tls_sans: Vec<String>,
    pub node: node::NodeOptions,
    pub cluster_domain: String,
    /// Settings every server of the cluster must agree on.
    pub settings: ClusterSettings,
    /// `--cluster-cidr` and `--node-cidr-mask-size*`: where nodes' pod CIDRs come from.
    pub pod_network: PodNetwork,
    /// `--flannel-backend`.
    pub flannel_backend: Backend,
    /// `--service-lb-pool`.
    pub service_lb_pools: crate::controllers::service_lb::Pools,
    /// `--service-lb-lease-duration`, `--service-lb-renew-deadline`, `--service-lb-retry-period`.
    pub service_lb_timing: crate::api::network::LbTiming,
    pub kubeconfig: PathBuf,
    pub kubeconfig_mode: u32,
    pub compact_interval: Duration,
    /// `--max-requests-inflight`, `--max-mutating-requests-inflight`.
    pub max_requests_inflight: usize,
    pub max_mutating_requests_inflight: usize,
    /// `--max-watches-per-user`.
    pub max_watches_per_user: usize,
    /// `--leaf-certificate-validity` (hidden): how long issued certificates are valid.
    pub leaf_certificate_validity: Duration,
    /// Scheduled snapshots of the SQLite datastore; `None` when off or not SQLite.
    pub snapshots: Option<SnapshotSchedule>,
    /// `--watch-bookmark-interval`.
    pub watch_bookmark_interval: Duration,
    /// `--service-account-min-token-expiration` (hidden, for tests).
    pub min_token_expiration: Duration,
    pub node_monitor_grace_period: Duration,
    /// `--event-ttl`: Events not seen again for this long are deleted.
    pub event_ttl: Duration,
    /// How the server's own node runs containers.
    pub runtime: crate::node::RuntimeOptions,
    pub debug: bool,
    pub log_format: crate::cli::LogFormat,
    /// Settings that are accepted but deserve a warning; logged once logging is up.
    pub warnings: Vec<String>,
}

/// Facts about the process that change defaults (root or not, home directory).
pub struct Host {
    pub is_root: bool,
    pub home: Option<PathBuf>,
    pub hostname: String,
}

impl Host {
    pub fn current() -> Host {
        Host {
            is_root: nix::unistd::geteuid().is_root(),
            home: std::env::var_os("HOME").map(PathBuf::from),
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into()),
        }
    }

    pub fn default_data_dir(&self) -> PathBuf {
        match (&self.is_root, &self.home) {
            (false, Some(home)) => home.join(".local/share/keelson"),
            _ => PathBuf::from("/var/lib/keelson"),
        }
    }

    pub fn default_kubeconfig(&self, data_dir: &Path) -> PathBuf {
        if self.is_root {
            PathBuf::from("/etc/keelson/keelson.yaml")
        } else {
            data_dir.join("keelson.yaml")
        }
    }
}

// === impl ServerConfig ===

impl ServerConfig {
    /// The network settings every node is told (see [`crate::tunnel::network`]).
    pub fn cluster_network(&self) -> ClusterNetwork {
        ClusterNetwork {
            cluster_cidrs: self.pod_network.pools().iter().map(|p| p.cluster).collect(),
            service_cidrs: crate::apiserver::allocator::ServiceCidrs::parse(
                &self.settings.service_cidr,
            )
            .map(|r| r.cidrs().collect())
            .unwrap_or_default(),
            // `--disable coredns`: no cluster DNS anywhere; pods get their node's resolver.
            cluster_dns: (!self.settings.disable.contains("coredns"))
                .then(|| self.settings.cluster_dns.parse().ok())
                .flatten(),
            cluster_domain: self.cluster_domain.clone(),
            backend: self.flannel_backend,
            lb_timing: self.service_lb_timing,
        }
    }
}

impl ServerConfig {
    pub fn from_args(args: ServerArgs, host: &Host) -> Result<ServerConfig, Error> {
        let mut problems = Vec::new();
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| host.default_data_dir());

        let mut warnings = Vec::new();
        let allow_weak = args.allow_weak_token;
        let mut read = |raw: &Option<String>, file: &Option<PathBuf>, flags| {
            let (token, source) =
                read_token(raw.as_deref(), file.as_deref(), flags, &mut problems)?;
            match token_strength(&token, &source, allow_weak) {
                Strength::Strong => {}
                Strength::Weak(w) => warnings.push(w),
                Strength::Refused(p) => problems.push(p),
            }
            Some(token)
        };
        let token = read(&args.token, &args.token_file, ("--token", "--token-file"));
        let agent_token = read(
            &args.agent_token,
            &args.agent_token_file,
            ("--agent-token", "--agent-token-file"),
        );
        let mut check = |r: Result<(), String>| {
            if let Err(p) = r {
                problems.push(p)
            }
        };

        let mut endpoint = Endpoint::sqlite_default(&data_dir);
        if let Some(raw) = &args.datastore_endpoint {
            check(
                Endpoint::parse(raw)
                    .map(|e| endpoint = e)
                    .map_err(|e| e.to_string()),
            );
        }
        for (flag, file) in [
            ("--datastore-cafile", &args.datastore_cafile),
            ("--datastore-certfile", &args.datastore_certfile),
            ("--datastore-keyfile", &args.datastore_keyfile),
        ] {
            if let Some(path) = file
                && let Err(e) = std::fs::File::open(path)
            {
                check(Err(format!(
                    "{flag} {}: cannot read it: {e}",
                    path.display()
                )));
            }
        }
        if args.datastore_certfile.is_some() != args.datastore_keyfile.is_some() {
            check(Err(
                "--datastore-certfile and --datastore-keyfile must be given together".into(),
            ));
        }
        let tls_flag = match args.datastore_tls.as_deref().map(TlsMode::parse) {
            Some(Err(e)) => {
                check(Err(e.to_string()));
                None
            }
            Some(Ok(mode)) => Some(mode),
            None => None,
        };
        let files = TlsFiles {
            ca: args.datastore_cafile.as_deref(),
            cert: args.datastore_certfile.as_deref(),
            key: args.datastore_keyfile.as_deref(),
        };
        match endpoint.clone().with_tls(tls_flag, files) {
            Ok(e) => endpoint = e,
            Err(e) => check(Err(e.to_string())),
        }

        let pod_network = PodNetwork::parse(
            &args.cluster_cidr,
            MaskFlags {
                general: args.node_cidr_mask_size,
                ipv4: args.node_cidr_mask_size_ipv4,
                ipv6: args.node_cidr_mask_size_ipv6,
            },
        )
        .map_err(|e| check(Err(e.to_string())))
        .ok();
        let raw = &args.service_cidr;
        let service_cidrs = crate::apiserver::allocator::ServiceCidrs::parse(raw)
            .map_err(|e| check(Err(format!("--service-cidr {raw:?}: {e}"))))
            .ok();
        // Node blocks keep off the Services' ranges where they overlap.
        let pod_network = match (pod_network, &service_cidrs) {
            (Some(n), Some(ranges)) => Some(ranges.cidrs().fold(n, |n, range| n.reserve(range))),
            (n, _) => n,
        };
        // K3s's default: the 10th address of the first service range.
        let cluster_dns = match &args.cluster_dns {
            Some(dns) => {
                if dns.parse::<IpAddr>().is_err() {
                    check(Err(format!("--cluster-dns {dns:?} is not an IP address")));
                }
                dns.clone()
            }
            None => service_cidrs
                .map(|r| r.primary.nth(10).to_string())
                .unwrap_or_default(),
        };
        let flannel_backend = Backend::parse(&args.flannel_backend).unwrap_or_else(|| {
            check(Err(format!(
                "--flannel-backend {:?}: expected one of {}",
                args.flannel_backend,
                Backend::NAMES
            )));
            Backend::Vxlan
        });
        let service_lb_pools = crate::controllers::service_lb::Pools::parse(
            args.service_lb_pool.iter().map(String::as_str),
        )
        .unwrap_or_else(|e| {
            check(Err(format!("--service-lb-pool {e}")));
            Default::default()
        });
        let service_lb_timing = lb_timing(&args, &mut check);
        let mut disable = std::collections::BTreeSet::new();
        for item in args
            .disable
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            if DISABLEABLE.contains(&item) {
                disable.insert(item.to_owned());
            } else {
                check(Err(format!(
                    "--disable {item:?} is not a component (expected one of: {})",
                    DISABLEABLE.join(", ")
                )));
            }
        }

        let mut pool = PoolConfig {
            max_open: args.datastore_max_open_connections,
            max_idle: args.datastore_max_idle_connections,
            ..PoolConfig::default()
        };
        if pool.max_open == 0 {
            check(Err(
                "--datastore-max-open-connections must be at least 1".into()
            ));
        }
        check(
            parse_duration(
                "--datastore-connection-max-lifetime",
                &args.datastore_connection_max_lifetime,
            )
            .map(|d| {
                pool.max_lifetime = (!d.is_zero()).then_some(d);
            }),
        );
        check(
            parse_duration(
                "--datastore-acquire-timeout",
                &args.datastore_acquire_timeout,
            )
            .map(|d| pool.acquire_timeout = d),
        );

        let mut node_monitor_grace_period = Duration::from_secs(15);
        check(
            parse_duration(
                "--node-monitor-grace-period",
                &args.node_monitor_grace_period,
            )
            .map(|d| node_monitor_grace_period = d),
        );
        let mut event_ttl = Duration::from_secs(3600);
        check(parse_duration("--event-ttl", &args.event_ttl).map(|d| event_ttl = d));
        let mut compact_interval = Duration::from_secs(300);
        check(
            parse_duration("--compact-interval", &args.compact_interval)
                .map(|d| compact_interval = d),
        );
        let snapshots = snapshot_schedule(&args, &endpoint, &data_dir, &mut check);
        let mut leaf_certificate_validity = Duration::from_secs(365 * 24 * 3600);
        check(
            parse_duration(
                "--leaf-certificate-validity",
                &args.leaf_certificate_validity,
            )
            .map(|d| leaf_certificate_validity = d),
        );
        let mut min_token_expiration = Duration::from_secs(600);
        check(
            parse_duration(
                "--service-account-min-token-expiration",
                &args.service_account_min_token_expiration,
            )
            .map(|d| min_token_expiration = d),
        );
        let mut watch_bookmark_interval = Duration::from_secs(60);
        check(
            parse_duration("--watch-bookmark-interval", &args.watch_bookmark_interval).and_then(
                |d| match d.is_zero() {
                    true => Err("--watch-bookmark-interval must be more than 0".into()),
                    false => {
                        watch_bookmark_interval = d;
                        Ok(())
                    }
                },
            ),
        );

        let mut bind = SocketAddr::from(([0, 0, 0, 0], args.https_listen_port));
        match args.bind_address.parse::<IpAddr>() {
            Ok(ip) => bind.set_ip(ip),
            Err(_) => check(Err(format!(
                "--bind-address {:?} is not an IP address",
                args.bind_address
            ))),
        }

        let mut tls_sans = Vec::new();
        for san in args.tls_san.iter().filter(|s| !s.is_empty()) {
            if san.parse::<IpAddr>().is_ok()
                || labels::is_dns_subdomain(san.trim_start_matches("*."))
            {
                tls_sans.push(san.clone());
            } else {
                check(Err(format!(
                    "--tls-san {san:?} is neither an IP address nor a DNS name"
                )));
            }
        }

        let mut advertise_address = None;
        if let Some(raw) = &args.advertise_address {
            match raw.parse::<IpAddr>() {
                Ok(ip) => advertise_address = Some(ip),
                Err(_) => check(Err(format!(
                    "--advertise-address {raw:?} is not an IP address"
                ))),
            }
        }
        let node = node_options(
            NodeFlags {
                name: args.node_name.as_deref(),
                labels: &args.node_label,
                taints: &args.node_taint,
                ips: &args.node_ip,
            },
            host,
            &mut check,
        );
        let vip = parse_vip(&args, &mut check);
        if !labels::is_dns_subdomain(&args.cluster_domain) {
            check(Err(format!(
                "--cluster-domain {:?} is not a DNS name",
                args.cluster_domain
            )));
        }

        let mut kubeconfig_mode = 0o600;
        match u32::from_str_radix(args.write_kubeconfig_mode.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 => kubeconfig_mode = m,
            _ => check(Err(format!(
                "--write-kubeconfig-mode {:?} is not an octal file mode such as 0600 or 644",
                args.write_kubeconfig_mode
            ))),
        }

        let runtime = crate::node::RuntimeOptions::from_args(&args.node_runtime, &mut problems);
        let mut node = node;
        node.reservations = runtime.reservations;
        node.pressure_transition = runtime.pressure_transition;
        node.data_dir = data_dir.clone();
        node.local_storage = local_storage_path(&args.node_runtime, &data_dir, &mut problems);
        let Some(pod_network) = pod_network.filter(|_| problems.is_empty()) else {
            return Err(Error::Invalid(problems));
        };
        if let Some(host) = endpoint.downgradable() {
            warnings.push(format!(
                "the connection to the datastore at {host} uses TLS mode prefer: TLS only if the database offers it, so anyone on the \
                 network path can make it plaintext; pass --datastore-cafile (verify-full) or \
                 --datastore-tls require"
            ));
        }
        Ok(ServerConfig {
            token_path: data_dir.join("server/token"),
            kubeconfig: args
                .write_kubeconfig
                .clone()
                .unwrap_or_else(|| host.default_kubeconfig(&data_dir)),
            node,
            data_dir,
            token,
            agent_token,
            advertise_address,
            advertise_port: args.advertise_port,
            vip,
            endpoint,
            pool,
            bind,
            tls_sans,
            settings: ClusterSettings {
                cluster_cidr: args.cluster_cidr,
                node_cidr_mask_sizes: Some(
                    pod_network
                        .pools()
                        .iter()
                        .map(|p| p.mask.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                flannel_backend: Some(flannel_backend.name().to_owned()),
                service_lb_pools: Some(service_lb_pools.describe()),
                service_lb_timing: Some(format!(
                    "{}ms/{}ms/{}ms",
                    service_lb_timing.lease_ms,
                    service_lb_timing.renew_deadline_ms,
                    service_lb_timing.retry_ms
                )),
                service_cidr: args.service_cidr,
                cluster_dns,
                cluster_domain: args.cluster_domain.clone(),
                disable,
                secrets_encryption: args.secrets_encryption,
            },
            cluster_domain: args.cluster_domain,
            kubeconfig_mode,
            pod_network,
            flannel_backend,
            service_lb_pools,
            service_lb_timing,
            compact_interval,
            snapshots,
            leaf_certificate_validity,
            max_requests_inflight: args.max_requests_inflight,
            max_mutating_requests_inflight: args.max_mutating_requests_inflight,
            max_watches_per_user: args.max_watches_per_user,
            watch_bookmark_interval,
            min_token_expiration,
            node_monitor_grace_period,
            event_ttl,
            runtime,
            debug: args.debug,
            log_format: args.log_format,
            warnings,
        })
    }
}

/// `--datastore-snapshot-*`: when and where the server snapshots its SQLite datastore.
#[derive(Debug, Clone)]
pub struct SnapshotSchedule {
    pub cron: crate::api::cron::Schedule,
    pub retention: usize,
    pub dir: PathBuf,
}

/// The default schedule of K3s's etcd snapshots: twice a day.
pub const DEFAULT_SNAPSHOT_CRON: &str = "0 */12 * * *";

fn snapshot_schedule(
    args: &ServerArgs,
    endpoint: &Endpoint,
    data_dir: &Path,
    check: &mut impl FnMut(Result<(), String>),
) -> Option<SnapshotSchedule> {
    let sqlite = endpoint.sqlite_path().is_some();
    if !sqlite {
        if args.datastore_snapshot_schedule_cron.is_some() {
            check(Err(
                "--datastore-snapshot-schedule-cron: scheduled snapshots are for the embedded SQLite datastore; back up MySQL/MariaDB or PostgreSQL with the database's own tools (README: \"Backups and restore\")".into(),
            ));
        }
        return None;
    }
    if args.datastore_disable_snapshots {
        return None;
    }
    if args.datastore_snapshot_retention == 0 {
        check(Err(
            "--datastore-snapshot-retention must be at least 1 (--datastore-disable-snapshots turns scheduled snapshots off)".into(),
        ));
        return None;
    }
    let raw = args
        .datastore_snapshot_schedule_cron
        .as_deref()
        .unwrap_or(DEFAULT_SNAPSHOT_CRON);
    match crate::api::cron::Schedule::parse(raw) {
        Ok(cron) => Some(SnapshotSchedule {
            cron,
            retention: args.datastore_snapshot_retention,
            dir: args
                .datastore_snapshot_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("server/db/snapshots")),
        }),
        Err(e) => {
            check(Err(format!(
                "--datastore-snapshot-schedule-cron {raw:?}: {e} (five fields: minute hour day-of-month month day-of-week, e.g. \"0 */12 * * *\")"
            )));
            None
        }
    }
}

/// Shortest token secret a server accepts without `--allow-weak-token`.
const MIN_TOKEN_SECRET: usize = 8;
/// Shortest token secret a server accepts without a warning (the generated ones have 32).
const GOOD_TOKEN_SECRET: usize = 16;

/// How guessable a token's secret is (the part after `::server:` / `::node:` in a K10 token).
enum Strength {
    Strong,
    /// Accepted, with this warning.
    Weak(String),
    /// Refused, with this problem.
    Refused(String),
}

fn token_strength(token: &Token, source: &str, allow_weak: bool) -> Strength {
    let len = token.secret.chars().count();
    let advice = "generate one with `openssl rand -hex 16`";
    if len < MIN_TOKEN_SECRET && !allow_weak {
        Strength::Refused(format!(
            "{source}: the token secret is {len} characters long; at least {MIN_TOKEN_SECRET} are \
             required ({GOOD_TOKEN_SECRET} or more recommended): {advice}; \
             --allow-weak-token accepts it anyway"
        ))
    } else if len < GOOD_TOKEN_SECRET {
        Strength::Weak(format!(
            "{source}: the token secret is only {len} characters long; anyone who guesses it can \
             join this cluster; {GOOD_TOKEN_SECRET} or more are recommended: {advice}"
        ))
    } else {
        Strength::Strong
    }
}

/// A token from its flag or its file flag (the flag wins), with where it came from (the flag,
/// or the file flag and the path); problems are collected.
fn read_token(
    raw: Option<&str>,
    file: Option<&Path>,
    (flag, file_flag): (&str, &str),
    problems: &mut Vec<String>,
) -> Option<(Token, String)> {
    let (raw, source) = match (raw, file) {
        (Some(raw), _) => (raw.to_owned(), flag.to_owned()),
        (None, None) => return None,
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(raw) => (raw, format!("{file_flag} {}", path.display())),
            Err(e) => {
                problems.push(format!(
                    "{file_flag} {}: cannot read it: {e}",
                    path.display()
                ));
                return None;
            }
        },
    };
    match Token::parse(&raw, &source) {
        Ok(token) => Some((token, source)),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    }
}

/// `--vip ADDR[/PREFIX]` and its timing flags. The prefix only documents the subnet: the
/// address is always added as a host address.
fn parse_vip(
    args: &ServerArgs,
    check: &mut impl FnMut(Result<(), String>),
) -> Option<crate::vip::VipConfig> {
    let raw = args.vip.as_deref()?.trim();
    let (addr, prefix) = match raw.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (raw, None),
    };
    let ip = match addr.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast() => ip,
        _ => {
            check(Err(format!(
                "--vip {raw:?} is not a usable IP address (expected ADDR[/PREFIX], e.g. 192.168.1.100/24 or fd00::100/64)"
            )));
            return None;
        }
    };
    if let Some(p) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if !p.parse::<u8>().is_ok_and(|p| p <= max) {
            check(Err(format!(
                "--vip {raw:?}: the prefix {p:?} is not a number from 0 to {max}"
            )));
        }
    }
    let mut timing = crate::vip::DEFAULT_TIMING;
    check(
        parse_duration("--vip-lease-duration", &args.vip_lease_duration).map(|d| timing.lease = d),
    );
    check(
        parse_duration("--vip-renew-deadline", &args.vip_renew_deadline)
            .map(|d| timing.renew_deadline = d),
    );
    check(parse_duration("--vip-retry-period", &args.vip_retry_period).map(|d| timing.retry = d));
    if timing.retry.is_zero()
        || timing.retry >= timing.renew_deadline
        || timing.renew_deadline >= timing.lease
    {
        check(Err(format!(
            "--vip-retry-period ({:?}) < --vip-renew-deadline ({:?}) < --vip-lease-duration ({:?}) must hold, \
             so a holder gives the address up before anyone else can take it",
            timing.retry, timing.renew_deadline, timing.lease
        )));
    }
    if args.lb_port == 0 {
        check(Err("--lb-port must be from 1 to 65535".into()));
    }
    if args.lb_max_connections == 0 {
        check(Err("--lb-max-connections must be at least 1".into()));
    }
    Some(crate::vip::VipConfig {
        ip,
        interface: args.vip_interface.clone(),
        lb_port: args.lb_port,
        timing,
        lb_max_connections: args.lb_max_connections,
    })
}

/// The node flags servers and agents share, unparsed.
struct NodeFlags<'a> {
    name: Option<&'a str>,
    labels: &'a [String],
    taints: &'a [String],
    ips: &'a [String],
}

fn node_options(
    flags: NodeFlags<'_>,
    host: &Host,
    check: &mut impl FnMut(Result<(), String>),
) -> node::NodeOptions {
    let mut labels = BTreeMap::new();
    for raw in flags.labels {
        check(labels::parse_label(raw).map(|(k, v)| {
            labels.insert(k, v);
        }));
    }
    let mut taints: Vec<Taint> = Vec::new();
    for raw in flags.taints {
        check(labels::parse_taint(raw).map(|t| taints.push(t)));
    }
    let mut ips = Vec::new();
    for raw in flags.ips.iter().filter(|s| !s.is_empty()) {
        match raw.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => check(Err(format!("--node-ip {raw:?} is not an IP address"))),
        }
    }
    let name = flags
        .name
        .map(str::to_owned)
        .unwrap_or_else(|| host.hostname.to_lowercase());
    if !labels::is_dns_subdomain(&name) {
        check(Err(format!(
            "--node-name {name:?} is not a valid node name (lowercase letters, digits, '-' and '.', at most 253 characters)"
        )));
    }
    node::NodeOptions {
        name,
        labels,
        taints,
        ips,
        reservations: Default::default(),
        data_dir: Default::default(),
        local_storage: Default::default(),
        pressure_transition: crate::node::resources::DEFAULT_PRESSURE_TRANSITION,
    }
}

/// Everything an agent needs, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The server (fixed address) to join through: `host:port`, and the host for TLS.
    pub server: ServerUrl,
    pub token: Token,
    /// `--unsafe-skip-ca-verification`: a token without a CA hash may make the first join.
    pub unsafe_skip_ca_verification: bool,
    pub data_dir: PathBuf,
    /// Node options; with `--with-node-id` the name gets its persisted suffix at start.
    pub node: node::NodeOptions,
    pub with_node_id: bool,
    /// How this node runs containers.
    pub runtime: crate::node::RuntimeOptions,
    pub debug: bool,
    pub log_format: crate::cli::LogFormat,
}

/// `https://HOST[:PORT]`, as `--server` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub host: String,
    pub port: u16,
}

impl ServerUrl {
    pub fn parse(raw: &str) -> Result<ServerUrl, String> {
        let err = |why: &str| {
            format!(
                "--server {raw:?}: {why} (expected https://HOST[:PORT], e.g. https://192.168.1.100:6443)"
            )
        };
        let rest = raw
            .trim()
            .strip_prefix("https://")
            .ok_or_else(|| err("it must start with https://"))?;
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') || hostport.contains('?') {
            return Err(err("it must not have a path"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| err("unclosed '['"))?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(err("the host is missing"));
        }
        if host.parse::<IpAddr>().is_err() && !labels::is_dns_subdomain(&host.to_lowercase()) {
            return Err(err("the host is neither an IP address nor a DNS name"));
        }
        let port = match port {
            None => 6443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err("the port is not a number from 1 to 65535"))?,
        };
        Ok(ServerUrl { host, port })
    }

    /// `host:port`, bracketing IPv6.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl AgentConfig {
    pub fn from_args(args: crate::cli::AgentArgs, host: &Host) -> Result<AgentConfig, Error> {
        let mut problems = Vec::new();
        let token = read_token(
            args.token.as_deref(),
            args.token_file.as_deref(),
            ("--token", "--token-file"),
            &mut problems,
        )
        .map(|(token, _)| token);
        if token.is_none() && args.token.is_none() && args.token_file.is_none() {
            problems.push(
                "a token is required to join: pass --token (or KEELSON_TOKEN) or --token-file with the server's token or agent token".into(),
            );
        }
        let server = match args.server.as_deref() {
            Some(raw) => ServerUrl::parse(raw).map_err(|e| problems.push(e)).ok(),
            None => {
                problems.push(
                    "--server (or KEELSON_URL) is required: the https:// address of a server or of the cluster's fixed address".into(),
                );
                None
            }
        };
        let mut check = |r: Result<(), String>| {
            if let Err(p) = r {
                problems.push(p)
            }
        };
        let node = node_options(
            NodeFlags {
                name: args.node_name.as_deref(),
                labels: &args.node_label,
                taints: &args.node_taint,
                ips: &args.node_ip,
            },
            host,
            &mut check,
        );
        for k in node.labels.keys() {
            if crate::apiserver::admission::is_restricted_label(k) {
                check(Err(format!(
                    "--node-label {k:?}: agents may not set node-role.kubernetes.io/ or node-restriction.kubernetes.io/ labels (Kubernetes's NodeRestriction); label the node with kubectl instead"
                )));
            }
        }
        let runtime = crate::node::RuntimeOptions::from_args(&args.node_runtime, &mut problems);
        let mut node = node;
        node.reservations = runtime.reservations;
        node.pressure_transition = runtime.pressure_transition;
        let data_dir = args.data_dir.unwrap_or_else(|| host.default_data_dir());
        node.data_dir = data_dir.clone();
        node.local_storage = local_storage_path(&args.node_runtime, &data_dir, &mut problems);
        match (server, token) {
            (Some(server), Some(token)) if problems.is_empty() => Ok(AgentConfig {
                server,
                token,
                unsafe_skip_ca_verification: args.unsafe_skip_ca_verification,
                data_dir,
                node,
                with_node_id: args.with_node_id,
                runtime,
                debug: args.debug,
                log_format: args.log_format,
            }),
            _ => Err(Error::Invalid(problems)),
        }
    }
}

/// The LoadBalancer lease timing flags; the default where one does not parse, with the problem
/// told to `check`.
fn lb_timing(
    args: &crate::cli::ServerArgs,
    check: &mut impl FnMut(Result<(), String>),
) -> crate::api::network::LbTiming {
    let mut t = crate::api::network::LbTiming::default();
    let ms = |flag: &str, raw: &str| -> Result<u32, String> {
        let d = parse_duration(flag, raw)?;
        u32::try_from(d.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| format!("{flag} {raw:?} must be from 1ms to about 49 days"))
    };
    check(
        ms(
            "--service-lb-lease-duration",
            &args.service_lb_lease_duration,
        )
        .map(|v| t.lease_ms = v),
    );
    check(
        ms(
            "--service-lb-renew-deadline",
            &args.service_lb_renew_deadline,
        )
        .map(|v| t.renew_deadline_ms = v),
    );
    check(ms("--service-lb-retry-period", &args.service_lb_retry_period).map(|v| t.retry_ms = v));
    if t.retry_ms >= t.renew_deadline_ms || t.renew_deadline_ms >= t.lease_ms {
        check(Err(format!(
            "--service-lb-retry-period ({}ms) < --service-lb-renew-deadline ({}ms) < --service-lb-lease-duration ({}ms) must hold, \
             so a holder lets its address go before anyone else can take it",
            t.retry_ms, t.renew_deadline_ms, t.lease_ms
        )));
    }
    t
}

/// `--default-local-storage-path`, or `<data-dir>/storage`; a relative path is refused (the
/// servers write it into volumes other nodes' users read).
fn local_storage_path(
    args: &crate::cli::RuntimeArgs,
    data_dir: &std::path::Path,
    problems: &mut Vec<String>,
) -> PathBuf {
    match &args.default_local_storage_path {
        Some(path) if !path.is_absolute() => {
            problems.push(format!(
                "--default-local-storage-path {:?} must be an absolute path",
                path.display().to_string()
            ));
            data_dir.join(crate::node::storage::DEFAULT_DIR)
        }
        Some(path) => path.clone(),
        None => data_dir.join(crate::node::storage::DEFAULT_DIR),
    }
}

/// Components K3s packages and `--disable` names; accepted so K3s configs carry over.
pub const DISABLEABLE: [&str; 6] = [
    "coredns",
    "servicelb",
    "traefik",
    "local-storage",
    "metrics-server",
    "runtimes",
];

/// Parses `90s`, `5m`, `1h`, `250ms`, `1h30m` or a bare number of seconds.
pub fn parse_duration(flag: &str, raw: &str) -> Result<Duration, String> {
    let err = || format!("{flag} {raw:?} is not a duration (expected e.g. 30s, 5m, 1h, 250ms)");
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = raw;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(err()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            is_root: true,
            home: None,
            hostname: "Pi-1".into(),
        }
    }

    /// Server arguments with an empty config file, so the machine's own file never leaks in.
    fn args(extra: &[&str]) -> Vec<OsString> {
        let empty = std::env::temp_dir().join("keelson-config-test-empty.yaml");
        std::fs::write(&empty, "").unwrap();
        let config = format!("--config={}", empty.display());
        let mut v: Vec<OsString> = vec!["keelson".into(), "server".into(), config.into()];
        v.extend(extra.iter().map(OsString::from));
        v
    }

    fn server(cli: Cli) -> ServerArgs {
        match cli.command {
            crate::cli::Command::Server(a) => *a,
            _ => panic!("not server"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("--x", "1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_duration("--x", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("--x", "7").unwrap(), Duration::from_secs(7));
        assert!(
            parse_duration("--x", "5 minutes")
                .unwrap_err()
                .contains("--x")
        );
        assert!(parse_duration("--x", "").is_err());
    }

    #[test]
    fn defaults_follow_k3s() {
        let cli = parse_command_line(args(&[])).unwrap();
        let cfg = ServerConfig::from_args(server(cli), &host()).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/keelson"));
        assert_eq!(cfg.kubeconfig, PathBuf::from("/etc/keelson/keelson.yaml"));
        assert_eq!(
            cfg.endpoint.sqlite_path(),
            Some(Path::new("/var/lib/keelson/server/db/state.db"))
        );
        assert_eq!(cfg.bind.port(), 6443);
        assert_eq!(cfg.node.name, "pi-1");
        assert_eq!(cfg.kubeconfig_mode, 0o600);
    }

    #[test]
    fn cluster_dns_defaults_to_the_10th_address_of_the_first_service_range() {
        let dns = |extra: &[&str]| {
            let cli = parse_command_line(args(extra)).unwrap();
            ServerConfig::from_args(server(cli), &host())
                .unwrap()
                .settings
                .cluster_dns
        };
        assert_eq!(dns(&[]), "10.43.0.10");
        assert_eq!(dns(&["--service-cidr=fd00:43::/112"]), "fd00:43::a");
        assert_eq!(
            dns(&["--service-cidr=fd00:43::/112,10.43.0.0/16"]),
            "fd00:43::a"
        );
        assert_eq!(
            dns(&["--service-cidr=10.96.0.0/12,fd00:43::/112"]),
            "10.96.0.10"
        );
        assert_eq!(dns(&["--cluster-dns=10.43.0.53"]), "10.43.0.53");
    }

    #[test]
    fn repeated_flags_append_lists_and_last_wins_for_values() {
        let cli = parse_command_line(args(&[
            "--node-label=a=1",
            "--node-label=b=2",
            "--https-listen-port=1",
            "--https-listen-port=7443",
        ]))
        .unwrap();
        let a = server(cli);
        assert_eq!(a.node_label, vec!["a=1", "b=2"]);
        assert_eq!(a.https_listen_port, 7443);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let cli = parse_command_line(args(&[
            "--node-taint=oops",
            "--node-label=novalue",
            "--bind-address=nowhere",
            "--write-kubeconfig-mode=999",
            "--token=K10zz::server:x",
            "--datastore-endpoint=redis://x",
            "--node-cidr-mask-size=8",
        ]))
        .unwrap();
        let Err(Error::Invalid(problems)) = ServerConfig::from_args(server(cli), &host()) else {
            panic!("expected errors")
        };
        let all = problems.join("\n");
        for flag in [
            "--node-taint",
            "--node-label",
            "--bind-address",
            "--write-kubeconfig-mode",
            "--token",
            "--datastore-endpoint",
            "--node-cidr-mask-size 8",
        ] {
            assert!(all.contains(flag), "{flag} missing from:\n{all}");
        }
    }

    #[test]
    fn load_balancer_lease_timing_is_read_checked_and_told_to_nodes() {
        let cli = parse_command_line(args(&[
            "--service-lb-lease-duration=5s",
            "--service-lb-renew-deadline=3s",
            "--service-lb-retry-period=1s",
            "--default-local-storage-path=/srv/volumes",
        ]))
        .unwrap();
        let cfg = ServerConfig::from_args(server(cli), &host()).unwrap();
        let t = cfg.cluster_network().lb_timing;
        assert_eq!(
            (t.lease_ms, t.renew_deadline_ms, t.retry_ms),
            (5000, 3000, 1000)
        );
        assert_eq!(
            cfg.settings.service_lb_timing.as_deref(),
            Some("5000ms/3000ms/1000ms")
        );
        assert_eq!(
            cfg.node.local_storage,
            std::path::PathBuf::from("/srv/volumes")
        );
        let defaults =
            ServerConfig::from_args(server(parse_command_line(args(&[])).unwrap()), &host())
                .unwrap();
        assert_eq!(
            defaults.cluster_network().lb_timing,
            crate::api::network::LbTiming::default()
        );
        assert!(defaults.node.local_storage.ends_with("storage"));
        for bad in [
            vec!["--service-lb-renew-deadline=2s"],
            vec!["--service-lb-retry-period=0s"],
            vec!["--service-lb-lease-duration=soon"],
            vec!["--default-local-storage-path=relative/dir"],
        ] {
            let cli = parse_command_line(args(&bad)).unwrap();
            let Err(Error::Invalid(problems)) = ServerConfig::from_args(server(cli), &host())
            else {
                panic!("{bad:?} accepted")
            };
            let flag = bad[0].split('=').next().unwrap();
            assert!(problems.join("\n").contains(flag), "{bad:?}: {problems:?}");
        }
    }

    #[test]
    fn token_secrets_are_refused_below_8_characters_and_warned_below_16() {
        let outcome = |extra: &[&str]| {
            let cli = parse_command_line(args(extra)).unwrap();
            ServerConfig::from_args(server(cli), &host())
        };
        let hash = "ab".repeat(32);
        for refused in [
            "--token=seven77".to_owned(),
            "--agent-token=x".to_owned(),
            format!("--token=K10{hash}::server:seven77"),
        ] {
            let Err(Error::Invalid(problems)) = outcome(&[&refused]) else {
                panic!("{refused} was accepted")
            };
            let flag = refused.split('=').next().unwrap();
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("{flag}:")) && p.contains("at least 8")),
                "{refused}: {problems:?}"
            );
        }
        // 8 to 15 characters, or shorter with --allow-weak-token: accepted with a warning.
        for weak in [
            vec!["--token=eight888"],
            vec![&format!("--agent-token=K10{hash}::node:fifteen15151515")[..]],
            vec!["--token=abc", "--allow-weak-token"],
        ] {
            let cfg = outcome(&weak).unwrap_or_else(|e| panic!("{weak:?}: {e}"));
            assert_eq!(cfg.warnings.len(), 1, "{weak:?}: {:?}", cfg.warnings);
            assert!(cfg.warnings[0].contains("only"), "{:?}", cfg.warnings);
        }
        let cfg = outcome(&["--token=sixteen-chars-ok"]).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn datastore_tls_is_checked_and_a_downgradable_connection_is_warned_about() {
        let outcome = |extra: &[&str]| {
            let cli = parse_command_line(args(extra)).unwrap();
            ServerConfig::from_args(server(cli), &host())
        };
        for (extra, expected) in [
            (&["--datastore-tls=maybe"][..], "--datastore-tls \"maybe\""),
            (&["--datastore-tls=require"], "SQLite"),
            (
                &[
                    "--datastore-endpoint=postgres://u@db/k",
                    "--datastore-tls=verify-full",
                ],
                "--datastore-cafile",
            ),
        ] {
            let Err(Error::Invalid(problems)) = outcome(extra) else {
                panic!("{extra:?} was accepted")
            };
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{extra:?}: {problems:?}"
            );
        }
        let cfg = outcome(&["--datastore-endpoint=postgres://u@db.example:5432/k"]).unwrap();
        assert!(
            cfg.endpoint.url.ends_with("?sslmode=prefer"),
            "{:?}",
            cfg.endpoint
        );
        assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
        assert!(
            cfg.warnings[0].contains("db.example") && cfg.warnings[0].contains("prefer"),
            "{:?}",
            cfg.warnings
        );
        for quiet in [
            &["--datastore-endpoint=postgres://u@127.0.0.1:5432/k"][..],
            &[
                "--datastore-endpoint=postgres://u@db.example:5432/k",
                "--datastore-tls=require",
            ],
        ] {
            assert!(outcome(quiet).unwrap().warnings.is_empty(), "{quiet:?}");
        }
    }

    #[test]
    fn config_file_fills_only_unset_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "node-name: from-file\nhttps-listen-port: 7443\nnode-label:\n  - a=1\n  - b=2\ndebug: true\n").unwrap();
        let argv: Vec<OsString> = [
            "keelson",
            "server",
            "--config",
            file.to_str().unwrap(),
            "--node-name",
            "from-flag",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let a = server(parse_command_line(argv).unwrap());
        assert_eq!(a.node_name.as_deref(), Some("from-flag"));
        assert_eq!(a.https_listen_port, 7443);
        assert_eq!(a.node_label, vec!["a=1", "b=2"]);
        assert!(a.debug);
    }

    #[test]
    fn the_unsafe_skip_ca_verification_flag_comes_from_the_config_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "unsafe-skip-ca-verification: true\n").unwrap();
        let argv: Vec<OsString> = [
            "keelson",
            "agent",
            "--config",
            file.to_str().unwrap(),
            "--server=https://10.0.0.1",
            "--token=a-short-token",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let crate::cli::Command::Agent(a) = parse_command_line(argv).unwrap().command else {
            panic!("not agent")
        };
        let cfg = AgentConfig::from_args(*a, &host()).unwrap();
        assert!(cfg.unsafe_skip_ca_verification);
    }

    #[test]
    fn config_file_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "node-nmae: x\n").unwrap();
        let argv: Vec<OsString> = ["keelson", "server", "--config", file.to_str().unwrap()]
            .iter()
            .map(OsString::from)
            .collect();
        let err = parse_command_line(argv).unwrap_err().to_string();
        assert!(err.contains("unknown key \"node-nmae\""), "{err}");
    }
}
