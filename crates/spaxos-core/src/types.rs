//! Plain data shared by the core, storage, transport and runtime.

use std::sync::Arc;

use bytes::Bytes;

/// A member of the group: a non-zero id from the config.
pub type NodeId = u64;
/// A log position. The first index is 1; 0 means "none".
pub type Index = u64;
/// A client request id: non-zero and unique per request.
pub type ReqId = u64;

/// A Paxos ballot (proposal number), unique per node: ordered by `round`, then
/// by `node`. [`Ballot::ZERO`] is below every real ballot.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
}

impl Ballot {
    /// Below every ballot a node can use.
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    pub fn new(round: u64, node: NodeId) -> Ballot {
        Ballot { round, node }
    }

    pub fn is_zero(&self) -> bool {
        *self == Ballot::ZERO
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

/// What one log index holds once decided: a client request or a no-op.
///
/// `One` is the common case (one value under one reqid); `Many` is the seed's
/// multi-value proposal (several values under one reqid at one index). Both
/// clone in O(1).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    /// Fills a hole; carries no request.
    Noop,
    One {
        reqid: ReqId,
        value: Bytes,
    },
    Many {
        reqid: ReqId,
        values: Arc<[Bytes]>,
    },
}

impl Value {
    /// `*slot = Some(self.clone())`, with the payload's clone written into
    /// its place: cloning a `Bytes` into a temporary and moving it costs a
    /// store-forwarding stall on every accepted entry.
    #[inline]
    pub fn clone_into_slot(&self, slot: &mut Option<Value>) {
        match self {
            Value::One { reqid, value } => {
                let placed = slot.insert(Value::One {
                    reqid: *reqid,
                    value: Bytes::new(),
                });
                if let Value::One { value: place, .. } = placed {
                    // SAFETY: `place` holds an empty `Bytes` (static,
                    // nothing to drop), overwritten without reading it.
                    unsafe { std::ptr::write(place, value.clone()) };
                }
            }
            other => *slot = Some(other.clone()),
        }
    }

    /// The request id, or `None` for a no-op.
    pub fn reqid(&self) -> Option<ReqId> {
        match self {
            Value::Noop => None,
            Value::One { reqid, .. } | Value::Many { reqid, .. } => Some(*reqid),
        }
    }

    /// The payloads (empty for a no-op).
    pub fn values(&self) -> &[Bytes] {
        match self {
            Value::Noop => &[],
            Value::One { value, .. } => std::slice::from_ref(value),
            Value::Many { values, .. } => values,
        }
    }

    /// Payload bytes, for batching limits.
    pub fn payload_len(&self) -> usize {
        self.values().iter().map(|v| v.len()).sum()
    }

    pub fn is_noop(&self) -> bool {
        matches!(self, Value::Noop)
    }
}

/// The entries of a phase 2 batch: `(index, value)` in the order given,
/// shared (an `Arc`) so the leader's record and its accept to every peer
/// are one vector, and a follower's record is the message's own.
pub type AcceptEntries = Arc<Vec<(Index, Value)>>;

/// Node-wide hard state: persisted before any message that depends on it.
#[derive(Copy, Clone, PartialEq, Eq, Debug, Default)]
pub struct NodeState {
    /// Highest round this node has used for its own ballots. A restarted node
    /// starts above it, so a ballot is never reused.
    pub max_round: u64,
    /// Node-wide promise (the leader's phase 1 covers every index): no accept
    /// or prepare below this ballot is granted at any index.
    pub promised: Ballot,
}

/// Durable state of one Paxos instance (the seed's hard state, plus `chosen`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InstanceState {
    pub index: Index,
    /// Per-index promise (from single-index prepares).
    pub promised: Ballot,
    /// Ballot of the accepted value, `ZERO` if none.
    pub accepted: Ballot,
    /// Accepted value; once `chosen`, the chosen value.
    pub value: Option<Value>,
    pub chosen: bool,
}

impl InstanceState {
    pub fn empty(index: Index) -> InstanceState {
        InstanceState {
            index,
            promised: Ballot::ZERO,
            accepted: Ballot::ZERO,
            value: None,
            chosen: false,
        }
    }
}

/// One entry of a storage write batch. Records of a batch are applied in
/// order; a batch is durable as a whole before any message produced with it is
/// sent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Record {
    /// Replace the node-wide hard state.
    Node(NodeState),
    /// Replace the durable state of one instance.
    Instance(InstanceState),
    /// Phase 2 of one batch: every `(index, value)` of `entries` was
    /// accepted (and promised) at `ballot` and is not known chosen. The same
    /// as one `Instance` record per entry, in order, with
    /// `promised = accepted = ballot`, `value = Some(value)` and
    /// `chosen = false`; one record per batch instead of one per entry.
    Accepted {
        ballot: Ballot,
        entries: AcceptEntries,
    },
    /// The value held by the latest `Instance` record (or `Accepted` entry)
    /// of this index is chosen. Saves writing the value twice in the common
    /// case.
    Chosen(Index),
    /// `Chosen(i)` for every `i` in `first..=last`, in order: a run of
    /// indices learned chosen together, one record instead of one per
    /// index. The core writes it with `first < last`; storage refuses
    /// `first > last` (an empty range).
    ChosenRange { first: Index, last: Index },
}

impl Record {
    /// How many records of one index each this stands for (for counting
    /// what was written): the entries of an `Accepted` record, the indices
    /// of a `ChosenRange` (0 if empty, saturating), else 1.
    pub fn entries(&self) -> usize {
        match self {
            Record::Accepted { entries, .. } => entries.len(),
            Record::ChosenRange { first, last } if first > last => 0,
            Record::ChosenRange { first, last } => {
                usize::try_from(last - first).map_or(usize::MAX, |n| n.saturating_add(1))
            }
            _ => 1,
        }
    }

    /// The indices a `Chosen` or `ChosenRange` record marks chosen (empty
    /// for a range with `first > last`); `None` for any other record.
    pub fn chosen_indices(&self) -> Option<std::ops::RangeInclusive<Index>> {
        match *self {
            Record::Chosen(index) => Some(index..=index),
            Record::ChosenRange { first, last } => Some(first..=last),
            _ => None,
        }
    }

    /// Appends "`index` is chosen" to `records`: extends the last record if
    /// it marks the run just below `index`, else adds a `Chosen(index)`.
    pub fn push_chosen(records: &mut Vec<Record>, index: Index) {
        Record::push_chosen_run(records, index, index);
    }

    /// Appends "every index in `first..=last` is chosen" to `records`
    /// (`first <= last`): extends the last record if it marks the run just
    /// below `first`, else adds a `Chosen` or `ChosenRange` record.
    pub fn push_chosen_run(records: &mut Vec<Record>, first: Index, last: Index) {
        debug_assert!(first <= last, "chosen run {first}..={last}");
        let run_first = match records.last() {
            Some(Record::Chosen(below)) if below.checked_add(1) == Some(first) => *below,
            Some(Record::ChosenRange {
                first: below_first,
                last: below,
            }) if below.checked_add(1) == Some(first) => *below_first,
            _ => first,
        };
        let record = match run_first == last {
            true => Record::Chosen(last),
            false => Record::ChosenRange {
                first: run_first,
                last,
            },
        };
        match (run_first < first, records.last_mut()) {
            (true, Some(below)) => *below = record,
            _ => records.push(record),
        }
    }

    /// `records` with every `Accepted` record written out as the `Instance`
    /// records it stands for (one per entry, in order), every `ChosenRange`
    /// as its `Chosen` marks, and the others as they are: for checkers and
    /// tests that compare durable state record by record.
    ///
    /// ```
    /// use spaxos_core::{Ballot, InstanceState, Record, Value};
    /// let ballot = Ballot::new(1, 1);
    /// let batch = [Record::Accepted { ballot, entries: vec![(7, Value::Noop)].into() }];
    /// assert_eq!(
    ///     Record::per_index(&batch),
    ///     vec![Record::Instance(InstanceState {
    ///         index: 7,
    ///         promised: ballot,
    ///         accepted: ballot,
    ///         value: Some(Value::Noop),
    ///         chosen: false,
    ///     })]
    /// );
    /// ```
    pub fn per_index(records: &[Record]) -> Vec<Record> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            match record {
                // Records that stand for nothing stay as they are, so a
                // comparison with an expected list still sees them.
                Record::Accepted { entries, .. } if entries.is_empty() => out.push(record.clone()),
                Record::ChosenRange { first, last } if first > last => out.push(record.clone()),
                Record::Accepted { ballot, entries } => {
                    out.extend(entries.iter().map(|(index, value)| {
                        Record::Instance(InstanceState {
                            index: *index,
                            promised: *ballot,
                            accepted: *ballot,
                            value: Some(value.clone()),
                            chosen: false,
                        })
                    }))
                }
                Record::ChosenRange { first, last } => {
                    out.extend((*first..=*last).map(Record::Chosen))
                }
                other => out.push(other.clone()),
            }
        }
        out
    }
}

/// A decided log entry as handed to the application.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChosenItem {
    pub index: Index,
    pub value: Value,
}

/// The outcome of one proposal, reported exactly once to the node that took it.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The proposal is in the log at `index`.
    Chosen { index: Index },
    /// Another value was chosen at `index`, where this proposal was tried, and
    /// the proposal is nowhere else in the log (only reported with
    /// `retry_lost = false`).
    Lost { index: Index },
}

/// What storage recovered at start; the core's [`crate::Node::restore`] input.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RecoveredState {
    pub node: NodeState,
    /// Every index at or below this is chosen (or compacted away).
    pub chosen_through: Index,
    /// Durable state of every instance above `chosen_through`, by index.
    pub instances: Vec<InstanceState>,
    /// Request ids of the chosen entries at the end of the prefix (indices in
    /// `(chosen_through - dedup_history, chosen_through]`, see
    /// `CoreConfig::dedup_history`), for duplicate
    /// detection after a restart. The caller reads them from storage.
    pub recent_reqids: Vec<(Index, ReqId)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(indices: &[Index]) -> Vec<Record> {
        let mut records = vec![Record::Node(NodeState::default())];
        for &index in indices {
            Record::push_chosen(&mut records, index);
        }
        records.remove(0);
        records
    }

    #[test]
    fn consecutive_chosen_marks_become_one_range() {
        assert_eq!(marks(&[5]), vec![Record::Chosen(5)]);
        assert_eq!(
            marks(&[5, 6, 7]),
            vec![Record::ChosenRange { first: 5, last: 7 }]
        );
        assert_eq!(
            marks(&[5, 7, 8, 3]),
            vec![
                Record::Chosen(5),
                Record::ChosenRange { first: 7, last: 8 },
                Record::Chosen(3)
            ]
        );
        // Only a run just below extends; a repeat or a gap starts anew.
        assert_eq!(marks(&[5, 5]), vec![Record::Chosen(5), Record::Chosen(5)]);
        assert_eq!(
            marks(&[Index::MAX, 0]),
            vec![Record::Chosen(Index::MAX), Record::Chosen(0)]
        );
        let ranges = marks(&[2, 3, 4, 9]);
        assert_eq!(
            Record::per_index(&ranges),
            [2, 3, 4, 9].map(Record::Chosen).to_vec()
        );
        assert_eq!(ranges.iter().map(Record::entries).sum::<usize>(), 4);
    }

    #[test]
    fn a_run_of_chosen_marks_joins_the_run_just_below_it() {
        let mut records = Vec::new();
        Record::push_chosen_run(&mut records, 7, 7);
        assert_eq!(records, vec![Record::Chosen(7)]);
        Record::push_chosen_run(&mut records, 8, 10);
        assert_eq!(records, vec![Record::ChosenRange { first: 7, last: 10 }]);
        Record::push_chosen_run(&mut records, 12, 13);
        Record::push_chosen_run(&mut records, 14, 14);
        assert_eq!(
            records,
            vec![
                Record::ChosenRange { first: 7, last: 10 },
                Record::ChosenRange {
                    first: 12,
                    last: 14
                }
            ]
        );
    }

    #[test]
    fn malformed_batch_records_count_and_expand_without_panicking() {
        let empty_range = Record::ChosenRange { first: 5, last: 4 };
        let whole_space = Record::ChosenRange {
            first: 0,
            last: Index::MAX,
        };
        let no_entries = Record::Accepted {
            ballot: Ballot::new(1, 1),
            entries: Vec::new().into(),
        };
        assert_eq!(empty_range.chosen_indices().map(|r| r.count()), Some(0));
        assert_eq!(Record::Chosen(3).chosen_indices(), Some(3..=3));
        assert_eq!(no_entries.chosen_indices(), None);
        assert_eq!(empty_range.entries(), 0);
        assert_eq!(whole_space.entries(), usize::MAX);
        assert_eq!(no_entries.entries(), 0);
        // Records standing for nothing stay visible to a comparison.
        let kept = [empty_range, no_entries];
        assert_eq!(Record::per_index(&kept), kept.to_vec());
    }

    #[test]
    fn a_value_cloned_into_a_slot_equals_the_value() {
        let one = Value::One {
            reqid: 7,
            value: Bytes::from(vec![1u8, 2, 3]),
        };
        let many = Value::Many {
            reqid: 8,
            values: Arc::from(vec![Bytes::from_static(b"a"), Bytes::new()]),
        };
        for value in [one.clone(), many, Value::Noop] {
            // Into an empty slot, and over every kind of value.
            let mut slots = [None, Some(one.clone()), Some(Value::Noop)];
            for slot in &mut slots {
                value.clone_into_slot(slot);
                assert_eq!(slot.as_ref(), Some(&value));
            }
        }
        // The clone shares the payload, as `clone` does.
        let mut slot = None;
        one.clone_into_slot(&mut slot);
        let (Some(Value::One { value: a, .. }), Value::One { value: b, .. }) = (&slot, &one) else {
            panic!("not One");
        };
        assert_eq!(a.as_ptr(), b.as_ptr());
    }

    #[test]
    fn a_chosen_mark_after_another_record_is_not_merged_across_it() {
        let mut records = vec![Record::Chosen(1)];
        records.push(Record::Node(NodeState::default()));
        Record::push_chosen(&mut records, 2);
        assert_eq!(records.len(), 3);
        assert_eq!(records[2], Record::Chosen(2));
    }
}
