//! wait_job: the early signal, and polling to success, failure or timeout.

use std::time::{Duration, Instant};

use hostnic_iaas::{Error, JobId, JobOutcome, Options};
use serde_json::{Value, json};

use crate::server::{Server, fast, ok};

/// A cloud whose AttachNics job goes through `statuses` (then stays at the
/// last one) as DescribeJobs is polled.
async fn cloud(statuses: &'static [&'static str]) -> Server {
    Server::start(move |s, n| match s.action.as_str() {
        "AttachNics" => ok("AttachNics", json!({"job_id": "j-1"})),
        "DescribeJobs" => {
            assert_eq!(s.list("jobs"), ["j-1"]);
            let status = statuses[n.min(statuses.len() - 1)];
            let job = json!({"job_id": "j-1", "job_action": "AttachNics", "status": status,
                             "resource_ids": "52:54:00:00:00:01 i-1"});
            ok("DescribeJobs", json!({"total_count": 1, "job_set": [job]}))
        }
        other => panic!("unexpected {other}"),
    })
    .await
}

fn polls(srv: &Server) -> usize {
    srv.seen_of("DescribeJobs").len()
}

#[tokio::test]
async fn the_early_signal_wins_over_polling() {
    let srv = cloud(&["working"]).await;
    let c = srv.client(fast());
    let job = c.attach_nics(&["52:54:00:00:00:01"], "i-1").await.unwrap();
    assert_eq!(job, JobId("j-1".into()));

    let start = Instant::now();
    let link_appeared = tokio::time::sleep(Duration::from_millis(100));
    assert_eq!(
        c.wait_job(&job, link_appeared).await.unwrap(),
        JobOutcome::Early
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!((1..=6).contains(&polls(&srv)), "{}", polls(&srv));

    // Already there: not a single poll.
    let before = polls(&srv);
    assert_eq!(c.wait_job(&job, async {}).await.unwrap(), JobOutcome::Early);
    assert_eq!(polls(&srv), before);
}

#[tokio::test]
async fn polls_until_successful() {
    let srv = cloud(&["pending", "working", "successful"]).await;
    let c = srv.client(fast());
    let outcome = c
        .wait_job(&JobId("j-1".into()), std::future::pending())
        .await;
    assert_eq!(outcome.unwrap(), JobOutcome::Successful);
    assert_eq!(polls(&srv), 3);
}

#[tokio::test]
async fn a_failed_job_is_an_error() {
    let srv = cloud(&["working", "failed"]).await;
    let c = srv.client(fast());
    let e = c
        .wait_job(&JobId("j-1".into()), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::JobFailed { job_id, job_action } if job_id.0 == "j-1" && job_action == "AttachNics"),
        "{e:?}"
    );
    assert_eq!(polls(&srv), 2);
}

#[tokio::test]
async fn a_slow_job_times_out() {
    let srv = cloud(&["working"]).await;
    let opts = Options {
        job_timeout: Duration::from_millis(150),
        ..fast()
    };
    let c = srv.client(opts);
    let start = Instant::now();
    let e = c
        .wait_job(&JobId("j-1".into()), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::JobTimeout { status, .. } if status == "working"),
        "{e:?}"
    );
    assert!(e.is_transient());
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(polls(&srv) >= 3, "{}", polls(&srv));
}

#[tokio::test]
async fn a_job_not_listed_yet_is_polled_again() {
    let srv = Server::start(|_, n| {
        let set: Value = if n == 0 {
            json!([])
        } else {
            json!([{"job_id": "j-1", "job_action": "DetachNics", "status": "successful"}])
        };
        ok(
            "DescribeJobs",
            json!({"total_count": set.as_array().unwrap().len(), "job_set": set}),
        )
    })
    .await;
    let c = srv.client(fast());
    let outcome = c
        .wait_job(&JobId("j-1".into()), std::future::pending())
        .await;
    assert_eq!(outcome.unwrap(), JobOutcome::Successful);
    assert_eq!(polls(&srv), 2);
}
