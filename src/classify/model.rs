//! The linear model and its file format.
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! magic      8 bytes  "SIFTLIN\0"
//! version    u32      2 (1: the FNV word hash of before 2026-11-23)
//! wtype      u32      0 = f32 weights, 1 = i8 weights × scale
//! bits       u32      log2 of the bucket count (10..=24)
//! max_bytes  u32      featurizer: text prefix length
//! flags      u32      featurizer: FLAG_* bits
//! seed       u64      featurizer: hash seed
//! word_scale f32      featurizer: word block value scale
//! char_scale f32      featurizer: char block value scale
//! bias       f32
//! threshold  f32      decision threshold on the margin (logit)
//! scale      f32      i8 weights: value = q × scale (1.0 for f32)
//! n_ham      u32      training set size, ham
//! n_spam     u32      training set size, spam
//! target_fpr f32      ham false-positive rate the threshold was set for
//! note_len   u32      ≤ 4096
//! note       note_len bytes of UTF-8 (what the model was trained on)
//! weights    2^bits × (4 | 1) bytes
//! checksum   u64      FNV-1a 64 of every byte before it
//! ```
//!
//! Loading checks the magic, the version, every length and the checksum: a
//! truncated or corrupt file is a [`ModelError`], never a panic.

use std::path::Path;

use super::features::{Char4Hash, FeatureConfig, Featurizer, Origin, Sink, WordHash};
use super::text::TextView;

pub const MAGIC: &[u8; 8] = b"SIFTLIN\0";
pub const VERSION: u32 = 2;
const MAX_NOTE: usize = 4096;

/// Why a model file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a sift model file (bad magic)")]
    BadMagic,
    #[error("unsupported model file version {0} (this sift reads version {VERSION})")]
    Version(u32),
    #[error("model file truncated: needed {needed} bytes at offset {offset}, file has {len}")]
    Truncated {
        needed: usize,
        offset: usize,
        len: usize,
    },
    #[error(
        "model file checksum mismatch (stored {stored:016x}, computed {computed:016x}): the file is corrupt"
    )]
    Checksum { stored: u64, computed: u64 },
    #[error("invalid model file: {0}")]
    Invalid(String),
}

/// Weight table.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    F32(Vec<f32>),
    I8 { q: Vec<i8>, scale: f32 },
}

impl Weights {
    pub fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::I8 { q, .. } => q.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Weights::F32(w) => w.get(i).copied().unwrap_or(0.0),
            Weights::I8 { q, scale } => f32::from(q.get(i).copied().unwrap_or(0)) * scale,
        }
    }

    /// As f32 (dequantised).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Weights::F32(w) => w.clone(),
            Weights::I8 { q, scale } => q.iter().map(|&v| f32::from(v) * scale).collect(),
        }
    }

    /// Quantise to i8 with a symmetric scale set by the largest magnitude
    /// after clipping the most extreme 1e-5 of the non-zero weights.
    pub fn quantize(w: &[f32]) -> Weights {
        let mut mags: Vec<f32> = w.iter().map(|v| v.abs()).filter(|v| *v > 0.0).collect();
        let clip = if mags.is_empty() {
            1.0
        } else {
            let k = ((mags.len() as f64) * (1.0 - 1e-5)) as usize;
            let k = k.min(mags.len() - 1);
            let (_, v, _) = mags.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
            *v
        };
        let scale = if clip > 0.0 { clip / 127.0 } else { 1.0 };
        let q = w
            .iter()
            .map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        Weights::I8 { q, scale }
    }
}

/// What a model was trained on (informational, kept in the file).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Meta {
    pub n_ham: u32,
    pub n_spam: u32,
    pub target_fpr: f32,
    pub note: String,
}

/// A linear model over the featurizer's buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub features: FeatureConfig,
    pub bias: f32,
    /// Spam when margin ≥ threshold.
    pub threshold: f32,
    pub weights: Weights,
    pub meta: Meta,
}

/// One message's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Raw linear margin (logit).
    pub margin: f32,
    /// sigmoid(margin), in 0..1.
    pub probability: f32,
    pub spam: bool,
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Sums weights per block, per occurrence: nothing allocated. Separate
/// named accumulators (not an array indexed by block) keep them in
/// registers in the hot loop.
struct ScoreI8<'a> {
    q: &'a [i8],
    /// The table has exactly 2^bits weights, so every bucket the
    /// featurizer gives is inside it: [`sum_i8`] may mask indices.
    pow2: bool,
    word: i32,
    chr: i32,
    sig: i32,
    n_word: u32,
    n_chr: u32,
}

impl Sink for ScoreI8<'_> {
    const SPANS: bool = false;
    #[inline(always)]
    fn emit(&mut self, f: super::features::Feature) {
        let w = i32::from(self.q.get(f.bucket as usize).copied().unwrap_or(0));
        match f.origin {
            Origin::Char { .. } => {
                self.chr += w;
                self.n_chr += 1;
            }
            Origin::Word { .. } => {
                self.word += w;
                self.n_word += 1;
            }
            Origin::Signal(_) => self.sig += w,
        }
    }

    #[inline(always)]
    fn emit_words(&mut self, buckets: &[u32]) {
        self.word += if self.pow2 {
            sum_i8(self.q, buckets)
        } else {
            sum_i8_any(self.q, buckets)
        };
        self.n_word += buckets.len() as u32;
    }

    #[inline(always)]
    fn emit_chars(&mut self, buckets: &[u32]) {
        self.chr += if self.pow2 {
            sum_i8(self.q, buckets)
        } else {
            sum_i8_any(self.q, buckets)
        };
        self.n_chr += buckets.len() as u32;
    }

    #[inline(always)]
    fn emit_word_pairs(&mut self, hs: &[u64], prev: Option<u64>, hash: WordHash) {
        let Some(n) = (2 * hs.len()).checked_sub(usize::from(prev.is_none())) else {
            return;
        };
        // The dispatcher falls back to the bounds-checked loop itself.
        self.word += sum_i8_words(self.q, hs, prev, hash);
        self.n_word += n as u32;
    }

    #[inline(always)]
    fn emit_char4(&mut self, bytes: &[u8], hash: Char4Hash) {
        self.chr += sum_i8_char4(self.q, bytes, hash);
        self.n_chr += bytes.len().saturating_sub(3) as u32;
    }
}

/// Sum of the weights of the word features of tokens of hashes `hs`
/// ([`Sink::emit_word_pairs`]), computed in the loop that hashes them; for
/// tables of 2^16 to 2^22 weights that match the hash (as in
/// [`sum_i8_char4`]) with a constant shift and no bounds check.
#[inline(always)]
fn sum_i8_words(q: &[i8], hs: &[u64], prev: Option<u64>, hash: WordHash) -> i32 {
    macro_rules! fixed {
        ($($bits:literal)*) => {
            match q.len() {
                $(len if len == 1 << $bits && hash.shift == 64 - $bits => {
                    if let Ok(t) = <&[i8; 1 << $bits]>::try_from(q) {
                        return sum_i8_words_pow2::<{ 1 << $bits }, { 64 - $bits }>(
                            t, hs, prev, hash.uni_key, hash.bi_key,
                        );
                    }
                })*
                _ => {}
            }
        };
    }
    fixed!(16 17 18 19 20 21 22);
    sum_words(hs, prev, hash, |b| {
        i32::from(q.get(b as usize).copied().unwrap_or(0))
    })
}

/// [`sum_i8_words`] for a table of `N` = 2^(64 - `SHIFT`) weights: every
/// index is in the table. Not inlined: on its own, the loop keeps the
/// table, keys and multiplier in registers.
#[inline(never)]
fn sum_i8_words_pow2<const N: usize, const SHIFT: u32>(
    q: &[i8; N],
    hs: &[u64],
    prev: Option<u64>,
    uni_key: u64,
    bi_key: u64,
) -> i32 {
    let w = |x: u64| i32::from(q[(x.wrapping_mul(WordHash::MUL) >> SHIFT) as usize]);
    let (mut p, rest, mut uni) = match (prev, hs.split_first()) {
        (Some(p), _) => (p, hs, 0),
        (None, Some((&h, rest))) => (h, rest, w(h ^ uni_key)),
        (None, None) => return 0,
    };
    let mut bi = 0;
    for &h in rest {
        uni += w(h ^ uni_key);
        bi += w(WordHash::bigram(p, h) ^ bi_key);
        p = h;
    }
    uni + bi
}

/// Sum of `weight(bucket)` over the word features of tokens of hashes
/// `hs` ([`Sink::emit_word_pairs`]).
#[inline(always)]
fn sum_words<F: Fn(u32) -> i32>(hs: &[u64], prev: Option<u64>, hash: WordHash, weight: F) -> i32 {
    let mut acc = 0;
    let mut p = prev;
    for &h in hs {
        acc += weight(hash.uni(h));
        if let Some(q) = p {
            acc += weight(hash.bi(q, h));
        }
        p = Some(h);
    }
    acc
}

/// Sum of the weights of the 4-byte windows of `bytes` (bucket
/// `hash.bucket(window)`), computed in the loop that hashes the windows.
/// For tables of 2^16 to 2^22 weights whose size matches the hash (2^bits
/// weights, shift 64 - bits: see [`ScoreI8::pow2`]) the shift is a
/// constant, so the index is below the table size by construction: no
/// bounds check and no mask per window.
#[inline(always)]
fn sum_i8_char4(q: &[i8], bytes: &[u8], hash: Char4Hash) -> i32 {
    macro_rules! fixed {
        ($($bits:literal)*) => {
            match q.len() {
                $(len if len == 1 << $bits && hash.shift == 64 - $bits => {
                    if let Ok(t) = <&[i8; 1 << $bits]>::try_from(q) {
                        return sum_i8_char4_pow2::<{ 1 << $bits }, { 64 - $bits }>(
                            t, bytes, hash.key,
                        );
                    }
                })*
                _ => {}
            }
        };
    }
    fixed!(16 17 18 19 20 21 22);
    sum_windows(bytes, |w| {
        i32::from(q.get(hash.bucket(w) as usize).copied().unwrap_or(0))
    })
}

/// [`sum_i8_char4`] for a table of `N` weights and a hash of shift `SHIFT`
/// (`N` = 2^(64 - SHIFT), so every index is in the table). Not inlined:
/// in a function of its own the loop keeps the table, key and multiplier
/// in registers (inlined into the scanner, it reloaded them per window).
#[inline(never)]
fn sum_i8_char4_pow2<const N: usize, const SHIFT: u32>(q: &[i8; N], bytes: &[u8], key: u64) -> i32 {
    sum_windows(bytes, |w| {
        let h = (u64::from(w) ^ key).wrapping_mul(Char4Hash::MUL);
        i32::from(q[(h >> SHIFT) as usize])
    })
}

/// Sum of `weight(window)` over the 4-byte windows of `bytes` (big-endian
/// u32s): eight windows per step, each a 4-byte load (no shifts to pick a
/// window out of a wider load, no zero-extension), into four accumulators
/// (integer sums: the order does not change the result).
#[inline(always)]
fn sum_windows<F: Fn(u32) -> i32>(bytes: &[u8], weight: F) -> i32 {
    let mut acc = [0i32; 4];
    let mut rest = bytes;
    // The windows starting at the first 8 bytes of `rest` lie in its first 11.
    while let Some((c, _)) = rest.split_first_chunk::<11>() {
        for k in 0..8 {
            // A copy of 4 bytes, so one 4-byte load (bytes picked one by
            // one would be loaded once each and shifted together).
            let mut w = [0u8; 4];
            w.copy_from_slice(&c[k..k + 4]);
            acc[k % 4] += weight(u32::from_be_bytes(w));
        }
        rest = &rest[8..];
    }
    for w in rest.windows(4) {
        acc[0] += weight(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    acc.iter().sum()
}

/// Sum of the weights of `buckets` (0 outside the table): four
/// accumulators in registers, nothing but independent loads in the loop.
/// Tables of 2^16 to 2^22 weights are summed by [`sum_i8_pow2`] (no bounds
/// check per load), others by [`sum_i8_any`].
#[inline(always)]
fn sum_i8(q: &[i8], buckets: &[u32]) -> i32 {
    macro_rules! fixed {
        ($($bits:literal)*) => {
            match q.len() {
                $(n if n == 1 << $bits => match q.try_into() {
                    Ok(t) => sum_i8_pow2::<{ 1 << $bits }>(t, buckets),
                    Err(_) => sum_i8_any(q, buckets),
                },)*
                _ => sum_i8_any(q, buckets),
            }
        };
    }
    fixed!(16 17 18 19 20 21 22)
}

/// [`sum_i8`] for a table of `N` (a power of two) weights. Callers give
/// buckets below `N` only ([`ScoreI8::pow2`]), so masking the index
/// changes nothing but lets the compiler drop the bounds check.
#[inline(always)]
fn sum_i8_pow2<const N: usize>(q: &[i8; N], buckets: &[u32]) -> i32 {
    let w = |b: u32| i32::from(q[b as usize & (N - 1)]);
    let mut acc = [0i32; 4];
    let chunks = buckets.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &b) in acc.iter_mut().zip(c) {
            *a += w(b);
        }
    }
    for &b in rest {
        acc[0] += w(b);
    }
    acc.iter().sum()
}

#[inline(always)]
fn sum_i8_any(q: &[i8], buckets: &[u32]) -> i32 {
    let w = |b: u32| i32::from(q.get(b as usize).copied().unwrap_or(0));
    let mut acc = [0i32; 4];
    let chunks = buckets.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &b) in acc.iter_mut().zip(c) {
            *a += w(b);
        }
    }
    for &b in rest {
        acc[0] += w(b);
    }
    acc.iter().sum()
}

struct ScoreF32<'a> {
    w: &'a [f32],
    word: f32,
    chr: f32,
    sig: f32,
    n_word: u32,
    n_chr: u32,
}

impl Sink for ScoreF32<'_> {
    const SPANS: bool = false;
    #[inline(always)]
    fn emit(&mut self, f: super::features::Feature) {
        let w = self.w.get(f.bucket as usize).copied().unwrap_or(0.0);
        match f.origin {
            Origin::Char { .. } => {
                self.chr += w;
                self.n_chr += 1;
            }
            Origin::Word { .. } => {
                self.word += w;
                self.n_word += 1;
            }
            Origin::Signal(_) => self.sig += w,
        }
    }
}

fn combine(acc: [f32; 3], n: [u32; 3], f: &FeatureConfig) -> f32 {
    let norm = |a: f32, n: u32| if n == 0 { 0.0 } else { a / (n as f32).sqrt() };
    f.word_scale * norm(acc[0], n[0]) + f.char_scale * norm(acc[1], n[1]) + acc[2]
}

impl Model {
    /// The margin of a text view, via the serving path.
    pub fn margin(&self, fz: &Featurizer, view: &TextView) -> f32 {
        match &self.weights {
            Weights::I8 { q, scale } => {
                let mut s = ScoreI8 {
                    q,
                    pow2: q.len() == 1usize << self.features.bits.clamp(1, 31),
                    word: 0,
                    chr: 0,
                    sig: 0,
                    n_word: 0,
                    n_chr: 0,
                };
                fz.run(view, &mut s);
                let acc = [s.word, s.chr, s.sig].map(|a| a as f32 * scale);
                self.bias + combine(acc, [s.n_word, s.n_chr, 0], &self.features)
            }
            Weights::F32(w) => {
                let mut s = ScoreF32 {
                    w,
                    word: 0.0,
                    chr: 0.0,
                    sig: 0.0,
                    n_word: 0,
                    n_chr: 0,
                };
                fz.run(view, &mut s);
                self.bias
                    + combine(
                        [s.word, s.chr, s.sig],
                        [s.n_word, s.n_chr, 0],
                        &self.features,
                    )
            }
        }
    }

    pub fn score(&self, fz: &Featurizer, view: &TextView) -> Score {
        let margin = self.margin(fz, view);
        Score {
            margin,
            probability: sigmoid(margin),
            spam: margin >= self.threshold,
        }
    }

    /// Margin of an already featurized sparse vector (training/eval path).
    pub fn margin_sparse(&self, idx: &[u32], val: &[f32]) -> f32 {
        let mut m = self.bias;
        for (&i, &v) in idx.iter().zip(val) {
            m += self.weights.get(i as usize) * v;
        }
        m
    }

    /// Serialise to bytes (see the module docs for the layout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (wtype, scale) = match &self.weights {
            Weights::F32(_) => (0u32, 1.0f32),
            Weights::I8 { scale, .. } => (1u32, *scale),
        };
        let note = truncate_note(&self.meta.note);
        let mut out = Vec::with_capacity(80 + note.len() + self.weights.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&wtype.to_le_bytes());
        out.extend_from_slice(&u32::from(self.features.bits).to_le_bytes());
        out.extend_from_slice(&self.features.max_bytes.to_le_bytes());
        out.extend_from_slice(&self.features.flags.to_le_bytes());
        out.extend_from_slice(&self.features.seed.to_le_bytes());
        out.extend_from_slice(&self.features.word_scale.to_le_bytes());
        out.extend_from_slice(&self.features.char_scale.to_le_bytes());
        out.extend_from_slice(&self.bias.to_le_bytes());
        out.extend_from_slice(&self.threshold.to_le_bytes());
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend_from_slice(&self.meta.n_ham.to_le_bytes());
        out.extend_from_slice(&self.meta.n_spam.to_le_bytes());
        out.extend_from_slice(&self.meta.target_fpr.to_le_bytes());
        out.extend_from_slice(&(note.len() as u32).to_le_bytes());
        out.extend_from_slice(note.as_bytes());
        match &self.weights {
            Weights::F32(w) => w
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Weights::I8 { q, .. } => out.extend(q.iter().map(|&v| v as u8)),
        }
        let sum = fnv1a64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Parse and validate a model file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        let mut r = Reader { b: bytes, pos: 0 };
        if r.take(8)? != MAGIC {
            return Err(ModelError::BadMagic);
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(ModelError::Version(version));
        }
        // Checksum first: a flipped bit anywhere is "corrupt", not a confusing field error.
        if bytes.len() < 8 + 4 + 8 {
            return Err(ModelError::Truncated {
                needed: 20,
                offset: 0,
                len: bytes.len(),
            });
        }
        let (body, tail) = bytes.split_at(bytes.len() - 8);
        let mut stored = [0u8; 8];
        stored.copy_from_slice(tail);
        let stored = u64::from_le_bytes(stored);
        let computed = fnv1a64(body);
        let wtype = r.u32()?;
        let bits = r.u32()?;
        let max_bytes = r.u32()?;
        let flags = r.u32()?;
        let seed = r.u64()?;
        let word_scale = r.f32()?;
        let char_scale = r.f32()?;
        let bias = r.f32()?;
        let threshold = r.f32()?;
        let scale = r.f32()?;
        let n_ham = r.u32()?;
        let n_spam = r.u32()?;
        let target_fpr = r.f32()?;
        let note_len = r.u32()? as usize;
        if note_len > MAX_NOTE {
            return Err(ModelError::Invalid(format!(
                "note length {note_len} > {MAX_NOTE}"
            )));
        }
        let note = String::from_utf8_lossy(r.take(note_len)?).into_owned();
        if !(10..=24).contains(&bits) {
            return Err(ModelError::Invalid(format!(
                "bucket bits {bits} outside 10..=24"
            )));
        }
        let unknown = flags & !crate::classify::features::KNOWN_FLAGS;
        if unknown != 0 {
            return Err(ModelError::Invalid(format!(
                "featurizer flags {unknown:#x} unknown to this sift (the model was made by a newer version)"
            )));
        }
        let n = 1usize << bits;
        let width = match wtype {
            0 => 4,
            1 => 1,
            t => return Err(ModelError::Invalid(format!("unknown weight type {t}"))),
        };
        let expected_len = r.pos + n * width + 8;
        if bytes.len() < expected_len {
            return Err(ModelError::Truncated {
                needed: n * width + 8,
                offset: r.pos,
                len: bytes.len(),
            });
        }
        if bytes.len() > expected_len {
            return Err(ModelError::Invalid(format!(
                "{} trailing bytes after the weights",
                bytes.len() - expected_len
            )));
        }
        if stored != computed {
            return Err(ModelError::Checksum { stored, computed });
        }
        let raw = r.take(n * width)?;
        let weights = if wtype == 0 {
            let w: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if w.iter().any(|v| !v.is_finite()) {
                return Err(ModelError::Invalid("non-finite weight".into()));
            }
            Weights::F32(w)
        } else {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(ModelError::Invalid(format!("bad weight scale {scale}")));
            }
            Weights::I8 {
                q: raw.iter().map(|&b| b as i8).collect(),
                scale,
            }
        };
        if !bias.is_finite() || !threshold.is_finite() {
            return Err(ModelError::Invalid("non-finite bias or threshold".into()));
        }
        if ![word_scale, char_scale]
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0)
        {
            return Err(ModelError::Invalid("bad block scale".into()));
        }
        if max_bytes == 0 {
            return Err(ModelError::Invalid("max_bytes is 0".into()));
        }
        Ok(Model {
            features: FeatureConfig {
                bits: bits as u8,
                max_bytes,
                flags,
                seed,
                word_scale,
                char_scale,
            },
            bias,
            threshold,
            weights,
            meta: Meta {
                n_ham,
                n_spam,
                target_fpr,
                note,
            },
        })
    }

    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Model::from_bytes(&bytes)
    }

    /// Write atomically (temp file in the same directory, then rename).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let io = |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        write_durably(&std::path::PathBuf::from(tmp), path, &self.to_bytes()).map_err(io)
    }

    /// Bytes of memory the weights take.
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::F32(w) => w.len() * 4,
            Weights::I8 { q, .. } => q.len(),
        }
    }
}

fn truncate_note(s: &str) -> &str {
    if s.len() <= MAX_NOTE {
        return s;
    }
    let mut cut = MAX_NOTE;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    // Eight lanes, so a few MB hash in well under a millisecond each.
    let mut lanes = [0xcbf2_9ce4_8422_2325u64; 8];
    let chunks = bytes.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for (l, &b) in lanes.iter_mut().zip(c) {
            *l = (*l ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for l in lanes {
        for b in l.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    for &b in rem {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ bytes.len() as u64
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
            Some(e) => {
                let s = &self.b[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => Err(ModelError::Truncated {
                needed: n,
                offset: self.pos,
                len: self.b.len(),
            }),
        }
    }
    fn u32(&mut self) -> Result<u32, ModelError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, ModelError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn f32(&mut self) -> Result<f32, ModelError> {
        Ok(f32::from_bits(self.u32()?))
    }
}

/// Write `bytes` to `path` so that a crash or power loss leaves either the
/// old file or the new one, never a torn or empty one: written to `tmp`
/// (same directory), flushed to disk, renamed over `path`, and the rename
/// itself flushed by syncing the directory (as etcd and SQLite do).
pub(crate) fn write_durably(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)?;
    sync_dir_of(path);
    Ok(())
}

/// Flush a directory entry change (a rename) in `path`'s directory. Best
/// effort: some file systems cannot open or sync a directory, and the data
/// itself is already on disk.
pub(crate) fn sync_dir_of(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
