//! Throughput of the CI-log classifier on real logs (../shared/data/cilogs
//! or $SIFT_CILOG_DATA): MB/s over concatenated logs, and one 5 MB log.
//! Skips with a message when the data is absent.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};
use sift::cilog::CilogModel;
use sift::cilog::train;

fn logs() -> Option<Vec<Vec<u8>>> {
    let d = train::default_data_dir();
    let data = train::load_labelled(&d.join("labels.csv"), &d.join("logs")).ok()?;
    Some(data.into_iter().map(|e| e.bytes).collect())
}

fn bench(c: &mut Criterion) {
    let Some(logs) = logs() else {
        eprintln!(
            "cilog bench skipped: no labelled logs at {}",
            train::default_data_dir().display()
        );
        return;
    };
    let model_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("filters/cilog/model.bin");
    let m = CilogModel::load(&model_path).expect("filters/cilog/model.bin");
    // About 32 MB of whole real logs, in data-set order.
    let mut set: Vec<&[u8]> = Vec::new();
    let mut total = 0usize;
    for l in &logs {
        if total >= 32 << 20 {
            break;
        }
        set.push(l);
        total += l.len();
    }
    // One 5 MB log: real logs concatenated.
    let mut five = Vec::with_capacity(5 << 20);
    'fill: loop {
        for l in &logs {
            let room = (5 << 20) - five.len();
            if room == 0 {
                break 'fill;
            }
            five.extend_from_slice(&l[..l.len().min(room)]);
        }
    }
    let mut g = c.benchmark_group("cilog");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("real_logs_32MB", |b| {
        b.iter(|| {
            for l in &set {
                black_box(m.classify(l));
            }
        })
    });
    g.throughput(Throughput::Bytes(five.len() as u64));
    g.bench_function("one_log_5MB", |b| b.iter(|| black_box(m.classify(&five))));
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
