//! Compiles the vendored Kubernetes `.proto` files (proto/, see proto/README.md) into one
//! descriptor set that the API server embeds to read protobuf request bodies.
//!
//! The descriptor set keeps imports (the API groups need apimachinery's types) and drops
//! source info (comments and spans), which would triple its size for nothing at run time.

use std::path::PathBuf;

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

fn main() {
    println!("cargo::rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut compiler = match protox::Compiler::new(["proto"]) {
        Ok(c) => c,
        Err(e) => panic!("proto/: {e}"),
    };
    compiler.include_imports(true).include_source_info(false);
    if let Err(e) = compiler.open_files(FILES) {
        panic!("compiling the Kubernetes .proto files: {e}");
    }
    let set = compiler.encode_file_descriptor_set();
    if let Err(e) = std::fs::write(out.join("kubernetes.pb"), set) {
        panic!("writing the descriptor set to {}: {e}", out.display());
    }
}
