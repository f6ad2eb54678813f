//! Training: logistic regression by AdaGrad SGD over the hashed features,
//! class-balanced, deterministic for a seed; the decision threshold is set
//! for a target ham false-positive rate from out-of-fold margins on the
//! training data (never on test data). Also incremental learning from a
//! labelled batch, anchored to the current model.

use super::features::{Collect, FeatureConfig, Featurizer};
use super::model::{Meta, Model, Weights};
use super::text::TextView;

/// Featurized examples: one packed sparse matrix.
#[derive(Debug, Default, Clone)]
pub struct Dataset {
    offsets: Vec<usize>,
    idx: Vec<u32>,
    val: Vec<f32>,
    pub labels: Vec<bool>,
}

impl Dataset {
    pub fn new() -> Dataset {
        Dataset {
            offsets: vec![0],
            ..Dataset::default()
        }
    }

    /// Featurize every view (labels: true = spam).
    pub fn build(fz: &Featurizer, views: &[TextView], labels: &[bool]) -> Dataset {
        let mut ds = Dataset::new();
        let mut c = Collect::default();
        for (v, &l) in views.iter().zip(labels) {
            ds.push(fz, v, l, &mut c);
        }
        ds
    }

    pub fn push(&mut self, fz: &Featurizer, view: &TextView, spam: bool, c: &mut Collect) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        fz.run(view, c);
        let f = fz.config();
        c.finish([f.word_scale, f.char_scale], &mut self.idx, &mut self.val);
        self.offsets.push(self.idx.len());
        self.labels.push(spam);
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Append every row of `other` (featurized with the same featurizer);
    /// its row `i` becomes row `self.len() + i`.
    pub fn append(&mut self, other: &Dataset) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let base = self.idx.len();
        self.idx.extend_from_slice(&other.idx);
        self.val.extend_from_slice(&other.val);
        self.offsets
            .extend(other.offsets.iter().skip(1).map(|o| o + base));
        self.labels.extend_from_slice(&other.labels);
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.offsets[i], self.offsets[i + 1]);
        (&self.idx[a..b], &self.val[a..b])
    }
}

/// SGD settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainConfig {
    pub epochs: u32,
    /// AdaGrad base learning rate.
    pub lr: f32,
    pub seed: u64,
    /// Weight the classes to equal total weight.
    pub balance: bool,
    /// Polyak averaging of the iterates.
    pub average: bool,
    /// Proximal pull toward the starting weights (incremental learning only).
    pub anchor: f32,
    pub loss: Loss,
    /// Fresh models averaged into one (seeds `seed`, `seed + 1`, ...;
    /// with [`TrainConfig::mix`] the odd ones use the modified Huber loss).
    pub ensemble: u32,
    /// Alternate hinge/log loss with modified Huber across the ensemble.
    pub mix: bool,
    /// Multiplies the spam class weight (after balancing).
    pub spam_weight: f32,
    /// NB-SVM (Wang & Manning 2012) when > 0: train on features scaled by
    /// the log-count ratio r of the training rows (this value is the
    /// smoothing α), then fold r into the weights, so the served model is
    /// still one linear table over the same features.
    pub nb: f32,
}

/// Training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Loss {
    /// Logistic regression.
    #[default]
    Log,
    /// Linear SVM (hinge).
    Hinge,
    /// Modified Huber (smoothed hinge, still probabilistic-ish).
    Mhuber,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 16,
            lr: 0.05,
            seed: 42,
            balance: true,
            average: true,
            anchor: 0.0,
            loss: Loss::Hinge,
            ensemble: 8,
            mix: false,
            spam_weight: 0.5,
            nb: 0.0,
        }
    }
}

/// f32 weights + bias during training.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: Vec<f32>,
    pub bias: f32,
}

impl Linear {
    pub fn zeros(bits: u8) -> Linear {
        Linear {
            w: vec![0.0; 1usize << bits],
            bias: 0.0,
        }
    }

    pub fn margin(&self, idx: &[u32], val: &[f32]) -> f32 {
        let mut m = self.bias;
        for (&i, &v) in idx.iter().zip(val) {
            m += self.w.get(i as usize).copied().unwrap_or(0.0) * v;
        }
        m
    }
}

/// Train on `rows` of `ds`, starting from `init` (zeros for a fresh model).
pub fn fit(ds: &Dataset, rows: &[usize], init: Linear, cfg: &TrainConfig) -> Linear {
    fit_scaled(ds, rows, init, cfg, None)
}

/// NB-SVM log-count ratios per bucket over `rows`: r = log((p/|p|₁) /
/// (q/|q|₁)) with p = α + the number of spam rows having the bucket, q the
/// same over ham (binarized counts, as Wang & Manning).
pub fn nb_ratios(ds: &Dataset, rows: &[usize], n: usize, alpha: f32) -> Vec<f32> {
    let mut p = vec![f64::from(alpha); n];
    let mut q = vec![f64::from(alpha); n];
    for &r in rows {
        let (idx, val) = ds.row(r);
        let acc = if ds.labels[r] { &mut p } else { &mut q };
        for (&i, &v) in idx.iter().zip(val) {
            if let Some(a) = acc.get_mut(i as usize) {
                *a += f64::from(u8::from(v != 0.0));
            }
        }
    }
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    p.iter()
        .zip(&q)
        .map(|(a, b)| ((a / sp) / (b / sq)).ln() as f32)
        .collect()
}

/// `lin` with `gamma · r` added to its weights (Naive Bayes interpolation:
/// still one linear table over the same features); `lin` itself (no copy)
/// when `gamma` is 0, the default path.
fn nb_mixed<'a>(lin: &'a Linear, r: &[f32], gamma: f32) -> std::borrow::Cow<'a, Linear> {
    if gamma == 0.0 {
        return std::borrow::Cow::Borrowed(lin);
    }
    let mut out = lin.clone();
    for (w, r) in out.w.iter_mut().zip(r) {
        *w += gamma * r;
    }
    std::borrow::Cow::Owned(out)
}

/// [`fit`] on feature values multiplied by `scale[bucket]` (when given);
/// the returned weights are in that scaled space.
fn fit_scaled(
    ds: &Dataset,
    rows: &[usize],
    init: Linear,
    cfg: &TrainConfig,
    scale: Option<&[f32]>,
) -> Linear {
    let mut m = init;
    let anchor_w = if cfg.anchor > 0.0 {
        Some(m.w.clone())
    } else {
        None
    };
    let n = m.w.len();
    let mut g2 = vec![0f32; n];
    let mut g2b = 0f32;
    // Averaging (sparse trick): avg = w - u / c.
    let mut u = if cfg.average {
        vec![0f32; n]
    } else {
        Vec::new()
    };
    let mut ub = 0f32;
    let mut c: f32 = 1.0;
    let n_spam = rows.iter().filter(|&&r| ds.labels[r]).count().max(1) as f32;
    let n_ham = (rows.len() as f32 - n_spam).max(1.0);
    let total = rows.len() as f32;
    let (w_spam, w_ham) = if cfg.balance {
        (total / (2.0 * n_spam), total / (2.0 * n_ham))
    } else {
        (1.0, 1.0)
    };
    let w_spam = w_spam * cfg.spam_weight;
    let mut order: Vec<usize> = rows.to_vec();
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    const EPS: f32 = 1e-6;
    for _ in 0..cfg.epochs {
        rng.shuffle(&mut order);
        for &r in &order {
            let (idx, val) = ds.row(r);
            let y = ds.labels[r];
            let sv = |i: u32, v: f32| match scale {
                Some(s) => v * s.get(i as usize).copied().unwrap_or(0.0),
                None => v,
            };
            let margin = match scale {
                Some(_) => {
                    let mut mg = m.bias;
                    for (&i, &v) in idx.iter().zip(val) {
                        mg += m.w.get(i as usize).copied().unwrap_or(0.0) * sv(i, v);
                    }
                    mg
                }
                None => m.margin(idx, val),
            };
            let cw = if y { w_spam } else { w_ham };
            let ys = if y { 1.0 } else { -1.0 };
            let z = ys * margin;
            let g = match cfg.loss {
                Loss::Log => (super::model::sigmoid(margin) - if y { 1.0 } else { 0.0 }) * cw,
                Loss::Hinge => {
                    if z < 1.0 {
                        -ys * cw
                    } else {
                        0.0
                    }
                }
                Loss::Mhuber => {
                    if z >= 1.0 {
                        0.0
                    } else if z >= -1.0 {
                        -2.0 * (1.0 - z) * ys * cw
                    } else {
                        -4.0 * ys * cw
                    }
                }
            };
            if g == 0.0 && cfg.anchor == 0.0 {
                c += 1.0;
                continue;
            }
            for (&i, &v) in idx.iter().zip(val) {
                let v = sv(i, v);
                let i = i as usize;
                let mut gi = g * v;
                if let Some(a) = &anchor_w {
                    gi += cfg.anchor * (m.w[i] - a[i]);
                }
                if gi == 0.0 {
                    continue;
                }
                g2[i] += gi * gi;
                let d = -cfg.lr * gi / (g2[i].sqrt() + EPS);
                m.w[i] += d;
                if cfg.average {
                    u[i] += c * d;
                }
            }
            g2b += g * g;
            let db = -cfg.lr * g / (g2b.sqrt() + EPS);
            m.bias += db;
            ub += c * db;
            c += 1.0;
        }
    }
    if cfg.average {
        for (w, u) in m.w.iter_mut().zip(&u) {
            *w -= u / c;
        }
        m.bias -= ub / c;
    }
    m
}

/// A fresh model: the average of `cfg.ensemble` SGD runs with different
/// seeds (and losses, with `cfg.mix`). Still one linear model, so serving
/// costs the same; averaging cuts the variance of the ranking's tail.
pub fn fit_fresh(ds: &Dataset, rows: &[usize], bits: u8, cfg: &TrainConfig) -> Linear {
    let k = cfg.ensemble.max(1);
    let mut acc = Linear::zeros(bits);
    let nb = (cfg.nb > 0.0).then(|| nb_ratios(ds, rows, 1usize << bits, cfg.nb));
    for j in 0..k {
        let mut c = *cfg;
        c.seed = cfg.seed.wrapping_add(u64::from(j));
        if cfg.mix && j % 2 == 1 {
            c.loss = Loss::Mhuber;
        }
        let mut m = fit_scaled(ds, rows, Linear::zeros(bits), &c, nb.as_deref());
        if let Some(r) = &nb {
            for (w, r) in m.w.iter_mut().zip(r) {
                *w *= r;
            }
        }
        if k == 1 {
            return m;
        }
        for (a, w) in acc.w.iter_mut().zip(&m.w) {
            *a += w / k as f32;
        }
        acc.bias += m.bias / k as f32;
    }
    acc
}

/// The rows of every fold but `held`: the training part of a k-fold split.
pub fn other_folds(folds: &[Vec<usize>], held: usize) -> Vec<usize> {
    folds
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != held)
        .flat_map(|(_, f)| f.iter().copied())
        .collect()
}

/// Stratified k folds of `rows` (deterministic for `seed`).
pub fn stratified_folds(labels: &[bool], rows: &[usize], k: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut folds = vec![Vec::new(); k.max(1)];
    for class in [false, true] {
        let mut c: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|&r| labels[r] == class)
            .collect();
        rng.shuffle(&mut c);
        for (j, r) in c.into_iter().enumerate() {
            folds[j % k.max(1)].push(r);
        }
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    folds
}

/// Quantise trained weights into a [`Model`].
pub fn to_model(lin: &Linear, fcfg: FeatureConfig, threshold: f32, meta: Meta) -> Model {
    Model {
        features: fcfg,
        bias: lin.bias,
        threshold,
        weights: Weights::quantize(&lin.w),
        meta,
    }
}

/// The threshold on the margin so that at most `target_fpr` of the given
/// ham margins are at or above it.
pub fn threshold_for_fpr(ham_margins: &[f32], target_fpr: f32) -> f32 {
    if ham_margins.is_empty() {
        return 0.0;
    }
    let mut h = ham_margins.to_vec();
    h.sort_unstable_by(|a, b| b.total_cmp(a)); // descending
    let allowed = ((target_fpr.max(0.0) as f64) * h.len() as f64).floor() as usize;
    if allowed >= h.len() {
        return h[h.len() - 1];
    }
    // Just above the (allowed+1)-th highest ham margin.
    let t = h[allowed];
    t + t.abs().max(1.0) * 1e-4
}

/// How the threshold is chosen from the out-of-fold training margins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Calib {
    /// The lowest threshold whose OOF ham FPR is at most the target.
    #[default]
    Fpr,
    /// The threshold with the best OOF F1 among those whose OOF ham FPR is
    /// at most the target.
    F1,
    /// The lowest threshold whose OOF F1 is within [`F1LOW_TOL`] of the
    /// best, among those whose OOF ham FPR is at most the target.
    F1low,
    /// Platt scaling of the OOF margins, cut at p = F1*/2 (F1* the best OOF
    /// F1: the F1-optimal probability cut), not below the FPR floor.
    Platt,
    /// Platt scaling of the OOF margins cut at p = 0.5, not below the FPR
    /// floor.
    Platt50,
}

/// How far below the best OOF F1 [`Calib::F1low`] may go.
pub const F1LOW_TOL: f64 = 0.005;

/// Platt scaling: `(a, b)` of p = sigmoid(a·m + b) fitted to `labels` by
/// Newton's method on the log loss, with Platt's smoothed targets.
pub fn platt_fit(margins: &[f32], labels: &[bool]) -> (f64, f64) {
    let np = labels.iter().filter(|l| **l).count() as f64;
    let nn = labels.len() as f64 - np;
    let (tp, tn) = ((np + 1.0) / (np + 2.0), 1.0 / (nn + 2.0));
    let (mut a, mut b) = (1.0f64, 0.0f64);
    for _ in 0..100 {
        let (mut h11, mut h22, mut h21, mut g1, mut g2) = (1e-12, 1e-12, 0.0, 0.0, 0.0);
        for (&m, &l) in margins.iter().zip(labels) {
            let m = f64::from(m);
            let t = if l { tp } else { tn };
            let p = 1.0 / (1.0 + (-(a * m + b)).exp());
            let d = p - t;
            let w = (p * (1.0 - p)).max(1e-12);
            g1 += d * m;
            g2 += d;
            h11 += w * m * m;
            h22 += w;
            h21 += w * m;
        }
        let det = h11 * h22 - h21 * h21;
        if det.abs() < 1e-300 {
            break;
        }
        let da = (h22 * g1 - h21 * g2) / det;
        let db = (h11 * g2 - h21 * g1) / det;
        a -= da;
        b -= db;
        if da.abs() < 1e-10 && db.abs() < 1e-10 {
            break;
        }
    }
    (a, b)
}

/// The threshold on the margin that `calib` reads off out-of-fold margins
/// (labels: spam), never below the one keeping at most `target_fpr` of
/// their ham above it.
pub fn threshold_from_oof(margins: &[f32], labels: &[bool], calib: Calib, target_fpr: f32) -> f32 {
    let ham: Vec<f32> = margins
        .iter()
        .zip(labels)
        .filter(|(_, l)| !**l)
        .map(|(m, _)| *m)
        .collect();
    if ham.is_empty() {
        return 0.0;
    }
    let floor = threshold_for_fpr(&ham, target_fpr);
    match calib {
        Calib::Fpr => floor,
        Calib::F1 => threshold_best_f1(margins, labels, target_fpr),
        Calib::F1low => {
            let curve = f1_curve(margins, labels, floor);
            let best = curve.iter().map(|c| c.0).fold(-1.0, f64::max);
            curve
                .iter()
                .filter(|c| c.0 >= best - F1LOW_TOL)
                .map(|c| c.1)
                .fold(f32::INFINITY, f32::min)
        }
        Calib::Platt | Calib::Platt50 => {
            let (a, b) = platt_fit(margins, labels);
            let p = if calib == Calib::Platt {
                let best = f1_curve(margins, labels, floor)
                    .iter()
                    .map(|c| c.0)
                    .fold(0.0, f64::max);
                (best / 2.0).clamp(1e-6, 0.5)
            } else {
                0.5
            };
            if a.is_nan() || a <= 0.0 {
                return threshold_best_f1(margins, labels, target_fpr);
            }
            let t = (((p / (1.0 - p)).ln() - b) / a) as f32;
            t.max(floor)
        }
    }
}

/// (F1, threshold) at every distinct margin at or above `floor`, highest
/// threshold first.
fn f1_curve(margins: &[f32], labels: &[bool], floor: f32) -> Vec<(f64, f32)> {
    let mut order: Vec<usize> = (0..margins.len()).collect();
    order.sort_unstable_by(|&a, &b| margins[b].total_cmp(&margins[a])); // descending
    let n_spam = labels.iter().filter(|l| **l).count();
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut out = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let t = margins[order[i]];
        if t < floor {
            break;
        }
        while i < order.len() && margins[order[i]] == t {
            if labels[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        out.push((2.0 * tp as f64 / (2 * tp + fp + (n_spam - tp)) as f64, t));
    }
    if out.is_empty() {
        out.push((0.0, floor));
    }
    out
}

/// The threshold with the best F1 over `margins` (labels: spam) among
/// those whose ham FPR is at most `target_fpr`; ties go to the higher one.
pub fn threshold_best_f1(margins: &[f32], labels: &[bool], target_fpr: f32) -> f32 {
    let floor = threshold_for_fpr(
        &margins
            .iter()
            .zip(labels)
            .filter(|(_, l)| !**l)
            .map(|(m, _)| *m)
            .collect::<Vec<_>>(),
        target_fpr,
    );
    // The curve runs from the highest threshold down: the first best F1
    // is the highest threshold among ties.
    let mut best = (-1.0f64, floor);
    for (f1, t) in f1_curve(margins, labels, floor) {
        if f1 > best.0 {
            best = (f1, t);
        }
    }
    best.1
}

/// Training options for a full model (SGD + calibration).
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    pub train: TrainConfig,
    /// Folds for out-of-fold calibration margins.
    pub calib_folds: usize,
    pub target_fpr: f32,
    pub calib: Calib,
    /// Add Naive Bayes log-count ratios to the SVM's weights, γ · r, with γ
    /// chosen from [`NB_MIX`] by out-of-fold ROC AUC (γ = 0 unless a larger
    /// one ranks the training data's held-out folds strictly better). Off
    /// by default: round P2 of the model card (better on validation, worse
    /// on three of the four test evaluations).
    pub nb_mix: bool,
}

/// The γ that [`FitOptions::nb_mix`] chooses from, smallest first.
pub const NB_MIX: [f32; 5] = [0.0, 0.01, 0.03, 0.1, 0.3];

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            train: TrainConfig::default(),
            calib_folds: 5,
            target_fpr: 0.01,
            calib: Calib::F1,
            nb_mix: false,
        }
    }
}

/// Train a model on `rows`: out-of-fold margins (k folds within `rows`)
/// set the threshold, then one fit on all of `rows`. The OOF margins are
/// computed with quantised weights, as served.
pub fn train_model(
    ds: &Dataset,
    rows: &[usize],
    fcfg: FeatureConfig,
    opts: &FitOptions,
    note: &str,
) -> Model {
    train_model_calib(ds, rows, fcfg, opts, note, &|_| true)
}

/// [`train_model`] with the threshold calibrated on the out-of-fold margins
/// of the rows for which `calib` holds only (e.g. the target corpus when
/// another corpus is added to training); the folds still span all `rows`.
pub fn train_model_calib(
    ds: &Dataset,
    rows: &[usize],
    fcfg: FeatureConfig,
    opts: &FitOptions,
    note: &str,
    calib: &dyn Fn(usize) -> bool,
) -> Model {
    train_model_oof(ds, rows, fcfg, opts, note, calib).0
}

/// [`train_model_calib`] that also returns the out-of-fold margins and
/// labels the threshold was read from (so other rules can be compared).
pub fn train_model_oof(
    ds: &Dataset,
    rows: &[usize],
    fcfg: FeatureConfig,
    opts: &FitOptions,
    note: &str,
    calib: &dyn Fn(usize) -> bool,
) -> (Model, Vec<f32>, Vec<bool>) {
    let grid: &[f32] = if opts.nb_mix { &NB_MIX } else { &NB_MIX[..1] };
    let n_buckets = 1usize << fcfg.bits;
    // Out-of-fold margins of the calibration rows, one list per γ: each
    // fold's SVM plus γ times its own NB ratios, quantised as served.
    let mut oof: Vec<Vec<f32>> = vec![Vec::new(); grid.len()];
    let mut oof_l: Vec<bool> = Vec::new();
    if opts.calib_folds >= 2 {
        let folds = stratified_folds(&ds.labels, rows, opts.calib_folds, opts.train.seed ^ 0xca1);
        for (k, held) in folds.iter().enumerate() {
            let train_rows: Vec<usize> = other_folds(&folds, k);
            let lin = fit_fresh(ds, &train_rows, fcfg.bits, &opts.train);
            let r = if grid.len() > 1 {
                nb_ratios(ds, &train_rows, n_buckets, 1.0)
            } else {
                Vec::new()
            };
            let held: Vec<usize> = held.iter().copied().filter(|&r| calib(r)).collect();
            for (g, out) in grid.iter().zip(oof.iter_mut()) {
                let m = to_model(&nb_mixed(&lin, &r, *g), fcfg, 0.0, Meta::default());
                out.extend(held.iter().map(|&row| {
                    let (i, v) = ds.row(row);
                    m.margin_sparse(i, v)
                }));
            }
            oof_l.extend(held.iter().map(|&row| ds.labels[row]));
        }
    }
    // The γ whose out-of-fold margins rank best (ties to the smaller γ).
    let mut pick = 0;
    if oof_l.iter().any(|&l| l) && oof_l.iter().any(|&l| !l) {
        let mut best = crate::classify::eval::roc_auc(&oof[0], &oof_l);
        for (j, m) in oof.iter().enumerate().skip(1) {
            let a = crate::classify::eval::roc_auc(m, &oof_l);
            if a > best {
                best = a;
                pick = j;
            }
        }
    }
    let gamma = grid[pick];
    let oof_m = std::mem::take(&mut oof[pick]);
    let mut lin = fit_fresh(ds, rows, fcfg.bits, &opts.train);
    if gamma != 0.0 {
        lin = nb_mixed(&lin, &nb_ratios(ds, rows, n_buckets, 1.0), gamma).into_owned();
    }
    let threshold = if oof_l.iter().all(|&l| l) {
        0.0
    } else {
        threshold_from_oof(&oof_m, &oof_l, opts.calib, opts.target_fpr)
    };
    let n_spam = rows.iter().filter(|&&r| ds.labels[r]).count() as u32;
    let meta = Meta {
        n_ham: rows.len() as u32 - n_spam,
        n_spam,
        target_fpr: opts.target_fpr,
        note: if gamma != 0.0 {
            format!("{note}; NB mix {gamma}")
        } else {
            note.to_owned()
        },
    };
    (to_model(&lin, fcfg, threshold, meta), oof_m, oof_l)
}

/// How `learn` sets the threshold of the learned model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LearnCalib {
    /// Keep the current threshold.
    Keep,
    /// Out-of-fold margins of the batch (k folds, each learned from the
    /// current model on the other folds): the threshold with the best F1
    /// among those keeping at most the model's target share of the batch's
    /// ham above it.
    #[default]
    F1,
    /// Out-of-fold margins of the batch: the lowest threshold keeping at
    /// most the model's target share of the batch's ham above it.
    Fpr,
}

/// Settings for incremental learning from a labelled batch.
#[derive(Debug, Clone, Copy)]
pub struct LearnOptions {
    pub epochs: u32,
    pub lr: f32,
    /// Proximal pull toward the current weights: how strongly the batch is
    /// kept from rewriting what the model knew.
    pub anchor: f32,
    pub seed: u64,
    /// Multiplies the spam class weight (after class balancing).
    pub spam_weight: f32,
    /// How the learned model's threshold is set.
    pub calib: LearnCalib,
    /// Folds for the out-of-fold batch margins.
    pub calib_folds: usize,
    /// The threshold is re-set only when the batch has at least this many
    /// examples of each class; otherwise it is kept.
    pub calib_min_per_class: usize,
}

impl Default for LearnOptions {
    fn default() -> Self {
        LearnOptions {
            epochs: 5,
            lr: 0.1,
            anchor: 0.01,
            seed: 7,
            spam_weight: 0.5,
            calib: LearnCalib::F1,
            calib_folds: 5,
            calib_min_per_class: 10,
        }
    }
}

/// Continue training `model` on a labelled batch; returns the new model
/// (same featurizer). The update is AdaGrad logistic regression with fresh
/// accumulators, balanced classes, no averaging, and a proximal term
/// `anchor · (w − w₀)` on every weight the batch touches, so a small batch
/// moves the model toward the operator's traffic without rewriting the
/// weights learned from the public corpora.
///
/// The update moves every margin of the operator's traffic, so the old
/// threshold no longer holds its ham false-positive rate. With
/// [`LearnCalib::F1`] or [`LearnCalib::Fpr`] and enough examples of each
/// class, the threshold is re-set from out-of-fold margins of the batch
/// (each fold scored by a model learned, from the same starting model, on
/// the other folds, with quantised weights as served), at the model's
/// target ham FPR. Smaller batches keep the threshold. The new threshold
/// is stored in the model like any other, so the next learn starts from it.
pub fn learn(model: &Model, batch: &[(TextView, bool)], opts: &LearnOptions) -> Model {
    let fz = Featurizer::new(model.features);
    let mut ds = Dataset::new();
    let mut c = Collect::default();
    for (v, l) in batch {
        ds.push(&fz, v, *l, &mut c);
    }
    let rows: Vec<usize> = (0..ds.len()).collect();
    let init = Linear {
        w: model.weights.to_f32(),
        bias: model.bias,
    };
    let cfg = TrainConfig {
        epochs: opts.epochs,
        lr: opts.lr,
        seed: opts.seed,
        balance: true,
        average: false,
        anchor: opts.anchor,
        loss: Loss::Log,
        ensemble: 1,
        mix: false,
        spam_weight: opts.spam_weight,
        nb: 0.0,
    };
    let requantize = |w: Vec<f32>| match model.weights {
        Weights::F32(_) => Weights::F32(w),
        Weights::I8 { .. } => Weights::quantize(&w),
    };
    let n_spam = batch.iter().filter(|(_, l)| *l).count();
    let n_ham = batch.len() - n_spam;
    let mut threshold = model.threshold;
    let min = opts.calib_min_per_class.max(2);
    if opts.calib != LearnCalib::Keep && n_spam >= min && n_ham >= min {
        let k = opts.calib_folds.max(2).min(min);
        let folds = stratified_folds(&ds.labels, &rows, k, opts.seed ^ 0xca1);
        let (mut oof, mut labels) = (Vec::with_capacity(rows.len()), Vec::new());
        for (j, held) in folds.iter().enumerate() {
            let tr: Vec<usize> = other_folds(&folds, j);
            let lin = fit(&ds, &tr, init.clone(), &cfg);
            let m = Model {
                features: model.features,
                bias: lin.bias,
                threshold: 0.0,
                weights: requantize(lin.w),
                meta: Meta::default(),
            };
            for &r in held {
                let (i, v) = ds.row(r);
                oof.push(m.margin_sparse(i, v));
                labels.push(ds.labels[r]);
            }
        }
        let target = model.meta.target_fpr;
        let target = if target.is_finite() && target > 0.0 && target < 1.0 {
            target
        } else {
            0.01
        };
        let t = if opts.calib == LearnCalib::F1 {
            threshold_best_f1(&oof, &labels, target)
        } else {
            let ham: Vec<f32> = oof
                .iter()
                .zip(&labels)
                .filter(|(_, l)| !**l)
                .map(|(m, _)| *m)
                .collect();
            threshold_for_fpr(&ham, target)
        };
        if t.is_finite() {
            threshold = t;
        }
    }
    let lin = if rows.is_empty() {
        init
    } else {
        fit(&ds, &rows, init, &cfg)
    };
    let mut meta = model.meta.clone();
    meta.n_spam += n_spam as u32;
    meta.n_ham += n_ham as u32;
    Model {
        features: model.features,
        bias: lin.bias,
        threshold,
        weights: requantize(lin.w),
        meta,
    }
}
