//! [`DiskStorage`]: an append-only log of checksummed batches in segment
//! files, one directory per node. The format is in docs/STORAGE.md.
//!
//! Only the state of each index (ballots, chosen flag) and the position of
//! its value live in memory; values are read back from the segment files.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use spaxos_core::{Index, Record, RecoveredState, ReqId, Value};

use crate::codec::{
    self, align, BatchHeader, HeaderError, SegmentHeader, BATCH_ALIGN, BATCH_BODY_MAX,
    BATCH_HEADER_LEN, FORMAT_VERSION, SEGMENT_HEADER_LEN,
};
use crate::error::StorageError;
use crate::state::{HeldValue, LogState};
use crate::Storage;

const LOCK_FILE: &str = "LOCK";
const FLOOR_FILE: &str = "FLOOR";
const FLOOR_TMP_FILE: &str = "FLOOR.tmp";
const SEGMENT_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".tmp";
/// The next segment's file while it is prepared; removed at open like any
/// other temporary file.
const SPARE_FILE: &str = "spare.tmp";
/// Segment ids are printed with this many digits, so names sort by id.
const SEGMENT_ID_DIGITS: usize = 20;

/// How new segment files get their space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preallocate {
    /// Files grow as batches are appended (every fdatasync also commits the
    /// new file size).
    None,
    /// `fallocate` the whole segment: cheap to create, but ext4 still
    /// converts unwritten extents at each fdatasync.
    Fallocate,
    /// Write zeros over the whole segment when it is created: costs one
    /// sequential write of the segment, then each fdatasync only flushes
    /// data. The fastest for writes on ext4 (see docs/STORAGE.md).
    ZeroFill,
}

/// Tuning of a [`DiskStorage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// A new segment is started when a batch would end past this size (a
    /// single larger batch gets a segment of its own).
    pub segment_bytes_max: u64,
    pub preallocate: Preallocate,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            segment_bytes_max: 64 << 20,
            preallocate: Preallocate::ZeroFill,
        }
    }
}

impl DiskOptions {
    /// Smallest accepted `segment_bytes_max`.
    pub const SEGMENT_BYTES_MIN: u64 = 1024;

    fn validate(&self) -> Result<(), StorageError> {
        if self.segment_bytes_max < Self::SEGMENT_BYTES_MIN {
            return Err(StorageError::invalid(format!(
                "segment_bytes_max {} is below the minimum {}",
                self.segment_bytes_max,
                Self::SEGMENT_BYTES_MIN
            )));
        }
        Ok(())
    }
}

/// Where the value of an index lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ValueRef {
    Noop,
    Stored {
        segment_id: u64,
        /// Byte offset of the record frame in the segment file.
        offset: u64,
        frame_len: u32,
        payload_len: u32,
        reqid: ReqId,
    },
}

impl HeldValue for ValueRef {
    fn reqid(&self) -> Option<ReqId> {
        match self {
            ValueRef::Noop => None,
            ValueRef::Stored { reqid, .. } => Some(*reqid),
        }
    }
    fn payload_len(&self) -> usize {
        match self {
            ValueRef::Noop => 0,
            ValueRef::Stored { payload_len, .. } => *payload_len as usize,
        }
    }
}

struct Segment {
    path: PathBuf,
    file: File,
    /// Highest index of any record in the segment (0 if none): the segment
    /// may be deleted once this is compacted and a later segment exists.
    max_index: Index,
}

/// The on-disk [`Storage`]: one directory per node holding numbered segment
/// files, a compaction floor file and a lock file.
///
/// Each `write` appends one checksummed batch frame to the active segment
/// and calls `fdatasync` once. Opening replays every segment, truncates a
/// torn final batch and refuses corrupt data elsewhere.
pub struct DiskStorage {
    dir: PathBuf,
    options: DiskOptions,
    /// Holds the directory's flock for as long as the store is open.
    _lock: File,
    state: LogState<ValueRef>,
    /// By segment id; the last one is active (appended to).
    segments: BTreeMap<u64, Segment>,
    /// Where the next batch frame goes in the active segment.
    active_offset: u64,
    next_batch_seq: u64,
    /// Reused encoding buffer for batch frames.
    buffer: Vec<u8>,
    /// (position in the batch, entry within an `Accepted` record, offset in
    /// `buffer`, frame length) of each frame written by the current `write`.
    record_frames: Vec<(usize, usize, usize, usize)>,
    /// Set by the first failed write; later writes are refused.
    failed: Option<String>,
    /// Batch frame bytes appended since open (for benchmarks and metrics).
    bytes_written: u64,
    /// Batch frames synced since open (for metrics, `Storage::syncs`).
    syncs: u64,
    /// Chosen marks taken by `write_deferred`: already in `state` (reads
    /// see them), and written at the front of the next `write`'s batch
    /// frame, so they reach the disk only inside a synced frame (never as
    /// unsynced bytes that a later synced frame could overtake).
    deferred: Vec<Index>,
    /// The next segment's file, being preallocated and synced by a helper
    /// thread since the active segment passed half its size.
    spare: Option<Spare>,
}

/// A segment file prepared off the writing thread. Preallocating a
/// segment writes and syncs all of it (64 MiB by default): 40–60 ms on
/// this project's disk, and every node of a cluster reaches the end of a
/// segment at about the same moment, so done inline at the switch it
/// stalled them all together.
struct Spare {
    ready: mpsc::Receiver<Result<File, StorageError>>,
    thread: JoinHandle<()>,
    /// Set when the segment is needed (the helper stops pausing) or will
    /// never be (it stops).
    pace: Arc<AtomicU8>,
}

/// How `preallocate` goes (`Spare::pace`): take your time, finish at once,
/// or give up.
const PACE_PAUSED: u8 = 0;
const PACE_AT_ONCE: u8 = 1;
const PACE_ABANDON: u8 = 2;

impl Spare {
    /// The prepared file, waiting for it if needed; None if preparing it
    /// failed (the caller creates the segment itself, and reports its
    /// error if it fails again).
    fn take(self, dir: &Path) -> Option<File> {
        self.pace.store(PACE_AT_ONCE, Ordering::Relaxed);
        let result = self.ready.recv();
        let _ = self.thread.join();
        match result {
            Ok(Ok(file)) => Some(file),
            failed => {
                if let Ok(Err(error)) = failed {
                    tracing::warn!(dir = %dir.display(), %error, "could not prepare the next segment ahead");
                }
                // Its space may be what the segment made in its place needs
                // (a full disk).
                let _ = fs::remove_file(dir.join(SPARE_FILE));
                None
            }
        }
    }

    /// Stops the helper (no wait for the rest of the segment) and removes
    /// what it wrote.
    fn abandon(self, dir: &Path) {
        self.pace.store(PACE_ABANDON, Ordering::Relaxed);
        let _ = self.thread.join();
        let _ = fs::remove_file(dir.join(SPARE_FILE));
    }
}

/// Creates `path` with the whole segment's space (header included, written
/// later, see `start_segment`) and syncs it, at the `pace` given
/// (`preallocate`).
fn create_segment_file(
    path: &Path,
    options: &DiskOptions,
    pace: &AtomicU8,
) -> Result<File, StorageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| StorageError::io(path, "create segment", e))?;
    preallocate(&file, path, 0, options, pace)?;
    file.sync_all()
        .map_err(|e| StorageError::io(path, "fsync", e))?;
    Ok(file)
}

/// A pace for preallocation done where it is needed: no pauses.
static AT_ONCE: AtomicU8 = AtomicU8::new(PACE_AT_ONCE);

/// One step of preallocation's zeros, and the pause after it when paced:
/// a default segment takes ~0.8 s (256 steps), while its predecessor's second half
/// takes seconds to fill at the rates measured here; a store writing
/// faster finds the spare unfinished and hurries it.
const ZERO_STEP_BYTES: usize = 256 << 10;
const ZERO_STEP_PAUSE: Duration = Duration::from_millis(2);

/// Deferred marks held at most (512 KiB); one more and they are written
/// at once.
const DEFERRED_MARKS_MAX: usize = 1 << 16;

impl Drop for DiskStorage {
    /// Closing the store writes the chosen marks still deferred (a crash
    /// would lose them, which is allowed; a clean close need not).
    fn drop(&mut self) {
        if !self.deferred.is_empty() && self.failed.is_none() {
            if let Err(error) = self.write(&[]) {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot write deferred chosen marks on close");
            }
        }
        // The directory lock is released after this: no helper may still
        // write in it.
        if let Some(spare) = self.spare.take() {
            spare.abandon(&self.dir);
        }
    }
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("bounds", &self.state.bounds())
            .finish()
    }
}

impl DiskStorage {
    /// Opens (or creates) the store in `dir` with default options.
    pub fn open(dir: &Path) -> Result<DiskStorage, StorageError> {
        DiskStorage::open_with(dir, DiskOptions::default())
    }

    /// Opens (or creates) the store in `dir`, replaying every segment.
    pub fn open_with(dir: &Path, options: DiskOptions) -> Result<DiskStorage, StorageError> {
        options.validate()?;
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, "create directory", e))?;
        let lock = lock_dir(dir)?;
        let floor = read_floor(dir)?;
        let ids = list_segments(dir)?;

        let mut store = DiskStorage {
            dir: dir.to_path_buf(),
            options,
            _lock: lock,
            state: LogState::new(floor),
            segments: BTreeMap::new(),
            active_offset: 0,
            next_batch_seq: 1,
            buffer: Vec::new(),
            record_frames: Vec::new(),
            failed: None,
            bytes_written: 0,
            syncs: 0,
            deferred: Vec::new(),
            spare: None,
        };
        let mut previous: Option<(PathBuf, u64)> = None;
        for (position, &id) in ids.iter().enumerate() {
            let is_last = position + 1 == ids.len();
            let end = store.replay_segment(id, is_last, previous.as_ref())?;
            previous = Some((segment_path(dir, id), end));
            store.active_offset = end;
        }
        match store.segments.keys().next_back().copied() {
            None => {
                if floor > 0 {
                    return Err(StorageError::corrupt(
                        &dir.join(FLOOR_FILE),
                        0,
                        format!("compacted through {floor} but no segment files exist"),
                    ));
                }
                store.start_segment(1)?;
            }
            Some(id) => {
                let options = store.options;
                let segment = &store.segments[&id];
                let len = file_len(&segment.file, &segment.path)?;
                if len < options.segment_bytes_max {
                    preallocate(&segment.file, &segment.path, len, &options, &AT_ONCE)?;
                    segment
                        .file
                        .sync_all()
                        .map_err(|e| StorageError::io(&segment.path, "fsync", e))?;
                }
            }
        }
        // Finish a compaction that crashed between the floor and the deletes.
        store.delete_compacted_segments()?;
        Ok(store)
    }

    /// The directory of this store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of batch frames appended to the log since this store was
    /// opened (headers, records and padding; not preallocation).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Paths of the segment files, oldest first (the last is active).
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.values().map(|s| s.path.clone()).collect()
    }

    /// Replays segment `id`, returning the offset just past its last batch.
    /// `previous` is the preceding segment's path and end offset.
    fn replay_segment(
        &mut self,
        id: u64,
        is_last: bool,
        previous: Option<&(PathBuf, u64)>,
    ) -> Result<u64, StorageError> {
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(is_last)
            .open(&path)
            .map_err(|e| StorageError::io(&path, "open segment", e))?;
        let data = fs::read(&path).map_err(|e| StorageError::io(&path, "read segment", e))?;
        let header = match SegmentHeader::decode(&data) {
            Ok(header) => header,
            Err(HeaderError::Version(found)) => {
                return Err(StorageError::UnsupportedVersion {
                    path,
                    found,
                    supported: FORMAT_VERSION,
                })
            }
            Err(HeaderError::Bad(reason)) => return Err(StorageError::corrupt(&path, 0, reason)),
        };
        if header.segment_id != id {
            return Err(StorageError::corrupt(
                &path,
                0,
                format!("header names segment {}", header.segment_id),
            ));
        }
        match previous {
            None => self.state.node = header.node,
            Some((previous_path, previous_end)) => {
                if header.first_batch_seq != self.next_batch_seq {
                    return Err(StorageError::corrupt(
                        previous_path,
                        *previous_end,
                        format!(
                            "segment ends before batch {} but the next segment starts at batch {}: batches are missing",
                            self.next_batch_seq, header.first_batch_seq
                        ),
                    ));
                }
                if header.node != self.state.node {
                    return Err(StorageError::corrupt(
                        &path,
                        0,
                        "node state in the segment header differs from the log before it",
                    ));
                }
            }
        }
        self.next_batch_seq = header.first_batch_seq;
        self.segments.insert(
            id,
            Segment {
                path: path.clone(),
                file,
                max_index: 0,
            },
        );

        let mut offset = SEGMENT_HEADER_LEN;
        loop {
            match check_batch(&data, offset, self.next_batch_seq) {
                BatchCheck::Valid(header) => {
                    let body_start = offset + BATCH_HEADER_LEN;
                    self.replay_batch(id, &path, &data, body_start, header.body_len)?;
                    offset = align(body_start + header.body_len);
                    self.next_batch_seq = self.next_batch_seq.checked_add(1).ok_or_else(|| {
                        StorageError::corrupt(
                            &path,
                            offset as u64,
                            "batch sequence number overflows",
                        )
                    })?;
                }
                BatchCheck::End => break,
                BatchCheck::Bad {
                    offset: bad,
                    reason,
                } => {
                    let later = find_later_batch(&data, offset, self.next_batch_seq);
                    if later.is_some() || !is_last {
                        let reason = match later {
                            Some(at) => format!("{reason} (a valid batch follows at offset {at})"),
                            None => format!("{reason} (in a sealed segment)"),
                        };
                        return Err(StorageError::corrupt(&path, bad as u64, reason));
                    }
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        reason,
                        "truncating a torn batch at the tail of the log (a write that never completed)"
                    );
                    let segment = &self.segments[&id];
                    segment
                        .file
                        .set_len(offset as u64)
                        .map_err(|e| StorageError::io(&path, "truncate torn tail", e))?;
                    segment
                        .file
                        .sync_all()
                        .map_err(|e| StorageError::io(&path, "fsync", e))?;
                    break;
                }
            }
        }
        Ok(offset as u64)
    }

    /// Applies the records of one valid batch body.
    fn replay_batch(
        &mut self,
        segment_id: u64,
        path: &Path,
        data: &[u8],
        body_start: usize,
        body_len: usize,
    ) -> Result<(), StorageError> {
        let mut at = body_start;
        let body_end = body_start + body_len;
        let mut max_index = 0;
        while at < body_end {
            let corrupt = |reason: &str| StorageError::corrupt(path, at as u64, reason);
            let (payload, frame_len) = codec::split_record(&data[at..body_end]).map_err(corrupt)?;
            let record = codec::decode_record(payload).map_err(corrupt)?;
            let index = self.apply(segment_id, at as u64, frame_len, &record, 0, &mut max_index);
            if let Some(index) = index {
                return Err(StorageError::corrupt(
                    path,
                    at as u64,
                    format!("chosen mark for index {index}, which holds no value"),
                ));
            }
            at += frame_len;
        }
        self.note_max_index(segment_id, max_index);
        Ok(())
    }

    /// Applies one durable frame found at `offset` of segment `segment_id`:
    /// `record`, or the part of it that frame holds: entry `entry` of an
    /// `Accepted` record, index `first + entry` of a `ChosenRange`.
    /// Raises `max_index` to the index the frame names (the caller notes it
    /// on the segment once per batch). Returns the index of a chosen mark
    /// that had no value to mark.
    fn apply(
        &mut self,
        segment_id: u64,
        offset: u64,
        frame_len: usize,
        record: &Record,
        entry: usize,
        max_index: &mut Index,
    ) -> Option<Index> {
        let held = |value: &Value| match value {
            Value::Noop => ValueRef::Noop,
            Value::One { .. } | Value::Many { .. } => ValueRef::Stored {
                segment_id,
                offset,
                frame_len: frame_len as u32,
                payload_len: value.payload_len() as u32,
                reqid: value.reqid().unwrap_or(0),
            },
        };
        let record_index = match record {
            Record::Node(node) => {
                self.state.node = *node;
                None
            }
            Record::Instance(instance) => {
                self.state
                    .apply_instance(instance, instance.value.as_ref().map(held));
                Some(instance.index)
            }
            Record::Accepted { ballot, entries } => {
                let (index, value) = &entries[entry];
                self.state.apply_accepted(*index, *ballot, held(value));
                Some(*index)
            }
            Record::Chosen(_) | Record::ChosenRange { .. } => {
                let marks = record.chosen_indices().expect("a chosen mark");
                let index = marks.start() + entry as u64;
                if !self.state.apply_chosen_range(index, index) {
                    return Some(index);
                }
                Some(index)
            }
        };
        if let Some(index) = record_index {
            *max_index = (*max_index).max(index);
        }
        None
    }

    /// Notes that segment `segment_id` holds a record for `max_index`.
    fn note_max_index(&mut self, segment_id: u64, max_index: Index) {
        if let Some(segment) = self.segments.get_mut(&segment_id) {
            segment.max_index = segment.max_index.max(max_index);
        }
    }

    /// Starts preparing the next segment's file on a helper thread, unless
    /// one is on its way or there is nothing to prepare.
    fn prepare_next_segment(&mut self) {
        if self.spare.is_some() || self.options.preallocate == Preallocate::None {
            return;
        }
        let path = self.dir.join(SPARE_FILE);
        let options = self.options;
        let (done, ready) = mpsc::sync_channel(1);
        let pace = Arc::new(AtomicU8::new(PACE_PAUSED));
        let helper_pace = Arc::clone(&pace);
        let spawned = std::thread::Builder::new()
            .name("spaxos-spare".to_string())
            .spawn(move || {
                let _ = done.send(create_segment_file(&path, &options, &helper_pace));
            });
        match spawned {
            Ok(thread) => {
                self.spare = Some(Spare {
                    ready,
                    thread,
                    pace,
                })
            }
            // The switch then prepares the segment itself, as without a helper.
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot start a thread to prepare the next segment")
            }
        }
    }

    /// Creates segment `id` (header, preallocated space, durable name) and
    /// makes it the active one, from the spare file if one was prepared.
    fn start_segment(&mut self, id: u64) -> Result<(), StorageError> {
        let path = segment_path(&self.dir, id);
        let header = SegmentHeader {
            segment_id: id,
            first_batch_seq: self.next_batch_seq,
            node: self.state.node,
        };
        // A spare has its space and size durable already; without one the
        // file is made here, under the segment's temporary name.
        let (file, made_as) = match self.spare.take().and_then(|spare| spare.take(&self.dir)) {
            Some(file) => (file, self.dir.join(SPARE_FILE)),
            None => {
                let tmp = tmp_path(&path);
                (create_segment_file(&tmp, &self.options, &AT_ONCE)?, tmp)
            }
        };
        // Then the header, and only then the name.
        file.write_all_at(&header.encode(), 0)
            .map_err(|e| StorageError::io(&made_as, "write segment header", e))?;
        file.sync_data()
            .map_err(|e| StorageError::io(&made_as, "fdatasync", e))?;
        fs::rename(&made_as, &path)
            .map_err(|e| StorageError::io(&path, "rename new segment", e))?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            id,
            Segment {
                path,
                file,
                max_index: 0,
            },
        );
        self.active_offset = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }

    /// Deletes the oldest segments while every record in them is compacted
    /// (the active segment is kept).
    fn delete_compacted_segments(&mut self) -> Result<(), StorageError> {
        let mut deleted = false;
        while self.segments.len() > 1 {
            let Some(mut entry) = self.segments.first_entry() else {
                break;
            };
            if entry.get().max_index > self.state.compacted_through {
                break;
            }
            let path = entry.get_mut().path.clone();
            fs::remove_file(&path).map_err(|e| StorageError::io(&path, "delete segment", e))?;
            entry.remove();
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Reads a held value back from its segment, checking its checksum.
    fn load(&self, index: Index, held: &ValueRef) -> Result<Value, StorageError> {
        let (segment_id, offset, frame_len) = match held {
            ValueRef::Noop => return Ok(Value::Noop),
            ValueRef::Stored {
                segment_id,
                offset,
                frame_len,
                ..
            } => (*segment_id, *offset, *frame_len as usize),
        };
        let Some(segment) = self.segments.get(&segment_id) else {
            return Err(StorageError::corrupt(
                &segment_path(&self.dir, segment_id),
                offset,
                format!("segment holding index {index} is gone"),
            ));
        };
        let mut frame = vec![0u8; frame_len];
        segment
            .file
            .read_exact_at(&mut frame, offset)
            .map_err(|e| StorageError::io(&segment.path, "read value", e))?;
        let corrupt = |reason: &str| StorageError::corrupt(&segment.path, offset, reason);
        let (payload, _) = codec::split_record(&frame).map_err(corrupt)?;
        match codec::decode_record(payload).map_err(corrupt)? {
            spaxos_core::Record::Instance(instance) if instance.index == index => instance
                .value
                .ok_or_else(|| corrupt("instance record lost its value")),
            _ => Err(corrupt("record is not the instance it was indexed as")),
        }
    }

    fn fail(&mut self, error: StorageError) -> StorageError {
        if self.failed.is_none() {
            self.failed = Some(error.to_string());
        }
        error
    }

    /// Appends one record frame to `self.buffer` with `encode` and notes
    /// where it lies: part `entry` of the batch's record `position`.
    fn encode_frame(&mut self, position: usize, entry: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buffer.len();
        encode(&mut self.buffer);
        self.record_frames
            .push((position, entry, start, self.buffer.len() - start));
    }

    /// Encodes the batch frame into `self.buffer` (skipping compacted
    /// records); false if nothing is left to write.
    fn encode_batch(&mut self, batch: &[Record]) -> Result<bool, StorageError> {
        self.buffer.clear();
        self.buffer.resize(BATCH_HEADER_LEN, 0);
        self.record_frames.clear();
        let floor = self.state.compacted_through;
        for (position, record) in batch.iter().enumerate() {
            let compacted = match record {
                Record::Node(_) => false,
                Record::Instance(instance) => instance.index <= floor,
                Record::Accepted { ballot, entries } => {
                    // One frame per entry, as `encode_record` writes them.
                    for (entry, (index, value)) in entries.iter().enumerate() {
                        if *index > floor {
                            self.encode_frame(position, entry, |out| {
                                codec::encode_instance(
                                    out,
                                    *index,
                                    *ballot,
                                    *ballot,
                                    false,
                                    Some(value),
                                )
                            });
                        }
                    }
                    continue;
                }
                Record::ChosenRange { first, last } => {
                    // One frame per index, as `encode_record` writes them.
                    for index in self.state.live_range(*first, *last) {
                        let entry = (index - first) as usize;
                        self.encode_frame(position, entry, |out| codec::encode_chosen(out, index));
                    }
                    continue;
                }
                Record::Chosen(index) => *index <= floor,
            };
            if !compacted {
                self.encode_frame(position, 0, |out| codec::encode_record(out, record));
            }
        }
        if self.record_frames.is_empty() {
            return Ok(false);
        }
        let body_len = self.buffer.len() - BATCH_HEADER_LEN;
        if body_len > BATCH_BODY_MAX {
            return Err(StorageError::invalid(format!(
                "batch encodes to {body_len} bytes, above the limit of {BATCH_BODY_MAX}"
            )));
        }
        let (header, body) = self.buffer.split_at_mut(BATCH_HEADER_LEN);
        codec::encode_batch_header(header, self.next_batch_seq, body);
        self.buffer.resize(align(self.buffer.len()), 0);
        Ok(true)
    }
}

impl DiskStorage {
    /// A store whose write failed refuses every later write with that error.
    fn refuse_if_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(first_error) => Err(StorageError::Failed {
                first_error: first_error.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Appends `batch` as one frame and makes it durable.
    fn append(&mut self, batch: &[Record]) -> Result<(), StorageError> {
        self.append_then(batch, &mut || {})
    }

    /// [`DiskStorage::append`], calling `durable` right after the sync,
    /// before the batch is applied to the in-memory index (applying it is
    /// ~100 ns per entry that nothing released needs to wait for).
    fn append_then(
        &mut self,
        batch: &[Record],
        durable: &mut dyn FnMut(),
    ) -> Result<(), StorageError> {
        self.refuse_if_failed()?;
        self.state.validate(batch)?;
        if !self.encode_batch(batch)? {
            durable();
            return Ok(());
        }
        let frame_len = self.buffer.len() as u64;
        let Some(mut active_id) = self.segments.keys().next_back().copied() else {
            return Err(StorageError::Failed {
                first_error: "no active segment".to_string(),
            });
        };
        if self.active_offset > SEGMENT_HEADER_LEN as u64
            && self.active_offset + frame_len > self.options.segment_bytes_max
        {
            let Some(next_id) = active_id.checked_add(1) else {
                return Err(self.fail(StorageError::invalid("segment ids exhausted")));
            };
            active_id = next_id;
            if let Err(e) = self.start_segment(active_id) {
                return Err(self.fail(e));
            }
        }
        let segment = &self.segments[&active_id];
        let result = segment
            .file
            .write_all_at(&self.buffer, self.active_offset)
            .map_err(|e| StorageError::io(&segment.path, "write batch", e))
            .and_then(|()| {
                segment
                    .file
                    .sync_data()
                    .map_err(|e| StorageError::io(&segment.path, "fdatasync", e))
            });
        if let Err(e) = result {
            return Err(self.fail(e));
        }
        durable();
        // Durable: now, and only now, the state reflects the batch.
        let batch_offset = self.active_offset;
        let frames = std::mem::take(&mut self.record_frames);
        let mut max_index = 0;
        for &(position, entry, start, len) in &frames {
            let unmarked = self.apply(
                active_id,
                batch_offset + start as u64,
                len,
                &batch[position],
                entry,
                &mut max_index,
            );
            debug_assert!(unmarked.is_none(), "validate checked the chosen marks");
        }
        self.note_max_index(active_id, max_index);
        self.record_frames = frames;
        self.active_offset += frame_len;
        self.next_batch_seq = self.next_batch_seq.wrapping_add(1);
        self.bytes_written += frame_len;
        self.syncs += 1;
        if self.active_offset > self.options.segment_bytes_max / 2 {
            self.prepare_next_segment();
        }
        Ok(())
    }
}

impl Storage for DiskStorage {
    fn write(&mut self, batch: &[Record]) -> Result<(), StorageError> {
        self.write_then(batch, &mut || {})
    }

    fn write_then(
        &mut self,
        batch: &[Record],
        durable: &mut dyn FnMut(),
    ) -> Result<(), StorageError> {
        if self.deferred.is_empty() {
            return self.append_then(batch, durable);
        }
        // Deferred marks first, in the same frame: one sync covers both.
        let marks = std::mem::take(&mut self.deferred);
        let mut combined: Vec<Record> = Vec::with_capacity(batch.len() + 8);
        for &index in &marks {
            Record::push_chosen(&mut combined, index);
        }
        let mark_records = combined.len();
        combined.extend(batch.iter().cloned());
        match self.append_then(&combined, durable) {
            Err(StorageError::InvalidBatch { .. }) => {
                // Nothing was written. The marks were checked when they
                // were deferred, so the batch is at fault (or the two are
                // too large together): the marks go alone, then the batch
                // gets its own answer.
                self.append(&combined[..mark_records])?;
                self.append_then(batch, durable)
            }
            result => result,
        }
    }

    fn write_deferred(&mut self, batch: &[Record]) -> Result<(), StorageError> {
        self.refuse_if_failed()?;
        crate::check_deferrable(batch)?;
        self.state.validate(batch)?;
        let marks: usize = batch.iter().map(Record::entries).sum();
        if self.deferred.len() + marks > DEFERRED_MARKS_MAX {
            return self.write(batch);
        }
        for marks in batch.iter().filter_map(Record::chosen_indices) {
            let applied = self.state.apply_chosen_range(*marks.start(), *marks.end());
            debug_assert!(applied, "validate checked the chosen marks");
            // Compacted indices are chosen already; nothing to write.
            self.deferred
                .extend(self.state.live_range(*marks.start(), *marks.end()));
        }
        Ok(())
    }

    fn deferred_marks(&self) -> usize {
        self.deferred.len()
    }

    fn syncs(&self) -> Option<u64> {
        Some(self.syncs)
    }

    fn recover(&self, dedup_window: u64) -> Result<RecoveredState, StorageError> {
        self.state
            .recover(dedup_window, |index, held| self.load(index, held))
    }

    fn chosen(&self, index: Index) -> Result<Option<Value>, StorageError> {
        match self.state.chosen(index)? {
            Some(held) => Ok(Some(self.load(index, held)?)),
            None => Ok(None),
        }
    }

    fn chosen_range(
        &self,
        from: Index,
        to: Index,
        bytes_max: usize,
    ) -> Result<Vec<(Index, Value)>, StorageError> {
        self.state
            .chosen_range(from, to, bytes_max)?
            .into_iter()
            .map(|(index, held)| Ok((index, self.load(index, held)?)))
            .collect()
    }

    fn bounds(&self) -> (Index, Index) {
        self.state.bounds()
    }

    fn compact(&mut self, through: Index) -> Result<(), StorageError> {
        if through > self.state.compacted_through {
            write_floor(&self.dir, through)?;
            self.state.compact(through);
        }
        self.delete_compacted_segments()
    }
}

/// What recovery found at one offset of a segment.
enum BatchCheck {
    Valid(BatchHeader),
    /// Only zeros (or nothing) from here to the end of the file.
    End,
    /// Not a valid batch; `offset` is the most precise position known (the
    /// damaged record, when the header is intact).
    Bad {
        offset: usize,
        reason: &'static str,
    },
}

fn check_batch(data: &[u8], offset: usize, expected_seq: u64) -> BatchCheck {
    let rest = data.get(offset..).unwrap_or(&[]);
    let bad = |reason| BatchCheck::Bad { offset, reason };
    let Some(header) = codec::decode_batch_header(rest) else {
        // Preallocated space (or the end of the file) reads as zeros.
        if rest.iter().all(|&b| b == 0) {
            return BatchCheck::End;
        }
        return bad("bad batch header");
    };
    if header.seq != expected_seq {
        return bad("unexpected batch sequence number");
    }
    let Some(body) = rest.get(BATCH_HEADER_LEN..BATCH_HEADER_LEN + header.body_len) else {
        return bad("batch runs past the end of the file");
    };
    if crc32c::crc32c(body) != header.body_crc {
        // Point at the damaged record if the record checksums find it.
        let mut at = 0;
        while at < body.len() {
            match codec::split_record(&body[at..]) {
                Ok((_, frame_len)) => at += frame_len,
                Err(reason) => {
                    return BatchCheck::Bad {
                        offset: offset + BATCH_HEADER_LEN + at,
                        reason,
                    }
                }
            }
        }
        return bad("batch checksum mismatch");
    }
    // Padding is not checksummed, so it must be zeros (it may be cut off by
    // the end of the file).
    let body_end = offset + BATCH_HEADER_LEN + header.body_len;
    let padding = data
        .get(body_end..align(body_end).min(data.len()))
        .unwrap_or(&[]);
    if let Some(at) = padding.iter().position(|&b| b != 0) {
        return BatchCheck::Bad {
            offset: body_end + at,
            reason: "non-zero padding after a batch",
        };
    }
    BatchCheck::Valid(header)
}

/// The offset of a valid batch header after `offset` with a sequence number
/// at or above `seq`: evidence that damage at `offset` is not a torn tail.
fn find_later_batch(data: &[u8], offset: usize, seq: u64) -> Option<usize> {
    let mut at = offset + BATCH_ALIGN;
    while at + BATCH_HEADER_LEN <= data.len() {
        if let Some(header) = codec::decode_batch_header(&data[at..]) {
            if header.seq >= seq {
                return Some(at);
            }
        }
        at += BATCH_ALIGN;
    }
    None
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!(
        "{id:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_ID_DIGITS
    ))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// Segment ids in `dir`, ascending and checked to be consecutive; leftover
/// temporary files from an interrupted segment creation are removed.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io(dir, "list directory", e))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(dir, "list directory", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            let path = entry.path();
            fs::remove_file(&path)
                .map_err(|e| StorageError::io(&path, "remove temporary file", e))?;
            continue;
        }
        let Some(digits) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        if digits.len() == SEGMENT_ID_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(id) = digits.parse::<u64>() {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    for pair in ids.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(StorageError::corrupt(
                &segment_path(dir, pair[0] + 1),
                0,
                "segment file is missing",
            ));
        }
    }
    Ok(ids)
}

fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io(&path, "open lock file", e))?;
    // SAFETY: flock on a valid, owned file descriptor has no memory effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == ErrorKind::WouldBlock {
            return Err(StorageError::Locked { path });
        }
        return Err(StorageError::io(&path, "lock", error));
    }
    Ok(file)
}

fn read_floor(dir: &Path) -> Result<Index, StorageError> {
    let path = dir.join(FLOOR_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StorageError::io(&path, "read compaction floor", e)),
    };
    match codec::decode_floor(&bytes) {
        Ok(floor) => Ok(floor),
        Err(HeaderError::Version(found)) => Err(StorageError::UnsupportedVersion {
            path,
            found,
            supported: FORMAT_VERSION,
        }),
        Err(HeaderError::Bad(reason)) => Err(StorageError::corrupt(&path, 0, reason)),
    }
}

/// Replaces the floor file atomically (write, fsync, rename, fsync dir).
fn write_floor(dir: &Path, compacted_through: Index) -> Result<(), StorageError> {
    let tmp = dir.join(FLOOR_TMP_FILE);
    let path = dir.join(FLOOR_FILE);
    let file = File::create(&tmp).map_err(|e| StorageError::io(&tmp, "create", e))?;
    file.write_all_at(&codec::encode_floor(compacted_through), 0)
        .map_err(|e| StorageError::io(&tmp, "write", e))?;
    file.sync_all()
        .map_err(|e| StorageError::io(&tmp, "fsync", e))?;
    fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, "rename", e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, "fsync directory", e))
}

fn file_len(file: &File, path: &Path) -> Result<u64, StorageError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| StorageError::io(path, "stat", e))
}

/// Gives the file its space from `from` up to the segment size, as the
/// options say. The caller syncs.
///
/// Zeros go in `ZERO_STEP_BYTES` steps. Paced (`PACE_PAUSED`), each step
/// is synced and followed by a pause; `PACE_AT_ONCE` writes on unsynced;
/// `PACE_ABANDON` stops with an error. Written and synced in one go, the
/// 64 MiB of a spare segment held up the log's flushes until they were on
/// the disk; with every node of a 3-node cluster on one disk (the
/// benchmark) the longest proposal of a 20-second run went from ~300 ms
/// inline to 50–65 ms, and to 9–29 ms in steps (docs/STORAGE.md).
fn preallocate(
    file: &File,
    path: &Path,
    from: u64,
    options: &DiskOptions,
    pace: &AtomicU8,
) -> Result<(), StorageError> {
    let to = options.segment_bytes_max;
    if from >= to {
        return Ok(());
    }
    match options.preallocate {
        Preallocate::None => Ok(()),
        Preallocate::Fallocate => {
            let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
                return Err(StorageError::invalid("segment size out of range"));
            };
            // SAFETY: fallocate on a valid, owned descriptor; no memory is passed.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
            if rc != 0 {
                let error = std::io::Error::last_os_error();
                // A file system without fallocate just grows the file.
                if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    return Ok(());
                }
                return Err(StorageError::io(path, "fallocate", error));
            }
            Ok(())
        }
        Preallocate::ZeroFill => {
            let zeros = vec![0u8; ZERO_STEP_BYTES];
            let mut at = from;
            while at < to {
                let n = (to - at).min(ZERO_STEP_BYTES as u64) as usize;
                file.write_all_at(&zeros[..n], at)
                    .map_err(|e| StorageError::io(path, "preallocate (zero fill)", e))?;
                at += n as u64;
                match pace.load(Ordering::Relaxed) {
                    PACE_PAUSED => {
                        file.sync_data()
                            .map_err(|e| StorageError::io(path, "fdatasync", e))?;
                        std::thread::sleep(ZERO_STEP_PAUSE);
                    }
                    PACE_AT_ONCE => {}
                    _ => return Err(StorageError::invalid("segment preallocation abandoned")),
                }
            }
            Ok(())
        }
    }
}
