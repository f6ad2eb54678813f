//! The upstream connection pool: one per cluster, idle connections kept per
//! endpoint, built on `hyper::client::conn` directly.
//!
//! - **HTTP/1.1**: a connection carries one request at a time. It goes back
//!   to its endpoint's idle list when the response body has ended (not when
//!   the head arrives), so a checkout never waits behind a response still
//!   streaming. Idle lists are LIFO (the warmest connection first), capped at
//!   `max_idle_per_endpoint`, and entries idle longer than `idle_timeout` are
//!   closed (on checkout, on checkin, and by a sweeper task while the pool
//!   lives). A request that a reused connection could not even start (the
//!   server closed it while it sat idle) is sent again on a fresh
//!   connection, as hyper-util's pool does; anything else is the caller's
//!   to retry under the route's policy.
//! - **HTTP/2**: one multiplexed connection per endpoint, shared by every
//!   request, replaced when it closes.
//!
//! Compared with hyper-util's pooled client this spawns no task per request
//! and does no keyed map lookup: the endpoint index selects the list.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;

use crate::body::Body;
use crate::config::file::UpstreamProtocol;
use crate::config::model::Endpoint;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (TCP, TLS or HTTP/2 handshake).
    #[error("connect: {0}")]
    Connect(String),
    /// The connection failed while the request or response was in flight.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// The upstream took the request unprocessed (RFC 9113 §8.7): an
    /// HTTP/2 stream reset with `REFUSED_STREAM`, or past the last stream
    /// a graceful GOAWAY lets finish (h2 gives streams it let finish no
    /// GOAWAY error; an error GOAWAY can also end those, so only
    /// `NO_ERROR` counts). Safe to send again whatever the method.
    pub fn unprocessed(&self) -> bool {
        let SendError::Http(e) = self else {
            return false;
        };
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(h2) = s.downcast_ref::<h2::Error>() {
                return h2.is_remote()
                    && match h2.reason() {
                        Some(h2::Reason::REFUSED_STREAM) => h2.is_reset(),
                        Some(h2::Reason::NO_ERROR) => h2.is_go_away(),
                        _ => false,
                    };
            }
            source = s.source();
        }
        false
    }
}

/// Static settings of a cluster's pool.
pub struct PoolConfig {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    /// With TLS: the client (its files watched) and the SNI override.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// The top-level `dns.resolvers`, when set: names are looked up there
    /// instead of by the system's resolver.
    pub resolver: Option<crate::dns::ResolverSpec>,
    /// Close a connection after this many requests (Envoy's
    /// `max_requests_per_connection`).
    pub max_requests_per_connection: Option<u32>,
    /// Close a connection once it is this old (Envoy's
    /// `max_connection_duration`): it takes no new request after.
    pub max_connection_duration: Option<Duration>,
    pub tcp_keepalive: Option<crate::config::model::TcpKeepalive>,
    pub http2_keepalive: Option<crate::config::model::Http2Keepalive>,
    /// Counts requests sent again after a reused connection closed
    /// unanswered (`sift_retries_total{outcome="stale_connection"}`).
    pub resent: Option<prometheus::IntCounter>,
}

struct Idle {
    send: http1::SendRequest<Body>,
    since: Instant,
    /// Requests sent on it so far, and when it was opened.
    uses: u32,
    born: Instant,
    head: Vec<u8>,
}

/// An HTTP/1.1 connection out of the pool, with its count and age, and
/// room for a copy of the head of the request it carries ([`Head`]).
struct H1 {
    send: http1::SendRequest<Body>,
    uses: u32,
    born: Instant,
    head: Vec<u8>,
}

/// A reused connection idle at least this long may have met the app's
/// keep-alive timeout (no server closes idle connections sooner): its
/// request's head is kept to go again.
const RACE_IDLE: Duration = Duration::from_millis(1);

/// A copy of the head of a request that may go again (a bodiless request
/// with an idempotent method; an upgrade's GET too: the new connection
/// answers it, and is the one upgraded), kept in the
/// connection's own buffer as length-prefixed bytes: its path, then each
/// field's name and value. Cheaper per request than a cloned `HeaderMap`
/// (no allocation once the buffer has grown; cloning the map cost about
/// 1,460 instructions per GET, measured); read back only when needed.
struct Head;

impl Head {
    /// Fill `buf` from `req`; false (and `buf` empty) when `req` may not
    /// go again.
    fn keep(req: &Request<Body>, buf: &mut Vec<u8>) -> bool {
        use http::Method;
        use http_body::Body as _;
        buf.clear();
        let again = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        ) && req.body().is_end_stream();
        if again {
            let put = |buf: &mut Vec<u8>, b: &[u8]| {
                buf.extend_from_slice(&(b.len() as u32).to_ne_bytes());
                buf.extend_from_slice(b);
            };
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            put(buf, pq.as_bytes());
            for (n, v) in req.headers() {
                put(buf, n.as_str().as_bytes());
                put(buf, v.as_bytes());
            }
        }
        again
    }

    /// The request `buf` holds, bodiless.
    fn request(method: http::Method, version: http::Version, buf: &[u8]) -> Option<Request<Body>> {
        let mut rest = buf;
        let mut take = || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_ne_bytes(*len) as usize;
            let (b, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(b)
        };
        let mut r = Request::new(crate::body::empty());
        *r.method_mut() = method;
        *r.version_mut() = version;
        *r.uri_mut() = http::Uri::try_from(take()?).ok()?;
        while let Some(n) = take() {
            let n = http::HeaderName::from_bytes(n).ok()?;
            let v = http::HeaderValue::from_bytes(take()?).ok()?;
            r.headers_mut().append(n, v);
        }
        Some(r)
    }
}

/// The connection ended (closed, reset, or its task gone) before an answer
/// began: not a malformed answer, which is the upstream's to own.
fn closed_unanswered(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

#[derive(Default)]
struct Slot {
    /// HTTP/1.1 idle connections, oldest first.
    idle: VecDeque<Idle>,
    /// The HTTP/2 connection, the streams opened on it, and when it was
    /// opened.
    h2: Option<http2::SendRequest<Body>>,
    h2_uses: u32,
    h2_born: Option<Instant>,
}

pub struct Pool {
    cfg: PoolConfig,
    slots: Vec<Mutex<Slot>>,
    /// HTTP/2: one connect at a time per endpoint, so a burst of first
    /// requests shares one new connection.
    h2_connect: Vec<tokio::sync::Mutex<()>>,
    sweeper: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.slots.len())
            .finish()
    }
}

impl Pool {
    pub fn new(cfg: PoolConfig, endpoints: usize) -> Arc<Pool> {
        Arc::new(Pool {
            cfg,
            slots: (0..endpoints).map(|_| Mutex::default()).collect(),
            h2_connect: (0..endpoints)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            sweeper: AtomicBool::new(false),
        })
    }

    /// The TLS client, when the cluster originates TLS.
    pub fn tls(&self) -> Option<&Arc<crate::tls::UpstreamTls>> {
        self.cfg.tls.as_ref()
    }

    /// Idle HTTP/1.1 connections to endpoint `index` (for tests and the
    /// admin view).
    pub fn idle(&self, index: usize) -> usize {
        self.slots
            .get(index)
            .and_then(|s| s.lock().ok().map(|s| s.idle.len()))
            .unwrap_or(0)
    }

    /// Send `req` (an absolute URI naming the endpoint) to endpoint `index`.
    pub async fn send(
        self: &Arc<Self>,
        index: usize,
        endpoint: &Endpoint,
        req: Request<Body>,
    ) -> Result<http::Response<Body>, SendError> {
        match self.cfg.protocol {
            UpstreamProtocol::Http1 => self.send_h1(index, endpoint, req).await,
            UpstreamProtocol::Http2 => self.send_h2(index, endpoint, req).await,
            UpstreamProtocol::Client if req.version() == http::Version::HTTP_2 => {
                self.send_h2(index, endpoint, req).await
            }
            UpstreamProtocol::Client => self.send_h1(index, endpoint, req).await,
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        index: usize,
        endpoint: &Endpoint,
        mut req: Request<Body>,
    ) -> Result<http::Response<Body>, SendError> {
        // HTTP/1.1 requests carry the origin form; Host is already set.
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = http::Uri::from(pq);
        }
        let mut req = req;
        // After a resend, only a new connection: the pooled ones may be as
        // stale as the one that just failed.
        let mut fresh = false;
        loop {
            let pooled = if fresh {
                None
            } else {
                self.checkout(index).await
            };
            let (mut conn, idle_for) = match pooled {
                Some((c, idle_for)) => (c, Some(idle_for)),
                // Boxed: connecting (TCP, TLS) is a large, rare await state.
                None => (
                    H1 {
                        send: Box::pin(self.connect_h1(endpoint)).await?,
                        uses: 0,
                        born: Instant::now(),
                        head: Vec::new(),
                    },
                    None,
                ),
            };
            let reused = idle_for.is_some();
            // The head of a request that may go again if the reused
            // connection closes before answering. Only a connection that
            // sat idle can meet an app's keep-alive timeout: one reused
            // within RACE_IDLE of its last answer (a busy one) is not
            // copied for (that copy is most of this path's cost).
            let again = (idle_for.is_some_and(|d| d >= RACE_IDLE)
                && Head::keep(&req, &mut conn.head))
            .then(|| (req.method().clone(), req.version()));
            match conn.send.try_send_request(req).await {
                Ok(resp) => {
                    conn.uses += 1;
                    let (parts, body) = resp.into_parts();
                    let body = Returning {
                        inner: body,
                        home: Some((Arc::downgrade(self), index, conn)),
                    };
                    return Ok(http::Response::from_parts(parts, crate::body::boxed(body)));
                }
                Err(mut e) => match (e.take_message(), again) {
                    // Never written: a stale pooled connection. Go again on
                    // a new one (once: a fresh connection is not retried).
                    (Some(r), _) if reused => req = r,
                    // Written, and the connection closed (or was reset)
                    // before any answer: the server let it go as it came,
                    // its keep-alive timeout or a restart racing the
                    // request. A bodiless idempotent request goes once
                    // more on a new connection (RFC 9110 §9.2.2), as nginx
                    // does for a kept-alive connection and Go's client.
                    (None, Some((method, version))) if closed_unanswered(e.error()) => {
                        let Some(r) = Head::request(method, version, &conn.head) else {
                            return Err(SendError::Http(e.into_error()));
                        };
                        if let Some(c) = &self.cfg.resent {
                            c.inc();
                        }
                        tracing::debug!(error = %e.error(), "reused upstream connection closed unanswered: sent again");
                        req = r;
                        fresh = true;
                    }
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// A ready idle connection to endpoint `index`, if any, and how long
    /// it sat idle.
    async fn checkout(&self, index: usize) -> Option<(H1, Duration)> {
        loop {
            let idle = {
                let mut slot = self.slots.get(index)?.lock().ok()?;
                slot.idle.pop_back()?
            };
            let idle_for = idle.since.elapsed();
            if idle_for >= self.cfg.idle_timeout
                || idle.send.is_closed()
                || self.worn(idle.uses, idle.born)
            {
                continue;
            }
            let mut send = idle.send;
            // Usually ready at once; a response that just ended may need the
            // connection task to run once more.
            if send.ready().await.is_ok() {
                let conn = H1 {
                    send,
                    uses: idle.uses,
                    born: idle.born,
                    head: idle.head,
                };
                return Some((conn, idle_for));
            }
        }
    }

    /// A connection that has served `max_requests_per_connection`, or is
    /// `max_connection_duration` old, takes no new request.
    fn worn(&self, uses: u32, born: Instant) -> bool {
        self.cfg
            .max_requests_per_connection
            .is_some_and(|m| uses >= m)
            || self
                .cfg
                .max_connection_duration
                .is_some_and(|d| born.elapsed() >= d)
    }

    fn checkin(self: &Arc<Self>, index: usize, conn: H1) {
        let H1 {
            send,
            uses,
            born,
            mut head,
        } = conn;
        // One request with a huge head does not keep its room for good.
        if head.capacity() > 8192 {
            head = Vec::new();
        }
        // A worn connection is dropped here: hyper closes it.
        if send.is_closed() || self.cfg.max_idle_per_endpoint == 0 || self.worn(uses, born) {
            return;
        }
        let now = Instant::now();
        let Some(Ok(mut slot)) = self.slots.get(index).map(Mutex::lock) else {
            return;
        };
        prune(&mut slot.idle, now, self.cfg.idle_timeout);
        if slot.idle.len() >= self.cfg.max_idle_per_endpoint {
            slot.idle.pop_front();
        }
        slot.idle.push_back(Idle {
            send,
            since: now,
            uses,
            born,
            head,
        });
        drop(slot);
        self.start_sweeper();
    }

    /// Take over `old`'s idle connections to its endpoint `j` as this
    /// pool's endpoint `i` (the same address, the same transport): a
    /// rebuilt cluster keeps its warm connections. Returns how many.
    pub fn adopt(self: &Arc<Self>, i: usize, old: &Pool, j: usize) -> usize {
        let (Some(to), Some(from)) = (self.slots.get(i), old.slots.get(j)) else {
            return 0;
        };
        let (Ok(mut to), Ok(mut from)) = (to.lock(), from.lock()) else {
            return 0;
        };
        let now = Instant::now();
        prune(&mut from.idle, now, self.cfg.idle_timeout);
        let mut n = 0;
        while let Some(c) = from.idle.pop_back() {
            if to.idle.len() >= self.cfg.max_idle_per_endpoint {
                break;
            }
            if !c.send.is_closed() {
                to.idle.push_front(c);
                n += 1;
            }
        }
        if to.h2.is_none() {
            if let Some(h2) = from.h2.clone().filter(|h| !h.is_closed()) {
                to.h2 = Some(h2);
                (to.h2_uses, to.h2_born) = (from.h2_uses, from.h2_born);
                n += 1;
            }
        }
        drop((to, from));
        if n > 0 {
            self.start_sweeper();
        }
        n
    }

    /// Close idle connections past `idle_timeout` even when no request
    /// comes to do it: a task per pool, ending with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.sweeper.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        let every = (self.cfg.idle_timeout / 2).max(Duration::from_millis(100));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { return };
                let now = Instant::now();
                for s in &pool.slots {
                    if let Ok(mut s) = s.lock() {
                        prune(&mut s.idle, now, pool.cfg.idle_timeout);
                    }
                }
            }
        });
    }

    async fn send_h2(
        &self,
        index: usize,
        endpoint: &Endpoint,
        req: Request<Body>,
    ) -> Result<http::Response<Body>, SendError> {
        let mut send = self.shared_h2(index, endpoint, false).await?;
        let req = match send.ready().await {
            Ok(()) => match send.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(crate::body::boxed)),
                Err(mut e) => match e.take_message() {
                    Some(r) => r,
                    None => return Err(SendError::Http(e.into_error())),
                },
            },
            // Closing (a GOAWAY, a lost peer) before it could take it.
            Err(_) => req,
        };
        // Never sent: the shared connection went away first. Once more on
        // a new one, as for a stale HTTP/1.1 connection.
        let mut send = self.shared_h2(index, endpoint, true).await?;
        send.ready().await?;
        let resp = send.send_request(req).await?;
        Ok(resp.map(crate::body::boxed))
    }

    /// Endpoint `index`'s shared HTTP/2 connection, counted; one past its
    /// limits is let go (its streams in flight finish, then hyper closes
    /// it). `fresh`: a new one in any case, replacing the shared one.
    async fn shared_h2(
        &self,
        index: usize,
        endpoint: &Endpoint,
        fresh: bool,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        let cached = || {
            let mut slot = self.slots.get(index)?.lock().ok()?;
            let born = slot.h2_born?;
            if fresh
                || slot.h2.as_ref().is_none_or(|s| s.is_closed())
                || self.worn(slot.h2_uses, born)
            {
                slot.h2 = None;
                return None;
            }
            slot.h2_uses += 1;
            slot.h2.clone()
        };
        if let Some(s) = cached() {
            return Ok(s);
        }
        let Some(gate) = self.h2_connect.get(index) else {
            return Err(SendError::Connect("no such endpoint".into()));
        };
        let _gate = gate.lock().await;
        // Another request may have connected while this one waited.
        if let Some(s) = (!fresh).then(cached).flatten() {
            return Ok(s);
        }
        let s = Box::pin(self.connect_h2(endpoint)).await?;
        if let Some(Ok(mut slot)) = self.slots.get(index).map(Mutex::lock) {
            slot.h2 = Some(s.clone());
            slot.h2_uses = 1;
            slot.h2_born = Some(Instant::now());
        }
        Ok(s)
    }

    /// A health probe: connect (TCP, and TLS when the cluster has it), then
    /// close. Not pooled.
    pub async fn probe_connect(&self, endpoint: &Endpoint) -> Result<(), SendError> {
        self.connect_io(endpoint, Alpn::Cluster).await.map(drop)
    }

    /// A health probe: `req` on a fresh connection (not pooled, closed after
    /// the answer's head); the answer's status.
    pub async fn probe_request(
        &self,
        endpoint: &Endpoint,
        req: Request<Body>,
    ) -> Result<http::StatusCode, SendError> {
        Ok(self.probe_exchange(endpoint, req).await?.status())
    }

    /// A health probe on a fresh connection: the whole answer (its body
    /// is the caller's to read, or to drop).
    pub async fn probe_exchange(
        &self,
        endpoint: &Endpoint,
        req: Request<Body>,
    ) -> Result<http::Response<Incoming>, SendError> {
        match self.cfg.protocol {
            UpstreamProtocol::Http1 | UpstreamProtocol::Client => {
                let mut send = self.connect_h1(endpoint).await?;
                Ok(send.send_request(req).await?)
            }
            UpstreamProtocol::Http2 => {
                let mut send = self.connect_h2(endpoint).await?;
                Ok(send.send_request(req).await?)
            }
        }
    }

    /// A connection to `endpoint`: TCP, then the cluster's TLS (offering
    /// by ALPN what `alpn` says).
    pub async fn connect_io(&self, endpoint: &Endpoint, alpn: Alpn) -> Result<Io, SendError> {
        let connect = async {
            if let Some(a) = endpoint.addr {
                return tokio::net::TcpStream::connect(a).await;
            }
            match &self.cfg.resolver {
                // logical_dns with the top-level `dns.resolvers`: the
                // name's first address (IPv4 first).
                Some(r) if endpoint.host.parse::<std::net::IpAddr>().is_err() => {
                    let family = crate::config::file::DnsFamily::V4Preferred;
                    let ips = crate::dns::resolve(r, &endpoint.host, family)
                        .await
                        .map_err(|e| std::io::Error::other(format!("DNS: {e}")))?;
                    let ip = ips.first().copied().ok_or_else(|| {
                        std::io::Error::other(format!("DNS: {} has no address", endpoint.host))
                    })?;
                    tokio::net::TcpStream::connect((ip, endpoint.port)).await
                }
                _ => tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await,
            }
        };
        let tcp = match tokio::time::timeout(self.cfg.connect_timeout, connect).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "timed out after {:?}",
                    self.cfg.connect_timeout
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Some(k) = &self.cfg.tcp_keepalive
            && let Err(e) = k.apply(&tcp)
        {
            tracing::debug!(error = %e, "tcp_keepalive not set");
        }
        let Some(client) = &self.cfg.tls else {
            return Ok(Io::Plain(tcp));
        };
        let loaded = client.current();
        let tls = match alpn {
            Alpn::Cluster => &loaded.connector,
            Alpn::None => &loaded.raw,
            Alpn::H2 => &loaded.h2,
        };
        let name = match &client.sni {
            Some(n) => n.clone(),
            None => ServerName::try_from(endpoint.host.clone())
                .map_err(|e| SendError::Connect(format!("server name {}: {e}", endpoint.host)))?,
        };
        match tokio::time::timeout(self.cfg.connect_timeout, tls.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Io::Tls(Box::new(s))),
            Ok(Err(e)) => Err(SendError::Connect(format!("TLS: {e}"))),
            Err(_) => Err(SendError::Connect(format!(
                "TLS handshake timed out after {:?}",
                self.cfg.connect_timeout
            ))),
        }
    }

    async fn connect_h1(&self, endpoint: &Endpoint) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self.connect_io(endpoint, Alpn::Cluster).await?;
        let (send, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(send)
    }

    async fn connect_h2(&self, endpoint: &Endpoint) -> Result<http2::SendRequest<Body>, SendError> {
        let io = self.connect_io(endpoint, Alpn::H2).await?;
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new());
        if let Some(k) = &self.cfg.http2_keepalive {
            // Idle pooled connections too: those are the ones found dead
            // only by the next request otherwise.
            b.keep_alive_interval(k.interval.0)
                .keep_alive_timeout(k.timeout.0)
                .keep_alive_while_idle(true);
        }
        let (send, conn) = b
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(send)
    }
}

fn prune(idle: &mut VecDeque<Idle>, now: Instant, timeout: Duration) {
    while idle
        .front()
        .is_some_and(|i| now.duration_since(i.since) >= timeout || i.send.is_closed())
    {
        idle.pop_front();
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body that hands its HTTP/1.1 connection back to
    /// the pool when it has been read to the end. Dropped early, it takes
    /// the connection with it (hyper closes a connection whose response
    /// was not read).
    struct Returning {
        #[pin]
        inner: Incoming,
        home: Option<(Weak<Pool>, usize, H1)>,
    }
    impl PinnedDrop for Returning {
        // hyper stops polling a body that says it has ended (a known
        // length fully read, or none at all): hand the connection back here.
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if http_body::Body::is_end_stream(&*this.inner) {
                give_back(this.home);
            }
        }
    }
}

fn give_back(home: &mut Option<(Weak<Pool>, usize, H1)>) {
    if let Some((pool, index, conn)) = home.take() {
        if let Some(pool) = pool.upgrade() {
            pool.checkin(index, conn);
        }
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        match &r {
            Poll::Ready(None) => give_back(this.home),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => give_back(this.home),
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => give_back(this.home),
            Poll::Ready(Some(Err(_))) => drop(this.home.take()),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a TLS connection to an endpoint offers by ALPN (nothing matters
/// on plain TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// The cluster's protocol (`http/1.1` for `client`).
    Cluster,
    /// `h2` alone.
    H2,
    /// No ALPN: the TCP proxy's connections are not HTTP (a server that
    /// checks it, such as PostgreSQL's direct TLS, would refuse
    /// `http/1.1`).
    None,
}

/// A connection to an endpoint, TLS or not (the TCP proxy relays over it).
pub enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
