//! `inproc` mode: the protocol's CPU cost per proposal.
//!
//! Three replicas of the core in one thread, an in-memory network and
//! persistence acknowledged at once. A stable leader is elected first (not
//! timed). Then rounds: the leader takes new proposals until `window` are
//! outstanding; every replica's output is collected and all messages are
//! delivered; repeat until `n` are chosen. Latency is propose → outcome on
//! the leader. Values are built inside the timed section. Every replica must
//! deliver the same chosen log: each delivered entry (index, reqid, payload)
//! is compared with the other replicas' entry at that index as soon as all
//! have delivered it, and at the end every replica must have delivered all
//! `n`.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::BytesMut;
use clap::Args;
use hdrhistogram::Histogram;
use spaxos_core::{ChosenItem, CoreConfig, Message, Node, Outcome, Ready, Record, Value};

/// Options of the `inproc` mode.
#[derive(Args, Debug)]
pub struct InprocArgs {
    /// Proposals to choose.
    #[arg(long, default_value_t = 200_000)]
    n: u64,
    /// Proposals outstanding on the leader.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Payload bytes per proposal.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Replicas.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// The duplicate-suppression window (indices); the core's default
    /// unless given. A diagnostic: what the window costs.
    #[arg(long)]
    dedup_window: Option<u64>,
}

struct Cluster {
    nodes: Vec<Node>,
    /// One reusable output buffer per node (see `Node::ready_into`).
    readies: Vec<Ready>,
    /// Per replica, delivered entries not yet compared with every other
    /// replica's entry at the same index.
    unchecked: Vec<VecDeque<ChosenItem>>,
    /// Entries every replica delivered and that matched.
    agreed: u64,
    inbox: Vec<Message>,
    messages: u64,
    records: u64,
}

impl Cluster {
    fn new(n: u64, inflight: u64, dedup_window: Option<u64>) -> Cluster {
        let members: Vec<u64> = (1..=n).collect();
        let nodes = members
            .iter()
            .map(|&id| {
                let mut cfg = CoreConfig::new(id, members.clone());
                cfg.inflight_max = inflight.max(1);
                cfg.rng_seed = 7;
                if let Some(window) = dedup_window {
                    cfg.dedup_window = window;
                }
                // Node 1 campaigns first; the others wait long.
                if id != 1 {
                    cfg.election_timeout_ticks = 1000;
                }
                Node::new(cfg).expect("valid config")
            })
            .collect();
        Cluster {
            readies: (0..n).map(|_| Ready::default()).collect(),
            nodes,
            unchecked: (0..n).map(|_| VecDeque::new()).collect(),
            agreed: 0,
            inbox: Vec::new(),
            messages: 0,
            records: 0,
        }
    }

    /// Collects every node's output (persistence is instant), then delivers
    /// all messages. Returns the leader's outcomes; fails if two replicas
    /// delivered different entries.
    fn round(&mut self, outcomes: &mut Vec<(u64, Outcome)>) -> Result<(), String> {
        for (slot, node) in self.nodes.iter_mut().enumerate() {
            let ready = &mut self.readies[slot];
            node.ready_into(ready);
            self.records += ready.records.iter().map(Record::entries).sum::<usize>() as u64;
            ready.records.clear();
            self.unchecked[slot].extend(ready.chosen.drain(..));
            if slot == 0 {
                outcomes.append(&mut ready.outcomes);
            } else {
                ready.outcomes.clear();
            }
            self.inbox.append(&mut ready.messages);
            self.inbox.append(&mut ready.messages_now);
            ready.reads.clear();
        }
        self.messages += self.inbox.len() as u64;
        for msg in self.inbox.drain(..) {
            let to = (msg.to - 1) as usize;
            self.nodes[to].step(msg);
        }
        self.compare_delivered()
    }

    /// Compares the entries every replica has delivered: same index, same
    /// reqid, same payload. (In one process the replicas share payload
    /// buffers, so index and reqid are what can differ; comparing them
    /// costs far less than hashing every replica's copy did.)
    fn compare_delivered(&mut self) -> Result<(), String> {
        let common = self.unchecked.iter().map(VecDeque::len).min().unwrap_or(0);
        let (first, others) = self.unchecked.split_first_mut().expect("replicas");
        for reference in first.drain(..common) {
            for (slot, other) in others.iter_mut().enumerate() {
                let item = other.pop_front().expect("at least `common` entries");
                if !same_entry(&item, &reference) {
                    return Err(format!(
                        "replica {} delivered {item:?} where replica 1 delivered {reference:?}",
                        slot + 2
                    ));
                }
            }
            self.agreed += 1;
        }
        Ok(())
    }
}

pub fn run(args: &InprocArgs) -> Result<(), String> {
    if args.nodes == 0 || args.window == 0 {
        return Err("--nodes and --window must be positive".into());
    }
    if let Some(window) = args.dedup_window {
        if window == 0 || window > spaxos_core::DEDUP_WINDOW_MAX {
            return Err(format!(
                "--dedup-window must be in 1..={}",
                spaxos_core::DEDUP_WINDOW_MAX
            ));
        }
    }
    let mut cluster = Cluster::new(args.nodes, args.window, args.dedup_window);
    let mut outcomes = Vec::new();
    // Elect node 1 (not timed).
    for _ in 0..10_000 {
        if cluster.nodes[0].is_leader() {
            break;
        }
        cluster.nodes[0].tick();
        cluster.round(&mut outcomes)?;
    }
    if !cluster.nodes[0].is_leader() {
        return Err("no leader elected".into());
    }
    for _ in 0..4 {
        cluster.round(&mut outcomes)?;
    }
    outcomes.clear();
    cluster.messages = 0;
    cluster.records = 0;
    // Entries of the election (no-ops) are not among the `n`.
    let agreed_before = cluster.agreed;

    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut proposed_at: Vec<Option<Instant>> = vec![None; args.n as usize + 1];
    let payload = vec![b'x'; args.value_size];
    // Values are copied into a shared receive buffer and sliced out of it,
    // as a server's network path produces them (one allocation per ~1 MiB
    // of values, not two per value).
    let mut buffer = BytesMut::new();
    let mut batch = Vec::new();
    let (mut proposed, mut chosen, mut rounds) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while chosen < args.n {
        // One clock read per batch, taken before its values are built: each
        // proposal's latency counts from there (a little more than from its
        // own creation, and a clock read per proposal cost ~5 % of the loop).
        let batch_started = Instant::now();
        let count = (args.n - proposed).min(args.window - (proposed - chosen));
        // The batch's payloads are copied into one frame, and each value is
        // a slice of it, as values cut from one received network frame are.
        let frame_len = count as usize * payload.len();
        if buffer.capacity() < frame_len {
            buffer = BytesMut::with_capacity((1 << 20).max(frame_len));
        }
        for _ in 0..count {
            buffer.extend_from_slice(&payload);
        }
        let frame = buffer.split().freeze();
        for at in 0..count as usize {
            proposed += 1;
            let value = Value::One {
                reqid: proposed,
                value: frame.slice(at * payload.len()..(at + 1) * payload.len()),
            };
            proposed_at[proposed as usize] = Some(batch_started);
            batch.push(value);
        }
        // The round's new proposals go in as one batch (see
        // `Node::propose_batch`), as the runtime's state machine hands over
        // the proposals it takes in one round.
        for result in cluster.nodes[0].propose_batch(std::mem::take(&mut batch)) {
            result.map_err(|e| format!("propose: {e}"))?;
        }
        cluster.round(&mut outcomes)?;
        rounds += 1;
        let now = Instant::now();
        // Proposals of one batch share their start, so their latencies are
        // recorded as one count per batch (the same histogram, without a
        // subtraction and a record per proposal).
        let mut same_start: Option<(Instant, u64)> = None;
        for (reqid, outcome) in outcomes.drain(..) {
            match outcome {
                Outcome::Chosen { .. } => {
                    chosen += 1;
                    let Some(t) = proposed_at[reqid as usize].take() else {
                        continue;
                    };
                    match &mut same_start {
                        Some((start, count)) if *start == t => *count += 1,
                        run => {
                            if let Some((start, count)) = run.replace((t, 1)) {
                                record_latencies(&mut latency, now, start, count)?;
                            }
                        }
                    }
                }
                Outcome::Lost { index } => {
                    return Err(format!(
                        "reqid {reqid} lost at {index} with a stable leader"
                    ))
                }
            }
        }
        if let Some((start, count)) = same_start {
            record_latencies(&mut latency, now, start, count)?;
        }
        if rounds > args.n * 100 + 1000 {
            return Err(format!("no progress: {chosen} of {} chosen", args.n));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (messages, records) = (cluster.messages, cluster.records);
    // Let followers learn the tail (heartbeats carry chosen_through).
    for _ in 0..50 {
        for node in cluster.nodes.iter_mut() {
            node.tick();
        }
        cluster.round(&mut outcomes)?;
    }
    if cluster.agreed - agreed_before < args.n || cluster.unchecked.iter().any(|q| !q.is_empty()) {
        let delivered: Vec<u64> = cluster
            .unchecked
            .iter()
            .map(|q| cluster.agreed + q.len() as u64)
            .collect();
        return Err(format!(
            "replicas delivered {delivered:?} entries, {} of them on all; expected {}",
            cluster.agreed, args.n
        ));
    }
    let line = serde_json::json!({
        "system": "spaxos",
        "mode": "inproc",
        "nodes": args.nodes,
        "n": args.n,
        "value_size": args.value_size,
        "window": args.window,
        "dedup_window": args.dedup_window.unwrap_or(CoreConfig::new(1, vec![1]).dedup_window),
        "secs": secs,
        "ops_per_sec": args.n as f64 / secs,
        "p50_us": latency.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_us": latency.value_at_quantile(0.99) as f64 / 1000.0,
        "rounds": rounds,
        "messages": messages,
        "records": records,
        "replicas_agree": true,
    });
    println!("{line}");
    Ok(())
}

/// `a == b`, without comparing a payload byte by byte with itself: two
/// views of the same bytes (same address, same length) are equal.
fn same_entry(a: &ChosenItem, b: &ChosenItem) -> bool {
    match (&a.value, &b.value) {
        (
            Value::One {
                reqid: reqid_a,
                value: bytes_a,
            },
            Value::One {
                reqid: reqid_b,
                value: bytes_b,
            },
        ) => {
            a.index == b.index
                && reqid_a == reqid_b
                && bytes_a.len() == bytes_b.len()
                && (bytes_a.as_ptr() == bytes_b.as_ptr() || bytes_a == bytes_b)
        }
        _ => a == b,
    }
}

/// Records `count` proposals started at `start` and decided by `now`.
fn record_latencies(
    latency: &mut Histogram<u64>,
    now: Instant,
    start: Instant,
    count: u64,
) -> Result<(), String> {
    let nanos = now.duration_since(start).as_nanos() as u64;
    latency
        .record_n(nanos.max(1), count)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(index: u64, reqid: u64, payload: &'static [u8]) -> ChosenItem {
        ChosenItem {
            index,
            value: Value::One {
                reqid,
                value: payload.into(),
            },
        }
    }

    #[test]
    fn delivered_entries_are_compared_once_every_replica_has_them() {
        let mut cluster = Cluster::new(3, 10, None);
        cluster.unchecked[0].extend([item(1, 7, b"a"), item(2, 8, b"b")]);
        cluster.unchecked[1].extend([item(1, 7, b"a"), item(2, 8, b"b")]);
        cluster.unchecked[2].push_back(item(1, 7, b"a"));
        cluster.compare_delivered().unwrap();
        assert_eq!(cluster.agreed, 1);
        assert_eq!(cluster.unchecked[0].len(), 1);
        // One byte differs on the third replica.
        cluster.unchecked[2].push_back(item(2, 8, b"c"));
        let err = cluster.compare_delivered().unwrap_err();
        assert!(err.contains("replica 3"), "{err}");
    }

    #[test]
    fn entries_are_compared_by_content_not_by_buffer() {
        let shared = bytes::Bytes::from_static(b"abc");
        let one = |reqid, value: bytes::Bytes| ChosenItem {
            index: 1,
            value: Value::One { reqid, value },
        };
        // The same buffer, an equal copy, a different length, other bytes.
        assert!(same_entry(&one(7, shared.clone()), &one(7, shared.clone())));
        assert!(same_entry(&one(7, shared.clone()), &one(7, "abc".into())));
        assert!(!same_entry(
            &one(7, shared.clone()),
            &one(7, shared.slice(..2))
        ));
        assert!(!same_entry(&one(7, shared.clone()), &one(7, "abd".into())));
        assert!(!same_entry(
            &one(7, shared.clone()),
            &one(8, shared.clone())
        ));
        let noop = ChosenItem {
            index: 1,
            value: Value::Noop,
        };
        assert!(!same_entry(&one(7, shared), &noop));
        assert!(same_entry(&noop, &noop.clone()));
    }

    #[test]
    fn a_different_index_or_reqid_is_a_disagreement() {
        for other in [item(2, 7, b"a"), item(1, 9, b"a")] {
            let mut cluster = Cluster::new(2, 10, None);
            cluster.unchecked[0].push_back(item(1, 7, b"a"));
            cluster.unchecked[1].push_back(other);
            assert!(cluster.compare_delivered().is_err());
        }
    }
}
