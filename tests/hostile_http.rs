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
