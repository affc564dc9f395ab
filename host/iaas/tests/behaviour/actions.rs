//! The typed actions: what goes on the wire and how answers are read.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hostnic_iaas::{
    Budget, Error, NicFilter, NicStatus, Options, ResourceTagPair, Share, TagFilter, TagId, sign,
};
use serde_json::json;

use crate::server::{SECRET, Server, fail, fast, ok};

fn mac(i: usize) -> String {
    format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256)
}

#[tokio::test]
async fn count_nics_asks_for_one_item_and_reads_total_count() {
    let srv = Server::start(|_, _| {
        ok(
            "DescribeNics",
            json!({"total_count": 173, "nic_set": [{"nic_id": mac(0), "vxnet_id": "vxnet-a", "status": "in-use"}]}),
        )
    })
    .await;
    let c = srv.client(fast());
    assert_eq!(c.count_nics("vxnet-a").await.unwrap(), 173);
    let seen = srv.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].list("vxnets"), ["vxnet-a"]);
    assert_eq!(
        (seen[0].get("offset"), seen[0].get("limit")),
        (Some("0"), Some("1"))
    );
}

#[tokio::test]
async fn describe_nics_follows_pages_to_total_count() {
    let srv = Server::start(|s, _| {
        let offset: usize = s.get("offset").unwrap().parse().unwrap();
        let limit: usize = s.get("limit").unwrap().parse().unwrap();
        let set: Vec<_> = (offset..(offset + limit).min(250))
            .map(|i| json!({"nic_id": mac(i), "vxnet_id": "vxnet-a", "status": "available"}))
            .collect();
        ok("DescribeNics", json!({"total_count": 250, "nic_set": set}))
    })
    .await;
    let c = srv.client(fast());
    let filter = NicFilter {
        vxnets: vec!["vxnet-a".into()],
        status: Some(NicStatus::Available),
        nic_name: Some("hostnic pool".into()),
        ..NicFilter::default()
    };
    let nics = c.describe_nics(&filter).await.unwrap();
    assert_eq!(nics.len(), 250);
    assert!(nics.iter().enumerate().all(|(i, n)| n.nic_id == mac(i)));
    assert_eq!(c.calls().get("DescribeNics"), Some(&3));

    let seen = srv.seen();
    let pages: Vec<_> = seen
        .iter()
        .map(|s| (s.get("offset"), s.get("limit")))
        .collect();
    assert_eq!(
        pages,
        [
            (Some("0"), Some("100")),
            (Some("100"), Some("100")),
            (Some("200"), Some("100"))
        ]
    );
    for s in &seen {
        assert_eq!(s.list("vxnets"), ["vxnet-a"]);
        assert_eq!(s.get("status"), Some("available"));
        assert_eq!(s.get("nic_name"), Some("hostnic pool"));
        assert!(
            s.raw_query.contains("nic_name=hostnic%20pool"),
            "{}",
            s.raw_query
        );
        assert!(s.get("nics.1").is_none() && s.get("instances.1").is_none());
    }
}

#[tokio::test]
async fn requests_carry_the_common_parameters() {
    let srv = Server::start(|s, _| match s.action.as_str() {
        "CreateNics" => ok(
            "CreateNics",
            json!({"nics": [{"nic_id": mac(1), "private_ip": "10.0.0.7"}, {"nic_id": mac(2), "private_ip": "10.0.0.8"}]}),
        ),
        "AttachTags" => ok("AttachTags", json!({})),
        "CreateTag" => ok("CreateTag", json!({"tag_id": "tag-9"})),
        "DescribeInstances" => ok(
            "DescribeInstances",
            json!({"total_count": 1, "instance_set": [{"instance_id": "i-1", "vxnets": [{"vxnet_id": "vxnet-0", "nic_id": mac(0), "role": 1}]}]}),
        ),
        "DescribeTags" => ok("DescribeTags", json!({"total_count": 0, "tag_set": []})),
        other => panic!("unexpected {other}"),
    })
    .await;
    let c = srv.client(fast());
    let ips = [Ipv4Addr::new(10, 0, 0, 7), Ipv4Addr::new(10, 0, 0, 8)];
    let created = c.create_nics("vxnet-a", "hostnic", 2, &ips).await.unwrap();
    assert_eq!(created[1].private_ip, Some(ips[1]));
    let tag = c.create_tag("hostnic/cluster-1").await.unwrap();
    assert_eq!(tag, TagId("tag-9".into()));
    let pairs: Vec<_> = created
        .iter()
        .map(|n| ResourceTagPair {
            tag_id: tag.clone(),
            resource_type: "nic".into(),
            resource_id: n.nic_id.clone(),
        })
        .collect();
    c.attach_tags(&pairs).await.unwrap();
    let inst = c.describe_instances(&["i-1"]).await.unwrap();
    assert!(inst[0].vxnets[0].role == 1);
    let filter = TagFilter {
        search_word: Some("hostnic".into()),
        ..TagFilter::default()
    };
    c.describe_tags(&filter).await.unwrap();

    let seen = srv.seen();
    for s in &seen {
        assert!(s.accepted, "{s:?}");
        assert_eq!(s.get("zone"), Some("pek3a"), "zone is sent in lower case");
        assert_eq!(s.get("version"), Some("1"));
        assert_eq!(s.get("signature_method"), Some("HmacSHA256"));
        assert_eq!(s.get("signature_version"), Some("1"));
        assert_eq!(s.get("access_key_id"), Some(crate::server::ACCESS_KEY));
        let ts = s.get("time_stamp").unwrap();
        assert!(
            ts.len() == 20 && ts.ends_with('Z') && sign::parse_time_stamp(ts).is_some(),
            "{ts}"
        );
        assert!(s.raw_query.contains("time_stamp=") && s.raw_query.contains("%3A"));
        assert!(!s.raw_query.contains(SECRET));
        assert!(!s.raw_query.contains('+'), "{}", s.raw_query);
    }
    let create = &seen[0];
    assert_eq!(create.get("count"), Some("2"));
    assert_eq!(create.get("vxnet"), Some("vxnet-a"));
    assert_eq!(create.list("private_ips"), ["10.0.0.7", "10.0.0.8"]);
    assert_eq!(seen[1].get("tag_name"), Some("hostnic/cluster-1"));
    let attach = &seen[2];
    assert_eq!(attach.get("resource_tag_pairs.1.tag_id"), Some("tag-9"));
    assert_eq!(
        attach.get("resource_tag_pairs.2.resource_type"),
        Some("nic")
    );
    assert_eq!(
        attach.get("resource_tag_pairs.2.resource_id"),
        Some(mac(2).as_str())
    );
    assert_eq!(seen[3].get("verbose"), Some("1"));
    assert_eq!(seen[3].list("instances"), ["i-1"]);
    assert_eq!(seen[4].get("search_word"), Some("hostnic"));
    assert_eq!(seen[4].get("verbose"), Some("1"));

    // Invalid requests are refused before anything is sent.
    let before = c.total_calls();
    for e in [
        c.create_nics("vxnet-a", "x", 3, &ips).await.unwrap_err(),
        c.create_nics("vxnet-a", "x", 0, &[]).await.unwrap_err(),
        c.create_nics("vxnet-a", "x", 253, &[]).await.unwrap_err(),
        c.attach_nics::<&str>(&[], "i-1").await.unwrap_err(),
    ] {
        assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
    }
    c.attach_tags(&[]).await.unwrap();
    assert_eq!(c.detach_nics::<&str>(&[]).await.unwrap(), []);
    assert_eq!(c.total_calls(), before);
}

#[tokio::test]
async fn not_found_on_delete_and_detach_means_done() {
    let gone = mac(2);
    let srv = Server::start(move |s, n| {
        let nics = s.list("nics");
        match s.action.as_str() {
            _ if nics.contains(&gone.as_str()) => {
                fail(2100, "ResourceNotFound, resource not found")
            }
            "DetachNics" => ok("DetachNics", json!({"job_id": format!("j-{n}")})),
            "DeleteNics" => ok("DeleteNics", json!({})),
            _ => fail(2100, "ResourceNotFound"),
        }
    })
    .await;
    let c = srv.client(fast());
    c.delete_nics(&[mac(2)]).await.unwrap();
    assert_eq!(c.calls().get("DeleteNics"), Some(&1));

    // One missing NIC fails the batch; the others are still detached.
    let jobs = c.detach_nics(&[mac(1), mac(2), mac(3)]).await.unwrap();
    assert_eq!(jobs.len(), 2);
    let detached: Vec<_> = srv
        .seen_of("DetachNics")
        .iter()
        .filter(|s| s.list("nics").len() == 1 && s.list("nics")[0] != mac(2))
        .map(|s| s.list("nics")[0].to_string())
        .collect();
    assert_eq!(detached, [mac(1), mac(3)]);
    assert_eq!(c.calls().get("DetachNics"), Some(&4));

    // Elsewhere 2100 is an error.
    let e = c.describe_vxnets(&["vxnet-x"]).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
}

#[tokio::test]
async fn the_token_bucket_spreads_a_burst() {
    let srv =
        Server::start(|_, _| ok("DescribeJobs", json!({"total_count": 0, "job_set": []}))).await;
    let opts = Options {
        budgets: [(
            "DescribeJobs".to_string(),
            Budget {
                per_second: 20.0,
                burst: 2,
            },
        )]
        .into(),
        ..fast()
    };
    let c = srv.client(opts);
    let start = Instant::now();
    // Concurrent: each reserves its token on arrival and waits its turn.
    for r in futures::future::join_all((0..6).map(|_| c.describe_jobs(&[]))).await {
        r.unwrap();
    }
    // 2 at once, 4 more at 20/s: the last one 200 ms in.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(190), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Another action has its own (here unlimited) budget.
    let start = Instant::now();
    for _ in 0..6 {
        c.describe_tags(&TagFilter::default()).await.ok();
    }
    assert!(
        start.elapsed() < Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn the_pace_spans_every_action_and_a_refusal_slows_the_node() {
    // The first DescribeJobs is refused for the account's rate (5100).
    let srv = Server::start(|seen, n| match (seen.action.as_str(), n) {
        ("DescribeJobs", 0) => fail(5100, "ServerBusy, too many requests"),
        ("DescribeJobs", _) => ok("DescribeJobs", json!({"total_count": 0, "job_set": []})),
        _ => ok("DescribeTags", json!({"total_count": 0, "tag_set": []})),
    })
    .await;
    // Node 1 of 2 sharing 40 requests a second: its slots are 50 ms apart.
    let c = srv.client(Options {
        share: Some(Share {
            account_rate: 40.0,
            nodes: 2,
            node: 1,
        }),
        ..fast()
    });
    assert_eq!(c.pace(), (20.0, 20.0));
    // Two actions, one pace: 10 requests take 9 slots at least, whatever
    // their actions.
    let start = Instant::now();
    for i in 0..10 {
        if i % 2 == 0 {
            c.describe_tags(&TagFilter::default()).await.unwrap();
        } else {
            c.describe_jobs(&[]).await.unwrap();
        }
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(440),
        "10 requests at 20/s in {took:?}"
    );
    // The refusal (its retry succeeded) halved the node's rate, for every
    // action; it climbs back from there.
    let (rate, share) = c.pace();
    assert_eq!(share, 20.0);
    assert!(rate < 20.0 * 0.75, "the rate after a 5100: {rate}");
    // A new share applies to the client's clones too, at once.
    c.clone().set_share(Share::alone(5.0)).unwrap();
    assert!(c.pace().0 <= 5.0);
    assert!(c.set_share(Share::alone(0.0)).is_err());
    let outside = Share {
        account_rate: 20.0,
        nodes: 2,
        node: 2,
    };
    assert!(c.set_share(outside).is_err());
}
