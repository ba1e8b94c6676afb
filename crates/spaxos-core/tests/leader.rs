//! Leader rules: election (phase 1 over every index), recovery of in-flight
//! indices from the promise quorum, phase 2 vote counting, stepping down,
//! heartbeats. Node 1 of {1, 2, 3} is the candidate / leader.

mod common;

use common::*;
use spaxos_core::{
    Ballot, Body, ChosenItem, Node, NodeState, Outcome, PromiseEntry, Record, Role, Value,
};

fn prepare_range(from: u64, to: u64, ballot: Ballot, from_index: u64) -> spaxos_core::Message {
    msg(from, to, Body::PrepareRange { ballot, from_index })
}

#[test]
fn election_timeout_persists_max_round_then_prepares_every_member() {
    let mut node = Node::new(cfg(1)).unwrap();
    for _ in 0..9 {
        node.tick();
        assert_quiet(&mut node);
    }
    node.tick();
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(1, Ballot::ZERO))]
    );
    // Including the prepare to itself, all after `max_round` is durable.
    assert_eq!(
        ready.messages,
        vec![
            prepare_range(1, 1, b(1, 1), 1),
            prepare_range(1, 2, b(1, 1), 1),
            prepare_range(1, 3, b(1, 1), 1),
        ]
    );
    assert_eq!(ready.messages_now, vec![]);
    assert_eq!(node.status().role, Role::Candidate);
}

#[test]
fn own_prepare_range_goes_through_the_acceptor_rules() {
    let mut node = Node::new(cfg(1)).unwrap();
    let ready = tick_until_election(&mut node, 20);
    deliver_to(&mut node, &ready.messages);
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(1, b(1, 1)))]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            1,
            1,
            Body::PromiseRange {
                ballot: b(1, 1),
                from_index: 1,
                chosen_through: 0,
                entries: vec![],
            }
        )]
    );
    assert_eq!(ready.messages_now, vec![]);
}

#[test]
fn ballots_are_never_reused_after_restore() {
    let mut node = restore(cfg(1), node_state(7, Ballot::ZERO), vec![]);
    let ready = tick_until_election(&mut node, 20);
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(8, Ballot::ZERO))]
    );
    assert_eq!(
        ready.messages,
        vec![
            prepare_range(1, 1, b(8, 1), 1),
            prepare_range(1, 2, b(8, 1), 1),
            prepare_range(1, 3, b(8, 1), 1),
        ]
    );
}

#[test]
fn next_ballot_is_above_a_restored_promise_and_accepted_ballots() {
    // The node promised 9.3 and holds a per-index promise at 12.2.
    let mut node = restore(
        cfg(1),
        node_state(2, b(9, 3)),
        vec![accepted(1, b(12, 2), b(4, 2), one(5, "x"))],
    );
    let ready = tick_until_election(&mut node, 20);
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(13, b(9, 3)))]
    );
    assert_eq!(ready.messages[0], prepare_range(1, 1, b(13, 1), 1));
}

#[test]
fn a_rejected_candidate_campaigns_next_above_the_rejecting_round() {
    let mut node = Node::new(cfg(1)).unwrap();
    tick_until_election(&mut node, 20);
    node.step(msg(
        2,
        1,
        Body::Reject {
            ballot: b(1, 1),
            promised: b(6, 3),
            index: 0,
        },
    ));
    assert_eq!(node.status().role, Role::Follower);
    assert_quiet(&mut node);
    let ready = tick_until_election(&mut node, 20);
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(7, Ballot::ZERO))]
    );
    assert_eq!(ready.messages[1], prepare_range(1, 2, b(7, 1), 1));
}

/// Node 1 restored with max_round 5 (so it campaigns at 6.1) and accepted
/// values at 1 and 3; node 2 reports other values at 1 and 4.
fn recovering_candidate() -> Node {
    restore(
        cfg(1),
        node_state(5, Ballot::ZERO),
        vec![
            accepted(1, b(2, 2), b(2, 2), one(101, "A")),
            accepted(3, b(1, 3), b(1, 3), one(103, "C")),
        ],
    )
}

#[test]
fn phase_one_quorum_recovers_highest_accepted_values_and_noops_holes() {
    let mut node = recovering_candidate();
    let ready = tick_until_election(&mut node, 20);
    assert_eq!(ready.messages[0], prepare_range(1, 1, b(6, 1), 1));
    deliver_to(&mut node, &ready.messages);
    let ready = node.ready();
    // Its own promise reports its accepted values.
    assert_eq!(
        ready.messages,
        vec![msg(
            1,
            1,
            Body::PromiseRange {
                ballot: b(6, 1),
                from_index: 1,
                chosen_through: 0,
                entries: vec![
                    PromiseEntry {
                        index: 1,
                        accepted: b(2, 2),
                        value: one(101, "A"),
                        chosen: false,
                    },
                    PromiseEntry {
                        index: 3,
                        accepted: b(1, 3),
                        value: one(103, "C"),
                        chosen: false,
                    },
                ],
            }
        )]
    );
    deliver_to(&mut node, &ready.messages);
    assert!(!node.is_leader());
    assert_quiet(&mut node);
    node.step(msg(
        2,
        1,
        Body::PromiseRange {
            ballot: b(6, 1),
            from_index: 1,
            chosen_through: 0,
            entries: vec![
                // Higher than node 1's 2.2 at index 1: wins.
                PromiseEntry {
                    index: 1,
                    accepted: b(3, 3),
                    value: one(201, "B"),
                    chosen: false,
                },
                PromiseEntry {
                    index: 4,
                    accepted: b(2, 2),
                    value: one(204, "D"),
                    chosen: false,
                },
            ],
        },
    ));
    assert!(node.is_leader());
    let ready = node.ready();
    let recovered = vec![
        (1, one(201, "B")),
        (2, Value::Noop),
        (3, one(103, "C")),
        (4, one(204, "D")),
    ];
    assert_eq!(
        Record::per_index(&ready.records),
        recovered
            .iter()
            .map(|(i, v)| Record::Instance(accepted(*i, b(6, 1), b(6, 1), v.clone())))
            .collect::<Vec<_>>()
    );
    // The local acceptor's vote leaves only after those records are durable.
    assert_eq!(
        ready.messages,
        vec![msg(
            1,
            1,
            Body::Accepted {
                ballot: b(6, 1),
                indices: vec![1, 2, 3, 4],
            }
        )]
    );
    let heartbeat = Body::Heartbeat {
        ballot: b(6, 1),
        chosen_through: 0,
        max_index: 4,
    };
    let accept = Body::Accept {
        ballot: b(6, 1),
        entries: recovered.into(),
        chosen_through: 0,
    };
    assert_eq!(
        ready.messages_now,
        vec![
            msg(1, 2, heartbeat.clone()),
            msg(1, 3, heartbeat),
            msg(1, 2, accept.clone()),
            msg(1, 3, accept),
        ]
    );
    // A promise arriving after the win changes nothing.
    node.step(msg(
        3,
        1,
        Body::PromiseRange {
            ballot: b(6, 1),
            from_index: 1,
            chosen_through: 0,
            entries: vec![PromiseEntry {
                index: 9,
                accepted: b(5, 3),
                value: one(309, "Z"),
                chosen: false,
            }],
        },
    ));
    assert_quiet(&mut node);

    // New proposals go above the recovered range.
    node.propose(one(77, "new")).unwrap();
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(accepted(
            5,
            b(6, 1),
            b(6, 1),
            one(77, "new")
        ))]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            1,
            1,
            Body::Accepted {
                ballot: b(6, 1),
                indices: vec![5],
            }
        )]
    );
    let accept = Body::Accept {
        ballot: b(6, 1),
        entries: vec![(5, one(77, "new"))].into(),
        chosen_through: 0,
    };
    assert_eq!(
        ready.messages_now,
        vec![msg(1, 2, accept.clone()), msg(1, 3, accept)]
    );
    assert_eq!(node.pending_proposal(77), Some((Some(5), false)));
}

#[test]
fn chosen_entry_reported_in_a_promise_is_learned_not_re_proposed() {
    let mut node = restore(cfg(1), node_state(5, Ballot::ZERO), vec![]);
    let ready = tick_until_election(&mut node, 20);
    deliver_to(&mut node, &ready.messages);
    let ready = node.ready();
    deliver_to(&mut node, &ready.messages);
    node.ready();
    node.step(msg(
        2,
        1,
        Body::PromiseRange {
            ballot: b(6, 1),
            from_index: 1,
            chosen_through: 0,
            entries: vec![
                PromiseEntry {
                    index: 1,
                    accepted: b(2, 2),
                    value: one(11, "chosen"),
                    chosen: true,
                },
                PromiseEntry {
                    index: 2,
                    accepted: b(3, 3),
                    value: one(12, "open"),
                    chosen: false,
                },
            ],
        },
    ));
    assert!(node.is_leader());
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![
            Record::Instance(learned(1, one(11, "chosen"))),
            Record::Instance(accepted(2, b(6, 1), b(6, 1), one(12, "open"))),
        ]
    );
    assert_eq!(
        ready.chosen,
        vec![ChosenItem {
            index: 1,
            value: one(11, "chosen"),
        }]
    );
    let accept = Body::Accept {
        ballot: b(6, 1),
        entries: vec![(2, one(12, "open"))].into(),
        chosen_through: 1,
    };
    let heartbeat = Body::Heartbeat {
        ballot: b(6, 1),
        chosen_through: 0,
        max_index: 2,
    };
    assert_eq!(
        ready.messages_now,
        vec![
            msg(1, 2, heartbeat.clone()),
            msg(1, 3, heartbeat),
            msg(1, 2, accept.clone()),
            msg(1, 3, accept),
        ]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            1,
            1,
            Body::Accepted {
                ballot: b(6, 1),
                indices: vec![2],
            }
        )]
    );
    assert_eq!(node.status().instances, 1);
}

#[test]
fn duplicate_promise_range_is_not_counted_twice() {
    let mut node = Node::new(cfg(1)).unwrap();
    let ready = tick_until_election(&mut node, 20);
    assert_eq!(ready.messages[0], prepare_range(1, 1, b(1, 1), 1));
    let promise = msg(
        2,
        1,
        Body::PromiseRange {
            ballot: b(1, 1),
            from_index: 1,
            chosen_through: 0,
            entries: vec![],
        },
    );
    node.step(promise.clone());
    node.step(promise);
    assert_eq!(node.status().role, Role::Candidate);
    assert_quiet(&mut node);
    node.step(msg(
        3,
        1,
        Body::PromiseRange {
            ballot: b(1, 1),
            from_index: 1,
            chosen_through: 0,
            entries: vec![],
        },
    ));
    assert!(node.is_leader());
}

#[test]
fn promise_range_for_another_ballot_is_ignored() {
    let mut node = Node::new(cfg(1)).unwrap();
    tick_until_election(&mut node, 20);
    for ballot in [b(0, 1), b(2, 1), b(1, 2)] {
        for from in [2, 3] {
            node.step(msg(
                from,
                1,
                Body::PromiseRange {
                    ballot,
                    from_index: 1,
                    chosen_through: 0,
                    entries: vec![],
                },
            ));
        }
    }
    assert_eq!(node.status().role, Role::Candidate);
    assert_quiet(&mut node);
}

/// A leader at 1.1 with one proposal (reqid 7) at index 1 in flight.
fn leader_with_one_proposal() -> Node {
    let mut node = Node::new(cfg(1)).unwrap();
    assert_eq!(elect(&mut node, 2), b(1, 1));
    node.propose(one(7, "seven")).unwrap();
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(accepted(
            1,
            b(1, 1),
            b(1, 1),
            one(7, "seven")
        ))]
    );
    node
}

fn accepted_msg(from: u64, ballot: Ballot, indices: Vec<u64>) -> spaxos_core::Message {
    msg(from, 1, Body::Accepted { ballot, indices })
}

#[test]
fn stale_accepted_with_another_ballot_is_ignored() {
    let mut node = leader_with_one_proposal();
    node.step(accepted_msg(2, b(0, 2), vec![1]));
    node.step(accepted_msg(3, b(2, 3), vec![1]));
    node.step(accepted_msg(2, b(1, 2), vec![1]));
    assert_quiet(&mut node);
    assert_eq!(node.instance_state(1).map(|s| s.chosen), Some(false));
    // One real vote from a peer is no quorum yet; the leader's own makes one.
    node.step(accepted_msg(2, b(1, 1), vec![1]));
    assert_quiet(&mut node);
    node.step(accepted_msg(1, b(1, 1), vec![1]));
    assert_eq!(node.ready().records, vec![Record::Chosen(1)]);
}

#[test]
fn duplicate_accepted_is_not_counted_twice() {
    let mut node = leader_with_one_proposal();
    node.step(accepted_msg(2, b(1, 1), vec![1]));
    node.step(accepted_msg(2, b(1, 1), vec![1, 1]));
    assert_quiet(&mut node);
    assert_eq!(node.instance_state(1).map(|s| s.chosen), Some(false));
    node.step(accepted_msg(3, b(1, 1), vec![1]));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![Record::Chosen(1)]);
    assert_eq!(
        ready.chosen,
        vec![ChosenItem {
            index: 1,
            value: one(7, "seven"),
        }]
    );
    assert_eq!(ready.outcomes, vec![(7, Outcome::Chosen { index: 1 })]);
}

#[test]
fn quorum_of_accepted_chooses_and_reports_the_outcome_once() {
    let mut node = leader_with_one_proposal();
    // The leader's own vote (after its record is durable) and one peer's.
    node.step(accepted_msg(1, b(1, 1), vec![1]));
    assert_quiet(&mut node);
    node.step(accepted_msg(2, b(1, 1), vec![1]));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![Record::Chosen(1)]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(ready.messages_now, vec![]);
    assert_eq!(
        ready.chosen,
        vec![ChosenItem {
            index: 1,
            value: one(7, "seven"),
        }]
    );
    assert_eq!(ready.outcomes, vec![(7, Outcome::Chosen { index: 1 })]);
    assert_eq!(node.pending_proposal(7), None);
    // A late vote changes nothing and reports nothing again.
    node.step(accepted_msg(3, b(1, 1), vec![1]));
    assert_quiet(&mut node);
    // Proposing the same reqid again is answered from the dedup window.
    node.propose(one(7, "seven")).unwrap();
    let ready = node.ready();
    assert_eq!(ready.outcomes, vec![(7, Outcome::Chosen { index: 1 })]);
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages_now, vec![]);
}

#[test]
fn chosen_instances_retire_from_memory() {
    let mut node = leader_with_one_proposal();
    node.propose(one(8, "eight")).unwrap();
    node.ready();
    assert_eq!(node.status().instances, 2);
    node.step(accepted_msg(1, b(1, 1), vec![1, 2]));
    node.step(accepted_msg(2, b(1, 1), vec![2]));
    // Index 2 is chosen but waits behind index 1: still in memory.
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![Record::Chosen(2)]);
    assert_eq!(ready.chosen, vec![]);
    assert_eq!(node.status().instances, 2);
    assert_eq!(node.chosen_through(), 0);
    node.step(accepted_msg(3, b(1, 1), vec![1]));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![Record::Chosen(1)]);
    assert_eq!(
        ready.chosen,
        vec![
            ChosenItem {
                index: 1,
                value: one(7, "seven"),
            },
            ChosenItem {
                index: 2,
                value: one(8, "eight"),
            },
        ]
    );
    assert_eq!(
        ready.outcomes,
        vec![
            (7, Outcome::Chosen { index: 1 }),
            (8, Outcome::Chosen { index: 2 }),
        ]
    );
    assert_eq!(node.status().instances, 0);
    assert_eq!(node.chosen_through(), 2);
    assert_eq!(node.instance_state(1), None);
    assert_eq!(node.instance_state(2), None);
}

#[test]
fn heartbeats_carry_chosen_through_and_max_index() {
    let mut node = leader_with_one_proposal();
    node.step(accepted_msg(1, b(1, 1), vec![1]));
    node.step(accepted_msg(2, b(1, 1), vec![1]));
    node.propose(one(8, "eight")).unwrap();
    node.ready();
    // Heartbeats every `heartbeat_ticks` (2).
    node.tick();
    assert_quiet(&mut node);
    node.tick();
    let ready = node.ready();
    let heartbeat = Body::Heartbeat {
        ballot: b(1, 1),
        chosen_through: 1,
        max_index: 2,
    };
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(1, 2, heartbeat.clone()), msg(1, 3, heartbeat)]
    );
}

#[test]
fn accepts_piggyback_chosen_through() {
    let mut node = leader_with_one_proposal();
    node.step(accepted_msg(1, b(1, 1), vec![1]));
    node.step(accepted_msg(2, b(1, 1), vec![1]));
    node.ready();
    node.propose(one(8, "eight")).unwrap();
    let ready = node.ready();
    let accept = Body::Accept {
        ballot: b(1, 1),
        entries: vec![(2, one(8, "eight"))].into(),
        chosen_through: 1,
    };
    assert_eq!(
        ready.messages_now,
        vec![msg(1, 2, accept.clone()), msg(1, 3, accept)]
    );
}

#[test]
fn unacknowledged_accepts_are_resent_to_the_silent_peers_only() {
    let mut c = cfg(1);
    c.accept_retry_ticks = 4;
    let mut node = Node::new(c).unwrap();
    let ballot = elect(&mut node, 2);
    node.propose(one(7, "seven")).unwrap();
    node.ready();
    node.step(accepted_msg(1, ballot, vec![1]));
    node.tick();
    node.ready();
    node.step(accepted_msg(3, ballot, vec![1]));
    let ready = node.ready();
    assert_eq!(Record::per_index(&ready.records), vec![Record::Chosen(1)]);
    node.propose(one(8, "eight")).unwrap();
    node.ready();
    node.step(accepted_msg(1, ballot, vec![2]));
    node.step(accepted_msg(3, ballot, vec![2]));
    node.propose(one(9, "nine")).unwrap();
    node.ready();
    node.step(accepted_msg(1, ballot, vec![3]));
    node.step(accepted_msg(2, ballot, vec![3]));
    node.ready();
    // Index 4 has only the leader's vote.
    node.propose(one(10, "ten")).unwrap();
    node.ready();
    node.step(accepted_msg(1, ballot, vec![4]));
    // Retry scans run every `accept_retry_ticks`; index 4 is due at the
    // first scan at least `accept_retry_ticks` after it was sent.
    let mut resent = Vec::new();
    for _ in 0..8 {
        node.tick();
        resent.extend(
            node.ready()
                .messages_now
                .into_iter()
                .filter(|m| matches!(m.body, Body::Accept { .. })),
        );
    }
    let accept = Body::Accept {
        ballot,
        entries: vec![(4, one(10, "ten"))].into(),
        chosen_through: 3,
    };
    assert_eq!(resent, vec![msg(1, 2, accept.clone()), msg(1, 3, accept)]);
}

#[test]
fn leader_steps_down_on_reject_with_a_higher_ballot() {
    let mut node = leader_with_one_proposal();
    // A reject naming a lower or equal promise is not a reason to step down.
    node.step(msg(
        2,
        1,
        Body::Reject {
            ballot: b(1, 1),
            promised: b(1, 1),
            index: 1,
        },
    ));
    assert!(node.is_leader());
    node.step(msg(
        2,
        1,
        Body::Reject {
            ballot: b(1, 1),
            promised: b(4, 3),
            index: 1,
        },
    ));
    assert!(!node.is_leader());
    assert_eq!(node.status().role, Role::Follower);
    assert_eq!(node.leader(), None);
    assert_quiet(&mut node);
    // Its next campaign is above the round it learned.
    let ready = tick_until_election(&mut node, 40);
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(5, b(1, 1)))]
    );
    assert_eq!(ready.messages[0], prepare_range(1, 1, b(5, 1), 1));
}

#[test]
fn leader_steps_down_on_a_heartbeat_with_a_higher_ballot() {
    let mut node = leader_with_one_proposal();
    node.step(msg(
        3,
        1,
        Body::Heartbeat {
            ballot: b(2, 3),
            chosen_through: 0,
            max_index: 1,
        },
    ));
    assert!(!node.is_leader());
    assert_eq!(node.leader(), Some(3));
    let ready = node.ready();
    // Heartbeats carry no promise: nothing to persist.
    assert_eq!(Record::per_index(&ready.records), vec![]);
    assert_eq!(ready.messages, vec![]);
    assert_eq!(
        ready.messages_now,
        vec![msg(
            1,
            3,
            Body::HeartbeatAck {
                ballot: b(2, 3),
                chosen_through: 0,
                max_index: 1,
            }
        )]
    );
}

#[test]
fn leader_rejects_a_heartbeat_with_a_lower_ballot() {
    let mut node = leader_with_one_proposal();
    node.step(msg(
        3,
        1,
        Body::Heartbeat {
            ballot: b(0, 3),
            chosen_through: 0,
            max_index: 0,
        },
    ));
    assert!(node.is_leader());
    let ready = node.ready();
    assert_eq!(
        ready.messages_now,
        vec![msg(
            1,
            3,
            Body::Reject {
                ballot: b(0, 3),
                promised: b(1, 1),
                index: 0,
            }
        )]
    );
}

#[test]
fn leader_steps_down_on_a_prepare_range_with_a_higher_ballot() {
    let mut node = leader_with_one_proposal();
    node.step(prepare_range(3, 1, b(2, 3), 1));
    assert!(!node.is_leader());
    assert_eq!(node.leader(), None);
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(node_state(1, b(2, 3)))]
    );
    // The promise reports the leader's in-flight value.
    assert_eq!(
        ready.messages,
        vec![msg(
            1,
            3,
            Body::PromiseRange {
                ballot: b(2, 3),
                from_index: 1,
                chosen_through: 0,
                entries: vec![PromiseEntry {
                    index: 1,
                    accepted: b(1, 1),
                    value: one(7, "seven"),
                    chosen: false,
                }],
            }
        )]
    );
    assert_eq!(ready.messages_now, vec![]);
    // Votes for the old ballot no longer choose anything.
    node.step(accepted_msg(1, b(1, 1), vec![1]));
    node.step(accepted_msg(2, b(1, 1), vec![1]));
    assert_quiet(&mut node);
}

#[test]
fn leader_steps_down_on_an_accept_with_a_higher_ballot() {
    let mut node = leader_with_one_proposal();
    node.step(msg(
        3,
        1,
        Body::Accept {
            ballot: b(2, 3),
            entries: vec![(1, one(7, "seven"))].into(),
            chosen_through: 0,
        },
    ));
    assert!(!node.is_leader());
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Instance(accepted(
            1,
            b(2, 3),
            b(2, 3),
            one(7, "seven")
        ))]
    );
    assert_eq!(
        ready.messages,
        vec![msg(
            1,
            3,
            Body::Accepted {
                ballot: b(2, 3),
                indices: vec![1],
            }
        )]
    );
}

#[test]
fn leader_without_a_quorum_of_contact_steps_down() {
    let mut node = Node::new(cfg(1)).unwrap();
    elect(&mut node, 2);
    // Quorum check after 2 * election_timeout_ticks, then every
    // election_timeout_ticks; nobody answers.
    let mut ticks = 0;
    while node.is_leader() {
        node.tick();
        node.ready();
        ticks += 1;
        assert!(ticks <= 20, "leader kept leading without any peer");
    }
    assert_eq!(ticks, 20);
    assert_eq!(node.status().role, Role::Follower);
}

#[test]
fn heartbeat_acks_keep_the_leader_in_place() {
    let mut node = Node::new(cfg(1)).unwrap();
    let ballot = elect(&mut node, 2);
    for _ in 0..100 {
        node.tick();
        node.ready();
        node.step(msg(
            2,
            1,
            Body::HeartbeatAck {
                ballot,
                chosen_through: 0,
                max_index: 0,
            },
        ));
    }
    assert!(node.is_leader());
}

#[test]
fn follower_grants_a_newer_leader_and_forgets_the_old_one() {
    let mut node = Node::new(passive_cfg(2)).unwrap();
    node.step(msg(
        1,
        2,
        Body::Heartbeat {
            ballot: b(1, 1),
            chosen_through: 0,
            max_index: 0,
        },
    ));
    assert_eq!(node.leader(), Some(1));
    node.ready();
    node.step(prepare_range(3, 2, b(2, 3), 1));
    assert_eq!(node.leader(), None);
    let ready = node.ready();
    assert_eq!(
        Record::per_index(&ready.records),
        vec![Record::Node(NodeState {
            max_round: 0,
            promised: b(2, 3),
        })]
    );
    // The old leader's heartbeat is now refused.
    node.step(msg(
        1,
        2,
        Body::Heartbeat {
            ballot: b(1, 1),
            chosen_through: 0,
            max_index: 0,
        },
    ));
    let ready = node.ready();
    assert_eq!(
        ready.messages_now,
        vec![msg(
            2,
            1,
            Body::Reject {
                ballot: b(1, 1),
                promised: b(2, 3),
                index: 0,
            }
        )]
    );
    assert_eq!(node.leader(), None);
}
