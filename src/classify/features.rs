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
/// With [`FLAG_SIGNAL`]: one signal per family of the charsets the text
/// declared (CJK, Cyrillic, other non-western, UTF-8, unknown), like
/// SpamAssassin's "far away charset" rules; the weight is learned.
pub const FLAG_CHARSET: u32 = 256;
/// Undo Unicode disguises before anything else reads the text: invisible
/// characters dropped, fullwidth and mathematical letters and look-alike
/// Cyrillic/Greek letters in Latin words made ASCII ([`super::unicode`]).
pub const FLAG_UNICODE: u32 = 512;
/// Every flag this featurizer knows: a model file with others was made by
/// a newer sift and cannot be served faithfully by this one.
pub const KNOWN_FLAGS: u32 = FLAG_WORD
    | FLAG_BIGRAM
    | FLAG_CHAR
    | FLAG_SIGNAL
    | FLAG_FOLD_DIGITS
    | FLAG_CHAR3
    | FLAG_CHAR4
    | FLAG_CHAR5
    | FLAG_CHARSET
    | FLAG_UNICODE;
pub const ALL_FLAGS: u32 = FLAG_WORD | FLAG_BIGRAM | FLAG_CHAR | FLAG_SIGNAL | FLAG_FOLD_DIGITS;

/// The `FLAG_*` bits of a comma-separated list of feature block names, as
/// the command line takes them: `word,bigram,char` (3-, 4- and 5-grams) or
/// `char3` / `char4` / `char5`, `signal`, `fold`, `charset`, `unicode`.
pub fn parse_flags(list: &str) -> Result<u32, String> {
    let mut flags = 0;
    for f in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        flags |= match f {
            "word" => FLAG_WORD,
            "bigram" => FLAG_BIGRAM,
            "char" => FLAG_CHAR,
            "char3" => FLAG_CHAR | FLAG_CHAR3,
            "char4" => FLAG_CHAR | FLAG_CHAR4,
            "char5" => FLAG_CHAR | FLAG_CHAR5,
            "signal" => FLAG_SIGNAL,
            "fold" => FLAG_FOLD_DIGITS,
            "charset" => FLAG_CHARSET,
            "unicode" => FLAG_UNICODE,
            other => return Err(format!("unknown feature block {other:?}")),
        };
    }
    Ok(flags)
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            // 2^18 buckets (256 KB of i8 weights): the table fits this
            // CPU's L2 with room to spare; same validation quality as 2^20
            // within a message or two, faster (filters/spam/README.md).
            bits: 18,
            max_bytes: 32 * 1024,
            // Char 4-grams only: one weight lookup per byte instead of three,
            // and a better time split (F1 0.966 vs 0.964 at 0.14 % FPR).
            flags: ALL_FLAGS | FLAG_CHAR4 | FLAG_CHARSET | FLAG_UNICODE,
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
    /// A declared charset of this family (a `text::CHARSET_*` bit).
    Charset(u8),
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
            Signal::Charset(f) => (21, f),
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
            Signal::Charset(f) => format!(
                "charset:{}",
                match f {
                    super::text::CHARSET_CJK => "cjk",
                    super::text::CHARSET_CYRILLIC => "cyrillic",
                    super::text::CHARSET_OTHER => "other_non_western",
                    super::text::CHARSET_UTF8 => "utf8",
                    _ => "unknown",
                }
            ),
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
    /// Whether the sink reads the spans of word and char features
    /// ([`Origin::Word`] and [`Origin::Char`] `start..end`). A sink that
    /// needs only buckets and blocks (the scorers, [`Collect`]) says `false`:
    /// the featurizer then keeps no byte positions and gives empty spans
    /// (`0..0`), and it may hand over a block's features in batches; the
    /// buckets, their counts and their order are the same either way.
    const SPANS: bool = true;
    fn emit(&mut self, f: Feature);
    /// Word features with empty spans, in order (the no-spans path hands
    /// them over in batches); the default is [`Sink::emit`] for each.
    #[inline(always)]
    fn emit_words(&mut self, buckets: &[u32]) {
        for &bucket in buckets {
            self.emit(Feature {
                bucket,
                origin: Origin::Word { start: 0, end: 0 },
            });
        }
    }
    /// Char features with empty spans, in order, like [`Sink::emit_words`].
    #[inline(always)]
    fn emit_chars(&mut self, buckets: &[u32]) {
        for &bucket in buckets {
            self.emit(Feature {
                bucket,
                origin: Origin::Char { start: 0, end: 0 },
            });
        }
    }
    /// Word features with empty spans of tokens of word hashes `hs`, in
    /// order: per token its unigram, then its bigram with the token before
    /// (`prev` for the first; none if `prev` is `None`), buckets as `hash`
    /// gives them (a scorer sums the weights in the loop that hashes the
    /// tokens); the default hands them to [`Sink::emit_words`] in blocks.
    #[inline(always)]
    fn emit_word_pairs(&mut self, hs: &[u64], prev: Option<u64>, hash: WordHash) {
        let mut buf = [0u32; 128];
        let mut p = prev;
        for c in hs.chunks(64) {
            let mut k = 0;
            for &h in c {
                buf[k] = hash.uni(h);
                k += 1;
                if let Some(q) = p {
                    buf[k] = hash.bi(q, h);
                    k += 1;
                }
                p = Some(h);
            }
            self.emit_words(&buf[..k]);
        }
    }
    /// Char features with empty spans, in order: one per 4-byte window of
    /// `bytes`, in bucket `hash.bucket(window as a big-endian u32)`,
    /// computed as the sink reads them (a scorer sums the weights in the
    /// loop that hashes the windows); the default hands them to
    /// [`Sink::emit_chars`] in blocks of 64.
    #[inline(always)]
    fn emit_char4(&mut self, bytes: &[u8], hash: Char4Hash) {
        let bucket = |w: u32| hash.bucket(w);
        let mut buf = [0u32; 64];
        let mut i = 3;
        while i < bytes.len() {
            let end = (i + 64).min(bytes.len());
            let n = end - i;
            for (slot, w) in buf[..n].iter_mut().zip(bytes[i - 3..end].windows(4)) {
                *slot = bucket(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
            }
            self.emit_chars(&buf[..n]);
            i = end;
        }
    }
}

/// The word buckets of tokens from their word hashes: unigram
/// `bucket(h ^ uni_key)`, bigram `bucket(bigram(p, h) ^ bi_key)` with `p`
/// the hash of the token before, where `bucket(x)` is the top
/// `64 - shift` bits of `x * 0x9e37_79b9_7f4a_7c15`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordHash {
    pub uni_key: u64,
    pub bi_key: u64,
    pub shift: u32,
}

impl WordHash {
    pub const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

    /// The bigram hash of the tokens of hashes `p` then `h`.
    #[inline(always)]
    pub fn bigram(p: u64, h: u64) -> u64 {
        bigram_hash(p, h)
    }

    #[inline(always)]
    pub fn uni(self, h: u64) -> u32 {
        ((h ^ self.uni_key).wrapping_mul(Self::MUL) >> self.shift) as u32
    }

    #[inline(always)]
    pub fn bi(self, p: u64, h: u64) -> u32 {
        ((bigram_hash(p, h) ^ self.bi_key).wrapping_mul(Self::MUL) >> self.shift) as u32
    }
}

/// The bucket of a char 4-gram window (its 4 bytes as a big-endian u32):
/// the top `64 - shift` bits of `(window ^ key) * 0x9e37_79b9_7f4a_7c15`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Char4Hash {
    pub key: u64,
    pub shift: u32,
}

impl Char4Hash {
    pub const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

    #[inline(always)]
    pub fn bucket(self, w: u32) -> u32 {
        ((u64::from(w) ^ self.key).wrapping_mul(Self::MUL) >> self.shift) as u32
    }
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

/// Bits of a word hash (its top ones) indexing [`Featurizer::cue_tab`]:
/// 32 KB, and about one token in 400 that is no cue gets past it.
const CUE_TAB_BITS: u32 = 15;
/// [`Featurizer::cue_tab`]: some cue hash has these top bits.
const CUE_ANY: u8 = 1;
/// [`Featurizer::cue_tab`]: the first word of some cue phrase of two or
/// more words has these top bits.
const CUE_PREFIX: u8 = 2;

/// Per first byte of a token: [`CUE_ANY`] if the token may be a currency
/// amount or a number (it starts with a digit, `£` or `€`: 0xC2, 0xE2).
static SPECIAL_FIRST: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        if matches!(b as u8, b'0'..=b'9' | 0xC2 | 0xE2) {
            t[b] = CUE_ANY;
        }
        b += 1;
    }
    t
};

#[inline(always)]
fn cue_tab_index(h: u64) -> usize {
    (h >> (64 - CUE_TAB_BITS)) as usize
}

/// The tokens that end in word `k` of the token-byte bit mask (bit i set:
/// byte i of the normalised text belongs to a token), as `(start, end)`
/// byte ranges in order. A token that starts in an earlier word starts at
/// `*cur_start`; one that runs on into the next word leaves its start
/// there.
#[inline(always)]
fn spans_in_word(mask: &[u64], k: usize, cur_start: &mut usize, mut f: impl FnMut(usize, usize)) {
    let w = mask[k];
    let prev_top = if k > 0 { mask[k - 1] >> 63 } else { 0 };
    let next_low = mask.get(k + 1).map_or(0, |x| x & 1);
    let mut starts = w & !((w << 1) | prev_top);
    let mut ends = w & !((w >> 1) | (next_low << 63));
    let base = 64 * k;
    if w & prev_top & 1 != 0 {
        // A token runs on from the word before: the first end is its end
        // (none: it covers the whole word, and no other token starts).
        if ends == 0 {
            return;
        }
        f(*cur_start, base + ends.trailing_zeros() as usize + 1);
        ends &= ends - 1;
    }
    // The other tokens start and end here, in turn: the i-th end closes
    // the i-th start (one start may be left, of a token that runs on).
    while ends != 0 {
        let (s, e) = (
            starts.trailing_zeros() as usize,
            ends.trailing_zeros() as usize,
        );
        starts &= starts - 1;
        ends &= ends - 1;
        f(base + s, base + e + 1);
    }
    if starts != 0 {
        *cur_start = base + starts.trailing_zeros() as usize;
    }
}

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

/// A word byte of raw text (the reference definition: tests and
/// `features_ref`; serving reads [`is_word_norm`] of the normalised byte).
#[cfg(test)]
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

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
    /// Per top [`CUE_TAB_BITS`] bits of a hash: [`CUE_ANY`] if a cue hash
    /// (unigram or bigram) has them, the filter in front of every exact
    /// lookup (most tokens stop here, one byte load); [`CUE_PREFIX`] if the first word of a phrase of two or
    /// more words has them (the bigram with the next token is tested only
    /// after such a token).
    cue_tab: Box<[u8; 1 << CUE_TAB_BITS]>,
    /// Per byte: its normalised form (ASCII lower-cased, digits folded if
    /// configured, whitespace and controls as a space) in the low 8 bits,
    /// and bit 8 set for a word byte.
    byte_tab: [u16; 256],
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
            cue_tab: Box::new([0; 1 << CUE_TAB_BITS]),
            byte_tab: [0; 256],
            char_ns: 0,
            to_hash: token_hash(b"to", digits),
        };
        // Built here, not on the first URL a scan meets.
        std::sync::LazyLock::force(&BRAND_AC);
        for b in 0..=255u8 {
            let norm = norm_byte(b, digits);
            f.byte_tab[usize::from(b)] = u16::from(norm) | (u16::from(is_word_norm(norm)) << 8);
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
                let (mut first, mut words) = (0u64, 0);
                for (i, w) in phrase
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .enumerate()
                {
                    let t = token_hash(w.as_bytes(), digits);
                    h = if i == 0 { t } else { bigram_hash(h, t) };
                    if i == 0 {
                        first = t;
                    }
                    words += 1;
                }
                f.insert_cue(h, cue);
                if words >= 2 {
                    f.cue_tab[cue_tab_index(first)] |= CUE_PREFIX;
                }
            }
        }
        f
    }

    pub fn config(&self) -> &FeatureConfig {
        &self.cfg
    }

    /// Bytes of the featurizer's own tables (cue tables, byte
    /// table). The scanner's per-thread scratch comes on top, kept per
    /// thread: about 1.6 bytes per featurized byte when scoring or
    /// training, 4 more per byte for sinks that read spans (`explain`).
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.cue_keys.len() * 8
            + self.cue_vals.len() * std::mem::size_of::<Option<Cue>>()
            + std::mem::size_of_val(&*self.cue_tab)
    }

    fn insert_cue(&mut self, h: u64, cue: Cue) {
        self.cue_tab[cue_tab_index(h)] |= CUE_ANY;
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
        if self.cue_tab[cue_tab_index(h)] & CUE_ANY == 0 {
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

    /// The text this featurizer reads of `text`: with [`FLAG_UNICODE`],
    /// folded by [`super::unicode::fold`] (only a text with non-ASCII bytes
    /// can change; an ASCII one is borrowed as it is).
    pub fn folded<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.cfg.flags & FLAG_UNICODE == 0 || !super::unicode::may_fold(text.as_bytes()) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = String::new();
        if super::unicode::fold(self.fold_input(text), &mut out) {
            std::borrow::Cow::Owned(out)
        } else {
            std::borrow::Cow::Borrowed(text)
        }
    }

    /// The part of `text` worth folding: folding never lengthens, and at
    /// most 4 input bytes make one output byte, so 4 × `max_bytes` (cut
    /// at a char boundary) fills the featurized prefix.
    pub(crate) fn fold_input<'a>(&self, text: &'a str) -> &'a str {
        let mut end = text.len().min(4 * self.cfg.max_bytes as usize);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    }

    /// Emit every feature of `view` into `sink`.
    #[inline(always)]
    pub fn run<S: Sink>(&self, view: &TextView, sink: &mut S) {
        if self.cfg.flags & FLAG_UNICODE != 0
            && super::unicode::may_fold(self.fold_input(&view.text).as_bytes())
        {
            // Folded into a per-thread buffer (no allocation per message
            // in steady state); a sink that re-enters gets a fresh one.
            FOLDED.with(|cell| match cell.try_borrow_mut() {
                Ok(mut buf) => {
                    buf.clear();
                    super::unicode::fold(self.fold_input(&view.text), &mut buf);
                    self.run_text(view, buf.as_bytes(), sink);
                }
                Err(_) => {
                    let mut buf = String::new();
                    super::unicode::fold(self.fold_input(&view.text), &mut buf);
                    self.run_text(view, buf.as_bytes(), sink);
                }
            });
        } else {
            self.run_text(view, view.text.as_bytes(), sink);
        }
    }

    #[inline(always)]
    fn run_text<S: Sink>(&self, view: &TextView, text: &[u8], sink: &mut S) {
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
    /// mark word bytes in a bit mask (class counts come from a separate,
    /// vectorised loop). Pass 2: word tokens from the bit mask (one
    /// iteration per token, not per byte). Pass 3: char n-grams over the
    /// collapsed bytes, one weight lookup per size.
    ///
    /// With a sink that needs no spans (`S::SPANS == false`: the scorers,
    /// [`Collect`]) the scanner keeps no per-byte positions, works on the
    /// normalised bytes only, and hands the sink its word and char buckets
    /// in batches: a short loop of independent weight loads, so many of
    /// them (mostly L2 misses on a 1 MB table) are in flight at once.
    #[inline(always)]
    fn scan<S: Sink>(&self, text: &[u8], sc: &mut Scratch, sink: &mut S, st: &mut Stats) {
        let n = text.len();
        if S::SPANS {
            count_classes(text, st);
        }
        // Pass 1 writes every byte of norm[..n + 8] (zeros after the
        // collapsed text): no need to clear it first.
        if sc.norm.len() < n + 8 {
            sc.norm.resize(n + 8, 0);
        }
        sc.mask.clear();
        sc.mask.resize(n / 64 + 2, 0);
        if S::SPANS {
            sc.pos.clear();
            sc.pos.resize(n + 1, 0);
        }
        let norm = &mut sc.norm[..n + 8];
        let pos = &mut sc.pos[..];
        let mask = &mut sc.mask[..];
        let m = if S::SPANS {
            self.collapse_spans(text, norm, pos)
        } else {
            self.collapse(text, norm, &mut sc.ckpt, st)
        };
        let ckpt = &sc.ckpt[..];
        // Bytes past `m` are zero (no word bit).
        word_mask(&norm[..m.div_ceil(8) * 8], mask);
        let flags = self.cfg.flags;
        if flags & (FLAG_WORD | FLAG_BIGRAM | FLAG_SIGNAL) != 0 {
            let modes = (
                flags & FLAG_WORD != 0,
                flags & FLAG_BIGRAM != 0,
                flags & FLAG_SIGNAL != 0,
            );
            if !S::SPANS {
                let tok = &mut sc.tok;
                self.words_batched(text, norm, ckpt, mask, m, modes, tok, sink, st);
            } else {
                self.words_spans(text, norm, pos, ckpt, mask, m, modes, sink, st);
            }
        }
        if self.char_ns == 1 << 4 && !S::SPANS {
            self.scan_char4(&norm[..m], sink);
        } else if self.char_ns != 0 {
            self.scan_chars(&norm[..m], pos, sink);
        }
    }

    /// Pass 2 for sinks that read spans: each token's features as it ends.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn words_spans<S: Sink>(
        &self,
        text: &[u8],
        norm: &[u8],
        pos: &[u32],
        ckpt: &[u32],
        mask: &[u64],
        m: usize,
        modes: (bool, bool, bool),
        sink: &mut S,
        st: &mut Stats,
    ) {
        {
            let words = m.div_ceil(64);
            // A mask bit can be set past `m` only by a dropped byte, and
            // dropped bytes are spaces (no bit): nothing to clear.
            // Kept apart from `tk`: `find` is not inlined, and a pointer
            // into `tk` passed to it would keep `tk.len` in memory.
            let mut raw = RawCursor::default();
            let mut tk = Tokens {
                prev: None,
                buf: [0; WORD_BATCH],
                len: 0,
            };
            let mut cur_start = 0usize;
            for k in 0..words {
                spans_in_word(mask, k, &mut cur_start, |start, end| {
                    let h = hash_norm_first(norm, start, end).0;
                    self.token(
                        text, norm, pos, ckpt, h, start, end, &mut tk, &mut raw, modes, sink, st,
                    );
                });
                // At most 64 features per mask word.
                if !S::SPANS && tk.len > WORD_BATCH - 64 {
                    tk.flush(sink);
                }
            }
            if !S::SPANS {
                tk.flush(sink);
            }
        }
    }

    /// Pass 2 without spans (the scorers, [`Collect`]), in batches of
    /// tokens: boundaries first (a tight loop over the bit mask), then in
    /// [`Featurizer::flush_tokens`] the batch's hashes, its word features
    /// (handed to [`Sink::emit_word_pairs`]: a scorer sums their weights as
    /// it hashes them), then its cues and number checks, each in a loop of
    /// its own. Same features in the same order as
    /// [`Featurizer::words_spans`]; short loops keep their state in
    /// registers.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn words_batched<S: Sink>(
        &self,
        text: &[u8],
        norm: &[u8],
        ckpt: &[u32],
        mask: &[u64],
        m: usize,
        modes: (bool, bool, bool),
        b: &mut TokBatch,
        sink: &mut S,
        st: &mut Stats,
    ) {
        let words = m.div_ceil(64);
        let mut raw = RawCursor::default();
        // The batch's length in a register; `b.len` is set for the flush.
        let mut len = 0usize;
        let mut prev: Option<u64> = None;
        let mut cur_start = 0usize;
        // One token's span into the batch (a function, not a closure:
        // inlined at both of its call sites). Its hash comes later, in
        // `flush_tokens`: a loop of its own, with few registers live.
        #[inline(always)]
        fn push(b: &mut TokBatch, len: &mut usize, start: usize, end: usize) {
            if *len < TOK_BATCH {
                b.start[*len] = start as u32;
                b.end[*len] = end as u32;
                *len += 1;
            }
        }
        for k in 0..words {
            spans_in_word(mask, k, &mut cur_start, |s, e| push(b, &mut len, s, e));
            // At most 32 tokens end in a mask word.
            if len > TOK_BATCH - 32 {
                b.len = len;
                self.flush_tokens(b, &mut prev, text, norm, ckpt, &mut raw, modes, sink, st);
                len = 0;
            }
        }
        b.len = len;
        self.flush_tokens(b, &mut prev, text, norm, ckpt, &mut raw, modes, sink, st);
        b.len = 0;
    }

    /// A batch of tokens: their hashes, word buckets (unigram, then the
    /// bigram with the token before, per token), then cues, currency and
    /// number checks. `prev`: the hash of the token before the batch;
    /// updated. Not inlined (one call per batch of up to 256 tokens): on
    /// its own, each loop keeps more of its state in registers.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn flush_tokens<S: Sink>(
        &self,
        b: &mut TokBatch,
        prev: &mut Option<u64>,
        text: &[u8],
        norm: &[u8],
        ckpt: &[u32],
        raw: &mut RawCursor,
        (uni, bi, sig): (bool, bool, bool),
        sink: &mut S,
        st: &mut Stats,
    ) {
        let n = b.len.min(TOK_BATCH);
        if n == 0 {
            return;
        }
        for ((h, f), (&s, &e)) in b.hash[..n]
            .iter_mut()
            .zip(&mut b.special[..n])
            .zip(b.start[..n].iter().zip(&b.end[..n]))
        {
            let first;
            (*h, first) = hash_norm_first(norm, s as usize, e as usize);
            *f = SPECIAL_FIRST[usize::from(first)];
        }
        let hs = &b.hash[..n];
        let p0 = *prev;
        *prev = Some(hs[n - 1]);
        let wk = SEED_WORD ^ self.cfg.seed;
        let bk = SEED_BIGRAM ^ self.cfg.seed;
        let shift = self.shift;
        let idx = |h: u64| (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as u32;
        let out = &mut b.out;
        if uni && bi {
            // The shipped configuration: per token its unigram, then its
            // bigram with the token before (none for the first token),
            // bucketed as the sink reads them (a scorer sums the weights
            // in the loop that hashes them).
            let hash = WordHash {
                uni_key: wk,
                bi_key: bk,
                shift,
            };
            sink.emit_word_pairs(hs, p0, hash);
        } else if uni || bi {
            let mut k = 0;
            let mut p = p0;
            for &h in hs {
                if uni {
                    out[k] = idx(h ^ wk);
                    k += 1;
                }
                if let (true, Some(q)) = (bi, p) {
                    out[k] = idx(bigram_hash(q, h) ^ bk);
                    k += 1;
                }
                p = Some(h);
            }
            sink.emit_words(&out[..k]);
        }
        if !sig {
            return;
        }
        // Tokens that may have signals go to `token_signals`, in order:
        // those that start with a digit, `£` or `€` (0xC2, 0xE2), those
        // whose hash may be a cue (one byte of `cue_tab`), and those whose
        // bigram with the token before may be a cue. A cue bigram's first
        // word is the first word of a cue phrase, so the bigram's table
        // test is only made after a token marked as one (`CUE_PREFIX`):
        // most tokens need one table load.
        let tab = &*self.cue_tab;
        let maybe_cue = |h: u64| tab[cue_tab_index(h)] & CUE_ANY != 0;
        let mut cx = SigCx {
            text,
            norm,
            ckpt,
            raw,
            st,
        };
        let (mut p, mut after_prefix) = match p0 {
            Some(p) => (p, tab[cue_tab_index(p)] & CUE_PREFIX != 0),
            None => (0, false),
        };
        for (t, (&h, &special)) in hs.iter().zip(&b.special[..n]).enumerate() {
            let e = tab[cue_tab_index(h)];
            if (e | special) & CUE_ANY != 0 || (after_prefix && maybe_cue(bigram_hash(p, h))) {
                // The token before: in this batch, or the one before it.
                let q = if t == 0 { p0 } else { Some(p) };
                let (s, end) = (b.start[t] as usize, b.end[t] as usize);
                self.token_signals(&mut cx, s, end, h, q);
            }
            after_prefix = e & CUE_PREFIX != 0;
            p = h;
        }
    }

    /// The signals of one token `norm[s..e]` with hash `h` (`p`: the hash
    /// of the token before): currency amounts, long numbers and short
    /// codes, cue words and bigrams, URLs.
    #[inline(never)]
    fn token_signals(&self, cx: &mut SigCx, s: usize, e: usize, h: u64, p: Option<u64>) {
        let SigCx {
            text,
            norm,
            ckpt,
            raw,
            st,
        } = cx;
        let first = norm[s];
        if matches!(first, b'0'..=b'9' | 0xC2 | 0xE2) {
            let t = &norm[s..e];
            let digit_at = |k: usize| t.get(k).is_some_and(u8::is_ascii_digit);
            if (s > 0 && norm[s - 1] == b'$' && digit_at(0))
                || (t.starts_with(&[0xC2, 0xA3]) && digit_at(2))
                || (t.starts_with(&[0xE2, 0x82, 0xAC]) && digit_at(3))
            {
                st.currency += 1;
            }
            if first.is_ascii_digit() && t.iter().all(u8::is_ascii_digit) {
                if t.len() >= 9 {
                    st.long_number = true;
                } else if (4..=6).contains(&t.len()) && p == Some(self.to_hash) {
                    st.short_code = true;
                }
            }
        }
        let c = match self.cue(h) {
            Some(c) => Some(c),
            None => p.and_then(|q| self.cue(bigram_hash(q, h))),
        };
        match c {
            None => {}
            Some(Cue::Money) => st.money += 1,
            Some(Cue::Credential) => st.credential += 1,
            Some(Cue::Urgency) => st.urgency += 1,
            Some(Cue::Url) if st.urls.len() < MAX_URLS => {
                if let Some(u) = url_at(text, raw.find(self, text, ckpt, s)) {
                    st.urls.push(u);
                }
            }
            Some(Cue::Url) => {}
        }
    }

    /// Pass 1 with positions: normalise, collapse whitespace runs to one
    /// space (dropping leading whitespace), record each kept byte's offset
    /// in the text. Returns the collapsed length; `norm` is zero after it.
    #[inline(always)]
    fn collapse_spans(&self, text: &[u8], norm: &mut [u8], pos: &mut [u32]) -> usize {
        let mut out = 0usize;
        let mut last_space = true;
        for (i, &raw) in text.iter().enumerate() {
            let b = self.byte_tab[usize::from(raw)] as u8;
            let space = b == b' ';
            norm[out] = b;
            pos[out] = i as u32;
            out += usize::from(!(space & last_space));
            last_space = space;
        }
        // pos[out] marks the end.
        pos[out] = text.len() as u32;
        norm[out..].fill(0);
        out
    }

    /// Pass 1 without positions, in two loops: normalise every byte in
    /// place into `norm` and count the text's letter classes into `st`
    /// ([`normalise_count`]: no table, so the compiler vectorises it), then
    /// drop the spaces that follow a space 8 bytes at a time
    /// ([`space_lanes`]); when none of the 8 is dropped, store all 8 at
    /// once, else compact them one by one. The compaction writes at or
    /// before the bytes it has read, so it works in place. A text with no
    /// whitespace to drop (none at its start, none after whitespace: most
    /// short messages) skips the compaction ([`drops_any`]).
    #[inline(always)]
    fn collapse(&self, text: &[u8], norm: &mut [u8], ckpt: &mut Vec<u32>, st: &mut Stats) -> usize {
        let digits = self.cfg.flags & FLAG_FOLD_DIGITS != 0;
        let n = text.len();
        normalise_count(text, &mut norm[..n], digits, st);
        if !drops_any(text) {
            // The collapsed text is the normalised text: chunk c has 8c
            // bytes before it.
            ckpt.resize(n / 8 + 1, 0);
            for (c, k) in ckpt.iter_mut().enumerate() {
                *k = (8 * c) as u32;
            }
            norm[n..].fill(0);
            return n;
        }
        let mut out = 0usize;
        // High bit of the last lane: the previous byte was a space (true
        // before the text, so leading whitespace is dropped).
        let mut last_space = H;
        // Written in place (resized only when the length changes).
        ckpt.resize(n / 8 + 1, 0);
        let mut none = 0u32;
        let (ck_last, ck) = match ckpt.split_last_mut() {
            Some((l, c)) => (l, c),
            None => (&mut none, &mut [][..]),
        };
        let mut i = 0usize;
        for k in ck.iter_mut() {
            *k = out as u32;
            let Some(c) = norm.get(i..).and_then(|r| r.first_chunk::<8>()) else {
                break;
            };
            let x = u64::from_le_bytes(*c);
            let sp = space_lanes(x);
            let drop = sp & ((sp << 8) | (last_space >> 56));
            last_space = sp;
            let bytes = x.to_le_bytes();
            if drop == 0 {
                norm[out..out + 8].copy_from_slice(&bytes);
                out += 8;
            } else {
                let keep = !drop & H;
                for (j, &b) in bytes.iter().enumerate() {
                    norm[out] = b;
                    out += ((keep >> (8 * j + 7)) & 1) as usize;
                }
            }
            i += 8;
        }
        *ck_last = out as u32;
        let mut last_space = last_space >> 63 != 0;
        for j in i..n {
            let b = norm[j];
            let space = b == b' ';
            norm[out] = b;
            out += usize::from(!(space & last_space));
            last_space = space;
        }
        norm[out..].fill(0);
        out
    }

    /// Char 4-grams only, no spans (the serving configuration): bucket
    /// indices of a block of bytes first, then the block's weights, so the
    /// loads do not wait on each other or on the hashing.
    #[inline(always)]
    fn scan_char4<S: Sink>(&self, norm: &[u8], sink: &mut S) {
        if norm.len() < 3 {
            return;
        }
        // bucket(win | 4 << 56, SEED_CHAR) with the seeds folded into one
        // constant (the window has no bits in the top byte).
        let hash = Char4Hash {
            key: (4u64 << 56) ^ SEED_CHAR ^ self.cfg.seed,
            shift: self.shift,
        };
        // The first gram: a virtual space and the first three bytes.
        let first = u32::from_be_bytes([b' ', norm[0], norm[1], norm[2]]);
        sink.emit_chars(&[hash.bucket(first)]);
        // Grams ending at norm[3..]: windows of 4 bytes, bucketed as the
        // sink consumes them (a scorer sums their weights in the same loop).
        sink.emit_char4(norm, hash);
    }

    /// Char n-grams of the collapsed, normalised bytes, with a virtual space
    /// before the first one (any sizes, spans if the sink wants them).
    #[inline(always)]
    fn scan_chars<S: Sink>(&self, norm: &[u8], pos: &[u32], sink: &mut S) {
        let (c3, c4, c5) = (
            self.char_ns & (1 << 3) != 0,
            self.char_ns & (1 << 4) != 0,
            self.char_ns & (1 << 5) != 0,
        );
        let origin = |i: usize, n: usize| {
            if S::SPANS {
                Origin::Char {
                    start: pos[(i + 1).saturating_sub(n)],
                    end: pos[i] + 1,
                }
            } else {
                Origin::Char { start: 0, end: 0 }
            }
        };
        let mut win: u64 = u64::from(b' ');
        for (i, &b) in norm.iter().enumerate() {
            win = (win << 8) | u64::from(b);
            // The stream so far is i + 2 bytes long (with the virtual space).
            if c3 && i >= 1 {
                sink.emit(Feature {
                    bucket: self.bucket((win & 0xFF_FFFF) | (3 << 56), SEED_CHAR),
                    origin: origin(i, 3),
                });
            }
            if c4 && i >= 2 {
                sink.emit(Feature {
                    bucket: self.bucket((win & 0xFFFF_FFFF) | (4 << 56), SEED_CHAR),
                    origin: origin(i, 4),
                });
            }
            if c5 && i >= 3 {
                sink.emit(Feature {
                    bucket: self.bucket((win & 0xFF_FFFF_FFFF) | (5 << 56), SEED_CHAR),
                    origin: origin(i, 5),
                });
            }
        }
    }

    /// A token `norm[s..e]` with hash `h` ended: word features and cues.
    /// Everything but the spans and the URL host is read from the
    /// normalised bytes: inside a token they are the text's bytes folded
    /// (same length, same digits, same non-ASCII bytes), and the byte
    /// before a token is `$` in `norm` exactly when it is in the text
    /// (only whitespace is dropped).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn token<S: Sink>(
        &self,
        text: &[u8],
        norm: &[u8],
        pos: &[u32],
        ckpt: &[u32],
        h: u64,
        s: usize,
        e: usize,
        tk: &mut Tokens,
        raw: &mut RawCursor,
        (uni, bi, sig): (bool, bool, bool),
        sink: &mut S,
        st: &mut Stats,
    ) {
        let first = norm[s];
        // "$5", "£5" (C2 A3), "€5" (E2 82 AC): `$` ends the previous token,
        // the others are word bytes and start this one.
        if sig && matches!(first, b'0'..=b'9' | 0xC2 | 0xE2) {
            let t = &norm[s..e];
            let digit_at = |k: usize| t.get(k).is_some_and(u8::is_ascii_digit);
            if (s > 0 && norm[s - 1] == b'$' && digit_at(0))
                || (t.starts_with(&[0xC2, 0xA3]) && digit_at(2))
                || (t.starts_with(&[0xE2, 0x82, 0xAC]) && digit_at(3))
            {
                st.currency += 1;
            }
        }
        // Spans in the text view (only for sinks that read them).
        let (start, end) = if S::SPANS {
            (pos[s], pos[e - 1] + 1)
        } else {
            (0, 0)
        };
        if uni {
            tk.emit(
                sink,
                Feature {
                    bucket: self.bucket(h, SEED_WORD),
                    origin: Origin::Word { start, end },
                },
            );
        }
        let bh = tk.prev.map(|(p, _)| bigram_hash(p, h));
        if let (true, Some(bh), Some((_, ps))) = (bi, bh, tk.prev) {
            tk.emit(
                sink,
                Feature {
                    bucket: self.bucket(bh, SEED_BIGRAM),
                    origin: Origin::Word { start: ps, end },
                },
            );
        }
        if sig && first.is_ascii_digit() {
            let tok = &norm[s..e];
            if tok.iter().all(u8::is_ascii_digit) {
                if tok.len() >= 9 {
                    st.long_number = true;
                } else if (4..=6).contains(&tok.len())
                    && tk.prev.is_some_and(|(p, _)| p == self.to_hash)
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
                    let at = if S::SPANS {
                        pos[s] as usize
                    } else {
                        raw.find(self, text, ckpt, s)
                    };
                    if let Some(u) = url_at(text, at) {
                        st.urls.push(u);
                    }
                }
                Some(Cue::Url) | None => {}
            }
        }
        tk.prev = Some((h, start));
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
        if self.cfg.flags & FLAG_CHARSET != 0 {
            let mut c = view.charsets;
            while c != 0 {
                emit(Signal::Charset(1 << c.trailing_zeros()));
                c &= c - 1;
            }
        }
    }
}

/// Word features are handed to a no-spans sink in batches of up to this
/// many buckets.
const WORD_BATCH: usize = 256;

/// Tokens handed over per batch by [`Featurizer::words_batched`].
const TOK_BATCH: usize = 256;

/// A batch of tokens: spans in the collapsed bytes, word hashes and
/// [`SPECIAL_FIRST`] of their first bytes, and room for their word buckets
/// (kept in the thread's scratch).
struct TokBatch {
    start: [u32; TOK_BATCH],
    end: [u32; TOK_BATCH],
    hash: [u64; TOK_BATCH],
    special: [u8; TOK_BATCH],
    len: usize,
    out: [u32; 2 * TOK_BATCH],
}

impl Default for TokBatch {
    fn default() -> Self {
        TokBatch {
            start: [0; TOK_BATCH],
            end: [0; TOK_BATCH],
            hash: [0; TOK_BATCH],
            special: [0; TOK_BATCH],
            len: 0,
            out: [0; 2 * TOK_BATCH],
        }
    }
}

/// What [`Featurizer::token_signals`] reads and updates besides the token:
/// one pointer to pass instead of five.
struct SigCx<'a> {
    text: &'a [u8],
    norm: &'a [u8],
    ckpt: &'a [u32],
    raw: &'a mut RawCursor,
    st: &'a mut Stats,
}

/// Pass-2 state: the previous token (hash, span start), the batch of word
/// buckets.
struct Tokens {
    prev: Option<(u64, u32)>,
    buf: [u32; WORD_BATCH],
    len: usize,
}

impl Tokens {
    #[inline(always)]
    fn emit<S: Sink>(&mut self, sink: &mut S, f: Feature) {
        if S::SPANS {
            sink.emit(f);
        } else {
            self.buf[self.len] = f.bucket;
            self.len += 1;
        }
    }

    #[inline(always)]
    fn flush<S: Sink>(&mut self, sink: &mut S) {
        sink.emit_words(&self.buf[..self.len]);
        self.len = 0;
    }
}

/// Text position of a collapsed byte, found by replaying the collapse from
/// the last one asked for. Used only for URL cues without spans; they come
/// in text order, so a message is replayed at most once.
struct RawCursor {
    /// Next text byte to look at.
    raw: usize,
    /// Bytes kept among `text[..raw]`.
    kept: usize,
    last_space: bool,
}

impl Default for RawCursor {
    fn default() -> Self {
        RawCursor {
            raw: 0,
            kept: 0,
            last_space: true,
        }
    }
}

impl RawCursor {
    /// Position in `text` of collapsed byte `s` (not before the last one
    /// asked for); `ckpt` from [`Featurizer::collapse`].
    #[inline(never)]
    fn find(&mut self, fz: &Featurizer, text: &[u8], ckpt: &[u32], s: usize) -> usize {
        // The last 8-byte chunk with at most `s` collapsed bytes before it:
        // the byte is in it or after it.
        let c = ckpt.partition_point(|&k| k as usize <= s).saturating_sub(1);
        if 8 * c > self.raw {
            self.raw = 8 * c;
            self.kept = ckpt[c] as usize;
            self.last_space = c == 0
                || text
                    .get(8 * c - 1)
                    .is_none_or(|&b| fz.byte_tab[usize::from(b)] as u8 == b' ');
        }
        while let Some(&b) = text.get(self.raw) {
            let space = fz.byte_tab[usize::from(b)] as u8 == b' ';
            let keep = !(space & self.last_space);
            self.last_space = space;
            self.raw += 1;
            if keep {
                self.kept += 1;
                if self.kept == s + 1 {
                    return self.raw - 1;
                }
            }
        }
        text.len()
    }
}

const L8: u64 = 0x0101_0101_0101_0101;
const H: u64 = 0x8080_8080_8080_8080;

/// A byte normalised as [`Featurizer`]'s byte table does it (ASCII
/// lower-cased, digits to `0` if `digits`, bytes up to 0x20 to a space,
/// the rest unchanged), with compares and bit operations only: a loop of
/// these is vector code. The range tests are an add and a signed compare
/// each, and no select is needed: bytes up to 0x20 become 0x20 by a max,
/// upper-case letters gain 0x20 by an or, and digits (0x30 to 0x39) lose
/// their low four bits.
#[inline(always)]
fn norm_byte(b: u8, digits: bool) -> u8 {
    let digit = digits && in_range(b, b'0', 10);
    (b.max(b' ') | (u8::from(in_range(b, b'A', 26)) << 5)) & !(u8::from(digit) * 0x0f)
}

/// `lo <= b < lo + len` (`lo >= 1`, `len <= 128`) as an add and a signed
/// compare: one of each in vector code (an unsigned compare is three).
#[inline(always)]
fn in_range(b: u8, lo: u8, len: u8) -> bool {
    (b.wrapping_add(0x80u8.wrapping_sub(lo)) as i8) < (i8::MIN as u8).wrapping_add(len) as i8
}

/// A normalised byte is a word byte: non-ASCII, `0-9` or `a-z`
/// (normalised bytes have no upper case).
#[inline(always)]
fn is_word_norm(b: u8) -> bool {
    (b >= 0x80) | in_range(b, b'0', 10) | in_range(b, b'a', 26)
}

/// `out[i] = norm_byte(text[i])`, and [`count_classes`] of `text` into
/// `st`, in one loop the compiler vectorises (byte counters per block of
/// 224 bytes, a multiple of the vector step: no scalar tail per block; one
/// loop per value of `digits`, so neither tests it per step).
#[inline(always)]
fn normalise_count(text: &[u8], out: &mut [u8], digits: bool, st: &mut Stats) {
    fn each<const DIGITS: bool>(text: &[u8], out: &mut [u8], st: &mut Stats) {
        for (t, o) in text.chunks(224).zip(out.chunks_mut(224)) {
            let (mut u, mut l, mut x) = (0u8, 0u8, 0u8);
            for (o, &b) in o.iter_mut().zip(t) {
                *o = norm_byte(b, DIGITS);
                // The upper-case test is norm_byte's: computed once.
                u += u8::from(in_range(b, b'A', 26));
                l += u8::from(in_range(b, b'a', 26));
                x += u8::from(b == b'!');
            }
            st.upper += u32::from(u);
            st.lower += u32::from(l);
            st.exclaim += u32::from(x);
        }
    }
    if digits {
        each::<true>(text, out, st);
    } else {
        each::<false>(text, out, st);
    }
}

/// Whether collapsing `text` drops a byte: whitespace (a byte up to 0x20,
/// normalised to a space) at its start or after whitespace. A loop the
/// compiler vectorises.
#[inline(always)]
fn drops_any(text: &[u8]) -> bool {
    let Some((&first, rest)) = text.split_first() else {
        return false;
    };
    // Two bytes in a row are whitespace when the larger is: the smallest
    // such maximum over all pairs decides (a max and a min per vector).
    let mut d = first;
    for (&p, &b) in text.iter().zip(rest) {
        d = d.min(p.max(b));
    }
    d <= b' '
}

/// Lanes (high bit) of eight normalised bytes that are spaces: exactly the
/// lanes equal to 0x20 (no other byte normalises to 0x20). Zero-lane test
/// of `x ^ 0x20..20`, exact per lane (no carry crosses lanes).
#[inline(always)]
fn space_lanes(x: u64) -> u64 {
    let y = x ^ (L8 * 0x20);
    let nonzero = ((y & !H).wrapping_add(!H) | y) & H;
    !nonzero & H
}

/// The high bits of the eight lanes as an 8-bit mask (lane j → bit j).
#[inline(always)]
fn lane_bits(m: u64) -> u64 {
    ((m >> 7) & L8).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Bit per normalised byte: a word byte. `norm` is a multiple of 8 bytes
/// long; `mask` is zero and long enough.
#[inline(always)]
fn word_mask(norm: &[u8], mask: &mut [u64]) {
    // One flag byte (0x80 or 0) per byte first (vector code), then eight
    // flags at a time to bits. Whole blocks of 64 bytes (every flag
    // written: no array to clear), then the rest padded with zeros.
    #[inline(always)]
    fn block(b: &[u8; 64]) -> u64 {
        let mut f = [0u8; 64];
        for (o, &x) in f.iter_mut().zip(b) {
            *o = u8::from(is_word_norm(x)) << 7;
        }
        let mut bits = 0u64;
        for (j, c) in f.chunks_exact(8).enumerate() {
            let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            bits |= lane_bits(x) << (8 * j);
        }
        bits
    }
    let mut blocks = norm.chunks_exact(64);
    for (c, w) in (&mut blocks).zip(mask.iter_mut()) {
        if let Ok(c) = c.try_into() {
            *w = block(c);
        }
    }
    let rest = blocks.remainder();
    if let (false, Some(w)) = (rest.is_empty(), mask.get_mut(norm.len() / 64)) {
        let mut pad = [0u8; 64];
        pad[..rest.len()].copy_from_slice(rest);
        *w = block(&pad);
    }
}

/// Upper-case letters, lower-case letters and `!` of the text (a loop the
/// compiler vectorises: byte counters per block of 255 bytes).
fn count_classes(text: &[u8], st: &mut Stats) {
    for chunk in text.chunks(255) {
        let (mut u, mut l, mut x) = (0u8, 0u8, 0u8);
        for &b in chunk {
            u += u8::from(b.is_ascii_uppercase());
            l += u8::from(b.is_ascii_lowercase());
            x += u8::from(b == b'!');
        }
        st.upper += u32::from(u);
        st.lower += u32::from(l);
        st.exclaim += u32::from(x);
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
    /// Without spans: collapsed bytes before each 8-byte chunk of the text
    /// (and before the tail), to find a URL's text position.
    ckpt: Vec<u32>,
    /// Token batches of the no-spans path.
    tok: Box<TokBatch>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
    static FOLDED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// [`token_hash`] of the token `norm[start..end]` (already normalised),
/// read 8 bytes at a time, and its first byte (the top byte of its first
/// 8-byte load: no load of its own).
#[inline(always)]
fn hash_norm_first(norm: &[u8], start: usize, end: usize) -> (u64, u8) {
    // In bounds: every load starts inside the token, and `norm` has 8
    // bytes after the collapsed text.
    let be8 = |p: usize| {
        let mut c = [0u8; 8];
        c.copy_from_slice(&norm[p..p + 8]);
        u64::from_be_bytes(c)
    };
    let c0 = be8(start);
    let first = (c0 >> 56) as u8;
    let len = end - start;
    if len <= 8 {
        // Tokens are never empty: the shift is 0 to 56.
        return (chunk_mix(0, c0 >> (8 * (8 - len))), first);
    }
    let mut h = chunk_mix(0, c0);
    let mut p = start + 8;
    while end - p >= 8 {
        h = chunk_mix(h, be8(p));
        p += 8;
    }
    if p < end {
        h = chunk_mix(h, be8(p) >> (8 * (8 - (end - p))));
    }
    (h, first)
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
    // Counted in place (no allocation per URL).
    let n_parts = host.bytes().filter(|&b| b == b'.').count() + 1;
    if n_parts == 4
        && host
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return true;
    }
    n_parts == 1
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
    // Every occurrence of every brand of 4 bytes or more (short names,
    // irs, dhl, hit too many innocent hosts), in one pass over the host.
    let (ac, names) = &*BRAND_AC;
    ac.find_overlapping_iter(folded)
        .any(|m| names.get(m.pattern().as_usize()) != Some(&reg_name))
}

/// An automaton over the brands of 4 bytes or more, and their names by
/// pattern number.
static BRAND_AC: std::sync::LazyLock<(aho_corasick::AhoCorasick, Vec<&'static str>)> =
    std::sync::LazyLock::new(|| {
        let names: Vec<&'static str> = BRANDS.iter().copied().filter(|b| b.len() >= 4).collect();
        let ac = aho_corasick::AhoCorasick::new(&names)
            .unwrap_or_else(|e| panic!("brand automaton: {e}"));
        (ac, names)
    });

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
    const SPANS: bool = false;
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

#[cfg(test)]
#[path = "features_ref.rs"]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::text;

    /// Records everything (spans included).
    struct Rec(Vec<Feature>);
    impl Sink for Rec {
        fn emit(&mut self, f: Feature) {
            self.0.push(f);
        }
    }

    /// Records buckets and blocks, like the scorers and `Collect`: the
    /// no-spans path.
    struct NoSpans(Vec<(u32, Block)>);
    impl Sink for NoSpans {
        const SPANS: bool = false;
        fn emit(&mut self, f: Feature) {
            self.0.push((f.bucket, f.block()));
        }
    }

    fn configs() -> Vec<FeatureConfig> {
        let d = FeatureConfig::default();
        vec![
            d,
            // All char sizes, no digit folding, other bits and seed.
            FeatureConfig {
                flags: FLAG_WORD | FLAG_BIGRAM | FLAG_CHAR | FLAG_SIGNAL,
                bits: 18,
                seed: 7,
                ..d
            },
            FeatureConfig {
                flags: FLAG_CHAR | FLAG_CHAR3 | FLAG_CHAR5 | FLAG_FOLD_DIGITS,
                ..d
            },
            FeatureConfig {
                flags: FLAG_SIGNAL | FLAG_WORD,
                max_bytes: 100,
                ..d
            },
        ]
    }

    /// Pseudo-random texts over an alphabet of pieces that exercise the
    /// collapse, the tokens, the currency and number checks and URLs.
    fn random_texts(n: usize) -> Vec<String> {
        const PIECES: &[&str] = &[
            " ",
            " ",
            "  ",
            "\n",
            "\r\n",
            "\t",
            "\x01",
            "a",
            "B",
            "claim",
            "FREE",
            "prize",
            "now",
            "to",
            "80086",
            "09061701461",
            "$",
            "$5",
            "£50",
            "€100",
            "é",
            "ü",
            "!",
            "!!",
            ".",
            ",",
            "-",
            "http://",
            "https://",
            "www.",
            "bit.ly/x",
            "Paypal.com.x.net",
            "1.2.3.4",
            "user@",
            ":8080",
            "/",
            "internationalization",
            "wire",
            "transfer",
            "log",
            "in",
            "0",
            "x",
            "\u{7f}",
            "\u{a0}",
        ];
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: usize| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % m as u64) as usize
        };
        (0..n)
            .map(|_| {
                let len = next(120);
                (0..len).map(|_| PIECES[next(PIECES.len())]).collect()
            })
            .collect()
    }

    fn fixed_texts() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            " ",
            "   ",
            "a",
            "ab",
            "abc",
            "abcd",
            "  leading and trailing  ",
            "$5 and $ 5 and £50 €100 £ € $x",
            "URGENT! Claim your CASH prize now: call 09061701461 or txt WIN to 80086, £5/wk",
            "see http://Foo.COM:8080/x or  www.bar.org\n\n\nor https://user@1.2.3.4/ and HTTP://xn--pypal-4ve.com",
            "internationalization INTERNATIONALIZATION internationalizatiom abcdefgh abcdefghi",
            // Unicode disguises (flag `unicode`) beside text that stays.
            "f\u{200b}r\u{200b}e\u{200b}e ＦＲＥＥ 𝐅𝐑𝐄𝐄 раypal САSН a\u{a0}b Привет как дела café",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push("a".repeat(64));
        v.push("a".repeat(63) + " b");
        v.push(" ".repeat(70) + "x http://a.b/");
        // Past max_bytes, URLs at the end after whitespace runs.
        v.push("word   \n\t ".repeat(5000) + " http://bit.ly/abc www.paypal.secure.net");
        // Past 4 × max_bytes of invisible characters, then words.
        v.push("\u{200b}".repeat(50_000) + "free prize www.paypal.secure.net");
        v
    }

    fn real_views() -> Vec<TextView> {
        let mut views = Vec::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let sms = root.join("../shared/data/spam/sms/SMSSpamCollection");
        if let Ok(s) = std::fs::read_to_string(&sms) {
            for line in s.lines() {
                let t = line.split_once('\t').map_or(line, |(_, t)| t);
                views.push(TextView::plain(t));
            }
        } else {
            eprintln!("no SMS corpus at {}", sms.display());
        }
        let data = std::env::var_os("SIFT_DATA_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join("target/data"));
        let sa = data.join("spam-assassin");
        let mut n = 0;
        for g in ["easy-ham-1", "hard-ham-1", "spam-1", "easy-ham-2", "spam-2"] {
            let Ok(rd) = std::fs::read_dir(sa.join(g)) else {
                continue;
            };
            let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files.iter().step_by(3) {
                if let Ok(raw) = std::fs::read(f) {
                    views.push(text::view(&raw));
                    n += 1;
                }
            }
        }
        if n == 0 {
            eprintln!("no SpamAssassin corpus under {}", sa.display());
        }
        views
    }

    fn check(fz: &Featurizer, v: &TextView) {
        let mut want = Rec(Vec::new());
        fz.ref_run(v, &mut want);
        // No spans first: the thread's scratch then holds the positions of
        // the previous text, which the no-spans path must not use.
        let mut ns = NoSpans(Vec::new());
        fz.run(v, &mut ns);
        let mut got = Rec(Vec::new());
        fz.run(v, &mut got);
        assert!(
            want.0 == got.0,
            "features differ for {:?}",
            &v.text[..v.text.len().min(200)]
        );
        let want: Vec<(u32, Block)> = want.0.iter().map(|f| (f.bucket, f.block())).collect();
        assert!(
            want == ns.0,
            "no-spans features differ for {:?}",
            &v.text[..v.text.len().min(200)]
        );
    }

    #[test]
    fn fast_scanner_matches_reference_on_synthetic_texts() {
        for cfg in configs() {
            let fz = Featurizer::new(cfg);
            for t in fixed_texts().iter().chain(&random_texts(3000)) {
                check(&fz, &TextView::plain(t));
            }
        }
    }

    #[test]
    fn fast_scanner_matches_reference_on_corpora() {
        let views = real_views();
        for (k, cfg) in configs().into_iter().enumerate() {
            let fz = Featurizer::new(cfg);
            // The shipped configuration on everything, the others on a part.
            let step = if k == 0 { 1 } else { 7 };
            for v in views.iter().step_by(step) {
                check(&fz, v);
            }
        }
    }

    /// The shipped model's margins through the serving path equal the
    /// margins from the reference scanner's features, bit for bit.
    #[test]
    fn shipped_model_margins_unchanged() {
        use crate::classify::model::{Model, Weights};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("filters/spam/model.bin");
        let Ok(model) = Model::load(&path) else {
            eprintln!("no model at {}", path.display());
            return;
        };
        let Weights::I8 { q, scale } = &model.weights else {
            panic!("the shipped model has i8 weights");
        };
        let fz = Featurizer::new(model.features);
        let mut views = real_views();
        views.extend(fixed_texts().iter().map(|t| TextView::plain(t)));
        for v in &views {
            let mut r = Rec(Vec::new());
            fz.ref_run(v, &mut r);
            let (mut acc, mut n) = ([0i32; 3], [0u32; 3]);
            for f in &r.0 {
                let k = match f.block() {
                    Block::Word => 0,
                    Block::Char => 1,
                    Block::Signal => 2,
                };
                acc[k] += i32::from(q[f.bucket as usize]);
                n[k] += 1;
            }
            let acc = acc.map(|a| a as f32 * scale);
            let norm = |a: f32, n: u32| if n == 0 { 0.0 } else { a / (n as f32).sqrt() };
            let f = &model.features;
            let want = model.bias
                + (f.word_scale * norm(acc[0], n[0]) + f.char_scale * norm(acc[1], n[1]) + acc[2]);
            assert_eq!(model.margin(&fz, v).to_bits(), want.to_bits());
        }
    }

    /// `SIFT_DUMP_MARGINS=FILE cargo test --profile quick --lib dump_margins
    /// -- --ignored`: per message (SMS lines, then every SpamAssassin message)
    /// the shipped model's margin bits and a hash of the sparse features
    /// (the training and ONNX path), to compare two versions of the code.
    #[test]
    #[ignore]
    fn dump_margins() {
        use crate::classify::model::Model;
        use std::io::Write;
        let Some(out) = std::env::var_os("SIFT_DUMP_MARGINS") else {
            return;
        };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let model = Model::load(&root.join("filters/spam/model.bin")).unwrap();
        let fz = Featurizer::new(model.features);
        let mut views = Vec::new();
        let sms = root.join("../shared/data/spam/sms/SMSSpamCollection");
        for line in std::fs::read_to_string(sms).unwrap().lines() {
            let t = line.split_once('\t').map_or(line, |(_, t)| t);
            views.push(TextView::plain(t));
        }
        let data = std::env::var_os("SIFT_DATA_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join("target/data"));
        for g in ["easy-ham-1", "hard-ham-1", "spam-1", "easy-ham-2", "spam-2"] {
            let rd = std::fs::read_dir(data.join("spam-assassin").join(g)).unwrap();
            let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files {
                views.push(text::view(&std::fs::read(f).unwrap()));
            }
        }
        let mut w = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
        for (i, v) in views.iter().enumerate() {
            let m = model.margin(&fz, v);
            let (idx, val) = crate::classify::onnx::sparse_features(&fz, v);
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for (&k, &x) in idx.iter().zip(&val) {
                h = mix(h ^ u64::from(k) ^ (u64::from(x.to_bits()) << 32));
            }
            writeln!(w, "{i}\t{:08x}\t{m}\t{h:016x}", m.to_bits()).unwrap();
        }
    }

    #[test]
    fn normalisation_matches_the_byte_table() {
        for digits in [false, true] {
            let fz = Featurizer::new(FeatureConfig {
                flags: if digits { ALL_FLAGS } else { FLAG_WORD },
                ..FeatureConfig::default()
            });
            for b in 0..=255u8 {
                // The byte table and the vectorised loop both come from
                // norm_byte; it must equal the token hash's definition.
                let e = fz.byte_tab[usize::from(b)];
                let n = norm_byte(b, digits);
                assert_eq!(n, e as u8, "byte {b:#x}");
                let def = if b <= b' ' { b' ' } else { fold(b, digits) };
                assert_eq!(n, def, "byte {b:#x}");
                assert_eq!(is_word_norm(n), is_word_byte(b), "byte {b:#x}");
                assert_eq!(is_word_norm(n), e >> 8 != 0, "byte {b:#x}");
                // Each lane of space_lanes, with varied neighbours.
                for lane in 0..8 {
                    let mut bytes = [b' ', b'a', 0xC3, b'0', b'z', b'!', 0x7f, b' '];
                    bytes.rotate_left(usize::from(b) % 8);
                    bytes[lane] = n;
                    let sp = space_lanes(u64::from_le_bytes(bytes));
                    for (j, &x) in bytes.iter().enumerate() {
                        assert_eq!(sp >> (8 * j + 7) & 1, u64::from(x == b' '), "{bytes:?}");
                    }
                    assert_eq!(sp & !H, 0);
                }
            }
        }
    }

    #[test]
    fn ip_literal_hosts() {
        for h in [
            "1.2.3.4",
            "[::1]",
            "3232235777",
            "0x7f000001",
            "192.168.10.5",
        ] {
            assert!(is_ip_literal(h), "{h}");
        }
        for h in [
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            "a.2.3.4",
            "1234567",
            "0x",
            "example.com",
            "",
        ] {
            assert!(!is_ip_literal(h), "{h}");
        }
    }

    #[test]
    fn raw_cursor_finds_collapsed_positions() {
        let fz = Featurizer::new(FeatureConfig::default());
        let texts: Vec<String> = fixed_texts().into_iter().chain(random_texts(300)).collect();
        for (k, t) in texts.iter().enumerate() {
            let text = t.as_bytes();
            let n = text.len();
            let (mut norm, mut pos, mut ckpt) = (vec![0; n + 8], vec![0; n + 1], Vec::new());
            let m = fz.collapse_spans(text, &mut norm, &mut pos);
            let mut norm2 = vec![0; n + 8];
            let mut st = Stats::default();
            assert_eq!(fz.collapse(text, &mut norm2, &mut ckpt, &mut st), m);
            assert_eq!(norm, norm2);
            // Increasing targets, with steps of 1 to 40 bytes.
            let mut c = RawCursor::default();
            let mut s = k % 3;
            while s < m {
                assert_eq!(c.find(&fz, text, &ckpt, s), pos[s] as usize, "{t:?} at {s}");
                s += 1 + (s * 7 + k) % 40;
            }
            assert_eq!(c.find(&fz, text, &ckpt, m), n);
        }
    }
}
