//! Keeps this server's certificates valid for as long as it runs: the API's serving
//! certificate is renewed in place (new handshakes get it; nothing restarts) and the admin
//! kubeconfig is rewritten with a fresh client certificate, each when [`pki::renew_at`] says
//! (90 days before expiry, or with a third of a short life left). Expiry within 30 days is
//! logged as a warning every day until it is dealt with — the CA's above all, which no
//! renewal here replaces.
//!
//! Invariant: a certificate is replaced only by a complete new one; a failed renewal leaves
//! the old one in place and is tried again a minute later, well before the old one expires.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

use super::ServingCert;
use crate::bootstrap::kubeconfig;
use crate::bootstrap::pki::{self, ClusterCa};

/// Looked at least this often, so warnings repeat daily and a clock that jumped is noticed.
const CHECK_AT_LEAST: Duration = Duration::from_secs(24 * 3600);
/// After a failed renewal.
const RETRY: Duration = Duration::from_secs(60);

/// Expiry times (Unix seconds) of the certificates this server keeps, for `/metrics`.
#[derive(Debug, Default)]
pub struct Expiry {
    pub ca: AtomicI64,
    pub serving: AtomicI64,
    pub admin: AtomicI64,
}

/// `keelson_certificate_expiration_timestamp_seconds{certificate}` on `/metrics`: when the
/// cluster CA, the API serving certificate and the admin kubeconfig's certificate expire, so
/// an alert can fire long before (the CA is never renewed here).
#[derive(Debug)]
pub struct ExpiryMetric(pub Arc<Expiry>);

impl prometheus_client::collector::Collector for ExpiryMetric {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        let mut family = enc.encode_descriptor(
            "keelson_certificate_expiration_timestamp_seconds",
            "When a certificate this server keeps expires, in seconds since the Unix epoch.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (name, at) in [
            ("ca", &self.0.ca),
            ("serving", &self.0.serving),
            ("admin", &self.0.admin),
        ] {
            let at = at.load(Ordering::Relaxed);
            if at > 0 {
                prometheus_client::metrics::gauge::ConstGauge::new(at)
                    .encode(family.encode_family(&[("certificate", name)])?)?;
            }
        }
        Ok(())
    }
}

/// Why a renewal failed; the old certificate stays in use.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error(transparent)]
    Issue(#[from] crate::bootstrap::Error),
    #[error(transparent)]
    Pki(#[from] pki::Error),
    #[error(transparent)]
    Tls(#[from] super::Error),
}

/// What the renewal task needs to issue the same certificates again.
pub struct Renewal {
    pub ca: ClusterCa,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub serving: Arc<ServingCert>,
    pub serving_pem: String,
    pub kubeconfig: PathBuf,
    pub kubeconfig_mode: u32,
    pub url: String,
    pub admin_pem: String,
    pub expiry: Arc<Expiry>,
}

impl Renewal {
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        self.record();
        loop {
            let now = OffsetDateTime::now_utc();
            self.warn_if_close(now);
            let wait = match self.renew_due(now) {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?RETRY, "renewing a certificate failed; the current one stays in use");
                    RETRY
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renews what is due; returns how long until the next renewal (or check).
    fn renew_due(&mut self, now: OffsetDateTime) -> Result<Duration, RenewError> {
        if pki::renew_at(&self.serving_pem).is_none_or(|t| t <= now) {
            let issued = self.ca.issue_serving(&self.dns, &self.ips)?;
            self.serving.replace(&self.ca, &issued)?;
            self.serving_pem = issued.cert_pem;
            tracing::info!(
                valid_until = %expiry_text(&self.serving_pem),
                "renewed the API serving certificate (new connections get it)"
            );
        }
        if pki::renew_at(&self.admin_pem).is_none_or(|t| t <= now) {
            self.admin_pem =
                kubeconfig::write(&self.kubeconfig, self.kubeconfig_mode, &self.url, &self.ca)?;
            tracing::info!(
                kubeconfig = %self.kubeconfig.display(),
                valid_until = %expiry_text(&self.admin_pem),
                "renewed the admin kubeconfig's client certificate"
            );
        }
        self.record();
        let next = [&self.serving_pem, &self.admin_pem]
            .into_iter()
            .filter_map(|p| pki::renew_at(p))
            .min()
            .map(|t| t - now)
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::ZERO);
        // At least a second between renewals, however short the certificates' life.
        Ok(next.clamp(Duration::from_secs(1), CHECK_AT_LEAST))
    }

    fn record(&self) {
        let after = |pem: &str| expires(pem).unwrap_or(0);
        self.expiry
            .ca
            .store(after(&self.ca.cert_pem), Ordering::Relaxed);
        self.expiry
            .serving
            .store(after(&self.serving_pem), Ordering::Relaxed);
        self.expiry
            .admin
            .store(after(&self.admin_pem), Ordering::Relaxed);
    }

    fn warn_if_close(&self, now: OffsetDateTime) {
        let horizon = (now + pki::WARN_BEFORE).unix_timestamp();
        for (what, pem, advice) in [
            (
                "the cluster CA",
                &self.ca.cert_pem,
                "it is not renewed automatically; see README \"Certificates\"",
            ),
            (
                "the API serving certificate",
                &self.serving_pem,
                "its renewal keeps failing",
            ),
            (
                "the admin kubeconfig's client certificate",
                &self.admin_pem,
                "its renewal keeps failing",
            ),
        ] {
            if let Some(after) = expires(pem)
                && after < horizon
            {
                tracing::warn!(expires = %expiry_text(pem), "{what} expires within 30 days: {advice}");
            }
        }
    }
}

fn expires(pem: &str) -> Option<i64> {
    pki::pem_to_der(pem)
        .and_then(|d| pki::validity(&d))
        .map(|(_, after)| after)
}

fn expiry_text(pem: &str) -> String {
    expires(pem)
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "unknown".into())
}
