//! Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>` and
//! `/apis/<group>/<version>`.
//!
//! Plain (unaggregated) forms only; kubectl asks for aggregated discovery first and falls back
//! to these when the answer is `application/json`. What is served comes from
//! [`super::resources`]; nothing here decides it.

use serde_json::{Value, json};

use super::resources::{CORE_V1, GROUPS, GroupVersion};

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
        "platform": format!("linux/{}", crate::api::labels::ARCH),
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": [CORE_V1.version],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`: every named group.
pub fn api_groups() -> Value {
    let groups: Vec<Value> = GROUPS.iter().map(|gv| group(gv)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: one named group.
pub fn api_group(gv: &GroupVersion) -> Value {
    let mut g = group(gv);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

/// `/api/v1` or `/apis/<group>/<version>`: the resources of one group version.
pub fn resource_list(gv: &GroupVersion) -> Value {
    let mut resources = Vec::new();
    for r in gv.resources {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.plural == "namespaces" && r.group.is_empty() {
            resources.push(json!({
                "name": "namespaces/finalize", "singularName": "", "namespaced": false,
                "kind": "Namespace", "verbs": ["update"],
            }));
        }
        if r.plural == "pods" && r.group.is_empty() {
            // kubectl drain looks for eviction here before it evicts.
            resources.push(json!({
                "name": "pods/eviction", "singularName": "", "namespaced": true,
                "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"],
            }));
            resources.push(json!({
                "name": "pods/binding", "singularName": "", "namespaced": true,
                "kind": "Binding", "verbs": ["create"],
            }));
        }
        if r.has_scale {
            resources.push(json!({
                "name": format!("{}/scale", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv.api_version(), "resources": resources})
}

/// A group entry as in `APIGroupList.groups`.
fn group(gv: &GroupVersion) -> Value {
    let version = json!({"groupVersion": gv.api_version(), "version": gv.version});
    json!({"name": gv.group, "versions": [version], "preferredVersion": version})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::{APPS_V1, COORDINATION_V1, STORAGE_V1};

    #[test]
    fn apis_lists_coordination_v1_with_leases() {
        let groups = api_groups();
        assert_eq!(groups["kind"], "APIGroupList");
        let coordination = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "coordination.k8s.io")
            .unwrap();
        assert_eq!(coordination["name"], "coordination.k8s.io");
        assert_eq!(
            coordination["preferredVersion"]["groupVersion"],
            "coordination.k8s.io/v1"
        );
        assert_eq!(api_group(&COORDINATION_V1)["kind"], "APIGroup");

        let list = resource_list(&COORDINATION_V1);
        assert_eq!(list["groupVersion"], "coordination.k8s.io/v1");
        let leases = &list["resources"][0];
        assert_eq!(leases["name"], "leases");
        assert_eq!(leases["kind"], "Lease");
        assert_eq!(leases["namespaced"], true);
        assert_eq!(list["resources"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn apps_v1_lists_scale_subresources_as_autoscaling_v1_scale() {
        let names: Vec<String> = api_groups()["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| g["name"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            names,
            [
                "apps",
                "batch",
                "coordination.k8s.io",
                "rbac.authorization.k8s.io",
                "policy",
                "discovery.k8s.io",
                "events.k8s.io",
                "storage.k8s.io"
            ]
        );
        let list = resource_list(&APPS_V1);
        assert_eq!(list["groupVersion"], "apps/v1");
        let entry = |name: &str| {
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
        };
        let scale = entry("deployments/scale").unwrap();
        assert_eq!(
            (&scale["group"], &scale["version"], &scale["kind"]),
            (&json!("autoscaling"), &json!("v1"), &json!("Scale"))
        );
        assert!(entry("statefulsets/scale").is_some());
        assert!(entry("daemonsets/scale").is_none());
        assert!(entry("daemonsets/status").is_some());
        assert!(entry("controllerrevisions/status").is_none());
        assert_eq!(
            entry("deployments").unwrap()["shortNames"],
            json!(["deploy"])
        );
        assert_eq!(entry("deployments").unwrap()["categories"], json!(["all"]));
    }

    #[test]
    fn storage_v1_serves_cluster_wide_storage_classes_without_status() {
        let list = resource_list(&STORAGE_V1);
        assert_eq!(list["groupVersion"], "storage.k8s.io/v1");
        assert_eq!(
            list["resources"],
            json!([{
                "name": "storageclasses",
                "singularName": "storageclass",
                "namespaced": false,
                "kind": "StorageClass",
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                "shortNames": ["sc"],
            }])
        );
        assert_eq!(api_group(&STORAGE_V1)["preferredVersion"]["version"], "v1");
    }

    #[test]
    fn core_v1_keeps_short_names_and_status_subresources() {
        let list = resource_list(&CORE_V1);
        assert_eq!(list["groupVersion"], "v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "configmaps",
                "endpoints",
                "events",
                "namespaces",
                "namespaces/status",
                "namespaces/finalize",
                "nodes",
                "nodes/status",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "persistentvolumes",
                "persistentvolumes/status",
                "pods",
                "pods/status",
                "pods/eviction",
                "pods/binding",
                "replicationcontrollers",
                "replicationcontrollers/status",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/status"
            ]
        );
        let entry = |name: &str| {
            list["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(entry("nodes")["shortNames"], json!(["no"]));
        assert_eq!(entry("replicationcontrollers")["shortNames"], json!(["rc"]));
        assert_eq!(
            entry("persistentvolumeclaims")["shortNames"],
            json!(["pvc"])
        );
        assert_eq!(entry("persistentvolumeclaims")["namespaced"], true);
        assert_eq!(entry("persistentvolumes")["shortNames"], json!(["pv"]));
        assert_eq!(entry("persistentvolumes")["namespaced"], false);
        // `kubectl get all` expands the `all` category.
        assert_eq!(entry("pods")["categories"], json!(["all"]));
        assert_eq!(entry("services")["categories"], json!(["all"]));
        assert!(entry("secrets").get("categories").is_none());
    }
}
