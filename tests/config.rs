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
    assert_eq!(
        checked,
        ["dev.yaml", "edge.yaml", "istio.yaml", "sidecar.yaml"]
    );
}

/// The lines indented under the first line for which `starts` holds, with
/// that indentation removed: a YAML block embedded in another file.
fn embedded_block(text: &str, starts: impl Fn(&str) -> bool) -> String {
    let mut lines = text.lines().skip_while(|l| !starts(l));
    let head = lines.next().expect("the block's first line");
    let outer = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > outer)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .expect("a non-empty block");
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Helm chart's default `config` value and the sidecar ConfigMap in
/// helm/sift/README.md are sift configs too: they must load.
#[test]
fn the_helm_chart_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/sift");
    let values = std::fs::read_to_string(root.join("values.yaml")).unwrap();
    let config = embedded_block(&values, |l| l == "config:");
    assert!(config.contains("listeners:"), "{config}");
    let c = sift::config::load_str(&config).unwrap_or_else(|e| panic!("values.yaml config: {e}"));
    assert_eq!(c.listeners.len(), 1);
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let sidecar = embedded_block(&readme, |l| l.trim() == "sift.yaml: |");
    assert!(sidecar.contains("127.0.0.1:3000"), "{sidecar}");
    sift::config::load_str(&sidecar).unwrap_or_else(|e| panic!("README sidecar config: {e}"));
    // The extraction is not vacuous: a broken value fails.
    let broken = config.replace("workers: 2", "workers: two");
    assert!(sift::config::load_str(&broken).is_err());
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

/// Route actions: exactly one of forwarding, `answer`, `redirect` and
/// `direct_response`; rewrite and redirect paths must be sent as written
/// (sift's normal form), and a redirect must change something.
#[test]
fn route_actions_are_checked() {
    let cfg = |route: &str| {
        format!(
            r#"listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - {{ name: r, {route} }}
clusters:
  - {{ name: c, endpoints: ["127.0.0.1:1"] }}
"#
        )
    };
    let err = |route: &str| {
        sift::config::load_str(&cfg(route))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    for (route, want) in [
        (
            "cluster: c, redirect: { scheme: https }",
            "a route with `redirect` has no upstream",
        ),
        (
            "redirect: { scheme: https }, direct_response: { status: 200 }",
            "has redirect and direct_response: give exactly one action",
        ),
        ("redirect: {}", "changes nothing"),
        ("redirect: { scheme: ftp }", "routes[0].redirect.scheme"),
        ("redirect: { code: 200, path: /x }", "not a redirect status"),
        (
            "redirect: { path: /a, prefix: /b }",
            "both `path` and `prefix`",
        ),
        (
            "redirect: { host: \"a.example:80\" }",
            "routes[0].redirect.host",
        ),
        ("redirect: { path: /a/../b }", "'.' or '..' segments"),
        ("redirect: { path: \"/a?b\" }", "query or fragment"),
        ("cluster: c, rewrite: { prefix: v1 }", "must start with '/'"),
        ("cluster: c, rewrite: { prefix: /a%2Fb }", "'%' escapes"),
        ("cluster: c, rewrite: { prefix: //a }", "'//'"),
        ("cluster: c, rewrite: {}", "give `prefix` or `regex`"),
        (
            "cluster: c, adaptive_concurrency: { sample_percentile: 101 }",
            "routes[0].adaptive_concurrency.sample_percentile: 101 is not in 0..=100",
        ),
        (
            "cluster: c, adaptive_concurrency: { min_concurrency: 0 }",
            "routes[0].adaptive_concurrency.min_concurrency: must be at least 1",
        ),
        (
            "cluster: c, adaptive_concurrency: { max_limit: 2 }",
            "2 is not in min_concurrency (3)..=1000000",
        ),
        (
            "cluster: c, adaptive_concurrency: { update_interval: 0s }",
            "routes[0].adaptive_concurrency.update_interval",
        ),
        (
            "cluster: c, rewrite: { prefix: /a, regex: { pattern: x, substitution: y } }",
            "not both",
        ),
        (
            "cluster: c, rewrite: { host: a.example, auto_host: true }",
            "give `host` or `auto_host`, not both",
        ),
        (
            "cluster: c, rewrite: { host: \"a b\" }",
            "routes[0].rewrite.host",
        ),
        (
            "cluster: c, rewrite: { host: \"user@a.example\" }",
            "is not a host or host:port",
        ),
        (
            "cluster: c, rewrite: { regex: { pattern: \"(\", substitution: /x } }",
            "is not a regular expression",
        ),
        (
            "cluster: c, rewrite: { regex: { pattern: \"^/v1/(.*)\", substitution: \"/v2/\\\\2\" } }",
            "names group \\2, but",
        ),
        (
            "cluster: c, rewrite: { regex: { pattern: a, substitution: \"/x?y\" } }",
            "routes[0].rewrite.regex.substitution",
        ),
        (
            "cluster: c, rewrite: { regex: { pattern: \"\", substitution: /x } }",
            "an empty pattern",
        ),
        (
            "rewrite: { prefix: /a }, direct_response: { status: 200 }",
            "routes[0].rewrite",
        ),
        ("direct_response: { status: 99 }", "not in 200..=599"),
        (
            "direct_response: { status: 204, body: x }",
            "a 204 response has no body",
        ),
        (
            "direct_response: { status: 200 }, retries: { attempts: 2 }",
            "no upstream to retry",
        ),
        ("timeout: 1s", "needs `cluster` or `clusters`"),
        (
            "direct_response: { status: 200 }, cache: {}",
            "routes[0].cache: keeps a cluster's answers: a route with `direct_response` has no cluster",
        ),
        (
            "cluster: c, cache: { max_bytes: 1MiB, max_object_bytes: 2MiB }",
            "routes[0].cache.max_object_bytes: 2097152 bytes is not between 1 and max_bytes",
        ),
        (
            "cluster: c, cache: { max_bytes: 100 }",
            "routes[0].cache.max_bytes: 100 bytes is not between 1KiB and 1TiB",
        ),
        (
            "cluster: c, cache: { default_ttl: 0s }",
            "routes[0].cache.default_ttl: must be more than 0s",
        ),
        (
            "cluster: c, cache: { key_headers: [x-sift-canary] }",
            "routes[0].cache.key_headers[0]: x-sift-* headers",
        ),
        (
            "cluster: c, cache: { key_headers: [\"a b\"] }",
            "routes[0].cache.key_headers[0]: \"a b\" is not a header name",
        ),
        (
            "cluster: c, cache: { key_headers: [Accept, accept] }",
            "is listed twice",
        ),
        (
            "cluster: c, cache: { background_update: true }",
            "routes[0].cache.background_update: needs stale_while_revalidate",
        ),
        (
            "cluster: c, cache: { ttl: 5s }",
            "routes[0].cache.ttl: Unknown field `ttl`",
        ),
        (
            "cluster: c, grpc_timeout: { max: 1s, offset: 1s }",
            "routes[0].grpc_timeout.offset: must be at most 1m and less than max",
        ),
        (
            "cluster: c, grpc_timeout: { max: 0s }",
            "routes[0].grpc_timeout.max: must be more than 0s",
        ),
        (
            "redirect: { scheme: https }, grpc_timeout: {}",
            "routes[0].grpc_timeout: bounds the wait for a cluster",
        ),
    ] {
        let e = err(route);
        assert!(e.contains(want), "{route}: want {want:?}, got {e:?}");
    }
    for ok in [
        "cluster: c, rewrite: { prefix: / }",
        "cluster: c, rewrite: { regex: { pattern: \"^/v1/([^/]+)/(.*)$\", substitution: \"/\\\\2/\\\\1\" }, host: \"api.internal:8443\" }",
        "cluster: c, rewrite: { auto_host: true }",
        "cluster: c, adaptive_concurrency: {}",
        "cluster: c, cache: {}",
        "cluster: c, grpc_timeout: {}",
        "cluster: c, grpc_timeout: { max: 30s, offset: 10ms }",
        "cluster: c, cache: { max_bytes: 256MiB, max_object_bytes: 8MiB, default_ttl: 10m, stale_if_error: 1h, stale_while_revalidate: 30s, key_headers: [accept-language], lock_timeout: 0s, ignore_client_cache_control: true, background_update: true }",
        "cluster: c, adaptive_concurrency: { sample_percentile: 90, update_interval: 250ms, max_limit: 200, min_rtt_interval: 30s, min_rtt_requests: 20, jitter_percent: 15, min_concurrency: 5, buffer_percent: 40 }",
        "redirect: { scheme: https }",
        "redirect: { host: new.example, port: 8443, prefix: /v2, code: 308, strip_query: true }",
        "direct_response: { status: 503, body: down for maintenance, content_type: text/html }",
    ] {
        assert!(
            sift::config::load_str(&cfg(ok)).is_ok(),
            "{ok}: {}",
            err(ok)
        );
    }
}

/// A `hash_policy` entry's `ttl` and `path` make a missing cookie: they
/// need `cookie` (and `path` needs `ttl`), and the path must be one a
/// Set-Cookie can carry.
#[test]
fn hash_policy_cookie_making_is_checked() {
    let err = |entry: &str| {
        let cfg = format!(
            "listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nroutes:\n  - {{ name: r, cluster: c, hash_policy: [{entry}] }}\nclusters:\n  - {{ name: c, lb: maglev, endpoints: [\"127.0.0.1:1\"] }}\n"
        );
        sift::config::load_str(&cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err("{ cookie: s, ttl: 1h, path: / }").is_empty());
    assert!(err("{ cookie: s, ttl: 0s }").is_empty());
    assert!(err("{ header: x-user, ttl: 1h }").contains("they need `cookie`"));
    assert!(err("{ cookie: s, path: / }").contains("it needs `ttl`"));
    assert!(err("{ cookie: s, ttl: 1h, path: \"/a;b\" }").contains("is not a cookie path"));
    assert!(err("{ cookie: s, ttl: 1h, path: api }").contains("is not a cookie path"));
}

#[test]
fn local_replies_are_checked() {
    let err = |lr: &str| {
        let cfg = format!(
            "listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nlocal_replies: {lr}\n"
        );
        sift::config::load_str(&cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err("{ format: json }").is_empty());
    assert!(err("{ mappers: [ { errors: [no-route], body: x } ] }").is_empty());
    assert!(err("{ mappers: [ { body: x } ] }").contains("needs `errors` or `statuses`"));
    assert!(
        err("{ mappers: [ { errors: [nope], body: x } ] }").contains("is not an error sift gives")
    );
    assert!(err("{ mappers: [ { statuses: [99], body: x } ] }").contains("is not a status"));
    assert!(err("{ mappers: [ { statuses: [503] } ] }").contains("changes nothing"));
    assert!(
        err("{ mappers: [ { statuses: [503], body: x, body_file: /etc/hostname } ] }")
            .contains("not both")
    );
    assert!(
        err("{ mappers: [ { statuses: [503], body_file: /nonexistent/page.html } ] }")
            .contains("cannot read /nonexistent/page.html")
    );
    assert!(
        err("{ mappers: [ { statuses: [503], body: x, content_type: html } ] }")
            .contains("is not a media type")
    );
}

#[test]
fn the_upgrade_section_is_checked() {
    let err = |up: &str| {
        let cfg =
            format!("listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nupgrade: {up}\n");
        sift::config::load_str(&cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err("{ socket: /run/sift/upgrade.sock }").is_empty());
    assert!(err("{}").contains("upgrade.socket: a path is required"));
    let long = format!("{{ socket: /{} }}", "x".repeat(120));
    assert!(
        err(&long).contains("longer than a Unix socket path may be"),
        "{}",
        err(&long)
    );
    assert!(
        err("{ socket: /a, expose: all }").contains("Unknown field `expose`, expected `socket`")
    );
}

#[test]
fn external_auth_with_request_body_is_checked() {
    let err = |auth: &str, filters: &str| {
        let cfg = format!(
            "listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nfilters: [ {{ name: spam, kind: spam }} ]\nroutes:\n  - {{ name: r, cluster: c, external_auth: {{ cluster: a, {auth} }}{filters} }}\nclusters:\n  - {{ name: c, endpoints: [\"127.0.0.1:1\"] }}\n  - {{ name: a, endpoints: [\"127.0.0.1:2\"] }}\n"
        );
        sift::config::load_str(&cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err("with_request_body: { max_request_bytes: 8KiB }", "").is_empty());
    assert!(
        err("with_request_body: { max_request_bytes: 0B }", "")
            .contains("must be between 1 byte and 16MiB")
    );
    assert!(
        err("with_request_body: { max_request_bytes: 32MiB }", "")
            .contains("must be between 1 byte and 16MiB")
    );
    let spool = ", filters: [ { filter: spam, mode: block, on_oversize: spool } ]";
    assert!(
        err("with_request_body: { max_request_bytes: 8KiB }", spool)
            .contains("not with a filter that spools")
    );
    assert!(err("", spool).is_empty(), "spooling alone is fine");
    let answer = "listeners: [{ name: main, address: \"127.0.0.1:0\" }]\nfilters: [ { name: spam, kind: spam } ]\nroutes:\n  - { name: r, answer: spam, external_auth: { cluster: a, with_request_body: { max_request_bytes: 1KiB } } }\nclusters:\n  - { name: a, endpoints: [\"127.0.0.1:2\"] }\n";
    let e = sift::config::load_str(answer)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("not on an `answer` route"), "{e}");
}

/// Listener limits: `max_connections_per_client` is at least 1;
/// `request_body_timeout` defaults to 60s and `0s` turns it off.
#[test]
fn listener_body_and_client_limits_are_checked() {
    let cfg = |limits: &str| {
        format!(
            r#"listeners: [{{ name: main, address: "127.0.0.1:0", limits: {{ {limits} }} }}]
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: ["127.0.0.1:1"] }}]
"#
        )
    };
    let err = sift::config::load_str(&cfg("max_connections_per_client: 0"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("listeners[0].limits.max_connections_per_client: must be at least 1"),
        "{err:?}"
    );
    let limits = |l: &str| {
        sift::config::load_str(&cfg(l)).unwrap().listeners[0]
            .limits
            .clone()
    };
    assert_eq!(
        limits("").request_body_timeout.map(|d| d.0),
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(
        limits("request_body_timeout: 0s").request_body_timeout,
        None
    );
    assert_eq!(limits("").request_timeout, None);
    assert_eq!(
        limits("request_timeout: 5m").request_timeout.map(|d| d.0),
        Some(std::time::Duration::from_secs(300))
    );
    let err = sift::config::load_str(&cfg("request_timeout: 0s"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("listeners[0].limits.request_timeout"),
        "{err:?}"
    );
    assert_eq!(
        limits("request_body_timeout: 2m, max_connections_per_client: 8")
            .max_connections_per_client,
        Some(8)
    );
}

/// `forwarded.trusted_cidrs`: ranges, and not beside `trusted_hops`.
#[test]
fn trusted_cidrs_are_checked() {
    let cfg = |fwd: &str| {
        format!(
            r#"listeners: [{{ name: main, address: "127.0.0.1:0", forwarded: {{ {fwd} }} }}]
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: ["127.0.0.1:1"] }}]
"#
        )
    };
    let err = |f: &str| {
        sift::config::load_str(&cfg(f))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        err("trusted_hops: 1, trusted_cidrs: [10.0.0.0/8]").contains(
            "listeners[0].forwarded.trusted_cidrs: give trusted_hops or trusted_cidrs, not both"
        )
    );
    let e = err("trusted_cidrs: [10.0.0.1/8]");
    assert!(
        e.contains("listeners[0].forwarded.trusted_cidrs[0]")
            && e.contains("bits set past its prefix"),
        "{e}"
    );
    let ok = sift::config::load_str(&cfg(
        "trusted_cidrs: [10.0.0.0/8, \"2001:db8::/32\", 192.0.2.7]",
    ))
    .unwrap();
    assert_eq!(ok.listeners[0].trusted_cidrs.len(), 3);
}

/// `tcp_keepalive` takes whole seconds and Linux's probe bound;
/// `http2_keepalive` needs an HTTP/2 cluster.
#[test]
fn keepalive_settings_are_checked() {
    let cfg = |listener: &str, cluster: &str| {
        format!(
            r#"listeners: [{{ name: main, address: "127.0.0.1:0", {listener} }}]
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: ["127.0.0.1:1"], {cluster} }}]
"#
        )
    };
    let err = |l: &str, c: &str| {
        sift::config::load_str(&cfg(l, c))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    for (l, c, want) in [
        (
            "tcp_keepalive: { time: 500ms }",
            "lb: round_robin",
            "listeners[0].tcp_keepalive.time: 500ms is not a whole number of seconds",
        ),
        (
            "tcp_keepalive: { probes: 0 }",
            "lb: round_robin",
            "listeners[0].tcp_keepalive.probes: 0 is not in 1..=127",
        ),
        (
            "protocol: auto",
            "tcp_keepalive: { interval: 1500ms }",
            "clusters[0].tcp_keepalive.interval",
        ),
        (
            "protocol: auto",
            "http2_keepalive: { interval: 10s }",
            "clusters[0].http2_keepalive: needs `protocol: http2`",
        ),
        (
            "protocol: auto",
            "protocol: http2, http2_keepalive: { interval: 10s, timeout: 0s }",
            "clusters[0].http2_keepalive.timeout",
        ),
    ] {
        let e = err(l, c);
        assert!(e.contains(want), "{l} / {c}: {e:?}");
    }
    let e = err("http2_keepalive: { interval: 0s }", "lb: round_robin");
    assert!(e.contains("listeners[0].http2_keepalive.interval"), "{e:?}");
    let ok = sift::config::load_str(&cfg(
        "tcp_keepalive: { time: 60s, interval: 10s, probes: 3 }, http2_keepalive: { interval: 15s }",
        "protocol: http2, tcp_keepalive: {}, http2_keepalive: { interval: 30s }",
    ))
    .unwrap();
    let k = ok.listeners[0].tcp_keepalive.unwrap();
    assert_eq!((k.time.unwrap().0.as_secs(), k.probes), (60, Some(3)));
    let l = ok.listeners[0].http2_keepalive;
    assert_eq!((l.interval.0.as_secs(), l.timeout.0.as_secs()), (15, 20));
    let h = ok.clusters[0].http2_keepalive.unwrap();
    assert_eq!((h.interval.0.as_secs(), h.timeout.0.as_secs()), (30, 20));
}

/// `overload.max_buffered_bytes`: `auto` (the default) resolves at load to
/// a bound from the machine (half the cgroup's memory limit, else a
/// quarter of its memory), a size is taken as given, `0` is no limit, and
/// anything else is an error naming the key.
#[test]
fn overload_max_buffered_bytes_is_resolved_and_checked() {
    let cfg = |top: &str| {
        format!(
            r#"{top}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: ["127.0.0.1:1"] }}]
"#
        )
    };
    let limit = |top: &str| {
        sift::config::load_str(&cfg(top))
            .unwrap()
            .overload
            .max_buffered_bytes
    };
    let auto = sift::budget::auto_limit();
    assert!(auto >= 1 << 20, "{auto}");
    assert_eq!(limit(""), Some(auto));
    assert_eq!(limit("overload: { max_buffered_bytes: auto }"), Some(auto));
    assert_eq!(
        limit("overload: { max_buffered_bytes: 256MiB }"),
        Some(256 << 20)
    );
    assert_eq!(
        limit("overload: { max_buffered_bytes: 65536 }"),
        Some(65536)
    );
    assert_eq!(limit("overload: { max_buffered_bytes: 0 }"), None);
    let c = sift::config::load_str(&cfg("overload: { max_connections: 50000 }")).unwrap();
    assert_eq!(c.overload.max_connections, Some(50000));
    assert_eq!(
        sift::config::load_str(&cfg(""))
            .unwrap()
            .overload
            .max_connections,
        None
    );
    let c = sift::config::load_str(&cfg("overload: { max_spooled_bytes: 384MiB }")).unwrap();
    assert_eq!(c.overload.max_spooled_bytes, Some(384 << 20));
    assert_eq!(
        sift::config::load_str(&cfg(""))
            .unwrap()
            .overload
            .max_spooled_bytes,
        None
    );
    for (bad, want) in [
        (
            "overload: { max_spooled_bytes: 0 }",
            "overload.max_spooled_bytes: must be more than 0",
        ),
        (
            "overload: { max_connections: 0 }",
            "overload.max_connections: must be at least 1",
        ),
        ("overload: { max_buffered_bytes: lots }", "or `auto`"),
        ("overload: { max_buffered_bytes: -1 }", "negative"),
        ("overload: { max_buffred_bytes: 1MiB }", "max_buffred_bytes"),
    ] {
        let err = sift::config::load_str(&cfg(bad))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("overload") && err.contains(want),
            "{bad}: {err:?}"
        );
    }
}

/// `routes[].request_buffering`: defaults, and refused where it cannot
/// mean anything (no upstream, gRPC-Web streams) or points nowhere.
#[test]
fn request_buffering_is_checked() {
    let cfg = |route: &str| {
        format!(
            r#"listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes: [{{ name: r, {route} }}]
clusters: [{{ name: c, endpoints: ["127.0.0.1:1"], protocol: http2 }}]
"#
        )
    };
    let c = sift::config::load_str(&cfg("cluster: c, request_buffering: {}")).unwrap();
    let rb = c.routes[0].request_buffering.clone().unwrap();
    assert_eq!(rb.in_memory.0, 64 * 1024);
    assert_eq!(rb.spool_dir, std::env::temp_dir());
    for (route, want) in [
        (
            "direct_response: { status: 200 }, request_buffering: {}",
            "routes[0].request_buffering: holds bodies for an upstream",
        ),
        (
            "cluster: c, grpc_web: true, request_buffering: {}",
            "routes[0].request_buffering: gRPC-Web calls stream",
        ),
        (
            "cluster: c, request_buffering: { spool_dir: /nonexistent/spool }",
            "routes[0].request_buffering.spool_dir: /nonexistent/spool is not a directory",
        ),
        (
            "cluster: c, request_buffering: { in_memory: 2GiB }",
            "routes[0].request_buffering.in_memory",
        ),
        ("cluster: c, request_buffering: { memory: 1MiB }", "memory"),
    ] {
        let err = sift::config::load_str(&cfg(route))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(want), "{route}: {err:?}");
    }
}

/// `${NAME}` in a config value is the environment variable NAME: a
/// number from the environment is read as one (and checked as written),
/// and an unset variable is a config error naming the path and line.
/// What the values become on the request path: lifecycle.rs
/// `environment_variables_reach_the_request_path`.
#[test]
fn environment_variables_fill_config_values() {
    let dir = std::env::temp_dir().join(format!("sift-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sift.yaml");
    std::fs::write(
        &path,
        r#"workers: ${SIFT_TEST_WORKERS}
listeners: [ { name: main, address: "127.0.0.1:${SIFT_TEST_PORT:-18080}" } ]
routes:
  - name: all
    cluster: app
    request_headers: { set: { x-api-key: "${SIFT_TEST_KEY}", x-literal: "$${SIFT_TEST_KEY}" } }
clusters: [ { name: app, endpoints: ["127.0.0.1:3000"] } ]
"#,
    )
    .unwrap();
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sift"));
        cmd.args(["check", "--config"]).arg(&path);
        for k in ["SIFT_TEST_WORKERS", "SIFT_TEST_PORT", "SIFT_TEST_KEY"] {
            cmd.env_remove(k);
        }
        cmd.envs(vars.iter().copied());
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&[("SIFT_TEST_WORKERS", "3"), ("SIFT_TEST_KEY", "k-123")]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&[("SIFT_TEST_KEY", "k-123")]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("sift.yaml:1: workers: the environment variable SIFT_TEST_WORKERS is not set"),
        "{out}"
    );
    let (code, out) = run(&[("SIFT_TEST_WORKERS", "many"), ("SIFT_TEST_KEY", "k")]);
    assert_eq!(
        code,
        Some(2),
        "a value from the environment is checked as written: {out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
