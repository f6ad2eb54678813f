//! Load for bench/tcp-compare.sh: a TCP echo backend and two clients, the
//! same code against every TCP proxy, loopback only, bounded in time.
//!
//!   cargo bench --bench tcp_load -- echo PORT_FILE
//!       an echo server on 127.0.0.1:0 (its port written to PORT_FILE),
//!       until killed;
//!   cargo bench --bench tcp_load -- bulk ADDR SECONDS CONNS
//!       CONNS connections each write 64 KiB chunks as fast as they go
//!       while reading the echo back; prints MiB/s echoed (each byte
//!       crossed the proxy twice);
//!   cargo bench --bench tcp_load -- rr ADDR SECONDS CONNS
//!       CONNS tasks each open a connection, write 64 bytes, read the 64
//!       echoed, and close, again and again; prints connections/s and the
//!       p50/p99 of one such exchange.
//!
//! An echo that comes back short or changed counts as an error.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo(port_file: &str) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    std::fs::write(port_file, port.to_string()).expect("write port file");
    loop {
        let Ok((mut s, _)) = tcp.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

async fn bulk(addr: String, secs: u64, conns: usize) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let s = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            let (mut r, mut w) = s.into_split();
            let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
            let writer = tokio::spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < end {
                    if w.write_all(&chunk).await.is_err() {
                        break;
                    }
                    sent += chunk.len() as u64;
                }
                let _ = w.shutdown().await;
                sent
            });
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            let mut bad = false;
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        // Bytes come back in order: the first of each read
                        // is checked against the pattern (all of them would
                        // cost the load side more than the proxy).
                        let at = got % (64 * 1024);
                        bad |= buf[0] != (at % 251) as u8;
                        got += n as u64;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            let sent = writer.await.map_err(|e| e.to_string())?;
            if bad || got != sent {
                return Err(format!("echo: sent {sent}, got {got}, changed {bad}"));
            }
            Ok::<u64, String>(got)
        }));
    }
    let start = Instant::now();
    let mut total = 0u64;
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("bulk: {e}");
            }
            Err(e) => {
                errors += 1;
                eprintln!("bulk: {e}");
            }
        }
    }
    let took = start.elapsed().as_secs_f64().max(secs as f64);
    println!(
        "bulk conns={conns} seconds={took:.2} echoed_mib={:.1} mib_per_s={:.1} errors={errors}",
        total as f64 / 1048576.0,
        total as f64 / 1048576.0 / took
    );
    if errors > 0 {
        return Err(format!("{errors} connections failed"));
    }
    Ok(())
}

async fn rr(addr: String, secs: u64, conns: usize) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..conns {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let msg: Vec<u8> = (0..64).map(|i| (i + t) as u8).collect();
            while Instant::now() < end {
                let t0 = Instant::now();
                let ok = async {
                    let mut s = TcpStream::connect(&addr).await.ok()?;
                    let _ = s.set_nodelay(true);
                    s.write_all(&msg).await.ok()?;
                    let mut back = [0u8; 64];
                    s.read_exact(&mut back).await.ok()?;
                    (back[..] == msg[..]).then_some(())
                }
                .await;
                match ok {
                    Some(()) => lat.push(t0.elapsed()),
                    None => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        errors += e;
    }
    let took = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "rr conns={conns} seconds={took:.2} connections={} per_s={:.0} p50_ms={:.3} p99_ms={:.3} errors={errors}",
        lat.len(),
        lat.len() as f64 / took,
        pct(0.50),
        pct(0.99)
    );
    if errors > 0 {
        return Err(format!("{errors} exchanges failed"));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let usage = "usage: tcp_load echo PORT_FILE | bulk ADDR SECONDS CONNS | rr ADDR SECONDS CONNS";
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{usage}"))
    };
    let result = match args.first().map(String::as_str) {
        Some("echo") => {
            rt.block_on(echo(args.get(1).expect(usage)));
            Ok(())
        }
        Some("bulk") => rt.block_on(bulk(args[1].clone(), num(2), num(3) as usize)),
        Some("rr") => rt.block_on(rr(args[1].clone(), num(2), num(3) as usize)),
        _ => Err(usage.to_string()),
    };
    if let Err(e) = result {
        eprintln!("tcp_load: {e}");
        std::process::exit(1);
    }
}
