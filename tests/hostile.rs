//! Hostile input for the body filters' parsers and classifiers: real mail
//! and real CI logs, mutated at random (bytes flipped, cut short, slices
//! repeated, and the tokens a MIME, HTML, JSON or log parser keys on
//! spliced in), must give a result or a clear error — never a panic, an
//! overflow (these tests run with debug assertions), a non-finite score or
//! a view larger than its bound.
//!
//! Seeded, so a failure names the seed and iteration that reproduce it.
//! `SIFT_HOSTILE_ITERS` multiplies the iterations for a longer hunt.

mod support;

use std::path::{Path, PathBuf};

use sift::cilog::CilogModel;
use sift::classify::Classifier;
use sift::classify::text;
use sift::filter::extract::{self, BodyKind};
use support::{files_below, hostile_iters, hostile_rng, mutate};

/// What the parsers key on: MIME, RFC 2047, quoted-printable, base64,
/// HTML and entities, URLs, JSON, form encoding, CI markers and escapes,
/// and bytes that are not UTF-8.
const TOKENS: &[&[u8]] = &[
    b"<",
    b">",
    b"</",
    b"<!--",
    b"-->",
    b"<a href=\"http://",
    b"<a href='",
    b"<img alt=",
    b"<script>",
    b"</title",
    b"&#",
    b"&#x",
    b"&#99999999999;",
    b"&amp",
    b"&nbsp;",
    b"=?utf-8?b?",
    b"=?iso-2022-jp?q?",
    b"?=",
    b"=\r\n",
    b"=\n",
    b"=C3=A9",
    b"=ZZ",
    b"==",
    b"\r\n\r\n",
    b"\n\n",
    b"--",
    b"--b\n",
    b"Content-Type: multipart/mixed; boundary=b\n",
    b"Content-Type: multipart/alternative; boundary=\"\"\n",
    b"Content-Type: text/html; charset=koi8-r\n",
    b"Content-Type: message/rfc822\n",
    b"Content-Transfer-Encoding: base64\n",
    b"Content-Transfer-Encoding: quoted-printable\n",
    b"Subject: ",
    b"http://",
    b"https://xn--",
    b"@",
    b"://[::1]:99999/",
    b"%",
    b"%zz",
    b"+",
    b"&",
    b"=",
    b"{\"a\":",
    b"[",
    b"\"\\u",
    b"\\ud800",
    b"\x1b[31m",
    b"\x1b]0;",
    b"\x1b$B",
    b"\r",
    b"travis_fold:start:",
    b"##[group]",
    b"section_start:1:x\r\x1b[0K",
    b"The command \"make\" exited with 2.",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\x00",
    b"\xf0\x9f\x92",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A sample of real SpamAssassin messages (every 40th file of each group),
/// plus hand-made seeds for the nesting and encoding corners.
fn mail_seeds() -> Vec<Vec<u8>> {
    let dir = std::env::var_os("SIFT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/data"))
        .join("spam-assassin");
    let mut seeds = Vec::new();
    for g in ["easy-ham-1", "hard-ham-1", "spam-1", "spam-2"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(g))
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: run filters/spam/fetch-data.sh (tests/run.sh does)",
                    dir.join(g).display()
                )
            })
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files.iter().step_by(40) {
            seeds.push(std::fs::read(f).expect("read a corpus file"));
        }
    }
    seeds.push(
        b"Subject: =?utf-8?b?SGVsbG8=?= =?iso-8859-1?q?caf=E9?=\n\
          Content-Type: multipart/mixed; boundary=a\n\n--a\n\
          Content-Type: multipart/alternative; boundary=b\n\n--b\n\
          Content-Type: text/plain\n\nplain\n--b\n\
          Content-Type: text/html; charset=windows-1252\n\
          Content-Transfer-Encoding: quoted-printable\n\n\
          <html><a href=3D\"http://paypa1.com\">paypal.com</a><img src=3Dx></html>\n--b--\n\
          --a\nContent-Type: message/rfc822\n\nSubject: inner\n\nbody\n--a--\n"
            .to_vec(),
    );
    seeds
}

#[test]
fn mutated_mail_never_panics_the_spam_path() {
    let clf = Classifier::load(&root().join("filters/spam/model.bin")).expect("spam model loads");
    let seeds = mail_seeds();
    let mut rng = hostile_rng(0x5eed_0001);
    let n = hostile_iters(5000);
    for i in 0..n {
        let seed = &seeds[i % seeds.len()];
        let raw = mutate(&mut rng, seed, TOKENS, 8, 256 * 1024);
        let v = text::view(&raw);
        assert!(
            v.text.len() <= text::MAX_VIEW_BYTES,
            "iteration {i}: view of {} bytes",
            v.text.len()
        );
        let s = clf.score(&v);
        assert!(
            s.margin.is_finite() && (0.0..=1.0).contains(&s.probability),
            "iteration {i}: score {} / {}",
            s.margin,
            s.probability
        );
        if i % 10 == 0 {
            let why = clf.explain(&v, 5);
            assert!(why.len() <= 5, "iteration {i}: explain gave {}", why.len());
        }
    }
}

#[test]
fn mutated_bodies_never_panic_the_extractors() {
    let kinds = [
        BodyKind::Json,
        BodyKind::Form { charset: None },
        BodyKind::Form {
            charset: Some("utf-16".into()),
        },
        BodyKind::Multipart {
            boundary: "b".into(),
            charset: None,
        },
        BodyKind::Rfc822,
        BodyKind::Html { charset: None },
        BodyKind::Other,
        BodyKind::Plain {
            charset: Some("iso-8859-1".into()),
        },
    ];
    let seeds: [&[u8]; 4] = [
        br#"{"message": {"text": "Win a \u00a3100 prize: http://bit.ly/x", "tags": ["a", 1, null]}, "list": [{"text": "hi"}]}"#,
        b"name=Bob&message=Win+a+%C2%A3100+prize%21+http%3A%2F%2Fbit.ly%2Fx&x=%zz",
        b"--b\r\nContent-Disposition: form-data; name=\"message\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nWin a =C2=A3100 prize=\r\n now\r\n--b\r\nContent-Disposition: form-data; name=\"note\"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nV2luIGEgcHJpemU=\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nattached text\r\n--b--\r\n",
        b"Subject: hello\n\nplain body with a link http://example.com\n",
    ];
    let pointers = ["/message/text".to_string(), "/list/0/text".to_string()];
    let fields = ["message".to_string()];
    let mut rng = hostile_rng(0x5eed_0002);
    let n = hostile_iters(3000);
    for i in 0..n {
        let kind = &kinds[i % kinds.len()];
        let seed = seeds[rng.below(seeds.len())];
        let body = mutate(&mut rng, seed, TOKENS, 8, 64 * 1024);
        for (p, f) in [(None, None), (Some(&pointers[..]), Some(&fields[..]))] {
            if let Ok(v) = extract::extract(kind, &body, p, f) {
                assert!(
                    v.text.len() <= body.len() * 4 + 1024,
                    "iteration {i}: {kind:?} view of {} bytes from {}",
                    v.text.len(),
                    body.len()
                );
            }
            let _ = extract::extract_owned(kind, body.clone(), p, f);
            // The same bytes as a prefix of a longer JSON body: the
            // streaming walker reads them.
            let cut = &body[..rng.below(body.len() + 1)];
            if let Ok(v) = extract::extract_json(cut, p, true) {
                assert!(
                    v.text.len() <= cut.len() * 4 + 1024,
                    "iteration {i}: JSON prefix view of {} bytes from {}",
                    v.text.len(),
                    cut.len()
                );
            }
        }
    }
    // Content-Type headers themselves are client input.
    let mut rng = hostile_rng(0x5eed_0003);
    let ct_seed: &[u8] = b"multipart/form-data; boundary=\"x y\"; charset=utf-8";
    for _ in 0..hostile_iters(2000) {
        let ct = mutate(&mut rng, ct_seed, TOKENS, 8, 512);
        let _ = extract::body_kind(Some(&String::from_utf8_lossy(&ct)));
    }
}

/// Real CI logs (the first of every 50th labelled log, at most 256 KB
/// each), mutated and fed in chunks of random size.
#[test]
fn mutated_logs_never_panic_the_cilog_scanner() {
    let model = CilogModel::load(&root().join("filters/cilog/model.bin")).expect("cilog model");
    let data = std::env::var_os("SIFT_CILOG_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data/cilogs"));
    let mut logs = Vec::new();
    files_below(&data.join("logs"), &mut logs);
    logs.sort();
    let seeds: Vec<Vec<u8>> = logs
        .iter()
        .step_by(50)
        .map(|p| read_prefix(p, 256 * 1024))
        .collect();
    assert!(
        seeds.len() >= 10,
        "expected real logs in {}",
        data.display()
    );
    let mut rng = hostile_rng(0x5eed_0004);
    let n = hostile_iters(60);
    for i in 0..n {
        let log = mutate(&mut rng, &seeds[i % seeds.len()], TOKENS, 8, 512 * 1024);
        let mut sc = model.scanner();
        let mut at = 0;
        while at < log.len() {
            let most = if rng.below(4) == 0 { 16 } else { 64 * 1024 };
            let step = 1 + rng.below(most);
            let end = (at + step).min(log.len());
            sc.feed(&log[at..end]);
            at = end;
        }
        let v = sc.finish();
        assert!(
            v.confidence.is_finite() && (0.0..=1.0).contains(&v.confidence),
            "iteration {i}: confidence {}",
            v.confidence
        );
        assert!(v.text.len() <= sift::cilog::KEEP, "iteration {i}");
    }
}

fn read_prefix(p: &Path, max: usize) -> Vec<u8> {
    let mut b = std::fs::read(p).expect("read a log");
    b.truncate(max);
    b
}

/// Config text is operator input, but a typo or a bad merge must still be
/// an error with a path and line, never a panic: the shipped configs and
/// the full example of docs/configuration.md, mutated with the tokens YAML
/// and sift's value parsers key on.
#[test]
fn mutated_configs_never_panic_the_loader() {
    const YAML_TOKENS: &[&str] = &[
        ": ",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "\"",
        "'",
        "#",
        "\n  ",
        "\n    - ",
        "\t",
        "&a ",
        "*a",
        "!!binary ",
        "~",
        "null",
        "-1",
        "0",
        "1e400",
        "99999999999999999999999",
        "18446744073709551616",
        "NaN",
        "-5ms",
        "1000000000h",
        "0s",
        "1.5KiB",
        "99999999TiB",
        "[::1]:",
        "0.0.0.0:99999",
        "*.",
        "/",
        "weight: ",
        "cluster: ",
        "clusters: ",
        "routes: ",
        "filters: ",
        "mode: ",
        "\u{feff}",
        "\u{0}",
    ];
    let mut seeds: Vec<String> = ["dev.yaml", "edge.yaml", "sidecar.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(root().join("config").join(f)).expect("shipped config"))
        .collect();
    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).expect("docs");
    let example = doc
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("docs/configuration.md has a YAML example");
    seeds.push(example.to_string());
    for s in &seeds {
        assert!(
            sift::config::load_str(s).is_ok(),
            "a seed config does not load:\n{s}"
        );
    }
    let mut rng = hostile_rng(0x5eed_0005);
    let n = hostile_iters(3000);
    let mut rejected = 0;
    for i in 0..n {
        let seed = &seeds[i % seeds.len()];
        let mut text = seed.clone();
        for _ in 0..1 + rng.below(4) {
            let mut at = rng.below(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            match rng.below(3) {
                0 => text.insert_str(at, YAML_TOKENS[rng.below(YAML_TOKENS.len())]),
                1 => {
                    let mut end = (at + rng.below(40)).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(at..end, "");
                }
                _ => text.truncate(at),
            }
        }
        if let Err(e) = sift::config::load_str(&text) {
            rejected += 1;
            assert!(!e.to_string().is_empty(), "iteration {i}: an empty error");
        }
    }
    eprintln!("{rejected} of {n} mutated configs rejected");
    // Most mutations break something; a loader that accepted everything
    // would not be checking.
    assert!(
        rejected * 2 > n,
        "only {rejected} of {n} mutated configs were rejected"
    );
}

/// `POST /filters/{name}/learn` takes JSONL from an operator's tooling: a
/// mutated batch is learned or refused with an error naming the line, and a
/// learned model still scores finitely.
#[test]
fn mutated_learn_batches_never_panic() {
    let clf = Classifier::load(&root().join("filters/spam/model.bin")).expect("spam model loads");
    let seed = concat!(
        r#"{"text": "WINNER!! Claim your £900 prize now: call 09061701461", "label": "spam"}"#,
        "\n",
        r#"{"text": "Are we still on for lunch at 1?", "label": "ham"}"#,
        "\n",
        r#"{"text": "Subject: invoice\n\nPlease find the \u00e9t\u00e9 report attached", "label": "ham"}"#,
        "\n",
        r#"{"text": "", "label": "spam"}"#,
        "\n"
    )
    .repeat(4);
    let opts = sift::classify::train::LearnOptions::default();
    let probe = text::TextView::plain("Claim your free prize now, txt WIN to 80086");
    let mut rng = hostile_rng(0x5eed_0007);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..hostile_iters(400) {
        let m = mutate(&mut rng, seed.as_bytes(), TOKENS, 8, 16 * 1024);
        let Ok(jsonl) = std::str::from_utf8(&m) else {
            continue;
        };
        match clf.learn_jsonl(jsonl, &opts) {
            Ok(c) => {
                ok += 1;
                assert!(c.score(&probe).margin.is_finite(), "iteration {i}");
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty(), "iteration {i}: an empty error");
            }
        }
    }
    eprintln!("learn: {ok} batches learned, {refused} refused");
    assert!(ok > 0 && refused > 0, "{ok} learned, {refused} refused");
}

/// FNV-1a 64, the cilog model file's checksum.
fn fnv64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A model file is checked by its checksum first, so random damage is
/// "corrupt" at once. These mutate the header fields and lengths *and
/// re-seal the checksum*, as a crafted or mis-generated file would be:
/// the parsers must still refuse or load it without a panic or a huge
/// allocation, and a model that loads must score finitely.
#[test]
fn resealed_model_files_never_panic_the_loaders() {
    let spam = std::fs::read(root().join("filters/spam/model.bin")).expect("spam model");
    let cilog = std::fs::read(root().join("filters/cilog/model.bin")).expect("cilog model");
    let probe = text::TextView::plain("Claim your free prize now, txt WIN to 80086");
    let log =
        b"$ make\ncc -c a.c\na.c:3: error: expected ';'\nThe command \"make\" exited with 2.\n";
    let mut rng = hostile_rng(0x5eed_0008);
    let (mut spam_loaded, mut cilog_loaded) = (0, 0);
    for i in 0..hostile_iters(150) {
        for (k, file) in [&spam, &cilog].into_iter().enumerate() {
            let body = &file[..file.len() - 8];
            let mut m = body.to_vec();
            for _ in 0..1 + rng.below(3) {
                // Mostly the header (the first 96 bytes), sometimes anywhere.
                let span = if rng.below(4) == 0 {
                    m.len()
                } else {
                    96.min(m.len())
                };
                let at = rng.below(span);
                match rng.below(4) {
                    0 => m[at] = rng.next() as u8,
                    1 => {
                        let v = [0u32, 1, 7, 24, 31, 32, 255, u32::MAX][rng.below(8)];
                        let end = (at + 4).min(m.len());
                        m[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                    }
                    2 => m.truncate(at.max(8)),
                    _ => {
                        let extra = vec![rng.next() as u8; rng.below(64)];
                        m.splice(at..at, extra);
                    }
                }
            }
            let sum = if k == 0 {
                sift::classify::model::fnv1a64(&m)
            } else {
                fnv64(&m)
            };
            m.extend_from_slice(&sum.to_le_bytes());
            if k == 0 {
                if let Ok(model) = sift::classify::model::Model::from_bytes(&m) {
                    spam_loaded += 1;
                    let c = Classifier::new(model);
                    let s = c.score(&probe);
                    // A crafted scale may push the margin to ±inf (a
                    // verdict still), never to NaN (no verdict at all).
                    assert!(
                        !s.margin.is_nan() && (0.0..=1.0).contains(&s.probability),
                        "iteration {i}: margin {}",
                        s.margin
                    );
                }
            } else if let Ok(model) = CilogModel::from_bytes(&m) {
                cilog_loaded += 1;
                let v = model.classify(log);
                assert!(
                    (0.0..=1.0).contains(&v.confidence),
                    "iteration {i}: confidence {}",
                    v.confidence
                );
            }
        }
    }
    eprintln!("resealed: {spam_loaded} spam and {cilog_loaded} cilog files loaded");
}
