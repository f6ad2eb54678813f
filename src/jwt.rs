//! JWT authentication per route, with Envoy's meaning (`jwt_authn` with
//! `local_jwks`, what Istio's RequestAuthentication configures):
//!
//! - the token is `Authorization: Bearer <JWT>` (one such line);
//! - its signature is checked against the provider's JSON Web Key Set:
//!   RS256/384/512, PS256/384/512, ES256/384 and EdDSA (Ed25519); `none`
//!   and HMAC are refused (a shared secret does not belong in a proxy's
//!   config);
//! - `iss` must be the provider's issuer, `aud` (when `audiences` is set)
//!   one of them, `exp` in the future and `nbf` in the past, each within
//!   `clock_skew`; time is a parameter;
//! - on success chosen claims go to the upstream as headers (a client's own
//!   headers of those names are always removed first), and the
//!   Authorization header is removed unless `forward` is set.

use base64_url as b64;
use ring::signature::{self, UnparsedPublicKey};
use serde::Serialize;
use serde_json::{Map, Value};

/// A key from the provider's JWKS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's own `alg`, when the JWKS names one.
    pub alg: Option<String>,
    pub key: Key,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point, 0x04 ‖ x ‖ y.
    EcP256(Vec<u8>),
    EcP384(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JwtProviderSpec {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Where the keys came from (a file path, `inline`, or the URI of a
    /// remote JWKS).
    pub jwks_source: String,
    #[serde(skip)]
    pub keys: Vec<Jwk>,
    /// Keys fetched from a URI (`remote_jwks`), instead of `keys`.
    #[serde(skip)]
    pub remote: Option<std::sync::Arc<RemoteJwks>>,
    pub clock_skew_secs: u64,
    pub forward: bool,
    /// Where tokens are looked for (default: `Authorization: Bearer`).
    pub locations: Vec<TokenLocation>,
    /// (claim, header) pairs.
    pub claims_to_headers: Vec<(String, String)>,
}

/// A JWKS fetched from a URI through a cluster and refreshed (Envoy's
/// `remote_jwks`). One per (uri, cluster, refresh, timeout): a reload that
/// keeps them keeps the cell, its keys and its fetch task
/// (`Snapshot::build`, `jwks::start`).
pub struct RemoteJwks {
    /// The JWKS, or with `discover` the issuer's discovery document.
    pub uri: http::Uri,
    /// OpenID Connect discovery: the issuer the document must name; the
    /// JWKS is at its `jwks_uri`.
    pub discover: Option<String>,
    pub cluster: String,
    pub refresh: std::time::Duration,
    pub timeout: std::time::Duration,
    /// The keys of the last good fetch (none before the first).
    pub keys: arc_swap::ArcSwap<Vec<Jwk>>,
    /// The fetch task runs.
    pub started: std::sync::atomic::AtomicBool,
    /// The cluster the fetches go through, set from the current snapshot.
    pub via: std::sync::Mutex<std::sync::Weak<crate::upstream::Cluster>>,
}

impl RemoteJwks {
    pub fn new(
        uri: http::Uri,
        cluster: String,
        refresh: std::time::Duration,
        timeout: std::time::Duration,
    ) -> RemoteJwks {
        RemoteJwks {
            uri,
            discover: None,
            cluster,
            refresh,
            timeout,
            keys: arc_swap::ArcSwap::from_pointee(Vec::new()),
            started: std::sync::atomic::AtomicBool::new(false),
            via: std::sync::Mutex::new(std::sync::Weak::new()),
        }
    }

    /// Same source and schedule (the keys are state, not config).
    pub fn same(&self, o: &RemoteJwks) -> bool {
        self.uri == o.uri
            && self.discover == o.discover
            && self.cluster == o.cluster
            && self.refresh == o.refresh
            && self.timeout == o.timeout
    }
}

impl PartialEq for RemoteJwks {
    fn eq(&self, o: &RemoteJwks) -> bool {
        self.same(o)
    }
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("uri", &self.uri)
            .field("cluster", &self.cluster)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

/// Where a request may carry its token (Envoy's `from_headers`,
/// `from_cookies`, `from_params`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenLocation {
    /// A header, its value after `prefix` (matched without regard to
    /// case; empty: the whole value).
    Header { name: String, prefix: String },
    /// A cookie of the Cookie header.
    Cookie(String),
    /// A query parameter (percent-decoded).
    Param(String),
}

impl TokenLocation {
    /// `Authorization: Bearer <token>`.
    pub fn bearer() -> TokenLocation {
        TokenLocation::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }
}

/// A route's JWT requirement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteJwtSpec {
    pub provider: JwtProviderSpec,
    /// A request without a token passes (unauthenticated); a bad token
    /// never does.
    pub allow_missing: bool,
}

/// Why a token was refused (the `error_description` and the log).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no bearer token")]
    Missing,
    #[error("more than one token")]
    Ambiguous,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("no key of the issuer matches the token")]
    NoKey,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("audience not allowed")]
    Audience,
    #[error("the issuer's keys are not fetched yet")]
    KeysUnavailable,
}

mod base64_url {
    /// Decode unpadded base64url (RFC 7515 §2); padding and other
    /// alphabets are refused.
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => return None,
            } as u32)
        };
        let b = s.as_bytes();
        if b.len() % 4 == 1 {
            return None;
        }
        let mut out = Vec::with_capacity(b.len() * 3 / 4);
        for chunk in b.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= val(c)? << (18 - 6 * i);
            }
            let bytes = n.to_be_bytes();
            out.extend_from_slice(&bytes[1..chunk.len()]);
        }
        Some(out)
    }

    /// Encode as unpadded base64url.
    pub fn encode(b: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
        for chunk in b.chunks(3) {
            let mut n = 0u32;
            for (i, &x) in chunk.iter().enumerate() {
                n |= u32::from(x) << (16 - 8 * i);
            }
            for i in 0..=chunk.len() {
                s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        s
    }
}

pub use base64_url::encode as b64url_encode;

/// Parse a JWKS document; keys sift cannot use (other types, `use: enc`)
/// are skipped, and a set with none usable is an error.
pub fn parse_jwks(text: &str) -> Result<Vec<Jwk>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut out = Vec::new();
    for k in keys {
        let s = |f: &str| k.get(f).and_then(Value::as_str);
        if s("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let bytes = |f: &str| s(f).and_then(b64::decode);
        let key = match (s("kty"), s("crv")) {
            (Some("RSA"), _) => match (bytes("n"), bytes("e")) {
                (Some(n), Some(e)) if !n.is_empty() && !e.is_empty() => Key::Rsa { n, e },
                _ => return Err("an RSA key without n or e".into()),
            },
            (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
                let len = if crv == "P-256" { 32 } else { 48 };
                match (bytes("x"), bytes("y")) {
                    (Some(x), Some(y)) if x.len() == len && y.len() == len => {
                        let mut p = vec![4u8];
                        p.extend_from_slice(&x);
                        p.extend_from_slice(&y);
                        if crv == "P-256" {
                            Key::EcP256(p)
                        } else {
                            Key::EcP384(p)
                        }
                    }
                    _ => return Err(format!("an EC {crv} key with bad x or y")),
                }
            }
            (Some("OKP"), Some("Ed25519")) => match bytes("x") {
                Some(x) if x.len() == 32 => Key::Ed25519(x),
                _ => return Err("an Ed25519 key with a bad x".into()),
            },
            _ => continue,
        };
        out.push(Jwk {
            kid: s("kid").map(str::to_string),
            alg: s("alg").map(str::to_string),
            key,
        });
    }
    if out.is_empty() {
        return Err("no usable signing key (RSA, EC P-256/P-384, Ed25519)".into());
    }
    Ok(out)
}

/// A token found, and the header it came in (none for a cookie or a
/// query parameter).
pub type Found<'a> = (std::borrow::Cow<'a, str>, Option<String>);

/// The token a request carries at `locations`, and the header it came in
/// (for `forward: false`): `Ok(None)` when there is none. Two different
/// tokens (in two places, or two lines of one header) are refused: which
/// one the app reads is not sift's to guess.
pub fn find_token<'a>(
    locations: &[TokenLocation],
    h: &'a http::HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<Found<'a>>, JwtError> {
    use std::borrow::Cow;
    let mut found: Option<(Cow<'a, str>, Option<String>)> = None;
    let mut put = |t: Cow<'a, str>, header: Option<&str>| -> Result<(), JwtError> {
        match &found {
            Some((f, _)) if *f != t => Err(JwtError::Ambiguous),
            Some(_) => Ok(()),
            None => {
                found = Some((t, header.map(str::to_owned)));
                Ok(())
            }
        }
    };
    for loc in locations {
        match loc {
            TokenLocation::Header { name, prefix } => {
                for v in h.get_all(name.as_str()) {
                    let v = v
                        .to_str()
                        .map_err(|_| JwtError::Malformed("not ASCII"))?
                        .trim();
                    let token = if prefix.is_empty() {
                        Some(v)
                    } else {
                        v.get(..prefix.len())
                            .filter(|p| p.eq_ignore_ascii_case(prefix))
                            .and_then(|_| v.get(prefix.len()..))
                            .map(str::trim)
                    };
                    if let Some(t) = token.filter(|t| !t.is_empty()) {
                        put(Cow::Borrowed(t), Some(name))?;
                    }
                }
            }
            TokenLocation::Cookie(name) => {
                for v in h.get_all(http::header::COOKIE) {
                    let Ok(v) = v.to_str() else { continue };
                    for kv in v.split(';') {
                        if let Some((k, t)) = kv.trim().split_once('=') {
                            let t = t.trim_matches('"');
                            if k == name && !t.is_empty() {
                                put(Cow::Borrowed(t), None)?;
                            }
                        }
                    }
                }
            }
            TokenLocation::Param(name) => {
                for kv in query.unwrap_or("").split('&') {
                    let (k, t) = kv.split_once('=').unwrap_or((kv, ""));
                    if *crate::snapshot::query_decode(k) == *name.as_bytes() && !t.is_empty() {
                        let t = crate::snapshot::query_decode(t);
                        put(Cow::Owned(String::from_utf8_lossy(&t).into_owned()), None)?;
                    }
                }
            }
        }
    }
    Ok(found)
}

/// How a token's `alg` is checked with a key of this type.
enum Verifier {
    Rsa(&'static signature::RsaParameters),
    Other(&'static dyn signature::VerificationAlgorithm),
}

fn algorithm(alg: &str, key: &Key) -> Option<Verifier> {
    use Verifier::{Other, Rsa};
    Some(match (alg, key) {
        ("RS256", Key::Rsa { .. }) => Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        ("RS384", Key::Rsa { .. }) => Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        ("RS512", Key::Rsa { .. }) => Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        ("PS256", Key::Rsa { .. }) => Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        ("PS384", Key::Rsa { .. }) => Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        ("PS512", Key::Rsa { .. }) => Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        ("ES256", Key::EcP256(_)) => Other(&signature::ECDSA_P256_SHA256_FIXED),
        ("ES384", Key::EcP384(_)) => Other(&signature::ECDSA_P384_SHA384_FIXED),
        ("EdDSA", Key::Ed25519(_)) => Other(&signature::ED25519),
        _ => return None,
    })
}

const ACCEPTED: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn verify_with(v: Verifier, key: &Key, msg: &[u8], sig: &[u8]) -> bool {
    match (v, key) {
        (Verifier::Rsa(params), Key::Rsa { n, e }) => signature::RsaPublicKeyComponents { n, e }
            .verify(params, msg, sig)
            .is_ok(),
        (Verifier::Other(alg), Key::EcP256(p) | Key::EcP384(p) | Key::Ed25519(p)) => {
            UnparsedPublicKey::new(alg, p).verify(msg, sig).is_ok()
        }
        _ => false,
    }
}

/// Check `token` against `p` at `now` (Unix seconds); its claims.
pub fn verify(p: &JwtProviderSpec, token: &str, now: u64) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h64), Some(c64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let header: Value = b64::decode(h64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed("bad header"))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed("no alg"))?;
    if !ACCEPTED.contains(&alg) {
        return Err(JwtError::Algorithm(alg.to_string()));
    }
    if header.get("crit").is_some() {
        // RFC 7515 §4.1.11: extensions sift does not know must be refused.
        return Err(JwtError::Malformed("crit header"));
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let sig = b64::decode(s64).ok_or(JwtError::Malformed("bad signature encoding"))?;
    let msg = &token.as_bytes()[..h64.len() + 1 + c64.len()];
    let fetched;
    let keys: &[Jwk] = match &p.remote {
        Some(r) => {
            fetched = r.keys.load_full();
            if fetched.is_empty() {
                return Err(JwtError::KeysUnavailable);
            }
            &fetched
        }
        None => &p.keys,
    };
    let mut tried = false;
    let mut ok = false;
    for k in keys {
        if kid.is_some() && k.kid.as_deref() != kid {
            continue;
        }
        if k.alg.as_deref().is_some_and(|a| a != alg) {
            continue;
        }
        let Some(v) = algorithm(alg, &k.key) else {
            continue;
        };
        tried = true;
        if verify_with(v, &k.key, msg, &sig) {
            ok = true;
            break;
        }
    }
    if !tried {
        return Err(JwtError::NoKey);
    }
    if !ok {
        return Err(JwtError::Signature);
    }
    let claims: Map<String, Value> = b64::decode(c64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed("bad claims"))?;
    if claims.get("iss").and_then(Value::as_str) != Some(p.issuer.as_str()) {
        return Err(JwtError::Issuer);
    }
    if !p.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => p.audiences.contains(a),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .any(|a| p.audiences.iter().any(|w| w == a)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Audience);
        }
    }
    let time = |f: &str| -> Result<Option<u64>, JwtError> {
        match claims.get(f) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|t| *t >= 0.0)
                .map(|t| Some(t as u64))
                .ok_or(JwtError::Malformed("a time claim is not a number")),
        }
    };
    if time("exp")?.is_some_and(|exp| now >= exp.saturating_add(p.clock_skew_secs)) {
        return Err(JwtError::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| now.saturating_add(p.clock_skew_secs) < nbf) {
        return Err(JwtError::NotYetValid);
    }
    Ok(claims)
}

/// A claim's value as a header value: strings as they are, numbers and
/// booleans printed, arrays of strings joined by `,`; anything else
/// (objects) is not forwarded.
pub fn claim_header(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(a) => {
            let s: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            (s.len() == a.len()).then(|| s.join(","))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn provider(keys: Vec<Jwk>) -> JwtProviderSpec {
        JwtProviderSpec {
            name: "p".into(),
            issuer: "https://auth.test".into(),
            audiences: vec!["api".into()],
            jwks_source: "inline".into(),
            keys,
            remote: None,
            clock_skew_secs: 60,
            forward: false,
            locations: vec![TokenLocation::bearer()],
            claims_to_headers: vec![],
        }
    }

    fn sign_es256(kp: &EcdsaKeyPair, header: &str, claims: &str) -> String {
        let msg = format!(
            "{}.{}",
            b64::encode(header.as_bytes()),
            b64::encode(claims.as_bytes())
        );
        let sig = kp.sign(&SystemRandom::new(), msg.as_bytes()).unwrap();
        format!("{msg}.{}", b64::encode(sig.as_ref()))
    }

    #[test]
    fn base64url_round_trips() {
        for n in 0..40 {
            let b: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(b64::decode(&b64::encode(&b)).unwrap(), b);
        }
        assert!(b64::decode("a").is_none());
        assert!(b64::decode("ab=").is_none());
        assert!(b64::decode("a+b/").is_none());
    }

    #[test]
    fn es256_and_eddsa_tokens_are_checked() {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pk8.as_ref(),
            &rng,
        )
        .unwrap();
        let pt = kp.public_key().as_ref();
        let jwks = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","x":"{}","y":"{}"}},{{"kty":"oct","k":"c2VjcmV0"}}]}}"#,
            b64::encode(&pt[1..33]),
            b64::encode(&pt[33..65])
        );
        let keys = parse_jwks(&jwks).unwrap();
        assert_eq!(keys.len(), 1, "the HMAC key is skipped");
        let p = provider(keys);
        let now = 1_800_000_000u64;
        let good = format!(
            r#"{{"iss":"https://auth.test","aud":["x","api"],"sub":"alice","exp":{}}}"#,
            now + 100
        );
        let t = sign_es256(&kp, r#"{"alg":"ES256","kid":"k1"}"#, &good);
        let c = verify(&p, &t, now).unwrap();
        assert_eq!(c["sub"], "alice");
        // Tampered claims: the signature fails.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = b64::encode(good.replace("alice", "admin").as_bytes());
        parts[1] = &forged;
        assert_eq!(verify(&p, &parts.join("."), now), Err(JwtError::Signature));
        // Time, issuer, audience, kid, alg.
        assert_eq!(verify(&p, &t, now + 161), Err(JwtError::Expired));
        assert!(verify(&p, &t, now + 159).is_ok(), "within the skew");
        let nbf = format!(
            r#"{{"iss":"https://auth.test","aud":"api","nbf":{}}}"#,
            now + 120
        );
        assert_eq!(
            verify(&p, &sign_es256(&kp, r#"{"alg":"ES256"}"#, &nbf), now),
            Err(JwtError::NotYetValid)
        );
        let iss = r#"{"iss":"https://evil.test","aud":"api"}"#;
        assert_eq!(
            verify(&p, &sign_es256(&kp, r#"{"alg":"ES256"}"#, iss), now),
            Err(JwtError::Issuer)
        );
        let aud = r#"{"iss":"https://auth.test","aud":"other"}"#;
        assert_eq!(
            verify(&p, &sign_es256(&kp, r#"{"alg":"ES256"}"#, aud), now),
            Err(JwtError::Audience)
        );
        let noaud = r#"{"iss":"https://auth.test"}"#;
        assert_eq!(
            verify(&p, &sign_es256(&kp, r#"{"alg":"ES256"}"#, noaud), now),
            Err(JwtError::Audience)
        );
        let kid = sign_es256(&kp, r#"{"alg":"ES256","kid":"k2"}"#, &good);
        assert_eq!(verify(&p, &kid, now), Err(JwtError::NoKey));
        let none = format!(
            "{}.{}.",
            b64::encode(br#"{"alg":"none"}"#),
            b64::encode(good.as_bytes())
        );
        assert_eq!(
            verify(&p, &none, now),
            Err(JwtError::Algorithm("none".into()))
        );
        let hs = sign_es256(&kp, r#"{"alg":"HS256"}"#, &good);
        assert_eq!(
            verify(&p, &hs, now),
            Err(JwtError::Algorithm("HS256".into()))
        );
        let rs = sign_es256(&kp, r#"{"alg":"RS256"}"#, &good);
        assert_eq!(
            verify(&p, &rs, now),
            Err(JwtError::NoKey),
            "an RS256 token against an EC key"
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.a.b"] {
            assert!(
                matches!(verify(&p, bad, now), Err(JwtError::Malformed(_))),
                "{bad}"
            );
        }
        // EdDSA.
        let pk8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
        let jwks = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{}"}}]}}"#,
            b64::encode(ed.public_key().as_ref())
        );
        let p = provider(parse_jwks(&jwks).unwrap());
        let msg = format!(
            "{}.{}",
            b64::encode(br#"{"alg":"EdDSA"}"#),
            b64::encode(good.as_bytes())
        );
        let t = format!("{msg}.{}", b64::encode(ed.sign(msg.as_bytes()).as_ref()));
        assert!(verify(&p, &t, now).is_ok());
    }

    #[test]
    fn bad_jwks_and_bearer_headers() {
        assert!(parse_jwks("nope").is_err());
        assert!(parse_jwks("{}").is_err());
        assert!(parse_jwks(r#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#).is_err());
        assert!(parse_jwks(r#"{"keys":[{"kty":"RSA","n":"AQAB"}]}"#).is_err());
        let mut h = http::HeaderMap::new();
        let bearer = |h: &http::HeaderMap| {
            find_token(&[TokenLocation::bearer()], h, None).map(|t| t.map(|(t, _)| t.into_owned()))
        };
        assert_eq!(bearer(&h), Ok(None));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), Ok(None));
        h.insert("authorization", "bearer  tok ".parse().unwrap());
        assert_eq!(bearer(&h), Ok(Some("tok".into())));
        h.append("authorization", "Bearer other".parse().unwrap());
        assert_eq!(bearer(&h), Err(JwtError::Ambiguous));
        h.remove("authorization");
        // Other places: a header without a prefix, a cookie, a parameter;
        // the same token twice is one token, two different ones refused.
        let places = [
            TokenLocation::Header {
                name: "x-jwt".into(),
                prefix: String::new(),
            },
            TokenLocation::Cookie("session".into()),
            TokenLocation::Param("access_token".into()),
        ];
        let find = |h: &http::HeaderMap, q: Option<&str>| {
            find_token(&places, h, q).map(|t| t.map(|(t, from)| (t.into_owned(), from)))
        };
        assert_eq!(find(&h, Some("a=b")), Ok(None));
        assert_eq!(
            find(&h, Some("a=b&access%5Ftoken=t%2E1")),
            Ok(Some(("t.1".into(), None)))
        );
        h.insert("cookie", "a=1; session=t.1; b=2".parse().unwrap());
        assert_eq!(
            find(&h, Some("access_token=t.1")),
            Ok(Some(("t.1".into(), None)))
        );
        assert_eq!(find(&h, Some("access_token=t.2")), Err(JwtError::Ambiguous));
        h.insert("x-jwt", "t.1".parse().unwrap());
        assert_eq!(
            find(&h, None),
            Ok(Some(("t.1".into(), Some("x-jwt".into()))))
        );
        assert_eq!(
            claim_header(&serde_json::json!(["a", "b"])).as_deref(),
            Some("a,b")
        );
        assert_eq!(claim_header(&serde_json::json!({"a": 1})), None);
        assert_eq!(claim_header(&serde_json::json!(42)).as_deref(), Some("42"));
    }
}
