//! The two small wire parsers of connections sift does not control: the
//! PROXY protocol header a load balancer sends (`proxy_protocol::parse`)
//! and Redis's RESP replies (`policy::redis::parse`). Byte 0 picks the
//! parser; the rest is the bytes received.
//!
//! Checked: never a panic; a parsed header or reply never claims more
//! bytes than it got; bytes after it change nothing; and every shorter
//! prefix of it asks for more bytes (so a header or reply split over TCP
//! reads is never misread or refused).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, b)) = data.split_first() else {
        return;
    };
    if pick & 1 == 0 {
        let whole = sift::proxy_protocol::parse(b);
        if let Ok(Some((_, used))) = whole {
            assert!(used <= b.len());
            assert_eq!(sift::proxy_protocol::parse(&b[..used]), whole);
            for k in 0..used {
                assert_eq!(sift::proxy_protocol::parse(&b[..k]), Ok(None), "prefix {k} of {used}");
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
