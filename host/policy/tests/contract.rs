//! The contract's evolution rules, held to: a guest compiled against the
//! released 0.1.0 contract runs in today's host, and what 0.1.1 added
//! (`pod-facts.pod-owner`) reaches a guest that asks for it.

mod common;

use common::*;
use hostnic_policy::*;

#[test]
fn a_guest_compiled_against_0_1_0_runs_in_this_host() {
    let hook = VxnetHook::load(engine(), config("compat-v0-1-0")).unwrap();
    let d = hook
        .select_vxnet(&pod(&[]), &node(), &vxnets(3), 0)
        .unwrap();
    assert!(!d.fallback, "the built-in guest answered instead");
    assert_eq!(d.guest.name, "compat_v0_1_0");
    // Its own answer (the candidates reversed), not the default's.
    assert_eq!(
        d.answer,
        ["vxnet-0000003", "vxnet-0000002", "vxnet-0000001"]
    );
}

#[test]
fn the_pods_owner_reaches_a_guest_that_asks() {
    let hook = VxnetHook::load(engine(), config("spread-ordinals")).unwrap();
    let member = |ordinal| Pod {
        owner: Some(Owner {
            kind: "StatefulSet".into(),
            name: "db".into(),
            ordinal: Some(ordinal),
        }),
        ..pod(&[])
    };
    let first = |p: &Pod| hook.select_vxnet(p, &node(), &vxnets(3), 0).unwrap().answer[0].clone();
    // Ordinals 0..5 over three vxnets: each vxnet twice, in turn.
    let spread: Vec<String> = (0..6).map(|k| first(&member(k))).collect();
    assert_eq!(
        spread,
        [1, 2, 3, 1, 2, 3].map(|i| format!("vxnet-{i:07}")),
        "{spread:?}"
    );
    // A pod without an owner, or owned by a ReplicaSet: the candidates'
    // order.
    assert_eq!(first(&pod(&[])), "vxnet-0000001");
    let replica = Pod {
        owner: Some(Owner {
            kind: "ReplicaSet".into(),
            name: "web-7c9".into(),
            ordinal: None,
        }),
        ..pod(&[])
    };
    assert_eq!(first(&replica), "vxnet-0000001");
}
