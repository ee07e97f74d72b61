//! policy/v1 PodDisruptionBudget: stored and validated; honoured once eviction exists.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, Strategy, plain};

pub struct PodDisruptionBudgets;

impl Strategy for PodDisruptionBudgets {
    fn has_generation(&self) -> bool {
        true
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let spec = &obj["spec"];
        let (min, max) = (spec.get("minAvailable"), spec.get("maxUnavailable"));
        if min.is_some() && max.is_some() {
            causes.push(
                "spec: Invalid value: minAvailable and maxUnavailable cannot be both set".into(),
            );
        }
        for (field, v) in [("minAvailable", min), ("maxUnavailable", max)] {
            if let Some(v) = v
                && !int_or_percent(v)
            {
                causes.push(format!(
                    "spec.{field}: Invalid value: {v}: must be a non-negative integer or a percentage"
                ));
            }
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

fn int_or_percent(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_i64().is_some_and(|n| n >= 0),
        Value::String(s) => s
            .strip_suffix('%')
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n <= 100),
        _ => false,
    }
}

static COLUMNS: [Column; 5] = [
    NAME,
    plain(
        "Min Available",
        "The minimum number of pods that must be available",
        0,
        |p, _| json!(shown(p.pointer("/spec/minAvailable"))),
    ),
    plain(
        "Max Unavailable",
        "The maximum number of pods that may be unavailable",
        0,
        |p, _| json!(shown(p.pointer("/spec/maxUnavailable"))),
    ),
    plain(
        "Allowed Disruptions",
        "Calculated number of pods that may be disrupted at this time",
        0,
        |p, _| {
            json!(
                p.pointer("/status/disruptionsAllowed")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            )
        },
    ),
    AGE,
];

fn shown(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "N/A".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_of_min_or_max_as_an_integer_or_a_percentage() {
        let check = |spec: Value| {
            let mut causes = Vec::new();
            PodDisruptionBudgets.validate(&json!({"spec": spec}), &mut causes);
            causes.len()
        };
        assert_eq!(check(json!({"minAvailable": 2})), 0);
        assert_eq!(check(json!({"maxUnavailable": "25%"})), 0);
        assert_eq!(check(json!({"minAvailable": 1, "maxUnavailable": 1})), 1);
        assert_eq!(check(json!({"minAvailable": "150%"})), 1);
        assert_eq!(check(json!({"minAvailable": -1})), 1);
    }
}
