//! The policy hooks end to end: the agent's ADDs decided by WebAssembly
//! guests, swapped live under a stream of ADDs, bad modules refused while
//! the old one keeps serving.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::sim::{Faults, SimConfig};
use hostnic_testbed::{CallEnv, Ns, guest_wasm, require_root, sha256_file, wait_for};
use serde_json::{Value, json};

const TIMERS: &str =
    "warm_min = 2\nwarm_max = 8\nreconcile_seconds = 1\ncold_add_wait_seconds = 10";

fn bed() -> CloudBed {
    CloudBed::new(SimConfig {
        nodes: 1,
        vxnets: vec![
            ("vxnet-a".into(), "10.100.0.0/24".parse().unwrap()),
            ("vxnet-b".into(), "10.101.0.0/24".parse().unwrap()),
        ],
        faults: Faults {
            attach_latency_ms: 50,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .unwrap()
}

/// ADD as kubelet drives it (retried on 11); the address it got.
fn add(bed: &CloudBed, cid: &str, netns: &str, annotations: Value) -> Result<String, String> {
    let mut conf = bed.netconf(0, "1.0.0", json!([]));
    conf["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": annotations});
    let env = CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
    };
    let start = Instant::now();
    loop {
        match bed.hostnic(0).call("ADD", &conf, &env).expect("exec") {
            Ok(r) => {
                return Ok(r["ips"][0]["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string());
            }
            Err(e) if e.code == Some(11) && start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn del(bed: &CloudBed, cid: &str, netns: &str) {
    let env = CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "",
    };
    bed.hostnic(0)
        .call("DEL", &bed.netconf(0, "1.0.0", json!([])), &env)
        .unwrap()
        .unwrap();
}

#[test]
fn guests_decide_and_swap_live_under_a_stream_of_adds() {
    if !require_root("guests_decide_and_swap_live_under_a_stream_of_adds") {
        return;
    }
    let bed = bed();
    // The original agent's default: FailRotate stays on the first vxnet.
    let agent = bed.start_agent(0, TIMERS).unwrap();
    let pod = Ns::new("pa").unwrap();
    let path = pod.path().display().to_string();
    let ip = add(&bed, "first", &path, json!({})).unwrap();
    assert!(
        ip.starts_with("10.100.0."),
        "FailRotate starts on vxnet-a: {ip}"
    );
    del(&bed, "first", &path);

    // The ip hook: an address pinned by annotation is what the pod gets.
    let ip = add(
        &bed,
        "pinned",
        &path,
        json!({"hostnic.io/ip": "10.100.0.77"}),
    )
    .unwrap();
    assert_eq!(ip, "10.100.0.77");
    del(&bed, "pinned", &path);
    // An address outside the vxnet is refused by the guest, with its reason.
    let e = add(
        &bed,
        "bad-pin",
        &path,
        json!({"hostnic.io/ip": "192.0.2.1"}),
    )
    .unwrap_err();
    assert!(e.contains("192.0.2.1"), "{e}");

    // A stream of ADD/DEL pairs from 3 threads while the vxnet policy is
    // swapped to RoundRotate by editing the config: no ADD fails.
    let stop = AtomicBool::new(false);
    let failed = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let seen_b = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for w in 0..3 {
            let (bed, stop, failed, done, seen_b) = (&bed, &stop, &failed, &done, &seen_b);
            scope.spawn(move || {
                let ns = Ns::new(&format!("w{w}")).unwrap();
                let p = ns.path().display().to_string();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let cid = format!("w{w}-{i}");
                    match add(bed, &cid, &p, json!({})) {
                        Ok(ip) => {
                            if ip.starts_with("10.101.") {
                                seen_b.store(true, Ordering::SeqCst);
                            }
                            del(bed, &cid, &p);
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            eprintln!("ADD {cid} failed: {e}");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    i += 1;
                }
            });
        }
        let result = (|| {
            wait_for("some ADDs before the swap", Duration::from_secs(30), || {
                done.load(Ordering::SeqCst) >= 6
            })?;
            let config = bed.agent_config(0, TIMERS)
                + "[hooks.vxnet]\nconfig = '{\"policy\": \"RoundRotate\"}'\n";
            std::fs::write(bed.dir.path().join("node0/agent.toml"), config)?;
            agent.hup()?;
            wait_for(
                "pods to land on vxnet-b after the swap",
                Duration::from_secs(30),
                || seen_b.load(Ordering::SeqCst),
            )?;
            let after_swap = done.load(Ordering::SeqCst);
            wait_for("more ADDs after the swap", Duration::from_secs(30), || {
                done.load(Ordering::SeqCst) >= after_swap + 6
            })
        })();
        stop.store(true, Ordering::SeqCst);
        result.unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    });
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "ADDs failed during the swap\n{}",
        agent.log_text()
    );
    assert!(
        agent.log_text().contains("policy hook reloaded"),
        "{}",
        agent.log_text()
    );
    println!(
        "ADD/DEL pairs during the swap run: {}",
        done.load(Ordering::SeqCst)
    );

    // A module whose digest differs from its pin, and one that imports what
    // the host does not offer: both refused, and the running hook serves on.
    let wrong = guest_wasm("vxnet_select");
    let evil = guest_wasm("hostile_import");
    for (module, pin, why) in [
        (&wrong, "0".repeat(64), "digest"),
        (&evil, sha256_file(&evil).unwrap(), "import"),
    ] {
        let config = bed.agent_config(0, TIMERS)
            + &format!(
                "[hooks.vxnet]\npath = {module:?}\nsha256 = \"{pin}\"\nconfig = '{{\"policy\": \"RoundRotate\"}}'\n"
            );
        std::fs::write(bed.dir.path().join("node0/agent.toml"), config).unwrap();
        let refusals = agent.log_text().matches("REFUSED").count();
        agent.hup().unwrap();
        wait_for(
            &format!("the {why} module to be refused"),
            Duration::from_secs(10),
            || agent.log_text().matches("REFUSED").count() > refusals,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
        add(&bed, &format!("after-{why}"), &path, json!({}))
            .unwrap_or_else(|e| panic!("the old hook stopped serving: {e}"));
        del(&bed, &format!("after-{why}"), &path);
    }
}
