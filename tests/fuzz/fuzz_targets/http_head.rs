//! The request head through the whole proxy, in process: sift's own serving
//! code (`listener::serve` → `proxy::handle`) on three plain HTTP/1.1
//! listeners on 127.0.0.1 port 0 (`escaped_slashes` keep, reject and
//! unescape, with `path_parameters` keep, reject and strip), a real loopback upstream that records what reaches it, and
//! a config whose routes use host matches (exact, wildcard), path prefix
//! and exact, methods, a header condition, a rewrite, two redirects, direct
//! responses, rate limits keyed on headers, a canary split (sticky header,
//! override header) and a spam filter in block mode reading a form field
//! and query fields.
//!
//! Input: byte 0 picks the listener; the rest is written as is on a fresh
//! connection (with a blank line appended when it has none, so that most
//! inputs are a whole head). Checks, beyond "no panic" (libfuzzer-sys
//! aborts on a panic in any thread, connection tasks included):
//! - what sift writes back is an HTTP/1.x response; sift never answers 500
//!   or another 5xx than 501-504 (the upstream only answers 200);
//! - a redirect has a Location, a direct response route its status;
//! - what reaches the upstream: an origin-form target (`/`, or `*` for
//!   OPTIONS), a path in sift's normal form (no `//`, no `.`/`..`
//!   segments, no escaped unreserved character, no bad `%`; no escaped
//!   slash unless the listener keeps them), nothing an app would read as
//!   under `/admin` (answered by sift), no `x-sift-*`, underscore or
//!   hop-by-hop header, one Host, X-Forwarded-For ending with the peer;
//!   per route (sift sets `x-route`): the host, header and path the route
//!   matched, and filter verdict headers only from sift;
//! - every 512 inputs a well-formed GET still gets its 200 and the accept
//!   loops still run.
#![no_main]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request as the upstream received it.
#[derive(Debug)]
struct Record {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
}

type Records = Arc<Mutex<Vec<Record>>>;

const MODES: [&str; 3] = ["keep", "reject", "unescape"];

struct Env {
    rt: tokio::runtime::Runtime,
    sift: [SocketAddr; 3],
    records: Records,
    serving: Vec<tokio::task::JoinHandle<()>>,
    _drain: sift::drain::Drain,
    _sigpipe: tokio::signal::unix::Signal,
    runs: AtomicU64,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn config(up: SocketAddr) -> String {
    let listener = |name: &str| {
        // Path parameters: kept where escaped slashes are kept, refused
        // where they are refused, stripped where they are decoded.
        let pp = match name {
            "keep" => "keep",
            "reject" => "reject",
            _ => "strip",
        };
        format!(
            r#"  - name: {name}
    address: "127.0.0.1:0"
    protocol: h1
    escaped_slashes: {name}
    path_parameters: {pp}
    forwarded: {{ x_forwarded_for: append, trusted_hops: 1 }}
    limits: {{ header_read_timeout: 2s, idle_timeout: 5s, max_header_bytes: 8KiB, max_headers: 64 }}
    rate_limits:
      - {{ name: per-ip, requests_per_unit: 100000000, unit: second, key: [client_ip] }}
"#
        )
    };
    let listeners: String = MODES.iter().map(|m| listener(m)).collect();
    format!(
        r#"log: {{ format: json, level: error, access_log: false }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
{listeners}filters:
  - name: spam
    kind: spam
    max_inspect_bytes: 16KiB
    max_decompressed_bytes: 64KiB
    extract: {{ form_fields: [msg], query_fields: [msg, q] }}
    header_prefix: app-spam
routes:
  - name: deny-admin
    match: {{ path: {{ prefix: /admin }} }}
    direct_response: {{ status: 403, body: "no\n" }}
  - name: health
    match: {{ path: {{ exact: /healthz }}, methods: [GET, HEAD] }}
    direct_response: {{ status: 200, body: "ok\n" }}
  - name: old-host
    match: {{ host: [old.example.com] }}
    redirect: {{ host: www.example.com, code: 301 }}
  - name: moved
    match: {{ path: {{ prefix: /old/ }} }}
    redirect: {{ prefix: /new/, code: 308 }}
  - name: gold
    match: {{ headers: [ {{ name: x-tenant, exact: gold }} ] }}
    cluster: app
    request_headers: {{ set: {{ x-route: gold }} }}
    rate_limits:
      - {{ name: tenant, requests_per_unit: 100000000, unit: second, key: [header:x-tenant, client_ip] }}
  - name: api
    match: {{ host: [api.example.com, "*.api.example.com"], path: {{ prefix: /v1 }}, methods: [GET, POST, PUT] }}
    cluster: app
    request_headers: {{ set: {{ x-route: api }} }}
  - name: docs
    match: {{ path: {{ prefix: /docs }} }}
    cluster: app
    rewrite: {{ prefix: /static }}
    request_headers: {{ set: {{ x-route: docs }} }}
  - name: contact
    match: {{ path: {{ prefix: /contact }} }}
    cluster: app
    max_request_body: 64KiB
    filters: [ {{ filter: spam, mode: block }} ]
    request_headers: {{ set: {{ x-route: contact }} }}
  - name: limited
    match: {{ path: {{ prefix: /limited }} }}
    cluster: app
    rate_limits:
      - {{ name: lim, requests_per_unit: 20, unit: second, key: [header:x-user] }}
    request_headers: {{ set: {{ x-route: limited }} }}
  - name: default
    clusters:
      - {{ name: app, weight: 80 }}
      - {{ name: app2, weight: 20 }}
    canary:
      stable: app
      canary: app2
      sticky: {{ header: x-user }}
      override: {{ header: x-sift-canary }}
      version_header: x-version
    request_headers: {{ set: {{ x-route: default }} }}
clusters:
  - name: app
    endpoints: ["{up}"]
  - name: app2
    endpoints: ["{up}"]
"#
    )
}

/// The upstream: records each request, answers 200 "up".
async fn upstream(records: Records) -> SocketAddr {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = tcp.local_addr().expect("upstream address");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let records = records.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let r = Record {
                        method: req.method().to_string(),
                        target: req.uri().to_string(),
                        headers: req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                            .collect(),
                    };
                    records.lock().unwrap().push(r);
                    async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"up",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // libFuzzer's main is not Rust's, which ignores SIGPIPE: without
        // this, a write to a connection the peer closed (hyper writes with
        // writev, which raises it) ends the process without a word. A
        // handler of our own keeps it from doing so, as in `sift run`.
        let sigpipe = {
            let _g = rt.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
                .expect("SIGPIPE handler")
        };
        let records: Records = Arc::default();
        let up = rt.block_on(upstream(records.clone()));
        let yaml = config(up);
        let cfg = sift::config::load_str(&yaml).unwrap_or_else(|e| panic!("config: {e}"));
        let metrics = Arc::new(sift::metrics::Metrics::new());
        let clock = sift::clock::Clock::new();
        let _g = rt.enter();
        let snap =
            sift::snapshot::Snapshot::build(cfg, Arc::from(yaml), None, &metrics, clock.now())
                .unwrap_or_else(|e| panic!("snapshot: {e:?}"));
        let shared = sift::state::Shared::new(snap, metrics, clock);
        shared.ready.store(true, Ordering::Release);
        let drain = sift::drain::Drain::new();
        let mut sift = Vec::new();
        let mut serving = Vec::new();
        for name in MODES {
            let tcp = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind sift");
            sift.push(tcp.local_addr().expect("sift address"));
            serving.push(rt.spawn(sift::listener::serve(
                tcp,
                Arc::from(name),
                shared.clone(),
                drain.clone(),
            )));
        }
        drop(_g);
        Env {
            rt,
            sift: [sift[0], sift[1], sift[2]],
            records,
            serving,
            _drain: drain,
            _sigpipe: sigpipe,
            runs: AtomicU64::new(0),
        }
    })
}

/// A response head: status and headers (lower-case names).
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    len: usize,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse one response head at the start of `b`: `None` if incomplete,
/// a panic if what is there is not HTTP/1.x.
fn parse_head(b: &[u8]) -> Option<Head> {
    let prefix = b.len().min(9);
    assert!(
        b"HTTP/1.1 "[..prefix] == b[..prefix] || b"HTTP/1.0 "[..prefix] == b[..prefix],
        "not an HTTP/1.x response: {:?}",
        String::from_utf8_lossy(&b[..b.len().min(200)])
    );
    let end = memchr::memmem::find(b, b"\r\n\r\n")?;
    let text = std::str::from_utf8(&b[..end]).expect("response head is not UTF-8");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code = status_line.get(9..12).unwrap_or_default();
    assert!(
        code.len() == 3
            && code.bytes().all(|c| c.is_ascii_digit())
            && status_line.as_bytes().get(12).is_none_or(|&c| c == b' '),
        "bad status line {status_line:?}"
    );
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("response header line without ':'");
            (k.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Some(Head {
        status: code.parse().unwrap_or(0),
        headers,
        len: end + 4,
    })
}

/// The first final response (after any 1xx), once whole: its head, or
/// `None` when more bytes are needed. `head_req`: the request was HEAD.
fn whole_response(b: &[u8], head_req: bool) -> Option<Head> {
    let mut at = 0;
    loop {
        let h = parse_head(&b[at..])?;
        if (100..200).contains(&h.status) && h.status != 101 {
            at += h.len;
            continue;
        }
        let body = &b[at + h.len..];
        let done = if head_req || h.status == 204 || h.status == 304 || h.status == 101 {
            true
        } else if let Some(cl) = h.get("content-length") {
            let n: usize = cl.parse().expect("bad Content-Length in a response");
            body.len() >= n
        } else if h
            .get("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            body.ends_with(b"0\r\n\r\n")
        } else {
            // Read to the end of the connection.
            false
        };
        return done.then_some(h);
    }
}

/// Send `req` on a fresh connection; the first final response's head (if
/// sift answers), and all bytes read.
async fn exchange(addr: SocketAddr, req: &[u8], head_req: bool) -> (Option<Head>, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to sift");
    let _ = s.write_all(req).await;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // A head sift waits on (a body shorter than declared): the client then
    // half-closes, and sift must answer or close soon.
    let mut deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let mut closed_write = false;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(h) = whole_response(&buf, head_req) {
                    return (Some(h), buf);
                }
            }
            Err(_) if !closed_write => {
                closed_write = true;
                let _ = s.shutdown().await;
                deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            }
            Err(_) => panic!(
                "sift neither answered nor closed 5 s after the client's half-close; read {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(300)])
            ),
        }
    }
    let h = if buf.is_empty() {
        None
    } else {
        parse_head(&buf)
    };
    (h, buf)
}

fn hexval(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// `%XX` decoded; `%2F`/`%5C` too only when `slashes`.
fn decode(p: &str, slashes: bool) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                let c = h * 16 + l;
                if slashes || (c != b'/' && c != b'\\') {
                    out.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path an app that decodes, merges slashes and resolves dot segments
/// reads (backslashes read as slashes).
fn app_view(p: &str, slashes: bool) -> String {
    let d = decode(p, slashes).replace('\\', "/");
    let mut segs: Vec<&str> = Vec::new();
    for s in d.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    format!("/{}", segs.join("/"))
}

fn joined(r: &Record, name: &str) -> Option<Vec<u8>> {
    let vals: Vec<&[u8]> = r
        .headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
        .collect();
    (!vals.is_empty()).then(|| vals.join(&b","[..]))
}

fn count(r: &Record, name: &str) -> usize {
    r.headers.iter().filter(|(k, _)| k == name).count()
}

fn check_upstream(r: &Record, mode: &str) {
    let ctx = || format!("{r:?} (listener {mode})");
    let path = r.target.split('?').next().unwrap_or_default();
    if r.target == "*" {
        assert_eq!(
            r.method,
            "OPTIONS",
            "asterisk-form for another method: {}",
            ctx()
        );
    } else {
        assert!(
            path.starts_with('/'),
            "upstream target not origin-form: {}",
            ctx()
        );
    }
    assert!(!path.contains("//"), "'//' upstream: {}", ctx());
    let b = path.as_bytes();
    for (i, _) in b.iter().enumerate().filter(|(_, c)| **c == b'%') {
        let v = b
            .get(i + 1)
            .and_then(|&h| hexval(h))
            .zip(b.get(i + 2).and_then(|&l| hexval(l)))
            .map(|(h, l)| h * 16 + l);
        let Some(c) = v else {
            panic!("bad '%' upstream: {}", ctx());
        };
        assert!(
            !(c.is_ascii_alphanumeric() || b"-._~".contains(&c)),
            "escaped unreserved character upstream: {}",
            ctx()
        );
        if mode != "keep" {
            assert!(c != b'/' && c != b'\\', "escaped slash upstream: {}", ctx());
        }
    }
    for seg in decode(path, true).split(['/', '\\']) {
        let seg = seg.split(';').next().unwrap_or_default();
        assert!(seg != "." && seg != "..", "dot segment upstream: {}", ctx());
    }
    // Where `;` parameters are refused or stripped, none reaches the app,
    // and a servlet container's reading (parameters dropped) is checked.
    if mode != "keep" {
        assert!(!path.contains(';'), "path parameter upstream: {}", ctx());
    }
    let app = app_view(path, mode != "keep");
    assert!(
        app != "/admin" && !app.starts_with("/admin/"),
        "an /admin path reached the upstream: {}",
        ctx()
    );
    for (k, v) in &r.headers {
        assert!(!k.contains('_'), "underscore header upstream: {}", ctx());
        assert!(
            !k.starts_with("x-sift-"),
            "x-sift-* header upstream: {}",
            ctx()
        );
        assert!(
            k != "keep-alive" && k != "proxy-connection",
            "hop-by-hop header {k} upstream: {}",
            ctx()
        );
        if k == "connection" {
            assert!(
                v.eq_ignore_ascii_case(b"upgrade") && count(r, "upgrade") == 1,
                "connection upstream: {}",
                ctx()
            );
        }
        if k == "upgrade" {
            assert!(
                joined(r, "connection").is_some_and(|c| c.eq_ignore_ascii_case(b"upgrade")),
                "upgrade without connection upstream: {}",
                ctx()
            );
        }
        if k == "te" {
            assert!(
                v.eq_ignore_ascii_case(b"trailers"),
                "te upstream: {}",
                ctx()
            );
        }
    }
    assert!(count(r, "host") <= 1, "Host lines upstream: {}", ctx());
    let xff = joined(r, "x-forwarded-for").unwrap_or_default();
    let last = xff.rsplit(|&c| c == b',').next().unwrap_or_default();
    assert_eq!(
        last.trim_ascii(),
        b"127.0.0.1",
        "X-Forwarded-For does not end with the peer: {}",
        ctx()
    );
    assert_eq!(count(r, "x-route"), 1, "x-route: {}", ctx());
    let route = joined(r, "x-route").unwrap_or_default();
    match route.as_slice() {
        b"gold" => assert_eq!(
            joined(r, "x-tenant").as_deref(),
            Some(&b"gold"[..]),
            "route gold for another tenant: {}",
            ctx()
        ),
        b"api" => {
            let host = String::from_utf8_lossy(&joined(r, "host").unwrap_or_default())
                .to_ascii_lowercase();
            let name = if host.starts_with('[') {
                host.clone()
            } else {
                host.split(':').next().unwrap_or_default().to_owned()
            };
            let name = name.strip_suffix('.').unwrap_or(&name);
            assert!(
                name == "api.example.com" || name.ends_with(".api.example.com"),
                "route api for host {host:?}: {}",
                ctx()
            );
            assert!(
                ["GET", "POST", "PUT"].contains(&r.method.as_str()),
                "route api for method {}: {}",
                r.method,
                ctx()
            );
            assert!(
                path == "/v1" || path.starts_with("/v1/"),
                "route api for path: {}",
                ctx()
            );
        }
        b"docs" => assert!(
            path == "/static" || path.starts_with("/static/"),
            "route docs not rewritten: {}",
            ctx()
        ),
        b"contact" => {
            if let Some(s) = joined(r, "app-spam-score") {
                let ok = std::str::from_utf8(&s)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .is_some_and(|x| (0.0..=1.0).contains(&x));
                assert!(ok, "app-spam-score not sift's: {}", ctx());
            }
            if let Some(v) = joined(r, "app-spam-verdict") {
                assert!(
                    v == b"ham" || v == b"spam",
                    "app-spam-verdict not sift's: {}",
                    ctx()
                );
            }
        }
        b"limited" | b"default" => {}
        _ => panic!("unknown route: {}", ctx()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, req)) = data.split_first() else {
        return;
    };
    let env = env();
    let mode_index = sel as usize % 3;
    let mode = MODES[mode_index];
    let mut req = req.to_vec();
    if memchr::memmem::find(&req, b"\r\n\r\n").is_none()
        && memchr::memmem::find(&req, b"\n\n").is_none()
    {
        req.extend_from_slice(b"\r\n\r\n");
    }
    let head_req = req.starts_with(b"HEAD ");
    env.records.lock().unwrap().clear();
    let (head, bytes) = env
        .rt
        .block_on(exchange(env.sift[mode_index], &req, head_req));
    if let Some(h) = &head {
        let ctx = || {
            format!(
                "request {:?} (listener {mode}) answered {:?}",
                String::from_utf8_lossy(&req),
                String::from_utf8_lossy(&bytes[..bytes.len().min(600)])
            )
        };
        let s = h.status;
        assert!((100..600).contains(&s), "status {s}: {}", ctx());
        assert!(
            s < 500 || (501..=504).contains(&s),
            "sift answered {s}: {}",
            ctx()
        );
        if s == 301 || s == 308 {
            let loc = h
                .get("location")
                .unwrap_or_else(|| panic!("no Location: {}", ctx()));
            assert!(
                loc.starts_with("http://") || loc.starts_with('/'),
                "Location {loc:?}: {}",
                ctx()
            );
        }
    }
    let records = std::mem::take(&mut *env.records.lock().unwrap());
    for r in &records {
        check_upstream(r, mode);
    }
    for t in &env.serving {
        assert!(!t.is_finished(), "an accept loop ended");
    }
    if env.runs.fetch_add(1, Ordering::Relaxed) % 512 == 511 {
        let (h, bytes) = env.rt.block_on(exchange(
            env.sift[0],
            b"GET /ping HTTP/1.1\r\nHost: a.example\r\n\r\n",
            false,
        ));
        assert_eq!(
            h.map(|h| h.status),
            Some(200),
            "a well-formed GET failed: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        env.records.lock().unwrap().clear();
    }
});
