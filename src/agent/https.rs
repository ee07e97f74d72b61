//! The agent's HTTPS client: one request per connection, or one websocket upgrade.
//!
//! Deliberately small: the agent talks to keelson servers only, so there is no pooling,
//! redirects or proxies. Every step has a timeout, so a dead server costs at most
//! [`CONNECT_TIMEOUT`] + [`REQUEST_TIMEOUT`] before the balancer moves on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::bootstrap::pki::pem_to_der;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body the agent reads (a join answer is a few KiB).
const MAX_RESPONSE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {why}")]
    Connect { addr: String, why: String },
    #[error("TLS with {addr} failed: {why}")]
    Tls { addr: String, why: String },
    /// The server's certificate failed verification (against the CA this client trusts, or
    /// for the address): it is not, or cannot prove it is, a server of the cluster.
    #[error("{addr}'s certificate is not trusted: {why}")]
    Untrusted { addr: String, why: String },
    #[error("request to {addr} failed: {why}")]
    Http { addr: String, why: String },
    #[error("bad TLS material: {0}")]
    Config(String),
}

/// Where and how to reach one server.
#[derive(Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub addr: String,
    /// Name (or IP) the server's certificate must carry.
    pub server_name: ServerName<'static>,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Target {
    pub fn new(addr: &str, tls: Arc<rustls::ClientConfig>) -> Result<Target, Error> {
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| Error::Config(format!("{host:?} is not a host name or IP address")))?;
        Ok(Target {
            addr: addr.to_owned(),
            server_name,
            tls,
        })
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| Error::Connect {
                addr: self.addr.clone(),
                why: "timed out".into(),
            })?
            .map_err(|e| Error::Connect {
                addr: self.addr.clone(),
                why: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(self.tls.clone());
        tokio::time::timeout(REQUEST_TIMEOUT, tls.connect(self.server_name.clone(), tcp))
            .await
            .map_err(|_| Error::Tls {
                addr: self.addr.clone(),
                why: "handshake timed out".into(),
            })?
            .map_err(|e| {
                let addr = self.addr.clone();
                let why = e.to_string();
                let rejected = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
                if rejected {
                    Error::Untrusted { addr, why }
                } else {
                    Error::Tls { addr, why }
                }
            })
    }

    fn http_err(&self, why: impl ToString) -> Error {
        Error::Http {
            addr: self.addr.clone(),
            why: why.to_string(),
        }
    }

    /// Sends `req` on a fresh connection and reads the whole (bounded) answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), Error> {
        self.send_within(req, REQUEST_TIMEOUT).await
    }

    /// [`Target::send`] for a request the server may take longer than [`REQUEST_TIMEOUT`] to
    /// answer (a key rotation re-encrypts every Secret before it answers).
    pub async fn send_within(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Error> {
        let io = TokioIo::new(self.connect().await?);
        let work = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| self.http_err(e))?;
            tokio::spawn(conn);
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.http_err(e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.http_err(e))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| self.http_err("timed out"))?
    }

    /// Opens a websocket at `path`; returns the upgraded stream or the refusing status.
    pub async fn upgrade(
        &self,
        path: &str,
    ) -> Result<Result<TokioIo<hyper::upgrade::Upgraded>, (StatusCode, Bytes)>, Error> {
        let io = TokioIo::new(self.connect().await?);
        let key = {
            use base64::Engine;
            let raw = crate::agent::credentials::random_hex(8);
            base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
        };
        let req = Request::get(path)
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::SEC_WEBSOCKET_VERSION, "13")
            .header(hyper::header::SEC_WEBSOCKET_KEY, &key)
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.http_err(e))?;
        let work = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| self.http_err(e))?;
            tokio::spawn(conn.with_upgrades());
            let resp: Response<_> = sender
                .send_request(req)
                .await
                .map_err(|e| self.http_err(e))?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                let status = resp.status();
                let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Ok(Err((status, body)));
            }
            let expected = crate::apiserver::upgrade::websocket_accept(key.as_bytes());
            let got = resp
                .headers()
                .get(hyper::header::SEC_WEBSOCKET_ACCEPT)
                .and_then(|v| v.to_str().ok());
            if got != Some(expected.as_str()) {
                return Err(self.http_err("the server's Sec-WebSocket-Accept is wrong"));
            }
            let upgraded = hyper::upgrade::on(resp)
                .await
                .map_err(|e| self.http_err(e))?;
            Ok(Ok(TokioIo::new(upgraded)))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .map_err(|_| self.http_err("timed out"))?
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, Error> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))
}

/// TLS trusting only the cluster CA, optionally presenting a client certificate.
pub fn tls_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = pem_to_der(ca_pem).ok_or_else(|| Error::Config("the cluster CA is not PEM".into()))?;
    roots
        .add(CertificateDer::from(ca))
        .map_err(|e| Error::Config(format!("the cluster CA: {e}")))?;
    let b = builder()?.with_root_certificates(roots);
    let mut config = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let cert = pem_to_der(cert)
                .ok_or_else(|| Error::Config("the client certificate is not PEM".into()))?;
            let key =
                pem_to_der(key).ok_or_else(|| Error::Config("the client key is not PEM".into()))?;
            b.with_client_auth_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(key.into()),
            )
            .map_err(|e| Error::Config(e.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS that accepts any certificate: only for fetching `/cacerts`, whose answer is then
/// checked against the CA hash in the token before anything is sent.
pub fn unverified_tls() -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate (still checking the handshake signatures); also used by
/// the image puller for registries configured with `insecure_skip_verify`.
#[derive(Debug)]
pub(crate) struct AcceptAny(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
