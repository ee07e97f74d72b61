//! A runc node's streams: `kubectl logs` from the CRI log files, `kubectl exec` through
//! `runc exec`, `kubectl attach` through the container's monitor, framed as Kubernetes'
//! channel protocol (see [`super::streams`]).
//!
//! Attach reads the container's output from its CRI log, from the log's end at the moment
//! of attaching (a terminal's output is all `stdout`), and sends stdin bytes and resizes to
//! the monitor's attach socket ([`super::attach`]), which holds the container's stdin pipe or
//! terminal; so an attach works the same after keelson restarted.
//!
//! Invariants: every stream opens with exactly one [`super::streams::Opened`]; an exec's
//! process is killed when its client goes away (runc's end of the pipes is dropped with the
//! child, which is spawned `kill_on_drop`), and its exit status is sent on channel 3 before
//! the stream closes; an attach never outlives its client (its log follower is aborted with
//! it) and ends, with a Success status on channel 3, once the container has exited and its
//! output was sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::attach;
use super::containers::Shared;
use super::logs::{self, LogSource};
use super::pods::{ContainerState, PodKey};
use super::runc::ExecProcess;
use super::streams::{CHUNK, LogOptions, Message, Pipe, StreamIo, StreamRequest, StreamServer};

/// Channels of `v4/v5.channel.k8s.io`.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Serves logs and exec from the pods a [`super::containers::Containers`] runs.
pub struct RuncStreams {
    pub shared: Arc<Shared>,
}

impl StreamServer for RuncStreams {
    fn serve(
        &self,
        request: StreamRequest,
        pipe: Pipe,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            match request {
                StreamRequest::Logs {
                    pod,
                    uid,
                    container,
                    options,
                } => serve_logs(&shared, &pod, &uid, &container, &options, pipe).await,
                StreamRequest::Exec {
                    pod,
                    uid,
                    container,
                    command,
                    io,
                } => serve_exec(&shared, &pod, &uid, &container, command, io, pipe).await,
                StreamRequest::PortForward { pod, uid, port } => {
                    serve_port_forward(&shared, &pod, &uid, port, pipe).await
                }
                StreamRequest::Attach {
                    pod,
                    uid,
                    container,
                    io,
                } => serve_attach(&shared, &pod, &uid, &container, io, pipe).await,
            }
        })
    }
}

/// Why a container's stream cannot open: kubelet's messages.
fn not_started(shared: &Shared, pod: &PodKey, container: &str) -> String {
    let reason = shared
        .waiting_reason(pod, container)
        .unwrap_or_else(|| "ContainerCreating".into());
    format!(
        "container \"{container}\" in pod \"{}\" is waiting to start: {reason}",
        pod.name
    )
}

async fn serve_logs(
    shared: &Shared,
    pod: &PodKey,
    uid: &str,
    container: &str,
    options: &LogOptions,
    pipe: Pipe,
) {
    let Some((run_uid, run)) = shared.run_of(pod, container).filter(|(u, _)| u == uid) else {
        pipe.open(400, &not_started(shared, pod, container)).await;
        return;
    };
    // kubelet's rule: while a container waits to restart, both its current and its previous
    // log are the last run's; otherwise `previous` is the run before the current one.
    let backing_off = run.runc_id.is_none() && matches!(run.state, ContainerState::Waiting { .. });
    let number = if options.previous && backing_off {
        run.number
    } else if options.previous {
        match run.number.checked_sub(1) {
            Some(n) => n,
            None => {
                let msg = format!(
                    "previous terminated container \"{container}\" in pod \"{}\" not found",
                    pod.name
                );
                pipe.open(400, &msg).await;
                return;
            }
        }
    } else {
        run.number
    };
    let current = shared
        .log_dir(pod, &run_uid, container)
        .join(format!("{number}.log"));
    let files = if options.previous {
        vec![current]
    } else {
        logs::log_files(&current).unwrap_or_else(|_| vec![current])
    };
    // A run's state directory sits beside the others: <container>/<run>/state.
    let exit_file = run.state_dir.parent().and_then(|d| d.parent()).map(|c| {
        c.join(number.to_string())
            .join("state")
            .join(super::monitor::EXIT_FILE)
    });
    let source = LogSource { files, exit_file };
    let since = match options
        .since
        .as_deref()
        .map(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339))
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            pipe.open(400, &format!("bad since time: {e}")).await;
            return;
        }
    };
    let opts = logs::LogOptions {
        follow: options.follow && !options.previous,
        tail_lines: options.tail_lines,
        since,
        timestamps: options.timestamps,
        limit_bytes: options.limit_bytes,
    };
    if !pipe.open(200, "").await {
        return;
    }
    let (mut writer, reader) = tokio::io::duplex(CHUNK);
    let copy = async move {
        if let Err(e) = logs::copy_logs(&source, &opts, &mut writer).await {
            tracing::debug!(error = %e, "log stream ended");
        }
        let _ = writer.shutdown().await;
    };
    let Pipe { tx, rx: _rx } = pipe;
    let sent = forward(reader, tx, None);
    tokio::pin!(copy, sent);
    tokio::select! {
        // All written: the rest of it is still in the duplex buffer; send it to the end.
        _ = &mut copy => sent.await,
        // The client is gone: the copy (a follower) stops with it.
        _ = &mut sent => {}
    }
}

/// Sends what `from` yields as binary messages, each prefixed with `channel` if given, until
/// it ends or the other side is gone.
async fn forward(mut from: impl AsyncRead + Unpin, tx: mpsc::Sender<Message>, channel: Option<u8>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut msg = Vec::with_capacity(n + 1);
        if let Some(c) = channel {
            msg.push(c);
        }
        msg.extend_from_slice(&buf[..n]);
        if tx.send(Message::Binary(msg)).await.is_err() {
            return;
        }
    }
}

async fn serve_exec(
    shared: &Shared,
    pod: &PodKey,
    uid: &str,
    container: &str,
    command: Vec<String>,
    io: StreamIo,
    pipe: Pipe,
) {
    let run = shared.run_of(pod, container).filter(|(u, _)| u == uid);
    let Some((_, run)) = run else {
        pipe.open(400, &not_started(shared, pod, container)).await;
        return;
    };
    let (Some(id), ContainerState::Running { .. }) = (run.runc_id.clone(), &run.state) else {
        let msg = format!(
            "container \"{container}\" in pod \"{}\" is not running",
            pod.name
        );
        pipe.open(400, &msg).await;
        return;
    };
    let process = ExecProcess::Args {
        argv: command.clone(),
        env: Vec::new(),
        cwd: None,
        user: None,
    };
    let mut exec = match shared.config.runc.exec(&id, &process, io.tty).await {
        Ok(e) => e,
        Err(e) => {
            pipe.open(
                500,
                &format!("cannot exec in container \"{container}\": {e}"),
            )
            .await;
            return;
        }
    };
    if !pipe.open(200, "").await {
        return;
    }
    let Pipe { tx, mut rx } = pipe;
    let mut stdin: Option<Box<dyn AsyncWrite + Unpin + Send>> = None;
    let mut outputs = Vec::new();
    let console = exec.console.take();
    let mut resize: Option<Arc<super::runc::Console>> = None;
    match console {
        Some(console) => {
            // One terminal carries input and output; stderr is merged into it.
            let console = Arc::new(console);
            resize = Some(console.clone());
            let (r, w) = tokio::io::split(ConsoleIo(console));
            if io.stdin {
                stdin = Some(Box::new(w));
            }
            outputs.push(tokio::spawn(forward(r, tx.clone(), Some(STDOUT))));
        }
        None => {
            if let Some(w) = exec.child.stdin.take()
                && io.stdin
            {
                stdin = Some(Box::new(w));
            }
            if let Some(r) = exec.child.stdout.take() {
                outputs.push(tokio::spawn(forward(r, tx.clone(), Some(STDOUT))));
            }
            if let Some(r) = exec.child.stderr.take() {
                outputs.push(tokio::spawn(forward(r, tx.clone(), Some(STDERR))));
            }
        }
    }
    let status = loop {
        tokio::select! {
            s = exec.child.wait() => break s,
            m = rx.recv() => match m {
                Some(Message::Binary(b)) if !b.is_empty() => match b[0] {
                    STDIN => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&b[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    RESIZE => {
                        if let (Some(c), Ok(size)) = (&resize, serde_json::from_slice::<serde_json::Value>(&b[1..])) {
                            let w = size["Width"].as_u64().unwrap_or(80) as u16;
                            let h = size["Height"].as_u64().unwrap_or(24) as u16;
                            let _ = c.resize(h, w);
                        }
                    }
                    CLOSE if b.get(1) == Some(&STDIN) => {
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    _ => {}
                },
                Some(_) => {}
                // The client is gone: the exec goes with it.
                None => return,
            },
        }
    };
    drop(stdin);
    for o in outputs {
        let _ = o.await;
    }
    let code = status.ok().and_then(|s| s.code()).unwrap_or(1);
    let message = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    let mut frame = vec![ERROR];
    frame.extend_from_slice(message.to_string().as_bytes());
    let _ = tx.send(Message::Binary(frame)).await;
}

/// Attach: the container's output from now on, stdin and resizes to its monitor.
async fn serve_attach(
    shared: &Shared,
    pod: &PodKey,
    uid: &str,
    container: &str,
    io: StreamIo,
    pipe: Pipe,
) {
    let run = shared.run_of(pod, container).filter(|(u, _)| u == uid);
    let Some((run_uid, run)) = run else {
        pipe.open(400, &not_started(shared, pod, container)).await;
        return;
    };
    if !matches!(run.state, ContainerState::Running { .. }) || run.runc_id.is_none() {
        let msg = format!(
            "cannot attach to container \"{container}\" in pod \"{}\": the container is not running",
            pod.name
        );
        pipe.open(400, &msg).await;
        return;
    }
    let monitor = match attach_socket(&run.state_dir).await {
        Ok(m) => m,
        Err(e) => {
            let msg = format!(
                "cannot attach to container \"{container}\" in pod \"{}\": {e}",
                pod.name
            );
            pipe.open(500, &msg).await;
            return;
        }
    };
    let hello = monitor.as_ref().map(|(_, h)| *h).unwrap_or_default();
    if io.stdin && !hello.stdin {
        // kubectl checks `tty` itself ("Unable to use a TTY - container … did not allocate
        // one") but sends stdin regardless; refuse rather than swallow the input.
        let msg = format!(
            "cannot attach to the stdin of container \"{container}\" in pod \"{}\": stdin is not enabled for this container (its spec has no \"stdin: true\"); attach without -i to see its output",
            pod.name
        );
        pipe.open(400, &msg).await;
        return;
    }
    if io.stdin && !hello.stdin_open {
        let msg = format!(
            "cannot attach to the stdin of container \"{container}\" in pod \"{}\": its stdin was closed when the first attach session ended (stdinOnce)",
            pod.name
        );
        pipe.open(400, &msg).await;
        return;
    }
    let current = shared
        .log_dir(pod, &run_uid, container)
        .join(format!("{}.log", run.number));
    let exit_file = run.state_dir.join(super::monitor::EXIT_FILE);
    let (out_tx, mut output) = mpsc::channel(ATTACH_OUTPUT_QUEUE);
    // The log's end is taken here, before the stream opens and any input is passed on, so
    // nothing the container writes in answer falls before the follower's start.
    let from = match logs::LogEnd::of(&current) {
        Ok(f) => f,
        Err(e) => {
            pipe.open(500, &format!("cannot read the container's log: {e}"))
                .await;
            return;
        }
    };
    let follower = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = logs::follow_output(from, Some(&exit_file), out_tx).await {
            tracing::debug!(error = %e, "attach output ended");
        }
    }));
    if !pipe.open(200, "").await {
        return;
    }
    let Pipe { tx, mut rx } = pipe;
    let (mut socket, mut frames) = match monitor {
        Some((socket, _)) => (Some(socket), Vec::with_capacity(attach::MAX_FRAME)),
        None => (None, Vec::new()),
    };
    let mut feeds_stdin = false;
    // When this session ends: set once its client closed stdin (see the loop).
    let mut ends_at: Option<tokio::time::Instant> = None;
    if io.stdin {
        frames.clear();
        attach::encode(&attach::Frame::StdinOpen, &mut frames);
        feeds_stdin = send_frames(&mut socket, &frames).await;
    }
    loop {
        let linger = async {
            match ends_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = linger => break,
            chunk = output.recv() => match chunk {
                Some((stream, text)) => {
                    let channel = match stream {
                        _ if hello.tty => STDOUT,
                        logs::Stream::Stdout => STDOUT,
                        logs::Stream::Stderr => STDERR,
                    };
                    let wanted = if channel == STDOUT { io.stdout } else { io.stderr };
                    if !wanted {
                        continue;
                    }
                    for part in text.chunks(CHUNK) {
                        let mut msg = Vec::with_capacity(part.len() + 1);
                        msg.push(channel);
                        msg.extend_from_slice(part);
                        if tx.send(Message::Binary(msg)).await.is_err() {
                            return;
                        }
                    }
                }
                // The container exited and all it wrote was sent.
                None => break,
            },
            m = rx.recv() => {
                let Some(m) = m else {
                    // The client is gone; dropping the socket ends its stdin at the monitor.
                    return;
                };
                let Message::Binary(b) = m else { continue };
                let Some((&channel, data)) = b.split_first() else { continue };
                frames.clear();
                match channel {
                    STDIN if feeds_stdin => {
                        attach::encode(&attach::Frame::Stdin(data), &mut frames);
                    }
                    RESIZE if hello.tty => {
                        if let Some((rows, cols)) = terminal_size(data) {
                            attach::encode(&attach::Frame::Resize { rows, cols }, &mut frames);
                        }
                    }
                    CLOSE if data.first() == Some(&STDIN) && feeds_stdin => {
                        feeds_stdin = false;
                        attach::encode(&attach::Frame::StdinClose, &mut frames);
                        // As containerd does: with stdinOnce the container's stdin closes
                        // and the session lasts until the container ends; otherwise the
                        // session ends with its client's stdin (after what the container
                        // answered to the last input had a moment to arrive).
                        if !hello.stdin_once {
                            ends_at = Some(tokio::time::Instant::now() + ATTACH_LINGER);
                        }
                    }
                    _ => {}
                }
                if !frames.is_empty() && !send_frames(&mut socket, &frames).await {
                    feeds_stdin = false;
                }
            }
        }
    }
    drop(follower);
    let mut frame = vec![ERROR];
    frame.extend_from_slice(
        json!({"metadata": {}, "status": "Success"})
            .to_string()
            .as_bytes(),
    );
    let _ = tx.send(Message::Binary(frame)).await;
}

/// How long a session whose client closed stdin still relays output.
const ATTACH_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Output records queued between an attach's log follower and its client.
const ATTACH_OUTPUT_QUEUE: usize = 16;
/// Longest wait for a monitor's hello on its attach socket.
const HELLO_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the monitor's attach socket could not be used.
#[derive(Debug, thiserror::Error)]
enum AttachError {
    #[error("cannot reach the container's monitor: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the container's monitor did not answer: {0}")]
    Hello(#[source] std::io::Error),
    #[error("the container's monitor answered with something other than a hello")]
    Protocol,
}

/// Connects to the monitor's attach socket in `state_dir` and reads its hello; `None` when
/// it has none (the container has neither stdin nor a terminal).
async fn attach_socket(
    state_dir: &std::path::Path,
) -> Result<Option<(tokio::net::UnixStream, attach::Hello)>, AttachError> {
    use std::io::ErrorKind;
    let dir = match attach::Dir::open(state_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AttachError::Connect(e)),
    };
    let mut socket = match tokio::net::UnixStream::connect(dir.path(attach::SOCKET)).await {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AttachError::Connect(e)),
    };
    drop(dir);
    let mut buf = [0u8; attach::HEADER + 1];
    tokio::time::timeout(HELLO_WAIT, socket.read_exact(&mut buf))
        .await
        .map_err(|_| AttachError::Hello(std::io::ErrorKind::TimedOut.into()))?
        .map_err(AttachError::Hello)?;
    match attach::decode(&buf) {
        Ok((attach::Frame::Hello(hello), _)) => Ok(Some((socket, hello))),
        _ => Err(AttachError::Protocol),
    }
}

/// Writes frames to the monitor; `false` (and the socket dropped) if it is gone.
async fn send_frames(socket: &mut Option<tokio::net::UnixStream>, frames: &[u8]) -> bool {
    let Some(s) = socket.as_mut() else {
        return false;
    };
    if s.write_all(frames).await.is_ok() {
        return true;
    }
    *socket = None;
    false
}

/// A resize message's `{"Width": …, "Height": …}` as (rows, cols).
fn terminal_size(json: &[u8]) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    let size: Size = serde_json::from_slice(json).ok()?;
    Some((size.height, size.width))
}

/// Aborts a task when dropped: the attach's log follower ends with its stream.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects to `port` in the pod's network namespace (the node's, for `hostNetwork`) and
/// relays the connection's bytes until either side ends.
async fn serve_port_forward(shared: &Shared, pod: &PodKey, uid: &str, port: u16, pipe: Pipe) {
    let Some(netns) = shared.netns_of(pod, uid) else {
        pipe.open(
            404,
            &format!(
                "pod {}/{} is not running on this node",
                pod.namespace, pod.name
            ),
        )
        .await;
        return;
    };
    let stream = match super::probes::connect(netns.as_deref(), None, port).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}, uid {uid}: failed to connect to localhost:{port} inside namespace: {e}",
                pod.name
            );
            pipe.open(500, &msg).await;
            return;
        }
    };
    if !pipe.open(200, "").await {
        return;
    }
    let (read, mut write) = stream.into_split();
    let Pipe { tx, mut rx } = pipe;
    let upstream = async move {
        while let Some(m) = rx.recv().await {
            if let Message::Binary(b) = m
                && write.write_all(&b).await.is_err()
            {
                break;
            }
        }
        let _ = write.shutdown().await;
    };
    tokio::join!(upstream, forward(read, tx, None));
}

/// The terminal of an exec, shared by its reader, its writer and resizes.
struct ConsoleIo(Arc<super::runc::Console>);

impl AsyncRead for ConsoleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.poll_read_shared(cx, buf)
    }
}

impl AsyncWrite for ConsoleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_write_shared(cx, data)
    }
    fn poll_flush(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
