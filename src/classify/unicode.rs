//! Undo the Unicode tricks that hide words from a text classifier while a
//! reader sees them unchanged (featurizer flag `unicode`):
//!
//! - invisible characters inside words (zero-width space and joiners, soft
//!   hyphen, word joiner, bidi controls, variation selectors, tag
//!   characters: Unicode's Default_Ignorable_Code_Point) are dropped:
//!   `f\u{200b}r\u{200b}e\u{200b}e` is `free`;
//! - other spaces (no-break, en/em, ideographic, ...) become ` `;
//! - fullwidth ASCII (`ＦＲＥＥ`), mathematical alphanumerics (`𝐅𝐑𝐄𝐄`,
//!   `𝗙𝗥𝗘𝗘`), circled and squared Latin letters become ASCII;
//! - Cyrillic and Greek letters that look like Latin ones (`раypal` with a
//!   Cyrillic `р` and `а`) become those Latin letters inside a word that
//!   also has ASCII letters, or whose letters are all such look-alikes
//!   in a text that has no other Cyrillic or Greek letters (UTS #39's
//!   mixed-script and whole-script confusables). Russian or Greek text
//!   is left alone (`как` is a word there, not a disguise).
//!
//! Everything else is kept as it is (accents included). The output is
//! never longer than the input.

/// Fold `text` into `out` (appended). Returns whether anything changed.
pub fn fold(text: &str, out: &mut String) -> bool {
    let start_len = out.len();
    let mut changed = false;
    // A text written in Cyrillic or Greek (it has letters of those scripts
    // that look like no Latin letter) keeps its short words made only of
    // look-alikes (`как`, `он`): they are words, not disguises.
    let native = text.chars().any(|c| {
        matches!(c as u32, 0x0370..=0x052F) && c.is_alphabetic() && confusable(c).is_none()
    });
    // The current word in `out`: its start, whether it has ASCII letters,
    // look-alikes, and letters that are neither.
    let mut word = out.len();
    let (mut ascii, mut alike, mut other) = (false, false, false);
    let end_word = |out: &mut String, word: usize, ascii: bool, alike: bool, other: bool| -> bool {
        if !alike || !(ascii || (!other && !native)) {
            return false;
        }
        let w: String = out[word..]
            .chars()
            .map(|c| confusable(c).unwrap_or(c))
            .collect();
        out.truncate(word);
        out.push_str(&w);
        true
    };
    for c in text.chars() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() {
                ascii |= c.is_ascii_alphabetic();
            } else {
                changed |= end_word(out, word, ascii, alike, other);
                (ascii, alike, other) = (false, false, false);
                word = out.len() + 1;
            }
            out.push(c);
            continue;
        }
        if ignorable(c) {
            changed = true;
            continue;
        }
        if let Some(a) = ascii_form(c) {
            changed = true;
            if a.is_ascii_alphanumeric() {
                ascii |= a.is_ascii_alphabetic();
                out.push(a);
            } else {
                changed |= end_word(out, word, ascii, alike, other);
                (ascii, alike, other) = (false, false, false);
                out.push(a);
                word = out.len();
            }
            continue;
        }
        if c.is_alphanumeric() {
            if confusable(c).is_some() {
                alike = true;
            } else {
                other = true;
            }
        } else {
            changed |= end_word(out, word, ascii, alike, other);
            (ascii, alike, other) = (false, false, false);
            out.push(c);
            word = out.len();
            continue;
        }
        out.push(c);
    }
    changed |= end_word(out, word.min(out.len()), ascii, alike, other);
    debug_assert!(out.len() - start_len <= text.len());
    changed
}

/// Whether [`fold`] could change `b` (UTF-8): a cheap check over the
/// bytes, so that text with only ASCII, accented Latin, `£`, CJK and the
/// like is not copied. It looks at the lead byte (and for some the next
/// byte) of each non-ASCII character: a superset of what `fold` changes.
pub fn may_fold(b: &[u8]) -> bool {
    // Blocks of 32 bytes with no high bit (two 16-byte words ORed) are
    // skipped whole; only the others are read byte by byte.
    const HIGH: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;
    let mut blocks = b.chunks_exact(32);
    for (k, block) in blocks.by_ref().enumerate() {
        let (lo, hi) = block.split_at(16);
        let (Ok(lo), Ok(hi)) = (<[u8; 16]>::try_from(lo), <[u8; 16]>::try_from(hi)) else {
            continue;
        };
        if (u128::from_le_bytes(lo) | u128::from_le_bytes(hi)) & HIGH != 0
            && check_bytes(b, k * 32, k * 32 + 32)
        {
            return true;
        }
    }
    let tail = blocks.remainder().len();
    check_bytes(b, b.len() - tail, b.len())
}

/// [`may_fold`]'s byte check over `b[from..to]` (reading one byte past a
/// lead byte, which may lie beyond `to`).
fn check_bytes(b: &[u8], from: usize, to: usize) -> bool {
    // Only bytes with the high bit set are visited (the set bits of each
    // 8-byte word's high-bit mask); of those, continuation bytes
    // (0x80..0xC1) and the leads of accented Latin (0xC3) and most
    // scripts match nothing.
    let mut i = from;
    while i < to {
        let n = (to - i).min(8);
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&b[i..i + n]);
        let mut high = u64::from_le_bytes(w) & 0x8080_8080_8080_8080;
        while high != 0 {
            let at = i + (high.trailing_zeros() / 8) as usize;
            high &= high - 1;
            let lead = b[at];
            if lead >= 0xC2 && lead_may_fold(lead, b.get(at + 1).copied().unwrap_or(0)) {
                return true;
            }
        }
        i += n;
    }
    false
}

/// Whether a character whose UTF-8 starts with `lead`, `next` may be one
/// [`fold`] changes.
fn lead_may_fold(lead: u8, next: u8) -> bool {
    match lead {
        // U+00A0 no-break space, U+00AD soft hyphen.
        0xC2 => next == 0xA0 || next == 0xAD,
        // U+0131 dotless i.
        0xC4 => next == 0xB1,
        // U+034F, Greek, Cyrillic, U+061C.
        0xCD | 0xCE | 0xCF | 0xD0 | 0xD1 | 0xD2 | 0xD3 | 0xD4 | 0xD8 => true,
        // U+115F, U+1160, U+1680, U+17B4, U+17B5, U+180B-U+180F.
        0xE1 => matches!(next, 0x85 | 0x9A | 0x9E | 0xA0),
        // U+2000-U+206F (spaces, zero-width, bidi, word joiner),
        // U+24B6-U+24E9 (circled letters).
        0xE2 => matches!(next, 0x80 | 0x81 | 0x92 | 0x93),
        // U+3000, U+3164.
        0xE3 => matches!(next, 0x80 | 0x85),
        // U+FE00-U+FE0F, U+FEFF, U+FF01-U+FF5E, U+FFA0, U+FFF0-U+FFF8.
        0xEF => matches!(next, 0xB8 | 0xBB | 0xBC | 0xBD | 0xBE | 0xBF),
        // Planes 1 (mathematical, squared letters) and 14 (tags).
        0xF0 | 0xF3 => true,
        _ => false,
    }
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, 15.1):
/// characters with no visible form of their own.
fn ignorable(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5
        | 0x180B..=0x180F | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F
        | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// The ASCII character `c` is a presentation form of, if any: spaces,
/// fullwidth ASCII, mathematical alphanumerics, circled and squared letters.
fn ascii_form(c: char) -> Option<char> {
    let u = c as u32;
    let letter = |i: u32| -> Option<char> {
        let i = i % 52;
        char::from_u32(if i < 26 { 0x41 + i } else { 0x61 + i - 26 })
    };
    match u {
        0x00A0 | 0x1680 | 0x2000..=0x200A | 0x202F | 0x205F | 0x3000 => Some(' '),
        0xFF01..=0xFF5E => char::from_u32(u - 0xFF01 + 0x21),
        // Mathematical Alphanumeric Symbols: 13 alphabets of 52 letters
        // (bold, italic, script, fraktur, double-struck, sans, monospace,
        // ...), then 5 runs of the 10 digits. Holes in the block are
        // unassigned (their letters live in Letterlike Symbols).
        0x1D400..=0x1D6A3 => letter(u - 0x1D400),
        0x1D7CE..=0x1D7FF => char::from_u32(0x30 + (u - 0x1D7CE) % 10),
        // Circled Latin capital and small letters.
        0x24B6..=0x24CF => char::from_u32(0x41 + u - 0x24B6),
        0x24D0..=0x24E9 => char::from_u32(0x61 + u - 0x24D0),
        // Squared, negative circled and negative squared capitals.
        0x1F130..=0x1F149 => char::from_u32(0x41 + u - 0x1F130),
        0x1F150..=0x1F169 => char::from_u32(0x41 + u - 0x1F150),
        0x1F170..=0x1F189 => char::from_u32(0x41 + u - 0x1F170),
        _ => None,
    }
}

/// The Latin letter a Cyrillic or Greek letter is drawn like (the common
/// entries of Unicode's confusables.txt for these scripts).
fn confusable(c: char) -> Option<char> {
    Some(match c {
        // Cyrillic small.
        'а' => 'a',
        'в' => 'b',
        'е' | 'ё' => 'e',
        'һ' => 'h',
        'і' | 'ї' => 'i',
        'ј' => 'j',
        'к' => 'k',
        'ӏ' => 'l',
        'о' => 'o',
        'р' => 'p',
        'ԛ' => 'q',
        'с' => 'c',
        'ѕ' => 's',
        'у' => 'y',
        'ԝ' => 'w',
        'х' => 'x',
        'ԁ' => 'd',
        // Cyrillic capital.
        'А' => 'A',
        'В' => 'B',
        'Е' | 'Ё' => 'E',
        'К' => 'K',
        'М' => 'M',
        'Н' => 'H',
        'О' => 'O',
        'Р' => 'P',
        'С' => 'C',
        'Т' => 'T',
        'У' => 'Y',
        'Х' => 'X',
        'І' | 'Ӏ' => 'I',
        'Ј' => 'J',
        'Ѕ' => 'S',
        'Ԛ' => 'Q',
        'Ԝ' => 'W',
        'Һ' => 'H',
        // Greek small.
        'α' => 'a',
        'ι' => 'i',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'υ' => 'u',
        'χ' => 'x',
        // Greek capital.
        'Α' => 'A',
        'Β' => 'B',
        'Ε' => 'E',
        'Ζ' => 'Z',
        'Η' => 'H',
        'Ι' => 'I',
        'Κ' => 'K',
        'Μ' => 'M',
        'Ν' => 'N',
        'Ο' => 'O',
        'Ρ' => 'P',
        'Τ' => 'T',
        'Υ' => 'Y',
        'Χ' => 'X',
        // Latin dotless i.
        'ı' => 'i',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> String {
        let mut out = String::new();
        fold(s, &mut out);
        out
    }

    #[test]
    fn hidden_words_come_back() {
        assert_eq!(f("f\u{200b}r\u{200b}e\u{200b}e gift"), "free gift");
        assert_eq!(f("soft\u{ad}ware\u{feff}"), "software");
        assert_eq!(f("ＦＲＥＥ ｉＰｈｏｎｅ！"), "FREE iPhone!");
        assert_eq!(f("𝐅𝐑𝐄𝐄 𝗴𝗶𝗳𝘁 𝟏𝟎𝟎"), "FREE gift 100");
        assert_eq!(f("Ⓦⓘⓝ 🅿🆁🅸🆉🅴"), "Win PRIZE");
        assert_eq!(f("a\u{a0}b\u{2003}c\u{3000}d"), "a b c d");
        // Cyrillic р, а and о inside Latin words; a whole look-alike word.
        assert_eq!(
            f("verify your раypal accоunt"),
            "verify your paypal account"
        );
        assert_eq!(f("САSН"), "CASH");
        assert_eq!(f("(рау) now"), "(pay) now");
    }

    #[test]
    fn real_words_of_other_scripts_stay() {
        for s in [
            "Привет, как дела? Это обычный текст.",
            "Καλημέρα σας, τι κάνετε;",
            "café naïve São Paulo",
            "日本語のテキスト",
            "",
        ] {
            let mut out = String::new();
            let changed = fold(s, &mut out);
            assert_eq!(out, s);
            assert!(!changed, "{s}");
            if !s.contains(|c: char| ('\u{370}'..='\u{52f}').contains(&c)) {
                assert!(!may_fold(s.as_bytes()), "{s}");
            }
        }
    }

    #[test]
    fn never_longer_and_never_panics() {
        // Every char of the Basic Multilingual Plane and the planes with
        // the folded ranges, alone and between letters.
        for cp in (0..0x3_0000u32).chain(0xE_0000..0xE_1000) {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            for s in [c.to_string(), format!("a{c}b"), format!("{c}{c} x")] {
                let out = f(&s);
                assert!(out.len() <= s.len(), "{cp:#x}");
                // The quick check never misses a change.
                assert!(out == s || may_fold(s.as_bytes()), "{cp:#x}");
                // Folding twice changes nothing more.
                assert_eq!(f(&out), out, "{cp:#x}");
            }
        }
    }
}
