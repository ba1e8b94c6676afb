//! `cluster` mode: three nodes with the real runtime (threads, loopback TCP,
//! on-disk storage with fdatasync in a temp dir) in this process, and
//! `clients` threads each keeping one proposal outstanding (closed loop);
//! with `--client-tasks` the clients are tasks on one tokio thread instead,
//! and with `--rate` proposals come at a fixed rate (open loop).
//!
//! The machine's fdatasync p50 and loopback round-trip p50 are measured in
//! the same run, so latency can be read against them. At the end every node
//! must hold the same chosen log (digest of the ordered stream).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use spaxos::{Config, Metrics, Outcome, Role, Spaxos};

use crate::digest::Digest;

/// Options of the `cluster` mode.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Proposals to choose (ignored with --secs).
    #[arg(long, default_value_t = 100_000)]
    n: u64,
    /// Run for this many seconds instead of --n proposals.
    #[arg(long)]
    secs: Option<f64>,
    /// Client threads, each with one proposal outstanding.
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Run the `--clients` closed-loop clients as tasks on one tokio
    /// thread, each awaiting its proposal's handle, instead of as threads
    /// that block on it: what an application using the async API gets, and
    /// how much of the threaded loop's cost is waking one thread per
    /// answered proposal.
    #[arg(long, default_value_t = false)]
    client_tasks: bool,
    /// Open loop instead: propose at this many proposals per second
    /// whatever the latency (one issuing thread, outcomes awaited on a
    /// tokio runtime), timing each from when it was due, so a stall shows
    /// in every proposal that was due during it. `--clients` is ignored.
    #[arg(long)]
    rate: Option<f64>,
    /// Payload bytes per proposal.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Which node the clients propose on.
    #[arg(long, value_enum, default_value_t = Target::Leader)]
    target: Target,
    /// Send a leader's accepts before its own write is durable (the
    /// config's `send_accepts_before_persist`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    accepts_before_persist: bool,
    /// Longest hold of new proposals while answered proposers are expected
    /// back (the config's `propose_gather_us`; 0 = off).
    #[arg(long, default_value_t = spaxos::config::defaults::PROPOSE_GATHER_US)]
    propose_gather_us: u64,
    /// Checkpoint (let storage reclaim) every this many chosen entries; 0 = never.
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u64,
    /// Directory for the nodes' data (a temp dir inside it).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Target {
    /// Every client proposes on the leader.
    Leader,
    /// Clients spread over all nodes (followers forward to the leader).
    All,
}

impl Target {
    /// The node (position in the cluster) client number `client` proposes on.
    fn node_of(self, client: u64, leader: usize, nodes: usize) -> usize {
        match self {
            Target::Leader => leader,
            Target::All => client as usize % nodes,
        }
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// p50 of write + fdatasync of one 4 KiB page appended to a file in `dir`.
fn fsync_p50_us(dir: &Path) -> Result<f64, String> {
    let path = dir.join("fsync-probe");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let page = vec![7u8; 4096];
    let mut samples = Vec::new();
    for i in 0..300u64 {
        let t = Instant::now();
        file.write_all_at(&page, i * 4096)
            .map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_file(&path);
    Ok(median(&mut samples))
}

/// p50 of a 100-byte ping-pong over loopback TCP between two threads.
fn rtt_p50_us() -> Result<f64, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 100];
        loop {
            if s.read_exact(&mut buf).is_err() {
                return Ok(());
            }
            s.write_all(&buf)?;
        }
    });
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = [1u8; 100];
    let mut samples = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        s.write_all(&buf).map_err(|e| e.to_string())?;
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(s);
    let _ = echo.join();
    Ok(median(&mut samples))
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// Starts the cluster, again with new ports and a new directory if a node
/// fails to start: the ports are found free and then bound by the nodes,
/// and another process may take one in between. The error goes to stderr.
fn start_cluster_retrying(dir: &Path, args: &ClusterArgs) -> Result<Vec<Spaxos>, String> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        match start_cluster(&dir.join(format!("attempt{attempt}")), args) {
            Ok(nodes) => return Ok(nodes),
            Err(error) if attempt < ATTEMPTS => {
                eprintln!("cluster start failed ({error}); retrying with new ports");
                attempt += 1;
            }
            Err(error) => return Err(format!("cluster start failed {ATTEMPTS} times: {error}")),
        }
    }
}

fn start_cluster(dir: &Path, args: &ClusterArgs) -> Result<Vec<Spaxos>, String> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    let groups: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::json!({"id": i + 1, "ip": "127.0.0.1", "port": ports[i]}))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let json = serde_json::json!({
            "selfid": id,
            "groups": groups,
            "path": dir.join(format!("node{id}")),
            "stimeout": {"heartbeat": 50, "instimeoutbase": 300, "instimeoutrange": 150},
            "send_accepts_before_persist": args.accepts_before_persist,
            "propose_gather_us": args.propose_gather_us,
            // Every client may have a proposal queued on any node.
            "proposal_queue_max": (args.clients as usize * 4).max(1024),
        });
        let config = Config::from_json(&json.to_string()).map_err(|e| e.to_string())?;
        nodes.push(Spaxos::start(config).map_err(|e| format!("node {id}: {e}"))?);
    }
    Ok(nodes)
}

/// Work the nodes did during the load (metrics after minus before).
struct Cost {
    leader_rounds: u64,
    held_rounds: u64,
    storage_writes: u64,
    deferred_writes: u64,
    records_written: u64,
    frames_sent: u64,
    write_batches: u64,
}

impl Cost {
    fn measure(nodes: &[Spaxos], before: &[Metrics], leader: usize) -> Cost {
        let after: Vec<Metrics> = nodes.iter().map(|n| n.metrics()).collect();
        let sum = |field: fn(&Metrics) -> u64| -> u64 {
            after
                .iter()
                .zip(before)
                .map(|(a, b)| field(a).saturating_sub(field(b)))
                .sum()
        };
        Cost {
            leader_rounds: after[leader].rounds.saturating_sub(before[leader].rounds),
            held_rounds: sum(|m| m.held_rounds),
            storage_writes: sum(|m| m.storage_writes),
            deferred_writes: sum(|m| m.deferred_writes),
            records_written: sum(|m| m.records_written),
            frames_sent: sum(|m| m.transport.frames_sent),
            write_batches: sum(|m| m.transport.write_batches),
        }
    }
}

fn wait_for_leader(nodes: &[Spaxos], timeout: Duration) -> Result<usize, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(i) = nodes.iter().position(|n| n.status().role == Role::Leader) {
            // All nodes follow it.
            let leader = nodes[i].id();
            if nodes.iter().all(|n| n.status().leader == Some(leader)) {
                return Ok(i);
            }
        }
        if Instant::now() > deadline {
            return Err("no stable leader".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Digest of a node's log through `through`, read from its ordered stream.
fn digest(node: &Spaxos, through: u64) -> Result<Digest, String> {
    let mut stream = node.ordered_from(1);
    let mut digest = Digest::default();
    for _ in 1..=through {
        let item = stream
            .recv_timeout(Duration::from_secs(30))
            .map_err(|e| format!("node {} stream: {e}", node.id()))?;
        digest.add(&item);
    }
    Ok(digest)
}

/// Latencies in ns, up to two minutes.
fn latency_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).map_err(|e| e.to_string())
}

/// What the load's threads count, shared by all of them.
struct Tally {
    start: Instant,
    /// Proposals issued; the closed loop's clients take their reqids from it.
    issued: AtomicU64,
    chosen: AtomicU64,
    errors: AtomicU64,
    max_index: AtomicU64,
    /// When the last proposal finished (ns after `start`): the run's
    /// length. The main loop notices the end only at its next 50 ms poll,
    /// which would add up to 50 ms to a run of about a second.
    last_finished_ns: AtomicU64,
    /// Every chosen proposal's latency.
    latencies: Mutex<Histogram<u64>>,
}

impl Tally {
    fn new() -> Result<Tally, String> {
        Ok(Tally {
            start: Instant::now(),
            issued: AtomicU64::new(0),
            chosen: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            max_index: AtomicU64::new(0),
            last_finished_ns: AtomicU64::new(0),
            latencies: Mutex::new(latency_histogram()?),
        })
    }

    /// One proposal finished with `outcome` (None: an error); a chosen
    /// one's latency goes to `latencies`.
    fn count(&self, outcome: Option<Outcome>, latency: Duration, latencies: &mut Histogram<u64>) {
        match outcome {
            Some(Outcome::Chosen { index }) => {
                let _ = latencies.record(latency.as_nanos() as u64);
                self.chosen.fetch_add(1, Ordering::Relaxed);
                self.max_index.fetch_max(index, Ordering::Relaxed);
            }
            _ => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.last_finished_ns
            .fetch_max(self.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// The reqid of a closed-loop client's next proposal, or None once the
    /// run is stopped or `limit` proposals were issued.
    fn next_reqid(&self, stop: &AtomicBool, limit: u64) -> Option<u64> {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        (n < limit).then_some(n + 1)
    }

    /// Adds a client's latencies to the run's.
    fn merge(&self, latencies: &Histogram<u64>) {
        self.latencies
            .lock()
            .expect("histogram lock")
            .add(latencies)
            .expect("same bounds");
    }

    /// Proposals with an outcome, chosen or not.
    fn finished(&self) -> u64 {
        self.chosen.load(Ordering::Relaxed) + self.errors.load(Ordering::Relaxed)
    }
}

pub fn run(args: &ClusterArgs) -> Result<(), String> {
    if args.clients == 0 {
        return Err("--clients must be positive".into());
    }
    if args
        .rate
        .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
    {
        return Err("--rate must be a positive number of proposals per second".into());
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("spaxos-bench-cluster")
        .tempdir_in(&parent)
        .map_err(|e| format!("temp dir in {}: {e}", parent.display()))?;
    let fsync_p50 = fsync_p50_us(tmp.path())?;
    let rtt_p50 = rtt_p50_us()?;
    let nodes = Arc::new(start_cluster_retrying(tmp.path(), args)?);
    let leader = wait_for_leader(&nodes, Duration::from_secs(20))?;
    let rss_start_kib = rss_kib();

    let payload = vec![b'x'; args.value_size];
    let stop = Arc::new(AtomicBool::new(false));
    let limit = if args.secs.is_some() {
        u64::MAX
    } else {
        args.n
    };
    let metrics_before: Vec<Metrics> = nodes.iter().map(|n| n.metrics()).collect();
    let tally = Arc::new(Tally::new()?);
    let start = tally.start;
    let mut threads = Vec::new();
    // Open loop: where the outcomes are awaited.
    let mut completions = None;
    if let Some(rate) = args.rate {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-outcomes")
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let handle = runtime.handle().clone();
        completions = Some(runtime);
        let (nodes, stop, tally, payload) =
            (nodes.clone(), stop.clone(), tally.clone(), payload.clone());
        let interval = Duration::from_secs_f64(1.0 / rate);
        let due = move |n: u64| start + interval.mul_f64(n as f64);
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < limit {
                let now = Instant::now();
                if due(n) > now {
                    std::thread::sleep(due(n) - now);
                }
                // Every proposal already due goes now (the sleep is coarser
                // than the interval at high rates).
                while n < limit && due(n) <= Instant::now() {
                    let due = due(n);
                    n += 1;
                    tally.issued.fetch_add(1, Ordering::Relaxed);
                    let proposal = nodes[leader].propose(n, Bytes::copy_from_slice(&payload));
                    let tally = tally.clone();
                    handle.spawn(async move {
                        let outcome = match proposal {
                            Ok(proposal) => proposal.await.ok(),
                            Err(_) => None,
                        };
                        let latency = due.elapsed();
                        let mut latencies =
                            tally.latencies.lock().unwrap_or_else(|e| e.into_inner());
                        tally.count(outcome, latency, &mut latencies);
                    });
                }
            }
        }));
    } else if args.client_tasks {
        let (nodes, stop, tally, payload) =
            (nodes.clone(), stop.clone(), tally.clone(), payload.clone());
        let clients = args.clients;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let targets: Vec<usize> = (0..clients)
            .map(|client| args.target.node_of(client, leader, nodes.len()))
            .collect();
        let spawned = std::thread::Builder::new()
            .name("bench-client-tasks".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let tasks: Vec<_> = targets
                        .into_iter()
                        .map(|target| {
                            let (nodes, stop, tally, payload) =
                                (nodes.clone(), stop.clone(), tally.clone(), payload.clone());
                            tokio::spawn(async move {
                                let mut latencies = latency_histogram().expect("histogram bounds");
                                while let Some(reqid) = tally.next_reqid(&stop, limit) {
                                    let t = Instant::now();
                                    let value = Bytes::copy_from_slice(&payload);
                                    let outcome = match nodes[target].propose(reqid, value) {
                                        Ok(handle) => handle.await.ok(),
                                        Err(_) => None,
                                    };
                                    tally.count(outcome, t.elapsed(), &mut latencies);
                                }
                                latencies
                            })
                        })
                        .collect();
                    for task in tasks {
                        // A task that panicked fails the run, as a client
                        // thread that panicked does.
                        tally.merge(&task.await.expect("a client task panicked"));
                    }
                });
            })
            .map_err(|e| format!("client thread: {e}"))?;
        threads.push(spawned);
    } else {
        for client in 0..args.clients {
            let (nodes, stop, tally, payload) =
                (nodes.clone(), stop.clone(), tally.clone(), payload.clone());
            let target = args.target.node_of(client, leader, nodes.len());
            threads.push(std::thread::spawn(move || {
                let mut latencies = latency_histogram().expect("histogram bounds");
                while let Some(reqid) = tally.next_reqid(&stop, limit) {
                    let t = Instant::now();
                    let value = Bytes::copy_from_slice(&payload);
                    let outcome = nodes[target].propose(reqid, value).map(|h| h.wait());
                    tally.count(
                        outcome.ok().and_then(Result::ok),
                        t.elapsed(),
                        &mut latencies,
                    );
                }
                tally.merge(&latencies);
            }));
        }
    }
    let mut checkpointed = 0u64;
    let secs_limit = args.secs.map(Duration::from_secs_f64);
    // Memory is compared from the end of a warm-up (caches, windows and
    // queues filled) to the end of the run.
    let warmup = secs_limit.map(|l| (l / 10).min(Duration::from_secs(60)));
    let mut rss_warm_kib = None;
    // After the warm-up: one sample every 30 s and the largest seen (read
    // once a second), so a leak (steady growth) can be told from a passing
    // peak.
    let mut rss_samples_kib: Vec<u64> = Vec::new();
    let mut rss_max_kib = 0u64;
    // When RSS is read next, and sampled next (both from the warm-up on).
    let (mut read_at, mut sample_at) = (Instant::now(), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if rss_warm_kib.is_none() && warmup.is_some_and(|w| start.elapsed() >= w) {
            rss_warm_kib = Some(rss_kib());
            (read_at, sample_at) = (Instant::now(), Instant::now());
        }
        if rss_warm_kib.is_some() && Instant::now() >= read_at {
            let rss = rss_kib();
            rss_max_kib = rss_max_kib.max(rss);
            read_at += Duration::from_secs(1);
            if Instant::now() >= sample_at {
                rss_samples_kib.push(rss);
                sample_at += Duration::from_secs(30);
            }
        }
        let done = match secs_limit {
            Some(limit) => start.elapsed() >= limit,
            None => tally.finished() >= args.n,
        };
        if args.checkpoint_every > 0 {
            let through = nodes
                .iter()
                .map(|n| n.status().chosen_through)
                .min()
                .unwrap_or(0);
            if through >= checkpointed + args.checkpoint_every {
                for node in nodes.iter() {
                    node.checkpoint(through)
                        .map_err(|e| format!("checkpoint: {e}"))?;
                }
                checkpointed = through;
            }
        }
        if done {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| "a client thread panicked".to_string())?;
    }
    if let Some(runtime) = completions {
        // Every issued proposal's outcome, before the counts are read.
        let deadline = Instant::now() + Duration::from_secs(30);
        while tally.finished() < tally.issued.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                return Err("open-loop proposals still pending 30 s after the run".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        runtime.shutdown_background();
    }
    let secs = Duration::from_nanos(tally.last_finished_ns.load(Ordering::Relaxed))
        .as_secs_f64()
        .max(f64::MIN_POSITIVE);
    let rss_end_kib = rss_kib();
    let cost = Cost::measure(&nodes, &metrics_before, leader);
    let ok = tally.chosen.load(Ordering::Relaxed);
    // Verify: every node delivers the same log through the highest index.
    let through = tally.max_index.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.iter().any(|n| n.status().chosen_through < through) {
        if Instant::now() > deadline {
            return Err("nodes did not catch up for the final check".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let agree = if checkpointed == 0 {
        let digests: Vec<Digest> = nodes
            .iter()
            .map(|n| digest(n, through))
            .collect::<Result<_, _>>()?;
        if digests.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("nodes disagree: {digests:?}"));
        }
        "full"
    } else {
        // Compacted prefixes cannot be re-read; compare what is still held.
        let from = checkpointed.saturating_sub(1 << 16) + 1;
        for index in from.max(1)..=through {
            let values: Vec<_> = nodes.iter().map(|n| n.get(index).ok().flatten()).collect();
            if values.windows(2).any(|w| w[0] != w[1]) {
                return Err(format!("nodes disagree at index {index}"));
            }
        }
        "tail"
    };
    let histogram = tally.latencies.lock().map_err(|_| "histogram lock")?;
    let line = serde_json::json!({
        "system": "spaxos",
        "mode": "cluster",
        "nodes": 3,
        "n": ok,
        "value_size": args.value_size,
        "clients": if args.rate.is_some() { 0 } else { args.clients },
        "client_tasks": args.client_tasks && args.rate.is_none(),
        "rate": args.rate,
        "target": format!("{:?}", args.target).to_lowercase(),
        "accepts_before_persist": args.accepts_before_persist,
        "propose_gather_us": args.propose_gather_us,
        "secs": secs,
        "ops_per_sec": ok as f64 / secs,
        "p50_us": histogram.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_us": histogram.value_at_quantile(0.99) as f64 / 1000.0,
        // The tail a stall (a segment created, a slow flush) shows in.
        "p999_us": histogram.value_at_quantile(0.999) as f64 / 1000.0,
        "max_us": histogram.max() as f64 / 1000.0,
        "errors": tally.errors.load(Ordering::Relaxed),
        "fsync_p50_us": fsync_p50,
        "rtt_p50_us": rtt_p50,
        "rss_start_kib": rss_start_kib,
        "rss_warm_kib": rss_warm_kib,
        "rss_end_kib": rss_end_kib,
        "rss_max_kib": rss_warm_kib.map(|_| rss_max_kib.max(rss_end_kib)),
        "rss_samples_kib": rss_samples_kib,
        "checkpointed_through": checkpointed,
        "replicas_agree": agree,
        // What the run cost, per chosen proposal (all nodes unless named):
        // how well group commit, rounds and frame coalescing batch.
        "leader_rounds_per_op": cost.leader_rounds as f64 / ok.max(1) as f64,
        "held_rounds_per_op": cost.held_rounds as f64 / ok.max(1) as f64,
        "storage_writes_per_op": cost.storage_writes as f64 / ok.max(1) as f64,
        "deferred_writes_per_op": cost.deferred_writes as f64 / ok.max(1) as f64,
        // Deferred marks ride in the next write: records per fdatasync.
        "records_per_write": cost.records_written as f64 / cost.storage_writes.max(1) as f64,
        "frames_per_op": cost.frames_sent as f64 / ok.max(1) as f64,
        "socket_writes_per_op": cost.write_batches as f64 / ok.max(1) as f64,
    });
    println!("{line}");
    for node in nodes.iter() {
        node.shutdown();
    }
    Ok(())
}
