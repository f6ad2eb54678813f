//! `sift run` (and `sift default-config`) without a config file: the
//! embedded dev default, with flags for the listen address, the upstream,
//! the admin address and filters, as `caddy reverse-proxy --from --to`.

use super::DEV_DEFAULT;

/// The flags of a config-less `sift run`.
#[derive(Clone, Debug, Default)]
pub struct DevOptions {
    /// `PORT`, `:PORT` (127.0.0.1), or `IP:PORT`.
    pub listen: Option<String>,
    /// `PORT`, `:PORT`, `HOST:PORT`, `http://HOST[:PORT]` or
    /// `https://HOST[:PORT]` (TLS checked against the system's CAs, the
    /// Host header set to the upstream's).
    pub upstream: Option<String>,
    /// The admin address, as `listen`.
    pub admin: Option<String>,
    /// Filters on the route: `spam`, `cilog`, with `:annotate` (default),
    /// `:block` or `:shadow`.
    pub filters: Vec<String>,
}

impl DevOptions {
    pub fn is_empty(&self) -> bool {
        self.listen.is_none()
            && self.upstream.is_none()
            && self.admin.is_none()
            && self.filters.is_empty()
    }
}

/// `PORT` or `:PORT` is on 127.0.0.1 (a dev proxy stays on the laptop
/// unless told otherwise); `localhost:PORT` too; anything else as given.
fn local_addr(flag: &str, s: &str) -> Result<String, String> {
    let s = s.trim();
    let port = s.strip_prefix(':').unwrap_or(s);
    let addr = if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() {
        format!("127.0.0.1:{port}")
    } else if let Some(p) = s.strip_prefix("localhost:") {
        format!("127.0.0.1:{p}")
    } else {
        s.to_string()
    };
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.to_string())
        .map_err(|_| {
            format!(
                "{flag} {s:?}: give PORT, :PORT or IP:PORT (e.g. 8080, 0.0.0.0:8080, [::1]:8080)"
            )
        })
}

/// The upstream's endpoint, whether it is https, and its host name.
fn upstream(s: &str) -> Result<(String, bool, String), String> {
    let bad = || {
        format!(
            "--upstream {s:?}: give PORT, HOST:PORT, http://HOST[:PORT] or https://HOST[:PORT] (e.g. 3000, app.local:8000, https://api.example.com)"
        )
    };
    let t = s.trim();
    let (https, rest) = if let Some(r) = t.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = t.strip_prefix("http://") {
        (false, r)
    } else {
        (false, t)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '"']) {
        return Err(bad());
    }
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let port_only = rest.strip_prefix(':').unwrap_or(rest);
    let endpoint = if digits(port_only) {
        format!("127.0.0.1:{port_only}")
    } else if rest.ends_with(']') || !rest.contains(':') {
        // No port: the scheme's.
        let port = if https { 443 } else { 80 };
        format!("{rest}:{port}")
    } else {
        let (_, p) = rest.rsplit_once(':').ok_or_else(bad)?;
        if !digits(p) {
            return Err(bad());
        }
        rest.to_string()
    };
    let host = match endpoint.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => return Err(bad()),
    };
    Ok((endpoint, https, host))
}

/// Replace the one occurrence of `from` in `text`.
fn replace_once(text: &mut String, from: &str, to: &str) {
    debug_assert_eq!(text.matches(from).count(), 1, "{from:?} in the dev default");
    *text = text.replacen(from, to, 1);
}

/// The dev default with `o` applied, as YAML text (a comment on top says
/// how it was made). Without flags: the dev default itself.
pub fn dev_config(o: &DevOptions) -> Result<String, String> {
    if o.is_empty() {
        return Ok(DEV_DEFAULT.to_string());
    }
    // The default's header comment describes the default: not kept.
    let mut text: String = DEV_DEFAULT
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut made = vec!["sift run".to_string()];
    if let Some(l) = &o.listen {
        let a = local_addr("--listen", l)?;
        replace_once(
            &mut text,
            "    address: 127.0.0.1:8080\n",
            &format!("    address: \"{a}\"\n"),
        );
        made.push(format!("--listen {a}"));
    }
    if let Some(a) = &o.admin {
        let a = local_addr("--admin", a)?;
        replace_once(
            &mut text,
            "  address: 127.0.0.1:9901\n",
            &format!("  address: \"{a}\"\n"),
        );
        made.push(format!("--admin {a}"));
    }
    let mut route_extra = String::new();
    if let Some(u) = &o.upstream {
        let (endpoint, https, host) = upstream(u)?;
        let mut cluster = format!("    endpoints: [\"{endpoint}\"]\n");
        if https {
            cluster.push_str(&format!(
                "    tls: {{ ca: system, server_name: \"{host}\" }}\n"
            ));
            route_extra.push_str("    rewrite: { auto_host: true }\n");
        }
        replace_once(&mut text, "    endpoints: [\"127.0.0.1:3000\"]\n", &cluster);
        made.push(format!(
            "--upstream {}{endpoint}",
            if https { "https://" } else { "" }
        ));
    }
    let mut filters = String::new();
    let mut on_route = Vec::new();
    for f in &o.filters {
        let (kind, mode) = f.split_once(':').unwrap_or((f.as_str(), "annotate"));
        if !["spam", "cilog"].contains(&kind) {
            return Err(format!(
                "--filter {f:?}: the filters are spam and cilog (builtin models)"
            ));
        }
        if !["annotate", "block", "shadow"].contains(&mode) {
            return Err(format!(
                "--filter {f:?}: the modes are annotate, block and shadow"
            ));
        }
        if on_route.iter().any(|(k, _)| *k == kind) {
            return Err(format!("--filter {kind} given twice"));
        }
        filters.push_str(&format!("  - {{ name: {kind}, kind: {kind} }}\n"));
        on_route.push((kind, mode));
        made.push(format!("--filter {kind}:{mode}"));
    }
    if !on_route.is_empty() {
        let list: Vec<String> = on_route
            .iter()
            .map(|(k, m)| format!("{{ filter: {k}, mode: {m} }}"))
            .collect();
        route_extra.push_str(&format!("    filters: [{}]\n", list.join(", ")));
        text.push_str("filters:\n");
        text.push_str(&filters);
    }
    if !route_extra.is_empty() {
        replace_once(
            &mut text,
            "    cluster: app\n",
            &format!("    cluster: app\n{route_extra}"),
        );
    }
    Ok(format!(
        "# Made by `{}` from the embedded dev default.\n{text}",
        made.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(listen: &str, up: &str, filters: &[&str]) -> DevOptions {
        DevOptions {
            listen: (!listen.is_empty()).then(|| listen.to_string()),
            upstream: (!up.is_empty()).then(|| up.to_string()),
            admin: None,
            filters: filters.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn flags_make_a_config_that_loads() {
        assert_eq!(dev_config(&DevOptions::default()).unwrap(), DEV_DEFAULT);
        let c = dev_config(&opts(":9000", "5000", &["spam", "cilog:block"])).unwrap();
        let cfg = crate::config::load_str(&c).unwrap();
        assert_eq!(cfg.listeners[0].address.to_string(), "127.0.0.1:9000");
        assert_eq!(cfg.filters.len(), 2);
        assert!(c.contains("endpoints: [\"127.0.0.1:5000\"]"), "{c}");
        assert!(c.contains("{ filter: cilog, mode: block }"), "{c}");
        let c = dev_config(&opts("0.0.0.0:8081", "https://api.example.com/", &[])).unwrap();
        crate::config::load_str(&c).unwrap();
        assert!(c.contains("endpoints: [\"api.example.com:443\"]"), "{c}");
        assert!(
            c.contains("tls: { ca: system, server_name: \"api.example.com\" }"),
            "{c}"
        );
        assert!(c.contains("rewrite: { auto_host: true }"), "{c}");
        for (up, endpoint) in [
            ("localhost:8000", "localhost:8000"),
            ("http://app.local", "app.local:80"),
            (":3001", "127.0.0.1:3001"),
            ("[::1]:3000", "[::1]:3000"),
        ] {
            let (e, https, _) = upstream(up).unwrap();
            assert_eq!((e.as_str(), https), (endpoint, false), "{up}");
        }
    }

    #[test]
    fn bad_flags_are_named() {
        for (o, says) in [
            (opts("80800", "", &[]), "--listen \"80800\""),
            (opts("host:80", "", &[]), "--listen"),
            (opts("", "http://a/b", &[]), "--upstream"),
            (opts("", "a:b", &[]), "--upstream"),
            (opts("", "", &["ham"]), "spam and cilog"),
            (opts("", "", &["spam:loud"]), "annotate, block and shadow"),
            (opts("", "", &["spam", "spam:block"]), "given twice"),
        ] {
            let e = dev_config(&o).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
