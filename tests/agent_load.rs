//! Load: 50 busybox containers created, started, waited and deleted
//! concurrently through the guest agent (two rounds), then nothing may be
//! left: fds, threads, mounts, cgroups, processes.

#[path = "agent_common/mod.rs"]
mod agent_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use agent_common::*;
use containerd_shim_protos::api;

const CONTAINERS: usize = 50;
/// Rounds of CONTAINERS concurrent containers (leaks checked after each).
const ROUNDS: usize = 2;
/// Threads connecting and disconnecting short-lived clients during a round.
const CHURNERS: usize = 2;

#[test]
fn fifty_concurrent_containers_leave_nothing_behind() {
    let agent = Arc::new(Agent::start("load"));
    let bundles = Arc::new(TestDir::new("load-bundles"));
    // Warm-up run (own connection, closed afterwards) so lazily created agent
    // state is part of the baseline.
    {
        let warm = agent.connect();
        let (st, out) =
            run_to_completion(&agent, &warm, &bundles.path, "warmup", &["echo", "warm"]);
        assert_eq!((st, out.as_slice()), (0, &b"warm\n"[..]));
    }
    std::thread::sleep(Duration::from_millis(200));
    let fds = agent.fds();
    let threads = agent.thread_count();

    for round in 0..ROUNDS {
        run_round(&agent, &bundles, round);
        agent.assert_clean(&bundles.path);
        agent.assert_no_fd_thread_leak(&fds, threads);
    }

    let mut r = api::ConnectRequest::new();
    r.id = String::new();
    agent
        .client
        .connect(ctx(), &r)
        .expect("agent still serving");
    let agent = Arc::try_unwrap(agent).unwrap_or_else(|_| panic!("agent still shared"));
    agent.shutdown();
}

/// One round: CONTAINERS workers, each create+start+wait+delete of its own
/// container on its own connection, all at once.
fn run_round(agent: &Arc<Agent>, bundles: &Arc<TestDir>, round: usize) {
    let barrier = Arc::new(Barrier::new(CONTAINERS));
    let started = Instant::now();
    // Clients that connect, ask one thing and hang up, over and over, while
    // the containers are created: the agent keeps starting and retiring
    // connection threads exactly when it forks containers.
    let done = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..CHURNERS)
        .map(|_| {
            let (agent, done) = (agent.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    agent
                        .connect()
                        .connect(ctx(), &api::ConnectRequest::new())
                        .expect("Connect from a short-lived client");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let workers: Vec<_> = (0..CONTAINERS)
        .map(|i| {
            let (agent, bundles, barrier) = (agent.clone(), bundles.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Each worker has its own connection (closed when it is done), so the
                // main connection's ttrpc worker pool is the same idle pool before and
                // after the load.
                // Half connect before the start signal, half after it, so
                // ttrpc connection threads come and go while containers are
                // being created (forks of a busy multi-threaded agent).
                let early = (i % 2 == 0).then(|| agent.connect());
                let id = format!("load{round}-{i}");
                let msg = format!("container {i}");
                barrier.wait();
                let client = early.unwrap_or_else(|| agent.connect());
                let (status, out) = run_to_completion(
                    &agent,
                    &client,
                    &bundles.path,
                    &id,
                    &["sh", "-c", &format!("echo {msg}; exit {}", i % 7)],
                );
                assert_eq!(status, (i % 7) as u32, "{id} exit status");
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    format!("{msg}\n"),
                    "{id} output"
                );
            })
        })
        .collect();
    let mut failures = Vec::new();
    let workers: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
    done.store(true, Ordering::Relaxed);
    let churned: u64 = churners.into_iter().map(|c| c.join().unwrap()).sum();
    println!("round {round}: {churned} short-lived client connections meanwhile");
    for (i, w) in workers.into_iter().enumerate() {
        if let Err(e) = w {
            failures.push(format!(
                "load{round}-{i}: {}",
                e.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| format!("{e:?}"))
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CONTAINERS} containers failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "round {round}: {CONTAINERS} concurrent containers done in {:?}",
        started.elapsed()
    );
}
