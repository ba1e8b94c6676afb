//! Acceptor rules (DESIGN.md §4, "A reference protocol"): one test per rule,
//! each feeding one message and comparing the exact records and messages.
//!
//! The node under test is node 2 of {1, 2, 3}; it never campaigns.

mod common;

use common::*;
use spaxos_core::{Ballot, Body, ChosenItem, Node, NodeState, PromiseEntry, Record};

fn acceptor() -> Node {
    Node::new(passive_cfg(2)).unwrap()
}

#[test]
fn prepare_above_promise_persists_then_promises() {
    let mut node = acceptor();
    node.step(msg(
        1,
        2,
        Body::Prepare {
            ballot: b(1, 1),
            index: 3,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(promised(3, b(1, 1)))]
    );
    // The promise waits for the record: `messages`, never `messages_now`.
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::Promise {
                ballot: b(1, 1),
                index: 3,
                accepted: Ballot::ZERO,
                value: None,
            }
        )]
    );
    assert_eq!(ready.messages_now, vec![]);
    assert_eq!(node.instance_state(3), Some(promised(3, b(1, 1))));
}

#[test]
fn prepare_reports_the_accepted_value() {
    let mut node = restore(
        passive_cfg(2),
        NodeState::default(),
        vec![accepted(1, b(2, 3), b(2, 3), one(9, "x"))],
    );
    node.step(msg(
        1,
        2,
        Body::Prepare {
            ballot: b(4, 1),
            index: 1,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(accepted(1, b(4, 1), b(2, 3), one(9, "x")))]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::Promise {
                ballot: b(4, 1),
                index: 1,
                accepted: b(2, 3),
                value: Some(one(9, "x")),
            }
        )]
    );
    assert_eq!(ready.messages_now, vec![]);
}

#[test]
fn prepare_below_per_index_promise_is_rejected_without_a_record() {
    let mut node = restore(
        passive_cfg(2),
        NodeState::default(),
        vec![promised(3, b(5, 3))],
    );
    node.step(msg(
        1,
        2,
        Body::Prepare {
            ballot: b(2, 1),
            index: 3,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::Reject {
                ballot: b(2, 1),
                promised: b(5, 3),
                index: 3,
            }
        )]
    );
    assert_eq!(node.instance_state(3), Some(promised(3, b(5, 3))));
}

#[test]
fn prepare_below_node_wide_promise_is_rejected() {
    let mut node = restore(passive_cfg(2), node_state(0, b(4, 3)), vec![]);
    node.step(msg(
        1,
        2,
        Body::Prepare {
            ballot: b(4, 1),
            index: 7,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::Reject {
                ballot: b(4, 1),
                promised: b(4, 3),
                index: 7,
            }
        )]
    );
}

#[test]
fn equal_ballot_re_prepare_is_answered_without_a_new_record() {
    let mut node = acceptor();
    node.step(msg(
        1,
        2,
        Body::Prepare {
            ballot: b(1, 1),
            index: 3,
        },
    ));
    node.ready();
    node.step(msg(
        1,
        2,
        Body::Prepare {
            ballot: b(1, 1),
            index: 3,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::Promise {
                ballot: b(1, 1),
                index: 3,
                accepted: Ballot::ZERO,
                value: None,
            }
        )]
    );
    assert_eq!(ready.messages_now, vec![]);
}

#[test]
fn prepare_range_grant_persists_node_promise_and_reports_every_entry_from_index() {
    // Index 1 accepted (below from_index: not reported), 2 a bare promise
    // (nothing accepted: not reported), 3 accepted, 4 chosen.
    let mut node = Node::restore(
        passive_cfg(2),
        spaxos_core::RecoveredState {
            node: node_state(0, b(1, 1)),
            chosen_through: 0,
            instances: vec![
                accepted(1, b(1, 1), b(1, 1), one(11, "a")),
                promised(2, b(2, 3)),
                accepted(3, b(2, 3), b(2, 3), one(13, "c")),
                chosen(4, b(1, 1), one(14, "d")),
            ],
            recent_reqids: vec![],
        },
    )
    .unwrap();
    node.step(msg(
        1,
        2,
        Body::PrepareRange {
            ballot: b(3, 1),
            from_index: 2,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(0, b(3, 1)))]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::PromiseRange {
                ballot: b(3, 1),
                from_index: 2,
                chosen_through: 0,
                entries: vec![
                    PromiseEntry {
                        index: 3,
                        accepted: b(2, 3),
                        value: one(13, "c"),
                        chosen: false,
                    },
                    PromiseEntry {
                        index: 4,
                        accepted: b(1, 1),
                        value: one(14, "d"),
                        chosen: true,
                    },
                ],
            }
        )]
    );
    assert_eq!(ready.messages_now, vec![]);
    assert_eq!(node.node_state(), node_state(0, b(3, 1)));
}

#[test]
fn prepare_range_reports_chosen_through_and_starts_at_the_first_live_index() {
    let mut node = Node::restore(
        passive_cfg(2),
        spaxos_core::RecoveredState {
            node: NodeState::default(),
            chosen_through: 5,
            instances: vec![accepted(7, b(1, 3), b(1, 3), one(7, "g"))],
            recent_reqids: vec![],
        },
    )
    .unwrap();
    node.step(msg(
        1,
        2,
        Body::PrepareRange {
            ballot: b(2, 1),
            from_index: 1,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(0, b(2, 1)))]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::PromiseRange {
                ballot: b(2, 1),
                from_index: 1,
                chosen_through: 5,
                entries: vec![PromiseEntry {
                    index: 7,
                    accepted: b(1, 3),
                    value: one(7, "g"),
                    chosen: false,
                }],
            }
        )]
    );
}

#[test]
fn prepare_range_below_node_wide_promise_is_rejected() {
    let mut node = restore(passive_cfg(2), node_state(0, b(3, 3)), vec![]);
    node.step(msg(
        1,
        2,
        Body::PrepareRange {
            ballot: b(3, 1),
            from_index: 1,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::Reject {
                ballot: b(3, 1),
                promised: b(3, 3),
                index: 0,
            }
        )]
    );
}

#[test]
fn prepare_range_blocked_by_a_higher_single_index_promise() {
    let mut node = restore(
        passive_cfg(2),
        NodeState::default(),
        vec![promised(2, b(4, 3)), promised(4, b(5, 3))],
    );
    node.step(msg(
        1,
        2,
        Body::PrepareRange {
            ballot: b(3, 1),
            from_index: 1,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    // The highest blocking promise is named.
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::Reject {
                ballot: b(3, 1),
                promised: b(5, 3),
                index: 0,
            }
        )]
    );
    assert_eq!(node.node_state(), NodeState::default());
}

#[test]
fn prepare_range_ignores_single_index_promises_below_from_index() {
    let mut node = restore(
        passive_cfg(2),
        NodeState::default(),
        vec![promised(2, b(5, 3))],
    );
    node.step(msg(
        1,
        2,
        Body::PrepareRange {
            ballot: b(3, 1),
            from_index: 3,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(0, b(3, 1)))]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::PromiseRange {
                ballot: b(3, 1),
                from_index: 3,
                chosen_through: 0,
                entries: vec![],
            }
        )]
    );
    // Index 2 keeps its own, higher promise.
    node.step(msg(
        1,
        2,
        Body::Accept {
            ballot: b(3, 1),
            entries: vec![(2, one(1, "a"))].into(),
            chosen_through: 0,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::Reject {
                ballot: b(3, 1),
                promised: b(5, 3),
                index: 2,
            }
        )]
    );
}

#[test]
fn accept_at_promise_persists_then_acknowledges() {
    let mut node = restore(passive_cfg(2), node_state(0, b(1, 1)), vec![]);
    node.step(msg(
        1,
        2,
        Body::Accept {
            ballot: b(1, 1),
            entries: vec![(1, one(5, "a")), (2, one(6, "b"))].into(),
            chosen_through: 0,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Instance(accepted(1, b(1, 1), b(1, 1), one(5, "a"))),
            Record::Instance(accepted(2, b(1, 1), b(1, 1), one(6, "b"))),
        ]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::Accepted {
                ballot: b(1, 1),
                indices: vec![1, 2],
            }
        )]
    );
    assert_eq!(ready.messages_now, vec![]);
    assert_eq!(ready.chosen, vec![]);
}

#[test]
fn accept_above_promise_overwrites_a_lower_accepted_value() {
    let mut node = restore(
        passive_cfg(2),
        NodeState::default(),
        vec![accepted(1, b(1, 3), b(1, 3), one(5, "old"))],
    );
    node.step(msg(
        1,
        2,
        Body::Accept {
            ballot: b(2, 1),
            entries: vec![(1, one(6, "new"))].into(),
            chosen_through: 0,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(accepted(
            1,
            b(2, 1),
            b(2, 1),
            one(6, "new")
        ))]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::Accepted {
                ballot: b(2, 1),
                indices: vec![1],
            }
        )]
    );
}

#[test]
fn accept_below_node_wide_promise_is_rejected() {
    let mut node = restore(passive_cfg(2), node_state(0, b(3, 3)), vec![]);
    node.step(msg(
        1,
        2,
        Body::Accept {
            ballot: b(2, 1),
            entries: vec![(1, one(5, "a")), (2, one(6, "b"))].into(),
            chosen_through: 0,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::Reject {
                ballot: b(2, 1),
                promised: b(3, 3),
                index: 1,
            }
        )]
    );
    assert_eq!(node.instance_state(1), None);
}

#[test]
fn accept_after_a_higher_per_index_promise_is_rejected_for_that_index_only() {
    let mut node = restore(
        passive_cfg(2),
        NodeState::default(),
        vec![promised(2, b(3, 3))],
    );
    node.step(msg(
        1,
        2,
        Body::Accept {
            ballot: b(2, 1),
            entries: vec![(1, one(5, "a")), (2, one(6, "b")), (3, one(7, "c"))].into(),
            chosen_through: 0,
        },
    ));
    let ready = node.ready();
    // The granted entries, and only they, make one record.
    assert_eq!(
        ready.records,
        vec![Record::Accepted {
            ballot: b(2, 1),
            entries: vec![(1, one(5, "a")), (3, one(7, "c"))].into(),
        }]
    );
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Instance(accepted(1, b(2, 1), b(2, 1), one(5, "a"))),
            Record::Instance(accepted(3, b(2, 1), b(2, 1), one(7, "c"))),
        ]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::Accepted {
                ballot: b(2, 1),
                indices: vec![1, 3],
            }
        )]
    );
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::Reject {
                ballot: b(2, 1),
                promised: b(3, 3),
                index: 2,
            }
        )]
    );
    assert_eq!(node.instance_state(2), Some(promised(2, b(3, 3))));
}

#[test]
fn accept_chosen_through_marks_chosen_only_indices_accepted_at_that_ballot() {
    // Index 1 will be accepted at 2.1; index 2 holds a value from 1.3.
    let mut node = restore(
        passive_cfg(2),
        NodeState::default(),
        vec![accepted(2, b(1, 3), b(1, 3), one(20, "other"))],
    );
    node.step(msg(
        1,
        2,
        Body::Accept {
            ballot: b(2, 1),
            entries: vec![(1, one(10, "a"))].into(),
            chosen_through: 0,
        },
    ));
    node.ready();
    node.step(msg(
        1,
        2,
        Body::Accept {
            ballot: b(2, 1),
            entries: vec![(3, one(30, "c"))].into(),
            chosen_through: 2,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Instance(accepted(3, b(2, 1), b(2, 1), one(30, "c"))),
            Record::Chosen(1),
        ]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            2,
            1,
            Body::Accepted {
                ballot: b(2, 1),
                indices: vec![3],
            }
        )]
    );
    assert_eq!(
        ready.chosen,
        vec![ChosenItem {
            index: 1,
            value: one(10, "a"),
        }]
    );
    // Index 2 was accepted at another ballot: its value must be fetched.
    assert_eq!(node.chosen_through(), 1);
    assert_eq!(
        node.instance_state(2),
        Some(accepted(2, b(1, 3), b(1, 3), one(20, "other")))
    );
}

#[test]
fn prepare_on_a_chosen_index_is_answered_with_learn() {
    let mut node = restore(
        passive_cfg(2),
        NodeState::default(),
        vec![chosen(2, b(1, 1), one(20, "v"))],
    );
    node.step(msg(
        3,
        2,
        Body::Prepare {
            ballot: b(5, 3),
            index: 2,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            3,
            Body::Learn {
                entries: vec![(2, one(20, "v"))],
            }
        )]
    );
}

#[test]
fn prepare_on_a_retired_index_asks_storage_for_the_value() {
    let mut node = Node::restore(
        passive_cfg(2),
        spaxos_core::RecoveredState {
            node: NodeState::default(),
            chosen_through: 4,
            instances: vec![],
            recent_reqids: vec![],
        },
    )
    .unwrap();
    node.step(msg(
        3,
        2,
        Body::Prepare {
            ballot: b(5, 3),
            index: 2,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(ready.messages_now, vec![]);
    assert_eq!(
        ready.reads,
        vec![spaxos_core::ReadRequest {
            to: 3,
            from_index: 2,
            to_index: 2,
        }]
    );
}

#[test]
fn accept_on_a_chosen_index_leaves_it_alone() {
    let mut node = restore(
        passive_cfg(2),
        NodeState::default(),
        vec![chosen(2, b(1, 1), one(20, "v"))],
    );
    node.step(msg(
        3,
        2,
        Body::Accept {
            ballot: b(5, 3),
            entries: vec![(2, one(21, "w"))].into(),
            chosen_through: 0,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(ready.messages_now, vec![]);
    assert_eq!(
        node.instance_state(2),
        Some(chosen(2, b(1, 1), one(20, "v")))
    );
}

#[test]
fn messages_from_non_members_or_to_others_are_ignored() {
    let mut node = acceptor();
    node.step(msg(
        9,
        2,
        Body::Prepare {
            ballot: b(1, 9),
            index: 1,
        },
    ));
    node.step(msg(
        1,
        3,
        Body::Prepare {
            ballot: b(1, 1),
            index: 1,
        },
    ));
    assert_quiet(&mut node);
    assert_eq!(node.instance_state(1), None);
}
