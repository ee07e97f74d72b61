//! Services on this node: keeps the `keelson-services` nftables table in step with the
//! node's network view (Services and EndpointSlices as the server sends them), as kube-proxy's
//! nftables mode does. [`rules`] says what the table must hold; [`nft`] applies it.
//!
//! Level-triggered: on every change of the view the whole ruleset is rendered again and
//! compared with what the table holds ([`rules::Programmed`], hashes only), and only the
//! difference is sent, as one transaction. The first pass, a pass after a failed
//! transaction and one every [`RESYNC`] replace the whole table (also one transaction), so a
//! table edited by hand or left by an older process is put right.
//!
//! Invariants: nothing is programmed before the view's first listing (absence would read as
//! "deleted"); after a failed transaction the table is as before it and the next attempt,
//! after a growing delay, is a full one. The table is left in place when the node stops, so
//! Service traffic keeps flowing while keelson restarts (as kube-proxy's rules do).

pub mod nft;
pub mod rules;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::network::Network;
use rules::{Context, Programmed, Ruleset, Skip};

/// How often the whole table is written again as a safety net (kube-proxy: hourly).
pub const RESYNC: Duration = Duration::from_secs(3600);
/// First wait after a failed transaction; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Skips remembered to log each only once while it lasts.
const SKIPS_REMEMBERED: usize = 1024;

/// The task that programs Service rules; built with the node's runtime, run with the node.
pub struct ServiceRules {
    network: Arc<Network>,
    nft: nft::Nft,
}

/// What a pass needs from the view, copied out so the view's lock is held only briefly.
struct Snapshot {
    cluster_cidrs: Vec<crate::api::cidr::Cidr>,
    cluster_dns: Option<std::net::IpAddr>,
    services: Vec<Arc<crate::api::network::ServiceInfo>>,
    slices: Vec<Arc<crate::api::network::SliceInfo>>,
}

impl ServiceRules {
    pub fn new(network: Arc<Network>) -> ServiceRules {
        ServiceRules {
            network,
            nft: nft::Nft::new("nft"),
        }
    }

    /// With another `nft` binary (tests).
    #[cfg(test)]
    pub fn with_nft(mut self, nft: nft::Nft) -> ServiceRules {
        self.nft = nft;
        self
    }

    /// Runs until `stop` flips, in its own task.
    pub fn spawn(self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let span = tracing::info_span!("services", node = %self.network.node());
        tokio::spawn(self.run(stop).instrument(span))
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut wake = self.network.subscribe();
        let mut state = State::default();
        loop {
            wake.borrow_and_update();
            let now = Instant::now();
            if state.retry_at.is_none_or(|at| at <= now) {
                state.retry_at = None;
                self.pass(&mut state, now).await;
            }
            let deadline = state.retry_at.unwrap_or(state.next_full);
            tokio::select! {
                _ = crate::apiserver::stopped(&mut stop) => return,
                changed = wake.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// One look at the view; programs the difference (or everything, when due).
    async fn pass(&self, state: &mut State, now: Instant) {
        let Some(snap) = self.network.read(|v| {
            v.synced.then(|| Snapshot {
                cluster_cidrs: v
                    .cluster
                    .as_ref()
                    .map(|c| c.cluster_cidrs.clone())
                    .unwrap_or_default(),
                cluster_dns: v.cluster.as_ref().and_then(|c| c.cluster_dns),
                services: v.services.values().cloned().collect(),
                slices: v.slices.values().cloned().collect(),
            })
        }) else {
            return;
        };
        let ctx = Context {
            cluster_cidrs: &snap.cluster_cidrs,
            node: self.network.node(),
            cluster_dns: snap.cluster_dns,
        };
        let (desired, skips) = Ruleset::build(
            &ctx,
            snap.services.iter().map(|s| &**s),
            snap.slices.iter().map(|s| &**s),
        );
        drop(snap);
        state.log_skips(skips);
        let full = now >= state.next_full;
        let script = match &state.programmed {
            Some(p) if !full => match desired.diff(p) {
                Some(s) => s,
                None => return,
            },
            _ => desired.full(),
        };
        let started = std::time::Instant::now();
        match self.nft.apply(&script).await {
            Ok(()) => {
                let programmed = desired.programmed();
                tracing::debug!(
                    full,
                    bytes = script.len(),
                    chains = programmed.chains(),
                    elements = programmed.elements(),
                    took = ?started.elapsed(),
                    "programmed Service rules"
                );
                if state.programmed.is_none() {
                    tracing::info!(
                        chains = programmed.chains(),
                        elements = programmed.elements(),
                        "Service rules programmed (nftables table inet {})",
                        rules::TABLE
                    );
                }
                state.programmed = Some(programmed);
                state.retry = RETRY_MIN;
                if full {
                    state.next_full = now + RESYNC;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?state.retry, "cannot program Service rules; the table keeps its previous rules");
                state.programmed = None;
                state.retry_at = Some(now + state.retry);
                state.retry = (state.retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// What the loop keeps between passes.
struct State {
    /// What the table holds; `None` until a full write succeeded (or after a failure).
    programmed: Option<Programmed>,
    next_full: Instant,
    /// Set after a failure: no attempt before then.
    retry_at: Option<Instant>,
    retry: Duration,
    /// Skips already logged, so a lasting one is logged once.
    logged: HashSet<Skip>,
}

impl Default for State {
    fn default() -> State {
        State {
            programmed: None,
            next_full: Instant::now(),
            retry_at: None,
            retry: RETRY_MIN,
            logged: HashSet::new(),
        }
    }
}

impl State {
    fn log_skips(&mut self, skips: Vec<Skip>) {
        let now: HashSet<Skip> = skips.into_iter().collect();
        for s in now.difference(&self.logged) {
            tracing::warn!(service = %s.service, port = %s.port, "Service port not programmed: {}", s.why);
        }
        self.logged = now;
        if self.logged.len() > SKIPS_REMEMBERED {
            self.logged.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::network::{
        Backend, ClusterNetwork, Endpoint, Key, Protocol, ServiceInfo, ServiceKind, ServicePort,
        SliceInfo, SlicePort, TargetPort,
    };
    use crate::node::network::NetEvent;

    /// A fake `nft` that records each transaction in `dir` (whole, by renaming) and fails if
    /// `dir/fail` existed when it started.
    fn fake_nft(dir: &std::path::Path) -> nft::Nft {
        let script = dir.join("nft");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nd={}\nfail=no; [ -e $d/fail ] && fail=yes\nn=$(ls $d/tx-* 2>/dev/null | wc -l)\ncat > $d/partial\nmv $d/partial $d/tx-$n\n[ $fail = yes ] && {{ echo 'Error: Could not process rule: File exists' >&2; exit 1; }}\nexit 0\n",
                dir.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        nft::Nft::new(script)
    }

    fn transactions(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for n in 0.. {
            match std::fs::read_to_string(dir.join(format!("tx-{n}"))) {
                Ok(s) => out.push(s),
                Err(_) => return out,
            }
        }
        out
    }

    fn service(name: &str, ip: &str) -> NetEvent {
        NetEvent::Service(ServiceInfo {
            key: Key {
                namespace: "default".into(),
                name: name.into(),
            },
            kind: ServiceKind::ClusterIp,
            cluster_ips: vec![ip.parse().unwrap()],
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: None,
            }],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            external_ips: vec![],
            load_balancer_ips: vec![],
            publish_not_ready: false,
        })
    }

    fn slice(name: &str, addr: &str) -> NetEvent {
        NetEvent::Slice(SliceInfo {
            key: Key {
                namespace: "default".into(),
                name: format!("{name}-1"),
            },
            service: name.into(),
            ports: vec![SlicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            endpoints: vec![Endpoint {
                addresses: vec![addr.parse().unwrap()],
                ready: true,
                serving: true,
                terminating: false,
                hostname: None,
                node_name: None,
                pod: None,
            }],
        })
    }

    async fn settle(dir: &std::path::Path, count: usize) -> Vec<String> {
        for _ in 0..500 {
            let tx = transactions(dir);
            if tx.len() >= count {
                return tx;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        transactions(dir)
    }

    /// The task's life: nothing before a listing, a full table first, then only the
    /// difference; a refused transaction leaves the state unknown, so the next one is full.
    #[tokio::test]
    async fn the_first_pass_is_full_then_only_changes_and_a_refusal_brings_a_full_retry() {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::new("pi1");
        let (stop_tx, stop) = watch::channel(false);
        let task = ServiceRules::new(net.clone())
            .with_nft(fake_nft(dir.path()))
            .spawn(stop);
        net.apply(service("web", "198.19.128.10"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            transactions(dir.path()).is_empty(),
            "nothing is programmed before the first listing"
        );
        net.apply(NetEvent::Cluster(ClusterNetwork {
            cluster_cidrs: vec![crate::api::cidr::Cidr::parse("198.19.0.0/17").unwrap()],
            service_cidrs: vec![],
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            backend: Backend::None,
            lb_timing: Default::default(),
        }));
        net.apply(NetEvent::Listing);
        net.apply(service("web", "198.19.128.10"));
        net.apply(slice("web", "198.18.11.2"));
        net.apply(NetEvent::Listed);
        let tx = settle(dir.path(), 1).await;
        assert!(tx[0].starts_with("add table inet keelson-services\ndelete table"));
        assert!(tx[0].contains("198.19.128.10 . tcp . 80"));

        net.apply(service("db", "198.19.128.11"));
        let tx = settle(dir.path(), 2).await;
        assert_eq!(tx.len(), 2);
        assert!(!tx[1].contains("table"), "a change is not a full write");
        assert!(tx[1].contains("198.19.128.11 . tcp . 80 : goto reject-chain"));
        assert!(!tx[1].contains("198.19.128.10"), "web is left alone");

        std::fs::write(dir.path().join("fail"), "").unwrap();
        net.apply(slice("db", "198.18.12.2"));
        let tx = settle(dir.path(), 3).await;
        assert!(!tx[2].contains("delete table"), "{tx:#?}");
        std::fs::remove_file(dir.path().join("fail")).unwrap();
        // The retry comes after RETRY_MIN, as a full write.
        let tx = settle(dir.path(), 4).await;
        assert_eq!(
            tx.len(),
            4,
            "one retry: {:#?}",
            tx.iter()
                .map(|t| t
                    .lines()
                    .filter(|l| !l.starts_with("add rule"))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        assert!(tx[3].contains("delete table inet keelson-services"));
        assert!(tx[3].contains("198.18.12.2"));

        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
