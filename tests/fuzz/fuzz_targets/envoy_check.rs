//! Envoy's ext_authz checks through sift's Istio mode, in process:
//! `extauth::grpc::check` (what a `serve: envoy` listener runs for each
//! `Authorization/Check` call) on a config whose routes use the spam filter
//! in block and annotate mode (a form field, JSON, query fields), an answer
//! route, a rate limit on a header, an identity rule, a redirect, CORS, a
//! header and a regex path match, and a catch-all route with no action,
//! under `overload.max_buffered_bytes: 1KiB` (a longer body the filters
//! read is a 503 `overloaded`).
//!
//! Input: byte 0 even: the rest is a `CheckRequest` in protobuf (prost
//! decodes it); odd: a request in a small text form, so that most inputs
//! reach the routes and filters: line 1 the method, line 2 the path,
//! then `name: value` header lines up to a blank line, then the body;
//! byte 0's bit 1 marks the body partial (`x-envoy-auth-partial-body`),
//! bit 2 gives the client a principal (`spiffe://td.example/ns/ops/...`).
//!
//! Checks, beyond "no panic":
//! - the answer is a CheckResponse or INVALID_ARGUMENT;
//! - an admission sets only sift's own headers (verdict headers,
//!   `x-sift-cluster`) and removes every `x-sift-*` or underscored header
//!   the client sent that it does not set;
//! - a denial has a status sift gives (no 500: no internal error), and an
//!   `x-sift-error` unless it is a redirect, a preflight or an answer;
//! - the `admin` route admits only the `ops` namespace, and a path an app
//!   reads as under `/admin` (`;` parameters stripped, `%2F`, `%5C` and
//!   `\` read as `/`, unreserved escapes decoded, slashes merged; the
//!   listener strips and unescapes) is admitted by no other route; no
//!   admitted path has a dot segment;
//! - a 503 `overloaded` only for a body over 1 KiB, and no byte stays
//!   counted in the memory budget once a check has answered.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, check_response::HttpResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const CONFIG: &str = r#"
log: { format: json, level: error, access_log: false }
admin: { address: "127.0.0.1:0" }
overload: { max_buffered_bytes: 1KiB }
listeners:
  - { name: authz, address: "127.0.0.1:0", serve: envoy, escaped_slashes: unescape, path_parameters: strip }
filters:
  - name: spam
    kind: spam
    extract: { form_fields: [message], json_pointers: [/text], query_fields: [q] }
routes:
  - name: inbox
    match: { path: { prefix: /submit } }
    filters: [ { filter: spam, mode: block, max_inspect_bytes: 2KiB, on_oversize: inspect_prefix } ]
  - name: strict
    match: { path: { prefix: /strict } }
    filters: [ { filter: spam, mode: block, max_inspect_bytes: 512, on_oversize: reject, on_unreadable: reject } ]
  - name: notes
    match: { path: { regex: "/notes/[0-9]+" } }
    filters: [ { filter: spam, mode: annotate } ]
    cors: { allow_origins: ["https://web.example"], allow_methods: [GET, POST] }
    rate_limits:
      - { name: tenant, requests_per_unit: 5, unit: minute, key: [header:x-tenant] }
  - name: admin
    match: { path: { prefix: /admin } }
    allowed_identities: [ { namespace: td.example/ops } ]
  - name: moved
    match: { path: { exact: /old } }
    redirect: { path: /new, code: 308 }
  - name: classify
    match: { path: { exact: /classify }, headers: [ { name: x-mode, exact: verdict } ] }
    answer: spam
  - name: rest
"#;

struct Env {
    rt: tokio::runtime::Runtime,
    shared: Arc<sift::state::Shared>,
    conn: sift::proxy::ConnInfo,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let cfg = sift::config::load_str(CONFIG).unwrap_or_else(|e| panic!("config: {e}"));
        let metrics = Arc::new(sift::metrics::Metrics::new());
        let clock = sift::clock::Clock::new();
        let _g = rt.enter();
        let snap =
            sift::snapshot::Snapshot::build(cfg, Arc::from(CONFIG), None, &metrics, clock.now())
                .unwrap_or_else(|e| panic!("snapshot: {e:?}"));
        let shared = sift::state::Shared::new(snap, metrics, clock);
        drop(_g);
        let remote: std::net::SocketAddr = "127.0.0.1:15000".parse().expect("address");
        let conn = sift::proxy::ConnInfo {
            listener: Arc::from("authz"),
            listener_index: 0,
            remote,
            remote_ip: http::HeaderValue::from_static("127.0.0.1"),
            tls: false,
            tls_version: None,
            sni: None,
            identity: None,
            xfcc: None,
            envoy: true,
            slot: None,
        };
        Env { rt, shared, conn }
    })
}

/// The text form: method, path, header lines, blank line, body.
fn text_request(flags: u8, data: &[u8]) -> CheckRequest {
    let s = String::from_utf8_lossy(data);
    let (head, body) = s.split_once("\n\n").unwrap_or((&s, ""));
    let mut lines = head.lines();
    let method = lines.next().unwrap_or("GET").to_string();
    let path = lines.next().unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    headers.insert("content-length".into(), body.len().to_string());
    if flags & 2 != 0 {
        headers.insert("x-envoy-auth-partial-body".into(), "true".into());
    }
    let source = (flags & 4 != 0).then(|| attribute_context::Peer {
        principal: "spiffe://td.example/ns/ops/sa/tool".into(),
        ..Default::default()
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method,
                    path,
                    host: "app.example".into(),
                    headers,
                    size: body.len() as i64,
                    raw_body: body.as_bytes().to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The path as an app may read it: query dropped, `;` parameters
/// stripped per segment, `%2F`/`%5C`/`\\` as `/`, `%XX` of unreserved
/// characters decoded, repeated slashes merged.
fn app_path(p: &str) -> String {
    let b = p.split('?').next().unwrap_or("").as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(x) if x == b'/' || x == b'\\' => out.push(b'/'),
                Some(x) if x.is_ascii_alphanumeric() || b"-._~".contains(&x) => out.push(x),
                _ => out.extend_from_slice(&b[i..i + 3]),
            }
            i += 3;
            continue;
        }
        out.push(if c == b'\\' { b'/' } else { c });
        i += 1;
    }
    let out = String::from_utf8_lossy(&out).into_owned();
    let mut merged = String::new();
    for seg in out.split('/').filter(|s| !s.is_empty()) {
        merged.push('/');
        merged.push_str(seg.split(';').next().unwrap_or(""));
    }
    if merged.is_empty() || out.ends_with('/') {
        merged.push('/');
    }
    merged
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let req = if flags & 1 == 0 {
        match CheckRequest::decode(rest) {
            Ok(r) => r,
            Err(_) => return,
        }
    } else {
        text_request(flags, rest)
    };
    let http = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.clone());
    let body_len = http
        .as_ref()
        .map_or(0, |h| h.raw_body.len().max(h.body.len()));
    let principal = req
        .attributes
        .as_ref()
        .and_then(|a| a.source.as_ref())
        .map(|s| s.principal.clone())
        .unwrap_or_default();
    let e = env();
    let answer =
        e.rt.block_on(sift::extauth::grpc::check(&e.shared, &e.conn, req));
    assert_eq!(
        e.shared.budget.used(),
        0,
        "bytes left counted after a check"
    );
    let resp = match answer {
        Ok(r) => r,
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
            return;
        }
    };
    let http = http.expect("a check without http is refused");
    let sent: Vec<String> = match &http.header_map {
        Some(m) if !m.headers.is_empty() => m
            .headers
            .iter()
            .map(|h| h.key.to_ascii_lowercase())
            .collect(),
        _ => http
            .headers
            .keys()
            .map(|k| k.to_ascii_lowercase())
            .collect(),
    };
    let path = if http.path.is_empty() {
        "/"
    } else {
        http.path.as_str()
    };
    match resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(resp.status.as_ref().map(|s| s.code), Some(0));
            let set: Vec<&str> = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| h.key.as_str())
                .collect();
            for k in &set {
                assert!(
                    k.starts_with("x-sift-spam-") || *k == "x-sift-cluster",
                    "sets {k}: {set:?}"
                );
            }
            for k in &sent {
                if (k.starts_with("x-sift-") || k.contains('_')) && !set.contains(&k.as_str()) {
                    assert!(
                        ok.headers_to_remove.iter().any(|r| r == k),
                        "{k} sent, neither set nor removed: {:?}",
                        ok.headers_to_remove
                    );
                }
            }
            let route = resp
                .dynamic_metadata
                .as_ref()
                .and_then(|m| m.fields.get("route"))
                .and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            if route == "admin" {
                assert!(
                    principal.starts_with("spiffe://td.example/ns/ops/"),
                    "admin admitted for {principal:?}"
                );
            }
            let app = app_path(path);
            assert!(
                !app.split('/').any(|seg| seg == "." || seg == ".."),
                "admitted with a dot segment: {path:?} ({app:?})"
            );
            if app == "/admin" || app.starts_with("/admin/") {
                assert_eq!(route, "admin", "{path:?} read as {app:?}");
            }
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(resp.status.as_ref().map(|s| s.code), Some(7));
            let status = d.status.as_ref().map_or(0, |s| s.code);
            assert!((200..600).contains(&status), "status {status}");
            assert_ne!(status, 500, "an internal error: {}", d.body);
            let error = d
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .any(|h| h.key == "x-sift-error");
            let overloaded = d
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .any(|h| h.key == "x-sift-error" && h.value == "overloaded");
            assert!(
                !overloaded || (status == 503 && body_len > 1024),
                "overloaded ({status}) for a {body_len}-byte body"
            );
            let local = matches!(status, 200 | 204 | 308);
            assert!(
                error || local,
                "status {status} without x-sift-error: {}",
                d.body
            );
        }
        other => panic!("neither allowed nor denied: {other:?}"),
    }
});
