//! The Istio mode: Envoy's external authorization (ext_authz, over gRPC
//! and HTTP) and external processing (ext_proc) served from a
//! `serve: envoy` listener. Envoy keeps forwarding; sift decides with the
//! same pipeline the proxy runs (route match, CORS, identity, JWT, rate
//! limits, local answers, body limit, filters), in two phases: the head
//! ([`admit_head`]) and, when a filter reads it, the body ([`admit_body`]).
//! What the proxy would add to the upstream request, sift asks Envoy to
//! add; what it would answer itself, it asks Envoy to answer.

pub mod authz_http;
pub mod grpc;
pub mod proc;
pub mod rls;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::BodyExt;

use crate::config::file::FilterMode;
use crate::error::ProxyError;
use crate::proxy::ConnInfo;
use crate::snapshot::{Route, Snapshot};
use crate::state::Shared;

/// The header a filter rule's `cluster` action sets for Envoy's routing
/// (sift cannot pick Envoy's cluster; Envoy's route can match on it).
pub static X_SIFT_CLUSTER: HeaderName = HeaderName::from_static("x-sift-cluster");

/// What sift asks Envoy to do with a request it admits.
#[derive(Debug, Default)]
pub struct Allowed {
    /// The route that admitted the request.
    pub route: String,
    /// Request headers for the upstream, each replacing any of its name.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Request headers the upstream must not see.
    pub remove: Vec<HeaderName>,
    /// Headers for the client's response (rate-limit state, CORS).
    pub response: Vec<(HeaderName, HeaderValue)>,
    /// `filter=verdict(score)` of each filter that ran.
    pub summary: Vec<String>,
}

/// A denial: the answer Envoy sends the client instead of forwarding.
#[derive(Debug)]
pub struct Denied {
    pub response: Response<Bytes>,
    /// The route that matched, if one did.
    pub route: Option<String>,
    pub kind: Option<crate::error::ErrorKind>,
}

/// Why a phase stops a request: an error (the one error map answers it)
/// or an answer of sift's own (preflight, redirect, direct response,
/// answer route).
enum Stop {
    Error(ProxyError),
    Answer(Box<Response<Bytes>>),
}

impl From<ProxyError> for Stop {
    fn from(e: ProxyError) -> Stop {
        Stop::Error(e)
    }
}

/// The head phase's result: the request may go on, pending its body.
pub struct Head<'s> {
    pub route: &'s Route,
    pub allowed: Allowed,
    /// The request's filter view, when a filter runs on this route.
    info: Option<crate::filter::RequestInfo>,
    /// A held (block, annotate) or shadow filter or an answer route
    /// reads the body.
    pub wants_body: bool,
    /// The largest `max_inspect_bytes` of the route's filters.
    pub inspect_cap: u64,
    /// The route's `max_request_body`.
    pub body_limit: u64,
    /// The CORS origin the answer is decorated for.
    cors_origin: Option<HeaderValue>,
    request_id: String,
}

/// One call's view of the connection: Envoy's client (source address and
/// mTLS principal from the call), on the envoy listener.
pub fn client_conn(conn: &ConnInfo, remote: Option<SocketAddr>, principal: &str) -> ConnInfo {
    let remote = remote.unwrap_or(conn.remote);
    let identity = crate::tls::Identity::from_principal(principal);
    ConnInfo {
        listener: conn.listener.clone(),
        listener_index: conn.listener_index,
        remote,
        remote_ip: HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("-")),
        tls: identity.is_some(),
        tls_version: None,
        sni: None,
        identity,
        xfcc: None,
        envoy: true,
        slot: None,
    }
}

/// The head phase: everything the proxy decides before it reads a body.
/// `req` carries the client request's method, path (with query) and
/// headers, Host included; its headers are edited as the proxy would edit
/// them (x-sift-* and underscored names removed, JWT claims set), and the
/// edits are recorded in [`Allowed`].
pub async fn admit_head<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: &ConnInfo,
    req: &mut Request<()>,
    grpc_caller: bool,
) -> Result<Head<'s>, Box<Denied>> {
    let mut route = None;
    let mut origin = None;
    let r = head(shared, snap, conn, req, &mut route, &mut origin).await;
    r.map_err(|e| {
        let mut d = deny(shared, e, grpc_caller, route);
        // A refusal an allowed origin's page can read (429, 401), as the
        // proxy decorates its own answers.
        if let (Some(o), Some(c)) = (&origin, route.and_then(|r| r.spec.cors.as_ref())) {
            c.actual(d.response.headers_mut(), o);
        }
        d
    })
}

async fn head<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: &ConnInfo,
    req: &mut Request<()>,
    matched: &mut Option<&'s Route>,
    origin: &mut Option<HeaderValue>,
) -> Result<Head<'s>, Stop> {
    let (listener_index, listener) = snap
        .listener_at(conn.listener_index, &conn.listener)
        .ok_or_else(|| ProxyError::ListenerRemoved(conn.listener.to_string()))?;
    let mut allowed = Allowed::default();
    // Only sift sets x-sift-*, and names with `_` pass for ones it sets
    // (CGI-style apps): Envoy removes both, as the proxy does.
    for k in req.headers().keys() {
        let s = k.as_str();
        if s.starts_with("x-sift-") || s.as_bytes().contains(&b'_') {
            allowed.remove.push(k.clone());
        }
    }
    for k in &allowed.remove {
        req.headers_mut().remove(k);
    }
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    // Routed on the path as the app reads it: the listener's
    // `escaped_slashes` and `path_parameters` (reject: 400; unescape,
    // strip: the route sees the decoded or stripped path). Envoy forwards
    // the path as it was: only sift's routing view changes.
    crate::proxy::normal_form(req, listener)?;
    let host = crate::proxy::request_host(req)?.into_owned();
    let route = crate::proxy::route_request(snap, listener, &host, req)?;
    *matched = Some(route);
    let metrics = &shared.metrics;
    allowed.route = route.spec.name.clone();

    // CORS: a preflight from an allowed origin is answered (Envoy sends
    // sift's 204); an allowed origin's answer is decorated.
    let mut cors_origin = None;
    match crate::proxy::cors_step(route, req.method(), req.headers(), metrics) {
        crate::proxy::CorsStep::Preflight(headers) => {
            let mut resp = Response::new(Bytes::new());
            *resp.status_mut() = http::StatusCode::NO_CONTENT;
            *resp.headers_mut() = headers;
            return Err(Stop::Answer(Box::new(resp)));
        }
        crate::proxy::CorsStep::Actual(o) => {
            *origin = Some(o.clone());
            cors_origin = Some(o);
        }
        crate::proxy::CorsStep::Nothing => {}
    }

    // Admission, in the proxy's order.
    crate::proxy::csrf_admission(route, req)?;
    crate::proxy::identity_admission(route, listener, conn, req.headers())?;
    if route.spec.jwt.is_some() || route.spec.basic_auth.is_some() {
        let before = req.headers().clone();
        let uri = req.uri().clone();
        if let Some(b) = &route.spec.basic_auth {
            crate::proxy::basic_auth_admission(b, route, req.headers_mut(), metrics)?;
        }
        if let Some(j) = &route.spec.jwt {
            crate::proxy::jwt_admission(j, route, req.headers_mut(), uri.query(), metrics)?;
        }
        // What the check changed: claim headers set, spoofed ones and
        // (forward: false) the token removed.
        for (name, v) in req.headers() {
            if before
                .get_all(name)
                .iter()
                .ne(req.headers().get_all(name).iter())
                && !allowed.set.iter().any(|(n, _)| n == name)
            {
                allowed.set.push((name.clone(), v.clone()));
            }
        }
        for name in before.keys() {
            if !req.headers().contains_key(name) {
                allowed.remove.push(name.clone());
            }
        }
    }
    let now = shared.clock.now();
    let admitted =
        crate::proxy::rate_limit(snap, (listener_index, listener), conn, route, req, now)?;
    if let Some(hs) = crate::proxy::rate_limit_global(snap, route, admitted).await? {
        allowed.response.extend(hs);
    }

    // Routes that answer themselves (after admission, as the proxy).
    if route.spec.redirect.is_some() || route.spec.direct_response.is_some() {
        let resp = crate::proxy::local_answer(&route.spec, req, &host, conn.tls)?;
        let (mut parts, _) = resp.into_parts();
        route.spec.response_headers.apply(&mut parts.headers);
        for (k, v) in &allowed.response {
            parts.headers.insert(k.clone(), v.clone());
        }
        let body = match &route.spec.direct_response {
            Some(d) => Bytes::from(d.body.clone()),
            None => Bytes::new(),
        };
        return Err(Stop::Answer(Box::new(Response::from_parts(parts, body))));
    }

    // The body limit, when the length is declared.
    let body_limit = route.spec.max_request_body.0;
    let declared = declared_length(req.headers())?;
    if declared.is_some_and(|n| n > body_limit) {
        return Err(ProxyError::BodyTooLarge { limit: body_limit }.into());
    }
    let info = (route.answer.is_some() || !route.filters.is_empty())
        .then(|| crate::proxy::filter_request_info(req, route, conn))
        .transpose()?;
    let inspect_cap = route
        .filters
        .iter()
        .map(|f| f.spec.usage.max_inspect_bytes)
        .max()
        .unwrap_or(0);
    let wants_body = route.answer.is_some() || !route.filters.is_empty();
    Ok(Head {
        route,
        allowed,
        info,
        wants_body,
        inspect_cap,
        body_limit,
        cors_origin,
        request_id,
    })
}

/// The Content-Length a request declares, if any.
fn declared_length(h: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    match h.get(http::header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(ProxyError::Malformed("Content-Length is not a number")),
    }
}

/// The body phase: the route's answer filter, held filters (block,
/// annotate) and shadow filters on what Envoy sent of the body. `complete`
/// is false when Envoy sent only a prefix (`allow_partial_message`,
/// `BUFFERED_PARTIAL`) or none of a body the request has: the filters
/// then act on it as on a body longer than `max_inspect_bytes`
/// (`on_oversize`).
pub async fn admit_body(
    shared: &Shared,
    head: Head<'_>,
    body: Bytes,
    complete: bool,
    grpc_caller: bool,
) -> Result<Allowed, Box<Denied>> {
    let route = head.route;
    let cors_origin = head.cors_origin.clone();
    let r = body_phase(shared, head, body, complete).await;
    match r {
        Ok(mut a) => {
            if let (Some(o), Some(c)) = (&cors_origin, &route.spec.cors) {
                let mut h = HeaderMap::new();
                c.actual(&mut h, o);
                for (k, v) in &h {
                    a.response.push((k.clone(), v.clone()));
                }
            }
            Ok(a)
        }
        Err(e) => {
            let mut d = deny(shared, e, grpc_caller, Some(route));
            if let (Some(o), Some(c)) = (&cors_origin, &route.spec.cors) {
                c.actual(d.response.headers_mut(), o);
            }
            Err(d)
        }
    }
}

async fn body_phase(
    shared: &Shared,
    head: Head<'_>,
    body: Bytes,
    complete: bool,
) -> Result<Allowed, Stop> {
    let Head {
        route,
        mut allowed,
        info,
        body_limit,
        request_id,
        ..
    } = head;
    if body.len() as u64 > body_limit {
        return Err(ProxyError::BodyTooLarge { limit: body_limit }.into());
    }
    let Some(info) = info else {
        return Ok(allowed);
    };
    let metrics = &shared.metrics;
    let name = route.spec.name.as_str();
    if let Some(f) = &route.answer {
        let mut b = http_body_util::Full::new(body);
        let v = crate::filter::chain::answer(
            &shared.filter_pool,
            &metrics.filters,
            name,
            &info,
            f,
            &mut b,
            body_limit,
        )
        .await?;
        let json = serde_json::to_vec(&v).map_err(|e| ProxyError::Internal(e.to_string()))?;
        let mut resp = Response::new(Bytes::from(json));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        route.spec.response_headers.apply(resp.headers_mut());
        return Err(Stop::Answer(Box::new(resp)));
    }
    let held_filters: Vec<&crate::snapshot::RouteFilter> = route
        .filters
        .iter()
        .filter(|f| f.spec.usage.mode != FilterMode::Shadow)
        .collect();
    if !held_filters.is_empty() {
        let held = crate::filter::chain::Held {
            data: body.clone(),
            complete,
            trailers: None,
            starved: false,
        };
        let d = crate::filter::chain::run_held(
            &shared.filter_pool,
            &metrics.filters,
            name,
            &info,
            &held,
            &held_filters,
        )
        .await?;
        for (k, v) in d.headers {
            allowed.remove.retain(|r| r != k);
            allowed.set.push((k, v));
        }
        if let Some(c) = d.cluster {
            if let Ok(v) = HeaderValue::from_str(&c) {
                allowed.set.push((X_SIFT_CLUSTER.clone(), v));
            }
        }
        allowed.summary.extend(d.summary);
    }
    let shadows: Vec<_> = route
        .filters
        .iter()
        .filter(|f| f.spec.usage.mode == FilterMode::Shadow)
        .map(|f| (f.filter.clone(), f.spec.usage.clone()))
        .collect();
    if !shadows.is_empty() && !body.is_empty() {
        if let Some(tx) = crate::filter::chain::shadow(
            shared.filter_pool.clone(),
            shared.metrics.clone(),
            Arc::from(name),
            info,
            request_id,
            shadows,
        ) {
            tx.send_all(body);
        }
    }
    Ok(allowed)
}

/// Count `n` bytes of a check's body, which the check holds until it
/// ends, in `overload.max_buffered_bytes` like a body the proxy holds for
/// its filters; false when it would pass the limit (counted as denied).
pub fn hold_body(shared: &Shared, res: &mut crate::budget::Reservation, n: usize) -> bool {
    let ok = res.grow(n as u64);
    if !ok {
        shared.budget.deny(crate::budget::Use::Filter);
    }
    ok
}

/// The denial for a check whose body would pass
/// `overload.max_buffered_bytes`: 503 `overloaded`, which Envoy relays to
/// the client (never a verdict on a body not read).
pub fn buffers_full(shared: &Shared, grpc: bool, route: &Route) -> Box<Denied> {
    let limit = shared.snapshot.load().config.overload.max_buffered_bytes;
    let e = ProxyError::BuffersFull {
        what: "the filters",
        key: "max_buffered_bytes",
        limit: limit.unwrap_or(u64::MAX),
    };
    deny_error(shared, e, grpc, route)
}

/// A denial for an error met outside the phases (reading the body).
pub fn deny_error(shared: &Shared, e: ProxyError, grpc: bool, route: &Route) -> Box<Denied> {
    deny(shared, Stop::Error(e), grpc, Some(route))
}

/// A denial from an error: the proxy's one error map and route headers.
fn deny(shared: &Shared, stop: Stop, grpc: bool, route: Option<&Route>) -> Box<Denied> {
    let (kind, resp) = match stop {
        Stop::Answer(r) => (None, *r),
        Stop::Error(e) => {
            let snap = shared.snapshot.load();
            let resp = crate::proxy::error_answer(
                &e,
                grpc,
                route,
                &shared.metrics,
                &snap.config.local_replies,
                None,
            );
            let (parts, body) = resp.into_parts();
            // sift's error bodies are whole in memory: collecting them
            // does not wait.
            (
                Some(e.kind()),
                Response::from_parts(parts, ready_bytes(body)),
            )
        }
    };
    Box::new(Denied {
        response: resp,
        route: route.map(|r| r.spec.name.clone()),
        kind,
    })
}

/// The bytes of a body that is already complete (sift's own answers).
pub(super) fn ready_bytes(body: crate::body::Body) -> Bytes {
    let mut fut = std::pin::pin!(body.collect());
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::future::Future::poll(fut.as_mut(), &mut cx) {
        std::task::Poll::Ready(Ok(c)) => c.to_bytes(),
        _ => Bytes::new(),
    }
}

/// One access-log line per call, as the proxy writes one per request
/// (`log.access_log`), with the API and the decision.
pub fn log_check(
    shared: &Shared,
    api: &str,
    client: &ConnInfo,
    req: &Request<()>,
    result: Result<&Allowed, &Denied>,
    start: std::time::Instant,
) {
    if !shared.snapshot.load().config.log.access_log {
        return;
    }
    let (decision, status, route, error, filters) = match result {
        Ok(a) => ("allowed", 200, a.route.as_str(), "-", a.summary.join(" ")),
        Err(d) => (
            "denied",
            d.response.status().as_u16(),
            d.route.as_deref().unwrap_or("none"),
            d.kind.map_or("-", |k| k.as_str()),
            String::new(),
        ),
    };
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let identity = client.identity.as_ref().map_or("-", |i| i.id.as_str());
    let filters = if filters.is_empty() {
        "-"
    } else {
        filters.as_str()
    };
    let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    // A check per request in the Istio mode: written directly, as the
    // proxy's access lines are (crate::access_log), in the same shape.
    if let Some(mut w) = crate::logging::access_json_writer() {
        if tracing::enabled!(target: "sift::access", tracing::Level::INFO) {
            crate::access_log::write(&mut w, "envoy_check", |l| {
                l.str("api", api)
                    .str("request_id", request_id)
                    .str("listener", &client.listener)
                    .display("remote", client.remote)
                    .str("method", req.method().as_str())
                    .str("host", host)
                    .str("path", req.uri().path())
                    .str("decision", decision)
                    .u64("status", u64::from(status))
                    .str("route", route)
                    .str("identity", identity)
                    .str("filters", filters)
                    .str("error", error)
                    .f64("duration_ms", duration_ms);
            });
        }
        return;
    }
    tracing::info!(
        target: "sift::access",
        api,
        request_id,
        listener = %client.listener,
        remote = %client.remote,
        method = %req.method(),
        host,
        path = req.uri().path(),
        decision,
        status,
        route,
        identity,
        filters,
        error,
        duration_ms,
        "envoy_check"
    );
}

/// One call to a tonic-generated gRPC service (whose errors cannot
/// happen: a failed call is a gRPC status in the response).
async fn call_grpc<S, B>(
    mut svc: S,
    req: Request<hyper::body::Incoming>,
) -> Response<crate::body::Body>
where
    S: tonic::codegen::Service<
            Request<hyper::body::Incoming>,
            Response = Response<B>,
            Error = std::convert::Infallible,
        >,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    match svc.call(req).await {
        Ok(resp) => resp.map(crate::body::boxed),
        Err(never) => match never {},
    }
}

/// Whether the listener at `index` serves Envoy.
pub fn is_envoy(snap: &Snapshot, index: usize) -> bool {
    snap.listener(index)
        .is_some_and(|l| l.serve == crate::config::file::Serve::Envoy)
}

/// Serve one request on a `serve: envoy` listener: gRPC calls to the
/// Authorization, ExternalProcessor or RateLimitService services, anything else an HTTP
/// ext_authz check.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<hyper::body::Incoming>,
) -> Response<crate::body::Body> {
    let path = req.uri().path();
    if path.starts_with("/envoy.service.auth.v3.Authorization/") {
        grpc::serve(shared, conn, req).await
    } else if path.starts_with("/envoy.service.ext_proc.v3.ExternalProcessor/") {
        proc::serve(shared, conn, req).await
    } else if path.starts_with("/envoy.service.ratelimit.v3.RateLimitService/") {
        rls::serve(shared, conn, req).await
    } else {
        authz_http::serve(shared, conn, req).await
    }
}
