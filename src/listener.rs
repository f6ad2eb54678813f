//! Accept loops and connections: per-listener connection cap, HTTP/1.1 and
//! HTTP/2 (auto-detected, prior knowledge on plain TCP), header read timeout,
//! idle timeout, and graceful close when draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::file::DownstreamProtocol;
use crate::config::model::ListenerSpec;
use crate::drain::{Drain, Watch};
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;
use http::HeaderValue;

/// Accept connections on `tcp` until draining begins.
pub async fn serve(tcp: TcpListener, name: Arc<str>, shared: Arc<Shared>, drain: Drain) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut watch = drain.watch();
    let metrics = shared.metrics.clone();
    let active = metrics.active_connections.with_label_values(&[&name]);
    let accepted = metrics.connections.with_label_values(&[&name]);
    let overflow = metrics.listener_overflow.with_label_values(&[&name]);
    loop {
        let (stream, remote) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = watch.signaled() => break,
        };
        let snap = shared.snapshot.load();
        let Some(index) = snap.listener_index(&name) else {
            continue;
        };
        let Some(spec) = snap.listener(index) else {
            continue;
        };
        if open.load(Ordering::Relaxed) >= spec.limits.max_connections {
            overflow.inc();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let builder = builder_for(spec);
        let idle_timeout = spec.limits.idle_timeout.0;
        let tls = snap.listener_tls.get(index).cloned().flatten();
        let handshake_timeout = spec.limits.header_read_timeout.0;
        drop(snap);
        accepted.inc();
        active.inc();
        open.fetch_add(1, Ordering::Relaxed);
        let slot = ConnSlot {
            open: open.clone(),
            active: active.clone(),
            _token: drain.conn_token(),
        };
        let (shared, watch, name) = (shared.clone(), drain.watch(), name.clone());
        tokio::spawn(async move {
            let mut conn = ConnInfo {
                listener: name.clone(),
                listener_index: index,
                remote,
                remote_ip: HeaderValue::try_from(remote.ip().to_string())
                    .unwrap_or(HeaderValue::from_static("unknown")),
                tls: false,
                identity: None,
                xfcc: None,
                slot: Some(Box::new(slot)),
            };
            let Some(tls) = tls else {
                let io = TokioIo::new(stream);
                serve_io(io, builder, idle_timeout, Arc::new(conn), shared, watch).await;
                return;
            };
            // The handshake runs here, in the connection's own task: a flood
            // of failing handshakes never holds up the accept loop.
            let loaded = tls.current();
            let acceptor = tokio_rustls::TlsAcceptor::from(loaded.config.clone());
            let m = shared.metrics.clone();
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let reason = crate::tls::failure_reason(&e);
                    m.tls_handshake_failures
                        .with_label_values(&[&name, reason])
                        .inc();
                    tracing::debug!(listener = %name, %remote, reason, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    m.tls_handshake_failures
                        .with_label_values(&[&name, "timeout"])
                        .inc();
                    return;
                }
            };
            let (_, session) = stream.get_ref();
            let identity = session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| crate::tls::Identity::from_der(leaf.as_ref()));
            let peer = identity.as_ref().map_or("none", |i| i.metric_label());
            m.tls_handshakes.with_label_values(&[&name, peer]).inc();
            conn.tls = true;
            conn.xfcc = identity
                .as_ref()
                .and_then(|i| http::HeaderValue::from_str(&i.xfcc(loaded.own_uri.as_deref())).ok());
            conn.identity = identity;
            let io = TokioIo::new(stream);
            serve_io(io, builder, idle_timeout, Arc::new(conn), shared, watch).await;
        });
    }
    tracing::info!(listener = %name, "listener closed");
}

fn builder_for(spec: &ListenerSpec) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let head = spec.limits.max_header_bytes.0 as usize;
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(spec.limits.header_read_timeout.0)
        .keep_alive(true)
        // sift checks the head size itself (431 with x-sift-error); the
        // codec's own limits sit above it and only catch grossly larger heads.
        .max_buf_size((head * 2).max(16 * 1024))
        .max_headers(spec.limits.max_headers * 2 + 8);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(spec.limits.max_concurrent_streams)
        .max_header_list_size((head * 2).min(u32::MAX as usize) as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    match spec.protocol {
        DownstreamProtocol::H1 => b.http1_only(),
        DownstreamProtocol::H2 => b.http2_only(),
        DownstreamProtocol::Auto => b,
    }
}

/// A connection's place in its listener's count and in the drain. Freed when
/// the connection ends, or when the last tunnel (upgrade) made from it ends.
struct ConnSlot {
    open: Arc<AtomicUsize>,
    active: prometheus::IntGauge,
    _token: crate::drain::ConnToken,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.active.dec();
    }
}

/// Requests in flight on one connection, and how many have started. No
/// clock is read per request: the connection's watcher samples these.
#[derive(Default)]
struct Activity {
    inflight: AtomicUsize,
    started: AtomicU64,
}

struct InflightGuard(Arc<Activity>);
impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Checks of a connection's activity per `idle_timeout`.
const IDLE_TICKS: u32 = 4;

/// A connection's watcher, in a task of its own so that the connection's
/// hot path never polls it: resolves `close` when draining begins, or once
/// the connection has had no request in flight and none started for
/// `idle_timeout`. It samples the activity every `idle_timeout / 4` and
/// needs five quiet samples in a row, so an idle connection closes between
/// 1 and 1.25 × `idle_timeout` after its last response ended.
async fn watch_conn(
    mut watch: Watch,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    close: tokio::sync::oneshot::Sender<()>,
) {
    let tick = (idle_timeout / IDLE_TICKS).max(Duration::from_millis(1));
    let mut seen = u64::MAX;
    let mut quiet = 0;
    loop {
        tokio::select! {
            _ = watch.signaled() => break,
            _ = tokio::time::sleep(tick) => {
                let started = activity.started.load(Ordering::Relaxed);
                if activity.inflight.load(Ordering::Relaxed) == 0 && started == seen {
                    quiet += 1;
                    if quiet > IDLE_TICKS {
                        break;
                    }
                } else {
                    quiet = 0;
                    seen = started;
                }
            }
        }
    }
    let _ = close.send(());
}

/// Aborts the watcher when the connection ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serve HTTP on one accepted connection (plain TCP or TLS) until it ends.
async fn serve_io<I>(
    io: TokioIo<I>,
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    watch: Watch,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let svc = {
        let (shared, conn, activity) = (shared.clone(), conn.clone(), activity.clone());
        service_fn(move |req| {
            activity.inflight.fetch_add(1, Ordering::Relaxed);
            activity.started.fetch_add(1, Ordering::Relaxed);
            // Dropped when the response body ends, not at the response head.
            let guard: Box<dyn Send> = Box::new(InflightGuard(activity.clone()));
            // Boxed: the request future is large, and hyper moves the
            // service's future into its own slot (a copy of all of it).
            // (4.5 KB measured in an optimised build; was 5.5 KB before the
            // filter and connect awaits were boxed).
            let fut = Box::pin(proxy::handle(
                shared.clone(),
                conn.clone(),
                req,
                Some(guard),
            ));
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        })
    };
    let connection = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(connection);
    let mut closing = false;
    let (close_tx, mut close_rx) = tokio::sync::oneshot::channel();
    let _watcher = if watch.is_signaled() {
        connection.as_mut().graceful_shutdown();
        closing = true;
        None
    } else {
        Some(AbortOnDrop(tokio::spawn(watch_conn(
            watch,
            activity,
            idle_timeout,
            close_tx,
        ))))
    };
    loop {
        tokio::select! {
            biased;
            r = connection.as_mut() => {
                if let Err(e) = r {
                    if !is_benign(&*e) {
                        shared
                            .metrics
                            .downstream_protocol_errors
                            .with_label_values(&[&conn.listener])
                            .inc();
                        tracing::debug!(listener = %conn.listener, remote = %conn.remote, error = %e, "connection error");
                    }
                }
                break;
            }
            _ = &mut close_rx, if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Errors that are a client simply going away, not a protocol fault.
fn is_benign(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return true;
            }
            if h.is_timeout() || h.is_parse() || h.is_parse_too_large() {
                return false;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            // Interrupted: closed by idle timeout or drain before a request.
            if matches!(
                io.kind(),
                ConnectionReset | BrokenPipe | UnexpectedEof | Interrupted
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}
