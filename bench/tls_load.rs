//! A small TLS load generator for bench/tls-compare.sh (wrk cannot present
//! client certificates). Same code against every proxy, loopback only,
//! bounded in time.
//!
//!   cargo bench --bench tls_load -- MODE ADDR SECONDS CONNS CA [CERT KEY]
//!
//! MODE `keepalive`: CONNS connections, each sending requests back to back
//! (HTTP/1.1 over TLS); prints requests/s and p50/p99 latency.
//! MODE `handshake`: CONNS tasks, each opening a new TLS connection (full
//! handshake, resumption disabled) per request; prints handshakes/s.
//!
//! For load-independent counts (bench/tls-callgrind.sh), env
//! `TLS_LOAD_WARM=S` first runs S seconds of the same load, then pauses it,
//! runs the shell command `TLS_LOAD_MARK` (e.g. zero a profiler's counters)
//! and only then starts the measured SECONDS; at their end the load pauses
//! again and `TLS_LOAD_END` runs before any connection closes. The printed
//! figures cover the measured part only, so in keepalive mode no handshake
//! falls inside it.
//!
//! Requests are bodiless GETs to `/` unless env `TLS_LOAD_BODY=FILE` is set:
//! then every request is a POST whose body is the file's bytes, with
//! `content-type: text/plain` and a Content-Length (bench/filter-overhead.sh
//! with `MTLS=1`). `TLS_LOAD_PATH=/path` sets the request path (default `/`).
//! Either way an answer counts as a request only if its status is 2xx and its
//! body arrives whole; anything else counts as an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn config(ca: &str, cert: Option<&str>, key: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut cfg = match (cert, key) {
        (Some(c), Some(k)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(c)
                .expect("cert")
                .map(|c| c.expect("cert PEM"))
                .collect();
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(k).expect("key"))
                .expect("client cert")
        }
        _ => b.with_no_client_auth(),
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>;

/// What every request carries: its path and, if any, its body (then a POST).
struct Target {
    path: String,
    body: Option<bytes::Bytes>,
}

impl Target {
    fn from_env() -> Target {
        let path = std::env::var("TLS_LOAD_PATH").unwrap_or_else(|_| "/".to_string());
        let body = std::env::var("TLS_LOAD_BODY").ok().map(|f| {
            bytes::Bytes::from(std::fs::read(&f).unwrap_or_else(|e| {
                eprintln!("tls_load: TLS_LOAD_BODY {f}: {e}");
                std::process::exit(2);
            }))
        });
        Target { path, body }
    }

    fn request(&self) -> http::Request<Full<bytes::Bytes>> {
        let b = http::Request::builder()
            .uri(self.path.as_str())
            .header("host", "localhost");
        match &self.body {
            // An empty Full sends no body and no Content-Length, as the
            // Empty body did before the option existed.
            None => b.method("GET").body(Full::new(bytes::Bytes::new())),
            Some(body) => b
                .method("POST")
                .header("content-type", "text/plain")
                .header("content-length", body.len())
                .body(Full::new(body.clone())),
        }
        .expect("request")
    }
}

async fn connect(addr: &str, cfg: Arc<rustls::ClientConfig>) -> Option<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").ok()?, tcp)
        .await
        .ok()?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

async fn one(send: &mut Sender, target: &Target) -> bool {
    match send.send_request(target.request()).await {
        Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// Run the shell command in env var `var`, if set, and wait for it.
fn hook(var: &str) {
    if let Ok(cmd) = std::env::var(var) {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("tls_load: {var} command failed: {cmd}");
            std::process::exit(1);
        }
    }
}

/// Pause the load: set `pause` and wait until no request is in flight.
async fn quiesce(pause: &AtomicBool, busy: &AtomicUsize) {
    pause.store(true, Ordering::SeqCst);
    while busy.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn main() {
    let a: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if a.len() < 5 {
        eprintln!("usage: tls_load MODE ADDR SECONDS CONNS CA [CERT KEY]");
        std::process::exit(2);
    }
    let (mode, addr) = (a[0].clone(), a[1].clone());
    let secs: u64 = a[2].parse().expect("seconds");
    let conns: usize = a[3].parse().expect("conns");
    let warm: u64 = std::env::var("TLS_LOAD_WARM")
        .ok()
        .map(|s| s.parse().expect("TLS_LOAD_WARM: seconds"))
        .unwrap_or(0);
    let cfg = config(
        &a[4],
        a.get(5).map(String::as_str),
        a.get(6).map(String::as_str),
    );
    let target = Arc::new(Target::from_env());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let lat = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
        // Warm-up pause: requests wait while `pause` is set; `busy` counts
        // those in flight; `epoch` tells tasks to forget warm-up latencies.
        let pause = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicUsize::new(0));
        let epoch = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (stop, ok, errors, lat, cfg, addr, mode) = (
                stop.clone(),
                ok.clone(),
                errors.clone(),
                lat.clone(),
                cfg.clone(),
                addr.clone(),
                mode.clone(),
            );
            let (pause, busy, epoch) = (pause.clone(), busy.clone(), epoch.clone());
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let mut local = Vec::new();
                let mut seen = 0;
                let mut keep: Option<Sender> = None;
                while !stop.load(Ordering::Relaxed) {
                    busy.fetch_add(1, Ordering::SeqCst);
                    if pause.load(Ordering::SeqCst) {
                        busy.fetch_sub(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let e = epoch.load(Ordering::SeqCst);
                    if e != seen {
                        local.clear();
                        seen = e;
                    }
                    let t = Instant::now();
                    if mode == "handshake" || keep.is_none() {
                        keep = connect(&addr, cfg.clone()).await;
                    }
                    let good = match keep.as_mut() {
                        Some(s) => one(s, &target).await,
                        None => false,
                    };
                    if good {
                        ok.fetch_add(1, Ordering::Relaxed);
                        local.push(t.elapsed().as_micros() as u32);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        keep = None;
                    }
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
                lat.lock().expect("lock").extend(local);
            }));
        }
        if warm > 0 {
            tokio::time::sleep(Duration::from_secs(warm)).await;
            quiesce(&pause, &busy).await;
            hook("TLS_LOAD_MARK");
            ok.store(0, Ordering::SeqCst);
            errors.store(0, Ordering::SeqCst);
            epoch.store(1, Ordering::SeqCst);
            pause.store(false, Ordering::SeqCst);
        }
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let elapsed;
        if warm > 0 {
            quiesce(&pause, &busy).await;
            elapsed = start.elapsed().as_secs_f64();
            hook("TLS_LOAD_END");
            eprintln!(
                "tls_load: {} requests in {elapsed:.3} s after {warm} s of warm-up",
                ok.load(Ordering::SeqCst)
            );
        } else {
            elapsed = start.elapsed().as_secs_f64();
        }
        let (done, failed) = (ok.load(Ordering::SeqCst), errors.load(Ordering::SeqCst));
        stop.store(true, Ordering::Relaxed);
        pause.store(false, Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
        let mut l = lat.lock().expect("lock").clone();
        l.sort_unstable();
        let q = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        println!(
            "{} {:.0} {:.3} {:.3} {}",
            mode,
            done as f64 / elapsed,
            q(0.50),
            q(0.99),
            failed
        );
    });
}
