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
    /// How long the certificates it issues are valid ([`LEAF_VALIDITY`]; tests shorten it).
    leaf_validity: Duration,
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
            leaf_validity: LEAF_VALIDITY,
        })
    }

    pub fn from_parts(common_name: String, cert_pem: String, key_pem: &str) -> Result<ClusterCa> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::StoredCa(e.to_string()))?;
        Ok(ClusterCa {
            common_name,
            cert_pem,
            key,
            leaf_validity: LEAF_VALIDITY,
        })
    }

    /// A second handle on the same CA (the key is copied through its PEM form).
    pub fn try_clone(&self) -> Result<ClusterCa> {
        let mut ca = ClusterCa::from_parts(
            self.common_name.clone(),
            self.cert_pem.clone(),
            &self.key_pem(),
        )?;
        ca.leaf_validity = self.leaf_validity;
        Ok(ca)
    }

    /// Issues certificates valid for `validity` from now on (at least one second).
    pub fn set_leaf_validity(&mut self, validity: std::time::Duration) {
        self.leaf_validity = Duration::try_from(validity)
            .unwrap_or(LEAF_VALIDITY)
            .max(Duration::SECOND);
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
        let mut params = leaf_params("keelson-apiserver", self.leaf_validity)?;
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
        let mut params = leaf_params(user, self.leaf_validity)?;
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
        let mut params = leaf_params(user, self.leaf_validity)?;
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

/// A certificate is renewed this long before it expires at most (K3s's rule for its
/// certificates: renewed within 90 days of expiry)...
pub const RENEW_BEFORE: Duration = Duration::days(90);
/// ...and with a third of its life left at least, for short-lived ones.
const RENEW_SHARE: i64 = 3;
/// Expiry this close is logged as a warning (and shows on `/metrics` at any time).
pub const WARN_BEFORE: Duration = Duration::days(30);

/// When a certificate this CA issued should be renewed: [`RENEW_BEFORE`] before it expires,
/// or earlier for one whose whole life is shorter than three times that. `None` for a
/// certificate that cannot be read.
pub fn renew_at(cert_pem: &str) -> Option<OffsetDateTime> {
    let (before, after) = pem_to_der(cert_pem).and_then(|d| validity(&d))?;
    // Our certificates are back-dated; their life starts at issue.
    let life = (after - before - BACKDATE.whole_seconds()).max(1);
    let ahead = RENEW_BEFORE.whole_seconds().min(life / RENEW_SHARE);
    OffsetDateTime::from_unix_timestamp(after - ahead).ok()
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

fn leaf_params(common_name: &str, validity: Duration) -> Result<CertificateParams> {
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
    params.not_after = now + validity;
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
/// A certificate's notBefore and notAfter, as seconds since the Unix epoch.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert, _) = read_tlv(der)?;
    let (_, tbs, _) = read_tlv(cert)?;
    let (tag, _, r) = read_tlv(tbs)?;
    // Past the version (if present) and the serial number.
    let mut rest = if tag == 0xa0 { read_tlv(r)?.2 } else { r };
    for _ in 0..2 {
        rest = read_tlv(rest)?.2; // signature algorithm, issuer
    }
    let (_, validity, _) = read_tlv(rest)?;
    let (before_tag, before, after) = read_tlv(validity)?;
    let (after_tag, after, _) = read_tlv(after)?;
    Some((asn1_time(before_tag, before)?, asn1_time(after_tag, after)?))
}

/// An X.509 UTCTime or GeneralizedTime (the `Z` forms RFC 5280 requires), as Unix seconds.
fn asn1_time(tag: u8, time: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(time).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            // UTCTime: two-digit year, 1950..2049 (RFC 5280).
            let yy: i32 = digits.get(..2)?.parse().ok()?;
            (
                if yy >= 50 { 1900 + yy } else { 2000 + yy },
                digits.get(2..)?,
            )
        }
        0x18 => (digits.get(..4)?.parse().ok()?, digits.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| rest.get(r)?.parse::<u8>().ok();
    let month = time::Month::try_from(num(0..2)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(2..4)?).ok()?;
    let t = time::Time::from_hms(num(4..6)?, num(6..8)?, num(8..10)?).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// One DER TLV: (tag, contents, rest).
pub fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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

    #[test]
    fn certificates_are_renewed_90_days_ahead_or_with_a_third_of_a_short_life_left() {
        let mut ca = ClusterCa::generate().unwrap();
        let year = ca.issue_client("u", "g").unwrap();
        let after = |pem: &str| validity(&pem_to_der(pem).unwrap()).unwrap().1;
        assert_eq!(
            renew_at(&year.cert_pem).unwrap().unix_timestamp(),
            after(&year.cert_pem) - RENEW_BEFORE.whole_seconds()
        );
        ca.set_leaf_validity(std::time::Duration::from_secs(30));
        let short = ca.issue_serving(&[], &[]).unwrap();
        assert_eq!(
            renew_at(&short.cert_pem).unwrap().unix_timestamp(),
            after(&short.cert_pem) - 10
        );
        assert!(renew_at("not a certificate").is_none());
        // A clone issues with the same validity.
        let twin = ca.try_clone().unwrap().issue_client("u", "g").unwrap();
        assert!(after(&twin.cert_pem) - OffsetDateTime::now_utc().unix_timestamp() <= 31);
    }

    #[test]
    fn reads_the_expiry_of_an_issued_certificate() {
        let ca = ClusterCa::generate().unwrap();
        let c = ca.issue_client("system:node:pi-1", "system:nodes").unwrap();
        let after = validity(&pem_to_der(&c.cert_pem).unwrap()).unwrap().1;
        let in_a_year = time::OffsetDateTime::now_utc().unix_timestamp() + 365 * 86400;
        assert!((after - in_a_year).abs() < 120, "{after} vs {in_a_year}");
        assert_eq!(validity(&[0x30, 0x00]), None);
    }
}
