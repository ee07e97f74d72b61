//! Service account tokens: ES256 JSON Web Tokens with Kubernetes' claims, issued by the
//! TokenRequest API and checked when a client presents one as a bearer token.
//!
//! IO-free: [`Signer`] signs and verifies bytes against a clock passed in; whether the
//! service account (and the pod a token is bound to) still exists is the caller's check
//! ([`super::access`]). The key is the cluster's, kept sealed in the datastore
//! ([`crate::bootstrap::signing`]), so every server issues and accepts the same tokens.
//! Invariant: a token verifies only if its signature is this key's, its issuer is this
//! cluster's, one of its audiences is one the API accepts, and `now` lies in `[nbf, exp)`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    self, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
};
use serde::{Deserialize, Serialize};

/// Longest token accepted from a client: a token is a few hundred bytes; a header this long
/// is not one, and is refused before any decoding.
pub const MAX_TOKEN: usize = 8 * 1024;
/// Clock difference between servers a token's `nbf` and `iat` tolerate (its `exp` none).
const SKEW: i64 = 60;
/// The DER prefix of a P-256 public key's SubjectPublicKeyInfo; the uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a token was not accepted. The client only ever sees 401 `Unauthorized` (as from
/// Kubernetes); the cause is for the server's log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the token is not a JSON Web Token of three base64url parts")]
    Malformed,
    #[error("the token is not signed with ES256 by this cluster's service account key")]
    Signature,
    #[error("the token was issued by {0:?}, not by this cluster")]
    Issuer(String),
    #[error("the token is for none of the API's audiences")]
    Audience,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the service account key is unusable: {0}")]
    Key(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The claims of a service account token, as Kubernetes writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    #[serde(default)]
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Private,
}

/// The `kubernetes.io` claim: whose token it is, and what it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Private {
    pub namespace: String,
    pub serviceaccount: Bound,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Bound>,
}

/// An object a token names, by name and uid (the uid tells a re-created object apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub name: String,
    pub uid: String,
}

/// The cluster's token key, its id, and what the API accepts.
pub struct Signer {
    key: EcdsaKeyPair,
    /// `kid` in every token header: the key's SHA-256 fingerprint, as Kubernetes computes it.
    kid: String,
    /// `https://kubernetes.default.svc.<cluster-domain>`: the issuer, and the API's first audience.
    pub issuer: String,
    /// The audiences a token must name one of to reach the API (the first is the default
    /// audience of a TokenRequest that names none).
    pub audiences: Vec<String>,
}

// === impl Signer ===

impl Signer {
    /// A new PKCS#8 key (the cluster's is made by [`crate::bootstrap`]).
    #[cfg(test)]
    pub fn generate_key() -> Result<Vec<u8>> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| Error::Key("cannot generate a P-256 key".into()))
    }

    /// `pkcs8`: the sealed key; `cluster_domain`: `--cluster-domain`.
    pub fn new(pkcs8: &[u8], cluster_domain: &str) -> Result<Signer> {
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| Error::Key(e.to_string()))?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        let issuer = format!("https://kubernetes.default.svc.{cluster_domain}");
        Ok(Signer {
            key,
            kid,
            audiences: vec![issuer.clone(), "keelson".into()],
            issuer,
        })
    }

    #[cfg(test)]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` (the caller fills them; see [`Signer::claims`]).
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid});
        let body = serde_json::to_vec(claims).map_err(|e| Error::Key(e.to_string()))?;
        let mut out = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body)
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), out.as_bytes())
            .map_err(|_| Error::Key("signing failed".into()))?;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(out)
    }

    /// The claims of a token for `namespace/account` valid from `now` for `seconds`.
    pub fn claims(
        &self,
        namespace: &str,
        account: Bound,
        pod: Option<Bound>,
        audiences: Vec<String>,
        now: i64,
        seconds: i64,
    ) -> Claims {
        Claims {
            iss: self.issuer.clone(),
            sub: format!("system:serviceaccount:{namespace}:{}", account.name),
            aud: if audiences.is_empty() {
                self.audiences.iter().take(1).cloned().collect()
            } else {
                audiences
            },
            exp: now + seconds,
            iat: now,
            nbf: now,
            jti: super::registry::new_uid(),
            kubernetes: Private {
                namespace: namespace.to_owned(),
                serviceaccount: account,
                pod,
            },
        }
    }

    /// The claims of `token` if this key signed it for one of the API's audiences and it is
    /// valid at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims> {
        if token.len() > MAX_TOKEN {
            return Err(Error::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Malformed);
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| Error::Malformed);
        let head: serde_json::Value =
            serde_json::from_slice(&decode(header)?).map_err(|_| Error::Malformed)?;
        // Only ES256: an `alg` of `none` or HS256 never reaches a verifier.
        if head.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
            return Err(Error::Signature);
        }
        let signed = &token[..header.len() + 1 + body.len()];
        let public = self.key.public_key().as_ref();
        signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
            .verify(signed.as_bytes(), &decode(sig)?)
            .map_err(|_| Error::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(body)?).map_err(|_| Error::Malformed)?;
        if claims.iss != self.issuer {
            return Err(Error::Issuer(claims.iss));
        }
        if !claims.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(Error::Audience);
        }
        if now >= claims.exp {
            return Err(Error::Expired);
        }
        if now + SKEW < claims.nbf || now + SKEW < claims.iat {
            return Err(Error::NotYetValid);
        }
        Ok(claims)
    }
}

/// A field that may be one string or a list (`aud`, RFC 7519 §4.1.3; list keys of files
/// people write, e.g. firstboot's `node-label`); null is the empty list.
pub(crate) fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(&Signer::generate_key().unwrap(), "cluster.local").unwrap()
    }

    fn account() -> Bound {
        Bound {
            name: "robot".into(),
            uid: "u-1".into(),
        }
    }

    #[test]
    fn a_signed_token_verifies_with_kubernetes_claims() {
        let s = signer();
        let claims = s.claims("team", account(), None, vec![], 1000, 3600);
        let token = s.sign(&claims).unwrap();
        let got = s.verify(&token, 1001).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.sub, "system:serviceaccount:team:robot");
        assert_eq!(got.iss, "https://kubernetes.default.svc.cluster.local");
        assert_eq!(
            got.aud,
            vec!["https://kubernetes.default.svc.cluster.local"]
        );
        // The header names the key.
        let head = URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        let head: serde_json::Value = serde_json::from_slice(&head).unwrap();
        assert_eq!(head["alg"], "ES256");
        assert_eq!(head["kid"], s.kid());
        // The payload carries the `kubernetes.io` claim by that name.
        let body = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["kubernetes.io"]["serviceaccount"]["uid"], "u-1");
        assert!(body["kubernetes.io"].get("pod").is_none());
    }

    #[test]
    fn expired_early_tampered_foreign_and_other_audience_tokens_are_refused() {
        let s = signer();
        let token = s
            .sign(&s.claims("team", account(), None, vec![], 1000, 600))
            .unwrap();
        assert_eq!(s.verify(&token, 1600), Err(Error::Expired));
        assert_eq!(s.verify(&token, 1599).map(|_| ()), Ok(()));
        assert_eq!(s.verify(&token, 1000 - SKEW - 1), Err(Error::NotYetValid));

        // A changed payload (another account) under the old signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged = s.claims("kube-system", account(), None, vec![], 1000, 600);
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(s.verify(&parts.join("."), 1001), Err(Error::Signature));

        // Another cluster's key.
        let other = signer();
        let theirs = other
            .sign(&other.claims("team", account(), None, vec![], 1000, 600))
            .unwrap();
        assert_eq!(s.verify(&theirs, 1001), Err(Error::Signature));

        // `alg: none` with no signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(s.verify(&none, 1001), Err(Error::Signature));

        // A token for another audience is not one for the API.
        let vault = s
            .sign(&s.claims("team", account(), None, vec!["vault".into()], 1000, 600))
            .unwrap();
        assert_eq!(s.verify(&vault, 1001), Err(Error::Audience));
        let api = s
            .sign(&s.claims(
                "team",
                account(),
                None,
                vec!["vault".into(), "keelson".into()],
                1000,
                600,
            ))
            .unwrap();
        assert!(s.verify(&api, 1001).is_ok());

        for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(MAX_TOKEN + 1)] {
            assert_eq!(
                s.verify(garbage, 1001).map(|_| ()),
                Err(Error::Malformed),
                "{garbage:.20}"
            );
        }
    }

    #[test]
    fn the_same_key_verifies_on_another_server() {
        let key = Signer::generate_key().unwrap();
        let a = Signer::new(&key, "cluster.local").unwrap();
        let b = Signer::new(&key, "cluster.local").unwrap();
        assert_eq!(a.kid(), b.kid());
        let token = a
            .sign(&a.claims("team", account(), None, vec![], 1000, 600))
            .unwrap();
        assert!(b.verify(&token, 1001).is_ok());
        // A server with another cluster domain is another issuer.
        let c = Signer::new(&key, "edge.lan").unwrap();
        assert!(matches!(c.verify(&token, 1001), Err(Error::Issuer(_))));
    }
}
