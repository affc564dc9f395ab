//! The CNI side of hostnic: spec versions, error codes, the network
//! configuration we accept, `CNI_ARGS`, and results encoded per version.
//!
//! The agent never sees a CNI version: it answers with a version-neutral
//! [`AddResult`] and the executable encodes it for whatever `cniVersion` the
//! runtime asked for, merging it into `prevResult` when we are chained.

//!
//! - this file: versions, verbs, error codes and the error type;
//! - `netconf`: the network configuration (and `prevResult`) we accept;
//! - `bandwidth`: the `bandwidth` capability, checked;
//! - `args`: `CNI_ARGS`, container ids and interface names;
//! - `result`: the version-neutral result and its encoding per version.

mod args;
mod bandwidth;
mod netconf;
mod result;

pub use args::{CniArgs, validate_container_id, validate_ifname};
pub use bandwidth::{BURST_RANGE, Bandwidth, BandwidthLimit, RATE_RANGE};
pub use netconf::{
    AttachmentKey, Ipam, MTU_RANGE, NetConf, NetworkHooks, RouteTemplate, RuntimeConfig,
};
pub use result::{AddResult, Interface, IpConfig, Route, version_info};

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The spec versions we speak, oldest first. 0.1.0 and 0.2.0 results have a
/// different shape (`ip4`/`ip6`) and no runtime still sends them.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI spec version we support, ordered so comparisons read naturally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const LATEST: Version = Version::V1_1_0;
    const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    pub fn parse(s: &str) -> Result<Self, CniError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "cniVersion {s:?} is not supported; hostnic supports {}",
                        SUPPORTED_VERSIONS.join(", ")
                    ),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        SUPPORTED_VERSIONS[self as usize]
    }

    /// Whether `verb` exists in this version of the spec: CHECK arrived in
    /// 0.4.0, GC and STATUS in 1.1.0.
    pub fn allows(self, verb: Verb) -> bool {
        match verb {
            Verb::Check => self >= Version::V0_4_0,
            Verb::Gc | Verb::Status => self >= Version::V1_1_0,
            Verb::Add | Verb::Del | Verb::Version => true,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verbs of `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Verb {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "GC" => Verb::Gc,
            "STATUS" => Verb::Status,
            "VERSION" => Verb::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "CNI_COMMAND {other:?} is not a CNI verb; expected ADD, DEL, CHECK, GC, STATUS or VERSION"
                    ),
                ));
            }
        })
    }
}

/// Error codes from the spec (1–99 are reserved by it) and ours (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing pods may have limited connectivity.
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// The agent failed at something it should have been able to do
    /// (a netlink call, a write to its record). Details say what.
    pub const INTERNAL: u32 = 100;
    /// No NIC is free on this node for the pod.
    pub const NO_FREE_NIC: u32 = 101;
    /// The pod's interface no longer matches what ADD gave it (CHECK).
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error: what goes to stdout as JSON with a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON the spec wants on stdout, stamped with the version in use.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_round_trips_and_orders() {
        for (i, s) in SUPPORTED_VERSIONS.iter().enumerate() {
            let v = Version::parse(s).unwrap();
            assert_eq!(v.as_str(), *s);
            assert_eq!(v as usize, i);
        }
        for old in ["0.1.0", "0.2.0", "2.0.0", "", "1.1"] {
            assert_eq!(
                Version::parse(old).unwrap_err().code,
                code::INCOMPATIBLE_VERSION
            );
        }
        assert!(!Version::V0_3_1.allows(Verb::Check));
        assert!(Version::V0_4_0.allows(Verb::Check));
        assert!(!Version::V1_0_0.allows(Verb::Gc));
        assert!(Version::V1_1_0.allows(Verb::Status));
    }
}
