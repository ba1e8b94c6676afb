//! The protocol node: state, public API, and the dispatch of inputs to the
//! role handlers (`acceptor.rs`, `leader.rs`, `proposer.rs`, `learner.rs`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{ConfigError, CoreConfig};
use crate::dedup::RecentReqids;
use crate::message::{Body, Message};
use crate::proposer::SingleProposer;
use crate::ready::Ready;
use crate::types::{
    AcceptEntries, Ballot, Index, InstanceState, NodeId, NodeState, Outcome, Record,
    RecoveredState, ReqId, Value,
};

/// Hasher for maps keyed by `u64` ids (reqids, indices): one multiply, no
/// per-map random state (the core must be deterministic anyway).
#[derive(Default, Clone, Copy)]
pub struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0 ^ byte as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<U64Hasher>>;

/// A proposal was refused before it entered the protocol; nothing was sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ProposeError {
    #[error("reqid must be non-zero")]
    ZeroReqId,
    #[error("a no-op cannot be proposed")]
    Noop,
    #[error("value of {size} bytes exceeds value_bytes_max ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("reqid {0} is already pending on this node")]
    Duplicate(ReqId),
    #[error("{0} proposals are pending on this node; retry later")]
    Busy(usize),
}

/// The role a node plays right now.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

/// A snapshot of a node's progress, for `status()` and tests.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: Role,
    /// The leader this node follows (itself when leading).
    pub leader: Option<NodeId>,
    pub leader_ballot: Ballot,
    /// Every index at or below this is chosen and delivered.
    pub chosen_through: Index,
    /// Highest index known to exist.
    pub max_index: Index,
    /// Proposals made here without an outcome yet.
    pub pending: usize,
    /// Instances held in memory.
    pub instances: usize,
    /// Chosen entries delivered as no-ops because their reqid was already
    /// chosen within the dedup window.
    pub duplicates_suppressed: u64,
    /// Set when a catch-up peer had compacted the indices this node needs.
    pub catchup_compacted_below: Option<Index>,
}

/// Durable and volatile state of one live index.
#[derive(Clone, Debug, Default)]
pub(crate) struct Instance {
    // Acceptor (durable: mirrored in `Record::Instance`).
    pub promised: Ballot,
    pub accepted: Ballot,
    pub value: Option<Value>,
    pub chosen: bool,
    // Leader bookkeeping: votes for `vote_ballot` by member slot.
    pub vote_ballot: Ballot,
    pub votes: u64,
    pub proposed_at: u64,
    /// A proposal made on this node was tried at this index.
    pub origin_reqid: ReqId,
    pub created_at: u64,
    /// Single-index Paxos run by this node (leaderless proposal or no-op).
    pub proposer: Option<Box<SingleProposer>>,
}

impl Instance {
    /// Marks the value accepted here chosen (a quorum accepted it at the
    /// ballot it was accepted at). True if a single-index proposer was
    /// running here: the caller frees its slot in `leaderless_active`.
    pub fn mark_chosen(&mut self, index: Index) -> bool {
        assert!(
            self.value.is_some(),
            "index {index} chosen without an accepted value"
        );
        self.chosen = true;
        self.proposer.take().is_some()
    }

    /// The instance `propose_at_for` makes for a local proposal placed at
    /// `ballot` on tick `at`, before any vote: the origin is its own reqid.
    pub fn leader_proposal(ballot: Ballot, value: &Value, at: u64) -> Instance {
        Instance {
            promised: ballot,
            accepted: ballot,
            value: Some(value.clone()),
            chosen: false,
            vote_ballot: ballot,
            votes: 0,
            proposed_at: at,
            origin_reqid: value.reqid().unwrap_or(0),
            created_at: at,
            proposer: None,
        }
    }

    /// Notes that the proposal `reqid` made on this node is tried here.
    /// False if another one already is: the caller keeps `reqid` in
    /// `Node::extra_origins`.
    pub fn add_origin(&mut self, reqid: ReqId) -> bool {
        if self.origin_reqid == 0 || self.origin_reqid == reqid {
            self.origin_reqid = reqid;
            true
        } else {
            false
        }
    }
}

/// A follower's batch of accepted entries kept as the leader sent it, in
/// place of one `Instance` per entry: the steady state's hot path (see
/// `Node::accept_run`). Equivalent to the instances it stands for, which
/// `Node::materialize_runs` creates before anything else reads them.
#[derive(Debug)]
pub(crate) struct AcceptedRun {
    /// Promised and accepted at every entry.
    pub ballot: Ballot,
    /// Consecutive indices, in order.
    pub entries: AcceptEntries,
    /// Entries before this position are delivered.
    pub start: usize,
    /// Entries before this position are chosen (`start <= chosen`).
    pub chosen: usize,
    /// The tick the entries arrived (an instance's `created_at`).
    pub created_at: u64,
}

impl AcceptedRun {
    pub fn first_index(&self) -> Index {
        self.entries[0].0
    }

    /// One past the last index.
    pub fn end_index(&self) -> Index {
        self.first_index() + self.entries.len() as u64
    }

    /// The instance the entry at `position` stands for.
    pub fn instance(&self, position: usize) -> Instance {
        Instance {
            promised: self.ballot,
            accepted: self.ballot,
            value: Some(self.entries[position].1.clone()),
            chosen: position < self.chosen,
            created_at: self.created_at,
            ..Instance::default()
        }
    }
}

/// The leader's accepts of one round at its ballot, kept as the round's
/// record vector (the very entries its `Accept` messages carried) instead
/// of an instance per index: positions `start..end` of `entries` (earlier
/// positions belong to instances or are delivered). Every acknowledgement
/// so far covered the whole run, so the votes are the run's. Equivalent to
/// the instances it stands for, like `AcceptedRun`.
#[derive(Debug)]
pub(crate) struct LeaderRun {
    pub ballot: Ballot,
    pub entries: AcceptEntries,
    /// The first position not delivered.
    pub start: usize,
    /// One past the run's last position.
    pub end: usize,
    /// Votes for `ballot` by member slot, for every entry of the run.
    pub votes: u64,
    pub chosen: bool,
    /// The tick the entries were proposed (their instances' `proposed_at`
    /// and `created_at`).
    pub proposed_at: u64,
}

impl LeaderRun {
    /// The first undelivered index.
    pub fn start_index(&self) -> Index {
        self.entries[self.start].0
    }

    /// One past the run's last index.
    pub fn end_index(&self) -> Index {
        self.entries[self.end - 1].0 + 1
    }

    /// The instance the entry at `position` stands for: a local proposal
    /// placed at the leader's ballot, its origin its own reqid.
    pub fn instance(&self, position: usize) -> Instance {
        Instance {
            chosen: self.chosen,
            votes: self.votes,
            ..Instance::leader_proposal(self.ballot, &self.entries[position].1, self.proposed_at)
        }
    }
}

/// Leader accepts of this round placed without instances, not yet sent:
/// entries `offset..offset + count` of the `Record::Accepted` at
/// `position` in `Node::out.records` (one per such record; several when
/// other records came between). `flush_batches` makes each a `LeaderRun`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenRun {
    pub ballot: Ballot,
    pub position: usize,
    pub offset: usize,
    pub count: usize,
    /// Its first index.
    pub first: Index,
    pub proposed_at: u64,
}

/// Chosen marks met in increasing index order, written as runs: one
/// record per run instead of a look at the last record per index.
#[derive(Default)]
pub(crate) struct ChosenRuns {
    run: Option<(Index, Index)>,
}

impl ChosenRuns {
    pub fn add(&mut self, records: &mut Vec<Record>, index: Index) {
        match &mut self.run {
            Some((_, last)) if last.checked_add(1) == Some(index) => *last = index,
            _ => {
                self.flush(records);
                self.run = Some((index, index));
            }
        }
    }

    /// Writes the run in progress (call before anything else is recorded).
    /// `add` for each of `first..=last`.
    pub fn add_range(&mut self, records: &mut Vec<Record>, first: Index, last: Index) {
        match &mut self.run {
            Some((_, end)) if end.checked_add(1) == Some(first) => *end = last,
            _ => {
                self.flush(records);
                self.run = Some((first, last));
            }
        }
    }

    pub fn flush(&mut self, records: &mut Vec<Record>) {
        if let Some((first, last)) = self.run.take() {
            Record::push_chosen_run(records, first, last);
        }
    }
}

/// A proposal made on this node that has no outcome yet.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub value: Value,
    /// The index it is being tried at, when known.
    pub assigned: Option<Index>,
    /// It was forwarded at least once: a copy may sit at an index this node
    /// never learned, so a loss cannot be reported as final.
    pub forwarded: bool,
    /// Tick of the last send (forward retries).
    pub sent_at: u64,
}

pub(crate) struct Candidate {
    pub ballot: Ballot,
    pub from_index: Index,
    pub promises: u64,
    /// Highest-ballot accepted value reported per index.
    pub entries: BTreeMap<Index, (Ballot, Value)>,
    /// Values reported as chosen.
    pub chosen: Vec<(Index, Value)>,
    pub chosen_through: Index,
    pub chosen_through_from: NodeId,
}

pub(crate) struct Leader {
    pub ballot: Ballot,
    /// Next index to assign.
    pub next_index: Index,
    /// Reqids assigned during this leadership and not yet delivered.
    pub assigned: FastMap<ReqId, Index>,
    /// Proposals waiting for an in-flight slot, with their origin node.
    pub queue: VecDeque<(Value, NodeId)>,
    /// Members heard from since the last quorum check (bit per slot).
    pub heard: u64,
    pub last_heartbeat: u64,
    pub quorum_check_at: u64,
    pub last_retry_scan: u64,
}

pub(crate) enum RoleState {
    Follower,
    Candidate(Candidate),
    Leader(Leader),
}

/// One member's protocol state machine. See the crate docs for the driving
/// loop.
///
/// ```
/// use spaxos_core::{CoreConfig, Node, Value};
/// let mut node = Node::new(CoreConfig::new(1, vec![1])).unwrap();
/// // A single-member group elects itself after its election timeout.
/// let mut chosen = Vec::new();
/// node.propose(Value::One { reqid: 7, value: "hello".into() }).unwrap();
/// for _ in 0..100 {
///     node.tick();
///     let ready = node.ready();
///     // (persist ready.records here, then deliver the messages)
///     for msg in ready.messages.into_iter().chain(ready.messages_now) {
///         node.step(msg);
///     }
///     chosen.extend(ready.chosen);
/// }
/// assert_eq!(chosen[0].value.reqid(), Some(7));
/// ```
pub struct Node {
    pub(crate) cfg: CoreConfig,
    pub(crate) id: NodeId,
    /// Members, sorted; a member's slot is its position (vote bitmasks).
    pub(crate) members: Vec<NodeId>,
    pub(crate) quorum: usize,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) now: u64,

    pub(crate) state: NodeState,
    pub(crate) max_round_seen: u64,

    /// First index held in `instances`; every index below is chosen and delivered.
    pub(crate) base: Index,
    pub(crate) instances: VecDeque<Instance>,
    /// Accepted entries past the last instance, batch by batch (empty
    /// unless this node follows; see `AcceptedRun`).
    pub(crate) runs: VecDeque<AcceptedRun>,
    /// The leader's accepts past the instances, round by round (empty
    /// unless this node leads; see `LeaderRun`), and this round's.
    pub(crate) leader_runs: VecDeque<LeaderRun>,
    pub(crate) open_runs: Vec<OpenRun>,
    /// False only in tests that check runs against plain instances.
    pub(crate) accept_runs: bool,
    pub(crate) max_index: Index,

    /// reqid -> index of chosen entries within the dedup window.
    pub(crate) recent: RecentReqids,
    pub(crate) duplicates_suppressed: u64,

    pub(crate) role: RoleState,
    pub(crate) leader: Option<(NodeId, Ballot)>,
    pub(crate) election_elapsed: u64,
    pub(crate) election_timeout: u64,
    /// Tick since which no leader is known.
    pub(crate) leaderless_since: u64,

    pub(crate) pending: FastMap<ReqId, Pending>,
    /// Proposals made here waiting for a leader or a leaderless slot.
    pub(crate) queue: VecDeque<ReqId>,
    /// Forward retries: (due tick, reqid).
    pub(crate) forward_retries: VecDeque<(u64, ReqId)>,
    pub(crate) leaderless_active: usize,
    pub(crate) noop_scan_at: u64,
    /// More proposals made here tried at one index (rare: a forwarded one
    /// and a local one, across a leader change). The first lives in
    /// `Instance::origin_reqid`.
    pub(crate) extra_origins: BTreeMap<Index, Vec<ReqId>>,

    /// Highest chosen-through reported by a peer, and who reported it.
    pub(crate) known_chosen_through: (Index, NodeId),
    pub(crate) catchup_sent_at: Option<u64>,
    pub(crate) catchup_compacted_below: Option<Index>,

    pub(crate) out: Ready,
    /// Where in `out.records` this round's leader accepts are (one
    /// `Record::Accepted` each run of them): broadcast at `ready()`.
    pub(crate) round_accepts: Vec<usize>,
    /// How many accepts the last round broadcast (sizes the next record).
    pub(crate) last_round_accepts: usize,
    /// Indices the local acceptor accepted as leader, acknowledged to itself
    /// after they are durable.
    pub(crate) self_accepted: Vec<Index>,
    pub(crate) forward_batch: Vec<Value>,
    pub(crate) forward_acks: BTreeMap<NodeId, Vec<(ReqId, Index)>>,
}

impl Node {
    /// A fresh node with empty durable state.
    pub fn new(cfg: CoreConfig) -> Result<Node, ConfigError> {
        Node::restore(cfg, RecoveredState::default())
    }

    /// A node continuing from recovered durable state (the seed's rebuild).
    pub fn restore(cfg: CoreConfig, recovered: RecoveredState) -> Result<Node, ConfigError> {
        cfg.validate()?;
        let mut members = cfg.members.clone();
        members.sort_unstable();
        let quorum = cfg.quorum();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.rng_seed ^ cfg.id.wrapping_mul(0x2545_F491));
        let election_timeout = cfg.election_timeout_ticks as u64
            + rng.random_range(0..cfg.election_timeout_range_ticks.max(1) as u64);
        let base = recovered.chosen_through + 1;
        let mut node = Node {
            id: cfg.id,
            members,
            quorum,
            rng,
            now: 0,
            state: recovered.node,
            max_round_seen: recovered.node.max_round.max(recovered.node.promised.round),
            base,
            instances: VecDeque::new(),
            runs: VecDeque::new(),
            leader_runs: VecDeque::new(),
            open_runs: Vec::new(),
            accept_runs: true,
            max_index: recovered.chosen_through,
            // The seed only spreads the table; answers never depend on it.
            recent: RecentReqids::new(cfg.dedup_window, cfg.rng_seed ^ cfg.id.rotate_left(32)),
            duplicates_suppressed: 0,
            role: RoleState::Follower,
            leader: None,
            election_elapsed: 0,
            election_timeout,
            leaderless_since: 0,
            pending: FastMap::default(),
            queue: VecDeque::new(),
            forward_retries: VecDeque::new(),
            leaderless_active: 0,
            noop_scan_at: 0,
            extra_origins: BTreeMap::new(),
            known_chosen_through: (0, 0),
            catchup_sent_at: None,
            catchup_compacted_below: None,
            out: Ready::default(),
            round_accepts: Vec::new(),
            last_round_accepts: 0,
            self_accepted: Vec::new(),
            forward_batch: Vec::new(),
            forward_acks: BTreeMap::new(),
            cfg,
        };
        let mut recent = recovered.recent_reqids;
        recent.sort_unstable();
        for (index, reqid) in recent {
            if index <= recovered.chosen_through {
                node.recent.insert(index, reqid);
            }
        }
        for st in recovered.instances {
            if st.index < base {
                continue;
            }
            assert!(
                st.index - base < (1 << 24),
                "recovered instance {} far beyond chosen_through {}",
                st.index,
                base - 1
            );
            let inst = node.instance_mut_force(st.index);
            inst.promised = st.promised;
            inst.accepted = st.accepted;
            inst.value = st.value;
            inst.chosen = st.chosen;
            node.max_round_seen = node.max_round_seen.max(st.promised.round);
            node.max_index = node.max_index.max(st.index);
        }
        node.advance_prefix();
        Ok(node)
    }

    // ----- public API -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Offers several proposals: exactly [`Node::propose`] for each value in
    /// order, one result per value, but faster for a batch. Each proposal
    /// checks the duplicate window, whose tables are larger than the CPU
    /// cache; the batch loads every proposal's slots first, so those misses
    /// overlap instead of stalling one after another.
    ///
    /// ```
    /// # use spaxos_core::{CoreConfig, Node, Value};
    /// let mut node = Node::new(CoreConfig::new(1, vec![1])).unwrap();
    /// let values = (1..=3).map(|reqid| Value::One { reqid, value: "v".into() });
    /// let results = node.propose_batch(values.collect());
    /// assert!(results.iter().all(|r| r.is_ok()));
    /// ```
    pub fn propose_batch(&mut self, values: Vec<Value>) -> Vec<Result<(), ProposeError>> {
        self.recent.warm(values.iter().filter_map(Value::reqid));
        values
            .into_iter()
            .map(|value| self.propose(value))
            .collect()
    }

    /// Offers a proposal. Its outcome arrives later in [`Ready::outcomes`].
    pub fn propose(&mut self, value: Value) -> Result<(), ProposeError> {
        // A leader's runs stay: its proposals extend them.
        self.materialize_follower_runs();
        let reqid = match value.reqid() {
            None => return Err(ProposeError::Noop),
            Some(0) => return Err(ProposeError::ZeroReqId),
            Some(r) => r,
        };
        let size = value.payload_len();
        if size > self.cfg.value_bytes_max {
            return Err(ProposeError::TooLarge {
                size,
                max: self.cfg.value_bytes_max,
            });
        }
        let pending = self.pending.len();
        let leading = self.is_leader();
        let free_index = self.leader_next_free_index(reqid);
        // One probe of `pending` for the duplicate check and the insert.
        let std::collections::hash_map::Entry::Vacant(slot) = self.pending.entry(reqid) else {
            return Err(ProposeError::Duplicate(reqid));
        };
        if pending >= self.cfg.proposal_queue_max {
            return Err(ProposeError::Busy(pending));
        }
        if let Some(index) = self.recent.get(reqid) {
            // Already in the log: that is its outcome, and no slot is spent.
            self.out.outcomes.push((reqid, Outcome::Chosen { index }));
            return Ok(());
        }
        let submit = leading.then(|| value.clone());
        slot.insert(Pending {
            value,
            assigned: free_index,
            forwarded: false,
            sent_at: self.now,
        });
        match (free_index, submit) {
            // The leader's fast path: the index is known, so neither the
            // pending entry nor the instance is looked up again.
            (Some(index), Some(value)) => self.leader_place_local(index, reqid, value),
            (None, Some(value)) => self.leader_submit(value, self.id),
            (_, None) => self.dispatch(reqid),
        }
        Ok(())
    }

    /// Feeds a message from the network (or a message to self after its
    /// batch is durable). Messages from non-members are ignored.
    pub fn step(&mut self, msg: Message) {
        if msg.to != self.id || self.slot(msg.from).is_none() {
            return;
        }
        let from = msg.from;
        // Only an accept reads or extends a follower's runs as they are,
        // and only an acknowledgement a leader's.
        match msg.body {
            Body::Accept { .. } => self.materialize_leader_runs(),
            Body::Accepted { .. } => self.materialize_follower_runs(),
            _ => self.materialize_runs(),
        }
        match msg.body {
            Body::Prepare { ballot, index } => {
                self.see_ballot(ballot);
                self.on_prepare(from, ballot, index)
            }
            Body::Promise {
                ballot,
                index,
                accepted,
                value,
            } => self.on_promise(from, ballot, index, accepted, value),
            Body::PrepareRange { ballot, from_index } => {
                self.see_ballot(ballot);
                self.on_prepare_range(from, ballot, from_index)
            }
            Body::PromiseRange {
                ballot,
                from_index,
                chosen_through,
                entries,
            } => self.on_promise_range(from, ballot, from_index, chosen_through, entries),
            Body::Accept {
                ballot,
                entries,
                chosen_through,
            } => {
                self.see_ballot(ballot);
                self.on_accept(from, ballot, entries, chosen_through)
            }
            Body::Accepted { ballot, indices } => self.on_accepted(from, ballot, &indices),
            Body::Reject {
                ballot,
                promised,
                index,
            } => {
                self.see_ballot(promised);
                self.on_reject(from, ballot, promised, index)
            }
            Body::Heartbeat {
                ballot,
                chosen_through,
                max_index,
            } => {
                self.see_ballot(ballot);
                self.on_heartbeat(from, ballot, chosen_through, max_index)
            }
            Body::HeartbeatAck {
                ballot,
                chosen_through,
                max_index,
            } => self.on_heartbeat_ack(from, ballot, chosen_through, max_index),
            Body::Learn { entries } => self.on_learn(from, entries),
            Body::CatchupRequest {
                from_index,
                to_index,
            } => self.on_catchup_request(from, from_index, to_index),
            Body::Compacted { first_index } => self.on_compacted(from, first_index),
            Body::Forward { values } => self.on_forward(from, values),
            Body::ForwardAck { assigned } => self.on_forward_ack(assigned),
        }
        self.advance_prefix();
    }

    /// Advances logical time by one tick: timeouts, heartbeats, retries.
    pub fn tick(&mut self) {
        self.materialize_runs();
        self.now += 1;
        match self.role {
            RoleState::Leader(_) => self.leader_tick(),
            RoleState::Candidate(_) | RoleState::Follower => {
                self.election_elapsed += 1;
                if self.election_elapsed >= self.election_timeout {
                    self.start_election();
                }
            }
        }
        self.retry_forwards();
        self.leaderless_tick();
        self.proposers_tick();
        self.catchup_tick();
        self.advance_prefix();
    }

    /// Takes everything produced since the last call. See [`Ready`] for the
    /// order in which the driver must act on it.
    pub fn ready(&mut self) -> Ready {
        let mut ready = Ready::default();
        self.ready_into(&mut ready);
        ready
    }

    /// Like [`Node::ready`], but appends into `ready`, whose vectors the
    /// caller empties (e.g. with `drain(..)`) and passes again: their
    /// capacity is reused, which saves allocating and growing them on every
    /// round of a busy node.
    pub fn ready_into(&mut self, ready: &mut Ready) {
        self.flush_batches();
        let out = &mut self.out;
        if ready.is_empty() {
            std::mem::swap(ready, out);
            return;
        }
        ready.records.append(&mut out.records);
        ready.messages.append(&mut out.messages);
        ready.messages_now.append(&mut out.messages_now);
        ready.chosen.append(&mut out.chosen);
        ready.outcomes.append(&mut out.outcomes);
        ready.reads.append(&mut out.reads);
    }

    /// True when [`Node::ready`] would return something.
    pub fn has_ready(&self) -> bool {
        !self.out.is_empty()
            || !self.round_accepts.is_empty()
            || !self.self_accepted.is_empty()
            || !self.forward_batch.is_empty()
            || !self.forward_acks.is_empty()
    }

    /// A snapshot of this node's progress.
    pub fn status(&self) -> NodeStatus {
        let (role, leader_ballot) = match &self.role {
            RoleState::Follower => (
                Role::Follower,
                self.leader.map(|l| l.1).unwrap_or(Ballot::ZERO),
            ),
            RoleState::Candidate(c) => (Role::Candidate, c.ballot),
            RoleState::Leader(l) => (Role::Leader, l.ballot),
        };
        NodeStatus {
            id: self.id,
            role,
            leader: self.leader.map(|l| l.0),
            leader_ballot,
            chosen_through: self.base - 1,
            max_index: self.max_index,
            pending: self.pending.len(),
            instances: self.instances.len()
                + self
                    .runs
                    .iter()
                    .map(|r| r.entries.len() - r.start)
                    .sum::<usize>()
                + self
                    .leader_runs
                    .iter()
                    .map(|r| r.end - r.start)
                    .sum::<usize>()
                + self.open_runs.iter().map(|o| o.count).sum::<usize>(),
            duplicates_suppressed: self.duplicates_suppressed,
            catchup_compacted_below: self.catchup_compacted_below,
        }
    }

    /// Every index at or below this is chosen and delivered.
    pub fn chosen_through(&self) -> Index {
        self.base - 1
    }

    /// The leader this node follows (itself when leading), if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader.map(|l| l.0)
    }

    /// True when this node leads.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }

    /// Where a proposal made here stands, for diagnostics: the index it is
    /// being tried at (if known) and whether it was forwarded.
    pub fn pending_proposal(&self, reqid: ReqId) -> Option<(Option<Index>, bool)> {
        self.pending.get(&reqid).map(|p| (p.assigned, p.forwarded))
    }

    /// The node-wide hard state (for tests and checkers).
    pub fn node_state(&self) -> NodeState {
        self.state
    }

    /// Turns the steady state's runs (a follower's `AcceptedRun`s, a
    /// leader's `LeaderRun`s; see docs/ARCHITECTURE.md) off or on. Only for
    /// tests that check a node with runs against one that keeps an
    /// instance per index; the observable behaviour is the same either way.
    #[doc(hidden)]
    pub fn set_accept_runs(&mut self, enabled: bool) {
        self.materialize_runs();
        self.accept_runs = enabled;
    }

    /// The acceptor state of a live index (for tests and checkers).
    pub fn instance_state(&self, index: Index) -> Option<InstanceState> {
        let in_run = self
            .runs
            .iter()
            .find(|r| (r.first_index() + r.start as u64..r.end_index()).contains(&index))
            .map(|r| r.instance((index - r.first_index()) as usize))
            .or_else(|| {
                self.leader_runs
                    .iter()
                    .find(|r| (r.start_index()..r.end_index()).contains(&index))
                    .map(|r| r.instance(r.start + (index - r.start_index()) as usize))
            })
            .or_else(|| {
                self.open_runs
                    .iter()
                    .find(|o| (o.first..o.first + o.count as u64).contains(&index))
                    .map(|o| self.open_instance(o, (index - o.first) as usize))
            });
        // Read without `instance`, which insists that runs are materialized.
        let live = index
            .checked_sub(self.base)
            .and_then(|offset| self.instances.get(offset as usize));
        in_run.as_ref().or(live).map(|inst| InstanceState {
            index,
            promised: inst.promised,
            accepted: inst.accepted,
            value: inst.value.clone(),
            chosen: inst.chosen,
        })
    }

    // ----- shared helpers -----

    pub(crate) fn slot(&self, id: NodeId) -> Option<usize> {
        self.members.iter().position(|&m| m == id)
    }

    pub(crate) fn bit(&self, id: NodeId) -> u64 {
        match self.slot(id) {
            Some(s) => 1u64 << s,
            None => 0,
        }
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.id;
        self.members.iter().copied().filter(move |&m| m != me)
    }

    pub(crate) fn see_ballot(&mut self, ballot: Ballot) {
        self.max_round_seen = self.max_round_seen.max(ballot.round);
    }

    /// A ballot of this node above every round it has seen or used. The
    /// caller must persist `state.max_round` before sending it.
    pub(crate) fn next_ballot(&mut self) -> Ballot {
        let round = self
            .max_round_seen
            .max(self.state.max_round)
            .max(self.state.promised.round)
            + 1;
        self.state.max_round = round;
        self.max_round_seen = round;
        self.out.records.push(Record::Node(self.state));
        Ballot::new(round, self.id)
    }

    /// Turns accepted runs into the instances they stand for. Everything
    /// but an accept's fast path and delivery reads `instances` only, so
    /// each entry point that may do so calls this first.
    #[inline]
    pub(crate) fn materialize_runs(&mut self) {
        self.materialize_follower_runs();
        self.materialize_leader_runs();
    }

    #[inline]
    pub(crate) fn materialize_follower_runs(&mut self) {
        if !self.runs.is_empty() {
            self.materialize_follower_runs_now();
        }
    }

    #[inline]
    pub(crate) fn materialize_leader_runs(&mut self) {
        if !self.leader_runs.is_empty() || !self.open_runs.is_empty() {
            self.materialize_leader_runs_now();
        }
    }

    #[cold]
    fn materialize_leader_runs_now(&mut self) {
        for run in std::mem::take(&mut self.leader_runs) {
            for position in run.start..run.end {
                self.push_next_instance(run.entries[position].0, run.instance(position));
            }
        }
        for open in std::mem::take(&mut self.open_runs) {
            for offset in 0..open.count {
                let inst = self.open_instance(&open, offset);
                self.push_next_instance(open.first + offset as u64, inst);
            }
        }
    }

    /// Appends `inst`, which stands for `index`: runs continue the
    /// instances without a gap.
    fn push_next_instance(&mut self, index: Index, inst: Instance) {
        assert_eq!(
            index,
            self.base + self.instances.len() as u64,
            "a run does not continue the instances"
        );
        self.instances.push_back(inst);
    }

    /// The record vector an open run's entries are in (this round's,
    /// still in `out.records`).
    fn open_run_entries(&self, open: &OpenRun) -> &AcceptEntries {
        let Record::Accepted { ballot, entries } = &self.out.records[open.position] else {
            panic!("the open run's record {} is not an accept", open.position);
        };
        assert_eq!(*ballot, open.ballot, "the open run's record changed ballot");
        entries
    }

    /// The instance the open run's entry `offset` stands for.
    fn open_instance(&self, open: &OpenRun, offset: usize) -> Instance {
        let (index, value) = &self.open_run_entries(open)[open.offset + offset];
        assert_eq!(
            *index,
            open.first + offset as u64,
            "the open run skipped an index"
        );
        Instance::leader_proposal(open.ballot, value, open.proposed_at)
    }

    #[cold]
    fn materialize_follower_runs_now(&mut self) {
        for run in std::mem::take(&mut self.runs) {
            for position in run.start..run.entries.len() {
                self.push_next_instance(run.entries[position].0, run.instance(position));
            }
        }
    }

    #[inline]
    fn assert_no_runs(&self) {
        assert!(
            self.runs.is_empty() && self.leader_runs.is_empty() && self.open_runs.is_empty(),
            "instance read with runs outstanding"
        );
    }

    pub(crate) fn instance(&self, index: Index) -> Option<&Instance> {
        self.assert_no_runs();
        if index < self.base {
            return None;
        }
        self.instances.get((index - self.base) as usize)
    }

    pub(crate) fn instance_mut(&mut self, index: Index) -> Option<&mut Instance> {
        self.assert_no_runs();
        if index < self.base {
            return None;
        }
        self.instances.get_mut((index - self.base) as usize)
    }

    /// The instance at `index`, created if missing, unless it is further than
    /// `acceptor_window_max` past the first unchosen index.
    pub(crate) fn instance_mut_bounded(&mut self, index: Index) -> Option<&mut Instance> {
        if index < self.base || index - self.base >= self.cfg.acceptor_window_max {
            return None;
        }
        Some(self.instance_mut_force(index))
    }

    #[inline]
    pub(crate) fn instance_mut_force(&mut self, index: Index) -> &mut Instance {
        self.assert_no_runs();
        assert!(
            index >= self.base,
            "instance {index} below base {}",
            self.base
        );
        let offset = (index - self.base) as usize;
        while self.instances.len() <= offset {
            self.instances.push_back(Instance {
                created_at: self.now,
                ..Instance::default()
            });
        }
        if index > self.max_index {
            self.max_index = index;
        }
        &mut self.instances[offset]
    }

    pub(crate) fn persist_instance(&mut self, index: Index) {
        let st = self
            .instance_state(index)
            .expect("persist_instance on a live index");
        self.out.records.push(Record::Instance(st));
    }

    pub(crate) fn send(&mut self, to: NodeId, body: Body) {
        let msg = Message {
            from: self.id,
            to,
            body,
        };
        self.out.messages.push(msg);
    }

    /// `body` to every member, this node included, through `send`.
    pub(crate) fn send_to_members(&mut self, body: Body) {
        for slot in 0..self.members.len() {
            self.send(self.members[slot], body.clone());
        }
    }

    pub(crate) fn send_now(&mut self, to: NodeId, body: Body) {
        let msg = Message {
            from: self.id,
            to,
            body,
        };
        // Messages to self always wait for durability (they carry votes).
        if to == self.id {
            self.out.messages.push(msg);
        } else {
            self.out.messages_now.push(msg);
        }
    }

    pub(crate) fn random_ticks(&mut self, base: u32, range: u32) -> u64 {
        base as u64 + self.rng.random_range(0..range.max(1) as u64)
    }

    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.election_timeout = self.random_ticks(
            self.cfg.election_timeout_ticks,
            self.cfg.election_timeout_range_ticks,
        );
    }

    /// Routes a pending proposal: to our own leadership, to the known leader,
    /// or to the local queue (leaderless fallback after a delay).
    pub(crate) fn dispatch(&mut self, reqid: ReqId) {
        let Some(pending) = self.pending.get(&reqid) else {
            return;
        };
        let value = pending.value.clone();
        if self.is_leader() {
            self.leader_submit(value, self.id);
        } else if self.leader.is_some() {
            // Sent to the leader with this round's other forwards (`ready`).
            let retry_at = self.now + self.cfg.forward_retry_ticks as u64;
            let pending = self.pending.get_mut(&reqid).expect("checked above");
            pending.forwarded = true;
            pending.sent_at = self.now;
            self.forward_batch.push(value);
            self.forward_retries.push_back((retry_at, reqid));
        } else {
            self.queue.push_back(reqid);
        }
    }

    /// Re-forwards proposals that got no assignment in time. A node that
    /// lags behind the chosen log first catches up: its proposal may be in
    /// the part it has not seen, and a blind retry would put it in twice.
    fn retry_forwards(&mut self) {
        let retry = self.cfg.forward_retry_ticks as u64;
        if self.known_chosen_through.0 >= self.base {
            return;
        }
        while let Some(&(due, reqid)) = self.forward_retries.front() {
            if due > self.now {
                break;
            }
            self.forward_retries.pop_front();
            let stale = self
                .pending
                .get(&reqid)
                .is_some_and(|p| p.assigned.is_none() && p.sent_at + retry <= self.now);
            if stale {
                self.dispatch(reqid);
            }
        }
    }

    fn flush_batches(&mut self) {
        for open in std::mem::take(&mut self.open_runs) {
            // Sent below: from now on their acknowledgements can come.
            let entries = Arc::clone(self.open_run_entries(&open));
            self.leader_runs.push_back(LeaderRun {
                ballot: open.ballot,
                entries,
                start: open.offset,
                end: open.offset + open.count,
                votes: 0,
                chosen: false,
                proposed_at: open.proposed_at,
            });
        }
        if !self.round_accepts.is_empty() {
            // `step_down` empties the positions, so this node still leads.
            let RoleState::Leader(l) = &self.role else {
                panic!("accepts of this round recorded, but not leading");
            };
            let ballot = l.ballot;
            let mut positions = std::mem::take(&mut self.round_accepts);
            // Safety: only this round's own records, at this ballot, go to
            // the peers under it.
            let records = &self.out.records;
            let entries_at = |at: usize| match &records[at] {
                Record::Accepted { ballot: b, entries } if *b == ballot => entries,
                other => panic!("round accept record {at} is {other:?}, not at ballot {ballot}"),
            };
            // Usually one record: the peers get that very vector. Several
            // (other records came between) are joined into one copy.
            let entries = match positions.as_slice() {
                [one] => Arc::clone(entries_at(*one)),
                several => Arc::new(
                    several
                        .iter()
                        .flat_map(|&at| entries_at(at).iter().cloned())
                        .collect(),
                ),
            };
            self.last_round_accepts = entries.len();
            self.broadcast_accepts(ballot, entries, None);
            positions.clear();
            self.round_accepts = positions;
        }
        if !self.self_accepted.is_empty() {
            if let RoleState::Leader(l) = &self.role {
                let ballot = l.ballot;
                let capacity = self.self_accepted.len();
                let indices =
                    std::mem::replace(&mut self.self_accepted, Vec::with_capacity(capacity));
                self.send(self.id, Body::Accepted { ballot, indices });
            } else {
                self.self_accepted.clear();
            }
        }
        if !self.forward_batch.is_empty() {
            let values = std::mem::take(&mut self.forward_batch);
            match self.leader {
                Some((leader, _)) if leader != self.id => {
                    self.send_now(leader, Body::Forward { values })
                }
                // Leadership changed within this step: the retry timer
                // resends them.
                _ => {}
            }
        }
        for (to, assigned) in std::mem::take(&mut self.forward_acks) {
            self.send_now(to, Body::ForwardAck { assigned });
        }
    }

    /// Sends accept requests for `entries` to every peer (or only to
    /// `only_to`), split so each message stays under `batch_bytes_max`.
    pub(crate) fn broadcast_accepts(
        &mut self,
        ballot: Ballot,
        entries: AcceptEntries,
        only_to: Option<NodeId>,
    ) {
        let targets: Vec<NodeId> = match only_to {
            Some(to) => vec![to],
            None => self.peers().collect(),
        };
        if targets.is_empty() {
            // A group of one: nobody to ask.
            return;
        }
        let chosen_through = self.base - 1;
        // Split into runs of at most `batch_bytes_max` payload bytes (one
        // entry at least); one run is the batch itself, shared by every
        // peer, more are copied once each and shared.
        let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
        let mut bytes = 0usize;
        let mut start = 0usize;
        for (i, (_, value)) in entries.iter().enumerate() {
            let len = value.payload_len() + 16;
            if i > start && bytes + len > self.cfg.batch_bytes_max {
                chunks.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += len;
        }
        if start < entries.len() {
            chunks.push(start..entries.len());
        }
        let accept = |entries| Body::Accept {
            ballot,
            entries,
            chosen_through,
        };
        if let [_] = chunks.as_slice() {
            // The common case, one run: every peer gets the same vector.
            for &to in &targets {
                self.send_now(to, accept(entries.clone()));
            }
            return;
        }
        for chunk in chunks {
            let part: AcceptEntries = Arc::new(entries[chunk].to_vec());
            for &to in &targets {
                self.send_now(to, accept(part.clone()));
            }
        }
    }
}
