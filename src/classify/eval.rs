//! Metrics and the evaluation protocols of `sift eval spam`.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use super::data::Corpus;
use super::features::{FeatureConfig, Featurizer};
use super::model::Model;
use super::train::{self, Dataset, FitOptions, LearnOptions};

/// Binary classification figures at one threshold (spam = positive).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    pub n: usize,
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub accuracy: f64,
    pub auc: f64,
    pub ham_fpr: f64,
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "P {:.4}  R {:.4}  F1 {:.4}  acc {:.4}  AUC {:.4}  ham FPR {:.2}%  (n {}, tp {} fp {} tn {} fn {})",
            self.precision,
            self.recall,
            self.f1,
            self.accuracy,
            self.auc,
            self.ham_fpr * 100.0,
            self.n,
            self.tp,
            self.fp,
            self.tn,
            self.fn_
        )
    }
}

/// One evaluation repeated over several random splits: counts pooled
/// ([`pool`]: AUC the mean of the splits'), and the spread of the per-split
/// F1.
pub struct Repeated {
    pub pooled: Metrics,
    pub f1_mean: f64,
    pub f1_min: f64,
    pub f1_max: f64,
}

impl Repeated {
    pub fn of(runs: &[Metrics]) -> Repeated {
        let f1s = runs.iter().map(|m| m.f1);
        Repeated {
            pooled: pool(runs),
            f1_mean: f1s.clone().sum::<f64>() / runs.len().max(1) as f64,
            f1_min: f1s.clone().fold(f64::INFINITY, f64::min),
            f1_max: f1s.fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

impl std::fmt::Display for Repeated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pooled {} (AUC: mean of splits); per-split F1 mean {:.4}, min {:.4}, max {:.4}",
            self.pooled, self.f1_mean, self.f1_min, self.f1_max
        )
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Metrics for margins against labels at `threshold` (spam when ≥).
pub fn metrics(margins: &[f32], labels: &[bool], threshold: f32) -> Metrics {
    let mut m = Metrics {
        n: margins.len(),
        ..Metrics::default()
    };
    for (&s, &y) in margins.iter().zip(labels) {
        match (s >= threshold, y) {
            (true, true) => m.tp += 1,
            (true, false) => m.fp += 1,
            (false, false) => m.tn += 1,
            (false, true) => m.fn_ += 1,
        }
    }
    m.precision = ratio(m.tp, m.tp + m.fp);
    m.recall = ratio(m.tp, m.tp + m.fn_);
    m.f1 = if m.precision + m.recall > 0.0 {
        2.0 * m.precision * m.recall / (m.precision + m.recall)
    } else {
        0.0
    };
    m.accuracy = ratio(m.tp + m.tn, m.n);
    m.ham_fpr = ratio(m.fp, m.fp + m.tn);
    m.auc = roc_auc(margins, labels);
    m
}

/// ROC AUC by the rank-sum statistic (ties get average ranks).
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut pos, mut neg) = (0f64, 0f64);
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0; // 1-based ranks i+1..=j
        for &k in &order[i..j] {
            if labels[k] {
                rank_sum += avg_rank;
                pos += 1.0;
            } else {
                neg += 1.0;
            }
        }
        i = j;
    }
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Diagnostic only (uses test labels, never for reported figures): the best
/// F1 over thresholds whose test ham FPR is at most `max_fpr`.
pub fn oracle_f1(margins: &[f32], labels: &[bool], max_fpr: f64) -> (f64, f32) {
    let mut ts: Vec<f32> = margins.to_vec();
    ts.sort_unstable_by(|a, b| a.total_cmp(b));
    ts.dedup();
    let mut best = (0.0, 0.0);
    for t in ts {
        let m = metrics_fast(margins, labels, t);
        if m.ham_fpr <= max_fpr && m.f1 > best.0 {
            best = (m.f1, t);
        }
    }
    best
}

fn metrics_fast(margins: &[f32], labels: &[bool], threshold: f32) -> Metrics {
    let mut m = Metrics::default();
    for (&s, &y) in margins.iter().zip(labels) {
        match (s >= threshold, y) {
            (true, true) => m.tp += 1,
            (true, false) => m.fp += 1,
            (false, false) => m.tn += 1,
            (false, true) => m.fn_ += 1,
        }
    }
    let p = ratio(m.tp, m.tp + m.fp);
    let r = ratio(m.tp, m.tp + m.fn_);
    m.f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    m.ham_fpr = ratio(m.fp, m.fp + m.tn);
    m
}

/// Margins of `rows` under `model` (quantised weights, as served).
pub fn margins(model: &Model, ds: &Dataset, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .map(|&r| {
            let (i, v) = ds.row(r);
            model.margin_sparse(i, v)
        })
        .collect()
}

pub fn labels_of(ds: &Dataset, rows: &[usize]) -> Vec<bool> {
    rows.iter().map(|&r| ds.labels[r]).collect()
}

/// (a) SpamAssassin time split: train on groups 0..=2 (easy-ham-1,
/// hard-ham-1, spam-1), test on 3..=4 (easy-ham-2, spam-2).
pub fn time_split(
    sa: &Corpus,
    ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
) -> (Model, Metrics) {
    let train_rows: Vec<usize> = (0..sa.len()).filter(|&i| sa.groups[i] <= 2).collect();
    let test_rows: Vec<usize> = (0..sa.len()).filter(|&i| sa.groups[i] >= 3).collect();
    let model = train::train_model(ds, &train_rows, fcfg, opts, "SpamAssassin time split: *-1");
    let m = margins(&model, ds, &test_rows);
    let labels = labels_of(ds, &test_rows);
    if std::env::var_os("SIFT_EVAL_DIAG").is_some() {
        let (f1, t) = oracle_f1(&m, &labels, 0.003);
        eprintln!(
            "    diag: oracle F1 at test FPR<=0.3% {f1:.4} (margin {t:.3}; calibrated {:.3})",
            model.threshold
        );
        if std::env::var_os("SIFT_EVAL_DUMP").is_some() {
            let mut order: Vec<usize> = (0..test_rows.len()).collect();
            order.sort_by(|&a, &b| m[a].total_cmp(&m[b]));
            for &k in order.iter().filter(|&&k| labels[k]).take(25) {
                let r = test_rows[k];
                let t: String = sa.views[r].text.chars().take(300).collect();
                eprintln!(
                    "FN {r} margin {:.2} len {} html {} links {}: {:?}",
                    m[k],
                    sa.views[r].text.len(),
                    sa.views[r].html,
                    sa.views[r].links.len(),
                    t
                );
            }
            for &k in order.iter().rev().filter(|&&k| !labels[k]).take(15) {
                let r = test_rows[k];
                let t: String = sa.views[r].text.chars().take(300).collect();
                eprintln!(
                    "FP {r} margin {:.2} len {}: {:?}",
                    m[k],
                    sa.views[r].text.len(),
                    t
                );
            }
        }
    }
    let met = metrics(&m, &labels, model.threshold);
    (model, met)
}

/// (b) Stratified k-fold over all of SpamAssassin; mean of per-fold metrics.
pub fn kfold(
    sa: &Corpus,
    ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
    k: usize,
) -> Metrics {
    let rows: Vec<usize> = (0..sa.len()).collect();
    let folds = train::stratified_folds(&ds.labels, &rows, k, opts.train.seed ^ 0xf01d);
    let mut acc = Metrics::default();
    for (j, test) in folds.iter().enumerate() {
        let tr: Vec<usize> = train::other_folds(&folds, j);
        let model = train::train_model(ds, &tr, fcfg, opts, "fold");
        let m = metrics(
            &margins(&model, ds, test),
            &labels_of(ds, test),
            model.threshold,
        );
        acc.n += m.n;
        acc.tp += m.tp;
        acc.fp += m.fp;
        acc.tn += m.tn;
        acc.fn_ += m.fn_;
        acc.precision += m.precision / k as f64;
        acc.recall += m.recall / k as f64;
        acc.f1 += m.f1 / k as f64;
        acc.accuracy += m.accuracy / k as f64;
        acc.auc += m.auc / k as f64;
        acc.ham_fpr += m.ham_fpr / k as f64;
    }
    acc
}

/// A stratified random split: (the first `frac` of each class, the rest).
fn stratified(corpus: &Corpus, frac: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for class in [false, true] {
        let mut c: Vec<usize> = (0..corpus.len())
            .filter(|&i| corpus.labels[i] == class)
            .collect();
        rng.shuffle(&mut c);
        let n = (c.len() as f64 * frac).round() as usize;
        first.extend_from_slice(&c[..n]);
        rest.extend_from_slice(&c[n..]);
    }
    first.sort_unstable();
    rest.sort_unstable();
    (first, rest)
}

/// Drop from `side` every row whose text also occurs in `other`.
fn drop_texts_in(corpus: &Corpus, side: &mut Vec<usize>, other: &[usize]) {
    let seen: HashSet<&str> = other
        .iter()
        .map(|&i| corpus.views[i].text.as_str())
        .collect();
    side.retain(|&i| !seen.contains(corpus.views[i].text.as_str()));
}

/// A stratified split of `rows` into (train, test) with `test_frac` in test,
/// and test texts that also occur in train dropped.
pub fn split_dedup(corpus: &Corpus, test_frac: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let (mut test, train) = stratified(corpus, test_frac, seed);
    drop_texts_in(corpus, &mut test, &train);
    (train, test)
}

/// Appends one line `train_rows<TAB>test_rows` (comma-separated row
/// numbers of the corpus, header line not counted) to `path`, so an outside
/// baseline (filters/spam/baselines.py) can be run on the very same split.
fn append_split(path: &Path, train: &[usize], test: &[usize]) {
    use std::io::Write;
    let join = |rows: &[usize]| {
        rows.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let line = format!("{}\t{}\n", join(train), join(test));
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = res {
        eprintln!("SIFT_EVAL_SPLITS: cannot write {}: {e}", path.display());
    }
}

/// (c) SMS: stratified 80/20, test texts occurring in training dropped.
///
/// `ds` holds the SMS texts as its first `corpus.len()` rows; `extra` rows
/// of `ds` (e.g. all of SpamAssassin, appended after them) are added to
/// training only. The threshold is then calibrated on the SMS rows' out-of-
/// fold margins alone.
pub fn sms(
    corpus: &Corpus,
    ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
    extra: &[usize],
) -> (Metrics, usize) {
    let (mut train_rows, test_rows) = split_dedup(corpus, 0.2, opts.train.seed ^ 0x5e5);
    if let Some(p) = std::env::var_os("SIFT_EVAL_SPLITS") {
        append_split(Path::new(&p), &train_rows, &test_rows);
    }
    train_rows.extend_from_slice(extra);
    let n = corpus.len();
    let model = train::train_model_calib(ds, &train_rows, fcfg, opts, "SMS 80%", &|r| r < n);
    let m = margins(&model, ds, &test_rows);
    if std::env::var_os("SIFT_EVAL_DUMP").is_some() {
        for (k, &r) in test_rows.iter().enumerate() {
            if (m[k] >= model.threshold) != ds.labels[r] {
                let kind = if ds.labels[r] { "FN" } else { "FP" };
                eprintln!("{kind} {:.2}: {:?}", m[k], corpus.views[r].text);
            }
        }
    }
    (
        metrics(&m, &labels_of(ds, &test_rows), model.threshold),
        test_rows.len(),
    )
}

/// (d) Adaptation: a model trained on all of SpamAssassin, scored on SMS
/// zero-shot and after learning `n_learn` SMS examples; the test set is the
/// rest of SMS minus texts equal to a learned one.
pub struct Adaptation {
    pub zero_shot: Metrics,
    pub learned: Metrics,
    pub n_learn: usize,
    pub n_test: usize,
}

#[allow(clippy::too_many_arguments)]
pub fn adaptation(
    sa: &Corpus,
    sa_ds: &Dataset,
    sms: &Corpus,
    sms_ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
    learn: &LearnOptions,
    n_learn: usize,
) -> Adaptation {
    let all: Vec<usize> = (0..sa.len()).collect();
    let base = train::train_model(sa_ds, &all, fcfg, opts, "SpamAssassin all");
    let frac = n_learn as f64 / sms.len().max(1) as f64;
    let (test_rows, learn_rows) = split_dedup_rev(sms, frac, opts.train.seed ^ 0xada);
    let labels = labels_of(sms_ds, &test_rows);
    let zero = metrics(&margins(&base, sms_ds, &test_rows), &labels, base.threshold);
    let batch: Vec<_> = learn_rows
        .iter()
        .map(|&i| (sms.views[i].clone(), sms.labels[i]))
        .collect();
    let adapted = train::learn(&base, &batch, learn);
    let after = metrics(
        &margins(&adapted, sms_ds, &test_rows),
        &labels,
        adapted.threshold,
    );
    Adaptation {
        zero_shot: zero,
        learned: after,
        n_learn: learn_rows.len(),
        n_test: test_rows.len(),
    }
}

/// Zero-shot transfer, both ways: a model trained on all of SpamAssassin
/// scored on all of SMS, and one trained on all of SMS scored on all of
/// SpamAssassin; each threshold set on its own training corpus. A stand-in
/// for the corpora a deployment's traffic resembles and no model saw. With
/// `validate`, only the training parts of (a) and (c) are read (SpamAssassin
/// *-1, the SMS 80 %), so it can guide a choice without touching a test set.
pub fn transfer(
    sa: &Corpus,
    sa_ds: &Dataset,
    sms: &Corpus,
    sms_ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
    validate: bool,
) -> (Metrics, Metrics) {
    let sa_rows: Vec<usize> = (0..sa.len())
        .filter(|&i| !validate || sa.groups[i] <= 2)
        .collect();
    let sms_rows: Vec<usize> = if validate {
        split_dedup(sms, 0.2, opts.train.seed ^ 0x5e5).0
    } else {
        (0..sms.len()).collect()
    };
    let one_way = |from: &Dataset, from_rows: &[usize], to: &Dataset, to_rows: &[usize], note| {
        let model = train::train_model(from, from_rows, fcfg, opts, note);
        metrics(
            &margins(&model, to, to_rows),
            &labels_of(to, to_rows),
            model.threshold,
        )
    };
    (
        one_way(sa_ds, &sa_rows, sms_ds, &sms_rows, "SpamAssassin"),
        one_way(sms_ds, &sms_rows, sa_ds, &sa_rows, "SMS"),
    )
}

/// Validation figures: counts pooled over the validation slices (P, R, F1,
/// accuracy and FPR from the pooled counts), ROC AUC the mean of slices.
pub fn pool(parts: &[Metrics]) -> Metrics {
    let mut m = Metrics::default();
    for p in parts {
        m.n += p.n;
        m.tp += p.tp;
        m.fp += p.fp;
        m.tn += p.tn;
        m.fn_ += p.fn_;
        m.auc += p.auc / parts.len().max(1) as f64;
    }
    m.precision = ratio(m.tp, m.tp + m.fp);
    m.recall = ratio(m.tp, m.tp + m.fn_);
    m.f1 = ratio(2 * m.tp, 2 * m.tp + m.fp + m.fn_);
    m.accuracy = ratio(m.tp + m.tn, m.n);
    m.ham_fpr = ratio(m.fp, m.fp + m.tn);
    m
}

/// Validation for (a), from the time split's training part only, shaped
/// like the test (later easy ham and later spam, no hard ham): within
/// easy-ham-1 and spam-1, files in name order (SpamAssassin names are
/// sequence numbers, so roughly arrival order). Two forward slices: train on
/// the first 60 % of each and validate on the next 20 %, then train on the
/// first 80 % and validate on the last 20 %; all of hard-ham-1 is in every
/// training part, as in the test. The test groups (easy-ham-2, spam-2) are
/// never read.
pub fn time_split_valid(
    sa: &Corpus,
    ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
) -> Metrics {
    time_split_valid_rules(sa, ds, fcfg, opts, &[])[0]
}

/// The threshold of each validation model under `rule` (the model's own
/// when `rule` is `None`), read from that model's OOF margins.
fn rule_threshold(model: &Model, oof: &(Vec<f32>, Vec<bool>), rule: Option<CalibRule>) -> f32 {
    match rule {
        None => model.threshold,
        Some((c, t)) => train::threshold_from_oof(&oof.0, &oof.1, c, t),
    }
}

/// A calibration rule and its OOF ham FPR target.
pub type CalibRule = (train::Calib, f32);

/// [`time_split_valid`] under the recipe's own calibration (first entry)
/// and then under each of `rules`, all from the same trained models.
pub fn time_split_valid_rules(
    sa: &Corpus,
    ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
    rules: &[CalibRule],
) -> Vec<Metrics> {
    // Position of each row within its group, as a fraction.
    let mut frac = vec![f64::NAN; sa.len()];
    for g in [0u8, 2] {
        let rows: Vec<usize> = (0..sa.len()).filter(|&i| sa.groups[i] == g).collect();
        for (k, &r) in rows.iter().enumerate() {
            frac[r] = k as f64 / rows.len() as f64;
        }
    }
    // hard-ham-1: always trained on.
    for (i, f) in frac.iter_mut().enumerate() {
        if sa.groups[i] == 1 {
            *f = -1.0;
        }
    }
    let all_rules: Vec<Option<CalibRule>> = std::iter::once(None)
        .chain(rules.iter().copied().map(Some))
        .collect();
    let mut parts = vec![Vec::new(); all_rules.len()];
    for (lo, hi) in [(0.6, 0.8), (0.8, 1.0)] {
        let tr: Vec<usize> = (0..sa.len())
            .filter(|&i| sa.groups[i] <= 2 && frac[i] < lo)
            .collect();
        let va: Vec<usize> = (0..sa.len())
            .filter(|&i| sa.groups[i] != 1 && sa.groups[i] <= 2 && frac[i] >= lo && frac[i] < hi)
            .collect();
        let (model, om, ol) =
            train::train_model_oof(ds, &tr, fcfg, opts, "time-split validation", &|_| true);
        let oof = (om, ol);
        let (m, l) = (margins(&model, ds, &va), labels_of(ds, &va));
        if std::env::var_os("SIFT_VAL_DUMP").is_some() {
            dump_errors(&m, &l, model.threshold, |k| &sa.views[va[k]].text);
        }
        for (p, r) in parts.iter_mut().zip(&all_rules) {
            p.push(metrics(&m, &l, rule_threshold(&model, &oof, *r)));
        }
    }
    parts.iter().map(|p| pool(p)).collect()
}

/// Print the errors of one validation model (`SIFT_VAL_DUMP`): kind,
/// margin, threshold and the text's first 300 characters.
fn dump_errors<'a>(m: &[f32], l: &[bool], threshold: f32, text: impl Fn(usize) -> &'a str) {
    for (k, (&mk, &lk)) in m.iter().zip(l).enumerate() {
        if (mk >= threshold) != lk {
            let kind = if lk { "FN" } else { "FP" };
            let t: String = text(k).chars().take(300).collect();
            eprintln!("{kind} {mk:.2} (t {threshold:.2}): {t:?}");
        }
    }
}

/// Validation for (c), from the SMS training part (the 80 %) only: inner
/// stratified 5-fold; each validation fold drops texts that occur in its
/// inner training part; `extra` rows join every inner training part.
pub fn sms_valid(
    corpus: &Corpus,
    ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
    extra: &[usize],
) -> Metrics {
    sms_valid_rules(corpus, ds, fcfg, opts, extra, &[])[0]
}

/// [`sms_valid`] under the recipe's own calibration (first entry) and then
/// under each of `rules`, all from the same trained models.
pub fn sms_valid_rules(
    corpus: &Corpus,
    ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
    extra: &[usize],
    rules: &[CalibRule],
) -> Vec<Metrics> {
    let (outer_train, _test) = split_dedup(corpus, 0.2, opts.train.seed ^ 0x5e5);
    let folds = train::stratified_folds(&ds.labels, &outer_train, 5, opts.train.seed ^ 0x7a1);
    let n = corpus.len();
    let all_rules: Vec<Option<CalibRule>> = std::iter::once(None)
        .chain(rules.iter().copied().map(Some))
        .collect();
    let mut parts = vec![Vec::new(); all_rules.len()];
    for (j, va) in folds.iter().enumerate() {
        let mut tr: Vec<usize> = train::other_folds(&folds, j);
        let mut va = va.clone();
        drop_texts_in(corpus, &mut va, &tr);
        tr.extend_from_slice(extra);
        let (model, om, ol) =
            train::train_model_oof(ds, &tr, fcfg, opts, "SMS validation", &|r| r < n);
        let oof = (om, ol);
        let (m, l) = (margins(&model, ds, &va), labels_of(ds, &va));
        if std::env::var_os("SIFT_VAL_DUMP").is_some() {
            dump_errors(&m, &l, model.threshold, |k| &corpus.views[va[k]].text);
        }
        for (p, r) in parts.iter_mut().zip(&all_rules) {
            p.push(metrics(&m, &l, rule_threshold(&model, &oof, *r)));
        }
    }
    parts.iter().map(|p| pool(p)).collect()
}

/// Validation for (d): the SpamAssassin-only model learns `n_learn`
/// examples drawn from the SMS training part (the 80 % of (c)) and is
/// scored on the rest of that part, for `draws` independent draws (counts
/// pooled: one draw of 200 is noisy); the SMS test part is never read.
/// One pooled figure per entry of `learn` (the base model is trained once).
#[allow(clippy::too_many_arguments)]
pub fn adaptation_valid(
    sa: &Corpus,
    sa_ds: &Dataset,
    sms: &Corpus,
    sms_ds: &Dataset,
    fcfg: FeatureConfig,
    opts: &FitOptions,
    learn: &[LearnOptions],
    n_learn: usize,
    draws: usize,
) -> Vec<Metrics> {
    let all: Vec<usize> = (0..sa.len()).collect();
    let base = train::train_model(sa_ds, &all, fcfg, opts, "SpamAssassin all");
    let (outer_train, _test) = split_dedup(sms, 0.2, opts.train.seed ^ 0x5e5);
    learn
        .iter()
        .map(|lo| {
            let parts: Vec<Metrics> = (0..draws.max(1) as u64)
                .map(|d| {
                    adapt_draw(
                        &base,
                        sms,
                        sms_ds,
                        &outer_train,
                        lo,
                        n_learn,
                        opts.train.seed ^ 0xada ^ 0x7a1 ^ (d << 32),
                    )
                })
                .collect();
            pool(&parts)
        })
        .collect()
}

fn adapt_draw(
    base: &Model,
    sms: &Corpus,
    sms_ds: &Dataset,
    outer_train: &[usize],
    learn: &LearnOptions,
    n_learn: usize,
    seed: u64,
) -> Metrics {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut learn_rows = Vec::new();
    let mut rest = Vec::new();
    for class in [false, true] {
        let mut c: Vec<usize> = outer_train
            .iter()
            .copied()
            .filter(|&r| sms.labels[r] == class)
            .collect();
        rng.shuffle(&mut c);
        let k =
            (c.len() as f64 * n_learn as f64 / outer_train.len().max(1) as f64).round() as usize;
        learn_rows.extend_from_slice(&c[..k]);
        rest.extend_from_slice(&c[k..]);
    }
    learn_rows.sort_unstable();
    rest.sort_unstable();
    drop_texts_in(sms, &mut rest, &learn_rows);
    let batch: Vec<_> = learn_rows
        .iter()
        .map(|&i| (sms.views[i].clone(), sms.labels[i]))
        .collect();
    let adapted = train::learn(base, &batch, learn);
    metrics(
        &margins(&adapted, sms_ds, &rest),
        &labels_of(sms_ds, &rest),
        adapted.threshold,
    )
}

/// Like [`split_dedup`] but returns (rest, sample) with the sample of
/// `frac` as the "training" side: rest texts equal to a sample text dropped.
fn split_dedup_rev(corpus: &Corpus, frac: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let (sample, mut rest) = stratified(corpus, frac, seed);
    drop_texts_in(corpus, &mut rest, &sample);
    (rest, sample)
}

/// Speed of the serving path.
#[derive(Debug, Clone, Copy)]
pub struct Bench {
    pub load_ms: f64,
    pub model_bytes: usize,
    /// Wall-clock time per KB of text view (featurize + score).
    pub view_us_per_kb: f64,
    /// On-CPU time of the thread per KB of text view (featurize + score):
    /// the one-core figure, robust to other processes sharing the machine.
    pub view_cpu_us_per_kb: f64,
    pub raw_us_per_kb: f64,
    pub raw_cpu_us_per_kb: f64,
    pub messages: usize,
}

/// Nanoseconds this thread has spent on a CPU (Linux
/// `/proc/thread-self/schedstat`), or `None` where that is not available.
pub fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Runs `f` in rounds for at least `min_secs` of wall time; returns (wall
/// µs, on-CPU µs) per round (on-CPU falls back to wall).
pub fn time_rounds(min_secs: f64, mut f: impl FnMut()) -> (f64, f64) {
    let mut rounds = 0u32;
    let c0 = thread_cpu_ns();
    let t = Instant::now();
    while rounds == 0 || t.elapsed().as_secs_f64() < min_secs {
        f();
        rounds += 1;
    }
    let wall = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let cpu = match (c0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e3 / f64::from(rounds),
        _ => wall,
    };
    (wall, cpu)
}

/// Time model load, featurize+score on text views, and the whole path from
/// raw bytes (MIME parse + featurize + score), one thread.
pub fn bench(
    model_path: &std::path::Path,
    raws: &[Vec<u8>],
    min_secs: f64,
) -> Result<Bench, super::model::ModelError> {
    let t = Instant::now();
    let model = Model::load(model_path)?;
    let fz = Featurizer::new(model.features);
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let views: Vec<_> = raws.iter().map(|r| super::text::view(r)).collect();
    let view_kb = views
        .iter()
        .map(|v| v.text.len().min(model.features.max_bytes as usize))
        .sum::<usize>() as f64
        / 1024.0;
    let raw_kb = raws.iter().map(|r| r.len()).sum::<usize>() as f64 / 1024.0;
    let mut sink = 0f32;
    let (vw, vc) = time_rounds(min_secs, || {
        for v in &views {
            sink += model.margin(&fz, v);
        }
    });
    let (rw, rc) = time_rounds(min_secs, || {
        for r in raws {
            sink += model.margin(&fz, &super::text::view(r));
        }
    });
    std::hint::black_box(sink);
    Ok(Bench {
        load_ms,
        model_bytes: model.weight_bytes(),
        view_us_per_kb: vw / view_kb,
        view_cpu_us_per_kb: vc / view_kb,
        raw_us_per_kb: rw / raw_kb,
        raw_cpu_us_per_kb: rc / raw_kb,
        messages: raws.len(),
    })
}
