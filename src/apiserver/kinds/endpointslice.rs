//! discovery.k8s.io/v1 EndpointSlice: stored and validated (address type required and fixed,
//! each endpoint with addresses); filled by `controllers::endpoints` for Services with a selector.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, Strategy, plain, text};

pub struct EndpointSlices;

impl Strategy for EndpointSlices {
    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let kind = text(obj, "/addressType");
        if !matches!(kind.as_str(), "IPv4" | "IPv6" | "FQDN") {
            causes.push(format!(
                "addressType: Unsupported value: {kind:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""
            ));
        }
        for (i, e) in obj
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if e.get("addresses")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                causes.push(format!("endpoints[{i}].addresses: Required value"));
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        if old.get("addressType") != new.get("addressType") {
            causes.push("addressType: Invalid value: field is immutable".into());
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 5] = [
    NAME,
    plain(
        "AddressType",
        "The IP protocol family of the addresses.",
        0,
        |s, _| json!(text(s, "/addressType")),
    ),
    plain("Ports", "The ports of the endpoints.", 0, |s, _| {
        let ports: Vec<String> = s
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_i64().map(|n| n.to_string()))
            .collect();
        json!(if ports.is_empty() {
            "<unset>".into()
        } else {
            ports.join(",")
        })
    }),
    plain("Endpoints", "The addresses of the endpoints.", 0, |s, _| {
        let addrs: Vec<&str> = s
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/addresses/0").and_then(Value::as_str))
            .collect();
        json!(match addrs.len() {
            0 => "<unset>".to_owned(),
            n if n <= 3 => addrs.join(","),
            n => format!("{} + {} more...", addrs[..3].join(","), n - 3),
        })
    }),
    AGE,
];
