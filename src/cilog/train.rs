//! Learning the CI-log model from labelled logs, and grouped cross-validation.
//!
//! Data: a `labels.csv` with a header naming at least `path` and `label`
//! (optional: `id`, `repo`, `chunk_first_line`, `chunk_last_line`); `path`
//! is relative to a logs directory. This is the layout of
//! `../shared/data/cilogs` and what `sift train cilog --labels` reads.
//!
//! 1. Line scorer: for every log with a chunk, a listwise softmax over its
//!    non-blank lines (content features + position bucket) whose target is
//!    "some line of the human chunk"; AdaGrad.
//! 2. Class scorer: the serving [`Scanner`](super::Scanner) runs with the
//!    learned line scorer over each training log; the class features of its
//!    best lines, plus those of the human chunk (a second, clean example per
//!    log), are the input of a multiclass softmax regression; AdaGrad,
//!    class-balanced weights.

use std::path::{Path, PathBuf};

use super::features::{self, POS_BUCKETS, SEED_LINE, bucket};
use super::model::Params;
use super::normalize::LineSplitter;
use super::{
    CilogModel, Class, N_CLASSES, RERANK_F, RerankCand, Verdict, class_probs, rerank_features,
    softmax,
};

/// The data directory: `$SIFT_CILOG_DATA`, else `<crate>/../shared/data/cilogs`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SIFT_CILOG_DATA") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cilogs")
}

/// Why labelled data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "cannot read {path}: {source} (set SIFT_CILOG_DATA or --data to the labelled CI-log folder)"
    )]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Bad {
        path: String,
        line: usize,
        msg: String,
    },
}

/// One labelled log.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub path: String,
    /// Grouping key for cross-validation (the repository).
    pub group: String,
    pub label: Class,
    /// Human failure chunk, 1-based inclusive line range.
    pub chunk: Option<(u64, u64)>,
    pub bytes: Vec<u8>,
}

/// Split one CSV record (RFC 4180 quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut q = false;
    let mut it = line.chars().peekable();
    while let Some(c) = it.next() {
        match (q, c) {
            (true, '"') if it.peek() == Some(&'"') => {
                cur.push('"');
                it.next();
            }
            (true, '"') => q = false,
            (false, '"') => q = true,
            (false, ',') => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Read `labels` (CSV) and the logs under `logs_dir`; gzip logs are accepted.
pub fn load_labelled(labels: &Path, logs_dir: &Path) -> Result<Vec<Example>, DataError> {
    let text = std::fs::read_to_string(labels).map_err(|source| DataError::Io {
        path: labels.display().to_string(),
        source,
    })?;
    let lp = labels.display().to_string();
    let mut lines = text.lines();
    let header = csv_fields(lines.next().unwrap_or(""));
    let col = |name: &str| header.iter().position(|h| h.trim() == name);
    let (Some(c_path), Some(c_label)) = (col("path"), col("label")) else {
        return Err(DataError::Bad {
            path: lp,
            line: 1,
            msg: "header needs the columns path and label".into(),
        });
    };
    let (c_id, c_repo) = (col("id"), col("repo"));
    let (c_first, c_last) = (col("chunk_first_line"), col("chunk_last_line"));
    let mut out = Vec::new();
    for (i, l) in lines.enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let lineno = i + 2;
        let f = csv_fields(l);
        let get = |c: Option<usize>| c.and_then(|c| f.get(c)).map(|s| s.trim().to_string());
        let bad = |msg: String| DataError::Bad {
            path: lp.clone(),
            line: lineno,
            msg,
        };
        let path = get(Some(c_path)).unwrap_or_default();
        let label: Class = get(Some(c_label))
            .unwrap_or_default()
            .parse()
            .map_err(|e| bad(format!("{e}")))?;
        let num = |c| -> Result<Option<u64>, DataError> {
            match get(c) {
                None => Ok(None),
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => s
                    .parse()
                    .map(Some)
                    .map_err(|_| bad(format!("not a line number: {s:?}"))),
            }
        };
        let chunk = match (num(c_first)?, num(c_last)?) {
            (Some(a), Some(b)) if a >= 1 && b >= a => Some((a, b)),
            _ => None,
        };
        let full = logs_dir.join(&path);
        let bytes = read_log(&full).map_err(|source| DataError::Io {
            path: full.display().to_string(),
            source,
        })?;
        let group = get(c_repo).filter(|s| !s.is_empty()).unwrap_or_else(|| {
            Path::new(&path)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        });
        out.push(Example {
            id: get(c_id).unwrap_or_else(|| path.clone()),
            path,
            group,
            label,
            chunk,
            bytes,
        });
    }
    Ok(out)
}

/// The model `sift train cilog` writes: every log of `data` trained on,
/// with a note describing the data and the recipe (stored in the file).
pub fn train_all(data: &[Example], sets: &[LineSet], r: &Recipe) -> (CilogModel, String) {
    let mut counts = [0usize; N_CLASSES];
    for e in data {
        counts[e.label.index()] += 1;
    }
    let dist: Vec<String> = Class::ALL
        .iter()
        .filter(|c| counts[c.index()] > 0)
        .map(|c| format!("{} {}", c.as_str(), counts[c.index()]))
        .collect();
    let note = format!(
        "{} labelled CI logs ({}); line_bits {} class_bits {} line_epochs {} line_lr {} class_epochs {} class_lr {} l2 {} class_l2 {} seed {}",
        data.len(),
        dist.join(", "),
        r.line_bits,
        r.class_bits,
        r.line_epochs,
        r.line_lr,
        r.class_epochs,
        r.class_lr,
        r.l2,
        r.class_l2,
        r.seed
    );
    let note = if r.order_salt != 0 {
        format!("{note} order_salt {}", r.order_salt)
    } else {
        note
    };
    let rows: Vec<usize> = (0..data.len()).collect();
    (train(data, sets, &rows, r, &note), note)
}

/// Labelled logs as JSON lines, the format of `POST /filters/{name}/learn`
/// for a cilog filter and of `sift train cilog --also FILE.jsonl`: one
/// object per line, `{"log": "...", "label": "test"}` plus optionally
/// `"repo"` (the grouping key; default `learned`) and `"chunk_first_line"`,
/// `"chunk_last_line"` (1-based, inclusive: where the failure is). Blank
/// lines are skipped; any other bad line is an error naming it (`source`
/// and the line number). Ids are `learned-N` in order.
pub fn parse_jsonl(text: &str, source: &str) -> Result<Vec<Example>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| DataError::Bad {
            path: source.to_string(),
            line: i + 1,
            msg,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        for k in obj.keys() {
            if !matches!(
                k.as_str(),
                "log" | "label" | "repo" | "chunk_first_line" | "chunk_last_line"
            ) {
                return Err(bad(format!(
                    "unknown field {k:?} (fields: log, label, repo, chunk_first_line, chunk_last_line)"
                )));
            }
        }
        let log = obj
            .get("log")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("needs \"log\": the log text, a string".into()))?;
        if log.trim().is_empty() {
            return Err(bad("\"log\" is empty".into()));
        }
        let label: Class = obj
            .get("label")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("needs \"label\": one of the classes, a string".into()))?
            .parse()
            .map_err(|e| bad(format!("{e}")))?;
        let group = match obj.get("repo") {
            None => "learned".to_string(),
            Some(r) => match r.as_str() {
                Some(r) if !r.trim().is_empty() => r.trim().to_string(),
                _ => return Err(bad("\"repo\" must be a non-empty string".into())),
            },
        };
        let num = |k: &str| -> Result<Option<u64>, DataError> {
            match obj.get(k) {
                None => Ok(None),
                Some(n) => n
                    .as_u64()
                    .filter(|n| *n >= 1)
                    .map(Some)
                    .ok_or_else(|| bad(format!("{k:?} must be a line number (1 or more)"))),
            }
        };
        let chunk = match (num("chunk_first_line")?, num("chunk_last_line")?) {
            (None, None) => None,
            (Some(a), Some(b)) if b >= a => Some((a, b)),
            _ => {
                return Err(bad(
                    "chunk_first_line and chunk_last_line go together, first <= last".into(),
                ));
            }
        };
        out.push(Example {
            id: format!("learned-{}", out.len() + 1),
            path: String::new(),
            group,
            label,
            chunk,
            bytes: log.as_bytes().to_vec(),
        });
    }
    Ok(out)
}

/// The JSON line [`parse_jsonl`] reads back as `e`.
pub fn jsonl_line(e: &Example) -> String {
    let mut o = serde_json::json!({
        "log": String::from_utf8_lossy(&e.bytes),
        "label": e.label.as_str(),
        "repo": e.group,
    });
    if let Some((a, b)) = e.chunk {
        o["chunk_first_line"] = a.into();
        o["chunk_last_line"] = b.into();
    }
    o.to_string()
}

/// Labelled logs from a folder (`labels.csv` and `logs/`) or a JSONL file
/// in the [`parse_jsonl`] format.
pub fn load_any(path: &Path) -> Result<Vec<Example>, DataError> {
    if path.is_dir() {
        return load_labelled(&path.join("labels.csv"), &path.join("logs"));
    }
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_jsonl(&text, &path.display().to_string())
}

/// Read a file, gunzipping it when it starts with the gzip magic.
pub fn read_log(path: &Path) -> std::io::Result<Vec<u8>> {
    let b = std::fs::read(path)?;
    maybe_gunzip(b)
}

/// Gunzip when `b` starts with the gzip magic bytes.
pub fn maybe_gunzip(b: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if b.starts_with(&[0x1f, 0x8b]) {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&b[..]).read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(b)
    }
}

/// Exponent of the class-balancing example weights (n / (9 n_c))^e: 0
/// unweighted, 1 fully balanced (measured: 0.5 and 1.0 were worse than
/// 0.75 with the signature features; see the model card).
pub const CLASS_BALANCE: f32 = 0.75;

/// Group-aware L2 of the class scorer: a feature seen in g training
/// repositories has L2 `class_l2` × (8 / g)^CLASS_GROUP_L2, so features of
/// few repositories are held back and those of many are freer (7th
/// revision; 0 is the uniform L2 of the 6th).
pub const CLASS_GROUP_L2: f32 = 0.5;

/// The class scorer is the average of this many class scorers trained in
/// different example orders (7th revision).
pub const CLASS_BAG: u64 = 3;

/// Training knobs.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    pub line_bits: u8,
    pub class_bits: u8,
    pub line_epochs: u32,
    pub line_lr: f32,
    pub class_epochs: u32,
    pub class_lr: f32,
    pub l2: f32,
    /// L2 of the class scorer.
    pub class_l2: f32,
    pub seed: u64,
    /// A feature is learned only if it occurs in logs of at least this many
    /// groups (repositories) of the training data: no memorising one repo.
    pub min_groups: u32,
    /// Plain SGD for the line scorer (else AdaGrad).
    pub line_sgd: bool,
    /// Plain SGD for the class scorer (else AdaGrad).
    pub class_sgd: bool,
    /// Mixed into the seed of the class scorer's example order only (0:
    /// the shipped order). The order alone moves grouped-CV accuracy by
    /// about ±0.7 points of the 3-seed mean (model card, session 10), so a
    /// candidate should be compared over several orders.
    pub order_salt: u64,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            line_bits: 18,
            class_bits: 16,
            line_epochs: 8,
            line_lr: 0.2,
            class_epochs: 40,
            class_lr: 0.3,
            l2: 1e-4,
            class_l2: 0.01,
            seed: 42,
            min_groups: 3,
            line_sgd: false,
            class_sgd: false,
            order_salt: 0,
        }
    }
}

/// Precomputed line features of one log.
#[derive(Debug, Clone, Default)]
pub struct LineSet {
    /// Per line: feature range in `feats`, scale, position bucket, in-chunk.
    pub lines: Vec<(u32, u32, f32, u8, bool)>,
    pub feats: Vec<u32>,
}

/// Line features for the line scorer (bucketed for `bits`).
pub fn line_set(ex: &Example, bits: u8) -> LineSet {
    let mut sp = LineSplitter::new();
    let mut raw: Vec<(u64, u32, u32, f32)> = Vec::new();
    let mut hashes = Vec::new();
    let mut marks = features::Marks::default();
    let mut sigs: Vec<Vec<usize>> = Vec::new();
    {
        let mut emit = |no: u64, s: &[u8]| {
            marks.on_line(no, s);
            let mut v = Vec::new();
            features::for_each_sig(&s[..s.len().min(super::KEEP)], |i| v.push(i));
            sigs.push(v);
            let start = hashes.len() as u32;
            // The zone features are computed on the kept text, as at
            // inference.
            let n = features::for_each_feature(&s[..s.len().min(super::KEEP)], |h| hashes.push(h));
            raw.push((
                no,
                start,
                hashes.len() as u32,
                1.0 / (n.max(1) as f32).sqrt(),
            ));
        };
        sp.feed(&ex.bytes, &mut emit);
        sp.finish(&mut emit);
    }
    let total = sp.total_lines();
    let mut feats = Vec::with_capacity(hashes.len() * 2);
    let lines = raw
        .into_iter()
        .zip(sigs)
        .map(|((no, a, b, s), sg)| {
            let inside = ex.chunk.is_some_and(|(f, l)| (f..=l).contains(&no));
            let pb = marks.pos(no, total);
            let start = feats.len() as u32;
            let hs = &hashes[a as usize..b as usize];
            // Content features, then the same crossed with the line's zone
            // (the second stage of the scanner), one scale for both.
            let z = features::zone(pb);
            feats.extend(hs.iter().map(|&h| bucket(h, SEED_LINE, bits)));
            feats.extend(
                hs.iter()
                    .map(|&h| bucket(features::zone_hash(h, z), SEED_LINE, bits)),
            );
            // And the line's failure signatures × zone (second stage).
            for &i in &sg {
                feats.push(bucket(features::sig_line_pattern(i, z), SEED_LINE, bits));
                feats.push(bucket(
                    features::sig_line_family(features::sig_family(i), z),
                    SEED_LINE,
                    bits,
                ));
            }
            (start, feats.len() as u32, s, pb as u8, inside)
        })
        .collect();
    LineSet { lines, feats }
}

struct AdaGrad {
    w: Vec<f32>,
    g: Vec<f32>,
    /// Plain SGD instead (frequent features move more than rare ones).
    sgd: bool,
}

impl AdaGrad {
    fn new(n: usize) -> Self {
        AdaGrad {
            w: vec![0.0; n],
            g: vec![0.0; n],
            sgd: false,
        }
    }

    #[inline]
    fn step(&mut self, i: usize, grad: f32, lr: f32, l2: f32) {
        let grad = grad + l2 * self.w[i];
        if self.sgd {
            self.w[i] -= lr * grad;
            return;
        }
        self.g[i] += grad * grad;
        self.w[i] -= lr * grad / (self.g[i] + 1e-8).sqrt();
    }
}

/// Buckets seen in at least `min` distinct groups among `rows`.
fn group_mask<'a, I>(n: usize, rows: &[usize], groups: &[u32], feats: I, min: u32) -> Vec<bool>
where
    I: Fn(usize) -> Box<dyn Iterator<Item = u32> + 'a>,
{
    group_counts(n, rows, groups, feats)
        .into_iter()
        .map(|c| c >= min)
        .collect()
}

/// Per bucket, the number of distinct groups (repositories) among `rows`
/// whose features include it.
fn group_counts<'a, I>(n: usize, rows: &[usize], groups: &[u32], feats: I) -> Vec<u32>
where
    I: Fn(usize) -> Box<dyn Iterator<Item = u32> + 'a>,
{
    let mut last = vec![u32::MAX; n];
    let mut count = vec![0u32; n];
    let mut order: Vec<usize> = rows.to_vec();
    order.sort_by_key(|&i| groups[i]);
    for &i in &order {
        let g = groups[i];
        for b in feats(i) {
            let b = b as usize;
            if last[b] != g {
                last[b] = g;
                count[b] += 1;
            }
        }
    }
    count
}

/// Learn the line scorer on `rows` of `sets`.
pub fn train_lines(
    sets: &[LineSet],
    groups: &[u32],
    rows: &[usize],
    r: &Recipe,
) -> (Vec<f32>, [f32; POS_BUCKETS]) {
    let mut w = AdaGrad::new(1 << r.line_bits);
    w.sgd = r.line_sgd;
    let mask = group_mask(
        1 << r.line_bits,
        rows,
        groups,
        |i| Box::new(sets[i].feats.iter().copied()),
        r.min_groups,
    );
    let mut pw = AdaGrad::new(POS_BUCKETS);
    let mut rng = fastrand::Rng::with_seed(r.seed);
    let mut order: Vec<usize> = rows
        .iter()
        .copied()
        .filter(|&i| sets[i].lines.iter().any(|l| l.4))
        .collect();
    let mut s: Vec<f32> = Vec::new();
    let mut q: Vec<f32> = Vec::new();
    for _ in 0..r.line_epochs {
        rng.shuffle(&mut order);
        for &i in &order {
            let set = &sets[i];
            s.clear();
            for &(a, b, sc, pb, _) in &set.lines {
                let c: f32 = set.feats[a as usize..b as usize]
                    .iter()
                    .map(|&f| w.w[f as usize])
                    .sum();
                s.push(c * sc + pw.w[pb as usize]);
            }
            q.clear();
            q.extend(
                set.lines
                    .iter()
                    .zip(&s)
                    .map(|(l, &v)| if l.4 { v } else { f32::NEG_INFINITY }),
            );
            softmax(&mut s);
            softmax(&mut q);
            for (j, &(a, b, sc, pb, _)) in set.lines.iter().enumerate() {
                let g = s[j] - if q[j].is_finite() { q[j] } else { 0.0 };
                if g.abs() < 1e-5 {
                    continue;
                }
                for &f in &set.feats[a as usize..b as usize] {
                    if mask[f as usize] {
                        w.step(f as usize, g * sc, r.line_lr, r.l2);
                    }
                }
                pw.step(pb as usize, g, r.line_lr, 0.0);
            }
        }
    }
    let mut pos = [0f32; POS_BUCKETS];
    pos.copy_from_slice(&pw.w);
    (w.w, pos)
}

/// One log's re-ranker candidates: base scores, features, in the chunk.
type RerankList = (Vec<f32>, Vec<[f32; RERANK_F]>, Vec<bool>);

/// Learn the evidence re-ranker: listwise softmax over each log's
/// candidates (score + weights · features) whose target is "a line of the
/// human chunk"; logs with no candidate in the chunk are skipped.
pub fn train_rerank(lists: &[(Vec<RerankCand>, (u64, u64))], r: &Recipe) -> [f32; RERANK_F] {
    let (epochs, lr, l2) = (20, 0.05, 1e-3);
    let mut w = AdaGrad::new(RERANK_F);
    let prepared: Vec<RerankList> = lists
        .iter()
        .filter(|(c, (a, b))| c.iter().any(|x| (*a..=*b).contains(&x.no)))
        .map(|(c, (a, b))| {
            let mut fs = Vec::with_capacity(c.len());
            for i in 0..c.len() {
                let mut f = [0f32; RERANK_F];
                rerank_features(c, i, &mut f);
                fs.push(f);
            }
            let base = c.iter().map(|x| x.score).collect();
            let inside = c.iter().map(|x| (*a..=*b).contains(&x.no)).collect();
            (base, fs, inside)
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(r.seed ^ 0x7e7a);
    let mut order: Vec<usize> = (0..prepared.len()).collect();
    let mut s = Vec::new();
    let mut q = Vec::new();
    for _ in 0..epochs {
        rng.shuffle(&mut order);
        for &k in &order {
            let (base, fs, inside) = &prepared[k];
            s.clear();
            s.extend(
                base.iter()
                    .zip(fs)
                    .map(|(b, f)| b + f.iter().zip(&w.w).map(|(a, c)| a * c).sum::<f32>()),
            );
            q.clear();
            q.extend(
                s.iter()
                    .zip(inside)
                    .map(|(&v, &i)| if i { v } else { f32::NEG_INFINITY }),
            );
            softmax(&mut s);
            softmax(&mut q);
            for (j, f) in fs.iter().enumerate() {
                let g = s[j] - if q[j].is_finite() { q[j] } else { 0.0 };
                if g.abs() < 1e-6 {
                    continue;
                }
                for (d, &v) in f.iter().enumerate() {
                    if v != 0.0 {
                        w.step(d, g * v, lr, l2);
                    }
                }
            }
        }
    }
    let mut out = [0f32; RERANK_F];
    out.copy_from_slice(&w.w);
    out
}

/// The class scorer: the mean of [`CLASS_BAG`] softmax regressions with
/// group-aware L2 ([`CLASS_GROUP_L2`]), each in its own example order.
pub fn train_class_scorer(
    feats: &[Vec<(u32, f32)>],
    labels: &[Class],
    groups: &[u32],
    r: &Recipe,
) -> (Vec<f32>, [f32; N_CLASSES]) {
    let mut w = vec![0f32; (1 << r.class_bits) * N_CLASSES];
    let mut b = [0f32; N_CLASSES];
    for k in 0..CLASS_BAG {
        let rk = Recipe {
            seed: r.seed.wrapping_add(1000 * k),
            ..*r
        };
        let (wk, bk) = train_classes(feats, labels, groups, &rk, CLASS_GROUP_L2);
        for (a, v) in w.iter_mut().zip(&wk) {
            *a += v / CLASS_BAG as f32;
        }
        for (a, v) in b.iter_mut().zip(&bk) {
            *a += v / CLASS_BAG as f32;
        }
    }
    (w, b)
}

/// Learn one softmax regression from class features; `group_l2` is the
/// exponent of the group-aware L2 ([`CLASS_GROUP_L2`]; 0: uniform).
pub fn train_classes(
    feats: &[Vec<(u32, f32)>],
    labels: &[Class],
    groups: &[u32],
    r: &Recipe,
    group_l2: f32,
) -> (Vec<f32>, [f32; N_CLASSES]) {
    let mut w = AdaGrad::new((1 << r.class_bits) * N_CLASSES);
    w.sgd = r.class_sgd;
    let rows: Vec<usize> = (0..labels.len()).collect();
    // Per bucket: the number of training groups it occurs in, which gates
    // it (`min_groups`) and sets its L2 multiplier.
    let ng = group_counts(1 << r.class_bits, &rows, groups, |i| {
        Box::new(feats[i].iter().map(|f| f.0))
    });
    let mask: Vec<bool> = ng.iter().map(|&g| g >= r.min_groups).collect();
    let l2m: Vec<f32> = ng
        .iter()
        .map(|&g| r.class_l2 * (8.0 / g.max(1) as f32).powf(group_l2))
        .collect();
    let mut b = AdaGrad::new(N_CLASSES);
    let mut count = [0usize; N_CLASSES];
    for l in labels {
        count[l.index()] += 1;
    }
    let n = labels.len().max(1) as f32;
    // Balanced weights, softened (power CLASS_BALANCE).
    let cw: Vec<f32> = count
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                (n / (N_CLASSES as f32 * c as f32)).powf(CLASS_BALANCE)
            }
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(
        r.seed ^ 0x5eed ^ r.order_salt.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let mut order: Vec<usize> = (0..labels.len()).collect();
    let mut z = [0f32; N_CLASSES];
    for _ in 0..r.class_epochs {
        rng.shuffle(&mut order);
        for &i in &order {
            z.copy_from_slice(&b.w);
            for &(k, v) in &feats[i] {
                let row = k as usize * N_CLASSES;
                for (c, zc) in z.iter_mut().enumerate() {
                    *zc += v * w.w[row + c];
                }
            }
            softmax(&mut z);
            let y = labels[i].index();
            let wt = cw[y];
            for (c, &zc) in z.iter().enumerate() {
                let g = wt * (zc - if c == y { 1.0 } else { 0.0 });
                if g.abs() < 1e-6 {
                    continue;
                }
                for &(k, v) in &feats[i] {
                    if mask[k as usize] {
                        let l2 = l2m[k as usize];
                        w.step(k as usize * N_CLASSES + c, g * v, r.class_lr, l2);
                    }
                }
                b.step(c, g, r.class_lr, 0.0);
            }
        }
    }
    let mut bias = [0f32; N_CLASSES];
    bias.copy_from_slice(&b.w);
    (w.w, bias)
}

/// Train a model on `rows` (indices into `data` and `sets`).
pub fn train(
    data: &[Example],
    sets: &[LineSet],
    rows: &[usize],
    r: &Recipe,
    note: &str,
) -> CilogModel {
    let groups = group_ids(data);
    let (line_w, pos_w) = train_lines(sets, &groups, rows, r);
    let mut p = Params::zeros(r.line_bits, r.class_bits);
    p.line_w = line_w;
    p.pos_w = pos_w;
    p.note = note.to_string();
    // Quantise the line scorer first so the class scorer learns from the
    // evidence the shipped model will pick.
    let p = Params::from_bytes(&p.to_bytes()).expect("fresh model round-trips");
    let m = CilogModel::from_params(p);
    // The evidence re-ranker, on the candidates the quantised line scorer
    // finds in the training logs.
    // (In-sample candidates: a cross-fitted variant, candidates of each
    // half of the repositories from a line scorer trained on the other
    // half, was worse: see the model card.)
    let m = {
        let lists: Vec<(Vec<RerankCand>, (u64, u64))> = rows
            .iter()
            .filter_map(|&i| {
                let chunk = data[i].chunk?;
                let mut s = m.scanner();
                s.feed(&data[i].bytes);
                Some((s.finish_scan().cands, chunk))
            })
            .collect();
        let mut p = (*m.p).clone();
        p.rerank_w = train_rerank(&lists, r);
        CilogModel::from_bytes(&p.to_bytes()).expect("fresh model round-trips")
    };
    // Per training log: (class features, failing-step features).
    type Feats = Vec<(u32, f32)>;
    let scans: Vec<(Feats, Feats)> = rows
        .iter()
        .map(|&i| {
            let mut s = m.scanner();
            s.feed(&data[i].bytes);
            let sc = s.finish_scan();
            (sc.class_features, sc.region_features)
        })
        .collect();
    let mut feats: Vec<Vec<(u32, f32)>> = scans.iter().map(|s| s.0.clone()).collect();
    let mut labels: Vec<Class> = rows.iter().map(|&i| data[i].label).collect();
    let mut row_groups: Vec<u32> = rows.iter().map(|&i| groups[i]).collect();
    // The human chunks as extra examples: the clean version of what the
    // evidence should look like (+3 points of grouped-CV accuracy).
    {
        for (&i, scan) in rows.iter().zip(&scans) {
            if let Some(t) = chunk_picked(&data[i]) {
                // The failing step's features are those of the log.
                let mut f = super::class_features(m.params(), &t);
                f.extend_from_slice(&scan.1);
                feats.push(f);
                labels.push(data[i].label);
                row_groups.push(groups[i]);
            }
        }
    }
    let (class_w, class_b) = train_class_scorer(&feats, &labels, &row_groups, r);
    // The evidence class scorer: the 6th revision's (one regression,
    // uniform L2); its per-line entropies choose the evidence line better.
    let (ev_w, ev_b) = train_classes(&feats, &labels, &row_groups, r, 0.0);
    let mut p = (*m.p).clone();
    p.class_w = class_w;
    p.class_b = class_b;
    p.ev_w = ev_w;
    p.ev_b = ev_b;
    // What ships is what is evaluated: round-trip through the file format.
    CilogModel::from_bytes(&p.to_bytes()).expect("fresh model round-trips")
}

/// A number per distinct group.
pub fn group_ids(data: &[Example]) -> Vec<u32> {
    let mut names: Vec<&str> = data.iter().map(|e| e.group.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    data.iter()
        .map(|e| names.binary_search(&e.group.as_str()).unwrap_or(0) as u32)
        .collect()
}

/// The human chunk as picked lines (up to [`TOP_N`](super::TOP_N) pieces
/// of one line plus its following lines), or None without a chunk.
pub fn chunk_picked(ex: &Example) -> Option<Vec<super::Picked>> {
    let (a, b) = ex.chunk?;
    let mut lines: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut sp = LineSplitter::new();
    let mut emit = |no: u64, s: &[u8]| {
        if (a..=b).contains(&no) && lines.len() < 64 {
            lines.push((no, s[..s.len().min(super::KEEP)].to_vec()));
        }
    };
    sp.feed(&ex.bytes, &mut emit);
    sp.finish(&mut emit);
    if lines.is_empty() {
        return None;
    }
    let per = 1 + super::CTX_AFTER;
    Some(
        lines
            .chunks(per)
            .take(super::TOP_N)
            .map(|c| super::Picked {
                no: c[0].0,
                score: 0.0,
                text: c[0].1.clone(),
                before: Vec::new(),
                after: c[1..].to_vec(),
                cmd: None,
            })
            .collect(),
    )
}

/// Folds by group: each group's examples all go to one fold.
pub fn group_folds(data: &[Example], k: usize, seed: u64) -> Vec<usize> {
    let mut groups: Vec<&str> = data.iter().map(|e| e.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut rng = fastrand::Rng::with_seed(seed);
    rng.shuffle(&mut groups);
    data.iter()
        .map(|e| {
            groups
                .iter()
                .position(|g| *g == e.group)
                .expect("group listed")
                % k.max(1)
        })
        .collect()
}

/// How the evaluation's folds are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Split {
    /// Folds grouped by repository: no repository in both train and test
    /// (the issue's protocol; what a repository sift never saw gets).
    #[default]
    Repos,
    /// Folds over logs, stratified by class, repositories shared between
    /// train and test: what an operator who retrains on labelled logs of
    /// their own repositories can expect (a diagnostic, not the target).
    Logs,
}

/// Fold of each log under `split`.
pub fn folds_for(data: &[Example], k: usize, seed: u64, split: Split) -> Vec<usize> {
    match split {
        Split::Repos => group_folds(data, k, seed),
        Split::Logs => class_folds(data, k, seed),
    }
}

/// Stratified folds over logs: each class's logs, shuffled, dealt round
/// robin (the next class starts where the last one stopped, so the folds'
/// sizes differ by at most one).
pub fn class_folds(data: &[Example], k: usize, seed: u64) -> Vec<usize> {
    let k = k.max(1);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut folds = vec![0; data.len()];
    let mut next = 0usize;
    for c in Class::ALL {
        let mut rows: Vec<usize> = (0..data.len()).filter(|&i| data[i].label == c).collect();
        rng.shuffle(&mut rows);
        for i in rows {
            folds[i] = next % k;
            next += 1;
        }
    }
    folds
}

/// Evaluation results.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub n: usize,
    pub correct: usize,
    /// confusion[true][pred]
    pub confusion: [[usize; N_CLASSES]; N_CLASSES],
    pub with_chunk: usize,
    pub evidence_in_chunk: usize,
    pub predictions: Vec<(usize, Verdict)>,
}

impl Report {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n.max(1) as f64
    }

    pub fn evidence_share(&self) -> f64 {
        self.evidence_in_chunk as f64 / self.with_chunk.max(1) as f64
    }

    /// (support, precision, recall, f1) of a class.
    pub fn per_class(&self, c: usize) -> (usize, f64, f64, f64) {
        let tp = self.confusion[c][c] as f64;
        let support: usize = self.confusion[c].iter().sum();
        let predicted: usize = (0..N_CLASSES).map(|t| self.confusion[t][c]).sum();
        let p = if predicted > 0 {
            tp / predicted as f64
        } else {
            0.0
        };
        let r = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        (support, p, r, f)
    }

    /// Macro-F1 over classes with at least `min_support` examples.
    pub fn macro_f1(&self, min_support: usize) -> f64 {
        let fs: Vec<f64> = (0..N_CLASSES)
            .map(|c| self.per_class(c))
            .filter(|x| x.0 >= min_support)
            .map(|x| x.3)
            .collect();
        fs.iter().sum::<f64>() / fs.len().max(1) as f64
    }

    pub fn add(&mut self, i: usize, ex: &Example, v: Verdict) {
        self.n += 1;
        if v.class == ex.label {
            self.correct += 1;
        }
        self.confusion[ex.label.index()][v.class.index()] += 1;
        if let Some((a, b)) = ex.chunk {
            self.with_chunk += 1;
            if (a..=b).contains(&v.line) {
                self.evidence_in_chunk += 1;
            }
        }
        self.predictions.push((i, v));
    }

    /// Selective accuracy: for each confidence floor, the share of logs
    /// whose verdict reaches it (coverage) and the accuracy on those (and
    /// how often the evidence line is inside their chunk): what a rule
    /// with `min_confidence` acts on.
    pub fn coverage_table(&self, data: &[Example]) -> String {
        let mut s = String::from("confidence >=  coverage  accuracy  evidence in chunk\n");
        for floor in [0.0f32, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8] {
            let (mut n, mut ok, mut wc, mut inside) = (0usize, 0usize, 0usize, 0usize);
            for (i, v) in &self.predictions {
                if v.confidence < floor {
                    continue;
                }
                let Some(e) = data.get(*i) else { continue };
                n += 1;
                ok += usize::from(v.class == e.label);
                if let Some((a, b)) = e.chunk {
                    wc += 1;
                    inside += usize::from((a..=b).contains(&v.line));
                }
            }
            let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            s.push_str(&format!(
                "{floor:>13.1}  {:>8.3}  {:>8.3}  {:>17.3}\n",
                frac(n, self.predictions.len()),
                frac(ok, n),
                frac(inside, wc)
            ));
        }
        s
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str("class       support  precision  recall     F1\n");
        for c in Class::ALL {
            let (n, p, r, f) = self.per_class(c.index());
            s.push_str(&format!(
                "{:<11} {:>7}  {:>9.3}  {:>6.3}  {:>5.3}\n",
                c.as_str(),
                n,
                p,
                r,
                f
            ));
        }
        s
    }
}

/// Grouped k-fold cross-validation of the recipe.
pub fn cross_validate(
    data: &[Example],
    sets: &[LineSet],
    k: usize,
    r: &Recipe,
    split: Split,
) -> Report {
    let mut reps = cross_validate_as(data, sets, k, r, split, &[None]);
    reps.swap_remove(0)
}

/// [`cross_validate`] with each held-out log also scored as another CI
/// system would have written it (`Some(format)`, see
/// [`super::reformat`]; `None`: as it is). Training stays on the logs as
/// they are; one report per view, over the same models.
pub fn cross_validate_as(
    data: &[Example],
    sets: &[LineSet],
    k: usize,
    r: &Recipe,
    split: Split,
    views: &[Option<super::reformat::CiFormat>],
) -> Vec<Report> {
    let folds = folds_for(data, k, r.seed, split);
    let mut reps = vec![Report::default(); views.len()];
    for f in 0..k {
        let train_rows: Vec<usize> = (0..data.len()).filter(|&i| folds[i] != f).collect();
        let m = train(data, sets, &train_rows, r, "cv");
        for i in (0..data.len()).filter(|&i| folds[i] == f) {
            for (rep, &view) in reps.iter_mut().zip(views) {
                let v = match view {
                    None => m.classify(&data[i].bytes),
                    Some(to) => m.classify(&super::reformat::from_travis(&data[i].bytes, to)),
                };
                rep.add(i, &data[i], v);
            }
        }
    }
    for rep in &mut reps {
        rep.predictions.sort_by_key(|p| p.0);
    }
    reps
}

/// Adaptation to new repositories: grouped CV by repository, where each
/// held-out repository also gives its first `adapt` logs (in data order)
/// to training, as an operator who labels a few of a new repository's logs
/// would. Returns the zero-shot report (the plain grouped-CV model) and the
/// adapted one, both over the same logs: the held-out logs past each
/// repository's first `adapt` (repositories with no more logs drop out).
pub fn adapt_cv(
    data: &[Example],
    sets: &[LineSet],
    k: usize,
    r: &Recipe,
    adapt: usize,
) -> (Report, Report) {
    let folds = group_folds(data, k, r.seed);
    let mut seen_in_repo: std::collections::HashMap<&str, usize> = Default::default();
    let seen: Vec<bool> = data
        .iter()
        .map(|e| {
            let n = seen_in_repo.entry(e.group.as_str()).or_default();
            *n += 1;
            *n <= adapt
        })
        .collect();
    let (mut zero, mut adapted) = (Report::default(), Report::default());
    for f in 0..k {
        let base: Vec<usize> = (0..data.len()).filter(|&i| folds[i] != f).collect();
        let extra: Vec<usize> = (0..data.len())
            .filter(|&i| folds[i] == f && seen[i])
            .collect();
        let test: Vec<usize> = (0..data.len())
            .filter(|&i| folds[i] == f && !seen[i])
            .collect();
        if test.is_empty() {
            continue;
        }
        let m0 = train(data, sets, &base, r, "cv zero-shot");
        let rows: Vec<usize> = base.iter().chain(&extra).copied().collect();
        let m1 = train(data, sets, &rows, r, "cv adapted");
        for &i in &test {
            zero.add(i, &data[i], m0.classify(&data[i].bytes));
            adapted.add(i, &data[i], m1.classify(&data[i].bytes));
        }
    }
    zero.predictions.sort_by_key(|p| p.0);
    adapted.predictions.sort_by_key(|p| p.0);
    (zero, adapted)
}

/// Diagnostic: the class scorer trained and tested on the human chunks.
pub fn oracle_cv(data: &[Example], k: usize, r: &Recipe, split: Split) -> Report {
    let folds = folds_for(data, k, r.seed, split);
    let groups = group_ids(data);
    let p0 = Params::zeros(r.line_bits, r.class_bits);
    let feats: Vec<Option<Vec<(u32, f32)>>> = data
        .iter()
        .map(|e| chunk_picked(e).map(|t| super::class_features(&p0, &t)))
        .collect();
    let mut rep = Report::default();
    for f in 0..k {
        let tr: Vec<usize> = (0..data.len())
            .filter(|&i| folds[i] != f && feats[i].is_some())
            .collect();
        let fx: Vec<Vec<(u32, f32)>> = tr
            .iter()
            .map(|&i| feats[i].clone().unwrap_or_default())
            .collect();
        let lab: Vec<Class> = tr.iter().map(|&i| data[i].label).collect();
        let g: Vec<u32> = tr.iter().map(|&i| groups[i]).collect();
        let (w, b) = train_class_scorer(&fx, &lab, &g, r);
        let mut p = p0.clone();
        p.class_w = w;
        p.class_b = b;
        for i in (0..data.len()).filter(|&i| folds[i] == f) {
            let Some(fi) = &feats[i] else { continue };
            let pr = class_probs(&p, fi);
            let ci = (0..N_CLASSES).fold(0, |a, c| if pr[c] > pr[a] { c } else { a });
            let v = Verdict {
                class: Class::ALL[ci],
                confidence: pr[ci],
                line: data[i].chunk.map_or(0, |c| c.0),
                text: String::new(),
                context: Vec::new(),
            };
            rep.add(i, &data[i], v);
        }
    }
    rep
}

/// Class probabilities of a scanned log (for diagnostics).
pub fn probs_of(m: &CilogModel, log: &[u8]) -> [f32; N_CLASSES] {
    let mut s = m.scanner();
    s.feed(log);
    let sc = s.finish_scan();
    super::scanned_probs(m.params(), &sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes() {
        assert_eq!(
            csv_fields(r#"a,"b,""c""",,d"#),
            vec!["a", "b,\"c\"", "", "d"]
        );
    }
}
