//! nftables in a namespace by nft's own code, for what hostnic's own
//! nf_tables socket (`nftables/`) does not do:
//!
//! - [`Netns::nft_apart`]: a ruleset (nft's script syntax) applied in one
//!   atomic transaction by `nft -f -` in a process of its own (the return
//!   path's rules). The kernel makes a commit that replaces rules wait
//!   out an RCU grace period (8–24 ms here); apart, that wait holds up
//!   nothing in the agent.
//! - [`Netns::nft_list_json`]: a listing as libnftables-json(5), by
//!   libnftables called in this process on a thread that has entered the
//!   namespace (no process is started). libnftables keeps process-wide
//!   state (its interface cache, its one-time set-up), so one call runs
//!   at a time. Like nft, it ends the process when it cannot open or read
//!   a netlink socket, or allocate (its `netlink_init_error`,
//!   `memory_allocation_error`): the agent is then restarted, as after any
//!   kill, and finds its pods' tables in place.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::{Error, Netns, Result};

// The library's SONAME, as the dynamic loader looks it up: no -dev
// package (its unversioned symlink) is needed to build.
#[link(name = "libnftables.so.1", kind = "dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    fn nft_ctx_new(flags: u32) -> *mut c_void;
    fn nft_ctx_free(ctx: *mut c_void);
    fn nft_ctx_buffer_output(ctx: *mut c_void) -> c_int;
    fn nft_ctx_buffer_error(ctx: *mut c_void) -> c_int;
    fn nft_ctx_get_error_buffer(ctx: *mut c_void) -> *const c_char;
    fn nft_ctx_get_output_buffer(ctx: *mut c_void) -> *const c_char;
    fn nft_ctx_output_set_flags(ctx: *mut c_void, flags: u32);
    fn nft_run_cmd_from_buffer(ctx: *mut c_void, buf: *const c_char) -> c_int;
}

/// `NFT_CTX_DEFAULT`: a context with its netlink socket.
const NFT_CTX_DEFAULT: u32 = 0;
/// `NFT_CTX_OUTPUT_JSON`: listings as libnftables-json(5).
const NFT_CTX_OUTPUT_JSON: u32 = 1 << 4;

/// One call into libnftables at a time (see the module's comment).
static LIBNFTABLES: Mutex<()> = Mutex::new(());

/// A libnftables context, freed when dropped. Its netlink socket belongs
/// to the namespace of the thread that made it.
struct Context(*mut c_void);

impl Context {
    /// A context whose output and errors go to buffers, not to our
    /// stdout and stderr.
    fn new() -> Option<Context> {
        // SAFETY: nft_ctx_new takes flags by value and returns an owned
        // context or NULL.
        let ctx = unsafe { nft_ctx_new(NFT_CTX_DEFAULT) };
        if ctx.is_null() {
            return None;
        }
        let ctx = Context(ctx);
        // SAFETY: ctx is a live context, owned here.
        let buffered =
            unsafe { nft_ctx_buffer_output(ctx.0) == 0 && nft_ctx_buffer_error(ctx.0) == 0 };
        buffered.then_some(ctx)
    }

    /// Runs `commands`, returning what they printed; Err holds
    /// libnftables' own message.
    fn run(&self, commands: &CStr) -> std::result::Result<String, String> {
        // SAFETY: self.0 is a live context and commands a NUL-terminated
        // string that outlives the call.
        if unsafe { nft_run_cmd_from_buffer(self.0, commands.as_ptr()) } == 0 {
            // SAFETY: with output buffered, the context returns a string
            // it owns (NULL if none), valid until the next call on it.
            return Ok(unsafe { owned(nft_ctx_get_output_buffer(self.0)) }.unwrap_or_default());
        }
        // SAFETY: as above, for the error buffer.
        let why = unsafe { owned(nft_ctx_get_error_buffer(self.0)) };
        Err(why.map_or_else(|| "refused (no message)".into(), |w| w.trim().to_string()))
    }
}

/// The `nft` [`Netns::nft_apart`] runs: Debian's (and the image's), else
/// the one on `PATH`.
fn nft_program() -> &'static str {
    const DEBIAN: &str = "/usr/sbin/nft";
    if std::path::Path::new(DEBIAN).exists() {
        DEBIAN
    } else {
        "nft"
    }
}

/// A copy of a C string the context owns.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string that lives through the call.
unsafe fn owned(s: *const c_char) -> Option<String> {
    // SAFETY: the caller's promise.
    (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: self.0 came from nft_ctx_new and is freed once, here.
        unsafe { nft_ctx_free(self.0) }
    }
}

impl Netns {
    /// Applies `ruleset` (nft's script syntax) in this namespace, all of
    /// it or none, by an `nft -f -` process of its own (see the module's
    /// comment); the error holds nft's own message.
    pub async fn nft_apart(&self, ruleset: String) -> Result<()> {
        let op = format!("applying nftables rules in netns {}", self.label());
        let nft = nft_program();
        self.inside("netns-nft", move || {
            let mut child = Command::new(nft)
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(Error::io(format!("{op}: running {nft}")))?;
            let written = child
                .stdin
                .take()
                .map(|mut stdin| stdin.write_all(ruleset.as_bytes()))
                .unwrap_or(Ok(()));
            let out = child
                .wait_with_output()
                .map_err(Error::io(format!("{op}: waiting for {nft}")))?;
            if !out.status.success() {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(Error::Refused {
                    op,
                    why: format!("{nft} exited with {}: {why}", out.status),
                });
            }
            written.map_err(Error::io(format!("{op}: writing to {nft}")))
        })
        .await
    }

    /// What `list` (nft's command, as in `table inet filter`) prints in
    /// this namespace, as libnftables-json(5) (rules with their counters).
    pub async fn nft_list_json(&self, what: &str) -> Result<String> {
        let op = format!("listing nftables {what} in netns {}", self.label());
        self.run_nft(op, format!("list {what}"), NFT_CTX_OUTPUT_JSON)
            .await
    }

    async fn run_nft(&self, op: String, commands: String, output: u32) -> Result<String> {
        let commands = CString::new(commands).map_err(|_| Error::Refused {
            op: op.clone(),
            why: "the commands hold a NUL byte".into(),
        })?;
        self.inside("netns-nft", move || {
            let _one = LIBNFTABLES
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let ctx = Context::new().ok_or_else(|| Error::Refused {
                op: op.clone(),
                why: "libnftables could not buffer a context's output (out of memory)".into(),
            })?;
            // SAFETY: ctx is a live context; flags are by value.
            unsafe { nft_ctx_output_set_flags(ctx.0, output) };
            ctx.run(&commands).map_err(|why| Error::Refused { op, why })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsing happens before anything reaches the kernel, so a broken
    /// ruleset is refused with nft's own message, even without root.
    #[test]
    fn a_broken_ruleset_is_refused_with_the_parsers_message() {
        let _one = LIBNFTABLES.lock().unwrap();
        let ctx = Context::new().expect("a context");
        let why = ctx
            .run(c"table inet t { chain c { no such statement; } }")
            .unwrap_err();
        assert!(why.contains("syntax error"), "{why}");
    }
}
