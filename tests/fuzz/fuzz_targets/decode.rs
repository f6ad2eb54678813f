//! Content-Encoding decoding with the decompression cap, through the
//! public `filter::Inspection` that wraps it. Input: byte 0 picks the
//! encoding, byte 1 the limits and on_oversize, byte 2 the chunking; the
//! rest is the (still encoded) body.
//!
//! Checked: never a panic; the inspector never gets more than the inspect
//! limit, nor more than the cap (identity bodies have none); and the
//! outcome does not depend on how the body is split into chunks (a client
//! or proxy may send any framing). Byte 0's top bit gives the inspector
//! other text than the body (as query fields give a spam inspector): then
//! a body it cannot read (an encoding sift does not decode, broken
//! compression, empty, `on_oversize: skip`) still gets its verdict through
//! `finish_unread`, and an undecodable body is never fed.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use sift::config::file::{FilterMode, OnOverload, OnOversize};
use sift::config::model::FilterUsage;
use sift::filter::{Inspection, Inspector, Skip, Unclassified, Verdict};

/// Counts what it is fed; with `other`, it also has text besides the body
/// (as a spam inspector with query fields has), so a body it cannot read
/// still gets a verdict (`other`) through `finish_unread`.
struct Count(Arc<Mutex<u64>>, u64, bool);

impl Inspector for Count {
    fn feed(&mut self, chunk: &[u8]) {
        *self.0.lock().unwrap() += chunk.len() as u64;
        self.1 += chunk.len() as u64;
    }
    fn finish(self: Box<Self>) -> Result<Verdict, Skip> {
        Ok(Verdict {
            filter: "fuzz".into(),
            verdict: "ham",
            flagged: false,
            score: self.1 as f32,
            detail: Default::default(),
            headers: Vec::new(),
            unread: None,
        })
    }
    fn bounded(&self) -> bool {
        true
    }
    fn has_other_text(&self) -> bool {
        self.2
    }
    fn finish_unread(self: Box<Self>, skip: Skip) -> Result<Verdict, Skip> {
        if !self.2 {
            return Err(skip);
        }
        Ok(Verdict {
            filter: "fuzz".into(),
            verdict: "other",
            flagged: false,
            score: -1.0,
            detail: Default::default(),
            headers: Vec::new(),
            unread: (skip != Skip::Empty).then_some(skip),
        })
    }
}

const ENCODINGS: [Option<&str>; 12] = [
    Some("gzip"),
    Some("deflate"),
    Some("br"),
    None,
    Some("x-gzip"),
    Some("identity, gzip"),
    Some("DeFlate"),
    Some("br, identity"),
    // Not decoded: the body is unread (a skip, or the other text's verdict).
    Some("zstd"),
    Some("gzip, br"),
    Some("compress, identity"),
    Some("x-made-up"),
];

fn run(
    enc: Option<&str>,
    usage: &FilterUsage,
    cap: u64,
    parts: &[&[u8]],
    truncated: bool,
    other: bool,
) -> (String, u64) {
    let fed = Arc::new(Mutex::new(0));
    let mut i = match Inspection::new(Box::new(Count(fed.clone(), 0, other)), enc, usage, cap) {
        Ok(i) => i,
        Err(s) => return (format!("new: {s:?}"), 0),
    };
    for p in parts {
        if !i.wants_more() {
            break;
        }
        i.feed(p);
    }
    let r = i.finish(truncated);
    let n = *fed.lock().unwrap();
    let out = match r {
        Ok(v) if v.verdict == "other" => {
            // The other text's verdict. A body in an encoding sift does
            // not decode was never fed (others may have been, in part).
            if v.unread == Some(Skip::Encoding) {
                assert_eq!(*fed.lock().unwrap(), 0, "an undecodable body was fed");
            }
            match v.unread {
                // As below: corrupt or past the cap, by the chunking.
                Some(Skip::DecodeError) => "unreadable (corrupt or past the cap)".to_string(),
                u => format!("other {u:?}"),
            }
        }
        Ok(v) => format!("ok {}", v.score),
        // A corrupt stream that also expands past the cap is either, by
        // when the decoder hands on its buffered output (at the end of a
        // write, or when its buffer is full): unreadable both ways.
        Err(Unclassified::Skip(Skip::DecodeError) | Unclassified::Decompression { .. }) => {
            "unreadable (corrupt or past the cap)".to_string()
        }
        Err(Unclassified::Skip(s)) => format!("skip {s:?}"),
        Err(e) => format!("{e:?}"),
    };
    (out, n)
}

fuzz_target!(|data: &[u8]| {
    let [e, l, c, wire @ ..] = data else { return };
    let enc = ENCODINGS[usize::from(*e) % ENCODINGS.len()];
    let other = e & 0x80 != 0;
    let limit = [16u64, 1000, 64 << 10, 1 << 20][usize::from(l & 3)];
    let cap = [100u64, 4096, 256 << 10, 8 << 20][usize::from(l >> 2 & 3)];
    let on_oversize = [
        OnOversize::InspectPrefix,
        OnOversize::Skip,
        OnOversize::Reject,
        OnOversize::Spool,
    ][usize::from(l >> 4 & 3)];
    let truncated = l & 0x40 != 0;
    let usage = FilterUsage {
        mode: FilterMode::Block,
        max_inspect_bytes: limit,
        on_oversize,
        on_overload: OnOverload::FailOpen,
        on_unreadable: Default::default(),
    };
    let step = usize::from(*c).max(1);

    let whole = run(enc, &usage, cap, &[wire], truncated, other);
    let parts: Vec<&[u8]> = wire.chunks(step).collect();
    let split = run(enc, &usage, cap, &parts, truncated, other);
    // An encoding sift does not decode: the body is never read; with other
    // text the verdict is on it, with the encoding skip beside it.
    if ENCODINGS[8..].contains(&enc) && enc != Some("x-made-up") {
        let want = if other {
            "other Some(Encoding)"
        } else {
            "new: Encoding"
        };
        assert_eq!(whole.0, want, "{enc:?}");
    }

    for (out, fed) in [&whole, &split] {
        let identity = enc.is_none_or(|e| e.trim().is_empty());
        if on_oversize != OnOversize::Spool {
            assert!(*fed <= limit, "inspector got {fed} bytes, limit {limit}");
        }
        if !identity {
            assert!(*fed <= cap, "inspector got {fed} bytes, cap {cap}");
        }
        if let Some(n) = out.strip_prefix("ok ") {
            let n: f32 = n.parse().unwrap();
            assert!(identity || n <= cap as f32);
        }
    }
    let (mut a, mut b) = (whole.0, split.0);
    if truncated && enc.is_some_and(|e| e.contains("br")) {
        // A brotli prefix: how much of it decodes depends on the chunking
        // (brotli-decompressor keeps output in its ring buffer until more
        // input comes); the outcome must not.
        for s in [&mut a, &mut b] {
            if s.starts_with("ok ") {
                *s = "ok".into();
            }
        }
    }
    assert_eq!(a, b, "chunking (step {step}) changed the outcome");
});
