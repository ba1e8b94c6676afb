//! Storage write errors: the failed batch is never acknowledged, the node
//! rebuilds from what is durable (the seed's rebuild) and carries on, or
//! stops with a clear error when storage cannot be recovered. Also a leader
//! whose disk stalls, and the writes the runtime makes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spaxos::{
    ChosenItem, Config, Index, MemStorage, NodeId, Outcome, ProposalError, ProposeError, Role,
    Spaxos, Storage, StorageError, Value,
};
use spaxos_core::{Record, RecoveredState};

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

fn node_config(ports: &[u16], selfid: NodeId) -> Config {
    let groups: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!(r#"{{"id": {}, "ip": "127.0.0.1", "port": {port}}}"#, i + 1))
        .collect();
    let json = format!(
        r#"{{ "selfid": {selfid}, "groups": [{}], "path": "./unused",
             "stimeout": {{"heartbeat": 20, "instimeoutbase": 100, "instimeoutrange": 50}},
             "tick_ms": 5, "reconnect_backoff_min_ms": 10, "reconnect_backoff_max_ms": 100 }}"#,
        groups.join(", ")
    );
    Config::from_json(&json).expect("test config parses")
}

/// Switches shared by a test and its [`TestStorage`].
#[derive(Clone, Default)]
struct WriteFaults {
    failing: Arc<AtomicBool>,
    failed_writes: Arc<AtomicU64>,
    /// Writes wait while this is on (a disk that stalls).
    stalled: Arc<AtomicBool>,
    /// Writes that found the disk stalled and waited.
    stalled_writes: Arc<AtomicU64>,
}

impl WriteFaults {
    fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    fn stalled_writes(&self) -> u64 {
        self.stalled_writes.load(Ordering::SeqCst)
    }

    fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::SeqCst)
    }
}

/// One write the runtime made on a [`TestStorage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StorageCall {
    deferred: bool,
    records: usize,
    /// `deferred_marks()` right after the call.
    marks_waiting: usize,
}

impl StorageCall {
    /// An empty write that left no mark waiting: the flush of deferred
    /// marks.
    fn is_flush(&self) -> bool {
        !self.deferred && self.records == 0 && self.marks_waiting == 0
    }
}

/// A store the tests can break and watch: its writes fail (changing
/// nothing, like a full disk) while the `faults` switch is on, and every
/// write that reaches the inner store is logged in `calls`.
struct TestStorage {
    inner: Box<dyn Storage>,
    faults: WriteFaults,
    calls: Arc<std::sync::Mutex<Vec<StorageCall>>>,
}

impl TestStorage {
    fn new(inner: impl Storage + 'static) -> TestStorage {
        TestStorage {
            inner: Box::new(inner),
            faults: WriteFaults::default(),
            calls: Arc::default(),
        }
    }

    fn wait_while_stalled(&self) {
        if !self.faults.stalled.load(Ordering::SeqCst) {
            return;
        }
        self.faults.stalled_writes.fetch_add(1, Ordering::SeqCst);
        while self.faults.stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn injected_failure(&self) -> Result<(), StorageError> {
        if !self.faults.failing.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.faults.failed_writes.fetch_add(1, Ordering::SeqCst);
        Err(StorageError::Failed {
            first_error: "injected: disk full".to_string(),
        })
    }

    fn log(&self, deferred: bool, records: usize) {
        self.calls.lock().expect("log lock").push(StorageCall {
            deferred,
            records,
            marks_waiting: self.inner.deferred_marks(),
        });
    }
}

impl Storage for TestStorage {
    fn write(&mut self, batch: &[Record]) -> Result<(), StorageError> {
        self.wait_while_stalled();
        self.injected_failure()?;
        let result = self.inner.write(batch);
        self.log(false, batch.len());
        result
    }

    fn write_deferred(&mut self, batch: &[Record]) -> Result<(), StorageError> {
        self.wait_while_stalled();
        self.injected_failure()?;
        let result = self.inner.write_deferred(batch);
        self.log(true, batch.len());
        result
    }

    fn deferred_marks(&self) -> usize {
        self.inner.deferred_marks()
    }

    fn recover(&self, dedup_window: u64) -> Result<RecoveredState, StorageError> {
        self.inner.recover(dedup_window)
    }

    fn chosen(&self, index: Index) -> Result<Option<Value>, StorageError> {
        self.inner.chosen(index)
    }

    fn chosen_range(
        &self,
        from: Index,
        to: Index,
        bytes_max: usize,
    ) -> Result<Vec<(Index, Value)>, StorageError> {
        self.inner.chosen_range(from, to, bytes_max)
    }

    fn bounds(&self) -> (Index, Index) {
        self.inner.bounds()
    }

    fn compact(&mut self, through: Index) -> Result<(), StorageError> {
        self.inner.compact(through)
    }
}

/// Ends a stall when dropped.
struct Unstall<'a>(&'a WriteFaults);

impl Drop for Unstall<'_> {
    fn drop(&mut self) {
        self.0.set_stalled(false);
    }
}

fn flaky_node(ports: &[u16], id: NodeId) -> (Spaxos, WriteFaults) {
    let storage = TestStorage::new(MemStorage::new());
    let faults = storage.faults.clone();
    let node =
        Spaxos::start_with_storage(node_config(ports, id), Box::new(storage)).expect("node starts");
    (node, faults)
}

fn chosen_index(node: &Spaxos, reqid: u64) -> Index {
    let mut handle = node.propose(reqid, format!("v{reqid}")).expect("queued");
    match handle.wait_timeout(WAIT) {
        Ok(Outcome::Chosen { index }) => index,
        other => panic!("reqid {reqid} not chosen: {other:?}"),
    }
}

/// Like [`chosen_index`], proposing again while the outcome is unknown
/// because the node rebuilt after a write error (what the API asks callers
/// to do with `Aborted`).
fn chosen_index_retrying(node: &Spaxos, reqid: u64) -> Index {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut handle = node.propose(reqid, format!("v{reqid}")).expect("queued");
        match handle.wait_timeout(WAIT) {
            Ok(Outcome::Chosen { index }) => return index,
            Err(ProposalError::Aborted { .. }) if Instant::now() < deadline => {}
            other => panic!("reqid {reqid} not chosen: {other:?}"),
        }
    }
}

fn ordered_items(node: &Spaxos, from: Index, count: u64) -> Vec<ChosenItem> {
    let mut stream = node.ordered_from(from);
    (0..count)
        .map(|_| stream.recv_timeout(WAIT).expect("ordered item"))
        .collect()
}

#[test]
fn failed_write_is_not_acknowledged_and_the_node_recovers() {
    init_tracing();
    let ports = free_ports(1);
    let (node, faults) = flaky_node(&ports, 1);
    let first = chosen_index(&node, 1);
    let chosen = node.subscribe();

    faults.set_failing(true);
    // The leader's accept of reqid 2 cannot become durable, so its own vote
    // (the only one in a one-node group) is never sent: not chosen. The core
    // is rebuilt from storage and the proposal's fate is reported unknown.
    let mut handle = node.propose(2, "v2").expect("queued");
    match handle.wait_timeout(WAIT) {
        Err(ProposalError::Aborted { reason }) => assert!(reason.contains("disk full"), "{reason}"),
        other => panic!("expected Aborted, got {other:?}"),
    }
    assert!(faults.failed_writes() > 0);
    // Failing writes keep failing without a panic; nothing gets chosen.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(node.status().chosen_through, first);
    assert_eq!(node.status().failure, None);
    assert!(
        chosen.try_recv().is_err(),
        "something was chosen while writes failed"
    );
    assert_eq!(node.get(first + 1).expect("get"), None);

    faults.set_failing(false);
    let second = chosen_index(&node, 2);
    let third = chosen_index(&node, 3);
    assert!(first < second && second < third);
    let log = ordered_items(&node, 1, third);
    let reqids: Vec<u64> = log.iter().filter_map(|item| item.value.reqid()).collect();
    assert_eq!(reqids, vec![1, 2, 3], "log: {log:?}");
    node.shutdown();
}

#[test]
fn a_node_with_a_failing_disk_rejoins_with_an_identical_log() {
    init_tracing();
    let ports = free_ports(3);
    let mut nodes = Vec::new();
    let mut switches = Vec::new();
    for id in 1..=3 {
        let (node, faults) = flaky_node(&ports, id);
        nodes.push(node);
        switches.push(faults);
    }
    for reqid in 1..=10 {
        chosen_index(&nodes[(reqid % 3) as usize], reqid);
    }
    // Node 1's disk fails for a while; the other two keep choosing.
    switches[0].set_failing(true);
    let mut last = 0;
    for reqid in 11..=40 {
        last = last.max(chosen_index(&nodes[1 + (reqid % 2) as usize], reqid));
    }
    let started = Instant::now();
    while switches[0].failed_writes() == 0 && started.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(switches[0].failed_writes() > 0);
    assert_eq!(nodes[0].status().failure, None);
    switches[0].set_failing(false);

    // Node 1 catches up; every node's log is the same. A rebuild that was
    // under way when the disk healed may still abort the first attempt.
    last = last.max(chosen_index_retrying(&nodes[0], 41));
    let logs: Vec<Vec<ChosenItem>> = nodes.iter().map(|n| ordered_items(n, 1, last)).collect();
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);
    let reqids: Vec<u64> = logs[0].iter().filter_map(|i| i.value.reqid()).collect();
    let distinct: HashSet<u64> = reqids.iter().copied().collect();
    assert_eq!(distinct.len(), reqids.len(), "a reqid appears twice");
    assert_eq!(distinct, (1..=41).collect());
}

/// With `send_accepts_before_persist` (the default) a leader sends its
/// accepts without waiting for its own write of them, so while its disk
/// stalls the two followers still choose its proposals; it learns them once
/// its write completes, and every log ends the same.
#[test]
fn a_leader_whose_disk_stalls_still_gets_proposals_chosen_by_its_followers() {
    init_tracing();
    let ports = free_ports(3);
    let (nodes, switches): (Vec<Spaxos>, Vec<WriteFaults>) =
        (1..=3).map(|id| flaky_node(&ports, id)).unzip();
    chosen_index(&nodes[0], 1);
    let started = Instant::now();
    let leader = loop {
        if let Some(leader) = nodes.iter().position(|n| n.status().role == Role::Leader) {
            break leader;
        }
        assert!(started.elapsed() < WAIT, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    };

    switches[leader].set_stalled(true);
    // Dropped before the nodes if an assertion fails, so that their
    // shutdown does not wait forever on the stalled write.
    let unstall = Unstall(&switches[leader]);
    let mut last = 0;
    for reqid in 2..=11 {
        last = last.max(chosen_index(&nodes[leader], reqid));
    }
    // Every write of the leader since the stall is still waiting, so these
    // were chosen by the followers' votes alone.
    assert!(
        switches[leader].stalled_writes() > 0,
        "the leader wrote nothing while its disk stalled"
    );
    assert_eq!(nodes[leader].status().role, Role::Leader);
    let followers: Vec<&Spaxos> = (0..3).filter(|&i| i != leader).map(|i| &nodes[i]).collect();
    let follower_log = ordered_items(followers[0], 1, last);
    let reqids: Vec<u64> = follower_log
        .iter()
        .filter_map(|i| i.value.reqid())
        .collect();
    assert_eq!(reqids, (1..=11).collect::<Vec<u64>>());
    assert_eq!(ordered_items(followers[1], 1, last), follower_log);

    drop(unstall);
    assert_eq!(ordered_items(&nodes[leader], 1, last), follower_log);
    last = last.max(chosen_index(&nodes[leader], 12));
    let logs: Vec<Vec<ChosenItem>> = nodes.iter().map(|n| ordered_items(n, 1, last)).collect();
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);
    for node in &nodes {
        node.shutdown();
    }
}

#[test]
fn unrecoverable_storage_stops_the_node_with_a_clear_error() {
    init_tracing();
    let ports = free_ports(1);
    let storage = TestStorage::new(MemStorage::new());
    let faults = storage.faults.clone();
    let reopen: spaxos::ReopenStorage = Box::new(|| {
        Err(StorageError::Failed {
            first_error: "injected: device gone".to_string(),
        })
    });
    let node = Spaxos::start_with_reopen(node_config(&ports, 1), Box::new(storage), reopen)
        .expect("node starts");
    chosen_index(&node, 1);
    faults.set_failing(true);
    let handle = node.propose(2, "v2").expect("queued");
    assert!(matches!(
        handle.wait(),
        Err(ProposalError::Stopped { .. } | ProposalError::Aborted { .. })
    ));
    let started = Instant::now();
    while node.status().failure.is_none() && started.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    let failure = node
        .status()
        .failure
        .expect("the node reports why it stopped");
    assert!(failure.contains("device gone"), "{failure}");
    match node.propose(3, "v3") {
        Err(ProposeError::Stopped { reason }) => assert_eq!(reason, failure),
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert!(matches!(node.get(1), Err(spaxos::Error::Stopped { .. })));
    let mut stream = node.ordered_from(1);
    assert!(matches!(
        stream.recv_timeout(Duration::from_secs(1)),
        Err(spaxos::StreamError::Stopped { .. })
    ));
    node.shutdown();
}

#[test]
fn shutdown_fails_pending_proposals_and_refuses_new_ones() {
    init_tracing();
    // Node 1 of a three-node group whose peers never start: no quorum.
    let ports = free_ports(3);
    let (node, _faults) = flaky_node(&ports, 1);
    let handle = node.propose(5, "never chosen").expect("queued");
    std::thread::sleep(Duration::from_millis(50));
    node.shutdown();
    assert!(matches!(handle.wait(), Err(ProposalError::Stopped { .. })));
    assert!(matches!(
        node.propose(6, "late"),
        Err(ProposeError::Stopped { .. })
    ));
    assert!(matches!(
        node.try_propose(0, "zero"),
        Err(ProposeError::ZeroReqId)
    ));
    let chosen = node.subscribe();
    assert!(chosen.recv_timeout(Duration::from_secs(1)).is_err());
}

#[test]
fn compacted_indices_are_reported_as_such() {
    init_tracing();
    let mut storage = MemStorage::new();
    let ballot = spaxos_core::Ballot::new(1, 1);
    for index in 1..=10 {
        let value = Value::One {
            reqid: index,
            value: format!("v{index}").into(),
        };
        storage
            .write(&[
                Record::Instance(spaxos_core::InstanceState {
                    index,
                    promised: ballot,
                    accepted: ballot,
                    value: Some(value),
                    chosen: false,
                }),
                Record::Chosen(index),
            ])
            .expect("write");
    }
    storage.compact(5).expect("compact");
    let ports = free_ports(1);
    let node =
        Spaxos::start_with_storage(node_config(&ports, 1), Box::new(storage)).expect("node starts");
    assert_eq!(
        node.get(3),
        Err(spaxos::Error::Compacted { first_index: 6 })
    );
    assert_eq!(node.get(7).expect("get").and_then(|v| v.reqid()), Some(7));
    let mut from_start = node.ordered_from(1);
    assert_eq!(
        from_start.recv_timeout(WAIT).map(|item| item.index),
        Err(spaxos::StreamError::Compacted { first_index: 6 })
    );
    let held: Vec<Index> = ordered_items(&node, 6, 5).iter().map(|i| i.index).collect();
    assert_eq!(held, vec![6, 7, 8, 9, 10]);
    // A checkpoint keeps the dedup history (2 * 65536 indices by default).
    assert_eq!(node.checkpoint(10), Ok(0));
    node.shutdown();
}

/// A one-node group on a [`TestStorage`] over a fresh DiskStorage.
fn recorded_node() -> (
    Spaxos,
    Arc<std::sync::Mutex<Vec<StorageCall>>>,
    tempfile::TempDir,
) {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = TestStorage::new(spaxos::DiskStorage::open(dir.path()).expect("open store"));
    let calls = storage.calls.clone();
    let ports = free_ports(1);
    let node =
        Spaxos::start_with_storage(node_config(&ports, 1), Box::new(storage)).expect("node starts");
    (node, calls, dir)
}

/// Polls the log until its last call is an empty write that left no mark
/// waiting (a flush), or [`WAIT`] passes; meanwhile runs `meanwhile`.
fn log_after_flush(
    calls: &std::sync::Mutex<Vec<StorageCall>>,
    mut meanwhile: impl FnMut(),
) -> Vec<StorageCall> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = calls.lock().expect("log lock").clone();
        let flushed = log.last().is_some_and(StorageCall::is_flush);
        if flushed || Instant::now() > deadline {
            return log;
        }
        meanwhile();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Chosen marks deferred by a node that then goes quiet do not wait for a
/// write that may never come: an empty write makes them durable soon
/// (~10 ms after the first was deferred), not only at the next proposal or
/// a clean close.
#[test]
fn deferred_chosen_marks_are_written_soon_after_the_node_goes_quiet() {
    let (node, calls, _dir) = recorded_node();
    let mut last = 0;
    for reqid in 1..=20 {
        last = chosen_index(&node, reqid);
        // Quiet between some proposals, as a lightly used node is.
        if reqid % 5 == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // No timing is asserted: only that the flush happens with no other write.
    let log = log_after_flush(&calls, || {});
    assert!(
        log.iter().any(|c| c.deferred && c.marks_waiting > 0),
        "a one-node leader deferred no chosen marks: {log:?}"
    );
    let last_call = log.last().expect("writes happened");
    assert!(
        last_call.is_flush(),
        "the node went quiet with marks waiting and no flush: {log:?}"
    );
    // The pauses between proposals were quiet too: flushes came then, not
    // only at the end (three pauses of 100 ms against a 10 ms timer).
    let flushes = log.iter().filter(|c| c.is_flush()).count();
    assert!(flushes >= 2, "{flushes} flushes: {log:?}");
    assert_eq!(
        node.get(last).expect("get").and_then(|v| v.reqid()),
        Some(20)
    );
    node.shutdown();
}

/// Reads keep the storage thread busy but write nothing: deferred marks are
/// flushed all the same (the timer runs from the first mark, not from the
/// last input).
#[test]
fn deferred_chosen_marks_are_written_while_reads_keep_coming() {
    let (node, calls, _dir) = recorded_node();
    let mut last = 0;
    for reqid in 1..=5 {
        last = chosen_index(&node, reqid);
    }
    // A reader polls every ~2 ms, well inside the 10 ms flush timer.
    let log = log_after_flush(&calls, || {
        node.get(last).expect("get");
    });
    let last_call = log.last().expect("writes happened");
    assert!(
        last_call.is_flush(),
        "marks still waiting while reads kept coming: {log:?}"
    );
    node.shutdown();
}
