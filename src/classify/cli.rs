//! `sift train spam`, `sift eval spam`, `sift classify`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};

use super::data::{self, Corpus};
use super::eval;
use super::features::{self, FeatureConfig, Featurizer};
use super::model::Model;
use super::train::{self, Dataset, FitOptions, LearnOptions, TrainConfig};
use super::{Classifier, text};
use crate::config::model::DEFAULT_MAX_DECOMPRESSED;

pub const DEFAULT_MODEL: &str = "filters/spam/model.bin";
const DEFAULT_SMS: &str = "../shared/data/spam/sms/SMSSpamCollection";

#[derive(Debug, Subcommand)]
pub enum TrainWhat {
    /// Train the spam model (or, with --from and --data, adapt one).
    Spam(TrainSpam),
    /// Train the CI-log failure classifier from labelled logs.
    Cilog(crate::cilog::cli::TrainCilog),
}

#[derive(Debug, Subcommand)]
pub enum EvalWhat {
    /// Evaluate the spam model's training recipe on public corpora.
    Spam(EvalSpam),
    /// Grouped (by repository) cross-validation of the CI-log recipe.
    Cilog(crate::cilog::cli::EvalCilog),
}

/// Which data trains the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrainSet {
    /// All of SpamAssassin and all of SMS (the shipped model).
    All,
    /// All of SpamAssassin.
    Sa,
    /// The time split's training part (easy-ham-1, hard-ham-1, spam-1).
    TimeSplit,
    /// All of SMS.
    Sms,
}

/// Data and recipe knobs shared by train and eval.
#[derive(Debug, Args)]
pub struct Recipe {
    /// Cache dir of filters/spam/fetch-data.sh (SpamAssassin under <dir>/spam-assassin).
    #[arg(long, default_value = "target/data")]
    pub data_dir: PathBuf,
    /// SMS Spam Collection file.
    #[arg(long, default_value = DEFAULT_SMS)]
    pub sms: PathBuf,
    /// Target ham false-positive rate for the threshold (set on training data).
    #[arg(long, default_value_t = 0.01)]
    pub target_fpr: f32,
    /// log2 of the number of weight buckets.
    #[arg(long, default_value_t = 18)]
    pub bits: u8,
    #[arg(long, default_value_t = 16)]
    pub epochs: u32,
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Feature blocks: comma-separated of word,bigram,char (3-5-grams) or
    /// char3/char4/char5 (only those sizes),signal,fold,charset (with signal:
    /// the declared charsets' families),unicode (undo invisible characters,
    /// fullwidth/mathematical letters and Latin look-alikes first).
    #[arg(long, default_value = "word,bigram,char4,signal,fold,charset,unicode")]
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
    /// Folds for the out-of-fold calibration of the threshold.
    #[arg(long, default_value_t = 5)]
    pub calib_folds: usize,
    /// Training loss.
    #[arg(long, value_enum, default_value_t = train::Loss::Hinge)]
    pub loss: train::Loss,
    /// Disable averaging of SGD iterates.
    #[arg(long)]
    pub no_average: bool,
    /// Threshold choice on the out-of-fold training margins.
    #[arg(long, value_enum, default_value_t = train::Calib::F1)]
    pub calib: train::Calib,
    /// Average this many SGD runs (different seeds) into one model.
    #[arg(long, default_value_t = 8)]
    pub ensemble: u32,
    /// Alternate the loss with modified Huber across the ensemble.
    #[arg(long)]
    pub mix: bool,
    /// Multiply the spam class weight (after class balancing).
    #[arg(long, default_value_t = 0.5)]
    pub spam_weight: f32,
    /// Evaluation (c) only: train the SMS model on the SMS training part
    /// plus all of SpamAssassin (the test is still the SMS 20 %; the
    /// threshold is calibrated on the SMS rows' out-of-fold margins).
    #[arg(long)]
    pub sms_with_sa: bool,
    /// NB-SVM: scale features by the training log-count ratio (this is its
    /// smoothing α; 0 = off) and fold the ratio into the weights.
    #[arg(long, default_value_t = 0.0)]
    pub nb: f32,
    /// Add Naive Bayes weights to the SVM's: γ · r, γ chosen by
    /// out-of-fold ROC AUC from 0, 0.01, 0.03, 0.1, 0.3 (model card, round
    /// P2; off by default).
    #[arg(long)]
    pub nb_mix: bool,
}

impl Recipe {
    fn feature_config(&self) -> Result<FeatureConfig, String> {
        let flags = features::parse_flags(&self.features)?;
        if !(10..=24).contains(&self.bits) {
            return Err("--bits must be in 10..=24".into());
        }
        Ok(FeatureConfig {
            bits: self.bits,
            max_bytes: self.max_bytes.max(1),
            flags,
            word_scale: self.word_scale,
            char_scale: self.char_scale,
            ..FeatureConfig::default()
        })
    }

    fn fit_options(&self) -> FitOptions {
        FitOptions {
            train: TrainConfig {
                epochs: self.epochs,
                lr: self.lr,
                seed: self.seed,
                balance: true,
                average: !self.no_average,
                anchor: 0.0,
                loss: self.loss,
                ensemble: self.ensemble,
                mix: self.mix,
                spam_weight: self.spam_weight,
                nb: self.nb,
            },
            calib_folds: self.calib_folds,
            target_fpr: self.target_fpr,
            calib: self.calib,
            nb_mix: self.nb_mix,
        }
    }
}

#[derive(Debug, Args)]
pub struct TrainSpam {
    #[command(flatten)]
    pub recipe: Recipe,
    /// Training data for a new model.
    #[arg(long, value_enum, default_value_t = TrainSet::All)]
    pub set: TrainSet,
    /// Continue from this model file, or `builtin` (needs --data or
    /// --label-dir): the model keeps its featurizer and learns the
    /// examples; its threshold is re-set from the batch as --learn-calib
    /// says (default f1, with at least 10 spam and 10 ham), else kept.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// JSONL of {"text": ..., "label": "spam"|"ham"} lines. With --from,
    /// learned into that model; without, a new model is trained on it.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A directory per label: <DIR>/spam/* and <DIR>/ham/* (one message or
    /// text per file, subdirectories included). With --from, learned into
    /// that model; without, a new model is trained on it (and --data).
    #[arg(long, value_name = "DIR")]
    pub label_dir: Option<PathBuf>,
    /// Incremental learning: passes over the batch.
    #[arg(long, default_value_t = 5)]
    pub learn_epochs: u32,
    /// Incremental learning: AdaGrad base rate.
    #[arg(long, default_value_t = 0.1)]
    pub learn_lr: f32,
    /// Incremental learning: pull toward the starting weights.
    #[arg(long, default_value_t = 0.01)]
    pub anchor: f32,
    /// Incremental learning: how the threshold is set afterwards.
    #[arg(long, value_enum, default_value_t = LearnOptions::default().calib)]
    pub learn_calib: train::LearnCalib,
    /// Incremental learning: multiply the spam class weight.
    #[arg(long, default_value_t = LearnOptions::default().spam_weight)]
    pub learn_spam_weight: f32,
    /// Output model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Setting {
    /// SpamAssassin time split.
    Time,
    /// Stratified 5-fold on SpamAssassin.
    Kfold,
    /// SMS 80/20, duplicates of training dropped.
    Sms,
    /// SpamAssassin-trained model on SMS, zero-shot and after 200 examples.
    Adapt,
    /// Zero-shot across corpora, both ways: trained on all of one corpus,
    /// scored on all of the other (a stand-in for corpora never seen).
    Transfer,
}

#[derive(Debug, Args)]
pub struct EvalSpam {
    #[command(flatten)]
    pub recipe: Recipe,
    /// Which evaluations (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Setting>,
    /// Also time the serving path of --model (load, µs per KB).
    #[arg(long)]
    pub bench: bool,
    /// Only the speed measurement.
    #[arg(long)]
    pub bench_only: bool,
    /// Model for --bench.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Examples learned in the adaptation evaluation.
    #[arg(long, default_value_t = 200)]
    pub n_learn: usize,
    /// Evaluation (c) is also repeated over this many random 80/20 splits
    /// (split and training seeds `--seed`, `--seed + 1`, ...), reported
    /// pooled: one split of 125 test spam moves F1 by ±0.015 (0 or 1 =
    /// the one split only).
    #[arg(long, default_value_t = 10)]
    pub sms_splits: u32,
    /// Adaptation: threshold setting(s) after learning (with --validate, a
    /// list is evaluated against one base model; the test uses the first).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub learn_calib: Vec<train::LearnCalib>,
    /// Adaptation: spam class weight(s) of learning (crossed with
    /// --learn-calib under --validate; the test uses the first).
    #[arg(long, value_delimiter = ',')]
    pub learn_spam_weight: Vec<f32>,
    /// Selection protocol: report validation figures carved out of each
    /// evaluation's training part instead of test figures; no test data is
    /// read or scored. (a): forward slices of *-1 by file order; (c) and
    /// (d): inner splits of the SMS 80 %; (b) is not run.
    #[arg(long)]
    pub validate: bool,
    /// With --validate: also score (a-val) and (c-val) under these
    /// threshold rules, `RULE:TARGET_FPR` (e.g. `fpr:0.003,platt:0.01`),
    /// read from the same models' out-of-fold margins.
    #[arg(long, value_delimiter = ',')]
    pub calib_alt: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Filter to apply: "spam" or "cilog".
    #[arg(long, default_value = "spam")]
    pub filter: String,
    /// Model: `builtin` (the default: the model compiled into sift, as the
    /// server's `model: builtin`) or a model file (a `.onnx` file selects
    /// the ONNX Runtime backend).
    #[arg(long, default_value = "builtin")]
    pub model: PathBuf,
    /// libonnxruntime.so for a `.onnx` model (default: $ORT_DYLIB_PATH).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Add the top contributing features (spam only).
    #[arg(long)]
    pub explain: bool,
    /// How many features --explain lists.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Inputs (RFC 822 messages or plain text; CI logs for cilog), plain or
    /// gzip; `-` is stdin, as is no input at all.
    pub files: Vec<PathBuf>,
}

/// `--model builtin`: the model compiled into the binary.
pub fn is_builtin(model: &Path) -> bool {
    model == Path::new("builtin")
}

/// The inputs `sift classify` reads: the files given (`-` is stdin), or
/// stdin when none is.
pub fn input_names(files: &[PathBuf]) -> Vec<PathBuf> {
    if files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        files.to_vec()
    }
}

/// Open one input: stdin for `-`, else the file.
pub fn open_input(name: &Path) -> std::io::Result<Box<dyn Read>> {
    if name == Path::new("-") {
        Ok(Box::new(std::io::stdin().lock()))
    } else {
        Ok(Box::new(std::fs::File::open(name)?))
    }
}

/// Read a whole input; gzip (magic bytes 1f 8b) is decoded, and may expand
/// to at most `cap` bytes (an error past it, as the server's
/// `max_decompressed_bytes`).
pub fn read_input(mut r: impl Read, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    r.read_to_end(&mut raw)?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(std::io::Error::other(format!(
            "gzip input expands past {} (the spam filter's max_decompressed_bytes)",
            crate::config::units::Bytes(cap)
        )));
    }
    Ok(out)
}

/// Write `text` to stdout. A closed stdout (`sift classify ... | head -1`)
/// is an error the caller turns into a quiet stop with [`stdout_failed`],
/// not a panic as `println!` would make it.
pub fn out(text: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    write!(o, "{text}")?;
    o.flush()
}

/// [`out`] with a newline.
pub fn out_line(line: impl std::fmt::Display) -> std::io::Result<()> {
    out(format_args!("{line}\n"))
}

/// What [`say!`](crate::say) prints with: a line, or the end of the process
/// when stdout is gone.
pub fn say_line(line: std::fmt::Arguments<'_>) {
    if let Err(e) = out_line(line) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("sift: stdout: {e}");
        std::process::exit(1);
    }
}

/// The exit status after a failed stdout write: success when the reader
/// went away (broken pipe: it has read what it wanted, as with `head`),
/// else the error on stderr and failure.
pub fn stdout_failed(e: std::io::Error) -> ExitCode {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        ExitCode::SUCCESS
    } else {
        fail(format!("stdout: {e}"))
    }
}

/// The line `sift classify` prints for an input it does not classify, with
/// the server's skip reason (e.g. `empty`).
pub fn skipped_line(name: &str, filter: &str, reason: &str) -> serde_json::Value {
    serde_json::json!({ "file": name, "filter": filter, "skipped": reason })
}

/// A text the spam filter skips as `empty` (nothing but white space, no link).
pub fn is_empty_view(view: &text::TextView) -> bool {
    view.text.trim().is_empty() && view.links.is_empty()
}

/// A usage error (exit code 2, as clap's).
pub fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sift: {msg}");
    ExitCode::from(2)
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sift: {msg}");
    ExitCode::FAILURE
}

struct Loaded {
    corpus: Corpus,
    ds: Dataset,
}

fn load(which: &str, recipe: &Recipe, fz: &Featurizer) -> Result<Loaded, data::DataError> {
    let t = Instant::now();
    let corpus = if which == "sa" {
        data::load_spamassassin(&data::sa_dir(&recipe.data_dir))?
    } else {
        data::load_sms(&recipe.sms)?
    };
    let t_parse = t.elapsed();
    let ds = Dataset::build(fz, &corpus.views, &corpus.labels);
    eprintln!(
        "loaded {which}: {} messages ({} spam), parse {:.1}s, featurize {:.1}s",
        corpus.len(),
        corpus.labels.iter().filter(|&&l| l).count(),
        t_parse.as_secs_f64(),
        (t.elapsed() - t_parse).as_secs_f64()
    );
    Ok(Loaded { corpus, ds })
}

/// The labelled examples of --data and --label-dir, and a description.
fn user_examples(args: &TrainSpam) -> Result<(Vec<(text::TextView, bool)>, String), String> {
    let mut batch = Vec::new();
    let mut what = Vec::new();
    if let Some(p) = &args.data {
        let b = data::load_jsonl(p).map_err(|e| e.to_string())?;
        what.push(format!("{} ({} examples)", p.display(), b.len()));
        batch.extend(b);
    }
    if let Some(d) = &args.label_dir {
        let b = data::load_label_dir(d).map_err(|e| e.to_string())?;
        what.push(format!(
            "{}/{{spam,ham}} ({} examples)",
            d.display(),
            b.len()
        ));
        batch.extend(b);
    }
    Ok((batch, what.join(" + ")))
}

pub fn run_train(what: TrainWhat) -> ExitCode {
    let args = match what {
        TrainWhat::Spam(args) => args,
        TrainWhat::Cilog(args) => return crate::cilog::cli::run_train(args),
    };
    let user = args.data.is_some() || args.label_dir.is_some();
    if let Some(from) = &args.from {
        if !user {
            return fail("--from needs --data FILE.jsonl or --label-dir DIR");
        }
        return adapt(&args, from);
    }
    let fcfg = match args.recipe.feature_config() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let fz = Featurizer::new(fcfg);
    let opts = args.recipe.fit_options();
    let t = Instant::now();
    let mut ds = Dataset::new();
    let mut parts = Vec::new();
    let mut c = features::Collect::default();
    if user {
        // A new model on the operator's own examples only.
        let (batch, what) = match user_examples(&args) {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
        if batch.iter().all(|(_, l)| *l) || batch.iter().all(|(_, l)| !*l) {
            return fail(format_args!(
                "{what}: need both spam and ham examples to train a model"
            ));
        }
        for (v, l) in &batch {
            ds.push(&fz, v, *l, &mut c);
        }
        parts.push(what);
    }
    let want_sa = !user && matches!(args.set, TrainSet::All | TrainSet::Sa | TrainSet::TimeSplit);
    let want_sms = !user && matches!(args.set, TrainSet::All | TrainSet::Sms);
    if want_sa {
        let sa = match data::load_spamassassin(&data::sa_dir(&args.recipe.data_dir)) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let mut n = 0;
        for i in 0..sa.len() {
            if args.set == TrainSet::TimeSplit && sa.groups[i] > 2 {
                continue;
            }
            ds.push(&fz, &sa.views[i], sa.labels[i], &mut c);
            n += 1;
        }
        parts.push(if args.set == TrainSet::TimeSplit {
            format!("SpamAssassin 0.2.3 time-split training part ({n} messages)")
        } else {
            format!("SpamAssassin 0.2.3 all groups ({n} messages)")
        });
    }
    if want_sms {
        let sms = match data::load_sms(&args.recipe.sms) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        for i in 0..sms.len() {
            ds.push(&fz, &sms.views[i], sms.labels[i], &mut c);
        }
        parts.push(format!("SMS Spam Collection v1 ({} messages)", sms.len()));
    }
    let rows: Vec<usize> = (0..ds.len()).collect();
    let note = format!(
        "{}; seed {}, epochs {}, lr {}, loss {:?}, ensemble {}{}, threshold {:?} at OOF ham FPR <= {}",
        parts.join(" + "),
        args.recipe.seed,
        args.recipe.epochs,
        args.recipe.lr,
        args.recipe.loss,
        args.recipe.ensemble,
        if args.recipe.spam_weight == 1.0 {
            String::new()
        } else {
            format!(", spam weight {}", args.recipe.spam_weight)
        },
        args.recipe.calib,
        args.recipe.target_fpr
    );
    let model = train::train_model(&ds, &rows, fcfg, &opts, &note);
    if let Err(e) = model.save(&args.out) {
        return fail(e);
    }
    crate::say!(
        "wrote {} ({} bytes of weights, {} ham + {} spam, threshold margin {:.4} = p {:.4}) in {:.1}s",
        args.out.display(),
        model.weight_bytes(),
        model.meta.n_ham,
        model.meta.n_spam,
        model.threshold,
        super::model::sigmoid(model.threshold),
        t.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// The spam model `builtin` (compiled in) or a model file names.
fn load_spam_model(model: &Path) -> Result<Classifier, String> {
    if is_builtin(model) {
        Model::from_bytes(crate::filter::spam::BUILTIN_MODEL)
            .map(Classifier::new)
            .map_err(|e| format!("builtin: {e}"))
    } else {
        Classifier::load(model).map_err(|e| format!("{}: {e}", model.display()))
    }
}

fn adapt(args: &TrainSpam, from: &Path) -> ExitCode {
    let base = match load_spam_model(from) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let batch = match user_examples(args) {
        Ok((b, _)) => b,
        Err(e) => return fail(e),
    };
    let opts = LearnOptions {
        epochs: args.learn_epochs,
        lr: args.learn_lr,
        anchor: args.anchor,
        seed: args.recipe.seed,
        spam_weight: args.learn_spam_weight,
        calib: args.learn_calib,
        ..LearnOptions::default()
    };
    let next = base.learn(&batch, &opts);
    if let Err(e) = next.model().save(&args.out) {
        return fail(e);
    }
    let spam = batch.iter().filter(|(_, l)| *l).count();
    let (t0, t1) = (base.model().threshold, next.model().threshold);
    crate::say!(
        "wrote {} (learned {} examples: {} spam, {} ham, from {}; threshold margin {:.4} {})",
        args.out.display(),
        batch.len(),
        spam,
        batch.len() - spam,
        from.display(),
        t1,
        if t0 == t1 {
            "kept".to_owned()
        } else {
            format!("re-set from {t0:.4}")
        }
    );
    ExitCode::SUCCESS
}

/// The learning settings of the adaptation evaluation: every
/// --learn-calib × --learn-spam-weight pair (defaults where not given).
fn learn_variants(args: &EvalSpam) -> Vec<LearnOptions> {
    let d = LearnOptions::default();
    let calibs = if args.learn_calib.is_empty() {
        vec![d.calib]
    } else {
        args.learn_calib.clone()
    };
    let weights = if args.learn_spam_weight.is_empty() {
        vec![d.spam_weight]
    } else {
        args.learn_spam_weight.clone()
    };
    let mut v = Vec::new();
    for &calib in &calibs {
        for &spam_weight in &weights {
            v.push(LearnOptions {
                calib,
                spam_weight,
                ..d
            });
        }
    }
    v
}

pub fn run_eval(what: EvalWhat) -> ExitCode {
    let args = match what {
        EvalWhat::Spam(args) => args,
        EvalWhat::Cilog(args) => return crate::cilog::cli::run_eval(args),
    };
    let fcfg = match args.recipe.feature_config() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let fz = Featurizer::new(fcfg);
    let opts = args.recipe.fit_options();
    let mut rules: Vec<eval::CalibRule> = Vec::new();
    for r in &args.calib_alt {
        let (name, target) = r.split_once(':').unwrap_or((r.as_str(), "0.01"));
        let Ok(c) = train::Calib::from_str(name, true) else {
            return fail(format_args!("--calib-alt: unknown rule {name:?}"));
        };
        let Ok(t) = target.parse::<f32>() else {
            return fail(format_args!("--calib-alt: bad target FPR {target:?}"));
        };
        rules.push((c, t));
    }
    if !rules.is_empty() && !args.validate {
        return fail("--calib-alt needs --validate");
    }
    let all = [
        Setting::Time,
        Setting::Kfold,
        Setting::Sms,
        Setting::Adapt,
        Setting::Transfer,
    ];
    let settings: Vec<Setting> = if args.bench_only {
        Vec::new()
    } else if args.only.is_empty() {
        all.to_vec()
    } else {
        args.only.clone()
    };
    let settings: Vec<Setting> = if args.validate {
        settings
            .into_iter()
            .filter(|s| *s != Setting::Kfold)
            .collect()
    } else {
        settings
    };
    let sms_with_sa = args.recipe.sms_with_sa;
    let need_sa = settings.iter().any(|s| *s != Setting::Sms || sms_with_sa);
    let need_sms = settings
        .iter()
        .any(|s| matches!(s, Setting::Sms | Setting::Adapt | Setting::Transfer));
    let sa = if need_sa {
        match load("sa", &args.recipe, &fz) {
            Ok(l) => Some(l),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    let sms = if need_sms {
        match load("sms", &args.recipe, &fz) {
            Ok(l) => Some(l),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    crate::say!(
        "recipe: features {} bits {} max_bytes {} word scale {} char scale {} loss {:?} epochs {} lr {} seed {} ensemble {} spam weight {} sms+sa {} (threshold {:?} at OOF ham FPR <= {}, from {}-fold out-of-fold margins on training data){}",
        args.recipe.features,
        fcfg.bits,
        fcfg.max_bytes,
        fcfg.word_scale,
        fcfg.char_scale,
        opts.train.loss,
        opts.train.epochs,
        opts.train.lr,
        opts.train.seed,
        opts.train.ensemble,
        opts.train.spam_weight,
        sms_with_sa,
        opts.calib,
        opts.target_fpr,
        opts.calib_folds,
        if args.validate {
            "; VALIDATION figures (no test data read)"
        } else {
            ""
        }
    );
    // (c)'s training data: SMS rows first, then (with --sms-with-sa) all of
    // SpamAssassin as extra training rows.
    let sms_train: Option<(Dataset, Vec<usize>)> = match (&sms, &sa) {
        (Some(sms), Some(sa)) if sms_with_sa => {
            let mut ds = sms.ds.clone();
            ds.append(&sa.ds);
            let extra = (sms.ds.len()..ds.len()).collect();
            Some((ds, extra))
        }
        _ => None,
    };
    for s in &settings {
        let t = Instant::now();
        match (s, &sa, &sms) {
            (Setting::Time, Some(sa), _) if args.validate => {
                let ms = eval::time_split_valid_rules(&sa.corpus, &sa.ds, fcfg, &opts, &rules);
                crate::say!(
                    "(a-val) time split validation (easy-ham-1, spam-1 by file order: train first 60 %/80 % + hard-ham-1, validate next 20 %, pooled): {}  [{:.1}s]",
                    ms[0],
                    t.elapsed().as_secs_f64()
                );
                for (r, m) in rules.iter().zip(&ms[1..]) {
                    crate::say!("(a-val)   calib {:?}:{}: {m}", r.0, r.1);
                }
            }
            (Setting::Sms, _, Some(sms)) if args.validate => {
                let (ds, extra) = match &sms_train {
                    Some((ds, extra)) => (ds, extra.as_slice()),
                    None => (&sms.ds, &[][..]),
                };
                let ms = eval::sms_valid_rules(&sms.corpus, ds, fcfg, &opts, extra, &rules);
                crate::say!(
                    "(c-val) SMS validation (inner stratified 5-fold of the SMS 80 %, pooled): {}  [{:.1}s]",
                    ms[0],
                    t.elapsed().as_secs_f64()
                );
                for (r, m) in rules.iter().zip(&ms[1..]) {
                    crate::say!("(c-val)   calib {:?}:{}: {m}", r.0, r.1);
                }
            }
            (Setting::Adapt, Some(sa), Some(sms)) if args.validate => {
                let variants = learn_variants(&args);
                let ms = eval::adaptation_valid(
                    &sa.corpus,
                    &sa.ds,
                    &sms.corpus,
                    &sms.ds,
                    fcfg,
                    &opts,
                    &variants,
                    args.n_learn,
                    5,
                );
                for (lo, m) in variants.iter().zip(ms) {
                    crate::say!(
                        "(d-val) SpamAssassin model after learning {} texts of the SMS 80 % (learn calib {:?}, spam weight {}), scored on the rest of it (5 draws, pooled): {m}  [{:.1}s]",
                        args.n_learn,
                        lo.calib,
                        lo.spam_weight,
                        t.elapsed().as_secs_f64()
                    );
                }
            }
            (Setting::Time, Some(sa), _) => {
                let (model, m) = eval::time_split(&sa.corpus, &sa.ds, fcfg, &opts);
                crate::say!(
                    "(a) SpamAssassin time split (train *-1, test easy-ham-2 + spam-2), body view: {m}  [threshold p {:.4}, {:.1}s]",
                    super::model::sigmoid(model.threshold),
                    t.elapsed().as_secs_f64()
                );
            }
            (Setting::Kfold, Some(sa), _) => {
                let m = eval::kfold(&sa.corpus, &sa.ds, fcfg, &opts, 5);
                crate::say!(
                    "(b) SpamAssassin stratified 5-fold (mean of folds; counts summed): {m}  [{:.1}s]",
                    t.elapsed().as_secs_f64()
                );
            }
            (Setting::Sms, _, Some(sms)) => {
                let (ds, extra) = match &sms_train {
                    Some((ds, extra)) => (ds, extra.as_slice()),
                    None => (&sms.ds, &[][..]),
                };
                let (m, _) = eval::sms(&sms.corpus, ds, fcfg, &opts, extra);
                crate::say!(
                    "(c) SMS 80/20 stratified, test texts seen in training dropped: {m}  [{:.1}s]",
                    t.elapsed().as_secs_f64()
                );
                if args.sms_splits > 1 {
                    let mut runs = vec![m];
                    for k in 1..args.sms_splits {
                        let mut o = opts;
                        o.train.seed = opts.train.seed.wrapping_add(u64::from(k));
                        runs.push(eval::sms(&sms.corpus, ds, fcfg, &o, extra).0);
                    }
                    let r = eval::Repeated::of(&runs);
                    crate::say!(
                        "(c) repeated over {} random 80/20 splits (seeds {}..={}): {r}  [{:.1}s]",
                        runs.len(),
                        opts.train.seed,
                        opts.train.seed.wrapping_add(u64::from(args.sms_splits - 1)),
                        t.elapsed().as_secs_f64()
                    );
                }
            }
            (Setting::Adapt, Some(sa), Some(sms)) => {
                let lo = learn_variants(&args)[0];
                let a = eval::adaptation(
                    &sa.corpus,
                    &sa.ds,
                    &sms.corpus,
                    &sms.ds,
                    fcfg,
                    &opts,
                    &lo,
                    args.n_learn,
                );
                crate::say!(
                    "(d) SpamAssassin-only model on SMS (test {} texts not among the learned ones):\n    zero-shot:              {}\n    after learning {:>4}:    {}  [{:.1}s]",
                    a.n_test,
                    a.zero_shot,
                    a.n_learn,
                    a.learned,
                    t.elapsed().as_secs_f64()
                );
            }
            (Setting::Transfer, Some(sa), Some(sms)) => {
                let (to_sms, to_sa) = eval::transfer(
                    &sa.corpus,
                    &sa.ds,
                    &sms.corpus,
                    &sms.ds,
                    fcfg,
                    &opts,
                    args.validate,
                );
                crate::say!(
                    "(t{}) zero-shot across corpora{}:",
                    if args.validate { "-val" } else { "" },
                    if args.validate {
                        " (training parts only: SpamAssassin *-1, the SMS 80 %)"
                    } else {
                        ""
                    }
                );
                crate::say!(
                    "    SpamAssassin -> SMS:    {to_sms}\n    SMS -> SpamAssassin:    {to_sa}\n    mean F1 {:.4}, mean AUC {:.4}  [{:.1}s]",
                    (to_sms.f1 + to_sa.f1) / 2.0,
                    (to_sms.auc + to_sa.auc) / 2.0,
                    t.elapsed().as_secs_f64()
                );
            }
            _ => {}
        }
    }
    if args.bench || args.bench_only {
        let mut raws: Vec<Vec<u8>> = Vec::new();
        let dir = data::sa_dir(&args.recipe.data_dir);
        for g in ["easy-ham-2", "spam-2"] {
            let Ok(rd) = std::fs::read_dir(dir.join(g)) else {
                return fail(format_args!(
                    "{}: {}",
                    dir.join(g).display(),
                    data::FETCH_HINT
                ));
            };
            let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files {
                if let Ok(b) = std::fs::read(&f) {
                    raws.push(b);
                }
            }
        }
        match eval::bench(&args.model, &raws, 2.0) {
            Ok(b) => crate::say!(
                "bench {}: load {:.1} ms, weights {} bytes; featurize+score {:.2} µs/KB of text view on CPU ({:.2} wall); raw message → verdict (MIME + featurize + score) {:.2} µs/KB of raw message on CPU ({:.2} wall); {} messages (easy-ham-2 + spam-2), one thread",
                args.model.display(),
                b.load_ms,
                b.model_bytes,
                b.view_cpu_us_per_kb,
                b.view_us_per_kb,
                b.raw_cpu_us_per_kb,
                b.raw_us_per_kb,
                b.messages
            ),
            Err(e) => return fail(format_args!("{}: {e}", args.model.display())),
        }
    }
    ExitCode::SUCCESS
}

pub fn run_classify(args: ClassifyArgs) -> ExitCode {
    if args.filter == "cilog" {
        if args.explain {
            return usage(
                "--explain is only for --filter spam (a cilog line carries its evidence: \
                 line, text and context)",
            );
        }
        return crate::cilog::cli::run_classify(&args.model, &args.files);
    }
    if args.filter != "spam" {
        return usage(format_args!(
            "unknown filter {:?} (known: spam, cilog)",
            args.filter
        ));
    }
    if args.model.extension().is_some_and(|e| e == "onnx") {
        return super::onnx_cli::run_classify_onnx(&args, &args.model);
    }
    let clf = match load_spam_model(&args.model) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut code = ExitCode::SUCCESS;
    for input in input_names(&args.files) {
        let name = input.display().to_string();
        let raw = match open_input(&input).and_then(|r| read_input(r, DEFAULT_MAX_DECOMPRESSED)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sift: {name}: {e}");
                code = ExitCode::FAILURE;
                continue;
            }
        };
        let view = text::view(&raw);
        if is_empty_view(&view) {
            if let Err(e) = out_line(skipped_line(&name, "spam", "empty")) {
                return stdout_failed(e);
            }
            continue;
        }
        let s = clf.score(&view);
        let mut line = serde_json::json!({
            "file": name,
            "filter": "spam",
            "score": (f64::from(s.probability) * 1e6).round() / 1e6,
            "verdict": if s.spam { "spam" } else { "ham" },
            "threshold": (f64::from(clf.threshold_probability()) * 1e6).round() / 1e6,
            "margin": (f64::from(s.margin) * 1e4).round() / 1e4,
        });
        if args.explain {
            line["explain"] = serde_json::json!(clf.explain(&view, args.top));
        }
        if let Err(e) = out_line(line) {
            return stdout_failed(e);
        }
    }
    code
}

/// For tests: load a model or say why not.
pub fn load_model(path: &Path) -> Result<Model, String> {
    Model::load(path).map_err(|e| format!("{}: {e}", path.display()))
}
