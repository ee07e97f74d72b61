//! The built-in fixed address: a database-elected virtual IP and a layer-4 load balancer.
//!
//! Servers started with `--vip` elect one holder through the `keelson-vip` lease (compare-and-
//! swap on the database clock, fenced by epoch; see [`crate::controllers::lease`]). Only a
//! ready server (API up, datastore reachable) may take it. The holder adds the address,
//! announces it at once (a burst of gratuitous ARP / unsolicited NA) and then every
//! [`ANNOUNCE_REFRESH`], puts it back if something removed it, and runs the [`lb`] on
//! VIP:`--lb-port` in front of every healthy server. Invariant (no split brain): the holder
//! stops on its own monotonic clock at the renew deadline, before the lease can expire for
//! anyone else — it removes the address and stops announcing first, and only then may another
//! server take over.

pub mod address;
pub mod announce;
pub mod lb;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::address::VipAddress;
use self::announce::Announcer;
use crate::apiserver::Api;
use crate::controllers::lease::{Elector, Role, Timing};
use crate::datastore::Store;

/// Re-announce this often while holding, for hosts and switches that missed the burst.
pub const ANNOUNCE_REFRESH: Duration = Duration::from_secs(10);
/// The burst on taking over: announcements at these offsets.
pub const BURST: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(700),
];
const LEASE_NAME: &str = "keelson-vip";

/// `--vip` and its companions, validated.
#[derive(Debug, Clone)]
pub struct VipConfig {
    pub ip: IpAddr,
    /// `--vip-interface`, or found from the node's address at start.
    pub interface: Option<String>,
    pub lb_port: u16,
    pub timing: Timing,
    pub lb_max_connections: usize,
}

/// Failover defaults: a holder that vanishes is replaced about one lease duration later.
pub const DEFAULT_TIMING: Timing = Timing {
    lease: Duration::from_secs(1),
    renew_deadline: Duration::from_millis(700),
    retry: Duration::from_millis(200),
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--vip {vip}: no interface holds the node address {node_ip}; pass --vip-interface")]
    NoInterface { vip: IpAddr, node_ip: IpAddr },
    #[error(transparent)]
    Address(#[from] address::Error),
    #[error(transparent)]
    Announce(#[from] announce::Error),
}

/// The interface that holds `ip`.
pub fn interface_of(ip: IpAddr) -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let s = a.address.as_ref()?;
        let has = s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
            || s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip);
        has.then_some(a.interface_name)
    })
}

pub struct Vip {
    pub cfg: VipConfig,
    pub iface: String,
    /// Set once the API exists (the checks in [`Vip::prepare`] run before).
    pub api: Option<Arc<Api>>,
    pub store: Store,
    pub identity: String,
    pub ca_pem: String,
}

/// What the holder runs; dropped (after cleanup) when it gives the address up.
struct Holding {
    epoch: i64,
    burst: JoinHandle<()>,
    lb_stop: Option<oneshot::Sender<()>>,
    lb: Option<JoinHandle<()>>,
    last_announce: Instant,
}

impl Vip {
    /// Checks that the address can be managed here (interface, MAC, sockets) before serving.
    pub fn prepare(&self) -> Result<(VipAddress, Announcer), Error> {
        let addr = VipAddress::new(self.cfg.ip, &self.iface)?;
        let announcer = Announcer::new(self.cfg.ip, &self.iface, addr.index)?;
        Ok((addr, announcer))
    }

    pub async fn run(
        self,
        addr: VipAddress,
        announcer: Announcer,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let announcer = Arc::new(announcer);
        // An address left over from a crash of this process would answer for the VIP
        // without holding the lease.
        if addr.present() {
            tracing::warn!(vip = %addr.ip, iface = %addr.iface, "removing a leftover virtual IP this server does not hold");
            if let Err(e) = addr.remove() {
                tracing::error!(error = %e, "cannot remove the leftover virtual IP");
            }
        }
        let Some(api) = self.api.clone() else {
            tracing::error!("the virtual IP manager started without an API; not taking part");
            return;
        };
        let (role_tx, mut role) = watch::channel(Role::Follower);
        let (elector_stop, elector_stopped) = oneshot::channel::<()>();
        let ready = api.clone();
        let elector = tokio::spawn(
            Elector {
                store: self.store.clone(),
                name: LEASE_NAME,
                identity: self.identity.clone(),
                role: role_tx,
                timing: self.cfg.timing,
                eligible: Box::new(move || ready.readiness().is_ok()),
            }
            .run(async {
                let _ = elector_stopped.await;
            }),
        );
        let mut holding: Option<Holding> = None;
        let mut tick = tokio::time::interval(self.cfg.timing.retry);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                changed = role.changed() => {
                    if changed.is_err() { break; }
                    let now = *role.borrow_and_update();
                    match (now, holding.is_some()) {
                        (Role::Leader { epoch }, false) => {
                            holding = self.take(&addr, &announcer, epoch).await;
                        }
                        (Role::Follower, true) => {
                            if let Some(h) = holding.take() {
                                self.give_up(&addr, h, "lost the keelson-vip lease (see the lease log line)").await;
                            }
                        }
                        _ => {}
                    }
                }
                _ = tick.tick(), if holding.is_some() => {
                    if let Some(h) = holding.as_mut() {
                        if !addr.present() {
                            tracing::warn!(vip = %addr.ip, iface = %addr.iface, "the virtual IP was removed by someone else; adding it back");
                            if let Err(e) = addr.add() {
                                tracing::error!(error = %e, "cannot add the virtual IP back");
                            }
                            h.last_announce = Instant::now() - ANNOUNCE_REFRESH;
                        }
                        if h.last_announce.elapsed() >= ANNOUNCE_REFRESH {
                            h.last_announce = Instant::now();
                            if let Err(e) = announcer.announce() {
                                tracing::warn!(error = %e, "announcement failed");
                            }
                        }
                    }
                }
            }
        }
        // Give the address up before the lease is released, so nobody else can take it
        // while this server still answers for it.
        if let Some(h) = holding.take() {
            self.give_up(&addr, h, "shutting down").await;
        }
        let _ = elector_stop.send(());
        let _ = elector.await;
    }

    async fn take(
        &self,
        addr: &VipAddress,
        announcer: &Arc<Announcer>,
        epoch: i64,
    ) -> Option<Holding> {
        // Wall-clock time (the log's clock) before the netlink call: the address is nobody's
        // here yet, so a log reader can order this holder's start against the old holder's
        // "gave up" line, which is written after its address was gone.
        let add_started = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        if let Err(e) = addr.add() {
            tracing::error!(error = %e, "cannot add the virtual IP; not acting as holder");
            return None;
        }
        let burst = {
            let announcer = announcer.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                for at in BURST {
                    tokio::time::sleep_until(start + at).await;
                    if let Err(e) = announcer.announce() {
                        tracing::warn!(error = %e, "announcement failed");
                    }
                }
            })
        };
        tracing::info!(vip = %addr.ip, iface = %addr.iface, epoch, add_started, "took the virtual IP");
        if let Some(api) = &self.api {
            api.metrics.vip_holder(addr.ip).set(1);
        }
        let (lb_stop, lb) = match self.start_lb().await {
            Ok((stop, task)) => (Some(stop), Some(task)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the load balancer on the virtual IP; clients reach this server directly");
                (None, None)
            }
        };
        Some(Holding {
            epoch,
            burst,
            lb_stop,
            lb,
            last_announce: Instant::now(),
        })
    }

    async fn give_up(&self, addr: &VipAddress, h: Holding, reason: &str) {
        h.burst.abort();
        if let Err(e) = addr.remove() {
            tracing::error!(error = %e, "cannot remove the virtual IP");
        }
        tracing::info!(vip = %addr.ip, epoch = h.epoch, reason, "gave up the virtual IP");
        if let Some(api) = &self.api {
            api.metrics.vip_holder(addr.ip).set(0);
            if let Ok(mut slot) = api.lb_stats.lock() {
                *slot = None;
            }
        }
        if let Some(stop) = h.lb_stop {
            let _ = stop.send(());
        }
        if let Some(lb) = h.lb {
            // The address is gone, so the balancer's connections cannot go on; do not wait
            // for its drain here.
            tokio::spawn(async move {
                let _ = lb.await;
            });
        }
    }

    async fn start_lb(&self) -> Result<(oneshot::Sender<()>, JoinHandle<()>), String> {
        let cfg = lb::Config {
            listen: SocketAddr::new(self.cfg.ip, self.cfg.lb_port),
            max_connections: self.cfg.lb_max_connections,
            // The balancer is only stopped after the address was removed: its clients' packets
            // now reach the new holder, so its connections cannot go on and draining them
            // would only hold up a shutdown (and, through the API's drain, the exit).
            drain_grace: Duration::ZERO,
            ..lb::Config::default()
        };
        let balancer = lb::LoadBalancer::bind(cfg)
            .await
            .map_err(|e| e.to_string())?;
        let tls = crate::agent::https::tls_config(&self.ca_pem, None).map_err(|e| e.to_string())?;
        let Some(api) = &self.api else {
            return Err("no API".into());
        };
        if let Ok(mut slot) = api.lb_stats.lock() {
            *slot = Some(Arc::new(balancer.stats()));
        }
        let backends = with_self(api.tunnels.servers(), api.server_address.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(balancer.run(backends, lb::Check::Readyz(tls), async {
            let _ = stop_rx.await;
        }));
        Ok((stop_tx, task))
    }
}

/// The published server list, always with this server in it: a server that just started (or
/// just took over) may not see itself, or the others, in the list for a few seconds, and its
/// balancer must never be left without a backend.
fn with_self(
    mut servers: watch::Receiver<Vec<String>>,
    own: String,
) -> watch::Receiver<Vec<String>> {
    let merge = move |mut list: Vec<String>| {
        if !list.contains(&own) {
            list.push(own.clone());
            list.sort();
        }
        list
    };
    let (tx, rx) = watch::channel(merge(servers.borrow_and_update().clone()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                changed = servers.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tx.send_replace(merge(servers.borrow_and_update().clone()));
                }
            }
        }
    });
    rx
}
