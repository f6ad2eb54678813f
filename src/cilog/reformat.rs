//! A Travis CI log shown as another CI system would have written it: the
//! CI's own lines (fold markers, step command echoes, the failed-step
//! marker, the end-of-build line) rewritten into that system's forms, and
//! that system's timestamp put before every physical line. The tool output
//! in between is left byte for byte, and every line ends where it ended
//! (the terminators are kept, except that CircleCI's step start, which it
//! prints on a line of its own, ends with `\n` where Travis's hidden marker
//! ended with a lone `\r`: one line end either way), so a line keeps its
//! number and the human chunk of the labelled data still points at the
//! same lines.
//!
//! The labelled logs are all Travis CI; the filter will also see GitHub
//! Actions, GitLab, Jenkins, Azure Pipelines, Buildkite and CircleCI logs. `sift eval cilog --as FORMAT` scores
//! the held-out logs in another format (training stays on the originals)
//! to measure how much a verdict depends on the CI's framing rather than
//! on what failed.

/// The formats a Travis log can be rewritten into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiFormat {
    Github,
    Gitlab,
    Jenkins,
    Azure,
    Buildkite,
    Circleci,
}

impl CiFormat {
    pub const ALL: [CiFormat; 6] = [
        CiFormat::Github,
        CiFormat::Gitlab,
        CiFormat::Jenkins,
        CiFormat::Azure,
        CiFormat::Buildkite,
        CiFormat::Circleci,
    ];

    pub fn parse(s: &str) -> Option<CiFormat> {
        CiFormat::ALL.into_iter().find(|f| f.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CiFormat::Github => "github",
            CiFormat::Gitlab => "gitlab",
            CiFormat::Jenkins => "jenkins",
            CiFormat::Azure => "azure",
            CiFormat::Buildkite => "buildkite",
            CiFormat::Circleci => "circleci",
        }
    }

    /// The timestamp this system puts before the `k`-th physical line.
    fn stamp(self, k: u64, out: &mut Vec<u8>) {
        use std::io::Write;
        let (m, s, frac) = ((k / 60_000) % 60, (k / 1_000) % 60, k % 1_000);
        let _ = match self {
            CiFormat::Github => write!(out, "2024-01-02T03:{m:02}:{s:02}.{frac:03}0000Z "),
            CiFormat::Gitlab => write!(out, "2024-01-02T03:{m:02}:{s:02}.{frac:03}000Z 00O "),
            CiFormat::Jenkins => write!(out, "[2024-01-02T03:{m:02}:{s:02}.{frac:03}Z] "),
            CiFormat::Azure => write!(out, "2024-01-02T03:{m:02}:{s:02}.{frac:03}1234Z "),
            // Buildkite: an APC escape with the time in milliseconds.
            CiFormat::Buildkite => write!(out, "\x1b_bk;t={}\x07", 1_704_164_645_000 + k),
            // CircleCI's step output has no timestamps.
            CiFormat::Circleci => Ok(()),
        };
    }
}

/// `log` (Travis CI) as `to` would have written it; see the module docs.
pub fn from_travis(log: &[u8], to: CiFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(log.len() + log.len() / 8);
    let mut rest = log;
    let mut physical = 0u64;
    let mut line_start = true;
    while !rest.is_empty() {
        let end = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
        let (seg, tail) = rest.split_at(end);
        let term = match tail {
            [b'\r', b'\n', ..] => 2,
            [] => 0,
            _ => 1,
        };
        if line_start {
            to.stamp(physical, &mut out);
            physical += 1;
        }
        let before = out.len();
        let step_start = rewrite(seg, to, &mut out);
        if term == 0 && !seg.is_empty() && out.len() == before {
            // The log's last line, unterminated, rewritten to nothing (a
            // fold end, which Buildkite and CircleCI do not print): still
            // a line, as it was.
            out.push(b'\n');
        }
        // CircleCI prints a step's shebang on a line of its own: a Travis
        // marker hidden by a lone `\r` (`travis_time:start:..\r$ cmd`)
        // becomes a shown line (`\n` ends one line as `\r` does, so the
        // line numbers stay).
        let term_bytes: &[u8] = if step_start && term == 1 && tail[0] == b'\r' {
            b"\n"
        } else {
            &tail[..term]
        };
        out.extend_from_slice(term_bytes);
        // A lone `\r` ends a line but not the physical line: no stamp.
        line_start = term_bytes.first() != Some(&b'\r') || term == 2;
        rest = &tail[term..];
    }
    out
}

/// One `\r`/`\n`-free segment, rewritten when it is one of Travis's own
/// lines, else copied. True when it became a CircleCI step start.
fn rewrite(seg: &[u8], to: CiFormat, out: &mut Vec<u8>) -> bool {
    let ansi = leading_ansi(seg);
    let (pre, body) = seg.split_at(ansi);
    let mut put = |s: &[u8]| {
        out.extend_from_slice(pre);
        out.extend_from_slice(s);
    };
    if let Some(name) = body
        .strip_prefix(b"travis_fold:start:")
        .or_else(|| body.strip_prefix(b"travis_time:start:"))
    {
        match to {
            CiFormat::Github => put(b"##[endgroup]"),
            CiFormat::Gitlab => put(&[b"section_start:1704164645:", name].concat()),
            CiFormat::Jenkins => put(&[b"[Pipeline] { (", name, b")"].concat()),
            CiFormat::Azure => put(&[b"##[section]Starting: ", name].concat()),
            CiFormat::Buildkite => put(&[b"--- ", name].concat()),
            CiFormat::Circleci => {
                put(b"#!/bin/bash -eo pipefail");
                return true;
            }
        }
    } else if let Some(name) = body
        .strip_prefix(b"travis_fold:end:")
        .or_else(|| body.strip_prefix(b"travis_time:end:"))
    {
        match to {
            CiFormat::Github => put(b"##[endgroup]"),
            CiFormat::Gitlab => put(&[b"section_end:1704164646:", name].concat()),
            CiFormat::Jenkins => put(b"[Pipeline] }"),
            CiFormat::Azure => put(&[b"##[section]Finishing: ", name].concat()),
            CiFormat::Buildkite | CiFormat::Circleci => put(b""),
        }
    } else if let Some(cmd) = body.strip_prefix(b"$ ") {
        match to {
            CiFormat::Github => put(&[b"##[group]Run ", cmd].concat()),
            CiFormat::Gitlab => put(body),
            CiFormat::Jenkins => put(&[b"+ ", cmd].concat()),
            CiFormat::Azure => put(&[b"##[command]", cmd].concat()),
            CiFormat::Buildkite => put(body),
            CiFormat::Circleci => put(cmd),
        }
    } else if let Some(code) = failed_step_code(body) {
        match to {
            CiFormat::Github => {
                put(&[b"##[error]Process completed with exit code ", code, b"."].concat())
            }
            CiFormat::Gitlab => put(&[b"ERROR: Job failed: exit code ", code].concat()),
            CiFormat::Jenkins => put(&[b"ERROR: script returned exit code ", code].concat()),
            CiFormat::Azure => put(&[b"##[error]Bash exited with code '", code, b"'."].concat()),
            CiFormat::Buildkite => {
                put(&["🚨 Error: The command exited with status ".as_bytes(), code].concat())
            }
            CiFormat::Circleci => put(&[b"Exited with code exit status ", code].concat()),
        }
    } else if body.starts_with(b"Done. Your build exited with ") {
        match to {
            CiFormat::Github => put(b"Cleaning up orphan processes"),
            CiFormat::Gitlab => put(b"Cleaning up project directory and file based variables"),
            CiFormat::Jenkins => put(b"Finished: FAILURE"),
            CiFormat::Azure => put(b"##[section]Finishing: Job"),
            CiFormat::Buildkite => put(b"^^^ +++"),
            // CircleCI has no end-of-build line in a step's output (its
            // "CircleCI received exit code N" follows the failed step).
            CiFormat::Circleci => put(b""),
        }
    } else {
        put(body);
    }
    false
}

/// Bytes of ANSI CSI sequences (`ESC [ ... final`) at the start of `s`.
fn leading_ansi(s: &[u8]) -> usize {
    let mut k = 0;
    while s.get(k) == Some(&0x1b) && s.get(k + 1) == Some(&b'[') {
        let mut j = k + 2;
        while s.get(j).is_some_and(|b| (0x20..0x40).contains(b)) {
            j += 1;
        }
        if !s.get(j).is_some_and(|b| (0x40..0x7f).contains(b)) {
            break;
        }
        k = j + 1;
    }
    k
}

/// The exit code of Travis's failed-step marker, `The command "…" exited
/// with N.` or `The command "…" failed and exited with N during .` (N ≠ 0).
fn failed_step_code(s: &[u8]) -> Option<&[u8]> {
    if !s.starts_with(b"The command \"") {
        return None;
    }
    let at = memchr::memmem::rfind(s, b"exited with ")? + b"exited with ".len();
    let n = s[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let code = &s[at..at + n];
    (n > 0 && code != b"0").then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cilog::normalize::LineSplitter;

    fn lines(log: &[u8]) -> Vec<(u64, String)> {
        let mut sp = LineSplitter::new();
        let mut v = Vec::new();
        let mut emit = |n: u64, s: &[u8]| v.push((n, String::from_utf8_lossy(s).into_owned()));
        sp.feed(log, &mut emit);
        sp.finish(&mut emit);
        v
    }

    const TRAVIS: &[u8] =
        b"travis_fold:start:install\r\x1b[0Ktravis_time:start:0c1d2e\r\x1b[0K$ npm install\r\n\
        Downloading  10%\rDownloading 100%\r\n\
        \x1b[31;1mnpm ERR!\x1b[0m code E404\r\n\
        travis_time:end:0c1d2e:start=1,finish=2,duration=1\r\x1b[0K\r\n\
        travis_fold:end:install\r\x1b[0K\r\n\
        The command \"npm install\" failed and exited with 1 during .\r\n\
        \r\n\
        Done. Your build exited with 1.\r\n";

    /// The rewritten log has the same lines with the same numbers, except
    /// the CI's own lines, which read as the other system writes them.
    #[test]
    fn same_lines_same_numbers_in_each_format() {
        let orig = lines(TRAVIS);
        assert_eq!(orig.len(), 5, "{orig:?}");
        for to in CiFormat::ALL {
            let got = lines(&from_travis(TRAVIS, to));
            let numbers = |v: &[(u64, String)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
            // Azure's end-of-job line is a `##[section]` marker, and
            // CircleCI has none: empty.
            let want = match to {
                CiFormat::Azure | CiFormat::Circleci => &orig[..4],
                _ => &orig[..],
            };
            assert_eq!(numbers(&got), numbers(want), "{to:?}: {got:?}");
            let text: Vec<&str> = got.iter().map(|x| x.1.as_str()).collect();
            let (cmd, marker, done) = match to {
                CiFormat::Github => (
                    "Run npm install",
                    "Process completed with exit code 1.",
                    "Cleaning up orphan processes",
                ),
                CiFormat::Gitlab => (
                    "$ npm install",
                    "ERROR: Job failed: exit code 1",
                    "Cleaning up project directory and file based variables",
                ),
                CiFormat::Jenkins => (
                    "+ npm install",
                    "ERROR: script returned exit code 1",
                    "Finished: FAILURE",
                ),
                CiFormat::Azure => ("$ npm install", "Bash exited with code '1'.", ""),
                CiFormat::Buildkite => (
                    "$ npm install",
                    "🚨 Error: The command exited with status 1",
                    "^^^ +++",
                ),
                // The command after the step's shebang reads as `$ cmd`.
                CiFormat::Circleci => ("$ npm install", "Exited with code exit status 1", ""),
            };
            let mut want = vec![cmd, "Downloading 100%", "npm ERR! code E404", marker, done];
            want.retain(|l| !l.is_empty());
            assert_eq!(text, want, "{to:?}");
        }
    }

    #[test]
    fn every_physical_line_gets_a_stamp_and_terminators_stay() {
        let got = from_travis(b"a\r\nb\rc\nd", CiFormat::Github);
        let s = String::from_utf8(got).unwrap();
        let parts: Vec<&str> = s.split(['\n', '\r']).collect();
        assert_eq!(parts.len(), 5, "{s:?}");
        assert!(
            parts[0].ends_with("Z a") && parts[0].starts_with("2024-"),
            "{s:?}"
        );
        assert_eq!(parts[1], "", "{s:?}");
        assert!(parts[2].ends_with("Z b"), "{s:?}");
        assert_eq!(parts[3], "c", "{s:?}");
        assert!(parts[4].ends_with("Z d"), "{s:?}");
        // A log that ends in an unterminated marker that a format does not
        // print (Buildkite's and CircleCI's fold end) or a step start keeps
        // its line count (found by the `cilog` fuzz target).
        let total = |log: &[u8]| {
            let mut sp = LineSplitter::new();
            let mut e = |_: u64, _: &[u8]| {};
            sp.feed(log, &mut e);
            sp.finish(&mut e);
            sp.total_lines()
        };
        for log in [
            &b"x\ntravis_fold:end:install"[..],
            b"x\ntravis_fold:start:install",
            b"x\ntravis_time:start:0c1d\r",
            b"x\ntravis_time:start:0c1d\r\r\n$ make\r",
        ] {
            for to in CiFormat::ALL {
                assert_eq!(total(&from_travis(log, to)), total(log), "{to:?} {log:?}");
            }
        }
        assert_eq!(failed_step_code(b"The command \"x\" exited with 0."), None);
        assert_eq!(
            failed_step_code(b"The command \"make\" exited with 2."),
            Some(&b"2"[..])
        );
    }
}
