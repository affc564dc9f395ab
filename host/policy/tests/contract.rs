//! The contract's evolution rules, held to: guests compiled against the
//! released 0.1.0 and 0.1.2 contracts run in today's host, and what 0.1.1
//! added (`pod-facts.pod-owner`), 0.1.2 added (`attachment-facts`,
//! `vxnet-facts`) and 0.1.3 added (`vxnet-facts.vxnet-shared-range`)
//! reach a guest that asks for them.

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

/// A pod's second network (`net1`), without the default route.
fn second_attachment(network: &str) -> Pod {
    Pod {
        namespace: "team-a".into(),
        attachment: Attachment {
            network: network.into(),
            interface: "net1".into(),
            default_route: false,
        },
        ..pod(&[])
    }
}

#[test]
fn the_attachment_reaches_guests_that_ask_and_old_guests_cannot_add_a_second_default_route() {
    let templates = [template("10.96.0.0/12", Some("0.0.0.0"))];
    let routes = |hook: &RoutesHook, p: &Pod| {
        hook.routes(p, &nic(), &vxnet(1), None, &templates)
            .unwrap()
            .answer
    };
    // The built-in routes guest asks (`default-route`).
    let builtin = RoutesHook::load(engine(), HookConfig::default()).unwrap();
    assert_eq!(
        routes(&builtin, &pod(&[]))[0],
        route("0.0.0.0/0", Some("10.0.1.1"))
    );
    assert_eq!(
        routes(&builtin, &second_attachment("team-a/storage")),
        [route("10.96.0.0/12", Some("10.0.1.1"))]
    );
    // A 0.1.0 guest adds a default route for every attachment; the host
    // keeps it on eth0 and drops it from net1.
    let old = RoutesHook::load(engine(), config("compat-routes-v0-1-0")).unwrap();
    let on_eth0 = old.routes(&pod(&[]), &nic(), &vxnet(1), None, &[]).unwrap();
    assert!(!on_eth0.fallback, "{:?}", on_eth0.fallback_cause);
    assert_eq!(
        on_eth0.answer,
        [
            route("0.0.0.0/0", Some("10.0.1.1")),
            route("172.31.0.0/16", None)
        ]
    );
    assert_eq!(
        routes(&old, &second_attachment("team-a/storage")),
        [route("172.31.0.0/16", None)]
    );

    // The built-in ip guest binds a tenant pool by network.
    let ip = IpHook::load(
        engine(),
        HookConfig {
            config: r#"{"pools": {"storage-a": {"first": "10.0.1.100", "last": "10.0.1.109",
                        "networks": ["team-a/storage"]}}}"#
                .into(),
            ..HookConfig::default()
        },
    )
    .unwrap();
    let asked = |p: &Pod| ip.assign_ip(p, &vxnet(1)).unwrap().answer;
    assert_eq!(
        asked(&second_attachment("team-a/storage")),
        IpRequest::Range {
            first: "10.0.1.100".parse().unwrap(),
            last: "10.0.1.109".parse().unwrap()
        }
    );
    assert_eq!(asked(&second_attachment("team-a/other")), IpRequest::Any);
    assert_eq!(asked(&pod(&[])), IpRequest::Any);
}

#[test]
fn measured_vxnet_facts_reach_a_guest_that_asks() {
    let hook = VxnetHook::load(engine(), config("fastest-attach")).unwrap();
    let mut candidates = vxnets(4);
    let latency = [Some(1500), Some(120), None, Some(40)];
    for (v, ms) in candidates.iter_mut().zip(latency) {
        v.live.attach_latency_ms = ms;
    }
    // The fastest attaching vxnet failing right now goes last.
    candidates[3].recent_failures = 1;
    let d = hook
        .select_vxnet(&pod(&[]), &node(), &candidates, 0)
        .unwrap();
    assert!(!d.fallback, "{:?}", d.fallback_cause);
    assert_eq!(
        d.answer,
        [
            "vxnet-0000002",
            "vxnet-0000001",
            "vxnet-0000003",
            "vxnet-0000004"
        ]
    );
    // A guest asks only about the call's own vxnets: without measurements
    // every candidate is unmeasured, and the host's order stands.
    let plain = vxnets(3);
    let d = hook.select_vxnet(&pod(&[]), &node(), &plain, 0).unwrap();
    assert_eq!(
        d.answer,
        ["vxnet-0000001", "vxnet-0000002", "vxnet-0000003"]
    );
}

#[test]
fn a_guest_compiled_against_0_1_2_asks_the_vxnet_facts_0_1_3_extended() {
    // It imports vxnet-facts@0.1.2, which has vxnet-measured alone.
    let hook = VxnetHook::load(engine(), config("compat-v0-1-2")).unwrap();
    let mut candidates = vxnets(3);
    candidates[1].live.attach_latency_ms = Some(300);
    candidates[2].live.attach_latency_ms = Some(40);
    candidates[2].live.shared_range = Some("10.0.3.0/26".parse().unwrap());
    let d = hook
        .select_vxnet(&pod(&[]), &node(), &candidates, 0)
        .unwrap();
    assert!(!d.fallback, "{:?}", d.fallback_cause);
    assert_eq!(d.guest.name, "compat_v0_1_2");
    assert_eq!(
        d.answer,
        ["vxnet-0000003", "vxnet-0000002", "vxnet-0000001"]
    );
}

/// `vxnet(i)` in shared-NIC mode, its pods addressed from `range`, with
/// `free` addresses the node could give.
fn shared(i: u8, range: &str, free: u32) -> Vxnet {
    let mut v = vxnet(i);
    v.free_ips = free;
    v.live.shared_range = Some(range.parse().unwrap());
    v
}

#[test]
fn guests_learn_which_vxnets_are_shared_and_the_nodes_share_of_the_range() {
    // What a guest is told, per candidate and for a vxnet not of the call.
    let probe = VxnetHook::load(engine(), config("probe-vxnet-facts")).unwrap();
    let mut exclusive = vxnet(2);
    exclusive.live.attach_latency_ms = Some(120);
    let candidates = [shared(1, "10.0.1.64/26", 61), exclusive];
    let d = probe
        .select_vxnet(&pod(&[]), &node(), &candidates, 0)
        .unwrap();
    assert!(!d.fallback, "{:?}", d.fallback_cause);
    let told: Vec<&str> = d.log.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        told,
        [
            "vxnet-0000001 free 61 shared 10.0.1.64/26 measured",
            "vxnet-0000002 free 100 shared none measured",
            "vxnet-not-a-candidate free - shared none unknown",
        ]
    );
}

#[test]
fn the_builtin_ip_guest_keeps_a_pinned_address_to_the_shared_range_and_says_why() {
    let ip = IpHook::load(engine(), HookConfig::default()).unwrap();
    let pinned = pod(&[("hostnic.io/ip", "10.0.1.5")]);
    let e = ip
        .assign_ip(&pinned, &shared(1, "10.0.1.64/26", 61))
        .unwrap_err();
    assert!(e.is_refusal(), "{e}");
    let said = e.to_string();
    for part in [
        "annotation hostnic.io/ip",
        "10.0.1.5",
        "vxnet-0000001",
        "10.0.1.64/26",
    ] {
        assert!(said.contains(part), "{said:?} lacks {part:?}");
    }
    assert_eq!(
        ip.assign_ip(&pinned, &vxnet(1)).unwrap().answer,
        IpRequest::Exact("10.0.1.5".parse().unwrap())
    );
    let inside = pod(&[("hostnic.io/ip", "10.0.1.70")]);
    assert_eq!(
        ip.assign_ip(&inside, &shared(1, "10.0.1.64/26", 61))
            .unwrap()
            .answer,
        IpRequest::Exact("10.0.1.70".parse().unwrap())
    );
}
