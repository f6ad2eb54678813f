//! The CI-log model file.
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! magic       8 bytes  "SIFTCIL\0"
//! version     u32      7 (6 with 35 re-ranker features, the line
//!                      shape; 6: 28; 5: one class table; 4: no
//!                      signatures; 3: no re-ranker; 2: no zone features;
//!                      all refused)
//! line_bits   u32      log2 of the line scorer's buckets (10..=22)
//! class_bits  u32      log2 of the class scorer's buckets (10..=20)
//! n_classes   u32      9
//! pos_buckets u32      48
//! line_scale  f32      line weights: value = q × line_scale
//! line_q      2^line_bits × i8
//! pos_w       pos_buckets × f32
//! class_scale f32
//! class_q     2^class_bits × n_classes × i8   (bucket-major)
//! class_b     n_classes × f32
//! ev_scale    f32      the evidence class scorer (same shape)
//! ev_q        2^class_bits × n_classes × i8
//! ev_b        n_classes × f32
//! rerank_n    u32      re-ranker weights (RERANK_F)
//! rerank_w    rerank_n × f32
//! note_len    u32      ≤ 4096
//! note        UTF-8
//! checksum    u64      FNV-1a 64 of every byte before it
//! ```

use std::path::Path;

use super::CilogError;
use super::features::POS_BUCKETS;
use super::{Class, N_CLASSES, RERANK_F};

pub const MAGIC: &[u8; 8] = b"SIFTCIL\0";
pub const VERSION: u32 = 7;
const MAX_NOTE: usize = 4096;

/// The learned parameters, dequantised.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub line_bits: u8,
    /// Line weights (training side; serving reads `line_q`).
    pub line_w: Vec<f32>,
    /// The quantised line weights as stored: value = q × `line_scale`. A
    /// 2^18-byte table stays in the L2 cache on the hot path.
    pub line_q: Vec<i8>,
    pub line_scale: f32,
    pub pos_w: [f32; POS_BUCKETS],
    pub class_bits: u8,
    /// `class_w[bucket * N_CLASSES + class]`.
    pub class_w: Vec<f32>,
    pub class_b: [f32; N_CLASSES],
    /// The evidence class scorer (same layout as `class_w`): its per-line
    /// distributions choose the evidence line ([`super::EV_ENTROPY`]).
    pub ev_w: Vec<f32>,
    pub ev_b: [f32; N_CLASSES],
    /// Weights of the evidence re-ranker's features ([`super::rerank_features`]).
    pub rerank_w: [f32; RERANK_F],
    pub note: String,
}

fn fnv64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn quantize(w: &[f32]) -> (f32, Vec<i8>) {
    let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    };
    let q = w
        .iter()
        .map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (scale, q)
}

impl Params {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.line_w.len() + self.class_w.len() + 256);
        out.extend_from_slice(MAGIC);
        for v in [
            VERSION,
            u32::from(self.line_bits),
            u32::from(self.class_bits),
            N_CLASSES as u32,
            POS_BUCKETS as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let (ls, lq) = quantize(&self.line_w);
        out.extend_from_slice(&ls.to_le_bytes());
        out.extend(lq.iter().map(|&q| q as u8));
        for v in self.pos_w {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let (cs, cq) = quantize(&self.class_w);
        out.extend_from_slice(&cs.to_le_bytes());
        out.extend(cq.iter().map(|&q| q as u8));
        for v in self.class_b {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let (es, eq) = quantize(&self.ev_w);
        out.extend_from_slice(&es.to_le_bytes());
        out.extend(eq.iter().map(|&q| q as u8));
        for v in self.ev_b {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(RERANK_F as u32).to_le_bytes());
        for v in self.rerank_w {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let note = &self.note.as_bytes()[..self.note.len().min(MAX_NOTE)];
        let note = String::from_utf8_lossy(note);
        out.extend_from_slice(&(note.len() as u32).to_le_bytes());
        out.extend_from_slice(note.as_bytes());
        let sum = fnv64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Params, CilogError> {
        let mut r = Reader { b, at: 0 };
        if r.take(8)? != MAGIC {
            return Err(CilogError::BadMagic);
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(CilogError::Version(version));
        }
        let line_bits = r.u32()?;
        let class_bits = r.u32()?;
        let n_classes = r.u32()?;
        let pos_buckets = r.u32()?;
        if !(10..=22).contains(&line_bits) || !(10..=20).contains(&class_bits) {
            return Err(CilogError::Invalid(format!(
                "bucket bits out of range (line {line_bits}, class {class_bits})"
            )));
        }
        if n_classes as usize != N_CLASSES || pos_buckets as usize != POS_BUCKETS {
            return Err(CilogError::Invalid(format!(
                "{n_classes} classes and {pos_buckets} position buckets (this sift reads {N_CLASSES} and {POS_BUCKETS})"
            )));
        }
        // Check the checksum before decoding the tables.
        if b.len() < 8 {
            return Err(CilogError::Truncated {
                needed: 8,
                offset: 0,
                len: b.len(),
            });
        }
        let (body, tail) = b.split_at(b.len() - 8);
        let line_n = 1usize << line_bits;
        let class_n = (1usize << class_bits) * N_CLASSES;
        let expect = 8
            + 5 * 4
            + 4
            + line_n
            + 4 * POS_BUCKETS
            + 4
            + class_n
            + 4 * N_CLASSES
            + 4
            + class_n
            + 4 * N_CLASSES
            + 4
            + 4 * RERANK_F
            + 4;
        if body.len() < expect {
            return Err(CilogError::Truncated {
                needed: expect + 8,
                offset: 0,
                len: b.len(),
            });
        }
        let stored = u64::from_le_bytes(tail.try_into().expect("8 bytes"));
        let computed = fnv64(body);
        if stored != computed {
            return Err(CilogError::Checksum { stored, computed });
        }
        let mut r = Reader { b: body, at: r.at };
        let ls = r.f32()?;
        let line_q: Vec<i8> = r.take(line_n)?.iter().map(|&q| q as i8).collect();
        let line_w = line_q.iter().map(|&q| f32::from(q) * ls).collect();
        let mut pos_w = [0f32; POS_BUCKETS];
        for p in &mut pos_w {
            *p = r.f32()?;
        }
        let (class_w, class_b) = r.class_table(class_n)?;
        let (ev_w, ev_b) = r.class_table(class_n)?;
        let rerank_n = r.u32()?;
        if rerank_n as usize != RERANK_F {
            return Err(CilogError::Invalid(format!(
                "{rerank_n} re-ranker weights (this sift reads {RERANK_F})"
            )));
        }
        let mut rerank_w = [0f32; RERANK_F];
        for v in &mut rerank_w {
            *v = r.f32()?;
        }
        let note_len = r.u32()? as usize;
        if note_len > MAX_NOTE {
            return Err(CilogError::Invalid(format!("note of {note_len} bytes")));
        }
        let note = std::str::from_utf8(r.take(note_len)?)
            .map_err(|_| CilogError::Invalid("note is not UTF-8".into()))?
            .to_string();
        if r.at != body.len() {
            return Err(CilogError::Invalid(format!(
                "{} unexpected bytes before the checksum",
                body.len() - r.at
            )));
        }
        let all_finite = std::iter::once(&ls)
            .chain(pos_w.iter())
            .chain(class_b.iter())
            .chain(ev_b.iter())
            .chain(rerank_w.iter())
            .all(|v| v.is_finite());
        if !all_finite {
            return Err(CilogError::Invalid("non-finite parameter".into()));
        }
        Ok(Params {
            line_bits: line_bits as u8,
            line_w,
            line_q,
            line_scale: ls,
            pos_w,
            class_bits: class_bits as u8,
            class_w,
            class_b,
            ev_w,
            ev_b,
            rerank_w,
            note,
        })
    }

    pub fn load(path: &Path) -> Result<Params, CilogError> {
        let b = std::fs::read(path).map_err(|source| CilogError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&b)
    }

    pub fn save(&self, path: &Path) -> Result<(), CilogError> {
        let io = |source| CilogError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
        }
        let tmp = path.with_extension("bin.tmp");
        crate::classify::model::write_durably(&tmp, path, &self.to_bytes()).map_err(io)
    }

    /// A model with all-zero weights (every log is `unknown`).
    pub fn zeros(line_bits: u8, class_bits: u8) -> Params {
        let mut class_b = [0f32; N_CLASSES];
        class_b[Class::Unknown as usize] = 1.0;
        Params {
            line_bits,
            line_w: vec![0.0; 1 << line_bits],
            line_q: vec![0; 1 << line_bits],
            line_scale: 1.0,
            pos_w: [0.0; POS_BUCKETS],
            class_bits,
            class_w: vec![0.0; (1 << class_bits) * N_CLASSES],
            class_b,
            ev_w: vec![0.0; (1 << class_bits) * N_CLASSES],
            ev_b: class_b,
            rerank_w: [0.0; RERANK_F],
            note: String::new(),
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CilogError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
            Some(e) => {
                let s = &self.b[self.at..e];
                self.at = e;
                Ok(s)
            }
            None => Err(CilogError::Truncated {
                needed: n,
                offset: self.at,
                len: self.b.len(),
            }),
        }
    }

    fn u32(&mut self) -> Result<u32, CilogError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    /// A class table: its i8 scale (finite), `n` i8 weights, then the
    /// class biases.
    fn class_table(&mut self, n: usize) -> Result<(Vec<f32>, [f32; N_CLASSES]), CilogError> {
        let scale = self.f32()?;
        if !scale.is_finite() {
            return Err(CilogError::Invalid("non-finite parameter".into()));
        }
        let w = self
            .take(n)?
            .iter()
            .map(|&q| f32::from(q as i8) * scale)
            .collect();
        let mut b = [0f32; N_CLASSES];
        for c in &mut b {
            *c = self.f32()?;
        }
        Ok((w, b))
    }

    fn f32(&mut self) -> Result<f32, CilogError> {
        Ok(f32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}
