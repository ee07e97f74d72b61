//! `keelson_pods{phase}` on `/metrics`: how many pods the cluster holds in each phase, counted
//! from the controllers' cache by the server that holds the `keelson-controllers` lease (so the
//! figure costs no statement, and exactly one server reports it: summing over servers gives
//! the cluster's count).
//!
//! Invariants: a server that does not lead reports no `keelson_pods` series at all (a stale
//! count from an earlier term would be summed with the leader's); the counts are at most
//! [`SETTLE`] behind the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use crate::apiserver::resources::PODS;
use crate::runtime::controller::Context;

/// Changes closer together than this are counted once.
const SETTLE: Duration = Duration::from_secs(1);

/// The phases a pod reports, in Kubernetes' order; anything else (no status yet) counts as
/// Pending, as kubectl shows it.
const PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];

/// The counts, shared by the counting task and the `/metrics` collector.
#[derive(Debug, Default)]
pub struct PodPhases {
    counts: [AtomicI64; 5],
    /// Whether a leader's count is in.
    held: AtomicBool,
}

impl PodPhases {
    /// Counts while the controllers run on this server (the task is aborted when the lease
    /// is lost, which withdraws the series).
    pub async fn run(self: Arc<Self>, ctx: Arc<Context>) {
        struct Withdraw(Arc<PodPhases>);
        impl Drop for Withdraw {
            fn drop(&mut self) {
                self.0.held.store(false, Ordering::Relaxed);
            }
        }
        let _withdraw = Withdraw(self.clone());
        let mut changes = ctx.cache.subscribe();
        ctx.cache.synced().await;
        loop {
            self.count(&ctx);
            // Wait for a pod change (or a lag, after which everything is counted anyway).
            loop {
                match changes.recv().await {
                    Ok(c) if std::ptr::eq(c.resource, &PODS) => break,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
            tokio::time::sleep(SETTLE).await;
            // What arrived while settling is in the next count.
            while changes.try_recv().is_ok() {}
        }
    }

    fn count(&self, ctx: &Context) {
        let mut counts = [0i64; 5];
        for pod in ctx.cache.list(&PODS) {
            let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
            let i = PHASES.iter().position(|p| *p == phase).unwrap_or(0);
            counts[i] += 1;
        }
        for (slot, n) in self.counts.iter().zip(counts) {
            slot.store(n, Ordering::Relaxed);
        }
        self.held.store(true, Ordering::Relaxed);
    }
}

/// The `/metrics` side of [`PodPhases`].
#[derive(Debug)]
pub struct PodPhasesMetric(pub Arc<PodPhases>);

impl prometheus_client::collector::Collector for PodPhasesMetric {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        if !self.0.held.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut family = enc.encode_descriptor(
            "keelson_pods",
            "Pods in the cluster by phase, counted by the server that runs the controllers.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (phase, n) in PHASES.iter().zip(&self.0.counts) {
            prometheus_client::metrics::gauge::ConstGauge::new(n.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("phase", *phase)])?)?;
        }
        Ok(())
    }
}
