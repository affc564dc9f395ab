//! The one blocking call to `hostnic-agent` over its unix socket.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use hostnic_proto::cni::{CniError, code};
use hostnic_proto::rpc::{self, Op, PROTOCOL_VERSION, Reply, Request, Response};
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

#[derive(Debug)]
pub(crate) struct Client {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Client {
    /// Sends `op` (with the netns descriptor, if any) and waits for the
    /// answer. A missing or silent agent is "try again later": the runtime
    /// retries, and the DaemonSet brings the agent back.
    pub fn call(&self, op: Op, netns: Option<&File>) -> Result<Reply, CniError> {
        let what = op.name();
        let request = Request {
            version: PROTOCOL_VERSION,
            op,
        };
        let frame = rpc::encode_frame(&request).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("encoding the {what} request: {e}"),
            )
        })?;

        let mut stream = UnixStream::connect(&self.socket).map_err(|e| {
            CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "hostnic-agent is not reachable at {}: {e}",
                    self.socket.display()
                ),
            )
            .with_details("is the hostnic-agent DaemonSet pod running on this node?")
        })?;
        let io_err = |stage: &str, e: io::Error| {
            // An agent that died or restarted mid-request (reset, EOF, a
            // broken pipe) or that is too busy to answer is transient:
            // "try again later", which runtimes retry.
            let code = match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => code::TRY_AGAIN_LATER,
                _ => code::IO,
            };
            CniError::new(
                code,
                format!(
                    "{stage} hostnic-agent at {} ({what}): {e}",
                    self.socket.display()
                ),
            )
        };
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| io_err("configuring the socket to", e))?;

        if let Err(e) = send_with_fd(&mut stream, &frame, netns) {
            // An agent that refuses a caller early (not root, wrong protocol)
            // answers and closes without reading: our write then breaks, but
            // its answer is already waiting in our receive queue.
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) && let Ok(response) = rpc::read_frame::<Response>(&mut stream)
            {
                return response.result;
            }
            return Err(io_err("sending to", e));
        }
        let response: Response = rpc::read_frame(&mut stream).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "hostnic-agent at {} closed the connection before answering {what}; it may have restarted",
                    self.socket.display()
                ),
            ),
            _ => io_err("reading the answer of", e),
        })?;
        if response.version != PROTOCOL_VERSION {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "hostnic-agent speaks protocol {} but this executable speaks {PROTOCOL_VERSION}",
                    response.version
                ),
            ));
        }
        response.result
    }
}

/// Writes the frame, attaching the descriptor to its first bytes.
fn send_with_fd(stream: &mut UnixStream, frame: &[u8], fd: Option<&File>) -> io::Result<()> {
    let Some(fd) = fd else {
        return stream.write_all(frame);
    };
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = loop {
        match sendmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &[IoSlice::new(frame)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    stream.write_all(&frame[sent..])
}
