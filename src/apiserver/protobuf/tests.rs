//! Bodies encoded field by field from the schema tables (by JSON name), and real objects
//! encoded by prost's code for Kubernetes' `.proto` files (the `k8s-pb` crate the tables come
//! from), fed to [`decode`] as bytes.

use serde_json::json;

use super::json::{EXPLICIT_ZERO, Reason};
use super::schema::{self, Label, MESSAGES, Type};
use super::*;

/// A value to encode, as a Go client would set it.
enum Proto {
    String(String),
    Bytes(Vec<u8>),
    I32(i32),
    I64(i64),
    Bool(bool),
    Message(Msg),
    List(Vec<Proto>),
    Map(Vec<(String, Proto)>),
}

/// A message of the schema with the fields set, in order.
struct Msg {
    desc: &'static schema::Message,
    fields: Vec<(&'static str, Proto)>,
}

/// A message of `name` (relative to `k8s.io.`) with the given fields set.
fn msg(name: &str, fields: Vec<(&'static str, Proto)>) -> Msg {
    let desc =
        schema::message(&format!("k8s.io.{name}")).unwrap_or_else(|| panic!("no message {name}"));
    Msg { desc, fields }
}

fn m(name: &str, fields: Vec<(&'static str, Proto)>) -> Proto {
    Proto::Message(msg(name, fields))
}

fn s(v: &str) -> Proto {
    Proto::String(v.into())
}

fn map(entries: Vec<(&str, Proto)>) -> Proto {
    Proto::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

// === encoding ===

impl Msg {
    /// The message's bytes as Go's generated marshaller writes proto2: each field set, lists
    /// unpacked, map entries as messages of key (1) and value (2).
    fn encode_to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.fields {
            let field = self
                .desc
                .field_named(name)
                .unwrap_or_else(|| panic!("no field {}.{name}", self.desc.name()));
            match (field.label, value) {
                (Label::Repeated, Proto::List(items)) => {
                    for item in items {
                        put(&mut out, field.number, item);
                    }
                }
                (Label::Map, Proto::Map(entries)) => {
                    for (key, value) in entries {
                        let mut entry = Vec::new();
                        put(&mut entry, 1, &Proto::String(key.clone()));
                        put(&mut entry, 2, value);
                        put(&mut out, field.number, &Proto::Bytes(entry));
                    }
                }
                (Label::Singular | Label::Inline, value) => {
                    assert!(field.ty != Type::Bytes || matches!(value, Proto::Bytes(_)));
                    put(&mut out, field.number, value);
                }
                _ => panic!("{}.{name}: value of the wrong shape", self.desc.name()),
            }
        }
        out
    }
}

fn put(out: &mut Vec<u8>, number: u32, value: &Proto) {
    let (wire, bytes) = match value {
        Proto::I32(n) => (0, i64::from(*n) as u64),
        Proto::I64(n) => (0, *n as u64),
        Proto::Bool(b) => (0, u64::from(*b)),
        Proto::String(text) => return delimited(out, number, text.as_bytes()),
        Proto::Bytes(b) => return delimited(out, number, b),
        Proto::Message(m) => return delimited(out, number, &m.encode_to_vec()),
        Proto::List(_) | Proto::Map(_) => panic!("field {number}: a list or map in a list"),
    };
    varint(out, u64::from(number) << 3 | wire);
    varint(out, bytes);
}

fn delimited(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    varint(out, u64::from(number) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The whole body as kubectl sends it: magic, then the `runtime.Unknown` envelope.
fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let type_meta = m(
        "apimachinery.pkg.runtime.TypeMeta",
        vec![("apiVersion", s(api_version)), ("kind", s(kind))],
    );
    let unknown = msg(
        "apimachinery.pkg.runtime.Unknown",
        vec![("typeMeta", type_meta), ("raw", Proto::Bytes(raw))],
    );
    [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
}

fn body(api_version: &str, object: Msg) -> Vec<u8> {
    let name = object.desc.name();
    let kind = name.rsplit_once('.').map_or(name, |(_, k)| k);
    envelope(api_version, kind, object.encode_to_vec())
}

/// ObjectMeta as Go writes it: every non-pointer field, empty ones included.
fn meta(name: &str) -> Proto {
    m(
        "apimachinery.pkg.apis.meta.v1.ObjectMeta",
        vec![
            ("name", s(name)),
            ("generateName", s("")),
            ("namespace", s("")),
            ("generation", Proto::I64(0)),
            (
                "creationTimestamp",
                m("apimachinery.pkg.apis.meta.v1.Time", vec![]),
            ),
        ],
    )
}

fn int_or_string(v: Proto) -> Proto {
    let fields = match v {
        Proto::I32(_) => vec![("type", Proto::I64(0)), ("intVal", v)],
        _ => vec![("type", Proto::I64(1)), ("strVal", v)],
    };
    m("apimachinery.pkg.util.intstr.IntOrString", fields)
}

#[test]
fn decodes_a_namespace_as_kubectl_sends_it() {
    let ns = msg(
        "api.core.v1.Namespace",
        vec![
            ("metadata", meta("scratch")),
            ("spec", m("api.core.v1.NamespaceSpec", vec![])),
            (
                "status",
                m("api.core.v1.NamespaceStatus", vec![("phase", s(""))]),
            ),
        ],
    );
    let obj = decode(&body("v1", ns)).unwrap();
    assert_eq!(
        obj,
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            // Empty strings and zero numbers are dropped as Go's omitempty drops them; a
            // zero Time is null, as Go writes it.
            "metadata": {"name": "scratch", "creationTimestamp": null},
            "spec": {},
            "status": {},
        })
    );
}

#[test]
fn int_or_string_becomes_a_number_or_a_string() {
    let port = |name: &str, target: Proto| {
        m(
            "api.core.v1.ServicePort",
            vec![
                ("name", s(name)),
                ("protocol", s("TCP")),
                ("port", Proto::I32(80)),
                ("targetPort", target),
                ("nodePort", Proto::I32(0)),
            ],
        )
    };
    let svc = msg(
        "api.core.v1.Service",
        vec![
            ("metadata", meta("web")),
            (
                "spec",
                m(
                    "api.core.v1.ServiceSpec",
                    vec![(
                        "ports",
                        Proto::List(vec![
                            port("a", int_or_string(Proto::I32(8080))),
                            port("b", int_or_string(s("http"))),
                        ]),
                    )],
                ),
            ),
        ],
    );
    let obj = decode(&body("v1", svc)).unwrap();
    assert_eq!(
        obj["spec"]["ports"],
        json!([
            // nodePort 0 is Go's unset, not a port.
            {"name": "a", "protocol": "TCP", "port": 80, "targetPort": 8080},
            {"name": "b", "protocol": "TCP", "port": 80, "targetPort": "http"},
        ])
    );
}

#[test]
fn times_are_rfc3339_in_utc_and_micro_times_keep_microseconds() {
    let time = |secs: i64, nanos: i32, micro: bool| {
        let kind = if micro { "MicroTime" } else { "Time" };
        m(
            &format!("apimachinery.pkg.apis.meta.v1.{kind}"),
            vec![("seconds", Proto::I64(secs)), ("nanos", Proto::I32(nanos))],
        )
    };
    // 2024-01-02T03:04:05Z
    let at = 1_704_164_645;
    let lease = msg(
        "api.coordination.v1.Lease",
        vec![
            (
                "metadata",
                m(
                    "apimachinery.pkg.apis.meta.v1.ObjectMeta",
                    vec![("creationTimestamp", time(at, 900_000_000, false))],
                ),
            ),
            (
                "spec",
                m(
                    "api.coordination.v1.LeaseSpec",
                    vec![
                        ("acquireTime", time(at, 123_456_789, true)),
                        ("renewTime", time(at, 0, true)),
                    ],
                ),
            ),
        ],
    );
    let obj = decode(&body("coordination.k8s.io/v1", lease)).unwrap();
    assert_eq!(obj["metadata"]["creationTimestamp"], "2024-01-02T03:04:05Z");
    assert_eq!(obj["spec"]["acquireTime"], "2024-01-02T03:04:05.123456Z");
    assert_eq!(obj["spec"]["renewTime"], "2024-01-02T03:04:05.000000Z");

    let bad = msg(
        "api.coordination.v1.Lease",
        vec![(
            "spec",
            m(
                "api.coordination.v1.LeaseSpec",
                vec![("renewTime", time(i64::MAX, 0, true))],
            ),
        )],
    );
    let err = decode(&body("coordination.k8s.io/v1", bad)).unwrap_err();
    assert!(matches!(err, Error::Object { .. }), "{err:?}");
    assert!(err.to_string().contains("spec.renewTime"), "{err}");
}

#[test]
fn bytes_become_base64_and_maps_become_objects() {
    let secret = msg(
        "api.core.v1.Secret",
        vec![
            ("metadata", meta("creds")),
            ("type", s("Opaque")),
            (
                "data",
                map(vec![
                    ("password", Proto::Bytes(b"s3cr\xff".to_vec())),
                    ("empty", Proto::Bytes(Vec::new())),
                ]),
            ),
        ],
    );
    let obj = decode(&body("v1", secret)).unwrap();
    assert_eq!(obj["data"], json!({"password": "czNjcv8=", "empty": ""}));
    assert_eq!(obj["type"], "Opaque");

    let cm = msg(
        "api.core.v1.ConfigMap",
        vec![
            ("metadata", meta("cfg")),
            ("data", map(vec![("a.conf", s("x=1\n")), ("blank", s(""))])),
        ],
    );
    let obj = decode(&body("v1", cm)).unwrap();
    // An empty value in a map is data, not an unset field.
    assert_eq!(obj["data"], json!({"a.conf": "x=1\n", "blank": ""}));
}

#[test]
fn absent_fields_stay_absent_and_pointer_zeros_stay() {
    let deployment = |replicas: Option<i32>| {
        let mut spec = vec![
            ("minReadySeconds", Proto::I32(0)),
            ("paused", Proto::Bool(false)),
            ("strategy", m("api.apps.v1.DeploymentStrategy", vec![])),
        ];
        if let Some(n) = replicas {
            spec.push(("replicas", Proto::I32(n)));
        }
        msg(
            "api.apps.v1.Deployment",
            vec![
                ("metadata", meta("web")),
                ("spec", m("api.apps.v1.DeploymentSpec", spec)),
            ],
        )
    };
    let obj = decode(&body("apps/v1", deployment(None))).unwrap();
    assert_eq!(obj["spec"], json!({"strategy": {}}));
    assert_eq!(obj["apiVersion"], "apps/v1");
    assert_eq!(obj["kind"], "Deployment");
    let obj = decode(&body("apps/v1", deployment(Some(0)))).unwrap();
    assert_eq!(obj["spec"], json!({"strategy": {}, "replicas": 0}));
}

#[test]
fn quantities_are_strings() {
    let limits = map(vec![(
        "cpu",
        m(
            "apimachinery.pkg.api.resource.Quantity",
            vec![("string", s("500m"))],
        ),
    )]);
    let container = m(
        "api.core.v1.Container",
        vec![
            ("name", s("app")),
            ("image", s("nginx:1.27")),
            (
                "resources",
                m("api.core.v1.ResourceRequirements", vec![("limits", limits)]),
            ),
        ],
    );
    let pod = msg(
        "api.core.v1.Pod",
        vec![(
            "spec",
            m(
                "api.core.v1.PodSpec",
                vec![("containers", Proto::List(vec![container]))],
            ),
        )],
    );
    let obj = decode(&body("v1", pod)).unwrap();
    assert_eq!(
        obj["spec"]["containers"][0],
        json!({"name": "app", "image": "nginx:1.27", "resources": {"limits": {"cpu": "500m"}}})
    );
}

#[test]
fn raw_extensions_carry_json_and_refuse_anything_else() {
    let revision = |raw: &[u8]| {
        msg(
            "api.apps.v1.ControllerRevision",
            vec![
                ("metadata", meta("rev")),
                ("revision", Proto::I64(3)),
                (
                    "data",
                    m(
                        "apimachinery.pkg.runtime.RawExtension",
                        vec![("raw", Proto::Bytes(raw.to_vec()))],
                    ),
                ),
            ],
        )
    };
    let obj = decode(&body("apps/v1", revision(br#"{"spec":{"x":1}}"#))).unwrap();
    assert_eq!(obj["data"], json!({"spec": {"x": 1}}));
    assert_eq!(obj["revision"], 3);
    let err = decode(&body("apps/v1", revision(b"k8s\0\x0a"))).unwrap_err();
    match err {
        Error::Object { source, .. } => {
            assert_eq!(source.path, "data");
            assert!(matches!(source.reason, Reason::EmbeddedNotJson(_)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn envelope_errors_say_what_failed() {
    assert!(matches!(decode(b"{\"kind\":\"Pod\"}"), Err(Error::NoMagic)));
    // A length prefix running past the end of the body.
    assert!(matches!(
        decode(b"k8s\0\x0a\xff\xff\xff"),
        Err(Error::Envelope(_))
    ));
    let unsupported = decode(&envelope("example.com/v1", "Widget", Vec::new())).unwrap_err();
    assert!(matches!(unsupported, Error::Unsupported { .. }));
    assert!(
        unsupported.to_string().contains("example.com/v1"),
        "{unsupported}"
    );
    assert!(matches!(
        decode(&envelope("v1", "", Vec::new())),
        Err(Error::Unsupported { .. })
    ));
    let broken = decode(&envelope("v1", "ConfigMap", vec![0x0a, 0x05, 0x01])).unwrap_err();
    assert!(matches!(broken, Error::Object { .. }), "{broken:?}");
    assert!(broken.to_string().contains("ConfigMap"), "{broken}");
    let gzip = [
        envelope("v1", "ConfigMap", Vec::new()),
        // contentEncoding (field 3) = "gzip"
        vec![0x1a, 4, b'g', b'z', b'i', b'p'],
    ]
    .concat();
    assert!(matches!(decode(&gzip), Err(Error::ContentEncoding(_))));
}

#[test]
fn every_served_group_has_its_messages() {
    for (api_version, kind) in [
        ("v1", "Pod"),
        ("apps/v1", "StatefulSet"),
        ("batch/v1", "CronJob"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("policy/v1", "PodDisruptionBudget"),
        ("coordination.k8s.io/v1", "Lease"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
        ("v1", "PersistentVolume"),
        ("v1", "PersistentVolumeClaim"),
        ("storage.k8s.io/v1", "StorageClass"),
    ] {
        let obj = decode(&envelope(api_version, kind, Vec::new())).unwrap();
        assert_eq!(obj, json!({"apiVersion": api_version, "kind": kind}));
    }
}

#[test]
fn explicit_zero_entries_name_real_scalar_fields() {
    for (message, field) in EXPLICIT_ZERO {
        let desc = schema::message(&format!("k8s.io.api.{message}"))
            .unwrap_or_else(|| panic!("no message {message}"));
        let f = desc
            .field_named(field)
            .unwrap_or_else(|| panic!("no field {message}.{field}"));
        assert!(
            f.ty.message().is_none() && f.label == Label::Singular,
            "{message}.{field}"
        );
    }
}

#[test]
fn durations_print_as_go_prints_them() {
    for (nanos, want) in [
        (0, "0s"),
        (1, "1ns"),
        (1_500, "1.5µs"),
        (100_000_000, "100ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (-3_723_000_000_000, "-1h2m3s"),
    ] {
        assert_eq!(super::json::go_duration(nanos), want, "{nanos}");
    }
}

#[test]
fn the_generated_tables_hold_their_invariants() {
    assert!(MESSAGES.windows(2).all(|w| w[0].name() < w[1].name()));
    for msg in MESSAGES {
        assert!(schema::message(msg.name()).is_some_and(|m| std::ptr::eq(m, msg)));
        let fields = msg.fields();
        assert!(
            fields.windows(2).all(|w| w[0].number < w[1].number),
            "{}",
            msg.name()
        );
        for f in fields {
            let here = format!("{}.{}", msg.name(), f.name());
            assert!(f.number > 0 && !f.name().is_empty(), "{here}");
            if let Type::Message(i) = f.ty {
                assert!(usize::from(i) < MESSAGES.len(), "{here}");
            }
            match f.label {
                Label::Map => {
                    let entry = f.ty.message().expect("a map has an entry message");
                    assert_eq!(entry.field(1).map(|k| k.ty), Some(Type::String), "{here}");
                    assert!(entry.field(2).is_some(), "{here}");
                }
                Label::Inline => {
                    let inner = f.ty.message().expect("inline fields are messages");
                    assert!(
                        inner.fields().iter().all(|g| g.label != Label::Inline),
                        "{here}"
                    );
                }
                Label::Singular | Label::Repeated => {}
            }
        }
    }
}

#[test]
fn packed_and_unpacked_lists_read_alike() {
    // PodSecurityContext.supplementalGroups (field 4, repeated int64) as one packed run of
    // 1, 300 and then unpacked 7.
    let security = [vec![0x22, 3, 1, 0xac, 0x02], vec![0x20, 7]].concat();
    let spec = [vec![0x72, security.len() as u8], security].concat(); // securityContext = 14
    let pod = [vec![0x12, spec.len() as u8], spec].concat(); // spec = 2
    let obj = decode(&envelope("v1", "Pod", pod)).unwrap();
    assert_eq!(
        obj["spec"]["securityContext"]["supplementalGroups"],
        json!([1, 300, 7])
    );
}

#[test]
fn a_field_of_the_wrong_wire_type_is_named() {
    // ConfigMap.data (field 2, a map) sent as a varint.
    let err = decode(&envelope("v1", "ConfigMap", vec![0x10, 1])).unwrap_err();
    assert!(err.to_string().contains("data"), "{err}");
    assert!(matches!(err, Error::Object { .. }), "{err:?}");
}

#[test]
fn foreign_bodies_get_415_and_broken_ones_400() {
    use crate::apiserver::status::ApiError;
    let code = |body: &[u8]| ApiError::from(decode(body).unwrap_err()).code();
    assert_eq!(code(b"{}"), 415);
    assert_eq!(code(&envelope("example.com/v1", "Widget", Vec::new())), 415);
    assert_eq!(code(b"k8s\0\x0a\xff\xff\xff"), 400);
    assert_eq!(
        code(&envelope("v1", "ConfigMap", vec![0x0a, 0x05, 0x01])),
        400
    );
}

// === objects encoded by prost's code for Kubernetes' .proto files ===

/// The body kubectl would send for an object k8s-pb's structs (prost) encode.
fn prost_body<T: prost::Message + k8s_pb::Resource>(object: &T) -> Vec<u8> {
    envelope(T::API_VERSION, T::KIND, object.encode_to_vec())
}

#[test]
fn a_deployment_encoded_by_prost_reads_as_kubectl_create_writes_it() {
    use k8s_pb::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
    use k8s_pb::api::core::v1::{
        ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource,
        HttpGetAction, LocalObjectReference, PodSpec, PodTemplateSpec, Probe, ProbeHandler,
        ResourceRequirements, Volume, VolumeMount, VolumeSource,
    };
    use k8s_pb::apimachinery::pkg::api::resource::Quantity;
    use k8s_pb::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;

    let labels = || [("app".to_owned(), "web".to_owned())].into();
    let config = || LocalObjectReference {
        name: Some("web-config".into()),
    };
    let container = Container {
        name: Some("nginx".into()),
        image: Some("nginx:1.27".into()),
        ports: vec![ContainerPort {
            container_port: Some(80),
            protocol: Some("TCP".into()),
            ..Default::default()
        }],
        env_from: vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                local_object_reference: Some(config()),
                optional: None,
            }),
            ..Default::default()
        }],
        resources: Some(ResourceRequirements {
            limits: [(
                "memory".to_owned(),
                Quantity {
                    string: Some("64Mi".into()),
                },
            )]
            .into(),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            handler: Some(ProbeHandler {
                http_get: Some(HttpGetAction {
                    path: Some("/healthz".into()),
                    port: Some(IntOrString {
                        r#type: Some(1),
                        str_val: Some("http".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        volume_mounts: vec![VolumeMount {
            name: Some("conf".into()),
            mount_path: Some("/etc/nginx/conf.d".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: Some(ObjectMeta {
            name: Some("web".into()),
            labels: labels(),
            ..Default::default()
        }),
        spec: Some(DeploymentSpec {
            replicas: Some(0),
            selector: Some(LabelSelector {
                match_labels: labels(),
                ..Default::default()
            }),
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: labels(),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: vec![Volume {
                        name: Some("conf".into()),
                        volume_source: Some(VolumeSource {
                            config_map: Some(ConfigMapVolumeSource {
                                local_object_reference: Some(config()),
                                default_mode: Some(0o644),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    }],
                    ..Default::default()
                }),
            }),
            strategy: Some(DeploymentStrategy::default()),
            ..Default::default()
        }),
        status: None,
    };
    let obj = decode(&prost_body(&deployment)).unwrap();
    // Go's embedded structs (volumeSource, localObjectReference, the probe's handler) are
    // inline in JSON, as Kubernetes writes them.
    assert_eq!(
        obj,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "nginx",
                            "image": "nginx:1.27",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "envFrom": [{"configMapRef": {"name": "web-config"}}],
                            "resources": {"limits": {"memory": "64Mi"}},
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 5,
                            },
                            "volumeMounts": [{"name": "conf", "mountPath": "/etc/nginx/conf.d"}],
                        }],
                        "volumes": [{
                            "name": "conf",
                            "configMap": {"name": "web-config", "defaultMode": 420},
                        }],
                    },
                },
            },
        })
    );
}

#[test]
fn services_secrets_and_leases_encoded_by_prost_read_back() {
    use k8s_pb::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_pb::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
    use k8s_pb::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;

    let meta = |name: &str| {
        Some(ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        })
    };
    let service = Service {
        metadata: meta("web"),
        spec: Some(ServiceSpec {
            ports: vec![ServicePort {
                port: Some(80),
                target_port: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(8080),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            selector: [("app".to_owned(), "web".to_owned())].into(),
            r#type: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    };
    let obj = decode(&prost_body(&service)).unwrap();
    assert_eq!(
        obj["spec"],
        json!({"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"},
               "type": "ClusterIP"})
    );

    let secret = Secret {
        metadata: meta("creds"),
        data: [("password".to_owned(), b"s3cr\xff".to_vec())].into(),
        r#type: Some("Opaque".into()),
        ..Default::default()
    };
    let obj = decode(&prost_body(&secret)).unwrap();
    assert_eq!(obj["data"], json!({"password": "czNjcv8="}));
    assert_eq!(obj["kind"], "Secret");

    let lease = Lease {
        metadata: meta("leader"),
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(0),
            renew_time: Some(MicroTime {
                seconds: Some(1_704_164_645),
                nanos: Some(123_456_789),
            }),
            ..Default::default()
        }),
    };
    let obj = decode(&prost_body(&lease)).unwrap();
    assert_eq!(
        obj["spec"],
        json!({"holderIdentity": "a", "leaseDurationSeconds": 0,
               "renewTime": "2024-01-02T03:04:05.123456Z"})
    );
}
