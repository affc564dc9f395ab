//! The node's NICs and the means to move them: the pool (who holds which,
//! under a short lock) and the plumber (netlink). The CNI verbs and the
//! cloud pool both work on this; neither owns the other.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::metrics::Reconciled;
use crate::plumb::Plumber;
use crate::pool::{Pool, State};

/// How long an ADD with no free NIC waits for one a DEL is bringing back.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Nics {
    pub plumber: Plumber,
    pool: Mutex<Pool>,
}

impl Nics {
    pub fn new(plumber: Plumber, pool: Pool) -> Nics {
        Nics {
            plumber,
            pool: Mutex::new(pool),
        }
    }

    pub fn pool(&self) -> MutexGuard<'_, Pool> {
        // A panic while holding this short lock is a bug, but the pool's
        // data is still consistent (every mutation is a single assignment),
        // so keep serving rather than wedge every later request.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tries `take` until it gives a NIC, while NICs that DELs answered for
    /// are still on their way back (a device move: ~20 ms each, serialised
    /// by the kernel), for at most [`RELEASE_WAIT`].
    pub async fn wait_for_release<T>(&self, take: impl Fn(&mut Pool) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + RELEASE_WAIT;
        loop {
            let releasing = {
                let mut pool = self.pool();
                if let Some(t) = take(&mut pool) {
                    return Some(t);
                }
                pool.count_all(&[State::Releasing])
            };
            if releasing == 0 || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// NICs that reappeared in the node namespace become free again.
    pub async fn rescan_missing(&self) {
        let missing = self.pool().missing();
        if missing.is_empty() {
            return;
        }
        let links = match self.plumber.node().links().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "listing node links to find missing NICs");
                return;
            }
        };
        for link in links
            .iter()
            .filter(|l| l.mac.is_some_and(|m| missing.contains(&m)))
        {
            match self.plumber.park(link).await {
                Ok(()) => {
                    crate::metrics::metrics().reconciled(Reconciled::MissingFound, 1);
                    info!(nic = ?link.mac, "missing NIC is back in the node namespace");
                    if let Some(mac) = link.mac {
                        self.pool().mark_found(mac);
                    }
                }
                Err(e) => warn!(nic = ?link.mac, error = %e, "parking a NIC that reappeared"),
            }
        }
    }
}
