//! One server's whole life: open the datastore, establish trust, serve, and stop cleanly.
//!
//! Owns the order of start-up (nothing is served before the cluster data opened, so a
//! refused server writes nothing) and of shutdown (stop accepting, end watches, drain, close
//! the pool).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use std::time::Duration;

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::agent::registration::NodeAgent;
use crate::apiserver::{self, Api, registry::Registry, resources};
use crate::bootstrap::join::Joiner;
use crate::bootstrap::{self, kubeconfig};
use crate::config::ServerConfig;
use crate::controllers::lease::{Elector, Role};
use crate::datastore::{Dialect, Store, compactor::Compactor, feed::Feed};
use crate::runtime;
use crate::systemd::Notify;
use crate::tunnel::sessions::Sessions;

/// Backoff between attempts to reach the datastore at start.
const OPEN_RETRY_MIN: Duration = Duration::from_secs(1);
const OPEN_RETRY_MAX: Duration = Duration::from_secs(30);
/// How often start-up checks whether the server is ready, for systemd's `READY=1`.
const READY_POLL: Duration = Duration::from_millis(100);

/// Runs a server until `shutdown` resolves. `notify` hears how start-up goes and when the API
/// serves (systemd's `READY=1`).
pub async fn run(
    cfg: ServerConfig,
    notify: Notify,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(
        version = crate::VERSION_STRING,
        data_dir = %cfg.data_dir.display(),
        datastore = cfg.endpoint.redacted(),
        "starting keelson server"
    );
    // One server per SQLite file, and no restore under it (`keelson datastore snapshot restore`).
    let _lock = match cfg.endpoint.sqlite_path() {
        Some(db) => Some(crate::datastore::snapshot::ServerLock::acquire(db)?),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal_tx.send_replace(true);
    });
    let when_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Listen first, so health checks get an answer while the datastore is out of reach.
    let (phase_tx, phase_rx) = watch::channel(apiserver::Phase::Starting(
        "not connected yet (the server is starting)".into(),
    ));
    let share_port = cfg
        .vip
        .as_ref()
        .is_some_and(|v| v.lb_port == cfg.bind.port());
    let server = apiserver::Server::bind(cfg.bind, share_port, phase_rx).await?;
    let port = server.local_addr().map_or(cfg.bind.port(), |a| a.port());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server.run(stop_rx.clone()));

    if let (Some(schedule), Some(db)) = (cfg.snapshots.clone(), cfg.endpoint.sqlite_path()) {
        tasks.spawn(crate::datastore::snapshot::run_schedule(
            schedule,
            db.to_owned(),
            cfg.node.name.clone(),
            when_stopped(stop_rx.clone()),
        ));
    }
    notify.status("starting: opening the datastore");
    let result = tokio::select! {
        r = start(&cfg, port, stop_rx.clone(), &phase_tx, &notify, &mut tasks) => r,
        _ = when_stopped(stop_rx.clone()) => Ok(None),
    };
    let store = match result {
        Ok(Some(started)) => {
            tasks.spawn(notify_when_ready(
                started.serving.api.clone(),
                notify,
                started.url,
                stop_rx.clone(),
            ));
            phase_tx.send_replace(apiserver::Phase::Serving(started.serving));
            Some(started.store)
        }
        Ok(None) => None,
        Err(e) => {
            stop_tx.send_replace(true);
            while tasks.join_next().await.is_some() {}
            return Err(e);
        }
    };
    while tasks.join_next().await.is_some() {}
    if let Some(store) = store {
        store.close().await;
    }
    tracing::info!("keelson server stopped");
    Ok(())
}

/// Tells systemd `READY=1` once `/readyz` would answer ok (the API serves, this server's
/// node is registered, the authorization cache loaded), so whatever is ordered after the
/// unit finds a working API; until then the status says what is missing. Ends at `stop`.
async fn notify_when_ready(
    api: Arc<Api>,
    notify: Notify,
    url: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut missing = None;
    loop {
        match api.readiness() {
            Ok(()) => {
                notify.ready(&format!("API serving at {url}"));
                return;
            }
            Err(why) if missing.as_ref() != Some(&why) => {
                notify.status(&format!("starting: {why}"));
                missing = Some(why);
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(READY_POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A server whose background tasks run, ready to serve the API.
struct Started {
    /// Closed by [`run`] once every task has ended.
    store: Store,
    /// What the listener serves from now on.
    serving: Arc<apiserver::Serving>,
    /// Where this machine reaches the API (the admin kubeconfig's server).
    url: String,
}

/// Opens the datastore (retrying while it is unreachable), establishes trust, and starts
/// the background tasks. Returns what the listener should serve.
async fn start(
    cfg: &ServerConfig,
    port: u16,
    stop: watch::Receiver<bool>,
    phase: &watch::Sender<apiserver::Phase>,
    notify: &Notify,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<Option<Started>> {
    let when_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let store = open_with_retry(cfg, phase, notify).await?;
    notify.status("starting: datastore open");
    // After a restore every revision from before is compacted (see `datastore::restore`):
    // say so, for whoever wonders why clients relisted.
    if let Ok(epoch @ 1..) = store.restore_epoch().await {
        tracing::info!(
            restores = epoch,
            compacted_through = store.compacted_revision().await.unwrap_or_default(),
            "this datastore was restored from a backup; clients' watches from before the restore get 410 Gone and relist"
        );
    }
    let mut cluster =
        bootstrap::bootstrap(&store, cfg.token.clone(), &cfg.token_path, &cfg.settings).await?;
    let mut registry = Registry::new(store.clone());
    // Checked when the flags were read; the datastore's record of them agrees (bootstrap).
    let service_cidrs =
        crate::apiserver::allocator::ServiceCidrs::parse(&cfg.settings.service_cidr)
            .with_context(|| format!("--service-cidr {:?}", cfg.settings.service_cidr))?;
    registry = registry.with_service_cidrs(service_cidrs);
    let encryption = if cfg.settings.secrets_encryption {
        let keys = bootstrap::encryption::Encryption::load_or_create(&store, &cluster.token.secret)
            .await
            .context("opening the secrets-encryption keys")?;
        let keys = Arc::new(keys);
        registry = registry.with_encryption(keys.clone());
        tracing::info!(active_key = %keys.summary().active, "Secrets are encrypted at rest");
        Some(keys)
    } else {
        None
    };
    registry
        .ensure_system_namespaces()
        .await
        .context("creating the system namespaces")?;
    registry
        .ensure_dns_service(cfg.cluster_network().cluster_dns)
        .await
        .context("reserving the cluster DNS address (kube-system/kube-dns)")?;
    crate::apiserver::rbac::defaults::ensure(&registry)
        .await
        .context("creating the default ClusterRoles and bindings")?;
    // `--disable local-storage` turns off the built-in provisioner and its default class.
    let local_storage = !cfg.settings.disable.contains("local-storage");
    crate::controllers::persistentvolume::ensure_default_class(&registry, local_storage)
        .await
        .context("creating the default StorageClass (local-path)")?;
    let signer =
        crate::apiserver::tokens::Signer::new(&cluster.service_account_key, &cfg.cluster_domain)
            .context("opening the service account token key")?;
    // This server's own view of what authentication and RBAC read, kept from the feed.
    let access_view = runtime::cache::Cache::new(&[
        &resources::SERVICEACCOUNTS,
        &resources::ROLES,
        &resources::ROLEBINDINGS,
        &resources::CLUSTERROLES,
        &resources::CLUSTERROLEBINDINGS,
    ]);
    let (feed, poller) = Feed::new(store.clone()).await?;

    let node_ips = crate::agent::sysinfo::node_ips(&cfg.node.ips);
    // Before serving: a node that cannot run containers as configured says so at once.
    let node_runtime = cfg.runtime.build(
        &cfg.data_dir,
        &cfg.node.name,
        node_ips.clone(),
        &cfg.node.local_storage,
    )?;
    // A server bound to one address can only be reached there.
    let advertise_ip = cfg
        .advertise_address
        .or_else(|| (!cfg.bind.ip().is_unspecified()).then(|| cfg.bind.ip()))
        .or_else(|| node_ips.first().copied())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let server_address =
        std::net::SocketAddr::new(advertise_ip, cfg.advertise_port.unwrap_or(port)).to_string();
    let mut cert_ips = serving_ips(cfg, &node_ips);
    cert_ips.push(advertise_ip);
    cert_ips.extend(cfg.vip.as_ref().map(|v| v.ip));
    // In-cluster clients reach the API at the `kubernetes` Service's address.
    cert_ips.push(service_cidrs.primary.first());
    cert_ips.sort();
    cert_ips.dedup();
    cluster.ca.set_leaf_validity(cfg.leaf_certificate_validity);
    let serving = cluster.ca.issue_serving(&serving_names(cfg), &cert_ips)?;
    let (tls, serving_cert) = apiserver::tls_config(&cluster.ca, &serving)?;
    let local = if cfg.bind.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        cfg.bind.ip().to_string()
    };
    let url = format!(
        "https://{}:{port}",
        if local.contains(':') {
            format!("[{local}]")
        } else {
            local
        }
    );
    let admin_pem = kubeconfig::write(&cfg.kubeconfig, cfg.kubeconfig_mode, &url, &cluster.ca)?;
    let cert_expiry = Arc::new(apiserver::certificates::Expiry::default());
    tasks.spawn(
        apiserver::certificates::Renewal {
            ca: cluster.ca.try_clone()?,
            dns: serving_names(cfg),
            ips: cert_ips.clone(),
            serving: serving_cert,
            serving_pem: serving.cert_pem.clone(),
            kubeconfig: cfg.kubeconfig.clone(),
            kubeconfig_mode: cfg.kubeconfig_mode,
            url: url.clone(),
            admin_pem,
            expiry: cert_expiry.clone(),
        }
        .run(when_stopped(stop.clone())),
    );
    // Check everything the virtual IP needs before serving, so a misconfiguration stops the
    // server at once instead of surfacing at the first failover.
    let vip = match &cfg.vip {
        None => None,
        Some(v) => {
            let node_ip = node_ips.first().copied().unwrap_or(advertise_ip);
            let iface = match v
                .interface
                .clone()
                .or_else(|| crate::vip::interface_of(node_ip))
            {
                Some(i) => i,
                None => {
                    return Err(crate::vip::Error::NoInterface { vip: v.ip, node_ip }.into());
                }
            };
            let manager = crate::vip::Vip {
                cfg: v.clone(),
                iface,
                api: None,
                store: store.clone(),
                identity: format!("{}-{}", cfg.node.name, std::process::id()),
                ca_pem: cluster.ca.cert_pem.clone(),
            };
            let parts = manager.prepare()?;
            Some((manager, parts))
        }
    };
    let sessions = Sessions::new(cfg.cluster_network());
    let ca_pem = cluster.ca.cert_pem.clone();
    let joiner = Joiner::new(
        cluster.ca,
        &cluster.token.secret,
        cfg.agent_token.as_ref().map(|t| t.secret.as_str()),
    );
    let registry = registry.with_service_accounts(Arc::new(access_view.clone()));
    let api = Arc::new_cyclic(|api| Api {
        registry,
        feed,
        ca_pem: ca_pem.clone(),
        server_address: server_address.clone(),
        node_registered: AtomicBool::new(false),
        shutdown: stop.clone(),
        joiner,
        bookmark_interval: cfg.watch_bookmark_interval,
        tunnels: Arc::new(crate::tunnel::Tunnels(sessions.clone())),
        lb_stats: std::sync::Mutex::new(None),
        access: crate::apiserver::access::Access::new(
            signer,
            Arc::new(access_view.clone()),
            i64::try_from(cfg.min_token_expiration.as_secs()).unwrap_or(i64::MAX),
        ),
        metrics: crate::apiserver::metrics::Metrics::new(api.clone()),
        inflight: crate::apiserver::inflight::Limits::new(
            cfg.max_requests_inflight,
            cfg.max_mutating_requests_inflight,
            cfg.max_watches_per_user,
        ),
    });
    tracing::info!(kubeconfig = %cfg.kubeconfig.display(), token = %cfg.token_path.display(), %url, "API serving");

    tasks.spawn(poller.run(when_stopped(stop.clone())));
    {
        let (registry, feed, stopped) = (
            api.registry.clone(),
            api.feed.clone(),
            when_stopped(stop.clone()),
        );
        tasks.spawn(async move {
            tokio::select! {
                _ = runtime::reflector::run(registry, feed, access_view) => {}
                _ = stopped => {}
            }
        });
    }
    if let Some(keys) = encryption {
        // Key rotations by any server reach this one through the change feed.
        tasks.spawn(keys.follow(
            store.clone(),
            api.feed.clone(),
            cfg.node.name.clone(),
            when_stopped(stop.clone()),
        ));
    }
    tasks.spawn(
        Compactor {
            store: store.clone(),
            interval: cfg.compact_interval,
        }
        .run(when_stopped(stop.clone())),
    );
    tasks.spawn(
        sessions
            .clone()
            .run_heartbeats(api.registry.clone(), when_stopped(stop.clone())),
    );
    tasks.spawn(sessions.pods.clone().run(
        api.registry.clone(),
        api.feed.clone(),
        when_stopped(stop.clone()),
    ));
    tasks.spawn(sessions.network.clone().run(
        api.registry.clone(),
        api.feed.clone(),
        when_stopped(stop.clone()),
    ));
    // Streams (`kubectl logs`/`exec`) for nodes tunnelled to another server go through the
    // datastore; this server passes on those for its own tunnels.
    sessions.streams.set_remote(store.clone(), &server_address);
    tasks.spawn(sessions.streams.clone().run_relay(
        store.clone(),
        api.feed.clone(),
        when_stopped(stop.clone()),
    ));
    tasks.spawn(sessions.clone().run_server_list(
        api.registry.clone(),
        api.feed.clone(),
        when_stopped(stop.clone()),
    ));
    // What the controllers lease holder lists as the `kubernetes` Service's endpoints.
    let live_servers = sessions.servers();
    // The server is a node too: its pods run here, with the same worker as an agent's.
    tasks.spawn(crate::tunnel::local::run(
        api.clone(),
        sessions.clone(),
        cfg.node.name.clone(),
        node_ips.first().copied(),
        node_runtime,
        stop.clone(),
    ));
    tasks.spawn(
        NodeAgent {
            api: api.clone(),
            sessions,
            opts: cfg.node.clone(),
            server_address,
        }
        .run(when_stopped(stop.clone())),
    );
    let (role_tx, role_rx) = watch::channel(Role::Follower);
    api.metrics
        .register(crate::controllers::lease::HolderMetric {
            lease: "keelson-controllers",
            role: role_rx.clone(),
        });
    api.metrics
        .register(apiserver::certificates::ExpiryMetric(cert_expiry));
    let pod_phases = Arc::new(crate::controllers::pod_phases::PodPhases::default());
    api.metrics
        .register(crate::controllers::pod_phases::PodPhasesMetric(
            pod_phases.clone(),
        ));
    tasks.spawn(
        Elector {
            store: store.clone(),
            name: "keelson-controllers",
            identity: format!("{}-{}", cfg.node.name, std::process::id()),
            role: role_tx,
            timing: crate::controllers::lease::CONTROLLERS,
            eligible: Box::new(|| true),
        }
        .run(when_stopped(stop.clone())),
    );
    let (kinds, starter) = crate::controllers::under_lease(crate::controllers::Settings {
        grace: cfg.node_monitor_grace_period,
        event_ttl: cfg.event_ttl,
        pod_network: cfg.pod_network.clone(),
        servers: live_servers,
        lb_pools: cfg.service_lb_pools.clone(),
        ca_pem: ca_pem.clone(),
        local_path: local_storage,
        pod_phases,
    });
    tasks.spawn(runtime::controller::lead(
        role_rx,
        api.registry.clone(),
        api.feed.clone(),
        kinds,
        starter,
        when_stopped(stop.clone()),
    ));
    if let Some((mut manager, (addr, announcer))) = vip {
        manager.api = Some(api.clone());
        tasks.spawn(manager.run(addr, announcer, when_stopped(stop.clone())));
    }
    let serving = Arc::new(apiserver::Serving {
        tls: TlsAcceptor::from(Arc::new(tls)),
        api,
    });
    Ok(Some(Started {
        store,
        serving,
        url,
    }))
}

/// Connects to the datastore, retrying with capped exponential backoff: a server that boots
/// before its database comes up waits for it instead of exiting. A local SQLite file that
/// cannot be opened will not fix itself, so that fails at once.
async fn open_with_retry(
    cfg: &ServerConfig,
    phase: &watch::Sender<apiserver::Phase>,
    notify: &Notify,
) -> anyhow::Result<Store> {
    let mut delay = OPEN_RETRY_MIN;
    loop {
        match Store::open(&cfg.endpoint, &cfg.pool).await {
            Ok(store) => return Ok(store),
            Err(e) if cfg.endpoint.dialect == Dialect::Sqlite => return Err(e.into()),
            // A schema too new for this server will not change by waiting.
            Err(e @ crate::datastore::Error::Schema(_)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot open the datastore; /readyz reports not ready until it can");
                // `/readyz` answers anyone: the class of the failure only; the driver's text
                // (which can name the user, host and client address) stays in the log.
                let why = format!(
                    "cannot open the datastore: {} (retrying)",
                    e.public_reason()
                );
                notify.status(&format!("starting: {why}"));
                phase.send_replace(apiserver::Phase::Starting(why.into()));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(OPEN_RETRY_MAX);
            }
        }
    }
}

/// DNS names in the serving certificate: Kubernetes's service names, the node, `--tls-san`.
fn serving_names(cfg: &ServerConfig) -> Vec<String> {
    let mut names: Vec<String> = vec![
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", cfg.cluster_domain),
        cfg.node.name.clone(),
    ];
    if let Ok(host) = nix::unistd::gethostname()
        && let Some(h) = host.to_str()
        && crate::api::labels::is_dns_subdomain(&h.to_lowercase())
    {
        names.push(h.to_lowercase());
    }
    names.extend(
        cfg.tls_sans
            .iter()
            .filter(|s| s.parse::<IpAddr>().is_err())
            .cloned(),
    );
    names.sort();
    names.dedup();
    names
}

fn serving_ips(cfg: &ServerConfig, node_ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    ips.extend_from_slice(node_ips);
    if !cfg.bind.ip().is_unspecified() {
        ips.push(cfg.bind.ip());
    }
    ips.extend(cfg.tls_sans.iter().filter_map(|s| s.parse::<IpAddr>().ok()));
    ips.sort();
    ips.dedup();
    ips
}
