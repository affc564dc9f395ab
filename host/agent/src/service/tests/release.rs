//! DEL and the release behind it: answered at once, finished in the
//! background, waited for by an ADD that needs it, left for the next
//! start when it keeps failing.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_answers_before_the_release_and_an_add_into_the_namespace_waits_for_it() {
    let b = bed(1).await;
    b.add("c1").await.unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    *b.driver.release_gate.lock().unwrap() = Some(gate.clone());
    assert!(matches!(b.del("c1").await.unwrap(), Reply::Deleted));
    // Answered: the release is recorded, the NIC not back yet.
    assert_eq!(b.on_disk(), [Phase::Releasing]);
    assert_eq!(b.free(), 0);
    // An ADD into the same namespace waits for the release, then gets the
    // NIC it frees.
    let add = {
        let svc = b.svc.clone();
        tokio::spawn(async move { svc.add(add_req("c2"), Some(pod_ns())).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!add.is_finished(), "the ADD went on before the release");
    gate.notify_one();
    add.await.unwrap().unwrap();
    assert_eq!(b.on_disk(), [Phase::Committed]);
    // DEL of what is not there, or twice: fine.
    b.del("never").await.unwrap();
    b.del("c1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_of_a_key_whose_release_is_under_way_waits_for_it() {
    let b = bed(1).await;
    b.add("c1").await.unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    *b.driver.release_gate.lock().unwrap() = Some(gate.clone());
    b.del("c1").await.unwrap();
    // The same key again from another namespace (a runtime reusing its
    // ids): it waits for the release, then gets the NIC it frees.
    let add = {
        let svc = b.svc.clone();
        tokio::spawn(async move { svc.add(add_req("c1"), Some(other_pod_ns())).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!add.is_finished(), "the ADD did not wait for the release");
    gate.notify_one();
    assert!(matches!(add.await.unwrap().unwrap(), Reply::Added(_)));
    assert_eq!(b.on_disk(), [Phase::Committed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_keeps_failing_is_left_for_the_next_start() {
    let b = bed(1).await;
    b.add("c1").await.unwrap();
    b.driver.script().release_failures = 10;
    b.del("c1").await.unwrap();
    b.settled().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while b.driver.script().abandoned.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the release was given up");
    let s = b.driver.script();
    assert_eq!((s.releases, s.free.len()), (4, 0), "tried four times");
    drop(s);
    assert_eq!(b.on_disk(), [Phase::Releasing], "for the next start");
    assert!(b.svc.attachments.all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_cannot_be_recorded_is_done_at_once() {
    let b = bed(1).await;
    b.add("c1").await.unwrap();
    b.store.fail.lock().unwrap().push(Phase::Releasing);
    b.del("c1").await.unwrap();
    // Done before DEL answered: nothing to finish in the background.
    let releases = b.driver.script().releases;
    assert_eq!((releases, b.free()), (1, 1));
    assert!(b.on_disk().is_empty());
}
