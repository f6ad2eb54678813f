//! The CI-log classifier: real logs from ../shared/data/cilogs (or
//! $SIFT_CILOG_DATA), normalisation of each CI's format, gzip input, bounded
//! memory, grouped cross-validation, corrupt model files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sift::cilog::normalize::LineSplitter;
use sift::cilog::train::{self, Example, Recipe};
use sift::cilog::{CilogError, CilogModel, Class};

fn data_dir() -> PathBuf {
    let d = train::default_data_dir();
    assert!(
        d.join("labels.csv").is_file(),
        "CI-log data not found at {} (labels.csv): these tests need the labelled logs; \
         set SIFT_CILOG_DATA to the folder holding labels.csv and logs/",
        d.display()
    );
    d
}

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("filters/cilog/model.bin")
}

fn model() -> CilogModel {
    CilogModel::load(&model_path()).expect("filters/cilog/model.bin loads")
}

fn all_data() -> Vec<Example> {
    let d = data_dir();
    train::load_labelled(&d.join("labels.csv"), &d.join("logs")).expect("labelled logs load")
}

/// Byte range of lines `first..=last` (1-based, universal newlines).
fn excerpt(raw: &[u8], first: u64, last: u64) -> &[u8] {
    let mut line = 1u64;
    let mut start = if first <= 1 { Some(0) } else { None };
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'\n' || b == b'\r' {
            let end = if b == b'\r' && raw.get(i + 1) == Some(&b'\n') {
                i + 2
            } else {
                i + 1
            };
            if line == last {
                return &raw[start.unwrap_or(0)..end];
            }
            line += 1;
            if line == first {
                start = Some(end);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    &raw[start.unwrap_or(raw.len())..]
}

/// Each class on a real excerpt: the human chunk with 20 lines before and
/// 10 after. These logs are in the shipped model's training set, so this is
/// a regression test of the serving path, not a measure of quality (see
/// `grouped_cv_quality_guard`).
#[test]
fn each_class_on_a_real_excerpt() {
    let data = all_data();
    let m = model();
    // (id, class, evidence expected inside the chunk)
    let cases = [
        ("L0526", Class::Test, true),
        ("L0623", Class::Compile, true),
        ("L0366", Class::Dependency, true),
        ("L0766", Class::Config, true),
        ("L0701", Class::Lint, true),
        ("L0138", Class::Infra, true),
        ("L0128", Class::Timeout, false),
        // (L0771, a vim-plug log whose chunk is "Success/Total: 136/138"
        // and the exit line, was the unknown case until the signature
        // features of 2026-12-04: the model now calls it test.)
        ("L0011", Class::Unknown, false),
    ];
    for (id, class, inside) in cases {
        let ex = data.iter().find(|e| e.id == id).expect("id in labels.csv");
        assert_eq!(ex.label, class, "{id}: label in labels.csv");
        let (a, b) = ex.chunk.expect("a chunk");
        let lo = a.saturating_sub(20).max(1);
        let part = excerpt(&ex.bytes, lo, b + 10);
        let v = m.classify(part);
        assert_eq!(v.class, class, "{id} ({}): {v:?}", ex.path);
        if inside {
            let line = v.line + lo - 1;
            assert!(
                (a..=b).contains(&line),
                "{id}: evidence line {line} outside the chunk {a}..={b}: {:?}",
                v.text
            );
        }
    }
}

/// Out of memory: no example in the data set, so rules recognise it. The
/// excerpts are shaped like real output: a real Travis log's tail (L0526)
/// with the out-of-memory report of each runtime appended, wordings as
/// printed by Node.js/V8, the JVM, bash (OOM-killed job), Python and GNU make.
#[test]
fn oom_on_real_log_tails() {
    let data = all_data();
    let m = model();
    let base = &data.iter().find(|e| e.id == "L0526").expect("L0526").bytes;
    let n_base = {
        let mut sp = LineSplitter::new();
        sp.feed(base, &mut |_, _| {});
        sp.finish(&mut |_, _| {});
        sp.total_lines()
    };
    let tails = [
        "<--- Last few GCs --->\n\n[1234:0x5581]   95000 ms: Mark-sweep 2047.1 (2050.3) -> 2046.5 (2051.3) MB\n\nFATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory\n",
        "[ERROR] Failed to execute goal: Execution default-test of goal maven-surefire-plugin:2.22.2:test failed\nException in thread \"main\" java.lang.OutOfMemoryError: Java heap space\n\tat java.util.Arrays.copyOf(Arrays.java:3332)\n",
        "/home/travis/build.sh: line 12:  4711 Killed                  cargo build --release\n",
        "Traceback (most recent call last):\n  File \"train.py\", line 40, in <module>\n    x = np.zeros((100000, 100000))\nMemoryError: Unable to allocate 74.5 GiB for an array\n",
        "cc1plus: out of memory allocating 65536 bytes after a total of 2147483648 bytes\nmake: *** [all] Error 137\n",
    ];
    for t in tails {
        let (log, _) = with_tail(base, t);
        let v = m.classify(&log);
        assert_eq!(v.class, Class::Oom, "{t:?}: {v:?}");
        assert!(v.line > n_base, "evidence in the appended tail: {v:?}");
        assert!(v.confidence >= 0.9);
    }
}

/// The job-timeout lines of CI systems the labelled logs do not come from,
/// as those systems print them (Azure Pipelines: microsoft/azure-pipelines-
/// agent#3842, microsoft/azure-pipelines-yaml#227; CircleCI: nspcc-dev/
/// neo-go#2436; GitHub Actions, GitLab, Jenkins: their documented
/// wordings), each appended in its CI's framing to a real log of the set:
/// the verdict is `timeout`, its evidence the appended line.
#[test]
fn other_cis_timeouts_on_a_real_log() {
    let data = all_data();
    let m = model();
    let base = &data.iter().find(|e| e.id == "L0526").expect("L0526").bytes;
    let tails = [
        "2024-01-02T03:04:05.1234567Z ##[error]The job running on agent Hosted Agent ran longer than the maximum time of 60 minutes. For more information, see https://go.microsoft.com/fwlink/?linkid=2077134\n",
        "2024-01-02T03:04:05.1234567Z ##[error]The job exceeded the maximum allowed time of 01:00:00 and was stopped.\n",
        "Too long with no output (exceeded 10m0s): context deadline exceeded\n",
        "2024-01-02T03:04:05.1234567Z ##[error]The job running on runner GitHub Actions 2 has exceeded the maximum execution time of 360 minutes.\n",
        "\x1b[31;1mERROR: Job failed: execution took longer than 1h0m0s seconds\n\x1b[0;m",
        "[2024-01-02T03:04:05.123Z] Build timed out (after 10 minutes). Marking the build as failed.\n",
    ];
    for t in tails {
        let (log, at) = with_tail(base, t);
        let v = m.classify(&log);
        assert_eq!(v.class, Class::Timeout, "{t:?}: {v:?}");
        assert_eq!(v.line, at, "{t:?}: {v:?}");
    }
}

/// `base` with `tail` appended on a line of its own, and the number of
/// the tail's first line (counting `\n`s: the base logs used have no lone
/// `\r` line ends).
fn with_tail(base: &[u8], tail: &str) -> (Vec<u8>, u64) {
    let mut log = base.to_vec();
    if !log.ends_with(b"\n") {
        log.push(b'\n');
    }
    let at = log.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    log.extend_from_slice(tail.as_bytes());
    (log, at)
}

fn normalised(input: &[u8]) -> Vec<(u64, String)> {
    let mut sp = LineSplitter::new();
    let mut v = Vec::new();
    let mut emit = |n: u64, s: &[u8]| v.push((n, String::from_utf8_lossy(s).into_owned()));
    // Feed in 3-byte chunks: splits inside escapes and UTF-8.
    for c in input.chunks(3) {
        sp.feed(c, &mut emit);
    }
    sp.finish(&mut emit);
    v
}

#[test]
fn github_actions_format() {
    let log = "2024-01-02T03:04:05.1234567Z ##[group]Run npm test\n\
               2024-01-02T03:04:05.1234568Z \x1b[36;1mnpm test\x1b[0m\n\
               2024-01-02T03:04:05.1234569Z ##[endgroup]\n\
               2024-01-02T03:04:06.0000000Z   \u{2717} renders the header (12 ms)\n\
               2024-01-02T03:04:07.0000000Z ##[error]Process completed with exit code 1.\n";
    assert_eq!(
        normalised(log.as_bytes()),
        vec![
            (1, "Run npm test".into()),
            (2, "npm test".into()),
            (4, "  \u{2717} renders the header (12 ms)".into()),
            (5, "Process completed with exit code 1.".into()),
        ]
    );
}

#[test]
fn gitlab_format() {
    let log = "\x1b[0KRunning with gitlab-runner 16.5.0 (853330f9)\x1b[0;m\n\
               section_start:1700000000:prepare_script\r\x1b[0K\x1b[0K\x1b[36;1mPreparing environment\x1b[0;m\x1b[0;m\n\
               section_end:1700000001:prepare_script\r\x1b[0K\n\
               2024-01-02T03:04:05.123456Z 00O+ $ cargo test\n\
               2024-01-02T03:04:06.123456Z 01E error[E0425]: cannot find value `x` in this scope\n\
               \x1b[31;1mERROR: Job failed: exit code 101\n\x1b[0;m";
    assert_eq!(
        normalised(log.as_bytes()),
        vec![
            (1, "Running with gitlab-runner 16.5.0 (853330f9)".into()),
            (3, "Preparing environment".into()),
            (6, "$ cargo test".into()),
            (
                7,
                "error[E0425]: cannot find value `x` in this scope".into()
            ),
            (8, "ERROR: Job failed: exit code 101".into()),
        ]
    );
}

#[test]
fn jenkins_format() {
    let log = "[Pipeline] stage\n\
               [Pipeline] { (Build)\n\
               [2024-01-02T03:04:05.123Z] + mvn -B verify\n\
               [2024-01-02T03:04:09.456Z] [ERROR] COMPILATION ERROR :\n\
               12:34:56 BUILD FAILURE\n\
               12:34:57.123 Finished: FAILURE\n";
    assert_eq!(
        normalised(log.as_bytes()),
        vec![
            (3, "+ mvn -B verify".into()),
            (4, "[ERROR] COMPILATION ERROR :".into()),
            (5, "BUILD FAILURE".into()),
            (6, "Finished: FAILURE".into()),
        ]
    );
}

#[test]
fn travis_format_and_progress() {
    let log = "travis_fold:start:install\r\x1b[0Ktravis_time:start:0c1d2e\r\x1b[0K$ npm install\r\n\
               Downloading  10%\rDownloading  55%\rDownloading 100%\r\n\
               \x1b[31;1mnpm ERR!\x1b[0m code E404\r\r\n\
               \r\n\
               travis_time:end:0c1d2e:start=1,finish=2,duration=1\r\x1b[0K\r\n\
               travis_fold:end:install\r\x1b[0K\r\n\
               The command \"npm install\" failed and exited with 1 during .\r\n";
    assert_eq!(
        normalised(log.as_bytes()),
        vec![
            (3, "$ npm install".into()),
            (6, "Downloading 100%".into()),
            (7, "npm ERR! code E404".into()),
            (
                14,
                "The command \"npm install\" failed and exited with 1 during .".into()
            ),
        ]
    );
}

/// The same failure written by another CI gets the same verdict: every
/// 4th real log (Travis CI), rewritten as GitHub Actions, GitLab,
/// Jenkins, Azure Pipelines, Buildkite and CircleCI would have written it
/// (the CI's markers, step echoes and
/// timestamps; tool output and line numbers kept, `sift::cilog::reformat`).
/// The shipped model has seen these logs (in Travis form), so this guards
/// the framing, not the quality; `sift eval cilog --as all` gives the
/// cross-validated figures. Before another CI's failed-step marker read as
/// Travis's, GitLab's `ERROR: Job failed: exit code 1` drew the evidence
/// to itself: here GitLab kept the class of 96.9 % and the line of 93.8 %
/// of the logs, Jenkins 97.5 % and 94.4 % (now 98.1 / 97.5 and 98.8 /
/// 97.5 %; GitHub 98.8 / 98.1 %).
#[test]
fn other_ci_formats_keep_the_verdict() {
    const CLASS_SAME: f64 = 0.975;
    const LINE_SAME: f64 = 0.96;
    use sift::cilog::reformat::{CiFormat, from_travis};
    let m = model();
    let data = all_data();
    let sample: Vec<&Example> = data.iter().step_by(4).collect();
    let orig: Vec<_> = sample.iter().map(|e| m.classify(&e.bytes)).collect();
    for to in CiFormat::ALL {
        let (mut class, mut line) = (0, 0);
        for (e, a) in sample.iter().zip(&orig) {
            let b = m.classify(&from_travis(&e.bytes, to));
            class += usize::from(a.class == b.class);
            line += usize::from(a.line == b.line);
        }
        let n = sample.len() as f64;
        let (c, l) = (class as f64 / n, line as f64 / n);
        eprintln!("{to:?}: class {c:.3} evidence line {l:.3} of {n} logs");
        // CircleCI echoes a step's command bare after the shell's
        // shebang; read as Travis's `$ cmd` it agrees as the others do
        // (0.975 / 0.963 when this bound was set, 2026-12-07; 0.938 /
        // 0.938 before; the model card has the cross-validated figures).
        assert!(
            c >= CLASS_SAME && l >= LINE_SAME,
            "{to:?}: class {c:.3} line {l:.3}"
        );
    }
}

/// The evidence line number of a full verdict is the original log's line,
/// through timestamps, folds and CR progress (the rule line is the evidence).
#[test]
fn verdict_line_numbers_are_original() {
    let m = model();
    let log = "2024-01-02T03:04:05.1Z ##[group]Run make\n\
               2024-01-02T03:04:05.2Z \x1b[1mcompiling\x1b[0m  1%\r 50%\r100%\n\
               2024-01-02T03:04:05.3Z ##[endgroup]\n\
               2024-01-02T03:04:06.0Z cc1plus: out of memory allocating 65536 bytes\n\
               2024-01-02T03:04:06.1Z make: *** [all] Error 1\n";
    let v = m.classify(log.as_bytes());
    assert_eq!(v.class, Class::Oom);
    assert_eq!(v.line, 6, "{v:?}");
    assert_eq!(v.text, "cc1plus: out of memory allocating 65536 bytes");
    assert!(
        v.context.iter().any(|(n, t)| *n == 4 && t == "100%"),
        "{v:?}"
    );
}

fn sift() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sift"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn cli_reads_gzip_and_plain_alike() {
    let data = all_data();
    let ex = data.iter().find(|e| e.id == "L0623").expect("L0623");
    let dir = std::env::temp_dir().join(format!("sift-cilog-gz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("job.log");
    let gz = dir.join("job.log.gz");
    std::fs::write(&plain, &ex.bytes).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&ex.bytes).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let out = sift()
        .args(["classify", "--filter", "cilog"])
        .arg(&plain)
        .arg(&gz)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for k in ["class", "confidence", "line", "text", "context"] {
        assert_eq!(lines[0][k], lines[1][k], "{k}");
    }
    assert_eq!(lines[1]["file"], gz.display().to_string());
    assert!(lines[0]["line"].as_u64().unwrap() > 0);
    // stdin, gzip too.
    let mut child = sift()
        .args(["classify", "--filter", "cilog"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let gzb = std::fs::read(&gz).unwrap();
    child.stdin.take().unwrap().write_all(&gzb).unwrap();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["file"], "-");
    assert_eq!(v["line"], lines[0]["line"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// Scanning as the body streams gives the verdict of the whole log at once:
/// every real log, fed in random chunk sizes (1 byte to 256 KB, mixed within
/// a log, so chunks split lines, `\r\n` pairs, escape sequences and UTF-8
/// characters), has the same class, confidence, evidence line and context.
#[test]
fn real_logs_in_random_chunks_match_one_shot() {
    let data = all_data();
    let m = model();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut chunks = 0usize;
    for e in &data {
        let whole = m.classify(&e.bytes);
        let mut s = m.scanner();
        let mut rest: &[u8] = &e.bytes;
        while !rest.is_empty() {
            let r = next();
            let max = match r % 4 {
                0 => 16,
                1 => 4096,
                2 => 65_536,
                _ => 262_144,
            };
            let n = (((r >> 8) % max) as usize + 1).min(rest.len());
            s.feed(&rest[..n]);
            rest = &rest[n..];
            chunks += 1;
        }
        assert_eq!(s.bytes_seen(), e.bytes.len() as u64);
        assert_eq!(s.finish(), whole, "{}", e.path);
    }
    assert!(chunks > data.len() * 4, "{chunks} chunks");
}

/// A 50 MB log built from real logs, fed in odd-sized chunks: the
/// scanner's own buffers stay under 4 MB.
#[test]
fn fifty_mb_streamed_with_bounded_memory() {
    let data = all_data();
    let m = model();
    let mut s = m.scanner();
    let mut fed = 0usize;
    let mut max_retained = 0;
    let target = 50 << 20;
    'outer: loop {
        for e in &data {
            for c in e.bytes.chunks(65_537) {
                s.feed(c);
                fed += c.len();
                max_retained = max_retained.max(s.retained_bytes());
                if fed >= target {
                    break 'outer;
                }
            }
        }
    }
    assert_eq!(s.bytes_seen(), fed as u64);
    assert!(
        max_retained < 4 << 20,
        "scanner retained {max_retained} bytes"
    );
    let v = s.finish();
    assert!(v.line > 0);
}

/// `sift classify` on 50 MB of stdin: peak RSS (VmHWM) of the process stays
/// far below the input size.
#[test]
fn fifty_mb_stdin_peak_rss() {
    let data = all_data();
    let mut child = sift()
        .args(["classify", "--filter", "cilog"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut n = 0usize;
        while n < 50 << 20 {
            for e in &data {
                stdin.write_all(&e.bytes).unwrap();
                n += e.bytes.len();
            }
        }
    });
    let hwm = |pid: u32| -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        l.split_whitespace().nth(1)?.parse().ok()
    };
    let mut peak_kb = 0;
    while !writer.is_finished() {
        if let Some(h) = hwm(pid) {
            peak_kb = peak_kb.max(h);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    writer.join().unwrap();
    if let Some(h) = hwm(pid) {
        peak_kb = peak_kb.max(h);
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["line"].as_u64().unwrap() > 0);
    assert!(peak_kb > 0, "VmHWM was read");
    assert!(
        peak_kb < 40 * 1024,
        "peak RSS {peak_kb} kB for 50 MB of input"
    );
}

#[test]
fn bad_input_gives_a_verdict() {
    let m = model();
    assert_eq!(m.classify(b"").line, 0);
    let junk: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    assert!(m.classify(&junk).confidence.is_finite());
    let invalid = b"\xff\xfe error: \xc3\x28 bad utf-8 \xe2\x82\n".repeat(1000);
    let v = m.classify(&invalid);
    assert!(v.line > 0);
    let one_line = vec![b'a'; 10 << 20];
    let v = m.classify(&one_line);
    assert_eq!(v.line, 1);
    assert!(v.text.len() <= sift::cilog::KEEP);
}

#[test]
fn corrupt_model_files_are_errors() {
    let good = std::fs::read(model_path()).unwrap();
    assert!(CilogModel::from_bytes(&good).is_ok());
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    assert!(matches!(
        CilogModel::from_bytes(&flipped),
        Err(CilogError::Checksum { .. })
    ));
    for cut in [0, 7, 20, 100, good.len() / 2, good.len() - 1] {
        let e = CilogModel::from_bytes(&good[..cut]).unwrap_err();
        assert!(
            matches!(
                e,
                CilogError::Truncated { .. } | CilogError::BadMagic | CilogError::Checksum { .. }
            ),
            "cut {cut}: {e}"
        );
    }
    let mut magic = good.clone();
    magic[0] = b'X';
    assert!(matches!(
        CilogModel::from_bytes(&magic),
        Err(CilogError::BadMagic)
    ));
    let e = CilogModel::load(Path::new("/nonexistent/model.bin")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/model.bin"), "{e}");
    // Through the CLI: a clear error, exit code 1.
    let dir = std::env::temp_dir().join(format!("sift-cilog-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("model.bin");
    std::fs::write(&bad, &flipped).unwrap();
    let out = sift()
        .args(["classify", "--filter", "cilog", "--model"])
        .arg(&bad)
        .arg(model_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
    std::fs::remove_dir_all(&dir).ok();
}

fn grouped_cv(folds: usize) -> train::Report {
    let data = all_data();
    let r = Recipe::default();
    let sets: Vec<_> = data
        .iter()
        .map(|e| train::line_set(e, r.line_bits))
        .collect();
    train::cross_validate(&data, &sets, folds, &r, train::Split::Repos)
}

/// Regression guard just below the measured level (grouped 5-fold CV by
/// repository, seed 42: accuracy 0.694, macro-F1 0.543, evidence 61.4 % when
/// written, 2026-12-05, 8th revision: power-mean pooling of the candidate
/// lines, the line's shape in the evidence re-ranker; seeds 1 and 7 are in
/// filters/cilog/README.md).
#[test]
fn grouped_cv_quality_guard() {
    let rep = grouped_cv(5);
    eprintln!(
        "grouped CV: accuracy {:.3} macro-F1 {:.3} evidence {:.3}",
        rep.accuracy(),
        rep.macro_f1(5),
        rep.evidence_share()
    );
    assert_eq!(rep.n, 637);
    assert!(rep.accuracy() >= 0.69, "accuracy {:.3}", rep.accuracy());
    assert!(rep.macro_f1(5) >= 0.54, "macro-F1 {:.3}", rep.macro_f1(5));
    assert!(
        rep.evidence_share() >= 0.61,
        "evidence {:.3}",
        rep.evidence_share()
    );
}

/// The quality bar. Not reached yet: grouped-CV accuracy is 0.694,
/// macro-F1 0.543, evidence 61.4 % (seed 42, 8th revision; see
/// filters/cilog/README.md); run with `--ignored` to check.
#[test]
#[ignore = "issue 7 targets (accuracy >= 0.85, macro-F1 >= 0.75, evidence >= 80 %) not reached: measured 0.694 / 0.543 / 61.4 % (seed 42)"]
fn grouped_cv_reaches_target() {
    let rep = grouped_cv(5);
    assert!(rep.accuracy() >= 0.85, "accuracy {:.3}", rep.accuracy());
    assert!(rep.macro_f1(5) >= 0.75, "macro-F1 {:.3}", rep.macro_f1(5));
    assert!(
        rep.evidence_share() >= 0.80,
        "evidence {:.3}",
        rep.evidence_share()
    );
}

/// `--order-salt` changes the class scorer's example order and nothing
/// else: the line scorer is the same, the class weights are not, and salt
/// 0 is the default recipe (the shipped model's bytes are checked by
/// retraining in filters/cilog/README.md).
#[test]
fn order_salt_moves_only_the_class_scorer() {
    let data: Vec<Example> = all_data().into_iter().step_by(5).collect();
    let r0 = Recipe::default();
    let sets: Vec<_> = data
        .iter()
        .map(|e| train::line_set(e, r0.line_bits))
        .collect();
    let rows: Vec<usize> = (0..data.len()).collect();
    let a = train::train(&data, &sets, &rows, &r0, "salt 0");
    let again = train::train(&data, &sets, &rows, &r0, "salt 0");
    let r1 = Recipe {
        order_salt: 1,
        ..r0
    };
    let b = train::train(&data, &sets, &rows, &r1, "salt 0");
    let (pa, pb) = (a.params(), b.params());
    assert_eq!(pa.line_q, pb.line_q, "the line scorer must not move");
    assert_eq!(pa.pos_w, pb.pos_w);
    assert_ne!(pa.class_w, pb.class_w, "the class scorer's order must move");
    assert_eq!(a.to_bytes(), again.to_bytes(), "training is deterministic");
}

/// `--split logs` deals each class's logs round robin over the folds (class
/// shares within one log per fold, repositories shared); `--split repos`
/// never puts one repository in two folds.
#[test]
fn log_folds_are_stratified_and_repo_folds_are_grouped() {
    use std::collections::{HashMap, HashSet};
    let data = all_data();
    let k = 5;
    let logs = train::folds_for(&data, k, 42, train::Split::Logs);
    let mut per_class: HashMap<String, Vec<usize>> = HashMap::new();
    let mut sizes = vec![0usize; k];
    for (e, &f) in data.iter().zip(&logs) {
        per_class
            .entry(e.label.as_str().to_string())
            .or_insert_with(|| vec![0; k])[f] += 1;
        sizes[f] += 1;
    }
    for (c, counts) in &per_class {
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1, "class {c} spread over folds {counts:?}");
    }
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{sizes:?}"
    );
    let repo_folds = |folds: &[usize]| {
        let mut m: HashMap<&str, HashSet<usize>> = HashMap::new();
        for (e, &f) in data.iter().zip(folds) {
            m.entry(e.group.as_str()).or_default().insert(f);
        }
        m.values().map(HashSet::len).max().unwrap()
    };
    assert!(repo_folds(&logs) > 1, "log folds share repositories");
    let repos = train::folds_for(&data, k, 42, train::Split::Repos);
    assert_eq!(repo_folds(&repos), 1, "repository folds are grouped");
}

/// `--also DIR` adds a second labelled-log folder (its own labels.csv and
/// logs/) to the training data; a folder without labels is a clear error.
#[test]
fn train_also_adds_a_second_labelled_folder() {
    let data = all_data();
    let src = data_dir();
    let tmp = std::env::temp_dir().join(format!("sift-cilog-also-{}", std::process::id()));
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    // Two small folders of real logs (4 and 3), copied out of the shared
    // data set into a temporary directory for this test only.
    for (dir, rows) in [(&a, &data[..4]), (&b, &data[4..7])] {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let mut csv = String::from("path,label,repo,chunk_first_line,chunk_last_line\n");
        for (k, e) in rows.iter().enumerate() {
            let name = format!("{k}.log");
            std::fs::copy(src.join("logs").join(&e.path), dir.join("logs").join(&name)).unwrap();
            let (f, l) = e.chunk.unwrap_or((1, 1));
            csv.push_str(&format!(
                "{name},{},{},{f},{l}\n",
                e.label.as_str(),
                e.group
            ));
        }
        std::fs::write(dir.join("labels.csv"), csv).unwrap();
    }
    let out_model = tmp.join("model.bin");
    let out = sift()
        .args(["train", "cilog", "--data"])
        .arg(&a)
        .arg("--also")
        .arg(&b)
        .arg("--out")
        .arg(&out_model)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("loaded 7 logs"), "{err}");
    CilogModel::load(&out_model).expect("the trained model loads");
    let out = sift()
        .args(["train", "cilog", "--data"])
        .arg(&a)
        .arg("--also")
        .arg(tmp.join("missing"))
        .arg("--out")
        .arg(&out_model)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot read") && err.contains("missing") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::remove_dir_all(&tmp).ok();
}

/// `--adapt N`: both reports score the same logs, namely each held-out
/// repository's logs past its first N (which join training instead).
#[test]
fn adapt_scores_only_logs_past_each_repositorys_first_n() {
    use std::collections::HashMap;
    let all = all_data();
    // Four repositories with at least 6 logs each: a small, fast CV.
    let mut count: HashMap<&str, usize> = HashMap::new();
    for e in &all {
        *count.entry(e.group.as_str()).or_default() += 1;
    }
    let mut repos: Vec<&str> = count
        .iter()
        .filter(|(_, n)| **n >= 6)
        .map(|(g, _)| *g)
        .collect();
    repos.sort_unstable();
    repos.truncate(4);
    let data: Vec<Example> = all
        .iter()
        .filter(|e| repos.contains(&e.group.as_str()))
        .cloned()
        .collect();
    let r = Recipe::default();
    let sets: Vec<_> = data
        .iter()
        .map(|e| train::line_set(e, r.line_bits))
        .collect();
    let n = 2;
    let (zero, adapted) = train::adapt_cv(&data, &sets, 2, &r, n);
    let mut rank: HashMap<&str, usize> = HashMap::new();
    let expected: Vec<usize> = (0..data.len())
        .filter(|&i| {
            let k = rank.entry(data[i].group.as_str()).or_default();
            *k += 1;
            *k > n
        })
        .collect();
    let scored = |rep: &train::Report| rep.predictions.iter().map(|p| p.0).collect::<Vec<_>>();
    assert_eq!(scored(&zero), expected);
    assert_eq!(scored(&adapted), expected);
    assert_eq!(zero.n, data.len() - n * repos.len());
}
