use serde_json::{Value, json};

use super::*;
use crate::apiserver::openapi;
use crate::apiserver::resources::{APPS_V1, CORE_V1};

fn deployment(replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "web", "image": image,
                    "ports": [{"containerPort": 80}],
                }]},
            },
        },
    })
}

fn applier<'a>(manager: &'a str, force: bool) -> Applier<'a> {
    Applier {
        manager,
        api_version: "apps/v1",
        force,
        now: "2026-12-06T20:00:00Z",
    }
}

fn with_apps<T>(f: impl FnOnce(&Types<'_>, Ty<'_>) -> T) -> T {
    let schemas = openapi::schemas(&APPS_V1).expect("embedded apps/v1 schemas");
    let types = Types::new(Some(&schemas));
    let root = types.root("io.k8s.api.apps.v1.Deployment");
    f(&types, root)
}

fn fields_of(obj: &Value, manager: &str) -> Vec<String> {
    let entries = entries(obj).expect("managedFields decode");
    let e = entries
        .iter()
        .find(|e| e.manager == manager)
        .unwrap_or_else(|| panic!("no entry for {manager}: {entries:?}"));
    e.fields.iter().map(|p| display(p)).collect()
}

#[test]
fn a_first_apply_owns_what_it_set_keyed_as_kube_keys_lists() {
    with_apps(|types, root| {
        let out = apply(
            types,
            root,
            None,
            &deployment(2, "nginx:1"),
            &applier("a", false),
        )
        .expect("apply");
        let fields = fields_of(&out, "a");
        for want in [
            ".metadata.labels.app",
            ".spec.replicas",
            // LabelSelector is atomic: owned whole.
            ".spec.selector",
            ".spec.template.spec.containers[name=\"web\"]",
            ".spec.template.spec.containers[name=\"web\"].image",
            // Ports are keyed by port and protocol, protocol defaulting to TCP.
            ".spec.template.spec.containers[name=\"web\"].ports[containerPort=80,protocol=\"TCP\"]",
        ] {
            assert!(
                fields.iter().any(|f| f == want),
                "{want} missing in {fields:#?}"
            );
        }
        assert!(!fields.iter().any(|f| f.starts_with(".metadata.name")));
        let mf = &out["metadata"]["managedFields"][0];
        assert_eq!(mf["operation"], "Apply");
        assert_eq!(mf["fieldsType"], "FieldsV1");
        let item = &mf["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        assert_eq!(item["."], json!({}), "{item}");
        assert_eq!(item["f:image"], json!({}));
    })
}

#[test]
fn fields_v1_round_trips() {
    with_apps(|types, root| {
        let set = field_set(types, root, &deployment(1, "x")).expect("set");
        let trie = encode_trie(&set);
        let mut back = FieldSet::new();
        decode_trie(&trie, &mut Vec::new(), &mut back).expect("decode");
        assert_eq!(set, back);
    })
}

#[test]
fn another_managers_field_conflicts_unless_forced_and_then_changes_hands() {
    with_apps(|types, root| {
        let live = apply(
            types,
            root,
            None,
            &deployment(2, "nginx:1"),
            &applier("a", false),
        )
        .expect("apply a");
        // The same values: shared, no conflict.
        let shared = apply(
            types,
            root,
            Some(&live),
            &deployment(2, "nginx:1"),
            &applier("b", false),
        )
        .expect("same values do not conflict");
        assert!(fields_of(&shared, "a").contains(&".spec.replicas".to_owned()));
        assert!(fields_of(&shared, "b").contains(&".spec.replicas".to_owned()));

        let err = apply(
            types,
            root,
            Some(&live),
            &deployment(5, "nginx:1"),
            &applier("b", false),
        )
        .expect_err("a owns replicas");
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"a\" using apps/v1: .spec.replicas"
        );
        let forced = apply(
            types,
            root,
            Some(&live),
            &deployment(5, "nginx:2"),
            &applier("b", true),
        )
        .expect("forced");
        assert_eq!(forced["spec"]["replicas"], 5);
        assert_eq!(
            forced["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        let a = fields_of(&forced, "a");
        assert!(!a.contains(&".spec.replicas".to_owned()), "{a:?}");
        assert!(fields_of(&forced, "b").contains(&".spec.replicas".to_owned()));
    })
}

#[test]
fn a_field_dropped_from_the_config_goes_unless_someone_else_owns_it() {
    with_apps(|types, root| {
        let mut first = deployment(1, "x");
        first["metadata"]["labels"]["tier"] = json!("front");
        first["metadata"]["labels"]["team"] = json!("web");
        let live = apply(types, root, None, &first, &applier("a", false)).expect("a");
        // b shares `team`.
        let b_cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"team": "web"}}});
        let live = apply(types, root, Some(&live), &b_cfg, &applier("b", false)).expect("b");
        let out = apply(
            types,
            root,
            Some(&live),
            &deployment(1, "x"),
            &applier("a", false),
        )
        .expect("a again");
        let labels = &out["metadata"]["labels"];
        assert_eq!(labels.get("tier"), None, "a alone owned tier: {labels}");
        assert_eq!(labels["team"], "web", "b still owns team");
        assert_eq!(labels["app"], "web");
    })
}

#[test]
fn a_container_dropped_from_the_config_goes() {
    with_apps(|types, root| {
        let mut two = deployment(1, "x");
        two["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .expect("list")
            .push(json!({"name": "side", "image": "busybox"}));
        let live = apply(types, root, None, &two, &applier("a", false)).expect("a");
        let out = apply(
            types,
            root,
            Some(&live),
            &deployment(1, "x"),
            &applier("a", false),
        )
        .expect("again");
        let names: Vec<&Value> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| &c["name"])
            .collect();
        assert_eq!(names, [&json!("web")]);
    })
}

#[test]
fn an_update_takes_the_fields_it_changes_and_then_an_apply_conflicts_with_it() {
    with_apps(|types, root| {
        let live = apply(types, root, None, &deployment(2, "x"), &applier("a", false)).expect("a");
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(7);
        track_update(types, root, &live, &mut scaled, "kubectl", "apps/v1", "now").expect("track");
        assert!(!fields_of(&scaled, "a").contains(&".spec.replicas".to_owned()));
        let entries = entries(&scaled).expect("entries");
        let k = entries
            .iter()
            .find(|e| e.manager == "kubectl")
            .expect("kubectl entry");
        assert_eq!(k.operation, "Update");
        let err = apply(
            types,
            root,
            Some(&scaled),
            &deployment(3, "x"),
            &applier("a", false),
        )
        .expect_err("conflict with the updater");
        assert!(
            err.to_string().contains("conflict with \"kubectl\""),
            "{err}"
        );
    })
}

#[test]
fn an_object_never_applied_is_not_tracked() {
    with_apps(|types, root| {
        let old = deployment(1, "x");
        let mut new = deployment(2, "x");
        track_update(types, root, &old, &mut new, "kubectl", "apps/v1", "now").expect("track");
        assert_eq!(new["metadata"].get("managedFields"), None);
    })
}

#[test]
fn duplicate_keys_and_missing_keys_are_refused() {
    with_apps(|types, root| {
        let mut d = deployment(1, "x");
        d["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .expect("list")
            .push(json!({"name": "web", "image": "y"}));
        let err = apply(types, root, None, &d, &applier("a", false)).expect_err("dup");
        assert!(
            err.to_string()
                .contains("duplicate entries for key {\"name\":\"web\"}"),
            "{err}"
        );
        let mut d = deployment(1, "x");
        d["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .expect("obj")
            .remove("name");
        let err = apply(types, root, None, &d, &applier("a", false)).expect_err("missing");
        assert!(
            err.to_string().contains("lacks its key field \"name\""),
            "{err}"
        );
    })
}

#[test]
fn service_ports_are_keyed_by_port_and_protocol() {
    let schemas = openapi::schemas(&CORE_V1).expect("core/v1 schemas");
    let types = Types::new(Some(&schemas));
    let root = types.root("io.k8s.api.core.v1.Service");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}});
    let set = field_set(&types, root, &svc).expect("two ports, one per protocol");
    let shown: Vec<String> = set.iter().map(|p| display(p)).collect();
    assert!(
        shown.contains(&".spec.ports[port=53,protocol=\"UDP\"]".to_owned()),
        "{shown:?}"
    );
    assert!(
        shown.contains(&".spec.ports[port=53,protocol=\"TCP\"]".to_owned()),
        "{shown:?}"
    );
}

#[test]
fn unreadable_managed_fields_are_reset_not_fatal() {
    with_apps(|types, root| {
        let mut live = deployment(2, "x");
        live["metadata"]["managedFields"] =
            json!([{"manager": "m", "operation": "Apply", "fieldsV1": "not a trie"}]);
        let out = apply(
            types,
            root,
            Some(&live),
            &deployment(3, "x"),
            &applier("a", false),
        )
        .expect("applies over garbage");
        assert_eq!(out["spec"]["replicas"], 3);
        assert!(fields_of(&out, "a").contains(&".spec.replicas".to_owned()));
        let mut new = live.clone();
        new["spec"]["replicas"] = json!(4);
        track_update(types, root, &live, &mut new, "k", "apps/v1", "now").expect("update");
        assert_eq!(new["metadata"].get("managedFields"), None, "{new}");
    })
}

#[test]
fn default_manager_is_the_user_agents_product() {
    assert_eq!(
        default_manager(Some("kubectl/v1.32.4 (linux/amd64) kubernetes/abc")),
        "kubectl"
    );
    assert_eq!(default_manager(None), "unknown");
}
