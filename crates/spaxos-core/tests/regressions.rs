//! Regressions found by the per-rule tests: each was a bug in the core.

mod common;
use common::*;
use spaxos_core::{Ballot, Body, Node, PromiseEntry, Value};

/// Node 1 restored at max_round 5 campaigns at 6.1; node 2's promise reports
/// index 1 accepted (not chosen) and index 2 chosen (a hole-then-chosen log).
fn win_with_chosen_entry_above(node: &mut Node) {
    let ready = tick_until_election(node, 20);
    deliver_to(node, &ready.messages);
    let ready = node.ready();
    deliver_to(node, &ready.messages);
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
                    value: one(11, "open"),
                    chosen: false,
                },
                PromiseEntry {
                    index: 2,
                    accepted: b(3, 3),
                    value: one(12, "chosen"),
                    chosen: true,
                },
            ],
        },
    ));
    assert!(node.is_leader());
}

#[test]
fn regression_new_leader_assigns_a_proposal_to_an_index_it_knows_is_chosen() {
    let mut c = cfg(1);
    c.retry_lost = false;
    let mut node = restore(c, node_state(5, Ballot::ZERO), vec![]);
    win_with_chosen_entry_above(&mut node);
    node.ready();
    node.propose(one(7, "mine")).unwrap();
    // Expected: index 3 (1 re-proposed, 2 known chosen).
    assert_eq!(node.pending_proposal(7), Some((Some(3), false)));
}

#[test]
fn regression_spurious_lost_outcome() {
    let mut c = cfg(1);
    c.retry_lost = false;
    let mut node = restore(c, node_state(5, Ballot::ZERO), vec![]);
    win_with_chosen_entry_above(&mut node);
    node.ready();
    node.propose(one(7, "mine")).unwrap();
    node.ready();
    for from in [1, 2] {
        node.step(msg(
            from,
            1,
            Body::Accepted {
                ballot: b(6, 1),
                indices: vec![1],
            },
        ));
    }
    let ready = node.ready();
    // The proposal was never sent in any accept, yet it is reported lost.
    assert_eq!(ready.outcomes, vec![]);
}

#[test]
fn regression_forwarded_proposal_livelocks() {
    let mut leader = restore(cfg(1), node_state(5, Ballot::ZERO), vec![]);
    win_with_chosen_entry_above(&mut leader);
    leader.ready();
    let mut follower = Node::new(passive_cfg(3)).unwrap();
    follower.step(msg(
        1,
        3,
        Body::Heartbeat {
            ballot: b(6, 1),
            chosen_through: 0,
            max_index: 2,
        },
    ));
    follower.ready();
    follower.propose(one(7, "fwd")).unwrap();
    // The forward reaches the new leader before its next tick.
    let mut to_leader = follower.ready().messages_now;
    let mut outcome = Vec::new();
    for round in 1..=20 {
        for m in to_leader.drain(..) {
            leader.step(m);
        }
        if round == 1 {
            // Index 1 (re-proposed "open") gets chosen; the follower learns 1 and 2.
            for from in [1, 2] {
                leader.step(msg(
                    from,
                    1,
                    Body::Accepted {
                        ballot: b(6, 1),
                        indices: vec![1],
                    },
                ));
            }
            follower.step(msg(
                1,
                3,
                Body::Learn {
                    entries: vec![(1, one(11, "open")), (2, one(12, "chosen"))],
                },
            ));
        }
        // Time passes: heartbeats carry chosen_through to the follower.
        leader.tick();
        let lr = leader.ready();
        // The leader's own votes (after its write) and node 2's votes.
        deliver_to(&mut leader, &lr.messages);
        for m in &lr.messages_now {
            if let (
                2,
                Body::Accept {
                    ballot, entries, ..
                },
            ) = (m.to, &m.body)
            {
                let indices = entries.iter().map(|e| e.0).collect();
                leader.step(msg(
                    2,
                    1,
                    Body::Accepted {
                        ballot: *ballot,
                        indices,
                    },
                ));
            }
        }
        let mut to_follower: Vec<_> = lr.messages_now.into_iter().filter(|m| m.to == 3).collect();
        to_follower.extend(
            leader
                .ready()
                .messages_now
                .into_iter()
                .filter(|m| m.to == 3),
        );
        for m in to_follower {
            follower.step(m);
        }
        let fr = follower.ready();
        outcome.extend(fr.outcomes);
        to_leader = fr.messages_now.into_iter().filter(|m| m.to == 1).collect();
        if !outcome.is_empty() {
            break;
        }
    }
    assert!(
        !outcome.is_empty(),
        "no outcome after 20 forward round trips"
    );
}

#[test]
fn regression_dedup_window_shorter_than_documented() {
    // CoreConfig::dedup_window: "a reqid already chosen within the last
    // dedup_window indices is not applied again".
    let mut c = passive_cfg(2);
    c.dedup_window = 4;
    let mut node = Node::new(c).unwrap();
    node.step(msg(
        1,
        2,
        Body::Learn {
            entries: vec![
                (1, one(1, "a")),
                (2, one(5, "dup")),
                (3, one(3, "c")),
                (4, one(4, "d")),
                (5, one(5, "dup")),
            ],
        },
    ));
    let ready = node.ready();
    // Index 5 repeats reqid 5 from index 2, 3 indices earlier (< 4).
    assert_eq!(ready.chosen[4].value, Value::Noop);
}
