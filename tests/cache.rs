//! A route's HTTP cache (`routes[].cache`) against a real upstream on
//! loopback: what is kept and what is not (RFC 9111), revalidation, stale
//! answers when the upstream fails, concurrent misses collapsed into one
//! fetch, memory bounded by `max_bytes`, purging, reloads, compression.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use support::*;

/// What the upstream saw: requests per path, and the last request's
/// conditional header.
#[derive(Default)]
struct Seen {
    counts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    last_if_none_match: std::sync::Mutex<Option<String>>,
    failing: AtomicBool,
}

impl Seen {
    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn answer(
    status: u16,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Response<sift::body::Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

/// The upstream: each path shows one caching behaviour; bodies name how
/// many times the upstream answered that path.
async fn upstream(seen: Arc<Seen>) -> Upstream {
    Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let path = req.uri().path().to_string();
            let n = {
                let mut c = seen.counts.lock().unwrap();
                let n = c.entry(path.clone()).or_default();
                *n += 1;
                *n
            };
            let inm = req
                .headers()
                .get("if-none-match")
                .map(|v| v.to_str().unwrap().to_string());
            *seen.last_if_none_match.lock().unwrap() = inm.clone();
            let cc = |v: &str| ("cache-control", v.to_string());
            let body = format!("{path} #{n}");
            match path.as_str() {
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    answer(200, &[cc("max-age=60")], body)
                }
                "/short" => {
                    if seen.failing.load(Ordering::SeqCst) {
                        return answer(503, &[], "down");
                    }
                    if inm.as_deref() == Some("\"short-v1\"") {
                        return answer(
                            304,
                            &[cc("max-age=1"), ("etag", "\"short-v1\"".into())],
                            "",
                        );
                    }
                    answer(
                        200,
                        &[cc("max-age=1"), ("etag", "\"short-v1\"".into())],
                        body,
                    )
                }
                "/slowcheck" => {
                    // Fresh for 1s; a revalidation takes 500ms (then 304).
                    let tag = ("etag", "\"slow-v1\"".to_string());
                    if inm.is_some() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return answer(304, &[cc("max-age=1"), tag], "");
                    }
                    answer(200, &[cc("max-age=1"), tag], body)
                }
                "/health" if seen.failing.load(Ordering::SeqCst) => answer(503, &[], "down"),
                "/health" => answer(200, &[], "up"),
                "/private" => answer(200, &[cc("private, max-age=60")], body),
                // Cacheable for 1s at first, then private.
                "/turns" if n == 1 => {
                    answer(200, &[cc("max-age=1"), ("etag", "\"t1\"".into())], body)
                }
                "/turns" => answer(200, &[cc("private")], body),
                "/empty" => answer(204, &[cc("max-age=60"), ("x-n", n.to_string())], ""),
                "/moved" => answer(
                    301,
                    &[cc("max-age=60"), ("location", format!("/new?{n}"))],
                    "",
                ),
                "/cookie" => answer(200, &[cc("max-age=60"), ("set-cookie", "s=1".into())], body),
                p if p.starts_with("/none") => answer(200, &[], body),
                "/vary" => {
                    let lang = req
                        .headers()
                        .get("accept-language")
                        .map_or("-".to_string(), |v| v.to_str().unwrap().to_string());
                    answer(
                        200,
                        &[cc("max-age=60"), ("vary", "Accept-Language".into())],
                        format!("{body} {lang}"),
                    )
                }
                "/big" => answer(200, &[cc("max-age=60")], vec![b'b'; 2 << 20]),
                "/error" => answer(500, &[cc("max-age=60")], body),
                "/json" => answer(
                    200,
                    &[
                        cc("max-age=60"),
                        ("content-type", "application/json".into()),
                    ],
                    format!("{{\"padding\":\"{}\",\"n\":{n}}}", "x".repeat(2000)),
                ),
                p if p.starts_with("/kb/") => answer(200, &[cc("max-age=60")], vec![b'k'; 4096]),
                _ => answer(200, &[cc("max-age=60"), ("etag", "\"v1\"".into())], body),
            }
        }
    })
    .await
}

fn config(up: std::net::SocketAddr, cache: &str) -> String {
    format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: ttl
    match: {{ path: {{ prefix: /ttl/ }} }}
    rewrite: {{ prefix: /none }}
    cluster: app
    cache: {{ default_ttl: 60s }}
  - name: default
    cluster: app
    compression: {{}}
    cache: {cache}
clusters:
  - name: app
    endpoints: ["{up}"]
"#
    )
}

/// Status, `x-sift-cache`, body, and the answer's headers.
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String, String, http::HeaderMap) {
    fetch("GET", url, headers).await
}

async fn fetch(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, http::HeaderMap) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = send(b.body(full(Bytes::new())).unwrap()).await;
    let cache = r
        .headers()
        .get("x-sift-cache")
        .map_or("-".to_string(), |v| v.to_str().unwrap().to_string());
    (
        r.status().as_u16(),
        cache,
        String::from_utf8_lossy(r.body()).into_owned(),
        r.headers().clone(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_kept_and_what_answers_from_it() {
    let seen = Arc::new(Seen::default());
    let up = upstream(seen.clone()).await;
    let sift = Sift::start(&config(up.addr, "{}"));
    let url = |p: &str| sift.url(p);

    // A fresh answer: the first request fetches it, the next ones are
    // answered by sift alone, with its age.
    let (s, c, body, _) = get(&url("/page"), &[]).await;
    assert_eq!((s, c.as_str(), body.as_str()), (200, "MISS", "/page #1"));
    for _ in 0..3 {
        let (s, c, body, h) = get(&url("/page"), &[]).await;
        assert_eq!((s, c.as_str(), body.as_str()), (200, "HIT", "/page #1"));
        assert_eq!(h["etag"], "\"v1\"");
        assert!(h["age"].to_str().unwrap().parse::<u64>().unwrap() <= 1);
        assert!(h.contains_key("x-request-id"));
    }
    assert_eq!(seen.count("/page"), 1);
    // The query is part of the key.
    let (_, c, body, _) = get(&url("/page?a=1"), &[]).await;
    assert_eq!((c.as_str(), body.as_str()), ("MISS", "/page #2"));
    // HEAD is answered from the GET's entry: its length, no body.
    let (s, c, body, h) = fetch("HEAD", &url("/page"), &[]).await;
    assert_eq!((s, c.as_str(), body.as_str()), (200, "HIT", ""));
    assert_eq!(h["content-length"], "8");
    // A client's conditional request: 304 from the entry.
    let (s, c, body, h) = get(&url("/page"), &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((s, c.as_str(), body.as_str()), (304, "HIT", ""));
    assert_eq!(h["etag"], "\"v1\"");
    let (s, c, _, _) = get(&url("/page"), &[("if-none-match", "\"v0\"")]).await;
    assert_eq!((s, c.as_str()), (200, "HIT"));
    assert_eq!(seen.count("/page"), 2, "one more for ?a=1 only");

    // Not kept: private, Set-Cookie, no freshness, a 500.
    for p in ["/private", "/cookie", "/none", "/error"] {
        for _ in 0..2 {
            let (_, c, _, _) = get(&url(p), &[]).await;
            assert_eq!(c, "MISS", "{p}");
        }
        assert_eq!(seen.count(p), 2, "{p}");
    }
    // ... unless the route gives a default freshness (the `ttl` route
    // rewrites /ttl/x to the upstream's /none).
    let (_, c, _, _) = get(&url("/ttl/x"), &[]).await;
    assert_eq!(c, "MISS");
    let (_, c, body, _) = get(&url("/ttl/x"), &[]).await;
    assert_eq!((c.as_str(), body.as_str()), ("HIT", "/none/x #1"));

    // Not the cache's: Authorization, no-store, a body, POST.
    for (name, value) in [("authorization", "Bearer t"), ("cache-control", "no-store")] {
        let (_, c, _, _) = get(&url("/page"), &[(name, value)]).await;
        assert_eq!(c, "BYPASS", "{name}");
    }
    // A client that asks for a check: the entry has a validator, so the
    // upstream is asked with it (and sends the whole answer again here:
    // this upstream does not answer 304 on /page).
    let (_, c, body, _) = get(&url("/page"), &[("cache-control", "no-cache")]).await;
    assert_eq!((c.as_str(), body.as_str()), ("EXPIRED", "/page #5"));
    assert_eq!(
        seen.last_if_none_match.lock().unwrap().as_deref(),
        Some("\"v1\"")
    );
    let (_, c, body, _) = get(&url("/page"), &[]).await;
    assert_eq!((c.as_str(), body.as_str()), ("HIT", "/page #5"));
    // An unsafe method's success removes the URI's entries.
    let (s, c, _, _) = fetch("POST", &url("/page"), &[]).await;
    assert_eq!((s, c.as_str()), (200, "BYPASS"));
    let (_, c, body, _) = get(&url("/page"), &[]).await;
    assert_eq!((c.as_str(), body.as_str()), ("MISS", "/page #7"));

    // Vary: one entry per value of the named request header.
    let (_, c, _, _) = get(&url("/vary"), &[("accept-language", "en")]).await;
    assert_eq!(c, "MISS");
    let (_, c, body, _) = get(&url("/vary"), &[("accept-language", "fr")]).await;
    assert_eq!((c.as_str(), body.as_str()), ("MISS", "/vary #2 fr"));
    let (_, c, body, _) = get(&url("/vary"), &[("accept-language", "en")]).await;
    assert_eq!((c.as_str(), body.as_str()), ("HIT", "/vary #1 en"));

    // Answers without a body are kept too.
    for (p, want) in [("/empty", 204), ("/moved", 301)] {
        let (s, c, _, h1) = get(&url(p), &[]).await;
        assert_eq!((s, c.as_str()), (want, "MISS"), "{p}");
        let (s, c, body, h2) = get(&url(p), &[]).await;
        assert_eq!((s, c.as_str(), body.as_str()), (want, "HIT", ""), "{p}");
        for k in ["x-n", "location"] {
            assert_eq!(h1.get(k), h2.get(k), "{p} {k}");
        }
        assert_eq!(seen.count(p), 1, "{p}");
    }

    // Larger than max_object_bytes (1 MiB): streamed whole, not kept.
    for _ in 0..2 {
        let (s, c, body, _) = get(&url("/big"), &[]).await;
        assert_eq!((s, c.as_str(), body.len()), (200, "MISS", 2 << 20));
    }

    // Stored uncompressed: each client gets the coding it accepts.
    let (_, c, _, h) = get(&url("/json"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        (c.as_str(), h["content-encoding"].to_str().unwrap()),
        ("MISS", "gzip")
    );
    let (_, c, body, h) = get(&url("/json"), &[]).await;
    assert_eq!(c, "HIT");
    assert!(h.get("content-encoding").is_none());
    assert!(body.ends_with("\"n\":1}"), "{body}");
    let (_, c, _, h) = get(&url("/json"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        (c.as_str(), h["content-encoding"].to_str().unwrap()),
        ("HIT", "gzip")
    );

    let m = |s: &str| {
        let sift = &sift;
        let s = s.to_string();
        async move { sift.metric(&s).await.unwrap_or(0.0) }
    };
    assert!(m(r#"sift_cache_requests_total{result="hit",route="default"}"#).await >= 10.0);
    assert_eq!(
        m(r#"sift_cache_requests_total{result="bypass",route="default"}"#).await,
        3.0
    );
    assert_eq!(
        m(r#"sift_cache_stores_total{result="too_large",route="default"}"#).await,
        2.0
    );
    assert!(m(r#"sift_cache_stores_total{result="not_storable",route="default"}"#).await >= 8.0);
    assert!(m(r#"sift_cache_entries{route="default"}"#).await >= 4.0);
    // The access log names the cache's part.
    let lines = sift.log_lines().join("\n");
    assert!(lines.contains("\"cache\":\"hit\""), "{lines}");
    assert!(lines.contains("\"cache\":\"bypass\""), "{lines}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_entries_are_revalidated_or_stand_in_for_a_failed_upstream() {
    let seen = Arc::new(Seen::default());
    let up = upstream(seen.clone()).await;
    let sift = Sift::start(&config(up.addr, "{ stale_if_error: 30s }"));
    let url = sift.url("/short");
    let (_, c, body, _) = get(&url, &[]).await;
    assert_eq!((c.as_str(), body.as_str()), ("MISS", "/short #1"));
    let (_, c, _, _) = get(&url, &[]).await;
    assert_eq!(c, "HIT");
    // max-age=1: past it, the upstream is asked with the entry's ETag,
    // answers 304, and the entry answers, fresh again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body, h) = get(&url, &[]).await;
    assert_eq!(
        (s, c.as_str(), body.as_str()),
        (200, "REVALIDATED", "/short #1")
    );
    assert_eq!(h["age"], "0");
    assert_eq!(
        seen.last_if_none_match.lock().unwrap().as_deref(),
        Some("\"short-v1\"")
    );
    assert_eq!(seen.count("/short"), 2);
    let (_, c, _, _) = get(&url, &[]).await;
    assert_eq!(c, "HIT");
    // The upstream fails (503): within stale_if_error the entry answers.
    seen.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body, _) = get(&url, &[]).await;
    assert_eq!((s, c.as_str(), body.as_str()), (200, "STALE", "/short #1"));
    assert_eq!(seen.count("/short"), 3, "the upstream was asked first");
    assert_eq!(
        sift.metric(r#"sift_cache_requests_total{result="stale",route="default"}"#)
            .await,
        Some(1.0)
    );
    drop(sift);

    // Without stale_if_error the client gets the upstream's failure.
    seen.failing.store(false, Ordering::SeqCst);
    let sift = Sift::start(&config(up.addr, "{}"));
    let url = sift.url("/short");
    let (_, c, _, _) = get(&url, &[]).await;
    assert_eq!(c, "MISS");
    seen.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, _, _) = get(&url, &[]).await;
    assert_eq!((s, c.as_str()), (503, "EXPIRED"));

    // An expired entry whose new answer may not be kept is dropped: it is
    // no longer what the upstream says.
    let url = sift.url("/turns");
    let (_, c, _, _) = get(&url, &[]).await;
    assert_eq!(c, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, c, body, _) = get(&url, &[]).await;
    assert_eq!((c.as_str(), body.as_str()), ("EXPIRED", "/turns #2"));
    let (_, c, body, _) = get(&url, &[]).await;
    assert_eq!((c.as_str(), body.as_str()), ("MISS", "/turns #3"));
}

/// An expired entry allowed to stand in for errors also answers when sift
/// cannot ask the upstream at all: every endpoint failed its health
/// checks (no-healthy-endpoint), or the cluster's circuit breaker is open
/// (circuit-open). nginx's proxy_cache_use_stale counts both as "error".
#[tokio::test(flavor = "multi_thread")]
async fn stale_entries_stand_in_when_sift_cannot_ask_the_upstream() {
    let seen = Arc::new(Seen::default());
    let up = upstream(seen.clone()).await;
    let cfg = config(up.addr, "{ stale_if_error: 30s }").replace(
        &format!("    endpoints: [\"{}\"]\n", up.addr),
        &format!(
            "    endpoints: [\"{}\"]\n    health_check: {{ path: /health, interval: 100ms, unhealthy_threshold: 1, healthy_threshold: 1, panic_threshold: 0 }}\n",
            up.addr
        ),
    );
    assert!(cfg.contains("health_check"), "{cfg}");
    let sift = Sift::start(&cfg);
    let url = sift.url("/short");
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&url, &[]).await.1 == "MISS"
        })
        .await
    );
    seen.failing.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(r#"sift_endpoints_healthy{cluster="app"}"#)
                .await
                == Some(0.0)
        })
        .await,
        "the endpoint fails its checks"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let asked = seen.count("/short");
    let (s, c, body, _) = get(&url, &[]).await;
    assert_eq!((s, c.as_str(), body.as_str()), (200, "STALE", "/short #1"));
    assert_eq!(seen.count("/short"), asked, "no endpoint was asked");
    // A key with no entry gets sift's own error.
    let (s, _, _, h) = get(&sift.url("/other"), &[]).await;
    assert_eq!(s, 503);
    assert_eq!(h["x-sift-error"], "no-healthy-endpoint");
    drop(sift);

    // The circuit breaker: one request at a time; while a slow one runs,
    // an expired entry answers the next.
    seen.failing.store(false, Ordering::SeqCst);
    let cfg = config(up.addr, "{ stale_if_error: 30s }").replace(
        &format!("    endpoints: [\"{}\"]\n", up.addr),
        &format!(
            "    endpoints: [\"{}\"]\n    circuit_breakers: {{ max_requests: 1 }}\n",
            up.addr
        ),
    );
    let sift = Sift::start(&cfg);
    let url = sift.url("/short");
    assert_eq!(get(&url, &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let slow_url = sift.url("/slow?circuit");
    let slow = tokio::spawn(async move { get(&slow_url, &[]).await });
    assert!(
        eventually(Duration::from_secs(2), || async {
            seen.count("/slow") == 1
        })
        .await,
        "the slow request is in flight"
    );
    let asked = seen.count("/short");
    let (s, c, body, _) = get(&url, &[]).await;
    assert_eq!((s, c.as_str(), body.as_str()), (200, "STALE", "/short #2"));
    assert_eq!(seen.count("/short"), asked);
    assert_eq!(slow.await.unwrap().0, 200);
    // Once the slow request is done the entry is revalidated as usual.
    let (s, c, _, _) = get(&url, &[]).await;
    assert_eq!((s, c.as_str()), (200, "REVALIDATED"));
}

/// `background_update`: within stale_while_revalidate even the request
/// that finds the entry expired is answered from it at once (UPDATING);
/// the revalidation runs behind it and refreshes the entry (a 304), or
/// fails and leaves it as it was.
#[tokio::test(flavor = "multi_thread")]
async fn background_updates_answer_at_once_and_refresh_behind() {
    let seen = Arc::new(Seen::default());
    let up = upstream(seen.clone()).await;
    let sift = Sift::start(&config(
        up.addr,
        "{ stale_while_revalidate: 30s, background_update: true }",
    ));
    // Fresh for 1 s; a revalidation takes 500 ms (then 304).
    let url = sift.url("/slowcheck");
    assert_eq!(get(&url, &[]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t0 = std::time::Instant::now();
    let (s, c, body, _) = get(&url, &[]).await;
    assert_eq!(
        (s, c.as_str(), body.as_str()),
        (200, "UPDATING", "/slowcheck #1")
    );
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    // Meanwhile others get the stale entry too, without another request.
    let (_, c, _, _) = get(&url, &[]).await;
    assert_eq!(c, "UPDATING");
    let refreshed = r#"sift_cache_refreshes_total{result="revalidated",route="default"}"#;
    assert!(
        eventually(Duration::from_secs(3), || async {
            sift.metric(refreshed).await == Some(1.0)
        })
        .await
    );
    assert_eq!(seen.count("/slowcheck"), 2, "one revalidation upstream");
    assert_eq!(
        seen.last_if_none_match.lock().unwrap().as_deref(),
        Some("\"slow-v1\"")
    );
    // The 304 refreshed it: fresh again.
    let (_, c, body, _) = get(&url, &[]).await;
    assert_eq!((c.as_str(), body.as_str()), ("HIT", "/slowcheck #1"));

    // A background update that fails leaves the entry as it was.
    let url = sift.url("/short");
    assert_eq!(get(&url, &[]).await.1, "MISS");
    seen.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, c, body, _) = get(&url, &[]).await;
    assert_eq!(
        (s, c.as_str(), body.as_str()),
        (200, "UPDATING", "/short #1")
    );
    let failed = r#"sift_cache_refreshes_total{result="failed",route="default"}"#;
    assert!(
        eventually(Duration::from_secs(3), || async {
            sift.metric(failed).await == Some(1.0)
        })
        .await
    );
    let (s, c, body, _) = get(&url, &[]).await;
    assert_eq!(
        (s, c.as_str(), body.as_str()),
        (200, "UPDATING", "/short #1")
    );
}

/// Range requests (RFC 9110 §14) are answered from a fresh entry: one
/// byte range as 206 with Content-Range, a range past the end as 416,
/// several ranges or a stale If-Range as the whole 200; never compressed.
/// Without a fresh entry they go upstream as sent and nothing is kept.
#[tokio::test(flavor = "multi_thread")]
async fn ranges_are_served_from_fresh_entries() {
    let seen = Arc::new(Seen::default());
    let up = upstream(seen.clone()).await;
    let sift = Sift::start(&config(up.addr, "{}"));
    let url = sift.url("/rng");
    // Not cached yet: upstream, as sent, not kept.
    let (s, c, _, _) = get(&url, &[("range", "bytes=0-1")]).await;
    assert_eq!((s, c.as_str()), (200, "BYPASS"));
    let (s, c, body, h) = get(&url, &[]).await;
    assert_eq!((s, c.as_str(), body.as_str()), (200, "MISS", "/rng #2"));
    assert!(h.get("accept-ranges").is_none(), "the upstream's own head");
    let (_, c, _, h) = get(&url, &[]).await;
    assert_eq!(
        (c.as_str(), h["accept-ranges"].to_str().unwrap()),
        ("HIT", "bytes")
    );
    for (range, if_range, status, body, content_range) in [
        ("bytes=1-3", None, 206, "rng", Some("bytes 1-3/7")),
        ("bytes=4-", None, 206, " #2", Some("bytes 4-6/7")),
        ("bytes=-2", None, 206, "#2", Some("bytes 5-6/7")),
        ("bytes=5-100", None, 206, "#2", Some("bytes 5-6/7")),
        ("bytes=7-", None, 416, "", Some("bytes */7")),
        ("bytes=-0", None, 416, "", Some("bytes */7")),
        ("bytes=0-1,3-4", None, 200, "/rng #2", None),
        ("bytes=3-1", None, 200, "/rng #2", None),
        ("items=0-1", None, 200, "/rng #2", None),
        ("bytes=0-0", Some("\"v1\""), 206, "/", Some("bytes 0-0/7")),
        ("bytes=0-0", Some("\"v2\""), 200, "/rng #2", None),
        ("bytes=0-0", Some("W/\"v1\""), 200, "/rng #2", None),
    ] {
        let mut hs = vec![("range", range)];
        if let Some(v) = if_range {
            hs.push(("if-range", v));
        }
        let (s, c, b, h) = get(&url, &hs).await;
        assert_eq!(
            (s, c.as_str(), b.as_str()),
            (status, "HIT", body),
            "{range} {if_range:?}"
        );
        assert_eq!(
            h.get("content-range").map(|v| v.to_str().unwrap()),
            content_range,
            "{range}"
        );
        assert_eq!(h["content-length"], b.len().to_string().as_str(), "{range}");
    }
    assert_eq!(
        seen.count("/rng"),
        2,
        "every range after the first from the entry"
    );
    // A part is never compressed, whatever the client accepts.
    let json = sift.url("/json");
    assert_eq!(get(&json, &[]).await.1, "MISS");
    let (s, _, b, h) = get(
        &json,
        &[("range", "bytes=0-10"), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!((s, b.as_str()), (206, "{\"padding\":"));
    assert!(h.get("content-encoding").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_wait_for_one_fetch() {
    let seen = Arc::new(Seen::default());
    let up = upstream(seen.clone()).await;
    let sift = Sift::start(&config(up.addr, "{}"));
    let url = sift.url("/slow");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for t in tasks {
        let (s, c, body, _) = t.await.unwrap();
        assert_eq!((s, body.as_str()), (200, "/slow #1"));
        *by_status.entry(c).or_insert(0) += 1;
    }
    assert_eq!(seen.count("/slow"), 1, "{by_status:?}");
    assert_eq!(by_status.get("MISS"), Some(&1), "{by_status:?}");
    assert_eq!(by_status.get("HIT"), Some(&9), "{by_status:?}");
    drop(sift);

    // With lock_timeout: 0s each miss goes upstream.
    let sift = Sift::start(&config(up.addr, "{ lock_timeout: 0s }"));
    let url = sift.url("/slow");
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().1, "MISS");
    }
    assert_eq!(seen.count("/slow"), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_is_bounded_purge_and_reload() {
    let seen = Arc::new(Seen::default());
    let up = upstream(seen.clone()).await;
    let cfg = config(up.addr, "{ max_bytes: 64KiB }");
    let sift = Sift::start(&cfg);
    // 200 answers of 4 KiB into 64 KiB: the oldest are evicted.
    for i in 0..200 {
        let (s, c, body, _) = get(&sift.url(&format!("/kb/{i}")), &[]).await;
        assert_eq!((s, c.as_str(), body.len()), (200, "MISS", 4096));
    }
    let (_, view) = get_text(&sift.admin_url("/cache")).await;
    let v: serde_json::Value = serde_json::from_str(&view).unwrap();
    let route = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "default")
        .unwrap()
        .clone();
    let (entries, bytes) = (
        route["entries"].as_u64().unwrap(),
        route["bytes"].as_u64().unwrap(),
    );
    assert!(bytes <= 64 * 1024, "{bytes}");
    assert!(
        (10..=15).contains(&entries),
        "{entries} entries of ~5.8 KB counted"
    );
    let evicted = sift
        .metric(r#"sift_cache_evictions_total{route="default"}"#)
        .await
        .unwrap();
    assert_eq!(evicted as u64, 200 - entries);
    // The newest are kept.
    let (_, c, _, _) = get(&sift.url("/kb/199"), &[]).await;
    assert_eq!(c, "HIT");

    // A reload that leaves the cache's settings alone keeps its entries.
    sift.write_config(&cfg.replace("level: info", "level: debug"));
    let (s, _) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(s, 200);
    let (_, c, _, _) = get(&sift.url("/kb/199"), &[]).await;
    assert_eq!(c, "HIT");

    // Purge: by route and prefix, checked.
    let purge = |q: &str| sift.admin_url(&format!("/cache/purge{q}"));
    let (s, body) = post_text(&purge("?route=default&prefix=/kb/19")).await;
    assert_eq!(s, 200, "{body}");
    let n: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(n["purged"].as_u64().unwrap() >= 1, "{body}");
    let (_, c, _, _) = get(&sift.url("/kb/199"), &[]).await;
    assert_eq!(c, "MISS");
    let (s, body) = post_text(&purge("?route=nope")).await;
    assert_eq!(s, 404, "{body}");
    assert!(body.contains("default"), "{body}");
    let (s, _) = post_text(&purge("?prefix=kb")).await;
    assert_eq!(s, 400);
    let (s, _) = post_text(&purge("?what=1")).await;
    assert_eq!(s, 400);
    let (s, _) = post_text(&purge("")).await;
    assert_eq!(s, 200);
    let (_, view) = get_text(&sift.admin_url("/cache")).await;
    let v: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert!(
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["entries"] == 0 && r["bytes"] == 0),
        "{view}"
    );

    // A reload that changes them starts an empty cache.
    let (_, c, _, _) = get(&sift.url("/kb/1"), &[]).await;
    assert_eq!(c, "MISS");
    sift.write_config(&cfg.replace("max_bytes: 64KiB", "max_bytes: 128KiB"));
    let (s, _) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(s, 200);
    let (_, c, _, _) = get(&sift.url("/kb/1"), &[]).await;
    assert_eq!(c, "MISS");
}

/// A body the upstream cuts short is not kept, and the client sees the cut.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_short_is_not_stored() {
    let cut = Arc::new(AtomicUsize::new(0));
    let c2 = cut.clone();
    let up = Upstream::start(move |_req: Request<hyper::body::Incoming>| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        async move {
            let (tx, body) = channel_body(4);
            let mut r = Response::new(body);
            r.headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            r.headers_mut()
                .insert("content-length", "10".parse().unwrap());
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"12345")).await;
                if n > 0 {
                    let _ = tx.send(Bytes::from_static(b"67890")).await;
                } else {
                    // The first answer ends after 5 of its 10 bytes (once
                    // its head and those have gone out).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            r
        }
    })
    .await;
    let sift = Sift::start(&config(up.addr, "{}"));
    let url = sift.url("/cut");
    let r = http1_client()
        .get(url.parse().unwrap())
        .await
        .expect("head");
    assert_eq!(r.headers()["x-sift-cache"], "MISS");
    assert!(r.into_body().collect().await.is_err(), "the cut is seen");
    let (s, c, body, _) = get(&url, &[]).await;
    assert_eq!((s, c.as_str(), body.as_str()), (200, "MISS", "1234567890"));
    let (_, c, body, _) = get(&url, &[]).await;
    assert_eq!((c.as_str(), body.as_str()), ("HIT", "1234567890"));
    assert_eq!(cut.load(Ordering::SeqCst), 2);
}

/// An expired entry being revalidated: other requests for it wait for
/// the revalidation (one upstream request), or, within
/// stale_while_revalidate, get the stale entry at once (UPDATING).
#[tokio::test(flavor = "multi_thread")]
async fn requests_during_a_revalidation_wait_for_it_or_get_the_stale_entry() {
    for (cache, others) in [
        ("{}", "HIT"),
        ("{ stale_while_revalidate: 30s }", "UPDATING"),
    ] {
        let seen = Arc::new(Seen::default());
        let up = upstream(seen.clone()).await;
        let sift = Sift::start(&config(up.addr, cache));
        let url = sift.url("/slowcheck");
        let (_, c, _, _) = get(&url, &[]).await;
        assert_eq!(c, "MISS");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let first = {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        let t = std::time::Instant::now();
        let rest: Vec<_> = (0..5)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { get(&url, &[]).await })
            })
            .collect();
        for r in rest {
            let (s, c, body, _) = r.await.unwrap();
            assert_eq!(
                (s, c.as_str(), body.as_str()),
                (200, others, "/slowcheck #1"),
                "{cache}"
            );
        }
        let waited = t.elapsed();
        let (s, c, body, _) = first.await.unwrap();
        assert_eq!(
            (s, c.as_str(), body.as_str()),
            (200, "REVALIDATED", "/slowcheck #1")
        );
        assert_eq!(seen.count("/slowcheck"), 2, "{cache}: one revalidation");
        if others == "UPDATING" {
            assert!(
                waited < Duration::from_millis(300),
                "{waited:?}: answered at once"
            );
        } else {
            assert!(
                waited >= Duration::from_millis(250),
                "{waited:?}: waited for it"
            );
        }
    }
}
