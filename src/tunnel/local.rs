//! The server's own node, in-process: the same pod traffic a tunnel carries for an agent —
//! assignments down, status reports up, reads of ConfigMaps and Secrets, streams — without a
//! socket. Servers are nodes too, and run their pods with the same worker and runtime as
//! agents; only the transport differs.
//!
//! Invariants as for a tunnel: status is written as the node ([`super::pods::apply_status`],
//! NodeRestriction applies) and objects are read through the same reference check
//! ([`super::pods::object_for_node`]), so a server's node gets nothing an agent's would not.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::network::Push as NetPush;
use super::pods::Push;
use super::sessions::Sessions;
use crate::apiserver::Api;
use crate::node::Runtime;
use crate::node::loadbalancer::Link;
use crate::node::loadbalancer::claims::Request;
use crate::node::network::NetEvent;
use crate::node::pods::{PodEvent, PodWorker};

/// Runs the server's own node's pods until `stop` flips.
pub async fn run(
    api: Arc<Api>,
    sessions: Arc<Sessions>,
    node: String,
    host_ip: Option<IpAddr>,
    mut runtime: Runtime,
    mut stop: watch::Receiver<bool>,
) {
    // Service rules follow the network view fed below; they end when `stop` flips.
    let _services = runtime.services.take().map(|s| s.spawn(stop.clone()));
    let lb = runtime.loadbalancer.take().map(|h| h.spawn(stop.clone()));
    let (worker, mut link, events, reports) = PodWorker::start(runtime, host_ip);
    link.lb = lb;
    let mut leases = super::lb::Leases::new(&node, api.registry.clone());
    sessions.streams.set_local(&node, link.streams.clone());
    let mut worker = tokio::spawn(worker.run(events, reports, stop.clone()));
    let mut pods = sessions.pods.listen(&node);
    let mut net = link.network.is_some().then(|| sessions.network.listen());
    loop {
        tokio::select! {
            _ = crate::apiserver::stopped(&mut stop) => {
                // The node's LoadBalancer addresses go first, then their leases.
                if let Some(lb) = link.lb.as_mut() {
                    for req in lb.let_go().await {
                        if let Request::Release { address } = req {
                            leases.release(address).await;
                        }
                    }
                }
                // A system shutdown stops the containers first (see PodWorker::run).
                let cap = crate::node::pods::SHUTDOWN_GRACE + std::time::Duration::from_secs(15);
                let _ = tokio::time::timeout(cap, &mut worker).await;
                return;
            }
            req = Link::next(&mut link.lb) => match req {
                Request::Renew { address, seq } => {
                    if let Some(grant) = leases.renew(&sessions.network, address, seq).await
                        && let Some(lb) = &link.lb
                    {
                        let _ = lb.grants.try_send(grant);
                    }
                }
                Request::Release { address } => leases.release(address).await,
            },
            push = pods.rx.recv() => {
                let Some(push) = push else {
                    // Fell behind: listen again, which starts with a fresh listing.
                    pods = sessions.pods.listen(&node);
                    continue;
                };
                let evs = match push {
                    Push::List(list) => {
                        let mut evs = Vec::with_capacity(list.len() + 2);
                        evs.push(PodEvent::Listing);
                        evs.extend(list.iter().map(|a| PodEvent::Assigned((**a).clone())));
                        evs.push(PodEvent::Listed);
                        evs
                    }
                    Push::Pod(a) => vec![PodEvent::Assigned((*a).clone())],
                    Push::Gone(key) => vec![PodEvent::Gone(key)],
                };
                for ev in evs {
                    if link.events.send(ev).await.is_err() {
                        return;
                    }
                }
            }
            push = super::network::next(&mut net) => {
                let Some(push) = push else {
                    net = Some(sessions.network.listen());
                    continue;
                };
                if let Some(network) = &link.network {
                    match push {
                        NetPush::List(snapshot) => {
                            for ev in snapshot.events(&sessions.network.cluster) {
                                network.apply(ev);
                            }
                        }
                        NetPush::Change(ev) => network.apply(NetEvent::clone(&ev)),
                    }
                }
            }
            Some(report) = link.reports.recv() => {
                let (ns, name) = (report.key.namespace.clone(), report.key.name.clone());
                if let Err(e) = super::pods::apply_status(&api.registry, &node, report).await {
                    tracing::warn!(%node, namespace = %ns, pod = %name, error = %e, "cannot write the pod status of this server's node");
                }
            }
            Some(note) = link.notes.recv() => {
                sessions.record_note(&api.registry, &node, note).await;
            }
            Some(req) = link.objects.recv() => {
                let api = api.clone();
                let sessions = sessions.clone();
                let node = node.clone();
                tokio::spawn(async move {
                    let answer = super::pods::object_for_node(&api, &sessions.pods, &node, &req.wanted).await;
                    let _ = req.reply.send(answer);
                });
            }
        }
    }
}
