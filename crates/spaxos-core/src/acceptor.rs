//! The acceptor's rules: phase 1 (prepare, prepare-range) and phase 2
//! (accept). Every grant changes hard state first; the reply travels in
//! `Ready::messages`, which leave only after that state is durable.

use crate::message::{Body, PromiseEntry};
use crate::node::{AcceptedRun, Node, RoleState};
use crate::ready::ReadRequest;
use std::sync::Arc;

use crate::types::{AcceptEntries, Ballot, Index, NodeId, Record, Value};

impl Node {
    /// The promise in force at `index`: the per-index promise or the
    /// node-wide one, whichever is higher.
    pub(crate) fn effective_promise(&self, index: Index) -> Ballot {
        let per_index = self
            .instance(index)
            .map(|i| i.promised)
            .unwrap_or(Ballot::ZERO);
        per_index.max(self.state.promised)
    }

    /// Serves the chosen value of `index` to `to` (from memory, or from
    /// storage for retired indices).
    fn answer_with_chosen(&mut self, to: NodeId, index: Index) {
        if index < self.base {
            self.out.reads.push(ReadRequest {
                to,
                from_index: index,
                to_index: index,
            });
        } else if let Some(value) = self
            .instance(index)
            .filter(|i| i.chosen)
            .and_then(|i| i.value.clone())
        {
            self.send_now(
                to,
                Body::Learn {
                    entries: vec![(index, value)],
                },
            );
        }
    }

    /// Phase 1a for one index.
    pub(crate) fn on_prepare(&mut self, from: NodeId, ballot: Ballot, index: Index) {
        if index == 0 {
            return;
        }
        if self.instance(index).is_some_and(|i| i.chosen) || index < self.base {
            // Decided: no promise is needed, the proposer learns the value.
            self.answer_with_chosen(from, index);
            return;
        }
        let promised = self.effective_promise(index);
        if ballot < promised {
            self.send_now(
                from,
                Body::Reject {
                    ballot,
                    promised,
                    index,
                },
            );
            return;
        }
        let Some(inst) = self.instance_mut_bounded(index) else {
            return;
        };
        let changed = ballot > inst.promised;
        if changed {
            inst.promised = ballot;
        }
        let (accepted, value) = (inst.accepted, inst.value.clone());
        if changed {
            self.persist_instance(index);
        }
        self.send(
            from,
            Body::Promise {
                ballot,
                index,
                accepted,
                value,
            },
        );
    }

    /// Phase 1a of a leader candidate: one promise for every index.
    pub(crate) fn on_prepare_range(&mut self, from: NodeId, ballot: Ballot, from_index: Index) {
        let mut refuse = if ballot < self.state.promised {
            Some(self.state.promised)
        } else {
            None
        };
        if refuse.is_none() {
            // A single-index promise above this ballot blocks the range.
            let higher = self
                .instances
                .iter()
                .enumerate()
                .filter(|(offset, i)| {
                    self.base + *offset as u64 >= from_index && !i.chosen && i.promised > ballot
                })
                .map(|(_, i)| i.promised)
                .max();
            refuse = higher;
        }
        if let Some(promised) = refuse {
            self.send_now(
                from,
                Body::Reject {
                    ballot,
                    promised,
                    index: 0,
                },
            );
            return;
        }
        if ballot > self.state.promised {
            self.state.promised = ballot;
            self.out.records.push(Record::Node(self.state));
            if from != self.id {
                self.step_down_below(ballot);
                // Give the candidate time to win before we campaign.
                self.leader = None;
                self.reset_election_timer();
            }
        }
        let start = from_index.max(self.base);
        let mut entries = Vec::new();
        if start >= self.base {
            let skip = (start - self.base) as usize;
            for (offset, inst) in self.instances.iter().enumerate().skip(skip) {
                if let Some(value) = &inst.value {
                    entries.push(PromiseEntry {
                        index: self.base + offset as u64,
                        accepted: inst.accepted,
                        value: value.clone(),
                        chosen: inst.chosen,
                    });
                }
            }
        }
        let chosen_through = self.base - 1;
        self.send(
            from,
            Body::PromiseRange {
                ballot,
                from_index,
                chosen_through,
                entries,
            },
        );
    }

    /// Phase 2a: accept each entry unless a higher promise is in force, then
    /// learn what the proposer says is chosen.
    pub(crate) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: AcceptEntries,
        chosen_through: Index,
    ) {
        if ballot < self.state.promised {
            self.send_now(
                from,
                Body::Reject {
                    ballot,
                    promised: self.state.promised,
                    index: entries.first().map(|e| e.0).unwrap_or(0),
                },
            );
            return;
        }
        if from != self.id {
            self.step_down_below(ballot);
            if self.leader.map(|l| l.1) == Some(ballot) {
                self.election_elapsed = 0;
            }
        }
        if let Some(accepted) = self.accept_run(from, ballot, &entries) {
            // As below when every entry is granted, without an instance per
            // entry: the batch itself is kept.
            self.out.records.push(Record::Accepted { ballot, entries });
            self.send(
                from,
                Body::Accepted {
                    ballot,
                    indices: accepted,
                },
            );
            if chosen_through > 0 {
                self.learn_chosen_through(from, ballot, chosen_through);
            }
            return;
        }
        self.materialize_runs();
        let mut accepted = Vec::with_capacity(entries.len());
        let mut refused: Option<(Ballot, Index)> = None;
        let node_promise = self.state.promised;
        // The accepted entries become one record. While every entry is
        // accepted that record is the message's own vector; from the first
        // one skipped, the accepted ones are copied out instead.
        let mut kept: Option<Vec<(Index, Value)>> = None;
        for (position, (index, value)) in entries.iter().enumerate() {
            let index = *index;
            // One lookup per entry: this loop is the follower's hot path.
            let inst = if index == 0 || index < self.base {
                None
            } else {
                self.instance_mut_bounded(index)
            };
            let grant = match inst {
                Some(inst) if !inst.chosen => {
                    let promised = inst.promised.max(node_promise);
                    if ballot < promised {
                        if refused.is_none_or(|r| promised > r.0) {
                            refused = Some((promised, index));
                        }
                        false
                    } else {
                        inst.promised = ballot;
                        inst.accepted = ballot;
                        value.clone_into_slot(&mut inst.value);
                        true
                    }
                }
                _ => false,
            };
            if grant {
                accepted.push(index);
                if let Some(kept) = &mut kept {
                    kept.push((index, value.clone()));
                }
            } else if kept.is_none() {
                kept = Some(entries[..position].to_vec());
            }
        }
        if !accepted.is_empty() {
            let entries = kept.map_or(entries, Arc::new);
            self.out.records.push(Record::Accepted { ballot, entries });
        }
        if !accepted.is_empty() {
            self.send(
                from,
                Body::Accepted {
                    ballot,
                    indices: accepted,
                },
            );
        }
        if let Some((promised, index)) = refused {
            self.send_now(
                from,
                Body::Reject {
                    ballot,
                    promised,
                    index,
                },
            );
        }
        if chosen_through > 0 {
            self.learn_chosen_through(from, ballot, chosen_through);
        }
    }

    /// The steady state's accept: a follower gets the next consecutive
    /// indices, past every index it holds, at a ballot no promise refuses.
    /// Every entry is then granted, so the batch is kept as one
    /// `AcceptedRun` instead of an instance per entry. Returns the indices
    /// accepted, or `None` (nothing changed) when the general path must
    /// decide.
    fn accept_run(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: &AcceptEntries,
    ) -> Option<Vec<Index>> {
        if !self.accept_runs || from == self.id || !matches!(self.role, RoleState::Follower) {
            return None;
        }
        let first = entries.first()?.0;
        let end = match self.runs.back() {
            Some(run) => run.end_index(),
            None => self.base + self.instances.len() as u64,
        };
        // Past every instance, hence no per-index promise: the node-wide
        // one (already checked against `ballot`) is the one in force.
        if first != end || first == 0 {
            return None;
        }
        let last = first.checked_add(entries.len() as u64 - 1)?;
        if last - self.base >= self.cfg.acceptor_window_max {
            return None;
        }
        let mut accepted = Vec::with_capacity(entries.len());
        for (index, _) in entries.iter() {
            if *index != first + accepted.len() as u64 {
                return None;
            }
            accepted.push(*index);
        }
        assert!(
            ballot >= self.state.promised,
            "accepted run below the node's promise"
        );
        self.runs.push_back(AcceptedRun {
            ballot,
            entries: Arc::clone(entries),
            start: 0,
            chosen: 0,
            created_at: self.now,
        });
        self.max_index = self.max_index.max(last);
        Some(accepted)
    }

    /// Steps down from leading or campaigning when a higher ballot is in play.
    pub(crate) fn step_down_below(&mut self, ballot: Ballot) {
        let own = match &self.role {
            RoleState::Leader(l) => Some(l.ballot),
            RoleState::Candidate(c) => Some(c.ballot),
            RoleState::Follower => None,
        };
        if own.is_some_and(|b| ballot > b) {
            self.step_down();
        }
    }
}
