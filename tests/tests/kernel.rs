//! The pod path on a real kernel: the real agent in a node namespace, the
//! real `hostnic` executable, veth NICs on a wire with a gateway, pods as
//! namespaces.

use hostnic_testbed::{CallEnv, GATEWAY, Ns, Testbed, parked_name, require_root};
use serde_json::{Value, json};

const SERVICE_ROUTES: &str = r#"[{"dst": "10.96.0.0/12", "gw": "0.0.0.0"}]"#;

fn env<'a>(cid: &'a str, netns: &'a str) -> CallEnv<'a> {
    CallEnv {
        container_id: cid,
        netns,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u1",
    }
}

fn ok(r: anyhow::Result<Result<Value, hostnic_testbed::PluginError>>) -> Value {
    match r.expect("exec") {
        Ok(v) => v,
        Err(e) => panic!("plugin failed: {e}"),
    }
}

fn err_code(r: anyhow::Result<Result<Value, hostnic_testbed::PluginError>>) -> u64 {
    match r.expect("exec") {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e.code.unwrap_or_else(|| panic!("no CNI error JSON: {e}")),
    }
}

#[test]
fn add_check_del_gc_on_a_real_kernel() {
    if !require_root("add_check_del_gc_on_a_real_kernel") {
        return;
    }
    let tb = Testbed::new(3).unwrap();
    let agent = tb.start_agent().unwrap();
    let default_before = tb.node_default_route().unwrap();
    let cni = tb.hostnic();
    let conf = tb.netconf("1.0.0", serde_json::from_str(SERVICE_ROUTES).unwrap());
    let p1 = Ns::new("pod1").unwrap();
    let p2 = Ns::new("pod2").unwrap();
    let p1path = p1.path().display().to_string();
    let p2path = p2.path().display().to_string();

    let r1 = ok(cni.call("ADD", &conf, &env("c1", &p1path)));
    assert_eq!(r1["cniVersion"], "1.0.0");
    assert_eq!(r1["interfaces"][0]["name"], "eth0");
    assert_eq!(r1["interfaces"][0]["mac"], tb.nics[0].mac);
    assert_eq!(r1["interfaces"][0]["sandbox"], p1path);
    assert_eq!(r1["ips"][0]["address"], format!("{}/24", tb.nics[0].ip));
    assert_eq!(r1["ips"][0]["gateway"], GATEWAY);

    // The kernel agrees with the result.
    let addr = p1.ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(addr.contains(&format!("{}/24", tb.nics[0].ip)), "{addr}");
    let link = p1.ip(&["-o", "link", "show", "dev", "eth0"]).unwrap();
    assert!(
        link.contains(&tb.nics[0].mac) && link.contains("UP"),
        "{link}"
    );
    let routes = p1.ip(&["route"]).unwrap();
    assert!(
        routes.contains(&format!("default via {GATEWAY} dev eth0")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("10.96.0.0/12 via {GATEWAY} dev eth0")),
        "{routes}"
    );
    assert!(p1.ping(GATEWAY), "pod1 cannot ping its gateway");

    let r2 = ok(cni.call("ADD", &conf, &env("c2", &p2path)));
    let ip2 = tb.nics[1].ip.clone();
    assert_eq!(r2["ips"][0]["address"], format!("{ip2}/24"));
    assert!(p1.ping(&ip2), "pod1 cannot ping pod2 over the wire");

    // CHECK passes, then fails once the pod's interface changed.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r1.clone();
    ok(cni.call("CHECK", &check_conf, &env("c1", &p1path)));
    p1.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    assert_eq!(
        err_code(cni.call("CHECK", &check_conf, &env("c1", &p1path))),
        102
    );

    // DEL returns the NIC to the node, parked; DEL again and DEL without a
    // netns (containerd's second DEL) are fine.
    ok(cni.call("DEL", &conf, &env("c1", &p1path)));
    tb.settle();
    assert!(tb.parked_macs().unwrap().contains(&tb.nics[0].mac));
    assert!(
        p1.ip(&["link", "show", "dev", "eth0"]).is_err(),
        "eth0 still in pod1"
    );
    ok(cni.call("DEL", &conf, &env("c1", &p1path)));
    ok(cni.call("DEL", &conf, &env("c1", "")));
    let parked = tb
        .node
        .ip(&["-o", "addr", "show", "dev", &parked_name(&tb.nics[0].mac)])
        .unwrap();
    assert!(
        parked.trim().is_empty(),
        "a parked NIC keeps no address: {parked}"
    );

    // GC with only an unrelated attachment valid releases pod2's NIC.
    let mut gc = tb.netconf("1.1.0", json!([]));
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "other", "ifname": "eth0"}]);
    ok(cni.call("GC", &gc, &CallEnv::default()));
    assert!(
        p2.ip(&["link", "show", "dev", "eth0"]).is_err(),
        "GC left eth0 in pod2"
    );
    assert_eq!(tb.parked_macs().unwrap().len(), 3);

    assert_eq!(
        tb.node_default_route().unwrap(),
        default_before,
        "the node's default route moved"
    );
    drop(agent);
}

#[test]
fn every_cni_version_end_to_end() {
    if !require_root("every_cni_version_end_to_end") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let _agent = tb.start_agent().unwrap();
    let cni = tb.hostnic();
    for version in hostnic_proto::cni::SUPPORTED_VERSIONS {
        let pod = Ns::new("pod").unwrap();
        let path = pod.path().display().to_string();
        let conf = tb.netconf(version, json!([]));
        let r = ok(cni.call("ADD", &conf, &env("c", &path)));
        assert_eq!(r["cniVersion"], version);
        let has_ip_version = r["ips"][0].get("version").is_some();
        assert_eq!(has_ip_version, version.starts_with("0."), "{version}: {r}");
        assert_eq!(
            r["interfaces"][0].get("mtu").is_some(),
            version == "1.1.0",
            "{version}: {r}"
        );
        let mut check = conf.clone();
        check["prevResult"] = r;
        let checked = cni.call("CHECK", &check, &env("c", &path));
        if version.starts_with("0.3") {
            assert_eq!(err_code(checked), 1, "{version} has no CHECK");
        } else {
            ok(checked);
        }
        ok(cni.call("DEL", &conf, &env("c", &path)));
        let status = cni.call("STATUS", &conf, &CallEnv::default());
        if version == "1.1.0" {
            ok(status);
        } else {
            assert_eq!(err_code(status), 1, "{version} has no STATUS");
        }
    }
}

#[test]
fn exhaustion_status_and_failed_adds_lose_nothing() {
    if !require_root("exhaustion_status_and_failed_adds_lose_nothing") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let _agent = tb.start_agent().unwrap();
    let cni = tb.hostnic();
    let conf = tb.netconf("1.1.0", json!([]));
    ok(cni.call("STATUS", &conf, &CallEnv::default()));

    // A pod that already has an eth0: the ADD fails cleanly and the NIC
    // goes back to the node.
    let busy = Ns::new("busy").unwrap();
    busy.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"])
        .unwrap();
    let busy_path = busy.path().display().to_string();
    assert_eq!(err_code(cni.call("ADD", &conf, &env("cb", &busy_path))), 4);
    assert_eq!(tb.parked_macs().unwrap(), vec![tb.nics[0].mac.clone()]);

    let p1 = Ns::new("pod1").unwrap();
    let p2 = Ns::new("pod2").unwrap();
    ok(cni.call("ADD", &conf, &env("c1", &p1.path().display().to_string())));
    assert_eq!(err_code(cni.call("STATUS", &conf, &CallEnv::default())), 50);
    assert_eq!(
        err_code(cni.call("ADD", &conf, &env("c2", &p2.path().display().to_string()))),
        101
    );
    // Retrying the first ADD answers the same result, not a second NIC.
    let again = ok(cni.call("ADD", &conf, &env("c1", &p1.path().display().to_string())));
    assert_eq!(again["ips"][0]["address"], format!("{}/24", tb.nics[0].ip));
    ok(cni.call("DEL", &conf, &env("c1", "")));
    ok(cni.call("STATUS", &conf, &CallEnv::default()));
}

#[test]
fn a_vanished_nic_is_skipped_and_found_again() {
    if !require_root("a_vanished_nic_is_skipped_and_found_again") {
        return;
    }
    let tb = Testbed::new(2).unwrap();
    let agent = tb.start_agent().unwrap();
    let cni = tb.hostnic();
    let conf = tb.netconf("1.1.0", json!([]));
    let gone = &tb.nics[0];
    // The NIC disappears from the node behind the agent's back.
    tb.node
        .ip(&["link", "del", &parked_name(&gone.mac)])
        .unwrap();

    let p1 = Ns::new("pod1").unwrap();
    let p1path = p1.path().display().to_string();
    let r = ok(cni.call("ADD", &conf, &env("c1", &p1path)));
    assert_eq!(
        r["interfaces"][0]["mac"], tb.nics[1].mac,
        "the next NIC serves"
    );
    assert!(
        agent.log_text().contains("marked missing"),
        "{}",
        agent.log_text()
    );
    // The only other NIC is missing: no ADD possible now.
    assert_eq!(err_code(cni.call("STATUS", &conf, &CallEnv::default())), 50);

    // It comes back (re-attached by hand, as operators of the original
    // plugin had to): the next ADD that finds no free NIC looks again.
    tb.node
        .ip(&[
            "link",
            "add",
            "eth9",
            "address",
            &gone.mac,
            "type",
            "veth",
            "peer",
            "name",
            "wback",
            "netns",
            tb.wire.name(),
        ])
        .unwrap();
    tb.wire
        .ip(&["link", "set", "wback", "master", "br0", "up"])
        .unwrap();
    let p2 = Ns::new("pod2").unwrap();
    let p2path = p2.path().display().to_string();
    let r2 = ok(cni.call("ADD", &conf, &env("c2", &p2path)));
    assert_eq!(r2["interfaces"][0]["mac"], gone.mac);
    assert!(p2.ping(&tb.nics[1].ip), "the returned NIC works");

    // CHECK wants exactly the address ADD gave.
    let mut check = conf.clone();
    check["prevResult"] = r2.clone();
    ok(cni.call("CHECK", &check, &env("c2", &p2path)));
    p2.ip(&["addr", "add", "10.99.0.200/24", "dev", "eth0"])
        .unwrap();
    assert_eq!(
        err_code(cni.call("CHECK", &check, &env("c2", &p2path))),
        102
    );
}

#[test]
fn only_root_may_call_the_agent() {
    if !require_root("only_root_may_call_the_agent") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tb = Testbed::new(1).unwrap();
    let _agent = tb.start_agent().unwrap();
    // Root's alone from its birth: 0700 between bind and chmod (the
    // agent's umask; the agent may already serve then), 0600 after.
    let mode = std::fs::metadata(tb.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "the agent socket is mode {mode:o}");
    // The executable run as nobody is refused (the socket's mode stops it
    // first; the agent's peer-credential check is behind that).
    let conf = tb.netconf("1.1.0", json!([]));
    let nobody = hostnic_testbed::CniCall::new(hostnic_testbed::bin("hostnic"), None);
    let e = nobody
        .call_as("STATUS", &conf, 65534)
        .unwrap()
        .expect_err("a non-root caller was served");
    assert!(e.msg.contains("Permission denied"), "{e}");
    // With the mode opened up by mistake, the agent's own check refuses.
    std::fs::set_permissions(tb.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = nobody
        .call_as("STATUS", &conf, 65534)
        .unwrap()
        .expect_err("a non-root caller was served");
    assert!(e.msg.contains("only serves root"), "{e}");
}

#[test]
fn with_the_hooks_off_the_built_in_guests_wire_the_same_routes() {
    if !require_root("with_the_hooks_off_the_built_in_guests_wire_the_same_routes") {
        return;
    }
    let tb = Testbed::new(1).unwrap();
    let agent = tb.start_agent_with("[hooks]\nenabled = false\n").unwrap();
    assert!(
        agent.log_text().contains("policy hooks disabled"),
        "{}",
        agent.log_text()
    );
    let conf = tb.netconf("1.0.0", serde_json::from_str(SERVICE_ROUTES).unwrap());
    let pod = Ns::new("bypass").unwrap();
    let path = pod.path().display().to_string();
    ok(tb.hostnic().call("ADD", &conf, &env("c", &path)));
    let routes = pod.ip(&["route"]).unwrap();
    assert!(
        routes.contains(&format!("default via {GATEWAY} dev eth0")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("10.96.0.0/12 via {GATEWAY} dev eth0")),
        "{routes}"
    );
    ok(tb.hostnic().call("DEL", &conf, &env("c", &path)));
}
