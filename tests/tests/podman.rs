//! podman as a real CNI client: a container on a `hostnic` network chained
//! with `portmap` as the shipped conflist chains it, run by podman's CNI
//! backend from inside the testbed's node namespace, reached through its
//! hostPort.

use std::path::Path;
use std::time::{Duration, Instant};

use hostnic_testbed::images::{LogsOnPanic, Podman, allocation_records};
use hostnic_testbed::{GATEWAY, NODE_IP, Testbed, require_root, wait_for};
use serde_json::{Value, json};

const NETWORK: &str = "hostnic-test";
const IMAGE: &str = "localhost/hostnic-busybox:test";
const HOST_PORT: u16 = 8080;
/// What the container's httpd serves, to tell its answer from anything else.
const MARKER: &str = "served-by-the-hostnic-pod";

#[test]
fn podman_container_on_hostnic_with_portmap() {
    if !require_root("podman_container_on_hostnic_with_portmap") {
        return;
    }
    let started = Instant::now();
    let tb = Testbed::new(1).unwrap();
    let nic = tb.nics[0].clone();
    let agent = tb.start_agent().unwrap();
    let _logs = LogsOnPanic(vec![agent.log.clone()]);
    // portmap DNATs the node's own connection to the pod; the pod answers
    // through its gateway on the wire, which must route it to the node.
    tb.wire
        .exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();

    // Declared after the testbed and the agent, so dropped before them: its
    // clean-up still has the agent to DEL with and the namespace to run in.
    let podman = Podman::new(&tb.node, tb.dir.path().join("podman")).unwrap();
    let mut hostnic = tb.netconf("1.0.0", json!([]));
    for k in ["cniVersion", "name"] {
        hostnic.as_object_mut().unwrap().remove(k);
    }
    // As deploy/configmap.yaml declares it: hostnic honours the bandwidth
    // capability itself, and the reference bandwidth plugin is not
    // chained (it needs a host-side veth peer, which a pod's own NIC does
    // not have).
    hostnic["capabilities"] = json!({ "bandwidth": true });
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            hostnic,
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    std::fs::write(
        podman.network_dir().join(format!("{NETWORK}.conflist")),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();
    podman.import_busybox(IMAGE, &[]).unwrap();

    let serve =
        format!("echo {MARKER} > /tmp/index.html && exec /bin/busybox httpd -f -p 80 -h /tmp");
    let publish = format!("{HOST_PORT}:80");
    let id = podman
        .run(&[
            "run",
            "--detach",
            "--name",
            "web",
            "--cgroup-parent",
            podman.cgroup_parent(),
            "--network",
            NETWORK,
            "--publish",
            &publish,
            IMAGE,
            "/bin/busybox",
            "sh",
            "-c",
            &serve,
        ])
        .unwrap()
        .trim()
        .to_string();

    // podman parsed the result the last plugin (portmap) printed: our
    // address and MAC made it through the whole chain.
    let inspect: Value = serde_json::from_str(
        &podman
            .run(&["inspect", "--format", "{{json .NetworkSettings}}", &id])
            .unwrap(),
    )
    .unwrap();
    let net = &inspect["Networks"][NETWORK];
    assert_eq!(net["IPAddress"], nic.ip.as_str(), "{inspect}");
    assert_eq!(net["Gateway"], GATEWAY, "{inspect}");
    assert_eq!(net["MacAddress"], nic.mac.as_str(), "{inspect}");
    let sandbox = inspect["SandboxKey"].as_str().unwrap().to_string();
    assert!(Path::new(&sandbox).exists(), "no pod netns at {sandbox}");

    let state = podman
        .run(&["inspect", "--format", "{{.State.Status}}", &id])
        .unwrap();
    assert_eq!(
        state.trim(),
        "running",
        "the container stopped; its output: {:?}",
        podman.run(&["logs", &id])
    );

    // The container itself sees the NIC, its address and its gateway.
    let in_container = |args: &[&str]| {
        let mut cmd = vec!["exec", &id, "/bin/busybox", "ip"];
        cmd.extend(args);
        podman.run(&cmd).unwrap()
    };
    let addr = in_container(&["-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("inet {}/24", nic.ip)), "{addr}");
    let link = in_container(&["-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains(&nic.mac), "{link}");
    let routes = in_container(&["route"]);
    assert!(
        routes.contains(&format!("default via {GATEWAY} dev eth0")),
        "{routes}"
    );
    assert!(
        !tb.parked_macs().unwrap().contains(&nic.mac),
        "the NIC is in the container and parked at once"
    );

    // The hostPort: the node's address, DNATed by portmap to the pod.
    let url = format!("http://{NODE_IP}:{HOST_PORT}/index.html");
    let mut body = String::new();
    let reached = wait_for("the hostPort to answer", Duration::from_secs(10), || {
        body = tb
            .node
            .exec("curl", &["--silent", "--max-time", "2", &url])
            .unwrap_or_default();
        body.trim() == MARKER
    });
    if let Err(e) = reached {
        let nat = tb.node.exec("iptables-save", &["-t", "nat"]);
        panic!("{e}: last answer {body:?}\nnode nat table: {nat:?}");
    }
    let nat = tb.node.exec("iptables-save", &["-t", "nat"]).unwrap();
    assert!(
        nat.contains(&id),
        "portmap's rules name the container: {nat}"
    );

    // Removal: the chain's DEL returns the NIC to the pool and podman
    // removes the pod's netns; portmap's rules go too.
    podman.run(&["rm", "--force", "--time", "0", &id]).unwrap();
    tb.settle();
    assert!(
        tb.parked_macs().unwrap().contains(&nic.mac),
        "NIC {} is not back in the pool",
        nic.mac
    );
    assert!(!Path::new(&sandbox).exists(), "pod netns {sandbox} is left");
    let records = allocation_records(&tb).unwrap();
    assert!(records.is_empty(), "allocation records left: {records:#?}");
    let nat = tb.node.exec("iptables-save", &["-t", "nat"]).unwrap();
    assert!(!nat.contains(&id), "portmap's rules are left: {nat}");
    eprintln!("podman test took {:?}", started.elapsed());
}
