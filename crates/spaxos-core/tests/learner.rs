//! Learner rules: delivery of chosen entries in index order exactly once,
//! duplicate suppression, catch-up from the most advanced peer, serving
//! retired indices from storage.

mod common;

use common::*;
use spaxos_core::{
    Body, ChosenItem, InstanceState, Node, ReadRequest, Record, RecoveredState, Value,
};

fn learn(from: u64, to: u64, entries: Vec<(u64, Value)>) -> spaxos_core::Message {
    msg(from, to, Body::Learn { entries })
}

fn item(index: u64, value: Value) -> ChosenItem {
    ChosenItem { index, value }
}

#[test]
fn chosen_entries_come_out_in_index_order_exactly_once() {
    let mut node = Node::new(passive_cfg(2)).unwrap();
    node.step(learn(1, 2, vec![(2, one(12, "b")), (3, one(13, "c"))]));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Instance(learned(2, one(12, "b"))),
            Record::Instance(learned(3, one(13, "c"))),
        ]
    );
    // Index 1 is still open: nothing is delivered yet.
    assert_eq!(ready.chosen, vec![]);
    assert_eq!(node.chosen_through(), 0);

    node.step(learn(3, 2, vec![(1, one(11, "a"))]));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(learned(1, one(11, "a")))]
    );
    assert_eq!(
        ready.chosen,
        vec![
            item(1, one(11, "a")),
            item(2, one(12, "b")),
            item(3, one(13, "c"))
        ]
    );
    assert_eq!(node.chosen_through(), 3);

    // Learning them again delivers nothing.
    node.step(learn(
        1,
        2,
        vec![(1, one(11, "a")), (2, one(12, "b")), (3, one(13, "c"))],
    ));
    assert_quiet(&mut node);
}

#[test]
fn learning_a_value_already_accepted_records_only_the_chosen_mark() {
    let mut node = restore(
        passive_cfg(2),
        Default::default(),
        vec![accepted(1, b(1, 1), b(1, 1), one(11, "a"))],
    );
    node.step(learn(1, 2, vec![(1, one(11, "a"))]));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![Record::Chosen(1)]);
    assert_eq!(ready.chosen, vec![item(1, one(11, "a"))]);
}

#[test]
fn learning_overrides_a_different_accepted_value() {
    let mut node = restore(
        passive_cfg(2),
        Default::default(),
        vec![accepted(1, b(1, 3), b(1, 3), one(11, "loser"))],
    );
    node.step(learn(1, 2, vec![(1, one(12, "winner"))]));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(InstanceState {
            index: 1,
            promised: b(1, 3),
            accepted: b(1, 3),
            value: Some(one(12, "winner")),
            chosen: true,
        })]
    );
    assert_eq!(ready.chosen, vec![item(1, one(12, "winner"))]);
}

#[test]
fn duplicate_reqid_within_the_window_is_delivered_as_a_noop() {
    let mut node = Node::new(passive_cfg(2)).unwrap();
    node.step(learn(
        1,
        2,
        vec![(1, one(5, "a")), (2, one(5, "a")), (3, one(6, "b"))],
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Instance(learned(1, one(5, "a"))),
            Record::Instance(learned(2, one(5, "a"))),
            Record::Instance(learned(3, one(6, "b"))),
            // Storage keeps what was delivered.
            Record::Instance(learned(2, Value::Noop)),
        ]
    );
    assert_eq!(
        ready.chosen,
        vec![
            item(1, one(5, "a")),
            item(2, Value::Noop),
            item(3, one(6, "b"))
        ]
    );
    assert_eq!(node.status().duplicates_suppressed, 1);
}

#[test]
fn duplicate_reqid_is_recognised_after_a_restart_from_recent_reqids() {
    let mut node = Node::restore(
        passive_cfg(2),
        RecoveredState {
            node: Default::default(),
            chosen_through: 3,
            instances: vec![],
            recent_reqids: vec![(2, 5), (3, 6)],
        },
    )
    .unwrap();
    node.step(learn(1, 2, vec![(4, one(5, "a"))]));
    let ready = node.ready();
    assert_eq!(ready.chosen, vec![item(4, Value::Noop)]);
    assert_eq!(node.status().duplicates_suppressed, 1);
}

#[test]
fn reqid_far_outside_the_window_is_delivered_again() {
    let mut c = passive_cfg(2);
    c.dedup_window = 2;
    let mut node = Node::new(c).unwrap();
    node.step(learn(
        1,
        2,
        vec![
            (1, one(5, "a")),
            (2, one(6, "b")),
            (3, one(7, "c")),
            (4, one(8, "d")),
            (5, one(5, "a")),
        ],
    ));
    let ready = node.ready();
    assert_eq!(ready.chosen[4], item(5, one(5, "a")));
    assert_eq!(node.status().duplicates_suppressed, 0);
}

#[test]
fn follower_behind_asks_the_peer_that_reported_more_for_catch_up() {
    let mut node = Node::new(passive_cfg(2)).unwrap();
    node.step(msg(
        1,
        2,
        Body::Heartbeat {
            ballot: b(1, 1),
            chosen_through: 5,
            max_index: 6,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::HeartbeatAck {
                ballot: b(1, 1),
                chosen_through: 0,
                max_index: 6,
            }
        )]
    );
    node.tick();
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::CatchupRequest {
                from_index: 1,
                to_index: 5,
            }
        )]
    );
    // No second request while the first is outstanding.
    node.tick();
    assert_quiet(&mut node);

    let entries: Vec<(u64, Value)> = (1..=5).map(|i| (i, one(100 + i, "v"))).collect();
    node.step(learn(1, 2, entries.clone()));
    let ready = node.ready();
    assert_eq!(
        ready.chosen,
        entries
            .iter()
            .map(|(i, v)| item(*i, v.clone()))
            .collect::<Vec<_>>()
    );
    // Caught up: no further request.
    assert_eq!(ready.messages_now, vec![]);
    node.tick();
    assert_quiet(&mut node);
}

#[test]
fn catch_up_requests_are_capped_by_catchup_batch_max_and_chained() {
    let mut c = passive_cfg(2);
    c.catchup_batch_max = 2;
    let mut node = Node::new(c).unwrap();
    node.step(msg(
        3,
        2,
        Body::HeartbeatAck {
            ballot: b(1, 2),
            chosen_through: 5,
            max_index: 5,
        },
    ));
    node.tick();
    assert_eq!(
        node.ready().messages_now,
        vec![msg(
            2,
            3,
            Body::CatchupRequest {
                from_index: 1,
                to_index: 2,
            }
        )]
    );
    node.step(learn(3, 2, vec![(1, one(1, "a")), (2, one(2, "b"))]));
    let ready = node.ready();
    assert_eq!(ready.chosen.len(), 2);
    // Still behind: the next range is asked for at once.
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            3,
            Body::CatchupRequest {
                from_index: 3,
                to_index: 4,
            }
        )]
    );
}

#[test]
fn catch_up_without_an_answer_is_retried() {
    let mut node = Node::new(passive_cfg(2)).unwrap();
    node.step(msg(
        1,
        2,
        Body::Heartbeat {
            ballot: b(1, 1),
            chosen_through: 3,
            max_index: 3,
        },
    ));
    node.ready();
    node.tick();
    node.ready();
    // catchup_retry_ticks = 6; the retry may go to any peer.
    for _ in 0..5 {
        node.tick();
        assert_quiet(&mut node);
    }
    node.tick();
    let ready = node.ready();
    assert_eq!(ready.messages_now.len(), 1);
    let retry = &ready.messages_now[0];
    assert!(retry.to == 1 || retry.to == 3, "retry to {}", retry.to);
    assert_eq!(
        retry.body,
        Body::CatchupRequest {
            from_index: 1,
            to_index: 3,
        }
    );
}

#[test]
fn catch_up_request_for_retired_indices_is_served_from_storage() {
    let mut c = passive_cfg(2);
    c.catchup_batch_max = 3;
    let mut node = Node::restore(
        c,
        RecoveredState {
            node: Default::default(),
            chosen_through: 4,
            instances: vec![accepted(5, b(1, 1), b(1, 1), one(5, "open"))],
            recent_reqids: vec![],
        },
    )
    .unwrap();
    node.step(msg(
        3,
        2,
        Body::CatchupRequest {
            from_index: 2,
            to_index: 9,
        },
    ));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(ready.messages_now, vec![]);
    assert_eq!(
        ready.reads,
        vec![ReadRequest {
            to: 3,
            from_index: 2,
            to_index: 4,
        }]
    );
    // A batch that fits below the retired prefix is capped by catchup_batch_max.
    node.step(msg(
        3,
        2,
        Body::CatchupRequest {
            from_index: 1,
            to_index: 9,
        },
    ));
    assert_eq!(
        node.ready().reads,
        vec![ReadRequest {
            to: 3,
            from_index: 1,
            to_index: 3,
        }]
    );
    // Nonsense ranges are ignored.
    node.step(msg(
        3,
        2,
        Body::CatchupRequest {
            from_index: 0,
            to_index: 3,
        },
    ));
    node.step(msg(
        3,
        2,
        Body::CatchupRequest {
            from_index: 4,
            to_index: 3,
        },
    ));
    assert_quiet(&mut node);
}

#[test]
fn live_chosen_entries_above_a_hole_are_served_from_memory() {
    let mut node = restore(
        passive_cfg(2),
        Default::default(),
        vec![
            chosen(2, b(1, 1), one(2, "b")),
            chosen(3, b(1, 1), one(3, "c")),
        ],
    );
    node.step(msg(
        3,
        2,
        Body::CatchupRequest {
            from_index: 2,
            to_index: 4,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        ready.messages_now,
        vec![learn(2, 3, vec![(2, one(2, "b")), (3, one(3, "c"))])]
    );
    assert_eq!(ready.reads, vec![]);
}

#[test]
fn compacted_answer_is_reported_in_status() {
    let mut node = Node::new(passive_cfg(2)).unwrap();
    node.step(msg(1, 2, Body::Compacted { first_index: 10 }));
    assert_eq!(node.status().catchup_compacted_below, Some(10));
    assert_quiet(&mut node);
}

#[test]
fn heartbeat_chosen_through_marks_only_values_accepted_at_the_leader_ballot() {
    let mut node = restore(
        passive_cfg(2),
        Default::default(),
        vec![
            accepted(1, b(2, 1), b(2, 1), one(1, "a")),
            accepted(2, b(1, 3), b(1, 3), one(2, "stale")),
            accepted(3, b(2, 1), b(2, 1), one(3, "c")),
        ],
    );
    node.step(msg(
        1,
        2,
        Body::Heartbeat {
            ballot: b(2, 1),
            chosen_through: 3,
            max_index: 3,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Chosen(1), Record::Chosen(3)]
    );
    assert_eq!(ready.chosen, vec![item(1, one(1, "a"))]);
    assert_eq!(node.status().instances, 2);
    // Index 2 is fetched.
    node.tick();
    assert_eq!(
        node.ready().messages_now,
        vec![msg(
            2,
            1,
            Body::CatchupRequest {
                from_index: 2,
                to_index: 3,
            }
        )]
    );
}
