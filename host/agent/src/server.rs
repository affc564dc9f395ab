//! The RPC server: a root-only unix socket speaking the framed JSON protocol
//! of [`hostnic_proto::rpc`], one request per connection, each connection
//! served on its own task.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hostnic_netlink::Netns;
use hostnic_proto::cni::{CniError, code};
use hostnic_proto::rpc::{self, Op, PROTOCOL_VERSION, Request, Response};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::service::Service;

/// How long a client may take to send its request or read the answer. The
/// executable sends its request at once; this only bounds a stuck peer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests served at once. Each holds a task, a couple of netlink sockets
/// and maybe a thread while it creates them; a node runs at most ~64 pods.
const MAX_IN_FLIGHT: usize = 128;

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

/// Serves until `shutdown` resolves, then waits for requests in flight.
pub async fn serve(
    listener: UnixListener,
    service: Arc<Service>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().acquire_owned().await else { break };
                    let service = service.clone();
                    tokio::spawn(async move {
                        handle(stream, &service).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Let requests in flight finish: an ADD cut in half is rolled back at
    // the next start, but finishing it is kinder to the runtime.
    let _all = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
}

async fn handle(mut stream: UnixStream, service: &Arc<Service>) {
    let result = match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => {
            match tokio::time::timeout(IO_TIMEOUT, read_request(&stream)).await {
                Ok(Ok((request, fd))) => dispatch(service, request, fd).await,
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
    if let Err(e) = tokio::time::timeout(IO_TIMEOUT, stream.write_all(&frame))
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
    let started = std::time::Instant::now();
    let result = match request.op {
        Op::Add(r) => {
            let ns = fd.map(|fd| Netns::from_fd(fd, label(&r.target)));
            service.add(r, ns).await
        }
        Op::Del(r) => {
            let ns = fd.map(|fd| Netns::from_fd(fd, label(&r.target)));
            service.del(r, ns).await
        }
        Op::Check(r) => {
            let ns = fd.map(|fd| Netns::from_fd(fd, label(&r.target)));
            service.check(r, ns).await
        }
        Op::Gc(r) => service.gc(r).await,
        Op::Status => service.status(),
    };
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
    }
    Ok(())
}

fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let cmsgs = msg.cmsgs().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors in one message",
        )
    })?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in our
            // table for us; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(msg.bytes)
}
