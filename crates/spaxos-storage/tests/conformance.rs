//! The conformance suite: every `Storage` implementation must pass it. Each
//! case runs against `MemStorage` and against `DiskStorage` with tiny
//! segments (many rotations) and with preallocated segments.

mod common;

use common::*;
use spaxos_core::{Ballot, InstanceState, NodeState, Record, Value};
use spaxos_storage::{DiskOptions, Preallocate, Storage, StorageError};

fn empty_store<H: Harness>(h: &mut H) {
    let store = h.open();
    assert_eq!(store.bounds(), (1, 0));
    let recovered = store.recover(10).unwrap();
    assert_eq!(recovered, Default::default());
    assert_eq!(store.chosen(1).unwrap(), None);
    assert!(store.chosen_range(1, 10, 1000).unwrap().is_empty());
    let store = h.reopen(store);
    assert_eq!(store.bounds(), (1, 0));
}

fn write_then_read<H: Harness>(h: &mut H) {
    let mut store = h.open();
    store
        .write(&[
            node(3),
            accepted(1, 3, value(11, 10)),
            accepted(2, 3, value(12, 10)),
        ])
        .unwrap();
    assert_eq!(store.chosen(1).unwrap(), None, "accepted is not chosen");
    store.write(&[Record::Chosen(1)]).unwrap();
    assert_eq!(store.chosen(1).unwrap(), Some(value(11, 10)));
    assert_eq!(store.bounds(), (1, 2));
    for round in 0..2 {
        let recovered = store.recover(10).unwrap();
        assert_eq!(recovered.node.max_round, 3, "round {round}");
        assert_eq!(recovered.chosen_through, 1);
        assert_eq!(recovered.recent_reqids, vec![(1, 11)]);
        assert_eq!(
            recovered.instances,
            vec![InstanceState {
                index: 2,
                promised: Ballot::new(3, 1),
                accepted: Ballot::new(3, 1),
                value: Some(value(12, 10)),
                chosen: false,
            }]
        );
        assert_eq!(store.chosen(1).unwrap(), Some(value(11, 10)));
        store = h.reopen(store);
    }
}

fn later_records_replace_earlier<H: Harness>(h: &mut H) {
    let mut store = h.open();
    store
        .write(&[node(1), accepted(5, 1, value(1, 4))])
        .unwrap();
    store
        .write(&[
            node(2),
            accepted(5, 2, value(2, 4)),
            Record::Chosen(5),
            node(4),
        ])
        .unwrap();
    // A promise-only record for an index.
    store
        .write(&[Record::Instance(InstanceState {
            index: 7,
            promised: Ballot::new(9, 3),
            accepted: Ballot::ZERO,
            value: None,
            chosen: false,
        })])
        .unwrap();
    let store = h.reopen(store);
    let recovered = store.recover(10).unwrap();
    assert_eq!(
        recovered.node,
        NodeState {
            max_round: 4,
            promised: Ballot::new(4, 2)
        }
    );
    assert_eq!(recovered.chosen_through, 0, "1..=4 have no records");
    assert_eq!(recovered.instances.len(), 2);
    assert_eq!(recovered.instances[0].value, Some(value(2, 4)));
    assert!(recovered.instances[0].chosen);
    assert_eq!(recovered.instances[1].promised, Ballot::new(9, 3));
    assert_eq!(recovered.instances[1].value, None);
    assert_eq!(store.chosen(5).unwrap(), Some(value(2, 4)));
    assert_eq!(store.chosen(7).unwrap(), None);
    assert_eq!(store.bounds(), (1, 7));
}

fn chosen_prefix_and_reqids<H: Harness>(h: &mut H) {
    let mut store = h.open();
    let mut batch = Vec::new();
    for index in 1..=20 {
        let v = if index % 5 == 0 {
            Value::Noop
        } else {
            value(100 + index, 8)
        };
        batch.push(chosen(index, v));
    }
    batch.push(accepted(22, 1, value(999, 8)));
    store.write(&batch).unwrap();
    let store = h.reopen(store);
    let recovered = store.recover(6).unwrap();
    assert_eq!(recovered.chosen_through, 20);
    // (14, 20], no-ops (15, 20) excluded.
    assert_eq!(
        recovered.recent_reqids,
        vec![(16, 116), (17, 117), (18, 118), (19, 119)]
    );
    assert_eq!(recovered.instances.len(), 1);
    assert_eq!(recovered.instances[0].index, 22);
    assert_eq!(store.recover(0).unwrap().recent_reqids, vec![]);
    assert_eq!(store.recover(1000).unwrap().recent_reqids.len(), 16);
}

fn chosen_range_limits<H: Harness>(h: &mut H) {
    let mut store = h.open();
    let batch: Vec<Record> = (1..=10).map(|i| chosen(i, value(i, 100))).collect();
    store.write(&batch).unwrap();
    store.write(&[accepted(11, 1, value(11, 100))]).unwrap();
    store.write(&[chosen(12, value(12, 100))]).unwrap();
    let store = h.reopen(store);
    let all = store.chosen_range(1, 100, usize::MAX).unwrap();
    assert_eq!(all.len(), 10, "stops at 11, not chosen");
    assert_eq!(all[3], (4, value(4, 100)));
    let limited = store.chosen_range(3, 100, 250).unwrap();
    assert_eq!(
        limited.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(
        store.chosen_range(3, 100, 0).unwrap().len(),
        1,
        "at least one"
    );
    assert_eq!(store.chosen_range(2, 5, usize::MAX).unwrap().len(), 4);
    assert!(store.chosen_range(5, 4, usize::MAX).unwrap().is_empty());
    assert!(store.chosen_range(11, 20, usize::MAX).unwrap().is_empty());
    assert_eq!(store.chosen_range(12, 20, usize::MAX).unwrap().len(), 1);
    assert!(store.chosen_range(50, 60, usize::MAX).unwrap().is_empty());
}

fn value_kinds<H: Harness>(h: &mut H) {
    let mut store = h.open();
    let values = [
        Value::Noop,
        value(1, 0),
        many(2, &[b"a", b"", b"ccc"]),
        many(3, &[]),
        value(4, 3000),
    ];
    for (i, v) in values.iter().enumerate() {
        store.write(&[chosen(i as u64 + 1, v.clone())]).unwrap();
    }
    let store = h.reopen(store);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(store.chosen(i as u64 + 1).unwrap().as_ref(), Some(v));
    }
    assert_eq!(store.recover(10).unwrap().recent_reqids.len(), 4);
}

fn invalid_batches_change_nothing<H: Harness>(h: &mut H) {
    let mut store = h.open();
    store.write(&[accepted(1, 1, value(1, 4))]).unwrap();
    let bad: [&[Record]; 5] = [
        &[node(5), Record::Chosen(2)],
        // Values for 2 and 3 earlier in the batch, none for 4.
        &[
            accepted(2, 1, value(2, 1)),
            accepted(3, 1, value(3, 1)),
            Record::ChosenRange { first: 2, last: 4 },
        ],
        &[accepted(0, 1, value(1, 1))],
        &[Record::Instance(InstanceState {
            chosen: true,
            ..InstanceState::empty(3)
        })],
        &[Record::Instance(InstanceState::empty(1)), Record::Chosen(1)],
    ];
    for batch in bad {
        let err = store.write(batch).unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidBatch { .. }),
            "{batch:?}: {err}"
        );
    }
    let store = h.reopen(store);
    let recovered = store.recover(10).unwrap();
    assert_eq!(recovered.node.max_round, 0);
    assert_eq!(recovered.instances.len(), 1);
    assert_eq!(store.bounds(), (1, 1));
}

fn compaction<H: Harness>(h: &mut H) {
    let mut store = h.open();
    for index in 1..=300 {
        store
            .write(&[node(index), chosen(index, value(index, 50))])
            .unwrap();
    }
    store.write(&[accepted(302, 1, value(302, 50))]).unwrap();
    store.compact(200).unwrap();
    assert_eq!(store.bounds(), (201, 302));
    let check = |store: &H::S| {
        assert!(matches!(
            store.chosen(200),
            Err(StorageError::Compacted { first_index: 201 })
        ));
        assert!(matches!(
            store.chosen(1),
            Err(StorageError::Compacted { first_index: 201 })
        ));
        assert!(matches!(
            store.chosen_range(150, 250, usize::MAX),
            Err(StorageError::Compacted { first_index: 201 })
        ));
        assert_eq!(store.chosen(201).unwrap(), Some(value(201, 50)));
        assert_eq!(store.chosen_range(201, 400, usize::MAX).unwrap().len(), 100);
        let recovered = store.recover(50).unwrap();
        assert_eq!(recovered.chosen_through, 300);
        assert_eq!(recovered.node.max_round, 300);
        assert_eq!(recovered.recent_reqids.len(), 50);
        assert_eq!(recovered.instances.len(), 1);
    };
    check(&store);
    let mut store = h.reopen(store);
    check(&store);
    assert_eq!(store.bounds(), (201, 302));
    // Lower or equal compaction points are no-ops; writes below are ignored.
    store.compact(100).unwrap();
    store
        .write(&[accepted(150, 9, value(1, 1)), Record::Chosen(150)])
        .unwrap();
    assert_eq!(store.bounds(), (201, 302));
    // Compacting past the chosen prefix and past the end.
    store.compact(310).unwrap();
    assert_eq!(store.bounds(), (311, 310));
    let store = h.reopen(store);
    assert_eq!(store.bounds(), (311, 310));
    let recovered = store.recover(50).unwrap();
    assert_eq!(recovered.chosen_through, 310);
    assert!(recovered.instances.is_empty());
    assert_eq!(recovered.node.max_round, 300);
}

/// An `Accepted` record is one `Instance` record per entry: each entry is
/// durable and readable on its own (values of every kind, read back from
/// the file after a reopen), a chosen mark in the same batch may follow it,
/// and entries at or below the compaction point are dropped.
fn batch_of_accepted_entries<H: Harness>(h: &mut H) {
    let mut store = h.open();
    let ballot = Ballot::new(4, 2);
    let entries = vec![
        (1, value(11, 30)),
        (2, Value::Noop),
        (3, many(13, &[b"x", b"yz"])),
        (4, value(14, 0)),
    ];
    store
        .write(&[
            node(4),
            Record::Accepted {
                ballot,
                entries: entries.clone().into(),
            },
            Record::Chosen(1),
            Record::Chosen(2),
        ])
        .unwrap();
    let check = |store: &H::S| {
        assert_eq!(store.chosen(1).unwrap(), Some(value(11, 30)));
        assert_eq!(store.chosen(2).unwrap(), Some(Value::Noop));
        assert_eq!(store.chosen(3).unwrap(), None, "accepted is not chosen");
        let recovered = store.recover(10).unwrap();
        assert_eq!(recovered.chosen_through, 2);
        assert_eq!(recovered.recent_reqids, vec![(1, 11)]);
        let expected: Vec<InstanceState> = entries[2..]
            .iter()
            .map(|(index, value)| InstanceState {
                index: *index,
                promised: ballot,
                accepted: ballot,
                value: Some(value.clone()),
                chosen: false,
            })
            .collect();
        assert_eq!(recovered.instances, expected);
    };
    check(&store);
    let mut store = h.reopen(store);
    check(&store);
    store
        .write(&[Record::Chosen(3), Record::Chosen(4)])
        .unwrap();
    assert_eq!(
        store.chosen_range(1, 4, usize::MAX).unwrap(),
        entries
            .iter()
            .map(|(index, value)| (*index, value.clone()))
            .collect::<Vec<_>>()
    );
    // Entries below the compaction point are dropped, the rest kept.
    store.compact(4).unwrap();
    store
        .write(&[Record::Accepted {
            ballot,
            entries: vec![(3, value(99, 5)), (6, value(16, 5))].into(),
        }])
        .unwrap();
    let store = h.reopen(store);
    let recovered = store.recover(10).unwrap();
    assert_eq!(recovered.chosen_through, 4);
    assert_eq!(store.bounds(), (5, 6));
    assert_eq!(
        recovered
            .instances
            .iter()
            .map(|i| i.index)
            .collect::<Vec<_>>(),
        vec![6]
    );
    // An entry at index 0 makes the whole batch invalid.
    let mut store = store;
    let err = store
        .write(&[Record::Accepted {
            ballot,
            entries: vec![(7, value(17, 1)), (0, value(18, 1))].into(),
        }])
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidBatch { .. }), "{err}");
    assert_eq!(store.bounds(), (5, 6));
    // Marks at or below the compaction point are ignored, in a range too;
    // index 5 holds nothing, so a range over it is refused.
    store
        .write(&[Record::ChosenRange { first: 1, last: 4 }])
        .unwrap();
    let err = store
        .write(&[Record::ChosenRange { first: 1, last: 6 }])
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidBatch { .. }), "{err}");
    store
        .write(&[Record::ChosenRange { first: 6, last: 6 }])
        .unwrap();
    assert_eq!(store.chosen(6).unwrap(), Some(value(16, 5)));
    assert_eq!(store.recover(10).unwrap().chosen_through, 4);
}

fn unchosen_replacement_shrinks_prefix<H: Harness>(h: &mut H) {
    let mut store = h.open();
    let batch: Vec<Record> = (1..=5).map(|i| chosen(i, value(i, 5))).collect();
    store.write(&batch).unwrap();
    store.write(&[accepted(3, 7, value(33, 5))]).unwrap();
    let store = h.reopen(store);
    let recovered = store.recover(10).unwrap();
    assert_eq!(recovered.chosen_through, 2);
    assert_eq!(recovered.instances.len(), 3);
    assert_eq!(store.chosen(3).unwrap(), None);
}

/// Deferred `Chosen` marks: read at once, kept across segment rotations and
/// a reopen once a write (an empty one at the end) has carried them;
/// anything else is refused and changes nothing.
fn deferred_chosen_marks<H: Harness>(h: &mut H) {
    let mut store = h.open();
    for index in 1..=60 {
        store
            .write(&[accepted(index, 1, value(index, 100))])
            .unwrap();
        store.write_deferred(&[Record::Chosen(index)]).unwrap();
        assert_eq!(store.chosen(index).unwrap(), Some(value(index, 100)));
    }
    let refused: [&[Record]; 3] = [
        &[node(7)],
        &[Record::Chosen(61), accepted(61, 1, value(61, 1))],
        // A mark needs a value (earlier in the batch or already held).
        &[Record::Chosen(99)],
    ];
    for batch in refused {
        let err = store.write_deferred(batch).unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidBatch { .. }),
            "{batch:?}: {err}"
        );
    }
    assert_eq!(store.recover(10).unwrap().chosen_through, 60);
    // A run of marks as one record; one index of it without a value makes
    // the whole record invalid.
    let values: Vec<(u64, Value)> = (61..=70).map(|i| (i, value(i, 10))).collect();
    store
        .write(&[Record::Accepted {
            ballot: Ballot::new(1, 1),
            entries: values[..9].to_vec().into(),
        }])
        .unwrap();
    let err = store
        .write_deferred(&[Record::ChosenRange {
            first: 61,
            last: 70,
        }])
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidBatch { .. }), "{err}");
    store
        .write_deferred(&[Record::ChosenRange {
            first: 61,
            last: 69,
        }])
        .unwrap();
    assert_eq!(store.chosen(65).unwrap(), Some(value(65, 10)));
    assert_eq!(store.recover(10).unwrap().chosen_through, 69);
    // The last marks wait for a write to carry them; an empty one does.
    store.write(&[]).unwrap();
    assert_eq!(store.deferred_marks(), 0);
    let store = h.reopen(store);
    let recovered = store.recover(10).unwrap();
    assert_eq!(recovered.chosen_through, 69);
    assert_eq!(recovered.node.max_round, 0);
    assert_eq!(store.bounds(), (1, 69));
    assert_eq!(store.chosen(69).unwrap(), Some(value(69, 10)));
}

/// `write_then` calls its `durable` callback once for every write that
/// succeeds (including one with nothing left to write) and never for one
/// that fails, and every read sees the batch once it returns.
fn write_then_calls_back_once_durable<H: Harness>(h: &mut H) {
    let mut store = h.open();
    let mut calls = 0;
    store
        .write_then(&[node(2), accepted(1, 2, value(1, 8))], &mut || calls += 1)
        .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(store.bounds(), (1, 1));
    store
        .write_then(&[Record::Chosen(1)], &mut || calls += 1)
        .unwrap();
    assert_eq!(calls, 2);
    assert_eq!(store.chosen(1).unwrap(), Some(value(1, 8)));

    // A refused batch is never acknowledged, even with deferred marks
    // waiting (they are written alone, the batch still fails).
    store.write(&[accepted(2, 2, value(2, 8))]).unwrap();
    store.write_deferred(&[Record::Chosen(2)]).unwrap();
    let err = store
        .write_then(&[Record::Chosen(9)], &mut || calls += 1)
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidBatch { .. }), "{err}");
    assert_eq!(calls, 2);
    assert_eq!(store.deferred_marks(), 0, "the marks went alone");

    // Nothing to write (an empty batch; records below the floor) is durable
    // at once.
    store.write_then(&[], &mut || calls += 1).unwrap();
    store.compact(2).unwrap();
    store
        .write_then(&[accepted(1, 3, value(9, 8))], &mut || calls += 1)
        .unwrap();
    assert_eq!(calls, 4);

    // A batch of consecutive indices whose marks follow in the same batch,
    // and one whose indices come out of order.
    let run: Vec<(u64, Value)> = (3..=40).map(|i| (i, value(i, 8))).collect();
    store
        .write_then(
            &[
                Record::Accepted {
                    ballot: Ballot::new(3, 1),
                    entries: run.into(),
                },
                Record::ChosenRange { first: 3, last: 40 },
            ],
            &mut || calls += 1,
        )
        .unwrap();
    store
        .write_then(
            &[
                accepted(43, 3, value(43, 8)),
                accepted(41, 3, value(41, 8)),
                Record::Chosen(43),
                accepted(42, 3, value(42, 8)),
                Record::ChosenRange {
                    first: 41,
                    last: 42,
                },
            ],
            &mut || calls += 1,
        )
        .unwrap();
    assert_eq!(calls, 6);
    assert_eq!(store.recover(10).unwrap().chosen_through, 43);
    let store = h.reopen(store);
    assert_eq!(store.recover(10).unwrap().chosen_through, 43);
    assert_eq!(store.chosen(41).unwrap(), Some(value(41, 8)));
    assert_eq!(store.bounds(), (3, 43));
}

macro_rules! suite {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;
            #[test]
            fn empty_store() {
                super::empty_store(&mut $harness);
            }
            #[test]
            fn write_then_read() {
                super::write_then_read(&mut $harness);
            }
            #[test]
            fn later_records_replace_earlier() {
                super::later_records_replace_earlier(&mut $harness);
            }
            #[test]
            fn chosen_prefix_and_reqids() {
                super::chosen_prefix_and_reqids(&mut $harness);
            }
            #[test]
            fn chosen_range_limits() {
                super::chosen_range_limits(&mut $harness);
            }
            #[test]
            fn value_kinds() {
                super::value_kinds(&mut $harness);
            }
            #[test]
            fn invalid_batches_change_nothing() {
                super::invalid_batches_change_nothing(&mut $harness);
            }
            #[test]
            fn compaction() {
                super::compaction(&mut $harness);
            }
            #[test]
            fn deferred_chosen_marks() {
                super::deferred_chosen_marks(&mut $harness);
            }
            #[test]
            fn batch_of_accepted_entries() {
                super::batch_of_accepted_entries(&mut $harness);
            }
            #[test]
            fn write_then_calls_back_once_durable() {
                super::write_then_calls_back_once_durable(&mut $harness);
            }
            #[test]
            fn unchosen_replacement_shrinks_prefix() {
                super::unchosen_replacement_shrinks_prefix(&mut $harness);
            }
        }
    };
}

suite!(mem, MemHarness);
suite!(disk_small_segments, DiskHarness::new(small_options()));
suite!(disk_zero_filled, DiskHarness::new(zero_filled_options()));
suite!(
    disk_fallocated,
    DiskHarness::new(DiskOptions {
        segment_bytes_max: 64 << 10,
        preallocate: Preallocate::Fallocate,
    })
);
