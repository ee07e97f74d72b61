//! Bodies encoded by prost-reflect from the descriptors `build.rs` compiled (as kubectl would
//! encode them), fed to [`decode`] as bytes.

use std::collections::HashMap;

use prost_reflect::prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage, Value as Proto};
use serde_json::json;

use super::json::{EXPLICIT_ZERO, Reason};
use super::schema::{self, Label, MESSAGES};
use super::*;

/// The descriptor set the schema was generated from; only tests carry it.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kubernetes.pb"));

fn pool() -> DescriptorPool {
    DescriptorPool::decode(DESCRIPTORS).unwrap()
}

/// A message of `name` (relative to `k8s.io.`) with the given fields set.
fn msg(name: &str, fields: Vec<(&str, Proto)>) -> DynamicMessage {
    let desc = pool()
        .get_message_by_name(&format!("k8s.io.{name}"))
        .unwrap_or_else(|| panic!("no message {name}"));
    let mut m = DynamicMessage::new(desc);
    for (field, value) in fields {
        m.set_field_by_name(field, value);
    }
    m
}

fn m(name: &str, fields: Vec<(&str, Proto)>) -> Proto {
    Proto::Message(msg(name, fields))
}

fn s(v: &str) -> Proto {
    Proto::String(v.into())
}

fn map(entries: Vec<(&str, Proto)>) -> Proto {
    Proto::Map(
        entries
            .into_iter()
            .map(|(k, v)| (MapKey::String(k.into()), v))
            .collect::<HashMap<_, _>>(),
    )
}

/// The whole body as kubectl sends it: magic, then the `runtime.Unknown` envelope.
fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let type_meta = m(
        "apimachinery.pkg.runtime.TypeMeta",
        vec![("apiVersion", s(api_version)), ("kind", s(kind))],
    );
    let unknown = msg(
        "apimachinery.pkg.runtime.Unknown",
        vec![("typeMeta", type_meta), ("raw", Proto::Bytes(raw.into()))],
    );
    [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
}

fn body(api_version: &str, object: DynamicMessage) -> Vec<u8> {
    let kind = object.descriptor().name().to_owned();
    envelope(api_version, &kind, object.encode_to_vec())
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
                    ("password", Proto::Bytes(b"s3cr\xff".to_vec().into())),
                    ("empty", Proto::Bytes(Vec::new().into())),
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
                        vec![("raw", Proto::Bytes(raw.to_vec().into()))],
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
    ] {
        let obj = decode(&envelope(api_version, kind, Vec::new())).unwrap();
        assert_eq!(obj, json!({"apiVersion": api_version, "kind": kind}));
    }
}

#[test]
fn explicit_zero_entries_name_real_scalar_fields() {
    let pool = pool();
    for (message, field) in EXPLICIT_ZERO {
        let desc = pool
            .get_message_by_name(&format!("k8s.io.api.{message}"))
            .unwrap_or_else(|| panic!("no message {message}"));
        let f = desc
            .get_field_by_name(field)
            .unwrap_or_else(|| panic!("no field {message}.{field}"));
        assert!(
            f.kind().as_message().is_none() && !f.is_list(),
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
fn the_generated_schema_matches_the_descriptors() {
    let pool = pool();
    assert_eq!(MESSAGES.len(), pool.all_messages().len());
    assert!(MESSAGES.windows(2).all(|w| w[0].name() < w[1].name()));
    for desc in pool.all_messages() {
        let msg = schema::message(desc.full_name()).unwrap();
        assert_eq!(msg.fields().len(), desc.fields().len(), "{}", msg.name());
        for f in desc.fields() {
            let row = msg.field(f.number()).unwrap();
            assert_eq!(row.name(), f.name());
            let label = if f.is_map() {
                Label::Map
            } else if f.is_list() {
                Label::Repeated
            } else {
                Label::Singular
            };
            assert_eq!(row.label, label, "{}.{}", msg.name(), row.name());
            if let Some(m) = f.kind().as_message() {
                assert_eq!(
                    row.ty.message().map(schema::Message::name),
                    Some(m.full_name())
                );
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
