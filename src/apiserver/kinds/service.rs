//! core/v1 Service: RFC 1035 names, Kubernetes' defaults for type, ports and affinity, valid
//! ports, and the `kubectl get svc` columns. Cluster IPs and node ports are allocated by the
//! registry (see [`crate::apiserver::allocator`]), which needs the datastore.

use serde_json::{Value, json};

use super::{AGE, Column, NAME, NameRule, Strategy, plain, text};

pub struct Services;

const TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

impl Strategy for Services {
    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035
    }

    fn default(&self, _name: &str, obj: &mut Value) {
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let spec = &mut obj["spec"];
        if spec
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            spec["type"] = json!("ClusterIP");
        }
        if spec.get("sessionAffinity").is_none() {
            spec["sessionAffinity"] = json!("None");
        }
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert(json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    p.entry("targetPort").or_insert(port);
                }
            }
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<String>) {
        let spec = &obj["spec"];
        let kind = text(obj, "/spec/type");
        if !TYPES.contains(&kind.as_str()) {
            causes.push(format!(
                "spec.type: Unsupported value: {kind:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
            ));
        }
        let ports = spec.get("ports").and_then(Value::as_array);
        let headless = spec["clusterIP"] == "None";
        if kind != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
            causes.push("spec.ports: Required value".into());
        }
        for (i, p) in ports.into_iter().flatten().enumerate() {
            if !p["port"].as_i64().is_some_and(|n| (1..=65535).contains(&n)) {
                causes.push(format!(
                    "spec.ports[{i}].port: Invalid value: {}: must be between 1 and 65535, inclusive",
                    p["port"]
                ));
            }
            if ports.is_some_and(|all| all.len() > 1) && text(p, "/name").is_empty() {
                causes.push(format!("spec.ports[{i}].name: Required value"));
            }
            let protocol = text(p, "/protocol");
            if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
                causes.push(format!(
                    "spec.ports[{i}].protocol: Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ));
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<String>) {
        let ip = |v: &Value| text(v, "/spec/clusterIP");
        if !ip(old).is_empty() && ip(old) != ip(new) {
            causes.push("spec.clusterIP: Invalid value: field is immutable".into());
        }
        // The reservations a deleted Service gives back are read from `clusterIPs`, so it may
        // not change; moving a Service between single- and dual-stack is not done yet.
        for field in ["clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            let was = &old["spec"][field];
            if !was.is_null() && *was != new["spec"][field] {
                causes.push(format!(
                    "spec.{field}: Invalid value: {}: field is immutable (delete and re-create the Service to change it)",
                    new["spec"][field]
                ));
            }
        }
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 7] = [
    NAME,
    plain("Type", "The type of the service.", 0, |s, _| {
        json!(text(s, "/spec/type"))
    }),
    plain("Cluster-IP", "The cluster IP of the service.", 0, |s, _| {
        let ip = text(s, "/spec/clusterIP");
        json!(if ip.is_empty() { "<none>".into() } else { ip })
    }),
    plain(
        "External-IP",
        "The external IP of the service.",
        0,
        |s, _| json!(external_ips(s)),
    ),
    plain("Port(s)", "The ports of the service.", 0, |s, _| {
        json!(ports(s))
    }),
    AGE,
    plain("Selector", "The selector of the service.", 1, |s, _| {
        let selector: Vec<String> = s
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        json!(if selector.is_empty() {
            "<none>".into()
        } else {
            selector.join(",")
        })
    }),
];

fn external_ips(s: &Value) -> String {
    let mut ips: Vec<String> = s
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i["ip"]
                .as_str()
                .or(i["hostname"].as_str())
                .map(str::to_owned)
        })
        .collect();
    ips.extend(
        s.pointer("/spec/externalIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_str().map(str::to_owned)),
    );
    match (text(s, "/spec/type").as_str(), ips.is_empty()) {
        ("ExternalName", _) => text(s, "/spec/externalName"),
        ("LoadBalancer", true) => "<pending>".into(),
        (_, true) => "<none>".into(),
        _ => ips.join(","),
    }
}

/// `80/TCP,443:30443/TCP`, as kubectl prints them.
fn ports(s: &Value) -> String {
    let list: Vec<String> = s
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p["port"].as_i64().unwrap_or_default();
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(n) => format!("{port}:{n}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_gets_defaults_and_its_ports_are_checked() {
        let mut svc = json!({"spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
        Services.default("web", &mut svc);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
        let mut causes = Vec::new();
        Services.validate(&svc, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        Services.validate(
            &json!({"spec": {"type": "Weird", "ports": [{"port": 0, "protocol": "TCP"}]}}),
            &mut causes,
        );
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert_eq!(ports(&svc), "80/TCP");
    }
}
