//! AWS Signature Version 4, checked on the server side: the `Authorization` header form that
//! SDKs send, and presigned URLs (`X-Amz-Signature` in the query).
//!
//! The canonical request is rebuilt from what arrived (method, path, query, the signed
//! headers, the payload hash the client declared), signed with the one configured secret, and
//! compared in constant time. The path is canonicalised from its decoded form by AWS's rules
//! (every byte but `A-Za-z0-9-._~` and `/` percent-encoded); a client that signed the path
//! exactly as it sent it is accepted too. Requests more than 15 minutes from now, and
//! presigned URLs past their expiry, are refused. Only GET and HEAD reach this server, so the
//! payload is never read: its declared hash is signed like any other field.

use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use locus_core::Secret;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Clock difference accepted between a client and this server.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// The longest life of a presigned URL (7 days, as S3).
const MAX_EXPIRES: u64 = 7 * 24 * 3600;

/// The one key pair the gateway accepts.
#[derive(Clone)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret: Secret,
}

impl Credentials {
    /// Reads `ACCESS_KEY_ID:SECRET_ACCESS_KEY` (one line) from a key file's text.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let line = text.trim();
        let Some((id, secret)) = line.split_once(':') else {
            return Err("expected one line ACCESS_KEY_ID:SECRET_ACCESS_KEY".into());
        };
        let (id, secret) = (id.trim(), secret.trim());
        if id.is_empty() || secret.is_empty() || line.contains('\n') {
            return Err("expected one line ACCESS_KEY_ID:SECRET_ACCESS_KEY".into());
        }
        if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err("the access key id must be letters and digits".into());
        }
        Ok(Credentials {
            access_key: id.to_string(),
            secret: Secret::new(secret),
        })
    }
}

/// Why a request's signature was not accepted; each is one S3 error code.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No signature at all.
    #[error("the request is not signed, and this gateway does not allow anonymous access")]
    Anonymous,
    /// A signature in a form that cannot be read.
    #[error("malformed authorization: {0}")]
    Malformed(String),
    /// An access key this gateway does not know.
    #[error("the access key id does not exist here")]
    UnknownKey,
    /// The signature does not match.
    #[error("the request signature does not match the one computed with the secret key")]
    BadSignature,
    /// The request's time is too far from now.
    #[error("the request's time is more than 15 minutes from the server's")]
    Skewed,
    /// A presigned URL past its expiry.
    #[error("the presigned URL has expired")]
    Expired,
}

impl AuthError {
    /// The S3 error code and HTTP status.
    pub fn code(&self) -> (&'static str, u16) {
        match self {
            AuthError::Anonymous => ("AccessDenied", 403),
            AuthError::Malformed(_) => ("AuthorizationHeaderMalformed", 400),
            AuthError::UnknownKey => ("InvalidAccessKeyId", 403),
            AuthError::BadSignature => ("SignatureDoesNotMatch", 403),
            AuthError::Skewed => ("RequestTimeTooSkewed", 403),
            AuthError::Expired => ("AccessDenied", 403),
        }
    }
}

/// A request as it arrived.
pub struct Request<'a> {
    /// `GET`, `HEAD`.
    pub method: &'a str,
    /// The path as sent (percent-encoded).
    pub path: &'a str,
    /// The query as sent, without `?`.
    pub query: &'a str,
    /// Its headers.
    pub headers: &'a HeaderMap,
}

/// Whether `req` carries a signature (header or query).
pub fn is_signed(req: &Request<'_>) -> bool {
    req.headers.contains_key("authorization")
        || query_pairs(req.query)
            .iter()
            .any(|(k, _)| k == "X-Amz-Signature")
}

/// Checks `req`'s signature against `creds` at time `now`.
pub fn verify(req: &Request<'_>, creds: &Credentials, now: SystemTime) -> Result<(), AuthError> {
    let pairs = query_pairs(req.query);
    let found = match req.headers.get("authorization") {
        Some(h) => from_header(
            h.to_str()
                .map_err(|_| AuthError::Malformed("not ASCII".into()))?,
            req.headers,
        )?,
        None => from_query(&pairs)?,
    };
    if found.access_key != creds.access_key {
        return Err(AuthError::UnknownKey);
    }
    let when = parse_amz_date(&found.amz_date)
        .ok_or_else(|| AuthError::Malformed(format!("bad date {:?}", found.amz_date)))?;
    if !found.scope_date.is_empty() && !found.amz_date.starts_with(&found.scope_date) {
        return Err(AuthError::Malformed(
            "the credential's date is not the request's".into(),
        ));
    }
    match found.expires {
        Some(exp) => {
            if when > now + MAX_SKEW {
                return Err(AuthError::Skewed);
            }
            if now > when + Duration::from_secs(exp) {
                return Err(AuthError::Expired);
            }
        }
        None => {
            let skew = match now > when {
                true => now.duration_since(when).unwrap_or_default(),
                false => when.duration_since(now).unwrap_or_default(),
            };
            if skew > MAX_SKEW {
                return Err(AuthError::Skewed);
            }
        }
    }
    if !found.signed_headers.iter().any(|h| h == "host") {
        return Err(AuthError::Malformed(
            "the host header must be signed".into(),
        ));
    }
    let mut headers = String::new();
    for name in &found.signed_headers {
        let values: Vec<String> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| collapse(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        if values.is_empty() {
            return Err(AuthError::Malformed(format!(
                "signed header {name} is missing"
            )));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let query = canonical_query(&pairs, found.expires.is_some());
    let scope = format!(
        "{}/{}/{}/aws4_request",
        found.scope_date, found.region, found.service
    );
    let key = signing_key(
        &creds.secret,
        &found.scope_date,
        &found.region,
        &found.service,
    );
    let decoded = percent_encoding::percent_decode_str(req.path).collect::<Vec<u8>>();
    let paths = [encode(&decoded, false), req.path.to_string()];
    for (i, path) in paths.iter().enumerate() {
        if i == 1 && paths[0] == paths[1] {
            break;
        }
        let canonical = format!(
            "{}\n{path}\n{query}\n{headers}\n{}\n{}",
            req.method,
            found.signed_headers.join(";"),
            found.payload
        );
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
            found.amz_date,
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let want = hex::encode(hmac(&key, to_sign.as_bytes()));
        if bool::from(want.as_bytes().ct_eq(found.signature.as_bytes())) {
            return Ok(());
        }
    }
    Err(AuthError::BadSignature)
}

/// What a signature names.
struct Found {
    access_key: String,
    scope_date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    payload: String,
    /// Presigned: seconds it lives.
    expires: Option<u64>,
}

fn credential(c: &str) -> Result<(String, String, String, String), AuthError> {
    let parts: Vec<&str> = c.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"] if date.len() == 8 => Ok((
            key.to_string(),
            date.to_string(),
            region.to_string(),
            service.to_string(),
        )),
        _ => Err(AuthError::Malformed(
            "Credential must be KEY/DATE/REGION/SERVICE/aws4_request".into(),
        )),
    }
}

fn from_header(h: &str, headers: &HeaderMap) -> Result<Found, AuthError> {
    let Some(rest) = h.strip_prefix("AWS4-HMAC-SHA256") else {
        return Err(AuthError::Malformed(
            "only AWS4-HMAC-SHA256 signatures are accepted".into(),
        ));
    };
    let mut cred = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').unwrap_or(("", ""));
        match k {
            "Credential" => cred = Some(v.to_string()),
            "SignedHeaders" => signed = Some(v.to_string()),
            "Signature" => sig = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(cred), Some(signed), Some(sig)) = (cred, signed, sig) else {
        return Err(AuthError::Malformed(
            "expected Credential, SignedHeaders and Signature".into(),
        ));
    };
    let (access_key, scope_date, region, service) = credential(&cred)?;
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let amz_date =
        header("x-amz-date").ok_or_else(|| AuthError::Malformed("x-amz-date is missing".into()))?;
    let payload = header("x-amz-content-sha256")
        .ok_or_else(|| AuthError::Malformed("x-amz-content-sha256 is missing".into()))?;
    Ok(Found {
        access_key,
        scope_date,
        region,
        service,
        signed_headers: signed.split(';').map(|s| s.to_ascii_lowercase()).collect(),
        signature: sig,
        amz_date,
        payload,
        expires: None,
    })
}

fn from_query(pairs: &[(String, String)]) -> Result<Found, AuthError> {
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(sig) = get("X-Amz-Signature") else {
        if get("Signature").is_some() && get("AWSAccessKeyId").is_some() {
            return Err(AuthError::Malformed(
                "a SigV2 presigned URL: only AWS4-HMAC-SHA256 (SigV4) signatures are accepted"
                    .into(),
            ));
        }
        return Err(AuthError::Anonymous);
    };
    if get("X-Amz-Algorithm").as_deref() != Some("AWS4-HMAC-SHA256") {
        return Err(AuthError::Malformed(
            "only AWS4-HMAC-SHA256 signatures are accepted".into(),
        ));
    }
    let need = |k: &str| get(k).ok_or_else(|| AuthError::Malformed(format!("{k} is missing")));
    let (access_key, scope_date, region, service) = credential(&need("X-Amz-Credential")?)?;
    let expires: u64 = need("X-Amz-Expires")?
        .parse()
        .map_err(|_| AuthError::Malformed("bad X-Amz-Expires".into()))?;
    if expires > MAX_EXPIRES {
        return Err(AuthError::Malformed("X-Amz-Expires is over 7 days".into()));
    }
    Ok(Found {
        access_key,
        scope_date,
        region,
        service,
        signed_headers: need("X-Amz-SignedHeaders")?
            .split(';')
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        signature: sig,
        amz_date: need("X-Amz-Date")?,
        payload: get("X-Amz-Content-Sha256").unwrap_or_else(|| "UNSIGNED-PAYLOAD".into()),
        expires: Some(expires),
    })
}

/// The query's pairs, decoded as S3 decodes them: `+` is a space (object_store sends a space
/// in a value as `+` and signs it as `%20`); a `+` itself comes as `%2B`.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn canonical_query(pairs: &[(String, String)], presigned: bool) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| (encode(k.as_bytes(), true), encode(v.as_bytes(), true)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// AWS's URI encoding: every byte but `A-Za-z0-9-._~` as `%XX` (upper case); `/` too when
/// `slash`.
fn encode(bytes: &[u8], slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A header value trimmed, with runs of spaces made one.
fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &Secret, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(
        format!("AWS4{}", secret.expose()).as_bytes(),
        date.as_bytes(),
    );
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = t.and_utc().timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_plus_in_the_query_is_a_space_and_an_encoded_one_a_plus() {
        assert_eq!(
            query_pairs("start-after=ds%2F0000%2F00499+x.txt&prefix=a%2Bb&list-type=2"),
            [
                ("start-after".into(), "ds/0000/00499 x.txt".into()),
                ("prefix".into(), "a+b".into()),
                ("list-type".into(), "2".into())
            ]
        );
    }

    /// AWS's published example (the S3 documentation's "GET Object" example of header
    /// signing): key AKIAIOSFODNN7EXAMPLE, bucket examplebucket, 2013-05-24.
    #[test]
    fn the_aws_documentation_example_verifies_and_a_changed_byte_does_not() {
        let creds =
            Credentials::parse("AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
                .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "host",
            HeaderValue::from_static("examplebucket.s3.amazonaws.com"),
        );
        h.insert("range", HeaderValue::from_static("bytes=0-9"));
        h.insert(
            "x-amz-content-sha256",
            HeaderValue::from_static(
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        );
        h.insert("x-amz-date", HeaderValue::from_static("20130524T000000Z"));
        h.insert("authorization", HeaderValue::from_static(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        ));
        let then = parse_amz_date("20130524T000100Z").unwrap();
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &h,
        };
        assert_eq!(verify(&req, &creds, then), Ok(()));
        // Another path, method, range or secret, or a day later: refused.
        for (method, path) in [("GET", "/test.txT"), ("HEAD", "/test.txt")] {
            let r = Request {
                method,
                path,
                query: "",
                headers: &h,
            };
            assert_eq!(verify(&r, &creds, then), Err(AuthError::BadSignature));
        }
        let r = Request {
            query: "x=1",
            ..req
        };
        assert_eq!(verify(&r, &creds, then), Err(AuthError::BadSignature));
        let mut h2 = h.clone();
        h2.insert("range", HeaderValue::from_static("bytes=0-10"));
        let r = Request { headers: &h2, ..r };
        assert_eq!(
            verify(&Request { query: "", ..r }, &creds, then),
            Err(AuthError::BadSignature)
        );
        let other = Credentials::parse("AKIAIOSFODNN7EXAMPLE:another").unwrap();
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &h,
        };
        assert_eq!(verify(&req, &other, then), Err(AuthError::BadSignature));
        let wrong_id =
            Credentials::parse("AKIDOTHER:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").unwrap();
        assert_eq!(verify(&req, &wrong_id, then), Err(AuthError::UnknownKey));
        let later = then + Duration::from_secs(24 * 3600);
        assert_eq!(verify(&req, &creds, later), Err(AuthError::Skewed));
    }

    /// AWS's presigned-URL example (the same key, 2013-05-24, 86,400 seconds).
    #[test]
    fn the_aws_presigned_example_verifies_until_it_expires() {
        let creds =
            Credentials::parse("AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
                .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "host",
            HeaderValue::from_static("examplebucket.s3.amazonaws.com"),
        );
        let query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let req = Request {
            method: "GET",
            path: "/test.txt",
            query,
            headers: &h,
        };
        assert!(is_signed(&req));
        let t = parse_amz_date("20130524T120000Z").unwrap();
        assert_eq!(verify(&req, &creds, t), Ok(()));
        let late = parse_amz_date("20130525T000001Z").unwrap();
        assert_eq!(verify(&req, &creds, late), Err(AuthError::Expired));
        let tampered = query.replace("86400", "86401");
        let req = Request {
            query: &tampered,
            ..req
        };
        assert_eq!(verify(&req, &creds, t), Err(AuthError::BadSignature));
    }

    #[test]
    fn key_files_and_malformed_signatures_are_refused_clearly() {
        for bad in [
            "",
            "nocolon",
            ":secret",
            "id:",
            "id with space:s",
            "a:b\nc:d",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Credentials::parse("AKID:se:cret\n").is_ok());
        let creds = Credentials::parse("AKID:secret").unwrap();
        let now = SystemTime::now();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("x"));
        let unsigned = Request {
            method: "GET",
            path: "/b/k",
            query: "",
            headers: &h,
        };
        assert!(!is_signed(&unsigned));
        assert_eq!(verify(&unsigned, &creds, now), Err(AuthError::Anonymous));
        let v2 = Request {
            query: "AWSAccessKeyId=AKID&Signature=abc%3D&Expires=1",
            ..unsigned
        };
        assert!(
            matches!(verify(&v2, &creds, now), Err(AuthError::Malformed(m)) if m.contains("SigV2"))
        );
        for auth in [
            "AWS AKID:sig",
            "AWS4-HMAC-SHA256 Credential=AKID/2013/us/s3/aws4_request,SignedHeaders=host,Signature=00",
            "AWS4-HMAC-SHA256 SignedHeaders=host",
        ] {
            h.insert("authorization", HeaderValue::from_str(auth).unwrap());
            let r = Request { method: "GET", path: "/b/k", query: "", headers: &h };
            assert!(matches!(verify(&r, &creds, now), Err(AuthError::Malformed(_))), "{auth}");
        }
    }
}
