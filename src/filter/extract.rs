//! Text extraction by content type: what part of a body a text classifier
//! reads. text/plain as is; JSON (configured pointers, or every string);
//! urlencoded and multipart forms (configured fields, or every non-file
//! field); message/rfc822 (Subject and text parts, decoded). Anything else
//! is not text we know how to read: skipped and counted.

use crate::classify::text::{self, TextView};

/// The body shapes sift reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Plain {
        charset: Option<String>,
    },
    /// text/html: the text a browser shows (tags dropped, entities
    /// decoded, links kept), as the mail view reads an HTML part.
    Html {
        charset: Option<String>,
    },
    Json,
    /// `charset`: the Content-Type's (Django decodes a form in it).
    Form {
        charset: Option<String>,
    },
    Multipart {
        boundary: String,
        /// The Content-Type's: the charset of parts that name none
        /// (Django decodes fields in it).
        charset: Option<String>,
    },
    Rfc822,
    /// A type sift does not read as text (`application/octet-stream`,
    /// `image/png`): read only if it is JSON, as apps that parse JSON
    /// whatever the Content-Type says (Go's `json.NewDecoder(r.Body)`,
    /// Django's `json.loads(request.body)`) read it; otherwise skipped
    /// ([`ExtractError::NotText`]).
    Other,
}

/// The kind of a body from its Content-Type (`None`: a type sift reads
/// only if it is JSON, [`BodyKind::Other`]). A request without a
/// Content-Type is read as text/plain, and so is any `text/*` (an app
/// reading the body as text sees that text).
pub fn body_kind(content_type: Option<&str>) -> Option<BodyKind> {
    let Some(ct) = content_type else {
        return Some(BodyKind::Plain { charset: None });
    };
    // The common case without parameters, without allocating.
    if ct.eq_ignore_ascii_case("text/plain") {
        return Some(BodyKind::Plain { charset: None });
    }
    let mime = ct.split(';').next()?.trim().to_ascii_lowercase();
    let param = |name: &str| {
        media_params(ct)
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.into_owned())
    };
    match mime.as_str() {
        // JSON under older names: Rails parses `text/x-json` and
        // `application/jsonrequest` as JSON.
        "text/json" | "text/x-json" | "application/x-json" | "application/jsonrequest" => {
            Some(BodyKind::Json)
        }
        "text/html" | "application/xhtml+xml" => Some(BodyKind::Html {
            charset: param("charset"),
        }),
        m if m.starts_with("text/") => Some(BodyKind::Plain {
            charset: param("charset"),
        }),
        "message/rfc822" => Some(BodyKind::Rfc822),
        "application/x-www-form-urlencoded" => Some(BodyKind::Form {
            charset: param("charset"),
        }),
        // Any length: RFC 2046 says at most 70, but Go, busboy and
        // Werkzeug read longer ones, so a cap would hide such a form.
        "multipart/form-data" => {
            param("boundary")
                .filter(|b| !b.is_empty())
                .map(|boundary| BodyKind::Multipart {
                    boundary,
                    charset: param("charset"),
                })
        }
        m if m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")) => {
            Some(BodyKind::Json)
        }
        _ => None,
    }
}

/// The parameters of a media type (`type/sub; name=value; ...`), in order,
/// as `(name, value)`: names as sent (compare them ignoring ASCII case), a
/// value a token or a quoted string (RFC 9110 §5.6.4, §5.6.6):
/// `boundary="x;y"` is `x;y`, as an app reads it. Borrowed from `ct`
/// (copied only for a quoted value with `\` escapes); parameters without
/// a name are skipped.
pub fn media_params(ct: &str) -> MediaParams<'_> {
    let at = memchr::memchr(b';', ct.as_bytes()).unwrap_or(ct.len());
    MediaParams { ct, at }
}

/// Iterator of [`media_params`].
pub struct MediaParams<'a> {
    ct: &'a str,
    /// At a `;` (or the end).
    at: usize,
}

impl<'a> Iterator for MediaParams<'a> {
    type Item = (&'a str, std::borrow::Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let (ct, b) = (self.ct, self.ct.as_bytes());
        while self.at < b.len() {
            // At a ';': the name runs to '=' or the next ';'.
            let mut i = self.at + 1;
            let start = i;
            while i < b.len() && b[i] != b'=' && b[i] != b';' {
                i += 1;
            }
            let name = ct[start..i].trim();
            let mut value = std::borrow::Cow::Borrowed("");
            if i < b.len() && b[i] == b'=' {
                i += 1;
                while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                    i += 1;
                }
                if i < b.len() && b[i] == b'"' {
                    i += 1;
                    let s = i;
                    let mut escaped = Vec::new();
                    let mut has_escape = false;
                    while i < b.len() && b[i] != b'"' {
                        if b[i] == b'\\' && i + 1 < b.len() {
                            if !has_escape {
                                escaped.extend_from_slice(&b[s..i]);
                                has_escape = true;
                            }
                            i += 1;
                        }
                        if has_escape {
                            escaped.push(b[i]);
                        }
                        i += 1;
                    }
                    value = if has_escape {
                        std::borrow::Cow::Owned(String::from_utf8_lossy(&escaped).into_owned())
                    } else {
                        std::borrow::Cow::Borrowed(&ct[s..i])
                    };
                    // Past the closing quote, up to the next ';'.
                    while i < b.len() && b[i] != b';' {
                        i += 1;
                    }
                } else {
                    let s = i;
                    while i < b.len() && b[i] != b';' {
                        i += 1;
                    }
                    value = std::borrow::Cow::Borrowed(ct[s..i].trim());
                }
            }
            self.at = i;
            if !name.is_empty() {
                return Some((name, value));
            }
        }
        None
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtractError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("multipart body has no part with the boundary")]
    Multipart,
    #[error(
        "mail nests deeper than {} levels or has more than {} parts",
        text::MAX_DEPTH,
        text::MAX_PARTS
    )]
    MailLimits,
    #[error("body of a type that is not text, and not JSON")]
    NotText,
}

/// [`extract`] of a body the caller owns: a UTF-8 text/plain body becomes
/// the view's text without a copy.
pub fn extract_owned(
    kind: &BodyKind,
    body: Vec<u8>,
    json_pointers: Option<&[String]>,
    form_fields: Option<&[String]>,
) -> Result<TextView, ExtractError> {
    match kind {
        BodyKind::Plain { charset } => Ok(plain(
            text::decode_charset_owned(body, charset.as_deref()),
            charset.as_deref(),
        )),
        _ => extract(kind, &body, json_pointers, form_fields),
    }
}

/// The view of a text/plain body. Many apps parse a body as JSON whatever
/// its Content-Type (Go's `json.NewDecoder(r.Body)`, Django's
/// `json.loads(request.body)`, Starlette's `request.json()`): a text that
/// is a JSON document with escapes (`\u0042UY`) also gives its strings
/// unescaped, so the words the app reads are classified.
fn plain(mut text: String, charset: Option<&str>) -> TextView {
    let t = text.trim_start();
    if (t.starts_with('{') || t.starts_with('[')) && memchr::memchr(b'\\', t.as_bytes()).is_some() {
        if let Ok(v) = json_text(t.as_bytes(), None, false) {
            push_line(&mut text, &v.text);
        }
    }
    TextView {
        text,
        charsets: charset.map_or(0, text::charset_family),
        ..TextView::default()
    }
}

/// The text view of a body.
pub fn extract(
    kind: &BodyKind,
    body: &[u8],
    json_pointers: Option<&[String]>,
    form_fields: Option<&[String]>,
) -> Result<TextView, ExtractError> {
    match kind {
        BodyKind::Plain { charset } => Ok(plain(
            text::decode_charset(body, charset.as_deref()),
            charset.as_deref(),
        )),
        BodyKind::Rfc822 => {
            let v = text::view(body);
            if v.cut {
                return Err(ExtractError::MailLimits);
            }
            Ok(v)
        }
        BodyKind::Html { charset } => {
            let mut v = TextView {
                charsets: charset.as_deref().map_or(0, text::charset_family),
                ..TextView::default()
            };
            text::html_to_text(&text::decode_charset(body, charset.as_deref()), &mut v);
            Ok(v)
        }
        BodyKind::Json => json_text(body, json_pointers, false),
        BodyKind::Other => sniffed_json(body, json_pointers, false).ok_or(ExtractError::NotText),
        BodyKind::Form { charset } => {
            // A charset in which `=` and `&` are not ASCII bytes (UTF-16,
            // EBCDIC, ...): the body is decoded first, as Django does, and
            // so are its percent-encoded bytes; else the bytes themselves.
            let cs = charset
                .as_deref()
                .filter(|c| text::wide_charset(c, body).is_some());
            let body = match cs.and_then(|c| text::wide_charset(c, body)) {
                Some(w) => std::borrow::Cow::Owned(text::decode_wide(body, w).into_bytes()),
                None => wide_sniff(body),
            };
            let form_decode = |s: &[u8]| form_decode(s, cs);
            let mut out = String::new();
            // A JSON document typed as a form: a Go or Django app that
            // parses JSON whatever the type reads its strings.
            if let Some(v) = sniffed_json(&body, json_pointers, false) {
                push_line(&mut out, &v.text);
            }
            form_pairs(&body, form_fields, form_decode, &mut out);
            Ok(TextView::plain(&out))
        }
        BodyKind::Multipart { boundary, charset } => {
            multipart(body, boundary, charset.as_deref(), form_fields)
        }
    }
}

/// The values of an urlencoded string's fields (a form body or a query
/// string): every field, or those `form_fields` lists, one per line.
fn form_pairs(
    body: &[u8],
    form_fields: Option<&[String]>,
    form_decode: impl Fn(&[u8]) -> String,
    out: &mut String,
) {
    for pair in body.split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            // No `=`: not a field but bare text, as `curl -d 'text'`
            // sends it (typed urlencoded by default). Read when every
            // field is read, so such a body is classified rather
            // than forwarded as empty.
            None if form_fields.is_none() => (&b""[..], pair),
            None => (pair, &b""[..]),
        };
        let k = form_decode(k);
        if wanted(form_fields, &k) {
            push_line(out, &form_decode(v));
        }
        // `;` separated fields too, as older stacks read them
        // (Python before 3.9.2, Go before 1.17, Rack 1): `a=1;msg=x`
        // is field `a` to a current app and `msg` to those. Without
        // a field list the value above already holds all of it.
        if form_fields.is_some() && memchr::memchr(b';', pair).is_some() {
            for sub in pair.split(|&b| b == b';').skip(1) {
                let (k, v) = match sub.iter().position(|&b| b == b'=') {
                    Some(i) => (&sub[..i], &sub[i + 1..]),
                    None => (sub, &b""[..]),
                };
                if wanted(form_fields, &form_decode(k)) {
                    push_line(out, &form_decode(v));
                }
            }
        }
    }
}

/// The text of the query-string fields named in `fields`, one value per
/// line (empty if none occurs). Parsed as a form body is (`+` and
/// percent decoding, `;` separators, names as PHP, Rails and Express read
/// them), because PHP's `$_REQUEST`, Flask's `request.values` and Rails'
/// `params` give an app its query fields and body fields under the same
/// names.
pub fn query_text(query: &str, fields: &[String]) -> String {
    let mut out = String::new();
    if !fields.is_empty() {
        form_pairs(
            query.as_bytes(),
            Some(fields),
            |s| form_decode(s, None),
            &mut out,
        );
    }
    out
}

/// Whether a form field (urlencoded or multipart) of this name is read:
/// every field without a list; else a listed name as the app reads it.
/// PHP, Rails and Express (qs) read `msg[]=x`, `msg[0]=x` and
/// `msg[a][b]=x` as field `msg` (an array or object of it), and PHP turns
/// ` ` and `.` in a name, and a `[` without its `]`, into `_` (`my.msg`
/// is `my_msg`).
fn wanted(fields: Option<&[String]>, name: &str) -> bool {
    let Some(fields) = fields else { return true };
    fields.iter().any(|f| {
        name == f
            || name
                .strip_prefix(f.as_str())
                .is_some_and(|r| r.starts_with('['))
            || (f.contains('_')
                && php_name(name).is_some_and(|n| n == *f || n.starts_with(&format!("{f}["))))
    })
}

/// A field name as PHP registers it, if that differs from the name sent.
fn php_name(name: &str) -> Option<String> {
    let base_end = name.find('[').unwrap_or(name.len());
    let open_only = base_end < name.len() && !name[base_end..].contains(']');
    let base = name[..base_end].trim_start_matches(' ');
    if !open_only && !base.contains([' ', '.']) && base.len() == base_end {
        return None;
    }
    let mut n: String = base
        .chars()
        .map(|c| if c == ' ' || c == '.' { '_' } else { c })
        .collect();
    if open_only {
        n.push('_');
        n.push_str(&name[base_end + 1..]);
    } else {
        n.push_str(&name[base_end..]);
    }
    Some(n)
}

/// A body in UTF-16 or UTF-32 (a byte-order mark, or the zeros of its
/// first ASCII character, as RFC 4627 §3 and Python's
/// `json.detect_encoding` find them), as UTF-8; a UTF-8 BOM is dropped.
/// JSON and urlencoded bodies start with an ASCII character, so zeros
/// among the first bytes are never UTF-8 text: Python reads such JSON
/// (`json.loads(bytes)`), and Django decodes a form in the declared
/// charset; sift read the bytes, and saw no word.
fn wide_sniff(b: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    use text::Wide;
    if let Some((w, n)) = text::bom(b) {
        return match w {
            Some(w) => Cow::Owned(text::decode_wide(&b[n..], w).into_bytes()),
            None => Cow::Borrowed(&b[n..]),
        };
    }
    let w = match b {
        [0, 0, ..] => Wide::Utf32Be,
        [0, _, ..] => Wide::Utf16Be,
        [_, 0, 0, 0, ..] => Wide::Utf32Le,
        [_, 0, ..] => Wide::Utf16Le,
        _ => return Cow::Borrowed(b),
    };
    Cow::Owned(text::decode_wide(b, w).into_bytes())
}

/// The strings of a body that is a JSON document although its type says
/// otherwise (it starts with `{` or `[`, after white space and any BOM).
pub fn sniffed_json(body: &[u8], json_pointers: Option<&[String]>, cut: bool) -> Option<TextView> {
    let b = wide_sniff(body);
    let first = b.iter().find(|c| !c.is_ascii_whitespace())?;
    if *first != b'{' && *first != b'[' {
        return None;
    }
    json_text(&b, json_pointers, cut).ok()
}

/// [`extract`] of a JSON body that may be a prefix of the client's
/// (`cut`: the body went on past `max_inspect_bytes`): a prefix that ends
/// inside the document gives the strings it holds.
pub fn extract_json(
    body: &[u8],
    json_pointers: Option<&[String]>,
    cut: bool,
) -> Result<TextView, ExtractError> {
    json_text(body, json_pointers, cut)
}

/// The wanted strings of a JSON body, per pointer in the configured order
/// (document order within one); without pointers, every string in
/// document order. Read by the streaming walker, as the app's parser
/// reads the document: every value of a key given twice (JavaScript,
/// Python and Go take the last, some Go libraries the first: both are
/// read), lone surrogates as U+FFFD (Python and JavaScript accept them),
/// `NaN` and `Infinity` (Python), nesting as deep as Go allows, and values
/// after the first (Go's `json.Decoder` reads the first and leaves the
/// rest). UTF-16 and UTF-32 bodies are decoded first ([`wide_sniff`]).
/// A prefix (`cut`) gives the strings it holds, a cut-off one too.
fn json_text(
    body: &[u8],
    json_pointers: Option<&[String]>,
    cut: bool,
) -> Result<TextView, ExtractError> {
    /// Strings as UTF-8 bytes, one per line, per pointer.
    struct Lines {
        per: Vec<Vec<u8>>,
        /// The string being read: its pointer and where its line starts.
        open: Option<(usize, usize)>,
    }
    impl super::json_stream::StrSink for Lines {
        fn bytes(&mut self, which: Option<usize>, b: &[u8]) {
            let w = which.unwrap_or(0);
            if self.open.is_none() {
                let buf = &mut self.per[w];
                self.open = Some((w, buf.len()));
                if !buf.is_empty() {
                    buf.push(b'\n');
                }
            }
            self.per[w].extend_from_slice(b);
        }
        fn end(&mut self, _: Option<usize>) {
            if let Some((w, mark)) = self.open.take() {
                // White space only: no line.
                if self.per[w][mark..].trim_ascii().is_empty() {
                    self.per[w].truncate(mark);
                }
            }
        }
    }
    let body = wide_sniff(body);
    let n = json_pointers.map_or(1, <[String]>::len).max(1);
    let mut lines = Lines {
        per: vec![Vec::new(); n],
        open: None,
    };
    let mut w = super::json_stream::JsonStrings::new(json_pointers, false).sequence();
    w.feed(&body, &mut lines);
    if !cut {
        // A top-level number or literal ends with the body.
        w.feed(b" ", &mut lines);
    }
    // Not JSON from the start, or a whole body that ends inside its first
    // value: unreadable. Junk after a whole value: the values before it
    // are what the app reads (Go's decoder stops there).
    if w.values() == 0 && (w.failed() || !cut) {
        return Err(ExtractError::Json("not JSON".into()));
    }
    // One pointer, or none (the common case): its buffer is the text.
    let out = if lines.per.len() == 1 {
        lines.per.pop().unwrap_or_default()
    } else {
        let mut out = Vec::new();
        for p in lines.per.iter().filter(|p| !p.is_empty()) {
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(p);
        }
        out
    };
    let text = match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok(TextView {
        text,
        ..TextView::default()
    })
}

fn push_line(out: &mut String, s: &str) {
    if s.trim().is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(s);
}

/// application/x-www-form-urlencoded decoding: `+` is a space, `%XX` a
/// byte. The text is UTF-8; percent-encoded bytes are too, or with
/// `wide`, a charset that is not ASCII-compatible, each run of them is
/// decoded in it (as Python's `unquote(s, encoding)` in Django does).
fn form_decode(s: &[u8], wide: Option<&str>) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut run = Vec::new();
    let flush = |run: &mut Vec<u8>, out: &mut Vec<u8>| {
        if let (Some(cs), false) = (wide, run.is_empty()) {
            out.extend_from_slice(text::decode_charset(run, Some(cs)).as_bytes());
            run.clear();
        }
    };
    let mut i = 0;
    while i < s.len() {
        let byte = match s[i] {
            b'%' if i + 2 < s.len() => match (text::hex(s[i + 1]), text::hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    i += 3;
                    match wide {
                        Some(_) => run.push(h << 4 | l),
                        None => out.push(h << 4 | l),
                    }
                    continue;
                }
                _ => b'%',
            },
            b'+' => b' ',
            b => b,
        };
        flush(&mut run, &mut out);
        out.push(byte);
        i += 1;
    }
    flush(&mut run, &mut out);
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// multipart/form-data (RFC 7578): the text of the wanted non-file fields.
///
/// Form parsers disagree on where a part starts and ends, so sift reads
/// every part any of them could see, each to the farthest end any of them
/// could give it:
/// - a part starts at `--boundary` at the start of a line, whatever ends
///   the line before (CRLF for busboy, also LF or CR for Werkzeug, PHP and
///   Go) and whatever follows on its line (PHP matches a prefix), but
///   never in the middle of a line (no parser splits there);
/// - its headers end at the first empty line (LF or CRLF);
/// - a wanted part's text runs to the next delimiter as the strictest
///   parser has it: `--boundary` after the line break the body's first
///   delimiter line ends with, followed by `--` or the end of its line;
/// - a part is wanted if any of its names is (a Content-Disposition line
///   given twice, `name` and RFC 2231 `name*=utf-8''msg`, which Go reads).
fn multipart(
    body: &[u8],
    boundary: &str,
    body_charset: Option<&str>,
    fields: Option<&[String]>,
) -> Result<TextView, ExtractError> {
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let finder = memchr::memmem::Finder::new(d);
    let mut starts = finder
        .find_iter(body)
        .filter(|&i| i == 0 || matches!(body[i - 1], b'\n' | b'\r'))
        .peekable();
    // The line break of the first delimiter line: CRLF, or LF alone.
    let Some(&first) = starts.peek() else {
        // No part: a JSON document typed as a form is what an app that
        // parses JSON whatever the type reads.
        return sniffed_json(body, None, false).ok_or(ExtractError::Multipart);
    };
    let first_eol = memchr::memchr(b'\n', &body[first..]).map(|i| first + i);
    let crlf = first_eol.is_none_or(|e| e > 0 && body[e - 1] == b'\r');
    let nl: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let strict = {
        let mut v = nl.to_vec();
        v.extend_from_slice(d);
        v
    };
    let strict = memchr::memmem::Finder::new(&strict);
    let mut out = String::new();
    // Each byte is read at most once, as a header or as text, so a body
    // of many delimiters costs linear time and text: a delimiter inside
    // the last part's delimiter line or headers (which end where that
    // part's do, with a subset of its names) adds nothing, and a part's
    // text that an earlier part's text covered is not read again.
    let (mut skip_to, mut covered) = (0, 0);
    for i in starts {
        if i < skip_to {
            continue;
        }
        let after = i + d.len();
        if body[after..].starts_with(b"--") {
            continue; // a close delimiter
        }
        // The part's headers start on the next line and end at the first
        // empty line.
        let Some(eol) = memchr::memchr(b'\n', &body[after..]) else {
            break; // no line follows, here or after
        };
        let head_start = after + eol + 1;
        let mut p = head_start;
        let content_start = loop {
            let rest = &body[p..];
            if rest.starts_with(b"\r\n") {
                break Some(p + 2);
            }
            if rest.starts_with(b"\n") {
                break Some(p + 1);
            }
            match memchr::memchr(b'\n', rest) {
                Some(e) => p += e + 1,
                None => break None,
            }
        };
        let (head, content_start) = match content_start {
            Some(c) => (&body[head_start..c], c),
            None => (&body[head_start..], body.len()),
        };
        skip_to = content_start;
        let part = Part::read(head);
        let named = part.names.iter().any(|n| wanted(fields, n));
        // Files are read only when a field list names them and they are text.
        let text_file = part
            .ctype
            .as_deref()
            .is_none_or(|c| c.to_ascii_lowercase().starts_with("text/"));
        if !(named && (!part.is_file || (fields.is_some() && text_file))) {
            continue;
        }
        // To the next delimiter as the strictest parser finds it.
        let content_start = content_start.max(covered);
        let mut from = content_start;
        let end = loop {
            match strict.find(&body[from..]) {
                None => break body.len(),
                Some(j) => {
                    let at = from + j;
                    let next = body.get(at + strict.needle().len()).copied();
                    if matches!(next, None | Some(b'-' | b' ' | b'\t' | b'\r' | b'\n')) {
                        break at;
                    }
                    from = at + 1;
                }
            }
        };
        let end = end.max(content_start);
        covered = end;
        let content = &body[content_start..end];
        // RFC 7578 §4.7 deprecates Content-Transfer-Encoding in forms
        // and many parsers ignore it: a part labelled base64 that is
        // not base64 is read as the app reads it, as it is (decoded
        // leniently it would be noise, and its text unseen).
        let cte = part.cte.as_deref();
        let base64 = cte.is_some_and(|c| c.trim().eq_ignore_ascii_case("base64"));
        let decoded = if base64 && !looks_base64(content) {
            content.to_vec()
        } else {
            text::decode_transfer(content, cte)
        };
        let charset = part
            .ctype
            .as_deref()
            .and_then(|c| match body_kind(Some(c)) {
                Some(BodyKind::Plain { charset }) => charset,
                _ => None,
            })
            .or_else(|| body_charset.map(str::to_string));
        push_line(
            &mut out,
            &text::decode_charset(&decoded, charset.as_deref()),
        );
    }
    Ok(TextView::plain(&out))
}

/// What a multipart part's headers say.
#[derive(Debug, Default)]
struct Part {
    /// Every field name given (`name`, `name*`, `name*0`...).
    names: Vec<String>,
    /// Every Content-Disposition line names a file (one without a
    /// `filename` makes it a field to the parser that reads that line).
    is_file: bool,
    ctype: Option<String>,
    cte: Option<String>,
}

impl Part {
    fn read(head: &[u8]) -> Part {
        let head = String::from_utf8_lossy(head);
        let mut part = Part::default();
        let (mut lines, mut files) = (0, 0);
        // A line starting with a space or tab continues the header before
        // it (obs-fold): Go's textproto joins them, so a name on the next
        // line is the part's name.
        let mut logical: Vec<std::borrow::Cow<'_, str>> = Vec::new();
        for line in head.lines() {
            if let (true, Some(last)) = (line.starts_with([' ', '\t']), logical.last_mut()) {
                let l = last.to_mut();
                l.push(' ');
                l.push_str(line.trim_start());
            } else {
                logical.push(std::borrow::Cow::Borrowed(line));
            }
        }
        for line in &logical {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-disposition") {
                lines += 1;
                let mut file = false;
                // RFC 2231 continuations: `name*0="m"; name*1*=utf-8''sg`.
                let mut pieces: Vec<(u32, String)> = Vec::new();
                for (pk, pv) in media_params(v) {
                    let pk = pk.to_ascii_lowercase();
                    if pk == "name" {
                        part.names.push(pv.into_owned());
                    } else if pk.starts_with("filename") {
                        // An empty file name is a field to Go, whose
                        // ReadForm keeps such a part as a value.
                        file |= !pv.trim().is_empty();
                    } else if let Some(rest) = pk.strip_prefix("name*") {
                        let (num, ext) = match rest.strip_suffix('*') {
                            Some(n) => (n, true),
                            None => (rest, rest.is_empty()),
                        };
                        let v = if ext { rfc2231(&pv) } else { pv.into_owned() };
                        match num.parse::<u32>() {
                            Ok(n) if num.len() <= 3 => pieces.push((n, v)),
                            _ if num.is_empty() => part.names.push(v),
                            _ => {}
                        }
                    }
                }
                if !pieces.is_empty() {
                    pieces.sort_by_key(|(n, _)| *n);
                    part.names
                        .push(pieces.into_iter().map(|(_, v)| v).collect());
                }
                files += usize::from(file);
            } else if k.eq_ignore_ascii_case("content-type") {
                part.ctype = Some(v.trim().to_string());
            } else if k.eq_ignore_ascii_case("content-transfer-encoding") {
                part.cte = Some(v.trim().to_string());
            }
        }
        part.is_file = lines > 0 && files == lines;
        part
    }
}

/// An RFC 2231 extended value, `charset'language'percent-encoded`.
fn rfc2231(v: &str) -> String {
    let mut it = v.splitn(3, '\'');
    let (Some(_), Some(_), Some(enc)) = (it.next(), it.next(), it.next()) else {
        return v.to_string();
    };
    let mut out = Vec::with_capacity(enc.len());
    let b = enc.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).and_then(|&h| text::hex(h)),
            b.get(i + 2).and_then(|&l| text::hex(l)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Base64 text: the alphabet (standard or URL-safe) in lines (no spaces
/// within: words of prose have them), `=` only as padding at the end, and
/// a whole number of 4-character groups.
fn looks_base64(b: &[u8]) -> bool {
    let b = b.trim_ascii();
    let body = b
        .strip_suffix(b"==")
        .or_else(|| b.strip_suffix(b"="))
        .unwrap_or(b);
    let mut chars = b.len() - body.len();
    for &c in body {
        if c.is_ascii_alphanumeric() || b"+/-_".contains(&c) {
            chars += 1;
        } else if c != b'\r' && c != b'\n' {
            return false;
        }
    }
    chars % 4 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ct: &str, body: &[u8], ptrs: Option<&[String]>, fields: Option<&[String]>) -> String {
        let k = body_kind(Some(ct)).expect("supported");
        extract(&k, body, ptrs, fields).unwrap().text
    }

    #[test]
    fn kinds() {
        assert_eq!(
            body_kind(Some("text/plain; charset=ISO-8859-1")),
            Some(BodyKind::Plain {
                charset: Some("ISO-8859-1".into())
            })
        );
        assert_eq!(
            body_kind(Some("application/problem+json")),
            Some(BodyKind::Json)
        );
        assert_eq!(body_kind(Some("image/png")), None);
        assert_eq!(
            body_kind(Some("text/x-markdown; charset=utf-8")),
            Some(BodyKind::Plain {
                charset: Some("utf-8".into())
            })
        );
        let html = text(
            "text/html",
            b"<p>W&#105;n <b>c&#x61;sh</b><!-- x --></p>",
            None,
            None,
        );
        assert_eq!(html.split_whitespace().collect::<Vec<_>>(), ["Win", "cash"]);
        for ct in [
            "text/x-json",
            "application/jsonrequest",
            "application/vnd.api+json",
        ] {
            assert_eq!(body_kind(Some(ct)), Some(BodyKind::Json), "{ct}");
        }
        assert_eq!(body_kind(Some("multipart/form-data")), None, "no boundary");
        assert_eq!(body_kind(None), Some(BodyKind::Plain { charset: None }));
    }

    #[test]
    fn base64_or_prose() {
        assert!(looks_base64(b"V2luIGEgZnJlZSBpUGhvbmU=\r\n"));
        assert!(looks_base64(b"QUJD\r\nREVG\r\n"));
        assert!(!looks_base64(b"Win a free iPhone"));
        assert!(!looks_base64(b"WIN cash now call"));
        assert!(!looks_base64(b"Hello"));
        assert!(!looks_base64(b"QUJD=REVG"));
    }

    #[test]
    fn media_type_parameters() {
        let p = |ct: &str| {
            media_params(ct)
                .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            p("multipart/form-data; Boundary=\"x;y\" ; charset = utf-8"),
            [
                ("boundary".to_string(), "x;y".to_string()),
                ("charset".to_string(), "utf-8".to_string())
            ]
        );
        assert_eq!(
            p("a/b; q=\"a\\\"b\""),
            [("q".to_string(), "a\"b".to_string())]
        );
        assert_eq!(
            p("a/b; x; ;y=\"open"),
            [("x".into(), String::new()), ("y".into(), "open".into())]
        );
        assert!(p("text/plain").is_empty());
        assert_eq!(
            body_kind(Some("multipart/form-data; boundary=\"x;y\"")),
            Some(BodyKind::Multipart {
                boundary: "x;y".into(),
                charset: None
            })
        );
    }

    #[test]
    fn plain_with_charset() {
        assert_eq!(
            text("text/plain; charset=iso-8859-1", b"caf\xe9", None, None),
            "café"
        );
    }

    #[test]
    fn json_all_strings_or_pointers() {
        let body =
            br#"{"user":"ann","msg":{"subject":"WIN","body":"cash now"},"n":3,"tags":["a","b"]}"#;
        let all = text("application/json", body, None, None);
        for w in ["ann", "WIN", "cash now", "a", "b"] {
            assert!(all.contains(w), "{all:?} lacks {w}");
        }
        let p = vec!["/msg/body".to_string(), "/missing".to_string()];
        assert_eq!(text("application/json", body, Some(&p), None), "cash now");
        let k = body_kind(Some("application/json")).unwrap();
        assert!(extract(&k, b"{not json", None, None).is_err());
    }

    #[test]
    fn urlencoded_fields() {
        let body = b"name=Ann+Lee&comment=Free%20%24%24%24+now%21&token=x%ZZ";
        assert_eq!(
            text("application/x-www-form-urlencoded", body, None, None),
            "Ann Lee\nFree $$$ now!\nx%ZZ"
        );
        let f = vec!["comment".to_string()];
        assert_eq!(
            text("application/x-www-form-urlencoded", body, None, Some(&f)),
            "Free $$$ now!"
        );
        // `curl -d 'text'`: bare text, no field; read unless fields are named.
        let bare = b"WINNER! Claim your prize, call 09061701461&comment=hi&flag";
        assert_eq!(
            text("application/x-www-form-urlencoded", bare, None, None),
            "WINNER! Claim your prize, call 09061701461\nhi\nflag"
        );
        assert_eq!(
            text("application/x-www-form-urlencoded", bare, None, Some(&f)),
            "hi"
        );
    }

    #[test]
    fn multipart_fields_files_and_encodings() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nHello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"body\"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nV2luIGEgZnJlZSBpUGhvbmU=\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01binary\r\n--XyZ--\r\n";
        let ct = "multipart/form-data; boundary=XyZ";
        assert_eq!(text(ct, body, None, None), "Hello\nWin a free iPhone");
        let f = vec!["body".to_string()];
        assert_eq!(text(ct, body, None, Some(&f)), "Win a free iPhone");
        let k = body_kind(Some(ct)).unwrap();
        assert_eq!(
            extract(&k, b"no delimiter here", None, None),
            Err(ExtractError::Multipart)
        );
    }

    #[test]
    fn rfc822_reads_subject_and_decoded_parts() {
        let msg = b"From: a@b.c\r\nSubject: =?utf-8?B?V2lubmVy?=\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nClaim your priz=\r\ne now\r\n";
        let t = text("message/rfc822", msg, None, None);
        assert!(t.contains("Winner"), "{t:?}");
        assert!(t.contains("Claim your prize now"), "{t:?}");
    }

    #[test]
    fn json_as_lenient_parsers_read_it() {
        let p = vec!["/text".to_string()];
        let ct = "application/json";
        let dup = br#"{"text":"first","n":1,"text":"second"}"#;
        assert_eq!(text(ct, dup, Some(&p), None), "first\nsecond");
        assert_eq!(text(ct, dup, None, None), "first\nsecond");
        assert_eq!(text(ct, br#"{"text":"\ud800x"}"#, None, None), "\u{fffd}x");
        assert_eq!(
            text(ct, br#"{"n":NaN,"text":"a"} junk"#, Some(&p), None),
            "a"
        );
        assert_eq!(text(ct, br#""top""#, None, None), "top");
        assert_eq!(text(ct, b"42", None, None), "");
        let doc = r#"{"text":"caf\u00e9 ☕"}"#;
        let le: Vec<u8> = doc.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = doc.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let be32: Vec<u8> = doc.chars().flat_map(|c| (c as u32).to_be_bytes()).collect();
        let bom8 = [&b"\xEF\xBB\xBF"[..], doc.as_bytes()].concat();
        for body in [le, be, be32, bom8] {
            assert_eq!(text(ct, &body, Some(&p), None), "café ☕");
        }
        let k = body_kind(Some(ct)).unwrap();
        for bad in [&b"{\"a\": nope}"[..], b"", b"{\"a\":\"b\"", b"x {}"] {
            assert!(extract(&k, bad, None, None).is_err(), "{bad:?}");
        }
        // A prefix may end anywhere.
        assert_eq!(
            extract_json(b"{\"text\":\"ab", Some(&p), true)
                .unwrap()
                .text,
            "ab"
        );
    }

    #[test]
    fn wide_charsets_and_json_in_plain_text() {
        let le: Vec<u8> = "Win cash"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(
            text("text/plain; charset=utf-16le", &le, None, None),
            "Win cash"
        );
        assert_eq!(
            text("text/plain; charset=UTF-16", &le, None, None),
            "Win cash"
        );
        assert_eq!(
            text(
                "text/plain; charset=utf-7",
                b"+AFcAaQBu- cash a+-b",
                None,
                None
            ),
            "Win cash a+b"
        );
        let bom = [&[0xFF, 0xFE][..], &le].concat();
        assert_eq!(
            text("text/plain; charset=iso-8859-1", &bom, None, None),
            "Win cash"
        );
        assert_eq!(
            text("text/plain", br#"{"t":"W\u0069n"}"#, None, None),
            "{\"t\":\"W\\u0069n\"}\nWin"
        );
        assert_eq!(
            text("text/plain", b"{not \\json", None, None),
            "{not \\json"
        );
        let form: Vec<u8> = "a=1&m=W%69n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let f = vec!["m".to_string()];
        assert_eq!(
            text("application/x-www-form-urlencoded", &form, None, Some(&f)),
            "Win"
        );
    }

    #[test]
    fn forms_in_their_declared_charset() {
        let f = vec!["msg".to_string()];
        let ct = |cs: &str| format!("application/x-www-form-urlencoded; charset={cs}");
        // EBCDIC "msg=Win%40cash" (%40 is the EBCDIC space).
        let ebc = b"\x94\xa2\x87\x7e\xe6\x89\x95\x6c\xf4\xf0\x83\x81\xa2\x88";
        assert_eq!(text(&ct("cp500"), ebc, None, Some(&f)), "Win cash");
        assert_eq!(
            text(
                &ct("unicode_escape"),
                br"msg=W\u0069n+c\x61sh",
                None,
                Some(&f)
            ),
            "Win cash"
        );
        let le: Vec<u8> = "msg=W%69%00n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(text(&ct("UTF-16LE"), &le, None, Some(&f)), "Win");
        assert_eq!(text(&ct("utf-8"), b"msg=caf%C3%A9", None, Some(&f)), "café");
        let mp = b"--b\r\nContent-Disposition: form-data; name=msg\r\n\r\nW\0i\0n\0\r\n--b--";
        let k = body_kind(Some("multipart/form-data; boundary=b; charset=utf-16le")).unwrap();
        assert_eq!(extract(&k, mp, None, Some(&f)).unwrap().text, "Win");
    }

    #[test]
    fn form_names_as_apps_read_them() {
        let f = vec!["msg".to_string(), "my_msg".to_string()];
        let ct = "application/x-www-form-urlencoded";
        for (body, want) in [
            (&b"msg[]=a&msg%5B%5D=b&msg[x][y]=c"[..], "a\nb\nc"),
            (b"my.msg=a&my+msg=b&my[msg=c&%20my.msg[]=d", "a\nb\nc\nd"),
            (b"x=1;msg=a;y=2&msg=b", "a\nb"),
            (b"msgx=a&ms=b&my_ms=c&msg_=d&my.msgx=e", ""),
        ] {
            assert_eq!(text(ct, body, None, Some(&f)), want, "{body:?}");
        }
        assert_eq!(php_name("a.b c[d.e]"), Some("a_b_c[d.e]".into()));
        assert_eq!(php_name("a[b"), Some("a_b".into()));
        assert_eq!(php_name("plain"), None);
    }

    #[test]
    fn query_fields_as_apps_read_them() {
        let f = vec!["q".to_string(), "my_msg".to_string()];
        for (query, want) in [
            ("q=win+a+prize%21&page=2", "win a prize!"),
            ("page=2&sort=asc", ""),
            ("", ""),
            ("q", ""),
            ("q[]=a&q%5B1%5D=b&my.msg=c&qq=d", "a\nb\nc"),
            ("x=1;q=a&q=b", "a\nb"),
            ("q=%E2%82%AC+%ZZ", "\u{20ac} %ZZ"),
        ] {
            assert_eq!(query_text(query, &f), want, "{query:?}");
        }
        // No list, nothing read (a query is read only for named fields).
        assert_eq!(query_text("q=a", &[]), "");
    }

    #[test]
    fn multipart_parts_any_parser_sees() {
        let ct = "multipart/form-data; boundary=b";
        let f = vec!["msg".to_string()];
        let cd = "Content-Disposition: form-data";
        let cases = [
            // Mid-line `--b` splits nothing; the field runs on.
            (
                format!("--b\r\n{cd}; name=msg\r\n\r\nx --b\r\ny\r\n--b--"),
                "x --b\r\ny",
            ),
            // After a bare LF: a part to Werkzeug, text to busboy: the text holds
            // the part, read once.
            (
                format!(
                    "--b\r\n{cd}; name=\"msg\"\r\n\r\nx\n--b\r\n{cd}; name=msg\r\n\r\ny\r\n--b--"
                ),
                "x\n--b\r\nContent-Disposition: form-data; name=msg\r\n\r\ny",
            ),
            (
                format!("--b\r\n{cd}; name=\"msg\"\n\nx\r\n\r\ny\r\n--b--"),
                "x\r\n\r\ny",
            ),
            (
                format!("--b\r\n{cd}; name=\"t\"; x=\"; name=msg\"\r\n\r\nno\r\n--b--"),
                "",
            ),
            (
                format!("--b\r\n{cd}; name=\"msg\"; x=\"; name=t\"\r\n\r\nyes\r\n--b--"),
                "yes",
            ),
            (
                format!("--b\r\n{cd}; NAME*=UTF-8''m%73g\r\n\r\nyes\r\n--b--"),
                "yes",
            ),
            (
                format!("--b\r\n{cd}; name*1=\"sg\"; name*0=\"m\"\r\n\r\nyes\r\n--b--"),
                "yes",
            ),
            (format!("--b\n{cd}; name=msg\n\nlf\n--b--\n"), "lf"),
            (
                format!(
                    "--b\r\n{cd}; name=msg; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\nv\r\n--b--"
                ),
                "v",
            ),
            (
                format!("--b\r\n{cd};\r\n\tname=\"msg\"\r\n\r\nfolded\r\n--b--"),
                "folded",
            ),
            (
                format!("--b\r\n{cd}; name=msg\r\n\r\nx\r\n--bb\r\ny\r\n--b--"),
                "x\r\n--bb\r\ny",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(text(ct, body.as_bytes(), None, Some(&f)), want, "{body:?}");
        }
        // A file line and a field line: a field to whoever reads the second.
        let body = format!("--b\r\n{cd}; name=msg; filename=a\r\n{cd}; name=msg\r\n\r\nx\r\n--b--");
        assert_eq!(text(ct, body.as_bytes(), None, Some(&f)), "x");
        // Many delimiters and no end: each byte is read once.
        let body = format!("--b\n{cd}; name=msg\n\n").repeat(4000);
        let t = text(ct, body.as_bytes(), None, Some(&f));
        assert!(t.len() <= body.len(), "{} > {}", t.len(), body.len());
        let body = "\r--b".repeat(20_000);
        assert_eq!(text(ct, body.as_bytes(), None, Some(&f)), "");
        let long = "b".repeat(500);
        let body = format!("--{long}\r\n{cd}; name=msg\r\n\r\nx\r\n--{long}--");
        let ct = format!("multipart/form-data; boundary={long}");
        assert_eq!(text(&ct, body.as_bytes(), None, Some(&f)), "x");
    }
}
