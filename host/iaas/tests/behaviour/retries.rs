//! What the client does with each kind of failure.

use std::time::{Duration, SystemTime};

use hostnic_iaas::{Client, Clock, Error, NicFilter, Options, SecretKey, sign};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::server::{Server, assert_no_secret, credentials_for, fail, fast, ok};

fn vxnets() -> serde_json::Value {
    ok(
        "DescribeVxNets",
        json!({"total_count": 1, "vxnet_set": [{"vxnet_id": "vxnet-a"}]}),
    )
}

#[tokio::test]
async fn busy_is_retried_until_it_succeeds() {
    let srv = Server::start(|_, n| {
        if n < 2 {
            fail(5100, "ServerBusy")
        } else {
            vxnets()
        }
    })
    .await;
    let c = srv.client(fast());
    let got = c.describe_vxnets(&["vxnet-a"]).await.unwrap();
    assert_eq!(got[0].vxnet_id, "vxnet-a");
    assert_eq!(c.calls().get("DescribeVxNets"), Some(&3));
    assert!(srv.seen().iter().all(|s| s.accepted));
}

#[tokio::test]
async fn busy_gives_up_after_connection_retries() {
    let srv = Server::start(|_, _| fail(5000, "InternalError, try later")).await;
    let mut creds = srv.credentials();
    creds.connection_retries = 2;
    let c = Client::new(creds, fast()).unwrap();
    let e = c.describe_vxnets(&["vxnet-a"]).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unavailable {
                code: 5000,
                attempts: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_transient());
    let text = e.to_string();
    assert!(
        text.starts_with("DescribeVxNets: ") && text.contains("3 attempts"),
        "{text}"
    );
    assert_eq!(c.total_calls(), 3);
    assert_no_secret(&e);
}

#[tokio::test]
async fn an_expired_request_is_resigned_with_a_fresh_time_stamp() {
    let srv = Server::start(|_, _| vxnets()).await;
    // The first time_stamp is 5 minutes old, so the server's own check
    // answers 1300; later ones are right.
    let first = std::sync::atomic::AtomicBool::new(true);
    let opts = Options {
        clock: Clock::from_fn(move || {
            let now = SystemTime::now();
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                now - Duration::from_secs(300)
            } else {
                now
            }
        }),
        ..fast()
    };
    let c = srv.client(opts);
    c.describe_vxnets(&["vxnet-a"]).await.unwrap();
    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    assert!(!seen[0].accepted && seen[1].accepted);
    assert_ne!(seen[0].get("time_stamp"), seen[1].get("time_stamp"));
    assert_ne!(seen[0].get("signature"), seen[1].get("signature"));
    let secret = SecretKey::new(crate::server::SECRET);
    assert_eq!(
        sign::verify("GET", "/iaas/", &seen[1].params, &secret),
        Ok(())
    );
}

#[tokio::test]
async fn a_skewed_clock_is_reported_as_such() {
    let srv = Server::start(|_, _| vxnets()).await;
    let opts = Options {
        clock: Clock::from_fn(|| SystemTime::now() + Duration::from_secs(600)),
        ..fast()
    };
    let c = srv.client(opts);
    let e = c.describe_vxnets(&["vxnet-a"]).await.unwrap_err();
    assert!(matches!(e, Error::ClockSkew { .. }), "{e:?}");
    assert!(e.to_string().contains("clock"), "{e}");
    assert_eq!(c.total_calls(), 2, "one re-sign, then give up");
    assert_no_secret(&e);
}

#[tokio::test]
async fn a_wrong_secret_is_not_retried_and_says_so() {
    let srv = Server::start(|_, _| vxnets()).await;
    let mut creds = srv.credentials();
    creds.secret_access_key = SecretKey::new("Wrong-secret-value");
    let c = Client::new(creds, fast()).unwrap();
    let e = c.describe_vxnets(&["vxnet-a"]).await.unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("access key id or secret access key is wrong"),
        "{text}"
    );
    assert!(
        !text.contains("Wrong-secret-value") && !format!("{e:?}").contains("Wrong-secret-value")
    );
    assert_eq!(c.total_calls(), 1);
    assert_no_secret(&e);
}

#[tokio::test]
async fn never_retried_codes() {
    for code in [1100, 1101, 1400, 2400] {
        let srv = Server::start(move |_, _| fail(code, "Nope, not now")).await;
        let c = srv.client(fast());
        let e = c.describe_vxnets(&["vxnet-a"]).await.unwrap_err();
        assert_eq!(e.ret_code(), Some(code), "{e:?}");
        assert_eq!(c.total_calls(), 1, "{code}");
        assert_no_secret(&e);
    }
}

#[tokio::test]
async fn quota_cools_the_action_down() {
    let srv = Server::start(|s, _| match s.action.as_str() {
        "CreateNics" => fail(2500, "QuotaExceeded, nic quota [64] exceeded"),
        _ => ok("DescribeNics", json!({"total_count": 0, "nic_set": []})),
    })
    .await;
    let c = srv.client(fast());
    let e = c
        .create_nics("vxnet-a", "hostnic", 1, &[])
        .await
        .unwrap_err();
    assert!(e.is_quota(), "{e:?}");
    assert!(e.to_string().contains("quota"), "{e}");
    assert_no_secret(&e);

    // Refused at once, without a request.
    let e = c
        .create_nics("vxnet-a", "hostnic", 1, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Quota { message, .. } if message.contains("nic quota")),
        "{e:?}"
    );
    assert_eq!(srv.seen_of("CreateNics").len(), 1);
    assert_eq!(c.calls().get("CreateNics"), Some(&1));
    // Other actions are not affected.
    c.describe_nics(&NicFilter::default()).await.unwrap();

    tokio::time::sleep(Duration::from_millis(350)).await;
    c.create_nics("vxnet-a", "hostnic", 1, &[])
        .await
        .unwrap_err();
    assert_eq!(
        srv.seen_of("CreateNics").len(),
        2,
        "cool-down over: sent again"
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_retried_like_busy() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed again: connections are refused
    let mut creds = credentials_for(port);
    creds.connection_retries = 2;
    let c = Client::new(creds, fast()).unwrap();
    let e = c.describe_vxnets(&["vxnet-a"]).await.unwrap_err();
    assert!(matches!(e, Error::Transport { attempts: 3, .. }), "{e:?}");
    assert!(e.is_transient());
    assert_no_secret(&e);
    // Connect failures are safe to resend even for creates.
    let e = c.create_nics("vxnet-a", "n", 1, &[]).await.unwrap_err();
    assert!(matches!(e, Error::Transport { attempts: 3, .. }), "{e:?}");
    // Nothing reached a server, so nothing counts as a cloud call.
    assert_eq!(c.total_calls(), 0);
}

#[tokio::test]
async fn a_lost_answer_is_not_resent_for_creates() {
    // Accepts, reads the request, hangs up without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
        }
    });
    let c = Client::new(credentials_for(addr), fast()).unwrap();
    let e = c.create_nics("vxnet-a", "n", 1, &[]).await.unwrap_err();
    assert!(matches!(e, Error::Transport { attempts: 1, .. }), "{e:?}");
    let e = c.describe_nics(&NicFilter::default()).await.unwrap_err();
    assert!(matches!(e, Error::Transport { attempts: 4, .. }), "{e:?}");
    assert_eq!(c.total_calls(), 5);
}

#[tokio::test]
async fn a_body_that_is_not_the_api() {
    let srv = Server::start(|_, _| json!("<html>captive portal</html>")).await;
    let c = srv.client(fast());
    let e = c.describe_vxnets(&["vxnet-a"]).await.unwrap_err();
    assert!(matches!(e, Error::Response { status: 200, .. }), "{e:?}");
    assert_eq!(c.total_calls(), 1);
}

#[tokio::test]
async fn logs_never_show_the_secret() {
    let srv = Server::start(|s, n| match s.action.as_str() {
        "CreateNics" => fail(2500, "QuotaExceeded"),
        _ if n == 1 => fail(5100, "ServerBusy"),
        _ => vxnets(),
    })
    .await;
    let first = std::sync::atomic::AtomicBool::new(true);
    let opts = Options {
        clock: Clock::from_fn(move || {
            let skew = if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                300
            } else {
                0
            };
            SystemTime::now() - Duration::from_secs(skew)
        }),
        ..fast()
    };
    let c = srv.client(opts);
    c.describe_vxnets(&["vxnet-a"]).await.unwrap(); // 1300, then 5100, then ok
    c.create_nics("vxnet-a", "n", 1, &[]).await.unwrap_err();
    let unreachable = Client::new(credentials_for(([127, 0, 0, 1], 1).into()), fast()).unwrap();
    unreachable.describe_vxnets(&["vxnet-a"]).await.unwrap_err();

    // Everything every test in this binary logged so far, at TRACE.
    let logs = crate::server::logs();
    for expected in [
        "re-signing",
        "cloud busy, retrying",
        "quota exceeded",
        "cloud unreachable",
    ] {
        assert!(logs.contains(expected), "no {expected:?} in:\n{logs}");
    }
    assert!(!logs.contains(crate::server::SECRET), "{logs}");
}

/// Every request the client sends, with its answer, reaches the observer;
/// so does every wait on a budget.
#[tokio::test]
async fn the_observer_sees_each_request_and_each_budget_wait() {
    #[derive(Debug, Default)]
    struct Seen {
        requests: std::sync::Mutex<Vec<(String, Option<i64>)>>,
        waited: std::sync::Mutex<Duration>,
    }
    impl hostnic_iaas::Observer for Seen {
        fn request(&self, action: &str, ret_code: Option<i64>, _elapsed: Duration) {
            self.requests
                .lock()
                .unwrap()
                .push((action.to_string(), ret_code));
        }
        fn budget_wait(&self, _action: &str, waited: Duration) {
            *self.waited.lock().unwrap() += waited;
        }
    }
    let srv = Server::start(|_, n| {
        if n == 0 {
            fail(5100, "ServerBusy")
        } else {
            vxnets()
        }
    })
    .await;
    let seen = std::sync::Arc::new(Seen::default());
    let opts = Options {
        // Two requests at 20/s with a burst of 1: the second waits ~50 ms.
        budget: hostnic_iaas::Budget {
            per_second: 20.0,
            burst: 1,
        },
        observer: Some(seen.clone()),
        ..fast()
    };
    let c = srv.client(opts);
    c.describe_vxnets(&["vxnet-a"]).await.unwrap();
    assert_eq!(
        *seen.requests.lock().unwrap(),
        [
            ("DescribeVxNets".to_string(), Some(5100)),
            ("DescribeVxNets".to_string(), Some(0))
        ]
    );
    let waited = *seen.waited.lock().unwrap();
    assert!(
        waited >= Duration::from_millis(20) && waited <= Duration::from_millis(100),
        "{waited:?}"
    );
}
