//! Message → text view.
//!
//! For an RFC 822 message: the Subject (RFC 2047 words decoded) and every text
//! part, with base64 / quoted-printable undone, the charset decoded (utf-8,
//! us-ascii, latin-1 family and windows-1252; anything else byte-wise as
//! windows-1252, which keeps n-gram features stable) and HTML reduced to text.
//! Links found in HTML (`<a href>`) are kept beside the text with their
//! anchor text, for the link signals. Anything else is plain text, taken as
//! is. Headers other than Subject are dropped on purpose: later spam comes
//! through other relays, and header features do not carry across corpora.
//!
//! Allocation here is per message (decoded strings), never per token.

/// Most text a view keeps; the rest of a huge message is dropped.
pub const MAX_VIEW_BYTES: usize = 256 * 1024;
pub const MAX_DEPTH: usize = 8;
pub const MAX_PARTS: usize = 64;
const MAX_LINKS: usize = 256;

/// A link from HTML: where it goes and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub href: String,
    pub text: String,
}

/// What the classifier reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextView {
    /// Subject line(s) and decoded text, parts separated by newlines.
    pub text: String,
    /// `<a href>` links from HTML parts.
    pub links: Vec<Link>,
    /// Number of `<img>` tags in HTML parts.
    pub images: u32,
    /// Whether any part was HTML.
    pub html: bool,
    /// Families of the charsets the text declared ([`charset_family`] bits:
    /// text parts, RFC 2047 words of the Subject, an HTTP body's charset).
    pub charsets: u8,
    /// The message nests deeper than [`MAX_DEPTH`] or has more than
    /// [`MAX_PARTS`] parts: the parts past the limit were not read. The
    /// proxy's filters do not score such a view (a spam part hidden behind
    /// 70 empty ones must not pass as ham); training and `sift classify`
    /// read what was kept.
    pub cut: bool,
}

/// Charset families, as bits of [`TextView::charsets`]. The western
/// defaults (us-ascii, the latin-1 family, windows-1252) and no charset
/// have none.
pub const CHARSET_CJK: u8 = 1;
pub const CHARSET_CYRILLIC: u8 = 2;
/// Other single-byte non-western charsets (central European, Greek,
/// Turkish, Baltic, Arabic, Hebrew, Thai, Vietnamese).
pub const CHARSET_OTHER: u8 = 4;
pub const CHARSET_UTF8: u8 = 8;
/// A charset name this list does not know.
pub const CHARSET_UNKNOWN: u8 = 16;

/// The family bit of a declared charset name (0 for the western defaults).
pub fn charset_family(name: &str) -> u8 {
    let n = name.trim().trim_matches('"').to_ascii_lowercase();
    let n = n.as_str();
    match n {
        "" | "us-ascii" | "ascii" | "iso-8859-1" | "iso8859-1" | "latin1" | "latin-1"
        | "iso-8859-15" | "iso8859-15" | "windows-1252" | "cp1252" | "x-user-defined"
        | "default" | "us" | "ansi_x3.4-1968" => 0,
        "utf-8" | "utf8" | "utf-16" | "utf-7" => CHARSET_UTF8,
        "koi8-r" | "koi8-u" | "windows-1251" | "cp1251" | "iso-8859-5" | "ibm866" | "cp866"
        | "x-mac-cyrillic" => CHARSET_CYRILLIC,
        _ if n.starts_with("gb")
            || n.starts_with("big5")
            || n.contains("2022-jp")
            || n.contains("2022-kr")
            || n.contains("2022-cn")
            || n.contains("shift")
            || n.contains("sjis")
            || n.starts_with("euc-")
            || n.starts_with("ks_c")
            || n.starts_with("ksc")
            || n.starts_with("x-euc")
            || n.starts_with("x-gbk")
            || n.starts_with("hz-")
            || n.starts_with("csgb")
            || matches!(
                n,
                "cp936"
                    | "cp949"
                    | "cp950"
                    | "windows-936"
                    | "windows-949"
                    | "windows-950"
                    | "x-sjis"
            ) =>
        {
            CHARSET_CJK
        }
        _ if n.starts_with("iso-8859-")
            || n.starts_with("iso8859-")
            || n.starts_with("windows-125")
            || n.starts_with("cp125")
            || n.starts_with("tis-620")
            || n.starts_with("viscii") =>
        {
            CHARSET_OTHER
        }
        _ => CHARSET_UNKNOWN,
    }
}

/// The families of the charsets of RFC 2047 words (`=?charset?`) in a
/// header value.
fn word_charsets(v: &str) -> u8 {
    let mut bits = 0;
    let mut rest = v;
    while let Some(i) = rest.find("=?") {
        rest = &rest[i + 2..];
        if let Some(q) = rest.find('?') {
            bits |= charset_family(rest[..q].split('*').next().unwrap_or(""));
        }
    }
    bits
}

impl TextView {
    /// A view of plain text.
    pub fn plain(text: &str) -> TextView {
        TextView {
            text: text.to_owned(),
            ..TextView::default()
        }
    }
}

/// The view of raw input: an RFC 822 message if it looks like one, else text.
pub fn view(raw: &[u8]) -> TextView {
    if looks_like_mail(raw) {
        mail_view(raw)
    } else {
        let mut v = TextView {
            text: decode_charset(raw, None),
            ..TextView::default()
        };
        truncate_utf8(&mut v.text, MAX_VIEW_BYTES);
        v
    }
}

/// Whether `raw` starts with a header block (optionally after an mbox
/// `From ` line) containing at least one well-known mail header.
pub fn looks_like_mail(raw: &[u8]) -> bool {
    let mut rest = raw;
    if rest.starts_with(b"From ") {
        rest = match memchr(b'\n', rest) {
            Some(i) => &rest[i + 1..],
            None => return false,
        };
    }
    let mut known = 0usize;
    let mut lines = 0usize;
    for line in rest.split(|&b| b == b'\n').take(200) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return known > 0 && lines >= 2 || known >= 2;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if lines == 0 {
                return false;
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| b.is_ascii_graphic()) {
            return false;
        }
        lines += 1;
        const KNOWN: [&[u8]; 11] = [
            b"from",
            b"to",
            b"subject",
            b"received",
            b"return-path",
            b"date",
            b"message-id",
            b"mime-version",
            b"content-type",
            b"delivered-to",
            b"reply-to",
        ];
        if KNOWN.iter().any(|k| name.eq_ignore_ascii_case(k)) {
            known += 1;
        }
    }
    // Headers only, no body.
    known >= 2
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Headers (names lower-cased, values unfolded) and the body.
struct Headers {
    fields: Vec<(String, String)>,
}

impl Headers {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn split_message(raw: &[u8]) -> (Headers, &[u8]) {
    let mut rest = raw;
    if rest.starts_with(b"From ") {
        rest = match memchr(b'\n', rest) {
            Some(i) => &rest[i + 1..],
            None => &[],
        };
    }
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    while pos < rest.len() {
        let end = memchr(b'\n', &rest[pos..]).map_or(rest.len(), |i| pos + i);
        let line = &rest[pos..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let next = (end + 1).min(rest.len());
        if line.is_empty() {
            return (Headers { fields }, &rest[next..]);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, v)) = fields.last_mut() {
                v.push(' ');
                v.push_str(String::from_utf8_lossy(line).trim());
            }
        } else if let Some(colon) = memchr(b':', line) {
            let name = String::from_utf8_lossy(&line[..colon])
                .trim()
                .to_ascii_lowercase();
            let value = String::from_utf8_lossy(&line[colon + 1..])
                .trim()
                .to_owned();
            if fields.len() < 500 {
                fields.push((name, value));
            }
        } else {
            // Not a header line: the header block ended without a blank line.
            return (Headers { fields }, &rest[pos..]);
        }
        pos = next;
    }
    (Headers { fields }, &[])
}

/// A parsed Content-Type: lower-case `type/subtype` and its parameters.
struct ContentType {
    mime: String,
    boundary: Option<String>,
    charset: Option<String>,
}

fn content_type(h: &Headers, default: &str) -> ContentType {
    let Some(v) = h.get("content-type") else {
        return ContentType {
            mime: default.to_owned(),
            boundary: None,
            charset: None,
        };
    };
    let mut it = v.split(';');
    let mime = it
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>();
    let mime = if mime.contains('/') {
        mime
    } else {
        default.to_owned()
    };
    let (mut boundary, mut charset) = (None, None);
    // Parameters: split on ';' outside quotes (boundaries may contain ';').
    let params = v.find(';').map_or("", |i| &v[i + 1..]);
    for (k, val) in parse_params(params) {
        match k.as_str() {
            "boundary" => boundary = Some(val),
            "charset" => charset = Some(val.to_ascii_lowercase()),
            _ => {}
        }
    }
    ContentType {
        mime,
        boundary,
        charset,
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b';' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b';' {
            i += 1;
        }
        let key = s[ks..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] == b';' {
            continue;
        }
        i += 1; // '='
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let val;
        if i < b.len() && b[i] == b'"' {
            i += 1;
            let vs = i;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            val = s[vs..i].to_owned();
            i = (i + 1).min(b.len());
        } else {
            let vs = i;
            while i < b.len() && b[i] != b';' && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            val = s[vs..i].to_owned();
        }
        out.push((key, val));
    }
    out
}

fn mail_view(raw: &[u8]) -> TextView {
    let mut v = TextView::default();
    let mut parts = 0usize;
    walk_message(raw, 0, &mut parts, &mut v);
    truncate_utf8(&mut v.text, MAX_VIEW_BYTES);
    v
}

fn walk_message(raw: &[u8], depth: usize, parts: &mut usize, out: &mut TextView) {
    let (h, body) = split_message(raw);
    if let Some(s) = h.get("subject") {
        out.charsets |= word_charsets(s);
        out.text.push_str(&decode_words(s));
        out.text.push('\n');
    }
    walk_entity(&h, body, depth, parts, out, "text/plain");
}

fn walk_entity(
    h: &Headers,
    body: &[u8],
    depth: usize,
    parts: &mut usize,
    out: &mut TextView,
    default: &str,
) {
    *parts += 1;
    if depth > MAX_DEPTH || *parts > MAX_PARTS {
        out.cut = true;
        return;
    }
    if out.text.len() >= MAX_VIEW_BYTES {
        return;
    }
    let mut ct = content_type(h, default);
    if h.get("content-type").is_none() && ct.mime == "text/plain" {
        // A multipart body whose Content-Type header was lost (seen in spam):
        // a "--boundary" line followed by a part header.
        if let Some(b) = sniff_boundary(body) {
            ct.mime = "multipart/mixed".into();
            ct.boundary = Some(b);
        }
    }
    if ct.mime.starts_with("multipart/") {
        let Some(boundary) = ct.boundary.as_deref().filter(|b| !b.is_empty()) else {
            add_text(body, h, &ct, out);
            return;
        };
        let mut sub = split_multipart(body, boundary);
        if sub.len() > MAX_PARTS {
            out.cut = true;
            sub.truncate(MAX_PARTS);
        }
        if sub.is_empty() {
            add_text(body, h, &ct, out);
            return;
        }
        let child_default = if ct.mime == "multipart/digest" {
            "message/rfc822"
        } else {
            "text/plain"
        };
        if ct.mime == "multipart/alternative" {
            // The last renderable alternative is the richest (RFC 2046).
            let pick = sub.iter().rev().find(|p| {
                let (ph, _) = split_message(p);
                let m = content_type(&ph, child_default).mime;
                m == "text/plain" || m == "text/html" || m.starts_with("multipart/")
            });
            if let Some(p) = pick {
                let (ph, pb) = split_message(p);
                walk_entity(&ph, pb, depth + 1, parts, out, child_default);
            }
            return;
        }
        for p in sub {
            let (ph, pb) = split_message(p);
            walk_entity(&ph, pb, depth + 1, parts, out, child_default);
        }
    } else if ct.mime == "message/rfc822" {
        let decoded = decode_transfer(body, h.get("content-transfer-encoding"));
        walk_message(&decoded, depth + 1, parts, out);
    } else if ct.mime.starts_with("text/") {
        add_text(body, h, &ct, out);
    }
    // Other types (images, applications): no text.
}

fn add_text(body: &[u8], h: &Headers, ct: &ContentType, out: &mut TextView) {
    let decoded = decode_transfer(body, h.get("content-transfer-encoding"));
    let text = decode_charset(&decoded, ct.charset.as_deref());
    out.charsets |= ct.charset.as_deref().map_or(0, charset_family);
    let is_html = ct.mime == "text/html" || (ct.mime == "text/plain" && sniff_html(&text));
    if is_html {
        out.html = true;
        html_to_text(&text, out);
    } else {
        out.text.push_str(&text);
    }
    out.text.push('\n');
}

/// The boundary of a `--boundary` line directly followed by a
/// `Content-Type:` line, within the first 64 KB.
fn sniff_boundary(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(64 * 1024)];
    let mut lines = head.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > 3 && line.starts_with(b"--") {
            if let Some(next) = lines.peek() {
                if next.len() >= 13 && next[..13].eq_ignore_ascii_case(b"content-type:") {
                    return Some(String::from_utf8_lossy(&line[2..]).trim_end().to_owned());
                }
            }
        }
    }
    None
}

/// Plain parts that are really HTML (common in spam).
fn sniff_html(text: &str) -> bool {
    let head = &text.as_bytes()[..text.len().min(2048)];
    let lower: Vec<u8> = head.iter().map(|b| b.to_ascii_lowercase()).collect();
    [b"<html".as_slice(), b"<body", b"<!doctype html"]
        .iter()
        .any(|t| lower.windows(t.len()).any(|w| w == *t))
}

/// The bodies between `--boundary` delimiter lines.
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delim: Vec<u8> = [b"--".as_slice(), boundary.as_bytes()].concat();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos < body.len() {
        let end = memchr(b'\n', &body[pos..]).map_or(body.len(), |i| pos + i);
        let line = &body[pos..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(&delim) {
            let tail = &line[delim.len()..];
            if let Some(s) = start {
                // The part ends before the CRLF preceding the delimiter.
                let mut e = pos;
                if e > s && body[e - 1] == b'\n' {
                    e -= 1;
                    if e > s && body[e - 1] == b'\r' {
                        e -= 1;
                    }
                }
                out.push(&body[s..e.max(s)]);
            }
            if tail.starts_with(b"--") {
                return out;
            }
            start = Some((end + 1).min(body.len()));
            // One more than the limit, so the caller sees that parts were cut.
            if out.len() > MAX_PARTS {
                return out;
            }
        }
        pos = end + 1;
    }
    if let Some(s) = start {
        if s < body.len() {
            out.push(&body[s..]);
        }
    }
    out
}

/// Undo a Content-Transfer-Encoding (base64, quoted-printable; others as is).
pub fn decode_transfer(body: &[u8], cte: Option<&str>) -> Vec<u8> {
    match cte.map(|s| s.trim().to_ascii_lowercase()) {
        Some(ref s) if s == "base64" => decode_base64(body),
        Some(ref s) if s == "quoted-printable" => decode_qp(body, false),
        _ => body.to_vec(),
    }
}

fn b64_value(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Lenient base64: skips anything outside the alphabet, stops at padding.
pub fn decode_base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut n: u32 = 0;
    for &b in input {
        if b == b'=' {
            // Padding ends a group (flush what it holds); a later group may
            // follow (concatenated base64).
            flush_b64(acc, n, &mut out);
            acc = 0;
            n = 0;
            continue;
        }
        let Some(v) = b64_value(b) else { continue };
        acc = (acc << 6) | u32::from(v);
        n += 1;
        if n == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
            n = 0;
        }
    }
    flush_b64(acc, n, &mut out);
    out
}

fn flush_b64(acc: u32, n: u32, out: &mut Vec<u8>) {
    match n {
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => {}
    }
}

/// The value of one hexadecimal digit (quoted-printable, URL escapes).
pub fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Quoted-printable (`underscore_space` for RFC 2047 Q words).
pub fn decode_qp(input: &[u8], underscore_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'=' {
            // Soft line break: '=' then optional spaces then (CR)LF.
            let mut j = i + 1;
            while j < input.len() && (input[j] == b' ' || input[j] == b'\t') {
                j += 1;
            }
            if j < input.len() && input[j] == b'\n' {
                i = j + 1;
                continue;
            }
            if j + 1 < input.len() && input[j] == b'\r' && input[j + 1] == b'\n' {
                i = j + 2;
                continue;
            }
            if i + 2 < input.len() {
                if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
            out.push(b'=');
            i += 1;
        } else if b == b'_' && underscore_space {
            out.push(b' ');
            i += 1;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// windows-1252 code points for 0x80..=0x9F (WHATWG maps latin-1 labels here too).
const CP1252_HIGH: [char; 32] = [
    '\u{20AC}', '\u{81}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{8D}', '\u{017D}', '\u{8F}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}', '\u{9D}', '\u{017E}', '\u{0178}',
];

fn decode_cp1252(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + bytes.len() / 8);
    for &b in bytes {
        let c = match b {
            0x80..=0x9F => CP1252_HIGH[usize::from(b - 0x80)],
            _ => char::from(b),
        };
        s.push(c);
    }
    s
}

/// The Unicode encodings that are not ASCII-compatible, in which a
/// classifier reading bytes would see no word at all (`B\0U\0Y\0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wide {
    Utf16Le,
    Utf16Be,
    Utf32Le,
    Utf32Be,
    Utf7,
    /// The EBCDIC Latin code pages (cp037, cp500, cp1140, ...): letters,
    /// digits and common punctuation, which they share.
    Ebcdic,
    /// Python's `unicode_escape` and `raw_unicode_escape` codecs (which
    /// Django applies to a form that declares them): `\u0041` is `A`.
    UnicodeEscape,
}

/// The byte-order mark at the start of `b`: the encoding and its length
/// (a UTF-8 BOM is `None` with length 3). A BOM decides over a declared
/// charset, as the WHATWG decode algorithm (and iconv-lite, Python's
/// `utf-16`) has it.
pub fn bom(b: &[u8]) -> Option<(Option<Wide>, usize)> {
    match b {
        [0xEF, 0xBB, 0xBF, ..] => Some((None, 3)),
        [0xFF, 0xFE, 0, 0, ..] => Some((Some(Wide::Utf32Le), 4)),
        [0, 0, 0xFE, 0xFF, ..] => Some((Some(Wide::Utf32Be), 4)),
        [0xFF, 0xFE, ..] => Some((Some(Wide::Utf16Le), 2)),
        [0xFE, 0xFF, ..] => Some((Some(Wide::Utf16Be), 2)),
        _ => None,
    }
}

/// A declared charset that is a wide encoding (`utf-16`, `UTF-16LE`,
/// `ucs-2`, `utf-32be`, `utf-7`, ...). `utf-16` and `utf-32` without a
/// BOM take their byte order from the zeros of the first character, LE
/// when unsure (what iconv-lite and Windows send).
pub fn wide_charset(cs: &str, b: &[u8]) -> Option<Wide> {
    let n: String = cs
        .trim()
        .trim_matches('"')
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let n = n.strip_prefix("x").unwrap_or(&n);
    let be16 = b.len() >= 2 && b[0] == 0 && b[1] != 0;
    let be32 = b.len() >= 4 && b[..3] == [0, 0, 0];
    Some(match n {
        "utf16le" | "ucs2le" | "unicodefffe" => Wide::Utf16Le,
        "utf16be" | "ucs2be" | "unicodefeff" => Wide::Utf16Be,
        "utf16" | "ucs2" | "unicode" | "csunicode" | "iso10646ucs2" if be16 => Wide::Utf16Be,
        "utf16" | "ucs2" | "unicode" | "csunicode" | "iso10646ucs2" => Wide::Utf16Le,
        "utf32le" | "ucs4le" => Wide::Utf32Le,
        "utf32be" | "ucs4be" => Wide::Utf32Be,
        "utf32" | "ucs4" | "iso10646ucs4" if be32 => Wide::Utf32Be,
        "utf32" | "ucs4" | "iso10646ucs4" => Wide::Utf32Le,
        "utf7" | "unicode11utf7" | "csunicode11utf7" => Wide::Utf7,
        "unicodeescape" | "rawunicodeescape" => Wide::UnicodeEscape,
        _ if n.starts_with("ebcdic")
            || matches!(
                n.trim_start_matches("cs")
                    .trim_start_matches("cp")
                    .trim_start_matches("ibm")
                    .trim_start_matches('0'),
                "37" | "273"
                    | "277"
                    | "278"
                    | "280"
                    | "284"
                    | "285"
                    | "297"
                    | "500"
                    | "871"
                    | "875"
                    | "1026"
                    | "1047"
                    | "1140"
                    | "1141"
                    | "1142"
                    | "1143"
                    | "1144"
                    | "1145"
                    | "1146"
                    | "1147"
                    | "1148"
                    | "1149"
                    | "424"
            ) && (n.starts_with("cp") || n.starts_with("ibm") || n.starts_with("csibm")) =>
        {
            Wide::Ebcdic
        }
        _ => return None,
    })
}

/// Decode a wide encoding (lone surrogates and bad units become U+FFFD).
pub fn decode_wide(b: &[u8], w: Wide) -> String {
    match w {
        Wide::Utf16Le | Wide::Utf16Be => {
            let units = b.chunks(2).map(|c| match (c, w) {
                ([a, b], Wide::Utf16Le) => u16::from_le_bytes([*a, *b]),
                ([a, b], _) => u16::from_be_bytes([*a, *b]),
                _ => 0xFFFD,
            });
            char::decode_utf16(units)
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect()
        }
        Wide::Utf32Le | Wide::Utf32Be => b
            .chunks(4)
            .map(|c| {
                let u = match (c, w) {
                    ([a, b, c, d], Wide::Utf32Le) => u32::from_le_bytes([*a, *b, *c, *d]),
                    ([a, b, c, d], _) => u32::from_be_bytes([*a, *b, *c, *d]),
                    _ => 0xFFFD,
                };
                char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        Wide::Utf7 => decode_utf7(b),
        Wide::Ebcdic => b.iter().map(|&c| ebcdic(c)).collect(),
        Wide::UnicodeEscape => decode_unicode_escape(b),
    }
}

/// A byte of the EBCDIC Latin code pages: the characters they all share
/// (letters, digits, space, line breaks, common punctuation); U+FFFD
/// for the rest.
fn ebcdic(c: u8) -> char {
    let letters = |base: u8, first: u8| char::from(first + (c - base));
    match c {
        0x81..=0x89 => letters(0x81, b'a'),
        0x91..=0x99 => letters(0x91, b'j'),
        0xA2..=0xA9 => letters(0xA2, b's'),
        0xC1..=0xC9 => letters(0xC1, b'A'),
        0xD1..=0xD9 => letters(0xD1, b'J'),
        0xE2..=0xE9 => letters(0xE2, b'S'),
        0xF0..=0xF9 => letters(0xF0, b'0'),
        0x40 => ' ',
        0x05 => '\t',
        0x0D => '\r',
        0x15 | 0x25 => '\n',
        0x4B => '.',
        0x4C => '<',
        0x4D => '(',
        0x4E => '+',
        0x50 => '&',
        0x5C => '*',
        0x5D => ')',
        0x5E => ';',
        0x60 => '-',
        0x61 => '/',
        0x6B => ',',
        0x6C => '%',
        0x6D => '_',
        0x6E => '>',
        0x6F => '?',
        0x7A => ':',
        0x7D => '\'',
        0x7E => '=',
        0x7F => '"',
        0x4F | 0x5A => '!',
        0x5B => '$',
        0x7B => '#',
        0x7C => '@',
        _ => char::REPLACEMENT_CHARACTER,
    }
}

/// Python's `unicode_escape`: bytes as latin-1 with backslash escapes
/// (`\n`, `\xhh`, `\ooo`, `\uXXXX`, `\UXXXXXXXX`); an escape it cannot
/// read is kept as is.
fn decode_unicode_escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    let hex_at = |from: usize, n: usize| -> Option<u32> {
        let digits = b.get(from..from + n)?;
        digits
            .iter()
            .try_fold(0u32, |acc, &d| Some(acc << 4 | u32::from(hex(d)?)))
    };
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(char::from(b[i]));
            i += 1;
            continue;
        }
        let e = b[i + 1];
        let (c, len) = match e {
            b'n' => (Some('\n'), 2),
            b't' => (Some('\t'), 2),
            b'r' => (Some('\r'), 2),
            b'\\' | b'\'' | b'"' => (Some(char::from(e)), 2),
            b'a' => (Some('\u{7}'), 2),
            b'b' => (Some('\u{8}'), 2),
            b'f' => (Some('\u{c}'), 2),
            b'v' => (Some('\u{b}'), 2),
            b'x' => (hex_at(i + 2, 2).and_then(char::from_u32), 4),
            b'u' => (
                hex_at(i + 2, 4).map(|u| char::from_u32(u).unwrap_or('\u{fffd}')),
                6,
            ),
            b'U' => (
                hex_at(i + 2, 8).map(|u| char::from_u32(u).unwrap_or('\u{fffd}')),
                10,
            ),
            b'0'..=b'7' => {
                let n = b[i + 1..]
                    .iter()
                    .take(3)
                    .take_while(|d| (b'0'..=b'7').contains(d))
                    .count();
                let v = b[i + 1..i + 1 + n]
                    .iter()
                    .fold(0u32, |acc, &d| acc << 3 | u32::from(d - b'0'));
                (char::from_u32(v), 1 + n)
            }
            _ => (None, 1),
        };
        match c {
            Some(c) => {
                out.push(c);
                i += len;
            }
            None => {
                out.push('\\');
                i += 1;
            }
        }
    }
    out
}

/// UTF-7 (RFC 2152): `+` starts modified base64 of UTF-16 units, ended by
/// `-` (dropped) or any byte outside the alphabet; `+-` is `+`.
fn decode_utf7(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'+' {
            out.push(if b[i].is_ascii() {
                char::from(b[i])
            } else {
                char::REPLACEMENT_CHARACTER
            });
            i += 1;
            continue;
        }
        i += 1;
        if b.get(i) == Some(&b'-') {
            out.push('+');
            i += 1;
            continue;
        }
        let (mut acc, mut bits, mut units) = (0u32, 0u32, Vec::new());
        while let Some(v) = b
            .get(i)
            .and_then(|&c| b64_value(c).filter(|_| c != b'-' && c != b'_'))
        {
            acc = (acc << 6 | u32::from(v)) & 0xFF_FFFF;
            bits += 6;
            if bits >= 16 {
                bits -= 16;
                units.push((acc >> bits) as u16);
            }
            i += 1;
        }
        out.extend(char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)));
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    out
}

/// Decode bytes in a declared charset. A byte-order mark decides first
/// (UTF-8, UTF-16, UTF-32); UTF-16, UTF-32 and UTF-7 are decoded when
/// declared. utf-8 and us-ascii: UTF-8 when valid, else windows-1252
/// (mislabelled 8-bit text is usually that). Latin-1 family and
/// windows-1252: windows-1252. Unknown: UTF-8 if valid, else byte-wise
/// windows-1252 (ASCII stays ASCII in every ASCII-compatible charset).
pub fn decode_charset(bytes: &[u8], charset: Option<&str>) -> String {
    match bom(bytes) {
        Some((Some(w), n)) => return decode_wide(&bytes[n..], w),
        Some((None, n)) => return decode_charset(&bytes[n..], Some("utf-8")),
        None => {}
    }
    let cs = charset.unwrap_or("").trim().trim_matches('"');
    if let Some(w) = wide_charset(cs, bytes) {
        return decode_wide(bytes, w);
    }
    let latin = matches!(
        cs,
        "iso-8859-1"
            | "iso8859-1"
            | "latin1"
            | "latin-1"
            | "l1"
            | "iso-8859-15"
            | "iso8859-15"
            | "windows-1252"
            | "cp1252"
            | "x-cp1252"
    );
    if latin {
        return decode_cp1252(bytes);
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => decode_cp1252(bytes),
    }
}

/// [`decode_charset`] of bytes the caller owns: UTF-8 input is taken as
/// is (no copy).
pub fn decode_charset_owned(bytes: Vec<u8>, charset: Option<&str>) -> String {
    let cs = charset.unwrap_or("").trim().trim_matches('"');
    let utf8 = cs.is_empty() || cs.eq_ignore_ascii_case("utf-8") || cs.eq_ignore_ascii_case("utf8");
    if utf8 && bom(&bytes).is_none() {
        return String::from_utf8(bytes).unwrap_or_else(|e| decode_cp1252(e.as_bytes()));
    }
    decode_charset(&bytes, charset)
}

/// Decode RFC 2047 encoded words (`=?charset?B|Q?text?=`) in a header value.
pub fn decode_words(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, after) = rest.split_at(start);
        if let Some((decoded, consumed)) = encoded_word(after) {
            if !(last_was_word && before.trim().is_empty()) {
                out.push_str(before);
            }
            out.push_str(&decoded);
            rest = &after[consumed..];
            last_was_word = true;
        } else {
            out.push_str(before);
            out.push_str("=?");
            rest = &after[2..];
            last_was_word = false;
        }
    }
    out.push_str(rest);
    out
}

/// One encoded word at the start of `s`: (decoded, bytes consumed).
fn encoded_word(s: &str) -> Option<(String, usize)> {
    let body = s.strip_prefix("=?")?;
    let q1 = body.find('?')?;
    let charset = body[..q1].to_ascii_lowercase();
    let charset = charset.split('*').next().unwrap_or("");
    let rest = &body[q1 + 1..];
    let q2 = rest.find('?')?;
    let enc = &rest[..q2];
    let text_and_more = &rest[q2 + 1..];
    let end = text_and_more.find("?=")?;
    let text = &text_and_more[..end];
    if text.contains(' ') {
        return None;
    }
    let bytes = match enc {
        "B" | "b" => decode_base64(text.as_bytes()),
        "Q" | "q" => decode_qp(text.as_bytes(), true),
        _ => return None,
    };
    let consumed = 2 + q1 + 1 + q2 + 1 + end + 2;
    Some((decode_charset(&bytes, Some(charset)), consumed))
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Reduce HTML to text, appending to `out.text`; collects `<a href>` links
/// and counts images. Scripts, styles and comments are dropped (spammers hide
/// word salad in comments).
pub fn html_to_text(html: &str, out: &mut TextView) {
    let b = html.as_bytes();
    let mut i = 0;
    let mut text_start = 0;
    // (href, index in out.text where the anchor text starts)
    let mut open_link: Option<(String, usize)> = None;
    let flush = |from: usize, to: usize, out: &mut TextView| {
        if from < to {
            push_entities(&html[from..to], &mut out.text);
        }
    };
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        flush(text_start, i, out);
        if html[i..].starts_with("<!--") {
            i = html[i + 4..].find("-->").map_or(b.len(), |e| i + 4 + e + 3);
            text_start = i;
            continue;
        }
        let tag_end = match memchr(b'>', &b[i..]) {
            Some(e) => i + e,
            None => {
                // An unclosed '<': the rest is text.
                text_start = i;
                break;
            }
        };
        let tag = &html[i + 1..tag_end];
        let closing = tag.starts_with('/');
        let name_part = tag.trim_start_matches('/');
        let name_len = name_part
            .bytes()
            .position(|c| !c.is_ascii_alphanumeric())
            .unwrap_or(name_part.len());
        let name = name_part[..name_len].to_ascii_lowercase();
        i = tag_end + 1;
        text_start = i;
        match name.as_str() {
            "script" | "style" | "title" if !closing => {
                // Skip to the matching end tag (title kept? no: it repeats the subject).
                let close = format!("</{name}");
                let lower_rest = html[i..].to_ascii_lowercase();
                i = lower_rest.find(&close).map_or(b.len(), |e| {
                    let after = i + e;
                    memchr(b'>', &b[after..]).map_or(b.len(), |g| after + g + 1)
                });
                text_start = i;
            }
            "a" if !closing => {
                if let Some(href) = attr(tag, "href") {
                    close_link(&mut open_link, out);
                    out.text.push(' ');
                    open_link = Some((href, out.text.len()));
                }
            }
            "a" => {
                close_link(&mut open_link, out);
                out.text.push(' ');
            }
            "img" => {
                out.images = out.images.saturating_add(1);
                if let Some(alt) = attr(tag, "alt") {
                    out.text.push(' ');
                    out.text.push_str(&alt);
                    out.text.push(' ');
                }
            }
            "br" | "p" | "div" | "tr" | "li" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6"
            | "table" | "blockquote" | "hr" | "ul" | "ol" | "center" => out.text.push('\n'),
            "td" | "th" => out.text.push(' '),
            // Inline tags (`font`, `span`, `b`, ...) do not break words, as
            // a browser draws them: `Vi<font>ag</font>ra` reads `Viagra`.
            _ => {}
        }
    }
    flush(text_start.min(b.len()), b.len(), out);
    close_link(&mut open_link, out);
}

fn close_link(open: &mut Option<(String, usize)>, out: &mut TextView) {
    if let Some((href, start)) = open.take() {
        if out.links.len() < MAX_LINKS {
            let text = out.text.get(start..).unwrap_or("").trim().to_owned();
            out.links.push(Link { href, text });
        }
    }
}

/// An attribute's value from a tag's inside (`a href="x"`), entities decoded.
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(p) = lower[from..].find(name) {
        let at = from + p;
        from = at + name.len();
        let before_ok = at > 0 && lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let vstart = tag.len() - rest.len() + 1;
        let v = tag[vstart..].trim_start();
        let value = if let Some(q) = v.strip_prefix('"') {
            q.split('"').next().unwrap_or("")
        } else if let Some(q) = v.strip_prefix('\'') {
            q.split('\'').next().unwrap_or("")
        } else {
            v.split(|c: char| c.is_whitespace() || c == '>')
                .next()
                .unwrap_or("")
        };
        let mut s = String::new();
        push_entities(value.trim(), &mut s);
        return Some(s);
    }
    None
}

/// Append text with HTML entities decoded.
fn push_entities(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.bytes().take(10).position(|c| c == b';');
        let decoded = semi.and_then(|e| entity(&after[..e]).map(|c| (c, e)));
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &after[e + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = if let Some(h) = num.strip_prefix('x').or_else(|| num.strip_prefix('X')) {
            u32::from_str_radix(h, 16).ok()?
        } else {
            num.parse::<u32>().ok()?
        };
        // Numeric references in 0x80..0x9F mean windows-1252 (HTML5).
        if (0x80..=0x9F).contains(&code) {
            return CP1252_HIGH.get((code - 0x80) as usize).copied();
        }
        return char::from_u32(code);
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "pound" => '£',
        "euro" => '€',
        "cent" => '¢',
        "yen" => '¥',
        "eacute" => 'é',
        "egrave" => 'è',
        "agrave" => 'à',
        "ccedil" => 'ç',
        "uuml" => 'ü',
        "ouml" => 'ö',
        "auml" => 'ä',
        "szlig" => 'ß',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "rsquo" => '’',
        "lsquo" => '‘',
        "rdquo" => '”',
        "ldquo" => '“',
        "bull" => '•',
        "middot" => '·',
        _ => return None,
    })
}
