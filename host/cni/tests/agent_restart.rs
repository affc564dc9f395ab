//! The real `hostnic` executable, exec'd as a runtime does, while its agent
//! restarts: no socket at first, then a stale one nobody listens on, then
//! an agent. The executable bridges the gap within `connectTimeoutSeconds`
//! and says how long it waited when the agent never comes; STATUS never
//! waits. A small fake agent stands in for `hostnic-agent` (the testbed's
//! `restart.rs` does the same with the real one).

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostnic_proto::cni::CniError;
use hostnic_proto::rpc::{self, Reply, Request, Response};
use serde_json::{Value, json};

mod common;
use common::{NETNS, added};

/// What the executable printed, whether it exited 0, and how long it took.
struct Ran {
    ok: bool,
    out: Value,
    /// What it wrote to stderr, which runtimes put in their log.
    log: String,
    took: Duration,
}

fn hostnic(command: &str, conf: &Value) -> Ran {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hostnic"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "restart1")
        .env("CNI_NETNS", NETNS)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(&serde_json::to_vec(conf).unwrap()).unwrap();
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    Ran {
        ok: out.status.success(),
        out: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        log: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

fn conf(socket: &Path, connect_timeout: Option<u64>) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "hostnic",
        "type": "hostnic",
        "socket": socket,
    });
    if let Some(s) = connect_timeout {
        c["connectTimeoutSeconds"] = json!(s);
    }
    c
}

/// Reads one request and answers it; the request's op.
fn answer(listener: &UnixListener, result: Result<Reply, CniError>) -> String {
    let (mut stream, _) = listener.accept().unwrap();
    // The netns descriptor that came with an ADD is dropped by the kernel
    // when read without a control buffer: only the frame matters here.
    let request: Request = rpc::read_frame(&mut stream).unwrap();
    rpc::write_frame(&mut stream, &Response { version: 1, result }).unwrap();
    request.op.name().to_string()
}

/// Issue 22: an ADD that arrives while the agent restarts succeeds, as
/// soon as the new agent listens, instead of failing with "Connection
/// refused" and costing the pod a sandbox retry.
#[test]
fn an_add_during_an_agent_restart_waits_for_the_new_agent_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let restart = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            // The old agent is gone and the new one has not bound yet: no
            // socket (ENOENT) ...
            std::thread::sleep(Duration::from_millis(700));
            // ... then a socket nobody listens on (ECONNREFUSED), as the
            // old agent leaves it behind ...
            drop(UnixListener::bind(&socket).unwrap());
            std::thread::sleep(Duration::from_millis(700));
            // ... and the new agent replaces it and serves.
            std::fs::remove_file(&socket).unwrap();
            let listener = UnixListener::bind(&socket).unwrap();
            answer(&listener, Ok(added()))
        })
    };
    let ran = hostnic("ADD", &conf(&socket, None));
    assert!(ran.ok, "the ADD failed: {}", ran.out);
    assert_eq!(ran.out["ips"][0]["address"], "10.0.1.7/24", "{}", ran.out);
    assert_eq!(restart.join().unwrap(), "add");
    // The runtime's log keeps a trace of the wait.
    assert!(
        ran.log
            .contains("hostnic: add: answered by hostnic-agent at"),
        "{}",
        ran.log
    );
    assert!(
        ran.took >= Duration::from_millis(1400),
        "answered in {:?}, before the agent was there",
        ran.took
    );
}

/// With no agent ever, the call gives up after `connectTimeoutSeconds`
/// with the clear "try again later" error naming the socket and the wait,
/// whether the socket is missing or stale.
#[test]
fn without_an_agent_the_call_gives_up_after_the_bound_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    for (socket, refused) in [(&missing, "No such file"), (&stale, "refused")] {
        let ran = hostnic("ADD", &conf(socket, Some(2)));
        assert!(!ran.ok);
        let msg = ran.out["msg"].as_str().unwrap_or_default();
        assert_eq!(ran.out["code"], 11, "{}", ran.out);
        for needle in [
            "hostnic-agent is not reachable",
            &socket.display().to_string(),
            refused,
            "waited 2.",
            "connectTimeoutSeconds 2",
        ] {
            assert!(msg.contains(needle), "{msg:?} should say {needle:?}");
        }
        assert!(
            (Duration::from_secs(2)..Duration::from_secs(4)).contains(&ran.took),
            "gave up after {:?}, not after ~2 s",
            ran.took
        );
    }
    // 0: one try, as before the wait existed.
    let ran = hostnic("DEL", &conf(&missing, Some(0)));
    assert_eq!(ran.out["code"], 11, "{}", ran.out);
    assert!(
        !ran.out["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("waited"),
        "{}",
        ran.out
    );
    assert!(ran.took < Duration::from_secs(1), "took {:?}", ran.took);
}

/// kubelet polls STATUS every few seconds: it answers "not available" (50)
/// at once, not after the default wait.
#[test]
fn status_does_not_wait_for_an_absent_agent() {
    let dir = tempfile::tempdir().unwrap();
    let ran = hostnic("STATUS", &conf(&dir.path().join("nobody.sock"), None));
    assert_eq!(ran.out["code"], 50, "{}", ran.out);
    assert!(ran.took < Duration::from_secs(1), "took {:?}", ran.took);
}

/// An agent that read the request and died before answering may have acted
/// on it: DEL (idempotent) is sent again to the next agent; ADD is not — it
/// is "try again later" at once, and the runtime follows with DEL.
#[test]
fn a_call_cut_after_the_agent_read_it_is_sent_again_only_when_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let agent = std::thread::spawn(move || {
        let mut ops = Vec::new();
        // The DEL: read, then the agent dies; the next agent answers it.
        let (mut s, _) = listener.accept().unwrap();
        let first: Request = rpc::read_frame(&mut s).unwrap();
        drop(s);
        ops.push(first.op.name().to_string());
        ops.push(answer(&listener, Ok(Reply::Deleted)));
        // The ADD: read, then the agent dies. Nothing more may come.
        let (mut s, _) = listener.accept().unwrap();
        let add: Request = rpc::read_frame(&mut s).unwrap();
        drop(s);
        ops.push(add.op.name().to_string());
        listener.set_nonblocking(true).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        if listener.accept().is_ok() {
            ops.push("sent again".into());
        }
        ops
    });
    let del = hostnic("DEL", &conf(&socket, None));
    assert!(del.ok, "{}", del.out);
    let add = hostnic("ADD", &conf(&socket, None));
    assert_eq!(add.out["code"], 11, "{}", add.out);
    assert!(
        add.out["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("closed the connection before answering add"),
        "{}",
        add.out
    );
    assert!(add.took < Duration::from_secs(1), "took {:?}", add.took);
    assert_eq!(agent.join().unwrap(), ["del", "del", "add"]);
}
