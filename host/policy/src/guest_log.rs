//! What guests say: `host.log` lines and stdout/stderr, captured line by
//! line into the agent's log (`tracing`, with the guest's name and version
//! as fields) and into the call's [`Decision`](crate::Decision).
//!
//! Each call has a budget ([`LOG_MAX_LINES_PER_CALL`],
//! [`LOG_MAX_BYTES_PER_CALL`]); lines past it are dropped and counted, and
//! one warning says how many. Lines are cut at [`LOG_MAX_LINE_BYTES`].
//! Nothing a guest writes can block it or trap it (wasmtime's
//! `MemoryOutputPipe` traps the guest when its buffer fills, so it is no log
//! sink).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::limits::{
    LOG_MAX_BYTES_PER_CALL, LOG_MAX_LINE_BYTES, LOG_MAX_LINES_PER_CALL, STDIO_WRITE_BYTES,
};

/// A log line's severity, as the guest gave it (`host.level`); stdout lines
/// are `Info`, stderr lines `Warn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// `host.log`.
    Host,
    Stdout,
    Stderr,
}

/// One line a guest logged during a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
}

/// Who is talking, for the `tracing` fields.
#[derive(Debug, Clone)]
pub(crate) struct Speaker {
    pub guest: Arc<str>,
    pub version: Arc<str>,
    pub hook: &'static str,
}

/// One call's log: the lines kept, the budget used, the partial lines of
/// stdout and stderr. Shared (behind a mutex) by the store's host state
/// and the two stdio streams, which wasmtime-wasi owns.
#[derive(Debug)]
pub(crate) struct CallLog {
    speaker: Speaker,
    lines: Vec<LogLine>,
    bytes: usize,
    dropped: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// The shared handle.
#[derive(Debug, Clone)]
pub(crate) struct CallLogHandle(Arc<Mutex<CallLog>>);

impl CallLogHandle {
    pub fn new(speaker: Speaker) -> Self {
        CallLogHandle(Arc::new(Mutex::new(CallLog {
            speaker,
            lines: Vec::new(),
            bytes: 0,
            dropped: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, CallLog> {
        // Every update leaves the log consistent; a panic elsewhere while
        // holding the lock does not make the lines wrong.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `host.log`.
    pub fn log(&self, level: LogLevel, message: &str) {
        self.lock().push(level, LogSource::Host, message);
    }

    /// A stdout/stderr write: complete lines are logged now, the rest is
    /// kept until the next newline or the end of the call.
    pub fn write(&self, source: LogSource, bytes: &[u8]) {
        self.lock().write(source, bytes);
    }

    /// Ends the call: logs partial stdio lines and the dropped-lines warning,
    /// and hands back the lines.
    pub fn finish(&self) -> Vec<LogLine> {
        let mut log = self.lock();
        for source in [LogSource::Stdout, LogSource::Stderr] {
            let rest = std::mem::take(log.partial(source));
            if !rest.is_empty() {
                log.push_bytes(source, &rest);
            }
        }
        if log.dropped > 0 {
            let s = &log.speaker;
            tracing::warn!(
                guest = %s.guest,
                version = %s.version,
                hook = s.hook,
                dropped = log.dropped,
                "guest log over its per-call budget ({LOG_MAX_LINES_PER_CALL} lines, \
                 {LOG_MAX_BYTES_PER_CALL} bytes): lines dropped",
            );
            log.dropped = 0;
        }
        std::mem::take(&mut log.lines)
    }
}

impl CallLog {
    fn partial(&mut self, source: LogSource) -> &mut Vec<u8> {
        match source {
            LogSource::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        }
    }

    fn write(&mut self, source: LogSource, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(self.partial(source));
            line.extend_from_slice(&bytes[..nl]);
            self.push_bytes(source, &line);
            bytes = &bytes[nl + 1..];
        }
        // Keep at most a line's worth of an unfinished line (plus one byte,
        // so that the cut marker still shows): the rest would be cut anyway.
        let partial = self.partial(source);
        let room = (LOG_MAX_LINE_BYTES + 1).saturating_sub(partial.len());
        partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn push_bytes(&mut self, source: LogSource, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Blank lines (Rust's panic message starts with one) say nothing in
        // a structured log.
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let level = match source {
            LogSource::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        };
        self.push(level, source, &String::from_utf8_lossy(line));
    }

    fn push(&mut self, level: LogLevel, source: LogSource, message: &str) {
        let message = cut(message, LOG_MAX_LINE_BYTES);
        if self.lines.len() >= LOG_MAX_LINES_PER_CALL
            || self.bytes + message.len() > LOG_MAX_BYTES_PER_CALL
        {
            self.dropped += 1;
            return;
        }
        self.bytes += message.len();
        emit(&self.speaker, level, source, &message);
        self.lines.push(LogLine {
            level,
            source,
            message,
        });
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary, marking the cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    const MARK: &str = " [cut]";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

fn emit(s: &Speaker, level: LogLevel, source: LogSource, message: &str) {
    let source = match source {
        LogSource::Host => "log",
        LogSource::Stdout => "stdout",
        LogSource::Stderr => "stderr",
    };
    macro_rules! ev {
        ($lvl:expr) => {
            tracing::event!(
                target: "hostnic_policy::guest",
                $lvl,
                guest = %s.guest,
                version = %s.version,
                hook = s.hook,
                source,
                "{message}"
            )
        };
    }
    match level {
        LogLevel::Error => ev!(tracing::Level::ERROR),
        LogLevel::Warn => ev!(tracing::Level::WARN),
        LogLevel::Info => ev!(tracing::Level::INFO),
        LogLevel::Debug => ev!(tracing::Level::DEBUG),
    }
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:?}: {}", self.level, self.source, self.message)
    }
}

/// The guest's stdout or stderr: a wasmtime-wasi output stream that is
/// always ready, never blocks and never fails, and splits what it is given
/// into log lines.
pub(crate) struct StdioSink {
    log: CallLogHandle,
    source: LogSource,
}

impl StdioSink {
    pub fn new(log: CallLogHandle, source: LogSource) -> Self {
        StdioSink { log, source }
    }
}

mod wasi_impls {
    //! The trait plumbing wasmtime-wasi needs for a stdout/stderr.
    use super::*;
    use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
    use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

    impl IsTerminal for StdioSink {
        fn is_terminal(&self) -> bool {
            false
        }
    }

    impl StdoutStream for StdioSink {
        fn p2_stream(&self) -> Box<dyn OutputStream> {
            Box::new(StdioSink {
                log: self.log.clone(),
                source: self.source,
            })
        }

        fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
            // Only the WASIp3 interfaces use this, and they are not linked.
            Box::new(tokio::io::sink())
        }
    }

    #[wasmtime_wasi::async_trait]
    impl Pollable for StdioSink {
        async fn ready(&mut self) {}
    }

    impl OutputStream for StdioSink {
        fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
            self.log.write(self.source, &bytes);
            Ok(())
        }

        fn flush(&mut self) -> StreamResult<()> {
            Ok(())
        }

        fn check_write(&mut self) -> StreamResult<usize> {
            Ok(STDIO_WRITE_BYTES)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> CallLogHandle {
        CallLogHandle::new(Speaker {
            guest: "g".into(),
            version: "0123456789ab".into(),
            hook: "vxnet-selection",
        })
    }

    #[test]
    fn stdio_is_split_into_lines_across_writes() {
        let log = handle();
        log.write(LogSource::Stdout, b"hel");
        log.write(LogSource::Stdout, b"lo\nwor");
        log.write(LogSource::Stderr, b"\noops\r\n");
        log.write(LogSource::Stdout, b"ld");
        let lines = log.finish();
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.source, l.level, l.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (LogSource::Stdout, LogLevel::Info, "hello"),
                (LogSource::Stderr, LogLevel::Warn, "oops"),
                (LogSource::Stdout, LogLevel::Info, "world"),
            ]
        );
    }

    #[test]
    fn long_lines_are_cut_at_a_char_boundary() {
        let log = handle();
        let long = "é".repeat(LOG_MAX_LINE_BYTES);
        log.log(LogLevel::Info, &long);
        log.write(LogSource::Stdout, long.as_bytes());
        log.write(LogSource::Stdout, b"\n");
        let lines = log.finish();
        assert_eq!(lines.len(), 2);
        for l in &lines {
            assert!(l.message.len() <= LOG_MAX_LINE_BYTES, "{}", l.message.len());
            assert!(l.message.ends_with("[cut]"));
        }
        // A line exactly at the limit is kept whole.
        let log = handle();
        log.log(LogLevel::Info, &"x".repeat(LOG_MAX_LINE_BYTES));
        assert_eq!(log.finish()[0].message.len(), LOG_MAX_LINE_BYTES);
    }

    #[test]
    fn line_budget_inside_and_over() {
        let log = handle();
        for i in 0..LOG_MAX_LINES_PER_CALL {
            log.log(LogLevel::Debug, &format!("line {i}"));
        }
        assert_eq!(log.finish().len(), LOG_MAX_LINES_PER_CALL);

        let log = handle();
        for i in 0..LOG_MAX_LINES_PER_CALL + 10 {
            log.log(LogLevel::Debug, &format!("line {i}"));
        }
        let lines = log.finish();
        assert_eq!(lines.len(), LOG_MAX_LINES_PER_CALL);
        assert_eq!(lines.last().unwrap().message, "line 31");
    }

    #[test]
    fn byte_budget_inside_and_over() {
        let per_line = LOG_MAX_BYTES_PER_CALL / LOG_MAX_LINE_BYTES;
        let log = handle();
        for _ in 0..per_line {
            log.log(LogLevel::Info, &"x".repeat(LOG_MAX_LINE_BYTES));
        }
        assert_eq!(log.finish().len(), per_line);

        let log = handle();
        for _ in 0..per_line {
            log.log(LogLevel::Info, &"x".repeat(LOG_MAX_LINE_BYTES));
        }
        log.log(LogLevel::Info, "one more");
        assert_eq!(log.finish().len(), per_line);
    }

    #[test]
    fn an_endless_partial_line_stays_bounded() {
        let log = handle();
        for _ in 0..1000 {
            log.write(LogSource::Stdout, &[b'x'; 4096]);
        }
        let lines = log.finish();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].message.len() <= LOG_MAX_LINE_BYTES);
    }
}
