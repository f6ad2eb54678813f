//! The CI-log filter through the proxy: answer routes, annotate headers,
//! block rules, gzip and JSON bodies, a 50 MB log in bounded memory. Real
//! logs from ../shared/data/cilogs, read in place.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sift::body;
use support::*;

fn data() -> std::path::PathBuf {
    std::env::var_os("SIFT_CILOG_DATA")
        .map(Into::into)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/cilogs").into())
}

/// A real log of the set with the given label (the first in labels.csv).
fn log_labelled(label: &str) -> Vec<u8> {
    let csv = std::fs::read_to_string(data().join("labels.csv")).expect("labels.csv");
    let path = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&label))
        .map(|f| f[1].to_string())
        .expect("a log with that label");
    std::fs::read(data().join("logs").join(path)).unwrap()
}

/// What `sift classify --filter cilog` says of `log` (the oracle the proxy
/// must agree with).
fn cli_verdict(log: &[u8]) -> serde_json::Value {
    let mut child = std::process::Command::new(sift_bin())
        .args(["classify", "--filter", "cilog"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(log).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

/// A request's headers as a JSON object.
fn headers_of(req: &Request<Incoming>) -> serde_json::Map<String, serde_json::Value> {
    req.headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect()
}

async fn mirror(name: &'static str) -> Upstream {
    Upstream::start(move |req: Request<Incoming>| async move {
        let headers = headers_of(&req);
        let n = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        json_response(
            200,
            &serde_json::json!({ "name": name, "headers": headers, "body_len": n }),
        )
    })
    .await
}

fn config(app: SocketAddr, other: SocketAddr, route_filters: &str) -> String {
    format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
filters:
  - name: cilog
    kind: cilog
    max_inspect_bytes: 64MiB
    extract: {{ json_pointers: ["/build/log"] }}
routes:
  - name: classify
    match: {{ path: {{ prefix: /classify }} }}
    answer: cilog
    max_request_body: 100MiB
  - name: logs
    cluster: app
    max_request_body: 100MiB
    filters:
{route_filters}
clusters:
  - name: app
    endpoints: ["{app}"]
  - name: other
    endpoints: ["{other}"]
"#
    )
}

async fn post(
    sift: &Sift,
    path: &str,
    headers: &[(&str, &str)],
    b: impl Into<Bytes>,
) -> http::Response<Bytes> {
    let mut r = Request::post(sift.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    send(r.body(full(b.into())).unwrap()).await
}

fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not JSON: {b:?}"))
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn answer_route_matches_the_cli_for_plain_gzip_and_json() {
    let (app, other) = (mirror("app").await, mirror("other").await);
    let sift = Sift::start(&config(app.addr, other.addr, "      - { filter: cilog }"));
    for label in ["test", "compile", "dependency", "lint"] {
        let log = log_labelled(label);
        let want = cli_verdict(&log);
        let r = post(
            &sift,
            "/classify",
            &[("content-type", "text/plain")],
            log.clone(),
        )
        .await;
        assert_eq!(r.status(), 200, "{label}: {:?}", r.body());
        let v = json(r.body());
        assert_eq!(v["filter"], "cilog");
        assert_eq!(v["verdict"], want["class"], "{label}");
        assert_eq!(v["class"], want["class"], "{label}");
        assert_eq!(v["line"], want["line"], "{label}");
        assert_eq!(v["text"], want["text"], "{label}");
        assert!(v["context"].as_array().is_some_and(|c| !c.is_empty()));
        // The CLI's line has the answer's shape: same confidence, same
        // context (`{"line", "text"}` objects).
        assert_eq!(v["confidence"], want["confidence"], "{label}");
        assert_eq!(v["context"], want["context"], "{label}");

        let r = post(
            &sift,
            "/classify",
            &[("content-type", "text/plain"), ("content-encoding", "gzip")],
            gzip(&log),
        )
        .await;
        assert_eq!(json(r.body())["line"], want["line"], "{label}: gzip");

        let doc = serde_json::json!({ "build": { "id": 7, "log": String::from_utf8_lossy(&log) } });
        let r = post(
            &sift,
            "/classify",
            &[("content-type", "application/json")],
            doc.to_string(),
        )
        .await;
        assert_eq!(json(r.body())["class"], want["class"], "{label}: json");
    }
    assert_eq!(
        app.requests.load(Ordering::Relaxed),
        0,
        "answer routes have no upstream"
    );
}

/// A JSON body whose log field is far longer than `max_inspect_bytes`: the
/// field's string streams into the scanner (spooled, bounded memory), so
/// the verdict is the whole log's, as for a plain-text log.
#[tokio::test(flavor = "multi_thread")]
async fn a_json_log_longer_than_the_inspect_limit_is_read_whole() {
    let (app, other) = (mirror("app").await, mirror("other").await);
    let sift = Sift::start(&config(
        app.addr,
        other.addr,
        "      - { filter: cilog, mode: annotate, max_inspect_bytes: 64KiB }",
    ));
    // The first "test" log (113 KB), whose failure lies past its first
    // 64 KiB: a prefix-only read could not find it.
    let log = log_labelled("test");
    let want = cli_verdict(&log);
    let lines_in_limit = log[..64 << 10].iter().filter(|&&b| b == b'\n').count() as u64;
    assert!(
        want["line"].as_u64().unwrap() > lines_in_limit + 1,
        "the evidence lies past the limit"
    );
    let doc = serde_json::json!({
        "build": { "id": 7, "log": String::from_utf8_lossy(&log), "status": "failed" }
    });
    let body = doc.to_string();
    let r = post(
        &sift,
        "/logs",
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v = json(r.body());
    assert_eq!(v["body_len"], body.len(), "the document is forwarded whole");
    let h = &v["headers"];
    assert_eq!(h["x-sift-ci-class"], want["class"]);
    let ev = h["x-sift-ci-evidence-line"].as_str().unwrap();
    assert!(ev.starts_with(&format!("{}: ", want["line"])), "{ev}");
}

#[tokio::test(flavor = "multi_thread")]
async fn annotate_headers_and_block_rules() {
    let (app, other) = (mirror("app").await, mirror("other").await);
    let log = log_labelled("test");
    let want = cli_verdict(&log);
    let class = want["class"].as_str().unwrap().to_string();

    let sift = Sift::start(&config(
        app.addr,
        other.addr,
        "      - { filter: cilog, mode: annotate }",
    ));
    let r = post(
        &sift,
        "/logs",
        &[("content-type", "text/plain"), ("x-sift-ci-class", "oom")],
        log.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v = json(r.body());
    assert_eq!(v["body_len"], log.len(), "the log is forwarded whole");
    let h = &v["headers"];
    assert_eq!(
        h["x-sift-ci-class"],
        class.as_str(),
        "the client's header was replaced"
    );
    let conf: f64 = h["x-sift-ci-confidence"].as_str().unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&conf));
    let ev = h["x-sift-ci-evidence-line"].as_str().unwrap();
    assert!(ev.starts_with(&format!("{}: ", want["line"])), "{ev}");
    assert!(
        ev.len() <= 200 && ev.bytes().all(|b| (b' '..=b'~').contains(&b)),
        "{ev:?}"
    );
    drop(sift);

    // Block rules: this class goes to another cluster; another is rejected.
    let rules = format!(
        "      - filter: cilog\n        mode: block\n        rules:\n          - {{ when: [{class}], cluster: other }}\n          - {{ when: [unknown], reject: true }}"
    );
    let sift = Sift::start(&config(app.addr, other.addr, &rules));
    let r = post(
        &sift,
        "/logs",
        &[("content-type", "text/plain")],
        log.clone(),
    )
    .await;
    assert_eq!(json(r.body())["name"], "other", "routed by the rule");
    let noise: Vec<u8> = b"hello\nworld\n".repeat(10);
    let n = cli_verdict(&noise);
    let r = post(&sift, "/logs", &[("content-type", "text/plain")], noise).await;
    // Whatever the model calls this noise, the rules must act on that class.
    if n["class"] == "unknown" {
        assert_eq!(r.status(), 403, "unknown is rejected");
        assert_eq!(json(r.body())["verdict"], "unknown");
    } else if n["class"] == class.as_str() {
        assert_eq!(json(r.body())["name"], "other");
    } else {
        assert_eq!(json(r.body())["name"], "app");
    }
    drop(sift);

    let rules = format!(
        "      - filter: cilog\n        mode: block\n        rules: [ {{ when: [{class}], reject: true }} ]"
    );
    let sift = Sift::start(&config(app.addr, other.addr, &rules));
    let before = app.requests.load(Ordering::Relaxed);
    let r = post(&sift, "/logs", &[("content-type", "text/plain")], log).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sift-error"], "filter-blocked");
    assert_eq!(
        app.requests.load(Ordering::Relaxed),
        before,
        "never reached the app"
    );
}

/// A 50 MB log streamed to an answer route: scanned as it arrives, with
/// sift's peak memory far below the log's size.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_megabyte_log_in_bounded_memory() {
    let (app, other) = (mirror("app").await, mirror("other").await);
    let sift = Sift::start(&config(app.addr, other.addr, "      - { filter: cilog }"));
    let log = log_labelled("test");
    let want = cli_verdict(&log);
    let rss0 = sift.proc_status_kb("VmRSS");
    let (tx, b) = channel_body(8);
    let req = Request::post(sift.url("/classify"))
        .header("content-type", "text/plain")
        .body(b)
        .unwrap();
    let call = tokio::spawn(send(req));
    // 50 MB of build noise, then the real failing log at the end.
    let filler =
        b"[INFO] Downloading artifact 42 of 9000 from https://repo.example.org/maven2 ... done\n"
            .repeat(1024);
    let mut sent = 0usize;
    while sent < 50 << 20 {
        tx.send(Bytes::from(filler.clone())).await.unwrap();
        sent += filler.len();
    }
    tx.send(Bytes::from(log.clone())).await.unwrap();
    drop(tx);
    let r = call.await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let v = json(r.body());
    assert_eq!(v["class"], want["class"], "the failure at the end is found");
    let peak = sift.proc_status_kb("VmHWM");
    assert!(
        peak < rss0 + 40 * 1024,
        "peak RSS {peak} KB after a 50 MB log (start {rss0} KB)"
    );
    let _ = body::empty();
}

/// An upstream that answers with the headers it got, the body's length and
/// an FNV-1a hash of the body (so a reordered or altered body shows).
async fn hashing(name: &'static str) -> Upstream {
    Upstream::start(move |req: Request<Incoming>| async move {
        let headers = headers_of(&req);
        let mut body = req.into_body();
        let (mut n, mut h) = (0u64, 0xcbf2_9ce4_8422_2325u64);
        while let Some(f) = body.frame().await {
            let Ok(f) = f else {
                return json_response(500, &serde_json::json!({ "error": "body" }));
            };
            if let Ok(d) = f.into_data() {
                n += d.len() as u64;
                h = fnv(h, &d);
            }
        }
        json_response(
            200,
            &serde_json::json!({ "name": name, "headers": headers, "body_len": n, "fnv": format!("{h:016x}") }),
        )
    })
    .await
}

fn fnv(mut h: u64, b: &[u8]) -> u64 {
    for &x in b {
        h = (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A 50 MB log in annotate and block mode (the cilog default
/// `on_oversize: spool`): 1 MiB is held in memory, the rest goes to an
/// unlinked spool file while the scanner reads all of it, so the failure at
/// the end labels the request; the upstream gets the whole body, byte for
/// byte; sift's memory stays far below the log's size and no file is left.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_megabyte_log_annotated_and_blocked_through_a_spool_file() {
    let (app, other) = (hashing("app").await, hashing("other").await);
    let spool = tempdir_in_target("spool-test");
    let log = log_labelled("test");
    let want = cli_verdict(&log);
    let class = want["class"].as_str().unwrap().to_string();
    let filler =
        b"[INFO] Downloading artifact 42 of 9000 from https://repo.example.org/maven2 ... done\n"
            .repeat(1024);
    let mut whole_len = 0u64;
    let mut whole_fnv = 0xcbf2_9ce4_8422_2325u64;
    while whole_len < 50 << 20 {
        whole_len += filler.len() as u64;
        whole_fnv = fnv(whole_fnv, &filler);
    }
    whole_len += log.len() as u64;
    whole_fnv = fnv(whole_fnv, &log);
    let yaml = |mode: &str, rules: &str| {
        format!(
            r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
filters:
  - name: cilog
    kind: cilog
    spool_dir: "{}"
routes:
  - name: logs
    cluster: app
    max_request_body: 100MiB
    filters:
      - {{ filter: cilog, mode: {mode}, max_inspect_bytes: 1MiB{rules} }}
clusters:
  - name: app
    endpoints: ["{}"]
  - name: other
    endpoints: ["{}"]
"#,
            spool.display(),
            app.addr,
            other.addr
        )
    };
    let stream = |sift: &Sift| {
        let (tx, b) = channel_body(8);
        let req = Request::post(sift.url("/logs"))
            .header("content-type", "text/plain")
            .body(b)
            .unwrap();
        let call = tokio::spawn(send(req));
        let (filler, log) = (Bytes::from(filler.clone()), Bytes::from(log.clone()));
        tokio::spawn(async move {
            let mut sent = 0usize;
            while sent < 50 << 20 {
                if tx.send(filler.clone()).await.is_err() {
                    return; // sift answered early (an error)
                }
                sent += filler.len();
            }
            let _ = tx.send(log).await;
        });
        call
    };

    let sift = Sift::start(&yaml("annotate", ""));
    let rss0 = sift.proc_status_kb("VmRSS");
    let r = stream(&sift).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let v = json(r.body());
    assert_eq!(v["body_len"], whole_len, "the whole log is forwarded");
    assert_eq!(v["fnv"], format!("{whole_fnv:016x}"), "byte for byte");
    assert_eq!(
        v["headers"]["x-sift-ci-class"], class,
        "the failure at the end labels the request"
    );
    let peak = sift.proc_status_kb("VmHWM");
    assert!(
        peak < rss0 + 40 * 1024,
        "peak RSS {peak} KB after a 50 MB log (start {rss0} KB)"
    );
    let spooled = sift
        .metric("sift_filter_spooled_bytes_total{route=\"logs\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(spooled as u64, whole_len - (1 << 20), "all past 1 MiB");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "no file left"
    );
    drop(sift);

    // Block mode: a rule on the class seen at the very end sends the
    // request elsewhere; a reject rule stops it before the app sees a byte.
    let sift = Sift::start(&yaml(
        "block",
        &format!(", rules: [ {{ when: [{class}], cluster: other }} ]"),
    ));
    let v = json(stream(&sift).await.unwrap().body());
    assert_eq!(v["name"], "other", "routed by the class at the end");
    assert_eq!(v["fnv"], format!("{whole_fnv:016x}"));
    drop(sift);
    let sift = Sift::start(&yaml(
        "block",
        &format!(", rules: [ {{ when: [{class}], reject: true }} ]"),
    ));
    let before = app.requests.load(Ordering::Relaxed);
    let r = stream(&sift).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sift-error"], "filter-blocked");
    assert_eq!(app.requests.load(Ordering::Relaxed), before);
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "no file left"
    );
    drop(sift);

    // A spool directory that vanished: a clear 500, never a shorter body.
    let sift = Sift::start(&yaml("annotate", ""));
    std::fs::remove_dir(&spool).unwrap();
    let before = app.requests.load(Ordering::Relaxed);
    let r = stream(&sift).await.unwrap();
    assert_eq!(r.status(), 500, "{:?}", r.body());
    assert_eq!(r.headers()["x-sift-error"], "spool-failed");
    assert_eq!(app.requests.load(Ordering::Relaxed), before);
}

/// A fresh directory under target/ (removed first if left by a crash).
fn tempdir_in_target(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Labelled logs of the set as `(path, label, repo, first, last)`, in
/// labels.csv order.
fn labelled_rows() -> Vec<(String, String, String, String, String)> {
    let csv = std::fs::read_to_string(data().join("labels.csv")).expect("labels.csv");
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() >= 10)
        .map(|f| {
            let n = f.len();
            (
                f[1].to_string(),
                f[4].to_string(),
                f[3].to_string(),
                f[n - 3].to_string(),
                f[n - 2].to_string(),
            )
        })
        .collect()
}

/// The verdict fields the answer route and the CLI share.
fn core(v: &serde_json::Value) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    for k in ["class", "confidence", "line", "text", "context"] {
        o.insert(k.into(), v[k].clone());
    }
    o.into()
}

/// `POST /filters/{name}/learn` on a cilog filter with `learn_data`:
/// retrains on that folder plus the posted logs (kept in a store beside the
/// learned model), answers with the report, serves the new model at once
/// and after a restart; the served model is byte for byte what `sift train
/// cilog --data DIR --also STORE` builds offline. Bad examples are a 400
/// that changes nothing; a cilog filter without learn_data answers 409.
#[tokio::test(flavor = "multi_thread")]
async fn cilog_learns_from_labelled_logs_and_persists() {
    let rows = labelled_rows();
    let dir = TempDir::new();
    // learn_data: the first 3 logs of each of the first 5 repositories.
    let base = dir.path("base");
    std::fs::create_dir_all(base.join("logs")).unwrap();
    let mut csv = String::from("path,label,repo,chunk_first_line,chunk_last_line\n");
    let mut per_repo: std::collections::HashMap<&str, usize> = Default::default();
    let mut repos: Vec<&str> = Vec::new();
    for (path, label, repo, a, b) in &rows {
        let n = per_repo.entry(repo).or_default();
        if *n >= 3 || (!repos.contains(&repo.as_str()) && repos.len() >= 5) {
            continue;
        }
        if !repos.contains(&repo.as_str()) {
            repos.push(repo);
        }
        *n += 1;
        let name = format!("{}-{n}.log", repos.len());
        std::fs::copy(
            data().join("logs").join(path),
            base.join("logs").join(&name),
        )
        .unwrap();
        csv.push_str(&format!("{name},{label},{repo},{a},{b}\n"));
    }
    std::fs::write(base.join("labels.csv"), &csv).unwrap();
    let n_base = csv.lines().count() - 1;
    // The batch: 4 logs of a repository the base does not have.
    let other = rows
        .iter()
        .map(|r| r.2.as_str())
        .find(|r| !repos.contains(r))
        .unwrap();
    let mut jsonl = String::new();
    for (path, label, repo, a, b) in rows.iter().filter(|r| r.2 == other).take(4) {
        let log = String::from_utf8_lossy(&std::fs::read(data().join("logs").join(path)).unwrap())
            .into_owned();
        let mut o = serde_json::json!({ "log": log, "label": label, "repo": repo });
        if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
            o["chunk_first_line"] = a.into();
            o["chunk_last_line"] = b.into();
        }
        jsonl.push_str(&o.to_string());
        jsonl.push('\n');
    }
    let learned = dir.path("cilog.learned.bin");
    let store = dir.path("cilog.learned.bin.examples.jsonl");
    let yaml = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
filters:
  - name: cilog
    kind: cilog
    learn_data: {}
    learned_model: {}
  - name: fixed
    kind: cilog
routes:
  - name: classify
    match: {{ path: {{ prefix: /classify }} }}
    answer: cilog
    max_request_body: 100MiB
"#,
        base.display(),
        learned.display()
    );
    let cfg = dir.path("sift.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let probe = std::fs::read(data().join("logs").join(&rows[rows.len() - 1].0)).unwrap();
    let mut sift = Sift::start_at(dir, cfg.clone()).unwrap();
    let before = json(post(&sift, "/classify", &[], probe.clone()).await.body());
    assert_eq!(
        core(&before),
        core(&cli_verdict(&probe)),
        "builtin model serves first"
    );

    let r = send(
        Request::post(sift.admin_url("/filters/cilog/learn"))
            .body(full(jsonl.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let rep = json(r.body());
    assert_eq!(rep["examples"], 4, "{rep}");
    assert_eq!(rep["trained_on"], n_base + 4, "{rep}");
    let per_class: u64 = rep["classes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_class, 4, "{rep}");
    assert!(learned.exists() && store.exists());
    let r = get_text(&sift.admin_url("/filters")).await;
    assert!(
        r.1.contains("cilog.learned.bin\""),
        "serves the learned model: {}",
        r.1
    );
    assert_eq!(std::fs::read_to_string(&store).unwrap().lines().count(), 4);

    // The served model is what the offline command builds from the same data.
    let offline = store.with_file_name("offline.bin");
    let out = std::process::Command::new(sift_bin())
        .args(["train", "cilog", "--data"])
        .arg(&base)
        .arg("--also")
        .arg(&store)
        .arg("--out")
        .arg(&offline)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&offline).unwrap(),
        std::fs::read(&learned).unwrap(),
        "learned model = sift train cilog --data base --also store"
    );
    // ... and it answers: the answer route agrees with the CLI on it.
    let served = json(post(&sift, "/classify", &[], probe.clone()).await.body());
    let cli = std::process::Command::new(sift_bin())
        .args(["classify", "--filter", "cilog", "--model"])
        .arg(&learned)
        .arg(data().join("logs").join(&rows[rows.len() - 1].0))
        .output()
        .unwrap();
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(core(&served), core(&cli), "the learned model serves");
    let metrics = get_text(&sift.admin_url("/metrics")).await.1;
    assert!(
        metrics.contains("sift_filter_learned_examples_total{filter=\"cilog\""),
        "{metrics}"
    );

    // Bad examples: 400, nothing learned or stored.
    for bad in [
        "{\"log\": \"x\", \"label\": \"maybe\"}\n",
        "{\"label\": \"test\"}\n",
        "{\"log\": \"x\", \"label\": \"test\", \"chunk_first_line\": 3}\n",
        "not json\n",
        "",
    ] {
        let r = send(
            Request::post(sift.admin_url("/filters/cilog/learn"))
                .body(full(bad))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), 400, "{bad:?}: {:?}", r.body());
    }
    assert_eq!(std::fs::read_to_string(&store).unwrap().lines().count(), 4);
    // A cilog filter without learn_data cannot learn.
    let r = send(
        Request::post(sift.admin_url("/filters/fixed/learn"))
            .body(full(jsonl))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 409, "{:?}", r.body());
    assert!(
        String::from_utf8_lossy(r.body()).contains("learn_data"),
        "{:?}",
        r.body()
    );

    // After a restart the learned model is the one loaded.
    sift.signal("TERM");
    sift.wait_exit(std::time::Duration::from_secs(10));
    let dir2 = TempDir::new();
    let cfg2 = dir2.path("sift.yaml");
    std::fs::copy(&cfg, &cfg2).unwrap();
    let sift = Sift::start_at(dir2, cfg2).unwrap();
    let r = get_text(&sift.admin_url("/filters")).await;
    assert!(r.1.contains("cilog.learned.bin\""), "{}", r.1);
    let again = json(post(&sift, "/classify", &[], probe).await.body());
    assert_eq!(again, served, "restart keeps the learned model");
}

/// A rule's `min_score`: a verdict whose score (a class's confidence) is
/// below it falls through to the next rule; at or above it, the rule acts.
#[tokio::test(flavor = "multi_thread")]
async fn rules_act_only_above_their_min_score() {
    let (app, other) = (mirror("app").await, mirror("other").await);
    let log = log_labelled("test");
    let want = cli_verdict(&log);
    let class = want["class"].as_str().unwrap().to_string();
    let conf = want["confidence"].as_f64().unwrap();
    assert!(conf < 1.0, "a log with a confidence below 1: {want}");
    let above = (conf + 1.0) / 2.0;
    let rules = |min: f64| {
        format!(
            "      - filter: cilog\n        mode: block\n        rules:\n          - {{ when: [{class}], min_score: {min}, reject: true }}\n          - {{ when: [{class}], cluster: other }}"
        )
    };
    // Below the first rule's floor: the second rule sends it elsewhere.
    let sift = Sift::start(&config(app.addr, other.addr, &rules(above)));
    let r = post(
        &sift,
        "/logs",
        &[("content-type", "text/plain")],
        log.clone(),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(
        json(r.body())["name"],
        "other",
        "fell through to the next rule"
    );
    drop(sift);
    // At the floor: the first rule rejects.
    let sift = Sift::start(&config(app.addr, other.addr, &rules(conf)));
    let r = post(&sift, "/logs", &[("content-type", "text/plain")], log).await;
    assert_eq!(r.status(), 403);
    assert_eq!(json(r.body())["verdict"], class.as_str());
}
