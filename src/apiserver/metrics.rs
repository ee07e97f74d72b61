//! `/metrics`: the server's one Prometheus registry, encoded in the Prometheus text format by
//! `prometheus-client`.
//!
//! Owns the request instruments kube-apiserver dashboards read (`apiserver_request_total`,
//! `apiserver_request_duration_seconds`, `apiserver_current_inflight_requests`, under its
//! names, labels and buckets), the `process_*` figures ([`process`]), and keelson's own
//! figures, read at scrape time from the counters their owners keep (the datastore, the
//! feed, the joiner, the listener); nothing here copies their state. Features built on the
//! API (tunnels, the load balancer, the controllers lease) add theirs through
//! [`super::features`] or [`Metrics::register`]. Who may read `/metrics` is RBAC's business
//! ([`super::access`]): `get` on the non-resource URL `/metrics`.
//!
//! Invariant: every label value comes from a fixed set (verbs, served resources and their
//! subresources, status codes), never from a path or a name a client chose, so a client
//! cannot grow the registry.

pub mod process;

use std::fmt;
use std::sync::{Mutex, Weak};
use std::time::Instant;

use hyper::{Method, header};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Api;
use super::resources::{CORE_V1, GroupVersion};

/// The `Content-Type` of what [`Metrics::render`] returns (Prometheus text, version 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// kube-apiserver's buckets for `apiserver_request_duration_seconds`, in seconds.
pub const DURATION_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// kube-apiserver's `component` label.
const COMPONENT: &str = "apiserver";

type Durations = Family<Request, Histogram, fn() -> Histogram>;

/// The registry and the instruments the request path updates. One per server, held by
/// [`Api`].
pub struct Metrics {
    /// Everything `/metrics` shows. Locked to register a collector (at start) and to encode a
    /// scrape; never across an await.
    registry: Mutex<Registry>,
    requests: Family<Answered, Counter>,
    durations: Durations,
    /// Requests being served now, by kube-apiserver's request kind (long-running ones, as
    /// there, not counted).
    read_only: Gauge,
    mutating: Gauge,
    /// 1 while this server holds the virtual IP, by address.
    vip_holder: Family<[(&'static str, String); 1], Gauge>,
}

// === impl Metrics ===

impl Metrics {
    /// `api` is the API these metrics belong to (weak, as the API holds them): its figures
    /// are read at each scrape.
    pub fn new(api: Weak<Api>) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Answered, Counter>::default();
        let durations: Durations =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        let inflight = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        let read_only = inflight
            .get_or_create(&[("request_kind", "readOnly")])
            .clone();
        let mutating = inflight
            .get_or_create(&[("request_kind", "mutating")])
            .clone();
        let vip_holder = Family::default();
        // The registry ends each help text with a full stop.
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component (long-running requests, WATCH and CONNECT, are not observed)",
            durations.clone(),
        );
        registry.register(
            "apiserver_current_inflight_requests",
            "Requests this apiserver is serving now, per request kind (long-running requests not counted)",
            inflight,
        );
        registry.register(
            "keelson_vip_holder",
            "Whether this server holds the virtual IP (1) or not (0)",
            vip_holder.clone(),
        );
        registry.register_collector(Box::new(process::Process));
        registry.register_collector(Box::new(ServerFigures(api)));
        Metrics {
            registry: Mutex::new(registry),
            requests,
            durations,
            read_only,
            mutating,
            vip_holder,
        }
    }

    /// Adds a collector of figures owned outside the API (e.g. the controllers lease).
    pub fn register(&self, collector: impl Collector) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(Box::new(collector));
    }

    /// The gauge saying whether this server holds the virtual IP `vip`.
    pub fn vip_holder(&self, vip: std::net::IpAddr) -> Gauge {
        self.vip_holder
            .get_or_create(&[("vip", vip.to_string())])
            .clone()
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail; a collector's error would only cut the text short.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding /metrics failed");
        }
        out
    }

    /// Counts a request from when its head arrived until [`InFlight::done`] (or drop).
    pub fn begin(&self, request: Request) -> InFlight<'_> {
        let gauge = match (request.long_running(), request.mutating()) {
            (true, _) => None,
            (false, true) => Some(&self.mutating),
            (false, false) => Some(&self.read_only),
        };
        if let Some(g) = gauge {
            g.inc();
        }
        InFlight {
            metrics: self,
            request,
            gauge,
            started: Instant::now(),
        }
    }
}

/// One request being served, counted in `apiserver_current_inflight_requests`.
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    request: Request,
    gauge: Option<&'a Gauge>,
    started: Instant,
}

// === impl InFlight ===

impl InFlight<'_> {
    /// The request was answered with `code`: counted, and timed unless long-running.
    pub fn done(self, code: u16) {
        let m = self.metrics;
        m.requests
            .get_or_create(&Answered {
                request: self.request,
                code,
            })
            .inc();
        if !self.request.long_running() {
            m.durations
                .get_or_create(&self.request)
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.gauge {
            g.dec();
        }
    }
}

/// What a request is, in kube-apiserver's metric labels. Every field is one of a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    /// GET, LIST, WATCH, POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION, CONNECT, or
    /// `other`.
    pub verb: &'static str,
    /// `All` for a dry run, else empty.
    pub dry_run: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    /// `resource` (one object, or a create), `namespace`, `cluster`, or empty for a
    /// non-resource path.
    pub scope: &'static str,
}

/// Subresources keelson serves (anything else is not one, so it is no label value).
const SUBRESOURCES: [&str; 10] = [
    "status",
    "scale",
    "binding",
    "eviction",
    "log",
    "exec",
    "attach",
    "portforward",
    "finalize",
    "token",
];
/// kube-apiserver's connect subresources: their verb is CONNECT.
const CONNECT: [&str; 4] = ["exec", "attach", "portforward", "proxy"];

// === impl Request ===

impl Request {
    /// Reads a request as kube-apiserver's metrics do (`CleanVerb`, `CleanScope`). A path
    /// that names no served resource counts as a non-resource request: verb the method,
    /// other labels empty.
    pub fn of(method: &Method, path: &str, query: Option<&str>, apply_patch: bool) -> Request {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let gv_rest = match segs.as_slice() {
            ["api", "v1", rest @ ..] if !rest.is_empty() => Some((&CORE_V1, rest)),
            ["apis", group, version, rest @ ..] if !rest.is_empty() => {
                GroupVersion::named(group, version).map(|gv| (gv, rest))
            }
            _ => None,
        };
        let query = query.unwrap_or("");
        let param = |k: &str| {
            query
                .contains(k)
                .then(|| {
                    form_urlencoded::parse(query.as_bytes())
                        .find(|(q, _)| q == k)
                        .map(|(_, v)| v.into_owned())
                })
                .flatten()
        };
        let dry_run = match param("dryRun") {
            Some(v) if v == "All" => "All",
            Some(_) => "invalid",
            None => "",
        };
        let plain = |verb| Request {
            verb,
            dry_run,
            group: "",
            version: "",
            resource: "",
            subresource: "",
            scope: "",
        };
        let method_verb = match *method {
            Method::GET | Method::HEAD => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            _ => "other",
        };
        let Some((gv, mut parts)) = gv_rest else {
            return plain(method_verb);
        };
        let mut namespace = false;
        if parts[0] == "namespaces"
            && parts.len() > 2
            && !["status", "finalize"].contains(&parts[2])
        {
            namespace = true;
            parts = &parts[2..];
        }
        let Some(resource) = gv.resource(parts[0]) else {
            return plain(method_verb);
        };
        let named = parts.len() > 1;
        let subresource = match parts.get(2) {
            None => "",
            Some(s) => match SUBRESOURCES.iter().find(|k| *k == s) {
                Some(k) => k,
                None => return plain(method_verb),
            },
        };
        // A create names no object but is scoped to one, as in kube-apiserver.
        let scope = if named || *method == Method::POST {
            "resource"
        } else if namespace {
            "namespace"
        } else {
            "cluster"
        };
        let watch = matches!(param("watch").as_deref(), Some(v) if v != "0" && v != "false");
        let verb = match *method {
            _ if CONNECT.contains(&subresource) => "CONNECT",
            Method::GET | Method::HEAD if watch => "WATCH",
            Method::GET | Method::HEAD if !named => "LIST",
            Method::DELETE if !named => "DELETECOLLECTION",
            Method::PATCH if apply_patch => "APPLY",
            _ => method_verb,
        };
        Request {
            verb,
            dry_run,
            group: gv.group,
            version: gv.version,
            resource: resource.plural,
            subresource,
            scope,
        }
    }

    /// Whether the request is taken from `headers`' content type to be a server-side apply.
    pub fn is_apply(headers: &hyper::HeaderMap) -> bool {
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/apply-patch"))
    }

    /// kube-apiserver's long-running requests: watches and connections to a pod (`log`
    /// included, as it may follow).
    pub fn long_running(&self) -> bool {
        matches!(self.verb, "WATCH" | "CONNECT") || self.subresource == "log"
    }

    /// kube-apiserver's `mutating` request kind: anything but a read.
    pub fn mutating(&self) -> bool {
        !matches!(self.verb, "GET" | "LIST" | "WATCH")
    }

    fn labels(&self) -> [(&'static str, &'static str); 8] {
        [
            ("verb", self.verb),
            ("dry_run", self.dry_run),
            ("group", self.group),
            ("version", self.version),
            ("resource", self.resource),
            ("subresource", self.subresource),
            ("scope", self.scope),
            ("component", COMPONENT),
        ]
    }
}

impl EncodeLabelSet for Request {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        self.labels().as_slice().encode(encoder)
    }
}

/// A request and its status code: the labels of `apiserver_request_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Answered {
    request: Request,
    code: u16,
}

impl EncodeLabelSet for Answered {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        self.request.encode(encoder)?;
        ("code", self.code).encode(encoder.encode_label())
    }
}

/// keelson's own figures of the API server, read from their owners at each scrape.
struct ServerFigures(Weak<Api>);

impl fmt::Debug for ServerFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerFigures")
    }
}

impl Collector for ServerFigures {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let Some(api) = self.0.upgrade() else {
            return Ok(());
        };
        let store = api.registry.store();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        counter(
            &mut enc,
            "keelson_datastore_statements",
            "SQL statements this server sent to the datastore.",
            store.statements(),
        )?;
        gauge(
            &mut enc,
            "keelson_datastore_reachable",
            "Whether the datastore answers this server's health probe.",
            i64::from(api.feed.reachable()),
        )?;
        counter(
            &mut enc,
            "keelson_datastore_probes",
            "Health pings and connection attempts this server sent to the datastore (protocol pings, not statements).",
            store.health().probes(),
        )?;
        counter(
            &mut enc,
            "keelson_datastore_outages",
            "Times this server found the datastore down.",
            store.health().outages(),
        )?;
        gauge(
            &mut enc,
            "keelson_feed_revision",
            "The newest revision the change feed delivered.",
            api.feed.latest(),
        )?;
        counter(
            &mut enc,
            "keelson_api_connections",
            "Connections the API listener accepted since start.",
            super::ACCEPTED.load(relaxed),
        )?;
        counter(
            &mut enc,
            "keelson_join_requests",
            "Join requests that carried a token, since start.",
            api.joiner.requests(),
        )?;
        let (failures, throttled) = api.joiner.refusals();
        counter(
            &mut enc,
            "keelson_join_failures",
            "Join requests refused for a wrong or missing token.",
            failures,
        )?;
        counter(
            &mut enc,
            "keelson_join_throttled",
            "Join requests refused unread: their source sent too many wrong tokens.",
            throttled,
        )?;
        counter(
            &mut enc,
            "keelson_connections_refused",
            "Connections refused because their source or all anonymous clients held their share.",
            super::REFUSED.load(relaxed),
        )?;
        if let Some(heap) = crate::memory::heap() {
            let mut m = enc.encode_descriptor(
                "keelson_heap_bytes",
                "Bytes malloc holds: in live allocations, and freed but kept for reuse (what RSS holds beyond in_use is fragmentation).",
                None,
                MetricType::Gauge,
            )?;
            for (state, v) in [("in_use", heap.in_use), ("free", heap.free)] {
                ConstGauge::new(saturating(v)).encode(m.encode_family(&[("state", state)])?)?;
            }
        }
        api.tunnels.encode_metrics(&mut enc)?;
        let lb = api.lb_stats.lock().ok().and_then(|slot| slot.clone());
        if let Some(stats) = lb {
            stats.encode_metrics(&mut enc)?;
        }
        Ok(())
    }
}

/// Writes one unlabelled counter; `name` without `_total`, which the encoder adds.
pub fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// Writes one unlabelled gauge.
pub fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    ConstGauge::new(value).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// A count as a gauge's value (gauges are signed; no real count comes near the limit).
pub fn saturating(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
