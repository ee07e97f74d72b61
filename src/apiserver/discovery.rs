//! Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`.
//!
//! Plain (unaggregated) forms only; kubectl asks for aggregated discovery first and falls back
//! to these when the answer is `application/json`.

use serde_json::{Value, json};

use super::resources::CORE_V1;

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": crate::KUBE_MINOR,
        "gitVersion": crate::KUBE_VERSION,
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", crate::agent::sysinfo::ARCH),
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

pub fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
}

pub fn core_v1() -> Value {
    let mut resources = Vec::new();
    for r in CORE_V1 {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "shortNames": r.short_names,
        }));
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources})
}
