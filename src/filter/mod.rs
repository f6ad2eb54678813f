//! Body filters: classifiers on the request path.
//!
//! A [`Filter`] looks at a request's headers and decides whether it can read
//! the body ([`Filter::inspector`]); an [`Inspector`] is then fed the
//! decoded body bytes and gives a [`Verdict`]. The same trait serves the
//! proxy (block, annotate, shadow, answer) and the Envoy external
//! processing servers: nothing here knows about hyper.
//!
//! The chain-level mechanics live here too, so every filter gets them for
//! free: Content-Encoding decoding with a decompression cap
//! ([`Inspection`]), the `max_inspect_bytes` bound and `on_oversize`, and
//! the bounded [`pool::Pool`] that runs the CPU work.

pub mod chain;
pub mod cilog;
pub mod extract;
pub mod json_stream;
pub mod pool;
pub mod spam;
pub mod spool;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::config::file::{FilterKind, OnOversize};
use crate::config::model::{FilterSpec, FilterUsage, ModelSource};

/// What a filter knows of a request (owned: inspections run on other threads).
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub route: Arc<str>,
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub identity: Option<String>,
    /// The raw query string (after `?`), if any.
    pub query: Option<String>,
}

/// A filter's decision on one body.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub filter: String,
    /// A bounded label: `spam`/`ham`, or a CI-log class.
    pub verdict: &'static str,
    /// What block mode rejects when the route has no rules (spam: true).
    pub flagged: bool,
    /// Spam probability, or the class's confidence (rounded).
    #[serde(serialize_with = "short_f32")]
    pub score: f32,
    /// Extra fields for the JSON answer and logs (e.g. evidence).
    #[serde(flatten)]
    pub detail: serde_json::Map<String, serde_json::Value>,
    /// Request headers for the upstream (annotate and block modes).
    #[serde(skip)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body was not read (why), and the verdict is on the request's
    /// other text (its query fields): counted as a skip too, and refused
    /// under `on_unreadable: reject` as an unread body is.
    #[serde(skip)]
    pub unread: Option<Skip>,
}

/// An f32 as the shortest decimal that reads back as it (0.931, not
/// 0.9309999942779541).
fn short_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(short_f64(*v))
}

/// The f64 whose shortest decimal is the f32's (for JSON).
pub fn short_f64(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(f64::from(v))
}

/// `v` as `format!("{v:.4}")` writes it, without the float formatter when
/// `v` is in 0..=1 and within 2.5e-5 of a multiple of 1e-4 (a rounded
/// score: then the 4 decimals are those of that multiple); other values
/// go through the formatter.
pub fn fixed4(v: f32, buf: &mut [u8; 64]) -> &[u8] {
    // Exact: 24 bits of mantissa times 10^4 fit an f64.
    let x = f64::from(v) * 10_000.0;
    let k = x.round();
    if v.is_sign_positive() && (0.0..=10_000.0).contains(&k) && (x - k).abs() < 0.25 {
        let k = k as u32;
        let int = k / 10_000;
        let frac = k % 10_000;
        buf[0] = b'0' + int as u8;
        buf[1] = b'.';
        for (i, d) in [1000, 100, 10, 1].iter().enumerate() {
            buf[2 + i] = b'0' + ((frac / d) % 10) as u8;
        }
        return &buf[..6];
    }
    use std::io::Write;
    let mut w = &mut buf[..];
    let _ = write!(w, "{v:.4}");
    let n = 64 - w.len();
    &buf[..n]
}

/// [`short_f64`] of a value rounded to 4 decimals (`(x * 1e4).round() /
/// 1e4` in f32), without formatting and parsing when it has at most 6
/// significant digits: then the f32's shortest decimal is `k / 10^4` and
/// the nearest f64 to it is the correctly rounded `k as f64 / 1e4`.
pub fn short_f64_4(v: f32) -> f64 {
    let k = (f64::from(v) * 10_000.0).round();
    let d = k / 10_000.0;
    // `v` must be the f32 nearest to k / 10^4 (checked, not assumed).
    if k.abs() < 1_000_000.0 && d as f32 == v {
        d.copysign(f64::from(v))
    } else {
        short_f64(v)
    }
}

/// Why a body was not classified (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    ContentType,
    Encoding,
    Empty,
    Oversize,
    Overload,
    DecodeError,
    ExtractError,
    ModelError,
    /// A shadow copy that lost part of the body (its channel was full, or
    /// the client's body failed): not scored.
    Incomplete,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::ContentType => "content_type",
            Skip::Encoding => "encoding",
            Skip::Empty => "empty",
            Skip::Oversize => "oversize",
            Skip::Overload => "overload",
            Skip::DecodeError => "decode_error",
            Skip::ExtractError => "extract_error",
            Skip::ModelError => "model_error",
            Skip::Incomplete => "incomplete",
        }
    }
}

/// An inspection that did not give a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unclassified {
    /// Not classified; the request goes on.
    Skip(Skip),
    /// Longer than `max_inspect_bytes` with `on_oversize: reject` (413).
    Oversize { limit: u64 },
    /// A compressed body expands past `max_decompressed_bytes` (413).
    Decompression { limit: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter {filter:?}: model {path}: {reason}")]
    Model {
        filter: String,
        path: String,
        reason: String,
    },
    #[error("filter {0:?} cannot learn at run time")]
    LearnUnsupported(String),
    #[error("filter {0:?} learns by retraining on labelled logs: set its learn_data")]
    LearnNeedsData(String),
    #[error("cannot read the labelled logs of learn_data {path}: {reason}")]
    LearnData { path: String, reason: String },
    #[error("bad examples: {0}")]
    BadExamples(String),
    #[error("cannot save the learned model to {path}: {reason}")]
    Persist { path: String, reason: String },
}

/// What `POST /filters/{name}/learn` reports.
#[derive(Clone, Debug, Serialize)]
pub struct LearnReport {
    pub filter: String,
    pub examples: usize,
    /// Spam filters: the batch's spam and ham counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spam: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ham: Option<usize>,
    /// CI-log filters: the batch's logs per class.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub classes: std::collections::BTreeMap<String, usize>,
    /// CI-log filters: every labelled log the model was retrained on
    /// (learn_data plus all logs learned so far).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trained_on: Option<usize>,
    pub saved_to: String,
}

impl LearnReport {
    /// Examples of the batch by label (`sift_filter_learned_examples_total`).
    pub fn by_label(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> =
            self.classes.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.extend(self.spam.map(|n| ("spam".to_string(), n)));
        v.extend(self.ham.map(|n| ("ham".to_string(), n)));
        v
    }
}

pub trait Filter: Send + Sync {
    fn spec(&self) -> &FilterSpec;

    /// Start inspecting a body, or say why this request is not for us.
    fn inspector(&self, req: &RequestInfo) -> Result<Box<dyn Inspector>, Skip>;

    /// Learn labelled examples (JSONL), persist, swap the model in.
    fn learn(&self, _jsonl: &[u8]) -> Result<LearnReport, FilterError> {
        Err(FilterError::LearnUnsupported(self.spec().name.clone()))
    }

    /// Reload the model if its file changed. `None`: no change.
    fn reload_if_changed(&self) -> Option<Result<String, FilterError>> {
        None
    }

    /// Where the model in use came from (for logs and the admin API).
    fn model_source(&self) -> String;
}

/// Reads one body. `feed` gets decoded bytes in order, at most
/// `max_inspect_bytes` in all.
pub trait Inspector: Send {
    fn feed(&mut self, chunk: &[u8]);
    /// The body went on past what was fed (`inspect_prefix`): what the
    /// inspector holds is a prefix, which a JSON parser must not reject as
    /// broken.
    fn cut(&mut self) {}
    fn finish(self: Box<Self>) -> Result<Verdict, Skip>;
    /// The body will not be read (`skip` says why: empty, not text,
    /// broken, too long to read): a verdict on the request's other text
    /// (query fields), or the skip.
    fn finish_unread(self: Box<Self>, skip: Skip) -> Result<Verdict, Skip> {
        Err(skip)
    }
    /// It has text to judge besides the body (query fields): a body it
    /// cannot decode still leaves a verdict to give.
    fn has_other_text(&self) -> bool {
        false
    }
    /// A skip the inspector already knows it will answer, whatever else
    /// the body holds (a body of a type it does not read, seen not to be
    /// JSON): the body need not be held or read further, and its size
    /// does not matter (no 413 for a binary upload it never reads).
    fn settled(&self) -> Option<Skip> {
        None
    }
    /// Its memory stays bounded however much it is fed (a streaming
    /// scanner): with `on_oversize: spool` it reads the whole body.
    fn bounded(&self) -> bool {
        false
    }
}

/// Build the filter a spec describes, loading its model.
pub fn build(spec: &FilterSpec) -> Result<Arc<dyn Filter>, FilterError> {
    match spec.kind {
        FilterKind::Spam | FilterKind::Onnx => Ok(Arc::new(spam::SpamFilter::new(spec.clone())?)),
        FilterKind::Cilog => Ok(Arc::new(cilog::CilogFilter::new(spec.clone())?)),
    }
}

/// `<header_prefix>-<suffix>` as a header name.
pub(crate) fn header_name(spec: &FilterSpec, suffix: &str) -> Result<HeaderName, FilterError> {
    HeaderName::from_bytes(format!("{}-{suffix}", spec.header_prefix).as_bytes()).map_err(|e| {
        FilterError::Model {
            filter: spec.name.clone(),
            path: "-".into(),
            reason: format!("header_prefix: {e}"),
        }
    })
}

/// A header value made safe: printable ASCII only, at most `max` bytes.
pub fn header_value(s: &str, max: usize) -> HeaderValue {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        if out.len() >= max {
            break;
        }
        let c = if c == '\t' { ' ' } else { c };
        if (' '..='~').contains(&c) {
            out.push(c);
        } else if !c.is_control() {
            out.push('?');
        }
    }
    HeaderValue::from_str(out.trim()).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The files a filter's model comes from: its model file and its learned file.
pub(crate) fn watched(spec: &FilterSpec) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let ModelSource::File(p) = &spec.model {
        v.push(p.clone());
    }
    if let Some(l) = &spec.learned_model {
        v.push(l.clone());
    }
    v
}

/// File identity for change detection (symlink swaps included); also used
/// by the TLS material watcher.
pub(crate) type Fingerprint = Vec<Option<(PathBuf, u64, u64, Option<std::time::SystemTime>)>>;

pub(crate) fn fingerprint(paths: &[&Path]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            let resolved = std::fs::canonicalize(p).ok()?;
            let m = std::fs::metadata(&resolved).ok()?;
            Some((resolved, m.ino(), m.len(), m.modified().ok()))
        })
        .collect()
}

/// A filter's model behind its own atomic pointer, with the files it came
/// from watched for changes. An inspection keeps the `Arc` it started with.
pub(crate) struct ModelSlot<M> {
    paths: Vec<PathBuf>,
    current: arc_swap::ArcSwap<Loaded<M>>,
    seen: std::sync::Mutex<Fingerprint>,
}

pub(crate) struct Loaded<M> {
    pub model: M,
    /// Where it came from (a path, or `builtin`).
    pub source: String,
}

impl<M> ModelSlot<M> {
    pub fn new(paths: Vec<PathBuf>, loaded: Loaded<M>) -> ModelSlot<M> {
        let seen = fingerprint(&paths.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        ModelSlot {
            paths,
            current: arc_swap::ArcSwap::from_pointee(loaded),
            seen: std::sync::Mutex::new(seen),
        }
    }

    pub fn current(&self) -> Arc<Loaded<M>> {
        self.current.load_full()
    }

    fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.paths.iter().map(PathBuf::as_path).collect::<Vec<_>>())
    }

    /// Load again with `load` if a watched file changed.
    pub fn reload_if_changed(
        &self,
        load: impl FnOnce() -> Result<Loaded<M>, FilterError>,
    ) -> Option<Result<String, FilterError>> {
        let now = self.fingerprint();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some(load().map(|l| {
            let source = l.source.clone();
            self.current.store(Arc::new(l));
            source
        }))
    }

    /// Swap in a model this process just wrote (its files are not reloaded).
    pub fn store_written(&self, l: Loaded<M>) {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = self.fingerprint();
        self.current.store(Arc::new(l));
    }
}

/// A content coding of the IANA registry (what an app or library might
/// decode), or a `x-` name for one.
fn is_content_coding(c: &str) -> bool {
    matches!(
        c,
        "gzip"
            | "x-gzip"
            | "deflate"
            | "br"
            | "zstd"
            | "compress"
            | "x-compress"
            | "aes128gcm"
            | "dcb"
            | "dcz"
            | "exi"
            | "pack200-gzip"
    ) || c.starts_with("x-")
}

/// One body's inspection: Content-Encoding decoding, the inspect limit and
/// the decompression cap around a filter's [`Inspector`].
pub struct Inspection {
    dec: Decoder,
    on_oversize: OnOversize,
    failed: bool,
    /// The body will not be read (an encoding sift cannot decode), but
    /// the inspector judges the request's other text at the end.
    unread: Option<Skip>,
}

enum Decoder {
    Identity(Sink),
    /// Every member of a multi-member gzip stream (RFC 1952 allows them).
    Gzip(flate2::write::MultiGzDecoder<Sink>),
    Zlib(flate2::write::ZlibDecoder<Sink>),
    Deflate(flate2::write::DeflateDecoder<Sink>),
    /// `deflate` before its first two bytes: zlib-wrapped (RFC 9110) or
    /// raw. The first byte is held here when it comes alone.
    DeflatePending(Option<Sink>, Option<u8>),
    Brotli(Box<Brotli>),
}

/// A `br` body, decoded by driving brotli-decompressor's state machine
/// ([`brotli_decompressor::BrotliDecompressStream`]) into the sink.
///
/// The outcome depends on the bytes only, never on how they are split
/// into chunks (a client or proxy may send any framing):
/// - every wire byte given is decoded and checked, also once the sink has
///   all the inspector reads (`max_inspect_bytes`: the sink then only
///   stops handing bytes on). Decoding stops at the first error, at the
///   decompression cap, or at the stream's end; bytes after the end are an
///   error, as are bytes the decoder would leave unread.
/// - large-window streams (not RFC 7932, never HTTP's `br`) are refused,
///   as the C decoder does by default (`new_strict`).
/// - brotli-decompressor 6.4 rejects a meta-block whose commands write
///   more than its header declares (RFC 7932 §9.3) wherever that falls.
///   4.x checked it only when it happened to hand on output with the input
///   used up right there, so such a body (found by the `decode` fuzz
///   target) failed fed byte by byte and decoded fed at once.
struct Brotli {
    state: brotli_decompressor::BrotliState<
        brotli_decompressor::StandardAlloc,
        brotli_decompressor::StandardAlloc,
        brotli_decompressor::StandardAlloc,
    >,
    /// Decoded bytes on their way to the sink (a fixed size).
    out: Box<[u8]>,
    total_out: usize,
    /// The stream ended (`Some(true)`) or broke (`Some(false)`).
    stopped: Option<bool>,
    sink: Sink,
}

impl Brotli {
    fn new(sink: Sink) -> Brotli {
        use brotli_decompressor::StandardAlloc;
        Brotli {
            state: brotli_decompressor::BrotliState::new_strict(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ),
            out: vec![0; 8192].into_boxed_slice(),
            total_out: 0,
            stopped: None,
            sink,
        }
    }

    /// Decode `wire` into the sink; empty: the body ended, and the stream
    /// must have ended too.
    fn write(&mut self, wire: &[u8]) -> std::io::Result<()> {
        use brotli_decompressor::BrotliResult;
        let bad = |why: &str| Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
        match self.stopped {
            Some(true) if wire.is_empty() => return Ok(()),
            Some(true) => return bad("bytes after the end of the brotli stream"),
            Some(false) => return bad("broken brotli stream"),
            None => {}
        }
        // Stopped unless the loop below finds it may go on.
        self.stopped = Some(false);
        let (mut avail_in, mut in_off) = (wire.len(), 0);
        loop {
            let (mut avail_out, mut out_off) = (self.out.len(), 0);
            let r = brotli_decompressor::BrotliDecompressStream(
                &mut avail_in,
                &mut in_off,
                wire,
                &mut avail_out,
                &mut out_off,
                &mut self.out,
                &mut self.total_out,
                &mut self.state,
            );
            let Some(decoded) = self.out.get(..out_off) else {
                return bad("brotli decoder overran its buffer");
            };
            self.sink.write_all(decoded)?;
            match r {
                // The buffer was full: hand on more (the cap bounds it).
                BrotliResult::NeedsMoreOutput if out_off > 0 => {}
                BrotliResult::NeedsMoreInput if wire.is_empty() => {
                    return bad("brotli stream cut short");
                }
                // The decoder holds a partial read itself: all of `wire`
                // is taken.
                BrotliResult::NeedsMoreInput if avail_in == 0 => {
                    self.stopped = None;
                    return Ok(());
                }
                BrotliResult::ResultSuccess if avail_in == 0 => {
                    self.stopped = Some(true);
                    return Ok(());
                }
                BrotliResult::ResultSuccess => {
                    return bad("bytes after the end of the brotli stream");
                }
                // A failure, or more output wanted with none given (no
                // progress: never loop on it).
                _ => return bad("corrupt brotli stream"),
            }
        }
    }
}

struct Sink {
    inner: Option<Box<dyn Inspector>>,
    limit: u64,
    fed: u64,
    total: u64,
    cap: u64,
    oversize: bool,
    capped: bool,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.total += buf.len() as u64;
        if self.total > self.cap {
            self.capped = true;
            return Err(std::io::Error::other("decompression limit"));
        }
        let room = self.limit - self.fed;
        let take = (buf.len() as u64).min(room) as usize;
        if let (true, Some(inner)) = (take > 0, self.inner.as_mut()) {
            inner.feed(&buf[..take]);
            self.fed += take as u64;
        }
        if buf.len() > take {
            self.oversize = true;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Inspection {
    /// Wrap `inner` for a body with `content_encoding`; `None` (and a
    /// [`Skip::Encoding`]) for an encoding sift cannot decode.
    pub fn new(
        inner: Box<dyn Inspector>,
        content_encoding: Option<&str>,
        usage: &FilterUsage,
        max_decompressed: u64,
    ) -> Result<Inspection, Skip> {
        // Content-Encoding is a list (RFC 9110 §8.4; repeated headers are
        // joined with commas by the caller): `identity` entries are no-ops;
        // more than one real coding is not decoded (a skip, counted). A
        // name that is no content coding at all (`foo`) is no-op too: no
        // app decodes it (Express answers 415, and Flask, Django, Rails,
        // PHP and Go read the bytes as sent), so skipping such a body
        // would forward the plain text those apps read unclassified.
        let enc = content_encoding.unwrap_or_default().to_ascii_lowercase();
        let mut codings = enc
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty() && *c != "identity" && is_content_coding(c));
        let enc = codings.next().unwrap_or_default();
        let decodable = matches!(enc, "" | "gzip" | "x-gzip" | "deflate" | "br");
        let unread = (codings.next().is_some() || !decodable).then_some(Skip::Encoding);
        if unread.is_some() && !inner.has_other_text() {
            return Err(Skip::Encoding);
        }
        let identity = enc.is_empty();
        let whole = usage.on_oversize == OnOversize::Spool && inner.bounded();
        let sink = Sink {
            inner: Some(inner),
            limit: if whole {
                u64::MAX
            } else {
                usage.max_inspect_bytes
            },
            fed: 0,
            total: 0,
            cap: if identity { u64::MAX } else { max_decompressed },
            oversize: false,
            capped: false,
        };
        let dec = match enc {
            _ if identity || unread.is_some() => Decoder::Identity(sink),
            "gzip" | "x-gzip" => Decoder::Gzip(flate2::write::MultiGzDecoder::new(sink)),
            "deflate" => Decoder::DeflatePending(Some(sink), None),
            "br" => Decoder::Brotli(Box::new(Brotli::new(sink))),
            _ => return Err(Skip::Encoding),
        };
        Ok(Inspection {
            dec,
            on_oversize: usage.on_oversize,
            failed: false,
            unread,
        })
    }

    /// Feed wire bytes (still encoded).
    pub fn feed(&mut self, mut wire: &[u8]) {
        if self.failed || self.unread.is_some() || wire.is_empty() {
            return;
        }
        if let Decoder::DeflatePending(_, held) = &mut self.dec {
            // The zlib header is two bytes, which may come in two chunks.
            if held.is_none() {
                *held = Some(wire[0]);
                wire = &wire[1..];
                if wire.is_empty() {
                    return;
                }
            }
            self.settle_deflate(Some(wire[0]));
            if self.failed {
                return;
            }
        }
        let r = match &mut self.dec {
            Decoder::Identity(s) => s.write_all(wire),
            Decoder::Gzip(d) => d.write_all(wire),
            Decoder::Zlib(d) => d.write_all(wire),
            Decoder::Deflate(d) => d.write_all(wire),
            Decoder::Brotli(d) => d.write(wire),
            Decoder::DeflatePending(..) => Ok(()),
        };
        if r.is_err() {
            self.failed = true;
        }
    }

    /// `deflate`: once the byte after the held first byte is known (`None`:
    /// the body ended), pick zlib or raw deflate and feed the held byte.
    fn settle_deflate(&mut self, second: Option<u8>) {
        let Decoder::DeflatePending(sink, held) = &mut self.dec else {
            return;
        };
        let Some(first) = *held else { return };
        let Some(sink) = sink.take() else { return };
        let zlib = second.is_some_and(|second| {
            first & 0x0f == 8 && (u16::from(first) << 8 | u16::from(second)) % 31 == 0
        });
        let r = if zlib {
            let mut d = flate2::write::ZlibDecoder::new(sink);
            let r = d.write_all(&[first]);
            self.dec = Decoder::Zlib(d);
            r
        } else {
            let mut d = flate2::write::DeflateDecoder::new(sink);
            let r = d.write_all(&[first]);
            self.dec = Decoder::Deflate(d);
            r
        };
        if r.is_err() {
            self.failed = true;
        }
    }

    /// Whether feeding more bytes can change the outcome.
    pub fn wants_more(&self) -> bool {
        if self.failed || self.unread.is_some() {
            return false;
        }
        let s = match &self.dec {
            Decoder::Identity(s) => s,
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::Zlib(d) => d.get_ref(),
            Decoder::Deflate(d) => d.get_ref(),
            Decoder::Brotli(d) => &d.sink,
            Decoder::DeflatePending(s, _) => match s {
                Some(s) => s,
                None => return false,
            },
        };
        if s.inner.as_ref().is_some_and(|i| i.settled().is_some()) {
            return false;
        }
        // Past the limit only the decompression cap still needs counting.
        !(s.oversize && s.cap == u64::MAX)
    }

    fn sink_mut(&mut self) -> Option<&mut Sink> {
        Some(match &mut self.dec {
            Decoder::Identity(s) => s,
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zlib(d) => d.get_mut(),
            Decoder::Deflate(d) => d.get_mut(),
            Decoder::Brotli(d) => &mut d.sink,
            Decoder::DeflatePending(s, _) => s.as_mut()?,
        })
    }

    /// The verdict. `truncated`: the body went on past what was fed.
    pub fn finish(mut self, truncated: bool) -> Result<Verdict, Unclassified> {
        if let Some(skip) = self.unread {
            return match self.sink_mut().and_then(|s| s.inner.take()) {
                Some(inner) => inner.finish_unread(skip).map_err(Unclassified::Skip),
                None => Err(Unclassified::Skip(skip)),
            };
        }
        // A one-byte `deflate` body is raw deflate (and not a whole stream).
        self.settle_deflate(None);
        let finished = match &mut self.dec {
            Decoder::Identity(_) | Decoder::DeflatePending(..) => Ok(()),
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Zlib(d) => d.try_finish(),
            Decoder::Deflate(d) => d.try_finish(),
            // Hands on what the decoder still holds, and fails on a
            // stream that did not end.
            Decoder::Brotli(d) => d.write(&[]),
        };
        let failed = self.failed;
        let on_oversize = self.on_oversize;
        let Some(sink) = self.sink_mut() else {
            return Err(Unclassified::Skip(Skip::Empty));
        };
        if sink.capped {
            return Err(Unclassified::Decompression { limit: sink.cap });
        }
        let cut = sink.oversize || truncated;
        // Why the body is not read, if it is not; the inspector may still
        // judge the request's other text.
        let skip = if let Some(skip) = sink.inner.as_ref().and_then(|i| i.settled()) {
            Some(skip)
        } else if failed || (finished.is_err() && !truncated) {
            // A truncated prefix of a compressed body cannot finish cleanly.
            Some(Skip::DecodeError)
        } else if sink.total == 0 && !truncated {
            Some(Skip::Empty)
        } else if cut {
            match on_oversize {
                OnOversize::Skip => Some(Skip::Oversize),
                OnOversize::Reject => return Err(Unclassified::Oversize { limit: sink.limit }),
                OnOversize::InspectPrefix | OnOversize::Spool => None,
            }
        } else {
            None
        };
        let Some(mut inner) = sink.inner.take() else {
            return Err(Unclassified::Skip(skip.unwrap_or(Skip::Empty)));
        };
        if let Some(skip) = skip {
            return inner.finish_unread(skip).map_err(Unclassified::Skip);
        }
        if cut {
            inner.cut();
        }
        inner.finish().map_err(Unclassified::Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::{FilterMode, OnOverload};

    struct Count(Vec<u8>);
    impl Inspector for Count {
        fn feed(&mut self, chunk: &[u8]) {
            self.0.extend_from_slice(chunk);
        }
        fn finish(self: Box<Self>) -> Result<Verdict, Skip> {
            let mut detail = serde_json::Map::new();
            detail.insert(
                "text".into(),
                String::from_utf8_lossy(&self.0).into_owned().into(),
            );
            Ok(Verdict {
                filter: "t".into(),
                verdict: "ham",
                flagged: false,
                score: self.0.len() as f32,
                detail,
                headers: Vec::new(),
                unread: None,
            })
        }
    }

    fn usage(limit: u64, on_oversize: OnOversize) -> FilterUsage {
        FilterUsage {
            mode: FilterMode::Block,
            max_inspect_bytes: limit,
            on_oversize,
            on_overload: OnOverload::FailOpen,
            on_unreadable: Default::default(),
        }
    }

    fn run(
        enc: Option<&str>,
        wire: &[u8],
        u: &FilterUsage,
        cap: u64,
    ) -> Result<Verdict, Unclassified> {
        let mut i = Inspection::new(Box::new(Count(Vec::new())), enc, u, cap).unwrap();
        for c in wire.chunks(7) {
            i.feed(c);
        }
        i.finish(false)
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_gzip_zlib_and_raw_deflate() {
        let text = b"hello hello hello world".repeat(10);
        let u = usage(1 << 20, OnOversize::Reject);
        let v = run(Some("gzip"), &gzip(&text), &u, 1 << 20).unwrap();
        assert_eq!(v.score as usize, text.len());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        let v = run(Some("deflate"), &z.finish().unwrap(), &u, 1 << 20).unwrap();
        assert_eq!(v.score as usize, text.len());
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(&text).unwrap();
        let v = run(Some("deflate"), &d.finish().unwrap(), &u, 1 << 20).unwrap();
        assert_eq!(v.score as usize, text.len());
    }

    #[test]
    fn deflate_decodes_whatever_the_first_chunk() {
        // A zlib-wrapped `deflate` body (found by the `decode` fuzz target)
        // whose first chunk is one byte: the zlib header was judged on that
        // byte alone, so the body was read as raw deflate and skipped as a
        // decode error (fed at once it decodes).
        let wire: &[u8] = &[
            0x78, 0x9c, 0x73, 0xc9, 0xcf, 0x2b, 0x51, 0xc8, 0xce, 0xcb, 0x2f, 0x57, 0xa8, 0xcc,
            0x2f, 0x55, 0x48, 0x2a, 0xca, 0xcc, 0x4b, 0x57, 0x28, 0xce, 0xcf, 0x4d, 0x55, 0x48,
            0xcb, 0xcf, 0x4f, 0x01, 0x00, 0xa0, 0x83, 0x0a, 0xc0,
        ];
        let u = usage(1 << 20, OnOversize::Reject);
        for split in [1, 2, 3, wire.len()] {
            let mut i =
                Inspection::new(Box::new(Count(Vec::new())), Some("deflate"), &u, 1 << 20).unwrap();
            for c in wire.chunks(split) {
                i.feed(c);
            }
            let v = i.finish(false).unwrap();
            assert_eq!(
                v.detail["text"], "Dont know you bring some food",
                "chunks of {split}"
            );
        }
        // A lone byte is still raw deflate: not a whole stream.
        let mut i =
            Inspection::new(Box::new(Count(Vec::new())), Some("deflate"), &u, 1 << 20).unwrap();
        i.feed(&[0x78]);
        assert!(matches!(
            i.finish(false),
            Err(Unclassified::Skip(Skip::DecodeError))
        ));
    }

    #[test]
    fn brotli_must_end_and_hands_on_all_it_decoded() {
        // Found by the `decode` fuzz target: a brotli body cut short was
        // classified as if whole (finish only flushed the sink, which
        // never asks the decoder whether the stream ended), on fewer bytes
        // when fed at once than in small chunks (the decoder still held
        // output).
        let text: Vec<u8> = (0..2000)
            .flat_map(|i| format!("line {i} of a long message\n").into_bytes())
            .collect();
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&text).unwrap();
        }
        let u = usage(1 << 20, OnOversize::InspectPrefix);
        let feed = |wire: &[u8], step: usize, truncated: bool| {
            let mut i =
                Inspection::new(Box::new(Count(Vec::new())), Some("br"), &u, 1 << 20).unwrap();
            for c in wire.chunks(step) {
                i.feed(c);
            }
            i.finish(truncated)
        };
        let cut = &br[..br.len() / 2];
        for step in [1, 7, 4096, br.len()] {
            let v = feed(&br, step, false).unwrap();
            assert_eq!(v.score as usize, text.len(), "whole, chunks of {step}");
            // Cut short: unreadable, not a verdict on a part.
            let r = feed(cut, step, false);
            assert!(
                matches!(r, Err(Unclassified::Skip(Skip::DecodeError))),
                "cut, chunks of {step}: {:?}",
                r.map(|v| v.score)
            );
            // A prefix the caller knows is one (inspect_prefix) gives a
            // verdict on part of the text. How much depends on the chunking:
            // brotli-decompressor keeps output in its ring buffer until more
            // input comes, and gives it up at the stream's end only.
            let v = feed(cut, step, true).unwrap();
            assert!(v.score > 0.0 && v.score < text.len() as f32);
        }
    }

    #[test]
    fn large_window_brotli_is_refused() {
        // RFC 7932 brotli (what `Content-Encoding: br` is) has windows of
        // at most 16 MiB; the large-window extension is not HTTP's, and
        // the C decoder refuses it by default. brotli-decompressor accepts
        // it unless asked not to, and reserved up to 1 GiB for it.
        let text = b"a large-window stream is not HTTP brotli ".repeat(50);
        let compress = |large: bool| {
            let params = brotli::enc::BrotliEncoderParams {
                large_window: large,
                lgwin: if large { 26 } else { 22 },
                ..Default::default()
            };
            let mut out = Vec::new();
            brotli::BrotliCompress(&mut &text[..], &mut out, &params).unwrap();
            out
        };
        let u = usage(1 << 20, OnOversize::InspectPrefix);
        let run = |wire: &[u8]| {
            let mut i =
                Inspection::new(Box::new(Count(Vec::new())), Some("br"), &u, 1 << 20).unwrap();
            i.feed(wire);
            i.finish(false)
        };
        let v = run(&compress(false)).expect("standard brotli decodes");
        assert_eq!(v.score as usize, text.len());
        let r = run(&compress(true));
        assert!(
            matches!(r, Err(Unclassified::Skip(Skip::DecodeError))),
            "{:?}",
            r.map(|v| v.score)
        );
    }

    #[test]
    fn corrupt_brotli_fails_whatever_the_chunking() {
        // Found by the `decode` fuzz target: a brotli body whose first
        // meta-block's commands write more than the length its header
        // declares (RFC 7932 §9.3: invalid). brotli-decompressor 4 checked
        // that only when it happened to flush with input exhausted right
        // there: fed byte by byte it failed, fed at once it decoded 27
        // bytes, so a prefix was classified (or 413 / skipped) instead.
        let wire: &[u8] = &[
            0x00, 0x00, 0x00, 0x6e, 0x64, 0x20, 0x20, 0x52, 0x6f, 0x73, 0x45, 0x20, 0x61, 0x6e,
            0x64, 0x20, 0x6d, 0x61, 0x79, 0x20, 0x6e, 0x13, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x37, 0x00, 0x00, 0x00,
            0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        for on_oversize in [
            OnOversize::InspectPrefix,
            OnOversize::Skip,
            OnOversize::Reject,
        ] {
            for (limit, cap) in [(16, 4096), (1 << 20, 1 << 20)] {
                let u = usage(limit, on_oversize);
                for truncated in [true, false] {
                    for step in [1, 2, 3, 5, 7, 16, wire.len()] {
                        let mut i =
                            Inspection::new(Box::new(Count(Vec::new())), Some("br"), &u, cap)
                                .unwrap();
                        for c in wire.chunks(step) {
                            i.feed(c);
                        }
                        let r = i.finish(truncated);
                        assert!(
                            matches!(r, Err(Unclassified::Skip(Skip::DecodeError))),
                            "{on_oversize:?} limit {limit} truncated {truncated} \
                             chunks of {step}: {:?}",
                            r.map(|v| v.score)
                        );
                    }
                }
            }
        }

        // Variants of it, garbled past their first 3 to 16 bytes (with
        // brotli-decompressor 4, 1 in 11 to 1 in 2 of them split so, by how
        // much is kept): whatever each gives, it gives in every chunking.
        let u = usage(16, OnOversize::InspectPrefix);
        let outcome = |wire: &[u8], step: usize, truncated: bool| {
            let mut i = Inspection::new(Box::new(Count(Vec::new())), Some("br"), &u, 4096).unwrap();
            for c in wire.chunks(step) {
                i.feed(c);
            }
            // How much of a prefix decodes may differ; the outcome may not.
            i.finish(truncated).map(|_| ())
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut wire = wire.to_vec();
            let keep = 3 + (rnd() % 14) as usize;
            for b in wire.iter_mut().skip(keep) {
                if rnd() % 4 == 0 {
                    *b = rnd() as u8;
                }
            }
            for truncated in [true, false] {
                let whole = outcome(&wire, wire.len(), truncated);
                for step in [1, 2, 3, 7] {
                    assert_eq!(
                        outcome(&wire, step, truncated),
                        whole,
                        "{wire:02x?} (truncated {truncated}) in chunks of {step}"
                    );
                }
            }
        }

        // Bytes after the stream's end: broken too, however they come.
        let mut tail = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut tail, 4096, 5, 22);
            w.write_all(b"a whole stream").unwrap();
        }
        tail.extend_from_slice(b"and more");
        let u = usage(1 << 20, OnOversize::InspectPrefix);
        for step in [1, 3, tail.len()] {
            let mut i =
                Inspection::new(Box::new(Count(Vec::new())), Some("br"), &u, 1 << 20).unwrap();
            for c in tail.chunks(step) {
                i.feed(c);
            }
            let r = i.finish(false).map(|v| v.score);
            assert_eq!(
                r,
                Err(Unclassified::Skip(Skip::DecodeError)),
                "chunks of {step}"
            );
        }
    }

    #[test]
    fn a_zip_bomb_hits_the_cap_not_memory() {
        let bomb = gzip(&vec![0u8; 50 << 20]);
        assert!(bomb.len() < 100 << 10, "50 MiB of zeros compresses small");
        let u = usage(64 << 10, OnOversize::InspectPrefix);
        let r = run(Some("gzip"), &bomb, &u, 1 << 20);
        assert_eq!(
            r.unwrap_err(),
            Unclassified::Decompression { limit: 1 << 20 }
        );
        let mut bomb = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut bomb, 4096, 5, 22);
            w.write_all(&vec![0u8; 8 << 20]).unwrap();
        }
        assert!(bomb.len() < 10 << 10, "8 MiB of zeros compresses small");
        for step in [bomb.len(), 7] {
            let mut i =
                Inspection::new(Box::new(Count(Vec::new())), Some("br"), &u, 1 << 20).unwrap();
            for c in bomb.chunks(step) {
                i.feed(c);
            }
            let r = i.finish(false).map(|v| v.score);
            assert_eq!(r, Err(Unclassified::Decompression { limit: 1 << 20 }));
        }
    }

    #[test]
    fn oversize_policies() {
        let body = vec![b'a'; 100];
        let v = run(None, &body, &usage(10, OnOversize::InspectPrefix), 0).unwrap();
        assert_eq!(v.score, 10.0, "only the prefix is inspected");
        let r = run(None, &body, &usage(10, OnOversize::Skip), 0);
        assert_eq!(r.unwrap_err(), Unclassified::Skip(Skip::Oversize));
        let r = run(None, &body, &usage(10, OnOversize::Reject), 0);
        assert_eq!(r.unwrap_err(), Unclassified::Oversize { limit: 10 });
        let v = run(None, &body, &usage(100, OnOversize::Reject), 0).unwrap();
        assert_eq!(v.score, 100.0, "exactly the limit is not oversize");
    }

    #[test]
    fn corrupt_and_unknown_encodings() {
        let u = usage(1 << 20, OnOversize::Reject);
        let r = run(Some("gzip"), b"this is not gzip at all", &u, 1 << 20);
        assert_eq!(r.unwrap_err(), Unclassified::Skip(Skip::DecodeError));
        for enc in ["zstd", "compress", "gzip, br", "gzip, gzip", "x-zstd"] {
            let r = Inspection::new(Box::new(Count(Vec::new())), Some(enc), &u, 1);
            assert_eq!(r.err(), Some(Skip::Encoding), "{enc}");
        }
        // Not a content coding: the bytes are read as sent, as apps do.
        let v = run(Some("foo"), b"plain text", &u, 1 << 20).unwrap();
        assert_eq!(v.detail["text"], "plain text");
        let v = run(Some("foo, gzip"), &gzip(b"zipped"), &u, 1 << 20).unwrap();
        assert_eq!(v.detail["text"], "zipped");
        let r = run(None, b"", &u, 0);
        assert_eq!(r.unwrap_err(), Unclassified::Skip(Skip::Empty));
    }

    #[test]
    fn fast_score_formatting_matches_the_formatter() {
        let mut vals: Vec<f32> = (0..=10_000).map(|k| k as f32 / 10_000.0).collect();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = (s >> 40) as f32 / (1u64 << 24) as f32;
            vals.push(x);
            vals.push((x * 10_000.0).round() / 10_000.0);
            let m = (x - 0.5) * 400.0;
            vals.push(m);
            vals.push((m * 10_000.0).round() / 10_000.0);
            vals.push(f32::from_bits((s >> 32) as u32));
        }
        vals.extend([
            -0.0,
            0.0,
            1.0,
            -1.0,
            1e10,
            -1e10,
            f32::NAN,
            f32::INFINITY,
            99.99995,
        ]);
        for v in vals {
            let mut buf = [0u8; 64];
            let want = format!("{v:.4}");
            if want.len() <= 64 {
                assert_eq!(
                    std::str::from_utf8(fixed4(v, &mut buf)).unwrap(),
                    want,
                    "{v}"
                );
            }
            let r = (v * 10_000.0).round() / 10_000.0;
            let (a, b) = (short_f64_4(r), short_f64(r));
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{r}"
            );
        }
    }

    #[test]
    fn header_values_are_sanitised() {
        assert_eq!(
            header_value("ok line\r\nx-evil: 1", 100),
            "ok linex-evil: 1"
        );
        assert_eq!(header_value("été", 100), "?t?");
        assert_eq!(header_value(&"a".repeat(500), 16).len(), 16);
    }
}
