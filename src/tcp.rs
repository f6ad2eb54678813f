//! The TCP proxy: a `serve: tcp` listener forwards each connection's bytes,
//! unread, to an endpoint of `tcp.cluster` (Envoy's tcp_proxy, Linkerd's
//! opaque ports). The listener's PROXY protocol and TLS/mTLS come first;
//! then the caller's identity is checked, an endpoint picked by the
//! cluster's policy (health checks, outlier ejections and `max_requests`
//! apply; ring_hash and maglev hash the client's IP), connected to (up to
//! `connect_attempts` endpoints), and the bytes copied both ways until both
//! sides close or nothing moves for `idle_timeout`. One access-log line per
//! connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::model::TcpProxySpec;
use crate::policy::outlier::Observed;
use crate::proxy::ConnInfo;
use crate::state::Shared;

pin_project_lite::pin_project! {
    /// A stream that counts the bytes read from it.
    struct Counted<S> {
        #[pin]
        inner: S,
        read: Arc<AtomicU64>,
    }
}

impl<S: AsyncRead> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = (buf.filled().len() - before) as u64;
            this.read.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// How a connection ended, and where it went.
struct Ended<'a> {
    cluster: &'a str,
    endpoint: Option<String>,
    result: &'static str,
    detail: String,
    received: u64,
    sent: u64,
}

fn finish(shared: &Shared, conn: &ConnInfo, start: Instant, e: Ended<'_>) {
    let m = &shared.metrics;
    m.tcp_connections
        .with_label_values(&[&conn.listener, e.cluster, e.result])
        .inc();
    if !shared.snapshot.load().config.log.access_log {
        return;
    }
    tracing::info!(
        target: "sift::access",
        listener = %conn.listener,
        remote = %conn.remote,
        protocol = "tcp",
        cluster = e.cluster,
        endpoint = e.endpoint.as_deref().unwrap_or("-"),
        identity = conn.identity.as_ref().map_or("-", |i| i.id.as_str()),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        bytes_received = e.received,
        bytes_sent = e.sent,
        result = e.result,
        error_detail = e.detail.as_str(),
        "tcp"
    );
}

/// Relay one accepted (and, with `tls`, decrypted) connection.
pub async fn serve<S>(down: S, conn: ConnInfo, spec: TcpProxySpec, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let start = Instant::now();
    let cluster_name = spec.cluster.as_str();
    let refused = |result: &'static str, detail: String| Ended {
        cluster: cluster_name,
        endpoint: None,
        result,
        detail,
        received: 0,
        sent: 0,
    };
    if !spec.allowed_identities.is_empty() {
        let allowed = conn
            .identity
            .as_ref()
            .is_some_and(|id| spec.allowed_identities.iter().any(|m| m.matches(id)));
        if !allowed {
            let who = conn.identity.as_ref().map_or("none", |i| i.id.as_str());
            let detail = format!("identity {who} is not allowed");
            finish(&shared, &conn, start, refused("identity_denied", detail));
            return;
        }
    }
    let cluster = shared.snapshot.load().clusters.get(cluster_name).cloned();
    let Some(cluster) = cluster else {
        let detail = "the cluster is gone".to_string();
        finish(&shared, &conn, start, refused("no_endpoint", detail));
        return;
    };
    let Ok(_slot) = cluster.request_slot() else {
        let detail = "max_requests reached".to_string();
        finish(&shared, &conn, start, refused("overflow", detail));
        return;
    };
    let key = cluster
        .hashes()
        .then(|| crate::proxy::stable_hash(&conn.remote.ip().to_string()));
    let mut avoid = None;
    let mut failure = None;
    let mut upstream = None;
    for _ in 0..spec.connect_attempts {
        let now = shared.clock.now();
        let Some((index, guard)) = cluster.pick(now, avoid, key) else {
            break;
        };
        match cluster.connect_raw(index).await {
            Ok(io) => {
                cluster.observe(index, Observed::Success, shared.clock.now());
                upstream = Some((index, guard, io));
                break;
            }
            Err(e) => {
                cluster.observe(index, Observed::LocalGatewayError, shared.clock.now());
                failure = Some(format!("{}: {e}", cluster.endpoints[index].endpoint.id()));
                avoid = Some(index);
            }
        }
    }
    let Some((index, _guard, io)) = upstream else {
        let ended = match failure {
            Some(detail) => refused("connect_failure", detail),
            None => refused("no_endpoint", "no endpoint can take it".into()),
        };
        finish(&shared, &conn, start, ended);
        return;
    };
    let endpoint = cluster.endpoints[index].endpoint.id().into_owned();

    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut down = Counted {
        inner: down,
        read: received.clone(),
    };
    let mut up = Counted {
        inner: io,
        read: sent.clone(),
    };
    let idle = spec.idle_timeout.0;
    let tick = (idle / 4).clamp(Duration::from_millis(5), Duration::from_secs(5));
    let bytes_in = shared
        .metrics
        .tcp_bytes
        .with_label_values(&[&conn.listener, "received"]);
    let bytes_out = shared
        .metrics
        .tcp_bytes
        .with_label_values(&[&conn.listener, "sent"]);
    let mut counted = (0u64, 0u64);
    let mut quiet_since = Instant::now();
    let (result, detail) = {
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                r = &mut copy => break match r {
                    Ok(_) => ("closed", String::new()),
                    Err(e) => ("error", e.to_string()),
                },
                _ = tokio::time::sleep(tick) => {
                    let now = (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
                    if now == counted {
                        if quiet_since.elapsed() >= idle {
                            break ("idle_timeout", format!("nothing either way for {}", spec.idle_timeout));
                        }
                    } else {
                        bytes_in.inc_by(now.0 - counted.0);
                        bytes_out.inc_by(now.1 - counted.1);
                        counted = now;
                        quiet_since = Instant::now();
                    }
                }
            }
        }
    };
    let total = (
        received.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
    );
    bytes_in.inc_by(total.0 - counted.0);
    bytes_out.inc_by(total.1 - counted.1);
    finish(
        &shared,
        &conn,
        start,
        Ended {
            cluster: cluster_name,
            endpoint: Some(endpoint),
            result,
            detail,
            received: total.0,
            sent: total.1,
        },
    );
}
