//! The Istio mode end to end: a real sift process with a `serve: envoy`
//! listener, called as Envoy calls it, over real gRPC (tonic clients of
//! Envoy's own protos, from envoy-types) and plain HTTP on loopback; the
//! shipped spam model judging real SMS texts (../shared/data, in place).

mod support;

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap as PbHeaderMap, HeaderValue as PbHeaderValue, SocketAddress, address,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    external_processor_client::ExternalProcessorClient, processing_request::Request as In,
    processing_response::Response as Out,
};
use support::*;

/// A spam and a ham text from the SMS Spam Collection that the shipped
/// model gets right with a margin.
fn examples() -> (String, String) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/spam/sms/SMSSpamCollection"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut spam = None;
    let mut ham = None;
    for line in text.lines() {
        let Some((label, t)) = line.split_once('\t') else {
            continue;
        };
        if t.len() < 80 {
            continue;
        }
        match label {
            "spam" if spam.is_none() && t.contains("prize") && t.contains("claim") => {
                spam = Some(t.to_string())
            }
            "ham" if ham.is_none() && t.contains("tomorrow") && !t.contains("free") => {
                ham = Some(t.to_string())
            }
            _ => {}
        }
    }
    (spam.expect("a spam text"), ham.expect("a ham text"))
}

const CONFIG: &str = r#"log: { format: json, access_log: true }
admin: { address: "127.0.0.1:0" }
listeners:
  - name: authz
    address: "127.0.0.1:0"
    serve: envoy
    path_parameters: strip
    forwarded: { trusted_hops: 0 }
filters:
  - { name: spam, kind: spam }
routes:
  - name: inbox
    match: { path: { prefix: /submit } }
    filters: [ { filter: spam, mode: block, max_inspect_bytes: 4KiB, on_oversize: reject } ]
  - name: notes
    match: { path: { prefix: /notes } }
    filters: [ { filter: spam, mode: annotate } ]
    cors: { allow_origins: ["https://web.example"], allow_methods: [GET, POST] }
    rate_limits:
      - { name: per-ip, requests_per_unit: 3, unit: minute, key: [client_ip], response_headers: true }
  - name: admin
    match: { path: { prefix: /admin } }
    allowed_identities: [ { namespace: td.example/ops } ]
  - name: moved
    match: { path: { exact: /old } }
    redirect: { path: /new, code: 308 }
  - name: classify
    match: { path: { exact: /classify } }
    answer: spam
  - name: rest
"#;

fn check(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    peer: Option<(&str, &str)>,
) -> CheckRequest {
    let mut h: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.insert(":authority".into(), "app.example".into());
    h.insert(":method".into(), method.into());
    h.insert(":path".into(), path.into());
    if !body.is_empty() {
        h.insert("content-length".into(), body.len().to_string());
    }
    let source = peer.map(|(ip, principal)| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(40000)),
                ..Default::default()
            })),
        }),
        principal: principal.into(),
        ..Default::default()
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "app.example".into(),
                    headers: h,
                    size: body.len() as i64,
                    raw_body: body.as_bytes().to_vec(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Allowed: (headers set, headers removed, response headers added).
type Ok3 = (
    HashMap<String, String>,
    Vec<String>,
    HashMap<String, String>,
);

fn allowed(r: &CheckResponse) -> Ok3 {
    assert_eq!(r.status.as_ref().map(|s| s.code), Some(0), "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("not an OK response: {r:?}");
    };
    let hv = |v: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        v.iter()
            .filter_map(|o| o.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect::<HashMap<_, _>>()
    };
    (
        hv(&ok.headers),
        ok.headers_to_remove.clone(),
        hv(&ok.response_headers_to_add),
    )
}

/// Denied: (HTTP status, headers, body).
fn denied(r: &CheckResponse) -> (u32, HashMap<String, String>, String) {
    assert_eq!(r.status.as_ref().map(|s| s.code), Some(7), "{r:?}");
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not a denial: {r:?}");
    };
    let headers = d
        .headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    (
        d.status.as_ref().map_or(0, |s| s.code as u32),
        headers,
        d.body.clone(),
    )
}

/// A gRPC frame of bytes that decode to no message, POSTed to `method`
/// on the envoy listener: the answer's grpc-status.
async fn garbage_call(sift: &Sift, method: &str) -> Option<String> {
    let garbage: &[u8] = &[0, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let req = http::Request::post(format!("http://{}/{method}", sift.listeners["authz"]))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(garbage.to_vec()))
        .unwrap();
    let resp = http2_client().request(req).await.expect("an answer");
    let (parts, body) = resp.into_parts();
    let collected = http_body_util::BodyExt::collect(body).await.expect("body");
    parts
        .headers
        .get("grpc-status")
        .or_else(|| collected.trailers().and_then(|t| t.get("grpc-status")))
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn authz_client(sift: &Sift) -> AuthorizationClient<tonic::transport::Channel> {
    let url = format!("http://{}", sift.listeners["authz"]);
    AuthorizationClient::connect(url).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn ext_authz_grpc_runs_the_routes_admission_and_filters() {
    let (spam, ham) = examples();
    let sift = Sift::start(CONFIG);
    let mut c = authz_client(&sift).await;
    let ask = |req: CheckRequest| {
        let mut c = c.clone();
        async move { c.check(req).await.expect("check answered").into_inner() }
    };

    // Block mode: spam stopped with the filter's answer, ham admitted.
    let r = ask(check(
        "POST",
        "/submit",
        &[("content-type", "text/plain")],
        &spam,
        None,
    ))
    .await;
    let (status, headers, body) = denied(&r);
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        headers.get("x-sift-error").map(String::as_str),
        Some("filter-blocked")
    );
    assert!(body.contains("spam"), "{body}");
    let r = ask(check(
        "POST",
        "/submit",
        &[("content-type", "text/plain")],
        &ham,
        None,
    ))
    .await;
    let (set, _, _) = allowed(&r);
    assert_eq!(
        set.get("x-sift-spam-verdict").map(String::as_str),
        Some("ham"),
        "{set:?}"
    );
    let meta = format!("{:?}", r.dynamic_metadata);
    assert!(
        meta.contains("inbox") && meta.contains("spam=ham"),
        "{meta}"
    );

    // A prefix of a body longer than the filter reads, sent partial by
    // Envoy: on_oversize: reject answers 413.
    let long = spam.repeat(80);
    let mut req = check(
        "POST",
        "/submit",
        &[("content-type", "text/plain")],
        &long[..8192],
        None,
    );
    if let Some(h) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        h.headers
            .insert("content-length".into(), long.len().to_string());
        h.headers
            .insert("x-envoy-auth-partial-body".into(), "true".into());
        h.size = long.len() as i64;
    }
    let (status, headers, _) = denied(&ask(req).await);
    assert_eq!(status, 413);
    assert_eq!(
        headers.get("x-sift-error").map(String::as_str),
        Some("inspect-too-large")
    );

    // Annotate mode: the verdict headers for the upstream; a client's own
    // x-sift-* and underscored names are removed, a spoofed verdict
    // replaced; the rate limit's headers go to the client.
    let spoof = [
        ("content-type", "text/plain"),
        ("x-sift-spam-verdict", "ham"),
        ("x-sift-cluster", "vip"),
        ("x_user", "admin"),
    ];
    let peer = Some(("198.51.100.7", ""));
    let r = ask(check("POST", "/notes/1", &spoof, &spam, peer)).await;
    let (set, removed, resp) = allowed(&r);
    assert_eq!(
        set.get("x-sift-spam-verdict").map(String::as_str),
        Some("spam"),
        "{set:?}"
    );
    assert!(set.contains_key("x-sift-spam-score"), "{set:?}");
    assert!(
        removed.contains(&"x-sift-cluster".to_string()),
        "{removed:?}"
    );
    assert!(removed.contains(&"x_user".to_string()), "{removed:?}");
    assert!(
        !removed.contains(&"x-sift-spam-verdict".to_string()),
        "set, not removed: {removed:?}"
    );
    assert_eq!(
        resp.get("ratelimit-policy").map(String::as_str),
        Some(r#""per-ip";q=3;w=60"#)
    );
    // The client IP is Envoy's source address: two more pass, the fourth
    // gets 429 with Retry-After; another client is not limited.
    for _ in 0..2 {
        allowed(&ask(check("GET", "/notes/1", &[], "", peer)).await);
    }
    let (status, headers, _) = denied(&ask(check("GET", "/notes/1", &[], "", peer)).await);
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    allowed(
        &ask(check(
            "GET",
            "/notes/1",
            &[],
            "",
            Some(("198.51.100.8", "")),
        ))
        .await,
    );

    // Identity: the principal Envoy names for its client.
    let (status, headers, _) = denied(&ask(check("GET", "/admin", &[], "", None)).await);
    assert_eq!(status, 403);
    assert_eq!(
        headers.get("x-sift-error").map(String::as_str),
        Some("identity-denied")
    );
    // Routed on the path as a servlet app reads it (path_parameters:
    // strip): /admin;x is /admin.
    let (_, headers, _) = denied(&ask(check("GET", "/admin;jsessionid=1/x", &[], "", None)).await);
    assert_eq!(
        headers.get("x-sift-error").map(String::as_str),
        Some("identity-denied")
    );
    let web = Some(("10.0.0.1", "spiffe://td.example/ns/web/sa/app"));
    denied(&ask(check("GET", "/admin", &[], "", web)).await);
    let ops = Some(("10.0.0.2", "spiffe://td.example/ns/ops/sa/tool"));
    allowed(&ask(check("GET", "/admin", &[], "", ops)).await);

    // Local answers: a redirect, and an answer route's verdict as JSON.
    let (status, headers, _) = denied(&ask(check("GET", "/old?x=1", &[], "", None)).await);
    assert_eq!(status, 308);
    assert_eq!(
        headers.get("location").map(String::as_str),
        Some("http://app.example/new?x=1")
    );
    let (status, _, body) = denied(
        &ask(check(
            "POST",
            "/classify",
            &[("content-type", "text/plain")],
            &spam,
            None,
        ))
        .await,
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON verdict");
    assert_eq!(v["verdict"], "spam", "{v}");

    // A route without an action admits; bad input is refused.
    allowed(&ask(check("GET", "/anything", &[], "", None)).await);
    let (status, _, _) = denied(&ask(check("GET", "/a/../admin", &[], "", None)).await);
    assert_eq!(status, 400);
    let err = c
        .check(CheckRequest::default())
        .await
        .expect_err("a check without a request is an error");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Counted.
    let m = |d: &str| {
        format!(
            r#"sift_envoy_checks_total{{listener="authz",api="ext_authz_grpc",decision="{d}"}}"#
        )
    };
    assert_eq!(sift.metric(&m("allowed")).await, Some(7.0));
    assert_eq!(sift.metric(&m("denied")).await, Some(9.0));
    assert_eq!(sift.metric(&m("error")).await, Some(1.0));
    // One access-log line per call, with the route, decision and verdict.
    let logged = sift.log_lines();
    let line = logged
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["message"] == "envoy_check" && v["route"] == "inbox" && v["decision"] == "denied"
        })
        .expect("an access-log line for the blocked check");
    assert_eq!(line["status"], 403, "{line}");
    assert_eq!(line["error"], "filter-blocked", "{line}");
    assert_eq!(line["api"], "ext_authz_grpc", "{line}");
    let mut keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "api",
            "decision",
            "duration_ms",
            "error",
            "filters",
            "host",
            "identity",
            "level",
            "listener",
            "message",
            "method",
            "path",
            "remote",
            "request_id",
            "route",
            "status",
            "target",
            "timestamp"
        ],
        "{line}"
    );
    assert!(
        line["duration_ms"].is_f64() && line["status"].is_u64(),
        "{line}"
    );
    assert_eq!(
        sift.metric(r#"sift_filter_verdicts_total{filter="spam",route="inbox",verdict="spam"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ext_authz_http_answers_200_with_headers_or_the_denial() {
    let (spam, ham) = examples();
    let sift = Sift::start(CONFIG);
    let url = |p: &str| format!("http://{}{p}", sift.listeners["authz"]);
    let post = |path: &str, body: &str, extra: &[(&str, &str)]| {
        let mut b = http::Request::post(url(path))
            .header("host", "app.example")
            .header("content-type", "text/plain");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(full(body.to_string())).unwrap()
    };
    let r = send(post("/submit", &spam, &[])).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sift-error"], "filter-blocked");
    let r = send(post("/submit", &ham, &[])).await;
    assert_eq!(r.status(), 200);
    let r = send(post("/notes/2", &spam, &[("x-sift-cluster", "vip")])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sift-spam-verdict"], "spam");
    assert_eq!(
        r.headers()["x-envoy-auth-headers-to-remove"],
        "x-sift-cluster"
    );
    assert_eq!(r.headers()["ratelimit-policy"], r#""per-ip";q=3;w=60"#);
    // CORS: a preflight from an allowed origin is answered by sift; the
    // answer to an allowed origin's request gets its headers.
    let preflight = http::Request::options(url("/notes/3"))
        .header("host", "app.example")
        .header("origin", "https://web.example")
        .header("access-control-request-method", "POST")
        .body(full(""))
        .unwrap();
    let r = send(preflight).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://web.example"
    );
    let r = send(post("/notes/4", &ham, &[("origin", "https://web.example")])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://web.example"
    );
    // ... sift's own refusals too (the rate limit's third and fourth).
    let r = send(post("/notes/5", &ham, &[("origin", "https://web.example")])).await;
    assert_eq!(r.status(), 200);
    let r = send(post("/notes/6", &ham, &[("origin", "https://web.example")])).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://web.example"
    );
    // Identity from the XFCC Envoy forwards.
    let get = |path: &str, xfcc: Option<&str>| {
        let mut b = http::Request::get(url(path)).header("host", "app.example");
        if let Some(x) = xfcc {
            b = b.header("x-forwarded-client-cert", x);
        }
        b.body(full("")).unwrap()
    };
    assert_eq!(send(get("/admin", None)).await.status(), 403);
    let ops = "By=spiffe://td.example/ns/app/sa/app;URI=spiffe://td.example/ns/ops/sa/tool";
    assert_eq!(send(get("/admin", Some(ops))).await.status(), 200);
    assert_eq!(
        sift.metric(
            r#"sift_envoy_checks_total{listener="authz",api="ext_authz_http",decision="allowed"}"#
        )
        .await,
        Some(5.0)
    );
}

fn headers_msg(method: &str, path: &str, extra: &[(&str, &str)], eos: bool) -> ProcessingRequest {
    let mut hs = vec![
        (":method", method),
        (":path", path),
        (":authority", "app.example"),
    ];
    hs.extend_from_slice(extra);
    ProcessingRequest {
        request: Some(In::RequestHeaders(HttpHeaders {
            headers: Some(PbHeaderMap {
                headers: hs
                    .iter()
                    .map(|(k, v)| PbHeaderValue {
                        key: k.to_string(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            end_of_stream: eos,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn body_msg(b: &str) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(In::RequestBody(HttpBody {
            body: b.as_bytes().to_vec(),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn response_headers_msg() -> ProcessingRequest {
    ProcessingRequest {
        request: Some(In::ResponseHeaders(HttpHeaders {
            headers: Some(PbHeaderMap {
                headers: vec![PbHeaderValue {
                    key: ":status".into(),
                    raw_value: b"200".to_vec(),
                    ..Default::default()
                }],
            }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// One ext_proc exchange: sends `msgs` one at a time, each after the
/// answer to the one before; returns the answers.
async fn exchange(sift: &Sift, msgs: Vec<ProcessingRequest>) -> Vec<ProcessingResponse> {
    let url = format!("http://{}", sift.listeners["authz"]);
    let mut c = ExternalProcessorClient::connect(url)
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut answers = c
        .process(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(
            rx,
        ))
        .await
        .expect("stream opened")
        .into_inner();
    let mut out = Vec::new();
    for m in msgs {
        tx.send(m).await.expect("send");
        match answers.message().await.expect("an answer") {
            Some(a) => {
                let end = matches!(a.response, Some(Out::ImmediateResponse(_)));
                out.push(a);
                if end {
                    break;
                }
            }
            None => break,
        }
    }
    out
}

fn set_headers(
    m: &Option<envoy_types::pb::envoy::service::ext_proc::v3::HeaderMutation>,
) -> HashMap<String, String> {
    m.iter()
        .flat_map(|m| m.set_headers.iter())
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ext_proc_judges_the_buffered_body_and_decorates_the_response() {
    let (spam, ham) = examples();
    let sift = Sift::start(CONFIG);
    let len = |s: &str| s.len().to_string();

    // Block: the headers go on (asking for the body buffered), the spam
    // body is answered with an immediate 403.
    let l = len(&spam);
    let a = exchange(
        &sift,
        vec![
            headers_msg(
                "POST",
                "/submit",
                &[("content-type", "text/plain"), ("content-length", &l)],
                false,
            ),
            body_msg(&spam),
        ],
    )
    .await;
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(
        matches!(a[0].response, Some(Out::RequestHeaders(_))),
        "{a:?}"
    );
    assert_eq!(
        a[0].mode_override.as_ref().map(|m| m.request_body_mode),
        Some(2),
        "BUFFERED"
    );
    let Some(Out::ImmediateResponse(im)) = &a[1].response else {
        panic!("spam not stopped: {a:?}");
    };
    assert_eq!(im.status.as_ref().map(|s| s.code), Some(403));
    assert_eq!(
        set_headers(&im.headers)
            .get("x-sift-error")
            .map(String::as_str),
        Some("filter-blocked")
    );

    // Ham goes on.
    let l = len(&ham);
    let a = exchange(
        &sift,
        vec![
            headers_msg(
                "POST",
                "/submit",
                &[("content-type", "text/plain"), ("content-length", &l)],
                false,
            ),
            body_msg(&ham),
            response_headers_msg(),
        ],
    )
    .await;
    assert_eq!(a.len(), 3, "{a:?}");
    assert!(matches!(a[1].response, Some(Out::RequestBody(_))), "{a:?}");
    assert!(
        matches!(a[2].response, Some(Out::ResponseHeaders(_))),
        "{a:?}"
    );

    // Annotate: the verdict headers ride on the body's answer; the rate
    // limit's headers on the response's.
    let l = len(&spam);
    let a = exchange(
        &sift,
        vec![
            headers_msg(
                "POST",
                "/notes/9",
                &[
                    ("content-type", "text/plain"),
                    ("content-length", &l),
                    ("x-sift-spam-verdict", "ham"),
                ],
                false,
            ),
            body_msg(&spam),
            response_headers_msg(),
        ],
    )
    .await;
    assert_eq!(a.len(), 3, "{a:?}");
    let Some(Out::RequestBody(b)) = &a[1].response else {
        panic!("{a:?}");
    };
    let m = b.response.as_ref().and_then(|c| c.header_mutation.clone());
    assert_eq!(
        set_headers(&m)
            .get("x-sift-spam-verdict")
            .map(String::as_str),
        Some("spam"),
        "{m:?}"
    );
    let Some(Out::ResponseHeaders(h)) = &a[2].response else {
        panic!("{a:?}");
    };
    let m = h.response.as_ref().and_then(|c| c.header_mutation.clone());
    assert!(set_headers(&m).contains_key("ratelimit-policy"), "{m:?}");

    // The client's identity from Envoy's request attributes.
    let a = exchange(&sift, vec![headers_msg("GET", "/admin", &[], true)]).await;
    let Some(Out::ImmediateResponse(im)) = &a[0].response else {
        panic!("{a:?}");
    };
    assert_eq!(im.status.as_ref().map(|s| s.code), Some(403));
    let mut m = headers_msg("GET", "/admin", &[], true);
    let field = |v: &str| envoy_types::pb::google::protobuf::Value {
        kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            v.into(),
        )),
    };
    m.attributes.insert(
        "envoy.filters.http.ext_proc".into(),
        envoy_types::pb::google::protobuf::Struct {
            fields: [
                ("source.address".to_string(), field("198.51.100.30:4444")),
                (
                    "connection.uri_san_peer_certificate".to_string(),
                    field("spiffe://td.example/ns/ops/sa/tool"),
                ),
            ]
            .into_iter()
            .collect(),
        },
    );
    let a = exchange(&sift, vec![m]).await;
    assert!(
        matches!(a[0].response, Some(Out::RequestHeaders(_))),
        "{a:?}"
    );

    // A head-only denial: the redirect answers at once.
    let a = exchange(&sift, vec![headers_msg("GET", "/old", &[], true)]).await;
    let Some(Out::ImmediateResponse(im)) = &a[0].response else {
        panic!("{a:?}");
    };
    assert_eq!(im.status.as_ref().map(|s| s.code), Some(308));
    assert_eq!(
        sift.metric(
            r#"sift_envoy_checks_total{listener="authz",api="ext_proc",decision="denied"}"#
        )
        .await,
        Some(3.0)
    );
}

#[test]
fn routes_without_an_action_are_for_envoy_listeners_only() {
    let proxy = r#"admin: { address: "127.0.0.1:0" }
listeners:
  - { name: main, address: "127.0.0.1:0" }
routes:
  - { name: rest }
"#;
    let err = Sift::try_start(proxy).err().expect("refused");
    assert!(
        err.contains("routes[0]") && err.contains("listener \"main\" forwards its requests"),
        "{err}"
    );
    // The same route on an envoy listener only, beside a proxy listener
    // with its own routes: accepted.
    let mixed = r#"log: { format: json }
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: main, address: "127.0.0.1:0", routes: [page] }
  - { name: authz, address: "127.0.0.1:0", serve: envoy, routes: [rest] }
routes:
  - { name: page, direct_response: { status: 200, body: hi } }
  - { name: rest }
"#;
    let sift = Sift::start(mixed);
    assert!(sift.listeners.contains_key("authz"));
}

/// Sends every message at once, then reads `n` answers (streamed bodies:
/// sift holds the answers to body pieces back until it has judged them).
async fn exchange_all(
    sift: &Sift,
    msgs: Vec<ProcessingRequest>,
    n: usize,
) -> Vec<ProcessingResponse> {
    let url = format!("http://{}", sift.listeners["authz"]);
    let mut c = ExternalProcessorClient::connect(url)
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for m in msgs {
        tx.send(m).await.expect("send");
    }
    let mut answers = c
        .process(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(
            rx,
        ))
        .await
        .expect("stream opened")
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match answers.message().await {
            Ok(Some(a)) => out.push(a),
            _ => break,
        }
    }
    drop(tx);
    out
}

fn chunk(b: &str, eos: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(In::RequestBody(HttpBody {
            body: b.as_bytes().to_vec(),
            end_of_stream: eos,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ext_proc_holds_streamed_pieces_until_the_verdict() {
    let (spam, ham) = examples();
    let sift = Sift::start(CONFIG);
    // Envoy in STREAMED mode: the body in three pieces. sift answers none
    // of them before the last; then the first answer carries the verdict
    // headers and the others continue.
    let text = format!("{ham}\n{spam}");
    let third = text.len() / 3;
    let (a, rest) = text.split_at(third);
    let (b, c) = rest.split_at(third);
    let l = text.len().to_string();
    let pieces = |path: &str| {
        vec![
            headers_msg(
                "POST",
                path,
                &[("content-type", "text/plain"), ("content-length", &l)],
                false,
            ),
            chunk(a, false),
            chunk(b, false),
            chunk(c, true),
        ]
    };
    let got = exchange_all(&sift, pieces("/notes/s"), 4).await;
    assert_eq!(got.len(), 4, "{got:?}");
    let bodies: Vec<_> = got[1..]
        .iter()
        .map(|r| match &r.response {
            Some(Out::RequestBody(b)) => {
                b.response.as_ref().and_then(|c| c.header_mutation.clone())
            }
            other => panic!("not a body answer: {other:?}"),
        })
        .collect();
    assert_eq!(
        set_headers(&bodies[0])
            .get("x-sift-spam-verdict")
            .map(String::as_str),
        Some("spam"),
        "the verdict on the whole text: {bodies:?}"
    );
    assert!(bodies[1].is_none() && bodies[2].is_none(), "{bodies:?}");

    // In block mode the same pieces end in an immediate 403.
    let got = exchange_all(&sift, pieces("/submit"), 2).await;
    let Some(Out::ImmediateResponse(im)) = &got[1].response else {
        panic!("{got:?}");
    };
    assert_eq!(im.status.as_ref().map(|s| s.code), Some(403));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_calls_get_grpc_errors_and_sift_keeps_serving() {
    let sift = Sift::start(CONFIG);
    let mut c = authz_client(&sift).await;
    let with_http = |f: &dyn Fn(&mut attribute_context::HttpRequest)| {
        let mut r = check("GET", "/x", &[], "", None);
        if let Some(h) = r
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            f(h);
        }
        r
    };
    for (why, req) in [
        ("bad method", with_http(&|h| h.method = "GE T".into())),
        (
            "bad header value",
            with_http(&|h| {
                h.headers.insert("x-a".into(), "a\nb".into());
            }),
        ),
        (
            "bad header name",
            with_http(&|h| {
                h.headers.insert("bad name".into(), "v".into());
            }),
        ),
        ("bad path", with_http(&|h| h.path = "/a b".into())),
        (
            "not origin form",
            with_http(&|h| h.path = "#/../admin".into()),
        ),
        ("a fragment", with_http(&|h| h.path = "/x#/../admin".into())),
    ] {
        let err = c.check(req).await.expect_err(why);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{why}: {err:?}");
    }
    // Bytes that are no CheckRequest at all, in a gRPC frame.
    let status = garbage_call(&sift, "envoy.service.auth.v3.Authorization/Check").await;
    assert!(status.as_deref().is_some_and(|s| s != "0"), "{status:?}");
    // ext_proc: a stream that does not start with the request headers.
    let got = exchange_all(&sift, vec![chunk("x", true)], 1).await;
    assert!(got.is_empty(), "{got:?}");
    // Still serving.
    allowed(
        &c.check(check("GET", "/anything", &[], "", None))
            .await
            .expect("check")
            .into_inner(),
    );
    assert_eq!(
        sift.metric(r#"sift_envoy_checks_total{listener="authz",api="ext_proc",decision="error"}"#)
            .await,
        Some(1.0)
    );
}

/// The Istio mode shares the proxy's admission: a global rate limit
/// counted in a real Redis across two sift replicas Envoy might call, and
/// `source_ips` on Envoy's source address.
#[tokio::test(flavor = "multi_thread")]
async fn ext_authz_applies_global_limits_and_source_ips() {
    let redis = RedisServer::start();
    let port = redis.addr.port();
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
redis: {{ address: "127.0.0.1:{port}" }}
listeners:
  - {{ name: authz, address: "127.0.0.1:0", serve: envoy }}
routes:
  - name: api
    source_ips: {{ deny: [192.0.2.0/24] }}
    rate_limits: [ {{ name: shared, requests_per_unit: 2, unit: minute, key: [client_ip], global: true }} ]
"#
    );
    let (one, two) = (Sift::start(&cfg), Sift::start(&cfg));
    let (mut c1, mut c2) = (authz_client(&one).await, authz_client(&two).await);
    let peer = Some(("198.51.100.7", ""));
    let mut statuses = Vec::new();
    for i in 0..4 {
        let c = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        let r = c
            .check(check("GET", "/x", &[], "", peer))
            .await
            .unwrap()
            .into_inner();
        statuses.push(if r.status.as_ref().map(|s| s.code) == Some(0) {
            200
        } else {
            denied(&r).0
        });
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "2 per minute across both replicas"
    );
    let r = c1
        .check(check("GET", "/x", &[], "", Some(("192.0.2.9", ""))))
        .await
        .unwrap()
        .into_inner();
    let (status, headers, _) = denied(&r);
    assert_eq!(status, 403);
    assert_eq!(
        headers.get("x-sift-error").map(String::as_str),
        Some("source-denied")
    );
}

// ---- The rate limit service (envoy.service.ratelimit.v3) ----

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry as RlEntry,
    rate_limit_descriptor::RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_response::Code,
    rate_limit_response::rate_limit::Unit, rate_limit_service_client::RateLimitServiceClient,
};

async fn rls_client(sift: &Sift) -> RateLimitServiceClient<tonic::transport::Channel> {
    let url = format!("http://{}", sift.listeners["authz"]);
    RateLimitServiceClient::connect(url).await.expect("connect")
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| RlEntry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn rl(domain: &str, ds: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: ds,
        hits_addend: 0,
    }
}

fn headers_of(r: &RateLimitResponse) -> HashMap<String, String> {
    r.response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

const RLS_CONFIG: &str = r#"log: { format: json, access_log: true }
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: authz, address: "127.0.0.1:0", serve: envoy }
rate_limit_service:
  domains:
    - domain: edge
      descriptors:
        - key: remote_address
          rate_limit: { unit: minute, requests_per_unit: 2 }
        - key: tenant
          value: gold
          rate_limit: { name: gold, unit: minute, requests_per_unit: 10 }
          descriptors:
            - key: path
              rate_limit: { unit: MINUTE, requests_per_unit: 1 }
        - key: tenant
          rate_limit: { unit: hour, requests_per_unit: 100 }
        - key: plan
          value: premium
          rate_limit: { name: premium, unit: second, requests_per_unit: 1000, replaces: [ { name: per-user } ] }
        - key: user
          rate_limit: { name: per-user, unit: minute, requests_per_unit: 1 }
        - key: trial
          shadow_mode: true
          rate_limit: { unit: minute, requests_per_unit: 1 }
        - key: internal
          rate_limit: { unlimited: true }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_service_answers_envoys_should_rate_limit() {
    let sift = Sift::start(RLS_CONFIG);
    let mut c = rls_client(&sift).await;
    let mut ask = async |r: RateLimitRequest| c.should_rate_limit(r).await.map(|r| r.into_inner());

    // A bucket per remote address, 2 per minute.
    let ip = |a: &str| rl("edge", vec![descriptor(&[("remote_address", a)])]);
    for left in [1, 0] {
        let r = ask(ip("10.0.0.1")).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
        let s = &r.statuses[0];
        assert_eq!(s.code, Code::Ok as i32);
        assert_eq!(s.limit_remaining, left);
        let l = s.current_limit.as_ref().unwrap();
        assert_eq!((l.requests_per_unit, l.unit), (2, Unit::Minute as i32));
        assert_eq!(l.name, "edge.remote_address");
        assert!(
            r.response_headers_to_add.is_empty(),
            "allowed: no headers by default"
        );
    }
    let r = ask(ip("10.0.0.1")).await.unwrap();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    let wait = r.statuses[0].duration_until_reset.unwrap().seconds;
    assert!((1..=30).contains(&wait), "a token every 30 s: {wait}");
    let h = headers_of(&r);
    assert_eq!(h.get("retry-after"), Some(&wait.to_string()));
    assert_eq!(
        h.get("ratelimit-policy").map(String::as_str),
        Some("\"edge.remote_address\";q=2;w=60")
    );
    assert_eq!(
        h.get("x-sift-error").map(String::as_str),
        Some("rate-limited")
    );
    assert!(!h.contains_key("content-length"));
    assert_eq!(
        String::from_utf8_lossy(&r.raw_body),
        "429 rate limit edge.remote_address exceeded\n"
    );
    let r = ask(ip("10.0.0.2")).await.unwrap();
    assert_eq!(
        r.overall_code,
        Code::Ok as i32,
        "another address, another bucket"
    );

    // Exact value, its nested level, and the any-value node.
    let r = ask(rl(
        "edge",
        vec![
            descriptor(&[("tenant", "gold")]),
            descriptor(&[("tenant", "gold"), ("path", "/a")]),
            descriptor(&[("tenant", "silver")]),
            descriptor(&[("unknown", "x")]),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32);
    let names: Vec<Option<&str>> = r
        .statuses
        .iter()
        .map(|s| s.current_limit.as_ref().map(|l| l.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            Some("gold"),
            Some("edge.tenant_gold.path"),
            Some("edge.tenant"),
            None
        ]
    );
    assert_eq!(r.statuses[0].limit_remaining, 9);

    // One descriptor over its limit: the request is, and the others' tokens
    // go back (gold stays at 9 left).
    let r = ask(rl(
        "edge",
        vec![
            descriptor(&[("tenant", "gold")]),
            descriptor(&[("tenant", "gold"), ("path", "/a")]),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(
        r.statuses.iter().map(|s| s.code).collect::<Vec<_>>(),
        [Code::Ok as i32, Code::OverLimit as i32]
    );
    assert_eq!(r.statuses[0].limit_remaining, 9, "given back");
    assert_eq!(
        headers_of(&r).get("ratelimit-policy").map(String::as_str),
        Some("\"edge.tenant_gold.path\";q=1;w=60"),
        "the 429 names the limit that fired"
    );
    let r = ask(rl("edge", vec![descriptor(&[("tenant", "gold")])]))
        .await
        .unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 8);

    // hits_addend: 5 tokens of gold's 8, then 5 more do not fit.
    let mut five = rl("edge", vec![descriptor(&[("tenant", "gold")])]);
    five.hits_addend = 5;
    let r = ask(five.clone()).await.unwrap();
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (Code::Ok as i32, 3)
    );
    let r = ask(five).await.unwrap();
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (Code::OverLimit as i32, 3)
    );

    // replaces: premium users are not held to per-user.
    let user = |plan: Option<&str>| {
        let mut ds = vec![descriptor(&[("user", "ann")])];
        if let Some(p) = plan {
            ds.push(descriptor(&[("plan", p)]));
        }
        rl("edge", ds)
    };
    assert_eq!(ask(user(None)).await.unwrap().overall_code, Code::Ok as i32);
    assert_eq!(
        ask(user(None)).await.unwrap().overall_code,
        Code::OverLimit as i32
    );
    let r = ask(user(Some("premium"))).await.unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32, "per-user replaced");
    assert!(r.statuses[0].current_limit.is_none());

    // Shadow mode: over the limit, but OK; unlimited; unknown domain.
    let trial = || rl("edge", vec![descriptor(&[("trial", "t1")])]);
    assert_eq!(ask(trial()).await.unwrap().overall_code, Code::Ok as i32);
    let r = ask(trial()).await.unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].code, Code::Ok as i32);
    let r = ask(rl("edge", vec![descriptor(&[("internal", "job")])]))
        .await
        .unwrap();
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (Code::Ok as i32, u32::MAX)
    );
    let r = ask(rl(
        "nope",
        vec![descriptor(&[("remote_address", "10.0.0.1")])],
    ))
    .await
    .unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32, "unknown domain: no limits");

    // A limit the request carries (Envoy's descriptor `limit` override).
    let mut d = descriptor(&[("remote_address", "10.9.9.9")]);
    d.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: Unit::Hour as i32,
    });
    let given = rl("edge", vec![d]);
    let r = ask(given.clone()).await.unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32);
    let l = r.statuses[0].current_limit.clone().unwrap();
    assert_eq!((l.requests_per_unit, l.unit), (1, Unit::Hour as i32));
    assert_eq!(
        ask(given).await.unwrap().overall_code,
        Code::OverLimit as i32
    );

    // Calls sift cannot read.
    let e = ask(rl("", vec![descriptor(&[("k", "v")])]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = ask(rl("edge", vec![])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mut d = descriptor(&[("k", "v")]);
    d.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 99,
    });
    let e = ask(rl("edge", vec![d])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("unknown unit"), "{}", e.message());

    // Bytes that are no RateLimitRequest, in a gRPC frame: an error status.
    let status = garbage_call(
        &sift,
        "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    )
    .await;
    assert!(status.as_deref().is_some_and(|s| s != "0"), "{status:?}");
    // A flood of descriptors and long values in one call: one status each.
    let long = "v".repeat(200);
    let many: Vec<RateLimitDescriptor> = (0..3000)
        .map(|i| descriptor(&[("tenant", &format!("{long}{i}")), ("x", "y")]))
        .collect();
    let r = ask(rl("edge", many)).await.unwrap();
    assert_eq!((r.overall_code, r.statuses.len()), (Code::Ok as i32, 3000));

    assert_eq!(
        sift.metric(r#"sift_rls_decisions_total{domain="edge",limit="edge.remote_address",decision="over_limit"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sift.metric(r#"sift_rls_decisions_total{domain="edge",limit="edge.trial",decision="shadow_over_limit"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sift.metric(
            r#"sift_envoy_checks_total{listener="authz",api="ratelimit",decision="error"}"#
        )
        .await,
        Some(3.0)
    );
    assert!(
        sift.log_lines()
            .iter()
            .any(|l| l.contains("envoy_ratelimit") && l.contains("remote_address=10.0.0.1")),
        "an access-log line per call"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_service_reloads_keep_buckets_and_bad_ones_keep_serving() {
    let sift = Sift::start(RLS_CONFIG);
    let mut c = rls_client(&sift).await;
    let ip = || rl("edge", vec![descriptor(&[("remote_address", "10.0.0.1")])]);
    for _ in 0..2 {
        c.should_rate_limit(ip()).await.unwrap();
    }
    // Another limit changes; remote_address's buckets stay spent.
    sift.write_config(&RLS_CONFIG.replace("requests_per_unit: 1000", "requests_per_unit: 500"));
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    let r = c.should_rate_limit(ip()).await.unwrap().into_inner();
    assert_eq!(r.overall_code, Code::OverLimit as i32, "bucket kept");
    // A broken tree is refused; the old one keeps answering.
    sift.write_config(&RLS_CONFIG.replace("name: per-user }", "name: per-usr }"));
    let (status, body) = post_text(&sift.admin_url("/reload")).await;
    assert_ne!(status, 200);
    assert!(
        body.contains("no limit of domain")
            && body.contains("per-usr")
            && body.contains("replaces[0]"),
        "{body}"
    );
    let r = c
        .should_rate_limit(rl(
            "edge",
            vec![descriptor(&[("remote_address", "10.0.0.3")])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        2
    );
    // The limit raised: a new bucket.
    sift.write_config(&RLS_CONFIG.replace(
        "rate_limit: { unit: minute, requests_per_unit: 2 }",
        "rate_limit: { unit: minute, requests_per_unit: 3 }",
    ));
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    let r = c.should_rate_limit(ip()).await.unwrap().into_inner();
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (Code::Ok as i32, 2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_service_counts_in_redis_across_replicas() {
    let mut redis = RedisServer::start();
    let port = redis.addr.port();
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
redis: {{ address: "127.0.0.1:{port}", timeout: 200ms }}
listeners:
  - {{ name: authz, address: "127.0.0.1:0", serve: envoy }}
rate_limit_service:
  store: redis
  response_headers: true
  domains:
    - domain: edge
      descriptors:
        - key: remote_address
          rate_limit: {{ unit: minute, requests_per_unit: 3 }}
        - key: tenant
          rate_limit: {{ unit: minute, requests_per_unit: 10 }}
        - key: trial
          shadow_mode: true
          rate_limit: {{ unit: minute, requests_per_unit: 1 }}
"#
    );
    let (one, two) = (Sift::start(&cfg), Sift::start(&cfg));
    let (mut c1, mut c2) = (rls_client(&one).await, rls_client(&two).await);
    let ip = |a: &str| rl("edge", vec![descriptor(&[("remote_address", a)])]);
    let mut codes = Vec::new();
    for i in 0..5 {
        let c = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        let r = c
            .should_rate_limit(ip("10.0.0.1"))
            .await
            .unwrap()
            .into_inner();
        codes.push(r.overall_code);
        if i == 0 {
            let h = headers_of(&r);
            let v = h.get("ratelimit").cloned().unwrap_or_default();
            assert!(v.starts_with("\"edge.remote_address\";r=2;t="), "{h:?}");
        }
    }
    let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
    assert_eq!(
        codes,
        [ok, ok, ok, over, over],
        "3 per minute across both replicas"
    );
    // Over on one descriptor: the other's token is given back in Redis.
    let both = rl(
        "edge",
        vec![
            descriptor(&[("tenant", "t")]),
            descriptor(&[("remote_address", "10.0.0.1")]),
        ],
    );
    let r = c1.should_rate_limit(both).await.unwrap().into_inner();
    assert_eq!(r.overall_code, over);
    assert_eq!(r.statuses[0].limit_remaining, 10, "given back");
    let r = c2
        .should_rate_limit(rl("edge", vec![descriptor(&[("tenant", "t")])]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.statuses[0].limit_remaining, 9,
        "the refused call took nothing"
    );
    // Redis gone: an error for Envoy (its failure_mode_deny decides).
    redis.stop();
    let e = c1.should_rate_limit(ip("10.0.0.5")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().starts_with("redis:"), "{}", e.message());
}

/// A proxy route's `external_rate_limit` asks a rate limit service (here
/// a second sift with `rate_limit_service`, as a central one would be)
/// with descriptors made from the request, as Envoy's ratelimit filter.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_routes_ask_an_external_rate_limit_service() {
    let rls = Sift::start(
        r#"log: { format: json }
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: authz, address: "127.0.0.1:0", serve: envoy }
rate_limit_service:
  response_headers: true
  domains:
    - domain: gateway
      descriptors:
        - key: remote_address
          rate_limit: { name: per-ip, unit: minute, requests_per_unit: 2 }
        - key: generic_key
          value: api
          descriptors:
            - key: tenant
              rate_limit: { name: per-tenant, unit: minute, requests_per_unit: 1 }
"#,
    );
    let app = Upstream::echo("app").await;
    let refusing = refused_port();
    let dead = refusing.addr.port();
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - {{ name: main, address: "127.0.0.1:0", forwarded: {{ trusted_hops: 1 }} }}
routes:
  - name: api
    match: {{ path: {{ prefix: /api }} }}
    cluster: app
    external_rate_limit:
      cluster: rls
      domain: gateway
      timeout: 500ms
      descriptors:
        - [ {{ remote_address: {{}} }} ]
        - [ {{ generic_key: {{ descriptor_value: api }} }}, {{ request_headers: {{ header_name: x-tenant, descriptor_key: tenant }} }} ]
  - name: open
    match: {{ path: {{ prefix: /open }} }}
    cluster: app
    external_rate_limit: {{ cluster: gone, domain: gateway, descriptors: [ [ {{ remote_address: {{}} }} ] ] }}
  - name: closed
    cluster: app
    external_rate_limit: {{ cluster: gone, domain: gateway, failure_mode_deny: true, descriptors: [ [ {{ remote_address: {{}} }} ] ] }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: rls, endpoints: ["{}"], protocol: http2 }}
  - {{ name: gone, endpoints: ["127.0.0.1:{dead}"], protocol: http2 }}
"#,
        app.addr, rls.listeners["authz"]
    );
    let sift = Sift::start(&cfg);
    let get = |path: &str, ip: &str, tenant: Option<&str>| {
        let mut b = http::Request::get(sift.url(path)).header("x-forwarded-for", ip);
        if let Some(t) = tenant {
            b = b.header("x-tenant", t);
        }
        b.body(full("")).unwrap()
    };
    // No tenant: only the remote_address descriptor; 2 per minute.
    let r = send(get("/api/x", "198.51.100.1", None)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["ratelimit"],
        "\"per-ip\";r=1;t=30",
        "the service's RateLimit header reaches the client"
    );
    assert_eq!(
        send(get("/api/x", "198.51.100.1", None)).await.status(),
        200
    );
    let r = send(get("/api/x", "198.51.100.1", None)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-sift-error"], "rate-limited");
    assert_eq!(r.headers()["ratelimit-policy"], "\"per-ip\";q=2;w=60");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    assert_eq!(
        String::from_utf8_lossy(r.body()),
        "429 rate limit per-ip exceeded\n"
    );
    // With a tenant: both descriptors; the tenant's 1 per minute fires.
    assert_eq!(
        send(get("/api/x", "198.51.100.2", Some("t1")))
            .await
            .status(),
        200
    );
    let r = send(get("/api/x", "198.51.100.2", Some("t1"))).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["ratelimit-policy"], "\"per-tenant\";q=1;w=60");
    assert_eq!(
        send(get("/api/x", "198.51.100.2", Some("t2")))
            .await
            .status(),
        200
    );
    // The service gone: through (default), or 503 with failure_mode_deny.
    assert_eq!(send(get("/open", "198.51.100.3", None)).await.status(), 200);
    let r = send(get("/other", "198.51.100.3", None)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sift-error"], "ratelimit-unavailable");
    for (route, result, n) in [
        ("api", "ok", 4.0),
        ("api", "over_limit", 2.0),
        ("open", "error_allowed", 1.0),
        ("closed", "error_denied", 1.0),
    ] {
        assert_eq!(
            sift.metric(&format!(
                r#"sift_external_ratelimit_total{{route="{route}",result="{result}"}}"#
            ))
            .await,
            Some(n),
            "{route} {result}"
        );
    }
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::Relaxed), 5);
}

/// The other Envoy route actions (`masked_remote_address`,
/// `header_value_match`, `query_parameters`) and `hits_addend`, against a
/// second sift as the rate limit service.
#[tokio::test(flavor = "multi_thread")]
async fn external_rate_limit_masks_matches_headers_reads_query_and_adds_hits() {
    let rls = Sift::start(
        r#"log: { format: json }
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: authz, address: "127.0.0.1:0", serve: envoy }
rate_limit_service:
  domains:
    - domain: edge
      descriptors:
        - key: masked_remote_address
          rate_limit: { name: per-subnet, unit: minute, requests_per_unit: 2 }
        - key: header_match
          value: curl
          rate_limit: { name: scripts, unit: minute, requests_per_unit: 1 }
        - key: api_key
          rate_limit: { name: per-key, unit: minute, requests_per_unit: 1 }
        - key: generic_key
          value: heavy
          rate_limit: { name: heavy, unit: minute, requests_per_unit: 3 }
"#,
    );
    let app = Upstream::echo("app").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - {{ name: main, address: "127.0.0.1:0", forwarded: {{ trusted_hops: 1 }} }}
routes:
  - name: subnet
    match: {{ path: {{ prefix: /subnet }} }}
    cluster: app
    external_rate_limit:
      cluster: rls
      domain: edge
      timeout: 500ms
      descriptors: [ [ {{ masked_remote_address: {{ v4_prefix_mask_len: 24 }} }} ] ]
  - name: ua
    match: {{ path: {{ prefix: /ua }} }}
    cluster: app
    external_rate_limit:
      cluster: rls
      domain: edge
      timeout: 500ms
      descriptors:
        - [ {{ header_value_match: {{ descriptor_value: curl, headers: [ {{ name: user-agent, prefix: curl/ }} ] }} }} ]
  - name: key
    match: {{ path: {{ prefix: /key }} }}
    cluster: app
    external_rate_limit:
      cluster: rls
      domain: edge
      timeout: 500ms
      descriptors:
        - [ {{ query_parameters: {{ query_parameter_name: key, descriptor_key: api_key }} }} ]
  - name: heavy
    match: {{ path: {{ prefix: /heavy }} }}
    cluster: app
    external_rate_limit:
      cluster: rls
      domain: edge
      timeout: 500ms
      hits_addend: 2
      descriptors: [ [ {{ generic_key: {{ descriptor_value: heavy }} }} ] ]
clusters:
  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: rls, endpoints: ["{}"], protocol: http2 }}
"#,
        app.addr, rls.listeners["authz"]
    );
    let sift = Sift::start(&cfg);
    let get = |path: &str, ip: &str, ua: &str| {
        http::Request::get(sift.url(path))
            .header("x-forwarded-for", ip)
            .header("user-agent", ua)
            .body(full(""))
            .unwrap()
    };
    let status = |path: &'static str, ip: &'static str, ua: &'static str| {
        let r = get(path, ip, ua);
        async move { send(r).await.status().as_u16() }
    };
    // One bucket per /24: .5 and .9 share it, another /24 has its own.
    assert_eq!(status("/subnet", "203.0.113.5", "a").await, 200);
    assert_eq!(status("/subnet", "203.0.113.9", "a").await, 200);
    assert_eq!(status("/subnet", "203.0.113.200", "a").await, 429);
    assert_eq!(status("/subnet", "203.0.114.1", "a").await, 200);
    // curl/ user agents share one request a minute; others send no
    // descriptor at all, so nothing limits them.
    assert_eq!(status("/ua", "192.0.2.1", "curl/8.5").await, 200);
    assert_eq!(status("/ua", "192.0.2.2", "curl/7.1").await, 429);
    for _ in 0..3 {
        assert_eq!(status("/ua", "192.0.2.3", "Mozilla/5.0").await, 200);
    }
    // A bucket per decoded API key; without the parameter, no descriptor.
    assert_eq!(status("/key?key=a%20b", "192.0.2.4", "x").await, 200);
    assert_eq!(status("/key?x=1&key=a+b", "192.0.2.4", "x").await, 429);
    assert_eq!(status("/key?key=c", "192.0.2.4", "x").await, 200);
    assert_eq!(status("/key", "192.0.2.4", "x").await, 200);
    assert_eq!(status("/key", "192.0.2.4", "x").await, 200);
    // hits_addend 2 against 3 a minute: the second request would need 4.
    assert_eq!(status("/heavy", "192.0.2.5", "x").await, 200);
    assert_eq!(status("/heavy", "192.0.2.5", "x").await, 429);
}

/// `basic_auth` on a route served to Envoy: the HTTP check refuses with
/// the Basic challenge, or admits with the user's name for the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn ext_authz_applies_basic_auth() {
    let sift = Sift::start(
        r#"log: { format: json }
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: authz, address: "127.0.0.1:0", serve: envoy }
routes:
  - name: tools
    basic_auth: { users: ["bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="], forward_username_header: x-user }
"#,
    );
    let check = |auth: Option<&'static str>| {
        let mut b = http::Request::get(format!("http://{}/x", sift.listeners["authz"]))
            .header("host", "tools.example");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        send(b.body(full("")).unwrap())
    };
    let r = check(None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-sift-error"], "basic-auth-missing");
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"sift\", charset=\"UTF-8\""
    );
    // base64("bob:secret") and base64("bob:nope").
    let r = check(Some("Basic Ym9iOm5vcGU=")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-sift-error"], "basic-auth-invalid");
    let r = check(Some("Basic Ym9iOnNlY3JldA==")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user"], "bob");
}

/// The Istio mode applies a route's `csrf` as the proxy does: Envoy's
/// check of a cross-site POST is denied with 403 `csrf-denied`, the
/// site's own is allowed.
#[tokio::test(flavor = "multi_thread")]
async fn ext_authz_applies_csrf() {
    let sift = Sift::start(
        r#"log: { format: json }
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: authz, address: "127.0.0.1:0", serve: envoy }
routes:
  - { name: shop, csrf: {} }
"#,
    );
    let check = |origin: &'static str, site: &'static str| {
        let b = http::Request::post(format!("http://{}/cart", sift.listeners["authz"]))
            .header("host", "shop.example")
            .header("origin", origin)
            .header("sec-fetch-site", site);
        send(b.body(full("")).unwrap())
    };
    let r = check("https://evil.example", "cross-site").await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sift-error"], "csrf-denied");
    let r = check("https://shop.example", "same-origin").await;
    assert_eq!(r.status(), 200);
}

/// The gRPC checks hold the body Envoy sends for the route's filters
/// within `overload.max_buffered_bytes`, as the HTTP check and the proxy
/// do: past it, ext_authz denies with 503 `overloaded` and ext_proc answers
/// an immediate 503 (Envoy relays either), never a verdict on a body not
/// read; a body that fits is judged as usual, and nothing stays counted.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_checks_hold_bodies_within_max_buffered_bytes() {
    let (_, ham) = examples();
    let sift = Sift::start(&format!(
        "overload: {{ max_buffered_bytes: 1KiB }}\n{CONFIG}"
    ));
    let long = format!("{ham} ").repeat(2048 / ham.len() + 1);
    assert!(long.len() > 2048 && long.len() < 4096, "{}", long.len());
    let ct = [("content-type", "text/plain")];

    let mut c = authz_client(&sift).await;
    let r = c
        .check(check("POST", "/notes/a", &ct, &ham, None))
        .await
        .expect("check answered")
        .into_inner();
    let (set, _, _) = allowed(&r);
    assert_eq!(
        set.get("x-sift-spam-verdict").map(String::as_str),
        Some("ham")
    );
    let r = c
        .check(check("POST", "/notes/a", &ct, &long, None))
        .await
        .expect("check answered")
        .into_inner();
    let (status, headers, _) = denied(&r);
    assert_eq!(status, 503);
    assert_eq!(
        headers.get("x-sift-error").map(String::as_str),
        Some("overloaded")
    );

    // ext_proc, Envoy in STREAMED mode: pieces past the limit.
    let l = long.len().to_string();
    let (a, b) = long.split_at(long.len() / 2);
    let msgs = vec![
        headers_msg(
            "POST",
            "/notes/b",
            &[("content-type", "text/plain"), ("content-length", &l)],
            false,
        ),
        chunk(a, false),
        chunk(b, true),
    ];
    let got = exchange_all(&sift, msgs, 2).await;
    let Some(Out::ImmediateResponse(im)) = &got[1].response else {
        panic!("{got:?}");
    };
    assert_eq!(im.status.as_ref().map(|s| s.code), Some(503));
    assert_eq!(
        sift.metric(r#"sift_buffer_denied_total{use="filter"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(sift.metric("sift_buffered_request_bytes").await, Some(0.0));
}

/// An HTTP ext_authz check holds the body for the route's filters within
/// `overload.max_buffered_bytes` like the proxy: past it the check
/// answers 503 `overloaded` (Envoy relays it to the client), never an
/// unread verdict; a body that fits is judged as usual.
#[tokio::test(flavor = "multi_thread")]
async fn ext_authz_http_holds_bodies_within_max_buffered_bytes() {
    let (_, ham) = examples();
    let sift = Sift::start(&format!(
        "overload: {{ max_buffered_bytes: 1KiB }}\n{CONFIG}"
    ));
    let post = |body: String| {
        http::Request::post(format!("http://{}/submit", sift.listeners["authz"]))
            .header("host", "app.example")
            .header("content-type", "text/plain")
            .body(full(body))
            .unwrap()
    };
    let r = send(post(ham.clone())).await;
    assert_eq!(r.status(), 200);
    let long = format!("{ham} ").repeat(2048 / ham.len() + 1);
    assert!(long.len() > 2048 && long.len() < 4096, "{}", long.len());
    let r = send(post(long)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sift-error"], "overloaded");
    assert_eq!(
        sift.metric(r#"sift_buffer_denied_total{use="filter"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(sift.metric("sift_buffered_request_bytes").await, Some(0.0));
}
