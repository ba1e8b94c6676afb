//! Learning what is chosen: vote quorums, the leader's `chosen_through`,
//! `Learn` messages and catch-up; then delivering the contiguous prefix in
//! index order with duplicate suppression, outcomes and retirement.

use std::collections::VecDeque;
use std::sync::Arc;

use rand::Rng;

use crate::message::Body;
use crate::node::{ChosenRuns, Instance, Node, RoleState};
use crate::ready::ReadRequest;
use crate::types::{
    AcceptEntries, Ballot, ChosenItem, Index, InstanceState, NodeId, Outcome, Record, ReqId, Value,
};

/// How many entries ahead `advance_prefix` prefetches dedup slots.
const DEDUP_PREFETCH_AHEAD: usize = 16;

impl Node {
    /// `value` is chosen at `index` (learned from a peer or a quorum).
    pub(crate) fn learn_value(&mut self, index: Index, value: Value) {
        if index < self.base {
            return;
        }
        let leader_ballot = match &self.role {
            RoleState::Leader(l) => Some(l.ballot),
            _ => None,
        };
        let Some(inst) = self.instance_mut_bounded(index) else {
            return;
        };
        if inst.chosen {
            // Safety: at most one value is ever chosen per index. A no-op
            // against a request is the one allowed difference: a peer that
            // already delivered the index may serve it with its duplicate
            // suppressed, which this node will also do when it gets there.
            let dedup_equivalent =
                value.is_noop() || inst.value.as_ref().is_some_and(|v| v.is_noop());
            assert!(
                inst.value.as_ref() == Some(&value) || dedup_equivalent,
                "two values chosen at index {index}: {:?} and {:?}",
                inst.value,
                value
            );
            return;
        }
        // Our own proposal at this ballot lost: someone with a higher ballot
        // decided this index, so this leadership is over.
        let preempted = leader_ballot.is_some_and(|b| {
            inst.vote_ballot == b && inst.accepted == b && inst.value.as_ref() != Some(&value)
        });
        let same = inst.value.as_ref() == Some(&value);
        inst.chosen = true;
        let had_proposer = inst.proposer.take().is_some();
        if same {
            Record::push_chosen(&mut self.out.records, index);
        } else {
            inst.value = Some(value);
            self.persist_instance(index);
        }
        if had_proposer {
            self.leaderless_active -= 1;
        }
        if preempted {
            self.step_down();
        }
    }

    /// The node with `ballot` says every index up to `chosen_through` is
    /// chosen. Where we accepted that same ballot, our value is the chosen
    /// one (a proposer sends one value per index per ballot, and a leader
    /// that sees another value chosen steps down before saying so);
    /// elsewhere catch-up fetches the value.
    pub(crate) fn learn_chosen_through(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        chosen_through: Index,
    ) {
        if chosen_through > self.known_chosen_through.0 {
            self.known_chosen_through = (chosen_through, from);
        }
        if chosen_through < self.base {
            return;
        }
        let base = self.base;
        let mut freed_proposers = 0;
        let mut marks = ChosenRuns::default();
        let live = (chosen_through - base + 1).min(self.instances.len() as u64) as usize;
        for (offset, inst) in self.instances.iter_mut().enumerate().take(live) {
            if !inst.chosen && inst.accepted == ballot && inst.value.is_some() {
                // Our accepted value is the chosen one (see above).
                let index = base + offset as u64;
                if inst.mark_chosen(index) {
                    freed_proposers += 1;
                }
                marks.add(&mut self.out.records, index);
            }
        }
        // Accepted runs follow the instances, in index order; every entry
        // of a run was accepted at its ballot.
        for run in self.runs.iter_mut() {
            let first = run.first_index();
            if chosen_through < first {
                break;
            }
            if run.ballot != ballot {
                continue;
            }
            let through = (chosen_through - first + 1).min(run.entries.len() as u64) as usize;
            if through > run.chosen {
                let (from, to) = (first + run.chosen as u64, first + through as u64 - 1);
                marks.add_range(&mut self.out.records, from, to);
                run.chosen = through;
            }
        }
        marks.flush(&mut self.out.records);
        self.leaderless_active -= freed_proposers;
    }

    /// Delivers every chosen index at the front, in order, and retires it
    /// from memory: the instances first, then the accepted runs after them.
    pub(crate) fn advance_prefix(&mut self) {
        // Every delivered reqid is looked up in the dedup tables, which are
        // larger than the CPU cache: their slots are prefetched a fixed
        // distance ahead, so the misses overlap and the lines are still in
        // L1 when their entry comes.
        let reqid_at = |instances: &VecDeque<Instance>, at: usize| {
            instances
                .get(at)
                .filter(|i| i.chosen)
                .and_then(|i| i.value.as_ref().and_then(Value::reqid))
        };
        let before = self.base;
        self.recent
            .warm((0..DEDUP_PREFETCH_AHEAD).filter_map(|at| reqid_at(&self.instances, at)));
        while self.instances.front().is_some_and(|i| i.chosen) {
            self.recent
                .warm(reqid_at(&self.instances, DEDUP_PREFETCH_AHEAD).into_iter());
            let inst = self.instances.pop_front().expect("front checked");
            if inst.proposer.is_some() {
                self.leaderless_active -= 1;
            }
            let value = inst.value.expect("a chosen instance holds its value");
            self.deliver(inst.promised, inst.accepted, value, inst.origin_reqid);
        }
        // Accepted runs come after every instance.
        while self.instances.is_empty() {
            let Some(run) = self.runs.front() else {
                break;
            };
            let (start, chosen, ballot) = (run.start, run.chosen, run.ballot);
            if start == chosen {
                break;
            }
            let entries = Arc::clone(&run.entries);
            // No entry of a run has an origin here (see `accept_run`).
            self.deliver_entries(&entries, start..chosen, ballot);
            if chosen == entries.len() {
                self.runs.pop_front();
            } else {
                self.runs[0].start = chosen;
                break;
            }
        }
        // A leader's runs come after every instance (and it has no
        // follower runs); each is chosen, and delivered, whole.
        while self.instances.is_empty() && self.runs.is_empty() {
            let Some(run) = self.leader_runs.front() else {
                break;
            };
            if !run.chosen {
                break;
            }
            let (positions, ballot) = (run.start..run.end, run.ballot);
            let entries = Arc::clone(&run.entries);
            // Its own proposals at their own indices: no loss to report.
            self.deliver_entries(&entries, positions, ballot);
            self.leader_runs.pop_front();
        }
        if self.max_index < self.base - 1 {
            self.max_index = self.base - 1;
        }
        if self.base > before {
            let base = self.base;
            if let RoleState::Leader(l) = &mut self.role {
                // Catch-up may carry the prefix past what this leader assigned.
                l.next_index = l.next_index.max(base);
            }
            if self.is_leader() {
                self.leader_drain_queue();
            }
        }
    }

    /// Delivers `entries[positions]`, chosen at `ballot`, from `base` on,
    /// prefetching dedup slots ahead. Touches neither instances nor runs:
    /// no entry has an origin to report lost.
    fn deliver_entries(
        &mut self,
        entries: &AcceptEntries,
        positions: std::ops::Range<usize>,
        ballot: Ballot,
    ) {
        let end = positions.end;
        let reqid_at = |position: usize| {
            (position < end)
                .then(|| entries[position].1.reqid())
                .flatten()
        };
        self.recent
            .warm((positions.start..positions.start + DEDUP_PREFETCH_AHEAD).filter_map(reqid_at));
        for position in positions {
            self.recent
                .warm(reqid_at(position + DEDUP_PREFETCH_AHEAD).into_iter());
            let (index, value) = &entries[position];
            assert_eq!(*index, self.base, "a run skipped an index");
            self.deliver(ballot, ballot, value.clone(), 0);
        }
    }

    /// Delivers the chosen value `raw` at `base` (taken off the front):
    /// duplicate suppression, outcomes, then `Ready::chosen`.
    #[inline(always)]
    fn deliver(&mut self, promised: Ballot, accepted: Ballot, raw: Value, origin_reqid: ReqId) {
        let index = self.base;
        self.base += 1;
        let raw_reqid = raw.reqid();
        let mut value = raw;
        if let Some(reqid) = raw_reqid {
            // Followers usually have nothing pending: skip the lookups.
            let mine = !self.pending.is_empty();
            if let Some(first) = self.recent.insert(index, reqid) {
                // The same request reached the log twice (a retry across
                // a leader change). Every node decides this the same way
                // from the log alone, so all deliver a no-op here.
                self.duplicates_suppressed += 1;
                value = Value::Noop;
                self.out.records.push(Record::Instance(InstanceState {
                    index,
                    promised,
                    accepted,
                    value: Some(Value::Noop),
                    chosen: true,
                }));
                // Proposed again here after it was chosen: its outcome
                // is where it first went.
                if mine && self.pending.remove(&reqid).is_some() {
                    self.out
                        .outcomes
                        .push((reqid, Outcome::Chosen { index: first }));
                }
            } else if mine && self.pending.remove(&reqid).is_some() {
                self.out.outcomes.push((reqid, Outcome::Chosen { index }));
            }
            if let RoleState::Leader(l) = &mut self.role {
                if !l.assigned.is_empty() && l.assigned.get(&reqid) == Some(&index) {
                    l.assigned.remove(&reqid);
                }
            }
        }
        if origin_reqid != 0 && raw_reqid != Some(origin_reqid) {
            self.lost(origin_reqid, index);
        }
        if !self.extra_origins.is_empty() {
            for reqid in self.extra_origins.remove(&index).unwrap_or_default() {
                if raw_reqid != Some(reqid) {
                    self.lost(reqid, index);
                }
            }
        }
        self.out.chosen.push(ChosenItem { index, value });
    }

    /// Another value was chosen at `index`, where the proposal `reqid` was
    /// being tried.
    pub(crate) fn lost(&mut self, reqid: ReqId, index: Index) {
        let Some(p) = self.pending.get_mut(&reqid) else {
            return;
        };
        if p.assigned != Some(index) {
            return;
        }
        p.assigned = None;
        // A forwarded proposal may have a copy at an index we never heard
        // of, so only a never-forwarded one can be reported lost for good.
        if !self.cfg.retry_lost && !p.forwarded {
            self.pending.remove(&reqid);
            self.out.outcomes.push((reqid, Outcome::Lost { index }));
            return;
        }
        self.dispatch(reqid);
    }

    pub(crate) fn on_learn(&mut self, _from: NodeId, entries: Vec<(Index, Value)>) {
        self.catchup_sent_at = None;
        for (index, value) in entries {
            self.learn_value(index, value);
        }
        self.advance_prefix();
        // Still behind: ask for the next range now rather than next tick.
        self.catchup_tick();
    }

    /// Serves chosen values: from memory when live, from storage (via
    /// `Ready::reads`) when retired.
    pub(crate) fn on_catchup_request(&mut self, from: NodeId, from_index: Index, to_index: Index) {
        if from_index == 0 || to_index < from_index {
            return;
        }
        let to_index = to_index.min(from_index + self.cfg.catchup_batch_max - 1);
        if from_index < self.base {
            self.out.reads.push(ReadRequest {
                to: from,
                from_index,
                to_index: to_index.min(self.base - 1),
            });
        }
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut index = from_index.max(self.base);
        while index <= to_index {
            let Some(value) = self
                .instance(index)
                .filter(|i| i.chosen)
                .and_then(|i| i.value.clone())
            else {
                break;
            };
            bytes += value.payload_len() + 16;
            entries.push((index, value));
            if bytes >= self.cfg.batch_bytes_max {
                break;
            }
            index += 1;
        }
        if !entries.is_empty() {
            self.send_now(from, Body::Learn { entries });
        }
    }

    pub(crate) fn on_compacted(&mut self, _from: NodeId, first_index: Index) {
        if first_index > self.base {
            self.catchup_compacted_below = Some(first_index);
        }
    }

    /// Asks the most advanced peer we know of for what we miss.
    pub(crate) fn catchup_tick(&mut self) {
        let (chosen_through, mut peer) = self.known_chosen_through;
        if chosen_through < self.base || peer == 0 {
            return;
        }
        if let Some(sent) = self.catchup_sent_at {
            if self.now - sent < self.cfg.catchup_retry_ticks as u64 {
                return;
            }
            // No answer: that peer may be down; ask another one.
            let others: Vec<NodeId> = self.peers().collect();
            if others.is_empty() {
                return;
            }
            peer = others[self.rng.random_range(0..others.len())];
        }
        if peer == self.id {
            return;
        }
        let to_index = chosen_through.min(self.base + self.cfg.catchup_batch_max - 1);
        self.catchup_sent_at = Some(self.now);
        self.send_now(
            peer,
            Body::CatchupRequest {
                from_index: self.base,
                to_index,
            },
        );
    }
}
