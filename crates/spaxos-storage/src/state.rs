//! The write and read semantics shared by every store, generic over how a
//! value is held (the value itself in memory, or where it lies on disk).

use std::collections::BTreeMap;

use spaxos_core::{Ballot, Index, InstanceState, NodeState, Record, ReqId, Value};

use crate::error::StorageError;

/// How a store holds an accepted value.
pub(crate) trait HeldValue: Clone {
    /// The request id, `None` for a no-op.
    fn reqid(&self) -> Option<ReqId>;
    /// Payload bytes, for `chosen_range`'s byte limit.
    fn payload_len(&self) -> usize;
}

impl HeldValue for Value {
    fn reqid(&self) -> Option<ReqId> {
        Value::reqid(self)
    }
    fn payload_len(&self) -> usize {
        Value::payload_len(self)
    }
}

/// The indices a batch gives a value (or none) before a given record, in
/// batch order, for checking its chosen marks.
#[derive(Default)]
struct InBatch {
    entries: Vec<(Index, bool)>,
    /// Every index came after a smaller one (the usual batch: one phase 2
    /// record of consecutive indices), so a search finds the only entry.
    ascending: bool,
}

impl InBatch {
    fn push(&mut self, index: Index, has_value: bool) {
        self.ascending = match self.entries.last() {
            None => true,
            Some(&(last, _)) => self.ascending && last < index,
        };
        self.entries.push((index, has_value));
    }

    /// Whether the latest entry for `index` has a value; `None` if the batch
    /// has not named it so far.
    fn latest(&self, index: Index) -> Option<bool> {
        if self.ascending {
            let at = self
                .entries
                .binary_search_by_key(&index, |&(i, _)| i)
                .ok()?;
            return Some(self.entries[at].1);
        }
        let &(_, has_value) = self.entries.iter().rev().find(|(i, _)| *i == index)?;
        Some(has_value)
    }
}

/// The latest durable state of one index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot<V> {
    pub promised: Ballot,
    pub accepted: Ballot,
    pub chosen: bool,
    pub value: Option<V>,
}

/// Everything a store knows, as of its last durable write.
#[derive(Clone, Debug)]
pub(crate) struct LogState<V> {
    pub node: NodeState,
    /// Every index at or below this was dropped by `compact`.
    pub compacted_through: Index,
    /// Largest k >= compacted_through with every index in (compacted_through, k] chosen.
    pub chosen_through: Index,
    /// Highest index that ever had a record, at least `compacted_through`.
    pub last_index: Index,
    /// Every held index (> compacted_through) that has a record.
    pub slots: BTreeMap<Index, Slot<V>>,
}

impl<V: HeldValue> LogState<V> {
    pub fn new(compacted_through: Index) -> LogState<V> {
        LogState {
            node: NodeState::default(),
            compacted_through,
            chosen_through: compacted_through,
            last_index: compacted_through,
            slots: BTreeMap::new(),
        }
    }

    /// Checks the batch against the write contract before anything of it is
    /// written: indices are non-zero, a chosen instance has a value, and a
    /// `Chosen` mark follows a value (earlier in the batch or already held).
    pub fn validate(&self, batch: &[Record]) -> Result<(), StorageError> {
        // Indices given a value (or had it removed) earlier in this batch.
        let mut in_batch = InBatch::default();
        for (position, record) in batch.iter().enumerate() {
            match record {
                Record::Node(_) => {}
                Record::Instance(state) => {
                    if state.index == 0 || state.index == Index::MAX {
                        return Err(StorageError::invalid(format!(
                            "record {position}: instance index {} is out of range",
                            state.index
                        )));
                    }
                    if state.chosen && state.value.is_none() {
                        return Err(StorageError::invalid(format!(
                            "record {position}: index {} is chosen without a value",
                            state.index
                        )));
                    }
                    in_batch.push(state.index, state.value.is_some());
                }
                Record::Accepted { entries, .. } => {
                    for (index, _) in entries.iter() {
                        if *index == 0 || *index == Index::MAX {
                            return Err(StorageError::invalid(format!(
                                "record {position}: accepted index {index} is out of range"
                            )));
                        }
                        in_batch.push(*index, true);
                    }
                }
                Record::Chosen(index) => self.validate_chosen(position, *index, &in_batch)?,
                Record::ChosenRange { first, last } => {
                    if first > last {
                        return Err(StorageError::invalid(format!(
                            "record {position}: chosen range {first}..={last} is empty"
                        )));
                    }
                    self.validate_chosen_range(position, *first, *last, &in_batch)?;
                }
            }
        }
        Ok(())
    }

    /// The indices of `first..=last` above the compaction point (marks at
    /// or below it are ignored), so a range reaching far into the compacted
    /// prefix costs nothing to check or apply.
    pub fn live_range(&self, first: Index, last: Index) -> std::ops::RangeInclusive<Index> {
        first.max(self.compacted_through.saturating_add(1))..=last
    }

    /// Checks the chosen mark for `index` of record `position`: a value is
    /// held there, given earlier in the batch (`in_batch`) or already.
    fn validate_chosen(
        &self,
        position: usize,
        index: Index,
        in_batch: &InBatch,
    ) -> Result<(), StorageError> {
        if index == 0 {
            return Err(StorageError::invalid(format!(
                "record {position}: chosen mark for index 0"
            )));
        }
        self.validate_chosen_range(position, index, index, in_batch)
    }

    /// Checks the chosen marks of every live index of `first..=last` (those
    /// at or below the compaction point are ignored): a value is held
    /// there, given earlier in the batch (`in_batch`) or already. One walk
    /// over the held slots, not a lookup per index.
    fn validate_chosen_range(
        &self,
        position: usize,
        first: Index,
        last: Index,
        in_batch: &InBatch,
    ) -> Result<(), StorageError> {
        let live = self.live_range(first, last);
        if live.is_empty() {
            // Wholly compacted (a `BTreeMap` range must not be reversed).
            return Ok(());
        }
        let mut held = self.slots.range(live.clone()).peekable();
        for index in live {
            while held.next_if(|(&at, _)| at < index).is_some() {}
            let has_value = match in_batch.latest(index) {
                Some(has_value) => has_value,
                None => held
                    .peek()
                    .is_some_and(|(&at, slot)| at == index && slot.value.is_some()),
            };
            if !has_value {
                return Err(StorageError::invalid(format!(
                    "record {position}: chosen mark for index {index}, which holds no value"
                )));
            }
        }
        Ok(())
    }

    /// Applies one `Instance` record whose value (if any) is held as `value`.
    pub fn apply_instance(&mut self, state: &InstanceState, value: Option<V>) {
        debug_assert_eq!(state.value.is_some(), value.is_some());
        let slot = Slot {
            promised: state.promised,
            accepted: state.accepted,
            chosen: state.chosen,
            value,
        };
        self.apply_slot(state.index, slot);
    }

    /// Applies one entry of an `Accepted` record (an unchosen value accepted
    /// and promised at `ballot`), its value held as `value`.
    pub fn apply_accepted(&mut self, index: Index, ballot: Ballot, value: V) {
        let slot = Slot {
            promised: ballot,
            accepted: ballot,
            chosen: false,
            value: Some(value),
        };
        self.apply_slot(index, slot);
    }

    fn apply_slot(&mut self, index: Index, slot: Slot<V>) {
        if index <= self.compacted_through {
            return;
        }
        let chosen = slot.chosen;
        self.slots.insert(index, slot);
        self.last_index = self.last_index.max(index);
        if !chosen && index <= self.chosen_through {
            // The contract lets an Instance record replace a chosen state;
            // the prefix then ends just below it.
            self.chosen_through = index - 1;
        }
        // Only a chosen slot right after the prefix can extend it (an
        // unchosen one ends it where it is).
        if chosen && self.chosen_through.checked_add(1) == Some(index) {
            self.advance_chosen_through();
        }
    }

    /// Applies the `Chosen` marks of `first..=last` (those at or below the
    /// compaction point are ignored) in one walk over the held slots; false
    /// if some live index holds no value (the others are marked; the caller
    /// treats that as corruption when replaying, validation prevents it
    /// when writing).
    pub fn apply_chosen_range(&mut self, first: Index, last: Index) -> bool {
        let live = self.live_range(first, last);
        let (start, end) = (*live.start(), *live.end());
        if start > end {
            return true;
        }
        let mut marked = 0u64;
        for (_, slot) in self.slots.range_mut(live) {
            if slot.value.is_some() {
                slot.chosen = true;
                marked += 1;
            }
        }
        // Only a mark for the index right after the prefix extends it.
        if self
            .chosen_through
            .checked_add(1)
            .is_some_and(|next| (start..=end).contains(&next))
        {
            self.advance_chosen_through();
        }
        marked == end - start + 1
    }

    fn advance_chosen_through(&mut self) {
        let Some(next) = self.chosen_through.checked_add(1) else {
            return;
        };
        // One walk from the prefix's end instead of a lookup per index.
        let mut expected = next;
        for (&index, slot) in self.slots.range(next..) {
            if index != expected || !slot.chosen {
                break;
            }
            self.chosen_through = index;
            match index.checked_add(1) {
                Some(following) => expected = following,
                None => break,
            }
        }
    }

    /// Drops every index at or below `through` (no-op when already dropped).
    pub fn compact(&mut self, through: Index) {
        if through <= self.compacted_through {
            return;
        }
        self.compacted_through = through;
        self.slots = self.slots.split_off(&through.saturating_add(1));
        self.last_index = self.last_index.max(through);
        self.chosen_through = self.chosen_through.max(through);
        self.advance_chosen_through();
    }

    pub fn bounds(&self) -> (Index, Index) {
        (self.compacted_through + 1, self.last_index)
    }

    /// The chosen value's handle at `index`.
    pub fn chosen(&self, index: Index) -> Result<Option<&V>, StorageError> {
        if index <= self.compacted_through {
            return Err(StorageError::Compacted {
                first_index: self.compacted_through + 1,
            });
        }
        Ok(self
            .slots
            .get(&index)
            .filter(|slot| slot.chosen)
            .and_then(|slot| slot.value.as_ref()))
    }

    /// The handles `chosen_range` returns: consecutive chosen indices from
    /// `from`, within `bytes_max` payload bytes (at least one entry).
    pub fn chosen_range(
        &self,
        from: Index,
        to: Index,
        bytes_max: usize,
    ) -> Result<Vec<(Index, &V)>, StorageError> {
        if from <= self.compacted_through {
            return Err(StorageError::Compacted {
                first_index: self.compacted_through + 1,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut expected = from;
        for (&index, slot) in self.slots.range(from..=to.max(from)) {
            if index != expected || !slot.chosen || index > to {
                break;
            }
            let Some(value) = slot.value.as_ref() else {
                break;
            };
            let len = value.payload_len();
            if !out.is_empty() && bytes.saturating_add(len) > bytes_max {
                break;
            }
            bytes = bytes.saturating_add(len);
            out.push((index, value));
            expected = index + 1;
        }
        Ok(out)
    }

    /// Calls `load` for every value `recover` must return and assembles the
    /// recovered state.
    pub fn recover(
        &self,
        dedup_window: u64,
        mut load: impl FnMut(Index, &V) -> Result<Value, StorageError>,
    ) -> Result<spaxos_core::RecoveredState, StorageError> {
        let mut instances = Vec::new();
        for (&index, slot) in self.slots.range(self.chosen_through.saturating_add(1)..) {
            let value = match &slot.value {
                Some(held) => Some(load(index, held)?),
                None => None,
            };
            instances.push(InstanceState {
                index,
                promised: slot.promised,
                accepted: slot.accepted,
                value,
                chosen: slot.chosen,
            });
        }
        // (chosen_through - dedup_window, chosen_through], and never below
        // what is held.
        let window_start = self
            .chosen_through
            .saturating_sub(dedup_window)
            .saturating_add(1)
            .max(self.compacted_through.saturating_add(1));
        let window_end = self.chosen_through.saturating_add(1).max(window_start);
        let recent_reqids = self
            .slots
            .range(window_start..window_end)
            .filter(|(_, slot)| slot.chosen)
            .filter_map(|(&index, slot)| {
                let reqid = slot.value.as_ref()?.reqid()?;
                Some((index, reqid))
            })
            .collect();
        Ok(spaxos_core::RecoveredState {
            node: self.node,
            chosen_through: self.chosen_through,
            instances,
            recent_reqids,
        })
    }
}
