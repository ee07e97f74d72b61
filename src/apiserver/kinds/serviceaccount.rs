//! core/v1 ServiceAccount: stored and listed; every namespace gets a `default` one.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, Strategy, plain};

pub struct ServiceAccounts;

impl Strategy for ServiceAccounts {
    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 3] = [
    NAME,
    plain(
        "Secrets",
        "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
        0,
        |s, _| {
            json!(
                s.get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            )
        },
    ),
    AGE,
];
