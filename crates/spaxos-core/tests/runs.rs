//! A follower keeps the steady state's accepted batches as runs instead of
//! an instance per index (`AcceptedRun`). That is a change of
//! representation only: for any sequence of inputs, a node with runs must
//! produce exactly what a node without them produces, step by step.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use spaxos_core::{Ballot, Body, CoreConfig, Index, Message, Node, Ready, Record, Value};

/// The value every proposer sends at `index`, whatever the ballot, so that
/// no input can make two values chosen at one index. Reqids repeat every
/// five indices, so duplicate suppression has work to do.
fn value_at(index: Index) -> Value {
    one(index % 5 + 1, "v")
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (1u64..4, prop_oneof![Just(1u64), Just(3u64)]).prop_map(|(round, node)| b(round, node))
}

#[derive(Clone, Debug)]
enum Input {
    Message(Message),
    Ticks(u32),
    Propose(u64),
}

fn input() -> impl Strategy<Value = Input> {
    // Mostly consecutive batches: the runs' fast path.
    let consecutive =
        (ballot(), 1u64..14, 1u64..6, 0u64..16).prop_map(|(ballot, first, len, chosen_through)| {
            let entries: Vec<(Index, Value)> =
                (first..first + len).map(|i| (i, value_at(i))).collect();
            Body::Accept {
                ballot,
                entries: entries.into(),
                chosen_through,
            }
        });
    let scattered = (
        ballot(),
        prop::collection::btree_set(1u64..16, 1..4),
        0u64..16,
    )
        .prop_map(|(ballot, indices, chosen_through)| {
            let entries: Vec<(Index, Value)> =
                indices.into_iter().map(|i| (i, value_at(i))).collect();
            Body::Accept {
                ballot,
                entries: entries.into(),
                chosen_through,
            }
        });
    let heartbeat =
        (ballot(), 0u64..16, 0u64..16).prop_map(|(ballot, chosen_through, max)| Body::Heartbeat {
            ballot,
            chosen_through,
            max_index: max,
        });
    let prepare = (ballot(), 1u64..16).prop_map(|(ballot, index)| Body::Prepare { ballot, index });
    let prepare_range = (ballot(), 1u64..10)
        .prop_map(|(ballot, from_index)| Body::PrepareRange { ballot, from_index });
    let learn = prop::collection::btree_set(1u64..16, 1..4).prop_map(|indices| Body::Learn {
        entries: indices.into_iter().map(|i| (i, value_at(i))).collect(),
    });
    let catchup = (1u64..16, 0u64..6).prop_map(|(from_index, len)| Body::CatchupRequest {
        from_index,
        to_index: from_index + len,
    });
    let forward_ack = (1u64..6, 1u64..16).prop_map(|(reqid, index)| Body::ForwardAck {
        assigned: vec![(reqid, index)],
    });
    let body = prop_oneof![
        6 => consecutive,
        1 => scattered,
        2 => heartbeat,
        1 => prepare,
        1 => prepare_range,
        1 => learn,
        1 => catchup,
        1 => forward_ack,
    ];
    let message = (prop_oneof![Just(1u64), Just(3u64)], body).prop_map(|(from, body)| {
        // A ballot's owner sends it (a leader's accepts and heartbeats).
        let from = match &body {
            Body::Accept { ballot, .. }
            | Body::Heartbeat { ballot, .. }
            | Body::Prepare { ballot, .. }
            | Body::PrepareRange { ballot, .. } => ballot.node,
            _ => from,
        };
        Input::Message(msg(from, 2, body))
    });
    prop_oneof![
        12 => message,
        1 => prop_oneof![1u32..4, 20u32..60].prop_map(Input::Ticks),
        1 => (1u64..6).prop_map(Input::Propose),
    ]
}

/// Everything a step produced, records expanded per index (a run and the
/// instances it stands for may group the same records differently).
fn output(node: &mut Node) -> (Vec<Record>, Ready) {
    let mut ready = node.ready();
    let records = Record::per_index(&std::mem::take(&mut ready.records));
    (records, ready)
}

/// Node 2 never campaigns, but without a leader it soon fills holes with
/// no-ops (single-index Paxos), which reads and changes instances.
fn follower_cfg() -> CoreConfig {
    let mut c = passive_cfg(2);
    c.leaderless_delay_ticks = 30;
    c.noop_timeout_ticks = 8;
    c
}

/// Takes both nodes' output and requires it to be the same; returns the
/// first node's.
fn same_output(
    with_runs: &mut Node,
    without: &mut Node,
    step: usize,
) -> Result<Ready, TestCaseError> {
    let (records_a, a) = output(with_runs);
    let (records_b, b) = output(without);
    prop_assert_eq!(records_a, records_b, "records after input {}", step);
    prop_assert_eq!(&a.messages, &b.messages, "messages after input {}", step);
    prop_assert_eq!(
        &a.messages_now,
        &b.messages_now,
        "messages_now after input {}",
        step
    );
    prop_assert_eq!(&a.chosen, &b.chosen, "chosen after input {}", step);
    prop_assert_eq!(&a.outcomes, &b.outcomes, "outcomes after input {}", step);
    prop_assert_eq!(&a.reads, &b.reads, "reads after input {}", step);
    Ok(a)
}

/// Compares the two nodes' status and their first `instances` instances.
fn same_state(
    with_runs: &Node,
    without: &Node,
    instances: u64,
    step: usize,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        with_runs.status(),
        without.status(),
        "status after input {}",
        step
    );
    for index in 0..instances {
        prop_assert_eq!(
            with_runs.instance_state(index),
            without.instance_state(index),
            "instance {} after input {}",
            index,
            step
        );
    }
    Ok(())
}

/// Feeds `inputs` to a node with runs and to one without, comparing
/// everything observable after each input.
fn compare(inputs: Vec<Input>) -> Result<(), TestCaseError> {
    let mut with_runs = Node::new(follower_cfg()).unwrap();
    let mut without = Node::new(follower_cfg()).unwrap();
    without.set_accept_runs(false);
    for (step, input) in inputs.into_iter().enumerate() {
        for node in [&mut with_runs, &mut without] {
            match &input {
                Input::Message(m) => node.step(m.clone()),
                Input::Ticks(n) => (0..*n).for_each(|_| node.tick()),
                Input::Propose(reqid) => {
                    let _ = node.propose(one(*reqid, "p"));
                }
            }
        }
        same_output(&mut with_runs, &mut without, step)?;
        same_state(&with_runs, &without, 24, step)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_follower_with_runs_behaves_as_one_without(
        inputs in prop::collection::vec(input(), 1..60)
    ) {
        compare(inputs)?;
    }
}

fn accept(first: Index, len: u64, chosen_through: Index) -> Input {
    let entries: Vec<(Index, Value)> = (first..first + len).map(|i| (i, value_at(i))).collect();
    Input::Message(msg(
        1,
        2,
        Body::Accept {
            ballot: b(1, 1),
            entries: entries.into(),
            chosen_through,
        },
    ))
}

/// Without a leader, a follower fills holes with no-ops once they are
/// `noop_timeout_ticks` old: a run's entries must age from when they
/// arrived, not from when they became instances.
#[test]
fn entries_of_a_run_age_from_their_arrival() {
    compare(vec![
        Input::Ticks(40),
        accept(1, 3, 0),
        Input::Ticks(1),
        accept(4, 2, 0),
        Input::Ticks(3),
        Input::Ticks(3),
        Input::Ticks(3),
        Input::Ticks(3),
    ])
    .unwrap();
}

/// The fast path is taken: consecutive accepts leave no instance behind
/// them until something else reads the node, and the node's answers are
/// the same before and after the runs become instances.
#[test]
fn consecutive_accepts_become_runs_and_read_back_the_same() {
    let mut node = Node::new(passive_cfg(2)).unwrap();
    let ballot = b(1, 1);
    for first in [1u64, 4, 7] {
        let entries: Vec<(Index, Value)> = (first..first + 3).map(|i| (i, value_at(i))).collect();
        node.step(msg(
            1,
            2,
            Body::Accept {
                ballot,
                entries: entries.into(),
                chosen_through: first - 1,
            },
        ));
        let ready = node.ready();
        assert_eq!(
            ready.messages,
            vec![msg(
                2,
                1,
                Body::Accepted {
                    ballot,
                    indices: (first..first + 3).collect()
                }
            )]
        );
    }
    // 1..=6 chosen and delivered, 7..=9 accepted.
    assert_eq!(node.chosen_through(), 6);
    assert_eq!(node.status().instances, 3);
    let before: Vec<_> = (1..12).map(|i| node.instance_state(i)).collect();
    assert_eq!(
        node.instance_state(8),
        Some(accepted(8, ballot, ballot, value_at(8)))
    );
    // A prepare range reads every accepted entry: the runs become
    // instances first, and report the same.
    node.step(msg(
        3,
        2,
        Body::PrepareRange {
            ballot: b(2, 3),
            from_index: 1,
        },
    ));
    let ready = node.ready();
    let Body::PromiseRange { entries, .. } = &ready.messages[0].body else {
        panic!("expected a promise, got {:?}", ready.messages);
    };
    let reported: Vec<Index> = entries.iter().map(|e| e.index).collect();
    assert_eq!(reported, vec![7, 8, 9]);
    let promised_later: Vec<_> = (1..12).map(|i| node.instance_state(i)).collect();
    for (before, after) in before.iter().zip(&promised_later) {
        assert_eq!(
            before
                .as_ref()
                .map(|s| (s.index, s.accepted, &s.value, s.chosen)),
            after
                .as_ref()
                .map(|s| (s.index, s.accepted, &s.value, s.chosen))
        );
    }
}

/// Inputs to a leader (node 1 of 1, 2, 3).
#[derive(Clone, Debug)]
enum LeaderInput {
    /// Local proposals, one batch.
    Propose(Vec<u64>),
    /// Peer 2 or 3 acknowledges the `sent`-th accept it was sent (modulo
    /// how many were), whole or in part, at the leader's ballot or another.
    Ack {
        peer: u64,
        sent: usize,
        part: AckPart,
        stale: bool,
    },
    /// The leader's own votes, released after its writes are durable.
    OwnVotes,
    /// Peer 2 forwards a proposal.
    Forward(u64),
    /// Peer 3 refuses with a higher promise.
    Reject(u64),
    /// Peer 3 campaigns.
    PrepareRange(u64),
    /// Peer 3, leading at a higher round, sends accepts of its own values
    /// (say after winning without this node) and what it has chosen.
    Usurp {
        round: u64,
        first: Index,
        len: u64,
        chosen_through: Index,
    },
    Ticks(u32),
}

#[derive(Clone, Copy, Debug)]
enum AckPart {
    Whole,
    First,
    Last,
    AllButFirst,
    Reversed,
}

fn leader_input() -> impl Strategy<Value = LeaderInput> {
    let part = prop_oneof![
        8 => Just(AckPart::Whole),
        1 => Just(AckPart::First),
        1 => Just(AckPart::Last),
        1 => Just(AckPart::AllButFirst),
        1 => Just(AckPart::Reversed),
    ];
    prop_oneof![
        10 => prop::collection::vec(1u64..60, 1..6).prop_map(LeaderInput::Propose),
        10 => (prop_oneof![Just(2u64), Just(3u64)], 0usize..64, part, prop::bool::weighted(0.05))
            .prop_map(|(peer, sent, part, stale)| LeaderInput::Ack { peer, sent, part, stale }),
        6 => Just(LeaderInput::OwnVotes),
        1 => (1u64..40).prop_map(LeaderInput::Forward),
        1 => (5u64..9).prop_map(LeaderInput::Reject),
        1 => (5u64..9).prop_map(LeaderInput::PrepareRange),
        1 => (5u64..9, 1u64..30, 1u64..6, 0u64..30).prop_map(|(round, first, len, chosen_through)| {
            LeaderInput::Usurp { round, first, len, chosen_through }
        }),
        2 => prop_oneof![1u32..3, 4u32..12].prop_map(LeaderInput::Ticks),
    ]
}

fn leader_cfg() -> CoreConfig {
    let mut c = cfg(1);
    // Retries and the quorum check come within a test's ticks.
    c.accept_retry_ticks = 3;
    c.election_timeout_ticks = 20;
    c
}

/// Feeds `inputs` to a leader with runs and to one without, driving both
/// with what the first one sends, and compares everything observable after
/// each input.
fn compare_leaders(inputs: Vec<LeaderInput>) -> Result<(), TestCaseError> {
    compare_leaders_flushing(inputs.into_iter().map(|input| (input, true)).collect())
}

/// `compare_leaders`, taking the leaders' output only after the inputs
/// marked `true` (in between, the round goes on: proposals not yet sent
/// meet other inputs).
fn compare_leaders_flushing(inputs: Vec<(LeaderInput, bool)>) -> Result<(), TestCaseError> {
    let mut with_runs = Node::new(leader_cfg()).unwrap();
    let mut without = Node::new(leader_cfg()).unwrap();
    without.set_accept_runs(false);
    let ballot = elect(&mut with_runs, 2);
    prop_assert_eq!(elect(&mut without, 2), ballot);
    // Accepts sent to each peer, and the leader's own votes not yet given.
    let mut sent: Vec<(u64, Vec<Index>)> = Vec::new();
    let mut own_votes: Vec<Message> = Vec::new();
    for (step, (input, flush)) in inputs.into_iter().enumerate() {
        let messages: Vec<Message> = match &input {
            LeaderInput::Propose(_) | LeaderInput::Ticks(_) => Vec::new(),
            LeaderInput::Usurp {
                round,
                first,
                len,
                chosen_through,
            } => {
                let entries: Vec<(Index, Value)> = (*first..first + len)
                    .map(|i| (i, one(1000 + i, "u")))
                    .collect();
                vec![msg(
                    3,
                    1,
                    Body::Accept {
                        ballot: b(*round, 3),
                        entries: entries.into(),
                        chosen_through: *chosen_through,
                    },
                )]
            }
            LeaderInput::Ack {
                peer,
                sent: which,
                part,
                stale,
            } => {
                let to_peer: Vec<&Vec<Index>> = sent
                    .iter()
                    .filter(|(to, _)| to == peer)
                    .map(|(_, indices)| indices)
                    .collect();
                if to_peer.is_empty() {
                    Vec::new()
                } else {
                    let all = to_peer[which % to_peer.len()];
                    let indices: Vec<Index> = match part {
                        AckPart::Whole => all.clone(),
                        AckPart::First => all[..1].to_vec(),
                        AckPart::Last => all[all.len() - 1..].to_vec(),
                        AckPart::AllButFirst => all[1..].to_vec(),
                        AckPart::Reversed => all.iter().rev().copied().collect(),
                    };
                    let ballot = if *stale {
                        b(ballot.round + 1, 3)
                    } else {
                        ballot
                    };
                    vec![msg(*peer, 1, Body::Accepted { ballot, indices })]
                }
            }
            LeaderInput::OwnVotes => std::mem::take(&mut own_votes),
            LeaderInput::Forward(reqid) => vec![msg(
                2,
                1,
                Body::Forward {
                    values: vec![one(*reqid, "f")],
                },
            )],
            LeaderInput::Reject(round) => vec![msg(
                3,
                1,
                Body::Reject {
                    ballot,
                    promised: b(*round, 3),
                    index: 0,
                },
            )],
            LeaderInput::PrepareRange(round) => vec![msg(
                3,
                1,
                Body::PrepareRange {
                    ballot: b(*round, 3),
                    from_index: 1,
                },
            )],
        };
        for node in [&mut with_runs, &mut without] {
            match &input {
                LeaderInput::Propose(reqids) => {
                    let _ = node.propose_batch(reqids.iter().map(|&r| one(r, "p")).collect());
                }
                LeaderInput::Ticks(n) => (0..*n).for_each(|_| node.tick()),
                _ => messages.iter().for_each(|m| node.step(m.clone())),
            }
        }
        same_state(&with_runs, &without, 48, step)?;
        for reqid in 1..60 {
            prop_assert_eq!(
                with_runs.pending_proposal(reqid),
                without.pending_proposal(reqid),
                "proposal {} after input {}",
                reqid,
                step
            );
        }
        if !flush {
            continue;
        }
        let a = same_output(&mut with_runs, &mut without, step)?;
        for m in a.messages.iter().chain(&a.messages_now) {
            match &m.body {
                Body::Accept { entries, .. } if m.to != 1 => {
                    sent.push((m.to, entries.iter().map(|(i, _)| *i).collect()))
                }
                Body::Accepted { .. } if m.to == 1 => own_votes.push(m.clone()),
                _ => {}
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn a_leader_with_runs_behaves_as_one_without(
        inputs in prop::collection::vec((leader_input(), prop::bool::weighted(0.7)), 1..80)
    ) {
        compare_leaders_flushing(inputs)?;
    }
}

/// The leader's steady state: a round of proposals, its own votes and one
/// peer's acknowledgement choose the whole round.
#[test]
fn a_leader_round_is_chosen_by_whole_acknowledgements() {
    let mut inputs = vec![LeaderInput::Propose((1..=5).collect())];
    inputs.extend([
        LeaderInput::OwnVotes,
        LeaderInput::Ack {
            peer: 2,
            sent: 0,
            part: AckPart::Whole,
            stale: false,
        },
    ]);
    inputs.push(LeaderInput::Propose((6..=8).collect()));
    inputs.extend([
        LeaderInput::Ack {
            peer: 3,
            sent: 1,
            part: AckPart::Whole,
            stale: false,
        },
        LeaderInput::OwnVotes,
        LeaderInput::Ticks(5),
    ]);
    compare_leaders(inputs).unwrap();
}

/// A leader's run stands for instances that remember their proposals'
/// origin: when another leader's values are chosen there instead, the
/// proposals are tried again.
#[test]
fn a_usurped_leader_run_retries_its_proposals() {
    compare_leaders(vec![
        LeaderInput::Propose(vec![1, 2, 3]),
        LeaderInput::Usurp {
            round: 6,
            first: 1,
            len: 3,
            chosen_through: 3,
        },
        LeaderInput::Ticks(10),
    ])
    .unwrap();
}

/// Proposals of a round not yet sent become instances when another input
/// comes first, and keep their origin.
#[test]
fn a_leader_round_meets_a_usurper_before_it_is_sent() {
    compare_leaders_flushing(vec![
        (LeaderInput::Propose(vec![1, 2, 3]), false),
        (
            LeaderInput::Usurp {
                round: 6,
                first: 1,
                len: 3,
                chosen_through: 3,
            },
            true,
        ),
        (LeaderInput::Ticks(10), true),
    ])
    .unwrap();
}
