//! Lifecycle: hot reload (admin, file watch with ConfigMap-style symlink
//! swaps, SIGHUP), bad configs, graceful drain, connection limits.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use sift::body;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config_with_header(up: std::net::SocketAddr, value: &str) -> String {
    simple_config(
        up,
        &format!("    response_headers: {{ set: {{ x-generation: \"{value}\" }} }}\n"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_reloads_under_load_fail_no_request() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        text_response(200, "ok")
    })
    .await;
    let sift = Sift::start(&config_with_header(up.addr, "0"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), sift.url("/"));
        load.push(tokio::spawn(async move {
            let client = http1_client();
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .request(Request::post(&url).body(full("payload")).unwrap())
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for i in 1..=100 {
        sift.write_config(&config_with_header(up.addr, &i.to_string()));
        let (status, body) = post_text(&sift.admin_url("/reload")).await;
        assert_eq!(status, 200, "{body}");
        // applied, or already picked up by the file watcher
        assert!(
            body.contains("applied") || body.contains("unchanged"),
            "{body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let r = send(Request::get(sift.url("/")).body(body::empty()).unwrap()).await;
    assert_eq!(r.headers()["x-generation"], "100");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request fails during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "load ran throughout");
    let (_, cfg) = get_text(&sift.admin_url("/config")).await;
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(v["generation"], 101);
    assert_eq!(
        sift.metric(r#"sift_config_reloads_total{result="success"}"#)
            .await,
        Some(100.0)
    );
    // The cluster did not change, so its pool survived: the upstream saw
    // only the few connections the 4 clients needed, not one per reload.
    let conns = up.connections.load(Ordering::Relaxed);
    assert!(conns <= 8, "upstream connections: {conns}");
}

#[tokio::test(flavor = "multi_thread")]
async fn configmap_symlink_swap_is_picked_up_by_the_watcher() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    // Kubernetes' layout: sift.yaml -> ..data/sift.yaml, ..data -> ..v1
    let dir = TempDir::new();
    let v1 = dir.path("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("sift.yaml"), simple_config(a.addr, "")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path("..data")).unwrap();
    std::os::unix::fs::symlink("..data/sift.yaml", dir.path("sift.yaml")).unwrap();
    let path = dir.path("sift.yaml");
    let sift = Sift::start_at(dir, path).unwrap();
    let name = |sift: &Sift| {
        let url = sift.url("/");
        async move {
            let (_, b) = get_text(&url).await;
            serde_json::from_str::<serde_json::Value>(&b).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(name(&sift).await, "a");
    // The swap: write ..v2, point a new link at it, rename over ..data.
    let v2 = sift.dir.path("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("sift.yaml"), simple_config(b.addr, "")).unwrap();
    std::os::unix::fs::symlink("..v2", sift.dir.path("..data_tmp")).unwrap();
    std::fs::rename(sift.dir.path("..data_tmp"), sift.dir.path("..data")).unwrap();
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || async {
            name(&sift).await == "b"
        })
        .await,
        "the swap is seen"
    );
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "picked up in {took:?}");
    // An editor's rename-on-save is seen too, and a broken save is rejected
    // while the old config keeps serving.
    let tmp = sift.dir.path("sift.yaml.swp");
    std::fs::write(
        &tmp,
        "listeners: [ {name: main, address: nope} ]\nbogus: 1\n",
    )
    .unwrap();
    std::fs::remove_file(sift.dir.path("sift.yaml")).unwrap();
    std::fs::rename(&tmp, sift.dir.path("sift.yaml")).unwrap();
    assert!(
        sift.metric_reaches(
            r#"sift_config_reloads_total{result="failure"}"#,
            1.0,
            Duration::from_secs(5)
        )
        .await
    );
    assert_eq!(name(&sift).await, "b", "the old config keeps serving");
    assert!(
        sift.log_lines()
            .iter()
            .any(|l| l.contains("config reload rejected") && l.contains("bogus"))
    );
    std::fs::write(&tmp, simple_config(a.addr, "")).unwrap();
    std::fs::rename(&tmp, sift.dir.path("sift.yaml")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            name(&sift).await == "a"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_bad_reload_keeps_old_config() {
    let up = Upstream::echo("a").await;
    let mut cfg = config_with_header(up.addr, "one");
    cfg.push_str("reload: { watch: false }\n");
    let sift = Sift::start(&cfg);
    sift.write_config(
        &config_with_header(up.addr, "two")
            .replace("clusters:", "reload: { watch: false }\nclusters:"),
    );
    sift.signal("HUP");
    assert!(
        eventually(Duration::from_secs(3), || async {
            let r = send(Request::get(sift.url("/")).body(body::empty()).unwrap()).await;
            r.headers()["x-generation"] == "two"
        })
        .await
    );
    // A bad config by POST /reload: 400 with every error, old config serves.
    sift.write_config(
        "listeners: [{name: main, address: \"127.0.0.1:0\"}]\nroutes: [{name: r, cluster: nope}]\nclusters: [{name: c, endpoints: [\"bad\"]}]\n",
    );
    let (status, body) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"], "rejected");
    let errors = v["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["path"] == "routes[0].cluster" && e["line"] == 2),
        "{body}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["path"] == "clusters[0].endpoints[0]"),
        "{body}"
    );
    let r = send(Request::get(sift.url("/")).body(body::empty()).unwrap()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-generation"], "two");
    // A restart-only change: rejected, not half-applied.
    sift.write_config(
        &config_with_header(up.addr, "three").replace("clusters:", "workers: 3\nclusters:"),
    );
    let (status, body) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("needs a restart"), "{body}");
    let r = send(Request::get(sift.url("/")).body(body::empty()).unwrap()).await;
    assert_eq!(r.headers()["x-generation"], "two");
    assert_eq!(
        sift.metric(r#"sift_config_reloads_total{result="failure"}"#)
            .await,
        Some(2.0)
    );
}

/// Listeners added, renamed, moved and removed by a reload, as nginx's
/// reload and Envoy's listener updates do: a new address is bound before
/// the config is published (in use: the reload is rejected and nothing
/// changes), a renamed listener keeps its socket, a removed one stops
/// accepting and its open connections close after answering.
#[tokio::test(flavor = "multi_thread")]
async fn listeners_are_added_moved_and_removed_by_a_reload() {
    let cfg = |listeners: &str| {
        format!(
            r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
reload: {{ watch: false }}
listeners:
{listeners}
routes:
  - {{ name: a, direct_response: {{ status: 200, body: "a" }} }}
  - {{ name: b, direct_response: {{ status: 200, body: "b" }} }}
"#
        )
    };
    let reload = |sift: &Sift, text: String| {
        sift.write_config(&text);
        let url = sift.admin_url("/reload");
        async move { post_text(&url).await }
    };
    let get = |port: u16| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .ok()?;
        let r = read_response(&mut s).await;
        Some(r.rsplit("\r\n\r\n").next().unwrap_or_default().to_string())
    };
    let main_only = "  - { name: main, address: \"127.0.0.1:0\", routes: [a] }";
    let sift = Sift::start(&cfg(main_only));
    let main = sift.addr();
    let mut kept = tokio::net::TcpStream::connect(main).await.unwrap();
    let ask = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    kept.write_all(ask).await.unwrap();
    assert!(read_response(&mut kept).await.ends_with("\r\n\r\na"));

    // Added: a second listener on its own port, with its own routes.
    let p1 = free_port();
    let two = format!("{main_only}\n  - {{ name: two, address: \"127.0.0.1:{p1}\", routes: [b] }}");
    let (code, body) = reload(&sift, cfg(&two)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(p1).await.as_deref(), Some("b"));
    // The kept listener and its open connection go on as before.
    kept.write_all(ask).await.unwrap();
    let r = read_response(&mut kept).await;
    assert!(
        r.ends_with("\r\n\r\na") && !r.to_ascii_lowercase().contains("connection: close"),
        "{r}"
    );

    // A port in use: rejected, naming the listener; nothing changes.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().port();
    let three = format!("{two}\n  - {{ name: three, address: \"127.0.0.1:{busy}\", routes: [a] }}");
    let (code, body) = reload(&sift, cfg(&three)).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("cannot bind listener \\\"three\\\""),
        "{body}"
    );
    assert!(body.contains("listeners[2].address"), "{body}");
    assert_eq!(get(p1).await.as_deref(), Some("b"));
    assert_eq!(get(main.port()).await.as_deref(), Some("a"));
    let applied = r#"sift_config_reloads_total{result="success"}"#;
    assert_eq!(sift.metric(applied).await, Some(1.0));

    // Renamed on the same port (the socket carries over, no gap), moved
    // to another port, and removed.
    drop(holder);
    let p2 = free_port();
    let moved = format!(
        "  - {{ name: deux, address: \"127.0.0.1:{p1}\", routes: [a] }}\n  - {{ name: three, address: \"127.0.0.1:{p2}\", routes: [b] }}"
    );
    let (code, body) = reload(&sift, cfg(&moved)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        get(p1).await.as_deref(),
        Some("a"),
        "deux serves p1 with its routes"
    );
    assert_eq!(get(p2).await.as_deref(), Some("b"));
    // main is gone: its port refuses, and its open connection's next
    // request is answered 503 listener-removed, then the connection closes.
    let refused = eventually(Duration::from_secs(3), || async {
        tokio::net::TcpStream::connect(main).await.is_err()
    })
    .await;
    assert!(refused, "the removed listener's port still accepts");
    kept.write_all(ask).await.unwrap();
    let r = read_response(&mut kept).await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("x-sift-error: listener-removed"), "{r}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), kept.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0))), "closed after the answer: {n:?}");
    assert_eq!(sift.metric(applied).await, Some(2.0));

    // Moved: the same name on another port; the old port closes.
    let p3 = free_port();
    let moved_again = format!(
        "  - {{ name: deux, address: \"127.0.0.1:{p1}\", routes: [a] }}\n  - {{ name: three, address: \"127.0.0.1:{p3}\", routes: [b] }}"
    );
    let (code, body) = reload(&sift, cfg(&moved_again)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(p3).await.as_deref(), Some("b"));
    let closed = eventually(Duration::from_secs(3), || async { get(p2).await.is_none() }).await;
    assert!(closed, "the moved listener's old port still serves");
    assert_eq!(get(p1).await.as_deref(), Some("a"));
}

/// Run `sift CMD --config PATH`; (exit code, stderr).
fn sift_with_config(cmd: &str, path: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(sift_bin())
        .args([cmd, "--config"])
        .arg(path)
        .output()
        .expect("run sift");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_at_start_exits_2_with_every_error() {
    let dir = TempDir::new();
    let path = dir.path("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - name: main\n    address: \"127.0.0.1:0\"\n    limits: { idle_timeout: 5 }\nroutes:\n  - name: r\n    cluster: missing\nclusters: []\nextra: true\n",
    )
    .unwrap();
    let (code, err) = sift_with_config("run", &path);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bad.yaml:4: listeners[0].limits.idle_timeout"),
        "{err}"
    );
    assert!(err.contains("needs a unit"), "{err}");
    assert!(err.contains("bad.yaml:9: extra"), "{err}");
    // In file order.
    assert!(err.find(":4:").unwrap() < err.find(":9:").unwrap(), "{err}");
    // `sift check` prints file:line: path: message for each, exit code 2.
    let (code, err) = sift_with_config("check", &path);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bad.yaml:4: listeners[0].limits.idle_timeout"),
        "{err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");
    // Fix the parse errors: now the semantic one (unknown cluster) shows.
    std::fs::write(
        &path,
        "listeners:\n  - name: main\n    address: \"127.0.0.1:0\"\nroutes:\n  - name: r\n    cluster: missing\nclusters: []\n",
    )
    .unwrap();
    let (code, err) = sift_with_config("check", &path);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bad.yaml:6: routes[0].cluster: no cluster is named \"missing\""),
        "{err}"
    );
    // A port in use is a clear error too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        &path,
        format!(
            "listeners: [{{name: main, address: \"{}\"}}]\nadmin: {{address: \"127.0.0.1:0\"}}\nroutes: []\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let (code, err) = sift_with_config("run", &path);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot bind listener \"main\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_inflight_slow_request_then_exits_0() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        text_response(200, "done")
    })
    .await;
    let cfg = simple_config(up.addr, "").replace(
        "clusters:",
        "shutdown: { delay: 300ms, drain_timeout: 10s }\nclusters:",
    );
    let mut sift = Sift::start(&cfg);
    let url = sift.url("/slow");
    let inflight = tokio::spawn(async move { get_text(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sift.signal("TERM");
    // Not ready while draining (the signal is handled asynchronously; the
    // admin API answers "draining" for the whole drain).
    let readyz = sift.admin_url("/readyz");
    assert!(
        eventually(Duration::from_secs(1), || async {
            get_text(&readyz).await == (503, "draining\n".to_string())
        })
        .await
    );
    let (status, body) = inflight.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "done"),
        "the in-flight request completes"
    );
    let t = Instant::now();
    let code = tokio::task::block_in_place(|| sift.wait_exit(Duration::from_secs(10)));
    assert_eq!(code.and_then(|c| c.code()), Some(0));
    assert!(t.elapsed() < Duration::from_secs(3));
    // Listeners are closed.
    assert!(tokio::net::TcpStream::connect(sift.addr()).await.is_err());
}

/// Draining does not fail a request a client sends on a connection at that
/// moment: an idle HTTP/1.1 keep-alive connection stays open for the grace,
/// its next request is answered with `Connection: close`, then it closes;
/// so is the first request of a connection accepted just before the drain;
/// an answer made after the drain began says close too.
#[tokio::test(flavor = "multi_thread")]
async fn draining_answers_the_next_request_on_a_keep_alive_connection_with_close() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        text_response(200, "done")
    })
    .await;
    let cfg = simple_config(up.addr, "").replace(
        "clusters:",
        "shutdown: { delay: 0s, drain_timeout: 10s }\nclusters:",
    );
    let mut sift = Sift::start(&cfg);
    let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    // Two keep-alive connections: one idle, one with a request in flight.
    let mut idle = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    idle.write_all(req("/").as_bytes()).await.unwrap();
    let first = read_response(&mut idle).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    let mut busy = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    busy.write_all(req("/slow").as_bytes()).await.unwrap();
    // A connection accepted before the drain whose first request comes
    // after it began (sift had not yet seen a byte of it).
    let mut fresh = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sift.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    fresh.write_all(req("/").as_bytes()).await.unwrap();
    let answer = read_response(&mut fresh).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // The idle connection's next request, sent after the drain began.
    idle.write_all(req("/").as_bytes()).await.unwrap();
    let second = read_response(&mut idle).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0))), "closed after the answer: {n:?}");
    // The busy one's answer was made after the drain began: it completes,
    // saying close, and the connection closes after it.
    let slow = read_response(&mut busy).await;
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");
    assert!(
        slow.to_ascii_lowercase().contains("connection: close"),
        "{slow}"
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3), busy.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0))), "closed after the answer: {n:?}");
    let code = tokio::task::block_in_place(|| sift.wait_exit(Duration::from_secs(10)));
    assert_eq!(code.and_then(|c| c.code()), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_header_timeout_idle_timeout_and_max_connections() {
    let up = Upstream::echo("a").await;
    let cfg = simple_config(up.addr, "").replace(
        "    address: \"127.0.0.1:0\"\n",
        "    address: \"127.0.0.1:0\"\n    limits: { header_read_timeout: 500ms, idle_timeout: 700ms, max_connections: 3 }\n",
    );
    let sift = Sift::start(&cfg);
    // Slowloris: a partial head is cut off after header_read_timeout.
    let mut slow = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(slow);
    // Idle keep-alive connection is closed after idle_timeout.
    let mut idle = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(idle);
    // max_connections: 3 open, the 4th is closed at accept.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 12];
        s.read_exact(&mut b).await.unwrap();
        held.push(s);
    }
    let mut extra = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut b = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut b)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the 4th connection is closed: {n:?} {b:?}"
    );
    assert_eq!(
        sift.metric(r#"sift_listener_overflow_total{listener="main"}"#)
            .await,
        Some(1.0)
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_upstream_or_slow_client_does_not_stall_others() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/hang" {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        text_response(200, "fast")
    })
    .await;
    let cfg = simple_config(up.addr, "    timeout: 30s\n");
    let sift = Sift::start(&format!("workers: 1\n{cfg}"));
    // 20 requests hang on the upstream, 5 clients hold half-sent heads.
    let mut hung = Vec::new();
    for _ in 0..20 {
        let url = sift.url("/hang");
        hung.push(tokio::spawn(async move { get_text(&url).await }));
    }
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
        s.write_all(b"GET /fast HTTP/1.1\r\nhost:").await.unwrap();
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    for _ in 0..50 {
        let (status, body) = get_text(&sift.url("/fast")).await;
        assert_eq!((status, body.as_str()), (200, "fast"));
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for h in hung {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inflight_request_finishes_on_the_snapshot_it_started_with() {
    let slow_a = Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        text_response(200, "from-a")
    })
    .await;
    let b = Upstream::start(|_req: Request<hyper::body::Incoming>| async move {
        text_response(200, "from-b")
    })
    .await;
    let sift = Sift::start(&simple_config(slow_a.addr, ""));
    let url = sift.url("/");
    let inflight = tokio::spawn(async move { get_text(&url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sift.write_config(&simple_config(b.addr, ""));
    let (status, body) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(status, 200, "{body}");
    // New requests go to b at once; the one in flight still completes from a.
    assert_eq!(get_text(&sift.url("/")).await.1, "from-b");
    assert_eq!(inflight.await.unwrap(), (200, "from-a".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_max_concurrent_streams_is_enforced() {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let up = Upstream::start(move |_req: Request<hyper::body::Incoming>| {
        let (n, p) = (n.clone(), p.clone());
        async move {
            let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(cur, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            text_response(200, "ok")
        }
    })
    .await;
    let cfg = simple_config(up.addr, "").replace(
        "    address: \"127.0.0.1:0\"\n",
        "    address: \"127.0.0.1:0\"\n    protocol: h2\n    limits: { max_concurrent_streams: 3 }\n",
    );
    let sift = Sift::start(&cfg);
    // One HTTP/2 connection, 12 concurrent requests: the server's SETTINGS
    // cap the streams at 3, so the upstream never sees more than 3 at once.
    // A first request lets the client learn the SETTINGS (streams opened
    // before they arrive are refused with REFUSED_STREAM, which is retryable).
    let client = http2_client();
    let r = client
        .request(Request::get(sift.url("/")).body(body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut all = Vec::new();
    for _ in 0..12 {
        let (c, url) = (client.clone(), sift.url("/"));
        all.push(tokio::spawn(async move {
            let r = c
                .request(Request::get(url).body(body::empty()).unwrap())
                .await
                .map_err(|e| format!("{e:?}"))
                .unwrap();
            r.status().as_u16()
        }));
    }
    for h in all {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(
        sift.metric(r#"sift_connections_total{listener="main"}"#)
            .await,
        Some(1.0)
    );
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&peak),
        "peak concurrency at the upstream: {peak}"
    );
}

/// Read one HTTP/1.1 response (head and a Content-Length body) from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "connection closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn header_read_timeout_counts_from_a_head_s_first_byte() {
    // The header read timeout is kept by the connection's watcher (no timer
    // per request): an idle keep-alive connection lives to idle_timeout, a
    // head that has started must complete within header_read_timeout.
    let up = Upstream::echo("a").await;
    let cfg = simple_config(up.addr, "").replace(
        "    address: \"127.0.0.1:0\"\n",
        "    address: \"127.0.0.1:0\"\n    protocol: h1\n    limits: { header_read_timeout: 300ms, idle_timeout: 3s }\n",
    );
    let sift = Sift::start(&cfg);
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // Idle for 4 × header_read_timeout: still open, and serves again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let before = sift
        .metric(r#"sift_downstream_protocol_errors_total{listener="main"}"#)
        .await
        .unwrap_or(0.0);
    // A head that starts and stalls on the same connection is cut off at
    // header_read_timeout (1–1.5 ×), long before idle_timeout, with no response.
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(b"GET /three HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let took = t.elapsed();
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "closed: {r:?} {rest:?}"
    );
    assert!(rest.is_empty(), "no response to a stalled head: {rest:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let after = sift
        .metric(r#"sift_downstream_protocol_errors_total{listener="main"}"#)
        .await
        .unwrap_or(0.0);
    assert_eq!(after, before + 1.0, "the stalled head is counted");
}

/// The admin listener answers each endpoint it lists at `GET /`, a wrong
/// method with 405, and an unknown path with 404 and the same list.
#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_answer_and_list_themselves() {
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&simple_config(up.addr, ""));
    let (status, index) = get_text(&sift.admin_url("/")).await;
    assert_eq!(status, 200, "{index}");
    // Every GET endpoint in the list answers 200.
    let gets: Vec<&str> = index
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GET "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(gets.len() >= 6, "{index}");
    for path in &gets {
        let (status, body) = get_text(&sift.admin_url(path)).await;
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    for path in [
        "/healthz", "/readyz", "/metrics", "/config", "/reload", "/filters", "/canary",
    ] {
        assert!(
            index.contains(path),
            "{path} missing from the index:\n{index}"
        );
    }
    assert_eq!(
        get_text(&sift.admin_url("/healthz")).await,
        (200, "ok\n".to_string())
    );
    assert_eq!(
        get_text(&sift.admin_url("/readyz")).await,
        (200, "ready\n".to_string())
    );
    // The process metrics of every Prometheus client, and the version.
    let rss = sift.metric("process_resident_memory_bytes").await.unwrap();
    assert!(rss > 1e6, "{rss}");
    assert!(sift.metric("process_open_fds").await.unwrap() >= 3.0);
    assert!(sift.metric("process_threads").await.unwrap() >= 2.0);
    assert!(sift.metric("process_cpu_seconds_total").await.is_some());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sift.metric("process_start_time_seconds").await.unwrap();
    assert!(
        started > now - 600.0 && started <= now + 1.0,
        "{started} {now}"
    );
    assert_eq!(
        sift.metric(&format!(
            "sift_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ))
        .await,
        Some(1.0)
    );
    assert_eq!(post_text(&sift.admin_url("/healthz")).await.0, 405);
    assert_eq!(post_text(&sift.admin_url("/")).await.0, 405);
    assert_eq!(get_text(&sift.admin_url("/reload")).await.0, 405);
    let (status, body) = get_text(&sift.admin_url("/nope")).await;
    assert_eq!(status, 404);
    assert!(
        body.starts_with("not found\n") && body.contains(&index),
        "{body}"
    );
}

fn limits_config(up: std::net::SocketAddr, listener_extra: &str) -> String {
    let cfg = simple_config(up, "").replace(
        "    address: \"127.0.0.1:0\"\n",
        &format!("    address: \"127.0.0.1:0\"\n{listener_extra}"),
    );
    assert!(cfg.contains(listener_extra), "{cfg}");
    cfg
}

/// `max_requests_per_connection` on HTTP/1.1: the Nth answer says
/// `Connection: close` and the connection ends after it; on HTTP/2 the
/// server sends GOAWAY after the Nth stream and the client's connection
/// ends. Counted by reason.
#[tokio::test(flavor = "multi_thread")]
async fn max_requests_per_connection_closes_gracefully() {
    let up = Upstream::echo("a").await;
    let sift = Sift::start(&limits_config(
        up.addr,
        "    limits: { max_requests_per_connection: 3 }\n",
    ));
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    for i in 1..=3 {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let close = r.to_ascii_lowercase().contains("\r\nconnection: close\r\n");
        assert_eq!(close, i == 3, "answer {i}: {r}");
    }
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed after the 3rd answer");
    assert!(matches!(n, Ok(0) | Err(_)), "{rest:?}");

    // HTTP/2 with prior knowledge, one connection.
    let tcp = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..3 {
        let r = send
            .send_request(
                Request::get(format!("http://{}/", sift.addr()))
                    .body(body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // GOAWAY: the connection ends without the client closing it.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the server ended the HTTP/2 connection")
        .unwrap()
        .ok();
    assert_eq!(
        sift.metric(r#"sift_connections_closed_total{listener="main",reason="max_requests"}"#)
            .await,
        Some(2.0)
    );
}

/// `max_connection_duration`: a busy keep-alive connection is closed
/// gracefully once it is that old (its last answer says
/// `Connection: close`); a streaming answer still running then is cut
/// after `drain_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn max_connection_duration_closes_then_cuts_after_drain_timeout() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/stream" {
            // A chunk every 100 ms for 10 s.
            let (tx, b) = channel_body(4);
            tokio::spawn(async move {
                for _ in 0..100 {
                    if tx.send(bytes::Bytes::from_static(b"tick\n")).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            http::Response::new(b)
        } else {
            text_response(200, "ok")
        }
    })
    .await;
    let sift = Sift::start(&limits_config(
        up.addr,
        "    limits: { max_connection_duration: 400ms, drain_timeout: 500ms }\n",
    ));
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let t = Instant::now();
    let mut served = 0;
    loop {
        // Closed between two requests (idle at that moment): the write may
        // still succeed, and the read then finds the end of the stream.
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut first = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(5), s.peek(&mut first)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("no answer"),
        }
        let r = read_response(&mut s).await;
        served += 1;
        if r.to_ascii_lowercase().contains("\r\nconnection: close\r\n") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 4, "closed too early: {served} answers");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );

    // A stream outlives the connection's age: cut drain_timeout later.
    let mut s = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let t = Instant::now();
    s.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut got)).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("tick"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the cut stream must not look complete"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(r#"sift_connections_closed_total{listener="main",reason="drain_timeout"}"#)
                .await
                == Some(1.0)
        })
        .await
    );
    assert!(
        sift.metric(r#"sift_connections_closed_total{listener="main",reason="max_duration"}"#)
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
}

/// `POST /healthcheck/fail` makes /readyz fail while requests are still
/// served (a load balancer drains sift before maintenance); `/ok` undoes it.
#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_fail_takes_readiness_down_but_keeps_serving() {
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&simple_config(up.addr, ""));
    assert_eq!(get_text(&sift.admin_url("/readyz")).await.0, 200);
    assert_eq!(post_text(&sift.admin_url("/healthcheck/fail")).await.0, 200);
    let (status, body) = get_text(&sift.admin_url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.starts_with("failing"), "{body}");
    assert_eq!(get_text(&sift.url("/")).await.0, 200, "still serving");
    assert_eq!(get_text(&sift.admin_url("/healthcheck/fail")).await.0, 405);
    assert_eq!(post_text(&sift.admin_url("/healthcheck/ok")).await.0, 200);
    assert_eq!(
        get_text(&sift.admin_url("/readyz")).await,
        (200, "ready\n".to_string())
    );
}

/// `POST /logging` changes the log filter of a running sift (Envoy's
/// `/logging?level=`): a debug line appears only after `level=debug`,
/// access lines stop under `filter=warn`, bad levels and directives are
/// refused with the filter unchanged, and a reload that changes
/// `log.level` applies it (no restart), while `log.format` still needs one.
#[tokio::test(flavor = "multi_thread")]
async fn log_level_changes_at_run_time() {
    let up = Upstream::echo("app").await;
    let cfg = simple_config(up.addr, "");
    let sift = Sift::start(&cfg);
    let count = |msg: &str| {
        sift.log_lines()
            .iter()
            .filter(|l| l.contains(&format!("\"message\":\"{msg}\"")))
            .count()
    };
    let filter = || async {
        let (status, body) = get_text(&sift.admin_url("/logging")).await;
        assert_eq!(status, 200);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["filter"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(filter().await, "info,hyper=warn,h2=warn");
    // At info, an unchanged reload logs nothing at debug.
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    let (status, body) = post_text(&sift.admin_url("/logging?level=DEBUG")).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["filter"], "debug,hyper=warn,h2=warn");
    assert_eq!(v["previous"], "info,hyper=warn,h2=warn");
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            count("config unchanged") == 1
        })
        .await,
        "one debug line, from the second reload only"
    );
    // Access lines are INFO: a warn filter stops them.
    let (status, body) =
        post_text(&sift.admin_url("/logging?filter=warn%2Csift%3A%3Aapp%3Dinfo")).await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["filter"].as_str()
        ),
        (200, Some("warn,sift::app=info"))
    );
    let before = count("access");
    for _ in 0..3 {
        assert_eq!(get_text(&sift.url("/")).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count("access"), before, "no access line under warn");
    // Refused: the filter stays.
    for bad in [
        "/logging?level=loud",
        "/logging?filter=sift%3D%5B",
        "/logging",
        "/logging?x=1",
    ] {
        let (status, body) = post_text(&sift.admin_url(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(filter().await, "warn,sift::app=info");
    // A reload that changes log.level applies it.
    let path = sift.config_path.clone();
    let text = cfg.replace("level: info", "level: debug");
    std::fs::write(&path, &text).unwrap();
    let (status, body) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(filter().await, "debug,hyper=warn,h2=warn");
    // The format still needs a restart.
    std::fs::write(&path, text.replace("format: json", "format: text")).unwrap();
    let (status, body) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(status, 400);
    assert!(body.contains("log.format changed"), "{body}");
}

/// `POST /quitquitquit` (Envoy's; `/shutdown` as linkerd's) stops sift as
/// SIGTERM does: readiness fails at once, a request in flight finishes,
/// then sift exits 0 with its listeners closed. This is how a Kubernetes
/// Job's main container ends its sidecar. A GET does nothing (405).
#[tokio::test(flavor = "multi_thread")]
async fn quitquitquit_stops_like_sigterm() {
    let up = Upstream::start(|req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        text_response(200, "done")
    })
    .await;
    let cfg = simple_config(up.addr, "").replace(
        "clusters:",
        "shutdown: { delay: 200ms, drain_timeout: 10s }\nclusters:",
    );
    for path in ["/quitquitquit", "/shutdown"] {
        let mut sift = Sift::start(&cfg);
        assert_eq!(get_text(&sift.admin_url(path)).await.0, 405);
        assert_eq!(get_text(&sift.admin_url("/readyz")).await.0, 200);
        let url = sift.url("/slow");
        let inflight = tokio::spawn(async move { get_text(&url).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (status, body) = post_text(&sift.admin_url(path)).await;
        assert_eq!(status, 200, "{body}");
        let readyz = sift.admin_url("/readyz");
        assert!(
            eventually(Duration::from_secs(1), || async {
                get_text(&readyz).await == (503, "draining\n".to_string())
            })
            .await
        );
        assert_eq!(inflight.await.unwrap(), (200, "done".to_string()));
        let code = tokio::task::block_in_place(|| sift.wait_exit(Duration::from_secs(10)));
        assert_eq!(code.and_then(|c| c.code()), Some(0), "{path}");
        assert!(tokio::net::TcpStream::connect(sift.addr()).await.is_err());
        let lines = sift.lines.lock().unwrap().join("\n");
        assert!(lines.contains("stop asked for on the admin API"), "{lines}");
    }
}

/// `overload.max_connections` bounds open client connections across every
/// listener (Envoy's global_downstream_max_connections): with 2 and two
/// listeners, one connection open on each, a third on either is closed at
/// accept and counted for its listener; once one closes, a new one is
/// served. A reload that raises the bound takes effect at the next accept.
#[tokio::test(flavor = "multi_thread")]
async fn overload_max_connections_bounds_every_listener_together() {
    let up = Upstream::echo("a").await;
    let cfg = |max: usize| {
        format!(
            r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
overload: {{ max_connections: {max} }}
listeners:
  - {{ name: one, address: "127.0.0.1:0" }}
  - {{ name: two, address: "127.0.0.1:0" }}
routes: [ {{ name: r, cluster: app }} ]
clusters: [ {{ name: app, endpoints: ["{}"] }} ]
"#,
            up.addr
        )
    };
    let sift = Sift::start(&cfg(2));
    let (one, two) = (sift.listeners["one"], sift.listeners["two"]);
    let open = |addr: std::net::SocketAddr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 12];
        s.read_exact(&mut b).await.map(|_| (s, b))
    };
    let refused = |addr: std::net::SocketAddr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut b = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut b)).await;
        matches!(n, Ok(Ok(0)) | Ok(Err(_)))
    };
    let (a, status) = open(one).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    let (b, status) = open(two).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    assert!(refused(one).await, "a third connection on `one` is served");
    assert!(refused(two).await, "a third connection on `two` is served");
    for l in ["one", "two"] {
        let name = format!(r#"sift_listener_global_overflow_total{{listener="{l}"}}"#);
        assert_eq!(sift.metric(&name).await, Some(1.0), "{l}");
    }
    // One closes: the next is served.
    drop(a);
    assert!(
        eventually(Duration::from_secs(3), || async {
            open(two).await.is_ok_and(|(_, s)| &s == b"HTTP/1.1 200")
        })
        .await
    );
    // A reload to 3 lets a third stay open beside the two.
    std::fs::write(&sift.config_path, cfg(3)).unwrap();
    assert_eq!(post_text(&sift.admin_url("/reload")).await.0, 200);
    let (c, _) = open(one).await.unwrap();
    let (d, status) = open(two).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    assert!(refused(one).await);
    drop((b, c, d));
}

/// `sift check` on a good config says what the held-body bound came to:
/// the size given, `no limit` for 0, and `auto` resolved on this machine.
#[test]
fn check_reports_the_held_body_bound() {
    let dir = TempDir::new();
    let path = dir.path("ok.yaml");
    let out = |overload: &str| {
        std::fs::write(
            &path,
            format!(
                "{overload}\nlisteners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nroutes: [{{ name: r, cluster: c }}]\nclusters: [{{ name: c, endpoints: [\"127.0.0.1:1\"] }}]\n"
            ),
        )
        .unwrap();
        let o = std::process::Command::new(sift_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run sift");
        assert_eq!(o.status.code(), Some(0));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let s = out("overload: { max_buffered_bytes: 256MiB }");
    assert!(
        s.contains("request bodies held in memory: 256.0 MiB"),
        "{s}"
    );
    let s = out("overload: { max_buffered_bytes: 0 }");
    assert!(s.contains("request bodies held in memory: no limit"), "{s}");
    let auto = sift::budget::auto_limit() as f64 / 1048576.0;
    let s = out("");
    assert!(
        s.contains(&format!("request bodies held in memory: {auto:.1} MiB")),
        "{s}"
    );
}

/// Access-log lines in their own file (`log.access_log_path`), as nginx's
/// `access_log` and Envoy's file access log write them: the other lines stay
/// on stdout; after logrotate moves the file, SIGUSR1 (nginx's `reopen`) or
/// `POST /reopen_logs` (Envoy's) opens a new one at the path; a reload may
/// name another path (opened before the config is published: one that
/// cannot be opened rejects the reload), but moving the lines between stdout
/// and a file needs a restart.
#[tokio::test(flavor = "multi_thread")]
async fn access_log_file_is_reopened_after_rotation_and_moved_by_reload() {
    let up = Upstream::echo("app").await;
    let logs = TempDir::new();
    let main = logs.path("access.log");
    let with_path = |p: &std::path::Path| {
        simple_config(up.addr, "").replace(
            "log: { format: json, level: info }",
            &format!(
                "log: {{ format: json, level: info, access_log_path: \"{}\" }}\nreload: {{ watch: false }}",
                p.display()
            ),
        )
    };
    let sift = Sift::start(&with_path(&main));
    let get = |path: &'static str| {
        let url = sift.url(path);
        async move {
            let r = send(Request::get(url).body(body::empty()).unwrap()).await;
            assert_eq!(r.status(), 200, "{path}");
        }
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let has = |p: std::path::PathBuf, needle: &'static str| async move {
        eventually(Duration::from_secs(5), || {
            let p = p.clone();
            async move { std::fs::read_to_string(&p).is_ok_and(|t| t.contains(needle)) }
        })
        .await
    };
    get("/one").await;
    assert!(
        has(main.clone(), "\"path\":\"/one\"").await,
        "{}",
        read(&main)
    );
    let line = read(&main);
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["target"], "sift::access", "{line}");
    assert_eq!(v["status"], 200, "{line}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&main).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let stdout = sift.log_lines().join("\n");
    assert!(
        stdout.contains("sift ready") && !stdout.contains("sift::access"),
        "only the other lines on stdout: {stdout}"
    );

    // logrotate: move the file; lines keep going to the moved file until
    // SIGUSR1, then to a new file at the path.
    let rotated = logs.path("access.log.1");
    std::fs::rename(&main, &rotated).unwrap();
    get("/two").await;
    assert!(has(rotated.clone(), "\"path\":\"/two\"").await);
    sift.signal("USR1");
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.log_lines()
                .iter()
                .any(|l| l.contains("access log reopened") && l.contains("sigusr1"))
        })
        .await
    );
    get("/three").await;
    assert!(has(main.clone(), "\"path\":\"/three\"").await);
    assert!(!read(&main).contains("/two") && !read(&rotated).contains("/three"));

    // The same by the admin API.
    std::fs::rename(&main, logs.path("access.log.2")).unwrap();
    let (status, body) = post_text(&sift.admin_url("/reopen_logs")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&*main.to_string_lossy()), "{body}");
    get("/four").await;
    assert!(has(main.clone(), "\"path\":\"/four\"").await);

    // A reload moves the lines to another file.
    let other = logs.path("other.log");
    sift.write_config(&with_path(&other));
    let (status, body) = post_text(&sift.admin_url("/reload")).await;
    assert_eq!(status, 200, "{body}");
    get("/five").await;
    assert!(has(other.clone(), "\"path\":\"/five\"").await);
    assert!(!read(&main).contains("/five"));

    // Rejected, the old file still written: a directory that does not
    // exist, a file that cannot be opened, and back to stdout.
    let missing = logs.path("no-such-dir/access.log");
    let unopenable = std::path::PathBuf::from("/proc/sift-access.log");
    for (cfg, says) in [
        (with_path(&missing), "does not exist"),
        (with_path(&unopenable), "cannot open the access log"),
        (simple_config(up.addr, ""), "needs a restart"),
    ] {
        sift.write_config(&cfg);
        let (status, body) = post_text(&sift.admin_url("/reload")).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("log.access_log_path") && body.contains(says),
            "{says}: {body}"
        );
    }
    get("/six").await;
    assert!(has(other.clone(), "\"path\":\"/six\"").await);

    // At start, a directory that does not exist is a config error.
    let path = logs.path("bad.yaml");
    std::fs::write(&path, with_path(&missing)).unwrap();
    let (code, err) = sift_with_config("check", &path);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("log.access_log_path") && err.contains("does not exist"),
        "{err}"
    );
}

/// Admin writes (reload, shutdown, canary weights, learning, purges) are
/// taken only from the peers `admin.write_from` names, loopback by
/// default (as linkerd2-proxy takes /shutdown only from localhost): the
/// chart opens the admin port to the pod network for probes and scrapes,
/// and any pod there could otherwise stop sift. GETs stay open. Here the
/// list leaves out loopback, so this test's own requests are refused; a
/// reload (by signal) back to the default takes them again.
#[tokio::test(flavor = "multi_thread")]
async fn admin_writes_are_taken_only_from_write_from() {
    let up = Upstream::echo("app").await;
    let base = simple_config(up.addr, "").replace(
        "admin: { address: \"127.0.0.1:0\" }",
        "admin: { address: \"127.0.0.1:0\", write_from: [10.0.0.0/8, \"2001:db8::/32\"] }",
    );
    let cfg = format!("{base}reload: {{ watch: false }}\n");
    let sift = Sift::start(&cfg);
    for path in [
        "/reload",
        "/quitquitquit",
        "/healthcheck/fail",
        "/cache/purge",
    ] {
        let (status, body) = post_text(&sift.admin_url(path)).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains("admin.write_from") && body.contains("127.0.0.1"),
            "{body}"
        );
    }
    assert_eq!(
        get_text(&sift.admin_url("/readyz")).await.0,
        200,
        "still serving"
    );
    assert_eq!(get_text(&sift.admin_url("/config")).await.0, 200);
    assert_eq!(get_text(&sift.url("/")).await.0, 200);
    assert!(
        sift.log_lines()
            .iter()
            .any(|l| l.contains("admin write refused") && l.contains("/quitquitquit"))
    );
    // The default (loopback) by a reload: hot.
    sift.write_config(&format!(
        "{}reload: {{ watch: false }}\n",
        simple_config(up.addr, "")
    ));
    sift.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            post_text(&sift.admin_url("/healthcheck/fail")).await.0 == 200
        })
        .await
    );
    assert_eq!(get_text(&sift.admin_url("/readyz")).await.0, 503);
    // A range that is not one is a config error.
    let path = sift.dir.path("bad.yaml");
    std::fs::write(&path, base.replace("10.0.0.0/8", "10.0.0.1/8")).unwrap();
    let (code, err) = sift_with_config("check", &path);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("admin.write_from[0]") && err.contains("bits set past its prefix"),
        "{err}"
    );
}

/// `${NAME}` in config values (a Kubernetes Secret given to the pod as an
/// environment variable need not be written into the ConfigMap): the app
/// gets the header value from the environment, `${NAME:-default}` gives
/// the default, `$${` a literal `${`, and `/config` redacts the value of
/// a secret-looking header as it redacts any.
#[tokio::test(flavor = "multi_thread")]
async fn environment_variables_reach_the_request_path() {
    let up = Upstream::echo("app").await;
    let cfg = simple_config(
        up.addr,
        "    request_headers: { set: { x-api-key: \"${SIFT_T_KEY}\", x-tenant: \"${SIFT_T_TENANT:-acme}\", x-literal: \"$${SIFT_T_KEY}\" } }\n",
    );
    let dir = TempDir::new();
    let path = dir.path("sift.yaml");
    std::fs::write(&path, &cfg).unwrap();
    let sift = Sift::start_env(
        dir,
        path,
        &[],
        &[("SIFT_T_KEY", std::ffi::OsStr::new("k-123"))],
    )
    .expect("sift starts");
    let r = send(Request::get(sift.url("/")).body(body::empty()).unwrap()).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["headers"]["x-api-key"][0], "k-123", "{v}");
    assert_eq!(v["headers"]["x-tenant"][0], "acme", "{v}");
    assert_eq!(v["headers"]["x-literal"][0], "${SIFT_T_KEY}", "{v}");
    let (_, config) = get_text(&sift.admin_url("/config")).await;
    assert!(!config.contains("k-123"), "{config}");
    assert!(config.contains("acme"), "{config}");
}
