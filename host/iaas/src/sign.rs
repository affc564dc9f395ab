//! Request signing exactly as the QingCloud API checks it (signature version 1,
//! HmacSHA256). Pure functions, no I/O and no clock: the client signs with
//! them and the IaaS simulator verifies with the very same code, while the
//! published test vectors (see the tests below) tie both to the real cloud
//! rather than to each other.
//!
//! 1. every parameter but `signature`, sorted by name byte-wise;
//! 2. names and values percent-encoded, upper-case hex, everything but the
//!    RFC 3986 unreserved characters (so a space is `%20`, never `+`, and
//!    `:` is `%3A`), joined as `name=value&…`;
//! 3. string to sign `METHOD\npath\ncanonical`;
//! 4. HMAC-SHA256 keyed with the secret, standard base64 with padding,
//!    percent-encoded once more when appended as `&signature=`.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

use crate::SecretKey;

pub const SIGNATURE_METHOD: &str = "HmacSHA256";
pub const SIGNATURE_VERSION: &str = "1";
/// The parameter carrying the signature; it is not part of what is signed.
pub const SIGNATURE: &str = "signature";
/// The cloud refuses a `time_stamp` further than this from its own clock
/// (ret_code 1300).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Everything except `A-Za-z0-9-_.~`. The URL-component sets that
/// percent-encoding ships leave `:` or `/` alone, which would hash to a
/// different signature than the cloud computes.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

type HmacSha256 = Hmac<Sha256>;

/// Why a received request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the request has no signature parameter")]
    Missing,
    #[error("the signature parameter is repeated or not base64")]
    Malformed,
    #[error("the signature does not match the request (wrong secret key or altered parameters)")]
    Mismatch,
    #[error("the query string is not valid percent-encoded UTF-8")]
    BadQuery,
}

/// Percent-encodes one name or value the way the signature needs it.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

/// The canonical query: every pair but `signature`, sorted by name (then by
/// value, which only matters for a repeated name), encoded and joined.
///
/// This is also the query string the client sends, so the server decodes
/// exactly the values that were signed.
pub fn canonical_query<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .filter(|(k, _)| *k != SIGNATURE)
        .collect();
    // `str` orders byte-wise, which is what the cloud does: `nics.10`
    // sorts before `nics.2`.
    pairs.sort_unstable();
    let mut out = String::new();
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&encode(k));
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

pub fn string_to_sign(method: &str, path: &str, canonical_query: &str) -> String {
    format!("{method}\n{path}\n{canonical_query}")
}

fn keyed(secret: &SecretKey, method: &str, path: &str, canonical: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(string_to_sign(method, path, canonical).as_bytes());
    mac
}

/// The signature (base64, not yet percent-encoded) of a request.
pub fn signature<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    path: &str,
    params: &[(K, V)],
    secret: &SecretKey,
) -> String {
    let mac = keyed(secret, method, path, &canonical_query(params));
    BASE64.encode(mac.finalize().into_bytes())
}

/// The complete query string to send: the canonical query followed by
/// `&signature=<percent-encoded signature>`.
pub fn signed_query<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    path: &str,
    params: &[(K, V)],
    secret: &SecretKey,
) -> String {
    let canonical = canonical_query(params);
    let mac = keyed(secret, method, path, &canonical);
    let sig = BASE64.encode(mac.finalize().into_bytes());
    format!("{canonical}&{SIGNATURE}={}", encode(&sig))
}

/// Checks a received request: `params` are the decoded query pairs (see
/// [`decode_query`]), `signature` included. The comparison is constant-time
/// (the MAC crate's `verify_slice`).
pub fn verify<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    path: &str,
    params: &[(K, V)],
    secret: &SecretKey,
) -> Result<(), VerifyError> {
    let mut sigs = params
        .iter()
        .filter(|(k, _)| k.as_ref() == SIGNATURE)
        .map(|(_, v)| v.as_ref());
    let sig = sigs.next().ok_or(VerifyError::Missing)?;
    if sigs.next().is_some() {
        return Err(VerifyError::Malformed);
    }
    let raw = BASE64.decode(sig).map_err(|_| VerifyError::Malformed)?;
    keyed(secret, method, path, &canonical_query(params))
        .verify_slice(&raw)
        .map_err(|_| VerifyError::Mismatch)
}

/// Splits a raw query string into decoded pairs. Strict percent-decoding:
/// `+` stays `+` (we never send it for a space, and a form-style decoder
/// would corrupt base64 signatures that arrive unencoded).
pub fn decode_query(raw: &str) -> Result<Vec<(String, String)>, VerifyError> {
    let dec = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| VerifyError::BadQuery)
    };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((dec(k)?, dec(v)?))
        })
        .collect()
}

/// `YYYY-MM-DDThh:mm:ssZ` in UTC, the `time_stamp` format.
pub fn format_time_stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn parse_time_stamp(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// Whether the cloud would accept this `time_stamp` at `now` (else 1300).
pub fn time_stamp_fresh(time_stamp: &str, now: SystemTime) -> bool {
    let Some(t) = parse_time_stamp(time_stamp) else {
        return false;
    };
    let skew = now.duration_since(t).unwrap_or_else(|e| e.duration());
    skew <= MAX_CLOCK_SKEW
}

#[cfg(test)]
mod tests {
    use super::*;

    // From the reference (QingCloud's signature documentation).
    const VECTOR_QUERY: &str = "access_key_id=QYACCESSKEYIDEXAMPLE&action=RunInstances&count=1&image_id=centos64x86a&instance_name=demo&instance_type=small_b&login_mode=passwd&login_passwd=QingCloud20130712&signature_method=HmacSHA256&signature_version=1&time_stamp=2013-08-27T14%3A30%3A10Z&version=1&vxnets.1=vxnet-0&zone=pek3a";

    fn secret() -> SecretKey {
        SecretKey::new("SECRETACCESSKEY")
    }

    /// The vector's parameters, deliberately out of order.
    fn vector_params(zone: &str) -> Vec<(String, String)> {
        let mut p = decode_query(VECTOR_QUERY).unwrap();
        p.reverse();
        for (k, v) in &mut p {
            if k == "zone" {
                *v = zone.to_string();
            }
        }
        p
    }

    #[test]
    fn published_vectors() {
        let p = vector_params("pek3a");
        assert_eq!(canonical_query(&p), VECTOR_QUERY);
        assert_eq!(
            signature("GET", "/iaas/", &p, &secret()),
            "byjccvWIvAftaq+oublemagH3bYAlDWxxLFAzAsyslw="
        );
        assert_eq!(
            signed_query("GET", "/iaas/", &p, &secret()),
            format!("{VECTOR_QUERY}&signature=byjccvWIvAftaq%2BoublemagH3bYAlDWxxLFAzAsyslw%3D")
        );
        assert_eq!(
            signature("GET", "/iaas/", &vector_params("pek1"), &secret()),
            "32bseYy39DOlatuewpeuW5vpmW51sD1A/JdGynqSpP8="
        );
    }

    #[test]
    fn encoding_rules() {
        assert_eq!(encode("a b"), "a%20b");
        assert_eq!(encode("2013-08-27T14:30:10Z"), "2013-08-27T14%3A30%3A10Z");
        assert_eq!(encode("a+b/c=d"), "a%2Bb%2Fc%3Dd");
        assert_eq!(encode("Az09-_.~"), "Az09-_.~");
        assert_eq!(encode("52:54:ab"), "52%3A54%3Aab");
        // Upper-case hex, UTF-8 bytes.
        assert_eq!(encode("é*"), "%C3%A9%2A");
    }

    #[test]
    fn canonical_sorts_bytewise_and_skips_the_signature() {
        let p = [
            ("nics.2", "b"),
            ("signature", "x"),
            ("nics.10", "j"),
            ("Zone", "z"),
            ("action", "A"),
        ];
        assert_eq!(canonical_query(&p), "Zone=z&action=A&nics.10=j&nics.2=b");
    }

    #[test]
    fn verify_round_trip_and_refusals() {
        let p = vector_params("pek3a");
        let sent = signed_query("GET", "/iaas/", &p, &secret());
        let got = decode_query(&sent).unwrap();
        assert_eq!(verify("GET", "/iaas/", &got, &secret()), Ok(()));

        let wrong = SecretKey::new("OTHERSECRET");
        assert_eq!(
            verify("GET", "/iaas/", &got, &wrong),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("POST", "/iaas/", &got, &secret()),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("GET", "/iaas", &got, &secret()),
            Err(VerifyError::Mismatch)
        );
        let mut tampered = got.clone();
        tampered[0].1.push('x');
        assert_eq!(
            verify("GET", "/iaas/", &tampered, &secret()),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("GET", "/iaas/", &p, &secret()),
            Err(VerifyError::Missing)
        );
        let mut twice = got.clone();
        twice.push(("signature".into(), "AAAA".into()));
        assert_eq!(
            verify("GET", "/iaas/", &twice, &secret()),
            Err(VerifyError::Malformed)
        );
        let mut garbage = p.clone();
        garbage.push(("signature".into(), "not base64!".into()));
        assert_eq!(
            verify("GET", "/iaas/", &garbage, &secret()),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn decode_query_is_strict() {
        assert_eq!(
            decode_query("a=1+2&b=%20&c&&d=%3A").unwrap(),
            [("a", "1+2"), ("b", " "), ("c", ""), ("d", ":")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(decode_query("a=%FF"), Err(VerifyError::BadQuery));
    }

    #[test]
    fn time_stamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_377_613_810);
        assert_eq!(format_time_stamp(t), "2013-08-27T14:30:10Z");
        assert_eq!(parse_time_stamp("2013-08-27T14:30:10Z"), Some(t));
        assert!(time_stamp_fresh("2013-08-27T14:30:10Z", t + MAX_CLOCK_SKEW));
        assert!(time_stamp_fresh("2013-08-27T14:30:10Z", t - MAX_CLOCK_SKEW));
        assert!(!time_stamp_fresh(
            "2013-08-27T14:30:10Z",
            t + MAX_CLOCK_SKEW + Duration::from_secs(1)
        ));
        assert!(!time_stamp_fresh("yesterday", t));
    }
}
