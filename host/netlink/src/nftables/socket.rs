//! The nf_tables socket of one namespace: scripts sent as one batch each,
//! every message acknowledged, and the first one refused named with the
//! kernel's reason.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::Script;
use super::encode;
use super::text::Shown;
use crate::{Error, Netns, Result};

/// How long a batch's acknowledgements may take: a commit that removes
/// hooks or elements waits out an RCU grace period (tens of ms).
const ANSWER: Duration = Duration::from_secs(10);

/// An nf_tables socket made in a namespace, usable from any thread: the
/// tables it creates are owned by it (see the module above). Dropping it
/// leaves them, ownerless, in place.
#[derive(Clone)]
pub struct Nftables {
    inner: Arc<Mutex<Inner>>,
    label: String,
}

impl std::fmt::Debug for Nftables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nftables")
            .field("netns", &self.label)
            .finish()
    }
}

struct Inner {
    fd: OwnedFd,
    seq: u32,
}

impl Netns {
    /// A new nf_tables socket in this namespace.
    pub async fn nftables(&self) -> Result<Nftables> {
        let label = self.label().to_string();
        let op = format!("opening an nf_tables socket in netns {label}");
        let fd = self
            .inside("netns-nftables", move || open().map_err(Error::io(op)))
            .await?;
        Ok(Nftables {
            inner: Arc::new(Mutex::new(Inner { fd, seq: 1 })),
            label,
        })
    }
}

fn open() -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::from(libc_timeval(ANSWER)),
    )?;
    // Acknowledgements without the request echoed back, errors with the
    // kernel's own message.
    netlink_flag(&fd, NETLINK_CAP_ACK)?;
    netlink_flag(&fd, NETLINK_EXT_ACK)?;
    // Room for the errors of a large batch refused message by message.
    setsockopt(&fd, sockopt::RcvBufForce, &(1 << 20))?;
    Ok(fd)
}

const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const NLMSG_ERROR: u16 = 2;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

fn netlink_flag(fd: &OwnedFd, option: i32) -> std::io::Result<()> {
    let on: i32 = 1;
    // SAFETY: fd is an open socket; the option value is a live i32 of
    // the length passed.
    let r = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            SOL_NETLINK,
            option,
            (&on as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn libc_timeval(d: Duration) -> nix::libc::timeval {
    nix::libc::timeval {
        tv_sec: d.as_secs() as _,
        tv_usec: d.subsec_micros() as _,
    }
}

impl Nftables {
    /// Applies `script` in one transaction: all of it or, refused, none.
    /// The error names the command refused and the kernel's errno.
    pub async fn apply(&self, script: &Script) -> Result<()> {
        if script.is_empty() {
            return Ok(());
        }
        let (inner, script) = (self.inner.clone(), script.clone());
        let label = self.label.clone();
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.apply(&script, &label)
        })
        .await
        .map_err(|e| Error::Refused {
            op: format!("applying nftables rules in netns {}", self.label),
            why: format!("the writing thread failed: {e}"),
        })?
    }
}

impl Inner {
    fn apply(&mut self, script: &Script, label: &str) -> Result<()> {
        let batch = encode::batch(script, self.seq);
        self.seq = self.seq.wrapping_add(batch.commands.len() as u32 + 2);
        let op = |what: &str| format!("{what} nftables table {} in netns {label}", script.table);
        if batch.bytes.len() > 200_000 {
            // A batch is one datagram, bounded by the send buffer.
            setsockopt(&self.fd, sockopt::SndBufForce, &(batch.bytes.len() * 2))
                .map_err(|e| Error::io(op("sizing the socket for"))(e.into()))?;
        }
        let sent = send(self.fd.as_raw_fd(), &batch.bytes, MsgFlags::empty())
            .map_err(|e| Error::io(op("sending"))(e.into()))?;
        if sent != batch.bytes.len() {
            return Err(Error::Refused {
                op: op("sending"),
                why: format!("{sent} of {} bytes sent", batch.bytes.len()),
            });
        }
        let refused = self
            .answers(&batch)
            .map_err(|e| Error::io(op("reading the kernel's answer for"))(e))?;
        match refused {
            None => Ok(()),
            Some((seq, errno, message)) => {
                let index = seq.wrapping_sub(batch.first_seq) as usize;
                let what = batch
                    .commands
                    .get(index)
                    .and_then(|&c| script.commands.get(c))
                    .map(|c| shortened(&Shown(&script.table, c).to_string()))
                    .unwrap_or_else(|| format!("message {seq}"));
                let why = message.map_or_else(String::new, |m| format!(" ({m})"));
                Err(Error::io(format!(
                    "applying nftables rules in netns {label}: the kernel refused `{what}`{why}"
                ))(std::io::Error::from_raw_os_error(errno)))
            }
        }
    }

    /// Reads the kernel's answers up to the last message's (or the
    /// batch's, when it could not take it at all): the first refusal
    /// (its sequence number, errno and the kernel's message), or none.
    fn answers(
        &self,
        batch: &encode::Batch,
    ) -> std::io::Result<Option<(u32, i32, Option<String>)>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut refused = None;
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut at = 0;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || at + len > n {
                    break;
                }
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let flags = u16::from_ne_bytes([buf[at + 6], buf[at + 7]]);
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
                if kind == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4"));
                    if code != 0 && refused.is_none() {
                        let message = (flags & NLM_F_ACK_TLVS != 0)
                            .then(|| ext_message(&buf[at + 36.min(len)..at + len]))
                            .flatten();
                        refused = Some((seq, -code, message));
                    }
                    if seq == batch.last_seq() || seq == batch.begin_seq() {
                        return Ok(refused);
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }
}

/// NLMSGERR_ATTR_MSG among an error's attributes (after the echoed
/// header).
fn ext_message(mut attrs: &[u8]) -> Option<String> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &attrs[4..len];
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    None
}

/// A command's text, cut short when long (a set of thousands).
fn shortened(text: &str) -> String {
    const MOST: usize = 200;
    match text.char_indices().nth(MOST) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
