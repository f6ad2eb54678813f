//! Body filters end to end: a real sift process, real upstreams, the
//! shipped spam model, and real texts from the SMS Spam Collection
//! (../shared/data/spam/sms, read in place).

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sift::body;
use support::*;

/// Real SMS texts: (spam, ham), each at least `min_len` bytes.
fn sms(min_len: usize) -> (Vec<String>, Vec<String>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/spam/sms/SMSSpamCollection"
    );
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (the SMS Spam Collection is read in place)"));
    let (mut spam, mut ham) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Some((label, t)) = line.split_once('\t') else {
            continue;
        };
        if t.len() < min_len {
            continue;
        }
        match label {
            "spam" => spam.push(t.to_string()),
            "ham" => ham.push(t.to_string()),
            _ => {}
        }
    }
    (spam, ham)
}

/// A spam and a ham text the shipped model gets right with a margin.
fn clear_examples() -> (String, String) {
    let (spam, ham) = sms(80);
    let s = spam
        .into_iter()
        .find(|t| t.contains("prize") && t.contains("claim"))
        .expect("a prize-claim spam text");
    let h = ham
        .into_iter()
        .find(|t| t.contains("tomorrow") && !t.contains("free"))
        .expect("an everyday ham text");
    (s, h)
}

/// An upstream that answers with the request body, and the request headers
/// as JSON in `x-echo-headers`.
async fn mirror() -> Upstream {
    Upstream::start(|req: Request<Incoming>| async move {
        let mut headers = serde_json::Map::new();
        for (k, v) in req.headers() {
            headers.insert(
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            );
        }
        let b = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut r = http::Response::new(body::full(b));
        r.headers_mut().insert(
            "x-echo-headers",
            serde_json::Value::Object(headers)
                .to_string()
                .parse()
                .unwrap(),
        );
        r
    })
    .await
}

fn config(up: SocketAddr, filter: &str, route_filters: &str, top: &str) -> String {
    format!(
        r#"log: {{ format: json, access_log: true }}
admin: {{ address: "127.0.0.1:0" }}
reload: {{ interval: 100ms }}
{top}
listeners:
  - name: main
    address: "127.0.0.1:0"
filters:
  - name: spam
    kind: spam
{filter}
routes:
  - name: inbox
    cluster: app
    filters:
{route_filters}
clusters:
  - name: app
    endpoints: ["{up}"]
"#
    )
}

async fn post(
    sift: &Sift,
    ctype: Option<&str>,
    extra: &[(&str, &str)],
    b: impl Into<Bytes>,
) -> http::Response<Bytes> {
    let mut r = Request::post(sift.url("/submit"));
    if let Some(ct) = ctype {
        r = r.header("content-type", ct);
    }
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    send(r.body(full(b.into())).unwrap()).await
}

fn echoed(resp: &http::Response<Bytes>) -> serde_json::Value {
    let h = resp
        .headers()
        .get("x-echo-headers")
        .unwrap_or_else(|| panic!("not from the upstream: {resp:?}"));
    serde_json::from_slice(h.as_bytes()).unwrap()
}

fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not JSON: {b:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn block_mode_stops_spam_before_the_upstream() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    block: { status: 422, message: looks like spam }",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();

    let r = post(&sift, Some("text/plain"), &[], spam.clone()).await;
    assert_eq!(r.status(), 422, "{r:?}");
    assert_eq!(r.headers()["x-sift-error"], "filter-blocked");
    let v = json(r.body());
    assert_eq!(v["verdict"], "spam");
    assert_eq!(v["filter"], "spam");
    assert_eq!(v["message"], "looks like spam");
    assert!(v["score"].as_f64().unwrap() > 0.5);
    assert_eq!(
        up.requests.load(Ordering::Relaxed),
        0,
        "the upstream never saw it"
    );

    // Ham is forwarded unchanged, with the verdict for the app.
    let r = post(&sift, Some("text/plain; charset=utf-8"), &[], ham.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), ham.as_bytes(), "body forwarded unchanged");
    let h = echoed(&r);
    assert_eq!(h["x-sift-spam-verdict"], "ham");
    let score: f64 = h["x-sift-spam-score"].as_str().unwrap().parse().unwrap();
    assert!((0.0..0.5).contains(&score), "{score}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 1);

    assert_eq!(
        sift.metric(r#"sift_filter_verdicts_total{filter="spam",route="inbox",verdict="spam"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sift.metric(r#"sift_filter_verdicts_total{filter="spam",route="inbox",verdict="ham"}"#)
            .await,
        Some(1.0)
    );
    assert!(
        sift.metric(r#"sift_filter_duration_seconds_count{filter="spam"}"#)
            .await
            .unwrap()
            >= 2.0
    );
    // The access log names the verdict.
    assert!(
        eventually(Duration::from_secs(2), || async {
            sift.log_lines()
                .iter()
                .any(|l| l.contains("\"filters\":\"spam=spam("))
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn annotate_mode_adds_headers_and_clients_cannot_forge_them() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: annotate }",
        "",
    ));
    let (spam, _) = clear_examples();
    let r = post(
        &sift,
        Some("text/plain"),
        &[("x-sift-spam-verdict", "ham"), ("x-sift-spam-score", "0.0")],
        spam.clone(),
    )
    .await;
    assert_eq!(r.status(), 200, "annotate never blocks");
    assert_eq!(r.body(), spam.as_bytes());
    let h = echoed(&r);
    assert_eq!(
        h["x-sift-spam-verdict"], "spam",
        "the client's copy was replaced"
    );
    assert_ne!(h["x-sift-spam-score"], "0.0");

    // A request without a body passes untouched and uncounted.
    let r = send(Request::get(sift.url("/")).body(body::empty()).unwrap()).await;
    assert_eq!(r.status(), 200);
    assert!(echoed(&r).get("x-sift-spam-verdict").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_forwards_untouched_and_reports_in_metrics() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: shadow }",
        "",
    ));
    let (spam, _) = clear_examples();
    // A streamed (chunked) body: shadow never holds it back.
    let (tx, b) = channel_body(4);
    let req = Request::post(sift.url("/submit"))
        .header("content-type", "text/plain")
        .body(b)
        .unwrap();
    let call = tokio::spawn(send(req));
    let mut sent = Vec::new();
    for chunk in spam.as_bytes().chunks(16) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
        sent.extend_from_slice(chunk);
    }
    drop(tx);
    let r = call.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().as_ref(), &sent[..], "the body is unchanged");
    let h = echoed(&r);
    assert!(
        h.get("x-sift-spam-verdict").is_none(),
        "shadow adds no headers"
    );
    let sample = r#"sift_filter_verdicts_total{filter="spam",route="inbox",verdict="spam"}"#;
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(sample).await == Some(1.0)
        })
        .await,
        "the shadow verdict reaches the metrics"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            sift.log_lines()
                .iter()
                .any(|l| l.contains("shadow verdict"))
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_types_json_form_multipart_rfc822_and_unknown() {
    let up = mirror().await;
    let filter = "    extract: { json_pointers: [\"/message/body\"], form_fields: [comment] }";
    let sift = Sift::start(&config(
        up.addr,
        filter,
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let verdict = |r: &http::Response<Bytes>| -> String {
        if r.status() == 403 {
            return json(r.body())["verdict"].as_str().unwrap().to_string();
        }
        echoed(r)["x-sift-spam-verdict"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };

    // JSON: only the configured pointer is read.
    let doc = serde_json::json!({ "user": spam, "message": { "body": ham } });
    let r = post(&sift, Some("application/json"), &[], doc.to_string()).await;
    assert_eq!(verdict(&r), "ham", "the spam text is outside the pointer");
    let doc = serde_json::json!({ "user": ham, "message": { "body": spam } });
    let r = post(&sift, Some("application/json"), &[], doc.to_string()).await;
    assert_eq!(verdict(&r), "spam");

    // Forms: the configured field.
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let form = format!("name={}&comment={}", enc(&ham), enc(&spam));
    let r = post(&sift, Some("application/x-www-form-urlencoded"), &[], form).await;
    assert_eq!(verdict(&r), "spam");
    let form = format!("name={}&comment={}", enc(&spam), enc(&ham));
    let r = post(&sift, Some("application/x-www-form-urlencoded"), &[], form).await;
    assert_eq!(verdict(&r), "ham");

    let mp = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n--b0undary\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\n{spam}\r\n--b0undary--\r\n"
    );
    let r = post(
        &sift,
        Some("multipart/form-data; boundary=b0undary"),
        &[],
        mp,
    )
    .await;
    assert_eq!(verdict(&r), "spam");

    // message/rfc822: Subject and a base64 text part.
    let b64 = base64(spam.as_bytes());
    let mail = format!(
        "From: x@example.com\r\nSubject: hello\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n"
    );
    let r = post(&sift, Some("message/rfc822"), &[], mail).await;
    assert_eq!(verdict(&r), "spam");

    // Unknown types pass unclassified and are counted.
    let r = post(&sift, Some("image/png"), &[], spam.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(verdict(&r), "none");
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="content_type"}"#)
            .await,
        Some(1.0)
    );
    // Broken JSON: not classified (counted), still forwarded.
    let r = post(&sift, Some("application/json"), &[], "{\"message\": ").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="extract_error"}"#)
            .await,
        Some(1.0)
    );
}

/// `sift check` on `yaml` (written to `cfg`): its exit code and stderr.
fn sift_check(cfg: &std::path::Path, yaml: &str) -> (Option<i32>, String) {
    std::fs::write(cfg, yaml).unwrap();
    let out = std::process::Command::new(sift_bin())
        .args(["check", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_bodies_skip_inspect_prefix_or_reject() {
    let up = mirror().await;
    let routes = r#"      - { filter: spam, mode: block, max_inspect_bytes: 1KiB }"#;
    let (spam, ham) = clear_examples();
    // 2 KB of spam first, then 20 KB of ham.
    let long = format!(
        "{}{}",
        format!("{spam}\n").repeat(2048 / spam.len() + 1),
        format!("{ham}\n").repeat(20_000 / ham.len())
    );

    let sift = Sift::start(&config(
        up.addr,
        "    on_oversize: inspect_prefix",
        routes,
        "",
    ));
    let r = post(&sift, Some("text/plain"), &[], long.clone()).await;
    assert_eq!(r.status(), 403, "the prefix holds the spam");
    // A long ham body is forwarded whole after its prefix is inspected.
    let long_ham = format!("{ham}\n").repeat(20_000 / ham.len());
    let r = post(&sift, Some("text/plain"), &[], long_ham.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().len(), long_ham.len(), "nothing truncated");
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
    drop(sift);

    let sift = Sift::start(&config(up.addr, "    on_oversize: skip", routes, ""));
    let r = post(&sift, Some("text/plain"), &[], long.clone()).await;
    assert_eq!(r.status(), 200, "skipped, not blocked");
    assert_eq!(r.body().len(), long.len());
    assert!(echoed(&r).get("x-sift-spam-verdict").is_none());
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="oversize"}"#)
            .await,
        Some(1.0)
    );
    drop(sift);

    let sift = Sift::start(&config(up.addr, "    on_oversize: reject", routes, ""));
    let r = post(&sift, Some("text/plain"), &[], long.clone()).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-sift-error"], "inspect-too-large");
    let r = post(&sift, Some("text/plain"), &[], ham.clone()).await;
    assert_eq!(r.status(), 200, "short bodies are fine");
    drop(sift);

    // spool: 1 KiB in memory, the rest on disk; the spam filter (which
    // buffers its text) reads the first 1 KiB, as with inspect_prefix.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("filters-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sift = Sift::start(&config(
        up.addr,
        &format!(
            "    on_oversize: spool\n    spool_dir: \"{}\"",
            dir.display()
        ),
        routes,
        "",
    ));
    let r = post(&sift, Some("text/plain"), &[], long.clone()).await;
    assert_eq!(r.status(), 403, "the prefix holds the spam");
    let r = post(&sift, Some("text/plain"), &[], long_ham.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.body() == long_ham.as_bytes(),
        "forwarded whole, unchanged"
    );
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
    let spooled = sift
        .metric(r#"sift_filter_spooled_bytes_total{route="inbox"}"#)
        .await;
    assert_eq!(spooled, Some((long.len() + long_ham.len() - 2048) as f64));
    // Past the spam filter's limit nothing more is spooled: a 3 MB body
    // stops being read into the file after the first batch, and the rest
    // streams through.
    let huge = format!("{ham}\n").repeat(3_000_000 / ham.len());
    let r = post(&sift, Some("text/plain"), &[], huge.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.body() == huge.as_bytes(), "forwarded whole, unchanged");
    let more = sift
        .metric(r#"sift_filter_spooled_bytes_total{route="inbox"}"#)
        .await
        .unwrap()
        - spooled.unwrap();
    assert!(
        more < 1_000_000.0,
        "{more} bytes spooled of a {} byte body",
        huge.len()
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no file left");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A body blocked on its prefix while the client is still sending: the
/// client reads the 403 (sift drains the rest, as nginx's lingering close
/// does), not a connection reset.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_still_sending_reads_the_block_response() {
    let up = mirror().await;
    let routes = r#"      - { filter: spam, mode: block, max_inspect_bytes: 1KiB }"#;
    let (spam, ham) = clear_examples();
    let sift = Sift::start(&config(up.addr, "", routes, ""));
    for _ in 0..5 {
        let (tx, b) = channel_body(4);
        let req = Request::post(sift.url("/submit"))
            .header("content-type", "text/plain")
            .body(b)
            .unwrap();
        let call = tokio::spawn(send(req));
        let (spam, ham) = (
            Bytes::from(format!("{spam}\n").repeat(2048 / spam.len() + 1)),
            Bytes::from(format!("{ham}\n").repeat(65_536 / ham.len())),
        );
        tokio::spawn(async move {
            if tx.send(spam).await.is_err() {
                return;
            }
            // 20 MB more, far past what sift reads before answering.
            for _ in 0..320 {
                if tx.send(ham.clone()).await.is_err() {
                    return;
                }
            }
        });
        let r = call.await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["x-sift-error"], "filter-blocked");
    }
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_bodies_are_decoded_and_bombs_refused() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    max_decompressed_bytes: 1MiB",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let r = post(
        &sift,
        Some("text/plain"),
        &[("content-encoding", "gzip")],
        gz(spam.as_bytes()),
    )
    .await;
    assert_eq!(r.status(), 403, "gzip spam is read");
    let body = gz(ham.as_bytes());
    let r = post(
        &sift,
        Some("text/plain"),
        &[("content-encoding", "gzip")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().as_ref(), &body[..], "forwarded still compressed");

    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        w.write_all(spam.as_bytes()).unwrap();
    }
    let r = post(&sift, Some("text/plain"), &[("content-encoding", "br")], br).await;
    assert_eq!(r.status(), 403, "brotli spam is read");

    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(spam.as_bytes()).unwrap();
    let r = post(
        &sift,
        Some("text/plain"),
        &[("content-encoding", "deflate")],
        z.finish().unwrap(),
    )
    .await;
    assert_eq!(r.status(), 403, "deflate spam is read");

    // 64 MiB of zeros in ~64 KB: refused at the cap, not buffered.
    let bomb = gz(&vec![0u8; 64 << 20]);
    let rss_before = sift.proc_status_kb("VmHWM");
    let r = post(
        &sift,
        Some("text/plain"),
        &[("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-sift-error"], "decompression-limit");
    let grew = sift.proc_status_kb("VmHWM").saturating_sub(rss_before);
    assert!(grew < 16 * 1024, "peak RSS grew {grew} KB on a zip bomb");

    // An encoding sift cannot read passes unclassified, counted.
    let r = post(
        &sift,
        Some("text/plain"),
        &[("content-encoding", "zstd")],
        spam.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="encoding"}"#)
            .await,
        Some(1.0)
    );
}

/// Framing a client controls must not hide a body from a block filter or
/// make it score only part of it: repeated Content-Encoding lines (read
/// together, as the app reads them), conflicting Content-Type lines,
/// multi-member gzip, a transfer coding sift cannot keep, and a mail whose
/// spam part lies past the MIME limits (found by an audit, 2026-12-05).
#[tokio::test(flavor = "multi_thread")]
async fn framing_tricks_do_not_hide_a_body_from_the_filter() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    // Two Content-Encoding lines: `identity, gzip` is gzip.
    for pair in [["identity", "gzip"], ["gzip", "identity"]] {
        let r = post(
            &sift,
            Some("text/plain"),
            &[("content-encoding", pair[0]), ("content-encoding", pair[1])],
            gz(spam.as_bytes()),
        )
        .await;
        assert_eq!(r.status(), 403, "Content-Encoding lines {pair:?}");
    }
    // Two real codings in a list: not decoded, skipped and counted.
    let r = post(
        &sift,
        Some("text/plain"),
        &[("content-encoding", "gzip"), ("content-encoding", "br")],
        gz(ham.as_bytes()),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="encoding"}"#)
            .await,
        Some(1.0)
    );
    // Conflicting Content-Type lines: the app and sift could read the body
    // as different types, so the request is refused.
    let r = post(
        &sift,
        None,
        &[
            ("content-type", "image/png"),
            ("content-type", "text/plain"),
        ],
        spam.clone(),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-sift-error"], "malformed-request");
    // The same type twice is one type.
    let r = post(
        &sift,
        None,
        &[
            ("content-type", "text/plain"),
            ("content-type", "text/plain"),
        ],
        spam.clone(),
    )
    .await;
    assert_eq!(r.status(), 403);
    // Multi-member gzip (RFC 1952): the spam is in the second member.
    let mut two = gz(b"hello ");
    two.extend_from_slice(&gz(spam.as_bytes()));
    let r = post(
        &sift,
        Some("text/plain"),
        &[("content-encoding", "gzip")],
        two,
    )
    .await;
    assert_eq!(r.status(), 403, "the second gzip member is read");

    // A mail with the spam part after 70 empty parts: past the MIME part
    // limit, so it is not scored (skipped, counted), never called ham.
    let mut mail = String::from(
        "From: a@example.com\r\nSubject: hi\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n",
    );
    for _ in 0..70 {
        mail.push_str("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n");
    }
    mail.push_str(&format!(
        "--b\r\nContent-Type: text/plain\r\n\r\n{spam}\r\n--b--\r\n"
    ));
    let ham_before = sift
        .metric(r#"sift_filter_verdicts_total{filter="spam",route="inbox",verdict="ham"}"#)
        .await;
    let r = post(&sift, Some("message/rfc822"), &[], mail).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="extract_error"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sift.metric(r#"sift_filter_verdicts_total{filter="spam",route="inbox",verdict="ham"}"#)
            .await,
        ham_before,
        "not scored as ham"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            sift.log_lines()
                .iter()
                .any(|l| l.contains("spam=skipped:extract_error"))
        })
        .await,
        "the access log names the skip"
    );

    // A transfer coding sift would drop when it re-frames the body: 501.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let chunk = gz(spam.as_bytes());
    let mut req = format!(
        "POST /submit HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Transfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    req.extend_from_slice(&chunk);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    c.write_all(&req).await.unwrap();
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 501"), "{head}");
    assert!(head.contains("not-implemented"), "{head}");
}

/// `inspect_prefix` on a JSON body longer than the limit reads the strings
/// of its prefix (the document cannot be parsed whole).
#[tokio::test(flavor = "multi_thread")]
async fn a_json_prefix_is_inspected() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { json_pointers: [\"/message\"] }",
        "      - { filter: spam, mode: block, max_inspect_bytes: 4KiB }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let pad = "x".repeat(70_000);
    let r = post(
        &sift,
        Some("application/json"),
        &[],
        serde_json::json!({ "message": spam, "pad": pad }).to_string(),
    )
    .await;
    assert_eq!(r.status(), 403, "the message in the prefix is read");
    let body = serde_json::json!({ "message": ham, "pad": pad }).to_string();
    let r = post(&sift, Some("application/json"), &[], body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().len(), body.len(), "forwarded whole");
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="extract_error"}"#)
            .await
            .unwrap_or(0.0),
        0.0
    );
}

/// `on_unreadable: reject`: in block mode a body the filter cannot read is
/// refused (415 / 422), so sending what sift cannot read is no way past
/// it; the default forwards it, counted.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_bodies_can_be_refused_in_block_mode() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    on_unreadable: reject",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    for (ct, ce, body, status, kind) in [
        (
            "image/png",
            None,
            ham.clone().into_bytes(),
            415,
            "unsupported-media-type",
        ),
        (
            "text/plain",
            Some("zstd"),
            ham.clone().into_bytes(),
            415,
            "unsupported-media-type",
        ),
        (
            "text/plain",
            Some("gzip"),
            b"not gzip at all".to_vec(),
            422,
            "unclassifiable",
        ),
        (
            "application/json",
            None,
            b"{\"message\": nope}".to_vec(),
            422,
            "unclassifiable",
        ),
    ] {
        let mut h = vec![];
        if let Some(e) = ce {
            h.push(("content-encoding", e));
        }
        let r = post(&sift, Some(ct), &h, body).await;
        assert_eq!(r.status(), status, "{ct} {ce:?}");
        assert_eq!(r.headers()["x-sift-error"], kind, "{ct} {ce:?}");
    }
    // Readable bodies are unaffected.
    let r = post(&sift, Some("text/plain"), &[], ham).await;
    assert_eq!(r.status(), 200);
    let r = post(&sift, Some("text/plain"), &[], spam).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        up.requests.load(Ordering::Relaxed),
        1,
        "only the ham got through"
    );
}

/// A shadow copy that lost part of the body (here the client stops
/// mid-body) is not scored as if it were whole: skipped `incomplete`.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_shadow_copy_is_not_scored() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: shadow }",
        "",
    ));
    let (spam, _) = clear_examples();
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::net::TcpStream::connect(sift.addr()).await.unwrap();
    let head = format!(
        "POST /submit HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{spam}\r\n",
        spam.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c); // the body never ends
    let sample = r#"sift_filter_skipped_total{filter="spam",reason="incomplete"}"#;
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(sample).await == Some(1.0)
        })
        .await,
        "the cut copy is counted incomplete"
    );
    assert_eq!(
        sift.metric(r#"sift_filter_verdicts_total{filter="spam",route="inbox",verdict="spam"}"#)
            .await
            .unwrap_or(0.0),
        0.0,
        "and not scored"
    );
}

/// 24 concurrent 256 KB bodies against one filter thread with no queue:
/// some find the pool busy.
async fn flood(sift: &Sift, body: &str) -> Vec<(u16, bool)> {
    let mut calls = Vec::new();
    for _ in 0..24 {
        let url = sift.url("/submit");
        let b = body.to_string();
        calls.push(tokio::spawn(async move {
            let r = send(
                Request::post(url)
                    .header("content-type", "text/plain")
                    .body(full(b))
                    .unwrap(),
            )
            .await;
            let annotated = r.headers().get("x-echo-headers").is_some_and(|h| {
                String::from_utf8_lossy(h.as_bytes()).contains("x-sift-spam-verdict")
            });
            (r.status().as_u16(), annotated)
        }));
    }
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn saturated_pool_fails_open_or_closed() {
    let up = mirror().await;
    let (_, ham) = clear_examples();
    let body = format!("{ham}\n").repeat((256 << 10) / ham.len());
    let pool = "filter_pool: { threads: 1, queue: 0 }";
    let route = "      - { filter: spam, mode: annotate, max_inspect_bytes: 256KiB }";

    let sift = Sift::start(&config(up.addr, "    on_overload: fail_open", route, pool));
    let out = flood(&sift, &body).await;
    assert!(
        out.iter().all(|(s, _)| *s == 200),
        "fail_open forwards all: {out:?}"
    );
    let unannotated = out.iter().filter(|(_, a)| !a).count();
    let overloaded = sift
        .metric(r#"sift_filter_overload_total{filter="spam",action="fail_open"}"#)
        .await
        .unwrap_or(0.0);
    assert!(
        unannotated >= 1,
        "some requests found the pool busy: {out:?}"
    );
    assert_eq!(overloaded as usize, unannotated, "each one counted");
    drop(sift);

    let sift = Sift::start(&config(
        up.addr,
        "    on_overload: fail_closed",
        route,
        pool,
    ));
    let out = flood(&sift, &body).await;
    let refused = out.iter().filter(|(s, _)| *s == 503).count();
    assert!(refused >= 1, "{out:?}");
    assert!(
        out.iter().all(|(s, a)| *s == 503 || (*s == 200 && *a)),
        "{out:?}"
    );
    assert_eq!(
        sift.metric(r#"sift_filter_overload_total{filter="spam",action="fail_closed"}"#)
            .await,
        Some(refused as f64)
    );
}

/// sift with the spam filter in annotate mode on a copy of the shipped
/// model in its own directory; the copy's path.
fn on_a_model_copy(up: &Upstream) -> (Sift, std::path::PathBuf) {
    let dir = TempDir::new();
    let model = dir.path("spam.bin");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/filters/spam/model.bin");
    std::fs::copy(shipped, &model).unwrap();
    let yaml = config(
        up.addr,
        &format!("    model: {}", model.display()),
        "      - { filter: spam, mode: annotate }",
        "",
    );
    let cfg = dir.path("sift.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    (Sift::start_at(dir, cfg).unwrap(), model)
}

/// The verdict header the upstream sees for `text`.
async fn verdict_of(sift: &Sift, text: &str) -> String {
    let r = post(sift, Some("text/plain"), &[], text.to_string()).await;
    echoed(&r)["x-sift-spam-verdict"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn model_file_hot_swap_and_corrupt_file_rejected() {
    let up = mirror().await;
    let (sift, model) = on_a_model_copy(&up);
    let (_, ham) = clear_examples();
    let verdict = || verdict_of(&sift, &ham);
    assert_eq!(verdict().await, "ham");

    // A model whose threshold calls everything spam, swapped in by rename.
    let mut m = sift::classify::Model::load(&model).unwrap();
    m.threshold = -1e6;
    let tmp = model.with_extension("new");
    m.save(&tmp).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            verdict().await == "spam"
        })
        .await,
        "the new model serves"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            sift.metric(r#"sift_filter_model_reloads_total{filter="spam",result="success"}"#)
                .await
                == Some(1.0)
        })
        .await
    );

    // A truncated file is rejected; the last good model keeps serving.
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&tmp, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(r#"sift_filter_model_reloads_total{filter="spam",result="failure"}"#)
                .await
                == Some(1.0)
        })
        .await
    );
    assert_eq!(verdict().await, "spam", "the previous model still serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_model_or_filter_config_is_a_clear_error() {
    let dir = TempDir::new();
    let junk = dir.path("junk.bin");
    std::fs::write(&junk, b"not a model").unwrap();
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cfg = dir.path("bad.yaml");
    // `sift check` on a config with these filter and route-filter lines:
    // its exit code and stderr.
    let check = |filter: &str, route: &str| sift_check(&cfg, &config(up, filter, route, ""));

    let (code, err) = check(
        &format!("    model: {}", junk.display()),
        "      - { filter: spam }",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("filters[0].model") && err.contains("junk.bin"),
        "{err}"
    );

    let (_, err) = check("", "      - { filter: nope, mode: block }");
    assert!(err.contains("no filter is named \"nope\""), "{err}");

    // A spool directory that does not exist.
    let (code, err) = check(
        "    on_oversize: spool\n    spool_dir: /nonexistent/sift-spool",
        "      - { filter: spam }",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("filters[0].spool_dir")
            && err.contains("/nonexistent/sift-spool is not a directory"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn answer_route_replies_with_the_verdict() {
    let yaml = r#"log: { format: json }
admin: { address: "127.0.0.1:0" }
listeners:
  - name: main
    address: "127.0.0.1:0"
filters:
  - name: spam
    kind: spam
routes:
  - name: classify
    answer: spam
"#;
    let sift = Sift::start(yaml);
    let (spam, ham) = clear_examples();
    let r = post(&sift, Some("text/plain"), &[], spam).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v = json(r.body());
    assert_eq!(v["verdict"], "spam");
    assert_eq!(v["filter"], "spam");
    let r = post(&sift, Some("text/plain"), &[], ham).await;
    assert_eq!(json(r.body())["verdict"], "ham");
    let r = post(&sift, Some("image/png"), &[], "x").await;
    assert_eq!(r.status(), 415);
    let r = post(&sift, Some("text/plain"), &[], "").await;
    assert_eq!(r.status(), 422);
}

/// Learning through the admin endpoint: a model that does not know a kind
/// of message learns it from labelled examples, persists the update next to
/// the model file, and keeps it after a restart. Scored on held-out texts.
#[tokio::test(flavor = "multi_thread")]
async fn learning_from_examples_improves_held_out_and_persists() {
    let up = mirror().await;
    let dir = TempDir::new();
    let model = dir.path("base.bin");
    // The starting model: the shipped one, told nothing is spam (a model
    // that does not know this platform's spam).
    let mut m = sift::classify::Model::from_bytes(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/filters/spam/model.bin"
        ))
        .unwrap(),
    )
    .unwrap();
    m.bias -= 4.0;
    m.save(&model).unwrap();
    let yaml = config(
        up.addr,
        &format!("    model: {}", model.display()),
        "      - { filter: spam, mode: annotate }",
        "",
    );
    let cfg = dir.path("sift.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let learned_path = dir.path("base.bin.learned");
    let mut sift = Sift::start_at(dir, cfg.clone()).unwrap();

    let (spam, ham) = sms(20);
    let (train_s, test_s) = spam.split_at(150);
    let (train_h, test_h) = ham.split_at(150);
    let test: Vec<(&String, bool)> = test_s
        .iter()
        .take(150)
        .map(|t| (t, true))
        .chain(test_h.iter().take(150).map(|t| (t, false)))
        .collect();
    async fn f1(sift: &Sift, test: &[(&String, bool)]) -> f64 {
        let (mut tp, mut fp, mut fn_) = (0.0f64, 0.0f64, 0.0f64);
        for (t, spam) in test {
            let r = post(sift, Some("text/plain"), &[], (*t).clone()).await;
            let said = echoed(&r)["x-sift-spam-verdict"] == "spam";
            match (said, spam) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fn_ += 1.0,
                _ => {}
            }
        }
        2.0 * tp / (2.0 * tp + fp + fn_).max(1.0)
    }
    let before = f1(&sift, &test).await;

    let mut jsonl = String::new();
    for (t, l) in train_s
        .iter()
        .map(|t| (t, "spam"))
        .chain(train_h.iter().map(|t| (t, "ham")))
    {
        jsonl.push_str(&serde_json::json!({ "text": t, "label": l }).to_string());
        jsonl.push('\n');
    }
    let r = send(
        Request::post(sift.admin_url("/filters/spam/learn"))
            .body(full(jsonl))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let rep = json(r.body());
    assert_eq!(rep["examples"], 300);
    assert!(learned_path.exists(), "persisted next to the model");
    let after = f1(&sift, &test).await;
    assert!(
        after > before + 0.2,
        "held-out F1 {before:.3} → {after:.3} should improve"
    );

    // Bad examples are a 400 and change nothing.
    let r = send(
        Request::post(sift.admin_url("/filters/spam/learn"))
            .body(full("{\"text\": \"x\", \"label\": \"maybe\"}\n"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = send(
        Request::post(sift.admin_url("/filters/nope/learn"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 404);

    // After a restart the learned model is the one loaded.
    sift.signal("TERM");
    sift.wait_exit(Duration::from_secs(10));
    let dir2 = TempDir::new();
    let cfg2 = dir2.path("sift.yaml");
    std::fs::copy(&cfg, &cfg2).unwrap();
    let sift = Sift::start_at(dir2, cfg2).unwrap();
    let again = f1(&sift, &test).await;
    assert!((again - after).abs() < 1e-9, "restart: {after} → {again}");
    let r = get_text(&sift.admin_url("/filters")).await;
    assert!(r.1.contains("base.bin.learned"), "{}", r.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_work_over_http2_and_with_retries() {
    let up = mirror().await;
    let yaml = config(
        up.addr,
        "",
        "      - { filter: spam, mode: annotate }\n    retries: { attempts: 2 }",
        "",
    );
    let sift = Sift::start(&yaml);
    let (spam, _) = clear_examples();
    let req = Request::post(sift.url("/x"))
        .version(http::Version::HTTP_2)
        .header("content-type", "text/plain")
        .body(full(spam.clone()))
        .unwrap();
    let resp = http2_client().request(req).await.unwrap();
    let (parts, b) = resp.into_parts();
    let r = http::Response::from_parts(parts, b.collect().await.unwrap().to_bytes());
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), spam.as_bytes());
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "spam");
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH` (tests/run.sh sets it), else
/// what filters/spam/onnx/setup-runtime.sh installs from PyPI.
fn onnx_runtime() -> String {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return p.to_string_lossy().into_owned();
    }
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/filters/spam/onnx/setup-runtime.sh"
    ))
    .output()
    .expect("run setup-runtime.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn onnx_model_serves_on_the_request_path() {
    let up = mirror().await;
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/filters/spam/model.onnx");
    let yaml = config(up.addr, "", "      - { filter: spam, mode: annotate }", "").replace(
        "    kind: spam\n",
        &format!(
            "    kind: onnx\n    model: {model}\n    runtime: {}\n",
            onnx_runtime()
        ),
    );
    let sift = Sift::start(&yaml);
    let (spam, ham) = clear_examples();
    let r = post(&sift, Some("text/plain"), &[], spam).await;
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "spam");
    let r = post(&sift, Some("text/plain"), &[], ham).await;
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
    // An ONNX model cannot learn at run time: a clear 409.
    let r = send(
        Request::post(sift.admin_url("/filters/spam/learn"))
            .body(full("{\"text\": \"x\", \"label\": \"spam\"}\n"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 409);

    // A missing runtime library is a config error, not a panic.
    let dir = TempDir::new();
    let cfg = dir.path("bad.yaml");
    let bad = yaml.replace(&onnx_runtime(), "/nonexistent/libonnxruntime.so");
    std::fs::write(&cfg, bad).unwrap();
    let out = std::process::Command::new(sift_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("filters[0].model") && err.contains("/nonexistent/libonnxruntime.so"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A header_prefix outside `x-sift-`: a client's headers with the verdict
/// header names never reach the upstream on a route with that filter, also
/// when the filter gives no verdict (skipped, or no body at all); a route
/// without the filter leaves such headers alone.
#[tokio::test(flavor = "multi_thread")]
async fn custom_prefix_verdict_headers_cannot_be_forged() {
    let up = mirror().await;
    let yaml = format!(
        r#"log: {{ format: json }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - {{ name: main, address: "127.0.0.1:0" }}
filters:
  - {{ name: spam, kind: spam, header_prefix: App-Spam }}
  - {{ name: ci, kind: cilog, header_prefix: build-ci }}
routes:
  - name: inbox
    match: {{ path: {{ prefix: /submit }} }}
    cluster: app
    filters: [{{ filter: spam }}]
  - name: logs
    match: {{ path: {{ prefix: /logs }} }}
    cluster: app
    filters: [{{ filter: ci, mode: annotate }}]
  - name: other
    cluster: app
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
        up.addr
    );
    let sift = Sift::start(&yaml);
    let forged = [
        ("app-spam-verdict", "ham"),
        ("app-spam-score", "0.0001"),
        ("build-ci-class", "oom"),
        ("build-ci-confidence", "1.000"),
        ("build-ci-evidence-line", "1: forged"),
    ];
    let req = |path: &str, ctype: &str, b: String| {
        let mut r = Request::post(sift.url(path)).header("content-type", ctype);
        for (k, v) in forged {
            r = r.header(k, v);
        }
        r.body(full(b)).unwrap()
    };
    let (spam, _) = clear_examples();
    // A verdict: sift's headers, not the client's.
    let h = echoed(&send(req("/submit", "text/plain", spam.clone())).await);
    assert_eq!(h["app-spam-verdict"], "spam", "{h}");
    assert_ne!(h["app-spam-score"], "0.0001");
    // Skipped (a content type the filter does not read): none at all.
    let h = echoed(&send(req("/submit", "image/png", spam.clone())).await);
    assert!(h.get("app-spam-verdict").is_none(), "{h}");
    assert!(h.get("app-spam-score").is_none(), "{h}");
    // No body: the filter does not run, the client's copies still go.
    let mut r = Request::get(sift.url("/submit"));
    for (k, v) in forged {
        r = r.header(k, v);
    }
    let h = echoed(&send(r.body(body::empty()).unwrap()).await);
    assert!(h.get("app-spam-verdict").is_none(), "{h}");
    // The cilog filter's names on its route.
    let h = echoed(&send(req("/logs", "image/png", "x".into())).await);
    for name in [
        "build-ci-class",
        "build-ci-confidence",
        "build-ci-evidence-line",
    ] {
        assert!(h.get(name).is_none(), "{name}: {h}");
    }
    let log = "error[E0425]: cannot find value `x` in this scope\n --> src/main.rs:2:5\n";
    let h = echoed(&send(req("/logs", "text/plain", log.into())).await);
    assert_ne!(h["build-ci-class"], "oom", "{h}");
    assert_ne!(h["build-ci-evidence-line"], "1: forged", "{h}");
    // Another route: these are just the client's headers there.
    let h = echoed(&send(req("/other", "text/plain", "hi".into())).await);
    assert_eq!(h["app-spam-verdict"], "ham");
    assert_eq!(h["build-ci-class"], "oom");
}

/// `sift check` reports the filter option conflicts: a decompression cap
/// below the inspect limit, options a cilog filter ignores, two filters
/// writing the same verdict headers on a route, an unusable header_prefix,
/// a learned_model in a directory that does not exist.
#[test]
fn sift_check_reports_filter_option_conflicts() {
    let dir = TempDir::new();
    let cfg = dir.path("bad.yaml");
    let check = |filters: &str, route_filters: &str| {
        let yaml = format!(
            "listeners:\n  - {{ name: main, address: \"127.0.0.1:0\" }}\n\
             filters:\n{filters}\nroutes:\n  - name: inbox\n    cluster: app\n    filters:\n\
             {route_filters}\nclusters:\n  - {{ name: app, endpoints: [\"127.0.0.1:9\"] }}\n"
        );
        sift_check(&cfg, &yaml)
    };
    let (code, err) = check(
        "  - { name: spam, kind: spam, max_inspect_bytes: 1MiB, max_decompressed_bytes: 64KiB }",
        "      - { filter: spam }",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("filters[0].max_decompressed_bytes: filter \"spam\": max_decompressed_bytes 64KiB is smaller than its max_inspect_bytes 1MiB"),
        "{err}"
    );
    let (code, err) = check(
        "  - { name: ci, kind: cilog, threshold: 0.8, extract: { form_fields: [log] } }",
        "      - { filter: ci }",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("filters[0].threshold: option threshold has no effect on a cilog filter"),
        "{err}"
    );
    assert!(
        err.contains(
            "filters[0].extract.form_fields: option extract.form_fields has no effect on a cilog filter"
        ),
        "{err}"
    );
    let (code, err) = check(
        "  - { name: a, kind: spam }\n  - { name: b, kind: spam }",
        "      - { filter: a }\n      - { filter: b, mode: block }",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "routes[0].filters[1]: filter \"b\" writes the same verdict headers as filter \"a\""
        ),
        "{err}"
    );
    for (prefix, what) in [("\"\"", "is empty"), ("host", "\"host\" namespace")] {
        let (code, err) = check(
            &format!("  - {{ name: a, kind: spam, header_prefix: {prefix} }}"),
            "      - { filter: a }",
        );
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("filters[0].header_prefix") && err.contains(what),
            "{err}"
        );
    }
    let (code, err) = check(
        "  - { name: a, kind: spam, learned_model: /nonexistent/dir/x.bin }",
        "      - { filter: a }",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("filters[0].learned_model: the directory /nonexistent/dir of /nonexistent/dir/x.bin does not exist"),
        "{err}"
    );
    assert!(!std::path::Path::new("/nonexistent/dir").exists());
}

/// A learn whose learned_model directory is gone answers 500 with a JSON
/// error naming the path, and creates no directory.
#[tokio::test(flavor = "multi_thread")]
async fn learn_into_a_missing_directory_is_an_error() {
    let up = mirror().await;
    let dir = TempDir::new();
    let keep = dir.path("learned");
    std::fs::create_dir(&keep).unwrap();
    let learned = keep.join("spam.bin");
    let yaml = config(
        up.addr,
        &format!("    learned_model: {}", learned.display()),
        "      - { filter: spam }",
        "",
    );
    let cfg = dir.path("sift.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let sift = Sift::start_at(dir, cfg).unwrap();
    std::fs::remove_dir(&keep).unwrap();
    let r = send(
        Request::post(sift.admin_url("/filters/spam/learn"))
            .body(full(
                "{\"text\": \"win a prize now\", \"label\": \"spam\"}\n",
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 500, "{:?}", r.body());
    let v = json(r.body());
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains(&learned.display().to_string()) && e.contains("does not exist"),
        "{e}"
    );
    assert!(!keep.exists(), "no directory is created");
    // The model in use is unchanged.
    let (spam, ham) = clear_examples();
    assert_eq!(
        echoed(&post(&sift, Some("text/plain"), &[], spam).await)["x-sift-spam-verdict"],
        "spam"
    );
    assert_eq!(
        echoed(&post(&sift, Some("text/plain"), &[], ham).await)["x-sift-spam-verdict"],
        "ham"
    );
}

/// After a learn, a new configured model file is read but the learned model
/// keeps serving (learned wins): logged so and counted as
/// `shadowed_by_learned`, never as a plain success; a broken new file is a
/// failure; deleting the learned file serves the model file.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_model_file_under_a_learned_model_is_shadowed() {
    let up = mirror().await;
    let (sift, model) = on_a_model_copy(&up);
    let learned = model.with_extension("bin.learned");
    let (_, ham) = clear_examples();
    let verdict = || verdict_of(&sift, &ham);
    let r = send(
        Request::post(sift.admin_url("/filters/spam/learn"))
            .body(full(
                "{\"text\": \"Your parcel is held, pay the 1.99 fee at http://dhl-track.example/pay\", \"label\": \"spam\"}\n\
                 {\"text\": \"Build 4411 deployed to staging, see the dashboard\", \"label\": \"ham\"}\n",
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert!(learned.exists());
    assert_eq!(verdict().await, "ham");
    // Let the watcher see the files as they are now.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reloads = |result: &'static str| {
        let sift = &sift;
        async move {
            sift.metric(&format!(
                r#"sift_filter_model_reloads_total{{filter="spam",result="{result}"}}"#
            ))
            .await
            .unwrap_or(0.0)
        }
    };

    // A valid model that calls everything spam replaces the model file.
    let mut m = sift::classify::Model::load(&model).unwrap();
    m.threshold = -1e6;
    let tmp = model.with_extension("new");
    m.save(&tmp).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads("shadowed_by_learned").await == 1.0
        })
        .await,
        "counted as shadowed"
    );
    assert_eq!(reloads("success").await, 0.0, "not a plain success");
    assert_eq!(verdict().await, "ham", "the learned model keeps serving");
    assert!(
        sift.log_lines().iter().any(|l| l
            .contains("new model file read, but the learned model keeps serving")
            && l.contains("spam.bin.learned")),
        "{:#?}",
        sift.log_lines()
    );

    // A broken model file is read and rejected.
    let good = std::fs::read(&model).unwrap();
    std::fs::write(&tmp, &good[..good.len() / 2]).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads("failure").await == 1.0
        })
        .await,
        "a broken model file is a failure"
    );
    assert_eq!(verdict().await, "ham");

    // Back to a valid file, then the learned file goes: the file serves.
    std::fs::write(&tmp, &good).unwrap();
    std::fs::rename(&tmp, &model).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads("shadowed_by_learned").await == 2.0
        })
        .await
    );
    std::fs::remove_file(&learned).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            verdict().await == "spam"
        })
        .await,
        "the model file serves once the learned file is gone"
    );
    assert_eq!(reloads("success").await, 1.0);
}

/// A learn body may be gzip (`Content-Encoding: gzip`, as labelled CI logs
/// are best sent): decoded off the admin thread; broken gzip is a 400, an
/// encoding sift does not read a 415, and neither learns anything.
#[tokio::test(flavor = "multi_thread")]
async fn learn_reads_a_gzip_body() {
    let up = mirror().await;
    let dir = TempDir::new();
    let learned = dir.path("spam.learned.bin");
    let yaml = config(
        up.addr,
        &format!("    learned_model: {}", learned.display()),
        "      - { filter: spam }",
        "",
    );
    let cfg = dir.path("sift.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let sift = Sift::start_at(dir, cfg).unwrap();
    let learn = |enc: &'static str, b: Vec<u8>| {
        let url = sift.admin_url("/filters/spam/learn");
        async move {
            send(
                Request::post(url)
                    .header("content-encoding", enc)
                    .body(full(b))
                    .unwrap(),
            )
            .await
        }
    };
    let jsonl = "{\"text\": \"win a prize now\", \"label\": \"spam\"}\n\
                 {\"text\": \"see you at lunch\", \"label\": \"ham\"}\n";
    let r = learn("br", jsonl.as_bytes().to_vec()).await;
    assert_eq!(r.status(), 415, "{:?}", r.body());
    let r = learn("gzip", b"\x1f\x8b\x08\x00broken".to_vec()).await;
    assert_eq!(r.status(), 400, "{:?}", r.body());
    assert!(!learned.exists(), "nothing learned");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(jsonl.as_bytes()).unwrap();
    let r = learn("gzip", gz.finish().unwrap()).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(json(r.body())["examples"], 2);
    assert!(learned.exists());
}

/// `sift demo`'s config and the classifier lines of its "Try:" text, with
/// the demo's own echo upstreams on free ports: the spam text is labelled
/// on /comments, the phishing text blocked on /contact, the ham text
/// answered as ham, the npm log answered as `dependency`. The texts are the
/// ones the "Try:" lines send (`curl -d`, urlencoded without `=`).
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_classifies_what_its_try_lines_send() {
    let stable = sift::demo::spawn_echo("stable", "127.0.0.1:0")
        .await
        .unwrap();
    let canary = sift::demo::spawn_echo("canary", "127.0.0.1:0")
        .await
        .unwrap();
    let yaml = sift::demo::CONFIG
        .replace("format: text", "format: json")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace(sift::demo::STABLE_ADDR, &stable.to_string())
        .replace(sift::demo::CANARY_ADDR, &canary.to_string());
    let sift = Sift::start(&yaml);
    let form = |path: &str, text: &str| {
        Request::post(sift.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(text.to_string()))
            .unwrap()
    };
    let spam = "WINNER! Claim your £900 prize: call 09061701461 now";
    assert!(sift::demo::TRY.contains(spam));
    let r = send(form("/comments", spam)).await;
    assert_eq!(r.status(), 200);
    let echo = String::from_utf8_lossy(r.body()).into_owned();
    assert!(echo.contains("upstream: stable"), "{echo}");
    assert!(echo.contains("x-sift-spam-verdict: spam"), "{echo}");

    let phish = "Your account is suspended. Verify your password at http://192.0.2.7/secure";
    assert!(sift::demo::TRY.contains(phish));
    let r = send(form("/contact", phish)).await;
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["verdict"], "spam");

    let ham = "See you at lunch tomorrow?";
    assert!(sift::demo::TRY.contains(ham));
    let r = send(form("/classify/spam", ham)).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["verdict"], "ham", "{v}");

    let log = "npm ERR! 404 Not Found - GET https://registry.npmjs.org/left-pad-x\n";
    assert!(sift::demo::TRY.contains(log.trim_end()));
    let r = send(
        Request::post(sift.url("/classify/ci"))
            .header("content-type", "text/plain")
            .body(full(log))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["class"], "dependency", "{v}");
}

/// A multipart part that declares `Content-Transfer-Encoding: base64`
/// (RFC 7578 §4.7 deprecates it, and many form parsers ignore it) but
/// holds plain text: the lenient base64 decoder turned the spam into
/// bytes of noise, classified ham and forwarded, while an app that
/// ignores the header reads the spam. Text that is not base64 is read as
/// it is; real base64 is still decoded.
#[tokio::test(flavor = "multi_thread")]
async fn a_base64_label_does_not_hide_plain_text_in_a_form() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, _ham) = clear_examples();
    let part = |text: &str| {
        format!(
            "--b\r\nContent-Disposition: form-data; name=\"m\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{text}\r\n--b--\r\n"
        )
    };
    let ct = Some("multipart/form-data; boundary=b");
    let r = post(&sift, ct, &[], part(&spam)).await;
    assert_eq!(r.status(), 403, "plain text labelled base64: {r:?}");
    // Without punctuation, every character is in the base64 alphabet
    // but the spaces between words.
    let bare: String = spam
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
        .collect();
    let r = post(&sift, ct, &[], part(&bare)).await;
    assert_eq!(r.status(), 403, "bare words labelled base64: {r:?}");
    // Real base64 of the same text: decoded, blocked too.
    let b64 = base64(spam.as_bytes());
    let r = post(&sift, ct, &[], part(&b64)).await;
    assert_eq!(r.status(), 403, "base64: {r:?}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
}

/// Content-Type parameters are read as an app reads them: a quoted value
/// is one value (`boundary="x;y"` is `x;y`, not `x`), and a parameter
/// given twice (`boundary=a; boundary=b`) is refused like conflicting
/// Content-Type lines, since parsers differ on which one counts
/// (Werkzeug and python-multipart take the last; sift took the first).
/// Otherwise the filter reads one body and the app another: here, ham
/// for sift and spam for the app, forwarded in block mode.
#[tokio::test(flavor = "multi_thread")]
async fn content_type_parameters_cannot_split_what_filter_and_app_read() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let part = |b: &str, text: &str| {
        format!("--{b}\r\nContent-Disposition: form-data; name=\"m\"\r\n\r\n{text}\r\n--{b}--\r\n")
    };
    // Two boundaries: sift read the `a` parts, the app the `b` parts.
    let body = format!("{}{}", part("a", &ham), part("b", &spam));
    for ct in [
        "multipart/form-data; boundary=a; boundary=b",
        "multipart/form-data; boundary=a; BOUNDARY=\"b\"",
    ] {
        let r = post(&sift, Some(ct), &[], body.clone()).await;
        assert_eq!(r.status(), 400, "{ct}: {r:?}");
        assert_eq!(r.headers()["x-sift-error"], "malformed-request");
    }
    // A charset given twice: decoded one way by sift, another by the app.
    let r = post(
        &sift,
        Some("text/plain; charset=utf-16le; charset=utf-8"),
        &[],
        spam.clone(),
    )
    .await;
    assert_eq!(r.status(), 400, "{r:?}");
    // A quoted boundary with `;` in it: sift cut it at the `;` and stopped
    // at `--x--` inside the field, which the app reads whole.
    let body = format!(
        "--x;y\r\nContent-Disposition: form-data; name=\"m\"\r\n\r\n--x--\r\n{spam}\r\n--x;y--\r\n"
    );
    let r = post(
        &sift,
        Some("multipart/form-data; boundary=\"x;y\""),
        &[],
        body,
    )
    .await;
    assert_eq!(r.status(), 403, "{r:?}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    // One boundary, quoted or not, is read as before.
    for ct in [
        "multipart/form-data; boundary=b",
        "multipart/form-data; boundary=\"b\"; charset=utf-8",
    ] {
        let r = post(&sift, Some(ct), &[], part("b", &spam)).await;
        assert_eq!(r.status(), 403, "{ct}");
    }
}

/// `s` as UTF-16 code units, little- or big-endian.
fn utf16(s: &str, le: bool) -> Vec<u8> {
    s.encode_utf16()
        .flat_map(|u| if le { u.to_le_bytes() } else { u.to_be_bytes() })
        .collect()
}

/// Every byte of `s` percent-encoded but letters and digits.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A JSON body is read as the app's JSON parser reads it. Before, sift
/// parsed it with serde_json into a map: of a key given twice only the
/// last value was read (Go libraries such as gjson read the first), and
/// a lone surrogate escape (`\ud800`, which Python and JavaScript
/// accept), `NaN` (Python), nesting deeper than 128 levels (Go allows
/// 10,000), junk after the document (Go's `json.Decoder` reads the first
/// value) and a UTF-16 or BOM-prefixed body (Python's `json.loads(bytes)`
/// detects both) made the body "not JSON": skipped as unreadable and
/// forwarded in block mode, spam and all.
#[tokio::test(flavor = "multi_thread")]
async fn json_is_read_as_lenient_app_parsers_read_it() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { json_pointers: [\"/text\"] }",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let s = serde_json::to_string(&spam).unwrap();
    let h = serde_json::to_string(&ham).unwrap();
    let doc = format!(r#"{{"text":{s}}}"#);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a key given twice, spam first",
            format!(r#"{{"text":{s},"text":{h}}}"#).into_bytes(),
        ),
        (
            "a lone surrogate",
            format!(r#"{{"text":"\ud800 {}"}}"#, &s[1..s.len() - 1]).into_bytes(),
        ),
        ("NaN", format!(r#"{{"n":NaN,"text":{s}}}"#).into_bytes()),
        ("junk after the document", format!("{doc} x").into_bytes()),
        (
            "nested 200 levels",
            format!(
                r#"{{"text":{s},"x":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            )
            .into_bytes(),
        ),
        (
            "a UTF-8 BOM",
            [&b"\xEF\xBB\xBF"[..], doc.as_bytes()].concat(),
        ),
        ("UTF-16LE", utf16(&doc, true)),
        (
            "UTF-16BE with a BOM",
            utf16(&format!("\u{feff}{doc}"), false),
        ),
    ];
    let mut passed = Vec::new();
    for (what, body) in cases.drain(..) {
        let r = post(&sift, Some("application/json"), &[], body).await;
        if r.status() != 403 {
            passed.push(format!("{what}: {}", r.status()));
        }
    }
    assert!(passed.is_empty(), "not blocked: {passed:#?}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    // Ham in the same shapes is forwarded, unchanged.
    let body = format!(r#"{{"text":{h},"text":{h}}} "#);
    let r = post(&sift, Some("application/json"), &[], body.clone()).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.body(), body.as_bytes());
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
}

/// Text in a charset that is not ASCII-compatible is decoded before it is
/// classified. Before, `charset=utf-16le` text was read as bytes
/// (`W\0I\0N\0`), UTF-7 as its base64, and a UTF-16 form as NUL-spaced
/// letters: the model saw no word and called the spam ham, while Express
/// (`bodyParser.text()`, busboy for form parts) and Django (forms in the
/// declared charset) decode it. And a text/plain body, or one without a
/// Content-Type, that is JSON with `\u` escapes was read with its escapes,
/// while Go, Django and Starlette apps parse it as JSON whatever its type.
#[tokio::test(flavor = "multi_thread")]
async fn wide_charsets_and_json_in_plain_text_are_decoded() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    // Vowels escaped: every word is broken up for a reader of the raw
    // text. (This SMS spam, so escaped, scored 0.40, ham; most spam texts
    // are still caught escaped, by their numbers and what is left.)
    let (all_spam, _) = sms(80);
    let mob = all_spam
        .iter()
        .find(|t| t.starts_with("TheMob> Check out our newest"))
        .expect("the TheMob spam text");
    let escaped: String = mob
        .chars()
        .map(|c| match c {
            'a' | 'e' | 'i' | 'o' | 'u' | 'A' | 'E' | 'I' | 'O' | 'U' => {
                format!("\\u{:04x}", c as u32)
            }
            _ => c.to_string(),
        })
        .collect();
    let escaped = format!(r#"{{"text":"{escaped}"}}"#);
    // UTF-7: the whole text as one base64 run of UTF-16BE.
    let utf7 = format!("+{}-", base64(&utf16(&spam, false)).trim_end_matches('='));
    let part = |ct: &str, text: Vec<u8>| {
        [
            format!(
                "--b\r\nContent-Disposition: form-data; name=\"m\"\r\nContent-Type: {ct}\r\n\r\n"
            )
            .into_bytes(),
            text,
            b"\r\n--b--\r\n".to_vec(),
        ]
        .concat()
    };
    let cases: Vec<(Option<&str>, Vec<u8>)> = vec![
        (Some("text/plain; charset=utf-16le"), utf16(&spam, true)),
        (Some("text/plain; charset=UTF-16"), utf16(&spam, false)),
        (Some("text/plain"), utf16(&format!("\u{feff}{spam}"), true)),
        (Some("text/plain; charset=utf-7"), utf7.into_bytes()),
        (Some("text/plain"), escaped.clone().into_bytes()),
        (None, escaped.into_bytes()),
        (
            Some("application/x-www-form-urlencoded"),
            utf16(&format!("m={}", pct(&spam)), true),
        ),
        (
            Some("multipart/form-data; boundary=b"),
            part("text/plain; charset=utf-16le", utf16(&spam, true)),
        ),
    ];
    let mut passed = Vec::new();
    for (i, (ct, body)) in cases.into_iter().enumerate() {
        let r = post(&sift, ct, &[], body).await;
        if r.status() != 403 {
            passed.push(format!("case {i}, {ct:?}: {}", r.status()));
        }
    }
    assert!(passed.is_empty(), "not blocked: {passed:#?}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    let r = post(
        &sift,
        Some("text/plain; charset=utf-16le"),
        &[],
        utf16(&ham, true),
    )
    .await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
}

/// A form field named in `form_fields` is read under every name an app
/// reads it by. Before, only the exact name was: `msg[]=` (an array of
/// `msg` to PHP, Rails and Express), `my.msg` (PHP's `my_msg`) and
/// `a=1;msg=` (field `msg` where `;` separates fields: Python before
/// 3.9.2, Go before 1.17, Rack 1) went through unread, so unlabelled.
#[tokio::test(flavor = "multi_thread")]
async fn form_fields_are_read_under_every_name_apps_read() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { form_fields: [msg, my_msg] }",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let v = pct(&spam);
    let form = Some("application/x-www-form-urlencoded");
    let mut passed = Vec::new();
    for body in [
        format!("msg[]={v}"),
        format!("msg%5B%5D={v}"),
        format!("msg[0]={v}"),
        format!("my.msg={v}"),
        format!("my+msg={v}"),
        format!("a=1;msg={v}"),
        format!("msg={}&msg={v}", pct(&ham)),
    ] {
        let r = post(&sift, form, &[], body.clone()).await;
        if r.status() != 403 {
            passed.push(format!("{body:.30}: {}", r.status()));
        }
    }
    assert!(passed.is_empty(), "not blocked: {passed:#?}");
    let mp =
        format!("--b\r\nContent-Disposition: form-data; name=\"msg[]\"\r\n\r\n{spam}\r\n--b--\r\n");
    let r = post(&sift, Some("multipart/form-data; boundary=b"), &[], mp).await;
    assert_eq!(r.status(), 403, "{r:?}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    let r = post(&sift, form, &[], format!("msg[]={}&other={v}", pct(&ham))).await;
    assert_eq!(r.status(), 200, "{r:?}");
}

/// A multipart body is read so that every part any common form parser
/// sees, to the farthest end any of them gives it, is classified. Before,
/// sift split at `--boundary` anywhere (no parser splits in the middle of
/// a line, so the app read the rest of the field, spam included), ended
/// a part's headers at the first CRLF blank line (Werkzeug and Go end
/// them at an LF one), cut Content-Disposition at every `;` (a quoted
/// `"; name=x"` renamed the part), ignored RFC 2231 `name*=` (Go reads
/// it) and a name on a folded header line (Go joins them), took a part
/// with an empty `filename=""` for a file (Go's ReadForm keeps it as a
/// field value), and skipped boundaries over 200 bytes (Go and busboy
/// read them).
#[tokio::test(flavor = "multi_thread")]
async fn multipart_parts_are_read_as_any_form_parser_reads_them() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { form_fields: [msg] }",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let cd = "Content-Disposition: form-data";
    let long = "x".repeat(300);
    let cases: Vec<(String, String)> = vec![
        (
            "b".into(),
            format!(
                "--b\r\n{cd}; name=\"msg\"\r\n\r\n{ham} --b\r\n{cd}; name=\"x\"\r\n\r\n{spam}\r\n--b--\r\n"
            ),
        ),
        (
            "b".into(),
            format!(
                "--b\r\n{cd}; name=\"msg\"\r\n\r\n{ham}\n--b\r\n{cd}; name=\"x\"\r\n\r\n{spam}\r\n--b--\r\n"
            ),
        ),
        (
            "b".into(),
            format!(
                "--b\r\n{cd}; name=\"t\"\r\n\r\nhi\n--b\n{cd}; name=\"msg\"\n\n{spam}\r\n--b--\r\n"
            ),
        ),
        (
            "b".into(),
            format!("--b\r\n{cd}; name=\"msg\"\n\n{spam}\r\n\r\n{ham}\r\n--b--\r\n"),
        ),
        (
            "b".into(),
            format!("--b\r\n{cd}; name=\"msg\"; x=\"; name=other\"\r\n\r\n{spam}\r\n--b--\r\n"),
        ),
        (
            "b".into(),
            format!("--b\r\n{cd}; name*=utf-8''m%73g\r\n\r\n{spam}\r\n--b--\r\n"),
        ),
        (
            "b".into(),
            format!("--b\r\n{cd}; name*0=\"m\"; name*1=\"sg\"\r\n\r\n{spam}\r\n--b--\r\n"),
        ),
        (
            long.clone(),
            format!("--{long}\r\n{cd}; name=\"msg\"\r\n\r\n{spam}\r\n--{long}--\r\n"),
        ),
        (
            "b".into(),
            format!("--b\r\n{cd};\r\n name=\"msg\"\r\n\r\n{spam}\r\n--b--\r\n"),
        ),
        (
            "b".into(),
            format!(
                "--b\r\n{cd}; name=\"msg\"; filename=\"\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n{spam}\r\n--b--\r\n"
            ),
        ),
    ];
    let mut passed = Vec::new();
    for (i, (b, body)) in cases.into_iter().enumerate() {
        let ct = format!("multipart/form-data; boundary={b}");
        let r = post(&sift, Some(&ct), &[], body.clone()).await;
        if r.status() != 403 {
            passed.push(format!("case {i}: {}", r.status()));
        }
    }
    assert!(passed.is_empty(), "not blocked: {passed:#?}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    // An ordinary form with ham, and spam in a field not listed: forwarded.
    let body = format!(
        "--b\r\n{cd}; name=\"msg\"\r\n\r\n{ham}\r\n--b\r\n{cd}; name=\"other\"\r\n\r\n{spam}\r\n--b--\r\n"
    );
    let r = post(
        &sift,
        Some("multipart/form-data; boundary=b"),
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.body(), body.as_bytes());
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
}

/// A Content-Encoding that is no content coding at all (`foo`, `none`)
/// is read as identity. Before, the body was skipped (reason `encoding`)
/// and forwarded unclassified in block mode, while Flask, Django, Rails,
/// PHP and Go apps, which do not decode request bodies, read the plain
/// spam (Express answers 415 to such a body). Real codings sift does not
/// decode (`zstd`) are still skipped, or refused with `on_unreadable`.
#[tokio::test(flavor = "multi_thread")]
async fn a_made_up_content_encoding_does_not_hide_a_plain_body() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    for ce in ["foo", "none", "identity, plain"] {
        let r = post(
            &sift,
            Some("text/plain"),
            &[("content-encoding", ce)],
            spam.clone(),
        )
        .await;
        assert_eq!(r.status(), 403, "{ce}: {r:?}");
    }
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    let r = post(
        &sift,
        Some("text/plain"),
        &[("content-encoding", "foo")],
        ham.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), ham.as_bytes());
    assert_eq!(echoed(&r)["content-encoding"], "foo", "forwarded as sent");
    let r = post(
        &sift,
        Some("text/plain"),
        &[("content-encoding", "zstd")],
        spam,
    )
    .await;
    assert_eq!(
        r.status(),
        200,
        "zstd: skipped, forwarded (on_unreadable: forward)"
    );
    assert!(echoed(&r).get("x-sift-spam-verdict").is_none());
}

/// A body whose Content-Type sift did not read, or read as a form, is
/// still classified when the app can read it as JSON or text. Go
/// (`json.NewDecoder(r.Body)`) and Django (`json.loads(request.body)`)
/// apps parse JSON whatever the type says, and Rails parses
/// `text/x-json` and `application/jsonrequest` as JSON; before, such
/// bodies typed `application/octet-stream`, `text/x-json`, a form or a
/// multipart form (no part in it) were skipped or read as empty, and
/// forwarded in block mode. Any `text/*` is text (`text/html` was
/// skipped). A binary upload of another type is still skipped, unread.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_apps_read_as_json_whatever_the_type_are_read() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { form_fields: [msg] }",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let doc = format!(r#"{{"msg":{}}}"#, serde_json::to_string(&spam).unwrap());
    let mut passed = Vec::new();
    for (ct, body) in [
        ("application/octet-stream", doc.clone()),
        ("application/x-json", doc.clone()),
        ("text/x-json", doc.clone()),
        ("application/jsonrequest", doc.clone()),
        ("application/x-www-form-urlencoded", doc.clone()),
        ("multipart/form-data; boundary=b", doc.clone()),
        ("text/html; charset=utf-8", format!("<p>{spam}</p>")),
    ] {
        let r = post(&sift, Some(ct), &[], body).await;
        if r.status() != 403 {
            passed.push(format!("{ct}: {}", r.status()));
        }
    }
    assert!(passed.is_empty(), "not blocked: {passed:#?}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    // Ham as JSON of another type is forwarded, with its verdict.
    let h = format!(r#"{{"msg":{}}}"#, serde_json::to_string(&ham).unwrap());
    let r = post(&sift, Some("application/octet-stream"), &[], h).await;
    assert_eq!(r.status(), 200);
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
    // Not JSON: skipped as before, unread.
    let r = post(&sift, Some("application/octet-stream"), &[], spam).await;
    assert_eq!(r.status(), 200);
    assert!(echoed(&r).get("x-sift-spam-verdict").is_none());
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="content_type"}"#)
            .await,
        Some(1.0)
    );
}

/// `s` in EBCDIC (cp037/cp500): letters, digits, space, `+`, `=`, `.`.
fn ebcdic(s: &str) -> Vec<u8> {
    s.bytes()
        .filter_map(|c| match c {
            b'a'..=b'i' => Some(0x81 + (c - b'a')),
            b'j'..=b'r' => Some(0x91 + (c - b'j')),
            b's'..=b'z' => Some(0xA2 + (c - b's')),
            b'A'..=b'I' => Some(0xC1 + (c - b'A')),
            b'J'..=b'R' => Some(0xD1 + (c - b'J')),
            b'S'..=b'Z' => Some(0xE2 + (c - b'S')),
            b'0'..=b'9' => Some(0xF0 + (c - b'0')),
            b' ' => Some(0x40),
            b'+' => Some(0x4E),
            b'=' => Some(0x7E),
            b'.' => Some(0x4B),
            _ => None,
        })
        .collect()
}

/// A form is read in the charset its Content-Type declares, as Django
/// reads `request.POST` (the whole body, and its percent-encoded bytes,
/// decoded in any charset Python knows). Before, sift read the bytes:
/// an EBCDIC (`cp500`) or UTF-7 form, or a multipart form whose parts
/// take the body's `charset=utf-16le`, hid its field from the filter,
/// and text/plain in `cp037` was noise to it.
#[tokio::test(flavor = "multi_thread")]
async fn forms_are_read_in_their_declared_charset() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { form_fields: [msg] }",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let words = |t: &str| -> String {
        t.split_whitespace()
            .map(|w| {
                w.chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("+")
    };
    let utf7 = |t: &str| format!("+{}-", base64(&utf16(t, false)).trim_end_matches('='));
    let mp = format!(
        "--b\r\nContent-Disposition: form-data; name=\"msg\"\r\n\r\n{}\r\n--b--\r\n",
        "\u{0}"
    );
    let (head, tail) = mp.split_once('\u{0}').unwrap();
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(String, Vec<u8>)> = vec![
        (
            format!("{form}; charset=cp500"),
            ebcdic(&format!("msg={}", words(&spam))),
        ),
        (
            format!("{form}; charset=utf-7"),
            format!("msg={}", utf7(&spam)).into_bytes(),
        ),
        (
            "multipart/form-data; boundary=b; charset=utf-16le".into(),
            [head.as_bytes(), &utf16(&spam, true), tail.as_bytes()].concat(),
        ),
        (
            "text/plain; charset=cp037".into(),
            ebcdic(&words(&spam).replace('+', " ")),
        ),
    ];
    let mut passed = Vec::new();
    for (ct, body) in cases {
        let r = post(&sift, Some(&ct), &[], body).await;
        if r.status() != 403 {
            passed.push(format!("{ct}: {}", r.status()));
        }
    }
    assert!(passed.is_empty(), "not blocked: {passed:#?}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    let body = ebcdic(&format!("msg={}", words(&ham)));
    let r = post(&sift, Some(&format!("{form}; charset=cp500")), &[], body).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
}

/// A configured JSON pointer names a key as Go's encoding/json matches
/// it to a struct field: ignoring case. Before, `/text` read only a key
/// spelled `text`, so `{"TEXT": spam}` or `{"text": ham, "Text": spam}`
/// (Go keeps the last of the keys that match) was forwarded while a Go
/// app with a `json:"text"` field read the spam.
#[tokio::test(flavor = "multi_thread")]
async fn json_pointers_match_keys_as_go_does() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { json_pointers: [\"/text\"] }",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let (s, h) = (
        serde_json::to_string(&spam).unwrap(),
        serde_json::to_string(&ham).unwrap(),
    );
    let mut passed = Vec::new();
    for body in [
        format!(r#"{{"TEXT":{s}}}"#),
        format!(r#"{{"text":{h},"Text":{s}}}"#),
    ] {
        let r = post(&sift, Some("application/json"), &[], body.clone()).await;
        if r.status() != 403 {
            passed.push(format!("{body:.20}: {}", r.status()));
        }
    }
    assert!(passed.is_empty(), "not blocked: {passed:#?}");
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    let r = post(
        &sift,
        Some("application/json"),
        &[],
        format!(r#"{{"Text":{h},"other":{s}}}"#),
    )
    .await;
    assert_eq!(r.status(), 200, "spam outside the pointer: {r:?}");
}

/// A text/html body is read as a browser shows it, tags dropped and
/// entities decoded (the mail view's HTML reading). Read as raw text, a
/// spam whose vowels are character references (`W&#105;n`) was ham to
/// the model, while the page the app renders shows the words.
#[tokio::test(flavor = "multi_thread")]
async fn html_is_read_as_a_browser_shows_it() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (all_spam, _) = sms(80);
    let (_, ham) = clear_examples();
    let mut passed = Vec::new();
    for t in all_spam.iter().take(40) {
        let refs: String = t
            .chars()
            .map(|c| match c {
                'a' | 'e' | 'i' | 'o' | 'u' | 'A' | 'E' | 'I' | 'O' | 'U' => {
                    format!("&#{};", c as u32)
                }
                '<' => "&lt;".into(),
                '&' => "&amp;".into(),
                _ => c.to_string(),
            })
            .collect();
        let plain = post(&sift, Some("text/plain"), &[], t.clone()).await;
        if plain.status() != 403 {
            continue; // the model lets this one through as text anyway
        }
        let r = post(&sift, Some("text/html"), &[], format!("<p>{refs}</p>")).await;
        if r.status() != 403 {
            passed.push(format!("{t:.30}: {}", r.status()));
        }
    }
    assert!(passed.is_empty(), "not blocked: {passed:#?}");
    let r = post(&sift, Some("text/html"), &[], format!("<p>{ham}</p>")).await;
    assert_eq!(r.status(), 200, "{r:?}");
}

/// A reader sees the same words when they are written with invisible
/// characters between the letters, in fullwidth or mathematical bold
/// forms, or with Cyrillic letters that look like Latin ones; the shipped
/// model (featurizer flag `unicode`) reads the same words too, so each
/// disguise of a spam text gets exactly the plain text's score. Before the
/// flag, `f\u{200b}r\u{200b}e\u{200b}e` was one unknown token.
#[tokio::test(flavor = "multi_thread")]
async fn unicode_disguises_do_not_change_the_score() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: annotate }",
        "",
    ));
    let (spam, _) = clear_examples();
    let score = |text: String| {
        let sift = &sift;
        async move {
            let r = post(sift, Some("text/plain; charset=utf-8"), &[], text).await;
            assert_eq!(r.status(), 200);
            let h = echoed(&r);
            (
                h["x-sift-spam-score"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                h["x-sift-spam-verdict"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    };
    let plain = score(spam.clone()).await;
    assert_eq!(plain.1, "spam");
    let map = |f: &dyn Fn(char) -> String| spam.chars().map(f).collect::<String>();
    let disguises = [
        (
            "zero-width spaces",
            map(&|c| {
                if c.is_alphanumeric() {
                    format!("{c}\u{200b}")
                } else {
                    c.to_string()
                }
            }),
        ),
        (
            "soft hyphens and joiners",
            map(&|c| {
                if c.is_ascii_lowercase() {
                    format!("{c}\u{ad}\u{2060}")
                } else {
                    c.to_string()
                }
            }),
        ),
        (
            "fullwidth",
            map(&|c| match c {
                '!'..='~' => char::from_u32(c as u32 - 0x21 + 0xFF01)
                    .map(String::from)
                    .unwrap_or_default(),
                _ => c.to_string(),
            }),
        ),
        (
            "mathematical bold",
            map(&|c| {
                match c {
                    'A'..='Z' => char::from_u32(0x1D400 + (c as u32 - 'A' as u32)),
                    'a'..='z' => char::from_u32(0x1D41A + (c as u32 - 'a' as u32)),
                    '0'..='9' => char::from_u32(0x1D7CE + (c as u32 - '0' as u32)),
                    _ => Some(c),
                }
                .map(String::from)
                .unwrap_or_default()
            }),
        ),
        (
            "Cyrillic look-alikes",
            map(&|c| {
                match c {
                    'a' => 'а',
                    'e' => 'е',
                    'o' => 'о',
                    'p' => 'р',
                    'c' => 'с',
                    'A' => 'А',
                    'E' => 'Е',
                    'O' => 'О',
                    'C' => 'С',
                    c => c,
                }
                .to_string()
            }),
        ),
    ];
    for (name, text) in disguises {
        assert_ne!(text, spam, "{name}: the disguise changed nothing");
        assert_eq!(score(text).await, plain, "{name}");
    }
}

/// A body of a type the filter does not read (an image, an archive) is
/// looked at only to see whether it is JSON after all: once its first
/// bytes say no, it streams to the app unheld, whatever its size, even
/// with `on_oversize: reject` (a 413 for an upload the filter never reads
/// would break every upload route behind a text filter).
#[tokio::test(flavor = "multi_thread")]
async fn binary_uploads_of_any_size_pass_a_block_filter() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "",
        "      - { filter: spam, mode: block, max_inspect_bytes: 64KiB, on_oversize: reject }",
        "",
    ));
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend((0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    for ct in ["image/png", "application/octet-stream", "application/zip"] {
        let r = post(&sift, Some(ct), &[], png.clone()).await;
        assert_eq!(r.status(), 200, "{ct}: {r:?}");
        assert_eq!(
            r.body().len(),
            png.len(),
            "{ct}: the whole body reached the app"
        );
    }
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="content_type"}"#)
            .await,
        Some(3.0)
    );
    // JSON under such a type is still read (Go and Django parse it).
    let (spam, _) = clear_examples();
    let json = serde_json::json!({ "text": spam }).to_string();
    let r = post(&sift, Some("application/octet-stream"), &[], json).await;
    assert_eq!(r.status(), 403);
}

/// A bodiless GET of `path` (with its query).
async fn get_path(sift: &Sift, path: &str) -> http::Response<Bytes> {
    send(Request::get(sift.url(path)).body(body::empty()).unwrap()).await
}

/// `application/x-www-form-urlencoded` escaping for a query value.
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Text sent in the URL is classified too (PHP's `$_REQUEST`, Flask's
/// `request.values`, Rails' `params` give an app query fields under the
/// names of form fields): a GET without a body, a form whose query holds
/// the spam, and a body sift does not read with the spam in its query.
#[tokio::test(flavor = "multi_thread")]
async fn query_fields_are_classified_with_or_without_a_body() {
    let up = mirror().await;
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { form_fields: [comment] }",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let (spam, ham) = clear_examples();
    let get = |q: String| {
        let sift = &sift;
        async move { get_path(sift, &format!("/submit?{q}")).await }
    };
    // A GET with the spam in a listed field (also as PHP's `comment[]`):
    // blocked, the app never sees it.
    for name in ["comment", "comment%5B%5D", "comment[0]"] {
        let r = get(format!("page=2&{name}={}", query_escape(&spam))).await;
        assert_eq!(r.status(), 403, "{name}");
    }
    assert_eq!(up.requests.load(Ordering::Relaxed), 0);
    // The ham in the field: forwarded with the verdict.
    let r = get(format!("comment={}", query_escape(&ham))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
    // A query without the field, and no query: forwarded untouched, not a
    // skip (nothing was there to read).
    for q in ["page=2&sort=asc", ""] {
        let r = get(q.to_string()).await;
        assert_eq!(r.status(), 200, "{q}");
        assert!(echoed(&r).get("x-sift-spam-verdict").is_none(), "{q}");
    }
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="empty"}"#)
            .await
            .unwrap_or(0.0),
        0.0
    );
    // A ham form whose query carries the spam under the same name.
    let mut r = Request::post(sift.url(&format!("/submit?comment={}", query_escape(&spam))));
    r = r.header("content-type", "application/x-www-form-urlencoded");
    let form = format!("comment={}", query_escape(&ham));
    let r = send(r.body(full(Bytes::from(form.clone()))).unwrap()).await;
    assert_eq!(r.status(), 403, "the query's spam blocks the form");
    // The same form with a ham query passes, body unchanged.
    let mut r = Request::post(sift.url(&format!("/submit?comment={}", query_escape(&ham))));
    r = r.header("content-type", "application/x-www-form-urlencoded");
    let r = send(r.body(full(Bytes::from(form.clone()))).unwrap()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().as_ref(), form.as_bytes());
    // A body sift does not read (an image) with the spam in its query:
    // blocked on the query, the body's skip counted.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".repeat(100);
    let mut r = Request::post(sift.url(&format!("/upload?comment={}", query_escape(&spam))));
    r = r.header("content-type", "image/png");
    let r = send(r.body(full(Bytes::from(png.clone()))).unwrap()).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="content_type"}"#)
            .await,
        Some(1.0)
    );
    // A body in an encoding sift cannot decode, spam in the query:
    // blocked on the query, the body's skip counted (`encoding`); with a
    // ham query it goes on, unread as before.
    for (q, status) in [(&spam, 403), (&ham, 200)] {
        let mut r = Request::post(sift.url(&format!("/z?comment={}", query_escape(q))));
        r = r
            .header("content-type", "text/plain")
            .header("content-encoding", "zstd");
        let r = send(
            r.body(full(Bytes::from_static(b"\x28\xb5\x2f\xfd")))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), status);
    }
    assert_eq!(
        sift.metric(r#"sift_filter_skipped_total{filter="spam",reason="encoding"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(
        sift.metric(r#"sift_filter_verdicts_total{filter="spam",route="inbox",verdict="spam"}"#)
            .await,
        Some(6.0)
    );
    assert_eq!(up.requests.load(Ordering::Relaxed), 5, "the ham ones");
}

/// `query_fields: []` turns the query off; an explicit list needs no form
/// fields; `on_unreadable: reject` still refuses an unread body whose
/// query was read; shadow mode classifies a GET's query off the path.
#[tokio::test(flavor = "multi_thread")]
async fn query_fields_options_and_modes() {
    let up = mirror().await;
    let (spam, ham) = clear_examples();
    let spam_q = format!("q={}", query_escape(&spam));
    // Off: the spam in the query passes unclassified.
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { form_fields: [q], query_fields: [] }",
        "      - { filter: spam, mode: block }",
        "",
    ));
    let r = get_path(&sift, &format!("/s?{spam_q}")).await;
    assert_eq!(r.status(), 200);
    drop(sift);
    // A query field alone, in annotate mode; a PNG with a ham query under
    // `on_unreadable: reject` is refused for its body.
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { query_fields: [q] }\n    on_unreadable: reject",
        "      - { filter: spam, mode: annotate }\n      - { filter: spam2, mode: block }",
        "",
    )
    .replace(
        "routes:",
        "  - name: spam2\n    kind: spam\n    header_prefix: x-spam2\n    extract: { query_fields: [q] }\n    on_unreadable: reject\nroutes:",
    ));
    let r = get_path(&sift, &format!("/s?q={}", query_escape(&ham))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(echoed(&r)["x-sift-spam-verdict"], "ham");
    assert_eq!(echoed(&r)["x-spam2-verdict"], "ham");
    let mut r = Request::post(sift.url(&format!("/s?q={}", query_escape(&ham))));
    r = r.header("content-type", "image/png");
    let r = send(r.body(full(Bytes::from_static(b"\x89PNG\r\n"))).unwrap()).await;
    assert_eq!(r.status(), 415, "the body was not read");
    drop(sift);
    // Shadow: the GET goes through untouched, its verdict in the metrics.
    let sift = Sift::start(&config(
        up.addr,
        "    extract: { query_fields: [q] }",
        "      - { filter: spam, mode: shadow }",
        "",
    ));
    let r = get_path(&sift, &format!("/s?{spam_q}")).await;
    assert_eq!(r.status(), 200);
    assert!(echoed(&r).get("x-sift-spam-verdict").is_none());
    let sample = r#"sift_filter_verdicts_total{filter="spam",route="inbox",verdict="spam"}"#;
    assert!(
        eventually(Duration::from_secs(5), || async {
            sift.metric(sample).await == Some(1.0)
        })
        .await,
        "the shadow verdict on the query reaches the metrics"
    );
}

/// `sift run` without a config file, as a local dev proxy (Caddy's
/// `reverse-proxy --from --to`): `--listen`, `--upstream` and `--filter`
/// change the embedded dev default; a spam text reaches the app annotated
/// with the builtin model, or is refused with `--filter spam:block`; each
/// request reaches the app in its client's protocol.
#[tokio::test(flavor = "multi_thread")]
async fn sift_run_flags_make_a_dev_proxy_with_a_filter() {
    let up = Upstream::echo("app").await;
    let spam = "WINNER! Claim your £900 prize: call 09061701461 now";
    let post = |url: String| {
        Request::post(url)
            .header("content-type", "text/plain")
            .body(full(Bytes::from(spam)))
            .unwrap()
    };
    let port = up.addr.port().to_string();
    let dev = DevSift::start(&["--upstream", &port, "--filter", "spam"], &[]).await;
    let r = send(post(dev.url("/comments"))).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["headers"]["x-sift-spam-verdict"][0], "spam", "{v}");
    assert_eq!(v["version"], "HTTP/1.1", "{v}");
    // The dev default's cluster follows the client's protocol: an h2c
    // client (a gRPC tool) reaches the app over HTTP/2.
    let r = http2_client()
        .request(Request::get(dev.url("/h2")).body(body::empty()).unwrap())
        .await
        .unwrap();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["version"], "HTTP/2.0", "{v}");
    drop(dev);
    let dev = DevSift::start(
        &[
            "--upstream",
            &format!("http://{}", up.addr),
            "--filter",
            "spam:block",
        ],
        &[],
    )
    .await;
    let r = send(post(dev.url("/comments"))).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-sift-error"], "filter-blocked");
    // A bad flag is named, exit 2, nothing started.
    let out = std::process::Command::new(sift_bin())
        .args(["run", "--upstream", "http://a/b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--upstream \"http://a/b\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
