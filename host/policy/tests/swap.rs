//! Live swaps: a new guest replaces the old one only once it is fully
//! loaded; calls in flight never fail; a bad reload leaves the old guest
//! serving. And guest state (kv) across swaps and restarts.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use hostnic_policy::*;

fn call(hook: &VxnetHook) -> Result<Decision<Vec<String>>, PolicyError> {
    hook.select_vxnet(&pod(&[]), &node(), &vxnets(3), 0)
}

#[test]
fn swapping_under_a_stream_of_calls_fails_none() {
    // Wall-clock deadlines far above what 4 callers, the swapper and the
    // other tests of this binary on 2 cores of a debug build can stall a
    // call: this test is about swaps, not deadlines.
    let slack = limits(2000, 16);
    let configs = [
        HookConfig {
            limits: slack,
            ..HookConfig::default()
        },
        with("example-policy", |c| c.limits = slack),
    ];
    let hook = Arc::new(VxnetHook::load(engine(), configs[0].clone()).unwrap());
    // Compile both before the race, so the swaps are quick and many calls
    // overlap them.
    VxnetHook::load(engine(), configs[1].clone()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (hook, stop, calls) = (hook.clone(), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let d = call(&hook).expect("no call fails during swaps");
                    assert_eq!(d.answer.len(), 3);
                    seen.insert(d.guest.name);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();
    for i in 0..20 {
        // Let some calls run on each generation.
        let target = calls.load(Ordering::Relaxed) + 8;
        while calls.load(Ordering::Relaxed) < target {
            std::thread::yield_now();
        }
        let id = hook.reload(configs[(i + 1) % 2].clone()).unwrap();
        assert_eq!(id, hook.guest());
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for c in callers {
        seen.extend(c.join().unwrap());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["example_policy", "vxnet-select"],
        "both generations served"
    );
    let st = hook.status();
    assert_eq!((st.reloads, st.failed_reloads), (20, 0));
    assert_eq!(st.totals.errors, 0);
    assert!(st.totals.calls >= 160, "{}", st.totals.calls);
}

#[test]
fn a_bad_reload_keeps_the_old_guest_serving() {
    let hook = VxnetHook::load(engine(), config("example-policy")).unwrap();
    let before = hook.guest();
    for (bad, what) in [
        (config("hostile-import"), "hostnic:hostile/evil"),
        (config("routes"), "does not implement vxnet-selection"),
        (
            with("example-policy", |c| c.config = "{\"x\": 1}".into()),
            "takes no options",
        ),
        (
            with("example-policy", |c| c.sha256 = Some("1".repeat(64))),
            "pins 1111",
        ),
    ] {
        let err = hook.reload(bad).unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
        assert_eq!(hook.guest(), before);
        assert_eq!(call(&hook).unwrap().guest, before);
        let st = hook.status();
        assert!(st.last_reload_error.unwrap().contains(what));
    }
    assert_eq!(hook.status().failed_reloads, 4);
    // A good reload clears the error.
    hook.reload(HookConfig::default()).unwrap();
    assert_eq!(hook.status().last_reload_error, None);
}

fn replace(path: &Path, from: &Path) {
    // As a deployment does: write beside, rename over.
    let tmp = path.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn changed_on_disk_triggers_one_reload_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.wasm");
    std::fs::copy(guest("vxnet-select"), &path).unwrap();
    let hook = VxnetHook::load(
        engine(),
        HookConfig {
            path: Some(path.clone()),
            ..HookConfig::default()
        },
    )
    .unwrap();
    let v1 = hook.guest();
    assert!(!hook.changed_on_disk());
    assert!(hook.reload_if_changed().is_none());

    replace(&path, &guest("example-policy"));
    assert!(hook.changed_on_disk());
    let v2 = hook.reload_if_changed().unwrap().unwrap();
    assert_ne!(v1.sha256, v2.sha256);
    assert_eq!(
        v2.name, "policy",
        "the name is the file's, the version the digest"
    );
    assert!(!hook.changed_on_disk());

    // A broken module: one failed reload, then quiet until the next change.
    std::fs::write(dir.path().join("broken"), b"not wasm").unwrap();
    replace(&path, &dir.path().join("broken"));
    assert!(hook.changed_on_disk());
    assert!(hook.reload_if_changed().unwrap().is_err());
    assert!(!hook.changed_on_disk());
    assert_eq!(hook.guest(), v2);
    call(&hook).unwrap();

    // The file disappears: also one failed reload.
    std::fs::remove_file(&path).unwrap();
    assert!(hook.reload_if_changed().unwrap().is_err());
    assert!(hook.reload_if_changed().is_none());
    assert_eq!(hook.guest(), v2);

    // The built-in default has no file to change.
    let builtin = VxnetHook::load(engine(), HookConfig::default()).unwrap();
    assert!(!builtin.changed_on_disk());
}

#[test]
fn guest_state_survives_swaps_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let module = dir.path().join("rotor.wasm");
    std::fs::copy(guest("vxnet-select"), &module).unwrap();
    let round = HookConfig {
        path: Some(module.clone()),
        config: r#"{"policy": "RoundRotate"}"#.into(),
        ..HookConfig::default()
    };
    let first = |hook: &VxnetHook| call(hook).unwrap().answer[0].clone();

    let engine1 = PolicyEngine::new(&state).unwrap();
    let hook = VxnetHook::load(&engine1, round.clone()).unwrap();
    assert_eq!(first(&hook), vxnet(1).id);
    assert_eq!(first(&hook), vxnet(2).id);
    // A swap to the same guest name (a new config here) keeps its state.
    hook.reload(round.clone()).unwrap();
    assert_eq!(first(&hook), vxnet(3).id);
    drop(hook);
    drop(engine1);

    // The state file is the guest's name, JSON, written atomically.
    let file = state.join("rotor.json");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"index\": \"0\""), "{text}");
    assert!(!state.join("rotor.json.tmp").exists());

    // A restart: a new runtime on the same state directory.
    let engine2 = PolicyEngine::new(&state).unwrap();
    let hook = VxnetHook::load(&engine2, round).unwrap();
    assert_eq!(first(&hook), vxnet(1).id);
    assert_eq!(first(&hook), vxnet(2).id);

    // The built-in default is another guest name, with its own file.
    let builtin = VxnetHook::load(&engine2, HookConfig::default()).unwrap();
    let mut failing = vxnet(1);
    failing.recent_failures = 1;
    builtin
        .select_vxnet(&pod(&[]), &node(), &[failing, vxnet(2)], 0)
        .unwrap();
    assert!(state.join("builtin.vxnet-select.json").exists());
}

#[test]
fn an_unreadable_state_file_is_set_aside_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("rotor2.wasm");
    std::fs::copy(guest("vxnet-select"), &module).unwrap();
    std::fs::write(dir.path().join("rotor2.json"), b"{garbage").unwrap();
    let engine = PolicyEngine::new(dir.path()).unwrap();
    let hook = VxnetHook::load(
        &engine,
        HookConfig {
            path: Some(module),
            config: r#"{"policy": "RoundRotate"}"#.into(),
            ..HookConfig::default()
        },
    )
    .unwrap();
    assert_eq!(call(&hook).unwrap().answer[0], vxnet(1).id);
    assert!(dir.path().join("rotor2.json.bad").exists());
    let text = std::fs::read_to_string(dir.path().join("rotor2.json")).unwrap();
    assert!(text.contains("index"), "{text}");
}
