//! String values of a JSON document, read as its bytes arrive.
//!
//! A filter that reads JSON wants the text of some string values (those
//! that JSON pointers name, or all of them), not the document. Parsing the
//! whole document first needs all of it in memory and fails on a prefix,
//! so `on_oversize: inspect_prefix` could never inspect a long JSON body
//! and a CI log in a JSON field could not stream. [`JsonStrings`] walks the
//! bytes once, with memory bounded by the nesting depth and the current
//! object key, and hands the unescaped bytes of each wanted string to a
//! sink as they come. A prefix simply ends early; bytes that are not JSON
//! stop the walk ([`JsonStrings::failed`]).

/// Most nesting the walker follows; deeper input is treated as not JSON.
/// Go's encoding/json allows 10,000 levels and JavaScript's JSON.parse
/// more, so a lower bound (serde_json's 128) would make a document the app
/// reads "not JSON" to the filter. The path costs 32 bytes a level.
const MAX_DEPTH: usize = 10_000;
/// Object keys are kept up to this length for pointer matching (a longer
/// key cannot match a configured pointer token of sane length).
const MAX_KEY: usize = 1024;

/// Whether an object key matches a pointer token as Go's encoding/json
/// matches a key to a struct field: exactly, else ignoring case with
/// Unicode simple folding (`TEXT`, `Text` and `text` are one field to
/// it, and the last one wins; `ſ` folds to `s`, the Kelvin sign to `k`).
fn key_matches(key: &[u8], token: &[u8]) -> bool {
    if key == token {
        return true;
    }
    if key.is_ascii() && token.is_ascii() {
        return key.eq_ignore_ascii_case(token);
    }
    let (Ok(k), Ok(t)) = (std::str::from_utf8(key), std::str::from_utf8(token)) else {
        return false;
    };
    let fold = |c: char| match c {
        'ſ' => 's',
        '\u{212A}' => 'k',
        '\u{212B}' => 'å',
        c => {
            let mut l = c.to_lowercase();
            match (l.next(), l.next()) {
                (Some(x), None) => x,
                _ => c,
            }
        }
    };
    k.chars().map(fold).eq(t.chars().map(fold))
}

/// One step of the path to the current value.
#[derive(Debug, Clone)]
enum Seg {
    /// In an object; the key of the current member (empty before it).
    Key(Vec<u8>),
    /// In an array; the index of the current element.
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value may start here.
    Value,
    /// After a value: `,` or the container's end.
    After,
    /// In an object after `{` or `,`: a key (or `}` right after `{`).
    Key,
    /// After a key: `:`.
    Colon,
    /// In a string (a key or a value).
    Str,
    /// After `\` in a string.
    Esc,
    /// In `\uXXXX`: how many hex digits were read.
    Hex(u8),
    /// In a number or `true` / `false` / `null`.
    Literal,
    /// The document's value ended.
    Done,
    /// Not JSON: nothing more is read.
    Failed,
}

/// Where a string's unescaped bytes go: `which` is the index of the first
/// configured pointer that matches it (`None` when every string is
/// wanted).
pub trait StrSink {
    fn bytes(&mut self, which: Option<usize>, b: &[u8]);
    fn end(&mut self, which: Option<usize>);
}

/// A streaming walker over a JSON document's string values.
#[derive(Debug)]
pub struct JsonStrings {
    /// Configured pointers as unescaped tokens (RFC 6901); `None`: all.
    pointers: Option<Vec<Vec<Vec<u8>>>>,
    /// A pointer names the string itself (`true`) or any ancestor of it.
    exact: bool,
    path: Vec<Seg>,
    state: State,
    /// The string being read is a key.
    in_key: bool,
    /// The value string being read is wanted, for this pointer.
    want: Option<Option<usize>>,
    /// `\uXXXX` value being read, and a pending high surrogate.
    hex: u32,
    high: Option<u32>,
    /// Read values after the first (a JSON text sequence, as Go's
    /// `json.Decoder` reads a body value after value).
    sequence: bool,
    /// Top-level values read to their end.
    values: usize,
    /// The literal being read: its first bytes, its length, and whether
    /// it is all number characters so far.
    lit: [u8; 9],
    lit_len: usize,
    lit_num: bool,
}

impl JsonStrings {
    /// `pointers`: JSON pointers (RFC 6901) naming the wanted strings, or
    /// `None` for every string value. `exact`: a pointer must name the
    /// string itself; otherwise it may name an object or array, and every
    /// string under it is wanted.
    pub fn new(pointers: Option<&[String]>, exact: bool) -> JsonStrings {
        let pointers = pointers.map(|ps| {
            ps.iter()
                .map(|p| {
                    p.split('/')
                        .skip(1)
                        .map(|t| t.replace("~1", "/").replace("~0", "~").into_bytes())
                        .collect()
                })
                .collect()
        });
        JsonStrings {
            pointers,
            exact,
            path: Vec::new(),
            state: State::Value,
            in_key: false,
            want: None,
            hex: 0,
            high: None,
            sequence: false,
            values: 0,
            lit: [0; 9],
            lit_len: 0,
            lit_num: true,
        }
    }

    /// Read on past the first top-level value: what follows it (another
    /// value, as Go's `json.Decoder` reads one after another, or junk) is
    /// walked too, and junk fails the walk only from there on
    /// ([`JsonStrings::values`] counts the values read whole before it).
    pub fn sequence(mut self) -> JsonStrings {
        self.sequence = true;
        self
    }

    /// How many top-level values were read to their end.
    pub fn values(&self) -> usize {
        self.values
    }

    /// The input was not JSON (a prefix of JSON is fine).
    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Whether the document's top-level value was read to its end.
    pub fn complete(&self) -> bool {
        self.state == State::Done
    }

    /// Which pointer (if any) wants a string value at the current path.
    fn wanted(&self) -> Option<Option<usize>> {
        let Some(ps) = &self.pointers else {
            return Some(None);
        };
        ps.iter()
            .position(|p| {
                let fits = if self.exact {
                    p.len() == self.path.len()
                } else {
                    p.len() <= self.path.len()
                };
                fits && p.iter().zip(&self.path).all(|(t, s)| match s {
                    Seg::Key(k) => key_matches(k, t),
                    Seg::Index(i) => {
                        std::str::from_utf8(t)
                            .ok()
                            .filter(|t| t == &"0" || !t.starts_with('0'))
                            .and_then(|t| t.parse::<usize>().ok())
                            == Some(*i)
                    }
                })
            })
            .map(Some)
    }

    fn literal_byte(&mut self, b: u8) {
        if self.lit_len < self.lit.len() {
            self.lit[self.lit_len] = b;
        }
        self.lit_len += 1;
        self.lit_num &= b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    }

    /// A number (read leniently: its characters), `true`, `false`,
    /// `null`, or Python's `NaN`, `Infinity`, `-Infinity`.
    fn literal_ok(&self) -> bool {
        if self.lit_num {
            return self.lit[..self.lit_len.min(9)]
                .iter()
                .any(u8::is_ascii_digit)
                || self.lit_len > 9;
        }
        self.lit_len <= 9
            && matches!(
                &self.lit[..self.lit_len],
                b"true" | b"false" | b"null" | b"NaN" | b"Infinity" | b"-Infinity"
            )
    }

    fn fail(&mut self) {
        self.state = State::Failed;
    }

    /// A value ended: back to the container (or the document's end).
    fn value_done(&mut self) {
        self.state = if self.path.is_empty() {
            self.values += 1;
            State::Done
        } else {
            State::After
        };
    }

    /// Emit one decoded character of a string.
    fn emit_char<S: StrSink>(&mut self, c: char, sink: &mut S) {
        let mut buf = [0u8; 4];
        let s = c.encode_utf8(&mut buf).as_bytes();
        self.emit(s, sink);
    }

    fn emit<S: StrSink>(&mut self, b: &[u8], sink: &mut S) {
        if self.in_key {
            if let Some(Seg::Key(k)) = self.path.last_mut() {
                let room = MAX_KEY.saturating_sub(k.len());
                k.extend_from_slice(&b[..b.len().min(room)]);
            }
        } else if let Some(w) = self.want {
            sink.bytes(w, b);
        }
    }

    /// A pending high surrogate with no low half: U+FFFD.
    fn flush_high<S: StrSink>(&mut self, sink: &mut S) {
        if self.high.take().is_some() {
            self.emit_char(char::REPLACEMENT_CHARACTER, sink);
        }
    }

    /// Read the next bytes of the document.
    pub fn feed<S: StrSink>(&mut self, chunk: &[u8], sink: &mut S) {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::Done if self.sequence && !b.is_ascii_whitespace() => {
                    // The next value of a sequence: read in state Value.
                    self.state = State::Value;
                    continue;
                }
                State::Failed | State::Done => {
                    if self.state == State::Done && !b.is_ascii_whitespace() {
                        self.fail();
                    }
                    if self.state == State::Failed {
                        return;
                    }
                }
                State::Str => {
                    // Copy the run of plain bytes up to a quote or escape.
                    let run = chunk[i..]
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                        .unwrap_or(chunk.len() - i);
                    if run > 0 {
                        self.flush_high(sink);
                        self.emit(&chunk[i..i + run], sink);
                        i += run;
                        continue;
                    }
                    match b {
                        b'"' => {
                            self.flush_high(sink);
                            if self.in_key {
                                self.in_key = false;
                                self.state = State::Colon;
                            } else {
                                if let Some(w) = self.want.take() {
                                    sink.end(w);
                                }
                                self.value_done();
                            }
                        }
                        b'\\' => self.state = State::Esc,
                        _ => self.fail(), // a raw control character
                    }
                }
                State::Esc => {
                    self.state = State::Str;
                    let c = match b {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            self.hex = 0;
                            self.state = State::Hex(0);
                            i += 1;
                            continue;
                        }
                        _ => {
                            self.fail();
                            return;
                        }
                    };
                    self.flush_high(sink);
                    self.emit_char(c, sink);
                }
                State::Hex(n) => {
                    let Some(d) = (b as char).to_digit(16) else {
                        self.fail();
                        return;
                    };
                    self.hex = self.hex << 4 | d;
                    if n < 3 {
                        self.state = State::Hex(n + 1);
                    } else {
                        self.state = State::Str;
                        let u = self.hex;
                        if (0xD800..0xDC00).contains(&u) {
                            self.flush_high(sink);
                            self.high = Some(u);
                        } else if (0xDC00..0xE000).contains(&u) {
                            let c = match self.high.take() {
                                Some(h) => {
                                    char::from_u32(0x10000 + ((h - 0xD800) << 10) + (u - 0xDC00))
                                }
                                None => None,
                            };
                            self.emit_char(c.unwrap_or(char::REPLACEMENT_CHARACTER), sink);
                        } else {
                            self.flush_high(sink);
                            let c = char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER);
                            self.emit_char(c, sink);
                        }
                    }
                }
                State::Literal => {
                    if matches!(b, b',' | b']' | b'}') || b.is_ascii_whitespace() {
                        if !self.literal_ok() {
                            self.fail();
                            return;
                        }
                        self.value_done();
                        continue; // the delimiter is read in the new state
                    }
                    if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')) {
                        self.fail();
                        return;
                    }
                    self.literal_byte(b);
                }
                State::Value => match b {
                    _ if b.is_ascii_whitespace() => {}
                    b'"' => {
                        self.want = self.wanted();
                        self.in_key = false;
                        self.state = State::Str;
                    }
                    b'{' | b'[' => {
                        if self.path.len() >= MAX_DEPTH {
                            self.fail();
                            return;
                        }
                        if b == b'{' {
                            self.path.push(Seg::Key(Vec::new()));
                            self.state = State::Key;
                        } else {
                            // `]` right after `[` (an empty array) is
                            // read in state Value, below.
                            self.path.push(Seg::Index(0));
                            self.state = State::Value;
                        }
                    }
                    b']' if matches!(self.path.last(), Some(Seg::Index(0))) => {
                        // An empty array.
                        self.path.pop();
                        self.value_done();
                    }
                    // `NaN`, `Infinity`: Python's json reads them.
                    b'-' | b'0'..=b'9' | b't' | b'f' | b'n' | b'N' | b'I' => {
                        self.state = State::Literal;
                        self.lit_len = 0;
                        self.lit_num = true;
                        self.literal_byte(b);
                    }
                    _ => {
                        self.fail();
                        return;
                    }
                },
                State::Key => match b {
                    _ if b.is_ascii_whitespace() => {}
                    b'"' => {
                        if let Some(Seg::Key(k)) = self.path.last_mut() {
                            k.clear();
                        }
                        self.in_key = true;
                        self.state = State::Str;
                    }
                    b'}' => {
                        self.path.pop();
                        self.value_done();
                    }
                    _ => {
                        self.fail();
                        return;
                    }
                },
                State::Colon => match b {
                    _ if b.is_ascii_whitespace() => {}
                    b':' => self.state = State::Value,
                    _ => {
                        self.fail();
                        return;
                    }
                },
                State::After => match (b, self.path.last_mut()) {
                    (_, _) if b.is_ascii_whitespace() => {}
                    (b',', Some(Seg::Key(_))) => self.state = State::Key,
                    (b',', Some(Seg::Index(n))) => {
                        *n += 1;
                        self.state = State::Value;
                    }
                    (b'}', Some(Seg::Key(_))) | (b']', Some(Seg::Index(_))) => {
                        self.path.pop();
                        self.value_done();
                    }
                    _ => {
                        self.fail();
                        return;
                    }
                },
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects the wanted strings, per pointer.
    #[derive(Default)]
    struct Collect(Vec<(Option<usize>, String)>, Vec<u8>);

    impl StrSink for Collect {
        fn bytes(&mut self, _: Option<usize>, b: &[u8]) {
            self.1.extend_from_slice(b);
        }
        fn end(&mut self, which: Option<usize>) {
            let s = String::from_utf8_lossy(&std::mem::take(&mut self.1)).into_owned();
            self.0.push((which, s));
        }
    }

    fn walk(doc: &[u8], ptrs: Option<&[&str]>, exact: bool, step: usize) -> (Collect, bool, bool) {
        let ptrs: Option<Vec<String>> = ptrs.map(|p| p.iter().map(|s| s.to_string()).collect());
        let mut w = JsonStrings::new(ptrs.as_deref(), exact);
        let mut c = Collect::default();
        for part in doc.chunks(step.max(1)) {
            w.feed(part, &mut c);
        }
        (c, w.complete(), w.failed())
    }

    #[test]
    fn every_string_value_in_document_order_whatever_the_chunking() {
        let doc =
            br#" {"a": "x\"y\\z\n", "k": [1, -2.5e3, true, null, "\u00e9\ud83d\ude00", {}, []],
                     "o": {"deep": ["s"]}, "e": "", "t\u00e9": "v"} "#;
        for step in [1, 2, 3, 7, 1000] {
            let (c, complete, failed) = walk(doc, None, false, step);
            assert!(complete && !failed, "step {step}");
            let got: Vec<&str> = c.0.iter().map(|(_, s)| s.as_str()).collect();
            assert_eq!(got, ["x\"y\\z\n", "é😀", "s", "", "v"], "step {step}");
        }
    }

    #[test]
    fn pointers_name_strings_or_their_ancestors() {
        let doc = br#"{"job": {"log": "L1\nL2", "id": "7"}, "a/b": ["p", "q"], "m~n": "r"}"#;
        let (c, ..) = walk(doc, Some(&["/job/log"]), true, 5);
        assert_eq!(c.0, [(Some(0), "L1\nL2".to_string())]);
        // Not exact: every string under /job.
        let (c, ..) = walk(doc, Some(&["/job"]), false, 5);
        assert_eq!(c.0.len(), 2);
        // Exact: /job is an object, not a string.
        let (c, ..) = walk(doc, Some(&["/job"]), true, 5);
        assert!(c.0.is_empty());
        let (c, ..) = walk(doc, Some(&["/a~1b/1", "/m~0n"]), true, 3);
        assert_eq!(
            c.0,
            [(Some(0), "q".to_string()), (Some(1), "r".to_string())]
        );
        // A leading zero is not an index.
        let (c, ..) = walk(doc, Some(&["/a~1b/01"]), true, 3);
        assert!(c.0.is_empty());
    }

    #[test]
    fn a_prefix_gives_what_it_holds_and_junk_stops() {
        let doc = br#"{"message": "buy now", "pad": "xxxxxxxxxxxxxxxxxxxxxxxx"#;
        let (c, complete, failed) = walk(doc, Some(&["/message"]), true, 4);
        assert!(!complete && !failed);
        assert_eq!(c.0, [(Some(0), "buy now".to_string())]);
        for junk in [
            &b"{\"a\" 1}"[..],
            b"[1,,2]",
            b"\"ab\x01\"",
            b"{\"a\":\"\\q\"}",
            b"{} x",
        ] {
            let (_, _, failed) = walk(junk, None, false, 2);
            assert!(failed, "{:?}", String::from_utf8_lossy(junk));
        }
        for junk in [&b"{\"a\": nope}"[..], b"[tru]", b"[-]", b"[Infinit]"] {
            let (_, _, failed) = walk(junk, None, false, 3);
            assert!(failed, "{:?}", String::from_utf8_lossy(junk));
        }
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(walk(deep.as_bytes(), None, false, 64).2);
    }

    #[test]
    fn keys_match_pointers_as_go_matches_struct_fields() {
        let doc = r#"{"TEXT": "a", "Text": "b", "texts": "no", "meſſage": "c", "\u212Aey": "d"}"#;
        let (c, ..) = walk(
            doc.as_bytes(),
            Some(&["/text", "/message", "/key"]),
            true,
            3,
        );
        let got: Vec<(Option<usize>, &str)> = c.0.iter().map(|(w, s)| (*w, s.as_str())).collect();
        assert_eq!(
            got,
            [
                (Some(0), "a"),
                (Some(0), "b"),
                (Some(1), "c"),
                (Some(2), "d")
            ]
        );
    }

    #[test]
    fn python_literals_and_a_sequence_of_values() {
        let doc = br#"[NaN, -Infinity, Infinity, 1e5, 12345678901234, "s"]"#;
        let (c, complete, failed) = walk(doc, None, false, 2);
        assert!(complete && !failed);
        assert_eq!(c.0, [(None, "s".to_string())]);
        // Values after the first: read in sequence mode, junk stops there.
        let ptrs = vec!["/t".to_string()];
        let mut w = JsonStrings::new(Some(&ptrs), false).sequence();
        let mut c = Collect::default();
        w.feed(br#"{"t":"a"} {"t":"b","t":"c"} x {"t":"d"}"#, &mut c);
        assert_eq!(w.values(), 2);
        assert!(w.failed());
        let got: Vec<&str> = c.0.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(got, ["a", "b", "c"], "every value of a key given twice");
    }
}
