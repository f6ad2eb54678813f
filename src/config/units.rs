//! Durations ("250ms", "15s", "2m", "1h") and byte sizes (`65536`, "64KiB",
//! "10MiB", "1GB") as they are written in sift.yaml.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with a unit: `ms`, `s`, `m` or `h` (e.g. `250ms`, `1.5s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

/// Parse `250ms`, `15s`, `1.5s`, `2m`, `1h`. A bare number is refused: the
/// unit is never guessed.
/// Split `12.5xyz` into ("12.5", "xyz"); the number must be digits with an
/// optional fraction (`.5` and `1.` are refused, as in the JSON Schema).
fn split_number(t: &str) -> Result<(&str, &str), String> {
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let num = &t[..end];
    let ok = match num.split_once('.') {
        None => !num.is_empty(),
        Some((a, b)) => !a.is_empty() && !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()),
    };
    if t.starts_with('-') {
        return Err(format!("{t:?} cannot be negative"));
    }
    if !ok {
        return Err(format!("{t:?} does not start with a number like 15 or 1.5"));
    }
    Ok((num, &t[end..]))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = split_number(t).map_err(|e| format!("duration {e}"))?;
    if unit.is_empty() {
        return Err(format!(
            "duration {t:?} needs a unit: ms, s, m or h (e.g. \"{t}s\")"
        ));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {t:?}: {num:?} is not a number"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "duration {t:?}: unknown unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(format!("duration {t:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. \"250ms\", \"15s\", \"2m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} needs a unit: ms, s, m or h (e.g. \"{v}s\")"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                self.visit_u64(v.unsigned_abs())
            }
        }
        d.deserialize_str(V)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$",
            "description": "A duration with a unit: ms, s, m or h (e.g. \"250ms\", \"15s\")."
        })
    }
}

/// A size in bytes: an integer, or a number with a unit (B, kB, KiB, MB, MiB, GB, GiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes(pub u64);

pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = split_number(t).map_err(|e| format!("size {e}"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| format!("size {t:?}: {num:?} is not a number"))?;
    let scale: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "kB" | "KB" | "k" => 1e3,
        "KiB" | "Ki" => 1024.0,
        "MB" | "M" => 1e6,
        "MiB" | "Mi" => 1024.0 * 1024.0,
        "GB" | "G" => 1e9,
        "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "size {t:?}: unknown unit {other:?} (use B, kB, KiB, MB, MiB, GB or GiB)"
            ));
        }
    };
    let v = n * scale;
    if !v.is_finite() || v > 1e15 {
        return Err(format!("size {t:?} is out of range"));
    }
    Ok(v.round() as u64)
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        const MI: u64 = 1024 * 1024;
        if b >= MI && b % MI == 0 {
            write!(f, "{}MiB", b / MI)
        } else if b >= 1024 && b % 1024 == 0 {
            write!(f, "{}KiB", b / 1024)
        } else {
            write!(f, "{b}")
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, e.g. 65536, \"64KiB\" or \"10MiB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                parse_bytes(v).map(Bytes).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v)
                    .map(Bytes)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Bytes {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?\\s*(B|kB|KB|k|KiB|Ki|MB|M|MiB|Mi|GB|G|GiB|Gi)?$" }
            ],
            "description": "A size in bytes: an integer, or a number with a unit (kB, KiB, MB, MiB, GB, GiB)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("15").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration(".5s").is_err());
        assert!(parse_duration("15 s").is_err());
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert_eq!(Dur::millis(1500).to_string(), "1500ms");
        assert_eq!(Dur::secs(30).to_string(), "30s");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("65536").unwrap(), 65536);
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("10MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert!(parse_bytes("10 parsecs").is_err());
        assert!(parse_bytes("-1").unwrap_err().contains("negative"));
        assert_eq!(parse_bytes("10 MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(Bytes(10 * 1024 * 1024).to_string(), "10MiB");
    }
}
