//! The one error type of the data path, and the one map from error to
//! response: status, a short text body, and an `x-sift-error` header naming
//! the cause. [`ErrorKind`] is the bounded label used in metrics.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};

/// Why sift answered a request itself instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error(
        "request headers are larger than the listener allows ({limit} bytes or {max_headers} headers)"
    )]
    HeadersTooLarge { limit: u64, max_headers: usize },
    #[error("request body is larger than the route allows ({limit} bytes)")]
    BodyTooLarge { limit: u64 },
    #[error("no route matches this request")]
    NoRoute,
    #[error("no healthy endpoint in cluster {cluster:?}")]
    NoHealthyEndpoint { cluster: String },
    #[error("cannot connect to upstream {endpoint} of cluster {cluster:?}: {reason}")]
    UpstreamConnect {
        cluster: String,
        endpoint: String,
        reason: String,
    },
    #[error("upstream did not send a response head within {0:?}")]
    UpstreamTimeout(Duration),
    /// A gRPC call's own deadline (`grpc-timeout`, honoured by the route's
    /// `grpc_timeout`) passed before the upstream answered.
    #[error(
        "the call's deadline ({0:?}, from its grpc-timeout) passed before the upstream answered"
    )]
    DeadlineExceeded(Duration),
    #[error("upstream connection failed before a response: {0}")]
    UpstreamReset(String),
    #[error("client request body failed: {0}")]
    ClientBody(String),
    /// The client sent nothing of its body for the listener's
    /// `request_body_timeout` (nginx's client_body_timeout: 408), or not
    /// all of the request within its `request_timeout` (`whole`).
    #[error("{}", if *whole { format!("client did not send its whole request within {after:?}") } else { format!("client sent nothing of its request body for {after:?}") })]
    RequestBodyTimeout { after: Duration, whole: bool },
    #[error("rate limit {policy:?} exceeded; retry in {} s", decision.retry_after)]
    RateLimited {
        policy: String,
        decision: crate::policy::ratelimit::Decision,
    },
    /// Over a limit of the route's `external_rate_limit` service.
    #[error("rate limit service: {policy:?} exceeded; retry in {} s", decision.retry_after)]
    RateLimitedRemote {
        policy: String,
        decision: crate::policy::ratelimit::Decision,
        /// The service's `response_headers_to_add`.
        headers: Vec<(http::HeaderName, HeaderValue)>,
    },
    #[error("client address {ip} may not use route {route:?}")]
    SourceDenied { route: String, ip: String },
    #[error("identity {identity:?} may not use route {route:?}")]
    IdentityDenied { route: String, identity: String },
    /// A state-changing request from another site's page (`csrf`).
    #[error("cross-site request refused on route {route:?}: {reason}")]
    CsrfDenied { route: String, reason: &'static str },
    #[error("route {route:?} needs a JWT: {reason}")]
    Jwt {
        route: String,
        reason: crate::jwt::JwtError,
    },
    #[error("route {route:?} is at max_inflight ({limit})")]
    Overloaded { route: String, limit: usize },
    #[error("route {route:?} is at its adaptive concurrency limit ({limit})")]
    AdaptiveOverloaded { route: String, limit: u32 },
    #[error("overload.{key} ({limit} bytes) reached: {what} could not hold the body")]
    BuffersFull {
        what: &'static str,
        /// `max_buffered_bytes` (memory) or `max_spooled_bytes` (disk).
        key: &'static str,
        limit: u64,
    },
    #[error("cluster {cluster:?} circuit breaker open: max {threshold} reached")]
    CircuitOpen {
        cluster: String,
        threshold: &'static str,
    },
    #[error("filter {filter:?} blocked the request ({verdict})")]
    FilterBlocked {
        filter: String,
        verdict: &'static str,
        status: u16,
        message: String,
        score: f32,
    },
    #[error("filter {filter:?}: pool saturated and on_overload is fail_closed")]
    FilterOverloaded { filter: String },
    #[error(
        "filter {filter:?}: body longer than max_inspect_bytes ({limit}) and on_oversize is reject"
    )]
    InspectTooLarge { filter: String, limit: u64 },
    #[error("filter {filter:?}: compressed body expands past {limit} bytes")]
    DecompressionLimit { filter: String, limit: u64 },
    #[error("filter {filter:?} cannot classify this body: {reason}")]
    Unclassifiable {
        filter: String,
        reason: &'static str,
    },
    #[error("global rate limit {policy:?} could not be checked: {reason}")]
    RateLimitUnavailable { policy: String, reason: String },
    #[error("fault injection aborted the request with {status}")]
    FaultAbort { status: u16 },
    #[error("external auth of route {route:?} answered {status}")]
    AuthDenied {
        route: String,
        status: u16,
        /// The service's headers the client gets.
        headers: Vec<(http::HeaderName, HeaderValue)>,
        body: Bytes,
    },
    #[error("route {route:?} needs Basic credentials: {}", if *missing { "none given" } else { "not valid" })]
    BasicAuth {
        route: String,
        missing: bool,
        /// `Basic realm="…", charset="UTF-8"`.
        challenge: HeaderValue,
    },
    #[error("external auth of route {route:?} did not answer: {reason}")]
    AuthUnavailable {
        route: String,
        status: u16,
        reason: String,
    },
    #[error("cannot spool the request body: {0}")]
    Spool(String),
    #[error("listener {0:?} was removed by a reload")]
    ListenerRemoved(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Bounded error label (metrics, `x-sift-error`, access logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    MalformedRequest,
    NotImplemented,
    HeadersTooLarge,
    BodyTooLarge,
    NoRoute,
    NoHealthyEndpoint,
    UpstreamConnectFailure,
    UpstreamTimeout,
    DeadlineExceeded,
    UpstreamReset,
    ClientBodyError,
    RequestBodyTimeout,
    RateLimited,
    Overloaded,
    CircuitOpen,
    IdentityDenied,
    SourceDenied,
    CsrfDenied,
    JwtMissing,
    JwtInvalid,
    FilterBlocked,
    FilterOverloaded,
    InspectTooLarge,
    DecompressionLimit,
    UnsupportedMediaType,
    Unclassifiable,
    SpoolFailed,
    FaultAbort,
    RateLimitUnavailable,
    AuthDenied,
    AuthUnavailable,
    BasicAuthMissing,
    BasicAuthInvalid,
    ListenerRemoved,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 35] = [
        ErrorKind::MalformedRequest,
        ErrorKind::NotImplemented,
        ErrorKind::HeadersTooLarge,
        ErrorKind::BodyTooLarge,
        ErrorKind::NoRoute,
        ErrorKind::NoHealthyEndpoint,
        ErrorKind::UpstreamConnectFailure,
        ErrorKind::UpstreamTimeout,
        ErrorKind::DeadlineExceeded,
        ErrorKind::UpstreamReset,
        ErrorKind::ClientBodyError,
        ErrorKind::RequestBodyTimeout,
        ErrorKind::RateLimited,
        ErrorKind::Overloaded,
        ErrorKind::CircuitOpen,
        ErrorKind::IdentityDenied,
        ErrorKind::SourceDenied,
        ErrorKind::CsrfDenied,
        ErrorKind::JwtMissing,
        ErrorKind::JwtInvalid,
        ErrorKind::FilterBlocked,
        ErrorKind::FilterOverloaded,
        ErrorKind::InspectTooLarge,
        ErrorKind::DecompressionLimit,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::Unclassifiable,
        ErrorKind::SpoolFailed,
        ErrorKind::FaultAbort,
        ErrorKind::RateLimitUnavailable,
        ErrorKind::AuthDenied,
        ErrorKind::AuthUnavailable,
        ErrorKind::BasicAuthMissing,
        ErrorKind::BasicAuthInvalid,
        ErrorKind::ListenerRemoved,
        ErrorKind::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MalformedRequest => "malformed-request",
            ErrorKind::NotImplemented => "not-implemented",
            ErrorKind::HeadersTooLarge => "headers-too-large",
            ErrorKind::BodyTooLarge => "body-too-large",
            ErrorKind::NoRoute => "no-route",
            ErrorKind::NoHealthyEndpoint => "no-healthy-endpoint",
            ErrorKind::UpstreamConnectFailure => "upstream-connect-failure",
            ErrorKind::UpstreamTimeout => "upstream-timeout",
            ErrorKind::DeadlineExceeded => "deadline-exceeded",
            ErrorKind::UpstreamReset => "upstream-reset",
            ErrorKind::ClientBodyError => "client-body-error",
            ErrorKind::RequestBodyTimeout => "request-body-timeout",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::CircuitOpen => "circuit-open",
            ErrorKind::IdentityDenied => "identity-denied",
            ErrorKind::SourceDenied => "source-denied",
            ErrorKind::CsrfDenied => "csrf-denied",
            ErrorKind::BasicAuthMissing => "basic-auth-missing",
            ErrorKind::BasicAuthInvalid => "basic-auth-invalid",
            ErrorKind::JwtMissing => "jwt-missing",
            ErrorKind::JwtInvalid => "jwt-invalid",
            ErrorKind::FilterBlocked => "filter-blocked",
            ErrorKind::FilterOverloaded => "filter-overloaded",
            ErrorKind::InspectTooLarge => "inspect-too-large",
            ErrorKind::DecompressionLimit => "decompression-limit",
            ErrorKind::UnsupportedMediaType => "unsupported-media-type",
            ErrorKind::Unclassifiable => "unclassifiable",
            ErrorKind::SpoolFailed => "spool-failed",
            ErrorKind::FaultAbort => "fault-abort",
            ErrorKind::RateLimitUnavailable => "ratelimit-unavailable",
            ErrorKind::AuthDenied => "auth-denied",
            ErrorKind::AuthUnavailable => "auth-unavailable",
            ErrorKind::ListenerRemoved => "listener-removed",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::MalformedRequest | ErrorKind::ClientBodyError => StatusCode::BAD_REQUEST,
            ErrorKind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::NoHealthyEndpoint
            | ErrorKind::Overloaded
            | ErrorKind::CircuitOpen
            | ErrorKind::FilterOverloaded
            | ErrorKind::RateLimitUnavailable
            | ErrorKind::ListenerRemoved => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::FilterBlocked => StatusCode::FORBIDDEN,
            ErrorKind::InspectTooLarge | ErrorKind::DecompressionLimit => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Unclassifiable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::IdentityDenied | ErrorKind::SourceDenied | ErrorKind::CsrfDenied => {
                StatusCode::FORBIDDEN
            }
            ErrorKind::JwtMissing
            | ErrorKind::JwtInvalid
            | ErrorKind::BasicAuthMissing
            | ErrorKind::BasicAuthInvalid => StatusCode::UNAUTHORIZED,
            ErrorKind::UpstreamConnectFailure | ErrorKind::UpstreamReset => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout | ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::SpoolFailed | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            // The configured status is the answer's (`to_response`).
            ErrorKind::FaultAbort => StatusCode::SERVICE_UNAVAILABLE,
            // The service's status (`to_response`).
            ErrorKind::AuthDenied => StatusCode::FORBIDDEN,
            // `status_on_error` (`to_response`).
            ErrorKind::AuthUnavailable => StatusCode::FORBIDDEN,
        }
    }
}

impl ProxyError {
    /// A failed client request body: its `request_body_timeout` (408) if
    /// that is what failed it, else a client fault (400).
    pub fn client_body(e: &(dyn std::error::Error + 'static)) -> ProxyError {
        match crate::body::BodyTimedOut::find(e) {
            Some(t) => ProxyError::RequestBodyTimeout {
                after: t.after.0,
                whole: t.whole,
            },
            None => ProxyError::ClientBody(e.to_string()),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::Malformed(_) => ErrorKind::MalformedRequest,
            ProxyError::NotImplemented(_) => ErrorKind::NotImplemented,
            ProxyError::HeadersTooLarge { .. } => ErrorKind::HeadersTooLarge,
            ProxyError::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            ProxyError::NoRoute => ErrorKind::NoRoute,
            ProxyError::NoHealthyEndpoint { .. } => ErrorKind::NoHealthyEndpoint,
            ProxyError::UpstreamConnect { .. } => ErrorKind::UpstreamConnectFailure,
            ProxyError::UpstreamTimeout(_) => ErrorKind::UpstreamTimeout,
            ProxyError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            ProxyError::UpstreamReset(_) => ErrorKind::UpstreamReset,
            ProxyError::ClientBody(_) => ErrorKind::ClientBodyError,
            ProxyError::RequestBodyTimeout { .. } => ErrorKind::RequestBodyTimeout,
            ProxyError::RateLimited { .. } | ProxyError::RateLimitedRemote { .. } => {
                ErrorKind::RateLimited
            }
            ProxyError::Overloaded { .. }
            | ProxyError::AdaptiveOverloaded { .. }
            | ProxyError::BuffersFull { .. } => ErrorKind::Overloaded,
            ProxyError::CircuitOpen { .. } => ErrorKind::CircuitOpen,
            ProxyError::IdentityDenied { .. } => ErrorKind::IdentityDenied,
            ProxyError::SourceDenied { .. } => ErrorKind::SourceDenied,
            ProxyError::CsrfDenied { .. } => ErrorKind::CsrfDenied,
            ProxyError::Jwt {
                reason: crate::jwt::JwtError::Missing,
                ..
            } => ErrorKind::JwtMissing,
            ProxyError::Jwt { .. } => ErrorKind::JwtInvalid,
            ProxyError::BasicAuth { missing: true, .. } => ErrorKind::BasicAuthMissing,
            ProxyError::BasicAuth { .. } => ErrorKind::BasicAuthInvalid,
            ProxyError::FilterBlocked { .. } => ErrorKind::FilterBlocked,
            ProxyError::FilterOverloaded { .. } => ErrorKind::FilterOverloaded,
            ProxyError::InspectTooLarge { .. } => ErrorKind::InspectTooLarge,
            ProxyError::DecompressionLimit { .. } => ErrorKind::DecompressionLimit,
            ProxyError::Unclassifiable { reason, .. } => match *reason {
                "content_type" | "encoding" => ErrorKind::UnsupportedMediaType,
                _ => ErrorKind::Unclassifiable,
            },
            ProxyError::Spool(_) => ErrorKind::SpoolFailed,
            ProxyError::FaultAbort { .. } => ErrorKind::FaultAbort,
            ProxyError::RateLimitUnavailable { .. } => ErrorKind::RateLimitUnavailable,
            ProxyError::AuthDenied { .. } => ErrorKind::AuthDenied,
            ProxyError::AuthUnavailable { .. } => ErrorKind::AuthUnavailable,
            ProxyError::ListenerRemoved(_) => ErrorKind::ListenerRemoved,
            ProxyError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The response the client sees. The body names the cause in words a
    /// client can act on; internal detail (endpoint addresses) stays in logs.
    /// The answer to a gRPC request (`grpc`: its Content-Type is
    /// `application/grpc[+…]`) is a gRPC status, as Envoy's local replies:
    /// HTTP 200 with `grpc-status` (mapped from the HTTP status by gRPC's
    /// table) and `grpc-message`, no body; headers such as `x-sift-error`,
    /// `Retry-After` and `RateLimit` stay. A gRPC client would otherwise
    /// see only "unexpected HTTP status" and lose the reason.
    pub fn to_response_for(&self, grpc: bool) -> Response<Body> {
        let resp = self.to_response();
        if !grpc {
            return resp;
        }
        let message = match self {
            ProxyError::FilterBlocked {
                message, verdict, ..
            } => format!("{message} (verdict {verdict})"),
            e => e.detail(),
        };
        // The call's own deadline is DEADLINE_EXCEEDED, not the table's
        // UNAVAILABLE for a 504: the client must not retry it.
        let code = match self {
            ProxyError::DeadlineExceeded(_) => 4,
            _ => grpc_status(resp.status()),
        };
        grpc_reply(resp, &message, code)
    }

    /// What the answer says, without internals (addresses, causes): the
    /// text body's, and a gRPC answer's `grpc-message`.
    pub fn detail(&self) -> String {
        match self {
            ProxyError::Malformed(why) => format!("malformed request: {why}"),
            ProxyError::NotImplemented(what) => format!("not implemented: {what}"),
            ProxyError::HeadersTooLarge { .. } => "request headers too large".into(),
            ProxyError::BodyTooLarge { limit } => {
                format!("request body too large (limit {limit} bytes)")
            }
            ProxyError::NoRoute => "no route for this request".into(),
            ProxyError::NoHealthyEndpoint { .. } => "no healthy upstream".into(),
            ProxyError::UpstreamConnect { .. } => "upstream connection failed".into(),
            ProxyError::UpstreamTimeout(_) => "upstream timed out".into(),
            ProxyError::DeadlineExceeded(_) => "deadline exceeded".into(),
            ProxyError::UpstreamReset(_) => "upstream reset the connection".into(),
            ProxyError::ClientBody(_) => "request body could not be read".into(),
            ProxyError::RequestBodyTimeout {
                after,
                whole: false,
            } => format!(
                "request body timed out (nothing received for {})",
                crate::config::units::Dur(*after)
            ),
            ProxyError::RequestBodyTimeout { after, whole: true } => format!(
                "request timed out (not received within {})",
                crate::config::units::Dur(*after)
            ),
            ProxyError::RateLimited { policy, .. }
            | ProxyError::RateLimitedRemote { policy, .. } => {
                format!("rate limit {policy} exceeded")
            }
            ProxyError::Overloaded { .. }
            | ProxyError::AdaptiveOverloaded { .. }
            | ProxyError::BuffersFull { .. } => "overloaded, retry later".into(),
            ProxyError::CircuitOpen { .. } => "upstream circuit open, retry later".into(),
            ProxyError::IdentityDenied { .. } => "caller identity not allowed on this route".into(),
            ProxyError::SourceDenied { .. } => "client address not allowed on this route".into(),
            ProxyError::CsrfDenied { reason, .. } => {
                format!("cross-site request refused ({reason})")
            }
            ProxyError::Jwt { reason, .. } => format!("unauthorized: {reason}"),
            ProxyError::BasicAuth { missing: true, .. } => {
                "unauthorized: credentials required".into()
            }
            ProxyError::BasicAuth { .. } => "unauthorized: wrong user name or password".into(),
            ProxyError::FilterBlocked { message, .. } => message.clone(),
            ProxyError::FilterOverloaded { .. } => "request filter overloaded, retry later".into(),
            ProxyError::InspectTooLarge { limit, .. } => {
                format!("request body too large to inspect (limit {limit} bytes)")
            }
            ProxyError::DecompressionLimit { limit, .. } => {
                format!("compressed request body expands past {limit} bytes")
            }
            ProxyError::Unclassifiable { reason, .. } => {
                format!("body cannot be classified ({reason})")
            }
            ProxyError::Spool(_) => "request body could not be buffered".into(),
            ProxyError::FaultAbort { .. } => "fault filter abort".into(),
            ProxyError::RateLimitUnavailable { .. } => {
                "rate limit service unavailable, retry later".into()
            }
            ProxyError::AuthDenied { .. } => "denied by the authorization service".into(),
            ProxyError::AuthUnavailable { .. } => "authorization service unavailable".into(),
            ProxyError::ListenerRemoved(_) => "listener removed, retry".into(),
            ProxyError::Internal(_) => "internal error".into(),
        }
    }

    /// [`ProxyError::to_response_for`], then shaped by the config's
    /// `local_replies` (not for gRPC calls, whose answer is a status):
    /// the first mapper for this error or status gives its status,
    /// Content-Type and body; otherwise `format: json` gives a JSON body.
    /// Headers (x-sift-error, Retry-After, RateLimit) stay.
    pub fn local_reply(
        &self,
        grpc: bool,
        replies: &crate::config::model::LocalReplies,
        request_id: Option<&HeaderValue>,
    ) -> Response<Body> {
        let resp = self.to_response_for(grpc);
        if grpc {
            return resp;
        }
        let kind = self.kind().as_str();
        let status = resp.status().as_u16();
        let mapper = replies.mappers.iter().find(|m| {
            (m.errors.is_empty() || m.errors.iter().any(|k| k == kind))
                && (m.statuses.is_empty() || m.statuses.contains(&status))
        });
        let json = replies.format == crate::config::file::ReplyFormat::Json;
        if mapper.is_none() && !json {
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        let message = self.detail();
        let id = request_id.map_or(String::new(), |v| {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        });
        if let Some(s) = mapper
            .and_then(|m| m.status)
            .and_then(|s| StatusCode::from_u16(s).ok())
        {
            parts.status = s;
        }
        let code = parts.status.as_u16();
        let template = mapper.and_then(|m| m.body.as_deref());
        let content_type = mapper.and_then(|m| m.content_type.clone());
        let new_body = match template {
            Some(t) => {
                let ct = content_type.as_ref().map_or(String::new(), |v| {
                    String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase()
                });
                let esc: fn(&str) -> String = if ct.contains("json") {
                    |v| {
                        let s = serde_json::Value::from(v).to_string();
                        s[1..s.len() - 1].to_string()
                    }
                } else if ct.contains("html") || ct.contains("xml") {
                    html_escape
                } else {
                    str::to_string
                };
                Some(
                    t.replace("%RESPONSE_CODE%", &code.to_string())
                        .replace("%ERROR%", &esc(kind))
                        .replace("%MESSAGE%", &esc(&message))
                        .replace("%REQUEST_ID%", &esc(&id)),
                )
            }
            // A filter's block answer is JSON already.
            None if json
                && !matches!(
                    self,
                    ProxyError::FilterBlocked { .. } | ProxyError::AuthDenied { .. }
                ) =>
            {
                Some(format!(
                    "{}\n",
                    serde_json::json!({
                        "error": kind,
                        "status": code,
                        "message": message,
                        "request_id": id,
                    })
                ))
            }
            None => None,
        };
        let Some(text) = new_body else {
            if let Some(ct) = content_type {
                parts.headers.insert(header::CONTENT_TYPE, ct);
            }
            return Response::from_parts(parts, body);
        };
        let ct = content_type.unwrap_or_else(|| {
            HeaderValue::from_static(if template.is_some() {
                "text/plain; charset=utf-8"
            } else {
                "application/json"
            })
        });
        parts.headers.insert(header::CONTENT_TYPE, ct);
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, body::full(Bytes::from(text)))
    }

    pub fn to_response(&self) -> Response<Body> {
        let kind = self.kind();
        // The authorization service's own answer, relayed.
        if let ProxyError::AuthDenied {
            status,
            headers,
            body,
            ..
        } = self
        {
            let mut resp = Response::new(body::full(body.clone()));
            *resp.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN);
            let h = resp.headers_mut();
            for (k, v) in headers {
                h.append(k.clone(), v.clone());
            }
            h.insert("x-sift-error", HeaderValue::from_static(kind.as_str()));
            return resp;
        }
        if let ProxyError::FilterBlocked {
            filter,
            verdict,
            status,
            message,
            score,
        } = self
        {
            let body = serde_json::json!({
                "error": kind.as_str(),
                "message": message,
                "filter": filter,
                "verdict": verdict,
                "score": crate::filter::short_f64(*score),
            });
            let mut resp = Response::new(body::full(Bytes::from(format!("{body}\n"))));
            *resp.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN);
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("x-sift-error", HeaderValue::from_static(kind.as_str()));
            return resp;
        }
        let status = match self {
            ProxyError::FaultAbort { status } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ProxyError::AuthUnavailable { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN)
            }
            _ => kind.status(),
        };
        let detail = self.detail();
        let text = format!("{} {detail}\n", status.as_u16());
        let mut resp = Response::new(body::full(Bytes::from(text)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert("x-sift-error", HeaderValue::from_static(kind.as_str()));
        // RFC 6750 §3: the challenge, with the reason for a bad token.
        if let ProxyError::BasicAuth { challenge, .. } = self {
            h.insert(header::WWW_AUTHENTICATE, challenge.clone());
        }
        if let ProxyError::Jwt { reason, .. } = self {
            let v = match reason {
                crate::jwt::JwtError::Missing => "Bearer realm=\"sift\"".to_string(),
                r => format!(
                    "Bearer realm=\"sift\", error=\"invalid_token\", error_description=\"{r}\""
                ),
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if let ProxyError::RateLimited { policy, decision }
        | ProxyError::RateLimitedRemote {
            policy, decision, ..
        } = self
        {
            for (k, v) in ratelimit_headers(policy, decision) {
                h.insert(k, v);
            }
            if let Ok(v) = HeaderValue::from_str(&decision.retry_after.to_string()) {
                h.insert(header::RETRY_AFTER, v);
            }
        }
        // The service's own headers for the client (not its framing or
        // sift's own error headers: the body is sift's).
        if let ProxyError::RateLimitedRemote { headers, .. } = self {
            for (k, v) in headers {
                if k != header::CONTENT_TYPE && k.as_str() != "x-sift-error" {
                    h.insert(k.clone(), v.clone());
                }
            }
        }
        resp
    }
}

/// gRPC's HTTP-to-status table (doc/http-grpc-status-mapping.md, as Envoy).
pub fn grpc_status(http: StatusCode) -> u8 {
    match http.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// The request is gRPC (not gRPC-Web, whose answers carry trailers in the
/// body): `application/grpc`, `application/grpc+proto`, ...
pub fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// `grpc-message` value: percent-encoded outside printable ASCII and `%`
/// (gRPC's PROTOCOL-HTTP2 spec).
fn grpc_message(m: &str) -> HeaderValue {
    let mut out = String::with_capacity(m.len());
    for &b in m.trim_end().as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Turn a local answer into a gRPC trailers-only reply.
fn grpc_reply(resp: Response<Body>, message: &str, code: u8) -> Response<Body> {
    let (mut parts, _) = resp.into_parts();
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    h.insert("grpc-message", grpc_message(message));
    Response::from_parts(parts, body::empty())
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers)
/// for one policy's decision: `"name";q=QUOTA;w=WINDOW` and
/// `"name";r=REMAINING;t=SECONDS` (t: until a request is allowed again when
/// denied, until the bucket is full when allowed).
pub fn ratelimit_headers(
    policy: &str,
    d: &crate::policy::ratelimit::Decision,
) -> [(http::HeaderName, HeaderValue); 2] {
    // Structured Field integers have at most 15 digits (RFC 9651 §3.3.1);
    // a larger one would make the client's parser drop the whole field.
    let sf = |n: u64| n.min(999_999_999_999_999);
    let t = sf(if d.allowed { d.reset } else { d.retry_after });
    let name = policy.replace(['"', '\\'], "");
    let pol = HeaderValue::from_str(&format!("\"{name}\";q={};w={}", sf(d.quota), sf(d.window)))
        .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""));
    let cur = HeaderValue::from_str(&format!("\"{name}\";r={};t={t}", sf(d.remaining)))
        .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""));
    [
        (http::HeaderName::from_static("ratelimit-policy"), pol),
        (http::HeaderName::from_static("ratelimit"), cur),
    ]
}

/// `s` with HTML's five special characters escaped.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_told_in_grpc_status() {
        let ct = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_grpc(&h)
        };
        assert!(ct("application/grpc"));
        assert!(ct("application/grpc+proto"));
        assert!(ct("Application/GRPC;charset=utf-8"));
        assert!(!ct("application/grpc-web"));
        assert!(!ct("application/grpc-web+proto"));
        assert!(!ct("application/json"));
        assert!(!is_grpc(&http::HeaderMap::new()));
        for (http, grpc) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (413, 2),
            (500, 2),
        ] {
            assert_eq!(
                grpc_status(StatusCode::from_u16(http).unwrap()),
                grpc,
                "{http}"
            );
        }
        assert_eq!(grpc_message("50% off ünd\n"), "50%25 off %C3%BCnd");
        let r = ProxyError::NoRoute.to_response_for(true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "12");
        assert_eq!(r.headers()["grpc-message"], "no route for this request");
        assert_eq!(r.headers()["x-sift-error"], "no-route");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert!(http_body::Body::is_end_stream(r.body()));
        let plain = ProxyError::NoRoute.to_response_for(false);
        assert_eq!(plain.status(), 404);
    }
}
