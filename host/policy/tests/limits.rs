//! Every sandbox limit, through real guests: one call that stays inside it
//! and one that trips it. (The kv and log budgets are also tested without
//! wasm, in the unit tests of `kv.rs` and `guest_log.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use hostnic_policy::limits::*;
use hostnic_policy::*;

fn call(hook: &VxnetHook) -> Result<Decision<Vec<String>>, PolicyError> {
    hook.select_vxnet(&pod(&[]), &node(), &vxnets(3), 0)
}

#[test]
fn deadline_stops_an_endless_loop_and_the_next_call_is_fine() {
    let hook = VxnetHook::load(engine(), config("hostile-loop")).unwrap();
    let start = Instant::now();
    let err = call(&hook).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, PolicyError::Deadline { .. }), "{err}");
    assert!(err.to_string().contains("hostile_loop@"), "{err}");
    let deadline = Limits::default().deadline;
    assert!(
        took >= deadline,
        "stopped after {took:?}, before {deadline:?}"
    );
    assert!(took < deadline * 10, "stopped only after {took:?}");
    // A shorter configured deadline is the one enforced.
    let short = VxnetHook::load(
        engine(),
        with("hostile-loop", |c| c.limits = limits(10, 16)),
    )
    .unwrap();
    let start = Instant::now();
    assert!(matches!(call(&short), Err(PolicyError::Deadline { .. })));
    assert!(start.elapsed() < deadline, "{:?}", start.elapsed());
    // The loop guest stays loaded and fails the same way each time: no
    // poisoned instance carries over.
    assert!(matches!(call(&hook), Err(PolicyError::Deadline { .. })));
}

#[test]
fn deadline_is_not_tripped_by_a_default_guest() {
    // Repeatedly, alongside the other tests of this binary (hostile-loop
    // burning a core for its whole deadline among them).
    let hook = VxnetHook::load(engine(), HookConfig::default()).unwrap();
    for _ in 0..20 {
        call(&hook).unwrap();
    }
}

#[test]
fn memory_cap_stops_unbounded_allocation() {
    // Deadlines far from what filling the memory takes, even in a debug
    // build on a busy machine: this test is about memory.
    let hook = VxnetHook::load(
        engine(),
        with("hostile-oom", |c| c.limits.deadline = MAX_DEADLINE),
    )
    .unwrap();
    match call(&hook).unwrap_err() {
        PolicyError::OutOfMemory { limit, asked, .. } => {
            assert_eq!(limit, Limits::default().memory);
            assert!(asked > limit);
        }
        e => panic!("expected out of memory, got {e}"),
    }
    // A larger cap is the one enforced.
    let big = VxnetHook::load(
        engine(),
        with("hostile-oom", |c| c.limits = limits(2000, 32)),
    )
    .unwrap();
    match call(&big).unwrap_err() {
        PolicyError::OutOfMemory { limit, .. } => assert_eq!(limit, 32 << 20),
        e => panic!("expected out of memory, got {e}"),
    }
}

#[test]
fn memory_cap_is_not_tripped_by_default_guests() {
    // The smallest cap a hook may set is enough for every default guest.
    let small = Limits {
        memory: MIN_MEMORY,
        ..Limits::default()
    };
    let cfg = HookConfig {
        limits: small,
        ..HookConfig::default()
    };
    call(&VxnetHook::load(engine(), cfg.clone()).unwrap()).unwrap();
    IpHook::load(engine(), cfg.clone())
        .unwrap()
        .assign_ip(&pod(&[("hostnic.io/ip", "10.0.1.9")]), &vxnet(1))
        .unwrap();
    RoutesHook::load(engine(), cfg)
        .unwrap()
        .routes(
            &pod(&[]),
            &nic(),
            &vxnet(1),
            None,
            &[template("10.96.0.0/12", Some("0.0.0.0"))],
        )
        .unwrap();
}

#[test]
fn limits_outside_the_runtimes_range_are_refused_at_load() {
    for l in [
        limits(50, 128),
        limits(1, 16),
        limits(60_000, 16),
        limits(50, 1),
    ] {
        let err = VxnetHook::load(
            engine(),
            HookConfig {
                limits: l,
                ..HookConfig::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, LoadError::Limits(_)), "{l:?}: {err}");
    }
}

/// hostile-huge answers N entries all pointing at one 100-byte id: 8 bytes
/// an entry in the guest, 124 bytes an entry once lifted by the host.
fn huge(copies: &str, memory_mib: usize) -> Result<Decision<Vec<String>>, PolicyError> {
    let hook = VxnetHook::load(
        engine(),
        with("hostile-huge", |c| {
            c.config = copies.into();
            c.limits = limits(2000, memory_mib);
        }),
    )
    .unwrap();
    call(&hook)
}

#[test]
fn a_huge_answer_is_refused_without_the_host_building_it() {
    // 1 million entries fit in 16 MiB of guest memory but would be 124 MB
    // on the host: the hostcall fuel stops the copy.
    let err = huge("1000000", 16).unwrap_err();
    assert!(matches!(err, PolicyError::Oversized { .. }), "{err}");
    assert!(err.to_string().contains("hostile_huge@"), "{err}");
    // The guest's own default, 5 million entries (500 MB on the host), in
    // the largest memory a hook may have: refused the same way.
    let err = huge("", 64).unwrap_err();
    assert!(matches!(err, PolicyError::Oversized { .. }), "{err}");
    // In the default cap it cannot even build its list.
    let err = huge("", 16).unwrap_err();
    assert!(matches!(err, PolicyError::OutOfMemory { .. }), "{err}");
}

#[test]
fn answer_entry_and_byte_limits() {
    // Inside the limits the answer reaches validation (and is refused
    // there: the ids are not candidates).
    let err = huge("10", 16).unwrap_err();
    assert!(matches!(err, PolicyError::InvalidAnswer { .. }), "{err}");
    // 1025 entries of 100 bytes: within the hostcall fuel, over the entry
    // limit.
    let over = (MAX_ANSWER_ENTRIES + 1).to_string();
    let err = huge(&over, 16).unwrap_err();
    assert!(matches!(err, PolicyError::Oversized { .. }), "{err}");
    assert!(err.to_string().contains("1025 vxnet ids"), "{err}");
    // 700 entries: under the entry limit, but 70 KB of strings.
    let err = huge("700", 16).unwrap_err();
    assert!(err.to_string().contains("bytes of vxnet ids"), "{err}");
}

#[test]
fn the_runtime_keeps_serving_after_every_limit_trips() {
    let good = VxnetHook::load(engine(), HookConfig::default()).unwrap();
    for bad in ["hostile-loop", "hostile-oom", "hostile-huge"] {
        let hook = VxnetHook::load(engine(), config(bad)).unwrap();
        call(&hook).unwrap_err();
        call(&good).unwrap();
    }
}

#[test]
fn guest_log_lines_are_captured_within_the_budget() {
    // hostile-trap panics: Rust's panic handler writes to stderr, which
    // reaches the agent's log line by line. With a fallback the decision
    // carries those lines (the failed guest's first).
    let hook = VxnetHook::load(
        engine(),
        with("hostile-trap", |c| c.failure = FailureMode::Fallback),
    )
    .unwrap();
    let d = call(&hook).unwrap();
    let stderr: Vec<_> = d
        .log
        .iter()
        .filter(|l| l.source == LogSource::Stderr)
        .collect();
    assert!(
        stderr
            .iter()
            .any(|l| l.message.contains("panics on purpose") && l.level == LogLevel::Warn),
        "{:?}",
        d.log
    );
    assert!(d.log.len() <= LOG_MAX_LINES_PER_CALL * 2);
    assert!(d.log.iter().all(|l| l.message.len() <= LOG_MAX_LINE_BYTES));
}

#[test]
fn a_call_well_inside_the_deadline_is_fast() {
    // Not a benchmark (this is a debug build): a sanity bound, so that a
    // regression to, say, compiling per call shows up here.
    let hook = VxnetHook::load(engine(), HookConfig::default()).unwrap();
    call(&hook).unwrap();
    let start = Instant::now();
    for _ in 0..10 {
        call(&hook).unwrap();
    }
    assert!(start.elapsed() / 10 < Duration::from_millis(20));
}

#[test]
fn config_string_size_inside_and_over() {
    // Whitespace is an empty (all-defaults) config to the default guest.
    let at_limit = " ".repeat(MAX_CONFIG_BYTES);
    let hook = VxnetHook::load(
        engine(),
        HookConfig {
            config: at_limit,
            ..HookConfig::default()
        },
    )
    .unwrap();
    call(&hook).unwrap();
    let err = VxnetHook::load(
        engine(),
        HookConfig {
            config: " ".repeat(MAX_CONFIG_BYTES + 1),
            ..HookConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Limits(_)), "{err}");
}

#[test]
fn the_deadline_holds_after_the_runtime_has_been_idle() {
    // The epoch ticker parks when no call has been in flight for a while;
    // the next call must wake it, or a loop would run forever.
    let engine = PolicyEngine::in_memory().unwrap();
    let hook = VxnetHook::load(&engine, config("hostile-loop")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let start = Instant::now();
    assert!(matches!(call(&hook), Err(PolicyError::Deadline { .. })));
    assert!(start.elapsed() < Limits::default().deadline * 10);
}
