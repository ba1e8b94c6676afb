//! Proposer rules: the single-index (leaderless) Paxos run, proposal
//! outcomes, forwarding to the leader, and the errors `propose` returns.

mod common;

use common::*;
use spaxos_core::{
    Ballot, Body, ChosenItem, CoreConfig, Node, NodeState, Outcome, ProposeError, Record, Value,
};

/// Node 1 of {1, 2, 3} without a leader: it runs a queued proposal
/// leaderless after 5 ticks. Restored with max_round 4, so its first ballot
/// is 5.1.
fn leaderless_cfg(retry_lost: bool) -> CoreConfig {
    let mut c = passive_cfg(1);
    c.leaderless_delay_ticks = 5;
    c.retry_lost = retry_lost;
    c
}

fn leaderless_node(retry_lost: bool) -> Node {
    restore(
        leaderless_cfg(retry_lost),
        node_state(4, Ballot::ZERO),
        vec![],
    )
}

fn prepare(to: u64, ballot: Ballot, index: u64) -> spaxos_core::Message {
    msg(1, to, Body::Prepare { ballot, index })
}

fn promise(
    from: u64,
    ballot: Ballot,
    accepted: Ballot,
    value: Option<Value>,
) -> spaxos_core::Message {
    msg(
        from,
        1,
        Body::Promise {
            ballot,
            index: 1,
            accepted,
            value,
        },
    )
}

/// Proposes reqid 7 and ticks until the leaderless attempt at index 1
/// starts; checks that start exactly.
fn start_leaderless(node: &mut Node) {
    node.propose(one(7, "mine")).unwrap();
    for _ in 0..4 {
        node.tick();
        assert_quiet(node);
    }
    node.tick();
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(5, Ballot::ZERO))]
    );
    assert_eq!(
        ready.messages,
        vec![
            prepare(1, b(5, 1), 1),
            prepare(2, b(5, 1), 1),
            prepare(3, b(5, 1), 1)
        ]
    );
    assert_eq!(ready.messages_now, vec![]);
    assert_eq!(node.pending_proposal(7), Some((Some(1), false)));
}

#[test]
fn leaderless_proposer_adopts_the_highest_accepted_value_of_its_quorum() {
    let mut node = leaderless_node(false);
    start_leaderless(&mut node);
    // The higher-ballot value arrives first; a later, lower one must not
    // replace it.
    node.step(promise(3, b(5, 1), b(4, 3), Some(one(8, "theirs"))));
    assert_quiet(&mut node);
    node.step(promise(2, b(5, 1), b(2, 2), Some(one(9, "older"))));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    let accept = Body::Accept {
        ballot: b(5, 1),
        entries: vec![(1, one(8, "theirs"))].into(),
        chosen_through: 0,
    };
    // The accept to itself waits for durability like any vote; the others go now.
    assert_eq!(ready.messages, vec![msg(1, 1, accept.clone())]);
    assert_eq!(
        ready.messages_now,
        vec![msg(1, 2, accept.clone()), msg(1, 3, accept)]
    );
}

#[test]
fn leaderless_proposer_proposes_its_own_value_when_nothing_was_accepted() {
    let mut node = leaderless_node(false);
    start_leaderless(&mut node);
    node.step(promise(2, b(5, 1), Ballot::ZERO, None));
    // A duplicate promise is not a second vote.
    node.step(promise(2, b(5, 1), Ballot::ZERO, None));
    // Nor is a promise for another ballot.
    node.step(promise(3, b(4, 1), Ballot::ZERO, None));
    assert_quiet(&mut node);
    node.step(promise(3, b(5, 1), Ballot::ZERO, None));
    let ready = node.ready();
    let accept = Body::Accept {
        ballot: b(5, 1),
        entries: vec![(1, one(7, "mine"))].into(),
        chosen_through: 0,
    };
    assert_eq!(ready.messages, vec![msg(1, 1, accept.clone())]);
    assert_eq!(
        ready.messages_now,
        vec![msg(1, 2, accept.clone()), msg(1, 3, accept)]
    );
}

/// Runs the attempt at index 1 to the point where another value (reqid 8)
/// is chosen there, and returns the Ready of that step.
fn lose_index_one(node: &mut Node) -> spaxos_core::Ready {
    start_leaderless(node);
    node.step(promise(3, b(5, 1), b(4, 3), Some(one(8, "theirs"))));
    node.step(promise(2, b(5, 1), Ballot::ZERO, None));
    let ready = node.ready();
    // Its own acceptor takes the accept once the batch is durable.
    deliver_to(node, &ready.messages);
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(accepted(
            1,
            b(5, 1),
            b(5, 1),
            one(8, "theirs")
        ))]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            1,
            1,
            Body::Accepted {
                ballot: b(5, 1),
                indices: vec![1],
            }
        )]
    );
    deliver_to(node, &ready.messages);
    assert_quiet(node);
    node.step(msg(
        2,
        1,
        Body::Accepted {
            ballot: b(5, 1),
            indices: vec![1],
        },
    ));
    node.ready()
}

#[test]
fn leaderless_proposer_reports_lost_when_another_value_is_chosen() {
    let mut node = leaderless_node(false);
    let ready = lose_index_one(&mut node);
    assert_eq!(Record::per_index(&ready.records), vec![Record::Chosen(1)]);
    let learn = Body::Learn {
        entries: vec![(1, one(8, "theirs"))],
    };
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(1, 2, learn.clone()), msg(1, 3, learn)]
    );
    assert_eq!(
        ready.chosen,
        vec![ChosenItem {
            index: 1,
            value: one(8, "theirs"),
        }]
    );
    assert_eq!(ready.outcomes, vec![(7, Outcome::Lost { index: 1 })]);
    assert_eq!(node.pending_proposal(7), None);
    // Reported once: a late vote or learn changes nothing.
    node.step(msg(
        3,
        1,
        Body::Accepted {
            ballot: b(5, 1),
            indices: vec![1],
        },
    ));
    node.step(msg(
        3,
        1,
        Body::Learn {
            entries: vec![(1, one(8, "theirs"))],
        },
    ));
    assert_quiet(&mut node);
}

#[test]
fn leaderless_proposer_retries_a_lost_proposal_on_a_fresh_index() {
    let mut node = leaderless_node(true);
    let ready = lose_index_one(&mut node);
    assert_eq!(ready.outcomes, vec![]);
    assert_eq!(node.pending_proposal(7), Some((None, false)));
    node.tick();
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(6, Ballot::ZERO))]
    );
    assert_eq!(
        ready.messages,
        vec![
            prepare(1, b(6, 1), 2),
            prepare(2, b(6, 1), 2),
            prepare(3, b(6, 1), 2)
        ]
    );
    assert_eq!(node.pending_proposal(7), Some((Some(2), false)));
}

#[test]
fn leaderless_proposer_wins_and_reports_chosen() {
    let mut node = leaderless_node(false);
    start_leaderless(&mut node);
    node.step(promise(2, b(5, 1), Ballot::ZERO, None));
    node.step(promise(3, b(5, 1), Ballot::ZERO, None));
    node.ready();
    for from in [2, 3] {
        node.step(msg(
            from,
            1,
            Body::Accepted {
                ballot: b(5, 1),
                indices: vec![1],
            },
        ));
    }
    let ready = node.ready();
    // Its own acceptor never accepted (its accept was not delivered): the
    // chosen value is written whole.
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(learned(1, one(7, "mine")))]
    );
    let learn = Body::Learn {
        entries: vec![(1, one(7, "mine"))],
    };
    assert_eq!(
        ready.messages_now,
        vec![msg(1, 2, learn.clone()), msg(1, 3, learn)]
    );
    assert_eq!(ready.outcomes, vec![(7, Outcome::Chosen { index: 1 })]);
}

#[test]
fn rejected_leaderless_proposer_backs_off_then_retries_above_the_rejecting_round() {
    let mut node = leaderless_node(false);
    start_leaderless(&mut node);
    node.step(msg(
        2,
        1,
        Body::Reject {
            ballot: b(5, 1),
            promised: b(9, 3),
            index: 1,
        },
    ));
    assert_quiet(&mut node);
    // Backoff is retry_backoff_ticks + rand(0..2 * retry_backoff_ticks).
    let mut waited = 0;
    let ready = loop {
        node.tick();
        waited += 1;
        let ready = node.ready();
        if !ready.is_empty() {
            break ready;
        }
        assert!(waited < 9, "no retry within the backoff bound");
    };
    assert!(
        waited >= 3,
        "retried after {waited} ticks, before the backoff"
    );
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(10, Ballot::ZERO))]
    );
    assert_eq!(
        ready.messages,
        vec![
            prepare(1, b(10, 1), 1),
            prepare(2, b(10, 1), 1),
            prepare(3, b(10, 1), 1)
        ]
    );
    // Promises for the abandoned ballot no longer count.
    node.step(promise(2, b(5, 1), Ballot::ZERO, None));
    node.step(promise(3, b(5, 1), Ballot::ZERO, None));
    assert_quiet(&mut node);
}

/// Node 2 without a leader (leaderless after 3 ticks, holes filled after
/// 5): index 2 was accepted, index 1 is a hole; both exist from tick 0.
fn node_with_a_hole() -> Node {
    let mut c = passive_cfg(2);
    c.leaderless_delay_ticks = 3;
    c.noop_timeout_ticks = 5;
    restore(
        c,
        NodeState::default(),
        vec![accepted(2, b(1, 1), b(1, 1), one(5, "x"))],
    )
}

#[test]
fn hole_below_max_index_is_filled_with_a_noop_after_the_timeout() {
    let mut node = node_with_a_hole();
    let mut ticks = 0;
    let ready = loop {
        node.tick();
        ticks += 1;
        let ready = node.ready();
        if !ready.is_empty() {
            break ready;
        }
        assert!(ticks < 50);
    };
    // The first scan runs when the leaderless delay (3) ends, when the hole
    // is not yet `noop_timeout_ticks` old; the next scan, 5 ticks later, fills.
    assert_eq!(ticks, 8);
    // Both live, unchosen indices get a single-index no-op attempt (index 2
    // adopts "x" if a quorum reports it).
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Node(node_state(2, Ballot::ZERO)),
            Record::Node(node_state(3, Ballot::ZERO)),
        ]
    );
    let prepares: Vec<_> = [(b(2, 2), 1), (b(3, 2), 2)]
        .into_iter()
        .flat_map(|(ballot, index)| [1, 2, 3].map(|to| msg(2, to, Body::Prepare { ballot, index })))
        .collect();
    assert_eq!(ready.messages, prepares);
}

/// Each hole waits its own timeout from when its index was first heard of:
/// indices created later are filled a scan later.
#[test]
fn holes_created_later_wait_their_own_timeout() {
    let mut node = node_with_a_hole();
    let prepared = |ready: &spaxos_core::Ready| -> Vec<u64> {
        let mut indices: Vec<u64> = ready
            .messages
            .iter()
            .filter_map(|m| match m.body {
                Body::Prepare { index, .. } => Some(index),
                _ => None,
            })
            .collect();
        indices.sort_unstable();
        indices.dedup();
        indices
    };
    let mut first_prepared = std::collections::BTreeMap::new();
    for tick in 1..=20u64 {
        node.tick();
        if tick == 6 {
            // A single-index prepare for index 4 creates indices 3 and 4 now.
            node.step(msg(
                3,
                2,
                Body::Prepare {
                    ballot: b(1, 3),
                    index: 4,
                },
            ));
        }
        let ready = node.ready();
        for index in prepared(&ready) {
            first_prepared.entry(index).or_insert(tick);
        }
    }
    // Scans run at ticks 3, 8, 13, ...: indices from tick 0 are old enough
    // at 8, those from tick 6 only at 13 (6 + 5 = 11 > 8).
    assert_eq!(first_prepared.get(&1), Some(&8));
    assert_eq!(first_prepared.get(&2), Some(&8));
    assert_eq!(first_prepared.get(&3), Some(&13));
    assert_eq!(first_prepared.get(&4), Some(&13));
}

#[test]
fn follower_forwards_proposals_to_the_known_leader() {
    let mut follower = Node::new(passive_cfg(2)).unwrap();
    follower.step(msg(
        1,
        2,
        Body::Heartbeat {
            ballot: b(1, 1),
            chosen_through: 0,
            max_index: 0,
        },
    ));
    let ready = follower.ready();
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::HeartbeatAck {
                ballot: b(1, 1),
                chosen_through: 0,
                max_index: 0,
            }
        )]
    );
    follower.propose(one(5, "five")).unwrap();
    follower.propose(one(6, "six")).unwrap();
    let ready = follower.ready();
    // Forwarding promises nothing durable: it may leave at once, batched.
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::Forward {
                values: vec![one(5, "five"), one(6, "six")],
            }
        )]
    );
    assert_eq!(follower.pending_proposal(5), Some((None, true)));

    // The leader side.
    let mut leader = Node::new(cfg(1)).unwrap();
    let ballot = elect(&mut leader, 3);
    assert_eq!(ballot, b(1, 1));
    leader.step(ready.messages_now[0].clone());
    let lready = leader.ready();
    // The leader's accepts of one round share a record.
    assert_eq!(
        lready.records,
        vec![Record::Accepted {
            ballot,
            entries: vec![(1, one(5, "five")), (2, one(6, "six"))].into(),
        }]
    );
    assert_eq!(
        Record::per_index(&lready.records),
        vec![
            Record::Instance(accepted(1, ballot, ballot, one(5, "five"))),
            Record::Instance(accepted(2, ballot, ballot, one(6, "six"))),
        ]
    );
    assert_eq!(
        lready.messages,
        vec![msg(
            1,
            1,
            Body::Accepted {
                ballot,
                indices: vec![1, 2],
            }
        )]
    );
    let accept = Body::Accept {
        ballot,
        entries: vec![(1, one(5, "five")), (2, one(6, "six"))].into(),
        chosen_through: 0,
    };
    let ack = Body::ForwardAck {
        assigned: vec![(5, 1), (6, 2)],
    };
    assert_eq!(
        lready.messages_now,
        vec![msg(1, 2, accept.clone()), msg(1, 3, accept), msg(1, 2, ack)]
    );

    // The origin learns where its proposals are.
    deliver_to(&mut follower, &lready.messages_now);
    assert_eq!(follower.pending_proposal(5), Some((Some(1), true)));
    assert_eq!(follower.pending_proposal(6), Some((Some(2), true)));
}

#[test]
fn retried_forward_of_the_same_reqid_gets_the_same_index() {
    let mut leader = Node::new(cfg(1)).unwrap();
    let ballot = elect(&mut leader, 3);
    let forward = msg(
        2,
        1,
        Body::Forward {
            values: vec![one(5, "five")],
        },
    );
    leader.step(forward.clone());
    let first = leader.ready();
    assert_eq!(
        Record::per_index(&first.records),
        vec![Record::Instance(accepted(
            1,
            ballot,
            ballot,
            one(5, "five")
        ))]
    );
    leader.step(forward);
    let again = leader.ready();
    assert_eq!(Record::per_index(&again.records), vec![]);
    assert_eq!(again.messages, vec![]);
    assert_eq!(
        again.messages_now,
        vec![msg(
            1,
            2,
            Body::ForwardAck {
                assigned: vec![(5, 1)],
            }
        )]
    );
    assert_eq!(leader.status().max_index, 1);
}

#[test]
fn forward_of_a_recently_chosen_reqid_is_answered_with_its_index() {
    let mut leader = Node::new(cfg(1)).unwrap();
    let ballot = elect(&mut leader, 3);
    leader.step(msg(
        2,
        1,
        Body::Forward {
            values: vec![one(5, "five")],
        },
    ));
    leader.ready();
    for from in [1, 3] {
        leader.step(msg(
            from,
            1,
            Body::Accepted {
                ballot,
                indices: vec![1],
            },
        ));
    }
    assert_eq!(leader.ready().chosen.len(), 1);
    leader.step(msg(
        2,
        1,
        Body::Forward {
            values: vec![one(5, "five")],
        },
    ));
    let ready = leader.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            1,
            2,
            Body::ForwardAck {
                assigned: vec![(5, 1)],
            }
        )]
    );
}

#[test]
fn follower_ignores_forwards_and_unanswered_forwards_are_retried() {
    let mut follower = Node::new(passive_cfg(2)).unwrap();
    follower.step(msg(
        3,
        2,
        Body::Forward {
            values: vec![one(9, "nine")],
        },
    ));
    assert_quiet(&mut follower);
    follower.step(msg(
        1,
        2,
        Body::Heartbeat {
            ballot: b(1, 1),
            chosen_through: 0,
            max_index: 0,
        },
    ));
    follower.ready();
    follower.propose(one(5, "five")).unwrap();
    let forward = msg(
        2,
        1,
        Body::Forward {
            values: vec![one(5, "five")],
        },
    );
    assert_eq!(follower.ready().messages_now, vec![forward.clone()]);
    // forward_retry_ticks = 8.
    for _ in 0..7 {
        follower.tick();
        assert_quiet(&mut follower);
    }
    follower.tick();
    let ready = follower.ready();
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages_now, vec![forward]);
}

#[test]
fn propose_errors_are_values_and_emit_nothing() {
    let mut c = passive_cfg(1);
    c.value_bytes_max = 4;
    c.proposal_queue_max = 2;
    let mut node = Node::new(c).unwrap();
    assert_eq!(node.propose(one(0, "a")), Err(ProposeError::ZeroReqId));
    assert_eq!(node.propose(Value::Noop), Err(ProposeError::Noop));
    assert_eq!(
        node.propose(one(1, "12345")),
        Err(ProposeError::TooLarge { size: 5, max: 4 })
    );
    assert_eq!(
        node.propose(Value::Many {
            reqid: 1,
            values: vec!["12".into(), "345".into()].into(),
        }),
        Err(ProposeError::TooLarge { size: 5, max: 4 })
    );
    assert_eq!(node.propose(one(1, "1234")), Ok(()));
    assert_eq!(node.propose(one(1, "1")), Err(ProposeError::Duplicate(1)));
    assert_eq!(node.propose(one(2, "2")), Ok(()));
    assert_eq!(node.propose(one(3, "3")), Err(ProposeError::Busy(2)));
    assert_eq!(node.status().pending, 2);
    // Without a leader the accepted proposals wait; nothing was sent.
    assert_quiet(&mut node);
}

#[test]
fn leader_proposals_get_consecutive_indices_in_one_accept_batch() {
    let mut leader = Node::new(cfg(1)).unwrap();
    let ballot = elect(&mut leader, 2);
    leader.propose(one(5, "a")).unwrap();
    leader
        .propose(Value::Many {
            reqid: 6,
            values: vec!["b".into(), "c".into()].into(),
        })
        .unwrap();
    let ready = leader.ready();
    let many = Value::Many {
        reqid: 6,
        values: vec!["b".into(), "c".into()].into(),
    };
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Instance(accepted(1, ballot, ballot, one(5, "a"))),
            Record::Instance(accepted(2, ballot, ballot, many.clone())),
        ]
    );
    let accept = Body::Accept {
        ballot,
        entries: vec![(1, one(5, "a")), (2, many)].into(),
        chosen_through: 0,
    };
    assert_eq!(
        ready.messages_now,
        vec![msg(1, 2, accept.clone()), msg(1, 3, accept)]
    );
}

#[test]
fn leader_keeps_at_most_inflight_max_instances_and_queues_the_rest() {
    let mut c = cfg(1);
    c.inflight_max = 2;
    let mut leader = Node::new(c).unwrap();
    let ballot = elect(&mut leader, 2);
    for reqid in 1..=3 {
        leader.propose(one(reqid, "v")).unwrap();
    }
    let ready = leader.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Instance(accepted(1, ballot, ballot, one(1, "v"))),
            Record::Instance(accepted(2, ballot, ballot, one(2, "v"))),
        ]
    );
    assert_eq!(leader.pending_proposal(3), Some((None, false)));
    for from in [1, 2] {
        leader.step(msg(
            from,
            1,
            Body::Accepted {
                ballot,
                indices: vec![1],
            },
        ));
    }
    // Index 1 retires, which frees a slot for reqid 3 in the same step.
    let ready = leader.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Chosen(1),
            Record::Instance(accepted(3, ballot, ballot, one(3, "v"))),
        ]
    );
    assert_eq!(leader.pending_proposal(3), Some((Some(3), false)));
}

#[test]
fn propose_batch_is_propose_for_each_value_in_order() {
    let setup = || {
        let mut c = passive_cfg(2);
        c.value_bytes_max = 4;
        let mut node = Node::new(c).unwrap();
        // Reqid 5 is already in the log: its proposal is answered at once.
        node.step(msg(
            1,
            2,
            Body::Learn {
                entries: vec![(1, one(5, "a"))],
            },
        ));
        node.ready();
        node
    };
    let values = vec![
        one(7, "x"),
        one(7, "y"),
        one(0, "z"),
        one(5, "a"),
        one(8, "12345"),
        Value::Noop,
        one(9, "w"),
    ];
    let mut single = setup();
    let expected: Vec<_> = values.iter().map(|v| single.propose(v.clone())).collect();
    let mut batched = setup();
    assert_eq!(batched.propose_batch(values), expected);
    assert_eq!(
        expected,
        vec![
            Ok(()),
            Err(ProposeError::Duplicate(7)),
            Err(ProposeError::ZeroReqId),
            Ok(()),
            Err(ProposeError::TooLarge { size: 5, max: 4 }),
            Err(ProposeError::Noop),
            Ok(()),
        ]
    );
    let (a, b) = (single.ready(), batched.ready());
    assert_eq!(a.outcomes, vec![(5, Outcome::Chosen { index: 1 })]);
    assert_eq!(a.outcomes, b.outcomes);
    assert_eq!(a.records, b.records);
    assert_eq!(a.messages, b.messages);
    assert_eq!(a.messages_now, b.messages_now);
    assert_eq!(single.status(), batched.status());
}
