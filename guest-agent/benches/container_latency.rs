//! Container latency through the guest agent on the host (as root):
//! `cargo bench -p guest-agent --bench container_latency`.
//!
//! Starts the agent in new mount and pid namespaces (like the host tests),
//! then runs a busybox container executing `true` RUNS times and reports
//! p50/p99/min/max of create+start+wait, and of delete separately. Bundle
//! preparation (copying the rootfs, writing config.json) is not timed.
//! `BENCH_RUNS` overrides the run count; the agent logs at `warn` unless
//! `AGENT_TEST_LOG_LEVEL` says otherwise.

#[path = "../../tests/agent_common/mod.rs"]
mod agent_common;

use std::time::{Duration, Instant};

use agent_common::*;

const DEFAULT_RUNS: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    println!(
        "{what:<22} runs={:<4} p50={:>8.2} ms  p99={:>8.2} ms  min={:>8.2} ms  max={:>8.2} ms",
        samples.len(),
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 99.0)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
}

fn main() {
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RUNS);
    // Debug logging of every container would be measured too.
    let level = std::env::var("AGENT_TEST_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    let agent = Agent::start_with_log_level("bench", &level);
    let bundles = TestDir::new("bench-bundles");
    let mut run_times = Vec::with_capacity(runs);
    let mut create_times = Vec::with_capacity(runs);
    let mut start_wait_times = Vec::with_capacity(runs);
    let mut delete_times = Vec::with_capacity(runs);
    let spec = spec(&["true"], false);
    for i in 0..runs {
        let id = format!("bench{i}");
        let bundle = Bundle::new(&bundles.path, &id, &spec);
        let t0 = Instant::now();
        agent
            .client
            .create(ctx(), &create_req(&id, &bundle, false, "", "", ""))
            .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
        let t_created = Instant::now();
        agent
            .client
            .start(ctx(), &start_req(&id, ""))
            .unwrap_or_else(|e| panic!("start {id}: {e:?}"));
        let w = agent
            .client
            .wait(ctx(), &wait_req(&id, ""))
            .unwrap_or_else(|e| panic!("wait {id}: {e:?}"));
        let t1 = Instant::now();
        assert_eq!(w.exit_status, 0, "{id}: `true` exited {}", w.exit_status);
        agent
            .client
            .delete(ctx(), &delete_req(&id, ""))
            .unwrap_or_else(|e| panic!("delete {id}: {e:?}"));
        let t2 = Instant::now();
        run_times.push(t1 - t0);
        create_times.push(t_created - t0);
        start_wait_times.push(t1 - t_created);
        delete_times.push(t2 - t1);
        std::fs::remove_dir_all(&bundle.dir).unwrap();
    }
    agent.assert_clean(&bundles.path);
    println!("guest-agent container latency (busybox `true`, host, unix socket):");
    report("create+start+wait", &mut run_times);
    report("  create", &mut create_times);
    report("  start+wait", &mut start_wait_times);
    report("delete", &mut delete_times);
    agent.shutdown();
}
