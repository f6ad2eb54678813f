//! Body types of the data path. Bodies stream: sift never buffers a body
//! unless a filter asks. [`Limited`] enforces a route's body limit as bytes
//! flow; [`Observed`] runs a completion hook (access log, metrics) when the
//! response body ends or is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type that flows through sift in both directions.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// What happened to a request body on its way upstream; read after a failed
/// upstream call to tell a client fault from an upstream fault, and by the
/// route's timeout, which counts from the body's end.
#[derive(Debug, Default)]
pub struct BodyState {
    state: AtomicU8,
    /// The upstream's response head arrived: the client's body is the
    /// upstream's business from then on (request_body_timeout stops).
    answered: AtomicBool,
    /// Nanoseconds after [`epoch`] of the body's last frame (0: none yet).
    progress: AtomicU64,
    /// Nanoseconds after [`epoch`] of the body's end (0: not ended).
    ended: AtomicU64,
    /// Body bytes read from the client (the access log's bytes_received).
    received: AtomicU64,
}

impl BodyState {
    pub const OK: u8 = 0;
    pub const TOO_LARGE: u8 = 1;
    pub const CLIENT_ERROR: u8 = 2;
    pub const TIMED_OUT: u8 = 3;

    pub fn get(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
    pub fn set(&self, v: u8) {
        self.state.store(v, Ordering::Release);
    }
    /// Set `v` unless a cause is already recorded (the first cause wins).
    pub fn set_first(&self, v: u8) {
        let _ = self
            .state
            .compare_exchange(Self::OK, v, Ordering::AcqRel, Ordering::Acquire);
    }
    pub fn set_answered(&self) {
        self.answered.store(true, Ordering::Release);
    }
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }
    fn moved(&self, end: bool) {
        let t = since_epoch(tokio::time::Instant::now());
        self.progress.store(t, Ordering::Release);
        if end {
            self.ended.store(t, Ordering::Release);
        }
    }
    /// Body bytes read from the client so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// When the body's last frame went by, if any did.
    pub fn last_progress(&self) -> Option<tokio::time::Instant> {
        at_epoch(self.progress.load(Ordering::Acquire))
    }
    /// When the body ended, if it has.
    pub fn ended_at(&self) -> Option<tokio::time::Instant> {
        at_epoch(self.ended.load(Ordering::Acquire))
    }
}

/// The process's reference instant for [`BodyState`]'s atomics.
fn epoch() -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = tokio::time::Instant::now();
        now.checked_sub(std::time::Duration::from_secs(1))
            .unwrap_or(now)
    })
}

fn since_epoch(t: tokio::time::Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos().max(1) as u64
}

fn at_epoch(n: u64) -> Option<tokio::time::Instant> {
    (n != 0).then(|| epoch() + std::time::Duration::from_nanos(n))
}

/// A client's request body did not arrive in time, before the upstream
/// answered: nothing for the listener's `request_body_timeout`, or not
/// all of it within its `request_timeout` (`whole`).
#[derive(Debug, thiserror::Error)]
#[error("{}", if self.whole { format!("request not received within {} (request_timeout)", self.after) } else { format!("request body: nothing received for {} (request_body_timeout)", self.after) })]
pub struct BodyTimedOut {
    pub after: crate::config::units::Dur,
    pub whole: bool,
}

impl BodyTimedOut {
    /// The timeout behind `e`, if it or an error it wraps is one.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
                return Some(t);
            }
            cur = e.source();
        }
        None
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct TooLarge(pub u64);

/// A downstream request body that, dropped before its end on HTTP/1.x
/// (sift answered early: a 404, a 429, a 413, a filter block, a spool
/// failure, an upstream that answered without reading it), is read and
/// discarded off the request path, as nginx's lingering close does: the
/// client, still sending, then reads the answer instead of a connection
/// reset. Bounded: 30 s in all and 5 s without a frame. HTTP/2 needs no
/// drain (the stream is reset, the connection goes on).
///
/// It also keeps the listener's `request_body_timeout`: once the body has
/// kept sift waiting (Pending) that long without a frame, before the
/// upstream answered, it fails with [`BodyTimedOut`] (nginx's
/// `client_body_timeout`); and its `request_timeout`, the whole request's
/// (Envoy's `request_timeout`). The timer is armed only on a wait: a body that
/// arrived with its head never has one.
#[derive(Debug)]
pub struct Lingering {
    inner: Option<hyper::body::Incoming>,
    h1: bool,
    idle: Option<std::time::Duration>,
    /// The whole request's deadline (`request_timeout`) and its length.
    deadline: Option<(tokio::time::Instant, std::time::Duration)>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Shared with the upstream call (its answer stops the timeout) and
    /// the access log.
    state: Option<Arc<BodyState>>,
}

impl Lingering {
    pub fn new(inner: hyper::body::Incoming, version: http::Version) -> Lingering {
        use http_body::Body as _;
        // Only a request with a body allocates its state.
        let state = (!inner.is_end_stream()).then(Default::default);
        Lingering {
            inner: Some(inner),
            h1: version <= http::Version::HTTP_11,
            idle: None,
            deadline: None,
            timer: None,
            state,
        }
    }

    /// The body's state, shared with the upstream call and the access
    /// log (None: the request has no body).
    pub fn state(&self) -> Option<&Arc<BodyState>> {
        self.state.as_ref()
    }

    /// Fail the body once it waits `idle` for the client, or once the
    /// request is older than `whole` (from `start`, its arrival); None:
    /// never.
    pub fn set_timeouts(
        &mut self,
        idle: Option<std::time::Duration>,
        whole: Option<std::time::Duration>,
        start: std::time::Instant,
    ) {
        self.idle = idle;
        self.deadline = whole.map(|d| (tokio::time::Instant::from_std(start) + d, d));
    }

    /// When the timer fires next, from `now`.
    fn due(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let idle = self.idle.map(|d| now + d);
        match (idle, self.deadline) {
            (Some(i), Some((w, _))) => Some(i.min(w)),
            (i, w) => i.or(w.map(|(w, _)| w)),
        }
    }
}

impl http_body::Body for Lingering {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(b) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(b).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.timer.is_some()
                    && let Some(due) = this.due(tokio::time::Instant::now())
                    && let Some(t) = this.timer.as_mut()
                {
                    t.as_mut().reset(due);
                }
                if let (Some(s), Some(d)) = (&this.state, frame.data_ref()) {
                    s.received.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.timer.is_none() {
                    let Some(due) = this.due(tokio::time::Instant::now()) else {
                        return Poll::Pending;
                    };
                    this.timer = Some(Box::pin(tokio::time::sleep_until(due)));
                }
                let Some(t) = this.timer.as_mut() else {
                    return Poll::Pending;
                };
                if t.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if this.state.as_ref().is_some_and(|s| s.answered()) {
                    // The upstream answered: a quiet client is its call
                    // (a gRPC stream). The inner body's waker is set.
                    this.idle = None;
                    this.deadline = None;
                    this.timer = None;
                    return Poll::Pending;
                }
                let now = tokio::time::Instant::now();
                let err = match (this.deadline, this.idle) {
                    (Some((at, d)), _) if now >= at => BodyTimedOut {
                        after: crate::config::units::Dur(d),
                        whole: true,
                    },
                    (_, Some(d)) => BodyTimedOut {
                        after: crate::config::units::Dur(d),
                        whole: false,
                    },
                    _ => return Poll::Pending,
                };
                // Nothing more is read: no lingering for a stalled client.
                this.inner = None;
                this.timer = None;
                Poll::Ready(Some(Err(Box::new(err))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if !self.h1 || http_body::Body::is_end_stream(&body) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            use http_body_util::BodyExt;
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let next = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame());
                match tokio::time::timeout_at(until, next).await {
                    Ok(Ok(Some(Ok(_)))) => {}
                    _ => return,
                }
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails once more than `limit` bytes have passed.
    pub struct Limited<B> {
        #[pin]
        inner: B,
        seen: u64,
        limit: u64,
        state: Arc<BodyState>,
    }
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: u64, state: Arc<BodyState>) -> Self {
        Limited {
            inner,
            seen: 0,
            limit,
            state,
        }
    }
}

impl<B> http_body::Body for Limited<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if *this.seen > *this.limit {
                        this.state.set(BodyState::TOO_LARGE);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(*this.limit)))));
                    }
                }
                this.state
                    .moved(this.inner.is_end_stream() || frame.is_trailers());
                let mut frame = frame;
                if let Some(t) = frame.trailers_mut() {
                    crate::field::clean_trailers(t);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                this.state.set(if BodyTimedOut::find(&*e).is_some() {
                    BodyState::TIMED_OUT
                } else {
                    BodyState::CLIENT_ERROR
                });
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.state.moved(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The size hint of `len` known bytes followed by a body with hint `rest`.
pub fn hint_after(len: u64, rest: Option<SizeHint>) -> SizeHint {
    match rest {
        Some(h) => {
            let mut s = SizeHint::new();
            s.set_lower(h.lower() + len);
            if let Some(u) = h.upper() {
                s.set_upper(u + len);
            }
            s
        }
        None => SizeHint::with_exact(len),
    }
}

/// Called once when a response body is done: `(bytes sent, completed)`;
/// `completed` is false when the body failed or was dropped early.
pub trait OnDone: Send + 'static {
    fn done(self, bytes: u64, completed: bool);
    /// The body's trailers went by (e.g. a gRPC answer's `grpc-status`).
    fn trailers(&mut self, _trailers: &http::HeaderMap) {}
    /// Longest wait for the body's next frame (None: no limit).
    fn read_timeout(&self) -> Option<std::time::Duration> {
        None
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports its size and fate when it ends.
    pub struct Observed<B, H>
    where
        B: http_body::Body,
        H: OnDone,
    {
        #[pin]
        inner: B,
        bytes: u64,
        // Held inline (not boxed): the response body is boxed once, with it.
        hook: Option<H>,
        // The read timeout, and its timer: armed only when the inner body
        // is not ready (a body that arrives with its head never has one).
        read_timeout: Option<std::time::Duration>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl<B, H> PinnedDrop for Observed<B, H>
    where
        B: http_body::Body,
        H: OnDone,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(h) = this.hook.take() {
                // A body hyper never polled because it was already empty
                // (a 204, a HEAD) completed normally. So did a sized body
                // whose every byte went out and only its trailers were left
                // (an HTTP/1.1 client of a Content-Length answer cannot take
                // them, and hyper stops reading at the length).
                let inner = this.inner.as_ref().get_ref();
                let sent_all = *this.bytes > 0 && inner.size_hint().exact() == Some(0);
                h.done(*this.bytes, inner.is_end_stream() || sent_all);
            }
        }
    }
}

impl<B: http_body::Body, H: OnDone> Observed<B, H> {
    pub fn new(inner: B, hook: H) -> Self {
        Observed {
            inner,
            bytes: 0,
            read_timeout: hook.read_timeout(),
            hook: Some(hook),
            timer: None,
        }
    }
}

impl<B, H> http_body::Body for Observed<B, H>
where
    B: http_body::Body<Data = Bytes, Error = BoxError>,
    H: OnDone,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let mut r = this.inner.poll_frame(cx);
        match &mut r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                } else if let Some(t) = frame.trailers_mut() {
                    crate::field::clean_trailers(t);
                    if let Some(h) = this.hook.as_mut() {
                        h.trailers(t);
                    }
                }
                if let (Some(t), Some(d)) = (this.timer.as_mut(), *this.read_timeout) {
                    t.as_mut().reset(tokio::time::Instant::now() + d);
                }
            }
            Poll::Ready(None) => {
                if let Some(h) = this.hook.take() {
                    h.done(*this.bytes, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(h) = this.hook.take() {
                    h.done(*this.bytes, false);
                }
            }
            Poll::Pending => {
                if let Some(d) = *this.read_timeout {
                    let t = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                    if t.as_mut().poll(cx).is_ready() {
                        if let Some(h) = this.hook.take() {
                            h.done(*this.bytes, false);
                        }
                        return Poll::Ready(Some(Err(format!(
                            "upstream response body: nothing for {} (read_timeout)",
                            crate::config::units::Dur(d)
                        )
                        .into())));
                    }
                }
            }
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
