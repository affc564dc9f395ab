//! The executable's handlers called in process, for every spec version and
//! every bad input, against a small fake agent. The fake checks what only
//! the wire can show: the request's shape and that the netns arrived as a
//! descriptor of the very namespace the runtime named. The real agent is
//! exercised by the testbed's kernel tests.

use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use hostnic::{Env, MAX_STDIN, Outcome, read_stdin, run};
use hostnic_proto::cni::{CniError, SUPPORTED_VERSIONS};
use hostnic_proto::rpc::{self, Reply, Response};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use serde_json::{Value, json};

mod common;
use common::{NETNS, added};

/// What the fake agent saw of one request.
#[derive(Debug)]
struct Seen {
    request: Value,
    /// (dev, inode) of the descriptor that came with it.
    fd_identity: Option<(u64, u64)>,
}

struct FakeAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    thread: Option<JoinHandle<Vec<Seen>>>,
}

impl FakeAgent {
    /// Serves `replies` in order, one per connection.
    fn start(replies: Vec<Result<Reply, CniError>>) -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let thread = std::thread::spawn(move || serve(&listener, replies));
        FakeAgent {
            _dir: dir,
            socket,
            thread: Some(thread),
        }
    }

    fn seen(mut self) -> Vec<Seen> {
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Answers `replies` in order, one per connection.
fn serve(listener: &UnixListener, replies: Vec<Result<Reply, CniError>>) -> Vec<Seen> {
    let mut seen = Vec::new();
    for result in replies {
        let (mut stream, _) = listener.accept().unwrap();
        seen.push(read_request(&stream));
        rpc::write_frame(&mut stream, &Response { version: 1, result }).unwrap();
    }
    seen
}

fn read_request(stream: &UnixStream) -> Seen {
    let mut buf = vec![0u8; rpc::MAX_FRAME + 4];
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut fd_identity = None;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            assert_eq!(fds.len(), 1, "exactly one descriptor");
            // SAFETY: received just now; we own it.
            let fd = unsafe { OwnedFd::from_raw_fd(fds[0]) };
            let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            fd_identity = Some((meta.dev(), meta.ino()));
        }
    }
    let n = msg.bytes;
    // The whole frame arrives in one read for requests this small.
    let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
    assert_eq!(n, len + 4, "one frame, sent whole");
    Seen {
        request: serde_json::from_slice(&buf[4..n]).unwrap(),
        fd_identity,
    }
}

fn netns_identity() -> (u64, u64) {
    let m = std::fs::metadata(NETNS).unwrap();
    (m.dev(), m.ino())
}

fn conf(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "hostnic",
        "type": "hostnic",
        "socket": socket,
        "mtu": 1450,
        "ipam": {"routes": [{"dst": "10.96.0.0/12", "gw": "0.0.0.0"}]},
        "capabilities": {"io.kubernetes.cri.pod-annotations": true},
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"hostnic.io/x": "y"}},
    })
}

fn env(command: &str) -> Env {
    Env {
        command: Some(command.into()),
        container_id: Some("abc123".into()),
        netns: Some(NETNS.into()),
        ifname: Some("eth0".into()),
        args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=abc123".into()),
        path: Some("/opt/cni/bin".into()),
    }
}

fn stdin(v: &Value) -> Result<Vec<u8>, CniError> {
    Ok(serde_json::to_vec(v).unwrap())
}

/// The error code and message of a failure; panics on success.
fn failure(o: Outcome, version: &str) -> (u64, String) {
    match o {
        Outcome::Failure(v) => {
            assert_eq!(v["cniVersion"], version, "{v}");
            (
                v["code"].as_u64().unwrap(),
                v["msg"].as_str().unwrap().to_string(),
            )
        }
        Outcome::Success(v) => panic!("expected a failure, got {v:?}"),
    }
}

#[test]
fn every_version_add_check_del_reach_the_agent_with_the_netns_fd() {
    for version in SUPPORTED_VERSIONS {
        let has_check = version != "0.3.0" && version != "0.3.1";
        let mut replies = vec![Ok(added()), Ok(Reply::Deleted)];
        if has_check {
            replies.push(Ok(Reply::Checked));
        }
        let agent = FakeAgent::start(replies);
        let c = conf(version, &agent.socket);

        let Outcome::Success(Some(result)) = run(&env("ADD"), stdin(&c)) else {
            panic!("{version}: ADD failed")
        };
        assert_eq!(result["cniVersion"], version);
        assert_eq!(result["ips"][0]["address"], "10.0.1.7/24");
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version.starts_with("0.")
        );

        assert_eq!(
            run(&env("DEL"), stdin(&c)),
            Outcome::Success(None),
            "{version}"
        );
        if has_check {
            let mut chk = c.clone();
            chk["prevResult"] = result.clone();
            assert_eq!(
                run(&env("CHECK"), stdin(&chk)),
                Outcome::Success(None),
                "{version}"
            );
        }

        let seen = agent.seen();
        let add = &seen[0];
        assert_eq!(
            add.fd_identity,
            Some(netns_identity()),
            "{version}: the netns travels as a descriptor"
        );
        let r = &add.request;
        assert_eq!(r["version"], rpc::PROTOCOL_VERSION);
        assert_eq!(r["op"], "add");
        assert_eq!(r["target"]["network"], "hostnic");
        assert_eq!(r["target"]["container_id"], "abc123");
        assert_eq!(r["target"]["netns"], NETNS);
        assert_eq!(r["pod"]["name"], "web");
        assert_eq!(r["pod"]["namespace"], "default");
        assert_eq!(r["pod"]["uid"], "u-1");
        assert_eq!(r["pod"]["annotations"]["hostnic.io/x"], "y");
        assert_eq!(r["mtu"], 1450);
        assert_eq!(r["routes"][0]["gw"], "0.0.0.0");
        assert_eq!(seen[1].request["op"], "del");
        assert_eq!(seen[1].fd_identity, Some(netns_identity()));
        if has_check {
            assert_eq!(
                seen[2].request["prev_result"]["ips"][0]["address"],
                "10.0.1.7/24"
            );
        }
    }
}

#[test]
fn chained_after_another_plugin_appends_to_prev_result() {
    let agent = FakeAgent::start(vec![Ok(added())]);
    let mut c = conf("1.0.0", &agent.socket);
    c["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}], "ips": [], "dns": {"search": ["svc"]}});
    let Outcome::Success(Some(r)) = run(&env("ADD"), stdin(&c)) else {
        panic!("ADD failed")
    };
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(r["dns"]["search"][0], "svc");
}

#[test]
fn del_without_a_netns_and_gc_and_status() {
    let agent = FakeAgent::start(vec![
        Ok(Reply::Deleted),
        Ok(Reply::Deleted),
        Ok(Reply::Collected { released: 2 }),
        Ok(Reply::Status { free_nics: 3 }),
    ]);
    let c = conf("1.1.0", &agent.socket);
    // containerd's second DEL: CNI_NETNS empty.
    let mut e = env("DEL");
    e.netns = Some(String::new());
    assert_eq!(run(&e, stdin(&c)), Outcome::Success(None));
    // A netns path that is already gone is no reason for DEL to fail.
    e.netns = Some("/var/run/netns/does-not-exist".into());
    assert_eq!(run(&e, stdin(&c)), Outcome::Success(None));
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    assert_eq!(
        run(
            &Env {
                command: Some("GC".into()),
                ..Env::default()
            },
            stdin(&gc)
        ),
        Outcome::Success(None)
    );
    assert_eq!(
        run(
            &Env {
                command: Some("STATUS".into()),
                ..Env::default()
            },
            stdin(&c)
        ),
        Outcome::Success(None)
    );
    let seen = agent.seen();
    assert_eq!(seen[0].fd_identity, None);
    assert_eq!(seen[0].request["target"]["netns"], Value::Null);
    assert_eq!(seen[1].fd_identity, None);
    assert_eq!(seen[2].request["op"], "gc");
    assert_eq!(seen[2].request["valid"][0]["containerID"], "keep");
    assert_eq!(seen[3].request["op"], "status");
}

/// containerd sends `"io.kubernetes.cri.pod-annotations": null` for a
/// sandbox without annotations: ADD and DEL must both work.
#[test]
fn a_pod_without_annotations_is_served() {
    let agent = FakeAgent::start(vec![Ok(added()), Ok(Reply::Deleted)]);
    let mut c = conf("1.0.0", &agent.socket);
    c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": null});
    assert!(matches!(
        run(&env("ADD"), stdin(&c)),
        Outcome::Success(Some(_))
    ));
    assert_eq!(run(&env("DEL"), stdin(&c)), Outcome::Success(None));
    let seen = agent.seen();
    assert_eq!(seen[0].request["pod"]["annotations"], json!({}));
    assert_eq!(seen[1].request["op"], "del");
}

/// The `bandwidth` capability exactly as containerd sends it for a pod
/// annotated `kubernetes.io/ingress-bandwidth: 10M` and `egress-bandwidth:
/// 1M`: go-cni's field names (no JSON tags) and a 4294967295-bit burst.
/// It reaches the agent checked, in every version.
#[test]
fn containerds_bandwidth_reaches_the_agent() {
    let agent = FakeAgent::start(SUPPORTED_VERSIONS.iter().map(|_| Ok(added())).collect());
    for version in SUPPORTED_VERSIONS {
        let mut c = conf(version, &agent.socket);
        c["capabilities"]["bandwidth"] = json!(true);
        c["runtimeConfig"]["bandwidth"] = json!({
            "IngressRate": 10_000_000u64, "IngressBurst": 4_294_967_295u64,
            "EgressRate": 1_000_000u64, "EgressBurst": 4_294_967_295u64,
        });
        assert!(
            matches!(run(&env("ADD"), stdin(&c)), Outcome::Success(Some(_))),
            "{version}"
        );
    }
    for seen in agent.seen() {
        assert_eq!(
            seen.request["bandwidth"],
            json!({
                "ingress": {"rate": 10_000_000u64, "burst": 4_294_967_295u64},
                "egress": {"rate": 1_000_000u64, "burst": 4_294_967_295u64},
            })
        );
    }
    // Without limits the request has no "bandwidth" at all, as before.
    let agent = FakeAgent::start(vec![Ok(added())]);
    let mut c = conf("1.0.0", &agent.socket);
    c["runtimeConfig"]["bandwidth"] =
        json!({"IngressRate": 0, "IngressBurst": 0, "EgressRate": 0, "EgressBurst": 0});
    assert!(matches!(
        run(&env("ADD"), stdin(&c)),
        Outcome::Success(Some(_))
    ));
    assert_eq!(agent.seen()[0].request.get("bandwidth"), None);
}

/// Limits that cannot be honoured are refused before the agent is asked,
/// naming the field.
#[test]
fn bad_bandwidth_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("unused.sock");
    for (bandwidth, field) in [
        (json!({"ingressRate": 10_000_000}), "ingressBurst"),
        (json!({"egressBurst": 80_000}), "egressRate"),
        (
            json!({"egressRate": 10, "egressBurst": 80_000}),
            "egressRate",
        ),
        (
            json!({"ingressRate": 10_000_000, "ingressBurst": 1u64 << 40}),
            "ingressBurst",
        ),
    ] {
        let mut c = conf("1.0.0", &sock);
        c["runtimeConfig"]["bandwidth"] = bandwidth.clone();
        let (code, msg) = failure(run(&env("ADD"), stdin(&c)), "1.0.0");
        assert_eq!(code, 7, "{bandwidth}: {msg}");
        assert!(
            msg.contains(&format!("runtimeConfig.bandwidth.{field}")),
            "{bandwidth}: {msg}"
        );
    }
}

/// DEL succeeds whenever it can identify the attachment: an optional field
/// it cannot parse is ignored, never a reason to strand the pod's NIC.
#[test]
fn del_ignores_optional_fields_it_cannot_parse() {
    let broken: Vec<(&str, Value)> = vec![
        (
            "runtimeConfig",
            json!({"io.kubernetes.cri.pod-annotations": 7}),
        ),
        ("runtimeConfig", json!("not an object")),
        ("ipam", json!({"routes": "everywhere"})),
        ("mtu", json!("big")),
        ("prevResult", json!("a string")),
        ("prevResult", json!({"interfaces": 3})),
        ("capabilities", json!([1, 2])),
        (
            "runtimeConfig",
            json!({"bandwidth": {"ingressRate": "fast", "ingressBurst": 8000}}),
        ),
        ("timeoutSeconds", json!(-1)),
        ("connectTimeoutSeconds", json!("soon")),
    ];
    let agent = FakeAgent::start(broken.iter().map(|_| Ok(Reply::Deleted)).collect());
    for (field, value) in &broken {
        let mut c = conf("1.0.0", &agent.socket);
        c[*field] = value.clone();
        assert_eq!(
            run(&env("DEL"), stdin(&c)),
            Outcome::Success(None),
            "DEL with {field} = {value}"
        );
        // ADD with the same config is refused, naming the field.
        let (code, msg) = failure(run(&env("ADD"), stdin(&c)), "1.0.0");
        assert!(
            code == 7 || code == 2,
            "ADD with {field} = {value}: {code} {msg}"
        );
        assert!(msg.contains(field), "ADD with {field}: {msg}");
    }
    let seen = agent.seen();
    assert_eq!(seen.len(), broken.len());
    assert!(
        seen.iter()
            .all(|s| s.request["target"]["container_id"] == "abc123")
    );
    // What DEL cannot do without still fails: no name, not JSON.
    let mut c = conf("1.0.0", Path::new("/unused.sock"));
    c.as_object_mut().unwrap().remove("name");
    assert_eq!(failure(run(&env("DEL"), stdin(&c)), "1.0.0").0, 7);
    assert_eq!(
        failure(run(&env("DEL"), Ok(b"{\"cniVersion\":".to_vec())), "1.1.0").0,
        6
    );
}

/// The agent dies while it reads the request (kill -9 mid-read): the
/// kernel resets a unix stream closed with data unread, so the agent never
/// had the whole request and did nothing with it. The call sends it again,
/// whatever the verb, and the restarted agent serves it. Told not to wait,
/// the reset is "try again later" (11), which runtimes retry, not an I/O
/// error (5).
#[test]
fn an_agent_reset_mid_request_had_not_read_it_and_gets_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        // Close with unread data in the receive queue: the kernel answers
        // the peer with a reset, as when an agent is killed mid-read.
        let mut one = [0u8; 1];
        (&s).read_exact(&mut one).unwrap();
        drop(s);
        // The next connection is the call sent again.
        serve(&listener, vec![Ok(added())])
    });
    let c = conf("1.0.0", &socket);
    assert!(matches!(
        run(&env("ADD"), stdin(&c)),
        Outcome::Success(Some(_))
    ));
    let seen = t.join().unwrap();
    assert_eq!(seen[0].request["op"], "add");
    assert_eq!(seen[0].fd_identity, Some(netns_identity()));

    let listener = UnixListener::bind(dir.path().join("once.sock")).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut one = [0u8; 1];
        (&s).read_exact(&mut one).unwrap();
    });
    let mut c = conf("1.0.0", &dir.path().join("once.sock"));
    c["connectTimeoutSeconds"] = json!(0);
    let (code, msg) = failure(run(&env("ADD"), stdin(&c)), "1.0.0");
    t.join().unwrap();
    assert_eq!(code, 11, "{msg}");
}

#[test]
fn agent_errors_reach_the_runtime_unchanged() {
    let agent = FakeAgent::start(vec![Err(
        CniError::new(101, "no free NIC on this node").with_details("add NICs")
    )]);
    let c = conf("1.0.0", &agent.socket);
    let Outcome::Failure(v) = run(&env("ADD"), stdin(&c)) else {
        panic!("ADD succeeded")
    };
    assert_eq!(
        v,
        json!({"cniVersion": "1.0.0", "code": 101, "msg": "no free NIC on this node", "details": "add NICs"})
    );
}

#[test]
fn bad_inputs_get_the_right_code_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("unused.sock");
    let good = conf("1.0.0", &sock);
    let with = |f: &dyn Fn(&mut Env)| {
        let mut e = env("ADD");
        f(&mut e);
        e
    };
    let edited = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        stdin(&c)
    };
    let latest = "1.1.0";
    // (what, env, stdin, expected code, a word the message must contain, version in the error)
    type Case = (
        &'static str,
        Env,
        Result<Vec<u8>, CniError>,
        u64,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "no CNI_COMMAND",
            with(&|e| e.command = None),
            stdin(&good),
            4,
            "CNI_COMMAND",
            latest,
        ),
        (
            "unknown verb",
            with(&|e| e.command = Some("ATTACH".into())),
            stdin(&good),
            4,
            "ATTACH",
            latest,
        ),
        (
            "malformed JSON",
            env("ADD"),
            Ok(b"{\"cniVersion\": ".to_vec()),
            6,
            "stdin",
            latest,
        ),
        (
            "not JSON at all",
            env("ADD"),
            Ok(b"\x00\x01garbage".to_vec()),
            6,
            "stdin",
            latest,
        ),
        (
            "no cniVersion",
            env("ADD"),
            edited(&|c| drop(c.as_object_mut().unwrap().remove("cniVersion"))),
            7,
            "cniVersion",
            latest,
        ),
        (
            "no name",
            env("ADD"),
            edited(&|c| drop(c.as_object_mut().unwrap().remove("name"))),
            7,
            "name",
            "1.0.0",
        ),
        (
            "name of the wrong type",
            env("ADD"),
            edited(&|c| c["name"] = json!(7)),
            7,
            "name",
            "1.0.0",
        ),
        (
            "old cniVersion",
            env("ADD"),
            edited(&|c| c["cniVersion"] = json!("0.2.0")),
            1,
            "0.2.0",
            "0.2.0",
        ),
        (
            "unknown cniVersion",
            env("ADD"),
            edited(&|c| c["cniVersion"] = json!("9.9.9")),
            1,
            "9.9.9",
            "9.9.9",
        ),
        (
            "bad mtu",
            env("ADD"),
            edited(&|c| c["mtu"] = json!(9_000_000)),
            7,
            "mtu",
            "1.0.0",
        ),
        (
            "bad route",
            env("ADD"),
            edited(&|c| c["ipam"]["routes"][0]["dst"] = json!("10.96.0.0/99")),
            7,
            "routes",
            "1.0.0",
        ),
        (
            "runtime asks for a MAC that is none",
            env("ADD"),
            edited(&|c| c["runtimeConfig"]["mac"] = json!("00:11:22:33:44")),
            7,
            "runtimeConfig.mac",
            "1.0.0",
        ),
        (
            "no CNI_CONTAINERID",
            with(&|e| e.container_id = None),
            stdin(&good),
            4,
            "CNI_CONTAINERID",
            "1.0.0",
        ),
        (
            "bad CNI_CONTAINERID",
            with(&|e| e.container_id = Some("../etc".into())),
            stdin(&good),
            4,
            "CNI_CONTAINERID",
            "1.0.0",
        ),
        (
            "no CNI_IFNAME",
            with(&|e| e.ifname = None),
            stdin(&good),
            4,
            "CNI_IFNAME",
            "1.0.0",
        ),
        (
            "long CNI_IFNAME",
            with(&|e| e.ifname = Some("a-very-long-ifname".into())),
            stdin(&good),
            4,
            "CNI_IFNAME",
            "1.0.0",
        ),
        (
            "no CNI_NETNS",
            with(&|e| e.netns = None),
            stdin(&good),
            4,
            "CNI_NETNS",
            "1.0.0",
        ),
        (
            "netns that does not exist",
            with(&|e| e.netns = Some("/var/run/netns/nope".into())),
            stdin(&good),
            3,
            "/var/run/netns/nope",
            "1.0.0",
        ),
        (
            "unknown CNI_ARGS",
            with(&|e| e.args = Some("FOO=bar".into())),
            stdin(&good),
            4,
            "FOO",
            "1.0.0",
        ),
        (
            "malformed CNI_ARGS",
            with(&|e| e.args = Some("K8S_POD_NAME".into())),
            stdin(&good),
            4,
            "CNI_ARGS",
            "1.0.0",
        ),
        (
            "oversized stdin",
            env("ADD"),
            read_stdin(&mut std::io::repeat(b' ').take(MAX_STDIN as u64 + 10)),
            7,
            "larger",
            latest,
        ),
        (
            "CHECK in 0.3.1",
            with(&|e| e.command = Some("CHECK".into())),
            edited(&|c| c["cniVersion"] = json!("0.3.1")),
            1,
            "Check",
            "0.3.1",
        ),
        (
            "trailing bytes after the JSON",
            env("ADD"),
            {
                let mut b = serde_json::to_vec(&good).unwrap();
                b.extend_from_slice(b" {\"name\": \"other\"}");
                Ok(b)
            },
            6,
            "trailing",
            "1.0.0",
        ),
        (
            "prevResult is a string",
            env("ADD"),
            edited(&|c| c["prevResult"] = json!("10.0.0.1/24")),
            7,
            "prevResult",
            "1.0.0",
        ),
        (
            "prevResult interfaces is not a list",
            env("ADD"),
            edited(&|c| c["prevResult"] = json!({"interfaces": {"name": "lo"}})),
            7,
            "interfaces",
            "1.0.0",
        ),
        (
            "connectTimeoutSeconds not a number",
            env("ADD"),
            edited(&|c| c["connectTimeoutSeconds"] = json!("30s")),
            7,
            "connectTimeoutSeconds",
            "1.0.0",
        ),
        (
            "relative socket path",
            env("ADD"),
            edited(&|c| c["socket"] = json!("run/agent.sock")),
            7,
            "relative",
            "1.0.0",
        ),
        (
            "GC in 1.0.0",
            Env {
                command: Some("GC".into()),
                ..Env::default()
            },
            stdin(&good),
            1,
            "Gc",
            "1.0.0",
        ),
        (
            "GC without the list",
            Env {
                command: Some("GC".into()),
                ..Env::default()
            },
            edited(&|c| c["cniVersion"] = json!("1.1.0")),
            7,
            "valid-attachments",
            "1.1.0",
        ),
    ];
    for (what, e, input, code, needle, version) in cases {
        let (got, msg) = failure(run(&e, input), version);
        assert_eq!(got, code, "{what}: {msg}");
        assert!(
            msg.contains(needle),
            "{what}: message {msg:?} should name {needle:?}"
        );
    }
}

#[test]
fn version_answers_without_an_agent() {
    for stdin_text in [r#"{"cniVersion":"0.4.0"}"#, "", "not json"] {
        let Outcome::Success(Some(v)) = run(
            &Env {
                command: Some("VERSION".into()),
                ..Env::default()
            },
            Ok(stdin_text.as_bytes().to_vec()),
        ) else {
            panic!("VERSION failed")
        };
        assert_eq!(v["supportedVersions"], json!(SUPPORTED_VERSIONS));
        let expect = if stdin_text.contains("0.4.0") {
            "0.4.0"
        } else {
            "1.1.0"
        };
        assert_eq!(v["cniVersion"], expect);
    }
}
