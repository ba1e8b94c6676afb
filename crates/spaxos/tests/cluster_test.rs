//! In-process 3-node clusters over loopback TCP with real on-disk logs in
//! temporary directories: the issue's runtime scenarios.
//!
//! Set `RUST_LOG=spaxos=debug` to see the nodes' logs.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spaxos::{ChosenItem, Config, NodeId, Outcome, ProposalHandle, Role, Spaxos, Value};

const WAIT: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[path = "common/ports.rs"]
mod ports;
use ports::free_ports;

fn node_config(ports: &[u16], selfid: NodeId, path: &Path, extra: &str) -> Config {
    let groups: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!(r#"{{"id": {}, "ip": "127.0.0.1", "port": {port}}}"#, i + 1))
        .collect();
    let json = format!(
        r#"{{ "selfid": {selfid}, "groups": [{}], "path": {:?},
             "stimeout": {{"heartbeat": 20, "instimeoutbase": 100, "instimeoutrange": 50}},
             "tick_ms": 5, "reconnect_backoff_min_ms": 10, "reconnect_backoff_max_ms": 100 {extra} }}"#,
        groups.join(", "),
        path.display().to_string()
    );
    Config::from_json(&json).expect("test config parses")
}

struct Cluster {
    _dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
    ports: Vec<u16>,
    /// Extra config fields, e.g. `, "send_accepts_before_persist": true`.
    extra: String,
    nodes: Vec<Option<Spaxos>>,
}

impl Cluster {
    fn start(size: usize) -> Cluster {
        Cluster::start_with(size, "")
    }

    fn start_with(size: usize, extra: &str) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(size);
        let paths: Vec<PathBuf> = (1..=size)
            .map(|id| dir.path().join(format!("node{id}")))
            .collect();
        let mut cluster = Cluster {
            _dir: dir,
            paths,
            ports,
            extra: extra.to_string(),
            nodes: (0..size).map(|_| None).collect(),
        };
        for id in 1..=size as NodeId {
            cluster.restart(id);
        }
        cluster
    }

    fn node(&self, id: NodeId) -> &Spaxos {
        self.nodes[(id - 1) as usize]
            .as_ref()
            .expect("node is running")
    }

    fn running(&self) -> impl Iterator<Item = &Spaxos> {
        self.nodes.iter().flatten()
    }

    fn stop(&mut self, id: NodeId) {
        if let Some(node) = self.nodes[(id - 1) as usize].take() {
            node.shutdown();
        }
    }

    fn restart(&mut self, id: NodeId) {
        let slot = (id - 1) as usize;
        let config = node_config(&self.ports, id, &self.paths[slot], &self.extra);
        self.nodes[slot] = Some(Spaxos::start(config).expect("node starts"));
    }

    /// Waits until every running node follows the same leader; returns it.
    fn wait_leader(&self) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: HashSet<Option<NodeId>> =
                self.running().map(|n| n.status().leader).collect();
            if leaders.len() == 1 {
                if let Some(Some(leader)) = leaders.into_iter().next() {
                    let leads = self.running().any(|n| {
                        let status = n.status();
                        status.id == leader && status.role == Role::Leader
                    });
                    if leads {
                        return leader;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn wait_chosen(handle: ProposalHandle) -> u64 {
    let mut handle = handle;
    match handle.wait_timeout(WAIT) {
        Ok(Outcome::Chosen { index }) => index,
        other => panic!("proposal {} not chosen: {other:?}", handle.reqid()),
    }
}

/// The value the proposal helpers below give `reqid`.
fn value_of(reqid: u64) -> String {
    format!("value-{reqid}")
}

/// Proposal `k` of thread `t`: its reqid counts from `first_reqid`, `count`
/// per thread.
fn propose_kth(node: &Spaxos, first_reqid: u64, count: u64, t: u64, k: u64) -> ProposalHandle {
    let reqid = first_reqid + t * count + k;
    node.propose(reqid, value_of(reqid))
        .expect("proposal queued")
}

/// Runs `proposer(t)` on threads `0..threads` and collects what they
/// return: reqid -> chosen index.
fn on_threads(
    threads: u64,
    proposer: impl Fn(u64) -> Vec<(u64, u64)> + Sync,
) -> BTreeMap<u64, u64> {
    std::thread::scope(|scope| {
        let proposer = &proposer;
        let workers: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || proposer(t)))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("proposer thread"))
            .collect()
    })
}

/// Proposes `count` values per thread from `threads` threads on `node`,
/// pipelined, and returns reqid -> chosen index.
fn propose_from_threads(
    node: &Spaxos,
    first_reqid: u64,
    threads: u64,
    count: u64,
) -> BTreeMap<u64, u64> {
    on_threads(threads, |t| {
        let handles: Vec<ProposalHandle> = (0..count)
            .map(|k| propose_kth(node, first_reqid, count, t, k))
            .collect();
        handles
            .into_iter()
            .map(|h| (h.reqid(), wait_chosen(h)))
            .collect()
    })
}

/// Like [`propose_from_threads`], but closed-loop: each thread proposes
/// its next value only once the last one is chosen.
fn propose_closed_loop(
    node: &Spaxos,
    first_reqid: u64,
    threads: u64,
    count: u64,
) -> BTreeMap<u64, u64> {
    on_threads(threads, |t| {
        (0..count)
            .map(|k| {
                let handle = propose_kth(node, first_reqid, count, t, k);
                (handle.reqid(), wait_chosen(handle))
            })
            .collect()
    })
}

/// The first `count` items of `node`'s ordered stream from `from`.
fn ordered_items(node: &Spaxos, from: u64, count: u64) -> Vec<ChosenItem> {
    let mut stream = node.ordered_from(from);
    (0..count)
        .map(|n| {
            stream
                .recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("node {} item {}: {e}", node.id(), from + n))
        })
        .collect()
}

fn check_contiguous(items: &[ChosenItem], from: u64) {
    for (expected, item) in (from..).zip(items) {
        assert_eq!(item.index, expected, "ordered stream has a gap or a repeat");
    }
}

#[test]
fn proposals_from_every_node_are_chosen_and_streams_agree() {
    let started = Instant::now();
    let cluster = Cluster::start(3);
    let mut chosen: BTreeMap<u64, u64> = BTreeMap::new();
    std::thread::scope(|scope| {
        let runs: Vec<_> = (1..=3)
            .map(|id| {
                let node = cluster.node(id);
                scope.spawn(move || propose_from_threads(node, id * 1_000_000, 3, 40))
            })
            .collect();
        for run in runs {
            chosen.extend(run.join().expect("node proposers"));
        }
    });
    assert_eq!(chosen.len(), 3 * 3 * 40);
    let last = *chosen.values().max().expect("some chosen");

    let streams: Vec<Vec<ChosenItem>> = (1..=3)
        .map(|id| ordered_items(cluster.node(id), 1, last))
        .collect();
    check_contiguous(&streams[0], 1);
    assert_eq!(streams[0], streams[1], "nodes 1 and 2 disagree");
    assert_eq!(streams[0], streams[2], "nodes 1 and 3 disagree");
    // Each proposal sits exactly where its outcome said, once.
    let mut seen = HashSet::new();
    for item in &streams[0] {
        if let Some(reqid) = item.value.reqid() {
            assert!(seen.insert(reqid), "reqid {reqid} delivered twice");
            assert_eq!(chosen.get(&reqid), Some(&item.index));
            assert_eq!(item.value.values()[0], value_of(reqid).as_bytes());
        }
    }
    assert_eq!(seen.len(), chosen.len());
    // get() reads the same value back from storage.
    let (&reqid, &index) = chosen.iter().next().expect("one proposal");
    let value = cluster.node(2).get(index).expect("get");
    assert_eq!(value.and_then(|v| v.reqid()), Some(reqid));
    // Every node counted its share of the work: 120 proposals each, rounds,
    // durable writes of the accepted entries, frames to its peers.
    for id in 1..=3 {
        let m = cluster.node(id).metrics();
        assert_eq!(m.proposals, 120, "node {id}: {m:?}");
        assert!(m.rounds > 0 && m.storage_writes > 0, "node {id}: {m:?}");
        assert!(
            m.records_written >= last,
            "node {id} wrote fewer records than entries: {m:?}"
        );
        assert!(
            m.transport.frames_sent > 0 && m.transport.write_batches > 0,
            "node {id}: {m:?}"
        );
        assert!(
            m.transport.write_batches <= m.transport.frames_sent,
            "node {id}: {m:?}"
        );
    }
    eprintln!("streams agree on {last} indices in {:?}", started.elapsed());
}

#[test]
fn restarted_node_catches_up_and_its_stream_continues() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    let first = propose_from_threads(cluster.node(1), 1_000, 2, 25);
    let applied_through = *first.values().max().expect("chosen");
    // Node 3's application applies everything so far, then node 3 stops.
    let applied = ordered_items(cluster.node(3), 1, applied_through);
    check_contiguous(&applied, 1);
    cluster.stop(3);

    // The other two still form a majority.
    let mut second = propose_from_threads(cluster.node(1), 2_000, 1, 25);
    second.extend(propose_from_threads(cluster.node(2), 3_000, 1, 25));
    let last = *second.values().max().expect("chosen");

    cluster.restart(3);
    // The application resumes from what it applied: exactly the rest.
    let rest = ordered_items(cluster.node(3), applied_through + 1, last - applied_through);
    check_contiguous(&rest, applied_through + 1);
    let reference = ordered_items(cluster.node(1), 1, last);
    let resumed: Vec<ChosenItem> = applied.into_iter().chain(rest).collect();
    assert_eq!(resumed, reference, "restarted node's log differs");

    // The restarted node takes proposals again.
    let third = propose_from_threads(cluster.node(3), 4_000, 1, 10);
    assert_eq!(third.len(), 10);
    eprintln!("restart scenario took {:?}", started.elapsed());
}

#[test]
fn new_leader_is_elected_after_the_leader_stops() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    let old_leader = cluster.wait_leader();
    let before = propose_from_threads(cluster.node(old_leader), 10_000, 1, 20);
    assert_eq!(before.len(), 20);

    cluster.stop(old_leader);
    let new_leader = cluster.wait_leader();
    assert_ne!(new_leader, old_leader);

    let survivors: Vec<NodeId> = (1..=3).filter(|&id| id != old_leader).collect();
    let mut after = BTreeMap::new();
    for &id in &survivors {
        after.extend(propose_from_threads(
            cluster.node(id),
            20_000 + id * 1_000,
            2,
            15,
        ));
    }
    assert_eq!(after.len(), 2 * 2 * 15);
    // Indices chosen after the failover come after those chosen before it.
    let before_max = before.values().max().expect("chosen");
    assert!(after.values().all(|index| index > before_max));
    eprintln!(
        "failover from {old_leader} to {new_leader} took {:?} in total",
        started.elapsed()
    );
}

/// Not a benchmark (debug build, shared machine): prints proposals per
/// second with and without sending accepts before the leader's own write.
#[test]
fn throughput_smoke() {
    for extra in ["", r#", "send_accepts_before_persist": false"#] {
        let cluster = Cluster::start_with(3, extra);
        let leader = cluster.wait_leader();
        let started = Instant::now();
        let chosen = propose_from_threads(cluster.node(leader), 1_000_000, 4, 500);
        let elapsed = started.elapsed();
        assert_eq!(chosen.len(), 2000);
        eprintln!(
            "throughput smoke{extra}: 2000 proposals in {elapsed:?} ({:.0}/s)",
            2000.0 / elapsed.as_secs_f64()
        );
    }
}

/// Closed-loop proposers (each proposes again once answered) with a long
/// gather window: their proposals are held for one another, and a held
/// proposal whose expected companions never come is still proposed once the
/// window ends. With the window at zero nothing is ever held.
#[test]
fn gathered_proposals_are_held_for_answered_proposers_and_then_chosen() {
    for (window_us, holds) in [(10_000, true), (0, false)] {
        let cluster = Cluster::start_with(3, &format!(r#", "propose_gather_us": {window_us}"#));
        let leader = cluster.node(cluster.wait_leader());
        let before = leader.metrics();
        let chosen = propose_closed_loop(leader, 1_000, 8, 25);
        assert_eq!(chosen.len(), 200);
        // The proposers answered last never come back: a lone proposal is
        // held at most the window, then chosen.
        let lone = leader.propose(9_999, "lone").expect("queued");
        let index = wait_chosen(lone);
        assert!(chosen.values().all(|&earlier| earlier < index));
        let logs: Vec<Vec<ChosenItem>> = (1..=3)
            .map(|id| ordered_items(cluster.node(id), 1, index))
            .collect();
        assert_eq!(logs[0], logs[1]);
        assert_eq!(logs[0], logs[2]);
        let held = leader.metrics().held_rounds - before.held_rounds;
        assert_eq!(held > 0, holds, "window {window_us} µs: {held} held rounds");
    }
}

#[test]
fn accepts_sent_after_persist_keep_logs_identical() {
    let cluster = Cluster::start_with(3, r#", "send_accepts_before_persist": false"#);
    let mut chosen = BTreeMap::new();
    for id in 1..=3 {
        chosen.extend(propose_from_threads(cluster.node(id), id * 10_000, 2, 30));
    }
    assert_eq!(chosen.len(), 180);
    let last = *chosen.values().max().expect("chosen");
    let logs: Vec<Vec<ChosenItem>> = (1..=3)
        .map(|id| ordered_items(cluster.node(id), 1, last))
        .collect();
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);
}

/// A reader that does not keep up never stalls the node: the any-order
/// subscriber is cut off after its buffer fills; the ordered stream falls
/// back to storage and still yields every index once, in order.
#[test]
fn slow_readers_do_not_stall_the_node() {
    const PROPOSALS: u64 = 17_000;
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    let node = cluster.node(leader);
    let unread_subscriber = node.subscribe();
    let mut unread_stream = node.ordered_from(1);
    // Subscribe now (the stream subscribes lazily, on its first read).
    assert!(matches!(
        unread_stream.try_recv(),
        Err(spaxos::StreamError::Timeout)
    ));
    let chosen = propose_from_threads(node, 1, 4, PROPOSALS / 4);
    let last = *chosen.values().max().expect("chosen");

    let buffered = unread_subscriber.iter().count();
    assert!(buffered < PROPOSALS as usize, "subscriber was not cut off");
    let items: Vec<ChosenItem> = (0..last)
        .map(|_| unread_stream.recv_timeout(WAIT).expect("ordered item"))
        .collect();
    check_contiguous(&items, 1);
    let reqids: HashSet<u64> = items.iter().filter_map(|i| i.value.reqid()).collect();
    assert_eq!(reqids.len() as u64, PROPOSALS);
}

#[test]
fn proposals_before_any_leader_are_chosen_and_reqids_are_deduplicated() {
    let cluster = Cluster::start(3);
    // Right after start: no leader yet, the proposal waits for one.
    let index = wait_chosen(cluster.node(2).propose(77, "early").expect("queued"));
    // The same reqid again: already in the log, so the same index comes back.
    let again = wait_chosen(cluster.node(2).propose(77, "early").expect("queued"));
    assert_eq!(again, index);
    // The proposer's storage has it as soon as the outcome is known (other
    // nodes may learn it a moment later).
    let expected = Value::One {
        reqid: 77,
        value: "early".into(),
    };
    assert_eq!(
        cluster.node(2).get(index).expect("get"),
        Some(expected.clone())
    );
    let item = cluster.node(1).ordered_from(index).recv_timeout(WAIT);
    assert_eq!(item.expect("chosen item").value, expected);
}

#[test]
fn proposal_handles_can_be_awaited_and_many_values_share_one_index() {
    let cluster = Cluster::start(3);
    let node = cluster.node(1).clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async move {
        let handle = node
            .propose_many(900, vec!["a".into(), "b".into()])
            .expect("queued");
        handle.await
    });
    let Ok(Outcome::Chosen { index }) = outcome else {
        panic!("not chosen: {outcome:?}");
    };
    let value = cluster.node(3).ordered_from(index).recv_timeout(WAIT);
    let value = value.expect("chosen item").value;
    assert_eq!(value.reqid(), Some(900));
    assert_eq!(value.values(), &["a".as_bytes(), "b".as_bytes()][..]);
}

/// Checkpointing lets storage drop what the application no longer needs; the
/// node keeps serving what it holds, reports what it dropped as compacted,
/// and comes back the same after a restart.
#[test]
fn checkpoint_compacts_and_survives_a_restart() {
    let mut cluster = Cluster::start_with(3, r#", "dedup_window": 8"#);
    let leader = cluster.wait_leader();
    let chosen = propose_from_threads(cluster.node(leader), 1, 2, 60);
    let last = *chosen.values().max().expect("chosen");
    assert!(last >= 120);
    let deadline = Instant::now() + WAIT;
    while cluster.running().any(|n| n.status().chosen_through < last) {
        assert!(Instant::now() < deadline, "nodes did not catch up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let node = cluster.node(follower);
    // Two dedup windows (2 x 8) stay below the checkpoint.
    let through = node.checkpoint(100).expect("checkpoint");
    assert_eq!(through, 100 - 16);
    let first = through + 1;
    let compacted = |node: &Spaxos, index: u64| matches!(node.get(index), Err(spaxos::Error::Compacted { first_index }) if first_index == first);
    assert!(compacted(node, 1));
    assert!(compacted(node, through));
    assert!(node.get(first).expect("held").is_some());
    assert!(matches!(
        node.ordered_from(1).recv_timeout(WAIT),
        Err(spaxos::StreamError::Compacted { .. })
    ));
    assert_eq!(
        node.ordered_from(first)
            .recv_timeout(WAIT)
            .expect("item")
            .index,
        first
    );

    cluster.stop(follower);
    cluster.restart(follower);
    let node = cluster.node(follower);
    assert!(compacted(node, 10));
    assert!(node.get(last).expect("held").is_some());
    // It still takes part: new proposals on it are chosen.
    let more = propose_from_threads(node, 10_000, 1, 10);
    assert_eq!(more.len(), 10);
}

/// One proposal at a time: the leader learns each entry is chosen between
/// writes of its own, so it writes those marks deferred (no fdatasync of
/// their own). They are readable at once and after the leader restarts.
#[test]
fn a_quiet_leader_defers_its_chosen_marks_and_keeps_them_across_a_restart() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    let before = cluster.node(leader).metrics();
    let mut indices = Vec::new();
    for reqid in 1..=40u64 {
        let handle = cluster
            .node(leader)
            .propose(reqid, format!("quiet {reqid}"))
            .expect("queued");
        indices.push((reqid, wait_chosen(handle)));
    }
    let after = cluster.node(leader).metrics();
    let deferred = after.deferred_writes - before.deferred_writes;
    assert!(
        deferred > 0,
        "no deferred writes for 40 sequential proposals: {before:?} -> {after:?}"
    );
    for &(reqid, index) in &indices {
        let value = cluster.node(leader).get(index).expect("get");
        assert_eq!(value.and_then(|v| v.reqid()), Some(reqid), "index {index}");
    }
    cluster.stop(leader);
    cluster.restart(leader);
    for &(reqid, index) in &indices {
        let value = cluster.node(leader).get(index).expect("get after restart");
        assert_eq!(value.and_then(|v| v.reqid()), Some(reqid), "index {index}");
    }
}
