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
//!
//! Beyond "no panic": the codec checks above; `Users::verify` of a user
//! not in the file is false.
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
    match which % 3 {
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
