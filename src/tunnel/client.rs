//! The agent end of a tunnel: open it, say Hello, keep it alive, follow the server list, and
//! carry the node's pod traffic (assignments down to its [`PodLink`], status reports up, the
//! runtime's reads of ConfigMaps and Secrets, and dial-backs for streams).

use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{
    DEAD_AFTER, Down, NodeReport, PATH, PING_INTERVAL, PROTOCOL_VERSION, STREAM_PATH, Up,
    agent_ws_config, decode_down, encode,
};
use crate::agent::https::{self, Target};
use crate::node::loadbalancer::Link;
use crate::node::loadbalancer::claims::Request;
use crate::node::objects::Answer;
use crate::node::pods::{PodEvent, PodLink};
use crate::node::streams::{Pipe, StreamRequest, StreamServer};

/// Most reads of objects in flight on one tunnel; more wait in the runtime's queue.
const MAX_GETS: usize = 32;

pub type Tunnel = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why opening a tunnel failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Transport(#[from] https::Error),
    /// The server answered, but not with an upgrade (401/403: the credentials; 503: full).
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
}

/// How a tunnel session ended.
#[derive(Debug)]
pub enum Outcome {
    /// The connection broke, or the server went silent or away.
    Lost(String),
    /// The server refused to keep the tunnel (bad report, version, datastore trouble).
    Refused(String),
    /// Time to renew the client certificate.
    Renew,
    Shutdown,
}

pub async fn connect(target: &Target) -> Result<Tunnel, ConnectError> {
    match target.upgrade(PATH).await? {
        Ok(io) => {
            Ok(WebSocketStream::from_raw_socket(io, Role::Client, Some(agent_ws_config())).await)
        }
        Err((status, body)) => Err(ConnectError::Refused {
            status,
            message: crate::agent::join::status_message(&body),
        }),
    }
}

/// Runs one tunnel until it ends. `servers` receives every server list the server sends.
pub async fn session(
    ws: &mut Tunnel,
    target: &Target,
    reports: &mut watch::Receiver<NodeReport>,
    mut servers: impl FnMut(Vec<String>),
    renew_at: Instant,
    stop: &mut watch::Receiver<bool>,
    pods: &mut PodLink,
) -> Outcome {
    let report = reports.borrow_and_update().clone();
    let hello = Up::Hello {
        version: PROTOCOL_VERSION,
        report: report.clone(),
        network: pods.network.is_some(),
    };
    let frame = match encode(&hello) {
        Ok(f) => f,
        Err(e) => return Outcome::Refused(format!("cannot send this node's report: {e}")),
    };
    if let Err(e) = ws.send(Message::Binary(frame.into())).await {
        return Outcome::Lost(e.to_string());
    }
    let addr = target.addr.as_str();
    let mut welcomed = false;
    // Reads of objects waiting for their answer, by id; dropped (answered "lost") with the
    // session.
    let mut gets: HashMap<u32, oneshot::Sender<Answer>> = HashMap::new();
    let mut next_get: u32 = 0;
    let mut last_heard = Instant::now();
    // Reports end only when the node's pod worker has stopped (the agent is stopping).
    let mut reports_open = true;
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Renewals queued while no tunnel was open are stale: their grants would only shorten
    // the hold, and each costs the server a statement. Releases still count.
    if let Some(lb) = pods.lb.as_mut() {
        let mut releases = Vec::new();
        while let Ok(req) = lb.requests.try_recv() {
            if matches!(req, Request::Release { .. }) {
                releases.push(req);
            }
        }
        for frame in releases.into_iter().filter_map(lb_frame) {
            if let Err(e) = ws.send(Message::Binary(frame.into())).await {
                return Outcome::Lost(e.to_string());
            }
        }
    }
    loop {
        tokio::select! {
            _ = crate::apiserver::stopped(stop) => {
                // The node's LoadBalancer addresses go first, then their leases, so the
                // standby takes over at once instead of after the lease expires.
                if let Some(lb) = pods.lb.as_mut() {
                    for req in lb.let_go().await {
                        if let Some(frame) = lb_frame(req) {
                            let _ = ws.send(Message::Binary(frame.into())).await;
                        }
                    }
                }
                let _ = ws.close(None).await;
                return Outcome::Shutdown;
            }
            _ = tokio::time::sleep_until(renew_at) => {
                let _ = ws.close(None).await;
                return Outcome::Renew;
            }
            _ = tokio::time::sleep_until(last_heard + DEAD_AFTER) => {
                return Outcome::Lost(format!("the server was silent for {DEAD_AFTER:?}"));
            }
            _ = ping.tick() => {
                if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                    return Outcome::Lost(e.to_string());
                }
            }
            r = reports.changed() => {
                if r.is_err() {
                    continue;
                }
                // A new measurement (pressure) or address: at most every REPORT_INTERVAL.
                let next = reports.borrow_and_update().clone();
                match encode(&Up::Report(next)) {
                    Ok(frame) => {
                        if let Err(e) = ws.send(Message::Binary(frame.into())).await {
                            return Outcome::Lost(e.to_string());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "the node's report does not fit in a tunnel frame"),
                }
            }
            r = pods.reports.recv(), if reports_open => match r {
                Some(report) => match encode(&Up::PodStatus(report)) {
                    Ok(frame) => {
                        if let Err(e) = ws.send(Message::Binary(frame.into())).await {
                            return Outcome::Lost(e.to_string());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "a pod status does not fit in a tunnel frame; not reported"),
                },
                None => reports_open = false,
            },
            req = Link::next(&mut pods.lb) => {
                if let Some(frame) = lb_frame(req)
                    && let Err(e) = ws.send(Message::Binary(frame.into())).await
                {
                    return Outcome::Lost(e.to_string());
                }
            }
            Some(note) = pods.notes.recv() => {
                match encode(&Up::Event(note)) {
                    Ok(frame) => {
                        if let Err(e) = ws.send(Message::Binary(frame.into())).await {
                            return Outcome::Lost(e.to_string());
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "an event does not fit in a tunnel frame; dropped"),
                }
            }
            Some(req) = pods.objects.recv(), if gets.len() < MAX_GETS => {
                next_get = next_get.wrapping_add(1);
                match encode(&Up::Get { id: next_get, object: req.wanted }) {
                    Ok(frame) => {
                        gets.insert(next_get, req.reply);
                        if let Err(e) = ws.send(Message::Binary(frame.into())).await {
                            return Outcome::Lost(e.to_string());
                        }
                    }
                    Err(e) => {
                        let _ = req.reply.send(Err((400, e.to_string())));
                    }
                }
            }
            m = ws.next() => {
                last_heard = Instant::now();
                match m {
                    None => return Outcome::Lost("the server closed the connection".into()),
                    Some(Err(e)) => return Outcome::Lost(e.to_string()),
                    Some(Ok(Message::Close(frame))) => {
                        return Outcome::Lost(match frame {
                            Some(f) => format!("the server closed the tunnel: {}", f.reason),
                            None => "the server closed the tunnel".into(),
                        });
                    }
                    Some(Ok(Message::Binary(b))) => match decode_down(&b) {
                        Ok(Down::Welcome { version, servers: list }) => {
                            // The server answers with the version it agreed to: ours or older.
                            if super::negotiate(version) != Ok(version) {
                                return Outcome::Refused(format!("the server agreed to protocol {version}, this agent speaks {}..={PROTOCOL_VERSION}", super::MIN_PROTOCOL_VERSION));
                            }
                            if !welcomed {
                                welcomed = true;
                                tracing::info!(server = addr, node = %report.name, "tunnel connected");
                            }
                            servers(list);
                        }
                        Ok(Down::Servers(list)) => servers(list),
                        Ok(Down::Refused(why)) => return Outcome::Refused(why),
                        Ok(Down::PodsListing) => forward(pods, PodEvent::Listing).await,
                        Ok(Down::Pod(a)) => forward(pods, PodEvent::Assigned(a)).await,
                        Ok(Down::PodGone(key)) => forward(pods, PodEvent::Gone(key)).await,
                        Ok(Down::PodsListed) => forward(pods, PodEvent::Listed).await,
                        Ok(Down::Net(ev)) => {
                            if let Some(network) = &pods.network {
                                network.apply(ev);
                            }
                        }
                        Ok(Down::LbGrant(grant)) => {
                            if let Some(lb) = &pods.lb {
                                // A grant that does not fit only shortens the node's hold.
                                let _ = lb.grants.try_send(grant);
                            }
                        }
                        Ok(Down::Object { id, result }) => {
                            if let Some(reply) = gets.remove(&id) {
                                let _ = reply.send(result);
                            }
                        }
                        Ok(Down::Dial { id, request, server }) => {
                            // Another server's client: dial that server, with the same trust.
                            let to = match server {
                                None => Ok(target.clone()),
                                Some(addr) => Target::new(&addr, target.tls.clone()),
                            };
                            match to {
                                Ok(to) => {
                                    tokio::spawn(dial(to, id, request, pods.streams.clone()));
                                }
                                Err(e) => tracing::warn!(error = %e, "cannot dial the server a stream is for"),
                            }
                        }
                        Err(e) => return Outcome::Lost(format!("bad frame from the server: {e}")),
                    },
                    Some(Ok(_)) => {
                        // Pongs and pings (tungstenite answers pings itself).
                        let _ = ws.flush().await;
                    }
                }
            }
        }
    }
}

/// Dials the server back for stream `id` and serves `request` on the new connection. The
/// node's certificate authenticates it, as for the tunnel.
async fn dial(target: Target, id: u64, request: StreamRequest, server: Arc<dyn StreamServer>) {
    let path = format!("{STREAM_PATH}/{id}");
    let io = match target.upgrade(&path).await {
        Ok(Ok(io)) => io,
        Ok(Err((status, _))) => {
            tracing::warn!(server = %target.addr, %status, "the server refused a stream dial-back");
            return;
        }
        Err(e) => {
            tracing::warn!(server = %target.addr, error = %e, "cannot dial the server back for a stream");
            return;
        }
    };
    let ws =
        WebSocketStream::from_raw_socket(io, Role::Client, Some(super::streams::ws_config())).await;
    let (near, far) = Pipe::pair();
    tokio::join!(super::streams::pump(ws, near), server.serve(request, far));
}

/// The frame for a request of the node's LoadBalancer holder.
fn lb_frame(req: Request) -> Option<Vec<u8>> {
    let up = match req {
        Request::Renew { address, seq } => Up::LbRenew { address, seq },
        Request::Release { address } => Up::LbRelease { address },
    };
    encode(&up)
        .inspect_err(|e| tracing::warn!(error = %e, "a load-balancer request does not fit in a tunnel frame"))
        .ok()
}

/// Hands a pod event to the node's worker. Waiting here holds the tunnel's reads back, which
/// is the back-pressure we want; a worker that has stopped only means the agent is stopping.
async fn forward(pods: &PodLink, ev: PodEvent) {
    let _ = pods.events.send(ev).await;
}
