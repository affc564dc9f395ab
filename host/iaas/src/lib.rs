//! The QingCloud IaaS API, as much of it as hostnic needs.
//!
//! - [`sign`] and [`params`] are the wire contract: pure functions the
//!   agent's client signs and encodes with and the IaaS simulator verifies
//!   and decodes with, pinned to the cloud by the published test vectors.
//! - [`Credentials`] reads the original `qcsecret` YAML file; the secret is a
//!   [`SecretKey`] that prints as `<redacted>` everywhere.
//! - [`Client`] sends signed GETs with per-action token buckets, retries busy
//!   answers with jittered backoff, re-signs expired ones, cools an action
//!   down after a quota error, and counts the requests it sends
//!   ([`Client::calls`]). Its typed actions are `describe_nics`,
//!   `create_nics`, `attach_nics`, `detach_nics`, `delete_nics`,
//!   `describe_vxnets`, `describe_instances`, `describe_jobs`, `create_tag`,
//!   `attach_tags`, `describe_tags`, and [`Client::wait_job`].
//! - [`Error`] is one enum keyed on the cloud's `ret_code`; every message
//!   names the action and what to do.

mod actions;
mod budget;
mod client;
mod credentials;
mod error;
mod job;
mod options;
pub mod params;
mod secret;
pub mod sign;
mod types;

pub use actions::{MAX_NICS_PER_ATTACH, MAX_NICS_PER_CREATE, NicFilter, PAGE_LIMIT, TagFilter};
pub use budget::Budget;
pub use client::Client;
pub use credentials::{Credentials, CredentialsError, Protocol};
pub use error::Error;
pub use job::JobOutcome;
pub use options::{Backoff, Clock, Options};
pub use secret::SecretKey;
pub use types::{
    CreatedNic, Instance, InstanceNic, Job, JobId, JobStatus, Nic, NicStatus, ResourceTagPair,
    Router, Tag, TagId, VxNet,
};
