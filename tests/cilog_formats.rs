//! The CI-log classifier was trained on Travis logs only. GitHub Actions,
//! GitLab and Jenkins wrap the same tool output differently: timestamps on
//! every line, colour codes, group markers, their own "step failed" lines.
//! These tests take real logs from the data set, rewrite them as each of
//! those systems would print them (line for line, so line numbers are kept),
//! and measure how often the verdict (class and evidence line) is the same
//! as on the original: normalisation should make the wrapping invisible.

mod support;

use std::path::PathBuf;

use sift::cilog::CilogModel;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> CilogModel {
    CilogModel::load(&root().join("filters/cilog/model.bin")).expect("cilog model")
}

/// Every 10th labelled log (by path), at most 2 MB each: 64 logs of many
/// repositories and languages.
fn logs() -> Vec<(PathBuf, Vec<u8>)> {
    let data = std::env::var_os("SIFT_CILOG_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data/cilogs"));
    let mut paths = Vec::new();
    support::files_below(&data.join("logs"), &mut paths);
    paths.sort();
    assert!(
        paths.len() >= 600,
        "expected the 637 logs in {}",
        data.display()
    );
    paths
        .into_iter()
        .step_by(10)
        .map(|p| {
            let b = std::fs::read(&p).expect("read a log");
            (p, b)
        })
        .filter(|(_, b)| b.len() <= 2 << 20)
        .collect()
}

/// Split into lines the way the classifier numbers them (`\n`, `\r\n` or a
/// lone `\r` end a line), keeping each line's terminator.
fn lines(b: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                out.push((&b[start..i], &b[i..i + 1]));
                i += 1;
                start = i;
            }
            b'\r' => {
                let end = if b.get(i + 1) == Some(&b'\n') {
                    i + 2
                } else {
                    i + 1
                };
                out.push((&b[start..i], &b[i..end]));
                i = end;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < b.len() {
        out.push((&b[start..], b""));
    }
    out
}

/// Travis's own wrapping, taken off a line: fold and time markers (which
/// the other systems do not print) and the failed-step line, returned as
/// its exit code.
fn travis_marker(line: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(line).ok()?;
    let rest = s.strip_prefix("The command \"")?;
    let code = rest.rsplit_once("\" exited with ")?.1;
    Some(code.trim_end_matches('.'))
}

#[derive(Clone, Copy, Debug)]
enum Format {
    GithubActions,
    Gitlab,
    Jenkins,
}

/// The log as `f` would print it, line for line: its timestamps, its
/// colours, its group markers, its way of echoing a step's command (Travis
/// prints `$ cmd`) and its failed-step line.
fn rewrite(log: &[u8], f: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(log.len() * 2);
    for (k, (line, end)) in lines(log).into_iter().enumerate() {
        let secs = 1_700_000_000u64 + k as u64 / 10;
        let (mm, ss) = ((secs / 60) % 60, secs % 60);
        let code = travis_marker(line);
        let cmd = line.strip_prefix(b"$ ");
        match f {
            Format::GithubActions | Format::Jenkins => {
                let gh = matches!(f, Format::GithubActions);
                let stamp = if gh {
                    format!("2023-11-14T22:{mm:02}:{ss:02}.{:07}Z ", k % 10_000_000)
                } else {
                    format!("[2023-11-14T22:{mm:02}:{ss:02}.{:03}Z] ", k % 1000)
                };
                out.extend_from_slice(stamp.as_bytes());
                match (code, cmd) {
                    (Some(c), _) => out.extend_from_slice(
                        if gh {
                            format!("##[error]Process completed with exit code {c}.")
                        } else {
                            format!("ERROR: script returned exit code {c}")
                        }
                        .as_bytes(),
                    ),
                    (None, Some(cmd)) => {
                        out.extend_from_slice(if gh {
                            &b"##[group]Run "[..]
                        } else {
                            &b"+ "[..]
                        });
                        out.extend_from_slice(cmd);
                    }
                    (None, None) => out.extend_from_slice(line),
                }
            }
            Format::Gitlab => match (code, cmd) {
                (Some(c), _) => out.extend_from_slice(
                    format!("\x1b[0;31mERROR: Job failed: exit code {c}\x1b[0;m").as_bytes(),
                ),
                (None, Some(cmd)) => {
                    // A section per step: its start marker ends with `\r`,
                    // which the data's numbering counts as a line end.
                    out.extend_from_slice(
                        format!("section_start:{secs}:step_{k}\r\x1b[0K").as_bytes(),
                    );
                    out.extend_from_slice(b"\x1b[32;1m$ ");
                    out.extend_from_slice(cmd);
                    out.extend_from_slice(b"\x1b[0;m");
                }
                (None, None) => out.extend_from_slice(line),
            },
        }
        out.extend_from_slice(if end.is_empty() { b"" } else { b"\n" });
    }
    out
}

#[test]
fn verdicts_survive_other_ci_wrappings() {
    let m = model();
    let logs = logs();
    let mut report = Vec::new();
    let mut worst = 1.0f64;
    for f in [Format::GithubActions, Format::Gitlab, Format::Jenkins] {
        let (mut class_same, mut text_same) = (0, 0);
        let mut diffs = Vec::new();
        for (p, log) in &logs {
            let a = m.classify(log);
            let b = m.classify(&rewrite(log, f));
            // GitLab's section markers add lines (their `\r`), so compare
            // the evidence by its text; the others keep the numbering too.
            let c = a.class == b.class;
            let t = a.text == b.text && (matches!(f, Format::Gitlab) || a.line == b.line);
            class_same += usize::from(c);
            text_same += usize::from(t);
            if !(c && t) && diffs.len() < 5 {
                diffs.push(format!(
                    "  {}: {:?} line {} {:?} -> {:?} line {} {:?}",
                    p.file_name().unwrap().to_string_lossy(),
                    a.class,
                    a.line,
                    a.text.chars().take(60).collect::<String>(),
                    b.class,
                    b.line,
                    b.text.chars().take(60).collect::<String>()
                ));
            }
        }
        let n = logs.len();
        worst = worst.min(class_same.min(text_same) as f64 / n as f64);
        report.push(format!(
            "{f:?}: same class {class_same}/{n}, same evidence {text_same}/{n}\n{}",
            diffs.join("\n")
        ));
    }
    let report = report.join("\n");
    eprintln!("{report}");
    // Measured 2026-12-05: every verdict the same in all three wrappings.
    assert!(
        worst >= 0.95,
        "verdicts change with the CI wrapping:\n{report}"
    );
}
