//! coordination.k8s.io/v1 Lease: Kubernetes' checks on a `LeaseSpec`; the holder column.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, Strategy, plain, text};

pub struct Leases;

impl Strategy for Leases {
    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let field = |f: &str| obj.pointer(&format!("/spec/{f}")).filter(|v| !v.is_null());
        if let Some(v) = field("holderIdentity")
            && !v.is_string()
        {
            causes.push(format!(
                "spec.holderIdentity: Invalid value: {v}: must be a string"
            ));
        }
        for (f, min) in [("leaseDurationSeconds", 1), ("leaseTransitions", 0)] {
            if let Some(v) = field(f)
                && !v
                    .as_i64()
                    .is_some_and(|n| (min..=i64::from(i32::MAX)).contains(&n))
            {
                causes.push(format!(
                    "spec.{f}: Invalid value: {v}: must be an integer of at least {min}"
                ));
            }
        }
        for f in ["acquireTime", "renewTime"] {
            if let Some(v) = field(f)
                && !v.as_str().is_some_and(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .is_ok()
                })
            {
                causes.push(format!(
                    "spec.{f}: Invalid value: {v}: must be an RFC 3339 time"
                ));
            }
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

// An unheld lease shows an empty holder, as the Kubernetes API server prints it.
static COLUMNS: [Column; 3] = [
    NAME,
    plain(
        "Holder",
        "holderIdentity contains the identity of the holder of a current lease.",
        0,
        |l, _| json!(text(l, "/spec/holderIdentity")),
    ),
    AGE,
];
