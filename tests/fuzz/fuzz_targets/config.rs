//! The config loader and validator (`sift check`, `sift run` and reloads
//! use `config::load_str`) on arbitrary YAML: errors, never a panic. A
//! config that loads has its builtin-model filters built as `sift check`
//! does (file models are not read: the fuzzer would read random paths).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sift::config::{self, model::ModelSource};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match config::load_str(&text) {
        Ok(c) => {
            for f in &c.filters {
                if matches!(f.model, ModelSource::Builtin) && f.learned_model.is_none() {
                    let _ = sift::filter::build(f);
                }
            }
        }
        Err(errs) => {
            assert!(!errs.0.is_empty(), "an error without errors");
            let _ = errs.to_string();
            let _ = config::with_lines(&text, errs.0);
        }
    }
});
