//! Port-forward over the websocket channel protocol (`v4.channel.k8s.io`, the older form that
//! kubelet and other clients than kubectl speak): the ports come in the query, port `i` gets
//! data channel `2i` and error channel `2i + 1`, every message's first byte is its channel,
//! and this side's first message on each channel carries the port (2 bytes, little-endian).
//! Each port is one connection in the pod, asked of the node at once.
//!
//! Invariants: one node stream per port, each owned by a task the session's [`JoinSet`] owns;
//! the session ends when every port's connection has ended or the client leaves.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Dialer, EVENT_QUEUE, Event, FORWARD_QUEUE, refusal, relay};
use crate::node::streams::MAX_MESSAGE;

/// The subprotocols this form is offered under (none offered means it too, as in kubelet).
pub const PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "portforward.k8s.io"];
/// Ports one connection may forward.
pub const MAX_PORTS: usize = 64;

/// The `ports` query parameter (repeated, or comma-separated), checked the way kubelet checks
/// it; the message is for the client.
pub fn ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    let values: Vec<String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "ports")
        .map(|(_, v)| v.into_owned())
        .collect();
    if values.is_empty() {
        return Err("query parameter \"ports\" is required".into());
    }
    for value in &values {
        if value.is_empty() {
            return Err("query parameter \"ports\" cannot be empty".into());
        }
        for p in value.split(',') {
            match p.trim().parse::<u16>() {
                Ok(0) => return Err(format!("port {value:?} must be > 0")),
                Ok(port) => ports.push(port),
                Err(e) => return Err(format!("unable to parse {value:?} as a port: {e}")),
            }
        }
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "at most {MAX_PORTS} ports can be forwarded at once"
        ));
    }
    Ok(ports)
}

/// Serves one connection until every port's connection ended or the client left.
pub async fn run<S, D>(ws: WebSocketStream<S>, dialer: Arc<D>, ports: Vec<u16>, label: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Dialer,
{
    let (mut sink, mut stream) = ws.split();
    let (events_tx, mut events_rx) = mpsc::channel(EVENT_QUEUE);
    let mut tasks = JoinSet::new();
    let mut to_node = Vec::with_capacity(ports.len());
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        to_node.push(Some(tx));
        let span = tracing::debug_span!("forward", port);
        let forward = relay(dialer.clone(), port, i.to_string(), rx, events_tx.clone());
        tasks.spawn(tracing::Instrument::instrument(forward, span));
    }
    drop(events_tx);
    // Client to node. Waiting for room in one port's queue stops only this direction, so the
    // node's bytes keep flowing out and neither side can wait on the other forever.
    let reading = async move {
        while let Some(Ok(m)) = stream.next().await {
            let WsMessage::Binary(b) = m else {
                // Pings are answered by tungstenite; text is not part of this protocol.
                continue;
            };
            let Some((&channel, data)) = b.split_first() else {
                continue;
            };
            // Odd channels are this side's error channels: nothing comes in on them.
            let i = usize::from(channel / 2);
            if channel % 2 != 0 {
                continue;
            }
            let Some(Some(tx)) = to_node.get(i) else {
                continue;
            };
            for chunk in data.chunks(MAX_MESSAGE) {
                if tx.send(chunk.to_vec()).await.is_err() {
                    // That port's connection is gone; its end is on its way out.
                    to_node[i] = None;
                    break;
                }
            }
        }
    };
    let writing = async move {
        let mut open = ports.len();
        for (i, port) in ports.iter().enumerate() {
            for channel in [2 * i, 2 * i + 1] {
                let mut first = vec![channel as u8];
                first.extend_from_slice(&port.to_le_bytes());
                if sink.send(WsMessage::Binary(first.into())).await.is_err() {
                    return;
                }
            }
        }
        while open > 0 {
            let Some(event) = events_rx.recv().await else {
                break;
            };
            let message = match event {
                Event::Data { request, bytes } => {
                    let Ok(i) = request.parse::<usize>() else {
                        continue;
                    };
                    let mut m = Vec::with_capacity(bytes.len() + 1);
                    m.push((2 * i) as u8);
                    m.extend_from_slice(&bytes);
                    m
                }
                Event::Ended { .. } => {
                    open -= 1;
                    continue;
                }
                Event::Failed { request, reason } => {
                    open -= 1;
                    let Ok(i) = request.parse::<usize>() else {
                        continue;
                    };
                    let port = ports.get(i).copied().unwrap_or_default();
                    let mut m = vec![(2 * i + 1) as u8];
                    m.extend_from_slice(refusal(port, &label, &reason).as_bytes());
                    m
                }
            };
            if sink.send(WsMessage::Binary(message.into())).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    };
    tokio::select! {
        () = reading => {}
        () = writing => {}
    }
    // Dropping the tasks ends every node stream still open.
    drop(tasks);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::super::tests::EchoNode;
    use super::*;

    async fn message(ws: &mut WebSocketStream<tokio::io::DuplexStream>) -> Vec<u8> {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("the websocket is open")
            .unwrap();
        m.into_data().to_vec()
    }

    #[test]
    fn ports_are_checked_like_kubelets() {
        assert_eq!(ports(Some("ports=8080&ports=9,10")), Ok(vec![8080, 9, 10]));
        assert_eq!(
            ports(None),
            Err("query parameter \"ports\" is required".into())
        );
        assert_eq!(ports(Some("ports=0")), Err("port \"0\" must be > 0".into()));
        assert!(ports(Some("ports=http")).is_err());
        assert!(ports(Some("ports=70000")).is_err());
    }

    #[tokio::test]
    async fn each_port_gets_its_channels_its_bytes_and_its_refusal() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
            run(
                ws,
                Arc::new(EchoNode),
                vec![8080, 9],
                super::super::tests::LABEL.into(),
            )
            .await
        });
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        // Every channel opens with its port: 8080 is 0x1f90, 9 is 0x0009.
        for expected in [[0, 0x90, 0x1f], [1, 0x90, 0x1f], [2, 9, 0], [3, 9, 0]] {
            assert_eq!(message(&mut ws).await, expected);
        }
        assert_eq!(
            String::from_utf8(message(&mut ws).await[1..].to_vec()).unwrap(),
            "error forwarding port 9 to pod default/web, uid u1: nothing listens on port 9"
        );
        ws.send(WsMessage::Binary(b"\x00echo me".to_vec().into()))
            .await
            .unwrap();
        assert_eq!(message(&mut ws).await, b"\x00echo me");
        // The client leaves: the session ends (and with it the node's stream).
        drop(ws);
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("the session ends with its client")
            .unwrap();
    }
}
