//! Inline text classifiers: the spam/scam model.
//!
//! - [`text`]: message → text view (MIME, charsets, HTML);
//! - [`features`]: the one featurizer (hashed word 1–2-grams, char 3–5-grams,
//!   cross-corpus signals), shared by training and serving;
//! - [`model`]: the linear model and its checked binary file format;
//! - [`train`]: AdaGrad logistic regression, threshold calibration on
//!   training data, incremental learning from a labelled batch;
//! - [`eval`]: metrics and the evaluation protocols;
//! - [`data`]: corpora loaders; [`cli`]: `sift train|eval|classify`;
//! - [`onnx`]: the same featurizer in front of an ONNX model run by ONNX
//!   Runtime; [`export`] and [`onnx_cli`]: `sift export-features|eval-onnx`.
//!
//! A [`Classifier`] is plain data: load once, share by `Arc`, score from any
//! thread. Scoring allocates nothing per token.

pub mod cli;
pub mod data;
pub mod eval;
pub mod export;
pub mod features;
pub mod model;
pub mod onnx;
pub mod onnx_cli;
pub mod text;
pub mod train;
pub mod unicode;

use std::collections::HashMap;
use std::path::Path;

pub use features::{FeatureConfig, Featurizer};
pub use model::{Model, ModelError, Score};
pub use onnx::{OnnxClassifier, OnnxError};
pub use text::TextView;
pub use train::{LearnCalib, LearnOptions};

use features::{Feature, Origin, Sink};

/// A model with its featurizer, ready to score.
#[derive(Debug, Clone)]
pub struct Classifier {
    model: Model,
    fz: Featurizer,
}

/// One feature's share of a score, for `--explain`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Contribution {
    pub feature: String,
    pub contribution: f32,
}

impl Classifier {
    pub fn new(model: Model) -> Classifier {
        let fz = Featurizer::new(model.features);
        Classifier { model, fz }
    }

    /// Load and validate a model file.
    pub fn load(path: &Path) -> Result<Classifier, ModelError> {
        Model::load(path).map(Classifier::new)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn featurizer(&self) -> &Featurizer {
        &self.fz
    }

    /// Score a text view.
    pub fn score(&self, view: &TextView) -> Score {
        self.model.score(&self.fz, view)
    }

    /// Score raw input (RFC 822 message or plain text).
    pub fn score_raw(&self, raw: &[u8]) -> Score {
        self.score(&text::view(raw))
    }

    /// The threshold as a probability.
    pub fn threshold_probability(&self) -> f32 {
        model::sigmoid(self.model.threshold)
    }

    /// The `top` features contributing most (by magnitude) to the margin.
    pub fn explain(&self, view: &TextView, top: usize) -> Vec<Contribution> {
        struct Rec(Vec<Feature>);
        impl Sink for Rec {
            fn emit(&mut self, f: Feature) {
                self.0.push(f);
            }
        }
        let mut rec = Rec(Vec::new());
        self.fz.run(view, &mut rec);
        let mut n = [0usize; 2];
        for f in &rec.0 {
            match f.origin {
                Origin::Word { .. } => n[0] += 1,
                Origin::Char { .. } => n[1] += 1,
                Origin::Signal(_) => {}
            }
        }
        // Spans index the text the featurizer read (folded, with `unicode`).
        let folded = self.fz.folded(&view.text);
        let text = folded.as_bytes();
        let snippet = |s: u32, e: u32| {
            let s = (s as usize).min(text.len());
            let e = (e as usize).clamp(s, text.len());
            String::from_utf8_lossy(&text[s..e])
                .to_lowercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut agg: HashMap<String, f32> = HashMap::new();
        for f in &rec.0 {
            let w = self.model.weights.get(f.bucket as usize);
            let (name, c) = match f.origin {
                Origin::Word { start, end } => (
                    format!("word:{}", snippet(start, end)),
                    w / (n[0] as f32).sqrt(),
                ),
                Origin::Char { start, end } => (
                    format!("char:{:?}", snippet(start, end)),
                    w / (n[1] as f32).sqrt(),
                ),
                Origin::Signal(s) => (format!("signal:{}", s.name()), w),
            };
            *agg.entry(name).or_insert(0.0) += c;
        }
        let mut v: Vec<Contribution> = agg
            .into_iter()
            .map(|(feature, contribution)| Contribution {
                feature,
                contribution,
            })
            .collect();
        v.sort_by(|a, b| {
            b.contribution
                .abs()
                .total_cmp(&a.contribution.abs())
                .then_with(|| a.feature.cmp(&b.feature))
        });
        v.truncate(top);
        v
    }

    /// Learn from a labelled batch (true = spam): returns a new classifier
    /// to swap in; `self` keeps serving meanwhile. This is what an admin
    /// endpoint (`POST /filters/{name}/learn`) calls.
    pub fn learn(&self, batch: &[(TextView, bool)], opts: &LearnOptions) -> Classifier {
        Classifier::new(train::learn(&self.model, batch, opts))
    }

    /// [`Classifier::learn`] from JSONL text (`{"text": ..., "label": "spam"|"ham"}` lines).
    pub fn learn_jsonl(
        &self,
        jsonl: &str,
        opts: &LearnOptions,
    ) -> Result<Classifier, data::DataError> {
        let batch = data::parse_jsonl(jsonl, Path::new("<request>"))?;
        Ok(self.learn(&batch, opts))
    }
}
