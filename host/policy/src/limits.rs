//! Every sandbox limit, in one place, each number with its reason.
//!
//! Two kinds of limit live here:
//!
//! - [`Limits`]: per hook, set by the hook's configuration (a site with a
//!   heavier policy may raise them, up to the ceilings below);
//! - constants: fixed for the runtime, because they size shared structures
//!   (the pooling allocator) or protect the host itself (answer size, log
//!   and kv budgets), and no legitimate guest comes near them.
//!
//! The limits a guest reaches with ordinary code — deadline, memory, answer
//! size, hostcall fuel, config size, kv and log budgets — each have a test
//! that stays inside and one that trips them (`tests/limits.rs`, and the
//! unit tests of `kv.rs`, `guest_log.rs` and `validate.rs`). The instance
//! shape and pool numbers are exercised (inside) by every call; tripping
//! them takes a purpose-built component that `guests/` does not have.

use std::time::Duration;

/// The limits of one hook's calls. Each call gets a fresh store with these
/// set before the guest runs a single instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time a call may run guest code (instantiation included),
    /// enforced by epoch interruption. The default guests answer in tens of
    /// microseconds, so any deadline is orders of magnitude of headroom for
    /// them; what sets the default is the other side: the deadline is wall
    /// time, and an agent in a CPU-limited cgroup can be throttled for most
    /// of a 100 ms CFS period (and a busy node deschedules threads), which
    /// must not fail a healthy guest. 200 ms is two CFS periods, and still
    /// short next to the pod start it sits on (seconds). A runaway guest
    /// costs one ADD those 200 ms, then the failure mode applies.
    pub deadline: Duration,
    /// Linear memory a call may hold, in bytes. A Rust guest starts at
    /// about 1.1 MiB (1 MiB shadow stack plus data); 16 MiB leaves room for
    /// a policy that parses a large config and still keeps 64 concurrent
    /// calls under 1 GiB.
    pub memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(200),
            memory: 16 << 20,
        }
    }
}

impl Limits {
    /// Refuses limits the runtime cannot honour. The ceilings exist because
    /// the pooling allocator reserves every memory slot at its maximum size
    /// up front, and because a deadline shorter than a few ticks would trip
    /// on scheduling noise rather than on the guest.
    pub fn check(&self) -> Result<(), LimitsError> {
        if self.deadline < MIN_DEADLINE || self.deadline > MAX_DEADLINE {
            return Err(LimitsError(format!(
                "deadline {:?} is outside {:?}..={:?}",
                self.deadline, MIN_DEADLINE, MAX_DEADLINE
            )));
        }
        if self.memory < MIN_MEMORY || self.memory > MAX_MEMORY {
            return Err(LimitsError(format!(
                "memory cap {} bytes is outside {}..={} bytes ({} KiB..={} MiB)",
                self.memory,
                MIN_MEMORY,
                MAX_MEMORY,
                MIN_MEMORY >> 10,
                MAX_MEMORY >> 20
            )));
        }
        Ok(())
    }

    /// The deadline in epoch ticks, rounded up, plus one: the current tick
    /// may be about to end, so without the extra tick a call could be cut
    /// short by up to one tick.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_nanos();
        let ticks = self.deadline.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }
}

/// Limits the runtime cannot honour: what is outside its range. A load
/// refuses them as [`LoadError::Limits`](crate::LoadError::Limits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitsError(pub String);

/// How often the ticker thread advances the engine's epoch; the granularity
/// of every deadline. 1 ms: deadlines are tens of ms, and the ticker only
/// runs while a call is in flight (it parks when the runtime is idle), so a
/// fine tick costs nothing on an idle node.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The shortest deadline a hook may set: below 5 ticks the tick granularity
/// and thread scheduling dominate the budget.
pub const MIN_DEADLINE: Duration = Duration::from_millis(5);

/// The longest deadline a hook may set. Calls sit on a pod's CNI ADD, and
/// epochs cannot interrupt the host's own functions, so a long deadline only
/// lets a broken guest hold an ADD (and a thread) longer.
pub const MAX_DEADLINE: Duration = Duration::from_secs(2);

/// The smallest memory cap: a Rust guest needs about 1.1 MiB to instantiate
/// at all (1 MiB shadow stack plus data); 2 MiB gives it a heap.
pub const MIN_MEMORY: usize = 2 << 20;

/// The largest memory cap any hook may set, which is also the size of each
/// slot in the pooling allocator (see [`POOL_MEMORY_RESERVATION`]).
pub const MAX_MEMORY: usize = 64 << 20;

// ---------------------------------------------------------------------------
// Answers. Enforced while and after the host copies the answer out of the
// guest, before anything acts on it.

/// The most entries an answer list may have (vxnet ids, one-of addresses,
/// routes). A node sees a handful of vxnets and a pod a handful of routes;
/// a thousand is already absurd and still cheap to validate.
pub const MAX_ANSWER_ENTRIES: usize = 1024;

/// The most string bytes an answer may hold in total. 1024 entries of a
/// 64-byte id or prefix is 64 KiB; anything larger is a guest bug or an
/// attack, and would bloat the agent's decision log.
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The longest refusal reason kept; longer ones are cut (with a marker), not
/// refused, because the reason is for a person reading the agent's log and
/// the refusal itself is the answer.
pub const MAX_REASON_BYTES: usize = 1024;

/// The longest sticky key (`ip-request.sticky`) the host remembers an
/// address under. A StatefulSet identity is "namespace/name": at most 63 +
/// 1 + 253 bytes.
pub const MAX_STICKY_KEY_BYTES: usize = 320;

/// "Hostcall fuel": the most bytes wasmtime copies out of the guest in one
/// transfer (an answer, or one host-call's arguments) before it gives up.
///
/// This is what makes a huge answer harmless. The guest's memory cap alone
/// does not bound the host's copy: a `list<string>` whose million entries
/// all point at the same 16 KiB string fits in a few MiB of guest memory but
/// would make the host allocate 16 GiB. Fuel counts what the host
/// allocates (24 bytes per `String`, plus the bytes), so it bounds exactly
/// that. 256 KiB is above the largest valid answer (1024 routes of two
/// strings: 48 KiB of headers plus [`MAX_ANSWER_BYTES`]) and above any valid
/// host call (a 4 KiB kv value, a 4 KiB stdout write).
pub const HOSTCALL_FUEL: usize = 256 << 10;

// ---------------------------------------------------------------------------
// The key-value store (`host.kv-get` / `host.kv-set`), per guest name.

/// Keys per guest. Rotation counters and the like need a few; 64 keeps the
/// state file small enough to rewrite on every change.
pub const KV_MAX_KEYS: usize = 64;

/// Bytes per key.
pub const KV_MAX_KEY_BYTES: usize = 256;

/// Bytes per value. Enough for a small JSON document; the store is not a
/// database, and the whole file (64 x 4 KiB at worst) is rewritten per
/// change.
pub const KV_MAX_VALUE_BYTES: usize = 4 << 10;

// ---------------------------------------------------------------------------
// Guest logs (`host.log`, and stdout/stderr captured line by line).

/// Bytes per log line; longer lines are cut with a marker. A log line is
/// for a person; a megabyte "line" is a guest dumping memory.
pub const LOG_MAX_LINE_BYTES: usize = 1024;

/// Lines per call. A decision needs a line or two of explanation; past this
/// budget lines are dropped and counted, and one warning says how many.
pub const LOG_MAX_LINES_PER_CALL: usize = 32;

/// Bytes per call, across all lines: 16 lines of 1 KiB. Together with the
/// line budget this bounds what one call can add to the agent's log and to
/// the `Decision` it returns.
pub const LOG_MAX_BYTES_PER_CALL: usize = 16 << 10;

/// What one stdout/stderr write may carry (`check-write`'s answer). Rust's
/// std writes in chunks of at most this; it also bounds the partial-line
/// buffer kept between writes.
pub const STDIO_WRITE_BYTES: usize = 4 << 10;

// ---------------------------------------------------------------------------
// Instance shape, per call. A Rust wasip2 component is one main module plus
// a few adapter shims: about 4 core instances, 2 tables, 1 memory. The caps
// below are several times that, and refuse only a component built to make
// the host allocate.

/// Core instances per component instance.
pub const MAX_CORE_INSTANCES: usize = 32;
/// Tables per component instance.
pub const MAX_TABLES: usize = 32;
/// Linear memories per component instance.
pub const MAX_MEMORIES: usize = 4;
/// Elements per table (function references). A Rust guest's indirect
/// function table holds a few hundred.
pub const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Bytes the host's `wasi:random` hands out per call: a HashMap seed is 16.
/// wasmtime's default (64 MiB) would let a guest make the host allocate.
pub const RANDOM_MAX_BYTES: u64 = 4 << 10;

// ---------------------------------------------------------------------------
// The pooling allocator: slots reserved once at start so that instantiation
// is a few memcpy/madvise calls instead of mmap/munmap per call (15-25 us
// instead of 31-38 us measured here).

/// Component instances alive at once (one per call in flight). Calls last
/// microseconds and the agent makes them from a few threads; 64 is far more
/// concurrency than 2 cores can use, and a call beyond it fails cleanly
/// ("maximum concurrent instances reached") rather than waiting.
pub const POOL_COMPONENT_INSTANCES: u32 = 64;

/// Core instances across all slots: [`POOL_COMPONENT_INSTANCES`] times a
/// typical 4 per component, doubled.
pub const POOL_CORE_INSTANCES: u32 = POOL_COMPONENT_INSTANCES * 8;

/// Linear memories across all slots: one per component instance, doubled.
pub const POOL_MEMORIES: u32 = POOL_COMPONENT_INSTANCES * 2;

/// Tables across all slots.
pub const POOL_TABLES: u32 = POOL_COMPONENT_INSTANCES * 4;

/// Virtual address space reserved per memory slot: the largest memory cap
/// a hook may set. wasmtime's default (4 GiB plus guard, so that bounds
/// checks can be elided) would reserve 512 GiB for 128 slots, which fails
/// under a `ulimit -v` or a strict overcommit policy. With 64 MiB slots
/// the whole pool reserves about 8 GiB of address space (almost none of
/// it resident), at the price of explicit bounds checks in guest code,
/// which these small guests do not notice.
pub const POOL_MEMORY_RESERVATION: u64 = MAX_MEMORY as u64;

/// Guard region after each memory slot, catching out-of-bounds accesses
/// that explicit bounds checks let through with a constant offset.
pub const POOL_MEMORY_GUARD: u64 = 2 << 20;

/// Bytes of a memory slot kept resident (zeroed with memset) rather than
/// returned to the kernel with madvise when a call ends. Measured here with
/// the `hook-latency` example (p50 of the three default guests): 0 gives
/// 22-31 us, 64 KiB 17-22 us, 256 KiB 19-24 us, 1 MiB 25-32 us (the memset
/// then costs more than the page faults it saves).
pub const POOL_KEEP_RESIDENT: usize = 64 << 10;

/// Native stack a guest may use (wasm runs on the caller's thread). The
/// agent calls from threads with at least 2 MiB of stack; 512 KiB leaves
/// the rest for the host.
pub const MAX_WASM_STACK: usize = 512 << 10;

/// Longest config string a hook may have: it is copied into the guest on
/// every call. Policy configs are a few lines of JSON.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;

/// Largest guest module accepted, in bytes. The default guests are tens of
/// KiB; componentize-py output is ~35 MB. Compiling is the expensive step a
/// hostile config could trigger, so the cap bounds it.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_their_own_check() {
        Limits::default().check().unwrap();
    }

    #[test]
    fn ceilings_are_refused_past_the_edge() {
        let mut l = Limits {
            memory: MAX_MEMORY,
            deadline: MAX_DEADLINE,
        };
        l.check().unwrap();
        l.memory += 1;
        assert!(l.check().unwrap_err().to_string().contains("memory cap"));
        l.memory = MIN_MEMORY - 1;
        assert!(l.check().is_err());
        l.memory = MIN_MEMORY;
        l.deadline = MIN_DEADLINE - Duration::from_nanos(1);
        assert!(l.check().unwrap_err().to_string().contains("deadline"));
    }

    #[test]
    fn deadline_ticks_round_up_and_add_one() {
        assert_eq!(Limits::default().deadline_ticks(), 201);
        let l = Limits {
            deadline: Duration::from_micros(5_500),
            ..Limits::default()
        };
        assert_eq!(l.deadline_ticks(), 7);
    }

    #[test]
    fn the_largest_valid_answer_fits_the_hostcall_fuel() {
        // 1024 routes: a record of a String and an Option<String> each.
        const HEADERS: usize = MAX_ANSWER_ENTRIES * (24 + 24);
        const { assert!(HEADERS + MAX_ANSWER_BYTES < HOSTCALL_FUEL) };
        const { assert!(KV_MAX_VALUE_BYTES + KV_MAX_KEY_BYTES < HOSTCALL_FUEL) };
        const { assert!(STDIO_WRITE_BYTES < HOSTCALL_FUEL) };
    }
}
