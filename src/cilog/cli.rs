//! `sift train cilog`, `sift eval cilog`, `sift classify --filter cilog`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use super::train::{self, Example, LineSet, Recipe};
use super::{CilogModel, Class};

pub const DEFAULT_MODEL: &str = "filters/cilog/model.bin";

/// Data and recipe knobs shared by train and eval.
#[derive(Debug, Args)]
pub struct CilogRecipe {
    /// Labelled-log folder with labels.csv and logs/ (default:
    /// $SIFT_CILOG_DATA, else <crate>/../shared/data/cilogs).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A labels CSV (columns path, label; optional id, repo,
    /// chunk_first_line, chunk_last_line); default <data>/labels.csv.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Folder the CSV's paths are relative to; default <labels dir>/logs.
    #[arg(long)]
    pub logs: Option<PathBuf>,
    /// More labelled logs, added to the data above (repeatable): a folder
    /// with its own labels.csv and logs/, or a JSONL file of
    /// `{"log", "label", "repo"?, "chunk_first_line"?, "chunk_last_line"?}`
    /// lines (the learn endpoint's format and store), e.g. your
    /// repositories' failed builds beside the shipped data set.
    #[arg(long, value_name = "DIR|FILE")]
    pub also: Vec<PathBuf>,
    /// log2 of the line scorer's buckets.
    #[arg(long, default_value_t = Recipe::default().line_bits)]
    pub line_bits: u8,
    /// log2 of the class scorer's buckets.
    #[arg(long, default_value_t = Recipe::default().class_bits)]
    pub class_bits: u8,
    #[arg(long, default_value_t = Recipe::default().line_epochs)]
    pub line_epochs: u32,
    #[arg(long, default_value_t = Recipe::default().line_lr)]
    pub line_lr: f32,
    #[arg(long, default_value_t = Recipe::default().class_epochs)]
    pub class_epochs: u32,
    #[arg(long, default_value_t = Recipe::default().class_lr)]
    pub class_lr: f32,
    #[arg(long, default_value_t = Recipe::default().l2)]
    pub l2: f32,
    /// L2 of the class scorer (strong: few repositories to learn from).
    #[arg(long, default_value_t = Recipe::default().class_l2)]
    pub class_l2: f32,
    #[arg(long, default_value_t = Recipe::default().seed)]
    pub seed: u64,
    /// Learn a feature only if it occurs in this many repositories.
    #[arg(long, default_value_t = Recipe::default().min_groups)]
    pub min_groups: u32,
    /// Plain SGD for the line scorer (default AdaGrad).
    #[arg(long)]
    pub line_sgd: bool,
    /// Plain SGD for the class scorer (default AdaGrad).
    #[arg(long)]
    pub class_sgd: bool,
    /// Change only the class scorer's example order (0: the shipped one).
    /// The order alone moves grouped-CV figures by about ±0.7 points of
    /// mean accuracy: compare candidates over several orders.
    #[arg(long, default_value_t = 0)]
    pub order_salt: u64,
}

impl CilogRecipe {
    fn recipe(&self) -> Result<Recipe, String> {
        if !(10..=22).contains(&self.line_bits) || !(10..=20).contains(&self.class_bits) {
            return Err("--line-bits must be in 10..=22 and --class-bits in 10..=20".into());
        }
        Ok(Recipe {
            line_bits: self.line_bits,
            class_bits: self.class_bits,
            line_epochs: self.line_epochs,
            line_lr: self.line_lr,
            class_epochs: self.class_epochs,
            class_lr: self.class_lr,
            l2: self.l2,
            class_l2: self.class_l2,
            seed: self.seed,
            min_groups: self.min_groups,
            line_sgd: self.line_sgd,
            class_sgd: self.class_sgd,
            order_salt: self.order_salt,
        })
    }

    fn paths(&self) -> (PathBuf, PathBuf) {
        let data = self.data.clone().unwrap_or_else(train::default_data_dir);
        let labels = self
            .labels
            .clone()
            .unwrap_or_else(|| data.join("labels.csv"));
        let logs = self
            .logs
            .clone()
            .unwrap_or_else(|| labels.parent().unwrap_or(Path::new(".")).join("logs"));
        (labels, logs)
    }
}

#[derive(Debug, Args)]
pub struct TrainCilog {
    #[command(flatten)]
    pub recipe: CilogRecipe,
    /// Output model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct EvalCilog {
    #[command(flatten)]
    pub recipe: CilogRecipe,
    /// Folds (grouped by repository).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// How folds are drawn: `repos` (grouped by repository, the issue's
    /// protocol) or `logs` (stratified by class, repositories shared
    /// between train and test: what retraining on your own repositories'
    /// logs gives; a diagnostic).
    #[arg(long, default_value = "repos", value_parser = ["repos", "logs"])]
    pub split: String,
    /// Adaptation: each held-out repository also gives its first N logs
    /// to training (as an operator labelling a few logs of a new
    /// repository); prints the zero-shot and the adapted figures over the
    /// same remaining logs. Grouped folds only.
    #[arg(long, value_name = "N")]
    pub adapt: Option<usize>,
    /// Diagnostic: train on all logs and score on them (not a CV figure).
    #[arg(long)]
    pub in_sample: bool,
    /// Diagnostic: the class scorer alone, trained and tested on the human
    /// chunks instead of the found evidence (grouped CV).
    #[arg(long)]
    pub chunk_oracle: bool,
    /// Also score the held-out logs as another CI system would have
    /// written them (`github`, `gitlab`, `jenkins`, `azure`, `buildkite`,
    /// `circleci`, or `all`: the CI's own lines and timestamps rewritten,
    /// tool output and line numbers kept;
    /// training stays on the Travis originals). Prints the figures of each
    /// and how often the class and the evidence line stay the same.
    #[arg(long = "as", value_name = "FORMAT", value_parser = ["github", "gitlab", "jenkins", "azure", "buildkite", "circleci", "all"])]
    pub as_format: Option<String>,
    /// Print one line per misclassified log.
    #[arg(long)]
    pub errors: bool,
    /// Also time --model on the data (load, MB/s, one thread).
    #[arg(long)]
    pub bench: bool,
    /// Model for --bench.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
}

/// `sift eval cilog --as FORMAT`: the same CV models score each held-out
/// log as it is and rewritten into each of `to`; the figures of each, and
/// how often the verdict stays the same.
fn eval_as(
    data: &[Example],
    sets: &[LineSet],
    k: usize,
    r: &train::Recipe,
    split: train::Split,
    to: &[super::reformat::CiFormat],
    errors: bool,
) -> ExitCode {
    let t = Instant::now();
    let views: Vec<_> = std::iter::once(None)
        .chain(to.iter().copied().map(Some))
        .collect();
    let reps = train::cross_validate_as(data, sets, k, r, split, &views);
    let folds = if split == train::Split::Logs {
        format!("{k}-fold CV over logs")
    } else {
        format!("grouped {k}-fold CV by repository")
    };
    let orig = &reps[0];
    for (view, rep) in views.iter().zip(&reps) {
        crate::say!(
            "{folds} (seed {}), held-out logs as {}: accuracy {:.3}, macro-F1 (classes with >= 5 examples) {:.3}, evidence inside the human chunk {:.1}% ({}/{})",
            r.seed,
            view.map_or("travis (as labelled)", |f| f.as_str()),
            rep.accuracy(),
            rep.macro_f1(5),
            100.0 * rep.evidence_share(),
            rep.evidence_in_chunk,
            rep.with_chunk,
        );
    }
    for (f, conv) in to.iter().zip(&reps[1..]) {
        let (mut same_class, mut same_line) = (0, 0);
        for ((i, a), (_, b)) in orig.predictions.iter().zip(&conv.predictions) {
            same_class += usize::from(a.class == b.class);
            same_line += usize::from(a.line == b.line);
            if errors && (a.class != b.class || a.line != b.line) {
                crate::say!(
                    "{} {}: travis {} line {} | {} {} line {}: {}",
                    data[*i].id,
                    data[*i].group,
                    a.class,
                    a.line,
                    f.as_str(),
                    b.class,
                    b.line,
                    b.text.chars().take(100).collect::<String>()
                );
            }
        }
        crate::say!(
            "the same verdict as travis, as {}: class {same_class}/{n} ({:.1}%), evidence line {same_line}/{n} ({:.1}%)",
            f.as_str(),
            100.0 * same_class as f64 / orig.n.max(1) as f64,
            100.0 * same_line as f64 / orig.n.max(1) as f64,
            n = orig.n,
        );
    }
    crate::say!("[{:.1}s]", t.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sift: {msg}");
    ExitCode::FAILURE
}

fn load_data(r: &CilogRecipe, bits: u8) -> Result<(Vec<Example>, Vec<LineSet>), String> {
    let t = Instant::now();
    let (labels, logs) = r.paths();
    let mut data = train::load_labelled(&labels, &logs).map_err(|e| e.to_string())?;
    if data.is_empty() {
        return Err(format!("{}: no labelled logs", labels.display()));
    }
    for more in &r.also {
        let logs = train::load_any(more).map_err(|e| e.to_string())?;
        if logs.is_empty() {
            return Err(format!("{}: no labelled logs", more.display()));
        }
        data.extend(logs);
    }
    let sets: Vec<LineSet> = data.iter().map(|e| train::line_set(e, bits)).collect();
    let bytes: usize = data.iter().map(|e| e.bytes.len()).sum();
    eprintln!(
        "loaded {} logs ({:.1} MB, {} groups) from {} in {:.1}s",
        data.len(),
        bytes as f64 / 1e6,
        {
            let mut g: Vec<&str> = data.iter().map(|e| e.group.as_str()).collect();
            g.sort_unstable();
            g.dedup();
            g.len()
        },
        std::iter::once(labels.display().to_string())
            .chain(r.also.iter().map(|d| d.display().to_string()))
            .collect::<Vec<_>>()
            .join(" + "),
        t.elapsed().as_secs_f64()
    );
    Ok((data, sets))
}

pub fn run_train(args: TrainCilog) -> ExitCode {
    let r = match args.recipe.recipe() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let (data, sets) = match load_data(&args.recipe, r.line_bits) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let t = Instant::now();
    let (m, note) = train::train_all(&data, &sets, &r);
    if let Err(e) = m.save(&args.out) {
        return fail(e);
    }
    crate::say!(
        "wrote {} ({} bytes) in {:.1}s: {}",
        args.out.display(),
        m.to_bytes().len(),
        t.elapsed().as_secs_f64(),
        note
    );
    ExitCode::SUCCESS
}

pub fn run_eval(args: EvalCilog) -> ExitCode {
    let r = match args.recipe.recipe() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let (data, sets) = match load_data(&args.recipe, r.line_bits) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let t = Instant::now();
    let k = args.folds.max(2);
    let split = if args.split == "logs" {
        train::Split::Logs
    } else {
        train::Split::Repos
    };
    if let Some(n) = args.adapt {
        if split != train::Split::Repos || args.in_sample || args.chunk_oracle {
            return fail(
                "--adapt works on grouped folds only (no --split logs, --in-sample, --chunk-oracle)",
            );
        }
        let (zero, adapted) = train::adapt_cv(&data, &sets, k, &r, n);
        for (what, rep) in [("zero-shot", &zero), ("after learning", &adapted)] {
            crate::say!(
                "grouped {k}-fold CV, held-out repositories' first {n} logs {} training (seed {}, {} logs scored): accuracy {:.3}, macro-F1 (classes with >= 5 examples) {:.3}, evidence inside the human chunk {:.1}% ({}/{})  [{what}]",
                if what == "zero-shot" {
                    "kept out of"
                } else {
                    "added to"
                },
                r.seed,
                rep.n,
                rep.accuracy(),
                rep.macro_f1(5),
                100.0 * rep.evidence_share(),
                rep.evidence_in_chunk,
                rep.with_chunk,
            );
        }
        crate::say!("[{:.1}s]", t.elapsed().as_secs_f64());
        return ExitCode::SUCCESS;
    }
    if let Some(fmt) = args.as_format.as_deref() {
        let to = match super::reformat::CiFormat::parse(fmt) {
            Some(f) => vec![f],
            None if fmt == "all" => super::reformat::CiFormat::ALL.to_vec(),
            None => return fail(format!("--as {fmt}: not a CI format")),
        };
        if args.in_sample || args.chunk_oracle {
            return fail("--as works on cross-validation only (no --in-sample, --chunk-oracle)");
        }
        return eval_as(&data, &sets, k, &r, split, &to, args.errors);
    }
    let rep = if args.in_sample {
        let rows: Vec<usize> = (0..data.len()).collect();
        let m = train::train(&data, &sets, &rows, &r, "in-sample");
        let mut rep = train::Report::default();
        for (i, e) in data.iter().enumerate() {
            rep.add(i, e, m.classify(&e.bytes));
        }
        crate::say!("IN-SAMPLE (training set = test set):");
        rep
    } else if args.chunk_oracle {
        crate::say!("CHUNK ORACLE (class scorer on the human chunks):");
        train::oracle_cv(&data, k, &r, split)
    } else {
        train::cross_validate(&data, &sets, k, &r, split)
    };
    let what = if args.in_sample {
        "in-sample (trained on the test logs)".to_string()
    } else if split == train::Split::Logs {
        format!("{k}-fold CV over logs, stratified by class, repositories shared")
    } else {
        format!("grouped {k}-fold CV by repository")
    };
    let what = if r.order_salt != 0 {
        format!("{what}, class scorer order salt {}", r.order_salt)
    } else {
        what
    };
    crate::say!(
        "{what} ({} logs, seed {}): accuracy {:.3}, macro-F1 (classes with >= 5 examples) {:.3}, evidence inside the human chunk {:.1}% ({}/{} logs with a chunk)  [{:.1}s]",
        rep.n,
        r.seed,
        rep.accuracy(),
        rep.macro_f1(5),
        100.0 * rep.evidence_share(),
        rep.evidence_in_chunk,
        rep.with_chunk,
        t.elapsed().as_secs_f64()
    );
    print!("{}", rep.table());
    if !args.chunk_oracle {
        print!("{}", rep.coverage_table(&data));
    }
    crate::say!("confusion (rows true, columns predicted, order as above):");
    for (c, row) in Class::ALL.iter().zip(rep.confusion.iter()) {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:>4}")).collect();
        crate::say!("{:<11}{}", c.as_str(), cells.join(""));
    }
    if args.errors {
        for (i, v) in &rep.predictions {
            let e = &data[*i];
            let inside = e.chunk.is_some_and(|(a, b)| (a..=b).contains(&v.line));
            if v.class != e.label || !inside {
                crate::say!(
                    "{} {} true {} pred {} ({:.2}) line {} chunk {:?}{}: {}",
                    e.id,
                    e.group,
                    e.label,
                    v.class,
                    v.confidence,
                    v.line,
                    e.chunk,
                    if inside { "" } else { " OUTSIDE" },
                    v.text.chars().take(120).collect::<String>()
                );
            }
        }
    }
    if args.bench {
        match bench(&args.model, &data) {
            Ok(s) => crate::say!("{s}"),
            Err(e) => return fail(e),
        }
    }
    ExitCode::SUCCESS
}

/// Load time and throughput of a model file on the logs, one thread.
pub fn bench(model: &Path, data: &[Example]) -> Result<String, String> {
    let t = Instant::now();
    let m = CilogModel::load(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes: usize = data.iter().map(|e| e.bytes.len()).sum();
    let t = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || t.elapsed().as_secs_f64() < 2.0 {
        for e in data {
            std::hint::black_box(m.classify(&e.bytes));
        }
        rounds += 1;
    }
    let mbps = (bytes * rounds) as f64 / 1e6 / t.elapsed().as_secs_f64();
    Ok(format!(
        "bench {}: {} bytes, load {:.1} ms; {:.0} MB/s over {} logs ({:.1} MB), one thread",
        model.display(),
        std::fs::metadata(model).map(|m| m.len()).unwrap_or(0),
        load_ms,
        mbps,
        data.len(),
        bytes as f64 / 1e6
    ))
}

/// `sift classify --filter cilog`: one JSON line per input (stdin when none).
/// `sift classify --filter cilog`: one JSON line per input, in the shape
/// of the answer route's verdict (`context` as `{"line", "text"}` objects).
pub fn run_classify(model: &Path, files: &[PathBuf]) -> ExitCode {
    use crate::classify::cli::{
        input_names, is_builtin, open_input, out_line, skipped_line, stdout_failed,
    };
    let loaded = if is_builtin(model) {
        CilogModel::from_bytes(crate::filter::cilog::BUILTIN_MODEL)
            .map_err(|e| format!("builtin: {e}"))
    } else {
        CilogModel::load(model).map_err(|e| format!("{}: {e}", model.display()))
    };
    let m = match loaded {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let mut code = ExitCode::SUCCESS;
    for input in input_names(files) {
        let name = input.display().to_string();
        let written = match open_input(&input).and_then(|r| scan_reader(&m, r)) {
            Ok(Some(v)) => out_line(verdict_line(&name, &v)),
            Ok(None) => out_line(skipped_line(&name, "cilog", "empty")),
            Err(e) => {
                eprintln!("sift: {name}: {e}");
                code = ExitCode::FAILURE;
                Ok(())
            }
        };
        if let Err(e) = written {
            return stdout_failed(e);
        }
    }
    code
}

/// The JSON line of a verdict: the fields of the answer route's verdict
/// (confidence rounded to 3 decimals as there) and the input's name.
pub fn verdict_line(name: &str, v: &super::Verdict) -> serde_json::Value {
    let conf = (v.confidence * 1000.0).round() / 1000.0;
    serde_json::json!({
        "file": name,
        "filter": "cilog",
        "class": v.class.as_str(),
        "confidence": crate::filter::short_f64(conf),
        "line": v.line,
        "text": v.text,
        "context": v
            .context
            .iter()
            .map(|(n, t)| serde_json::json!({ "line": n, "text": t }))
            .collect::<Vec<_>>(),
    })
}

/// Stream a reader through a scanner (gunzipping gzip input), in 64 KB
/// reads. `None`: the input (once decoded) is empty, which the server skips.
pub fn scan_reader<R: Read>(m: &CilogModel, mut r: R) -> std::io::Result<Option<super::Verdict>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = 0;
    // Fill at least 2 bytes to look for the gzip magic.
    while head < 2 {
        let n = r.read(&mut buf[head..])?;
        if n == 0 {
            break;
        }
        head += n;
    }
    let prefix = buf[..head].to_vec();
    let chained = std::io::Cursor::new(prefix).chain(r);
    if buf[..head].starts_with(&[0x1f, 0x8b]) {
        stream(m, flate2::read::MultiGzDecoder::new(chained), &mut buf)
    } else {
        stream(m, chained, &mut buf)
    }
}

fn stream<R: Read>(
    m: &CilogModel,
    mut r: R,
    buf: &mut [u8],
) -> std::io::Result<Option<super::Verdict>> {
    let mut s = m.scanner();
    let mut seen = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        seen += n as u64;
        s.feed(&buf[..n]);
    }
    Ok((seen > 0).then(|| s.finish()))
}
