//! `sift classify` for both filters: the builtin model by default (from any
//! directory), `-` as stdin, gzip input, empty input skipped as the server
//! skips it, one output shape. The real binary, run as an operator would.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::{TempDir, sift_bin};

const SPAM: &str = "WINNER!! As a valued network customer you have been selected to receive a \
£900 prize reward! To claim call 09061701461. Claim code KL341. Valid 12 hours only.";
const HAM: &str = "Are we still meeting for lunch tomorrow at noon? I can book the table.";

/// A short build log that fails a test.
const LOG: &str = "\
Run cargo test --all
   Compiling app v0.1.0 (/home/runner/work/app)
    Finished test [unoptimized + debuginfo] target(s) in 12.3s
     Running unittests src/lib.rs
running 3 tests
test parse::tests::empty ... ok
test parse::tests::nested ... FAILED
test parse::tests::plain ... ok
failures:
---- parse::tests::nested stdout ----
thread 'parse::tests::nested' panicked at 'assertion failed: `(left == right)`', src/parse.rs:88:9
test result: FAILED. 2 passed; 1 failed; 0 ignored
error: test failed, to rerun pass `--lib`
Error: Process completed with exit code 101.
";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `sift ARGS` in `cwd` with `stdin`.
fn run(cwd: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(sift_bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sift");
    let mut w = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Outside the repository (no `filters/` below the working directory) the
/// default is the builtin model, also spelled `--model builtin`, and it
/// gives what the shipped files give.
#[test]
fn the_builtin_model_is_the_default_from_any_directory() {
    let dir = TempDir::new();
    let msg = dir.path("msg.txt");
    std::fs::write(&msg, SPAM).unwrap();
    let log = dir.path("job.log");
    std::fs::write(&log, LOG).unwrap();
    for (filter, input, shipped) in [
        ("spam", &msg, "filters/spam/model.bin"),
        ("cilog", &log, "filters/cilog/model.bin"),
    ] {
        let default = lines(&run(
            &dir.0,
            &["classify", "--filter", filter, &s(input)],
            b"",
        ));
        let builtin = lines(&run(
            &dir.0,
            &[
                "classify",
                "--filter",
                filter,
                "--model",
                "builtin",
                &s(input),
            ],
            b"",
        ));
        let file = lines(&run(
            &dir.0,
            &[
                "classify",
                "--filter",
                filter,
                "--model",
                &s(&repo(shipped)),
                &s(input),
            ],
            b"",
        ));
        assert_eq!(default.len(), 1, "{filter}");
        assert_eq!(default, builtin, "{filter}");
        assert_eq!(default, file, "{filter}: builtin is the shipped model");
        assert_eq!(default[0]["file"], s(input), "{filter}");
        assert_eq!(default[0]["filter"], filter);
    }
    // A model path that does not exist is still an error naming it.
    let o = run(
        &dir.0,
        &["classify", "--model", "filters/spam/model.bin", &s(&msg)],
        b"",
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("filters/spam/model.bin"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `-` is stdin, for both filters, in any position among files.
#[test]
fn a_dash_is_stdin() {
    let dir = TempDir::new();
    let ham = dir.path("ham.txt");
    std::fs::write(&ham, HAM).unwrap();
    let v = lines(&run(
        &dir.0,
        &["classify", "--filter", "spam", &s(&ham), "-"],
        SPAM.as_bytes(),
    ));
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["file"], s(&ham));
    assert_eq!(v[0]["verdict"], "ham");
    assert_eq!(v[1]["file"], "-");
    assert_eq!(v[1]["verdict"], "spam");
    // No input at all is stdin too.
    let none = lines(&run(&dir.0, &["classify"], SPAM.as_bytes()));
    assert_eq!(none, v[1..]);

    let log = dir.path("job.log");
    std::fs::write(&log, LOG).unwrap();
    let v = lines(&run(
        &dir.0,
        &["classify", "--filter", "cilog", "-", &s(&log)],
        LOG.as_bytes(),
    ));
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["file"], "-");
    assert_eq!(v[1]["file"], s(&log));
    for k in ["class", "confidence", "line", "text", "context"] {
        assert_eq!(v[0][k], v[1][k], "{k}");
    }
}

#[test]
fn explain_is_a_usage_error_for_cilog() {
    let dir = TempDir::new();
    let o = run(
        &dir.0,
        &["classify", "--filter", "cilog", "--explain", "-"],
        LOG.as_bytes(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--explain is only for --filter spam"), "{err}");
    // With spam it still explains.
    let v = lines(&run(
        &dir.0,
        &["classify", "--filter", "spam", "--explain"],
        SPAM.as_bytes(),
    ));
    assert!(!v[0]["explain"].as_array().unwrap().is_empty());
}

/// Empty input gets the server's skip reason, not a verdict, for both
/// filters (also when it is empty once gunzipped, and for spam when it is
/// only white space).
#[test]
fn empty_input_is_skipped_as_the_server_skips_it() {
    let dir = TempDir::new();
    let empty = dir.path("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let empty_gz = dir.path("empty.gz");
    std::fs::write(&empty_gz, gzip(b"")).unwrap();
    let blank = dir.path("blank.txt");
    std::fs::write(&blank, b"  \n\t\n").unwrap();
    for filter in ["spam", "cilog"] {
        let v = lines(&run(
            &dir.0,
            &[
                "classify",
                "--filter",
                filter,
                &s(&empty),
                &s(&empty_gz),
                "-",
            ],
            b"",
        ));
        assert_eq!(v.len(), 3, "{filter}");
        for (line, name) in v.iter().zip([s(&empty), s(&empty_gz), "-".into()]) {
            assert_eq!(
                *line,
                serde_json::json!({ "file": name, "filter": filter, "skipped": "empty" }),
                "{filter}"
            );
        }
    }
    let v = lines(&run(&dir.0, &["classify", &s(&blank)], b""));
    assert_eq!(v[0]["skipped"], "empty");
}

/// A gzip file is classified as its text (spam used to score the
/// compressed bytes), and may expand to at most 16 MiB, the server's
/// max_decompressed_bytes for a spam filter.
#[test]
fn spam_reads_gzip_within_the_servers_cap() {
    let dir = TempDir::new();
    let plain = dir.path("msg.txt");
    std::fs::write(&plain, SPAM).unwrap();
    let gz = dir.path("msg.txt.gz");
    std::fs::write(&gz, gzip(SPAM.as_bytes())).unwrap();
    let v = lines(&run(&dir.0, &["classify", &s(&plain), &s(&gz)], b""));
    assert_eq!(v[0]["verdict"], "spam");
    for k in ["score", "verdict", "margin"] {
        assert_eq!(v[0][k], v[1][k], "{k}");
    }
    // Concatenated members are one text (MultiGzDecoder), as gzip -d reads.
    let mut two = gzip(&SPAM.as_bytes()[..40]);
    two.extend(gzip(&SPAM.as_bytes()[40..]));
    let v2 = lines(&run(&dir.0, &["classify", "-"], &two));
    assert_eq!(v2[0]["score"], v[0]["score"]);

    // A bomb: 16 MiB + 1 byte once decoded.
    let bomb = dir.path("bomb.gz");
    std::fs::write(&bomb, gzip(&vec![b'a'; (16 << 20) + 1])).unwrap();
    let o = run(&dir.0, &["classify", &s(&bomb), &s(&plain)], b"");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bomb.gz") && err.contains("expands past 16MiB"),
        "{err}"
    );
    // The other input is still classified.
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    // Exactly 16 MiB is within the cap.
    let fits = dir.path("fits.gz");
    std::fs::write(&fits, gzip(&vec![b'a'; 16 << 20])).unwrap();
    let v = lines(&run(&dir.0, &["classify", &s(&fits)], b""));
    assert!(v[0]["verdict"].is_string());
}

/// cilog's line: the answer route's field names and `context` shape
/// (`{"line", "text"}` objects), confidence rounded to 3 decimals as there.
#[test]
fn cilog_lines_have_the_answer_routes_shape() {
    let dir = TempDir::new();
    let v = lines(&run(
        &dir.0,
        &["classify", "--filter", "cilog"],
        LOG.as_bytes(),
    ));
    let v = &v[0];
    assert!(v["class"].is_string());
    assert!(v["line"].as_u64().unwrap() > 0);
    let conf = v["confidence"].as_f64().unwrap();
    assert_eq!((conf * 1000.0).round() / 1000.0, conf, "{conf}");
    let ctx = v["context"].as_array().unwrap();
    assert!(!ctx.is_empty());
    for c in ctx {
        let o = c.as_object().expect("an object, not a [n, text] pair");
        assert!(o["line"].is_u64() && o["text"].is_string(), "{c}");
    }
    // gzip reads the same.
    let gz = lines(&run(
        &dir.0,
        &["classify", "--filter", "cilog"],
        &gzip(LOG.as_bytes()),
    ));
    assert_eq!(gz[0], *v);
}

/// A reader that stops early (`sift classify ... | head -1`) ends the
/// command quietly with success: no panic, no backtrace on stderr.
#[test]
fn a_closed_stdout_stops_classify_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new();
    let text = dir.path("a.txt");
    std::fs::write(&text, "Win a prize now! Call 09061701461 to claim.\n").unwrap();
    // Enough inputs that sift is still writing when the reader goes away
    // (far more output than a pipe buffer holds).
    let files: Vec<String> = (0..5_000).map(|_| s(&text)).collect();
    for filter in ["spam", "cilog"] {
        let mut child = Command::new(sift_bin())
            .args(["classify", "--filter", filter])
            .args(&files)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sift");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        // The reader (and the pipe's read end) is dropped here.
        assert!(
            first.contains(&format!("\"filter\":\"{filter}\"")),
            "{first}"
        );
        exits_quietly(child, filter);
    }
}

/// Wait for `child` (its stdout reader gone): success, no panic on stderr.
fn exits_quietly(mut child: std::process::Child, what: &str) {
    use std::io::Read;
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{what}: {status:?}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
}

/// `sift train spam --from builtin` continues from the compiled-in model,
/// as `sift classify --model builtin` reads it.
#[test]
fn train_from_builtin_continues_the_shipped_model() {
    let dir = TempDir::new();
    let data = dir.path("labels.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"Your parcel is held, pay the 1.99 fee at http://dhl-track.example/pay\", \"label\": \"spam\"}\n\
         {\"text\": \"Build 4411 deployed to staging, see the dashboard\", \"label\": \"ham\"}\n",
    )
    .unwrap();
    let out = dir.path("next.bin");
    let o = Command::new(sift_bin())
        .args(["train", "spam", "--from", "builtin", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("learned 2 examples"));
    sift::classify::Model::load(&out).expect("the learned model loads");
}

/// The report commands (train, eval, check) print with `say!`: a reader
/// that went away before the report is no panic and no failure, and the
/// work (here a trained model) is done and saved before the report.
#[test]
fn a_closed_stdout_does_not_fail_train_or_check() {
    let dir = TempDir::new();
    let data = dir.path("labels.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"Claim your prize at http://198.51.100.7/win now\", \"label\": \"spam\"}\n\
         {\"text\": \"The release notes are in the wiki\", \"label\": \"ham\"}\n",
    )
    .unwrap();
    let out = dir.path("next.bin");
    let config = dir.path("sift.yaml");
    std::fs::write(
        &config,
        "listeners: [ { name: main, address: \"127.0.0.1:0\" } ]\n\
         routes: [ { name: all, cluster: app } ]\n\
         clusters: [ { name: app, endpoints: [\"127.0.0.1:9\"] } ]\n",
    )
    .unwrap();
    let runs: [Vec<std::ffi::OsString>; 2] = [
        vec![
            "train".into(),
            "spam".into(),
            "--from".into(),
            "builtin".into(),
            "--data".into(),
            data.clone().into(),
            "--out".into(),
            out.clone().into(),
        ],
        vec!["check".into(), "--config".into(), config.clone().into()],
    ];
    for args in runs {
        let mut child = Command::new(sift_bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sift");
        // The only reader goes away before sift writes its report.
        drop(child.stdout.take());
        exits_quietly(child, &format!("{args:?}"));
    }
    sift::classify::Model::load(&out).expect("the model was saved");
}
