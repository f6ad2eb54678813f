//! gzip and brotli compression of upstream answers per route, with Envoy's
//! meaning (its `compressor` filter, gzip and brotli libraries) and
//! nginx's (`gzip on`):
//!
//! - only in a coding the client accepts (`Accept-Encoding`, q-values
//!   read: `gzip;q=0` refuses it, `*` accepts what is not named); among
//!   the route's `algorithms`, the one with the highest q, ties going to
//!   the route's order;
//! - only answers whose Content-Type is in the route's list, that carry no
//!   Content-Encoding, no `Cache-Control: no-transform`, are not 204, 206
//!   or 304, answer no HEAD, and are not known to be shorter than
//!   `min_bytes`;
//! - the answer streams: each piece from the upstream is compressed and
//!   flushed at once (a sync flush), so server-sent events and long polls
//!   keep flowing; Content-Length goes, a strong ETag becomes weak (the
//!   bytes differ), and `Vary: accept-encoding` is added to every answer
//!   that could have been compressed, compressed or not, so caches keep the
//!   two apart;
//! - an upstream body that fails midway ends the compressed stream without
//!   its gzip trailer: the client sees a broken body, never a short one.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http_body::{Frame, SizeHint};
use prometheus::IntCounter;
use serde::Serialize;

use crate::body::{Body, BoxError};

/// Content types compressed when a route does not list its own (Envoy's
/// default list, plus `application/xml` and `text/javascript`).
pub const DEFAULT_TYPES: &[&str] = &[
    "application/javascript",
    "application/json",
    "application/xhtml+xml",
    "application/xml",
    "image/svg+xml",
    "text/css",
    "text/html",
    "text/javascript",
    "text/plain",
    "text/xml",
];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompressionSpec {
    /// Answers known to be shorter are sent as they are.
    pub min_bytes: u64,
    /// Lower-case media types (no parameters).
    pub content_types: Vec<String>,
    /// zlib level, 1 (fastest) to 9 (smallest).
    pub level: u32,
    /// Codings offered, in order of preference.
    pub algorithms: Vec<Coding>,
    /// Brotli quality, 0..=11.
    pub brotli_quality: u32,
}

/// A content coding sift compresses with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coding {
    Gzip,
    Br,
}

impl Coding {
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
        }
    }
}

/// The coding to answer in: among `offered`, the one the client accepts
/// with the highest q (RFC 9110 §12.5.3; `x-gzip` is gzip; `*` stands for
/// codings not named), ties to `offered`'s order; `None` when it accepts
/// none of them.
pub fn choose(h: &HeaderMap, offered: &[Coding]) -> Option<Coding> {
    let mut named: [Option<f32>; 2] = [None, None];
    let mut any = None;
    for v in h.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| v.trim().parse::<f32>().unwrap_or(0.0))
                })
                .next_back()
                .unwrap_or(1.0);
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                named[0] = Some(q);
            } else if coding.eq_ignore_ascii_case("br") {
                named[1] = Some(q);
            } else if coding == "*" {
                any = Some(q);
            }
        }
    }
    let q = |c: Coding| {
        named[match c {
            Coding::Gzip => 0,
            Coding::Br => 1,
        }]
        .or(any)
        .unwrap_or(0.0)
    };
    let mut best: Option<(Coding, f32)> = None;
    for &c in offered {
        let cq = q(c);
        if cq > 0.0 && best.is_none_or(|(_, bq)| cq > bq) {
            best = Some((c, cq));
        }
    }
    best.map(|(c, _)| c)
}

/// Why an answer was not compressed (the `result` label), or `compressed`.
pub fn decide(
    spec: &CompressionSpec,
    accepts: bool,
    head: bool,
    status: http::StatusCode,
    h: &HeaderMap,
) -> &'static str {
    let eligible_type = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| spec.content_types.contains(&t));
    if !eligible_type {
        return "content_type";
    }
    if h.get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return "already_encoded";
    }
    if matches!(status.as_u16(), 204 | 206 | 304) || status.is_informational() || head {
        return "no_body";
    }
    if h.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    }) {
        return "no_transform";
    }
    if !accepts {
        return "not_accepted";
    }
    let short = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n < spec.min_bytes);
    if short {
        return "too_small";
    }
    "compressed"
}

/// Rewrite the answer's head for a body in `coding`.
pub fn compressed_head(h: &mut HeaderMap, coding: Coding) {
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    if let Some(tag) = h.get(header::ETAG)
        && !tag.as_bytes().starts_with(b"W/")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            h.insert(header::ETAG, v);
        }
    }
}

/// Add `accept-encoding` to Vary unless it is there (or Vary is `*`).
pub fn vary_accept_encoding(h: &mut HeaderMap) {
    let present = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !present {
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// A streaming encoder into a buffer the body drains.
enum Encoder {
    Gzip(Box<flate2::write::GzEncoder<Vec<u8>>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    fn write_flush(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()
            }
            Encoder::Br(e) => {
                e.write_all(data)?;
                e.flush()
            }
        }
    }

    fn take(&mut self) -> Vec<u8> {
        match self {
            Encoder::Gzip(e) => std::mem::take(e.get_mut()),
            Encoder::Br(e) => std::mem::take(e.get_mut()),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => (*e).finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream body, compressed as it streams.
    pub struct Compressed {
        #[pin]
        inner: Body,
        enc: Option<Encoder>,
        trailers: Option<HeaderMap>,
        bytes_in: IntCounter,
        bytes_out: IntCounter,
    }
}

impl Compressed {
    pub fn new(
        inner: Body,
        coding: Coding,
        spec: &CompressionSpec,
        bytes_in: IntCounter,
        bytes_out: IntCounter,
    ) -> Compressed {
        let enc = match coding {
            Coding::Gzip => Encoder::Gzip(Box::new(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(spec.level.clamp(1, 9)),
            ))),
            // A 512 KiB window (lgwin 19), nginx's brotli_window default:
            // answers are rarely longer, and the encoder's tables are
            // sized by it for every answer.
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                spec.brotli_quality.min(11),
                19,
            ))),
        };
        Compressed {
            inner,
            enc: Some(enc),
            trailers: None,
            bytes_in,
            bytes_out,
        }
    }
}

impl http_body::Body for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            let Some(enc) = this.enc.as_mut() else {
                // Done: the upstream's trailers, if any, come last.
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let end = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.bytes_in.inc_by(data.len() as u64);
                        // A sync flush: what came is sent now.
                        enc.write_flush(&data)?;
                        false
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            *this.trailers = Some(t);
                        }
                        true
                    }
                },
                // Cut without the gzip trailer: a broken body, not a short one.
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => true,
            };
            let out = if end {
                let Some(enc) = this.enc.take() else { continue };
                enc.finish()?
            } else {
                enc.take()
            };
            if out.is_empty() {
                continue;
            }
            this.bytes_out.inc_by(out.len() as u64);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.enc.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts_gzip(h: &HeaderMap) -> bool {
        choose(h, &[Coding::Gzip]).is_some()
    }
    use http_body_util::BodyExt;
    use std::io::Read;

    fn spec() -> CompressionSpec {
        CompressionSpec {
            min_bytes: 256,
            content_types: DEFAULT_TYPES.iter().map(|s| s.to_string()).collect(),
            level: 6,
            algorithms: vec![Coding::Gzip, Coding::Br],
            brotli_quality: 4,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn accept_encoding_is_read_with_q_values() {
        for (v, want) in [
            ("gzip", true),
            ("GZIP", true),
            ("deflate, gzip;q=0.5", true),
            ("br", false),
            ("gzip;q=0", false),
            ("gzip; q=0.000", false),
            ("*", true),
            ("*;q=0", false),
            ("gzip;q=0, *", false),
            ("x-gzip", true),
            ("", false),
            ("identity", false),
        ] {
            assert_eq!(
                accepts_gzip(&headers(&[("accept-encoding", v)])),
                want,
                "{v:?}"
            );
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(accepts_gzip(&headers(&[
            ("accept-encoding", "br"),
            ("accept-encoding", "gzip")
        ])));
    }

    #[test]
    fn what_is_compressed() {
        let s = spec();
        let ok = http::StatusCode::OK;
        let json = [("content-type", "application/json; charset=utf-8")];
        assert_eq!(decide(&s, true, false, ok, &headers(&json)), "compressed");
        assert_eq!(
            decide(&s, false, false, ok, &headers(&json)),
            "not_accepted"
        );
        assert_eq!(decide(&s, true, true, ok, &headers(&json)), "no_body");
        for st in [204, 206, 304] {
            let st = http::StatusCode::from_u16(st).unwrap();
            assert_eq!(decide(&s, true, false, st, &headers(&json)), "no_body");
        }
        let nf = http::StatusCode::NOT_FOUND;
        assert_eq!(decide(&s, true, false, nf, &headers(&json)), "compressed");
        let png = [("content-type", "image/png")];
        assert_eq!(decide(&s, true, false, ok, &headers(&png)), "content_type");
        assert_eq!(
            decide(&s, true, false, ok, &HeaderMap::new()),
            "content_type"
        );
        let enc = [("content-type", "text/html"), ("content-encoding", "br")];
        assert_eq!(
            decide(&s, true, false, ok, &headers(&enc)),
            "already_encoded"
        );
        let id = [
            ("content-type", "text/html"),
            ("content-encoding", "identity"),
        ];
        assert_eq!(decide(&s, true, false, ok, &headers(&id)), "compressed");
        let nt = [
            ("content-type", "text/html"),
            ("cache-control", "public, No-Transform"),
        ];
        assert_eq!(decide(&s, true, false, ok, &headers(&nt)), "no_transform");
        let small = [("content-type", "text/html"), ("content-length", "255")];
        assert_eq!(decide(&s, true, false, ok, &headers(&small)), "too_small");
        let big = [("content-type", "text/html"), ("content-length", "256")];
        assert_eq!(decide(&s, true, false, ok, &headers(&big)), "compressed");
    }

    #[test]
    fn head_rewrite_and_vary() {
        let mut h = headers(&[("content-length", "9000"), ("etag", "\"abc\"")]);
        compressed_head(&mut h, Coding::Gzip);
        assert!(h.get("content-length").is_none());
        assert_eq!(h["content-encoding"], "gzip");
        assert_eq!(h["etag"], "W/\"abc\"");
        let mut weak = headers(&[("etag", "W/\"x\"")]);
        compressed_head(&mut weak, Coding::Gzip);
        assert_eq!(weak["etag"], "W/\"x\"");
        let mut v = headers(&[("vary", "Origin")]);
        vary_accept_encoding(&mut v);
        vary_accept_encoding(&mut v);
        let all: Vec<_> = v.get_all("vary").iter().collect();
        assert_eq!(all, ["Origin", "accept-encoding"]);
        let mut star = headers(&[("vary", "*")]);
        vary_accept_encoding(&mut star);
        assert_eq!(star.get_all("vary").iter().count(), 1);
    }

    #[tokio::test]
    async fn streams_compress_and_keep_trailers() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let inner = crate::body::boxed(Frames(rx));
        let c = prometheus::IntCounter::new("a", "a").unwrap();
        let d = prometheus::IntCounter::new("b", "b").unwrap();
        let mut g = Compressed::new(inner, Coding::Gzip, &spec(), c.clone(), d.clone());
        tx.send(Ok(Frame::data(Bytes::from_static(b"first piece\n"))))
            .await
            .unwrap();
        // The first piece is out before the stream ends (sync flush).
        let f = g.frame().await.unwrap().unwrap().into_data().unwrap();
        let mut dec = flate2::write::GzDecoder::new(Vec::new());
        dec.write_all(&f).unwrap();
        dec.flush().unwrap();
        assert_eq!(dec.get_ref().as_slice(), b"first piece\n");
        tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 100_000]))))
            .await
            .unwrap();
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        tx.send(Ok(Frame::trailers(t))).await.unwrap();
        drop(tx);
        let mut wire = f.to_vec();
        let mut trailers = None;
        while let Some(fr) = g.frame().await {
            let fr = fr.unwrap();
            match fr.into_data() {
                Ok(d) => wire.extend_from_slice(&d),
                Err(fr) => trailers = fr.into_trailers().ok(),
            }
        }
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text.len(), 12 + 100_000);
        assert_eq!(c.get(), 100_012);
        assert_eq!(d.get(), wire.len() as u64);
        assert!(wire.len() < 1000, "{}", wire.len());
    }

    #[test]
    fn the_coding_is_the_clients_best_among_the_offered() {
        use Coding::{Br, Gzip};
        let ae = |v: &str| headers(&[("accept-encoding", v)]);
        for (v, offered, want) in [
            ("gzip, br", &[Gzip, Br][..], Some(Gzip)),
            ("gzip, br", &[Br, Gzip][..], Some(Br)),
            ("br;q=1, gzip;q=0.5", &[Gzip, Br][..], Some(Br)),
            ("gzip", &[Br][..], None),
            ("*", &[Br][..], Some(Br)),
            ("br;q=0, *", &[Br, Gzip][..], Some(Gzip)),
            ("BR", &[Gzip, Br][..], Some(Br)),
            ("identity", &[Gzip, Br][..], None),
        ] {
            assert_eq!(choose(&ae(v), offered), want, "{v:?} {offered:?}");
        }
    }

    #[tokio::test]
    async fn brotli_streams_and_decodes_to_the_pieces() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let inner = crate::body::boxed(Frames(rx));
        let reg = prometheus::IntCounter::new("a", "a").unwrap();
        let reg2 = prometheus::IntCounter::new("b", "b").unwrap();
        let mut g = Compressed::new(inner, Coding::Br, &spec(), reg.clone(), reg2.clone());
        tx.send(Ok(Frame::data(Bytes::from_static(b"first piece\n"))))
            .await
            .unwrap();
        // The first piece decodes before the stream ends (a brotli flush).
        let f = g.frame().await.unwrap().unwrap().into_data().unwrap();
        let mut part = Vec::new();
        let mut r = brotli_decompressor::Decompressor::new(&f[..], 4096);
        let _ = r.read_to_end(&mut part);
        assert_eq!(part, b"first piece\n");
        tx.send(Ok(Frame::data(Bytes::from(vec![b'y'; 50_000]))))
            .await
            .unwrap();
        drop(tx);
        let mut wire = f.to_vec();
        while let Some(fr) = g.frame().await {
            if let Ok(d) = fr.unwrap().into_data() {
                wire.extend_from_slice(&d);
            }
        }
        let mut text = Vec::new();
        brotli_decompressor::Decompressor::new(&wire[..], 4096)
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text.len(), 12 + 50_000);
        assert!(text.starts_with(b"first piece\n"));
        assert_eq!(reg.get(), 50_012);
        assert!(wire.len() < 500, "{}", wire.len());
    }

    /// A body fed frame by frame through a channel.
    struct Frames(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx)
        }
    }
}
