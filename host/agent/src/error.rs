//! The agent's errors: what went wrong, as a kind the code decides on, and
//! what caused it, for the operator's event. The one place a kind becomes
//! a CNI error code ([`Error::code`]) and a cause an event reason
//! ([`Error::reason`]); nothing decides on a message's text.

use hostnic_proto::cni::{CniError, code};

/// What went wrong, as far as the caller must act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The runtime's environment cannot be served: a netns that is the
    /// node's, an interface name the pod already has.
    InvalidEnv,
    /// The network config, the runtime's asks or a guest's answer are
    /// wrong for this pod.
    InvalidConfig,
    /// Transient: the cloud busy, another ADD of the attachment under way.
    TryAgain,
    /// A cold ADD waited its time while its NIC is still being attached:
    /// not a failure, the retry finds the NIC warm.
    StillAttaching,
    /// Nothing the pod can have: no free NIC, no address.
    Exhausted,
    /// The resource reserved for the ADD turned out to be gone (a NIC no
    /// longer on the node): the ADD tries another. Never answered.
    Gone,
    /// No such attachment (CHECK).
    Unknown,
    /// The pod no longer has what ADD gave it (CHECK).
    CheckFailed,
    /// Something the agent should have been able to do failed (a netlink
    /// call, a record write).
    Internal,
}

/// What caused an error, when an operator must act on that (the event's
/// reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A policy guest refused the pod.
    PolicyRefused,
    /// A policy guest failed.
    PolicyFailed,
    /// The cloud's quota (ret_code 2500).
    CloudQuota,
    /// The cloud refused the credentials (ret_code 1200).
    CloudCredentials,
    /// The vxnet has no free address.
    VxnetExhausted,
    /// The VM has all the NICs it may have.
    NicLimit,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct Error {
    pub kind: Kind,
    pub cause: Option<Cause>,
    pub msg: String,
    /// What to do about it, when the message does not say.
    pub details: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            cause: None,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn internal(msg: impl std::fmt::Display) -> Error {
        Error::new(Kind::Internal, msg.to_string())
    }

    pub fn try_again(msg: impl Into<String>) -> Error {
        Error::new(Kind::TryAgain, msg)
    }

    pub fn invalid_config(msg: impl Into<String>) -> Error {
        Error::new(Kind::InvalidConfig, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Error {
        Error::new(Kind::InvalidEnv, msg)
    }

    pub fn exhausted(msg: impl Into<String>) -> Error {
        Error::new(Kind::Exhausted, msg)
    }

    pub fn because(mut self, cause: Cause) -> Error {
        self.cause = Some(cause);
        self
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Error {
        self.details = details.into();
        self
    }

    /// The same error, its message prefixed with what was being done.
    pub fn context(mut self, what: impl std::fmt::Display) -> Error {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The CNI error code of this kind.
    pub fn code(&self) -> u32 {
        match self.kind {
            Kind::InvalidEnv => code::INVALID_ENV,
            Kind::InvalidConfig => code::INVALID_CONFIG,
            Kind::TryAgain | Kind::StillAttaching => code::TRY_AGAIN_LATER,
            Kind::Exhausted => code::NO_FREE_NIC,
            Kind::Unknown => code::UNKNOWN_CONTAINER,
            Kind::CheckFailed => code::CHECK_FAILED,
            Kind::Gone | Kind::Internal => code::INTERNAL,
        }
    }

    /// The reason of a failed ADD's event on its pod.
    pub fn reason(&self) -> &'static str {
        match self.cause {
            Some(Cause::PolicyRefused) => "PolicyRefused",
            Some(Cause::PolicyFailed) => "PolicyFailed",
            Some(Cause::CloudQuota) => "CloudQuotaExceeded",
            Some(Cause::CloudCredentials) => "CloudCredentialsRefused",
            Some(Cause::VxnetExhausted) => "VxnetExhausted",
            Some(Cause::NicLimit) => "NicLimitReached",
            None => "AddFailed",
        }
    }

    /// Whether the ADD failed: a cold ADD told to come back while its NIC
    /// is on its way has not.
    pub fn is_failure(&self) -> bool {
        self.kind != Kind::StillAttaching
    }
}

/// The cause an operator must act on behind a cloud error, if any.
pub fn cloud_cause(e: &hostnic_iaas::Error) -> Option<Cause> {
    match e {
        hostnic_iaas::Error::Quota { .. } => Some(Cause::CloudQuota),
        hostnic_iaas::Error::Auth { .. } => Some(Cause::CloudCredentials),
        // The cloud answers a vxnet without free addresses with 5200 or,
        // on some zones, 1400 naming ResourceInsufficient.
        hostnic_iaas::Error::Denied { message, .. } if message.contains("ResourceInsufficient") => {
            Some(Cause::VxnetExhausted)
        }
        e if e.ret_code() == Some(5200) => Some(Cause::VxnetExhausted),
        _ => None,
    }
}

impl From<Error> for CniError {
    fn from(e: Error) -> CniError {
        let code = e.code();
        let out = CniError::new(code, e.msg);
        if e.details.is_empty() {
            out
        } else {
            out.with_details(e.details)
        }
    }
}

/// A CNI error from the protocol layer (validation of the request) as
/// the agent's: its code kept.
impl From<CniError> for Error {
    fn from(e: CniError) -> Error {
        let kind = match e.code {
            code::INVALID_ENV => Kind::InvalidEnv,
            code::TRY_AGAIN_LATER => Kind::TryAgain,
            code::NO_FREE_NIC => Kind::Exhausted,
            code::UNKNOWN_CONTAINER => Kind::Unknown,
            code::CHECK_FAILED => Kind::CheckFailed,
            code::INTERNAL => Kind::Internal,
            _ => Kind::InvalidConfig,
        };
        Error {
            kind,
            cause: None,
            msg: e.msg,
            details: e.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_codes_and_causes_to_reasons_in_one_place() {
        let e = Error::exhausted("no NIC").because(Cause::NicLimit);
        assert_eq!(e.code(), code::NO_FREE_NIC);
        assert_eq!(e.reason(), "NicLimitReached");
        let e = Error::invalid_config("vxnet policy: refused").because(Cause::PolicyRefused);
        assert_eq!(
            (e.code(), e.reason()),
            (code::INVALID_CONFIG, "PolicyRefused")
        );
        let e = Error::new(Kind::StillAttaching, "on its way");
        assert_eq!(e.code(), code::TRY_AGAIN_LATER);
        assert!(!e.is_failure());
        assert_eq!(Error::internal("x").reason(), "AddFailed");
        let cni: CniError = Error::try_again("busy").with_details("wait").into();
        assert_eq!(
            (cni.code, cni.details.as_str()),
            (code::TRY_AGAIN_LATER, "wait")
        );
        let denied = hostnic_iaas::Error::Denied {
            action: "CreateNics".into(),
            message: "ResourceInsufficient, vxnet [v] has 0 free addresses".into(),
        };
        assert_eq!(cloud_cause(&denied), Some(Cause::VxnetExhausted));
    }
}
