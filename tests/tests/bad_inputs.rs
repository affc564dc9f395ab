//! The bad-input campaign: well over a hundred malformed CNI calls through
//! the real executable, exec'd as a runtime does, against a real agent.
//! Each must fail with the right CNI error code, print exactly one JSON
//! document on stdout, never panic, record nothing, and leave the agent
//! serving.

use hostnic_testbed::{CallEnv, Ns, Testbed, require_root};
use serde_json::{Value, json};

/// One malformed call: the verb, the environment (changes to a good one),
/// stdin, and the CNI error code it must get.
struct Case {
    what: String,
    verb: &'static str,
    env: Vec<(&'static str, String)>,
    stdin: Vec<u8>,
    code: u64,
}

fn case(what: impl Into<String>, verb: &'static str, stdin: Vec<u8>, code: u64) -> Case {
    Case {
        what: what.into(),
        verb,
        env: Vec::new(),
        stdin,
        code,
    }
}

fn with_env(mut c: Case, var: &'static str, value: &str) -> Case {
    c.env.push((var, value.to_string()));
    c
}

/// The cases, built from a good config by breaking one thing at a time.
fn cases(good: &Value, node_ns: &str) -> Vec<Case> {
    let bytes = |v: &Value| serde_json::to_vec(v).unwrap();
    let edited = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        bytes(&c)
    };
    let set = |path: &[&str], v: Value| {
        edited(&|c| {
            let mut at = &mut *c;
            for p in &path[..path.len() - 1] {
                if !at[*p].is_object() {
                    at[*p] = json!({});
                }
                at = &mut at[*p];
            }
            at[path[path.len() - 1]] = v.clone();
        })
    };
    let without = |field: &str| edited(&|c| drop(c.as_object_mut().unwrap().remove(field)));
    let add = |what: &str, stdin: Vec<u8>, code| case(what, "ADD", stdin, code);
    let mut v: Vec<Case> = Vec::new();

    // The environment.
    for (var, value, code) in [
        ("CNI_COMMAND", "", 4),
        ("CNI_COMMAND", "add", 4),
        ("CNI_COMMAND", "ATTACH", 4),
        ("CNI_COMMAND", "ADD ", 4),
        ("CNI_COMMAND", "ADD\n", 4),
        ("CNI_CONTAINERID", "", 4),
        ("CNI_CONTAINERID", "-abc", 4),
        ("CNI_CONTAINERID", "a b", 4),
        ("CNI_CONTAINERID", "a/b", 4),
        ("CNI_CONTAINERID", "../../etc/passwd", 4),
        ("CNI_CONTAINERID", "ünïcode", 4),
        ("CNI_CONTAINERID", "a;b", 4),
        ("CNI_CONTAINERID", "a\nb", 4),
        ("CNI_IFNAME", "", 4),
        ("CNI_IFNAME", "sixteen-chars-xx", 4),
        ("CNI_IFNAME", ".", 4),
        ("CNI_IFNAME", "..", 4),
        ("CNI_IFNAME", "a/b", 4),
        ("CNI_IFNAME", "a:b", 4),
        ("CNI_IFNAME", "a b", 4),
        ("CNI_IFNAME", "tab\tx", 4),
        ("CNI_NETNS", "", 4),
        ("CNI_NETNS", "/nonexistent/netns", 3),
        ("CNI_NETNS", "/tmp", 4),
        ("CNI_NETNS", "/dev/null", 4),
        ("CNI_NETNS", "/proc/self/ns/mnt", 4),
        ("CNI_NETNS", "/proc/self/ns/uts", 4),
        ("CNI_NETNS", "/proc/self/fd/0", 4),
        ("CNI_NETNS", node_ns, 4),
        ("CNI_ARGS", "FOO", 4),
        ("CNI_ARGS", "FOO=bar", 4),
        ("CNI_ARGS", "IgnoreUnknown=maybe", 4),
        ("CNI_ARGS", "=value", 4),
        ("CNI_ARGS", "K8S_POD_NAME", 4),
    ] {
        let what = format!("ADD with {var}={value:?}");
        v.push(with_env(add(&what, bytes(good), code), var, value));
    }
    // DEL does not read CNI_ARGS: it must succeed whenever it can identify
    // the attachment, so a bad CNI_ARGS is no reason to fail it.
    for (verb, var, value, code) in [
        ("DEL", "CNI_CONTAINERID", "", 4),
        ("DEL", "CNI_CONTAINERID", "a/b", 4),
        ("DEL", "CNI_IFNAME", "", 4),
        ("DEL", "CNI_IFNAME", "a:b", 4),
        ("CHECK", "CNI_NETNS", "", 4),
        ("CHECK", "CNI_CONTAINERID", "", 4),
        ("CHECK", "CNI_NETNS", "/dev/null", 4),
        ("CHECK", "CNI_ARGS", "FOO", 4),
    ] {
        let what = format!("{verb} with {var}={value:?}");
        v.push(with_env(case(what, verb, bytes(good), code), var, value));
    }
    // A CHECK of an attachment the agent never made.
    v.push(with_env(
        case("CHECK of an unknown container", "CHECK", bytes(good), 3),
        "CNI_CONTAINERID",
        "never-added",
    ));

    // stdin that is not one JSON object.
    let mut trailing = bytes(good);
    trailing.extend_from_slice(b" trailing");
    let mut two = bytes(good);
    two.extend_from_slice(&bytes(good));
    let mut nul = bytes(good);
    nul.push(0);
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(&bytes(good));
    // 300 levels of nesting in prevResult, past serde_json's limit of 128.
    let mut deep = bytes(good);
    deep.truncate(deep.len() - 1);
    deep.extend_from_slice(b",\"prevResult\":");
    deep.extend_from_slice("[".repeat(300).as_bytes());
    deep.extend_from_slice("]".repeat(300).as_bytes());
    deep.push(b'}');
    let mut huge = bytes(good);
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(b",\"pad\":\"");
    huge.extend(std::iter::repeat_n(b'x', 1 << 20));
    huge.extend_from_slice(b"\"}");
    for (what, stdin, code) in [
        ("empty stdin", Vec::new(), 6),
        ("white space only", b"  \n\t ".to_vec(), 6),
        ("null", b"null".to_vec(), 7),
        ("a list", b"[]".to_vec(), 7),
        ("a string", b"\"hostnic\"".to_vec(), 7),
        ("a number", b"42".to_vec(), 7),
        ("binary garbage", b"\x00\x01\x02\xff\xfe".to_vec(), 6),
        (
            "truncated JSON",
            b"{\"cniVersion\": \"1.0.0\", \"name\"".to_vec(),
            6,
        ),
        ("trailing garbage", trailing, 6),
        ("two documents", two, 6),
        ("a NUL after the document", nul, 6),
        ("a byte-order mark", bom, 6),
        ("nesting past the parser's limit", deep, 6),
        ("more than 1 MiB", huge, 7),
        (
            "invalid UTF-8 in a string",
            b"{\"cniVersion\":\"1.0.0\",\"name\":\"\xff\xfe\",\"type\":\"hostnic\"}".to_vec(),
            6,
        ),
        (
            "a lone surrogate escape",
            b"{\"cniVersion\":\"1.0.0\",\"name\":\"\\ud800\",\"type\":\"hostnic\"}".to_vec(),
            6,
        ),
        (
            "a duplicate name",
            b"{\"cniVersion\":\"1.0.0\",\"name\":\"a\",\"name\":\"b\",\"type\":\"hostnic\"}"
                .to_vec(),
            7,
        ),
        ("single quotes", b"{'cniVersion':'1.0.0'}".to_vec(), 6),
        (
            "a comment",
            b"{\"cniVersion\":\"1.0.0\" /* c */}".to_vec(),
            6,
        ),
    ] {
        v.push(add(what, stdin, code));
    }

    // Fields, one broken at a time.
    for (what, stdin, code) in [
        ("no cniVersion", without("cniVersion"), 7),
        ("cniVersion a number", set(&["cniVersion"], json!(1)), 7),
        ("cniVersion null", set(&["cniVersion"], Value::Null), 7),
        ("cniVersion 0.1.0", set(&["cniVersion"], json!("0.1.0")), 1),
        ("cniVersion 0.2.0", set(&["cniVersion"], json!("0.2.0")), 1),
        ("cniVersion 2.0.0", set(&["cniVersion"], json!("2.0.0")), 1),
        ("cniVersion empty", set(&["cniVersion"], json!("")), 1),
        ("cniVersion 1.0", set(&["cniVersion"], json!("1.0")), 1),
        (
            "cniVersion v1.0.0",
            set(&["cniVersion"], json!("v1.0.0")),
            1,
        ),
        ("no name", without("name"), 7),
        ("name empty", set(&["name"], json!("")), 7),
        ("name a number", set(&["name"], json!(7)), 7),
        ("name null", set(&["name"], Value::Null), 7),
        ("name a list", set(&["name"], json!(["a"])), 7),
        ("no type", without("type"), 7),
        ("type a list", set(&["type"], json!([])), 7),
        ("mtu too small", set(&["mtu"], json!(10)), 7),
        ("mtu too large", set(&["mtu"], json!(70000)), 7),
        ("mtu negative", set(&["mtu"], json!(-1)), 7),
        ("mtu a string", set(&["mtu"], json!("1500")), 7),
        ("mtu a fraction", set(&["mtu"], json!(1.5)), 7),
        ("timeoutSeconds 0", set(&["timeoutSeconds"], json!(0)), 7),
        (
            "timeoutSeconds a string",
            set(&["timeoutSeconds"], json!("5")),
            7,
        ),
        (
            "timeoutSeconds negative",
            set(&["timeoutSeconds"], json!(-5)),
            7,
        ),
        (
            "socket relative",
            set(&["socket"], json!("run/agent.sock")),
            7,
        ),
        ("socket a number", set(&["socket"], json!(5)), 7),
        ("ipam a string", set(&["ipam"], json!("x")), 7),
        (
            "ipam.routes a string",
            set(&["ipam", "routes"], json!("x")),
            7,
        ),
        (
            "a route without dst",
            set(&["ipam", "routes"], json!([{}])),
            7,
        ),
        (
            "a route dst not a CIDR",
            set(&["ipam", "routes"], json!([{"dst": "nonsense"}])),
            7,
        ),
        (
            "a route dst with host bits",
            set(&["ipam", "routes"], json!([{"dst": "10.96.0.1/12"}])),
            7,
        ),
        (
            "a route dst /33",
            set(&["ipam", "routes"], json!([{"dst": "10.96.0.0/33"}])),
            7,
        ),
        (
            "an IPv6 route dst",
            set(&["ipam", "routes"], json!([{"dst": "fd00::/64"}])),
            7,
        ),
        (
            "a route gw not an address",
            set(
                &["ipam", "routes"],
                json!([{"dst": "10.96.0.0/12", "gw": "x"}]),
            ),
            7,
        ),
        (
            "an IPv6 route gw",
            set(
                &["ipam", "routes"],
                json!([{"dst": "10.96.0.0/12", "gw": "fd00::1"}]),
            ),
            7,
        ),
        (
            "a route a string",
            set(&["ipam", "routes"], json!(["10.96.0.0/12"])),
            7,
        ),
        (
            "capabilities a string",
            set(&["capabilities"], json!("x")),
            7,
        ),
        (
            "a capability not a bool",
            set(&["capabilities"], json!({"portMappings": "yes"})),
            7,
        ),
        (
            "runtimeConfig a string",
            set(&["runtimeConfig"], json!("x")),
            7,
        ),
        (
            "runtimeConfig.ips not IPv4",
            set(&["runtimeConfig", "ips"], json!(["fd00::50/64"])),
            7,
        ),
        (
            "runtimeConfig.mac not a MAC",
            set(&["runtimeConfig", "mac"], json!("52:54:00:00:01")),
            7,
        ),
        ("vxnets empty", set(&["vxnets"], json!([])), 7),
        (
            "annotations a number",
            set(
                &["runtimeConfig", "io.kubernetes.cri.pod-annotations"],
                json!(7),
            ),
            7,
        ),
        (
            "an annotation value a number",
            set(
                &["runtimeConfig", "io.kubernetes.cri.pod-annotations"],
                json!({"a": 1}),
            ),
            7,
        ),
        (
            "annotations a list",
            set(
                &["runtimeConfig", "io.kubernetes.cri.pod-annotations"],
                json!(["a"]),
            ),
            7,
        ),
        ("prevResult a string", set(&["prevResult"], json!("x")), 7),
        ("prevResult a number", set(&["prevResult"], json!(5)), 7),
        ("prevResult a list", set(&["prevResult"], json!([])), 7),
        (
            "prevResult interfaces an object",
            set(&["prevResult"], json!({"interfaces": {}})),
            7,
        ),
        (
            "prevResult ips a string",
            set(&["prevResult"], json!({"ips": "x"})),
            7,
        ),
        (
            "prevResult routes a number",
            set(&["prevResult"], json!({"routes": 1})),
            7,
        ),
        (
            "valid-attachments a string",
            set(&["cni.dev/valid-attachments"], json!("x")),
            7,
        ),
        (
            "a valid attachment without ifname",
            set(
                &["cni.dev/valid-attachments"],
                json!([{"containerID": "c"}]),
            ),
            7,
        ),
    ] {
        v.push(add(what, stdin, code));
    }

    // Verbs the version does not have, and GC's list.
    let ver = |s: &str| set(&["cniVersion"], json!(s));
    for (what, verb, stdin, code) in [
        ("CHECK in 0.3.0", "CHECK", ver("0.3.0"), 1),
        ("CHECK in 0.3.1", "CHECK", ver("0.3.1"), 1),
        ("GC in 1.0.0", "GC", ver("1.0.0"), 1),
        ("GC in 0.4.0", "GC", ver("0.4.0"), 1),
        ("STATUS in 0.4.0", "STATUS", ver("0.4.0"), 1),
        ("STATUS in 1.0.0", "STATUS", ver("1.0.0"), 1),
        ("GC without valid-attachments", "GC", ver("1.1.0"), 7),
        (
            "GC with valid-attachments not a list",
            "GC",
            edited(&|c| {
                c["cniVersion"] = json!("1.1.0");
                c["cni.dev/valid-attachments"] = json!({"containerID": "c"});
            }),
            7,
        ),
        ("DEL with cniVersion 0.2.0", "DEL", ver("0.2.0"), 1),
        ("DEL without a name", "DEL", without("name"), 7),
        (
            "DEL with truncated JSON",
            "DEL",
            b"{\"cniVersion\":".to_vec(),
            6,
        ),
        (
            "DEL with a relative socket",
            "DEL",
            set(&["socket"], json!("agent.sock")),
            7,
        ),
        ("CHECK with truncated JSON", "CHECK", b"{".to_vec(), 6),
        ("STATUS with binary garbage", "STATUS", b"\xff".to_vec(), 6),
    ] {
        v.push(case(what, verb, stdin, code));
    }
    v
}

#[test]
fn malformed_calls_get_the_right_code_one_json_document_and_leave_the_agent_serving() {
    if !require_root(
        "malformed_calls_get_the_right_code_one_json_document_and_leave_the_agent_serving",
    ) {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let _agent = tb.start_agent().unwrap();
    let pod = Ns::new("pod").unwrap();
    let pod_path = pod.path().display().to_string();
    let mut good = tb.netconf("1.0.0", json!([{"dst": "10.96.0.0/12", "gw": "0.0.0.0"}]));
    good["capabilities"] = json!({"io.kubernetes.cri.pod-annotations": true});
    good["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": {"a": "b"}});
    let node_ns = tb.node.path().display().to_string();
    let cases = cases(&good, &node_ns);
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let cni = tb.hostnic();
    let base = CallEnv {
        container_id: "bad-input",
        netns: &pod_path,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
    };
    let mut status_conf = good.clone();
    status_conf["cniVersion"] = json!("1.1.0");
    let mut failures = Vec::new();
    for c in &cases {
        let extra: Vec<(&str, &str)> = c.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // call_raw removes a variable set to "": that is how "unset" and
        // "empty" (which the executable treats alike) are both covered.
        let out = cni.call_raw(c.verb, &c.stdin, &base, &extra).unwrap();
        let problem = match out {
            Ok(v) => Some(format!("succeeded with {v}")),
            Err(e) => {
                let mut docs = serde_json::Deserializer::from_str(&e.stdout).into_iter::<Value>();
                let first = docs.next();
                if e.stderr.contains("panicked") {
                    Some(format!("panicked: {}", e.stderr))
                } else if !matches!(first, Some(Ok(Value::Object(_)))) || docs.next().is_some() {
                    Some(format!(
                        "stdout is not exactly one JSON object: {:?}",
                        e.stdout
                    ))
                } else if e.code != Some(c.code) {
                    Some(format!("code {:?}, expected {}: {}", e.code, c.code, e.msg))
                } else if e.msg.is_empty() {
                    Some("an empty message".into())
                } else {
                    None
                }
            }
        };
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", c.what));
        }
        let status = cni
            .call("STATUS", &status_conf, &CallEnv::default())
            .unwrap();
        assert!(
            status.is_ok(),
            "after {}: the agent stopped serving: {status:?}",
            c.what
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} malformed calls, each refused with its code",
        cases.len()
    );
    // Nothing was recorded or moved, and the NIC still serves a real pod.
    let recorded = std::fs::read_dir(tb.state_dir().join("allocations"))
        .unwrap()
        .count();
    assert_eq!(recorded, 0);
    assert_eq!(tb.parked_macs().unwrap().len(), 1);
    let r = cni.call("ADD", &good, &base).unwrap();
    assert!(r.is_ok(), "{r:?}");
}
