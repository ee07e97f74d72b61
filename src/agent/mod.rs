//! The node side of keelson: node identity, joining, the tunnel's client end, registration.
//!
//! An agent's life: decide how servers are verified (the CA saved at its first join, pinned;
//! else the token's CA hash), make or read its node password, join through `--server` unless
//! it already holds a valid node certificate, then keep one tunnel to one server, moving to
//! another at once when that server goes away; through that tunnel it learns the pods bound to
//! it and reports their status ([`crate::node::pods`]). A server runs its own node through
//! [`registration`] in-process and is heartbeated the same way.
//!
//! Fatal (exit non-zero): a first join with a short token without
//! `--unsafe-skip-ca-verification`, a CA that does not match the token or the pinned one, a
//! rejected token, a node name owned by another board. Everything else (servers down,
//! datastore trouble) is retried. A tunnel to a server whose certificate the pinned CA did
//! not sign is never opened (logged; other servers are tried).

pub mod balancer;
pub mod credentials;
pub mod https;
pub mod join;
pub mod node;
pub mod registration;
pub mod sysinfo;

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use self::balancer::{Backoff, Balancer};
use self::credentials::{ClientCert, Files};
use crate::config::AgentConfig;
use crate::node::Runtime;
use crate::node::pods::PodWorker;
use crate::tunnel::client::{self, ConnectError, Outcome};

/// How often a long-lived tunnel checks whether the certificate needs renewing.
const RENEW_CHECK: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Join(#[from] join::Error),
    #[error(transparent)]
    Files(#[from] credentials::Error),
    #[error(transparent)]
    Tls(#[from] https::Error),
}

struct Credentials {
    ca_pem: String,
    cert: ClientCert,
}

/// Runs an agent until `stop` flips. `connected` is true while a tunnel is open (the server
/// welcomed it). `runtime` runs the pods the server binds to this node and serves their
/// streams; only `keelson loadgen` passes the simulated [`crate::node::hollow::Hollow`].
pub async fn run(
    cfg: AgentConfig,
    mut runtime: Runtime,
    mut stop: watch::Receiver<bool>,
    connected: watch::Sender<bool>,
) -> Result<(), Error> {
    let files = Files::new(&cfg.data_dir);
    // First, before anything is written: an agent that cannot verify servers does not start.
    let saved_ca = files.ca()?;
    let mut trust = join::Trust::decide(
        saved_ca.clone(),
        &files.ca_path(),
        &cfg.token,
        cfg.unsafe_skip_ca_verification,
    )?;
    let mut opts = cfg.node.clone();
    if cfg.with_node_id {
        opts.name = files.name_with_id(&opts.name)?;
    }
    let password = files.node_password()?;
    let info = sysinfo::SystemInfo::read();
    let mut pressure = crate::node::resources::Conditions::new(opts.pressure_transition);
    let report = registration::report(&opts, info.clone(), &mut pressure);
    let (report_tx, mut reports) = watch::channel(report.clone());
    // Measures the node again now and then; a changed report (pressure, addresses) goes up
    // the tunnel. Ends with the agent (the receiver goes).
    tokio::spawn({
        let opts = opts.clone();
        async move {
            loop {
                tokio::time::sleep(registration::REPORT_INTERVAL).await;
                let next = registration::report(&opts, info.clone(), &mut pressure);
                report_tx.send_if_modified(|r| {
                    let changed = *r != next;
                    *r = next;
                    changed
                });
                if report_tx.is_closed() {
                    return;
                }
            }
        }
    });
    // Service rules follow the network view the tunnel feeds; they end when `stop` flips.
    let _services = runtime.services.take().map(|s| s.spawn(stop.clone()));
    // LoadBalancer addresses too; the tunnel sessions carry its requests and grants.
    let lb = runtime.loadbalancer.take().map(|h| h.spawn(stop.clone()));
    let (worker, mut pods, pod_events, pod_reports) =
        PodWorker::start(runtime, report.addresses.first().copied());
    pods.lb = lb;
    // Ends when `stop` flips (awaited below, so a system shutdown's container stops finish
    // before the process exits) or when this function returns (dropping `pods`).
    let worker = tokio::spawn(worker.run(pod_events, pod_reports, stop.clone()));
    let mut balancer = Balancer::new(cfg.server.address(), files.clone());
    let mut creds = match (saved_ca, files.client_cert(&opts.name)?) {
        (Some(ca_pem), Some(cert)) => Some(Credentials { ca_pem, cert }),
        _ => None,
    };
    tracing::info!(node = %opts.name, server = %cfg.server.address(), "starting keelson agent");
    let mut backoff = Backoff::new();
    let mut avoid: Option<String> = None;
    let result: Result<(), Error> = async {
        loop {
            let Some(c) = &creds else {
                match join_any(&cfg, &mut balancer, &trust, &opts.name, &password).await {
                    Ok(joined) => {
                        files.save_ca(&joined.ca_pem)?;
                        trust = join::Trust::Pinned {
                            ca_pem: joined.ca_pem.clone(),
                            file: files.ca_path(),
                        };
                        files.save_client_cert(&joined.cert)?;
                        balancer.learn(joined.servers);
                        tracing::info!(node = %opts.name, "joined the cluster");
                        creds = Some(Credentials {
                            ca_pem: joined.ca_pem,
                            cert: joined.cert,
                        });
                        backoff.reset();
                    }
                    Err(e) if e.is_transient() => {
                        let d = balancer.jitter(backoff.step());
                        tracing::warn!(error = %e, retry_in = ?d, "cannot join yet");
                        if sleep_or_stop(d, &mut stop).await {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
                continue;
            };
            let tls = https::tls_config(&c.ca_pem, Some((&c.cert.cert_pem, &c.cert.key_pem)))?;
            let mut rejoin = false;
            let mut reconnect_now = false;
            for addr in balancer.order(avoid.as_deref()) {
                let target = match https::Target::new(&addr, tls.clone()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(server = %addr, error = %e, "skipping server");
                        continue;
                    }
                };
                let mut ws = match client::connect(&target).await {
                    Ok(ws) => ws,
                    Err(ConnectError::Refused { status, message })
                        if status == hyper::StatusCode::UNAUTHORIZED
                            || status == hyper::StatusCode::FORBIDDEN =>
                    {
                        tracing::warn!(server = %addr, %status, %message, "the server does not accept this node's certificate; joining again");
                        rejoin = true;
                        break;
                    }
                    Err(ConnectError::Transport(e @ https::Error::Untrusted { .. })) => {
                        tracing::warn!(
                            server = %addr,
                            error = %e,
                            ca = %files.ca_path().display(),
                            "not opening a tunnel: the server's certificate is not signed by the cluster CA this agent pinned"
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(server = %addr, error = %e, "cannot open a tunnel");
                        continue;
                    }
                };
                let renew_at = Instant::now() + RENEW_CHECK;
                let outcome = client::session(
                    &mut ws,
                    &target,
                    &mut reports,
                    |list| {
                        connected.send_if_modified(|up| !std::mem::replace(up, true));
                        balancer.learn(list)
                    },
                    renew_at,
                    &mut stop,
                    &mut pods,
                )
                .await;
                connected.send_if_modified(|up| std::mem::replace(up, false));
                match outcome {
                    Outcome::Shutdown => return Ok(()),
                    Outcome::Lost(why) => {
                        tracing::warn!(server = %addr, reason = %why, "tunnel lost; moving to another server");
                        backoff.reset();
                        avoid = Some(addr);
                        reconnect_now = true;
                    }
                    Outcome::Refused(why) => {
                        tracing::warn!(server = %addr, reason = %why, "the server refused the tunnel");
                        avoid = Some(addr);
                    }
                    Outcome::Renew => {
                        if credentials::due_for_renewal(&c.cert.cert_pem) {
                            tracing::info!("renewing the node certificate");
                            rejoin = true;
                        }
                        reconnect_now = true;
                    }
                }
                break;
            }
            if rejoin {
                creds = None;
                continue;
            }
            if reconnect_now {
                continue;
            }
            let d = balancer.jitter(backoff.step());
            tracing::warn!(retry_in = ?d, "no server accepted a tunnel");
            if sleep_or_stop(d, &mut stop).await {
                return Ok(());
            }
        }
    }
    .await;
    if *stop.borrow() {
        let _ = tokio::time::timeout(
            crate::node::pods::SHUTDOWN_GRACE + Duration::from_secs(15),
            worker,
        )
        .await;
    }
    result
}

/// Joins through `--server` first (the fixed address), then through any known server.
async fn join_any(
    cfg: &AgentConfig,
    balancer: &mut Balancer,
    trust: &join::Trust,
    node: &str,
    password: &str,
) -> Result<join::Joined, join::Error> {
    let mut order = vec![balancer.fallback().to_owned()];
    order.extend(
        balancer
            .order(None)
            .into_iter()
            .filter(|s| s != balancer.fallback()),
    );
    let mut last = None;
    for addr in order {
        match join::join(&addr, trust, &cfg.token, node, password).await {
            Ok(j) => return Ok(j),
            Err(e) if e.is_transient() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("the join order always holds --server"))
}

/// Sleeps `d`; true if the agent is stopping.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = crate::apiserver::stopped(stop) => true,
    }
}
