//! The secret access key, in a type that cannot be printed.
//!
//! The key signs requests and is never sent, so the only ways it can leak are
//! our own logs, error messages and debug prints. All of those go through
//! `Debug`/`Display`, and both print `<redacted>`. Reading the key is
//! crate-private ([`SecretKey::expose`]) and happens in exactly one place, the
//! HMAC in [`crate::sign`].

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

const REDACTED: &str = "<redacted>";

/// A QingCloud secret access key (`qy_secret_access_key`).
///
/// No `Serialize`, no `PartialEq` (a non-constant-time comparison would be a
/// timing oracle in the simulator), no accessor outside this crate.
#[derive(Clone)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(secret: impl Into<String>) -> SecretKey {
        SecretKey(secret.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key itself: only for computing the HMAC.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> serde::Deserialize<'de> for SecretKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

/// Accepts the scalars YAML may turn an unquoted key into, and — unlike
/// serde's default messages ("invalid type: floating point `1e5`…") — never
/// echoes the value in an error.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: de::Error>() -> E {
        E::custom("qy_secret_access_key must be a string (put it in quotes)")
    }
}

impl Visitor<'_> for SecretVisitor {
    type Value = SecretKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the secret access key as a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretKey, E> {
        Ok(SecretKey::new(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SecretKey, E> {
        Ok(SecretKey(v))
    }

    // An all-digit key written without quotes arrives as a number; its
    // decimal text is exactly what the user wrote.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SecretKey, E> {
        Ok(SecretKey(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SecretKey, E> {
        Ok(SecretKey(v.to_string()))
    }

    // A float's text may differ from what was written (`1e5`, `0.10`), so a
    // key that parsed as one cannot be recovered faithfully: refuse it.
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretKey, E> {
        Err(Self::refuse())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretKey, E> {
        Err(Self::refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = SecretKey::new("hunter2-SECRET");
        for text in [
            format!("{s}"),
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{:?}", Some(&s)),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains(REDACTED), "{text}");
        }
        assert_eq!(s.expose(), "hunter2-SECRET");
    }

    #[test]
    fn numeric_keys_keep_their_digits_and_floats_are_refused_silently() {
        #[derive(serde::Deserialize)]
        struct W {
            k: SecretKey,
        }
        let w: W = serde_json::from_str(r#"{"k": 12345678901234}"#).unwrap();
        assert_eq!(w.k.expose(), "12345678901234");
        let err = serde_json::from_str::<W>(r#"{"k": 98765.4321}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("98765"), "{err}");
        assert!(err.contains("quotes"), "{err}");
    }
}
