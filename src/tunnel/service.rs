//! The tunnels as the API sees them ([`crate::apiserver::features::NodeTunnels`]): the server
//! wires one in at start, so the API reaches the tunnels without importing this module.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::watch;

use super::server;
use super::sessions::Sessions;
use crate::apiserver::auth::Identity;
use crate::apiserver::features::{BoxFuture, NodeTunnels};
use crate::apiserver::metrics;
use crate::apiserver::status::ApiError;
use crate::apiserver::{Api, Body};
use crate::node::streams::{Pipe, StreamError, StreamRequest};

/// This server's tunnels.
pub struct Tunnels(pub Arc<Sessions>);

impl NodeTunnels for Tunnels {
    fn accept(
        &self,
        api: Arc<Api>,
        id: &Identity,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        server::accept(api, self.0.clone(), id, req)
    }

    fn accept_dial(
        &self,
        id: &Identity,
        stream: &str,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        server::accept_dial(&self.0, id, stream, req)
    }

    fn open<'a>(
        &'a self,
        node: &'a str,
        request: StreamRequest,
    ) -> BoxFuture<'a, Result<Pipe, StreamError>> {
        Box::pin(self.0.streams.open(node, request))
    }

    fn servers(&self) -> watch::Receiver<Vec<String>> {
        self.0.servers()
    }

    fn bound_pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.0.pods.bound_uid(&crate::node::pods::PodKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    fn encode_metrics(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let (opened, refused) = self.0.counters();
        metrics::gauge(
            enc,
            "keelson_tunnels",
            "Agent tunnels open on this server.",
            metrics::saturating(self.0.tunnels() as u64),
        )?;
        metrics::counter(
            enc,
            "keelson_tunnels_opened",
            "Agent tunnels opened since start.",
            opened,
        )?;
        metrics::counter(
            enc,
            "keelson_tunnels_refused",
            "Tunnels refused because this server held the most it may.",
            refused,
        )
    }
}
