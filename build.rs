//! Compiles the vendored Kubernetes `.proto` files (proto/, see proto/README.md) into the
//! schema tables the API server reads protobuf request bodies with
//! (`src/apiserver/protobuf/`).
//!
//! Two outputs in `OUT_DIR`:
//! - `schema.rs`: one static row per message (full name, apimachinery JSON form, fields with
//!   number, JSON name, type and label), sorted by name; messages refer to each other by
//!   index. This is all the running server carries: plain read-only data, no descriptor pool
//!   to build, nothing allocated until a body arrives.
//! - `kubernetes.pb`: the descriptor set itself (without comments), which only the unit
//!   tests use, to encode bodies as kubectl would.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};

/// The API groups keelson serves; apimachinery's files come in as their imports.
const FILES: &[&str] = &[
    "k8s.io/api/core/v1/generated.proto",
    "k8s.io/api/apps/v1/generated.proto",
    "k8s.io/api/batch/v1/generated.proto",
    "k8s.io/api/coordination/v1/generated.proto",
    "k8s.io/api/discovery/v1/generated.proto",
    "k8s.io/api/policy/v1/generated.proto",
    "k8s.io/api/rbac/v1/generated.proto",
];

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

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // fuzz/ builds the same module with this same script, one directory down.
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let proto = [manifest.join("proto"), manifest.join("../proto")]
        .into_iter()
        .find(|p| p.is_dir())
        .expect("proto/ beside Cargo.toml or one directory up");
    println!("cargo::rerun-if-changed={}", proto.display());
    let mut compiler = match protox::Compiler::new([&proto]) {
        Ok(c) => c,
        Err(e) => panic!("proto/: {e}"),
    };
    compiler.include_imports(true).include_source_info(false);
    if let Err(e) = compiler.open_files(FILES) {
        panic!("compiling the Kubernetes .proto files: {e}");
    }
    write(
        &out.join("kubernetes.pb"),
        compiler.encode_file_descriptor_set(),
    );
    write(
        &out.join("schema.rs"),
        schema(compiler.descriptor_pool().all_messages()).into_bytes(),
    );
}

fn write(path: &PathBuf, bytes: Vec<u8>) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("writing {}: {e}", path.display());
    }
}

/// The Rust source of `NAMES`, `MESSAGES` and `FIELDS`. The tables hold no pointers (names
/// are ranges of `NAMES`, fields ranges of `FIELDS`, messages indexes), so they stay in
/// read-only pages that need no relocation at start-up and are not resident until read.
fn schema(messages: impl Iterator<Item = MessageDescriptor>) -> String {
    let mut messages: Vec<MessageDescriptor> = messages.collect();
    messages.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    let index: HashMap<String, usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.full_name().to_owned(), i))
        .collect();
    assert!(
        messages.len() <= usize::from(u16::MAX),
        "message indexes are u16"
    );
    let mut names = Names::default();
    let (mut message_rows, mut field_rows) = (String::new(), String::new());
    let mut field_count = 0usize;
    for m in &messages {
        let special = SPECIAL
            .iter()
            .find(|(name, _)| *name == m.full_name())
            .map_or("None", |(_, s)| s);
        let mut fields: Vec<FieldDescriptor> = m.fields().collect();
        fields.sort_by_key(FieldDescriptor::number);
        let _ = writeln!(
            message_rows,
            "    Message {{ name: {}, special: Special::{special}, first_field: {field_count}, field_count: {} }},",
            names.get(m.full_name()),
            fields.len()
        );
        field_count += fields.len();
        for f in fields {
            let label = match (f.is_map(), f.cardinality()) {
                (true, _) => "Map",
                (false, Cardinality::Repeated) => "Repeated",
                (false, _) => "Singular",
            };
            let ty = match f.kind() {
                Kind::Message(m) => format!("Message({})", index[m.full_name()]),
                Kind::Enum(_) => "Enum".into(),
                Kind::Double => "Double".into(),
                Kind::Float => "Float".into(),
                Kind::Int32 => "Int32".into(),
                Kind::Int64 => "Int64".into(),
                Kind::Uint32 => "Uint32".into(),
                Kind::Uint64 => "Uint64".into(),
                Kind::Sint32 => "Sint32".into(),
                Kind::Sint64 => "Sint64".into(),
                Kind::Fixed32 => "Fixed32".into(),
                Kind::Fixed64 => "Fixed64".into(),
                Kind::Sfixed32 => "Sfixed32".into(),
                Kind::Sfixed64 => "Sfixed64".into(),
                Kind::Bool => "Bool".into(),
                Kind::String => "String".into(),
                Kind::Bytes => "Bytes".into(),
            };
            let _ = writeln!(
                field_rows,
                "    Field {{ number: {}, name: {}, ty: Type::{ty}, label: Label::{label} }},",
                f.number(),
                names.get(f.name())
            );
        }
    }
    assert!(
        field_count <= usize::from(u16::MAX),
        "field indexes are u16"
    );
    format!(
        "// @generated by build.rs from proto/; do not edit.\n\
         static NAMES: &str = {:?};\n\
         pub static MESSAGES: &[Message] = &[\n{message_rows}];\n\
         static FIELDS: &[Field] = &[\n{field_rows}];\n",
        names.text
    )
}

/// Every distinct name once, in one string.
#[derive(Default)]
struct Names {
    text: String,
    at: HashMap<String, usize>,
}

impl Names {
    /// The `Name { start, len }` literal of `name`, adding it if new.
    fn get(&mut self, name: &str) -> String {
        let start = match self.at.get(name) {
            Some(&start) => start,
            None => {
                let start = self.text.len();
                self.text.push_str(name);
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
