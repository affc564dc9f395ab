//! The nf_tables writer against a real kernel, in two throwaway
//! namespaces: what it writes is what `nft -f` makes of the same script's
//! text (their listings are compared), the table it owns cannot be
//! flushed or deleted by another process, outlives the socket, and is
//! adopted by the next one; a refusal names the command. Needs root.

use std::net::Ipv4Addr;

use hostnic_netlink::nftables::{
    Command, Element, Field, Hook, Match, Proto, Rule, Script, SetKind, Verdict,
};
use std::process::Command as Process;

mod common;

const TABLE: &str = "hnft";

fn net(s: &str) -> ipnet::Ipv4Net {
    s.parse().unwrap()
}

fn rule(chain: &str, matches: Vec<Match>, verdict: Verdict, comment: Option<&str>) -> Command {
    Command::AddRule(Rule {
        chain: chain.into(),
        matches,
        counter: comment.is_some(),
        verdict,
        comment: comment.map(Into::into),
    })
}

/// Every kind of set, element, match and verdict the agent writes.
fn everything() -> Script {
    use Field::{Destination as D, Source as S};
    let mut s = Script::new(TABLE);
    s.commands = vec![
        Command::Declare {
            sets: vec![
                ("node".into(), SetKind::Addresses),
                ("peers".into(), SetKind::Prefixes),
                ("triples".into(), SetKind::Triples),
            ],
            chains: vec![
                ("ingress".into(), Hook::Input),
                ("egress".into(), Hook::Output),
            ],
        },
        Command::FlushChain("ingress".into()),
        Command::FlushChain("egress".into()),
        Command::FlushSet("node".into()),
        Command::AddElements(
            "node".into(),
            vec![
                Element::Addr(Ipv4Addr::new(10, 0, 0, 1)),
                Element::Addr(Ipv4Addr::new(10, 0, 0, 2)),
            ],
        ),
        Command::AddElements(
            "peers".into(),
            vec![
                Element::Net(net("10.1.0.5/32")),
                Element::Net(net("10.2.0.0/16")),
                Element::Net(net("192.168.7.0/24")),
            ],
        ),
        Command::AddElements(
            "triples".into(),
            vec![
                Element::Triple(Ipv4Addr::new(10, 96, 0, 10), Proto::Tcp, 80),
                Element::Triple(Ipv4Addr::new(10, 96, 0, 10), Proto::Udp, 53),
                Element::Triple(Ipv4Addr::new(10, 96, 0, 11), Proto::Sctp, 9000),
            ],
        ),
        rule(
            "ingress",
            vec![Match::Loopback(Hook::Input)],
            Verdict::Accept,
            None,
        ),
        rule(
            "ingress",
            vec![Match::EstablishedOrRelated],
            Verdict::Accept,
            None,
        ),
        rule("ingress", vec![Match::Invalid], Verdict::Drop, None),
        rule(
            "ingress",
            vec![Match::InSet(S, "node".into())],
            Verdict::Accept,
            None,
        ),
        rule(
            "ingress",
            vec![
                Match::InSet(S, "peers".into()),
                Match::Protocol(Proto::Tcp),
                Match::Ports(vec![(80, 80)]),
            ],
            Verdict::Accept,
            Some("ns/p ingress 0"),
        ),
        rule(
            "ingress",
            vec![
                Match::InNet(S, net("10.0.0.0/8")),
                Match::NotIn(S, vec![net("10.3.0.0/16")]),
                Match::Protocol(Proto::Udp),
                Match::Ports(vec![(1000, 2000)]),
            ],
            Verdict::Accept,
            Some("ns/p ingress 1"),
        ),
        rule(
            "ingress",
            vec![
                Match::InNet(S, net("172.16.0.0/12")),
                Match::NotIn(S, vec![net("172.16.1.0/24"), net("172.17.0.9/32")]),
                Match::Protocol(Proto::Sctp),
                Match::Ports(vec![(5, 5), (10, 20), (30, 30)]),
            ],
            Verdict::Accept,
            Some("ns/p ingress 2"),
        ),
        rule(
            "ingress",
            vec![
                Match::InNet(S, net("192.0.2.7/32")),
                Match::Protocol(Proto::Tcp),
            ],
            Verdict::Accept,
            Some("ns/p ingress 3"),
        ),
        rule(
            "ingress",
            vec![],
            Verdict::Accept,
            Some("ns/open ingress 0"),
        ),
        rule(
            "ingress",
            vec![Match::Protocol(Proto::Tcp)],
            Verdict::Reset,
            Some("denied"),
        ),
        rule("ingress", vec![], Verdict::Reject, Some("denied")),
        rule(
            "egress",
            vec![Match::Loopback(Hook::Output)],
            Verdict::Accept,
            None,
        ),
        rule(
            "egress",
            vec![Match::TripleInSet(D, "triples".into())],
            Verdict::Accept,
            Some("ns/q egress 0"),
        ),
        rule(
            "egress",
            vec![Match::InSet(D, "node".into()), Match::Protocol(Proto::Tcp)],
            Verdict::Reset,
            Some("denied"),
        ),
    ];
    s
}

/// `nft -f -` of `text` in namespace `name`: its stderr on failure.
fn nft_f(name: &str, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Process::new("ip")
        .args(["netns", "exec", name, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The table as nft lists it, without its first line (which shows the
/// owner, if any) and its flags (and the blank line after them).
fn listing(name: &str) -> String {
    let listed = common::ip(&["netns", "exec", name, "nft", "list", "table", "inet", TABLE]);
    let body: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter(|l| !l.trim_start().starts_with("flags "))
        .collect();
    body.join("\n").trim_start().to_string()
}

#[tokio::test]
async fn the_writer_makes_what_nft_makes_and_owns_it() {
    if !common::require_root("the_writer_makes_what_nft_makes_and_owns_it") {
        return;
    }
    let pair = common::Pair::create("hnft").await;
    let script = everything();

    // 1. The same table, two ways.
    let socket = pair.ns_a.nftables().await.unwrap();
    socket.apply(&script).await.unwrap();
    nft_f(&pair.name_b, &script.to_string()).unwrap();
    let ours = listing(&pair.name_a);
    assert_eq!(ours, listing(&pair.name_b), "ours (left) and nft's");
    assert!(ours.contains("ns/p ingress 2"), "{ours}");

    // A second write of the whole script changes nothing, and a set's
    // elements replaced alone come out as nft's.
    socket.apply(&script).await.unwrap();
    assert_eq!(listing(&pair.name_a), ours);
    let mut refill = Script::new(TABLE);
    refill.commands = vec![
        Command::FlushSet("peers".into()),
        Command::AddElements(
            "peers".into(),
            vec![
                Element::Net(net("10.9.0.0/24")),
                Element::Net(net("10.9.2.0/24")),
            ],
        ),
    ];
    socket.apply(&refill).await.unwrap();
    nft_f(&pair.name_b, &refill.to_string()).unwrap();
    assert_eq!(listing(&pair.name_a), listing(&pair.name_b));

    // 2. Owned: another process can neither flush nor delete it.
    for attempt in ["flush table inet hnft", "delete table inet hnft"] {
        let why = nft_f(&pair.name_a, attempt).unwrap_err();
        assert!(why.contains("Operation not permitted"), "{attempt}: {why}");
    }
    assert_eq!(listing(&pair.name_a), listing(&pair.name_b));

    // 3. The socket gone, the table stays; the next socket adopts it.
    drop(socket);
    assert_eq!(listing(&pair.name_a), listing(&pair.name_b));
    let next = pair.ns_a.nftables().await.unwrap();
    next.apply(&script).await.unwrap();
    let why = nft_f(&pair.name_a, "flush table inet hnft").unwrap_err();
    assert!(why.contains("Operation not permitted"), "{why}");

    // 4. A refusal names the command and keeps the errno; nothing of the
    // batch is applied.
    let mut bad = Script::new(TABLE);
    bad.commands = vec![
        Command::FlushSet("node".into()),
        rule("nochain", vec![], Verdict::Accept, None),
    ];
    let err = next.apply(&bad).await.unwrap_err();
    assert_eq!(err.errno(), Some(2), "{err}");
    assert!(
        err.to_string()
            .contains("`add rule inet hnft nochain accept`"),
        "{err}"
    );
    assert!(
        listing(&pair.name_a).contains("10.0.0.1"),
        "the flush was undone"
    );
    // The same when the refused command is not the last.
    bad.commands.reverse();
    let err = next.apply(&bad).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("`add rule inet hnft nochain accept`"),
        "{err}"
    );

    // A large transaction: 1,000 sets and rules, ~3,000 messages (one
    // answer each overflowed the socket's receive buffer).
    let mut large = Script::new(TABLE);
    let sets = (0..1000)
        .map(|i| (format!("s{i}"), SetKind::Prefixes))
        .collect();
    large.commands.push(Command::Declare {
        sets,
        chains: vec![("ingress".into(), Hook::Input)],
    });
    for i in 0..1000u32 {
        let set = format!("s{i}");
        large.commands.push(Command::FlushSet(set.clone()));
        let peer = Ipv4Addr::from(0x0a00_0000 + i);
        large.commands.push(Command::AddElements(
            set.clone(),
            vec![Element::Net(peer.into())],
        ));
        large.commands.push(rule(
            "ingress",
            vec![Match::InSet(Field::Source, set)],
            Verdict::Accept,
            Some("large"),
        ));
    }
    next.apply(&large).await.unwrap();
    let listed = listing(&pair.name_a);
    assert_eq!(listed.matches("comment \"large\"").count(), 1000);

    // 5. Destroy takes it all, and a table that is not there is no error.
    let mut destroy = Script::new(TABLE);
    destroy.commands = vec![Command::Destroy];
    next.apply(&destroy).await.unwrap();
    next.apply(&destroy).await.unwrap();

    // 6. A table made without the flags (by nft, or an agent before
    // them) cannot be adopted: `persist` is given only at creation. The
    // kernel says EOPNOTSUPP, and the table destroyed and made again in
    // one transaction is ours.
    nft_f(&pair.name_a, &script.to_string()).unwrap();
    let err = next.apply(&script).await.unwrap_err();
    assert_eq!(err.errno(), Some(95), "{err}");
    let mut again = script.clone();
    again.commands.insert(0, Command::Destroy);
    next.apply(&again).await.unwrap();
    assert_eq!(listing(&pair.name_a), ours);
    let why = nft_f(&pair.name_a, "flush table inet hnft").unwrap_err();
    assert!(why.contains("Operation not permitted"), "{why}");

    // 7. Not owned (a kernel without `persist`): any process may change it.
    let mut unowned = script.clone();
    unowned.commands.insert(0, Command::Destroy);
    unowned.owned = false;
    next.apply(&unowned).await.unwrap();
    assert_eq!(listing(&pair.name_a), ours);
    nft_f(&pair.name_a, "flush table inet hnft").unwrap();
}
