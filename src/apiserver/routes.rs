//! Request routing: from method, path, query and headers to a handler and a response.
//!
//! Every failure leaves here as a `Status` object with the matching HTTP code.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::Value;

use super::admission::Writer;
use super::auth::Identity;
use super::field_validation::{self, Directive, Write};
use super::patch;
use super::rbac::Attributes;
use super::registry::{Part, Propagation};
use super::resources::{CORE_V1, GroupVersion, ObjectRef, Resource};
use super::selector::Selector;
use super::status::{ApiError, Result};
use super::table::{self, Include};
use super::watch::{self, Start, WatchRequest};
use super::{Api, Body, apply, discovery, openapi, scale};

/// Largest request body accepted, as the Kubernetes API server (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// Longest a request body may take to arrive, so a client trickling bytes cannot hold a
/// connection (and its buffer) for long.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Who sent a request: the certificate's identity and the connection's source address.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub source: std::net::IpAddr,
}

/// What a path under `/api/v1` or `/apis/<group>/<version>` names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Collection {
        resource: &'static Resource,
        namespace: Option<String>,
    },
    Object {
        r: ObjectRef,
        part: Part,
    },
    /// The `autoscaling/v1 Scale` of an object with replicas.
    Scale(ObjectRef),
    /// `pods/<name>/binding`: the scheduler's one write of a pod's node.
    Binding(ObjectRef),
    /// `pods/<name>/eviction`: a deletion that honours disruption budgets.
    Eviction(ObjectRef),
    /// `pods/<name>/log`, `exec`, `attach`, `portforward`: served by the pod's node.
    PodStream(ObjectRef, super::podstreams::Subresource),
}

pub async fn handle(api: Arc<Api>, caller: &Caller, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let api_for_errors = api.clone();
    let request = super::metrics::Request::of(
        &method,
        &path,
        req.uri().query(),
        super::metrics::Request::is_apply(req.headers()),
    );
    let privileged = matches!(&caller.identity, Identity::User { groups, .. } if groups.iter().any(|g| g == super::auth::MASTERS));
    let Some(_place) =
        api_for_errors
            .inflight
            .enter(request.long_running(), request.mutating(), privileged)
    else {
        api_for_errors.metrics.begin(request).done(429);
        return error(&ApiError::TooManyRequests(format!(
            "too many {} requests in flight on this server (--max-{}requests-inflight); retry shortly",
            if request.mutating() {
                "mutating"
            } else {
                "read-only"
            },
            if request.mutating() { "mutating-" } else { "" },
        )));
    };
    let serving = api_for_errors.metrics.begin(request);
    let resp = match route(api, caller, req).await {
        Ok(resp) => resp,
        Err(e) => {
            if matches!(e, ApiError::DatastoreUnreachable(_)) {
                api_for_errors.feed.mark_unreachable();
            }
            if e.code() >= 500 {
                tracing::warn!(%method, %path, error = %e, "request failed");
            }
            error(&e)
        }
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    serving.done(resp.status().as_u16());
    resp
}

/// Answers while the server waits for the datastore: alive, not ready, and why.
pub fn starting<B>(req: &Request<B>, why: &str) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["healthz" | "livez", ..] => text(StatusCode::OK, "ok"),
        ["readyz", ..] => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("[-]datastore failed: {why}\nreadyz check failed"),
        ),
        _ => error(&ApiError::Unavailable(format!(
            "the server is starting: {why}"
        ))),
    }
}

async fn route(api: Arc<Api>, caller: &Caller, req: Request<Incoming>) -> Result<Response<Body>> {
    let id = &caller.identity;
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = req.method() == Method::GET;
    // Anonymous endpoints, as in Kubernetes's system:public-info-viewer.
    match segs.as_slice() {
        ["healthz" | "livez", ..] if get => return Ok(text(StatusCode::OK, "ok")),
        ["readyz", ..] if get => {
            return Ok(match api.readiness() {
                Ok(()) => text(StatusCode::OK, "ok"),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("[-]{why}\nreadyz check failed"),
                ),
            });
        }
        ["version"] if get => return Ok(json(StatusCode::OK, &discovery::version())),
        ["cacerts"] if get => return Ok(text(StatusCode::OK, &api.ca_pem)),
        // Authenticated by the token in the request, not by a certificate.
        ["v1-keelson", "join"] if req.method() == Method::POST => {
            return join(api, caller.source, req).await;
        }
        // Authenticated by the server token in the request (`keelson secrets-encrypt`).
        ["v1-keelson", "encrypt", "status"] if get => {
            let status = super::encrypt::status(api, caller.source, &req).await?;
            return Ok(json(StatusCode::OK, &to_value(status)?));
        }
        ["v1-keelson", "encrypt", "rotate-keys"] if req.method() == Method::POST => {
            let rotation = super::encrypt::rotate_keys(api, caller.source, &req).await?;
            return Ok(json(StatusCode::OK, &to_value(rotation)?));
        }
        // Authenticated by the node's certificate; the tunnel checks it itself.
        ["v1-keelson", "connect"] if get => {
            current_node_certificate(&api, id).await?;
            return api.tunnels.clone().accept(api, id, req);
        }
        ["v1-keelson", "stream", stream] if get => {
            current_node_certificate(&api, id).await?;
            return api.tunnels.accept_dial(id, stream, req);
        }
        _ => {}
    }
    let id = &api
        .access
        .identify(&api, &caller.identity, req.headers())
        .await?;
    let attrs = Attributes::of_request(req.method(), &path, req.uri().query());
    api.access.authorize(id, req.method(), &path, &attrs)?;
    current_node_certificate(&api, id).await?;
    let post = req.method() == Method::POST;
    match segs.as_slice() {
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ] if post => {
            let (body, _) = read_json(req).await?;
            Ok(json(
                StatusCode::CREATED,
                &super::reviews::access(&api.access, id, body)?,
            ))
        }
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectrulesreviews",
        ] if post => {
            let (body, _) = read_json(req).await?;
            Ok(json(
                StatusCode::CREATED,
                &super::reviews::rules(&api.access, id, body)?,
            ))
        }
        [
            "apis",
            "authentication.k8s.io",
            version @ ("v1" | "v1beta1"),
            "selfsubjectreviews",
        ] if post => {
            let version = format!("authentication.k8s.io/{version}");
            Ok(json(
                StatusCode::CREATED,
                &super::reviews::whoami(id, &version),
            ))
        }
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "serviceaccounts",
            name,
            "token",
        ] if post && api.feed.reachable() => {
            let (ns, name) = (ns.to_string(), name.to_string());
            let (body, _) = read_json(req).await?;
            Ok(json(
                StatusCode::CREATED,
                &super::token_request::create(&api, &ns, &name, body).await?,
            ))
        }
        ["metrics"] if get => {
            let mut resp = text(StatusCode::OK, &api.metrics.render());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(super::metrics::CONTENT_TYPE),
            );
            Ok(resp)
        }
        ["api"] if get => Ok(json(
            StatusCode::OK,
            &discovery::api_versions(&api.server_address),
        )),
        ["apis"] if get => Ok(json(StatusCode::OK, &discovery::api_groups())),
        ["api", "v1"] if get => Ok(json(StatusCode::OK, &discovery::resource_list(&CORE_V1))),
        ["apis", group] if get => match GroupVersion::by_group(group) {
            Some(gv) => Ok(json(StatusCode::OK, &discovery::api_group(gv))),
            None => Err(ApiError::UnknownPath),
        },
        ["apis", group, version] if get => match GroupVersion::named(group, version) {
            Some(gv) => Ok(json(StatusCode::OK, &discovery::resource_list(gv))),
            None => Err(ApiError::UnknownPath),
        },
        ["openapi", "v3", rest @ ..] if get => Ok(openapi::serve(&req, rest)),
        ["openapi", "v2"] if get => Ok(openapi::serve_v2(&req)),
        ["api", "v1", _, ..] | ["apis", _, _, _, ..] if !api.feed.reachable() => {
            Err(datastore_down(&api))
        }
        ["api", "v1", rest @ ..] => match target(&CORE_V1, rest) {
            Some(t) => resource(api, id, t, req).await,
            None => Err(ApiError::UnknownPath),
        },
        ["apis", group, version, rest @ ..] => {
            match GroupVersion::named(group, version).and_then(|gv| target(gv, rest)) {
                Some(t) => resource(api, id, t, req).await,
                None => Err(ApiError::UnknownPath),
            }
        }
        _ => Err(ApiError::UnknownPath),
    }
}

/// The fast-fail gate's answer: 503 at once, naming the datastore and why, instead of waiting
/// for a connection the pool cannot make.
fn datastore_down(api: &Api) -> ApiError {
    let why = api
        .datastore_down()
        .unwrap_or_else(|| "it stopped answering".into());
    ApiError::DatastoreUnreachable(format!(
        "{why}; this server checks it every {} ms and serves again as soon as it answers (another server may answer now)",
        crate::datastore::health::RETRY.as_millis()
    ))
}

/// Refuses a node certificate that belongs to an earlier registration of its name (the Node
/// was deleted since) or to a server's name. One datastore read per request from a node;
/// agents use HTTPS only to join and to open their tunnel.
async fn current_node_certificate(api: &Api, id: &Identity) -> Result<()> {
    match id.node_name() {
        Some(node) => {
            Ok(
                crate::bootstrap::join::verify_node(api.registry.store(), node, id.generation())
                    .await?,
            )
        }
        None => Ok(()),
    }
}

/// The token is checked before a byte of the body is read, and the body is small and must
/// arrive quickly: an anonymous client cannot make the server hold buffers or wait.
async fn join(
    api: Arc<Api>,
    source: std::net::IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    if !api.feed.reachable() {
        return Err(datastore_down(&api));
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let checked = api.joiner.authenticate(auth, source)?;
    let body = read_body(req, crate::bootstrap::join::MAX_BODY).await?;
    let servers = api.tunnels.servers().borrow().clone();
    let resp = api
        .joiner
        .join(api.registry.store(), checked, &body, servers)
        .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::to_value(resp).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

/// What `segs` (the path after the group version's prefix) names among `gv`'s resources.
/// Invariant: the resource of the result is one of `gv`'s, so a path can reach only objects
/// of the group it names.
fn target(gv: &GroupVersion, segs: &[&str]) -> Option<Target> {
    let by = |p: &str| gv.resource(p);
    let obj = |resource, namespace: Option<&str>, name: &str, part| Target::Object {
        r: ObjectRef {
            resource,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        },
        part,
    };
    Some(match segs {
        [p] => Target::Collection {
            resource: by(p)?,
            namespace: None,
        },
        // Namespace objects, in the core group only (`by` finds no `namespaces` elsewhere).
        ["namespaces", ns] => obj(by("namespaces")?, None, ns, Part::Main),
        ["namespaces", ns, "status"] => obj(by("namespaces")?, None, ns, Part::Status),
        ["namespaces", ns, "finalize"] => obj(by("namespaces")?, None, ns, Part::Finalize),
        ["namespaces", ns, p] if by(p)?.namespaced => Target::Collection {
            resource: by(p)?,
            namespace: Some(ns.to_string()),
        },
        ["namespaces", ns, p, name] if by(p)?.namespaced => obj(by(p)?, Some(ns), name, Part::Main),
        ["namespaces", ns, p, name, "status"] if by(p)?.namespaced && by(p)?.has_status => {
            obj(by(p)?, Some(ns), name, Part::Status)
        }
        ["namespaces", ns, p, name, "scale"] if by(p)?.namespaced && by(p)?.has_scale => {
            Target::Scale(ObjectRef {
                resource: by(p)?,
                namespace: Some(ns.to_string()),
                name: name.to_string(),
            })
        }
        ["namespaces", ns, "pods", name, "binding"] => Target::Binding(ObjectRef {
            resource: by("pods")?,
            namespace: Some(ns.to_string()),
            name: name.to_string(),
        }),
        ["namespaces", ns, "pods", name, "eviction"] => Target::Eviction(ObjectRef {
            resource: by("pods")?,
            namespace: Some(ns.to_string()),
            name: name.to_string(),
        }),
        ["namespaces", ns, "pods", name, sub] => Target::PodStream(
            ObjectRef {
                resource: by("pods")?,
                namespace: Some(ns.to_string()),
                name: name.to_string(),
            },
            super::podstreams::Subresource::named(sub)?,
        ),
        [p, name] if !by(p)?.namespaced => obj(by(p)?, None, name, Part::Main),
        [p, name, "status"] if !by(p)?.namespaced && by(p)?.has_status => {
            obj(by(p)?, None, name, Part::Status)
        }
        _ => return None,
    })
}

async fn resource(
    api: Arc<Api>,
    id: &Identity,
    target: Target,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let writer = match id.node_name() {
        Some(node) => Writer::Node(node),
        None => Writer::Trusted,
    };
    let query = Query::parse(req.uri().query());
    let table = wants_table(&req).then(|| query.include());
    let fields = Directive::parse(query.get("fieldValidation"))?;
    // `dryRun=All`: checked, defaulted and answered as a real write, never stored.
    let registry = match query.get("dryRun") {
        None | Some("") => api.registry.clone(),
        Some("All") => api.registry.dry_run(),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "dryRun {other:?} is not supported: the only dry-run value is \"All\""
            )));
        }
    };
    // Whose fields a write changes: `fieldManager`, else the client's product name.
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) if m.chars().count() > 128 => {
            return Err(ApiError::Invalid {
                kind: "Status".into(),
                name: String::new(),
                causes: vec![format!(
                    "fieldManager: Too long: may not be more than 128 characters (got {})",
                    m.chars().count()
                )],
            });
        }
        Some(m) => m.to_owned(),
        None => apply::default_manager(
            req.headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        ),
    };
    let registry = registry.managed_by(&manager);
    let force = query.flag("force");
    if force && !(req.method() == Method::PATCH && is_apply(&req)) {
        return Err(ApiError::Unprocessable(
            "force: Invalid value: true: may not be specified for non-apply patch".into(),
        ));
    }
    match (target, req.method().clone()) {
        // `finalize` is written whole (PUT), never read or patched, as in Kubernetes.
        (
            Target::Object {
                part: Part::Finalize,
                ..
            },
            method,
        ) if method != Method::PUT => Err(ApiError::MethodNotAllowed),
        (Target::PodStream(r, what), Method::GET | Method::POST) => {
            super::podstreams::serve(api.clone(), r, what, req).await
        }
        (
            Target::Collection {
                resource,
                namespace,
            },
            Method::GET,
        ) => {
            let selector = Selector::parse(query.get("labelSelector"), query.get("fieldSelector"))
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let version_match = query.get("resourceVersionMatch").filter(|m| !m.is_empty());
            if let Some(m) = version_match
                && m != "NotOlderThan"
                && m != "Exact"
            {
                return Err(ApiError::BadRequest(format!(
                    "resourceVersionMatch {m:?} is not supported: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
            if query.flag("watch") {
                let bookmarks = query.flag("allowWatchBookmarks");
                let initial_events = query.flag("sendInitialEvents");
                if initial_events && (!bookmarks || version_match != Some("NotOlderThan")) {
                    return Err(ApiError::Unprocessable(
                        "sendInitialEvents: Forbidden: needs allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan".into(),
                    ));
                }
                let start = match query.get("resourceVersion") {
                    _ if initial_events => Start::Now,
                    None | Some("") | Some("0") => Start::Now,
                    Some(rv) => Start::After(parse_rv(rv)?),
                };
                let timeout = match query.get("timeoutSeconds") {
                    Some(s) => Duration::from_secs(s.parse().map_err(|_| {
                        ApiError::BadRequest(format!(
                            "timeoutSeconds {s:?} is not a number of seconds"
                        ))
                    })?),
                    None => watch::DEFAULT_TIMEOUT,
                }
                .min(watch::MAX_TIMEOUT);
                let lines = watch::open(
                    api.clone(),
                    id,
                    WatchRequest {
                        resource,
                        namespace,
                        selector,
                        start,
                        timeout,
                        table,
                        bookmarks,
                        bookmark_interval: api.bookmark_interval,
                        initial_events,
                    },
                )?;
                return Ok(stream(lines));
            }
            let limit = match query.get("limit") {
                None | Some("") | Some("0") => None,
                Some(l) => Some(l.parse::<usize>().map_err(|_| {
                    ApiError::BadRequest(format!("limit {l:?} is not a number of objects"))
                })?),
            };
            let token = query.get("continue").filter(|t| !t.is_empty());
            // Lists are served from the current state: an exact older revision cannot be
            // (410, and clients list again without it).
            if version_match == Some("Exact")
                && let Some(rv) = query.get("resourceVersion").filter(|rv| !rv.is_empty())
            {
                let want = parse_rv(rv)?;
                let current = api.registry.store().current_revision().await?;
                if want != current {
                    return Err(ApiError::Gone {
                        requested: want,
                        compacted: current,
                    });
                }
            }
            let (rev, items, continue_token) = match (limit, token) {
                (None, None) => {
                    let (rev, items) = api.registry.list(resource, namespace.as_deref()).await?;
                    (rev, items, None)
                }
                (limit, token) => {
                    let page = api
                        .registry
                        .list_page(
                            resource,
                            namespace.as_deref(),
                            limit.unwrap_or(usize::MAX / 4),
                            token,
                        )
                        .await?;
                    (page.revision, page.items, page.continue_token)
                }
            };
            let items: Vec<Value> = items.into_iter().filter(|o| selector.matches(o)).collect();
            let mut list = match table {
                Some(include) => {
                    table::table(resource, &items, Some(rev.to_string()), include, true)
                }
                None => serde_json::json!({
                    "kind": format!("{}List", resource.kind),
                    "apiVersion": resource.api_version(),
                    "metadata": {"resourceVersion": rev.to_string()},
                    "items": items,
                }),
            };
            if let Some(token) = continue_token {
                list["metadata"]["continue"] = Value::String(token);
            }
            Ok(json(StatusCode::OK, &list))
        }
        (
            Target::Collection {
                resource,
                namespace,
            },
            Method::POST,
        ) => {
            let (body, duplicates) = read_json(req).await?;
            let warnings = field_validation::check(
                fields,
                resource,
                false,
                Write::Create,
                field_validation::Body::Object(&body),
                &duplicates,
            )?;
            let obj = registry
                .create(resource, namespace.as_deref(), body)
                .await?;
            Ok(warn(json(StatusCode::CREATED, &obj), &warnings))
        }
        (Target::Binding(r), Method::POST) => {
            if matches!(writer, Writer::Node(_)) {
                return Err(ApiError::Forbidden(format!(
                    "pods \"{}\" is forbidden: a node may not bind pods",
                    r.name
                )));
            }
            let (body, _) = read_json(req).await?;
            let node = body
                .pointer("/target/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let uid = body.pointer("/metadata/uid").and_then(Value::as_str);
            registry.bind(&r, node, uid).await?;
            Ok(json(
                StatusCode::CREATED,
                &serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (Target::Eviction(r), Method::POST) => {
            if matches!(writer, Writer::Node(_)) {
                return Err(ApiError::Forbidden(format!(
                    "pods \"{}\" is forbidden: a node may not evict pods",
                    r.name
                )));
            }
            let (body, _) = read_json(req).await?;
            Ok(json(
                StatusCode::CREATED,
                &super::eviction::evict(&registry, &r, &body).await?,
            ))
        }
        (Target::Scale(r), Method::GET) => {
            Ok(json(StatusCode::OK, &scale::get(&api.registry, &r).await?))
        }
        (Target::Scale(r), Method::PUT) => {
            let (body, duplicates) = read_json(req).await?;
            let warnings = field_validation::check(
                fields,
                r.resource,
                true,
                Write::Update,
                field_validation::Body::Object(&body),
                &duplicates,
            )?;
            Ok(warn(
                json(
                    StatusCode::OK,
                    &scale::update(&api.registry, &r, writer, body).await?,
                ),
                &warnings,
            ))
        }
        (Target::Scale(r), Method::PATCH) => {
            let kind = patch_kind(&req)?;
            let (body, duplicates) = read_json(req).await?;
            let warnings = field_validation::check(
                fields,
                r.resource,
                true,
                Write::Patch,
                patch_body(kind, &body),
                &duplicates,
            )?;
            Ok(warn(
                json(
                    StatusCode::OK,
                    &scale::patch(&api.registry, &r, writer, kind, body).await?,
                ),
                &warnings,
            ))
        }
        (Target::Object { r, .. }, Method::GET) => {
            let obj = api.registry.get(&r).await?;
            Ok(json(
                StatusCode::OK,
                &match table {
                    Some(include) => {
                        let rv = obj
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                            .map(str::to_owned);
                        table::table(r.resource, &[obj], rv, include, true)
                    }
                    None => obj,
                },
            ))
        }
        (Target::Object { r, part }, Method::PUT) => {
            let (body, duplicates) = read_json(req).await?;
            let warnings = field_validation::check(
                fields,
                r.resource,
                false,
                Write::Update,
                field_validation::Body::Object(&body),
                &duplicates,
            )?;
            Ok(warn(
                json(
                    StatusCode::OK,
                    &registry.update(&r, part, writer, body).await?,
                ),
                &warnings,
            ))
        }
        (Target::Object { r, part }, Method::PATCH) if is_apply(&req) => {
            if part != Part::Main {
                return Err(ApiError::UnsupportedMediaType(
                    "server-side apply of a subresource is not supported; apply the object itself"
                        .into(),
                ));
            }
            if query.get("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::BadRequest(
                    "PATCH request is invalid: fieldManager: Required value: is required for apply patch"
                        .into(),
                ));
            }
            let body = read_body(req, MAX_BODY).await?;
            let config: Value = serde_yaml::from_slice(&body).map_err(|e| {
                ApiError::BadRequest(format!(
                    "the applied configuration is not valid YAML or JSON: {e}"
                ))
            })?;
            let warnings = field_validation::check(
                fields,
                r.resource,
                false,
                Write::Patch,
                field_validation::Body::MergePatch(&config),
                &[],
            )?;
            let (obj, created) = registry.apply(&r, writer, config, &manager, force).await?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(warn(json(code, &obj), &warnings))
        }
        (Target::Object { r, part }, Method::PATCH) => {
            let kind = patch_kind(&req)?;
            let (body, duplicates) = read_json(req).await?;
            let warnings = field_validation::check(
                fields,
                r.resource,
                false,
                Write::Patch,
                patch_body(kind, &body),
                &duplicates,
            )?;
            Ok(warn(
                json(
                    StatusCode::OK,
                    &registry.patch(&r, part, writer, kind, body).await?,
                ),
                &warnings,
            ))
        }
        (
            Target::Object {
                r,
                part: Part::Main,
            },
            Method::DELETE,
        ) => {
            let body = read_body(req, MAX_BODY).await?;
            let opts: Value = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::BadRequest(format!("DeleteOptions: {e}")))?
            };
            let precondition = match opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
            {
                Some(rv) => Some(parse_rv(rv)?),
                None => None,
            };
            // kubectl sends a delete's dry run in its DeleteOptions, not the query.
            let registry = match opts.get("dryRun").and_then(Value::as_array) {
                Some(d) if d.iter().any(|v| v == "All") => registry.dry_run(),
                _ => registry,
            };
            // `propagationPolicy` in the DeleteOptions (kubectl) or the query; the old
            // `orphanDependents` boolean too.
            let propagation = match (
                opts.get("propagationPolicy").and_then(Value::as_str),
                query.get("propagationPolicy"),
                opts.get("orphanDependents").and_then(Value::as_bool),
            ) {
                (Some(p), _, _) | (None, Some(p), _) => Propagation::parse(p)?,
                (None, None, Some(true)) => Propagation::Orphan,
                _ => Propagation::Background,
            };
            Ok(json(
                StatusCode::OK,
                &registry.delete_with(&r, precondition, propagation).await?,
            ))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn patch_body(kind: patch::Kind, body: &Value) -> field_validation::Body<'_> {
    match kind {
        patch::Kind::Json => field_validation::Body::JsonPatch(body),
        patch::Kind::Merge | patch::Kind::Strategic => field_validation::Body::MergePatch(body),
    }
}

/// Adds one `Warning: 299 - "…"` header per warning, as kube-apiserver sends them and
/// kubectl prints them (`Warning: unknown field "spec.foo"`).
/// Warning headers sent at most per response: a body of many unknown fields must not turn into
/// as many headers (kube-apiserver truncates its warnings too).
const MAX_WARNINGS: usize = 16;

fn warn(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    let more = warnings.len().saturating_sub(MAX_WARNINGS);
    let summary = (more > 0).then(|| format!("{more} more warnings were left out"));
    for w in warnings.iter().take(MAX_WARNINGS).chain(summary.as_ref()) {
        let quoted = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = header::HeaderValue::from_str(&quoted) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn parse_rv(rv: &str) -> Result<i64> {
    rv.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "resourceVersion {rv:?} is not a valid resource version"
        ))
    })
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.contains("as=Table") && t.contains("g=meta.k8s.io"))
}

fn patch_kind(req: &Request<Incoming>) -> Result<patch::Kind> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match ct.split(';').next().unwrap_or("").trim() {
        "application/merge-patch+json" => Ok(patch::Kind::Merge),
        "application/strategic-merge-patch+json" => Ok(patch::Kind::Strategic),
        "application/json-patch+json" => Ok(patch::Kind::Json),
        "application/apply-patch+yaml" => Err(ApiError::UnsupportedMediaType(
            "server-side apply is served for objects, not for this subresource".into(),
        )),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
        ))),
    }
}

/// Whether a PATCH is a server-side apply.
fn is_apply(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| ct.trim() == "application/apply-patch+yaml")
}

/// The body, at most `limit` bytes, within [`BODY_TIMEOUT`].
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes> {
    let http2 = req.version() == hyper::Version::HTTP_2;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        if http2 {
            discard_after_answer(req.into_body());
        }
        return Err(ApiError::TooLarge(limit));
    }
    let mut body = req.into_body();
    let read = async move {
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    if http2 {
                        discard_after_answer(body);
                    }
                    return Err(ApiError::TooLarge(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        ))),
        Ok(r) => r,
    }
}

/// Most of a refused HTTP/2 body read and thrown away, and for how long.
const DISCARD_AT_MOST: usize = 16 * 1024 * 1024;
const DISCARD_FOR: Duration = Duration::from_secs(30);

/// Keeps reading (and dropping) a refused HTTP/2 request body while the refusal goes out.
/// Dropping it at once resets the stream with CANCEL before the answer is sent, and clients
/// (curl, nginx) then report a framing error instead of the 413; dropped after the answer, h2
/// resets with NO_ERROR, which RFC 9113 §8.1 lets a server send after an early response.
/// Bounded, so a client cannot make the server read forever. HTTP/1.1 needs none of this:
/// hyper closes the connection after answering a request whose body it did not read.
fn discard_after_answer(mut body: Incoming) {
    tokio::spawn(async move {
        let discard = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > DISCARD_AT_MOST {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_FOR, discard).await;
    });
}

/// The body as JSON, and the fields it names twice (which the parse kept the last of).
async fn read_json(req: Request<Incoming>) -> Result<(Value, Vec<String>)> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let protobuf = ct.contains("protobuf");
    let body = read_body(req, MAX_BODY).await?;
    if protobuf {
        return Ok((super::protobuf::decode(&body)?, Vec::new()));
    }
    let value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    Ok((value, field_validation::duplicate_fields(&body)))
}

/// Decoded query parameters.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    fn include(&self) -> Include {
        match self.get("includeObject") {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

fn to_value(v: impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(v)
        .map_err(|e| ApiError::Internal(format!("cannot serialise an answer: {e}")))
}

pub fn json(status: StatusCode, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn text(status: StatusCode, s: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(s.to_owned())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub fn error(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json(status, &e.to_status());
    // The header only on 429: client-go also retries a 5xx that carries it, for up to ten
    // tries, and a datastore outage should reach kubectl's user at once rather than after 10 s.
    if let (StatusCode::TOO_MANY_REQUESTS, Some(secs)) = (status, e.retry_after_seconds()) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    resp
}

fn stream(
    lines: impl futures_util::Stream<Item = Bytes> + Send + Sync + 'static,
) -> Response<Body> {
    use futures_util::StreamExt;
    let frames = lines.map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::auth::NODES_GROUP;

    #[tokio::test]
    async fn a_429_says_the_same_wait_in_its_header_and_its_body() {
        let resp = error(&ApiError::TooManyRequests("slow down".into()));
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let header = resp.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .to_owned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(header, status["details"]["retryAfterSeconds"].to_string());
        // A 503 keeps its body hint but no header, so kubectl fails at once in an outage.
        let resp = error(&ApiError::Unavailable("down".into()));
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }
    use crate::apiserver::resources::{
        APPS_V1, BATCH_V1, COORDINATION_V1, DEPLOYMENTS, LEASES, NAMESPACES, PODS, REPLICASETS,
        STATEFULSETS,
    };

    fn object(resource: &'static Resource, ns: Option<&str>, name: &str, part: Part) -> Target {
        Target::Object {
            r: ObjectRef {
                resource,
                namespace: ns.map(str::to_owned),
                name: name.into(),
            },
            part,
        }
    }

    #[test]
    fn group_paths_reach_their_own_resources() {
        assert_eq!(
            target(
                &COORDINATION_V1,
                &["namespaces", "kube-system", "leases", "keelson-controllers"]
            ),
            Some(object(
                &LEASES,
                Some("kube-system"),
                "keelson-controllers",
                Part::Main
            ))
        );
        assert_eq!(
            target(&COORDINATION_V1, &["leases"]),
            Some(Target::Collection {
                resource: &LEASES,
                namespace: None
            })
        );
        assert_eq!(
            target(&COORDINATION_V1, &["namespaces", "kube-system", "leases"]),
            Some(Target::Collection {
                resource: &LEASES,
                namespace: Some("kube-system".into())
            })
        );
        // Leases have no status subresource, and a group reaches none of core's resources.
        for segs in [
            &["namespaces", "kube-system", "leases", "x", "status"][..],
            &["namespaces", "kube-system"],
            &["namespaces", "default", "pods"],
            &["nodes", "pi-1"],
            &["leases", "x"],
        ] {
            assert_eq!(target(&COORDINATION_V1, segs), None, "{segs:?}");
        }
        assert_eq!(target(&CORE_V1, &["leases"]), None);
        assert_eq!(
            target(&CORE_V1, &["namespaces", "default"]),
            Some(object(&NAMESPACES, None, "default", Part::Main))
        );
        assert_eq!(
            target(
                &CORE_V1,
                &["namespaces", "default", "pods", "web", "status"]
            ),
            Some(object(&PODS, Some("default"), "web", Part::Status))
        );
    }

    #[test]
    fn scale_paths_reach_only_kinds_with_replicas() {
        let web = |resource| ObjectRef {
            resource,
            namespace: Some("default".into()),
            name: "web".into(),
        };
        for resource in [&DEPLOYMENTS, &REPLICASETS, &STATEFULSETS] {
            assert_eq!(
                target(
                    &APPS_V1,
                    &["namespaces", "default", resource.plural, "web", "scale"]
                ),
                Some(Target::Scale(web(resource)))
            );
        }
        assert_eq!(
            target(
                &APPS_V1,
                &["namespaces", "default", "daemonsets", "web", "scale"]
            ),
            None
        );
        assert_eq!(
            target(
                &BATCH_V1,
                &["namespaces", "default", "jobs", "web", "scale"]
            ),
            None
        );
        assert_eq!(
            target(
                &APPS_V1,
                &["namespaces", "default", "deployments", "web", "status"]
            ),
            Some(object(&DEPLOYMENTS, Some("default"), "web", Part::Status))
        );
    }

    #[test]
    fn nodes_may_not_read_or_write_leases() {
        let node = Identity::User {
            name: "system:node:pi-1".into(),
            groups: vec![NODES_GROUP.into()],
            generation: None,
        };
        for (verb, path) in [
            (
                "get",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/keelson-controllers",
            ),
            (
                "update",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/keelson-controllers",
            ),
            ("get", "/apis/coordination.k8s.io/v1/leases"),
            ("patch", "/apis/coordination.k8s.io/v1/nodes/pi-1"),
        ] {
            assert!(
                matches!(node.authorize(verb, path), Err(ApiError::Forbidden(_))),
                "{verb} {path}"
            );
        }
    }
}
