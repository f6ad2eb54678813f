//! Spam classifier speed: featurize + score per KB of text on real
//! SpamAssassin messages, the whole raw-message path, and model load.
//!
//! `cargo bench --bench classify_spam` (needs `filters/spam/fetch-data.sh`
//! or `SIFT_DATA_DIR`; skips with a message when the corpus is absent;
//! `SIFT_SPAM_MODEL` benches another model file than filters/spam/model.bin).
//! Criterion's throughput is in bytes of text view (or raw message) per
//! second: µs/KB = 1e6 / (KiB/s).
//!
//! `score_sms_2kb` scores the 2 KB body of `bench/filter-overhead.sh` (real
//! SMS text, spam and ham lines alternating; `SIFT_SMS` names the corpus
//! file). `SIFT_BENCH_LOOP=N` scores that body N times and exits, without
//! criterion: a fixed workload for `valgrind --tool=callgrind`.

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

/// The 2 KB body of `bench/filter-overhead.sh`: SMS texts, ham and spam
/// alternating (the i-th of each list), joined by newlines, cut at 2,048
/// characters.
fn sms_2kb() -> Option<String> {
    let path = std::env::var_os("SIFT_SMS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/spam/sms/SMSSpamCollection")
        });
    let raw = std::fs::read(path).ok()?;
    let all = String::from_utf8_lossy(&raw);
    let (mut spam, mut ham) = (Vec::new(), Vec::new());
    for line in all.split_inclusive('\n') {
        if let Some((k, t)) = line.split_once('\t') {
            match k {
                "spam" => spam.push(t.trim()),
                "ham" => ham.push(t.trim()),
                _ => {}
            }
        }
    }
    let mut out: Vec<&str> = Vec::new();
    let mut i = 0;
    while out.iter().map(|x| x.chars().count() + 1).sum::<usize>() < 2048 {
        out.push(if i % 2 == 1 {
            spam.get(i)?
        } else {
            ham.get(i)?
        });
        i += 1;
    }
    Some(out.join("\n").chars().take(2048).collect())
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
    let sms = sms_2kb();
    if let Some(n) = std::env::var("SIFT_BENCH_LOOP")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let Some(body) = sms else {
            eprintln!("classify_spam: no SMS corpus (SIFT_SMS)");
            return;
        };
        let view = text::TextView::plain(&body);
        let mut s = 0f32;
        for _ in 0..n {
            s += clf.score(black_box(&view)).margin;
        }
        eprintln!("classify_spam: {n} × {} bytes, margin sum {s}", body.len());
        std::process::exit(0);
    }
    if let Some(body) = &sms {
        let view = text::TextView::plain(body);
        let mut g = c.benchmark_group("classify_spam");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function("score_sms_2kb", |b| {
            b.iter(|| clf.score(black_box(&view)).margin)
        });
        g.finish();
    }
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
