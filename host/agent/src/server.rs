//! The RPC server: a root-only unix socket speaking the framed JSON protocol
//! of [`hostnic_proto::rpc`], one request per connection, each connection
//! served on its own task.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hostnic_netlink::Netns;
use hostnic_proto::cni::{CniError, code};
use hostnic_proto::rpc::{self, Op, PROTOCOL_VERSION, Request, Response};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::service::Service;

/// How long a client may take to send its whole request, and to read the
/// answer. The executable writes its request in one go right after
/// connecting; this only cuts off a stuck or hostile peer (an idle or a
/// byte-a-second client), which never holds anything a real request needs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Requests *served* at once (after they were read). Each holds a task, a
/// couple of netlink sockets and maybe a thread while it creates them; a
/// node runs at most ~64 pods. Connections still sending their request do
/// not count: they cost a task and a descriptor, nothing more.
const MAX_IN_FLIGHT: usize = 128;

/// Connections open at once (reading, served or answering). Past this a new
/// connection is closed at once (the executable answers "try again later");
/// it bounds the descriptors hostile clients can pin to well below the
/// agent's limit (raised at start, see `raise_fd_limit`).
const MAX_CONNECTIONS: usize = 4096;

/// Binds the socket, refusing to steal it from a running agent.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another hostnic-agent is already serving {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // The process umask is 077 (set in main), so the socket is never
    // reachable by others, not even between bind and chmod.
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(listener)
}

/// Serves until `shutdown` resolves, then answers every connection it
/// accepted and returns.
///
/// Accepting never waits on anything: a connection gets a slot for serving
/// only once its whole request has arrived, so idle and slow clients cannot
/// starve real ones.
pub async fn serve(
    listener: UnixListener,
    service: Arc<Service>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let open = Arc::new(AtomicUsize::new(0));
    // Told when the last open connection closes (the graceful stop waits
    // for it).
    let idle = Arc::new(tokio::sync::Notify::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        open.fetch_sub(1, Ordering::SeqCst);
                        debug!("too many open connections; closing a new one");
                        continue;
                    }
                    let (service, slots, open) = (service.clone(), slots.clone(), open.clone());
                    let idle = idle.clone();
                    tokio::spawn(async move {
                        handle(stream, &service, &slots).await;
                        if open.fetch_sub(1, Ordering::SeqCst) == 1 {
                            idle.notify_waiters();
                        }
                    });
                }
                Err(e) => {
                    // EMFILE/ENFILE: the descriptor table is full. Back off
                    // rather than spin; STATUS reports the node not ready.
                    warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Stop listening at once: connections still in the backlog are reset,
    // which tells the executable that nobody read its request, so it sends
    // it again to our successor (host/cni/src/agent.rs).
    drop(listener);
    // Then answer every connection accepted, not only those being served:
    // one whose request was read but that waits for a slot would otherwise
    // be closed unanswered when the runtime stops, and an ADD the caller
    // cannot know we did not act on is one it cannot safely send again
    // (issue 22: a rolling restart failed such a sandbox). Each connection
    // is bounded: REQUEST_TIMEOUT to arrive and to be answered, the
    // service's own limits to be served. (An ADD cut in half by a kill is
    // rolled back at the next start; finishing it is kinder.)
    loop {
        let done = idle.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if open.load(Ordering::SeqCst) == 0 {
            break;
        }
        done.await;
    }
}

async fn handle(mut stream: UnixStream, service: &Arc<Service>, slots: &Semaphore) {
    let result = match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => {
            match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&stream)).await {
                Ok(Ok((request, fd))) => match slots.acquire().await {
                    Ok(_permit) => dispatch(service, request, fd).await,
                    Err(_) => Err(CniError::new(
                        code::TRY_AGAIN_LATER,
                        "the agent is stopping",
                    )),
                },
                Ok(Err(e)) => Err(CniError::new(
                    code::DECODE,
                    format!("reading the request: {e}"),
                )),
                Err(_) => Err(CniError::new(
                    code::IO,
                    "the request did not arrive in time",
                )),
            }
        }
        Ok(cred) => {
            warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a caller that is not root");
            Err(CniError::new(code::IO, "hostnic-agent only serves root"))
        }
        Err(e) => Err(CniError::new(
            code::IO,
            format!("reading the caller's credentials: {e}"),
        )),
    };
    let response = Response {
        version: PROTOCOL_VERSION,
        result,
    };
    let frame = match rpc::encode_frame(&response) {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "encoding a response");
            return;
        }
    };
    // The client may have given up; what we did is recorded either way and
    // the runtime follows a failed ADD with DEL.
    if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&frame))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "writing the response timed out",
            ))
        })
    {
        debug!(error = %e, "the client went away before reading its answer");
    }
}

async fn dispatch(
    service: &Arc<Service>,
    request: Request,
    fd: Option<OwnedFd>,
) -> Result<rpc::Reply, CniError> {
    if request.version != PROTOCOL_VERSION {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the hostnic executable speaks protocol {} but this agent speaks {PROTOCOL_VERSION}; retry once both are upgraded",
                request.version
            ),
        ));
    }
    let op_name = request.op.name();
    let label = |t: &rpc::Target| {
        t.netns
            .clone()
            .unwrap_or_else(|| "(passed by descriptor)".into())
    };
    // The descriptor must be a network namespace: checked before anything
    // is recorded or moved for it.
    let netns = |fd: Option<OwnedFd>, t: &rpc::Target| -> Result<Option<Netns>, CniError> {
        fd.map(|fd| Netns::from_fd(fd, label(t)))
            .transpose()
            .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {e}")))
    };
    let started = std::time::Instant::now();
    let result = match request.op {
        Op::Add(r) => match netns(fd, &r.target) {
            Ok(ns) => service.add(r, ns).await.map_err(CniError::from),
            Err(e) => Err(e),
        },
        // DEL must succeed when it can identify the attachment: a bad
        // descriptor is dropped and the recorded namespace tried instead.
        Op::Del(r) => {
            let ns = netns(fd, &r.target).unwrap_or_else(|e| {
                warn!(container = %r.target.container_id, error = %e.msg, "ignoring the descriptor sent with DEL");
                None
            });
            service.del(r, ns).await.map_err(CniError::from)
        }
        Op::Check(r) => match netns(fd, &r.target) {
            Ok(ns) => service.check(r, ns).await.map_err(CniError::from),
            Err(e) => Err(e),
        },
        Op::Gc(r) => service.gc(r).await.map_err(CniError::from),
        Op::Status => service.status(),
        Op::Decisions { limit } => service.decisions(limit),
        Op::Inspect => crate::inspect::of(service).await,
    };
    crate::metrics::metrics().cni_request(
        op_name,
        result.as_ref().err().map_or(0, |e| e.code),
        started.elapsed(),
    );
    match &result {
        Ok(_) => debug!(
            op = op_name,
            elapsed_us = started.elapsed().as_micros() as u64,
            "served"
        ),
        Err(e) => {
            warn!(op = op_name, code = e.code, error = %e.msg, details = %e.details, "request failed")
        }
    }
    result
}

/// Reads one frame, collecting the descriptor sent with it (at most one).
async fn read_request(stream: &UnixStream) -> io::Result<(Request, Option<OwnedFd>)> {
    let mut fds = Vec::new();
    let mut header = [0u8; 4];
    read_exact_with_fds(stream, &mut header, &mut fds).await?;
    let mut body = vec![0u8; rpc::frame_len(header)?];
    read_exact_with_fds(stream, &mut body, &mut fds).await?;
    if fds.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected at most one descriptor, got {}", fds.len()),
        ));
    }
    let request =
        serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((request, fds.pop()))
}

async fn read_exact_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || {
            recv_with_fds(stream.as_raw_fd(), &mut buf[filled..], fds)
        }) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        // A request carries at most one descriptor: stop reading at once
        // rather than let a client pile up more (they are closed on return).
        if fds.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected at most one descriptor, got {}", fds.len()),
            ));
        }
    }
    Ok(())
}

/// The most descriptors the kernel lets a sender attach to one message
/// (`SCM_MAX_FD`). The control buffer has room for all of them, so a
/// message is only ever truncated when our descriptor table is full.
const SCM_MAX_FD: usize = 253;

/// One `recvmsg`, collecting every descriptor the kernel installed for us.
///
/// Every installed descriptor becomes an [`OwnedFd`] in `fds` *before* any
/// check can fail, so each is closed on every path: a message with more than
/// the one descriptor we expect, a truncated control message (the kernel
/// installs what fits, or what the table has room for, and sets
/// `MSG_CTRUNC`), a frame that then fails to parse.
fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    // u64s keep the buffer aligned for `cmsghdr`.
    let mut control = [0u64; (SCM_MAX_FD * 4 + 64) / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at `iov` (over `buf`) and `control`, both alive
    // and writable for the call, with their true lengths.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `msg` was filled in by the kernel; CMSG_FIRSTHDR/NXTHDR stay
    // within msg_control/msg_controllen, and CMSG_DATA of an SCM_RIGHTS
    // header holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    // The kernel just installed these descriptors in our
                    // table for us; nothing else owns them.
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the request's control data was truncated ({} descriptors installed); the agent's descriptor table may be full",
                fds.len()
            ),
        ));
    }
    Ok(n as usize)
}
