//! Binary upgrades: a new sift started with `--upgrade` takes the running
//! one's listening sockets over its `upgrade.socket`, the old one drains and
//! exits. Real processes, real sockets on 127.0.0.1, a real upstream.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A config whose answers name `tag` (`x-proc`), upgrading over `socket`.
fn config(
    upstream: std::net::SocketAddr,
    socket: &std::path::Path,
    tag: &str,
    extra: &str,
) -> String {
    format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
upgrade: {{ socket: "{}" }}
shutdown: {{ drain_timeout: 10s }}
listeners:
  - {{ name: main, address: "127.0.0.1:0" }}
{extra}routes:
  - name: app
    response_headers: {{ set: {{ x-proc: "{tag}" }} }}
    cluster: app
clusters:
  - {{ name: app, endpoints: ["{upstream}"] }}
"#,
        socket.display()
    )
}

fn start(dir: &TempDir, yaml: &str, args: &[&str]) -> Result<Sift, String> {
    let own = TempDir::new();
    let path = own.path("sift.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let _ = dir;
    Sift::start_with(own, path, args)
}

/// One request on a new connection: the status and the `x-proc` header.
async fn one_request(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))?;
    let proc = text
        .lines()
        .find_map(|l| l.strip_prefix("x-proc: "))
        .unwrap_or("-")
        .to_string();
    Ok((status, proc))
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    by_new: AtomicUsize,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_refuses_and_fails_nothing() {
    let up = Upstream::start(|req: http::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        text_response(200, "ok")
    })
    .await;
    let shared = TempDir::new();
    let socket = shared.path("up.sock");
    let mut old = start(&shared, &config(up.addr, &socket, "old", ""), &[]).unwrap();
    let addr = old.addr();

    // New connections all the time, and a keep-alive client.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match one_request(addr, "/").await {
                    Ok((200, proc)) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if proc == "new" {
                            tally.by_new.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok((s, _)) => tally.failed.lock().unwrap().push(format!("status {s}")),
                    Err(e) => tally.failed.lock().unwrap().push(e),
                }
            }
        }));
    }
    let keepalive_ok = Arc::new(AtomicUsize::new(0));
    {
        let (stop, tally, n) = (stop.clone(), tally.clone(), keepalive_ok.clone());
        tasks.push(tokio::spawn(async move {
            let client = http1_client();
            while !stop.load(Ordering::Relaxed) {
                let r = client.get(format!("http://{addr}/").parse().unwrap()).await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => tally
                        .failed
                        .lock()
                        .unwrap()
                        .push(format!("keep-alive status {}", r.status())),
                    Err(e) => tally
                        .failed
                        .lock()
                        .unwrap()
                        .push(format!("keep-alive: {e:?}")),
                }
            }
        }));
    }
    // A request in flight on the old process when it hands over.
    let slow = tokio::spawn(one_request(addr, "/slow"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = tally.ok.load(Ordering::Relaxed);
    assert!(before > 0, "no load before the upgrade");

    let new = start(
        &shared,
        &config(up.addr, &socket, "new", ""),
        &["--upgrade"],
    )
    .unwrap();
    assert_eq!(new.addr(), addr, "the successor serves the same address");
    let lines = new.log_lines().join("\n");
    assert!(lines.contains("\"inherited\":true"), "{lines}");
    assert!(lines.contains("took over"), "{lines}");

    // The slow request finishes on the old process, which then exits 0.
    let slow = slow.await.unwrap();
    assert_eq!(slow, Ok((200, "old".to_string())));
    let status = old
        .wait_exit(Duration::from_secs(10))
        .expect("the old sift exits");
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = tally.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let (ok, by_new) = (
        tally.ok.load(Ordering::Relaxed),
        tally.by_new.load(Ordering::Relaxed),
    );
    assert!(
        by_new > 0 && by_new < ok,
        "{by_new} of {ok} answered by the new sift"
    );
    assert!(keepalive_ok.load(Ordering::Relaxed) > 0);
    // After the old one exited, only the new one answers, admin included.
    assert_eq!(one_request(addr, "/").await, Ok((200, "new".into())));
    assert_eq!(get_text(&new.admin_url("/readyz")).await.0, 200);
    assert_eq!(new.admin, old.admin, "the admin socket is handed over too");
    let old_lines = old.log_lines().join("\n");
    assert!(
        old_lines.contains("handed over to the successor"),
        "{old_lines}"
    );
    eprintln!(
        "upgrade under load: {ok} requests on new connections ({by_new} by the new sift), {} keep-alive, 0 failed",
        keepalive_ok.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successor_that_fails_leaves_the_old_sift_serving() {
    let up = Upstream::start(|_req| async { text_response(200, "ok") }).await;
    let shared = TempDir::new();
    let socket = shared.path("up.sock");
    let mut old = start(&shared, &config(up.addr, &socket, "old", ""), &[]).unwrap();
    // The successor needs a port that something else holds: it receives the
    // sockets, fails to bind, and exits before it takes over.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let extra = format!("  - {{ name: more, address: \"{taken}\" }}\n");
    let failed = start(
        &shared,
        &config(up.addr, &socket, "new", &extra),
        &["--upgrade"],
    );
    let err = failed.err().expect("the successor fails");
    assert!(
        err.contains("cannot bind listener \\\"more\\\"")
            || err.contains("cannot bind listener \"more\""),
        "{err}"
    );
    assert!(err.contains("--upgrade") || err.contains("in use"), "{err}");
    // The old sift serves on, and a later successor takes over.
    assert_eq!(one_request(old.addr(), "/").await, Ok((200, "old".into())));
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old sift still runs"
    );
    let lines = old.log_lines().join("\n");
    assert!(lines.contains("went away before taking over"), "{lines}");
    let new = start(
        &shared,
        &config(up.addr, &socket, "new", ""),
        &["--upgrade"],
    )
    .unwrap();
    assert!(old.wait_exit(Duration::from_secs(10)).is_some());
    assert_eq!(one_request(new.addr(), "/").await, Ok((200, "new".into())));
}

/// A listener a reload added is offered to a successor like the others:
/// the new sift takes its socket over instead of failing to bind a port
/// the old one holds; one a reload removed is not offered.
#[tokio::test(flavor = "multi_thread")]
async fn listeners_a_reload_added_are_handed_over() {
    let up = Upstream::start(|_req| async { text_response(200, "ok") }).await;
    let shared = TempDir::new();
    let socket = shared.path("up.sock");
    let gone = free_port();
    let with = |tag: &str, ports: &[(&str, u16)]| {
        let extra: String = ports
            .iter()
            .map(|(n, p)| format!("  - {{ name: {n}, address: \"127.0.0.1:{p}\" }}\n"))
            .collect();
        config(up.addr, &socket, tag, &extra)
    };
    let mut old = start(&shared, &with("old", &[("gone", gone)]), &[]).unwrap();
    assert_eq!(
        one_request(format!("127.0.0.1:{gone}").parse().unwrap(), "/").await,
        Ok((200, "old".into()))
    );
    let added = free_port();
    old.write_config(&with("old", &[("more", added)]));
    let (code, body) = post_text(&old.admin_url("/reload")).await;
    assert_eq!(code, 200, "{body}");
    let at = |p: u16| -> std::net::SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    assert_eq!(one_request(at(added), "/").await, Ok((200, "old".into())));
    // The successor's config has `more` (and not `gone`): it inherits the
    // socket, and `gone`'s port stays closed.
    let new = start(&shared, &with("new", &[("more", added)]), &["--upgrade"]).unwrap();
    assert!(old.wait_exit(Duration::from_secs(10)).is_some());
    assert_eq!(one_request(at(added), "/").await, Ok((200, "new".into())));
    assert_eq!(one_request(new.addr(), "/").await, Ok((200, "new".into())));
    let lines = new.log_lines();
    let bound = lines
        .iter()
        .find(|l| l.contains("listener bound") && l.contains("\"listener\":\"more\""));
    assert!(
        bound.is_some_and(|l| l.contains("\"inherited\":true")),
        "{lines:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(at(gone)).await.is_err(),
        "gone's port"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upgrade_socket_is_guarded_and_optional() {
    let up = Upstream::start(|_req| async { text_response(200, "ok") }).await;
    let shared = TempDir::new();
    let socket = shared.path("up.sock");
    // --upgrade with nothing to take over from: binds, as a first start.
    let first = start(
        &shared,
        &config(up.addr, &socket, "first", ""),
        &["--upgrade"],
    )
    .unwrap();
    assert!(
        first
            .log_lines()
            .join("\n")
            .contains("no sift serves the upgrade socket")
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // A second sift without --upgrade is refused with the way to do it.
    let err = start(&shared, &config(up.addr, &socket, "second", ""), &[])
        .err()
        .expect("refused");
    assert!(err.contains("another sift serves it"), "{err}");
    assert!(err.contains("--upgrade"), "{err}");
    // --upgrade without an upgrade section is a clear error.
    let plain = simple_config(up.addr, "");
    let err = start(&shared, &plain, &["--upgrade"])
        .err()
        .expect("refused");
    assert!(
        err.contains("--upgrade needs a top-level `upgrade.socket`"),
        "{err}"
    );
    // A client speaking something else gets nothing; sift serves on.
    {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut buf);
        assert!(buf.is_empty(), "{buf:?}");
    }
    assert_eq!(
        one_request(first.addr(), "/").await,
        Ok((200, "first".into()))
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            first
                .log_lines()
                .join("\n")
                .contains("upgrade not done; still serving")
        })
        .await
    );
    // SIGTERM removes the socket: a stopping sift hands nothing over.
    let mut first = first;
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(10)).is_some());
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_weights_and_a_running_rollout_survive_an_upgrade() {
    let stable = Upstream::start(|_req| async { text_response(200, "stable") }).await;
    let canary = Upstream::start(|_req| async { text_response(200, "canary") }).await;
    let shared = TempDir::new();
    let socket = shared.path("up.sock");
    let yaml = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
upgrade: {{ socket: "{}" }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
routes:
  - name: set-by-hand
    match: {{ path: {{ prefix: /hand }} }}
    clusters: [{{ name: stable, weight: 100 }}, {{ name: canary, weight: 0 }}]
    canary: {{ stable: stable, canary: canary }}
  - name: rolling
    clusters: [{{ name: stable, weight: 100 }}, {{ name: canary, weight: 0 }}]
    canary:
      stable: stable
      canary: canary
      rollout: {{ steps: [25, 50, 100], interval: 1h, min_requests: 1000000 }}
clusters:
  - {{ name: stable, endpoints: ["{}"] }}
  - {{ name: canary, endpoints: ["{}"] }}
"#,
        socket.display(),
        stable.addr,
        canary.addr
    );
    let mut old = start(&shared, &yaml, &[]).unwrap();
    let client = http1_client();
    let call = |method: http::Method, path: &str, body: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(old.admin_url(path))
            .body(full(body.to_string()))
            .unwrap();
        client.request(req)
    };
    let r = call(
        http::Method::PUT,
        "/canary/set-by-hand",
        r#"{"weights":{"stable":70,"canary":30}}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(http::Method::POST, "/canary/rolling/rollout", "")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = get_text(&old.admin_url("/canary")).await.1;
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let new = start(&shared, &yaml, &["--upgrade"]).unwrap();
    assert!(old.wait_exit(Duration::from_secs(10)).is_some());
    let after = get_text(&new.admin_url("/canary")).await.1;
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    let route = |v: &serde_json::Value, name: &str| {
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    let hand = route(&after, "set-by-hand");
    assert_eq!(hand["weights"]["canary"], 30, "{hand}");
    assert_eq!(hand["weights"]["stable"], 70, "{hand}");
    assert_eq!(hand["source"], "admin", "{hand}");
    let rolling = route(&after, "rolling");
    assert_eq!(rolling["rollout"]["state"], "running", "{rolling}");
    assert_eq!(rolling["rollout"]["weight"], 25, "{rolling}");
    assert_eq!(rolling["weights"]["canary"], 25, "{rolling}");
    // The rollout's clock went on: started at least 200 ms before the
    // upgrade, not at the successor's start.
    let was = route(&before, "rolling");
    assert_eq!(was["rollout"]["state"], "running", "{was}");
    let ago = rolling["rollout"]["started_ms_ago"].as_u64().unwrap();
    assert!(ago >= 200, "{rolling}");
    let lines = new.log_lines().join("\n");
    assert!(lines.contains("canary state taken over"), "{lines}");
}
