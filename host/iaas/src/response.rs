//! Reading one answer: the [`Envelope`] first, to route on `ret_code`, then
//! the typed answer when it is 0, or how the attempt ended ([`Attempt`]).
//! Pure (no I/O) so it can be tested and fuzzed on its own;
//! [`crate::client`] sends the request and applies the retry policy to
//! what this returns.

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{Class, Error, classify};
use crate::types::Envelope;

/// How one attempt ended, when it did not succeed.
pub(crate) enum Attempt {
    /// Worth another try after a backoff.
    Retry(Failure),
    /// 1300: worth one more try with a fresh signature.
    Expired(String),
    Quota(String),
    Final(Error),
}

/// The last retryable failure, reported once retries run out.
pub(crate) enum Failure {
    Code { code: i64, message: String },
    Transport(reqwest::Error),
}

/// Decodes the body of `action`'s answer (HTTP `status`, from `endpoint`):
/// `T` when `ret_code` is 0, else how the client should treat the code.
pub(crate) fn decode<T: DeserializeOwned>(
    action: &str,
    endpoint: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<T, Attempt> {
    let bad_body = |source| {
        Attempt::Final(Error::Response {
            action: action.to_string(),
            endpoint: endpoint.to_string(),
            status: status.as_u16(),
            source,
        })
    };
    let envelope = match serde_json::from_slice::<Envelope>(body) {
        Ok(e) => e,
        // A proxy or load balancer in trouble: as good as 5000.
        Err(_) if status.is_server_error() => {
            return Err(Attempt::Retry(Failure::Code {
                code: 5000,
                message: format!("HTTP {status} without an API answer"),
            }));
        }
        Err(e) => return Err(bad_body(e)),
    };
    if envelope.ret_code == 0 {
        return serde_json::from_slice(body).map_err(bad_body);
    }
    let (code, message) = (envelope.ret_code, envelope.message);
    Err(match classify(code) {
        Class::Busy => Attempt::Retry(Failure::Code { code, message }),
        Class::Expired => Attempt::Expired(message),
        Class::Quota => Attempt::Quota(message),
        Class::Final => Attempt::Final(Error::from_ret_code(action, code, message)),
    })
}

/// Runs [`decode`] on an arbitrary answer and drops the outcome (after
/// rendering any error, which is what a caller would do with it). For the
/// fuzz targets, through [`crate::fuzzing`].
pub(crate) fn exercise<T: DeserializeOwned>(action: &str, status: u16, body: &[u8]) {
    let Ok(status) = StatusCode::from_u16(status) else {
        return;
    };
    match decode::<T>(action, "https://api.fuzz.invalid:443/iaas/", status, body) {
        Ok(_) | Err(Attempt::Expired(_) | Attempt::Quota(_)) => {}
        Err(Attempt::Final(e)) => drop(e.to_string()),
        Err(Attempt::Retry(Failure::Code { code, message })) => {
            assert!(
                classify(code) == Class::Busy || (code == 5000 && status.is_server_error()),
                "{action}: retry on ret_code {code} ({message})"
            );
        }
        Err(Attempt::Retry(Failure::Transport(e))) => {
            panic!("{action}: decoding produced a transport failure: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DescribeNicsResponse, JobResponse, Page};

    const EP: &str = "https://api.example:443/iaas/";

    fn decode_as<T: DeserializeOwned>(status: u16, body: &str) -> Result<T, Attempt> {
        decode(
            "DescribeNics",
            EP,
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
        )
    }

    #[test]
    fn ok_answers_decode_into_their_type() {
        let page: DescribeNicsResponse = decode_as(
            200,
            r#"{"action":"DescribeNicsResponse","ret_code":0,"total_count":1,"nic_set":[{"nic_id":"52:54:00:00:00:01"}]}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(page.into_parts().1, 1);
        // ret_code 0 but not the expected shape: a bad body, never retried.
        let Err(Attempt::Final(e)) = decode_as::<JobResponse>(200, r#"{"ret_code":0}"#) else {
            panic!("expected a final error")
        };
        assert!(matches!(e, Error::Response { status: 200, .. }), "{e}");
    }

    #[test]
    fn codes_are_classified() {
        let body = |c: i64| format!(r#"{{"ret_code":{c},"message":"m{c}"}}"#);
        assert!(matches!(
            decode_as::<JobResponse>(200, &body(5100)),
            Err(Attempt::Retry(Failure::Code { code: 5100, .. }))
        ));
        assert!(matches!(
            decode_as::<JobResponse>(200, &body(1300)),
            Err(Attempt::Expired(m)) if m == "m1300"
        ));
        assert!(matches!(
            decode_as::<JobResponse>(200, &body(2500)),
            Err(Attempt::Quota(m)) if m == "m2500"
        ));
        assert!(matches!(
            decode_as::<JobResponse>(200, &body(2100)),
            Err(Attempt::Final(Error::NotFound { .. }))
        ));
    }

    #[test]
    fn non_json_is_busy_only_from_a_server_error() {
        let Err(Attempt::Retry(Failure::Code { code, message })) =
            decode_as::<JobResponse>(502, "<html>Bad Gateway</html>")
        else {
            panic!("expected a retry")
        };
        assert_eq!(code, 5000);
        assert_eq!(message, "HTTP 502 Bad Gateway without an API answer");
        assert!(matches!(
            decode_as::<JobResponse>(404, "<html>Not Found</html>"),
            Err(Attempt::Final(Error::Response { status: 404, .. }))
        ));
    }
}
