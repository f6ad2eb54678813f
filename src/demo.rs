//! `sift demo`: two built-in echo upstreams, "stable" and "canary", each
//! answering with its name, the request line and the headers it received,
//! behind sift on the dev ports.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::body::{self, Body};

pub const STABLE_ADDR: &str = "127.0.0.1:3000";
pub const CANARY_ADDR: &str = "127.0.0.1:3001";

/// The demo's sift config: a canary split 80/20, a header that forces the
/// canary, edge security headers on every response, and the two built-in
/// classifiers on the request path (spam: annotate, block and an answer
/// route; CI logs: an answer route).
pub const CONFIG: &str = r#"
log: { format: text, level: info, access_log: true }
admin: { address: "127.0.0.1:9901" }
listeners:
  - name: main
    address: "127.0.0.1:8080"
filters:
  - { name: spam, kind: spam }
  - { name: cilog, kind: cilog }
routes:
  - name: comments
    match: { path: { prefix: /comments } }
    cluster: stable
    filters: [ { filter: spam, mode: annotate } ]
  - name: contact
    match: { path: { prefix: /contact } }
    cluster: stable
    filters: [ { filter: spam, mode: block } ]
  - name: classify-spam
    match: { path: { exact: /classify/spam } }
    answer: spam
  - name: classify-ci
    match: { path: { exact: /classify/ci } }
    answer: cilog
    max_request_body: 100MiB
  - name: force-canary
    match:
      headers: [{ name: x-canary, exact: "yes" }]
    cluster: canary
  - name: default
    match: { path: { prefix: / } }
    clusters:
      - { name: stable, weight: 80 }
      - { name: canary, weight: 20 }
    canary:
      stable: stable
      canary: canary
      sticky: { header: x-user }
      override: { header: x-sift-canary }
      version_header: x-sift-version
    response_headers:
      set:
        strict-transport-security: "max-age=31536000; includeSubDomains"
        x-content-type-options: nosniff
        x-frame-options: DENY
clusters:
  - name: stable
    endpoints: ["127.0.0.1:3000"]
  - name: canary
    endpoints: ["127.0.0.1:3001"]
"#;

pub const TRY: &str = "\
sift demo is running: sift on http://127.0.0.1:8080, admin on http://127.0.0.1:9901,
echo upstreams \"stable\" (127.0.0.1:3000) and \"canary\" (127.0.0.1:3001).
Try:
  curl -i http://127.0.0.1:8080/hello                  # 80% stable, 20% canary
  for i in $(seq 20); do curl -s http://127.0.0.1:8080/ | head -1; done
  curl -i -H 'x-canary: yes' http://127.0.0.1:8080/    # always canary (header route)
  curl -si -H 'x-user: alice' http://127.0.0.1:8080/ | grep x-sift-version   # sticky per user
  curl -si -H 'x-sift-canary: never' http://127.0.0.1:8080/ | grep x-sift-version
  curl -s http://127.0.0.1:9901/canary                 # weights, rollout, per-version stats
  curl -s -XPUT -d '{\"weights\":{\"stable\":50,\"canary\":50}}' http://127.0.0.1:9901/canary/default
  curl -i -H 'x-sift-spoof: 1' http://127.0.0.1:8080/  # x-sift-* never reaches the app
  curl -s http://127.0.0.1:9901/metrics | grep sift_requests_total
  curl -s http://127.0.0.1:9901/config
Classifiers on the request path (built-in models):
  curl -s -d 'WINNER! Claim your £900 prize: call 09061701461 now' http://127.0.0.1:8080/comments | grep x-sift-spam
  curl -si -d 'Your account is suspended. Verify your password at http://192.0.2.7/secure' http://127.0.0.1:8080/contact
  curl -s -d 'See you at lunch tomorrow?' http://127.0.0.1:8080/classify/spam
  printf 'npm ERR! 404 Not Found - GET https://registry.npmjs.org/left-pad-x\\n' | curl -s -H 'content-type: text/plain' --data-binary @- http://127.0.0.1:8080/classify/ci
  curl -s http://127.0.0.1:9901/filters                # the filters and their models
Stop with Ctrl-C (sift drains in-flight requests, then exits).
";

/// Bind and serve an echo upstream named `name`.
pub async fn spawn_echo(name: &'static str, addr: &str) -> std::io::Result<SocketAddr> {
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("demo upstream {name} cannot bind {addr}: {e}"),
        )
    })?;
    let local = tcp.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req| echo(name, req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

async fn echo(name: &'static str, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut text = format!(
        "upstream: {name}\nrequest: {} {} {:?}\nheaders:\n",
        req.method(),
        req.uri(),
        req.version()
    );
    for (k, v) in req.headers() {
        text.push_str(&format!(
            "  {k}: {}\n",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    let n = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    text.push_str(&format!("body bytes: {n}\n"));
    let mut r = Response::new(body::full(Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(r)
}
