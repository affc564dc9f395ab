//! Per-hook call latency of the built-in default guests, the way the agent
//! calls them (a fresh store per call, the host's validation included),
//! their compile times, and the process's RSS with the three loaded.
//!
//!     cargo run --release -p hostnic-policy --example hook-latency [calls]
//!
//! Targets: p50 <= 30 us and p99 <= 200 us per call.

use std::time::{Duration, Instant};

use hostnic_policy::{
    BenchResult, HookConfig, HookStatus, IpHook, PolicyEngine, RoutesHook, VxnetHook, bench_hook,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 10_000,
    };
    let rss_start = rss_kib();
    let start = Instant::now();
    let engine = PolicyEngine::in_memory()?;
    let engine_time = start.elapsed();
    let rss_engine = rss_kib();

    let vxnet = VxnetHook::load(&engine, HookConfig::default())?;
    let ip = IpHook::load(&engine, HookConfig::default())?;
    let routes = RoutesHook::load(&engine, HookConfig::default())?;
    let rss_loaded = rss_kib();

    println!(
        "runtime: pooling allocator {}, started in {}",
        if engine.pooling() {
            "on"
        } else {
            "OFF (on-demand)"
        },
        ms(engine_time)
    );
    println!();
    println!("{:<18} {:>9} {:>10}", "guest", "bytes", "compile");
    for s in [vxnet.status(), ip.status(), routes.status()] {
        compile_line(&s);
    }
    println!();
    println!(
        "{:<18} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "hook", "calls", "p50", "p99", "mean", "max", "errors"
    );
    bench_line("vxnet-selection", &bench_hook(&vxnet, calls));
    bench_line("ip-assignment", &bench_hook(&ip, calls));
    bench_line("route-templating", &bench_hook(&routes, calls));
    let rss_end = rss_kib();

    // RoundRotate stores its position on every call: the kv store's
    // atomic file write (write, fsync, rename) is then part of each call.
    let dir = std::env::temp_dir().join(format!("hook-latency-{}", std::process::id()));
    let persisted = PolicyEngine::new(&dir)?;
    let round = VxnetHook::load(
        &persisted,
        HookConfig {
            config: r#"{"policy": "RoundRotate"}"#.into(),
            ..HookConfig::default()
        },
    )?;
    bench_line(
        "vxnet RoundRotate",
        &bench_hook(&round, (calls / 10).max(1)),
    );
    println!(
        "  (kv state persisted under {} on every call)",
        dir.display()
    );
    drop(round);
    drop(persisted);
    std::fs::remove_dir_all(&dir)?;
    println!();
    println!(
        "VmRSS: {} KiB at start, {} KiB with the runtime, {} KiB with the three \
         default guests loaded (+{} KiB), {} KiB after the benchmark",
        rss_start,
        rss_engine,
        rss_loaded,
        rss_loaded.saturating_sub(rss_engine),
        rss_end
    );
    Ok(())
}

fn compile_line(s: &HookStatus) {
    println!(
        "{:<18} {:>9} {:>10}",
        s.guest.name,
        s.module_bytes,
        ms(s.compile_time)
    );
}

fn bench_line(hook: &str, r: &BenchResult) {
    println!(
        "{:<18} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7}",
        hook,
        r.calls,
        us(r.p50),
        us(r.p99),
        us(r.mean),
        us(r.max),
        r.errors
    );
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}us", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

/// The process's resident set, from /proc/self/status (0 if unreadable).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
