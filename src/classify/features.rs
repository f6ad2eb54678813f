//! The one featurizer used for training and serving.
//!
//! Three blocks of hashed features, all into one weight table of `2^bits`
//! buckets:
//! - **word**: unigrams and bigrams of tokens (runs of ASCII alphanumerics
//!   or non-ASCII bytes, ASCII lower-cased, digits folded to `0`), hashed
//!   8 bytes at a time;
//! - **char**: byte n-grams of the lower-cased text with whitespace runs
//!   collapsed (digits folded the same way): 4-grams by default, any of 3, 4
//!   and 5 by flags ([`FLAG_CHAR3`] ...; [`FLAG_CHAR`] alone means all three);
//! - **signal**: a few hand-made cues meant to carry across corpora (URL hosts
//!   that are IP literals, punycode, look-alikes of brands or shorteners,
//!   `user@host` URLs, link text naming another domain than its href, requests
//!   for money / credentials / urgency, premium-rate numbers and short codes,
//!   shouting, image-only HTML).
//!
//! A message's value for a word or char feature is `count / sqrt(n)`, with
//! `n` the number of features of that block in the message; signals count 1.
//! Serving never materialises the vector: the scorer sums weights per
//! occurrence and scales per block, so nothing is allocated per token; the
//! hashes are computed in place over byte windows.

use super::text::TextView;

/// Feature layout options, stored in the model file: a model is only valid
/// with the featurizer it was trained with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureConfig {
    /// log2 of the number of weight buckets.
    pub bits: u8,
    /// Only the first `max_bytes` of the text view are featurized.
    pub max_bytes: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Hash seed.
    pub seed: u64,
    /// Value scale of the word block (relative learning speed and weight).
    pub word_scale: f32,
    /// Value scale of the char block.
    pub char_scale: f32,
}

pub const FLAG_WORD: u32 = 1;
pub const FLAG_BIGRAM: u32 = 2;
pub const FLAG_CHAR: u32 = 4;
pub const FLAG_SIGNAL: u32 = 8;
pub const FLAG_FOLD_DIGITS: u32 = 16;
/// Char n-gram sizes (with [`FLAG_CHAR`]); none of them means 3, 4 and 5.
pub const FLAG_CHAR3: u32 = 32;
pub const FLAG_CHAR4: u32 = 64;
pub const FLAG_CHAR5: u32 = 128;
pub const ALL_FLAGS: u32 = FLAG_WORD | FLAG_BIGRAM | FLAG_CHAR | FLAG_SIGNAL | FLAG_FOLD_DIGITS;

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            bits: 20,
            max_bytes: 32 * 1024,
            // Char 4-grams only: one weight lookup per byte instead of three,
            // and a better time split (F1 0.966 vs 0.964 at 0.14 % FPR).
            flags: ALL_FLAGS | FLAG_CHAR4,
            seed: 0x5157_7f1e_2024_0001,
            word_scale: 1.0,
            char_scale: 0.25,
        }
    }
}

/// Which block a feature belongs to (its value's scaling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Word,
    Char,
    Signal,
}

/// A hand-made signal. `level` buckets counts (1, 2–3, ≥4) where it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    UrlCount(u8),
    UrlIp,
    UrlPunycode,
    UrlShortener,
    UrlUserinfo,
    UrlLookalike,
    UrlPort,
    LinkTextMismatch,
    Money(u8),
    Credential(u8),
    Urgency(u8),
    MoneyAndUrgency,
    CredentialAndLink,
    CurrencyAmount(u8),
    Shouting,
    Exclaim(u8),
    ImageOnly,
    Html,
    /// A run of 9 or more digits (premium-rate and callback numbers).
    LongNumber,
    /// "... to 80086": a 4-6 digit short code after "to".
    ShortCode,
}

impl Signal {
    fn code(self) -> u64 {
        let (k, l) = match self {
            Signal::UrlCount(l) => (1, l),
            Signal::UrlIp => (2, 0),
            Signal::UrlPunycode => (3, 0),
            Signal::UrlShortener => (4, 0),
            Signal::UrlUserinfo => (5, 0),
            Signal::UrlLookalike => (6, 0),
            Signal::UrlPort => (7, 0),
            Signal::LinkTextMismatch => (8, 0),
            Signal::Money(l) => (9, l),
            Signal::Credential(l) => (10, l),
            Signal::Urgency(l) => (11, l),
            Signal::MoneyAndUrgency => (12, 0),
            Signal::CredentialAndLink => (13, 0),
            Signal::CurrencyAmount(l) => (14, l),
            Signal::Shouting => (15, 0),
            Signal::Exclaim(l) => (16, l),
            Signal::ImageOnly => (17, 0),
            Signal::Html => (18, 0),
            Signal::LongNumber => (19, 0),
            Signal::ShortCode => (20, 0),
        };
        (k << 8) | u64::from(l)
    }

    /// A stable, readable name (for `--explain`).
    pub fn name(self) -> String {
        match self {
            Signal::UrlCount(l) => format!("url_count:{l}"),
            Signal::UrlIp => "url_ip_literal".into(),
            Signal::UrlPunycode => "url_punycode".into(),
            Signal::UrlShortener => "url_shortener".into(),
            Signal::UrlUserinfo => "url_userinfo".into(),
            Signal::UrlLookalike => "url_lookalike_brand".into(),
            Signal::UrlPort => "url_port".into(),
            Signal::LinkTextMismatch => "link_text_other_domain".into(),
            Signal::Money(l) => format!("money:{l}"),
            Signal::Credential(l) => format!("credential:{l}"),
            Signal::Urgency(l) => format!("urgency:{l}"),
            Signal::MoneyAndUrgency => "money_and_urgency".into(),
            Signal::CredentialAndLink => "credential_and_link".into(),
            Signal::CurrencyAmount(l) => format!("currency_amount:{l}"),
            Signal::Shouting => "shouting".into(),
            Signal::Exclaim(l) => format!("exclaim:{l}"),
            Signal::ImageOnly => "image_only_html".into(),
            Signal::Html => "html".into(),
            Signal::LongNumber => "long_number".into(),
            Signal::ShortCode => "short_code".into(),
        }
    }
}

/// Where a feature came from: byte spans into the text view, or a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Word { start: u32, end: u32 },
    Char { start: u32, end: u32 },
    Signal(Signal),
}

/// One feature occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub bucket: u32,
    pub origin: Origin,
}

impl Feature {
    #[inline]
    pub fn block(&self) -> Block {
        match self.origin {
            Origin::Word { .. } => Block::Word,
            Origin::Char { .. } => Block::Char,
            Origin::Signal(_) => Block::Signal,
        }
    }
}

/// Receives feature occurrences.
pub trait Sink {
    fn emit(&mut self, f: Feature);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cue {
    Money,
    Credential,
    Urgency,
    Url,
}

const MONEY: &[&str] = &[
    "money",
    "cash",
    "prize",
    "winner",
    "won",
    "claim",
    "reward",
    "bonus",
    "dollars",
    "usd",
    "loan",
    "loans",
    "mortgage",
    "credit",
    "debt",
    "investment",
    "invest",
    "profit",
    "income",
    "earn",
    "bitcoin",
    "btc",
    "crypto",
    "refund",
    "lottery",
    "inheritance",
    "million",
    "wire transfer",
    "western union",
    "moneygram",
    "gift card",
    "bank account",
    "pay",
    "payment",
    "free",
    "cheap",
    "discount",
    "offer",
    "save",
    "cost",
    "fee",
    "fees",
    "beneficiary",
    "funds",
];
const CREDENTIAL: &[&str] = &[
    "password",
    "passwords",
    "login",
    "log in",
    "sign in",
    "username",
    "verify",
    "verification",
    "confirm",
    "ssn",
    "social security",
    "pin",
    "account",
    "billing",
    "credit card",
    "card number",
    "identity",
    "security",
    "suspended",
    "unlock",
    "update your",
    "validate",
];
const URGENCY: &[&str] = &[
    "urgent",
    "urgently",
    "immediately",
    "immediate",
    "act now",
    "now",
    "today",
    "tonight",
    "expires",
    "expire",
    "expired",
    "expiring",
    "limited time",
    "last chance",
    "final notice",
    "asap",
    "hurry",
    "deadline",
    "within 24",
    "within 48",
    "don t miss",
    "dont miss",
    "only",
];
const URL_WORDS: &[&str] = &["http", "https", "www"];

const SHORTENERS: &[&str] = &[
    "bit.ly",
    "tinyurl.com",
    "goo.gl",
    "t.co",
    "ow.ly",
    "is.gd",
    "buff.ly",
    "rebrand.ly",
    "cutt.ly",
    "shorturl.at",
    "tiny.cc",
    "t.ly",
    "rb.gy",
    "s.id",
    "v.gd",
    "bl.ink",
    "lnkd.in",
    "qr.co",
    "shorte.st",
    "adf.ly",
    "x.co",
    "snip.ly",
    "tr.im",
    "cli.gs",
    "u.to",
];

const BRANDS: &[&str] = &[
    "paypal",
    "apple",
    "icloud",
    "microsoft",
    "outlook",
    "office365",
    "amazon",
    "google",
    "gmail",
    "ebay",
    "netflix",
    "bankofamerica",
    "chase",
    "wellsfargo",
    "citibank",
    "hsbc",
    "barclays",
    "facebook",
    "instagram",
    "whatsapp",
    "dhl",
    "fedex",
    "usps",
    "irs",
    "hmrc",
    "coinbase",
    "binance",
    "visa",
    "mastercard",
    "americanexpress",
];

const SEED_WORD: u64 = 0x77_6f72_6431;
const SEED_BIGRAM: u64 = 0x62_6967_7261_6d32;
const SEED_CHAR: u64 = 0x63_6861_7233;
const SEED_SIGNAL: u64 = 0x73_6967_6e61_6c34;

#[inline(always)]
fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 29)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 32)
}

#[inline(always)]
fn fold(b: u8, digits: bool) -> u8 {
    if digits && b.is_ascii_digit() {
        b'0'
    } else {
        b.to_ascii_lowercase()
    }
}

#[inline(always)]
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

// Byte classes of the scanner's lookup table.
const C_WORD: u8 = 1;
const C_UPPER: u8 = 2;
const C_LOWER: u8 = 4;
const C_DIGIT: u8 = 8;
const C_EXCL: u8 = 16;

/// Packed per-byte increments of the class counts, indexed by the
/// `C_UPPER | C_LOWER | C_EXCL` bits: 21 bits each for upper, lower and
/// `!` (the scanner flushes them every 2^20 bytes, so none overflows).
const COUNT_INC: [u64; 32] = {
    let mut t = [0u64; 32];
    let mut i = 0;
    while i < 32 {
        let c = i as u8;
        let mut v = 0u64;
        if c & C_UPPER != 0 {
            v += 1;
        }
        if c & C_LOWER != 0 {
            v += 1 << 21;
        }
        if c & C_EXCL != 0 {
            v += 1 << 42;
        }
        t[i] = v;
        i += 1;
    }
    t
};

/// One step of the word hash: fold an 8-byte chunk into the state.
#[inline(always)]
fn chunk_mix(h: u64, chunk: u64) -> u64 {
    (h ^ chunk)
        .wrapping_mul(0xd6e8_feb8_6659_fd93)
        .rotate_left(29)
}

/// Word hash of a token: its folded bytes packed 8 at a time (first byte
/// most significant), each chunk mixed into the state. The scanner computes
/// the same value from its byte window without a per-byte multiply.
fn token_hash(tok: &[u8], digits: bool) -> u64 {
    let mut h = 0u64;
    for chunk in tok.chunks(8) {
        let mut c = 0u64;
        for &b in chunk {
            c = (c << 8) | u64::from(fold(b, digits));
        }
        h = chunk_mix(h, c);
    }
    h
}

#[inline(always)]
fn bigram_hash(prev: u64, cur: u64) -> u64 {
    prev.rotate_left(23) ^ cur.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The featurizer: config plus a small table of cue words.
#[derive(Debug, Clone)]
pub struct Featurizer {
    cfg: FeatureConfig,
    shift: u32,
    /// Open-addressing table of cue hashes (unigram or bigram token hashes).
    cue_keys: Vec<u64>,
    cue_vals: Vec<Option<Cue>>,
    cue_mask: usize,
    /// 4096-bit Bloom filter over cue hashes: most tokens stop here.
    cue_bloom: Vec<u64>,
    /// Per byte: its `C_*` classes, and its normalised form (ASCII
    /// lower-cased, digits folded if configured, whitespace and controls as
    /// a space).
    class: [u8; 256],
    norm: [u8; 256],
    /// Char n-gram sizes in use: bit n set for n-grams of n bytes.
    char_ns: u32,
    /// Word hash of "to" (short codes).
    to_hash: u64,
}

impl Featurizer {
    pub fn new(cfg: FeatureConfig) -> Featurizer {
        let digits = cfg.flags & FLAG_FOLD_DIGITS != 0;
        let size = 512usize;
        let mut f = Featurizer {
            cfg,
            shift: 64 - u32::from(cfg.bits.clamp(1, 31)),
            cue_keys: vec![0; size],
            cue_vals: vec![None; size],
            cue_mask: size - 1,
            cue_bloom: vec![0; 64],
            class: [0; 256],
            norm: [0; 256],
            char_ns: 0,
            to_hash: token_hash(b"to", digits),
        };
        for b in 0..=255u8 {
            let i = usize::from(b);
            f.norm[i] = if b <= b' ' { b' ' } else { fold(b, digits) };
            let mut c = 0;
            if is_word_byte(b) {
                c |= C_WORD;
            }
            if b.is_ascii_uppercase() {
                c |= C_UPPER;
            }
            if b.is_ascii_lowercase() {
                c |= C_LOWER;
            }
            if b.is_ascii_digit() {
                c |= C_DIGIT;
            }
            if b == b'!' {
                c |= C_EXCL;
            }
            f.class[i] = c;
        }
        if cfg.flags & FLAG_CHAR != 0 {
            for (flag, n) in [(FLAG_CHAR3, 3), (FLAG_CHAR4, 4), (FLAG_CHAR5, 5)] {
                if cfg.flags & flag != 0 {
                    f.char_ns |= 1 << n;
                }
            }
            if f.char_ns == 0 {
                f.char_ns = (1 << 3) | (1 << 4) | (1 << 5);
            }
        }
        let lists = [
            (MONEY, Cue::Money),
            (CREDENTIAL, Cue::Credential),
            (URGENCY, Cue::Urgency),
            (URL_WORDS, Cue::Url),
        ];
        for (list, cue) in lists {
            for phrase in list {
                let mut h = 0u64;
                for (i, w) in phrase
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .enumerate()
                {
                    let t = token_hash(w.as_bytes(), digits);
                    h = if i == 0 { t } else { bigram_hash(h, t) };
                }
                f.insert_cue(h, cue);
            }
        }
        f
    }

    pub fn config(&self) -> &FeatureConfig {
        &self.cfg
    }

    /// Bytes of the featurizer's own tables (cue table, Bloom filter, byte
    /// classes). The scanner's per-thread scratch comes on top: about 5
    /// bytes per featurized byte, at most `5 * max_bytes`, kept per thread.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.cue_keys.len() * 8
            + self.cue_vals.len() * std::mem::size_of::<Option<Cue>>()
            + self.cue_bloom.len() * 8
    }

    fn insert_cue(&mut self, h: u64, cue: Cue) {
        let bit = (h >> 52) as usize;
        self.cue_bloom[bit >> 6] |= 1 << (bit & 63);
        let mut i = (mix(h) as usize) & self.cue_mask;
        loop {
            if self.cue_vals[i].is_none() {
                self.cue_keys[i] = h;
                self.cue_vals[i] = Some(cue);
                return;
            }
            if self.cue_keys[i] == h {
                return;
            }
            i = (i + 1) & self.cue_mask;
        }
    }

    #[inline(always)]
    fn cue(&self, h: u64) -> Option<Cue> {
        let bit = (h >> 52) as usize;
        if self.cue_bloom[bit >> 6] & (1 << (bit & 63)) == 0 {
            return None;
        }
        let mut i = (mix(h) as usize) & self.cue_mask;
        loop {
            match self.cue_vals[i] {
                None => return None,
                Some(c) if self.cue_keys[i] == h => return Some(c),
                Some(_) => i = (i + 1) & self.cue_mask,
            }
        }
    }

    /// Bucket of a hash: one multiply (Fibonacci hashing, top bits). The
    /// inputs are FNV word hashes or packed byte windows, so the xor with a
    /// per-block seed and the multiply spread them well enough.
    #[inline(always)]
    fn bucket(&self, h: u64, seed: u64) -> u32 {
        ((h ^ seed ^ self.cfg.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as u32
    }

    /// Emit every feature of `view` into `sink`.
    #[inline(always)]
    pub fn run<S: Sink>(&self, view: &TextView, sink: &mut S) {
        let text = view.text.as_bytes();
        let text = &text[..text.len().min(self.cfg.max_bytes as usize)];
        let mut stats = Stats::default();
        // Per-thread scratch buffers (reused: no allocation per message in
        // steady state); a sink that re-enters `run` gets fresh ones.
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut sc) => self.scan(text, &mut sc, sink, &mut stats),
            Err(_) => self.scan(text, &mut Scratch::default(), sink, &mut stats),
        });
        if self.cfg.flags & FLAG_SIGNAL != 0 {
            self.signals(view, text, &stats, sink);
        }
    }

    /// Pass 1, branch-free per byte: normalise, collapse whitespace runs,
    /// mark word bytes in a bit mask, count classes. Pass 2: word tokens
    /// from the bit mask (one iteration per token, not per byte). Pass 3:
    /// char n-grams over the collapsed bytes, one weight lookup per size.
    #[inline(always)]
    fn scan<S: Sink>(&self, text: &[u8], sc: &mut Scratch, sink: &mut S, st: &mut Stats) {
        let n = text.len();
        sc.norm.clear();
        sc.norm.resize(n + 8, 0);
        sc.pos.clear();
        sc.pos.resize(n + 1, 0);
        sc.mask.clear();
        sc.mask.resize(n / 64 + 2, 0);
        let norm = &mut sc.norm[..];
        let pos = &mut sc.pos[..];
        let mask = &mut sc.mask[..];
        let mut out = 0usize;
        let mut last_space = true;
        let mut counts = 0u64;
        let mut mw = 0u64;
        for (i, &raw) in text.iter().enumerate() {
            let cls = self.class[usize::from(raw)];
            let b = self.norm[usize::from(raw)];
            counts += COUNT_INC[usize::from(cls & (C_UPPER | C_LOWER | C_EXCL))];
            if i & 0xF_FFFF == 0xF_FFFF {
                flush_counts(&mut counts, st);
            }
            let space = b == b' ';
            norm[out] = b;
            pos[out] = i as u32;
            // The current mask word lives in a register; a plain store
            // (not a read-modify-write through memory) each byte.
            mw |= u64::from(cls & C_WORD) << (out & 63);
            mask[out >> 6] = mw;
            out += usize::from(!(space & last_space));
            last_space = space;
            if out & 63 == 0 {
                mw = 0;
            }
        }
        flush_counts(&mut counts, st);
        // `out` bytes of collapsed text; pos[out] marks the end.
        pos[out] = n as u32;
        norm[out..].fill(0);
        let m = out;
        let flags = self.cfg.flags;
        if flags & (FLAG_WORD | FLAG_BIGRAM | FLAG_SIGNAL) != 0 {
            let modes = (
                flags & FLAG_WORD != 0,
                flags & FLAG_BIGRAM != 0,
                flags & FLAG_SIGNAL != 0,
            );
            let words = m.div_ceil(64);
            // A mask bit can be set past `m` only by a dropped byte, and
            // dropped bytes are spaces (no bit): nothing to clear.
            let mut prev: Option<(u64, u32)> = None;
            let mut cur_start = 0usize;
            for k in 0..words {
                let w = mask[k];
                let prev_top = if k > 0 { mask[k - 1] >> 63 } else { 0 };
                let next_low = mask.get(k + 1).map_or(0, |x| x & 1);
                let mut starts = w & !((w << 1) | prev_top);
                let mut ends = w & !((w >> 1) | (next_low << 63));
                while ends != 0 {
                    let e = ends.trailing_zeros() as usize;
                    ends &= ends - 1;
                    if starts != 0 && (starts.trailing_zeros() as usize) <= e {
                        cur_start = 64 * k + starts.trailing_zeros() as usize;
                        starts &= starts - 1;
                    }
                    let end = 64 * k + e + 1;
                    let h = hash_norm(norm, cur_start, end);
                    self.token(
                        text,
                        h,
                        pos[cur_start] as usize,
                        pos[end - 1] as usize + 1,
                        &mut prev,
                        modes,
                        sink,
                        st,
                    );
                }
                if starts != 0 {
                    cur_start = 64 * k + starts.trailing_zeros() as usize;
                }
            }
        }
        if self.char_ns != 0 {
            self.scan_chars(&norm[..m], pos, sink);
        }
    }

    /// Char n-grams of the collapsed, normalised bytes, with a virtual space
    /// before the first one.
    #[inline(always)]
    fn scan_chars<S: Sink>(&self, norm: &[u8], pos: &[u32], sink: &mut S) {
        let (c3, c4, c5) = (
            self.char_ns & (1 << 3) != 0,
            self.char_ns & (1 << 4) != 0,
            self.char_ns & (1 << 5) != 0,
        );
        let mut win: u64 = u64::from(b' ');
        for (i, &b) in norm.iter().enumerate() {
            win = (win << 8) | u64::from(b);
            let end = pos[i] + 1;
            // The stream so far is i + 2 bytes long (with the virtual space).
            if c3 && i >= 1 {
                sink.emit(Feature {
                    bucket: self.bucket((win & 0xFF_FFFF) | (3 << 56), SEED_CHAR),
                    origin: Origin::Char {
                        start: pos[(i + 1).saturating_sub(3)],
                        end,
                    },
                });
            }
            if c4 && i >= 2 {
                sink.emit(Feature {
                    bucket: self.bucket((win & 0xFFFF_FFFF) | (4 << 56), SEED_CHAR),
                    origin: Origin::Char {
                        start: pos[(i + 1).saturating_sub(4)],
                        end,
                    },
                });
            }
            if c5 && i >= 3 {
                sink.emit(Feature {
                    bucket: self.bucket((win & 0xFF_FFFF_FFFF) | (5 << 56), SEED_CHAR),
                    origin: Origin::Char {
                        start: pos[(i + 1).saturating_sub(5)],
                        end,
                    },
                });
            }
        }
    }

    /// A token `text[start..end]` with hash `h` ended: word features and cues.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn token<S: Sink>(
        &self,
        text: &[u8],
        h: u64,
        start: usize,
        end: usize,
        prev: &mut Option<(u64, u32)>,
        (uni, bi, sig): (bool, bool, bool),
        sink: &mut S,
        st: &mut Stats,
    ) {
        // "$5", "£5" (C2 A3), "€5" (E2 82 AC): `$` ends the previous token,
        // the others are word bytes and start this one.
        if sig {
            let t = &text[start..end];
            let digit_at = |k: usize| t.get(k).is_some_and(u8::is_ascii_digit);
            if (start > 0 && text[start - 1] == b'$' && digit_at(0))
                || (t.starts_with(&[0xC2, 0xA3]) && digit_at(2))
                || (t.starts_with(&[0xE2, 0x82, 0xAC]) && digit_at(3))
            {
                st.currency += 1;
            }
        }
        let end = end as u32;
        if uni {
            sink.emit(Feature {
                bucket: self.bucket(h, SEED_WORD),
                origin: Origin::Word {
                    start: start as u32,
                    end,
                },
            });
        }
        let bh = prev.map(|(p, _)| bigram_hash(p, h));
        if let (true, Some(bh), Some((_, ps))) = (bi, bh, *prev) {
            sink.emit(Feature {
                bucket: self.bucket(bh, SEED_BIGRAM),
                origin: Origin::Word { start: ps, end },
            });
        }
        if sig && text[start].is_ascii_digit() {
            let tok = &text[start..end as usize];
            if tok.iter().all(u8::is_ascii_digit) {
                if tok.len() >= 9 {
                    st.long_number = true;
                } else if (4..=6).contains(&tok.len())
                    && prev.is_some_and(|(p, _)| p == self.to_hash)
                {
                    st.short_code = true;
                }
            }
        }
        if sig {
            let c = self.cue(h).or_else(|| bh.and_then(|b| self.cue(b)));
            match c {
                Some(Cue::Money) => st.money += 1,
                Some(Cue::Credential) => st.credential += 1,
                Some(Cue::Urgency) => st.urgency += 1,
                Some(Cue::Url) if st.urls.len() < MAX_URLS => {
                    if let Some(u) = url_at(text, start) {
                        st.urls.push(u);
                    }
                }
                Some(Cue::Url) | None => {}
            }
        }
        *prev = Some((h, start as u32));
    }

    #[inline(never)]
    fn signals<S: Sink>(&self, view: &TextView, text: &[u8], st: &Stats, sink: &mut S) {
        let mut emit = |s: Signal| {
            sink.emit(Feature {
                bucket: self.bucket(s.code(), SEED_SIGNAL),
                origin: Origin::Signal(s),
            })
        };
        let level = |n: u32| -> u8 {
            match n {
                0 => 0,
                1 => 1,
                2..=3 => 2,
                _ => 4,
            }
        };
        let mut flags = UrlFlags::default();
        let mut n_urls = st.urls.len();
        // Host checks once per distinct host (spam repeats its links).
        let mut seen: Vec<&str> = Vec::new();
        for u in &st.urls {
            flags.userinfo |= u.userinfo;
            flags.port |= u.port;
            if !seen.contains(&u.host.as_str()) {
                seen.push(&u.host);
                flags.add_host(&u.host);
            }
        }
        let mut hosts = String::new();
        let mut link_hosts: Vec<UrlHost> = Vec::new();
        for l in view.links.iter().take(MAX_URLS) {
            let Some(u) = url_at(l.href.as_bytes(), 0) else {
                continue;
            };
            n_urls += 1;
            flags.userinfo |= u.userinfo;
            flags.port |= u.port;
            if !flags.mismatch
                && !l.text.is_empty()
                && link_text_mismatch(&l.text, &u.host, &mut hosts)
            {
                flags.mismatch = true;
            }
            if !seen.contains(&u.host.as_str()) && !link_hosts.iter().any(|h| h.host == u.host) {
                link_hosts.push(u);
            }
        }
        for u in &link_hosts {
            flags.add_host(&u.host);
        }
        let nl = level(n_urls as u32);
        if nl > 0 {
            emit(Signal::UrlCount(nl));
        }
        if flags.ip {
            emit(Signal::UrlIp);
        }
        if flags.punycode {
            emit(Signal::UrlPunycode);
        }
        if flags.shortener {
            emit(Signal::UrlShortener);
        }
        if flags.userinfo {
            emit(Signal::UrlUserinfo);
        }
        if flags.lookalike {
            emit(Signal::UrlLookalike);
        }
        if flags.port {
            emit(Signal::UrlPort);
        }
        if flags.mismatch {
            emit(Signal::LinkTextMismatch);
        }
        let (m, c, u) = (level(st.money), level(st.credential), level(st.urgency));
        if m > 0 {
            emit(Signal::Money(m));
        }
        if c > 0 {
            emit(Signal::Credential(c));
        }
        if u > 0 {
            emit(Signal::Urgency(u));
        }
        if m > 0 && u > 0 {
            emit(Signal::MoneyAndUrgency);
        }
        if c > 0 && n_urls > 0 {
            emit(Signal::CredentialAndLink);
        }
        let cl = level(st.currency);
        if cl > 0 {
            emit(Signal::CurrencyAmount(cl));
        }
        let letters = st.upper + st.lower;
        if letters >= 20 && st.upper * 10 > letters * 4 {
            emit(Signal::Shouting);
        }
        let el = level(st.exclaim);
        if el > 0 {
            emit(Signal::Exclaim(el));
        }
        if view.images > 0 && text.len() < 400 {
            emit(Signal::ImageOnly);
        }
        if view.html {
            emit(Signal::Html);
        }
        if st.long_number {
            emit(Signal::LongNumber);
        }
        if st.short_code {
            emit(Signal::ShortCode);
        }
    }
}

const MAX_URLS: usize = 64;

/// Reusable per-thread buffers of the scanner.
#[derive(Default)]
struct Scratch {
    /// Collapsed, normalised text, 8 zero bytes of padding after it.
    norm: Vec<u8>,
    /// Offset in the text view of each collapsed byte (and of the end).
    pos: Vec<u32>,
    /// Bit per collapsed byte: a word byte.
    mask: Vec<u64>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// [`token_hash`] of `norm[start..end]` (already normalised), read 8 bytes
/// at a time (`norm` has 8 bytes of padding).
#[inline(always)]
fn hash_norm(norm: &[u8], start: usize, end: usize) -> u64 {
    let mut h = 0u64;
    let mut p = start;
    while end - p >= 8 {
        let c = u64::from_be_bytes(norm[p..p + 8].try_into().unwrap_or([0; 8]));
        h = chunk_mix(h, c);
        p += 8;
    }
    if p < end {
        let r = end - p;
        let c = u64::from_be_bytes(norm[p..p + 8].try_into().unwrap_or([0; 8]));
        h = chunk_mix(h, c >> (8 * (8 - r)));
    }
    h
}

fn flush_counts(counts: &mut u64, st: &mut Stats) {
    const M: u64 = (1 << 21) - 1;
    st.upper += (*counts & M) as u32;
    st.lower += ((*counts >> 21) & M) as u32;
    st.exclaim += ((*counts >> 42) & M) as u32;
    *counts = 0;
}

#[derive(Default)]
struct Stats {
    money: u32,
    credential: u32,
    urgency: u32,
    currency: u32,
    upper: u32,
    lower: u32,
    exclaim: u32,
    long_number: bool,
    short_code: bool,
    urls: Vec<UrlHost>,
}

struct UrlHost {
    host: String,
    userinfo: bool,
    port: bool,
}

#[derive(Default)]
struct UrlFlags {
    ip: bool,
    punycode: bool,
    shortener: bool,
    userinfo: bool,
    lookalike: bool,
    port: bool,
    mismatch: bool,
}

impl UrlFlags {
    fn add_host(&mut self, host: &str) {
        if is_ip_literal(host) {
            self.ip = true;
            return;
        }
        if host.split('.').any(|l| l.starts_with("xn--")) {
            self.punycode = true;
        }
        if SHORTENERS.contains(&host.trim_start_matches("www.")) {
            self.shortener = true;
        }
        if is_lookalike(host) {
            self.lookalike = true;
        }
    }
}

/// The host of a URL starting at `text[at..]` (`http://`, `https://` or
/// `www.`), lower-cased. Allocates one small string per URL (signals only).
fn url_at(text: &[u8], at: usize) -> Option<UrlHost> {
    let rest = &text[at..];
    let lower_starts = |p: &[u8]| rest.len() >= p.len() && rest[..p.len()].eq_ignore_ascii_case(p);
    let auth_start = if lower_starts(b"https://") {
        8
    } else if lower_starts(b"http://") {
        7
    } else if lower_starts(b"www.") {
        0
    } else {
        return None;
    };
    let auth = &rest[auth_start..];
    let end = auth
        .iter()
        .position(|&b| {
            matches!(
                b,
                b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'\\' | b')' | b']'
            ) || b <= b' '
        })
        .unwrap_or(auth.len())
        .min(256);
    let auth = &auth[..end];
    let (userinfo, hostport) = match auth.iter().rposition(|&b| b == b'@') {
        Some(p) => (true, &auth[p + 1..]),
        None => (false, auth),
    };
    let (host, port) = match hostport.iter().rposition(|&b| b == b':') {
        Some(p) if !hostport.starts_with(b"[") || hostport[..p].ends_with(b"]") => {
            let port = &hostport[p + 1..];
            let default = port == b"80" || port == b"443" || port.is_empty();
            (&hostport[..p], !default)
        }
        _ => (hostport, false),
    };
    let host = String::from_utf8_lossy(host)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some(UrlHost {
        host,
        userinfo,
        port,
    })
}

fn is_ip_literal(host: &str) -> bool {
    if host.starts_with('[') {
        return true;
    }
    // Dotted quad, or a bare decimal / hex integer host (http://3232235777/).
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return true;
    }
    parts.len() == 1
        && (host.bytes().all(|b| b.is_ascii_digit()) && host.len() >= 8
            || host.starts_with("0x")
                && host.len() > 2
                && host[2..].bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The registrable part of a host, approximately: the last two labels, or
/// three under common second-level suffixes (co.uk, com.au, ...).
pub fn registrable(host: &str) -> &str {
    let host = host.trim_end_matches('.');
    // Byte offsets just after the last three dots (labels from the right).
    let mut dots = [usize::MAX; 3];
    let mut k = 0;
    for (i, b) in host.bytes().enumerate().rev() {
        if b == b'.' {
            dots[k] = i;
            k += 1;
            if k == 3 {
                break;
            }
        }
    }
    if k == 0 {
        return host;
    }
    let tld = &host[dots[0] + 1..];
    let second = if k >= 2 {
        &host[dots[1] + 1..dots[0]]
    } else {
        &host[..dots[0]]
    };
    let three = k >= 2
        && tld.len() == 2
        && matches!(second, "co" | "com" | "net" | "org" | "ac" | "gov" | "edu");
    let take = if three { 3 } else { 2 };
    if k < take {
        return host;
    }
    &host[dots[take - 1] + 1..]
}

/// A brand named in the host (possibly with digits for letters) where the
/// registrable domain is not that brand's: `paypal.com.secure-id.net`,
/// `paypa1.com`, `rnicrosoft.com` is not caught (no homoglyph tables).
fn is_lookalike(host: &str) -> bool {
    let reg = registrable(host);
    let reg_name = reg.split('.').next().unwrap_or(reg);
    let mut buf = [0u8; 256];
    let h = host.as_bytes();
    let n = h.len().min(buf.len());
    for (d, &c) in buf.iter_mut().zip(&h[..n]) {
        *d = match c {
            b'0' => b'o',
            b'1' => b'l',
            b'3' => b'e',
            b'5' => b's',
            b'4' | b'@' => b'a',
            c => c,
        };
    }
    let folded = &buf[..n];
    for b in BRANDS {
        if b.len() < 4 || b.len() > n {
            continue; // short names (irs, dhl) hit too many innocent hosts
        }
        if reg_name != *b && folded.windows(b.len()).any(|w| w == b.as_bytes()) {
            return true;
        }
    }
    false
}

/// Whether link text names a domain other than the href's.
fn link_text_mismatch(text: &str, href_host: &str, scratch: &mut String) -> bool {
    let href_reg = registrable(href_host);
    for word in text.split(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == '"') {
        if !word.contains('.') {
            continue;
        }
        let w = word
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_start_matches("HTTP://")
            .trim_start_matches("HTTPS://");
        let host = w.split(['/', '?', '#', ':']).next().unwrap_or("");
        let host = host.trim_end_matches(['.', ',', ';', ')']);
        let labels = host.split('.').count();
        if labels < 2
            || host.contains('@')
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            continue;
        }
        let tld = host.rsplit('.').next().unwrap_or("");
        if tld.len() < 2 || !tld.bytes().all(|b| b.is_ascii_alphabetic()) {
            continue;
        }
        // Needs to look like a host: "www." or a known-ish TLD.
        let mut tld_buf = [0u8; 8];
        let lower_tld = if tld.len() <= 8 {
            tld_buf[..tld.len()].copy_from_slice(tld.as_bytes());
            tld_buf[..tld.len()].make_ascii_lowercase();
            std::str::from_utf8(&tld_buf[..tld.len()]).unwrap_or("")
        } else {
            ""
        };
        if !(host.len() >= 4 && host[..4].eq_ignore_ascii_case("www.")
            || matches!(
                lower_tld,
                "com"
                    | "net"
                    | "org"
                    | "info"
                    | "biz"
                    | "io"
                    | "co"
                    | "us"
                    | "uk"
                    | "de"
                    | "ru"
                    | "cn"
            ))
        {
            continue;
        }
        scratch.clear();
        scratch.push_str(host);
        scratch.make_ascii_lowercase();
        if registrable(scratch) != href_reg {
            return true;
        }
    }
    false
}

/// Training-side sink: collects bucket indices per block; `finish` turns
/// them into a sparse vector of (bucket, value) with the serving scaling.
#[derive(Debug, Default)]
pub struct Collect {
    word: Vec<u32>,
    chr: Vec<u32>,
    sig: Vec<u32>,
}

impl Sink for Collect {
    #[inline]
    fn emit(&mut self, f: Feature) {
        match f.origin {
            Origin::Word { .. } => self.word.push(f.bucket),
            Origin::Char { .. } => self.chr.push(f.bucket),
            Origin::Signal(_) => self.sig.push(f.bucket),
        }
    }
}

impl Collect {
    /// Append the sparse vector to `idx`/`val` and reset; `scales` are the
    /// word and char block scales of the [`FeatureConfig`].
    pub fn finish(&mut self, scales: [f32; 2], idx: &mut Vec<u32>, val: &mut Vec<f32>) {
        for (buf, scale) in [
            (&mut self.word, Some(scales[0])),
            (&mut self.chr, Some(scales[1])),
            (&mut self.sig, None),
        ] {
            if buf.is_empty() {
                continue;
            }
            let scale = match scale {
                Some(s) => s / (buf.len() as f32).sqrt(),
                None => 1.0,
            };
            buf.sort_unstable();
            let mut i = 0;
            while i < buf.len() {
                let b = buf[i];
                let mut j = i + 1;
                while j < buf.len() && buf[j] == b {
                    j += 1;
                }
                idx.push(b);
                val.push((j - i) as f32 * scale);
                i = j;
            }
            buf.clear();
        }
    }
}
