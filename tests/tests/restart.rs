//! kill -9 the agent in the middle of a burst of ADDs, restart it, and show
//! that every NIC is either with a pod that was told "success" or back in
//! the pool — never lost, never in two places, never half-wired. And a
//! graceful restart, as a DaemonSet rollout does it, costs the ADDs that
//! arrive meanwhile nothing: they wait for the new agent.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use hostnic_proto::rpc::{self, Op, PROTOCOL_VERSION, Reply, Request, Response};
use hostnic_testbed::{CallEnv, Ns, Testbed, ok, pod_env, require_root, wait_for};
use serde_json::{Value, json};

const PODS: usize = 10;
const ROUNDS: usize = 6;

#[test]
fn kill_9_mid_burst_loses_and_duplicates_nothing() {
    if !require_root("kill_9_mid_burst_loses_and_duplicates_nothing") {
        return;
    }
    let tb = Testbed::new(PODS).unwrap();
    let mut conf = tb.netconf("1.0.0", json!([]));
    // A runtime that gives up at once: the agent comes back only once every
    // call of the burst returned, so a call waiting for it would wait in
    // vain (the wait has its own test below).
    conf["connectTimeoutSeconds"] = json!(0);
    let mut agent = tb.start_agent().unwrap();
    let mut cut_short = 0;
    for round in 0..ROUNDS {
        let pods: Vec<Ns> = (0..PODS)
            .map(|i| Ns::new(&format!("p{i}")).unwrap())
            .collect();
        let paths: Vec<String> = pods
            .iter()
            .map(|p| p.path().display().to_string())
            .collect();
        let cid = |i: usize| format!("r{round}c{i}");

        // The burst: every pod's ADD at once; the agent dies as soon as the
        // first one succeeds, with the others in flight.
        let start = Arc::new(Barrier::new(PODS + 1));
        let (done_tx, done_rx) = mpsc::channel();
        let handles: Vec<_> = (0..PODS)
            .map(|i| {
                let (cni, conf, path, id, start, done) = (
                    tb.hostnic(),
                    conf.clone(),
                    paths[i].clone(),
                    cid(i),
                    start.clone(),
                    done_tx.clone(),
                );
                std::thread::spawn(move || {
                    let env = CallEnv {
                        container_id: &id,
                        netns: &path,
                        ifname: "eth0",
                        args: "",
                    };
                    start.wait();
                    let r = cni.call("ADD", &conf, &env).unwrap();
                    let _ = done.send(());
                    r
                })
            })
            .collect();
        start.wait();
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no ADD finished");
        agent.kill9();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let failed: Vec<usize> = (0..PODS).filter(|&i| results[i].is_err()).collect();
        cut_short += failed.len();
        for &i in &failed {
            let e = results[i].as_ref().unwrap_err();
            assert!(
                matches!(e.code, Some(11 | 5)),
                "a cut ADD is 'try again later', got {e}"
            );
        }

        agent = tb.start_agent().unwrap();
        if let Some(line) = agent.log_text().lines().rfind(|l| l.contains("reconciled")) {
            println!(
                "round {round}: {} of {PODS} ADDs cut; {}",
                failed.len(),
                line.trim()
            );
        }
        // A runtime follows a failed ADD with DEL.
        for &i in &failed {
            let env = CallEnv {
                container_id: &cid(i),
                netns: &paths[i],
                ifname: "eth0",
                args: "",
            };
            tb.hostnic()
                .call("DEL", &conf, &env)
                .unwrap()
                .unwrap_or_else(|e| panic!("DEL after a cut ADD: {e}"));
        }

        // Where is every NIC? In exactly one place, and only with a pod that
        // was told success, with the address it was told.
        tb.settle();
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for mac in tb.parked_macs().unwrap() {
            owner.insert(mac, "pool".into());
        }
        for (i, pod) in pods.iter().enumerate() {
            let link = pod.ip(&["-o", "link", "show"]).unwrap();
            let nic = tb.nics.iter().find(|n| link.contains(&n.mac));
            match (&results[i], nic) {
                (Ok(r), Some(nic)) => {
                    assert_eq!(r["interfaces"][0]["mac"], Value::String(nic.mac.clone()));
                    let addr = pod.ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap();
                    assert!(
                        addr.contains(&format!("{}/24", nic.ip)),
                        "pod {i} was told {} but has {addr}",
                        nic.ip
                    );
                    assert!(
                        owner.insert(nic.mac.clone(), format!("pod {i}")).is_none(),
                        "{} in two places",
                        nic.mac
                    );
                }
                (Ok(r), None) => {
                    panic!("round {round}: pod {i} was told success ({r}) but has no NIC")
                }
                (Err(e), Some(nic)) => {
                    panic!("round {round}: pod {i} failed ({e}) yet holds {}", nic.mac)
                }
                (Err(_), None) => {}
            }
        }
        assert_eq!(
            owner.len(),
            PODS,
            "round {round}: some NIC is nowhere: {owner:?}\n{}",
            agent.log_text()
        );

        // Clean up the round through the restarted agent.
        for (i, path) in paths.iter().enumerate() {
            let env = CallEnv {
                container_id: &cid(i),
                netns: path,
                ifname: "eth0",
                args: "",
            };
            tb.hostnic().call("DEL", &conf, &env).unwrap().unwrap();
        }
        tb.settle();
        assert_eq!(tb.parked_macs().unwrap().len(), PODS);
        if cut_short > 0 && round >= 1 {
            break;
        }
    }
    println!("ADDs cut short by kill -9: {cut_short}");
    assert!(
        cut_short > 0,
        "the kill never landed mid-burst; the test proved nothing"
    );
}

/// Issue 22: the agent stopped as a DaemonSet rollout stops it (SIGTERM)
/// while pods are being added; the ADDs that arrive while no agent listens
/// wait for the new one and succeed — no "try again later", no sandbox
/// retry. The default wait is used, as deployed.
#[test]
fn adds_during_a_graceful_restart_wait_for_the_new_agent_and_succeed() {
    if !require_root("adds_during_a_graceful_restart_wait_for_the_new_agent_and_succeed") {
        return;
    }
    const ADDS: usize = 4;
    let tb = Testbed::new(ADDS).unwrap();
    let conf = tb.netconf("1.0.0", json!([]));
    let mut old = tb.start_agent().unwrap();
    old.stop().unwrap();
    let pods: Vec<Ns> = (0..ADDS)
        .map(|i| Ns::new(&format!("g{i}")).unwrap())
        .collect();
    let adds: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (cni, conf, path) = (tb.hostnic(), conf.clone(), pod.path().display().to_string());
            std::thread::spawn(move || {
                let started = Instant::now();
                let r = cni.call("ADD", &conf, &pod_env(&format!("g{i}"), &path));
                (r, started.elapsed())
            })
        })
        .collect();
    // The replacement comes a while later, as a new pod does.
    std::thread::sleep(Duration::from_millis(1500));
    let exec = Instant::now();
    let agent = tb.start_agent().unwrap();
    eprintln!(
        "restart: the new agent served {:?} after its exec",
        exec.elapsed()
    );
    for (i, h) in adds.into_iter().enumerate() {
        let (r, took) = h.join().unwrap();
        let r = ok(r);
        assert!(
            took >= Duration::from_millis(1000),
            "pod {i} was answered in {took:?}, while no agent listened"
        );
        let addr = pods[i].ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap();
        let ip = r["ips"][0]["address"].as_str().unwrap();
        assert!(addr.contains(ip), "pod {i} was told {ip} but has {addr}");
    }
    assert!(tb.parked_macs().unwrap().is_empty(), "{}", agent.log_text());
}

/// A graceful stop (SIGTERM) stops listening at once but answers every
/// request it accepted, also one still arriving when the signal came. The
/// executable sends a request again only when nobody read it: an ADD the
/// stopping agent read and then dropped unanswered failed its sandbox in
/// a rolling restart (issue 22).
#[test]
fn a_graceful_stop_answers_every_request_it_accepted() {
    if !require_root("a_graceful_stop_answers_every_request_it_accepted") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let mut agent = tb.start_agent().unwrap();
    let frame = rpc::encode_frame(&Request {
        version: PROTOCOL_VERSION,
        op: Op::Status,
    })
    .unwrap();
    let mut slow = UnixStream::connect(tb.socket()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(&frame[..2]).unwrap();
    // Accepted, its request half read, when the stop comes.
    std::thread::sleep(Duration::from_millis(200));
    let pid = nix::unistd::Pid::from_raw(agent.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for(
        "the stopping agent to refuse new connections",
        Duration::from_secs(5),
        || UnixStream::connect(tb.socket()).is_err(),
    )
    .unwrap();
    slow.write_all(&frame[2..]).unwrap_or_else(|e| {
        panic!(
            "the stopping agent closed a connection it had accepted: {e}\n{}",
            agent.log_text()
        )
    });
    let answer: Response = rpc::read_frame(&mut slow).unwrap_or_else(|e| {
        panic!(
            "the stopping agent did not answer a request it had accepted: {e}\n{}",
            agent.log_text()
        )
    });
    assert!(
        matches!(answer.result, Ok(Reply::Status { .. })),
        "{:?}",
        answer.result
    );
    agent.stop().unwrap();
}
