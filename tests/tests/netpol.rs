//! NetworkPolicy in the pod's own namespace, against a real API server
//! (its watches) and the real kernel (the pods' tables): the pod's rules
//! are there before it has an interface, so a prober hammering its
//! address from the first instant is never let in; an allowed peer gets in
//! at its first try; changes are followed; a restarted agent leaves the
//! rules standing and enforces a policy changed while it was away.
//! Kubernetes' own Netpol suite runs in `conformance.rs`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hostnic_testbed::cloudbed::CloudBed;
use hostnic_testbed::controlplane::ControlPlane;
use hostnic_testbed::sim::SimConfig;
use hostnic_testbed::{Agent, CallEnv, Ns, agent_status, kubebed, require_root, wait_for};
use serde_json::{Value, json};

/// The server's pinned address (`hostnic.io/ip`) and port.
const WEB: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 50);
const PORT: u16 = 8080;

fn web() -> SocketAddr {
    SocketAddr::from((WEB, PORT))
}

fn bed() -> CloudBed {
    CloudBed::new(SimConfig {
        nodes: 1,
        vxnets: vec![("vxnet-a".into(), "10.100.0.0/24".parse().unwrap())],
        ..SimConfig::default()
    })
    .unwrap()
}

fn agent(bed: &CloudBed, cp: &ControlPlane) -> Agent {
    kubebed::agent(
        bed,
        cp,
        0,
        ("warm_min = 3\nwarm_max = 4\n", "network_policy = true\n"),
        "",
    )
    .unwrap()
}

/// A pod bound to node-0 in namespace default, with `labels` and
/// `annotations`.
fn pod(cp: &ControlPlane, name: &str, labels: Value, annotations: Value) {
    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "labels": labels, "annotations": annotations},
            "spec": {"nodeName": "node-0", "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "busybox",
                                     "ports": [{"name": "http", "containerPort": PORT}]}]},
        })
        .to_string(),
    )
    .unwrap();
}

/// ADD of pod `name` into `ns`, retried while the agent says "try again";
/// then its address is reported on the pod, as the kubelet reports it.
fn add(bed: &CloudBed, cp: &ControlPlane, name: &str, ns: &Ns) -> Ipv4Addr {
    let ip = add_interface(bed, name, ns, "eth0");
    kubebed::report_pod_ip(cp, name, ip).unwrap();
    ip
}

/// ADD of interface `ifname` of pod `name` into `ns`, retried while the
/// agent says "try again"; its address.
fn add_interface(bed: &CloudBed, name: &str, ns: &Ns, ifname: &str) -> Ipv4Addr {
    let path = ns.path().display().to_string();
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let env = CallEnv {
        container_id: &format!("cid-{name}"),
        netns: &path,
        ifname,
        args: &args,
    };
    let conf = bed.netconf(0, "1.1.0", json!([]));
    let start = Instant::now();
    let result = loop {
        match bed.hostnic(0).call("ADD", &conf, &env).unwrap() {
            Ok(r) => break r,
            Err(e) if e.code == Some(11) && start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("ADD {name}: {e}"),
        }
    };
    let cidr = result["ips"][0]["address"].as_str().unwrap();
    cidr.split('/').next().unwrap().parse().unwrap()
}

/// Policy `name` on the pods labelled app=web: ingress on PORT from the
/// pods labelled role=`from`.
fn allow_from(cp: &ControlPlane, name: &str, from: &str) {
    cp.apply(
        &json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": from}}}],
                                  "ports": [{"port": "http"}]}]},
        })
        .to_string(),
    )
    .unwrap();
}

/// Accepts every connection to `listener` until dropped, counting them.
fn serve(listener: std::net::TcpListener) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if conn.is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    accepted
}

/// `nft flush table` and `delete table` in `ns`, as a process of the pod
/// would run them, are refused and change nothing.
fn cannot_touch_the_table(ns: &Ns) {
    let before = ns
        .exec("nft", &["list", "table", "inet", "hostnic-policy"])
        .unwrap();
    for verb in ["flush", "delete"] {
        let why = ns
            .exec("nft", &[verb, "table", "inet", "hostnic-policy"])
            .expect_err("the pod changed its own rules");
        assert!(
            format!("{why:#}").contains("Operation not permitted"),
            "{verb}: {why:#}"
        );
    }
    let after = ns
        .exec("nft", &["list", "table", "inet", "hostnic-policy"])
        .unwrap();
    // Counters move with traffic; the rules are the same.
    let rules = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split(" counter packets").next().unwrap_or(l).to_string())
            .collect()
    };
    assert_eq!(rules(&before), rules(&after));
}

fn connects(from: &Ns) -> bool {
    from.connects(web(), Duration::from_millis(500))
}

#[test]
fn a_pod_behind_a_policy_is_never_reached_by_what_it_forbids_from_its_first_instant() {
    if !require_root(
        "a_pod_behind_a_policy_is_never_reached_by_what_it_forbids_from_its_first_instant",
    ) {
        return;
    }
    let bed = bed();
    let cp = kubebed::control_plane(&bed, None).unwrap();
    let mut a0 = agent(&bed, &cp);
    allow_from(&cp, "web-from-clients", "client");
    pod(&cp, "ok", json!({"role": "client"}), json!({}));
    pod(&cp, "no", json!({"role": "other"}), json!({}));
    pod(
        &cp,
        "web",
        json!({"app": "web"}),
        json!({"hostnic.io/ip": WEB.to_string()}),
    );
    let (ok, no, web_ns) = (
        Ns::new("np-ok").unwrap(),
        Arc::new(Ns::new("np-no").unwrap()),
        Ns::new("np-web").unwrap(),
    );
    add(&bed, &cp, "ok", &ok);
    add(&bed, &cp, "no", &no);

    // The server listens before it has an interface; a forbidden client
    // hammers its address from before the ADD until after it.
    let listener = web_ns
        .listen(SocketAddr::from(([0, 0, 0, 0], PORT)))
        .unwrap();
    let accepted = serve(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let no = no.clone();
        std::thread::spawn(move || {
            let (mut tries, mut got_in) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                tries += 1;
                if no.connects(web(), Duration::from_millis(50)) {
                    got_in += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            (tries, got_in)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(add(&bed, &cp, "web", &web_ns), WEB);
    // The allowed client is let in at its first try, right after the ADD.
    assert!(connects(&ok), "the allowed client was refused");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let (tries, got_in) = prober.join().unwrap();
    eprintln!("the forbidden prober tried {tries} times, got in {got_in} times");
    assert!(tries > 10, "the prober hardly ran: {tries} tries");
    assert_eq!(got_in, 0, "a forbidden client reached the pod");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "only the allowed client got in"
    );
    // `hostnic-agent status` names the policies isolating each pod.
    let status = agent_status(&bed.socket(0)).unwrap();
    let rows = status["network_policy"].as_array().unwrap();
    let of = |pod: &str| -> Value {
        rows.iter()
            .find(|r| r["name"] == pod)
            .map(|r| r["policies"].clone())
            .unwrap_or_else(|| panic!("{pod} not in {rows:?}"))
    };
    assert_eq!(of("web"), json!(["default/web-from-clients"]));
    assert_eq!(of("ok"), json!([]));
    // Its counters trace both clients: the allowed one by the policy's
    // rule, the forbidden one's tries by the refusal.
    let counters = &rows.iter().find(|r| r["name"] == "web").unwrap()["counters"];
    let packets = |v: &Value| v["packets"].as_u64().unwrap_or(0);
    assert!(
        packets(&counters["rules"]["default/web-from-clients ingress 0"]) >= 1,
        "{counters}"
    );
    assert!(packets(&counters["denied"]) >= 1, "{counters}");
    let admitted = packets(&counters["rules"]["default/web-from-clients ingress 0"]);

    // The pod's own processes, with CAP_NET_ADMIN in its namespace,
    // cannot take its rules away: the agent's socket owns the table.
    cannot_touch_the_table(&web_ns);
    assert!(!connects(&no), "the pod's own attempt opened it");
    // A second interface of a pod writes the same table, through the
    // same socket (a table owned by one socket refuses any other).
    add_interface(&bed, "ok", &ok, "net1");
    cannot_touch_the_table(&ok);
    assert!(!connects(&no) && connects(&ok));

    // A peer's labels change: it is let in, then kept out again.
    for (role, let_in) in [("client", true), ("other", false)] {
        cp.kubectl(&[
            "label",
            "pod",
            "no",
            "-n",
            "default",
            &format!("role={role}"),
            "--overwrite",
        ])
        .unwrap();
        wait_for(
            &format!("the client relabelled role={role}: let in {let_in}"),
            Duration::from_secs(10),
            || connects(&no) == let_in,
        )
        .unwrap();
    }
    // A peer coming and going changed the rule's set, not the rule: its
    // counter went on, one connection up.
    let status = agent_status(&bed.socket(0)).unwrap();
    let web = status["network_policy"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .unwrap()
        .clone();
    let counters = &web["counters"];
    assert!(
        packets(&counters["rules"]["default/web-from-clients ingress 0"]) > admitted,
        "the rule's counter started again: {admitted} before, {counters} now"
    );

    // The API server goes away without a word: the rules stand.
    cp.pause("kube-apiserver", true).unwrap();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        assert!(!connects(&no), "an API server away opened the pod");
        assert!(connects(&ok), "an API server away closed the pod");
    }
    cp.pause("kube-apiserver", false).unwrap();
    let metrics = bed.sim.nodes[0]
        .ns
        .exec("curl", &["-sf", "http://127.0.0.1:9273/metrics"])
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert_eq!(value("hostnic_netpol_isolated_pods "), 1.0);
    // The rules are those of the isolated pod's table, as the kernel has
    // them (the others' chains are empty).
    let listed: Value = serde_json::from_str(
        &web_ns
            .exec("nft", &["-j", "list", "table", "inet", "hostnic-policy"])
            .unwrap(),
    )
    .unwrap();
    let in_kernel = listed["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("rule").is_some())
        .count();
    assert!(in_kernel > 0);
    assert_eq!(value("hostnic_netpol_rules "), in_kernel as f64);
    assert!(value("hostnic_netpol_set_elements ") > 0.0);
    // Each ADD wrote its pod's table (a cold one told to come back
    // writes it again).
    assert!(value("hostnic_netpol_table_writes_total{trigger=\"add\",result=\"written\"} ") >= 3.0);
    assert!(
        value("hostnic_netpol_table_writes_total{trigger=\"change\",result=\"written\"} ") >= 2.0
    );

    // The agent stops: the rules stand. A policy changed while it is away
    // is enforced within seconds of its start.
    a0.kill9();
    assert!(!connects(&no), "a stopped agent opened the pod");
    assert!(connects(&ok), "a stopped agent closed the pod");
    allow_from(&cp, "web-from-others", "other");
    let started = Instant::now();
    let _a0 = agent(&bed, &cp);
    wait_for(
        "the policy changed while away enforced",
        Duration::from_secs(15),
        || connects(&no),
    )
    .unwrap();
    eprintln!(
        "a policy changed while the agent was away: enforced {:?} after its start",
        started.elapsed()
    );
    // The new agent adopted the table its predecessor left.
    cannot_touch_the_table(&web_ns);
    for name in ["web-from-clients", "web-from-others"] {
        cp.kubectl(&["delete", "networkpolicy", name, "-n", "default"])
            .unwrap();
    }
    wait_for(
        "the pod's chains empty with its last policy gone",
        Duration::from_secs(10),
        || {
            web_ns
                .exec(
                    "nft",
                    &["list", "chain", "inet", "hostnic-policy", "ingress"],
                )
                .is_ok_and(|t| !t.contains("reject") && !t.contains("accept comment"))
        },
    )
    .unwrap();
    assert!(connects(&no) && connects(&ok));
}
