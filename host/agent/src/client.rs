//! One request to a running agent over its socket, for the agent's own
//! subcommands (`probe`, `policy decisions`, `policy replay`). The CNI
//! executable has its own client, with the netns descriptor passing.

use std::path::Path;
use std::time::Duration;

use hostnic_proto::rpc::{self, Op, PROTOCOL_VERSION, Request, Response};

/// Sends `op` and reads the answer, each way within `timeout`.
pub fn call(socket: &Path, op: Op, timeout: Duration) -> std::io::Result<Response> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    rpc::write_frame(
        &mut stream,
        &Request {
            version: PROTOCOL_VERSION,
            op,
        },
    )?;
    rpc::read_frame(&mut stream)
}
