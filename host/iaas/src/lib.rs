//! The QingCloud IaaS API, as much of it as hostnic needs.
//!
//! - [`sign`] and [`params`] are the wire contract: pure functions the
//!   agent's client signs and encodes with and the IaaS simulator verifies
//!   and decodes with, pinned to the cloud by the published test vectors.
//! - [`Credentials`] reads the original `qcsecret` YAML file; the secret is a
//!   [`SecretKey`] that prints as `<redacted>` everywhere.
//! - [`Client`] sends signed GETs with per-action token buckets, retries busy
//!   answers with jittered backoff, paces every request to the node's
//!   slots in the account's rate ([`Share`], [`Client::set_share`]), re-signs expired ones, cools an action
//!   down after a quota error, and counts the requests it sends
//!   ([`Client::calls`]). Its typed actions are `describe_nics`,
//!   `create_nics`, `attach_nics`, `detach_nics`, `delete_nics`,
//!   `describe_vxnets`, `describe_instances`, `describe_jobs`, `create_tag`,
//!   `attach_tags`, `describe_tags`, and [`Client::wait_job`]; the load
//!   balancer's actions are in [`lb`].
//! - [`Error`] is one enum keyed on the cloud's `ret_code`; every message
//!   names the action and what to do.

mod actions;
mod budget;
mod client;
mod credentials;
mod error;
mod job;
pub mod lb;
mod options;
mod pace;
pub mod params;
mod response;
mod secret;
pub mod sign;
mod types;

pub use actions::{MAX_NICS_PER_ATTACH, MAX_NICS_PER_CREATE, NicFilter, PAGE_LIMIT, TagFilter};
pub use budget::Budget;
pub use client::Client;
pub use credentials::{Credentials, CredentialsError, Protocol};
pub use error::Error;
pub use job::JobOutcome;
pub use options::{Backoff, Clock, Observer, Options};
pub use pace::Share;
pub use secret::SecretKey;
pub use types::{
    CreatedNic, Instance, InstanceNic, Job, JobId, JobStatus, Nic, NicStatus, ResourceTagPair,
    Router, Tag, TagId, VxNet,
};

/// Entry points for the fuzz targets (`fuzz/`): not part of the API.
///
/// Each runs the client's response decoder on `body` as the answer to one
/// action with HTTP `status` (ignored outside 100..=999), exactly as
/// [`Client`] reads it, and discards the outcome. Panics only on a bug.
#[doc(hidden)]
pub mod fuzzing {
    use crate::response::exercise;
    use crate::types::{
        CreateNicsResponse, CreateTagResponse, DescribeInstancesResponse, DescribeJobsResponse,
        DescribeNicsResponse, DescribeTagsResponse, DescribeVxNetsResponse, Empty, JobResponse,
    };

    pub fn describe_nics(status: u16, body: &[u8]) {
        exercise::<DescribeNicsResponse>("DescribeNics", status, body);
    }

    pub fn describe_vxnets(status: u16, body: &[u8]) {
        exercise::<DescribeVxNetsResponse>("DescribeVxNets", status, body);
    }

    pub fn describe_instances(status: u16, body: &[u8]) {
        exercise::<DescribeInstancesResponse>("DescribeInstances", status, body);
    }

    pub fn describe_jobs(status: u16, body: &[u8]) {
        exercise::<DescribeJobsResponse>("DescribeJobs", status, body);
    }

    pub fn describe_tags(status: u16, body: &[u8]) {
        exercise::<DescribeTagsResponse>("DescribeTags", status, body);
    }

    pub fn create_nics(status: u16, body: &[u8]) {
        exercise::<CreateNicsResponse>("CreateNics", status, body);
    }

    /// AttachNics; DetachNics answers the same shape.
    pub fn attach_nics(status: u16, body: &[u8]) {
        exercise::<JobResponse>("AttachNics", status, body);
    }

    pub fn create_tag(status: u16, body: &[u8]) {
        exercise::<CreateTagResponse>("CreateTag", status, body);
    }

    /// AttachTags; DeleteNics answers the same (empty) shape.
    pub fn attach_tags(status: u16, body: &[u8]) {
        exercise::<Empty>("AttachTags", status, body);
    }
}
