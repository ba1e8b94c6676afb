//! Leader election (phase 1 over every index at once) and the leader's
//! steady state (phase 2 only), plus how followers track the leader.
//!
//! This replaces the seed's "master propose" with proposal number 0, which is
//! unsafe when two nodes do it at once. A candidate wins a `PrepareRange`
//! quorum with a unique ballot, re-proposes every value its quorum reported
//! (highest ballot wins, no-op for holes), and then runs only accepts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::message::{Body, PromiseEntry};
use crate::node::{Candidate, ChosenRuns, FastMap, Leader, Node, OpenRun, RoleState};
use crate::types::{Ballot, Index, NodeId, Outcome, Record, ReqId, Value};

/// Marks a reqid waiting in the leader's queue in `Leader::assigned`.
const QUEUED: Index = 0;

impl Node {
    /// No leader heard from within the election timeout: campaign.
    pub(crate) fn start_election(&mut self) {
        if matches!(self.role, RoleState::Leader(_)) {
            return;
        }
        let ballot = self.next_ballot();
        let from_index = self.base;
        self.role = RoleState::Candidate(Candidate {
            ballot,
            from_index,
            promises: 0,
            entries: BTreeMap::new(),
            chosen: Vec::new(),
            chosen_through: self.base - 1,
            chosen_through_from: self.id,
        });
        if self.leader.take().is_some() {
            self.leaderless_since = self.now;
        }
        self.reset_election_timer();
        // The prepare to self goes through the same acceptor rules; every
        // prepare waits until `max_round` is durable.
        self.send_to_members(Body::PrepareRange { ballot, from_index });
    }

    pub(crate) fn on_promise_range(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        from_index: Index,
        chosen_through: Index,
        entries: Vec<PromiseEntry>,
    ) {
        if chosen_through > self.known_chosen_through.0 {
            self.known_chosen_through = (chosen_through, from);
        }
        let bit = self.bit(from);
        let quorum = self.quorum;
        let RoleState::Candidate(c) = &mut self.role else {
            return;
        };
        if c.ballot != ballot || c.from_index != from_index || c.promises & bit != 0 {
            return;
        }
        c.promises |= bit;
        for e in entries {
            if e.chosen {
                c.chosen.push((e.index, e.value));
            } else if e.index >= c.from_index {
                let better = c.entries.get(&e.index).is_none_or(|(b, _)| e.accepted > *b);
                if better {
                    c.entries.insert(e.index, (e.accepted, e.value));
                }
            }
        }
        if chosen_through > c.chosen_through {
            c.chosen_through = chosen_through;
            c.chosen_through_from = from;
        }
        if c.promises.count_ones() as usize >= quorum {
            self.become_leader();
        }
    }

    fn become_leader(&mut self) {
        let RoleState::Candidate(c) = std::mem::replace(&mut self.role, RoleState::Follower) else {
            return;
        };
        let ballot = c.ballot;
        let max_chosen_reported = c.chosen.iter().map(|(i, _)| *i).max().unwrap_or(0);
        for (index, value) in c.chosen {
            self.learn_value(index, value);
        }
        // Indices at or below a reported chosen_through are decided: never
        // propose there; catch-up fetches them.
        let chosen_through = c.chosen_through;
        let max_reported = c
            .entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(chosen_through)
            .max(max_chosen_reported)
            .max(self.base - 1);
        let start = (chosen_through + 1).max(self.base);
        self.role = RoleState::Leader(Leader {
            ballot,
            next_index: max_reported + 1,
            assigned: FastMap::default(),
            queue: VecDeque::new(),
            heard: 0,
            last_heartbeat: self.now,
            quorum_check_at: self.now + 2 * self.cfg.election_timeout_ticks as u64,
            last_retry_scan: self.now,
        });
        self.leader = Some((self.id, ballot));
        for index in start..=max_reported {
            if self.instance(index).is_some_and(|i| i.chosen) {
                continue;
            }
            let value = c
                .entries
                .get(&index)
                .map(|(_, v)| v.clone())
                .unwrap_or(Value::Noop);
            if let (Some(reqid), RoleState::Leader(l)) = (value.reqid(), &mut self.role) {
                l.assigned.insert(reqid, index);
            }
            if !self.propose_at(index, value) {
                return;
            }
        }
        self.send_heartbeats();
        // Proposals that waited for a leader.
        let queued: Vec<ReqId> = self.queue.drain(..).collect();
        for reqid in queued {
            self.dispatch(reqid);
        }
    }

    /// Phase 2a for one index at the leader's ballot: the local acceptor
    /// accepts first (persisted with this batch), peers get the request at
    /// `ready()`. Returns false if the leader had to step down.
    pub(crate) fn propose_at(&mut self, index: Index, value: Value) -> bool {
        self.propose_at_for(index, value, 0)
    }

    /// [`Node::propose_at`] for a proposal made on this node (`origin`, or 0
    /// for none), whose index is recorded in the same lookup.
    pub(crate) fn propose_at_for(&mut self, index: Index, value: Value, origin: ReqId) -> bool {
        let RoleState::Leader(l) = &self.role else {
            return false;
        };
        let ballot = l.ballot;
        let node_promise = self.state.promised;
        let now = self.now;
        // As `assigned_locally` records it: only within the acceptor window.
        let in_window = index.saturating_sub(self.base) < self.cfg.acceptor_window_max;
        if origin != 0
            && in_window
            && self.accept_runs
            && node_promise <= ballot
            && self.runs.is_empty()
            && index == self.leader_end()
            && value.reqid() == Some(origin)
        {
            // The steady state: a local proposal at the next index. No
            // instance: the round's record holds the value (`OpenRun`).
            self.max_index = self.max_index.max(index);
            let (position, offset) = self.push_round_accept(ballot, index, value);
            match self.open_runs.last_mut() {
                Some(open)
                    if open.position == position
                        && open.offset + open.count == offset
                        && open.proposed_at == now =>
                {
                    open.count += 1
                }
                _ => self.open_runs.push(OpenRun {
                    ballot,
                    position,
                    offset,
                    count: 1,
                    first: index,
                    proposed_at: now,
                }),
            }
            return true;
        }
        self.materialize_leader_runs();
        let inst = self.instance_mut_force(index);
        if inst.promised.max(node_promise) > ballot {
            self.step_down();
            return false;
        }
        if origin != 0 && in_window && !inst.add_origin(origin) {
            self.extra_origins.entry(index).or_default().push(origin);
        }
        let inst = &mut self.instances[(index - self.base) as usize];
        if inst.chosen {
            return true;
        }
        inst.promised = ballot;
        inst.accepted = ballot;
        value.clone_into_slot(&mut inst.value);
        inst.vote_ballot = ballot;
        inst.votes = 0;
        inst.proposed_at = now;
        if inst.proposer.take().is_some() {
            self.leaderless_active -= 1;
        }
        self.push_round_accept(ballot, index, value);
        true
    }

    /// One past the last index this leader holds: instances, then runs.
    fn leader_end(&self) -> Index {
        if let Some(open) = self.open_runs.last() {
            return open.first + open.count as u64;
        }
        match self.leader_runs.back() {
            Some(run) => run.end_index(),
            None => self.base + self.instances.len() as u64,
        }
    }

    /// Adds `(index, value)` to this round's accepts, which go to the peers
    /// at `ready()`, and notes the local vote that follows once durable.
    /// Returns where it went: the record's position in `out.records`, and
    /// the entry's within the record.
    fn push_round_accept(&mut self, ballot: Ballot, index: Index, value: Value) -> (usize, usize) {
        self.self_accepted.push(index);
        // Consecutive accepts of this round share a record, which is also
        // what `flush_batches` sends the peers (the value moves in).
        let last = self.out.records.len().checked_sub(1);
        match (self.round_accepts.last(), self.out.records.last_mut()) {
            (Some(&ours), Some(Record::Accepted { entries, .. })) if Some(ours) == last => {
                let entries = Arc::make_mut(entries);
                entries.push((index, value));
                (ours, entries.len() - 1)
            }
            _ => {
                // The round's first accept is sized like the last round's
                // batch, so it does not grow entry by entry; a record
                // started later in the round (after another record) grows
                // as usual.
                let capacity = match self.round_accepts.is_empty() {
                    true => self.last_round_accepts.max(1),
                    false => 1,
                };
                let mut entries = Vec::with_capacity(capacity);
                entries.push((index, value));
                let position = self.out.records.len();
                self.round_accepts.push(position);
                self.out.records.push(Record::Accepted {
                    ballot,
                    entries: Arc::new(entries),
                });
                (position, 0)
            }
        }
    }

    /// A proposal reaches the leader (from this node or forwarded): it gets
    /// the next index, or waits in the leader's queue for an in-flight slot.
    pub(crate) fn leader_submit(&mut self, value: Value, origin: NodeId) {
        let base = self.base;
        let inflight_max = self.cfg.inflight_max;
        let queue_max = self.cfg.proposal_queue_max;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.next_index - base >= inflight_max || !l.queue.is_empty() {
            let Some(reqid) = value.reqid() else {
                return;
            };
            // A retried forward of a proposal that is already queued.
            let queued = l.assigned.get(&reqid) == Some(&QUEUED);
            if !queued && l.queue.len() < queue_max {
                l.assigned.entry(reqid).or_insert(QUEUED);
                l.queue.push_back((value, origin));
            }
            return;
        }
        self.leader_assign(value, origin);
    }

    /// The index a new local proposal `reqid` would get at once from this
    /// leader: none while proposals wait in the leader's queue, the
    /// in-flight window is full, or a forwarded copy of `reqid` is known
    /// here (those take [`Node::leader_submit`]'s full path).
    pub(crate) fn leader_next_free_index(&self, reqid: ReqId) -> Option<Index> {
        let RoleState::Leader(l) = &self.role else {
            return None;
        };
        let free = l.next_index - self.base < self.cfg.inflight_max
            && l.queue.is_empty()
            && (l.assigned.is_empty() || !l.assigned.contains_key(&reqid));
        free.then_some(l.next_index)
    }

    /// Places the local proposal `reqid` at `index`, which
    /// [`Node::leader_next_free_index`] gave; its `Pending` already names
    /// `index`. What `leader_submit` would do, with one lookup fewer.
    pub(crate) fn leader_place_local(&mut self, index: Index, reqid: ReqId, value: Value) {
        if let RoleState::Leader(l) = &mut self.role {
            assert_eq!(l.next_index, index, "a local proposal skipped an index");
            l.next_index += 1;
        }
        if !self.propose_at_for(index, value, reqid) {
            // Leadership ended under us: wait for the next leader.
            if let Some(p) = self.pending.get_mut(&reqid) {
                p.assigned = None;
            }
            self.queue.push_back(reqid);
        }
    }

    /// Gives a proposal the next index, unless this leader already placed
    /// its reqid or it was chosen recently (a retried forward).
    fn leader_assign(&mut self, value: Value, origin: NodeId) {
        // Its bookkeeping reads instances (`assigned_locally`).
        self.materialize_leader_runs();
        let Some(reqid) = value.reqid().filter(|&r| r != 0) else {
            return;
        };
        // A local proposal was checked against the window in `propose`.
        let already = if origin == self.id {
            None
        } else {
            self.recent.get(reqid)
        };
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let mut placed = l.assigned.get(&reqid).copied().filter(|&i| i != QUEUED);
        if let Some(index) = placed {
            // Delivered with another value: that attempt is over, place it anew.
            if index < self.base && already != Some(index) {
                l.assigned.remove(&reqid);
                placed = None;
            }
        }
        if let Some(index) = placed.or(already) {
            if l.assigned.get(&reqid) == Some(&QUEUED) {
                l.assigned.remove(&reqid);
            }
            self.note_assignment(origin, reqid, index);
            return;
        }
        let index = l.next_index;
        l.next_index += 1;
        if origin != self.id {
            // Remembered so a retried forward gets the same index. Local
            // proposals are deduplicated by `pending` instead.
            l.assigned.insert(reqid, index);
        }
        if self.propose_at(index, value) {
            self.note_assignment(origin, reqid, index);
        } else if origin == self.id {
            // Leadership ended under us: wait for the next leader.
            self.queue.push_back(reqid);
        }
    }

    fn note_assignment(&mut self, origin: NodeId, reqid: ReqId, index: Index) {
        if origin == self.id {
            self.assigned_locally(reqid, index);
        } else {
            self.forward_acks
                .entry(origin)
                .or_default()
                .push((reqid, index));
        }
    }

    /// A proposal made here is being tried at `index`.
    pub(crate) fn assigned_locally(&mut self, reqid: ReqId, index: Index) {
        let Some(p) = self.pending.get_mut(&reqid) else {
            return;
        };
        p.assigned = Some(index);
        if index < self.base && self.recent.get(reqid) == Some(index) {
            self.pending.remove(&reqid);
            self.out.outcomes.push((reqid, Outcome::Chosen { index }));
        } else if index < self.base {
            // Already decided, and not with this proposal (or it would have
            // been resolved when the prefix passed it).
            self.lost(reqid, index);
        } else if let Some(inst) = self.instance_mut_bounded(index) {
            if !inst.add_origin(reqid) {
                self.extra_origins.entry(index).or_default().push(reqid);
            }
        }
    }

    /// Moves queued proposals into free in-flight slots.
    pub(crate) fn leader_drain_queue(&mut self) {
        loop {
            let base = self.base;
            let inflight_max = self.cfg.inflight_max;
            let RoleState::Leader(l) = &mut self.role else {
                return;
            };
            if l.next_index - base >= inflight_max {
                return;
            }
            let Some((value, origin)) = l.queue.pop_front() else {
                return;
            };
            self.leader_assign(value, origin);
        }
    }

    fn send_heartbeats(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        l.last_heartbeat = self.now;
        let ballot = l.ballot;
        let body = Body::Heartbeat {
            ballot,
            chosen_through: self.base - 1,
            max_index: self.max_index,
        };
        let peers: Vec<NodeId> = self.peers().collect();
        for to in peers {
            self.send_now(to, body.clone());
        }
    }

    pub(crate) fn leader_tick(&mut self) {
        let self_bit = self.bit(self.id);
        let (ballot, heartbeat_due, quorum_check_due, heard, next_index, retry_due) =
            match &self.role {
                RoleState::Leader(l) => (
                    l.ballot,
                    self.now - l.last_heartbeat >= self.cfg.heartbeat_ticks as u64,
                    self.now >= l.quorum_check_at,
                    l.heard | self_bit,
                    l.next_index,
                    self.now - l.last_retry_scan >= self.cfg.accept_retry_ticks as u64,
                ),
                _ => return,
            };
        // A leader cut off from a majority steps down, so its followers'
        // proposals go to someone who can make progress.
        if quorum_check_due {
            if (heard.count_ones() as usize) < self.quorum {
                self.step_down();
                return;
            }
            if let RoleState::Leader(l) = &mut self.role {
                l.heard = 0;
                l.quorum_check_at = self.now + self.cfg.election_timeout_ticks as u64;
            }
        }
        if heartbeat_due {
            self.send_heartbeats();
        }
        // Indices someone else created above our range get no-ops.
        if self.max_index >= next_index {
            let upto = self.max_index;
            if let RoleState::Leader(l) = &mut self.role {
                l.next_index = upto + 1;
            }
            for index in next_index..=upto {
                if !self.propose_at(index, Value::Noop) {
                    return;
                }
            }
        }
        if retry_due {
            self.retry_accepts(ballot);
        }
        self.leader_drain_queue();
    }

    /// Re-sends accepts that have not reached a quorum (messages get lost).
    fn retry_accepts(&mut self, ballot: Ballot) {
        let now = self.now;
        let retry = self.cfg.accept_retry_ticks as u64;
        let peers: Vec<(NodeId, u64)> = self.peers().map(|p| (p, self.bit(p))).collect();
        let mut per_peer: Vec<Vec<(Index, Value)>> = vec![Vec::new(); peers.len()];
        let base = self.base;
        for (offset, inst) in self.instances.iter_mut().enumerate() {
            if inst.chosen || inst.vote_ballot != ballot || inst.accepted != ballot {
                continue;
            }
            if inst.proposed_at + retry > now {
                continue;
            }
            let Some(value) = &inst.value else { continue };
            inst.proposed_at = now;
            for (slot, (_, bit)) in peers.iter().enumerate() {
                if inst.votes & bit == 0 {
                    per_peer[slot].push((base + offset as u64, value.clone()));
                }
            }
        }
        if let RoleState::Leader(l) = &mut self.role {
            l.last_retry_scan = now;
        }
        for ((to, _), entries) in peers.into_iter().zip(per_peer) {
            if !entries.is_empty() {
                self.broadcast_accepts(ballot, entries.into(), Some(to));
            }
        }
    }

    /// Phase 2b arrives: count votes (leader) or hand to a single-index proposer.
    pub(crate) fn on_accepted(&mut self, from: NodeId, ballot: Ballot, indices: &[Index]) {
        let bit = self.bit(from);
        let quorum = self.quorum as u32;
        let leading = matches!(&self.role, RoleState::Leader(l) if l.ballot == ballot);
        // The leader's runs take acknowledgements of whole runs; anything
        // else is counted on instances.
        let split = leading.then(|| self.split_run_acks(indices)).flatten();
        let (per_index, runs) = split.unwrap_or_else(|| {
            self.materialize_leader_runs();
            (indices.len(), 0..0)
        });
        if let RoleState::Leader(l) = &mut self.role {
            if l.ballot == ballot {
                l.heard |= bit;
                let base = self.base;
                let mut freed_proposers = 0;
                let mut marks = ChosenRuns::default();
                for &index in &indices[..per_index] {
                    if index < base {
                        continue;
                    }
                    let Some(inst) = self.instances.get_mut((index - base) as usize) else {
                        continue;
                    };
                    if inst.chosen || inst.vote_ballot != ballot || inst.accepted != ballot {
                        continue;
                    }
                    inst.votes |= bit;
                    if inst.votes.count_ones() >= quorum {
                        // A quorum accepted our value: it is chosen.
                        if inst.mark_chosen(index) {
                            freed_proposers += 1;
                        }
                        marks.add(&mut self.out.records, index);
                    }
                }
                for run in self.leader_runs.range_mut(runs) {
                    assert_eq!(run.ballot, ballot, "a leader run outlived its ballot");
                    if run.chosen {
                        continue;
                    }
                    run.votes |= bit;
                    if run.votes.count_ones() >= quorum {
                        // A quorum accepted every value of the run.
                        run.chosen = true;
                        let first = run.start_index();
                        marks.add_range(&mut self.out.records, first, run.end_index() - 1);
                    }
                }
                marks.flush(&mut self.out.records);
                self.leaderless_active -= freed_proposers;
                return;
            }
        }
        for &index in indices {
            self.proposer_on_accepted(from, ballot, index);
        }
    }

    /// How an acknowledgement falls on the leader's runs: `(k, runs)` when
    /// `indices[..k]` are all below the runs (instances, or delivered) and
    /// `indices[k..]` are exactly the undelivered indices of the runs at
    /// `runs`, in order; `None` otherwise (the runs must become instances).
    fn split_run_acks(&self, indices: &[Index]) -> Option<(usize, std::ops::Range<usize>)> {
        let below = self.base + self.instances.len() as u64;
        let k = indices.partition_point(|&i| i < below);
        if indices[..k].iter().any(|&i| i >= below) {
            return None;
        }
        let rest = &indices[k..];
        let Some(&first) = rest.first() else {
            return Some((k, 0..0));
        };
        let from = self
            .leader_runs
            .iter()
            .position(|r| r.start_index() == first)?;
        let mut at = 0;
        for (offset, run) in self.leader_runs.iter().enumerate().skip(from) {
            for (index, _) in &run.entries[run.start..run.end] {
                if rest.get(at) != Some(index) {
                    return None;
                }
                at += 1;
            }
            if at == rest.len() {
                return Some((k, from..offset + 1));
            }
        }
        None
    }

    pub(crate) fn on_reject(
        &mut self,
        _from: NodeId,
        ballot: Ballot,
        promised: Ballot,
        index: Index,
    ) {
        let own = match &self.role {
            RoleState::Leader(l) => Some(l.ballot),
            RoleState::Candidate(c) => Some(c.ballot),
            RoleState::Follower => None,
        };
        if own == Some(ballot) && promised > ballot {
            self.step_down();
        }
        if index != 0 {
            self.proposer_on_reject(index, ballot, promised);
        }
    }

    /// Back to follower; proposals this node queued as leader go back to the
    /// local queue (forwarded ones are dropped: their origins retry).
    pub(crate) fn step_down(&mut self) {
        self.materialize_runs();
        match std::mem::replace(&mut self.role, RoleState::Follower) {
            RoleState::Leader(l) => {
                for (value, origin) in l.queue {
                    if origin == self.id {
                        if let Some(reqid) = value.reqid() {
                            self.queue.push_back(reqid);
                        }
                    }
                }
                self.round_accepts.clear();
                self.self_accepted.clear();
                self.leader = None;
                self.leaderless_since = self.now;
            }
            RoleState::Candidate(_) => {
                self.leader = None;
            }
            RoleState::Follower => {}
        }
        self.reset_election_timer();
    }

    pub(crate) fn on_heartbeat(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        chosen_through: Index,
        max_index: Index,
    ) {
        if ballot < self.state.promised || ballot.node != from {
            self.send_now(
                from,
                Body::Reject {
                    ballot,
                    promised: self.state.promised,
                    index: 0,
                },
            );
            return;
        }
        self.step_down_below(ballot);
        let known = self.leader.map(|l| l.1).unwrap_or(Ballot::ZERO);
        if ballot >= known && !self.is_leader() {
            let new_leader = self.leader != Some((from, ballot));
            self.leader = Some((from, ballot));
            self.election_elapsed = 0;
            if new_leader {
                let queued: Vec<ReqId> = self.queue.drain(..).collect();
                for reqid in queued {
                    self.dispatch(reqid);
                }
            }
        }
        self.max_index = self.max_index.max(max_index);
        self.learn_chosen_through(from, ballot, chosen_through);
        self.advance_prefix();
        self.send_now(
            from,
            Body::HeartbeatAck {
                ballot,
                chosen_through: self.base - 1,
                max_index: self.max_index,
            },
        );
    }

    pub(crate) fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        chosen_through: Index,
        max_index: Index,
    ) {
        if chosen_through > self.known_chosen_through.0 {
            self.known_chosen_through = (chosen_through, from);
        }
        self.max_index = self.max_index.max(max_index);
        let bit = self.bit(from);
        if let RoleState::Leader(l) = &mut self.role {
            if l.ballot == ballot {
                l.heard |= bit;
            }
        }
    }

    pub(crate) fn on_forward(&mut self, from: NodeId, values: Vec<Value>) {
        if !self.is_leader() {
            // The origin retries to whoever leads by then.
            return;
        }
        for value in values {
            let ok = value.reqid().is_some_and(|r| r != 0)
                && value.payload_len() <= self.cfg.value_bytes_max;
            if ok {
                self.leader_submit(value, from);
            }
        }
    }

    pub(crate) fn on_forward_ack(&mut self, assigned: Vec<(ReqId, Index)>) {
        for (reqid, index) in assigned {
            let known = self.pending.get(&reqid).and_then(|p| p.assigned);
            if known != Some(index) {
                self.assigned_locally(reqid, index);
            }
        }
    }
}
