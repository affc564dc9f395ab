//! The WASI a guest gets: just enough for a Rust guest's standard library
//! to start, and nothing it could learn the world from or block on.
//!
//! A plain Rust `wasm32-wasip2` component imports a dozen WASI interfaces
//! whether or not it uses them (wasi-libc reads its preopens and
//! environment at start-up, `println!` writes to `wasi:cli/stdout`,
//! `HashMap` seeds itself from `wasi:random`). They are linked here with an
//! empty context:
//!
//! | interface | what the guest sees |
//! |---|---|
//! | `wasi:cli/*` | no arguments, no environment, stdin closed, stdout and stderr captured line by line into the agent's log ([`crate::guest_log`]), not a terminal; `exit` ends the call with an error |
//! | `wasi:io/*` | the streams above; see [`SandboxIo`] |
//! | `wasi:clocks/wall-clock` | frozen at the Unix epoch: the contract gives guests no clock |
//! | `wasi:random/*` | a fixed byte sequence: the contract gives guests no randomness beyond the `random` argument, and a decision must be reproducible from its arguments |
//! | `wasi:filesystem/*` | no preopened directories, so no file can ever be opened |
//!
//! Not linked at all, so a guest importing them is refused at load:
//! `wasi:sockets/*` (no network), `wasi:clocks/monotonic-clock` (its
//! timers would block the host thread, which epochs cannot interrupt), and
//! anything else.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::sync::io::{poll as sync_poll, streams as sync_streams};
use wasmtime_wasi::p2::{DynPollable, StreamError, StreamResult};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView as _};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder, WasiView};
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::bindings::wasi::io::streams as async_streams;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream};

use crate::guest_log::{CallLogHandle, LogSource, StdioSink};
use crate::limits::RANDOM_MAX_BYTES;

/// The interfaces [`add_to_linker`] offers, by name without version, for
/// the message that names what a refused guest wanted.
pub(crate) const OFFERED: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
];

/// Links the sandbox's WASI into `linker`.
pub(crate) fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};

    let l = linker;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    random::random::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, T::random)?;
    filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    // The synchronous filesystem bindings run their host functions through
    // a Tokio `block_on`, which would panic on an agent's Tokio worker; but
    // every one of them takes a descriptor, and with no preopens a guest can
    // never hold one (wasmtime checks resource handles before the host
    // function runs).
    wasmtime_wasi::p2::bindings::sync::filesystem::types::add_to_linker::<T, WasiFilesystem>(
        l,
        T::filesystem,
    )?;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<T, IoTable>(l, |t| t.ctx().table)?;
    sync_streams::add_to_linker::<T, SandboxIoData>(l, |t| SandboxIo(t.ctx().table))?;
    sync_poll::add_to_linker::<T, SandboxIoData>(l, |t| SandboxIo(t.ctx().table))?;
    Ok(())
}

/// A call's WASI context: empty, with stdout and stderr going to `log`.
pub(crate) fn context(log: &CallLogHandle) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.stdout(StdioSink::new(log.clone(), LogSource::Stdout))
        .stderr(StdioSink::new(log.clone(), LogSource::Stderr))
        .wall_clock(FrozenClock)
        .secure_random(wasmtime_wasi::Deterministic::new(RANDOM_BYTES.to_vec()))
        .insecure_random(wasmtime_wasi::Deterministic::new(RANDOM_BYTES.to_vec()))
        .insecure_random_seed(0x686f_7374_6e69_635f_706f_6c69_6379_2121)
        .max_random_size(RANDOM_MAX_BYTES);
    b.build()
}

/// What `wasi:random` returns, over and over: no entropy, on purpose.
const RANDOM_BYTES: [u8; 16] = *b"hostnic-policy!!";

/// `wasi:clocks/wall-clock` stopped at the Unix epoch.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

struct IoTable;
impl HasData for IoTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// `wasi:io/streams` and `wasi:io/poll` without blocking.
///
/// wasmtime-wasi's synchronous bindings run every blocking stream operation
/// and `poll` through a Tokio `block_on`, which panics when called on a
/// Tokio worker thread (where the agent may well call a hook) and blocks
/// the thread where epochs cannot interrupt it. In this sandbox nothing is
/// ever worth waiting for: stdout and stderr are always ready, stdin is
/// closed, and there are no timers or sockets. So the blocking operations
/// reuse wasmtime-wasi's runtime-agnostic async implementations, polled to
/// completion right away; one that is still pending after a few polls
/// would be waiting for something that never comes, and traps.
pub(crate) struct SandboxIo<'a>(&'a mut ResourceTable);

struct SandboxIoData;
impl HasData for SandboxIoData {
    type Data<'a> = SandboxIo<'a>;
}

/// Polls `f` a few times (a future may yield once before it is ready);
/// a future still pending is waiting for something this sandbox never
/// provides.
fn now<F: Future>(what: &str, f: F) -> wasmtime::Result<F::Output> {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..4 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Ok(v);
        }
    }
    Err(wasmtime::format_err!(
        "guest blocked in {what} on something that is never ready; policy guests cannot wait"
    ))
}

fn now_stream<T>(what: &str, f: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    now(what, f).map_err(StreamError::Trap)?
}

use async_streams::{HostInputStream as AsyncIn, HostOutputStream as AsyncOut};

impl sync_streams::Host for SandboxIo<'_> {
    fn convert_stream_error(
        &mut self,
        err: StreamError,
    ) -> wasmtime::Result<sync_streams::StreamError> {
        Ok(
            match async_streams::Host::convert_stream_error(self.0, err)? {
                async_streams::StreamError::LastOperationFailed(e) => {
                    sync_streams::StreamError::LastOperationFailed(e)
                }
                async_streams::StreamError::Closed => sync_streams::StreamError::Closed,
            },
        )
    }
}

impl sync_streams::HostOutputStream for SandboxIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        now("output-stream.drop", AsyncOut::drop(self.0, stream))?
    }
    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        AsyncOut::check_write(self.0, stream)
    }
    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        AsyncOut::write(self.0, stream, bytes)
    }
    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        now_stream(
            "blocking-write-and-flush",
            AsyncOut::blocking_write_and_flush(self.0, stream, bytes),
        )
    }
    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        now_stream(
            "blocking-write-zeroes-and-flush",
            AsyncOut::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }
    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncOut::subscribe(self.0, stream)
    }
    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        AsyncOut::write_zeroes(self.0, stream, len)
    }
    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        AsyncOut::flush(self.0, stream)
    }
    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        now_stream("blocking-flush", AsyncOut::blocking_flush(self.0, stream))
    }
    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        AsyncOut::splice(self.0, dst, src, len)
    }
    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        now_stream(
            "blocking-splice",
            AsyncOut::blocking_splice(self.0, dst, src, len),
        )
    }
}

impl sync_streams::HostInputStream for SandboxIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        now("input-stream.drop", AsyncIn::drop(self.0, stream))?
    }
    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        AsyncIn::read(self.0, stream, len)
    }
    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        now_stream("blocking-read", AsyncIn::blocking_read(self.0, stream, len))
    }
    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        AsyncIn::skip(self.0, stream, len)
    }
    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        now_stream("blocking-skip", AsyncIn::blocking_skip(self.0, stream, len))
    }
    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncIn::subscribe(self.0, stream)
    }
}

impl sync_poll::Host for SandboxIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now("poll", async_poll::Host::poll(self.0, pollables))?
    }
}

impl sync_poll::HostPollable for SandboxIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        now(
            "pollable.ready",
            async_poll::HostPollable::ready(self.0, pollable),
        )?
    }
    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        now(
            "pollable.block",
            async_poll::HostPollable::block(self.0, pollable),
        )?
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_completes_ready_futures_and_refuses_pending_ones() {
        assert_eq!(now("t", async { 7 }).unwrap(), 7);
        let err = now("t", std::future::pending::<()>()).unwrap_err();
        assert!(err.to_string().contains("cannot wait"), "{err}");
    }
}
