use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::ops::Netlink;
use crate::{Error, Result};

/// A handle on a network namespace: an open `nsfs` file. Holding it keeps
/// the namespace alive, whatever happens to the path it was opened from.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    /// Where it came from, for messages only.
    label: String,
}

impl Netns {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn open(path: &Path) -> Result<Netns> {
        let file =
            File::open(path).map_err(Error::io(format!("opening netns {}", path.display())))?;
        Ok(Netns {
            fd: file.into(),
            label: path.display().to_string(),
        })
    }

    /// Wraps a descriptor received from elsewhere (the CNI executable sends
    /// the pod's netns over the agent socket). Whether it really is a network
    /// namespace is checked by [`Netns::connect`], where `setns` refuses
    /// anything else.
    pub fn from_fd(fd: OwnedFd, label: impl Into<String>) -> Netns {
        Netns {
            fd,
            label: label.into(),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Opens an rtnetlink connection inside this namespace.
    ///
    /// The socket is created on a dedicated OS thread that enters the
    /// namespace, creates the socket and exits; the thread never runs
    /// anything else, so there is no namespace to restore and no way for a
    /// failed restore to leave a thread in the wrong namespace. The
    /// connection's I/O then runs on the caller's tokio runtime.
    pub async fn connect(&self) -> Result<Netlink> {
        let fd = self
            .fd
            .try_clone()
            .map_err(Error::io("duplicating a netns descriptor"))?;
        let label = self.label.clone();
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("netns-connect".into())
            .spawn(move || {
                let result = setns(&fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| {
                        Error::io(format!(
                            "entering netns {label} (is it a network namespace?)"
                        ))(e.into())
                    })
                    .and_then(|()| {
                        // The netlink socket registers with the runtime's
                        // reactor, so it needs the runtime's context.
                        let _ctx = runtime.enter();
                        rtnetlink::new_connection()
                            .map_err(Error::io(format!("opening rtnetlink in netns {label}")))
                    });
                // If the receiver is gone the caller was cancelled; the
                // connection is dropped with the message.
                let _ = tx.send(result);
            })
            .map_err(Error::io("spawning the netns thread"))?;
        let (connection, handle, _) = rx.await.map_err(|_| {
            Error::io("netns thread")(std::io::Error::other("exited without an answer"))
        })??;
        tokio::spawn(connection);
        Ok(Netlink::new(handle, self.label.clone()))
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
