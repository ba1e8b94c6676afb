//! Single-index Paxos run by any node: the leaderless fallback for client
//! proposals and the no-op that fills a hole. Full two phases, a fresh ballot
//! per attempt, randomized backoff after a rejection so duelling proposers
//! converge.

use crate::message::Body;
use crate::node::{Node, RoleState};
use crate::types::{Ballot, Index, NodeId, ReqId, Value};

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    Prepare,
    Accept,
    Backoff,
}

/// Proposer state of one index.
#[derive(Clone, Debug)]
pub(crate) struct SingleProposer {
    pub ballot: Ballot,
    pub phase: Phase,
    pub promises: u64,
    /// Highest-ballot accepted value among the promises.
    pub best: Option<(Ballot, Value)>,
    /// The value this node wants here (a client proposal or a no-op).
    pub own: Value,
    /// The value sent in phase 2.
    pub proposal: Option<Value>,
    pub votes: u64,
    /// Tick at which the current phase is given up and retried.
    pub deadline: u64,
}

impl Node {
    /// Starts (or restarts) single-index Paxos at `index` for `own`.
    pub(crate) fn start_single(&mut self, index: Index, own: Value) {
        let ballot = self.next_ballot();
        let deadline = self.now
            + self.random_ticks(
                4 * self.cfg.retry_backoff_ticks,
                4 * self.cfg.retry_backoff_ticks,
            );
        let inst = self.instance_mut_force(index);
        if inst.chosen {
            return;
        }
        let fresh = inst.proposer.is_none();
        inst.proposer = Some(Box::new(SingleProposer {
            ballot,
            phase: Phase::Prepare,
            promises: 0,
            best: None,
            own,
            proposal: None,
            votes: 0,
            deadline,
        }));
        if fresh {
            self.leaderless_active += 1;
        }
        self.send_to_members(Body::Prepare { ballot, index });
    }

    pub(crate) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        index: Index,
        accepted: Ballot,
        value: Option<Value>,
    ) {
        let bit = self.bit(from);
        let quorum = self.quorum as u32;
        let deadline = self.now + 4 * self.cfg.retry_backoff_ticks as u64;
        let Some(inst) = self.instance_mut(index) else {
            return;
        };
        let Some(p) = inst.proposer.as_mut() else {
            return;
        };
        if p.ballot != ballot || p.phase != Phase::Prepare || p.promises & bit != 0 {
            return;
        }
        p.promises |= bit;
        if let Some(value) = value {
            if p.best.as_ref().is_none_or(|(b, _)| accepted > *b) {
                p.best = Some((accepted, value));
            }
        }
        if p.promises.count_ones() < quorum {
            return;
        }
        // Paxos: adopt the highest-ballot value reported, else our own.
        let proposal = match &p.best {
            Some((_, v)) => v.clone(),
            None => p.own.clone(),
        };
        p.phase = Phase::Accept;
        p.proposal = Some(proposal.clone());
        p.votes = 0;
        p.deadline = deadline;
        let members = self.members.clone();
        for to in members {
            self.send_now(
                to,
                Body::Accept {
                    ballot,
                    entries: vec![(index, proposal.clone())].into(),
                    chosen_through: 0,
                },
            );
        }
    }

    pub(crate) fn proposer_on_accepted(&mut self, from: NodeId, ballot: Ballot, index: Index) {
        let bit = self.bit(from);
        let quorum = self.quorum as u32;
        let Some(inst) = self.instance_mut(index) else {
            return;
        };
        let Some(p) = inst.proposer.as_mut() else {
            return;
        };
        if p.ballot != ballot || p.phase != Phase::Accept {
            return;
        }
        p.votes |= bit;
        if p.votes.count_ones() < quorum {
            return;
        }
        let value = p.proposal.clone().expect("accept phase has a proposal");
        self.learn_value(index, value.clone());
        let peers: Vec<NodeId> = self.peers().collect();
        for to in peers {
            self.send_now(
                to,
                Body::Learn {
                    entries: vec![(index, value.clone())],
                },
            );
        }
    }

    pub(crate) fn proposer_on_reject(&mut self, index: Index, ballot: Ballot, promised: Ballot) {
        let backoff = self.random_ticks(
            self.cfg.retry_backoff_ticks,
            self.cfg.retry_backoff_ticks * 2,
        );
        let now = self.now;
        let Some(inst) = self.instance_mut(index) else {
            return;
        };
        let Some(p) = inst.proposer.as_mut() else {
            return;
        };
        if p.ballot != ballot || promised <= ballot || p.phase == Phase::Backoff {
            return;
        }
        p.phase = Phase::Backoff;
        p.deadline = now + backoff;
    }

    /// Retries single-index attempts whose phase timed out or whose backoff
    /// ended. With a leader in place, attempts are left to it.
    pub(crate) fn proposers_tick(&mut self) {
        if self.leaderless_active == 0 {
            return;
        }
        let now = self.now;
        let mut due = Vec::new();
        for (offset, inst) in self.instances.iter().enumerate() {
            if let Some(p) = &inst.proposer {
                if p.deadline <= now {
                    due.push((self.base + offset as u64, p.own.clone()));
                }
            }
        }
        let leader_elsewhere = self.leader.is_some() || matches!(self.role, RoleState::Leader(_));
        for (index, own) in due {
            if leader_elsewhere {
                // The leader decides this index (it learns of it through
                // max_index); our proposal waits for that decision.
                if let Some(inst) = self.instance_mut(index) {
                    if inst.proposer.take().is_some() {
                        self.leaderless_active -= 1;
                    }
                }
            } else {
                self.start_single(index, own);
            }
        }
    }

    /// Without a leader for a while: run queued proposals leaderless, and
    /// fill holes below the highest known index with no-ops.
    pub(crate) fn leaderless_tick(&mut self) {
        if self.leader.is_some() || !matches!(self.role, RoleState::Follower) {
            self.leaderless_since = self.now;
            return;
        }
        if self.now - self.leaderless_since < self.cfg.leaderless_delay_ticks as u64 {
            return;
        }
        while self.leaderless_active < self.cfg.leaderless_inflight_max {
            let Some(reqid) = self.queue.pop_front() else {
                break;
            };
            self.start_leaderless(reqid);
        }
        if self.now < self.noop_scan_at {
            return;
        }
        self.noop_scan_at = self.now + self.cfg.noop_timeout_ticks as u64;
        let timeout = self.cfg.noop_timeout_ticks as u64;
        let mut holes = Vec::new();
        for (offset, inst) in self.instances.iter().enumerate() {
            if self.leaderless_active + holes.len() >= self.cfg.leaderless_inflight_max {
                break;
            }
            let index = self.base + offset as u64;
            if index > self.max_index {
                break;
            }
            if !inst.chosen && inst.proposer.is_none() && inst.created_at + timeout <= self.now {
                holes.push(index);
            }
        }
        if self.instances.is_empty() && self.base <= self.max_index {
            holes.push(self.base);
        }
        for index in holes {
            self.start_single(index, Value::Noop);
        }
    }

    fn start_leaderless(&mut self, reqid: ReqId) {
        let Some(p) = self.pending.get(&reqid) else {
            return;
        };
        if p.assigned.is_some() {
            return;
        }
        let value = p.value.clone();
        let index = self.max_index.max(self.base - 1) + 1;
        self.start_single(index, value);
        self.assigned_locally(reqid, index);
    }
}
