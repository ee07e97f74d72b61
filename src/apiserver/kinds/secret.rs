//! core/v1 Secret: `stringData` folded into base64 `data` on write (as the Kubernetes API
//! server does), values that are base64, type `Opaque` by default, data fixed once
//! `immutable: true`.

use base64::Engine;
use serde_json::{Value, json};

use super::{
    AGE, Column, NAME, Strategy, entries, immutable_data, plain, text, validate_data_keys,
};

pub struct Secrets;

impl Strategy for Secrets {
    fn default(&self, _name: &str, obj: &mut Value) {
        if obj
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            obj["type"] = json!("Opaque");
        }
        // `stringData` is write-only: merged into `data`, then dropped. One with a value that
        // is not a string stays, for `validate` to refuse.
        let all_strings = obj
            .get("stringData")
            .and_then(Value::as_object)
            .is_some_and(|m| m.values().all(Value::is_string));
        if !all_strings {
            return;
        }
        if let Some(Value::Object(plain)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            if !obj["data"].is_object() {
                obj["data"] = json!({});
            }
            for (k, v) in plain {
                let text = v.as_str().unwrap_or_default(); // all strings, checked above
                obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        if let Some(plain) = obj.get("stringData").filter(|v| !v.is_null()) {
            causes.push(format!(
                "stringData: Invalid value: {plain}: must be a map of strings"
            ));
        }
        validate_data_keys(obj, "data", causes);
        if let Some(data) = obj.get("data").and_then(Value::as_object) {
            for (k, v) in data {
                let ok = v
                    .as_str()
                    .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                if !ok {
                    causes.push(format!(
                        "data[{k:?}]: Invalid value: must be base64-encoded"
                    ));
                }
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        immutable_data(old, new, &["/data"], causes);
        if old.get("type") != new.get("type") {
            causes.push("type: Invalid value: field is immutable".into());
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 4] = [
    NAME,
    plain("Type", "The type of the secret", 0, |s, _| {
        json!(text(s, "/type"))
    }),
    plain("Data", "The number of entries in Data", 0, |s, _| {
        json!(entries(s, &["/data"]))
    }),
    AGE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_becomes_base64_data() {
        let mut s = json!({"stringData": {"password": "hunter2"}, "data": {"user": "YWRtaW4="}});
        Secrets.default("x", &mut s);
        assert_eq!(s["data"]["password"], "aHVudGVyMg==");
        assert_eq!(s["data"]["user"], "YWRtaW4=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
        let mut causes = Vec::new();
        Secrets.validate(&json!({"data": {"k": "not base64!"}}), &mut causes);
        assert_eq!(causes.len(), 1, "{causes:?}");
        let mut odd = json!({"stringData": {"port": 5432}});
        Secrets.default("x", &mut odd);
        causes.clear();
        Secrets.validate(&odd, &mut causes);
        assert_eq!(
            causes.len(),
            1,
            "a number in stringData is refused: {causes:?}"
        );
    }
}
