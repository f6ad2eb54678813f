//! Body extraction by content type. Input: the first line is the
//! Content-Type (empty: none), optionally followed by tab-separated JSON
//! pointers or form field names; the rest is the body.
//!
//! Also `JsonStrings`, the streaming JSON walker: fed in chunks it must
//! give the same strings, and the same failed/complete state, as fed at
//! once (it is documented to work "whatever the chunking"), and a document
//! serde_json accepts must not be reported as not JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sift::filter::extract::{self, BodyKind};
use sift::filter::json_stream::{JsonStrings, StrSink};

#[derive(Default, Debug, PartialEq)]
struct Collect {
    done: Vec<(Option<usize>, Vec<u8>)>,
    cur: Vec<u8>,
    cur_which: Option<Option<usize>>,
}

impl StrSink for Collect {
    fn bytes(&mut self, which: Option<usize>, b: &[u8]) {
        if let Some(w) = self.cur_which {
            assert_eq!(w, which, "one string's bytes for two pointers");
        }
        self.cur_which = Some(which);
        self.cur.extend_from_slice(b);
    }
    fn end(&mut self, which: Option<usize>) {
        if let Some(w) = self.cur_which.take() {
            assert_eq!(w, which, "a string ends for another pointer");
        }
        self.done.push((which, std::mem::take(&mut self.cur)));
    }
}

/// Chunk lengths from a small generator seeded by the input itself.
fn chunks(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut x = body.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = match x % 4 {
            0 => 1,
            1 => 1 + (x >> 8) as usize % 4,
            2 => 1 + (x >> 8) as usize % 64,
            _ => rest.len(),
        }
        .min(rest.len());
        let (a, b) = rest.split_at(n);
        rest = b;
        Some(a)
    })
}

fn walk<'a>(
    parts: impl Iterator<Item = &'a [u8]>,
    ptrs: Option<&[String]>,
    exact: bool,
) -> (Collect, bool, bool) {
    let mut w = JsonStrings::new(ptrs, exact);
    let mut c = Collect::default();
    for p in parts {
        w.feed(p, &mut c);
    }
    (c, w.failed(), w.complete())
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut fields = head.split('\t');
    let ct = fields.next().unwrap_or_default().trim();
    let names: Vec<String> = fields.map(str::to_string).collect();
    let names = (!names.is_empty()).then_some(names);

    let ct = (!ct.is_empty()).then_some(ct);
    if let Some(kind) = extract::body_kind(ct) {
        let _ = extract::extract(&kind, body, names.as_deref(), names.as_deref());
        let _ = extract::extract(&kind, body, None, None);
        let _ = extract::extract_owned(&kind, body.to_vec(), names.as_deref(), names.as_deref());
        if let BodyKind::Multipart { boundary, .. } = &kind {
            assert!(!boundary.is_empty());
        }
    }

    // JSON, whatever the content type.
    for ptrs in [None, names.as_deref()] {
        for cut in [false, true] {
            let _ = extract::extract_json(body, ptrs, cut);
        }
        for exact in [false, true] {
            let whole = walk(std::iter::once(body), ptrs, exact);
            let split = walk(chunks(body), ptrs, exact);
            assert_eq!(whole, split, "chunking changed JsonStrings");
            let bytewise = walk(body.chunks(1), ptrs, exact);
            assert_eq!(whole, bytewise, "byte-at-a-time changed JsonStrings");
        }
    }
    if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
        let (_, failed, complete) = walk(std::iter::once(body), None, false);
        assert!(!failed, "valid JSON read as not JSON");
        // A top-level number or literal may go on: only a delimiter ends it.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if matches!(first, Some(b'{' | b'[' | b'"')) {
            assert!(complete, "valid JSON read as unfinished");
        }
    }
});
