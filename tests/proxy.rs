//! Data path: routing, the error map, header hygiene, HTTP/2, upgrades,
//! streaming. Every test runs the real sift binary against real upstreams.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use sift::body;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).expect("upstream answers JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_on_host_path_method_and_headers_first_match_wins() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let c = Upstream::echo("c").await;
    let d = Upstream::echo("d").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: exact
    match: {{ path: {{ exact: /exact }} }}
    cluster: a
  - name: api-post
    match: {{ path: {{ prefix: /api }}, methods: [POST] }}
    cluster: b
  - name: hosted
    match: {{ host: ["*.example.com"], headers: [{{ name: x-env, exact: beta }}] }}
    cluster: c
  - name: api
    match: {{ path: {{ prefix: /api }} }}
    cluster: d
clusters:
  - {{ name: a, endpoints: ["{}"] }}
  - {{ name: b, endpoints: ["{}"] }}
  - {{ name: c, endpoints: ["{}"] }}
  - {{ name: d, endpoints: ["{}"] }}
"#,
        a.addr, b.addr, c.addr, d.addr
    );
    let sift = Sift::start(&cfg);
    let go = |method: &str, path: &str, host: &str, env: Option<&str>| {
        let mut r = Request::builder()
            .method(method)
            .uri(sift.url(path))
            .header("host", host);
        if let Some(e) = env {
            r = r.header("x-env", e);
        }
        send(r.body(body::empty()).unwrap())
    };
    let name = |r: http::Response<Bytes>| {
        if r.status() == 200 {
            json(r.body())["name"].as_str().unwrap().to_string()
        } else {
            r.status().to_string()
        }
    };
    assert_eq!(name(go("GET", "/exact", "x", None).await), "a");
    assert_eq!(name(go("POST", "/api/v1", "x", None).await), "b");
    assert_eq!(name(go("GET", "/api/v1", "x", None).await), "d");
    assert_eq!(name(go("GET", "/api", "x", None).await), "d");
    // Segment boundary: /apix is not under /api.
    let r = go("GET", "/apix", "x", None).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-sift-error"], "no-route");
    assert_eq!(
        name(go("GET", "/", "web.example.com:8080", Some("beta")).await),
        "c"
    );
    assert_eq!(
        name(go("GET", "/", "WEB.Example.com", Some("beta")).await),
        "c"
    );
    assert_eq!(
        go("GET", "/", "example.com", Some("beta")).await.status(),
        404
    );
    assert_eq!(
        go("GET", "/", "web.example.com", Some("prod"))
            .await
            .status(),
        404
    );
    // Query strings do not affect path matching and are forwarded.
    let r = go("GET", "/exact?q=1", "x", None).await;
    assert_eq!(json(r.body())["uri"], "/exact?q=1");
    assert_eq!(
        sift.metric(r#"sift_errors_total{kind="no-route"}"#).await,
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn error_map_status_body_and_header() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let _ = req.into_body().collect().await;
        text_response(200, "ok")
    })
    .await;
    let refusing = refused_port();
    let closed = refusing.addr;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    limits: {{ max_header_bytes: 4KiB, max_headers: 20 }}
routes:
  - {{ name: refused, match: {{ path: {{ prefix: /refused }} }}, cluster: refused }}
  - {{ name: empty, match: {{ path: {{ prefix: /empty }} }}, cluster: empty }}
  - name: app
    match: {{ path: {{ prefix: / }} }}
    cluster: app
    timeout: 300ms
    max_request_body: 1KiB
clusters:
  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: refused, endpoints: ["{closed}"], connect_timeout: 500ms }}
  - {{ name: empty, endpoints: [] }}
"#,
        up.addr
    );
    let sift = Sift::start(&cfg);
    let check = |r: &http::Response<Bytes>, status: u16, kind: &str| {
        assert_eq!(r.status(), status, "{r:?}");
        assert_eq!(r.headers()["x-sift-error"], kind);
        assert!(r.headers().contains_key("x-request-id"));
        let text = String::from_utf8_lossy(r.body());
        assert!(text.starts_with(&status.to_string()), "short body: {text}");
    };
    // 502: connection refused.
    let r = send(
        Request::get(sift.url("/refused"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    check(&r, 502, "upstream-connect-failure");
    // 503: no endpoint.
    let r = send(
        Request::get(sift.url("/empty"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    check(&r, 503, "no-healthy-endpoint");
    // 504: upstream slower than the route timeout.
    let t = std::time::Instant::now();
    let r = send(Request::get(sift.url("/slow")).body(body::empty()).unwrap()).await;
    check(&r, 504, "upstream-timeout");
    assert!(t.elapsed() < Duration::from_secs(3));
    // 413: declared length over the route limit, and streamed (chunked) over it.
    let r = send(
        Request::post(sift.url("/up"))
            .body(full(vec![b'x'; 2048]))
            .unwrap(),
    )
    .await;
    check(&r, 413, "body-too-large");
    let (tx, stream_body) = channel_body(4);
    tokio::spawn(async move {
        for _ in 0..8 {
            if tx.send(Bytes::from(vec![b'y'; 512])).await.is_err() {
                break;
            }
        }
    });
    let r = send(Request::post(sift.url("/up")).body(stream_body).unwrap()).await;
    check(&r, 413, "body-too-large");
    // Under the limit passes.
    let r = send(
        Request::post(sift.url("/up"))
            .body(full(vec![b'x'; 1000]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    // 431: too many bytes of headers, and too many headers.
    let r = send(
        Request::get(sift.url("/"))
            .header("x-big", "v".repeat(5000))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    check(&r, 431, "headers-too-large");
    let mut req = Request::get(sift.url("/"));
    for i in 0..25 {
        req = req.header(format!("x-h{i}"), "1");
    }
    let r = send(req.body(body::empty()).unwrap()).await;
    check(&r, 431, "headers-too-large");
    // 400: HTTP/1.1 without Host, and a path with dot-segments (raw sockets).
    let raw = raw_exchange(sift.addr(), b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("x-sift-error: malformed-request"), "{raw}");
    for path in ["/a/../admin", "/api/%2e%2e/admin", "/api/.%2E/admin"] {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let raw = raw_exchange(sift.addr(), req.as_bytes()).await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{path}: {raw}");
    }
    // Garbage is answered 400 by the HTTP codec and counted.
    let raw = raw_exchange(sift.addr(), b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(
        sift.metric_reaches(
            r#"sift_downstream_protocol_errors_total{listener="main"}"#,
            1.0,
            Duration::from_secs(2)
        )
        .await
    );
    for (kind, n) in [
        ("upstream-connect-failure", 1.0),
        ("no-healthy-endpoint", 1.0),
        ("upstream-timeout", 1.0),
        ("body-too-large", 2.0),
        ("headers-too-large", 2.0),
        ("malformed-request", 4.0),
    ] {
        assert_eq!(
            sift.metric(&format!(r#"sift_errors_total{{kind="{kind}"}}"#))
                .await,
            Some(n),
            "{kind}"
        );
    }
    assert_eq!(
        sift.metric(r#"sift_upstream_connect_errors_total{cluster="refused"}"#)
            .await,
        Some(1.0)
    );
}

/// Write raw bytes, read until the server closes (or 3 s).
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// An upstream that answers the body it read, with its `x-checksum`
/// trailer in `x-got-trailer` (`none` without one).
async fn trailer_echo() -> Upstream {
    Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let c = req.into_body().collect().await.unwrap();
        let got = c
            .trailers()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "none".into());
        let mut r = http::Response::new(body::full(c.to_bytes()));
        r.headers_mut()
            .insert("x-got-trailer", got.parse().unwrap());
        r
    })
    .await
}

/// Request trailers (chunked, declared in `Trailer`) reach the upstream:
/// `Trailer` is end to end, and an HTTP/1.1 sender only sends the fields
/// it declares.
#[tokio::test(flavor = "multi_thread")]
async fn request_trailers_reach_the_upstream() {
    let up = trailer_echo().await;
    let sift = Sift::start(&simple_config(up.addr, ""));
    let out = raw_exchange(
        sift.addr(),
        b"POST /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\
          Trailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-got-trailer: abc"), "{out}");
    assert!(out.contains("hello"), "{out}");
}

/// Trailers carry nothing sift or framing owns, either way: `x-sift-*`
/// (a client could forge a verdict, an app an error), hop-by-hop fields,
/// and those RFC 9110 §6.5.1 keeps out of trailers (`Content-Length`,
/// `Host`, `Authorization`, ...), which an app that merges trailers into
/// its headers would take as framing or routing. An HTTP/2 app gets
/// every request trailer sift passes, so it shows what is left; on a
/// streamed body and on one a filter held.
#[tokio::test(flavor = "multi_thread")]
async fn trailers_carry_nothing_sift_or_framing_owns() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let c = req.into_body().collect().await.unwrap();
        let mut names: Vec<String> = c
            .trailers()
            .map(|t| t.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        names.sort();
        let mut t = http::HeaderMap::new();
        t.insert("x-sift-error", "forged".parse().unwrap());
        t.insert("content-length", "99".parse().unwrap());
        t.insert("x-app-sum", "ok".parse().unwrap());
        let mut r = http::Response::new(body::boxed(GrpcBody(Some(c.to_bytes()), Some(t))));
        r.headers_mut()
            .insert("x-trailer-names", names.join(",").parse().unwrap());
        r
    })
    .await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
filters:
  - {{ name: spam, kind: spam }}
routes:
  - name: held
    match: {{ path: {{ prefix: /held }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: annotate }} ]
  - {{ name: plain, cluster: app }}
clusters:
  - {{ name: app, endpoints: ["{}"], protocol: http2 }}
"#,
        up.addr
    );
    let sift = Sift::start(&cfg);
    for path in ["/plain", "/held"] {
        let mut t = http::HeaderMap::new();
        for (k, v) in [
            ("x-checksum", "abc"),
            ("x-sift-spam-verdict", "ham"),
            ("content-length", "1"),
            ("host", "evil.example"),
            ("authorization", "Bearer forged"),
        ] {
            t.insert(k, v.parse().unwrap());
        }
        let req = Request::post(sift.url(path))
            .header("content-type", "text/plain")
            .body(body::boxed(GrpcBody(
                Some(Bytes::from_static(b"hello")),
                Some(t),
            )))
            .unwrap();
        let resp = http2_client().request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["x-trailer-names"], "x-checksum", "{path}");
        let c = resp.into_body().collect().await.unwrap();
        let t = c.trailers().cloned().unwrap_or_default();
        assert_eq!(
            t.get("x-app-sum").map(|v| v.as_bytes()),
            Some(&b"ok"[..]),
            "{path}"
        );
        assert!(
            t.get("x-sift-error").is_none() && t.get("content-length").is_none(),
            "{path}: {t:?}"
        );
        assert_eq!(c.to_bytes(), "hello");
    }
}

/// An upstream that answers with the protocol and host each request
/// came with (`x-version`, `x-host`: :authority on HTTP/2, else Host); a
/// gRPC call also gets `grpc-status: 0` in trailers.
async fn version_upstream() -> Upstream {
    Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let version = format!("{:?}", req.version());
        let host = match req.uri().authority() {
            Some(a) if req.version() == http::Version::HTTP_2 => a.to_string(),
            _ => req
                .headers()
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .unwrap_or_default(),
        };
        let grpc = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let _ = req.into_body().collect().await;
        let mut r = if grpc {
            grpc_answer("0")
        } else {
            text_response(200, "ok")
        };
        r.headers_mut()
            .insert("x-version", version.parse().unwrap());
        r.headers_mut().insert("x-host", host.parse().unwrap());
        r
    })
    .await
}

/// `protocol: client` (Envoy's `use_downstream_protocol_config`, Istio's
/// `useClientProtocol`): each request goes upstream in the protocol its
/// client spoke, for an app that serves REST and gRPC on one port. An
/// HTTP/1.1 request goes over HTTP/1.1 with its Host, an HTTP/2 one (a
/// gRPC call too, its trailers back) over HTTP/2 with the host as
/// :authority; each protocol keeps its own connection alive. An `http1`
/// cluster sends HTTP/2 clients' requests over HTTP/1.1, as before.
#[tokio::test(flavor = "multi_thread")]
async fn client_protocol_clusters_follow_the_clients_protocol() {
    let both = version_upstream().await;
    let h1_only = version_upstream().await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: fixed, match: {{ path: {{ prefix: /fixed }} }}, cluster: h1 }}
  - {{ name: follow, cluster: app }}
clusters:
  - {{ name: app, endpoints: ["{}"], protocol: client }}
  - {{ name: h1, endpoints: ["{}"] }}
"#,
        both.addr, h1_only.addr
    );
    let sift = Sift::start(&cfg);
    let host = sift.addr().to_string();
    let (h1, h2) = (http1_client(), http2_client());
    for round in 0..3 {
        let r = h1
            .request(Request::get(sift.url("/rest")).body(body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-version"], "HTTP/1.1", "round {round}");
        assert_eq!(r.headers()["x-host"], host.as_str());
        let _ = r.into_body().collect().await;

        let r = h2
            .request(Request::get(sift.url("/rest")).body(body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-version"], "HTTP/2.0", "round {round}");
        assert_eq!(r.headers()["x-host"], host.as_str());
        let _ = r.into_body().collect().await;

        let call = Request::post(sift.url("/pkg.Svc/Call"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body::full(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let r = h2.request(call).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-version"], "HTTP/2.0");
        let c = r.into_body().collect().await.unwrap();
        let t = c.trailers().cloned().unwrap_or_default();
        assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    }
    assert_eq!(
        both.connections.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "one kept-alive connection per protocol"
    );
    assert_eq!(both.requests.load(std::sync::atomic::Ordering::Relaxed), 9);
    let r = h2
        .request(
            Request::get(sift.url("/fixed"))
                .body(body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.headers()["x-version"], "HTTP/1.1", "an http1 cluster");
}

/// Routes that hold the body before forwarding it (a filter in annotate
/// or block mode, a spooling filter, request buffering, retries) and a
/// plain one, to `a`.
fn trailer_routes(a: std::net::SocketAddr) -> String {
    format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [ {{ name: main, address: "127.0.0.1:0" }} ]
filters:
  - {{ name: spam, kind: spam }}
routes:
  - name: annotate
    match: {{ path: {{ prefix: /annotate }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: annotate }} ]
  - name: block
    match: {{ path: {{ prefix: /block }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: block }} ]
  - name: spool
    match: {{ path: {{ prefix: /spool }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: annotate, max_inspect_bytes: 4B, on_oversize: spool }} ]
  - name: buffered
    match: {{ path: {{ prefix: /buffered }} }}
    cluster: app
    request_buffering: {{ in_memory: 4B }}
  - name: retried
    match: {{ path: {{ prefix: /retried }} }}
    cluster: app
    retries: {{ attempts: 2, non_idempotent: true }}
  - name: plain
    cluster: app
clusters:
  - name: app
    endpoints: ["{a}"]
"#
    )
}

/// A chunked HTTP/1.1 POST of `hello there` with an `x-checksum: abc`
/// trailer, declared in `Trailer` or not, to `path` on a
/// [`trailer_echo`] upstream: what went wrong, if anything.
async fn h1_trailer_post(sift: &Sift, path: &str, declared: bool) -> Option<String> {
    let trailer = if declared {
        "Trailer: x-checksum\r\n"
    } else {
        ""
    };
    let out = raw_exchange(
        sift.addr(),
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n{trailer}\r\n\
             5\r\nhello\r\n6\r\n there\r\n0\r\nx-checksum: abc\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let ok = out.starts_with("HTTP/1.1 200")
        && out.contains("x-got-trailer: abc")
        && out.contains("hello there");
    (!ok).then(|| format!("h1 {path} declared={declared}: {out}"))
}

/// The same on routes that hold the body before forwarding it: a filter
/// in annotate or block mode (held in memory), a spooling filter, request
/// buffering and retries. A held body is sent with its length when it has
/// no trailers; with trailers it stays chunked, so they still arrive.
#[tokio::test(flavor = "multi_thread")]
async fn request_trailers_survive_a_held_body() {
    let up = trailer_echo().await;
    let sift = Sift::start(&trailer_routes(up.addr));
    let mut lost = Vec::new();
    for path in ["/annotate", "/block", "/spool", "/buffered", "/retried"] {
        lost.extend(h1_trailer_post(&sift, path, true).await);
    }
    assert!(lost.is_empty(), "{lost:#?}");
}

/// An HTTP/2 client's body with both a Content-Length and trailers, on a
/// route whose retries hold such a body for replay, to an HTTP/2
/// upstream: the trailers arrive (that body is sent once, not replayed).
#[tokio::test(flavor = "multi_thread")]
async fn h2_request_trailers_survive_a_retry_buffer() {
    let up = trailer_echo().await;
    let a = up.addr;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [ {{ name: main, address: "127.0.0.1:0" }} ]
routes:
  - name: retried
    cluster: app
    retries: {{ attempts: 2, non_idempotent: true }}
clusters:
  - {{ name: app, endpoints: ["{a}"], protocol: http2 }}
"#
    ));
    let mut t = http::HeaderMap::new();
    t.insert("x-checksum", "abc".parse().unwrap());
    let req = Request::post(sift.url("/r"))
        .header("content-length", "11")
        .header("content-type", "text/plain")
        .body(body::boxed(GrpcBody(
            Some(Bytes::from_static(b"hello there")),
            Some(t),
        )))
        .unwrap();
    let r = http2_client().request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-got-trailer"], "abc");
    let b = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&b[..], b"hello there");
}

/// Request trailers reach an HTTP/1.1 upstream however the client sent
/// them: an HTTP/2 client's body with a Content-Length and declared
/// trailers goes chunked (a Content-Length body has no room for them), and
/// undeclared trailers of a body sift reads whole before sending it (a
/// filter, request buffering, a retry buffer) are declared for the client,
/// since an HTTP/1.1 sender sends only the fields `Trailer` names.
#[tokio::test(flavor = "multi_thread")]
async fn request_trailers_reach_an_http1_upstream_however_sent() {
    let up = trailer_echo().await;
    let sift = Sift::start(&trailer_routes(up.addr));
    let mut lost = Vec::new();
    // HTTP/2 client: (path, with a Content-Length, declared in `Trailer`).
    for (path, length, declared) in [
        ("/plain", true, true),
        ("/annotate", true, true),
        ("/annotate", true, false),
        ("/annotate", false, false),
        ("/spool", true, false),
        ("/buffered", true, false),
        ("/buffered", false, false),
        ("/retried", true, false),
    ] {
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", "abc".parse().unwrap());
        let mut req = Request::post(sift.url(path)).header("content-type", "text/plain");
        if length {
            req = req.header("content-length", "11");
        }
        if declared {
            req = req.header("trailer", "x-checksum");
        }
        let req = req
            .body(body::boxed(GrpcBody(
                Some(Bytes::from_static(b"hello there")),
                Some(t),
            )))
            .unwrap();
        let r = http2_client().request(req).await.unwrap();
        let got = r
            .headers()
            .get("x-got-trailer")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = r.status();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        if !(status == 200 && got.as_deref() == Some("abc") && &b[..] == b"hello there") {
            lost.push(format!(
                "h2 {path} length={length} declared={declared}: {status} {got:?} {b:?}"
            ));
        }
    }
    // HTTP/1.1 client, chunked, trailers not declared.
    for path in ["/annotate", "/spool", "/buffered"] {
        lost.extend(h1_trailer_post(&sift, path, false).await);
    }
    assert!(lost.is_empty(), "{lost:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_hygiene_forwarded_headers_and_request_id() {
    let up = Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        let mut r = text_response(200, "ok");
        let h = r.headers_mut();
        h.insert("connection", "x-internal".parse().unwrap());
        h.insert("x-internal", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-powered-by", "php".parse().unwrap());
        h.insert("x-sift-error", "forged-by-upstream".parse().unwrap());
        r
    })
    .await;
    let echo = Upstream::echo("echo").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: resp
    match: {{ path: {{ prefix: /resp }} }}
    cluster: up
    response_headers:
      set: {{ strict-transport-security: "max-age=31536000", x-frame-options: DENY }}
      remove: [x-powered-by]
  - name: echo
    cluster: echo
    request_headers:
      set: {{ x-route: echo }}
      add: {{ x-added: one }}
      remove: [x-drop-me]
clusters:
  - {{ name: up, endpoints: ["{}"] }}
  - {{ name: echo, endpoints: ["{}"] }}
"#,
        up.addr, echo.addr
    );
    let sift = Sift::start(&cfg);
    let r = send(
        Request::get(sift.url("/echo"))
            .header("host", "shop.example")
            .header("x-sift-spam-verdict", "ham")
            .header("X-Sift-Anything", "1")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-for", "198.51.100.2, 192.0.2.1")
            .header("x-forwarded-proto", "https")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("x-drop-me", "1")
            .header("x-added", "zero")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v = json(r.body());
    let h = &v["headers"];
    for gone in [
        "x-sift-spam-verdict",
        "x-sift-anything",
        "x-hop",
        "keep-alive",
        "x-drop-me",
    ] {
        assert!(
            h.get(gone).is_none(),
            "{gone} must not reach the upstream: {h}"
        );
    }
    assert_eq!(h["te"][0], "trailers");
    assert_eq!(
        h["x-forwarded-for"],
        serde_json::json!(["203.0.113.9, 198.51.100.2, 192.0.2.1, 127.0.0.1"]),
        "every client XFF header is folded into one, in order"
    );
    assert_eq!(
        h["x-forwarded-proto"][0], "http",
        "sift sets the proto it saw"
    );
    assert_eq!(h["x-forwarded-host"][0], "shop.example");
    assert_eq!(h["host"][0], "shop.example", "Host is preserved");
    assert_eq!(
        h["traceparent"][0],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(h["x-route"][0], "echo");
    assert_eq!(h["x-added"], serde_json::json!(["zero", "one"]));
    // A request id is generated (UUID v4), sent upstream and echoed back.
    let rid = h["x-request-id"][0].as_str().unwrap();
    assert_eq!(rid.len(), 36);
    assert_eq!(r.headers()["x-request-id"], rid);
    // A client's request id is propagated.
    let r = send(
        Request::get(sift.url("/echo"))
            .header("x-request-id", "req-42")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(json(r.body())["headers"]["x-request-id"][0], "req-42");
    assert_eq!(r.headers()["x-request-id"], "req-42");
    // Response side: hop-by-hop and Connection-named headers removed, ops applied.
    let r = send(Request::get(sift.url("/resp")).body(body::empty()).unwrap()).await;
    assert!(r.headers().get("x-internal").is_none());
    assert!(r.headers().get("keep-alive").is_none());
    assert!(r.headers().get("x-powered-by").is_none());
    assert!(
        r.headers().get("x-sift-error").is_none(),
        "upstreams cannot set x-sift-*"
    );
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    // One JSON access-log line per request, with the request id.
    assert!(
        eventually(Duration::from_secs(2), || async {
            sift.log_lines().iter().any(|l| {
                l.contains("\"message\":\"access\"")
                    && l.contains("req-42")
                    && l.contains("\"status\":200")
            })
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_mode_distrusts_client_forwarded_for() {
    let echo = Upstream::echo("echo").await;
    let cfg = simple_config(echo.addr, "").replace(
        "    address: \"127.0.0.1:0\"\n",
        "    address: \"127.0.0.1:0\"\n    forwarded: { x_forwarded_for: replace }\n",
    );
    let sift = Sift::start(&cfg);
    let r = send(
        Request::get(sift.url("/"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-host", "evil.example")
            .header("host", "good.example")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    let v = json(r.body());
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
    assert_eq!(
        v["headers"]["x-forwarded-host"],
        serde_json::json!(["good.example"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_downstream_and_upstream() {
    let echo = Upstream::echo("h2").await;
    let cfg = simple_config(echo.addr, "").replace(
        &format!("endpoints: [\"{}\"]", echo.addr),
        &format!("endpoints: [\"{}\"]\n    protocol: http2", echo.addr),
    );
    let sift = Sift::start(&cfg);
    let client = http2_client();
    // One request first: requests that race the client's first handshake
    // can each open a connection (the client's doing, not sift's), so the
    // 20 below all find the established one.
    let r = client
        .request(
            Request::post(sift.url("/h2/warm"))
                .body(full(vec![b'a'; 10]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    r.into_body().collect().await.unwrap();
    let mut handles = Vec::new();
    for i in 0..20 {
        let (c, url) = (client.clone(), sift.url(&format!("/h2/{i}")));
        handles.push(tokio::spawn(async move {
            let r = c
                .request(Request::post(url).body(full(vec![b'a'; 1000 + i])).unwrap())
                .await
                .unwrap();
            assert_eq!(r.version(), http::Version::HTTP_2);
            let b = r.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["version"], "HTTP/2.0");
            assert_eq!(v["body_len"], 1000 + i);
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    // All 21 streams rode one downstream connection, and the upstream side
    // multiplexed too.
    assert_eq!(
        sift.metric(r#"sift_connections_total{listener="main"}"#)
            .await,
        Some(1.0)
    );
    assert!(echo.connections.load(std::sync::atomic::Ordering::Relaxed) <= 2);
    // HTTP/1.1 clients still work on the same (auto) listener.
    let r = send(Request::get(sift.url("/h1")).body(body::empty()).unwrap()).await;
    assert_eq!(json(r.body())["version"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_is_tunnelled() {
    let up = Upstream::start(|mut req: Request<hyper::body::Incoming>| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on.await {
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut out = b"echo:".to_vec();
                            out.extend_from_slice(&buf[..n]);
                            if io.write_all(&out).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut r = http::Response::new(body::empty());
        *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut().insert(
            "sec-websocket-accept",
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
        );
        r
    })
    .await;
    let sift = Sift::start(&simple_config(up.addr, ""));
    let (mut s, head) = websocket_request(&sift).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("sec-websocket-accept"), "{head}");
    for msg in ["hello", "second frame"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 5 + msg.len()];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
            .await
            .expect("tunnel answers")
            .unwrap();
        assert_eq!(buf, format!("echo:{msg}").as_bytes());
    }
    assert_eq!(
        sift.metric(r#"sift_upgrades_total{route="default"}"#).await,
        Some(1.0)
    );
    // The tunnel still counts as an open connection after hyper let go of it.
    assert_eq!(
        sift.metric(r#"sift_active_connections{listener="main"}"#)
            .await,
        Some(1.0)
    );
    drop(s);
    assert!(
        eventually(Duration::from_secs(3), || async {
            sift.metric(r#"sift_active_connections{listener="main"}"#)
                .await
                == Some(0.0)
        })
        .await,
        "closing the tunnel frees the connection"
    );

    // A tunnel where nothing moves either way for the cluster's
    // read_timeout is closed (Envoy's stream idle timeout, nginx's
    // proxy_read_timeout); one that keeps talking is not.
    let cfg = simple_config(up.addr, "").replace(
        &format!("    endpoints: [\"{}\"]\n", up.addr),
        &format!(
            "    endpoints: [\"{}\"]\n    read_timeout: 400ms\n",
            up.addr
        ),
    );
    assert!(cfg.contains("read_timeout: 400ms"), "{cfg}");
    let sift = Sift::start(&cfg);
    let (mut s, head) = websocket_request(&sift).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let talking = std::time::Instant::now();
    while talking.elapsed() < Duration::from_millis(1200) {
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
            .await
            .expect("an active tunnel stays open past read_timeout")
            .unwrap();
        assert_eq!(&buf, b"echo:ping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quiet = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the idle tunnel is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, nothing sent");
    assert!(
        quiet.elapsed() >= Duration::from_millis(350),
        "not before the timeout: {:?}",
        quiet.elapsed()
    );
    assert!(
        sift.metric_reaches(
            r#"sift_connections_closed_total{listener="main",reason="upgrade_idle_timeout"}"#,
            1.0,
            Duration::from_secs(3)
        )
        .await
    );
}

/// 200 MB up and 200 MB down through sift; its peak RSS stays under 64 MB.
#[tokio::test(flavor = "multi_thread")]
async fn streams_200mb_each_way_in_bounded_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        if req.method() == http::Method::POST {
            // Count the upload as it streams in.
            let mut b = req.into_body();
            let mut n = 0u64;
            while let Some(f) = b.frame().await {
                if let Ok(d) = f.map(|f| f.into_data()) {
                    n += d.map(|d| d.len() as u64).unwrap_or(0);
                } else {
                    break;
                }
            }
            json_response(200, &serde_json::json!({ "received": n }))
        } else {
            http::Response::new(body::boxed(Generated { left: SIZE }))
        }
    })
    .await;
    let sift = Sift::start(&simple_config(up.addr, "    max_request_body: 1GiB\n"));
    // Download.
    let r = http1_client()
        .request(Request::get(sift.url("/big")).body(body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut b = r.into_body();
    let mut n = 0u64;
    while let Some(f) = b.frame().await {
        n += f.unwrap().into_data().map(|d| d.len() as u64).unwrap_or(0);
    }
    assert_eq!(n, SIZE, "every byte of the response arrives");
    // Upload, chunked (no Content-Length), 64 KiB at a time.
    let (tx, upload) = channel_body(8);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'u'; 65536]);
        for _ in 0..(SIZE / 65536) {
            if tx.send(chunk.clone()).await.is_err() {
                break;
            }
        }
    });
    let r = send(Request::post(sift.url("/big")).body(upload).unwrap()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json(r.body())["received"], SIZE);
    let peak_kb = sift.proc_status_kb("VmHWM");
    assert!(peak_kb > 0, "read /proc/PID/status");
    assert!(
        peak_kb < 64 * 1024,
        "sift's peak RSS was {peak_kb} kB moving 2 x 200 MB"
    );
    eprintln!("peak RSS while streaming 2 x 200 MB: {peak_kb} kB");
}

/// A raw HTTP/1.1 upstream: answers every request on a connection with a
/// small keep-alive response, closes each connection `close_after` after
/// its first response (a server dropping idle keep-alive connections), and
/// reports when a peer closes a connection first.
async fn raw_upstream(
    close_after: Option<Duration>,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (eof_tx, eof_rx) = tokio::sync::mpsc::unbounded_channel();
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                return;
            };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let eof_tx = eof_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        let _ = eof_tx.send(());
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        if let Some(d) = close_after {
                            tokio::time::sleep(d).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns, eof_rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_pool_reuses_recovers_and_expires() {
    use std::sync::atomic::Ordering::SeqCst;
    // Keep-alive reuse, including bodiless responses (204, HEAD), whose
    // body hyper never polls: one upstream connection for all of them.
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/none" {
            http::Response::builder()
                .status(204)
                .body(body::empty())
                .unwrap()
        } else {
            text_response(200, "hello")
        }
    })
    .await;
    let sift = Sift::start(&simple_config(up.addr, ""));
    for i in 0..30 {
        let (method, path) = match i % 3 {
            0 => ("GET", "/text"),
            1 => ("GET", "/none"),
            _ => ("HEAD", "/text"),
        };
        let r = send(
            Request::builder()
                .method(method)
                .uri(sift.url(path))
                .body(body::empty())
                .unwrap(),
        )
        .await;
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    }
    assert_eq!(up.requests.load(SeqCst), 30);
    assert_eq!(
        up.connections.load(SeqCst),
        1,
        "sequential requests share one connection"
    );
    drop(sift);

    // An upstream that closes each connection 50 ms after answering: the
    // pooled connection is stale by the next request, which still succeeds
    // on a new one.
    let (addr, conns, _eof) = raw_upstream(Some(Duration::from_millis(50))).await;
    let sift = Sift::start(&simple_config(addr, ""));
    for _ in 0..3 {
        let (code, body) = get_text(&sift.url("/")).await;
        assert_eq!((code, body.as_str()), (200, "ok"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(conns.load(SeqCst), 3);
    drop(sift);

    // idle_timeout: sift closes a pooled connection that sat idle too long,
    // and keeps one that did not.
    for (idle, expect_close) in [("300ms", true), ("60s", false)] {
        let (addr, conns, mut eof) = raw_upstream(None).await;
        let cfg = simple_config(addr, "").replace(
            &format!("endpoints: [\"{addr}\"]"),
            &format!("endpoints: [\"{addr}\"]\n    idle_timeout: {idle}"),
        );
        let sift = Sift::start(&cfg);
        let (code, _) = get_text(&sift.url("/")).await;
        assert_eq!(code, 200);
        let closed = tokio::time::timeout(Duration::from_secs(2), eof.recv())
            .await
            .is_ok();
        assert_eq!(closed, expect_close, "idle_timeout {idle}");
        assert_eq!(conns.load(SeqCst), 1);
    }
}

/// The keep-alive race: an app lets a kept-alive connection go (its
/// keep-alive timeout, a restart) just as sift sends the next request on
/// it, and the connection closes (or is reset) with no answer. On a
/// connection that sat idle (at least 1 ms, as any keep-alive timeout
/// needs), a bodiless
/// request with an idempotent method is sent once more on a new
/// connection, as nginx and Go's client do; anything else gets the 502,
/// since the app may have acted on it; a new connection that fails so is
/// not tried again.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_connection_closed_unanswered_is_sent_again() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    // Each connection answers its first request, then takes the second
    // and drops the connection: closed (FIN) or reset (RST) by `reset`;
    // `/never` is never answered at all.
    type Heads = Arc<std::sync::Mutex<Vec<String>>>;
    async fn racing(reset: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>, Heads) {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let heads = Heads::default();
        let kept = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let (count, kept) = (count.clone(), kept.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    for n in 0.. {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        // Bodies (`Content-Length: 3` below) are read too.
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        while buf.len() < end + len {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        buf.drain(..end + len);
                        kept.lock().unwrap().push(head.clone());
                        count.fetch_add(1, SeqCst);
                        if n == 1 || head.contains(" /never ") {
                            if reset {
                                s.set_zero_linger().unwrap();
                            }
                            return;
                        }
                        let answer: &[u8] = if head.starts_with("HEAD ") {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                        };
                        let _ = s.write_all(answer).await;
                    }
                });
            }
        });
        (addr, seen, heads)
    }
    for reset in [false, true] {
        let (addr, seen, heads) = racing(reset).await;
        let sift = Sift::start(&simple_config(addr, ""));
        // Each request comes after the connection sat idle a little: only
        // then can an app's keep-alive timeout have closed it.
        let call = |method: &'static str, path: &'static str, body: &'static str| {
            let url = sift.url(path);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                send(
                    Request::builder()
                        .method(method)
                        .uri(url)
                        .body(full(body))
                        .unwrap(),
                )
                .await
                .status()
                .as_u16()
            }
        };
        // The first request opens a connection; every later one meets the
        // race on the connection the one before left, and is answered on
        // a new connection, which the next one meets the race on.
        let mut calls = 0;
        for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "GET"] {
            for _ in 0..3 {
                assert_eq!(call(method, "/a", "").await, 200, "{method}, reset {reset}");
                calls += 1;
            }
        }
        assert_eq!(seen.load(SeqCst), 1 + 2 * (calls - 1), "reset {reset}");
        // The request goes again as it went the first time: every field,
        // repeated ones too, in order.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = send(
            Request::get(sift.url("/a?q=1"))
                .header("x-multi", "a")
                .header("x-one", "1")
                .header("x-multi", "b")
                .body(body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), 200);
        calls += 1;
        {
            let heads = heads.lock().unwrap();
            let (first, again) = (&heads[heads.len() - 2], &heads[heads.len() - 1]);
            assert_eq!(first, again, "reset {reset}");
            assert!(first.starts_with("GET /a?q=1 HTTP/1.1\r\n"), "{first}");
            assert!(first.contains("x-multi: a\r\nx-multi: b\r\n"), "{first}");
            assert!(
                first.contains("x-one: 1\r\n") && first.contains("x-request-id: "),
                "{first}"
            );
        }
        assert_eq!(seen.load(SeqCst), 1 + 2 * (calls - 1), "reset {reset}");
        let resent = r#"sift_retries_total{cluster="app",outcome="stale_connection"}"#;
        let resends = (calls - 1) as f64;
        assert_eq!(sift.metric(resent).await, Some(resends), "reset {reset}");
        // Not sent again: a POST, and a PUT with a body (the app may have
        // acted on them): a 502. The next request opens a new connection.
        for (method, body) in [("POST", ""), ("PUT", "abc")] {
            let before = seen.load(SeqCst);
            assert_eq!(
                call(method, "/a", body).await,
                502,
                "{method} {body:?}, reset {reset}"
            );
            assert_eq!(
                call(method, "/a", body).await,
                200,
                "{method} {body:?}, reset {reset}"
            );
            assert_eq!(seen.load(SeqCst), before + 2);
        }
        // Sent again once only: the new connection closing unanswered too
        // is the answer, a 502.
        let before = seen.load(SeqCst);
        assert_eq!(call("GET", "/never", "").await, 502, "reset {reset}");
        assert_eq!(seen.load(SeqCst), before + 2);
        let resends = resends + 1.0;
        assert_eq!(sift.metric(resent).await, Some(resends), "reset {reset}");
    }
}

/// An HTTP/2 app that refuses a stream unprocessed (RFC 9113 §8.7: a
/// GOAWAY whose last stream is below it, or `REFUSED_STREAM`) did not act
/// on it: a route with retries sends it again whatever the method, a POST
/// too (Envoy's and Istio's `refused-stream`), where a reset after the app
/// took the request is not retried for a POST. Without retries the client
/// gets the 502.
#[tokio::test(flavor = "multi_thread")]
async fn http2_refused_streams_are_retried_whatever_the_method() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    // A raw HTTP/2 app: request 1 gets a GOAWAY with last stream 0, request
    // 2 a REFUSED_STREAM reset, request 3 a reset with INTERNAL_ERROR
    // (taken, then failed), and later ones a 200 (`:status` by HPACK's
    // static index 8).
    async fn refusing() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
                        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
                        f.extend([kind, flags]);
                        f.extend(stream.to_be_bytes());
                        f.extend(payload);
                        f
                    };
                    let mut out = frame(4, 0, 0, &[]);
                    out.extend(frame(4, 1, 0, &[]));
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut at = 24; // the client preface
                    loop {
                        while buf.len() < at + 9 {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        let len =
                            u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
                        let (kind, flags) = (buf[at + 3], buf[at + 4]);
                        let stream = u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap())
                            & 0x7fff_ffff;
                        at += 9 + len;
                        // The answer goes when the request has ended.
                        if !(kind == 0 || kind == 1) || flags & 1 == 0 {
                            continue;
                        }
                        let reply = match count.fetch_add(1, SeqCst) {
                            0 => frame(7, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]),
                            1 => frame(3, 0, stream, &7u32.to_be_bytes()),
                            2 => frame(3, 0, stream, &2u32.to_be_bytes()),
                            _ => frame(1, 5, stream, &[0x88]),
                        };
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }
    let cfg = |addr: std::net::SocketAddr, retries: &str| {
        format!(
            r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - {{ name: r, cluster: app{retries} }}
clusters:
  - {{ name: app, endpoints: ["{addr}"], protocol: http2 }}
"#
        )
    };
    let post = |sift: &Sift| {
        let url = sift.url("/call");
        async move {
            let r = send(
                Request::builder()
                    .method("POST")
                    .uri(url)
                    .body(full("abc"))
                    .unwrap(),
            )
            .await;
            (
                r.status().as_u16(),
                r.headers().get("x-sift-error").cloned(),
            )
        }
    };
    // The default conditions (refused-stream among them): the GOAWAY and
    // the REFUSED_STREAM are retried; the INTERNAL_ERROR reset, after the
    // app took the POST, is not.
    let (addr, seen) = refusing().await;
    let sift = Sift::start(&cfg(addr, ", retries: { attempts: 4, backoff_base: 1ms }"));
    let (code, err) = post(&sift).await;
    assert_eq!(
        (code, err.unwrap().to_str().unwrap()),
        (502, "upstream-reset")
    );
    assert_eq!(seen.load(SeqCst), 3);
    let retried = r#"sift_retries_total{cluster="app",outcome="retried"}"#;
    assert_eq!(sift.metric(retried).await, Some(2.0));
    let refused_post = r#"sift_retries_total{cluster="app",outcome="non_idempotent"}"#;
    assert_eq!(sift.metric(refused_post).await, Some(1.0));
    assert_eq!(post(&sift).await.0, 200);
    drop(sift);
    // `on: [reset]` alone retries a refused POST too: it never reached the
    // app; `on: [gateway-error]` does not retry resets at all.
    for (on, code, tries) in [("[reset]", 502, 3), ("[gateway-error]", 502, 1)] {
        let (addr, seen) = refusing().await;
        let retries = format!(", retries: {{ attempts: 4, backoff_base: 1ms, on: {on} }}");
        let sift = Sift::start(&cfg(addr, &retries));
        assert_eq!(post(&sift).await.0, code, "{on}");
        assert_eq!(seen.load(SeqCst), tries, "{on}");
    }
    // No retries: the refusal is the client's 502.
    let (addr, seen) = refusing().await;
    let sift = Sift::start(&cfg(addr, ""));
    let (code, err) = post(&sift).await;
    assert_eq!(
        (code, err.unwrap().to_str().unwrap()),
        (502, "upstream-reset")
    );
    assert_eq!(seen.load(SeqCst), 1);
}

/// Answers given before the request body was read (404 no route, 413 over
/// the route limit, 502 refused) reach a client that is still sending a
/// 20 MB upload: sift drains the rest (lingering close) instead of
/// closing on unread data, which the client would see as a reset. The
/// connection then serves the next request.
#[tokio::test(flavor = "multi_thread")]
async fn early_answers_reach_a_client_still_uploading() {
    let up = Upstream::echo("app").await;
    let refusing = refused_port();
    let closed = refusing.addr;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - {{ name: refused, match: {{ path: {{ prefix: /refused }} }}, cluster: refused }}
  - name: small
    match: {{ path: {{ prefix: /small }} }}
    cluster: app
    max_request_body: 64KiB
clusters:
  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: refused, endpoints: ["{closed}"], connect_timeout: 500ms }}
"#,
        up.addr
    );
    let sift = Sift::start(&cfg);
    let client = http1_client();
    for (path, status, kind) in [
        ("/nowhere", 404, "no-route"),
        ("/small", 413, "body-too-large"),
        ("/refused", 502, "upstream-connect-failure"),
    ] {
        for _ in 0..3 {
            let (tx, upload) = channel_body(4);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
                for _ in 0..320 {
                    if tx.send(chunk.clone()).await.is_err() {
                        return;
                    }
                }
            });
            let r = client
                .request(Request::post(sift.url(path)).body(upload).unwrap())
                .await
                .unwrap_or_else(|e| panic!("{path}: {e:?} instead of {status}"));
            assert_eq!(r.status(), status, "{path}");
            assert_eq!(r.headers()["x-sift-error"], kind, "{path}");
            let _ = r.into_body().collect().await;
        }
    }
    // The same client (pooled connections) still works.
    let r = client
        .request(
            Request::post(sift.url("/small"))
                .body(full(&b"fine"[..]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A client that gives up while sift waits for the upstream (timeout,
/// closed tab, HTTP/2 stream reset) still ends its request: the gauge of
/// requests in flight goes back down, the request is counted, and the
/// access log has its line (status 499, `completed: false`, as nginx logs
/// a client that closed the request).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_gives_up_is_counted_and_logged() {
    let up = Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        text_response(200, "late\n")
    })
    .await;
    let sift = Sift::start(&simple_config(up.addr, ""));
    // HTTP/1.1: the client closes its connection while sift waits.
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    s.write_all(b"GET /h1 HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    // HTTP/2: the client drops its request (RST_STREAM).
    let h2 = http2_client();
    let gone = tokio::time::timeout(
        Duration::from_millis(300),
        h2.request(Request::get(sift.url("/h2")).body(body::empty()).unwrap()),
    )
    .await;
    assert!(gone.is_err(), "the upstream is slow");
    drop(s);
    assert!(
        eventually(Duration::from_secs(2), || async {
            sift.metric("sift_active_requests").await == Some(0.0)
        })
        .await,
        "sift_active_requests went back to 0 ({:?})",
        sift.metric("sift_active_requests").await
    );
    let counted = sift
        .metric(r#"sift_requests_total{route="default",code_class="4xx"}"#)
        .await;
    assert_eq!(counted, Some(2.0), "both requests are counted");
    // Log lines go out through a writer thread: wait for both.
    let logged = |path: &str| {
        sift.log_lines().iter().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["message"] == "access" && v["path"] == path)
        })
    };
    assert!(
        eventually(Duration::from_secs(2), || async {
            logged("/h1") && logged("/h2")
        })
        .await,
        "an access-log line for each"
    );
    let lines = sift.log_lines();
    for path in ["/h1", "/h2"] {
        let line = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "access" && v["path"] == path)
            .unwrap_or_else(|| panic!("an access-log line for {path}"));
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["completed"], false, "{line}");
        assert_eq!(line["route"], "default", "{line}");
    }
}

/// An absolute-form request (`GET http://a.example/x`) is routed on the
/// URI's host, which RFC 9112 §3.2.2 says replaces the Host header; the
/// upstream gets that host too, not the client's differing Host line, so
/// the route and the app agree on the virtual host.
#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_host_wins_over_the_host_header_upstream() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: a, match: {{ host: [a.example] }}, cluster: a }}
  - {{ name: b, match: {{ host: [b.example] }}, cluster: b }}
clusters:
  - {{ name: a, endpoints: ["{}"] }}
  - {{ name: b, endpoints: ["{}"] }}
"#,
        a.addr, b.addr
    );
    let sift = Sift::start(&cfg);
    let raw = raw_exchange(
        sift.addr(),
        b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(v["name"], "a", "routed on the URI's host");
    assert_eq!(v["headers"]["host"][0], "a.example", "{v}");
    assert_eq!(v["headers"]["x-forwarded-host"][0], "a.example", "{v}");
}

/// Over an HTTP/2 upstream the request's host travels as `:authority`
/// (RFC 9113 §8.3.1: an intermediary builds it from the original request),
/// not the endpoint's address, and no differing Host header rides along:
/// an HTTP/2 app (or a second sift) sees the host the client asked for.
#[tokio::test(flavor = "multi_thread")]
async fn http2_upstreams_get_the_request_host_as_authority() {
    let echo = Upstream::echo("h2").await;
    let cfg = simple_config(echo.addr, "").replace(
        &format!("endpoints: [\"{}\"]", echo.addr),
        &format!("endpoints: [\"{}\"]\n    protocol: http2", echo.addr),
    );
    let sift = Sift::start(&cfg);
    let r = send(
        Request::get(sift.url("/x?q=1"))
            .header("host", "app.example:8443")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    let v = json(r.body());
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["uri"], "http://app.example:8443/x?q=1", "{v}");
    let hosts = v["headers"]["host"].as_array().cloned().unwrap_or_default();
    assert!(
        hosts.iter().all(|h| h == "app.example:8443"),
        "no differing Host header: {v}"
    );
    assert_eq!(v["headers"]["x-forwarded-host"][0], "app.example:8443");
}

/// An HTTP/1.0 request may come without Host, but sift speaks HTTP/1.1
/// upstream, where Host is required (RFC 9112 §3.2; nginx answers 400
/// without it). sift then sends the endpoint's address, as nginx's
/// proxy_pass does by default.
#[tokio::test(flavor = "multi_thread")]
async fn http10_requests_without_host_get_one_upstream() {
    let echo = Upstream::echo("app").await;
    let sift = Sift::start(&simple_config(echo.addr, ""));
    let raw = raw_exchange(sift.addr(), b"GET /old HTTP/1.0\r\n\r\n").await;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["headers"]["host"][0], echo.addr.to_string(), "{v}");
}

/// An upstream on loopback that answers each connection's first request
/// head with the raw bytes `answer` makes of it (framings hyper's server
/// would never write), then closes the connection.
async fn raw_answers(answer: fn(&[u8]) -> Vec<u8>) -> std::net::SocketAddr {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(&answer(&buf)).await;
            });
        }
    });
    addr
}

/// An HTTP/1.0 app's answers reach an HTTP/1.1 client as HTTP/1.1 (an
/// intermediary sends its own version, RFC 9110 §6.2): the client's
/// connection stays open for the next request, and an answer whose end
/// the app marks by closing goes on chunked, not as a closing HTTP/1.0
/// answer. An HTTP/1.0 client still gets HTTP/1.0.
#[tokio::test(flavor = "multi_thread")]
async fn http10_upstream_answers_go_out_as_http11() {
    let addr = raw_answers(|head| {
        // `/close`: no length, the end is the close.
        if head.starts_with(b"GET /close") {
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec()
        } else {
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi".to_vec()
        }
    })
    .await;
    let sift = Sift::start(&simple_config(addr, ""));
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let mut seen = Vec::new();
    for path in ["/a", "/close", "/b"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // Read one answer: up to its end (the last chunk, or 2 bytes).
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let done = |b: &[u8]| {
            let text = String::from_utf8_lossy(b);
            text.contains("\r\n0\r\n\r\n") || text.ends_with("\r\n\r\nhi")
        };
        while !done(&buf) {
            match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                other => panic!(
                    "{path}: {other:?} after {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            }
        }
        seen.push(String::from_utf8_lossy(&buf).into_owned());
    }
    for (i, a) in seen.iter().enumerate() {
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{i}: {a}");
        assert!(
            !a.to_ascii_lowercase().contains("connection: close"),
            "{i}: {a}"
        );
    }
    assert!(seen[1].contains("until the end"), "{}", seen[1]);
    let old = raw_exchange(sift.addr(), b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old}");
}

/// An upstream answer with both a Content-Length and `Transfer-Encoding:
/// chunked` (RFC 9112 §6.3: the chunked framing wins, and an intermediary
/// removes the Content-Length) reaches the client whole, without that
/// length: forwarded, a smaller one cut the body silently and a larger one
/// failed it. An answer with another transfer-coding is a 502, never
/// passed on still coded. A Content-Length sent as a list (`2, 2`) or on
/// two lines goes on as one value (RFC 9110 §8.6), also to HEAD, which
/// got no answer at all with two lines.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_framing_conflicts_never_reach_the_client() {
    let addr = raw_answers(|buf| {
        let path = buf
            .split(|b| *b == b' ')
            .nth(1)
            .unwrap_or_default()
            .to_vec();
        let lengths = match &path[..] {
            b"/list" => Some("Content-Length: 2, 2\r\n"),
            b"/two" => Some("Content-Length: 2\r\nContent-Length: 2\r\n"),
            _ => None,
        };
        if let Some(cl) = lengths {
            let body = if buf.starts_with(b"HEAD") { "" } else { "ok" };
            return format!("HTTP/1.1 200 OK\r\nConnection: close\r\n{cl}\r\n{body}").into_bytes();
        }
        let head = |te: &str, cl: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nConnection: close\r\n{cl}Transfer-Encoding: {te}\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n"
            )
        };
        let answer = if buf.starts_with(b"GET /short") {
            head("chunked", "Content-Length: 2\r\n")
        } else if buf.starts_with(b"GET /long") {
            head("chunked", "Content-Length: 40\r\n")
        } else {
            head("gzip, chunked", "")
        };
        answer.into_bytes()
    })
    .await;
    let sift = Sift::start(&simple_config(addr, ""));
    for path in ["/short", "/long"] {
        let out = raw_exchange(
            sift.addr(),
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {out}");
        assert!(
            !out.to_ascii_lowercase().contains("content-length"),
            "{path}: {out}"
        );
        assert!(
            out.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "{path}: {out}"
        );
    }
    let out = raw_exchange(
        sift.addr(),
        b"GET /coded HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502 "), "{out}");
    assert!(out.contains("x-sift-error: upstream-reset"), "{out}");
    for method in ["GET", "HEAD"] {
        for path in ["/list", "/two"] {
            let out = raw_exchange(
                sift.addr(),
                format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            assert!(
                out.starts_with("HTTP/1.1 200 OK\r\n"),
                "{method} {path}: {out:?}"
            );
            let lines: Vec<&str> = out
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("content-length"))
                .collect();
            assert_eq!(lines, ["content-length: 2"], "{method} {path}: {out:?}");
            let body = if method == "GET" { "ok" } else { "" };
            assert!(
                out.ends_with(&format!("\r\n\r\n{body}")),
                "{method} {path}: {out:?}"
            );
        }
    }
}

/// An HTTP/2 client's cookies split over several `cookie` fields (as
/// browsers send them) reach an HTTP/1.1 app as one Cookie header, joined
/// with `; ` (RFC 9113 §8.2.3); an app reading one header saw only the
/// first cookie before.
#[tokio::test(flavor = "multi_thread")]
async fn http2_cookie_fields_reach_the_app_as_one_header() {
    let echo = Upstream::echo("app").await;
    let sift = Sift::start(&simple_config(echo.addr, ""));
    let req = Request::get(sift.url("/c"))
        .header("cookie", "session=abc")
        .header("cookie", "theme=dark")
        .header("cookie", "lang=en")
        .body(body::empty())
        .unwrap();
    let r = http2_client().request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let b = r.into_body().collect().await.unwrap().to_bytes();
    let v = json(&b);
    assert_eq!(
        v["headers"]["cookie"],
        serde_json::json!(["session=abc; theme=dark; lang=en"]),
        "{v}"
    );
}

/// An upstream that answers `101 Switching Protocols` to a request that
/// asked for no upgrade (RFC 9110 §15.2.2 forbids it) gets a 502: relayed,
/// the client was told the protocol had changed while nothing was
/// tunnelled, and the connection then closed.
#[tokio::test(flavor = "multi_thread")]
async fn an_unsolicited_101_is_a_bad_gateway() {
    let addr = raw_answers(|_| {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: upgrade\r\n\r\nraw bytes"
            .to_vec()
    })
    .await;
    let sift = Sift::start(&simple_config(addr, ""));
    let out = raw_exchange(
        sift.addr(),
        b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502 "), "{out}");
    assert!(out.contains("x-sift-error: upstream-reset"), "{out}");
    let r = http2_client()
        .request(Request::get(sift.url("/y")).body(body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
}

/// A route's `response_headers` (an edge route's HSTS, nosniff, CSP) are on
/// every response of that route, also the ones sift makes itself (413,
/// 502, 429, ...), as Envoy applies a route's response headers to its
/// local replies. Responses before any route matched (404) have none.
#[tokio::test(flavor = "multi_thread")]
async fn route_response_headers_are_on_sift_answers_too() {
    let refusing = refused_port();
    let closed = refusing.addr;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: edge
    match: {{ path: {{ prefix: /app }} }}
    cluster: refused
    max_request_body: 1KiB
    response_headers:
      set: {{ strict-transport-security: "max-age=63072000", x-content-type-options: nosniff }}
clusters:
  - {{ name: refused, endpoints: ["{closed}"], connect_timeout: 500ms }}
"#
    );
    let sift = Sift::start(&cfg);
    let refused = send(
        Request::get(sift.url("/app/x"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    let too_big = send(
        Request::post(sift.url("/app/x"))
            .body(full(vec![b'a'; 4096]))
            .unwrap(),
    )
    .await;
    for (r, status) in [(&refused, 502), (&too_big, 413)] {
        assert_eq!(r.status(), status);
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=63072000",
            "{status}: {:?}",
            r.headers()
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(r.headers().contains_key("x-sift-error"));
    }
    let none = send(
        Request::get(sift.url("/other"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(none.status(), 404);
    assert!(!none.headers().contains_key("strict-transport-security"));
}

/// `Upgrade: h2c` is never passed on. An upstream that accepts it (Go's
/// h2c, Jetty, Apache) would turn the connection into an HTTP/2 tunnel
/// whose requests sift never sees: routes, allowed_identities, rate
/// limits and filters bypassed ("h2c smuggling"). RFC 9113 §3.1
/// deprecates that upgrade; the request goes on as a plain one.
#[tokio::test(flavor = "multi_thread")]
async fn h2c_upgrades_are_not_passed_upstream() {
    let echo = Upstream::echo("app").await;
    let sift = Sift::start(&simple_config(echo.addr, ""));
    for upgrade in ["h2c", "H2C", "websocket, h2c"] {
        let raw = raw_exchange(
            sift.addr(),
            format!(
                "GET /public HTTP/1.1\r\nhost: a\r\nconnection: Upgrade, close\r\nupgrade: {upgrade}\r\n\
                 http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 200"), "{upgrade}: {raw}");
        let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
        assert!(v["headers"].get("upgrade").is_none(), "{upgrade}: {v}");
        assert!(v["headers"].get("connection").is_none(), "{upgrade}: {v}");
    }
}

/// `admin.example.` (a fully qualified name, trailing dot) is the same
/// host as `admin.example` to DNS and to most apps, so it matches the same
/// routes: otherwise the dot would step around a host route's identity
/// rules, rate limits and filters onto a catch-all route.
#[tokio::test(flavor = "multi_thread")]
async fn a_trailing_dot_in_the_host_matches_the_same_route() {
    let (_a, _b, sift) =
        admin_and_catch_all(r#"{ host: [admin.example, "*.api.example"] }"#, "").await;
    for host in [
        "admin.example",
        "admin.example.",
        "ADMIN.EXAMPLE.:8080",
        "x.api.example.",
    ] {
        let r = send(
            Request::get(sift.url("/"))
                .header("host", host)
                .body(body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(json(r.body())["name"], "a", "{host}");
    }
    let r = send(
        Request::get(sift.url("/"))
            .header("host", "other.example.")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(json(r.body())["name"], "b");
}

/// sift in front of two echo upstreams: `a` behind a route whose match is
/// `admin_match` (YAML), `b` behind the catch-all; `listener_extra` is
/// YAML added to the listener's map (`, escaped_slashes: reject`).
async fn admin_and_catch_all(
    admin_match: &str,
    listener_extra: &str,
) -> (Upstream, Upstream, Sift) {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0"{listener_extra} }}]
routes:
  - {{ name: admin, match: {admin_match}, cluster: a }}
  - {{ name: default, cluster: b }}
clusters:
  - {{ name: a, endpoints: ["{}"] }}
  - {{ name: b, endpoints: ["{}"] }}
"#,
        a.addr, b.addr
    );
    let sift = Sift::start(&cfg);
    (a, b, sift)
}

/// Each raw GET `(target, Host)` gets 400 `malformed-request` naming
/// `why`, and neither upstream sees one.
async fn all_refused(sift: &Sift, ups: [&Upstream; 2], reqs: &[(String, String)], why: &str) {
    let count = |u: &Upstream| u.requests.load(std::sync::atomic::Ordering::Relaxed);
    let before = ups.map(count);
    for (target, host) in reqs {
        let req = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let raw = raw_exchange(sift.addr(), req.as_bytes()).await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{target} {host}: {raw}");
        assert!(
            raw.contains("x-sift-error: malformed-request") && raw.contains(why),
            "{target} {host}: {raw}"
        );
    }
    assert_eq!(ups.map(count), before);
}

/// Paths are normalized before routing, and sent upstream that way, so the
/// route and the app agree on what was asked for: percent-encoded
/// unreserved characters are decoded (`/%61dmin` is `/admin`, RFC 3986
/// §6.2.2.2) and runs of slashes merged (`//admin` is `/admin`, nginx's
/// merge_slashes; Python's http.server does the same). Otherwise either
/// form steps around the `/admin` route onto a catch-all, while the app
/// serves /admin. Encoded slashes (`%2F`) and the query are left alone.
#[tokio::test(flavor = "multi_thread")]
async fn paths_are_normalized_before_routing() {
    let (a, b, sift) = admin_and_catch_all("{ path: { prefix: /admin } }", "").await;
    for (path, name, upstream) in [
        ("/admin/x", "a", "/admin/x"),
        ("/%61dmin/x", "a", "/admin/x"),
        ("/%61%64%6D%69%6E", "a", "/admin"),
        ("//admin", "a", "/admin"),
        ("/admin//x///y", "a", "/admin/x/y"),
        ("/%61dmin?q=%61&r=//", "a", "/admin?q=%61&r=//"),
        ("/admin%2Fx", "b", "/admin%2Fx"),
        ("/a%7Eb%20c", "b", "/a~b%20c"),
    ] {
        let r = send(Request::get(sift.url(path)).body(body::empty()).unwrap()).await;
        let v = json(r.body());
        assert_eq!(v["name"], name, "{path}: {v}");
        assert_eq!(v["uri"], upstream, "{path}: {v}");
    }
    // A `%` that starts no escape is refused: decoding around it would
    // make a new escape (`/%61dmin` from `/%%36%31dmin`), routed to the
    // catch-all and read as /admin by the app. Neither upstream sees it.
    let bad: Vec<_> = ["/%%36%31dmin/x", "/%6%61dmin", "/admin%", "/x%zz"]
        .map(|p| (p.to_string(), "x".to_string()))
        .into();
    all_refused(&sift, [&a, &b], &bad, "percent-encoding").await;
    // In the query a `%` is the app's business: passed on as it came.
    let raw = raw_exchange(
        sift.addr(),
        b"GET /x?q=100%&r=%%36 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("/x?q=100%&r=%%36"), "{raw}");
}

/// A raw HTTP/1.1 GET of `path` (sent as is), read to the end.
async fn get_raw(addr: std::net::SocketAddr, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    raw_exchange(addr, req.as_bytes()).await
}

/// `listeners[].escaped_slashes`: `/admin%2Fx` is routed as sent (keep,
/// the default: the catch-all), refused (reject: 400), or decoded before
/// routing and forwarded decoded (unescape: the /admin route, and the app
/// gets `/admin/x`), as Envoy's `path_with_escaped_slashes_action`. Dot
/// segments behind an escaped slash are refused in every mode.
#[tokio::test(flavor = "multi_thread")]
async fn escaped_slashes_keep_reject_or_unescape() {
    for mode in ["keep", "reject", "unescape"] {
        let extra = format!(", escaped_slashes: {mode}");
        let (_a, _b, sift) = admin_and_catch_all("{ path: { prefix: /admin } }", &extra).await;
        let get = |path: &'static str| get_raw(sift.addr(), path);
        let raw = get("/admin%2Fx").await;
        match mode {
            "keep" => {
                assert!(raw.starts_with("HTTP/1.1 200"), "{mode}: {raw}");
                assert!(
                    raw.contains(r#""name":"b""#) && raw.contains(r#""uri":"/admin%2Fx""#),
                    "{mode}: {raw}"
                );
            }
            "reject" => {
                assert!(raw.starts_with("HTTP/1.1 400"), "{mode}: {raw}");
                assert!(raw.contains("escaped slash in path"), "{mode}: {raw}");
            }
            _ => {
                assert!(raw.starts_with("HTTP/1.1 200"), "{mode}: {raw}");
                assert!(
                    raw.contains(r#""name":"a""#) && raw.contains(r#""uri":"/admin/x""#),
                    "{mode}: {raw}"
                );
                let raw = get("/%2F%2fadmin%5Cx").await;
                assert!(
                    raw.contains(r#""name":"a""#) && raw.contains(r#""uri":"/admin/x""#),
                    "{mode}: {raw}"
                );
            }
        }
        let raw = get("/x/..%2Fadmin").await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{mode}: {raw}");
        // Other escapes are untouched in every mode.
        let raw = get("/b%20c").await;
        assert!(raw.contains(r#""uri":"/b%20c""#), "{mode}: {raw}");
    }
}

/// Path parameters: servlet containers (Tomcat, Jetty) drop a segment's
/// `;...`, so they serve `/admin` for `/admin;jsessionid=1` while sift
/// (like Envoy and nginx) routes it as another path. `path_parameters`:
/// `keep` routes it as sent (the catch-all), `reject` answers 400, `strip`
/// routes and forwards `/admin`.
#[tokio::test(flavor = "multi_thread")]
async fn path_parameters_keep_reject_or_strip() {
    for mode in ["keep", "reject", "strip"] {
        let extra = format!(", path_parameters: {mode}");
        let (_a, _b, sift) = admin_and_catch_all("{ path: { prefix: /admin } }", &extra).await;
        let get = |path: &'static str| get_raw(sift.addr(), path);
        for (path, stripped) in [
            ("/admin;jsessionid=1", "/admin"),
            ("/admin;x/y;z", "/admin/y"),
            ("/x/;p/admin", "/x/admin"),
        ] {
            let raw = get(path).await;
            match mode {
                "keep" => assert!(
                    raw.contains(r#""name":"b""#) && raw.contains(&format!(r#""uri":"{path}""#)),
                    "{mode} {path}: {raw}"
                ),
                "reject" => {
                    assert!(raw.starts_with("HTTP/1.1 400"), "{mode} {path}: {raw}");
                    assert!(raw.contains("path parameter"), "{mode} {path}: {raw}");
                }
                _ => {
                    let name = if stripped.starts_with("/admin") {
                        "a"
                    } else {
                        "b"
                    };
                    assert!(
                        raw.contains(&format!(r#""name":"{name}""#))
                            && raw.contains(&format!(r#""uri":"{stripped}""#)),
                        "{mode} {path}: {raw}"
                    );
                }
            }
        }
        // Dots behind a parameter are refused in every mode; a `;` in the
        // query is not a path parameter.
        let raw = get("/api/..;/admin").await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{mode}: {raw}");
        let raw = get("/admin?a=1;b=2").await;
        assert!(
            raw.contains(r#""name":"a""#) && raw.contains(r#""uri":"/admin?a=1;b=2""#),
            "{mode}: {raw}"
        );
    }
}

/// A backslash is a slash: WHATWG URL parsers (Node's `URL`, browsers),
/// ASP.NET and Envoy's normalize_path read `/admin\x` as `/admin/x`.
/// Routed as sent, it stepped around the `/admin` route onto the
/// catch-all, raw in every mode and as `%5C` on an `unescape` listener
/// (which decoded it to `\`): found by the `http_head` fuzz target. A raw
/// `\` is now `/` before routing and upstream (merged with its
/// neighbours); `%5C` is `/` where escaped slashes are unescaped, and kept
/// (`keep`) or refused (`reject`) as `%2F` is.
#[tokio::test(flavor = "multi_thread")]
async fn backslashes_are_slashes_before_routing() {
    for mode in ["keep", "reject", "unescape"] {
        let extra = format!(", escaped_slashes: {mode}");
        let (_a, _b, sift) = admin_and_catch_all("{ path: { prefix: /admin } }", &extra).await;
        let get = |path: &'static str| get_raw(sift.addr(), path);
        for (path, upstream) in [
            ("/admin\\x", "/admin/x"),
            ("/\\admin", "/admin"),
            ("/\\admin\\\\x/", "/admin/x/"),
        ] {
            let raw = get(path).await;
            assert!(raw.starts_with("HTTP/1.1 200"), "{mode} {path}: {raw}");
            assert!(
                raw.contains(r#""name":"a""#) && raw.contains(&format!(r#""uri":"{upstream}""#)),
                "{mode} {path}: {raw}"
            );
        }
        let raw = get("/admin%5Cx").await;
        match mode {
            "keep" => assert!(
                raw.contains(r#""name":"b""#) && raw.contains(r#""uri":"/admin%5Cx""#),
                "{mode}: {raw}"
            ),
            "reject" => assert!(raw.starts_with("HTTP/1.1 400"), "{mode}: {raw}"),
            _ => assert!(
                raw.contains(r#""name":"a""#) && raw.contains(r#""uri":"/admin/x""#),
                "{mode}: {raw}"
            ),
        }
        // Dot segments behind a backslash are still refused.
        let raw = get("/x\\..\\admin").await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{mode}: {raw}");
    }
}

/// An upstream that sends a response head and part of its body, then
/// stalls: the cluster's `read_timeout` cuts the response, so the client
/// sees an incomplete body (an error, never a silently short one) instead
/// of waiting forever, and the access log says it did not complete.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_response_body_is_cut_by_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let yaml = simple_config(addr, "").replace(
        &format!("    endpoints: [\"{addr}\"]\n"),
        &format!("    endpoints: [\"{addr}\"]\n    read_timeout: 300ms\n"),
    );
    assert!(yaml.contains("read_timeout"), "{yaml}");
    let sift = Sift::start(&yaml);
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let resp = client
            .get(sift.url("/").parse().unwrap())
            .await
            .expect("the head arrives");
        assert_eq!(resp.status(), 200);
        http_body_util::BodyExt::collect(resp.into_body()).await
    })
    .await
    .expect("the response ends within 10 s (read_timeout 300 ms), not after 30 s");
    assert!(r.is_err(), "the body is cut with an error, not ended short");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The access log line says it did not complete.
    let cut = || {
        sift.log_lines().iter().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["message"] == "access" && v["status"] == 200 && v["completed"] == false
            })
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || async { cut() }).await,
        "{:?}",
        sift.log_lines()
    );
}

/// HTTP/2 has no Upgrade: a WebSocket request to a route whose cluster
/// speaks http2 is a clear 501 naming the fix, not a plain 200 that drops
/// the upgrade, and the upstream never sees it.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_to_an_http2_cluster_is_501() {
    let up = Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        text_response(200, "plain")
    })
    .await;
    let yaml = simple_config(up.addr, "").replace(
        &format!("    endpoints: [\"{}\"]\n", up.addr),
        &format!("    endpoints: [\"{}\"]\n    protocol: http2\n", up.addr),
    );
    assert!(yaml.contains("protocol: http2"), "{yaml}");
    let sift = Sift::start(&yaml);
    let (_s, head) = websocket_request(&sift).await;
    assert!(head.starts_with("http/1.1 501"), "{head}");
    assert!(head.contains("x-sift-error: not-implemented"), "{head}");
    assert_eq!(
        up.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "never forwarded"
    );
}

/// Send a WebSocket upgrade request to sift on a raw connection; the
/// connection and the response head, lower-cased.
async fn websocket_request(sift: &Sift) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).to_lowercase())
}

/// A dot segment is refused also when an encoded slash or a backslash
/// (raw or encoded) delimits it: an app that decodes the path and then
/// resolves dot segments (Python's http.server: unquote, then normpath;
/// nginx decodes `%2F` before resolving `..` too) reads
/// `/x/..%2Fadmin` as `/admin`, while sift would route it on `/x`
/// (here the catch-all), stepping around the `/admin` route.
#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_behind_encoded_slashes_are_refused() {
    let (a, b, sift) = admin_and_catch_all("{ path: { prefix: /admin } }", "").await;
    let bad: Vec<_> = [
        "/x/..%2Fadmin",
        "/x/..%2fadmin",
        "/x%2F..%2Fadmin",
        "/x/%2e%2e%2Fadmin",
        "/x%2F%2E%2E/admin",
        "/x/.%2F..%2Fadmin",
        "/x/..%5Cadmin",
        "/x\\..\\admin",
    ]
    .map(|p| (p.to_string(), "x".to_string()))
    .into();
    all_refused(&sift, [&a, &b], &bad, "segments").await;
    // Dots inside a segment, and encoded slashes without dot segments,
    // still pass.
    for (path, name) in [
        ("/x/..a%2Fb", "b"),
        ("/admin/a.%2F.b", "a"),
        ("/x%2F...", "b"),
    ] {
        let r = send(Request::get(sift.url(path)).body(body::empty()).unwrap()).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(json(r.body())["name"], name, "{path}");
    }
}

/// The Host (or URI authority) is a host name or IP literal and an
/// optional numeric port, nothing else: sift routes on the name, while an
/// app that parses `public.example:80@admin.example` as a URL authority
/// reads the host `admin.example`, and one that strips trailing dots
/// reads `admin.example..` as `admin.example`. Either would step around
/// the `admin.example` route's policies, so such hosts are refused.
#[tokio::test(flavor = "multi_thread")]
async fn hosts_with_junk_beside_the_name_are_refused() {
    let (a, b, sift) = admin_and_catch_all("{ host: [admin.example] }", "").await;
    let bad: Vec<_> = [
        ("/", "public.example:80@admin.example"),
        ("/", "public.example:@admin.example"),
        ("/", "admin.example:1:2"),
        ("/", "public.example:x"),
        ("/", "public.example:123456"),
        ("/", "[::1]@admin.example"),
        ("/", "[::1]admin.example"),
        ("/", "admin.example.."),
        ("/", "admin..example"),
        ("/", ".admin.example"),
        ("/", ":80"),
        ("http://public.example:80@admin.example/", "admin.example"),
    ]
    .map(|(t, h)| (t.to_string(), h.to_string()))
    .into();
    all_refused(&sift, [&a, &b], &bad, "Host").await;
    // Still fine: ports, IP literals, one trailing dot, an empty port.
    for (host, name) in [
        ("admin.example:8080", "a"),
        ("admin.example.", "a"),
        ("admin.example:", "a"),
        ("[::1]:80", "b"),
        ("[::1]", "b"),
        ("127.0.0.1:9", "b"),
        ("under_score.example", "b"),
    ] {
        let r = send(
            Request::get(sift.url("/"))
                .header("host", host)
                .body(body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(json(r.body())["name"], name, "{host}");
    }
}

/// A CGI-style app (WSGI, Rack, PHP) reads `x_forwarded_client_cert` and
/// `x-forwarded-client-cert` as the same `HTTP_X_FORWARDED_CLIENT_CERT`:
/// forwarded, a client's underscore spelling would pass for the identity,
/// verdict or client address that only sift may set. Request headers with
/// `_` in their names are dropped, as nginx does by default
/// (`underscores_in_headers off`).
#[tokio::test(flavor = "multi_thread")]
async fn underscored_header_names_are_dropped() {
    let up = Upstream::echo("a").await;
    let sift = Sift::start(&simple_config(up.addr, ""));
    let req = "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
               x_forwarded_client_cert: By=a;URI=spiffe://prod/ns/admin/sa/root\r\n\
               x_sift_spam_verdict: ham\r\nx-sift_spam-verdict: ham\r\n\
               x_forwarded_for: 1.2.3.4\r\nx_request_id: forged\r\n\
               x-keep: 1\r\n\r\n";
    let raw = raw_exchange(sift.addr(), req.as_bytes()).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let headers = v["headers"].as_object().unwrap();
    assert!(headers.keys().all(|k| !k.contains('_')), "{headers:?}");
    assert_eq!(headers["x-keep"][0], "1");
}

/// A client's `Connection` header may name hop-by-hop headers, but not
/// Host: the upstream must get the host the request was routed on. Named,
/// Host was removed, so the app got the endpoint's address instead, and
/// on a `replace` listener the client's own X-Forwarded-Host (which sift
/// sets from Host) went through as sent.
#[tokio::test(flavor = "multi_thread")]
async fn connection_cannot_remove_the_routed_host() {
    let echo = Upstream::echo("echo").await;
    let cfg = simple_config(echo.addr, "").replace(
        "    address: \"127.0.0.1:0\"\n",
        "    address: \"127.0.0.1:0\"\n    forwarded: { x_forwarded_for: replace }\n",
    );
    let sift = Sift::start(&cfg);
    for connection in ["close, host", "keep-alive, Host, close"] {
        let req = format!(
            "GET / HTTP/1.1\r\nhost: good.example\r\nconnection: {connection}\r\n\
             x-forwarded-host: evil.example\r\n\r\n"
        );
        let raw = raw_exchange(sift.addr(), req.as_bytes()).await;
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v["headers"]["host"],
            serde_json::json!(["good.example"]),
            "{v}"
        );
        assert_eq!(
            v["headers"]["x-forwarded-host"],
            serde_json::json!(["good.example"]),
            "{v}"
        );
    }
}

/// `..;x` is a dot segment for servlet containers (Tomcat drops a
/// segment's `;` parameters before resolving dot segments), so
/// `/api/..;/admin` would match the `/api` route and reach `/admin`:
/// refused like `..`.
#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_with_parameters_are_refused() {
    let up = Upstream::echo("a").await;
    let sift = Sift::start(&simple_config(up.addr, ""));
    for path in [
        "/api/..;/admin",
        "/api/..;x=1/admin",
        "/api/.;/x",
        "/api/%2e%2e;/admin",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let raw = raw_exchange(sift.addr(), req.as_bytes()).await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{path}: {raw}");
    }
    for path in ["/api/a;b/c", "/api/...;/x", "/api/..a;/x"] {
        let r = send(Request::get(sift.url(path)).body(body::empty()).unwrap()).await;
        assert_eq!(r.status(), 200, "{path}");
    }
}

/// A name on several lines (`x-tenant: a`, `x-tenant: b`) is matched as
/// its lines joined by "," (`a,b`), as Envoy matches since
/// CVE-2020-25017: reading the first line alone routed on `a` while the
/// app may read `b` or `a, b`. Raw bytes, so the lines reach sift as sent.
#[tokio::test(flavor = "multi_thread")]
async fn duplicated_header_lines_match_routes_as_their_joined_value() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let c = Upstream::echo("c").await;
    let d = Upstream::echo("d").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: tenant-a
    match: {{ headers: [{{ name: x-tenant, exact: a }}] }}
    cluster: a
  - name: tenant-b-c
    match: {{ headers: [{{ name: x-tenant, exact: "b,c" }}] }}
    cluster: b
  - name: role-admin
    match: {{ headers: [{{ name: x-role, prefix: admin }}] }}
    cluster: c
  - name: default
    cluster: d
clusters:
  - {{ name: a, endpoints: ["{}"] }}
  - {{ name: b, endpoints: ["{}"] }}
  - {{ name: c, endpoints: ["{}"] }}
  - {{ name: d, endpoints: ["{}"] }}
"#,
        a.addr, b.addr, c.addr, d.addr
    );
    let sift = Sift::start(&cfg);
    let go = |lines: &'static str| {
        let addr = sift.addr();
        async move {
            let req = format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{lines}\r\n");
            let raw = raw_exchange(addr, req.as_bytes()).await;
            assert!(raw.starts_with("HTTP/1.1 200"), "{lines:?}: {raw}");
            let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
            serde_json::from_str::<serde_json::Value>(body).unwrap()
        }
    };
    assert_eq!(go("x-tenant: a\r\n").await["name"], "a");
    // `a,b` is not `a`: the first line alone no longer picks the route.
    let v = go("x-tenant: a\r\nx-tenant: b\r\n").await;
    assert_eq!(v["name"], "d", "{v}");
    // The upstream still gets both lines as sent.
    assert_eq!(v["headers"]["x-tenant"], serde_json::json!(["a", "b"]));
    // Other lines (a different header between) change nothing.
    assert_eq!(
        go("x-tenant: b\r\nx-other: 1\r\nx-tenant: c\r\n").await["name"],
        "b"
    );
    assert_eq!(go("x-tenant: b,c\r\n").await["name"], "b");
    assert_eq!(go("x-tenant: c\r\nx-tenant: b\r\n").await["name"], "d");
    // A prefix holds for the joined value: `admin,user` starts with admin,
    // `user,admin` does not.
    assert_eq!(go("x-role: admin\r\nx-role: user\r\n").await["name"], "c");
    assert_eq!(go("x-role: user\r\nx-role: admin\r\n").await["name"], "d");
}

/// Envoy's route actions beside forwarding: `rewrite.prefix` (Envoy's
/// prefix_rewrite) changes the path the upstream gets, `redirect` answers
/// 301/308 with a Location built from the request, and `direct_response`
/// answers with a fixed status and body; none of the local answers reaches
/// the upstream, and the route's response headers are on them.
#[tokio::test(flavor = "multi_thread")]
async fn rewrites_redirects_and_direct_responses() {
    let up = Upstream::echo("app").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: api, match: {{ path: {{ prefix: /api }} }}, cluster: app, rewrite: {{ prefix: / }} }}
  - {{ name: svc, match: {{ path: {{ prefix: /svc/ }} }}, cluster: app, rewrite: {{ prefix: /v2 }} }}
  - {{ name: moved, match: {{ path: {{ exact: /old }} }}, redirect: {{ path: /new, code: 308 }} }}
  - {{ name: to-https, match: {{ host: [plain.example] }}, redirect: {{ scheme: https }} }}
  - {{ name: docs, match: {{ path: {{ prefix: /docs }} }}, redirect: {{ host: docs.example, prefix: /manual, strip_query: true }} }}
  - name: health
    match: {{ path: {{ exact: /healthz }} }}
    direct_response: {{ status: 200, body: "ok\n" }}
    response_headers: {{ set: {{ x-served-by: sift }} }}
  - {{ name: gone, match: {{ path: {{ prefix: /gone }} }}, direct_response: {{ status: 410 }} }}
  - {{ name: rest, cluster: app }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
        up.addr
    );
    let sift = Sift::start(&cfg);
    let get = |path: &str, host: Option<&str>| {
        let mut r = Request::builder().uri(sift.url(path));
        if let Some(h) = host {
            r = r.header("host", h);
        }
        send(r.body(body::empty()).unwrap())
    };
    let upstream_uri = |r: http::Response<Bytes>| {
        assert_eq!(r.status(), 200);
        json(r.body())["uri"].as_str().unwrap().to_string()
    };
    // Rewrites: the matched prefix is replaced, the rest and the query kept.
    assert_eq!(
        upstream_uri(get("/api/users?x=1", None).await),
        "/users?x=1"
    );
    assert_eq!(upstream_uri(get("/api", None).await), "/");
    assert_eq!(upstream_uri(get("/svc/a/b", None).await), "/v2/a/b");
    // Normalised before the rewrite: the upstream gets the normal form.
    assert_eq!(upstream_uri(get("/%61pi//users", None).await), "/users");
    assert_eq!(upstream_uri(get("/apix", None).await), "/apix");
    // Redirects.
    let r = get("/old?q=1", None).await;
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("http://127.0.0.1:{}/new?q=1", sift.addr().port()).as_str()
    );
    assert!(r.headers().contains_key("x-request-id"));
    let r = get("/a/b?c=d", Some("Plain.Example:8080")).await;
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://plain.example/a/b?c=d");
    let r = get("/docs/intro?x=1", None).await;
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "http://docs.example/manual/intro");
    // Direct responses.
    let r = get("/healthz", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().as_ref(), b"ok\n");
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.headers()["x-served-by"], "sift");
    let r = get("/gone/x", None).await;
    assert_eq!(r.status(), 410);
    assert!(r.body().is_empty());
    assert!(!r.headers().contains_key("content-type"));
    // A body sent to a local answer is not read, and the answer still comes.
    let r = send(
        Request::post(sift.url("/healthz"))
            .body(body::full(vec![b'x'; 100_000]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Only the forwarded requests reached the app.
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::Relaxed), 5);
}

/// `rewrite.regex` (Envoy's `regex_rewrite`, Istio's `uriRegexRewrite`)
/// replaces every match in the path with `\N` capture references, query
/// kept; `rewrite.host` sends a fixed Host (`:authority` to an HTTP/2
/// cluster) and `rewrite.auto_host` the chosen endpoint's name, while
/// X-Forwarded-Host keeps the client's.
#[tokio::test(flavor = "multi_thread")]
async fn regex_path_and_host_rewrites() {
    let up = Upstream::echo("app").await;
    let h2 = Upstream::echo("h2").await;
    let port = up.addr.port();
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: swap
    match: {{ path: {{ regex: "/v1/[a-z]+/[0-9]+" }} }}
    cluster: app
    rewrite: {{ regex: {{ pattern: "^/v1/([a-z]+)/([0-9]+)$", substitution: "/\\2/\\1" }}, host: "api.internal:8443" }}
  - name: every
    match: {{ path: {{ prefix: /every }} }}
    cluster: app
    rewrite: {{ regex: {{ pattern: "o", substitution: "0" }} }}
  - {{ name: auto, match: {{ path: {{ prefix: /auto }} }}, cluster: byname, rewrite: {{ auto_host: true }} }}
  - {{ name: h2, match: {{ path: {{ prefix: /h2 }} }}, cluster: h2, rewrite: {{ host: grpc.internal }} }}
clusters:
  - {{ name: app, endpoints: ["{up}"] }}
  - {{ name: byname, endpoints: ["localhost:{port}"] }}
  - {{ name: h2, protocol: http2, endpoints: ["{h2}"] }}
"#,
        up = up.addr,
        h2 = h2.addr,
    );
    let sift = Sift::start(&cfg);
    let get = |path: &str| {
        send(
            Request::builder()
                .uri(sift.url(path))
                .header("host", "shop.example")
                .body(body::empty())
                .unwrap(),
        )
    };
    let r = get("/v1/users/42?x=1").await;
    assert_eq!(r.status(), 200);
    let j = json(r.body());
    assert_eq!(j["uri"], "/42/users?x=1");
    assert_eq!(j["headers"]["host"][0], "api.internal:8443");
    assert_eq!(j["headers"]["x-forwarded-host"][0], "shop.example");
    // Every match is replaced; no match leaves the path alone.
    let j = json(get("/every/foo?o=o").await.body());
    assert_eq!(j["uri"], "/every/f00?o=o");
    assert_eq!(j["headers"]["host"][0], "shop.example");
    // auto_host: the endpoint's configured name and port.
    let j = json(get("/auto/x").await.body());
    assert_eq!(j["uri"], "/auto/x");
    assert_eq!(j["headers"]["host"][0], format!("localhost:{port}"));
    // HTTP/2: the rewritten host is the :authority.
    let r = get("/h2/y").await;
    assert_eq!(r.status(), 200);
    let j = json(r.body());
    assert_eq!(
        (j["name"].as_str(), j["version"].as_str()),
        (Some("h2"), Some("HTTP/2.0"))
    );
    assert_eq!(j["uri"], "http://grpc.internal/h2/y", "{j}");
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_on_regex_paths_header_patterns_and_query_parameters() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let c = Upstream::echo("c").await;
    let d = Upstream::echo("d").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: deny-debug
    match: {{ query: [ {{ name: debug, exact: "1" }} ] }}
    direct_response: {{ status: 403, body: "no debug" }}
  - name: users
    match: {{ path: {{ regex: "/users/[0-9]+(/profile)?" }} }}
    cluster: a
  - name: beta
    match: {{ query: [ {{ name: version, regex: "v[2-9]" }}, {{ name: legacy, present: false }} ] }}
    cluster: b
  - name: mobile
    match: {{ headers: [ {{ name: user-agent, regex: ".*(Android|iPhone).*" }} ], query: [ {{ name: q, prefix: "hello w" }} ] }}
    cluster: c
  - name: rest
    cluster: d
clusters:
  - {{ name: a, endpoints: ["{}"] }}
  - {{ name: b, endpoints: ["{}"] }}
  - {{ name: c, endpoints: ["{}"] }}
  - {{ name: d, endpoints: ["{}"] }}
"#,
        a.addr, b.addr, c.addr, d.addr
    );
    let sift = Sift::start(&cfg);
    let go = |path: &str, ua: &str| {
        let r = Request::get(sift.url(path)).header("user-agent", ua);
        send(r.body(body::empty()).unwrap())
    };
    let name = |r: http::Response<Bytes>| {
        if r.status() == 200 {
            json(r.body())["name"].as_str().unwrap().to_string()
        } else {
            r.status().as_u16().to_string()
        }
    };
    let cases: &[(&str, &str, &str)] = &[
        // The regex matches the whole (normalised) path, not a part.
        ("/users/42", "curl", "a"),
        ("/users/42/profile", "curl", "a"),
        ("/users/42/profile/x", "curl", "d"),
        ("/api/users/42", "curl", "d"),
        ("/users/abc", "curl", "d"),
        ("//users/%34%32", "curl", "a"),
        // Query conditions: all must hold; values percent-decoded.
        ("/x?version=v3", "curl", "b"),
        ("/x?version=v%33", "curl", "b"),
        ("/x?version=v1", "curl", "d"),
        ("/x?version=v3&legacy", "curl", "d"),
        ("/x?version=v3&legacy=0", "curl", "d"),
        ("/x?version=v33", "curl", "d"),
        // Any occurrence may satisfy a condition.
        ("/x?version=v1&version=v2", "curl", "b"),
        // A header pattern and a query prefix, with + read as a space.
        ("/x?q=hello+world", "Mozilla/5.0 (Linux; Android 14)", "c"),
        ("/x?q=hello%20w", "Mozilla/5.0 (iPhone)", "c"),
        ("/x?q=hello+world", "curl", "d"),
        ("/x?q=hi", "Mozilla/5.0 (Android)", "d"),
        // A value an app would read on any of the parameter's lines
        // reaches the deny route, whatever its position or encoding.
        ("/users/1?debug=1", "curl", "403"),
        ("/users/1?debug=0&debug=1", "curl", "403"),
        ("/users/1?%64ebug=%31", "curl", "403"),
        ("/users/1?debug=10", "curl", "a"),
        ("/users/1?xdebug=1", "curl", "a"),
    ];
    for (path, ua, want) in cases {
        assert_eq!(name(go(path, ua).await), *want, "{path} ({ua})");
    }
    // The upstream gets the query as sent.
    let r = go("/x?version=v%33&a=%2F", "curl").await;
    assert_eq!(json(r.body())["uri"], "/x?version=v%33&a=%2F");

    // Bad patterns are config errors with their path; the old config
    // keeps serving.
    for (bad, path) in [
        (
            "match: { path: { regex: \"(\" } }",
            "routes[0].match.path.regex",
        ),
        (
            "match: { headers: [ { name: x-a, regex: \"[z-a]\" } ] }",
            "routes[0].match.headers[0].regex",
        ),
        (
            "match: { query: [ { name: a, exact: b, present: true } ] }",
            "routes[0].match.query[0]",
        ),
        (
            "match: { query: [ { name: \"\", present: true } ] }",
            "routes[0].match.query[0].name",
        ),
        (
            "match: { path: { regex: \"/a.*\" } }\n    rewrite: { prefix: /b }",
            "routes[0].match.path",
        ),
        (
            "match: { path: { regex: \"a{1000}{1000}\" } }",
            "routes[0].match.path.regex",
        ),
    ] {
        refused_at(&one_route_config("", bad), path);
    }
}

/// `csrf` (Envoy's csrf filter, with Fetch metadata): a state-changing
/// request a browser sent from another site's page is refused with 403
/// `csrf-denied` and never reaches the app; the site's own pages, trusted
/// origins (and those the route's CORS policy names), safe methods and
/// clients that are no browser pass; `shadow` only counts;
/// `require_origin` refuses requests with no source at all.
#[tokio::test(flavor = "multi_thread")]
async fn csrf_refuses_state_changing_requests_from_other_sites() {
    let app =
        Upstream::start(
            |_req: Request<hyper::body::Incoming>| async move { text_response(200, "app") },
        )
        .await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: shadow
    match: {{ path: {{ prefix: /shadow }} }}
    cluster: app
    csrf: {{ mode: shadow }}
  - name: strict
    match: {{ path: {{ prefix: /strict }} }}
    cluster: app
    csrf: {{ require_origin: true }}
  - name: api
    match: {{ path: {{ prefix: /api }} }}
    cluster: app
    cors: {{ allow_origins: ["https://spa.example"], allow_credentials: true }}
    csrf: {{}}
  - name: open
    match: {{ path: {{ prefix: /open }} }}
    cluster: app
    cors: {{ allow_origins: ["*"] }}
    csrf: {{}}
  - name: app
    cluster: app
    csrf: {{ trusted_origins: ["https://admin.example", "https://*.partner.example"] }}
clusters: [{{ name: app, endpoints: ["{}"] }}]
"#,
        app.addr
    );
    let sift = Sift::start(&cfg);
    let own = format!("http://{}", sift.addr());
    let call = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut b = Request::builder().method(method).uri(sift.url(path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(full("x=1")).unwrap();
        async move {
            let r = send(req).await;
            (
                r.status().as_u16(),
                r.headers()
                    .get("x-sift-error")
                    .map(|v| v.to_str().unwrap().to_string()),
            )
        }
    };
    let ok = (200, None);
    let denied = (403, Some("csrf-denied".to_string()));
    let evil = [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ];
    let served = |n| app.requests.load(std::sync::atomic::Ordering::Relaxed) - n;
    let before = served(0);
    assert_eq!(call("POST", "/form", &evil).await, denied);
    assert_eq!(
        call("DELETE", "/item", &[("origin", "https://evil.example")]).await,
        denied,
        "no fetch metadata: the origin is another site"
    );
    assert_eq!(
        call("PUT", "/item", &[("referer", "https://evil.example/page")]).await,
        denied,
        "the Referer stands in for a missing Origin"
    );
    assert_eq!(call("POST", "/form", &[("origin", "null")]).await, denied);
    assert_eq!(served(before), 0, "refused requests never reach the app");
    assert_eq!(call("GET", "/form", &evil).await, ok, "a safe method");
    assert_eq!(
        call(
            "POST",
            "/form",
            &[("sec-fetch-site", "same-origin"), ("origin", &own)]
        )
        .await,
        ok
    );
    assert_eq!(call("POST", "/form", &[("origin", &own)]).await, ok);
    assert_eq!(
        call(
            "POST",
            "/form",
            &[
                ("origin", "https://admin.example"),
                ("sec-fetch-site", "cross-site")
            ]
        )
        .await,
        ok,
        "a trusted origin"
    );
    assert_eq!(
        call(
            "PATCH",
            "/form",
            &[("origin", "https://eu.partner.example")]
        )
        .await,
        ok
    );
    assert_eq!(call("POST", "/form", &[]).await, ok, "not a browser");
    assert_eq!(call("POST", "/shadow", &evil).await, ok, "shadow");
    assert_eq!(call("POST", "/strict", &[]).await, denied, "require_origin");
    assert_eq!(call("POST", "/strict", &[("origin", &own)]).await, ok);
    // The origins a route's CORS policy allows are trusted ("*" is not).
    let spa = [
        ("origin", "https://spa.example"),
        ("sec-fetch-site", "cross-site"),
    ];
    assert_eq!(call("POST", "/api/orders", &spa).await, ok, "cors origin");
    assert_eq!(call("POST", "/api/orders", &evil).await, denied);
    assert_eq!(call("POST", "/open/x", &spa).await, denied, "cors \"*\"");
    for (route, result, n) in [
        ("app", "denied", 4.0),
        ("app", "same_origin", 2.0),
        ("app", "trusted", 2.0),
        ("app", "no_origin", 1.0),
        ("shadow", "shadow_denied", 1.0),
        ("strict", "denied", 1.0),
        ("strict", "same_origin", 1.0),
        ("api", "trusted", 1.0),
        ("api", "denied", 1.0),
        ("open", "denied", 1.0),
    ] {
        let m = format!(r#"sift_csrf_requests_total{{result="{result}",route="{route}"}}"#);
        assert_eq!(sift.metric(&m).await, Some(n), "{m}");
    }
    refused_at(
        &one_route_config("", r#"csrf: { trusted_origins: ["*"] }"#),
        "routes[0].csrf.trusted_origins[0]",
    );
    refused_at(
        &one_route_config("", r#"csrf: { trusted_origins: ["evil"] }"#),
        "routes[0].csrf.trusted_origins[0]",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_are_answered_and_allowed_origins_decorated() {
    // The app sets its own (too wide) CORS header: the route's policy
    // replaces it for allowed origins.
    let app = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let mut r = text_response(200, "app");
        r.headers_mut()
            .insert("access-control-allow-origin", "*".parse().unwrap());
        r.headers_mut()
            .insert("x-method", req.method().as_str().parse().unwrap());
        r
    })
    .await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: api
    match: {{ path: {{ prefix: /api }} }}
    cluster: app
    cors:
      allow_origins: ["https://app.example.com", "https://*.example.org"]
      allow_methods: [GET, post, DELETE]
      allow_headers: [content-type, authorization]
      expose_headers: [x-request-id]
      max_age: 10m
      allow_credentials: true
    rate_limits:
      - {{ name: tiny, requests_per_unit: 3, unit: hour }}
  - name: public
    cluster: app
    cors: {{ allow_origins: ["*"], allow_headers: ["*"] }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
        app.addr
    );
    let sift = Sift::start(&cfg);
    let go = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut r = Request::builder().method(method).uri(sift.url(path));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        send(r.body(body::empty()).unwrap())
    };
    let origin = ("origin", "https://app.example.com");
    let acrm = ("access-control-request-method", "DELETE");

    // A preflight from an allowed origin: answered by sift, never the app,
    // and not charged to the rate limit.
    let before = app.requests.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        let r = go("OPTIONS", "/api/items/1", &[origin, acrm]).await;
        assert_eq!(r.status(), 204);
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET, POST, DELETE");
        assert_eq!(
            h["access-control-allow-headers"],
            "content-type, authorization"
        );
        assert_eq!(h["access-control-max-age"], "600");
        assert!(h.contains_key("x-request-id"));
    }
    assert_eq!(
        app.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );

    // The request itself: the app's answer, with the policy's headers.
    let r = go(
        "GET",
        "/api/items",
        &[("origin", "https://a.b.example.org")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://a.b.example.org");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-request-id");
    assert_eq!(h["vary"], "origin");

    // Another origin: left as it is; its preflight goes to the app.
    let r = go(
        "OPTIONS",
        "/api/items/1",
        &[("origin", "https://evil.test"), acrm],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-method"], "OPTIONS");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "*",
        "the app's own"
    );
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    // No Origin: not a CORS request.
    let r = go("GET", "/api/items", &[]).await;
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(r.headers().get("vary").is_none());

    // sift's own answers carry the headers too: the rate limit's 429.
    let r = go("GET", "/api/items", &[origin]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers()["access-control-expose-headers"], "x-request-id");

    // "*" without credentials: ACAO "*", requested headers echoed.
    let r = go(
        "OPTIONS",
        "/other",
        &[
            ("origin", "http://localhost:5173"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-custom, content-type"),
        ],
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        r.headers()["access-control-allow-headers"],
        "x-custom, content-type"
    );
    assert_eq!(
        r.headers()["access-control-allow-methods"],
        "GET, HEAD, POST"
    );
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );

    assert_eq!(
        sift.metric(r#"sift_cors_requests_total{route="api",result="preflight"}"#)
            .await,
        Some(5.0)
    );
    assert_eq!(
        sift.metric(r#"sift_cors_requests_total{route="api",result="denied"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sift.metric(r#"sift_cors_requests_total{route="api",result="allowed"}"#)
            .await,
        Some(2.0)
    );

    for (bad, path) in [
        ("{ allow_origins: [] }", "routes[0].cors.allow_origins"),
        (
            "{ allow_origins: [app.example.com] }",
            "routes[0].cors.allow_origins[0]",
        ),
        (
            "{ allow_origins: [\"*\"], allow_credentials: true }",
            "routes[0].cors.allow_credentials",
        ),
        (
            "{ allow_origins: [\"*\"], allow_methods: [\"GE T\"] }",
            "routes[0].cors.allow_methods[0]",
        ),
        (
            "{ allow_origins: [\"*\"], allow_headers: [\"*\", x-a] }",
            "routes[0].cors.allow_headers",
        ),
        (
            "{ allow_origins: [\"*\"], expose_headers: [\"a b\"] }",
            "routes[0].cors.expose_headers[0]",
        ),
    ] {
        refused_at(&one_route_config("", &format!("cors: {bad}")), path);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_compresses_what_it_should_and_streams() {
    use std::io::Read;
    let big: String = (0..400)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item {i}\"}},"))
        .collect();
    let big = Arc::new(big);
    let release = Arc::new(tokio::sync::Notify::new());
    let (b2, r2) = (big.clone(), release.clone());
    let app = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let (big, release) = (b2.clone(), r2.clone());
        async move {
            let typed = |ct: &'static str, body: body::Body| {
                let mut r = http::Response::new(body);
                r.headers_mut().insert("content-type", ct.parse().unwrap());
                r
            };
            match req.uri().path() {
                "/json" => {
                    let mut r = typed("application/json", full(big.to_string()));
                    r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
                    r.headers_mut()
                        .insert("content-length", big.len().to_string().parse().unwrap());
                    r
                }
                "/small" => typed("text/plain", full("short")),
                "/png" => typed("image/png", full(big.to_string())),
                "/no-transform" => {
                    let mut r = typed("text/html", full(big.to_string()));
                    r.headers_mut()
                        .insert("cache-control", "no-transform".parse().unwrap());
                    r
                }
                "/stream" => {
                    let (tx, body) = channel_body(4);
                    tokio::spawn(async move {
                        let _ = tx.send(Bytes::from_static(b"first event\n")).await;
                        // The rest waits until the client has read the
                        // first piece: it must arrive uncompressed-able
                        // before the answer ends.
                        release.notified().await;
                        let _ = tx.send(Bytes::from_static(b"second event\n")).await;
                    });
                    typed("text/plain", body)
                }
                _ => text_response(404, "no"),
            }
        }
    })
    .await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: web
    cluster: app
    compression: {{ min_bytes: 100B }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
        app.addr
    );
    let sift = Sift::start(&cfg);
    let go = |path: &str, method: &str, ae: Option<&str>| {
        let mut r = Request::builder().method(method).uri(sift.url(path));
        if let Some(ae) = ae {
            r = r.header("accept-encoding", ae);
        }
        send(r.body(body::empty()).unwrap())
    };
    let gunzip = |b: &[u8]| {
        let mut s = String::new();
        flate2::read::GzDecoder::new(b)
            .read_to_string(&mut s)
            .expect("a whole gzip stream");
        s
    };

    let r = go("/json", "GET", Some("br, gzip;q=0.8")).await;
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["content-encoding"], "gzip");
    assert!(h.get("content-length").is_none());
    assert_eq!(h["vary"], "accept-encoding");
    assert_eq!(h["etag"], "W/\"v1\"");
    assert!(
        r.body().len() * 5 < big.len(),
        "{} of {}",
        r.body().len(),
        big.len()
    );
    assert_eq!(gunzip(r.body()), *big);

    // Not accepted (or refused with q=0): as sent, but Vary all the same.
    for ae in [None, Some("gzip;q=0"), Some("br")] {
        let r = go("/json", "GET", ae).await;
        assert!(r.headers().get("content-encoding").is_none(), "{ae:?}");
        assert_eq!(r.headers()["vary"], "accept-encoding");
        assert_eq!(r.headers()["etag"], "\"v1\"");
        assert_eq!(r.body().len(), big.len());
    }
    // HEAD, other types, small answers, no-transform: as sent.
    let r = go("/json", "HEAD", Some("gzip")).await;
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["content-length"], big.len().to_string());
    for path in ["/png", "/small", "/no-transform"] {
        let r = go(path, "GET", Some("gzip")).await;
        assert!(r.headers().get("content-encoding").is_none(), "{path}");
    }
    // The app's 404 of 2 bytes is below min_bytes.
    let r = go("/nothing", "GET", Some("gzip")).await;
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("content-encoding").is_none());

    // A streamed answer: the first piece arrives, decodable, before the
    // answer ends.
    let req = Request::get(sift.url("/stream"))
        .header("accept-encoding", "gzip")
        .body(body::empty())
        .unwrap();
    let resp = http1_client().request(req).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first piece is not held back")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    let mut dec = flate2::write::GzDecoder::new(Vec::new());
    std::io::Write::write_all(&mut dec, &first).unwrap();
    std::io::Write::flush(&mut dec).unwrap();
    assert_eq!(dec.get_ref().as_slice(), b"first event\n");
    release.notify_one();
    let mut wire = first.to_vec();
    wire.extend_from_slice(&body.collect().await.unwrap().to_bytes());
    assert_eq!(gunzip(&wire), "first event\nsecond event\n");

    assert_eq!(
        sift.metric(r#"sift_compression_total{route="web",result="compressed"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(
        sift.metric(r#"sift_compression_total{route="web",result="not_accepted"}"#)
            .await,
        Some(3.0)
    );
    let bytes_in = sift
        .metric(r#"sift_compression_bytes_total{route="web",stage="uncompressed"}"#)
        .await
        .unwrap();
    assert_eq!(bytes_in as usize, big.len() + 25);

    for (bad, path) in [
        ("{ level: 0 }", "routes[0].compression.level"),
        (
            "{ content_types: [] }",
            "routes[0].compression.content_types",
        ),
        (
            "{ content_types: [\"text/html; charset=utf-8\"] }",
            "routes[0].compression.content_types[0]",
        ),
    ] {
        refused_at(&one_route_config("", &format!("compression: {bad}")), path);
    }
    refused_at(
        "listeners: [{ name: main, address: \"127.0.0.1:0\" }]\nroutes:\n  - name: r\n    direct_response: { status: 200 }\n    compression: {}\n",
        "routes[0].compression",
    );
}

/// `algorithms: [br, gzip]`: brotli for clients that take it, gzip for
/// the others, the client's q-values first and the route's order on ties.
#[tokio::test(flavor = "multi_thread")]
async fn brotli_for_clients_that_accept_it() {
    use std::io::Read;
    let big: String = (0..300).map(|i| format!("<li>item {i}</li>")).collect();
    let b2 = Arc::new(big.clone());
    let app = Upstream::start(move |_req: Request<hyper::body::Incoming>| {
        let big = b2.clone();
        async move {
            let mut r = http::Response::new(full(big.to_string()));
            r.headers_mut()
                .insert("content-type", "text/html".parse().unwrap());
            r
        }
    })
    .await;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: web
    cluster: app
    compression: {{ algorithms: [br, gzip], brotli_quality: 5 }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
        app.addr
    ));
    let go = |ae: &'static str| {
        send(
            Request::get(sift.url("/"))
                .header("accept-encoding", ae)
                .body(body::empty())
                .unwrap(),
        )
    };
    for (ae, want) in [
        ("gzip, deflate, br", "br"),
        ("gzip", "gzip"),
        ("br;q=0.5, gzip", "gzip"),
        ("br", "br"),
    ] {
        let r = go(ae).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-encoding"], want, "{ae}");
        assert_eq!(r.headers()["vary"], "accept-encoding");
        let mut text = String::new();
        if want == "br" {
            brotli::Decompressor::new(&r.body()[..], 4096)
                .read_to_string(&mut text)
                .expect("a whole brotli stream");
        } else {
            flate2::read::GzDecoder::new(&r.body()[..])
                .read_to_string(&mut text)
                .expect("a whole gzip stream");
        }
        assert_eq!(text, big, "{ae}");
        assert!(r.body().len() < big.len() / 4, "{ae}: {}", r.body().len());
    }
    for (bad, path) in [
        (
            "{ algorithms: [zstd] }",
            "routes[0].compression.algorithms[0]",
        ),
        ("{ algorithms: [] }", "routes[0].compression.algorithms"),
        (
            "{ algorithms: [br, br] }",
            "routes[0].compression.algorithms[1]",
        ),
        (
            "{ brotli_quality: 12 }",
            "routes[0].compression.brotli_quality",
        ),
    ] {
        refused_at(&one_route_config("", &format!("compression: {bad}")), path);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traces_join_the_callers_and_spans_reach_the_collector() {
    // The collector: OTLP/HTTP JSON, kept as received.
    let got = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let g = got.clone();
    let collector = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let g = g.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            assert_eq!(req.headers()["content-type"], "application/json");
            let b = req.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&b).expect("OTLP JSON");
            g.lock().unwrap().push(v);
            text_response(200, "{}")
        }
    })
    .await;
    let app = Upstream::echo("app").await;
    let refusing = refused_port();
    let dead = refusing.addr;
    let cfg = |sampling: &str, endpoint: &str| {
        format!(
            r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
tracing: {{ endpoint: "{endpoint}", service_name: edge, sampling: {sampling}, flush_interval: 50ms }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: broken, match: {{ path: {{ prefix: /broken }} }}, cluster: dead }}
  - {{ name: api, cluster: app }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: dead, endpoints: ["{dead}"] }}
"#,
            app.addr
        )
    };
    let endpoint = format!("http://{}", collector.addr);
    let sift = Sift::start(&cfg("1.0", &endpoint));
    let go = |path: &str, tp: Option<&str>| {
        let mut r = Request::get(sift.url(path));
        if let Some(tp) = tp {
            r = r.header("traceparent", tp).header("tracestate", "vendor=x");
        }
        send(r.body(body::empty()).unwrap())
    };
    let spans = |got: &Arc<std::sync::Mutex<Vec<serde_json::Value>>>| {
        let mut out = Vec::new();
        for doc in got.lock().unwrap().iter() {
            let rs = &doc["resourceSpans"][0];
            assert_eq!(
                rs["resource"]["attributes"][0]["value"]["stringValue"],
                "edge"
            );
            for s in rs["scopeSpans"][0]["spans"].as_array().unwrap() {
                out.push(s.clone());
            }
        }
        out
    };
    let attr = |s: &serde_json::Value, k: &str| {
        s["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].clone())
    };

    // Sampled by the caller: sift's span is the caller's child, and the
    // app's parent.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = go(
        "/a",
        Some(&format!("00-{caller_trace}-00f067aa0ba902b7-01")),
    )
    .await;
    let seen = json(r.body());
    let up_tp = seen["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(up_tp.starts_with(&format!("00-{caller_trace}-")), "{up_tp}");
    assert!(up_tp.ends_with("-01"));
    let sift_span = up_tp[36..52].to_string();
    assert_ne!(sift_span, "00f067aa0ba902b7");
    assert_eq!(seen["headers"]["tracestate"][0], "vendor=x");
    // Not sampled by the caller: propagated, not exported.
    let unsampled = "11111111111111111111111111111111";
    let r = go("/b", Some(&format!("00-{unsampled}-00f067aa0ba902b7-00"))).await;
    let tp = json(r.body())["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        tp.starts_with(&format!("00-{unsampled}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    // No traceparent (or a broken one): a new trace, sampled at 1.0.
    let r = go("/c", Some("00-zz-broken-01")).await;
    let tp = json(r.body())["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    let new_trace = tp[3..35].to_string();
    assert_ne!(new_trace, caller_trace);
    // An error answer.
    assert_eq!(go("/broken", None).await.status(), 502);

    let all = eventually(Duration::from_secs(5), || async { spans(&got).len() >= 3 }).await;
    assert!(all, "spans exported: {:?}", spans(&got));
    let spans_now = spans(&got);
    assert_eq!(spans_now.len(), 3, "the unsampled one is not exported");
    let a = spans_now
        .iter()
        .find(|s| s["traceId"] == caller_trace)
        .expect("the caller's trace");
    assert_eq!(a["spanId"], sift_span.as_str());
    assert_eq!(a["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(a["name"], "GET api");
    assert_eq!(a["kind"], 2);
    assert_eq!(
        attr(a, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    assert_eq!(attr(a, "url.path").unwrap()["stringValue"], "/a");
    assert_eq!(attr(a, "sift.cluster").unwrap()["stringValue"], "app");
    assert_eq!(a["status"]["code"], 0);
    let start: u64 = a["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = a["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end >= start && start > 1_700_000_000_000_000_000);
    let c = spans_now
        .iter()
        .find(|s| s["traceId"] == new_trace.as_str())
        .expect("the new trace");
    assert!(c.get("parentSpanId").is_none(), "a root span");
    let broken = spans_now
        .iter()
        .find(|s| s["name"] == "GET broken")
        .expect("the error's span");
    assert_eq!(broken["status"]["code"], 2);
    assert_eq!(
        attr(broken, "sift.error").unwrap()["stringValue"],
        "upstream-connect-failure"
    );
    // Counted when the collector's answer is read, after it has the batch.
    let exported = r#"sift_trace_spans_total{result="exported"}"#;
    assert!(
        sift.metric_reaches(exported, 3.0, Duration::from_secs(5))
            .await,
        "three spans counted exported"
    );
    assert_eq!(sift.metric(exported).await, Some(3.0));
    // The access log carries the trace id.
    let logged = eventually(Duration::from_secs(2), || async {
        sift.log_lines()
            .iter()
            .any(|l| l.contains("\"access\"") && l.contains(caller_trace))
    })
    .await;
    assert!(logged, "access log with trace_id");

    // sampling reloads: 0 makes new traces unsampled (still propagated).
    sift.write_config(&cfg("0", &endpoint));
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    let r = go("/d", None).await;
    let tp = json(r.body())["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(tp.ends_with("-00"), "{tp}");
    // The collector's address needs a restart: the reload is refused.
    sift.write_config(&cfg("0", "http://127.0.0.1:9/v1/traces"));
    let (status, body) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tracing"), "{body}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(spans(&got).len(), 3);

    // A collector that is down: spans counted as failed, requests fine.
    let down = Sift::start(&cfg("1.0", &format!("http://{dead}")));
    assert_eq!(
        send(Request::get(down.url("/x")).body(body::empty()).unwrap())
            .await
            .status(),
        200
    );
    let failed = down
        .metric_reaches(
            r#"sift_trace_spans_total{result="failed"}"#,
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert!(failed);

    for (bad, path) in [
        ("{ endpoint: \"https://c:4318\" }", "tracing.tls"),
        (
            "{ endpoint: \"http://c:4318\", tls: { ca: /nonexistent/ca.pem } }",
            "tracing.tls",
        ),
        (
            "{ endpoint: \"http://c:4318\", headers: { content-type: x } }",
            "tracing.headers.content-type",
        ),
        (
            "{ endpoint: \"http://c:4318\", headers: { \"bad name\": x } }",
            "tracing.headers.bad name",
        ),
        ("{ endpoint: \"c:4318\" }", "tracing.endpoint"),
        (
            "{ endpoint: \"http://c:4318\", sampling: 2 }",
            "tracing.sampling",
        ),
        (
            "{ endpoint: \"http://c:4318\", batch_size: 0 }",
            "tracing.batch_size",
        ),
    ] {
        refused_at(&one_route_config(&format!("tracing: {bad}\n"), ""), path);
    }
}

/// The OTLP trace messages as a collector reads them, declared here from
/// opentelemetry-proto's field numbers (collector/trace/v1,
/// trace/v1, resource/v1; the common types are envoy-types' generated
/// ones), independently of sift's hand-written encoder.
mod otlp {
    pub use envoy_types::pb::opentelemetry::proto::common::v1::{
        InstrumentationScope, KeyValue, any_value,
    };
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Export {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }
    /// The value of attribute `k`.
    pub fn attr(kv: &[KeyValue], k: &str) -> Option<any_value::Value> {
        kv.iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone()?.value)
    }
}

/// `tracing.protocol: grpc`, the transport Envoy's and Istio's
/// OpenTelemetry tracers use by default (port 4317): the spans reach a
/// gRPC collector as protobuf `TraceService/Export` calls over HTTP/2, read
/// here with prost; a collector that answers a non-zero `grpc-status`
/// gets the batch counted as failed; a path in a gRPC endpoint is refused.
#[tokio::test(flavor = "multi_thread")]
async fn traces_reach_an_otlp_grpc_collector() {
    use prost::Message;
    let got = Arc::new(std::sync::Mutex::new(Vec::<otlp::Export>::new()));
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (g, no) = (got.clone(), refuse.clone());
    let collector = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let (g, no) = (g.clone(), no.clone());
        async move {
            assert_eq!(req.version(), http::Version::HTTP_2);
            assert_eq!(
                req.uri().path(),
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            );
            assert_eq!(req.headers()["content-type"], "application/grpc");
            assert_eq!(req.headers()["te"], "trailers");
            let b = req.into_body().collect().await.unwrap().to_bytes();
            // One uncompressed gRPC frame.
            assert_eq!(b[0], 0, "compressed flag");
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            assert_eq!(len, b.len() - 5);
            g.lock()
                .unwrap()
                .push(otlp::Export::decode(&b[5..]).expect("an ExportTraceServiceRequest"));
            if no.load(std::sync::atomic::Ordering::SeqCst) {
                grpc_answer("14")
            } else {
                grpc_answer("0")
            }
        }
    })
    .await;
    let app = Upstream::echo("app").await;
    let refusing = refused_port();
    let dead = refusing.addr;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
tracing: {{ endpoint: "http://{}", protocol: grpc, service_name: edge, flush_interval: 50ms }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: broken, match: {{ path: {{ prefix: /broken }} }}, cluster: dead }}
  - {{ name: api, cluster: app }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: dead, endpoints: ["{dead}"] }}
"#,
        collector.addr, app.addr
    ));
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = send(
        Request::get(sift.url("/a"))
            .header(
                "traceparent",
                format!("00-{caller_trace}-00f067aa0ba902b7-01"),
            )
            .body(body::empty())
            .unwrap(),
    )
    .await;
    let up_tp = json(r.body())["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    let sift_span = up_tp[36..52].to_string();
    let broken = send(
        Request::get(sift.url("/broken"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(broken.status(), 502);

    let spans = |got: &Arc<std::sync::Mutex<Vec<otlp::Export>>>| {
        let mut out = Vec::new();
        for e in got.lock().unwrap().iter() {
            let rs = &e.resource_spans[0];
            let res = rs.resource.as_ref().expect("a resource");
            assert_eq!(
                otlp::attr(&res.attributes, "service.name"),
                Some(otlp::any_value::Value::StringValue("edge".into()))
            );
            let ss = &rs.scope_spans[0];
            assert_eq!(ss.scope.as_ref().map(|s| s.name.as_str()), Some("sift"));
            out.extend(ss.spans.iter().cloned());
        }
        out
    };
    let both = eventually(Duration::from_secs(5), || async { spans(&got).len() >= 2 }).await;
    assert!(both, "spans exported: {:?}", spans(&got));
    let all = spans(&got);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let a = all
        .iter()
        .find(|s| hex(&s.trace_id) == caller_trace)
        .expect("the caller's trace");
    assert_eq!(hex(&a.span_id), sift_span);
    assert_eq!(hex(&a.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(a.name, "GET api");
    assert_eq!(a.kind, 2, "SPAN_KIND_SERVER");
    assert!(a.start_time_unix_nano > 1_700_000_000_000_000_000);
    assert!(a.end_time_unix_nano >= a.start_time_unix_nano);
    assert_eq!(
        otlp::attr(&a.attributes, "http.response.status_code"),
        Some(otlp::any_value::Value::IntValue(200))
    );
    assert_eq!(
        otlp::attr(&a.attributes, "url.path"),
        Some(otlp::any_value::Value::StringValue("/a".into()))
    );
    assert_eq!(a.status.as_ref().map_or(0, |s| s.code), 0, "UNSET");
    let b = all
        .iter()
        .find(|s| s.name == "GET broken")
        .expect("the error's span");
    assert!(b.parent_span_id.is_empty(), "a root span");
    let st = b.status.as_ref().expect("a status");
    assert_eq!(st.code, 2, "ERROR");
    assert!(!st.message.is_empty());
    assert_eq!(
        otlp::attr(&b.attributes, "sift.error"),
        Some(otlp::any_value::Value::StringValue(
            "upstream-connect-failure".into()
        ))
    );
    // Counted when the collector's answer is read, after it has the batch.
    let exported = r#"sift_trace_spans_total{result="exported"}"#;
    assert!(
        sift.metric_reaches(exported, 2.0, Duration::from_secs(5))
            .await,
        "two spans counted exported"
    );
    assert_eq!(sift.metric(exported).await, Some(2.0));

    // grpc-status 14 (UNAVAILABLE) in the answer's trailers: failed.
    refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    send(Request::get(sift.url("/c")).body(body::empty()).unwrap()).await;
    let failed = sift
        .metric_reaches(
            r#"sift_trace_spans_total{result="failed"}"#,
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert!(failed);
    assert_eq!(spans(&got).len(), 3, "the failed batch did reach it");

    for (bad, path) in [
        (
            "{ endpoint: \"http://c:4317/v1/traces\", protocol: grpc }",
            "tracing.endpoint",
        ),
        (
            "{ endpoint: \"http://c:4317\", protocol: thrift }",
            "tracing.protocol",
        ),
    ] {
        refused_at(&one_route_config(&format!("tracing: {bad}\n"), ""), path);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_callers_get_sifts_errors_as_grpc_status() {
    let cfg = r#"log: { format: json }
admin: { address: "127.0.0.1:0" }
listeners: [{ name: main, address: "127.0.0.1:0" }]
routes:
  - name: svc
    match: { path: { prefix: /pkg.Svc } }
    cluster: empty
    rate_limits:
      - { name: tiny, requests_per_unit: 1, unit: hour }
clusters:
  - { name: empty, endpoints: [] }
"#;
    let sift = Sift::start(cfg);
    let call = |path: &str, ct: &str| {
        let req = Request::post(sift.url(path))
            .header("content-type", ct)
            .header("te", "trailers")
            .body(full(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let client = http2_client();
        async move {
            let r = client.request(req).await.expect("h2 request");
            let (parts, b) = r.into_parts();
            (parts, b.collect().await.unwrap().to_bytes())
        }
    };
    // No endpoint: 503 → UNAVAILABLE, in a trailers-only answer.
    let (p, b) = call("/pkg.Svc/Get", "application/grpc").await;
    assert_eq!(p.status, 200);
    assert_eq!(p.headers["content-type"], "application/grpc");
    assert_eq!(p.headers["grpc-status"], "14");
    assert_eq!(p.headers["grpc-message"], "no healthy upstream");
    assert_eq!(p.headers["x-sift-error"], "no-healthy-endpoint");
    assert!(b.is_empty());
    // The rate limit: UNAVAILABLE, with Retry-After kept.
    let (p, _) = call("/pkg.Svc/Get", "application/grpc+proto").await;
    assert_eq!(p.headers["grpc-status"], "14");
    assert_eq!(p.headers["grpc-message"], "rate limit tiny exceeded");
    assert!(p.headers.contains_key("retry-after"));
    // No route: UNIMPLEMENTED.
    let (p, _) = call("/other.Svc/Get", "application/grpc").await;
    assert_eq!(p.headers["grpc-status"], "12");
    // Not gRPC (gRPC-Web too): the plain HTTP error.
    let (p, b) = call("/other.Svc/Get", "application/grpc-web").await;
    assert_eq!(p.status, 404);
    assert!(p.headers.get("grpc-status").is_none());
    assert!(String::from_utf8_lossy(&b).starts_with("404 "));
}

/// `grpc_timeout`: a call's `grpc-timeout` is its deadline (capped by
/// `max`, less `offset`), the upstream is told the time left, and a
/// deadline that passes is DEADLINE_EXCEEDED; routes without it pass the
/// header through and keep their own timeout.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_keep_their_own_deadline() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let seen = req
            .headers()
            .get("grpc-timeout")
            .map_or("-".to_string(), |v| v.to_str().unwrap().to_string());
        if req.uri().path().ends_with("/Slow") {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let mut r = grpc_answer("0");
        r.headers_mut()
            .insert("x-seen-timeout", seen.parse().unwrap());
        r
    })
    .await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: svc
    match: {{ path: {{ prefix: /pkg.Svc }} }}
    cluster: app
    timeout: 30s
    grpc_timeout: {{ max: 2s, offset: 50ms }}
  - name: plain
    cluster: app
    timeout: 5s
clusters:
  - {{ name: app, protocol: http2, endpoints: ["{}"] }}
"#,
        up.addr
    );
    let sift = Sift::start(&cfg);
    let call = |path: &str, timeout: Option<&str>| {
        let mut b = Request::post(sift.url(path))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        let req = b.body(full(Bytes::from_static(b"\0\0\0\0\0"))).unwrap();
        let client = http2_client();
        async move {
            let t = std::time::Instant::now();
            let r = client.request(req).await.expect("h2 request");
            let (parts, b) = r.into_parts();
            let collected = b.collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let status = parts
                .headers
                .get("grpc-status")
                .or(trailers.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_string());
            (parts, status, t.elapsed())
        }
    };
    let millis = |v: &str| v.strip_suffix('m').unwrap().parse::<u64>().unwrap();
    // The upstream is told the deadline less the offset (and the time
    // already spent).
    let (p, status, _) = call("/pkg.Svc/Fast", Some("500m")).await;
    assert_eq!(status.as_deref(), Some("0"));
    let seen = millis(p.headers["x-seen-timeout"].to_str().unwrap());
    assert!((400..=450).contains(&seen), "upstream saw {seen}m");
    // A deadline that passes: DEADLINE_EXCEEDED, well before the route's
    // 30s timeout.
    let (p, status, took) = call("/pkg.Svc/Slow", Some("200m")).await;
    assert_eq!(status.as_deref(), Some("4"), "{:?}", p.headers);
    assert_eq!(p.headers["x-sift-error"], "deadline-exceeded");
    assert!(took < Duration::from_millis(700), "{took:?}");
    // A longer one is capped by max (2s - 50ms): the slow call fits.
    let (p, status, _) = call("/pkg.Svc/Slow", Some("100S")).await;
    assert_eq!(status.as_deref(), Some("0"));
    let seen = millis(p.headers["x-seen-timeout"].to_str().unwrap());
    assert!((1800..=1950).contains(&seen), "upstream saw {seen}m");
    // No deadline, or one that is not a grpc-timeout: the route's timeout.
    for t in [None, Some("abc"), Some("123456789m"), Some("5s")] {
        let (p, status, _) = call("/pkg.Svc/Slow", t).await;
        assert_eq!(status.as_deref(), Some("0"), "{t:?}");
        let seen = p.headers["x-seen-timeout"].to_str().unwrap().to_string();
        assert_eq!(seen, t.unwrap_or("-"), "passed through as sent");
    }
    // A route without grpc_timeout passes the header and keeps its own.
    let (p, status, _) = call("/other.Svc/Slow", Some("200m")).await;
    assert_eq!(status.as_deref(), Some("0"));
    assert_eq!(p.headers["x-seen-timeout"], "200m");
    assert_eq!(
        sift.metric(r#"sift_errors_total{kind="deadline-exceeded"}"#)
            .await,
        Some(1.0)
    );
    // The call's own deadline is not the upstream's failure.
    assert_eq!(
        sift.metric(r#"sift_errors_total{kind="upstream-timeout"}"#)
            .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_routes_admit_verified_tokens_and_send_their_claims() {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair};
    use sift::jwt::b64url_encode as b64;
    let issuer_key = es256_key();
    let other_key = es256_key();
    let pt = issuer_key.public_key().as_ref();
    let jwks = format!(
        r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","use":"sig","x":"{}","y":"{}"}}]}}"#,
        b64(&pt[1..33]),
        b64(&pt[33..65])
    );
    let dir = TempDir::new();
    let jwks_path = dir.path("jwks.json");
    std::fs::write(&jwks_path, &jwks).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |k: &EcdsaKeyPair, sub: &str, exp: u64| {
        let claims = format!(
            r#"{{"iss":"https://auth.example.com","aud":"api","sub":"{sub}","groups":["a","b"],"exp":{exp}}}"#
        );
        let msg = format!(
            "{}.{}",
            b64(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#),
            b64(claims.as_bytes())
        );
        let sig = k.sign(&SystemRandom::new(), msg.as_bytes()).unwrap();
        format!("Bearer {msg}.{}", b64(sig.as_ref()))
    };
    let app = Upstream::echo("app").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
jwt_providers:
  - name: corp
    issuer: https://auth.example.com
    audiences: [api]
    jwks_file: {}
    claims_to_headers:
      - {{ claim: sub, header: x-user }}
      - {{ claim: groups, header: x-groups }}
routes:
  - name: public
    match: {{ path: {{ prefix: /public }} }}
    cluster: app
    jwt: {{ provider: corp, allow_missing: true }}
  - name: api
    cluster: app
    jwt: {{ provider: corp }}
    rate_limits:
      - {{ name: per-user, requests_per_unit: 2, unit: hour, key: [header:x-user] }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
        jwks_path.display(),
        app.addr
    );
    let sift = Sift::start(&cfg);
    let go = |path: &str, auth: Option<String>, spoof: bool| {
        let mut r = Request::get(sift.url(path));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        if spoof {
            r = r.header("x-user", "root");
        }
        send(r.body(body::empty()).unwrap())
    };
    let before = app.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = go("/x", None, false).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-sift-error"], "jwt-missing");
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"sift\"");
    for (auth, why) in [
        (token(&issuer_key, "alice", now - 120), "token expired"),
        (token(&other_key, "alice", now + 600), "bad signature"),
        ("Bearer not.a.jwt".to_string(), "malformed token"),
    ] {
        let r = go("/x", Some(auth), false).await;
        assert_eq!(r.status(), 401, "{why}");
        assert_eq!(r.headers()["x-sift-error"], "jwt-invalid");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("error=\"invalid_token\"") && challenge.contains(why),
            "{challenge}"
        );
    }
    assert_eq!(
        app.requests.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "none reached the app"
    );

    // A good token: the claims go upstream, a client's own x-user does not,
    // and the token stays at the edge.
    let alice = token(&issuer_key, "alice", now + 600);
    let r = go("/x", Some(alice.clone()), true).await;
    assert_eq!(r.status(), 200);
    let seen = json(r.body());
    assert_eq!(seen["headers"]["x-user"], serde_json::json!(["alice"]));
    assert_eq!(seen["headers"]["x-groups"], serde_json::json!(["a,b"]));
    assert!(seen["headers"].get("authorization").is_none());
    // The rate limit keys on the verified claim: alice's second request is
    // her last, bob still has his.
    assert_eq!(go("/x", Some(alice.clone()), true).await.status(), 200);
    assert_eq!(go("/x", Some(alice.clone()), false).await.status(), 429);
    let bob = token(&issuer_key, "bob", now + 600);
    assert_eq!(go("/x", Some(bob), true).await.status(), 200);

    // allow_missing: no token passes without claims; a bad one does not.
    let r = go("/public", None, true).await;
    assert_eq!(r.status(), 200);
    assert!(
        json(r.body())["headers"].get("x-user").is_none(),
        "the spoofed header is gone"
    );
    assert_eq!(
        go("/public", Some(token(&other_key, "eve", now + 600)), false)
            .await
            .status(),
        401
    );
    for (route, result, n) in [
        ("api", "ok", 4.0),
        ("api", "missing", 1.0),
        ("api", "invalid", 3.0),
        ("public", "allowed_missing", 1.0),
        ("public", "invalid", 1.0),
    ] {
        let sample = format!(r#"sift_jwt_total{{route="{route}",result="{result}"}}"#);
        assert_eq!(sift.metric(&sample).await, Some(n), "{sample}");
    }

    refused_at(
        &one_route_config(
            &format!("jwt_providers: [ {{ name: corp, issuer: x, jwks: '{jwks}' }} ]\n"),
            "jwt: { provider: nope }",
        ),
        "routes[0].jwt.provider",
    );
    for (provider, path) in [
        ("{ name: p, issuer: x }", "jwt_providers[0]"),
        (
            "{ name: p, issuer: x, jwks: '{\"keys\":[]}' }",
            "jwt_providers[0].jwks",
        ),
        (
            "{ name: p, issuer: x, jwks_file: /nonexistent/jwks.json }",
            "jwt_providers[0].jwks_file",
        ),
        (
            "{ name: p, issuer: x, jwks: '{\"keys\":[]}', claims_to_headers: [ { claim: sub, header: x-sift-user } ] }",
            "jwt_providers[0].claims_to_headers[0].header",
        ),
        (
            "{ name: p, issuer: x, remote_jwks: { uri: 'ftp://idp/keys', cluster: a } }",
            "jwt_providers[0].remote_jwks.uri",
        ),
        (
            "{ name: p, issuer: x, remote_jwks: { uri: '/keys', cluster: a } }",
            "jwt_providers[0].remote_jwks.uri",
        ),
        (
            "{ name: p, issuer: x, remote_jwks: { cluster: a } }",
            "jwt_providers[0].remote_jwks",
        ),
        (
            "{ name: p, issuer: 'https://idp', remote_jwks: { uri: 'https://idp/keys', discovery: true, cluster: a } }",
            "jwt_providers[0].remote_jwks",
        ),
        (
            "{ name: p, issuer: not-a-url, remote_jwks: { discovery: true, cluster: a } }",
            "jwt_providers[0].remote_jwks.discovery",
        ),
        (
            "{ name: p, issuer: x, remote_jwks: { uri: 'https://idp/keys', cluster: nope } }",
            "jwt_providers[0].remote_jwks.cluster",
        ),
        (
            "{ name: p, issuer: x, remote_jwks: { uri: 'https://idp/keys', cluster: a, refresh: 0s } }",
            "jwt_providers[0].remote_jwks.refresh",
        ),
        (
            "{ name: p, issuer: x, jwks_file: /x, remote_jwks: { uri: 'https://idp/keys', cluster: a } }",
            "jwt_providers[0]",
        ),
        (
            "{ name: p, issuer: x, jwks: '{\"keys\":[]}', from_headers: [ { name: 'bad name' } ] }",
            "jwt_providers[0].from_headers[0].name",
        ),
        (
            "{ name: p, issuer: x, remote_jwks: { uri: 'https://idp/keys', cluster: a }, from_cookies: [] }",
            "jwt_providers[0]",
        ),
        (
            "{ name: p, issuer: x, remote_jwks: { uri: 'https://idp/keys', cluster: a }, from_cookies: ['a;b'] }",
            "jwt_providers[0].from_cookies[0]",
        ),
    ] {
        refused_at(
            &one_route_config(&format!("jwt_providers: [ {provider} ]\n"), ""),
            path,
        );
    }
}

/// A config of one listener and one route `r` to cluster `a`, with `top`
/// (whole lines) before it and `route` (one line of the route's keys).
fn one_route_config(top: &str, route: &str) -> String {
    format!(
        "{top}listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nroutes:\n  - name: r\n    cluster: a\n    {route}\nclusters:\n  - {{ name: a, endpoints: [\"127.0.0.1:1\"] }}\n"
    )
}

/// `text` is refused with an error at `path`.
fn refused_at(text: &str, path: &str) {
    let errs = sift::config::load_str(text).expect_err(text).0;
    assert!(
        errs.iter().any(|e| e.path == path),
        "want {path}, got {errs:?} for\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_jwks_file_is_picked_up_and_a_broken_one_refused() {
    use ring::signature::EcdsaKeyPair;
    let (old, new) = (es256_key(), es256_key());
    let jwk = ec_jwk;
    let token = |k: &EcdsaKeyPair, kid: &str| {
        let claims = r#"{"iss":"https://auth.example.com","sub":"u"}"#;
        format!("Bearer {}", es256_jwt(k, kid, claims))
    };
    let dir = TempDir::new();
    let jwks_path = dir.path("jwks.json");
    std::fs::write(&jwks_path, format!(r#"{{"keys":[{}]}}"#, jwk(&old, "old"))).unwrap();
    let app = Upstream::echo("app").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
reload: {{ interval: 100ms }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
jwt_providers:
  - {{ name: corp, issuer: https://auth.example.com, jwks_file: {} }}
routes:
  - {{ name: api, cluster: app, jwt: {{ provider: corp }} }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
        jwks_path.display(),
        app.addr
    );
    let sift = Sift::start(&cfg);
    let status = |auth: String| {
        let r = Request::get(sift.url("/")).header("authorization", auth);
        async move { send(r.body(body::empty()).unwrap()).await.status().as_u16() }
    };
    assert_eq!(status(token(&old, "old")).await, 200);
    assert_eq!(status(token(&new, "new")).await, 401);
    // Rotation: the new key is published beside the old one; the config
    // file is not touched.
    std::fs::write(
        &jwks_path,
        format!(r#"{{"keys":[{},{}]}}"#, jwk(&old, "old"), jwk(&new, "new")),
    )
    .unwrap();
    let rotated = eventually(Duration::from_secs(5), || async {
        status(token(&new, "new")).await == 200
    })
    .await;
    assert!(rotated, "the new key is in force without a config change");
    assert_eq!(status(token(&old, "old")).await, 200);
    // A broken file: refused like a bad config, the keys in force stay.
    std::fs::write(&jwks_path, "{ not json").unwrap();
    let rejected = sift
        .metric_reaches(
            r#"sift_config_reloads_total{result="failure"}"#,
            1.0,
            Duration::from_secs(5),
        )
        .await;
    assert!(rejected, "the broken JWKS is reported");
    assert_eq!(status(token(&new, "new")).await, 200);
    let (code, body) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("jwks_file"), "{body}");
}

/// `remote_jwks`: the key set fetched from an identity provider (a real
/// loopback server) through a cluster, refreshed, rotated, a bad answer
/// never replacing good keys, and the keys kept across a reload.
#[tokio::test(flavor = "multi_thread")]
async fn remote_jwks_is_fetched_refreshed_and_kept_across_reloads() {
    use ring::signature::EcdsaKeyPair;
    use std::sync::{Arc, Mutex};
    let (k1, k2) = (es256_key(), es256_key());
    let jwks = |k: &EcdsaKeyPair, kid: &str| format!(r#"{{"keys":[{}]}}"#, ec_jwk(k, kid));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = |k: &EcdsaKeyPair, kid: &str| {
        let claims = format!(r#"{{"iss":"https://idp.example","sub":"u1","exp":{exp}}}"#);
        format!("Bearer {}", es256_jwt(k, kid, &claims))
    };
    // The identity provider: answers what `serve` holds (status, body) and
    // records the Host and path it was asked for.
    type Serve = Arc<Mutex<(u16, String, Vec<String>)>>;
    let serve: Serve = Arc::new(Mutex::new((503, String::new(), Vec::new())));
    let idp = {
        let serve = serve.clone();
        Upstream::start(move |req: Request<hyper::body::Incoming>| {
            let serve = serve.clone();
            async move {
                let mut s = serve.lock().unwrap();
                let host = req
                    .headers()
                    .get("host")
                    .map_or("", |h| h.to_str().unwrap_or(""));
                let asked = format!("{host}{}", req.uri().path());
                s.2.push(asked);
                let mut r = http::Response::new(full(s.1.clone()));
                *r.status_mut() = http::StatusCode::from_u16(s.0).unwrap();
                r
            }
        })
        .await
    };
    let app = Upstream::echo("app").await;
    let cfg = |extra: &str| {
        format!(
            r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
reload: {{ interval: 100ms }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
jwt_providers:
  - name: idp
    issuer: https://idp.example
    remote_jwks: {{ uri: "http://idp.example/.well-known/jwks.json", cluster: idp, refresh: 300ms, timeout: 1s }}
routes:
{extra}  - name: api
    cluster: app
    jwt: {{ provider: idp }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: idp, endpoints: ["{}"] }}
"#,
            app.addr, idp.addr
        )
    };
    let sift = Sift::start(&cfg(""));
    let call = |auth: String| {
        let req = Request::get(sift.url("/x"))
            .header("authorization", auth)
            .body(full(""))
            .unwrap();
        async move { send(req).await.status().as_u16() }
    };
    // The provider fails at first: no keys, every token 401.
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(r#"sift_jwks_fetches_total{provider="idp",result="failed"}"#)
                .await
                .is_some_and(|n| n >= 1.0)
        })
        .await
    );
    assert_eq!(call(token(&k1, "k1")).await, 401);
    // It comes up: the keys are fetched (retried within `refresh`).
    serve.lock().unwrap().0 = 200;
    serve.lock().unwrap().1 = jwks(&k1, "k1");
    assert!(
        eventually(Duration::from_secs(5), || async {
            call(token(&k1, "k1")).await == 200
        })
        .await,
        "the fetched key admits its tokens"
    );
    assert!(
        serve
            .lock()
            .unwrap()
            .2
            .iter()
            .all(|a| a == "idp.example/.well-known/jwks.json"),
        "{:?}",
        serve.lock().unwrap().2
    );
    // Rotation: the provider now has only k2.
    serve.lock().unwrap().1 = jwks(&k2, "k2");
    assert!(
        eventually(Duration::from_secs(5), || async {
            call(token(&k2, "k2")).await == 200
        })
        .await,
        "the rotated key is taken"
    );
    assert_eq!(call(token(&k1, "k1")).await, 401, "the old key is gone");
    // A broken answer keeps the keys in force.
    let failed = || async {
        sift.metric(r#"sift_jwks_fetches_total{provider="idp",result="failed"}"#)
            .await
            .unwrap_or(0.0)
    };
    let before = failed().await;
    serve.lock().unwrap().1 = r#"{"keys": "#.into();
    assert!(eventually(Duration::from_secs(5), || async { failed().await > before }).await);
    assert_eq!(call(token(&k2, "k2")).await, 200);
    // The provider goes down and the config is reloaded: the key set is the
    // same source, so its keys (and task) are kept; tokens still pass.
    serve.lock().unwrap().0 = 500;
    sift.write_config(&cfg(
        "  - { name: health, match: { path: { exact: /healthz } }, direct_response: { status: 200 } }\n",
    ));
    assert!(
        eventually(Duration::from_secs(5), || async {
            get_text(&sift.url("/healthz")).await.0 == 200
        })
        .await,
        "the reload is in force"
    );
    assert_eq!(
        call(token(&k2, "k2")).await,
        200,
        "keys kept across the reload"
    );
}

/// `remote_jwks: { discovery: true }`: the key set's URI found by OpenID
/// Connect discovery (the issuer's `/.well-known/openid-configuration`),
/// both fetched through the cluster with their own Host and path; a
/// document naming another issuer is refused and no key is taken.
#[tokio::test(flavor = "multi_thread")]
async fn remote_jwks_by_openid_discovery() {
    use std::sync::{Arc, Mutex};
    let key = es256_key();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = format!(r#"{{"iss":"https://idp.example/realms/a","sub":"u1","exp":{exp}}}"#);
    let token = format!("Bearer {}", es256_jwt(&key, "k1", &claims));
    // The provider's discovery document names this issuer (changed below).
    let doc_issuer = Arc::new(Mutex::new("https://idp.example/realms/a".to_string()));
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let jwks = format!(r#"{{"keys":[{}]}}"#, ec_jwk(&key, "k1"));
    let idp = {
        let (doc_issuer, asked) = (doc_issuer.clone(), asked.clone());
        Upstream::start(move |req: Request<hyper::body::Incoming>| {
            let (doc_issuer, asked, jwks) = (doc_issuer.clone(), asked.clone(), jwks.clone());
            async move {
                let host = req.headers().get("host").map_or("", |h| h.to_str().unwrap_or(""));
                asked.lock().unwrap().push(format!("{host}{}", req.uri().path()));
                match req.uri().path() {
                    "/realms/a/.well-known/openid-configuration" => http::Response::new(full(format!(
                        r#"{{"issuer":"{}","jwks_uri":"https://keys.idp.example/realms/a/certs","id_token_signing_alg_values_supported":["ES256"]}}"#,
                        doc_issuer.lock().unwrap()
                    ))),
                    "/realms/a/certs" => http::Response::new(full(jwks)),
                    _ => text_response(404, "no"),
                }
            }
        })
        .await
    };
    let app = Upstream::echo("app").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
jwt_providers:
  - name: idp
    issuer: https://idp.example/realms/a/
    remote_jwks: {{ discovery: true, cluster: idp, refresh: 300ms, timeout: 1s }}
routes:
  - {{ name: api, cluster: app, jwt: {{ provider: idp }} }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: idp, endpoints: ["{}"] }}
"#,
        app.addr, idp.addr
    );
    // The issuer in the config ends with '/': the document must name it
    // as written, so serve that form.
    *doc_issuer.lock().unwrap() = "https://idp.example/realms/a/".into();
    let sift = Sift::start(&cfg);
    // The token's iss has no trailing '/': it is another issuer, refused
    // whatever the keys; first check that the keys came.
    assert!(fetched(&sift, "ok").await, "{:?}", asked.lock().unwrap());
    {
        let a = asked.lock().unwrap();
        assert_eq!(
            a[0],
            "idp.example/realms/a/.well-known/openid-configuration"
        );
        assert_eq!(a[1], "keys.idp.example/realms/a/certs");
    }
    assert_eq!(
        bearer_status(&sift, &token).await,
        401,
        "iss differs from the issuer by its '/'"
    );
    drop(sift);
    // Same issuer, written without the '/': the token passes.
    let cfg = cfg.replace(
        "issuer: https://idp.example/realms/a/",
        "issuer: https://idp.example/realms/a",
    );
    *doc_issuer.lock().unwrap() = "https://idp.example/realms/a".into();
    let sift = Sift::start(&cfg);
    assert!(
        eventually(Duration::from_secs(10), || async {
            bearer_status(&sift, &token).await == 200
        })
        .await,
        "the discovered key admits its token"
    );
    drop(sift);
    // A document for another issuer: no key is taken, the fetch fails.
    *doc_issuer.lock().unwrap() = "https://evil.example/realms/a".into();
    let sift = Sift::start(&cfg);
    assert!(fetched(&sift, "failed").await);
    assert_eq!(bearer_status(&sift, &token).await, 401);
    // The log line is read from sift's output by another thread: it may
    // come a moment after the count (and under load a first fetch may
    // fail by its timeout before one fails for the issuer).
    let said = eventually(Duration::from_secs(10), || async {
        sift.log_lines()
            .join("\n")
            .contains(r#"names issuer \"https://evil.example/realms/a\""#)
    })
    .await;
    assert!(said, "{}", sift.log_lines().join("\n"));
}

/// GET /x with `Authorization: <auth>`: the status.
async fn bearer_status(sift: &Sift, auth: &str) -> u16 {
    let req = Request::get(sift.url("/x"))
        .header("authorization", auth)
        .body(full(""))
        .unwrap();
    send(req).await.status().as_u16()
}

/// Whether provider `idp` counts a fetch with `result` within 5 s.
async fn fetched(sift: &Sift, result: &str) -> bool {
    let sample = format!(r#"sift_jwks_fetches_total{{provider="idp",result="{result}"}}"#);
    eventually(Duration::from_secs(5), || async {
        sift.metric(&sample).await.is_some_and(|n| n >= 1.0)
    })
    .await
}

/// `from_headers`, `from_cookies`, `from_params`: the token where the
/// provider says it is, and only there; `forward: false` drops the header
/// it came in.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_tokens_from_a_header_a_cookie_or_a_parameter() {
    let k = es256_key();
    let jwks = format!(r#"{{"keys":[{}]}}"#, ec_jwk(&k, ""));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = format!(r#"{{"iss":"https://idp.example","sub":"u7","exp":{exp}}}"#);
    let token = es256_jwt(&k, "", &claims);
    let app = Upstream::echo("app").await;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
jwt_providers:
  - name: idp
    issuer: https://idp.example
    jwks: '{jwks}'
    from_headers: [ {{ name: x-jwt-assertion }} ]
    from_cookies: [ session ]
    from_params: [ access_token ]
    claims_to_headers: [ {{ claim: sub, header: x-user }} ]
routes:
  - name: api
    cluster: app
    jwt: {{ provider: idp }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
        app.addr
    ));
    let call = |path: String, headers: Vec<(&'static str, String)>| {
        let mut r = Request::get(sift.url(&path));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        send(r.body(full("")).unwrap())
    };
    // In the header: admitted, the header not forwarded (forward: false).
    let r = call("/a".into(), vec![("x-jwt-assertion", token.clone())]).await;
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(seen["headers"]["x-user"][0], "u7", "{seen}");
    assert!(seen["headers"].get("x-jwt-assertion").is_none(), "{seen}");
    // In a cookie, in a parameter: admitted.
    let r = call(
        "/b".into(),
        vec![("cookie", format!("theme=dark; session={token}"))],
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = call(format!("/c?x=1&access_token={token}"), vec![]).await;
    assert_eq!(r.status(), 200);
    // Authorization: Bearer is not a place this provider reads: missing.
    let r = call(
        "/d".into(),
        vec![("authorization", format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-sift-error"], "jwt-missing");
    // Two different tokens in two places: refused.
    let r = call(
        "/e?access_token=a.b.c".into(),
        vec![("cookie", format!("session={token}"))],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-sift-error"], "jwt-invalid");
}

/// A fresh ES256 (P-256) signing key.
fn es256_key() -> ring::signature::EcdsaKeyPair {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref(), &rng).unwrap()
}

/// The key's public JWK (`kid` when not empty).
fn ec_jwk(k: &ring::signature::EcdsaKeyPair, kid: &str) -> String {
    use ring::signature::KeyPair;
    use sift::jwt::b64url_encode as b64;
    let pt = k.public_key().as_ref();
    let kid = if kid.is_empty() {
        String::new()
    } else {
        format!(r#""kid":"{kid}","#)
    };
    format!(
        r#"{{"kty":"EC","crv":"P-256",{kid}"x":"{}","y":"{}"}}"#,
        b64(&pt[1..33]),
        b64(&pt[33..65])
    )
}

/// A compact ES256 JWT of `claims` (JSON), `kid` in its header when not
/// empty.
fn es256_jwt(k: &ring::signature::EcdsaKeyPair, kid: &str, claims: &str) -> String {
    use sift::jwt::b64url_encode as b64;
    let header = if kid.is_empty() {
        r#"{"alg":"ES256"}"#.to_string()
    } else {
        format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#)
    };
    let msg = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let sig = k
        .sign(&ring::rand::SystemRandom::new(), msg.as_bytes())
        .unwrap();
    format!("{msg}.{}", b64(sig.as_ref()))
}

fn proxy_protocol_config(up: std::net::SocketAddr, mode: &str) -> String {
    format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    proxy_protocol: {mode}
routes:
  - name: default
    cluster: app
    rate_limits: [ {{ name: per-ip, requests_per_unit: 1, unit: minute }} ]
clusters:
  - name: app
    endpoints: ["{up}"]
"#
    )
}

const GET_CLOSE: &[u8] = b"GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";

/// The X-Forwarded-For value the echo upstream got, from a raw answer.
fn xff_of(answer: &str) -> Option<String> {
    let body = answer.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(v["headers"]["x-forwarded-for"][0].as_str()?.to_string())
}

/// `proxy_protocol: required`: the client a v1 or v2 header names is the
/// connection's client (X-Forwarded-For, rate limits per IP, access log);
/// a connection without a header, or with a broken one, is closed.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_headers_name_the_client() {
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&proxy_protocol_config(up.addr, "required"));
    let v1 = [
        b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n".as_slice(),
        GET_CLOSE,
    ]
    .concat();
    let a = raw_exchange(sift.addr(), &v1).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert_eq!(xff_of(&a).as_deref(), Some("203.0.113.7"));
    // The rate limit is per client IP: the same client again is limited,
    // another one (v2, binary) is not.
    let again = raw_exchange(sift.addr(), &v1).await;
    assert!(again.starts_with("HTTP/1.1 429"), "{again}");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]);
    v2.extend_from_slice(GET_CLOSE);
    let b = raw_exchange(sift.addr(), &v2).await;
    assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    assert_eq!(xff_of(&b).as_deref(), Some("198.51.100.9"));
    // A LOCAL header (the balancer's health check) keeps the peer.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    local.extend_from_slice(GET_CLOSE);
    let c = raw_exchange(sift.addr(), &local).await;
    assert_eq!(xff_of(&c).as_deref(), Some("127.0.0.1"), "{c}");
    // No header, a broken one: closed without an answer.
    assert_eq!(raw_exchange(sift.addr(), GET_CLOSE).await, "");
    let broken = [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n".as_slice(),
        GET_CLOSE,
    ]
    .concat();
    assert_eq!(raw_exchange(sift.addr(), &broken).await, "");
    assert_eq!(
        sift.metric(r#"sift_downstream_protocol_errors_total{listener="main"}"#)
            .await,
        Some(2.0)
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            sift.log_lines()
                .iter()
                .any(|l| l.contains(r#""remote":"203.0.113.7:56324""#))
        })
        .await,
        "the access log names the client"
    );
}

/// `proxy_protocol: optional`: a connection with a header and one without
/// both work (a balancer moving to the PROXY protocol, or direct clients).
#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_optional_takes_both() {
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&proxy_protocol_config(up.addr, "optional"));
    let v1 = [
        b"PROXY TCP6 2001:db8::7 ::1 4000 80\r\n".as_slice(),
        GET_CLOSE,
    ]
    .concat();
    let a = raw_exchange(sift.addr(), &v1).await;
    assert_eq!(xff_of(&a).as_deref(), Some("2001:db8::7"), "{a}");
    let b = raw_exchange(sift.addr(), GET_CLOSE).await;
    assert_eq!(xff_of(&b).as_deref(), Some("127.0.0.1"), "{b}");
}

/// `pool.max_requests_per_connection` and `pool.max_connection_duration`
/// (Envoy's): a kept-alive upstream connection is closed after N requests
/// (HTTP/2: streams), or takes no new request once it is that old, so
/// traffic to a Service address spreads over its pods again; without them
/// one connection serves everything.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_recycled_by_count_and_age() {
    use std::sync::atomic::Ordering::SeqCst;
    let (a, b, c, d) = (
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
        Upstream::echo("d").await,
    );
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: a, match: {{ path: {{ prefix: /a }} }}, cluster: a }}
  - {{ name: b, match: {{ path: {{ prefix: /b }} }}, cluster: b }}
  - {{ name: c, match: {{ path: {{ prefix: /c }} }}, cluster: c }}
  - {{ name: d, match: {{ path: {{ prefix: /d }} }}, cluster: d }}
clusters:
  - {{ name: a, endpoints: ["{}"], pool: {{ max_requests_per_connection: 3 }} }}
  - {{ name: b, endpoints: ["{}"], protocol: http2, pool: {{ max_requests_per_connection: 3 }} }}
  - {{ name: c, endpoints: ["{}"], pool: {{ max_connection_duration: 1s }} }}
  - {{ name: d, endpoints: ["{}"] }}
"#,
        a.addr, b.addr, c.addr, d.addr
    );
    let sift = Sift::start(&cfg);
    for path in ["/a", "/b", "/c", "/d"] {
        for _ in 0..9 {
            assert_eq!(get_text(&sift.url(path)).await.0, 200);
        }
    }
    assert_eq!(
        a.connections.load(SeqCst),
        3,
        "HTTP/1.1: 9 requests, 3 per connection"
    );
    assert_eq!(
        b.connections.load(SeqCst),
        3,
        "HTTP/2: 9 streams, 3 per connection"
    );
    assert_eq!(c.connections.load(SeqCst), 1, "young enough for all 9");
    assert_eq!(d.connections.load(SeqCst), 1, "no limit: one connection");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get_text(&sift.url("/c")).await.0, 200);
    assert_eq!(c.connections.load(SeqCst), 2, "too old: a new connection");
    assert_eq!(get_text(&sift.url("/d")).await.0, 200);
    assert_eq!(d.connections.load(SeqCst), 1);
    let e = sift::config::load_str(&cfg.replace(
        "pool: { max_connection_duration: 1s }",
        "pool: { max_requests_per_connection: 0, max_connection_duration: 0s }",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("clusters[2].pool.max_requests_per_connection")
            && e.contains("clusters[2].pool.max_connection_duration"),
        "{e}"
    );
}

/// Header values with Envoy's `%VARIABLES%` (nginx's `proxy_set_header
/// X-Real-IP $remote_addr`): filled per request, left out when empty;
/// `%%` is a `%`; response headers name the endpoint and status.
#[tokio::test(flavor = "multi_thread")]
async fn request_header_templates_fill_in_per_request() {
    let up = Upstream::echo("app").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    forwarded: {{ trusted_hops: 1 }}
routes:
  - name: api
    cluster: app
    request_headers:
      set:
        x-real-ip: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
        x-peer: "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"
        x-request-start: "t=%START_TIME(%s.%3f)%"
        x-tenant-copy: "%REQ(X-Tenant)%"
        x-share: "100%%"
      add:
        x-via: "sift %PROTOCOL% %ROUTE_NAME% %UPSTREAM_CLUSTER%"
    response_headers:
      set:
        x-served-by: "%UPSTREAM_HOST% %RESPONSE_CODE% %ROUTE_NAME%"
        x-upstream-service-time: "%RESPONSE_DURATION%"
        x-pct: "100%%"
clusters:
  - name: app
    endpoints: ["{}"]
"#,
        up.addr
    );
    let sift = Sift::start(&cfg);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let get = |tenant: Option<&'static str>| {
        let url = sift.url("/x");
        async move {
            let mut r = Request::get(url).header("x-forwarded-for", "198.51.100.4");
            if let Some(t) = tenant {
                r = r.header("x-tenant", t);
            }
            send(r.body(body::empty()).unwrap()).await
        }
    };
    let sent = std::time::Instant::now();
    let r = get(Some("acme")).await;
    let took = sent.elapsed().as_millis();
    assert_eq!(
        r.headers()["x-served-by"].to_str().unwrap(),
        format!("{} 200 api", up.addr)
    );
    // Envoy's RESPONSE_DURATION: whole milliseconds to the answer's head,
    // within what the client saw.
    let ms: u128 = r.headers()["x-upstream-service-time"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms <= took, "{ms} ms within {took} ms");
    assert_eq!(r.headers()["x-pct"], "100%");
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    let h = &v["headers"];
    assert_eq!(
        h["x-real-ip"][0], "198.51.100.4",
        "the trusted hop's client"
    );
    assert_eq!(h["x-peer"][0], "127.0.0.1");
    assert_eq!(h["x-tenant-copy"][0], "acme");
    assert_eq!(h["x-share"][0], "100%");
    assert_eq!(h["x-via"][0], "sift HTTP/1.1 api app");
    let t: f64 = h["x-request-start"][0].as_str().unwrap()[2..]
        .parse()
        .unwrap();
    assert!(t >= before.floor() && t < before + 60.0, "{t} vs {before}");
    let r = get(None).await;
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert!(
        v["headers"].get("x-tenant-copy").is_none(),
        "empty: left out"
    );
    // An unknown variable, or a lone '%', in request headers is refused.
    for (bad, words) in [
        ("%NOPE%", "unknown variable %NOPE%"),
        ("50%", "not closed"),
        ("%UPSTREAM_HOST%", "only for response headers"),
        ("%RESPONSE_DURATION%", "only for response headers"),
    ] {
        let c = cfg.replace("\"%REQ(X-Tenant)%\"", &format!("\"{bad}\""));
        let err = Sift::try_start(&c).err().expect("refused");
        assert!(
            err.contains("routes[0].request_headers.set.x-tenant-copy") && err.contains(words),
            "{err}"
        );
    }
}

/// `log.access_log_filter`: skipped paths never logged, errors and slow
/// requests always, a sample of the rest; changed by a reload.
#[tokio::test(flavor = "multi_thread")]
async fn access_log_filter_keeps_errors_slow_requests_and_a_sample() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        match req.uri().path() {
            "/boom" => text_response(500, "boom"),
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(150)).await;
                text_response(200, "slow")
            }
            _ => text_response(200, "ok"),
        }
    })
    .await;
    let cfg = |sample: &str| {
        format!(
            r#"log: {{ format: json, access_log_filter: {{ sample: {sample}, min_status: 500, slower_than: 100ms, skip_paths: [/healthz] }} }}
admin: {{ address: "127.0.0.1:0" }}
reload: {{ interval: 100ms }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: all
    cluster: app
clusters:
  - name: app
    endpoints: ["{}"]
"#,
            up.addr
        )
    };
    let sift = Sift::start(&cfg("0.5"));
    for _ in 0..200 {
        get_text(&sift.url("/x")).await;
    }
    for _ in 0..5 {
        get_text(&sift.url("/healthz")).await;
        get_text(&sift.url("/boom")).await;
    }
    get_text(&sift.url("/slow")).await;
    let count = |path: &'static str| {
        let sift = &sift;
        move || {
            sift.log_lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["message"] == "access" && v["path"] == path)
                .count()
        }
    };
    assert!(
        eventually(Duration::from_secs(3), || async { count("/slow")() == 1 }).await,
        "a slow request is always logged"
    );
    assert_eq!(count("/boom")(), 5, "every 500");
    assert_eq!(count("/healthz")(), 0, "skipped");
    // Binomial(200, 0.5): 100 ± 7; 60..=140 is beyond 5 standard deviations.
    let sampled = count("/x")();
    assert!((60..=140).contains(&sampled), "{sampled} of 200 sampled");
    // A reload to sample 0: ordinary requests are no longer logged.
    sift.write_config(&cfg("0"));
    assert!(
        sift.metric_reaches(
            r#"sift_config_reloads_total{result="success"}"#,
            1.0,
            Duration::from_secs(5)
        )
        .await
    );
    for _ in 0..50 {
        get_text(&sift.url("/x")).await;
    }
    get_text(&sift.url("/boom")).await;
    assert!(eventually(Duration::from_secs(3), || async { count("/boom")() == 6 }).await);
    assert_eq!(
        count("/x")(),
        sampled,
        "no ordinary request logged after the reload"
    );
}

/// An HTTP/2 upstream answers with Content-Length and trailers; an
/// HTTP/1.1 client gets the body by its length (HTTP/1.1 carries trailers
/// only in chunked bodies), so hyper never asks for the trailers. The
/// answer reached the client whole: the access log says `completed: true`.
#[tokio::test(flavor = "multi_thread")]
async fn a_sized_http2_answer_with_trailers_completes_for_an_http1_client() {
    let up = Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", "abc".parse().unwrap());
        let mut r = http::Response::new(sift::body::boxed(GrpcBody(
            Some(bytes::Bytes::from_static(b"hello")),
            Some(t),
        )));
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, "5".parse().unwrap());
        r
    })
    .await;
    let yaml = simple_config(up.addr, "").replace(
        &format!("    endpoints: [\"{}\"]\n", up.addr),
        &format!("    endpoints: [\"{}\"]\n    protocol: http2\n", up.addr),
    );
    assert!(yaml.contains("http2"), "{yaml}");
    let sift = Sift::start(&yaml);
    let (status, body) = get_text(&sift.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    let line = || {
        sift.log_lines().into_iter().find_map(|l| {
            serde_json::from_str::<serde_json::Value>(&l)
                .ok()
                .filter(|v| v["message"] == "access")
        })
    };
    assert!(eventually(Duration::from_secs(5), || async { line().is_some() }).await);
    let line = line().unwrap();
    assert_eq!(line["completed"], true, "{line}");
    assert_eq!(line["bytes_sent"], 5, "{line}");
}

/// `local_replies`: sift's own answers in JSON, and bodies of the
/// operator's own by error or status (an HTML page from a file, a JSON
/// template), with the request id and message filled and escaped;
/// headers such as x-sift-error stay; gRPC calls keep their status form.
#[tokio::test(flavor = "multi_thread")]
async fn local_replies_reshape_sift_s_own_answers() {
    let dir = TempDir::new();
    let page = dir.path("404.html");
    std::fs::write(
        &page,
        "<html><h1>%RESPONSE_CODE%: nothing here</h1><p>%MESSAGE%</p><!-- %REQUEST_ID% --></html>",
    )
    .unwrap();
    let up = Upstream::echo("app").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
local_replies:
  format: json
  mappers:
    - errors: [no-route]
      body_file: "{}"
      content_type: text/html; charset=utf-8
    - statuses: [503]
      status: 502
      body: '{{"code": %RESPONSE_CODE%, "why": "%MESSAGE%", "kind": "%ERROR%"}}'
      content_type: application/json
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: app
    match: {{ path: {{ prefix: /app }} }}
    cluster: app
    max_request_body: 10
  - name: empty
    match: {{ path: {{ prefix: /empty }} }}
    cluster: empty
clusters:
  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: empty, endpoints: [] }}
"#,
        page.display(),
        up.addr
    );
    let sift = Sift::start(&cfg);
    // No route: the HTML page.
    let r = send(Request::get(sift.url("/nowhere")).body(full("")).unwrap()).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["x-sift-error"], "no-route");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = String::from_utf8_lossy(r.body()).into_owned();
    assert_eq!(
        body,
        format!(
            "<html><h1>404: nothing here</h1><p>no route for this request</p><!-- {id} --></html>"
        )
    );
    // 503 no healthy upstream, rewritten to 502 with the JSON template.
    let r = send(Request::get(sift.url("/empty")).body(full("")).unwrap()).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-sift-error"], "no-healthy-endpoint");
    let v: serde_json::Value = serde_json::from_slice(r.body()).expect("valid JSON");
    assert_eq!(
        v,
        serde_json::json!({"code": 502, "why": "no healthy upstream", "kind": "no-healthy-endpoint"})
    );
    // No mapper: the JSON format.
    let r = send(
        Request::post(sift.url("/app"))
            .body(full("0123456789abcdef"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["error"], "body-too-large");
    assert_eq!(v["status"], 413);
    assert_eq!(
        v["request_id"],
        r.headers()["x-request-id"].to_str().unwrap()
    );
    assert!(
        v["message"].as_str().unwrap().contains("limit 10 bytes"),
        "{v}"
    );
    // A gRPC call still gets a gRPC status, not a page.
    let r = send(
        Request::post(sift.url("/nowhere"))
            .header("content-type", "application/grpc")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "12");
    assert!(r.body().is_empty());
}

/// Send a request head and the first bytes of its body, then stall:
/// return the answer, how long it took and whether sift then closed.
async fn stalled_body(addr: std::net::SocketAddr, path: &str) -> (String, Duration, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: app\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\nthe first forty bytes of a long message."
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    (
        String::from_utf8_lossy(&buf).into_owned(),
        t0.elapsed(),
        closed,
    )
}

/// A client that stops sending its request body gets 408 once the
/// listener's request_body_timeout passes (nginx's client_body_timeout),
/// whether the body streams to the upstream, is held for a block filter,
/// or is collected for retries; and sift closes the connection. Without
/// the limit, a held body waited forever, and a streamed one ended as the
/// upstream's fault (504 after the route's timeout).
#[tokio::test(flavor = "multi_thread")]
async fn stalled_request_bodies_get_408() {
    let up = Upstream::echo("app").await;
    let a = up.addr;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    limits: {{ request_body_timeout: 400ms }}
filters:
  - name: spam
    kind: spam
routes:
  - name: held
    match: {{ path: {{ prefix: /held }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: block }} ]
  - name: retried
    match: {{ path: {{ prefix: /retried }} }}
    cluster: app
    retries: {{ attempts: 2, non_idempotent: true }}
  - name: streamed
    timeout: 10s
    cluster: app
clusters:
  - name: app
    endpoints: ["{a}"]
"#
    ));
    for path in ["/held", "/retried", "/streamed"] {
        let (answer, took, closed) = stalled_body(sift.addr(), path).await;
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{path}: {answer:?} after {took:?}"
        );
        assert!(
            answer.contains("x-sift-error: request-body-timeout"),
            "{answer}"
        );
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_secs(3),
            "{path}: {took:?}"
        );
        assert!(closed, "{path}: the connection stays open");
    }
    // The held and collected bodies never reached the upstream; the
    // streamed one did (its body then failed).
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        sift.metric(r#"sift_errors_total{kind="request-body-timeout"}"#)
            .await,
        Some(3.0)
    );
    // A body that keeps coming is not cut, however long it takes.
    let (tx, b) = channel_body(4);
    let req = Request::post(sift.url("/held"))
        .header("content-type", "text/plain")
        .body(b)
        .unwrap();
    let feed = tokio::spawn(async move {
        for _ in 0..6 {
            tx.send(Bytes::from_static(b"hello there, ")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let resp = send(req).await;
    feed.await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.body());
    assert_eq!(json(resp.body())["body_len"], 78);
}

/// The route's timeout counts from the end of a streamed request body, as
/// Envoy's route timeout does: an upload slower than the timeout gets its
/// answer (it was a 504 that blamed the upstream), an upstream that then
/// does not answer still times out, and an upstream that stops reading
/// the body is a 504 after request_body_timeout, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn the_route_timeout_counts_from_the_end_of_the_body() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let slow = req.uri().path() == "/silent";
        let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
        if slow {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        json_response(200, &serde_json::json!({ "body_len": n.unwrap_or(0) }))
    })
    .await;
    // An upstream that takes connections and never reads them.
    let deaf = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf_addr = deaf.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = deaf.accept().await {
            kept.push(s);
        }
    });
    let a = up.addr;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    limits: {{ request_body_timeout: 700ms }}
routes:
  - name: deaf
    match: {{ path: {{ prefix: /deaf }} }}
    timeout: 300ms
    max_request_body: 256MiB
    cluster: deaf
  - name: app
    timeout: 300ms
    cluster: app
clusters:
  - name: app
    endpoints: ["{a}"]
  - name: deaf
    endpoints: ["{deaf_addr}"]
"#
    ));
    let upload = |path: &'static str, chunks: usize, gap: Duration, size: usize| {
        let url = sift.url(path);
        async move {
            let (tx, b) = channel_body(2);
            let req = Request::post(url).body(b).unwrap();
            let feed = tokio::spawn(async move {
                for _ in 0..chunks {
                    if tx.send(Bytes::from(vec![b'x'; size])).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
            });
            let t0 = std::time::Instant::now();
            let resp = tokio::time::timeout(Duration::from_secs(20), send(req))
                .await
                .expect("an answer, not a hang");
            feed.abort();
            (resp, t0.elapsed())
        }
    };
    // 8 chunks 150 ms apart: 1.2 s of upload against a 300 ms timeout.
    let (resp, took) = upload("/upload", 8, Duration::from_millis(150), 1000).await;
    assert_eq!(resp.status(), 200, "{:?} after {took:?}", resp.headers());
    assert_eq!(json(resp.body())["body_len"], 8000);
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    // The same upload to an upstream that never answers: 504 about 300 ms
    // after the body's end.
    let (resp, took) = upload("/silent", 8, Duration::from_millis(150), 1000).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-sift-error"], "upstream-timeout");
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // 160 MiB as fast as it goes to an upstream that reads nothing: the
    // socket buffers fill, the body stops moving, 504.
    let (resp, took) = upload("/deaf", 160, Duration::ZERO, 1 << 20).await;
    assert_eq!(resp.status(), 504, "{:?}", resp.headers());
    assert_eq!(resp.headers()["x-sift-error"], "upstream-timeout");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

/// Once the upstream has answered, a client that goes quiet on its
/// request stream (a bidirectional gRPC-like call over HTTP/2) is not cut
/// by request_body_timeout: the stream is the upstream's business.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_client_stream_after_the_answer_is_not_cut() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        // Echo the request body as it comes, answering at once.
        let mut r = http::Response::new(body::boxed(req.into_body()));
        r.headers_mut()
            .insert("content-type", "application/octet-stream".parse().unwrap());
        r
    })
    .await;
    let a = up.addr;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    protocol: h2
    limits: {{ request_body_timeout: 300ms }}
routes:
  - name: app
    cluster: app
clusters:
  - name: app
    protocol: http2
    endpoints: ["{a}"]
"#
    ));
    let (tx, b) = channel_body(4);
    let req = Request::post(sift.url("/stream")).body(b).unwrap();
    tx.send(Bytes::from_static(b"ping ")).await.unwrap();
    let resp = http2_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut rb = resp.into_body();
    let first = rb.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"ping ");
    // Quiet for three times the timeout, then more, then the end.
    tokio::time::sleep(Duration::from_millis(900)).await;
    tx.send(Bytes::from_static(b"pong")).await.unwrap();
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(5), rb.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"pong");
}

/// `max_connections_per_client` (nginx's `limit_conn` per IP): a client at
/// its limit has further connections closed at accept, counted; other
/// clients are not affected; a closed connection frees its place. The
/// client is the PROXY protocol source when the listener reads one.
#[tokio::test(flavor = "multi_thread")]
async fn connections_per_client_are_limited() {
    let up = Upstream::echo("app").await;
    let cfg = proxy_protocol_config(up.addr, "required").replace(
        "    proxy_protocol: required\n",
        "    proxy_protocol: required\n    limits: { max_connections_per_client: 2 }\n",
    );
    let cfg = cfg.replace(
        "    rate_limits: [ { name: per-ip, requests_per_unit: 1, unit: minute } ]\n",
        "",
    );
    let sift = Sift::start(&cfg);
    // A keep-alive connection from `src` that got its answer, or None if
    // sift closed it without one.
    let open = |src: &'static str| {
        let addr = sift.addr();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "PROXY TCP4 {src} 10.0.0.1 56324 80\r\nGET /x HTTP/1.1\r\nHost: a.example\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes()).await;
            let mut b = [0u8; 12];
            match tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut b)).await {
                Ok(Ok(_)) if &b == b"HTTP/1.1 200" => Some(s),
                Ok(_) => None,
                Err(_) => panic!("neither an answer nor a close from {src}"),
            }
        }
    };
    let first = open("203.0.113.7").await.expect("first connection");
    let _second = open("203.0.113.7").await.expect("second connection");
    assert!(open("203.0.113.7").await.is_none(), "a third is closed");
    let _other = open("198.51.100.9").await.expect("another client");
    assert_eq!(
        sift.metric(r#"sift_listener_client_overflow_total{listener="main"}"#)
            .await,
        Some(1.0)
    );
    drop(first);
    let mut again = None;
    for _ in 0..40 {
        again = open("203.0.113.7").await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a closed connection frees its place");
}

/// The access log names the client's User-Agent, the request body's
/// bytes received, and the upstream's own time to its response head
/// (Envoy's upstream service time), absent when no upstream answered.
#[tokio::test(flavor = "multi_thread")]
async fn access_log_names_agent_body_bytes_and_upstream_time() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let n = req.into_body().collect().await.unwrap().to_bytes().len();
        json_response(200, &serde_json::json!({ "body_len": n }))
    })
    .await;
    let yaml = simple_config(up.addr, "    match: { path: { regex: \"/s.*\" } }\n");
    let sift = Sift::start(&yaml);
    let req = Request::post(sift.url("/slow"))
        .header("user-agent", "probe/1.0")
        .body(full(vec![b'x'; 1234]))
        .unwrap();
    assert_eq!(send(req).await.status(), 200);
    let (tx, b) = channel_body(4);
    let req = Request::post(sift.url("/stream")).body(b).unwrap();
    let feed = tokio::spawn(async move {
        for _ in 0..3 {
            tx.send(Bytes::from(vec![b'y'; 1000])).await.unwrap();
        }
    });
    assert_eq!(send(req).await.status(), 200);
    feed.await.unwrap();
    assert_eq!(
        get_text(&sift.url("/nothing-here?page=2&access_token=s3cret&q=a+b"))
            .await
            .0,
        404
    );
    let lines = || -> Vec<serde_json::Value> {
        sift.log_lines()
            .into_iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|v| v["message"] == "access")
            .collect()
    };
    assert!(eventually(Duration::from_secs(5), || async { lines().len() == 3 }).await);
    let lines = lines();
    let by_path = |p: &str| lines.iter().find(|l| l["path"] == p).unwrap().clone();
    let slow = by_path("/slow");
    assert_eq!(slow["user_agent"], "probe/1.0", "{slow}");
    assert_eq!(slow["bytes_received"], 1234, "{slow}");
    let upstream = slow["upstream_ms"].as_f64().expect("upstream_ms");
    let total = slow["duration_ms"].as_f64().unwrap();
    assert!(
        upstream >= 150.0 && upstream <= total,
        "{upstream} of {total}"
    );
    let stream = by_path("/stream");
    assert_eq!(stream["bytes_received"], 3000, "{stream}");
    assert_eq!(stream["user_agent"], "-", "{stream}");
    let none = by_path("/nothing-here");
    assert_eq!(none["bytes_received"], 0, "{none}");
    // The query, as nginx's $request_uri and Envoy's path show it, but a
    // secret-looking parameter's value redacted.
    assert_eq!(
        none["query"], "page=2&access_token=[redacted]&q=a+b",
        "{none}"
    );
    assert_eq!(slow["query"], "-", "{slow}");
    assert!(!sift.log_lines().join("\n").contains("s3cret"));
    assert!(none.get("upstream_ms").is_none(), "{none}");
}

/// The kernel's view of one TCP socket (from /proc/net/tcp): its timer
/// kind (`tr`: 2 is keepalive) and the clock ticks until it fires.
fn tcp_timer(local_port: u16, remote_port: u16) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if port(f[1])? != local_port || port(f[2])? != remote_port || f[3] != "01" {
            return None;
        }
        let (tr, when) = f[5].split_once(':')?;
        Some((
            u32::from_str_radix(tr, 16).ok()?,
            u64::from_str_radix(when, 16).ok()?,
        ))
    })
}

/// `tcp_keepalive` on a listener and on a cluster: the accepted socket
/// and the upstream socket both run the kernel's keepalive timer, with the
/// idle time configured (without it an idle socket has no timer).
#[tokio::test(flavor = "multi_thread")]
async fn tcp_keepalive_is_set_on_accepted_and_upstream_sockets() {
    let up = Upstream::echo("app").await;
    let cfg = simple_config(up.addr, "")
        .replace(
            "    address: \"127.0.0.1:0\"\n",
            "    address: \"127.0.0.1:0\"\n    tcp_keepalive: { time: 7s, interval: 2s, probes: 3 }\n",
        )
        .replace(
            &format!("    endpoints: [\"{}\"]\n", up.addr),
            &format!(
                "    endpoints: [\"{}\"]\n    tcp_keepalive: {{ time: 9s }}\n",
                up.addr
            ),
        );
    assert!(cfg.matches("tcp_keepalive").count() == 2, "{cfg}");
    let sift = Sift::start(&cfg);
    // A plain listener without it, for contrast: the admin port's socket.
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 12];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"HTTP/1.1 200");
    let ticks = 100; // USER_HZ on Linux
    let client_port = s.local_addr().unwrap().port();
    let (tr, when) = tcp_timer(sift.addr().port(), client_port).expect("sift's accepted socket");
    assert_eq!(tr, 2, "keepalive timer on the accepted socket");
    assert!(when > 5 * ticks && when <= 7 * ticks, "{when} ticks");
    // sift's upstream connection: the socket whose peer is the upstream.
    let upstream_side = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let rem = u16::from_str_radix(f[2].rsplit(':').next()?, 16).ok()?;
            let loc = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            (rem == up.addr.port() && f[3] == "01").then_some(loc)
        })
        .collect::<Vec<_>>();
    assert_eq!(upstream_side.len(), 1, "{upstream_side:?}");
    let (tr, when) = tcp_timer(upstream_side[0], up.addr.port()).unwrap();
    assert_eq!(tr, 2, "keepalive timer on the upstream socket");
    assert!(when > 7 * ticks && when <= 9 * ticks, "{when} ticks");
    // The client's own socket has no keepalive: no timer while idle.
    let (tr, _) = tcp_timer(client_port, sift.addr().port()).unwrap();
    assert_eq!(tr, 0);
}

/// A TCP relay that can turn every connection it has into a black hole
/// (bytes read and dropped, nothing closed): a peer gone without a FIN.
struct Relay {
    addr: std::net::SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    frozen_below: Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering::SeqCst;
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let frozen_below = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, f) = (connections.clone(), frozen_below.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = tcp.accept().await {
                let id = c.fetch_add(1, SeqCst);
                let Ok(up) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                for (mut r, mut w) in [
                    (
                        Box::new(dr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(ur) as _, Box::new(dw) as _),
                ] {
                    let f = f.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if id >= f.load(SeqCst) && w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Relay {
            addr,
            connections,
            frozen_below,
        }
    }
}

/// `http2_keepalive` on an HTTP/2 cluster: a pooled connection whose peer
/// went silent (a black hole, no FIN) is found dead by an unanswered PING
/// and closed, so the next request opens a new one instead of waiting on
/// the dead one until its timeout.
#[tokio::test(flavor = "multi_thread")]
async fn http2_keepalive_finds_a_dead_upstream_connection() {
    use std::sync::atomic::Ordering::SeqCst;
    let up = Upstream::echo("app").await;
    let relay = Relay::start(up.addr).await;
    let cfg = |keepalive: &str| {
        format!(
            r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: app, timeout: 3s }}]
clusters:
  - name: app
    protocol: http2
    endpoints: ["{}"]
{keepalive}
"#,
            relay.addr
        )
    };
    let sift = Sift::start(&cfg(
        "    http2_keepalive: { interval: 200ms, timeout: 300ms }",
    ));
    assert_eq!(get_text(&sift.url("/a")).await.0, 200);
    assert_eq!(relay.connections.load(SeqCst), 1);
    relay.frozen_below.store(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let t0 = std::time::Instant::now();
    let (status, _) = get_text(&sift.url("/b")).await;
    assert_eq!(status, 200, "after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(relay.connections.load(SeqCst), 2, "a new connection");
    drop(sift);

    // Without it the request waits on the dead connection: 504.
    let n = relay.connections.load(SeqCst);
    let sift = Sift::start(&cfg(""));
    assert_eq!(get_text(&sift.url("/a")).await.0, 200);
    relay.frozen_below.store(n + 1, SeqCst);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, _) = get_text(&sift.url("/b")).await;
    assert_eq!(status, 504);
}

/// `request_timeout` (Envoy's): the whole request must arrive in time. A
/// body trickled a byte at a time, never quiet for request_body_timeout,
/// is still cut: 408, with the connection closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_body_is_cut_by_request_timeout() {
    let up = Upstream::echo("app").await;
    let cfg = simple_config(up.addr, "    timeout: 10s\n").replace(
        "    address: \"127.0.0.1:0\"\n",
        "    address: \"127.0.0.1:0\"\n    limits: { request_body_timeout: 400ms, request_timeout: 900ms }\n",
    );
    let sift = Sift::start(&cfg);
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    s.write_all(b"POST /t HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let (mut r, mut w) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if w.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut buf)).await;
    let took = t0.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer:?} after {took:?}"
    );
    assert!(answer.contains("not received within 900ms"), "{answer}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A request that arrives in time is not affected.
    let req = Request::post(sift.url("/ok"))
        .body(full(vec![b'y'; 5000]))
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp.body())["body_len"], 5000);
}

/// `send_timeout` (nginx's): a client that reads nothing of its answer
/// while sift has bytes to send is cut after the limit, freeing its
/// connection and the upstream's; before, it held both as long as it
/// liked (the idle timeout counts only connections with nothing in
/// flight).
#[tokio::test(flavor = "multi_thread")]
async fn clients_that_read_nothing_are_cut_by_send_timeout() {
    const SIZE: u64 = 256 << 20;
    let up = Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        http::Response::new(body::boxed(Generated { left: SIZE }))
    })
    .await;
    let cfg = simple_config(up.addr, "").replace(
        "    address: \"127.0.0.1:0\"\n",
        "    address: \"127.0.0.1:0\"\n    limits: { send_timeout: 500ms }\n",
    );
    let sift = Sift::start(&cfg);
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    // Read nothing while sift fills the socket's buffers and waits.
    let metric = r#"sift_connections_closed_total{listener="main",reason="send_timeout"}"#;
    let t0 = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(8), || async {
            sift.metric(metric).await == Some(1.0)
        })
        .await,
        "cut within 8 s"
    );
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    // What the buffers held, then the end: far less than the answer.
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n as u64,
            Err(_) => panic!("the connection was not closed ({got} bytes read)"),
        }
    }
    assert!(got < SIZE / 2, "{got} of {SIZE} bytes");
}

/// `forwarded.trusted_cidrs` (nginx's set_real_ip_from with
/// real_ip_recursive): behind proxies known by address, the client is the
/// rightmost X-Forwarded-For entry that is not one of them, whatever the
/// number of hops: rate limits and header templates read that address.
#[tokio::test(flavor = "multi_thread")]
async fn trusted_cidrs_name_the_client_behind_known_proxies() {
    let up = Upstream::echo("app").await;
    let cfg = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    forwarded: {{ trusted_cidrs: [127.0.0.0/8, 10.0.0.0/8] }}
routes:
  - name: default
    cluster: app
    request_headers: {{ set: {{ x-client: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }} }}
    rate_limits: [ {{ name: per-ip, requests_per_unit: 1, unit: minute }} ]
clusters:
  - name: app
    endpoints: ["{}"]
"#,
        up.addr
    );
    let sift = Sift::start(&cfg);
    let get = |xff: &'static str| {
        let url = sift.url("/x");
        async move {
            let req = Request::get(url)
                .header("x-forwarded-for", xff)
                .body(full(Bytes::new()))
                .unwrap();
            send(req).await
        }
    };
    // Two trusted hops (a CDN's edge and the load balancer) in front.
    let r = get("203.0.113.9, 10.1.2.3, 10.4.5.6").await;
    assert_eq!(r.status(), 200);
    assert_eq!(json(r.body())["headers"]["x-client"][0], "203.0.113.9");
    // One hop this time: the same client, so the same rate limit.
    let r = get("203.0.113.9, 10.1.2.3").await;
    assert_eq!(r.status(), 429);
    // A client that forges entries left of its own address gains nothing.
    let r = get("198.51.100.1, 203.0.113.9, 10.1.2.3").await;
    assert_eq!(r.status(), 429);
    // Another client is its own.
    let r = get("198.51.100.77, 10.9.9.9").await;
    assert_eq!(r.status(), 200);
    assert_eq!(json(r.body())["headers"]["x-client"][0], "198.51.100.77");
    // The access log names the same client in `client_ip` (nginx's realip
    // $remote_addr, Envoy's %DOWNSTREAM_REMOTE_ADDRESS%) and the TCP peer
    // in `remote`; a listener that trusts no hop logs the peer in both.
    let clients = |sift: &Sift, n: usize| {
        let read = || {
            sift.log_lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["message"] == "access")
                .map(|v| {
                    let remote = v["remote"].as_str().unwrap_or("").to_string();
                    assert!(remote.starts_with("127.0.0.1:"), "{v}");
                    v["client_ip"].as_str().unwrap_or("").to_string()
                })
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while read().len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        read()
    };
    assert_eq!(
        clients(&sift, 4),
        ["203.0.113.9", "203.0.113.9", "203.0.113.9", "198.51.100.77"]
    );
    let plain = Sift::start(&simple_config(up.addr, ""));
    let req = Request::get(plain.url("/x"))
        .header("x-forwarded-for", "203.0.113.9")
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(send(req).await.status(), 200);
    assert_eq!(clients(&plain, 1), ["127.0.0.1"]);
}

/// `listeners[].http2_keepalive`: an HTTP/2 client whose side went silent
/// (a black hole, no FIN) is found dead by an unanswered PING and its
/// connection closed; with the default (a PING every 30s) it stays open
/// for the length of this test.
#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_that_vanish_are_found_by_ping() {
    use std::sync::atomic::Ordering::SeqCst;
    let up = Upstream::echo("app").await;
    let open = r#"sift_active_connections{listener="main"}"#;
    for (keepalive, closed) in [
        (
            "    http2_keepalive: { interval: 200ms, timeout: 300ms }\n",
            true,
        ),
        ("", false),
    ] {
        let cfg = simple_config(up.addr, "").replace(
            "    address: \"127.0.0.1:0\"\n",
            &format!("    address: \"127.0.0.1:0\"\n    protocol: h2\n{keepalive}"),
        );
        let sift = Sift::start(&cfg);
        let relay = Relay::start(sift.addr()).await;
        let client = http2_client();
        let req = Request::get(format!("http://{}/a", relay.addr))
            .body(full(Bytes::new()))
            .unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), 200);
        assert_eq!(sift.metric(open).await, Some(1.0));
        relay.frozen_below.store(1, SeqCst);
        let gone = eventually(Duration::from_secs(3), || async {
            sift.metric(open).await == Some(0.0)
        })
        .await;
        assert_eq!(gone, closed, "{keepalive:?}");
        drop(client);
    }
}

/// `overload.max_buffered_bytes` bounds the request body bytes sift holds
/// in memory across every request (Envoy's overload manager has the same
/// aim: a flood of large bodies must not end in the OOM killer). One slow
/// upload held for a filter takes most of a 64 KiB budget; while it
/// holds, each other way of holding a body gives way as documented, and
/// no body is cut: a fail-closed filter answers 503, a fail-open one
/// forwards the body whole unclassified, a spooling route writes to disk
/// sooner and still classifies, a retryable body streams without replay,
/// a mirror copy is skipped, an external check with the body is refused.
/// Once the upload ends its bytes come back and holding works again.
#[tokio::test(flavor = "multi_thread")]
async fn held_bodies_stay_within_max_buffered_bytes() {
    let up = Upstream::echo("app").await;
    let a = up.addr;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
overload: {{ max_buffered_bytes: 64KiB }}
listeners:
  - name: main
    address: "127.0.0.1:0"
filters:
  - name: spam
    kind: spam
routes:
  - name: open
    match: {{ path: {{ prefix: /open }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: annotate, max_inspect_bytes: 48KiB, on_overload: fail_open }} ]
  - name: closed
    match: {{ path: {{ prefix: /closed }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: block, max_inspect_bytes: 48KiB, on_overload: fail_closed }} ]
  - name: spooled
    match: {{ path: {{ prefix: /spooled }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: annotate, max_inspect_bytes: 48KiB, on_oversize: spool }} ]
  - name: retried
    match: {{ path: {{ prefix: /retried }} }}
    cluster: app
    retries: {{ attempts: 2, non_idempotent: true }}
  - name: authed
    match: {{ path: {{ prefix: /authed }} }}
    cluster: app
    external_auth: {{ cluster: app, path: /check, method: POST, with_request_body: {{ max_request_bytes: 40KiB }} }}
  - name: mirrored
    match: {{ path: {{ prefix: /mirrored }} }}
    cluster: app
    mirror: [ {{ cluster: app }} ]
  - name: buffered
    match: {{ path: {{ prefix: /buffered }} }}
    cluster: app
    request_buffering: {{ in_memory: 48KiB }}
clusters:
  - name: app
    endpoints: ["{a}"]
"#
    ));
    let text = ham_text;
    let post = |path: &str, body: Bytes| text_post(sift.url(path), body);
    let buffered = || async { sift.metric("sift_buffered_request_bytes").await };
    let sift = &sift;
    let denied = |u: &str| {
        let name = format!(r#"sift_buffer_denied_total{{use="{u}"}}"#);
        async move { sift.metric(&name).await }
    };

    // Nothing held: a 30 KiB body is held and classified as usual.
    let r = send(post("/closed", text(30 << 10))).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(buffered().await, Some(0.0));

    // The hog: 40 KiB of a body held for a filter that wants 48 KiB.
    let (tx, b) = channel_body(16);
    let hog = Request::post(sift.url("/open"))
        .header("content-type", "text/plain")
        .body(b)
        .unwrap();
    let hog = tokio::spawn(send(hog));
    for _ in 0..10 {
        tx.send(text(4096)).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            buffered().await == Some(40960.0)
        })
        .await,
        "held: {:?}",
        buffered().await
    );
    let seen = || up.requests.load(std::sync::atomic::Ordering::SeqCst);
    let before = seen();

    // Block filter, fail_closed: 503, the upstream never sees it.
    let r = send(post("/closed", text(30 << 10))).await;
    refused_unseen(&r, "filter-overloaded", seen() - before);
    // Annotate filter, fail_open: forwarded whole, unclassified.
    forwarded_unclassified(&send(post("/open", text(30 << 10))).await, 30 << 10);
    assert_eq!(denied("filter").await, Some(2.0));
    // Spooling filter: the rest goes to disk, the body is still classified.
    let r = send(post("/spooled", text(30 << 10))).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let v = json(r.body());
    assert_eq!(v["body_len"], 30 << 10);
    assert_eq!(v["headers"]["x-sift-spam-verdict"][0], "ham", "{v}");
    assert_eq!(denied("spool").await, Some(1.0));
    // Retries: the body streams, not held for replay.
    let r = send(post("/retried", text(30 << 10))).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(json(r.body())["body_len"], 30 << 10);
    assert_eq!(denied("retry").await, Some(1.0));
    // An external check that reads the body: 503, nothing forwarded.
    let before = seen();
    let r = send(post("/authed", text(30 << 10))).await;
    assert_eq!(r.status(), 503, "{:?}", r.body());
    assert_eq!(r.headers()["x-sift-error"], "overloaded");
    assert_eq!(seen(), before);
    assert_eq!(denied("external_auth").await, Some(1.0));
    // A mirror copy of a streamed body is skipped; the primary is served.
    let r = send(post("/mirrored", text(30 << 10))).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(json(r.body())["body_len"], 30 << 10);
    assert_eq!(denied("mirror").await, Some(1.0));
    assert_eq!(
        sift.metric(r#"sift_mirror_requests_total{route="mirrored",cluster="app",result="dropped_overload"}"#)
            .await,
        Some(1.0)
    );
    // Request buffering: what would have stayed in memory goes to disk.
    let r = send(post("/buffered", text(30 << 10))).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(json(r.body())["body_len"], 30 << 10);
    assert_eq!(denied("buffering").await, Some(1.0));
    // Still only the hog's bytes are held.
    assert_eq!(buffered().await, Some(40960.0));

    // The hog ends: forwarded whole and classified; its bytes come back.
    tx.send(text(4096)).await.unwrap();
    drop(tx);
    let r = hog.await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let v = json(r.body());
    assert_eq!(v["body_len"], 11 * 4096);
    assert_eq!(v["headers"]["x-sift-spam-verdict"][0], "ham", "{v}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            buffered().await == Some(0.0)
        })
        .await
    );
    for path in ["/closed", "/authed", "/retried"] {
        let r = send(post(path, text(30 << 10))).await;
        assert_eq!(r.status(), 200, "{path}: {:?}", r.body());
    }
    assert_eq!(denied("filter").await, Some(2.0));
    assert_eq!(buffered().await, Some(0.0));
}

/// `routes[].request_buffering` (nginx's proxy_request_buffering, Envoy's
/// buffer filter): the upstream is asked only once the whole body is
/// here, so a slow upload ties up sift and not the app. Small bodies stay
/// in memory and can be retried (a chunked body could not be before);
/// larger ones wait in an unlinked spool file and arrive byte for byte;
/// an oversized one is a 413 the app never sees.
#[tokio::test(flavor = "multi_thread")]
async fn request_buffering_reads_the_whole_body_before_the_upstream() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    let arrived: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let tries = Arc::new(AtomicUsize::new(0));
    let (a2, t2) = (arrived.clone(), tries.clone());
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let (arrived, tries) = (a2.clone(), t2.clone());
        async move {
            arrived.lock().unwrap().push(Instant::now());
            let flaky = req.uri().path().starts_with("/flaky");
            let b = req.into_body().collect().await.unwrap().to_bytes();
            // The first try of /flaky fails after reading the body.
            if flaky && tries.fetch_add(1, Ordering::SeqCst) == 0 {
                return json_response(503, &serde_json::json!({}));
            }
            let sum: u64 = b
                .iter()
                .enumerate()
                .map(|(i, &x)| (i as u64 + 1) * x as u64)
                .sum();
            json_response(200, &serde_json::json!({ "len": b.len(), "sum": sum }))
        }
    })
    .await;
    let spool = TempDir::new();
    let a = up.addr;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [ {{ name: main, address: "127.0.0.1:0" }} ]
routes:
  - name: buffered
    match: {{ path: {{ prefix: /up }} }}
    cluster: app
    max_request_body: 1MiB
    request_buffering: {{ in_memory: 64KiB, spool_dir: "{dir}" }}
  - name: flaky
    match: {{ path: {{ prefix: /flaky }} }}
    cluster: app
    retries: {{ attempts: 2, on: ["503"], non_idempotent: true, backoff_base: 1ms }}
    request_buffering: {{}}
  - name: streamed
    cluster: app
    retries: {{ attempts: 2, on: ["503"], non_idempotent: true, backoff_base: 1ms }}
clusters:
  - name: app
    endpoints: ["{a}"]
"#,
        dir = spool.path("").display()
    ));
    let expect = |b: &[u8]| {
        let sum: u64 = b
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u64 + 1) * x as u64)
            .sum();
        serde_json::json!({ "len": b.len(), "sum": sum })
    };
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 % 251) as u8).collect() };
    // A slow chunked upload of 300 KiB in 6 pieces over about 600 ms: the
    // upstream hears of it only after the last piece.
    let data = pattern(300 << 10);
    let (tx, b) = channel_body(2);
    let req = Request::post(sift.url("/up/slow")).body(b).unwrap();
    let call = tokio::spawn(send(req));
    for piece in data.chunks(50 << 10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    let last = Instant::now();
    drop(tx);
    let r = call.await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(json(r.body()), expect(&data));
    let at = arrived.lock().unwrap()[0];
    assert!(at >= last, "the upstream was asked {:?} early", last - at);
    // The spool file was unlinked at once: nothing is left behind.
    let left: Vec<_> = std::fs::read_dir(spool.path("")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // Small and whole in memory: a chunked body can be retried.
    let small = pattern(10 << 10);
    let (tx, b) = channel_body(2);
    tx.send(Bytes::from(small.clone())).await.unwrap();
    drop(tx);
    let r = send(Request::post(sift.url("/flaky")).body(b).unwrap()).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(json(r.body()), expect(&small));
    assert_eq!(tries.load(Ordering::SeqCst), 2);
    // Without buffering the same chunked body streams once: the 503 stands.
    tries.store(0, Ordering::SeqCst);
    let (tx, b) = channel_body(2);
    tx.send(Bytes::from(small.clone())).await.unwrap();
    drop(tx);
    let r = send(
        Request::post(sift.url("/flaky-unbuffered"))
            .body(b)
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 503);
    // Over max_request_body: 413, and the upstream never heard of it.
    let seen = arrived.lock().unwrap().len();
    let (tx, b) = channel_body(2);
    let call = tokio::spawn(send(Request::post(sift.url("/up/big")).body(b).unwrap()));
    for piece in pattern(1200 << 10).chunks(100 << 10) {
        if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let r = call.await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(arrived.lock().unwrap().len(), seen);
    assert_eq!(sift.metric("sift_buffered_request_bytes").await, Some(0.0));
}

/// `overload.max_spooled_bytes` bounds what spool files hold (the disk
/// under a flood of uploads: in Kubernetes an emptyDir past its sizeLimit
/// gets the pod evicted). With 100 KiB: request buffering that would need
/// more answers 503 `overloaded` before any upstream contact, a spooling
/// filter follows its on_overload (fail_open: the body forwarded whole,
/// unclassified; fail_closed: 503), and bodies that fit are served; every
/// byte comes back.
#[tokio::test(flavor = "multi_thread")]
async fn spool_files_stay_within_max_spooled_bytes() {
    let up = Upstream::echo("app").await;
    let a = up.addr;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
overload: {{ max_spooled_bytes: 100KiB }}
listeners: [ {{ name: main, address: "127.0.0.1:0" }} ]
filters:
  - {{ name: spam, kind: spam }}
routes:
  - name: buffered
    match: {{ path: {{ prefix: /buffered }} }}
    cluster: app
    request_buffering: {{ in_memory: 16KiB }}
  - name: open
    match: {{ path: {{ prefix: /open }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: annotate, max_inspect_bytes: 16KiB, on_oversize: spool, on_overload: fail_open }} ]
  - name: closed
    match: {{ path: {{ prefix: /closed }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: block, max_inspect_bytes: 16KiB, on_oversize: spool, on_overload: fail_closed }} ]
clusters:
  - name: app
    endpoints: ["{a}"]
"#
    ));
    let text = ham_text;
    let post = |path: &str, body: Bytes| text_post(sift.url(path), body);
    let seen = || up.requests.load(std::sync::atomic::Ordering::SeqCst);
    // Fits: 16 KiB in memory, 44 KiB on disk.
    let r = send(post("/buffered", text(60 << 10))).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(json(r.body())["body_len"], 60 << 10);
    // Does not fit: 503, the upstream never asked.
    let before = seen();
    let r = send(post("/buffered", text(300 << 10))).await;
    refused_unseen(&r, "overloaded", seen() - before);
    // A spooling filter, fail_open: forwarded whole, unclassified.
    forwarded_unclassified(&send(post("/open", text(300 << 10))).await, 300 << 10);
    // ... and one that fits is classified.
    let r = send(post("/open", text(60 << 10))).await;
    assert_eq!(json(r.body())["headers"]["x-sift-spam-verdict"][0], "ham");
    // fail_closed: 503.
    let before = seen();
    let r = send(post("/closed", text(300 << 10))).await;
    refused_unseen(&r, "filter-overloaded", seen() - before);
    for (u, n) in [("buffering", 1.0), ("filter", 2.0)] {
        let name = format!(r#"sift_spool_denied_total{{use="{u}"}}"#);
        assert_eq!(sift.metric(&name).await, Some(n), "{u}");
    }
    assert_eq!(sift.metric("sift_spooled_request_bytes").await, Some(0.0));
}

/// `n` bytes of plain words a spam filter reads as ham.
fn ham_text(n: usize) -> Bytes {
    let mut t = b"hello there, ".repeat(n / 13 + 1);
    t.truncate(n);
    Bytes::from(t)
}

/// A text/plain POST of `body` to `url`.
fn text_post(url: String, body: Bytes) -> Request<body::Body> {
    Request::post(url)
        .header("content-type", "text/plain")
        .body(body::full(body))
        .unwrap()
}

/// A 503 of this `x-sift-error` kind, with `reached` requests having
/// reached the upstream meanwhile (must be none).
fn refused_unseen(r: &http::Response<Bytes>, kind: &str, reached: usize) {
    assert_eq!(r.status(), 503, "{:?}", r.body());
    assert_eq!(r.headers()["x-sift-error"], kind);
    assert_eq!(reached, 0, "the upstream saw the refused request");
}

/// The echo upstream's answer to a body of `len` bytes forwarded whole,
/// without a spam verdict.
fn forwarded_unclassified(r: &http::Response<Bytes>, len: usize) {
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let v = json(r.body());
    assert_eq!(v["body_len"], len);
    assert!(v["headers"].get("x-sift-spam-verdict").is_none(), "{v}");
}

/// `log.access_log_format: combined`: nginx's combined log format, for
/// the tools and pipelines that read nginx's logs (the client as the
/// listener trusts forwarded hops, the query with secret values redacted,
/// nginx's `\xHH` escaping); the other log lines stay JSON.
#[tokio::test(flavor = "multi_thread")]
async fn access_log_in_nginx_combined_format() {
    let up = Upstream::echo("app").await;
    let cfg = simple_config(up.addr, "").replace(
        "log: { format: json, level: info }",
        "log: { format: json, level: info, access_log_format: combined }",
    );
    assert!(cfg.contains("combined"), "{cfg}");
    let sift = Sift::start(&cfg);
    let req = Request::get(sift.url("/x?q=1&access_token=s3cret"))
        .header("referer", "https://ex.com/\"r\"")
        .header("user-agent", "probe/1.0")
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(send(req).await.status(), 200);
    assert_eq!(get_text(&sift.url("/y")).await.0, 200);
    let lines = || {
        sift.log_lines()
            .into_iter()
            .filter(|l| l.starts_with("127.0.0.1 - - ["))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(3), || async { lines().len() == 2 }).await,
        "{:?}",
        sift.log_lines()
    );
    let first = &lines()[0];
    let rest = first.split_once("] ").expect("a time in brackets").1;
    assert!(
        rest.starts_with(r#""GET /x?q=1&access_token=[redacted] HTTP/1.1" 200 "#),
        "{rest}"
    );
    assert!(
        rest.ends_with(r#" "https://ex.com/\x22r\x22" "probe/1.0""#),
        "{rest}"
    );
    let bytes: u64 = rest
        .split(' ')
        .nth(4)
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("bytes sent in {rest}"));
    assert!(bytes > 0, "{rest}");
    assert!(
        lines()[1].contains(r#""GET /y HTTP/1.1" 200 "#),
        "{}",
        lines()[1]
    );
    assert!(lines()[1].ends_with(r#" "-" "-""#), "{}", lines()[1]);
    assert!(!sift.log_lines().join("\n").contains("s3cret"));
    // The other lines are still JSON.
    assert!(
        sift.log_lines()
            .iter()
            .any(|l| l.contains("\"message\":\"sift ready\""))
    );
}
