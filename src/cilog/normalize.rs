//! Streaming normalisation of what every CI system adds to a log.
//!
//! Line numbering follows the data's convention (universal newlines): `\n`,
//! `\r\n` and a lone `\r` each end a line, so a log numbered by
//! `re.split(r"\r\n|\r|\n")` and the numbers reported here agree.
//!
//! A *physical* line (up to `\n`) may hold several `\r`-separated segments
//! (progress bars, Travis/GitLab fold markers followed by `\r\x1b[0K`). What a
//! terminal would show is the last segment with visible text; that segment
//! is the displayed line and carries its own (original) line number. The
//! other segments of the physical line are hidden and produce nothing.
//!
//! Per displayed line, [`normalize_segment`] removes ANSI escape sequences
//! (CSI and OSC), control characters, timestamp prefixes (GitHub Actions,
//! GitLab, Jenkins), and fold/group markers (Travis `travis_fold:`/
//! `travis_time:`, GitHub `##[group]`/`::group::`, GitLab
//! `section_start:`/`section_end:`, Jenkins `[Pipeline]`).

/// Bytes of one segment kept; the rest of a longer line is counted, not kept.
pub const MAX_LINE: usize = 4096;

/// Splits a byte stream into displayed lines, whatever the chunking.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    /// The current `\r`-segment (capped at [`MAX_LINE`]).
    cur: Vec<u8>,
    /// The last visible segment of the current physical line.
    shown: Vec<u8>,
    /// Its line number (0: none yet).
    shown_no: u64,
    /// Line number of the current segment.
    line_no: u64,
    /// The previous byte was a `\r` (a following `\n` then ends no new line).
    after_cr: bool,
    /// Normalisation output buffer, reused.
    norm: Vec<u8>,
    /// The last shown line was a shell's shebang (CircleCI's step start):
    /// the next one is the step's command.
    after_shebang: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl LineSplitter {
    pub fn new() -> Self {
        LineSplitter {
            cur: Vec::with_capacity(256),
            shown: Vec::with_capacity(256),
            shown_no: 0,
            line_no: 1,
            after_cr: false,
            norm: Vec::with_capacity(256),
            after_shebang: false,
        }
    }

    /// Number of lines started so far (the line being read included).
    pub fn lines(&self) -> u64 {
        self.line_no
    }

    /// Bytes held by the splitter's buffers (bounded).
    pub fn retained(&self) -> usize {
        self.cur.capacity() + self.shown.capacity() + self.norm.capacity()
    }

    /// Feed bytes; `emit(line_no, normalised)` is called for each displayed
    /// line whose normalised text is not empty.
    pub fn feed<F: FnMut(u64, &[u8])>(&mut self, mut data: &[u8], emit: &mut F) {
        while !data.is_empty() {
            if self.after_cr && data[0] == b'\n' {
                // `\r\n`: the line already ended at the `\r`.
                self.after_cr = false;
                data = &data[1..];
                self.end_physical(emit);
                continue;
            }
            match memchr::memchr2(b'\n', b'\r', data) {
                None => {
                    self.push(data);
                    self.after_cr = false;
                    return;
                }
                Some(i)
                    if self.cur.is_empty()
                        && self.shown_no == 0
                        && (data[i] == b'\n' || data.get(i + 1) == Some(&b'\n')) =>
                {
                    // A physical line of one segment ending in `\n` or
                    // `\r\n`, whole in `data` (the common case): nothing of
                    // it is buffered and nothing before it shows, so it is
                    // what the terminal shows if it shows anything.
                    // Normalised from `data` directly, as the general path
                    // below would after copying it (a `\r\n` ends one line).
                    let seg = &data[..i.min(MAX_LINE)];
                    if has_visible(seg) {
                        normalize_segment(seg, &mut self.norm);
                        self.show(self.line_no, emit);
                    }
                    self.after_cr = false;
                    self.line_no += 1;
                    data = &data[i + 1 + usize::from(data[i] == b'\r')..];
                }
                Some(i) => {
                    self.push(&data[..i]);
                    if data[i] == b'\n' {
                        self.after_cr = false;
                        self.end_segment();
                        self.line_no += 1;
                        self.end_physical(emit);
                    } else {
                        self.after_cr = true;
                        self.end_segment();
                        self.line_no += 1;
                    }
                    data = &data[i + 1..];
                }
            }
        }
    }

    /// End of input: flush the last line.
    pub fn finish<F: FnMut(u64, &[u8])>(&mut self, emit: &mut F) {
        if !self.cur.is_empty() {
            self.end_segment();
            self.line_no += 1;
        }
        self.end_physical(emit);
    }

    /// Total number of lines once [`finish`](Self::finish) has run.
    pub fn total_lines(&self) -> u64 {
        self.line_no.saturating_sub(1)
    }

    #[inline]
    fn push(&mut self, b: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.cur.len());
        if room > 0 {
            self.cur.extend_from_slice(&b[..b.len().min(room)]);
        }
    }

    /// A segment ended (`\r` or `\n`): keep it if it shows something.
    fn end_segment(&mut self) {
        if has_visible(&self.cur) {
            std::mem::swap(&mut self.cur, &mut self.shown);
            self.shown_no = self.line_no;
        }
        self.cur.clear();
    }

    /// A physical line ended: emit what the terminal shows.
    fn end_physical<F: FnMut(u64, &[u8])>(&mut self, emit: &mut F) {
        if self.shown_no != 0 {
            normalize_segment(&self.shown, &mut self.norm);
            self.show(self.shown_no, emit);
        }
        self.shown.clear();
        self.shown_no = 0;
    }

    /// Emit the normalised line in `norm` (nothing if it is empty). CircleCI
    /// starts each step's output with its shell and the shell's options as
    /// a shebang (`#!/bin/bash -eo pipefail`) and then echoes the step's
    /// command bare: that shebang is a step marker (dropped, as Travis's
    /// fold markers are) and the line after it reads as Travis's `$ cmd`,
    /// as the models learned a command echo. A shebang without options
    /// (`#!/bin/bash`) is usually a script printed by the build, and stays.
    fn show<F: FnMut(u64, &[u8])>(&mut self, no: u64, emit: &mut F) {
        if self.norm.is_empty() {
            return;
        }
        if is_step_shebang(&self.norm) {
            self.after_shebang = true;
            return;
        }
        if std::mem::take(&mut self.after_shebang)
            && !crate::cilog::features::is_command(&self.norm)
        {
            self.norm.splice(..0, *b"$ ");
        }
        emit(no, &self.norm);
    }
}

/// CircleCI's step start: `#!/path/to/shell -options`.
fn is_step_shebang(line: &[u8]) -> bool {
    line.starts_with(b"#!/")
        && memchr::memchr(b' ', line).is_some_and(|i| line.get(i + 1) == Some(&b'-'))
}

/// Whether a segment has any byte outside escape sequences and whitespace.
fn has_visible(seg: &[u8]) -> bool {
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b == 0x1b {
            i = skip_escape(seg, i);
            continue;
        }
        if !b.is_ascii_whitespace() && b >= 0x20 && b != 0x7f {
            return true;
        }
        i += 1;
    }
    false
}

/// Index after the escape sequence starting at `seg[i] == ESC`.
fn skip_escape(seg: &[u8], i: usize) -> usize {
    let n = seg.len();
    let Some(&kind) = seg.get(i + 1) else {
        return n;
    };
    match kind {
        b'[' => {
            // CSI: parameters and intermediates 0x20..=0x3f, final 0x40..=0x7e.
            let mut j = i + 2;
            while j < n {
                let c = seg[j];
                j += 1;
                if (0x40..=0x7e).contains(&c) {
                    return j;
                }
                if !(0x20..=0x3f).contains(&c) {
                    // Malformed: drop the ESC [ and resume at this byte.
                    return j - 1;
                }
            }
            n
        }
        b']' | b'P' | b'_' | b'^' | b'X' => {
            // OSC / DCS / APC / PM / SOS: until BEL or ESC \.
            let mut j = i + 2;
            while j < n {
                match seg[j] {
                    0x07 => return j + 1,
                    0x1b if seg.get(j + 1) == Some(&b'\\') => return j + 2,
                    _ => j += 1,
                }
            }
            n
        }
        _ => (i + 2).min(n),
    }
}

/// Index of the first control byte (`< 0x20` or DEL) at or after `i`, or
/// the length: sixteen bytes at a time, then eight, then byte by byte for
/// the last few.
#[inline]
fn plain_end(seg: &[u8], mut i: usize) -> usize {
    const L: u64 = 0x0101_0101_0101_0101;
    // The high bit of a byte is set for a byte below 0x20, and for a byte
    // equal to 0x7f (a zero byte of x ^ 0x7f..). Both tests can err only
    // above a true hit (a borrow carries up from it), so the lowest bit set
    // marks the first control byte exactly.
    let control = |x: u64| {
        let below = x.wrapping_sub(L * 0x20) & !x & (L * 0x80);
        let y = x ^ (L * 0x7f);
        let del = y.wrapping_sub(L) & !y & (L * 0x80);
        below | del
    };
    let first = |m: u64| m.trailing_zeros() as usize / 8;
    while let Some(w) = seg.get(i..).and_then(<[u8]>::first_chunk::<16>) {
        // Little endian: bytes 0..8 are the low half, 8..16 the high.
        let v = u128::from_le_bytes(*w);
        let x = control(v as u64);
        let z = control((v >> 64) as u64);
        if x | z != 0 {
            return if x != 0 {
                i + first(x)
            } else {
                i + 8 + first(z)
            };
        }
        i += 16;
    }
    if let Some(w) = seg.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let x = control(u64::from_le_bytes(*w));
        if x != 0 {
            return i + first(x);
        }
        i += 8;
    }
    while i < seg.len() && (seg[i] >= 0x20 && seg[i] != 0x7f) {
        i += 1;
    }
    i
}

/// Normalise one displayed segment into `out` (cleared first). An empty
/// output means a blank or marker line.
pub fn normalize_segment(seg: &[u8], out: &mut Vec<u8>) {
    out.clear();
    // 1. Escape sequences and control characters; tabs become spaces.
    let mut i = 0;
    while i < seg.len() {
        // Copy the run of plain bytes at once.
        let start = i;
        i = plain_end(seg, i);
        out.extend_from_slice(&seg[start..i]);
        if i >= seg.len() {
            break;
        }
        let b = seg[i];
        if b == 0x1b {
            i = skip_escape(seg, i);
        } else {
            if b == b'\t' {
                out.push(b' ');
            }
            i += 1;
        }
    }
    // 2. Trailing whitespace.
    while out.last() == Some(&b' ') {
        out.pop();
    }
    // 3. Timestamp prefixes (the CI's, then the tool's own, as in
    // `2024-01-02T03:04:05Z 2019-07-08 22:26:27.059 xcodebuild ...`), then
    // markers.
    for _ in 0..2 {
        let cut = timestamp_prefix(out);
        if cut == 0 {
            break;
        }
        out.drain(..cut);
    }
    strip_markers(out);
}

/// Length of a CI timestamp prefix at the start of `s` (0 if none).
fn timestamp_prefix(s: &[u8]) -> usize {
    // Every form below starts with `[` or a digit: most lines are done here.
    if !matches!(s.first(), Some(b'[' | b'0'..=b'9')) {
        return 0;
    }
    let digits = |from: usize, n: usize| -> bool {
        s.len() >= from + n && s[from..from + n].iter().all(u8::is_ascii_digit)
    };
    // Jenkins timestamper: "[2024-01-02T03:04:05.123Z] ".
    if s.first() == Some(&b'[') {
        if let Some(n) = iso8601(&s[1..]) {
            if s.get(1 + n) == Some(&b']') {
                let mut k = n + 2;
                if s.get(k) == Some(&b' ') {
                    k += 1;
                }
                return k;
            }
        }
        return 0;
    }
    // GitHub Actions / GitLab: "2024-01-02T03:04:05.1234567Z ", GitLab adds
    // a stream tag "00O " / "01E+ ".
    if let Some(n) = iso8601(s) {
        if s.get(n) == Some(&b' ') {
            let mut k = n + 1;
            let t = &s[k..];
            if t.len() >= 3
                && t[0].is_ascii_digit()
                && t[1].is_ascii_digit()
                && (t[2] == b'O' || t[2] == b'E')
            {
                let mut m = 3;
                if t.get(m) == Some(&b'+') {
                    m += 1;
                }
                if t.get(m) == Some(&b' ') || t.len() == m {
                    k += (m + 1).min(t.len());
                }
            }
            return k.min(s.len());
        }
        if n == s.len() {
            return n;
        }
        return 0;
    }
    // Jenkins short form: "12:34:56 " (optionally with .mmm).
    if digits(0, 2)
        && s.get(2) == Some(&b':')
        && digits(3, 2)
        && s.get(5) == Some(&b':')
        && digits(6, 2)
    {
        let mut k = 8;
        if s.get(k) == Some(&b'.') {
            k += 1;
            while s.get(k).is_some_and(u8::is_ascii_digit) {
                k += 1;
            }
        }
        if s.get(k) == Some(&b' ') {
            return k + 1;
        }
    }
    0
}

/// Length of an ISO 8601 UTC timestamp `YYYY-MM-DDTHH:MM:SS(.f+)?(Z|±HH:MM)?`.
fn iso8601(s: &[u8]) -> Option<usize> {
    let d = |i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    let is = |i: usize, c: u8| s.get(i) == Some(&c);
    let ok = (0..4).all(d)
        && is(4, b'-')
        && d(5)
        && d(6)
        && is(7, b'-')
        && d(8)
        && d(9)
        && (is(10, b'T') || is(10, b' '))
        && d(11)
        && d(12)
        && is(13, b':')
        && d(14)
        && d(15)
        && is(16, b':')
        && d(17)
        && d(18);
    if !ok {
        return None;
    }
    let mut k = 19;
    if is(k, b'.') || is(k, b',') {
        k += 1;
        while d(k) {
            k += 1;
        }
    }
    if is(k, b'Z') {
        k += 1;
    } else if (is(k, b'+') || is(k, b'-')) && d(k + 1) && d(k + 2) {
        k += 3;
        if is(k, b':') {
            k += 1;
        }
        if d(k) && d(k + 1) {
            k += 2;
        }
    }
    Some(k)
}

/// Remove fold/group markers; a pure marker line becomes empty.
fn strip_markers(out: &mut Vec<u8>) {
    let s: &[u8] = out;
    // Every marker below starts with one of these: most lines are done here.
    if !matches!(s.first(), Some(b't' | b's' | b'#' | b':' | b'[')) {
        return;
    }
    // Travis: the whole segment is the marker.
    if s.starts_with(b"travis_fold:") || s.starts_with(b"travis_time:") {
        out.clear();
        return;
    }
    // GitLab: "section_start:1700000000:name[collapsed=true]" / "section_end:..".
    if s.starts_with(b"section_start:") || s.starts_with(b"section_end:") {
        out.clear();
        return;
    }
    // GitHub Actions: "##[group]Title", "##[endgroup]", "##[error]msg", ...;
    // Azure Pipelines (the same syntax): "##[section]Starting: Task",
    // "##[command]git fetch", "##[error]Bash exited with code '1'.".
    if s.starts_with(b"##[") {
        if let Some(end) = memchr::memchr(b']', s) {
            let cmd = &s[3..end];
            if cmd == b"endgroup" || cmd == b"section" {
                out.clear();
            } else if cmd == b"command" {
                // The CI's echo of the command it runs: read as Travis's
                // `$ cmd`, as the models learned it.
                out.splice(..end + 1, *b"$ ");
            } else {
                out.drain(..end + 1);
            }
            return;
        }
    }
    // GitHub workflow commands: "::group::Title", "::endgroup::", "::error file=..::msg".
    if s.starts_with(b"::") {
        if s.starts_with(b"::endgroup::") {
            out.clear();
            return;
        }
        if let Some(p) = memchr::memmem::find(&s[2..], b"::") {
            out.drain(..p + 4);
            return;
        }
    }
    // Jenkins pipeline step markers.
    if s.starts_with(b"[Pipeline]") {
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<(u64, String)> {
        lines_in_chunks(input, input.len().max(1))
    }

    /// The lines of `input` fed `step` bytes at a time.
    fn lines_in_chunks(input: &[u8], step: usize) -> Vec<(u64, String)> {
        let mut sp = LineSplitter::new();
        let mut v = Vec::new();
        let mut emit = |n: u64, s: &[u8]| v.push((n, String::from_utf8_lossy(s).into_owned()));
        for c in input.chunks(step) {
            sp.feed(c, &mut emit);
        }
        sp.finish(&mut emit);
        v
    }

    fn norm(s: &str) -> String {
        let mut o = Vec::new();
        normalize_segment(s.as_bytes(), &mut o);
        String::from_utf8(o).unwrap()
    }

    #[test]
    fn circleci_step_start_reads_as_a_command_echo() {
        let log = b"#!/bin/bash -eo pipefail\nnpm test\n> jest\nFAIL x.test.js\n\
                    #!/bin/sh -e\n\n$ make\nok\n#!/bin/bash\nset -e\n";
        let got = lines(log);
        let want = [
            (2, "$ npm test"),
            (3, "> jest"),
            (4, "FAIL x.test.js"),
            // A command that already reads as one is kept as it is.
            (7, "$ make"),
            (8, "ok"),
            // A printed script's shebang (no shell options) is text.
            (9, "#!/bin/bash"),
            (10, "set -e"),
        ];
        let want: Vec<(u64, String)> = want.iter().map(|(n, s)| (*n, s.to_string())).collect();
        assert_eq!(got, want);
        // The same whatever the chunking (the shebang state spans feeds).
        assert_eq!(lines_in_chunks(log, 1), want);
    }

    #[test]
    fn plain_end_matches_the_byte_loop() {
        let naive = |s: &[u8], mut i: usize| {
            while i < s.len() && s[i] >= 0x20 && s[i] != 0x7f {
                i += 1;
            }
            i
        };
        // Every byte value at every place of a 20-byte run, from each start.
        for b in 0..=255u8 {
            for at in 0..20 {
                let mut s = vec![b'a'; 20];
                s[at] = b;
                for (k, c) in [0x80u8, 0xff, 0x20, 0x7e].into_iter().enumerate() {
                    s[(at + 7 + k) % 20] = c;
                }
                for from in 0..=s.len() {
                    assert_eq!(
                        plain_end(&s, from),
                        naive(&s, from),
                        "{b:#x} at {at} from {from}"
                    );
                }
            }
        }
    }

    #[test]
    fn universal_newlines_number_lines() {
        let v = lines(b"a\r\nb\rc\nd\r\r\ne");
        // a=1, b=2 (hidden by c? no: b and c are separate lines), c=3, d=4, ""=5, e=6
        assert_eq!(
            v,
            vec![
                (1, "a".into()),
                (3, "c".into()),
                (4, "d".into()),
                (6, "e".into())
            ]
        );
    }

    #[test]
    fn progress_keeps_last_visible_segment() {
        let v = lines(b"x\n 10%\r 50%\r100%\r\x1b[0K\ny\n");
        assert_eq!(
            v,
            vec![(1, "x".into()), (4, "100%".into()), (6, "y".into())]
        );
    }

    #[test]
    fn chunking_anywhere_gives_same_lines() {
        let input: &[u8] =
            "\x1b[31;1mé error\x1b[0m\r\ntravis_fold:start:x\r\x1b[0K$ make\r\nok ✓\n".as_bytes();
        let whole = lines(input);
        for step in 1..7 {
            assert_eq!(lines_in_chunks(input, step), whole, "step {step}");
        }
        assert_eq!(
            whole,
            vec![
                (1, "é error".into()),
                (3, "$ make".into()),
                (4, "ok ✓".into())
            ]
        );
    }

    #[test]
    fn whole_lines_and_split_lines_agree() {
        // Lines whole in a chunk take the direct path; fed a byte at a
        // time, only blank ones do.
        let mut input = Vec::new();
        for k in 0..200u32 {
            input.extend_from_slice(
                [
                    &b"plain line\n"[..],
                    b"\x1b[31merror\x1b[0m: x\r\n",
                    b"  \t \n",
                    b"10%\r50%\r100%\n",
                    b"\r\n",
                    b"\rlone\rcr\n",
                    b"\x1b[0K\rshown\n",
                ][k as usize % 7],
            );
            if k % 13 == 0 {
                input.extend(std::iter::repeat_n(b'y', MAX_LINE + 5));
                input.push(b'\n');
            }
        }
        let whole = lines(&input);
        assert_eq!(lines_in_chunks(&input, 1), whole);
        assert!(whole.len() > 150);
    }

    #[test]
    fn ansi_csi_and_osc_removed() {
        assert_eq!(norm("\x1b[1;31mError\x1b[0m: boom"), "Error: boom");
        assert_eq!(norm("\x1b]0;title\x07text"), "text");
        assert_eq!(norm("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"), "link");
        assert_eq!(norm("a\tb  \x1b[K"), "a b");
        assert_eq!(norm("\x1b["), "");
    }

    #[test]
    fn timestamps_removed() {
        assert_eq!(
            norm("2024-01-02T03:04:05.1234567Z npm ERR! code E404"),
            "npm ERR! code E404"
        );
        assert_eq!(
            norm("[2024-01-02T03:04:05.123Z] make: *** [all] Error 2"),
            "make: *** [all] Error 2"
        );
        assert_eq!(norm("12:34:56 BUILD FAILED"), "BUILD FAILED");
        assert_eq!(norm("12:34:56.789 BUILD FAILED"), "BUILD FAILED");
        assert_eq!(
            norm("2024-01-02T03:04:05.123456Z 00O+ $ cargo test"),
            "$ cargo test"
        );
        assert_eq!(norm("2024-01-02T03:04:05.123456Z 01E error: x"), "error: x");
        assert_eq!(norm("10 tests: 3 failed"), "10 tests: 3 failed");
        // The CI's stamp, then the tool's own.
        assert_eq!(
            norm("[2024-01-02T03:04:05.123Z] 2019-07-08 22:26:27.059 xcodebuild[3101] error"),
            "xcodebuild[3101] error"
        );
        assert_eq!(
            norm("2024-01-02T03:04:05.1234567Z 12:34:56 BUILD FAILED"),
            "BUILD FAILED"
        );
    }

    #[test]
    fn markers_removed() {
        assert_eq!(norm("travis_fold:start:install"), "");
        assert_eq!(norm("travis_time:end:0a:start=1,finish=2,duration=1"), "");
        assert_eq!(
            norm("2024-01-02T03:04:05.1Z ##[group]Run npm test"),
            "Run npm test"
        );
        assert_eq!(norm("2024-01-02T03:04:05.1Z ##[endgroup]"), "");
        assert_eq!(
            norm("##[error]Process completed with exit code 1."),
            "Process completed with exit code 1."
        );
        assert_eq!(norm("::group::Build"), "Build");
        assert_eq!(norm("::endgroup::"), "");
        assert_eq!(norm("section_end:1700000000:build_script"), "");
        assert_eq!(norm("[Pipeline] sh"), "");
        assert_eq!(
            norm("2024-01-02T03:04:05.1234567Z ##[section]Starting: Bash"),
            ""
        );
        assert_eq!(norm("##[command]npm test"), "$ npm test");
        assert_eq!(
            norm("\x1b_bk;t=1704164645000\x07npm ERR! 404"),
            "npm ERR! 404"
        );
    }

    #[test]
    fn gitlab_section_line() {
        let v = lines(b"section_start:1700000000:step_script\r\x1b[0K\x1b[0K\x1b[36;1mExecuting step\x1b[0;m\nsection_end:1700000001:step_script\r\x1b[0K\n");
        assert_eq!(v, vec![(2, "Executing step".into())]);
    }

    #[test]
    fn long_line_is_capped() {
        let mut big = vec![b'a'; 3 * MAX_LINE];
        big.push(b'\n');
        let v = lines(&big);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].1.len(), MAX_LINE);
    }
}
