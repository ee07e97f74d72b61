//! The agent ⇄ server tunnel: one websocket per agent, carrying postcard frames.
//!
//! An agent opens `wss://<server>/v1-keelson/connect` with its node client certificate
//! (mTLS, `CN=system:node:<name>`, `O=system:nodes`). Every websocket message is one binary
//! frame holding one postcard-encoded value:
//!
//! | direction | frame | when |
//! |---|---|---|
//! | agent → server | [`Up::Hello`] | first frame: protocol version and the node's [`NodeReport`] |
//! | agent → server | [`Up::Report`] | the node's report changed (addresses, labels, OS...) |
//! | server → agent | [`Down::Welcome`] | answer to `Hello`: version and every server's address |
//! | server → agent | [`Down::Servers`] | the set of servers changed |
//! | server → agent | [`Down::Refused`] | the server will not keep this tunnel (then it closes) |
//! | server → agent | [`Down::PodsListing`], [`Down::Pod`]…, [`Down::PodsListed`] | after `Welcome` (and whenever the server lists pods again): every pod bound to the node |
//! | server → agent | [`Down::Pod`] / [`Down::PodGone`] | a pod bound to the node was added or changed / deleted or moved |
//! | agent → server | [`Up::PodStatus`] | a pod's status changed; the server writes it as the node (NodeRestriction applies) |
//! | server → agent | [`Down::Dial`] | a client wants a pod's logs or an exec: the node dials [`STREAM_PATH`]`/<id>` on this server and serves it there (see [`streams`]) |
//! | agent → server | [`Up::Event`] | something happened to a pod (pulled, started, backing off): an Event, written as `kubelet` |
//! | agent → server | [`Up::Get`] | the node needs a ConfigMap, Secret or claim one of its pods uses, a local volume pinned to it, or reports one cleaned up |
//! | server → agent | [`Down::Object`] | the answer: the object, or why not (only objects its pods reference, volumes pinned to it) |
//! | server → agent | [`Down::Net`]… | after `Welcome`, to nodes that asked: the cluster's network settings, a listing of every node's addresses and pod blocks, Services and EndpointSlices (compact), then each change |
//! | agent → server | [`Up::LbRenew`] | take or renew the lease on a LoadBalancer address the node is a candidate for (see [`lb`]) |
//! | server → agent | [`Down::LbGrant`] | the answer: held or not, with the lease's epoch (none when the database failed) |
//! | agent → server | [`Up::LbRelease`] | the node removed the address (stopping, or no longer a candidate): release the lease |
//!
//! Keepalive is websocket ping/pong: the agent pings every [`PING_INTERVAL`]; either side
//! that hears nothing for [`DEAD_AFTER`] drops the connection (dead-peer detection), and the
//! agent moves to another server. Invariants: a frame is at most [`MAX_FRAME`] bytes; a frame
//! that is oversized, not binary, or does not decode closes that one connection with a logged
//! reason and touches nothing else (frames down to an agent may be larger, up to
//! [`MAX_DOWN_FRAME`]: a pod's spec or a Secret); an agent's heartbeats go to the database only through the
//! server's batched write (see [`sessions`]), never one statement per agent.

pub mod client;
pub mod lb;
pub mod local;
pub mod network;
pub mod pods;
pub mod server;
pub mod sessions;
pub mod streams;

pub use service::Tunnels;
mod service;

mod frame;
pub use frame::{
    Down, MAX_DOWN_FRAME, MAX_FRAME, NodeReport, Up, decode, decode_down, encode, encode_down,
};

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bumped on any change to the frames (in [`frame`]).
pub const PROTOCOL_VERSION: u16 = 6;
/// The oldest protocol this build still speaks. Agents and servers agree on the lower of their
/// two versions (the server answers `Hello` with it in `Welcome`), and a server never sends a
/// frame the agreed version lacks: during a rolling upgrade, agents one release behind (N-1)
/// keep their tunnels to upgraded servers. A new frame or variant is added at the end of its
/// enum (postcard numbers variants in order) and only sent to tunnels whose agreed version
/// has it.
pub const MIN_PROTOCOL_VERSION: u16 = 6;

/// The version this build agrees on with a peer that speaks up to `theirs`, if any.
pub fn negotiate(theirs: u16) -> Result<u16, String> {
    let agreed = theirs.min(PROTOCOL_VERSION);
    if agreed < MIN_PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {theirs} is not supported; this build speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION} (upgrade the older side)"
        ));
    }
    Ok(agreed)
}

/// Where servers accept tunnels.
pub const PATH: &str = "/v1-keelson/connect";
/// Where a node dials back to serve one stream (`<STREAM_PATH>/<id>`).
pub const STREAM_PATH: &str = "/v1-keelson/stream";
/// Initial websocket read buffer of either end (see [`ws_config`]).
const READ_BUFFER: usize = 512;
/// How often the agent pings its server.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);
/// Silence after which a peer is taken for dead. Short enough that an agent whose server lost
/// power has reconnected elsewhere, and been heartbeated, well inside the node grace period.
pub const DEAD_AFTER: Duration = Duration::from_secs(6);

/// Small buffers: a thousand idle tunnels must cost a server a few MiB, not the library's
/// default 128 KiB a side per connection. The read buffer is held for the tunnel's whole
/// life but only ever sees pings and the odd report, and it grows to fit a larger frame.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_DOWN_FRAME + 1024)
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
}

/// The agent's end: like [`ws_config`], but frames down may carry a whole pod or Secret.
pub fn agent_ws_config() -> WebSocketConfig {
    ws_config()
        .max_message_size(Some(MAX_DOWN_FRAME))
        .max_frame_size(Some(MAX_DOWN_FRAME))
}

#[cfg(test)]
mod tests {
    use super::frame::FrameError;
    use super::*;
    use crate::agent::sysinfo::SystemInfo;

    fn report() -> NodeReport {
        NodeReport {
            name: "pi-1".into(),
            labels: vec![("zone".into(), "shelf-2".into())],
            taints: vec![],
            addresses: vec!["198.18.0.5".parse().unwrap()],
            info: SystemInfo::read(),
            reservations: Default::default(),
            pressure: Default::default(),
            local_storage: Some("/var/lib/keelson/storage".into()),
        }
    }

    #[test]
    fn frames_round_trip() {
        let hello = Up::Hello {
            version: PROTOCOL_VERSION,
            report: report(),
            network: true,
        };
        assert_eq!(decode::<Up>(&encode(&hello).unwrap()).unwrap(), hello);
        let down = Down::Servers(vec!["198.18.0.1:6443".into()]);
        assert_eq!(decode::<Down>(&encode(&down).unwrap()).unwrap(), down);
        let renew = Up::LbRenew {
            address: "198.18.3.10".parse().unwrap(),
            seq: 7,
        };
        assert_eq!(decode::<Up>(&encode(&renew).unwrap()).unwrap(), renew);
        let grant = Down::LbGrant(crate::node::loadbalancer::claims::Grant {
            address: "fd00::10".parse().unwrap(),
            seq: 7,
            held: true,
            epoch: 3,
        });
        assert_eq!(decode::<Down>(&encode(&grant).unwrap()).unwrap(), grant);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert!(matches!(
            decode::<Up>(&[0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Up>(&vec![0u8; MAX_FRAME + 1]),
            Err(FrameError::TooLarge { .. })
        ));
        // A length prefix promising more than the frame holds.
        assert!(decode::<Down>(&[2, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn peers_agree_on_the_older_version_within_the_supported_range() {
        assert_eq!(negotiate(PROTOCOL_VERSION), Ok(PROTOCOL_VERSION));
        // A newer peer talks this build's version.
        assert_eq!(negotiate(PROTOCOL_VERSION + 1), Ok(PROTOCOL_VERSION));
        assert_eq!(negotiate(MIN_PROTOCOL_VERSION), Ok(MIN_PROTOCOL_VERSION));
        let err = negotiate(MIN_PROTOCOL_VERSION - 1).unwrap_err();
        assert!(err.contains("not supported"), "{err}");
    }
}
