//! Leader election through a lease row in the datastore.
//!
//! The lease is taken and renewed by compare-and-swap on the database's clock (see
//! [`crate::datastore::leases`]). Fencing: the holder notes its monotonic clock *before* each
//! renewal is sent, and steps down by itself once [`RENEW_DEADLINE`] has passed since the last
//! renewal that succeeded — while the lease, which the database dates from a later moment,
//! still has `LEASE_DURATION - RENEW_DEADLINE` to run for everyone else. On shutdown the lease
//! is released so another server takes over at once.
//!
//! Each new holder is also recorded, best effort, as the `coordination.k8s.io/v1` Lease
//! `kube-system/<name>`, so `kubectl get leases -n kube-system` shows who holds what:
//! `holderIdentity` is the identity, `leaseTransitions` is the epoch minus one (the first
//! holder shows 0, as with client-go's leader election), `leaseDurationSeconds` the lease
//! rounded up to whole seconds. Only a change of holder is written: a renewal every `retry`
//! would put a revision on the change feed for every watcher. So the Lease's `renewTime` is
//! the acquisition time (the renewals live only in the `keelson_leases` row), and a released
//! or expired lease keeps showing its last holder until another server takes it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::apiserver::registry::Registry;
use crate::datastore::Store;
use crate::datastore::leases::Held;

/// How long a lease lasts, when its holder must have renewed, and how often everyone tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease lasts without renewal, by the database's clock.
    pub lease: Duration,
    /// A holder that has not renewed for this long stops acting as holder.
    pub renew_deadline: Duration,
    /// How often the holder renews and the others try to take over.
    pub retry: Duration,
}

/// The controllers' lease: nothing is urgent, so it costs little.
pub const CONTROLLERS: Timing = Timing {
    lease: Duration::from_secs(15),
    renew_deadline: Duration::from_secs(10),
    retry: Duration::from_secs(4),
};

/// Who this server is in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Someone else holds the lease, or nobody could be reached.
    Follower,
    /// This server holds the lease with this epoch.
    Leader { epoch: i64 },
}

pub struct Elector {
    pub store: Store,
    pub name: &'static str,
    pub identity: String,
    pub role: watch::Sender<Role>,
    pub timing: Timing,
    /// Whether this server may take the lease now (a holder keeps renewing regardless).
    pub eligible: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Elector {
    /// Runs the election until `shutdown`, publishing the role; releases the lease on the way out.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let t = self.timing;
        // What we hold, and the moment before its last successful renewal was sent.
        let mut held: Option<(Held, Instant)> = None;
        loop {
            if held.is_some() || (self.eligible)() {
                let sent = Instant::now();
                // A holder never waits for the database past its renew deadline: a hung
                // connection must not keep it acting as holder.
                let budget = match held {
                    Some((_, at)) => (at + t.renew_deadline).saturating_duration_since(sent),
                    None => t.lease,
                };
                let attempt = self.store.acquire_lease(
                    self.name,
                    &self.identity,
                    t.lease.as_millis() as i64,
                    held.map(|h| h.0),
                );
                match tokio::time::timeout(budget, attempt).await {
                    Ok(Ok(Some(now_held))) => {
                        if held.is_none() {
                            tracing::info!(
                                lease = self.name,
                                epoch = now_held.epoch,
                                "took the lease"
                            );
                            self.record(now_held.epoch);
                        }
                        held = Some((now_held, sent));
                        self.role.send_replace(Role::Leader {
                            epoch: now_held.epoch,
                        });
                    }
                    Ok(Ok(None)) => {
                        held = None;
                        self.step_down("another server holds the lease");
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(lease = self.name, error = %e, "lease renewal failed")
                    }
                    Err(_) => tracing::debug!(lease = self.name, "lease renewal timed out"),
                }
            }
            if held.is_some_and(|(_, at)| at.elapsed() >= t.renew_deadline) {
                held = None;
                self.step_down("could not renew the lease before the renew deadline");
            }
            let pause = match held {
                // Wake in time to act on the deadline even if the next renewal hangs.
                Some((_, at)) => t
                    .retry
                    .min((at + t.renew_deadline).saturating_duration_since(Instant::now())),
                None => t.retry,
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if matches!(*self.role.borrow(), Role::Leader { .. }) {
            self.role.send_replace(Role::Follower);
            if let Err(e) = self.store.release_lease(self.name, &self.identity).await {
                tracing::warn!(error = %e, "could not release the lease on shutdown");
            }
        }
    }

    /// Records the new holder as a Lease object in a task of its own, so a slow or failed
    /// write never delays a renewal. The task ends by itself within [`RECORD_TIMEOUT`];
    /// nobody waits for it, and a failure is only logged.
    fn record(&self, epoch: i64) {
        let registry = Registry::new(self.store.clone());
        let (name, holder, duration) = (self.name, self.identity.clone(), self.timing.lease);
        let span = tracing::info_span!("record_lease", lease = name, epoch);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let write = registry.record_lease(name, &holder, duration, epoch - 1);
                match tokio::time::timeout(RECORD_TIMEOUT, write).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not record the lease as a Lease object")
                    }
                    Err(_) => tracing::warn!("recording the lease as a Lease object timed out"),
                }
            },
            span,
        ));
    }

    fn step_down(&self, why: &str) {
        if matches!(self.role.send_replace(Role::Follower), Role::Leader { .. }) {
            tracing::warn!(lease = self.name, why, "stepped down");
        }
    }
}

/// Longest the Lease object's write may take before it is given up.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// `keelson_lease_holder{lease}` on `/metrics`: 1 while this process holds the lease, read
/// from the role its [`Elector`] publishes. Invariant: one per lease name in a registry.
#[derive(Debug)]
pub struct HolderMetric {
    pub lease: &'static str,
    pub role: watch::Receiver<Role>,
}

impl prometheus_client::collector::Collector for HolderMetric {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        let held = matches!(*self.role.borrow(), Role::Leader { .. });
        let mut family = enc.encode_descriptor(
            "keelson_lease_holder",
            "Whether this server holds the lease (1) or not (0).",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        prometheus_client::metrics::gauge::ConstGauge::new(i64::from(held))
            .encode(family.encode_family(&[("lease", self.lease)])?)
    }
}
