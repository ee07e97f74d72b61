//! The cluster CA and the certificates it issues (ECDSA P-256, made with rcgen).
//!
//! The CA's key and certificate live only in the sealed cluster data; serving certificates
//! are issued afresh at every start (so a changed `--tls-san` or node IP takes effect), and
//! client certificates carry the Kubernetes identity: CN is the user, O the groups.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the stored CA is unusable: {0}")]
    StoredCa(String),
    #[error("{0:?} is not a valid DNS name for a certificate")]
    BadName(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const CA_VALIDITY: Duration = Duration::days(3650);
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// Certificates are back-dated so boards with slightly wrong clocks accept them.
const BACKDATE: Duration = Duration::hours(1);

/// A PEM certificate with its PEM private key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct ClusterCa {
    pub common_name: String,
    pub cert_pem: String,
    key: KeyPair,
}

// === impl ClusterCa ===

impl ClusterCa {
    pub fn generate() -> Result<ClusterCa> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let common_name = format!("keelson-ca@{}", OffsetDateTime::now_utc().unix_timestamp());
        let cert = ca_params(&common_name)?.self_signed(&key)?;
        Ok(ClusterCa {
            common_name,
            cert_pem: cert.pem(),
            key,
        })
    }

    pub fn from_parts(common_name: String, cert_pem: String, key_pem: &str) -> Result<ClusterCa> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::StoredCa(e.to_string()))?;
        Ok(ClusterCa {
            common_name,
            cert_pem,
            key,
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn cert_der(&self) -> Result<Vec<u8>> {
        pem_to_der(&self.cert_pem)
            .ok_or_else(|| Error::StoredCa("CA certificate is not PEM".into()))
    }

    /// A serving certificate for the API, valid for every DNS name and IP given.
    pub fn issue_serving(&self, dns: &[String], ips: &[IpAddr]) -> Result<Issued> {
        let mut params = leaf_params("keelson-apiserver")?;
        for name in dns {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|_| Error::BadName(name.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate for `user` in `group`. One group only: rcgen keeps one value
    /// per attribute type, and keelson's identities (admin, nodes) each need one.
    pub fn issue_client(&self, user: &str, group: &str) -> Result<Issued> {
        let mut params = leaf_params(user)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A node's client certificate (`system:node:<name>` in `system:nodes`), bound to one
    /// registration of that name: `generation` goes in the subject's OU, and the API server
    /// refuses the certificate once the name's registration has another generation (the node
    /// was deleted and the name taken again).
    pub fn issue_node_client(&self, user: &str, group: &str, generation: &str) -> Result<Issued> {
        let mut params = leaf_params(user)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, group);
        params.distinguished_name.push(
            DnType::OrganizationalUnitName,
            format!("{NODE_GENERATION_PREFIX}{generation}"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issuer = Issuer::new(ca_params(&self.common_name)?, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// How a node certificate's OU names the registration it belongs to.
/// The group of node client certificates (Kubernetes' NodeRestriction names it so).
pub const NODES_GROUP: &str = "system:nodes";
/// A node client certificate's user is this and the node's name.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// Random bytes as lower-case hex (registration generations, websocket keys).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("system random number generator failed");
    hex::encode(buf)
}

pub const NODE_GENERATION_PREFIX: &str = "keelson-node-generation:";

/// The CA's parameters. Rebuilt identically from the common name to sign with a stored CA:
/// the issuer name and key identifier are all a child certificate takes from them.
fn ca_params(common_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn leaf_params(common_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator failed");
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&bytes)
}

/// The DER body of the first PEM block, if any.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_restored_ca_signs_certificates_rustls_accepts() {
        let ca = ClusterCa::generate().unwrap();
        let restored =
            ClusterCa::from_parts(ca.common_name.clone(), ca.cert_pem.clone(), &ca.key_pem())
                .unwrap();
        let leaf = restored
            .issue_serving(&["localhost".into()], &["127.0.0.1".parse().unwrap()])
            .unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().unwrap().into()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let der = pem_to_der(&leaf.cert_pem).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&der.into(), &[], &"localhost".try_into().unwrap(), &[], now)
            .unwrap();
    }
}
