//! The agent's descriptor table: raised to its hard limit at start, and
//! watched so that readiness means "an ADD could get the descriptors it
//! needs now".

use std::io;

/// Descriptors one ADD may need at once: the netns descriptor, netlink
/// sockets in two namespaces, a thread's, the record file and its
/// directory, with room for a few requests in flight together.
pub const ADD_HEADROOM: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go's runtime does
/// for every daemon: the default soft limit (1024) is reached by a few
/// hundred idle clients, after which every ADD would fail. Returns the new
/// soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// (open descriptors, soft limit) of this process.
pub fn usage() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit};
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // One directory listing: ~1 µs per open descriptor, cheap enough for a
    // STATUS every few seconds.
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok((open, soft))
}
