//! A Registry HTTP API v2 client for pulling: manifests and blobs of one repository on one
//! endpoint, with anonymous, basic and bearer-token authentication.
//!
//! One request per connection (a pull is a handful of requests; no pool to bound or leak).
//! Every step has a timeout: connecting, the TLS handshake, the answer's headers, and each
//! chunk of a body ([`IDLE_TIMEOUT`]), so a registry that stops sending fails the pull instead
//! of hanging it. Bodies read whole are bounded by the caller's limit. Redirects (blob stores
//! behind registries) are followed up to [`MAX_REDIRECTS`] times; credentials are dropped when
//! a redirect leaves the endpoint's host.
//!
//! TLS trusts the public roots (webpki-roots, already linked for the datastore drivers) plus
//! the endpoint's `ca_file` from `registries.yaml`. Only `http://` endpoints (and their token
//! servers) are spoken to in plain text.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::PullError;
use super::auth::{self, Challenge, Credentials};
use super::digest::Digest;
use super::manifest;
use super::registries::{Candidate, HostConfig};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// For the TLS handshake and for the answer's headers.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between two chunks of a body.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a bounded body (manifest, config, token) may take in all, so a registry dripping
/// a byte every few seconds cannot hold a pull for hours.
pub const SMALL_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;
/// Token answers are a few KiB; error bodies are only shown in part.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
const MAX_ERROR_BODY: usize = 4096;
const USER_AGENT: &str = concat!("keelson/", env!("CARGO_PKG_VERSION"));

/// A client for one repository on one endpoint.
pub struct Client {
    candidate: Candidate,
    tls: Arc<rustls::ClientConfig>,
    credentials: Option<Credentials>,
    /// The `Authorization` value earned by the last challenge; reused until a 401.
    authorization: Mutex<Option<HeaderValue>>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

// === impl Client ===

impl Client {
    pub fn new(
        candidate: Candidate,
        credentials: Option<Credentials>,
    ) -> Result<Client, PullError> {
        let tls = tls_config(&candidate.config).map_err(|why| PullError::Config {
            registry: candidate.endpoint.to_string(),
            why,
        })?;
        Ok(Client {
            candidate,
            tls,
            credentials,
            authorization: Mutex::new(None),
        })
    }

    /// The endpoint, as named in errors and logs.
    pub fn registry(&self) -> String {
        self.candidate.endpoint.to_string()
    }

    /// Fetches a manifest or index by tag or digest: `(content type, bytes)`.
    pub async fn manifest(&self, reference: &str) -> Result<(Option<String>, Bytes), PullError> {
        let path = format!("/v2/{}/manifests/{reference}", self.candidate.repository);
        let resp = self
            .get(
                &path,
                Some(manifest::ACCEPT),
                &format!("manifest {reference}"),
            )
            .await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = self.read_body(resp, manifest::MAX_MANIFEST_BYTES).await?;
        Ok((content_type, body))
    }

    /// Starts fetching a blob; the caller streams the body with [`Client::next_chunk`].
    pub async fn blob(&self, digest: &Digest) -> Result<Response<Incoming>, PullError> {
        let path = format!("/v2/{}/blobs/{digest}", self.candidate.repository);
        self.get(&path, None, &format!("blob {digest}")).await
    }

    /// Reads the next chunk of a streamed body; `None` at its end.
    pub async fn next_chunk(&self, body: &mut Incoming) -> Result<Option<Bytes>, PullError> {
        loop {
            let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
                .await
                .map_err(|_| self.network(format!("no data for {}s", IDLE_TIMEOUT.as_secs())))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(self.network(format!("download cut off: {e}"))),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Reads a whole body of at most `limit` bytes.
    pub async fn read_body(
        &self,
        resp: Response<Incoming>,
        limit: usize,
    ) -> Result<Bytes, PullError> {
        if let Some(len) = content_length(&resp)
            && len > limit as u64
        {
            return Err(self.bad(format!(
                "answer of {len} bytes is over the {limit}-byte limit"
            )));
        }
        let mut body = resp.into_body();
        let read = async {
            let mut out = Vec::new();
            while let Some(chunk) = self.next_chunk(&mut body).await? {
                if out.len() + chunk.len() > limit {
                    return Err(self.bad(format!("answer is over the {limit}-byte limit")));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Bytes::from(out))
        };
        tokio::time::timeout(SMALL_BODY_TIMEOUT, read)
            .await
            .map_err(|_| {
                self.network(format!(
                    "an answer of at most {limit} bytes took over {}s",
                    SMALL_BODY_TIMEOUT.as_secs()
                ))
            })?
    }

    /// GET with authentication and redirects; a non-success status becomes the matching
    /// error.
    async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response<Incoming>, PullError> {
        let url = self.candidate.endpoint.url(path);
        let mut retried_auth = false;
        loop {
            let auth = self.authorization.lock().map(|a| a.clone()).unwrap_or(None);
            let resp = self.follow(&url, accept, auth.as_ref()).await?;
            match resp.status() {
                s if s.is_success() => return Ok(resp),
                StatusCode::UNAUTHORIZED if !retried_auth => {
                    retried_auth = true;
                    let challenge = resp
                        .headers()
                        .get(header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(auth::parse_challenge);
                    let value = self.answer(challenge).await?;
                    if let Ok(mut a) = self.authorization.lock() {
                        *a = Some(value);
                    }
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let body = self.error_body(resp).await;
                    return Err(PullError::Unauthorized {
                        registry: self.registry(),
                        why: format!(
                            "{what}: {}",
                            if body.is_empty() {
                                "access denied".into()
                            } else {
                                body
                            }
                        ),
                    });
                }
                StatusCode::NOT_FOUND => {
                    return Err(PullError::NotFound {
                        registry: self.registry(),
                        what: format!("{}: {what}", self.candidate.repository),
                    });
                }
                status => {
                    let body = self.error_body(resp).await;
                    let err = format!(
                        "{what}: HTTP {status}{}{body}",
                        if body.is_empty() { "" } else { ": " }
                    );
                    return Err(
                        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                            self.network(err)
                        } else {
                            self.bad(err)
                        },
                    );
                }
            }
        }
    }

    /// Sends a GET, following redirects.
    async fn follow(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, PullError> {
        let mut uri: Uri = url
            .parse()
            .map_err(|_| self.bad(format!("bad URL {url:?}")))?;
        let origin = uri.authority().map(|a| a.as_str().to_owned());
        for _ in 0..=MAX_REDIRECTS {
            let same_host = uri.authority().map(|a| a.as_str().to_owned()) == origin;
            let auth = auth.filter(|_| same_host);
            let resp = self.send(Method::GET, &uri, accept, auth, None).await?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| self.bad("a redirect without Location".into()))?;
            uri = resolve(&uri, location)
                .ok_or_else(|| self.bad(format!("bad redirect to {location:?}")))?;
        }
        Err(self.bad(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// The `Authorization` answering `challenge`.
    async fn answer(&self, challenge: Option<Challenge>) -> Result<HeaderValue, PullError> {
        let unauthorized = |why: &str| PullError::Unauthorized {
            registry: self.registry(),
            why: why.to_owned(),
        };
        match challenge {
            None => Err(unauthorized(
                "the registry refused without saying how to log in",
            )),
            Some(Challenge::Basic) => match &self.credentials {
                Some(Credentials::Basic { username, password }) => Ok(basic(username, password)),
                _ => Err(unauthorized(
                    "the registry wants a user name and password (registries.yaml `configs` or an imagePullSecret)",
                )),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope
                    .unwrap_or_else(|| format!("repository:{}:pull", self.candidate.repository));
                let token = self.token(&realm, service.as_deref(), &scope).await?;
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    self.bad("the token server answered a token that is not a header value".into())
                })
            }
        }
    }

    /// Gets a bearer token from the token server (Docker's token protocol, or OAuth2 with a
    /// refresh token for identity tokens).
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, PullError> {
        let realm_uri: Uri = realm
            .parse()
            .map_err(|_| self.bad(format!("token realm {realm:?} is not a URL")))?;
        if !matches!(realm_uri.scheme_str(), Some("https" | "http")) {
            return Err(self.bad(format!("token realm {realm:?} is not http(s)")));
        }
        // Built into a String before any await: the serializer is not Send.
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(s) = service {
                query.append_pair("service", s);
            }
            query.append_pair("scope", scope);
            if let Some(Credentials::IdentityToken(t)) = &self.credentials {
                query.append_pair("grant_type", "refresh_token");
                query.append_pair("refresh_token", t);
                query.append_pair("client_id", "keelson");
            }
            query.finish()
        };
        let resp = match &self.credentials {
            Some(Credentials::IdentityToken(_)) => {
                self.send(Method::POST, &realm_uri, None, None, Some(query))
                    .await?
            }
            creds => {
                let sep = if realm.contains('?') { '&' } else { '?' };
                let uri: Uri = format!("{realm}{sep}{query}")
                    .parse()
                    .map_err(|_| self.bad("bad token URL".into()))?;
                let auth = match creds {
                    Some(Credentials::Basic { username, password }) => {
                        Some(basic(username, password))
                    }
                    _ => None,
                };
                self.send(Method::GET, &uri, None, auth.as_ref(), None)
                    .await?
            }
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(PullError::Unauthorized {
                registry: self.registry(),
                why: format!("the token server {realm} refused the credentials ({status})"),
            });
        }
        if !status.is_success() {
            return Err(self.bad(format!("the token server {realm} answered {status}")));
        }
        let body = self.read_body(resp, MAX_TOKEN_BYTES).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let a: Answer = serde_json::from_slice(&body)
            .map_err(|e| self.bad(format!("the token server {realm} answered no JSON: {e}")))?;
        a.token
            .or(a.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.bad(format!("the token server {realm} answered no token")))
    }

    /// One request on a fresh connection; returns once the headers arrived.
    async fn send(
        &self,
        method: Method,
        uri: &Uri,
        accept: Option<&str>,
        auth: Option<&HeaderValue>,
        form: Option<String>,
    ) -> Result<Response<Incoming>, PullError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            // Plain HTTP only where the endpoint was written http:// (and for what it
            // redirects to or names as its token server).
            Some("http") if self.candidate.endpoint.plain_http => false,
            Some("http") => {
                return Err(self.bad(format!(
                    "refusing plain HTTP to {uri} for an https endpoint"
                )));
            }
            _ => return Err(self.bad(format!("unsupported URL {uri}"))),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| self.bad(format!("no host in {uri}")))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| self.network(format!("connecting to {authority} timed out")))?
            .map_err(|e| self.network(format!("cannot connect to {authority}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if tls {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| self.bad(format!("{host:?} is not a host name")))?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
            let stream = tokio::time::timeout(RESPONSE_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| self.network(format!("TLS handshake with {authority} timed out")))?
                .map_err(|e| self.network(format!("TLS with {authority} failed: {e}")))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(header::USER_AGENT, USER_AGENT);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        let body = match form {
            Some(f) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Full::new(Bytes::from(f))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| self.bad(e.to_string()))?;
        let work = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| self.network(format!("{authority}: {e}")))?;
            // Ends when the response body is read or dropped.
            tokio::spawn(conn);
            sender.send_request(req).await.map_err(|e| {
                if e.is_parse() {
                    self.bad(format!("{authority} does not speak HTTP: {e}"))
                } else {
                    self.network(format!("{authority}: {e}"))
                }
            })
        };
        tokio::time::timeout(RESPONSE_TIMEOUT, work)
            .await
            .map_err(|_| {
                self.network(format!(
                    "{authority} did not answer within {}s",
                    RESPONSE_TIMEOUT.as_secs()
                ))
            })?
    }

    /// The start of an error answer's body, for messages.
    async fn error_body(&self, resp: Response<Incoming>) -> String {
        let read = Limited::new(resp.into_body(), MAX_ERROR_BODY).collect();
        match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(Ok(b)) => {
                let b = b.to_bytes();
                // Registries answer {"errors":[{"code":…,"message":…}]}; show the messages.
                #[derive(serde::Deserialize)]
                struct Errors {
                    errors: Vec<Item>,
                }
                #[derive(serde::Deserialize)]
                struct Item {
                    #[serde(default)]
                    code: String,
                    #[serde(default)]
                    message: String,
                }
                match serde_json::from_slice::<Errors>(&b) {
                    Ok(e) => e
                        .errors
                        .iter()
                        .map(|i| format!("{} {}", i.code, i.message).trim().to_owned())
                        .collect::<Vec<_>>()
                        .join("; "),
                    Err(_) => String::from_utf8_lossy(&b)
                        .chars()
                        .take(200)
                        .collect::<String>()
                        .trim()
                        .to_owned(),
                }
            }
            _ => String::new(),
        }
    }

    fn network(&self, why: String) -> PullError {
        PullError::Network {
            registry: self.registry(),
            why,
        }
    }

    fn bad(&self, why: String) -> PullError {
        PullError::BadResponse {
            registry: self.registry(),
            why,
        }
    }
}

/// The declared length of a body, if any.
pub fn content_length<B>(resp: &Response<B>) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn basic(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    // Invariant: base64 is always a valid header value.
    HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or(HeaderValue::from_static("Basic"))
}

/// Resolves a `Location` against the URL it answered.
fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    if location.starts_with('/') && !location.starts_with("//") {
        let scheme = base.scheme_str()?;
        let authority = base.authority()?;
        return format!("{scheme}://{authority}{location}").parse().ok();
    }
    None
}

/// Public roots plus the endpoint's CA; its client certificate; or no verification at all
/// when `insecure_skip_verify` says so.
fn tls_config(config: &HostConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if config.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::agent::https::AcceptAny(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &config.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!(
                    "ca_file {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut tls = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let cert_pem =
                std::fs::read(cert).map_err(|e| format!("cert_file {}: {e}", cert.display()))?;
            let certs: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut cert_pem.as_slice())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("cert_file {}: {e}", cert.display()))?;
            let key_pem =
                std::fs::read(key).map_err(|e| format!("key_file {}: {e}", key.display()))?;
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .map_err(|e| format!("key_file {}: {e}", key.display()))?
                .ok_or_else(|| format!("key_file {} holds no private key", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
        _ => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_absolute_and_path_locations_only() {
        let base: Uri = "https://reg.example:5000/v2/a/blobs/x".parse().unwrap();
        assert_eq!(
            resolve(&base, "/other").unwrap().to_string(),
            "https://reg.example:5000/other"
        );
        assert_eq!(
            resolve(&base, "https://cdn.example/b?sig=1")
                .unwrap()
                .to_string(),
            "https://cdn.example/b?sig=1"
        );
        assert!(resolve(&base, "//evil.example/x").is_none());
        assert!(resolve(&base, "file:///etc/passwd").is_none());
    }

    #[test]
    fn a_missing_ca_file_is_a_config_error() {
        let config = HostConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..HostConfig::default()
        };
        assert!(
            tls_config(&config)
                .unwrap_err()
                .contains("/nonexistent/ca.pem")
        );
        assert!(tls_config(&HostConfig::default()).is_ok());
    }
}
