//! Hashed features of a normalised log line, computed without allocation.
//!
//! Tokens: runs of ASCII letters/digits/`_` and non-ASCII bytes, lower-cased,
//! digits folded to `0`; each punctuation byte is a token of its own. A
//! whitespace-separated field that looks like a path (has `/` or `\`) gives
//! only its last component plus a `<path>` token, so directory layouts (repo
//! names, home directories) are not memorised. Tokens longer than
//! [`MAX_TOKEN`] become `<long>` (hashes, base64). Features are unigrams,
//! bigrams of word tokens, an indentation bucket and a length bucket.

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

#[inline]
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Call `f(hash)` for every feature of the normalised line `s`; returns the
/// number of features. Hashes are unseeded: combine with a block seed via
/// [`bucket`].
#[inline]
pub fn for_each_feature<F: FnMut(u32)>(s: &[u8], mut f: F) -> u32 {
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
    f(mix(0x1000 + ib));
    let lb = match s.len() {
        0..=8 => 0,
        9..=24 => 1,
        25..=60 => 2,
        61..=120 => 3,
        121..=300 => 4,
        _ => 5,
    };
    f(mix(0x2000 + lb));
    n += 2;
    let mut prev: u32 = 0;
    let mut tokens = 0usize;
    let mut i = indent;
    let len = s.len();
    while i < len && tokens < MAX_TOKENS {
        // One whitespace-separated field.
        let start = i;
        while i < len && s[i] != b' ' {
            i += 1;
        }
        let mut field = &s[start..i];
        while i < len && s[i] == b' ' {
            i += 1;
        }
        if let Some(p) = memchr::memrchr2(b'/', b'\\', field) {
            if field.len() > 1 {
                f(mix(0x3000));
                n += 1;
                field = &field[p + 1..];
            }
        }
        // Tokens within the field.
        let mut j = 0;
        let fl = field.len();
        while j < fl && tokens < MAX_TOKENS {
            let b = field[j];
            if is_word(b) {
                let ts = j;
                let mut h = FNV_OFFSET;
                while j < fl && is_word(field[j]) {
                    let c = field[j];
                    let c = if c.is_ascii_digit() {
                        b'0'
                    } else {
                        c.to_ascii_lowercase()
                    };
                    h = fnv(h, c);
                    j += 1;
                }
                let h = if j - ts > MAX_TOKEN { 0x4000 } else { h };
                let u = mix(h);
                f(u);
                if prev != 0 {
                    f(mix(prev.wrapping_mul(0x2c1b_3c6d) ^ h ^ 0x5bd1_e995));
                    n += 1;
                }
                prev = h;
                n += 1;
                tokens += 1;
            } else {
                f(mix(0x5000 + u32::from(b)));
                n += 1;
                j += 1;
            }
        }
    }
    n
}

/// Bucket of a feature hash in a table of `2^bits`, for one block seed.
#[inline]
pub fn bucket(h: u32, seed: u32, bits: u8) -> u32 {
    mix(h ^ seed) >> (32 - u32::from(bits))
}

/// Position bucket from the number of lines after a line (0 = last line).
pub const POS_BUCKETS: usize = 12;
/// Lines after which the position bucket no longer changes.
pub const POS_FAR: u64 = 250;

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

/// For tests and rules: hash of a literal lower-case token.
pub fn token_hash(tok: &str) -> u32 {
    mix(hash_str(tok.as_bytes()))
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

    #[test]
    fn empty_and_garbage_are_fine() {
        feats("");
        let junk: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut n = 0;
        for_each_feature(&junk, |_| n += 1);
        assert!(n > 0);
    }
}
