//! The client core: one signed GET per attempt, and what to do with each
//! `ret_code` (see [`crate::error`]; the answer is read by
//! [`crate::response`]). Its tuning is in [`crate::options`],
//! the typed actions in [`crate::actions`], job waiting in [`crate::job`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;

use crate::Credentials;
use crate::budget::Limiter;
use crate::error::Error;
use crate::options::Options;
use crate::pace::{Pace, Share};
use crate::params::Params;
use crate::response::{self, Attempt, Failure};
use crate::sign;

/// A QingCloud API client. Cheap to clone; clones share budgets, cool-downs
/// and call counters.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    creds: Credentials,
    /// The API wants the zone in lower case.
    zone: String,
    endpoint: String,
    opts: Options,
    limiter: Limiter,
    pace: Pace,
    calls: Mutex<BTreeMap<String, u64>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint)
            .field("zone", &self.inner.zone)
            .field("access_key_id", &self.inner.creds.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Actions that create something. If one is sent and the answer is lost, a
/// retry would create it twice (a leaked NIC), so a transport failure is
/// only retried when the request provably never left (connect failed).
fn creates(action: &str) -> bool {
    matches!(action, "CreateNics" | "CreateTag")
}

/// The account's request rate was exceeded.
const THROTTLED: i64 = 5100;

fn valid_share(share: &Share) -> Result<(), Error> {
    share.validate().map_err(|problem| Error::Invalid {
        action: "Client::set_share",
        problem,
    })
}

impl Client {
    pub fn new(creds: Credentials, opts: Options) -> Result<Client, Error> {
        creds.validate()?;
        for (action, b) in std::iter::once(("(default)", &opts.budget))
            .chain(opts.budgets.iter().map(|(a, b)| (a.as_str(), b)))
        {
            // NaN and 0 would make the bucket's wait infinite.
            if b.per_second.is_nan() || b.per_second <= 0.0 {
                return Err(Error::Invalid {
                    action: "Client::new",
                    problem: format!(
                        "the budget of {action} must allow more than 0 calls per second"
                    ),
                });
            }
        }
        // reqwest is built without a default crypto provider (ring instead
        // of aws-lc, see the workspace Cargo.toml); it uses the process-wide
        // one. An Err here means one is installed already, which serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(creds.timeout())
            .timeout(creds.timeout())
            .user_agent(concat!("hostnic/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| Error::Setup { source })?;
        let limiter = Limiter::new(opts.budget, opts.budgets.clone(), opts.quota_cooldown);
        if let Some(share) = &opts.share {
            valid_share(share)?;
        }
        let pace = Pace::new(opts.share);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                zone: creds.zone.to_lowercase(),
                endpoint: creds.endpoint(),
                creds,
                opts,
                limiter,
                pace,
                calls: Mutex::default(),
            }),
        })
    }

    /// HTTP requests sent so far, per action, retries included ("cloud API
    /// calls per pod"). Not counted: calls refused by a quota cool-down or
    /// before sending, and connection attempts that were refused.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn total_calls(&self) -> u64 {
        self.calls().values().sum()
    }

    pub fn zone(&self) -> &str {
        &self.inner.zone
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Paces every request of this client (every clone) to this node's
    /// slots in the account's rate: when the nodes sharing it change.
    pub fn set_share(&self, share: Share) -> Result<(), Error> {
        valid_share(&share)?;
        self.inner.pace.set(share);
        Ok(())
    }

    /// Waits until this node's next slot in the account's rate comes,
    /// without taking it: what to ask for is then decided with what is
    /// known when the request can leave, not seconds before.
    pub async fn paced(&self) {
        self.inner.pace.ready().await;
    }

    /// The share of the account's rate this client paces to (its node's
    /// place among the nodes); `None` when unpaced.
    pub fn share(&self) -> Option<Share> {
        self.inner.pace.share()
    }

    /// This node's requests per second now (lower than its share for a
    /// while after the cloud refused a request for the account's rate),
    /// and its share; infinite when unpaced.
    pub fn pace(&self) -> (f64, f64) {
        self.inner.pace.rate()
    }

    /// One action, with retries, re-signing and cool-down as the reference
    /// prescribes; `T` is the answer's shape when `ret_code` is 0.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        action: &str,
        params: &Params,
    ) -> Result<T, Error> {
        let inner = &*self.inner;
        if let Some((message, retry_in)) = inner.limiter.cooling(action) {
            return Err(Error::Quota {
                action: action.to_string(),
                message,
                retry_in,
            });
        }
        let (mut retries, mut resigned, mut sent) = (0u32, false, 0u32);
        loop {
            let waited = inner.limiter.acquire(action).await + inner.pace.acquire().await;
            if let Some(o) = &inner.opts.observer
                && !waited.is_zero()
            {
                o.budget_wait(action, waited);
            }
            sent += 1;
            let failure = match self.attempt(action, params).await {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Quota(message)) => {
                    let retry_in = inner.limiter.start_cooldown(action, &message);
                    tracing::error!(action, cloud_message = %message, "QingCloud quota exceeded; refusing {action} for {retry_in:?}");
                    return Err(Error::Quota {
                        action: action.to_string(),
                        message,
                        retry_in,
                    });
                }
                // A request can spend long enough in queues to expire; one
                // fresh signature tells that apart from a skewed clock.
                Err(Attempt::Expired(message)) if !resigned => {
                    tracing::warn!(action, cloud_message = %message, "request expired (1300); re-signing with a fresh time_stamp — is this node's clock right?");
                    resigned = true;
                    continue;
                }
                Err(Attempt::Expired(message)) => {
                    return Err(Error::ClockSkew {
                        action: action.to_string(),
                        message,
                    });
                }
                Err(Attempt::Retry(f)) => {
                    if let Failure::Code {
                        code: THROTTLED, ..
                    } = f
                    {
                        inner.pace.throttled();
                    }
                    f
                }
            };
            let give_up = match &failure {
                Failure::Transport(e) => creates(action) && !e.is_connect(),
                Failure::Code { .. } => false,
            };
            if give_up || retries >= inner.creds.connection_retries {
                return Err(match failure {
                    Failure::Code { code, message } => Error::Unavailable {
                        action: action.to_string(),
                        code,
                        message,
                        attempts: sent,
                    },
                    Failure::Transport(source) => Error::Transport {
                        action: action.to_string(),
                        endpoint: inner.endpoint.clone(),
                        attempts: sent,
                        source,
                    },
                });
            }
            let delay = inner.opts.backoff.delay(retries);
            retries += 1;
            match &failure {
                Failure::Code { code, message } => {
                    tracing::warn!(action, code, cloud_message = %message, retry = retries, ?delay, "cloud busy, retrying")
                }
                Failure::Transport(e) => {
                    tracing::warn!(action, error = %e, retry = retries, ?delay, "cloud unreachable, retrying")
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Signs (with a fresh time_stamp), sends and reads one request.
    async fn attempt<T: DeserializeOwned>(
        &self,
        action: &str,
        params: &Params,
    ) -> Result<T, Attempt> {
        let inner = &*self.inner;
        let mut p = params.clone();
        p.set("action", action)
            .set("zone", &inner.zone)
            .set(
                "time_stamp",
                sign::format_time_stamp(inner.opts.clock.now()),
            )
            .set("access_key_id", &inner.creds.access_key_id)
            .set("version", 1)
            .set("signature_method", sign::SIGNATURE_METHOD)
            .set("signature_version", sign::SIGNATURE_VERSION);
        let query = sign::signed_query(
            "GET",
            &inner.creds.uri,
            p.pairs(),
            &inner.creds.secret_access_key,
        );
        let url = format!("{}?{query}", inner.endpoint);

        tracing::debug!(action, "calling QingCloud");
        let started = std::time::Instant::now();
        let outcome = self.send(action, url).await;
        if let Some(o) = &inner.opts.observer {
            o.request(action, answered_code(&outcome), started.elapsed());
        }
        outcome
    }

    /// Sends one signed request and reads the answer.
    async fn send<T: DeserializeOwned>(&self, action: &str, url: String) -> Result<T, Attempt> {
        let inner = &*self.inner;
        let sent = inner.http.get(url).send().await;
        // Counted once the request may have reached the cloud: a refused
        // connection (or failed TLS handshake) sent nothing.
        if !matches!(&sent, Err(e) if e.is_connect()) {
            *inner
                .calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(action.to_string())
                .or_default() += 1;
        }
        // `without_url`: the URL adds nothing the error does not already say
        // (endpoint, action) but a signature and the access key id.
        let transport = |e: reqwest::Error| Attempt::Retry(Failure::Transport(e.without_url()));
        let resp = sent.map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?;

        response::decode(action, &inner.endpoint, status, &body)
    }
}

/// The `ret_code` the cloud answered an attempt with, if it answered.
fn answered_code<T>(outcome: &Result<T, Attempt>) -> Option<i64> {
    match outcome {
        Ok(_) => Some(0),
        Err(Attempt::Retry(Failure::Code { code, .. })) => Some(*code),
        Err(Attempt::Retry(Failure::Transport(_))) => None,
        Err(Attempt::Expired(_)) => Some(1300),
        Err(Attempt::Quota(_)) => Some(2500),
        Err(Attempt::Final(e)) => e.ret_code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{Budget, SecretKey};

    #[test]
    fn only_creates_are_not_blindly_resent() {
        assert!(creates("CreateNics") && creates("CreateTag"));
        assert!(!creates("DescribeNics") && !creates("DeleteNics"));
    }

    #[test]
    fn construction_checks_and_redacts() {
        let creds = Credentials::new("AKID", SecretKey::new("s3cr3t-VALUE"), "PEK3A");
        let c = Client::new(creds.clone(), Options::default()).unwrap();
        assert_eq!(c.zone(), "pek3a");
        let shown = format!("{c:?}");
        assert!(
            shown.contains("AKID") && !shown.contains("s3cr3t-VALUE"),
            "{shown}"
        );

        for per_second in [0.0, -1.0, f64::NAN] {
            let mut opts = Options::default();
            opts.budgets.insert(
                "DescribeNics".into(),
                Budget {
                    per_second,
                    burst: 1,
                },
            );
            let e = Client::new(creds.clone(), opts).unwrap_err();
            assert!(e.to_string().contains("DescribeNics"), "{e}");
        }
        let mut empty_zone = creds;
        empty_zone.zone.clear();
        let e = Client::new(empty_zone, Options::default()).unwrap_err();
        assert!(e.to_string().contains("zone must not be empty"), "{e}");
    }
}
