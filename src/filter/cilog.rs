//! The CI-log filter: labels a build log by failure class and points at the
//! line that broke it (`src/cilog` is the model). The log streams through a
//! bounded scanner, so its memory does not grow with the log.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::json_stream::{JsonStrings, StrSink};
use super::{Filter, FilterError, Inspector, Loaded, ModelSlot, RequestInfo, Skip, Verdict};
use crate::cilog::{CilogModel, Scanner};
use crate::config::model::{FilterSpec, ModelSource};

/// The CI-log model compiled into sift (`model: builtin`).
pub static BUILTIN_MODEL: &[u8] = include_bytes!("../../filters/cilog/model.bin");

/// Longest evidence header value.
const EVIDENCE_MAX: usize = 200;

pub struct CilogFilter {
    spec: FilterSpec,
    names: Arc<Names>,
    slot: ModelSlot<CilogModel>,
}

struct Names {
    class: HeaderName,
    confidence: HeaderName,
    evidence: HeaderName,
}

fn load(spec: &FilterSpec) -> Result<Loaded<CilogModel>, FilterError> {
    let err = |path: &Path, reason: String| FilterError::Model {
        filter: spec.name.clone(),
        path: path.display().to_string(),
        reason,
    };
    match &spec.model {
        ModelSource::Builtin => Ok(Loaded {
            model: CilogModel::from_bytes(BUILTIN_MODEL)
                .map_err(|e| err(Path::new("builtin"), e.to_string()))?,
            source: "builtin".into(),
        }),
        ModelSource::File(p) => Ok(Loaded {
            model: CilogModel::load(p).map_err(|e| err(p, e.to_string()))?,
            source: p.display().to_string(),
        }),
    }
}

impl CilogFilter {
    pub fn new(spec: FilterSpec) -> Result<CilogFilter, FilterError> {
        let loaded = load(&spec)?;
        // The automata are built at set-up, not on the first request.
        crate::cilog::warm();
        let slot = ModelSlot::new(super::watched(&spec), loaded);
        let h = |suffix: &str| super::header_name(&spec, suffix);
        let names = Arc::new(Names {
            class: h("class")?,
            confidence: h("confidence")?,
            evidence: h("evidence-line")?,
        });
        Ok(CilogFilter { spec, names, slot })
    }
}

impl Filter for CilogFilter {
    fn spec(&self) -> &FilterSpec {
        &self.spec
    }

    fn model_source(&self) -> String {
        self.slot.current().source.clone()
    }

    fn reload_if_changed(&self) -> Option<Result<String, FilterError>> {
        self.slot.reload_if_changed(|| load(&self.spec))
    }

    fn inspector(&self, req: &RequestInfo) -> Result<Box<dyn Inspector>, Skip> {
        let mime = req.content_type.as_deref().map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        let json = match mime.as_deref() {
            None => false,
            Some(m) if m.starts_with("text/") || m == "application/octet-stream" => false,
            Some(m)
                if m == "application/json"
                    || (m.starts_with("application/") && m.ends_with("+json")) =>
            {
                true
            }
            Some(_) => return Err(Skip::ContentType),
        };
        let model = self.slot.current().model.clone();
        let how = if json {
            match self.spec.json_pointers.as_deref() {
                // The log's field is named: stream its string into the
                // scanner as the document arrives (bounded memory, any
                // length, like a plain-text log).
                Some(ps) if !ps.is_empty() => How::JsonStream {
                    walker: JsonStrings::new(Some(ps), true),
                    logs: LogFields {
                        scanners: (0..ps.len()).map(|_| None).collect(),
                        model,
                    },
                },
                _ => How::Json {
                    buf: Vec::new(),
                    pointers: self.spec.json_pointers.clone(),
                    model,
                },
            }
        } else {
            How::Stream(Box::new(model.owned_scanner()))
        };
        Ok(Box::new(CilogInspector {
            name: self.spec.name.clone(),
            names: self.names.clone(),
            how,
            cut: false,
        }))
    }
}

enum How {
    /// A plain-text log, scanned as it streams.
    Stream(Box<Scanner<'static>>),
    /// A JSON document whose log field is named by pointers, streamed.
    JsonStream {
        walker: JsonStrings,
        logs: LogFields,
    },
    /// A JSON document holding the log in some field (the longest string).
    Json {
        buf: Vec<u8>,
        pointers: Option<Vec<String>>,
        model: CilogModel,
    },
}

/// One scanner per configured pointer, started when its string begins.
struct LogFields {
    scanners: Vec<Option<Box<Scanner<'static>>>>,
    model: CilogModel,
}

impl StrSink for LogFields {
    fn bytes(&mut self, which: Option<usize>, b: &[u8]) {
        let Some(slot) = which.and_then(|i| self.scanners.get_mut(i)) else {
            return;
        };
        slot.get_or_insert_with(|| Box::new(self.model.owned_scanner()))
            .feed(b);
    }
    fn end(&mut self, _: Option<usize>) {}
}

/// The longest string of a JSON prefix (the log, when no pointer names it).
#[derive(Default)]
struct Longest {
    best: Vec<u8>,
    cur: Vec<u8>,
}

impl StrSink for Longest {
    fn bytes(&mut self, _: Option<usize>, b: &[u8]) {
        self.cur.extend_from_slice(b);
    }
    fn end(&mut self, _: Option<usize>) {
        // Kept by swapping buffers at each string's end: no copy.
        if self.cur.len() > self.best.len() {
            std::mem::swap(&mut self.best, &mut self.cur);
        }
        self.cur.clear();
    }
}

impl Longest {
    /// The longest string, the one the prefix cuts off included.
    fn into_best(mut self) -> Vec<u8> {
        self.end(None);
        self.best
    }
}

struct CilogInspector {
    name: String,
    names: Arc<Names>,
    how: How,
    /// What was fed is a prefix of the body.
    cut: bool,
}

/// The log in a JSON document: the first pointer naming a string, else the
/// longest string value anywhere.
fn log_in_json(doc: &serde_json::Value, pointers: Option<&[String]>) -> Option<String> {
    if let Some(ps) = pointers {
        return ps
            .iter()
            .find_map(|p| doc.pointer(p).and_then(|v| v.as_str()).map(str::to_owned));
    }
    fn longest<'a>(v: &'a serde_json::Value, best: &mut Option<&'a str>) {
        match v {
            serde_json::Value::String(s) if best.is_none_or(|b| s.len() > b.len()) => {
                *best = Some(s);
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| longest(x, best)),
            serde_json::Value::Object(o) => o.values().for_each(|x| longest(x, best)),
            _ => {}
        }
    }
    let mut best = None;
    longest(doc, &mut best);
    best.map(str::to_owned)
}

impl Inspector for CilogInspector {
    fn bounded(&self) -> bool {
        matches!(self.how, How::Stream(_) | How::JsonStream { .. })
    }

    fn cut(&mut self) {
        self.cut = true;
    }

    fn feed(&mut self, chunk: &[u8]) {
        match &mut self.how {
            How::Stream(s) => s.feed(chunk),
            How::JsonStream { walker, logs } => walker.feed(chunk, logs),
            How::Json { buf, .. } => buf.extend_from_slice(chunk),
        }
    }

    fn finish(self: Box<Self>) -> Result<Verdict, Skip> {
        let v = match self.how {
            How::Stream(s) => s.finish(),
            How::JsonStream { walker, logs } => {
                // Broken JSON, or a whole body that ends inside the
                // document, is not a log; a prefix (cut) may end anywhere.
                if walker.failed() || !(self.cut || walker.complete()) {
                    return Err(Skip::ExtractError);
                }
                // The first pointer (in configured order) that named a string.
                let s = logs
                    .scanners
                    .into_iter()
                    .flatten()
                    .next()
                    .ok_or(Skip::ExtractError)?;
                s.finish()
            }
            How::Json {
                buf,
                pointers,
                model,
            } => match serde_json::from_slice::<serde_json::Value>(&buf) {
                Ok(doc) => {
                    let log = log_in_json(&doc, pointers.as_deref()).ok_or(Skip::ExtractError)?;
                    model.classify(log.as_bytes())
                }
                // A prefix (`inspect_prefix`): its longest string.
                Err(_) if self.cut => {
                    let mut w = JsonStrings::new(None, false);
                    let mut l = Longest::default();
                    w.feed(&buf, &mut l);
                    let best = l.into_best();
                    if w.failed() || best.is_empty() {
                        return Err(Skip::ExtractError);
                    }
                    model.classify(&best)
                }
                Err(_) => return Err(Skip::ExtractError),
            },
        };
        let class = v.class.as_str();
        let conf = (v.confidence * 1000.0).round() / 1000.0;
        let headers = vec![
            (self.names.class.clone(), HeaderValue::from_static(class)),
            (
                self.names.confidence.clone(),
                HeaderValue::from_str(&format!("{conf:.3}"))
                    .unwrap_or(HeaderValue::from_static("0")),
            ),
            (
                self.names.evidence.clone(),
                super::header_value(&format!("{}: {}", v.line, v.text), EVIDENCE_MAX),
            ),
        ];
        let mut detail = serde_json::Map::new();
        detail.insert("class".into(), class.into());
        detail.insert("confidence".into(), super::short_f64(conf).into());
        detail.insert("line".into(), v.line.into());
        detail.insert("text".into(), v.text.clone().into());
        detail.insert(
            "context".into(),
            serde_json::Value::Array(
                v.context
                    .iter()
                    .map(|(n, t)| serde_json::json!({ "line": n, "text": t }))
                    .collect(),
            ),
        );
        Ok(Verdict {
            filter: self.name,
            verdict: class,
            flagged: false,
            score: conf,
            detail,
            headers,
        })
    }
}
