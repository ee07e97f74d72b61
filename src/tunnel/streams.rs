//! The server end of pod streams (`kubectl logs`, `exec`, `attach`): ask a node to dial back,
//! and hand the API request the connection it makes.
//!
//! A request for a node tunnelled here gets an id and a [`Down::Dial`] on that node's tunnel;
//! the node opens `STREAM_PATH/<id>` with its own certificate, and [`Broker::arrive`] gives
//! the waiting request that connection as a [`Pipe`]. The server's own node is served
//! in-process. A node tunnelled to another server is asked through the datastore, the only
//! thing servers share: the request is written under [`DIALS`], the server holding the
//! node's tunnel sees it in its change feed ([`Broker::relay`]) and passes the dial on with
//! this server's address, and the node dials this server directly.
//!
//! Invariants: a dialled connection is accepted only from the node the request was for, and
//! only once; a request waits at most [`DIAL_TIMEOUT`], after which its id is forgotten and a
//! late dial is refused; a request written to the datastore is deleted by the server that
//! wrote it once answered or timed out, or, if that server died meanwhile, by the controllers'
//! periodic sweep ([`sweep_dials`]) once older than [`DIAL_ROW_MAX_AGE`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::Down;
use crate::datastore::feed::Feed;
use crate::datastore::{EventKind, Store};
pub use crate::node::streams::ws_config;
use crate::node::streams::{
    self, MAX_MESSAGE, Message, Pipe, StreamError, StreamRequest, StreamServer,
};

/// Where servers leave dial requests for nodes tunnelled to other servers (outside every API
/// resource's prefix, so no client can read or write them).
pub const DIALS: &str = "/registry/keelson.io/dials/";

/// A dial request as written to the datastore.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct DialRecord {
    node: String,
    /// `host:port` of the server whose client waits.
    server: String,
    id: u64,
    request: StreamRequest,
    /// Unix seconds when written, for the sweep (0 in rows of earlier versions: swept).
    #[serde(default)]
    written_at: i64,
}

/// A dial row older than this is left from a server that died while its client waited.
pub const DIAL_ROW_MAX_AGE: Duration = Duration::from_secs(60);

/// Deletes dial rows whose writer can no longer be waiting; returns how many went.
pub async fn sweep_dials(store: &Store) -> crate::datastore::Result<usize> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (_, rows) = store.list(DIALS).await?;
    let mut swept = 0;
    for row in rows {
        let stale = serde_json::from_slice::<DialRecord>(&row.value)
            .map_or(true, |r| stale_at(r.written_at, now));
        // Deleted only if unchanged since listed (a row is never rewritten, but be exact).
        if stale && store.delete(&row.path, Some(row.revision)).await.is_ok() {
            swept += 1;
        }
    }
    Ok(swept)
}

fn stale_at(written_at: i64, now: i64) -> bool {
    now.saturating_sub(written_at) > DIAL_ROW_MAX_AGE.as_secs() as i64
}

/// How long a request waits for its node to dial back.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Control frames queued for one tunnel.
const CONTROL_QUEUE: usize = 16;

/// Waiting stream requests and the tunnels that carry dial requests.
#[derive(Default)]
pub struct Broker {
    state: Mutex<State>,
    next: AtomicU64,
    /// This server's own node and what serves its streams, once it runs.
    local: Mutex<Option<(String, Arc<dyn StreamServer>)>>,
    /// The datastore and this server's address, for nodes tunnelled elsewhere.
    remote: Mutex<Option<(Store, String)>>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<u64, Waiting>,
    /// Tunnels by node, newest last (a reconnecting node overlaps with itself for a moment).
    tunnels: HashMap<String, Vec<(u64, mpsc::Sender<Down>)>>,
}

struct Waiting {
    node: String,
    tx: oneshot::Sender<Pipe>,
}

/// A tunnel's subscription to dial requests for its node; leaves on drop.
pub struct Attached {
    pub rx: mpsc::Receiver<Down>,
    broker: Arc<Broker>,
    node: String,
    id: u64,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut state = self.broker.lock();
        if let Some(list) = state.tunnels.get_mut(&self.node) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                state.tunnels.remove(&self.node);
            }
        }
    }
}

impl Broker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves this server's own node's streams in-process.
    pub fn set_local(&self, node: &str, server: Arc<dyn StreamServer>) {
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = Some((node.to_owned(), server));
    }

    /// Lets requests reach nodes tunnelled to other servers, through `store`; `address` is
    /// where nodes reach this server.
    pub fn set_remote(&self, store: Store, address: &str) {
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = Some((store, address.to_owned()));
    }

    /// Runs [`Broker::relay`] until `shutdown`, following the feed again after a failure.
    pub async fn run_relay(
        self: Arc<Self>,
        store: Store,
        feed: Feed,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                r = self.relay(&store, &feed) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "stream dial relay lost the change feed; following it again");
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Passes on the dial requests other servers leave for nodes tunnelled here, until the
    /// feed fails (the caller starts it again).
    pub async fn relay(&self, store: &Store, feed: &Feed) -> Result<(), crate::datastore::Error> {
        let start = store.current_revision().await?;
        let mut sub = feed.subscribe(start).await?;
        loop {
            let ev = sub.next().await?;
            if ev.kind != EventKind::Added || !ev.path.starts_with(DIALS) {
                continue;
            }
            let Ok(rec) = serde_json::from_slice::<DialRecord>(&ev.value) else {
                continue;
            };
            let tunnel = self
                .lock()
                .tunnels
                .get(&rec.node)
                .and_then(|list| list.last())
                .map(|(_, t)| t.clone());
            if let Some(tunnel) = tunnel {
                let dial = Down::Dial {
                    id: rec.id,
                    request: rec.request,
                    server: Some(rec.server),
                };
                let _ = tunnel.send(dial).await;
            }
        }
    }

    /// Called by a tunnel session once its node is registered.
    pub fn attach(self: &Arc<Self>, node: &str) -> Attached {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .tunnels
            .entry(node.to_owned())
            .or_default()
            .push((id, tx));
        Attached {
            rx,
            broker: self.clone(),
            node: node.to_owned(),
            id,
        }
    }

    /// Opens a stream to `node`: returns the API server's end once the node has opened it.
    pub async fn open(&self, node: &str, request: StreamRequest) -> Result<Pipe, StreamError> {
        let local = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(n, _)| n == node)
            .map(|(_, s)| s.clone());
        let mut pipe = match local {
            Some(server) => {
                let (near, far) = Pipe::pair();
                tokio::spawn(server.serve(request, far));
                near
            }
            None => self.dial(node, request).await?,
        };
        match streams::opened(&mut pipe).await {
            Ok(()) => Ok(pipe),
            Err(o) => Err(StreamError::Refused {
                code: o.code,
                message: o.message,
            }),
        }
    }

    async fn dial(&self, node: &str, request: StreamRequest) -> Result<Pipe, StreamError> {
        // Ids are random: they also name requests other servers pass on, and a dial-back must
        // not be guessable by another node.
        let id = random_id();
        let (tx, rx) = oneshot::channel();
        let tunnel = {
            let mut state = self.lock();
            let tunnel = state
                .tunnels
                .get(node)
                .and_then(|list| list.last())
                .map(|(_, t)| t.clone());
            state.waiting.insert(
                id,
                Waiting {
                    node: node.to_owned(),
                    tx,
                },
            );
            tunnel
        };
        let forget = |broker: &Broker| broker.lock().waiting.remove(&id);
        let mut written = None;
        match tunnel {
            Some(tunnel) => {
                let dial = Down::Dial {
                    id,
                    request,
                    server: None,
                };
                if tunnel.send(dial).await.is_err() {
                    forget(self);
                    return Err(StreamError::NotConnected(node.to_owned()));
                }
            }
            None => {
                let remote = self
                    .remote
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let Some((store, server)) = remote else {
                    forget(self);
                    return Err(StreamError::NotConnected(node.to_owned()));
                };
                let path = format!("{DIALS}{id:016x}");
                let rec = DialRecord {
                    node: node.to_owned(),
                    server,
                    id,
                    request,
                    written_at: time::OffsetDateTime::now_utc().unix_timestamp(),
                };
                let value = serde_json::to_vec(&rec).unwrap_or_default();
                if let Err(e) = store.create(&path, &value).await {
                    forget(self);
                    tracing::warn!(%node, error = %e, "cannot pass a stream request on through the datastore");
                    return Err(StreamError::NotConnected(node.to_owned()));
                }
                written = Some((store, path));
            }
        }
        let answer = tokio::time::timeout(DIAL_TIMEOUT, rx).await;
        if let Some((store, path)) = written {
            let _ = store.delete(&path, None).await;
        }
        match answer {
            Ok(Ok(pipe)) => Ok(pipe),
            _ => {
                forget(self);
                Err(StreamError::NoAnswer {
                    node: node.to_owned(),
                    waited: DIAL_TIMEOUT,
                })
            }
        }
    }

    /// A node dialled `STREAM_PATH/<id>`: whether that id waits for this node. The caller
    /// then upgrades the connection and passes its end to [`Arrival::deliver`].
    pub fn arrive(&self, node: &str, id: u64) -> Option<Arrival> {
        let mut state = self.lock();
        match state.waiting.get(&id) {
            Some(w) if w.node == node => state.waiting.remove(&id).map(|w| Arrival { tx: w.tx }),
            _ => None,
        }
    }
}

fn random_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

/// A dial the broker matched to its request.
pub struct Arrival {
    tx: oneshot::Sender<Pipe>,
}

impl Arrival {
    /// Relays the dialled websocket to the waiting request until either end closes.
    pub async fn deliver<S>(self, ws: WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (near, far) = Pipe::pair();
        if self.tx.send(near).is_ok() {
            pump(ws, far).await;
        }
    }
}

/// Relays messages between a websocket and a pipe until either ends; then closes the other.
pub async fn pump<S>(mut ws: WebSocketStream<S>, mut pipe: Pipe)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(WsMessage::Binary(b))) => {
                    if b.len() > MAX_MESSAGE || pipe.tx.send(Message::Binary(b.to_vec())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(WsMessage::Text(t))) => {
                    if pipe.tx.send(Message::Text(t.as_str().to_owned())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                    let _ = ws.flush().await;
                }
                Some(Ok(WsMessage::Close(_)) | Err(_)) | None => return,
            },
            m = pipe.rx.recv() => match m {
                Some(Message::Binary(b)) => {
                    if ws.send(WsMessage::Binary(b.into())).await.is_err() { return; }
                }
                Some(Message::Text(t)) => {
                    if ws.send(WsMessage::Text(t.into())).await.is_err() { return; }
                }
                None => break,
            },
        }
    }
    let _ = ws.close(None).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::pods::PodKey;
    use crate::node::streams::{LogOptions, NoContainers};

    fn logs() -> StreamRequest {
        StreamRequest::Logs {
            pod: PodKey {
                namespace: "default".into(),
                name: "web".into(),
            },
            uid: "u".into(),
            container: "c".into(),
            options: LogOptions::default(),
        }
    }

    #[tokio::test]
    async fn a_node_without_a_tunnel_here_is_named() {
        let broker = Arc::new(Broker::default());
        let e = broker.open("pi-1", logs()).await.err().unwrap();
        assert!(e.to_string().contains("\"pi-1\" is not connected"), "{e}");
    }

    #[tokio::test]
    async fn only_the_node_asked_may_answer_and_only_once() {
        let broker = Arc::new(Broker::default());
        let mut tunnel = broker.attach("pi-1");
        let b = broker.clone();
        let opening = tokio::spawn(async move { b.open("pi-1", logs()).await });
        let Some(Down::Dial { id, request, .. }) = tunnel.rx.recv().await else {
            panic!("no dial request");
        };
        assert_eq!(request, logs());
        assert!(broker.arrive("pi-2", id).is_none(), "another node's dial");
        let arrival = broker.arrive("pi-1", id).expect("the node's own dial");
        assert!(broker.arrive("pi-1", id).is_none(), "a second dial");
        // Stand in for the websocket: the node refuses, the request hears why.
        let (near, far) = Pipe::pair();
        let _ = arrival.tx.send(near);
        NoContainers.serve(request, far).await;
        let e = opening.await.unwrap().err().unwrap();
        assert!(matches!(e, StreamError::Refused { code: 400, .. }), "{e}");
    }

    #[tokio::test]
    async fn the_sweep_removes_only_rows_no_server_can_still_be_waiting_for() {
        let dir = tempfile::tempdir().unwrap();
        let ep = crate::datastore::Endpoint::parse(&format!(
            "sqlite://{}/state.db",
            dir.path().display()
        ))
        .unwrap();
        let store = Store::open(&ep, &crate::datastore::PoolConfig::default())
            .await
            .unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for (id, written_at) in [(1u64, now), (2, now - 3600), (3, 0)] {
            let rec = DialRecord {
                node: "pi-1".into(),
                server: "127.0.0.1:6443".into(),
                id,
                request: logs(),
                written_at,
            };
            let path = format!("{DIALS}{id:016x}");
            store
                .create(&path, &serde_json::to_vec(&rec).unwrap())
                .await
                .unwrap();
        }
        assert_eq!(sweep_dials(&store).await.unwrap(), 2);
        let (_, left) = store.list(DIALS).await.unwrap();
        let left: Vec<&str> = left.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(left, [format!("{DIALS}{:016x}", 1)]);
    }

    #[tokio::test]
    async fn the_local_node_is_served_in_process() {
        let broker = Arc::new(Broker::default());
        broker.set_local("server-1", Arc::new(NoContainers));
        let e = broker.open("server-1", logs()).await.err().unwrap();
        assert!(matches!(e, StreamError::Refused { code: 400, .. }), "{e}");
    }
}
