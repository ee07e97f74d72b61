//! What the controllers' cache keeps of a Pod: everything a controller or the scheduler
//! reads, none of what only the pod's node (and the API's clients) read.
//!
//! A decoded object costs far more than its JSON: every map is a B-tree node of about 630
//! bytes however few keys it holds, so a pod of 3 KB of JSON is ~20 KB in memory, and pods
//! are most of a cluster's cache. Much of a pod's maps describe how its node runs it — the
//! service-account volume every pod gets, mounts, probes, environment, security contexts —
//! and no controller looks at those.
//!
//! Invariants: trimming only removes; it never changes a value that remains, so any read a
//! controller makes answers as it would on the whole pod. A trimmed pod carries [`MARK`],
//! and the registry refuses to store an object that carries it: a cached pod is never
//! written back whole (writers read the stored pod first, or patch it). The one writer that
//! needs a pod whole without reading it, the scheduler's binding, gets a whole copy of each
//! pod still waiting for it ([`split`]): those are few once a burst is placed.

use serde_json::{Map, Value};

use super::frozen::Frozen;

use crate::apiserver::resources::{PODS, Resource};

/// Top-level key of a trimmed object. Not a valid API field, so it never comes from a client.
pub const MARK: &str = "keelson.io/trimmed";

/// A container's fields that only its node reads. Kept: `name`, `image`, `ports` (Services'
/// named ports, host-port conflicts), `resources` (scheduling), `restartPolicy` (sidecars).
const NODE_ONLY_CONTAINER_FIELDS: &[&str] = &[
    "args",
    "command",
    "env",
    "envFrom",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
    "readinessProbe",
    "resizePolicy",
    "securityContext",
    "startupProbe",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
    "volumeMounts",
    "workingDir",
];

/// A pod spec's fields that only its node reads.
const NODE_ONLY_SPEC_FIELDS: &[&str] = &[
    "dnsConfig",
    "hostAliases",
    "imagePullSecrets",
    "securityContext",
];

/// Volume sources a controller reads (claims, for scheduling and StatefulSets); every other
/// volume (the service-account token, configMaps, secrets, emptyDirs) is the node's.
const CONTROLLER_VOLUME_SOURCES: &[&str] = &["persistentVolumeClaim", "ephemeral"];

/// Trims `obj` of `resource` for the cache; objects of other kinds stay whole.
pub fn trim(resource: &'static Resource, obj: &mut Value) {
    if resource != &PODS {
        return;
    }
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    if let Some(meta) = root.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        if let Some(notes) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            notes.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if let Some(spec) = root.get_mut("spec").and_then(Value::as_object_mut) {
        trim_spec(spec);
    }
    root.insert(MARK.to_owned(), Value::Bool(true));
}

fn trim_spec(spec: &mut Map<String, Value>) {
    for field in NODE_ONLY_SPEC_FIELDS {
        spec.remove(*field);
    }
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(c) = c.as_object_mut() {
                for field in NODE_ONLY_CONTAINER_FIELDS {
                    c.remove(*field);
                }
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        volumes.retain(|v| {
            CONTROLLER_VOLUME_SOURCES
                .iter()
                .any(|source| v.get(*source).is_some())
        });
        if volumes.is_empty() {
            spec.remove("volumes");
        }
    }
}

/// Trims `obj` for the cache, and also returns it whole (frozen) when it is a pod waiting
/// for the default scheduler (unbound, not being deleted): binding writes it back with its
/// node. During a burst these copies are most of the cache: frozen, a third of their decoded
/// size.
pub fn split(resource: &'static Resource, mut obj: Value) -> (Value, Option<Frozen>) {
    let whole = (resource == &PODS && awaits_scheduler(&obj)).then(|| Frozen::from(&obj));
    trim(resource, &mut obj);
    (obj, whole)
}

fn awaits_scheduler(pod: &Value) -> bool {
    let spec = &pod["spec"];
    spec["nodeName"].as_str().is_none_or(str::is_empty)
        && spec["schedulerName"]
            .as_str()
            .is_none_or(|s| s == "default-scheduler")
        && pod.pointer("/metadata/deletionTimestamp").is_none()
}

/// Whether `obj` is a trimmed copy, which must not be stored.
pub fn is_trimmed(obj: &Value) -> bool {
    obj.get(MARK).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::NODES;
    use crate::memory::counting::live;
    use serde_json::json;

    /// A pod as a ReplicaSet's pod is stored once its node runs it: the API's defaults, the
    /// service-account volume admission adds, and the node's status.
    fn running_pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-7d4b9c6f5-x2x9k", "generateName": "web-7d4b9c6f5-",
                "namespace": "default", "uid": "0f2b8c1e-5d7a-4c3e-9b1a-2e6f8d9c0a1b",
                "resourceVersion": "4242", "creationTimestamp": "2026-12-07T01:00:00Z",
                "labels": {"app": "web", "pod-template-hash": "7d4b9c6f5"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c6f5",
                    "uid": "4c1d2e3f-0a9b-4c8d-7e6f-5a4b3c2d1e0f", "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "containers": [{
                    "name": "web", "image": "busybox:1.36",
                    "command": ["httpd", "-f", "-p", "8080"],
                    "env": [{"name": "MODE", "value": "prod"}],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080, "scheme": "HTTP"},
                        "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                    "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": true,
                        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
                }],
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {},
                "schedulerName": "default-scheduler", "enableServiceLinks": true,
                "preemptionPolicy": "PreemptLowerPriority", "priority": 0, "nodeName": "pi-7",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                ],
                "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}}]
            },
            "status": {
                "phase": "Running", "qosClass": "Burstable", "startTime": "2026-12-07T01:00:01Z",
                "hostIP": "192.168.1.7", "hostIPs": [{"ip": "192.168.1.7"}],
                "podIP": "10.42.7.12", "podIPs": [{"ip": "10.42.7.12"}],
                "conditions": [
                    {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-07T01:00:01Z"},
                    {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-07T01:00:01Z"},
                    {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-07T01:00:02Z"},
                    {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-07T01:00:02Z"},
                    {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-07T01:00:00Z"}
                ],
                "containerStatuses": [{"name": "web", "ready": true, "started": true, "restartCount": 0,
                    "image": "docker.io/library/busybox:1.36", "imageID": "docker.io/library/busybox@sha256:0123",
                    "containerID": "runc://0123abcd", "state": {"running": {"startedAt": "2026-12-07T01:00:02Z"}},
                    "lastState": {}}]
            }
        })
    }

    #[test]
    fn a_trimmed_pod_keeps_what_controllers_read() {
        let mut pod = running_pod();
        pod["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}}));
        let whole = pod.clone();
        trim(&PODS, &mut pod);
        assert!(is_trimmed(&pod) && !is_trimmed(&whole));
        for kept in [
            "/metadata/labels",
            "/metadata/ownerReferences",
            "/metadata/uid",
            "/metadata/resourceVersion",
            "/spec/nodeName",
            "/spec/tolerations",
            "/spec/schedulerName",
            "/spec/priority",
            "/spec/containers/0/name",
            "/spec/containers/0/image",
            "/spec/containers/0/ports",
            "/spec/containers/0/resources",
            "/status",
        ] {
            assert_eq!(
                pod.pointer(kept),
                whole.pointer(kept),
                "{kept} must be kept"
            );
        }
        for gone in [
            "/spec/containers/0/env",
            "/spec/containers/0/command",
            "/spec/containers/0/volumeMounts",
            "/spec/containers/0/readinessProbe",
            "/spec/securityContext",
        ] {
            assert_eq!(pod.pointer(gone), None, "{gone} is the node's");
        }
        // Claims stay (scheduling follows them); the token volume goes.
        assert_eq!(
            pod["spec"]["volumes"],
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}}])
        );
    }

    #[test]
    fn only_pods_waiting_for_the_scheduler_are_also_kept_whole() {
        let mut pending = running_pod();
        pending["spec"].as_object_mut().unwrap().remove("nodeName");
        let (trimmed, whole) = split(&PODS, pending.clone());
        assert!(is_trimmed(&trimmed));
        assert_eq!(whole.map(|w| w.thaw()), Some(pending.clone()));
        assert_eq!(split(&PODS, running_pod()).1, None, "bound");
        let mut other = pending.clone();
        other["spec"]["schedulerName"] = json!("my-scheduler");
        assert_eq!(split(&PODS, other).1, None, "another scheduler's");
        let mut going = pending;
        going["metadata"]["deletionTimestamp"] = json!("2026-12-07T01:00:00Z");
        assert_eq!(split(&PODS, going).1, None, "being deleted");
    }

    #[test]
    fn other_kinds_are_cached_whole() {
        let mut node = json!({"metadata": {"name": "pi-7"}, "spec": {"podCIDR": "10.42.7.0/24"}});
        let whole = node.clone();
        trim(&NODES, &mut node);
        assert_eq!(node, whole);
    }

    /// The figure behind the README's per-pod cache cost: the decoded size of a running pod,
    /// whole and trimmed, counted by the test binary's allocator.
    #[test]
    fn a_cached_pod_costs_well_under_its_whole_decoded_size() {
        let text = running_pod().to_string();
        let (whole, whole_bytes, whole_allocs) =
            live(|| serde_json::from_str::<Value>(&text).unwrap());
        let (trimmed, trimmed_bytes, _) = live(|| {
            let mut pod = serde_json::from_str::<Value>(&text).unwrap();
            trim(&PODS, &mut pod);
            pod
        });
        // What the cache holds: the trimmed pod, frozen.
        let (cached, cached_bytes, cached_allocs) = live(|| Frozen::from(&trimmed));
        eprintln!(
            "a running pod: {} B of JSON; decoded {whole_bytes} B in {whole_allocs} allocations, \
             trimmed {trimmed_bytes} B, trimmed and frozen {cached_bytes} B in {cached_allocs} allocations",
            text.len()
        );
        assert!(
            trimmed_bytes * 10 <= whole_bytes * 7,
            "trimming saves less than 30%: {trimmed_bytes} of {whole_bytes} B"
        );
        assert!(
            cached_bytes * 4 <= whole_bytes && cached_allocs * 4 <= whole_allocs,
            "a cached pod costs more than a quarter of its decoded size: {cached_bytes} of \
             {whole_bytes} B, {cached_allocs} of {whole_allocs} allocations"
        );
        drop((whole, trimmed, cached));
    }
}
