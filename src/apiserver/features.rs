//! What the server wires into the API: features built on top of it that the API serves or
//! reports but may not name, because they import the API (the node tunnels write Nodes and
//! Pods through its registry; the virtual IP's load balancer reads its feed).
//!
//! Invariant: no module under `apiserver` imports `crate::tunnel`, `crate::vip` or
//! `crate::agent`; `server.rs` hands their implementations in through these traits, so the
//! API builds, and reads, without them. Below the API, `bootstrap` (join, keys,
//! certificates) imports none of them either: its refusals are its own error type, which the
//! API turns into statuses. The unit test below keeps both true.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::watch;

use super::auth::Identity;
use super::status::ApiError;
use super::{Api, Body};
use crate::node::streams::{Pipe, StreamError, StreamRequest};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The node tunnels, as the API sees them: the endpoints nodes connect to, streams to their
/// pods (`kubectl logs`/`exec`/`attach`/`port-forward`), and what they report.
pub trait NodeTunnels: Send + Sync {
    /// Answers `GET /v1-keelson/connect`: a node opening its tunnel (101, or an error status).
    fn accept(
        &self,
        api: Arc<Api>,
        id: &Identity,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError>;

    /// Answers `GET /v1-keelson/stream/<id>`: a node dialling back for a stream it was asked
    /// to open.
    fn accept_dial(
        &self,
        id: &Identity,
        stream: &str,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError>;

    /// Opens a stream to a pod on `node`, through whichever server holds its tunnel.
    fn open<'a>(
        &'a self,
        node: &'a str,
        request: StreamRequest,
    ) -> BoxFuture<'a, Result<Pipe, StreamError>>;

    /// The servers agents may use, kept current (sent in join answers, balanced over by the
    /// virtual IP's load balancer).
    fn servers(&self) -> watch::Receiver<Vec<String>>;

    /// The uid of a pod bound to a node, from the in-memory index the tunnels keep (`None`
    /// for a pod not bound, or not known yet): checks bound service account tokens without
    /// a datastore read.
    fn bound_pod_uid(&self, namespace: &str, name: &str) -> Option<String>;

    /// Its figures on `/metrics`.
    fn encode_metrics(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result;
}

/// A feature that contributes figures to `/metrics` while it runs (the load balancer, on the
/// holder of the virtual IP only).
pub trait Metrics: Send + Sync {
    fn encode_metrics(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result;
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Who may not import whom: the API names none of the features built on it, and the
    /// bootstrap (join, keys, certificates) none of the API or those features. Comments,
    /// doc links and test modules may.
    #[test]
    fn the_api_and_the_bootstrap_import_nothing_built_on_them() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offending = Vec::new();
        for (dir, forbidden) in [
            ("apiserver", &["tunnel", "vip", "agent"][..]),
            ("bootstrap", &["apiserver", "tunnel", "vip", "agent"][..]),
        ] {
            let mut dirs = vec![root.join(dir)];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(&dir).expect("read a source directory") {
                    let path = entry.expect("dir entry").path();
                    if path.is_dir() {
                        dirs.push(path);
                        continue;
                    }
                    if path.extension().is_none_or(|e| e != "rs")
                        || path.file_name().is_some_and(|n| n == "tests.rs")
                    {
                        continue;
                    }
                    let text = std::fs::read_to_string(&path).expect("read a source file");
                    for (i, line) in text.lines().enumerate() {
                        if line.trim_start().starts_with("#[cfg(test)]") {
                            break;
                        }
                        let code = line.split("//").next().unwrap_or_default();
                        // Spelled in two parts so this test does not find itself.
                        if forbidden
                            .iter()
                            .any(|m| code.contains(&format!("crate::{m}")))
                        {
                            offending.push(format!(
                                "{}:{}: {}",
                                path.display(),
                                i + 1,
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
        assert!(offending.is_empty(), "{}", offending.join("\n"));
    }
}
