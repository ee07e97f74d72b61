//! Writes the schema tables keelson reads protobuf request bodies with
//! (`src/apiserver/protobuf/tables.rs`), from two crates:
//!
//! - `k8s-pb`: the Rust that prost generated from Kubernetes' `.proto` files. Its source is
//!   parsed (the generator calls none of its code): each `pub struct` is a message of the package its module path
//!   names (`api::core::v1` is `k8s.io.api.core.v1`), each `#[prost(<type>, <label>, tag =
//!   "N")]` field gives the number, wire type, label and message type.
//! - `k8s-openapi`: the JSON property names, which prost snake-cased (`hostIP` is `host_ip`).
//!   A field's JSON name is the property of the matching definition
//!   (`io.k8s.api.core.v1.PodStatus`) whose name, lowercased without underscores, equals the
//!   field's. A field without one fails the generator, unless it is a Go embedded struct
//!   (written inline: see `Label::Inline`) or listed in `NEWER`.
//!
//! Only messages the served kinds reach (and the `runtime.Unknown` envelope) are written.
//! apimachinery's types with a JSON form of their own (`SPECIAL`) and the envelope
//! (`INTERNAL`) have no object definition; their field names are keelson's own handles, the
//! lowerCamelCase of prost's (which is the `.proto` name for each of them).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use syn::punctuated::Punctuated;
use syn::{Fields, GenericArgument, Item, Meta, PathArguments, Token, Type};

/// Where the generated file goes, relative to this crate.
pub const OUT_FILE: &str = "../../src/apiserver/protobuf/tables.rs";

/// The envelope of every body, and its TypeMeta.
const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";
const INTERNAL: &[&str] = &[UNKNOWN, "k8s.io.apimachinery.pkg.runtime.TypeMeta"];

/// apimachinery's types whose JSON form is not their fields (see `protobuf/json.rs`).
const SPECIAL: &[(&str, &str)] = &[
    (
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
        "IntOrString",
    ),
    ("k8s.io.apimachinery.pkg.api.resource.Quantity", "Quantity"),
    (
        "k8s.io.apimachinery.pkg.api.resource.QuantityValue",
        "Quantity",
    ),
    ("k8s.io.apimachinery.pkg.apis.meta.v1.Time", "Time"),
    (
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime",
        "MicroTime",
    ),
    ("k8s.io.apimachinery.pkg.apis.meta.v1.Duration", "Duration"),
    ("k8s.io.apimachinery.pkg.runtime.RawExtension", "Embedded"),
    ("k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1", "Embedded"),
];

/// Fields that k8s-pb 0.7 (Kubernetes 1.33; no release has 1.32's files) has and Kubernetes
/// 1.32 has not, as (message, prost's field name): k8s-openapi's v1_32 definitions lack them,
/// and a 1.32 API server (which keelson reports itself as) skips them in a body, as keelson
/// does by leaving them out. The generator fails when an entry has a property after all.
const NEWER: &[(&str, &str)] = &[
    (
        "k8s.io.api.apps.v1.DeploymentStatus",
        "terminating_replicas",
    ),
    (
        "k8s.io.api.apps.v1.ReplicaSetStatus",
        "terminating_replicas",
    ),
    ("k8s.io.api.core.v1.ContainerStatus", "stop_signal"),
    ("k8s.io.api.core.v1.Lifecycle", "stop_signal"),
    ("k8s.io.api.core.v1.NodeSystemInfo", "swap"),
    ("k8s.io.api.core.v1.PodCondition", "observed_generation"),
    ("k8s.io.api.core.v1.PodStatus", "observed_generation"),
    ("k8s.io.api.discovery.v1.EndpointHints", "for_nodes"),
];

/// A message as prost generated it.
struct Message {
    /// Its full name as prost spells it: `k8s.io.api.core.v1.HttpGetAction`.
    name: String,
    fields: Vec<Field>,
}

struct Field {
    number: u32,
    /// prost's snake_case name, without `r#`.
    rust_name: String,
    kind: Kind,
    label: Label,
}

#[derive(Clone)]
enum Kind {
    /// The `Type` variant's name: `String`, `Int64`, …
    Scalar(&'static str),
    /// A message's full protobuf name.
    Message(String),
}

#[derive(Clone, Copy, PartialEq)]
enum Label {
    Singular,
    Repeated,
    Map,
    /// A Go embedded struct, whose fields JSON writes into its parent.
    Inline,
}

/// The Rust source of `NAMES`, `MESSAGES` and `FIELDS` for the messages `roots` (definition
/// names, `io.k8s.api.apps.v1.Deployment`) reach, with the JSON names of `definitions`.
pub fn generate(definitions: &Map<String, Value>, roots: &[String]) -> String {
    let src = k8s_pb_src();
    let mut parsed = Parsed::default();
    // Every reachable message, by normalised name, read from k8s-pb as the walk reaches its
    // package.
    let mut reached: Vec<String> = Vec::new();
    let mut queue: VecDeque<String> = roots
        .iter()
        .map(|r| proto_name(r))
        .chain([UNKNOWN.to_owned()])
        .collect();
    while let Some(name) = queue.pop_front() {
        let key = name.to_ascii_lowercase();
        if reached.contains(&key) {
            continue;
        }
        for f in &parsed.message(&src, &name).fields {
            if let Kind::Message(m) = &f.kind {
                queue.push_back(m.clone());
            }
        }
        reached.push(key);
    }
    let messages: Vec<&Message> = reached.iter().map(|k| &parsed.messages[k]).collect();
    assert_eq!(
        parsed.dropped.len(),
        NEWER.len(),
        "NEWER names a field k8s-pb lacks: {:?} found",
        parsed.dropped
    );

    // prost renames messages (`HTTPGetAction` is `HttpGetAction`); the definitions keep
    // Kubernetes' spelling.
    let spelled: HashMap<String, &String> = definitions
        .keys()
        .map(|d| (proto_name(d).to_ascii_lowercase(), d))
        .collect();
    let name_of = |prost: &str| -> String {
        match spelled.get(&prost.to_ascii_lowercase()) {
            Some(d) => proto_name(d),
            None => prost.to_owned(),
        }
    };
    let properties = |prost: &str| {
        spelled
            .get(&prost.to_ascii_lowercase())
            .and_then(|d| definitions[d.as_str()].get("properties"))
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>())
    };

    // The JSON names of each message's fields. Go's embedded structs are fields of their own
    // in protobuf (`Volume.volumeSource`) but inline in JSON: a message field with no property
    // of its own whose message's fields are all properties of the parent is inline, and that
    // message (often without a definition of its own) takes its names from the parent.
    let mut json: HashMap<&str, Vec<String>> = HashMap::new();
    let mut inline: Vec<(&str, u32)> = Vec::new();
    let mut inherited: HashMap<String, Vec<&str>> = HashMap::new();
    let mut errors = Vec::new();
    for msg in &messages {
        let Some(props) = properties(&msg.name) else {
            continue;
        };
        for (m, f) in NEWER {
            if *m == msg.name && matching(&props, f).is_some() {
                errors.push(format!("{m}.{f} is listed in NEWER but has a property"));
            }
        }
        let mut names = Vec::new();
        for f in &msg.fields {
            if let Some(p) = matching(&props, &f.rust_name) {
                names.push(p.to_owned());
                continue;
            }
            let embedded = match (&f.kind, f.label) {
                (Kind::Message(m), Label::Singular) => {
                    Some(&parsed.messages[&m.to_ascii_lowercase()])
                }
                _ => None,
            };
            match embedded {
                Some(e)
                    if e.fields
                        .iter()
                        .all(|g| matching(&props, &g.rust_name).is_some()) =>
                {
                    inline.push((msg.name.as_str(), f.number));
                    inherited.insert(e.name.to_ascii_lowercase(), props.clone());
                    names.push(camel(&f.rust_name));
                }
                _ => {
                    errors.push(format!(
                        "{}.{} (field {}): no property matches",
                        msg.name, f.rust_name, f.number
                    ));
                    names.push(f.rust_name.clone());
                }
            }
        }
        json.insert(&msg.name, names);
    }
    for msg in &messages {
        if json.contains_key(msg.name.as_str()) {
            continue;
        }
        let own =
            INTERNAL.contains(&msg.name.as_str()) || SPECIAL.iter().any(|(s, _)| *s == msg.name);
        let names = if own {
            msg.fields.iter().map(|f| camel(&f.rust_name)).collect()
        } else if let Some(props) = inherited.get(&msg.name.to_ascii_lowercase()) {
            msg.fields
                .iter()
                .map(|f| {
                    matching(props, &f.rust_name)
                        .expect("checked when inlined")
                        .to_owned()
                })
                .collect()
        } else {
            errors.push(format!("{}: no definition, and inline in none", msg.name));
            msg.fields.iter().map(|f| f.rust_name.clone()).collect()
        };
        json.insert(&msg.name, names);
    }
    // The reader merges an inline message's fields without a nesting check of its own.
    for (parent, _) in &inline {
        assert!(
            !inherited.contains_key(&parent.to_ascii_lowercase()),
            "{parent} is inline and has inline fields itself"
        );
    }
    if !errors.is_empty() {
        panic!(
            "proto fields without a JSON name in k8s-openapi:\n  {}",
            errors.join("\n  ")
        );
    }

    // The rows, with map fields' entries as messages of their own (key 1, value 2), named
    // as protoc names them.
    let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for msg in &messages {
        let name = name_of(&msg.name);
        let mut fields = Vec::new();
        for (f, json) in msg.fields.iter().zip(&json[msg.name.as_str()]) {
            let kind = match &f.kind {
                Kind::Message(m) => Kind::Message(name_of(m)),
                k => k.clone(),
            };
            let (kind, label) = if f.label == Label::Map {
                let entry = format!("{name}.{}Entry", upper_first(json));
                let entry_rows = vec![
                    Row::new(1, "key", Kind::Scalar("String"), Label::Singular),
                    Row::new(2, "value", kind, Label::Singular),
                ];
                rows.insert(entry.clone(), entry_rows);
                (Kind::Message(entry), Label::Map)
            } else if inline.contains(&(msg.name.as_str(), f.number)) {
                (kind, Label::Inline)
            } else {
                (kind, f.label)
            };
            fields.push(Row::new(f.number, json, kind, label));
        }
        fields.sort_by_key(|r| r.number);
        rows.insert(name, fields);
    }
    write(&rows)
}

/// The property of `props` that `rust_name` is prost's form of.
fn matching<'a>(props: &[&'a str], rust_name: &str) -> Option<&'a str> {
    let want = normal(rust_name);
    let mut found = props.iter().filter(|p| normal(p) == want);
    match (found.next(), found.next()) {
        (Some(p), None) => Some(p),
        _ => None,
    }
}

/// One field as written to the table.
struct Row {
    number: u32,
    json: String,
    kind: Kind,
    label: Label,
}

impl Row {
    fn new(number: u32, json: &str, kind: Kind, label: Label) -> Row {
        Row {
            number,
            json: json.to_owned(),
            kind,
            label,
        }
    }
}

/// `hostIP` and `host_ip` alike: `hostip`.
fn normal(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `content_encoding` → `contentEncoding`.
fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// `io.k8s.api.core.v1.Pod` → `k8s.io.api.core.v1.Pod`.
fn proto_name(definition: &str) -> String {
    let rest = definition
        .strip_prefix("io.k8s.")
        .unwrap_or_else(|| panic!("{definition} is not a Kubernetes definition"));
    format!("k8s.io.{rest}")
}

/// The k8s-pb package's `src/`, wherever cargo keeps it (asked of `cargo metadata`, so the
/// version is the one Cargo.lock pins).
pub fn k8s_pb_src() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let pb = packages
        .iter()
        .find(|p| p["name"] == "k8s-pb")
        .expect("k8s-pb is a dependency");
    let manifest = pb["manifest_path"].as_str().expect("manifest_path");
    Path::new(manifest)
        .parent()
        .expect("a manifest has a folder")
        .join("src")
}

/// The messages of the k8s-pb modules read so far, by lowercased full name.
#[derive(Default)]
struct Parsed {
    packages: Vec<String>,
    messages: HashMap<String, Message>,
    /// The `NEWER` fields found (and left out).
    dropped: Vec<String>,
}

impl Parsed {
    /// The message of a full name, reading its package's module if not yet read.
    fn message(&mut self, src: &Path, name: &str) -> &Message {
        let (package, _) = name.rsplit_once('.').expect("a full name has a package");
        if !self.packages.iter().any(|p| p == package) {
            self.read_package(src, package);
            self.packages.push(package.to_owned());
        }
        self.messages
            .get(&name.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("k8s-pb has no message {name}"))
    }

    fn read_package(&mut self, src: &Path, package: &str) {
        let modules: Vec<&str> = package
            .strip_prefix("k8s.io.")
            .unwrap_or_else(|| panic!("{package} is not Kubernetes'"))
            .split('.')
            .collect();
        let path = modules
            .iter()
            .fold(src.to_path_buf(), |p, m| p.join(m))
            .join("mod.rs");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for item in file.items {
            let Item::Struct(s) = item else { continue };
            let Fields::Named(named) = &s.fields else {
                continue;
            };
            let name = format!("{package}.{}", s.ident);
            let mut fields = Vec::new();
            for f in &named.named {
                let Some(attr) = f.attrs.iter().find(|a| a.path().is_ident("prost")) else {
                    continue;
                };
                let rust_name = f.ident.as_ref().expect("named").to_string();
                let rust_name = rust_name.trim_start_matches("r#").to_owned();
                if NEWER.contains(&(name.as_str(), rust_name.as_str())) {
                    self.dropped.push(format!("{name}.{rust_name}"));
                    continue;
                }
                let metas = attr
                    .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                    .unwrap_or_else(|e| panic!("{name}.{rust_name}: {e}"));
                let field = field(&modules, &name, rust_name, &metas, &f.ty);
                fields.push(field);
            }
            self.messages
                .insert(name.to_ascii_lowercase(), Message { name, fields });
        }
    }
}

/// One field from its `#[prost(...)]` arguments and Rust type.
fn field(
    modules: &[&str],
    msg: &str,
    rust_name: String,
    metas: &Punctuated<Meta, Token![,]>,
    ty: &Type,
) -> Field {
    let here = || format!("{msg}.{rust_name}");
    let mut kind = None;
    let mut label = Label::Singular;
    let mut number = None;
    for meta in metas {
        let key = meta.path().get_ident().map(ToString::to_string);
        let value = match meta {
            Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        };
        match (key.as_deref().unwrap_or(""), value) {
            ("tag", Some(v)) => number = v.parse().ok(),
            ("optional" | "required", None) => label = Label::Singular,
            ("repeated", None) => label = Label::Repeated,
            ("packed", Some(_)) => {}
            ("message", None) => kind = Some(Kind::Message(message_type(modules, ty, &here()))),
            ("bytes", Some(_)) => kind = Some(Kind::Scalar("Bytes")),
            ("enumeration", Some(_)) => kind = Some(Kind::Scalar("Enum")),
            ("btree_map" | "hash_map", Some(v)) => {
                label = Label::Map;
                let (key, value) = v.split_once(',').expect("a map has a key and a value");
                assert_eq!(key.trim(), "string", "{}: maps have string keys", here());
                kind = Some(match value.trim() {
                    "message" => Kind::Message(message_type(modules, ty, &here())),
                    s if s.starts_with("enumeration") => Kind::Scalar("Enum"),
                    s => Kind::Scalar(scalar(s).unwrap_or_else(|| panic!("{}: {s}", here()))),
                });
            }
            (k, None) if scalar(k).is_some() => kind = scalar(k).map(Kind::Scalar),
            (k, _) => panic!("{}: unknown prost argument {k}", here()),
        }
    }
    Field {
        number: number.unwrap_or_else(|| panic!("{}: no tag", here())),
        kind: kind.unwrap_or_else(|| panic!("{}: no type", here())),
        label,
        rust_name,
    }
}

fn scalar(prost: &str) -> Option<&'static str> {
    Some(match prost {
        "double" => "Double",
        "float" => "Float",
        "int32" => "Int32",
        "int64" => "Int64",
        "uint32" => "Uint32",
        "uint64" => "Uint64",
        "sint32" => "Sint32",
        "sint64" => "Sint64",
        "fixed32" => "Fixed32",
        "fixed64" => "Fixed64",
        "sfixed32" => "Sfixed32",
        "sfixed64" => "Sfixed64",
        "bool" => "Bool",
        "string" => "String",
        "bytes" => "Bytes",
        _ => return None,
    })
}

/// The full protobuf name of a message field's Rust type: the innermost type of `Option<…>`,
/// `Vec<…>`, `Box<…>` or a map's value, resolved from the module `modules`.
fn message_type(modules: &[&str], ty: &Type, here: &str) -> String {
    let Type::Path(p) = ty else {
        panic!("{here}: not a path type")
    };
    let last = p.path.segments.last().expect("a path has a segment");
    if let PathArguments::AngleBracketed(args) = &last.arguments {
        let inner = args.args.iter().rev().find_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        });
        return message_type(modules, inner.expect("a type argument"), here);
    }
    let mut module: Vec<String> = modules.iter().map(|m| (*m).to_owned()).collect();
    let segments: Vec<String> = p
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let mut rest = segments.as_slice();
    if rest.first().is_some_and(|s| s == "crate") {
        module.clear();
        rest = &rest[1..];
    }
    while rest.first().is_some_and(|s| s == "super") {
        module.pop();
        rest = &rest[1..];
    }
    let (name, path) = rest.split_last().expect("a type name");
    module.extend(path.iter().cloned());
    format!("k8s.io.{}.{name}", module.join("."))
}

/// The tables hold no pointers (names are ranges of `NAMES`, fields ranges of `FIELDS`,
/// messages indexes), so they stay in read-only pages that need no relocation at start-up and
/// are not resident until read.
fn write(rows: &BTreeMap<String, Vec<Row>>) -> String {
    let index: HashMap<&str, usize> = rows
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    assert!(
        rows.len() <= usize::from(u16::MAX),
        "message indexes are u16"
    );
    let mut names = Names::default();
    let (mut message_rows, mut field_rows) = (String::new(), String::new());
    let mut field_count = 0usize;
    for (name, fields) in rows {
        let special = SPECIAL
            .iter()
            .find(|(n, _)| n == name)
            .map_or("None", |(_, s)| s);
        let _ = writeln!(
            message_rows,
            "    Message {{ name: {}, special: Special::{special}, first_field: {field_count}, field_count: {} }},",
            names.get(name),
            fields.len()
        );
        field_count += fields.len();
        for f in fields {
            let label = match f.label {
                Label::Singular => "Singular",
                Label::Repeated => "Repeated",
                Label::Map => "Map",
                Label::Inline => "Inline",
            };
            let ty = match &f.kind {
                Kind::Scalar(s) => (*s).to_owned(),
                Kind::Message(m) => format!("Message({})", index[m.as_str()]),
            };
            let _ = writeln!(
                field_rows,
                "    Field {{ number: {}, name: {}, ty: Type::{ty}, label: Label::{label} }},",
                f.number,
                names.get(&f.json)
            );
        }
    }
    assert!(
        field_count <= usize::from(u16::MAX),
        "field indexes are u16"
    );
    let mut text = String::new();
    for name in &names.order {
        let _ = writeln!(text, "    {name:?},");
    }
    format!(
        "// @generated by .ci/openapi-gen from the k8s-pb and k8s-openapi crates; do not edit.\n\
         static NAMES: &str = concat!(\n{text});\n\
         pub static MESSAGES: &[Message] = &[\n{message_rows}];\n\
         static FIELDS: &[Field] = &[\n{field_rows}];\n",
    )
}

/// Every distinct name once, in one string.
#[derive(Default)]
struct Names {
    order: Vec<String>,
    len: usize,
    at: HashMap<String, usize>,
}

impl Names {
    /// The `Name { start, len }` literal of `name`, adding it if new.
    fn get(&mut self, name: &str) -> String {
        let start = match self.at.get(name) {
            Some(&start) => start,
            None => {
                let start = self.len;
                self.len += name.len();
                self.order.push(name.to_owned());
                self.at.insert(name.to_owned(), start);
                start
            }
        };
        assert!(
            name.is_ascii() && name.len() <= usize::from(u8::MAX),
            "{name}"
        );
        format!("Name {{ start: {start}, len: {} }}", name.len())
    }
}
