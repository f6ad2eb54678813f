//! The spam/scam filter: sift's linear text classifier on the request path.
//!
//! The model sits behind its own `ArcSwap` so a changed model file or a
//! learned update swaps in without a config reload; an inspection holds the
//! `Arc` it started with, so a swap never changes a body mid-way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};

use super::extract::{self, BodyKind};
use super::{Filter, FilterError, Fingerprint, Inspector, LearnReport, RequestInfo, Skip, Verdict};
use crate::classify::{Classifier, LearnOptions, Model};
use crate::config::model::{FilterSpec, ModelSource};

/// The spam model compiled into sift (`model: builtin`).
pub static BUILTIN_MODEL: &[u8] = include_bytes!("../../filters/spam/model.bin");

pub struct SpamFilter {
    spec: FilterSpec,
    shared: Arc<Headers>,
    current: ArcSwap<Loaded>,
    seen: Mutex<Fingerprint>,
    /// One learn at a time: each starts from the model the last one saved.
    learning: Mutex<()>,
}

struct Headers {
    score: HeaderName,
    verdict: HeaderName,
}

struct Loaded {
    clf: Classifier,
    source: String,
}

impl SpamFilter {
    pub fn new(spec: FilterSpec) -> Result<SpamFilter, FilterError> {
        let seen = super::fingerprint(&watched(&spec));
        let loaded = load(&spec)?;
        let h = |suffix: &str| {
            HeaderName::from_bytes(format!("{}-{suffix}", spec.header_prefix).as_bytes()).map_err(
                |e| FilterError::Model {
                    filter: spec.name.clone(),
                    path: "-".into(),
                    reason: format!("header_prefix: {e}"),
                },
            )
        };
        let shared = Arc::new(Headers {
            score: h("score")?,
            verdict: h("verdict")?,
        });
        Ok(SpamFilter {
            spec,
            shared,
            current: ArcSwap::from_pointee(loaded),
            seen: Mutex::new(seen),
            learning: Mutex::new(()),
        })
    }

    pub fn classifier(&self) -> Classifier {
        self.current.load().clf.clone()
    }
}

fn watched(spec: &FilterSpec) -> Vec<&Path> {
    let mut v = Vec::new();
    if let ModelSource::File(p) = &spec.model {
        v.push(p.as_path());
    }
    if let Some(l) = &spec.learned_model {
        v.push(l.as_path());
    }
    v
}

/// The learned model if one was saved, else the configured one.
fn load(spec: &FilterSpec) -> Result<Loaded, FilterError> {
    let err = |path: &Path, reason: String| FilterError::Model {
        filter: spec.name.clone(),
        path: path.display().to_string(),
        reason,
    };
    if let Some(l) = spec.learned_model.as_deref().filter(|l| l.exists()) {
        let clf = Classifier::load(l).map_err(|e| {
            err(
                l,
                format!("{e} (this is the learned model; delete it to use the configured one)"),
            )
        })?;
        return Ok(Loaded {
            clf,
            source: l.display().to_string(),
        });
    }
    match &spec.model {
        ModelSource::Builtin => {
            let m = Model::from_bytes(BUILTIN_MODEL)
                .map_err(|e| err(Path::new("builtin"), e.to_string()))?;
            Ok(Loaded {
                clf: Classifier::new(m),
                source: "builtin".into(),
            })
        }
        ModelSource::File(p) => Ok(Loaded {
            clf: Classifier::load(p).map_err(|e| err(p, e.to_string()))?,
            source: p.display().to_string(),
        }),
    }
}

impl Filter for SpamFilter {
    fn spec(&self) -> &FilterSpec {
        &self.spec
    }

    fn model_source(&self) -> String {
        self.current.load().source.clone()
    }

    fn inspector(&self, req: &RequestInfo) -> Result<Box<dyn Inspector>, Skip> {
        let kind = extract::body_kind(req.content_type.as_deref()).ok_or(Skip::ContentType)?;
        Ok(Box::new(SpamInspector {
            model: self.current.load_full(),
            headers: self.shared.clone(),
            spec: Arc::new(InspectSpec {
                name: self.spec.name.clone(),
                threshold: self.spec.threshold,
                json_pointers: self.spec.json_pointers.clone(),
                form_fields: self.spec.form_fields.clone(),
            }),
            kind,
            buf: Vec::new(),
        }))
    }

    fn reload_if_changed(&self) -> Option<Result<String, FilterError>> {
        let now = super::fingerprint(&watched(&self.spec));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some(load(&self.spec).map(|l| {
            let source = l.source.clone();
            self.current.store(Arc::new(l));
            source
        }))
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
        let current = self.current.load_full();
        let learned = current.clf.learn(&batch, &LearnOptions::default());
        let path: PathBuf = self
            .spec
            .learned_model
            .clone()
            .ok_or_else(|| FilterError::LearnUnsupported(self.spec.name.clone()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| FilterError::Persist {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        learned
            .model()
            .save(&path)
            .map_err(|e| FilterError::Persist {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        // What we just wrote is what serves: the watcher need not reload it.
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
            super::fingerprint(&watched(&self.spec));
        self.current.store(Arc::new(Loaded {
            clf: learned,
            source: path.display().to_string(),
        }));
        Ok(LearnReport {
            filter: self.spec.name.clone(),
            examples: batch.len(),
            spam,
            ham: batch.len() - spam,
            saved_to: path.display().to_string(),
        })
    }
}

struct InspectSpec {
    name: String,
    threshold: Option<f32>,
    json_pointers: Option<Vec<String>>,
    form_fields: Option<Vec<String>>,
}

struct SpamInspector {
    model: Arc<Loaded>,
    headers: Arc<Headers>,
    spec: Arc<InspectSpec>,
    kind: BodyKind,
    buf: Vec<u8>,
}

impl Inspector for SpamInspector {
    fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    fn finish(self: Box<Self>) -> Result<Verdict, Skip> {
        let view = extract::extract(
            &self.kind,
            &self.buf,
            self.spec.json_pointers.as_deref(),
            self.spec.form_fields.as_deref(),
        )
        .map_err(|_| Skip::ExtractError)?;
        if view.text.trim().is_empty() && view.links.is_empty() {
            return Err(Skip::Empty);
        }
        let score = self.model.clf.score(&view);
        let spam = match self.spec.threshold {
            Some(t) => score.probability >= t,
            None => score.spam,
        };
        let verdict = if spam { "spam" } else { "ham" };
        let p = (score.probability * 10_000.0).round() / 10_000.0;
        let headers = vec![
            (
                self.headers.score.clone(),
                HeaderValue::from_str(&format!("{p:.4}")).unwrap_or(HeaderValue::from_static("0")),
            ),
            (
                self.headers.verdict.clone(),
                HeaderValue::from_static(verdict),
            ),
        ];
        let mut detail = serde_json::Map::new();
        detail.insert("margin".into(), serde_json::json!(score.margin));
        Ok(Verdict {
            filter: self.spec.name.clone(),
            verdict,
            flagged: spam,
            score: p,
            detail,
            headers,
        })
    }
}
