//! The CI-log filter: labels a build log by failure class and points at the
//! line that broke it (`src/cilog` is the model). The log streams through a
//! bounded scanner, so its memory does not grow with the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue};

use super::json_stream::{JsonStrings, StrSink};
use super::{
    Filter, FilterError, Inspector, LearnReport, Loaded, ModelSlot, RequestInfo, Skip, Verdict,
};
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
    /// One learn at a time: each retrains on the store the last one wrote.
    learning: Mutex<()>,
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
    // A learned model (only with learn_data) wins over the configured one,
    // also after a restart; delete it to go back.
    if let Some(l) = spec.learned_model.as_deref().filter(|l| l.exists()) {
        return Ok(Loaded {
            model: CilogModel::load(l).map_err(|e| {
                err(
                    l,
                    format!("{e} (this is the learned model; delete it to use the configured one)"),
                )
            })?,
            source: l.display().to_string(),
        });
    }
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
        Ok(CilogFilter {
            spec,
            names,
            slot,
            learning: Mutex::new(()),
        })
    }
}

/// Where a cilog filter keeps the logs it has learned: beside the learned
/// model, `<learned_model>.examples.jsonl` (the `--also FILE.jsonl` format).
pub fn examples_store(learned_model: &Path) -> PathBuf {
    let mut s = learned_model.as_os_str().to_owned();
    s.push(".examples.jsonl");
    PathBuf::from(s)
}

/// Cut a torn last line (a crash mid-append: every append ends with a
/// newline) off the store, so the learns after it read only whole lines;
/// the batch that was being appended is lost, nothing else. Reads
/// backwards from the end only as far as that line (no parse, nothing
/// of the store held in memory).
fn trim_torn_tail(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut end = f.metadata()?.len();
    let mut buf = vec![0u8; 64 << 10];
    let mut first = true;
    while end > 0 {
        let n = buf.len().min(end as usize);
        f.seek(SeekFrom::Start(end - n as u64))?;
        f.read_exact(&mut buf[..n])?;
        if first && buf[n - 1] == b'\n' {
            return Ok(());
        }
        first = false;
        if let Some(i) = memchr::memrchr(b'\n', &buf[..n]) {
            return f.set_len(end - n as u64 + i as u64 + 1);
        }
        end -= n as u64;
    }
    f.set_len(0)
}

impl CilogFilter {
    /// Retrain on learn_data + the stored logs + `batch` in a child process
    /// (`sift train cilog`: the proxy's memory does not grow with the data
    /// set, and the model is the offline command's, byte for byte); then
    /// append `batch` to the store, put the model in place, swap it in.
    fn retrain(
        &self,
        data_dir: &Path,
        learned: &Path,
        batch: Vec<crate::cilog::train::Example>,
    ) -> Result<LearnReport, FilterError> {
        use crate::cilog::train;
        use std::io::Write;
        let persist = |path: &Path, reason: String| FilterError::Persist {
            path: path.display().to_string(),
            reason,
        };
        // Directories are never created (as for spam's learned model).
        if let Some(dir) = learned
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            return Err(persist(
                learned,
                format!(
                    "the directory {} does not exist (sift does not create it; point \
                     learned_model at a file in an existing directory)",
                    dir.display()
                ),
            ));
        }
        let store = examples_store(learned);
        // Only whole lines go to training (the child parses them and
        // names any bad one).
        trim_torn_tail(&store).map_err(|e| persist(&store, e.to_string()))?;
        let with = |suffix: &str| {
            let mut s = learned.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        let (pending, out) = (with(".pending.jsonl"), with(".new"));
        let lines: String = batch.iter().map(|e| train::jsonl_line(e) + "\n").collect();
        std::fs::write(&pending, &lines).map_err(|e| persist(&pending, e.to_string()))?;
        let cleanup = || {
            let _ = std::fs::remove_file(&pending);
            let _ = std::fs::remove_file(&out);
        };
        let exe = std::env::current_exe().map_err(|e| persist(learned, e.to_string()))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["train", "cilog", "--data"]).arg(data_dir);
        if store.exists() {
            cmd.arg("--also").arg(&store);
        }
        let run = cmd
            .arg("--also")
            .arg(&pending)
            .arg("--out")
            .arg(&out)
            .stdin(std::process::Stdio::null())
            .output();
        let run = match run {
            Ok(r) => r,
            Err(e) => {
                cleanup();
                return Err(persist(
                    learned,
                    format!("cannot run sift train cilog: {e}"),
                ));
            }
        };
        if !run.status.success() {
            cleanup();
            let err = String::from_utf8_lossy(&run.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(FilterError::LearnData {
                path: data_dir.display().to_string(),
                reason: format!("retraining failed ({}): {last}", run.status),
            });
        }
        let model = match CilogModel::load(&out) {
            Ok(m) => m,
            Err(e) => {
                cleanup();
                return Err(persist(&out, e.to_string()));
            }
        };
        // The examples first (appended, synced), then the model (renamed
        // into place): a failure between the two leaves the store ahead of
        // the model, and the next learn trains on it all.
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&store)
            .and_then(|mut f| f.write_all(lines.as_bytes()).and_then(|()| f.sync_data()));
        if let Err(e) = appended {
            cleanup();
            return Err(persist(&store, e.to_string()));
        }
        let _ = std::fs::remove_file(&pending);
        std::fs::rename(&out, learned).map_err(|e| persist(learned, e.to_string()))?;
        crate::classify::model::sync_dir_of(learned);
        self.slot.store_written(Loaded {
            model,
            source: learned.display().to_string(),
        });
        let mut classes = std::collections::BTreeMap::new();
        for e in &batch {
            *classes.entry(e.label.as_str().to_string()).or_insert(0) += 1;
        }
        // `sift train cilog` prints "wrote F (B bytes) in Ts: N labelled CI logs ...".
        let stdout = String::from_utf8_lossy(&run.stdout);
        let trained_on = stdout
            .find(" labelled CI logs")
            .and_then(|i| stdout[..i].split_whitespace().next_back())
            .and_then(|n| n.parse().ok());
        Ok(LearnReport {
            filter: self.spec.name.clone(),
            examples: batch.len(),
            spam: None,
            ham: None,
            classes,
            trained_on,
            saved_to: learned.display().to_string(),
        })
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

    /// Learn labelled logs (JSONL, see [`crate::cilog::train::parse_jsonl`]):
    /// retrain on learn_data plus every log learned so far, persist, swap.
    fn learn(&self, jsonl: &[u8]) -> Result<LearnReport, FilterError> {
        let _one = self.learning.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(data_dir), Some(learned)) = (&self.spec.learn_data, &self.spec.learned_model)
        else {
            return Err(FilterError::LearnNeedsData(self.spec.name.clone()));
        };
        let text = std::str::from_utf8(jsonl)
            .map_err(|_| FilterError::BadExamples("body is not UTF-8".into()))?;
        let batch = crate::cilog::train::parse_jsonl(text, "<request>")
            .map_err(|e| FilterError::BadExamples(e.to_string()))?;
        if batch.is_empty() {
            return Err(FilterError::BadExamples("no examples in the body".into()));
        }
        self.retrain(data_dir, learned, batch)
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
            unread: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::trim_torn_tail;

    #[test]
    fn a_torn_last_line_is_cut_and_whole_lines_stay() {
        let dir = std::env::temp_dir().join(format!("sift-torn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("store.jsonl");
        // Whole lines: untouched. A long torn line (past one 64 KiB read):
        // cut back to the last newline. No newline at all: emptied.
        let long = "x".repeat(200_000);
        for (content, want) in [
            (
                "{\"a\":1}\n{\"b\":2}\n".to_string(),
                "{\"a\":1}\n{\"b\":2}\n".to_string(),
            ),
            (
                format!("{{\"a\":1}}\n{{\"log\":\"{long}"),
                "{\"a\":1}\n".to_string(),
            ),
            (format!("{{\"log\":\"{long}"), String::new()),
            (String::new(), String::new()),
        ] {
            std::fs::write(&p, &content).unwrap();
            trim_torn_tail(&p).unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), want);
        }
        std::fs::remove_file(&p).unwrap();
        trim_torn_tail(&p).unwrap(); // a missing store is no error
        std::fs::remove_dir_all(&dir).ok();
    }
}
