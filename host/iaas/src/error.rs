//! What can go wrong calling the cloud, by the cloud's `ret_code`, and what
//! to do about it. Every message names the action; none can carry the
//! secret key (it is never in a URL, a response or a parameter).

use std::time::Duration;

use crate::CredentialsError;
use crate::types::JobId;

/// How the client treats a `ret_code` (the table in the API reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// 5000 internal, 5100 busy/timeout, 5200 backend resources, 5300
    /// updating: retry with jittered backoff.
    Busy,
    /// 1300: the time_stamp was too old or new; re-sign with a fresh one.
    Expired,
    /// 2500: stop calling this action for a while.
    Quota,
    /// Everything else: retrying cannot help at this layer.
    Final,
}

pub(crate) fn classify(ret_code: i64) -> Class {
    match ret_code {
        5000 | 5100 | 5200 | 5300 => Class::Busy,
        1300 => Class::Expired,
        2500 => Class::Quota,
        _ => Class::Final,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{action}: the cloud refused the credentials (ret_code 1200: {message}): the access key id or secret access key is wrong or disabled; check qy_access_key_id and qy_secret_access_key in the credentials file"
    )]
    Auth { action: String, message: String },

    #[error(
        "{action}: the cloud says the request expired (ret_code 1300: {message}) even after re-signing with a fresh time_stamp: this node's clock is more than 60 s off; fix its time sync (chrony/NTP)"
    )]
    ClockSkew { action: String, message: String },

    #[error("{action}: quota exceeded (ret_code 2500: {message}); raise the resource or API quota in the QingCloud console or lower the NIC pool's targets. {action} is not called again for {}", humantime::format_duration(*retry_in))]
    Quota {
        action: String,
        message: String,
        /// How long this client keeps refusing the action.
        retry_in: Duration,
    },

    #[error(
        "{action}: permission denied or resource busy (ret_code 1400: {message}); if a NIC is in use or the instance is not running, retry later, else grant the access key {action}"
    )]
    Denied { action: String, message: String },

    #[error("{action}: not found (ret_code 2100: {message})")]
    NotFound { action: String, message: String },

    #[error(
        "{action}: the account balance is insufficient (ret_code 2400: {message}); top up the QingCloud account"
    )]
    Balance { action: String, message: String },

    #[error(
        "{action}: the cloud rejected the request (ret_code {code}: {message}); this is a bug in hostnic, please report it"
    )]
    BadRequest {
        action: String,
        code: i64,
        message: String,
    },

    #[error(
        "{action}: the cloud is still busy or failing after {attempts} attempts (ret_code {code}: {message}); try again later, or raise connection_retries"
    )]
    Unavailable {
        action: String,
        code: i64,
        message: String,
        attempts: u32,
    },

    #[error("{action}: ret_code {code}: {message}")]
    Api {
        action: String,
        code: i64,
        message: String,
    },

    #[error(
        "{action}: cannot reach the QingCloud API at {endpoint} after {attempts} attempts ({}); check host, port and protocol in the credentials file and the node's network",
        root_cause(source)
    )]
    Transport {
        action: String,
        endpoint: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },

    #[error(
        "{action}: {endpoint} answered HTTP {status} with a body that is not the expected JSON: {source}; is it really the QingCloud API?"
    )]
    Response {
        action: String,
        endpoint: String,
        status: u16,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{action}: the cloud's answer is inconsistent: {problem}; describe the resources before acting on them"
    )]
    Unexpected { action: String, problem: String },

    #[error("{action}: refused before sending: {problem}; this is a bug in the caller")]
    Invalid {
        action: &'static str,
        problem: String,
    },

    #[error(
        "job {job_id} ({job_action}) failed in the cloud; its resources may be half-changed: describe them before reuse"
    )]
    JobFailed { job_id: JobId, job_action: String },

    #[error("job {job_id} still {status} after {}; the cloud may finish it later: describe its resources before reuse", humantime::format_duration(*waited))]
    JobTimeout {
        job_id: JobId,
        status: String,
        waited: Duration,
    },

    #[error(transparent)]
    Credentials(#[from] CredentialsError),

    #[error("cannot set up the HTTP client for the QingCloud API")]
    Setup {
        #[source]
        source: reqwest::Error,
    },
}

/// The innermost cause ("Connection refused (os error 111)"), which says
/// more than reqwest's own "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

impl Error {
    /// The error for a final (not retried) `ret_code`.
    pub(crate) fn from_ret_code(action: &str, code: i64, message: String) -> Error {
        let action = action.to_string();
        match code {
            1100 | 1101 => Error::BadRequest {
                action,
                code,
                message,
            },
            1200 => Error::Auth { action, message },
            1400 => Error::Denied { action, message },
            2100 => Error::NotFound { action, message },
            2400 => Error::Balance { action, message },
            _ => Error::Api {
                action,
                code,
                message,
            },
        }
    }

    /// The cloud's `ret_code`, if the cloud answered with one.
    pub fn ret_code(&self) -> Option<i64> {
        match self {
            Error::Auth { .. } => Some(1200),
            Error::ClockSkew { .. } => Some(1300),
            Error::Quota { .. } => Some(2500),
            Error::Denied { .. } => Some(1400),
            Error::NotFound { .. } => Some(2100),
            Error::Balance { .. } => Some(2400),
            Error::BadRequest { code, .. }
            | Error::Unavailable { code, .. }
            | Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// "Already gone": what teardown treats as done.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub fn is_quota(&self) -> bool {
        matches!(self, Error::Quota { .. })
    }

    /// Worth trying again later (at the caller's pace): the cloud was busy
    /// or unreachable, a resource was in a transient state, or a job was
    /// slow. Not: configuration, quota, balance or bugs.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Transport { .. }
                | Error::Denied { .. }
                | Error::JobTimeout { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_reference_table() {
        for c in [5000, 5100, 5200, 5300] {
            assert_eq!(classify(c), Class::Busy);
        }
        assert_eq!(classify(1300), Class::Expired);
        assert_eq!(classify(2500), Class::Quota);
        for c in [1100, 1101, 1200, 1400, 2100, 2110, 2400, 4242] {
            assert_eq!(classify(c), Class::Final);
        }
    }

    #[test]
    fn final_codes_become_typed_errors() {
        let e = |c| Error::from_ret_code("DeleteNics", c, format!("Msg{c}"));
        assert!(matches!(e(1100), Error::BadRequest { code: 1100, .. }));
        assert!(matches!(e(1101), Error::BadRequest { code: 1101, .. }));
        assert!(e(2100).is_not_found());
        assert!(e(1400).is_transient());
        assert!(!e(1200).is_transient());
        for c in [1100, 1101, 1200, 1400, 2100, 2110, 2400] {
            assert_eq!(e(c).ret_code(), Some(c));
            let text = e(c).to_string();
            assert!(text.starts_with("DeleteNics: "), "{text}");
            assert!(text.contains(&format!("Msg{c}")), "{text}");
        }
        let auth = e(1200).to_string();
        assert!(
            auth.contains("access key id or secret access key is wrong"),
            "{auth}"
        );
        let quota = Error::Quota {
            action: "CreateNics".into(),
            message: "QuotaExceeded".into(),
            retry_in: Duration::from_secs(300),
        };
        assert!(quota.to_string().contains("quota exceeded"), "{quota}");
        assert!(quota.to_string().contains("5m"), "{quota}");
    }
}
