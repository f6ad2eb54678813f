//! Accept loops and connections: per-listener connection cap, HTTP/1.1 and
//! HTTP/2 (chosen by ALPN on TLS; by the listener's protocol, or sniffed
//! for prior-knowledge HTTP/2 on plain TCP), header read timeout, idle
//! timeout, and graceful close when draining.
//!
//! Per request, the connection does as little as it can: no timer is armed
//! (the header read and idle timeouts are kept by one watcher task per
//! connection that samples counters), and the request future's allocation
//! is reused from one request to the next (see [`FutureSlot`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

use crate::config::file::DownstreamProtocol;
use crate::config::file::ProxyProtocolMode;
use crate::config::model::ListenerSpec;
use crate::drain::{Drain, Watch};
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;
use http::HeaderValue;

/// The listeners' accept loops, by name: what a reload adds, keeps, moves
/// or stops. A reload binds every new address before the new config is
/// published (a bind that fails rejects the reload, and the old config
/// keeps serving); then loops of listeners that are gone stop accepting
/// and their connections close gracefully, as on a drain.
pub struct Listeners {
    rt: tokio::runtime::Handle,
    drain: Drain,
    shared: Arc<Shared>,
    /// The sockets a `sift run --upgrade` can take over, when configured.
    handable: Option<Arc<crate::upgrade::Sockets>>,
    running: Mutex<Vec<Running>>,
}

struct Running {
    name: Arc<str>,
    configured: std::net::SocketAddr,
    /// A duplicate of the listening socket, for a reload that gives its
    /// address to a listener of another name.
    socket: std::net::TcpListener,
    stop: crate::drain::Stop,
}

/// What a reload does to the listeners, decided before it is published.
pub struct Plan {
    /// Sockets for listeners that are new, or whose name or address
    /// changed: (name, configured address, socket).
    start: Vec<(Arc<str>, std::net::SocketAddr, std::net::TcpListener)>,
    /// Running listeners that the new config does not keep as they are.
    stop: Vec<Arc<str>>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty()
    }
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners").finish()
    }
}

impl Listeners {
    pub fn new(
        rt: tokio::runtime::Handle,
        drain: Drain,
        shared: Arc<Shared>,
        handable: Option<Arc<crate::upgrade::Sockets>>,
    ) -> Arc<Listeners> {
        Arc::new(Listeners {
            rt,
            drain,
            shared,
            handable,
            running: Mutex::new(Vec::new()),
        })
    }

    /// Serve listener `name` on `socket` (bound, non-blocking).
    pub fn start(
        &self,
        name: Arc<str>,
        configured: std::net::SocketAddr,
        socket: std::net::TcpListener,
    ) -> std::io::Result<()> {
        let dup = socket.try_clone()?;
        let (stop, drain) = self.drain.child(&self.rt);
        let shared = self.shared.clone();
        let n = name.clone();
        self.rt.spawn(async move {
            match TcpListener::from_std(socket) {
                Ok(tcp) => serve(tcp, n, shared, drain).await,
                Err(e) => tracing::error!(listener = %n, error = %e, "listener not started"),
            }
        });
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Running {
                name,
                configured,
                socket: dup,
                stop,
            });
        Ok(())
    }

    /// Bind what `new` needs: a listener whose name and configured address
    /// are both running is kept; one whose address another running
    /// listener holds (a rename) takes a duplicate of that socket; any
    /// other address is bound now. Errors name the listener.
    pub fn prepare(
        &self,
        new: &crate::config::Config,
    ) -> Result<Plan, Vec<crate::config::ConfigError>> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut plan = Plan {
            start: Vec::new(),
            stop: Vec::new(),
        };
        let mut errs = Vec::new();
        let mut kept = vec![false; running.len()];
        for (i, l) in new.listeners.iter().enumerate() {
            let same = running
                .iter()
                .position(|r| *r.name == *l.name && r.configured == l.address);
            if let Some(j) = same {
                kept[j] = true;
                continue;
            }
            // Port 0 asks for a new port: never another listener's.
            let held = (l.address.port() != 0)
                .then(|| running.iter().find(|r| r.configured == l.address))
                .flatten();
            let socket = match held {
                Some(r) => r.socket.try_clone(),
                None => std::net::TcpListener::bind(l.address)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s)),
            };
            match socket {
                Ok(s) => plan.start.push((Arc::from(l.name.as_str()), l.address, s)),
                Err(e) => errs.push(crate::config::ConfigError {
                    path: format!("listeners[{i}].address"),
                    line: None,
                    message: format!(
                        "cannot bind listener {:?} on {}: {e}; the running config keeps serving",
                        l.name, l.address
                    ),
                }),
            }
        }
        for (r, k) in running.iter().zip(&kept) {
            if !k {
                plan.stop.push(r.name.clone());
            }
        }
        if errs.is_empty() { Ok(plan) } else { Err(errs) }
    }

    /// Carry out `plan` once the config it was made for is published.
    pub fn apply(&self, plan: Plan) {
        let mut stopped = Vec::new();
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.retain(|r| {
                let go = plan.stop.contains(&r.name);
                if go {
                    r.stop.stop();
                    stopped.push((r.name.clone(), r.configured));
                }
                !go
            });
        }
        for (name, configured) in stopped {
            if let Some(h) = &self.handable {
                h.remove(&name);
            }
            tracing::info!(listener = %name, address = %configured, "listener removed by a reload: no longer accepting; its connections close gracefully");
        }
        for (name, configured, socket) in plan.start {
            let local = socket.local_addr();
            if let (Some(h), Ok(local)) = (&self.handable, &local) {
                let info = crate::upgrade::SocketInfo {
                    listener: Some(name.to_string()),
                    configured,
                    local: *local,
                };
                if let Err(e) = h.add(info, &socket) {
                    tracing::warn!(listener = %name, error = %e, "upgrade: socket not offered");
                }
            }
            let address = local.map_or_else(|_| configured.to_string(), |a| a.to_string());
            match self.start(name.clone(), configured, socket) {
                Ok(()) => tracing::info!(listener = %name, %address, "listener added by a reload"),
                Err(e) => tracing::error!(listener = %name, error = %e, "listener not started"),
            }
        }
    }
}

/// Accept connections on `tcp` until draining begins.
pub async fn serve(tcp: TcpListener, name: Arc<str>, shared: Arc<Shared>, drain: Drain) {
    let local = tcp.local_addr().ok();
    let open = Arc::new(AtomicUsize::new(0));
    let per_client = Arc::new(PerClient::default());
    let mut watch = drain.watch();
    let metrics = shared.metrics.clone();
    let active = metrics.active_connections.with_label_values(&[&name]);
    let accepted = metrics.connections.with_label_values(&[&name]);
    let overflow = metrics.listener_overflow.with_label_values(&[&name]);
    let global_overflow = metrics.listener_global_overflow.with_label_values(&[&name]);
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
        // By name; a reload that just renamed this listener (its socket
        // carried over, this loop about to stop) by address, so a client
        // that connects meanwhile is served, not dropped.
        let found = match snap.listener_index(&name) {
            Some(i) => Some((i, name.clone())),
            None => local.and_then(|a| {
                let i = snap.config.listeners.iter().position(|l| l.address == a)?;
                Some((i, Arc::from(snap.listener(i)?.name.as_str())))
            }),
        };
        let Some((index, conn_name)) = found else {
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
        if let Some(max) = snap.config.overload.max_connections
            && shared.connections.load(Ordering::Relaxed) >= max
        {
            global_overflow.inc();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        if let Some(k) = &spec.tcp_keepalive
            && let Err(e) = k.apply(&stream)
        {
            tracing::debug!(listener = %name, error = %e, "tcp_keepalive not set");
        }
        let protocols = Protocols::for_listener(spec);
        let tls = snap.listener_tls.get(index).cloned().flatten();
        let handshake_timeout = spec.limits.header_read_timeout.0;
        let envoy = spec.serve == crate::config::file::Serve::Envoy;
        let proxy_protocol = spec.proxy_protocol;
        let per_client_max = spec.limits.max_connections_per_client;
        let tcp = spec.tcp.clone();
        drop(snap);
        accepted.inc();
        active.inc();
        open.fetch_add(1, Ordering::Relaxed);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let mut slot = ConnSlot {
            open: open.clone(),
            total: shared.connections.clone(),
            active: active.clone(),
            _token: drain.conn_token(),
            _client: None,
        };
        let (shared, watch, name) = (shared.clone(), drain.watch(), name.clone());
        let per_client = per_client_max.map(|_| per_client.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            let mut remote = remote;
            if proxy_protocol != ProxyProtocolMode::Off {
                let optional = proxy_protocol == ProxyProtocolMode::Optional;
                match crate::proxy_protocol::read(&mut stream, optional, handshake_timeout).await {
                    Ok(Some(crate::proxy_protocol::Header::Proxied { src, .. })) => remote = src,
                    Ok(_) => {}
                    Err(e) => {
                        shared
                            .metrics
                            .downstream_protocol_errors
                            .with_label_values(&[&name])
                            .inc();
                        tracing::debug!(listener = %name, %remote, error = %e, "PROXY protocol header refused");
                        return;
                    }
                }
            }
            // The client's own connections: counted once its address is
            // known (after a PROXY protocol header).
            if let (Some(map), Some(max)) = (&per_client, per_client_max) {
                match map.take(remote.ip(), max) {
                    Some(c) => slot._client = Some(c),
                    None => {
                        shared
                            .metrics
                            .listener_client_overflow
                            .with_label_values(&[&name])
                            .inc();
                        tracing::debug!(listener = %name, %remote, "client at max_connections_per_client");
                        return;
                    }
                }
            }
            let mut conn = ConnInfo {
                listener: conn_name,
                listener_index: index,
                remote,
                remote_ip: HeaderValue::try_from(remote.ip().to_string())
                    .unwrap_or(HeaderValue::from_static("unknown")),
                tls: false,
                tls_version: None,
                sni: None,
                identity: None,
                xfcc: None,
                envoy,
                slot: Some(Box::new(slot)),
            };
            let Some(tls) = tls else {
                if let Some(t) = tcp {
                    // Routes by server name: read the ClientHello's SNI
                    // (passthrough, the bytes stay in the socket).
                    let sni = if t.routes.is_empty() {
                        None
                    } else {
                        tokio::time::timeout(handshake_timeout, crate::tcp::peek_sni(&stream))
                            .await
                            .ok()
                            .flatten()
                    };
                    crate::tcp::serve(stream, conn, t, sni, shared).await;
                    return;
                }
                let proto = match protocols.mode {
                    DownstreamProtocol::Auto => {
                        let mut w = watch.clone();
                        let sniff = sniff_h2(&stream);
                        tokio::pin!(sniff);
                        let silent = tokio::time::sleep(protocols.idle_timeout);
                        tokio::select! {
                            h2 = &mut sniff => proto_of(h2),
                            // Silent for idle_timeout: closed.
                            _ = silent => return,
                            // Draining began between accept and the first
                            // bytes: the client may have sent its request
                            // already (closing now would reset it), so it
                            // gets the drain's grace to arrive, and is
                            // answered with `Connection: close`.
                            _ = w.signaled() => match tokio::time::timeout(DRAIN_GRACE, &mut sniff).await {
                                Ok(h2) => proto_of(h2),
                                Err(_) => return,
                            },
                        }
                    }
                    p => p,
                };
                serve_io(stream, &protocols, proto, Arc::new(conn), shared, watch).await;
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
            if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                m.tls_resumed_handshakes.with_label_values(&[&name]).inc();
            }
            conn.tls = true;
            conn.tls_version = session.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                _ => "other",
            });
            conn.sni = session
                .server_name()
                .map(|n| Arc::from(n.to_ascii_lowercase()));
            conn.xfcc = identity
                .as_ref()
                .and_then(|i| http::HeaderValue::from_str(&i.xfcc(loaded.own_uri.as_deref())).ok());
            conn.identity = identity;
            if let Some(t) = tcp {
                let sni = session.server_name().map(str::to_ascii_lowercase);
                crate::tcp::serve(stream, conn, t, sni, shared).await;
                return;
            }
            // HTTP/2 over TLS is negotiated by ALPN (RFC 9113 §3.2); a
            // client that offers no ALPN speaks the listener's protocol, and
            // HTTP/1.1 on an `auto` listener.
            let proto = match protocols.choose(session.alpn_protocol()) {
                DownstreamProtocol::Auto => DownstreamProtocol::H1,
                p => p,
            };
            serve_io(stream, &protocols, proto, Arc::new(conn), shared, watch).await;
        });
    }
    tracing::info!(listener = %name, "listener closed");
}

/// How a listener speaks HTTP on its connections, built once per accept
/// from the snapshot's listener spec.
struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    mode: DownstreamProtocol,
    /// HTTP/1.1: how long a started request head may take.
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_requests: Option<u64>,
    max_duration: Option<Duration>,
    send_timeout: Option<Duration>,
    drain_timeout: Duration,
}

impl Protocols {
    fn for_listener(spec: &ListenerSpec) -> Self {
        let head = spec.limits.max_header_bytes.0 as usize;
        let mut h1 = http1::Builder::new();
        // No codec timer: hyper would arm (and box) a header read timer per
        // request; the connection's watcher keeps that timeout instead.
        h1.keep_alive(true)
            // sift checks the head size itself (431 with x-sift-error); the
            // codec's own limits sit above it and only catch grossly larger heads.
            .max_buf_size((head * 2).max(16 * 1024))
            .max_headers(codec_max_headers(spec.limits.max_headers));
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(spec.limits.max_concurrent_streams)
            .max_header_list_size((head * 2).min(u32::MAX as usize) as u32)
            .keep_alive_interval(Some(spec.http2_keepalive.interval.0))
            .keep_alive_timeout(spec.http2_keepalive.timeout.0);
        Protocols {
            h1,
            h2,
            mode: spec.protocol,
            header_read_timeout: spec.limits.header_read_timeout.0,
            idle_timeout: spec.limits.idle_timeout.0,
            max_requests: spec.limits.max_requests_per_connection,
            max_duration: spec.limits.max_connection_duration.map(|d| d.0),
            send_timeout: spec.limits.send_timeout.map(|d| d.0),
            drain_timeout: spec.limits.drain_timeout.0,
        }
    }

    /// The protocol of a connection: ALPN's choice on TLS, else the
    /// listener's (`auto` sniffs the HTTP/2 preface).
    fn choose(&self, alpn: Option<&[u8]>) -> DownstreamProtocol {
        match alpn {
            Some(b"h2") => DownstreamProtocol::H2,
            Some(b"http/1.1") => DownstreamProtocol::H1,
            _ => self.mode,
        }
    }
}

/// The HTTP/1.1 codec's header count limit for a listener's `max_headers`.
/// Up to 100 the codec parses on the stack; above, it allocates two arrays
/// of that many entries per request (measured: about 1.4k instructions per
/// request). So it is 100 unless `max_headers` is larger (then twice it,
/// plus 8). sift's own check (431 with `x-sift-error`) fires first for
/// counts between `max_headers` and the codec's limit; beyond it the codec
/// answers a bare 431.
fn codec_max_headers(max_headers: usize) -> usize {
    if max_headers <= 100 {
        100
    } else {
        max_headers * 2 + 8
    }
}

/// A connection's place in its listener's count and in the drain. Freed when
/// the connection ends, or when the last tunnel (upgrade) made from it ends.
struct ConnSlot {
    open: Arc<AtomicUsize>,
    /// Every listener's (`overload.max_connections`).
    total: Arc<AtomicUsize>,
    active: prometheus::IntGauge,
    _token: crate::drain::ConnToken,
    _client: Option<ClientSlot>,
}

/// Open connections per client on one listener (`max_connections_per_client`).
/// An entry lives while its client has a connection open, so the map never
/// holds more entries than the listener has connections.
#[derive(Default)]
struct PerClient(Mutex<std::collections::HashMap<std::net::IpAddr, u32>>);

/// One open connection of a client; dropped with the connection.
struct ClientSlot {
    map: Arc<PerClient>,
    key: std::net::IpAddr,
}

impl PerClient {
    /// The client a connection from `ip` counts for: the IPv4 address
    /// (also when written IPv4-mapped), or an IPv6 address's /64, the
    /// block one host is usually given.
    fn key(ip: std::net::IpAddr) -> std::net::IpAddr {
        match ip.to_canonical() {
            std::net::IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                std::net::IpAddr::V6(bits.into())
            }
            v4 => v4,
        }
    }

    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: u32) -> Option<ClientSlot> {
        let key = PerClient::key(ip);
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            map: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.total.fetch_sub(1, Ordering::Relaxed);
        self.active.dec();
    }
}

/// Requests in flight on one connection, how many have started, and the
/// bytes read from it. No clock is read and no timer is armed per request:
/// the connection's watcher samples these.
#[derive(Default)]
struct Activity {
    inflight: AtomicUsize,
    started: AtomicU64,
    bytes_read: AtomicU64,
    /// Bytes written to the client, and whether the last write waited
    /// (the client is not reading): the watcher's send timeout.
    bytes_written: AtomicU64,
    write_blocked: std::sync::atomic::AtomicBool,
    /// Draining began: HTTP/1.1 answers say `Connection: close`.
    draining: std::sync::atomic::AtomicBool,
}

/// A request in flight on its connection; dropped when the response body
/// ends (it rides in the request's `Outcome`).
pub struct InflightGuard(Arc<Activity>);
impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Samples of a connection's activity per timeout.
const IDLE_TICKS: u32 = 4;

/// When draining begins (shutdown, or a successor took the sockets over),
/// every HTTP/1.1 answer from then on says `Connection: close`, and a
/// connection is closed only once it has given one, or has had nothing in
/// flight for this long: closing an idle connection at once would fail a
/// request the client has just sent on it (a connection accepted a moment
/// before, or a keep-alive connection it reuses), and closing after an
/// answer that did not say `close` would fail the client's next one.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Wait, after draining began, until a request started since has been
/// answered (with `Connection: close`), or `grace` passed with nothing in
/// flight.
async fn drain_grace(activity: &Activity, grace: Duration) {
    let started = activity.started.load(Ordering::Relaxed);
    let step = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    loop {
        let idle = activity.inflight.load(Ordering::Relaxed) == 0;
        if idle && (activity.started.load(Ordering::Relaxed) != started || waited >= grace) {
            return;
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
}

/// How the watcher ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Draining or idle: finish what is in flight, then close.
    Graceful(&'static str),
    /// A request head started and did not complete in time (slowloris):
    /// closed at once, without a response.
    HeadTimeout,
    /// The client read nothing of what sift had to send for the send
    /// timeout: closed at once.
    SendTimeout,
}

/// What a connection's watcher enforces.
struct WatchLimits {
    idle_timeout: Duration,
    head_timeout: Option<Duration>,
    max_duration: Option<Duration>,
    send_timeout: Option<Duration>,
}

/// A connection's watcher, in a task of its own so that the connection's
/// hot path never polls it. It resolves `close`:
/// - `Graceful` when draining begins, once the connection has had no
///   request in flight and none started for `idle_timeout`, or once it is
///   `max_duration` old;
/// - `HeadTimeout` (HTTP/1.1 only, `head_timeout` set) when bytes of a new
///   request have arrived but no request has started for `head_timeout`;
/// - `SendTimeout` (`send_timeout` set) when a write to the client has
///   waited and nothing was written for `send_timeout` (nginx's
///   `send_timeout`: a client that stopped reading its answer).
///
/// It samples every quarter of the shorter timeout, so an idle connection
/// closes between 1 and 1.25 × `idle_timeout` after its last response
/// ended, and a stalled head between 1 and 1.5 × `head_timeout` after its
/// first bytes.
async fn watch_conn(
    mut watch: Watch,
    activity: Arc<Activity>,
    limits: WatchLimits,
    grace: Option<Duration>,
    close: tokio::sync::oneshot::Sender<Close>,
) {
    let WatchLimits {
        idle_timeout,
        head_timeout,
        max_duration,
        send_timeout,
    } = limits;
    let born = std::time::Instant::now();
    let (mut written_seen, mut send_stall) = (0u64, Duration::ZERO);
    let shortest = [head_timeout, max_duration, send_timeout]
        .into_iter()
        .flatten()
        .fold(idle_timeout, Duration::min);
    let tick = (shortest / IDLE_TICKS).max(Duration::from_millis(1));
    // What the connection had done at the last sample with activity.
    let (mut started_seen, mut bytes_seen) = (0u64, 0u64);
    let mut was_busy = false;
    let (mut quiet, mut head_wait) = (Duration::ZERO, Duration::ZERO);
    let why = loop {
        tokio::select! {
            _ = watch.signaled() => {
                activity.draining.store(true, Ordering::Relaxed);
                if let Some(g) = grace {
                    drain_grace(&activity, g).await;
                }
                break Close::Graceful("drain");
            }
            _ = tokio::time::sleep(tick) => {}
        }
        if max_duration.is_some_and(|d| born.elapsed() >= d) {
            break Close::Graceful("max_duration");
        }
        if let Some(limit) = send_timeout {
            let written = activity.bytes_written.load(Ordering::Relaxed);
            if activity.write_blocked.load(Ordering::Relaxed) && written == written_seen {
                send_stall += tick;
                if send_stall > limit {
                    break Close::SendTimeout;
                }
            } else {
                (written_seen, send_stall) = (written, Duration::ZERO);
            }
        }
        let started = activity.started.load(Ordering::Relaxed);
        let bytes = activity.bytes_read.load(Ordering::Relaxed);
        if activity.inflight.load(Ordering::Relaxed) > 0 || started != started_seen {
            (started_seen, bytes_seen, was_busy) = (started, bytes, true);
            (quiet, head_wait) = (Duration::ZERO, Duration::ZERO);
            continue;
        }
        if was_busy {
            // The first quiet sample: bytes that came in with the request
            // that just ended (the tail of its body) are not a new head.
            (bytes_seen, was_busy) = (bytes, false);
        }
        quiet += tick;
        if bytes != bytes_seen {
            head_wait += tick;
        }
        if head_timeout.is_some_and(|h| head_wait > h) {
            break Close::HeadTimeout;
        }
        if quiet > idle_timeout {
            break Close::Graceful("idle_timeout");
        }
    };
    let _ = close.send(why);
}

/// Aborts the watcher when the connection ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The HTTP/2 client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a sniffed connection speaks.
fn proto_of(h2: bool) -> DownstreamProtocol {
    if h2 {
        DownstreamProtocol::H2
    } else {
        DownstreamProtocol::H1
    }
}

/// Prior-knowledge HTTP/2 on plain TCP: does the client's first data start
/// with the HTTP/2 preface? It peeks, so nothing is consumed. A client that
/// has sent only a prefix of the preface is checked again every 5 ms (the
/// caller bounds the wait).
async fn sniff_h2(tcp: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 24];
    loop {
        let n = match tcp.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where a [`Counted`] stream adds the bytes read from it (and, for a
/// connection's watcher, how its writes fare).
pub(crate) trait ReadCounter {
    fn add(&self, n: u64);
    /// `n` bytes were written.
    fn wrote(&self, _n: u64) {}
    /// A write or flush waited for the peer.
    fn blocked(&self) {}
}

impl ReadCounter for Arc<Activity> {
    fn add(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }
    fn wrote(&self, n: u64) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
        self.write_blocked.store(false, Ordering::Relaxed);
    }
    fn blocked(&self) {
        self.write_blocked.store(true, Ordering::Relaxed);
    }
}

impl ReadCounter for Arc<AtomicU64> {
    fn add(&self, n: u64) {
        self.fetch_add(n, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A byte stream that counts what is read from it: a connection's for
    /// the watcher's header read timeout, the TCP proxy's for its idle
    /// timeout and byte counts.
    pub(crate) struct Counted<I, C> {
        #[pin]
        inner: I,
        counter: C,
    }
}

impl<I, C> Counted<I, C> {
    pub(crate) fn new(inner: I, counter: C) -> Self {
        Counted { inner, counter }
    }
}

impl<I: AsyncRead, C: ReadCounter> AsyncRead for Counted<I, C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.counter.add(n as u64);
        }
        r
    }
}

/// Report a write's outcome to the counter.
fn wrote<C: ReadCounter>(c: &C, r: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
    match &r {
        Poll::Ready(Ok(n)) => c.wrote(*n as u64),
        Poll::Pending => c.blocked(),
        Poll::Ready(Err(_)) => {}
    }
    r
}

impl<I: AsyncWrite, C: ReadCounter> AsyncWrite for Counted<I, C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        wrote(this.counter, this.inner.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        wrote(this.counter, this.inner.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let r = this.inner.poll_flush(cx);
        if r.is_pending() {
            this.counter.blocked();
        }
        r
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// A request future's home on its connection. The request future is large
/// (a few KB: every stage of the pipeline), too large for the allocator's
/// fast per-size caches, so allocating and freeing one per request costs
/// more than the rest of the allocations of a request together. HTTP/1.1
/// serves one request at a time, so the connection keeps one allocation and
/// writes each request's future into it (`Pin::set`, safe code); requests
/// beyond the first in flight at once (HTTP/2) get their own.
struct FutureSlot<F> {
    home: Mutex<Option<Pin<Box<Option<F>>>>>,
}

impl<F: Future> FutureSlot<F> {
    fn new() -> Arc<Self> {
        Arc::new(FutureSlot {
            home: Mutex::new(None),
        })
    }

    /// The future `make` returns, in the connection's allocation (or a new
    /// one if it is taken). Made inside, so it can be written in place.
    fn place(self: &Arc<Self>, make: impl FnOnce() -> F) -> Reused<F> {
        let mut b = self
            .home
            .lock()
            .ok()
            .and_then(|mut h| h.take())
            .unwrap_or_else(|| Box::pin(None));
        b.as_mut().set(Some(make()));
        Reused {
            b: Some(b),
            slot: self.clone(),
        }
    }
}

/// A request future running in a reused allocation; gives the allocation
/// back when the future completes or is dropped.
struct Reused<F: Future> {
    b: Option<Pin<Box<Option<F>>>>,
    slot: Arc<FutureSlot<F>>,
}

impl<F: Future> Reused<F> {
    fn give_back(&mut self) {
        if let Some(mut b) = self.b.take() {
            b.as_mut().set(None);
            if let Ok(mut home) = self.slot.home.lock() {
                if home.is_none() {
                    *home = Some(b);
                }
            }
        }
    }
}

impl<F: Future> Future for Reused<F> {
    type Output = Result<F::Output, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Reused is Unpin: it holds only a Box and an Arc.
        let Some(fut) = self.b.as_mut().and_then(|b| b.as_mut().as_pin_mut()) else {
            // Polled after completion: hyper never does.
            return Poll::Pending;
        };
        let out = std::task::ready!(fut.poll(cx));
        self.give_back();
        Poll::Ready(Ok(out))
    }
}

impl<F: Future> Drop for Reused<F> {
    fn drop(&mut self) {
        self.give_back();
    }
}

pin_project_lite::pin_project! {
    /// One served connection, HTTP/1.1 (with upgrades) or HTTP/2.
    #[project = ConnProj]
    enum Conn<I, S>
    where
        S: hyper::service::HttpService<hyper::body::Incoming>,
    {
        H1 { #[pin] c: http1::UpgradeableConnection<I, S> },
        H2 { #[pin] c: http2::Connection<I, S, TokioExecutor> },
    }
}

/// Serve HTTP on one accepted connection (plain TCP or TLS) until it ends.
async fn serve_io<I>(
    io: I,
    protocols: &Protocols,
    proto: DownstreamProtocol,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    watch: Watch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let h1 = proto != DownstreamProtocol::H2;
    let io = TokioIo::new(Counted::new(io, activity.clone()));
    let slot = FutureSlot::new();
    // Told when the connection's request cap is reached.
    let capped = Arc::new(tokio::sync::Notify::new());
    let svc = {
        let (shared, conn, activity) = (shared.clone(), conn.clone(), activity.clone());
        let (capped, max) = (capped.clone(), protocols.max_requests);
        service_fn(move |req| {
            activity.inflight.fetch_add(1, Ordering::Relaxed);
            let n = activity.started.fetch_add(1, Ordering::Relaxed) + 1;
            if max == Some(n) {
                capped.notify_one();
            }
            // Dropped when the response body ends, not at the response head.
            let guard = InflightGuard(activity.clone());
            let (shared, conn, activity) = (shared.clone(), conn.clone(), activity.clone());
            slot.place(|| async move {
                let mut r = proxy::handle(shared, conn, req, Some(guard)).await;
                // Draining: an HTTP/1.1 client must not reuse the connection.
                if h1
                    && activity.draining.load(Ordering::Relaxed)
                    && r.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    r.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                r
            })
        })
    };
    let connection = if h1 {
        Conn::H1 {
            c: protocols.h1.serve_connection(io, svc).with_upgrades(),
        }
    } else {
        Conn::H2 {
            c: protocols.h2.serve_connection(io, svc),
        }
    };
    tokio::pin!(connection);
    let graceful = |c: Pin<&mut Conn<_, _>>| match c.project() {
        ConnProj::H1 { c } => c.graceful_shutdown(),
        ConnProj::H2 { c } => c.graceful_shutdown(),
    };
    let mut closing = false;
    let (close_tx, mut close_rx) = tokio::sync::oneshot::channel();
    // HTTP/2 learns of a drain by GOAWAY, which names the last stream
    // served: no grace needed. HTTP/1.1 gets [`DRAIN_GRACE`] in the watcher.
    let _watcher = if watch.is_signaled() && !h1 {
        graceful(connection.as_mut());
        closing = true;
        None
    } else {
        Some(AbortOnDrop(tokio::spawn(watch_conn(
            watch,
            activity,
            WatchLimits {
                idle_timeout: protocols.idle_timeout,
                head_timeout: h1.then_some(protocols.header_read_timeout),
                max_duration: protocols.max_duration,
                send_timeout: protocols.send_timeout,
            },
            h1.then_some(DRAIN_GRACE),
            close_tx,
        ))))
    };
    let closed = |reason: &str| {
        shared
            .metrics
            .connections_closed
            .with_label_values(&[&conn.listener, reason])
            .inc();
    };
    // Closing on sift's own limit: what is in flight gets drain_timeout.
    let mut cut: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let count_error = || {
        shared
            .metrics
            .downstream_protocol_errors
            .with_label_values(&[&conn.listener])
            .inc();
    };
    loop {
        tokio::select! {
            biased;
            r = std::future::poll_fn(|cx| match connection.as_mut().project() {
                ConnProj::H1 { c } => c.poll(cx),
                ConnProj::H2 { c } => c.poll(cx),
            }) => {
                if let Err(e) = r {
                    if !is_benign(&e) {
                        count_error();
                        tracing::debug!(listener = %conn.listener, remote = %conn.remote, error = %e, "connection error");
                    }
                }
                break;
            }
            why = &mut close_rx, if !closing => {
                let reason = match why {
                    Ok(Close::HeadTimeout) => {
                        // Slowloris: no response, the connection is dropped.
                        count_error();
                        closed("head_timeout");
                        tracing::debug!(listener = %conn.listener, remote = %conn.remote, "request head read timed out");
                        break;
                    }
                    Ok(Close::SendTimeout) => {
                        // The client reads nothing: its answer is cut.
                        closed("send_timeout");
                        tracing::debug!(listener = %conn.listener, remote = %conn.remote, "client read nothing for send_timeout");
                        break;
                    }
                    Ok(Close::Graceful(reason)) => reason,
                    Err(_) => "drain",
                };
                closed(reason);
                if reason == "max_duration" {
                    cut = Some(Box::pin(tokio::time::sleep(protocols.drain_timeout)));
                }
                graceful(connection.as_mut());
                closing = true;
            }
            _ = capped.notified(), if !closing && protocols.max_requests.is_some() => {
                closed("max_requests");
                cut = Some(Box::pin(tokio::time::sleep(protocols.drain_timeout)));
                graceful(connection.as_mut());
                closing = true;
            }
            _ = async { if let Some(c) = cut.as_mut() { c.as_mut().await } }, if cut.is_some() => {
                closed("drain_timeout");
                tracing::debug!(listener = %conn.listener, remote = %conn.remote, "requests still in flight after drain_timeout: connection cut");
                break;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_per_address_and_ipv6_per_64() {
        let map = Arc::new(PerClient::default());
        let a = "10.0.0.1".parse().unwrap();
        let mapped = "::ffff:10.0.0.1".parse().unwrap();
        let b = "2001:db8:1:2::1".parse().unwrap();
        let b_sibling = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other64 = "2001:db8:1:3::1".parse().unwrap();
        let s1 = map.take(a, 2).unwrap();
        let s2 = map.take(mapped, 2).unwrap();
        assert!(map.take(a, 2).is_none(), "a third from 10.0.0.1");
        let s3 = map.take(b, 1).unwrap();
        assert!(map.take(b_sibling, 1).is_none(), "same /64");
        let s4 = map.take(other64, 1).unwrap();
        assert_eq!(map.len(), 3);
        drop(s1);
        let s5 = map.take(a, 2).unwrap();
        drop((s2, s3, s4, s5));
        assert_eq!(map.len(), 0, "no entry outlives its connections");
    }
}
