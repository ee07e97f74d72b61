//! What the workload kinds (apps/v1 and batch/v1) share: label selectors and whether they
//! select a pod template's labels, the template's defaults and checks, non-negative counts,
//! immutable fields, and the CONTAINERS/IMAGES/SELECTOR columns. Each kind's own rules stay in
//! its file.

use crate::runtime::frozen::Json;
use serde_json::{Map, Value, json};

use super::{Column, or_none, plain, pod};

/// The operators a `matchExpressions` requirement may use.
const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// Defaults the pod spec of the template at `pointer` (`/spec/template`).
pub fn default_template(obj: &mut Value, pointer: &str) {
    if let Some(spec) = obj
        .pointer_mut(&format!("{pointer}/spec"))
        .and_then(Value::as_object_mut)
    {
        pod::default_spec(spec);
    }
}

/// Sets `key` in the map at `pointer` if it is missing; does nothing if there is no map.
pub fn or_insert(obj: &mut Value, pointer: &str, key: &str, value: Value) {
    if let Some(map) = obj.pointer_mut(pointer).and_then(Value::as_object_mut) {
        map.entry(key).or_insert(value);
    }
}

/// The map at `pointer`, making it and any map above it that is missing or null. `None` if
/// something else is in the way.
pub fn map_at<'a>(obj: &'a mut Value, pointer: &str) -> Option<&'a mut Map<String, Value>> {
    let mut here = obj;
    for key in pointer.split('/').skip(1) {
        if here.is_null() {
            *here = json!({});
        }
        here = here.as_object_mut()?.entry(key).or_insert(Value::Null);
    }
    if here.is_null() {
        *here = json!({});
    }
    here.as_object_mut()
}

/// Checks the selector at `spec.selector` and the pod template at `spec.template` of a
/// controller kind (`kind` as Kubernetes names it in messages: `deployment`): the selector is
/// required and not empty, selects the template's labels, and the template is a valid pod
/// whose restartPolicy is one of `restart_policies`.
pub fn validate_controller(
    obj: &Value,
    kind: &str,
    restart_policies: &[&str],
    causes: &mut Vec<String>,
) {
    let selector = obj.pointer("/spec/selector").filter(|s| !s.is_null());
    match selector {
        None => causes.push("spec.selector: Required value".into()),
        Some(s) if is_empty_selector(s) => causes.push(format!(
            "spec.selector: Invalid value: {s}: empty selector is invalid for {kind}"
        )),
        Some(_) => {}
    }
    validate_template(
        obj.pointer("/spec/template"),
        selector,
        "spec",
        restart_policies,
        causes,
    );
}

/// Checks a pod template at `{at}.template` against the selector at `{at}.selector` (if any).
pub fn validate_template(
    template: Option<&Value>,
    selector: Option<&Value>,
    at: &str,
    restart_policies: &[&str],
    causes: &mut Vec<String>,
) {
    if let Some(s) = selector {
        validate_selector(s, &format!("{at}.selector"), causes);
    }
    let Some(template) = template.filter(|t| t.is_object()) else {
        causes.push(format!("{at}.template: Required value"));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(s) = selector
        && !is_empty_selector(s)
        && !selects(s, &labels)
    {
        causes.push(format!(
            "{at}.template.metadata.labels: Invalid value: {labels}: `selector` does not match template `labels`"
        ));
    }
    let spec_at = format!("{at}.template.spec");
    pod::validate_spec(template.get("spec"), &spec_at, causes);
    if let Some(p) = template.pointer("/spec/restartPolicy").and_then(Value::as_str)
        && !restart_policies.contains(&p)
        // `validate_spec` already named a policy no pod may have.
        && matches!(p, "Always" | "OnFailure" | "Never")
    {
        let supported: Vec<String> = restart_policies.iter().map(|p| format!("{p:?}")).collect();
        causes.push(format!(
            "{spec_at}.restartPolicy: Unsupported value: {p:?}: supported values: {}",
            supported.join(", ")
        ));
    }
}

/// Checks a `LabelSelector`'s form: string labels, known operators, values where they belong.
pub fn validate_selector(selector: &Value, at: &str, causes: &mut Vec<String>) {
    let Some(s) = selector.as_object() else {
        causes.push(format!(
            "{at}: Invalid value: {selector}: must be an object"
        ));
        return;
    };
    match s.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                let v = v.as_str().unwrap_or("\u{0}");
                if let Err(e) = crate::api::labels::validate_label_key(k)
                    .and_then(|_| crate::api::labels::validate_label_value(v))
                {
                    causes.push(format!("{at}.matchLabels: Invalid value: {e}"));
                }
            }
        }
        Some(other) => causes.push(format!(
            "{at}.matchLabels: Invalid value: {other}: must be a map of strings"
        )),
    }
    let expressions = match s.get("matchExpressions") {
        None | Some(Value::Null) => return,
        Some(Value::Array(list)) => list,
        Some(other) => {
            causes.push(format!(
                "{at}.matchExpressions: Invalid value: {other}: must be a list"
            ));
            return;
        }
    };
    for (i, e) in expressions.iter().enumerate() {
        let here = format!("{at}.matchExpressions[{i}]");
        if e.get("key")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(format!("{here}.key: Required value"));
        }
        let op = e
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        match op {
            "In" | "NotIn" if values == 0 => causes.push(format!(
                "{here}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
            )),
            "Exists" | "DoesNotExist" if values > 0 => causes.push(format!(
                "{here}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            )),
            _ if !OPERATORS.contains(&op) => causes.push(format!(
                "{here}.operator: Invalid value: {op:?}: not a valid selector operator"
            )),
            _ => {}
        }
    }
}

/// Whether a `LabelSelector` selects nothing in particular (and so, in a controller, all).
pub fn is_empty_selector(selector: &Value) -> bool {
    let len = |k: &str| {
        selector.get(k).map_or(0, |v| match v {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 1,
        })
    };
    len("matchLabels") == 0 && len("matchExpressions") == 0
}

/// Whether `selector` (a `LabelSelector`) selects an object with `labels`.
pub fn selects<S: Json, L: Json>(selector: &S, labels: &L) -> bool {
    let label = |k: &str| labels.get(k).and_then(L::as_str);
    let by_labels = selector
        .get("matchLabels")
        .and_then(S::entries)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k).is_some() && label(k) == v.as_str());
    let by_expressions = selector
        .get("matchExpressions")
        .and_then(S::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e.get("key").and_then(S::as_str).unwrap_or_default();
            let values: Vec<&str> = e
                .get("values")
                .and_then(S::as_array)
                .into_iter()
                .flatten()
                .filter_map(S::as_str)
                .collect();
            match e.get("operator").and_then(S::as_str) {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

/// A `LabelSelector` as Kubernetes prints it (`app=web,tier in (a,b)`), sorted by key;
/// empty for an empty selector.
pub fn selector_string(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return String::new();
    };
    let mut parts: Vec<(String, String)> = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())))
        .collect();
    for e in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let mut values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let text = match e.get("operator").and_then(Value::as_str) {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("Exists") => key.to_owned(),
            Some("DoesNotExist") => format!("!{key}"),
            _ => continue,
        };
        parts.push((key.to_owned(), text));
    }
    parts.sort();
    parts
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// Refuses a negative number, or something other than an integer, at `pointer`.
pub fn non_negative(obj: &Value, pointer: &str, causes: &mut Vec<String>) {
    let Some(v) = obj.pointer(pointer).filter(|v| !v.is_null()) else {
        return;
    };
    let field = field_name(pointer);
    match v.as_i64() {
        Some(n) if n >= 0 => {}
        Some(n) => causes.push(format!(
            "{field}: Invalid value: {n}: must be greater than or equal to 0"
        )),
        None => causes.push(format!("{field}: Invalid value: {v}: must be an integer")),
    }
}

/// Refuses a change of the field at `pointer`.
pub fn immutable(old: &Value, new: &Value, pointer: &str, causes: &mut Vec<String>) {
    let (before, after) = (old.pointer(pointer), new.pointer(pointer));
    if before != after {
        causes.push(format!(
            "{}: Invalid value: {}: field is immutable",
            field_name(pointer),
            after.unwrap_or(&Value::Null)
        ));
    }
}

/// Refuses a value at `pointer` that is not one of `supported` (an absent one is left to
/// defaulting or to `Required`).
pub fn one_of(obj: &Value, pointer: &str, supported: &[&str], causes: &mut Vec<String>) {
    let Some(v) = obj.pointer(pointer).filter(|v| !v.is_null()) else {
        return;
    };
    if v.as_str().is_none_or(|s| !supported.contains(&s)) {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        causes.push(format!(
            "{}: Unsupported value: {v}: supported values: {}",
            field_name(pointer),
            list.join(", ")
        ));
    }
}

/// The integer at `pointer`, or 0 (a status field not written yet).
pub fn count(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The containers' names (`field` `name`) or images (`image`) of the pod spec at `pointer`,
/// comma-separated, as the CONTAINERS and IMAGES columns print them.
pub fn containers(obj: &Value, pointer: &str, field: &str) -> String {
    obj.pointer(&format!("{pointer}/containers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| c.get(field).and_then(Value::as_str).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(",")
}

/// `-o wide`: the containers of the pod template at `spec.template`.
pub const CONTAINERS: Column = plain(
    "Containers",
    "Names of each container in the template.",
    1,
    |o, _| json!(containers(o, "/spec/template/spec", "name")),
);

/// `-o wide`: the images of the pod template at `spec.template`.
pub const IMAGES: Column = plain(
    "Images",
    "Images referenced by each container in the template.",
    1,
    |o, _| json!(containers(o, "/spec/template/spec", "image")),
);

/// `-o wide`: `spec.selector`.
pub const SELECTOR: Column = plain(
    "Selector",
    "Label selector for pods; the pods it selects are the ones this controller manages.",
    1,
    |o, _| json!(or_none(selector_string(o.pointer("/spec/selector")))),
);

/// `spec.template.spec` from `/spec/template/spec`.
fn field_name(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(selects(&json!({"matchLabels": {"app": "web"}}), &labels));
        assert!(!selects(&json!({"matchLabels": {"app": "db"}}), &labels));
        let expr = |op: &str, values: &[&str]| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
        assert!(selects(&expr("In", &["front", "back"]), &labels));
        assert!(!selects(&expr("NotIn", &["front"]), &labels));
        assert!(selects(&expr("Exists", &[]), &labels));
        assert!(!selects(&expr("DoesNotExist", &[]), &labels));
        assert!(!selects(&expr("Sideways", &[]), &labels));
        assert_eq!(
            selector_string(Some(
                &json!({"matchLabels": {"tier": "front", "app": "web"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["b", "a"]},
                                     {"key": "old", "operator": "DoesNotExist"}]})
            )),
            "app=web,env in (a,b),!old,tier=front"
        );
        let mut causes = Vec::new();
        validate_selector(
            &json!({"matchExpressions": [{"key": "a", "operator": "In"},
                {"key": "b", "operator": "Exists", "values": ["x"]},
                {"key": "c", "operator": "Near", "values": ["x"]}]}),
            "spec.selector",
            &mut causes,
        );
        assert_eq!(causes.len(), 3, "{causes:?}");
        assert!(
            causes[0].starts_with("spec.selector.matchExpressions[0].values: Required value"),
            "{causes:?}"
        );
    }

    #[test]
    fn a_controller_needs_a_selector_that_selects_its_template() {
        let template = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
        let mut causes = Vec::new();
        validate_controller(
            &json!({"spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}}),
            "deployment",
            &["Always"],
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
        validate_controller(
            &json!({"spec": {"template": template}}),
            "deployment",
            &["Always"],
            &mut causes,
        );
        assert_eq!(causes, ["spec.selector: Required value"]);
        causes.clear();
        validate_controller(
            &json!({"spec": {"selector": {"matchLabels": {"app": "db"}}, "template": template}}),
            "deployment",
            &["Always"],
            &mut causes,
        );
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert!(
            causes[0].starts_with("spec.template.metadata.labels: Invalid value: ")
                && causes[0].ends_with("`selector` does not match template `labels`"),
            "{causes:?}"
        );
    }
}
