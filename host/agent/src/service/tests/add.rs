//! ADD: what it records, answers and refuses, and how each failure gives
//! back what it took.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_records_commits_and_answers_a_retry_the_same() {
    let b = bed(2).await;
    let Reply::Added(first) = b.add("c1").await.unwrap() else {
        panic!()
    };
    assert_eq!(b.on_disk(), [Phase::Committed]);
    assert_eq!(b.free(), 1);
    // A retried ADD answers as before, without a second NIC.
    let Reply::Added(again) = b.add("c1").await.unwrap() else {
        panic!()
    };
    assert_eq!(again, first);
    let reserves = b.driver.script().reserves;
    assert_eq!((reserves, b.free()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_reserved() {
    let b = bed(1).await;
    let mut req = add_req("c1");
    req.mtu = Some(10);
    assert_eq!(
        code_of(b.svc.add(req, Some(pod_ns())).await),
        code::INVALID_CONFIG
    );
    let mut req = add_req("c1");
    req.target.ifname = "a/b".into();
    assert_ne!(code_of(b.svc.add(req, Some(pod_ns())).await), 0);
    assert_eq!(
        code_of(b.svc.add(add_req("c1"), None).await),
        code::INVALID_ENV
    );
    let mut req = add_req("c1");
    req.mac = Some("not-a-mac".into());
    assert_eq!(
        code_of(b.svc.add(req, Some(pod_ns())).await),
        code::INVALID_CONFIG
    );
    assert_eq!(b.driver.script().reserves, 0);
    assert!(b.on_disk().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_own_namespace_is_refused_with_code_4() {
    let mut b = bed(1).await;
    let svc = Arc::get_mut(&mut b.svc).unwrap();
    svc.namespaces = Arc::new(AnyPod {
        node: Some(pod_ns().id().unwrap()),
    });
    let e = b.add("c1").await.unwrap_err();
    assert_eq!(e.code(), code::INVALID_ENV, "{e}");
    assert!(e.msg.contains("refusing"), "{e}");
    assert_eq!(b.driver.script().reserves, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_to_reserve_leaves_nothing() {
    let b = bed(0).await;
    assert_eq!(code_of(b.add("c1").await), code::NO_FREE_NIC);
    assert!(b.on_disk().is_empty());
    assert!(b.svc.attachments.all().is_empty());
    // The key is free again: the next ADD is not told "in progress".
    assert_eq!(code_of(b.add("c1").await), code::NO_FREE_NIC);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wire_gives_the_nic_back_and_its_record_goes() {
    let b = bed(1).await;
    b.driver
        .script()
        .wire_errors
        .push_back((Kind::Internal, false));
    assert_eq!(code_of(b.add("c1").await), code::INTERNAL);
    assert_eq!(b.free(), 1);
    assert!(b.on_disk().is_empty());
    assert!(b.svc.attachments.all().is_empty());
    // And the retry succeeds with it.
    b.add("c1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wire_that_cannot_be_undone_keeps_the_nic_and_its_record_for_the_next_start() {
    let b = bed(2).await;
    b.driver
        .script()
        .wire_errors
        .push_back((Kind::Internal, true));
    assert_eq!(code_of(b.add("c1").await), code::INTERNAL);
    assert_eq!(b.driver.script().lost, [mac(1)].into());
    assert_eq!(b.on_disk(), [Phase::Reserved]);
    // The attachment is not the table's: a retry goes on with another.
    b.add("c1").await.unwrap();
    assert_eq!(b.on_disk(), [Phase::Committed, Phase::Reserved]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nic_found_gone_is_marked_and_another_tried() {
    let b = bed(2).await;
    b.driver.script().wire_errors.push_back((Kind::Gone, false));
    b.add("c1").await.unwrap();
    let s = b.driver.script();
    assert_eq!((s.reserves, s.lost.len(), s.free.len()), (2, 1, 0));
    drop(s);
    assert_eq!(b.on_disk(), [Phase::Committed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_that_cannot_be_recorded_is_given_back() {
    let b = bed(1).await;
    b.store.fail.lock().unwrap().push(Phase::Reserved);
    let e = b.add("c1").await.unwrap_err();
    assert_eq!(e.code(), code::INTERNAL);
    assert!(e.msg.contains("recording the reservation"), "{e}");
    assert_eq!(b.free(), 1);
    assert_eq!(b.driver.script().releases, 0, "nothing was wired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_cannot_be_recorded_is_taken_apart_again() {
    let b = bed(1).await;
    b.store.fail.lock().unwrap().push(Phase::Committed);
    let e = b.add("c1").await.unwrap_err();
    assert!(e.msg.contains("recording the allocation"), "{e}");
    let s = b.driver.script();
    assert_eq!((s.releases, s.free.len()), (1, 1));
    drop(s);
    assert!(b.on_disk().is_empty());
    assert!(b.svc.attachments.all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_add_of_a_key_under_way_is_told_to_come_back() {
    let b = bed(2).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    *b.driver.wire_gate.lock().unwrap() = Some(gate.clone());
    let first = {
        let svc = b.svc.clone();
        tokio::spawn(async move { svc.add(add_req("c1"), Some(pod_ns())).await })
    };
    while b.driver.script().reserves == 0 {
        tokio::task::yield_now().await;
    }
    let e = b.add("c1").await.unwrap_err();
    assert_eq!(e.code(), code::TRY_AGAIN_LATER, "{e}");
    assert!(e.msg.contains("still in progress"), "{e}");
    // A CHECK meanwhile: in progress too.
    assert_eq!(code_of(b.check("c1").await), code::TRY_AGAIN_LATER);
    gate.notify_one();
    first.await.unwrap().unwrap();
    assert_eq!(b.driver.script().reserves, 1, "one NIC for one key");
}
