//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use spaxos_core::{Ballot, Index, InstanceState, NodeState, Record, Value};
use spaxos_storage::{DiskOptions, DiskStorage, MemStorage, Preallocate, Storage};

/// A value whose payload is derived from `reqid`, `len` bytes long.
pub fn value(reqid: u64, len: usize) -> Value {
    let payload: Vec<u8> = (0..len).map(|i| (reqid as usize + i) as u8).collect();
    Value::One {
        reqid,
        value: Bytes::from(payload),
    }
}

pub fn many(reqid: u64, parts: &[&[u8]]) -> Value {
    Value::Many {
        reqid,
        values: Arc::from(
            parts
                .iter()
                .map(|p| Bytes::copy_from_slice(p))
                .collect::<Vec<_>>(),
        ),
    }
}

/// An accepted (not chosen) instance.
pub fn accepted(index: Index, round: u64, value: Value) -> Record {
    Record::Instance(InstanceState {
        index,
        promised: Ballot::new(round, 1),
        accepted: Ballot::new(round, 1),
        value: Some(value),
        chosen: false,
    })
}

/// An instance recorded as chosen in one record.
pub fn chosen(index: Index, value: Value) -> Record {
    Record::Instance(InstanceState {
        index,
        promised: Ballot::new(1, 1),
        accepted: Ballot::new(1, 1),
        value: Some(value),
        chosen: true,
    })
}

pub fn node(max_round: u64) -> Record {
    Record::Node(NodeState {
        max_round,
        promised: Ballot::new(max_round, 2),
    })
}

/// Small segments and no preallocation, so tests see many segments and
/// files end where the data ends.
pub fn small_options() -> DiskOptions {
    DiskOptions {
        segment_bytes_max: 4096,
        preallocate: Preallocate::None,
    }
}

/// Zero-filled segments of 64 KiB: preallocated space after the data.
pub fn zero_filled_options() -> DiskOptions {
    DiskOptions {
        segment_bytes_max: 64 << 10,
        preallocate: Preallocate::ZeroFill,
    }
}

/// Opens and reopens one kind of store, keeping its durable state.
pub trait Harness {
    type S: Storage;
    fn open(&mut self) -> Self::S;
    /// Simulates a restart: the durable state is all that is kept.
    fn reopen(&mut self, store: Self::S) -> Self::S;
    /// Simulates a crash: only what the store has synced is kept (a clean
    /// close would write the chosen marks it holds deferred).
    fn crash(&mut self, store: Self::S) -> Self::S;
}

pub struct MemHarness;

impl Harness for MemHarness {
    type S = MemStorage;
    fn open(&mut self) -> MemStorage {
        MemStorage::new()
    }
    fn reopen(&mut self, store: MemStorage) -> MemStorage {
        store.clone()
    }
    fn crash(&mut self, store: MemStorage) -> MemStorage {
        // Every write of a `MemStorage` is durable at once.
        store.clone()
    }
}

pub struct DiskHarness {
    pub dir: tempfile::TempDir,
    pub options: DiskOptions,
}

impl DiskHarness {
    pub fn new(options: DiskOptions) -> DiskHarness {
        DiskHarness {
            dir: tempfile::tempdir().expect("tempdir"),
            options,
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Harness for DiskHarness {
    type S = DiskStorage;
    fn open(&mut self) -> DiskStorage {
        DiskStorage::open_with(self.dir.path(), self.options).expect("open")
    }
    fn reopen(&mut self, store: DiskStorage) -> DiskStorage {
        drop(store);
        self.open()
    }
    fn crash(&mut self, store: DiskStorage) -> DiskStorage {
        // The files as they are now, before the close writes anything.
        let at_crash = files_in(self.dir.path());
        drop(store);
        for (path, _) in files_in(self.dir.path()) {
            if !at_crash.iter().any(|(kept, _)| *kept == path) {
                std::fs::remove_file(&path).expect("remove a file the close made");
            }
        }
        for (path, data) in &at_crash {
            std::fs::write(path, data).expect("restore a file");
        }
        self.open()
    }
}

/// Every regular file in `dir` with its contents.
fn files_in(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            // A helper may remove a temporary file meanwhile.
            if let Ok(data) = std::fs::read(&path) {
                files.push((path, data));
            }
        }
    }
    files
}
