//! CHECK, GC and the start's restore.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_what_is_wrong() {
    let b = bed(1).await;
    assert_eq!(code_of(b.check("c1").await), code::UNKNOWN_CONTAINER);
    let Reply::Added(result) = b.add("c1").await.unwrap() else {
        panic!()
    };
    b.check("c1").await.unwrap();
    b.driver.script().verify_diff = Some("interface eth0 is down".into());
    let e = b.check("c1").await.unwrap_err();
    assert_eq!(e.code(), code::CHECK_FAILED);
    assert!(e.msg.contains("is down"), "{e}");
    b.driver.script().verify_diff = None;
    // The runtime's cached result must show our address.
    let mut prev = result.encode(hostnic_proto::cni::Version::V1_0_0, None);
    prev["ips"][0]["address"] = "10.9.9.9/24".into();
    let e = b
        .svc
        .check(
            CheckRequest {
                target: target("c1"),
                prev_result: Some(prev),
            },
            Some(pod_ns()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), code::CHECK_FAILED, "{e}");
    assert_eq!(
        code_of(
            b.svc
                .check(
                    CheckRequest {
                        target: target("c1"),
                        prev_result: None
                    },
                    None
                )
                .await
        ),
        code::INVALID_ENV
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_releases_what_the_runtime_no_longer_lists_and_names_what_failed() {
    let b = bed(3).await;
    for c in ["keep", "drop1", "drop2"] {
        b.add(c).await.unwrap();
    }
    let gc = |valid: &[&str]| GcRequest {
        network: "net".into(),
        valid: valid
            .iter()
            .map(|c| AttachmentKey {
                container_id: c.to_string(),
                ifname: "eth0".into(),
            })
            .collect(),
    };
    b.driver.script().release_failures = 1;
    let e = b.svc.gc(gc(&["keep"])).await.unwrap_err();
    assert!(e.msg.contains("released 1 attachments but failed"), "{e}");
    assert_eq!(b.driver.script().abandoned.len(), 1);
    // The one whose release failed waits for the next start; the other
    // went, the listed one stays.
    assert_eq!(
        b.svc
            .attachments
            .all()
            .into_iter()
            .map(|r| r.key.container_id)
            .collect::<Vec<_>>(),
        ["keep"]
    );
    assert!(matches!(
        b.svc.gc(gc(&["keep"])).await.unwrap(),
        Reply::Collected { released: 0 }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_keeps_what_lives_and_drops_the_rest_of_the_records() {
    let b = bed(3).await;
    b.add("c1").await.unwrap();
    // A reservation whose ADD never answered (an agent killed mid-ADD).
    let stale = Record {
        phase: Phase::Reserved,
        wiring: None,
        holds: Holds::Nic { mac: mac(3) },
        key: crate::record::Key {
            network: "net".into(),
            container_id: "killed".into(),
            ifname: "eth0".into(),
        },
        ..b.svc.attachments.all()[0].clone()
    };
    b.store.put(&stale).unwrap();
    let loaded = Store::open(b.dir.path()).unwrap().load().unwrap();
    // A new agent on the same records.
    let again = bed(3).await;
    let store = Store::open(b.dir.path()).unwrap();
    let svc = Service {
        store: Arc::new(store),
        attachments: Arc::new(Attachments::default()),
        ..Arc::try_unwrap(again.svc).unwrap()
    };
    svc.restore(loaded).await.unwrap();
    let live: Vec<String> = svc
        .attachments
        .all()
        .into_iter()
        .map(|r| r.key.container_id)
        .collect();
    assert_eq!(live, ["c1"]);
    assert_eq!(b.on_disk(), [Phase::Committed], "the stale record went");
}
