//! The ip decision, tested natively (no runtime): each rule of
//! `assign`, the config's checks, and the refusals' words.

use super::*;

fn vxnet() -> Vxnet {
    Vxnet {
        id: "vxnet-abc".to_string(),
        cidr: "10.0.1.0/24".to_string(),
        gateway: "10.0.1.1".to_string(),
        free_ips: 100,
        warm_nics: 0,
        used_nics: 0,
        recent_failures: 0,
    }
}

fn pod(namespace: &str, annotations: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: namespace.to_string(),
        name: "web-0".to_string(),
        uid: "0a1b".to_string(),
        labels: vec![],
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn config(text: &str) -> Config {
    parse_config(text).unwrap()
}

const TEAM_A: &str = r#"{"namespaces": {"team-a": {"first": "10.0.1.100", "last": "10.0.1.150"}}}"#;

#[test]
fn empty_config_is_the_defaults() {
    let c = config("");
    assert_eq!(c.annotation, IP_ANNOTATION);
    assert!(c.namespaces.is_empty());
    assert_eq!(config("{}"), c);
}

#[test]
fn config_refusals_name_the_problem() {
    let cases = [
        (r#"{"annotation": ""}"#, "annotation must not be empty"),
        (
            r#"{"annotation": "hostnic.io/sticky"}"#,
            "is the sticky-key annotation",
        ),
        (
            r#"{"namespaces": {"a": {"first": "10.0.1.9", "last": "10.0.1.1"}}}"#,
            "namespaces.a: first 10.0.1.9 is after last 10.0.1.1",
        ),
        (
            r#"{"namespaces": {"a": {"first": "10.0.1", "last": "10.0.1.1"}}}"#,
            r#"namespaces.a.first "10.0.1" is not an IPv4 address"#,
        ),
        (
            r#"{"namespaces": {"a": {"first": "10.0.1.1", "last": "fd00::1"}}}"#,
            r#"namespaces.a.last "fd00::1" is not an IPv4 address"#,
        ),
        (
            r#"{"namespaces": {"a": {"first": "10.0.1.1"}}}"#,
            "missing field `last`",
        ),
        (r#"{"annotaton": "x"}"#, "unknown field `annotaton`"),
        ("{", "not valid JSON"),
    ];
    for (text, want) in cases {
        let e = parse_config(text).unwrap_err();
        assert!(e.contains(want), "{text}: {e:?} lacks {want:?}");
    }
}

#[test]
fn a_pod_without_annotations_or_range_gets_any() {
    assert_eq!(
        assign(
            &config(""),
            &pod("default", &[]),
            None,
            "hostnic",
            &vxnet(),
            None
        ),
        Ok(IpRequest::Any)
    );
    assert_eq!(
        assign(
            &config(TEAM_A),
            &pod("team-b", &[]),
            None,
            "hostnic",
            &vxnet(),
            None
        ),
        Ok(IpRequest::Any)
    );
}

#[test]
fn the_annotation_pins_the_address() {
    let p = pod("default", &[("hostnic.io/ip", "10.0.1.5")]);
    assert_eq!(
        assign(&config(""), &p, None, "hostnic", &vxnet(), None),
        Ok(IpRequest::Exact("10.0.1.5".to_string()))
    );
}

#[test]
fn the_annotation_key_is_configurable() {
    let c = config(r#"{"annotation": "example.com/address"}"#);
    let p = pod("default", &[("example.com/address", "10.0.1.5")]);
    assert_eq!(
        assign(&c, &p, None, "hostnic", &vxnet(), None),
        Ok(IpRequest::Exact("10.0.1.5".to_string()))
    );
    let p = pod("default", &[("hostnic.io/ip", "10.0.1.5")]);
    assert_eq!(
        assign(&c, &p, None, "hostnic", &vxnet(), None),
        Ok(IpRequest::Any),
        "the default key is off"
    );
}

const POOLS: &str = r#"{"pools": {
    "tenant-a": {"first": "10.0.1.100", "last": "10.0.1.110", "networks": ["team-a/storage"], "namespaces": ["team-a"]},
    "elsewhere": {"first": "10.9.0.10", "last": "10.9.0.20", "networks": ["default/storage"]}}}"#;

#[test]
fn a_pool_binds_its_networks_and_namespaces_and_refuses_addresses_outside() {
    let c = config(POOLS);
    let pool_a = Ok(IpRequest::Range(IpRange {
        first: "10.0.1.100".into(),
        last: "10.0.1.110".into(),
    }));
    // By network (a NetworkAttachmentDefinition), whatever the namespace.
    assert_eq!(
        assign(
            &c,
            &pod("team-b", &[]),
            None,
            "team-a/storage",
            &vxnet(),
            None
        ),
        pool_a
    );
    // By namespace, on any network whose vxnet holds the pool.
    assert_eq!(
        assign(&c, &pod("team-a", &[]), None, "hostnic", &vxnet(), None),
        pool_a
    );
    // A pool in another vxnet does not bind.
    assert_eq!(
        assign(&c, &pod("x", &[]), None, "default/storage", &vxnet(), None),
        Ok(IpRequest::Any)
    );
    // Pinned inside: kept. Outside: refused, naming the pool.
    let inside = pod("team-a", &[("hostnic.io/ip", "10.0.1.105")]);
    assert_eq!(
        assign(&c, &inside, None, "hostnic", &vxnet(), None),
        Ok(IpRequest::Exact("10.0.1.105".into()))
    );
    let outside = pod("team-b", &[("hostnic.io/ip", "10.0.1.5")]);
    let e = assign(&c, &outside, None, "team-a/storage", &vxnet(), None).unwrap_err();
    assert_eq!(
        e,
        "annotation hostnic.io/ip: 10.0.1.5 is outside pool tenant-a (10.0.1.100-10.0.1.110), which binds network team-a/storage"
    );
    // A sticky key's first address is any: not inside a pool.
    let sticky = pod("team-a", &[("hostnic.io/sticky", "db-0")]);
    let e = assign(&c, &sticky, None, "hostnic", &vxnet(), None).unwrap_err();
    assert!(e.contains("bound to pool tenant-a"), "{e}");
    // Bad pools are refused at load.
    for (text, want) in [
        (
            r#"{"pools": {"p": {"first": "10.0.1.1", "last": "10.0.1.2"}}}"#,
            "pools.p binds no network and no namespace",
        ),
        (
            r#"{"pools": {"p": {"first": "10.0.1.1", "last": "10.0.1.2", "namespaces": ["a"]},
                          "q": {"first": "10.0.1.3", "last": "10.0.1.4", "namespaces": ["a"]}}}"#,
            "a is bound to both pools.p and pools.q",
        ),
        (
            r#"{"pools": {"p": {"first": "10.0.1.9", "last": "10.0.1.2", "networks": ["n"]}}}"#,
            "pools.p: first 10.0.1.9 is after last 10.0.1.2",
        ),
    ] {
        let e = parse_config(text).unwrap_err();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn the_annotation_beats_the_namespace_range() {
    let p = pod("team-a", &[("hostnic.io/ip", "10.0.1.5")]);
    assert_eq!(
        assign(&config(TEAM_A), &p, None, "hostnic", &vxnet(), None),
        Ok(IpRequest::Exact("10.0.1.5".to_string()))
    );
}

#[test]
fn a_bad_pinned_address_is_refused_with_a_reason() {
    let cases = [
        (
            "10.0.9.9",
            "annotation hostnic.io/ip: 10.0.9.9 is not in vxnet-abc (10.0.1.0/24)",
        ),
        (
            "banana",
            r#"annotation hostnic.io/ip: "banana" is not an IPv4 address"#,
        ),
        (
            "fd00::5",
            r#"annotation hostnic.io/ip: "fd00::5" is not an IPv4 address"#,
        ),
        (
            " 10.0.1.5",
            r#"annotation hostnic.io/ip: " 10.0.1.5" is not an IPv4 address"#,
        ),
        (
            "10.0.1.1",
            "annotation hostnic.io/ip: 10.0.1.1 is the gateway of vxnet-abc",
        ),
        (
            "10.0.1.0",
            "annotation hostnic.io/ip: 10.0.1.0 is the network address of vxnet-abc (10.0.1.0/24)",
        ),
        (
            "10.0.1.255",
            "annotation hostnic.io/ip: 10.0.1.255 is the broadcast address of vxnet-abc (10.0.1.0/24)",
        ),
    ];
    for (value, want) in cases {
        let p = pod("default", &[("hostnic.io/ip", value)]);
        assert_eq!(
            assign(&config(""), &p, None, "hostnic", &vxnet(), None),
            Err(want.to_string()),
            "{value}"
        );
    }
}

#[test]
fn sticky_asks_for_the_keys_address() {
    let p = pod("team-a", &[("hostnic.io/sticky", "db-0")]);
    assert_eq!(
        assign(&config(TEAM_A), &p, None, "hostnic", &vxnet(), None),
        Ok(IpRequest::Sticky("key/team-a/db-0@hostnic".to_string()))
    );
    // A key names no other namespace's, nor a StatefulSet's identity.
    let p = pod(
        "team-b",
        &[("hostnic.io/sticky", "statefulset/team-a/db/0")],
    );
    assert_eq!(
        assign(&config(""), &p, None, "hostnic", &vxnet(), None),
        Ok(IpRequest::Sticky(
            "key/team-b/statefulset/team-a/db/0@hostnic".to_string()
        ))
    );
    let p = pod("default", &[("hostnic.io/sticky", " ")]);
    let e = assign(&config(""), &p, None, "hostnic", &vxnet(), None).unwrap_err();
    assert!(e.contains("is empty"), "{e}");
}

#[test]
fn statefulset_pods_are_sticky_under_their_identity_when_configured() {
    let owner = |kind: &str, ordinal: Option<u32>| Owner {
        kind: kind.into(),
        name: "db".into(),
        ordinal,
    };
    let sts = owner("StatefulSet", Some(2));
    let on = config(r#"{"statefulsets": true}"#);
    assert_eq!(
        assign(
            &on,
            &pod("team-b", &[]),
            Some(&sts),
            "team-b/storage",
            &vxnet(),
            None
        ),
        Ok(IpRequest::Sticky(
            "statefulset/team-b/db/2@team-b/storage".into()
        ))
    );
    assert_eq!(
        assign(&on, &pod("team-b", &[]), Some(&sts), "", &vxnet(), None),
        Ok(IpRequest::Sticky("statefulset/team-b/db/2".into()))
    );
    // Off by default; other owners are not identities.
    assert_eq!(
        assign(
            &config(""),
            &pod("team-b", &[]),
            Some(&sts),
            "n",
            &vxnet(),
            None
        ),
        Ok(IpRequest::Any)
    );
    let rs = owner("ReplicaSet", None);
    assert_eq!(
        assign(&on, &pod("team-b", &[]), Some(&rs), "n", &vxnet(), None),
        Ok(IpRequest::Any)
    );
    // The pod's own annotations and a pool come first.
    let pinned = pod("team-b", &[("hostnic.io/ip", "10.0.1.9")]);
    assert_eq!(
        assign(&on, &pinned, Some(&sts), "n", &vxnet(), None),
        Ok(IpRequest::Exact("10.0.1.9".into()))
    );
    let pooled = config(
        r#"{"statefulsets": true, "pools": {"p": {"first": "10.0.1.100", "last": "10.0.1.110", "namespaces": ["team-b"]}}}"#,
    );
    assert!(matches!(
        assign(
            &pooled,
            &pod("team-b", &[]),
            Some(&sts),
            "n",
            &vxnet(),
            None
        ),
        Ok(IpRequest::Range(_))
    ));
}

#[test]
fn pinned_and_sticky_together_are_refused() {
    let p = pod(
        "default",
        &[("hostnic.io/ip", "10.0.1.5"), ("hostnic.io/sticky", "db-0")],
    );
    assert_eq!(
        assign(&config(""), &p, None, "hostnic", &vxnet(), None),
        Err("pod default/web-0 has both hostnic.io/ip and hostnic.io/sticky; keep one".to_string())
    );
}

#[test]
fn the_namespace_range_applies_to_its_pods() {
    assert_eq!(
        assign(
            &config(TEAM_A),
            &pod("team-a", &[]),
            None,
            "hostnic",
            &vxnet(),
            None
        ),
        Ok(IpRequest::Range(IpRange {
            first: "10.0.1.100".to_string(),
            last: "10.0.1.150".to_string(),
        }))
    );
}

#[test]
fn a_range_outside_the_vxnet_is_refused() {
    let mut v = vxnet();
    v.cidr = "10.0.2.0/24".to_string();
    assert_eq!(
        assign(
            &config(TEAM_A),
            &pod("team-a", &[]),
            None,
            "hostnic",
            &v,
            None
        ),
        Err(
            "namespace team-a's range 10.0.1.100-10.0.1.150 is not inside vxnet-abc (10.0.2.0/24)"
                .to_string()
        )
    );
}

#[test]
fn a_bad_vxnet_cidr_from_the_host_is_refused() {
    let mut v = vxnet();
    v.cidr = "10.0.1.0".to_string();
    let p = pod("default", &[("hostnic.io/ip", "10.0.1.5")]);
    let e = assign(&config(""), &p, None, "hostnic", &v, None).unwrap_err();
    assert!(e.starts_with("vxnet-abc: the host gave the cidr"), "{e}");
}

/// The request for `pod` (config `config`) when vxnet-abc is in shared-NIC
/// mode, its pods addressed from `range`.
fn in_shared(config_text: &str, pod: &Pod, range: &str) -> Result<IpRequest, String> {
    assign(
        &config(config_text),
        pod,
        None,
        "hostnic",
        &vxnet(),
        Some(range),
    )
}

fn assert_names(reason: &str, parts: &[&str]) {
    for part in parts {
        assert!(reason.contains(part), "{reason:?} lacks {part:?}");
    }
}

#[test]
fn in_shared_mode_a_pinned_address_outside_the_range_is_refused_naming_all_of_it() {
    let outside = pod("default", &[("hostnic.io/ip", "10.0.1.5")]);
    let e = in_shared("", &outside, "10.0.1.64/26").unwrap_err();
    assert_names(
        &e,
        &[
            "annotation hostnic.io/ip",
            "10.0.1.5",
            "vxnet-abc",
            "10.0.1.64/26",
        ],
    );
    // Inside the range, or in a vxnet in exclusive mode, it is what the pod
    // gets.
    let inside = pod("default", &[("hostnic.io/ip", "10.0.1.70")]);
    assert_eq!(
        in_shared("", &inside, "10.0.1.64/26"),
        Ok(IpRequest::Exact("10.0.1.70".to_string()))
    );
    assert_eq!(
        assign(&config(""), &outside, None, "hostnic", &vxnet(), None),
        Ok(IpRequest::Exact("10.0.1.5".to_string()))
    );
    // An address outside the vxnet is still refused as such.
    let elsewhere = pod("default", &[("hostnic.io/ip", "10.0.9.9")]);
    let e = in_shared("", &elsewhere, "10.0.1.64/26").unwrap_err();
    assert!(e.contains("is not in vxnet-abc"), "{e}");
}

#[test]
fn in_shared_mode_a_pool_or_namespace_range_is_narrowed_to_the_range_or_refused() {
    let range = |first: &str, last: &str| {
        Ok(IpRequest::Range(IpRange {
            first: first.to_string(),
            last: last.to_string(),
        }))
    };
    let team_a = pod("team-a", &[]);
    // team-a's namespace range .100-.150 lies in .64/26 (.64-.127) in part,
    // the pool tenant-a (.100-.110) wholly.
    assert_eq!(
        in_shared(TEAM_A, &team_a, "10.0.1.64/26"),
        range("10.0.1.100", "10.0.1.127")
    );
    assert_eq!(
        in_shared(POOLS, &team_a, "10.0.1.64/26"),
        range("10.0.1.100", "10.0.1.110")
    );
    // Not at all: refused, naming the pool or the namespace, and the range.
    let e = in_shared(POOLS, &team_a, "10.0.1.192/26").unwrap_err();
    assert_names(
        &e,
        &[
            "pool tenant-a",
            "10.0.1.100-10.0.1.110",
            "vxnet-abc",
            "10.0.1.192/26",
        ],
    );
    let e = in_shared(TEAM_A, &team_a, "10.0.1.0/26").unwrap_err();
    assert_names(&e, &["namespace team-a's range", "10.0.1.0/26"]);
    // Any and sticky stay as they are: the host picks within its share.
    assert_eq!(
        in_shared("", &pod("default", &[]), "10.0.1.64/26"),
        Ok(IpRequest::Any)
    );
    let sticky = pod("default", &[("hostnic.io/sticky", "db")]);
    assert_eq!(
        in_shared("", &sticky, "10.0.1.64/26"),
        Ok(IpRequest::Sticky("key/default/db@hostnic".to_string()))
    );
}

#[test]
fn a_bad_shared_range_from_the_host_is_refused() {
    let e = in_shared("", &pod("default", &[]), "x").unwrap_err();
    assert!(
        e.starts_with("vxnet-abc: the host gave the shared range"),
        "{e}"
    );
}
