//! Network namespaces and the few rtnetlink operations hostnic performs.
//!
//! This is the only crate that switches namespaces, and it does so in one
//! place ([`Netns::connect`]): a netlink socket belongs to the namespace it
//! was created in for its whole life, so we create it on a short-lived OS
//! thread that enters the namespace and then exits. No tokio worker ever
//! calls `setns`, and nothing has to be switched back.
//!
//! The rest of hostnic calls typed operations on [`Netlink`]
//! (`link_by_mac`, `move_link`, `add_route`, …) and never builds messages;
//! the operations for a pod's own wiring (veth pairs, neighbour entries,
//! routes in any table, policy rules) are in `routing.rs`, the
//! gratuitous ARP that moves an address to another MAC in `arp.rs`, and
//! the bandwidth limits of a pod's interface in `shaping.rs` (the tc
//! requests they take in `tc.rs`, the kernel's `tbf` parameters in
//! `tbf.rs`); the nftables tables hostnic owns, written over its own
//! nf_tables socket, in `nftables/`, and rulesets applied and listed by
//! nft's own code in `nft.rs`.

mod arp;
mod mac;
mod netns;
mod nft;
pub mod nftables;
mod ops;
mod routing;
mod shaping;
mod socket;
mod tbf;
mod tc;

pub use arp::Announcer;
pub use mac::Mac;
pub use netns::{Netns, NsId};
pub use ops::{Link, Netlink, RouteEntry};
pub use routing::{Rule, TableRoute};
pub use shaping::{Shaped, Shaping, ifb_name};
pub use socket::Change;
pub use tbf::{Limit, Tbf};

/// A failed namespace or netlink operation, naming what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Refused before asking the kernel (a limit it cannot honour), or
    /// several failures of one teardown together.
    #[error("{op}: {why}")]
    Refused { op: String, why: String },
    #[error("the descriptor for {label} is not a network namespace ({what})")]
    NotNetns { label: String, what: String },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
        let op = op.into();
        move |source| Error::Netlink { op, source }
    }

    pub(crate) fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let op = op.into();
        move |source| Error::Io { op, source }
    }

    /// The kernel's errno, if the kernel answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// "The thing is already gone": the answer teardown treats as success.
    pub fn is_gone(&self) -> bool {
        matches!(
            self.errno(),
            Some(
                libc_errno::ENODEV
                    | libc_errno::ENOENT
                    | libc_errno::ESRCH
                    | libc_errno::EADDRNOTAVAIL
            )
        )
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc_errno::EEXIST)
    }
}

/// The errno values we branch on (Linux numbering).
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const ENODEV: i32 = 19;
    pub const EEXIST: i32 = 17;
    pub const EADDRNOTAVAIL: i32 = 99;
}

pub type Result<T> = std::result::Result<T, Error>;
