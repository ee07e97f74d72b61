//! LoadBalancer addresses on the LAN: this node contends for the addresses it is a candidate
//! for, holds those whose lease its server grants, and puts them on its interface and
//! announces them (gratuitous ARP / unsolicited NA, the virtual IP's code).
//!
//! Who contends is computed from the network view alone ([`crate::api::network::lb_candidates`]:
//! the ready, eligible nodes ranked by a rendezvous hash, the first two), so every node agrees
//! without talking, and the database sees at most two contenders per address. The lease
//! `keelson-lb-<address>` lives in the database; agents have none, so renewals go up the
//! transport ([`Link`]) and the server does the compare-and-swap (see
//! [`crate::tunnel::lb`]). When to hold is decided by [`claims`], IO-free; this module only
//! carries out its actions.
//!
//! Invariants (no split brain, as for the virtual IP): an address is on the interface only
//! while [`claims::Claims`] says it is held, which ends on this node's monotonic clock before
//! the lease can expire for the standby; on stop every address is removed *before* any lease
//! is released. An address of a LoadBalancer Service found on the interface without being held
//! (left by a crash) is removed, and so is one this node recorded as held before a crash
//! (`<data-dir>/agent/lb-addresses`, rewritten at each change) that no Service has any more:
//! the Service may have been deleted while the node was down. Runs only where Service rules run (not with
//! `--disable-kube-proxy`): holding an address is useless without the rules that forward it.

pub mod claims;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use self::claims::{Action, Claims, Grant, Request, Timing};
use super::network::{Network, View};
use crate::api::network::{lb_addresses, lb_candidates};
use crate::vip::address::VipAddress;
use crate::vip::announce::Announcer;
use crate::vip::{ANNOUNCE_REFRESH, BURST};

/// Requests queued for the transport; past this a renewal is dropped (it counts as lost).
const REQUEST_QUEUE: usize = 64;
/// Grants queued from the transport; past this one is dropped (the hold only gets shorter).
const GRANT_QUEUE: usize = 64;
/// How long a stopping transport waits for the holder to let go and ask for the releases.
pub const LET_GO_WAIT: Duration = Duration::from_secs(2);

/// The task that holds this node's LoadBalancer addresses; built with the runtime, spawned by
/// the transport, which keeps the [`Link`].
pub struct Holder {
    network: Arc<Network>,
    /// Where the held addresses are recorded, so a restart after a crash finds what it left.
    record: std::path::PathBuf,
    /// `--flannel-iface`, else the interface that holds `host_ip`.
    iface: Option<String>,
    host_ip: Option<IpAddr>,
    requests: mpsc::Sender<Request>,
    grants: mpsc::Receiver<Grant>,
    link: Link,
}

/// The transport's end: requests to send to the server, and a place for its grants. Closed
/// (requests end) once the holder has let everything go.
pub struct Link {
    pub requests: mpsc::Receiver<Request>,
    pub grants: mpsc::Sender<Grant>,
}

/// An address this node holds and has on its interface.
struct Announced {
    addr: VipAddress,
    epoch: i64,
    /// `None` when no announcement socket could be made (logged; the kernel still answers
    /// ARP requests for the address).
    announcer: Option<Arc<Announcer>>,
    burst: Option<JoinHandle<()>>,
    last_announce: Instant,
}

// === impl Holder ===

impl Holder {
    pub fn new(
        network: Arc<Network>,
        iface: Option<String>,
        host_ip: Option<IpAddr>,
        record: std::path::PathBuf,
    ) -> Holder {
        let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (grants_tx, grants) = mpsc::channel(GRANT_QUEUE);
        Holder {
            network,
            record,
            iface,
            host_ip,
            requests,
            grants,
            link: Link {
                requests: requests_rx,
                grants: grants_tx,
            },
        }
    }

    /// Runs until `stop` flips, in its own task; the transport carries the returned link.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> Link {
        let Holder {
            network,
            record,
            iface,
            host_ip,
            requests,
            grants,
            link,
        } = self;
        let span = tracing::info_span!("loadbalancer", node = %network.node());
        let iface = iface.or_else(|| host_ip.and_then(crate::vip::interface_of));
        tokio::spawn(
            Driver {
                network,
                requests,
                grants,
                on: BTreeMap::new(),
                recorded: read_record(&record),
                record,
            }
            .run(iface, stop)
            .instrument(span),
        );
        link
    }
}

struct Driver {
    network: Arc<Network>,
    requests: mpsc::Sender<Request>,
    grants: mpsc::Receiver<Grant>,
    /// Invariant: exactly the addresses [`Claims`] holds.
    on: BTreeMap<IpAddr, Announced>,
    record: std::path::PathBuf,
    /// What the record says; `None` once written for this process (then it is `on`).
    recorded: Option<BTreeSet<IpAddr>>,
}

impl Driver {
    async fn run(mut self, iface: Option<String>, mut stop: watch::Receiver<bool>) {
        let Some(iface) = iface else {
            // Contending without a place to put the address would only keep it dark.
            tracing::error!(
                "no interface holds the node's address; this node holds no LoadBalancer addresses (pass --flannel-iface)"
            );
            return;
        };
        let node = self.network.node().to_owned();
        let mut wake = self.network.subscribe();
        // The servers' `--service-lb-*` timing, from the network view (the default until then):
        // a holder that vanishes is replaced about one lease duration (plus one retry period)
        // later, at one statement per retry period per candidate.
        let mut claims = Claims::new(Timing::from(crate::api::network::LbTiming::default()));
        // The view's addresses and this node's candidacies, worked out again only when the
        // view changes (passes run several times a second while renewing).
        let mut seen: Option<(u64, BTreeSet<IpAddr>, BTreeSet<IpAddr>)> = None;
        loop {
            let generation = *wake.borrow_and_update();
            if seen.as_ref().is_none_or(|(g, _, _)| *g != generation) {
                let timing = self
                    .network
                    .read(|v| v.cluster.as_ref().map(|c| Timing::from(c.lb_timing)));
                if let Some(t) = timing.filter(|t| *t != claims.timing()) {
                    tracing::info!(lease = ?t.lease, renew_deadline = ?t.renew_deadline, retry = ?t.retry, "load-balancer lease timing");
                    claims.set_timing(t);
                }
                seen = self.network.read(|v| {
                    v.synced.then(|| {
                        let (all, mine) = wanted(v, &node);
                        (generation, all, mine)
                    })
                });
            }
            if let Some((_, all, wanted)) = &seen {
                // Held before a crash and no Service's any more: nothing else would remove it.
                if let Some(before) = self.recorded.take() {
                    self.forget_orphans(&before, all, &iface);
                }
                let actions = claims.step(wanted, Instant::now());
                self.act(actions, &iface);
                self.tend(all, &iface);
            }
            let at = claims
                .next_wake()
                .unwrap_or_else(|| Instant::now() + ANNOUNCE_REFRESH);
            tokio::select! {
                _ = crate::apiserver::stopped(&mut stop) => break,
                changed = wake.changed() => if changed.is_err() { break },
                Some(g) = self.grants.recv() => {
                    let actions = claims.grant(g, Instant::now());
                    self.act(actions, &iface);
                }
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        let actions = claims.shutdown();
        self.act(actions, &iface);
        // Dropping `requests` here tells the transport that everything was let go.
    }

    fn act(&mut self, actions: Vec<Action>, iface: &str) {
        let before: Vec<IpAddr> = self.on.keys().copied().collect();
        self.carry_out(actions, iface);
        if self.on.keys().copied().ne(before) {
            self.write_record();
        }
    }

    /// Removes the addresses a previous process recorded as held that are on the interface
    /// and belong to no LoadBalancer Service now (those that do, `tend` looks after).
    fn forget_orphans(&self, before: &BTreeSet<IpAddr>, all: &BTreeSet<IpAddr>, iface: &str) {
        let present = addresses_on(iface);
        for address in before
            .iter()
            .filter(|a| !all.contains(a) && present.contains(a))
        {
            tracing::warn!(%address, %iface, "removing a load-balancer address held before a restart whose Service is gone");
            match VipAddress::new(*address, iface).map(|a| a.remove()) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot remove the address"),
                Err(e) => tracing::error!(error = %e, "cannot remove the address"),
            }
        }
    }

    /// Records the held addresses (write beside, then rename: a crash leaves the old or the
    /// new list, never half of one).
    fn write_record(&self) {
        let text: String = self.on.keys().map(|a| format!("{a}\n")).collect();
        let tmp = self.record.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.record));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %self.record.display(), "cannot record the load-balancer addresses held");
        }
    }

    fn carry_out(&mut self, actions: Vec<Action>, iface: &str) {
        for action in actions {
            match action {
                Action::Send(req) => {
                    if let Err(e) = self.requests.try_send(req) {
                        tracing::debug!(error = %e, "the transport's queue is full; a load-balancer request is dropped");
                    }
                }
                Action::Take { address, epoch } => self.take(address, epoch, iface),
                Action::LetGo { address, why } => {
                    if let Some(a) = self.on.remove(&address) {
                        if let Some(b) = a.burst {
                            b.abort();
                        }
                        if let Err(e) = a.addr.remove() {
                            tracing::error!(error = %e, "cannot remove the load-balancer address");
                        }
                        tracing::info!(%address, iface = %a.addr.iface, epoch = a.epoch, reason = why.reason(), "gave up the load-balancer address");
                    }
                }
            }
        }
    }

    fn take(&mut self, address: IpAddr, epoch: i64, iface: &str) {
        let addr = match VipAddress::new(address, iface) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, %address, "cannot hold the load-balancer address");
                return;
            }
        };
        if let Err(e) = addr.add() {
            // Tried again by `tend` every pass while the lease is held.
            tracing::error!(error = %e, "cannot add the load-balancer address");
        }
        let announcer = match Announcer::new(address, iface, addr.index) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                tracing::error!(error = %e, "cannot announce the load-balancer address");
                None
            }
        };
        let burst = announcer.clone().map(|a| {
            tokio::spawn(async move {
                let start = Instant::now();
                for at in BURST {
                    tokio::time::sleep_until(start + at).await;
                    if let Err(e) = a.announce() {
                        tracing::warn!(error = %e, "announcement failed");
                    }
                }
            })
        });
        tracing::info!(%address, %iface, epoch, "took the load-balancer address");
        self.on.insert(
            address,
            Announced {
                addr,
                epoch,
                announcer,
                burst,
                last_announce: Instant::now(),
            },
        );
    }

    /// Keeps held addresses on the interface and announced; removes LoadBalancer addresses
    /// this node has on the interface but does not hold (left by a crash).
    fn tend(&mut self, all: &BTreeSet<IpAddr>, iface: &str) {
        let present = addresses_on(iface);
        for (address, a) in &mut self.on {
            if !present.contains(address) {
                tracing::warn!(%address, %iface, "the load-balancer address is not on the interface; adding it");
                if let Err(e) = a.addr.add() {
                    tracing::error!(error = %e, "cannot add the load-balancer address");
                }
                a.last_announce = Instant::now() - ANNOUNCE_REFRESH;
            }
            if a.last_announce.elapsed() >= ANNOUNCE_REFRESH {
                a.last_announce = Instant::now();
                if let Some(announcer) = &a.announcer
                    && let Err(e) = announcer.announce()
                {
                    tracing::warn!(error = %e, "announcement failed");
                }
            }
        }
        for address in all.iter().filter(|a| present.contains(a)) {
            if self.on.contains_key(address) {
                continue;
            }
            tracing::warn!(%address, %iface, "removing a load-balancer address this node does not hold");
            match VipAddress::new(*address, iface).map(|a| a.remove()) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot remove the address"),
                Err(e) => tracing::error!(error = %e, "cannot remove the address"),
            }
        }
    }
}

// === impl Link ===

impl Link {
    /// The holder's next request; never once it has stopped, nor without a link.
    pub async fn next(link: &mut Option<Link>) -> Request {
        if let Some(l) = link
            && let Some(req) = l.requests.recv().await
        {
            return req;
        }
        std::future::pending().await
    }

    /// On shutdown: the requests (releases) the holder makes while it lets go, until it has
    /// (its end closes), for at most [`LET_GO_WAIT`].
    pub async fn let_go(&mut self) -> Vec<Request> {
        let mut out = Vec::new();
        let drain = async {
            while let Some(req) = self.requests.recv().await {
                if matches!(req, Request::Release { .. }) {
                    out.push(req);
                }
            }
        };
        if tokio::time::timeout(LET_GO_WAIT, drain).await.is_err() {
            tracing::warn!(
                "the load-balancer holder did not stop in time; its leases will expire instead"
            );
        }
        out
    }
}

/// Every LoadBalancer address in the view, and those this node is a candidate for.
fn wanted(view: &View, node: &str) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let all = lb_addresses(
        view.services.values().map(|s| &**s),
        view.nodes.values().map(|n| &**n),
    );
    let mine = all
        .iter()
        .filter(|a| lb_candidates(**a, view.nodes.values().map(|n| &**n)).contains(&node))
        .copied()
        .collect();
    (all, mine)
}

/// The addresses a previous process recorded as held (none if there is no record; lines that
/// are no address are skipped).
fn read_record(path: &std::path::Path) -> Option<BTreeSet<IpAddr>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The addresses on `iface` now.
fn addresses_on(iface: &str) -> HashSet<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return HashSet::new();
    };
    addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| {
            let s = a.address?;
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}
