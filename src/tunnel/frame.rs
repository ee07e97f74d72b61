//! The tunnel's frames and their postcard codec, with the size limits checked before
//! decoding: IO-free and free of the session code, so the fuzz build (`fuzz/`) decodes
//! frames exactly as a server and an agent do. The table of frames is in [`super`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::agent::sysinfo::SystemInfo;
use crate::api::labels::Taint;
use crate::node::objects::Wanted;
use crate::node::pods::{PodAssignment, PodKey, PodNote, PodReport};
use crate::node::streams::StreamRequest;

/// Largest frame a server accepts from an agent.
pub const MAX_FRAME: usize = 16 * 1024;
/// Largest frame an agent accepts from a server: a whole pod (its spec) or Secret fits, as
/// both are bounded by the API's 1.5 MiB object limit.
pub const MAX_DOWN_FRAME: usize = 2 * 1024 * 1024;

/// Frames from agent to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Up {
    Hello {
        version: u16,
        report: NodeReport,
        /// The node runs pods and wants the network view ([`Down::Net`]); simulated nodes and
        /// nodes without containers do not, which spares the server a frame per node each.
        network: bool,
    },
    Report(NodeReport),
    PodStatus(PodReport),
    /// Something happened to a pod bound to the node: recorded as an Event from `kubelet`.
    Event(PodNote),
    /// Asks for an object a pod bound to the node uses; answered by [`Down::Object`] with the
    /// same `id`.
    Get {
        id: u32,
        object: Wanted,
    },
    /// Take or renew the lease on a LoadBalancer address; answered by [`Down::LbGrant`] with
    /// the same `seq`. The node counts its hold from before this frame left.
    LbRenew {
        address: IpAddr,
        seq: u64,
    },
    /// The node no longer has `address` on its interface: release its lease.
    LbRelease {
        address: IpAddr,
    },
}

/// Frames from server to agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Down {
    /// `servers` are `host:port` addresses of every server's API.
    Welcome {
        version: u16,
        servers: Vec<String>,
    },
    Servers(Vec<String>),
    Refused(String),
    /// A full listing of the node's pods follows.
    PodsListing,
    Pod(PodAssignment),
    PodGone(PodKey),
    /// The listing ended: pods it did not name are not bound to the node.
    PodsListed,
    /// Dial `STREAM_PATH/<id>` on `server` (`host:port`; this tunnel's server when `None`)
    /// and serve `request` there.
    Dial {
        id: u64,
        request: StreamRequest,
        server: Option<String>,
    },
    /// The answer to [`Up::Get`]: the object's JSON, or why the node may not have it (404 for
    /// one that does not exist, so a pod with an optional reference can go on).
    Object {
        id: u32,
        result: Result<String, (u16, String)>,
    },
    /// The network view changed (see [`network`]); only to nodes that asked in `Hello`.
    Net(crate::node::network::NetEvent),
    /// The answer to [`Up::LbRenew`].
    LbGrant(crate::node::loadbalancer::claims::Grant),
}

/// What a node says about itself; the server turns it into the Node object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// Applied only when the Node object is first created.
    pub taints: Vec<Taint>,
    pub addresses: Vec<IpAddr>,
    pub info: SystemInfo,
    /// What is set aside from pods: allocatable is capacity less this.
    pub reservations: crate::node::resources::Reservations,
    /// The pressure conditions measured last.
    pub pressure: crate::node::resources::Pressure,
    /// Where local-path volumes live on the node (an absolute path), for the Node's
    /// `keelson.io/local-storage-path` annotation; `None` when it is not known.
    pub local_storage: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes is larger than the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

pub fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>, FrameError> {
    let bytes = postcard::to_stdvec(frame)?;
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            limit: MAX_FRAME,
        });
    }
    Ok(bytes)
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, FrameError> {
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            limit: MAX_FRAME,
        });
    }
    Ok(postcard::from_bytes(bytes)?)
}

/// [`encode`] for frames to an agent, which may be up to [`MAX_DOWN_FRAME`].
pub fn encode_down(frame: &Down) -> Result<Vec<u8>, FrameError> {
    let bytes = postcard::to_stdvec(frame)?;
    if bytes.len() > MAX_DOWN_FRAME {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            limit: MAX_DOWN_FRAME,
        });
    }
    Ok(bytes)
}

/// [`decode`] for frames an agent receives.
pub fn decode_down(bytes: &[u8]) -> Result<Down, FrameError> {
    if bytes.len() > MAX_DOWN_FRAME {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            limit: MAX_DOWN_FRAME,
        });
    }
    Ok(postcard::from_bytes(bytes)?)
}
