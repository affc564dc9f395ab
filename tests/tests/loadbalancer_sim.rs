//! The cloud's load balancer in the simulator, through the real client:
//! its API signed and checked like every other action, and its data path
//! real — a client namespace on the vxnet connects to the load balancer's
//! address and is answered by backend namespaces, only healthy ones.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hostnic_iaas::lb::{
    BackendStatus, BackendTarget, HealthCheck, ListenerProtocol, LoadBalancer, LoadBalancerFilter,
    LoadBalancerId, LoadBalancerNetwork, LoadBalancerStatus, NewBackend, NewListener,
    NewLoadBalancer,
};
use hostnic_iaas::{Client, Credentials, Error, JobId, Options, ResourceTagPair};
use hostnic_testbed::sim::faults::ErrorRule;
use hostnic_testbed::sim::{Faults, Sim, SimConfig};
use hostnic_testbed::{Ns, require_root};

const VXNET: &str = "vxnet-pods";

fn client(sim: &Sim) -> Client {
    let mut o = Options::default();
    o.backoff.base = Duration::from_millis(5);
    o.backoff.max = Duration::from_millis(20);
    o.job_poll_interval = Duration::from_millis(20);
    o.job_timeout = Duration::from_secs(10);
    o.budget = hostnic_iaas::Budget::UNLIMITED;
    Client::new(
        Credentials::from_yaml(&sim.local_credentials_yaml()).unwrap(),
        o,
    )
    .unwrap()
}

async fn done(c: &Client, job: &JobId) -> Result<(), Error> {
    c.wait_job(job, std::future::pending()).await.map(|_| ())
}

/// A namespace on the vxnet with a cloud NIC of its own (created, attached
/// to the first VM, moved in and addressed), as a hostnic pod has.
async fn on_vxnet(sim: &Sim, c: &Client, role: &str) -> (Ns, Ipv4Addr) {
    let nic = c.create_nics(VXNET, role, 1, &[]).await.unwrap().remove(0);
    let ip = nic.private_ip.unwrap();
    done(
        c,
        &c.attach_nics(&[&nic.nic_id], &sim.nodes[0].instance)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let vm = &sim.nodes[0].ns;
    let links = vm.ip(&["-o", "link", "show"]).unwrap();
    let dev = links
        .lines()
        .find(|l| l.contains(&nic.nic_id))
        .and_then(|l| l.split(':').nth(1))
        .map(|d| d.trim().split('@').next().unwrap().to_string())
        .expect("the attached NIC's link");
    let ns = Ns::new(role).unwrap();
    vm.ip(&["link", "set", &dev, "netns", ns.name()]).unwrap();
    let gw = sim.gateway(VXNET).unwrap();
    ns.ip_batch(&[
        format!("link set {dev} name eth0"),
        format!("addr add {ip}/24 dev eth0"),
        "link set eth0 up".into(),
        format!("route add default via {gw}"),
    ])
    .unwrap();
    (ns, ip)
}

/// An HTTP server on `port` in `ns` answering every request with its name.
struct Server {
    on: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Ns, ip: Ipv4Addr, port: u16, name: &'static str) -> Server {
        let listener = ns.listen(SocketAddr::from((ip, port))).unwrap();
        listener.set_nonblocking(true).unwrap();
        let on = Arc::new(AtomicBool::new(true));
        let running = on.clone();
        let thread = std::thread::spawn(move || {
            let listener: TcpListener = listener;
            while running.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).ok();
                        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let _ = write!(
                            s,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                            name.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            on,
            thread: Some(thread),
        }
    }

    /// Stops serving; on return its socket is closed (new connections are
    /// refused).
    fn stop(&mut self) {
        self.on.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// UpdateLoadBalancers, and its job to its end.
async fn apply(c: &Client, lb: &LoadBalancerId) {
    let job = c
        .update_load_balancers(std::slice::from_ref(lb))
        .await
        .unwrap();
    done(c, &job).await.unwrap();
}

async fn described(c: &Client, lb: &LoadBalancerId) -> LoadBalancer {
    let filter = LoadBalancerFilter {
        loadbalancers: vec![lb.clone()],
        verbose: true,
        ..LoadBalancerFilter::default()
    };
    c.describe_load_balancers(&filter).await.unwrap().remove(0)
}

/// Waits until every backend of `lb` has one of `want`'s statuses.
async fn backends_become(c: &Client, lb: &LoadBalancerId, want: &[(&str, BackendStatus)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let backends = c.describe_backends(Some(lb), None).await.unwrap();
        let now: Vec<(String, BackendStatus)> = backends
            .iter()
            .map(|b| (b.loadbalancer_backend_name.clone(), b.status))
            .collect();
        if want
            .iter()
            .all(|(n, s)| now.iter().any(|(m, t)| m == n && t == s))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backends are {now:?}, waited for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn quick_check() -> HealthCheck {
    HealthCheck {
        http_path: Some("/healthz".into()),
        interval_s: 1,
        timeout_s: 1,
        fall: 1,
        rise: 1,
    }
}

fn new_lb(name: &str) -> NewLoadBalancer {
    NewLoadBalancer {
        name: name.into(),
        network: LoadBalancerNetwork::Internal {
            vxnet: VXNET.into(),
            private_ip: None,
        },
        loadbalancer_type: 0,
        security_group: None,
    }
}

fn listener(name: &str, port: u16, protocol: ListenerProtocol, check: HealthCheck) -> NewListener {
    NewListener {
        name: name.into(),
        port,
        protocol,
        balance_mode: Default::default(),
        health_check: check,
    }
}

fn backend(name: &str, ip: Ipv4Addr) -> NewBackend {
    NewBackend {
        name: name.into(),
        target: BackendTarget::Address(ip),
        port: 8080,
        weight: 1,
    }
}

/// The cloud answers the next `action` with 1400.
fn refuse_once(sim: &Sim, action: &str) {
    sim.set_faults(Faults {
        errors: vec![ErrorRule {
            action: Some(action.into()),
            code: 1400,
            rate: 1.0,
            count: Some(1),
        }],
        ..Faults::default()
    });
}

fn one_vm() -> Sim {
    Sim::start(SimConfig {
        nodes: 1,
        ..SimConfig::default()
    })
    .unwrap()
}

/// Two backends serving their names on 8080, and a client, on the vxnet.
struct Backends {
    a: (Ipv4Addr, Server),
    b: (Ipv4Addr, Server),
    outside: Ns,
    _namespaces: [Ns; 2],
}

async fn backends(sim: &Sim, c: &Client) -> Backends {
    let (a, a_ip) = on_vxnet(sim, c, "backend-a").await;
    let (b, b_ip) = on_vxnet(sim, c, "backend-b").await;
    let (outside, _) = on_vxnet(sim, c, "client").await;
    Backends {
        a: (a_ip, Server::start(&a, a_ip, 8080, "a")),
        b: (b_ip, Server::start(&b, b_ip, 8080, "b")),
        outside,
        _namespaces: [a, b],
    }
}

#[test]
fn a_load_balancer_on_the_vxnet_forwards_to_its_healthy_backends_only() {
    if !require_root("a_load_balancer_on_the_vxnet_forwards_to_its_healthy_backends_only") {
        return;
    }
    let sim = one_vm();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = client(&sim);
        let Backends {
            a: (a_ip, _a_server),
            b: (b_ip, mut b_server),
            outside,
            _namespaces,
        } = backends(&sim, &c).await;

        let (lb, job) = c.create_load_balancer(&new_lb("web")).await.unwrap();
        let pending = described(&c, &lb).await;
        assert_eq!(pending.status, LoadBalancerStatus::Pending);
        assert_eq!(pending.transition_status, "creating");
        done(&c, &job).await.unwrap();
        let vip = described(&c, &lb).await.addresses()[0];
        let front = SocketAddr::from((vip, 80));
        assert!(sim.lb_netns(&lb.0).is_some(), "the data path runs");

        let listener = c
            .add_listeners(
                &lb,
                &[listener("http", 80, ListenerProtocol::Tcp, quick_check())],
            )
            .await
            .unwrap()
            .remove(0);
        c.add_backends(&listener, &[backend("a", a_ip), backend("b", b_ip)])
            .await
            .unwrap();
        assert!(!described(&c, &lb).await.is_applied(), "not applied yet");
        assert_eq!(
            outside.http_get(front),
            None,
            "nothing listens before the update"
        );

        apply(&c, &lb).await;
        assert!(described(&c, &lb).await.is_settled());
        backends_become(
            &c,
            &lb,
            &[("a", BackendStatus::Up), ("b", BackendStatus::Up)],
        )
        .await;
        let answers: Vec<String> = (0..10).filter_map(|_| outside.http_get(front)).collect();
        assert_eq!(answers.len(), 10, "every request answered: {answers:?}");
        let from_a = answers.iter().filter(|n| *n == "a").count();
        assert_eq!(from_a, 5, "round robin over two backends: {answers:?}");

        // Backend b stops serving (refuses connections): not one request
        // fails, neither before its checks find out (a refused connection is
        // sent to another backend) nor after.
        b_server.stop();
        let t = Instant::now();
        let mut during = Vec::new();
        while t.elapsed() < Duration::from_secs(3) {
            during.push(outside.http_get(front));
        }
        assert!(
            during.iter().all(|r| r.as_deref() == Some("a")),
            "{} requests while b went away: {:?}",
            during.len(),
            during
                .iter()
                .filter(|r| r.as_deref() != Some("a"))
                .collect::<Vec<_>>()
        );
        backends_become(
            &c,
            &lb,
            &[("a", BackendStatus::Up), ("b", BackendStatus::Abnormal)],
        )
        .await;

        // Delete: the data path, its namespace and its address go.
        let jobs = c
            .delete_load_balancers(std::slice::from_ref(&lb))
            .await
            .unwrap();
        done(&c, &jobs[0]).await.unwrap();
        assert_eq!(sim.lbs_running(), 0);
        assert_eq!(outside.http_get(front), None);
        let again = c.create_nics(VXNET, "reuse", 1, &[vip]).await.unwrap();
        assert_eq!(again[0].private_ip, Some(vip), "the address was freed");
        assert!(
            c.delete_load_balancers(std::slice::from_ref(&lb))
                .await
                .unwrap()
                .is_empty(),
            "deleting again is done, not an error"
        );
    });
}

#[test]
fn load_balancer_calls_are_checked_and_a_failing_cloud_changes_nothing() {
    if !require_root("load_balancer_calls_are_checked_and_a_failing_cloud_changes_nothing") {
        return;
    }
    let sim = one_vm();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = client(&sim);
        let (lb, job) = c.create_load_balancer(&new_lb("checked")).await.unwrap();
        let early = c
            .add_listeners(
                &lb,
                &[listener(
                    "early",
                    80,
                    ListenerProtocol::Tcp,
                    HealthCheck::default(),
                )],
            )
            .await
            .unwrap_err();
        assert_eq!(early.ret_code(), Some(1400), "a pending LB: {early}");
        done(&c, &job).await.unwrap();

        let udp = listener("dns", 53, ListenerProtocol::Udp, HealthCheck::default());
        let e = c.add_listeners(&lb, &[udp]).await.unwrap_err();
        assert_eq!(e.ret_code(), Some(1100), "{e}");
        assert!(e.to_string().contains("tcp and http"), "{e}");
        let tcp = listener("web", 80, ListenerProtocol::Tcp, HealthCheck::default());
        let l = c
            .add_listeners(&lb, std::slice::from_ref(&tcp))
            .await
            .unwrap()
            .remove(0);
        let e = c.add_listeners(&lb, &[tcp]).await.unwrap_err();
        assert_eq!(
            e.ret_code(),
            Some(1400),
            "a second listener on port 80: {e}"
        );
        let e = c
            .add_backends(&l, &[backend("far", Ipv4Addr::new(8, 8, 8, 8))])
            .await
            .unwrap_err();
        assert_eq!(e.ret_code(), Some(1400), "outside the VPC: {e}");

        // The cloud refuses half-way: the refused call adds nothing.
        refuse_once(&sim, "AddLoadBalancerBackends");
        let ip = Ipv4Addr::new(10, 100, 0, 50);
        assert!(c.add_backends(&l, &[backend("x", ip)]).await.is_err());
        assert!(
            c.describe_backends(Some(&lb), None)
                .await
                .unwrap()
                .is_empty()
        );
        c.add_backends(&l, &[backend("x", ip)]).await.unwrap();

        // A failed update job leaves the change unapplied; the next applies it.
        sim.set_faults(Faults {
            fail_next_lb_jobs: 1,
            ..Faults::default()
        });
        let job = c
            .update_load_balancers(std::slice::from_ref(&lb))
            .await
            .unwrap();
        assert!(matches!(done(&c, &job).await, Err(Error::JobFailed { .. })));
        let seen = described(&c, &lb).await;
        assert!(
            !seen.is_applied() && seen.transition_status.is_empty(),
            "{seen:?}"
        );
        apply(&c, &lb).await;
        assert!(described(&c, &lb).await.is_settled());

        // Tags find it, as the sweep will.
        let tag = c.create_tag("hostnic-lb-test").await.unwrap();
        c.attach_tags(&[ResourceTagPair {
            tag_id: tag.clone(),
            resource_type: "loadbalancer".into(),
            resource_id: lb.0.clone(),
        }])
        .await
        .unwrap();
        let tagged = c
            .describe_load_balancers(&LoadBalancerFilter {
                tags: vec![tag],
                ..LoadBalancerFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(tagged.len(), 1);
        assert_eq!(tagged[0].loadbalancer_id, lb);
        assert!(sim.calls().contains_key("DescribeLoadBalancers"));
    });
}

/// The Service controller's cloud side against the simulator: from
/// nothing to a forwarding load balancer, a changed set of backends in one
/// add, one delete and one update, a pass with nothing to do costing only
/// its describe, and a pass cut short by the cloud finished by the next —
/// no listener or backend twice.
#[test]
fn the_controller_converges_in_few_calls_and_finishes_what_a_failure_cut_short() {
    use hostnic_agent::balancer::converge::{Calls, Outcome, converge};
    use hostnic_agent::balancer::desired::{Desired, DesiredListener};
    if !require_root("the_controller_converges_in_few_calls_and_finishes_what_a_failure_cut_short")
    {
        return;
    }
    let sim = one_vm();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = client(&sim);
        let Backends {
            a: (a_ip, _a_server),
            b: (b_ip, _b_server),
            outside,
            _namespaces,
        } = backends(&sim, &c).await;
        let want = |ips: &[Ipv4Addr]| Desired {
            name: "k8s_lb_test_shop_web_1a2b3c4d".into(),
            network: LoadBalancerNetwork::Internal {
                vxnet: VXNET.into(),
                private_ip: None,
            },
            lb_type: 0,
            listener_prefix: "listener_shop_web_".into(),
            left_out: 0,
            listeners: vec![DesiredListener {
                listener: listener(
                    "listener_shop_web_80_tcp",
                    80,
                    ListenerProtocol::Tcp,
                    quick_check(),
                ),
                backends: ips
                    .iter()
                    .map(|ip| (BackendTarget::Address(*ip), 8080))
                    .collect(),
            }],
        };
        let pass = |d: Desired| {
            let (c, sim) = (&c, &sim);
            async move {
                let mut calls = Calls::default();
                let before = sim.calls();
                let out = converge(c, &d, None, &mut calls).await;
                let after = sim.calls();
                let made = after.values().sum::<u64>() - before.values().sum::<u64>();
                (out, calls, made)
            }
        };
        let (out, calls, _) = pass(want(&[a_ip])).await;
        assert!(matches!(out.unwrap(), Outcome::Pending("being created", _)));
        assert!(calls.created);
        // Passes until the cloud has applied it all (as the controller's
        // requeues do).
        let until_ready = |d: Desired| {
            let pass = &pass;
            async move {
                loop {
                    match pass(d.clone()).await.0.unwrap() {
                        Outcome::Ready(ips) => return ips[0],
                        Outcome::Pending(..) => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                    }
                }
            }
        };
        let vip = until_ready(want(&[a_ip])).await;
        let front = SocketAddr::from((vip, 80));
        let a_name = a_ip.to_string();
        backends_become(&c, &find_id(&c).await, &[(&a_name, BackendStatus::Up)]).await;
        assert_eq!(outside.http_get(front).as_deref(), Some("a"));

        // a out, b in: one add, one delete, one update.
        let (out, calls, made) = pass(want(&[b_ip])).await;
        assert!(matches!(out.unwrap(), Outcome::Pending("applying", _)));
        assert_eq!(
            (calls.backends_added, calls.backends_deleted, calls.updated),
            (1, 1, true)
        );
        assert_eq!(made, 4, "describe, add, delete, update: {calls:?}");
        until_ready(want(&[b_ip])).await;
        let (out, calls, made) = pass(want(&[b_ip])).await;
        assert!(matches!(out.unwrap(), Outcome::Ready(_)));
        assert_eq!(calls, Calls::default(), "nothing to do");
        assert_eq!(made, 1, "a pass with nothing to do is one describe");

        // The cloud took a create twice (its answer lost, the call made
        // again): the next pass deletes the younger one, keeps the one in
        // use.
        let kept = find_id(&c).await;
        let (twin, job) = c
            .create_load_balancer(&NewLoadBalancer {
                name: "k8s_lb_test_shop_web_1a2b3c4d".into(),
                ..new_lb("")
            })
            .await
            .unwrap();
        done(&c, &job).await.unwrap();
        let (_, calls, _) = pass(want(&[b_ip])).await;
        assert_eq!(calls.duplicates_deleted, 1);
        // Deleting is a job: the twin is gone once it ends.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let live = hostnic_agent::balancer::converge::find_all(&c, "k8s_lb_test_shop_web_1a2b3c4d")
            .await
            .unwrap();
        assert_eq!(
            live.iter()
                .map(|lb| &lb.loadbalancer_id)
                .collect::<Vec<_>>(),
            [&kept],
            "{twin} deleted"
        );

        // The cloud refuses the add after the delete went through: the next
        // pass finishes the change.
        refuse_once(&sim, "AddLoadBalancerBackends");
        assert!(pass(want(&[a_ip])).await.0.is_err());
        until_ready(want(&[a_ip])).await;
        let lb = described(&c, &find_id(&c).await).await;
        assert!(lb.is_settled());
        assert_eq!(lb.listeners.len(), 1, "{lb:?}");
        let targets: Vec<String> = lb.listeners[0]
            .backends
            .iter()
            .map(|b| b.resource_id.clone())
            .collect();
        assert_eq!(targets, [a_ip.to_string()]);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(outside.http_get(front).as_deref(), Some("a"));
    });
}

async fn find_id(c: &Client) -> LoadBalancerId {
    hostnic_agent::balancer::converge::find(c, "k8s_lb_test_shop_web_1a2b3c4d")
        .await
        .unwrap()
        .unwrap()
        .loadbalancer_id
}
