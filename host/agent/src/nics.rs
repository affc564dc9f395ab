//! The node's NICs and the means to move them: the pool (who holds which,
//! under a short lock) and the plumber (netlink). The CNI verbs and the
//! cloud pool both work on this; neither owns the other.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use tracing::{info, warn};

use crate::metrics::Reconciled;
use crate::plumb::Plumber;
use crate::pool::{Pool, State};

/// How long an ADD with no free NIC waits for one a DEL is bringing back.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How often a link wait looks again without a notification: the kernel
/// drops notifications a slow reader does not take, and a watch that could
/// not be opened sends none.
const LINK_RECHECK: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Nics {
    pub plumber: std::sync::Arc<Plumber>,
    pool: Mutex<Pool>,
    /// Told whenever the pool changed: waiters for a NIC look again.
    changed: Notify,
    /// Told of every link added, changed or removed in the node's
    /// namespace (netlink notifications, [`Nics::watch_links`]).
    links: std::sync::Arc<Notify>,
}

/// The pool, locked; dropping it tells the waiters if anything changed.
#[derive(Debug)]
pub struct PoolGuard<'a> {
    pool: MutexGuard<'a, Pool>,
    version: u64,
    changed: &'a Notify,
}

impl Deref for PoolGuard<'_> {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.pool
    }
}

impl DerefMut for PoolGuard<'_> {
    fn deref_mut(&mut self) -> &mut Pool {
        &mut self.pool
    }
}

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        if self.pool.version() != self.version {
            self.changed.notify_waiters();
        }
    }
}

impl Nics {
    pub fn new(plumber: Plumber, pool: Pool) -> Nics {
        Nics {
            plumber: std::sync::Arc::new(plumber),
            pool: Mutex::new(pool),
            changed: Notify::new(),
            links: std::sync::Arc::default(),
        }
    }

    /// Watches the node's links (netlink notifications) so that link waits
    /// ([`Nics::wait_for_link`]) wake when the kernel says, not on a timer.
    pub async fn watch_links(&self) {
        let mut events = match self.plumber.node_ns().watch().await {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, "watching the node's links; link waits look every 500 ms instead");
                return;
            }
        };
        let links = self.links.clone();
        tokio::spawn(async move {
            while let Some(change) = events.recv().await {
                if change == hostnic_netlink::Change::Link {
                    links.notify_waiters();
                }
            }
        });
    }

    /// Resolves once a link with `mac` is in the node namespace
    /// (`present`), or no longer is.
    pub async fn wait_for_link(&self, mac: hostnic_netlink::Mac, present: bool) {
        loop {
            let changed = self.links.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let found = self.plumber.node().link_by_mac(mac, None).await;
            match found {
                Ok(Some(_)) if present => return,
                Ok(None) if !present => return,
                _ => {}
            }
            // (A timeout is the recheck, not an error.)
            let _ = tokio::time::timeout(LINK_RECHECK, changed).await;
        }
    }

    pub fn pool(&self) -> PoolGuard<'_> {
        // A panic while holding this short lock is a bug, but the pool's
        // data is still consistent (every mutation is a single assignment),
        // so keep serving rather than wedge every later request.
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        PoolGuard {
            version: pool.version(),
            pool,
            changed: &self.changed,
        }
    }

    /// Resolves at the pool's next change (enable it before looking, so a
    /// change between the look and the wait is not missed).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Tells the pool's waiters to look again: something they wait on
    /// besides the pool changed (a provisioner gave up).
    pub fn wake_waiters(&self) {
        self.changed.notify_waiters();
    }

    /// Runs `take` on the pool now and whenever it changes, until it gives
    /// an answer, `give_up` says to stop, or `deadline` passes. No polling:
    /// the pool tells its waiters of every change.
    pub async fn wait_for<T>(
        &self,
        deadline: tokio::time::Instant,
        mut take: impl FnMut(&mut Pool) -> Option<T>,
        give_up: impl Fn(&Pool) -> bool,
    ) -> Option<T> {
        loop {
            // Registered before the look, so a change between the look and
            // the wait is not missed.
            let changed = self.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut pool = self.pool();
                if let Some(t) = take(&mut pool) {
                    return Some(t);
                }
                if give_up(&pool) {
                    return None;
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Tries `take` until it gives a NIC, while NICs that DELs answered for
    /// are still on their way back (a device move: ~20 ms each, serialised
    /// by the kernel), for at most [`RELEASE_WAIT`].
    pub async fn wait_for_release<T>(&self, take: impl FnMut(&mut Pool) -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        self.wait_for(deadline, take, |p| p.count_all(&[State::Releasing]) == 0)
            .await
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
