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
    /// Fixed path and query of the check; None: the client's.
    pub path: Option<String>,
    /// None: the client's method.
    #[serde(serialize_with = "ser_method")]
    pub method: Option<Method>,
    pub timeout: Dur,
    /// None: every client header (but hop-by-hop and framing ones).
    #[serde(serialize_with = "ser_opt_names")]
    pub request_headers: Option<Vec<HeaderName>>,
    #[serde(serialize_with = "ser_names")]
    pub upstream_headers: Vec<HeaderName>,
    /// None: every header of the denial (but hop-by-hop and framing ones).
    #[serde(serialize_with = "ser_opt_names")]
    pub client_headers: Option<Vec<HeaderName>>,
    #[serde(serialize_with = "ser_names")]
    pub client_headers_on_success: Vec<HeaderName>,
    pub failure_mode_allow: bool,
    pub status_on_error: u16,
}

fn ser_method<S: serde::Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(m.as_str()),
        None => s.serialize_str("original"),
    }
}

fn ser_names<S: serde::Serializer>(n: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(n.iter().map(HeaderName::as_str))
}

fn ser_opt_names<S: serde::Serializer>(
    n: &Option<Vec<HeaderName>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match n {
        Some(n) => s.collect_seq(n.iter().map(HeaderName::as_str)),
        None => s.serialize_str("all"),
    }
}

/// What a 2xx answer adds: headers for the upstream request, headers for
/// the client's response.
#[derive(Debug, Default)]
pub struct Allowed {
    pub upstream: Vec<(HeaderName, HeaderValue)>,
    pub client: Vec<(HeaderName, HeaderValue)>,
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
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub host: &'a str,
    pub tls: bool,
    pub ip: &'a str,
    pub headers: &'a HeaderMap,
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
    let r = tokio::time::timeout(
        spec.timeout.0,
        exchange(spec, cluster, client, request_id, clock),
    )
    .await
    .unwrap_or(Err(Failed::Timeout));
    match r {
        Ok((status, headers, body)) if (200..300).contains(&status) => {
            let mut a = Allowed::default();
            for n in &spec.upstream_headers {
                for v in headers.get_all(n) {
                    a.upstream.push((n.clone(), v.clone()));
                }
            }
            for n in &spec.client_headers_on_success {
                for v in headers.get_all(n) {
                    a.client.push((n.clone(), v.clone()));
                }
            }
            drop(body);
            (Outcome::Allowed, Ok(a))
        }
        Ok((status, headers, body)) => {
            let mut keep = Vec::new();
            for (n, v) in &headers {
                let listed = spec.client_headers.as_ref().is_none_or(|l| l.contains(n));
                if listed && !framing(n) && !n.as_str().starts_with("x-sift-") {
                    keep.push((n.clone(), v.clone()));
                }
            }
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
    let _conn = cluster.conn_slot().await.map_err(|_| Failed::Overload)?;
    let endpoint = &cluster.endpoints[index].endpoint;
    let mut headers = HeaderMap::new();
    for (n, v) in client.headers {
        let listed = spec.request_headers.as_ref().is_none_or(|l| l.contains(n));
        if listed && !framing(n) && !n.as_str().starts_with("x-forwarded-") {
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
    let path = match &spec.path {
        Some(p) => p.as_str(),
        None => client.uri.path_and_query().map_or("/", |p| p.as_str()),
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
    let mut req = Request::new(crate::body::empty());
    *req.method_mut() = spec.method.clone().unwrap_or_else(|| client.method.clone());
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    let resp = match cluster.send(index, req).await {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, crate::upstream::SendError::Connect(_)) {
                cluster.metrics.connect_errors.inc();
            }
            cluster.observe(index, Observed::LocalGatewayError, clock.now());
            return Err(Failed::Send(e.to_string()));
        }
    };
    let status = resp.status().as_u16();
    cluster.observe(index, Observed::of_status(status), clock.now());
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
