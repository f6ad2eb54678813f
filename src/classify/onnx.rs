//! The spam classifier as an ONNX model, run by ONNX Runtime through `ort`.
//!
//! The featurizer stays in Rust (ONNX cannot hash n-grams): sift computes the
//! sparse hashed features of a text with the same [`Featurizer`] as the
//! native model, folds each bucket index modulo the model's input width `D`
//! into a dense `f32` tensor of shape `[1, D]`, and the model returns the spam
//! probability, as a `[1, 1]` tensor (or `[1, 2]` = `[p(ham), p(spam)]`; the
//! last column is taken).
//!
//! The model carries its own featurizer config and threshold in the ONNX
//! `metadata_props` (see [`META_FEATURES`], [`META_THRESHOLD`], [`META_DIM`]),
//! so a model is only ever served with the featurizer it was trained with.
//! `filters/spam/onnx/train.py` writes such models.
//!
//! ONNX Runtime is loaded at run time from a shared library path (`ort`'s
//! `load-dynamic`): PyPI's `onnxruntime` wheel ships `libonnxruntime.so`
//! (`filters/spam/onnx/setup-runtime.sh` prints its path). A missing or
//! unloadable library, or a missing or corrupt model, is an [`OnnxError`],
//! never a panic. The library is process-global: once loaded from one path,
//! asking for another is an error ([`OnnxError::RuntimeConflict`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, TryLockError};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::features::{Collect, FeatureConfig, Featurizer};
use super::model::Score;
use super::text::{self, TextView};

/// Metadata key: the featurizer config, JSON
/// `{"bits","max_bytes","flags","seed","word_scale","char_scale"}`.
pub const META_FEATURES: &str = "sift.features";
/// Metadata key: the decision threshold as a spam probability in (0, 1).
pub const META_THRESHOLD: &str = "sift.threshold";
/// Metadata key: the input width D (must equal the input's declared shape).
pub const META_DIM: &str = "sift.dim";
/// Environment variable naming libonnxruntime.so when no path is given.
pub const ENV_DYLIB: &str = "ORT_DYLIB_PATH";

/// Why an ONNX model cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error(
        "no ONNX Runtime library given: pass --runtime PATH or set ORT_DYLIB_PATH to libonnxruntime.so (filters/spam/onnx/setup-runtime.sh prints one)"
    )]
    RuntimeNotConfigured,
    #[error(
        "ONNX Runtime library {path}: not found (filters/spam/onnx/setup-runtime.sh installs one)"
    )]
    RuntimeMissing { path: PathBuf },
    #[error("ONNX Runtime library {path}: cannot load: {msg}")]
    RuntimeLoad { path: PathBuf, msg: String },
    #[error(
        "ONNX Runtime library {requested}: this process already loaded {loaded} (one runtime per process)"
    )]
    RuntimeConflict { loaded: PathBuf, requested: PathBuf },
    #[error("ONNX model {path}: {source}")]
    ModelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ONNX model {path}: not a valid model: {msg}")]
    ModelInvalid { path: PathBuf, msg: String },
    #[error("ONNX model {path}: {msg}")]
    Metadata { path: PathBuf, msg: String },
    #[error("ONNX inference failed: {0}")]
    Inference(String),
}

/// The featurizer config as stored under [`META_FEATURES`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureMeta {
    pub bits: u8,
    pub max_bytes: u32,
    pub flags: u32,
    pub seed: u64,
    pub word_scale: f32,
    pub char_scale: f32,
}

impl From<FeatureConfig> for FeatureMeta {
    fn from(c: FeatureConfig) -> Self {
        FeatureMeta {
            bits: c.bits,
            max_bytes: c.max_bytes,
            flags: c.flags,
            seed: c.seed,
            word_scale: c.word_scale,
            char_scale: c.char_scale,
        }
    }
}

impl From<FeatureMeta> for FeatureConfig {
    fn from(m: FeatureMeta) -> Self {
        FeatureConfig {
            bits: m.bits,
            max_bytes: m.max_bytes,
            flags: m.flags,
            seed: m.seed,
            word_scale: m.word_scale,
            char_scale: m.char_scale,
        }
    }
}

/// The loaded runtime: its canonical path and the environment built on it.
static RUNTIME: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Resolve the runtime path: the argument, else `ORT_DYLIB_PATH`.
pub fn runtime_path(runtime: Option<&Path>) -> Result<PathBuf, OnnxError> {
    match runtime {
        Some(p) => Ok(p.to_owned()),
        None => match std::env::var_os(ENV_DYLIB) {
            Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
            _ => Err(OnnxError::RuntimeNotConfigured),
        },
    }
}

/// Load ONNX Runtime from `path` once per process and return its
/// environment. Checks the file first; a panic inside `ort` is caught and
/// turned into an error.
fn environment(path: &Path) -> Result<Environment, OnnxError> {
    if !path.is_file() {
        return Err(OnnxError::RuntimeMissing {
            path: path.to_owned(),
        });
    }
    let canon = path.canonicalize().map_err(|e| OnnxError::RuntimeLoad {
        path: path.to_owned(),
        msg: e.to_string(),
    })?;
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((loaded, env)) = slot.as_ref() {
        return if *loaded == canon {
            Ok(env.clone())
        } else {
            Err(OnnxError::RuntimeConflict {
                loaded: loaded.clone(),
                requested: path.to_owned(),
            })
        };
    }
    let load_err = |msg: String| OnnxError::RuntimeLoad {
        path: path.to_owned(),
        msg,
    };
    let built = catch_unwind(AssertUnwindSafe(|| {
        ort::init_from(&canon)
            .map_err(|e| e.to_string())?
            .with_name("sift")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    }));
    let env = match built {
        Ok(Ok(env)) => env,
        Ok(Err(msg)) => return Err(load_err(msg)),
        Err(panic) => return Err(load_err(panic_message(&*panic))),
    };
    *slot = Some((canon, env.clone()));
    Ok(env)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("ort panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("ort panicked: {s}")
    } else {
        "ort panicked".into()
    }
}

/// Which output layout the model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// `[N, 1]`: p(spam).
    Single,
    /// `[N, 2]`: p(ham), p(spam).
    Pair,
}

/// An ONNX spam model with its featurizer, ready to score from any thread.
///
/// `ort`'s `Session::run` takes `&mut self`, so the classifier keeps a small
/// pool of sessions, each behind a mutex: a call takes the first free one,
/// or waits for one when all are busy.
pub struct OnnxClassifier {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    fz: Featurizer,
    features: FeatureConfig,
    dim: usize,
    threshold: f32,
    output: Output,
    runtime: PathBuf,
}

impl std::fmt::Debug for OnnxClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxClassifier")
            .field("sessions", &self.sessions.len())
            .field("features", &self.features)
            .field("dim", &self.dim)
            .field("threshold", &self.threshold)
            .field("output", &self.output)
            .field("runtime", &self.runtime)
            .finish()
    }
}

impl OnnxClassifier {
    /// Load `model` with ONNX Runtime from `runtime` (else `ORT_DYLIB_PATH`),
    /// with one session per available core, at most 4.
    pub fn load(model: &Path, runtime: Option<&Path>) -> Result<OnnxClassifier, OnnxError> {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4);
        OnnxClassifier::load_with(model, runtime, n)
    }

    /// [`OnnxClassifier::load`] with `sessions` sessions in the pool (≥ 1).
    pub fn load_with(
        model: &Path,
        runtime: Option<&Path>,
        sessions: usize,
    ) -> Result<OnnxClassifier, OnnxError> {
        let runtime = runtime_path(runtime)?;
        // Read the model first: a missing file is reported as such even
        // when the runtime is missing too.
        let bytes = std::fs::read(model).map_err(|source| OnnxError::ModelRead {
            path: model.to_owned(),
            source,
        })?;
        let env = environment(&runtime)?;
        let invalid = |msg: String| OnnxError::ModelInvalid {
            path: model.to_owned(),
            msg,
        };
        let meta_err = |msg: String| OnnxError::Metadata {
            path: model.to_owned(),
            msg,
        };
        let open = || -> Result<Session, OnnxError> {
            catch_unwind(AssertUnwindSafe(|| {
                Session::builder(&env)
                    .map_err(|e| e.to_string())?
                    .with_optimization_level(GraphOptimizationLevel::Level3)
                    .map_err(|e| e.to_string())?
                    .with_intra_threads(1)
                    .map_err(|e| e.to_string())?
                    .with_inter_threads(1)
                    .map_err(|e| e.to_string())?
                    .commit_from_memory(&bytes)
                    .map_err(|e| e.to_string())
            }))
            .map_err(|p| invalid(panic_message(&*p)))?
            .map_err(invalid)
        };
        let first = open()?;

        // Input: one f32 tensor [N, D].
        let [input] = first.inputs() else {
            return Err(invalid(format!(
                "expected 1 input, found {}",
                first.inputs().len()
            )));
        };
        let dim = match input.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            } if shape.len() == 2 && shape[1] > 0 && shape[0] != 0 => shape[1] as usize,
            other => {
                return Err(invalid(format!(
                    "input {:?} must be a float32 tensor [N, D] with a fixed D, found {other:?}",
                    input.name()
                )));
            }
        };
        // Output: one f32 tensor [N, 1] or [N, 2].
        let [output] = first.outputs() else {
            return Err(invalid(format!(
                "expected 1 output, found {}",
                first.outputs().len()
            )));
        };
        let output = match output.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            } if shape.len() == 2 && (shape[1] == 1 || shape[1] == 2) => {
                if shape[1] == 1 {
                    Output::Single
                } else {
                    Output::Pair
                }
            }
            other => {
                return Err(invalid(format!(
                    "output {:?} must be a float32 tensor [N, 1] or [N, 2], found {other:?}",
                    output.name()
                )));
            }
        };

        // Metadata: featurizer config, threshold, D.
        let md = first
            .metadata()
            .map_err(|e| meta_err(format!("cannot read metadata: {e}")))?;
        let fjson = md.custom(META_FEATURES).ok_or_else(|| {
            meta_err(format!(
                "no {META_FEATURES} in metadata_props: not a sift model"
            ))
        })?;
        let fmeta: FeatureMeta = serde_json::from_str(&fjson)
            .map_err(|e| meta_err(format!("{META_FEATURES} {fjson:?}: {e}")))?;
        if !(1..=31).contains(&fmeta.bits) {
            return Err(meta_err(format!(
                "{META_FEATURES}: bits {} outside 1..=31",
                fmeta.bits
            )));
        }
        if fmeta.max_bytes == 0 || !fmeta.word_scale.is_finite() || !fmeta.char_scale.is_finite() {
            return Err(meta_err(format!("{META_FEATURES}: invalid values {fjson}")));
        }
        let buckets = 1usize << fmeta.bits;
        if dim > buckets {
            return Err(meta_err(format!(
                "input width D = {dim} exceeds the featurizer's 2^{} buckets",
                fmeta.bits
            )));
        }
        match md.custom(META_DIM) {
            Some(s) if s.trim().parse::<usize>() == Ok(dim) => {}
            Some(s) => {
                return Err(meta_err(format!(
                    "{META_DIM} = {s:?} but the input's declared width is {dim}"
                )));
            }
            None => return Err(meta_err(format!("no {META_DIM} in metadata_props"))),
        }
        let tstr = md
            .custom(META_THRESHOLD)
            .ok_or_else(|| meta_err(format!("no {META_THRESHOLD} in metadata_props")))?;
        let threshold: f32 = tstr
            .trim()
            .parse()
            .ok()
            .filter(|t: &f32| *t > 0.0 && *t < 1.0)
            .ok_or_else(|| {
                meta_err(format!(
                    "{META_THRESHOLD} = {tstr:?} is not a probability in (0, 1)"
                ))
            })?;
        drop(md);
        let unknown = fmeta.flags & !super::features::KNOWN_FLAGS;
        if unknown != 0 {
            return Err(meta_err(format!(
                "featurizer flags {unknown:#x} unknown to this sift (the model was made by a newer version)"
            )));
        }

        let mut pool = vec![Mutex::new(first)];
        for _ in 1..sessions.max(1) {
            pool.push(Mutex::new(open()?));
        }
        let features = FeatureConfig::from(fmeta);
        Ok(OnnxClassifier {
            sessions: pool,
            next: AtomicUsize::new(0),
            fz: Featurizer::new(features),
            features,
            dim,
            threshold,
            output,
            runtime,
        })
    }

    /// The featurizer config the model was trained with.
    pub fn feature_config(&self) -> FeatureConfig {
        self.features
    }

    /// The input width D.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The decision threshold, a probability.
    pub fn threshold_probability(&self) -> f32 {
        self.threshold
    }

    /// Number of sessions in the pool.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The runtime library path this classifier was asked to use.
    pub fn runtime(&self) -> &Path {
        &self.runtime
    }

    /// The sparse features of a text view (bucket indices before folding,
    /// values), exactly what [`OnnxClassifier::score`] feeds the model after
    /// folding modulo D.
    pub fn sparse_features(&self, view: &TextView) -> (Vec<u32>, Vec<f32>) {
        sparse_features(&self.fz, view)
    }

    /// The dense `[D]` model input of a text view.
    pub fn dense_input(&self, view: &TextView) -> Vec<f32> {
        let (idx, val) = self.sparse_features(view);
        fold_dense(&idx, &val, self.dim)
    }

    /// Score a text view. `probability` is the model's output, `margin` its
    /// logit, `spam` = probability ≥ threshold.
    pub fn score(&self, view: &TextView) -> Result<Score, OnnxError> {
        let x = self.dense_input(view);
        let p = self.infer_dense(&x)?;
        Ok(Score {
            margin: logit(p),
            probability: p,
            spam: p >= self.threshold,
        })
    }

    /// Score raw input (RFC 822 message or plain text).
    pub fn score_raw(&self, raw: &[u8]) -> Result<Score, OnnxError> {
        self.score(&text::view(raw))
    }

    /// Run the model on one dense input of width D: the spam probability.
    pub fn infer_dense(&self, x: &[f32]) -> Result<f32, OnnxError> {
        if x.len() != self.dim {
            return Err(OnnxError::Inference(format!(
                "input width {} but the model takes {}",
                x.len(),
                self.dim
            )));
        }
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut guard = None;
        for k in 0..n {
            match self.sessions[(start + k) % n].try_lock() {
                Ok(g) => {
                    guard = Some(g);
                    break;
                }
                Err(TryLockError::Poisoned(p)) => {
                    guard = Some(p.into_inner());
                    break;
                }
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let mut session = match guard {
            Some(g) => g,
            None => self.sessions[start]
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        };
        let err = |e: ort::Error| OnnxError::Inference(e.to_string());
        let input = TensorRef::from_array_view(([1usize, self.dim], x)).map_err(err)?;
        let outputs = session.run(ort::inputs![input]).map_err(err)?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        let want = match self.output {
            Output::Single => 1,
            Output::Pair => 2,
        };
        if data.len() != want {
            return Err(OnnxError::Inference(format!(
                "output has shape {shape:?}, expected [1, {want}]"
            )));
        }
        let p = data[want - 1];
        if !p.is_finite() {
            return Err(OnnxError::Inference(format!("output {p} is not finite")));
        }
        Ok(p.clamp(0.0, 1.0))
    }
}

/// The sparse features of a view: the native model's `Collect` path.
pub fn sparse_features(fz: &Featurizer, view: &TextView) -> (Vec<u32>, Vec<f32>) {
    let mut c = Collect::default();
    fz.run(view, &mut c);
    let cfg = fz.config();
    let (mut idx, mut val) = (Vec::new(), Vec::new());
    c.finish([cfg.word_scale, cfg.char_scale], &mut idx, &mut val);
    (idx, val)
}

/// Fold sparse features into a dense vector of width `dim`: bucket `i`
/// adds to `i mod dim`.
pub fn fold_dense(idx: &[u32], val: &[f32], dim: usize) -> Vec<f32> {
    let mut x = vec![0f32; dim];
    for (&i, &v) in idx.iter().zip(val) {
        x[i as usize % dim] += v;
    }
    x
}

/// log(p / (1 - p)), finite for p in [0, 1].
pub fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    (p / (1.0 - p)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_adds_collisions() {
        let x = fold_dense(&[1, 5, 9, 2], &[1.0, 2.0, 0.5, 3.0], 4);
        assert_eq!(x, vec![0.0, 3.5, 3.0, 0.0]);
    }

    #[test]
    fn feature_meta_round_trips() {
        let c = FeatureConfig::default();
        let s = serde_json::to_string(&FeatureMeta::from(c)).unwrap();
        let back: FeatureMeta = serde_json::from_str(&s).unwrap();
        assert_eq!(FeatureConfig::from(back), c);
        assert!(serde_json::from_str::<FeatureMeta>(r#"{"bits":14}"#).is_err());
    }

    #[test]
    fn missing_runtime_is_an_error() {
        let e = environment(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        assert!(matches!(e, OnnxError::RuntimeMissing { .. }), "{e}");
    }
}
