//! Property tests over random message sequences: the acceptor never grants
//! below a promise and never answers before its state is durable; a node
//! never reuses a ballot across crashes.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use spaxos_core::{
    Ballot, Body, Index, InstanceState, Message, Node, NodeState, Record, RecoveredState, Value,
};

/// What storage holds after applying every record batch so far.
#[derive(Default, Clone, Debug)]
struct Durable {
    node: NodeState,
    instances: BTreeMap<Index, InstanceState>,
}

impl Durable {
    fn apply(&mut self, records: &[Record]) {
        for record in &Record::per_index(records) {
            match record {
                Record::Node(state) => self.node = *state,
                Record::Instance(st) => {
                    self.instances.insert(st.index, st.clone());
                }
                Record::Accepted { .. } | Record::ChosenRange { .. } => {
                    unreachable!("expanded above")
                }
                Record::Chosen(index) => {
                    let st = self
                        .instances
                        .get_mut(index)
                        .unwrap_or_else(|| panic!("Chosen({index}) before any Instance record"));
                    assert!(st.value.is_some(), "Chosen({index}) without a value");
                    st.chosen = true;
                }
            }
        }
    }

    fn effective_promise(&self, index: Index) -> Ballot {
        let per_index = self
            .instances
            .get(&index)
            .map(|s| s.promised)
            .unwrap_or(Ballot::ZERO);
        per_index.max(self.node.promised)
    }

    fn accepted(&self, index: Index) -> Ballot {
        self.instances
            .get(&index)
            .map(|s| s.accepted)
            .unwrap_or(Ballot::ZERO)
    }

    fn recovered(&self) -> RecoveredState {
        RecoveredState {
            node: self.node,
            chosen_through: 0,
            instances: self.instances.values().cloned().collect(),
            recent_reqids: Vec::new(),
        }
    }
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (0u64..6, prop_oneof![Just(1u64), Just(3u64)]).prop_map(|(round, node)| b(round, node))
}

fn value() -> impl Strategy<Value = Value> {
    (1u64..4).prop_map(|reqid| one(reqid, "v"))
}

/// A message to node 2 from node 1 or 3, as a proposer or leader would send.
fn acceptor_input() -> impl Strategy<Value = Message> {
    let prepare = (ballot(), 1u64..6)
        .prop_map(|(ballot, index)| msg(ballot.node, 2, Body::Prepare { ballot, index }));
    let prepare_range = (ballot(), 1u64..4).prop_map(|(ballot, from_index)| {
        msg(ballot.node, 2, Body::PrepareRange { ballot, from_index })
    });
    let accept = (
        ballot(),
        prop::collection::btree_map(1u64..6, value(), 1..4),
        0u64..3,
    )
        .prop_map(|(ballot, entries, chosen_through)| {
            msg(
                ballot.node,
                2,
                Body::Accept {
                    ballot,
                    entries: entries.into_iter().collect::<Vec<_>>().into(),
                    chosen_through,
                },
            )
        });
    prop_oneof![prepare, prepare_range, accept]
}

fn is_vote(body: &Body) -> bool {
    matches!(
        body,
        Body::Promise { .. } | Body::PromiseRange { .. } | Body::Accepted { .. }
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For any sequence of prepares and accepts: every promise and accepted
    /// is at or above the promise in force before the message, is sent only
    /// after the hard state that backs it (it sits in `messages`, and the
    /// records of the same batch already hold it), and durable promises and
    /// accepted ballots never go down.
    #[test]
    fn acceptor_never_votes_below_its_promise_nor_before_persisting(
        inputs in prop::collection::vec(acceptor_input(), 1..40)
    ) {
        let mut node = Node::new(passive_cfg(2)).unwrap();
        let mut durable = Durable::default();
        for input in inputs {
            let before = durable.clone();
            node.step(input);
            let ready = node.ready();
            durable.apply(&ready.records);

            for m in &ready.messages_now {
                prop_assert!(!is_vote(&m.body), "vote sent without waiting: {m:?}");
            }
            prop_assert!(durable.node.promised >= before.node.promised);
            for (index, st) in &before.instances {
                let now = &durable.instances[index];
                prop_assert!(now.promised >= st.promised, "promise at {index} went down");
                prop_assert!(now.accepted >= st.accepted, "accepted at {index} went down");
                prop_assert!(!st.chosen || now.chosen);
            }
            for m in &ready.messages {
                prop_assert_eq!(m.from, 2);
                match &m.body {
                    Body::Promise { ballot, index, accepted, value } => {
                        prop_assert!(*ballot >= before.node.promised);
                        prop_assert!(*ballot >= before.effective_promise(*index));
                        prop_assert!(durable.effective_promise(*index) >= *ballot);
                        prop_assert_eq!(*accepted, durable.accepted(*index));
                        prop_assert_eq!(
                            value,
                            &durable.instances.get(index).and_then(|s| s.value.clone())
                        );
                    }
                    Body::PromiseRange { ballot, from_index, chosen_through, entries } => {
                        prop_assert!(*ballot >= before.node.promised);
                        prop_assert!(durable.node.promised >= *ballot);
                        prop_assert_eq!(*chosen_through, node.chosen_through());
                        // Every durable accepted value at or above from_index
                        // and above the delivered prefix is reported.
                        let first = (*from_index).max(chosen_through + 1);
                        let expected: Vec<(Index, Ballot)> = durable
                            .instances
                            .values()
                            .filter(|s| s.index >= first && s.value.is_some())
                            .map(|s| (s.index, s.accepted))
                            .collect();
                        let reported: Vec<(Index, Ballot)> =
                            entries.iter().map(|e| (e.index, e.accepted)).collect();
                        prop_assert_eq!(reported, expected);
                    }
                    Body::Accepted { ballot, indices } => {
                        prop_assert!(*ballot >= before.node.promised);
                        for index in indices {
                            prop_assert!(*ballot >= before.effective_promise(*index));
                            prop_assert_eq!(durable.accepted(*index), *ballot);
                        }
                    }
                    other => prop_assert!(false, "unexpected after-persist message {other:?}"),
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Event {
    Ticks(u32),
    /// A peer refuses with a promise of this round.
    Reject(u64),
    /// Crash after persisting everything so far.
    Restart,
    /// Crash with the last batch not yet durable: its records and messages
    /// are lost.
    CrashBeforePersist,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (1u32..8).prop_map(Event::Ticks),
        (0u64..30).prop_map(Event::Reject),
        Just(Event::Restart),
        Just(Event::CrashBeforePersist),
    ]
}

fn sent_ballots(messages: &[Message]) -> Vec<Ballot> {
    let mut ballots: Vec<Ballot> = messages
        .iter()
        .filter_map(|m| match m.body {
            Body::PrepareRange { ballot, .. } | Body::Prepare { ballot, .. } => Some(ballot),
            _ => None,
        })
        .collect();
    ballots.dedup();
    ballots
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every ballot node 1 ever sends is new: strictly above every ballot it
    /// sent before, across restarts and lost batches.
    #[test]
    fn ballots_are_never_reused_across_crashes(events in prop::collection::vec(event(), 1..40)) {
        let mut c = cfg(1);
        c.election_timeout_ticks = 3;
        let mut node = Node::new(c.clone()).unwrap();
        let mut durable = Durable::default();
        let mut last_sent = Ballot::ZERO;
        for event in events {
            match event {
                Event::Ticks(n) => {
                    for _ in 0..n {
                        node.tick();
                    }
                }
                Event::Reject(round) => {
                    let ballot = match node.status().leader_ballot {
                        zero if zero.is_zero() => last_sent,
                        own => own,
                    };
                    node.step(msg(2, 1, Body::Reject { ballot, promised: b(round, 2), index: 0 }));
                }
                Event::Restart => {
                    node = Node::restore(c.clone(), durable.recovered()).unwrap();
                    continue;
                }
                Event::CrashBeforePersist => {
                    node.ready();
                    node = Node::restore(c.clone(), durable.recovered()).unwrap();
                    continue;
                }
            }
            let ready = node.ready();
            durable.apply(&ready.records);
            for ballot in sent_ballots(&ready.messages) {
                prop_assert_eq!(ballot.node, 1);
                prop_assert!(ballot > last_sent, "ballot {} reused or lower than {}", ballot, last_sent);
                prop_assert!(durable.node.max_round >= ballot.round, "ballot {} sent before its round is durable", ballot);
                last_sent = ballot;
            }
        }
    }
}
