//! A node's end of `kubectl logs`, `exec` and `attach`: streams the API server asks for and the
//! node serves from its containers.
//!
//! The API server never connects to a node (agents expose no port). It asks the node, over the
//! tunnel, to dial back: the node opens a fresh websocket to that server, authenticated with
//! its node certificate, and serves the one stream on it (see [`crate::tunnel::streams`]). A
//! stream's bytes therefore never share the tunnel with heartbeats and pod assignments, and
//! TCP gives each stream its own flow control. A server's own node is served in-process over
//! the same [`Pipe`].
//!
//! On a pipe the node first sends one text message, [`Opened`]: either the stream is open, or
//! why not (a Kubernetes status code and message, which the API server answers the client
//! with). Then, for logs, binary messages of log text until the pipe closes; for exec and
//! attach, binary messages framed as Kubernetes' `v5.channel.k8s.io` (first byte the channel:
//! 0 stdin, 1 stdout, 2 stderr, 3 error/exit status, 4 terminal resize, 255 close), relayed by
//! the API server unchanged in both directions.
//!
//! Invariant: every message on a pipe is at most [`MAX_MESSAGE`] bytes; what keelson itself
//! sends is cut at [`CHUNK`] (+1 for the channel byte).

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::pods::PodKey;

/// Why a stream to a node's pod could not be opened; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("node {0:?} is not connected to any server (it may be down, or just reconnecting)")]
    NotConnected(String),
    #[error("node {node:?} did not answer within {waited:?}")]
    NoAnswer {
        node: String,
        waited: std::time::Duration,
    },
    #[error("the node refused the stream: {message}")]
    Refused { code: u16, message: String },
}

/// The websocket settings of a stream connection (either end).
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Largest message a stream accepts. kubectl sends stdin in reads of 32 KiB plus its channel
/// byte (`kubectl cp` fills every one), so this must exceed 32 KiB + 1.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Largest piece of output keelson puts in one message.
pub const CHUNK: usize = 32 * 1024;
/// Messages queued in each direction of an in-process pipe.
const PIPE_QUEUE: usize = 16;

/// What the API server asks a node to stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRequest {
    Logs {
        pod: PodKey,
        uid: String,
        container: String,
        options: LogOptions,
    },
    Exec {
        pod: PodKey,
        uid: String,
        container: String,
        command: Vec<String>,
        io: StreamIo,
    },
    Attach {
        pod: PodKey,
        uid: String,
        container: String,
        io: StreamIo,
    },
    /// A TCP connection to `port` inside the pod's network namespace: after `Opened`, binary
    /// messages carry the connection's bytes both ways; either end closing ends it.
    PortForward { pod: PodKey, uid: String, port: u16 },
}

/// Which of an exec's or attach's streams the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamIo {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// The client speaks `v5.channel.k8s.io` (it closes stdin with a channel-255 message);
    /// otherwise `v4`, where stdin ends only with the connection.
    pub v5: bool,
}

/// `kubectl logs`' options, as the API server received them (already checked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Only lines written at or after this time (RFC 3339), from `sinceSeconds` or
    /// `sinceTime`.
    pub since: Option<String>,
}

impl StreamRequest {
    pub fn pod(&self) -> &PodKey {
        match self {
            StreamRequest::Logs { pod, .. }
            | StreamRequest::Exec { pod, .. }
            | StreamRequest::Attach { pod, .. }
            | StreamRequest::PortForward { pod, .. } => pod,
        }
    }
}

/// The node's first message on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// 200 when the stream is open; otherwise the HTTP status the API server answers with.
    pub code: u16,
    /// Why not (for the client, as a Kubernetes Status message).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One message of a stream: text only for [`Opened`], binary otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// One end of a stream: what the other end sent, and a way to send. Dropping `tx` ends the
/// stream in that direction; `rx` yields `None` once the other end is gone.
pub struct Pipe {
    pub tx: mpsc::Sender<Message>,
    pub rx: mpsc::Receiver<Message>,
}

impl Pipe {
    /// Two connected ends.
    pub fn pair() -> (Pipe, Pipe) {
        let (a_tx, b_rx) = mpsc::channel(PIPE_QUEUE);
        let (b_tx, a_rx) = mpsc::channel(PIPE_QUEUE);
        (Pipe { tx: a_tx, rx: a_rx }, Pipe { tx: b_tx, rx: b_rx })
    }

    /// Sends the opening message; `false` if the other end is gone.
    pub async fn open(&self, code: u16, message: &str) -> bool {
        let opened = Opened {
            code,
            message: message.to_owned(),
        };
        let text = serde_json::to_string(&opened).unwrap_or_default();
        self.tx.send(Message::Text(text)).await.is_ok()
    }
}

/// What serves a node's streams: its container runtime.
pub trait StreamServer: Send + Sync {
    /// Serves one stream to its end; the future owns everything it needs.
    fn serve(&self, request: StreamRequest, pipe: Pipe)
    -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A node that runs no containers (a simulated one, or one without a runtime): every stream
/// is refused with a reason.
pub struct NoContainers;

impl StreamServer for NoContainers {
    fn serve(
        &self,
        request: StreamRequest,
        pipe: Pipe,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let pod = request.pod();
            let why = format!(
                "pod {}/{} has no containers on this node: the node runs no container runtime",
                pod.namespace, pod.name
            );
            pipe.open(400, &why).await;
        })
    }
}

/// Reads the node's opening message from the other end of a pipe.
pub async fn opened(pipe: &mut Pipe) -> Result<(), Opened> {
    let refused = |message: String| Opened { code: 502, message };
    match pipe.rx.recv().await {
        Some(Message::Text(t)) => match serde_json::from_str::<Opened>(&t) {
            Ok(o) if o.code == 200 => Ok(()),
            Ok(o) => Err(o),
            Err(e) => Err(refused(format!(
                "the node's stream began with a bad header: {e}"
            ))),
        },
        Some(Message::Binary(_)) => Err(refused("the node's stream began without a header".into())),
        None => Err(refused(
            "the node closed the stream before opening it".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_without_containers_refuses_with_a_reason() {
        let (mut near, far) = Pipe::pair();
        let req = StreamRequest::Logs {
            pod: PodKey {
                namespace: "default".into(),
                name: "web".into(),
            },
            uid: "u".into(),
            container: "c".into(),
            options: LogOptions::default(),
        };
        NoContainers.serve(req, far).await;
        let err = opened(&mut near).await.unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("default/web"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_stream_closed_before_its_header_is_an_error() {
        let (mut near, far) = Pipe::pair();
        drop(far);
        assert_eq!(opened(&mut near).await.unwrap_err().code, 502);
    }
}
