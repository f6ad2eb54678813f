//! The ONNX spam backend (src/classify/onnx.rs): parity of sift's
//! Rust → ONNX Runtime path with onnxruntime in Python, clear errors for a
//! missing runtime or a broken model, and a quality guard measured on the
//! SpamAssassin time split.
//!
//! Needs ONNX Runtime: `ORT_DYLIB_PATH` (tests/run.sh sets it from
//! filters/spam/onnx/setup-runtime.sh), else these tests run that script,
//! which makes target/venv with PyPI's onnxruntime. The Python side runs in
//! that venv. Fails, never skips, when something is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sift::classify::data;
use sift::classify::export::FeatureWriter;
use sift::classify::features::Featurizer;
use sift::classify::onnx::{OnnxClassifier, OnnxError};
use sift::classify::text;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_path() -> PathBuf {
    root().join("filters/spam/model.onnx")
}

/// (libonnxruntime.so, the venv's python), installing them once if needed.
fn runtime() -> &'static (PathBuf, PathBuf) {
    static RT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RT.get_or_init(|| {
        let venv = std::env::var_os("SIFT_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target/venv"));
        let python = venv.join("bin/python");
        let env_lib = std::env::var_os("ORT_DYLIB_PATH")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let have_python = Command::new(&python)
            .args(["-c", "import onnxruntime, onnx, numpy"])
            .status()
            .is_ok_and(|s| s.success());
        let lib = match env_lib {
            Some(l) if have_python => l,
            env_lib => {
                let out = Command::new(root().join("filters/spam/onnx/setup-runtime.sh"))
                    .output()
                    .expect("run filters/spam/onnx/setup-runtime.sh");
                assert!(
                    out.status.success(),
                    "setup-runtime.sh failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let printed = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
                env_lib.unwrap_or(printed)
            }
        };
        assert!(
            lib.is_file(),
            "ONNX Runtime library {} missing",
            lib.display()
        );
        (lib, python)
    })
}

fn load() -> OnnxClassifier {
    let (lib, _) = runtime();
    OnnxClassifier::load(&model_path(), Some(lib))
        .unwrap_or_else(|e| panic!("load {}: {e}", model_path().display()))
}

fn data_dir() -> PathBuf {
    std::env::var_os("SIFT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/data"))
}

/// ~50 real texts: 5 messages from each SpamAssassin group (spread over the
/// group) and 25 SMS lines (spread over the file).
fn real_texts() -> Vec<(String, Vec<u8>, bool)> {
    let sa = data::sa_dir(&data_dir());
    let mut out = Vec::new();
    for (g, spam) in data::SA_GROUPS {
        let mut files: Vec<PathBuf> = std::fs::read_dir(sa.join(g))
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: run filters/spam/fetch-data.sh (or set SIFT_DATA_DIR)",
                    sa.join(g).display()
                )
            })
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        for k in 0..5 {
            let f = &files[k * files.len() / 5 + 3];
            out.push((f.display().to_string(), std::fs::read(f).unwrap(), spam));
        }
    }
    let sms_path = root().join("../shared/data/spam/sms/SMSSpamCollection");
    let sms = std::fs::read_to_string(&sms_path)
        .unwrap_or_else(|e| panic!("{}: {e}", sms_path.display()));
    let lines: Vec<&str> = sms
        .lines()
        .filter(|l| l.starts_with("ham\t") || l.starts_with("spam\t"))
        .collect();
    for k in 0..25 {
        let l = lines[k * lines.len() / 25 + 7];
        let (label, t) = l.split_once('\t').unwrap();
        out.push((format!("sms:{k}"), t.as_bytes().to_vec(), label == "spam"));
    }
    out
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sift-onnx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// sift's scores (Rust featurizer → dense input → ONNX Runtime via ort)
/// equal onnxruntime-in-Python's on the features sift exports for the same
/// texts, within 1e-4, and the verdicts agree.
#[test]
fn parity_with_onnxruntime_in_python() {
    let clf = load();
    let texts = real_texts();
    assert!(texts.len() >= 50);
    let mut w = FeatureWriter::new(Featurizer::new(clf.feature_config()), Vec::new());
    let mut rust = Vec::new();
    for (name, raw, _) in &texts {
        let view = text::view(raw);
        w.push(&view, None, None, name);
        let s = clf.score_raw(raw).unwrap();
        assert_eq!(s, clf.score(&view).unwrap());
        rust.push(s);
    }
    let dir = tmpdir("parity");
    w.write(&dir.join("features")).unwrap();
    let (_, python) = runtime();
    let out = Command::new(python)
        .arg(root().join("filters/spam/onnx/score.py"))
        .arg("--model")
        .arg(model_path())
        .arg("--features")
        .arg(dir.join("features"))
        .output()
        .expect("run score.py");
    assert!(
        out.status.success(),
        "score.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let py: Vec<f64> = v["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(py.len(), rust.len());
    assert_eq!(v["dim"].as_u64().unwrap() as usize, clf.dim());
    let thr = v["threshold"].as_f64().unwrap();
    assert!((thr - f64::from(clf.threshold_probability())).abs() < 1e-6);
    let mut worst = 0f64;
    let mut spam = 0;
    let mut right = 0;
    for ((name, _, label), (s, p)) in texts.iter().zip(rust.iter().zip(&py)) {
        right += usize::from(s.spam == *label);
        let d = (f64::from(s.probability) - p).abs();
        worst = worst.max(d);
        assert!(d <= 1e-4, "{name}: sift {} vs Python {p}", s.probability);
        if (p - thr).abs() > 1e-4 {
            assert_eq!(s.spam, *p >= thr, "{name}: verdicts differ");
        }
        spam += usize::from(s.spam);
    }
    eprintln!(
        "parity: {} texts, {spam} spam verdicts ({right} right), max |Δp| = {worst:.2e}",
        texts.len()
    );
    // The texts hold both classes: a model that says one thing would not pass.
    assert!(
        spam >= 10 && spam <= texts.len() - 10,
        "{spam} spam verdicts"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The classifier is Send + Sync: scoring from threads gives the same scores.
#[test]
fn scores_from_threads_agree() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<OnnxClassifier>();
    let clf = std::sync::Arc::new(load());
    let texts = std::sync::Arc::new(real_texts());
    let want: Vec<f32> = texts
        .iter()
        .map(|(_, r, _)| clf.score_raw(r).unwrap().probability)
        .collect();
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let (clf, texts) = (clf.clone(), texts.clone());
            std::thread::spawn(move || {
                texts
                    .iter()
                    .map(|(_, r, _)| clf.score_raw(r).unwrap().probability)
                    .collect::<Vec<f32>>()
            })
        })
        .collect();
    for h in hs {
        assert_eq!(h.join().unwrap(), want);
    }
}

#[test]
fn missing_runtime_is_a_clear_error() {
    let missing = Path::new("/nonexistent/dir/libonnxruntime.so.1.31.1");
    let e = OnnxClassifier::load(&model_path(), Some(missing)).unwrap_err();
    assert!(matches!(e, OnnxError::RuntimeMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("not found"), "{e}");
    assert!(e.to_string().contains("setup-runtime.sh"), "{e}");

    // Once this process has loaded the runtime, another library path is
    // refused, not silently replaced by the loaded one.
    let _ = load();
    let other = root().join("Cargo.toml");
    let e = OnnxClassifier::load(&model_path(), Some(&other)).unwrap_err();
    assert!(matches!(e, OnnxError::RuntimeConflict { .. }), "{e:?}");
}

fn sift() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sift"));
    c.current_dir(root());
    c
}

/// In a fresh process (the runtime is loaded once per process): a file that
/// is not a library, and no runtime configured at all, are errors with a
/// message and exit code 1, not panics.
#[test]
fn unloadable_or_unconfigured_runtime_is_a_clear_error_in_the_cli() {
    // A real ham text (the first ham SMS of 80+ bytes). Not sift's README:
    // it quotes spam since the demo shows the filters.
    let sms = std::fs::read_to_string(root().join("../shared/data/spam/sms/SMSSpamCollection"))
        .expect("the SMS Spam Collection is read in place");
    let ham = sms
        .lines()
        .filter_map(|l| l.strip_prefix("ham\t"))
        .find(|t| t.len() >= 80)
        .expect("a ham text");
    let input = std::env::temp_dir().join(format!("sift-onnx-cli-{}.txt", std::process::id()));
    std::fs::write(&input, ham).unwrap();
    let out = sift()
        .args(["classify", "--filter", "spam", "--model"])
        .arg(model_path())
        .arg("--runtime")
        .arg(root().join("Cargo.toml"))
        .arg(&input)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot load"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = sift()
        .env_remove("ORT_DYLIB_PATH")
        .args(["classify", "--filter", "spam", "--model"])
        .arg(model_path())
        .arg(&input)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // And with the runtime, the CLI classifies through ONNX Runtime.
    let (lib, _) = runtime();
    let out = sift()
        .args(["classify", "--filter", "spam", "--model"])
        .arg(model_path())
        .arg("--runtime")
        .arg(lib)
        .arg(&input)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["backend"], "onnx");
    let _ = std::fs::remove_file(&input);
    assert_eq!(v["verdict"], "ham", "{ham}: {stdout}");
}

#[test]
fn missing_corrupt_or_foreign_model_is_a_clear_error() {
    let (lib, python) = runtime();
    let dir = tmpdir("corrupt");
    let good = std::fs::read(model_path()).unwrap();

    let e = OnnxClassifier::load(&dir.join("nope.onnx"), Some(lib)).unwrap_err();
    assert!(matches!(e, OnnxError::ModelRead { .. }), "{e:?}");

    let cases: [(&str, Vec<u8>); 3] = [
        ("garbage.onnx", b"this is not an onnx model\n".repeat(50)),
        ("truncated.onnx", good[..good.len() / 2].to_vec()),
        ("empty.onnx", Vec::new()),
    ];
    for (name, bytes) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = OnnxClassifier::load(&p, Some(lib)).unwrap_err();
        assert!(matches!(e, OnnxError::ModelInvalid { .. }), "{name}: {e:?}");
        assert!(e.to_string().contains("not a valid model"), "{e}");
    }

    // A valid ONNX model without sift's metadata, and one whose metadata
    // disagrees with its input shape.
    let script = r#"
import sys, onnx
m = onnx.load(sys.argv[1])
props = {p.key: p.value for p in m.metadata_props}
del m.metadata_props[:]
onnx.save(m, sys.argv[2])
props["sift.dim"] = str(int(props["sift.dim"]) * 2)
onnx.helper.set_model_props(m, props)
onnx.save(m, sys.argv[3])
props["sift.dim"] = str(int(props["sift.dim"]) // 2)
props["sift.features"] = props["sift.features"].replace('"bits"', '"bitz"')
onnx.helper.set_model_props(m, props)
onnx.save(m, sys.argv[4])
"#;
    let names = ["no-meta.onnx", "bad-dim.onnx", "bad-features.onnx"];
    let st = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(model_path())
        .args(names.iter().map(|n| dir.join(n)))
        .status()
        .unwrap();
    assert!(st.success());
    for (name, needle) in names
        .iter()
        .zip(["no sift.features", "sift.dim", "sift.features"])
    {
        let e = OnnxClassifier::load(&dir.join(name), Some(lib)).unwrap_err();
        assert!(matches!(e, OnnxError::Metadata { .. }), "{name}: {e:?}");
        assert!(e.to_string().contains(needle), "{name}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Quality, measured: export SpamAssassin with sift, train the ONNX recipe
/// (train.py's defaults) on the time split's training part only, and score
/// the test part (easy-ham-2 + spam-2) through sift's ONNX path.
#[test]
fn time_split_quality_of_the_onnx_recipe() {
    let (lib, python) = runtime();
    let dir = tmpdir("quality");
    let out = sift()
        .args(["export-features", "spam", "--set", "sa", "--data-dir"])
        .arg(data_dir())
        .arg("--out")
        .arg(dir.join("features"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = Command::new(python)
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .arg(root().join("filters/spam/onnx/train.py"))
        .arg("--features")
        .arg(dir.join("features"))
        .arg("--out")
        .arg(dir.join("time.onnx"))
        .args(["--groups", "easy-ham-1,hard-ham-1,spam-1"])
        .status()
        .unwrap();
    assert!(st.success(), "train.py failed");
    let out = sift()
        .args(["eval-onnx", "--min-secs", "0", "--model"])
        .arg(dir.join("time.onnx"))
        .arg("--runtime")
        .arg(lib)
        .arg("--data-dir")
        .arg(data_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    let grab = |key: &str| -> f64 {
        let line = stdout.lines().find(|l| l.contains("time split")).unwrap();
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    let (f1, fpr) = (grab(" F1 "), grab("ham FPR "));
    assert!(f1 >= 0.93, "time-split F1 {f1} < 0.93");
    assert!(fpr <= 2.0, "time-split ham FPR {fpr}% > 2%");
    let _ = std::fs::remove_dir_all(&dir);
}
