//! How a node reads the ConfigMaps, Secrets and PersistentVolumeClaims its pods use (for env
//! and volumes), gets its pods' service account tokens, and reads and releases the local
//! persistent volumes pinned to it (see [`super::storage`]).
//!
//! An agent asks its server over the tunnel ([`crate::tunnel::Up::Get`]); the server answers
//! only for objects a pod bound to that node references (NodeRestriction), so a node's
//! certificate never reads the rest of the cluster's Secrets. A server's own node asks the
//! registry in-process. Either way the runtime sees one [`ObjectClient`].
//!
//! Invariant: every request gets exactly one answer; a request whose transport goes away
//! (tunnel lost) is answered [`ObjectError::Unavailable`], which the runtime retries.

// The runc runtime (next) is the first caller of the client.
#![allow(dead_code)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Requests queued for the transport.
const QUEUE: usize = 64;
/// How long one request may wait for its answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An object a node may read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Wanted {
    ConfigMap {
        namespace: String,
        name: String,
    },
    Secret {
        namespace: String,
        name: String,
    },
    /// A token of the pod's own service account, bound to the pod (a projected
    /// `serviceAccountToken` source); `audience` empty for the API's own. The answer is
    /// `{"token": …, "expirationSeconds": …}`.
    ServiceAccountToken {
        namespace: String,
        pod: String,
        pod_uid: String,
        service_account: String,
        audience: String,
        seconds: i64,
    },
    /// A claim a pod bound to the node uses, with the volume it names. The answer is
    /// `{"claim": <PVC>, "volume": <PV or null>}` (null: no `spec.volumeName`, or no such PV).
    PersistentVolumeClaim {
        namespace: String,
        name: String,
    },
    /// A PersistentVolume whose `spec.nodeAffinity` pins it to this node (403 otherwise).
    LocalVolume {
        name: String,
    },
    /// The node removed the directory of the local volume `name` (pinned to it, being
    /// deleted): the server removes the volume's cleanup finalizer. The answer is `{}`.
    LocalVolumeCleaned {
        name: String,
    },
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wanted::ConfigMap { namespace, name } => write!(f, "configmap {namespace}/{name}"),
            Wanted::Secret { namespace, name } => write!(f, "secret {namespace}/{name}"),
            Wanted::ServiceAccountToken {
                namespace,
                pod,
                service_account,
                ..
            } => write!(
                f,
                "a token of serviceaccount {namespace}/{service_account} for pod {pod}"
            ),
            Wanted::PersistentVolumeClaim { namespace, name } => {
                write!(f, "persistentvolumeclaim {namespace}/{name}")
            }
            Wanted::LocalVolume { name } => write!(f, "persistentvolume {name}"),
            Wanted::LocalVolumeCleaned { name } => {
                write!(f, "the cleanup of persistentvolume {name}")
            }
        }
    }
}

/// The answer: the object's JSON, or an HTTP-like code and why.
pub type Answer = Result<String, (u16, String)>;

pub struct ObjectRequest {
    pub wanted: Wanted,
    pub reply: oneshot::Sender<Answer>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("{0} not found")]
    NotFound(Wanted),
    #[error("{0}")]
    Forbidden(String),
    #[error("cannot read {0} now: {1}")]
    Unavailable(Wanted, String),
}

/// The runtime's handle for reading objects; cheap to clone.
#[derive(Clone)]
pub struct ObjectClient {
    tx: mpsc::Sender<ObjectRequest>,
}

/// A client and the requests it makes, for a transport to answer.
pub fn channel() -> (ObjectClient, mpsc::Receiver<ObjectRequest>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (ObjectClient { tx }, rx)
}

impl ObjectClient {
    pub async fn get(&self, wanted: &Wanted) -> Result<Value, ObjectError> {
        let (reply, answer) = oneshot::channel();
        let unavailable = |why: &str| ObjectError::Unavailable(wanted.clone(), why.to_owned());
        self.tx
            .send(ObjectRequest {
                wanted: wanted.clone(),
                reply,
            })
            .await
            .map_err(|_| unavailable("the node is stopping"))?;
        let answer = tokio::time::timeout(TIMEOUT, answer)
            .await
            .map_err(|_| unavailable("no answer from the server"))?
            .map_err(|_| unavailable("the connection to the server was lost"))?;
        match answer {
            Ok(text) => serde_json::from_str(&text).map_err(|e| unavailable(&e.to_string())),
            Err((404, _)) => Err(ObjectError::NotFound(wanted.clone())),
            Err((403, why)) => Err(ObjectError::Forbidden(why)),
            Err((_, why)) => Err(unavailable(&why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_map_to_errors_a_runtime_can_act_on() {
        let (client, mut requests) = channel();
        let server = tokio::spawn(async move {
            let mut n = 0;
            while let Some(r) = requests.recv().await {
                n += 1;
                let answer = match n {
                    1 => Ok(r#"{"data":{"k":"v"}}"#.into()),
                    2 => Err((404, "not found".into())),
                    3 => Err((403, "no pod references it".into())),
                    // The transport is lost: the request is dropped unanswered.
                    _ => continue,
                };
                let _ = r.reply.send(answer);
            }
        });
        let w = Wanted::ConfigMap {
            namespace: "default".into(),
            name: "cfg".into(),
        };
        assert_eq!(client.get(&w).await.unwrap()["data"]["k"], "v");
        assert_eq!(client.get(&w).await, Err(ObjectError::NotFound(w.clone())));
        assert!(matches!(
            client.get(&w).await,
            Err(ObjectError::Forbidden(_))
        ));
        let lost = client.get(&w).await.unwrap_err();
        assert!(matches!(lost, ObjectError::Unavailable(..)), "{lost}");
        drop(client);
        server.await.unwrap();
    }
}
