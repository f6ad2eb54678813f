//! Spam classifier speed: featurize + score per KB of text on real
//! SpamAssassin messages, the whole raw-message path, and model load.
//!
//! `cargo bench --bench classify_spam` (needs `filters/spam/fetch-data.sh`
//! or `SIFT_DATA_DIR`; skips with a message when the corpus is absent;
//! `SIFT_SPAM_MODEL` benches another model file than filters/spam/model.bin).
//! Criterion's throughput is in bytes of text view (or raw message) per
//! second: µs/KB = 1e6 / (KiB/s).

use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use sift::classify::{Classifier, text};

fn data_dir() -> PathBuf {
    std::env::var_os("SIFT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/data"))
}

/// Every 4th message of each SpamAssassin group (ham, hard ham, spam),
/// in name order: about 1,500 messages.
fn messages() -> Option<Vec<Vec<u8>>> {
    let dir = data_dir().join("spam-assassin");
    let mut out = Vec::new();
    for g in ["easy-ham-1", "hard-ham-1", "spam-1", "easy-ham-2", "spam-2"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(g))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files.iter().step_by(4) {
            out.push(std::fs::read(f).ok()?);
        }
    }
    (!out.is_empty()).then_some(out)
}

fn bench(c: &mut Criterion) {
    let model = std::env::var_os("SIFT_SPAM_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("filters/spam/model.bin"));
    let clf = match Classifier::load(&model) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("classify_spam: skipped: {}: {e}", model.display());
            return;
        }
    };
    c.bench_function("classify_spam/load_model", |b| {
        b.iter(|| Classifier::load(black_box(&model)).map(|c| c.model().threshold))
    });
    let Some(raws) = messages() else {
        eprintln!(
            "classify_spam: skipped: SpamAssassin corpus not found under {} \
             (run filters/spam/fetch-data.sh or set SIFT_DATA_DIR)",
            data_dir().display()
        );
        return;
    };
    let max = clf.model().features.max_bytes as usize;
    let views: Vec<_> = raws.iter().map(|r| text::view(r)).collect();
    let view_bytes: usize = views.iter().map(|v| v.text.len().min(max)).sum();
    let raw_bytes: usize = raws.iter().map(Vec::len).sum();
    eprintln!(
        "classify_spam: {} messages, {} KB of text view, {} KB raw; model {} bytes of weights + {} bytes of featurizer state",
        raws.len(),
        view_bytes / 1024,
        raw_bytes / 1024,
        clf.model().weight_bytes(),
        clf.featurizer().state_bytes(),
    );
    let mut g = c.benchmark_group("classify_spam");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(view_bytes as u64));
    g.bench_function("score_text_view", |b| {
        b.iter(|| {
            let mut s = 0f32;
            for v in &views {
                s += clf.score(black_box(v)).margin;
            }
            s
        })
    });
    g.throughput(Throughput::Bytes(raw_bytes as u64));
    g.bench_function("score_raw_message", |b| {
        b.iter(|| {
            let mut s = 0f32;
            for r in &raws {
                s += clf.score_raw(black_box(r)).margin;
            }
            s
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
