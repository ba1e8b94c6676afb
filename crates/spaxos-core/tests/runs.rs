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
        let (records_a, a) = output(&mut with_runs);
        let (records_b, b) = output(&mut without);
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
        prop_assert_eq!(
            with_runs.status(),
            without.status(),
            "status after input {}",
            step
        );
        for index in 0..24 {
            prop_assert_eq!(
                with_runs.instance_state(index),
                without.instance_state(index),
                "instance {} after input {}",
                index,
                step
            );
        }
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
