//! Who is calling, and may they: client-certificate authentication and the authorisation rule.
//!
//! rustls has already verified the chain against the cluster CA before a request is seen;
//! here we only read the subject (CN = user, O = groups) from the verified certificate, as the
//! Kubernetes API server does. The DER reader is minimal and bounds-checked: a certificate it
//! cannot read is treated as anonymous, never as a panic.

use super::status::ApiError;

pub const MASTERS: &str = "system:masters";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User { name: String, groups: Vec<String> },
}

impl Identity {
    pub fn from_certificate(der: &[u8]) -> Identity {
        match subject(der) {
            Some((Some(name), groups)) => Identity::User { name, groups },
            _ => Identity::Anonymous,
        }
    }

    /// The one rule so far: the API is for `system:masters`; anonymous callers get 401.
    pub fn authorize(&self, verb: &str, what: &str) -> Result<(), ApiError> {
        match self {
            Identity::Anonymous => Err(ApiError::Unauthorized),
            Identity::User { groups, .. } if groups.iter().any(|g| g == MASTERS) => Ok(()),
            Identity::User { name, .. } => Err(ApiError::Forbidden(format!(
                "{what} is forbidden: User \"{name}\" cannot {verb} it"
            ))),
        }
    }
}

/// (CN, [O...]) of a certificate's subject.
fn subject(der: &[u8]) -> Option<(Option<String>, Vec<String>)> {
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
    let (mut cn, mut orgs) = (None, Vec::new());
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
                _ => {}
            }
        }
    }
    Some((cn, orgs))
}

/// One DER TLV: (tag, contents, rest).
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
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
                groups: vec!["system:masters".into()]
            }
        );
        assert!(id.authorize("list", "nodes").is_ok());
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
        };
        assert!(matches!(
            u.authorize("get", "nodes"),
            Err(ApiError::Forbidden(_))
        ));
    }
}
