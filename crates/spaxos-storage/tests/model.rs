//! Property test: any sequence of writes (and deferred chosen marks),
//! compactions, reopens and crashes leaves `MemStorage` and `DiskStorage`
//! in the same state as a simple model.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use spaxos_core::{Ballot, Index, InstanceState, NodeState, Record, RecoveredState, Value};
use spaxos_storage::{DiskOptions, Preallocate, Storage, StorageError};

const INDEX_MAX: Index = 24;
const DEDUP_WINDOW: u64 = 5;

/// The specification, written as plainly as possible.
#[derive(Default, Clone)]
struct Model {
    node: NodeState,
    compacted_through: Index,
    last_index: Index,
    instances: BTreeMap<Index, InstanceState>,
}

impl Model {
    /// Applies a batch; false (and no change) if the store must reject it.
    fn write(&mut self, batch: &[Record]) -> bool {
        let mut next = self.clone();
        // The contract: a `ChosenRange` is one `Chosen` mark per index.
        let batch: Vec<Record> = batch
            .iter()
            .flat_map(|record| match record {
                Record::ChosenRange { first, last } if first > last => vec![record.clone()],
                Record::ChosenRange { first, last } => {
                    (*first..=*last).map(Record::Chosen).collect()
                }
                other => vec![other.clone()],
            })
            .collect();
        for record in &batch {
            match record {
                Record::Node(node) => next.node = *node,
                Record::Instance(state) if state.index > next.compacted_through => {
                    next.instances.insert(state.index, state.clone());
                    next.last_index = next.last_index.max(state.index);
                }
                Record::Instance(_) => {}
                // The contract: one `Instance` record per entry, in order.
                Record::Accepted { ballot, entries } => {
                    for (index, value) in entries.iter() {
                        if *index > next.compacted_through {
                            let state = InstanceState {
                                index: *index,
                                promised: *ballot,
                                accepted: *ballot,
                                value: Some(value.clone()),
                                chosen: false,
                            };
                            next.instances.insert(*index, state);
                            next.last_index = next.last_index.max(*index);
                        }
                    }
                }
                Record::Chosen(index) if *index > next.compacted_through => {
                    match next.instances.get_mut(index) {
                        Some(state) if state.value.is_some() => state.chosen = true,
                        _ => return false,
                    }
                }
                Record::Chosen(_) => {}
                // Only an empty range is left here: the store must refuse it.
                Record::ChosenRange { .. } => return false,
            }
        }
        *self = next;
        true
    }

    fn compact(&mut self, through: Index) {
        if through > self.compacted_through {
            self.compacted_through = through;
            self.instances.retain(|&index, _| index > through);
            self.last_index = self.last_index.max(through);
        }
    }

    fn chosen_through(&self) -> Index {
        let mut k = self.compacted_through;
        while self.instances.get(&(k + 1)).is_some_and(|s| s.chosen) {
            k += 1;
        }
        k
    }

    fn recover(&self) -> RecoveredState {
        let chosen_through = self.chosen_through();
        let low = chosen_through
            .saturating_sub(DEDUP_WINDOW)
            .max(self.compacted_through);
        RecoveredState {
            node: self.node,
            chosen_through,
            instances: self
                .instances
                .values()
                .filter(|s| s.index > chosen_through)
                .cloned()
                .collect(),
            recent_reqids: self
                .instances
                .values()
                .filter(|s| s.index > low && s.index <= chosen_through && s.chosen)
                .filter_map(|s| Some((s.index, s.value.as_ref()?.reqid()?)))
                .collect(),
        }
    }

    fn chosen(&self, index: Index) -> Result<Option<Value>, Index> {
        if index <= self.compacted_through {
            return Err(self.compacted_through + 1);
        }
        Ok(self
            .instances
            .get(&index)
            .filter(|s| s.chosen)
            .and_then(|s| s.value.clone()))
    }

    fn chosen_range(
        &self,
        from: Index,
        to: Index,
        bytes_max: usize,
    ) -> Result<Vec<(Index, Value)>, Index> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in from..=to {
            let Some(value) = self.chosen(index)? else {
                break;
            };
            if !out.is_empty() && bytes + value.payload_len() > bytes_max {
                break;
            }
            bytes += value.payload_len();
            out.push((index, value));
        }
        if from > to && from <= self.compacted_through {
            return Err(self.compacted_through + 1);
        }
        Ok(out)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write(Vec<Record>),
    WriteDeferred(Vec<Record>),
    Compact(Index),
    Reopen,
    Crash,
}

fn value_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Noop),
        (1..1000u64, 0..300usize).prop_map(|(reqid, len)| value(reqid, len)),
        (
            1..1000u64,
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4)
        )
            .prop_map(|(reqid, parts)| {
                let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
                many(reqid, &parts)
            }),
    ]
}

fn record_strategy() -> impl Strategy<Value = Record> {
    prop_oneof![
        1 => (0..10u64, 0..10u64, 1..4u64).prop_map(|(max_round, round, node)| Record::Node(NodeState {
            max_round,
            promised: Ballot::new(round, node),
        })),
        5 => (1..=INDEX_MAX, 0..5u64, 0..5u64, prop::option::of(value_strategy()), any::<bool>()).prop_map(
            |(index, promised, accepted, value, chosen)| Record::Instance(InstanceState {
                index,
                promised: Ballot::new(promised, 1),
                accepted: Ballot::new(accepted, 1),
                chosen: chosen && value.is_some(),
                value,
            })
        ),
        2 => (0..5u64, prop::collection::vec((1..=INDEX_MAX, value_strategy()), 1..5)).prop_map(
            |(round, entries)| Record::Accepted { ballot: Ballot::new(round, 2), entries: entries.into() }
        ),
        3 => (1..=INDEX_MAX).prop_map(Record::Chosen),
        1 => (1..=INDEX_MAX, 0..4u64).prop_map(|(first, more)| Record::ChosenRange { first, last: first + more }),
        1 => (2..=INDEX_MAX).prop_map(|first| Record::ChosenRange { first, last: first - 1 }),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(record_strategy(), 0..6).prop_map(Op::Write),
        2 => prop::collection::vec(
            prop_oneof![
                3 => (1..=INDEX_MAX).prop_map(Record::Chosen),
                1 => (1..=INDEX_MAX, 0..4u64).prop_map(|(first, more)| Record::ChosenRange { first, last: first + more }),
                1 => record_strategy(),
            ],
            0..4
        )
        .prop_map(Op::WriteDeferred),
        1 => (0..=INDEX_MAX + 2).prop_map(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn check<S: Storage>(store: &S, model: &Model, step: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        store.bounds(),
        (model.compacted_through + 1, model.last_index),
        "step {}",
        step
    );
    prop_assert_eq!(
        store.recover(DEDUP_WINDOW).unwrap(),
        model.recover(),
        "step {}",
        step
    );
    for index in 0..=INDEX_MAX + 3 {
        let got = match store.chosen(index) {
            Ok(v) => Ok(v),
            Err(StorageError::Compacted { first_index }) => Err(first_index),
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "step {step}: chosen({index}): {e}"
                )))
            }
        };
        prop_assert_eq!(got, model.chosen(index), "step {} index {}", step, index);
    }
    for (from, bytes_max) in [
        (1, usize::MAX),
        (model.compacted_through + 1, 200),
        (model.compacted_through + 2, 0),
    ] {
        let got = match store.chosen_range(from, INDEX_MAX, bytes_max) {
            Ok(v) => Ok(v),
            Err(StorageError::Compacted { first_index }) => Err(first_index),
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "step {step}: chosen_range: {e}"
                )))
            }
        };
        prop_assert_eq!(
            got,
            model.chosen_range(from, INDEX_MAX, bytes_max),
            "step {} from {}",
            step,
            from
        );
    }
    Ok(())
}

/// The store took a batch exactly when the model did.
fn same_verdict(
    result: Result<(), StorageError>,
    accepted: bool,
    step: usize,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        result.is_ok(),
        accepted,
        "step {}: {:?}",
        step,
        result.err()
    );
    Ok(())
}

fn run<H: Harness>(harness: &mut H, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut store = harness.open();
    let mut model = Model::default();
    // The model as of the store's last sync: what a crash keeps.
    let mut durable = Model::default();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Write(batch) => {
                let accepted = model.write(batch);
                same_verdict(store.write(batch), accepted, step)?;
                // Written or refused, the marks it held are synced now.
                prop_assert_eq!(store.deferred_marks(), 0, "step {}", step);
            }
            Op::WriteDeferred(batch) => {
                let marks_only = batch.iter().all(|r| r.chosen_indices().is_some());
                let accepted = marks_only && model.write(batch);
                same_verdict(store.write_deferred(batch), accepted, step)?;
            }
            Op::Compact(through) => {
                model.compact(*through);
                durable.compact(*through);
                store.compact(*through).unwrap();
            }
            Op::Reopen => store = harness.reopen(store),
            Op::Crash => {
                store = harness.crash(store);
                model = durable.clone();
            }
        }
        // A store that holds no deferred marks has made all of it durable.
        if store.deferred_marks() == 0 {
            durable = model.clone();
        }
        check(&store, &model, step)?;
    }
    let store = harness.reopen(store);
    check(&store, &model, ops.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn mem_storage_matches_model(ops in prop::collection::vec(op_strategy(), 0..40)) {
        run(&mut MemHarness, &ops)?;
    }

    #[test]
    fn disk_storage_matches_model(ops in prop::collection::vec(op_strategy(), 0..40)) {
        let mut harness = DiskHarness::new(DiskOptions {
            segment_bytes_max: DiskOptions::SEGMENT_BYTES_MIN,
            preallocate: Preallocate::Fallocate,
        });
        run(&mut harness, &ops)?;
    }
}
