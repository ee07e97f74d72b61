//! apps/v1 DaemonSet: Kubernetes' defaults (a rolling update of one node at a time, history,
//! the template's pod defaults), a selector that selects the template and may not change, a
//! rolling update with exactly one of `maxUnavailable` and `maxSurge` non-zero (Kubernetes'
//! rule), and the `kubectl get daemonsets` columns. `controllers::daemonset` makes their pods.

use serde_json::{Value, json};

use super::workload::{self, CONTAINERS, IMAGES, SELECTOR, count};
use super::{AGE, Column, NAME, Strategy, integer, or_none, plain};

pub struct DaemonSets;

impl Strategy for DaemonSets {
    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            return;
        }
        workload::or_insert(obj, "/spec", "revisionHistoryLimit", json!(10));
        if let Some(strategy) = workload::map_at(obj, "/spec/updateStrategy") {
            strategy.entry("type").or_insert(json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if let Some(r) = rolling.as_object_mut() {
                    r.entry("maxUnavailable").or_insert(json!(1));
                    r.entry("maxSurge").or_insert(json!(0));
                }
            }
        }
        workload::default_template(obj, "/spec/template");
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        for p in ["/spec/minReadySeconds", "/spec/revisionHistoryLimit"] {
            workload::non_negative(obj, p, causes);
        }
        workload::validate_controller(obj, "daemonset", &["Always"], causes);
        workload::one_of(
            obj,
            "/spec/updateStrategy/type",
            &["OnDelete", "RollingUpdate"],
            causes,
        );
        if obj.pointer("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
            validate_rolling_update(obj, causes);
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        workload::immutable(old, new, "/spec/selector", causes);
    }

    fn has_generation(&self) -> bool {
        true
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 11] = [
    NAME,
    integer(
        "Desired",
        "The desired number of nodes that should be running the daemon pod.",
        0,
        |d, _| json!(count(d, "/status/desiredNumberScheduled")),
    ),
    integer(
        "Current",
        "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
        0,
        |d, _| json!(count(d, "/status/currentNumberScheduled")),
    ),
    integer(
        "Ready",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
        0,
        |d, _| json!(count(d, "/status/numberReady")),
    ),
    integer(
        "Up-to-date",
        "The total number of nodes that are running updated daemon pod",
        0,
        |d, _| json!(count(d, "/status/updatedNumberScheduled")),
    ),
    integer(
        "Available",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
        0,
        |d, _| json!(count(d, "/status/numberAvailable")),
    ),
    plain(
        "Node Selector",
        "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node.",
        0,
        |d, _| json!(node_selector(d)),
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const ROLLING: &str = "spec.updateStrategy.rollingUpdate";

/// Each of `maxUnavailable` and `maxSurge` a non-negative count or a percentage of at most
/// 100 %, and exactly one of them non-zero, with Kubernetes' messages. Whether a value is
/// zero is judged as Kubernetes does, even for one refused otherwise (`-1` and `150%` are not).
fn validate_rolling_update(obj: &Value, causes: &mut Vec<String>) {
    let mut non_zero = |field: &str| -> bool {
        let Some(v) = obj.pointer(&format!("/spec/updateStrategy/rollingUpdate/{field}")) else {
            return false;
        };
        let at = format!("{ROLLING}.{field}");
        match v {
            Value::Number(n) => match n.as_i64() {
                Some(i) if i >= 0 => i != 0,
                other => {
                    causes.push(format!(
                        "{at}: Invalid value: {n}: must be greater than or equal to 0"
                    ));
                    other.is_some()
                }
            },
            Value::String(text) => match text
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .map(str::parse::<u64>)
            {
                Some(Ok(p)) if p <= 100 => p != 0,
                Some(_) => {
                    causes.push(format!(
                        "{at}: Invalid value: {text:?}: must not be greater than 100%"
                    ));
                    true
                }
                None => {
                    causes.push(format!(
                        "{at}: Invalid value: {text:?}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"
                    ));
                    false
                }
            },
            Value::Null => false,
            other => {
                causes.push(format!(
                    "{at}: Invalid value: {other}: must be an integer or a percentage"
                ));
                false
            }
        }
    };
    let unavailable = non_zero("maxUnavailable");
    let surge = non_zero("maxSurge");
    match (unavailable, surge) {
        (true, true) => causes.push(format!(
            "{ROLLING}.maxSurge: Invalid value: {}: may not be set when maxUnavailable is non-zero",
            obj.pointer("/spec/updateStrategy/rollingUpdate/maxSurge")
                .map(Value::to_string)
                .unwrap_or_default()
        )),
        (false, false) => causes.push(format!(
            "{ROLLING}.maxUnavailable: Required value: cannot be 0 when maxSurge is 0"
        )),
        _ => {}
    }
}

/// `spec.template.spec.nodeSelector` as `k=v,…` sorted by key, or `<none>`.
fn node_selector(d: &Value) -> String {
    let mut pairs: Vec<String> = d
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    or_none(pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemonset_rolls_one_node_at_a_time_by_default() {
        let mut ds = json!({"spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                                  "containers": [{"name": "agent", "image": "agent:1"}]}}}});
        DaemonSets.default("agent", &mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
        assert!(ds["spec"].get("replicas").is_none());
        let mut causes = Vec::new();
        DaemonSets.validate(&ds, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut moved = ds.clone();
        moved["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        moved["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        DaemonSets.validate_update(&ds, &moved, &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");

        let now = time::OffsetDateTime::now_utc();
        let cells: Vec<Value> = COLUMNS.iter().map(|c| (c.cell)(&ds, now)).collect();
        assert_eq!(
            cells[1..6],
            [json!(0), json!(0), json!(0), json!(0), json!(0)]
        );
        assert_eq!(cells[6], "kubernetes.io/os=linux");
    }

    #[test]
    fn exactly_one_of_max_unavailable_and_max_surge_is_non_zero() {
        let with = |rolling: Value| {
            let mut ds = json!({"spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
                "template": {"metadata": {"labels": {"app": "agent"}},
                             "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}}}});
            DaemonSets.default("agent", &mut ds);
            let mut causes = Vec::new();
            DaemonSets.validate(&ds, &mut causes);
            causes
        };
        assert_eq!(
            with(json!({"maxUnavailable": 0, "maxSurge": 1})),
            Vec::<String>::new()
        );
        assert_eq!(
            with(json!({"maxUnavailable": 0, "maxSurge": "25%"})),
            Vec::<String>::new()
        );
        assert_eq!(
            with(json!({"maxUnavailable": 0, "maxSurge": "0%"})),
            [
                "spec.updateStrategy.rollingUpdate.maxUnavailable: Required value: cannot be 0 when maxSurge is 0"
            ]
        );
        // maxUnavailable defaults to 1, so a surge alone needs maxUnavailable: 0 spelled out.
        assert_eq!(
            with(json!({"maxSurge": 1})),
            [
                "spec.updateStrategy.rollingUpdate.maxSurge: Invalid value: 1: may not be set when maxUnavailable is non-zero"
            ]
        );
        assert_eq!(
            with(json!({"maxUnavailable": "150%", "maxSurge": 0})).len(),
            1
        );
        // -1 is refused, and is not zero either, as Kubernetes judges it.
        assert_eq!(with(json!({"maxUnavailable": -1, "maxSurge": 1})).len(), 2);
        assert_eq!(
            with(json!({"maxUnavailable": "x%", "maxSurge": 1})).len(),
            1
        );
    }
}
