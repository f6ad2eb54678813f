//! The request pipeline. [`handle`] reads top-down: one stage per step,
//! every failure a [`ProxyError`] mapped to a response in one place.
//!
//! 1. load the snapshot (once; the request keeps it to the end)
//! 2. request hygiene: request id, `x-sift-*` removal, head size, Host
//! 3. route match (host, path, method, headers)
//! 4. body limit (Content-Length up front, streamed bytes as they pass)
//! 5. backend choice: weighted cluster, then endpoint by LB policy
//! 6. upstream request: hop-by-hop removal, X-Forwarded-*, header ops
//!    then mirrors: a copy to each sampled mirror cluster, off the path
//!    ([`crate::mirror`])
//! 7. send with the route's timeout; map failures to 502/504/413
//! 8. response: hop-by-hop removal, header ops, request id; upgrades tunnelled

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{self, Body, BodyState, Limited, Lingering, OnDone};
use crate::config::file::{EscapedSlashes, PathParameters, UpstreamProtocol, XffMode};
use crate::config::model::ListenerSpec;
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::{Metrics, code_class};
use crate::policy::outlier::Observed;
use crate::policy::ratelimit::KeyPart;
use crate::snapshot::{BackendStats, Snapshot};
use crate::state::Shared;

/// What a request knows about the connection it came on.
pub struct ConnInfo {
    pub listener: Arc<str>,
    /// Position in `listeners` (stable: listener changes need a restart).
    pub listener_index: usize,
    pub remote: SocketAddr,
    /// The peer's IP as a header value (X-Forwarded-For), made once.
    pub remote_ip: HeaderValue,
    pub tls: bool,
    /// The TLS version negotiated (`TLSv1.3`, `TLSv1.2`) and the server
    /// name the client asked for (SNI), for the access log.
    pub tls_version: Option<&'static str>,
    pub sni: Option<Arc<str>>,
    /// The verified client certificate's identity (mTLS).
    pub identity: Option<crate::tls::Identity>,
    /// XFCC value for the upstream, computed once per connection.
    pub xfcc: Option<HeaderValue>,
    /// The listener serves Envoy's ext_authz / ext_proc calls.
    pub envoy: bool,
    /// Released when the connection and any tunnel made from it are gone.
    pub slot: Option<Box<dyn Send + Sync>>,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A gRPC call's deadline (gRPC over HTTP/2).
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// How a route's cache served the request (`HIT`, `MISS`, ...).
static X_SIFT_CACHE: HeaderName = HeaderName::from_static("x-sift-cache");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_SIFT_CANARY: HeaderName = HeaderName::from_static("x-sift-canary");
static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("listener", &self.listener)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// Everything the access log and metrics need once the response is done.
struct Outcome {
    metrics: Arc<Metrics>,
    start: Instant,
    /// Nanoseconds from the answering try's send to its response head.
    upstream_ns: Option<u64>,
    listener: Arc<str>,
    listener_index: usize,
    stats: Option<Arc<BackendStats>>,
    status: u16,
    /// The answer's `grpc-status` (in its head, or its trailers).
    grpc_status: Option<u8>,
    /// The request is a gRPC call.
    grpc: bool,
    /// A gRPC-Web call translated to gRPC: its answer is translated back.
    grpc_web: Option<crate::grpc_web::Mode>,
    /// A gRPC call answered 200 without a status in its head: outlier
    /// detection learns its outcome from the trailers, when it ends.
    observe_at_end: Option<crate::clock::Clock>,
    error: Option<(ErrorKind, String)>,
    /// Filled only when access logging is on.
    log: Option<Box<LogFields>>,
    /// Guards that must live until the response body ends: the endpoint's
    /// in-flight count (least-request LB) and the connection's.
    endpoint_guard: Option<crate::upstream::InflightGuard>,
    _conn_guard: Option<crate::listener::InflightGuard>,
    route_slot: Option<crate::snapshot::InflightSlot>,
    /// The adaptive concurrency slot: its drop is a latency sample.
    adaptive_slot: Option<crate::policy::adaptive::AdaptiveSlot>,
    cluster_slot: Option<crate::upstream::RequestSlot>,
    conn_slot: crate::upstream::ConnSlot,
    retry_permit: Option<crate::policy::retry::RetryPermit>,
    /// The matched route's place in the snapshot (its response headers go
    /// on sift's own answers too).
    route_index: Option<usize>,
    /// Counted and logged (once).
    finished: bool,
    /// The cluster's read_timeout for the response body (None: sift's own
    /// answer, no upstream).
    read_timeout: Option<std::time::Duration>,
    /// The allowed `Origin` of a CORS request: its answer is decorated.
    cors_origin: Option<HeaderValue>,
    /// Set when `tracing` is configured.
    trace: Option<Box<Trace>>,
    /// How the route's cache served the request (routes with `cache`).
    cache: Option<crate::cache::Status>,
}

struct LogFields {
    remote: SocketAddr,
    /// The client's address from trusted `X-Forwarded-For` hops (the
    /// listener's `forwarded` trust); `None`: the peer's IP.
    client_ip: Option<String>,
    method: Method,
    path: String,
    /// The query as sent, secret-looking parameters' values redacted.
    query: Option<String>,
    host: String,
    version: Version,
    request_id: HeaderValue,
    route: Option<Arc<str>>,
    endpoint: Option<String>,
    identity: Option<String>,
    /// Filter verdicts, `name=verdict(score)`.
    filters: Option<String>,
    /// Mirror copies started for the request.
    mirrored: u32,
    /// Faults injected: "delay", "abort" or "delay,abort".
    fault: Option<&'static str>,
    /// Write the access log line (the fields also feed a sampled span).
    access: bool,
    /// In nginx's combined format (`log.access_log_format: combined`),
    /// which needs the Referer (kept only then).
    combined: bool,
    referer: Option<HeaderValue>,
    /// Which lines are written (`log.access_log_filter`).
    filter: Option<Arc<crate::config::model::AccessLogFilter>>,
    user_agent: Option<HeaderValue>,
    /// The request body's state: its bytes received.
    body: Option<Arc<BodyState>>,
    tls_version: Option<&'static str>,
    sni: Option<Arc<str>>,
}

impl LogFields {
    /// The client's IP: from trusted forwarded hops, else the peer's.
    fn client_ip(&self) -> String {
        self.client_ip
            .clone()
            .unwrap_or_else(|| self.remote.ip().to_string())
    }
}

/// A query for the access log and spans: each parameter as sent, but the
/// value of one whose name looks secret (`access_token`, `api_key`,
/// `X-Amz-Signature`, `password`, an OAuth `code`, ...) is `[redacted]`,
/// as `/config` redacts secret-looking keys.
fn redact_query(q: &str) -> String {
    const CONTAINS: &[&str] = &[
        "key",
        "secret",
        "password",
        "passwd",
        "token",
        "auth",
        "credential",
        "signature",
        "session",
        "jwt",
        "cookie",
    ];
    const EXACT: &[&str] = &["sig", "code", "pass", "pwd", "pw"];
    let secret = |name: &str| {
        let name = crate::snapshot::query_decode(name);
        let name = String::from_utf8_lossy(&name).to_ascii_lowercase();
        CONTAINS.iter().any(|w| name.contains(w)) || EXACT.contains(&name.as_str())
    };
    let mut out = String::with_capacity(q.len());
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && secret(name) => {
                out.push_str(name);
                out.push_str("=[redacted]");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// [`LogFields::client_ip`] for the access log, written without a copy.
struct ClientIp<'a>(&'a LogFields);

impl std::fmt::Display for ClientIp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.client_ip {
            Some(ip) => f.write_str(ip),
            None => self.0.remote.ip().fmt(f),
        }
    }
}

/// A request's trace context and where its span goes.
struct Trace {
    ctx: crate::trace::TraceCtx,
    exporter: Arc<crate::trace::Exporter>,
    start_unix_nanos: u64,
}

impl OnDone for Outcome {
    fn done(mut self, bytes: u64, completed: bool) {
        self.finish(bytes, completed);
    }

    fn read_timeout(&self) -> Option<std::time::Duration> {
        self.read_timeout
    }

    fn trailers(&mut self, t: &HeaderMap) {
        if let Some(c) = grpc_status(t) {
            self.grpc_status = Some(c);
        }
    }
}

/// A `grpc-status` header's code (0..=16 are gRPC's; others kept as sent).
fn grpc_status(h: &HeaderMap) -> Option<u8> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A gRPC status as the access log writes it.
/// A version as its `Debug` writes it (`HTTP/1.1`), without formatting.
fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn grpc_label(code: u8) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    CODES.get(usize::from(code)).copied().unwrap_or("other")
}

/// The HTTP status a gRPC status stands for (gRPC's own mapping, as Envoy
/// and Linkerd read it): a failed call counts as the error it is in
/// canary analysis although its HTTP status is 200.
fn grpc_as_http(code: u8) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// A request dropped before it had a response (the client closed its
/// connection or reset its HTTP/2 stream while sift waited) is still
/// counted and logged, as 499 like nginx, so the gauges go back down.
impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.finished {
            if self.status == 0 {
                self.status = CLIENT_CLOSED;
            }
            self.finish(0, false);
        }
    }
}

/// nginx's status for a request the client closed before the response.
const CLIENT_CLOSED: u16 = 499;

impl Outcome {
    /// The request's span, from what the access log knows.
    fn span(
        &self,
        t: &Trace,
        log: &LogFields,
        route: &str,
        cluster: &str,
        elapsed: std::time::Duration,
        completed: bool,
    ) -> crate::trace::Span {
        use crate::trace::Attr;
        let mut attributes: Vec<(&'static str, Attr)> = Vec::with_capacity(15);
        attributes.extend([
            ("http.request.method", Attr::from(log.method.as_str())),
            ("url.path", Attr::from(log.path.as_str())),
            ("server.address", Attr::from(log.host.as_str())),
            ("client.address", Attr::from(log.client_ip())),
            (
                "network.protocol.version",
                Attr::from(match log.version {
                    Version::HTTP_2 => "2",
                    Version::HTTP_10 => "1.0",
                    _ => "1.1",
                }),
            ),
            ("http.response.status_code", Attr::from(self.status)),
            ("sift.listener", Attr::from(&*self.listener)),
            ("sift.route", Attr::from(route)),
            ("sift.cluster", Attr::from(cluster)),
            (
                "sift.request_id",
                Attr::from(String::from_utf8_lossy(log.request_id.as_bytes()).into_owned()),
            ),
        ]);
        if let Some(q) = &log.query {
            attributes.push(("url.query", Attr::from(q.as_str())));
        }
        if let Some(e) = &log.endpoint {
            attributes.push(("sift.endpoint", Attr::from(e.as_str())));
        }
        if let Some(f) = &log.filters {
            attributes.push(("sift.filters", Attr::from(f.as_str())));
        }
        if let Some((kind, _)) = &self.error {
            attributes.push(("sift.error", Attr::from(kind.as_str())));
        }
        // OpenTelemetry's HTTP server rule: 5xx is an error, 4xx is the
        // client's; a body cut short is one too.
        let error = if self.status >= 500 {
            Some(
                self.error
                    .as_ref()
                    .map_or_else(|| format!("status {}", self.status), |(_, d)| d.clone()),
            )
        } else if !completed {
            Some("the response body did not complete".to_string())
        } else {
            None
        };
        crate::trace::Span {
            ctx: t.ctx,
            name: format!("{} {route}", log.method),
            start_unix_nanos: t.start_unix_nanos,
            end_unix_nanos: t
                .start_unix_nanos
                .saturating_add(elapsed.as_nanos().min(u64::MAX as u128) as u64),
            attributes,
            error,
        }
    }

    fn finish(&mut self, bytes: u64, completed: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        let elapsed = self.start.elapsed();
        if let (Some(clock), Some(g)) = (self.observe_at_end, &self.endpoint_guard) {
            // A call with no status at all (cut off, or no gRPC answer)
            // tells outlier detection nothing.
            if let Some(c) = self.grpc_status {
                g.observe(Observed::of_status(grpc_as_http(c)), clock.now());
            }
        }
        match &self.stats {
            Some(stats) => {
                stats.count(self.listener_index, self.status);
                stats.duration.observe(elapsed.as_secs_f64());
                if let Some(w) = &stats.window {
                    // A gRPC call counts by its grpc-status. A cache hit
                    // tells nothing of the version; a stale answer stood in
                    // for an upstream that failed.
                    let s = match (self.grpc_status, self.cache) {
                        (_, Some(crate::cache::Status::Hit)) => None,
                        (_, Some(crate::cache::Status::Stale)) => Some(502),
                        (Some(c), _) if self.status == 200 => Some(grpc_as_http(c)),
                        _ => Some(self.status),
                    };
                    if let Some(s) = s {
                        w.record(s, elapsed.as_secs_f64());
                    }
                }
            }
            None => {
                self.metrics
                    .requests
                    .with_label_values(&[&self.listener, "none", "none", code_class(self.status)])
                    .inc();
            }
        }
        self.metrics.active_requests.dec();
        let Some(log) = &self.log else { return };
        let route = log
            .route
            .as_deref()
            .or(self.stats.as_ref().map(|s| &*s.route))
            .unwrap_or("none");
        let cluster = self.stats.as_ref().map_or("none", |s| &*s.cluster);
        let trace_id = self.trace.as_ref().map(|t| t.ctx.trace_id_hex());
        if let Some(t) = self.trace.take().filter(|t| t.ctx.sampled) {
            t.exporter
                .send(self.span(&t, log, route, cluster, elapsed, completed));
        }
        if !log.access {
            return;
        }
        if let Some(f) = &log.filter
            && !f.keeps(&log.path, self.status, elapsed, fastrand::u32(..1_000_000))
        {
            return;
        }
        if log.combined {
            if let Some(mut w) = crate::logging::access_writer()
                && tracing::enabled!(target: "sift::access", tracing::Level::INFO)
            {
                crate::access_log::write_combined(
                    &mut w,
                    ClientIp(log),
                    log.method.as_str(),
                    &log.path,
                    log.query.as_deref(),
                    version_str(log.version),
                    self.status,
                    bytes,
                    log.referer.as_ref().map(HeaderValue::as_bytes),
                    log.user_agent.as_ref().map(HeaderValue::as_bytes),
                );
            }
            return;
        }
        let request_id = String::from_utf8_lossy(log.request_id.as_bytes());
        let user_agent = log.user_agent.as_ref().map_or(Cow::Borrowed("-"), |v| {
            String::from_utf8_lossy(v.as_bytes())
        });
        let bytes_received = log.body.as_ref().map_or(0, |b| b.received());
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let upstream_ms = self.upstream_ns.map(|n| n as f64 / 1e6);
        let error = self.error.as_ref().map_or("-", |(k, _)| k.as_str());
        let error_detail = self.error.as_ref().map_or("", |(_, d)| d.as_str());
        if let Some(mut w) = crate::logging::access_json_writer() {
            // The same fields, in the same order and shape, as the event
            // below writes through tracing's JSON layer.
            if tracing::enabled!(target: "sift::access", tracing::Level::INFO) {
                crate::access_log::write(&mut w, "access", |l| {
                    l.str("request_id", &request_id)
                        .str("trace_id", trace_id.as_deref().unwrap_or("-"))
                        .str("listener", &self.listener)
                        .display("remote", log.remote)
                        .display("client_ip", ClientIp(log))
                        .str("method", log.method.as_str())
                        .str("host", &log.host)
                        .str("path", &log.path)
                        .str("query", log.query.as_deref().unwrap_or("-"))
                        .str("protocol", version_str(log.version))
                        .u64("status", u64::from(self.status))
                        .str("route", route)
                        .str("cluster", cluster)
                        .str("endpoint", log.endpoint.as_deref().unwrap_or("-"))
                        .str("identity", log.identity.as_deref().unwrap_or("-"))
                        .str("tls", log.tls_version.unwrap_or("-"))
                        .str("sni", log.sni.as_deref().unwrap_or("-"))
                        .str("filters", log.filters.as_deref().unwrap_or("-"))
                        .u64("mirrored", u64::from(log.mirrored))
                        .str("fault", log.fault.unwrap_or("-"))
                        .str(
                            "cache",
                            self.cache.map_or("-", crate::cache::Status::as_str),
                        )
                        .str("grpc_status", self.grpc_status.map_or("-", grpc_label))
                        .f64("duration_ms", duration_ms);
                    if let Some(u) = upstream_ms {
                        l.f64("upstream_ms", u);
                    }
                    l.u64("bytes_received", bytes_received)
                        .u64("bytes_sent", bytes)
                        .str("user_agent", &user_agent)
                        .bool("completed", completed)
                        .str("error", error)
                        .str("error_detail", error_detail);
                });
            }
            return;
        }
        tracing::info!(
            target: "sift::access",
            request_id = %request_id,
            trace_id = trace_id.as_deref().unwrap_or("-"),
            listener = %self.listener,
            remote = %log.remote,
            client_ip = %ClientIp(log),
            method = %log.method,
            host = %log.host,
            path = %log.path,
            query = log.query.as_deref().unwrap_or("-"),
            protocol = ?log.version,
            status = self.status,
            route,
            cluster,
            endpoint = log.endpoint.as_deref().unwrap_or("-"),
            identity = log.identity.as_deref().unwrap_or("-"),
            tls = log.tls_version.unwrap_or("-"),
            sni = log.sni.as_deref().unwrap_or("-"),
            filters = log.filters.as_deref().unwrap_or("-"),
            mirrored = log.mirrored,
            fault = log.fault.unwrap_or("-"),
            cache = self.cache.map_or("-", crate::cache::Status::as_str),
            grpc_status = self.grpc_status.map_or("-", grpc_label),
            duration_ms,
            upstream_ms,
            bytes_received,
            bytes_sent = bytes,
            user_agent = user_agent.as_ref(),
            completed,
            error,
            error_detail,
            "access"
        );
    }
}

/// Serve one request. Never fails: errors become responses.
/// `conn_guard` is dropped when the response body ends (idle tracking).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    conn_guard: Option<crate::listener::InflightGuard>,
) -> Response<Body> {
    if conn.envoy {
        return Box::pin(crate::extauth::handle(shared, conn, req)).await;
    }
    let start = Instant::now();
    let version = req.version();
    let mut req = req.map(|b| Lingering::new(b, version));
    if version == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    let snap = shared.snapshot.load_full();
    shared.metrics.active_requests.inc();
    let grpc = crate::error::is_grpc(req.headers());
    let trace = match (&shared.tracer, &snap.config.tracing) {
        (Some(exporter), Some(t)) => Some(Box::new(Trace {
            ctx: crate::trace::TraceCtx::start(req.headers(), t.sampling),
            exporter: exporter.clone(),
            start_unix_nanos: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64),
        })),
        _ => None,
    };
    let access = snap.config.log.access_log;
    let sampled = trace.as_ref().is_some_and(|t| t.ctx.sampled);
    let log = (access || sampled).then(|| {
        Box::new(LogFields {
            remote: conn.remote,
            client_ip: None,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            query: req.uri().query().map(redact_query),
            host: String::new(),
            version: req.version(),
            request_id: HeaderValue::from_static("-"),
            route: None,
            endpoint: None,
            identity: conn.identity.as_ref().map(|i| i.id.clone()),
            filters: None,
            mirrored: 0,
            fault: None,
            access,
            combined: snap.config.log.access_log_combined,
            referer: if snap.config.log.access_log_combined {
                req.headers().get(header::REFERER).cloned()
            } else {
                None
            },
            filter: snap.config.log.access_log_filter.clone(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            body: req.body().state().cloned(),
            tls_version: conn.tls_version,
            sni: conn.sni.clone(),
        })
    });
    // Inline in the request future (whose allocation the connection reuses)
    // and then in the response body: never boxed on its own.
    let mut out = Outcome {
        metrics: shared.metrics.clone(),
        start,
        listener: conn.listener.clone(),
        listener_index: conn.listener_index,
        stats: None,
        status: 0,
        grpc_status: None,
        grpc,
        grpc_web: None,
        observe_at_end: None,
        error: None,
        log,
        endpoint_guard: None,
        _conn_guard: conn_guard,
        route_slot: None,
        adaptive_slot: None,
        cluster_slot: None,
        conn_slot: None,
        retry_permit: None,
        route_index: None,
        finished: false,
        read_timeout: None,
        upstream_ns: None,
        cors_origin: None,
        trace,
        cache: None,
    };
    let mut request_id = None;
    let mut resp = match proxy(&snap, &shared, &conn, req, &mut out, &mut request_id).await {
        Ok(resp) => resp,
        Err(e) => {
            let route = out.route_index.and_then(|i| snap.routes.get(i));
            let mut resp = error_answer(
                &e,
                grpc || out.grpc_web.is_some(),
                route,
                &shared.metrics,
                &snap.config.local_replies,
                request_id.as_ref(),
            );
            out.error = Some((e.kind(), e.to_string()));
            // The rest of a stalled body is never read: the connection
            // cannot carry another request.
            if matches!(e, ProxyError::RequestBodyTimeout { .. }) && version <= Version::HTTP_11 {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            if let Some(id) = request_id {
                resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
            }
            resp
        }
    };
    // CORS: the answer to an allowed origin, whoever made it (the app, or
    // sift: a 429 a browser app can read is one it can back off on).
    if let Some(origin) = out.cors_origin.take()
        && let Some(c) = out
            .route_index
            .and_then(|i| snap.routes.get(i))
            .and_then(|r| r.spec.cors.as_ref())
    {
        c.actual(resp.headers_mut(), &origin);
    }
    out.status = resp.status().as_u16();
    // Only a gRPC call has a gRPC status (no lookup on other answers).
    if grpc || out.grpc_web.is_some() {
        out.grpc_status = grpc_status(resp.headers());
    }
    let web = out.grpc_web;
    let (mut parts, b) = resp.into_parts();
    let b = body::Observed::new(b, out);
    // A gRPC answer to a gRPC-Web call: its content type, and its trailers
    // as the body's last frame (the Observed body inside still sees them).
    if let Some(mode) = web
        && let Some(ct) = crate::grpc_web::response_content_type(&parts.headers, mode)
    {
        parts.headers.insert(header::CONTENT_TYPE, ct);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, body::boxed(crate::grpc_web::Encode::new(b, mode)));
    }
    Response::from_parts(parts, body::boxed(b))
}

async fn proxy(
    snap: &Snapshot,
    shared: &Shared,
    conn: &Arc<ConnInfo>,
    mut req: Request<Lingering>,
    out: &mut Outcome,
    rid: &mut Option<HeaderValue>,
) -> Result<Response<Body>, ProxyError> {
    let clock = &shared.clock;
    let pool = &shared.filter_pool;
    // The request body bytes this request holds in memory (filters,
    // external authorization, retries), within overload.max_buffered_bytes
    // across every request; given back when the answer's head is here.
    // (Made at the first hold: a request that holds nothing pays nothing.)
    let mut buffered: Option<crate::budget::Reservation> = None;
    let budget = || {
        shared
            .budget
            .reservation(snap.config.overload.max_buffered_bytes)
    };
    // The same for the bytes it writes to spool files
    // (overload.max_spooled_bytes).
    let mut spooled: Option<crate::budget::Reservation> = None;
    let spool_budget = || {
        shared
            .spool_budget
            .reservation(snap.config.overload.max_spooled_bytes)
    };
    let (listener_index, listener) = snap
        .listener_at(conn.listener_index, &conn.listener)
        .ok_or_else(|| ProxyError::ListenerRemoved(conn.listener.to_string()))?;
    out.listener_index = listener_index;
    // The client's own address, as the listener trusts forwarded hops,
    // read before sift appends the peer to X-Forwarded-For.
    if let Some(log) = &mut out.log
        && (listener.trusted_hops > 0 || !listener.trusted_cidrs.is_empty())
    {
        log.client_ip = Some(trusted_client_ip(
            listener.trusted_hops,
            &listener.trusted_cidrs,
            req.headers(),
            conn.remote,
        ));
    }
    req.body_mut().set_timeouts(
        listener.limits.request_body_timeout.map(|d| d.0),
        listener.limits.request_timeout.map(|d| d.0),
        out.start,
    );

    // 2. Request hygiene.
    let seen = Seen::scan(req.headers());
    let request_id = request_id(req.headers(), seen.request_id);
    *rid = Some(request_id.clone());
    if let Some(log) = &mut out.log {
        log.request_id = request_id.clone();
    }
    // A canary override in x-sift-canary is read before x-sift-* goes.
    let forced = seen
        .canary
        .then(|| crate::field::joined(req.headers(), &X_SIFT_CANARY))
        .flatten()
        .and_then(|v| Forced::of(&v));
    if seen.sift {
        strip_sift_headers(req.headers_mut());
    }
    if seen.underscore {
        remove_underscored_headers(req.headers_mut());
    }
    check_head_size(&req, listener)?;
    // One form of each path for routes, policies and the upstream alike.
    normal_form(&mut req, listener)?;
    let host = request_host(&req)?;
    if let Some(log) = &mut out.log {
        log.host = host.to_string();
    }

    // 3. Route.
    let route = route_request(snap, listener, &host, &req)?;
    if let Some(log) = &mut out.log {
        log.route = Some(Arc::from(route.spec.name.as_str()));
    }
    out.route_index = Some(route.index);
    // A gRPC-Web call on a translating route: from here on sift's own
    // answers are gRPC answers (in the gRPC-Web form: `handle`).
    if route.spec.grpc_web
        && let Some((mode, _)) = crate::grpc_web::request(req.headers())
    {
        out.grpc_web = Some(mode);
        out.grpc = true;
    }

    // 3b. CORS: a preflight from an allowed origin is sift's to answer,
    //     before admission (Envoy's cors filter runs before its router).
    match cors_step(route, req.method(), req.headers(), &out.metrics) {
        CorsStep::Preflight(headers) => {
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = http::StatusCode::NO_CONTENT;
            *resp.headers_mut() = headers;
            resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
            return Ok(resp);
        }
        CorsStep::Actual(origin) => out.cors_origin = Some(origin),
        CorsStep::Nothing => {}
    }
    // 3c. CSRF: a state-changing request from another site's page.
    csrf_admission(route, &req)?;

    // The coding the answer may be compressed in, read before the request
    // goes upstream.
    let gzip = route.spec.compression.as_ref().map(|c| {
        (
            crate::compress::choose(req.headers(), &c.algorithms),
            req.method() == Method::HEAD,
        )
    });

    // 4. Admission: identity authorization, the route's concurrency limit,
    //    then rate limits (the listener's, then the route's).
    identity_admission(route, listener, conn, req.headers())?;
    // The Basic and JWT checks edit the request's headers: `host`
    // (borrowed from them) is read again after them, only on such routes.
    let host = match &route.spec.basic_auth {
        None => host,
        Some(b) => {
            drop(host);
            basic_auth_admission(b, route, req.headers_mut(), &out.metrics)?;
            request_host(&req)?
        }
    };
    let mut host = match &route.spec.jwt {
        None => host,
        Some(j) => {
            drop(host);
            // The URI's parts are shared bytes: the clone does not copy.
            let uri = req.uri().clone();
            jwt_admission(j, route, req.headers_mut(), uri.query(), &out.metrics)?;
            request_host(&req)?
        }
    };
    let slot = route
        .inflight
        .enter(route.spec.max_inflight)
        .ok_or_else(|| ProxyError::Overloaded {
            route: route.spec.name.clone(),
            limit: route.spec.max_inflight.unwrap_or(0),
        })?;
    out.route_slot = Some(slot);
    // One clock read serves admission and the first attempt: the request's
    // start (policies take time as a parameter).
    let mut now = clock.at(out.start);

    let admitted = rate_limit(snap, (listener_index, listener), conn, route, &req, now)?;
    // Redis is asked only when a global policy applies.
    let ratelimit_headers = if admitted.globals.is_empty() {
        admitted.headers()
    } else {
        rate_limit_global(snap, route, admitted).await?
    };

    // 4a. The route's external rate limit service (Envoy's ratelimit
    //     filter), after sift's own limits.
    let mut remote_limit_headers = Vec::new();
    if let (Some(spec), Some((cluster, counters))) =
        (&route.spec.external_rate_limit, &route.remote_limit)
    {
        let ip = trusted_client_ip(
            listener.trusted_hops,
            &listener.trusted_cidrs,
            req.headers(),
            conn.remote,
        );
        let descriptors = crate::rls_client::descriptors(
            spec,
            &crate::rls_client::Client {
                ip: &ip,
                headers: req.headers(),
                method: req.method(),
                path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
                host: &host,
                cluster: route
                    .backends
                    .first()
                    .map_or("", |b| b.cluster.spec.name.as_str()),
                identity: conn.identity.as_ref().map(|i| i.id.as_str()),
            },
        );
        if !descriptors.is_empty() {
            let (outcome, r) = Box::pin(crate::rls_client::check(
                spec,
                cluster,
                descriptors,
                *clock,
                &route.spec.name,
            ))
            .await;
            counters[outcome as usize].inc();
            let allowed = r?;
            remote_limit_headers = allowed.response;
            if !allowed.request.is_empty() {
                let add = allowed.request;
                drop(host);
                for (k, v) in add {
                    req.headers_mut().insert(k, v);
                }
                host = request_host(&req)?;
            }
        }
    }

    // 4a'. External authorization (nginx auth_request, Envoy's HTTP
    //     ext_authz), after the local checks: a request they refuse costs
    //     the service nothing. Its answer may set request headers, so the
    //     borrowed host is read again after it.
    let mut auth_client_headers = Vec::new();
    // With `with_request_body` the body is held before the check (up to
    // the largest of its limit and the route's block/annotate filters',
    // which then read the same held bytes).
    let mut held_early = None;
    let mut auth_body = None;
    if let Some(w) = route
        .spec
        .external_auth
        .as_ref()
        .and_then(|a| a.with_body.as_ref())
    {
        let cap = route
            .filters
            .iter()
            .filter(|f| f.spec.usage.mode != crate::config::file::FilterMode::Shadow)
            .map(|f| f.spec.usage.max_inspect_bytes)
            .fold(w.max_request_bytes, u64::max);
        drop(host);
        let res = buffered.get_or_insert_with(budget);
        let h = Box::pin(crate::filter::chain::hold(
            req.body_mut(),
            cap,
            route.spec.max_request_body.0,
            res,
        ))
        .await?;
        if h.starved {
            shared.budget.deny(crate::budget::Use::ExternalAuth);
            return Err(ProxyError::BuffersFull {
                what: "external authorization",
                key: "max_buffered_bytes",
                limit: snap.config.overload.max_buffered_bytes.unwrap_or(u64::MAX),
            });
        }
        let partial = !h.complete || h.data.len() as u64 > w.max_request_bytes;
        if partial && !w.allow_partial_message {
            return Err(ProxyError::BodyTooLarge {
                limit: w.max_request_bytes,
            });
        }
        let n = h.data.len().min(w.max_request_bytes as usize);
        auth_body = Some((h.data.slice(..n), partial));
        held_early = Some(h);
        host = request_host(&req)?;
    }
    let host = match (&route.spec.external_auth, &route.auth) {
        (Some(spec), Some((cluster, counters))) => {
            // As the client wrote it (with its port), already checked.
            let client_host = match req.uri().authority() {
                Some(a) => a.as_str().to_string(),
                None => req
                    .headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| host.to_string(), str::to_string),
            };
            drop(host);
            let ip = trusted_client_ip(
                listener.trusted_hops,
                &listener.trusted_cidrs,
                req.headers(),
                conn.remote,
            );
            let client = crate::external_auth::Client {
                addr: SocketAddr::new(ip.parse().unwrap_or(conn.remote.ip()), conn.remote.port()),
                identity: conn.identity.as_ref().map(|i| i.id.as_str()),
                version: req.version(),
                method: req.method(),
                uri: req.uri(),
                host: &client_host,
                tls: conn.tls,
                ip: &ip,
                headers: req.headers(),
                body: auth_body,
            };
            let (outcome, r) = Box::pin(crate::external_auth::check(
                spec,
                cluster,
                &client,
                &request_id,
                *clock,
                &route.spec.name,
            ))
            .await;
            counters[outcome as usize].inc();
            let allowed = r?;
            let h = req.headers_mut();
            let drop: Vec<HeaderName> = h
                .keys()
                .filter(|n| spec.upstream_headers.iter().any(|p| p.matches(n)))
                .cloned()
                .chain(allowed.remove)
                .collect();
            for n in drop {
                h.remove(n);
            }
            for (k, v, append) in allowed.upstream {
                if append {
                    h.append(k, v);
                } else {
                    h.insert(k, v);
                }
            }
            auth_client_headers = allowed.client;
            request_host(&req)?
        }
        _ => host,
    };

    // 4b. Routes that answer themselves, after admission (Envoy's router
    //     answers redirects and direct responses after its rate limits).
    //     The request body is not read.
    if route.spec.redirect.is_some() || route.spec.direct_response.is_some() {
        let mut resp = local_answer(&route.spec, &req, &host, conn.tls)?;
        let h = resp.headers_mut();
        route.spec.response_headers.apply(h);
        h.insert(X_REQUEST_ID.clone(), request_id);
        for (k, v) in ratelimit_headers.into_iter().flatten() {
            h.insert(k, v);
        }
        for (k, v) in auth_client_headers {
            h.append(k, v);
        }
        for (k, v) in remote_limit_headers {
            h.insert(k, v);
        }
        return Ok(resp);
    }

    // 4c. Fault injection (Envoy's fault filter, before its router): a
    //     delay first, then an abort answers instead of the upstream. The
    //     route's timeout starts after a delay.
    let mut delayed = false;
    if let Some(f) = &route.spec.fault {
        let faults = |kind: &str| {
            out.metrics
                .faults
                .with_label_values(&[route.spec.name.as_str(), kind])
                .inc()
        };
        if let Some(d) = f
            .delay
            .as_ref()
            .filter(|d| crate::config::model::in_share(d.per_million, fastrand::u32(..1_000_000)))
        {
            faults("delay");
            tokio::time::sleep(d.fixed.0).await;
            now = clock.now();
            delayed = true;
        }
        let abort = f
            .abort
            .as_ref()
            .filter(|a| crate::config::model::in_share(a.per_million, fastrand::u32(..1_000_000)));
        if abort.is_some() {
            faults("abort");
        }
        if let Some(log) = &mut out.log {
            log.fault = match (delayed, abort.is_some()) {
                (true, true) => Some("delay,abort"),
                (true, false) => Some("delay"),
                (false, true) => Some("abort"),
                (false, false) => None,
            };
        }
        if let Some(a) = abort {
            return Err(ProxyError::FaultAbort { status: a.status });
        }
    }

    // 5. Body limit, up front when the length is declared.
    let limit = route.spec.max_request_body.0;
    transfer_codings(req.headers())?;
    let declared = content_length(req.headers())?;
    if declared.is_some_and(|len| len > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }

    // 5b. Body filters. An answer route replies with its filter's verdict;
    //     block and annotate filters read a held prefix of the body before
    //     anything is forwarded (shadow filters come with the body, below).
    // Built only when a filter can run: a bodiless request on a filtered
    // route allocates nothing here, unless a filter reads query fields and
    // the request has a query.
    let bodiless = req.body().is_end_stream();
    let query_read = bodiless
        && req.uri().query().is_some()
        && route
            .filters
            .iter()
            .any(|f| !f.filter.spec().query_fields.is_empty());
    let info = (route.answer.is_some() || (!route.filters.is_empty() && (!bodiless || query_read)))
        .then(|| filter_request_info(&req, route, conn))
        .transpose()?;
    if let (Some(f), Some(info)) = (&route.answer, &info) {
        // Boxed, like every await off the plain forwarding path: the
        // request future's size is its largest await state, and hyper
        // holds one per request.
        let v = Box::pin(crate::filter::chain::answer(
            pool,
            &out.metrics.filters,
            &route.spec.name,
            info,
            f,
            req.body_mut(),
            limit,
        ))
        .await?;
        if let Some(log) = &mut out.log {
            log.filters = Some(format!("{}={}({:.4})", v.filter, v.verdict, v.score));
        }
        let json = serde_json::to_vec(&v).map_err(|e| ProxyError::Internal(e.to_string()))?;
        let mut resp = Response::new(body::full(json));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(X_REQUEST_ID.clone(), request_id);
        route.spec.response_headers.apply(h);
        return Ok(resp);
    }
    let mut body_awaited = held_early.is_some();
    let mut held = held_early;
    let mut spilled = None;
    let mut decision = crate::filter::chain::Decision::default();
    let held_filters: Vec<&crate::snapshot::RouteFilter> = route
        .filters
        .iter()
        .filter(|f| f.spec.usage.mode != crate::config::file::FilterMode::Shadow)
        .collect();
    if let (false, Some(info)) = (held_filters.is_empty() || (bodiless && !query_read), &info) {
        let cap = held_filters
            .iter()
            .map(|f| f.spec.usage.max_inspect_bytes)
            .max()
            .unwrap_or(0);
        let spools = !bodiless
            && held_filters
                .iter()
                .any(|f| f.spec.usage.on_oversize == crate::config::file::OnOversize::Spool);
        let r = if spools {
            Box::pin(crate::filter::chain::run_spooled(
                pool,
                &out.metrics.filters,
                &route.spec.name,
                info,
                req.body_mut(),
                &held_filters,
                limit,
                buffered.get_or_insert_with(budget),
                spooled.get_or_insert_with(spool_budget),
            ))
            .await
            .map(|(d, s)| {
                spilled = Some(s);
                d
            })
        } else {
            let h = match held.take() {
                // Held already for the external auth check.
                Some(h) => Ok(h),
                None => {
                    let res = buffered.get_or_insert_with(budget);
                    let h =
                        Box::pin(crate::filter::chain::hold(req.body_mut(), cap, limit, res)).await;
                    if h.as_ref().is_ok_and(|h| h.starved) {
                        // The filters' on_overload decides (run_held).
                        shared.budget.deny(crate::budget::Use::Filter);
                    }
                    h
                }
            };
            match h {
                Ok(h) => {
                    let r = Box::pin(crate::filter::chain::run_held(
                        pool,
                        &out.metrics.filters,
                        &route.spec.name,
                        info,
                        &h,
                        &held_filters,
                    ))
                    .await;
                    held = Some(h);
                    r
                }
                Err(e) => Err(e),
            }
        };
        decision = match r {
            Ok(d) => d,
            Err(e) => {
                if let (
                    Some(log),
                    ProxyError::FilterBlocked {
                        filter,
                        verdict,
                        score,
                        ..
                    },
                ) = (&mut out.log, &e)
                {
                    log.filters = Some(format!("{filter}={verdict}({score:.4})"));
                }
                // The request is dropped with its body: a body not read
                // to its end is drained (body::Lingering), so the client
                // reads the answer.
                return Err(e);
            }
        };
        body_awaited = true;
    }
    if let (Some(log), false) = (&mut out.log, decision.summary.is_empty()) {
        log.filters = Some(decision.summary.join(" "));
    }

    // 6. Backend cluster and its circuit breaker (max_requests); a filter
    //    rule may send the request to another cluster.
    let backend = match (&decision.cluster, &route.canary) {
        (Some(c), _) => route.rule_backends.get(c),
        (None, Some(c)) => canary_backend(route, c, listener, conn, &req, forced),
        (None, None) => route.pick_backend(),
    }
    .ok_or_else(|| ProxyError::NoHealthyEndpoint {
        cluster: format!("(route {} has no cluster with weight)", route.spec.name),
    })?;
    let cluster = &backend.cluster;
    let (lb_key, set_cookie) = if cluster.hashes() && !route.spec.hash_policy.is_empty() {
        policy_hash(&route.spec.hash_policy, listener, conn, &req)
    } else {
        (None, None)
    };
    out.read_timeout = Some(cluster.spec.read_timeout.0);
    out.stats = Some(backend.stats.clone());

    // 6b. The route's cache: a fresh entry answers here, before the
    //     cluster's circuit breaker and the upstream.
    let mut fetch = None;
    let mut invalidate = None;
    let mut hit = None;
    if let Some(cache) = &route.cache {
        use crate::cache::{Plan, Status};
        let plain = bodiless && !req.headers().contains_key(header::UPGRADE);
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let host = request_host(&req)?;
        let ask = crate::cache::Request {
            method: req.method(),
            headers: req.headers(),
            host: &host,
            path_and_query: pq,
            cluster: &cluster.spec.name,
            plain,
        };
        match Box::pin(cache.plan(&ask, || clock.now())).await {
            Plan::Hit(entry, cond, status) => hit = Some((entry, cond, status)),
            // Boxed: it waits in the request future across the upstream call.
            Plan::Fetch(f) => fetch = Some(f),
            Plan::Bypass { invalidate: i } => {
                cache.metrics.count(Status::Bypass);
                out.cache = Some(Status::Bypass);
                invalidate = i;
            }
        }
    }
    // The cluster's circuit breaker: when it is open, an expired entry
    // allowed to stand in for errors answers instead (nginx's
    // proxy_cache_use_stale covers "error" too, not only bad answers).
    let slot = match hit {
        Some(_) => None,
        None => match cluster.request_slot() {
            Ok(slot) => Some(slot),
            Err(e) => match stale_entry(&fetch, route.cache.as_deref(), clock.now()) {
                Some((entry, cond)) => {
                    tracing::debug!(route = %route.spec.name, error = %e, "circuit open: a stale cache entry answers");
                    hit = Some((entry, cond, crate::cache::Status::Stale));
                    None
                }
                None => return Err(e),
            },
        },
    };
    if let (Some((entry, cond, status)), Some(cache)) = (hit, &route.cache) {
        let head = req.method() == Method::HEAD;
        let resp = crate::cache::respond(&entry, head, &cond, clock.now());
        let template_ip = route.spec.response_headers.templated().then(|| {
            trusted_client_ip(
                listener.trusted_hops,
                &listener.trusted_cidrs,
                req.headers(),
                conn.remote,
            )
        });
        cache.metrics.count(status);
        out.cache = Some(status);
        let (parts, b) = resp.into_parts();
        return Ok(decorate(
            Decorate {
                route,
                cluster,
                endpoint: usize::MAX,
                template_ip: template_ip.as_deref(),
                conn,
                version: req.version(),
                request_id,
                set_cookie,
                ratelimit_headers,
                auth_client_headers,
                remote_limit_headers,
                gzip,
                cache: Some(status),
            },
            out,
            parts,
            b,
        ));
    }
    out.cluster_slot = slot;

    // 7. Upstream request head (the endpoint is set per attempt).
    let upgrade = (seen.hop & hop::CONNECTION != 0)
        .then(|| upgrade_protocol(&req))
        .flatten();
    if upgrade.is_some() && cluster.spec.protocol == UpstreamProtocol::Http2 {
        // HTTP/2 has no Upgrade (RFC 9113 §8.6): forwarded, the request
        // would lose it and the client get a plain answer instead of 101.
        return Err(ProxyError::NotImplemented(
            "a protocol upgrade (WebSocket) to an http2 cluster; give the cluster protocol: http1",
        ));
    }
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    // What request header templates read of the client's request, before
    // sift edits its headers (X-Forwarded-For gains the peer below).
    let ops = &route.spec.request_headers;
    let templated = ops.templated();
    let resp_templated = route.spec.response_headers.templated();
    let template_ip = (templated || resp_templated).then(|| {
        trusted_client_ip(
            listener.trusted_hops,
            &listener.trusted_cidrs,
            req.headers(),
            conn.remote,
        )
    });
    let downstream_version = req.version();
    let web = route
        .spec
        .grpc_web
        .then(|| crate::grpc_web::request(req.headers()))
        .flatten();
    let (mut parts, incoming) = req.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    let original_authority = uri.authority.take();
    let mut path_and_query = uri
        .path_and_query
        .take()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if let Some(new_prefix) = &route.spec.rewrite_prefix {
        let mut pq = crate::config::model::rewrite_prefix(
            &route.spec.matches.path,
            path_and_query.path(),
            new_prefix,
        );
        if let Some(q) = path_and_query.query() {
            pq.push('?');
            pq.push_str(q);
        }
        path_and_query = http::uri::PathAndQuery::try_from(pq)
            .map_err(|_| ProxyError::Internal("rewritten path is not a URI path".into()))?;
    }
    if let Some(rx) = &route.spec.rewrite_regex {
        let path = path_and_query.path();
        let new = rx.apply(path);
        if new != path {
            // The substitution is checked at load to hold path characters
            // only; the one thing a match can still break is the leading `/`.
            if !new.starts_with('/') {
                return Err(ProxyError::Internal(format!(
                    "rewrite.regex turned {path:?} into {new:?}, which does not start with '/'"
                )));
            }
            let mut pq = new.into_owned();
            if let Some(q) = path_and_query.query() {
                pq.push('?');
                pq.push_str(q);
            }
            path_and_query = http::uri::PathAndQuery::try_from(pq)
                .map_err(|_| ProxyError::Internal("rewritten path is not a URI path".into()))?;
        }
    }
    parts.version = match cluster.spec.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
        // The client's protocol; an upgrade (HTTP/1.1 only) stays there.
        UpstreamProtocol::Client if downstream_version == Version::HTTP_2 && upgrade.is_none() => {
            Version::HTTP_2
        }
        UpstreamProtocol::Client => Version::HTTP_11,
    };
    let upstream_h2 = parts.version == Version::HTTP_2;
    let h = &mut parts.headers;
    // The scan at the start saw which hop-by-hop headers there are (only
    // x-sift-* has been removed since).
    strip_hop_by_hop_present(h, seen.hop);
    // Room for what sift adds (X-Forwarded-*, XFCC, x-request-id, route
    // headers) in one step: the client's map was sized for its own headers.
    h.reserve(6 + route.spec.request_headers.set.len() + route.spec.request_headers.add.len());
    if let Some(proto) = &upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto.clone());
    }
    // The request was routed on the URI's authority when it had one
    // (HTTP/2 :authority, HTTP/1.1 absolute form): RFC 9112 §3.2.2 says it
    // replaces Host, so the upstream gets the host the route matched, never
    // a differing Host line.
    if let Some(a) = &original_authority {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            h.insert(header::HOST, v);
        }
    }
    forwarded_headers(h, listener, conn, &original_authority, &seen);
    // Host rewrite (X-Forwarded-Host, set above, keeps the client's).
    if let Some(crate::config::model::HostRewrite::Literal(v)) = &route.spec.rewrite_host {
        h.insert(header::HOST, v.clone());
    }
    // Tracing on: the upstream's parent is sift's span (tracestate passes).
    if let Some(t) = &out.trace {
        h.insert(crate::trace::TRACEPARENT.clone(), t.ctx.traceparent());
    }
    // Only sift vouches for a client certificate: a client's XFCC never passes.
    if seen.xfcc {
        h.remove(&XFCC);
    }
    if let Some(x) = &conn.xfcc {
        h.insert(XFCC.clone(), x.clone());
    }
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    // A client's headers named like this route's verdict headers (a
    // header_prefix outside x-sift-) never reach the upstream.
    route.spec.strip_verdict_headers(h);
    match &template_ip {
        Some(client_ip) if templated => {
            let ctx = template_ctx(client_ip, conn, downstream_version, route, cluster, out);
            ops.apply_with(h, &ctx);
        }
        _ => ops.apply(h),
    }
    // Verdict headers: only sift sets x-sift-* (the client's were removed).
    for (k, v) in decision.headers {
        h.insert(k, v);
    }
    // gRPC-Web: the call goes upstream as gRPC (its answer comes back as
    // gRPC-Web: `handle`).
    if let Some((mode, content_type)) = &web {
        h.insert(header::CONTENT_TYPE, content_type.clone());
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        if *mode == crate::grpc_web::Mode::Text {
            h.remove(header::CONTENT_LENGTH);
        }
    }
    // An HTTP/2 upstream gets the request's host as :authority (RFC 9113
    // §8.3.1), not the endpoint's address, and no Host header beside it;
    // the connection goes to the endpoint all the same.
    let h2_authority = if upstream_h2 {
        h.get(header::HOST)
            .and_then(|v| http::uri::Authority::try_from(v.as_bytes()).ok())
    } else {
        None
    };
    if h2_authority.is_some() {
        h.remove(header::HOST);
    }

    // The body: kept for replay when retries are on and it is small
    // enough, else streamed (and then never retried once sent).
    let retry = route
        .spec
        .retries
        .as_ref()
        .filter(|r| r.attempts > 0 && upgrade.is_none());
    // A POST or PATCH that reached the upstream may have taken effect:
    // retried only after a failed connect unless the route allows it.
    let sent_is_final = retry.is_some_and(|r| !r.non_idempotent)
        && !crate::policy::retry::idempotent(&parts.method);
    // Read only after a failed send, to tell a client fault from an upstream
    // one; a bodiless request never needs it (and allocates none).
    // Shared with the client's body (its timeout stops once the upstream
    // answers) and the access log; None for a request without a body.
    let mut state: Option<Arc<BodyState>> = incoming.state().cloned();
    // The names of trailers sift already holds (a body read whole before
    // it is sent): an HTTP/1.1 upstream needs them declared.
    let mut known_trailers: Vec<HeaderName> = Vec::new();
    let mut body = if let Some(mut s) = spilled {
        if let Some(t) = &mut s.trailers {
            crate::field::clean_trailers(t);
            known_trailers.extend(t.keys().cloned());
        }
        let replay = s.complete && s.file.is_none() && s.trailers.is_none() && s.tail.is_empty();
        if replay && s.head.len() <= 1 {
            Plan::Replay(s.head.into_iter().next().unwrap_or_default())
        } else if replay {
            // Held in memory whole (at most max_inspect_bytes): kept for
            // replay, as a body held without spooling is.
            let mut b = bytes::BytesMut::with_capacity(s.read as usize);
            for c in &s.head {
                b.extend_from_slice(c);
            }
            Plan::Replay(b.freeze())
        } else {
            let reader = match s.file.map(|f| f.into_reader()).transpose() {
                Ok(r) => r,
                Err(e) => return Err(ProxyError::Spool(e.to_string())),
            };
            let left = limit.saturating_sub(s.read);
            let rest =
                (!s.complete).then(|| Limited::new(incoming, left, shared_state(&mut state)));
            Plan::Stream(Some(body::boxed(crate::filter::spool::Spooled::new(
                s.head, reader, s.tail, s.trailers, rest,
            ))))
        }
    } else if let Some(mut h) = held {
        if let Some(t) = &mut h.trailers {
            crate::field::clean_trailers(t);
            known_trailers.extend(t.keys().cloned());
        }
        if h.complete && h.trailers.is_none() {
            Plan::Replay(h.data)
        } else {
            let left = limit.saturating_sub(h.data.len() as u64);
            let rest =
                (!h.complete).then(|| Limited::new(incoming, left, shared_state(&mut state)));
            Plan::Stream(Some(body::boxed(crate::filter::spool::Spooled::new(
                vec![h.data],
                None,
                Vec::new(),
                h.trailers,
                rest,
            ))))
        }
    } else if incoming.is_end_stream() {
        Plan::Replay(bytes::Bytes::new())
    } else if let Some(r) = retry.filter(|r| {
        declared.is_some_and(|len| {
            len <= r.buffer_limit && {
                // Held for replay only within overload.max_buffered_bytes;
                // else it streams (not replayable).
                let ok = buffered.get_or_insert_with(budget).grow(len);
                if !ok {
                    shared.budget.deny(crate::budget::Use::Retry);
                }
                ok
            }
        })
    }) {
        let collected = Box::pin(
            Limited::new(
                incoming,
                limit.min(r.buffer_limit),
                shared_state(&mut state),
            )
            .collect(),
        )
        .await;
        body_awaited = true;
        match collected {
            Ok(b) => match b.trailers().cloned() {
                None => Plan::Replay(b.to_bytes()),
                // Trailers beside a Content-Length (an HTTP/2 client's):
                // sent after the body, which is then not replayed (a
                // replay has bytes only).
                Some(t) => Plan::Stream(Some(body::boxed({
                    known_trailers.extend(t.keys().cloned());
                    crate::filter::spool::Spooled::<Body>::new(
                        vec![b.to_bytes()],
                        None,
                        Vec::new(),
                        Some(t),
                        None,
                    )
                }))),
            },
            Err(e) => {
                return Err(match body_state(&state) {
                    BodyState::TOO_LARGE => ProxyError::BodyTooLarge { limit },
                    _ => ProxyError::client_body(&*e),
                });
            }
        }
    } else {
        Plan::Stream(Some(body::boxed(Limited::new(
            incoming,
            limit,
            shared_state(&mut state),
        ))))
    };

    // Request buffering: the whole body is read before an upstream is
    // asked (nginx's proxy_request_buffering), in memory up to in_memory
    // (within overload.max_buffered_bytes), the rest in a spool file.
    if let (Some(rb), true) = (&route.spec.request_buffering, upgrade.is_none()) {
        if let Plan::Stream(b) = &mut body {
            if let Some(inner) = b.take() {
                let res = buffered.get_or_insert_with(budget);
                let disk = spooled.get_or_insert_with(spool_budget);
                body = match Box::pin(buffer_whole(inner, rb, res, disk, &mut known_trailers)).await
                {
                    Ok(p) => p,
                    Err(BufferError::DiskFull) => {
                        return Err(ProxyError::BuffersFull {
                            what: "request buffering",
                            key: "max_spooled_bytes",
                            limit: snap.config.overload.max_spooled_bytes.unwrap_or(u64::MAX),
                        });
                    }
                    Err(BufferError::Body(e)) => {
                        return Err(match body_state(&state) {
                            BodyState::TOO_LARGE => ProxyError::BodyTooLarge { limit },
                            _ => ProxyError::client_body(&*e),
                        });
                    }
                    Err(BufferError::Spool(e)) => return Err(ProxyError::Spool(e.to_string())),
                };
                body_awaited = true;
            }
        }
    }

    // A gRPC-Web text body is base64: decoded as it streams.
    if let Some((crate::grpc_web::Mode::Text, _)) = &web {
        body = match body {
            Plan::Replay(b) => {
                let mut d = crate::grpc_web::TextDecoder::default();
                let mut out = bytes::BytesMut::new();
                d.feed(&b, &mut out)
                    .and_then(|()| d.finish())
                    .map_err(|e| ProxyError::ClientBody(e.to_string()))?;
                Plan::Replay(out.freeze())
            }
            Plan::Stream(b) => {
                let state = shared_state(&mut state);
                Plan::Stream(
                    b.map(|inner| body::boxed(crate::grpc_web::DecodeText::new(inner, state))),
                )
            }
        };
    }

    // Shadow filters get a copy of the body as it goes; never in its way.
    if let Some(info) = info {
        let shadows: Vec<_> = route
            .filters
            .iter()
            .filter(|f| f.spec.usage.mode == crate::config::file::FilterMode::Shadow)
            .map(|f| (f.filter.clone(), f.spec.usage.clone()))
            .collect();
        let has_body = query_read
            || match &body {
                Plan::Replay(b) => !b.is_empty(),
                Plan::Stream(_) => true,
            };
        if let (false, true) = (shadows.is_empty(), has_body) {
            let tx = crate::filter::chain::shadow(
                pool.clone(),
                out.metrics.clone(),
                Arc::from(route.spec.name.as_str()),
                info,
                String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
                shadows,
            );
            if let Some(tx) = tx {
                match &mut body {
                    Plan::Replay(b) => tx.send_all(b.clone()),
                    Plan::Stream(b) => {
                        if let Some(inner) = b.take() {
                            *b = Some(body::boxed(crate::filter::chain::Tee::new(inner, tx)));
                        }
                    }
                }
            }
        }
    }

    // 7b. Mirrors: a copy of the request as sent upstream to each sampled
    //     mirror cluster, after admission and filters (a refused request is
    //     never mirrored); fire and forget, in tasks of their own. A streamed
    //     body is copied as the primary reads it, never held back for them.
    if !route.mirrors.is_empty() && upgrade.is_none() {
        let known = match &body {
            Plan::Replay(b) => Some(b),
            Plan::Stream(_) => None,
        };
        let started = crate::mirror::start(
            &route.mirrors,
            stable_hash_bytes(request_id.as_bytes()),
            || {
                let mut headers = parts.headers.clone();
                // An HTTP/2 primary carries the host as :authority only.
                if let Some(a) = &h2_authority {
                    if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                        headers.insert(header::HOST, v);
                    }
                }
                crate::mirror::Head {
                    method: parts.method.clone(),
                    path_and_query: path_and_query.clone(),
                    headers,
                    version: parts.version,
                }
            },
            known,
            declared,
            *clock,
            budget(),
        );
        if !started.txs.is_empty() {
            if let Plan::Stream(b) = &mut body {
                if let Some(inner) = b.take() {
                    *b = Some(body::boxed(crate::mirror::CopyBody::new(
                        inner,
                        started.cap,
                        declared,
                        started.txs,
                    )));
                }
            }
        }
        if let Some(log) = &mut out.log {
            log.mirrored = started.count;
        }
    }

    if !upstream_h2 && matches!(body, Plan::Stream(_)) {
        h1_trailer_framing(&mut parts.headers, &known_trailers);
    }

    // A stale entry's validators go upstream (the client's conditions are
    // answered from the entry).
    if let Some(f) = &mut fetch {
        f.revalidate(&mut parts.headers);
    }

    // 8. Send, retrying what the route's policy allows within the budget.
    //    The adaptive concurrency limit counts and times what goes
    //    upstream: from here to the end of the answer's body.
    //    (Upgraded tunnels are neither: they last as long as they are used.)
    if let (Some((controller, blocked)), None) = (&route.adaptive, &upgrade) {
        match controller.try_enter(clock.now(), *clock) {
            Ok(slot) => out.adaptive_slot = Some(slot),
            Err(limit) => {
                blocked.inc();
                return Err(ProxyError::AdaptiveOverloaded {
                    route: route.spec.name.clone(),
                    limit,
                });
            }
        }
    }
    let timeout = cluster.spec.timeout_for(&route.spec);
    // A gRPC call's own deadline replaces the route's timeout on routes
    // that honour it (capped by `max`, less `offset`).
    let client_deadline = route
        .spec
        .grpc_timeout
        .as_ref()
        .filter(|_| out.grpc)
        .and_then(|g| {
            let t = parse_grpc_timeout(parts.headers.get(&GRPC_TIMEOUT)?)?;
            Some(g.max.map_or(t, |m| t.min(m)).saturating_sub(g.offset))
        });
    let timeout = client_deadline.unwrap_or(timeout);
    // A timeout is the call's deadline passing when it came from the call.
    let timed_out = |t: std::time::Duration| match client_deadline {
        Some(d) => ProxyError::DeadlineExceeded(d),
        None => ProxyError::UpstreamTimeout(t),
    };
    let downstream_head = parts.method == Method::HEAD;
    let mut served_stale = false;
    // The route's timeout counts from when the request is ready to send:
    // its start, unless its body was awaited above (held for filters or
    // collected for retries). Deadlines are absolute: no attempt reads the
    // clock to know what time is left.
    let ready = if body_awaited || delayed {
        Instant::now()
    } else {
        out.start
    };
    let deadline = ready + timeout;
    let deadline_at = tokio::time::Instant::from_std(deadline);
    let mut attempt = 0u32;
    let mut previous = None;
    let mut last_ep;
    let mut began = ready;
    // Hedging (Envoy's hedge_on_per_try_timeout): a try past its
    // per-try timeout keeps running beside the next one; the first answer
    // wins and the others are cancelled.
    let hedge = retry.is_some_and(|r| r.hedge_on_per_try_timeout && r.per_try_timeout.is_some());
    let mut outstanding: Vec<Outstanding<'_>> = Vec::new();
    let background = parts.method == Method::GET
        && retry.is_none()
        && upgrade.is_none()
        && matches!(body, Plan::Replay(_));
    let mut resp = 'tries: loop {
        let Some((mut ep_index, mut ep_guard)) = cluster.pick(now, previous, lb_key) else {
            let err = ProxyError::NoHealthyEndpoint {
                cluster: cluster.spec.name.clone(),
            };
            // No endpoint to ask: an expired entry allowed to stand in
            // for errors answers.
            if let Some(r) = stale_answer(&fetch, route, now, downstream_head, &err) {
                served_stale = true;
                last_ep = usize::MAX;
                break 'tries r;
            }
            return Err(err);
        };
        let mut endpoint = &cluster.endpoints[ep_index].endpoint;
        // auto_host: this endpoint's name for Host (:authority on HTTP/2).
        let auto_host = matches!(
            route.spec.rewrite_host,
            Some(crate::config::model::HostRewrite::Auto)
        )
        .then(|| auto_host_authority(endpoint, cluster.spec.tls.is_some()))
        .flatten();
        last_ep = ep_index;
        if let Some(log) = &mut out.log {
            log.endpoint = Some(endpoint.id().into_owned());
        }
        let try_deadline = match retry.and_then(|r| r.per_try_timeout) {
            Some(t) => {
                began = Instant::now();
                (began + t).min(deadline)
            }
            None => deadline,
        };
        let waited = match tokio::time::timeout_at(
            deadline_at,
            cluster.conn_slot(parts.version == Version::HTTP_2),
        )
        .await
        {
            Ok(slot) => slot,
            Err(_) => Err(timed_out(timeout)),
        };
        let mut conn_slot = match waited {
            Ok(slot) => slot,
            Err(err) => {
                if let Some(r) = stale_answer(&fetch, route, now, downstream_head, &err) {
                    served_stale = true;
                    last_ep = usize::MAX;
                    break 'tries r;
                }
                return Err(err);
            }
        };
        let uri = Uri::from_parts({
            let mut u = http::uri::Parts::default();
            u.scheme = Some(if cluster.spec.tls.is_some() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            u.authority = Some(match (&auto_host, parts.version) {
                (Some(a), Version::HTTP_2) => a.clone(),
                _ => h2_authority
                    .clone()
                    .unwrap_or_else(|| endpoint.authority.clone()),
            });
            u.path_and_query = Some(path_and_query.clone());
            u
        })
        .map_err(|e| ProxyError::Internal(format!("upstream URI: {e}")))?;
        let streamed = matches!(body, Plan::Stream(Some(_)));
        let mut upstream_req = match &mut body {
            Plan::Replay(b) => {
                // An empty body boxes a zero-sized type: no allocation.
                let mut r = Request::new(if b.is_empty() {
                    body::empty()
                } else {
                    body::full(b.clone())
                });
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = uri;
                *r.version_mut() = parts.version;
                // Only a request that may be retried needs its head again.
                *r.headers_mut() = if retry.is_some() {
                    parts.headers.clone()
                } else {
                    std::mem::take(&mut parts.headers)
                };
                r
            }
            Plan::Stream(b) => {
                let b = b
                    .take()
                    .ok_or_else(|| ProxyError::Internal("body sent twice".into()))?;
                let mut r = Request::new(b);
                *r.method_mut() = parts.method.clone();
                *r.uri_mut() = uri;
                *r.version_mut() = parts.version;
                *r.headers_mut() = std::mem::take(&mut parts.headers);
                r
            }
        };
        if let (Some(a), Version::HTTP_11) = (&auto_host, parts.version) {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                upstream_req.headers_mut().insert(header::HOST, v);
            }
        }
        // HTTP/1.1 requires Host; an HTTP/1.0 client may have sent none:
        // then the endpoint's address, as nginx's proxy_pass does.
        if parts.version == Version::HTTP_11 && !upstream_req.headers().contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(endpoint.authority.as_str()) {
                upstream_req.headers_mut().insert(header::HOST, v);
            }
        }
        // The upstream learns the time left (of this try, when shorter).
        if client_deadline.is_some() {
            upstream_req.headers_mut().insert(
                GRPC_TIMEOUT.clone(),
                format_grpc_timeout(try_deadline.saturating_duration_since(Instant::now())),
            );
        }
        let try_at = tokio::time::Instant::from_std(try_deadline);
        // background_update: the stale entry answers now; this try goes on
        // in a task that refreshes the entry (and holds the key's lock, so
        // others keep getting UPDATING meanwhile).
        if let (Some(cache), true) = (&route.cache, background)
            && let Some(f) = fetch.take_if(|f| f.in_background(cache, now))
            && let Some(old) = f.stale.clone()
        {
            let answer = crate::cache::respond(&old, downstream_head, &f.cond, now);
            cache.metrics.count(crate::cache::Status::Updating);
            out.cache = Some(crate::cache::Status::Updating);
            // The adaptive limit times the upstream's request, not the
            // stale answer: its slot goes along.
            let guards = (
                ep_guard,
                conn_slot,
                out.cluster_slot.take(),
                out.adaptive_slot.take(),
            );
            tokio::spawn(refresh_in_background(
                cache.clone(),
                f,
                cluster.clone(),
                ep_index,
                upstream_req,
                try_at,
                *clock,
                guards,
            ));
            last_ep = usize::MAX;
            break 'tries answer;
        }
        // Only the access log reads the upstream's time: no clock read
        // without it.
        let sent = out.log.is_some().then(Instant::now);
        let result = if !hedge {
            match state.as_deref() {
                // A body still streaming: the try's time counts from its
                // end (a slow upload is not an upstream timeout); a
                // call's own grpc-timeout is absolute all the same.
                Some(st) if streamed && client_deadline.is_none() => {
                    let stall = listener.limits.request_body_timeout.map(|d| d.0);
                    let span = try_deadline.saturating_duration_since(began);
                    let send = cluster.send(ep_index, upstream_req);
                    send_streamed(send, try_at, span, st, stall).await
                }
                _ => tokio::time::timeout_at(try_at, cluster.send(ep_index, upstream_req))
                    .await
                    .map_err(|_| ()),
            }
        } else {
            // Every try runs in `outstanding`; the first good answer wins.
            // While another try may start, a try past its per-try timeout
            // gets a companion; after that, the running ones have until the
            // route's deadline, and a failed or retryable answer waits for
            // the others still running (as Envoy does).
            let r = retry.ok_or_else(|| ProxyError::Internal("hedging without retries".into()))?;
            outstanding.push(Outstanding {
                fut: Box::pin(cluster.send(ep_index, upstream_req)),
                ep_index,
                ep_guard,
                conn_slot,
                permit: out.retry_permit.take(),
            });
            let mut may_hedge =
                attempt < r.attempts && matches!(body, Plan::Replay(_)) && !sent_is_final;
            let mut fallback = None;
            let won = loop {
                let until = if may_hedge { try_at } else { deadline_at };
                match tokio::time::timeout_at(until, race(&mut outstanding)).await {
                    Ok((i, res)) => {
                        let won = outstanding.swap_remove(i);
                        let bad = match &res {
                            Ok(a) => r.retries_answer(a.status().as_u16(), a.headers()),
                            Err(_) => true,
                        };
                        if bad && !may_hedge && !outstanding.is_empty() {
                            fallback = Some((won, res));
                            continue;
                        }
                        break Some((won, res));
                    }
                    Err(_) if may_hedge => {
                        let permit = (Instant::now() < deadline
                            && cluster.any_available(clock.now()))
                        .then(|| cluster.retry_permit())
                        .flatten();
                        match permit {
                            Some(p) => {
                                out.retry_permit = Some(p);
                                attempt += 1;
                                cluster.metrics.hedged.inc();
                                previous = outstanding.last().map(|o| o.ep_index);
                                began = Instant::now();
                                now = clock.at(began);
                                continue 'tries;
                            }
                            None => may_hedge = false,
                        }
                    }
                    Err(_) => break fallback.take(),
                }
            };
            let Some((won, res)) = won else {
                return Err(timed_out(timeout));
            };
            (ep_index, ep_guard, conn_slot) = (won.ep_index, won.ep_guard, won.conn_slot);
            if won.permit.is_some() {
                out.retry_permit = won.permit;
            }
            endpoint = &cluster.endpoints[ep_index].endpoint;
            Ok(res)
        };
        if ep_index != last_ep {
            // A hedged try won: the log names its endpoint.
            last_ep = ep_index;
            if let Some(log) = &mut out.log {
                log.endpoint = Some(endpoint.id().into_owned());
            }
        }
        now = clock.now();
        // What happened, and whether the policy retries it.
        let mut connect_failed = false;
        let (outcome, retryable) = match result {
            Ok(Ok(resp)) => {
                if let Some(s) = &state {
                    s.set_answered();
                }
                out.upstream_ns = sent.map(|t| now.saturating_sub(clock.at(t)));
                let code = resp.status().as_u16();
                // A gRPC call's outcome is its grpc-status: in the head
                // (a trailers-only error) or, for a 200, in the trailers
                // (observed when the answer ends).
                let head_grpc = out.grpc.then(|| grpc_status(resp.headers())).flatten();
                if out.grpc && code == 200 && head_grpc.is_none() {
                    out.observe_at_end = Some(*clock);
                } else {
                    out.observe_at_end = None;
                    let effective = head_grpc.filter(|_| code == 200).map_or(code, grpc_as_http);
                    cluster.observe(ep_index, Observed::of_status(effective), now);
                }
                let again = retry.is_some_and(|r| r.retries_answer(code, resp.headers()));
                (Ok(resp), again)
            }
            Ok(Err(e)) => match body_state(&state) {
                BodyState::TOO_LARGE => return Err(ProxyError::BodyTooLarge { limit }),
                BodyState::CLIENT_ERROR => return Err(ProxyError::ClientBody(error_chain(&e))),
                BodyState::TIMED_OUT => {
                    return Err(match crate::body::BodyTimedOut::find(&e) {
                        Some(t) => ProxyError::RequestBodyTimeout {
                            after: t.after.0,
                            whole: t.whole,
                        },
                        // The cause is not in hyper's chain: the idle one,
                        // unless only the whole-request limit is set.
                        None => ProxyError::RequestBodyTimeout {
                            after: listener
                                .limits
                                .request_body_timeout
                                .or(listener.limits.request_timeout)
                                .map_or(std::time::Duration::ZERO, |d| d.0),
                            whole: listener.limits.request_body_timeout.is_none(),
                        },
                    });
                }
                _ if matches!(e, crate::upstream::SendError::Connect(_)) => {
                    cluster.metrics.connect_errors.inc();
                    cluster.observe(ep_index, Observed::LocalGatewayError, now);
                    connect_failed = true;
                    let err = ProxyError::UpstreamConnect {
                        cluster: cluster.spec.name.clone(),
                        endpoint: endpoint.id().into_owned(),
                        reason: error_chain(&e),
                    };
                    (Err(err), retry.is_some_and(|r| r.on_connect_failure))
                }
                _ => {
                    cluster.observe(ep_index, Observed::LocalGatewayError, now);
                    // Refused unprocessed (HTTP/2 REFUSED_STREAM, or past a
                    // GOAWAY): like a failed connect, any method may go
                    // again.
                    let refused = e.unprocessed();
                    connect_failed = refused;
                    let err = ProxyError::UpstreamReset(error_chain(&e));
                    let again = |r: &crate::policy::retry::RetrySpec| {
                        r.on_reset || (refused && r.on_refused_stream)
                    };
                    (Err(err), retry.is_some_and(again))
                }
            },
            Err(_) if client_deadline.is_some() && try_deadline == deadline => {
                // The call's own deadline passed: the caller's choice, not
                // an upstream failure (outlier detection is not told).
                (Err(timed_out(timeout)), false)
            }
            Err(_) => {
                cluster.observe(ep_index, Observed::LocalGatewayError, now);
                let err =
                    ProxyError::UpstreamTimeout(try_deadline.saturating_duration_since(began));
                (Err(err), retry.is_some_and(|r| r.on_timeout))
            }
        };
        // The wait a retried answer's Retry-After asks, when the route
        // honours it.
        let hinted = match (retry.and_then(|r| r.retry_after_max), &outcome) {
            (Some(_), Ok(resp)) if retryable => {
                crate::policy::retry::retry_after(resp.headers(), std::time::SystemTime::now())
            }
            _ => None,
        };
        // Retry only what the policy names, with a replayable body, attempts
        // and time left, and a permit from the cluster's retry budget.
        let permit = match retry {
            Some(r) if retryable => {
                let too_long = hinted.is_some_and(|w| {
                    r.retry_after_max.is_some_and(|max| w > max) || Instant::now() + w >= deadline
                });
                if sent_is_final && !connect_failed {
                    cluster.metrics.non_idempotent.inc();
                    None
                } else if !matches!(body, Plan::Replay(_)) {
                    cluster.metrics.not_replayable.inc();
                    None
                } else if attempt >= r.attempts || Instant::now() >= deadline {
                    cluster.metrics.attempts_exhausted.inc();
                    None
                } else if !cluster.any_available(now) {
                    // This try got the last endpoint ejected: the client
                    // gets its answer, not a 503 that would hide it.
                    cluster.metrics.no_endpoint.inc();
                    None
                } else if too_long {
                    // The upstream asked for a longer wait than allowed or
                    // than the deadline leaves: its answer (and its
                    // Retry-After) goes to the client.
                    cluster.metrics.retry_after_too_long.inc();
                    None
                } else {
                    cluster.retry_permit().map(|p| (r, p))
                }
            }
            _ => None,
        };
        let Some((r, permit)) = permit else {
            out.endpoint_guard = Some(ep_guard);
            out.conn_slot = conn_slot;
            // A failed upstream, and a stale entry allowed to stand in.
            let failed = match &outcome {
                Ok(a) => matches!(a.status().as_u16(), 500 | 502 | 503 | 504),
                Err(_) => true,
            };
            if let (true, Some(f), Some(cache)) = (failed, &fetch, &route.cache)
                && let Some(e) = f.stale_for_error(cache, now)
            {
                if let Err(err) = &outcome {
                    tracing::debug!(route = %route.spec.name, error = %err, "upstream failed: a stale cache entry answers");
                }
                served_stale = true;
                break crate::cache::respond(e, downstream_head, &f.cond, now);
            }
            break outcome?;
        };
        // Retry: free this attempt's resources, back off, go again.
        drop(outcome);
        drop(ep_guard);
        drop(conn_slot);
        out.retry_permit = Some(permit);
        attempt += 1;
        cluster.metrics.retried.inc();
        previous = Some(ep_index);
        let pause =
            hinted.unwrap_or_else(|| crate::policy::retry::backoff(r, attempt, fastrand::f64()));
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        began = Instant::now();
        now = clock.at(began);
    };

    // Hedged tries still running lost: cancelled now, their connections
    // and slots freed.
    drop(outstanding);

    // 9. Response.
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // A switch the client never asked for (RFC 9110 §15.2.2: only to a
        // protocol its Upgrade named): relayed, the client would be told
        // the protocol changed while nothing is tunnelled.
        let Some(down) = downstream_upgrade else {
            return Err(ProxyError::UpstreamReset(
                "a 101 answer to a request that asked for no upgrade".into(),
            ));
        };
        let up = hyper::upgrade::on(&mut resp);
        out.metrics
            .upgrades
            .with_label_values(&[route.spec.name.as_str()])
            .inc();
        let held = conn.clone();
        // A tunnel where nothing moves either way for the cluster's
        // read_timeout is closed, as Envoy's stream idle timeout closes an
        // idle WebSocket and nginx's proxy_read_timeout does: a peer that
        // vanished does not hold a connection and its slot forever.
        let idle = cluster.spec.read_timeout;
        let closed = out
            .metrics
            .connections_closed
            .with_label_values(&[&conn.listener, "upgrade_idle_timeout"]);
        let route_name = route.spec.name.clone();
        tokio::spawn(async move {
            // Holding the connection keeps it counted (active
            // connections, max_connections, drain) while the tunnel runs.
            let _conn = held;
            let (Ok(d), Ok(u)) = (down.await, up.await) else {
                return;
            };
            let r = crate::tcp::relay(TokioIo::new(d), TokioIo::new(u), idle, |_, _| {}).await;
            if r.result == "idle_timeout" {
                closed.inc();
            }
            tracing::debug!(
                route = %route_name,
                result = r.result,
                detail = %r.detail,
                received = r.received,
                sent = r.sent,
                "upgraded tunnel ended"
            );
        });
        let (mut parts, b) = resp.into_parts();
        strip_sift_headers(&mut parts.headers);
        answer_headers(
            &mut parts,
            route,
            cluster,
            last_ep,
            template_ip.as_deref(),
            conn,
            downstream_version,
            out,
            request_id,
            set_cookie,
        );
        return Ok(Response::from_parts(parts, b));
    }
    let (mut parts, b) = resp.into_parts();
    // sift sends its own HTTP version, not the upstream's (RFC 9110 §6.2):
    // an HTTP/1.0 app's answer goes to an HTTP/1.1 client as HTTP/1.1, so
    // it stays kept alive and may be chunked (hyper answers an HTTP/1.0
    // client in HTTP/1.0 all the same; HTTP/2 has no version line).
    parts.version = Version::HTTP_11;
    // Only sift sets x-sift-*: an upstream cannot forge x-sift-error. One
    // pass over the names finds both kinds of header to remove.
    let (hop_bits, sift) = parts.headers.keys().fold((0, false), |(bits, sift), k| {
        (
            bits | hop::bit(k),
            sift || k.as_str().starts_with("x-sift-"),
        )
    });
    if sift {
        remove_sift_headers(&mut parts.headers);
    }
    // A chunked answer's framing is hyper's to undo, and the client gets
    // sift's own. A Content-Length beside it is not the body's length
    // (RFC 9112 §6.3: Transfer-Encoding wins, and an intermediary removes
    // the Content-Length): forwarded, it would cut the body or run it into
    // the next answer. Any other transfer-coding (`gzip, chunked`, `gzip`)
    // would reach the client still coded, without a word saying so: 502,
    // as Envoy answers.
    if hop_bits & hop::TRANSFER_ENCODING != 0 {
        let chunked = crate::field::joined(&parts.headers, header::TRANSFER_ENCODING)
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if !chunked {
            return Err(ProxyError::UpstreamReset(
                "the answer has a transfer-coding other than chunked".into(),
            ));
        }
        parts.headers.remove(header::CONTENT_LENGTH);
    } else {
        single_content_length(&mut parts.headers);
    }
    strip_hop_by_hop_present(&mut parts.headers, hop_bits);
    let mut b = b;
    // The route's cache: what the answer was, what is stored.
    let mut cache_status = out.cache;
    if let Some(cache) = &route.cache {
        use crate::cache::Status;
        if let Some(uri) = invalidate.as_ref().filter(|_| parts.status.as_u16() < 400) {
            cache.invalidate(uri);
        }
        if let Some(f) = fetch {
            let now = clock.now();
            let head = downstream_head;
            let status = match &f.stale {
                _ if served_stale => Status::Stale,
                Some(old) if f.revalidating && parts.status == http::StatusCode::NOT_MODIFIED => {
                    // Confirmed: the entry answers, refreshed by the 304
                    // (or once more as it was, if it may no longer be kept).
                    let e =
                        cache.refresh(&f, old, &parts.headers, now, std::time::SystemTime::now());
                    let r = crate::cache::respond(e.as_ref().unwrap_or(old), head, &f.cond, now);
                    (parts, b) = r.into_parts();
                    Status::Revalidated
                }
                stale => {
                    let st = if stale.is_some() {
                        Status::Expired
                    } else {
                        Status::Miss
                    };
                    if let Some(rec) = f.recorder(
                        cache,
                        parts.status,
                        &parts.headers,
                        now,
                        std::time::SystemTime::now(),
                    ) {
                        if b.is_end_stream() {
                            rec.store_empty();
                        } else {
                            b = body::boxed(crate::cache::Recorded::new(b, rec));
                        }
                    }
                    st
                }
            };
            cache.metrics.count(status);
            out.cache = Some(status);
            cache_status = Some(status);
        }
    }
    Ok(decorate(
        Decorate {
            route,
            cluster,
            endpoint: last_ep,
            template_ip: template_ip.as_deref(),
            conn,
            version: downstream_version,
            request_id,
            set_cookie,
            ratelimit_headers,
            auth_client_headers,
            remote_limit_headers,
            gzip,
            cache: cache_status,
        },
        out,
        parts,
        b,
    ))
}

/// What sift adds to an answer it forwards or makes from the cache.
struct Decorate<'a> {
    route: &'a crate::snapshot::Route,
    cluster: &'a crate::upstream::Cluster,
    /// The endpoint that answered (`usize::MAX`: none, a cache hit).
    endpoint: usize,
    template_ip: Option<&'a str>,
    conn: &'a ConnInfo,
    version: Version,
    request_id: HeaderValue,
    set_cookie: Option<HeaderValue>,
    ratelimit_headers: Option<[(HeaderName, HeaderValue); 2]>,
    auth_client_headers: Vec<(HeaderName, HeaderValue)>,
    remote_limit_headers: Vec<(HeaderName, HeaderValue)>,
    gzip: Option<(Option<crate::compress::Coding>, bool)>,
    cache: Option<crate::cache::Status>,
}

/// The route's response headers, sift's own (request id, rate limit,
/// authorization, canary version, cache status), and compression.
/// Inlined: passed by value, its ~330 bytes would be copied twice per
/// request (measured with bench/http-callgrind.sh).
#[inline(always)]
fn decorate(
    d: Decorate<'_>,
    out: &Outcome,
    mut parts: http::response::Parts,
    b: Body,
) -> Response<Body> {
    let Decorate {
        route,
        cluster,
        endpoint,
        template_ip,
        conn,
        version,
        request_id,
        set_cookie,
        ratelimit_headers,
        auth_client_headers,
        remote_limit_headers,
        gzip,
        cache,
    } = d;
    answer_headers(
        &mut parts,
        route,
        cluster,
        endpoint,
        template_ip,
        conn,
        version,
        out,
        request_id,
        set_cookie,
    );
    if let Some(hs) = ratelimit_headers {
        for (k, v) in hs {
            parts.headers.insert(k, v);
        }
    }
    for (k, v) in auth_client_headers {
        parts.headers.append(k, v);
    }
    for (k, v) in remote_limit_headers {
        parts.headers.insert(k, v);
    }
    if let Some(s) = cache {
        parts.headers.insert(X_SIFT_CACHE.clone(), s.header());
    }
    if let Some(name) = route
        .canary
        .as_ref()
        .and_then(|c| c.spec.version_header.as_deref())
    {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&cluster.spec.name),
        ) {
            parts.headers.insert(n, v);
        }
    }
    let mut b = b;
    if let (Some(c), Some((coding, head))) = (&route.spec.compression, gzip) {
        let result =
            crate::compress::decide(c, coding.is_some(), head, parts.status, &parts.headers);
        let name = route.spec.name.as_str();
        out.metrics
            .compression
            .with_label_values(&[name, result])
            .inc();
        if matches!(result, "compressed" | "not_accepted") {
            crate::compress::vary_accept_encoding(&mut parts.headers);
        }
        if let (Some(coding), "compressed") = (coding, result) {
            crate::compress::compressed_head(&mut parts.headers, coding);
            let bytes = |stage: &str| {
                out.metrics
                    .compression_bytes
                    .with_label_values(&[name, stage])
            };
            b = body::boxed(crate::compress::Compressed::new(
                b,
                coding,
                c,
                bytes("uncompressed"),
                bytes("compressed"),
            ));
        }
    }
    Response::from_parts(parts, b)
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`); anything else is no deadline.
fn parse_grpc_timeout(v: &HeaderValue) -> Option<std::time::Duration> {
    use std::time::Duration;
    let b = v.as_bytes();
    let (digits, unit) = b.split_at(b.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The time left as `grpc-timeout`: milliseconds while they fit in 8
/// digits, else seconds.
fn format_grpc_timeout(d: std::time::Duration) -> HeaderValue {
    let ms = d.as_millis();
    let s = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("0m"))
}

/// The route of a request in its one form (a path with dot segments is
/// refused first), or 404 `no-route`.
pub(crate) fn route_request<'s, B>(
    snap: &'s Snapshot,
    listener: &ListenerSpec,
    host: &str,
    req: &Request<B>,
) -> Result<&'s crate::snapshot::Route, ProxyError> {
    let path = req.uri().path();
    if has_dot_segments(path) {
        return Err(ProxyError::Malformed("path has '.' or '..' segments"));
    }
    snap.route_for(
        listener,
        host,
        path,
        req.uri().query(),
        req.method(),
        req.headers(),
    )
    .ok_or(ProxyError::NoRoute)
}

/// The request's path in sift's one form (the listener's
/// `escaped_slashes` and `path_parameters`; unreserved escapes decoded,
/// slashes merged), written back into its URI.
pub(crate) fn normal_form<B>(
    req: &mut Request<B>,
    listener: &ListenerSpec,
) -> Result<(), ProxyError> {
    let normal = normalize_path(req.uri().path(), listener.escaped_slashes)?;
    let stripped = path_parameters(
        normal.as_deref().unwrap_or(req.uri().path()),
        listener.path_parameters,
    )?;
    if let Some(p) = stripped.or(normal) {
        let pq = match req.uri().query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            http::uri::PathAndQuery::try_from(pq)
                .map_err(|_| ProxyError::Malformed("path is not a valid URI path"))?,
        );
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|_| ProxyError::Malformed("path is not a valid URI path"))?;
    }
    Ok(())
}

/// What a route's CORS policy makes of a request (counted).
pub(crate) enum CorsStep {
    /// A preflight from an allowed origin: sift answers 204 with these
    /// headers (the route's response headers applied).
    Preflight(HeaderMap),
    /// An allowed origin: its answer gets the CORS headers.
    Actual(HeaderValue),
    Nothing,
}

pub(crate) fn cors_step(
    route: &crate::snapshot::Route,
    method: &Method,
    headers: &HeaderMap,
    metrics: &Metrics,
) -> CorsStep {
    let Some(c) = &route.spec.cors else {
        return CorsStep::Nothing;
    };
    let verdict = c.check(method, headers);
    let result = match &verdict {
        crate::cors::Cors::None => None,
        crate::cors::Cors::Denied => Some("denied"),
        crate::cors::Cors::Preflight(_) => Some("preflight"),
        crate::cors::Cors::Actual(_) => Some("allowed"),
    };
    if let Some(result) = result {
        metrics
            .cors
            .with_label_values(&[route.spec.name.as_str(), result])
            .inc();
    }
    match verdict {
        crate::cors::Cors::Preflight(origin) => {
            let mut h = c.preflight(&origin, headers);
            route.spec.response_headers.apply(&mut h);
            CorsStep::Preflight(h)
        }
        crate::cors::Cors::Actual(origin) => CorsStep::Actual(origin),
        crate::cors::Cors::None | crate::cors::Cors::Denied => CorsStep::Nothing,
    }
}

/// A route's `csrf` policy: counted; a refused request is an error (403
/// `csrf-denied`), or in `shadow` mode only logged.
pub(crate) fn csrf_admission<B>(
    route: &crate::snapshot::Route,
    req: &Request<B>,
) -> Result<(), ProxyError> {
    let Some(c) = &route.spec.csrf else {
        return Ok(());
    };
    if crate::csrf::safe(req.method()) {
        return Ok(());
    }
    // The authority as the client wrote it, port included (the routing
    // host drops the port; another port is another origin).
    let target = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    let verdict = c.check(req.method(), req.headers(), target);
    if let (Some(i), Some(counters)) = (verdict.result(c.enforce), &route.csrf) {
        counters[i].inc();
    }
    let crate::csrf::Csrf::Denied(reason) = verdict else {
        return Ok(());
    };
    if !c.enforce {
        tracing::info!(
            route = %route.spec.name,
            reason,
            "csrf (shadow): a cross-site request let through"
        );
        return Ok(());
    }
    Err(ProxyError::CsrfDenied {
        route: route.spec.name.clone(),
        reason,
    })
}

/// A route's `allowed_identities` against the caller's identity.
pub(crate) fn identity_admission(
    route: &crate::snapshot::Route,
    listener: &ListenerSpec,
    conn: &ConnInfo,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    if let Some(s) = &route.spec.source_ips {
        let ip = match s.address {
            crate::config::file::SourceAddress::Peer => conn.remote.ip().to_string(),
            crate::config::file::SourceAddress::ClientIp => trusted_client_ip(
                listener.trusted_hops,
                &listener.trusted_cidrs,
                headers,
                conn.remote,
            ),
        };
        // A forwarded address that is no IP (a trusted proxy wrote
        // garbage) is in no range: denied where only ranges are allowed.
        if !s.admits(ip.parse().ok()) {
            return Err(ProxyError::SourceDenied {
                route: route.spec.name.clone(),
                ip,
            });
        }
    }
    let Some(allowed) = &route.spec.allowed_identities else {
        return Ok(());
    };
    if conn
        .identity
        .as_ref()
        .is_some_and(|id| allowed.iter().any(|m| m.matches(id)))
    {
        return Ok(());
    }
    Err(ProxyError::IdentityDenied {
        route: route.spec.name.clone(),
        identity: conn
            .identity
            .as_ref()
            .map_or("(none)".into(), |i| i.id.clone()),
    })
}

/// sift's answer for an error (counted): the one error map, then the
/// route's response headers (an edge route's HSTS, CSP, ...), as Envoy's
/// local replies get them; x-sift-error stays what sift says.
pub(crate) fn error_answer(
    e: &ProxyError,
    grpc: bool,
    route: Option<&crate::snapshot::Route>,
    metrics: &Metrics,
    replies: &crate::config::model::LocalReplies,
    request_id: Option<&HeaderValue>,
) -> Response<Body> {
    let kind = e.kind();
    metrics.errors.with_label_values(&[kind.as_str()]).inc();
    tracing::debug!(error = %e, "request failed");
    let mut resp = e.local_reply(grpc, replies, request_id);
    if let Some(r) = route {
        let h = resp.headers_mut();
        r.spec.response_headers.apply(h);
        h.insert("x-sift-error", HeaderValue::from_static(kind.as_str()));
    }
    resp
}

/// A route's Basic authentication: counted; refused credentials are an
/// error (401 with the challenge). On success the user name may go
/// upstream in a header (the client's copy removed first) and the
/// `Authorization` header may be removed.
pub(crate) fn basic_auth_admission(
    b: &crate::config::model::BasicAuthSpec,
    route: &crate::snapshot::Route,
    headers: &mut HeaderMap,
    metrics: &Metrics,
) -> Result<(), ProxyError> {
    use crate::basic_auth::Credentials;
    let (result, user) = match crate::basic_auth::credentials(headers) {
        Credentials::Missing => ("missing", None),
        Credentials::Malformed => ("invalid", None),
        Credentials::Given { user, password } => {
            if b.users.verify(&user, &password) {
                ("ok", Some(user))
            } else {
                ("invalid", None)
            }
        }
    };
    metrics
        .basic_auth
        .with_label_values(&[route.spec.name.as_str(), result])
        .inc();
    let Some(user) = user else {
        return Err(ProxyError::BasicAuth {
            route: route.spec.name.clone(),
            missing: result == "missing",
            challenge: b.challenge.clone(),
        });
    };
    if let Some(name) = &b.forward_username_header {
        headers.remove(name);
        if let Ok(v) = HeaderValue::from_str(&user) {
            headers.insert(name.clone(), v);
        }
    }
    if b.strip_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    Ok(())
}

/// A route's JWT requirement: counted, and a refused token is an error.
pub(crate) fn jwt_admission(
    j: &crate::jwt::RouteJwtSpec,
    route: &crate::snapshot::Route,
    headers: &mut HeaderMap,
    query: Option<&str>,
    metrics: &Metrics,
) -> Result<(), ProxyError> {
    let result = jwt_check(j, headers, query);
    let label = match &result {
        Ok(true) => "ok",
        Ok(false) => "allowed_missing",
        Err(crate::jwt::JwtError::Missing) => "missing",
        Err(_) => "invalid",
    };
    metrics
        .jwt
        .with_label_values(&[route.spec.name.as_str(), label])
        .inc();
    result.map(|_| ()).map_err(|reason| ProxyError::Jwt {
        route: route.spec.name.clone(),
        reason,
    })
}

/// Check a route's JWT requirement on the request's headers, and set the
/// claim headers; `Ok(false)`: no token and `allow_missing`.
fn jwt_check(
    j: &crate::jwt::RouteJwtSpec,
    h: &mut http::HeaderMap,
    query: Option<&str>,
) -> Result<bool, crate::jwt::JwtError> {
    let p = &j.provider;
    // Claim headers only ever come from a verified token.
    for (_, name) in &p.claims_to_headers {
        h.remove(name.as_str());
    }
    let (token, from_header) = match crate::jwt::find_token(&p.locations, h, query)? {
        Some((t, from)) => (t.into_owned(), from),
        None if j.allow_missing => return Ok(false),
        None => return Err(crate::jwt::JwtError::Missing),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = crate::jwt::verify(p, &token, now)?;
    for (claim, name) in &p.claims_to_headers {
        let value = claims
            .get(claim)
            .and_then(crate::jwt::claim_header)
            .and_then(|v| HeaderValue::from_str(&v).ok());
        if let (Some(v), Ok(n)) = (value, HeaderName::from_bytes(name.as_bytes())) {
            h.insert(n, v);
        }
    }
    // forward: false: the header the token came in goes (a cookie or a
    // query parameter stays: the app may need the rest of it).
    if let (false, Some(name)) = (p.forward, from_header) {
        h.remove(name.as_str());
    }
    Ok(true)
}

/// What the filters know of a request.
pub(crate) fn filter_request_info<B>(
    req: &Request<B>,
    route: &crate::snapshot::Route,
    conn: &ConnInfo,
) -> Result<crate::filter::RequestInfo, ProxyError> {
    // Every value of a header, not just the first: an upstream reads them
    // all, so the filter must too (a second Content-Encoding line hid a
    // gzip body from the filter). Bytes that are not UTF-8 become U+FFFD,
    // which names no type or coding sift knows (a skip, counted).
    let all = |n: header::HeaderName| {
        let mut vals = req
            .headers()
            .get_all(n)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned());
        let first = vals.next()?;
        Some((first, vals.collect::<Vec<_>>()))
    };
    // Content-Type is a single value (RFC 9110 §8.3): repeated lines that
    // disagree leave the body's type ambiguous between sift and the app.
    let content_type = match all(header::CONTENT_TYPE) {
        Some((first, rest)) => {
            if rest.iter().any(|v| !v.eq_ignore_ascii_case(&first)) {
                return Err(ProxyError::Malformed(
                    "conflicting Content-Type header lines",
                ));
            }
            // A parameter given twice (`boundary=a; boundary=b`) is as
            // ambiguous: parsers differ on which one counts.
            let params = || crate::filter::extract::media_params(&first);
            if params()
                .enumerate()
                .any(|(i, (k, _))| params().take(i).any(|(j, _)| j.eq_ignore_ascii_case(k)))
            {
                return Err(ProxyError::Malformed(
                    "a Content-Type parameter given twice",
                ));
            }
            Some(first)
        }
        None => None,
    };
    // Content-Encoding is a list: repeated lines join with commas.
    let content_encoding = all(header::CONTENT_ENCODING).map(|(first, rest)| {
        std::iter::once(first)
            .chain(rest)
            .collect::<Vec<_>>()
            .join(", ")
    });
    Ok(crate::filter::RequestInfo {
        route: Arc::from(route.spec.name.as_str()),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        content_type,
        content_encoding,
        identity: conn.identity.as_ref().map(|i| i.id.clone()),
        // Copied only for a filter that reads query fields.
        query: req
            .uri()
            .query()
            .filter(|_| {
                route
                    .filters
                    .iter()
                    .any(|f| !f.filter.spec().query_fields.is_empty())
            })
            .map(str::to_owned),
    })
}

/// The canary's choice: a permitted override, else the sticky key's point,
/// else random, over the route's current (runtime) weights.
fn canary_backend<'r>(
    route: &'r crate::snapshot::Route,
    c: &crate::canary::CanaryState,
    listener: &ListenerSpec,
    conn: &ConnInfo,
    req: &Request<Lingering>,
    forced: Option<Forced>,
) -> Option<&'r crate::snapshot::Backend> {
    let spec = &c.spec;
    if let Some(o) = &spec.override_header {
        let allowed = o.identities.is_empty()
            || conn
                .identity
                .as_ref()
                .is_some_and(|id| o.identities.contains(&id.id));
        let value = if o.header == X_SIFT_CANARY.as_str() {
            forced
        } else {
            crate::field::joined(req.headers(), o.header.as_str()).and_then(|v| Forced::of(&v))
        };
        if allowed {
            match value {
                Some(Forced::Always) => return route.backends.get(spec.canary),
                Some(Forced::Never) => return route.backends.get(spec.stable),
                None => {}
            }
        }
    }
    let key = spec
        .sticky
        .as_ref()
        .and_then(|k| key_hash(k, listener, conn, req));
    let weights = c.weights();
    let i = crate::canary::pick(&weights, spec.canary, key)?;
    route.backends.get(i)
}

/// The hash of the request value `k` names (a canary's sticky key, a
/// `hash_policy` entry), the same in every sift process; `None` when the
/// request has no such value. A header's lines are one value, joined by
/// "," (as route conditions read them), and only printable ones count.
fn key_hash(
    k: &crate::canary::Sticky,
    listener: &ListenerSpec,
    conn: &ConnInfo,
    req: &Request<Lingering>,
) -> Option<u64> {
    use crate::canary::Sticky;
    match k {
        Sticky::Identity => conn.identity.as_ref().map(|i| stable_hash(&i.id)),
        Sticky::Header(h) => crate::field::joined(req.headers(), h.as_str())
            .filter(|v| v.iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b)))
            .map(|v| stable_hash_bytes(&v)),
        Sticky::Cookie(name) => cookie(req.headers(), name).map(|v| stable_hash(&v)),
        Sticky::ClientIp => Some(stable_hash(&trusted_client_ip(
            listener.trusted_hops,
            &listener.trusted_cidrs,
            req.headers(),
            conn.remote,
        ))),
        Sticky::QueryParameter(name) => req
            .uri()
            .query()?
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| stable_hash(v)),
    }
}

/// A ring_hash or maglev cluster's key for this request: the hashes of
/// the route's `hash_policy` entries that give one, combined in order as
/// Envoy does (rotate left by one, xor), up to the first `terminal` entry
/// that gives one; `None` (a random endpoint) when none gives one.
///
/// A `cookie` entry with `ttl` whose cookie the request lacks makes one
/// (16 random hex digits), hashes it, and returns its `Set-Cookie` for the
/// answer (HttpOnly; Secure on TLS connections).
fn policy_hash(
    policy: &[crate::config::model::HashPolicy],
    listener: &ListenerSpec,
    conn: &ConnInfo,
    req: &Request<Lingering>,
) -> (Option<u64>, Option<HeaderValue>) {
    let mut out: Option<u64> = None;
    let mut set_cookie = None;
    for p in policy {
        let mut h = key_hash(&p.key, listener, conn, req);
        if let (None, Some(g), crate::canary::Sticky::Cookie(name)) = (h, &p.generate, &p.key) {
            let value = format!("{:016x}", fastrand::u64(..));
            h = Some(stable_hash(&value));
            let mut c = format!("{name}={value}");
            if !g.ttl.0.is_zero() {
                c.push_str(&format!("; Max-Age={}", g.ttl.0.as_secs().max(1)));
            }
            if let Some(path) = &g.path {
                c.push_str("; Path=");
                c.push_str(path);
            }
            c.push_str("; HttpOnly");
            if conn.tls {
                c.push_str("; Secure");
            }
            set_cookie = HeaderValue::from_str(&c).ok();
        }
        if let Some(h) = h {
            out = Some(out.map_or(h, |x| x.rotate_left(1) ^ h));
            if p.terminal {
                break;
            }
        }
    }
    (out, set_cookie)
}

/// A canary override header's word. Its lines are read joined by ","
/// (as route conditions read them), so a request with several lines
/// (`always` and `never`, or even `always` twice) names no version and
/// the override is ignored: the split decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forced {
    Always,
    Never,
}

impl Forced {
    fn of(v: &[u8]) -> Option<Forced> {
        match v {
            b"always" => Some(Forced::Always),
            b"never" => Some(Forced::Never),
            _ => None,
        }
    }
}

/// An HTTP/2 client may send its cookies as several `cookie` fields (each
/// compresses better alone; browsers do). RFC 9113 §8.2.3 has them joined
/// with `; ` before they go to an HTTP/1.1 hop, and apps, auth services and
/// rate-limit keys read one Cookie header: joined here, once, for every
/// later reader (HTTP/2 upstreams take one field as well).
fn join_cookies(h: &mut HeaderMap) {
    let all = h.get_all(header::COOKIE);
    if all.iter().nth(1).is_none() {
        return;
    }
    let parts: Vec<&[u8]> = all.iter().map(|v| v.as_bytes()).collect();
    if let Ok(v) = HeaderValue::from_bytes(&parts.join(&b"; "[..])) {
        h.insert(header::COOKIE, v);
    }
}

/// The value of cookie `name` in the Cookie header(s).
fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A hash that is the same in every sift process (FNV-1a, then a
/// splitmix64 finish), so a user lands on the same version behind any replica.
pub fn stable_hash(s: &str) -> u64 {
    stable_hash_bytes(s.as_bytes())
}

/// [`stable_hash`] of bytes (a request id, for mirror sampling).
pub fn stable_hash_bytes(s: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in s {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The request body's state, made when a body first needs it.
/// `background_update`: send the revalidation of an expired entry whose
/// stale copy already answered, and store what comes back (a 304 refreshes
/// the entry, a new answer replaces it); a failure leaves the entry as it
/// was. The endpoint's outcome feeds outlier detection as any try's does.
/// `_guards` (endpoint, connection and request slots) are held until the
/// answer is read; `f` holds the key's lock until then.
#[allow(clippy::too_many_arguments)]
async fn refresh_in_background<G: Send>(
    cache: Arc<crate::cache::Cache>,
    f: Box<crate::cache::Fetch>,
    cluster: Arc<crate::upstream::Cluster>,
    ep: usize,
    req: Request<Body>,
    until: tokio::time::Instant,
    clock: crate::clock::Clock,
    _guards: G,
) {
    let [revalidated, replaced, failed] = &cache.metrics.refreshes;
    let resp = match tokio::time::timeout_at(until, cluster.send(ep, req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            cluster.observe(ep, Observed::LocalGatewayError, clock.now());
            tracing::debug!(cluster = %cluster.spec.name, error = %e, "background cache update failed");
            failed.inc();
            return;
        }
        Err(_) => {
            cluster.observe(ep, Observed::LocalGatewayError, clock.now());
            failed.inc();
            return;
        }
    };
    let now = clock.now();
    cluster.observe(ep, Observed::of_status(resp.status().as_u16()), now);
    let (mut parts, b) = resp.into_parts();
    let bits = parts.headers.keys().fold(0, |bits, k| bits | hop::bit(k));
    remove_sift_headers(&mut parts.headers);
    strip_hop_by_hop_present(&mut parts.headers, bits);
    let wall = std::time::SystemTime::now();
    if let (Some(old), true) = (&f.stale, parts.status == http::StatusCode::NOT_MODIFIED) {
        cache.refresh(&f, old, &parts.headers, now, wall);
        revalidated.inc();
        return;
    }
    let ok = parts.status.as_u16() < 500;
    let Some(rec) = f.recorder(&cache, parts.status, &parts.headers, now, wall) else {
        if ok { replaced } else { failed }.inc();
        return;
    };
    if b.is_end_stream() {
        rec.store_empty();
        replaced.inc();
        return;
    }
    // Read to the end (the recorder stores it there), each piece within
    // the cluster's read_timeout.
    let mut body = std::pin::pin!(crate::cache::Recorded::new(b, rec));
    let read = cluster.spec.read_timeout.0;
    loop {
        match tokio::time::timeout(read, body.frame()).await {
            Ok(Some(Ok(_))) => {}
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => {
                failed.inc();
                return;
            }
        }
    }
    replaced.inc();
}

/// An expired entry of the route's cache that may stand in for an error
/// (`stale_if_error`), with the request's conditions.
fn stale_entry(
    fetch: &Option<Box<crate::cache::Fetch>>,
    cache: Option<&crate::cache::Cache>,
    now: u64,
) -> Option<(Arc<crate::cache::Entry>, crate::cache::Conditional)> {
    let (f, cache) = (fetch.as_ref()?, cache?);
    Some((f.stale_for_error(cache, now)?.clone(), f.cond.clone()))
}

/// The answer of [`stale_entry`] for a request sift could not send
/// (`err`: no healthy endpoint, circuit open).
fn stale_answer(
    fetch: &Option<Box<crate::cache::Fetch>>,
    route: &crate::snapshot::Route,
    now: u64,
    head: bool,
    err: &ProxyError,
) -> Option<Response<Body>> {
    let f = fetch.as_ref()?;
    let e = f.stale_for_error(route.cache.as_deref()?, now)?;
    tracing::debug!(route = %route.spec.name, error = %err, "a stale cache entry answers");
    Some(crate::cache::respond(e, head, &f.cond, now))
}

/// Send a request whose body still streams from the client. The try's
/// time (`span`) counts from the body's end, as Envoy's route timeout
/// starts once the request is complete: an upload slower than the
/// route's timeout is not an upstream timeout. While the body flows the
/// wait goes on; a body that has not moved for `stall` (the listener's
/// request_body_timeout, else `span`) while sift waits ends it: the
/// upstream stopped reading (a client that stopped sending fails the
/// body itself, with 408).
async fn send_streamed<F: std::future::Future>(
    send: F,
    mut at: tokio::time::Instant,
    span: std::time::Duration,
    state: &BodyState,
    stall: Option<std::time::Duration>,
) -> Result<F::Output, ()> {
    let started = tokio::time::Instant::now();
    let stall = stall.unwrap_or(span);
    let mut send = std::pin::pin!(send);
    loop {
        match tokio::time::timeout_at(at, &mut send).await {
            Ok(r) => return Ok(r),
            Err(_) => {
                let now = tokio::time::Instant::now();
                let due = match state.ended_at() {
                    Some(end) => end + span,
                    None => state.last_progress().unwrap_or(started).max(started) + stall,
                };
                if due <= now {
                    return Err(());
                }
                at = due;
            }
        }
    }
}

fn shared_state(s: &mut Option<Arc<BodyState>>) -> Arc<BodyState> {
    s.get_or_insert_with(Default::default).clone()
}

/// What happened to the request body (OK when it had no state).
fn body_state(s: &Option<Arc<BodyState>>) -> u8 {
    s.as_ref().map_or(BodyState::OK, |s| s.get())
}

/// How a request body goes upstream.
enum Plan {
    /// Kept in memory: can be sent again.
    Replay(bytes::Bytes),
    /// Streamed once.
    Stream(Option<Body>),
}

enum BufferError {
    Body(crate::body::BoxError),
    Spool(std::io::Error),
    /// overload.max_spooled_bytes reached.
    DiskFull,
}

/// Spooled bytes are written in batches of this many, off the network
/// threads.
const SPOOL_BATCH: usize = 64 * 1024;

/// Read all of `body` (`routes[].request_buffering`): up to `in_memory`
/// bytes kept in memory (each taken from `res`; when the budget has no
/// more, the rest goes to disk), the rest written to an unlinked spool
/// file on tokio's blocking pool. A body held whole in memory comes back
/// replayable (retries can send it again); one with a spool file or
/// trailers streams from the memory part, the file and the trailers.
/// What is written to the file is taken from `disk` first
/// (`overload.max_spooled_bytes`): without room, `DiskFull`.
async fn buffer_whole(
    mut body: Body,
    spec: &crate::config::model::RequestBufferingSpec,
    res: &mut crate::budget::Reservation,
    disk: &mut crate::budget::Reservation,
    known_trailers: &mut Vec<HeaderName>,
) -> Result<Plan, BufferError> {
    let mut head: Vec<bytes::Bytes> = Vec::new();
    let mut in_memory = 0u64;
    let mut to_disk = false;
    let mut pending: Vec<bytes::Bytes> = Vec::new();
    let mut pending_len = 0usize;
    let mut file: Option<crate::filter::spool::SpoolFile> = None;
    let mut trailers = None;
    loop {
        let end = match body.frame().await {
            None => true,
            Some(Err(e)) => return Err(BufferError::Body(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    let n = d.len() as u64;
                    if !to_disk && in_memory + n <= spec.in_memory.0 && res.grow(n) {
                        in_memory += n;
                        head.push(d);
                    } else {
                        if !to_disk && in_memory + n <= spec.in_memory.0 {
                            // It would have fit: the budget said no.
                            res.budget().deny(crate::budget::Use::Buffering);
                        }
                        to_disk = true;
                        pending_len += d.len();
                        pending.push(d);
                    }
                    false
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        known_trailers.extend(t.keys().cloned());
                        trailers = Some(t);
                    }
                    false
                }
            },
        };
        if pending_len >= SPOOL_BATCH || (end && pending_len > 0) {
            if !disk.grow(pending_len as u64) {
                disk.budget().deny(crate::budget::Use::Buffering);
                return Err(BufferError::DiskFull);
            }
            let chunks = std::mem::take(&mut pending);
            pending_len = 0;
            let dir = spec.spool_dir.clone();
            let f = file.take();
            let written = tokio::task::spawn_blocking(move || {
                let mut f = match f {
                    Some(f) => f,
                    None => crate::filter::spool::SpoolFile::create(&dir)?,
                };
                f.write(&chunks).map(|()| f)
            })
            .await
            .map_err(|e| BufferError::Spool(std::io::Error::other(e.to_string())))?;
            file = Some(written.map_err(BufferError::Spool)?);
        }
        if end {
            break;
        }
    }
    match (file, trailers) {
        (None, None) if head.len() <= 1 => Ok(Plan::Replay(head.pop().unwrap_or_default())),
        (None, None) => {
            let mut b = bytes::BytesMut::with_capacity(in_memory as usize);
            for c in &head {
                b.extend_from_slice(c);
            }
            Ok(Plan::Replay(b.freeze()))
        }
        (file, trailers) => {
            let reader = file
                .map(crate::filter::spool::SpoolFile::into_reader)
                .transpose()
                .map_err(BufferError::Spool)?;
            Ok(Plan::Stream(Some(body::boxed(
                crate::filter::spool::Spooled::<Body>::new(
                    head,
                    reader,
                    Vec::new(),
                    trailers,
                    None,
                ),
            ))))
        }
    }
}

/// What the local rate limits decided for an admitted request, and the
/// global ones still to ask Redis (see [`rate_limit_global`]).
pub(crate) struct Admitted<'s> {
    /// The most restrictive policy that asks for headers on allowed answers.
    best: Option<(&'s str, crate::policy::ratelimit::Decision)>,
    /// Global policies that apply, with their bucket keys.
    globals: Vec<(&'s Arc<crate::snapshot::Limit>, u64)>,
    /// Local tokens taken (kept only when a global policy may refuse).
    taken: Vec<(&'s Arc<crate::snapshot::Limit>, u64)>,
}

impl Admitted<'_> {
    /// The RateLimit headers for an allowed answer, when no global policy
    /// is left to ask.
    pub(crate) fn headers(&self) -> Option<[(HeaderName, HeaderValue); 2]> {
        self.best
            .map(|(name, d)| crate::error::ratelimit_headers(name, &d))
    }
}

/// Apply the listener's and the route's local rate limits. A request
/// rejected by one policy gets back the tokens the others took, and the 429
/// names the policy that fired. Global policies are only keyed here (the
/// request's descriptor parts read); [`rate_limit_global`] asks Redis. The
/// allowed path of local policies allocates nothing: descriptor parts are
/// hashed in place.
pub(crate) fn rate_limit<'s, B>(
    snap: &'s Snapshot,
    (listener_index, listener): (usize, &ListenerSpec),
    conn: &ConnInfo,
    route: &'s crate::snapshot::Route,
    req: &Request<B>,
    now: u64,
) -> Result<Admitted<'s>, ProxyError> {
    let mut out = Admitted {
        best: None,
        globals: Vec::new(),
        taken: Vec::new(),
    };
    let listener_limits = snap
        .listener_limits
        .get(listener_index)
        .map_or(&[][..], |v| v.as_slice());
    if listener_limits.is_empty() && route.limits.is_empty() {
        return Ok(out);
    }
    let mut ip_buf = IpBuf::new();
    let client_ip: &[u8] = if needs_client_ip(listener_limits, &route.limits) {
        trusted_client_ip_bytes(
            listener.trusted_hops,
            &listener.trusted_cidrs,
            req.headers(),
            conn.remote,
            &mut ip_buf,
        )
    } else {
        &[]
    };
    let all = || listener_limits.iter().chain(route.limits.iter());
    let has_global = all().any(|l| l.redis_key.is_some());
    for (n, limit) in all().enumerate() {
        let spec = &limit.limiter.spec;
        let Some(key) = descriptor_key(limit, conn, route, req, client_ip) else {
            continue;
        };
        if limit.redis_key.is_some() {
            out.globals.push((limit, key));
            continue;
        }
        let d = limit.limiter.check(key, now);
        match tally(limit, route, d, &mut out.best) {
            Tally::Allowed => {
                if has_global && !spec.shadow {
                    out.taken.push((limit, key));
                }
            }
            Tally::ShadowDenied => {}
            Tally::Denied => {
                // Give back what the local policies before this one took.
                for earlier in all().take(n) {
                    if earlier.limiter.spec.shadow || earlier.redis_key.is_some() {
                        continue;
                    }
                    if let Some(k) = descriptor_key(earlier, conn, route, req, client_ip) {
                        earlier.limiter.refund(k);
                    }
                }
                return Err(ProxyError::RateLimited {
                    policy: spec.name.clone(),
                    decision: d,
                });
            }
        }
    }
    Ok(out)
}

/// Ask Redis for the global policies [`rate_limit`] keyed, in order, after
/// every local one passed. A refusal gives back the tokens the local and
/// the earlier global policies took. When Redis cannot answer in time,
/// `redis.failure_mode` decides: `allow` lets the policy pass, `deny`
/// answers 503 `ratelimit-unavailable`; both counted. Returns the headers
/// for an allowed response.
pub(crate) async fn rate_limit_global(
    snap: &Snapshot,
    route: &crate::snapshot::Route,
    a: Admitted<'_>,
) -> Result<Option<[(HeaderName, HeaderValue); 2]>, ProxyError> {
    let mut best = a.best;
    if let (false, Some(redis)) = (a.globals.is_empty(), &snap.redis) {
        let mut given: Vec<(String, f64)> = Vec::new();
        let refused = |given: Vec<(String, f64)>| async move {
            for (limit, key) in &a.taken {
                limit.limiter.refund(*key);
            }
            for (k, interval) in given {
                if let Err(e) = redis.give(&k, interval).await {
                    tracing::debug!(error = %e, "could not give a global rate-limit token back");
                }
            }
        };
        for (limit, key) in &a.globals {
            let spec = &limit.limiter.spec;
            let (interval, burst, quota, window) = limit.limiter.bucket_of(*key);
            let rkey = format!("{}{key:016x}", limit.redis_key.as_deref().unwrap_or(""));
            let taken = match redis.take(&rkey, interval, burst).await {
                Ok(t) => t,
                Err(e) => {
                    let deny = redis.spec.failure_mode == crate::config::file::FailureMode::Deny;
                    snap.redis_errors
                        .with_label_values(&[e.reason(), if deny { "denied" } else { "allowed" }])
                        .inc();
                    tracing::debug!(policy = %spec.name, error = %e, "global rate limit: redis did not answer");
                    if deny {
                        refused(given).await;
                        return Err(ProxyError::RateLimitUnavailable {
                            policy: spec.name.clone(),
                            reason: e.to_string(),
                        });
                    }
                    continue;
                }
            };
            let d = taken.decision(quota, window);
            match tally(limit, route, d, &mut best) {
                Tally::Allowed => {
                    if !spec.shadow {
                        given.push((rkey, interval));
                    }
                }
                Tally::ShadowDenied => {}
                Tally::Denied => {
                    refused(given).await;
                    return Err(ProxyError::RateLimited {
                        policy: spec.name.clone(),
                        decision: d,
                    });
                }
            }
        }
    }
    Ok(best.map(|(name, d)| crate::error::ratelimit_headers(name, &d)))
}

/// What request and response header templates can name of a request.
fn template_ctx<'a>(
    client_ip: &'a str,
    conn: &'a ConnInfo,
    protocol: Version,
    route: &'a crate::snapshot::Route,
    cluster: &'a crate::upstream::Cluster,
    out: &Outcome,
) -> crate::config::model::TemplateCtx<'a> {
    let elapsed = out.start.elapsed();
    crate::config::model::TemplateCtx {
        client_ip,
        peer: conn.remote,
        identity: conn.identity.as_ref().map(|i| i.id.as_str()),
        protocol,
        route: &route.spec.name,
        cluster: &cluster.spec.name,
        start: std::time::SystemTime::now() - elapsed,
        upstream_host: "",
        status: 0,
        elapsed,
    }
}

/// The route's response header changes on an upstream's answer, its
/// `%VARIABLES%` filled (the endpoint that answered, its status), then
/// sift's own: the request id and a made hash-policy cookie.
#[allow(clippy::too_many_arguments)]
fn answer_headers(
    parts: &mut http::response::Parts,
    route: &crate::snapshot::Route,
    cluster: &crate::upstream::Cluster,
    endpoint: usize,
    client_ip: Option<&str>,
    conn: &ConnInfo,
    protocol: Version,
    out: &Outcome,
    request_id: HeaderValue,
    set_cookie: Option<HeaderValue>,
) {
    let ops = &route.spec.response_headers;
    match client_ip {
        Some(ip) if ops.templated() => {
            let host = cluster.endpoints.get(endpoint).map(|e| e.endpoint.id());
            let mut ctx = template_ctx(ip, conn, protocol, route, cluster, out);
            ctx.upstream_host = host.as_deref().unwrap_or("");
            ctx.status = parts.status.as_u16();
            ops.apply_with(&mut parts.headers, &ctx);
        }
        _ => ops.apply(&mut parts.headers),
    }
    parts.headers.insert(X_REQUEST_ID.clone(), request_id);
    if let Some(c) = set_cookie {
        parts.headers.append(header::SET_COOKIE, c);
    }
}

/// What a rate-limit decision means for the request.
enum Tally {
    Allowed,
    /// Over the limit, but the policy only counts (shadow mode).
    ShadowDenied,
    Denied,
}

/// Count a policy's decision on the route (allowed, denied, shadow_denied;
/// a shadow denial is logged) and keep, in `best`, the policy with the
/// fewest tokens left among those that want headers on allowed answers.
fn tally<'s>(
    limit: &'s crate::snapshot::Limit,
    route: &crate::snapshot::Route,
    d: crate::policy::ratelimit::Decision,
    best: &mut Option<(&'s str, crate::policy::ratelimit::Decision)>,
) -> Tally {
    let spec = &limit.limiter.spec;
    let counters = limit.counters.get(route.index);
    let (i, t) = if d.allowed {
        if spec.response_headers && best.is_none_or(|(_, b)| d.remaining < b.remaining) {
            *best = Some((spec.name.as_str(), d));
        }
        (0, Tally::Allowed)
    } else if spec.shadow {
        tracing::info!(policy = %spec.name, route = %route.spec.name, "rate limit would reject (shadow mode)");
        (2, Tally::ShadowDenied)
    } else {
        (1, Tally::Denied)
    };
    if let Some(c) = counters {
        c[i].inc();
    }
    t
}

fn needs_client_ip(a: &[Arc<crate::snapshot::Limit>], b: &[Arc<crate::snapshot::Limit>]) -> bool {
    a.iter()
        .chain(b.iter())
        .any(|l| l.limiter.spec.key.contains(&KeyPart::ClientIp))
}

/// The bucket key of a request for a policy, hashed from its descriptor
/// parts; `None` when a part is missing (the policy then does not apply).
fn descriptor_key<B>(
    limit: &crate::snapshot::Limit,
    conn: &ConnInfo,
    route: &crate::snapshot::Route,
    req: &Request<B>,
    client_ip: &[u8],
) -> Option<u64> {
    let parts = &limit.limiter.spec.key;
    let mut vals: [Cow<'_, [u8]>; 8] = Default::default();
    if parts.len() > vals.len() {
        return None;
    }
    for (slot, p) in vals.iter_mut().zip(parts.iter()) {
        *slot = match p {
            KeyPart::ClientIp => Cow::Borrowed(client_ip),
            KeyPart::Identity => Cow::Borrowed(conn.identity.as_ref()?.id.as_bytes()),
            KeyPart::Method => Cow::Borrowed(req.method().as_str().as_bytes()),
            KeyPart::Path => Cow::Borrowed(req.uri().path().as_bytes()),
            KeyPart::Route => Cow::Borrowed(route.spec.name.as_bytes()),
            // Several lines are one value joined by "," (as route
            // conditions): the bucket is the whole value, not whichever
            // line comes first, so a line put first spends no one else's
            // bucket. Allocates only then.
            KeyPart::Header(name) => crate::field::joined(req.headers(), name.as_str())?,
        };
    }
    Some(
        limit
            .limiter
            .key_of_parts(vals[..parts.len()].iter().map(|v| &**v)),
    )
}

/// Room to format a peer IP without allocating.
struct IpBuf {
    buf: [u8; 64],
    len: usize,
}

impl IpBuf {
    fn new() -> Self {
        IpBuf {
            buf: [0; 64],
            len: 0,
        }
    }
}

/// The client address as bytes, without allocating: the peer with no
/// trusted hops; with N trusted proxies in front, the Nth address from the
/// right of X-Forwarded-For (every line, in order, read as one list: the
/// one the outermost trusted proxy saw), or the leftmost if the list is
/// shorter. Read as bytes, so a line with bytes that are not visible ASCII
/// (from the client's part of the chain) still counts.
fn trusted_client_ip_bytes<'a>(
    hops: u32,
    cidrs: &[crate::config::model::Cidr],
    h: &'a HeaderMap,
    peer: SocketAddr,
    buf: &'a mut IpBuf,
) -> &'a [u8] {
    use std::io::Write;
    let entries = || {
        h.get_all(&X_FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|p| !p.is_empty())
    };
    if hops > 0 {
        let n = hops as usize;
        let mut parts = entries();
        let mut last = None;
        for i in 0..n {
            match parts.next() {
                Some(p) if i + 1 == n => return p,
                Some(p) => last = Some(p),
                None => break,
            }
        }
        if let Some(leftmost) = last {
            return leftmost;
        }
    } else if !cidrs.is_empty() && cidrs.iter().any(|c| c.contains(peer.ip())) {
        // nginx's set_real_ip_from with real_ip_recursive, Envoy's
        // xff_trusted_cidrs: from the right, the first address that is not
        // a trusted proxy's (written by the trusted proxy after it); all
        // trusted: the leftmost.
        let trusted = |p: &[u8]| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|s| {
                    s.parse::<std::net::IpAddr>()
                        .ok()
                        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
                })
                .is_some_and(|ip| cidrs.iter().any(|c| c.contains(ip.to_canonical())))
        };
        let mut leftmost = None;
        for p in entries() {
            if !trusted(p) {
                leftmost = Some(p);
                break;
            }
            leftmost = Some(p);
        }
        if let Some(p) = leftmost {
            // `IP:port` (some proxies write one): the address alone.
            return match std::str::from_utf8(p).ok().map(str::parse::<SocketAddr>) {
                Some(Ok(a)) => {
                    let mut cur = std::io::Cursor::new(&mut buf.buf[..]);
                    let _ = write!(cur, "{}", a.ip());
                    buf.len = cur.position() as usize;
                    &buf.buf[..buf.len]
                }
                _ => p,
            };
        }
    }
    let mut cur = std::io::Cursor::new(&mut buf.buf[..]);
    let _ = write!(cur, "{}", peer.ip());
    buf.len = cur.position() as usize;
    &buf.buf[..buf.len]
}

/// [`trusted_client_ip_bytes`] as a string (rate limits and sticky
/// canaries read the same address).
pub fn trusted_client_ip(
    hops: u32,
    cidrs: &[crate::config::model::Cidr],
    h: &HeaderMap,
    peer: SocketAddr,
) -> String {
    let mut buf = IpBuf::new();
    String::from_utf8_lossy(trusted_client_ip_bytes(hops, cidrs, h, peer, &mut buf)).into_owned()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The client's x-request-id when it is sane (1..=128 visible ASCII bytes),
/// else a new random UUID v4.
fn request_id(h: &HeaderMap, present: bool) -> HeaderValue {
    if let Some(v) = present.then(|| h.get(&X_REQUEST_ID)).flatten() {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    // 16 random bytes with the version (4) and variant (10) bits set,
    // written as 8-4-4-4-12 hex digits: two table lookups per byte.
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    bytes[8..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [b'-'; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        id[at] = HEX[usize::from(b >> 4)];
        id[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    // One allocation, shared by the upstream request, the response and
    // the log (Bytes::from_owner: clones only count references).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
        .expect("hex and dashes are a valid header value")
}

/// Which of the headers sift acts on a request carries, found in one pass
/// over the names: an absent one then costs no hashed lookup (custom header
/// names are hashed byte by byte).
#[derive(Debug, Default)]
struct Seen {
    /// Hop-by-hop headers present (bits of [`hop`]).
    hop: u8,
    request_id: bool,
    canary: bool,
    /// Any `x-sift-*` header.
    sift: bool,
    xff: bool,
    xfh: bool,
    xfcc: bool,
    /// A name with `_` (dropped: see [`remove_underscored_headers`]).
    underscore: bool,
}

impl Seen {
    fn scan(h: &HeaderMap) -> Seen {
        let mut s = Seen::default();
        for k in h.keys() {
            let bit = hop::bit(k);
            if bit != 0 {
                s.hop |= bit;
                continue;
            }
            let n = k.as_str();
            // A short loop: names are a few bytes, a memchr call costs more.
            s.underscore |= n.bytes().any(|b| b == b'_');
            if !n.starts_with("x-") {
                continue;
            }
            match n {
                "x-request-id" => s.request_id = true,
                "x-forwarded-for" => s.xff = true,
                "x-forwarded-host" => s.xfh = true,
                "x-forwarded-client-cert" => s.xfcc = true,
                _ if n.starts_with("x-sift-") => {
                    s.sift = true;
                    s.canary |= n == "x-sift-canary";
                }
                _ => {}
            }
        }
        s
    }
}

/// Only sift sets `x-sift-*` headers: drop any a client sent.
pub(crate) fn strip_sift_headers(h: &mut HeaderMap) {
    if h.keys().any(|k| k.as_str().starts_with("x-sift-")) {
        remove_sift_headers(h);
    }
}

/// Remove every `x-sift-*` header (the caller knows there is one).
fn remove_sift_headers(h: &mut HeaderMap) {
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-sift-"))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}

/// Drop every header whose name has `_`, as nginx does by default
/// (`underscores_in_headers off`). CGI-style apps (WSGI, Rack, PHP) read
/// `x_forwarded_client_cert` and `x-forwarded-client-cert` as one
/// `HTTP_X_FORWARDED_CLIENT_CERT`: forwarded, such a name would pass for a
/// header only sift sets (identity, verdicts, forwarding facts, the
/// route's own request headers).
fn remove_underscored_headers(h: &mut HeaderMap) {
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().as_bytes().contains(&b'_'))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}

fn check_head_size(req: &Request<Lingering>, l: &ListenerSpec) -> Result<(), ProxyError> {
    let too_large = ProxyError::HeadersTooLarge {
        limit: l.limits.max_header_bytes.0,
        max_headers: l.limits.max_headers,
    };
    if req.headers().len() > l.limits.max_headers {
        return Err(too_large);
    }
    let mut n = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    for (k, v) in req.headers() {
        n += k.as_str().len() + v.len() + 4;
    }
    if n as u64 > l.limits.max_header_bytes.0 {
        return Err(too_large);
    }
    Ok(())
}

/// Lower-cased host without port, from the URI authority (HTTP/2,
/// absolute-form) or the Host header. HTTP/1.1 without Host is malformed.
/// The answer of a `redirect` or `direct_response` route.
pub(crate) fn local_answer<B>(
    spec: &crate::config::model::RouteSpec,
    req: &Request<B>,
    host: &str,
    tls: bool,
) -> Result<Response<Body>, ProxyError> {
    if let Some(d) = &spec.direct_response {
        let mut resp = Response::new(body::full(d.body.clone()));
        *resp.status_mut() = http::StatusCode::from_u16(d.status)
            .map_err(|_| ProxyError::Internal(format!("direct_response status {}", d.status)))?;
        if !d.body.is_empty() {
            let ct = HeaderValue::from_str(&d.content_type)
                .map_err(|_| ProxyError::Internal("direct_response content_type".into()))?;
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(resp);
    }
    let Some(r) = &spec.redirect else {
        return Err(ProxyError::Internal("route has no local answer".into()));
    };
    let path = req.uri().path();
    let new_path = match &r.path {
        Some(crate::config::model::RedirectPath::Full(p)) => std::borrow::Cow::Borrowed(p.as_str()),
        Some(crate::config::model::RedirectPath::Prefix(p)) => std::borrow::Cow::Owned(
            crate::config::model::rewrite_prefix(&spec.matches.path, path, p),
        ),
        None => std::borrow::Cow::Borrowed(path),
    };
    let https = r.https.unwrap_or(tls);
    let port = match r.port {
        Some(p) => Some(p),
        // A new scheme or host gets its default port, not the old one.
        None if r.https.is_some() || r.host.is_some() => None,
        None => request_port(req),
    }
    .filter(|&p| p != if https { 443 } else { 80 });
    let mut loc = String::with_capacity(64 + new_path.len());
    let target_host = r.host.as_deref().unwrap_or(host);
    if target_host.is_empty() {
        // HTTP/1.0 without Host: only a relative redirect can be given.
        if r.https.is_some() || r.port.is_some() {
            return Err(ProxyError::Malformed(
                "a redirect to another scheme or port needs the request's Host",
            ));
        }
    } else {
        loc.push_str(if https { "https://" } else { "http://" });
        loc.push_str(target_host);
        if let Some(p) = port {
            loc.push(':');
            loc.push_str(&p.to_string());
        }
    }
    loc.push_str(&new_path);
    if let (false, Some(q)) = (r.strip_query, req.uri().query()) {
        loc.push('?');
        loc.push_str(q);
    }
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = http::StatusCode::from_u16(r.code)
        .map_err(|_| ProxyError::Internal(format!("redirect code {}", r.code)))?;
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&loc)
            .map_err(|_| ProxyError::Malformed("redirect target is not a valid header value"))?,
    );
    Ok(resp)
}

/// The port the request named (URI authority, else Host), if any. Called
/// after `request_host` has checked its form.
fn request_port<B>(req: &Request<B>) -> Option<u16> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let after_name = match raw.rfind(']') {
        Some(i) => &raw[i + 1..],
        None => raw,
    };
    after_name.rsplit_once(':')?.1.parse().ok()
}

pub(crate) fn request_host<B>(req: &Request<B>) -> Result<std::borrow::Cow<'_, str>, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::Malformed("more than one Host header"));
    }
    let raw = if let Some(a) = req.uri().authority() {
        a.as_str()
    } else if let Some(h) = header_host {
        h.to_str()
            .map_err(|_| ProxyError::Malformed("Host header is not ASCII"))?
    } else if req.version() == Version::HTTP_11 {
        return Err(ProxyError::Malformed(
            "HTTP/1.1 request without a Host header",
        ));
    } else {
        ""
    };
    // A host name or IP literal, then at most a port of digits (RFC 3986
    // §3.2.2-3): anything else beside the name (`a.example:80@b.example`,
    // `a.example:1:2`, `[::1]b`) is read by some apps as another host.
    let (name, port) = if raw.starts_with('[') {
        match memchr::memchr(b']', raw.as_bytes()) {
            Some(i) => raw.split_at(i + 1),
            None => return Err(ProxyError::Malformed("bad IPv6 literal in Host")),
        }
    } else {
        raw.split_at(memchr::memchr(b':', raw.as_bytes()).unwrap_or(raw.len()))
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            p.bytes().all(|b| b.is_ascii_digit()) && (p.is_empty() || p.parse::<u16>().is_ok())
        });
    if !port_ok {
        return Err(ProxyError::Malformed("Host has a bad port"));
    }
    if name.is_empty() && !raw.is_empty() {
        return Err(ProxyError::Malformed("Host is not a host name"));
    }
    let (host, upper) = if let Some(literal) = name.strip_prefix('[') {
        let inner = literal.strip_suffix(']').unwrap_or(literal);
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(ProxyError::Malformed("bad IPv6 literal in Host"));
        }
        (name, name.bytes().any(|b| b.is_ascii_uppercase()))
    } else {
        // `a.example.` (fully qualified) is `a.example`: the same routes,
        // so a trailing dot cannot step around a host route's policies.
        // More dots, or an empty label anywhere, are refused (as nginx
        // does): an app that strips them would read another host. One
        // pass over the bytes: labels, characters and case.
        let host = name.strip_suffix('.').unwrap_or(name);
        let empty_label = Err(ProxyError::Malformed("Host has an empty label"));
        let (mut label_start, mut upper) = (true, false);
        for &c in host.as_bytes() {
            match c {
                b'.' if label_start => return empty_label,
                b'.' => label_start = true,
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => label_start = false,
                b'A'..=b'Z' => (label_start, upper) = (false, true),
                _ => return Err(ProxyError::Malformed("Host is not a host name")),
            }
        }
        // `.` alone, or `a..` (a trailing dot after an empty label).
        if !name.is_empty() && label_start {
            return empty_label;
        }
        (host, upper)
    };
    // Usually lower case already: then borrowed, not copied.
    Ok(if upper {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
}

/// The listener's `path_parameters` on a normalised path: `;` kept, refused
/// (400), or each segment's `;...` removed (`None`: nothing to change).
/// Servlet containers (Tomcat, Jetty) drop path parameters before mapping
/// a request, so they serve `/admin` for `/admin;x` and `/admin;x/y` for
/// `/admin/y`, while a router that keeps the `;` sends those to another
/// route than `/admin`'s.
fn path_parameters(path: &str, mode: PathParameters) -> Result<Option<String>, ProxyError> {
    if mode == PathParameters::Keep || memchr::memchr(b';', path.as_bytes()).is_none() {
        return Ok(None);
    }
    if mode == PathParameters::Reject {
        return Err(ProxyError::Malformed("path parameter (';') in path"));
    }
    // `;` to the next `/` goes; a segment that was all parameters leaves
    // no empty one behind (`/a/;x/b` is `/a/b`, as merged slashes are).
    let mut out = String::with_capacity(path.len());
    let mut skipping = false;
    for c in path.chars() {
        match c {
            ';' => skipping = true,
            '/' => {
                skipping = false;
                if !out.ends_with('/') {
                    out.push('/');
                }
            }
            _ if skipping => {}
            c => out.push(c),
        }
    }
    Ok(Some(out))
}

/// The path with percent-encoded unreserved characters decoded (`%61` is
/// `a`, RFC 3986 §6.2.2.2), `\\` made `/` and runs of `/` merged (nginx's
/// merge_slashes), or `None` when it has none of them. Apps (and Python's
/// http.server) read `/%61dmin` and `//admin` as `/admin`, and WHATWG URL
/// parsers (Node's `URL`, browsers), ASP.NET and Envoy's normalize_path
/// read `/admin\\x` as `/admin/x`: routing on another form would let them
/// step around the `/admin` route. `%2F` and other escapes stay. A raw
/// `\\` is no path character in RFC 3986, and a browser never sends one.
///
/// A `%` not followed by two hex digits is refused (400, as nginx does):
/// RFC 3986 has no such path, and decoding around it would make new
/// escapes (`/%%36%31dmin` would become `/%61dmin`, routed as that and
/// read as `/admin` by the app). With every `%` the start of a valid
/// escape, each escape kept keeps its own two digits, so the result is
/// its own normal form: routed and sent upstream as the app reads it.
///
/// Escaped slashes (`%2F`, `%5C`) follow the listener's `escaped_slashes`:
/// kept as sent, refused (400), or decoded to `/` (both: `%5C` as a raw
/// `\\` is), merged with the slashes beside them.
fn normalize_path(path: &str, slashes: EscapedSlashes) -> Result<Option<String>, ProxyError> {
    let b = path.as_bytes();
    let escape_at = |i: usize| -> Option<u8> {
        let hex = |x: &u8| (*x as char).to_digit(16);
        let v = hex(b.get(i + 1)?)? * 16 + hex(b.get(i + 2)?)?;
        u8::try_from(v).ok()
    };
    let unescape = slashes == EscapedSlashes::Unescape;
    let decoded = |c: u8| {
        c.is_ascii_alphanumeric() || b"-._~".contains(&c) || (unescape && (c == b'/' || c == b'\\'))
    };
    let backslash = memchr::memchr(b'\\', b).is_some();
    let mut escapes = false;
    for i in memchr::memchr_iter(b'%', b) {
        match escape_at(i) {
            None => return Err(ProxyError::Malformed("bad percent-encoding in path")),
            Some(b'/' | b'\\') if slashes == EscapedSlashes::Reject => {
                return Err(ProxyError::Malformed("escaped slash in path"));
            }
            Some(c) => escapes |= decoded(c),
        }
    }
    if !escapes && !backslash && memchr::memmem::find(b, b"//").is_none() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // A valid escape (checked above): decoded if unreserved (or a
        // slash to unescape, which is `/` either way), else kept with its
        // two digits.
        let (c, len) = match b[i] {
            b'%' => match escape_at(i) {
                Some(b'/' | b'\\') if unescape => (b'/', 3),
                Some(c) if decoded(c) => (c, 3),
                _ => {
                    out.extend_from_slice(&b[i..(i + 3).min(b.len())]);
                    i += 3;
                    continue;
                }
            },
            b'\\' => (b'/', 1),
            c => (c, 1),
        };
        if !(c == b'/' && out.last() == Some(&b'/')) {
            out.push(c);
        }
        i += len;
    }
    Ok(String::from_utf8(out).ok())
}

/// `.` or `..` segments, also percent-encoded (`%2e`, `%2E`), which an app
/// that decodes paths would resolve past a route's prefix. A segment ends
/// at `/`, and also at `\\` and at an encoded slash or backslash (`%2F`,
/// `%5C`): an app that decodes the path before resolving dot segments
/// (Python's http.server; nginx too) reads `/x/..%2Fadmin` as `/admin`.
/// A segment's `;` parameters do not hide its dots (`..;x`, Tomcat).
fn has_dot_segments(path: &str) -> bool {
    let b = path.as_bytes();
    // Most paths have neither '.' nor '%': one vectorised scan says so.
    if memchr::memchr2(b'.', b'%', b).is_none() {
        return false;
    }
    let escape = |i: usize, hi: u8, lo: u8| {
        b.len() >= i + 3 && b[i] == b'%' && b[i + 1] == hi && b[i + 2] | 0x20 == lo
    };
    // Dots in the segment so far, and whether it has anything else.
    let mut dots = 0;
    let mut other = false;
    let mut i = 0;
    while i <= b.len() {
        let separator = if i == b.len() || b[i] == b'/' || b[i] == b'\\' {
            1
        } else if escape(i, b'2', b'f') || escape(i, b'5', b'c') {
            3
        } else {
            0
        };
        if separator > 0 {
            if !other && (dots == 1 || dots == 2) {
                return true;
            }
            (dots, other) = (0, false);
            i += separator;
        } else if b[i] == b';' {
            // Parameters (`..;x`): servlet containers drop them and then
            // resolve the dots before them.
            if !other && (dots == 1 || dots == 2) {
                return true;
            }
            other = true;
            i += 1;
        } else if b[i] == b'.' {
            dots += 1;
            i += 1;
        } else if escape(i, b'2', b'e') {
            dots += 1;
            i += 3;
        } else {
            other = true;
            i += 1;
        }
    }
    false
}

/// A transfer coding other than chunked (`gzip, chunked`) would be lost
/// when sift re-frames the body for the upstream, which would then read
/// compressed bytes as the content: 501, as RFC 9112 §6.1 advises (and
/// nginx answers).
fn transfer_codings(h: &HeaderMap) -> Result<(), ProxyError> {
    let other_coding = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"));
    if other_coding {
        return Err(ProxyError::NotImplemented(
            "Transfer-Encoding other than chunked",
        ));
    }
    Ok(())
}

/// An HTTP/1.1 upstream gets a request's trailers only in a chunked body,
/// and only the fields its `Trailer` header names (hyper's client sends no
/// others; RFC 9110 §6.6.2 has a sender declare them). So, for a body that
/// streams to such an upstream: trailers sift already holds (`known`, a
/// body read whole before it is sent) are declared if the client did not;
/// and a body with declared trailers beside a `Content-Length` (an HTTP/2
/// client's) is sent chunked instead, or its trailers would have no room.
/// Undeclared trailers of a body still streaming cannot be declared in
/// time: hyper drops them (Envoy's HTTP/1 codec drops every request
/// trailer unless `enable_trailers`).
fn h1_trailer_framing(h: &mut HeaderMap, known: &[HeaderName]) {
    // Fields no sender may put in trailers (RFC 9110 §6.5.1), which sift
    // removes and hyper never sends: not declared either.
    for name in known
        .iter()
        .filter(|n| !crate::field::NEVER_IN_TRAILERS.contains(n))
    {
        // Read as hyper reads it: a line that is not visible ASCII
        // declares nothing.
        let declared = h.get_all(header::TRAILER).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
            })
        });
        if !declared {
            h.append(header::TRAILER, HeaderValue::from(name.clone()));
        }
    }
    if h.contains_key(header::TRAILER) && h.contains_key(header::CONTENT_LENGTH) {
        h.remove(header::CONTENT_LENGTH);
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

/// An answer's Content-Length given as a list (`2, 2`) or on several lines
/// (hyper's client accepts them when every value is the same) becomes one
/// value, as RFC 9110 §8.6 has a recipient do before forwarding: passed on,
/// the list confused clients, and hyper's server sent nothing at all for
/// a HEAD answer with two lines.
fn single_content_length(h: &mut HeaderMap) {
    let all = h.get_all(header::CONTENT_LENGTH);
    let mut lines = all.iter();
    let Some(first) = lines.next() else {
        return;
    };
    if lines.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let value = first
        .as_bytes()
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .find(|v| !v.is_empty())
        .and_then(|v| HeaderValue::from_bytes(v).ok());
    match value {
        Some(v) => {
            h.insert(header::CONTENT_LENGTH, v);
        }
        None => {
            h.remove(header::CONTENT_LENGTH);
        }
    }
}

fn content_length(h: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    match h.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or(ProxyError::Malformed("Content-Length is not a number")),
    }
}

/// `Some(protocol)` for an HTTP/1.1 upgrade request (e.g. WebSocket).
fn upgrade_protocol(req: &Request<Lingering>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let conn_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !conn_upgrade {
        return None;
    }
    let proto = req.headers().get(header::UPGRADE)?;
    // Never h2c (RFC 9113 §3.1 deprecates it): an upstream that accepts
    // it would tunnel HTTP/2 requests sift never sees, past routes,
    // authorization, rate limits and filters ("h2c smuggling"). The
    // request goes on as a plain one.
    let h2c = proto
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (!h2c).then(|| proto.clone())
}

/// Hop-by-hop header bits, noted in one pass over a message's names (the
/// request's is [`Seen::scan`], the response's is shared with the
/// `x-sift-*` check): most messages carry at most a
/// Connection header, and only present names are looked up again.
mod hop {
    use http::header::{self, HeaderName};
    pub const CONNECTION: u8 = 1;
    pub const TRANSFER_ENCODING: u8 = 2;
    pub const UPGRADE: u8 = 4;
    pub const TE: u8 = 16;
    pub const KEEP_ALIVE: u8 = 32;
    pub const PROXY_CONNECTION: u8 = 64;
    // Not here: `Trailer`, which is end to end (RFC 9110 §6.6.2; hyper's
    // HTTP/1.1 client sends only the trailer fields it declares, so
    // removing it dropped request trailers).

    /// The bit of header `k` (0 if it is not hop-by-hop). Standard names
    /// compare as integers.
    pub fn bit(k: &HeaderName) -> u8 {
        if k == header::CONNECTION {
            CONNECTION
        } else if k == header::TRANSFER_ENCODING {
            TRANSFER_ENCODING
        } else if k == header::UPGRADE {
            UPGRADE
        } else if k == header::TE {
            TE
        } else {
            match k.as_str().as_bytes() {
                b"keep-alive" => KEEP_ALIVE,
                b"proxy-connection" => PROXY_CONNECTION,
                _ => 0,
            }
        }
    }
}

/// Remove hop-by-hop headers and any header the Connection header names,
/// given the [`hop`] bits of the headers present.
/// `TE: trailers` is kept (gRPC needs it); other TE values are dropped.
fn strip_hop_by_hop_present(h: &mut HeaderMap, present: u8) {
    use hop::*;
    if present == 0 {
        return;
    }
    if present & CONNECTION != 0 {
        // Names listed in Connection are hop-by-hop too ("close" and
        // "keep-alive" are options, not names). Usually there are none.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive")
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t) {
                    named.push(n);
                }
            }
        }
        // Never Host: the upstream gets the host the route matched (and
        // X-Forwarded-Host is made from it), whatever the client names.
        for n in named {
            if n != header::TE && n != header::HOST {
                h.remove(n);
            }
        }
        h.remove(header::CONNECTION);
    }
    if present & TRANSFER_ENCODING != 0 {
        h.remove(header::TRANSFER_ENCODING);
    }
    if present & UPGRADE != 0 {
        h.remove(header::UPGRADE);
    }
    if present & KEEP_ALIVE != 0 {
        h.remove("keep-alive");
    }
    if present & PROXY_CONNECTION != 0 {
        h.remove("proxy-connection");
    }
    if present & TE != 0 {
        // Every line must say so: `te: trailers` then `te: gzip` is
        // `trailers,gzip`, and goes.
        let te_trailers = crate::field::joined(h, header::TE)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"trailers"));
        if !te_trailers {
            h.remove(header::TE);
        }
    }
}

fn forwarded_headers(
    h: &mut HeaderMap,
    l: &ListenerSpec,
    conn: &ConnInfo,
    authority: &Option<http::uri::Authority>,
    seen: &Seen,
) {
    let xff = match l.x_forwarded_for {
        XffMode::Append if seen.xff => {
            // Fold every X-Forwarded-For the client sent, in order.
            let mut chain = String::new();
            for v in h.get_all(&X_FORWARDED_FOR) {
                if let Ok(p) = v.to_str() {
                    let p = p.trim();
                    if !p.is_empty() {
                        chain.push_str(p);
                        chain.push_str(", ");
                    }
                }
            }
            chain.push_str(conn.remote_ip.to_str().unwrap_or_default());
            HeaderValue::from_str(&chain).ok()
        }
        // Nothing to append to: the peer's address, made once per connection.
        XffMode::Append | XffMode::Replace => Some(conn.remote_ip.clone()),
    };
    if let Some(v) = xff {
        // Several XFF headers are folded into the one we set.
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    let replace = l.x_forwarded_for == XffMode::Replace;
    if replace || !seen.xfh {
        let host = h.get(header::HOST).cloned().or_else(|| {
            authority
                .as_ref()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(v) = host {
            h.insert(X_FORWARDED_HOST.clone(), v);
        }
    }
}

/// One try of a request to the cluster, boxed so that a hedged try can
/// keep running beside the next.
type Attempt<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<http::Response<Body>, crate::upstream::SendError>>
            + Send
            + 'a,
    >,
>;

/// A hedged try still running, with what it holds.
struct Outstanding<'a> {
    fut: Attempt<'a>,
    ep_index: usize,
    ep_guard: crate::upstream::InflightGuard,
    conn_slot: crate::upstream::ConnSlot,
    permit: Option<crate::policy::retry::RetryPermit>,
}

/// The first of the running tries to answer, and its index.
fn race<'a, 'b>(
    tries: &'b mut [Outstanding<'a>],
) -> impl std::future::Future<
    Output = (
        usize,
        Result<http::Response<Body>, crate::upstream::SendError>,
    ),
> + 'b
where
    'a: 'b,
{
    std::future::poll_fn(move |cx| {
        for (i, o) in tries.iter_mut().enumerate() {
            if let std::task::Poll::Ready(r) = o.fut.as_mut().poll(cx) {
                return std::task::Poll::Ready((i, r));
            }
        }
        std::task::Poll::Pending
    })
}

/// `rewrite.auto_host`: the endpoint's configured host (a DNS name stays
/// the name, for `strict_dns` too), with its port unless it is the
/// scheme's default, as a Host value (Envoy's `auto_host_rewrite`).
fn auto_host_authority(
    e: &crate::config::model::Endpoint,
    tls: bool,
) -> Option<http::uri::Authority> {
    let default = if tls { 443 } else { 80 };
    let host = if e.host.contains(':') {
        format!("[{}]", e.host)
    } else {
        e.host.clone()
    };
    let s = if e.port == default {
        host
    } else {
        format!("{host}:{}", e.port)
    };
    http::uri::Authority::try_from(s).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_read_as_their_debug_form() {
        use http::Version;
        for v in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ] {
            assert_eq!(super::version_str(v), format!("{v:?}"));
        }
    }

    #[test]
    fn queries_keep_parameters_but_not_secret_values() {
        assert_eq!(
            super::redact_query(
                "a=1&access_token=abc&X-Amz-Signature=zz&code=c0de&page=2&api%5Fkey=k&flag&pw="
            ),
            "a=1&access_token=[redacted]&X-Amz-Signature=[redacted]&code=[redacted]&page=2&api%5Fkey=[redacted]&flag&pw="
        );
        assert_eq!(
            super::redact_query("q=coupon+code&barcode=1"),
            "q=coupon+code&barcode=1"
        );
        assert_eq!(super::redact_query(""), "");
    }

    #[test]
    fn grpc_timeout_values() {
        use std::time::Duration;
        let p = |v: &str| super::parse_grpc_timeout(&http::HeaderValue::from_str(v).unwrap());
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("3S"), Some(Duration::from_secs(3)));
        assert_eq!(p("99999999m"), Some(Duration::from_millis(99_999_999)));
        assert_eq!(p("7u"), Some(Duration::from_micros(7)));
        assert_eq!(p("0n"), Some(Duration::ZERO));
        for bad in ["", "m", "123456789m", "5s", "1.5S", "-1S", " 1S", "1 S"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        let f = |d| super::format_grpc_timeout(d);
        assert_eq!(f(Duration::from_micros(1500)), "1m");
        assert_eq!(f(Duration::from_secs(30)), "30000m");
        assert_eq!(f(Duration::from_secs(200_000)), "200000S");
    }

    use super::*;

    #[test]
    fn dot_segments() {
        assert!(has_dot_segments("/a/../b"));
        assert!(has_dot_segments("/a/."));
        assert!(!has_dot_segments("/a/..b/c.d"));
        assert!(has_dot_segments("/api/%2e%2e/admin"));
        assert!(has_dot_segments("/api/%2E./x"));
        assert!(has_dot_segments("/api/.%2e"));
        assert!(!has_dot_segments("/api/%2e%2e%2e"));
        assert!(!has_dot_segments("/a//b"));
        assert!(has_dot_segments("/x/..%2Fadmin"));
        assert!(has_dot_segments("/x%2f.%2fy"));
        assert!(has_dot_segments("/x\\..\\admin"));
        assert!(has_dot_segments("/x/..%5cadmin"));
        assert!(has_dot_segments(".."));
        assert!(!has_dot_segments("/x/..a%2Fb"));
        assert!(!has_dot_segments("/x%2F..."));
        assert!(!has_dot_segments(""));
        assert!(has_dot_segments("/api/..;/admin"));
        assert!(has_dot_segments("/api/.;x"));
        assert!(!has_dot_segments("/api/a;..;/x"));
        assert!(!has_dot_segments("/api/...;/x"));
    }

    /// Every path over a small alphabet of escapes, digits, dots and
    /// slashes (all 10^6 of up to 6 bytes): a path is refused, or its
    /// normal form is its own normal form (routing and the app read one
    /// path), with no `//` and no escape of an unreserved character left.
    #[test]
    fn normalized_paths_are_their_own_normal_form() {
        let alphabet = b"%2561e./Fc";
        let mut refused = 0;
        let mut changed = 0;
        let mut buf = Vec::new();
        for len in 1..=6u32 {
            for mut k in 0..10usize.pow(len) {
                buf.clear();
                buf.push(b'/');
                for _ in 0..len {
                    buf.push(alphabet[k % 10]);
                    k /= 10;
                }
                let p = std::str::from_utf8(&buf).unwrap();
                let Ok(n) = normalize_path(p, EscapedSlashes::Keep) else {
                    refused += 1;
                    continue;
                };
                // Unescaped, the normal form has no escaped slash left,
                // and refused, a path with one is an error.
                let slash = |s: &str| {
                    let l = s.to_ascii_lowercase();
                    l.contains("%2f") || l.contains("%5c")
                };
                match normalize_path(p, EscapedSlashes::Unescape) {
                    Ok(Some(u)) => {
                        assert!(!slash(&u), "{p} -> {u}");
                        assert!(!u.contains("//"), "{p} -> {u}");
                        assert_eq!(
                            normalize_path(&u, EscapedSlashes::Unescape).ok(),
                            Some(None),
                            "{p} -> {u}"
                        );
                    }
                    Ok(None) => assert!(!slash(p), "{p}"),
                    Err(e) => panic!("{p}: {e}"),
                }
                assert_eq!(
                    normalize_path(p, EscapedSlashes::Reject).is_err(),
                    slash(p),
                    "{p}"
                );
                let Some(n) = n else { continue };
                changed += 1;
                assert_eq!(
                    normalize_path(&n, EscapedSlashes::Keep).ok(),
                    Some(None),
                    "{p} -> {n}"
                );
            }
        }
        assert!(refused > 0 && changed > 0, "{refused} {changed}");
        let keep = |p: &str| normalize_path(p, EscapedSlashes::Keep);
        assert!(keep("/%%36%31dmin").is_err());
        assert!(keep("/a%2").is_err());
        assert!(keep("/a%zz").is_err());
        assert_eq!(keep("/%2561").ok(), Some(None));
        assert_eq!(keep("/%2F%61").unwrap().as_deref(), Some("/%2Fa"));
        let unescape = |p: &str| normalize_path(p, EscapedSlashes::Unescape);
        assert_eq!(unescape("/admin%2Fx").unwrap().as_deref(), Some("/admin/x"));
        assert_eq!(unescape("/%2F%2fadmin").unwrap().as_deref(), Some("/admin"));
        assert_eq!(unescape("/a%5Cb").unwrap().as_deref(), Some("/a/b"));
        assert_eq!(unescape("/a%5C/%5c\\b").unwrap().as_deref(), Some("/a/b"));
        // A raw backslash is a slash in every mode; escaped, only unescaped.
        assert_eq!(keep("/admin\\x").unwrap().as_deref(), Some("/admin/x"));
        assert_eq!(keep("\\\\admin/\\").unwrap().as_deref(), Some("/admin/"));
        assert_eq!(keep("/a%5C\\b").unwrap().as_deref(), Some("/a%5C/b"));
        assert_eq!(
            normalize_path("/admin\\x", EscapedSlashes::Reject)
                .unwrap()
                .as_deref(),
            Some("/admin/x")
        );
        assert!(normalize_path("/a%2fb", EscapedSlashes::Reject).is_err());
    }

    #[test]
    fn path_parameters_kept_refused_or_stripped() {
        let strip = |p: &str| path_parameters(p, PathParameters::Strip).unwrap();
        for (path, want) in [
            ("/admin;jsessionid=1", "/admin"),
            ("/admin;x/y", "/admin/y"),
            ("/a;b/c;d;e/f", "/a/c/f"),
            ("/a/;x/b", "/a/b"),
            ("/;x", "/"),
            ("/a/b;x/", "/a/b/"),
            ("/api/..;/admin", "/api/../admin"),
        ] {
            assert_eq!(strip(path).as_deref(), Some(want), "{path}");
        }
        assert_eq!(strip("/plain/path"), None);
        assert_eq!(path_parameters("/a;b", PathParameters::Keep).unwrap(), None);
        assert!(path_parameters("/a;b", PathParameters::Reject).is_err());
        assert_eq!(
            path_parameters("/a/b", PathParameters::Reject).unwrap(),
            None
        );
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id(&HeaderMap::new(), false);
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        for (i, c) in s.char_indices() {
            assert_eq!(c == '-', matches!(i, 8 | 13 | 18 | 23), "{s}");
            assert!(c == '-' || c.is_ascii_hexdigit(), "{s}");
        }
        assert_ne!(request_id(&HeaderMap::new(), false), id);
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, true), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h, true), "has space");
    }

    #[test]
    fn scan_finds_the_headers_sift_acts_on() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a"));
        h.insert("x-other", HeaderValue::from_static("1"));
        let s = Seen::scan(&h);
        assert!(!(s.request_id || s.canary || s.sift || s.xff || s.xfh || s.xfcc));
        for n in [
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-client-cert",
            "x-sift-canary",
        ] {
            h.insert(n, HeaderValue::from_static("1"));
        }
        let s = Seen::scan(&h);
        assert!(s.request_id && s.canary && s.sift && s.xff && s.xfh && s.xfcc);
        let mut h = HeaderMap::new();
        h.insert("x-sift-spam-score", HeaderValue::from_static("1"));
        let s = Seen::scan(&h);
        assert!(s.sift && !s.canary);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.append("connection", HeaderValue::from_static("Host"));
        h.insert("host", HeaderValue::from_static("a.example"));
        // As on the request path: the bits come from the header scan.
        let present = Seen::scan(&h).hop;
        strip_hop_by_hop_present(&mut h, present);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("x-keep").is_some());
        assert_eq!(h.get("host").unwrap(), "a.example");
    }

    /// TE is kept only when all its lines, joined, say `trailers`: a
    /// second line after `trailers` used to ride along to the upstream.
    #[test]
    fn te_is_kept_only_when_every_line_says_trailers() {
        let mut h = HeaderMap::new();
        h.append("te", HeaderValue::from_static("trailers"));
        h.append("te", HeaderValue::from_static("gzip"));
        let present = Seen::scan(&h).hop;
        strip_hop_by_hop_present(&mut h, present);
        assert!(h.get("te").is_none());
    }
}

#[cfg(test)]
mod client_ip_tests {
    use super::*;

    #[test]
    fn trusted_cidrs_skip_trusted_proxies_from_the_right() {
        let cidrs: Vec<crate::config::model::Cidr> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let trusted_peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let other_peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        for (xff, peer, want) in [
            (Some("203.0.113.1, 10.0.0.5"), trusted_peer, "203.0.113.1"),
            (
                Some("203.0.113.1, 198.51.100.7"),
                trusted_peer,
                "198.51.100.7",
            ),
            (
                Some("203.0.113.1, 198.51.100.7, 10.1.1.1"),
                trusted_peer,
                "198.51.100.7",
            ),
            (Some("10.0.0.1, 10.0.0.2"), trusted_peer, "10.0.0.1"),
            (
                Some("203.0.113.1:5555, 10.0.0.5"),
                trusted_peer,
                "203.0.113.1",
            ),
            (
                Some("[2001:db9::1]:443, 2001:db8::7"),
                trusted_peer,
                "2001:db9::1",
            ),
            (Some("unknown, 10.0.0.5"), trusted_peer, "unknown"),
            (None, trusted_peer, "10.0.0.9"),
            (Some("203.0.113.1, 10.0.0.5"), other_peer, "192.0.2.1"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(v) = xff {
                h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            let mut b = IpBuf::new();
            assert_eq!(
                std::str::from_utf8(trusted_client_ip_bytes(0, &cidrs, &h, peer, &mut b)).unwrap(),
                want,
                "{xff:?} from {peer}"
            );
        }
    }

    #[test]
    fn trusted_hops_pick_from_the_right_without_allocating() {
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.1, 198.51.100.7"),
        );
        for (hops, want) in [
            (0, "10.0.0.9"),
            (1, "198.51.100.7"),
            (2, "203.0.113.1"),
            (5, "203.0.113.1"),
        ] {
            let mut b = IpBuf::new();
            assert_eq!(
                trusted_client_ip_bytes(hops, &[], &h, peer, &mut b),
                want.as_bytes(),
                "hops {hops}"
            );
            assert_eq!(trusted_client_ip(hops, &[], &h, peer), want);
        }
        h.append("x-forwarded-for", HeaderValue::from_static("192.0.2.5"));
        let mut b = IpBuf::new();
        assert_eq!(
            trusted_client_ip_bytes(1, &[], &h, peer, &mut b),
            b"192.0.2.5"
        );
        assert_eq!(
            trusted_client_ip_bytes(2, &[], &h, peer, &mut b),
            b"198.51.100.7"
        );
        // A line with a byte that is not visible ASCII still counts, read
        // the same way by both.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"evil\xff, 203.0.113.9").unwrap(),
        );
        assert_eq!(
            trusted_client_ip_bytes(1, &[], &h, peer, &mut b),
            b"203.0.113.9"
        );
        assert_eq!(trusted_client_ip(1, &[], &h, peer), "203.0.113.9");
        assert_eq!(trusted_client_ip(2, &[], &h, peer), "evil\u{fffd}");
        h.insert("x-forwarded-for", HeaderValue::from_static(" , "));
        assert_eq!(trusted_client_ip(1, &[], &h, peer), "10.0.0.9");
    }
}
