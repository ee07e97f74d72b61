//! The root CA publisher: every namespace has a `kube-root-ca.crt` ConfigMap holding the
//! cluster CA as `ca.crt`, which the `kube-api-access-*` volume of each pod projects (as
//! Kubernetes' controller of that name does).
//!
//! Level-triggered per namespace: created when missing, rewritten when its `ca.crt` differs,
//! looked at again every [`RECHECK`] so a deleted one comes back without a namespace change
//! (ConfigMaps are not cached: one read per namespace per recheck).

use std::time::Duration;

use serde_json::json;

use super::owner::key_of;
use crate::apiserver::registry::{Part, ROOT_CA_CONFIGMAP};
use crate::apiserver::resources::{CONFIGMAPS, NAMESPACES, ObjectRef, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};

/// How often each namespace's ConfigMap is checked without a change to the namespace.
const RECHECK: Duration = Duration::from_secs(300);

pub struct RootCaPublisher {
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
}

impl RootCaPublisher {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 1] = [&NAMESPACES];
}

impl Reconciler for RootCaPublisher {
    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    fn keys(&self, change: &Change, _cache: &Cache) -> Vec<String> {
        if change.resource != &NAMESPACES || change.new.is_none() {
            return vec![];
        }
        change.object().and_then(key_of).into_iter().collect()
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        cache.list(&NAMESPACES).iter().filter_map(key_of).collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let namespace = key.trim_start_matches('/');
        let Some(ns) = ctx.cache.get(&ObjectRef::cluster(&NAMESPACES, namespace)) else {
            return Ok(Action::Done);
        };
        if ns.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Terminating") {
            return Ok(Action::Done);
        }
        let r = ObjectRef::namespaced(&CONFIGMAPS, namespace, ROOT_CA_CONFIGMAP);
        let written = match ctx.registry.get(&r).await {
            Ok(cm) if cm.pointer("/data/ca.crt") == Some(&json!(self.ca_pem)) => None,
            Ok(_) => Some(
                ctx.registry
                    .modify(&r, Part::Main, |cm| cm["data"] = json!({"ca.crt": self.ca_pem}))
                    .await,
            ),
            Err(ApiError::NotFound { .. }) => Some(
                ctx.registry
                    .create(
                        &CONFIGMAPS,
                        Some(namespace),
                        json!({
                            "metadata": {
                                "name": ROOT_CA_CONFIGMAP,
                                "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."},
                            },
                            "data": {"ca.crt": self.ca_pem},
                        }),
                    )
                    .await,
            ),
            Err(e) => return Err(e),
        };
        match written {
            Some(Ok(obj)) => ctx.wrote(&obj),
            // Being deleted, or made by another write at the same moment: nothing to do.
            Some(Err(
                ApiError::NamespaceTerminating { .. }
                | ApiError::AlreadyExists { .. }
                | ApiError::NotFound { .. },
            ))
            | None => {}
            Some(Err(e)) => return Err(e),
        }
        Ok(Action::RequeueAfter(RECHECK))
    }
}
