//! Seeded, deterministic simulation of a spaxos cluster.
//!
//! One seed fixes everything: message delays, drops, duplicates, reordering,
//! partitions, crashes (a crashed node loses every batch not yet durable),
//! restarts from durable state only, disk latency, and client proposals on
//! random nodes. The [`checker`] verifies the safety rules after every event;
//! after the chaos phase the network heals and a liveness check follows.

pub mod checker;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spaxos_core::{Body, CoreConfig, Message, Node, NodeId, ProposeError, Ready, Value};

use checker::{Checker, ProposalRecord};
use spaxos_storage::{MemStorage, Storage};

/// Time units per core tick (message and disk latencies are finer than a tick).
const UNITS_PER_TICK: u64 = 10;

/// A deliberate bug, to show the checkers bite.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Mutation {
    /// The driver sends messages before their batch is durable.
    SendBeforePersist,
    /// The driver acknowledges writes but a crash loses them anyway
    /// (a storage that lies about fsync).
    LyingDisk,
}

impl std::str::FromStr for Mutation {
    type Err = String;
    fn from_str(s: &str) -> Result<Mutation, String> {
        match s {
            "send-before-persist" => Ok(Mutation::SendBeforePersist),
            "lying-disk" => Ok(Mutation::LyingDisk),
            other => Err(format!(
                "unknown mutation {other:?} (send-before-persist, lying-disk)"
            )),
        }
    }
}

/// Knobs of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Ticks of chaos (faults on), then `heal_ticks` with a clean network.
    pub chaos_ticks: u64,
    pub heal_ticks: u64,
    /// After healing, every proposal must have an outcome within this many ticks.
    pub liveness_ticks: u64,
    pub trace: bool,
    pub mutation: Option<Mutation>,
}

impl SimConfig {
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            chaos_ticks: 1500,
            heal_ticks: 300,
            liveness_ticks: 300,
            trace: false,
            mutation: None,
        }
    }
}

/// Fault mix drawn per seed, so the seeds together cover calm and hostile runs.
#[derive(Clone, Debug)]
struct Faults {
    drop: f64,
    duplicate: f64,
    delay_max: u64,
    crash: f64,
    partition: f64,
    propose: f64,
    disk_latency_max: u64,
    /// Send leader accepts before the leader's own write (the runtime option).
    accepts_before_persist: bool,
}

struct SimNode {
    id: NodeId,
    node: Option<Node>,
    cfg: CoreConfig,
    /// The production in-memory store: only what it holds survives a crash.
    disk: MemStorage,
    /// With `--mutate lying-disk`: an older copy of the disk that a crash
    /// falls back to, losing writes that were acknowledged since.
    stale_disk: Option<MemStorage>,
    writes: u64,
    /// Batches written but not yet durable: (due time, records, messages).
    unpersisted: VecDeque<(u64, Vec<spaxos_core::Record>, Vec<Message>)>,
    incarnation: u64,
    down_until: u64,
}

/// Result of one seed.
#[derive(Debug)]
pub struct SimReport {
    pub seed: u64,
    pub nodes: usize,
    pub violations: Vec<String>,
    pub proposals: usize,
    pub chosen: usize,
    pub messages: u64,
    pub crashes: u64,
    pub raw_duplicates: u64,
    pub repeats_past_window: u64,
    pub trace: Vec<String>,
}

impl SimReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

struct Sim {
    cfg: SimConfig,
    faults: Faults,
    rng: ChaCha8Rng,
    now: u64,
    nodes: Vec<SimNode>,
    /// In-flight messages by (delivery time, sequence).
    network: BinaryHeap<Reverse<(u64, u64, usize)>>,
    in_flight: Vec<Option<Message>>,
    free_slots: Vec<usize>,
    seq: u64,
    /// Blocked links (from slot, to slot).
    blocked: Vec<Vec<bool>>,
    checker: Checker,
    next_reqid: u64,
    messages: u64,
    crashes: u64,
    trace: Vec<String>,
    healing: bool,
}

/// Runs one seed to completion and reports what the checkers found.
pub fn run(cfg: SimConfig) -> SimReport {
    let seed = cfg.seed;
    let nodes = cfg.nodes;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(cfg);
        sim.run();
        sim
    }));
    match result {
        Ok(sim) => SimReport {
            seed,
            nodes,
            violations: sim.checker.violations.clone(),
            proposals: sim.checker.proposals.len(),
            chosen: sim.checker.delivered.len(),
            messages: sim.messages,
            crashes: sim.crashes,
            raw_duplicates: sim.checker.raw_duplicates,
            repeats_past_window: sim.checker.repeats_past_window,
            trace: sim.trace,
        },
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            SimReport {
                seed,
                nodes,
                violations: vec![format!("panic: {text}")],
                proposals: 0,
                chosen: 0,
                messages: 0,
                crashes: 0,
                raw_duplicates: 0,
                repeats_past_window: 0,
                trace: Vec::new(),
            }
        }
    }
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let calm = rng.random_bool(0.2);
        let faults = Faults {
            drop: if calm {
                0.0
            } else {
                rng.random_range(0.0..0.15)
            },
            duplicate: if calm {
                0.0
            } else {
                rng.random_range(0.0..0.05)
            },
            delay_max: rng.random_range(2..40),
            crash: if calm {
                0.0
            } else {
                rng.random_range(0.0..0.004)
            },
            partition: if calm {
                0.0
            } else {
                rng.random_range(0.0..0.01)
            },
            propose: rng.random_range(0.05..0.8),
            disk_latency_max: rng.random_range(1..20),
            accepts_before_persist: rng.random_bool(0.5),
        };
        let members: Vec<NodeId> = (1..=cfg.nodes as u64).collect();
        let small_limits = rng.random_bool(0.3);
        let mut faults = faults;
        if small_limits {
            faults.propose = faults.propose.min(0.2);
        }
        let retry_lost = rng.random_bool(0.7);
        // A seed chooses a few hundred entries: small windows make the
        // duplicate window rotate (and forget) many times per run.
        let dedup_window = if rng.random_bool(0.3) {
            [3, 16, 64][rng.random_range(0..3)]
        } else {
            CoreConfig::new(1, vec![1]).dedup_window
        };
        let nodes = members
            .iter()
            .map(|&id| {
                let mut core = CoreConfig::new(id, members.clone());
                core.rng_seed = cfg.seed;
                core.retry_lost = retry_lost;
                core.dedup_window = dedup_window;
                if small_limits {
                    // Small windows cannot keep up with heavy load; the
                    // liveness bound assumes the offered load is sustainable.
                    core.inflight_max = 4;
                    core.batch_bytes_max = 64;
                    core.catchup_batch_max = 16;
                    core.leaderless_inflight_max = 2;
                }
                SimNode {
                    id,
                    node: Some(Node::new(core.clone()).expect("valid sim config")),
                    cfg: core,
                    disk: MemStorage::new(),
                    stale_disk: None,
                    writes: 0,
                    unpersisted: VecDeque::new(),
                    incarnation: 0,
                    down_until: 0,
                }
            })
            .collect();
        let n = cfg.nodes;
        let mut sim = Sim {
            checker: Checker::new(members, dedup_window),
            cfg,
            faults,
            rng,
            now: 0,
            nodes,
            network: BinaryHeap::new(),
            in_flight: Vec::new(),
            free_slots: Vec::new(),
            seq: 0,
            blocked: vec![vec![false; n]; n],
            next_reqid: 1,
            messages: 0,
            crashes: 0,
            trace: Vec::new(),
            healing: false,
        };
        let faults = format!(
            "{:?} small_limits={small_limits} retry_lost={retry_lost} dedup_window={dedup_window}",
            sim.faults
        );
        sim.log(format!("seed {} nodes {} faults {faults}", sim.cfg.seed, n));
        sim
    }

    fn log(&mut self, line: String) {
        if self.cfg.trace {
            self.trace.push(format!(
                "[t={} tick={}] {line}",
                self.now,
                self.now / UNITS_PER_TICK
            ));
        }
    }

    fn run(&mut self) {
        let chaos_end = self.cfg.chaos_ticks * UNITS_PER_TICK;
        let heal_end = chaos_end + self.cfg.heal_ticks * UNITS_PER_TICK;
        let end = heal_end + self.cfg.liveness_ticks * UNITS_PER_TICK;
        // Early burst: proposals on every node before any leader exists, so
        // leaderless proposers race for the same indices.
        for slot in 0..self.nodes.len() {
            for _ in 0..3 {
                self.client_propose(slot);
            }
        }
        while self.now < end {
            if self.now == chaos_end {
                self.heal();
            }
            self.deliver_due();
            self.persist_due();
            if self.now.is_multiple_of(UNITS_PER_TICK) {
                if self.now < chaos_end {
                    self.chaos();
                }
                if self.now < heal_end - self.cfg.heal_ticks * UNITS_PER_TICK / 2 {
                    let p = self.faults.propose;
                    if self.rng.random_bool(p) {
                        let slot = self.rng.random_range(0..self.nodes.len());
                        self.client_propose(slot);
                    }
                }
                for slot in 0..self.nodes.len() {
                    if let Some(node) = self.nodes[slot].node.as_mut() {
                        node.tick();
                        self.drain(slot);
                    }
                }
            }
            if !self.checker.violations.is_empty() {
                return;
            }
            self.now += 1;
        }
        self.check_liveness();
    }

    fn chaos(&mut self) {
        let n = self.nodes.len();
        // Crashes and restarts.
        for slot in 0..n {
            if self.nodes[slot].node.is_some() {
                let p = self.faults.crash;
                if self.rng.random_bool(p) {
                    self.crash(slot);
                }
            } else if self.now >= self.nodes[slot].down_until {
                self.restart(slot);
            }
        }
        // Partitions: cut a random set of links, or heal all.
        let p = self.faults.partition;
        if self.rng.random_bool(p) {
            if self.rng.random_bool(0.4) {
                self.unblock_all();
                self.log("partition healed".into());
            } else {
                let victim = self.rng.random_range(0..n);
                let one_way = self.rng.random_bool(0.3);
                for other in 0..n {
                    if other != victim {
                        self.blocked[victim][other] = true;
                        if !one_way {
                            self.blocked[other][victim] = true;
                        }
                    }
                }
                self.log(format!(
                    "partition: node {} isolated (one_way={one_way})",
                    victim + 1
                ));
            }
        }
    }

    fn unblock_all(&mut self) {
        for row in &mut self.blocked {
            row.iter_mut().for_each(|b| *b = false);
        }
    }

    fn heal(&mut self) {
        self.healing = true;
        self.unblock_all();
        for slot in 0..self.nodes.len() {
            if self.nodes[slot].node.is_none() {
                self.restart(slot);
            }
        }
        self.log("heal: network clean, every node up".into());
    }

    fn crash(&mut self, slot: usize) {
        let lying = self.cfg.mutation == Some(Mutation::LyingDisk);
        let node = &mut self.nodes[slot];
        node.node = None;
        node.unpersisted.clear();
        if lying {
            // The disk acknowledged writes it never made: they are gone.
            if let Some(stale) = node.stale_disk.take() {
                node.disk = stale;
            }
        }
        node.down_until = self.now + self.rng.random_range(50..400) * UNITS_PER_TICK / 10;
        self.crashes += 1;
        self.log(format!("crash node {}", slot + 1));
    }

    fn restart(&mut self, slot: usize) {
        let node = &mut self.nodes[slot];
        node.incarnation += 1;
        let mut cfg = node.cfg.clone();
        cfg.rng_seed = self.cfg.seed ^ (node.incarnation << 32);
        let recovered = match node.disk.recover(cfg.dedup_history()) {
            Ok(recovered) => recovered,
            Err(e) => panic!("node {} cannot recover its store: {e}", node.id),
        };
        node.node = Some(Node::restore(cfg, recovered).expect("valid sim config"));
        let id = node.id;
        self.log(format!("restart node {id}"));
    }

    fn client_propose(&mut self, slot: usize) {
        let incarnation = self.nodes[slot].incarnation;
        let id = self.nodes[slot].id;
        let Some(node) = self.nodes[slot].node.as_mut() else {
            return;
        };
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        let value = if self.rng.random_bool(0.1) {
            Value::Many {
                reqid,
                values: vec![
                    Bytes::from(format!("a{reqid}")),
                    Bytes::from(format!("b{reqid}")),
                ]
                .into(),
            }
        } else {
            Value::One {
                reqid,
                value: Bytes::from(format!("v{reqid}")),
            }
        };
        self.checker.proposals.insert(
            reqid,
            ProposalRecord {
                value: value.clone(),
                node: id,
                incarnation,
                proposed_at: self.now,
                outcome: None,
            },
        );
        match node.propose(value) {
            Ok(()) => {}
            Err(ProposeError::Busy(_)) => {
                self.checker.proposals.remove(&reqid);
            }
            Err(e) => self
                .checker
                .violations
                .push(format!("propose {reqid} refused: {e}")),
        }
        self.log(format!("client propose reqid {reqid} on node {id}"));
        self.drain(slot);
    }

    /// Takes the node's output: persist queue, network, checkers.
    fn drain(&mut self, slot: usize) {
        loop {
            let Some(node) = self.nodes[slot].node.as_mut() else {
                return;
            };
            if !node.has_ready() {
                return;
            }
            let ready = node.ready();
            self.handle_ready(slot, ready);
        }
    }

    fn handle_ready(&mut self, slot: usize, ready: Ready) {
        let id = self.nodes[slot].id;
        for msg in ready.messages.iter().chain(ready.messages_now.iter()) {
            self.checker.on_produced(msg);
        }
        for item in &ready.chosen {
            self.checker.on_delivered(id, item);
        }
        for &(reqid, outcome) in &ready.outcomes {
            self.log(format!("node {id} outcome reqid {reqid}: {outcome:?}"));
            self.checker.on_outcome(id, reqid, outcome);
        }
        for read in &ready.reads {
            let mut entries = Vec::new();
            for index in read.from_index..=read.to_index {
                match self.nodes[slot].disk.chosen(index) {
                    Ok(Some(value)) => entries.push((index, value)),
                    _ => break,
                }
            }
            if !entries.is_empty() {
                let msg = Message {
                    from: id,
                    to: read.to,
                    body: Body::Learn { entries },
                };
                self.send(slot, msg);
            }
        }
        let mut after_persist = ready.messages;
        if self.faults.accepts_before_persist {
            for msg in ready.messages_now {
                self.send(slot, msg);
            }
        } else {
            after_persist.extend(ready.messages_now);
        }
        if self.cfg.mutation == Some(Mutation::SendBeforePersist) {
            for msg in std::mem::take(&mut after_persist) {
                self.send(slot, msg);
            }
        }
        if ready.records.is_empty() && after_persist.is_empty() {
            return;
        }
        let latency = self.rng.random_range(0..=self.faults.disk_latency_max);
        let previous = self.nodes[slot]
            .unpersisted
            .back()
            .map(|b| b.0)
            .unwrap_or(0);
        let due = (self.now + latency).max(previous);
        self.nodes[slot]
            .unpersisted
            .push_back((due, ready.records, after_persist));
        if due == self.now {
            self.persist_due_node(slot);
        }
    }

    fn persist_due(&mut self) {
        for slot in 0..self.nodes.len() {
            self.persist_due_node(slot);
        }
    }

    fn persist_due_node(&mut self, slot: usize) {
        while self.nodes[slot]
            .unpersisted
            .front()
            .is_some_and(|b| b.0 <= self.now)
        {
            let (_, records, messages) = self.nodes[slot].unpersisted.pop_front().expect("checked");
            let node = &mut self.nodes[slot];
            if self.cfg.mutation == Some(Mutation::LyingDisk) && node.writes.is_multiple_of(4) {
                node.stale_disk = Some(node.disk.clone());
            }
            node.writes += 1;
            // The store checks each batch against the write contract: a
            // malformed batch is a core bug (caught as a panic by `run`).
            if let Err(e) = node.disk.write(&records) {
                panic!("node {} wrote an invalid batch: {e}", node.id);
            }
            for msg in messages {
                self.send(slot, msg);
            }
        }
    }

    /// A message leaves node `slot`: checked against its disk, then lost,
    /// delayed or duplicated by the network (messages to self loop back).
    fn send(&mut self, slot: usize, msg: Message) {
        self.checker.on_sent(&msg, &self.nodes[slot].disk);
        self.messages += 1;
        let to_slot = (msg.to - 1) as usize;
        if msg.to == msg.from {
            if let Some(node) = self.nodes[slot].node.as_mut() {
                node.step(msg);
                self.drain(slot);
            }
            return;
        }
        if to_slot >= self.nodes.len() || self.blocked[slot][to_slot] {
            return;
        }
        if !self.healing && self.rng.random_bool(self.faults.drop) {
            return;
        }
        let copies = if !self.healing && self.rng.random_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.rng.random_range(0..self.faults.delay_max);
            let at = self.now + delay;
            self.seq += 1;
            let slot_id = match self.free_slots.pop() {
                Some(i) => {
                    self.in_flight[i] = Some(msg.clone());
                    i
                }
                None => {
                    self.in_flight.push(Some(msg.clone()));
                    self.in_flight.len() - 1
                }
            };
            self.network.push(Reverse((at, self.seq, slot_id)));
        }
    }

    fn deliver_due(&mut self) {
        while let Some(&Reverse((at, _, id))) = self.network.peek() {
            if at > self.now {
                break;
            }
            self.network.pop();
            let msg = self.in_flight[id]
                .take()
                .expect("in-flight slot holds a message");
            self.free_slots.push(id);
            let to_slot = (msg.to - 1) as usize;
            let from_slot = (msg.from - 1) as usize;
            if self.blocked[from_slot][to_slot] {
                continue;
            }
            if self.cfg.trace {
                let line = format!("deliver {} -> {}: {:?}", msg.from, msg.to, short(&msg.body));
                self.log(line);
            }
            if let Some(node) = self.nodes[to_slot].node.as_mut() {
                node.step(msg);
                self.drain(to_slot);
            }
        }
    }

    fn check_liveness(&mut self) {
        let mut missing = Vec::new();
        for (&reqid, p) in &self.checker.proposals {
            let slot = (p.node - 1) as usize;
            let same_life = self.nodes[slot].incarnation == p.incarnation;
            if same_life && p.outcome.is_none() {
                missing.push(reqid);
            }
        }
        missing.sort_unstable();
        if !missing.is_empty() {
            let sample: Vec<String> = missing
                .iter()
                .take(5)
                .map(|r| {
                    let p = &self.checker.proposals[r];
                    let slot = (p.node - 1) as usize;
                    let state = self.nodes[slot]
                        .node
                        .as_ref()
                        .map(|n| (n.pending_proposal(*r), n.status()));
                    format!("{r} on node {}: {state:?}", p.node)
                })
                .collect();
            self.checker.violations.push(format!(
                "liveness: {} proposals on live nodes have no outcome after healing (e.g. reqids {sample:?})",
                missing.len()
            ));
        }
        let progress: Vec<u64> = self
            .nodes
            .iter()
            .map(|n| n.node.as_ref().map(|c| c.chosen_through()).unwrap_or(0))
            .collect();
        let max_truth = self.checker.truth.keys().copied().max().unwrap_or(0);
        if progress.iter().any(|&p| p < max_truth) {
            self.checker.violations.push(format!(
                "liveness: after healing nodes delivered through {progress:?}, but index {max_truth} is chosen"
            ));
        }
    }
}

fn short(body: &Body) -> String {
    match body {
        Body::Accept {
            ballot,
            entries,
            chosen_through,
        } => format!(
            "accept b={ballot} idx={:?} ct={chosen_through}",
            entries.iter().map(|e| e.0).collect::<Vec<_>>()
        ),
        Body::Learn { entries } => format!(
            "learn idx={:?}",
            entries.iter().map(|e| e.0).collect::<Vec<_>>()
        ),
        Body::Forward { values } => format!(
            "forward reqids={:?}",
            values.iter().map(|v| v.reqid()).collect::<Vec<_>>()
        ),
        Body::PromiseRange {
            ballot,
            from_index,
            chosen_through,
            entries,
        } => format!(
            "promise_range b={ballot} from={from_index} ct={chosen_through} entries={:?}",
            entries
                .iter()
                .map(|e| (e.index, e.accepted))
                .collect::<Vec<_>>()
        ),
        other => format!("{other:?}"),
    }
}
