//! Who is calling, and may they: client-certificate authentication and the fixed rules for
//! `system:masters` and nodes (bearer tokens, impersonation and RBAC for everyone else are
//! [`super::access`]'s).
//!
//! rustls has already verified the chain against the cluster CA before a request is seen;
//! here we only read the subject (CN = user, O = groups) from the verified certificate, as the
//! Kubernetes API server does. The DER reader is minimal and bounds-checked: a certificate it
//! cannot read is treated as anonymous, never as a panic.

use super::status::ApiError;
use crate::bootstrap::pki::NODE_GENERATION_PREFIX;
use crate::bootstrap::pki::read_tlv;

pub const MASTERS: &str = "system:masters";
/// The group of node client certificates, and the prefix of their user names (Kubernetes's).
pub use crate::bootstrap::pki::{NODE_USER_PREFIX, NODES_GROUP};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User {
        name: String,
        groups: Vec<String>,
        /// For node certificates: the registration of the name they were issued for (see
        /// [`crate::bootstrap::pki::ClusterCa::issue_node_client`]); `None` in certificates
        /// issued before registrations had generations, and in every other certificate.
        generation: Option<String>,
    },
}

impl Identity {
    pub fn from_certificate(der: &[u8]) -> Identity {
        match subject(der) {
            Some(Subject {
                cn: Some(name),
                orgs: groups,
                generation,
            }) => Identity::User {
                name,
                groups,
                generation,
            },
            _ => Identity::Anonymous,
        }
    }

    /// The node a node client certificate (`system:node:<name>` in `system:nodes`) is for.
    pub fn node_name(&self) -> Option<&str> {
        match self {
            Identity::User { name, groups, .. } if groups.iter().any(|g| g == NODES_GROUP) => name
                .strip_prefix(NODE_USER_PREFIX)
                .filter(|n| !n.is_empty()),
            _ => None,
        }
    }

    /// `what` is the request path. Admins may do anything; a node may read discovery, read or
    /// update its own Node object (and its status), and update pod status (which
    /// [`super::admission`] allows only for pods bound to it), nothing else.
    pub fn authorize(&self, verb: &str, what: &str) -> Result<(), ApiError> {
        match self {
            Identity::Anonymous => Err(ApiError::Unauthorized),
            Identity::User { groups, .. } if groups.iter().any(|g| g == MASTERS) => Ok(()),
            Identity::User { name, .. } => {
                if let Some(node) = self.node_name() {
                    let discovery = matches!(what, "/api" | "/apis" | "/api/v1" | "/version");
                    let own = what
                        .strip_prefix("/api/v1/nodes/")
                        .map(|rest| rest.strip_suffix("/status").unwrap_or(rest))
                        .is_some_and(|n| n == node);
                    let pod_status = what
                        .strip_prefix("/api/v1/namespaces/")
                        .and_then(|rest| rest.strip_suffix("/status"))
                        .is_some_and(|rest| {
                            matches!(rest.split('/').collect::<Vec<_>>()[..], [ns, "pods", pod] if !ns.is_empty() && !pod.is_empty())
                        });
                    let allowed = match verb {
                        "get" => discovery || own,
                        "update" | "patch" => own || pod_status,
                        _ => false,
                    };
                    if allowed {
                        return Ok(());
                    }
                    return Err(ApiError::Forbidden(format!(
                        "{what} is forbidden: User \"{name}\" cannot {verb} it: a node may only read and update its own Node object and write the status of pods bound to it"
                    )));
                }
                Err(ApiError::Forbidden(format!(
                    "{what} is forbidden: User \"{name}\" cannot {verb} it"
                )))
            }
        }
    }

    /// The registration generation a node certificate carries.
    pub fn generation(&self) -> Option<&str> {
        match self {
            Identity::User { generation, .. } => generation.as_deref(),
            Identity::Anonymous => None,
        }
    }
}

/// What the API reads from a certificate's subject.
struct Subject {
    cn: Option<String>,
    orgs: Vec<String>,
    generation: Option<String>,
}

fn subject(der: &[u8]) -> Option<Subject> {
    let (_, cert, _) = read_tlv(der)?; // Certificate SEQUENCE
    let (_, tbs, _) = read_tlv(cert)?; // TBSCertificate SEQUENCE
    let mut rest = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    let (tag, _, r) = read_tlv(rest)?;
    rest = if tag == 0xa0 { read_tlv(r)?.2 } else { r };
    for _ in 0..3 {
        rest = read_tlv(rest)?.2;
    }
    let (_, name, _) = read_tlv(rest)?;
    let (mut cn, mut orgs, mut generation) = (None, Vec::new(), None);
    let mut rdns = name;
    while !rdns.is_empty() {
        let (_, set, r) = read_tlv(rdns)?;
        rdns = r;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (_, atv, r) = read_tlv(atvs)?;
            atvs = r;
            let (_, oid, r) = read_tlv(atv)?;
            let (_, value, _) = read_tlv(r)?;
            let value = String::from_utf8(value.to_vec()).ok()?;
            match oid {
                [0x55, 0x04, 0x03] => cn = Some(value),
                [0x55, 0x04, 0x0a] => orgs.push(value),
                [0x55, 0x04, 0x0b] => {
                    if let Some(g) = value.strip_prefix(NODE_GENERATION_PREFIX) {
                        generation = Some(g.to_owned());
                    }
                }
                _ => {}
            }
        }
    }
    Some(Subject {
        cn,
        orgs,
        generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::pki::{ClusterCa, pem_to_der};

    #[test]
    fn reads_user_and_groups_from_an_issued_certificate() {
        let ca = ClusterCa::generate().unwrap();
        let c = ca.issue_client("system:admin", "system:masters").unwrap();
        let id = Identity::from_certificate(&pem_to_der(&c.cert_pem).unwrap());
        assert_eq!(
            id,
            Identity::User {
                name: "system:admin".into(),
                groups: vec!["system:masters".into()],
                generation: None,
            }
        );
        assert!(id.authorize("list", "nodes").is_ok());
    }

    #[test]
    fn reads_the_registration_generation_of_a_node_certificate() {
        let ca = ClusterCa::generate().unwrap();
        let c = ca
            .issue_node_client("system:node:pi-1", NODES_GROUP, "5f0c")
            .unwrap();
        let id = Identity::from_certificate(&pem_to_der(&c.cert_pem).unwrap());
        assert_eq!(id.node_name(), Some("pi-1"));
        assert_eq!(id.generation(), Some("5f0c"));
        let old = ca.issue_client("system:node:pi-1", NODES_GROUP).unwrap();
        let id = Identity::from_certificate(&pem_to_der(&old.cert_pem).unwrap());
        assert_eq!(id.generation(), None);
    }

    #[test]
    fn a_node_may_touch_only_its_own_node() {
        let ca = ClusterCa::generate().unwrap();
        let c = ca.issue_client("system:node:pi-1", NODES_GROUP).unwrap();
        let id = Identity::from_certificate(&pem_to_der(&c.cert_pem).unwrap());
        assert_eq!(id.node_name(), Some("pi-1"));
        assert!(id.authorize("get", "/api/v1/nodes/pi-1").is_ok());
        assert!(id.authorize("patch", "/api/v1/nodes/pi-1/status").is_ok());
        assert!(id.authorize("get", "/api/v1").is_ok());
        // Pod status: admission then allows it only for pods bound to this node.
        assert!(
            id.authorize("patch", "/api/v1/namespaces/default/pods/web-1/status")
                .is_ok()
        );
        for (verb, path) in [
            ("patch", "/api/v1/namespaces/default/pods/web-1"),
            ("delete", "/api/v1/namespaces/default/pods/web-1"),
            ("patch", "/api/v1/namespaces/default/services/web/status"),
            ("get", "/api/v1/nodes/pi-2"),
            ("patch", "/api/v1/nodes/pi-2"),
            ("delete", "/api/v1/nodes/pi-1"),
            ("get", "/api/v1/nodes"),
            ("get", "/api/v1/namespaces/default/pods"),
            ("update", "/api/v1/nodes/pi-1x"),
        ] {
            assert!(
                matches!(id.authorize(verb, path), Err(ApiError::Forbidden(_))),
                "{verb} {path}"
            );
        }
    }

    #[test]
    fn garbage_is_anonymous_and_others_are_forbidden() {
        assert_eq!(
            Identity::from_certificate(&[0x30, 0x85, 1, 2]),
            Identity::Anonymous
        );
        assert_eq!(Identity::from_certificate(&[]), Identity::Anonymous);
        assert!(matches!(
            Identity::Anonymous.authorize("get", "x"),
            Err(ApiError::Unauthorized)
        ));
        let u = Identity::User {
            name: "bob".into(),
            groups: vec![],
            generation: None,
        };
        assert!(matches!(
            u.authorize("get", "nodes"),
            Err(ApiError::Forbidden(_))
        ));
    }
}
