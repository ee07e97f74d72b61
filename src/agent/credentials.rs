//! What an agent keeps in `<data-dir>/agent/`: node password, node-id suffix, the cluster CA,
//! its client certificate, and the last known list of servers.
//!
//! Every secret is written 0600 through a temporary file and a rename, so a power cut never
//! leaves half a key. The node password is made once and never changes: it is what lets this
//! board, and only this board, use its node name.

use std::path::{Path, PathBuf};

use crate::bootstrap::pki::{self, pem_to_der};
use crate::bootstrap::write_private;

/// The cluster CA, under `<data-dir>/agent/`.
const CA_FILE: &str = "server-ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::bootstrap::Error),
}

/// The agent's files; paths only, read on demand.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
}

/// A client certificate and key, PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Files {
    pub fn new(data_dir: &Path) -> Files {
        Files {
            dir: data_dir.join("agent"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<Option<String>, Error> {
        let path = self.path(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// The node password, made on first use.
    pub fn node_password(&self) -> Result<String, Error> {
        if let Some(p) = self.read("node-password")? {
            let p = p.trim().to_owned();
            if p.len() >= 32 {
                return Ok(p);
            }
        }
        let password = random_hex(32);
        write_private(&self.path("node-password"), password.as_bytes(), 0o600)?;
        Ok(password)
    }

    /// `base` with this board's persisted random suffix (`--with-node-id`).
    pub fn name_with_id(&self, base: &str) -> Result<String, Error> {
        let id = match self.read("node-id")? {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => {
                let id = random_hex(4);
                write_private(&self.path("node-id"), id.as_bytes(), 0o644)?;
                id
            }
        };
        Ok(format!("{base}-{id}"))
    }

    /// The cluster CA saved at the first join, which every later join and tunnel is verified
    /// against.
    pub fn ca(&self) -> Result<Option<String>, Error> {
        self.read(CA_FILE)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.path(CA_FILE)
    }

    pub fn save_ca(&self, pem: &str) -> Result<(), Error> {
        Ok(write_private(&self.path(CA_FILE), pem.as_bytes(), 0o644)?)
    }

    /// The client certificate if it is present and not due for renewal.
    pub fn client_cert(&self, node: &str) -> Result<Option<ClientCert>, Error> {
        let (Some(cert_pem), Some(key_pem)) =
            (self.read("client-node.crt")?, self.read("client-node.key")?)
        else {
            return Ok(None);
        };
        // A certificate for another name (the node name changed) is useless.
        let for_node = crate::apiserver::auth::Identity::from_certificate(
            &pem_to_der(&cert_pem).unwrap_or_default(),
        );
        if for_node.node_name() != Some(node) {
            return Ok(None);
        }
        Ok((!due_for_renewal(&cert_pem)).then_some(ClientCert { cert_pem, key_pem }))
    }

    pub fn save_client_cert(&self, c: &ClientCert) -> Result<(), Error> {
        write_private(&self.path("client-node.key"), c.key_pem.as_bytes(), 0o600)?;
        write_private(&self.path("client-node.crt"), c.cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    /// The servers learnt last time, so a restarted agent does not need the fixed address.
    pub fn servers(&self) -> Vec<String> {
        self.read("servers")
            .ok()
            .flatten()
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn save_servers(&self, servers: &[String]) -> Result<(), Error> {
        let mut text = servers.join("\n");
        text.push('\n');
        Ok(write_private(
            &self.path("servers"),
            text.as_bytes(),
            0o644,
        )?)
    }
}

/// Whether the certificate is due for renewal by the servers' rule ([`pki::renew_at`]: 90 days
/// before expiry, or with a third of a short life left), or cannot be read.
pub fn due_for_renewal(cert_pem: &str) -> bool {
    pki::renew_at(cert_pem).is_none_or(|t| t <= time::OffsetDateTime::now_utc())
}

pub use crate::bootstrap::pki::random_hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_and_node_id_persist() {
        let dir = tempfile::tempdir().unwrap();
        let f = Files::new(dir.path());
        let p = f.node_password().unwrap();
        assert_eq!(p.len(), 64);
        assert_eq!(f.node_password().unwrap(), p);
        let n = f.name_with_id("pi").unwrap();
        assert!(n.starts_with("pi-") && n.len() == 11, "{n}");
        assert_eq!(f.name_with_id("pi").unwrap(), n);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("agent/node-password"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn fresh_certificates_are_kept_and_foreign_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = Files::new(dir.path());
        let ca = crate::bootstrap::ClusterCa::generate().unwrap();
        let c = ca.issue_client("system:node:pi-1", "system:nodes").unwrap();
        f.save_client_cert(&ClientCert {
            cert_pem: c.cert_pem,
            key_pem: c.key_pem,
        })
        .unwrap();
        assert!(f.client_cert("pi-1").unwrap().is_some());
        assert!(f.client_cert("pi-2").unwrap().is_none());
        assert!(due_for_renewal("not a certificate"));
    }
}
