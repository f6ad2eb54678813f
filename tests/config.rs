//! Example configs and the JSON Schema shipped in config/.

use std::path::Path;

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let c = sift::config::load_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!c.listeners.is_empty());
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    checked.sort();
    assert_eq!(checked, ["dev.yaml", "edge.yaml", "sidecar.yaml"]);
}

#[test]
fn the_demo_config_is_valid() {
    sift::config::load_str(sift::demo::CONFIG).expect("demo config");
}

#[test]
fn shipped_schema_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sift.schema.json");
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == sift::config::json_schema(),
        "config/sift.schema.json is stale: run `cargo run -- schema > config/sift.schema.json`"
    );
    let v: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    // deny_unknown_fields shows up for editors as additionalProperties: false.
    assert_eq!(v["additionalProperties"], false);
    assert!(v["properties"]["routes"].is_object());
}

/// sift removes every `x-sift-*` header from client requests before
/// routing, so a route condition on one could never hold and the route
/// would silently never match. Such a condition is a config error
/// (`present: false`, always true, is allowed).
#[test]
fn route_conditions_on_x_sift_headers_are_refused() {
    let cfg = |cond: &str| {
        format!(
            r#"listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: r
    match: {{ headers: [{{ name: X-Sift-User, {cond} }}] }}
    cluster: c
clusters:
  - {{ name: c, endpoints: ["127.0.0.1:1"] }}
"#
        )
    };
    for cond in [r#"exact: "1""#, r#"prefix: "a""#, "present: true"] {
        let err = sift::config::load_str(&cfg(cond))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("routes[0].match.headers[0].name"),
            "{cond}: {err:?}"
        );
        assert!(err.contains("x-sift-"), "{cond}: {err:?}");
    }
    assert!(sift::config::load_str(&cfg("present: false")).is_ok());
}
