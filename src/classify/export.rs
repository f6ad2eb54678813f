//! Export of featurized data for training outside sift (the ONNX model's
//! `filters/spam/onnx/train.py`): the very sparse vectors sift serves.
//!
//! A feature directory holds little-endian arrays that numpy reads with
//! `np.fromfile`, plus a JSON header:
//! - `meta.json`: `{"format": "sift-features/1", "features": {FeatureMeta},
//!   "n": rows, "nnz": entries, "groups": [group names]}`;
//! - `indptr.u64` (n + 1 offsets), `idx.u32` (bucket indices, unfolded, in
//!   `0..2^bits`), `val.f32` (values): a CSR matrix;
//! - `label.u8` (0 ham, 1 spam, 255 unknown), `group.u8` (index into
//!   `groups`, 255 none);
//! - `names.txt`: one input name per row.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::features::{Collect, Featurizer};
use super::onnx::FeatureMeta;
use super::text::TextView;

pub const FORMAT: &str = "sift-features/1";

/// Accumulates rows, then writes a feature directory.
#[derive(Debug)]
pub struct FeatureWriter {
    fz: Featurizer,
    groups: Vec<String>,
    indptr: Vec<u64>,
    idx: Vec<u32>,
    val: Vec<f32>,
    label: Vec<u8>,
    group: Vec<u8>,
    names: Vec<String>,
    c: Collect,
}

impl FeatureWriter {
    pub fn new(fz: Featurizer, groups: Vec<String>) -> FeatureWriter {
        FeatureWriter {
            fz,
            groups,
            indptr: vec![0],
            idx: Vec::new(),
            val: Vec::new(),
            label: Vec::new(),
            group: Vec::new(),
            names: Vec::new(),
            c: Collect::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.label.len()
    }

    pub fn is_empty(&self) -> bool {
        self.label.is_empty()
    }

    /// Featurize one view. `label`: Some(true) spam, Some(false) ham.
    pub fn push(&mut self, view: &TextView, label: Option<bool>, group: Option<u8>, name: &str) {
        self.fz.run(view, &mut self.c);
        let cfg = self.fz.config();
        self.c.finish(
            [cfg.word_scale, cfg.char_scale],
            &mut self.idx,
            &mut self.val,
        );
        self.indptr.push(self.idx.len() as u64);
        self.label.push(match label {
            Some(true) => 1,
            Some(false) => 0,
            None => 255,
        });
        self.group.push(group.unwrap_or(255));
        self.names.push(name.replace(['\n', '\r'], " "));
    }

    /// Write the directory (created if needed).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let meta = serde_json::json!({
            "format": FORMAT,
            "features": FeatureMeta::from(*self.fz.config()),
            "n": self.len(),
            "nnz": self.idx.len(),
            "groups": self.groups,
        });
        std::fs::write(dir.join("meta.json"), format!("{meta:#}\n"))?;
        write_le(dir.join("indptr.u64"), &self.indptr, |v| v.to_le_bytes())?;
        write_le(dir.join("idx.u32"), &self.idx, |v| v.to_le_bytes())?;
        write_le(dir.join("val.f32"), &self.val, |v| v.to_le_bytes())?;
        std::fs::write(dir.join("label.u8"), &self.label)?;
        std::fs::write(dir.join("group.u8"), &self.group)?;
        let mut names = String::new();
        for n in &self.names {
            names.push_str(n);
            names.push('\n');
        }
        std::fs::write(dir.join("names.txt"), names)
    }
}

fn write_le<T: Copy, const N: usize>(
    path: PathBuf,
    xs: &[T],
    f: impl Fn(T) -> [u8; N],
) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for &x in xs {
        w.write_all(&f(x))?;
    }
    w.flush()
}
