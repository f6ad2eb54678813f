//! Test support: spawn the real `sift` binary on port 0, real upstream
//! servers on 127.0.0.1 port 0, and clients. Nothing here is mocked.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sift::body::{self, Body};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "sift-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `sift run --config FILE` process.
pub struct Sift {
    pub child: Child,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub lines: Arc<Mutex<Vec<String>>>,
}

pub fn sift_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sift")
}

impl Sift {
    /// Start sift with `yaml` (listeners and admin should use port 0; logs
    /// must be JSON so the bound ports can be read from them).
    pub fn start(yaml: &str) -> Sift {
        Self::try_start(yaml).expect("sift starts")
    }

    pub fn try_start(yaml: &str) -> Result<Sift, String> {
        let dir = TempDir::new();
        let config_path = dir.path("sift.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        Self::start_at(dir, config_path)
    }

    pub fn start_at(dir: TempDir, config_path: PathBuf) -> Result<Sift, String> {
        Self::start_with(dir, config_path, &[])
    }

    /// [`Sift::start_at`] with more arguments to `sift run`.
    pub fn start_with(dir: TempDir, config_path: PathBuf, args: &[&str]) -> Result<Sift, String> {
        Self::start_env(dir, config_path, args, &[])
    }

    /// [`Sift::start_with`] with environment variables for sift.
    pub fn start_env(
        dir: TempDir,
        config_path: PathBuf,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Sift, String> {
        let mut child = Command::new(sift_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .args(args)
            .envs(env.iter().copied())
            // The config's log.level decides (RUST_LOG would replace it).
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn sift: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let mut listeners = HashMap::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().ok();
                    let err = out
                        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                        .unwrap_or_default();
                    return Err(format!("sift did not become ready; stderr: {err}"));
                }
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            match v["message"].as_str() {
                Some("listener bound") => {
                    let name = v["listener"].as_str().unwrap_or_default().to_string();
                    let addr = v["address"].as_str().unwrap_or_default().parse().unwrap();
                    listeners.insert(name, addr);
                }
                Some("admin bound") => {
                    admin = Some(v["address"].as_str().unwrap_or_default().parse().unwrap());
                }
                Some("sift ready") => break,
                _ => {}
            }
        }
        Ok(Sift {
            child,
            dir,
            config_path,
            listeners,
            admin: admin.ok_or("no admin address logged")?,
            lines,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        *self
            .listeners
            .values()
            .next()
            .expect("at least one listener")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A field of /proc/PID/status in kB (VmRSS, VmHWM).
    pub fn proc_status_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).expect("write config");
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The value of one metric sample, e.g. `sift_errors_total{kind="no-route"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = get_text(&self.admin_url("/metrics")).await.1;
        metric_value(&text, sample)
    }

    /// Whether `sample` reaches `at_least` within `within` (a count sift
    /// updates off the request path: an export, a fetch, a reload).
    pub async fn metric_reaches(&self, sample: &str, at_least: f64, within: Duration) -> bool {
        eventually(within, || async {
            self.metric(sample).await.unwrap_or(0.0) >= at_least
        })
        .await
    }
}

impl Drop for Sift {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Find `name{labels}` (labels in any order) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    let (name, labels) = match sample.find('{') {
        Some(i) => (&sample[..i], &sample[i + 1..sample.len() - 1]),
        None => (sample, ""),
    };
    let want: Vec<&str> = labels.split(',').filter(|s| !s.is_empty()).collect();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, l) = match series.find('{') {
            Some(i) => (&series[..i], &series[i + 1..series.len() - 1]),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<&str> = l.split(',').collect();
        if want.iter().all(|w| have.contains(w)) {
            return value.parse().ok();
        }
    }
    None
}

pub fn http1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn http2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// GET a URL; (status, body text).
pub async fn get_text(url: &str) -> (u16, String) {
    let r = http1_client()
        .request(Request::get(url).body(body::empty()).unwrap())
        .await
        .expect("request");
    let status = r.status().as_u16();
    let b = r.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&b).into_owned())
}

pub async fn post_text(url: &str) -> (u16, String) {
    let r = http1_client()
        .request(Request::post(url).body(body::empty()).unwrap())
        .await
        .expect("request");
    let status = r.status().as_u16();
    let b = r.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&b).into_owned())
}

/// Send a request; the full response with its body collected.
pub async fn send(req: Request<Body>) -> Response<Bytes> {
    let r = http1_client().request(req).await.expect("request");
    let (parts, b) = r.into_parts();
    Response::from_parts(parts, b.collect().await.expect("body").to_bytes())
}

/// A real HTTP/1.1 + HTTP/2 server on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Upstream::start_at("127.0.0.1:0".parse().unwrap(), handler).await
    }

    /// [`Upstream::start`] on a given address (127.0.0.2:PORT: every
    /// 127/8 address is loopback on Linux).
    pub async fn start_at<F, Fut>(at: SocketAddr, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let tcp = tokio::net::TcpListener::bind(at).await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let (handler, r) = (handler.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, Ordering::Relaxed);
                        let f = handler(req);
                        async move { Ok::<_, Infallible>(f.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// Answers with its name, the request line and headers as JSON.
    pub async fn echo(name: &'static str) -> Upstream {
        Upstream::echo_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// [`Upstream::echo`] on a given address.
    pub async fn echo_at(name: &'static str, at: SocketAddr) -> Upstream {
        Upstream::start_at(at, move |req: Request<Incoming>| async move {
            let mut headers = serde_json::Map::new();
            for (k, v) in req.headers() {
                headers
                    .entry(k.as_str().to_string())
                    .or_insert_with(|| serde_json::Value::Array(vec![]))
                    .as_array_mut()
                    .unwrap()
                    .push(String::from_utf8_lossy(v.as_bytes()).into());
            }
            let v = serde_json::json!({
                "name": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            let n = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            let mut v = v;
            v["body_len"] = n.into();
            json_response(200, &v)
        })
        .await
    }
}

pub fn json_response(status: u16, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::from(v.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

pub fn text_response(status: u16, s: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(Bytes::from_static(s.as_bytes())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r
}

pub fn full(s: impl Into<Bytes>) -> Body {
    body::boxed(Full::new(s.into()))
}

/// A config with one listener and one cluster on `upstream`, plus `extra`
/// YAML appended to the route (indented two spaces already).
pub fn simple_config(upstream: SocketAddr, route_extra: &str) -> String {
    format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: default
    cluster: app
{route_extra}
clusters:
  - name: app
    endpoints: ["{upstream}"]
"#
    )
}

/// Poll `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// A streaming request body fed through a channel (no Content-Length, so
/// HTTP/1.1 sends it chunked).
pub fn channel_body(cap: usize) -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    (tx, body::boxed(ChannelBody(rx)))
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A response body of `total` bytes produced in 64 KiB chunks as the
/// reader pulls them (never held in memory at once).
pub struct Generated {
    pub left: u64,
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        static CHUNK: [u8; 65536] = [b'z'; 65536];
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// xorshift64*: a deterministic generator for the mutation tests (no
/// dependency; a failure names its seed and iteration).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// `seed` mutated 1 to `max_rounds` times: a byte flipped, the rest cut
/// off, one of `tokens` spliced in or appended, a slice repeated up to 32
/// times (nesting, long runs) or up to 64 bytes dropped; at most `max_len`
/// bytes are returned.
pub fn mutate(
    rng: &mut Rng,
    seed: &[u8],
    tokens: &[&[u8]],
    max_rounds: usize,
    max_len: usize,
) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(max_rounds) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = rng.next() as u8;
            }
            1 => v.truncate(at),
            2 | 3 => {
                let t = tokens[rng.below(tokens.len())];
                v.splice(at..at, t.iter().copied());
            }
            4 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = (a + 1 + rng.below(256)).min(v.len());
                let piece = v[a..b].repeat(1 + rng.below(32));
                v.splice(at..at, piece);
            }
            5 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = (a + rng.below(64)).min(v.len());
                v.drain(a..b);
            }
            _ => {
                let t = tokens[rng.below(tokens.len())];
                v.extend_from_slice(t);
            }
        }
    }
    v.truncate(max_len);
    v
}

/// The generator of a mutation test: `seed`, or `seed` mixed with
/// `SIFT_HOSTILE_SEED` when it is set (so a long run can explore inputs
/// that the default seeds, which CI uses, never make). A failure prints
/// the seed it ran with.
pub fn hostile_rng(seed: u64) -> Rng {
    let extra = std::env::var("SIFT_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    // XOR with one value keeps the tests' seeds distinct; xorshift needs
    // a state other than 0.
    let s = (seed ^ extra.wrapping_mul(0x9e37_79b9_7f4a_7c15)).max(1);
    if extra != 0 {
        eprintln!("mutation seed {s:#x} (SIFT_HOSTILE_SEED={extra})");
    }
    Rng(s)
}

/// `base` iterations of a mutation test, times `SIFT_HOSTILE_ITERS`.
pub fn hostile_iters(base: usize) -> usize {
    let k = std::env::var("SIFT_HOSTILE_ITERS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1);
    base * k.max(1)
}

/// Every file below `dir`, recursively (the CI-log data set is one folder
/// per language and repository).
pub fn files_below(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            files_below(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// A real redis-server (Debian's package; tests/run.sh installs it) on
/// 127.0.0.1, stopped on drop.
pub struct RedisServer {
    pub addr: SocketAddr,
    pub child: Child,
}

impl RedisServer {
    /// Plain TCP on a free port.
    pub fn start() -> RedisServer {
        let port = free_port();
        RedisServer::spawn(port, &["--port", &port.to_string()])
    }

    /// On `port` (which `args` must name: `--port` or `--tls-port`), no
    /// persistence; returns once the port accepts connections.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(port: u16, args: &[S]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; tests/run.sh installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { addr, child }
    }

    /// Stop it now (the port can be used again).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1 (nothing listens on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gRPC answer's body: one message, then trailers, with no size hint
/// (as gRPC servers send it).
pub struct GrpcBody(pub Option<Bytes>, pub Option<http::HeaderMap>);

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = sift::body::BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let f = match (self.0.take(), self.1.take()) {
            (Some(d), t) => {
                self.1 = t;
                Some(Ok(hyper::body::Frame::data(d)))
            }
            (None, Some(t)) => Some(Ok(hyper::body::Frame::trailers(t))),
            (None, None) => None,
        };
        std::task::Poll::Ready(f)
    }
}

/// A gRPC answer with `grpc-status: code` in its trailers.
pub fn grpc_answer(code: &str) -> Response<Body> {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", code.parse().unwrap());
    let mut r = Response::new(body::boxed(GrpcBody(
        Some(Bytes::from_static(b"\0\0\0\0\0")),
        Some(t),
    )));
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    r
}

/// A DNS server on 127.0.0.1 (UDP) that answers A queries from a table
/// the test changes: a name not in it gets NXDOMAIN, an AAAA query no
/// records, and nothing at all while `silent` is set.
pub struct DnsServer {
    pub addr: SocketAddr,
    pub records: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<std::net::Ipv4Addr>>>>,
    pub silent: Arc<std::sync::atomic::AtomicBool>,
    pub queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let records: Arc<
            std::sync::Mutex<std::collections::HashMap<String, Vec<std::net::Ipv4Addr>>>,
        > = Arc::default();
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (r, s, q) = (records.clone(), silent.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                if s.load(Ordering::Relaxed) {
                    continue;
                }
                let Some(answer) = dns_answer(&buf[..n], &r.lock().unwrap()) else {
                    continue;
                };
                let _ = sock.send_to(&answer, from).await;
            }
        });
        DnsServer {
            addr,
            records,
            silent,
            queries,
            task,
        }
    }

    pub fn set(&self, name: &str, addrs: &[&str]) {
        let v = addrs.iter().map(|a| a.parse().unwrap()).collect();
        self.records.lock().unwrap().insert(name.to_string(), v);
    }

    pub fn remove(&self, name: &str) {
        self.records.lock().unwrap().remove(name);
    }
}

fn dns_answer(
    q: &[u8],
    records: &std::collections::HashMap<String, Vec<std::net::Ipv4Addr>>,
) -> Option<Vec<u8>> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let found = records.get(&name);
    let addrs: &[std::net::Ipv4Addr] = match (found, qtype) {
        (Some(a), 1) => a,
        _ => &[],
    };
    let mut m = Vec::new();
    m.extend_from_slice(q.get(..2)?);
    m.extend_from_slice(&[0x81, if found.is_some() { 0x80 } else { 0x83 }]);
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(q.get(12..question_end)?);
    for a in addrs {
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
        m.extend_from_slice(&a.octets());
    }
    Some(m)
}

/// Standard padded base64 (RFC 4648 §4), the tests' own: to check sift's
/// decoders against, and for Basic credentials.
pub fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let x = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            s.push(if k <= c.len() {
                A[((x >> (18 - 6 * k)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

/// A loopback port that refuses connections for as long as this value
/// lives: the socket is bound (so no other test or ephemeral connect can
/// take the port) but never listens, so a connect gets a reset at once.
/// Binding a listener and dropping it leaves the port free for any
/// parallel test to take, which turns "refused" into "accepted, then
/// reset" now and then.
pub struct RefusedPort {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

pub fn refused_port() -> RefusedPort {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("local address")
        .as_socket()
        .expect("inet address");
    RefusedPort {
        _socket: socket,
        addr,
    }
}

/// `sift run` without a config file (the dev default and its flags): free
/// loopback ports for the listener and the admin API are picked here and
/// passed as `--listen` and `--admin`; returns once `/readyz` answers 200.
pub struct DevSift {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl DevSift {
    pub async fn start(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> DevSift {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (addr, admin) = (free(), free());
        let child = Command::new(sift_bin())
            .arg("run")
            .args(["--listen", &addr.to_string(), "--admin", &admin.to_string()])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sift run");
        let s = DevSift { child, addr, admin };
        let ready = eventually(Duration::from_secs(20), || async {
            let req = Request::get(format!("http://{admin}/readyz"))
                .body(body::empty())
                .unwrap();
            matches!(
                tokio::time::timeout(Duration::from_secs(1), http1_client().request(req)).await,
                Ok(Ok(r)) if r.status() == 200
            )
        })
        .await;
        assert!(ready, "sift run {args:?} did not become ready");
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for DevSift {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
