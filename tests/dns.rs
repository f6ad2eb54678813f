//! strict_dns clusters against a real DNS server on loopback, and the
//! endpoint state a changed cluster keeps.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;

async fn names_of(sift: &Sift, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = get_text(&sift.url("/")).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        *seen
            .entry(v["name"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    seen
}

async fn clusters(sift: &Sift) -> serde_json::Value {
    let (status, body) = get_text(&sift.admin_url("/clusters")).await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

fn strict_config(dns: SocketAddr, port: u16, extra: &str) -> String {
    format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
dns: {{ resolvers: ["{dns}"], timeout: 200ms }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    discovery: strict_dns
    dns_refresh_rate: 150ms
    endpoints: ["app.test:{port}"]
{extra}"#
    )
}

// Two threads: the DNS server must answer while `Sift::start` blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_dns_balances_every_address_and_follows_the_name() {
    let a = Upstream::echo_at("a", "127.0.0.1:0".parse().unwrap()).await;
    let port = a.addr.port();
    let b = Upstream::echo_at("b", format!("127.0.0.2:{port}").parse().unwrap()).await;
    let c = Upstream::echo_at("c", format!("127.0.0.3:{port}").parse().unwrap()).await;
    let dns = DnsServer::start().await;
    dns.set("app.test", &["127.0.0.3", "127.0.0.1", "127.0.0.2"]);
    let sift = Sift::start(&strict_config(dns.addr, port, ""));

    // Resolved before the first request: one endpoint per address, in
    // turn, the name kept beside each.
    let seen = names_of(&sift, 30).await;
    assert_eq!(
        seen,
        HashMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );
    let v = clusters(&sift).await;
    let eps = v["clusters"][0]["endpoints"].as_array().unwrap();
    let addrs: Vec<&str> = eps.iter().map(|e| e["address"].as_str().unwrap()).collect();
    assert_eq!(
        addrs,
        [
            format!("127.0.0.1:{port}"),
            format!("127.0.0.2:{port}"),
            format!("127.0.0.3:{port}")
        ]
    );
    assert!(
        eps.iter()
            .all(|e| e["hostname"] == format!("app.test:{port}"))
    );
    assert_eq!(
        sift.metric("sift_cluster_endpoints{cluster=\"app\"}").await,
        Some(3.0)
    );

    // The name loses two addresses: only b is left.
    dns.set("app.test", &["127.0.0.2"]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            sift.metric("sift_cluster_endpoints{cluster=\"app\"}").await == Some(1.0)
        })
        .await
    );
    assert_eq!(names_of(&sift, 10).await, HashMap::from([("b".into(), 10)]));
    assert!(
        sift.metric("sift_dns_resolutions_total{cluster=\"app\",result=\"changed\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // The server stops answering: lookups fail, the last address serves.
    dns.silent.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        sift.metric_reaches(
            "sift_dns_resolutions_total{cluster=\"app\",result=\"failure\"}",
            2.0,
            Duration::from_secs(10)
        )
        .await
    );
    assert_eq!(names_of(&sift, 5).await, HashMap::from([("b".into(), 5)]));

    // The name is deleted (NXDOMAIN): no endpoint, 503 no-healthy-endpoint.
    dns.remove("app.test");
    dns.silent
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(10), || async {
            sift.metric("sift_cluster_endpoints{cluster=\"app\"}").await == Some(0.0)
        })
        .await
    );
    let r = send(http::Request::get(sift.url("/")).body(full("")).unwrap()).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sift-error"], "no-healthy-endpoint");

    // And it comes back with other addresses.
    dns.set("app.test", &["127.0.0.1", "127.0.0.3"]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            sift.metric("sift_cluster_endpoints{cluster=\"app\"}").await == Some(2.0)
        })
        .await
    );
    assert_eq!(
        names_of(&sift, 10).await,
        HashMap::from([("a".into(), 5), ("c".into(), 5)])
    );
    // Refreshes that change nothing rebuild nothing.
    let generation = clusters(&sift).await["generation"].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(clusters(&sift).await["generation"], generation);
    assert!(
        sift.metric("sift_dns_resolutions_total{cluster=\"app\",result=\"unchanged\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    drop((a, b, c));
}

/// `respect_dns_ttl`: with a refresh rate of an hour, the records' 1 s TTL
/// decides when the name is looked up again; `dns_failure_refresh_rate`:
/// a name whose first lookups failed is retried that soon, not an hour
/// later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_and_failures_set_when_names_are_looked_up_again() {
    let a = Upstream::echo_at("a", "127.0.0.1:0".parse().unwrap()).await;
    let port = a.addr.port();
    let b = Upstream::echo_at("b", format!("127.0.0.2:{port}").parse().unwrap()).await;
    let dns = DnsServer::start().await;
    dns.set("app.test", &["127.0.0.1"]);
    dns.set("late.test", &["127.0.0.2"]);
    dns.silent.store(true, std::sync::atomic::Ordering::Relaxed);
    let cfg = format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
dns: {{ resolvers: ["{}"], timeout: 200ms }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - {{ name: late, match: {{ path: {{ prefix: /late }} }}, cluster: late }}
  - {{ name: app, cluster: app }}
clusters:
  - name: app
    discovery: strict_dns
    dns_refresh_rate: 1h
    dns_failure_refresh_rate: 200ms
    respect_dns_ttl: true
    endpoints: ["app.test:{port}"]
  - name: late
    discovery: strict_dns
    dns_refresh_rate: 1h
    dns_failure_refresh_rate: 200ms
    endpoints: ["late.test:{port}"]
"#,
        dns.addr
    );
    let sift = Sift::start(&cfg);
    // Both names failed at start (the server was silent): no endpoints.
    assert_eq!(
        sift.metric("sift_cluster_endpoints{cluster=\"late\"}")
            .await,
        Some(0.0)
    );
    dns.silent
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric("sift_cluster_endpoints{cluster=\"late\"}")
                .await
                == Some(1.0)
                && sift.metric("sift_cluster_endpoints{cluster=\"app\"}").await == Some(1.0)
        })
        .await,
        "retried after dns_failure_refresh_rate, not the hour"
    );
    assert_eq!(names_of(&sift, 2).await, HashMap::from([("a".into(), 2)]));
    // The TTL (1 s), not the hour, brings the change.
    dns.set("app.test", &["127.0.0.2"]);
    assert!(
        eventually(Duration::from_secs(6), || async {
            names_of(&sift, 1).await.contains_key("b")
        })
        .await,
        "the record's TTL decided the next lookup"
    );
    drop((a, b));
}

#[tokio::test]
async fn strict_dns_with_the_system_resolver() {
    let a = Upstream::echo("a").await;
    let cfg = format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    discovery: strict_dns
    dns_lookup_family: v4_only
    endpoints: ["localhost:{}"]
"#,
        a.addr.port()
    );
    let sift = Sift::start(&cfg);
    assert_eq!(names_of(&sift, 3).await, HashMap::from([("a".into(), 3)]));
    let v = clusters(&sift).await;
    assert_eq!(
        v["clusters"][0]["endpoints"][0]["address"],
        format!("127.0.0.1:{}", a.addr.port())
    );
}

/// logical_dns (the default for names) asks `dns.resolvers` too, at each
/// new connection: one endpoint, whatever the name has now.
#[tokio::test]
async fn logical_dns_asks_the_configured_resolvers() {
    let a = Upstream::echo_at("a", "127.0.0.1:0".parse().unwrap()).await;
    let port = a.addr.port();
    let b = Upstream::echo_at("b", format!("127.0.0.2:{port}").parse().unwrap()).await;
    let dns = DnsServer::start().await;
    dns.set("app.test", &["127.0.0.2"]);
    let cfg = format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
dns: {{ resolvers: ["{}"] }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints: ["app.test:{port}"]
"#,
        dns.addr
    );
    let sift = Sift::start(&cfg);
    assert_eq!(names_of(&sift, 3).await, HashMap::from([("b".into(), 3)]));
    assert!(dns.queries.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    drop((a, b));
}

/// A listener that accepts connections and never answers: a health probe
/// to it hangs until its timeout.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = tcp.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// A reload that adds an endpoint keeps what the cluster knew of the
/// others: an endpoint its health checks failed stays out of service
/// (with a new probe of it still pending), an ejected one stays ejected.
#[tokio::test]
async fn a_changed_cluster_keeps_its_endpoints_state() {
    let good = Upstream::echo("good").await;
    let (hole, _hole_task) = black_hole().await;
    let bad = Upstream::start(|_req| async { text_response(503, "down") }).await;
    let good2 = Upstream::echo("good2").await;
    let cfg = |extra: &str| {
        format!(
            r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
routes:
  - name: ej
    match: {{ path: {{ prefix: /ej }} }}
    cluster: ej
  - name: default
    cluster: app
clusters:
  - name: app
    endpoints: ["{}", "{hole}"{extra}]
    health_check: {{ path: /, interval: 30s, timeout: 3s, unhealthy_threshold: 1 }}
  - name: ej
    endpoints: ["{}", "{}"{extra}]
    outlier_detection: {{ consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 50 }}
"#,
            good.addr, good.addr, bad.addr
        )
    };
    let sift = Sift::start(&cfg(""));
    let hole_id = hole.to_string();
    let health_of = |v: &serde_json::Value, cluster: usize, id: &str| {
        v["clusters"][cluster]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == id)
            .cloned()
            .unwrap()
    };
    // The black hole fails its first probe after 3 s.
    assert!(
        eventually(Duration::from_secs(10), || async {
            health_of(&clusters(&sift).await, 0, &hole_id)["healthy"] == false
        })
        .await
    );
    // Eject the 503 endpoint of `ej`.
    for _ in 0..6 {
        let _ = get_text(&sift.url("/ej")).await;
    }
    let bad_id = bad.addr.to_string();
    assert_eq!(
        health_of(&clusters(&sift).await, 1, &bad_id)["ejected"],
        true
    );

    // Reload with a third endpoint in both clusters.
    let gen0 = clusters(&sift).await["generation"].as_u64().unwrap();
    sift.write_config(&cfg(&format!(", \"{}\"", good2.addr)));
    assert!(
        eventually(Duration::from_secs(10), || async {
            clusters(&sift).await["generation"].as_u64().unwrap() > gen0
        })
        .await
    );
    let v = clusters(&sift).await;
    // The new cluster's probe of the black hole cannot have ended (3 s
    // timeout): what it shows is what the old cluster knew.
    let h = health_of(&v, 0, &hole_id);
    assert_eq!(h["healthy"], false, "{h}");
    assert_eq!(h["checked"], true, "{h}");
    assert_eq!(health_of(&v, 1, &bad_id)["ejected"], true);
    assert_eq!(v["clusters"][1]["endpoints"].as_array().unwrap().len(), 3);
    // And no request goes to either.
    let seen = names_of(&sift, 12).await;
    assert_eq!(
        seen.keys()
            .filter(|k| *k != "good" && *k != "good2")
            .count(),
        0,
        "{seen:?}"
    );
    for _ in 0..12 {
        let (status, _) = get_text(&sift.url("/ej")).await;
        assert_eq!(status, 200);
    }
}

#[test]
fn discovery_settings_are_checked() {
    let cfg = |cluster: &str, top: &str| {
        format!(
            "{top}listeners:\n  - {{ name: l, address: \"127.0.0.1:0\" }}\nroutes:\n  - {{ name: r, cluster: c }}\nclusters:\n  - name: c\n{cluster}"
        )
    };
    let err = |cluster: &str, top: &str| {
        sift::config::load_str(&cfg(cluster, top))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(
        err(
            "    discovery: static\n    endpoints: [\"app.svc:80\"]\n",
            ""
        )
        .contains("a static cluster takes IP addresses")
    );
    assert!(
        err(
            "    dns_refresh_rate: 1s\n    endpoints: [\"app.svc:80\"]\n",
            ""
        )
        .contains("only applies to discovery: strict_dns")
    );
    assert!(
        err(
            "    discovery: strict_dns\n    dns_refresh_rate: 0s\n    endpoints: [\"app.svc:80\"]\n",
            ""
        )
        .contains("dns_refresh_rate")
    );
    assert!(
        err(
            "    endpoints: [\"app.svc:80\"]\n",
            "dns: { resolvers: [\"dns.local\"] }\n"
        )
        .contains("dns.resolvers[0]")
    );
    assert!(
        err(
            "    discovery: strict_dns\n    respect_dns_ttl: true\n    endpoints: [\"app.svc:80\"]\n",
            ""
        )
        .contains("does not give TTLs")
    );
    assert!(
        err(
            "    respect_dns_ttl: true\n    endpoints: [\"app.svc:80\"]\n",
            ""
        )
        .contains("only applies to discovery: strict_dns")
    );
    assert!(
        err(
            "    endpoints: [\"app.svc:80\"]\n",
            "dns: { resolvers: [\"10.96.0.10\"] }\n"
        )
        .is_empty()
    );
    assert!(
        err(
            "    discovery: strict_dns\n    dns_lookup_family: v4_only\n    endpoints: [\"app.svc:80\", \"10.0.0.1:80\"]\n",
            ""
        )
        .is_empty()
    );
}
