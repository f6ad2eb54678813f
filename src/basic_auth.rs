//! HTTP Basic authentication on a route (nginx's `auth_basic` with
//! `auth_basic_user_file`, Envoy's `basic_auth` filter): users and password
//! hashes in htpasswd's format, `name:hash` per line. Hashes: `$apr1$`
//! (Apache MD5-crypt, `htpasswd`'s default), `{SHA}` (`htpasswd -s`, the
//! one Envoy takes) and `{SSHA}` (salted SHA-1). bcrypt (`htpasswd -B`)
//! and plain text are refused at load: bcrypt costs tens of milliseconds of
//! CPU per request by design (a request flood becomes a CPU flood), and a
//! plain password does not belong in a config.

use std::collections::HashMap;

use http::HeaderMap;
use md5::{Digest, Md5};

/// One user's stored hash.
#[derive(Clone, Debug, PartialEq)]
pub enum Hash {
    /// `$apr1$salt$hash`.
    Apr1 { salt: String, hash: String },
    /// `{SHA}` base64(SHA-1(password)).
    Sha([u8; 20]),
    /// `{SSHA}` base64(SHA-1(password + salt) + salt).
    Ssha { digest: [u8; 20], salt: Vec<u8> },
}

/// The users of a route's `basic_auth`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Users(HashMap<String, Hash>);

impl Users {
    /// Parse htpasswd lines (`#` comments and blank lines skipped). Errors
    /// name the line (1-based) and never echo a hash.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut out = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {n}: not `name:hash`"))?;
            if name.is_empty() {
                return Err(format!("line {n}: the user name is empty"));
            }
            let hash = parse_hash(hash).map_err(|m| format!("line {n} (user {name:?}): {m}"))?;
            if out.insert(name.to_string(), hash).is_some() {
                return Err(format!("line {n}: user {name:?} is listed twice"));
            }
        }
        if out.is_empty() {
            return Err("no users".into());
        }
        Ok(Users(out))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Check `user`'s `password`; the work is the same whether or not the
    /// user exists (an unknown user is checked against a dummy hash), and
    /// digests are compared in constant time.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.0.get(user) {
            Some(h) => verify(h, password),
            None => {
                let dummy = Hash::Apr1 {
                    salt: "sift0000".into(),
                    hash: "0000000000000000000000".into(),
                };
                let _ = verify(&dummy, password);
                false
            }
        }
    }
}

fn parse_hash(h: &str) -> Result<Hash, String> {
    if let Some(rest) = h.strip_prefix("$apr1$") {
        let (salt, hash) = rest
            .split_once('$')
            .ok_or("an $apr1$ hash is `$apr1$salt$hash`")?;
        if salt.is_empty() || salt.len() > 8 || hash.len() != 22 {
            return Err(
                "an $apr1$ hash has a salt of 1 to 8 characters and 22 hash characters".into(),
            );
        }
        return Ok(Hash::Apr1 {
            salt: salt.into(),
            hash: hash.into(),
        });
    }
    if let Some(b64) = h.strip_prefix("{SHA}") {
        let d = b64_std(b64).ok_or("a {SHA} hash is base64")?;
        return <[u8; 20]>::try_from(d.as_slice())
            .map(Hash::Sha)
            .map_err(|_| "a {SHA} hash holds 20 bytes".into());
    }
    if let Some(b64) = h.strip_prefix("{SSHA}") {
        let d = b64_std(b64).ok_or("a {SSHA} hash is base64")?;
        if d.len() <= 20 {
            return Err("a {SSHA} hash holds 20 bytes and a salt".into());
        }
        let mut digest = [0u8; 20];
        digest.copy_from_slice(&d[..20]);
        return Ok(Hash::Ssha {
            digest,
            salt: d[20..].to_vec(),
        });
    }
    if h.starts_with("$2") {
        return Err("bcrypt hashes cost tens of milliseconds of CPU per request; use `htpasswd -m` ($apr1$) or `htpasswd -s` ({SHA})".into());
    }
    Err("not a supported hash: $apr1$ (htpasswd's default), {SHA} or {SSHA}".into())
}

/// Padded standard base64 (RFC 4648 §4), strictly.
fn b64_std(s: &str) -> Option<Vec<u8>> {
    let mut d = crate::grpc_web::TextDecoder::default();
    let mut out = bytes::BytesMut::new();
    d.feed(s.as_bytes(), &mut out).ok()?;
    d.finish().ok()?;
    Some(out.to_vec())
}

fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut c = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for p in parts {
        c.update(p);
    }
    let mut out = [0u8; 20];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// Equal in constant time for equal lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn verify(h: &Hash, password: &[u8]) -> bool {
    match h {
        Hash::Sha(d) => same(&sha1(&[password]), d),
        Hash::Ssha { digest, salt } => same(&sha1(&[password, salt]), digest),
        Hash::Apr1 { salt, hash } => {
            same(apr1(password, salt.as_bytes()).as_bytes(), hash.as_bytes())
        }
    }
}

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Apache's MD5-crypt (`$apr1$`): the 22 hash characters for `password`
/// and `salt` (at most 8 bytes).
pub fn apr1(password: &[u8], salt: &[u8]) -> String {
    let salt = &salt[..salt.len().min(8)];
    let alt = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(b"$apr1$")
        .chain_update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }
    let mut out = String::with_capacity(22);
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(char::from(ITOA64[(v & 63) as usize]));
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64((f(a) << 16) | (f(b) << 8) | f(c), 4);
    }
    to64(f(11), 2);
    out
}

/// What a request's `Authorization` header says.
#[derive(Debug, PartialEq)]
pub enum Credentials {
    Missing,
    /// Not `Basic` base64 of `user:password`.
    Malformed,
    Given {
        user: String,
        password: Vec<u8>,
    },
}

/// The Basic credentials of `headers` (one `Authorization` line).
pub fn credentials(headers: &HeaderMap) -> Credentials {
    let mut lines = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = lines.next() else {
        return Credentials::Missing;
    };
    if lines.next().is_some() {
        return Credentials::Malformed;
    }
    let v = v.as_bytes();
    let Some(b64) = v
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case(b"basic "))
        .and_then(|_| std::str::from_utf8(&v[6..]).ok())
    else {
        return Credentials::Malformed;
    };
    let Some(raw) = b64_std(b64.trim()) else {
        return Credentials::Malformed;
    };
    let Some(colon) = raw.iter().position(|&b| b == b':') else {
        return Credentials::Malformed;
    };
    match std::str::from_utf8(&raw[..colon]) {
        Ok(user) if !user.is_empty() => Credentials::Given {
            user: user.to_string(),
            password: raw[colon + 1..].to_vec(),
        },
        _ => Credentials::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_openssl_and_htpasswd() {
        // `openssl passwd -apr1 -salt r31..... myPassword` and
        // `openssl passwd -apr1 -salt abc 'p@ss word ü'`.
        assert_eq!(apr1(b"myPassword", b"r31....."), "HqJZimcKQFAMYayBlzkrA/");
        assert_eq!(
            apr1("p@ss word ü".as_bytes(), b"abc"),
            "6zPgRQlXxwWwjGizQIije1"
        );
        let users = Users::parse(
            "# comment\n\
             ann:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n\
             bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n\
             cy:{SSHA}uJDd0BIdJ9Z7yDCZNWdgYeb33+cBAgME\n",
        )
        .unwrap();
        assert_eq!(users.len(), 3);
        assert!(users.verify("ann", b"myPassword"));
        assert!(!users.verify("ann", b"mypassword"));
        assert!(users.verify("bob", b"secret"));
        assert!(!users.verify("bob", b"secret "));
        assert!(users.verify("cy", b"secret"));
        assert!(!users.verify("cy", b"Secret"));
        assert!(!users.verify("dan", b"secret"), "unknown user");
    }

    #[test]
    fn bad_files_are_refused_without_echoing_hashes() {
        let e = |t: &str| Users::parse(t).unwrap_err();
        assert!(e("ann").contains("line 1: not `name:hash`"));
        assert!(e("ann:plain").contains("not a supported hash"));
        assert!(e("ann:$2y$05$abcdefghijklmnopqrstuv").contains("bcrypt"));
        assert!(e("ann:{SHA}eHg=").contains("20 bytes"));
        assert!(e("ann:{SHA}x!").contains("base64"));
        assert!(
            e("ann:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\nann:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=")
                .contains("listed twice")
        );
        assert!(e("# only a comment").contains("no users"));
        assert!(!e("ann:$apr1$x$short").contains("short"));
    }

    #[test]
    fn credentials_are_read_strictly() {
        let h = |v: &[&str]| {
            let mut m = HeaderMap::new();
            for x in v {
                m.append(http::header::AUTHORIZATION, x.parse().unwrap());
            }
            credentials(&m)
        };
        // base64("ann:pa:ss") = YW5uOnBhOnNz
        assert_eq!(
            h(&["Basic YW5uOnBhOnNz"]),
            Credentials::Given {
                user: "ann".into(),
                password: b"pa:ss".to_vec()
            }
        );
        assert_eq!(h(&["basic YW5uOnBhOnNz"]), h(&["Basic YW5uOnBhOnNz"]));
        assert_eq!(h(&[]), Credentials::Missing);
        assert_eq!(h(&["Bearer abc"]), Credentials::Malformed);
        assert_eq!(h(&["Basic !!!"]), Credentials::Malformed);
        assert_eq!(h(&["Basic YW5u"]), Credentials::Malformed, "no colon");
        assert_eq!(h(&["Basic OnBhc3M="]), Credentials::Malformed, "empty user");
        assert_eq!(
            h(&["Basic YW5uOnBhOnNz", "Basic YW5uOnBhOnNz"]),
            Credentials::Malformed,
            "two lines"
        );
    }
}
