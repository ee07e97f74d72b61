//! The endpoints controller: each Service with a selector gets an Endpoints object and one
//! EndpointSlice listing the pods it selects, as Kubernetes' endpoints and endpointslice
//! controllers keep them.
//!
//! A pod is listed once it has an IP (its node reported one) and is not finished; ready pods
//! under `addresses`, the others under `notReadyAddresses` (in the slice: the `ready`,
//! `serving` and `terminating` conditions). Ports are the Service's, with a named
//! `targetPort` resolved against each pod's container ports (pods without that port are left
//! out of that port's subset, as Kubernetes does). The networking issue's service proxy
//! reads these objects.
//!
//! Invariants: only objects this controller manages are written — Endpoints named like a
//! Service that has a selector, and slices labelled `endpointslice.kubernetes.io/managed-by:
//! endpointslice-controller.k8s.io`; a Service without a selector keeps whatever endpoints its
//! user wrote; nothing is written when nothing changed.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::owner::{self, controller_ref, key_of, ref_of};
use crate::apiserver::kinds::workload::selects;
use crate::apiserver::registry::Part;
use crate::apiserver::resources::{ENDPOINTS, ENDPOINTSLICES, ObjectRef, PODS, Resource, SERVICES};
use crate::apiserver::status::ApiError;
use crate::runtime::cache::{Cache, Change};
use crate::runtime::controller::{Action, Context, Reconciler};
use crate::runtime::frozen::{AsJson, Frozen, Json};

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";

pub struct Endpoints;

impl Endpoints {
    /// What it reads from the cache.
    pub const KINDS: [&'static Resource; 4] = [&SERVICES, &PODS, &ENDPOINTS, &ENDPOINTSLICES];
}

impl Reconciler for Endpoints {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn keys(&self, change: &Change, cache: &Cache) -> Vec<String> {
        let Some(obj) = change.object() else {
            return vec![];
        };
        let ns = owner::namespace(obj);
        if change.resource == &SERVICES || change.resource == &ENDPOINTS {
            return key_of(obj).into_iter().collect();
        }
        if change.resource == &ENDPOINTSLICES {
            return obj["metadata"]["labels"][SERVICE_NAME]
                .as_str()
                .map(|svc| vec![format!("{ns}/{svc}")])
                .unwrap_or_default();
        }
        if change.resource != &PODS {
            return vec![];
        }
        // Every Service that selects the pod, before or after the change.
        let mut keys: Vec<String> = cache
            .list_in(&SERVICES, ns)
            .iter()
            .filter(|svc| {
                let sel = &svc["spec"]["selector"];
                has_selector(sel)
                    && [change.old.as_deref(), change.new.as_deref()]
                        .into_iter()
                        .flatten()
                        .any(|p| matches_selector(sel, owner::labels(p)))
            })
            .filter_map(key_of)
            .collect();
        keys.dedup();
        keys
    }

    fn all(&self, cache: &Cache) -> Vec<String> {
        cache.list(&SERVICES).iter().filter_map(key_of).collect()
    }

    async fn reconcile(&self, key: &str, ctx: &Context) -> Result<Action, ApiError> {
        let Some(svc) = ctx.cache.get(&ref_of(&SERVICES, key)) else {
            // Its Endpoints and slices go with it (the garbage collector, by owner).
            return Ok(Action::Done);
        };
        // The Service is read as a value; the pods it selects stay frozen.
        let svc = svc.thaw();
        let selector = &svc["spec"]["selector"];
        if !has_selector(selector) || owner::is_terminating(&svc) {
            return Ok(Action::Done);
        }
        let ns = owner::namespace(&svc).to_owned();
        let pods: Vec<_> = ctx
            .cache
            .list_in(&PODS, &ns)
            .into_iter()
            .filter(|p| matches_selector(selector, owner::labels(p)))
            .filter(|p| pod_ip(p).is_some() && owner::is_active_or_terminating(p))
            .collect();
        let pods: Vec<&Frozen> = pods.iter().map(|p| &**p).collect();
        let subsets = subsets(&svc, &pods);
        self.write_endpoints(ctx, &svc, &ns, subsets).await?;
        self.write_slice(ctx, &svc, &ns, &pods).await?;
        Ok(Action::Done)
    }
}

impl Endpoints {
    async fn write_endpoints(
        &self,
        ctx: &Context,
        svc: &Value,
        ns: &str,
        subsets: Value,
    ) -> Result<(), ApiError> {
        let name = owner::name(svc);
        let r = ObjectRef {
            resource: &ENDPOINTS,
            namespace: Some(ns.to_owned()),
            name: name.to_owned(),
        };
        match ctx.cache.get(&r) {
            Some(current) if current["subsets"] == subsets => Ok(()),
            Some(_) => {
                let o = ctx
                    .registry
                    .modify(&r, Part::Main, |e| e["subsets"] = subsets.clone())
                    .await?;
                ctx.wrote(&o);
                Ok(())
            }
            None => {
                let e = json!({
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "labels": svc["metadata"]["labels"],
                        "ownerReferences": [owner_ref(svc)],
                    },
                    "subsets": subsets,
                });
                match ctx.registry.create(&ENDPOINTS, Some(ns), e).await {
                    Ok(o) => {
                        ctx.wrote(&o);
                        Ok(())
                    }
                    // Written meanwhile (by a user, or before the cache saw it): next round.
                    Err(ApiError::AlreadyExists { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn write_slice(
        &self,
        ctx: &Context,
        svc: &Value,
        ns: &str,
        pods: &[&Frozen],
    ) -> Result<(), ApiError> {
        let svc_name = owner::name(svc);
        let ports: Vec<Value> = service_ports(svc)
            .iter()
            .map(|p| {
                // A slice port is one number for every endpoint in it: resolve a named
                // target against the first pod that has it.
                let number = pods
                    .iter()
                    .find_map(|pod| target_port(p, pod))
                    .unwrap_or(0);
                json!({"name": p["name"].as_str().unwrap_or(""), "port": number, "protocol": p["protocol"].as_str().unwrap_or("TCP")})
            })
            .collect();
        let endpoints: Vec<Value> = pods
            .iter()
            .map(|p| {
                let ready = owner::is_ready(p) && !owner::is_terminating(p);
                json!({
                    "addresses": [pod_ip(p)],
                    "conditions": {
                        "ready": ready,
                        "serving": owner::is_ready(p),
                        "terminating": owner::is_terminating(p),
                    },
                    "nodeName": p["spec"]["nodeName"],
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": owner::name(p), "uid": owner::uid(p)},
                })
            })
            .collect();
        let existing = ctx
            .cache
            .list_in(&ENDPOINTSLICES, ns)
            .into_iter()
            .find(|s| {
                s["metadata"]["labels"][SERVICE_NAME] == svc_name
                    && s["metadata"]["labels"][MANAGED_BY] == MANAGER
            });
        match existing {
            Some(s) if s["endpoints"] == json!(endpoints) && s["ports"] == json!(ports) => Ok(()),
            Some(s) => {
                let r = ObjectRef {
                    resource: &ENDPOINTSLICES,
                    namespace: Some(ns.to_owned()),
                    name: owner::name(&s).to_owned(),
                };
                let o = ctx
                    .registry
                    .modify(&r, Part::Main, |s| {
                        s["endpoints"] = json!(endpoints);
                        s["ports"] = json!(ports);
                    })
                    .await?;
                ctx.wrote(&o);
                Ok(())
            }
            None => {
                let slice = json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "generateName": format!("{svc_name}-"),
                        "namespace": ns,
                        "labels": {SERVICE_NAME: svc_name, MANAGED_BY: MANAGER},
                        "ownerReferences": [owner_ref(svc)],
                    },
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": ports,
                });
                let o = ctx
                    .registry
                    .create(&ENDPOINTSLICES, Some(ns), slice)
                    .await?;
                ctx.wrote(&o);
                Ok(())
            }
        }
    }
}

/// Services own what is made for them, without blocking their deletion.
fn owner_ref(svc: &Value) -> Value {
    let mut r = controller_ref(&SERVICES, svc);
    r["blockOwnerDeletion"] = json!(true);
    r
}

fn has_selector(sel: &impl Json) -> bool {
    sel.entries().is_some_and(|mut m| m.next().is_some())
}

/// A Service's selector is a plain map of labels.
fn matches_selector(sel: &impl Json, labels: &impl Json) -> bool {
    selects(&json!({"matchLabels": sel.thaw()}), labels)
}

fn pod_ip(pod: &impl AsJson) -> Option<&str> {
    pod.json()["status"]["podIP"]
        .as_str()
        .filter(|ip| !ip.is_empty())
}

fn service_ports(svc: &Value) -> Vec<Value> {
    svc["spec"]["ports"].as_array().cloned().unwrap_or_default()
}

/// The pod's port a Service port sends to: a number, or a container port by name.
fn target_port(port: &Value, pod: &impl AsJson) -> Option<i64> {
    let pod = pod.json();
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => port["port"].as_i64(),
    }
}

/// A Service port as one pod serves it: name, number, protocol.
type ResolvedPort = (String, i64, String);

/// Endpoints subsets: pods grouped by the ports they resolve to, ready ones apart.
fn subsets(svc: &Value, pods: &[&Frozen]) -> Value {
    let ports = service_ports(svc);
    // Pods with the same resolved ports share a subset.
    let mut groups: BTreeMap<Vec<ResolvedPort>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in pods {
        let resolved: Vec<ResolvedPort> = ports
            .iter()
            .filter_map(|p| {
                Some((
                    p["name"].as_str().unwrap_or("").to_owned(),
                    target_port(p, pod)?,
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                ))
            })
            .collect();
        if resolved.is_empty() && !ports.is_empty() {
            continue;
        }
        let address = json!({
            "ip": pod_ip(pod),
            "nodeName": pod["spec"]["nodeName"],
            "targetRef": {"kind": "Pod", "namespace": owner::namespace(pod), "name": owner::name(pod), "uid": owner::uid(pod)},
        });
        let group = groups.entry(resolved).or_default();
        if owner::is_ready(pod) && !owner::is_terminating(pod) {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    let subsets: Vec<Value> = groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let mut s = json!({
                "ports": ports.iter().map(|(name, port, protocol)| {
                    let mut p = json!({"port": port, "protocol": protocol});
                    if !name.is_empty() {
                        p["name"] = json!(name);
                    }
                    p
                }).collect::<Vec<_>>(),
            });
            let by_ip = |a: &Value| a["ip"].as_str().unwrap_or("").to_owned();
            let mut ready = ready;
            ready.sort_by_key(by_ip);
            let mut not_ready = not_ready;
            not_ready.sort_by_key(by_ip);
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    json!(subsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i64) -> Frozen {
        Frozen::from(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
    }

    #[test]
    fn ready_and_not_ready_pods_with_named_ports_resolved() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
        ]}});
        let a = pod("a", "10.42.0.2", true, "http", 8080);
        let b = pod("b", "10.42.0.3", false, "http", 8080);
        let c = pod("c", "10.42.0.4", true, "http", 9090);
        let d = pod("d", "10.42.0.5", true, "other", 7070);
        let s = subsets(&svc, &[&a, &b, &c, &d]);
        let subsets = s.as_array().unwrap();
        assert_eq!(subsets.len(), 2, "{s}");
        let on_8080 = subsets
            .iter()
            .find(|s| s["ports"][0]["port"] == 8080)
            .unwrap();
        assert_eq!(on_8080["addresses"][0]["ip"], "10.42.0.2");
        assert_eq!(on_8080["notReadyAddresses"][0]["ip"], "10.42.0.3");
        assert_eq!(on_8080["ports"][0]["name"], "http");
        assert!(
            !s.to_string().contains("10.42.0.5"),
            "a pod without the named port is left out"
        );
    }

    #[test]
    fn a_numeric_or_missing_target_port() {
        let pod = pod("a", "10.42.0.2", true, "http", 8080);
        assert_eq!(
            target_port(&json!({"port": 80, "targetPort": 9000}), &pod),
            Some(9000)
        );
        assert_eq!(target_port(&json!({"port": 80}), &pod), Some(80));
        assert_eq!(
            target_port(&json!({"port": 80, "targetPort": "nope"}), &pod),
            None
        );
    }
}
