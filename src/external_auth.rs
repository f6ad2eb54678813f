//! External authorization of a route's requests (`routes[].external_auth`):
//! before forwarding, sift asks an authorization service and forwards only
//! on a 2xx answer, as nginx's `auth_request`, Traefik's `forwardAuth` and
//! Envoy's HTTP `ext_authz` do (oauth2-proxy, Authelia, Authentik and
//! in-house services speak this).
//!
//! - The check is a request without a body to one endpoint of the
//!   configured cluster (its LB, health, outlier detection, TLS and
//!   breakers apply), with the client's headers (all, or the configured
//!   ones) and `X-Forwarded-Method/-Proto/-Host/-Uri/-For`.
//! - 2xx: the request goes on with `upstream_headers` of the answer set on
//!   it (the client's own values of those names removed first, so the app
//!   can trust them) and `client_headers_on_success` for the client's
//!   response.
//! - Any other status is the client's answer: the service's status, its
//!   headers (all but hop-by-hop, or `client_headers`) and its body.
//! - No answer in `timeout` (connect failure, no healthy endpoint, breaker
//!   open, a body over 64 KiB): `failure_mode_allow` forwards, otherwise
//!   `status_on_error` (403 by default, as Envoy).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use http_body_util::BodyExt;
use serde::Serialize;

use crate::config::file::UpstreamProtocol;
use crate::config::units::Dur;
use crate::error::ProxyError;
use crate::policy::outlier::Observed;
use crate::upstream::Cluster;

/// Largest denial body relayed to the client.
pub const MAX_DENIAL_BODY: usize = 64 * 1024;

/// The validated `external_auth` of a route.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExternalAuthSpec {
    pub cluster: String,
    /// `http` (a plain request) or `grpc` (Envoy's Authorization/Check).
    pub protocol: AuthProtocol,
    /// gRPC: `attributes.context_extensions` of every check.
    pub context_extensions: std::collections::BTreeMap<String, String>,
    /// Fixed path and query of the check; None: the client's.
    pub path: Option<String>,
    /// None: the client's method.
    #[serde(serialize_with = "ser_method")]
    pub method: Option<Method>,
    pub timeout: Dur,
    /// HTTP: the check's path is this prefix and the client's path.
    pub path_prefix: Option<String>,
    /// None: every client header (but hop-by-hop and framing ones).
    pub request_headers: Option<Vec<NamePattern>>,
    pub upstream_headers: Vec<NamePattern>,
    /// None: every header of the denial (but hop-by-hop and framing ones).
    pub client_headers: Option<Vec<NamePattern>>,
    pub client_headers_on_success: Vec<NamePattern>,
    pub failure_mode_allow: bool,
    pub status_on_error: u16,
    /// Send the client's body with the check (Envoy's with_request_body).
    pub with_body: Option<WithBody>,
}

/// An `external_auth`'s `with_request_body`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WithBody {
    pub max_request_bytes: u64,
    pub allow_partial_message: bool,
    pub pack_as_bytes: bool,
}

/// How the service is asked.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AuthProtocol {
    /// A request without a body; 2xx allows (nginx, Traefik, oauth2-proxy).
    #[default]
    Http,
    /// `envoy.service.auth.v3.Authorization/Check` over HTTP/2 (OPA's
    /// Envoy plugin, Istio-style authorization servers).
    Grpc,
}

fn ser_method<S: serde::Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(m.as_str()),
        None => s.serialize_str("original"),
    }
}

/// A header name in a list: exact, or every name with a prefix
/// (`x-auth-request-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamePattern {
    Exact(HeaderName),
    Prefix(String),
}

impl NamePattern {
    pub fn matches(&self, n: &HeaderName) -> bool {
        match self {
            NamePattern::Exact(e) => e == n,
            NamePattern::Prefix(p) => n.as_str().starts_with(p.as_str()),
        }
    }
}

impl Serialize for NamePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NamePattern::Exact(e) => s.serialize_str(e.as_str()),
            NamePattern::Prefix(p) => s.serialize_str(&format!("{p}*")),
        }
    }
}

fn listed(list: &[NamePattern], n: &HeaderName) -> bool {
    list.iter().any(|p| p.matches(n))
}

/// What a 2xx answer adds: headers for the upstream request, headers for
/// the client's response.
#[derive(Debug, Default)]
pub struct Allowed {
    /// Set on the upstream request; `true`: appended instead of replacing.
    pub upstream: Vec<(HeaderName, HeaderValue, bool)>,
    /// Removed from the upstream request (gRPC `headers_to_remove`).
    pub remove: Vec<HeaderName>,
    pub client: Vec<(HeaderName, HeaderValue)>,
}

/// What the service said.
enum Answer {
    Allow(Allowed),
    Deny {
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

/// Headers never copied between the client, the service and the app.
fn framing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | "host"
            | "expect"
            | "http2-settings"
    )
}

/// What the client asked, for the `X-Forwarded-*` headers of the check.
pub struct Client<'a> {
    /// The client's address as rate limits read it, and the peer's port.
    pub addr: std::net::SocketAddr,
    /// The mTLS identity (SPIFFE ID), if any.
    pub identity: Option<&'a str>,
    pub version: Version,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub host: &'a str,
    pub tls: bool,
    pub ip: &'a str,
    pub headers: &'a HeaderMap,
    /// With `with_request_body`: the body sent (at most
    /// `max_request_bytes`) and whether it is only a part of it.
    pub body: Option<(Bytes, bool)>,
}

/// Why a check got no answer to decide on.
#[derive(Debug)]
enum Failed {
    NoEndpoint,
    Overload,
    Send(String),
    Timeout,
    BodyTooLong,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::NoEndpoint => f.write_str("no healthy endpoint"),
            Failed::Overload => f.write_str("circuit breaker open"),
            Failed::Send(e) => write!(f, "{e}"),
            Failed::Timeout => f.write_str("timed out"),
            Failed::BodyTooLong => write!(f, "denial body over {MAX_DENIAL_BODY} bytes"),
        }
    }
}

/// The outcome, for `sift_external_auth_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    ErrorAllowed,
    ErrorDenied,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Allowed,
        Outcome::Denied,
        Outcome::ErrorAllowed,
        Outcome::ErrorDenied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::ErrorAllowed => "error_allowed",
            Outcome::ErrorDenied => "error_denied",
        }
    }
}

/// Ask the service about `client`'s request. `Ok` to go on (with what
/// the answer adds), `Err` with the client's answer.
pub async fn check(
    spec: &ExternalAuthSpec,
    cluster: &Arc<Cluster>,
    client: &Client<'_>,
    request_id: &HeaderValue,
    clock: crate::clock::Clock,
    route: &str,
) -> (Outcome, Result<Allowed, ProxyError>) {
    let asked = async {
        match spec.protocol {
            AuthProtocol::Http => exchange(spec, cluster, client, request_id, clock)
                .await
                .map(|(status, headers, body)| http_answer(spec, status, &headers, body)),
            AuthProtocol::Grpc => exchange_grpc(spec, cluster, client, request_id, clock).await,
        }
    };
    let r = tokio::time::timeout(spec.timeout.0, asked)
        .await
        .unwrap_or(Err(Failed::Timeout));
    match r {
        Ok(Answer::Allow(a)) => (Outcome::Allowed, Ok(a)),
        Ok(Answer::Deny {
            status,
            headers,
            body,
        }) => {
            let keep = headers
                .into_iter()
                .filter(|(n, _)| {
                    spec.client_headers.as_ref().is_none_or(|l| listed(l, n))
                        && !framing(n)
                        && !n.as_str().starts_with("x-sift-")
                })
                .collect();
            (
                Outcome::Denied,
                Err(ProxyError::AuthDenied {
                    route: route.to_string(),
                    status,
                    headers: keep,
                    body,
                }),
            )
        }
        Err(why) => {
            tracing::warn!(route, cluster = %spec.cluster, error = %why, "external auth did not answer");
            if spec.failure_mode_allow {
                (Outcome::ErrorAllowed, Ok(Allowed::default()))
            } else {
                (
                    Outcome::ErrorDenied,
                    Err(ProxyError::AuthUnavailable {
                        route: route.to_string(),
                        status: spec.status_on_error,
                        reason: why.to_string(),
                    }),
                )
            }
        }
    }
}

/// An HTTP service's answer: 2xx allows with the listed headers.
fn http_answer(spec: &ExternalAuthSpec, status: u16, headers: &HeaderMap, body: Bytes) -> Answer {
    if !(200..300).contains(&status) {
        return Answer::Deny {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            body,
        };
    }
    let mut a = Allowed::default();
    for (n, v) in headers {
        if listed(&spec.upstream_headers, n) && !framing(n) && !n.as_str().starts_with("x-sift-") {
            // A name's first value replaces, the next ones append.
            let again = a.upstream.iter().any(|(m, _, _)| m == n);
            a.upstream.push((n.clone(), v.clone(), again));
        }
        if listed(&spec.client_headers_on_success, n) && !framing(n) {
            a.client.push((n.clone(), v.clone()));
        }
    }
    Answer::Allow(a)
}

/// Send the check and read its answer (the body up to MAX_DENIAL_BODY).
async fn exchange(
    spec: &ExternalAuthSpec,
    cluster: &Arc<Cluster>,
    client: &Client<'_>,
    request_id: &HeaderValue,
    clock: crate::clock::Clock,
) -> Result<(u16, HeaderMap, Bytes), Failed> {
    let (index, _guard) = cluster
        .pick(clock.now(), None, None)
        .ok_or(Failed::NoEndpoint)?;
    let _slot = cluster.request_slot().map_err(|_| Failed::Overload)?;
    let _conn = cluster
        .conn_slot(cluster.spec.protocol == UpstreamProtocol::Http2)
        .await
        .map_err(|_| Failed::Overload)?;
    let endpoint = &cluster.endpoints[index].endpoint;
    let mut headers = HeaderMap::new();
    for (n, v) in client.headers {
        let send = spec.request_headers.as_ref().is_none_or(|l| listed(l, n));
        if send && !framing(n) && !n.as_str().starts_with("x-forwarded-") {
            headers.append(n.clone(), v.clone());
        }
    }
    let fwd = |h: &mut HeaderMap, n: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(n), v);
        }
    };
    fwd(&mut headers, "x-forwarded-method", client.method.as_str());
    fwd(
        &mut headers,
        "x-forwarded-proto",
        if client.tls { "https" } else { "http" },
    );
    fwd(&mut headers, "x-forwarded-host", client.host);
    fwd(
        &mut headers,
        "x-forwarded-uri",
        client.uri.path_and_query().map_or("/", |p| p.as_str()),
    );
    fwd(&mut headers, "x-forwarded-for", client.ip);
    headers.insert(HeaderName::from_static("x-request-id"), request_id.clone());
    let h2 = cluster.spec.protocol == UpstreamProtocol::Http2;
    if !h2 {
        if let Ok(v) = HeaderValue::from_str(endpoint.authority.as_str()) {
            headers.insert(header::HOST, v);
        }
    }
    let client_path = client.uri.path_and_query().map_or("/", |p| p.as_str());
    let prefixed;
    let path = match (&spec.path, &spec.path_prefix) {
        (Some(p), _) => p.as_str(),
        (None, Some(pre)) => {
            prefixed = format!("{}{client_path}", pre.trim_end_matches('/'));
            prefixed.as_str()
        }
        (None, None) => client_path,
    };
    let uri = Uri::builder()
        .scheme(if cluster.spec.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        })
        .authority(endpoint.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| Failed::Send(format!("bad check URI: {e}")))?;
    let mut req = Request::new(match &client.body {
        Some((b, _)) => crate::body::full(b.clone()),
        None => crate::body::empty(),
    });
    if let Some((b, partial)) = &client.body {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
        headers.insert(
            HeaderName::from_static("x-envoy-auth-partial-body"),
            HeaderValue::from_static(if *partial { "true" } else { "false" }),
        );
    }
    *req.method_mut() = spec.method.clone().unwrap_or_else(|| client.method.clone());
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    let resp = cluster
        .exchange(index, req, clock)
        .await
        .map_err(|e| Failed::Send(e.to_string()))?;
    let status = resp.status().as_u16();
    let (parts, mut body) = resp.into_parts();
    let keep = !(200..300).contains(&status);
    let mut buf = bytes::BytesMut::new();
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| Failed::Send(format!("answer body: {e}")))?;
        // A 2xx answer's body is read to the end and dropped (the
        // connection serves again); a denial's is the client's.
        if let (true, Some(d)) = (keep, f.data_ref()) {
            if buf.len() + d.len() > MAX_DENIAL_BODY {
                return Err(Failed::BodyTooLong);
            }
            buf.extend_from_slice(d);
        }
    }
    Ok((status, parts.headers, buf.freeze()))
}

/// `Authorization/Check` to one endpoint of the cluster.
async fn exchange_grpc(
    spec: &ExternalAuthSpec,
    cluster: &Arc<Cluster>,
    client: &Client<'_>,
    request_id: &HeaderValue,
    clock: crate::clock::Clock,
) -> Result<Answer, Failed> {
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, attribute_context,
        authorization_client::AuthorizationClient, check_response::HttpResponse,
    };
    let (index, _guard) = cluster
        .pick(clock.now(), None, None)
        .ok_or(Failed::NoEndpoint)?;
    let _slot = cluster.request_slot().map_err(|_| Failed::Overload)?;
    let mut headers = std::collections::HashMap::new();
    for (n, v) in client.headers {
        let send = spec.request_headers.as_ref().is_none_or(|l| listed(l, n));
        if send && !framing(n) {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            headers
                .entry(n.as_str().to_string())
                .and_modify(|old: &mut String| {
                    old.push(',');
                    old.push_str(&v);
                })
                .or_insert(v);
        }
    }
    let path = client.uri.path_and_query().map_or("/", |p| p.as_str());
    headers.insert(":authority".into(), client.host.to_string());
    headers.insert(":method".into(), client.method.as_str().to_string());
    headers.insert(":path".into(), path.to_string());
    let request_id = String::from_utf8_lossy(request_id.as_bytes()).into_owned();
    headers.insert("x-request-id".into(), request_id.clone());
    let size = client
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(-1);
    let source = attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: client.addr.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    client.addr.port(),
                ))),
                ..Default::default()
            })),
        }),
        principal: client.identity.unwrap_or_default().to_string(),
        ..Default::default()
    };
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: request_id,
                    method: client.method.as_str().to_string(),
                    headers,
                    path: path.to_string(),
                    host: client.host.to_string(),
                    scheme: if client.tls { "https" } else { "http" }.to_string(),
                    protocol: match client.version {
                        Version::HTTP_2 => "HTTP/2",
                        Version::HTTP_10 => "HTTP/1.0",
                        _ => "HTTP/1.1",
                    }
                    .to_string(),
                    size,
                    body: match (
                        &client.body,
                        spec.with_body.as_ref().is_some_and(|w| w.pack_as_bytes),
                    ) {
                        (Some((b, _)), false) => String::from_utf8_lossy(b).into_owned(),
                        _ => String::new(),
                    },
                    raw_body: match (
                        &client.body,
                        spec.with_body.as_ref().is_some_and(|w| w.pack_as_bytes),
                    ) {
                        (Some((b, _)), true) => b.to_vec(),
                        _ => Vec::new(),
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: spec
                .context_extensions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        }),
    };
    let mut grpc = AuthorizationClient::new(crate::upstream::GrpcEndpoint {
        cluster: cluster.clone(),
        index,
    })
    .max_decoding_message_size(1 << 20);
    let resp = match grpc.check(check).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            cluster.observe(index, Observed::LocalGatewayError, clock.now());
            return Err(Failed::Send(format!(
                "gRPC {:?}: {}",
                status.code(),
                status.message()
            )));
        }
    };
    cluster.observe(index, Observed::of_status(200), clock.now());
    let code = resp.status.as_ref().map_or(0, |s| s.code);
    let pb = |h: &envoy_types::pb::envoy::config::core::v3::HeaderValueOption| {
        let hv = h.header.as_ref()?;
        let name = HeaderName::from_bytes(hv.key.to_ascii_lowercase().as_bytes()).ok()?;
        let raw = if hv.raw_value.is_empty() {
            hv.value.as_bytes()
        } else {
            hv.raw_value.as_slice()
        };
        let value = HeaderValue::from_bytes(raw).ok()?;
        Some((name, value))
    };
    match (code, resp.http_response) {
        (0, ok) => {
            let mut a = Allowed::default();
            if let Some(HttpResponse::OkResponse(ok)) = ok {
                for h in &ok.headers {
                    if let Some((n, v)) = pb(h) {
                        if framing(&n) || n.as_str().starts_with("x-sift-") {
                            continue;
                        }
                        // The deprecated `append: true` appends; else the
                        // action: ADD_IF_ABSENT adds a header the request
                        // lacks, the rest replace (in this message a
                        // header replaces by default).
                        #[allow(deprecated)]
                        let append = h.append.as_ref().is_some_and(|b| b.value);
                        if h.append_action == 1 && client.headers.contains_key(&n) {
                            continue;
                        }
                        a.upstream.push((n, v, append));
                    }
                }
                for n in &ok.headers_to_remove {
                    if let Ok(n) = HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()) {
                        if !framing(&n) && !n.as_str().starts_with(':') {
                            a.remove.push(n);
                        }
                    }
                }
                for h in &ok.response_headers_to_add {
                    if let Some((n, v)) = pb(h) {
                        if !framing(&n) {
                            a.client.push((n, v));
                        }
                    }
                }
            }
            Ok(Answer::Allow(a))
        }
        (_, Some(HttpResponse::DeniedResponse(d))) => Ok(Answer::Deny {
            status: d
                .status
                .map(|s| s.code)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (200..=599).contains(c))
                .unwrap_or(403),
            headers: d.headers.iter().filter_map(pb).collect(),
            body: Bytes::from(d.body),
        }),
        // A refusal without an answer of its own: 403, as Envoy.
        (_, _) => Ok(Answer::Deny {
            status: 403,
            headers: Vec::new(),
            body: Bytes::new(),
        }),
    }
}
