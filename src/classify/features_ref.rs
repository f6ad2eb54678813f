//! The scanner as it was before the single-pass rewrite (2026-11-23),
//! kept verbatim as the reference the fast path is tested against: same
//! features, same order, same spans.

use super::*;

// Byte classes of the old scanner's lookup table.
const C_WORD: u8 = 1;
const C_UPPER: u8 = 2;
const C_LOWER: u8 = 4;
const C_DIGIT: u8 = 8;
const C_EXCL: u8 = 16;

/// The old per-byte tables: `C_*` classes and normalised bytes.
fn ref_tables(digits: bool) -> ([u8; 256], [u8; 256]) {
    let (mut class, mut norm) = ([0u8; 256], [0u8; 256]);
    for b in 0..=255u8 {
        let i = usize::from(b);
        norm[i] = if b <= b' ' { b' ' } else { fold(b, digits) };
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
        class[i] = c;
    }
    (class, norm)
}

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

/// Reusable per-thread buffers of the scanner.
#[derive(Default)]
struct RefScratch {
    /// Collapsed, normalised text, 8 zero bytes of padding after it.
    norm: Vec<u8>,
    /// Offset in the text view of each collapsed byte (and of the end).
    pos: Vec<u32>,
    /// Bit per collapsed byte: a word byte.
    mask: Vec<u64>,
}

thread_local! {
    static REF_SCRATCH: std::cell::RefCell<RefScratch> = std::cell::RefCell::new(RefScratch::default());
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

impl Featurizer {
    /// Emit every feature of `view` into `sink`.
    #[inline(always)]
    pub(super) fn ref_run<S: Sink>(&self, view: &TextView, sink: &mut S) {
        // Folded always (no quick check first), so the check is tested too.
        let folded;
        let text = if self.cfg.flags & FLAG_UNICODE != 0 {
            let mut s = String::new();
            crate::classify::unicode::fold(self.fold_input(&view.text), &mut s);
            folded = s;
            folded.as_bytes()
        } else {
            view.text.as_bytes()
        };
        let text = &text[..text.len().min(self.cfg.max_bytes as usize)];
        let mut stats = Stats::default();
        // Per-thread scratch buffers (reused: no allocation per message in
        // steady state); a sink that re-enters `run` gets fresh ones.
        REF_SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut sc) => self.ref_scan(text, &mut sc, sink, &mut stats),
            Err(_) => self.ref_scan(text, &mut RefScratch::default(), sink, &mut stats),
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
    fn ref_scan<S: Sink>(&self, text: &[u8], sc: &mut RefScratch, sink: &mut S, st: &mut Stats) {
        let (class, norm_tab) = ref_tables(self.cfg.flags & FLAG_FOLD_DIGITS != 0);
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
            let cls = class[usize::from(raw)];
            let b = norm_tab[usize::from(raw)];
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
                    self.ref_token(
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
            self.ref_scan_chars(&norm[..m], pos, sink);
        }
    }

    /// Char n-grams of the collapsed, normalised bytes, with a virtual space
    /// before the first one.
    #[inline(always)]
    fn ref_scan_chars<S: Sink>(&self, norm: &[u8], pos: &[u32], sink: &mut S) {
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
    fn ref_token<S: Sink>(
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
}
