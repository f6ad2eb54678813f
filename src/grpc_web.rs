//! gRPC-Web (Envoy's `grpc_web` filter): a browser's gRPC-Web call on a
//! route with `grpc_web: true` goes to the cluster as gRPC over HTTP/2, and
//! the answer comes back as gRPC-Web. The protocol
//! (github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md):
//! - content types `application/grpc-web[+proto|+json|…]` (binary) and
//!   `application/grpc-web-text[+…]` (the body base64-encoded, for clients
//!   that cannot send binary), which become `application/grpc[+…]`;
//! - messages keep gRPC's framing (a flag byte, a 4-byte length);
//! - the answer's trailers (`grpc-status`, `grpc-message`, …) travel as a
//!   last frame in the body, flag 0x80, holding `name: value\r\n` lines;
//!   in text mode the answer's body is base64 too.
//!
//! Both directions stream: text is decoded and encoded in groups of four
//! characters / three bytes as they pass, nothing is held whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body::{Frame, SizeHint};

use crate::body::BoxError;

/// How a gRPC-Web call's bodies are carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `application/grpc-web`: gRPC frames as they are.
    Binary,
    /// `application/grpc-web-text`: base64 of the frames.
    Text,
}

/// A gRPC-Web request's mode and the gRPC content type it goes upstream
/// with (`application/grpc` plus the same `+suffix` and parameters), or
/// `None` when the request is not gRPC-Web.
pub fn request(h: &HeaderMap) -> Option<(Mode, HeaderValue)> {
    let ct = h.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let lower = ct.to_ascii_lowercase();
    let (mode, rest) = if let Some(rest) = lower.strip_prefix("application/grpc-web-text") {
        (Mode::Text, rest)
    } else {
        (Mode::Binary, lower.strip_prefix("application/grpc-web")?)
    };
    if !(rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')) {
        return None;
    }
    let upstream = HeaderValue::from_str(&format!("application/grpc{rest}")).ok()?;
    Some((mode, upstream))
}

/// The content type of a gRPC answer (`application/grpc[+…]`) as the
/// gRPC-Web client asked for it, or `None` for an answer that is not gRPC.
pub fn response_content_type(h: &HeaderMap, mode: Mode) -> Option<HeaderValue> {
    let ct = h.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let lower = ct.to_ascii_lowercase();
    let rest = lower.strip_prefix("application/grpc")?;
    if !(rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')) {
        return None;
    }
    let base = match mode {
        Mode::Binary => "application/grpc-web",
        Mode::Text => "application/grpc-web-text",
    };
    HeaderValue::from_str(&format!("{base}{rest}")).ok()
}

/// A request body that is not valid base64 (`application/grpc-web-text`).
#[derive(Debug, thiserror::Error)]
#[error("gRPC-Web text body: {0:?} is not base64")]
pub struct BadText(pub char);

fn b64_value(b: u8) -> Option<u32> {
    Some(u32::from(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

/// Streaming base64 decoding: whole groups of four characters; a group
/// with padding ends a segment (clients may send each message's base64
/// on its own, padded); line breaks are skipped.
#[derive(Default)]
pub struct TextDecoder {
    pending: [u8; 4],
    n: usize,
}

impl TextDecoder {
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), BadText> {
        out.reserve(input.len() / 4 * 3 + 3);
        for &c in input {
            if matches!(c, b'\r' | b'\n') {
                continue;
            }
            if c != b'=' && b64_value(c).is_none() {
                return Err(BadText(char::from(c)));
            }
            self.pending[self.n] = c;
            self.n += 1;
            if self.n == 4 {
                self.n = 0;
                decode_group(&self.pending, out)?;
            }
        }
        Ok(())
    }

    /// The end of the body: a partial group is an error.
    pub fn finish(&self) -> Result<(), BadText> {
        if self.n == 0 {
            Ok(())
        } else {
            Err(BadText('…'))
        }
    }
}

fn decode_group(g: &[u8; 4], out: &mut BytesMut) -> Result<(), BadText> {
    let v = |c: u8| b64_value(c).ok_or(BadText(char::from(c)));
    let (a, b) = (v(g[0])?, v(g[1])?);
    match (g[2], g[3]) {
        (b'=', b'=') => out.extend_from_slice(&[((a << 2) | (b >> 4)) as u8]),
        (c, b'=') => {
            let c = v(c)?;
            let x = (a << 18) | (b << 12) | (c << 6);
            out.extend_from_slice(&[(x >> 16) as u8, (x >> 8) as u8]);
        }
        (b'=', _) => return Err(BadText('=')),
        (c, d) => {
            let x = (a << 18) | (b << 12) | (v(c)? << 6) | v(d)?;
            out.extend_from_slice(&[(x >> 16) as u8, (x >> 8) as u8, x as u8]);
        }
    }
    Ok(())
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 of `input` after `carry` (fewer than 3 bytes left from before);
/// the bytes that do not fill a group are left in `carry` unless `last`.
pub fn encode_text(carry: &mut Vec<u8>, input: &[u8], last: bool, out: &mut BytesMut) {
    let mut buf;
    let data: &[u8] = if carry.is_empty() {
        input
    } else {
        buf = std::mem::take(carry);
        buf.extend_from_slice(input);
        &buf
    };
    let whole = data.len() / 3 * 3;
    out.reserve(data.len().div_ceil(3) * 4);
    for g in data[..whole].chunks_exact(3) {
        let x = (u32::from(g[0]) << 16) | (u32::from(g[1]) << 8) | u32::from(g[2]);
        for shift in [18, 12, 6, 0] {
            out.extend_from_slice(&[ALPHABET[((x >> shift) & 63) as usize]]);
        }
    }
    let rest = &data[whole..];
    if !last {
        carry.extend_from_slice(rest);
        return;
    }
    match *rest {
        [a] => {
            let x = u32::from(a) << 16;
            out.extend_from_slice(&[
                ALPHABET[((x >> 18) & 63) as usize],
                ALPHABET[((x >> 12) & 63) as usize],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let x = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend_from_slice(&[
                ALPHABET[((x >> 18) & 63) as usize],
                ALPHABET[((x >> 12) & 63) as usize],
                ALPHABET[((x >> 6) & 63) as usize],
                b'=',
            ]);
        }
        _ => {}
    }
}

/// The trailers frame: flag 0x80, length, `name: value\r\n` lines.
pub fn trailers_frame(t: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (k, v) in t {
        block.extend_from_slice(k.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(v.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut out = Vec::with_capacity(5 + block.len());
    out.push(0x80);
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    out.extend_from_slice(&block);
    Bytes::from(out)
}

pin_project_lite::pin_project! {
    /// A `grpc-web-text` request body, decoded for the gRPC upstream.
    pub struct DecodeText<B> {
        #[pin]
        inner: B,
        decoder: TextDecoder,
        done: bool,
        // Marked on bad text: the request fails as the client's fault.
        state: std::sync::Arc<crate::body::BodyState>,
    }
}

impl<B> DecodeText<B> {
    pub fn new(inner: B, state: std::sync::Arc<crate::body::BodyState>) -> Self {
        DecodeText {
            inner,
            decoder: TextDecoder::default(),
            done: false,
            state,
        }
    }
}

impl<B> http_body::Body for DecodeText<B>
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
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                // A text body has no trailers of its own; any are dropped.
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let mut out = BytesMut::new();
                        if let Err(e) = this.decoder.feed(&data, &mut out) {
                            this.state.set_first(crate::body::BodyState::CLIENT_ERROR);
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    *this.done = true;
                    if let Err(e) = this.decoder.finish() {
                        this.state.set_first(crate::body::BodyState::CLIENT_ERROR);
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

pin_project_lite::pin_project! {
    /// A gRPC answer's body for a gRPC-Web client: the trailers become the
    /// last frame; in text mode everything is base64.
    pub struct Encode<B> {
        #[pin]
        inner: B,
        mode: Mode,
        carry: Vec<u8>,
        done: bool,
    }
}

impl<B> Encode<B> {
    pub fn new(inner: B, mode: Mode) -> Self {
        Encode {
            inner,
            mode,
            carry: Vec::new(),
            done: false,
        }
    }
}

impl<B> http_body::Body for Encode<B>
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
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            let (bytes, last) = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data, false),
                    Err(frame) => match frame.into_trailers() {
                        Ok(t) => {
                            *this.done = true;
                            (trailers_frame(&t), true)
                        }
                        Err(_) => continue,
                    },
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    *this.done = true;
                    (Bytes::new(), true)
                }
            };
            let out = match this.mode {
                Mode::Binary => bytes,
                Mode::Text => {
                    let mut out = BytesMut::new();
                    encode_text(this.carry, &bytes, last, &mut out);
                    out.freeze()
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Vec<u8>, BadText> {
        let mut d = TextDecoder::default();
        let mut out = BytesMut::new();
        // In pieces of 3, so groups straddle the pieces.
        for piece in s.as_bytes().chunks(3) {
            d.feed(piece, &mut out)?;
        }
        d.finish()?;
        Ok(out.to_vec())
    }

    fn encode(data: &[u8], pieces: usize) -> String {
        let mut carry = Vec::new();
        let mut out = BytesMut::new();
        let chunks: Vec<&[u8]> = data.chunks(pieces.max(1)).collect();
        for (i, c) in chunks.iter().enumerate() {
            encode_text(&mut carry, c, i + 1 == chunks.len(), &mut out);
        }
        if chunks.is_empty() {
            encode_text(&mut carry, &[], true, &mut out);
        }
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn base64_both_ways_in_pieces() {
        // RFC 4648's test vectors.
        for (plain, b64) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(decode(b64).unwrap(), plain.as_bytes(), "{b64}");
            for pieces in 1..=7 {
                assert_eq!(
                    encode(plain.as_bytes(), pieces),
                    b64,
                    "{plain} in {pieces}s"
                );
            }
        }
        // Padded segments one after another (a message each), line breaks.
        assert_eq!(decode("Zg==Zm8=Zm9v\r\n").unwrap(), b"ffofoo");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all, 5)).unwrap(), all);
        assert!(decode("Zm9").is_err(), "a partial group");
        assert!(decode("Zm9v!A==").is_err(), "not base64");
        assert!(decode("Z===").is_err(), "misplaced padding");
    }

    #[test]
    fn content_types_map_both_ways() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            m
        };
        let up = |ct: &str| request(&h(ct)).map(|(m, v)| (m, v.to_str().unwrap().to_string()));
        assert_eq!(
            up("application/grpc-web"),
            Some((Mode::Binary, "application/grpc".into()))
        );
        assert_eq!(
            up("application/grpc-web+proto"),
            Some((Mode::Binary, "application/grpc+proto".into()))
        );
        assert_eq!(
            up("application/grpc-web-text+proto"),
            Some((Mode::Text, "application/grpc+proto".into()))
        );
        assert_eq!(up("application/grpc"), None);
        assert_eq!(up("application/grpc-webx"), None);
        assert_eq!(up("text/plain"), None);
        let down =
            |ct: &str, m| response_content_type(&h(ct), m).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            down("application/grpc", Mode::Binary).as_deref(),
            Some("application/grpc-web")
        );
        assert_eq!(
            down("application/grpc+proto", Mode::Text).as_deref(),
            Some("application/grpc-web-text+proto")
        );
        assert_eq!(down("text/html", Mode::Text), None);
    }

    #[test]
    fn trailers_become_the_last_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        let f = trailers_frame(&t);
        assert_eq!(f[0], 0x80);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(&f[5..], b"grpc-status: 0\r\ngrpc-message: ok\r\n");
        assert_eq!(len, f.len() - 5);
    }
}
