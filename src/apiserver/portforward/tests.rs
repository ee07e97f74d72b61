//! The session driven as kubectl drives it, over an in-memory connection, with a stand-in
//! node: an echo server on port 8080 and a refusal on every other port.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use tokio_tungstenite::tungstenite::protocol::Role;

pub(super) const LABEL: &str = "pod default/web, uid u1";

pub(super) struct EchoNode;

impl Dialer for EchoNode {
    fn dial(&self, port: u16) -> Pin<Box<dyn Future<Output = Result<Pipe, String>> + Send>> {
        Box::pin(async move {
            if port != 8080 {
                return Err(format!("nothing listens on port {port}"));
            }
            let (near, mut far) = Pipe::pair();
            // Echoes until the API server's end closes, then closes its own.
            tokio::spawn(async move {
                while let Some(m) = far.rx.recv().await {
                    if far.tx.send(m).await.is_err() {
                        break;
                    }
                }
            });
            Ok(near)
        })
    }
}

/// kubectl's side: frames out, frames in.
struct Kubectl<R, W> {
    read: R,
    write: W,
    encoder: Encoder,
    decoder: Decoder,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Kubectl<R, W> {
    async fn send(&mut self, frames: &[Frame]) {
        let mut out = Vec::new();
        for f in frames {
            self.encoder.encode(f, &mut out).unwrap();
        }
        self.write.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        loop {
            if let Some(f) = self.decoder.next().unwrap() {
                return f;
            }
            let mut buf = vec![0; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.read.read(&mut buf))
                .await
                .expect("a frame within 5 s")
                .unwrap();
            assert!(n > 0, "the session closed the connection");
            self.decoder.push(&buf[..n]);
        }
    }
}

type Client = Kubectl<tokio::io::ReadHalf<DuplexStream>, tokio::io::WriteHalf<DuplexStream>>;

fn connect() -> (Client, tokio::task::JoinHandle<Result<(), Error>>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let session = tokio::spawn(run(RawWire::new(server), Arc::new(EchoNode), LABEL.into()));
    let (read, write) = tokio::io::split(client);
    let k = Kubectl {
        read,
        write,
        encoder: Encoder::new(),
        decoder: Decoder::new(),
    };
    (k, session)
}

fn syn(stream: StreamId, kind: &str, port: &str, request: &str) -> Frame {
    Frame::SynStream {
        stream,
        associated: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: Headers(vec![
            ("streamtype".into(), kind.into()),
            ("port".into(), port.into()),
            ("requestid".into(), request.into()),
        ]),
    }
}

fn reply(stream: StreamId) -> Frame {
    Frame::SynReply {
        stream,
        fin: false,
        headers: Headers::default(),
    }
}

fn data(stream: StreamId, fin: bool, bytes: &[u8]) -> Frame {
    Frame::Data {
        stream,
        fin,
        data: bytes.to_vec(),
    }
}

#[tokio::test]
async fn bytes_come_back_on_the_data_stream_and_ending_it_ends_both() {
    let (mut k, session) = connect();
    // kubectl waits for each stream's reply before it opens the next.
    k.send(&[syn(1, "error", "8080", "0")]).await;
    assert_eq!(k.recv().await, reply(1));
    k.send(&[
        data(1, true, b""),
        syn(3, "data", "8080", "0"),
        Frame::Ping { id: 1 },
    ])
    .await;
    assert_eq!(k.recv().await, reply(3));
    assert_eq!(k.recv().await, Frame::Ping { id: 1 });
    k.send(&[data(3, false, b"hello")]).await;
    assert_eq!(k.recv().await, data(3, false, b"hello"));
    // The client ends its side; the node's connection ends; both streams finish, the error
    // stream empty (kubectl prints nothing).
    k.send(&[data(3, true, b"")]).await;
    assert_eq!(k.recv().await, data(1, true, b""));
    assert_eq!(k.recv().await, data(3, true, b""));
    k.send(&[Frame::GoAway {
        last_good: 0,
        status: 0, // OK
    }])
    .await;
    session.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_refusal_lands_on_the_error_stream() {
    let (mut k, _session) = connect();
    k.send(&[syn(1, "error", "9", "7")]).await;
    assert_eq!(k.recv().await, reply(1));
    k.send(&[syn(3, "data", "9", "7")]).await;
    assert_eq!(k.recv().await, reply(3));
    assert_eq!(
        k.recv().await,
        data(
            1,
            true,
            b"error forwarding port 9 to pod default/web, uid u1: nothing listens on port 9"
        )
    );
    assert_eq!(k.recv().await, data(3, true, b""));
}

#[tokio::test]
async fn many_bytes_flow_both_ways_with_window_updates() {
    let (k, _session) = connect();
    let Kubectl {
        read,
        write,
        encoder,
        decoder,
    } = k;
    let mut reader = Kubectl {
        read,
        write: tokio::io::sink(),
        encoder: Encoder::new(),
        decoder,
    };
    let mut writer = Kubectl {
        read: tokio::io::empty(),
        write,
        encoder,
        decoder: Decoder::new(),
    };
    let total = 300 * 1024;
    let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    // Like kubectl: both streams first, then the local connection's bytes in 32 KiB frames,
    // written while the echo comes back (neither side may wait for the other to finish).
    writer
        .send(&[syn(1, "error", "8080", "a"), syn(3, "data", "8080", "a")])
        .await;
    let writing = tokio::spawn(async move {
        for chunk in sent.chunks(32 * 1024) {
            writer.send(&[data(3, false, chunk)]).await;
        }
        writer
    });
    let mut echoed = Vec::new();
    let mut updates = (0u64, 0u64);
    while echoed.len() < total {
        match reader.recv().await {
            Frame::Data {
                stream: 3, data, ..
            } => echoed.extend(data),
            Frame::WindowUpdate { stream: 0, delta } => updates.0 += u64::from(delta),
            Frame::WindowUpdate { stream: 3, delta } => updates.1 += u64::from(delta),
            Frame::SynReply { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(echoed == payload, "the echo differs from what was sent");
    // Everything delivered to the node was given back to both windows but the last part.
    assert!(updates.0 > total as u64 - u64::from(spdy::INITIAL_WINDOW));
    assert!(updates.1 > total as u64 - u64::from(spdy::INITIAL_WINDOW));
    writing.await.unwrap();
}

#[tokio::test]
async fn streams_without_a_port_or_type_are_refused() {
    let (mut k, _session) = connect();
    let bad = |stream| Frame::SynStream {
        stream,
        associated: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: Headers(vec![("streamtype".into(), "data".into())]),
    };
    k.send(&[bad(1), syn(3, "data", "0", "1"), syn(5, "stdin", "80", "1")])
        .await;
    for stream in [1, 3, 5] {
        assert_eq!(
            k.recv().await,
            Frame::RstStream {
                stream,
                status: spdy::rst::REFUSED_STREAM
            }
        );
    }
}

#[tokio::test]
async fn broken_framing_ends_the_session_with_a_goaway() {
    let (mut k, session) = connect();
    k.write
        .write_all(&[0x80, 3, 0, 5, 0, 0, 0, 0])
        .await
        .unwrap();
    assert_eq!(
        k.recv().await,
        Frame::GoAway {
            last_good: 0,
            status: spdy::goaway::PROTOCOL_ERROR
        }
    );
    assert!(matches!(
        session.await.unwrap(),
        Err(Error::Protocol(spdy::Error::UnknownType(5)))
    ));
}

#[tokio::test]
async fn spdy_in_websocket_messages_may_split_frames() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let _session = tokio::spawn(async move {
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, Some(ws_config())).await;
        run(WsWire(ws), Arc::new(EchoNode), LABEL.into()).await
    });
    let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let mut encoder = Encoder::new();
    let mut bytes = Vec::new();
    for f in [
        syn(1, "error", "8080", "0"),
        syn(3, "data", "8080", "0"),
        data(3, false, b"over a websocket"),
    ] {
        encoder.encode(&f, &mut bytes).unwrap();
    }
    // kubectl's framer writes each field on its own: a frame spans several messages.
    for piece in bytes.chunks(3) {
        ws.send(WsMessage::Binary(piece.to_vec().into()))
            .await
            .unwrap();
    }
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    while frames.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("the websocket is open")
            .unwrap();
        if let WsMessage::Binary(b) = m {
            decoder.push(&b);
            while let Some(f) = decoder.next().unwrap() {
                frames.push(f);
            }
        }
    }
    assert_eq!(
        frames,
        [reply(1), reply(3), data(3, false, b"over a websocket")]
    );
}

#[test]
fn old_clients_streams_pair_by_id() {
    let headers = |kind: &str| {
        Headers(vec![
            ("streamtype".into(), kind.into()),
            ("port".into(), "80".into()),
        ])
    };
    assert_eq!(
        forward_headers(5, &headers("error")),
        Some((Kind::Error, 80, "5".into()))
    );
    assert_eq!(
        forward_headers(7, &headers("data")),
        Some((Kind::Data, 80, "5".into()))
    );
}
