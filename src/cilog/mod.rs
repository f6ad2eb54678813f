//! Why did this CI build fail? A streaming classifier for CI logs.
//!
//! Pipeline, one pass over the bytes, memory bounded whatever the length:
//! 1. [`normalize`]: split into the lines a terminal would show (`\r`
//!    progress collapsed), strip ANSI codes, timestamps and fold markers;
//!    line numbers stay those of the original log.
//! 2. Line scorer (learned from the human failure chunks): hashed token
//!    features of each line → a content score. The scanner keeps the best
//!    [`TOP_K`] lines with their context and a tail window of the last
//!    [`TAIL`] lines.
//! 3. At the end, once the failing step is known, a second stage adds a
//!    learned position weight (place relative to the failing step) and the
//!    weights of the line's content features crossed with its zone
//!    ([`features::zone`]) and of its failure signatures
//!    ([`features::SIGS`]) crossed with its zone; the best lines, their
//!    context and the failing step's output and command (their hashed
//!    tokens and failure signatures) feed a multiclass linear model
//!    (learned from the labels) → class and confidence.
//! 4. A few rules ([`rules`]) for out-of-memory and non-Travis timeout
//!    wordings, checked near the end and around the evidence only, and for
//!    a test killed for time in one of the chosen lines.

pub mod cli;
pub mod features;
pub mod model;
pub mod normalize;
pub mod reformat;
pub mod rules;
pub mod train;

/// Build the classifier's pattern automata (signature DFA, cue and rule
/// phrases: a few milliseconds, once per process) ahead of the first log.
pub fn warm() {
    features::warm();
    rules::warm();
}

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

use features::{
    SEED_CLASS_CMD, SEED_CLASS_CTX, SEED_CLASS_CUE, SEED_CLASS_LINE, SEED_CLASS_SIG, SEED_LINE,
    bucket,
};
use model::Params;
use normalize::LineSplitter;

/// Best lines kept by content score.
pub const TOP_K: usize = 32;
/// Last lines kept (≥ the distance at which position weights stop changing).
pub const TAIL: usize = 256;
/// Non-blank lines of context kept before and after a candidate.
pub const CTX_BEFORE: usize = 3;
pub const CTX_AFTER: usize = 6;
/// Bytes of a line kept for evidence and context.
pub const KEEP: usize = 1024;
/// Lines whose features make the class decision.
pub const TOP_N: usize = 3;
/// Candidates (best by content + position) the evidence re-ranker orders.
pub const RERANK_K: usize = 8;
/// Candidate lines (best by content + position, before re-ranking) whose
/// own class probabilities make the decision: per class, nearly the most
/// any of them gives it (see [`scanned_probs`] and the model card, 5th and
/// 8th revisions).
pub const PER_LINE_K: usize = 8;
/// Features of the evidence re-ranker (see [`rerank_features`]).
pub const RERANK_F: usize = 35;
/// Weight of a candidate line's class entropy against its re-ranked score
/// when choosing the evidence (see [`decide`]; 3, 4, 5, 8 measured, see
/// the model card).
pub const EV_ENTROPY: f32 = 5.0;
/// Weight of the evidence line's own class distribution in the decision,
/// against the pooled candidate lines ([`POOL_P`]; 0.2, 0.3, 0.4,
/// 0.6 measured, see the model card).
pub const EV_MIX: f32 = 0.3;
/// Exponent of the power mean that pools the candidate lines' class
/// probabilities (per class, (Σ q^p)^(1/p), renormalised): close to the
/// per-class maximum (p = ∞, 5th to 7th revisions), a little softer (4, 8,
/// 16, 32 measured, see the model card, 8th revision).
pub const POOL_P: f32 = 16.0;
/// Lines at the end checked by the rules.
pub const RULE_TAIL: usize = 30;

pub const N_CLASSES: usize = 9;
/// Value of a lexicon cue feature relative to the (unit-norm) bag of words.
pub const CUE_SCALE: f32 = 0.5;
/// Without a failed-step marker, the failing step is taken to be the last
/// lines of the log.
pub const REGION_NO_MARKER: u64 = 60;

/// Scales of the failure-signature features relative to the (unit-norm)
/// bag of words: in the best lines, their context and their command
/// (per line share), in the failing step (unit norm), and of the family
/// features relative to their patterns' (see the model card for the
/// values measured).
pub const SIG_LINE_SCALE: f32 = 0.25;
pub const SIG_REGION_SCALE: f32 = 1.0;
pub const SIG_FAMILY_SCALE: f32 = 1.0;

/// The failure class of a CI log (see the data's LABELLING.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// The job or a step ran out of time.
    Timeout,
    /// Out of memory.
    Oom,
    /// The CI platform or an unrelated external service failed.
    Infra,
    /// Installing or resolving dependencies or the toolchain failed.
    Dependency,
    /// Building the project's own code failed.
    Compile,
    /// A static check failed.
    Lint,
    /// Tests ran and failed.
    Test,
    /// The build's own scripts or configuration are wrong.
    Config,
    /// No basis for a decision.
    Unknown,
}

impl Class {
    pub const ALL: [Class; N_CLASSES] = [
        Class::Timeout,
        Class::Oom,
        Class::Infra,
        Class::Dependency,
        Class::Compile,
        Class::Lint,
        Class::Test,
        Class::Config,
        Class::Unknown,
    ];

    /// The lower-case name used in labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Timeout => "timeout",
            Class::Oom => "oom",
            Class::Infra => "infra",
            Class::Dependency => "dependency",
            Class::Compile => "compile",
            Class::Lint => "lint",
            Class::Test => "test",
            Class::Config => "config",
            Class::Unknown => "unknown",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A class name that is not one of [`Class::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown CI-log class {0:?} (known: timeout, oom, infra, dependency, compile, lint, test, config, unknown)"
)]
pub struct ParseClassError(pub String);

impl FromStr for Class {
    type Err = ParseClassError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Class::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| ParseClassError(s.to_string()))
    }
}

/// What the classifier says about one log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub class: Class,
    /// Probability of `class` under the model (0..=1).
    pub confidence: f32,
    /// 1-based line number of the evidence in the original log; 0 if none.
    pub line: u64,
    /// The evidence line, normalised (at most [`KEEP`] bytes).
    pub text: String,
    /// A few normalised non-blank lines around the evidence, with their numbers.
    pub context: Vec<(u64, String)>,
}

impl Verdict {
    fn empty() -> Verdict {
        Verdict {
            class: Class::Unknown,
            confidence: 0.0,
            line: 0,
            text: String::new(),
            context: Vec::new(),
        }
    }
}

/// Why a model could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum CilogError {
    #[error("cannot read or write CI-log model file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a sift CI-log model file (bad magic; expected \"SIFTCIL\")")]
    BadMagic,
    #[error(
        "unsupported CI-log model file version {0} (this sift reads version {v}; retrain with `sift train cilog`)",
        v = model::VERSION
    )]
    Version(u32),
    #[error(
        "CI-log model file truncated: needed {needed} bytes at offset {offset}, file has {len}; retrain with `sift train cilog`"
    )]
    Truncated {
        needed: usize,
        offset: usize,
        len: usize,
    },
    #[error(
        "CI-log model file checksum mismatch (stored {stored:016x}, computed {computed:016x}): the file is corrupt"
    )]
    Checksum { stored: u64, computed: u64 },
    #[error("invalid CI-log model file: {0}")]
    Invalid(String),
}

/// A trained CI-log classifier. Cheap to clone (shared weights).
#[derive(Debug, Clone)]
pub struct CilogModel {
    p: Arc<Params>,
}

impl CilogModel {
    /// Load a model file (checksummed; corrupt or truncated files are errors).
    pub fn load(path: &Path) -> Result<CilogModel, CilogError> {
        Params::load(path).map(CilogModel::from_params)
    }

    /// Parse a model from the bytes of a model file.
    pub fn from_bytes(b: &[u8]) -> Result<CilogModel, CilogError> {
        Params::from_bytes(b).map(CilogModel::from_params)
    }

    /// Write the model file (atomically: temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), CilogError> {
        self.p.save(path)
    }

    /// The bytes of the model file.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.p.to_bytes()
    }

    pub fn from_params(p: Params) -> CilogModel {
        CilogModel { p: Arc::new(p) }
    }

    pub fn params(&self) -> &Params {
        &self.p
    }

    /// What the model was trained on.
    pub fn note(&self) -> &str {
        &self.p.note
    }

    /// A streaming scanner over one log.
    pub fn scanner(&self) -> Scanner<'_> {
        Scanner::new(&self.p)
    }

    /// A scanner that owns a share of the model (for inspections that move
    /// between threads).
    pub fn owned_scanner(&self) -> Scanner<'static> {
        Scanner::with(PRef::Shared(self.p.clone()))
    }

    /// Classify a whole log held in memory.
    pub fn classify(&self, log: &[u8]) -> Verdict {
        let mut s = self.scanner();
        s.feed(log);
        s.finish()
    }

    /// Content score of one normalised line (no position term).
    #[inline]
    pub fn line_score(&self, line: &[u8]) -> f32 {
        line_score(&self.p, line)
    }
}

#[inline]
fn line_score(p: &Params, line: &[u8]) -> f32 {
    let w = &p.line_q;
    let bits = p.line_bits;
    let mut sum = 0i32;
    let n = features::for_each_feature(line, |h| {
        sum += i32::from(w[bucket(h, SEED_LINE, bits) as usize]);
    });
    sum as f32 * p.line_scale / (n.max(1) as f32).sqrt()
}

/// Slots of [`FixedW`]: the punctuation features (`0x5000 + byte`,
/// `0x5100 + byte`), then the other constant ones (`0x1000`..`0x7000`
/// blocks, 32 each).
const FIXED_N: usize = 0x200 + 8 * 32;
/// Not looked up yet (line weights are `i8`).
const FIXED_UNSET: i16 = i16::MIN;

/// The slot of a constant feature in [`FixedW`], one per hash (`None`: not
/// cached). The punctuation block first; else a hash below 0x8000 with
/// only its block (bits 12..=14) and its low five bits set: shape buckets,
/// `<path>`, `<long>`, cue groups.
#[inline]
fn fixed_slot(h: u32) -> Option<usize> {
    let k = h.wrapping_sub(0x5000);
    if k < 0x200 {
        Some(k as usize)
    } else if h < 0x8000 && h & 0x0fe0 == 0 {
        Some(0x200 + ((h >> 12) * 32 + (h & 31)) as usize)
    } else {
        None
    }
}

/// The line weights of the constant features, looked up on first use by a
/// scanner: a third of a line's features are punctuation, of a few dozen
/// kinds, and two more are shape buckets; each would cost a hash mix.
/// Exact: the weight of a feature is a function of its hash alone, and the
/// scanner's model does not change.
#[derive(Debug)]
struct FixedW([i16; FIXED_N]);

impl FixedW {
    fn new() -> FixedW {
        FixedW([FIXED_UNSET; FIXED_N])
    }
}

/// Sums the line weights of a line's features ([`line_score`]'s sum),
/// through a scanner's [`FixedW`].
struct LineSum<'a> {
    w: &'a [i8],
    bits: u8,
    fixed: &'a mut FixedW,
    sum: i32,
}

impl features::FeatureSink for LineSum<'_> {
    #[inline]
    fn feature(&mut self, h: u32) {
        self.sum += i32::from(self.w[bucket(h, SEED_LINE, self.bits) as usize]);
    }

    #[inline]
    fn fixed(&mut self, h: u32) {
        let Some(k) = fixed_slot(h) else {
            return self.feature(h);
        };
        let c = &mut self.fixed.0[k];
        if *c == FIXED_UNSET {
            *c = i16::from(self.w[bucket(h, SEED_LINE, self.bits) as usize]);
        }
        self.sum += i32::from(*c);
    }
}

/// [`line_score`] with a scanner's constant-feature weights (same result).
#[inline]
fn line_score_cached(p: &Params, fixed: &mut FixedW, line: &[u8]) -> f32 {
    let mut sink = LineSum {
        w: &p.line_q,
        bits: p.line_bits,
        fixed,
        sum: 0,
    };
    let n = features::features_into(line, &mut sink);
    sink.sum as f32 * p.line_scale / (n.max(1) as f32).sqrt()
}

/// Score of a line's content × zone features and its failure-signature ×
/// zone features (normalised as the content score). `sigs`: the line's
/// failure signatures ([`features::for_each_sig`] of `line`), found once
/// per kept line at the end of a scan.
fn zone_score(p: &Params, line: &[u8], sigs: &[u16], zone: usize) -> f32 {
    let w = &p.line_q;
    let bits = p.line_bits;
    let mut sum = 0i32;
    let n = features::for_each_feature(line, |h| {
        sum += i32::from(w[bucket(features::zone_hash(h, zone), SEED_LINE, bits) as usize]);
    });
    // The line's failure signatures (pattern and family, × zone).
    for &i in sigs {
        let i = usize::from(i);
        for h in [
            features::sig_line_pattern(i, zone),
            features::sig_line_family(features::sig_family(i), zone),
        ] {
            sum += i32::from(w[bucket(h, SEED_LINE, bits) as usize]);
        }
    }
    sum as f32 * p.line_scale / (n.max(1) as f32).sqrt()
}

// Signature indices are kept as u16.
const _: () = assert!(features::SIGS.len() < u16::MAX as usize);

/// The failure signatures of a line, appended to `out`.
fn sigs_of(line: &[u8], out: &mut Vec<u16>) {
    features::for_each_sig(line, |i| out.push(i as u16));
}

/// A kept line.
#[derive(Debug, Clone, Default)]
struct Kept {
    no: u64,
    score: f32,
    text: Vec<u8>,
}

impl Kept {
    fn set(&mut self, no: u64, score: f32, s: &[u8]) {
        self.no = no;
        self.score = score;
        self.text.clear();
        self.text.extend_from_slice(&s[..s.len().min(KEEP)]);
    }
}

/// A candidate evidence line with its context.
#[derive(Debug, Clone)]
struct Cand {
    line: Kept,
    before: Vec<(u64, Vec<u8>)>,
    after: Vec<(u64, Vec<u8>)>,
    cmd: Option<(u64, Vec<u8>)>,
}

/// One chosen line at the end of a scan, for classification and training.
#[derive(Debug, Clone)]
pub struct Picked {
    pub no: u64,
    /// Content + position score.
    pub score: f32,
    pub text: Vec<u8>,
    pub before: Vec<(u64, Vec<u8>)>,
    pub after: Vec<(u64, Vec<u8>)>,
    /// The last step command echoed before the line (`$ make test`, ...).
    pub cmd: Option<(u64, Vec<u8>)>,
}

/// Everything a finished scan knows, before the class decision.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub total_lines: u64,
    /// Best lines, best first (at most [`TOP_N`]).
    pub top: Vec<Picked>,
    /// Class features (bucket, value) of the top lines (including
    /// `region_features`).
    pub class_features: Vec<(u32, f32)>,
    /// Class features of the failing step as a whole (its output's and its
    /// command's failure signatures), independent of the chosen lines.
    pub region_features: Vec<(u32, f32)>,
    /// The re-ranker's candidates before re-ranking, best first.
    pub cands: Vec<RerankCand>,
    /// The best [`PER_LINE_K`] lines before re-ranking, best first: each
    /// line's own class features (the line, its context and command, and
    /// `region_features`).
    pub per_line: Vec<Vec<(u32, f32)>>,
    /// The lines of `per_line`, in the same order, with their score after
    /// re-ranking (the evidence order) in `score`.
    pub per_line_picks: Vec<Picked>,
    /// A rule hit: the rule, and the line (with context) it fired on.
    pub rule: Option<(rules::RuleHit, Picked)>,
}

/// Streaming classifier state for one log. Memory is bounded: at most
/// [`TOP_K`] candidates with context, a [`TAIL`]-line ring and one line
/// buffer of [`normalize::MAX_LINE`] bytes, whatever the input length.
#[derive(Debug)]
pub struct Scanner<'a> {
    p: PRef<'a>,
    split: LineSplitter,
    st: State,
    bytes: u64,
}

#[derive(Debug)]
struct State {
    cands: Vec<Cand>,
    /// Index and score of the weakest candidate once `cands` is full.
    min: (usize, f32),
    /// Candidates still collecting after-context.
    pending: Vec<usize>,
    /// Ring of the last non-blank lines (tail window; also before-context).
    tail: Vec<Kept>,
    /// Next slot in `tail`; `tail_n` = lines ever pushed.
    tail_at: usize,
    tail_n: u64,
    /// Ring of the last command lines, and its next slot.
    cmds: Vec<Kept>,
    cmd_at: usize,
    /// Where the failing step is.
    marks: features::Marks,
    /// Line weights of the constant features.
    fixed: FixedW,
}

/// Command lines remembered.
const CMDS: usize = 8;

/// The model a scanner reads: borrowed, or shared (an owned scanner that
/// can move to another thread on its own).
#[derive(Debug, Clone)]
enum PRef<'a> {
    Borrowed(&'a Params),
    Shared(Arc<Params>),
}

impl std::ops::Deref for PRef<'_> {
    type Target = Params;
    fn deref(&self) -> &Params {
        match self {
            PRef::Borrowed(p) => p,
            PRef::Shared(p) => p,
        }
    }
}

impl<'a> Scanner<'a> {
    fn new(p: &'a Params) -> Scanner<'a> {
        Scanner::with(PRef::Borrowed(p))
    }

    fn with(p: PRef<'a>) -> Scanner<'a> {
        Scanner {
            p,
            split: LineSplitter::new(),
            st: State {
                cands: Vec::with_capacity(TOP_K),
                min: (0, f32::NEG_INFINITY),
                pending: Vec::with_capacity(TOP_K),
                tail: Vec::with_capacity(TAIL),
                tail_at: 0,
                tail_n: 0,
                cmds: Vec::with_capacity(CMDS),
                cmd_at: 0,
                marks: features::Marks::default(),
                fixed: FixedW::new(),
            },
            bytes: 0,
        }
    }

    /// Feed the next bytes of the log; chunks may split lines, UTF-8
    /// characters or escape sequences anywhere.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        let p = &*self.p;
        let st = &mut self.st;
        self.split
            .feed(chunk, &mut |no, line| st.on_line(p, no, line));
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.bytes
    }

    /// Heap bytes held by the scanner's buffers (bounded by construction).
    pub fn retained_bytes(&self) -> usize {
        let kept = |k: &Kept| k.text.capacity() + std::mem::size_of::<Kept>();
        let ctx = |v: &Vec<(u64, Vec<u8>)>| {
            v.capacity() * std::mem::size_of::<(u64, Vec<u8>)>()
                + v.iter().map(|(_, t)| t.capacity()).sum::<usize>()
        };
        self.split.retained()
            + self.st.tail.iter().map(kept).sum::<usize>()
            + self
                .st
                .cands
                .iter()
                .map(|c| kept(&c.line) + ctx(&c.before) + ctx(&c.after))
                .sum::<usize>()
            + self.st.pending.capacity() * std::mem::size_of::<usize>()
    }

    /// End of the log: the verdict.
    pub fn finish(self) -> Verdict {
        let p = self.p.clone();
        let s = self.finish_scan();
        decide(&p, s)
    }

    /// End of the log: the chosen lines and class features, without the
    /// class decision (training uses this).
    pub fn finish_scan(mut self) -> Scanned {
        let p = self.p.clone();
        let p = &*p;
        {
            let st = &mut self.st;
            self.split.finish(&mut |no, line| st.on_line(p, no, line));
        }
        let total = self.split.total_lines();
        self.st.scanned(p, total)
    }
}

impl State {
    fn on_line(&mut self, p: &Params, no: u64, line: &[u8]) {
        let score = line_score_cached(p, &mut self.fixed, line);
        self.marks.on_line(no, line);
        let keep = &line[..line.len().min(KEEP)];
        // After-context of earlier candidates.
        if !self.pending.is_empty() {
            let cands = &mut self.cands;
            self.pending.retain(|&i| {
                let c = &mut cands[i];
                c.after.push((no, keep.to_vec()));
                c.after.len() < CTX_AFTER
            });
        }
        // Candidate set.
        if self.cands.len() < TOP_K || score > self.min.1 {
            let before = self.before();
            let mut k = Kept::default();
            k.set(no, score, line);
            let cand = Cand {
                line: k,
                before,
                after: Vec::with_capacity(CTX_AFTER),
                cmd: self.cmd_before(no),
            };
            let slot = if self.cands.len() < TOP_K {
                self.cands.push(cand);
                self.cands.len() - 1
            } else {
                let i = self.min.0;
                self.cands[i] = cand;
                i
            };
            if !self.pending.contains(&slot) {
                self.pending.push(slot);
            }
            if self.cands.len() == TOP_K {
                let (i, m) = self
                    .cands
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i, c.line.score))
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("TOP_K > 0");
                self.min = (i, m);
            }
        }
        if features::is_command(line) {
            if self.cmds.len() < CMDS {
                let mut k = Kept::default();
                k.set(no, 0.0, line);
                self.cmds.push(k);
            } else {
                self.cmds[self.cmd_at].set(no, 0.0, line);
            }
            self.cmd_at = (self.cmd_at + 1) % CMDS;
        }
        // Tail ring.
        if self.tail.len() < TAIL {
            let mut k = Kept::default();
            k.set(no, score, line);
            self.tail.push(k);
        } else {
            self.tail[self.tail_at].set(no, score, line);
        }
        self.tail_at = (self.tail_at + 1) % TAIL;
        self.tail_n += 1;
    }

    /// The tail ring in order, oldest first.
    fn tail_ordered(&self) -> impl Iterator<Item = &Kept> {
        let n = self.tail.len();
        let start = if n < TAIL { 0 } else { self.tail_at };
        (0..n).map(move |i| &self.tail[(start + i) % n.max(1)])
    }

    /// The latest remembered command line before line `no`.
    fn cmd_before(&self, no: u64) -> Option<(u64, Vec<u8>)> {
        self.cmds
            .iter()
            .filter(|k| k.no < no)
            .max_by_key(|k| k.no)
            .map(|k| (k.no, k.text.clone()))
    }

    /// The last CTX_BEFORE lines (before the one being added).
    fn before(&self) -> Vec<(u64, Vec<u8>)> {
        let n = self.tail.len();
        let k = CTX_BEFORE.min(n);
        let mut v = Vec::with_capacity(k);
        for j in (1..=k).rev() {
            let idx = (self.tail_at + TAIL - j) % TAIL;
            if let Some(t) = self.tail.get(idx) {
                v.push((t.no, t.text.clone()));
            }
        }
        v
    }

    fn scanned(self, p: &Params, total: u64) -> Scanned {
        let marks = self.marks;
        // Second stage, once the failing step is known: the position
        // weight plus the content × zone features of the line.
        let stage2 = |k: &Kept, sigs: &[u16]| {
            let pb = marks.pos(k.no, total);
            p.pos_w[pb] + zone_score(p, &k.text, sigs, features::zone(pb))
        };
        let tail: Vec<&Kept> = self.tail_ordered().collect();
        let tail_first = tail.first().map_or(u64::MAX, |k| k.no);
        // The failure signatures of the tail lines, found once (the second
        // stage and the failing step's features read them).
        let mut sig_idx: Vec<u16> = Vec::new();
        let mut sig_at: Vec<(usize, usize)> = Vec::with_capacity(tail.len());
        for k in &tail {
            let a = sig_idx.len();
            sigs_of(&k.text, &mut sig_idx);
            sig_at.push((a, sig_idx.len()));
        }
        let tail_sigs = |i: usize| &sig_idx[sig_at[i].0..sig_at[i].1];
        // Every line's final score: tail lines, and earlier candidates.
        let mut all: Vec<(f32, Src)> = Vec::with_capacity(tail.len() + self.cands.len());
        for (i, k) in tail.iter().enumerate() {
            all.push((k.score + stage2(k, tail_sigs(i)), Src::Tail(i)));
        }
        let mut sigs = Vec::new();
        // Whether each earlier candidate has a failure signature (its
        // shape, below, reads it rather than matching the line again).
        let mut cand_sig = vec![false; self.cands.len()];
        for (i, c) in self.cands.iter().enumerate() {
            if c.line.no < tail_first {
                sigs.clear();
                sigs_of(&c.line.text, &mut sigs);
                cand_sig[i] = !sigs.is_empty();
                all.push((c.line.score + stage2(&c.line, &sigs), Src::Cand(i)));
            }
        }
        all.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.no(&tail, &self.cands).cmp(&b.1.no(&tail, &self.cands)))
        });
        // Evidence re-ranker: the best candidates, re-scored by where they
        // stand among each other (the first line of a block of failure
        // lines rather than the summary that follows it).
        all.truncate(RERANK_K.max(TOP_N));
        let rcands: Vec<RerankCand> = all
            .iter()
            .take(RERANK_K)
            .map(|&(score, src)| {
                let (no, text, has_sig) = match src {
                    Src::Tail(i) => (tail[i].no, &tail[i].text, !tail_sigs(i).is_empty()),
                    Src::Cand(i) => (self.cands[i].line.no, &self.cands[i].line.text, cand_sig[i]),
                };
                RerankCand {
                    no,
                    score,
                    zone: features::zone(marks.pos(no, total)) as u8,
                    command: features::is_command(text),
                    shape: line_shape(text, has_sig),
                }
            })
            .collect();
        // The class decision reads the lines in their order before
        // re-ranking (measured: re-ranked lines lowered the accuracy).
        let orig: Vec<(f32, Src)> = all.iter().take(TOP_N.max(PER_LINE_K)).copied().collect();
        if p.rerank_w.iter().any(|&w| w != 0.0) {
            let mut f = [0f32; RERANK_F];
            for (i, e) in all.iter_mut().enumerate().take(rcands.len()) {
                rerank_features(&rcands, i, &mut f);
                e.0 += f.iter().zip(&p.rerank_w).map(|(a, b)| a * b).sum::<f32>();
            }
            all.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then_with(|| a.1.no(&tail, &self.cands).cmp(&b.1.no(&tail, &self.cands)))
            });
        }
        let pick = |score: f32, src: Src| -> Picked {
            match src {
                Src::Tail(i) => {
                    let lo = i.saturating_sub(CTX_BEFORE);
                    let hi = (i + 1 + CTX_AFTER).min(tail.len());
                    Picked {
                        no: tail[i].no,
                        score,
                        text: tail[i].text.clone(),
                        before: tail[lo..i].iter().map(|k| (k.no, k.text.clone())).collect(),
                        after: tail[i + 1..hi]
                            .iter()
                            .map(|k| (k.no, k.text.clone()))
                            .collect(),
                        cmd: self.cmd_before(tail[i].no),
                    }
                }
                Src::Cand(i) => {
                    let c = &self.cands[i];
                    Picked {
                        no: c.line.no,
                        score,
                        text: c.line.text.clone(),
                        before: c.before.clone(),
                        after: c.after.clone(),
                        cmd: c.cmd.clone(),
                    }
                }
            }
        };
        let top: Vec<Picked> = all
            .iter()
            .take(TOP_N)
            .map(|&(s, src)| pick(s, src))
            .collect();
        let region_features = {
            let fail = marks.fail_line();
            let region = tail
                .iter()
                .enumerate()
                .filter(|(_, k)| match fail {
                    Some(f) => k.no > marks.fail_cmd_line() && k.no <= f,
                    None => k.no + REGION_NO_MARKER > total,
                })
                .map(|(i, _)| tail_sigs(i));
            let fail_cmd = fail.and_then(|_| {
                self.cmds
                    .iter()
                    .find(|k| k.no == marks.fail_cmd_line() && k.no > 0)
            });
            region_features_of_sigs(p, region, fail_cmd.map(|k| k.text.as_slice()))
        };
        let class_features = {
            let t: Vec<Picked> = orig
                .iter()
                .take(TOP_N)
                .map(|&(s, src)| pick(s, src))
                .collect();
            let mut f = class_features(p, &t);
            f.extend_from_slice(&region_features);
            f
        };
        // Each of the best lines on its own (the decision takes, per class,
        // the most any of them gives it).
        let per_line = orig
            .iter()
            .take(PER_LINE_K)
            .map(|&(sc, src)| {
                let mut f = self::class_features(p, &[pick(sc, src)]);
                f.extend_from_slice(&region_features);
                f
            })
            .collect();
        let per_line_picks = orig
            .iter()
            .take(PER_LINE_K)
            .map(|&(sc, src)| {
                let no = src.no(&tail, &self.cands);
                let rs = all
                    .iter()
                    .find(|e| e.1.no(&tail, &self.cands) == no)
                    .map_or(sc, |e| e.0);
                pick(rs, src)
            })
            .collect();
        // Rules: around the best line, then the last lines.
        let mut scratch = Vec::new();
        let mut rule = None;
        if let Some(best) = top.first() {
            let window = best
                .before
                .iter()
                .map(|(n, t)| (*n, t))
                .chain(std::iter::once((best.no, &best.text)))
                .chain(best.after.iter().map(|(n, t)| (*n, t)));
            for (n, t) in window {
                if let Some(h) = rules::check(t, &mut scratch) {
                    if rule_better(h, &rule) {
                        rule = Some((h, n));
                    }
                }
            }
        }
        for k in tail.iter().rev().take(RULE_TAIL) {
            if let Some(h) = rules::check(&k.text, &mut scratch) {
                if rule_better(h, &rule) {
                    rule = Some((h, k.no));
                }
            }
        }
        let rule = rule.map(|(h, no)| {
            let picked = top
                .iter()
                .find(|t| t.no == no)
                .cloned()
                .or_else(|| {
                    tail.iter()
                        .position(|k| k.no == no)
                        .map(|i| pick(tail[i].score + stage2(tail[i], tail_sigs(i)), Src::Tail(i)))
                })
                .unwrap_or_else(|| {
                    // In the context of the best line but outside the tail.
                    let best = &top[0];
                    let text = best
                        .before
                        .iter()
                        .chain(best.after.iter())
                        .find(|(n, _)| *n == no)
                        .map(|(_, t)| t.clone())
                        .unwrap_or_default();
                    Picked {
                        no,
                        score: 0.0,
                        text,
                        before: Vec::new(),
                        after: Vec::new(),
                        cmd: None,
                    }
                });
            (h, picked)
        });
        Scanned {
            total_lines: total,
            top,
            class_features,
            region_features,
            cands: rcands,
            per_line,
            per_line_picks,
            rule,
        }
    }
}

/// A candidate of the evidence re-ranker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RerankCand {
    pub no: u64,
    /// Content + position score.
    pub score: f32,
    /// [`features::zone`] of the line.
    pub zone: u8,
    /// The line echoes a step command (`$ make`).
    pub command: bool,
    /// [`line_shape`] of the line.
    pub shape: u8,
}

/// The shape of a line, without its tokens: bits 0–1 its number of words
/// of letters (0, 1–2, 3–5, 6+), bit 2 more punctuation than letters and
/// digits (separators, progress dots), bit 3 `has_sig`: the line has a
/// failure signature ([`features::SIGS`], already found by the caller),
/// bit 4 indented.
pub fn line_shape(text: &[u8], has_sig: bool) -> u8 {
    // Another CI's failed-step marker has the shape of Travis's.
    let text = features::ci_framing(text).unwrap_or(text);
    let (mut words, mut inword, mut alnum, mut punct) = (0u32, false, 0u32, 0u32);
    for &b in text {
        if b.is_ascii_alphabetic() {
            if !inword {
                words += 1;
            }
            inword = true;
        } else {
            inword = false;
        }
        if b.is_ascii_alphanumeric() {
            alnum += 1;
        } else if !b.is_ascii_whitespace() {
            punct += 1;
        }
    }
    let mut sh = match words {
        0 => 0,
        1..=2 => 1,
        3..=5 => 2,
        _ => 3,
    };
    if punct > alnum {
        sh |= 4;
    }
    if has_sig {
        sh |= 8;
    }
    if text.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        sh |= 16;
    }
    sh
}

/// Features of candidate `i` among `c` (best first): its score gap to the
/// best, its rank, how many candidates lie just before and after it
/// (within 10 lines) and how many better ones within 30 lines, its order
/// by line number, its zone, whether it is a command echo, its
/// [`line_shape`] (8th revision). Generic: no token of the line is used.
pub fn rerank_features(c: &[RerankCand], i: usize, f: &mut [f32; RERANK_F]) {
    f.fill(0.0);
    let Some(me) = c.get(i) else { return };
    let best = c.first().map_or(me.score, |b| b.score);
    f[0] = me.score - best;
    f[1 + match i {
        0..=2 => i,
        3..=5 => 3,
        _ => 4,
    }] = 1.0;
    let (mut after, mut before, mut better_after, mut better_before, mut earlier) = (0, 0, 0, 0, 0);
    for (j, o) in c.iter().enumerate() {
        if j == i {
            continue;
        }
        if o.no < me.no {
            earlier += 1;
        }
        if o.no > me.no && o.no - me.no <= 10 {
            after += 1;
        }
        if o.no < me.no && me.no - o.no <= 10 {
            before += 1;
        }
        if o.score > me.score && o.no > me.no && o.no - me.no <= 30 {
            better_after += 1;
        }
        if o.score > me.score && o.no < me.no && me.no - o.no <= 30 {
            better_before += 1;
        }
    }
    f[6 + after.min(3)] = 1.0;
    f[10 + before.min(3)] = 1.0;
    f[14] = if c.len() > 1 {
        earlier as f32 / (c.len() - 1) as f32
    } else {
        0.0
    };
    f[15] = f32::from(u8::from(earlier == 0));
    f[16 + usize::from(me.zone).min(features::ZONES - 1)] = 1.0;
    f[21 + better_after.min(2)] = 1.0;
    f[24 + better_before.min(2)] = 1.0;
    f[27] = f32::from(u8::from(me.command));
    f[28 + usize::from(me.shape & 3)] = 1.0;
    f[32] = f32::from(me.shape >> 2 & 1);
    f[33] = f32::from(me.shape >> 3 & 1);
    f[34] = f32::from(me.shape >> 4 & 1);
}

/// Timeout outranks oom (the labelling precedence); the first hit of a kind wins.
fn rule_better(h: rules::RuleHit, cur: &Option<(rules::RuleHit, u64)>) -> bool {
    match cur {
        None => true,
        Some((c, _)) => h == rules::RuleHit::Timeout && *c == rules::RuleHit::Oom,
    }
}

#[derive(Debug, Clone, Copy)]
enum Src {
    Tail(usize),
    Cand(usize),
}

impl Src {
    fn no(&self, tail: &[&Kept], cands: &[Cand]) -> u64 {
        match *self {
            Src::Tail(i) => tail[i].no,
            Src::Cand(i) => cands[i].line.no,
        }
    }
}

/// Class features of the best lines: the line itself and its context, each
/// weighted by the line's share of the (softmaxed) scores; L2-normalised.
pub fn class_features(p: &Params, top: &[Picked]) -> Vec<(u32, f32)> {
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(256);
    if top.is_empty() {
        return out;
    }
    let m = top.iter().fold(f32::NEG_INFINITY, |m, t| m.max(t.score));
    let ws: Vec<f32> = top.iter().map(|t| (t.score - m).exp()).collect();
    let z: f32 = ws.iter().sum();
    let shares: Vec<f32> = ws.iter().map(|w| w / z).collect();
    let bits = p.class_bits;
    for (t, &w) in top.iter().zip(&shares) {
        let mut add = |line: &[u8], seed: u32, scale: f32| {
            let start = out.len();
            let n = features::for_each_feature(line, |h| out.push((bucket(h, seed, bits), 0.0)));
            let v = scale / (n.max(1) as f32).sqrt();
            for e in &mut out[start..] {
                e.1 = v;
            }
        };
        add(&t.text, SEED_CLASS_LINE, w);
        for (_, c) in t.before.iter().chain(t.after.iter()) {
            add(c, SEED_CLASS_CTX, w * 0.5);
        }
        if let Some((_, c)) = &t.cmd {
            add(c, SEED_CLASS_CMD, w * 0.5);
        }
    }
    let norm = out.iter().map(|e| e.1 * e.1).sum::<f32>().sqrt();
    if norm > 0.0 {
        for e in &mut out {
            e.1 /= norm;
        }
    }
    // Lexicon cues: per class and slot, the weighted share of lines with a cue.
    let mut cues = [[0f32; N_CLASSES]; 3];
    for (t, w) in top.iter().zip(&shares) {
        let mut put = |line: &[u8], slot: usize, scale: f32| {
            let c = features::cue_counts(line);
            for (k, &n) in c.iter().enumerate() {
                if n > 0 {
                    cues[slot][k] += w * scale;
                }
            }
        };
        put(&t.text, 0, 1.0);
        let nctx = (t.before.len() + t.after.len()).max(1) as f32;
        for (_, c) in t.before.iter().chain(t.after.iter()) {
            put(c, 1, 1.0 / nctx);
        }
        if let Some((_, c)) = &t.cmd {
            put(c, 2, 1.0);
        }
    }
    for (slot, row) in cues.iter().enumerate() {
        for (k, &v) in row.iter().enumerate() {
            if v > 0.0 {
                out.push((
                    bucket(features::cue_feature(k, slot as u32), SEED_CLASS_CUE, bits),
                    v * CUE_SCALE,
                ));
            }
        }
    }
    // Failure signatures, per pattern: the lines, their context, their
    // step command (weighted as the cues).
    let scale = SIG_LINE_SCALE;
    if scale > 0.0 {
        let mut acc: Vec<(u32, f32)> = Vec::new();
        for (t, &w) in top.iter().zip(&shares) {
            let mut put = |line: &[u8], slot: u32, v: f32| {
                let fam_scale = SIG_FAMILY_SCALE;
                features::for_each_sig(line, |i| {
                    let h = features::sig_feature(i, slot);
                    match acc.iter_mut().find(|e| e.0 == h) {
                        Some(e) => e.1 += v,
                        None => acc.push((h, v)),
                    }
                    if fam_scale > 0.0 {
                        let h = features::sig_family_feature(features::sig_family(i), slot);
                        match acc.iter_mut().find(|e| e.0 == h) {
                            Some(e) => e.1 += v * fam_scale,
                            None => acc.push((h, v * fam_scale)),
                        }
                    }
                });
            };
            put(&t.text, 0, w);
            let nctx = (t.before.len() + t.after.len()).max(1) as f32;
            for (_, c) in t.before.iter().chain(t.after.iter()) {
                put(c, 1, w / nctx);
            }
            if let Some((_, c)) = &t.cmd {
                put(c, 2, w);
            }
        }
        for (h, v) in acc {
            out.push((bucket(h, SEED_CLASS_SIG, bits), v * scale));
        }
    }
    out
}

/// Class features of the failing step: which failure signatures occur in
/// its output (`region`: its kept lines) and in its command; unit norm
/// times the region scale.
pub fn region_features<'a>(
    p: &Params,
    region: impl Iterator<Item = &'a [u8]>,
    cmd: Option<&[u8]>,
) -> Vec<(u32, f32)> {
    let sigs: Vec<Vec<u16>> = region
        .map(|line| {
            let mut v = Vec::new();
            sigs_of(line, &mut v);
            v
        })
        .collect();
    region_features_of_sigs(p, sigs.iter().map(Vec::as_slice), cmd)
}

/// [`region_features`] from the failure signatures of the region's lines.
fn region_features_of_sigs<'a>(
    p: &Params,
    region: impl Iterator<Item = &'a [u16]>,
    cmd: Option<&[u8]>,
) -> Vec<(u32, f32)> {
    let scale = SIG_REGION_SCALE;
    let mut hs: Vec<u32> = Vec::new();
    if scale <= 0.0 {
        return Vec::new();
    }
    let fam = SIG_FAMILY_SCALE > 0.0;
    for sigs in region {
        for &i in sigs {
            let i = usize::from(i);
            hs.push(features::sig_feature(i, 3));
            if fam {
                hs.push(features::sig_family_feature(features::sig_family(i), 3));
            }
        }
    }
    if let Some(c) = cmd {
        features::for_each_sig(c, |i| {
            hs.push(features::sig_feature(i, 4));
            if fam {
                hs.push(features::sig_family_feature(features::sig_family(i), 4));
            }
        });
    }
    hs.sort_unstable();
    hs.dedup();
    let v = scale / (hs.len().max(1) as f32).sqrt();
    hs.into_iter()
        .map(|h| (bucket(h, SEED_CLASS_SIG, p.class_bits), v))
        .collect()
}

/// Class probabilities of a finished scan: each of the best
/// [`PER_LINE_K`] lines is scored on its own (its class features and the
/// failing step's), each class gets nearly the highest probability any
/// line gives it (a power mean, [`POOL_P`]), renormalised. A class that
/// one candidate line names clearly is not outvoted by the pooled words of
/// the others (measured: better than the
/// pooled features of the [`TOP_N`] best lines and than their mean; see
/// the model card); the evidence line's own distribution is mixed in
/// (6th revision, [`decision`]). Without candidates, the pooled features
/// decide.
pub fn scanned_probs(p: &Params, s: &Scanned) -> [f32; N_CLASSES] {
    decision(p, s).0
}

/// Class probabilities and the evidence line (an index into
/// `s.per_line_picks`) of a finished scan. Per class, nearly the most any
/// of the candidate lines gives it ([`pool_probs`]); the evidence is the
/// candidate with the best re-ranked score minus [`EV_ENTROPY`] × the entropy of its own class
/// distribution (a line that names its failure kind clearly is more often
/// the human-chosen one), and its own distribution weighs [`EV_MIX`] in
/// the probabilities (see the model card, 6th revision).
fn decision(p: &Params, s: &Scanned) -> ([f32; N_CLASSES], Option<usize>) {
    let line_probs: Vec<[f32; N_CLASSES]> = s.per_line.iter().map(|f| class_probs(p, f)).collect();
    if line_probs.is_empty() {
        return (class_probs(p, &s.class_features), None);
    }
    let mut probs = pool_probs(&line_probs);
    let mut ev_line: Option<usize> = None;
    let mut bv = f32::NEG_INFINITY;
    // The entropies come from the evidence class scorer (7th revision: the
    // class scorer's distributions chose worse lines).
    let ev_probs = s.per_line.iter().map(|f| scores_probs(&p.ev_w, &p.ev_b, f));
    for (j, (q, t)) in ev_probs.zip(&s.per_line_picks).enumerate() {
        let v = t.score - EV_ENTROPY * entropy(&q);
        let earlier = ev_line.is_some_and(|k| t.no < s.per_line_picks[k].no);
        if v > bv || (v == bv && earlier) {
            bv = v;
            ev_line = Some(j);
        }
    }
    if let Some(j) = ev_line {
        for (x, &y) in probs.iter_mut().zip(&line_probs[j]) {
            *x = (1.0 - EV_MIX) * *x + EV_MIX * y;
        }
    }
    (probs, ev_line)
}

/// Per class, the power mean ([`POOL_P`]) of the probabilities the lines
/// give it (nearly the highest), renormalised.
fn pool_probs(lines: &[[f32; N_CLASSES]]) -> [f32; N_CLASSES] {
    let mut probs = [0f32; N_CLASSES];
    for q in lines {
        for (a, &v) in probs.iter_mut().zip(q) {
            *a += v.powf(POOL_P);
        }
    }
    for a in probs.iter_mut() {
        *a = a.powf(1.0 / POOL_P);
    }
    let z: f32 = probs.iter().sum();
    if z > 0.0 {
        for a in probs.iter_mut() {
            *a /= z;
        }
    }
    probs
}

/// Entropy (nats) of a class distribution.
fn entropy(q: &[f32; N_CLASSES]) -> f32 {
    -q.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * x.ln())
        .sum::<f32>()
}

/// Class probabilities from class features.
pub fn class_probs(p: &Params, feats: &[(u32, f32)]) -> [f32; N_CLASSES] {
    scores_probs(&p.class_w, &p.class_b, feats)
}

/// Softmax of a class table (`w[bucket * N_CLASSES + class]`, bias `b`)
/// over class features.
fn scores_probs(w: &[f32], b: &[f32; N_CLASSES], feats: &[(u32, f32)]) -> [f32; N_CLASSES] {
    let mut z = *b;
    for &(b, v) in feats {
        let row = &w[b as usize * N_CLASSES..(b as usize + 1) * N_CLASSES];
        for (zc, w) in z.iter_mut().zip(row) {
            *zc += v * w;
        }
    }
    softmax(&mut z);
    z
}

pub fn softmax(z: &mut [f32]) {
    let m = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut s = 0.0;
    for v in z.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in z.iter_mut() {
        *v /= s;
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The decision: rules first where they fire, else the learned classes.
pub fn decide(p: &Params, s: Scanned) -> Verdict {
    let Some(best) = s.top.first() else {
        return Verdict::empty();
    };
    // The oom and timeout rules read the context of `s.top[0]` (the best
    // re-ranked line) and the last lines (`s.rule`).
    let (probs, ev_line) = decision(p, &s);
    let (ci, conf) =
        probs
            .iter()
            .enumerate()
            .fold((Class::Unknown.index(), f32::MIN), |a, (i, &v)| {
                if v > a.1 { (i, v) } else { a }
            });
    let mut class = Class::ALL[ci];
    let mut conf = conf;
    let mut ev = best;
    if let Some(j) = ev_line {
        ev = &s.per_line_picks[j];
    }
    // A test or command killed for time in one of the lines the class
    // decision reads (the best before re-ranking; 8th revision, so that
    // the re-ranker does not change the class): timeout (the labelling
    // precedence; 23 examples from 6 repositories do not teach it).
    {
        let mut scratch = Vec::new();
        if let Some(t) = s
            .per_line_picks
            .iter()
            .take(TOP_N)
            .find(|t| rules::test_timeout(&t.text, &mut scratch))
        {
            class = Class::Timeout;
            conf = conf.max(0.9).max(probs[class.index()]);
            ev = t;
        }
    }
    if let Some((hit, picked)) = &s.rule {
        class = match hit {
            rules::RuleHit::Timeout => Class::Timeout,
            rules::RuleHit::Oom => Class::Oom,
        };
        conf = conf.max(0.9).max(probs[class.index()]);
        if !picked.text.is_empty() {
            ev = picked;
        }
    }
    let context = ev
        .before
        .iter()
        .chain(ev.after.iter())
        .map(|(n, t)| (*n, lossy(t)))
        .collect::<Vec<_>>();
    let mut context = context;
    context.sort_by_key(|c| c.0);
    Verdict {
        class,
        confidence: conf,
        line: ev.no,
        text: lossy(&ev.text),
        context,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shape_is_token_free() {
        let shape = |t: &[u8]| {
            let mut sigs = Vec::new();
            sigs_of(t, &mut sigs);
            line_shape(t, !sigs.is_empty())
        };
        assert_eq!(shape(b""), 0);
        assert_eq!(shape(b"- - - - - - - -"), 4);
        assert_eq!(shape(b"....................F....."), 1 | 4);
        assert_eq!(shape(b"    at foo.bar(Baz.java:12)"), 2 | 16 | 8);
        assert_eq!(shape(b"error: could not compile the crate now"), 3 | 8);
    }

    #[test]
    fn pooled_probs_follow_the_clearest_line() {
        let mut a = [0.0f32; N_CLASSES];
        a[0] = 0.9;
        a[1] = 0.1;
        let mut b = [0.0f32; N_CLASSES];
        b[0] = 0.2;
        b[1] = 0.8;
        let one = pool_probs(&[a]);
        assert!((one[0] - 0.9).abs() < 1e-5 && (one[1] - 0.1).abs() < 1e-5);
        // Two lines at 0.8 for class 1 do not outvote one line at 0.9 for
        // class 0 much (nearly a maximum), but count a little more than one.
        let p1 = pool_probs(&[a, b]);
        let p2 = pool_probs(&[a, b, b]);
        assert!(p1[0] > p1[1]);
        assert!(p2[1] > p1[1]);
        assert!((p1.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn class_names_round_trip() {
        for c in Class::ALL {
            assert_eq!(c.as_str().parse::<Class>().unwrap(), c);
        }
        assert!("segfault".parse::<Class>().is_err());
    }

    #[test]
    fn zero_model_on_bad_input_is_sane() {
        let m = CilogModel::from_params(Params::zeros(10, 10));
        let v = m.classify(b"");
        assert_eq!((v.class, v.line), (Class::Unknown, 0));
        let junk: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let v = m.classify(&junk);
        assert!(v.confidence.is_finite());
        let long = vec![b'x'; 10 << 20];
        let v = m.classify(&long);
        assert_eq!(v.line, 1);
        assert_eq!(v.text.len(), KEEP);
    }

    #[test]
    fn rerank_features_see_the_block_start() {
        let c = |no, score| RerankCand {
            no,
            score,
            zone: 2,
            command: false,
            shape: 0,
        };
        // Best: a summary at line 120; a block of failure lines at 100..102.
        let cands = [c(120, 5.0), c(100, 4.5), c(101, 4.0), c(102, 3.9)];
        let mut f = [0f32; RERANK_F];
        rerank_features(&cands, 0, &mut f);
        assert_eq!(f[0], 0.0);
        assert_eq!(f[1], 1.0); // rank 0
        assert_eq!(f[15], 0.0); // not the earliest
        assert_eq!(f[14], 1.0); // all others are earlier
        rerank_features(&cands, 1, &mut f);
        assert_eq!(f[0], -0.5);
        assert_eq!(f[15], 1.0); // the earliest
        assert_eq!(f[6 + 2], 1.0); // 2 candidates within 10 lines after
        assert_eq!(f[10], 1.0); // none just before
        assert_eq!(f[21 + 1], 1.0); // one better candidate within 30 after
        assert_eq!(f[16 + 2], 1.0); // zone 2
        // Out of range: all zero, no panic.
        rerank_features(&cands, 9, &mut f);
        assert!(f.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn old_model_versions_are_refused() {
        let mut b = Params::zeros(10, 10).to_bytes();
        assert!(CilogModel::from_bytes(&b).is_ok());
        b[8..12].copy_from_slice(&6u32.to_le_bytes());
        let e = CilogModel::from_bytes(&b).unwrap_err();
        assert!(matches!(e, CilogError::Version(6)), "{e}");
        assert!(e.to_string().contains("retrain"));
    }

    #[test]
    fn verdict_json_shape() {
        let v = Verdict {
            class: Class::Oom,
            confidence: 0.5,
            line: 3,
            text: "Killed".into(),
            context: vec![(2, "x".into())],
        };
        let j = serde_json::to_string(&v).unwrap();
        assert_eq!(
            j,
            r#"{"class":"oom","confidence":0.5,"line":3,"text":"Killed","context":[[2,"x"]]}"#
        );
    }

    #[test]
    fn cached_constant_weights_give_the_same_score() {
        let mut p = Params::zeros(10, 10);
        let mut x = 0x9e37_79b9u32;
        for q in p.line_q.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *q = x as i8;
        }
        let mut fixed = FixedW::new();
        let lines: [&[u8]; 5] = [
            b"[ERROR] a/b/c.rs:12:5: error: x -- *** (y) ==> z!",
            b"--- FAIL: TestX (0.01s) ### [1/2] ~ `q` ; \"r\" {s} <t> | u & v ^ w",
            b"npm ERR! code E404 @scope/pkg@1.2.3 ? % $ # + = , 0123456789abcdef0123456789abcdef0",
            b"",
            b"::: \\ '' ...",
        ];
        for _ in 0..2 {
            for l in lines {
                let a = line_score(&p, l);
                let b = line_score_cached(&p, &mut fixed, l);
                assert_eq!(a.to_bits(), b.to_bits(), "{}", String::from_utf8_lossy(l));
            }
        }
        assert!(fixed.0.iter().any(|&c| c != FIXED_UNSET));
        // One slot per constant feature.
        let mut seen = std::collections::HashMap::new();
        for h in (0x1000..0x1005)
            .chain(0x2000..0x2006)
            .chain([0x3000, 0x4000])
            .chain(0x5000..0x5200)
            .chain(0x7000..0x7020)
        {
            let k = fixed_slot(h).expect("cached");
            assert!(k < FIXED_N);
            assert_eq!(seen.insert(k, h), None, "{h:#x}");
        }
        assert_eq!(fixed_slot(0x5200), None);
        assert_eq!(fixed_slot(0x1020), None);
        assert_eq!(fixed_slot(0x8000), None);
    }

    #[test]
    fn scanner_and_classify_agree_across_chunkings() {
        let m = CilogModel::from_params(Params::zeros(10, 10));
        let log = b"a\r\nb\x1b[31m err\x1b[0m\nKilled\n$ done\n".repeat(50);
        let whole = m.classify(&log);
        for step in [1, 3, 7, 64] {
            let mut s = m.scanner();
            for c in log.chunks(step) {
                s.feed(c);
            }
            assert_eq!(s.bytes_seen(), log.len() as u64);
            assert_eq!(s.finish(), whole);
        }
    }
}
