//! A raw client of the agent's socket, for hostile-input tests: the test
//! chooses the bytes and the descriptors, the agent must stay whole.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
use serde_json::Value;

/// `json` as one frame of the agent protocol (length prefix included).
pub fn frame(json: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(json).expect("serialise");
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// An ADD request for `container` (the netns travels as a descriptor).
pub fn add_request(network: &str, container: &str) -> Value {
    serde_json::json!({
        "version": 1, "op": "add",
        "target": {"network": network, "container_id": container, "ifname": "eth0",
                   "netns": "/proc/self/ns/net"},
    })
}

/// Sends `bytes` with `fds` attached to the first byte, then reads one
/// answer frame (5 s limit). The answer's JSON, or the I/O error.
pub fn call(socket: &Path, bytes: &[u8], fds: &[RawFd]) -> io::Result<Value> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    send(&s, bytes, fds)?;
    read_answer(&mut s)
}

/// One `sendmsg` of `bytes` with `fds`, then the rest of `bytes`.
pub fn send(s: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let sent = if fds.is_empty() {
        0
    } else {
        let cmsg = [ControlMessage::ScmRights(fds)];
        sendmsg::<UnixAddr>(
            s.as_raw_fd(),
            &[IoSlice::new(&bytes[..1])],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?
    };
    (&*s).write_all(&bytes[sent..])
}

/// Reads one answer frame.
pub fn read_answer(mut s: impl Read) -> io::Result<Value> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header)?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    s.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The CNI error code of an answer, if it is an error.
pub fn error_code(answer: &Value) -> Option<u64> {
    answer["result"]["Err"]["code"].as_u64()
}

/// Open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
