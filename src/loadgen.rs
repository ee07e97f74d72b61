//! `keelson loadgen`: many agents in one process, for benchmarks.
//!
//! Each simulated agent runs the real agent code — join, node password, certificate, tunnel,
//! balancing, pod assignments and status reports — with its own data dir, so what the server
//! sees is what a fleet of boards would send. Only the process is shared.
//!
//! SIMULATION: the nodes run no containers. They play the node's part with the
//! [`Hollow`] runtime: pods bound to them are reported Running and Ready after
//! `--pod-start-delay`, Job pods exit after `--pod-run-time`. Figures measured this way are
//! the control plane's, not a pod runtime's, and must be labelled as simulation.

use std::net::IpAddr;

use tokio::sync::watch;

use crate::agent;
use crate::bootstrap::Token;
use crate::cli::LoadgenArgs;
use crate::config::{AgentConfig, ServerUrl};
use crate::node::hollow::{Hollow, Timing};

pub async fn run(args: LoadgenArgs, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let server = ServerUrl::parse(&args.server).map_err(anyhow::Error::msg)?;
    let token = Token::parse(&args.token, "--token")?;
    let timing = Timing {
        start_delay: args.pod_start_delay,
        run_time: args.pod_run_time,
    };
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..args.agents {
        let name = format!("{}-{i}", args.name_prefix);
        // Addresses from the benchmarking range, so reports look like a real fleet's.
        let ip = IpAddr::from([198, 18, (i / 250) as u8, (i % 250 + 1) as u8]);
        let cfg = AgentConfig {
            server: server.clone(),
            token: token.clone(),
            unsafe_skip_ca_verification: false,
            data_dir: args.data_dir.join(&name),
            node: agent::node::NodeOptions {
                name,
                // Simulated nodes cannot hold a LoadBalancer address (they have no network
                // view and add no address), so they must never rank as its candidates.
                labels: [(
                    crate::api::network::EXCLUDE_LB_LABEL.to_owned(),
                    "true".to_owned(),
                )]
                .into(),
                taints: Vec::new(),
                ips: vec![ip],
                reservations: Default::default(),
                data_dir: args.data_dir.clone(),
                local_storage: args.data_dir.join(crate::node::storage::DEFAULT_DIR),
                pressure_transition: crate::node::resources::DEFAULT_PRESSURE_TRANSITION,
            },
            with_node_id: false,
            runtime: crate::node::RuntimeOptions::none(),
            debug: args.debug,
            log_format: crate::cli::LogFormat::Text,
        };
        let stop = stop.clone();
        let runtime =
            crate::node::Runtime::without_containers(Box::new(Hollow::new(timing, i as u32)));
        agents.spawn(async move {
            let (connected, _) = watch::channel(false);
            if let Err(e) = agent::run(cfg, runtime, stop, connected).await {
                tracing::error!(error = %e, "simulated agent failed");
            }
        });
    }
    tracing::info!(
        agents = args.agents,
        pod_start_delay = ?timing.start_delay,
        pod_run_time = ?timing.run_time,
        "simulated agents started (hollow nodes: pods are simulated, no containers run)"
    );
    while agents.join_next().await.is_some() {}
    Ok(())
}
