//! The small wire parsers of peers sift does not control: the PROXY
//! protocol header a load balancer sends (`proxy_protocol::parse`), Redis's
//! RESP replies (`policy::redis::parse`) and DNS servers' answers
//! (`dns::parse_answer`), and TLS ClientHellos read for their SNI
//! (`tcp::client_hello_sni`). Byte 0 picks the parser (modulo 4; for DNS,
//! the record type too); the rest is the bytes received.
//!
//! Checked: never a panic; a parsed header or reply never claims more
//! bytes than it got; bytes after it change nothing; and every shorter
//! prefix of it asks for more bytes (so a header or reply split over TCP
//! reads is never misread or refused). A DNS answer is one datagram: bytes
//! after its records change nothing, and it holds no more addresses than
//! its bytes can carry. A ClientHello's SNI is the same whatever follows
//! it, and every prefix of the bytes either waits for more or gives it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, b)) = data.split_first() else {
        return;
    };
    if pick % 4 == 3 {
        let whole = sift::tcp::client_hello_sni(b);
        let mut more = b.to_vec();
        more.extend_from_slice(b"\x17\x03\x03\x00\x01x");
        if whole != sift::tcp::Hello::Incomplete {
            assert_eq!(sift::tcp::client_hello_sni(&more), whole);
        }
        for k in (0..b.len()).step_by(1 + b.len() / 64) {
            let part = sift::tcp::client_hello_sni(&b[..k]);
            assert!(
                part == sift::tcp::Hello::Incomplete || part == whole,
                "prefix {k}: {part:?} vs {whole:?}"
            );
        }
    } else if pick % 4 == 2 {
        let Some(id) = b.get(..2).map(|x| u16::from_be_bytes([x[0], x[1]])) else {
            return;
        };
        let qtype = if (pick / 4) % 2 == 0 {
            sift::dns::TYPE_A
        } else {
            sift::dns::TYPE_AAAA
        };
        let got = sift::dns::parse_answer(b, id, qtype);
        if let Ok(sift::dns::Answer::Addrs(a, _)) = &got {
            assert!(
                a.len() * 14 <= b.len(),
                "{} addresses from {} bytes",
                a.len(),
                b.len()
            );
            let mut more = b.to_vec();
            more.extend_from_slice(b"\0\0\xc0\x0c trailing");
            assert_eq!(sift::dns::parse_answer(&more, id, qtype), got);
        }
    } else if pick % 4 == 0 {
        let whole = sift::proxy_protocol::parse(b);
        if let Ok(Some((_, used))) = whole {
            assert!(used <= b.len());
            assert_eq!(sift::proxy_protocol::parse(&b[..used]), whole);
            for k in 0..used {
                assert_eq!(
                    sift::proxy_protocol::parse(&b[..k]),
                    Ok(None),
                    "prefix {k} of {used}"
                );
            }
        }
    } else if let Ok(Some((r, used))) = sift::policy::redis::parse(b) {
        assert!(used <= b.len());
        match sift::policy::redis::parse(&b[..used]) {
            Ok(Some((r2, u2))) => assert!(r2 == r && u2 == used),
            other => panic!("the reply alone parsed as {other:?}"),
        }
        for k in 0..used {
            assert!(
                matches!(sift::policy::redis::parse(&b[..k]), Ok(None)),
                "prefix {k} of {used}"
            );
        }
    }
});
