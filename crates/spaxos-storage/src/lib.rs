//! Durable storage for spaxos: the [`Storage`] trait the runtime's storage
//! thread drives, [`MemStorage`] for tests and simulation, and
//! [`DiskStorage`], an append-only log of checksummed segments (format in
//! docs/STORAGE.md).
//!
//! A write batch is a slice of [`Record`]s applied in order, made durable as
//! a whole with one sync (group commit):
//!
//! ```
//! use spaxos_core::{Ballot, InstanceState, Record, Value};
//! use spaxos_storage::{DiskStorage, Storage};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut store = DiskStorage::open(dir.path()).unwrap();
//! let value = Value::One { reqid: 7, value: bytes::Bytes::from_static(b"hello") };
//! store
//!     .write(&[
//!         Record::Instance(InstanceState {
//!             index: 1,
//!             promised: Ballot::new(1, 1),
//!             accepted: Ballot::new(1, 1),
//!             value: Some(value.clone()),
//!             chosen: false,
//!         }),
//!         Record::Chosen(1),
//!     ])
//!     .unwrap();
//! drop(store);
//!
//! // After a restart the chosen value can be read back by index.
//! let store = DiskStorage::open(dir.path()).unwrap();
//! assert_eq!(store.chosen(1).unwrap(), Some(value));
//! assert_eq!(store.recover(100).unwrap().chosen_through, 1);
//! ```

mod codec;
mod disk;
mod error;
mod mem;
mod state;

pub use codec::FORMAT_VERSION;
pub use disk::{DiskOptions, DiskStorage, Preallocate};
pub use error::StorageError;
pub use mem::MemStorage;

use spaxos_core::{Index, Record, RecoveredState, Value};

/// Durable hard state and chosen values of one node.
///
/// Every method sees the state as of the last successful [`Storage::write`]
/// or [`Storage::write_deferred`]; a failed write changes nothing that can
/// be read.
pub trait Storage: Send {
    /// Appends the batch and makes it durable (one sync per call: group
    /// commit). `Ok` means durable. Records at or below the compaction point
    /// are ignored.
    fn write(&mut self, batch: &[Record]) -> Result<(), StorageError>;

    /// [`Storage::write`], calling `durable` as soon as the batch is
    /// durable, possibly before the store has finished its own bookkeeping
    /// of it (a [`DiskStorage`] updates its in-memory index after), so that
    /// whatever waits for the batch (messages that promise its state) can
    /// leave sooner. `durable` is called exactly once if the write succeeds
    /// and never if it fails; the store cannot be read while it runs, and
    /// when `write_then` returns every method sees the batch.
    ///
    /// ```
    /// use spaxos_core::{NodeState, Record};
    /// use spaxos_storage::{MemStorage, Storage};
    ///
    /// let mut store = MemStorage::new();
    /// let mut released = false;
    /// store
    ///     .write_then(&[Record::Node(NodeState::default())], &mut || released = true)
    ///     .unwrap();
    /// assert!(released);
    /// ```
    fn write_then(
        &mut self,
        batch: &[Record],
        durable: &mut dyn FnMut(),
    ) -> Result<(), StorageError> {
        self.write(batch)?;
        durable();
        Ok(())
    }

    /// [`Storage::write`] for a batch of `Chosen` marks alone, without
    /// waiting for a sync: reads see the marks at once, and they become
    /// durable with the next `write` (an empty one will do; a `DiskStorage`
    /// also writes them when dropped), written in its batch ahead of its
    /// records. A crash before then loses them, which
    /// costs only time: a mark records a fact the peers that accepted the
    /// value can teach again (until they do, the restarted node reads those
    /// indices as not chosen). A batch with any other record is refused
    /// with [`StorageError::InvalidBatch`].
    ///
    /// Saves an fdatasync when a node learns an entry is chosen between two
    /// writes of its own (a leader at low load).
    fn write_deferred(&mut self, batch: &[Record]) -> Result<(), StorageError> {
        check_deferrable(batch)?;
        self.write(batch)
    }

    /// Chosen marks taken by [`Storage::write_deferred`] that are not
    /// durable yet: the next `write` (an empty one will do) makes them so.
    /// 0 for a store that writes deferred marks at once (the default).
    fn deferred_marks(&self) -> usize {
        0
    }

    /// How many times this store has synced a write to disk (one
    /// `fdatasync` per batch) since it was opened, for metrics; `None` for
    /// a store that does not count them. A write with nothing new to store
    /// (every record at or below the compaction point, or an empty one with
    /// no deferred marks) makes no sync.
    fn syncs(&self) -> Option<u64> {
        None
    }

    /// The state as of the last successful write. `chosen_through` is the
    /// largest k such that every index in (compacted_through, k] is chosen
    /// (k >= compacted_through); `instances` holds every index above
    /// `chosen_through` that has a record (sorted, with its latest state,
    /// chosen flag and value); `recent_reqids` holds (index, reqid) of chosen
    /// non-noop entries with index in
    /// (chosen_through - dedup_window, chosen_through].
    fn recover(&self, dedup_window: u64) -> Result<RecoveredState, StorageError>;

    /// The chosen value at `index`: `Ok(Some)` if chosen, `Ok(None)` if
    /// unknown or not chosen, `Err(Compacted { first_index })` if dropped.
    fn chosen(&self, index: Index) -> Result<Option<Value>, StorageError>;

    /// Chosen values in `from..=to`, in order, stopping at the first index
    /// that is not chosen, with at most `bytes_max` payload bytes (but at
    /// least one entry if `from` is chosen). `Err(Compacted)` if `from` is
    /// below what is held.
    fn chosen_range(
        &self,
        from: Index,
        to: Index,
        bytes_max: usize,
    ) -> Result<Vec<(Index, Value)>, StorageError>;

    /// The lowest index still held (compacted_through + 1) and the highest
    /// index with any record (at least compacted_through).
    fn bounds(&self) -> (Index, Index);

    /// The application checkpointed through `through`: drop everything at or
    /// below it and reclaim whole segments. The compaction point survives a
    /// restart; a lower `through` than before is a no-op.
    fn compact(&mut self, through: Index) -> Result<(), StorageError>;
}

/// Refuses a deferred batch holding anything but `Chosen` marks.
pub(crate) fn check_deferrable(batch: &[Record]) -> Result<(), StorageError> {
    let refused = match batch.iter().find(|r| r.chosen_indices().is_none()) {
        None => return Ok(()),
        Some(Record::Instance(state)) => format!("the state of instance {}", state.index),
        Some(Record::Accepted { entries, .. }) => {
            format!("accepted values at {} indices", entries.len())
        }
        Some(_) => "the node state".to_string(),
    };
    Err(StorageError::invalid(format!(
        "a deferred write carries only chosen marks, not {refused}"
    )))
}
