//! CI-log classification with the builtin model: one-shot `classify` and
//! the streaming `scanner` fed in arbitrary chunks must agree (the scanner
//! reads "whatever the chunking"), the line splitter and `normalize` on
//! their own, and `reformat::from_travis` (the line count is kept).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sift::cilog::CilogModel;
use sift::cilog::normalize::{LineSplitter, normalize_segment};

static MODEL: LazyLock<CilogModel> = LazyLock::new(|| {
    CilogModel::from_bytes(sift::filter::cilog::BUILTIN_MODEL).expect("builtin model")
});

/// Chunk lengths from a small generator seeded by the input itself.
fn chunks(body: &[u8]) -> Vec<&[u8]> {
    let mut x = body.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut rest = body;
    let mut out = Vec::new();
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = match x % 4 {
            0 => 1,
            1 => 1 + (x >> 8) as usize % 4,
            2 => 1 + (x >> 8) as usize % 512,
            _ => 1 + (x >> 8) as usize % 8192,
        }
        .min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

fn lines<'a>(parts: impl Iterator<Item = &'a [u8]>) -> (Vec<(u64, Vec<u8>)>, u64) {
    let mut s = LineSplitter::new();
    let mut out = Vec::new();
    for p in parts {
        s.feed(p, &mut |no, l| out.push((no, l.to_vec())));
        assert!(
            s.retained() < 1 << 20,
            "line splitter holds {} bytes",
            s.retained()
        );
    }
    s.finish(&mut |no, l| out.push((no, l.to_vec())));
    (out, s.total_lines())
}

fuzz_target!(|data: &[u8]| {
    let parts = chunks(data);

    // The line splitter: same lines whatever the chunking.
    let whole = lines(std::iter::once(data));
    assert_eq!(
        whole,
        lines(parts.iter().copied()),
        "chunking changed the lines"
    );
    for (_, l) in &whole.0 {
        assert!(!l.is_empty() && l.len() <= sift::cilog::normalize::MAX_LINE);
    }

    // The log as another CI would have written it keeps its line count,
    // so line numbers (and labelled chunks) stay valid.
    for to in sift::cilog::reformat::CiFormat::ALL {
        let r = sift::cilog::reformat::from_travis(data, to);
        assert_eq!(
            lines(std::iter::once(&r[..])).1,
            whole.1,
            "{to:?} changed the line count"
        );
    }

    // normalize on its own: no control bytes out, never longer.
    let mut out = Vec::new();
    normalize_segment(data, &mut out);
    assert!(out.len() <= data.len());
    assert!(
        !out.iter().any(|&b| b < 0x20 || b == 0x7f),
        "control byte after normalize: {out:?}"
    );

    // One-shot and streaming verdicts agree.
    let one = MODEL.classify(data);
    let mut s = MODEL.scanner();
    for p in &parts {
        s.feed(p);
    }
    assert_eq!(s.bytes_seen(), data.len() as u64);
    assert!(
        s.retained_bytes() < 8 << 20,
        "scanner holds {} bytes",
        s.retained_bytes()
    );
    let streamed = s.finish();
    assert_eq!(
        format!("{one:?}"),
        format!("{streamed:?}"),
        "chunking changed the verdict"
    );
    assert!(
        (0.0..=1.0).contains(&one.confidence),
        "confidence {}",
        one.confidence
    );
});
