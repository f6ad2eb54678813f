//! Traffic policy end to end: rate limits, concurrency limits, circuit
//! breakers, outlier detection and retries, against real upstreams that can
//! be told to fail (5xx, hang, reset, refuse).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use sift::body;
use support::*;

fn config(clusters: &str, routes: &str) -> String {
    format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    forwarded: {{ trusted_hops: 1 }}
routes:
{routes}
clusters:
{clusters}
"#
    )
}

/// A config of `clusters` and `routes` is refused, naming `path` and `words`.
fn refused_with(clusters: &str, routes: &str, path: &str, words: &str) {
    let err = Sift::try_start(&config(clusters, routes))
        .err()
        .unwrap_or_else(|| panic!("accepted: {routes}"));
    assert!(err.contains(path) && err.contains(words), "{routes}: {err}");
}

async fn get(sift: &Sift, path: &str, headers: &[(&str, &str)]) -> http::Response<Bytes> {
    let mut r = Request::get(sift.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    send(r.body(body::empty()).unwrap()).await
}

/// An upstream that answers 200 after 400 ms.
async fn slow_upstream() -> Upstream {
    Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        text_response(200, "slow")
    })
    .await
}

/// Start `n` concurrent GETs of `path`; each yields its status.
fn spawn_gets(sift: &Sift, path: &str, n: usize) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..n)
        .map(|_| {
            let url = sift.url(path);
            tokio::spawn(async move { get_text(&url).await.0 })
        })
        .collect()
}

/// A TCP server that accepts and closes at once: a reset upstream.
async fn resetting() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    (addr, t)
}

/// A port nobody listens on (for config checks that never connect).
fn refused() -> SocketAddr {
    refused_port().addr
}

/// Answers 503 to every request after `delay`, counting what reached it.
async fn counting_503(delay: Duration) -> (Upstream, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let up = Upstream::start(move |_req: Request<hyper::body::Incoming>| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            let mut r = text_response(200, "x");
            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    })
    .await;
    (up, calls)
}

async fn status_upstream(code: u16) -> Upstream {
    Upstream::start(move |_req: Request<hyper::body::Incoming>| async move {
        let mut r = text_response(200, "x");
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
        r
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_429_names_the_policy_with_retry_after_and_ratelimit_headers() {
    let up = Upstream::echo("a").await;
    let sift = Sift::start(&config(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        r#"  - name: api
    cluster: app
    rate_limits:
      - { name: per-ip, requests_per_unit: 2, unit: minute, response_headers: true }"#,
    ));
    let ip = [("x-forwarded-for", "198.51.100.7")];
    let r1 = get(&sift, "/", &ip).await;
    assert_eq!(r1.status(), 200);
    assert_eq!(r1.headers()["ratelimit-policy"], r#""per-ip";q=2;w=60"#);
    assert_eq!(r1.headers()["ratelimit"], r#""per-ip";r=1;t=30"#);
    let r2 = get(&sift, "/", &ip).await;
    assert_eq!(r2.headers()["ratelimit"], r#""per-ip";r=0;t=60"#);
    let r3 = get(&sift, "/", &ip).await;
    assert_eq!(r3.status(), 429);
    assert_eq!(r3.headers()["x-sift-error"], "rate-limited");
    // 2 per minute: the next token comes in 30 s.
    assert_eq!(r3.headers()["retry-after"], "30");
    assert_eq!(r3.headers()["ratelimit-policy"], r#""per-ip";q=2;w=60"#);
    assert_eq!(r3.headers()["ratelimit"], r#""per-ip";r=0;t=30"#);
    assert!(String::from_utf8_lossy(r3.body()).contains("per-ip"));
    // Another client (the address the trusted hop saw) has its own bucket.
    let other = get(
        &sift,
        "/",
        &[("x-forwarded-for", "203.0.113.1, 198.51.100.8")],
    )
    .await;
    assert_eq!(other.status(), 200);
    for (decision, n) in [("allowed", 3.0), ("denied", 1.0)] {
        assert_eq!(
            sift.metric(&format!(
                r#"sift_ratelimit_decisions_total{{route="api",policy="per-ip",decision="{decision}"}}"#
            ))
            .await,
            Some(n)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn descriptors_combine_and_overrides_raise_one_key() {
    let up = Upstream::echo("a").await;
    let sift = Sift::start(&config(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        r#"  - name: api
    cluster: app
    rate_limits:
      - name: tenant
        requests_per_unit: 1
        unit: hour
        key: [header:x-tenant, method]
        overrides:
          - { value: "gold|GET", requests_per_unit: 5 }"#,
    ));
    let count = |tenant: &'static str, method: &'static str| {
        let url = sift.url("/");
        async move {
            let mut ok = 0;
            for _ in 0..8 {
                let r = send(
                    Request::builder()
                        .method(method)
                        .uri(&url)
                        .header("x-tenant", tenant)
                        .body(body::empty())
                        .unwrap(),
                )
                .await;
                if r.status() == 200 {
                    ok += 1;
                }
            }
            ok
        }
    };
    assert_eq!(count("gold", "GET").await, 5, "override: 5 per hour");
    assert_eq!(
        count("gold", "POST").await,
        1,
        "another method is another key"
    );
    assert_eq!(count("silver", "GET").await, 1);
    // Without the header the descriptor is incomplete: not limited.
    for _ in 0..5 {
        assert_eq!(get(&sift, "/", &[]).await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_counts_but_never_rejects_and_overlaps_refund() {
    let up = Upstream::echo("a").await;
    let sift = Sift::start(&config(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        r#"  - name: shadowed
    match: { path: { prefix: /shadow } }
    cluster: app
    rate_limits:
      - { name: tiny, requests_per_unit: 1, unit: hour, shadow: true }
  - name: overlap
    cluster: app
    rate_limits:
      - { name: wide, requests_per_unit: 10, unit: hour, response_headers: true }
      - { name: narrow, requests_per_unit: 1, unit: hour, key: [header:x-user] }"#,
    ));
    for _ in 0..5 {
        assert_eq!(get(&sift, "/shadow", &[]).await.status(), 200);
    }
    assert_eq!(
        sift.metric(r#"sift_ratelimit_decisions_total{route="shadowed",policy="tiny",decision="shadow_denied"}"#)
            .await,
        Some(4.0)
    );
    // narrow fires on the 2nd request; wide must not pay for it.
    let u = [("x-user", "u1")];
    let r = get(&sift, "/", &u).await;
    assert_eq!(r.headers()["ratelimit"], r#""wide";r=9;t=360"#);
    let r = get(&sift, "/", &u).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["ratelimit-policy"],
        r#""narrow";q=1;w=3600"#,
        "the 429 names the policy that fired"
    );
    let r = get(&sift, "/", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["ratelimit"],
        r#""wide";r=8;t=720"#,
        "the rejected request's token came back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn buckets_survive_a_reload_unless_their_policy_changed() {
    let up = Upstream::echo("a").await;
    let clusters = format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr);
    let cfg = |rpu: u32, tag: &str| {
        config(
            &clusters,
            &format!(
                r#"  - name: api
    cluster: app
    response_headers: {{ set: {{ x-tag: "{tag}" }} }}
    rate_limits:
      - {{ name: p, requests_per_unit: {rpu}, unit: hour }}"#
            ),
        )
    };
    let sift = Sift::start(&cfg(1, "one"));
    assert_eq!(get(&sift, "/", &[]).await.status(), 200);
    assert_eq!(get(&sift, "/", &[]).await.status(), 429);
    // Unrelated change: the same policy keeps its bucket (still empty).
    sift.write_config(&cfg(1, "two"));
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    let r = get(&sift, "/", &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["x-sift-error"],
        "rate-limited",
        "429 comes from sift"
    );
    // ... with the reloaded route's response headers (they go on sift's
    // answers for the route too).
    assert_eq!(r.headers()["x-tag"], "two");
    // Changed policy: a new bucket.
    sift.write_config(&cfg(2, "three"));
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    assert_eq!(get(&sift, "/", &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_limit_sheds_with_503_overloaded() {
    let up = slow_upstream().await;
    let sift = Sift::start(&config(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        "  - { name: api, cluster: app, max_inflight: 2 }",
    ));
    let hs = spawn_gets(&sift, "/", 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = get(&sift, "/", &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sift-error"], "overloaded");
    for h in hs {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(
        sift.metric(r#"sift_inflight{route="api"}"#).await,
        Some(0.0)
    );
    assert_eq!(get(&sift, "/", &[]).await.status(), 200);
}

/// An upstream that takes `base` per request times the requests it has in
/// flight (a server that queues), or `base` alone when `queues` is false;
/// its count of requests in flight is shared.
async fn queueing_upstream(base: Duration, queues: bool) -> (Upstream, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let n2 = now.clone();
    let up = Upstream::start(move |_req| {
        let now = n2.clone();
        async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            let wait = if queues { base * n as u32 } else { base };
            tokio::time::sleep(wait).await;
            now.fetch_sub(1, Ordering::SeqCst);
            text_response(200, "ok")
        }
    })
    .await;
    (up, now)
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `adaptive_concurrency` (Envoy's gradient controller): against an
/// upstream whose latency grows with its load, the limit stays low and the
/// surplus is refused with 503 `overloaded`, so the upstream does not see
/// the clients' full concurrency; against one whose latency does not grow,
/// the limit rises to let the load through.
#[tokio::test(flavor = "multi_thread")]
async fn adaptive_concurrency_follows_latency() {
    let (queue, queue_now) = queueing_upstream(Duration::from_millis(20), true).await;
    let (flat, _) = queueing_upstream(Duration::from_millis(20), false).await;
    // Windows longer than the upstream's latency: a new limit's latency
    // shows within the window that follows it.
    let adaptive = "adaptive_concurrency: { update_interval: 200ms, min_rtt_requests: 10, min_concurrency: 2, buffer_percent: 50, jitter_percent: 0 }";
    let sift = Sift::start(&config(
        &format!(
            "  - {{ name: queue, endpoints: [\"{}\"] }}\n  - {{ name: flat, endpoints: [\"{}\"] }}",
            queue.addr, flat.addr
        ),
        &format!(
            "  - {{ name: q, match: {{ path: {{ prefix: /q }} }}, cluster: queue, {adaptive} }}\n  - {{ name: f, cluster: flat, {adaptive} }}"
        ),
    ));
    // 24 clients per route, each sending one request after another for 2.5 s.
    let load = |path: &'static str| {
        let url = sift.url(path);
        (0..24)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let (mut ok, mut shed) = (0, 0);
                    let end = std::time::Instant::now() + Duration::from_millis(2500);
                    while std::time::Instant::now() < end {
                        let r = send(Request::get(url.as_str()).body(body::empty()).unwrap()).await;
                        match (r.status().as_u16(), r.headers().get("x-sift-error")) {
                            (200, _) => ok += 1,
                            (503, Some(v)) if v == "overloaded" => {
                                shed += 1;
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            (s, e) => panic!("unexpected {s} {e:?}"),
                        }
                    }
                    (ok, shed)
                })
            })
            .collect::<Vec<_>>()
    };
    let (q, f) = (load("/q"), load("/f"));
    // The first windows overshoot (a new limit's latency shows once its
    // requests end, as in Envoy); the rest is sampled: the upstream's
    // requests in flight every 20 ms, the limit every 100 ms.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut inflight, mut limits) = (Vec::new(), Vec::new());
    for i in 0..60 {
        inflight.push(queue_now.load(Ordering::SeqCst) as f64);
        if i % 5 == 0 {
            let m = get_text(&sift.admin_url("/metrics")).await.1;
            limits.push(
                metric_value(&m, r#"sift_adaptive_concurrency_limit{route="q"}"#).unwrap_or(-1.0),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sum = |hs: Vec<tokio::task::JoinHandle<(u32, u32)>>| async move {
        let mut t = (0, 0);
        for h in hs {
            let (a, b) = h.await.unwrap();
            t = (t.0 + a, t.1 + b);
        }
        t
    };
    let ((q_ok, q_shed), (f_ok, _)) = (sum(q).await, sum(f).await);
    let m = get_text(&sift.admin_url("/metrics")).await.1;
    let v = |s: &str| metric_value(&m, s).unwrap_or(-1.0);
    let f_limit = v(r#"sift_adaptive_concurrency_limit{route="f"}"#);
    let (busy, limit) = (median(inflight), median(limits.clone()));
    eprintln!(
        "queueing: ok {q_ok} shed {q_shed} median in flight {busy} median limit {limit} (limits {limits:?}); flat: ok {f_ok} limit {f_limit}"
    );
    assert!(q_ok > 0 && q_shed > 0);
    assert_eq!(
        v(r#"sift_adaptive_concurrency_blocked_total{route="q"}"#),
        f64::from(q_shed)
    );
    // Without the limit the queueing upstream would hold all 24; with it,
    // a few (min RTT about 40 ms at 2 in flight, 20 ms more per request in
    // flight, 50 % buffer: 5 to 8 measured, also with three CPU hogs
    // beside), more when the host is busy (the minimum RTT measured then
    // is longer).
    assert!(busy <= 12.0, "median in flight {busy}");
    assert!((2.0..=16.0).contains(&limit), "median limit {limit}");
    assert!(v(r#"sift_adaptive_concurrency_min_rtt_seconds{route="q"}"#) > 0.0);
    assert!(v(r#"sift_adaptive_concurrency_sample_rtt_seconds{route="q"}"#) > 0.0);
    // The flat upstream's limit grew past the clients' concurrency.
    assert!(f_limit >= 24.0, "{f_limit}");
    assert!(f_ok > q_ok, "{f_ok} > {q_ok}");
}

/// `retries.retry_after` (Envoy's `rate_limited_retry_back_off`): a
/// retried 503 or 429 that says `Retry-After: N` is retried after N
/// seconds, not after the jittered backoff; when N is over
/// `max_interval` (or past the route's deadline) it is not retried at all
/// and the client gets the answer with its Retry-After.
#[tokio::test(flavor = "multi_thread")]
async fn retries_wait_what_retry_after_asks() {
    // The first request to each path gets 503 with its Retry-After (the
    // path's last segment), later ones 200; the upstream keeps the time of
    // each request.
    let seen: Arc<std::sync::Mutex<Vec<(String, std::time::Instant)>>> = Arc::default();
    let s2 = seen.clone();
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let seen = s2.clone();
        async move {
            let path = req.uri().path().to_string();
            let first = {
                let mut v = seen.lock().unwrap();
                let first = !v.iter().any(|(p, _)| *p == path);
                v.push((path.clone(), std::time::Instant::now()));
                first
            };
            if first {
                let mut r = text_response(503, "busy");
                let after = path.rsplit('/').next().unwrap().to_string();
                r.headers_mut()
                    .insert("retry-after", after.parse().unwrap());
                r
            } else {
                text_response(200, "ok")
            }
        }
    })
    .await;
    let sift = Sift::start(&config(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        "  - { name: honour, match: { path: { prefix: /h } }, cluster: app, timeout: 10s, retries: { on: [\"503\"], retry_after: { max_interval: 3s } } }\n  - { name: plain, cluster: app, timeout: 10s, retries: { on: [\"503\"] } }",
    ));
    let gap = |path: &str| {
        let v = seen.lock().unwrap();
        let t: Vec<_> = v
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| *t)
            .collect();
        (t.len(), t.get(1).map(|b| b.duration_since(t[0])))
    };
    // Retry-After: 1 → one retry, a second later.
    assert_eq!(get(&sift, "/h/1", &[]).await.status(), 200);
    let (n, g) = gap("/h/1");
    assert_eq!(n, 2);
    assert!(g.unwrap() >= Duration::from_millis(990), "{g:?}");
    // Retry-After: 7 is over max_interval: not retried, the client gets it.
    let r = get(&sift, "/h/7", &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(gap("/h/7").0, 1);
    assert_eq!(
        sift.metric(r#"sift_retries_total{cluster="app",outcome="retry_after_too_long"}"#)
            .await,
        Some(1.0)
    );
    // Without `retry_after` the backoff (at most 250 ms) decides.
    assert_eq!(get(&sift, "/p/1", &[]).await.status(), 200);
    let (n, g) = gap("/p/1");
    assert_eq!(n, 2);
    assert!(g.unwrap() < Duration::from_millis(900), "{g:?}");
}

/// `retries.hedge_on_per_try_timeout` (Envoy's hedging): a try past its
/// per-try timeout is not cancelled; the next try runs beside it and the
/// first answer wins. Here the first try answers at 300 ms, after its
/// 100 ms per-try timeout, and the second would take 3 s: with hedging the
/// client gets the first try's answer; without it the first try is cut at
/// its per-try timeout (there the second answers at once).
#[tokio::test(flavor = "multi_thread")]
async fn hedged_tries_race_and_the_first_answer_wins() {
    let counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    let c2 = counts.clone();
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let counts = c2.clone();
        async move {
            let n = {
                let mut m = counts.lock().unwrap();
                let n = m.entry(req.uri().path().to_string()).or_insert(0);
                *n += 1;
                *n
            };
            // /p answers later tries at once, /h/fail with a 503 at once,
            // the others after 3 s.
            let path = req.uri().path().to_string();
            if n > 1 && path == "/h/fail" {
                return text_response(503, "busy");
            }
            let later = if path == "/p" { 20 } else { 3000 };
            let (wait, name) = if n == 1 {
                (300, "first")
            } else {
                (later, "later")
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            text_response(200, name)
        }
    })
    .await;
    let sift = Sift::start(&config(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        "  - { name: hedged, match: { path: { prefix: /h } }, cluster: app, timeout: 6s, retries: { attempts: 1, on: [timeout, \"503\"], per_try_timeout: 100ms, hedge_on_per_try_timeout: true } }\n  - { name: plain, cluster: app, timeout: 6s, retries: { attempts: 1, on: [timeout], per_try_timeout: 100ms } }",
    ));
    let (status, body) = get_text(&sift.url("/h")).await;
    assert_eq!((status, body.as_str()), (200, "first"), "the first try won");
    assert_eq!(
        counts.lock().unwrap()["/h"],
        2,
        "a second try was sent beside it"
    );
    assert_eq!(
        sift.metric(r#"sift_retries_total{cluster="app",outcome="hedged"}"#)
            .await,
        Some(1.0)
    );
    // The hedged try fails (a retryable 503) and no other may start: the
    // first, still running, is waited for, and wins.
    let (status, body) = get_text(&sift.url("/h/fail")).await;
    assert_eq!((status, body.as_str()), (200, "first"));
    assert_eq!(counts.lock().unwrap()["/h/fail"], 2);
    // Without hedging the first try is cancelled at its per-try timeout.
    let (status, body) = get_text(&sift.url("/p")).await;
    assert_eq!((status, body.as_str()), (200, "later"));
    assert_eq!(counts.lock().unwrap()["/p"], 2);
    // A POST is not sent twice (not idempotent), but its try is not cut
    // at the per-try timeout either: it has until the route's deadline.
    let r = send(
        Request::post(sift.url("/h/post"))
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (r.status().as_u16(), r.body().as_ref()),
        (200, &b"first"[..])
    );
    assert_eq!(counts.lock().unwrap()["/h/post"], 1);
    // Hedging needs a per-try timeout.
    let bad = config(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        "  - { name: r, cluster: app, retries: { hedge_on_per_try_timeout: true } }",
    );
    let e = sift::config::load_str(&bad).unwrap_err().to_string();
    assert!(
        e.contains("hedge_on_per_try_timeout: needs per_try_timeout"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn circuit_breaker_thresholds_overflow_to_503() {
    let up = slow_upstream().await;
    let sift = Sift::start(&config(
        &format!(
            "  - {{ name: reqs, endpoints: [\"{0}\"], circuit_breakers: {{ max_requests: 2 }} }}\n  - {{ name: conns, endpoints: [\"{0}\"], circuit_breakers: {{ max_connections: 1, max_pending_requests: 1 }} }}",
            up.addr
        ),
        "  - { name: r, match: { path: { prefix: /r } }, cluster: reqs }\n  - { name: c, cluster: conns }",
    ));
    // max_requests 2: the third concurrent request overflows.
    let hs = spawn_gets(&sift, "/r", 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = get(&sift, "/r", &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sift-error"], "circuit-open");
    for h in hs {
        assert_eq!(h.await.unwrap(), 200);
    }
    // max_connections 1 + max_pending 1: one runs, one waits, one is refused.
    let mut hs = Vec::new();
    for _ in 0..2 {
        let url = sift.url("/c");
        hs.push(tokio::spawn(async move { get_text(&url).await.0 }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(&sift, "/c", &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sift-error"], "circuit-open");
    for h in hs {
        assert_eq!(
            h.await.unwrap(),
            200,
            "the queued request is served once a connection frees"
        );
    }
    for (cluster, threshold, n) in [
        ("reqs", "requests", 1.0),
        ("conns", "pending", 1.0),
        ("conns", "connections", 2.0),
    ] {
        assert_eq!(
            sift.metric(&format!(
                r#"sift_circuit_overflow_total{{cluster="{cluster}",threshold="{threshold}"}}"#
            ))
            .await,
            Some(n),
            "{cluster} {threshold}"
        );
    }
}

/// `outlier_detection.success_rate` (Envoy's statistical detection): five
/// endpoints, one answering 500 to every other request; once an interval
/// has passed with enough requests, that one (success rate 50 % against a
/// mean of 90 %) is ejected and the rest share the traffic. The
/// consecutive-error detectors are off, so only the comparison can eject.
#[tokio::test(flavor = "multi_thread")]
async fn success_rate_outlier_detection_ejects_the_worst() {
    let mut ups = Vec::new();
    for _ in 0..4 {
        ups.push(Upstream::echo("good").await);
    }
    let flip = Arc::new(AtomicUsize::new(0));
    let f2 = flip.clone();
    let bad = Upstream::start(move |_req: Request<hyper::body::Incoming>| {
        let n = f2.fetch_add(1, Ordering::SeqCst);
        async move { text_response(if n % 2 == 0 { 500 } else { 200 }, "flaky") }
    })
    .await;
    let endpoints: Vec<String> = ups
        .iter()
        .chain(std::iter::once(&bad))
        .map(|u| format!("\"{}\"", u.addr))
        .collect();
    let sift = Sift::start(&config(
        &format!(
            "  - name: app\n    endpoints: [{}]\n    outlier_detection: {{ consecutive_5xx: 0, consecutive_gateway_errors: 0, interval: 1s, max_ejection_percent: 20, success_rate: {{ minimum_hosts: 5, request_volume: 10 }} }}",
            endpoints.join(", ")
        ),
        "  - { name: api, cluster: app }",
    ));
    // 1.5 s of requests: every endpoint gets well over 10 in the first
    // interval; a request after its end evaluates it.
    let end = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < end {
        get(&sift, "/", &[]).await;
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            get(&sift, "/", &[]).await;
            sift.metric(r#"sift_outlier_ejections_total{cluster="app"}"#)
                .await
                == Some(1.0)
        })
        .await,
        "the flaky endpoint is ejected"
    );
    let before = flip.load(Ordering::SeqCst);
    for _ in 0..50 {
        assert_eq!(get(&sift, "/", &[]).await.status(), 200);
    }
    assert_eq!(flip.load(Ordering::SeqCst), before, "no request reached it");
    assert!(
        sift.log_lines()
            .iter()
            .any(|l| l.contains("success rate below the others'")),
        "the ejection says why"
    );
    let bad = config(
        "  - { name: app, endpoints: [\"127.0.0.1:1\"], outlier_detection: { success_rate: { minimum_hosts: 1, stdev_factor: -1 } } }",
        "  - { name: api, cluster: app }",
    );
    let e = sift::config::load_str(&bad).unwrap_err().to_string();
    assert!(
        e.contains("clusters[0].outlier_detection.success_rate.minimum_hosts")
            && e.contains("clusters[0].outlier_detection.success_rate.stdev_factor"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outlier_detection_ejects_returns_and_ejects_again_faster() {
    let bad = status_upstream(500).await;
    let good = Upstream::echo("good").await;
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: app
    endpoints: ["{}", "{}"]
    outlier_detection:
      consecutive_5xx: 3
      base_ejection_time: 600ms
      max_ejection_percent: 50"#,
            bad.addr, good.addr
        ),
        "  - { name: api, cluster: app }",
    ));
    // Round robin: the bad endpoint answers every other request until its
    // third 5xx in a row ejects it.
    let mut fails = 0;
    for _ in 0..6 {
        if get(&sift, "/", &[]).await.status() == 500 {
            fails += 1;
        }
    }
    assert_eq!(fails, 3);
    assert_eq!(
        sift.metric(r#"sift_outlier_ejections_total{cluster="app"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sift.metric(r#"sift_endpoints_ejected{cluster="app"}"#)
            .await,
        Some(1.0)
    );
    for _ in 0..10 {
        assert_eq!(
            get(&sift, "/", &[]).await.status(),
            200,
            "only the good endpoint serves"
        );
    }
    // Back after 600 ms, on probation: its first 5xx ejects it again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        sift.metric(r#"sift_endpoints_ejected{cluster="app"}"#)
            .await,
        Some(0.0)
    );
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(get(&sift, "/", &[]).await.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 1);
    assert_eq!(
        sift.metric(r#"sift_outlier_ejections_total{cluster="app"}"#)
            .await,
        Some(2.0)
    );
    // Second ejection lasts 2 × base: still out after 700 ms.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..6 {
        assert_eq!(get(&sift, "/", &[]).await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_recover_from_refused_reset_and_hung_endpoints() {
    let good = Upstream::echo("good").await;
    let (reset, _t) = resetting().await;
    let hung = Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        text_response(200, "late")
    })
    .await;
    let refusing = refused_port();
    let sift = Sift::start(&config(
        &format!(
            "  - {{ name: refused, endpoints: [\"{}\", \"{}\"] }}\n  - {{ name: reset, endpoints: [\"{}\", \"{}\"] }}\n  - {{ name: hung, endpoints: [\"{}\", \"{}\"] }}",
            refusing.addr, good.addr, reset, good.addr, hung.addr, good.addr
        ),
        r#"  - name: refused
    match: { path: { prefix: /refused } }
    cluster: refused
    retries: { attempts: 2, on: [connect-failure], backoff_base: 1ms }
  - name: reset
    match: { path: { prefix: /reset } }
    cluster: reset
    retries: { attempts: 2, on: [reset], backoff_base: 1ms }
  - name: hung
    match: { path: { prefix: /hung } }
    cluster: hung
    timeout: 5s
    retries: { attempts: 2, on: [timeout], per_try_timeout: 200ms, backoff_base: 1ms }"#,
    ));
    for path in ["/refused", "/reset", "/hung"] {
        for _ in 0..4 {
            let r = get(&sift, path, &[]).await;
            assert_eq!(r.status(), 200, "{path}");
        }
    }
    for cluster in ["refused", "reset", "hung"] {
        let n = sift
            .metric(&format!(
                r#"sift_retries_total{{cluster="{cluster}",outcome="retried"}}"#
            ))
            .await
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{cluster}: {n} retries");
    }
    // A POST with a small body that never reached an upstream is replayed
    // (it was buffered).
    let r = send(
        Request::post(sift.url("/refused"))
            .body(full("small body"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
}

/// A POST or PATCH that reached the upstream may have taken effect there:
/// retried only after a failed connect, unless the route says
/// `non_idempotent: true`; PUT and DELETE are idempotent and retried.
#[tokio::test(flavor = "multi_thread")]
async fn non_idempotent_requests_are_not_retried_once_sent() {
    let (reset, _t) = resetting().await;
    let (busy, hits) = counting_503(Duration::ZERO).await;
    let good = Upstream::echo("good").await;
    let sift = Sift::start(&config(
        &format!(
            "  - {{ name: reset, endpoints: [\"{reset}\", \"{}\"] }}\n  - {{ name: busy, endpoints: [\"{}\"] }}",
            good.addr, busy.addr
        ),
        r#"  - name: safe
    match: { path: { prefix: /safe } }
    cluster: reset
    retries: { attempts: 3, on: [reset], backoff_base: 1ms }
  - name: opt-in
    match: { path: { prefix: /opt-in } }
    cluster: reset
    retries: { attempts: 3, on: [reset], backoff_base: 1ms, non_idempotent: true }
  - name: busy
    match: { path: { prefix: /busy } }
    cluster: busy
    retries: { attempts: 2, on: ["503"], backoff_base: 1ms }"#,
    ));
    let post = |path: &str, method: &str| {
        Request::builder()
            .method(method)
            .uri(sift.url(path))
            .body(full("order #1"))
            .unwrap()
    };
    // Round robin: the resetting endpoint takes every other first try, so
    // 4 requests in a row meet it twice.
    let metric =
        |outcome: &str| format!(r#"sift_retries_total{{cluster="reset",outcome="{outcome}"}}"#);
    let mut failed = 0;
    for m in ["POST", "PATCH"] {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(send(post("/safe", m)).await.status().as_u16());
        }
        let n = statuses.iter().filter(|s| **s == 502).count();
        assert_eq!(n, 2, "{m}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "{m}");
        failed += n;
    }
    assert_eq!(
        sift.metric(&metric("non_idempotent")).await,
        Some(failed as f64)
    );
    assert_eq!(sift.metric(&metric("retried")).await, Some(0.0));
    // Idempotent methods are retried past the reset.
    for m in ["PUT", "DELETE", "GET"] {
        for _ in 0..4 {
            assert_eq!(send(post("/safe", m)).await.status(), 200, "{m}");
        }
    }
    let retried = sift.metric(&metric("retried")).await.unwrap_or(0.0);
    assert!(retried >= 1.0, "{retried}");
    // With non_idempotent: true, POSTs are retried too.
    for _ in 0..6 {
        assert_eq!(send(post("/opt-in", "POST")).await.status(), 200);
    }
    assert!(sift.metric(&metric("retried")).await.unwrap_or(0.0) > retried);
    // A 503 to a POST is the upstream's answer: passed on after one try.
    let r = send(post("/busy", "POST")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The same 503 to a GET is retried twice.
    let r = send(post("/busy", "GET")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_bodies_are_never_replayed() {
    let (reset, _t) = resetting().await;
    let sift = Sift::start(&config(
        &format!("  - {{ name: reset, endpoints: [\"{reset}\"] }}"),
        "  - { name: r, cluster: reset, retries: { attempts: 3, on: [reset], backoff_base: 1ms, buffer_limit: 1KiB } }",
    ));
    // 4 KiB > buffer_limit: streamed once, not retried (a PUT: a POST
    // would not be retried once sent anyway).
    let r = send(
        Request::put(sift.url("/"))
            .body(full(vec![b'x'; 4096]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 502);
    assert_eq!(
        sift.metric(r#"sift_retries_total{cluster="reset",outcome="not_replayable"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sift.metric(r#"sift_retries_total{cluster="reset",outcome="retried"}"#)
            .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_budget_caps_retries_in_flight() {
    let (flaky, calls) = counting_503(Duration::from_millis(300)).await;
    let sift = Sift::start(&config(
        &format!(
            "  - {{ name: app, endpoints: [\"{}\"], retry_budget: {{ percent: 0, min_concurrency: 1 }} }}",
            flaky.addr
        ),
        "  - { name: api, cluster: app, retries: { attempts: 1, on: [\"503\"], backoff_base: 1ms } }",
    ));
    // 6 requests at once all fail with 503 and all want a retry; the budget
    // lets one retry fly at a time.
    let mut hs = Vec::new();
    for _ in 0..6 {
        let url = sift.url("/");
        hs.push(tokio::spawn(async move { get_text(&url).await.0 }));
    }
    for h in hs {
        assert_eq!(h.await.unwrap(), 503);
    }
    let retried = sift
        .metric(r#"sift_retries_total{cluster="app",outcome="retried"}"#)
        .await
        .unwrap();
    let exhausted = sift
        .metric(r#"sift_retries_total{cluster="app",outcome="budget_exhausted"}"#)
        .await
        .unwrap();
    assert!(retried >= 1.0, "{retried}");
    assert!(exhausted >= 3.0, "budget denied most retries: {exhausted}");
    assert_eq!(retried + exhausted, 6.0);
    assert_eq!(
        calls.load(Ordering::SeqCst) as f64,
        6.0 + retried,
        "no retry storm"
    );
}

/// RateLimit and RateLimit-Policy are Structured Fields, whose integers
/// have at most 15 digits (RFC 9651 §3.3.1): a client's parser rejects the
/// whole field otherwise. An extreme (but accepted) quota shows capped
/// values rather than an unparseable header.
#[tokio::test(flavor = "multi_thread")]
async fn ratelimit_header_integers_fit_structured_fields() {
    let up = Upstream::echo("a").await;
    let sift = Sift::start(&config(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        r#"  - name: api
    cluster: app
    rate_limits:
      - { name: huge, requests_per_unit: 1, burst: 18446744073709551615, unit: day, response_headers: true }"#,
    ));
    let r = get(&sift, "/", &[]).await;
    assert_eq!(r.status(), 200);
    for h in ["ratelimit-policy", "ratelimit"] {
        let v = r.headers()[h].to_str().unwrap();
        for param in v.split(';').skip(1) {
            let (k, n) = param.split_once('=').unwrap();
            assert!(
                n.len() <= 15 && n.bytes().all(|b| b.is_ascii_digit()),
                "{h}: {k}={n} is not a Structured Field integer"
            );
        }
    }
    assert_eq!(r.headers()["ratelimit-policy"], r#""huge";q=1;w=86400"#);
}

/// A retry needs an endpoint to go to. When the failed try just got the
/// last available endpoint ejected (a one-endpoint cluster), there is no
/// retry: the client gets the upstream's own answer (status and body),
/// not a 503 no-healthy-endpoint that hides it, and the decision is
/// counted as `no_endpoint`.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_no_endpoint_left_returns_the_upstream_answer() {
    let up = Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        text_response(500, "app says no\n")
    })
    .await;
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: app
    endpoints: ["{}"]
    outlier_detection: {{ consecutive_5xx: 1, base_ejection_time: 30s }}"#,
            up.addr
        ),
        r#"  - name: api
    cluster: app
    retries: { attempts: 2, on: [5xx] }"#,
    ));
    let r = get(&sift, "/", &[]).await;
    assert_eq!(r.status(), 500);
    assert!(
        r.headers().get("x-sift-error").is_none(),
        "{:?}",
        r.headers()
    );
    assert_eq!(&r.body()[..], b"app says no\n");
    assert_eq!(
        sift.metric(r#"sift_retries_total{cluster="app",outcome="no_endpoint"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sift.metric(r#"sift_retries_total{cluster="app",outcome="retried"}"#)
            .await,
        Some(0.0)
    );
}

/// Send a GET with `lines` (raw header lines, each ending in CRLF) as
/// raw bytes, so repeated lines reach sift as sent; the status.
async fn raw_status(sift: &Sift, lines: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{lines}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{lines:?}: {text}"))
}

/// A rate limit keyed on a header keys on all its lines joined by ","
/// (CVE-2020-25017, as route conditions): `x-tenant: a` then
/// `x-tenant: b` is bucket `a,b`. Read by its first line, it spent
/// tenant `a`'s bucket, and a client could pick the bucket by the line
/// it puts first while the app reads another.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_keys_on_a_headers_lines_joined() {
    let up = Upstream::echo("a").await;
    let sift = Sift::start(&config(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        r#"  - name: api
    cluster: app
    rate_limits:
      - { name: tenant, requests_per_unit: 1, unit: hour, key: [header:x-tenant] }"#,
    ));
    // Bucket `a,b` spent by the two-line request ...
    assert_eq!(
        raw_status(&sift, "x-tenant: a\r\nx-tenant: b\r\n").await,
        200
    );
    // ... not tenant a's: its one request still passes, once.
    assert_eq!(raw_status(&sift, "x-tenant: a\r\n").await, 200);
    assert_eq!(raw_status(&sift, "x-tenant: a\r\n").await, 429);
    // Prepending a line to a spent bucket's value is another value ...
    assert_eq!(
        raw_status(&sift, "x-tenant: b\r\nx-tenant: a\r\n").await,
        200
    );
    // ... and the two lines are the same key as their joined value.
    assert_eq!(
        raw_status(&sift, "x-tenant: a\r\nx-tenant: b\r\n").await,
        429
    );
    assert_eq!(raw_status(&sift, "x-tenant: a,b\r\n").await, 429);
}

/// An upstream named `name` whose `/healthz` answers the status held in the
/// returned cell (and sleeps `health_delay` first); other paths answer 200
/// with the name. Probes are counted, and the last probe's Host,
/// User-Agent and path are kept.
struct Checked {
    up: Upstream,
    health: Arc<std::sync::atomic::AtomicU16>,
    probes: Arc<AtomicUsize>,
    last_probe: Arc<std::sync::Mutex<Option<(String, String)>>>,
}

async fn checked_upstream(name: &'static str, health_delay: Duration) -> Checked {
    let health = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let probes = Arc::new(AtomicUsize::new(0));
    let last_probe = Arc::new(std::sync::Mutex::new(None));
    let (h, p, l) = (health.clone(), probes.clone(), last_probe.clone());
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let (h, p, l) = (h.clone(), p.clone(), l.clone());
        async move {
            if req.uri().path() != "/healthz" {
                return text_response(200, name);
            }
            p.fetch_add(1, Ordering::SeqCst);
            let hv = |n: http::header::HeaderName| {
                req.headers()
                    .get(n)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default()
            };
            *l.lock().unwrap() = Some((hv(http::header::HOST), hv(http::header::USER_AGENT)));
            tokio::time::sleep(health_delay).await;
            let mut r = text_response(200, "health");
            *r.status_mut() = http::StatusCode::from_u16(h.load(Ordering::SeqCst)).unwrap();
            r
        }
    })
    .await;
    Checked {
        up,
        health,
        probes,
        last_probe,
    }
}

/// The bodies of `n` GETs of `path` (or `status:CODE:ERROR` for non-200).
async fn answers(sift: &Sift, path: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(sift, path, &[]).await;
        out.push(if r.status() == 200 {
            String::from_utf8_lossy(r.body()).into_owned()
        } else {
            let e = r
                .headers()
                .get("x-sift-error")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            format!("status:{}:{e}", r.status().as_u16())
        });
    }
    out
}

async fn clusters_json(sift: &Sift) -> serde_json::Value {
    let (status, text) = get_text(&sift.admin_url("/clusters")).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_take_failing_endpoints_out_and_back() {
    let a = checked_upstream("a", Duration::ZERO).await;
    let b = checked_upstream("b", Duration::ZERO).await;
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: app
    endpoints: ["{}", "{}"]
    health_check:
      path: /healthz
      interval: 100ms
      timeout: 500ms
      unhealthy_threshold: 2
      healthy_threshold: 2
      panic_threshold: 0"#,
            a.up.addr, b.up.addr
        ),
        "  - { name: api, cluster: app }",
    ));
    let probed = sift_probed(&sift, "app", "success", 2.0).await;
    assert!(probed, "both endpoints probed");
    let mut got = answers(&sift, "/x", 4).await;
    got.sort();
    assert_eq!(got, ["a", "a", "b", "b"], "both serve while healthy");
    // The probe: GET /healthz with the endpoint as Host, on its own.
    let (host, ua) = a.last_probe.lock().unwrap().clone().expect("probed");
    assert_eq!(host, a.up.addr.to_string());
    assert_eq!(ua, "sift-health-check");

    // a fails its probes: out after two in a row, while b serves all.
    a.health.store(503, Ordering::SeqCst);
    let out = eventually(Duration::from_secs(5), || async {
        sift.metric(r#"sift_endpoints_healthy{cluster="app"}"#)
            .await
            == Some(1.0)
    })
    .await;
    assert!(out, "a marked unhealthy");
    assert_eq!(answers(&sift, "/x", 10).await, vec!["b"; 10]);
    assert!(
        sift.metric(r#"sift_health_checks_total{cluster="app",outcome="unexpected_status"}"#)
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
    let v = clusters_json(&sift).await;
    let app = &v["clusters"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["health_check"]["healthy"], 1);
    assert_eq!(app["health_check"]["panic"], false);
    let ep_a = &app["endpoints"][0];
    assert_eq!(ep_a["address"], a.up.addr.to_string());
    assert_eq!(ep_a["healthy"], false);
    assert_eq!(ep_a["last_failure"], "status 503");
    assert_eq!(app["endpoints"][1]["healthy"], true);
    assert!(
        sift.log_lines()
            .iter()
            .any(|l| l.contains("endpoint marked unhealthy by health check")
                && l.contains(&a.up.addr.to_string())),
        "the transition is logged"
    );
    // Requests to the app never reached a while it was out.
    let before = a.up.requests.load(Ordering::SeqCst) - a.probes.load(Ordering::SeqCst);
    answers(&sift, "/x", 6).await;
    let after = a.up.requests.load(Ordering::SeqCst) - a.probes.load(Ordering::SeqCst);
    assert!(
        after <= before + 1,
        "a got traffic while unhealthy ({before} → {after})"
    );

    // a recovers: back after two passes.
    a.health.store(200, Ordering::SeqCst);
    let back = eventually(Duration::from_secs(5), || async {
        sift.metric(r#"sift_endpoints_healthy{cluster="app"}"#)
            .await
            == Some(2.0)
    })
    .await;
    assert!(back, "a healthy again");
    let mut got = answers(&sift, "/x", 4).await;
    got.sort();
    assert_eq!(got, ["a", "a", "b", "b"]);

    // Both fail, panic_threshold 0: no endpoint, 503 no-healthy-endpoint.
    a.health.store(500, Ordering::SeqCst);
    b.health.store(404, Ordering::SeqCst);
    let none = eventually(Duration::from_secs(5), || async {
        sift.metric(r#"sift_endpoints_healthy{cluster="app"}"#)
            .await
            == Some(0.0)
    })
    .await;
    assert!(none, "both unhealthy");
    assert_eq!(
        answers(&sift, "/x", 2).await,
        vec!["status:503:no-healthy-endpoint"; 2]
    );
    assert_eq!(
        sift.metric(r#"sift_lb_panic_total{cluster="app"}"#).await,
        Some(0.0)
    );
}

/// `sift_health_checks_total{cluster,outcome}` reaches `at_least`.
async fn sift_probed(sift: &Sift, cluster: &str, outcome: &str, at_least: f64) -> bool {
    let sample = format!(r#"sift_health_checks_total{{cluster="{cluster}",outcome="{outcome}"}}"#);
    eventually(Duration::from_secs(5), || async {
        sift.metric(&sample).await.unwrap_or(0.0) >= at_least
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn health_check_panic_tcp_timeout_and_reload() {
    // p: its one endpoint fails the probe but serves: in panic (default
    // 50 %), requests still go to it. t: a TCP probe finds the refused
    // endpoint. h: the probe hangs past its timeout.
    let p = checked_upstream("p", Duration::ZERO).await;
    p.health.store(500, Ordering::SeqCst);
    let t = checked_upstream("t", Duration::ZERO).await;
    let h = checked_upstream("h", Duration::from_secs(10)).await;
    let refusing = refused_port();
    let dead = refusing.addr;
    let clusters = format!(
        r#"  - name: p
    endpoints: ["{p}"]
    health_check: {{ path: /healthz, interval: 100ms, healthy_threshold: 1 }}
  - name: t
    endpoints: ["{dead}", "{t}"]
    health_check: {{ kind: tcp, interval: 100ms, panic_threshold: 0 }}
  - name: h
    endpoints: ["{h}"]
    health_check: {{ path: /healthz, interval: 100ms, timeout: 200ms, panic_threshold: 0 }}"#,
        p = p.up.addr,
        t = t.up.addr,
        h = h.up.addr,
    );
    let routes = r#"  - { name: p, match: { path: { prefix: /p } }, cluster: p }
  - { name: t, match: { path: { prefix: /t } }, cluster: t }
  - { name: h, match: { path: { prefix: /h } }, cluster: h }"#;
    let sift = Sift::start(&config(&clusters, routes));
    assert!(sift_probed(&sift, "p", "unexpected_status", 1.0).await);
    assert!(sift_probed(&sift, "t", "connect_failure", 1.0).await);
    assert!(sift_probed(&sift, "h", "timeout", 1.0).await);
    assert_eq!(
        answers(&sift, "/p", 3).await,
        vec!["p"; 3],
        "panic: still served"
    );
    assert!(
        sift.metric(r#"sift_lb_panic_total{cluster="p"}"#)
            .await
            .unwrap_or(0.0)
            >= 3.0
    );
    assert_eq!(
        clusters_json(&sift).await["clusters"][1]["health_check"]["panic"],
        true
    );
    assert_eq!(
        answers(&sift, "/t", 6).await,
        vec!["t"; 6],
        "refused one is out"
    );
    assert_eq!(
        sift.metric(r#"sift_endpoints_healthy{cluster="t"}"#).await,
        Some(1.0)
    );
    // A TCP probe sends no request.
    assert_eq!(t.probes.load(Ordering::SeqCst), 0);
    assert_eq!(
        answers(&sift, "/h", 1).await,
        vec!["status:503:no-healthy-endpoint"]
    );
    let v = clusters_json(&sift).await;
    let h_json = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "h")
        .unwrap()
        .clone();
    assert_eq!(
        h_json["endpoints"][0]["last_failure"],
        "no answer within the timeout"
    );

    // A reload that drops cluster t stops its probes; p, unchanged, keeps
    // its state (still unhealthy: no first-probe grace again).
    let clusters = format!(
        r#"  - name: p
    endpoints: ["{p}"]
    health_check: {{ path: /healthz, interval: 100ms, healthy_threshold: 1 }}"#,
        p = p.up.addr,
    );
    let routes = r#"  - { name: p, match: { path: { prefix: /p } }, cluster: p }"#;
    let conns_before = t.up.connections.load(Ordering::SeqCst);
    sift.write_config(&config(&clusters, routes));
    let reloaded = eventually(Duration::from_secs(5), || async {
        clusters_json(&sift).await["clusters"]
            .as_array()
            .map(Vec::len)
            == Some(1)
    })
    .await;
    assert!(reloaded);
    assert_eq!(
        sift.metric(r#"sift_endpoints_healthy{cluster="p"}"#).await,
        Some(0.0)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = t.up.connections.load(Ordering::SeqCst);
    assert!(settled >= conns_before);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        t.up.connections.load(Ordering::SeqCst),
        settled,
        "no probes to a removed cluster"
    );
    // p recovers with one pass (healthy_threshold 1).
    p.health.store(200, Ordering::SeqCst);
    let back = eventually(Duration::from_secs(5), || async {
        sift.metric(r#"sift_endpoints_healthy{cluster="p"}"#).await == Some(1.0)
    })
    .await;
    assert!(back);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_health_checks_read_the_serving_status() {
    use http_body_util::BodyExt;
    // A gRPC server (h2c) answering grpc.health.v1.Health/Check with the
    // status held in the cell (1 SERVING, 2 NOT_SERVING), and the service
    // name each probe asked about.
    let status = Arc::new(std::sync::atomic::AtomicU8::new(1));
    let asked = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let (s, a) = (status.clone(), asked.clone());
    let server = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let (s, a) = (s.clone(), a.clone());
        async move {
            if req.uri().path() != "/grpc.health.v1.Health/Check" {
                return text_response(200, "app");
            }
            assert_eq!(req.headers()["content-type"], "application/grpc");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            // 5-byte frame head, then field 1 (service), if any.
            a.lock()
                .unwrap()
                .push(body.get(7..).unwrap_or_default().to_vec());
            let msg = [0u8, 0, 0, 0, 2, 0x08, s.load(Ordering::SeqCst)];
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let b = http_body_util::Full::new(Bytes::copy_from_slice(&msg))
                .map_err(|never| match never {})
                .with_trailers(async move { Some(Ok(trailers)) });
            let mut r = http::Response::new(body::boxed(b));
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            r
        }
    })
    .await;
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: svc
    endpoints: ["{}"]
    protocol: http2
    health_check: {{ kind: grpc, service: pkg.Orders, interval: 100ms, unhealthy_threshold: 2, healthy_threshold: 1, panic_threshold: 0 }}"#,
            server.addr
        ),
        "  - { name: api, cluster: svc }",
    ));
    let serving = |n: f64| {
        let sift = &sift;
        async move {
            eventually(Duration::from_secs(5), || async {
                sift.metric(r#"sift_endpoints_healthy{cluster="svc"}"#)
                    .await
                    == Some(n)
            })
            .await
        }
    };
    assert!(
        sift.metric_reaches(
            r#"sift_health_checks_total{cluster="svc",outcome="success"}"#,
            1.0,
            Duration::from_secs(5)
        )
        .await
    );
    assert_eq!(asked.lock().unwrap()[0], b"pkg.Orders");
    assert_eq!(get(&sift, "/", &[]).await.status(), 200);
    status.store(2, Ordering::SeqCst);
    assert!(serving(0.0).await, "NOT_SERVING takes it out");
    let r = get(&sift, "/", &[]).await;
    assert_eq!(r.status(), 503);
    assert!(
        sift.metric(r#"sift_health_checks_total{cluster="svc",outcome="not_serving"}"#)
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
    let (_, clusters) = get_text(&sift.admin_url("/clusters")).await;
    assert!(clusters.contains("gRPC: status NOT_SERVING"), "{clusters}");
    status.store(1, Ordering::SeqCst);
    assert!(serving(1.0).await, "SERVING brings it back");
    assert_eq!(get(&sift, "/", &[]).await.status(), 200);

    // grpc needs an http2 cluster; http options do not belong to it.
    for (hc, path) in [
        ("{ kind: grpc }", "clusters[0].health_check.kind"),
        (
            "{ kind: http, service: x }",
            "clusters[0].health_check.service",
        ),
    ] {
        let text = format!(
            "listeners: [{{ name: l, address: \"127.0.0.1:0\" }}]\nroutes: []\nclusters:\n  - {{ name: c, endpoints: [\"127.0.0.1:1\"], health_check: {hc} }}\n"
        );
        let errs = sift::config::load_str(&text).expect_err(hc).0;
        assert!(errs.iter().any(|e| e.path == path), "{hc}: {errs:?}");
    }
}

/// Outlier detection ejects an endpoint that answers 5xx for 60 s; its
/// passing active health checks return it at once (Envoy's
/// `successful_active_health_check_uneject_host`, on by default).
#[tokio::test(flavor = "multi_thread")]
async fn a_passing_health_check_returns_an_ejected_endpoint() {
    let up = |name: &'static str| {
        Upstream::start(move |req: Request<hyper::body::Incoming>| async move {
            if req.uri().path() == "/boom" && name == "a" {
                text_response(500, "boom")
            } else {
                text_response(200, name)
            }
        })
    };
    let (a, b) = (up("a").await, up("b").await);
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: app
    endpoints: ["{}", "{}"]
    outlier_detection: {{ consecutive_5xx: 1, base_ejection_time: 60s, max_ejection_percent: 50 }}
    health_check: {{ path: /healthz, interval: 300ms, jitter: 100ms, timeout: 1s }}"#,
            a.addr, b.addr
        ),
        "  - { name: api, cluster: app }",
    ));
    assert!(sift_probed(&sift, "app", "success", 2.0).await);
    // a's 500 ejects it (round robin reaches it within two requests).
    let ejected = eventually(Duration::from_secs(5), || async {
        get(&sift, "/boom", &[]).await;
        sift.metric(r#"sift_outlier_ejections_total{cluster="app"}"#)
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(ejected, "a ejected by outlier detection");
    // Within a few probe intervals (not 60 s) a serves again.
    let back = eventually(Duration::from_secs(5), || async {
        answers(&sift, "/x", 4).await.iter().any(|x| x == "a")
    })
    .await;
    assert!(back, "a returned by its passing health checks");
    assert!(
        sift.log_lines()
            .iter()
            .any(|l| l.contains("ejected endpoint returned by a passing health check")),
        "logged"
    );
}

/// The endpoint that answered each of `users` (by `x-user`), as a map.
async fn owners_by_user(sift: &Sift, users: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for u in users {
        let r = get(sift, "/x", &[("x-user", u)]).await;
        assert_eq!(r.status(), 200, "{u}");
        out.push(String::from_utf8_lossy(r.body()).into_owned());
    }
    out
}

/// `lb: maglev` with a header `hash_policy`: a user stays on one endpoint,
/// users spread over all three; when one endpoint fails its health checks
/// only its users move, and they come back with it.
#[tokio::test(flavor = "multi_thread")]
async fn maglev_keeps_users_on_their_endpoint_and_moves_only_lost_ones() {
    let a = checked_upstream("a", Duration::ZERO).await;
    let b = checked_upstream("b", Duration::ZERO).await;
    let c = checked_upstream("c", Duration::ZERO).await;
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: app
    lb: maglev
    endpoints: ["{}", "{}", "{}"]
    health_check: {{ path: /healthz, interval: 200ms, unhealthy_threshold: 1, healthy_threshold: 1, panic_threshold: 0 }}"#,
            a.up.addr, b.up.addr, c.up.addr
        ),
        "  - { name: api, cluster: app, hash_policy: [ { header: x-user } ] }",
    ));
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    // Read while all three stay up: on a loaded host one slow probe
    // (unhealthy_threshold 1) can take an endpoint out for a round, so a
    // reading is taken again (for up to 5 s) until two rounds agree.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let first = loop {
        let one = owners_by_user(&sift, &users).await;
        let two = owners_by_user(&sift, &users).await;
        let spread = |o: &[String]| ["a", "b", "c"].map(|n| o.iter().filter(|x| *x == n).count());
        if (one == two && spread(&one).iter().all(|&n| n >= 4))
            || std::time::Instant::now() > deadline
        {
            assert_eq!(one, two, "same user, same endpoint");
            assert!(
                spread(&one).iter().all(|&n| n >= 4),
                "a, b, c have {:?} of 40 users: {one:?}",
                spread(&one)
            );
            break one;
        }
    };
    // b fails its probes: b's users move to a or c, nobody else moves.
    b.health.store(503, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(r#"sift_endpoints_healthy{cluster="app"}"#)
                .await
                == Some(2.0)
        })
        .await
    );
    let during = owners_by_user(&sift, &users).await;
    for ((u, before), now) in users.iter().zip(&first).zip(&during) {
        if before == "b" {
            assert_ne!(now, "b", "{u} moved off the failed endpoint");
        } else {
            assert_eq!(now, before, "{u} was not on b and stays");
        }
    }
    let moved: std::collections::HashSet<&String> = users
        .iter()
        .zip(&first)
        .zip(&during)
        .filter(|((_, b), _)| *b == "b")
        .map(|(_, n)| n)
        .collect();
    assert!(!moved.is_empty());
    // b passes again: every user is back where it was.
    b.health.store(200, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(r#"sift_endpoints_healthy{cluster="app"}"#)
                .await
                == Some(3.0)
        })
        .await
    );
    assert_eq!(owners_by_user(&sift, &users).await, first);
}

/// `lb: ring_hash` with a terminal cookie entry before a query parameter:
/// the cookie alone decides when present, the parameter otherwise; a
/// request with neither goes to a random endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn ring_hash_reads_cookie_then_query_parameter_else_random() {
    let ups = [
        checked_upstream("a", Duration::ZERO).await,
        checked_upstream("b", Duration::ZERO).await,
        checked_upstream("c", Duration::ZERO).await,
    ];
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: app
    lb: ring_hash
    endpoints: ["{}", "{}", "{}"]"#,
            ups[0].up.addr, ups[1].up.addr, ups[2].up.addr
        ),
        r#"  - name: api
    cluster: app
    hash_policy:
      - { cookie: session, terminal: true }
      - { query_parameter: tenant }"#,
    ));
    let body = |r: http::Response<Bytes>| String::from_utf8_lossy(r.body()).into_owned();
    // One session: the same endpoint whatever the tenant parameter says.
    let with_cookie: Vec<String> = {
        let mut v = Vec::new();
        for t in 0..12 {
            let path = format!("/x?tenant=t{t}");
            v.push(body(
                get(&sift, &path, &[("cookie", "a=1; session=s-42")]).await,
            ));
        }
        v
    };
    assert!(
        with_cookie.iter().all(|x| *x == with_cookie[0]),
        "{with_cookie:?}"
    );
    // Tenants without a cookie: each tenant sticks, tenants spread.
    let mut seen = std::collections::HashSet::new();
    for t in 0..24 {
        let path = format!("/x?page=2&tenant=t{t}");
        let first = body(get(&sift, &path, &[]).await);
        for _ in 0..3 {
            assert_eq!(body(get(&sift, &path, &[]).await), first, "tenant t{t}");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "tenants spread over the endpoints: {seen:?}");
    // Neither: random, so 60 requests reach more than one endpoint.
    let random: std::collections::HashSet<String> = {
        let mut s = std::collections::HashSet::new();
        for _ in 0..60 {
            s.insert(body(get(&sift, "/x", &[]).await));
        }
        s
    };
    assert!(random.len() >= 2, "{random:?}");
}

/// A `cookie` entry with `ttl`: a client without the cookie gets one made
/// for it (Set-Cookie with Max-Age, Path, HttpOnly) and, sending it back,
/// stays on the endpoint its first request went to; clients spread; a
/// client that has the cookie gets no new one.
#[tokio::test(flavor = "multi_thread")]
async fn maglev_makes_the_session_cookie_a_client_lacks() {
    let ups = [
        checked_upstream("a", Duration::ZERO).await,
        checked_upstream("b", Duration::ZERO).await,
        checked_upstream("c", Duration::ZERO).await,
    ];
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: app
    lb: maglev
    endpoints: ["{}", "{}", "{}"]"#,
            ups[0].up.addr, ups[1].up.addr, ups[2].up.addr
        ),
        r#"  - name: api
    cluster: app
    hash_policy:
      - { cookie: sticky, ttl: 1h, path: /, terminal: true }"#,
    ));
    let body = |r: &http::Response<Bytes>| String::from_utf8_lossy(r.body()).into_owned();
    let mut owners = std::collections::HashSet::new();
    let mut values = std::collections::HashSet::new();
    for client in 0..30 {
        let first = get(&sift, "/x", &[]).await;
        assert_eq!(first.status(), 200);
        let set: Vec<&str> = first
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(set.len(), 1, "{set:?}");
        let (pair, attrs) = set[0].split_once("; ").unwrap();
        assert_eq!(attrs, "Max-Age=3600; Path=/; HttpOnly", "{}", set[0]);
        let value = pair.strip_prefix("sticky=").unwrap();
        assert_eq!(value.len(), 16, "{pair}");
        assert!(values.insert(value.to_string()), "cookie values repeat");
        let owner = body(&first);
        let cookie = format!("theme=dark; {pair}");
        for _ in 0..4 {
            let r = get(&sift, "/x", &[("cookie", &cookie)]).await;
            assert_eq!(body(&r), owner, "client {client} moved");
            assert!(!r.headers().contains_key("set-cookie"), "a second cookie");
        }
        owners.insert(owner);
    }
    assert_eq!(owners.len(), 3, "clients spread: {owners:?}");
}

/// Fault injection: an abort answers with its status and never reaches
/// the upstream; a share aborts about that share; a delay holds the
/// request and the route's timeout starts after it; both counted and
/// logged.
#[tokio::test(flavor = "multi_thread")]
async fn faults_abort_and_delay_requests() {
    let up = checked_upstream("app", Duration::ZERO).await;
    let sift = Sift::start(&config(
        &format!("  - name: app\n    endpoints: [\"{}\"]", up.up.addr),
        r#"  - name: abort
    match: { path: { prefix: /abort } }
    cluster: app
    fault: { abort: { status: 418 } }
  - name: half
    match: { path: { prefix: /half } }
    cluster: app
    fault: { abort: { status: 503, percent: 50 } }
  - name: slow
    match: { path: { prefix: /slow } }
    cluster: app
    timeout: 200ms
    fault: { delay: { fixed: 400ms } }"#,
    ));
    let before = up.up.requests.load(Ordering::SeqCst);
    let r = get(&sift, "/abort", &[]).await;
    assert_eq!(r.status(), 418);
    assert_eq!(r.headers()["x-sift-error"], "fault-abort");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(
        up.up.requests.load(Ordering::SeqCst),
        before,
        "never forwarded"
    );
    let mut aborted = 0;
    for _ in 0..200 {
        match get(&sift, "/half", &[]).await.status().as_u16() {
            503 => aborted += 1,
            200 => {}
            s => panic!("status {s}"),
        }
    }
    // Binomial(200, 0.5): 100 ± 7; 60..=140 is beyond 5 standard deviations.
    assert!((60..=140).contains(&aborted), "{aborted} of 200 aborted");
    let t = std::time::Instant::now();
    let r = get(&sift, "/slow", &[]).await;
    assert_eq!(
        r.status(),
        200,
        "the 200ms route timeout starts after the 400ms delay"
    );
    assert!(t.elapsed() >= Duration::from_millis(400));
    let m = |route: &str, kind: &str| {
        format!(r#"sift_faults_injected_total{{kind="{kind}",route="{route}"}}"#)
    };
    assert_eq!(sift.metric(&m("abort", "abort")).await, Some(1.0));
    assert_eq!(sift.metric(&m("half", "abort")).await, Some(aborted as f64));
    assert_eq!(sift.metric(&m("slow", "delay")).await, Some(1.0));
    assert!(
        eventually(Duration::from_secs(3), || async {
            let lines = sift.log_lines();
            lines
                .iter()
                .any(|l| l.contains(r#""fault":"abort""#) && l.contains("/abort"))
                && lines
                    .iter()
                    .any(|l| l.contains(r#""fault":"delay""#) && l.contains("/slow"))
        })
        .await,
        "access log names the faults"
    );
}

/// Bad `fault` and `hash_policy` sections are refused with their path.
#[test]
fn bad_fault_and_hash_policy_sections_are_refused() {
    let up = refused();
    for (route, path, words) in [
        (
            "{ name: r, cluster: app, fault: { abort: { status: 700 } } }",
            "routes[0].fault.abort.status",
            "between 200 and 599",
        ),
        (
            "{ name: r, cluster: app, fault: { delay: { fixed: 1s, percent: 150 } } }",
            "routes[0].fault.delay.percent",
            "between 0 and 100",
        ),
        (
            "{ name: r, cluster: app, fault: { delay: { fixed: 0s } } }",
            "routes[0].fault.delay.fixed",
            "more than 0",
        ),
        (
            "{ name: r, cluster: app, fault: {} }",
            "routes[0].fault",
            "delay, abort",
        ),
        (
            "{ name: r, direct_response: { status: 200 }, fault: { abort: { status: 500 } } }",
            "routes[0].fault",
            "answers itself",
        ),
        (
            "{ name: r, cluster: app, hash_policy: [ { header: x-a, cookie: b } ] }",
            "routes[0].hash_policy[0]",
            "exactly one",
        ),
        (
            "{ name: r, cluster: app, hash_policy: [ { header: x-a }, { header: \"bad name\" } ] }",
            "routes[0].hash_policy[1].header",
            "not a header name",
        ),
    ] {
        refused_with(
            &format!("  - {{ name: app, lb: maglev, endpoints: [\"{up}\"] }}"),
            &format!("  - {route}"),
            path,
            words,
        );
    }
}

fn global_config(redis: SocketAddr, up: SocketAddr, failure_mode: &str) -> String {
    format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
redis: {{ address: "{redis}", timeout: 200ms, failure_mode: {failure_mode} }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: api
    cluster: app
    rate_limits:
      - name: per-tenant
        requests_per_unit: 5
        unit: minute
        key: ["header:x-tenant"]
        global: true
        response_headers: true
        overrides: [ {{ value: gold, requests_per_unit: 8 }} ]
clusters:
  - name: app
    endpoints: ["{up}"]
"#
    )
}

async fn tenant_get(sift: &Sift, tenant: &str) -> http::Response<Bytes> {
    get(sift, "/x", &[("x-tenant", tenant)]).await
}

/// Two sift replicas share one global quota in a real Redis: 5 per minute
/// per tenant in all, whichever replica a request reaches; other tenants
/// and overrides have their own; the 429 says when to come back.
#[tokio::test(flavor = "multi_thread")]
async fn global_rate_limits_are_shared_by_replicas_through_redis() {
    let redis = RedisServer::start();
    let up = checked_upstream("app", Duration::ZERO).await;
    let cfg = global_config(redis.addr, up.up.addr, "allow");
    let (one, two) = (Sift::start(&cfg), Sift::start(&cfg));
    let mut allowed = 0;
    for i in 0..12 {
        let sift = if i % 2 == 0 { &one } else { &two };
        let r = tenant_get(sift, "acme").await;
        match r.status().as_u16() {
            200 => {
                allowed += 1;
                assert_eq!(r.headers()["ratelimit-policy"], "\"per-tenant\";q=5;w=60");
                let left = format!("\"per-tenant\";r={};", 5 - allowed);
                let rl = r.headers()["ratelimit"].to_str().unwrap();
                assert!(rl.starts_with(&left), "{rl} after {allowed}");
            }
            429 => {
                assert_eq!(r.headers()["x-sift-error"], "rate-limited");
                let after: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=12).contains(&after), "one token per 12 s: {after}");
            }
            s => panic!("status {s}"),
        }
    }
    assert_eq!(allowed, 5, "5 per minute across both replicas");
    for sift in [&one, &two] {
        assert_eq!(tenant_get(sift, "acme").await.status(), 429);
    }
    // Another tenant has its own bucket; an override its own quota.
    assert_eq!(tenant_get(&two, "other").await.status(), 200);
    let gold = {
        let mut n = 0;
        for i in 0..12 {
            let sift = if i % 2 == 0 { &one } else { &two };
            if tenant_get(sift, "gold").await.status() == 200 {
                n += 1;
            }
        }
        n
    };
    assert_eq!(gold, 8);
    let denied = one
        .metric(r#"sift_ratelimit_decisions_total{decision="denied",policy="per-tenant",route="api"}"#)
        .await
        .unwrap_or(0.0)
        + two
            .metric(r#"sift_ratelimit_decisions_total{decision="denied",policy="per-tenant",route="api"}"#)
            .await
            .unwrap_or(0.0);
    assert_eq!(denied, (7 + 2 + 4) as f64);
}

/// Redis gone: `failure_mode: allow` lets requests through and counts it;
/// `deny` answers 503 ratelimit-unavailable. Redis back: limits apply
/// again on the same sift (its connections are re-opened).
#[tokio::test(flavor = "multi_thread")]
async fn global_rate_limits_follow_failure_mode_when_redis_is_down() {
    let mut redis = RedisServer::start();
    let addr = redis.addr;
    let up = checked_upstream("app", Duration::ZERO).await;
    let open = Sift::start(&global_config(addr, up.up.addr, "allow"));
    let closed = Sift::start(&global_config(addr, up.up.addr, "deny"));
    assert_eq!(tenant_get(&open, "t").await.status(), 200);
    assert_eq!(tenant_get(&closed, "t").await.status(), 200);
    redis.stop();
    for _ in 0..8 {
        assert_eq!(tenant_get(&open, "t").await.status(), 200, "fail open");
        let r = tenant_get(&closed, "t").await;
        assert_eq!(r.status(), 503, "fail closed");
        assert_eq!(r.headers()["x-sift-error"], "ratelimit-unavailable");
    }
    let errors = |action: &str| {
        format!(r#"sift_ratelimit_redis_errors_total{{action="{action}",reason="connection"}}"#)
    };
    assert_eq!(open.metric(&errors("allowed")).await, Some(8.0));
    assert_eq!(closed.metric(&errors("denied")).await, Some(8.0));
    // A new redis-server on the same port: counting starts again.
    let _again = RedisServer::spawn(addr.port(), &["--port", &addr.port().to_string()]);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(tenant_get(&closed, "t").await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
}

/// A global limit needs the top-level `redis`.
#[test]
fn a_global_limit_without_redis_is_refused() {
    refused_with(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", refused()),
        "  - { name: r, cluster: app, rate_limits: [ { name: g, requests_per_unit: 1, unit: second, global: true } ] }",
        "routes[0].rate_limits[0].global",
        "no top-level `redis`",
    );
}

/// `source_ips`: allow and deny ranges on the client IP (trusted
/// X-Forwarded-For hops applied) or on the TCP peer.
#[tokio::test(flavor = "multi_thread")]
async fn source_ips_allow_and_deny_client_addresses() {
    let up = checked_upstream("app", Duration::ZERO).await;
    let sift = Sift::start(&config(
        &format!("  - name: app\n    endpoints: [\"{}\"]", up.up.addr),
        r#"  - name: internal
    match: { path: { prefix: /internal } }
    cluster: app
    source_ips: { allow: [10.0.0.0/8, "2001:db8::/32"] }
  - name: peer
    match: { path: { prefix: /peer } }
    cluster: app
    source_ips: { allow: [127.0.0.0/8], address: peer }
  - name: open
    cluster: app
    source_ips: { deny: [192.0.2.0/24] }"#,
    ));
    let status = |path: &'static str, xff: Option<&'static str>| {
        let sift = &sift;
        async move {
            let h: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
            let r = get(sift, path, &h).await;
            let e = r
                .headers()
                .get("x-sift-error")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), e)
        }
    };
    let denied = (403, Some("source-denied".to_string()));
    assert_eq!(status("/internal", Some("10.1.2.3")).await, (200, None));
    assert_eq!(status("/internal", Some("2001:db8::7")).await, (200, None));
    assert_eq!(status("/internal", Some("192.0.2.1")).await, denied);
    assert_eq!(
        status("/internal", None).await,
        denied,
        "the peer 127.0.0.1"
    );
    assert_eq!(status("/internal", Some("not-an-ip")).await, denied);
    assert_eq!(status("/peer", Some("192.0.2.1")).await, (200, None));
    assert_eq!(status("/x", Some("192.0.2.9")).await, denied);
    assert_eq!(status("/x", Some("198.51.100.1")).await, (200, None));
    assert_eq!(status("/x", None).await, (200, None));
    assert_eq!(
        sift.metric(r#"sift_errors_total{kind="source-denied"}"#)
            .await,
        Some(4.0)
    );
    for (route, path, words) in [
        (
            "{ name: r, cluster: app, source_ips: { allow: [10.0.0.1/8] } }",
            "routes[0].source_ips.allow[0]",
            "bits set past its prefix",
        ),
        (
            "{ name: r, cluster: app, source_ips: { deny: [nope] } }",
            "routes[0].source_ips.deny[0]",
            "not an IP address",
        ),
        (
            "{ name: r, cluster: app, source_ips: {} }",
            "routes[0].source_ips",
            "allow, deny",
        ),
    ] {
        refused_with(
            &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.up.addr),
            &format!("  - {route}"),
            path,
            words,
        );
    }
}

fn one_lane_config(redis: SocketAddr, up: SocketAddr, extra: &str) -> String {
    format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
redis: {{ address: "{redis}", max_connections: 1, timeout: 300ms, {extra} }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: api
    cluster: app
    rate_limits:
      - {{ name: per-tenant, requests_per_unit: 1, unit: minute, key: ["header:x-tenant"], global: true }}
clusters:
  - name: app
    endpoints: ["{up}"]
"#
    )
}

/// One pipelined connection carries 150 requests at once: each gets its
/// own answer (tenants 0..49 ask twice and get one 200 and one 429 each,
/// tenants 50..99 ask once and get 200).
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_redis_answers_reach_their_own_requests() {
    let redis = RedisServer::start();
    let up = checked_upstream("app", Duration::ZERO).await;
    let sift = Sift::start(&one_lane_config(
        redis.addr,
        up.up.addr,
        "failure_mode: deny",
    ));
    let mut tasks = Vec::new();
    for t in 0..100 {
        for _ in 0..(if t < 50 { 2 } else { 1 }) {
            let url = sift.url("/x");
            tasks.push((
                t,
                tokio::spawn(async move {
                    let r = send(
                        Request::get(url)
                            .header("x-tenant", format!("t{t}"))
                            .body(body::empty())
                            .unwrap(),
                    )
                    .await;
                    r.status().as_u16()
                }),
            ));
        }
    }
    let mut per: std::collections::BTreeMap<u32, Vec<u16>> = Default::default();
    for (t, h) in tasks {
        per.entry(t).or_default().push(h.await.unwrap());
    }
    for (t, mut codes) in per {
        codes.sort_unstable();
        let want: &[u16] = if t < 50 { &[200, 429] } else { &[200] };
        assert_eq!(codes, want, "tenant t{t}");
    }
}

/// A Redis that accepts and never answers: each check gives up after
/// `timeout`, then `failure_mode` decides, and the counter says timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_redis_times_out_into_the_failure_mode() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let up = checked_upstream("app", Duration::ZERO).await;
    let deny = Sift::start(&one_lane_config(addr, up.up.addr, "failure_mode: deny"));
    let allow = Sift::start(&one_lane_config(addr, up.up.addr, "failure_mode: allow"));
    let t = std::time::Instant::now();
    let r = send(
        Request::get(deny.url("/x"))
            .header("x-tenant", "a")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "waited the timeout"
    );
    let r = send(
        Request::get(allow.url("/x"))
            .header("x-tenant", "a")
            .body(body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        deny.metric(r#"sift_ratelimit_redis_errors_total{action="denied",reason="timeout"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        allow
            .metric(r#"sift_ratelimit_redis_errors_total{action="allowed",reason="timeout"}"#)
            .await,
        Some(1.0)
    );
}

/// gRPC retry conditions: a trailers-only answer whose `grpc-status` the
/// route names (`unavailable`) is retried on another try; one it does not
/// name passes through. gRPC calls are POSTs: `non_idempotent: true`.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_status_answers_are_retried_when_named() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let up = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let c = c.clone();
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let status = if req.uri().path().ends_with("/Internal") {
                "13"
            } else if n % 2 == 0 {
                "14"
            } else {
                "0"
            };
            let mut r = text_response(200, "");
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            r.headers_mut()
                .insert("grpc-status", status.parse().unwrap());
            r
        }
    })
    .await;
    let sift = Sift::start(&config(
        &format!(
            "  - {{ name: app, protocol: http2, endpoints: [\"{}\"] }}",
            up.addr
        ),
        r#"  - name: grpc
    cluster: app
    retries: { attempts: 2, on: [unavailable, resource-exhausted], non_idempotent: true, backoff_base: 1ms }"#,
    ));
    let call = |method: &'static str| {
        let url = sift.url(&format!("/pkg.Svc/{method}"));
        async move {
            let req = Request::post(url)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(body::empty())
                .unwrap();
            let r = http2_client().request(req).await.unwrap();
            r.headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string())
        }
    };
    assert_eq!(
        call("Get").await.as_deref(),
        Some("0"),
        "14 retried, then OK"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        call("Internal").await.as_deref(),
        Some("13"),
        "not named: passed on"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        sift.metric(r#"sift_retries_total{cluster="app",outcome="retried"}"#)
            .await,
        Some(1.0)
    );
    refused_with(
        &format!("  - {{ name: app, endpoints: [\"{}\"] }}", up.addr),
        "  - { name: r, cluster: app, retries: { on: [unavaliable] } }",
        "routes[0].retries.on[0]",
        "gRPC condition",
    );
}

/// Outlier detection reads a gRPC call's status: an endpoint whose calls
/// fail UNAVAILABLE in their trailers (HTTP 200) is ejected, as Linkerd's
/// failure accrual treats gRPC failures.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_failures_in_trailers_eject_the_endpoint() {
    let grpc = |code: &'static str| {
        Upstream::start(
            move |_req: Request<hyper::body::Incoming>| async move { grpc_answer(code) },
        )
    };
    let (bad, good) = (grpc("14").await, grpc("0").await);
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: app
    protocol: http2
    endpoints: ["{}", "{}"]
    outlier_detection: {{ consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 50 }}"#,
            bad.addr, good.addr
        ),
        "  - { name: grpc, cluster: app }",
    ));
    let call = || {
        let url = sift.url("/pkg.Svc/Get");
        async move {
            let req = Request::post(url)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(body::empty())
                .unwrap();
            let r = http2_client().request(req).await.unwrap();
            let (_, b) = r.into_parts();
            let c = http_body_util::BodyExt::collect(b).await.unwrap();
            c.trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_string())
        }
    };
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(call().await);
    }
    assert!(
        codes.iter().any(|c| c.as_deref() == Some("14")),
        "{codes:?}"
    );
    assert!(
        sift.metric_reaches(
            r#"sift_outlier_ejections_total{cluster="app"}"#,
            1.0,
            Duration::from_secs(3)
        )
        .await,
        "the failing endpoint is ejected"
    );
    for _ in 0..10 {
        assert_eq!(
            call().await.as_deref(),
            Some("0"),
            "only the good endpoint now"
        );
    }
}

/// Weighted endpoints: round robin gives each its weight's share of every
/// cycle (3 and 1: exactly 30 and 10 of 40), interleaved; a weight out of
/// range is refused.
#[tokio::test(flavor = "multi_thread")]
async fn weighted_endpoints_share_round_robin_by_weight() {
    let a = checked_upstream("a", Duration::ZERO).await;
    let b = checked_upstream("b", Duration::ZERO).await;
    let sift = Sift::start(&config(
        &format!(
            "  - {{ name: app, endpoints: [ {{ address: \"{}\", weight: 3 }}, \"{}\" ] }}",
            a.up.addr, b.up.addr
        ),
        "  - { name: api, cluster: app }",
    ));
    let got = answers(&sift, "/x", 40).await;
    assert_eq!(got.iter().filter(|x| *x == "a").count(), 30, "{got:?}");
    assert_eq!(got.iter().filter(|x| *x == "b").count(), 10, "{got:?}");
    // Interleaved: never more than three a's in a row.
    assert!(
        !got.windows(4).any(|w| w.iter().all(|x| x == "a")),
        "{got:?}"
    );
    refused_with(
        &format!(
            "  - {{ name: app, endpoints: [ {{ address: \"{}\", weight: 0 }} ] }}",
            a.up.addr
        ),
        "  - { name: api, cluster: app }",
        "clusters[0].endpoints[0].weight",
        "between 1 and 1000",
    );
}

/// `external_auth`: an authorization service on loopback decides; its 2xx
/// lets the request through with the headers it grants, anything else is
/// the client's answer; no answer is `status_on_error` or, with
/// `failure_mode_allow`, a pass.
#[tokio::test(flavor = "multi_thread")]
async fn external_auth_admits_on_2xx_and_relays_denials() {
    let seen: Arc<std::sync::Mutex<Vec<http::request::Parts>>> = Arc::default();
    let log = seen.clone();
    let auth = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let (parts, _) = req.into_parts();
            let token = parts
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            log.lock().unwrap().push(parts);
            match token.as_str() {
                "Bearer good" => http::Response::builder()
                    .status(200)
                    .header("x-auth-user", "ann")
                    .header("x-auth-request-user", "ann")
                    .header("x-auth-request-email", "ann@example.com")
                    .header("set-cookie", "session=1; HttpOnly")
                    .header("x-internal", "not for anyone")
                    .body(full("ok"))
                    .unwrap(),
                "Bearer slow" => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    text_response(200, "late")
                }
                "Bearer huge" => http::Response::builder()
                    .status(401)
                    .body(full(vec![b'x'; 100 * 1024]))
                    .unwrap(),
                "Bearer login" => http::Response::builder()
                    .status(302)
                    .header("location", "https://login.example/start")
                    .body(full(""))
                    .unwrap(),
                _ => http::Response::builder()
                    .status(401)
                    .header("www-authenticate", "Bearer realm=\"app\"")
                    .header("content-type", "text/plain")
                    .body(full("who are you?\n"))
                    .unwrap(),
            }
        }
    })
    .await;
    let app = Upstream::echo("app").await;
    let refusing = refused_port();
    let dead = refusing.addr.port();
    let cfg = config(
        &format!(
            r#"  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: auth, endpoints: ["{}"] }}
  - {{ name: gone, endpoints: ["127.0.0.1:{dead}"] }}"#,
            app.addr, auth.addr
        ),
        r#"  - name: guarded
    match: { path: { prefix: /app } }
    cluster: app
    external_auth:
      cluster: auth
      path: /verify
      timeout: 300ms
      upstream_headers: [x-auth-user]
      client_headers_on_success: [set-cookie]
  - name: prefixed
    match: { path: { prefix: /pre } }
    cluster: app
    external_auth:
      cluster: auth
      path_prefix: /check
      upstream_headers: ["x-auth-request-*"]
  - name: closed
    match: { path: { prefix: /closed } }
    cluster: app
    external_auth: { cluster: gone, status_on_error: 503 }
  - name: open
    match: { path: { prefix: /open } }
    cluster: app
    external_auth: { cluster: gone, failure_mode_allow: true }"#,
    );
    let sift = Sift::start(&cfg);
    let ask = |path: &str, token: Option<&str>, forged: bool| {
        let mut b = Request::post(sift.url(path)).header("x-forwarded-for", "203.0.113.9");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if forged {
            b = b.header("x-auth-user", "root");
        }
        b.body(full("payload")).unwrap()
    };

    // Admitted: the app gets the granted header (not the forged one), the
    // client the granted cookie and nothing else of the service's.
    let r = send(ask("/app/x?q=1", Some("good"), true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["set-cookie"], "session=1; HttpOnly");
    assert!(r.headers().get("x-internal").is_none());
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["name"], "app");
    assert_eq!(v["headers"]["x-auth-user"], serde_json::json!(["ann"]));
    assert_eq!(v["body_len"], 7, "the body still reaches the app");
    // What the service was asked.
    {
        let seen = seen.lock().unwrap();
        let p = seen.last().unwrap();
        assert_eq!(p.method, http::Method::GET);
        assert_eq!(p.uri.path(), "/verify");
        let h = |n: &str| p.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h("authorization").as_deref(), Some("Bearer good"));
        assert_eq!(h("x-forwarded-method").as_deref(), Some("POST"));
        assert_eq!(h("x-forwarded-uri").as_deref(), Some("/app/x?q=1"));
        assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(h("x-forwarded-for").as_deref(), Some("203.0.113.9"));
        let fh = h("x-forwarded-host");
        assert_eq!(
            fh,
            Some(sift.addr().to_string()),
            "the Host as the client sent it"
        );
        assert!(h("x-request-id").is_some());
        assert!(p.headers.get("content-length").is_none_or(|v| v == "0"));
    }

    // A prefix pattern and a path prefix: every x-auth-request-* of the
    // answer, none of the client's; the check's path is /check + the path.
    let mut req = ask("/pre/y?z=2", Some("good"), false);
    req.headers_mut()
        .insert("x-auth-request-groups", "admins".parse().unwrap());
    let r = send(req).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(
        v["headers"]["x-auth-request-user"],
        serde_json::json!(["ann"])
    );
    assert_eq!(
        v["headers"]["x-auth-request-email"],
        serde_json::json!(["ann@example.com"])
    );
    assert!(
        v["headers"].get("x-auth-request-groups").is_none(),
        "forged: dropped"
    );
    assert!(
        v["headers"].get("x-auth-user").is_none(),
        "not in the pattern"
    );
    assert_eq!(
        seen.lock()
            .unwrap()
            .last()
            .unwrap()
            .uri
            .path_and_query()
            .unwrap()
            .as_str(),
        "/check/pre/y?z=2"
    );

    // Denied: the service's status, headers and body; the app never sees it.
    let before = app.requests.load(Ordering::Relaxed);
    let r = send(ask("/app/x", None, false)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"app\"");
    assert_eq!(r.headers()["x-sift-error"], "auth-denied");
    assert_eq!(&r.body()[..], b"who are you?\n");
    let r = send(ask("/app/x", Some("login"), false)).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://login.example/start");
    // A denial body past 64 KiB is not relayed cut short: no answer.
    let r = send(ask("/app/x", Some("huge"), false)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sift-error"], "auth-unavailable");
    // No answer in time: status_on_error's default 403.
    let r = send(ask("/app/x", Some("slow"), false)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sift-error"], "auth-unavailable");
    assert_eq!(
        app.requests.load(Ordering::Relaxed),
        before,
        "none reached the app"
    );

    // A service that is not there: 503 (closed) or a pass (open).
    let r = send(ask("/closed", Some("good"), false)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sift-error"], "auth-unavailable");
    let r = send(ask("/open", Some("good"), false)).await;
    assert_eq!(r.status(), 200);

    for (route, result, n) in [
        ("guarded", "allowed", 1.0),
        ("guarded", "denied", 2.0),
        ("guarded", "error_denied", 2.0),
        ("closed", "error_denied", 1.0),
        ("open", "error_allowed", 1.0),
    ] {
        assert_eq!(
            sift.metric(&format!(
                r#"sift_external_auth_total{{route="{route}",result="{result}"}}"#
            ))
            .await,
            Some(n),
            "{route} {result}"
        );
    }
}

mod grpc_auth {
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue as PbHv, HeaderValueOption};
    use envoy_types::pb::envoy::service::auth::v3::{
        CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
        authorization_server::{Authorization, AuthorizationServer},
        check_response::HttpResponse,
    };
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub struct Opa {
        pub seen: Arc<Mutex<Vec<CheckRequest>>>,
    }

    fn hv(k: &str, v: &str) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(PbHv {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl Authorization for Opa {
        async fn check(
            &self,
            r: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            let r = r.into_inner();
            self.seen.lock().unwrap().push(r.clone());
            let http = r
                .attributes
                .and_then(|a| a.request)
                .and_then(|r| r.http)
                .unwrap_or_default();
            let token = http
                .headers
                .get("authorization")
                .cloned()
                .unwrap_or_default();
            let resp = match token.as_str() {
                "Bearer good" => CheckResponse {
                    status: Some(RpcStatus::default()),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                        headers: vec![hv("x-auth-user", "ann")],
                        headers_to_remove: vec!["x-drop".into()],
                        response_headers_to_add: vec![hv("x-auth-note", "checked")],
                        ..Default::default()
                    })),
                    dynamic_metadata: None,
                },
                "Bearer no" => CheckResponse {
                    status: Some(RpcStatus {
                        code: 7,
                        ..Default::default()
                    }),
                    http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                        status: Some(HttpStatus { code: 401 }),
                        headers: vec![hv("www-authenticate", "Bearer")],
                        body: "no entry\n".into(),
                    })),
                    dynamic_metadata: None,
                },
                "Bearer broken" => return Err(tonic::Status::internal("policy failed")),
                _ => CheckResponse {
                    status: Some(RpcStatus {
                        code: 7,
                        ..Default::default()
                    }),
                    http_response: None,
                    dynamic_metadata: None,
                },
            };
            Ok(tonic::Response::new(resp))
        }
    }

    /// The service on a hyper HTTP/2 server on 127.0.0.1:0.
    pub async fn start(opa: Opa) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        use tonic::codegen::Service;
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let svc = AuthorizationServer::new(opa);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                let svc = svc.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let mut s = svc.clone();
                            async move { s.call(req).await }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        (addr, task)
    }
}

/// `external_auth` with `protocol: grpc`: Envoy's Authorization/Check
/// asked of a gRPC service on loopback (as OPA's Envoy plugin serves it).
#[tokio::test(flavor = "multi_thread")]
async fn external_auth_over_grpc_speaks_envoys_check() {
    let opa = grpc_auth::Opa::default();
    let (auth_addr, _task) = grpc_auth::start(opa.clone()).await;
    let app = Upstream::echo("app").await;
    let cfg = config(
        &format!(
            r#"  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: opa, endpoints: ["{auth_addr}"], protocol: http2 }}"#,
            app.addr
        ),
        r#"  - name: guarded
    cluster: app
    external_auth:
      cluster: opa
      protocol: grpc
      context_extensions: { app: inbox }
      upstream_headers: [x-auth-user]"#,
    );
    let sift = Sift::start(&cfg);
    let ask = |token: &str| {
        Request::get(sift.url("/mail?box=1"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-forwarded-for", "198.51.100.4")
            .header("x-auth-user", "root")
            .header("x-drop", "secret")
            .body(full(""))
            .unwrap()
    };
    let r = send(ask("good")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-note"], "checked");
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["headers"]["x-auth-user"], serde_json::json!(["ann"]));
    assert!(v["headers"].get("x-drop").is_none(), "headers_to_remove");
    {
        let seen = opa.seen.lock().unwrap();
        let a = seen.last().unwrap().attributes.clone().unwrap();
        assert_eq!(
            a.context_extensions.get("app").map(String::as_str),
            Some("inbox")
        );
        let http = a.request.unwrap().http.unwrap();
        assert_eq!(
            (http.method.as_str(), http.path.as_str()),
            ("GET", "/mail?box=1")
        );
        assert_eq!(
            http.headers.get(":path").map(String::as_str),
            Some("/mail?box=1")
        );
        assert_eq!(http.scheme, "http");
        let src = a.source.unwrap().address.unwrap().address.unwrap();
        let envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa) = src
        else {
            panic!("not a socket address")
        };
        assert_eq!(sa.address, "198.51.100.4");
    }
    let r = send(ask("no")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(r.headers()["x-sift-error"], "auth-denied");
    assert_eq!(&r.body()[..], b"no entry\n");
    let r = send(ask("other")).await;
    assert_eq!(r.status(), 403, "a refusal without an answer: 403");
    let r = send(ask("broken")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sift-error"], "auth-unavailable");
    assert_eq!(
        app.requests.load(Ordering::Relaxed),
        1,
        "only the allowed one"
    );
}

/// `slow_start`: an endpoint a reload adds gets a small share at first,
/// the endpoints the cluster had keep theirs.
#[tokio::test(flavor = "multi_thread")]
async fn slow_start_ramps_an_endpoint_a_reload_adds() {
    let (a, b, c) = (
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    );
    let cfg = |eps: &str| {
        config(
            &format!(
                "  - {{ name: app, endpoints: [{eps}], slow_start: {{ window: 10m, min_weight_percent: 10 }} }}"
            ),
            "  - { name: r, cluster: app }",
        )
    };
    let two = format!("\"{}\", \"{}\"", a.addr, b.addr);
    let three = format!("{two}, \"{}\"", c.addr);
    let sift = Sift::start(&cfg(&two));
    sift.write_config(&cfg(&three));
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..300 {
        let (status, body) = get_text(&sift.url("/")).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        *counts
            .entry(v["name"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    // Without slow start c would get about 100 of 300; at 10 % of a full
    // endpoint's share it gets about 15.
    assert!(n("c") > 0 && n("c") < 50, "{counts:?}");
    assert!(
        n("a") > 100 && n("b") > 100,
        "the old endpoints are not ramping: {counts:?}"
    );
    // The admin view shows each endpoint's share factor.
    let v: serde_json::Value =
        serde_json::from_str(&get_text(&sift.admin_url("/clusters")).await.1).unwrap();
    let factors: Vec<f64> = v["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["slow_start_factor"].as_f64().unwrap())
        .collect();
    assert_eq!(factors.len(), 3);
    assert_eq!((factors[0], factors[1]), (1.0, 1.0));
    assert!((0.1..0.2).contains(&factors[2]), "{factors:?}");
}

/// A reload that changes a cluster (an endpoint added) keeps the idle
/// connections to the endpoints it still has: no new connection to them.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_cluster_keeps_its_idle_connections() {
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let cfg = |eps: &str| {
        config(
            &format!("  - {{ name: app, endpoints: [{eps}] }}"),
            "  - { name: r, cluster: app }",
        )
    };
    let sift = Sift::start(&cfg(&format!("\"{}\"", a.addr)));
    for _ in 0..3 {
        assert_eq!(get_text(&sift.url("/")).await.0, 200);
    }
    assert_eq!(a.connections.load(Ordering::Relaxed), 1, "keep-alive");
    sift.write_config(&cfg(&format!("\"{}\", \"{}\"", a.addr, b.addr)));
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    for _ in 0..6 {
        assert_eq!(get_text(&sift.url("/")).await.0, 200);
    }
    assert!(
        b.requests.load(Ordering::Relaxed) > 0,
        "the new endpoint serves"
    );
    assert_eq!(
        a.connections.load(Ordering::Relaxed),
        1,
        "a's idle connection went over to the rebuilt cluster"
    );
}

/// Endpoint priorities (Envoy's priority levels): level 0 serves while
/// healthy enough, its load spills to level 1 as it fails health checks
/// (× 1.4 overprovisioning), and comes back when it recovers.
#[tokio::test(flavor = "multi_thread")]
async fn priority_levels_fail_over_by_health_and_come_back() {
    let a = checked_upstream("a", Duration::ZERO).await;
    let b = checked_upstream("b", Duration::ZERO).await;
    let backup = checked_upstream("backup", Duration::ZERO).await;
    let sift = Sift::start(&config(
        &format!(
            r#"  - name: app
    endpoints:
      - "{}"
      - "{}"
      - {{ address: "{}", priority: 1 }}
    health_check: {{ path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1 }}"#,
            a.up.addr, b.up.addr, backup.up.addr
        ),
        "  - { name: api, cluster: app }",
    ));
    assert!(sift_probed(&sift, "app", "success", 3.0).await);
    let tally = |got: Vec<String>| {
        let mut m = std::collections::BTreeMap::new();
        for g in got {
            *m.entry(g).or_insert(0usize) += 1;
        }
        m
    };
    let got = tally(answers(&sift, "/x", 40).await);
    assert_eq!(got.get("backup"), None, "level 0 healthy: {got:?}");
    assert_eq!(got.get("a"), Some(&20), "{got:?}");
    let v = clusters_json(&sift).await;
    assert_eq!(v["clusters"][0]["priority_load"]["0"], 100.0, "{v}");
    assert_eq!(v["clusters"][0]["endpoints"][2]["priority"], 1, "{v}");

    // a fails: level 0 is 50 % healthy, 70 % of the load; 30 % spills.
    a.health.store(503, Ordering::SeqCst);
    let spilled = eventually(Duration::from_secs(5), || async {
        sift.metric(r#"sift_cluster_priority_load{cluster="app",priority="1"}"#)
            .await
            == Some(30.0)
    })
    .await;
    assert!(spilled, "{:?}", clusters_json(&sift).await);
    let got = tally(answers(&sift, "/x", 400).await);
    let to_backup = *got.get("backup").unwrap_or(&0);
    assert!((80..=160).contains(&to_backup), "about 120 of 400: {got:?}");
    assert_eq!(got.get("a"), None, "{got:?}");
    assert_eq!(got.values().sum::<usize>(), 400, "{got:?}");

    // b fails too: everything to the backup.
    b.health.store(503, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(r#"sift_cluster_priority_load{cluster="app",priority="1"}"#)
                .await
                == Some(100.0)
        })
        .await
    );
    assert_eq!(answers(&sift, "/x", 20).await, vec!["backup"; 20]);
    assert_eq!(
        sift.metric(r#"sift_lb_panic_total{cluster="app"}"#).await,
        Some(0.0),
        "1 of 3 endpoints healthy is failover, not panic"
    );

    // Both recover: level 0 takes everything again.
    a.health.store(200, Ordering::SeqCst);
    b.health.store(200, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(r#"sift_cluster_priority_load{cluster="app",priority="0"}"#)
                .await
                == Some(100.0)
        })
        .await
    );
    let got = tally(answers(&sift, "/x", 20).await);
    assert_eq!(got.get("backup"), None, "{got:?}");
}

#[test]
fn priorities_are_checked() {
    refused_with(
        r#"  - { name: app, endpoints: [ { address: "127.0.0.1:1", priority: 128 } ] }"#,
        "  - { name: api, cluster: app }",
        "clusters[0].endpoints[0].priority",
        "128 is not between 0 and 127",
    );
    refused_with(
        r#"  - { name: app, endpoints: ["127.0.0.1:1"], overprovisioning_factor: 140 }"#,
        "  - { name: api, cluster: app }",
        "clusters[0].overprovisioning_factor",
        "only applies when endpoints have priorities",
    );
    refused_with(
        r#"  - { name: app, endpoints: ["127.0.0.1:1", { address: "127.0.0.1:2", priority: 1 }], overprovisioning_factor: 90 }"#,
        "  - { name: api, cluster: app }",
        "clusters[0].overprovisioning_factor",
        "90 is not between 100 and 1000",
    );
}

/// gRPC-Web (Envoy's grpc_web filter): a browser-style call (HTTP/1.1,
/// `application/grpc-web+proto` and `-text`) to a real tonic gRPC service
/// behind an http2 cluster; answers come back with the trailers as the
/// body's last frame.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_web_calls_reach_a_grpc_service_and_come_back() {
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context::HttpRequest,
        attribute_context::Request as AttrRequest, check_response::HttpResponse,
    };
    use prost::Message;
    let opa = grpc_auth::Opa::default();
    let (auth_addr, _task) = grpc_auth::start(opa.clone()).await;
    let cfg = config(
        &format!(
            r#"  - {{ name: authz, endpoints: ["{auth_addr}"], protocol: http2 }}
  - {{ name: nowhere, endpoints: [], protocol: http2 }}"#
        ),
        r#"  - { name: web, match: { path: { prefix: /envoy.service.auth.v3.Authorization/ } }, cluster: authz, grpc_web: true }
  - { name: down, match: { path: { prefix: /down/ } }, cluster: nowhere, grpc_web: true }
  - { name: limited, match: { path: { prefix: /limited/ } }, cluster: authz, grpc_web: true, rate_limits: [ { name: once, requests_per_unit: 1, unit: minute } ] }"#,
    );
    let sift = Sift::start(&cfg);
    let request = |token: &str| {
        let mut http = HttpRequest::default();
        http.headers.insert("authorization".into(), token.into());
        let msg = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(http),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        frame
    };
    let b64 = base64;
    let unb64 = |s: &[u8]| {
        let v = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        for g in s.chunks(4) {
            let pad = g.iter().filter(|&&c| c == b'=').count();
            let x = g.iter().fold(0u32, |a, &c| {
                (a << 6) | if c == b'=' { 0 } else { u32::from(v(c)) }
            });
            let bytes = [(x >> 16) as u8, (x >> 8) as u8, x as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        out
    };
    let base = sift.url("");
    let call = |path: &'static str, ct: &'static str, body: Vec<u8>| {
        let url = format!("{base}{path}");
        async move {
            let r = Request::post(url)
                .header("content-type", ct)
                .header("x-grpc-web", "1")
                .body(full(body))
                .unwrap();
            send(r).await
        }
    };
    /// The frames of a gRPC-Web body: (flag, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 5 {
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            out.push((b[0], b[5..5 + len].to_vec()));
            b = &b[5 + len..];
        }
        assert!(b.is_empty(), "a partial frame");
        out
    }
    let path = "/envoy.service.auth.v3.Authorization/Check";

    // Binary: a message frame, then the trailers frame.
    let r = call(path, "application/grpc-web+proto", request("Bearer good")).await;
    assert_eq!(r.status(), 200);
    // tonic answers `application/grpc`: its gRPC-Web form.
    assert_eq!(r.headers()["content-type"], "application/grpc-web");
    let f = frames(r.body());
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].0, 0);
    let answer = CheckResponse::decode(&f[0].1[..]).unwrap();
    match answer.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            assert_eq!(ok.headers[0].header.as_ref().unwrap().key, "x-auth-user")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f[1].0, 0x80);
    let trailers = String::from_utf8(f[1].1.clone()).unwrap();
    assert!(trailers.contains("grpc-status: 0\r\n"), "{trailers:?}");
    // The service saw a gRPC call with the client's token.
    let seen = opa.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);

    // Text: base64 both ways (the request's message sent in two padded
    // pieces, as clients that encode per message do).
    let raw = request("Bearer good");
    let (a, b) = raw.split_at(4);
    let text = format!("{}{}", b64(a), b64(b));
    let r = call(path, "application/grpc-web-text", text.into_bytes()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/grpc-web-text");
    let f = frames(&unb64(r.body()));
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(CheckResponse::decode(&f[0].1[..]).is_ok());
    assert!(String::from_utf8_lossy(&f[1].1).contains("grpc-status: 0"));

    // The service fails the call: gRPC's trailers-only answer, its status
    // in the head, nothing in the body.
    let r = call(path, "application/grpc-web+proto", request("Bearer broken")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "13");
    assert_eq!(r.headers()["content-type"], "application/grpc-web");
    assert!(r.body().is_empty(), "{:?}", r.body());

    // sift's own error (no endpoint) as a gRPC status a gRPC-Web client reads.
    let r = call(
        "/down/x",
        "application/grpc-web+proto",
        request("Bearer good"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "14");
    assert_eq!(r.headers()["content-type"], "application/grpc-web");

    // An answer sift gives before forwarding (a rate limit) is a gRPC
    // answer too.
    let _ = call(
        "/limited/x",
        "application/grpc-web+proto",
        request("Bearer good"),
    )
    .await;
    let r = call(
        "/limited/x",
        "application/grpc-web+proto",
        request("Bearer good"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sift-error"], "rate-limited");
    assert_eq!(r.headers()["grpc-status"], "14");
    assert_eq!(r.headers()["content-type"], "application/grpc-web");

    // Text that is not base64: the client's fault, nothing reaches the service.
    let before = opa.seen.lock().unwrap().len();
    let r = call(path, "application/grpc-web-text", b"not base64!".to_vec()).await;
    assert_eq!(r.headers()["x-sift-error"], "client-body-error");
    assert_eq!(r.headers()["grpc-status"], "13");
    assert_eq!(opa.seen.lock().unwrap().len(), before);

    // The access log has the call's gRPC status.
    let lines = sift.log_lines().join("\n");
    assert!(lines.contains(r#""grpc_status":"0""#), "{lines}");
}

#[test]
fn grpc_web_needs_an_http2_cluster() {
    refused_with(
        r#"  - { name: app, endpoints: ["127.0.0.1:1"] }"#,
        "  - { name: api, cluster: app, grpc_web: true }",
        "routes[0].grpc_web",
        "must be `protocol: http2`",
    );
}

/// `basic_auth` (nginx's auth_basic, Envoy's basic_auth): users from an
/// htpasswd file ($apr1$ as `htpasswd` writes by default, {SHA}), the 401
/// challenge, the user name sent upstream, the password kept from the app,
/// and the file watched.
#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_checks_htpasswd_users_and_reloads_the_file() {
    let app = Upstream::echo("app").await;
    let dir = TempDir::new();
    let file = dir.path("htpasswd");
    // `openssl passwd -apr1 -salt r31..... myPassword`; {SHA} of "secret".
    std::fs::write(
        &file,
        "ann:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\nbob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n",
    )
    .unwrap();
    let cfg = config(
        &format!(r#"  - {{ name: app, endpoints: ["{}"] }}"#, app.addr),
        &format!(
            r#"  - name: admin
    cluster: app
    basic_auth: {{ users_file: "{}", realm: admin area, forward_username_header: x-user, strip_authorization: true }}"#,
            file.display()
        ),
    )
    .replace("log: { format: json }", "log: { format: json }\nreload: { interval: 100ms }");
    let sift = Sift::start(&cfg);
    let call = |auth: Option<&str>| {
        let mut b = Request::get(sift.url("/x")).header("x-user", "forged");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        send(b.body(full("")).unwrap())
    };
    let basic =
        |user: &str, pass: &str| format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()));
    let r = call(None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-sift-error"], "basic-auth-missing");
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"admin area\", charset=\"UTF-8\""
    );
    let r = call(Some(&basic("ann", "wrong"))).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-sift-error"], "basic-auth-invalid");
    assert_eq!(
        call(Some(&basic("nobody", "myPassword"))).await.status(),
        401
    );
    assert_eq!(call(Some("Bearer x")).await.status(), 401);
    assert_eq!(
        app.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the app"
    );
    for (user, pass) in [("ann", "myPassword"), ("bob", "secret")] {
        let r = call(Some(&basic(user, pass))).await;
        assert_eq!(r.status(), 200, "{user}");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["headers"]["x-user"], serde_json::json!([user]), "{v}");
        assert!(v["headers"].get("authorization").is_none(), "{v}");
    }
    // The hashes never show in /config.
    let (_, cfg_text) = get_text(&sift.admin_url("/config")).await;
    assert!(cfg_text.contains("2 user(s) [redacted]"), "{cfg_text}");
    assert!(!cfg_text.contains("HqJZ"), "{cfg_text}");
    // A user added to the file: the watcher reloads.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("cy:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n");
    std::fs::write(&file, text).unwrap();
    let cy = basic("cy", "secret");
    assert!(
        eventually(Duration::from_secs(5), || async {
            call(Some(&cy)).await.status() == 200
        })
        .await,
        "the new user works after the file changed"
    );
    let count = |result: &'static str| {
        let m = format!(r#"sift_basic_auth_total{{route="admin",result="{result}"}}"#);
        let sift = &sift;
        async move { sift.metric(&m).await.unwrap_or(0.0) }
    };
    assert_eq!(count("ok").await, 3.0);
    assert_eq!(count("missing").await, 1.0);
    // Three refused above, and cy's tries before the reload.
    assert!(count("invalid").await >= 3.0);
}

#[test]
fn basic_auth_is_checked() {
    let app = r#"  - { name: app, endpoints: ["127.0.0.1:1"] }"#;
    refused_with(
        app,
        "  - { name: a, cluster: app, basic_auth: { users: [\"ann:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\"], users_file: /x } }",
        "routes[0].basic_auth",
        "exactly one of `users` and `users_file`",
    );
    refused_with(
        app,
        "  - { name: a, cluster: app, basic_auth: { users: [\"ann:$2y$05$abcdefghijklmnopqrstuvwxyz012345678901234567890123\"] } }",
        "routes[0].basic_auth.users",
        "bcrypt",
    );
    refused_with(
        app,
        "  - { name: a, cluster: app, basic_auth: { users_file: /nonexistent/htpasswd } }",
        "routes[0].basic_auth.users_file",
        "cannot read",
    );
    refused_with(
        app,
        "  - { name: a, cluster: app, basic_auth: { users: [\"ann:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\"], realm: 'a\"b' } }",
        "routes[0].basic_auth.realm",
        "printable characters",
    );
}

/// `external_auth.with_request_body` (Envoy's): the service sees the body
/// (HTTP: as the check's body, with `x-envoy-auth-partial-body`; gRPC: as
/// `body` or `raw_body`), the app still gets all of it; a body over the
/// limit is a 413 unless partial messages are allowed.
#[tokio::test(flavor = "multi_thread")]
async fn external_auth_sends_the_body_when_asked() {
    // What the service got: the partial-body header and the body.
    type Seen = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let auth = Upstream::start(move |req: Request<hyper::body::Incoming>| {
        let seen = s2.clone();
        async move {
            let partial = req
                .headers()
                .get("x-envoy-auth-partial-body")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes()
                .to_vec();
            let ok = body.starts_with(b"ok");
            seen.lock().unwrap().push((partial, body));
            text_response(if ok { 200 } else { 403 }, "checked")
        }
    })
    .await;
    let opa = grpc_auth::Opa::default();
    let (opa_addr, _task) = grpc_auth::start(opa.clone()).await;
    let app = Upstream::echo("app").await;
    let cfg = config(
        &format!(
            r#"  - {{ name: app, endpoints: ["{}"] }}
  - {{ name: auth, endpoints: ["{}"] }}
  - {{ name: opa, endpoints: ["{opa_addr}"], protocol: http2 }}"#,
            app.addr, auth.addr
        ),
        r#"  - name: whole
    match: { path: { prefix: /whole } }
    cluster: app
    external_auth: { cluster: auth, path: /check, method: POST, with_request_body: { max_request_bytes: 1KiB } }
  - name: part
    match: { path: { prefix: /part } }
    cluster: app
    external_auth: { cluster: auth, path: /check, method: POST, with_request_body: { max_request_bytes: 16B, allow_partial_message: true } }
  - name: grpc
    match: { path: { prefix: /grpc } }
    cluster: app
    external_auth: { cluster: opa, protocol: grpc, with_request_body: { max_request_bytes: 1KiB, pack_as_bytes: true } }"#,
    );
    let sift = Sift::start(&cfg);
    let post = |path: &str, body: Vec<u8>| {
        Request::post(sift.url(path))
            .header("authorization", "Bearer good")
            .body(full(body))
            .unwrap()
    };
    let body_len = |r: &http::Response<bytes::Bytes>| {
        serde_json::from_slice::<serde_json::Value>(r.body()).unwrap()["body_len"].clone()
    };
    // The whole body to the service, then to the app.
    let r = send(post("/whole", b"ok: hello".to_vec())).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_len(&r), 9);
    assert_eq!(
        seen.lock().unwrap().last().cloned(),
        Some(("false".to_string(), b"ok: hello".to_vec()))
    );
    // The service decides on the body.
    let r = send(post("/whole", b"no: hello".to_vec())).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sift-error"], "auth-denied");
    // Over the limit without partial messages: 413, the service not asked.
    let asked = seen.lock().unwrap().len();
    let r = send(post("/whole", [b"ok".to_vec(), vec![b'x'; 2000]].concat())).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-sift-error"], "body-too-large");
    assert_eq!(seen.lock().unwrap().len(), asked);
    // Partial: the first 16 bytes to the service, all 100 to the app.
    let big = [b"ok".to_vec(), vec![b'y'; 98]].concat();
    let r = send(post("/part", big.clone())).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_len(&r), 100);
    assert_eq!(
        seen.lock().unwrap().last().cloned(),
        Some(("true".to_string(), big[..16].to_vec()))
    );
    // gRPC: raw_body (pack_as_bytes) in the CheckRequest.
    let r = send(post("/grpc", b"\x00\x01binary".to_vec())).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_len(&r), 8);
    let http = opa.seen.lock().unwrap().last().cloned().unwrap();
    let http = http.attributes.unwrap().request.unwrap().http.unwrap();
    assert_eq!(http.raw_body, b"\x00\x01binary".to_vec());
    assert!(http.body.is_empty());
}
