//! Misbehaving guests: each failure is an error for that call only (or a
//! refusal at load), names the guest, and the runtime keeps serving. And
//! the two failure modes.

mod common;

use common::*;
use hostnic_policy::*;

fn call(hook: &VxnetHook) -> Result<Decision<Vec<String>>, PolicyError> {
    hook.select_vxnet(&pod(&[]), &node(), &vxnets(3), 0)
}

#[test]
fn a_trap_is_an_error_for_that_call_only() {
    let bad = VxnetHook::load(engine(), config("hostile-trap")).unwrap();
    let good = VxnetHook::load(engine(), HookConfig::default()).unwrap();
    for _ in 0..3 {
        let err = call(&bad).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PolicyError::Trap { .. }), "{msg}");
        // Name and version (sha256 prefix) of the guest, and what it did.
        let short = &bad.guest().sha256[..12];
        assert!(msg.contains(&format!("hostile_trap@{short}")), "{msg}");
        assert!(msg.contains("unreachable"), "{msg}");
        // Never "cannot enter component instance": each call is fresh.
        assert!(!error_chain(&err).contains("cannot enter"), "{msg}");
        assert_eq!(call(&good).unwrap().answer.len(), 3);
    }
    let m = bad.metrics();
    assert_eq!((m.calls, m.errors, m.fallbacks), (3, 3, 0));
}

#[test]
fn a_garbage_answer_is_refused_by_the_host() {
    let bad = VxnetHook::load(engine(), config("hostile-garbage")).unwrap();
    let err = call(&bad).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::InvalidAnswer { .. }), "{msg}");
    assert!(
        msg.contains("hostile_garbage@") && msg.contains("\"vxnet-nope\" was not a candidate"),
        "{msg}"
    );
    let good = VxnetHook::load(engine(), HookConfig::default()).unwrap();
    call(&good).unwrap();
}

#[test]
fn a_guest_importing_what_the_host_does_not_offer_is_refused_at_load() {
    let err = VxnetHook::load(engine(), config("hostile-import")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::MissingImports { .. }), "{msg}");
    assert!(msg.contains("hostnic:hostile/evil"), "{msg}");
    // The detail (which function) is in the cause.
    assert!(error_chain(&err).contains("steal-secrets"), "{err:?}");
}

#[test]
fn a_digest_mismatch_is_refused_naming_both_digests() {
    let actual = {
        let hook = VxnetHook::load(engine(), config("example-policy")).unwrap();
        hook.guest().sha256
    };
    let pinned = "0".repeat(64);
    let err = VxnetHook::load(
        engine(),
        with("example-policy", |c| c.sha256 = Some(pinned.clone())),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::DigestMismatch { .. }), "{msg}");
    assert!(msg.contains(&pinned) && msg.contains(&actual), "{msg}");
    // The right pin (any case, optional prefix) loads.
    VxnetHook::load(
        engine(),
        with("example-policy", |c| {
            c.sha256 = Some(format!("sha256:{}", actual.to_uppercase()))
        }),
    )
    .unwrap();
    // A pin on the built-in default is checked too.
    let err = VxnetHook::load(
        engine(),
        HookConfig {
            sha256: Some(pinned),
            ..HookConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("built-in vxnet-select"), "{err}");
}

#[test]
fn what_is_not_a_component_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.wasm");
    std::fs::write(&path, b"\0asm not really").unwrap();
    let err = VxnetHook::load(
        engine(),
        HookConfig {
            path: Some(path),
            ..HookConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
    let err = VxnetHook::load(
        engine(),
        HookConfig {
            path: Some(dir.path().join("missing.wasm")),
            ..HookConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
}

#[test]
fn fail_mode_returns_the_error() {
    let hook = VxnetHook::load(engine(), config("hostile-trap")).unwrap();
    assert!(matches!(call(&hook), Err(PolicyError::Trap { .. })));
}

#[test]
fn fallback_mode_answers_with_the_built_in_default() {
    for bad in [
        "hostile-trap",
        "hostile-garbage",
        "hostile-loop",
        "hostile-oom",
    ] {
        let hook = VxnetHook::load(
            engine(),
            with(bad, |c| {
                c.failure = FailureMode::Fallback;
                c.limits = limits(20, 16);
            }),
        )
        .unwrap();
        let d = call(&hook).unwrap();
        assert!(d.fallback, "{bad}");
        assert!(d.guest.builtin && d.guest.name == "vxnet-select", "{bad}");
        assert_eq!(d.answer.len(), 3, "{bad}");
        let cause = d.fallback_cause.unwrap();
        assert!(cause.contains(&bad.replace('-', "_")), "{cause}");
        let m = hook.metrics();
        assert_eq!((m.calls, m.errors, m.fallbacks), (1, 1, 1), "{bad}");
        assert_eq!(hook.status().totals.fallbacks, 1);
    }
}

#[test]
fn a_refusal_is_never_replaced_by_the_fallback() {
    let hook = IpHook::load(
        engine(),
        HookConfig {
            failure: FailureMode::Fallback,
            ..HookConfig::default()
        },
    )
    .unwrap();
    let err = hook
        .assign_ip(&pod(&[("hostnic.io/ip", "10.0.9.9")]), &vxnet(1))
        .unwrap_err();
    assert!(err.is_refusal(), "{err}");
    let m = hook.metrics();
    assert_eq!((m.calls, m.errors, m.refusals, m.fallbacks), (1, 0, 1, 0));
}

#[test]
fn calls_from_inside_a_tokio_runtime_do_not_block_or_panic() {
    // The agent is async. A guest writing to stderr (this one panics, and
    // Rust's panic handler prints) goes through WASI's blocking stream
    // calls, which wasmtime-wasi would run with a Tokio `block_on`: a panic
    // on a runtime worker. The sandbox's own wasi:io never does.
    let hook = std::sync::Arc::new(
        VxnetHook::load(
            engine(),
            with("hostile-trap", |c| c.failure = FailureMode::Fallback),
        )
        .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let h = hook.clone();
    let d = rt
        .block_on(async move { tokio::spawn(async move { call(&h) }).await })
        .unwrap()
        .unwrap();
    assert!(d.fallback);
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let d = current.block_on(async { call(&hook) }).unwrap();
    assert!(d.log.iter().any(|l| l.source == LogSource::Stderr));
}
