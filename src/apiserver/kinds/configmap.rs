//! core/v1 ConfigMap: valid keys, string values, and data fixed once `immutable: true`.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, Strategy, entries, immutable_data, plain, validate_data_keys};

pub struct ConfigMaps;

impl Strategy for ConfigMaps {
    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        validate_data_keys(obj, "data", causes);
        validate_data_keys(obj, "binaryData", causes);
        if let Some(data) = obj.get("data").and_then(Value::as_object) {
            for (k, v) in data {
                if !v.is_string() {
                    causes.push(format!("data[{k:?}]: Invalid value: must be a string"));
                }
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        immutable_data(old, new, &["/data", "/binaryData"], causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 3] = [
    NAME,
    plain(
        "Data",
        "Data contains the configuration data.",
        0,
        |c, _| json!(entries(c, &["/data", "/binaryData"])),
    ),
    AGE,
];
