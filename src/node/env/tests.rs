use std::net::IpAddr;

use serde_json::{Value, json};

use super::*;

fn pod() -> Value {
    json!({
        "metadata": {
            "name": "web-1", "namespace": "shop", "uid": "u-1",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"note": "say \"hi\"\n"},
        },
        "spec": {
            "nodeName": "board-3", "serviceAccountName": "builder",
            "containers": [
                {"name": "main", "resources": {"limits": {"cpu": "500m", "memory": "128Mi"},
                                               "requests": {"cpu": "250m"}}},
                {"name": "side"},
            ],
        },
    })
}

fn objects() -> Prefetched {
    Prefetched::default()
        .with_config_map(json!({
            "metadata": {"name": "cfg", "namespace": "shop"},
            "data": {"MODE": "fast", "1BAD": "x", "has space": "y", "level": "3"},
        }))
        .with_secret(json!({
            "metadata": {"name": "creds", "namespace": "shop"},
            "data": {"PASSWORD": "aHVudGVyMg=="},
        }))
}

const POD_IPS: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::new(10, 42, 0, 7)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7)),
];
const HOST_IPS: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 3))];

fn resolve_env(pod: &Value, env: Value) -> Result<ResolvedEnv> {
    let ctx = PodContext {
        pod,
        pod_ips: &POD_IPS,
        host_ips: &HOST_IPS,
        allocatable: Allocatable {
            cpu_milli: 4000,
            memory: 4 << 30,
            ephemeral_storage: 32 << 30,
        },
    };
    let mut container = pod["spec"]["containers"][0].clone();
    for (k, v) in env.as_object().into_iter().flatten() {
        container[k] = v.clone();
    }
    resolve(&ctx, &container, &objects())
}

fn vars(r: &ResolvedEnv) -> Vec<(&str, &str)> {
    r.vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn expansion_follows_kubernetes_rules() {
    let known = |n: &str| match n {
        "A" => Some("1"),
        "EMPTY" => Some(""),
        _ => None,
    };
    let cases = [
        ("$(A)", "1"),
        ("x$(A)y$(A)", "x1y1"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$(EMPTY)-", "-"),
        ("$()", "$()"),
        ("$(A", "$(A"),
        ("$A", "$A"),
        ("a$", "a$"),
        ("$", "$"),
        ("$$", "$"),
        ("$é$(A)", "$é1"),
        ("(A)", "(A)"),
        ("$(A)$(A))", "11)"),
        ("", ""),
    ];
    for (input, want) in cases {
        assert_eq!(expand(input, known), want, "input {input:?}");
    }
}

#[test]
fn env_values_see_only_earlier_definitions() {
    let r = resolve_env(
        &pod(),
        json!({"env": [
            {"name": "LATER_REF", "value": "$(B)"},
            {"name": "B", "value": "b"},
            {"name": "C", "value": "$(B)-$(MODE)"},
            {"name": "B", "value": "b2"},
        ], "envFrom": [{"configMapRef": {"name": "cfg"}}]}),
    )
    .unwrap();
    let v = vars(&r);
    assert!(v.contains(&("LATER_REF", "$(B)")), "{v:?}");
    assert!(v.contains(&("C", "b-fast")), "{v:?}");
    // Redefinition replaces in place: one B, with the last value.
    assert_eq!(v.iter().filter(|(k, _)| *k == "B").count(), 1);
    assert!(v.contains(&("B", "b2")));
}

#[test]
fn env_from_prefixes_and_skips_invalid_names_with_a_warning() {
    let r = resolve_env(
        &pod(),
        json!({"envFrom": [
            {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
            {"secretRef": {"name": "creds"}},
            {"configMapRef": {"name": "cfg"}},
            {"configMapRef": {"name": "gone", "optional": true}},
        ]}),
    )
    .unwrap();
    let v = vars(&r);
    assert!(v.contains(&("CFG_MODE", "fast")));
    assert!(
        v.contains(&("CFG_1BAD", "x")),
        "a prefix can make a key valid"
    );
    assert!(v.contains(&("PASSWORD", "hunter2")));
    assert!(v.contains(&("level", "3")));
    assert!(!v.iter().any(|(k, _)| *k == "1BAD" || k.contains(' ')));
    assert_eq!(
        r.warnings,
        vec![
            "Keys [CFG_has space] from the EnvFrom configMap shop/cfg were skipped since they \
             are considered invalid environment variable names."
                .to_string(),
            "Keys [1BAD, has space] from the EnvFrom configMap shop/cfg were skipped since they \
             are considered invalid environment variable names."
                .to_string(),
        ]
    );
}

#[test]
fn missing_objects_and_keys_fail_like_kubelet_unless_optional() {
    let err = |env: Value| resolve_env(&pod(), env).unwrap_err().to_string();
    assert_eq!(
        err(json!({"envFrom": [{"configMapRef": {"name": "x"}}]})),
        "configmap \"x\" not found"
    );
    assert_eq!(
        err(json!({"envFrom": [{"secretRef": {"name": "x"}}]})),
        "secret \"x\" not found"
    );
    assert_eq!(
        err(json!({"env": [{"name": "A", "valueFrom":
            {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]})),
        "couldn't find key k in ConfigMap shop/cfg"
    );
    assert_eq!(
        err(json!({"env": [{"name": "A", "valueFrom":
            {"secretKeyRef": {"name": "creds", "key": "k"}}}]})),
        "couldn't find key k in Secret shop/creds"
    );
    assert_eq!(
        err(json!({"env": [{"name": "A", "valueFrom":
            {"configMapKeyRef": {"name": "nope", "key": "k"}}}]})),
        "configmap \"nope\" not found"
    );
    assert_eq!(
        err(
            json!({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]})
        ),
        "unsupported fieldPath: spec.bogus"
    );
    assert_eq!(
        err(json!({"env": [{"name": "A", "valueFrom":
            {"resourceFieldRef": {"resource": "limits.gpu"}}}]})),
        "unsupported container resource : limits.gpu"
    );
    let ok = resolve_env(
        &pod(),
        json!({"env": [
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": true}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
            {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
        ]}),
    )
    .unwrap();
    assert_eq!(vars(&ok), vec![("C", "fast")]);
}

#[test]
fn field_refs_give_pod_facts() {
    let field = |path: &str| json!({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let cases = [
        ("metadata.name", "web-1"),
        ("metadata.namespace", "shop"),
        ("metadata.uid", "u-1"),
        ("metadata.labels['app']", "web"),
        ("metadata.labels['missing']", ""),
        ("metadata.annotations['note']", "say \"hi\"\n"),
        ("spec.nodeName", "board-3"),
        ("spec.serviceAccountName", "builder"),
        ("status.podIP", "10.42.0.7"),
        ("status.podIPs", "10.42.0.7,fd00::7"),
        ("status.hostIP", "192.168.1.3"),
    ];
    for (path, want) in cases {
        let r = resolve_env(&pod(), json!({"env": [field(path)]})).unwrap();
        assert_eq!(vars(&r), vec![("X", want)], "{path}");
    }
    // Whole maps are for volumes only, formatted like kubelet's FormatMap.
    assert!(resolve_env(&pod(), json!({"env": [field("metadata.labels")]})).is_err());
    let ctx = PodContext {
        pod: &pod(),
        pod_ips: &[],
        host_ips: &[],
        allocatable: Allocatable::default(),
    };
    assert_eq!(
        field_value(&ctx, "metadata.labels").unwrap(),
        "app=\"web\"\ntier=\"front\""
    );
    assert_eq!(
        field_value(&ctx, "metadata.annotations").unwrap(),
        "note=\"say \\\"hi\\\"\\n\""
    );
}

#[test]
fn resource_refs_divide_and_round_up() {
    let res = |resource: &str, divisor: Option<&str>, container: Option<&str>| {
        let mut r = json!({"resource": resource});
        if let Some(d) = divisor {
            r["divisor"] = json!(d);
        }
        if let Some(c) = container {
            r["containerName"] = json!(c);
        }
        let env = json!({"env": [{"name": "X", "valueFrom": {"resourceFieldRef": r}}]});
        resolve_env(&pod(), env).map(|r| r.vars[0].1.clone())
    };
    assert_eq!(
        res("limits.cpu", None, None).unwrap(),
        "1",
        "500m rounds up to 1 core"
    );
    assert_eq!(res("limits.cpu", Some("1m"), None).unwrap(), "500");
    assert_eq!(res("requests.cpu", Some("100m"), None).unwrap(), "3");
    assert_eq!(res("limits.memory", None, None).unwrap(), "134217728");
    assert_eq!(res("limits.memory", Some("1Mi"), None).unwrap(), "128");
    assert_eq!(res("limits.memory", Some("1M"), None).unwrap(), "135");
    assert_eq!(
        res("requests.memory", None, None).unwrap(),
        "134217728",
        "request defaults to limit"
    );
    // Unset limits are node allocatable.
    assert_eq!(res("limits.cpu", Some("1m"), Some("side")).unwrap(), "4000");
    assert_eq!(
        res("limits.memory", Some("1Gi"), Some("side")).unwrap(),
        "4"
    );
    assert_eq!(res("requests.cpu", None, Some("side")).unwrap(), "0");
    assert_eq!(
        res("limits.cpu", None, Some("ghost")).unwrap_err(),
        EnvError::NoSuchContainer("ghost".into())
    );
    assert!(matches!(
        res("limits.cpu", Some("lots"), None),
        Err(EnvError::Quantity { .. })
    ));
}

#[test]
fn command_and_args_expand_with_the_final_environment() {
    let container = json!({
        "command": ["/bin/$(TOOL)", "$$(TOOL)"],
        "args": ["--level=$(LEVEL)", "$(NOPE)"],
    });
    let env = [
        ("TOOL".to_string(), "sh".to_string()),
        ("LEVEL".to_string(), "3".to_string()),
    ];
    let (command, args) = expand_command(&container, &env);
    assert_eq!(command, ["/bin/sh", "$(TOOL)"]);
    assert_eq!(args, ["--level=3", "$(NOPE)"]);
}

#[test]
fn env_var_names_follow_kubernetes() {
    for ok in ["A", "a_b", "_x", "x.y", "-d", "A1"] {
        assert!(is_env_var_name(ok), "{ok}");
    }
    for bad in ["", "1A", "a b", "a=b", "é"] {
        assert!(!is_env_var_name(bad), "{bad}");
    }
}

#[test]
fn references_name_every_object_a_pod_needs() {
    let pod = json!({"spec": {
        "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-secret"}}]}],
        "containers": [{"name": "c",
            "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}},
                    {"name": "C", "value": "plain"}],
            "envFrom": [{"configMapRef": {"name": "cm-from"}}]}],
        "volumes": [
            {"name": "v1", "configMap": {"name": "cm-vol"}},
            {"name": "v2", "secret": {"secretName": "s-vol"}},
            {"name": "v3", "projected": {"sources": [{"configMap": {"name": "cm-proj"}},
                                                     {"secret": {"name": "s-proj"}}]}},
            {"name": "v4", "emptyDir": {}},
        ],
        "imagePullSecrets": [{"name": "registry"}],
    }});
    let r = references(&pod);
    let names = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&r.config_maps),
        ["cm-env", "cm-from", "cm-proj", "cm-vol"]
    );
    assert_eq!(
        names(&r.secrets),
        ["init-secret", "s-env", "s-proj", "s-vol"]
    );
}

#[test]
fn containers_learn_the_kubernetes_service_and_their_namespace_services_like_kubelet_gives() {
    let svc = |ns: &str, name: &str, ip: &str, ports: &[(&str, &'static str, u16)]| ServiceLink {
        namespace: ns.into(),
        name: name.into(),
        ip: ip.parse().unwrap(),
        ports: ports
            .iter()
            .map(|(n, p, port)| (n.to_string(), *p, *port))
            .collect(),
    };
    let services = vec![
        svc(
            "default",
            "kubernetes",
            "10.43.0.1",
            &[("https", "tcp", 443)],
        ),
        svc(
            "shop",
            "web-front",
            "10.43.0.7",
            &[("http", "tcp", 80), ("dns", "udp", 53)],
        ),
        svc("other", "web", "10.43.0.9", &[("", "tcp", 80)]),
    ];
    let pod = json!({"metadata": {"namespace": "shop", "name": "p"}, "spec": {}});
    let vars = service_vars(&pod, &services);
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
    assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
    assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
    assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.43.0.1:443"));
    assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.43.0.1"));
    assert_eq!(get("WEB_FRONT_SERVICE_HOST"), Some("10.43.0.7"));
    assert_eq!(get("WEB_FRONT_PORT_53_UDP"), Some("udp://10.43.0.7:53"));
    assert_eq!(get("WEB_FRONT_SERVICE_PORT_DNS"), Some("53"));
    assert_eq!(
        get("WEB_SERVICE_HOST"),
        None,
        "another namespace's Services give none"
    );

    // enableServiceLinks: false keeps only the kubernetes Service.
    let quiet = json!({"metadata": {"namespace": "shop"}, "spec": {"enableServiceLinks": false}});
    let vars = service_vars(&quiet, &services);
    assert!(
        vars.iter().all(|(n, _)| n.starts_with("KUBERNETES_")),
        "{vars:?}"
    );
    assert!(!vars.is_empty());

    // The container's own env overrides them and may refer to them.
    let pod = json!({"metadata": {"namespace": "shop", "name": "p"}, "spec": {}});
    let ctx = PodContext {
        pod: &pod,
        pod_ips: &[],
        host_ips: &[],
        allocatable: Allocatable::default(),
    };
    let container = json!({"env": [
        {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}
    ]});
    let r = resolve_with(&ctx, &container, &objects(), service_vars(&pod, &services)).unwrap();
    let get = |k: &str| r.vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("API").as_deref(), Some("https://10.43.0.1:443"));
    assert_eq!(get("KUBERNETES_SERVICE_PORT").as_deref(), Some("6443"));
}
