//! core/v1 Endpoints: stored and listed, with the addresses column.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, Strategy, plain};

pub struct EndpointsKind;

impl Strategy for EndpointsKind {
    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 3] = [
    NAME,
    plain(
        "Endpoints",
        "Endpoints is the list of endpoints in this subset.",
        0,
        |e, _| json!(addresses(e)),
    ),
    AGE,
];

/// `10.42.0.5:80,10.42.1.7:80`, or `<none>`; at most three, then `+ N more...` as kubectl.
fn addresses(e: &Value) -> String {
    let mut all = Vec::new();
    for subset in e
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_i64())
            .collect();
        for a in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = a["ip"].as_str().unwrap_or_default();
            if ports.is_empty() {
                all.push(ip.to_owned());
            }
            for p in &ports {
                all.push(format!("{ip}:{p}"));
            }
        }
    }
    match all.len() {
        0 => "<none>".into(),
        n if n <= 3 => all.join(","),
        n => format!("{} + {} more...", all[..3].join(","), n - 3),
    }
}
