//! The admin kubeconfig a server writes for kubectl (`--write-kubeconfig`).

use std::path::Path;

use base64::Engine;

use super::{ClusterCa, Result, write_private};

/// Identity of the admin user: cluster-admin through the `system:masters` group.
pub const ADMIN_USER: &str = "system:admin";
pub const ADMIN_GROUP: &str = "system:masters";

/// Issues a fresh admin client certificate and writes a kubeconfig for `server_url`; returns
/// the certificate (PEM), whose expiry the renewal task follows.
pub fn write(path: &Path, mode: u32, server_url: &str, ca: &ClusterCa) -> Result<String> {
    let client = ca.issue_client(ADMIN_USER, ADMIN_GROUP)?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let yaml = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - cluster:\n    certificate-authority-data: {ca}\n    server: {server_url}\n  name: default\n\
         contexts:\n\
         - context:\n    cluster: default\n    user: default\n  name: default\n\
         current-context: default\n\
         preferences: {{}}\n\
         users:\n\
         - name: default\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = b64(&ca.cert_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    );
    write_private(path, yaml.as_bytes(), mode)?;
    Ok(client.cert_pem)
}
