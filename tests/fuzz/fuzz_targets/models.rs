//! Model files: the spam model (`Model::from_bytes`) and the CI-log model
//! (`CilogModel::from_bytes`) on mutated files. A bad file is an error;
//! a file that loads must score text without panicking.
//!
//! Both formats end in a checksum, which almost every mutation breaks; so
//! each input is also tried with its checksum made right, to reach the
//! field and table checks behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sift::cilog::CilogModel;
use sift::classify::{Classifier, Model, text};

const MAIL: &[u8] = b"Subject: Win a prize\r\nContent-Type: text/plain\r\n\r\nClick here now http://x.example/ to claim $1000!\r\n";
const LOG: &[u8] = b"$ cargo test\nerror[E0425]: cannot find value `x` in this scope\n --> src/lib.rs:3:5\nerror: could not compile `demo`\n##[error]Process completed with exit code 101.\n";

/// The CI-log model's checksum (FNV-1a, 64 bits).
fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `data` with its last eight bytes replaced by `sum` of the rest.
fn resummed(data: &[u8], sum: fn(&[u8]) -> u64) -> Option<Vec<u8>> {
    let n = data.len().checked_sub(8)?;
    let mut v = data.to_vec();
    let s = sum(&v[..n]);
    v[n..].copy_from_slice(&s.to_le_bytes());
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    spam(data);
    cilog(data);
    if let Some(v) = resummed(data, sift::classify::model::fnv1a64) {
        spam(&v);
    }
    if let Some(v) = resummed(data, fnv64) {
        cilog(&v);
    }
});

fn spam(data: &[u8]) {
    if let Ok(m) = Model::from_bytes(data) {
        let _ = m.weight_bytes();
        let clf = Classifier::new(m);
        let v = text::view(MAIL);
        let _ = clf.score(&v);
        let _ = clf.explain(&v, 5);
        let _ = clf.threshold_probability();
    }
}

fn cilog(data: &[u8]) {
    if let Ok(m) = CilogModel::from_bytes(data) {
        let _ = m.classify(LOG);
        let _ = m.line_score(b"error: could not compile");
        let _ = m.note();
    }
}
