//! The built-in default guests, called through the runtime, against their
//! contract; and the example policy of the author's guide.

mod common;

use common::*;
use hostnic_policy::*;

/// A vxnet hook on its own copy of the default guest, so that its kv store
/// (keyed by guest name) is its own: tests run in parallel.
fn vxnet_hook(test: &str, config: &str) -> (VxnetHook, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{test}.wasm"));
    std::fs::copy(guest("vxnet-select"), &path).unwrap();
    let hook = VxnetHook::load(
        engine(),
        HookConfig {
            path: Some(path),
            config: config.into(),
            ..HookConfig::default()
        },
    )
    .unwrap();
    (hook, dir)
}

fn select(hook: &VxnetHook, candidates: &[Vxnet], random: u64) -> Vec<String> {
    hook.select_vxnet(&pod(&[]), &node(), candidates, random)
        .unwrap()
        .answer
}

fn ids(order: &[u8]) -> Vec<String> {
    order.iter().map(|&i| vxnet(i).id).collect()
}

fn failing(mut v: Vxnet) -> Vxnet {
    v.recent_failures = 2;
    v
}

#[test]
fn fail_rotate_stays_until_failures_then_moves_on_and_wraps() {
    let (hook, _dir) = vxnet_hook("failrotate", "");
    let ok = vxnets(3);
    assert_eq!(select(&hook, &ok, 0), ids(&[1, 2, 3]));
    assert_eq!(select(&hook, &ok, 0), ids(&[1, 2, 3]), "no failures: stays");

    let first_fails = [failing(vxnet(1)), vxnet(2), vxnet(3)];
    let d = hook
        .select_vxnet(&pod(&[]), &node(), &first_fails, 0)
        .unwrap();
    assert_eq!(d.answer, ids(&[2, 3, 1]));
    // The guest says why in the log (host.log), tagged as such.
    assert!(
        d.log
            .iter()
            .any(|l| l.source == LogSource::Host && l.message.contains("moving to")),
        "{:?}",
        d.log
    );
    assert_eq!(
        select(&hook, &ok, 0),
        ids(&[2, 3, 1]),
        "stays on the new one"
    );

    let third_fails = [vxnet(1), vxnet(2), failing(vxnet(3))];
    let second_fails = [vxnet(1), failing(vxnet(2)), vxnet(3)];
    assert_eq!(select(&hook, &second_fails, 0), ids(&[3, 1, 2]));
    // The last one fails: wraps around to the first.
    assert_eq!(select(&hook, &third_fails, 0), ids(&[1, 2, 3]));

    // A list that shrank below the stored position (2) is taken modulo.
    assert_eq!(select(&hook, &first_fails, 0), ids(&[2, 3, 1]));
    assert_eq!(select(&hook, &second_fails, 0), ids(&[3, 1, 2]));
    assert_eq!(select(&hook, &vxnets(2), 0), ids(&[1, 2]));
}

#[test]
fn round_rotate_advances_every_call() {
    let (hook, _dir) = vxnet_hook("roundrotate", r#"{"policy": "RoundRotate"}"#);
    let c = vxnets(3);
    assert_eq!(select(&hook, &c, 0), ids(&[1, 2, 3]));
    assert_eq!(select(&hook, &c, 0), ids(&[2, 3, 1]));
    assert_eq!(select(&hook, &c, 0), ids(&[3, 1, 2]));
    assert_eq!(select(&hook, &c, 0), ids(&[1, 2, 3]));
}

#[test]
fn each_network_rotates_over_its_vxnets_on_its_own_index() {
    let (hook, _dir) = vxnet_hook("pernetwork", r#"{"policy": "RoundRotate"}"#);
    let on = |network: &str, c: &[Vxnet]| {
        let mut p = pod(&[]);
        p.attachment.network = network.into();
        hook.select_vxnet(&p, &node(), c, 0).unwrap().answer
    };
    let (storage, admin) = (vxnets(3), vxnets(2));
    assert_eq!(on("default/storage", &storage), ids(&[1, 2, 3]));
    assert_eq!(on("default/admin", &admin), ids(&[1, 2]));
    assert_eq!(on("default/storage", &storage), ids(&[2, 3, 1]));
    assert_eq!(on("default/admin", &admin), ids(&[2, 1]));
    assert_eq!(on("default/storage", &storage), ids(&[3, 1, 2]));
    let kv = hook.kv_snapshot();
    assert_eq!(
        kv.get("index/default/storage").map(String::as_str),
        Some("0")
    );
    assert_eq!(kv.get("index/default/admin").map(String::as_str), Some("0"));
}

#[test]
fn random_starts_where_the_hosts_random_number_says() {
    let (hook, _dir) = vxnet_hook("random", r#"{"policy": "Random"}"#);
    let c = vxnets(3);
    assert_eq!(select(&hook, &c, 4), ids(&[2, 3, 1]));
    assert_eq!(select(&hook, &c, 4), ids(&[2, 3, 1]), "no hidden state");
    assert_eq!(select(&hook, &c, u64::MAX), ids(&[1, 2, 3]));
}

#[test]
fn most_free_orders_by_free_addresses() {
    let (hook, _dir) = vxnet_hook("mostfree", r#"{"policy": "MostFree"}"#);
    let mut c = vxnets(3);
    c[0].free_ips = 5;
    c[1].free_ips = 50;
    c[2].free_ips = 20;
    assert_eq!(select(&hook, &c, 0), ids(&[2, 3, 1]));
}

#[test]
fn a_network_config_replaces_the_hooks_own_for_its_calls_once_the_guest_accepts_it() {
    let (hook, _dir) = vxnet_hook("networkconfig", "");
    let mut c = vxnets(3);
    c[0].free_ips = 5;
    c[1].free_ips = 50;
    c[2].free_ips = 20;
    let most_free = r#"{"policy": "MostFree"}"#;
    let storage = hook.with_config(most_free).unwrap();
    let order = |d: Result<Decision<Vec<String>>, PolicyError>| d.unwrap().answer;
    assert_eq!(
        order(storage.select_vxnet(&pod(&[]), &node(), &c, 0)),
        ids(&[2, 3, 1])
    );
    // The hook's own config (FailRotate) still answers every other call.
    assert_eq!(select(&hook, &c, 0), ids(&[1, 2, 3]));
    // Accepted once, remembered: the second network call reuses the check.
    let again = hook.with_config(most_free).unwrap();
    assert_eq!(
        order(again.select_vxnet(&pod(&[]), &node(), &c, 0)),
        ids(&[2, 3, 1])
    );
    let err = hook.with_config(r#"{"policy": "Fastest"}"#).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::ConfigRefused { .. }), "{msg}");
    assert!(msg.contains("Fastest"), "{msg}");
    let huge = "x".repeat(limits::MAX_CONFIG_BYTES + 1);
    assert!(matches!(
        hook.with_config(&huge).unwrap_err(),
        LoadError::Limits(_)
    ));
}

#[test]
fn a_bad_config_is_refused_at_load_with_the_guests_reason() {
    let err = VxnetHook::load(
        engine(),
        HookConfig {
            config: r#"{"policy": "Fastest"}"#.into(),
            ..HookConfig::default()
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::ConfigRefused { .. }), "{msg}");
    assert!(
        msg.contains("vxnet-select") && msg.contains("Fastest"),
        "{msg}"
    );
}

#[test]
fn no_candidates_is_a_refusal() {
    let hook = VxnetHook::load(engine(), HookConfig::default()).unwrap();
    let err = hook.select_vxnet(&pod(&[]), &node(), &[], 0).unwrap_err();
    assert!(err.is_refusal(), "{err}");
}

fn ip_hook(config: &str) -> IpHook {
    IpHook::load(
        engine(),
        HookConfig {
            config: config.into(),
            ..HookConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn ip_assign_follows_annotations_and_namespaces() {
    let hook = ip_hook("");
    let v = vxnet(1);
    let assign = |p: &Pod| hook.assign_ip(p, &v).map(|d| d.answer);

    assert_eq!(assign(&pod(&[])).unwrap(), IpRequest::Any);
    assert_eq!(
        assign(&pod(&[("hostnic.io/ip", "10.0.1.7")])).unwrap(),
        IpRequest::Exact("10.0.1.7".parse().unwrap())
    );
    assert_eq!(
        assign(&pod(&[("hostnic.io/sticky", "default/web-0")])).unwrap(),
        IpRequest::Sticky("key/default/default/web-0".into())
    );
    // An annotation outside the vxnet: the guest refuses, with a reason
    // that names the value.
    let err = assign(&pod(&[("hostnic.io/ip", "10.0.9.9")])).unwrap_err();
    assert!(err.is_refusal(), "{err}");
    assert!(err.to_string().contains("10.0.9.9"), "{err}");
    let err = assign(&pod(&[
        ("hostnic.io/ip", "10.0.1.7"),
        ("hostnic.io/sticky", "k"),
    ]))
    .unwrap_err();
    assert!(err.is_refusal(), "{err}");

    let ranged = ip_hook(
        r#"{"annotation": "example.com/ip",
            "namespaces": {"default": {"first": "10.0.1.100", "last": "10.0.1.150"}}}"#,
    );
    assert_eq!(
        ranged.assign_ip(&pod(&[]), &v).unwrap().answer,
        IpRequest::Range {
            first: "10.0.1.100".parse().unwrap(),
            last: "10.0.1.150".parse().unwrap()
        }
    );
    assert_eq!(
        ranged
            .assign_ip(&pod(&[("example.com/ip", "10.0.1.9")]), &v)
            .unwrap()
            .answer,
        IpRequest::Exact("10.0.1.9".parse().unwrap())
    );
}

fn routes_of(node_gw: Option<&str>, templates: &[RouteTemplate]) -> Vec<Route> {
    let hook = RoutesHook::load(engine(), HookConfig::default()).unwrap();
    hook.routes(
        &pod(&[]),
        &nic(),
        &vxnet(1),
        node_gw.map(|g| g.parse().unwrap()),
        templates,
    )
    .unwrap()
    .answer
}

#[test]
fn routes_follow_the_original_template_semantics() {
    // 0.0.0.0 is the node's own NIC in the vxnet; no gateway is on-link; a
    // default route via the vxnet's gateway comes first.
    let t = [
        template("10.96.0.0/12", Some("0.0.0.0")),
        template("169.254.169.254/32", None),
        template("172.16.0.0/16", Some("10.0.1.9")),
    ];
    assert_eq!(
        routes_of(Some("10.0.1.2"), &t),
        [
            route("0.0.0.0/0", Some("10.0.1.1")),
            route("10.96.0.0/12", Some("10.0.1.2")),
            route("169.254.169.254/32", None),
            route("172.16.0.0/16", Some("10.0.1.9")),
        ]
    );
    // Without a node gateway, 0.0.0.0 is the vxnet's gateway.
    assert_eq!(
        routes_of(None, &t[..1]),
        [
            route("0.0.0.0/0", Some("10.0.1.1")),
            route("10.96.0.0/12", Some("10.0.1.1")),
        ]
    );
    // A /0 template replaces the default route; a repeated destination is
    // dropped (the first wins).
    assert_eq!(
        routes_of(
            Some("10.0.1.2"),
            &[
                template("0.0.0.0/0", Some("0.0.0.0")),
                template("10.0.0.0/8", None),
                template("10.0.0.0/8", Some("10.0.1.3")),
            ]
        ),
        [
            route("0.0.0.0/0", Some("10.0.1.2")),
            route("10.0.0.0/8", None),
        ]
    );
}

#[test]
fn a_route_gateway_outside_the_vxnet_is_refused_by_the_host() {
    // The default guest keeps any explicit gateway as configured; the host
    // refuses one that is not on-link, naming the guest.
    let hook = RoutesHook::load(engine(), HookConfig::default()).unwrap();
    let err = hook
        .routes(
            &pod(&[]),
            &nic(),
            &vxnet(1),
            None,
            &[template("172.16.0.0/16", Some("192.168.0.1"))],
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::InvalidAnswer { .. }), "{msg}");
    assert!(
        msg.contains("routes@") && msg.contains("192.168.0.1"),
        "{msg}"
    );
}

#[test]
fn example_policy_honours_the_vxnet_label() {
    let hook = VxnetHook::load(engine(), config("example-policy")).unwrap();
    let mut p = pod(&[]);
    p.labels
        .insert("hostnic.io/vxnet".into(), vxnet(3).id.clone());
    let d = hook.select_vxnet(&p, &node(), &vxnets(3), 0).unwrap();
    assert_eq!(d.answer[0], vxnet(3).id);
    assert_eq!(d.answer.len(), 3);
    assert_eq!(d.guest.name, "example_policy");
    assert!(!d.guest.builtin && !d.fallback);
}

#[test]
fn each_default_guest_implements_its_hook_only() {
    let err = VxnetHook::load(engine(), config("routes")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::WrongHook { .. }), "{msg}");
    assert!(msg.contains("route-templating"), "{msg}");
    assert_eq!(
        builtin::sha256(HookKind::IpAssignment),
        IpHook::load(engine(), HookConfig::default())
            .unwrap()
            .guest()
            .sha256
    );
}
