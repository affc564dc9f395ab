//! The QingCloud client against the simulator: every action the product
//! uses and every error class, over real HTTP with real signatures, with
//! attached NICs appearing as real links in the node's namespace.

use std::time::{Duration, SystemTime};

use hostnic_iaas::{
    Client, Credentials, Error, JobOutcome, NicFilter, Options, ResourceTagPair, TagFilter,
};
use hostnic_testbed::require_root;
use hostnic_testbed::sim::faults::ErrorRule;
use hostnic_testbed::sim::{Faults, Sim, SimConfig};

fn fast_options() -> Options {
    let mut o = Options::default();
    o.backoff.base = Duration::from_millis(5);
    o.backoff.max = Duration::from_millis(20);
    o.job_poll_interval = Duration::from_millis(20);
    o.job_timeout = Duration::from_secs(10);
    o.quota_cooldown = Duration::from_secs(60);
    o.budget = hostnic_iaas::Budget::UNLIMITED;
    o
}

fn client(sim: &Sim, opts: Options) -> Client {
    Client::new(
        Credentials::from_yaml(&sim.local_credentials_yaml()).unwrap(),
        opts,
    )
    .unwrap()
}

/// Resolves once a link with `mac` exists in the node namespace.
async fn link_appears(node: &hostnic_testbed::Ns, mac: &str) {
    loop {
        if node
            .ip(&["-o", "link", "show"])
            .is_ok_and(|o| o.contains(mac))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn every_action_round_trips_through_the_simulator() {
    if !require_root("every_action_round_trips_through_the_simulator") {
        return;
    }
    let sim = Sim::start(SimConfig {
        nodes: 1,
        ..SimConfig::default()
    })
    .unwrap();
    let node = &sim.nodes[0];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&sim, fast_options());
        let vx = c.describe_vxnets(&["vxnet-pods"]).await.unwrap();
        assert_eq!(vx.len(), 1);
        let router = vx[0].router.as_ref().expect("router");
        assert_eq!(
            router.ip_network.map(|n| n.to_string()).as_deref(),
            Some("10.100.0.0/24")
        );
        assert_eq!(
            router.manager_ip.map(|g| g.to_string()).as_deref(),
            Some("10.100.0.1")
        );

        let created = c
            .create_nics("vxnet-pods", "hostnic-test", 2, &[])
            .await
            .unwrap();
        assert_eq!(created.len(), 2);
        let macs: Vec<String> = created.iter().map(|n| n.nic_id.clone()).collect();
        let fixed = c
            .create_nics(
                "vxnet-pods",
                "hostnic-test",
                1,
                &["10.100.0.99".parse().unwrap()],
            )
            .await
            .unwrap();
        assert_eq!(
            fixed[0].private_ip.map(|i| i.to_string()).as_deref(),
            Some("10.100.0.99")
        );

        // Attach: the link appearing on the node ends the wait early.
        let job = c.attach_nics(&macs, &node.instance).await.unwrap();
        let outcome = c
            .wait_job(&job, link_appears(&node.ns, &macs[1]))
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            JobOutcome::Early | JobOutcome::Successful
        ));
        for mac in &macs {
            link_appears(&node.ns, mac).await;
        }
        // Shortly after, the cloud agrees.
        assert_eq!(
            c.wait_job(&job, std::future::pending()).await.unwrap(),
            JobOutcome::Successful
        );
        let inst = c
            .describe_instances(&[node.instance.as_str()])
            .await
            .unwrap();
        let attached: Vec<&str> = inst[0].vxnets.iter().map(|v| v.nic_id.as_str()).collect();
        assert!(
            macs.iter().all(|m| attached.contains(&m.as_str())),
            "{attached:?}"
        );

        let mine = c
            .describe_nics(&NicFilter {
                instances: vec![node.instance.clone()],
                ..NicFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(mine.len(), 3, "primary + 2: {mine:?}");

        let tag = c.create_tag("hostnic-cluster-test").await.unwrap();
        let pairs: Vec<ResourceTagPair> = macs
            .iter()
            .map(|m| ResourceTagPair {
                tag_id: tag.clone(),
                resource_type: "nic".into(),
                resource_id: m.clone(),
            })
            .collect();
        c.attach_tags(&pairs).await.unwrap();
        let tags = c
            .describe_tags(&TagFilter {
                search_word: Some("hostnic-cluster".into()),
                ..TagFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0].resource_tag_pairs.len(), 2);

        // Detach: the links go; delete: the NICs go; deleting again is done.
        for job in c.detach_nics(&macs).await.unwrap() {
            assert_eq!(
                c.wait_job(&job, std::future::pending()).await.unwrap(),
                JobOutcome::Successful
            );
        }
        let links = node.ns.ip(&["-o", "link", "show"]).unwrap();
        assert!(macs.iter().all(|m| !links.contains(m.as_str())), "{links}");
        c.delete_nics(&macs).await.unwrap();
        c.delete_nics(&macs).await.unwrap();
        c.delete_nics(&[fixed[0].nic_id.as_str()]).await.unwrap();
        let left = c
            .describe_nics(&NicFilter {
                vxnets: vec!["vxnet-pods".into()],
                ..NicFilter::default()
            })
            .await
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
        assert!(c.calls()["DescribeJobs"] >= 1);
    });
}

#[test]
fn every_error_class_is_answered_and_handled() {
    if !require_root("every_error_class_is_answered_and_handled") {
        return;
    }
    let sim = Sim::start(SimConfig {
        nodes: 1,
        ..SimConfig::default()
    })
    .unwrap();
    let instance = sim.nodes[0].instance.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 1200: a wrong secret.
        let yaml = sim
            .local_credentials_yaml()
            .replace(&sim.config().secret, "wrong-secret");
        let bad = Client::new(Credentials::from_yaml(&yaml).unwrap(), fast_options()).unwrap();
        let e = bad.describe_vxnets(&["vxnet-pods"]).await.unwrap_err();
        assert!(matches!(e, Error::Auth { .. }), "{e}");
        assert_eq!(bad.total_calls(), 1, "no retry on 1200");
        assert!(!format!("{e} {e:?}").contains("wrong-secret"));

        // 1300: a clock two minutes slow, re-signed once, then clock skew.
        let mut slow = fast_options();
        slow.clock = hostnic_iaas::Clock::from_fn(|| SystemTime::now() - Duration::from_secs(120));
        let e = client(&sim, slow)
            .describe_vxnets(&["vxnet-pods"])
            .await
            .unwrap_err();
        assert!(matches!(e, Error::ClockSkew { .. }), "{e}");

        let c = client(&sim, fast_options());
        // 1100: more than 5 NICs per attach; 1400: deleting an attached NIC.
        let six: Vec<String> = c
            .create_nics("vxnet-pods", "t", 6, &[])
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.nic_id)
            .collect();
        let e = c.attach_nics(&six, &instance).await.unwrap_err();
        assert!(matches!(e, Error::BadRequest { .. }), "{e}");
        let job = c.attach_nics(&six[..1], &instance).await.unwrap();
        let e = c.delete_nics(&six[..1]).await.unwrap_err();
        assert!(matches!(e, Error::Denied { .. }), "{e}");
        c.wait_job(&job, std::future::pending()).await.unwrap();

        // 5100 twice, then success: retried.
        sim.set_faults(Faults {
            errors: vec![ErrorRule {
                action: Some("DescribeNics".into()),
                code: 5100,
                rate: 1.0,
                count: Some(2),
            }],
            ..Faults::default()
        });
        let before = c.calls().get("DescribeNics").copied().unwrap_or(0);
        c.describe_nics(&NicFilter::default()).await.unwrap();
        assert_eq!(c.calls()["DescribeNics"] - before, 3);

        // 2500: quota, and the action cools down without calling again.
        sim.set_faults(Faults {
            errors: vec![ErrorRule {
                action: Some("CreateNics".into()),
                code: 2500,
                rate: 1.0,
                count: Some(1),
            }],
            ..Faults::default()
        });
        let e = c.create_nics("vxnet-pods", "t", 1, &[]).await.unwrap_err();
        assert!(
            e.is_quota() && e.to_string().to_lowercase().contains("quota"),
            "{e}"
        );
        let calls = c.calls()["CreateNics"];
        assert!(
            c.create_nics("vxnet-pods", "t", 1, &[])
                .await
                .unwrap_err()
                .is_quota()
        );
        assert_eq!(c.calls()["CreateNics"], calls, "cool-down: no request sent");

        // A failed job.
        sim.set_faults(Faults {
            job_fail_rate: 1.0,
            ..Faults::default()
        });
        let job = c.attach_nics(&six[1..2], &instance).await.unwrap();
        let e = c.wait_job(&job, std::future::pending()).await.unwrap_err();
        assert!(matches!(e, Error::JobFailed { .. }), "{e}");
        let nic = c
            .describe_nics(&NicFilter {
                nics: vec![six[1].clone()],
                ..NicFilter::default()
            })
            .await
            .unwrap();
        assert!(
            nic[0].instance_id.is_empty(),
            "a failed attach leaves the NIC available"
        );

        // Throttling answers 5100 past the budget.
        sim.set_faults(Faults {
            throttle_per_second: Some(1),
            ..Faults::default()
        });
        let mut no_retry = fast_options();
        no_retry.backoff.base = Duration::from_millis(1);
        let impatient = Client::new(
            Credentials::from_yaml(
                &sim.local_credentials_yaml()
                    .replace("connection_retries: 3", "connection_retries: 0"),
            )
            .unwrap(),
            no_retry,
        )
        .unwrap();
        let results: Vec<_> = three_describes(&impatient).await;
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(e) if e.ret_code() == Some(5100))),
            "{results:?}"
        );
    });
}

/// Three DescribeVxNets in a row.
async fn three_describes(c: &Client) -> Vec<Result<Vec<hostnic_iaas::VxNet>, Error>> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(c.describe_vxnets(&["vxnet-pods"]).await);
    }
    out
}

/// The name of the link with `mac` in `ns`.
fn link_with(ns: &hostnic_testbed::Ns, mac: &str) -> String {
    let out = ns.ip(&["-o", "link", "show"]).unwrap();
    let line = out
        .lines()
        .find(|l| l.contains(mac))
        .expect("the NIC's link");
    let name = line.split(':').nth(1).unwrap().trim();
    name.split('@').next().unwrap().to_string()
}

/// The simulated SDN is as strict as a cloud's: it delivers between
/// attached NICs (ARP broadcast, unicast to their MACs), but a NIC's port
/// neither learns nor floods, and drops frames not sent from the NIC's own
/// MAC — what shared-NIC mode must live with.
#[test]
fn the_sdn_carries_only_frames_from_and_to_attached_nics() {
    if !require_root("the_sdn_carries_only_frames_from_and_to_attached_nics") {
        return;
    }
    let sim = Sim::start(SimConfig {
        nodes: 2,
        ..SimConfig::default()
    })
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&sim, fast_options());
    let mut nics = Vec::new();
    for node in &sim.nodes {
        let nic = rt
            .block_on(c.create_nics("vxnet-pods", "sdn-test", 1, &[]))
            .unwrap()
            .remove(0);
        let job = rt
            .block_on(c.attach_nics(std::slice::from_ref(&nic.nic_id), &node.instance))
            .unwrap();
        rt.block_on(c.wait_job(&job, std::future::pending()))
            .unwrap();
        let name = link_with(&node.ns, &nic.nic_id);
        let ip = nic.private_ip.unwrap().to_string();
        node.ns
            .ip_batch(&[
                format!("addr add {ip}/24 dev {name}"),
                format!("link set {name} up"),
            ])
            .unwrap();
        nics.push((nic.nic_id, name, ip));
    }
    let (a, b) = (&sim.nodes[0].ns, &nics[1].2);
    assert!(a.ping(b), "attached NICs reach each other");
    assert!(a.ping("10.100.0.1"), "and the vxnet's gateway");

    // A frame from another MAC on the NIC's port is dropped.
    let (mac, name) = (&nics[0].0, &nics[0].1);
    a.ip(&["link", "set", name, "address", "02:aa:bb:cc:dd:ee"])
        .unwrap();
    a.ip(&["neigh", "flush", "dev", name]).unwrap();
    assert!(!a.ping(b), "a spoofed source MAC got through");
    assert!(!a.ping("10.100.0.1"), "a spoofed source MAC got through");
    a.ip(&["link", "set", name, "address", mac]).unwrap();
    assert!(a.ping(b), "the NIC's own MAC works again");

    // No learning, no flooding of unknown unicast, locked.
    let port = format!("s{}", mac.replace(':', ""));
    let flags = sim
        .sdn_ns()
        .exec("bridge", &["-d", "link", "show", "dev", &port])
        .unwrap();
    for want in ["learning off", "flood off", "locked on"] {
        assert!(flags.contains(want), "{want}: {flags}");
    }
}

/// What a NIC that follows its pod needs of the cloud, modelled as the
/// cloud does it: a NIC attached to one VM refuses a second attach (the
/// one lock two racing nodes meet), a detach and an attach move it to
/// another VM in their jobs' time, and it keeps its address, its MAC and
/// its tags through the move.
#[test]
fn a_nic_moves_between_vms_keeping_address_mac_and_tags() {
    if !require_root("a_nic_moves_between_vms_keeping_address_mac_and_tags") {
        return;
    }
    let faults = Faults {
        attach_latency_ms: 300,
        detach_latency_ms: 200,
        ..Faults::default()
    };
    let sim = Sim::start(SimConfig {
        nodes: 2,
        faults,
        ..SimConfig::default()
    })
    .unwrap();
    let (a, b) = (&sim.nodes[0], &sim.nodes[1]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&sim, fast_options());
        let nic = c
            .create_nics("vxnet-pods", "hostnic-test-sticky", 1, &[])
            .await
            .unwrap()
            .remove(0);
        let id = [nic.nic_id.clone()];
        let tag = c.create_tag("hostnic-test-sticky-db-0").await.unwrap();
        c.attach_tags(&[ResourceTagPair {
            tag_id: tag.clone(),
            resource_type: "nic".into(),
            resource_id: nic.nic_id.clone(),
        }])
        .await
        .unwrap();
        let job = c.attach_nics(&id, &a.instance).await.unwrap();
        c.wait_job(&job, std::future::pending()).await.unwrap();
        link_appears(&a.ns, &nic.nic_id).await;

        // Attached to A: B's attach is refused, and nothing moves.
        let e = c.attach_nics(&id, &b.instance).await.unwrap_err();
        assert!(e.to_string().contains("1400"), "{e}");
        assert!(!b.ns.ip(&["-o", "link"]).unwrap().contains(&nic.nic_id));

        // Detach from A, attach to B: in the jobs' time.
        let t = std::time::Instant::now();
        for job in c.detach_nics(&id).await.unwrap() {
            c.wait_job(&job, std::future::pending()).await.unwrap();
        }
        let job = c.attach_nics(&id, &b.instance).await.unwrap();
        c.wait_job(&job, std::future::pending()).await.unwrap();
        let moved = t.elapsed();
        assert!(moved >= Duration::from_millis(500), "{moved:?}");
        link_appears(&b.ns, &nic.nic_id).await;
        assert!(!a.ns.ip(&["-o", "link"]).unwrap().contains(&nic.nic_id));

        let now = c
            .describe_nics(&NicFilter {
                nics: id.to_vec(),
                ..NicFilter::default()
            })
            .await
            .unwrap()
            .remove(0);
        assert_eq!(now.instance_id, b.instance);
        assert_eq!(now.private_ip, nic.private_ip);
        assert!(
            now.tags.iter().any(|t| t.tag_id == tag),
            "the tag did not survive the move: {now:?}"
        );
    });
}

/// `hostnic-iaas-sim --help` (and `-h`) prints its usage and exits 0, with
/// or without root; a bad argument is a one-line error and exit 2, never a
/// backtrace.
#[test]
fn the_standalone_simulator_answers_help_and_refuses_bad_arguments() {
    let sim = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hostnic-iaas-sim"))
            .args(args)
            // A backtrace would show even where the caller asks for them.
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for help in ["--help", "-h"] {
        let (code, out, err) = sim(&[help]);
        assert_eq!(code, Some(0), "{help}: {out}{err}");
        for needle in [
            "Usage: hostnic-iaas-sim [NODES] [ATTACH_LATENCY_MS]",
            "root",
        ] {
            assert!(out.contains(needle), "{help} should say {needle:?}:\n{out}");
        }
        assert!(err.is_empty(), "{help}: {err}");
    }
    for (args, needle) in [
        (&["--bogus"][..], "--bogus"),
        (&["two"][..], "two"),
        (&["0"][..], "0"),
        (&["2", "fast"][..], "fast"),
        (&["2", "200", "extra"][..], "extra"),
    ] {
        let (code, out, err) = sim(args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(
            err.starts_with("error: ") && err.contains(needle) && err.contains("--help"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("backtrace"), "{args:?}: {err}");
    }
}
