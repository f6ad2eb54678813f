//! Envoy's HTTP ext_authz (`http_service`; Istio's `envoyExtAuthzHttp`):
//! Envoy sends the client request's head (and body, with
//! `with_request_body`) as a request of its own. 200 admits it: the
//! answer's headers carry what the upstream request gets (Envoy's
//! `allowed_upstream_headers`), the client's answer headers
//! (`allowed_client_headers_on_success`) and, in
//! `x-envoy-auth-headers-to-remove`, what the upstream must not see. Any
//! other answer is sent to the client as it is.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};

use crate::error::ProxyError;
use crate::proxy::ConnInfo;
use crate::state::Shared;

static HEADERS_TO_REMOVE: http::HeaderName =
    http::HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// Serve one HTTP ext_authz check.
pub async fn serve(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<hyper::body::Incoming>,
) -> Response<crate::body::Body> {
    let count = |decision: &str| {
        shared
            .metrics
            .envoy_checks
            .with_label_values(&[&*conn.listener, "ext_authz_http", decision])
            .inc();
    };
    let start = std::time::Instant::now();
    let (parts, mut body) = req.into_parts();
    let mut head_req = Request::from_parts(parts, ());
    let partial = head_req
        .headers_mut()
        .remove("x-envoy-auth-partial-body")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    // The client's identity, as Envoy forwards it (XFCC): this listener
    // takes its caller's word, as for the gRPC calls' principal.
    let principal = crate::field::joined(head_req.headers(), "x-forwarded-client-cert")
        .and_then(|v| xfcc_uri(&String::from_utf8_lossy(&v)))
        .unwrap_or_default();
    let client = super::client_conn(&conn, None, &principal);
    let grpc = crate::error::is_grpc(head_req.headers());
    let snap = shared.snapshot.load_full();
    let result = match super::admit_head(&shared, &snap, &client, &mut head_req, grpc).await {
        Ok(head) => {
            // The body, as far as a filter reads it (an answer route's
            // filter reads it all, up to the route's limit).
            let data = if head.wants_body {
                let cap = if head.route.answer.is_some() {
                    head.body_limit
                } else {
                    head.inspect_cap
                };
                let limit = snap.config.overload.max_buffered_bytes;
                let mut res = shared.budget.reservation(limit);
                match crate::filter::chain::hold(&mut body, cap, head.body_limit, &mut res).await {
                    Ok(h) if h.starved => {
                        shared.budget.deny(crate::budget::Use::Filter);
                        let e = ProxyError::BuffersFull {
                            what: "the filters",
                            key: "max_buffered_bytes",
                            limit: limit.unwrap_or(u64::MAX),
                        };
                        Err(super::deny_error(&shared, e, grpc, head.route))
                    }
                    // Held to the end of the check.
                    Ok(h) => Ok((h.data, h.complete && !partial, res)),
                    Err(e) => Err(super::deny_error(&shared, e, grpc, head.route)),
                }
            } else {
                Ok((Bytes::new(), true, shared.budget.reservation(None)))
            };
            match data {
                Ok((data, complete, _held)) => {
                    super::admit_body(&shared, head, data, complete, grpc).await
                }
                Err(d) => Err(d),
            }
        }
        Err(d) => Err(d),
    };
    super::log_check(
        &shared,
        "ext_authz_http",
        &client,
        &head_req,
        result.as_ref().map_err(|d| &**d),
        start,
    );
    match result {
        Ok(a) => {
            count("allowed");
            let mut resp = Response::new(crate::body::empty());
            let h = resp.headers_mut();
            for (k, v) in a.set.iter().chain(a.response.iter()) {
                h.insert(k.clone(), v.clone());
            }
            if !a.remove.is_empty() {
                let names: Vec<&str> = a.remove.iter().map(|k| k.as_str()).collect();
                if let Ok(v) = HeaderValue::from_str(&names.join(",")) {
                    h.insert(HEADERS_TO_REMOVE.clone(), v);
                }
            }
            resp
        }
        Err(d) => {
            count("denied");
            d.response.map(crate::body::full)
        }
    }
}

/// The URI of the last element of an XFCC header (the hop closest to
/// sift: the client of the Envoy that calls).
fn xfcc_uri(v: &str) -> Option<String> {
    let last = v.rsplit(',').next()?;
    last.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("uri")
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}
