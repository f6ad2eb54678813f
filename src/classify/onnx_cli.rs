//! `sift export-features spam` and `sift eval-onnx`: the Rust side of the
//! ONNX spam model's build (`filters/spam/onnx/build.sh`) and its measurement.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};

use super::data::{self, SA_GROUPS};
use super::eval;
use super::export::FeatureWriter;
use super::features::{self, FeatureConfig, Featurizer};
use super::onnx::{OnnxClassifier, OnnxError, logit};
use super::text;

#[derive(Debug, Subcommand)]
pub enum ExportWhat {
    /// Export the spam featurizer's sparse vectors and labels.
    Spam(ExportSpam),
}

/// Which corpora to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportSet {
    /// All of SpamAssassin and all of SMS (groups tell them apart).
    All,
    /// All of SpamAssassin.
    Sa,
    /// All of SMS.
    Sms,
}

#[derive(Debug, Args)]
pub struct ExportSpam {
    /// Cache dir of filters/spam/fetch-data.sh (SpamAssassin under <dir>/spam-assassin).
    #[arg(long, default_value = "target/data")]
    pub data_dir: PathBuf,
    /// SMS Spam Collection file.
    #[arg(long, default_value = "../shared/data/spam/sms/SMSSpamCollection")]
    pub sms: PathBuf,
    /// Corpora to export (ignored with FILES).
    #[arg(long, value_enum, default_value_t = ExportSet::All)]
    pub set: ExportSet,
    /// log2 of the number of hash buckets (the model's input width D = 2^bits).
    #[arg(long, default_value_t = 14)]
    pub bits: u8,
    /// Feature blocks (as `sift train spam --features`): comma-separated of word, bigram,
    /// char (3-, 4- and 5-grams) or char3/char4/char5, signal, fold, charset.
    #[arg(long, default_value = "word,bigram,char,signal,fold")]
    pub features: String,
    /// Featurize at most this many bytes of each text view.
    #[arg(long, default_value_t = 32768)]
    pub max_bytes: u32,
    /// Value scale of the word block.
    #[arg(long, default_value_t = 1.0)]
    pub word_scale: f32,
    /// Value scale of the char block.
    #[arg(long, default_value_t = 0.25)]
    pub char_scale: f32,
    /// Output directory (meta.json, indptr.u64, idx.u32, val.f32, label.u8, group.u8, names.txt).
    #[arg(long)]
    pub out: PathBuf,
    /// Export these inputs (RFC 822 or plain text, label unknown) instead of the corpora.
    pub files: Vec<PathBuf>,
}

impl ExportSpam {
    fn feature_config(&self) -> Result<FeatureConfig, String> {
        let flags = features::parse_flags(&self.features)?;
        if !(8..=24).contains(&self.bits) {
            return Err("--bits must be in 8..=24".into());
        }
        let d = FeatureConfig::default();
        Ok(FeatureConfig {
            bits: self.bits,
            max_bytes: self.max_bytes.max(1),
            flags,
            seed: d.seed,
            word_scale: self.word_scale,
            char_scale: self.char_scale,
        })
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sift: {msg}");
    ExitCode::FAILURE
}

/// Group names of an export: the SpamAssassin groups, then "sms".
pub fn group_names() -> Vec<String> {
    SA_GROUPS
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(["sms".to_string()])
        .collect()
}

pub fn run_export(what: ExportWhat) -> ExitCode {
    let ExportWhat::Spam(args) = what;
    let cfg = match args.feature_config() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let t = Instant::now();
    let mut w = FeatureWriter::new(Featurizer::new(cfg), group_names());
    if !args.files.is_empty() {
        for f in &args.files {
            match std::fs::read(f) {
                Ok(raw) => w.push(&text::view(&raw), None, None, &f.display().to_string()),
                Err(e) => return fail(format_args!("{}: {e}", f.display())),
            }
        }
    } else {
        if matches!(args.set, ExportSet::All | ExportSet::Sa) {
            let sa = match data::load_spamassassin(&data::sa_dir(&args.data_dir)) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            for i in 0..sa.len() {
                let g = sa.groups[i];
                let name = format!("{}#{i}", SA_GROUPS[g as usize].0);
                w.push(&sa.views[i], Some(sa.labels[i]), Some(g), &name);
            }
        }
        if matches!(args.set, ExportSet::All | ExportSet::Sms) {
            let sms = match data::load_sms(&args.sms) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let g = SA_GROUPS.len() as u8;
            for i in 0..sms.len() {
                w.push(
                    &sms.views[i],
                    Some(sms.labels[i]),
                    Some(g),
                    &format!("sms#{i}"),
                );
            }
        }
    }
    if let Err(e) = w.write(&args.out) {
        return fail(format_args!("{}: {e}", args.out.display()));
    }
    crate::say!(
        "wrote {} ({} rows, bits {}) in {:.1}s",
        args.out.display(),
        w.len(),
        cfg.bits,
        t.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

#[derive(Debug, Args)]
pub struct EvalOnnxArgs {
    /// ONNX model (trained on the time split's training part for the quality figure).
    #[arg(long)]
    pub model: PathBuf,
    /// libonnxruntime.so (default: $ORT_DYLIB_PATH).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Cache dir of filters/spam/fetch-data.sh.
    #[arg(long, default_value = "target/data")]
    pub data_dir: PathBuf,
    /// Skip the quality figure (speed only).
    #[arg(long)]
    pub bench_only: bool,
    /// Seconds per timing loop.
    #[arg(long, default_value_t = 2.0)]
    pub min_secs: f64,
}

/// Time-split test messages (easy-ham-2, spam-2): raw bytes and labels.
fn time_test(data_dir: &Path) -> Result<(Vec<Vec<u8>>, Vec<bool>), String> {
    let dir = data::sa_dir(data_dir);
    let mut raws = Vec::new();
    let mut labels = Vec::new();
    for (g, spam) in [("easy-ham-2", false), ("spam-2", true)] {
        let rd = std::fs::read_dir(dir.join(g))
            .map_err(|e| format!("{}: {e}; {}", dir.join(g).display(), data::FETCH_HINT))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        for f in files {
            raws.push(std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?);
            labels.push(spam);
        }
    }
    Ok((raws, labels))
}

/// Quality on the time split's test part and speed of the serving path.
pub fn run_eval_onnx(args: EvalOnnxArgs) -> ExitCode {
    let t = Instant::now();
    let clf = match OnnxClassifier::load_with(&args.model, args.runtime.as_deref(), 1) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    // Again, with the runtime already loaded: the cost of one more model.
    let t = Instant::now();
    if let Err(e) = OnnxClassifier::load_with(&args.model, args.runtime.as_deref(), 1) {
        return fail(e);
    }
    let reload_ms = t.elapsed().as_secs_f64() * 1e3;
    let (raws, labels) = match time_test(&args.data_dir) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let thr = clf.threshold_probability();
    crate::say!(
        "model {}: D {}, bits {}, threshold p {:.4}; load {:.1} ms the first time (runtime library + session), {:.1} ms again (session only)",
        args.model.display(),
        clf.dim(),
        clf.feature_config().bits,
        thr,
        load_ms,
        reload_ms
    );
    if !args.bench_only {
        let mut margins = Vec::with_capacity(raws.len());
        for r in &raws {
            match clf.score_raw(r) {
                Ok(s) => margins.push(s.margin),
                Err(e) => return fail(e),
            }
        }
        let m = eval::metrics(&margins, &labels, logit(thr));
        crate::say!(
            "time split test (easy-ham-2 + spam-2), raw message → verdict through ONNX Runtime: {m}"
        );
    }
    match bench(&clf, &raws, args.min_secs) {
        Ok((view_us, raw_us, model_us)) => crate::say!(
            "bench: featurize+dense+infer {view_us:.2} µs/KB of text view; raw message → verdict {raw_us:.2} µs/KB of raw message; inference alone {model_us:.1} µs per message; {} messages, one thread",
            raws.len()
        ),
        Err(e) => return fail(e),
    }
    ExitCode::SUCCESS
}

/// (µs/KB of text view, µs/KB of raw message, µs per inference call).
fn bench(
    clf: &OnnxClassifier,
    raws: &[Vec<u8>],
    min_secs: f64,
) -> Result<(f64, f64, f64), OnnxError> {
    let views: Vec<_> = raws.iter().map(|r| text::view(r)).collect();
    let max = clf.feature_config().max_bytes as usize;
    let view_kb = views.iter().map(|v| v.text.len().min(max)).sum::<usize>() as f64 / 1024.0;
    let raw_kb = raws.iter().map(Vec::len).sum::<usize>() as f64 / 1024.0;
    let mut sink = 0f32;
    let time = |f: &mut dyn FnMut() -> Result<(), OnnxError>| -> Result<f64, OnnxError> {
        let mut rounds = 0u32;
        let t = Instant::now();
        while rounds == 0 || t.elapsed().as_secs_f64() < min_secs {
            f()?;
            rounds += 1;
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds))
    };
    let view_us = time(&mut || {
        for v in &views {
            sink += clf.score(v)?.probability;
        }
        Ok(())
    })?;
    let raw_us = time(&mut || {
        for r in raws {
            sink += clf.score_raw(r)?.probability;
        }
        Ok(())
    })?;
    // Inference alone on one fixed input: the cost ONNX Runtime adds.
    let x = clf.dense_input(&views[0]);
    let n = 200.min(views.len()).max(1);
    let model_us = time(&mut || {
        for _ in 0..n {
            sink += clf.infer_dense(&x)?;
        }
        Ok(())
    })? / n as f64;
    std::hint::black_box(sink);
    Ok((view_us / view_kb, raw_us / raw_kb, model_us))
}

/// `sift classify --model X.onnx`: the same JSON lines as the native model
/// (no `margin` rounding differences, no `--explain`).
pub fn run_classify_onnx(args: &super::cli::ClassifyArgs, model: &std::path::Path) -> ExitCode {
    use super::cli::{input_names, is_empty_view, open_input, read_input, skipped_line};
    if args.explain {
        return super::cli::usage("--explain is not available for ONNX models");
    }
    let clf = match OnnxClassifier::load_with(model, args.runtime.as_deref(), 1) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut code = ExitCode::SUCCESS;
    for input in input_names(&args.files) {
        let name = input.display().to_string();
        let cap = crate::config::model::DEFAULT_MAX_DECOMPRESSED;
        let view = match open_input(&input).and_then(|r| read_input(r, cap)) {
            Ok(raw) => super::text::view(&raw),
            Err(e) => {
                eprintln!("sift: {name}: {e}");
                code = ExitCode::FAILURE;
                continue;
            }
        };
        if is_empty_view(&view) {
            if let Err(e) = super::cli::out_line(skipped_line(&name, "spam", "empty")) {
                return super::cli::stdout_failed(e);
            }
            continue;
        }
        let s = match clf.score(&view) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sift: {name}: {e}");
                code = ExitCode::FAILURE;
                continue;
            }
        };
        let line = serde_json::json!({
            "file": name,
            "filter": "spam",
            "backend": "onnx",
            "score": (f64::from(s.probability) * 1e6).round() / 1e6,
            "verdict": if s.spam { "spam" } else { "ham" },
            "threshold": (f64::from(clf.threshold_probability()) * 1e6).round() / 1e6,
            "margin": (f64::from(s.margin) * 1e4).round() / 1e4,
        });
        if let Err(e) = super::cli::out_line(line) {
            return super::cli::stdout_failed(e);
        }
    }
    code
}
