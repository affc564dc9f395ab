//! Regression tests for the defects found from outside (hostile clients,
//! bad namespaces, broken records, a broken state directory): each failed
//! before its fix. The real agent in a testbed node, the real executable or
//! a raw socket client.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use hostnic_testbed::rawclient::{self, add_request, error_code, fd_count, frame};
use hostnic_testbed::{CallEnv, Ns, Testbed, bin, err_code, pod_env, require_root, wait_for};
use serde_json::json;

fn node_view(tb: &Testbed) -> (String, String) {
    // The kernel's duplicate address detection finishes on its own a
    // second or so after a link came up: it clears an IPv6 address's
    // "tentative" flag and only then adds its local route. Not a change
    // anyone made, so the view waits for it to end.
    wait_for(
        "IPv6 duplicate address detection",
        Duration::from_secs(10),
        || !tb.node.ip(&["-o", "addr"]).unwrap().contains("tentative"),
    )
    .unwrap();
    (
        tb.node.ip(&["-o", "addr"]).unwrap(),
        tb.node.ip(&["route", "show", "table", "all"]).unwrap(),
    )
}

/// ADD with CNI_NETNS naming the node's own namespace (the agent's) is
/// refused with code 4 before anything is recorded or moved.
#[test]
fn the_node_namespace_is_never_a_pod() {
    if !require_root("the_node_namespace_is_never_a_pod") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    // No default route on the node: a NIC wired into it would take one.
    tb.node.ip(&["route", "del", "default"]).unwrap();
    let _agent = tb.start_agent().unwrap();
    let before = node_view(&tb);
    let conf = tb.netconf("1.0.0", json!([]));
    let node_path = tb.node.path().display().to_string();
    // An interface name the node does not have, so nothing but the
    // namespace check stands in the way.
    let r = tb.hostnic().call(
        "ADD",
        &conf,
        &CallEnv {
            ifname: "pod0",
            ..pod_env("c1", &node_path)
        },
    );
    assert_eq!(err_code(r), 4);
    assert_eq!(node_view(&tb), before, "the node's addresses and routes");
    assert!(tb.records().is_empty(), "recorded: {:?}", tb.records());
    assert_eq!(tb.parked_macs().unwrap(), vec![tb.nics[0].mac.clone()]);
    // The NIC is still free for a real pod.
    let pod = Ns::new("pod").unwrap();
    let r = tb
        .hostnic()
        .call(
            "ADD",
            &conf,
            &pod_env("c2", &pod.path().display().to_string()),
        )
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

/// A descriptor that is not a network namespace (a pipe, a mount
/// namespace) is refused with code 4 and nothing is recorded.
#[test]
fn a_descriptor_that_is_not_a_netns_is_refused() {
    if !require_root("a_descriptor_that_is_not_a_netns_is_refused") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let _agent = tb.start_agent().unwrap();
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let mnt = std::fs::File::open("/proc/self/ns/mnt").unwrap();
    for (what, fd) in [
        ("a pipe", pipe_r.as_raw_fd()),
        ("a mount namespace", mnt.as_raw_fd()),
    ] {
        let answer = rawclient::call(
            &tb.socket(),
            &frame(&add_request("hostnic-test", "c1")),
            &[fd],
        )
        .unwrap();
        assert_eq!(error_code(&answer), Some(4), "{what}: {answer}");
        let msg = answer["result"]["Err"]["msg"].as_str().unwrap();
        assert!(msg.contains("not a network namespace"), "{what}: {msg}");
        assert!(tb.records().is_empty(), "{what}: {:?}", tb.records());
    }
    assert_eq!(tb.parked_macs().unwrap().len(), 1);
}

/// Requests carrying many descriptors (more than the old 4-slot buffer,
/// and the most the kernel allows) leak none of them, and ADD still works.
#[test]
fn descriptor_floods_leak_nothing() {
    if !require_root("descriptor_floods_leak_nothing") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let agent = tb.start_agent().unwrap();
    let pid = agent.pid().unwrap();
    // Settle: the first request opens the agent's lazily created sockets.
    rawclient::call(
        &tb.socket(),
        &frame(&json!({"version": 1, "op": "status"})),
        &[],
    )
    .unwrap();
    let baseline = fd_count(pid);
    let files: Vec<std::fs::File> = (0..253)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let raw: Vec<i32> = files.iter().map(AsRawFd::as_raw_fd).collect();
    let request = frame(&add_request("hostnic-test", "flood"));
    for i in 0..300 {
        let n = [5, 10, 253][i % 3];
        // The agent answers with an error or closes; either is fine.
        let _ = rawclient::call(&tb.socket(), &request, &raw[..n]);
    }
    wait_for(
        "the agent's descriptors back to baseline",
        Duration::from_secs(5),
        || fd_count(pid) <= baseline + 2,
    )
    .unwrap_or_else(|e| panic!("{e}: {} open, baseline {baseline}", fd_count(pid)));
    assert!(tb.records().is_empty());
    let pod = Ns::new("pod").unwrap();
    let conf = tb.netconf("1.0.0", json!([]));
    let r = tb
        .hostnic()
        .call(
            "ADD",
            &conf,
            &pod_env("c1", &pod.path().display().to_string()),
        )
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

/// 1,000 idle and byte-a-second clients do not delay a real request.
#[test]
fn idle_and_slow_clients_do_not_starve_real_requests() {
    if !require_root("idle_and_slow_clients_do_not_starve_real_requests") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let agent = tb.start_agent().unwrap();
    let pid = agent.pid().unwrap();
    let baseline = fd_count(pid);
    let mut idle: Vec<UnixStream> = (0..900)
        .map(|_| UnixStream::connect(tb.socket()).unwrap())
        .collect();
    // Slow clients: a header announcing a big frame, then a byte at a time.
    let slow: Vec<UnixStream> = (0..100)
        .map(|_| {
            let s = UnixStream::connect(tb.socket()).unwrap();
            rawclient::send(&s, &1000u32.to_be_bytes(), &[]).unwrap();
            s
        })
        .collect();
    let status = frame(&json!({"version": 1, "op": "status"}));
    let mut took = Vec::new();
    let start = Instant::now();
    while took.len() < 40 {
        for s in &slow {
            // Ignore errors: the agent is entitled to have cut it off.
            let _ = rawclient::send(s, b" ", &[]);
        }
        let t = Instant::now();
        let answer = rawclient::call(&tb.socket(), &status, &[]).unwrap();
        took.push(t.elapsed());
        assert!(answer["result"]["Ok"].is_object(), "{answer}");
        std::thread::sleep(Duration::from_millis(25));
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    eprintln!(
        "STATUS with 900 idle + 100 slow clients: p50 {:?} p99 {p99:?} over {:?}",
        took[took.len() / 2],
        start.elapsed()
    );
    // Before the fix a real request waited for an idle client's slot to
    // time out (~10 s); the target p99 is 100 ms (measured by the
    // benchmark), asserted here with room for a loaded CI machine.
    assert!(p99 < Duration::from_secs(1), "STATUS p99 {p99:?}");
    idle.clear();
    drop(slow);
    wait_for(
        "the agent's descriptors back to baseline",
        Duration::from_secs(10),
        || fd_count(pid) <= baseline + 2,
    )
    .unwrap();
}

/// Readiness means "an ADD could succeed now": STATUS answers not ready
/// while the record directory cannot be written or the descriptor table
/// is nearly full, and ready again once the cause is gone.
#[test]
fn status_says_not_ready_when_an_add_would_fail() {
    if !require_root("status_says_not_ready_when_an_add_would_fail") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let agent = tb.start_agent().unwrap();
    let conf = tb.netconf("1.1.0", json!([]));
    let status = |tb: &Testbed| {
        tb.hostnic()
            .call("STATUS", &conf, &CallEnv::default())
            .unwrap()
    };
    assert!(status(&tb).is_ok());

    let dir = tb.state_dir().join("allocations");
    std::fs::remove_dir(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let e = status(&tb).unwrap_err();
    assert_eq!(e.code, Some(50), "{e}");
    assert!(e.msg.contains("not writable"), "{}", e.msg);
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    assert!(status(&tb).is_ok());

    // A descriptor limit of 200, then 150 connections held open.
    let pid = agent.pid().unwrap().to_string();
    hostnic_testbed::netns::run(std::process::Command::new("prlimit").args([
        "--pid",
        &pid,
        "--nofile=200:200",
    ]))
    .unwrap();
    let held: Vec<UnixStream> = (0..150)
        .map(|_| UnixStream::connect(tb.socket()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let e = status(&tb).unwrap_err();
    assert_eq!(e.code, Some(50), "{e}");
    assert!(e.msg.contains("descriptors"), "{}", e.msg);
    drop(held);
    wait_for("ready again", Duration::from_secs(10), || {
        status(&tb).is_ok()
    })
    .unwrap();
}

/// Zero-length, half-written and misnamed records are moved aside with a
/// loud log; the agent starts and their NICs are reconciled from the
/// kernel (parked there: free).
#[test]
fn unreadable_records_are_moved_aside_and_the_agent_starts() {
    if !require_root("unreadable_records_are_moved_aside_and_the_agent_starts") {
        return;
    }
    let tb = Testbed::new(3).unwrap();
    let dir = tb.state_dir().join("allocations");
    std::fs::create_dir_all(&dir).unwrap();
    let name = |i: usize| format!("{}.json", hostnic_testbed::parked_name(&tb.nics[i].mac));
    std::fs::write(dir.join(name(0)), b"").unwrap();
    std::fs::write(dir.join(name(1)), b"{\"mac\": \"52:5").unwrap();
    // NIC 2's file holds a record of another NIC.
    let other = json!({"mac": "52:54:00:aa:aa:aa", "phase": "committed",
        "key": {"network": "n", "container_id": "c", "ifname": "eth0"}, "netns": null});
    std::fs::write(dir.join(name(2)), serde_json::to_vec(&other).unwrap()).unwrap();
    let agent = tb.start_agent().unwrap();
    let log = agent.log_text();
    assert_eq!(log.matches("moved it aside").count(), 3, "{log}");
    let left = tb.records();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        left.iter().all(|n| n.contains(".json.corrupt-")),
        "{left:?}"
    );
    // Every NIC is free again: three pods get one each.
    let conf = tb.netconf("1.0.0", json!([]));
    let pods: Vec<Ns> = (0..3).map(|i| Ns::new(&format!("p{i}")).unwrap()).collect();
    for (i, p) in pods.iter().enumerate() {
        let r = tb
            .hostnic()
            .call(
                "ADD",
                &conf,
                &pod_env(&format!("c{i}"), &p.path().display().to_string()),
            )
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
}

/// A recorded netns path that names another namespace by the time DEL
/// comes without a netns (containerd's second DEL) is not entered: the
/// other namespace keeps its interface, even one with the NIC's MAC.
#[test]
fn a_recorded_netns_path_rebound_to_another_namespace_is_not_entered() {
    if !require_root("a_recorded_netns_path_rebound_to_another_namespace_is_not_entered") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let _agent = tb.start_agent().unwrap();
    let conf = tb.netconf("1.0.0", json!([]));
    let pod = Ns::new("pod").unwrap();
    let path = pod.path().display().to_string();
    let r = tb
        .hostnic()
        .call("ADD", &conf, &pod_env("c1", &path))
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    // Keep the pod's namespace alive, then bind its path to a new one that
    // holds an interface with the NIC's MAC.
    let _old = std::fs::File::open(&path).unwrap();
    let run = |args: &[&str]| {
        hostnic_testbed::netns::run(std::process::Command::new("ip").args(args)).unwrap()
    };
    run(&["netns", "delete", pod.name()]);
    run(&["netns", "add", pod.name()]);
    run(&[
        "-n",
        pod.name(),
        "link",
        "add",
        "other0",
        "address",
        &tb.nics[0].mac,
        "type",
        "veth",
        "peer",
        "name",
        "other1",
    ]);
    let r = tb.hostnic().call("DEL", &conf, &pod_env("c1", "")).unwrap();
    assert!(r.is_ok(), "{r:?}");
    // DEL answers before the NIC is back; its record goes when it is.
    tb.settle();
    let links = pod.ip(&["-o", "link"]).unwrap();
    assert!(
        links.contains("other0"),
        "the agent reached into the new namespace: {links}"
    );
    assert!(tb.records().is_empty(), "{:?}", tb.records());
}

/// `--config` naming a file that does not exist refuses to start and names
/// the path (a typo or an unmounted ConfigMap), instead of starting on
/// built-in defaults with no NICs.
#[test]
fn a_missing_config_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bin("hostnic-agent"))
        .args(["--config", "/nonexistent/hostnic/agent.toml"])
        // Should it start anyway, keep it off the default socket.
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("hostnic-agent started without its config file");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/hostnic/agent.toml"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

/// Garbage, impossible lengths, half frames, frames of the wrong shape, a
/// foreign protocol version: each gets an answer or a closed connection,
/// and afterwards the agent's descriptors and memory are back near their
/// baseline and a real ADD is served.
#[test]
fn hostile_clients_leave_the_agent_whole() {
    if !require_root("hostile_clients_leave_the_agent_whole") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let agent = tb.start_agent().unwrap();
    let pid = agent.pid().unwrap();
    let status = frame(&json!({"version": 1, "op": "status"}));
    for _ in 0..20 {
        rawclient::call(&tb.socket(), &status, &[]).unwrap();
    }
    let (fds0, rss0) = (fd_count(pid), agent.rss_kib().unwrap());
    let mut big = (1u32 << 20).to_be_bytes().to_vec();
    big.extend(std::iter::repeat_n(b'{', 1 << 20));
    let hostile: Vec<(&str, Vec<u8>, Option<u64>)> = vec![
        ("garbage", b"\xde\xad\xbe\xef garbage".to_vec(), Some(6)),
        ("a 4 GiB length", u32::MAX.to_be_bytes().to_vec(), Some(6)),
        ("a 1 MiB frame of junk", big, Some(6)),
        ("not JSON", frame_raw(b"{not json"), Some(6)),
        (
            "JSON of the wrong shape",
            frame(&json!({"version": "one", "op": 5})),
            Some(6),
        ),
        (
            "an unknown op",
            frame(&json!({"version": 1, "op": "format_disk"})),
            Some(6),
        ),
        (
            "protocol 99",
            frame(&json!({"version": 99, "op": "status"})),
            Some(11),
        ),
        (
            "ADD without a netns",
            frame(&add_request("hostnic-test", "c1")),
            Some(4),
        ),
        ("half a header", vec![0, 0], None),
        (
            "a header and half a body",
            {
                let mut f = frame(&json!({"version": 1, "op": "status"}));
                f.truncate(f.len() - 3);
                f
            },
            None,
        ),
    ];
    for round in 0..30 {
        for (what, bytes, code) in &hostile {
            let s = UnixStream::connect(tb.socket()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // The agent may stop reading (and close) before all is sent.
            let _ = rawclient::send(&s, bytes, &[]);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let answer = rawclient::read_answer(&s);
            if let (Some(code), 0) = (code, round) {
                let answer = answer.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
                assert_eq!(error_code(&answer), Some(*code), "{what}: {answer}");
            }
        }
        // Connect and vanish.
        drop(UnixStream::connect(tb.socket()).unwrap());
    }
    wait_for(
        "descriptors back to baseline",
        Duration::from_secs(10),
        || fd_count(pid) <= fds0 + 2,
    )
    .unwrap_or_else(|e| panic!("{e}: {} open, baseline {fds0}", fd_count(pid)));
    let rss = agent.rss_kib().unwrap();
    eprintln!("agent RSS {rss0} KiB before, {rss} KiB after 330 hostile connections");
    // A 1 MiB frame buffer is allocated and freed 30 times; the allocator
    // may keep some of it, but not a leak's worth.
    assert!(rss < rss0 + 16 * 1024, "RSS grew from {rss0} to {rss} KiB");
    let pod = Ns::new("pod").unwrap();
    let conf = tb.netconf("1.0.0", json!([]));
    let r = tb
        .hostnic()
        .call(
            "ADD",
            &conf,
            &pod_env("real", &pod.path().display().to_string()),
        )
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

/// A frame around raw body bytes.
fn frame_raw(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}
