//! Request mirroring end to end: what the mirror gets (head and body as
//! sent upstream, Host with -shadow), that a slow or dead mirror costs the
//! client nothing, that a body over max_body is never sent cut, sampling,
//! admission before mirroring, and hot reload, against real upstreams.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use sift::body;
use support::*;

/// One request as an upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    host: String,
    request_id: String,
    forwarded_for: String,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An upstream that records every request (with its whole body) and
/// answers `text` after `delay`.
async fn recorder(text: &'static str, delay: Duration) -> (Upstream, Log) {
    let log: Log = Arc::default();
    let l = log.clone();
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let l = l.clone();
        async move {
            let h = |n: &str| {
                req.headers()
                    .get(n)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default()
            };
            let mut seen = Seen {
                method: req.method().to_string(),
                uri: req.uri().to_string(),
                host: h("host"),
                request_id: h("x-request-id"),
                forwarded_for: h("x-forwarded-for"),
                body: Bytes::new(),
            };
            seen.body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            l.lock().unwrap().push(seen);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            text_response(200, text)
        }
    })
    .await;
    (up, log)
}

fn seen(l: &Log) -> Vec<Seen> {
    l.lock().unwrap().clone()
}

/// A config whose route `api` (prefix /api, rewritten to /v2) forwards to
/// `primary` and mirrors to `shadow` with `mirror` (a flow mapping's
/// inside); `route_extra` is more route YAML.
fn config(primary: SocketAddr, shadow: SocketAddr, mirror: &str, route_extra: &str) -> String {
    format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: api
    match: {{ path: {{ prefix: /api }} }}
    rewrite: {{ prefix: /v2 }}
    cluster: primary
    mirror:
      - {{ cluster: shadow, {mirror} }}
{route_extra}
clusters:
  - {{ name: primary, endpoints: ["{primary}"] }}
  - {{ name: shadow, endpoints: ["{shadow}"], request_timeout: 1s }}
"#
    )
}

/// As [`config`], with the shadow cluster's max_requests at `max`.
fn config_breaker(primary: SocketAddr, shadow: SocketAddr, max: usize) -> String {
    config(primary, shadow, "percent: 100", "").replace(
        "request_timeout: 1s }",
        &format!("request_timeout: 1s, circuit_breakers: {{ max_requests: {max} }} }}"),
    )
}

fn mirror_metric(result: &str) -> String {
    format!(r#"sift_mirror_requests_total{{route="api",cluster="shadow",result="{result}"}}"#)
}

async fn metric_is(sift: &Sift, result: &str, want: f64) -> bool {
    let name = mirror_metric(result);
    eventually(Duration::from_secs(5), || async {
        sift.metric(&name).await == Some(want)
    })
    .await
}

async fn wait_for(l: &Log, n: usize) -> bool {
    eventually(Duration::from_secs(5), || async { seen(l).len() >= n }).await
}

#[tokio::test]
async fn mirror_gets_the_request_as_sent_upstream() {
    let (p, plog) = recorder("primary", Duration::ZERO).await;
    let (s, slog) = recorder("shadow", Duration::ZERO).await;
    let sift = Sift::start(&config(p.addr, s.addr, "percent: 100", ""));
    let host = sift.addr().to_string();
    let shadow_host = format!("127.0.0.1-shadow:{}", sift.addr().port());

    // A body with a Content-Length.
    let r = send(
        Request::post(sift.url("/api/items?q=1&b=two"))
            .header("x-request-id", "req-1")
            .body(body::full("hello mirror"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().as_ref(), b"primary");
    // A bodiless GET.
    let r = send(
        Request::get(sift.url("/api/get"))
            .header("x-request-id", "req-2")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.body().as_ref(), b"primary");
    // A chunked body (no Content-Length), in three pieces.
    let (tx, b) = channel_body(4);
    let req = Request::put(sift.url("/api/chunked"))
        .header("x-request-id", "req-3")
        .body(b)
        .unwrap();
    let client = tokio::spawn(send(req));
    for piece in ["one,", "two,", "three"] {
        tx.send(Bytes::from(piece)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tx);
    let r = client.await.unwrap();
    assert_eq!(r.body().as_ref(), b"primary");

    assert!(wait_for(&slog, 3).await, "{:?}", seen(&slog));
    let mut got = seen(&slog);
    got.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    let prim = seen(&plog);
    assert_eq!(prim.len(), 3);
    let expect = [
        ("POST", "/v2/items?q=1&b=two", &b"hello mirror"[..], "req-1"),
        ("GET", "/v2/get", &b""[..], "req-2"),
        ("PUT", "/v2/chunked", &b"one,two,three"[..], "req-3"),
    ];
    for (m, (method, uri, body, id)) in got.iter().zip(expect) {
        assert_eq!(m.method, method, "{m:?}");
        assert_eq!(m.uri, uri, "{m:?}");
        assert_eq!(m.body.as_ref(), body, "{m:?}");
        assert_eq!(m.request_id, id, "{m:?}");
        assert_eq!(m.host, shadow_host, "{m:?}");
        let pm = prim.iter().find(|x| x.request_id == id).unwrap();
        assert_eq!(pm.host, host, "{pm:?}");
        assert_eq!(
            (&pm.method, &pm.uri, &pm.body),
            (&m.method, &m.uri, &m.body)
        );
        assert_eq!(pm.forwarded_for, m.forwarded_for);
        assert_eq!(m.forwarded_for, "127.0.0.1");
    }
    assert!(metric_is(&sift, "sent", 3.0).await);
    assert_eq!(sift.metric(&mirror_metric("failed")).await, Some(0.0));
    // /config shows the mirror as written.
    let (_, cfg) = get_text(&sift.admin_url("/config")).await;
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        cfg["config"]["routes"][0]["mirror"],
        serde_json::json!([{"cluster": "shadow", "percent": 100.0, "max_body": "64KiB", "host_suffix": true}]),
        "{cfg}"
    );
    // The access log says a copy was made.
    let logged = sift.log_lines().iter().any(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["request_id"] == "req-1" && v["mirrored"] == 1)
    });
    assert!(logged);
}

#[tokio::test]
async fn slow_or_dead_mirror_costs_the_client_nothing() {
    let (p, _plog) = recorder("primary", Duration::ZERO).await;
    // Answers after 5 s; the shadow cluster's request_timeout is 1 s.
    let (s, slog) = recorder("shadow", Duration::from_secs(5)).await;
    // Copies in flight take none of the route's max_inflight.
    let sift = Sift::start(&config(
        p.addr,
        s.addr,
        "percent: 100",
        "    max_inflight: 1",
    ));
    for i in 0..3 {
        let t = Instant::now();
        let r = send(
            Request::post(sift.url("/api/slow"))
                .body(body::full(format!("body {i}")))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().as_ref(), b"primary");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert!(wait_for(&slog, 3).await);
    // Each copy timed out after the mirror cluster's request_timeout.
    assert!(metric_is(&sift, "failed", 3.0).await);
    assert_eq!(sift.metric(&mirror_metric("sent")).await, Some(0.0));
    drop(sift);

    // A mirror on a closed port.
    let refusing = refused_port();
    let closed = refusing.addr;
    let sift = Sift::start(&config(p.addr, closed, "percent: 100", ""));
    for _ in 0..2 {
        let t = Instant::now();
        let (status, text) = get_text(&sift.url("/api/x")).await;
        assert_eq!((status, text.as_str()), (200, "primary"));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert!(metric_is(&sift, "failed", 2.0).await);
}

#[tokio::test]
async fn body_over_max_body_is_never_mirrored_cut() {
    let (p, plog) = recorder("primary", Duration::ZERO).await;
    let (s, slog) = recorder("shadow", Duration::ZERO).await;
    let sift = Sift::start(&config(p.addr, s.addr, "max_body: 1KiB", ""));
    let big = vec![b'x'; 4096];

    // Declared too large: skipped up front.
    let r = send(
        Request::post(sift.url("/api/big"))
            .body(body::full(big.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Chunked, found too large while it streams to the primary.
    let (tx, b) = channel_body(8);
    let client = tokio::spawn(send(Request::post(sift.url("/api/big")).body(b).unwrap()));
    for c in big.chunks(512) {
        tx.send(Bytes::copy_from_slice(c)).await.unwrap();
    }
    drop(tx);
    assert_eq!(client.await.unwrap().status(), 200);
    // Exactly max_body still goes.
    let r = send(
        Request::post(sift.url("/api/fits"))
            .body(body::full(vec![b'y'; 1024]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);

    let prim = seen(&plog);
    assert_eq!(prim.len(), 3);
    assert!(prim[..2].iter().all(|m| m.body.len() == 4096), "{prim:?}");
    assert!(metric_is(&sift, "skipped_too_large", 2.0).await);
    assert!(metric_is(&sift, "sent", 1.0).await);
    let got = seen(&slog);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].uri.as_str(), got[0].body.len()), ("/v2/fits", 1024));
}

/// Whether sift samples request id `id` at `percent`.
fn sampled(id: &str, percent: u32) -> bool {
    sift::config::model::MirrorSpec {
        cluster: String::new(),
        per_million: percent * 10_000,
        max_body: 0,
        host_suffix: true,
    }
    .sampled(sift::proxy::stable_hash(id))
}

#[tokio::test]
async fn percent_samples_by_request_id() {
    let (p, _plog) = recorder("primary", Duration::ZERO).await;
    let (s, slog) = recorder("shadow", Duration::ZERO).await;
    let sift = Sift::start(&config(p.addr, s.addr, "percent: 50", ""));
    let ids: Vec<String> = (0..200).map(|i| format!("fixed-{i}")).collect();
    let want: Vec<&String> = ids.iter().filter(|id| sampled(id, 50)).collect();
    assert!((60..=140).contains(&want.len()), "{}", want.len());
    for id in &ids {
        let r = send(
            Request::get(sift.url("/api/s"))
                .header("x-request-id", id.as_str())
                .body(body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    assert!(metric_is(&sift, "sent", want.len() as f64).await);
    let mut got: Vec<String> = seen(&slog).into_iter().map(|m| m.request_id).collect();
    got.sort();
    let mut want: Vec<String> = want.into_iter().cloned().collect();
    want.sort();
    assert_eq!(got, want);
    drop(sift);

    // percent 0: never.
    let (s0, s0log) = recorder("shadow", Duration::ZERO).await;
    let sift = Sift::start(&config(p.addr, s0.addr, "percent: 0", ""));
    for id in ids.iter().take(50) {
        let r = send(
            Request::get(sift.url("/api/s"))
                .header("x-request-id", id.as_str())
                .body(body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen(&s0log).is_empty());
    assert_eq!(sift.metric(&mirror_metric("sent")).await, Some(0.0));
}

#[tokio::test]
async fn refused_requests_are_not_mirrored() {
    let (p, plog) = recorder("primary", Duration::ZERO).await;
    let (s, slog) = recorder("shadow", Duration::ZERO).await;
    let sift = Sift::start(&config(
        p.addr,
        s.addr,
        "percent: 100",
        "    rate_limits: [{ name: one, requests_per_unit: 1, unit: hour }]",
    ));
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(get_text(&sift.url("/api/r")).await.0);
    }
    assert_eq!(codes, [200, 429, 429, 429]);
    assert!(metric_is(&sift, "sent", 1.0).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen(&plog).len(), 1);
    assert_eq!(seen(&slog).len(), 1);
}

#[tokio::test]
async fn mirrors_follow_a_reload() {
    let (p, _plog) = recorder("primary", Duration::ZERO).await;
    let (s, slog) = recorder("shadow", Duration::ZERO).await;
    let sift = Sift::start(&config(p.addr, s.addr, "percent: 0", ""));
    assert_eq!(get_text(&sift.url("/api/a")).await.0, 200);
    sift.write_config(&config(p.addr, s.addr, "percent: 100", ""));
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    assert_eq!(get_text(&sift.url("/api/b")).await.0, 200);
    assert!(wait_for(&slog, 1).await);
    let got = seen(&slog);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/v2/b");
}

#[tokio::test]
async fn a_full_mirror_breaker_drops_copies_not_requests() {
    let (p, plog) = recorder("primary", Duration::ZERO).await;
    // Holds each copy 5 s (cut at the shadow's 1 s request_timeout).
    let (s, slog) = recorder("shadow", Duration::from_secs(5)).await;
    let sift = Sift::start(&config_breaker(p.addr, s.addr, 1));
    for _ in 0..3 {
        let (status, text) = get_text(&sift.url("/api/o")).await;
        assert_eq!((status, text.as_str()), (200, "primary"));
    }
    assert_eq!(seen(&plog).len(), 3);
    assert!(metric_is(&sift, "dropped_overload", 2.0).await);
    assert!(metric_is(&sift, "failed", 1.0).await);
    assert_eq!(seen(&slog).len(), 1);
    // The slot is back once the copy timed out: the next one goes.
    assert_eq!(get_text(&sift.url("/api/o")).await.0, 200);
    assert!(wait_for(&slog, 2).await);
}

#[tokio::test]
async fn a_body_refused_midway_is_not_mirrored() {
    let (p, _plog) = recorder("primary", Duration::ZERO).await;
    let (s, slog) = recorder("shadow", Duration::ZERO).await;
    let sift = Sift::start(&config(
        p.addr,
        s.addr,
        "max_body: 64KiB",
        "    max_request_body: 1KiB",
    ));
    // Chunked, over the route's max_request_body: 413 once it streams past.
    let (tx, b) = channel_body(8);
    let client = tokio::spawn(send(Request::post(sift.url("/api/big")).body(b).unwrap()));
    for _ in 0..8 {
        if tx.send(Bytes::from(vec![b'z'; 512])).await.is_err() {
            break;
        }
    }
    drop(tx);
    assert_eq!(client.await.unwrap().status(), 413);
    assert!(metric_is(&sift, "aborted", 1.0).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen(&slog).is_empty(), "{:?}", seen(&slog));
}

/// An upstream that records the request's authority (URI or Host) and version.
async fn authority_recorder() -> (Upstream, Arc<Mutex<Vec<(String, String)>>>) {
    let log: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let l = log.clone();
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let l = l.clone();
        async move {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    req.headers()
                        .get("host")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                })
                .unwrap_or_default();
            l.lock()
                .unwrap()
                .push((authority, format!("{:?}", req.version())));
            text_response(200, "ok")
        }
    })
    .await;
    (up, log)
}

#[tokio::test]
async fn http2_clusters_get_the_shadow_authority() {
    let (p, plog) = authority_recorder().await;
    let (a, alog) = authority_recorder().await;
    let (b, blog) = authority_recorder().await;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: api
    cluster: primary
    mirror: [{{ cluster: m1 }}, {{ cluster: m2 }}]
clusters:
  - {{ name: primary, protocol: http2, endpoints: ["{}"] }}
  - {{ name: m1, protocol: http1, endpoints: ["{}"] }}
  - {{ name: m2, protocol: http2, endpoints: ["{}"] }}
"#,
        p.addr, a.addr, b.addr
    ));
    let r = send(
        Request::get(sift.url("/x"))
            .header("host", "api.example.com:8443")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let ok = eventually(Duration::from_secs(5), || async {
        alog.lock().unwrap().len() == 1 && blog.lock().unwrap().len() == 1
    })
    .await;
    assert!(ok);
    let want = |a: &str, v: &str| vec![(a.to_string(), v.to_string())];
    assert_eq!(
        *plog.lock().unwrap(),
        want("api.example.com:8443", "HTTP/2.0")
    );
    assert_eq!(
        *alog.lock().unwrap(),
        want("api.example.com-shadow:8443", "HTTP/1.1")
    );
    assert_eq!(
        *blog.lock().unwrap(),
        want("api.example.com-shadow:8443", "HTTP/2.0")
    );
}

/// A `protocol: client` mirror cluster gets each copy in the protocol the
/// primary's request went in (the client's, on a `client` primary): an
/// HTTP/2 client's copy over HTTP/2 with the shadow host as :authority,
/// an HTTP/1.1 client's over HTTP/1.1 with it as Host.
#[tokio::test(flavor = "multi_thread")]
async fn client_protocol_mirrors_follow_the_primary() {
    let (p, plog) = authority_recorder().await;
    let (m, mlog) = authority_recorder().await;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: api
    cluster: primary
    mirror: [{{ cluster: copy }}]
clusters:
  - {{ name: primary, protocol: client, endpoints: ["{}"] }}
  - {{ name: copy, protocol: client, endpoints: ["{}"] }}
"#,
        p.addr, m.addr
    ));
    let get = || {
        Request::get(sift.url("/x"))
            .header("host", "api.example.com")
            .body(body::empty())
            .unwrap()
    };
    let r = http2_client().request(get()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            mlog.lock().unwrap().len() == 1
        })
        .await
    );
    let r = http1_client().request(get()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            mlog.lock().unwrap().len() == 2
        })
        .await
    );
    // The HTTP/2 client's authority is its URI's (:authority wins over a
    // Host line), sift's address.
    let port = sift.addr().port();
    let pair = |a: &str, v: &str| (a.to_string(), v.to_string());
    assert_eq!(
        *plog.lock().unwrap(),
        vec![
            pair(&format!("127.0.0.1:{port}"), "HTTP/2.0"),
            pair("api.example.com", "HTTP/1.1")
        ]
    );
    assert_eq!(
        *mlog.lock().unwrap(),
        vec![
            pair(&format!("127.0.0.1-shadow:{port}"), "HTTP/2.0"),
            pair("api.example.com-shadow", "HTTP/1.1")
        ]
    );
}

/// `host_suffix: false`: the copy keeps the primary's Host (Envoy's
/// `disable_shadow_host_suffix_append`), for a mirror that routes by host.
#[tokio::test]
async fn host_suffix_false_keeps_the_host() {
    let (p, plog) = recorder("primary", Duration::ZERO).await;
    let (s, slog) = recorder("shadow", Duration::ZERO).await;
    let sift = Sift::start(&config(p.addr, s.addr, "host_suffix: false", ""));
    let r = send(
        Request::get(sift.url("/api/x"))
            .header("x-request-id", "h-1")
            .header("host", "api.example.com:8080")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(wait_for(&slog, 1).await);
    assert_eq!(seen(&slog)[0].host, "api.example.com:8080");
    assert_eq!(seen(&plog)[0].host, "api.example.com:8080");
    // The default appends the suffix to the same host.
    let sift = Sift::start(&config(p.addr, s.addr, "percent: 100", ""));
    send(
        Request::get(sift.url("/api/x"))
            .header("x-request-id", "h-2")
            .header("host", "api.example.com:8080")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert!(wait_for(&slog, 2).await);
    assert_eq!(seen(&slog)[1].host, "api.example.com-shadow:8080");
}
