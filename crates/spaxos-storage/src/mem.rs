//! [`MemStorage`]: the whole durable state in memory, for tests and the
//! simulator.

use spaxos_core::{Index, InstanceState, NodeState, Record, RecoveredState, Value};

use crate::error::StorageError;
use crate::state::LogState;
use crate::Storage;

/// A [`Storage`] that keeps everything in memory; `write` applies the batch
/// atomically.
///
/// Cloning gives an independent snapshot of the durable state, which is what
/// a simulator keeps when it "crashes" a node: restart from the clone and
/// call [`Storage::recover`].
#[derive(Clone, Debug)]
pub struct MemStorage {
    state: LogState<Value>,
    writes_failing: bool,
}

impl Default for MemStorage {
    fn default() -> Self {
        MemStorage::new()
    }
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> MemStorage {
        MemStorage {
            state: LogState::new(0),
            writes_failing: false,
        }
    }

    /// Makes every later `write` fail (as a full disk would) without
    /// applying anything, until called with `false`. For fault injection.
    pub fn set_writes_failing(&mut self, failing: bool) {
        self.writes_failing = failing;
    }

    /// The durable node-wide hard state (what a checker compares a node's
    /// messages against).
    pub fn node_state(&self) -> NodeState {
        self.state.node
    }

    /// The durable state of `index`, if it holds a record there.
    pub fn instance(&self, index: Index) -> Option<InstanceState> {
        self.state.slots.get(&index).map(|slot| InstanceState {
            index,
            promised: slot.promised,
            accepted: slot.accepted,
            value: slot.value.clone(),
            chosen: slot.chosen,
        })
    }
}

impl Storage for MemStorage {
    fn write(&mut self, batch: &[Record]) -> Result<(), StorageError> {
        if self.writes_failing {
            return Err(StorageError::Failed {
                first_error: "injected write failure".to_string(),
            });
        }
        self.state.validate(batch)?;
        for record in batch {
            match record {
                Record::Node(node) => self.state.node = *node,
                Record::Instance(instance) => {
                    self.state.apply_instance(instance, instance.value.clone())
                }
                Record::Accepted { ballot, entries } => {
                    for (index, value) in entries.iter() {
                        self.state.apply_accepted(*index, *ballot, value.clone());
                    }
                }
                Record::Chosen(_) | Record::ChosenRange { .. } => {
                    let marks = record.chosen_indices().expect("a chosen mark");
                    let applied = self.state.apply_chosen_range(*marks.start(), *marks.end());
                    debug_assert!(applied, "validate checked the chosen marks");
                }
            }
        }
        Ok(())
    }

    fn recover(&self, dedup_window: u64) -> Result<RecoveredState, StorageError> {
        self.state
            .recover(dedup_window, |_, value| Ok(value.clone()))
    }

    fn chosen(&self, index: Index) -> Result<Option<Value>, StorageError> {
        Ok(self.state.chosen(index)?.cloned())
    }

    fn chosen_range(
        &self,
        from: Index,
        to: Index,
        bytes_max: usize,
    ) -> Result<Vec<(Index, Value)>, StorageError> {
        Ok(self
            .state
            .chosen_range(from, to, bytes_max)?
            .into_iter()
            .map(|(index, value)| (index, value.clone()))
            .collect())
    }

    fn bounds(&self) -> (Index, Index) {
        self.state.bounds()
    }

    fn compact(&mut self, through: Index) -> Result<(), StorageError> {
        self.state.compact(through);
        Ok(())
    }
}
