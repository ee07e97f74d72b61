//! `pods/<name>/portforward`: kubectl's port-forward as SPDY/3.1 streams, each forwarded
//! connection carried by the pod's node on a stream the tunnel brokers
//! ([`StreamRequest::PortForward`]). The framing is [`super::spdy`]'s; this module owns the
//! upgrade and the session: which streams belong together and where their bytes go.
//!
//! kubectl (1.31+) first asks for a websocket with subprotocol `SPDY/3.1+portforward.k8s.io`
//! and sends SPDY as a byte stream in binary messages (frames may span messages); when that
//! upgrade fails it falls back to `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version:
//! portforward.k8s.io` and speaks SPDY on the raw connection. Both end up in [`run`]. For each
//! local connection it accepts, kubectl opens an error stream and then a data stream (headers
//! `streamtype`, `port`, `requestid`) and waits for each one's SYN_REPLY. This side answers
//! both at once, asks the node for one connection per pair, and relays the data stream's bytes
//! to and from it; if the node refuses or the connection fails, the reason goes on the error
//! stream (kubectl prints it) and both streams end. Other clients may use the websocket
//! channel form instead (`v4.channel.k8s.io`, ports in the query): see [`channels`].
//!
//! Flow control: kubectl's SPDY library (moby/spdystream) neither sends WINDOW_UPDATE nor
//! honours one, so this side never waits for the client's window (kubectl never grows it) and
//! sends WINDOW_UPDATEs for what it delivered (a client that keeps windows never stalls).
//! Back-pressure is the connection's: while a forward's queue to its node is full, nothing more
//! is read from the client.
//!
//! Invariants: at most [`MAX_STREAMS`] client streams are open per connection; a forward holds
//! at most [`FORWARD_QUEUE`] messages of at most [`MAX_MESSAGE`] bytes on their way to the
//! node; every forward's task ends with the session (a [`JoinSet`] owns them).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::Instrument;

use super::resources::ObjectRef;
use super::spdy::{self, Decoder, Encoder, Frame, Headers, StreamId};
use super::status::ApiError;
use super::{Api, Body, podstreams, upgrade};
use crate::node::pods::PodKey;
use crate::node::streams::{MAX_MESSAGE, Message, Pipe, StreamError, StreamRequest};

mod channels;

/// The port-forward protocol kubectl asks for, in `X-Stream-Protocol-Version`.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The websocket subprotocol of SPDY tunnelled in a websocket (kubectl 1.31+).
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Client streams open at once on one connection (two per forwarded connection).
pub const MAX_STREAMS: usize = 256;
/// Messages queued towards the node per forwarded connection.
pub const FORWARD_QUEUE: usize = 8;
/// Node-to-client messages queued for the session from all its forwards.
const EVENT_QUEUE: usize = 64;
/// Bytes read from a raw connection at once.
const READ_CHUNK: usize = 16 * 1024;
/// Delivered bytes after which a WINDOW_UPDATE goes out (half the initial window).
const WINDOW_UPDATE_AFTER: u32 = spdy::INITIAL_WINDOW / 2;

/// Why a port-forward session ended early. Both are the client's doing or the network's;
/// nothing to retry on this side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the client broke the SPDY framing: {0}")]
    Protocol(#[from] spdy::Error),
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
}

/// Opens connections in the pod. `Err` is the reason, for the user.
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, port: u16) -> Pin<Box<dyn Future<Output = Result<Pipe, String>> + Send>>;
}

/// Where a session's SPDY bytes come from and go to: a raw upgraded connection or a websocket.
pub trait Wire: Send {
    /// The next bytes from the client; `None` once it is gone. Must be cancel-safe.
    fn read(&mut self) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + Send;
    fn write(&mut self, bytes: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;
}

/// Answers `GET/POST …/pods/<name>/portforward`: checks the pod, then upgrades.
pub async fn serve(
    api: Arc<Api>,
    r: ObjectRef,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let pod = podstreams::pod(&api, &r).await?;
    let node = pod.node.ok_or_else(|| {
        // Kubernetes' own words for this case.
        ApiError::BadRequest(format!("pod {} does not have a host assigned", r.name))
    })?;
    let label = format!(
        "pod {}/{}, uid {}",
        pod.key.namespace, pod.key.name, pod.uid
    );
    let dialer = Arc::new(NodeDialer {
        api: api.clone(),
        node,
        pod: pod.key,
        uid: pod.uid,
    });
    if upgrade::is_websocket(req.headers()) {
        let accept = upgrade::accept_key(req.headers())?;
        let offered = listed(req.headers(), header::SEC_WEBSOCKET_PROTOCOL.as_str());
        if !offered.iter().any(|p| p == TUNNEL_PROTOCOL) {
            return channels(req, &accept, &offered, dialer, label);
        }
        let span = tracing::info_span!("port-forward", pod = %label, wire = "websocket");
        let session = async move {
            if let Some(ws) = upgrade::server_websocket(req, ws_config(), "port-forward").await {
                finish(run(WsWire(ws), dialer, label).await);
            }
        };
        tokio::spawn(session.instrument(span));
        return Ok(upgrade::switching_protocols(&accept, Some(TUNNEL_PROTOCOL)));
    }
    if !listed(req.headers(), header::UPGRADE.as_str())
        .iter()
        .any(|p| p.eq_ignore_ascii_case(SPDY_UPGRADE))
    {
        return Err(ApiError::BadRequest(format!(
            "port-forward needs an upgrade: a websocket offering {TUNNEL_PROTOCOL}, or Upgrade: {SPDY_UPGRADE}"
        )));
    }
    // Like kubelet's handshake: a client that names versions must name ours.
    let versions = listed(req.headers(), STREAM_PROTOCOL_HEADER);
    if !versions.is_empty() && !versions.iter().any(|v| v == PROTOCOL) {
        return Err(ApiError::Forbidden(format!(
            "unable to upgrade: unable to negotiate protocol: client supports {versions:?}, server supports [\"{PROTOCOL}\"]"
        )));
    }
    let span = tracing::info_span!("port-forward", pod = %label, wire = "spdy");
    let session = async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => finish(run(RawWire::new(TokioIo::new(upgraded)), dialer, label).await),
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    };
    tokio::spawn(session.instrument(span));
    Ok(spdy_switching_protocols())
}

/// The websocket channel form: checked here, served by [`channels::run`]. kubectl never gets
/// here (it offers the tunnel), and falls back to the SPDY upgrade if this refuses.
fn channels(
    req: Request<Incoming>,
    accept: &str,
    offered: &[String],
    dialer: Arc<NodeDialer>,
    label: String,
) -> Result<Response<Body>, ApiError> {
    let chosen = offered
        .iter()
        .find(|p| channels::PROTOCOLS.contains(&p.as_str()))
        .cloned();
    if chosen.is_none() && !offered.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "none of the offered websocket subprotocols ({}) is supported; port-forward speaks {TUNNEL_PROTOCOL}, {}",
            offered.join(", "),
            channels::PROTOCOLS.join(", ")
        )));
    }
    let ports = channels::ports(req.uri().query()).map_err(ApiError::BadRequest)?;
    let span = tracing::info_span!("port-forward", pod = %label, wire = "channels");
    let session = async move {
        if let Some(ws) = upgrade::server_websocket(req, ws_config(), "port-forward").await {
            channels::run(ws, dialer, ports, label).await;
        }
    };
    tokio::spawn(session.instrument(span));
    Ok(upgrade::switching_protocols(accept, chosen.as_deref()))
}

/// Serves one port-forward connection until the client leaves (or breaks the protocol).
/// `label` names the pod in messages (`pod <ns>/<name>, uid <uid>`).
pub async fn run<W: Wire, D: Dialer>(wire: W, dialer: Arc<D>, label: String) -> Result<(), Error> {
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let mut session = Session {
        wire,
        dialer,
        label,
        decoder: Decoder::new(),
        encoder: Encoder::new(),
        out: Vec::new(),
        streams: HashMap::new(),
        forwards: HashMap::new(),
        last_stream: 0,
        events_tx,
        events_rx,
        tasks: JoinSet::new(),
        blocked: None,
        connection_unacked: 0,
    };
    let result = session.serve().await;
    if let Err(Error::Protocol(e)) = &result {
        // Tell the client why, if it still listens; the connection ends either way.
        let last_good = session.last_stream;
        session.send(Frame::GoAway {
            last_good,
            status: e.goaway_status(),
        });
        let _ = session.flush().await;
    }
    result
}

fn finish(result: Result<(), Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "port-forward session ended");
    }
}

/// One client connection's streams and forwards.
struct Session<W, D> {
    wire: W,
    dialer: Arc<D>,
    label: String,
    decoder: Decoder,
    encoder: Encoder,
    /// Frames encoded and not yet written; written before the session waits again.
    out: Vec<u8>,
    /// Open client streams: which forward each belongs to and what it carries.
    /// Invariant: at most [`MAX_STREAMS`] entries.
    streams: HashMap<StreamId, (String, Kind)>,
    /// Forwarded connections by kubectl's `requestid`; removed when they end.
    forwards: HashMap<String, Forward>,
    /// The highest stream id the client opened: new ones must be higher.
    last_stream: StreamId,
    /// Handed to each forward's task; what the node sends comes back on `events_rx`.
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    /// The forwards' tasks; dropping the session aborts them, which drops their node streams.
    tasks: JoinSet<()>,
    /// Client bytes waiting for room in a forward's queue: while set, the client is not read.
    blocked: Option<Blocked>,
    /// Bytes delivered since the last connection-level WINDOW_UPDATE.
    connection_unacked: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// One forwarded connection: kubectl's error and data streams with the same `requestid`.
struct Forward {
    port: u16,
    error: Option<StreamId>,
    data: Option<StreamId>,
    /// Client bytes towards the node. Dropped when the client ends its data stream, which
    /// ends the node's connection once the queue is drained.
    to_node: Option<mpsc::Sender<Vec<u8>>>,
    /// The queue's other end until the forward starts (both streams arrived).
    from_client: Option<mpsc::Receiver<Vec<u8>>>,
    /// Bytes delivered on the data stream since its last WINDOW_UPDATE.
    unacked: u32,
}

/// What a forward's task reports.
enum Event {
    /// Bytes from the node's connection.
    Data { request: String, bytes: Vec<u8> },
    /// The node's connection ended.
    Ended { request: String },
    /// No connection: the node refused or could not be reached.
    Failed { request: String, reason: String },
}

type Reserve = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<Vec<u8>>, mpsc::error::SendError<()>>> + Send>,
>;

/// Client bytes for a forward whose queue is full.
struct Blocked {
    request: String,
    chunks: VecDeque<Vec<u8>>,
    /// The client ended the stream after these bytes.
    fin: bool,
    room: Reserve,
}

// === impl Session ===

impl<W: Wire, D: Dialer> Session<W, D> {
    async fn serve(&mut self) -> Result<(), Error> {
        loop {
            self.flush().await?;
            tokio::select! {
                read = self.wire.read(), if self.blocked.is_none() => match read? {
                    Some(bytes) => {
                        self.decoder.push(&bytes);
                        if !self.frames()? {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                },
                room = room(&mut self.blocked) => {
                    let Some(b) = self.blocked.take() else { continue };
                    let mut chunks = b.chunks;
                    if let (Ok(permit), Some(chunk)) = (room, chunks.pop_front()) {
                        self.delivered(&b.request, chunk.len());
                        permit.send(chunk);
                        self.deliver(b.request, chunks, b.fin);
                    }
                    if !self.frames()? {
                        return Ok(());
                    }
                }
                Some(event) = self.events_rx.recv() => self.event(event),
                // Reap finished forwards so the set holds only running ones.
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
        }
    }

    /// Handles the frames decoded so far, unless a full queue blocks; `false` once the client
    /// said GOAWAY.
    fn frames(&mut self) -> Result<bool, Error> {
        while self.blocked.is_none() {
            match self.decoder.next()? {
                Some(Frame::GoAway { .. }) => return Ok(false),
                Some(frame) => self.frame(frame),
                None => break,
            }
        }
        Ok(true)
    }

    fn frame(&mut self, frame: Frame) {
        match frame {
            Frame::SynStream {
                stream, headers, ..
            } => self.open(stream, &headers),
            Frame::Data { stream, fin, data } => match self.streams.get(&stream) {
                Some((request, Kind::Data)) => {
                    let request = request.clone();
                    let chunks = data.chunks(MAX_MESSAGE).map(<[u8]>::to_vec).collect();
                    self.deliver(request, chunks, fin);
                }
                // kubectl ends its half of the error stream at once and sends nothing on it.
                Some((_, Kind::Error)) => {}
                // A stream this side finished may still bring bytes the node can no longer
                // take; a stream never opened is the client's mistake.
                None if stream <= self.last_stream => {}
                None => self.send(Frame::RstStream {
                    stream,
                    status: spdy::rst::INVALID_STREAM,
                }),
            },
            Frame::RstStream { stream, .. } => {
                if let Some((request, _)) = self.streams.get(&stream) {
                    let request = request.clone();
                    self.close(&request);
                }
            }
            // Echo the client's pings (odd ids); this side sends none of its own.
            Frame::Ping { id } if id % 2 == 1 => self.send(Frame::Ping { id }),
            // This side opens no streams and keeps no send window (see the module doc).
            Frame::Ping { .. }
            | Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::GoAway { .. } => {}
        }
    }

    /// A new client stream: half of a forwarded connection.
    fn open(&mut self, stream: StreamId, headers: &Headers) {
        let refuse = |s: &mut Self, status| s.send(Frame::RstStream { stream, status });
        if stream.is_multiple_of(2) || stream <= self.last_stream {
            return refuse(self, spdy::rst::PROTOCOL_ERROR);
        }
        self.last_stream = stream;
        if self.streams.len() >= MAX_STREAMS {
            return refuse(self, spdy::rst::REFUSED_STREAM);
        }
        let Some((kind, port, request)) = forward_headers(stream, headers) else {
            // kubelet refuses such a stream too.
            return refuse(self, spdy::rst::REFUSED_STREAM);
        };
        let forward = self.forwards.entry(request.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
            Forward {
                port,
                error: None,
                data: None,
                to_node: Some(tx),
                from_client: Some(rx),
                unacked: 0,
            }
        });
        let slot = match kind {
            Kind::Error => &mut forward.error,
            Kind::Data => &mut forward.data,
        };
        if slot.is_some() {
            return refuse(self, spdy::rst::STREAM_IN_USE);
        }
        *slot = Some(stream);
        if kind == Kind::Data {
            // kubelet forwards to the data stream's port.
            forward.port = port;
        }
        let start = forward.error.is_some() && forward.data.is_some();
        self.streams.insert(stream, (request.clone(), kind));
        self.send(Frame::SynReply {
            stream,
            fin: false,
            headers: Headers::default(),
        });
        if start {
            self.start(request);
        }
    }

    /// Both streams are here: ask the node for the connection.
    fn start(&mut self, request: String) {
        let Some(forward) = self.forwards.get_mut(&request) else {
            return;
        };
        let Some(from_client) = forward.from_client.take() else {
            return;
        };
        let port = forward.port;
        let dialer = self.dialer.clone();
        let events = self.events_tx.clone();
        let span = tracing::debug_span!("forward", port, request = %request);
        self.tasks
            .spawn(relay(dialer, port, request, from_client, events).instrument(span));
    }

    /// Queues client bytes for the node, or blocks the session until there is room.
    fn deliver(&mut self, request: String, mut chunks: VecDeque<Vec<u8>>, fin: bool) {
        let Some(tx) = self.forwards.get(&request).and_then(|f| f.to_node.clone()) else {
            return;
        };
        while let Some(chunk) = chunks.pop_front() {
            let len = chunk.len();
            match tx.try_send(chunk) {
                Ok(()) => self.delivered(&request, len),
                Err(mpsc::error::TrySendError::Full(chunk)) => {
                    chunks.push_front(chunk);
                    self.blocked = Some(Blocked {
                        request,
                        chunks,
                        fin,
                        room: Box::pin(tx.reserve_owned()),
                    });
                    return;
                }
                // The node's connection is gone; its end is on the way as an event.
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if fin && let Some(f) = self.forwards.get_mut(&request) {
            f.to_node = None;
        }
    }

    /// Counts delivered bytes and returns them to the client's windows in batches.
    fn delivered(&mut self, request: &str, len: usize) {
        let len = len as u32;
        self.connection_unacked += len;
        if self.connection_unacked >= WINDOW_UPDATE_AFTER {
            let delta = std::mem::take(&mut self.connection_unacked);
            self.send(Frame::WindowUpdate { stream: 0, delta });
        }
        let Some(f) = self.forwards.get_mut(request) else {
            return;
        };
        f.unacked += len;
        if f.unacked >= WINDOW_UPDATE_AFTER
            && let Some(stream) = f.data
        {
            let delta = std::mem::take(&mut f.unacked);
            self.send(Frame::WindowUpdate { stream, delta });
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Data { request, bytes } => {
                if let Some(stream) = self.forwards.get(&request).and_then(|f| f.data) {
                    self.send(Frame::Data {
                        stream,
                        fin: false,
                        data: bytes,
                    });
                }
            }
            Event::Ended { request } => self.end(&request, None),
            Event::Failed { request, reason } => self.end(&request, Some(reason)),
        }
    }

    /// Ends a forward towards the client: the reason (if any) on its error stream, then both
    /// streams finished.
    fn end(&mut self, request: &str, reason: Option<String>) {
        let Some(f) = self.forwards.get(request) else {
            return;
        };
        let (error, data, port) = (f.error, f.data, f.port);
        if let Some(stream) = error {
            let message = reason
                .map(|r| refusal(port, &self.label, &r))
                .unwrap_or_default();
            self.send(Frame::Data {
                stream,
                fin: true,
                data: message.into_bytes(),
            });
        }
        if let Some(stream) = data {
            self.send(Frame::Data {
                stream,
                fin: true,
                data: Vec::new(),
            });
        }
        self.close(request);
    }

    /// Forgets a forward and its streams; its task ends once its queue's sender is gone and
    /// the node's end closes, or with the session.
    fn close(&mut self, request: &str) {
        if let Some(f) = self.forwards.remove(request) {
            for stream in [f.error, f.data].into_iter().flatten() {
                self.streams.remove(&stream);
            }
        }
        if self.blocked.as_ref().is_some_and(|b| b.request == request) {
            self.blocked = None;
        }
    }

    fn send(&mut self, frame: Frame) {
        if let Err(e) = self.encoder.encode(&frame, &mut self.out) {
            // Only frames this side built get here, all within the limits.
            tracing::warn!(error = %e, "port-forward frame not sent");
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.out);
        self.wire.write(bytes).await
    }
}

/// What the client reads on a forward's error stream: kubelet's words.
fn refusal(port: u16, label: &str, reason: &str) -> String {
    format!("error forwarding port {port} to {label}: {reason}")
}

/// Waits for room in the blocked forward's queue; never resolves when nothing is blocked.
async fn room(
    blocked: &mut Option<Blocked>,
) -> Result<mpsc::OwnedPermit<Vec<u8>>, mpsc::error::SendError<()>> {
    match blocked {
        Some(b) => (&mut b.room).await,
        None => std::future::pending().await,
    }
}

/// The stream's kind, port and request id, as kubelet reads them; `None` if one is missing
/// or bad. Old clients send no request id: kubelet pairs their streams by id (the data stream
/// comes two after its error stream), and so does this.
fn forward_headers(stream: StreamId, headers: &Headers) -> Option<(Kind, u16, String)> {
    let kind = match headers.get("streamtype")? {
        "error" => Kind::Error,
        "data" => Kind::Data,
        _ => return None,
    };
    let port = headers
        .get("port")?
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)?;
    let request = match headers.get("requestid").filter(|r| !r.is_empty()) {
        Some(r) => r.to_owned(),
        None if kind == Kind::Error => stream.to_string(),
        None => stream.saturating_sub(2).to_string(),
    };
    Some((kind, port, request))
}

/// One forwarded connection's task: dial the node, then relay until the node's end closes.
async fn relay<D: Dialer>(
    dialer: Arc<D>,
    port: u16,
    request: String,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<Event>,
) {
    let Pipe { tx, mut rx } = match dialer.dial(port).await {
        Ok(pipe) => pipe,
        Err(reason) => {
            let _ = events.send(Event::Failed { request, reason }).await;
            return;
        }
    };
    // Client to node, until the client ends its stream: dropping `tx` tells the node.
    let up = async move {
        while let Some(bytes) = from_client.recv().await {
            if tx.send(Message::Binary(bytes)).await.is_err() {
                break;
            }
        }
        drop(tx);
        // The connection lives on until the node ends it.
        std::future::pending::<()>().await
    };
    let down = async {
        while let Some(m) = rx.recv().await {
            if let Message::Binary(bytes) = m {
                let request = request.clone();
                if events.send(Event::Data { request, bytes }).await.is_err() {
                    return;
                }
            }
        }
        let request = request.clone();
        let _ = events.send(Event::Ended { request }).await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Asks the pod's node, through the tunnel's broker.
struct NodeDialer {
    api: Arc<Api>,
    node: String,
    pod: PodKey,
    uid: String,
}

impl Dialer for NodeDialer {
    fn dial(&self, port: u16) -> Pin<Box<dyn Future<Output = Result<Pipe, String>> + Send>> {
        let api = self.api.clone();
        let node = self.node.clone();
        let request = StreamRequest::PortForward {
            pod: self.pod.clone(),
            uid: self.uid.clone(),
            port,
        };
        Box::pin(async move {
            api.tunnels.open(&node, request).await.map_err(|e| match e {
                StreamError::Refused { message, .. } => message,
                other => other.to_string(),
            })
        })
    }
}

/// SPDY straight on the upgraded connection.
struct RawWire<S> {
    io: S,
    /// Reused for every read (a read that loses a `select!` leaves nothing in it).
    buf: Box<[u8]>,
}

impl<S> RawWire<S> {
    fn new(io: S) -> RawWire<S> {
        RawWire {
            io,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Wire for RawWire<S> {
    async fn read(&mut self) -> io::Result<Option<Vec<u8>>> {
        let n = self.io.read(&mut self.buf).await?;
        Ok((n > 0).then(|| self.buf[..n].to_vec()))
    }

    async fn write(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.io.write_all(&bytes).await?;
        self.io.flush().await
    }
}

/// SPDY as a byte stream in a websocket's binary messages.
struct WsWire<S>(WebSocketStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Wire for WsWire<S> {
    async fn read(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            match self.0.next().await {
                Some(Ok(WsMessage::Binary(b))) => return Ok(Some(b.to_vec())),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                    // tungstenite queued the pong; send it.
                    self.0.flush().await.map_err(io::Error::other)?;
                }
                Some(Ok(WsMessage::Text(_))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message in a SPDY tunnel",
                    ));
                }
                Some(Ok(WsMessage::Close(_))) | None => return Ok(None),
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
    }

    async fn write(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.0
            .send(WsMessage::Binary(bytes.into()))
            .await
            .map_err(io::Error::other)
    }
}

/// The websocket limits of a SPDY tunnel: a message holds at most a data frame.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(spdy::MAX_DATA + 8))
        .max_frame_size(Some(spdy::MAX_DATA + 8))
}

/// The values of a comma-separated header, over all its lines.
fn listed(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The 101 answer to kubectl's SPDY upgrade.
fn spdy_switching_protocols() -> Response<Body> {
    let mut resp = Response::new(Empty::<Bytes>::new().map_err(|e| match e {}).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = resp.headers_mut();
    hs.insert(
        header::UPGRADE,
        header::HeaderValue::from_static(SPDY_UPGRADE),
    );
    hs.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    hs.insert(
        STREAM_PROTOCOL_HEADER,
        header::HeaderValue::from_static(PROTOCOL),
    );
    resp
}

const SPDY_UPGRADE: &str = "SPDY/3.1";
const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

#[cfg(test)]
mod tests;
