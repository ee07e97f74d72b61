//! The server end of a tunnel: upgrade an authenticated node's request, then serve frames.
//!
//! Only a client certificate for a node (`system:node:<name>` in `system:nodes`) may open a
//! tunnel, and only for that node. The first frame must be a `Hello` within
//! [`HELLO_TIMEOUT`]; its report registers the node, then the node is heartbeated by this
//! server until the tunnel ends, is sent the pods bound to it, and may report their status
//! (written as the node, see [`super::pods`]). A bad frame ends this tunnel only.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::network::Push as NetPush;
use super::pods::Push;
use super::sessions::Sessions;
use super::{DEAD_AFTER, Down, NodeReport, Up, decode, encode, encode_down, ws_config};
use crate::agent::registration::{self, CONTROL_PLANE_LABEL};
use crate::api::labels;
use crate::apiserver::status::ApiError;
use crate::apiserver::{Api, Body, auth::Identity};
use crate::node::network::NetEvent;
use crate::node::pods::PodAssignment;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most pod events one node may have recorded per second; more are dropped.
const MAX_NOTES_PER_SECOND: u32 = 20;
/// Most object reads (ConfigMaps, Secrets for its pods) one node may make per second; more
/// are answered 429 and the node asks again on its next look. A pod start needs a few; a
/// node starting 100 pods at once spreads over a few seconds instead of loading the database.
const MAX_GETS_PER_SECOND: u32 = 50;
/// Most load-balancer lease requests one node may make per second: one per retry period per
/// address it contends for (5/s each), so room for 20 addresses on one node.
const MAX_LB_PER_SECOND: u32 = 100;
/// Shortest time between two node reports that change something.
const REPORT_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Answers a tunnel request: 101 and a spawned session, or an error status.
pub fn accept(
    api: Arc<Api>,
    sessions: Arc<Sessions>,
    id: &Identity,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let node = match id.node_name() {
        Some(n) => n.to_owned(),
        None if matches!(id, Identity::Anonymous) => return Err(ApiError::Unauthorized),
        None => {
            return Err(ApiError::Forbidden(
                "only nodes may open a tunnel: use the node client certificate the agent got when it joined".into(),
            ));
        }
    };
    let accept = crate::apiserver::upgrade::accept_key(req.headers())?;
    let Some(share) = sessions.node_tunnel(&node) else {
        sessions.tunnel_refused();
        tracing::warn!(%node, limit = super::sessions::MAX_TUNNELS_PER_NODE, "tunnel refused: the node holds the most tunnels one node may");
        return Err(ApiError::TooManyRequests(format!(
            "node {node:?} already holds {} tunnels to this server, the most one node may; close one first",
            super::sessions::MAX_TUNNELS_PER_NODE
        )));
    };
    let Ok(permit) = sessions.tunnel_permits.clone().try_acquire_owned() else {
        sessions.tunnel_refused();
        tracing::warn!(%node, limit = super::sessions::MAX_TUNNELS, "tunnel refused: this server holds the most tunnels it may");
        return Err(ApiError::Unavailable(
            "this server holds as many tunnels as it may; connect to another server".into(),
        ));
    };
    let generation = id.generation().map(str::to_owned);
    tokio::spawn(async move {
        if let Some(ws) =
            crate::apiserver::upgrade::server_websocket(req, ws_config(), "tunnel").await
        {
            serve(api, sessions, node, generation, ws, (permit, share)).await;
        }
    });
    Ok(crate::apiserver::upgrade::switching_protocols(
        &accept, None,
    ))
}

/// Answers a node's dial-back for stream `id` (see [`super::streams`]): 101 and the stream
/// relayed to the API request waiting for it, or 404 if no request of this node waits.
pub fn accept_dial(
    sessions: &Sessions,
    id: &Identity,
    stream: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let Some(node) = id.node_name() else {
        return Err(ApiError::Forbidden(
            "only nodes dial stream connections".into(),
        ));
    };
    let accept = crate::apiserver::upgrade::accept_key(req.headers())?;
    let arrival = stream
        .parse::<u64>()
        .ok()
        .and_then(|n| sessions.streams.arrive(node, n))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "no stream {stream:?} waits for node {node:?} (it timed out, or was for another node)"
            ))
        })?;
    tokio::spawn(async move {
        let config = super::streams::ws_config();
        if let Some(ws) =
            crate::apiserver::upgrade::server_websocket(req, config, "stream dial-back").await
        {
            arrival.deliver(ws).await;
        }
    });
    Ok(crate::apiserver::upgrade::switching_protocols(
        &accept, None,
    ))
}

/// Why a tunnel ended; logged once.
enum End {
    Closed,
    Shutdown,
    Dead,
    Bad(String),
    Refused(String),
}

async fn serve<S>(
    api: Arc<Api>,
    sessions: Arc<Sessions>,
    node: String,
    generation: Option<String>,
    mut ws: WebSocketStream<S>,
    _held: (OwnedSemaphorePermit, super::sessions::NodeTunnel),
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    sessions.tunnel_opened();
    let end = session(&api, &sessions, &node, generation.as_deref(), &mut ws).await;
    let close = |code, reason: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        }))
    };
    match &end {
        End::Closed => tracing::debug!(%node, "tunnel closed by the agent"),
        End::Shutdown => {
            let _ = ws
                .send(close(CloseCode::Away, "server shutting down"))
                .await;
        }
        End::Dead => {
            tracing::info!(%node, after = ?DEAD_AFTER, "tunnel dropped: the agent went silent")
        }
        End::Bad(why) => {
            tracing::warn!(%node, reason = %why, "closing tunnel");
            let _ = ws.send(close(CloseCode::Policy, why)).await;
        }
        End::Refused(why) => {
            tracing::warn!(%node, reason = %why, "tunnel refused");
            if let Ok(frame) = encode(&Down::Refused(why.clone())) {
                let _ = ws.send(Message::Binary(frame.into())).await;
            }
            let _ = ws.send(close(CloseCode::Policy, "refused")).await;
        }
    }
}

async fn session<S>(
    api: &Arc<Api>,
    sessions: &Arc<Sessions>,
    node: &str,
    generation: Option<&str>,
    ws: &mut WebSocketStream<S>,
) -> End
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stop = api.shutdown.clone();
    let first = tokio::select! {
        m = tokio::time::timeout(HELLO_TIMEOUT, ws.next()) => m,
        _ = crate::apiserver::stopped(&mut stop) => return End::Shutdown,
    };
    let (mut report, wants_network, agreed) = match first {
        Err(_) => return End::Bad("no Hello frame within 10 s".into()),
        Ok(None) => return End::Closed,
        Ok(Some(Err(e))) => return End::Bad(e.to_string()),
        Ok(Some(Ok(Message::Binary(b)))) => match decode::<Up>(&b) {
            Ok(Up::Hello {
                version,
                report,
                network,
            }) => match super::negotiate(version) {
                Ok(agreed) => (report, network, agreed),
                Err(why) => return End::Refused(why),
            },
            Ok(other) => return End::Bad(format!("expected Hello first, got {other:?}")),
            Err(e) => return End::Bad(e.to_string()),
        },
        Ok(Some(Ok(other))) => {
            return End::Bad(format!("expected a binary Hello frame, got {other:?}"));
        }
    };
    if let Err(why) = check(node, &report) {
        return End::Refused(why);
    }
    // Boxed here and below: a registration is a datastore round trip whose future is several
    // KiB, and inline it would size every idle tunnel's task for the rare moment it runs.
    if let Err(e) = Box::pin(registration::register(&api.registry, &report, None)).await {
        return End::Refused(format!("cannot register the node: {e}"));
    }
    let _presence = sessions.enter(node);
    let mut servers = sessions.servers();
    let welcome = Down::Welcome {
        version: agreed,
        servers: servers.borrow_and_update().clone(),
    };
    if let Err(e) = send(ws, &welcome).await {
        return End::Bad(e);
    }
    tracing::info!(%node, "tunnel open");
    let mut pods = sessions.pods.listen(node);
    let mut net = wants_network.then(|| sessions.network.listen());
    let mut control = sessions.streams.attach(node);
    let mut last_heard = Instant::now();
    let mut last_report = Instant::now();
    let mut notes = Budget::new(MAX_NOTES_PER_SECOND);
    let mut gets = Budget::new(MAX_GETS_PER_SECOND);
    let mut lb_budget = Budget::new(MAX_LB_PER_SECOND);
    // Made on the first lease request: most tunnels (hollow nodes, nodes that are nobody's
    // candidate) never send one, and every idle tunnel's task holds what is declared here.
    let mut leases: Option<Box<super::lb::Leases>> = None;
    loop {
        let silence = tokio::time::sleep_until(last_heard + DEAD_AFTER);
        tokio::select! {
            _ = crate::apiserver::stopped(&mut stop) => return End::Shutdown,
            _ = silence => return End::Dead,
            r = servers.changed() => {
                if r.is_err() { return End::Shutdown; }
                let list = Down::Servers(servers.borrow_and_update().clone());
                if let Err(e) = send(ws, &list).await { return End::Bad(e); }
            }
            Some(frame) = control.rx.recv() => {
                if let Err(e) = send(ws, &frame).await { return End::Bad(e); }
            }
            p = pods.rx.recv() => match p {
                Some(push) => {
                    if let Err(e) = Box::pin(send_pods(ws, push)).await { return End::Bad(e); }
                }
                // Fell behind: listen again, which starts with a fresh listing.
                None => pods = sessions.pods.listen(node),
            },
            p = super::network::next(&mut net) => match p {
                Some(push) => {
                    if let Err(e) = Box::pin(send_net(ws, &sessions.network.cluster, push)).await { return End::Bad(e); }
                }
                None => net = Some(sessions.network.listen()),
            },
            m = ws.next() => {
                last_heard = Instant::now();
                match m {
                    None | Some(Ok(Message::Close(_))) => return End::Closed,
                    Some(Err(e)) => return End::Bad(e.to_string()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        // tungstenite queues the pong; flush it out.
                        if let Err(e) = ws.flush().await { return End::Bad(e.to_string()); }
                    }
                    Some(Ok(Message::Binary(b))) => match decode::<Up>(&b) {
                        Ok(Up::Report(next)) => {
                            // Each report that changes something is datastore writes: an agent
                            // may not make them faster than this.
                            if next == report { continue; }
                            if last_report.elapsed() < REPORT_MIN_INTERVAL {
                                return End::Bad(format!("node reports more often than every {REPORT_MIN_INTERVAL:?}"));
                            }
                            last_report = Instant::now();
                            report = next;
                            if let Err(why) = check(node, &report) { return End::Refused(why); }
                            // The Node may have been deleted (and the name taken by another
                            // board) since the tunnel opened: such a tunnel writes nothing.
                            if Box::pin(crate::bootstrap::join::verify_node(api.registry.store(), node, generation)).await.is_err() {
                                return End::Refused("this node's certificate belongs to an earlier registration of its name; join again".into());
                            }
                            if let Err(e) = Box::pin(registration::register(&api.registry, &report, None)).await {
                                tracing::warn!(%node, error = %e, "cannot update the node from its report");
                            }
                        }
                        Ok(Up::PodStatus(report)) => {
                            let (ns, name) = (report.key.namespace.clone(), report.key.name.clone());
                            if let Err(e) = Box::pin(super::pods::apply_status(&api.registry, node, report)).await {
                                tracing::warn!(%node, namespace = %ns, pod = %name, error = %e, "cannot write the pod status the node reported");
                            }
                        }
                        Ok(Up::Event(note)) => {
                            // Events are datastore writes: a node gets a budget per second.
                            if notes.take() {
                                Box::pin(sessions.record_note(&api.registry, node, note)).await;
                            }
                        }
                        Ok(Up::Get { id, object }) => {
                            let result = if gets.take() {
                                Box::pin(super::pods::object_for_node(api, &sessions.pods, node, &object)).await
                            } else {
                                Err((429, format!("node {node} reads objects faster than {MAX_GETS_PER_SECOND}/s; ask again later")))
                            };
                            if let Err(e) = send(ws, &Down::Object { id, result }).await { return End::Bad(e); }
                        }
                        Ok(Up::LbRenew { address, seq }) => {
                            // Each renewal is a database statement: a node gets a budget per
                            // second. Over it, no answer: the node's deadline lets it go.
                            if !lb_budget.take() {
                                tracing::debug!(%node, %address, "load-balancer renewals over budget; not answered");
                                continue;
                            }
                            let leases = leases.get_or_insert_with(|| Box::new(super::lb::Leases::new(node, api.registry.clone())));
                            if let Some(grant) = Box::pin(leases.renew(&sessions.network, address, seq)).await
                                && let Err(e) = send(ws, &Down::LbGrant(grant)).await
                            {
                                return End::Bad(e);
                            }
                        }
                        Ok(Up::LbRelease { address }) => {
                            if lb_budget.take() {
                                // Also without a renewal on this tunnel: the lease may have
                                // been taken through an earlier one.
                                let leases = leases.get_or_insert_with(|| Box::new(super::lb::Leases::new(node, api.registry.clone())));
                                Box::pin(leases.release(address)).await;
                            }
                        }
                        Ok(Up::Hello { .. }) => return End::Bad("a second Hello frame".into()),
                        Err(e) => return End::Bad(e.to_string()),
                    },
                    Some(Ok(other)) => return End::Bad(format!("unexpected {} frame", kind(&other))),
                }
            }
        }
    }
}

/// A per-second allowance of datastore work for one tunnel (a fixed one-second window: a
/// node's steady rate is what matters, not smoothness at the window's edge).
struct Budget {
    per_second: u32,
    window: Instant,
    used: u32,
}

impl Budget {
    fn new(per_second: u32) -> Budget {
        Budget {
            per_second,
            window: Instant::now(),
            used: 0,
        }
    }

    /// Takes one unit; `false` when this second's allowance is spent.
    fn take(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used = 0;
        }
        self.used += 1;
        self.used <= self.per_second
    }
}

/// Sends one push of pod assignments as frames (a listing is framed by `PodsListing` and
/// `PodsListed`). An assignment too large for a frame is left out, with a log line.
async fn send_pods<S>(ws: &mut WebSocketStream<S>, push: Push) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frames = match push {
        Push::List(list) => {
            let mut frames = Vec::with_capacity(list.len() + 2);
            frames.push(Down::PodsListing);
            frames.extend(list.iter().map(|a| Down::Pod(PodAssignment::clone(a))));
            frames.push(Down::PodsListed);
            frames
        }
        Push::Pod(a) => vec![Down::Pod(PodAssignment::clone(&a))],
        Push::Gone(key) => vec![Down::PodGone(key)],
    };
    for frame in frames {
        match encode_down(&frame) {
            Ok(bytes) => ws
                .send(Message::Binary(bytes.into()))
                .await
                .map_err(|e| e.to_string())?,
            Err(e) => {
                tracing::error!(error = %e, "a pod assignment does not fit in a tunnel frame; the node will not see it")
            }
        }
    }
    Ok(())
}

/// Sends one push of the network view as frames. A value too large for a frame (a Service
/// slice of thousands of endpoints) is left out, with a log line.
async fn send_net<S>(
    ws: &mut WebSocketStream<S>,
    cluster: &crate::api::network::ClusterNetwork,
    push: NetPush,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let events = match push {
        NetPush::List(snapshot) => snapshot.events(cluster),
        NetPush::Change(ev) => vec![NetEvent::clone(&ev)],
    };
    for ev in events {
        match encode_down(&Down::Net(ev)) {
            Ok(bytes) => ws
                .send(Message::Binary(bytes.into()))
                .await
                .map_err(|e| e.to_string())?,
            Err(e) => {
                tracing::error!(error = %e, "a network change does not fit in a tunnel frame; nodes will not see it")
            }
        }
    }
    Ok(())
}

async fn send<S>(ws: &mut WebSocketStream<S>, frame: &Down) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let bytes = encode_down(frame).map_err(|e| e.to_string())?;
    ws.send(Message::Binary(bytes.into()))
        .await
        .map_err(|e| e.to_string())
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Frame(_) => "raw",
        _ => "control",
    }
}

/// Longest local storage path a node may report (Linux's `PATH_MAX`).
const MAX_STORAGE_PATH: usize = 4096;

/// What the server will not take from an agent, whatever its certificate says.
fn check(node: &str, report: &NodeReport) -> Result<(), String> {
    if report.name != node {
        return Err(format!(
            "the report is for node {:?} but the certificate is for {node:?}",
            report.name
        ));
    }
    for (k, v) in &report.labels {
        labels::validate_label_key(k).map_err(|e| format!("label {k}: {e}"))?;
        labels::validate_label_value(v).map_err(|e| format!("label {k}: {e}"))?;
        if crate::apiserver::admission::is_restricted_label(k) || k == CONTROL_PLANE_LABEL {
            return Err(format!(
                "label {k}: agents may not set node-role.kubernetes.io or node-restriction.kubernetes.io labels"
            ));
        }
    }
    for t in &report.taints {
        labels::validate_taint(t).map_err(|e| format!("taint {}: {e}", t.key))?;
    }
    if let Some(path) = &report.local_storage
        && (!path.starts_with('/') || path.len() > MAX_STORAGE_PATH || path.contains('\0'))
    {
        return Err(format!(
            "local storage path {path:?}: expected an absolute path of at most {MAX_STORAGE_PATH} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_budget_refuses_past_its_allowance_until_the_next_second() {
        let mut b = Budget::new(3);
        assert!((0..3).all(|_| b.take()));
        assert!(!b.take(), "a fourth unit within the second");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.take(), "a new second brings a new allowance");
    }

    #[test]
    fn an_agent_reports_an_absolute_storage_path_or_none() {
        let mut report = NodeReport {
            name: "n1".into(),
            labels: vec![],
            taints: vec![],
            addresses: vec![],
            info: crate::agent::sysinfo::SystemInfo::read(),
            reservations: Default::default(),
            pressure: Default::default(),
            local_storage: Some("/var/lib/keelson/storage".into()),
        };
        assert!(check("n1", &report).is_ok());
        report.local_storage = None;
        assert!(check("n1", &report).is_ok());
        for bad in [
            "storage".to_string(),
            format!("/{}", "a".repeat(MAX_STORAGE_PATH)),
        ] {
            report.local_storage = Some(bad);
            assert!(check("n1", &report).is_err());
        }
    }
}
