//! Websocket upgrades on the API's listener: the tunnel, a node's stream dial-back, and
//! kubectl's `exec`/`attach` (RFC 6455 §4.2 handshake; hyper hands over the connection).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Response, StatusCode, header};

use super::Body;
use super::status::ApiError;

/// Checks a websocket upgrade request; returns the `Sec-WebSocket-Accept` value to answer.
pub fn accept_key(h: &HeaderMap) -> Result<String, ApiError> {
    let is = |name: header::HeaderName, want: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(want))
    };
    if !is(header::UPGRADE, "websocket") || !is(header::CONNECTION, "upgrade") {
        return Err(ApiError::BadRequest(
            "this endpoint needs a websocket upgrade (Connection: Upgrade, Upgrade: websocket)"
                .into(),
        ));
    }
    if !is(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(ApiError::BadRequest(
            "unsupported websocket version: Sec-WebSocket-Version must be 13".into(),
        ));
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(ApiError::BadRequest("Sec-WebSocket-Key is missing".into()));
    };
    Ok(websocket_accept(key.as_bytes()))
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2); the agent checks the
/// server's answer with it too.
pub fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// The server's end of the websocket a request upgraded to, once hyper hands the connection
/// over; `None` (logged as `what`) if the upgrade did not complete.
pub async fn server_websocket(
    req: hyper::Request<hyper::body::Incoming>,
    config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    what: &str,
) -> Option<tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>> {
    match hyper::upgrade::on(req).await {
        Ok(upgraded) => Some(
            tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                Some(config),
            )
            .await,
        ),
        Err(e) => {
            tracing::debug!(error = %e, "{what} upgrade failed");
            None
        }
    }
}

/// Whether a request asks for a websocket at all (kubectl falls back to SPDY otherwise).
pub fn is_websocket(h: &HeaderMap) -> bool {
    h.get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
}

/// The 101 answer, naming the chosen subprotocol if any.
pub fn switching_protocols(accept: &str, protocol: Option<&str>) -> Response<Body> {
    let mut resp = Response::new(Empty::<Bytes>::new().map_err(|e| match e {}).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = resp.headers_mut();
    hs.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    hs.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(accept) {
        hs.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol.and_then(|p| header::HeaderValue::from_str(p).ok()) {
        hs.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
