use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sched::{CloneFlags, setns};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A namespace's identity: the device and inode of its `nsfs` file. Two
/// handles name the same namespace exactly when their identities are equal;
/// a path can be re-bound to another namespace, an identity cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl std::fmt::Display for NsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}] on device {}", self.ino, self.dev)
    }
}

// `NS_GET_NSTYPE` from <linux/nsfs.h>: `_IO(0xb7, 0x3)`. It answers the
// `CLONE_NEW*` type of an nsfs descriptor and ENOTTY for anything else.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

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
    /// the pod's netns over the agent socket), refusing anything that is not
    /// a network namespace: a pipe, a socket, a mount namespace. Checked
    /// before the agent records or moves anything for it.
    pub fn from_fd(fd: OwnedFd, label: impl Into<String>) -> Result<Netns> {
        let label = label.into();
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the
        // descriptor, which `fd` keeps open for the duration of the call.
        let kind = unsafe { ns_get_nstype(fd.as_raw_fd()) };
        match kind {
            Ok(k) if k == CloneFlags::CLONE_NEWNET.bits() => Ok(Netns { fd, label }),
            Ok(_) => Err(Error::NotNetns {
                label,
                what: "a namespace of another kind".into(),
            }),
            Err(nix::errno::Errno::ENOTTY) => Err(Error::NotNetns {
                label,
                what: "not a namespace at all".into(),
            }),
            Err(e) => Err(Error::io(format!("asking what descriptor {label} is"))(
                e.into(),
            )),
        }
    }

    /// This namespace's identity.
    pub fn id(&self) -> Result<NsId> {
        let st = nix::sys::stat::fstat(&self.fd)
            .map_err(|e| Error::io(format!("stat of netns {}", self.label))(e.into()))?;
        Ok(NsId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// A second handle on the same namespace.
    pub fn try_clone(&self) -> Result<Netns> {
        Ok(Netns {
            fd: self
                .fd
                .try_clone()
                .map_err(Error::io(format!("duplicating netns {}", self.label)))?,
            label: self.label.clone(),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Writes `value` to `/proc/sys/<key with dots as slashes>` as seen
    /// from this namespace (e.g. key `net.ipv4.ip_forward`). A key that
    /// already has slashes is taken as the path below `/proc/sys`, for the
    /// keys whose parts have dots (`net/ipv4/conf/eth0.100/proxy_arp`).
    ///
    /// `/proc/sys/net` shows the network namespace of the *thread* that
    /// looks, so, as in [`Netns::connect`], the write happens on a
    /// short-lived OS thread that enters the namespace, writes and exits;
    /// no other thread ever changes namespace.
    pub async fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let rel = if key.contains('/') {
            key.to_string()
        } else {
            key.replace('.', "/")
        };
        if rel.is_empty()
            || rel
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(Error::io(format!("setting sysctl {key:?}"))(
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a sysctl key"),
            ));
        }
        let path = Path::new("/proc/sys").join(rel);
        let value = value.to_string();
        let op = format!("setting sysctl {key}={value} in netns {}", self.label);
        self.inside("netns-sysctl", move || {
            std::fs::write(&path, value).map_err(Error::io(op))
        })
        .await
    }

    /// Runs `f` on a short-lived OS thread that has entered this namespace
    /// and exits after it: no other thread ever changes namespace, and
    /// there is nothing to switch back. A thread that is in the namespace
    /// already (it starts in the process's) does not enter it again:
    /// `setns` wants CAP_SYS_ADMIN even then, and the agent's own
    /// namespace needs none (its unit tests run without root).
    pub(crate) async fn inside<T: Send + 'static>(
        &self,
        thread: &str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let fd = self
            .fd
            .try_clone()
            .map_err(Error::io("duplicating a netns descriptor"))?;
        let label = self.label.clone();
        let target = self.id()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                let here = Netns::current().and_then(|n| n.id()).ok();
                let entered = if here == Some(target) {
                    Ok(())
                } else {
                    setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::io(format!(
                            "entering netns {label} (is it a network namespace?)"
                        ))(e.into())
                    })
                };
                let result = entered.and_then(|()| f());
                // If the receiver is gone the caller was cancelled; what
                // `f` made is dropped with the message.
                let _ = tx.send(result);
            })
            .map_err(Error::io("spawning the netns thread"))?;
        rx.await.map_err(|_| {
            Error::io("netns thread")(std::io::Error::other("exited without an answer"))
        })?
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
