//! Judged by Kubernetes' own tests: a representative part of the upstream
//! sig-network e2e suite (`e2e.test`, built from source by
//! `scripts/e2e-build`) against the testbed cluster with hostnic installed
//! from deploy/, in each wiring mode. `scripts/conformance` runs the whole
//! selection (docs/testing.md); this keeps CI to a few minutes a mode.
//! Every selected spec must run and pass: none may skip itself, so a
//! selection that stopped matching is a failure, not a quiet pass.

use hostnic_testbed::conformance::{self, Selection};
use hostnic_testbed::require_root;

/// One cluster at a time: two on two cores starve each other's kubelets.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Pod to pod and node to pod over http and udp on both nodes (the four
/// `[Conformance]` granular checks), a Service in front of pods, DNS for
/// the cluster's names, a hostNetwork pod behind a Service (its hostname
/// must be its node's: the testbed's UTS namespace per node), and, with
/// kube-proxy's defaults, the client pod's address kept through a Service
/// and a NodePort with externalTrafficPolicy=Local (the endpoint answers
/// back through the node that translated), and a Service's externalIP
/// (routed through the node as the testbed's site config says); with
/// [`NETPOL`], NetworkPolicy.
const CI_FOCUS: &str = concat!(
    r"Networking Granular Checks: Pods should function for (intra|node)-pod communication: (http|udp) ",
    r"|Services should serve a basic endpoint from pods \[Conformance\]",
    r"|DNS should provide DNS for services \[Conformance\]",
    r"|Networking Granular Checks: Services should function for service endpoints using hostNetwork",
    r"|Services should preserve source pod IP for traffic thru service cluster IP",
    r"|Services should support externalTrafficPolicy=Local for type=NodePort",
    r"|Services should be possible to connect to a service via ExternalIP when the external IP is not assigned to a node",
);

/// NetworkPolicy (`Netpol`, nine namespaced pods probed through their
/// Services): isolation, named ports both ways, an egress ipBlock of the
/// server's own address and one excepting it (judged through the
/// ClusterIP), a peer whose labels change, egress denied to a namespace,
/// UDP.
const NETPOL: &str = concat!(
    r"|Netpol NetworkPolicy between server and client should (",
    r"support a 'default-deny-ingress' policy",
    r"|allow ingress access on one named port",
    r"|allow egress access on one named port",
    r"|allow egress access to server in CIDR block",
    r"|enforce except clause while egress access to server in CIDR block",
    r"|allow ingress access from updated pod",
    r"|deny egress from all pods in a namespace",
    r")",
    r"|Netpol \[LinuxOnly\] NetworkPolicy between server and client using UDP should support a 'default-deny-ingress' policy",
);

/// Shared mode's NetworkPolicy part: the same table behind a veth.
const NETPOL_SHARED: &str = concat!(
    r"|Netpol NetworkPolicy between server and client should (",
    r"support a 'default-deny-ingress' policy",
    r"|allow egress access on one named port",
    r"|enforce except clause while egress access to server in CIDR block",
    r"|allow ingress access from updated pod",
    r")",
);

/// Shared mode, where the wiring differs: pod to pod and node to pod, a
/// Service, DNS, the client pod's address through a Service; with
/// [`NETPOL_SHARED`], NetworkPolicy.
const CI_FOCUS_SHARED: &str = concat!(
    r"Networking Granular Checks: Pods should function for (intra-pod communication: http|node-pod communication: udp) ",
    r"|Services should serve a basic endpoint from pods \[Conformance\]",
    r"|DNS should provide DNS for services \[Conformance\]",
    r"|Services should preserve source pod IP for traffic thru service cluster IP",
);

/// e2e.test processes at once: the specs mostly wait on the cluster.
const PROCS: usize = 3;

fn run(wiring: &str, focus: &str, want: usize) {
    let test = format!("conformance_{wiring}");
    if !require_root(&test) {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let wiring_mode = conformance::wiring(wiring).unwrap();
    let selection = Selection {
        focus: focus.to_string(),
        skip: wiring_mode.default_skip(),
        procs: PROCS,
    };
    let outcome = conformance::run(wiring_mode, &selection, dir.path())
        .unwrap_or_else(|e| panic!("{wiring}: {e:#}"));
    eprintln!("conformance ({wiring}): {}", outcome.summary());
    if let Err(e) = outcome.expect_all_passed(want) {
        panic!(
            "{wiring}: {e:#}\nthe suite's log: {}",
            std::fs::read_to_string(&outcome.log).unwrap_or_default()
        );
    }
}

#[test]
fn conformance_exclusive() {
    run("exclusive", &format!("{CI_FOCUS}{NETPOL}"), 18);
}

#[test]
fn conformance_shared() {
    run("shared", &format!("{CI_FOCUS_SHARED}{NETPOL_SHARED}"), 9);
}
