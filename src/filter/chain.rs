//! Running a route's filters on a request: block and annotate filters on a
//! held prefix of the body before forwarding, shadow filters on a copy taken
//! as the body streams, and answer routes that reply with a verdict. Every
//! inspection runs on the bounded [`Pool`]; nothing here blocks a network
//! thread.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::pool::Pool;
use super::spool::SpoolFile;
use super::{Filter, Inspection, RequestInfo, Skip, Unclassified, Verdict};
use crate::config::file::{FilterMode, OnOverload, OnOversize};
use crate::config::model::{FilterUsage, RuleAction};
use crate::error::ProxyError;
use crate::metrics::FilterMetrics;
use crate::snapshot::RouteFilter;

/// A body's first bytes, read and held for inspection.
#[derive(Debug, Default)]
pub struct Held {
    pub data: Bytes,
    /// The body ended within what was read.
    pub complete: bool,
    pub trailers: Option<HeaderMap>,
    /// Holding stopped early: `overload.max_buffered_bytes` was reached
    /// (what was read is here; the rest is still the client's stream).
    pub starved: bool,
}

/// Read up to just past `cap` bytes of `body` (the whole body if it is no
/// longer), each byte held taken from `res` (when it has no more, holding
/// stops: `starved`). `route_limit` is the route's max_request_body.
pub async fn hold<B>(
    body: &mut B,
    cap: u64,
    route_limit: u64,
    res: &mut crate::budget::Reservation,
) -> Result<Held, ProxyError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<crate::body::BoxError>,
{
    // A body that arrives in one data frame (the common small body) is
    // held as that frame, without a copy; later frames are appended to
    // a buffer that starts with it.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut held = Held::default();
    loop {
        let len = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if len as u64 > cap {
            break;
        }
        match body.frame().await {
            None => {
                held.complete = true;
                break;
            }
            Some(Err(e)) => return Err(client_body(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    if (len + d.len()) as u64 > route_limit {
                        return Err(ProxyError::BodyTooLarge { limit: route_limit });
                    }
                    // The frame is read either way (it is kept and
                    // forwarded); a starved hold reads no more.
                    let starved = !res.grow(d.len() as u64);
                    if len == 0 && first.is_none() {
                        first = Some(d);
                    } else {
                        if let Some(f) = first.take() {
                            buf.extend_from_slice(&f);
                        }
                        buf.extend_from_slice(&d);
                    }
                    if starved {
                        held.starved = true;
                        break;
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        held.trailers = Some(t);
                        held.complete = true;
                        break;
                    }
                }
            },
        }
    }
    held.data = match first {
        Some(f) => f,
        None => buf.freeze(),
    };
    Ok(held)
}

/// A failed read of the client's body (408 if it timed out, else 400).
fn client_body(e: impl Into<crate::body::BoxError>) -> ProxyError {
    let e: crate::body::BoxError = e.into();
    ProxyError::client_body(&*e)
}

/// What the block and annotate filters decided for a forwarded request.
#[derive(Debug, Default)]
pub struct Decision {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A rule sends the request to this cluster.
    pub cluster: Option<String>,
    /// `filter=verdict(score)` for the access log.
    pub summary: Vec<String>,
}

/// Run the held-body filters (block, annotate) in order.
pub async fn run_held(
    pool: &Pool,
    metrics: &FilterMetrics,
    route: &str,
    info: &RequestInfo,
    held: &Held,
    filters: &[&RouteFilter],
) -> Result<Decision, ProxyError> {
    let mut d = Decision::default();
    let bodiless = held.complete && held.data.is_empty();
    for rf in filters {
        let f = &rf.filter;
        let name = f.spec().name.as_str();
        let Some(insp) = start(f.as_ref(), info, &rf.spec.usage, metrics, &mut d.summary)? else {
            continue;
        };
        if held.starved {
            // No memory left to hold the body (overload.max_buffered_bytes):
            // as a saturated pool, the filter's on_overload decides.
            let (result, took) = refused(rf, metrics)?;
            apply(&mut d, metrics, route, rf, result, took)?;
            continue;
        }
        let data = held.data.clone();
        let truncated = !held.complete;
        let run = move || {
            let t = Instant::now();
            let mut insp = insp;
            insp.feed(&data);
            (insp.finish(truncated), t.elapsed())
        };
        // A small body costs less to classify than to hand to another
        // thread and back (two context switches): it runs here, within a
        // bounded budget (tens of microseconds), like parsing a request.
        let (result, took) = if held.data.len() <= INLINE_MAX && held.complete {
            run()
        } else {
            pool_run(pool, run, rf, name, metrics).await?
        };
        // A request without a body runs the filters for its query fields
        // only: none of them named, nothing was inspected (not a skip).
        if bodiless && matches!(result, Err(Unclassified::Skip(Skip::Empty))) {
            continue;
        }
        apply(&mut d, metrics, route, rf, result, took)?;
    }
    Ok(d)
}

/// Record one filter's outcome and act on it: metrics, the access-log
/// summary, headers for the upstream, and in block mode its rules.
fn apply(
    d: &mut Decision,
    metrics: &FilterMetrics,
    route: &str,
    rf: &RouteFilter,
    result: Result<Verdict, Unclassified>,
    took: std::time::Duration,
) -> Result<(), ProxyError> {
    let f = &rf.filter;
    let name = f.spec().name.as_str();
    if !matches!(result, Err(Unclassified::Skip(Skip::Overload))) {
        metrics
            .duration
            .with_label_values(&[name])
            .observe(took.as_secs_f64());
    }
    let v = match result {
        Ok(v) => v,
        Err(u) => {
            unclassified(metrics, name, u, &mut d.summary)?;
            if let Unclassified::Skip(s) = u {
                unreadable(name, &rf.spec.usage, s)?;
            }
            return Ok(());
        }
    };
    // A verdict on the query fields of a request whose body was not read:
    // the body's skip counts too, and `on_unreadable: reject` still
    // refuses it.
    if let Some(s) = v.unread {
        metrics.skipped.with_label_values(&[name, s.as_str()]).inc();
        d.summary.push(format!("{name}=skipped:{}", s.as_str()));
        unreadable(name, &rf.spec.usage, s)?;
    }
    metrics
        .verdicts
        .with_label_values(&[name, route, v.verdict])
        .inc();
    // `{name}={verdict}({score:.4})` without the float formatter.
    let mut digits = [0u8; 64];
    let score = super::fixed4(v.score, &mut digits);
    let mut s = String::with_capacity(name.len() + v.verdict.len() + score.len() + 3);
    s.push_str(name);
    s.push('=');
    s.push_str(v.verdict);
    s.push('(');
    s.push_str(std::str::from_utf8(score).unwrap_or("?"));
    s.push(')');
    d.summary.push(s);
    if rf.spec.usage.mode == FilterMode::Block {
        let rule = rf
            .spec
            .rules
            .iter()
            .find(|r| r.when.iter().any(|w| w == v.verdict) && v.score >= r.min_score);
        let reject = match rule.map(|r| &r.action) {
            Some(RuleAction::Reject) => true,
            Some(RuleAction::Cluster(c)) => {
                d.cluster.get_or_insert_with(|| c.clone());
                false
            }
            None => rf.spec.rules.is_empty() && v.flagged,
        };
        if reject {
            return Err(ProxyError::FilterBlocked {
                filter: name.to_string(),
                verdict: v.verdict,
                status: f.spec().block_status,
                message: f.spec().block_message.clone(),
                score: v.score,
            });
        }
    }
    d.headers.extend(v.headers);
    Ok(())
}

/// A body held for `on_oversize: spool` filters, ready to forward.
#[derive(Debug, Default)]
pub struct Spilled {
    /// Up to `max_inspect_bytes`, in memory.
    pub head: Vec<Bytes>,
    /// What went past it, on disk.
    pub file: Option<SpoolFile>,
    /// Read but not yet written to the file (the filters stopped early).
    pub tail: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
    /// The body ended within what was read (else the rest follows from the
    /// client's stream).
    pub complete: bool,
    /// Bytes read so far.
    pub read: u64,
}

/// Run the held-body filters of a route that spools (a filter's
/// `on_oversize` is `spool`): the body is inspected as it streams, in
/// batches on the pool, while its first `max_inspect_bytes` are held in
/// memory and the rest is written to a spool file on the pool (memory per
/// request stays bounded, whatever the body's length up to the route's
/// `max_request_body`). Once every inspection has read all it will (a
/// non-streaming filter past its `max_inspect_bytes`), reading stops and
/// the rest of the body streams through after the verdict, unspooled.
/// A saturated pool is each filter's `on_overload`;
/// when every filter is gone (fail-open), the body is forwarded as held so
/// far plus the rest of the stream, unclassified.
///
/// The part held in memory is taken from `res`; when the budget
/// (`overload.max_buffered_bytes`) has no more, the rest goes to the spool
/// file at once. What goes to the file is taken from `disk`
/// (`overload.max_spooled_bytes`); when that has no more, the filters
/// still running are refused as by a saturated pool (their `on_overload`).
#[allow(clippy::too_many_arguments)]
pub async fn run_spooled<B>(
    pool: &Pool,
    metrics: &FilterMetrics,
    route: &str,
    info: &RequestInfo,
    body: &mut B,
    filters: &[&RouteFilter],
    route_limit: u64,
    res: &mut crate::budget::Reservation,
    disk: &mut crate::budget::Reservation,
) -> Result<(Decision, Spilled), ProxyError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<crate::body::BoxError>,
{
    let mut out: Vec<Option<Outcome>> = filters.iter().map(|_| None).collect();
    // Filters that skipped at once (content type, encoding) lead the
    // access log's summary, as on the held path.
    let mut pre = Vec::new();
    let mut running: Vec<(usize, Inspection)> = Vec::new();
    for (i, rf) in filters.iter().enumerate() {
        if let Some(x) = start(rf.filter.as_ref(), info, &rf.spec.usage, metrics, &mut pre)? {
            running.push((i, x));
        }
    }
    let mut held = Spilled::default();
    if running.is_empty() {
        let d = Decision {
            summary: pre,
            ..Decision::default()
        };
        return Ok((d, held));
    }
    let mut cap = filters
        .iter()
        .map(|f| f.spec.usage.max_inspect_bytes)
        .max()
        .unwrap_or(0);
    let dir = filters
        .iter()
        .find(|f| f.spec.usage.on_oversize == OnOversize::Spool)
        .map_or_else(std::env::temp_dir, |f| f.filter.spec().spool_dir.clone());
    let spooled = metrics.spooled.with_label_values(&[route]);
    let file: Arc<std::sync::Mutex<Option<SpoolFile>>> = Arc::default();
    let mut in_memory = 0u64;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    let mut spill_len = 0usize;
    let mut busy = std::time::Duration::ZERO;
    let mut jobs = 0usize;
    loop {
        let end = match body.frame().await {
            None => true,
            Some(Err(e)) => return Err(client_body(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => {
                    held.read += d.len() as u64;
                    if held.read > route_limit {
                        return Err(ProxyError::BodyTooLarge { limit: route_limit });
                    }
                    batch_len += d.len();
                    batch.push(d.clone());
                    let mut room = (cap - in_memory) as usize;
                    if room > 0 && !res.grow(d.len().min(room) as u64) {
                        // No memory left for it: spooled from here on.
                        res.budget().deny(crate::budget::Use::Spool);
                        cap = in_memory;
                        room = 0;
                    }
                    if d.len() <= room {
                        in_memory += d.len() as u64;
                        held.head.push(d);
                    } else {
                        if room > 0 {
                            held.head.push(d.slice(..room));
                            in_memory = cap;
                        }
                        spill_len += d.len() - room;
                        held.tail.push(d.slice(room..));
                    }
                    false
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        held.trailers = Some(t);
                        true
                    } else {
                        false
                    }
                }
            },
        };
        // A small body that is all here (nothing spilled, no job yet)
        // is classified on this thread, as run_held does.
        if end && spill_len == 0 && jobs == 0 && held.read as usize <= INLINE_MAX {
            let t = Instant::now();
            let n = running.len().max(1) as u32;
            for (i, mut x) in std::mem::take(&mut running) {
                for d in &batch {
                    x.feed(d);
                }
                out[i] = Some((x.finish(false), std::time::Duration::ZERO));
            }
            let each = t.elapsed() / n;
            for o in out.iter_mut().flatten() {
                o.1 = each;
            }
            held.complete = true;
            let d = decide(filters, metrics, route, out, pre)?;
            return Ok((d, held));
        }
        if batch_len >= BATCH || spill_len >= BATCH || (end && batch_len + spill_len > 0) {
            if spill_len > 0 && !disk.grow(spill_len as u64) {
                // No room on disk (overload.max_spooled_bytes): as a
                // saturated pool. The spill stays in `held.tail`.
                disk.budget().deny(crate::budget::Use::Filter);
                overloaded(filters, metrics, &mut out)?;
                held.complete = end;
                let d = decide(filters, metrics, route, out, pre)?;
                held.file = take_file(&file);
                return Ok((d, held));
            }
            let data = std::mem::take(&mut batch);
            // The spill stays in `held.tail` until it is on disk: a refused
            // job loses no byte.
            let spill = held.tail.clone();
            let insp = std::mem::take(&mut running);
            let shared = file.clone();
            let dir = dir.clone();
            let job = move || {
                let t = Instant::now();
                let mut insp = insp;
                for (_, i) in insp.iter_mut() {
                    for d in &data {
                        if i.wants_more() {
                            i.feed(d);
                        }
                    }
                }
                let written = if spill.is_empty() {
                    Ok(())
                } else {
                    let mut f = shared.lock().unwrap_or_else(|p| p.into_inner());
                    match &mut *f {
                        Some(f) => f.write(&spill),
                        None => SpoolFile::create(&dir).and_then(|x| f.insert(x).write(&spill)),
                    }
                };
                (insp, written, t.elapsed())
            };
            match pool.spawn(job) {
                Ok(rx) => {
                    let (back, written, took) = rx
                        .await
                        .map_err(|_| ProxyError::Internal("spooling filter job failed".into()))?;
                    written.map_err(|e| ProxyError::Spool(e.to_string()))?;
                    spooled.inc_by(spill_len as u64);
                    held.tail.clear();
                    running = back;
                    busy += took;
                    jobs += 1;
                }
                Err(_) => {
                    // The job (and the inspections in it) is gone.
                    overloaded(filters, metrics, &mut out)?;
                    held.complete = end;
                    let d = decide(filters, metrics, route, out, pre)?;
                    held.file = take_file(&file);
                    return Ok((d, held));
                }
            }
            batch_len = 0;
            spill_len = 0;
            if !end && running.iter().all(|(_, i)| !i.wants_more()) {
                // Every filter has read all it will: the rest of the body
                // streams through after the verdict, nothing more spooled.
                break;
            }
        }
        if end {
            held.complete = true;
            break;
        }
    }
    held.file = take_file(&file);
    let n = running.len().max(1) as u32;
    let truncated = !held.complete;
    let job = move || {
        let t = Instant::now();
        let r: Vec<(usize, Result<Verdict, Unclassified>)> = running
            .into_iter()
            .map(|(i, x)| (i, x.finish(truncated)))
            .collect();
        (r, t.elapsed())
    };
    match pool.spawn(job) {
        Ok(rx) => {
            let (results, took) = rx
                .await
                .map_err(|_| ProxyError::Internal("filter job failed".into()))?;
            let each = (busy + took) / n;
            for (i, r) in results {
                out[i] = Some((r, each));
            }
        }
        Err(_) => overloaded(filters, metrics, &mut out)?,
    }
    let d = decide(filters, metrics, route, out, pre)?;
    Ok((d, held))
}

fn take_file(f: &std::sync::Mutex<Option<SpoolFile>>) -> Option<SpoolFile> {
    f.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// The pool refused a spooling route's job: every filter still without an
/// outcome gets its `on_overload` decision ([`refused`]).
fn overloaded(
    filters: &[&RouteFilter],
    metrics: &FilterMetrics,
    out: &mut [Option<Outcome>],
) -> Result<(), ProxyError> {
    for (o, rf) in out.iter_mut().zip(filters) {
        if o.is_none() {
            *o = Some(refused(rf, metrics)?);
        }
    }
    Ok(())
}

/// Apply the outcomes in the route's filter order (a filter that did not
/// start was counted as skipped already).
fn decide(
    filters: &[&RouteFilter],
    metrics: &FilterMetrics,
    route: &str,
    out: Vec<Option<Outcome>>,
    pre: Vec<String>,
) -> Result<Decision, ProxyError> {
    let mut d = Decision {
        summary: pre,
        ..Decision::default()
    };
    for (rf, o) in filters.iter().zip(out) {
        if let Some((result, took)) = o {
            apply(&mut d, metrics, route, rf, result, took)?;
        }
    }
    Ok(d)
}

/// Bodies up to this size are classified on the request's own thread.
const INLINE_MAX: usize = 8 * 1024;

type Outcome = (Result<Verdict, Unclassified>, std::time::Duration);

/// Run an inspection on the pool; a saturated pool is the filter's
/// `on_overload` decision (fail-open comes back as an overload skip).
async fn pool_run(
    pool: &Pool,
    run: impl FnOnce() -> Outcome + Send + 'static,
    rf: &RouteFilter,
    name: &str,
    metrics: &FilterMetrics,
) -> Result<Outcome, ProxyError> {
    match pool.spawn(run) {
        Ok(rx) => rx
            .await
            .map_err(|_| ProxyError::Internal(format!("filter {name} failed"))),
        Err(_) => refused(rf, metrics),
    }
}

/// The pool refused a filter's job: its `on_overload` decides (fail-open
/// comes back as an overload skip, fail-closed as 503), counted.
fn refused(rf: &RouteFilter, metrics: &FilterMetrics) -> Result<Outcome, ProxyError> {
    let name = rf.filter.spec().name.as_str();
    match rf.spec.usage.on_overload {
        OnOverload::FailOpen => {
            metrics
                .overload
                .with_label_values(&[name, "fail_open"])
                .inc();
            Ok((
                Err(Unclassified::Skip(Skip::Overload)),
                std::time::Duration::ZERO,
            ))
        }
        OnOverload::FailClosed => {
            metrics
                .overload
                .with_label_values(&[name, "fail_closed"])
                .inc();
            Err(ProxyError::FilterOverloaded {
                filter: name.to_string(),
            })
        }
    }
}

/// Start a filter's inspection of a body: `None` when it does not apply at
/// once (content type, encoding), counted and noted in `summary` (the
/// access log's `filters` field); an error when the filter refuses what it
/// cannot read (`on_unreadable: reject`).
fn start(
    f: &dyn Filter,
    info: &RequestInfo,
    usage: &FilterUsage,
    metrics: &FilterMetrics,
    summary: &mut Vec<String>,
) -> Result<Option<Inspection>, ProxyError> {
    let name = f.spec().name.as_str();
    let r = f.inspector(info).and_then(|i| {
        Inspection::new(
            i,
            info.content_encoding.as_deref(),
            usage,
            f.spec().max_decompressed_bytes,
        )
    });
    match r {
        Ok(i) => Ok(Some(i)),
        Err(skip) => {
            metrics
                .skipped
                .with_label_values(&[name, skip.as_str()])
                .inc();
            summary.push(format!("{name}=skipped:{}", skip.as_str()));
            unreadable(name, usage, skip)?;
            Ok(None)
        }
    }
}

/// `on_unreadable: reject` in block mode: a body the filter cannot read
/// (type, encoding, broken compression, unparseable) is refused instead of
/// forwarded unclassified.
fn unreadable(name: &str, usage: &FilterUsage, skip: Skip) -> Result<(), ProxyError> {
    let unreadable = matches!(
        skip,
        Skip::ContentType | Skip::Encoding | Skip::DecodeError | Skip::ExtractError
    );
    if unreadable
        && usage.mode == FilterMode::Block
        && usage.on_unreadable == crate::config::file::OnUnreadable::Reject
    {
        return Err(ProxyError::Unclassifiable {
            filter: name.to_string(),
            reason: skip.as_str(),
        });
    }
    Ok(())
}

fn unclassified(
    metrics: &FilterMetrics,
    name: &str,
    u: Unclassified,
    summary: &mut Vec<String>,
) -> Result<(), ProxyError> {
    match u {
        Unclassified::Skip(s) => {
            metrics.skipped.with_label_values(&[name, s.as_str()]).inc();
            summary.push(format!("{name}=skipped:{}", s.as_str()));
            Ok(())
        }
        Unclassified::Oversize { limit } => {
            metrics.skipped.with_label_values(&[name, "oversize"]).inc();
            Err(ProxyError::InspectTooLarge {
                filter: name.to_string(),
                limit,
            })
        }
        Unclassified::Decompression { limit } => {
            metrics
                .skipped
                .with_label_values(&[name, "decode_error"])
                .inc();
            Err(ProxyError::DecompressionLimit {
                filter: name.to_string(),
                limit,
            })
        }
    }
}

/// Batches handed to the pool while streaming.
const BATCH: usize = 256 * 1024;

/// Answer a request with a filter's verdict: the body is streamed through
/// the inspection (bounded memory whatever its length).
pub async fn answer<B>(
    pool: &Pool,
    metrics: &FilterMetrics,
    route: &str,
    info: &RequestInfo,
    filter: &Arc<dyn Filter>,
    body: &mut B,
    route_limit: u64,
) -> Result<Verdict, ProxyError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<crate::body::BoxError>,
{
    let spec = filter.spec();
    let name = spec.name.as_str();
    let unclassifiable = |s: Skip| ProxyError::Unclassifiable {
        filter: name.to_string(),
        reason: s.as_str(),
    };
    let overloaded = || {
        metrics
            .overload
            .with_label_values(&[name, "fail_closed"])
            .inc();
        ProxyError::FilterOverloaded {
            filter: name.to_string(),
        }
    };
    let usage = FilterUsage {
        mode: FilterMode::Block,
        ..spec.usage.clone()
    };
    let mut insp = filter
        .inspector(info)
        .and_then(|i| {
            Inspection::new(
                i,
                info.content_encoding.as_deref(),
                &usage,
                spec.max_decompressed_bytes,
            )
        })
        .map_err(|s| {
            metrics.skipped.with_label_values(&[name, s.as_str()]).inc();
            unclassifiable(s)
        })?;
    let mut total = 0u64;
    let mut batch = BytesMut::new();
    let mut busy = std::time::Duration::ZERO;
    let mut truncated = false;
    loop {
        let frame = body.frame().await;
        let end = match frame {
            None => true,
            Some(Err(e)) => return Err(client_body(e)),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    total += d.len() as u64;
                    if total > route_limit {
                        return Err(ProxyError::BodyTooLarge { limit: route_limit });
                    }
                    batch.extend_from_slice(&d);
                }
                false
            }
        };
        if batch.len() >= BATCH || (end && !batch.is_empty()) {
            let data = std::mem::take(&mut batch).freeze();
            let rx = pool
                .spawn(move || {
                    let t = Instant::now();
                    insp.feed(&data);
                    (insp, t.elapsed())
                })
                .map_err(|_| overloaded())?;
            let (back, took) = rx
                .await
                .map_err(|_| ProxyError::Internal(format!("filter {name} failed")))?;
            insp = back;
            busy += took;
            if !insp.wants_more() && !end {
                // Past the limit: what follows cannot change the verdict.
                truncated = true;
                break;
            }
        }
        if end {
            break;
        }
    }
    let rx = pool
        .spawn(move || {
            let t = Instant::now();
            (insp.finish(truncated), t.elapsed())
        })
        .map_err(|_| overloaded())?;
    let (result, took) = rx
        .await
        .map_err(|_| ProxyError::Internal(format!("filter {name} failed")))?;
    metrics
        .duration
        .with_label_values(&[name])
        .observe((busy + took).as_secs_f64());
    match result {
        // An answer is on the body: a verdict on the query alone would
        // answer for a body that was not read.
        Ok(Verdict {
            unread: Some(s), ..
        }) => {
            metrics.skipped.with_label_values(&[name, s.as_str()]).inc();
            Err(unclassifiable(s))
        }
        Ok(v) => {
            metrics
                .verdicts
                .with_label_values(&[name, route, v.verdict])
                .inc();
            Ok(v)
        }
        Err(Unclassified::Skip(s)) => {
            metrics.skipped.with_label_values(&[name, s.as_str()]).inc();
            Err(unclassifiable(s))
        }
        Err(u) => {
            let mut ignore = Vec::new();
            unclassified(metrics, name, u, &mut ignore)?;
            Err(unclassifiable(Skip::Oversize))
        }
    }
}

/// Start the shadow filters of a request: returns the sender the body's
/// [`Tee`] copies chunks into. The inspections run off the request path;
/// their verdicts go to metrics and the log only.
pub fn shadow(
    pool: Arc<Pool>,
    metrics: Arc<crate::metrics::Metrics>,
    route: Arc<str>,
    info: RequestInfo,
    request_id: String,
    filters: Vec<(Arc<dyn Filter>, FilterUsage)>,
) -> Option<ShadowTx> {
    let fm = &metrics.filters;
    let mut running: Vec<(String, Inspection)> = filters
        .iter()
        .filter_map(|(f, u)| {
            // Shadow verdicts go to metrics and logs only.
            let u = FilterUsage {
                mode: FilterMode::Shadow,
                ..u.clone()
            };
            start(f.as_ref(), &info, &u, fm, &mut Vec::new())
                .ok()
                .flatten()
                .map(|i| (f.spec().name.clone(), i))
        })
        .collect();
    if running.is_empty() {
        return None;
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let state = Arc::new(AtomicU8::new(COPY_OPEN));
    let copy = ShadowTx {
        tx,
        state: state.clone(),
    };
    tokio::spawn(async move {
        let fm = &metrics.filters;
        let mut batch = BytesMut::new();
        let mut busy = std::time::Duration::ZERO;
        let mut truncated = false;
        let mut seen = 0usize;
        loop {
            let next = rx.recv().await;
            let end = next.is_none();
            if let Some(b) = next {
                seen += b.len();
                batch.extend_from_slice(&b);
            }
            if batch.len() >= BATCH || (end && !batch.is_empty()) {
                let data = std::mem::take(&mut batch).freeze();
                let names: Vec<String> = running.iter().map(|(n, _)| n.clone()).collect();
                let job = pool.spawn(move || {
                    let t = Instant::now();
                    for (_, i) in running.iter_mut() {
                        if i.wants_more() {
                            i.feed(&data);
                        }
                    }
                    (running, t.elapsed())
                });
                let Ok(job) = job else {
                    for n in &names {
                        fm.overload.with_label_values(&[n, "shadow_dropped"]).inc();
                        fm.skipped.with_label_values(&[n, "overload"]).inc();
                    }
                    return;
                };
                let Ok((back, took)) = job.await else { return };
                running = back;
                busy += took;
                if !end && running.iter().all(|(_, i)| !i.wants_more()) {
                    truncated = true;
                    break;
                }
            }
            if end {
                break;
            }
        }
        drop(rx);
        // The channel closed: a verdict is only honest if the copy had the
        // whole body, or every inspection already had all it reads.
        if !truncated && state.load(Ordering::Acquire) != COPY_COMPLETE {
            if running.iter().all(|(_, i)| !i.wants_more()) {
                truncated = true;
            } else {
                let dropped = state.load(Ordering::Acquire) == COPY_DROPPED;
                for (n, _) in &running {
                    if dropped {
                        fm.overload.with_label_values(&[n, "shadow_dropped"]).inc();
                    }
                    fm.skipped
                        .with_label_values(&[n, Skip::Incomplete.as_str()])
                        .inc();
                }
                return;
            }
        }
        let names: Vec<String> = running.iter().map(|(n, _)| n.clone()).collect();
        let job = pool.spawn(move || {
            let t = Instant::now();
            let out: Vec<(String, Result<Verdict, Unclassified>)> = running
                .into_iter()
                .map(|(n, i)| (n, i.finish(truncated)))
                .collect();
            (out, t.elapsed())
        });
        let Ok(job) = job else {
            for n in &names {
                fm.overload.with_label_values(&[n, "shadow_dropped"]).inc();
                fm.skipped.with_label_values(&[n, "overload"]).inc();
            }
            return;
        };
        let Ok((out, took)) = job.await else { return };
        let per = (busy + took).as_secs_f64() / out.len().max(1) as f64;
        for (name, r) in out {
            fm.duration.with_label_values(&[&name]).observe(per);
            match r {
                Ok(v) => {
                    if let Some(s) = v.unread {
                        fm.skipped.with_label_values(&[&name, s.as_str()]).inc();
                    }
                    fm.verdicts
                        .with_label_values(&[name.as_str(), &*route, v.verdict])
                        .inc();
                    tracing::info!(
                        target: "sift::filter",
                        request_id = %request_id,
                        route = %route,
                        filter = %name,
                        mode = "shadow",
                        verdict = v.verdict,
                        score = v.score,
                        "shadow verdict"
                    );
                }
                // No body, and none of the query fields it runs for.
                Err(Unclassified::Skip(Skip::Empty)) if seen == 0 => {}
                Err(Unclassified::Skip(s)) => {
                    fm.skipped.with_label_values(&[&name, s.as_str()]).inc();
                }
                Err(Unclassified::Oversize { .. }) => {
                    fm.skipped.with_label_values(&[&name, "oversize"]).inc();
                }
                Err(Unclassified::Decompression { .. }) => {
                    fm.skipped.with_label_values(&[&name, "decode_error"]).inc();
                }
            }
        }
    });
    Some(copy)
}

/// The copy is still being sent.
const COPY_OPEN: u8 = 0;
/// The whole body was sent.
const COPY_COMPLETE: u8 = 1;
/// A chunk did not fit the channel (the inspection fell behind): the copy
/// is missing the rest.
const COPY_DROPPED: u8 = 2;

/// The sending end of a shadow copy. The inspection gives a verdict only
/// when the sender marked the copy complete (or it already had all it
/// reads); a copy cut short by a full channel or a failed client body is
/// counted `incomplete` (and `shadow_dropped` for the channel), never
/// scored as if it were the whole body.
pub struct ShadowTx {
    tx: mpsc::Sender<Bytes>,
    state: Arc<AtomicU8>,
}

impl ShadowTx {
    /// Send a whole body held in memory.
    pub fn send_all(self, body: Bytes) {
        let st = match self.tx.try_send(body) {
            Ok(()) => COPY_COMPLETE,
            Err(_) => COPY_DROPPED,
        };
        self.state.store(st, Ordering::Release);
    }

    fn mark(&self, st: u8) {
        // Only the first outcome counts (a drop stays a drop).
        let _ = self
            .state
            .compare_exchange(COPY_OPEN, st, Ordering::AcqRel, Ordering::Acquire);
    }
}

pin_project_lite::pin_project! {
    /// A body that passes through unchanged while copying its data frames
    /// to a shadow inspection. A full copy channel drops the copy (the
    /// inspection then counts it `incomplete`), never slows the body.
    pub struct Tee<B> {
        #[pin]
        inner: B,
        tx: Option<ShadowTx>,
    }
}

impl<B> Tee<B> {
    pub fn new(inner: B, tx: ShadowTx) -> Tee<B> {
        Tee {
            inner,
            tx: Some(tx),
        }
    }
}

impl<B> HttpBody for Tee<B>
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
                if let (Some(d), Some(tx)) = (f.data_ref(), this.tx.as_ref()) {
                    if tx.tx.try_send(d.clone()).is_err() {
                        // Full or gone: the shadow copy stops here.
                        tx.mark(COPY_DROPPED);
                        *this.tx = None;
                    }
                }
                // A consumer may stop polling once the body says it ended.
                if this.inner.is_end_stream() {
                    if let Some(tx) = this.tx.take() {
                        tx.mark(COPY_COMPLETE);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(tx) = this.tx.take() {
                    tx.mark(COPY_COMPLETE);
                }
            }
            // The client's body failed: the copy is incomplete (the state
            // stays open, which the inspection reads as incomplete).
            Poll::Ready(Some(Err(_))) => {
                *this.tx = None;
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
