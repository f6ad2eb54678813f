//! RFC 822 / MIME view (base64, quoted-printable, charsets, RFC 2047
//! words, HTML to text), then the builtin spam model's score and explain.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sift::classify::{Classifier, Model, text};

static CLF: LazyLock<Classifier> = LazyLock::new(|| {
    Classifier::new(Model::from_bytes(sift::filter::spam::BUILTIN_MODEL).expect("builtin model"))
});

fuzz_target!(|data: &[u8]| {
    let v = text::view(data);
    let s = CLF.score(&v);
    assert!(!s.probability.is_nan(), "NaN probability");
    let top = CLF.explain(&v, 10);
    assert!(top.len() <= 10);
    // The filter path reads a message/rfc822 body the same way.
    let _ =
        sift::filter::extract::extract(&sift::filter::extract::BodyKind::Rfc822, data, None, None);
});
