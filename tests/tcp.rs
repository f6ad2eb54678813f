//! `serve: tcp` listeners: bytes relayed to real TCP servers on loopback.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP server that greets with `name\n`, then echoes what it reads
/// upper-cased, and on the client's half-close sends `bye` and closes.
async fn tcp_echo(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf[..n].make_ascii_uppercase();
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

fn config(endpoints: &str, tcp_extra: &str) -> String {
    format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: db
    address: "127.0.0.1:0"
    serve: tcp
    tcp: {{ cluster: pg{tcp_extra} }}
clusters:
  - name: pg
    endpoints: [{endpoints}]
"#
    )
}

async fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

fn tcp_lines(sift: &Sift) -> Vec<serde_json::Value> {
    sift.log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "tcp")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_go_both_ways_whole_and_half_closes_pass() {
    let (up, _t) = tcp_echo("pg-1").await;
    let sift = Sift::start(&config(&format!("\"{up}\""), ""));
    let mut c = TcpStream::connect(sift.addr()).await.unwrap();
    assert_eq!(read_line(&mut c).await, "pg-1");
    // 1 MiB of every byte value, written while the answer is read.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let want: Vec<u8> = data.iter().map(u8::to_ascii_uppercase).collect();
    let (mut r, mut w) = c.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        // Half-close: the server still answers after it.
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), want.len() + 3);
    assert!(got[..want.len()] == want[..], "the bytes came back changed");
    assert_eq!(&got[want.len()..], b"bye");

    assert!(
        eventually(Duration::from_secs(5), || async {
            !tcp_lines(&sift).is_empty()
        })
        .await
    );
    let line = &tcp_lines(&sift)[0];
    assert_eq!(line["result"], "closed", "{line}");
    assert_eq!(line["bytes_received"], 1 << 20, "{line}");
    assert_eq!(line["bytes_sent"], (1 << 20) + 5 + 3, "{line}");
    assert_eq!(line["endpoint"], up.to_string(), "{line}");
    assert_eq!(line["protocol"], "tcp", "{line}");
    assert_eq!(
        sift.metric(r#"sift_tcp_connections_total{cluster="pg",listener="db",result="closed"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sift.metric(r#"sift_tcp_bytes_total{direction="received",listener="db"}"#)
            .await,
        Some(f64::from(1 << 20))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_balanced_and_failed_connects_try_another_endpoint() {
    let (a, _ta) = tcp_echo("a").await;
    let (b, _tb) = tcp_echo("b").await;
    let refusing = refused_port();
    let dead = refusing.addr.to_string();
    let sift = Sift::start(&config(
        &format!("\"{a}\", \"{dead}\", \"{b}\""),
        ", connect_attempts: 2",
    ));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..12 {
        let mut c = TcpStream::connect(sift.addr()).await.unwrap();
        *seen.entry(read_line(&mut c).await).or_default() += 1;
    }
    // Round robin over a, dead, b: every connection that met the dead
    // endpoint went on to the next one.
    assert_eq!(seen.values().sum::<usize>(), 12, "{seen:?}");
    assert!(seen["a"] >= 4 && seen["b"] >= 4, "{seen:?}");
    assert!(
        sift.metric(r#"sift_upstream_connect_errors_total{cluster="pg"}"#)
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // One attempt, only the dead endpoint: the client is closed at once,
    // and the connection is counted and logged as a connect failure.
    let sift = Sift::start(&config(&format!("\"{dead}\""), ""));
    let mut c = TcpStream::connect(sift.addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(
                r#"sift_tcp_connections_total{cluster="pg",listener="db",result="connect_failure"}"#,
            )
            .await
                == Some(1.0)
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            !tcp_lines(&sift).is_empty()
        })
        .await
    );
    let line = &tcp_lines(&sift)[0];
    assert_eq!(line["result"], "connect_failure", "{line}");
    assert!(
        line["error_detail"].as_str().unwrap().contains(&dead),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed() {
    let (up, _t) = tcp_echo("pg").await;
    let sift = Sift::start(&config(&format!("\"{up}\""), ", idle_timeout: 300ms"));
    let mut c = TcpStream::connect(sift.addr()).await.unwrap();
    assert_eq!(read_line(&mut c).await, "pg");
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"X");
    }
    // ...silence closes it.
    let t = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("closed by sift")
        .ok();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            tcp_lines(&sift)
                .first()
                .is_some_and(|l| l["result"] == "idle_timeout")
        })
        .await
    );
}

#[test]
fn tcp_listener_settings_are_checked() {
    let err = |listener: &str| {
        let cfg = format!(
            "listeners:\n  - {{ name: db, address: \"127.0.0.1:0\", {listener} }}\nclusters:\n  - {{ name: pg, endpoints: [\"127.0.0.1:5432\"] }}\n"
        );
        sift::config::load_str(&cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err("serve: tcp, tcp: { cluster: pg }").is_empty());
    assert!(err("serve: tcp").contains("needs `tcp: {cluster: NAME}`"));
    assert!(err("serve: tcp, tcp: {}").contains("needs `cluster`, `routes`, or both"));
    assert!(
        err(
            "serve: tcp, tcp: { routes: [ { server_names: [\"*.a.test\", b.test], cluster: pg } ] }"
        )
        .is_empty()
    );
    assert!(
        err("serve: tcp, tcp: { routes: [ { server_names: [\"a b\"], cluster: pg } ] }")
            .contains("is not a server name")
    );
    assert!(
        err("serve: tcp, tcp: { routes: [ { server_names: [], cluster: pg } ] }")
            .contains("needs at least one name")
    );
    assert!(
        err("serve: tcp, tcp: { routes: [ { server_names: [a.test], cluster: nope } ] }")
            .contains("tcp.routes[0].cluster")
    );
    assert!(err("serve: tcp, tcp: { cluster: nope }").contains("no cluster is named \"nope\""));
    assert!(err("tcp: { cluster: pg }").contains("only a `serve: tcp` listener"));
    assert!(
        err("serve: tcp, protocol: h2, tcp: { cluster: pg }").contains("listeners[0].protocol")
    );
    assert!(
        err("serve: tcp, tcp: { cluster: pg, connect_attempts: 9 }")
            .contains("not between 1 and 5")
    );
    assert!(
        err(
            "serve: tcp, tcp: { cluster: pg, allowed_identities: [ { exact: \"spiffe://a/b\" } ] }"
        )
        .contains("needs `tls`")
    );
}
