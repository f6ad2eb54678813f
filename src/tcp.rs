//! The TCP proxy: a `serve: tcp` listener forwards each connection's bytes,
//! unread, to an endpoint of `tcp.cluster` (Envoy's tcp_proxy, Linkerd's
//! opaque ports). The listener's PROXY protocol and TLS/mTLS come first;
//! then the caller's identity is checked, an endpoint picked by the
//! cluster's policy (health checks, outlier ejections and `max_requests`
//! apply; ring_hash and maglev hash the client's IP), connected to (up to
//! `connect_attempts` endpoints), and the bytes copied both ways until both
//! sides close or nothing moves for `idle_timeout`. One access-log line per
//! connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::model::TcpProxySpec;
use crate::listener::Counted;
use crate::policy::outlier::Observed;
use crate::proxy::ConnInfo;
use crate::state::Shared;

/// How a connection ended, and where it went.
struct Ended<'a> {
    cluster: &'a str,
    endpoint: Option<String>,
    result: &'static str,
    detail: String,
    received: u64,
    sent: u64,
}

fn finish(shared: &Shared, conn: &ConnInfo, start: Instant, e: Ended<'_>, sni: Option<&str>) {
    let m = &shared.metrics;
    m.tcp_connections
        .with_label_values(&[&conn.listener, e.cluster, e.result])
        .inc();
    if !shared.snapshot.load().config.log.access_log {
        return;
    }
    let duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    let identity = conn.identity.as_ref().map_or("-", |i| i.id.as_str());
    // Written directly in the JSON format, as the proxy's access lines
    // are (crate::access_log), in the same shape as the event below.
    if let Some(mut w) = crate::logging::access_json_writer() {
        if tracing::enabled!(target: "sift::access", tracing::Level::INFO) {
            crate::access_log::write(&mut w, "tcp", |l| {
                l.str("listener", &conn.listener)
                    .display("remote", conn.remote)
                    .str("protocol", "tcp")
                    .str("server_name", sni.unwrap_or("-"))
                    .str("cluster", e.cluster)
                    .str("endpoint", e.endpoint.as_deref().unwrap_or("-"))
                    .str("identity", identity)
                    .f64("duration_ms", duration_ms)
                    .u64("bytes_received", e.received)
                    .u64("bytes_sent", e.sent)
                    .str("result", e.result)
                    .str("error_detail", &e.detail);
            });
        }
        return;
    }
    tracing::info!(
        target: "sift::access",
        listener = %conn.listener,
        remote = %conn.remote,
        protocol = "tcp",
        server_name = sni.unwrap_or("-"),
        cluster = e.cluster,
        endpoint = e.endpoint.as_deref().unwrap_or("-"),
        identity,
        duration_ms,
        bytes_received = e.received,
        bytes_sent = e.sent,
        result = e.result,
        error_detail = e.detail.as_str(),
        "tcp"
    );
}

/// What the first bytes of a connection say about TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not all of the ClientHello has arrived yet.
    Incomplete,
    /// Not a TLS ClientHello (or a malformed one).
    NotTls,
    /// A ClientHello, and the host name it asks for, if any (lower-case).
    Sni(Option<String>),
}

/// Largest ClientHello read for its SNI (records may split it).
const MAX_HELLO: usize = 64 * 1024;

/// The server name a TLS ClientHello asks for, from the connection's first
/// bytes (one or more handshake records), without consuming them.
pub fn client_hello_sni(buf: &[u8]) -> Hello {
    // Reassemble the handshake message from its records.
    let mut hs = Vec::new();
    let mut at = 0;
    let need = loop {
        let Some(head) = buf.get(at..at + 5) else {
            return Hello::Incomplete;
        };
        if head[0] != 0x16 || head[1] != 0x03 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Hello::NotTls;
        }
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            return Hello::Incomplete;
        };
        hs.extend_from_slice(body);
        at += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Hello::NotTls;
            }
            let need =
                4 + (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]));
            if need > MAX_HELLO {
                return Hello::NotTls;
            }
            if hs.len() >= need {
                break need;
            }
        }
    };
    match hello_sni(&hs[4..need]) {
        Some(sni) => Hello::Sni(sni),
        None => Hello::NotTls,
    }
}

/// The SNI of a ClientHello body: `None` when it is malformed.
fn hello_sni(b: &[u8]) -> Option<Option<String>> {
    let u16_at = |at: usize| {
        b.get(at..at + 2)
            .map(|x| usize::from(u16::from_be_bytes([x[0], x[1]])))
    };
    // Version and random, then the session id.
    let mut at = 2 + 32;
    at += 1 + usize::from(*b.get(at)?);
    at += 2 + u16_at(at)?;
    at += 1 + usize::from(*b.get(at)?);
    if at == b.len() {
        return Some(None); // no extensions
    }
    let end = at + 2 + u16_at(at)?;
    if end > b.len() {
        return None;
    }
    at += 2;
    while at + 4 <= end {
        let (kind, len) = (u16_at(at)?, u16_at(at + 2)?);
        let data = b.get(at + 4..at + 4 + len)?;
        at += 4 + len;
        if kind != 0 {
            continue;
        }
        // server_name: a list of (type, name); host_name is type 0.
        let list = usize::from(u16::from_be_bytes([*data.first()?, *data.get(1)?]));
        let mut i = 2;
        while i + 3 <= (2 + list).min(data.len()) {
            let n = usize::from(u16::from_be_bytes([data[i + 1], data[i + 2]]));
            let name = data.get(i + 3..i + 3 + n)?;
            if data[i] == 0 {
                let ok = !name.is_empty()
                    && name.len() <= 255
                    && name
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(c));
                if !ok {
                    return None;
                }
                return Some(Some(String::from_utf8_lossy(name).to_ascii_lowercase()));
            }
            i += 3 + n;
        }
        return Some(None);
    }
    (at == end).then_some(None)
}

/// Wait (re-peeking every 5 ms) for a whole ClientHello on `tcp` and read
/// its SNI without consuming a byte. Not TLS: `None`.
pub async fn peek_sni(tcp: &tokio::net::TcpStream) -> Option<String> {
    let mut buf = vec![0u8; MAX_HELLO + 1024];
    loop {
        let n = tcp.peek(&mut buf).await.ok()?;
        match client_hello_sni(&buf[..n]) {
            Hello::Sni(s) => return s,
            Hello::NotTls => return None,
            Hello::Incomplete if n == 0 || n == buf.len() => return None,
            Hello::Incomplete => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Relay one accepted (and, with `tls`, decrypted) connection. `sni` is
/// the server name the client asked for (from its ClientHello, or from
/// the handshake sift terminated).
pub async fn serve<S>(
    down: S,
    conn: ConnInfo,
    spec: TcpProxySpec,
    sni: Option<String>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let start = Instant::now();
    let Some(cluster_name) = spec.cluster_for(sni.as_deref()) else {
        let detail = format!(
            "no route for server name {}",
            sni.as_deref().unwrap_or("(none)")
        );
        let ended = Ended {
            cluster: "none",
            endpoint: None,
            result: "no_route",
            detail,
            received: 0,
            sent: 0,
        };
        finish(&shared, &conn, start, ended, sni.as_deref());
        return;
    };
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
            finish(
                &shared,
                &conn,
                start,
                refused("identity_denied", detail),
                sni.as_deref(),
            );
            return;
        }
    }
    let cluster = shared.snapshot.load().clusters.get(cluster_name).cloned();
    let Some(cluster) = cluster else {
        let detail = "the cluster is gone".to_string();
        finish(
            &shared,
            &conn,
            start,
            refused("no_endpoint", detail),
            sni.as_deref(),
        );
        return;
    };
    let Ok(_slot) = cluster.request_slot() else {
        let detail = "max_requests reached".to_string();
        finish(
            &shared,
            &conn,
            start,
            refused("overflow", detail),
            sni.as_deref(),
        );
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
        finish(&shared, &conn, start, ended, sni.as_deref());
        return;
    };
    let endpoint = cluster.endpoints[index].endpoint.id().into_owned();

    let bytes_in = shared
        .metrics
        .tcp_bytes
        .with_label_values(&[&conn.listener, "received"]);
    let bytes_out = shared
        .metrics
        .tcp_bytes
        .with_label_values(&[&conn.listener, "sent"]);
    let r = relay(down, io, spec.idle_timeout, |i, o| {
        bytes_in.inc_by(i);
        bytes_out.inc_by(o);
    })
    .await;
    let (result, detail, total) = (r.result, r.detail, (r.received, r.sent));
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
        sni.as_deref(),
    );
}

/// How a [`relay`] ended: `closed` (a side closed), `error`, or
/// `idle_timeout`; with the bytes read from each side.
pub(crate) struct Relayed {
    pub result: &'static str,
    pub detail: String,
    /// Bytes read from the first side (the client) and from the second.
    pub received: u64,
    pub sent: u64,
}

/// Copy bytes both ways until a side closes, a copy fails, or nothing
/// moves either way for `idle` (checked every quarter of it, 5 ms to 5 s);
/// `grew(received, sent)` is told what was added since the last check, so
/// byte counters move while a long tunnel runs. The TCP proxy's
/// connections and upgraded HTTP tunnels (WebSocket) both run in this.
pub(crate) async fn relay<D, U>(
    down: D,
    up: U,
    idle: crate::config::units::Dur,
    mut grew: impl FnMut(u64, u64),
) -> Relayed
where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut down = Counted::new(down, received.clone());
    let mut up = Counted::new(up, sent.clone());
    let tick = (idle.0 / 4).clamp(Duration::from_millis(5), Duration::from_secs(5));
    let mut counted = (0u64, 0u64);
    let mut quiet_since = Instant::now();
    let (result, detail) = {
        // 16 KiB each way, as nginx's proxy_buffer_size (tokio's default
        // is 8 KiB: twice the reads and writes per MiB).
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, 16 << 10, 16 << 10);
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
                        if quiet_since.elapsed() >= idle.0 {
                            break ("idle_timeout", format!("nothing either way for {idle}"));
                        }
                    } else {
                        grew(now.0 - counted.0, now.1 - counted.1);
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
    grew(total.0 - counted.0, total.1 - counted.1);
    Relayed {
        result,
        detail,
        received: total.0,
        sent: total.1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes a real TLS client (rustls) sends for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_sni_of_a_real_client_hello() {
        let hello = client_hello("API.example.com");
        assert_eq!(
            client_hello_sni(&hello),
            Hello::Sni(Some("api.example.com".into()))
        );
        // Every prefix waits for more; bytes after it change nothing.
        for n in 0..hello.len() {
            assert_eq!(
                client_hello_sni(&hello[..n]),
                Hello::Incomplete,
                "prefix {n}"
            );
        }
        let mut more = hello.clone();
        more.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
        assert_eq!(client_hello_sni(&more), client_hello_sni(&hello));
        // The same message split over two records.
        let body = &hello[5..];
        let (a, b) = body.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 0x03, 0x01]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(
            client_hello_sni(&split),
            Hello::Sni(Some("api.example.com".into()))
        );
        // An IP address is sent without SNI.
        assert_eq!(
            client_hello_sni(&client_hello("10.0.0.1")),
            Hello::Sni(None)
        );
        // Not TLS at all.
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello_sni(b"\x16\x03\x01\x00\x00"), Hello::NotTls);
        // A corrupted length inside: refused, never a panic.
        for i in 5..hello.len() {
            let mut bad = hello.clone();
            bad[i] ^= 0xff;
            let _ = client_hello_sni(&bad);
        }
    }
}
