//! Invariant checkers. Each observes what nodes emit and what they hold on
//! disk, and records a violation the moment a rule breaks.
//!
//! Ground truth for "chosen" is Paxos's own definition: a majority of
//! acceptors sent `Accepted` for the same (index, ballot), and the value of
//! that ballot at that index is the one its proposer sent in `Accept`.

use std::collections::HashMap;

use spaxos_core::{Ballot, Body, ChosenItem, Index, Message, NodeId, Outcome, ReqId, Value};

use spaxos_storage::MemStorage;

#[derive(Clone, Debug)]
pub struct ProposalRecord {
    pub value: Value,
    pub node: NodeId,
    pub incarnation: u64,
    pub proposed_at: u64,
    pub outcome: Option<Outcome>,
}

#[derive(Default)]
pub struct Checker {
    pub quorum: usize,
    pub members: Vec<NodeId>,
    /// Value proposed at (index, ballot): one per pair.
    accept_values: HashMap<(Index, Ballot), Value>,
    accepted_by: HashMap<(Index, Ballot), u64>,
    /// Chosen per Paxos (raw value, before duplicate suppression).
    pub truth: HashMap<Index, Value>,
    /// Delivered (deduplicated) value per index, agreed by every node.
    pub delivered: HashMap<Index, Value>,
    pub delivered_reqids: HashMap<ReqId, Index>,
    pub proposals: HashMap<ReqId, ProposalRecord>,
    pub raw_duplicates: u64,
    /// Repeats delivered again because the window had forgotten the first.
    pub repeats_past_window: u64,
    pub violations: Vec<String>,
    /// The cluster's `dedup_window`.
    pub dedup_window: u64,
}

impl Checker {
    pub fn new(members: Vec<NodeId>, dedup_window: u64) -> Checker {
        Checker {
            quorum: members.len() / 2 + 1,
            members,
            dedup_window: dedup_window.max(1),
            ..Checker::default()
        }
    }

    fn violation(&mut self, text: String) {
        if self.violations.len() < 20 {
            self.violations.push(text);
        }
    }

    /// Whether a reqid delivered at `first` is still remembered at `index`
    /// (the documented rule: generations of `dedup_window` indices, the
    /// current one and the one before).
    fn remembered(&self, first: Index, index: Index) -> bool {
        first < index && (index - 1) / self.dedup_window <= (first - 1) / self.dedup_window + 1
    }

    fn bit(&self, node: NodeId) -> u64 {
        1 << self.members.iter().position(|&m| m == node).unwrap_or(63)
    }

    /// A message was produced by a node's core (before it is sent).
    pub fn on_produced(&mut self, msg: &Message) {
        if let Body::Accept {
            ballot, entries, ..
        } = &msg.body
        {
            if ballot.node != msg.from {
                self.violation(format!(
                    "node {} sent an accept with another node's ballot {ballot}",
                    msg.from
                ));
            }
            for (index, value) in entries.iter() {
                match self.accept_values.get(&(*index, *ballot)) {
                    Some(existing) if existing != value => {
                        let text = format!(
                            "two values proposed at index {index} ballot {ballot}: {existing:?} and {value:?}"
                        );
                        self.violation(text);
                    }
                    Some(_) => {}
                    None => {
                        self.check_proposed(*index, value);
                        self.accept_values.insert((*index, *ballot), value.clone());
                    }
                }
            }
        }
    }

    fn check_proposed(&mut self, index: Index, value: &Value) {
        if let Some(reqid) = value.reqid() {
            match self.proposals.get(&reqid) {
                None => self.violation(format!(
                    "index {index}: value with reqid {reqid} was never proposed by a client"
                )),
                Some(p) if &p.value != value => self.violation(format!(
                    "index {index}: reqid {reqid} carries {value:?}, the client proposed {:?}",
                    p.value
                )),
                Some(_) => {}
            }
        }
    }

    /// A message leaves node `msg.from` whose disk is `disk` at that moment.
    /// Promises and votes must be backed by durable state.
    pub fn on_sent(&mut self, msg: &Message, disk: &MemStorage) {
        let node = disk.node_state();
        let instance = |index: Index| disk.instance(index);
        let effective_promise = |index: Index| {
            instance(index)
                .map(|i| i.promised)
                .unwrap_or_default()
                .max(node.promised)
        };
        let from = msg.from;
        match &msg.body {
            Body::Prepare { ballot, .. } | Body::PrepareRange { ballot, .. }
                if ballot.node == from && node.max_round < ballot.round =>
            {
                self.violation(format!(
                        "node {from} sent a prepare at {ballot} before persisting max_round (disk has {})",
                        node.max_round
                    ));
            }
            Body::Promise { ballot, index, .. } if effective_promise(*index) < *ballot => {
                self.violation(format!(
                    "node {from} promised {ballot} at index {index} but its disk promises only {}",
                    effective_promise(*index)
                ));
            }
            Body::PromiseRange { ballot, .. } if node.promised < *ballot => {
                self.violation(format!(
                    "node {from} sent a range promise {ballot} but its disk promises only {}",
                    node.promised
                ));
            }
            Body::Accepted { ballot, indices } => {
                let bit = self.bit(from);
                for &index in indices {
                    let (accepted, chosen) = instance(index)
                        .map(|i| (i.accepted, i.chosen))
                        .unwrap_or_default();
                    if accepted < *ballot && !chosen {
                        self.violation(format!(
                            "node {from} voted for {ballot} at index {index} but its disk has accepted only {accepted}"
                        ));
                    }
                    let votes = self.accepted_by.entry((index, *ballot)).or_default();
                    *votes |= bit;
                    if votes.count_ones() as usize >= self.quorum {
                        match self.accept_values.get(&(index, *ballot)).cloned() {
                            Some(value) => self.chosen(index, value),
                            None => self.violation(format!(
                                "a quorum voted for ballot {ballot} at index {index} that nobody proposed"
                            )),
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn chosen(&mut self, index: Index, value: Value) {
        match self.truth.get(&index) {
            Some(existing) if *existing != value => {
                let text = format!(
                    "SAFETY: two values chosen at index {index}: {existing:?} and {value:?}"
                );
                self.violation(text);
            }
            Some(_) => {}
            None => {
                self.truth.insert(index, value);
            }
        }
    }

    /// A node delivered chosen items (in index order).
    pub fn on_delivered(&mut self, node: NodeId, item: &ChosenItem) {
        let index = item.index;
        match self.delivered.get(&index) {
            Some(existing) if *existing != item.value => {
                let text = format!(
                    "node {node} delivered {:?} at index {index}, another node delivered {existing:?}",
                    item.value
                );
                self.violation(text);
                return;
            }
            Some(_) => return,
            None => {}
        }
        let Some(truth) = self.truth.get(&index).cloned() else {
            self.violation(format!(
                "node {node} delivered index {index} before any quorum accepted a value there"
            ));
            return;
        };
        if item.value != truth {
            // Only a suppressed duplicate may differ: a no-op standing for a
            // reqid delivered at a lower index.
            let dup_ok = item.value.is_noop()
                && truth
                    .reqid()
                    .and_then(|r| self.delivered_reqids.get(&r))
                    .is_some_and(|&first| self.remembered(first, index));
            if !dup_ok {
                self.violation(format!(
                    "node {node} delivered {:?} at index {index} but {truth:?} was chosen",
                    item.value
                ));
            } else {
                self.raw_duplicates += 1;
            }
        }
        if let Some(reqid) = item.value.reqid() {
            // Past the window a repeat is applied again (documented); within
            // it, it must have been suppressed.
            if let Some(&first) = self.delivered_reqids.get(&reqid) {
                if self.remembered(first, index) {
                    self.violation(format!(
                        "reqid {reqid} delivered at two indices within the dedup window: {first} and {index}"
                    ));
                } else {
                    self.repeats_past_window += 1;
                }
            }
            self.delivered_reqids.insert(reqid, index);
            if let Some(Outcome::Lost { index: lost_at }) =
                self.proposals.get(&reqid).and_then(|p| p.outcome)
            {
                self.violation(format!(
                    "reqid {reqid} was reported lost at {lost_at} but is chosen at {index}"
                ));
            }
        }
        self.delivered.insert(index, item.value.clone());
    }

    pub fn on_outcome(&mut self, node: NodeId, reqid: ReqId, outcome: Outcome) {
        let Some(p) = self.proposals.get_mut(&reqid) else {
            self.violation(format!(
                "node {node} reported an outcome for unknown reqid {reqid}"
            ));
            return;
        };
        if p.node != node {
            let text = format!(
                "node {node} reported an outcome for reqid {reqid} proposed on node {}",
                p.node
            );
            self.violation(text);
            return;
        }
        if let Some(previous) = p.outcome {
            let text = format!("reqid {reqid} got two outcomes: {previous:?} then {outcome:?}");
            self.violation(text);
            return;
        }
        p.outcome = Some(outcome);
        match outcome {
            Outcome::Chosen { index } => {
                let ok = self
                    .delivered
                    .get(&index)
                    .is_some_and(|v| v.reqid() == Some(reqid));
                if !ok {
                    self.violation(format!(
                        "reqid {reqid} reported chosen at {index}, the log has {:?}",
                        self.delivered.get(&index)
                    ));
                }
            }
            Outcome::Lost { index } => {
                let wrong = self
                    .truth
                    .get(&index)
                    .is_none_or(|v| v.reqid() == Some(reqid));
                if wrong {
                    self.violation(format!(
                        "reqid {reqid} reported lost at {index}, the log has {:?}",
                        self.truth.get(&index)
                    ));
                }
                if let Some(at) = self.delivered_reqids.get(&reqid) {
                    self.violation(format!(
                        "reqid {reqid} reported lost at {index} but it is chosen at {at}"
                    ));
                }
            }
        }
    }
}
