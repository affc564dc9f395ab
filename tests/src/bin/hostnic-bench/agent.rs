//! The agent under load and across restarts: STATUS while a thousand
//! clients hold connections, and start to serving with the compiled-guest
//! cache empty and warm.

use std::time::{Duration, Instant};

use hostnic_testbed::{CallEnv, Testbed};
use serde_json::Value;

use crate::{EXEC_SAMPLES, expect_ok, sample};

/// STATUS through the executable while 900 idle and 100 slow clients hold
/// connections to the agent.
pub fn status_with_idle_clients(tb: &Testbed, conf: &Value) -> anyhow::Result<Vec<Duration>> {
    use std::os::unix::net::UnixStream;
    let idle: Vec<UnixStream> = (0..900)
        .map(|_| UnixStream::connect(tb.socket()))
        .collect::<Result<_, _>>()?;
    let slow: Vec<UnixStream> = (0..100)
        .map(|_| -> anyhow::Result<UnixStream> {
            let s = UnixStream::connect(tb.socket())?;
            hostnic_testbed::rawclient::send(&s, &1000u32.to_be_bytes(), &[])?;
            Ok(s)
        })
        .collect::<Result<_, _>>()?;
    let took = sample(EXEC_SAMPLES, || {
        for s in &slow {
            // The agent cuts slow clients off after 3 s; that is fine.
            let _ = hostnic_testbed::rawclient::send(s, b" ", &[]);
        }
        let t = Instant::now();
        expect_ok(tb.hostnic().call("STATUS", conf, &CallEnv::default()))?;
        Ok(t.elapsed())
    })?;
    drop((idle, slow));
    Ok(took)
}

/// Agent start to serving (its socket accepts), with the compiled-guest
/// cache emptied before each start, then warm.
pub fn restart_to_serving(tb: &Testbed) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let cache = tb.state_dir().join("policy/compiled");
    let time = |cold: bool| -> anyhow::Result<Duration> {
        if cold && cache.exists() {
            std::fs::remove_dir_all(&cache)?;
        }
        let t = Instant::now();
        let agent = tb.start_agent()?;
        let took = t.elapsed();
        drop(agent);
        Ok(took)
    };
    let cold = (0..5).map(|_| time(true)).collect::<Result<_, _>>()?;
    let warm = (0..5).map(|_| time(false)).collect::<Result<_, _>>()?;
    Ok((cold, warm))
}
