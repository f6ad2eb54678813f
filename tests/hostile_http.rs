//! Hostile HTTP through a running sift: well-formed requests of every kind
//! the proxy handles (HTTP/1.0 and 1.1, chunked, gzip and multipart bodies
//! through the spam filter in annotate and block mode, an upgrade, an
//! HTTP/2 prior-knowledge connection, forwarded and tracing headers, rate
//! limit keys, a canary split), mutated at random and sent on raw sockets.
//! sift must answer or close, keep serving well-formed requests, and never
//! panic: a panic in a connection task would not kill the process, only
//! drop that client silently, so its stderr is read at the end.

mod support;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{Sift, Upstream, hostile_iters, hostile_rng, mutate};

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b": ",
    b":",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"\xc3(",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Content-Encoding: gzip\r\n",
    b"Content-Encoding: br, gzip\r\n",
    b"Content-Encoding: deflate\r\n",
    b"Content-Type: multipart/form-data; boundary=\r\n",
    b"Content-Type: application/json; charset=koi8-r\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Host: \r\n",
    b"Host: a:b:c\r\n",
    b"X-Forwarded-For: , ,::ffff:1.2.3.4,999.1.1.1,[::1]:80\r\n",
    b"x-tenant: \xff\xfe\r\n",
    b"traceparent: 00-zz-00-01\r\n",
    b"x-request-id: \r\n",
    b"x-sift-canary: yes\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: upgrade, close\r\n",
    b"Upgrade: h2c\r\n",
    b"ffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b"/../%2e%2e/%00",
    b"?",
    b"#",
    b"*",
    b"HTTP/9.9",
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    b"\x00\x00\x10\x01\x05\x00\x00\x00\x01",
];

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn seeds() -> Vec<Vec<u8>> {
    let spam = "URGENT! You have won a 1 week FREE membership in our 100,000 prize \
                Jackpot! Txt the word CLAIM to 81010 http://bit.ly/x";
    let json = format!(r#"{{"message": "{spam}", "tags": ["a", {{"b": "c"}}]}}"#);
    let gz = gzip(spam.as_bytes());
    let mut seeds = vec![
        b"GET /?a=b&c=%zz HTTP/1.1\r\nHost: example.com\r\nx-tenant: gold\r\n\
          X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\
          traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
          x-request-id: abc\r\nx-sift-spam-score: 0\r\n\r\n"
            .to_vec(),
        format!(
            "POST /spam HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{json}",
            json.len()
        )
        .into_bytes(),
        format!(
            "POST /block/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\r\n\
             {:x}\r\nmessage={}\r\n0\r\n\r\n",
            spam.len() + 8,
            spam.replace(' ', "+")
        )
        .into_bytes(),
        b"POST /spam HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=b\r\n\
          Content-Length: 120\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"m\"\r\n\
          Content-Transfer-Encoding: quoted-printable\r\n\r\nWin =C2=A3100 now\r\n--b--\r\n"
            .to_vec(),
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec(),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        // HTTP/2 prior knowledge: preface, empty SETTINGS, then a
        // HEADERS frame (stream 1, END_STREAM | END_HEADERS) of indexed
        // fields: GET, http, /, and a literal :authority.
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            &[0, 0, 0, 4, 0, 0, 0, 0, 0],
            &[
                0, 0, 6, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41, 0x01, b'a',
            ],
        ]
        .concat(),
    ];
    let mut gz_req = format!(
        "POST /block HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n\
         Content-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    gz_req.extend_from_slice(&gz);
    seeds.push(gz_req);
    // Ranges answered from the cache (the plain GET stores /r).
    seeds.push(b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n".to_vec());
    seeds.push(b"GET /r HTTP/1.1\r\nHost: a\r\nRange: bytes=2-5\r\n\r\n".to_vec());
    seeds.push(
        b"GET /r HTTP/1.1\r\nHost: a\r\nRange: bytes=2-5\r\nIf-Range: \"x\"\r\n\r\n".to_vec(),
    );
    seeds.push(b"GET /r HTTP/1.1\r\nHost: a\r\nRange: bytes=-3, 4-\r\n\r\n".to_vec());
    seeds
}

fn config(up: std::net::SocketAddr) -> String {
    format!(
        r#"log: {{ format: json, level: info, access_log: false }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    forwarded: {{ x_forwarded_for: append, trusted_hops: 1 }}
    limits: {{ header_read_timeout: 2s, idle_timeout: 5s }}
filters:
  - name: spam
    kind: spam
    max_inspect_bytes: 16KiB
    max_decompressed_bytes: 64KiB
routes:
  - name: spam
    match: {{ path: {{ prefix: /spam }} }}
    cluster: app
    filters: [ {{ filter: spam, mode: annotate }} ]
  - name: block
    match: {{ path: {{ prefix: /block }} }}
    cluster: app
    max_request_body: 64KiB
    filters: [ {{ filter: spam, mode: block }} ]
  - name: default
    clusters:
      - {{ name: app, weight: 90 }}
      - {{ name: canary, weight: 10 }}
    rate_limits:
      - {{ name: t, requests_per_unit: 1000000, unit: second, key: [header:x-tenant, client_ip] }}
    cache: {{ default_ttl: 60s, max_bytes: 1MiB, key_headers: [x-tenant] }}
clusters:
  - name: app
    endpoints: ["{up}"]
  - name: canary
    endpoints: ["{up}"]
"#
    )
}

/// Send `req` on a fresh connection and return the first bytes sift
/// answers within `wait` (empty if none). The write side stays open, as a
/// client waiting for its answer keeps it (sift, like nginx and Envoy,
/// drops a request whose client half-closed before the response).
async fn raw(addr: std::net::SocketAddr, req: Vec<u8>, wait: Duration) -> Vec<u8> {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return Vec::new();
    };
    let _ = s.write_all(&req).await;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(n)) => {
            buf.truncate(n);
            buf
        }
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_panic_the_proxy() {
    let up = Upstream::echo("app").await;
    let mut sift = Sift::start(&config(up.addr));
    // Drain stderr as it comes (a full pipe would block sift).
    let err = Arc::new(Mutex::new(String::new()));
    let mut stderr = sift.child.stderr.take().expect("piped stderr");
    let drain = {
        let err = err.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            err.lock().unwrap().push_str(&s);
        })
    };
    let addr = sift.addr();
    let seeds = seeds();
    // Every seed as it is: sift answers each with a status line.
    for (k, s) in seeds.iter().enumerate() {
        let out = raw(addr, s.clone(), Duration::from_secs(5)).await;
        if k == 6 {
            // HTTP/2: a SETTINGS frame back (type 4) at least.
            assert!(out.len() >= 9 && out[3] == 4, "seed {k}: {out:?}");
        } else {
            assert!(
                out.starts_with(b"HTTP/1."),
                "seed {k}: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }
    let n = hostile_iters(480);
    let mut rng = hostile_rng(0x5eed_0006);
    let mut answered = 0usize;
    // 16 connections at a time; a mutated request that is incomplete gets
    // no answer until sift's header or idle timeout, so each waits 300 ms.
    for batch in 0..n / 16 {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let seed = &seeds[rng.below(seeds.len())];
                let req = mutate(&mut rng, seed, TOKENS, 6, 1 << 20);
                tokio::spawn(raw(addr, req, Duration::from_millis(300)))
            })
            .collect();
        for t in tasks {
            if !t.await.unwrap().is_empty() {
                answered += 1;
            }
        }
        if batch % 6 == 5 {
            let (status, _) = support::get_text(&sift.url("/")).await;
            assert_eq!(status, 200, "after batch {batch}: a well-formed GET failed");
        }
    }
    let (status, _) = support::get_text(&sift.url("/")).await;
    assert_eq!(status, 200, "a well-formed GET failed at the end");
    assert!(sift.child.try_wait().unwrap().is_none(), "sift exited");
    eprintln!("{answered} of {n} mutated requests got bytes back");
    sift.signal("TERM");
    sift.wait_exit(Duration::from_secs(10));
    drain.join().unwrap();
    let err = err.lock().unwrap();
    assert!(
        !err.contains("panicked"),
        "sift panicked on hostile input:\n{err}"
    );
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client that opens streams and
/// cancels them at once, as fast as it can, must not make sift burn its
/// CPU or flood the upstream with requests nobody waits for. sift's HTTP/2
/// server (the `h2` crate under hyper) counts streams the client resets
/// and ends the connection with GOAWAY ENHANCE_YOUR_CALM; the upstream
/// sees at most a few of the cancelled requests, and sift serves the next
/// client as usual.
#[tokio::test(flavor = "multi_thread")]
async fn http2_rapid_reset_ends_the_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let up = Upstream::start(move |_req: http::Request<hyper::body::Incoming>| {
        let seen = s2.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            support::text_response(200, "ok")
        }
    })
    .await;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [ {{ name: main, address: "127.0.0.1:0" }} ]
routes: [ {{ name: r, cluster: app }} ]
clusters: [ {{ name: app, endpoints: ["{}"] }} ]
"#,
        up.addr
    ));
    let tcp = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    const TRIES: usize = 100_000;
    let mut sent = 0;
    let mut err = None;
    for _ in 0..TRIES {
        let req = http::Request::get(format!("http://{}/x", sift.addr()))
            .body(())
            .unwrap();
        let ready = match client.ready().await {
            Ok(c) => c,
            Err(e) => {
                err = Some(e);
                break;
            }
        };
        client = ready;
        match client.send_request(req, true) {
            // Dropping the response future resets the stream (CANCEL).
            Ok((resp, _)) => {
                drop(resp);
                sent += 1;
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("sift let 100,000 streams be opened and reset");
    // The client sees the GOAWAY, or (when its next write comes first)
    // the connection sift closed after it.
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "{err} after {sent} streams"
    );
    // sift ended it as a protocol error (its side of the GOAWAY).
    let errors = r#"sift_downstream_protocol_errors_total{listener="main"}"#;
    assert!(
        support::eventually(Duration::from_secs(5), || async {
            sift.metric(errors).await == Some(1.0)
        })
        .await,
        "{:?}",
        sift.metric(errors).await
    );
    assert!(sent < TRIES / 10, "{sent} streams before the GOAWAY");
    let conn = tokio::time::timeout(Duration::from_secs(5), conn_task)
        .await
        .expect("the connection ends")
        .unwrap();
    assert!(conn.is_err(), "{conn:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let upstream = seen.load(Ordering::SeqCst);
    eprintln!("connection ended after {sent} streams; {upstream} reached the upstream");
    assert!(
        upstream * 100 < sent,
        "{upstream} of {sent} reached the upstream"
    );
    // The next client is served.
    let r = support::send(
        http::Request::get(sift.url("/after"))
            .body(sift::body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
}

/// HTTP/2 CONTINUATION flood (the 2024 class of CVE-2024-27316): a client
/// starts a header block and never ends it, sending CONTINUATION frames
/// forever. sift must not keep decoding (or holding) them: the header
/// list passes the listener's limit (twice `max_header_bytes`) within a
/// few frames, and the connection is ended long before the client has
/// sent 64 MiB; sift serves the next client as usual.
#[tokio::test(flavor = "multi_thread")]
async fn http2_continuation_flood_ends_the_connection() {
    let up = Upstream::echo("app").await;
    let sift = Sift::start(&format!(
        r#"log: {{ format: json, level: info }}
admin: {{ address: "127.0.0.1:0" }}
listeners: [ {{ name: main, address: "127.0.0.1:0", protocol: h2 }} ]
routes: [ {{ name: r, cluster: app }} ]
clusters: [ {{ name: app, endpoints: ["{}"] }} ]
"#,
        up.addr
    ));
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let tcp = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    // Frame types the server sends back, read until the connection ends.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                seen.push(buf[3]);
                buf.drain(..9 + len);
            }
        }
        seen
    });
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    // HEADERS without END_HEADERS: GET http://a/ (HPACK static entries
    // and a literal :authority), END_STREAM.
    out.extend(frame(0x1, 0x1, 1, b"\x82\x86\x84\x01\x01a"));
    wr.write_all(&out).await.unwrap();
    // Each CONTINUATION: 16 KiB of literal headers `a: b` (never indexed).
    let block: Vec<u8> = b"\x10\x01a\x01b".repeat(16384 / 5);
    let cont = frame(0x9, 0, 1, &block);
    let mut written = 0usize;
    let cap = 64 << 20;
    while written < cap {
        match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&cont)).await {
            Ok(Ok(())) => written += cont.len(),
            Ok(Err(_)) => break,
            Err(_) => panic!("sift stopped reading but kept the connection open"),
        }
    }
    let seen = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the connection ends")
        .unwrap();
    assert!(written < cap, "sift read 64 MiB of CONTINUATION frames");
    assert!(seen.contains(&0x7), "no GOAWAY; frames seen: {seen:?}");
    eprintln!("connection ended after {written} bytes of CONTINUATION frames; frames {seen:?}");
    // The next client is served.
    let tcp = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/after", sift.addr()))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
}
