//! The one blocking call to `hostnic-agent` over its unix socket, and the
//! wait that bridges a restart of the agent.
//!
//! # Restarts
//!
//! A rolling update of the DaemonSet leaves a node without a listening
//! agent for a few seconds: the old agent closes its listener on SIGTERM
//! (the socket file stays, so connecting is refused), and its replacement
//! removes the stale file and binds only once it has reconciled the node
//! (for an instant the path is missing). A call in that gap keeps trying,
//! with a short backoff, for up to the client's `wait`, and only then fails
//! "try again later" saying how long it waited.
//!
//! Whether a request may be sent again depends on whether the agent can
//! have acted on it, and the kernel tells us that:
//!
//! - connecting fails with `ENOENT` or `ECONNREFUSED`: nobody listens;
//! - the connection is reset, or our write breaks, before any answer: a
//!   unix stream socket resets its peer only when it is closed with data
//!   left unread (or was never accepted), and our write breaks only when the
//!   agent was gone before it had all of it. Either way the agent never read
//!   the whole request, so it did nothing with it.
//!
//! Both are sent again whatever the verb. An end of stream before the
//! answer is different: the agent read the request and then died (kill -9,
//! OOM), so it may have acted. DEL, CHECK and GC are idempotent and are sent
//! again; ADD is not. It fails "try again later" as before, and the runtime
//! follows a failed ADD with DEL and a fresh ADD, the path the kill-loop
//! tests prove (the agent rolls a half-done ADD back at its next start).

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hostnic_proto::cni::{CniError, code};
use hostnic_proto::rpc::{self, Op, PROTOCOL_VERSION, Reply, Request, Response};
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

/// The first pause between tries, doubled after each up to [`MAX_PAUSE`].
/// A refused connect costs microseconds; the pauses only keep a few dozen
/// waiting executables from spinning.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause: a restarted agent is used at most this long after it
/// starts listening.
const MAX_PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub(crate) struct Client {
    pub socket: PathBuf,
    /// How long one request may take once connected.
    pub timeout: Duration,
    /// How long to keep trying while the agent does not listen or went away
    /// without reading the request, counted from the first try; zero: one
    /// try.
    pub wait: Duration,
}

/// How one try ended.
enum Attempt {
    /// The agent answered (its reply or its error).
    Answered(Result<Reply, CniError>),
    /// No agent read the request: safe to send again, whatever the verb.
    Unread(CniError),
    /// The agent read the request and went away without answering: it may
    /// have acted on it.
    Cut(CniError),
    /// Nothing a retry would change.
    Failed(CniError),
}

impl Client {
    /// Sends `op` (with the netns descriptor, if any) and waits for the
    /// answer, bridging an agent restart as the module explains. A missing
    /// or silent agent is "try again later": the runtime retries, and the
    /// DaemonSet brings the agent back.
    pub fn call(&self, op: Op, netns: Option<&File>) -> Result<Reply, CniError> {
        let what = op.name();
        let resend_when_cut = !matches!(op, Op::Add(_));
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
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut waited = false;
        loop {
            let failure = match self.attempt(&frame, what, netns) {
                Attempt::Answered(result) => {
                    if waited {
                        // stderr lands in the runtime's log: the trace of a
                        // restart bridged.
                        eprintln!(
                            "hostnic: {what}: answered by hostnic-agent at {} after {:.1} s of trying (it was not listening, or went away before answering)",
                            self.socket.display(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return result;
                }
                Attempt::Failed(e) => return Err(e),
                Attempt::Cut(e) if !resend_when_cut => return Err(e),
                Attempt::Cut(e) | Attempt::Unread(e) => e,
            };
            let left = self.wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(self.gave_up(failure, started.elapsed()));
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(MAX_PAUSE);
            waited = true;
        }
    }

    /// One connection, one request, one answer.
    fn attempt(&self, frame: &[u8], what: &str, netns: Option<&File>) -> Attempt {
        let mut stream = match UnixStream::connect(&self.socket) {
            Ok(s) => s,
            Err(e) => {
                let nobody_listens = matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                );
                let e = CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "hostnic-agent is not reachable at {}: {e}",
                        self.socket.display()
                    ),
                )
                .with_details("is the hostnic-agent DaemonSet pod running on this node?");
                // Anything else (permissions, not a socket) is not ours to
                // wait out.
                return if nobody_listens {
                    Attempt::Unread(e)
                } else {
                    Attempt::Failed(e)
                };
            }
        };
        let io_err = |stage: &str, e: io::Error| {
            // An agent too busy to take or answer the request, or one that
            // went away, is transient: "try again later", which runtimes
            // retry.
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
        if let Err(e) = stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
        {
            return Attempt::Failed(io_err("configuring the socket to", e));
        }

        if let Err(e) = send_with_fd(&mut stream, frame, netns) {
            if !matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                return Attempt::Failed(io_err("sending to", e));
            }
            // An agent that refuses a caller early (not root, wrong protocol)
            // answers and closes without reading: our write then breaks, but
            // its answer is already waiting in our receive queue.
            return match rpc::read_frame::<Response>(&mut stream) {
                Ok(response) => answered(response),
                // No answer: it went away before it had the whole request.
                Err(_) => Attempt::Unread(io_err("sending to", e)),
            };
        }
        match rpc::read_frame::<Response>(&mut stream) {
            Ok(response) => answered(response),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Attempt::Cut(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "hostnic-agent at {} closed the connection before answering {what}; it may have restarted",
                    self.socket.display()
                ),
            )),
            // Reset: closed with our request unread (see the module).
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                Attempt::Unread(io_err("reading the answer of", e))
            }
            Err(e) => Attempt::Failed(io_err("reading the answer of", e)),
        }
    }

    /// The last failure, saying how long we tried when we did wait.
    fn gave_up(&self, mut e: CniError, waited: Duration) -> CniError {
        if !self.wait.is_zero() {
            e.msg = format!(
                "{}; waited {:.1} s for the agent (connectTimeoutSeconds {})",
                e.msg,
                waited.as_secs_f64(),
                self.wait.as_secs()
            );
        }
        e
    }
}

fn answered(response: Response) -> Attempt {
    if response.version != PROTOCOL_VERSION {
        return Attempt::Failed(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "hostnic-agent speaks protocol {} but this executable speaks {PROTOCOL_VERSION}",
                response.version
            ),
        ));
    }
    Attempt::Answered(response.result)
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
