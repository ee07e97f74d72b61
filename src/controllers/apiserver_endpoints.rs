//! The `default/kubernetes` Service's Endpoints and EndpointSlices: every live server's API
//! address, as kube-apiserver's endpoint reconciler keeps them for in-cluster clients.
//!
//! The servers already publish which of them are alive (the server list agents get: each
//! server's record, counted while its Node is not known to be down — see
//! `tunnel::sessions`); this controller only mirrors that list into the API objects. It runs
//! on the controllers-lease holder alone, so exactly one writer ever decides the list: a
//! per-server writer, as Kubernetes' lease reconciler is, would let two servers that saw the
//! list at different moments overwrite each other's version while a server comes or goes.
//! The addresses are each server's own advertised address and port, never the `--vip`: as
//! in Kubernetes, the Service's endpoints are the API servers themselves, and a client that
//! wants the virtual IP uses it directly.
//!
//! Shape, as kube-apiserver writes it: Endpoints labelled
//! `endpointslice.kubernetes.io/skip-mirror: "true"` with one subset per port (servers may
//! listen on different ports; usually one subset); EndpointSlices labelled
//! `kubernetes.io/service-name: kubernetes` (no managed-by label), one per address family and
//! port, the first (the Service's family, lowest port) named `kubernetes`; every port named
//! `https`, TCP, each endpoint `ready`.
//!
//! Invariants: nothing is written while the object already says what it should (an idle
//! cluster writes nothing); an empty server list (not learned yet) never empties the objects;
//! only the `default/kubernetes` objects and slices labelled for that Service are touched.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::owner;
use crate::apiserver::registry::Part;
use crate::apiserver::resources::{ENDPOINTS, ENDPOINTSLICES, ObjectRef, SERVICES};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::Change;
use crate::runtime::controller::Context;
use crate::runtime::frozen::Frozen;

const NAMESPACE: &str = "default";
const NAME: &str = "kubernetes";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Pause after a failed pass before the next (a conflict or an unreachable database).
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct ApiserverEndpoints {
    /// The live servers' `address:port`, as the tunnel sessions publish it; the sender lives
    /// as long as the server process.
    pub servers: watch::Receiver<Vec<String>>,
}

impl ApiserverEndpoints {
    /// What it reads from the cache.
    pub const KINDS: [&'static crate::apiserver::resources::Resource; 3] =
        [&SERVICES, &ENDPOINTS, &ENDPOINTSLICES];

    /// Runs while this server leads the controllers (the caller aborts it when that ends).
    pub async fn run(mut self, ctx: Arc<Context>) {
        let mut changes = ctx.cache.subscribe();
        loop {
            let servers = self.servers.borrow_and_update().clone();
            let result = reconcile(&ctx, &servers).await;
            ctx.settle().await;
            if let Err(e) = result {
                tracing::info!(error = %e, "cannot update the kubernetes Service's endpoints; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            // Until the list changes, or someone touches the objects this pass wrote.
            loop {
                tokio::select! {
                    changed = self.servers.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    change = changes.recv() => match change {
                        Ok(change) if !concerns(&change) => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        }
    }
}

/// Brings the Endpoints and slices to `servers` (`address:port` each).
async fn reconcile(ctx: &Context, servers: &[String]) -> Result<(), ApiError> {
    let addrs: Vec<SocketAddr> = servers.iter().filter_map(|s| s.parse().ok()).collect();
    if addrs.is_empty() {
        return Ok(());
    }
    let primary_v6 = ctx
        .cache
        .get(&object(&SERVICES))
        .and_then(|svc| svc["spec"]["clusterIP"].as_str()?.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_ipv6());
    write_endpoints(ctx, subsets(&addrs)).await?;
    write_slices(ctx, slices(&addrs, primary_v6)).await
}

async fn write_endpoints(ctx: &Context, subsets: Value) -> Result<(), ApiError> {
    let labels = json!({SKIP_MIRROR: "true"});
    let r = object(&ENDPOINTS);
    match ctx.cache.get(&r) {
        Some(current)
            if current["subsets"] == subsets && current["metadata"]["labels"] == labels =>
        {
            Ok(())
        }
        Some(_) => {
            let o = ctx
                .registry
                .modify(&r, Part::Main, |e| {
                    e["subsets"] = subsets.clone();
                    e["metadata"]["labels"] = labels.clone();
                })
                .await?;
            ctx.wrote(&o);
            Ok(())
        }
        None => {
            let e = json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
                "subsets": subsets,
            });
            let o = ctx.registry.create(&ENDPOINTS, Some(NAMESPACE), e).await?;
            ctx.wrote(&o);
            Ok(())
        }
    }
}

async fn write_slices(ctx: &Context, want: Vec<(String, Value)>) -> Result<(), ApiError> {
    let existing: Vec<Arc<Frozen>> = ctx
        .cache
        .list_in(&ENDPOINTSLICES, NAMESPACE)
        .into_iter()
        .filter(|s| s["metadata"]["labels"][SERVICE_NAME] == NAME)
        .collect();
    for s in &existing {
        let name = owner::name(s);
        let keep = want
            .iter()
            .any(|(n, w)| n == name && w["addressType"] == s["addressType"]);
        if !keep {
            // A slice of another family or port (a server left), or one whose address type
            // is wrong and cannot change: it goes, and is made again below if still wanted.
            match ctx.registry.delete(&slice_ref(name), None).await {
                Ok(o) => ctx.wrote(&o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    for (name, slice) in want {
        let current = existing
            .iter()
            .find(|s| owner::name(*s) == name && s["addressType"] == slice["addressType"]);
        match current {
            Some(s)
                if s["endpoints"] == slice["endpoints"]
                    && s["ports"] == slice["ports"]
                    && s["metadata"]["labels"] == slice["metadata"]["labels"] => {}
            Some(_) => {
                let o = ctx
                    .registry
                    .modify(&slice_ref(&name), Part::Main, |s| {
                        s["endpoints"] = slice["endpoints"].clone();
                        s["ports"] = slice["ports"].clone();
                        s["metadata"]["labels"] = slice["metadata"]["labels"].clone();
                    })
                    .await?;
                ctx.wrote(&o);
            }
            None => {
                let o = ctx
                    .registry
                    .create(&ENDPOINTSLICES, Some(NAMESPACE), slice)
                    .await?;
                ctx.wrote(&o);
            }
        }
    }
    Ok(())
}

/// One subset per port, addresses sorted.
fn subsets(addrs: &[SocketAddr]) -> Value {
    let mut by_port: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
    for a in addrs {
        by_port.entry(a.port()).or_default().push(a.ip());
    }
    let subsets: Vec<Value> = by_port
        .into_iter()
        .map(|(port, mut ips)| {
            ips.sort();
            ips.dedup();
            let addresses: Vec<Value> =
                ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
            json!({"addresses": addresses, "ports": [https(port)]})
        })
        .collect();
    json!(subsets)
}

/// The slices with their names: one per family and port, the Service's family first.
fn slices(addrs: &[SocketAddr], primary_v6: bool) -> Vec<(String, Value)> {
    // Key: (not the primary family, port); so the primary family's lowest port sorts first.
    let mut groups: BTreeMap<(bool, u16), Vec<IpAddr>> = BTreeMap::new();
    for a in addrs {
        groups
            .entry((a.is_ipv6() != primary_v6, a.port()))
            .or_default()
            .push(a.ip());
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((_, port), mut ips))| {
            ips.sort();
            ips.dedup();
            let family = if ips.first().is_some_and(IpAddr::is_ipv6) {
                "IPv6"
            } else {
                "IPv4"
            };
            let name = if i == 0 {
                NAME.to_owned()
            } else {
                format!("{NAME}-{}-{port}", family.to_lowercase())
            };
            let endpoints: Vec<Value> = ips
                .iter()
                .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
                .collect();
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SERVICE_NAME: NAME}},
                "addressType": family,
                "endpoints": endpoints,
                "ports": [https(port)],
            });
            (name, slice)
        })
        .collect()
}

fn https(port: u16) -> Value {
    json!({"name": "https", "port": port, "protocol": "TCP"})
}

/// Whether a cache change touches what this controller writes or reads.
fn concerns(change: &Change) -> bool {
    let Some(obj) = change.object() else {
        return false;
    };
    if owner::namespace(obj) != NAMESPACE {
        return false;
    }
    if change.resource == &ENDPOINTSLICES {
        return obj["metadata"]["labels"][SERVICE_NAME] == NAME;
    }
    (change.resource == &ENDPOINTS || change.resource == &SERVICES) && owner::name(obj) == NAME
}

fn object(resource: &'static crate::apiserver::resources::Resource) -> ObjectRef {
    ObjectRef {
        resource,
        namespace: Some(NAMESPACE.into()),
        name: NAME.into(),
    }
}

fn slice_ref(name: &str) -> ObjectRef {
    ObjectRef {
        resource: &ENDPOINTSLICES,
        namespace: Some(NAMESPACE.into()),
        name: name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn servers_on_one_port_share_one_subset_and_one_slice() {
        let a = addrs(&["192.168.1.12:6443", "192.168.1.11:6443"]);
        assert_eq!(
            subsets(&a),
            json!([{
                "addresses": [{"ip": "192.168.1.11"}, {"ip": "192.168.1.12"}],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
            }])
        );
        let s = slices(&a, false);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "kubernetes");
        assert_eq!(s[0].1["addressType"], "IPv4");
        assert_eq!(s[0].1["endpoints"][1]["addresses"][0], "192.168.1.12");
    }

    #[test]
    fn other_ports_and_families_get_their_own_subsets_and_slices() {
        let a = addrs(&["10.0.0.1:6443", "[fd00::1]:6443", "10.0.0.2:7443"]);
        assert_eq!(subsets(&a).as_array().map(Vec::len), Some(2));
        let names: Vec<String> = slices(&a, false).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["kubernetes", "kubernetes-ipv4-7443", "kubernetes-ipv6-6443"]
        );
        // On an IPv6-first cluster the IPv6 servers make the `kubernetes` slice.
        let (name, slice) = slices(&a, true).remove(0);
        assert_eq!(
            (name.as_str(), &slice["addressType"]),
            ("kubernetes", &json!("IPv6"))
        );
    }
}
