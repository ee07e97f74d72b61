//! Cluster DNS served by the node itself (no CoreDNS pods): a consumer of the node's network
//! view that keeps the cluster's records ([`zone`]) current and serves them on the cluster DNS
//! address ([`link`], [`server`]), forwarding other names to the node's resolvers
//! ([`forward`]). [`message`] is the IO-free request/reply handling.
//!
//! Level-triggered: on every change of the view the whole zone is rebuilt from it (a few
//! hundred microseconds for a thousand Services) and swapped in; the address and sockets
//! follow `ClusterNetwork.cluster_dns`. The task ends when the node's [`Network`] goes
//! (its doorbell closes), and dropping it removes the link and closes the sockets.

pub mod forward;
pub mod link;
pub mod message;
pub mod server;
pub mod zone;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::network::Network;
use forward::Forwarder;
use server::Resolver;
use zone::Zone;

/// How long to wait before trying again to take the address or port 53.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Link(#[from] link::Error),
    #[error(
        "cannot listen on {addr}: {source} (is another DNS server using port 53 on this address?)"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Starts the node's DNS server; it lives as long as `network` does.
pub fn spawn(network: &Arc<Network>, resolv_conf: PathBuf) {
    let changes = network.subscribe();
    let weak = Arc::downgrade(network);
    tokio::spawn(run(weak, changes, resolv_conf).instrument(tracing::info_span!("dns")));
}

/// The address being served and the tasks serving it; dropping it stops both.
struct Serving {
    ip: IpAddr,
    /// Dropped before the link, so no task outlives the address it answers on.
    _tasks: JoinSet<()>,
    link: link::DnsLink,
}

async fn run(network: Weak<Network>, mut changes: watch::Receiver<u64>, resolv_conf: PathBuf) {
    let forwarder = Arc::new(Forwarder::from_resolv_conf(&resolv_conf));
    tracing::info!(upstreams = ?forwarder.upstreams(), file = %resolv_conf.display(), "cluster DNS forwards other names here");
    let (zone_tx, zone_rx) = watch::channel(Arc::new(Zone::default()));
    let resolver = Arc::new(Resolver::new(zone_rx, forwarder));
    let mut serving: Option<Serving> = None;
    // Said once per distinct failure, not on every retry.
    let mut last_error = String::new();
    loop {
        let Some(net) = network.upgrade() else { return };
        changes.borrow_and_update();
        // Cloning the view is a few reference counts per object; building happens unlocked.
        let view = net.read(|v| v.clone());
        drop(net);
        let wanted = view.cluster.as_ref().and_then(|c| c.cluster_dns);
        zone_tx.send_replace(Arc::new(Zone::build(&view)));
        drop(view);
        if serving.as_ref().map(|s| s.ip) != wanted {
            serving = None;
            if let Some(ip) = wanted {
                match Serving::start(ip, &resolver).await {
                    Ok(s) => {
                        tracing::info!(%ip, interface = s.link.interface, "serving cluster DNS");
                        serving = Some(s);
                        last_error.clear();
                    }
                    Err(e) if e.to_string() != last_error => {
                        last_error = e.to_string();
                        tracing::warn!(error = %e, retry_every = ?RETRY, "cannot serve cluster DNS");
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot serve cluster DNS yet"),
                }
            }
        }
        let retry = wanted.is_some() && serving.is_none();
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RETRY), if retry => {}
        }
    }
}

// === impl Serving ===

impl Serving {
    async fn start(ip: IpAddr, resolver: &Arc<Resolver>) -> Result<Serving, Error> {
        let link = link::DnsLink::ensure(ip)?;
        let addr = SocketAddr::new(ip, 53);
        let bound = async {
            let udp = UdpSocket::bind(addr).await?;
            Ok::<_, std::io::Error>((udp, TcpListener::bind(addr).await?))
        };
        let (udp, tcp) = match bound.await {
            Ok(sockets) => sockets,
            Err(source) => {
                // Port 53 is someone else's (another keelson on this host, or a resolver):
                // the address they answer on stays.
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    link.release();
                }
                return Err(Error::Listen { addr, source });
            }
        };
        let mut tasks = JoinSet::new();
        tasks.spawn(server::serve_udp(Arc::new(udp), resolver.clone()).in_current_span());
        tasks.spawn(server::serve_tcp(tcp, resolver.clone()).in_current_span());
        Ok(Serving {
            ip,
            _tasks: tasks,
            link,
        })
    }
}

#[cfg(test)]
mod tests;
