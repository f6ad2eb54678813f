//! The spam/scam filter: sift's linear text classifier on the request path.
//!
//! The model sits behind its own `ArcSwap` so a changed model file or a
//! learned update swaps in without a config reload; an inspection holds the
//! `Arc` it started with, so a swap never changes a body mid-way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue};

use super::extract::{self, BodyKind};
use super::{
    Filter, FilterError, Inspector, LearnReport, Loaded, ModelSlot, RequestInfo, Skip, Verdict,
};
use crate::classify::onnx::OnnxClassifier;
use crate::classify::{Classifier, LearnOptions, Model, Score, TextView};
use crate::config::file::FilterKind;
use crate::config::model::{FilterSpec, ModelSource};

/// A spam model: sift's linear model, or an ONNX model fed by the same
/// featurizer (kind `onnx`).
pub enum Backend {
    Native(Classifier),
    Onnx(OnnxClassifier),
}

impl Backend {
    fn score(&self, view: &TextView) -> Result<Score, Skip> {
        match self {
            Backend::Native(c) => Ok(c.score(view)),
            Backend::Onnx(o) => o.score(view).map_err(|e| {
                tracing::warn!(error = %e, "ONNX inference failed");
                Skip::ModelError
            }),
        }
    }
}

/// The spam model compiled into sift (`model: builtin`).
pub static BUILTIN_MODEL: &[u8] = include_bytes!("../../filters/spam/model.bin");

pub struct SpamFilter {
    spec: FilterSpec,
    shared: Arc<Headers>,
    /// What every inspection reads of the spec, built once.
    inspect: Arc<InspectSpec>,
    slot: ModelSlot<Backend>,
    /// One learn at a time: each starts from the model the last one saved.
    learning: Mutex<()>,
    /// The configured model file as last seen (to tell its changes from
    /// the learned file's).
    configured_seen: Mutex<super::Fingerprint>,
}

struct Headers {
    score: HeaderName,
    verdict: HeaderName,
}

impl SpamFilter {
    pub fn new(spec: FilterSpec) -> Result<SpamFilter, FilterError> {
        let loaded = load(&spec)?;
        let slot = ModelSlot::new(super::watched(&spec), loaded);
        let h = |suffix: &str| super::header_name(&spec, suffix);
        let shared = Arc::new(Headers {
            score: h("score")?,
            verdict: h("verdict")?,
        });
        let inspect = Arc::new(InspectSpec {
            name: spec.name.clone(),
            threshold: spec.threshold,
            json_pointers: spec.json_pointers.clone(),
            form_fields: spec.form_fields.clone(),
            query_fields: spec.query_fields.clone(),
        });
        let configured_seen = Mutex::new(configured_fingerprint(&spec));
        Ok(SpamFilter {
            spec,
            shared,
            inspect,
            slot,
            learning: Mutex::new(()),
            configured_seen,
        })
    }

    /// Whether the configured model file changed since the last look.
    fn configured_changed(&self) -> bool {
        let now = configured_fingerprint(&self.spec);
        let mut seen = self
            .configured_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let changed = *seen != now;
        *seen = now;
        changed
    }
}

/// The configured model file's identity (empty for a builtin model).
fn configured_fingerprint(spec: &FilterSpec) -> super::Fingerprint {
    match &spec.model {
        ModelSource::File(p) => super::fingerprint(&[p.as_path()]),
        ModelSource::Builtin => Vec::new(),
    }
}

/// The learned model if one was saved, else the configured one.
fn load(spec: &FilterSpec) -> Result<Loaded<Backend>, FilterError> {
    let err = |path: &Path, reason: String| FilterError::Model {
        filter: spec.name.clone(),
        path: path.display().to_string(),
        reason,
    };
    if spec.kind == FilterKind::Onnx {
        let ModelSource::File(p) = &spec.model else {
            return Err(err(
                Path::new("builtin"),
                "kind onnx needs a model file".into(),
            ));
        };
        let m =
            OnnxClassifier::load(p, spec.runtime.as_deref()).map_err(|e| err(p, e.to_string()))?;
        return Ok(Loaded {
            model: Backend::Onnx(m),
            source: p.display().to_string(),
        });
    }
    if let Some(l) = spec.learned_model.as_deref().filter(|l| l.exists()) {
        let clf = Classifier::load(l).map_err(|e| {
            err(
                l,
                format!("{e} (this is the learned model; delete it to use the configured one)"),
            )
        })?;
        return Ok(Loaded {
            model: Backend::Native(clf),
            source: l.display().to_string(),
        });
    }
    match &spec.model {
        ModelSource::Builtin => {
            let m = Model::from_bytes(BUILTIN_MODEL)
                .map_err(|e| err(Path::new("builtin"), e.to_string()))?;
            Ok(Loaded {
                model: Backend::Native(Classifier::new(m)),
                source: "builtin".into(),
            })
        }
        ModelSource::File(p) => Ok(Loaded {
            model: Backend::Native(Classifier::load(p).map_err(|e| err(p, e.to_string()))?),
            source: p.display().to_string(),
        }),
    }
}

impl Filter for SpamFilter {
    fn spec(&self) -> &FilterSpec {
        &self.spec
    }

    fn model_source(&self) -> String {
        self.slot.current().source.clone()
    }

    fn inspector(&self, req: &RequestInfo) -> Result<Box<dyn Inspector>, Skip> {
        // A type sift does not read is still read if it is JSON.
        let kind = extract::body_kind(req.content_type.as_deref()).unwrap_or(BodyKind::Other);
        let query = match (&req.query, self.inspect.query_fields.is_empty()) {
            (Some(q), false) => extract::query_text(q, &self.inspect.query_fields),
            _ => String::new(),
        };
        Ok(Box::new(SpamInspector {
            model: self.slot.current(),
            headers: self.shared.clone(),
            spec: self.inspect.clone(),
            kind,
            buf: Vec::new(),
            cut: false,
            not_json: false,
            query,
        }))
    }

    fn reload_if_changed(&self) -> Option<Result<String, FilterError>> {
        let configured_changed = self.configured_changed();
        self.slot.reload_if_changed(|| {
            let loaded = load(&self.spec)?;
            // The learned model wins over the configured file, but a new
            // configured file is still read, so a broken one is reported
            // (the admin watcher logs and counts a readable one as
            // `shadowed_by_learned`).
            if let (true, ModelSource::File(p)) = (configured_changed, &self.spec.model) {
                if loaded.source != p.display().to_string() && self.spec.kind == FilterKind::Spam {
                    Classifier::load(p).map_err(|e| FilterError::Model {
                        filter: self.spec.name.clone(),
                        path: p.display().to_string(),
                        reason: format!("{e} (the learned model {} keeps serving)", loaded.source),
                    })?;
                }
            }
            Ok(loaded)
        })
    }

    fn learn(&self, jsonl: &[u8]) -> Result<LearnReport, FilterError> {
        let _one = self.learning.lock().unwrap_or_else(|p| p.into_inner());
        let text = std::str::from_utf8(jsonl)
            .map_err(|_| FilterError::BadExamples("body is not UTF-8".into()))?;
        let batch = crate::classify::data::parse_jsonl(text, Path::new("<request>"))
            .map_err(|e| FilterError::BadExamples(e.to_string()))?;
        if batch.is_empty() {
            return Err(FilterError::BadExamples("no examples in the body".into()));
        }
        let spam = batch.iter().filter(|(_, s)| *s).count();
        let current = self.slot.current();
        let Backend::Native(clf) = &current.model else {
            return Err(FilterError::LearnUnsupported(self.spec.name.clone()));
        };
        let learned = clf.learn(&batch, &LearnOptions::default());
        let path: PathBuf = self
            .spec
            .learned_model
            .clone()
            .ok_or_else(|| FilterError::LearnUnsupported(self.spec.name.clone()))?;
        // Directories are never created: a missing one is an error naming
        // the path (an explicit learned_model's is checked at load too).
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            return Err(FilterError::Persist {
                path: path.display().to_string(),
                reason: format!(
                    "the directory {} does not exist (sift does not create it; point \
                     learned_model at a file in an existing directory)",
                    dir.display()
                ),
            });
        }
        learned
            .model()
            .save(&path)
            .map_err(|e| FilterError::Persist {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        // What we just wrote is what serves: the watcher need not reload it.
        self.slot.store_written(Loaded {
            model: Backend::Native(learned),
            source: path.display().to_string(),
        });
        Ok(LearnReport {
            filter: self.spec.name.clone(),
            examples: batch.len(),
            spam: Some(spam),
            ham: Some(batch.len() - spam),
            classes: Default::default(),
            trained_on: None,
            saved_to: path.display().to_string(),
        })
    }
}

struct InspectSpec {
    name: String,
    threshold: Option<f32>,
    json_pointers: Option<Vec<String>>,
    form_fields: Option<Vec<String>>,
    query_fields: Vec<String>,
}

struct SpamInspector {
    model: Arc<Loaded<Backend>>,
    headers: Arc<Headers>,
    spec: Arc<InspectSpec>,
    kind: BodyKind,
    buf: Vec<u8>,
    /// What was fed is a prefix of the body.
    cut: bool,
    /// A body of another type that is not JSON: not kept.
    not_json: bool,
    /// The text of the request's query fields (`query_fields`), one value
    /// per line; empty if none.
    query: String,
}

impl Inspector for SpamInspector {
    fn cut(&mut self) {
        self.cut = true;
    }

    fn settled(&self) -> Option<Skip> {
        self.not_json.then_some(Skip::ContentType)
    }

    fn feed(&mut self, chunk: &[u8]) {
        // A body of another type is kept only while it may be JSON: a
        // binary upload costs no copy.
        if self.not_json {
            return;
        }
        if self.kind == BodyKind::Other && self.buf.is_empty() {
            // `{`, `[`, or the first byte of a BOM or of UTF-16/32.
            match chunk.iter().find(|c| !c.is_ascii_whitespace()) {
                None => return,
                Some(b'{' | b'[' | 0 | 0xEF | 0xFE | 0xFF) => {}
                Some(_) => {
                    self.not_json = true;
                    return;
                }
            }
        }
        self.buf.extend_from_slice(chunk);
    }

    fn has_other_text(&self) -> bool {
        !self.query.trim().is_empty()
    }

    fn finish_unread(self: Box<Self>, skip: Skip) -> Result<Verdict, Skip> {
        let this = *self;
        this.query_only(skip)
    }

    fn finish(self: Box<Self>) -> Result<Verdict, Skip> {
        let mut this = *self;
        if this.not_json {
            return this.query_only(Skip::ContentType);
        }
        let extracted = match this.kind {
            BodyKind::Json => {
                extract::extract_json(&this.buf, this.spec.json_pointers.as_deref(), this.cut)
            }
            BodyKind::Other => {
                extract::sniffed_json(&this.buf, this.spec.json_pointers.as_deref(), this.cut)
                    .ok_or(extract::ExtractError::NotText)
            }
            _ => extract::extract_owned(
                &this.kind,
                std::mem::take(&mut this.buf),
                this.spec.json_pointers.as_deref(),
                this.spec.form_fields.as_deref(),
            ),
        };
        let mut view = match extracted {
            Ok(v) => v,
            Err(extract::ExtractError::NotText) => return this.query_only(Skip::ContentType),
            Err(_) => return this.query_only(Skip::ExtractError),
        };
        if view.text.trim().is_empty() && view.links.is_empty() {
            return this.query_only(Skip::Empty);
        }
        if !this.query.is_empty() {
            // The query's text first, then the body's, one view.
            let mut text = std::mem::take(&mut this.query);
            text.push('\n');
            text.push_str(&view.text);
            view.text = text;
        }
        this.verdict(&view, None)
    }
}

impl SpamInspector {
    /// The body is not read (`skip`): the verdict on the query fields'
    /// text, or the skip if there is none.
    fn query_only(self, skip: Skip) -> Result<Verdict, Skip> {
        if self.query.trim().is_empty() {
            return Err(skip);
        }
        let view = crate::classify::text::TextView::plain(&self.query);
        // An empty body is no loss; any other skip is counted beside the
        // verdict (and refused under `on_unreadable: reject`).
        self.verdict(&view, (skip != Skip::Empty).then_some(skip))
    }

    fn verdict(
        &self,
        view: &crate::classify::text::TextView,
        unread: Option<Skip>,
    ) -> Result<Verdict, Skip> {
        let score = self.model.model.score(view)?;
        let spam = match self.spec.threshold {
            Some(t) => score.probability >= t,
            None => score.spam,
        };
        let verdict = if spam { "spam" } else { "ham" };
        let p = (score.probability * 10_000.0).round() / 10_000.0;
        // `{p:.4}` without the float formatter (same text: p is within
        // 1e-7 of a multiple of 1e-4).
        let mut digits = [0u8; 64];
        let p_text = super::fixed4(p, &mut digits);
        let headers = vec![
            (
                self.headers.score.clone(),
                HeaderValue::from_bytes(p_text).unwrap_or(HeaderValue::from_static("0")),
            ),
            (
                self.headers.verdict.clone(),
                HeaderValue::from_static(verdict),
            ),
        ];
        let mut detail = serde_json::Map::new();
        let margin = (score.margin * 10_000.0).round() / 10_000.0;
        detail.insert("margin".into(), super::short_f64_4(margin).into());
        Ok(Verdict {
            filter: self.spec.name.clone(),
            verdict,
            flagged: spam,
            score: p,
            detail,
            headers,
            unread,
        })
    }
}
