//! A scripted stand-in for the cloud on 127.0.0.1: it checks every request
//! the way the cloud does — signature with `sign::verify`, `time_stamp`
//! within 60 s of its own clock — answering 1200 and 1300 itself, and leaves
//! every other answer to the test's script.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use hostnic_iaas::{
    Backoff, Budget, Client, Credentials, Options, Protocol, SecretKey, params, sign,
};
use serde_json::{Value, json};

pub const SECRET: &str = "Test-SECRET-d0-not-leak";
pub const ACCESS_KEY: &str = "QYTESTACCESSKEY";

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub action: String,
    pub raw_query: String,
    pub params: Vec<(String, String)>,
    /// Whether the signature and time_stamp passed.
    pub accepted: bool,
}

impl Seen {
    pub fn get(&self, name: &str) -> Option<&str> {
        params::get(&self.params, name)
    }

    pub fn list(&self, name: &str) -> Vec<&str> {
        params::list(&self.params, name)
    }
}

/// The test's answer to an accepted request: the JSON to send, given the
/// request and how many earlier requests of its action the server saw.
/// A JSON string is sent raw (to answer garbage).
pub type Script = dyn Fn(&Seen, usize) -> Value + Send + Sync;

struct Shared {
    script: Box<Script>,
    seen: Mutex<Vec<Seen>>,
}

pub struct Server {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    pub async fn start(script: impl Fn(&Seen, usize) -> Value + Send + Sync + 'static) -> Server {
        capture_logs();
        let shared = Arc::new(Shared {
            script: Box::new(script),
            seen: Mutex::default(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { addr, shared }
    }

    pub fn credentials(&self) -> Credentials {
        credentials_for(self.addr)
    }

    pub fn client(&self, opts: Options) -> Client {
        Client::new(self.credentials(), opts).unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn seen_of(&self, action: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.action == action)
            .collect()
    }
}

pub fn credentials_for(addr: SocketAddr) -> Credentials {
    capture_logs();
    let mut c = Credentials::new(ACCESS_KEY, SecretKey::new(SECRET), "PEK3A");
    c.protocol = Protocol::Http;
    c.host = addr.ip().to_string();
    c.port = addr.port();
    c.connection_retries = 3;
    c.connection_timeout = 5;
    c
}

/// Everything small, so tests take milliseconds.
pub fn fast() -> Options {
    Options {
        budget: Budget::UNLIMITED,
        backoff: Backoff {
            base: Duration::from_millis(2),
            max: Duration::from_millis(10),
        },
        quota_cooldown: Duration::from_millis(300),
        job_poll_interval: Duration::from_millis(20),
        job_timeout: Duration::from_secs(5),
        ..Options::default()
    }
}

pub fn ok(action: &str, mut body: Value) -> Value {
    body["action"] = json!(format!("{action}Response"));
    body["ret_code"] = json!(0);
    body
}

pub fn fail(code: i64, message: &str) -> Value {
    json!({ "ret_code": code, "message": message })
}

/// The secret must not appear in anything a user or a log can see.
pub fn assert_no_secret(e: &dyn std::error::Error) {
    let mut texts = vec![e.to_string(), format!("{e:?}")];
    let mut cause = e.source();
    while let Some(c) = cause {
        texts.push(c.to_string());
        cause = c.source();
    }
    for t in texts {
        assert!(!t.contains(SECRET), "secret in error text: {t}");
    }
}

async fn handle(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let raw_query = uri.query().unwrap_or_default().to_string();
    let params = sign::decode_query(&raw_query).unwrap_or_default();
    let action = params::get(&params, "action")
        .unwrap_or_default()
        .to_string();
    let signed = sign::verify(
        method.as_str(),
        uri.path(),
        &params,
        &SecretKey::new(SECRET),
    );
    let fresh = params::get(&params, "time_stamp")
        .is_some_and(|t| sign::time_stamp_fresh(t, SystemTime::now()));
    let seen = Seen {
        action: action.clone(),
        raw_query,
        params,
        accepted: signed.is_ok() && fresh,
    };
    let earlier = {
        let mut all = shared.seen.lock().unwrap();
        let n = all.iter().filter(|s| s.action == action).count();
        all.push(seen.clone());
        n
    };
    let answer = if let Err(e) = signed {
        fail(1200, &format!("AuthFailure, {e}"))
    } else if !fresh {
        fail(
            1300,
            "RequestExpired, the time_stamp is too far from the server's clock",
        )
    } else {
        (shared.script)(&seen, earlier)
    };
    let body = match answer {
        Value::String(raw) => raw,
        v => v.to_string(),
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Everything logged in this test process, at every level: one global
/// subscriber (a per-test `set_default` would race other tests over
/// tracing's global callsite cache).
static LOGS: OnceLock<Sink> = OnceLock::new();

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    LOGS.get_or_init(|| {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        sink
    });
}

pub fn logs() -> String {
    let sink = LOGS
        .get()
        .expect("logs are captured from the first server on");
    String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned()
}
