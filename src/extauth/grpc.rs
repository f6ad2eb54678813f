//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's
//! `envoyExtAuthzGrpc`) external authorization over gRPC.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap as PbHeaderMap, HeaderValue as PbHeaderValue, HeaderValueOption, address,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    authorization_server::{Authorization, AuthorizationServer},
    check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};

use super::{Allowed, Denied};
use crate::proxy::ConnInfo;
use crate::state::Shared;

/// gRPC's OK and PERMISSION_DENIED codes.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

struct Checker {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

/// Serve one gRPC call to the Authorization service.
pub async fn serve(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<hyper::body::Incoming>,
) -> Response<crate::body::Body> {
    let max = max_message(&shared);
    let svc = AuthorizationServer::new(Checker { shared, conn })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    super::call_grpc(svc, req).await
}

/// The largest message a call may carry: the largest route body limit,
/// and room for the headers (Envoy sends the body inside the message).
pub(super) fn max_message(shared: &Shared) -> usize {
    let snap = shared.snapshot.load();
    let body = snap
        .routes
        .iter()
        .map(|r| r.spec.max_request_body.0)
        .max()
        .unwrap_or(0);
    usize::try_from(body.saturating_add(1 << 20)).unwrap_or(usize::MAX)
}

#[tonic::async_trait]
impl Authorization for Checker {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        check(&self.shared, &self.conn, request.into_inner())
            .await
            .map(tonic::Response::new)
    }
}

/// Answer one check from Envoy arriving on the envoy listener `conn`.
pub async fn check(
    shared: &Shared,
    listener: &ConnInfo,
    request: CheckRequest,
) -> Result<CheckResponse, tonic::Status> {
    let api = "ext_authz_grpc";
    let start = std::time::Instant::now();
    let count = |decision: &str| {
        shared
            .metrics
            .envoy_checks
            .with_label_values(&[&*listener.listener, api, decision])
            .inc();
    };
    let attrs = request.attributes.unwrap_or_default();
    let Some(http) = attrs.request.and_then(|r| r.http) else {
        count("error");
        return Err(tonic::Status::invalid_argument(
            "CheckRequest has no attributes.request.http",
        ));
    };
    let source = attrs.source.unwrap_or_default();
    let conn = super::client_conn(
        listener,
        source.address.as_ref().and_then(socket_addr),
        &source.principal,
    );
    let mut req = match request_head(
        &http.method,
        &http.path,
        &http.host,
        &http.headers,
        &http.header_map,
    ) {
        Ok(r) => r,
        Err(why) => {
            count("error");
            return Err(tonic::Status::invalid_argument(why));
        }
    };
    let partial = req
        .headers_mut()
        .remove("x-envoy-auth-partial-body")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let body = if http.raw_body.is_empty() {
        Bytes::from(http.body.into_bytes())
    } else {
        Bytes::from(http.raw_body)
    };
    let complete = !partial && whole_body(req.headers(), http.size, body.len());
    let grpc = crate::error::is_grpc(req.headers());
    let snap = shared.snapshot.load_full();
    let result = match super::admit_head(shared, &snap, &conn, &mut req, grpc).await {
        // The body the filters read is held to the end of the check, within
        // overload.max_buffered_bytes (without filters the check is quick).
        Ok(head) if head.wants_body => {
            let mut held = shared
                .budget
                .reservation(snap.config.overload.max_buffered_bytes);
            if super::hold_body(shared, &mut held, body.len()) {
                super::admit_body(shared, head, body, complete, grpc).await
            } else {
                Err(super::buffers_full(shared, grpc, head.route))
            }
        }
        Ok(head) => super::admit_body(shared, head, body, complete, grpc).await,
        Err(d) => Err(d),
    };
    super::log_check(
        shared,
        api,
        &conn,
        &req,
        result.as_ref().map_err(|d| &**d),
        start,
    );
    Ok(match result {
        Ok(a) => {
            count("allowed");
            allowed_response(a)
        }
        Err(d) => {
            count("denied");
            denied_response(*d)
        }
    })
}

/// The client request's head from Envoy's attributes: method, path (with
/// query), headers (pseudo-headers left out), Host from `host` when the
/// headers have none.
pub(super) fn request_head(
    method: &str,
    path: &str,
    host: &str,
    headers: &std::collections::HashMap<String, String>,
    header_map: &Option<PbHeaderMap>,
) -> Result<Request<()>, String> {
    let mut req = Request::new(());
    *req.method_mut() =
        Method::from_bytes(method.as_bytes()).map_err(|_| format!("bad method {method:?}"))?;
    let path = if path.is_empty() { "/" } else { path };
    // Envoy sends origin-form targets (or `*`): anything else, or a
    // fragment the URI parser would drop, is not a request Envoy forwards.
    if !(path.starts_with('/') || path == "*") || path.contains('#') {
        return Err(format!("bad path {path:?}"));
    }
    *req.uri_mut() = http::uri::PathAndQuery::try_from(path)
        .map_err(|_| format!("bad path {path:?}"))?
        .as_str()
        .parse()
        .map_err(|_| format!("bad path {path:?}"))?;
    *req.headers_mut() = header_map_from(headers, header_map)?;
    if !req.headers().contains_key(http::header::HOST) && !host.is_empty() {
        let v = HeaderValue::from_str(host).map_err(|_| format!("bad host {host:?}"))?;
        req.headers_mut().insert(http::header::HOST, v);
    }
    Ok(req)
}

/// Envoy's headers: `header_map` (raw values, repeated names kept) when
/// it sends one, else the `headers` map; `:authority` becomes Host.
pub(super) fn header_map_from(
    headers: &std::collections::HashMap<String, String>,
    header_map: &Option<PbHeaderMap>,
) -> Result<HeaderMap, String> {
    let mut out = HeaderMap::new();
    let mut put = |k: &str, v: &[u8]| -> Result<(), String> {
        let k = match k {
            ":authority" => "host",
            k if k.starts_with(':') => return Ok(()),
            k => k,
        };
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("bad header name {k:?}"))?;
        let value =
            HeaderValue::from_bytes(v).map_err(|_| format!("bad value for header {k:?}"))?;
        if name == http::header::HOST {
            out.insert(name, value);
        } else {
            out.append(name, value);
        }
        Ok(())
    };
    match header_map {
        Some(m) if !m.headers.is_empty() => {
            for h in &m.headers {
                let v = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                put(&h.key.to_ascii_lowercase(), v)?;
            }
        }
        _ => {
            for (k, v) in headers {
                put(&k.to_ascii_lowercase(), v.as_bytes())?;
            }
        }
    }
    Ok(out)
}

/// Whether Envoy sent all of the body: `size` is the request's length
/// (-1: unknown), and a body whose length is not known was sent whole
/// unless Envoy marked it partial.
pub(super) fn whole_body(h: &HeaderMap, size: i64, got: usize) -> bool {
    let declared = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    match (declared, u64::try_from(size)) {
        (Some(n), _) => got as u64 >= n,
        (None, Ok(n)) if n > 0 => got as u64 >= n,
        // No length: a chunked body Envoy did not send at all is unread.
        (None, _) => got > 0 || !h.contains_key(http::header::TRANSFER_ENCODING),
    }
}

fn socket_addr(a: &envoy_types::pb::envoy::config::core::v3::Address) -> Option<SocketAddr> {
    match a.address.as_ref()? {
        address::Address::SocketAddress(s) => {
            let port = match s.port_specifier.as_ref()? {
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p) => {
                    u16::try_from(*p).ok()?
                }
                _ => return None,
            };
            let ip: std::net::IpAddr = s.address.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        }
        _ => None,
    }
}

/// One header for Envoy to set, replacing any of its name.
pub(super) fn pb_header(k: &HeaderName, v: &HeaderValue) -> HeaderValueOption {
    let (value, raw_value) = match v.to_str() {
        Ok(s) => (s.to_owned(), Vec::new()),
        Err(_) => (String::new(), v.as_bytes().to_vec()),
    };
    HeaderValueOption {
        header: Some(PbHeaderValue {
            key: k.as_str().to_owned(),
            value,
            raw_value,
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn allowed_response(a: Allowed) -> CheckResponse {
    let mut headers_to_remove: Vec<String> =
        a.remove.iter().map(|k| k.as_str().to_owned()).collect();
    headers_to_remove.dedup();
    CheckResponse {
        status: Some(RpcStatus {
            code: OK,
            ..Default::default()
        }),
        dynamic_metadata: Some(metadata(&a.route, &a.summary)),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: a.set.iter().map(|(k, v)| pb_header(k, v)).collect(),
            headers_to_remove,
            response_headers_to_add: a.response.iter().map(|(k, v)| pb_header(k, v)).collect(),
            ..Default::default()
        })),
    }
}

fn denied_response(d: Denied) -> CheckResponse {
    let (parts, body) = d.response.into_parts();
    CheckResponse {
        status: Some(RpcStatus {
            code: PERMISSION_DENIED,
            message: d.kind.map_or("answered by sift", |k| k.as_str()).to_owned(),
            ..Default::default()
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(parts.status.as_u16()),
            }),
            headers: parts.headers.iter().map(|(k, v)| pb_header(k, v)).collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })),
    }
}

/// What Envoy may log or match on: the route, and each filter's verdict
/// (`filter=verdict(score)`), under the filter's namespace.
fn metadata(route: &str, summary: &[String]) -> Struct {
    let s = |v: String| Value {
        kind: Some(Kind::StringValue(v)),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("route".to_owned(), s(route.to_owned()));
    if !summary.is_empty() {
        fields.insert("filters".to_owned(), s(summary.join(" ")));
    }
    Struct {
        fields: fields.into_iter().collect(),
    }
}
