//! The gRPC-Web base64 codec (`grpc_web`) and Basic authentication's
//! parsers (`basic_auth`): what a browser or any client controls.
//!
//! Input: byte 0 picks the part, byte 1 a chunk size, the rest is data.
//! - 0: gRPC-Web text: the data as base64 text, decoded in chunks; the
//!   decoding in chunks equals the decoding in one piece (both succeed
//!   with the same bytes or both fail); then the data as bytes, encoded
//!   in chunks (carry kept between them) and decoded again: the round trip
//!   gives the bytes back, and the text is what one-piece encoding gives.
//! - 1: an htpasswd file: parsed (or refused), and every user it holds
//!   checked against a password taken from the data.
//! - 2: an `Authorization` header: read as Basic credentials, and a
//!   user's `$apr1$` hash made with a salt from the data.
//! - 3: a CSRF check (`csrf`): the data as lines, the first the method and
//!   the target authority, the others `name: value` headers; checked by a
//!   policy trusting one origin and one subdomain pattern.
//!
//! Beyond "no panic": the codec checks above; `Users::verify` of a user
//! not in the file is false; GET, HEAD and OPTIONS are never checked, a
//! request with no Origin, Referer or Sec-Fetch-Site passes (refused only
//! with `require_origin`), one from the trusted origin passes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sift::grpc_web::{TextDecoder, encode_text};

fn decode_in(data: &[u8], chunk: usize) -> Option<Vec<u8>> {
    let mut d = TextDecoder::default();
    let mut out = bytes::BytesMut::new();
    for piece in data.chunks(chunk.max(1)) {
        d.feed(piece, &mut out).ok()?;
    }
    d.finish().ok()?;
    Some(out.to_vec())
}

fn encode_in(data: &[u8], chunk: usize) -> Vec<u8> {
    let mut carry = Vec::new();
    let mut out = bytes::BytesMut::new();
    let pieces: Vec<&[u8]> = data.chunks(chunk.max(1)).collect();
    if pieces.is_empty() {
        encode_text(&mut carry, &[], true, &mut out);
    }
    for (i, p) in pieces.iter().enumerate() {
        encode_text(&mut carry, p, i + 1 == pieces.len(), &mut out);
    }
    out.to_vec()
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, rest)) = input.split_first() else {
        return;
    };
    let Some((&chunk, data)) = rest.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 17) + 1;
    match which % 4 {
        0 => {
            let whole = decode_in(data, data.len().max(1));
            assert_eq!(
                decode_in(data, chunk),
                whole,
                "chunking changed the decoding"
            );
            let text = encode_in(data, chunk);
            assert_eq!(
                text,
                encode_in(data, data.len().max(1)),
                "chunking changed the encoding"
            );
            assert_eq!(text.len(), data.len().div_ceil(3) * 4);
            assert_eq!(decode_in(&text, chunk).as_deref(), Some(data), "round trip");
        }
        1 => {
            let text = String::from_utf8_lossy(data);
            let (file, password) = text.split_once('\u{0}').unwrap_or((&text, "pw"));
            if let Ok(users) = sift::basic_auth::Users::parse(file) {
                for line in file.lines() {
                    if let Some((name, _)) = line.trim().split_once(':') {
                        let _ = users.verify(name, password.as_bytes());
                    }
                }
                let ghost = "\u{0}not-a-user";
                assert!(!users.verify(ghost, password.as_bytes()));
            }
        }
        3 => {
            use sift::csrf::{Csrf, CsrfSpec};
            let text = String::from_utf8_lossy(data);
            let mut lines = text.split('\n');
            let first = lines.next().unwrap_or("");
            let (method, target) = first.split_once(' ').unwrap_or((first, ""));
            let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
                return;
            };
            let mut h = http::HeaderMap::new();
            for l in lines {
                let Some((n, v)) = l.split_once(':') else {
                    continue;
                };
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(n.trim().as_bytes()),
                    http::HeaderValue::from_str(v.trim()),
                ) {
                    h.append(n, v);
                }
            }
            let trusted = ["https://admin.example", "https://*.partner.example"]
                .iter()
                .map(|o| sift::cors::OriginMatch::parse(o).unwrap())
                .collect();
            let mut spec = CsrfSpec {
                enforce: true,
                trusted_origins: trusted,
                require_origin: false,
            };
            let v = spec.check(&method, &h, target);
            let bare = !["origin", "referer", "sec-fetch-site"]
                .iter()
                .any(|n| h.contains_key(*n));
            if matches!(method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS) {
                assert_eq!(v, Csrf::Safe);
            } else if bare {
                assert_eq!(v, Csrf::NoOrigin);
                spec.require_origin = true;
                assert!(matches!(spec.check(&method, &h, target), Csrf::Denied(_)));
            } else if h.get_all("origin").iter().count() == 1
                && h.get("origin").is_some_and(|o| o == "https://admin.example")
            {
                assert_eq!(v, Csrf::Trusted);
            }
        }
        _ => {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(data) {
                h.insert(http::header::AUTHORIZATION, v);
            }
            if let sift::basic_auth::Credentials::Given { user, password } =
                sift::basic_auth::credentials(&h)
            {
                let salt = &user.as_bytes()[..user.len().min(8)];
                let hash = sift::basic_auth::apr1(&password, salt);
                assert_eq!(hash.len(), 22);
            }
        }
    }
});
