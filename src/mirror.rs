//! Request mirroring (shadow traffic), as Envoy's `request_mirror_policies`:
//! a sampled share of a route's requests is also sent to a mirror cluster,
//! whose answers are read and dropped.
//!
//! The mirror never touches the client's exchange:
//! - its copy of the body is taken from the frames the primary upstream
//!   reads ([`CopyBody`]), into a buffer bounded by `max_body`; the primary's
//!   body is never held back for it. The mirror request is sent once the
//!   copy is complete, and never with a cut body: a body longer than
//!   `max_body` (`skipped_too_large`) or one that fails or stops before its
//!   end (`aborted`) drops the copy.
//! - the mirror request runs in its own task, holding one of the mirror
//!   cluster's `max_requests` slots (taken before the task is spawned: a
//!   full breaker drops the copy, `dropped_overload`) and bounded by the
//!   mirror cluster's `request_timeout`, for the wait for the copy and
//!   again for the exchange. It is never retried, and counts against
//!   neither the route's rate limits nor its `max_inflight`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header;
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::sync::oneshot;

use crate::config::file::UpstreamProtocol;
use crate::config::model::MirrorSpec;
use crate::metrics::Metrics;
use crate::upstream::{Cluster, RequestSlot};

/// A route's mirror at run time.
pub struct Mirror {
    pub spec: MirrorSpec,
    pub cluster: Arc<Cluster>,
    pub counters: Arc<Counters>,
}

impl Mirror {
    pub fn new(route: &str, spec: MirrorSpec, cluster: Arc<Cluster>, m: &Metrics) -> Mirror {
        let c = |r: &str| {
            m.mirror_requests
                .with_label_values(&[route, spec.cluster.as_str(), r])
        };
        let counters = Arc::new(Counters {
            sent: c("sent"),
            failed: c("failed"),
            aborted: c("aborted"),
            too_large: c("skipped_too_large"),
            overload: c("dropped_overload"),
        });
        Mirror {
            spec,
            cluster,
            counters,
        }
    }
}

/// `sift_mirror_requests_total` of one route and mirror cluster.
pub struct Counters {
    pub sent: IntCounter,
    pub failed: IntCounter,
    pub aborted: IntCounter,
    pub too_large: IntCounter,
    pub overload: IntCounter,
}

/// Why a copy of a streamed body is not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    TooLarge,
    Aborted,
}

/// Sends a mirror its copy of a streamed body, or why there is none.
pub type CopyTx = oneshot::Sender<Result<Bytes, Cut>>;
/// Receives a mirror's copy of a streamed body.
pub type CopyRx = oneshot::Receiver<Result<Bytes, Cut>>;

/// Where a mirror's body comes from.
pub enum Source {
    /// Already whole (empty, or kept in memory for filters or retries).
    Ready(Bytes),
    /// Copied from the streamed body as the primary reads it.
    Copy(CopyRx),
}

/// The request head shared by every mirror of one request: the head as
/// sent upstream (after rewrites and header changes).
pub struct Head {
    pub method: Method,
    pub path_and_query: http::uri::PathAndQuery,
    /// The headers as sent upstream, Host included when there was one.
    pub headers: HeaderMap,
    /// The primary's upstream protocol (a `protocol: client` mirror
    /// cluster takes it too).
    pub version: Version,
}

/// One mirror copy, ready to run: [`Job::run`] in its own task.
pub struct Job {
    pub cluster: Arc<Cluster>,
    pub counters: Arc<Counters>,
    pub head: Arc<Head>,
    pub body: Source,
    pub max_body: u64,
    /// `-shadow` appended to the host.
    pub host_suffix: bool,
    pub clock: crate::clock::Clock,
    /// One of the mirror cluster's max_requests, held to the end.
    pub slot: RequestSlot,
    /// The copy's bytes in `overload.max_buffered_bytes`, shared by the
    /// request's copies and given back when the last one ends.
    pub held: Option<Arc<crate::budget::Reservation>>,
}

/// `host[:port]` with `-shadow` after the host name, as Envoy does
/// (`api:8080` becomes `api-shadow:8080`, `[::1]:80` `[::1]-shadow:80`).
pub fn shadow_host(host: &[u8]) -> Option<HeaderValue> {
    let split = if host.first() == Some(&b'[') {
        host.iter()
            .position(|&b| b == b']')
            .map_or(host.len(), |i| i + 1)
    } else {
        host.iter().rposition(|&b| b == b':').unwrap_or(host.len())
    };
    let (name, port) = host.split_at(split);
    let mut v = Vec::with_capacity(host.len() + 7);
    v.extend_from_slice(name);
    v.extend_from_slice(b"-shadow");
    v.extend_from_slice(port);
    HeaderValue::from_bytes(&v).ok()
}

impl Job {
    /// Wait for the copy, send it, read and drop the answer; count the
    /// result. Never longer than twice the cluster's request_timeout.
    pub async fn run(self) {
        let timeout = self.cluster.spec.request_timeout.0;
        let counters = self.counters.clone();
        let body = match self.body {
            Source::Ready(b) => b,
            Source::Copy(rx) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(b))) if b.len() as u64 <= self.max_body => b,
                Ok(Ok(Ok(_))) | Ok(Ok(Err(Cut::TooLarge))) => {
                    counters.too_large.inc();
                    return;
                }
                // The body failed, or its request was dropped before the
                // body ended, or it took longer than the timeout.
                Ok(Ok(Err(Cut::Aborted))) | Ok(Err(_)) | Err(_) => {
                    counters.aborted.inc();
                    return;
                }
            },
        };
        let r = tokio::time::timeout(
            timeout,
            send(
                &self.cluster,
                &self.head,
                body,
                self.clock,
                self.host_suffix,
            ),
        )
        .await;
        // The slot is free before the result shows in the metrics.
        drop(self.slot);
        match r {
            Ok(Ok(())) => counters.sent.inc(),
            Ok(Err(Failure::Overload)) => counters.overload.inc(),
            Ok(Err(Failure::Failed)) | Err(_) => counters.failed.inc(),
        }
    }
}

enum Failure {
    /// The mirror cluster's pending-requests breaker was full.
    Overload,
    /// No endpoint, connect error, reset.
    Failed,
}

/// Send one mirror request and drain its answer (dropping what it reads).
async fn send(
    cluster: &Arc<Cluster>,
    head: &Head,
    body: Bytes,
    clock: crate::clock::Clock,
    host_suffix: bool,
) -> Result<(), Failure> {
    let now = clock.now();
    let (index, _ep_guard) = cluster.pick(now, None, None).ok_or(Failure::Failed)?;
    let endpoint = &cluster.endpoints[index].endpoint;
    let h2 = match cluster.spec.protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Client => head.version == Version::HTTP_2,
        UpstreamProtocol::Http1 => false,
    };
    let _conn_slot = cluster.conn_slot(h2).await.map_err(|e| match e {
        crate::error::ProxyError::CircuitOpen { .. } => Failure::Overload,
        _ => Failure::Failed,
    })?;
    let mut headers = head.headers.clone();
    // The shadow's host: the one sent upstream, else the endpoint's.
    let host = headers
        .get(header::HOST)
        .map(|h| h.as_bytes().to_vec())
        .unwrap_or_else(|| endpoint.authority.as_str().as_bytes().to_vec());
    let shadow = if host_suffix {
        shadow_host(&host)
    } else {
        HeaderValue::from_bytes(&host).ok()
    };
    let authority = match (h2, &shadow) {
        (true, Some(v)) => http::uri::Authority::try_from(v.as_bytes()).ok(),
        _ => None,
    };
    if h2 && authority.is_some() {
        headers.remove(header::HOST);
    } else if let Some(v) = shadow {
        headers.insert(header::HOST, v);
    }
    let uri = Uri::builder()
        .scheme(if cluster.spec.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        })
        .authority(authority.unwrap_or_else(|| endpoint.authority.clone()))
        .path_and_query(head.path_and_query.clone())
        .build()
        .map_err(|_| Failure::Failed)?;
    let mut req = Request::new(if body.is_empty() {
        crate::body::empty()
    } else {
        crate::body::full(body)
    });
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    let resp = cluster
        .exchange(index, req, clock)
        .await
        .map_err(|_| Failure::Failed)?;
    // Read to the end (the connection can then serve again), keeping
    // nothing; the caller's timeout bounds it.
    let mut b = resp.into_body();
    while let Some(f) = b.frame().await {
        if f.is_err() {
            break;
        }
    }
    Ok(())
}

/// The senders a [`CopyBody`] completes.
struct Copies {
    buf: BytesMut,
    cap: u64,
    /// The declared length: the copy is whole once it has that many bytes
    /// (a consumer that wrote them need not poll the body to its end).
    expect: Option<u64>,
    txs: Vec<CopyTx>,
}

impl Copies {
    fn finish(&mut self, r: Result<Bytes, Cut>) {
        for tx in self.txs.drain(..) {
            let _ = tx.send(r.clone());
        }
    }
}

/// A copy channel for one mirror of a streamed body.
pub fn channel() -> (CopyTx, CopyRx) {
    oneshot::channel()
}

pin_project_lite::pin_project! {
    /// A body that passes through unchanged while copying its data into a
    /// buffer of at most `cap` bytes; when it ends (or has its declared
    /// length), the whole copy goes to the mirrors. Past `cap`, the copy is dropped (`TooLarge`); a failed
    /// body or one dropped before its end sends nothing (`Aborted`).
    /// Copying never waits: the primary is never slowed by a mirror.
    pub struct CopyBody<B> {
        #[pin]
        inner: B,
        copies: Option<Copies>,
    }

    impl<B> PinnedDrop for CopyBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(c) = this.project().copies.as_mut() {
                c.finish(Err(Cut::Aborted));
            }
        }
    }
}

impl<B> CopyBody<B> {
    /// `declared`: the body's Content-Length, if it has one.
    pub fn new(inner: B, cap: u64, declared: Option<u64>, txs: Vec<CopyTx>) -> CopyBody<B> {
        let room = declared.unwrap_or(0).min(cap);
        CopyBody {
            inner,
            copies: Some(Copies {
                buf: BytesMut::with_capacity(usize::try_from(room).unwrap_or(0)),
                cap,
                expect: declared,
                txs,
            }),
        }
    }
}

impl<B> HttpBody for CopyBody<B>
where
    B: HttpBody<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(c)) = (f.data_ref(), this.copies.as_mut()) {
                    if (c.buf.len() + d.len()) as u64 > c.cap {
                        c.finish(Err(Cut::TooLarge));
                        *this.copies = None;
                    } else {
                        c.buf.extend_from_slice(d);
                    }
                }
                let whole = this
                    .copies
                    .as_ref()
                    .is_some_and(|c| c.expect == Some(c.buf.len() as u64));
                // A consumer may stop polling once the body says it ended,
                // or once it wrote the declared length.
                if whole || this.inner.is_end_stream() {
                    if let Some(mut c) = this.copies.take() {
                        let b = std::mem::take(&mut c.buf).freeze();
                        c.finish(Ok(b));
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(mut c) = this.copies.take() {
                    let b = std::mem::take(&mut c.buf).freeze();
                    c.finish(Ok(b));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut c) = this.copies.take() {
                    c.finish(Err(Cut::Aborted));
                }
            }
            Poll::Pending => {}
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

/// What [`start`] started: the copy senders a streamed body must feed
/// (with the largest `max_body` among them), empty when no mirror waits
/// on the stream.
pub struct Started {
    pub txs: Vec<CopyTx>,
    pub cap: u64,
    /// Copies started (for the access log).
    pub count: u32,
}

/// Sample, check and start the mirrors of one request. `known` is the
/// body when it is already whole, `declared` its Content-Length. The head
/// is made once, and only when some mirror is sampled.
///
/// A copy taken from a streamed body is held in memory up to the largest
/// `max_body` (or the declared length, if smaller): taken from `res`
/// (`overload.max_buffered_bytes`); a mirror it cannot hold is skipped,
/// counted as `dropped_overload`.
pub fn start(
    mirrors: &[Mirror],
    request_hash: u64,
    head: impl FnOnce() -> Head,
    known: Option<&Bytes>,
    declared: Option<u64>,
    clock: crate::clock::Clock,
    mut res: crate::budget::Reservation,
) -> Started {
    let mut started = Started {
        txs: Vec::new(),
        cap: 0,
        count: 0,
    };
    let mut head = Some(head);
    let mut shared: Option<Arc<Head>> = None;
    let mut jobs = Vec::new();
    for m in mirrors {
        if !m.spec.sampled(request_hash) {
            continue;
        }
        let len = known.map(|b| b.len() as u64).or(declared);
        if len.is_some_and(|l| l > m.spec.max_body) {
            m.counters.too_large.inc();
            continue;
        }
        if known.is_none() {
            let need = declared.map_or(m.spec.max_body, |d| d.min(m.spec.max_body));
            if !res.grow(need.saturating_sub(res.bytes())) {
                res.budget().deny(crate::budget::Use::Mirror);
                m.counters.overload.inc();
                continue;
            }
        }
        let Ok(slot) = m.cluster.request_slot() else {
            m.counters.overload.inc();
            continue;
        };
        let h = match (&shared, head.take()) {
            (Some(h), _) => h.clone(),
            (None, Some(f)) => shared.insert(Arc::new(f())).clone(),
            (None, None) => continue,
        };
        let body = match known {
            Some(b) => Source::Ready(b.clone()),
            None => {
                let (tx, rx) = channel();
                started.txs.push(tx);
                started.cap = started.cap.max(m.spec.max_body);
                Source::Copy(rx)
            }
        };
        let job = Job {
            cluster: m.cluster.clone(),
            counters: m.counters.clone(),
            head: h,
            body,
            max_body: m.spec.max_body,
            host_suffix: m.spec.host_suffix,
            clock,
            slot,
            held: None,
        };
        started.count += 1;
        jobs.push(job);
    }
    let held = (res.bytes() > 0).then(|| Arc::new(res));
    for mut job in jobs {
        if matches!(job.body, Source::Copy(_)) {
            job.held = held.clone();
        }
        tokio::spawn(job.run());
    }
    started
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn shadow_host_goes_before_the_port() {
        let s = |h: &str| {
            shadow_host(h.as_bytes())
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default()
        };
        assert_eq!(s("api"), "api-shadow");
        assert_eq!(s("api.example.com:8080"), "api.example.com-shadow:8080");
        assert_eq!(s("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(s("[::1]"), "[::1]-shadow");
        assert_eq!(s("127.0.0.1:9"), "127.0.0.1-shadow:9");
    }

    #[test]
    fn sampling_is_by_millionths() {
        let m = |p: u32| MirrorSpec {
            cluster: "c".into(),
            per_million: p,
            max_body: 1,
            host_suffix: true,
        };
        assert!(!m(0).sampled(0));
        assert!(m(1_000_000).sampled(u64::MAX));
        let n = (0..10_000u64)
            .filter(|i| m(250_000).sampled(crate::proxy::stable_hash(&i.to_string())))
            .count();
        assert!((2_000..3_000).contains(&n), "{n}");
    }

    #[tokio::test]
    async fn copy_sends_the_whole_body_or_nothing() {
        // Whole: the primary reads everything, the mirror gets the same.
        let (tx, rx) = channel();
        let body = CopyBody::new(Full::new(Bytes::from_static(b"hello")), 5, None, vec![tx]);
        let got = body.collect().await.map(|b| b.to_bytes());
        assert_eq!(got.ok().as_deref(), Some(&b"hello"[..]));
        assert_eq!(rx.await.ok(), Some(Ok(Bytes::from_static(b"hello"))));

        // Too large: the primary still gets everything, the mirror nothing.
        let (tx, rx) = channel();
        let body = CopyBody::new(Full::new(Bytes::from_static(b"hello!")), 5, None, vec![tx]);
        let got = body.collect().await.map(|b| b.to_bytes());
        assert_eq!(got.ok().as_deref(), Some(&b"hello!"[..]));
        assert_eq!(rx.await.ok(), Some(Err(Cut::TooLarge)));

        // Dropped before its end: aborted.
        let (tx, rx) = channel();
        let body = CopyBody::new(Full::new(Bytes::from_static(b"hi")), 5, None, vec![tx]);
        drop(body);
        assert_eq!(rx.await.ok(), Some(Err(Cut::Aborted)));

        // A body that has its declared length is whole, even when its
        // consumer stops before seeing the end (an HTTP/1.1 upstream
        // connection stops polling once Content-Length bytes are written).
        let (tx, rx) = channel();
        let (mut stx, b) = ChannelBody::pair();
        let mut body = Box::pin(CopyBody::new(b, 16, Some(4), vec![tx]));
        stx.push(Bytes::from_static(b"ab"));
        stx.push(Bytes::from_static(b"cd"));
        for _ in 0..2 {
            assert!(body.frame().await.is_some());
        }
        drop(body);
        assert_eq!(rx.await.ok(), Some(Ok(Bytes::from_static(b"abcd"))));

        // Short of it when dropped: aborted.
        let (tx, rx) = channel();
        let (mut stx, b) = ChannelBody::pair();
        let mut body = Box::pin(CopyBody::new(b, 16, Some(4), vec![tx]));
        stx.push(Bytes::from_static(b"abc"));
        assert!(body.frame().await.is_some());
        drop(body);
        assert_eq!(rx.await.ok(), Some(Err(Cut::Aborted)));
    }

    /// A body that yields queued chunks and never says it ended.
    struct ChannelBody(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Bytes>>>);

    impl ChannelBody {
        fn pair() -> (ChannelBody, ChannelBody) {
            let q = std::sync::Arc::default();
            (ChannelBody(std::sync::Arc::clone(&q)), ChannelBody(q))
        }

        fn push(&mut self, b: Bytes) {
            if let Ok(mut q) = self.0.lock() {
                q.push_back(b);
            }
        }
    }

    impl HttpBody for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.lock().ok().and_then(|mut q| q.pop_front()) {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }
}
