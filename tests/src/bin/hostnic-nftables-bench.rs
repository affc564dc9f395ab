//! `hostnic-nftables-bench`: what writing a pod's NetworkPolicy table
//! costs, by hostnic's own nf_tables socket (`hostnic-netlink`'s
//! `nftables`) and by nft itself (`nft -f`, the reference), in the same
//! run. Each write goes into a fresh namespace, as an ADD's first write
//! does.
//!
//! The tables are an ADD's for a pod selected by N policies, each
//! admitting one peer: the node's and the Services' sets, a set of one
//! peer per policy, and the isolated chain's rules (loopback, conntrack,
//! the node, one rule per policy with a counter and a comment, the
//! refusals). Two more split the kernel's share: the 100 rules without
//! sets (their peer inline), and without counters either.
//!
//! Usage: hostnic-nftables-bench [RUNS] (default 15).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hostnic_netlink::Netns;
use hostnic_netlink::nftables::{
    Command, Element, Field, Hook, Match, Proto, Rule, Script, SetKind, Verdict,
};
use hostnic_testbed::Ns;
use hostnic_testbed::stats::{ms, pct};

/// How a policy's peer is matched.
#[derive(Clone, Copy, PartialEq)]
enum Peers {
    /// A named set of its own, as the agent writes it.
    Set,
    /// The address inline, with a counter.
    Inline,
    /// The address inline, no counter.
    Bare,
}

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hostnic-nftables-bench needs root: it creates network namespaces");
    }
    let runs: usize = std::env::args().nth(1).map_or(Ok(15), |a| a.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("hostnic-nftables-bench: {runs} writes of each table, each into a fresh namespace\n");
    println!("| table | own socket p50 | p99 | nft -f p50 | p99 | nft -f less its empty table |");
    println!("|---|---|---|---|---|---|");
    let mut empty = Script::new("hostnic-policy");
    empty.commands.push(Command::Declare {
        sets: Vec::new(),
        chains: Vec::new(),
    });
    let (_, nft_empty) = times(&rt, &empty, runs)?;
    let floor = pct(&nft_empty, 50);
    for (name, policies, peers) in [
        ("no policy", 0, Peers::Set),
        ("10 policies, a peer each", 10, Peers::Set),
        ("100 policies, a peer each", 100, Peers::Set),
        ("100 rules, peers inline", 100, Peers::Inline),
        ("100 rules, peers inline, no counters", 100, Peers::Bare),
    ] {
        let (ours, nft) = times(&rt, &table(policies, peers), runs)?;
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(pct(&ours, 50)),
            ms(pct(&ours, 99)),
            ms(pct(&nft, 50)),
            ms(pct(&nft, 99)),
            ms(pct(&nft, 50).saturating_sub(floor)),
        );
    }
    println!(
        "\nnft -f of an empty table (the process's own cost): p50 {}",
        ms(floor)
    );
    Ok(())
}

/// `runs` writes of `script` each way, each into a namespace of its own.
fn times(
    rt: &tokio::runtime::Runtime,
    script: &Script,
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut ours, mut nft) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let ns = Ns::new("nftb")?;
        let netns = Netns::open(&ns.path())?;
        let socket = rt.block_on(netns.nftables())?;
        let started = Instant::now();
        rt.block_on(socket.apply(script))?;
        ours.push(started.elapsed());

        let ns = Ns::new("nftb")?;
        let text = script.to_string();
        let started = Instant::now();
        nft_f(&ns, &text)?;
        nft.push(started.elapsed());
    }
    Ok((ours, nft))
}

/// `nft -f -` of `text` in `ns`.
fn nft_f(ns: &Ns, text: &str) -> anyhow::Result<()> {
    let mut child = Process::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The table an ADD writes for a pod selected by `policies` policies,
/// each admitting one peer.
fn table(policies: u32, peers: Peers) -> Script {
    let mut s = Script::new("hostnic-policy");
    let mut sets = vec![
        ("node".to_string(), SetKind::Addresses),
        ("services".to_string(), SetKind::Addresses),
    ];
    if peers == Peers::Set {
        sets.extend((0..policies).map(|i| (format!("ingress-{i}-peers"), SetKind::Prefixes)));
    }
    s.commands.push(Command::Declare {
        sets: sets.clone(),
        chains: vec![
            ("ingress".into(), Hook::Input),
            ("egress".into(), Hook::Output),
        ],
    });
    for chain in ["ingress", "egress"] {
        s.commands.push(Command::FlushChain(chain.into()));
    }
    for (set, _) in &sets {
        s.commands.push(Command::FlushSet(set.clone()));
    }
    s.commands.push(Command::AddElements(
        "node".into(),
        vec![Element::Addr(Ipv4Addr::new(10, 0, 0, 1))],
    ));
    let peer = |i: u32| Ipv4Addr::from(0xc000_0200 + i + 1);
    if peers == Peers::Set {
        for i in 0..policies {
            s.commands.push(Command::AddElements(
                format!("ingress-{i}-peers"),
                vec![Element::Net(peer(i).into())],
            ));
        }
    }
    if policies == 0 {
        return s;
    }
    let rule = |matches, counter, verdict, comment: Option<String>| {
        Command::AddRule(Rule {
            chain: "ingress".into(),
            matches,
            counter,
            verdict,
            comment,
        })
    };
    s.commands.extend([
        rule(
            vec![Match::Loopback(Hook::Input)],
            false,
            Verdict::Accept,
            None,
        ),
        rule(
            vec![Match::EstablishedOrRelated],
            false,
            Verdict::Accept,
            None,
        ),
        rule(vec![Match::Invalid], false, Verdict::Drop, None),
        rule(
            vec![Match::InSet(Field::Source, "node".into())],
            false,
            Verdict::Accept,
            None,
        ),
    ]);
    for i in 0..policies {
        let from = match peers {
            Peers::Set => Match::InSet(Field::Source, format!("ingress-{i}-peers")),
            Peers::Inline | Peers::Bare => Match::InNet(Field::Source, peer(i).into()),
        };
        s.commands.push(rule(
            vec![
                from,
                Match::Protocol(Proto::Tcp),
                Match::Ports(vec![(8080, 8080)]),
            ],
            peers != Peers::Bare,
            Verdict::Accept,
            Some(format!("default/np{i} ingress 0")),
        ));
    }
    s.commands.extend([
        rule(
            vec![Match::Protocol(Proto::Tcp)],
            true,
            Verdict::Reset,
            Some("denied".into()),
        ),
        rule(Vec::new(), true, Verdict::Reject, Some("denied".into())),
    ]);
    s
}
