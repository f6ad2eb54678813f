//! The JSON access-log line, written straight into the log writer.
//!
//! Through tracing's JSON formatter one access line cost about 53,000
//! instructions, more than the rest of a proxied request (callgrind,
//! docs/benchmarks.md): every field went through a visitor, a `Debug` or
//! `Display` into a fresh `String`, then serde. The line here is built in
//! a reused per-thread buffer, with serde_json only for the escaping of
//! strings and the printing of floats, so it is byte for byte what
//! tracing-subscriber's JSON layer wrote (`{"timestamp":…,"level":"INFO",
//! "message":"access",<fields>,"target":"sift::access"}`). The log filter
//! still decides (`log.level`, `RUST_LOG`, `POST /logging`): the caller
//! asks `tracing::enabled!` first. Every JSON access line is written so:
//! the proxy's (`access`), the TCP proxy's (`tcp`) and the Istio mode's
//! (`envoy_check`, `envoy_ratelimit`). The text format keeps the tracing
//! events.

use std::cell::RefCell;
use std::io::Write;

/// Appends one JSON object's members to a buffer.
pub struct Line {
    buf: Vec<u8>,
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

impl Line {
    /// Start a line: timestamp (now), level and message (a plain word).
    fn start(buf: Vec<u8>, now: std::time::SystemTime, message: &str) -> Self {
        let mut l = Line { buf };
        l.buf.clear();
        l.buf.extend_from_slice(b"{\"timestamp\":\"");
        rfc3339_micros(&mut l.buf, now);
        l.buf
            .extend_from_slice(b"\",\"level\":\"INFO\",\"message\":");
        let _ = serde_json::to_writer(&mut l.buf, message);
        l
    }

    fn key(&mut self, k: &str) {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// A string member (JSON-escaped as serde_json escapes).
    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        let _ = serde_json::to_writer(&mut self.buf, v);
        self
    }

    /// A string member from `Display` (formatted straight into the
    /// buffer when it needs no escaping, as addresses and methods do not).
    pub fn display(&mut self, k: &str, v: impl std::fmt::Display) -> &mut Self {
        self.key(k);
        let at = self.buf.len();
        self.buf.push(b'"');
        let _ = write!(self.buf, "{v}");
        let plain = self.buf[at + 1..]
            .iter()
            .all(|b| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\');
        if plain {
            self.buf.push(b'"');
        } else {
            let s = String::from_utf8_lossy(&self.buf[at + 1..]).into_owned();
            self.buf.truncate(at);
            let _ = serde_json::to_writer(&mut self.buf, &s);
        }
        self
    }

    pub fn u64(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        let _ = serde_json::to_writer(&mut self.buf, &v);
        self
    }

    pub fn f64(&mut self, k: &str, v: f64) -> &mut Self {
        self.key(k);
        let _ = serde_json::to_writer(&mut self.buf, &v);
        self
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.key(k);
        self.buf
            .extend_from_slice(if v { b"true" } else { b"false" });
        self
    }

    fn finish(&mut self) {
        self.buf
            .extend_from_slice(b",\"target\":\"sift::access\"}\n");
    }
}

/// Build a line (`message`: `access`, `envoy_check`) with `fill` and hand
/// it to `w` (one write: the writer thread gets whole lines). The
/// per-thread buffer is reused.
pub fn write<W: Write>(w: &mut W, message: &str, fill: impl FnOnce(&mut Line)) {
    BUF.with(|b| {
        let buf = std::mem::take(&mut *b.borrow_mut());
        let mut line = Line::start(buf, std::time::SystemTime::now(), message);
        fill(&mut line);
        line.finish();
        let _ = w.write_all(&line.buf);
        let mut buf = line.buf;
        if buf.capacity() > 64 << 10 {
            buf = Vec::with_capacity(1024);
        }
        *b.borrow_mut() = buf;
    });
}

/// One line of nginx's (and Apache's) combined log format, for the tools
/// that read it (GoAccess, AWStats, log pipelines built for nginx):
/// `CLIENT - - [08/Dec/2026:00:12:01 +0000] "GET /path?query HTTP/1.1" 200 512 "REFERER" "USER-AGENT"`.
/// Strings are escaped as nginx escapes variables: `"`, `\` and bytes
/// outside printable ASCII as `\xHH`. The user is always `-` (sift does
/// not read a client's claimed Basic user into its log).
#[allow(clippy::too_many_arguments)]
pub fn write_combined<W: Write>(
    w: &mut W,
    client: impl std::fmt::Display,
    method: &str,
    path: &str,
    query: Option<&str>,
    protocol: &str,
    status: u16,
    bytes: u64,
    referer: Option<&[u8]>,
    user_agent: Option<&[u8]>,
) {
    BUF.with(|b| {
        let mut buf = std::mem::take(&mut *b.borrow_mut());
        buf.clear();
        let _ = write!(buf, "{client} - - [");
        common_log_time(&mut buf, std::time::SystemTime::now());
        buf.extend_from_slice(b"] \"");
        escaped(&mut buf, method.as_bytes());
        buf.push(b' ');
        escaped(&mut buf, path.as_bytes());
        if let Some(q) = query {
            buf.push(b'?');
            escaped(&mut buf, q.as_bytes());
        }
        buf.push(b' ');
        buf.extend_from_slice(protocol.as_bytes());
        let _ = write!(buf, "\" {status} {bytes} \"");
        escaped(&mut buf, referer.unwrap_or(b"-"));
        buf.extend_from_slice(b"\" \"");
        escaped(&mut buf, user_agent.unwrap_or(b"-"));
        buf.extend_from_slice(b"\"\n");
        let _ = w.write_all(&buf);
        if buf.capacity() > 64 << 10 {
            buf = Vec::with_capacity(1024);
        }
        *b.borrow_mut() = buf;
    });
}

/// nginx's escaping of a logged variable.
fn escaped(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

/// `08/Dec/2026:00:12:01 +0000`: the common log format's time, in UTC.
fn common_log_time(out: &mut Vec<u8>, t: std::time::SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let _ = write!(
        out,
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m as usize).clamp(1, 12) - 1],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// `2026-12-07T23:55:17.876511Z`: UTC, microseconds, as tracing-subscriber
/// writes its timestamps.
pub fn rfc3339_micros(out: &mut Vec<u8>, t: std::time::SystemTime) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    // Digits by hand: `write!` with widths cost about 2,000 instructions.
    let digits = |out: &mut Vec<u8>, n: u64, width: u32| {
        for i in (0..width).rev() {
            out.push(b'0' + (n / 10u64.pow(i) % 10) as u8);
        }
    };
    digits(out, y.clamp(0, 9999) as u64, 4);
    out.push(b'-');
    digits(out, u64::from(m), 2);
    out.push(b'-');
    digits(out, u64::from(day), 2);
    out.push(b'T');
    digits(out, rem / 3600, 2);
    out.push(b':');
    digits(out, rem / 60 % 60, 2);
    out.push(b':');
    digits(out, rem % 60, 2);
    out.push(b'.');
    digits(out, u64::from(d.subsec_micros()), 6);
    out.push(b'Z');
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's
/// `civil_from_days`.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn ts(secs: u64, micros: u32) -> String {
        let mut b = Vec::new();
        rfc3339_micros(
            &mut b,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(u64::from(micros)),
        );
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(ts(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(ts(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(ts(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(ts(1_796_687_717, 876_511), "2026-12-07T23:55:17.876511Z");
        assert_eq!(ts(4_102_444_800, 0), "2100-01-01T00:00:00.000000Z");
    }

    #[test]
    fn combined_lines_are_nginx_s() {
        let mut out = Vec::new();
        write_combined(
            &mut out,
            "203.0.113.9",
            "GET",
            "/a b",
            Some("q=1&token=[redacted]"),
            "HTTP/1.1",
            200,
            512,
            Some(b"https://ex.com/\"x\""),
            Some("Mozilla/5.0 \u{e9}".as_bytes()),
        );
        let line = String::from_utf8(out).unwrap();
        let (head, rest) = line.split_once(" [").unwrap();
        assert_eq!(head, "203.0.113.9 - -");
        let (time, rest) = rest.split_once("] ").unwrap();
        assert_eq!(time.len(), "08/Dec/2026:00:12:01 +0000".len(), "{time}");
        assert!(
            time.ends_with(" +0000") && time.as_bytes()[2] == b'/',
            "{time}"
        );
        assert_eq!(
            rest,
            "\"GET /a b?q=1&token=[redacted] HTTP/1.1\" 200 512 \"https://ex.com/\\x22x\\x22\" \"Mozilla/5.0 \\xC3\\xA9\"\n"
        );
        let mut t = Vec::new();
        common_log_time(
            &mut t,
            UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723),
        );
        assert_eq!(String::from_utf8(t).unwrap(), "29/Feb/2000:01:02:03 +0000");
    }

    #[test]
    fn lines_are_json_with_tracing_s_shape() {
        let mut out = Vec::new();
        write(&mut out, "access", |l| {
            l.str("request_id", "r-1")
                .display(
                    "remote",
                    "127.0.0.1:5".parse::<std::net::SocketAddr>().unwrap(),
                )
                .display("host", "bad\"host\\x\u{1}")
                .str("path", "/a\"b\n")
                .u64("status", 200)
                .f64("duration_ms", 7.500147)
                .bool("completed", true);
        });
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\"target\":\"sift::access\"}\n"), "{text}");
        assert!(text.starts_with("{\"timestamp\":\""), "{text}");
        assert!(
            text.contains(",\"level\":\"INFO\",\"message\":\"access\",\"request_id\":\"r-1\",")
        );
        assert!(text.contains("\"duration_ms\":7.500147,"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["remote"], "127.0.0.1:5");
        assert_eq!(v["host"], "bad\"host\\x\u{1}");
        assert_eq!(v["path"], "/a\"b\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["completed"], true);
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
    }
}
