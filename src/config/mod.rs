//! Configuration: YAML file shapes ([`file`]), the validated model
//! ([`model`]), and the builder between them ([`build`]).
//!
//! Loading never stops at the first problem: every error is reported with its
//! YAML path and line, so `sift check` shows them all at once.

pub mod build;
pub mod dev;
pub mod file;
pub mod model;
pub mod units;

use std::fmt;
use std::path::Path;

use marked_yaml::{LoaderOptions, Node};
use serde::de::DeserializeOwned;

pub use file::FileConfig;
pub use model::Config;

/// The embedded dev default: listen 127.0.0.1:8080, forward to
/// 127.0.0.1:3000, admin on 127.0.0.1:9901.
pub const DEV_DEFAULT: &str = include_str!("../../config/dev.yaml");

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path, e.g. `routes[2].cluster`.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// All the problems in one config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} config error(s)", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(path: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        }])
    }
}

/// Read, parse and validate a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one("(file)", format!("cannot read {}: {e}", path.display())))?;
    load_str(&text)
}

/// Parse and validate config text.
pub fn load_str(text: &str) -> Result<Config, ConfigErrors> {
    let (file, root) = parse(text)?;
    build::build(&file).map_err(|mut errs| {
        for e in &mut errs {
            e.line = line_of(&root, &e.path);
        }
        sort(&mut errs);
        ConfigErrors(errs)
    })
}

/// Errors in file order (those without a line last).
fn sort(errs: &mut [ConfigError]) {
    errs.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
}

/// Attach lines to errors found outside the builder (e.g. at reload).
pub fn with_lines(text: &str, mut errs: Vec<ConfigError>) -> ConfigErrors {
    if let Ok((_, root)) = parse(text) {
        for e in &mut errs {
            if e.line.is_none() {
                e.line = line_of(&root, &e.path);
            }
        }
    }
    sort(&mut errs);
    ConfigErrors(errs)
}

/// `${NAME}` and `${NAME:-default}` in `s` replaced by the environment
/// variable NAME (the default when it is unset or empty; without a default
/// an unset variable is an error, an empty one gives ""), and `$${` by a
/// literal `${`; any other `$` is left as it is. `None`: nothing to replace.
pub fn expand_env_str(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let end = body.find('}').ok_or_else(|| {
            format!("{s:?}: `${{` without its `}}` (write `$${{` for a literal `${{`)")
        })?;
        let inner = &body[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!(
                "{s:?}: `${{{inner}}}` does not name an environment variable (letters, digits and _, not starting with a digit; `${{NAME:-default}}` for a default; `$${{` for a literal `${{`)"
            ));
        }
        let value = env(name);
        match (value, default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "the environment variable {name} is not set (set it, or give a default: ${{{name}:-VALUE}})"
                ));
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// Expand `${NAME}` in every scalar value (not in keys) of the tree, with
/// an error naming the YAML path and line for each that cannot be.
fn expand_env(
    node: &mut Node,
    path: &str,
    errs: &mut Vec<ConfigError>,
    env: &dyn Fn(&str) -> Option<String>,
) {
    match node {
        Node::Scalar(s) => match expand_env_str(s.as_str(), env) {
            Ok(None) => {}
            Ok(Some(v)) => {
                let coerce = s.may_coerce();
                let mut new = marked_yaml::types::MarkedScalarNode::new(*s.span(), v);
                new.set_coerce(coerce);
                *s = new;
            }
            Err(message) => errs.push(ConfigError {
                path: if path.is_empty() {
                    "(root)".into()
                } else {
                    path.into()
                },
                line: s.span().start().map(|m| m.line()),
                message,
            }),
        },
        Node::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let p = if path.is_empty() {
                    k.as_str().to_string()
                } else {
                    format!("{path}.{}", k.as_str())
                };
                expand_env(v, &p, errs, env);
            }
        }
        Node::Sequence(q) => {
            for (i, v) in q.iter_mut().enumerate() {
                expand_env(v, &format!("{path}[{i}]"), errs, env);
            }
        }
    }
}

/// Parse YAML text into the file shapes, collecting an error for every bad
/// top-level key and every bad list element.
pub fn parse(text: &str) -> Result<(FileConfig, Node), ConfigErrors> {
    if text.trim().is_empty() {
        return Err(ConfigErrors::one("(file)", "the config is empty"));
    }
    let opts = LoaderOptions::default().error_on_duplicate_keys(true);
    let mut root = marked_yaml::parse_yaml_with_options(0, text, opts).map_err(|e| {
        let msg = e.to_string();
        let line = first_line_number(&msg);
        let msg = if msg.contains("anchor") || msg.contains("alias") {
            format!("{msg} (YAML anchors and aliases are not supported)")
        } else {
            msg
        };
        ConfigErrors(vec![ConfigError {
            path: "(yaml)".into(),
            line,
            message: msg,
        }])
    })?;
    let mut env_errs = Vec::new();
    expand_env(&mut root, "", &mut env_errs, &|name| {
        std::env::var(name).ok()
    });
    if !env_errs.is_empty() {
        return Err(ConfigErrors(env_errs));
    }
    let Some(map) = root.as_mapping() else {
        return Err(ConfigErrors::one(
            "(root)",
            "the config must be a YAML mapping",
        ));
    };
    let mut out = FileConfig::default();
    let mut errs = Vec::new();
    for (key, value) in map.iter() {
        let k = key.as_str();
        let line = key.span().start().map(|m| m.line());
        match k {
            "workers" => out.workers = one(value, k, &mut errs),
            "log" => out.log = one(value, k, &mut errs),
            "admin" => out.admin = one(value, k, &mut errs),
            "reload" => out.reload = one(value, k, &mut errs),
            "shutdown" => out.shutdown = one(value, k, &mut errs),
            "listeners" => out.listeners = many(value, k, &mut errs),
            "routes" => out.routes = many(value, k, &mut errs),
            "clusters" => out.clusters = many(value, k, &mut errs),
            "filters" => out.filters = many(value, k, &mut errs),
            "filter_pool" => out.filter_pool = Some(one(value, k, &mut errs)),
            "tracing" => out.tracing = Some(one(value, k, &mut errs)),
            "jwt_providers" => out.jwt_providers = many(value, k, &mut errs),
            "redis" => out.redis = Some(one(value, k, &mut errs)),
            "dns" => out.dns = Some(one(value, k, &mut errs)),
            "local_replies" => out.local_replies = Some(one(value, k, &mut errs)),
            "rate_limit_service" => out.rate_limit_service = Some(one(value, k, &mut errs)),
            "upgrade" => out.upgrade = Some(one(value, k, &mut errs)),
            "overload" => out.overload = Some(one(value, k, &mut errs)),
            _ => errs.push(ConfigError {
                path: k.to_string(),
                line,
                message: format!(
                    "unknown key {k:?}; expected one of workers, log, admin, reload, shutdown, listeners, routes, clusters, filters, filter_pool, tracing, jwt_providers, redis, dns, local_replies, rate_limit_service, upgrade, overload"
                ),
            }),
        }
    }
    if errs.is_empty() {
        Ok((out, root))
    } else {
        sort(&mut errs);
        Err(ConfigErrors(errs))
    }
}

fn one<T: DeserializeOwned + Default>(node: &Node, base: &str, errs: &mut Vec<ConfigError>) -> T {
    match marked_yaml::from_node::<T>(node) {
        Ok(v) => v,
        Err(e) => {
            errs.push(node_error(node, base, e));
            T::default()
        }
    }
}

fn many<T: DeserializeOwned>(node: &Node, base: &str, errs: &mut Vec<ConfigError>) -> Vec<T> {
    let Some(seq) = node.as_sequence() else {
        if node.as_scalar().is_some_and(|s| s.as_str().is_empty()) {
            return Vec::new();
        }
        errs.push(ConfigError {
            path: base.into(),
            line: node.span().start().map(|m| m.line()),
            message: "must be a list".into(),
        });
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in seq.iter().enumerate() {
        match marked_yaml::from_node::<T>(item) {
            Ok(v) => out.push(v),
            Err(e) => errs.push(node_error(item, &format!("{base}[{i}]"), e)),
        }
    }
    out
}

fn node_error(node: &Node, base: &str, e: marked_yaml::FromNodeError) -> ConfigError {
    let sub = e.path().unwrap_or("").trim_start_matches('.');
    let path = if sub.is_empty() {
        base.to_string()
    } else if sub.starts_with('[') {
        format!("{base}{sub}")
    } else {
        format!("{base}.{sub}")
    };
    let line = e
        .start_mark()
        .map(|m| m.line())
        .or_else(|| node.span().start().map(|m| m.line()));
    let inner = e.into_inner();
    ConfigError {
        path,
        line,
        message: inner.to_string(),
    }
}

/// The line of a loader error: "36:10: ..." or "... line 36 ...".
fn first_line_number(msg: &str) -> Option<usize> {
    let lead: String = msg.chars().take_while(|c| c.is_ascii_digit()).collect();
    if !lead.is_empty() && msg[lead.len()..].starts_with(':') {
        return lead.parse().ok();
    }
    let i = msg.find("line ")?;
    let digits: String = msg[i + 5..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The line of the node at `path` (e.g. `routes[1].match.path`), or of the
/// deepest ancestor that exists.
pub fn line_of(root: &Node, path: &str) -> Option<usize> {
    let mut node = root;
    let mut line = root.span().start().map(|m| m.line());
    for seg in split_path(path) {
        match seg {
            Seg::Key(k) => {
                let map = node.as_mapping()?;
                let (key, value) = map.iter().find(|(key, _)| key.as_str() == k)?;
                line = key.span().start().map(|m| m.line()).or(line);
                node = value;
            }
            Seg::Index(i) => {
                let seq = node.as_sequence()?;
                let Some(n) = seq.get(i) else { return line };
                line = n.span().start().map(|m| m.line()).or(line);
                node = n;
            }
        }
    }
    line
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

/// The JSON Schema of sift.yaml, generated from [`FileConfig`].
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(FileConfig);
    let mut s = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_expand_in_values() {
        let env = |n: &str| match n {
            "KEY" => Some("s3cret".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let x = |s: &str| expand_env_str(s, &env);
        assert_eq!(x("plain $ and $1 and ^/a$"), Ok(None));
        assert_eq!(x("Bearer ${KEY}"), Ok(Some("Bearer s3cret".into())));
        assert_eq!(x("${KEY}${KEY}"), Ok(Some("s3crets3cret".into())));
        assert_eq!(
            x("${NOPE:-d}|${EMPTY:-e}|${EMPTY}|${KEY:-x}"),
            Ok(Some("d|e||s3cret".into()))
        );
        assert_eq!(x("$${KEY} $$ $x"), Ok(Some("${KEY} $$ $x".into())));
        assert!(x("${NOPE}").unwrap_err().contains("NOPE is not set"));
        assert!(x("${KEY").unwrap_err().contains("without its"));
        assert!(x("${1A}").unwrap_err().contains("does not name"));
        assert!(x("${}").unwrap_err().contains("does not name"));
    }

    #[test]
    fn admin_writes_default_to_loopback() {
        let c = load_str(DEV_DEFAULT).unwrap();
        for ip in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(c.admin.takes_writes_from(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.1.2.3", "192.168.0.5", "::2", "fe80::1"] {
            assert!(!c.admin.takes_writes_from(ip.parse().unwrap()), "{ip}");
        }
        let open = DEV_DEFAULT.replace(
            "  address: 127.0.0.1:9901\n",
            "  address: 127.0.0.1:9901\n  write_from: [0.0.0.0/0, \"::/0\"]\n",
        );
        let c = load_str(&open).unwrap();
        assert!(c.admin.takes_writes_from("10.1.2.3".parse().unwrap()));
        let none = DEV_DEFAULT.replace(
            "  address: 127.0.0.1:9901\n",
            "  address: 127.0.0.1:9901\n  write_from: []\n",
        );
        let c = load_str(&none).unwrap();
        assert!(!c.admin.takes_writes_from("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn dev_default_is_valid() {
        let c = load_str(DEV_DEFAULT).expect("embedded default must be valid");
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.address.to_string(), "127.0.0.1:9901");
        assert_eq!(
            c.clusters[0].endpoints[0].authority.as_str(),
            "127.0.0.1:3000"
        );
    }

    #[test]
    fn every_error_has_path_and_line() {
        let text = "\
listeners:
  - name: a
    address: nope
    bogus: 1
  - name: b
    address: 127.0.0.1:1
routes:
  - name: r
    cluster: missing
  - name: r2
    cluster: c
    timeout: 15
clusters:
  - name: c
    endpoints: [\"x:0\"]
";
        let errs = load_str(text).unwrap_err().0;
        let paths: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
        // The parse pass reports the unknown key and the unit-less duration.
        assert!(paths.contains(&("listeners[0].bogus", Some(4))), "{errs:?}");
        assert!(paths.contains(&("routes[1].timeout", Some(12))), "{errs:?}");
    }

    #[test]
    fn semantic_errors_are_all_collected_with_lines() {
        let text = "\
listeners:
  - name: a
    address: nope
routes:
  - name: r
    cluster: missing
clusters:
  - name: c
    endpoints: [\"x:0\"]
";
        let errs = load_str(text).unwrap_err().0;
        let got: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert!(got.contains(&("listeners[0].address", Some(3))), "{got:?}");
        assert!(got.contains(&("routes[0].cluster", Some(6))), "{got:?}");
        assert!(
            got.contains(&("clusters[0].endpoints[0]", Some(9))),
            "{got:?}"
        );
    }

    #[test]
    fn health_check_options_are_checked() {
        let base = |hc: &str| {
            format!(
                "listeners:\n  - {{ name: l, address: \"127.0.0.1:0\" }}\nroutes:\n  - {{ name: r, cluster: c }}\nclusters:\n  - name: c\n    endpoints: [\"127.0.0.1:1\"]\n    health_check: {hc}\n"
            )
        };
        let c = load_str(&base("{}")).expect("defaults are valid");
        let h = c.clusters[0].health_check.clone().expect("health_check");
        assert_eq!(h.kind, crate::upstream::health::HealthKind::Http);
        assert_eq!(h.path, "/");
        assert_eq!(h.interval, std::time::Duration::from_secs(5));
        assert_eq!(h.timeout, std::time::Duration::from_secs(1));
        assert_eq!((h.unhealthy_threshold, h.healthy_threshold), (3, 2));
        assert_eq!(h.expected_statuses, vec![(200, 399)]);
        assert_eq!(h.panic_threshold, 50);
        let c = load_str(&base(
            "{ path: \"/healthz?full=1\", host: \"app.local\", expected_statuses: [200, \"204-299\", \"301\"], panic_threshold: 0 }",
        ))
        .expect("valid");
        let h = c.clusters[0].health_check.clone().expect("health_check");
        assert_eq!(
            h.expected_statuses,
            vec![(200, 200), (204, 299), (301, 301)]
        );
        assert_eq!(h.host.as_deref(), Some("app.local"));
        for (hc, path) in [
            ("{ path: healthz }", "path"),
            ("{ path: \"/a b\" }", "path"),
            ("{ host: \"a b\" }", "host"),
            ("{ kind: tcp, path: /x }", "path"),
            (
                "{ kind: tcp, expected_statuses: [200] }",
                "expected_statuses",
            ),
            ("{ unhealthy_threshold: 0 }", "unhealthy_threshold"),
            ("{ healthy_threshold: 0 }", "healthy_threshold"),
            ("{ interval: 0s }", "interval"),
            ("{ timeout: 0s }", "timeout"),
            ("{ expected_statuses: [] }", "expected_statuses"),
            ("{ expected_statuses: [700] }", "expected_statuses[0]"),
            (
                "{ expected_statuses: [\"300-200\"] }",
                "expected_statuses[0]",
            ),
            ("{ expected_statuses: [\"2xx\"] }", "expected_statuses[0]"),
            ("{ panic_threshold: 101 }", "panic_threshold"),
        ] {
            let errs = load_str(&base(hc)).expect_err(hc).0;
            let want = format!("clusters[0].health_check.{path}");
            assert!(
                errs.iter().any(|e| e.path == want),
                "{hc}: want {want}, got {errs:?}"
            );
        }
    }
}
