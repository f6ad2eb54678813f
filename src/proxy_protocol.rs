//! The PROXY protocol (HAProxy's spec, versions 1 and 2): a load balancer
//! that terminates TCP (AWS NLB, HAProxy, a cloud LB in TCP mode) sends
//! one header before the connection's own bytes, naming the client's
//! address. With `listeners[].proxy_protocol`, sift reads it first (before
//! TLS) and takes that address as the connection's peer: X-Forwarded-For,
//! rate limits, `source_ips`, sticky keys and access logs see the client,
//! not the balancer.
//!
//! The header is peeked until complete, then exactly its bytes are read:
//! nothing of the connection's own data is consumed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Version 2's signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's start.
const V1_START: &[u8; 6] = b"PROXY ";
/// Longest version 1 header, CRLF included (the spec's 107).
const V1_MAX: usize = 107;
/// Longest version 2 address block accepted (addresses and TLVs; AWS adds
/// a VPC endpoint TLV of a few dozen bytes).
const V2_MAX_LEN: usize = 1024;

/// What a header says.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// The client's address (and the address it connected to).
    Proxied { src: SocketAddr, dst: SocketAddr },
    /// The balancer's own connection (a health check: `LOCAL`), or an
    /// address family that is not TCP over IP (`UNKNOWN`, UNIX, UDP):
    /// keep the peer.
    Local,
}

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PpError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the PROXY protocol header ended")]
    Closed,
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
}

/// Parse a header at the start of `b`: `Ok(None)` when more bytes are
/// needed; `Err(Missing)` when `b` cannot start one.
pub fn parse(b: &[u8]) -> Result<Option<(Header, usize)>, PpError> {
    let prefix_of = |sig: &[u8]| {
        let n = b.len().min(sig.len());
        b[..n] == sig[..n]
    };
    if prefix_of(V2_SIG) {
        if b.len() < 16 {
            return Ok(None);
        }
        return parse_v2(b);
    }
    if prefix_of(V1_START) {
        if b.len() < V1_START.len() {
            return Ok(None);
        }
        return parse_v1(b);
    }
    Err(PpError::Missing)
}

fn parse_v1(b: &[u8]) -> Result<Option<(Header, usize)>, PpError> {
    let Some(end) = b.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        if b.len() >= V1_MAX {
            return Err(PpError::Malformed("v1 line longer than 107 bytes"));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&b[V1_START.len()..end])
        .map_err(|_| PpError::Malformed("v1 line is not ASCII"))?;
    let used = end + 2;
    let mut f = line.split(' ');
    let fam = f.next().unwrap_or("");
    if fam == "UNKNOWN" {
        return Ok(Some((Header::Local, used)));
    }
    let v6 = match fam {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(PpError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let (Some(s), Some(d), Some(sp), Some(dp), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(PpError::Malformed(
            "v1 needs source, destination and two ports",
        ));
    };
    let ip = |t: &str| -> Result<IpAddr, PpError> {
        let ip: IpAddr = t
            .parse()
            .map_err(|_| PpError::Malformed("v1 address is not an IP"))?;
        if ip.is_ipv6() != v6 {
            return Err(PpError::Malformed(
                "v1 address family differs from its protocol",
            ));
        }
        Ok(ip)
    };
    let port = |t: &str| -> Result<u16, PpError> {
        if t.is_empty() || t.len() > 5 || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(PpError::Malformed("v1 port is not a number"));
        }
        t.parse()
            .map_err(|_| PpError::Malformed("v1 port above 65535"))
    };
    let src = SocketAddr::new(ip(s)?, port(sp)?);
    let dst = SocketAddr::new(ip(d)?, port(dp)?);
    Ok(Some((Header::Proxied { src, dst }, used)))
}

fn parse_v2(b: &[u8]) -> Result<Option<(Header, usize)>, PpError> {
    let ver_cmd = b[12];
    if ver_cmd >> 4 != 2 {
        return Err(PpError::Malformed("v2 version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(PpError::Malformed("v2 command is not LOCAL or PROXY")),
    };
    let fam = b[13];
    let len = usize::from(u16::from_be_bytes([b[14], b[15]]));
    if len > V2_MAX_LEN {
        return Err(PpError::Malformed(
            "v2 address block longer than 1024 bytes",
        ));
    }
    let used = 16 + len;
    if b.len() < used {
        return Ok(None);
    }
    let a = &b[16..used];
    if local {
        return Ok(Some((Header::Local, used)));
    }
    let h = match fam {
        // TCP over IPv4: 4 + 4 + 2 + 2.
        0x11 => {
            if a.len() < 12 {
                return Err(PpError::Malformed("v2 IPv4 block shorter than 12 bytes"));
            }
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Header::Proxied {
                src: SocketAddr::new(ip(0), port(8)),
                dst: SocketAddr::new(ip(4), port(10)),
            }
        }
        // TCP over IPv6: 16 + 16 + 2 + 2.
        0x21 => {
            if a.len() < 36 {
                return Err(PpError::Malformed("v2 IPv6 block shorter than 36 bytes"));
            }
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Header::Proxied {
                src: SocketAddr::new(ip(0), port(32)),
                dst: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC, UNIX, UDP: nothing sift can use; the peer stays.
        _ => Header::Local,
    };
    Ok(Some((h, used)))
}

/// Read the header off `tcp` within `timeout`. `optional`: a connection
/// whose first bytes cannot start a header has none (`Ok(None)`), and
/// nothing is read; otherwise that is [`PpError::Missing`].
pub async fn read(
    tcp: &mut TcpStream,
    optional: bool,
    timeout: Duration,
) -> Result<Option<Header>, PpError> {
    let work = async {
        let mut buf = vec![0u8; 16 + V2_MAX_LEN];
        loop {
            let n = tcp.peek(&mut buf).await.map_err(|_| PpError::Closed)?;
            if n == 0 {
                return Err(PpError::Closed);
            }
            match parse(&buf[..n]) {
                Ok(Some((h, used))) => {
                    tcp.read_exact(&mut buf[..used])
                        .await
                        .map_err(|_| PpError::Closed)?;
                    return Ok(Some(h));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(PpError::Missing) if optional => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| PpError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(block.len() as u16).to_be_bytes());
        v.extend_from_slice(block);
        v
    }

    #[test]
    fn version_1_lines() {
        let l = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, used) = parse(l).unwrap().unwrap();
        assert_eq!(&l[used..used + 3], b"GET");
        assert_eq!(
            h,
            Header::Proxied {
                src: "203.0.113.7:56324".parse().unwrap(),
                dst: "10.0.0.1:443".parse().unwrap()
            }
        );
        let (h, _) = parse(b"PROXY TCP6 2001:db8::7 ::1 1 2\r\n")
            .unwrap()
            .unwrap();
        assert!(
            matches!(h, Header::Proxied { src, .. } if src == "[2001:db8::7]:1".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            Header::Local
        );
        for cut in 0..20 {
            assert_eq!(parse(&l[..cut]).unwrap(), None, "cut at {cut}");
        }
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 1\r\n",
            b"PROXY SCTP 1.2.3.4 5.6.7.8 1 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(PpError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse(&[b"PROXY ".as_slice(), &[b'1'; 200]].concat()),
            Err(PpError::Malformed(_))
        ));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(PpError::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(PpError::Missing), "a TLS hello");
    }

    #[test]
    fn version_2_blocks() {
        let mut block = vec![203, 0, 113, 7, 10, 0, 0, 1];
        block.extend_from_slice(&56324u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        // A TLV after the addresses (AWS's VPC endpoint id) is skipped.
        block.extend_from_slice(&[0xea, 0, 3, b'v', b'p', b'c']);
        let h = v2(1, 0x11, &block);
        let mut stream = h.clone();
        stream.extend_from_slice(b"\x16\x03\x01");
        let (got, used) = parse(&stream).unwrap().unwrap();
        assert_eq!(used, h.len());
        assert_eq!(
            got,
            Header::Proxied {
                src: "203.0.113.7:56324".parse().unwrap(),
                dst: "10.0.0.1:443".parse().unwrap()
            }
        );
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut b6 = vec![0u8; 36];
        b6[0] = 0x20;
        b6[1] = 0x01;
        b6[15] = 7;
        b6[33] = 80;
        let (got, _) = parse(&v2(1, 0x21, &b6)).unwrap().unwrap();
        assert!(
            matches!(got, Header::Proxied { src, .. } if src == "[2001::7]:80".parse().unwrap())
        );
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().unwrap().0, Header::Local);
        assert_eq!(
            parse(&v2(1, 0x31, &[0; 216])).unwrap().unwrap().0,
            Header::Local
        );
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])),
            Err(PpError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &block)),
            Err(PpError::Malformed(_))
        ));
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(matches!(parse(&huge), Err(PpError::Malformed(_))));
        let mut v1_in_v2 = v2(1, 0x11, &block);
        v1_in_v2[12] = 0x11;
        assert!(matches!(parse(&v1_in_v2), Err(PpError::Malformed(_))));
    }
}
