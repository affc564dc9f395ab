//! Waiting for an asynchronous job (AttachNics, DetachNics).
//!
//! The original plugin watched the node for the NIC's link and only fell
//! back to DescribeJobs: the link shows up well before the job reports
//! success, and every poll is a call against the account's quota. So the
//! caller passes its faster signal as a future, and polling is the slow
//! path that also catches failures and timeouts.

use std::future::Future;

use tokio::time::Instant;

use crate::Client;
use crate::error::Error;
use crate::types::{JobId, JobStatus};

/// Why [`Client::wait_job`] returned successfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// DescribeJobs reported `successful`.
    Successful,
    /// The caller's early signal fired first; the job was not seen to finish.
    Early,
}

impl Client {
    /// Waits for `job` to finish, polling DescribeJobs every
    /// `Options::job_poll_interval` (the first poll after one interval: a
    /// job is never done at once) until it succeeds, fails
    /// ([`Error::JobFailed`]) or `Options::job_timeout` passes
    /// ([`Error::JobTimeout`]). Returns [`JobOutcome::Early`] as soon as
    /// `early` resolves (pass `std::future::pending()` to wait for the cloud
    /// alone).
    pub async fn wait_job(
        &self,
        job: &JobId,
        early: impl Future<Output = ()>,
    ) -> Result<JobOutcome, Error> {
        tokio::select! {
            // `biased`: if both are ready, the free signal wins and no
            // further poll is made.
            biased;
            () = early => Ok(JobOutcome::Early),
            outcome = self.poll_job(job) => outcome,
        }
    }

    async fn poll_job(&self, job: &JobId) -> Result<JobOutcome, Error> {
        let interval = self.options().job_poll_interval;
        let timeout = self.options().job_timeout;
        let start = Instant::now();
        let mut last = JobStatus::Pending;
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Error::JobTimeout {
                    job_id: job.clone(),
                    status: format!("{last:?}").to_lowercase(),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(interval.min(left)).await;
            let jobs = self.describe_jobs(std::slice::from_ref(job)).await?;
            match jobs.into_iter().find(|j| j.job_id == *job) {
                Some(j) if j.status == JobStatus::Successful => return Ok(JobOutcome::Successful),
                Some(j) if j.status == JobStatus::Failed => {
                    return Err(Error::JobFailed {
                        job_id: job.clone(),
                        job_action: j.job_action,
                    });
                }
                Some(j) => last = j.status,
                // Just created jobs may not be listed yet; keep polling.
                None => tracing::debug!(job = %job, "job not listed yet"),
            }
        }
    }
}
