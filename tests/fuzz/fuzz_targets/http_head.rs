//! The request head through the whole proxy, in process: sift's own serving
//! code (`listener::serve` → `proxy::handle`) on three plain HTTP/1.1
//! listeners on 127.0.0.1 port 0 (`escaped_slashes` keep, reject and
//! unescape, with `path_parameters` keep, reject and strip), a real loopback upstream that records what reaches it, and
//! a config whose routes use host matches (exact, wildcard), path prefix
//! and exact, methods, a header condition, a rewrite, two redirects, direct
//! responses, rate limits keyed on headers, a canary split (sticky header,
//! override header), a spam filter in block mode reading a form field
//! and query fields, a regex path, a header regex, query conditions (exact,
//! prefix, regex, present true/false; a 403 on `debug=1`), two CORS
//! policies (origins with credentials; `*` echoing headers) and gzip
//! compression (the upstream answers HTML on those routes, see `answer`),
//! request buffering (`/upload`: 1 KiB in memory, the rest spooled),
//! a spam filter in annotate mode with `on_oversize: spool` (`/spool`) under
//! a tight `overload` (2 KiB of memory for held bodies, 4 KiB of spool), and
//! retries (`/retry`: bodies up to 1 KiB kept for replay; `x-up-fail: 1` or
//! `early` makes the upstream fail each request's first try with a 503,
//! after or before reading its body).
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
//!   per route (sift sets `x-route`): the host, header, path and query the
//!   route matched, and filter verdict headers only from sift; on the
//!   buffered route the body arrives whole with one Content-Length (or
//!   chunked, when it has trailers), on the spooling route whole (annotate
//!   headers, when there, sift's own), on the retry route with one
//!   Content-Length equal to what was read or chunked; on all three exactly
//!   the bytes the client sent when its first request is plainly framed
//!   (`first_framing`), with its trailers (all but those no sender may
//!   send): the declared ones everywhere, undeclared ones too on the
//!   buffered route; a kept body's failed try is retried once, with the
//!   same bytes, and the client gets the retry's answer; no
//!   `debug=1` (any occurrence, decoded) under `/search`; no preflight from
//!   an allowed origin;
//! - the answer the upstream made (`x-up-seq`): gzip only on a compressing
//!   route, for a client that asked, not for HEAD, without Content-Length,
//!   with `Vary: accept-encoding` and a weak ETag, decoding to exactly what
//!   the upstream sent (else the body is what it sent); a plain `gzip` GET
//!   there is compressed; an allowed origin gets the policy's ACAO (and
//!   ACAC, Vary, ACEH); no answer has ACAO `*` with credentials;
//! - every 512 inputs a well-formed GET still gets its 200 and the accept
//!   loops still run.
#![no_main]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request as the upstream received it, and what it answered.
#[derive(Debug)]
struct Record {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    /// Its `x-up-seq` answer header.
    seq: u64,
    /// The body it answered (before any compression by sift).
    sent: Vec<u8>,
    /// On the routes that read the body (`buffered`, `spool`, `retry`):
    /// the request body's length as read, or the read's error.
    body: Option<Result<u64, String>>,
    /// The names of the request trailers it read there.
    trailers: Vec<String>,
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

/// Requests the upstream has begun and not yet recorded (a body it is
/// still reading): the target waits for them before its checks, so a
/// body sift cuts (answering the client 502 before the upstream's read
/// fails) is still checked with its own input.
static UNRECORDED: AtomicU64 = AtomicU64::new(0);

/// A request being handled: one of `UNRECORDED` until dropped, when its
/// record is pushed (also when hyper drops the request's future with its
/// connection: a body then not read whole is recorded as cut).
struct Pending {
    record: Option<Record>,
    records: Records,
}

impl Pending {
    /// A request whose body is to be read starts out recorded as cut.
    fn new(mut record: Record, records: Records, reads_body: bool) -> Pending {
        if reads_body {
            record.body = Some(Err(
                "the request was dropped before its body was read".into()
            ));
        }
        UNRECORDED.fetch_add(1, Ordering::SeqCst);
        Pending {
            record: Some(record),
            records,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            self.records.lock().unwrap().push(r);
        }
        UNRECORDED.fetch_sub(1, Ordering::SeqCst);
    }
}

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
overload: {{ max_buffered_bytes: 2KiB, max_spooled_bytes: 4KiB }}
listeners:
{listeners}filters:
  - name: spam
    kind: spam
    max_inspect_bytes: 16KiB
    max_decompressed_bytes: 64KiB
    extract: {{ form_fields: [msg], query_fields: [msg, q] }}
    header_prefix: app-spam
  - name: spooler
    kind: spam
    max_inspect_bytes: 4KiB
    header_prefix: app-spool
routes:
  - name: deny-admin
    match: {{ path: {{ prefix: /admin }} }}
    direct_response: {{ status: 403, body: "no\n" }}
  - name: deny-debug
    match: {{ path: {{ prefix: /search }}, query: [ {{ name: debug, exact: "1" }} ] }}
    direct_response: {{ status: 403, body: "no debug\n" }}
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
  - name: re-item
    match: {{ path: {{ regex: '/items/[0-9]+(/[a-z]+)?' }} }}
    cluster: app
    request_headers: {{ set: {{ x-route: re-item }} }}
  - name: hdr-re
    match: {{ headers: [ {{ name: x-client, regex: 'v[2-9]\.[0-9]{{1,3}}' }} ] }}
    cluster: app
    request_headers: {{ set: {{ x-route: hdr-re }} }}
  - name: q-search
    match: {{ path: {{ prefix: /search }}, query: [ {{ name: q, prefix: sift }}, {{ name: lang, regex: '[a-z]{{2}}(-[A-Z]{{2}})?' }} ] }}
    cluster: app
    request_headers: {{ set: {{ x-route: q-search }} }}
  - name: q-flag
    match: {{ path: {{ prefix: /search }}, query: [ {{ name: page, present: true }}, {{ name: nocache, present: false }}, {{ name: mode, exact: "full text" }} ] }}
    cluster: app
    request_headers: {{ set: {{ x-route: q-flag }} }}
  - name: cors-app
    match: {{ path: {{ prefix: /cors }} }}
    cluster: app
    cors:
      allow_origins: ["https://app.example.com", "https://*.example.org"]
      allow_methods: [GET, POST, PUT]
      allow_headers: [content-type, x-client]
      expose_headers: [x-request-id]
      max_age: 10m
      allow_credentials: true
    request_headers: {{ set: {{ x-route: cors-app }} }}
  - name: cors-any
    match: {{ path: {{ prefix: /pub }} }}
    cluster: app
    cors: {{ allow_origins: ["*"], allow_headers: ["*"] }}
    compression: {{ min_bytes: 1B, level: 1 }}
    request_headers: {{ set: {{ x-route: cors-any }} }}
  - name: buffered
    match: {{ path: {{ prefix: /upload }} }}
    cluster: app
    max_request_body: 64KiB
    request_buffering: {{ in_memory: 1KiB }}
    request_headers: {{ set: {{ x-route: buffered }} }}
  - name: spool
    match: {{ path: {{ prefix: /spool }} }}
    cluster: app
    max_request_body: 64KiB
    filters: [ {{ filter: spooler, mode: annotate, on_oversize: spool, on_overload: fail_open }} ]
    request_headers: {{ set: {{ x-route: spool }} }}
  - name: retry
    match: {{ path: {{ prefix: /retry }} }}
    cluster: app
    max_request_body: 64KiB
    retries: {{ attempts: 2, non_idempotent: true, buffer_limit: 1KiB, backoff_base: 1ms, backoff_max: 2ms }}
    request_headers: {{ set: {{ x-route: retry }} }}
  - name: gz
    match: {{ path: {{ prefix: /gz }} }}
    cluster: app
    compression: {{ min_bytes: 1B }}
    request_headers: {{ set: {{ x-route: gz }} }}
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

/// An answer body in pieces (several frames: sift's gzip flushes each).
struct Pieces(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

fn header<'a>(req: &'a hyper::Request<hyper::body::Incoming>, name: &str) -> Option<&'a [u8]> {
    req.headers().get(name).map(|v| v.as_bytes())
}

/// What the upstream answers: "up", or on the routes that compress
/// (`x-route` gz, cors-any) some HTML made from the request: its target
/// repeated `n` times (`?n=`, up to 4000; default 8), in pieces of `x-up-piece`
/// bytes (default 1000). `x-up-cl: 1` sends a Content-Length, `x-up-etag: 1` a
/// strong ETag, `x-up-type` another Content-Type; on the CORS routes,
/// `x-app-cors` makes the app send its own CORS headers (`star`: ACAO `*`,
/// `cred`: ACAC true, `echo`: the Origin; never `*` with credentials).
fn answer(
    req: &hyper::Request<hyper::body::Incoming>,
    seq: u64,
) -> (hyper::Response<Pieces>, Vec<u8>) {
    let route = header(req, "x-route").unwrap_or_default();
    if fails(req) {
        let mut resp = hyper::Response::new(Pieces([Bytes::from_static(b"try again")].into()));
        *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut().insert("x-up-seq", seq.into());
        return (resp, b"try again".to_vec());
    }
    let html = route == b"gz" || route == b"cors-any";
    let body: Vec<u8> = if html {
        let target = req.uri().to_string();
        let n = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|p| p.strip_prefix("n="))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(8)
            .min(4000);
        let mut b = b"<!doctype html><html><body><ul>\n".to_vec();
        for i in 0..n {
            b.extend_from_slice(format!("<li id=\"{i}\">{target} #{seq}</li>\n").as_bytes());
        }
        b.extend_from_slice(b"</ul></body></html>\n");
        b
    } else {
        b"up".to_vec()
    };
    let piece = header(req, "x-up-piece")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1000)
        .max(1);
    let pieces = body.chunks(piece).map(Bytes::copy_from_slice).collect();
    let mut resp = hyper::Response::new(Pieces(pieces));
    let h = resp.headers_mut();
    h.insert("x-up-seq", seq.into());
    if html {
        // Visible ASCII only: the target reads answer heads as UTF-8.
        let ct = req
            .headers()
            .get("x-up-type")
            .filter(|v| v.to_str().is_ok())
            .cloned()
            .unwrap_or(hyper::header::HeaderValue::from_static(
                "text/html; charset=utf-8",
            ));
        h.insert("content-type", ct);
    }
    if header(req, "x-up-cl") == Some(b"1") {
        h.insert("content-length", body.len().into());
    }
    if header(req, "x-up-etag") == Some(b"1") {
        h.insert("etag", hyper::header::HeaderValue::from_static("\"v1\""));
    }
    if route.starts_with(b"cors-") {
        match header(req, "x-app-cors") {
            Some(b"star") => {
                h.insert(
                    "access-control-allow-origin",
                    hyper::header::HeaderValue::from_static("*"),
                );
            }
            Some(b"cred") => {
                h.insert(
                    "access-control-allow-credentials",
                    hyper::header::HeaderValue::from_static("true"),
                );
            }
            Some(b"echo") => {
                if let Some(o) = req.headers().get("origin").filter(|o| o.to_str().is_ok()) {
                    h.insert("access-control-allow-origin", o.clone());
                }
            }
            _ => {}
        }
    }
    (resp, body)
}

/// The `x-request-id`s the retry route has answered 503 to (cleared per
/// input).
static FAILED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// On the retry route, `x-up-fail: 1` (the body read first) or `early`
/// (answered before reading it) makes the first try of each request
/// (by its `x-request-id`) a 503, which sift retries when it kept the body.
fn fails(req: &hyper::Request<hyper::body::Incoming>) -> bool {
    if header(req, "x-route") != Some(b"retry") || header(req, "x-up-fail").is_none() {
        return false;
    }
    let id = header(req, "x-request-id").unwrap_or_default().to_vec();
    let mut failed = FAILED.lock().unwrap();
    if failed.contains(&id) {
        false
    } else {
        failed.push(id);
        true
    }
}

/// The upstream: records each request and what it answered (see `answer`).
async fn upstream(records: Records) -> SocketAddr {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = tcp.local_addr().expect("upstream address");
    let seqs = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let records = records.clone();
            let seqs = seqs.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seq = seqs.fetch_add(1, Ordering::Relaxed);
                    let (resp, sent) = answer(&req, seq);
                    let r = Record {
                        method: req.method().to_string(),
                        target: req.uri().to_string(),
                        headers: req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                            .collect(),
                        seq,
                        sent,
                        body: None,
                        trailers: Vec::new(),
                    };
                    // A try answered early is not read.
                    let early = header(&req, "x-up-fail") == Some(b"early")
                        && resp.status() == hyper::StatusCode::SERVICE_UNAVAILABLE;
                    let buffered = !early
                        && matches!(header(&req, "x-route"), Some(b"buffered" | b"spool" | b"retry"));
                    let mut pending = Pending::new(r, records.clone(), buffered);
                    async move {
                        if buffered {
                            use http_body_util::BodyExt;
                            let read = match req.into_body().collect().await {
                                Ok(b) => {
                                    if let Some(r) = pending.record.as_mut() {
                                        r.trailers = b
                                            .trailers()
                                            .map(|t| t.keys().map(|k| k.to_string()).collect())
                                            .unwrap_or_default();
                                    }
                                    Ok(b.to_bytes().len() as u64)
                                }
                                Err(e) => Err(e.to_string()),
                            };
                            if let Some(r) = pending.record.as_mut() {
                                r.body = Some(read);
                            }
                        }
                        drop(pending);
                        Ok::<_, Infallible>(resp)
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
    /// The body (de-chunked) once whole, when delimited by Content-Length
    /// or chunked.
    body: Option<Vec<u8>>,
}

impl Head {
    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

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
        body: None,
    })
}

/// The first final response (after any 1xx), once whole: its head, or
/// `None` when more bytes are needed. `head_req`: the request was HEAD.
fn whole_response(b: &[u8], head_req: bool) -> Option<Head> {
    let mut at = 0;
    loop {
        let mut h = parse_head(&b[at..])?;
        if (100..200).contains(&h.status) && h.status != 101 {
            at += h.len;
            continue;
        }
        let body = &b[at + h.len..];
        let done = if head_req || h.status == 204 || h.status == 304 || h.status == 101 {
            true
        } else if let Some(cl) = h.get("content-length") {
            let n: usize = cl.parse().expect("bad Content-Length in a response");
            if body.len() >= n {
                h.body = Some(body[..n].to_vec());
            }
            body.len() >= n
        } else if h
            .get("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            h.body = dechunk(body);
            h.body.is_some()
        } else {
            // Read to the end of the connection.
            false
        };
        return done.then_some(h);
    }
}

/// A chunked body: `Some(decoded)` once its last chunk and trailers are in;
/// a panic when it is not chunked coding.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = memchr::memmem::find(b, b"\r\n")?;
        let line = String::from_utf8_lossy(&b[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        b = &b[eol + 2..];
        if n == 0 {
            // Trailers, then a blank line.
            loop {
                let eol = memchr::memmem::find(b, b"\r\n")?;
                if eol == 0 {
                    return Some(out);
                }
                b = &b[eol + 2..];
            }
        }
        if b.len() < n + 2 {
            return None;
        }
        out.extend_from_slice(&b[..n]);
        assert_eq!(&b[n..n + 2], b"\r\n", "chunk data not followed by CRLF");
        b = &b[n + 2..];
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

/// The first request of the input, when it is plainly framed.
struct Framing {
    /// The body length the client sent.
    len: u64,
    /// Sent with a Content-Length (else chunked, or no body).
    with_length: bool,
    /// The names of its trailers (lower case).
    trailers: Vec<String>,
    /// The names its `Trailer` lines declare, read as hyper's client
    /// reads them (a line that is not visible ASCII declares nothing).
    declared: Vec<String>,
}

/// Fields no sender may put in trailers, which hyper never sends.
/// Trailer fields sift removes in both directions (`field::clean_trailers`):
/// those no sender may send, hop-by-hop ones, and its own `x-sift-*`.
fn not_trailer(name: &str) -> bool {
    sift::field::NEVER_IN_TRAILERS
        .iter()
        .any(|n| n.as_str() == name)
        || name.starts_with("x-sift-")
        || matches!(name, "keep-alive" | "proxy-connection")
}

/// The first request of the input, when it is plainly framed: the body
/// length the client sent (Content-Length, one line of digits,
/// or `Transfer-Encoding: chunked` with every chunk in the input; 0 with
/// neither), and its trailers. None for anything a strict reader would
/// doubt (bare LF, folded or odd header or trailer lines, both framings, a
/// body cut short): no check then.
fn first_framing(req: &[u8]) -> Option<Framing> {
    let end = memchr::memmem::find(req, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&req[..end]).ok()?;
    let mut lines = head.split("\r\n");
    lines.next()?;
    let (mut cl, mut chunked) = (None, false);
    let mut declared = Vec::new();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    for l in lines {
        let (name, value) = l.split_once(':')?;
        if name.is_empty() || !name.chars().all(token) || l.contains('\n') {
            return None;
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("trailer")
            && value.bytes().all(|c| c == b'\t' || (b' '..=b'~').contains(&c))
        {
            declared.extend(
                value
                    .split(',')
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty()),
            );
        }
        if name.eq_ignore_ascii_case("content-length") {
            if cl.is_some() || value.is_empty() || !value.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            cl = Some(value.parse::<u64>().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !value.eq_ignore_ascii_case("chunked") {
                return None;
            }
            chunked = true;
        }
    }
    let mut b = &req[end + 4..];
    let mut trailers = Vec::new();
    let len = match (cl, chunked) {
        (Some(_), true) => return None,
        (Some(n), false) => (b.len() as u64 >= n).then_some(n)?,
        (None, false) => 0,
        (None, true) => {
            let mut total = 0u64;
            loop {
                let eol = memchr::memmem::find(b, b"\r\n")?;
                let size = std::str::from_utf8(&b[..eol]).ok()?;
                if size.is_empty() || !size.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                let n = usize::from_str_radix(size, 16).ok()?;
                b = &b[eol + 2..];
                if n == 0 {
                    break;
                }
                if b.len() < n + 2 || &b[n..n + 2] != b"\r\n" {
                    return None;
                }
                total += n as u64;
                b = &b[n + 2..];
            }
            // Trailers: header lines, then a blank line.
            loop {
                let eol = memchr::memmem::find(b, b"\r\n")?;
                if eol == 0 {
                    break total;
                }
                let line = std::str::from_utf8(&b[..eol]).ok()?;
                let (name, _) = line.split_once(':')?;
                if name.is_empty() || !name.chars().all(token) || line.contains('\n') {
                    return None;
                }
                trailers.push(name.to_ascii_lowercase());
                b = &b[eol + 2..];
            }
        }
    };
    Some(Framing {
        len,
        with_length: cl.is_some(),
        trailers,
        declared,
    })
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

/// Every value of header `name` the upstream received, in order.
fn all<'a>(r: &'a Record, name: &str) -> Vec<&'a [u8]> {
    r.headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

fn joined(r: &Record, name: &str) -> Option<Vec<u8>> {
    let vals = all(r, name);
    (!vals.is_empty()).then(|| vals.join(&b","[..]))
}

fn count(r: &Record, name: &str) -> usize {
    r.headers.iter().filter(|(k, _)| k == name).count()
}

/// `%XX` decoded and `+` as a space, as apps read query names and values.
fn qdecode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hexval(s[i + 1]), hexval(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The query's (name, value) pairs, decoded; split on `&` only.
fn query_pairs(target: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some((_, q)) = target.split_once('?') else {
        return Vec::new();
    };
    q.as_bytes()
        .split(|&c| c == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&c| c == b'=') {
            Some(i) => (qdecode(&p[..i]), qdecode(&p[i + 1..])),
            None => (qdecode(p), Vec::new()),
        })
        .collect()
}

fn values<'a>(pairs: &'a [(Vec<u8>, Vec<u8>)], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    pairs
        .iter()
        .filter(move |(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// `/items/[0-9]+(/[a-z]+)?`, whole.
fn item_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix("/items/") else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let tail = &rest[digits..];
    digits > 0
        && (tail.is_empty()
            || tail
                .strip_prefix('/')
                .is_some_and(|t| !t.is_empty() && t.bytes().all(|c| c.is_ascii_lowercase())))
}

/// `v[2-9]\.[0-9]{1,3}`, whole.
fn client_version(v: &[u8]) -> bool {
    v.len() >= 4
        && v.len() <= 6
        && v[0] == b'v'
        && (b'2'..=b'9').contains(&v[1])
        && v[2] == b'.'
        && v[3..].iter().all(u8::is_ascii_digit)
}

/// `[a-z]{2}(-[A-Z]{2})?`, whole.
fn lang(v: &[u8]) -> bool {
    let low = |c: &u8| c.is_ascii_lowercase();
    let up = |c: &u8| c.is_ascii_uppercase();
    (v.len() == 2 && v.iter().all(low))
        || (v.len() == 5 && v[..2].iter().all(low) && v[2] == b'-' && v[3..].iter().all(up))
}

/// An Origin the `cors-app` route allows, read strictly (so never one it
/// refuses): `https://app.example.com`, or `https://<labels>.example.org`.
fn app_origin_allowed(o: &[u8]) -> bool {
    let o = o.to_ascii_lowercase();
    if o == b"https://app.example.com" {
        return true;
    }
    o.strip_prefix(b"https://")
        .and_then(|h| h.strip_suffix(b".example.org"))
        .is_some_and(|sub| {
            !sub.is_empty()
                && sub
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
        })
}

/// The one Origin of a request, and whether the route's policy allows it
/// (read strictly: `None` when sift might read it otherwise).
fn origin_allowed(r: &Record, route: &[u8]) -> Option<(Vec<u8>, bool)> {
    if count(r, "origin") != 1 {
        return None;
    }
    let o = joined(r, "origin")?;
    let visible = !o.is_empty() && o.iter().all(|&c| (0x21..0x7f).contains(&c));
    match route {
        b"cors-any" => visible.then(|| (o.clone(), true)),
        b"cors-app" => visible.then(|| {
            let ok = app_origin_allowed(&o);
            (o.clone(), ok)
        }),
        _ => None,
    }
}

/// Checks of the first answer against the request the upstream got for
/// it (`x-up-seq`): compression and CORS.
fn check_answer(h: &Head, records: &[Record], head_req: bool, ctx: &dyn Fn() -> String) {
    let acao: Vec<&str> = h.all("access-control-allow-origin").collect();
    assert!(acao.len() <= 1, "several ACAO lines: {}", ctx());
    let cred = h
        .all("access-control-allow-credentials")
        .any(|v| v.eq_ignore_ascii_case("true"));
    assert!(
        !(cred && acao.first() == Some(&"*")),
        "Access-Control-Allow-Origin * with credentials: {}",
        ctx()
    );
    let gz = h
        .all("content-encoding")
        .any(|v| v.to_ascii_lowercase().contains("gzip"));
    let Some(seq) = h.get("x-up-seq") else {
        assert!(!gz, "sift's own answer gzip-encoded: {}", ctx());
        return;
    };
    let seq: u64 = seq.parse().expect("x-up-seq");
    let Some(r) = records.iter().find(|r| r.seq == seq) else {
        return;
    };
    let route = joined(r, "x-route").unwrap_or_default();
    let ae: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "accept-encoding")
        .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
        .collect();
    let vary = h
        .all("vary")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    let compressing = route == b"gz" || route == b"cors-any";
    if gz {
        assert!(
            compressing,
            "gzip on a route without compression: {}",
            ctx()
        );
        assert!(
            !head_req && r.method != "HEAD",
            "gzip answer to HEAD: {}",
            ctx()
        );
        assert!(
            ae.iter().any(|v| v.contains("gzip") || v.contains('*')),
            "gzip for a client that did not ask for it: {}",
            ctx()
        );
        assert!(
            h.get("content-length").is_none(),
            "gzip answer with a Content-Length: {}",
            ctx()
        );
        assert!(
            vary.iter().any(|t| t == "accept-encoding"),
            "gzip answer without Vary: accept-encoding: {}",
            ctx()
        );
        if let Some(tag) = h.get("etag") {
            assert!(tag.starts_with("W/"), "strong ETag on gzip: {}", ctx());
        }
        if let Some(b) = &h.body {
            let mut out = Vec::new();
            let mut d = flate2::read::GzDecoder::new(&b[..]);
            if let Err(e) = std::io::Read::read_to_end(&mut d, &mut out) {
                panic!("gzip answer does not decode ({e}): {}", ctx());
            }
            assert!(
                d.into_inner().is_empty(),
                "bytes after the gzip member: {}",
                ctx()
            );
            assert!(
                out == r.sent,
                "gzip answer decodes to {} bytes, not the {} the upstream sent: {}",
                out.len(),
                r.sent.len(),
                ctx()
            );
        }
    } else {
        if let (Some(b), false) = (&h.body, head_req) {
            assert!(
                *b == r.sent,
                "answer body is not what the upstream sent: {}",
                ctx()
            );
        }
        // A plain GET whose one Accept-Encoding is "gzip", of an HTML
        // answer on a compressing route: compressed.
        assert!(
            !(compressing
                && r.method == "GET"
                && !head_req
                && ae == ["gzip"]
                && count(r, "x-up-type") == 0),
            "not compressed: {}",
            ctx()
        );
    }
    // An allowed origin's answer carries the policy.
    if let Some((o, true)) = origin_allowed(r, &route) {
        let want = if route == b"cors-any" {
            "*".to_owned()
        } else {
            String::from_utf8_lossy(&o).into_owned()
        };
        assert_eq!(
            acao.first().copied(),
            Some(want.as_str()),
            "ACAO for an allowed origin: {}",
            ctx()
        );
        if route == b"cors-app" {
            assert!(cred, "no ACAC on a credentials route: {}", ctx());
            assert!(
                vary.iter().any(|t| t == "origin"),
                "echoed origin without Vary: origin: {}",
                ctx()
            );
            assert_eq!(
                h.get("access-control-expose-headers"),
                Some("x-request-id"),
                "ACEH: {}",
                ctx()
            );
        }
    }
}

/// The client's trailers reach the upstream (all but the fields no sender
/// may put there): every declared one, on each route that reads the body;
/// undeclared ones too where sift holds the whole body before sending it
/// (request buffering), since it then declares them itself.
fn check_trailers(r: &Record, sent: &Framing, ctx: &dyn Fn() -> String) {
    let route = joined(r, "x-route").unwrap_or_default();
    if !matches!(r.body, Some(Ok(_))) {
        return;
    }
    let all = route == b"buffered";
    for t in &r.trailers {
        assert!(
            !not_trailer(t),
            "trailer {t:?} reached the upstream: {}",
            ctx()
        );
    }
    for t in &sent.trailers {
        if not_trailer(t) || !(all || sent.declared.contains(t)) {
            continue;
        }
        assert!(
            r.trailers.contains(t),
            "trailer {t:?} lost upstream (got {:?}): {}",
            r.trailers,
            ctx()
        );
    }
}

/// On the retry route: a try the upstream failed (503) is tried again when
/// sift kept the body (a Content-Length up to buffer_limit, no trailers),
/// with the same bytes; the answer the client got is the last try's.
fn check_retried(r: &Record, records: &[Record], sent: &Framing, ctx: &dyn Fn() -> String) {
    if joined(r, "x-route").as_deref() != Some(b"retry") {
        return;
    }
    let id = joined(r, "x-request-id");
    let tries: Vec<&Record> = records
        .iter()
        .filter(|o| joined(o, "x-request-id") == id && o.target == r.target)
        .collect();
    for o in &tries {
        if let (Some(Ok(a)), Some(Ok(b))) = (&o.body, &r.body) {
            assert_eq!(a, b, "a retry sent other bytes: {}", ctx());
        }
    }
    let kept = sent.with_length && sent.len <= 1024 && sent.trailers.is_empty();
    if kept && count(r, "x-up-fail") == 1 {
        assert_eq!(tries.len(), 2, "a kept body's 503 not retried once: {}", ctx());
        assert!(r.sent != b"try again", "answered the failed try: {}", ctx());
    }
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
    // The deny-debug route: no `debug=1` under /search, whichever
    // occurrence, however escaped.
    let pairs = query_pairs(&r.target);
    if app == "/search" || app.starts_with("/search/") {
        assert!(
            !values(&pairs, "debug").any(|v| v == b"1"),
            "debug=1 reached the upstream under /search: {}",
            ctx()
        );
    }
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
        b"buffered" => {
            // request_buffering: the whole body was read before the
            // upstream was asked, so it arrives whole, with its length
            // (no Content-Length only for a request without a body), or
            // chunked when it has trailers (the framing that carries them).
            let cl = all(r, "content-length");
            let te = all(r, "transfer-encoding");
            assert!(
                (cl.len() <= 1 && te.is_empty()) || (cl.is_empty() && te == [&b"chunked"[..]]),
                "buffered body not sent with its length: {}",
                ctx()
            );
            let read = r.body.as_ref().and_then(|b| b.as_ref().ok().copied());
            let want = match cl.first() {
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok()),
                None if te.is_empty() => Some(0),
                None => read,
            };
            assert!(
                want.is_some() && read == want,
                "buffered body not whole upstream: {}",
                ctx()
            );
        }
        b"retry" => {
            // Kept for replay or streamed: with one Content-Length equal
            // to what was read, or chunked.
            let cl = all(r, "content-length");
            let te = all(r, "transfer-encoding");
            assert!(
                (cl.len() <= 1 && te.is_empty()) || (cl.is_empty() && te == [&b"chunked"[..]]),
                "retried route's framing upstream: {}",
                ctx()
            );
            if let (Some(v), Some(Ok(n))) = (cl.first(), &r.body) {
                let want = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                assert_eq!(want, Some(*n), "retried body's length upstream: {}", ctx());
            }
        }
        b"spool" => {
            // A spooling annotate filter (memory for it spent after 2 KiB,
            // disk after 4 KiB more: then fail_open): however far it got,
            // the body reaches the upstream whole, as the client framed it.
            let cl = all(r, "content-length");
            let read = r.body.as_ref().and_then(|b| b.as_ref().ok().copied());
            assert!(read.is_some(), "spooled body cut upstream: {}", ctx());
            assert!(cl.len() <= 1, "Content-Length lines upstream: {}", ctx());
            if let Some(v) = cl.first() {
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                assert_eq!(n, read, "spooled body's length upstream: {}", ctx());
            }
            if let Some(s) = joined(r, "app-spool-score") {
                // sift writes 4 decimals; a client's own value is removed.
                let ok = s.len() == 6
                    && s[1] == b'.'
                    && std::str::from_utf8(&s)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                        .is_some_and(|x| (0.0..=1.0).contains(&x));
                assert!(ok, "app-spool-score not sift's: {}", ctx());
                let v = joined(r, "app-spool-verdict");
                assert!(
                    matches!(v.as_deref(), Some(b"spam" | b"ham")),
                    "app-spool-verdict not sift's: {}",
                    ctx()
                );
            }
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
        b"re-item" => assert!(item_path(path), "route re-item for path: {}", ctx()),
        b"hdr-re" => assert!(
            joined(r, "x-client").is_some_and(|v| client_version(&v)),
            "route hdr-re for x-client: {}",
            ctx()
        ),
        b"q-search" => assert!(
            path.starts_with("/search")
                && values(&pairs, "q").any(|v| v.starts_with(b"sift"))
                && values(&pairs, "lang").any(lang),
            "route q-search for query: {}",
            ctx()
        ),
        b"q-flag" => assert!(
            path.starts_with("/search")
                && values(&pairs, "page").next().is_some()
                && values(&pairs, "nocache").next().is_none()
                && values(&pairs, "mode").any(|v| v == b"full text"),
            "route q-flag for query: {}",
            ctx()
        ),
        b"cors-app" | b"cors-any" => {
            // A preflight from an allowed origin is sift's to answer.
            if r.method == "OPTIONS" && count(r, "access-control-request-method") > 0 {
                assert!(
                    !origin_allowed(r, &route).is_some_and(|(_, ok)| ok),
                    "an allowed preflight reached the upstream: {}",
                    ctx()
                );
            }
        }
        b"gz" | b"limited" | b"default" => {}
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
    FAILED.lock().unwrap().clear();
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
    env.rt.block_on(async {
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while UNRECORDED.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let records = std::mem::take(&mut *env.records.lock().unwrap());
    for r in &records {
        check_upstream(r, mode);
    }
    if let Some(h) = &head {
        let ctx = || {
            format!(
                "request {:?} (listener {mode}) answered {:?}",
                String::from_utf8_lossy(&req),
                String::from_utf8_lossy(&bytes[..bytes.len().min(600)])
            )
        };
        check_answer(h, &records, head_req, &ctx);
        // The routes whose upstream reads the body (`/upload`, `/spool`)
        // forward every byte the client sent: the first request's body,
        // when plainly framed, is what the upstream read for the answer
        // it gave.
        let seq = h.get("x-up-seq").and_then(|s| s.parse::<u64>().ok());
        let first = records.iter().find(|r| Some(r.seq) == seq);
        if let (Some(r), Some(sent)) = (first, first_framing(&req)) {
            if let Some(b) = &r.body {
                assert_eq!(
                    b.as_ref().ok(),
                    Some(&sent.len),
                    "body upstream not what the client sent: {}",
                    ctx()
                );
            }
            check_trailers(r, &sent, &ctx);
            check_retried(r, &records, &sent, &ctx);
        }
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
