//! `pods/<name>/log`, `pods/<name>/exec` and `pods/<name>/attach`: checked here, served by the
//! pod's node through a stream the tunnel brokers (see [`crate::tunnel::streams`]).
//! `pods/<name>/portforward` is routed here too and handed to [`super::portforward`].
//!
//! Authorisation is the API server's (the caller must be allowed the subresource; a node's
//! certificate never is), never the node's. Everything a client can get wrong — a container
//! that is not in the pod, a pod not yet on a node, conflicting options — is answered here
//! with Kubernetes' messages before any node is asked. Exec and attach speak the websocket
//! `v5.channel.k8s.io` protocol kubectl 1.30+ uses (and `v4`); the node speaks the same
//! framing, so this side only relays messages.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use serde_json::Value;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::resources::ObjectRef;
use super::status::ApiError;
use super::{Api, Body, upgrade};
use crate::node::pods::PodKey;
use crate::node::streams::{
    LogOptions, MAX_MESSAGE, Message, Pipe, StreamError, StreamIo, StreamRequest,
};

/// The streaming subresources of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Log,
    Exec,
    Attach,
    /// Served by [`super::portforward`].
    PortForward,
}

impl Subresource {
    pub fn named(s: &str) -> Option<Subresource> {
        match s {
            "log" => Some(Subresource::Log),
            "exec" => Some(Subresource::Exec),
            "attach" => Some(Subresource::Attach),
            "portforward" => Some(Subresource::PortForward),
            _ => None,
        }
    }
}

/// The channel protocols kubectl offers for exec and attach, best first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

pub async fn serve(
    api: Arc<Api>,
    r: ObjectRef,
    what: Subresource,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if what == Subresource::PortForward {
        return super::portforward::serve(api, r, req).await;
    }
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| {
        query
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let flag = |k: &str| matches!(get(k), Some("true" | "1"));
    let Pod {
        key,
        uid,
        node,
        object,
    } = pod(&api, &r).await?;
    let container = container(&object, &r.name, get("container"))?;
    let node = node.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "container \"{container}\" in pod \"{}\" is waiting to start: the pod is not scheduled to a node yet",
            r.name
        ))
    })?;
    match what {
        Subresource::Log => {
            let options = log_options(&get)?;
            let request = StreamRequest::Logs {
                pod: key,
                uid,
                container,
                options,
            };
            let pipe = open(&api, &node, request).await?;
            Ok(log_body(pipe))
        }
        // Answered at the top, before any container is looked for.
        Subresource::PortForward => Err(ApiError::Internal(
            "port-forward reached the container streams".into(),
        )),
        Subresource::Exec | Subresource::Attach => {
            let websocket = upgrade::is_websocket(req.headers());
            let accept = if websocket {
                upgrade::accept_key(req.headers())?
            } else {
                String::new()
            };
            let offered: Vec<String> = req
                .headers()
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|p| p.trim().to_owned())
                .collect();
            let chosen = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p));
            let Some(protocol) = chosen.or((!websocket).then_some(&PROTOCOLS[0])) else {
                return Err(ApiError::BadRequest(format!(
                    "none of the offered websocket subprotocols ({}) is supported; this server speaks {}",
                    offered.join(", "),
                    PROTOCOLS.join(", ")
                )));
            };
            let io = StreamIo {
                stdin: flag("stdin"),
                stdout: flag("stdout"),
                stderr: flag("stderr"),
                tty: flag("tty"),
                v5: *protocol == PROTOCOLS[0],
            };
            if !(io.stdin || io.stdout || io.stderr) {
                return Err(ApiError::BadRequest(
                    "you must specify at least one of stdin, stdout, stderr".into(),
                ));
            }
            let request = if what == Subresource::Exec {
                let command: Vec<String> = query
                    .iter()
                    .filter(|(n, _)| n == "command")
                    .map(|(_, v)| v.clone())
                    .collect();
                if command.is_empty() {
                    return Err(ApiError::BadRequest(
                        "you must specify at least one command for the container".into(),
                    ));
                }
                StreamRequest::Exec {
                    pod: key,
                    uid,
                    container,
                    command,
                    io,
                }
            } else {
                StreamRequest::Attach {
                    pod: key,
                    uid,
                    container,
                    io,
                }
            };
            let pipe = open(&api, &node, request).await?;
            if !websocket {
                // kubectl falls back to SPDY when its websocket attempt fails; the node was
                // asked anyway so that this answer carries the node's reason, if it had one.
                return Err(ApiError::BadRequest(format!(
                    "pods/{} needs a websocket upgrade ({}): use kubectl 1.30 or later (SPDY is not supported)",
                    if what == Subresource::Exec {
                        "exec"
                    } else {
                        "attach"
                    },
                    PROTOCOLS.join(", ")
                )));
            }
            tokio::spawn(async move {
                let config = crate::node::streams::ws_config();
                if let Some(ws) = upgrade::server_websocket(req, config, "exec").await {
                    relay(ws, pipe).await;
                }
            });
            Ok(upgrade::switching_protocols(&accept, Some(protocol)))
        }
    }
}

/// A pod a stream is asked of, as stored.
pub(super) struct Pod {
    pub key: PodKey,
    pub uid: String,
    /// The node it is bound to; `None` until the scheduler binds it.
    pub node: Option<String>,
    pub object: Value,
}

/// Reads the pod a stream is for (a missing pod is Kubernetes' NotFound).
pub(super) async fn pod(api: &Api, r: &ObjectRef) -> Result<Pod, ApiError> {
    let object = api.registry.get(r).await?;
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let node = Some(text("/spec/nodeName")).filter(|n| !n.is_empty());
    Ok(Pod {
        key: PodKey {
            namespace: r.namespace.clone().unwrap_or_default(),
            name: r.name.clone(),
        },
        uid: text("/metadata/uid"),
        node,
        object,
    })
}

/// The container a request names, or the pod's only one; Kubernetes' messages otherwise.
fn container(pod: &Value, pod_name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (main, init, ephemeral) = (
        names("containers"),
        names("initContainers"),
        names("ephemeralContainers"),
    );
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if main.iter().chain(&init).chain(&ephemeral).any(|n| n == c) => Ok(c.to_owned()),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None if main.len() == 1 => Ok(main[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                main.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::BadRequest(msg))
        }
    }
}

/// `kubectl logs`' query parameters, checked the way the API server checks PodLogOptions.
fn log_options<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<LogOptions, ApiError> {
    let flag = |k: &str| matches!(get(k), Some("true" | "1"));
    let number = |k: &str, min: i64| -> Result<Option<u64>, ApiError> {
        match get(k).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= min => Ok(Some(n as u64)),
                Ok(_) => Err(ApiError::Unprocessable(format!(
                    "PodLogOptions is invalid: {k}: Invalid value: {v}: must be greater than {}",
                    if min == 0 { "or equal to 0" } else { "0" }
                ))),
                Err(_) => Err(ApiError::BadRequest(format!(
                    "{k} {v:?} is not a whole number"
                ))),
            },
        }
    };
    let tail_lines = number("tailLines", 0)?;
    let limit_bytes = number("limitBytes", 1)?;
    let since_seconds = number("sinceSeconds", 1)?;
    let since_time = get("sinceTime").filter(|v| !v.is_empty());
    let since = match (since_seconds, since_time) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Unprocessable(
                "PodLogOptions is invalid: sinceSeconds: Forbidden: at most one of sinceTime or sinceSeconds may be specified".into(),
            ));
        }
        (Some(secs), None) => {
            let at = time::OffsetDateTime::now_utc() - time::Duration::seconds(secs as i64);
            Some(rfc3339(at))
        }
        (None, Some(t)) => {
            let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    ApiError::BadRequest(format!("sinceTime {t:?} is not an RFC 3339 time: {e}"))
                })?;
            Some(rfc3339(at))
        }
        (None, None) => None,
    };
    Ok(LogOptions {
        follow: flag("follow"),
        previous: flag("previous"),
        timestamps: flag("timestamps"),
        tail_lines,
        limit_bytes,
        since,
    })
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn open(api: &Api, node: &str, request: StreamRequest) -> Result<Pipe, ApiError> {
    api.tunnels.open(node, request).await.map_err(|e| match e {
        StreamError::Refused { code, message } => match code {
            400 | 404 => ApiError::BadRequest(message),
            403 => ApiError::Forbidden(message),
            503 => ApiError::Unavailable(message),
            _ => ApiError::Internal(message),
        },
        other => ApiError::Unavailable(other.to_string()),
    })
}

/// The log text as a chunked body, ending when the node closes the stream.
fn log_body(pipe: Pipe) -> Response<Body> {
    let chunks = futures_util::stream::unfold(pipe, |mut pipe| async move {
        loop {
            match pipe.rx.recv().await? {
                Message::Binary(b) => {
                    return Some((Ok::<_, Infallible>(Frame::data(Bytes::from(b))), pipe));
                }
                Message::Text(_) => continue,
            }
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Relays kubectl's websocket and the node's stream, message for message, until the node
/// ends the stream (everything it sent, its exit status last, reaches the client first) or
/// the client goes.
async fn relay<S>(mut ws: WebSocketStream<S>, mut pipe: Pipe)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Set once the node stops taking input: its output is still drained.
    let mut upstream_open = true;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(WsMessage::Binary(b))) => {
                    if upstream_open
                        && (b.len() > MAX_MESSAGE || pipe.tx.send(Message::Binary(b.to_vec())).await.is_err())
                    {
                        upstream_open = false;
                    }
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) | WsMessage::Text(_))) => {
                    // tungstenite queues the pong; flush it out. Text is not part of the protocol.
                    if ws.flush().await.is_err() { return; }
                }
                Some(Ok(WsMessage::Close(_))) | None => return,
                Some(Err(e)) => {
                    // Tell the client why (a bare TCP close reads as "1006 abnormal closure").
                    tracing::debug!(error = %e, "a stream's client broke the protocol");
                    let code = match e {
                        WsError::Capacity(_) => CloseCode::Size,
                        _ => CloseCode::Protocol,
                    };
                    let _ = ws.close(Some(CloseFrame { code, reason: e.to_string().into() })).await;
                    return;
                }
            },
            m = pipe.rx.recv() => match m {
                Some(Message::Binary(b)) => {
                    if ws.send(WsMessage::Binary(b.into())).await.is_err() { return; }
                }
                Some(Message::Text(_)) => {}
                None => break,
            },
        }
    }
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"spec": {"containers": [{"name": "app"}, {"name": "sidecar"}],
                        "initContainers": [{"name": "setup"}]}})
    }

    #[test]
    fn a_container_is_named_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "app"}]}});
        assert_eq!(container(&one, "web", None).unwrap(), "app");
        assert_eq!(container(&pod(), "web", Some("setup")).unwrap(), "setup");
        let e = container(&pod(), "web", None).unwrap_err().to_string();
        assert_eq!(
            e,
            "a container name must be specified for pod web, choose one of: [app sidecar] or one of the init containers: [setup]"
        );
        let e = container(&pod(), "web", Some("nope"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "container nope is not valid for pod web");
    }

    #[test]
    fn log_options_are_checked_like_pod_log_options() {
        let q = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
        };
        let o = log_options(&q(&[
            ("follow", "true"),
            ("tailLines", "10"),
            ("timestamps", "true"),
        ]))
        .unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(10));
        assert!(o.since.is_none());
        let o = log_options(&q(&[("sinceTime", "2026-12-06T10:00:00Z")])).unwrap();
        assert_eq!(o.since.as_deref(), Some("2026-12-06T10:00:00Z"));
        assert!(
            log_options(&q(&[("sinceSeconds", "60")]))
                .unwrap()
                .since
                .is_some()
        );
        let both = log_options(&q(&[
            ("sinceSeconds", "5"),
            ("sinceTime", "2026-12-06T10:00:00Z"),
        ]));
        assert!(matches!(both, Err(ApiError::Unprocessable(_))));
        assert!(matches!(
            log_options(&q(&[("tailLines", "-1")])),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            log_options(&q(&[("limitBytes", "0")])),
            Err(ApiError::Unprocessable(_))
        ));
        assert!(matches!(
            log_options(&q(&[("tailLines", "x")])),
            Err(ApiError::BadRequest(_))
        ));
    }
}
