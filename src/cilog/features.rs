//! Hashed features of a normalised log line, computed without allocation.
//!
//! Tokens: runs of ASCII letters/digits/`_` and non-ASCII bytes, lower-cased,
//! digits folded to `0`; each punctuation byte is a token of its own. A
//! whitespace-separated field that looks like a path (has `/` or `\`) gives
//! only its last component plus a `<path>` token, so directory layouts (repo
//! names, home directories) are not memorised. Tokens longer than
//! [`MAX_TOKEN`] become `<long>` (hashes, base64). Features are unigrams,
//! an indentation bucket and a length bucket (word bigrams were tried and
//! generalised worse to unseen repositories: 36.7 % vs 40.9 % evidence in
//! the chunk under grouped CV).

/// Longest token hashed as itself.
pub const MAX_TOKEN: usize = 32;
/// At most this many tokens of a line are used.
pub const MAX_TOKENS: usize = 64;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// Seeds separating feature blocks.
pub const SEED_LINE: u32 = 0x9e37_79b9;
pub const SEED_CLASS_LINE: u32 = 0x85eb_ca6b;
pub const SEED_CLASS_CTX: u32 = 0xc2b2_ae35;
pub const SEED_CLASS_CMD: u32 = 0x27d4_eb2f;
pub const SEED_CLASS_CUE: u32 = 0x1656_67b1;
pub const SEED_CLASS_SIG: u32 = 0xd3a2_646c;

#[inline]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

#[inline]
fn fnv(h: u32, b: u8) -> u32 {
    (h ^ u32::from(b)).wrapping_mul(FNV_PRIME)
}

fn hash_str(s: &[u8]) -> u32 {
    s.iter().fold(FNV_OFFSET, |h, &b| fnv(h, b))
}

const fn hash_const(s: &[u8]) -> u32 {
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < s.len() {
        h = (h ^ s[i] as u32).wrapping_mul(FNV_PRIME);
        i += 1;
    }
    h
}

/// Generic cue words of the line scorer, by group: one shared feature per
/// group present in a line, so what is learned about `failed` in one
/// project carries to `failure` in another. Tokens as hashed (lower case,
/// digits folded to `0`).
const CUE_WORDS: &[(&str, u8)] = &[
    ("fail", 1),
    ("failed", 1),
    ("failure", 1),
    ("failures", 1),
    ("failing", 1),
    ("fails", 1),
    ("error", 2),
    ("errors", 2),
    ("err", 2),
    ("fatal", 2),
    ("exception", 2),
    ("traceback", 2),
    ("panic", 2),
    ("panicked", 2),
    ("abort", 2),
    ("aborted", 2),
    ("assert", 3),
    ("assertion", 3),
    ("assertionerror", 3),
    ("expected", 3),
    ("actual", 3),
    ("got", 3),
    ("mismatch", 3),
    ("warning", 4),
    ("warn", 4),
    ("deprecated", 4),
    ("deprecation", 4),
    ("cannot", 5),
    ("unable", 5),
    ("could", 5),
    ("couldn", 5),
    ("missing", 5),
    ("undefined", 5),
    ("unresolved", 5),
    ("denied", 5),
    ("invalid", 5),
    ("not", 5),
    ("no", 5),
    ("done", 6),
    ("cache", 6),
    ("caching", 6),
    ("uploading", 6),
    ("upload", 6),
    ("archive", 6),
    ("after_failure", 6),
    ("exited", 6),
    ("travis", 6),
    ("storing", 6),
    ("ok", 7),
    ("passed", 7),
    ("pass", 7),
    ("success", 7),
    ("successful", 7),
    ("successfully", 7),
    ("succeeded", 7),
    ("tests", 8),
    ("test", 8),
    ("examples", 8),
    ("offenses", 8),
    ("offense", 8),
    ("violations", 8),
    ("problems", 8),
    ("timeout", 9),
    ("timed", 9),
    ("killed", 9),
    ("terminated", 9),
];

const CUE_SLOTS: usize = 256;

/// Open-addressing table of [`CUE_WORDS`]: (hash, group), group 0 = empty.
static CUE_TABLE: [(u32, u8); CUE_SLOTS] = {
    let mut t = [(0u32, 0u8); CUE_SLOTS];
    let mut i = 0;
    while i < CUE_WORDS.len() {
        let h = hash_const(CUE_WORDS[i].0.as_bytes());
        let mut j = (mix_const(h) as usize) % CUE_SLOTS;
        while t[j].1 != 0 {
            j = (j + 1) % CUE_SLOTS;
        }
        t[j] = (h, CUE_WORDS[i].1);
        i += 1;
    }
    t
};

const fn mix_const(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h
}

/// Bits of a token hash that index [`CUE_FILTER`]: its top 12 (the best
/// mixed bits of an FNV product).
#[inline]
const fn cue_filter_bit(h: u32) -> u32 {
    h >> 20
}

/// A one-hash Bloom filter of the [`CUE_WORDS`] hashes: 4096 bits, 66 set
/// at most. Most tokens are not cue words and skip the table probe (about
/// 20 instructions) after a single bit test. Exact: a cue word's bit is
/// always set, and a token whose bit is clear is no cue word, for which
/// the probe finds an empty slot and returns 0 anyway.
static CUE_FILTER: [u64; 64] = {
    let mut m = [0u64; 64];
    let mut i = 0;
    while i < CUE_WORDS.len() {
        let b = cue_filter_bit(hash_const(CUE_WORDS[i].0.as_bytes()));
        m[(b / 64) as usize] |= 1 << (b % 64);
        i += 1;
    }
    m
};

/// Cue group of a token hash (0 = none).
#[inline]
fn cue_group(h: u32) -> u8 {
    let b = cue_filter_bit(h);
    if CUE_FILTER[(b / 64) as usize] >> (b % 64) & 1 == 0 {
        return 0;
    }
    let mut j = (mix_const(h) as usize) % CUE_SLOTS;
    loop {
        let (k, g) = CUE_TABLE[j];
        if g == 0 || k == h {
            return g;
        }
        j = (j + 1) % CUE_SLOTS;
    }
}

/// Byte classes: 0 space, 1 punctuation (a token of its own), else the
/// byte as hashed (lower-cased; digits folded to `0`; non-ASCII kept).
static MAP: [u8; 256] = {
    let mut m = [1u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        m[b] = if c == b' ' {
            0
        } else if c.is_ascii_digit() {
            b'0'
        } else if c.is_ascii_uppercase() {
            c.to_ascii_lowercase()
        } else if c.is_ascii_lowercase() || c == b'_' || c >= 0x80 {
            c
        } else {
            1
        };
        b += 1;
    }
    m
};

/// `0x01` in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The low seven bits of every byte.
const LOW7: u64 = ONES * 0x7f;

/// Eight bytes of `s` from `i < s.len()` as a little-endian word (byte `k`
/// = `s[i + k]`), zero bytes past the end. Near the end of a line of at
/// least eight bytes, the line's last word is shifted down instead of
/// copied: the shift brings in zero bytes above the line's end.
#[inline]
fn word_at(s: &[u8], i: usize) -> u64 {
    // No index or conversion here can panic, whatever `i` (past the end,
    // every byte of the word is zero).
    let tail = s.get(i..).unwrap_or_default();
    if let Some(w) = tail.first_chunk::<8>() {
        u64::from_le_bytes(*w)
    } else if let Some(w) = s.last_chunk::<8>() {
        // 1 ..= 7 bytes of the word come before `i` (a shift of 64 or
        // more, for `i` past the end, gives 0).
        let shift = (i + 8 - s.len()).saturating_mul(8).min(64) as u32;
        u64::from_le_bytes(*w).checked_shr(shift).unwrap_or(0)
    } else {
        let mut b = [0u8; 8];
        b[..tail.len()].copy_from_slice(tail);
        u64::from_le_bytes(b)
    }
}

/// Where the whitespace-separated field starting at `i < s.len()` ends (its
/// first space, or the end of the line) and its last path separator (`/`
/// or `\`; `usize::MAX` if none). `last_sep` is the line's last separator,
/// at or after `i`.
///
/// The first eight bytes are tested at once (most fields are shorter):
/// byte equality without carries between bytes: for `y = x ^ c` (c < 0x80
/// in every byte), `(y & 0x7f) + 0x7f` has its high bit set exactly when
/// the low seven bits of `y` are not all zero, and cannot carry into the
/// next byte; the high bit of `y` is that of `x`. So the high bit of
/// `!((y & 0x7f) + 0x7f) & !x` is set exactly where the byte equals `c`.
/// (The usual `(y - 0x01..) & !y` trick flags false zero bytes above a
/// true one: a `.` after a `/` would count as a separator.) The zero bytes
/// past the end of the line are neither a space nor a separator.
///
/// A longer field (a path, mostly) ends at the next space, found by
/// `memchr`. If it holds `last_sep`, that is its last separator (there is
/// none after it in the line); else its last one is in the rest of the
/// field (`memrchr2`) or in the first eight bytes.
#[inline]
fn scan_field(s: &[u8], i: usize, last_sep: usize) -> (usize, usize) {
    let x = word_at(s, i);
    let lo = x & LOW7;
    // High bits of the bytes below 0x80 (a candidate for any of the three).
    let ascii = !x & !LOW7;
    let space = !((lo ^ (ONES * u64::from(b' '))) + LOW7) & ascii;
    let slash = !((lo ^ (ONES * u64::from(b'/'))) + LOW7);
    let back = !((lo ^ (ONES * u64::from(b'\\'))) + LOW7);
    // Separators before the first space (all eight bytes if none:
    // `0 ^ (0 - 1)` is all ones; else the bits up to the space's own high
    // bit, and the space itself is no separator).
    let seps = (slash | back) & ascii & (space ^ space.wrapping_sub(1));
    let sep = if seps != 0 {
        i + (63 - seps.leading_zeros() as usize) / 8
    } else {
        usize::MAX
    };
    if space != 0 {
        return (i + space.trailing_zeros() as usize / 8, sep);
    }
    let rest = i + 8;
    if rest >= s.len() {
        return (s.len(), sep);
    }
    let end = memchr::memchr(b' ', &s[rest..]).map_or(s.len(), |k| rest + k);
    if last_sep < end {
        return (end, last_sep);
    }
    let sep = memchr::memrchr2(b'/', b'\\', &s[rest..end]).map_or(sep, |k| rest + k);
    (end, sep)
}

/// FNV hash of the token that starts at `field[j]` (a word byte, `m` its
/// [`MAP`] value, already looked up) and ends at the first byte of `field`
/// that is not one (or the end of `field`), with that end. Four bytes per
/// round while four are left: one bounds check per round instead of one
/// per byte; the same bytes are hashed in the same order as one at a time.
#[inline(always)]
fn hash_token(field: &[u8], j: usize, m: u8) -> (u32, usize) {
    let mut h = fnv(FNV_OFFSET, m);
    let mut j = j + 1;
    while let Some(w) = field.get(j..j + 4) {
        for (k, &b) in w.iter().enumerate() {
            let m = MAP[b as usize];
            if m < 2 {
                return (h, j + k);
            }
            h = fnv(h, m);
        }
        j += 4;
    }
    while let Some(&b) = field.get(j) {
        let m = MAP[b as usize];
        if m < 2 {
            break;
        }
        h = fnv(h, m);
        j += 1;
    }
    (h, j)
}

/// What receives the features of a line from [`features_into`], in order.
pub trait FeatureSink {
    /// A feature hash.
    fn feature(&mut self, h: u32);
    /// A feature that is one of a few constants rather than the hash of a
    /// token (shape, path, punctuation, cue groups: all below 0x8000), so
    /// a sink may remember what it computed for it. The same as
    /// [`feature`](Self::feature) unless the sink says otherwise.
    #[inline]
    fn fixed(&mut self, h: u32) {
        self.feature(h);
    }
}

/// A closure as a [`FeatureSink`].
struct Each<F>(F);

impl<F: FnMut(u32)> FeatureSink for Each<F> {
    #[inline]
    fn feature(&mut self, h: u32) {
        (self.0)(h);
    }
}

/// Call `f(hash)` for every feature of the normalised line `s`; returns the
/// number of features. Hashes are unmixed: [`bucket`] mixes them with a
/// block seed.
#[inline]
pub fn for_each_feature<F: FnMut(u32)>(s: &[u8], f: F) -> u32 {
    features_into(s, &mut Each(f))
}

/// [`for_each_feature`] into a [`FeatureSink`].
///
/// Another CI's failed-step marker reads as Travis's (see [`ci_framing`]):
/// the models learn from Travis logs, and what they learn of its marker
/// then carries to GitHub Actions, GitLab and Jenkins logs (`sift eval
/// cilog --as all` measures it).
#[inline]
pub fn features_into<S: FeatureSink>(s: &[u8], sink: &mut S) -> u32 {
    if let Some(t) = ci_framing(s) {
        return raw_features_into(t, sink);
    }
    raw_features_into(s, sink)
}

/// Another CI's failed-step marker (GitHub Actions `Process completed with
/// exit code N.`, GitLab `ERROR: Job failed: exit code N`, Jenkins `ERROR:
/// script returned exit code N`) as Travis writes it, for features, cues,
/// signatures and shape; `None` for any other line (Travis's own marker
/// included). Those CIs do not name the failed command: the quotes stay
/// empty. A tool's own "exited with N" is not the CI's framing.
pub fn ci_framing(s: &[u8]) -> Option<&'static [u8]> {
    const CI: [&[u8]; 9] = [
        b"Process completed with exit code ",
        b"ERROR: Job failed: exit code ",
        b"Job failed: exit code ",
        b"ERROR: script returned exit code ",
        b"script returned exit code ",
        // Azure Pipelines, Buildkite (with or without its emoji), CircleCI.
        b"Bash exited with code '",
        "🚨 Error: The command exited with status ".as_bytes(),
        b"Error: The command exited with status ",
        b"Exited with code exit status ",
    ];
    (matches!(s.first(), Some(b'P' | b'E' | b'J' | b's' | b'B' | 0xf0))
        && CI.iter().any(|p| s.starts_with(p))
        && is_fail_marker(s))
    .then_some(b"The command \"\" exited with 1.")
}

/// What a line says for cues and signatures: another CI's failed-step
/// marker as Travis's (see [`ci_framing`]).
#[inline]
fn tool_words(line: &[u8]) -> &[u8] {
    ci_framing(line).unwrap_or(line)
}

#[inline]
fn raw_features_into<S: FeatureSink>(s: &[u8], sink: &mut S) -> u32 {
    let mut n = 0u32;
    // Shape: indentation and length buckets.
    let indent = s.iter().take_while(|&&b| b == b' ').count();
    let ib = match indent {
        0 => 0,
        1..=2 => 1,
        3..=4 => 2,
        5..=8 => 3,
        _ => 4,
    };
    sink.fixed(0x1000 + ib);
    let lb = match s.len() {
        0..=8 => 0,
        9..=24 => 1,
        25..=60 => 2,
        61..=120 => 3,
        121..=300 => 4,
        _ => 5,
    };
    sink.fixed(0x2000 + lb);
    n += 2;
    let mut tokens = 0usize;
    // Cue groups present (bits 1..=9), as first token (bits 17..=25),
    // an error word followed by `:` (bit 31).
    let mut groups = 0u32;
    let mut prev = 0u8;
    let mut i = indent;
    let len = s.len();
    // The line's last path separator. A field that starts after it has
    // none, so it needs no field scan: its tokens are read straight from
    // the line up to the space that ends it. Only the fields up to the one
    // holding the last separator are scanned first (to find their own last
    // separator) — on a line with no path, none is.
    let last_sep = memchr::memrchr2(b'/', b'\\', &s[i..]).map(|k| i + k);
    while i < len && tokens < MAX_TOKENS {
        // One whitespace-separated field: its tokens are those of
        // `s[from..bound]` up to the first space.
        let start = i;
        let (from, bound) = if let Some(last_sep) = last_sep.filter(|&p| start <= p) {
            // Where the field ends, and its last path separator.
            let (end, sep) = scan_field(s, i, last_sep);
            if end - start > 1 && sep != usize::MAX {
                sink.fixed(0x3000);
                n += 1;
                (sep + 1, end)
            } else {
                (start, end)
            }
        } else {
            (start, len)
        };
        // Tokens within the field.
        let field = &s[..bound];
        let mut j = from;
        while j < field.len() && tokens < MAX_TOKENS {
            let m = MAP[field[j] as usize];
            if m >= 2 {
                let ts = j;
                let h;
                (h, j) = hash_token(field, j, m);
                if j - ts > MAX_TOKEN {
                    sink.fixed(0x4000);
                    prev = 0;
                } else {
                    sink.feature(h);
                    prev = cue_group(h);
                    if prev != 0 {
                        groups |= 1 << prev;
                        if tokens == 0 {
                            groups |= 1 << (prev + 16);
                        }
                    }
                }
                n += 1;
                tokens += 1;
            } else if m == 0 {
                // The space that ends the field.
                break;
            } else {
                if field[j] == b':' && prev == 2 {
                    groups |= 1 << 31;
                }
                if tokens == 0 && j == from {
                    // First punctuation of the line (`[`, `-`, `>`, `*`, ...).
                    sink.fixed(0x5100 + u32::from(field[j]));
                    n += 1;
                }
                prev = 0;
                sink.fixed(0x5000 + u32::from(field[j]));
                n += 1;
                j += 1;
            }
        }
        // `j` is at the field's end (`bound`, or its space), or the token
        // limit stopped the field early and the loop ends here anyway.
        i = j;
        while i < len && s[i] == b' ' {
            i += 1;
        }
    }
    while groups != 0 {
        let b = groups.trailing_zeros();
        sink.fixed(0x7000 + b);
        n += 1;
        groups &= groups - 1;
    }
    n
}

/// Bucket of a feature hash in a table of `2^bits`, for one block seed.
#[inline]
pub fn bucket(h: u32, seed: u32, bits: u8) -> u32 {
    mix(h ^ seed) >> (32 - u32::from(bits))
}

/// Zones for the second-stage (content × position) features, from a
/// position bucket: no marker, teardown, inside the failing step near its
/// marker (≤ 8 lines), inside the failing step further up, before it.
pub const ZONES: usize = 5;

/// Zone of a position bucket (see [`ZONES`]).
#[inline]
pub fn zone(pos_bucket: usize) -> usize {
    let region = pos_bucket / DIST_BUCKETS;
    match region {
        2 if pos_bucket % DIST_BUCKETS > 5 => 4,
        r => r,
    }
}

/// Seed mixed into a feature hash to cross it with a zone.
#[inline]
pub fn zone_hash(h: u32, zone: usize) -> u32 {
    h ^ (0x2545_f491u32.wrapping_mul(zone as u32 + 1))
}

/// Distance buckets per region (see [`Marks::pos`]).
pub const DIST_BUCKETS: usize = 12;
/// Position buckets: 4 regions × [`DIST_BUCKETS`].
pub const POS_BUCKETS: usize = 4 * DIST_BUCKETS;
/// Lines after which the position bucket no longer changes.
pub const POS_FAR: u64 = 250;

/// Distance bucket from a number of lines (0 = same line).
pub fn pos_bucket(after: u64) -> usize {
    match after {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 3,
        4..=5 => 4,
        6..=8 => 5,
        9..=15 => 6,
        16..=30 => 7,
        31..=60 => 8,
        61..=120 => 9,
        121..=POS_FAR => 10,
        _ => 11,
    }
}

/// A line that reports a failed build step with its exit code: Travis
/// `The command "npm test" exited with 1.`, GitHub Actions `Process
/// completed with exit code 1.`, GitLab `ERROR: Job failed: exit code 1`,
/// Jenkins `script returned exit code 2`, Azure Pipelines `Bash exited
/// with code '1'.`, Buildkite `The command exited with status 1`,
/// CircleCI `Exited with code exit status 1`. Not Travis's final `Done. Your
/// build exited with 1.` (it follows the teardown).
pub fn is_fail_marker(line: &[u8]) -> bool {
    static EXIT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"exit"));
    if line.len() < 11 || EXIT.find(line).is_none() || line.starts_with(b"Done. Your build") {
        return false;
    }
    static PATS: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 5]> =
        std::sync::LazyLock::new(|| {
            [
                memchr::memmem::Finder::new(b"exited with "),
                memchr::memmem::Finder::new(b"exit code "),
                // Azure Pipelines: `Bash exited with code '1'.`
                memchr::memmem::Finder::new(b"exited with code '"),
                // Buildkite: `The command exited with status 1`.
                memchr::memmem::Finder::new(b"The command exited with status "),
                // CircleCI: `Exited with code exit status 1` (not Go's
                // own `exit status 1`).
                memchr::memmem::Finder::new(b"Exited with code exit status "),
            ]
        });
    for pat in PATS.iter() {
        if let Some(i) = pat.find(line) {
            if let Some(&d) = line.get(i + pat.needle().len()) {
                if (b'1'..=b'9').contains(&d) {
                    return true;
                }
            }
        }
    }
    false
}

/// Where the failing step is, tracked while streaming: the last line
/// reporting a failed step (see [`is_fail_marker`]) and the step command
/// echoed before it. Generic across projects: the human chunk is the output
/// of the failing step in 489 of the 549 logs that have such a marker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Marks {
    last_cmd: u64,
    fail: Option<u64>,
    fail_cmd: u64,
}

impl Marks {
    /// Feed line `no` (1-based, in order).
    /// Returns true when the line is a failed-step marker.
    #[inline]
    pub fn on_line(&mut self, no: u64, line: &[u8]) -> bool {
        if is_command(line) {
            self.last_cmd = no;
        } else if is_fail_marker(line) {
            self.fail = Some(no);
            self.fail_cmd = self.last_cmd;
            return true;
        }
        false
    }

    /// The line of the last failed-step marker, if any.
    pub fn fail_line(&self) -> Option<u64> {
        self.fail
    }

    /// The line of the failing step's command echo (0 if none).
    pub fn fail_cmd_line(&self) -> u64 {
        self.fail_cmd
    }

    /// Position bucket of line `no` in a log of `total` lines. Regions: no
    /// failure marker (distance from the end); after the last marker
    /// (teardown; distance from the end); inside the failing step (after
    /// its command, up to the marker; distance to the marker); before the
    /// failing step's command (distance to the marker).
    pub fn pos(&self, no: u64, total: u64) -> usize {
        match self.fail {
            None => pos_bucket(total.saturating_sub(no)),
            Some(f) if no > f => DIST_BUCKETS + pos_bucket(total.saturating_sub(no)),
            Some(f) if no > self.fail_cmd => 2 * DIST_BUCKETS + pos_bucket(f - no),
            Some(f) => 3 * DIST_BUCKETS + pos_bucket(f - no),
        }
    }
}

/// For tests: hash of a literal lower-case token.
pub fn token_hash(tok: &str) -> u32 {
    hash_str(tok.as_bytes())
}

/// Lexicon cues: phrases from the class definitions of the labelling guide
/// (LABELLING.md), one list per class (index = [`Class`](super::Class)
/// order). They are *features*: the class scorer learns how much each
/// class's cues count, in the evidence, its context and the step's command.
/// Shared across repositories, they carry what 600 logs cannot teach a
/// bag of words.
pub const CUES: [&[&str]; 9] = [
    // timeout
    &[
        "timeout",
        "timed out",
        "time limit",
        "no output has been received",
        "timetrap",
        "exceeded the maximum",
        "took longer than",
        "stalled",
        "hung",
        "exited with 124",
        "deadline exceeded",
    ],
    // oom
    &[
        "out of memory",
        "outofmemoryerror",
        "cannot allocate memory",
        "memoryerror",
        "killed",
        "memory exhausted",
        "heap out of memory",
    ],
    // infra
    &[
        "connection",
        "connect",
        "ssl",
        "certificate",
        "network",
        "docker",
        "daemon",
        "cancelled",
        "canceled",
        "no space left",
        "disk",
        "clone",
        "cloning",
        "remote branch",
        "unreachable",
        "503",
        "502",
        "service unavailable",
        "rate limit",
        "deploy",
        "upload",
        "emulator",
        "simulator",
        "disconnected",
        "socket",
        "econnreset",
        "etimedout",
        "could not resolve host",
        "temporary failure",
    ],
    // dependency
    &[
        "npm err",
        "install",
        "dependency",
        "dependencies",
        "resolve",
        "resolving",
        "version",
        "package",
        "gem ",
        "bundle",
        "bundler",
        "pip",
        "could not find",
        "404",
        "maven",
        "gradle",
        "download",
        "fetch",
        "registry",
        "requirement",
        "conflict",
        "lockfile",
        "cabal",
        "composer",
        "cpan",
        "opam",
        "brew",
        "apt-get",
        "unable to locate",
        "no matching",
        "module not found",
        "go get",
        "checksum",
        "cannot find module",
        "modulenotfounderror",
        "importerror",
        "no module named",
    ],
    // compile
    &[
        "error:",
        "compil",
        "cannot find symbol",
        "undefined reference",
        "syntax error",
        "linker",
        "ld returned",
        "make: ***",
        "build failed",
        "not in scope",
        "type error",
        "cannot be applied",
        "undeclared",
        "implicit declaration",
        "unresolved",
        "does not exist",
        "webpack",
        "tsc",
        "rustc",
        "javac",
        "gcc",
        "clang",
        "error cs",
        "error ts",
        "couldn't match",
        "no instance",
        "cannot convert",
        "mismatched types",
        "expected type",
    ],
    // lint
    &[
        "lint",
        "rubocop",
        "eslint",
        "flake8",
        "pylint",
        "gofmt",
        "goimports",
        "clang-format",
        "checkstyle",
        "swiftlint",
        "tslint",
        "stylelint",
        "jshint",
        "jscs",
        "perlcritic",
        "critic",
        "shellcheck",
        "pep8",
        "pycodestyle",
        "prettier",
        "markdownlint",
        "offense",
        "style",
        "whitespace",
        "trailing",
        "indent",
        "line too long",
        "format",
        "spell",
        "license",
        "broken link",
        "links",
        "redirect",
        "awesome",
        "docstring",
        "unused",
        "size limit",
        "binary compat",
        "mima",
        "not formatted",
        "vet",
    ],
    // test
    &[
        "test",
        "assert",
        "expected",
        "actual",
        "fail",
        "spec",
        "passed",
        "pending",
        "examples",
        "not ok",
        "\u{2717}",
        "traceback",
        "exception",
        "should",
        "got:",
        "to equal",
        "to be",
        "failures:",
        "errors:",
    ],
    // config
    &[
        "command not found",
        "no such file or directory",
        "permission denied",
        "not set",
        "missing",
        "unknown option",
        "invalid",
        "not found",
        "unsupported",
        "undefined variable",
        "no rule to make target",
        "usage:",
        "cannot access",
        "is not recognized",
        "illegal",
        "unrecognized",
        "not defined",
        "no rakefile",
        ".yml",
        "environment variable",
    ],
    // unknown
    &[
        "exited with 1",
        "exited with 2",
        "exit code 1",
        "exit code 2",
        "exit status 1",
        "failed with exit code",
        "process exited with code",
        "error 1",
        "error 2",
    ],
];

static CUE_AC: std::sync::LazyLock<(aho_corasick::AhoCorasick, Vec<u8>)> =
    std::sync::LazyLock::new(|| {
        let mut pats = Vec::new();
        let mut class = Vec::new();
        for (c, list) in CUES.iter().enumerate() {
            for p in *list {
                pats.push(*p);
                class.push(c as u8);
            }
        }
        let ac = aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&pats)
            .expect("the cue lexicon is a valid pattern set");
        (ac, class)
    });

/// Per class, how many cue phrases of that class occur in `line`.
pub fn cue_counts(line: &[u8]) -> [u8; 9] {
    let (ac, class) = &*CUE_AC;
    let mut out = [0u8; 9];
    let line = tool_words(line);
    for m in ac.find_overlapping_iter(line) {
        let c = class[m.pattern().as_usize()] as usize;
        out[c] = out[c].saturating_add(1);
    }
    out
}

/// Feature hash of a cue: class `c` seen in slot `kind` (0 evidence,
/// 1 context, 2 command).
pub fn cue_feature(c: usize, kind: u32) -> u32 {
    0x6000 + (c as u32) * 8 + kind
}

/// Failure signatures: cross-language wordings of tool output that name
/// the kind of failure (compiler diagnostics, linter and formatter
/// reports, dependency resolution, test runners, configuration and
/// platform errors, timeouts). Each pattern is a class *feature* of its own
/// (its weight per class is learned), seen in four slots: the best lines,
/// their context, the step command, and the failing step's output (see
/// [`SIG_SLOTS`]). Case-insensitive substrings; generic (no project
/// names). The second field is a family, only for documentation and tests.
pub const SIGS: &[(&str, &str)] = &[
    // compiler diagnostics
    ("error[e0", "compile"),
    ("error cs", "compile"),
    ("error ts", "compile"),
    (": error:", "compile"),
    ("fatal error:", "compile"),
    ("cannot find symbol", "compile"),
    ("undefined reference", "compile"),
    ("syntaxerror", "compile"),
    ("syntax error", "compile"),
    ("compilationfailure", "compile"),
    ("compileerror", "compile"),
    ("compilation failed", "compile"),
    ("compilation error", "compile"),
    ("could not compile", "compile"),
    ("unable to compile", "compile"),
    ("failed to compile", "compile"),
    ("ld returned", "compile"),
    ("not in scope", "compile"),
    ("undefined function", "compile"),
    ("undeclared", "compile"),
    ("is not assignable", "compile"),
    ("cannot find name", "compile"),
    ("does not exist in the current context", "compile"),
    ("redeclared", "compile"),
    ("mismatched types", "compile"),
    ("type mismatch", "compile"),
    ("build failed", "compile"),
    ("unexpected token", "compile"),
    ("unexpected identifier", "compile"),
    ("invalid css", "compile"),
    ("implicit declaration", "compile"),
    ("no member named", "compile"),
    ("cannot be applied", "compile"),
    ("couldn't match", "compile"),
    ("compiling", "compile"),
    // linters, formatters, static checks
    ("rubocop", "lint"),
    ("offenses", "lint"),
    ("offense", "lint"),
    ("eslint", "lint"),
    ("tslint", "lint"),
    ("jshint", "lint"),
    ("jscs", "lint"),
    ("flake8", "lint"),
    ("pylint", "lint"),
    ("pycodestyle", "lint"),
    ("pep8", "lint"),
    ("gofmt", "lint"),
    ("goimports", "lint"),
    ("golint", "lint"),
    ("metalinter", "lint"),
    ("go vet", "lint"),
    ("clang-format", "lint"),
    ("checkstyle", "lint"),
    ("swiftlint", "lint"),
    ("ktlint", "lint"),
    ("scalastyle", "lint"),
    ("scalafmt", "lint"),
    ("perlcritic", "lint"),
    ("shellcheck", "lint"),
    ("prettier", "lint"),
    ("stylelint", "lint"),
    ("markdownlint", "lint"),
    ("standard:", "lint"),
    ("lint", "lint"),
    ("would reformat", "lint"),
    ("not formatted", "lint"),
    ("check-formatted", "lint"),
    ("formatting", "lint"),
    ("style/", "lint"),
    ("layout/", "lint"),
    ("whitespace", "lint"),
    ("trailing", "lint"),
    ("line too long", "lint"),
    ("indentation", "lint"),
    ("missing space", "lint"),
    ("is required after", "lint"),
    ("broken link", "lint"),
    ("> links", "lint"),
    ("dupes", "lint"),
    ("redirect", "lint"),
    ("mima", "lint"),
    ("binary issues", "lint"),
    ("size limit", "lint"),
    ("not in order", "lint"),
    ("alphabetical", "lint"),
    ("spelling", "lint"),
    ("license header", "lint"),
    ("diff --git", "lint"),
    ("severity", "lint"),
    // dependency resolution and installation
    ("npm err", "dependency"),
    ("could not resolve", "dependency"),
    ("unable to resolve", "dependency"),
    ("unresolved dependency", "dependency"),
    ("resolveexception", "dependency"),
    ("no matching distribution", "dependency"),
    ("could not find a version", "dependency"),
    ("could not find gem", "dependency"),
    ("could not find artifact", "dependency"),
    ("could not transfer artifact", "dependency"),
    ("failed to collect dependencies", "dependency"),
    ("packagesnotfounderror", "dependency"),
    ("not available", "dependency"),
    ("cannot find module", "dependency"),
    ("module not found", "dependency"),
    ("modulenotfounderror", "dependency"),
    ("no module named", "dependency"),
    ("importerror", "dependency"),
    ("error while loading shared libraries", "dependency"),
    ("cannot open shared object", "dependency"),
    ("could not find package", "dependency"),
    ("could not find", "dependency"),
    ("failed to fetch", "dependency"),
    ("failed to download", "dependency"),
    ("version conflict", "dependency"),
    ("conflicting", "dependency"),
    ("checksum", "dependency"),
    ("hash mismatch", "dependency"),
    ("no such hash", "dependency"),
    ("install", "dependency"),
    ("restore", "dependency"),
    ("dependencies", "dependency"),
    ("dependency", "dependency"),
    ("requirement", "dependency"),
    ("lockfile", "dependency"),
    ("peer dep", "dependency"),
    ("e404", "dependency"),
    ("404 not found", "dependency"),
    ("manifest", "dependency"),
    ("unable to find image", "dependency"),
    ("package", "dependency"),
    ("download", "dependency"),
    ("registry", "dependency"),
    // test runners
    ("assertionerror", "test"),
    ("assertion", "test"),
    ("assert", "test"),
    ("expected", "test"),
    ("actual", "test"),
    ("to equal", "test"),
    ("to be", "test"),
    ("failures:", "test"),
    ("failed tests", "test"),
    ("tests failed", "test"),
    ("test failed", "test"),
    ("failing", "test"),
    ("passing", "test"),
    ("tests run:", "test"),
    ("*** failed ***", "test"),
    ("not ok", "test"),
    ("--- fail", "test"),
    ("fail:", "test"),
    ("[fail]", "test"),
    ("failed:", "test"),
    ("\u{2717}", "test"),
    ("\u{2716}", "test"),
    ("traceback", "test"),
    ("failure/error", "test"),
    ("examples,", "test"),
    ("test suite", "test"),
    ("spec", "test"),
    ("pytest", "test"),
    ("mocha", "test"),
    ("jest", "test"),
    ("rspec", "test"),
    ("phpunit", "test"),
    ("junit", "test"),
    ("testcase", "test"),
    ("test_", "test"),
    ("test", "test"),
    ("should", "test"),
    ("exception", "test"),
    ("stack trace", "test"),
    ("panicked", "test"),
    ("segmentation fault", "test"),
    ("coverage", "test"),
    // configuration of the build itself
    ("command not found", "config"),
    ("no such file or directory", "config"),
    ("permission denied", "config"),
    ("not found", "config"),
    ("no rakefile", "config"),
    ("no rule to make target", "config"),
    ("unknown option", "config"),
    ("illegal", "config"),
    ("not defined", "config"),
    ("unrecognized", "config"),
    ("usage:", "config"),
    ("is not recognized", "config"),
    ("not set", "config"),
    ("environment variable", "config"),
    ("invalid option", "config"),
    (".yml", "config"),
    ("unsupported", "config"),
    ("cannot access", "config"),
    ("not a directory", "config"),
    ("aborted!", "config"),
    ("line ", "config"),
    // platform and network
    ("connection refused", "infra"),
    ("connection reset", "infra"),
    ("connection error", "infra"),
    ("connect timeout", "infra"),
    ("could not connect", "infra"),
    ("could not resolve host", "infra"),
    ("name resolution", "infra"),
    ("unreachable", "infra"),
    ("ssl", "infra"),
    ("certificate", "infra"),
    ("handshake", "infra"),
    ("no space left", "infra"),
    ("disconnected", "infra"),
    ("daemon", "infra"),
    ("docker", "infra"),
    ("remote branch", "infra"),
    ("cloning into", "infra"),
    ("cancelled", "infra"),
    ("internal error", "infra"),
    ("service unavailable", "infra"),
    ("rate limit", "infra"),
    ("econnreset", "infra"),
    ("emulator", "infra"),
    ("simulator", "infra"),
    ("deploy", "infra"),
    ("http", "infra"),
    // timeouts
    ("timed out", "timeout"),
    ("timeout of", "timeout"),
    ("timeoutexception", "timeout"),
    ("timetrap", "timeout"),
    ("timeout", "timeout"),
    ("exceeded", "timeout"),
    ("no output has been received", "timeout"),
    ("deadline", "timeout"),
    ("took longer", "timeout"),
    ("exited with 124", "timeout"),
    ("wait failed", "timeout"),
    ("no message in", "timeout"),
    // out of memory
    ("out of memory", "oom"),
    ("outofmemoryerror", "oom"),
    ("cannot allocate memory", "oom"),
    ("memoryerror", "oom"),
    ("killed", "oom"),
    // generic error words (their weight per class is learned too)
    ("error", "generic"),
    ("fatal", "generic"),
    ("warning", "generic"),
    ("failed", "generic"),
    ("failure", "generic"),
];

/// Slots a signature is seen in: the best lines, their context, their step
/// command, the failing step's output, the failing step's command.
pub const SIG_SLOTS: u32 = 5;

/// The signature patterns as a full DFA: matched only on the few hundred
/// lines kept per log, its build cost (once per process) buys a faster scan.
/// Walked byte by byte below (no prefilter: every position is visited, the
/// matches come in the order of an overlapping search).
/// Build this module's pattern automata now (the cue automaton and the
/// signature DFA), not on the first log that needs them.
pub fn warm() {
    std::sync::LazyLock::force(&CUE_AC);
    std::sync::LazyLock::force(&SIG_DFA);
}

static SIG_DFA: std::sync::LazyLock<aho_corasick::dfa::DFA> = std::sync::LazyLock::new(|| {
    aho_corasick::dfa::DFA::builder()
        .ascii_case_insensitive(true)
        .prefilter(false)
        .build(SIGS.iter().map(|s| s.0))
        .expect("the signature list is a valid pattern set")
});

/// Call `f(i)` once for every signature `i` of [`SIGS`] present in `line`,
/// in the order of their first match's end (then pattern order in the
/// automaton's match list, as an overlapping search reports them), plus the
/// structural one: a source location (`file.ext:12` or `file.ext(12,3)`;
/// index `SIGS.len()`).
pub fn for_each_sig<F: FnMut(usize)>(line: &[u8], mut f: F) {
    use aho_corasick::Anchored;
    use aho_corasick::automaton::Automaton;
    let line = tool_words(line);
    let dfa = &*SIG_DFA;
    let mut seen = [0u64; SIGS.len().div_ceil(64) + 1];
    let mut sid = dfa
        .start_state(Anchored::No)
        .expect("the DFA supports unanchored searches");
    for &b in line {
        sid = dfa.next_state(Anchored::No, sid, b);
        if dfa.is_special(sid) {
            if dfa.is_dead(sid) {
                break;
            }
            if dfa.is_match(sid) {
                for k in 0..dfa.match_len(sid) {
                    let i = dfa.match_pattern(sid, k).as_usize();
                    if seen[i / 64] & (1 << (i % 64)) == 0 {
                        seen[i / 64] |= 1 << (i % 64);
                        f(i);
                    }
                }
            }
        }
    }
    if has_location(line) {
        f(SIGS.len());
    }
}

/// A source location: `.ext:digits` or `.ext(digits,`.
fn has_location(line: &[u8]) -> bool {
    let n = line.len();
    let mut i = 0;
    while i + 2 < n {
        if line[i] == b'.' && line[i + 1].is_ascii_alphabetic() {
            let mut j = i + 1;
            while j < n && j - i <= 6 && line[j].is_ascii_alphanumeric() {
                j += 1;
            }
            if j + 1 < n && (line[j] == b':' || line[j] == b'(') && line[j + 1].is_ascii_digit() {
                return true;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    false
}

/// Feature hash of signature `i` in slot `slot`.
pub fn sig_feature(i: usize, slot: u32) -> u32 {
    0x0010_0000 + (i as u32) * 8 + slot
}

/// Second-stage line features from the failure signatures of a line in
/// zone `zone`: each signature and its family, both crossed with the zone
/// (computed only at the end of a scan, on the kept lines, like the other
/// zone features).
#[inline]
pub fn for_each_sig_line_feature<F: FnMut(u32)>(line: &[u8], zone: usize, mut f: F) {
    for_each_sig(line, |i| {
        f(sig_line_pattern(i, zone));
        f(sig_line_family(sig_family(i), zone));
    });
}

/// Hash of signature `i` in zone `zone` as a second-stage line feature.
#[inline]
pub fn sig_line_pattern(i: usize, zone: usize) -> u32 {
    zone_hash(0x0030_0000 + i as u32, zone)
}

/// Hash of signature family `fam` in zone `zone` as a second-stage line
/// feature.
#[inline]
pub fn sig_line_family(fam: usize, zone: usize) -> u32 {
    zone_hash(0x0040_0000 + fam as u32, zone)
}

/// Families of [`SIGS`] (the structural location signature is `loc`).
pub const SIG_FAMILIES: [&str; 10] = [
    "compile",
    "lint",
    "dependency",
    "test",
    "config",
    "infra",
    "timeout",
    "oom",
    "generic",
    "loc",
];

/// Family index of signature `i` (index into [`SIG_FAMILIES`]).
pub fn sig_family(i: usize) -> usize {
    static FAM: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        SIGS.iter()
            .map(|s| {
                SIG_FAMILIES
                    .iter()
                    .position(|f| *f == s.1)
                    .expect("every signature has a known family") as u8
            })
            .collect()
    });
    FAM.get(i)
        .map_or(SIG_FAMILIES.len() - 1, |&f| usize::from(f))
}

/// Feature hash of signature family `fam` in slot `slot`: one shared
/// feature per family, so a rare signature still counts through its
/// family (a pattern seen in fewer than `min_groups` repositories is not
/// learned on its own).
pub fn sig_family_feature(fam: usize, slot: u32) -> u32 {
    0x0020_0000 + (fam as u32) * 8 + slot
}

/// A line that echoes the command of a build step: `$ cmd` (Travis, GitLab),
/// `+ cmd` (shell `set -x`, Jenkins sh), `Run cmd` (GitHub Actions group
/// header), `> cmd` (npm scripts). Azure's `##[command]cmd` and CircleCI's
/// command after its step's shebang are normalised to `$ cmd`.
pub fn is_command(line: &[u8]) -> bool {
    line.starts_with(b"$ ")
        || line.starts_with(b"+ ")
        || line.starts_with(b"Run ")
        || line.starts_with(b"> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(s: &str) -> Vec<u32> {
        let mut v = Vec::new();
        let n = for_each_feature(s.as_bytes(), |h| v.push(h));
        assert_eq!(n as usize, v.len());
        v
    }

    /// The CI's framing has one form: the same features whatever the CI.
    #[test]
    fn ci_framing_has_one_form() {
        let travis = feats("The command \"\" exited with 1.");
        for m in [
            "Process completed with exit code 2.",
            "ERROR: Job failed: exit code 1",
            "ERROR: script returned exit code 127",
            "Bash exited with code '1'.",
            "🚨 Error: The command exited with status 1",
            "Error: The command exited with status 2",
            "Exited with code exit status 1",
        ] {
            assert!(is_fail_marker(m.as_bytes()), "{m}");
            assert_eq!(feats(m), travis, "{m}");
            assert_eq!(
                cue_counts(m.as_bytes()),
                cue_counts(b"The command \"\" exited with 1.")
            );
        }
        // Travis's own marker keeps its words, with the command it names;
        // a tool's own "exited with" and an exit 0 are not the CI's.
        assert_ne!(feats("The command \"npm run lint\" exited with 1."), travis);
        assert_eq!(ci_framing(b"ERROR: \"lint:js\" exited with 1."), None);
        assert_eq!(ci_framing(b"Process completed with exit code 0."), None);
        // Go's own `exit status 1` (a failed test binary) is tool output.
        assert!(!is_fail_marker(b"exit status 1"));
        assert_eq!(ci_framing(b"exit status 1"), None);
        assert!(!is_fail_marker(b"Exited with code exit status 0"));
    }

    #[test]
    fn case_and_digits_fold() {
        assert_eq!(feats("Error 123"), feats("error 999"));
        assert!(feats("error: x").contains(&token_hash("error")));
    }

    #[test]
    fn paths_keep_last_component() {
        assert_eq!(
            feats("/home/travis/build/foo/bar/x.c:12: error"),
            feats("/builds/other/proj/x.c:99: error")
        );
    }

    fn families(line: &str) -> Vec<&'static str> {
        let mut v = Vec::new();
        for_each_sig(line.as_bytes(), |i| v.push(SIG_FAMILIES[sig_family(i)]));
        v
    }

    #[test]
    fn signatures_name_the_failure_kind() {
        let f = families("src/main.rs:3:5: error[E0425]: cannot find value `x`");
        assert!(f.contains(&"compile") && f.contains(&"loc"), "{f:?}");
        assert!(families("lib/a.rb:1:1: C: Style/FrozenStringLiteralComment").contains(&"lint"));
        assert!(families("npm ERR! code E404").contains(&"dependency"));
        assert!(families("bash: rake: command not found").contains(&"config"));
        assert!(families("Error: timeout of 2000ms exceeded.").contains(&"timeout"));
        // Case-insensitive, each signature once per line.
        let mut n = 0;
        for_each_sig(b"RUBOCOP rubocop Rubocop", |_| n += 1);
        assert_eq!(n, 1);
        assert!(families("all good here").is_empty());
        // Every signature has a family; feature hashes do not collide.
        for i in 0..=SIGS.len() {
            assert!(sig_family(i) < SIG_FAMILIES.len());
        }
        assert_ne!(sig_feature(SIGS.len(), 4), sig_family_feature(0, 0));
    }

    #[test]
    fn scan_field_matches_the_byte_loop() {
        // The byte loop it replaces: the first space, the last `/` or `\`.
        let naive = |s: &[u8], mut i: usize| {
            let mut sep = usize::MAX;
            while i < s.len() && s[i] != b' ' {
                if s[i] == b'/' || s[i] == b'\\' {
                    sep = i;
                }
                i += 1;
            }
            (i, sep)
        };
        // Every byte value at every place of lines of 1..=40 bytes, with
        // separators and spaces around it, from each start up to the
        // line's last separator.
        for len in 1..=40 {
            for b in 0..=255u8 {
                for at in 0..len {
                    let mut s = vec![b'a'; len];
                    for (k, c) in [b'/', b'.', b' ', b'\\', 0x80, 0xaf]
                        .into_iter()
                        .enumerate()
                    {
                        s[(at + 3 * k + 1) % len] = c;
                    }
                    s[at] = b;
                    let last = s.iter().rposition(|&c| c == b'/' || c == b'\\');
                    for from in 0..=last.unwrap_or(0) {
                        if s[from] == b' ' || last.is_none() {
                            continue;
                        }
                        assert_eq!(
                            scan_field(&s, from, last.unwrap_or(0)),
                            naive(&s, from),
                            "{b:#x} at {at} from {from} in {s:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cue_filter_passes_every_cue_word() {
        for &(w, g) in CUE_WORDS {
            assert_eq!(cue_group(token_hash(w)), g, "{w}");
        }
        assert_eq!(cue_group(token_hash("zebra")), 0);
    }

    /// The byte-at-a-time [`for_each_feature`] that the word-at-a-time one
    /// replaced, kept as the reference it must agree with feature for
    /// feature.
    fn reference_features<F: FnMut(u32)>(s: &[u8], mut f: F) -> u32 {
        /// Field scan classes: 1 space (ends a field), 2 path separator, else 0.
        static FIELD: [u8; 256] = {
            let mut m = [0u8; 256];
            m[b' ' as usize] = 1;
            m[b'/' as usize] = 2;
            m[b'\\' as usize] = 2;
            m
        };
        let mut n = 0u32;
        // Shape: indentation and length buckets.
        let indent = s.iter().take_while(|&&b| b == b' ').count();
        let ib = match indent {
            0 => 0,
            1..=2 => 1,
            3..=4 => 2,
            5..=8 => 3,
            _ => 4,
        };
        f(0x1000 + ib);
        let lb = match s.len() {
            0..=8 => 0,
            9..=24 => 1,
            25..=60 => 2,
            61..=120 => 3,
            121..=300 => 4,
            _ => 5,
        };
        f(0x2000 + lb);
        n += 2;
        let mut tokens = 0usize;
        // Cue groups present (bits 1..=9), as first token (bits 17..=25),
        // an error word followed by `:` (bit 31).
        let mut groups = 0u32;
        let mut prev = 0u8;
        let mut i = indent;
        let len = s.len();
        while i < len && tokens < MAX_TOKENS {
            // One whitespace-separated field.
            // One whitespace-separated field, and its last path separator
            // found in the same pass.
            let start = i;
            let mut sep = usize::MAX;
            while i < len {
                match FIELD[s[i] as usize] {
                    0 => i += 1,
                    1 => break,
                    _ => {
                        sep = i;
                        i += 1;
                    }
                }
            }
            let end = i;
            let mut field = &s[start..end];
            while i < len && s[i] == b' ' {
                i += 1;
            }
            if field.len() > 1 && sep != usize::MAX {
                f(0x3000);
                n += 1;
                field = &s[sep + 1..end];
            }
            // Tokens within the field.
            let mut j = 0;
            let fl = field.len();
            while j < fl && tokens < MAX_TOKENS {
                let m = MAP[field[j] as usize];
                if m >= 2 {
                    let ts = j;
                    let mut h = FNV_OFFSET;
                    while j < fl {
                        let m = MAP[field[j] as usize];
                        if m < 2 {
                            break;
                        }
                        h = fnv(h, m);
                        j += 1;
                    }
                    if j - ts > MAX_TOKEN {
                        f(0x4000);
                        prev = 0;
                    } else {
                        f(h);
                        prev = cue_group(h);
                        if prev != 0 {
                            groups |= 1 << prev;
                            if tokens == 0 {
                                groups |= 1 << (prev + 16);
                            }
                        }
                    }
                    n += 1;
                    tokens += 1;
                } else {
                    if field[j] == b':' && prev == 2 {
                        groups |= 1 << 31;
                    }
                    if tokens == 0 && j == 0 {
                        // First punctuation of the line (`[`, `-`, `>`, `*`, ...).
                        f(0x5100 + u32::from(field[j]));
                        n += 1;
                    }
                    prev = 0;
                    f(0x5000 + u32::from(field[j]));
                    n += 1;
                    j += 1;
                }
            }
        }
        while groups != 0 {
            let b = groups.trailing_zeros();
            f(0x7000 + b);
            n += 1;
            groups &= groups - 1;
        }
        n
    }

    #[test]
    fn features_match_the_reference_scanner() {
        let pieces: [&[u8]; 24] = [
            b" ",
            b"  ",
            b"/",
            b"\\",
            b"a/b",
            b"x.c:12:",
            b"error",
            b"Error:",
            b"fail",
            b"-",
            b"[",
            b"::",
            b"\xc3\xa9t\xc3\xa9",
            b"0123456789",
            b"FOO_bar",
            b"abcdefghijklmnopqrstuvwxyz0123456789",
            b"/home/travis/build/x/y.rb",
            b"C:\\src\\a.cs(3,4)",
            b".",
            b"//",
            b"\xa0",
            b"\xaf",
            b"\xdc",
            b"passed",
        ];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        for _ in 0..20_000 {
            let mut line = Vec::new();
            for _ in 0..next(90) {
                line.extend_from_slice(pieces[next(pieces.len())]);
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let na = for_each_feature(&line, |h| a.push(h));
            let nb = reference_features(&line, |h| b.push(h));
            assert_eq!((na, &a), (nb, &b), "{:?}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn empty_and_garbage_are_fine() {
        feats("");
        let junk: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut n = 0;
        for_each_feature(&junk, |_| n += 1);
        assert!(n > 0);
    }
}
