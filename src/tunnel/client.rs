//! The agent end of a tunnel: open it, say Hello, keep it alive, follow the server list, and
//! carry the node's pod traffic (assignments down to its [`PodLink`], status reports up).

use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{
    DEAD_AFTER, Down, NodeReport, PATH, PING_INTERVAL, PROTOCOL_VERSION, Up, decode, encode,
    ws_config,
};
use crate::agent::https::{self, Target};
use crate::node::pods::{PodEvent, PodLink};

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
        Ok(io) => Ok(WebSocketStream::from_raw_socket(io, Role::Client, Some(ws_config())).await),
        Err((status, body)) => Err(ConnectError::Refused {
            status,
            message: crate::agent::join::status_message(&body),
        }),
    }
}

/// Runs one tunnel until it ends. `servers` receives every server list the server sends.
pub async fn session(
    ws: &mut Tunnel,
    addr: &str,
    report: &NodeReport,
    mut servers: impl FnMut(Vec<String>),
    renew_at: Instant,
    stop: &mut watch::Receiver<bool>,
    pods: &mut PodLink,
) -> Outcome {
    let hello = Up::Hello {
        version: PROTOCOL_VERSION,
        report: report.clone(),
    };
    let frame = match encode(&hello) {
        Ok(f) => f,
        Err(e) => return Outcome::Refused(format!("cannot send this node's report: {e}")),
    };
    if let Err(e) = ws.send(Message::Binary(frame.into())).await {
        return Outcome::Lost(e.to_string());
    }
    let mut welcomed = false;
    let mut last_heard = Instant::now();
    // Reports end only when the node's pod worker has stopped (the agent is stopping).
    let mut reports_open = true;
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::apiserver::stopped(stop) => {
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
                    Some(Ok(Message::Binary(b))) => match decode::<Down>(&b) {
                        Ok(Down::Welcome { version, servers: list }) => {
                            if version != PROTOCOL_VERSION {
                                return Outcome::Refused(format!("the server speaks protocol {version}, this agent {PROTOCOL_VERSION}"));
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

/// Hands a pod event to the node's worker. Waiting here holds the tunnel's reads back, which
/// is the back-pressure we want; a worker that has stopped only means the agent is stopping.
async fn forward(pods: &PodLink, ev: PodEvent) {
    let _ = pods.events.send(ev).await;
}
