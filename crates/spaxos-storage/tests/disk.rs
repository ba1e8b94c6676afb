//! DiskStorage-specific behaviour: segment reclaim, torn tails, corruption,
//! locking and error messages.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use spaxos_core::{Record, RecoveredState};
use spaxos_storage::{DiskOptions, DiskStorage, Preallocate, Storage, StorageError};

fn open(dir: &Path, options: DiskOptions) -> DiskStorage {
    DiskStorage::open_with(dir, options).expect("open")
}

/// Batch `k` of the torn/corrupt tests: three records, values of 40 bytes.
fn test_batch(k: u64) -> Vec<Record> {
    vec![node(k), accepted(k, k, value(k, 40)), Record::Chosen(k)]
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Writes batches 1..=n into a fresh store; returns the segment file length
/// after each batch (index k-1 for batch k) and the state after each.
fn write_batches(dir: &Path, options: DiskOptions, n: u64) -> (Vec<u64>, Vec<RecoveredState>) {
    let mut store = open(dir, options);
    let mut ends = Vec::new();
    let mut states = Vec::new();
    for k in 1..=n {
        store.write(&test_batch(k)).unwrap();
        let last = store.segment_paths().pop().unwrap();
        ends.push(fs::metadata(last).unwrap().len());
        states.push(store.recover(100).unwrap());
    }
    (ends, states)
}

#[test]
fn compaction_reclaims_whole_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options();
    let mut store = open(dir.path(), options);
    // A straggler accepted early must survive compaction of later segments
    // only as long as its index is above the checkpoint.
    store.write(&[accepted(1000, 1, value(1000, 10))]).unwrap();
    for index in 1..=400 {
        store.write(&[chosen(index, value(index, 100))]).unwrap();
    }
    let before = segment_files(dir.path()).len();
    assert!(before > 10, "{before} segments");
    store.compact(300).unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        before,
        "the first segment holds index 1000, so nothing can go"
    );
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), options);
    for index in 1..=400 {
        store
            .write(&[node(index), chosen(index, value(index, 100))])
            .unwrap();
    }
    let before = segment_files(dir.path()).len();
    store.compact(300).unwrap();
    let after = segment_files(dir.path()).len();
    assert!(after * 2 < before, "{before} -> {after} segments");
    // Every live value is still readable, also after a restart.
    for round in 0..2 {
        for index in 301..=400 {
            assert_eq!(
                store.chosen(index).unwrap(),
                Some(value(index, 100)),
                "round {round}"
            );
        }
        let recovered = store.recover(10).unwrap();
        assert_eq!(recovered.node.max_round, 400);
        assert_eq!(recovered.chosen_through, 400);
        drop(store);
        store = open(dir.path(), options);
    }
    store.compact(400).unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the active segment stays"
    );
    drop(store);
    let store = open(dir.path(), options);
    assert_eq!(store.recover(10).unwrap().node.max_round, 400);
    assert_eq!(store.bounds(), (401, 400));
}

#[test]
fn torn_tail_at_every_byte_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options();
    let (ends, states) = write_batches(dir.path(), options, 5);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1, "all five batches in one segment");
    let full = fs::read(&files[0]).unwrap();
    let (start, end) = (ends[3] as usize, ends[4] as usize);
    for cut in start..end {
        fs::write(&files[0], &full[..cut]).unwrap();
        let mut store = open(dir.path(), options);
        let recovered = store.recover(100).unwrap();
        // The frame's last bytes are padding: cutting them loses nothing.
        if cut + 8 <= end {
            assert_eq!(recovered, states[3], "cut at {cut}");
        } else {
            assert!(
                recovered == states[3] || recovered == states[4],
                "cut at {cut}"
            );
        }
        // The store goes on appending after the truncated tail.
        store.write(&test_batch(6)).unwrap();
        drop(store);
        let store = open(dir.path(), options);
        assert_eq!(store.chosen(6).unwrap(), Some(value(6, 40)), "cut at {cut}");
        assert_eq!(store.chosen(4).unwrap(), Some(value(4, 40)), "cut at {cut}");
    }
}

#[test]
fn torn_tail_in_preallocated_segment() {
    let dir = tempfile::tempdir().unwrap();
    let options = zero_filled_options();
    let (_, states) = write_batches(dir.path(), options, 5);
    let files = segment_files(dir.path());
    let full = fs::read(&files[0]).unwrap();
    assert_eq!(full.len(), 64 << 10);
    // Find where batch 5 starts and ends by re-writing 4 batches elsewhere.
    let other = tempfile::tempdir().unwrap();
    let (ends, _) = write_batches(other.path(), small_options(), 5);
    let (start, end) = (ends[3] as usize, ends[4] as usize);
    // Pages of the last write reach the disk in any order: lose the first
    // part, keep the rest; or keep a prefix and lose the rest.
    for split in (start..end).step_by(7) {
        for keep_prefix in [false, true] {
            let mut torn = full.clone();
            if keep_prefix {
                torn[split..end].fill(0);
            } else {
                torn[start..split.max(start + 1)].fill(0);
            }
            fs::write(&files[0], &torn).unwrap();
            let store = open(dir.path(), options);
            let recovered = store.recover(100).unwrap();
            // Zeroing bytes that were zeros already (padding, high bytes
            // of an index) tears nothing.
            let expected = if torn == full { &states[4] } else { &states[3] };
            assert_eq!(
                &recovered, expected,
                "split {split} keep_prefix {keep_prefix}"
            );
        }
    }
}

/// Flips each byte in turn of batches 1..=4 (batch 5 follows): opening must
/// fail and name the file and an offset at or just before the flipped byte.
#[test]
fn flipped_byte_before_the_tail_is_corruption() {
    for options in [small_options(), zero_filled_options()] {
        let dir = tempfile::tempdir().unwrap();
        write_batches(dir.path(), options, 5);
        // Batch positions do not depend on preallocation; a store without
        // it has files that end where the data ends.
        let plain = tempfile::tempdir().unwrap();
        let (ends, _) = write_batches(plain.path(), small_options(), 5);
        let files = segment_files(dir.path());
        let full = fs::read(&files[0]).unwrap();
        for flip in 0..ends[3] as usize {
            let mut bad = full.clone();
            bad[flip] ^= 0x20;
            fs::write(&files[0], &bad).unwrap();
            let Err(err) = DiskStorage::open_with(dir.path(), options) else {
                panic!("flip {flip} of {} went unnoticed", full.len());
            };
            match &err {
                StorageError::Corrupt { path, offset, .. } => {
                    assert_eq!(path, &files[0]);
                    let offset = *offset as usize;
                    assert!(offset <= flip && flip - offset < 200, "flip {flip}: {err}");
                }
                other => panic!("flip {flip}: {other}"),
            }
            let message = err.to_string();
            assert!(
                message.contains(&files[0].display().to_string()),
                "{message}"
            );
            assert!(message.contains("offset"), "{message}");
        }
        fs::write(&files[0], &full).unwrap();
        open(dir.path(), options);
    }
}

#[test]
fn damage_at_the_end_of_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options();
    let mut store = open(dir.path(), options);
    for k in 1..=60 {
        store.write(&test_batch(k)).unwrap();
    }
    drop(store);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let sealed = &files[files.len() - 2];
    let mut bytes = fs::read(sealed).unwrap();
    // Damage the last byte of its last batch frame (a value byte or padding).
    let last = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[last] ^= 1;
    fs::write(sealed, &bytes).unwrap();
    let err = DiskStorage::open_with(dir.path(), options).unwrap_err();
    assert!(
        matches!(&err, StorageError::Corrupt { path, .. } if path == sealed),
        "{err}"
    );
    // Losing the whole last batch of a sealed segment is caught by the
    // batch sequence numbers.
    bytes[last] ^= 1;
    let cut = bytes.len() - 100;
    fs::write(sealed, &bytes[..cut]).unwrap();
    let err = DiskStorage::open_with(dir.path(), options).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    // A missing segment file is named.
    fs::write(sealed, &bytes).unwrap();
    fs::remove_file(sealed).unwrap();
    let err = DiskStorage::open_with(dir.path(), options).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn bad_headers_and_floor() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options();
    let mut store = open(dir.path(), options);
    store.write(&test_batch(1)).unwrap();
    store.compact(1).unwrap();
    drop(store);
    let files = segment_files(dir.path());
    let original = fs::read(&files[0]).unwrap();

    let mut bytes = original.clone();
    bytes[8] = 99; // format version
    fs::write(&files[0], &bytes).unwrap();
    let err = DiskStorage::open_with(dir.path(), options).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset: 0, .. }),
        "{err}"
    );

    fs::write(&files[0], &original[..10]).unwrap();
    let err = DiskStorage::open_with(dir.path(), options).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset: 0, .. }),
        "{err}"
    );

    fs::write(&files[0], &original).unwrap();
    let floor = dir.path().join("FLOOR");
    let mut floor_bytes = fs::read(&floor).unwrap();
    floor_bytes[17] ^= 1;
    fs::write(&floor, &floor_bytes).unwrap();
    let err = DiskStorage::open_with(dir.path(), options).unwrap_err();
    assert!(err.to_string().contains("FLOOR"), "{err}");
}

#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStorage::open(dir.path()).unwrap();
    let err = DiskStorage::open(dir.path()).unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    drop(store);
    DiskStorage::open(dir.path()).unwrap();
}

#[test]
fn unusable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = DiskStorage::open(&file.join("node1")).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("not-a-dir"), "{message}");
    assert!(matches!(err, StorageError::Io { .. }), "{message}");

    // Missing directories are created, nested too.
    let nested = dir.path().join("a/b/c");
    DiskStorage::open(&nested).unwrap();
    assert!(nested.is_dir());
}

#[test]
fn permission_denied_names_the_path() {
    // Root ignores file modes, so this only means something as a user.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("ro");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).unwrap();
    let err = DiskStorage::open(&locked).unwrap_err();
    assert!(
        matches!(err, StorageError::PermissionDenied { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("ro"), "{err}");
}

#[test]
fn large_batches_rotate_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options();
    let mut store = open(dir.path(), options);
    // One batch larger than a whole segment.
    let batch: Vec<Record> = (1..=20).map(|i| chosen(i, value(i, 500))).collect();
    store.write(&batch).unwrap();
    store.write(&[chosen(21, value(21, 10))]).unwrap();
    drop(store);
    let store = open(dir.path(), options);
    assert_eq!(store.chosen_range(1, 21, usize::MAX).unwrap().len(), 21);
    assert_eq!(store.chosen(20).unwrap(), Some(value(20, 500)));
}

/// Deferred marks never reach the disk on their own: they go inside the
/// next write's frame (one sync covers both), so no unsynced bytes can sit
/// ahead of a synced frame. Marks no write followed are lost in a crash; an
/// empty write, or closing the store, makes them durable.
#[test]
fn deferred_marks_reach_the_disk_only_inside_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        segment_bytes_max: 1 << 20,
        preallocate: Preallocate::ZeroFill,
    };
    let mut store = open(dir.path(), options);
    store
        .write(&[accepted(1, 1, value(1, 40)), accepted(2, 1, value(2, 40))])
        .unwrap();
    let segment = segment_files(dir.path()).pop().unwrap();
    let before = fs::read(&segment).unwrap();
    store.write_deferred(&[Record::Chosen(1)]).unwrap();
    assert_eq!(
        fs::read(&segment).unwrap(),
        before,
        "a deferred mark wrote bytes"
    );
    assert_eq!(store.chosen(1).unwrap(), Some(value(1, 40)));
    assert_eq!(store.deferred_marks(), 1);
    store.write(&[accepted(3, 1, value(3, 40))]).unwrap();
    assert_eq!(store.deferred_marks(), 0);
    store.write_deferred(&[Record::Chosen(2)]).unwrap();
    assert_eq!(store.recover(10).unwrap().chosen_through, 2);
    // A crash now: the disk holds what the last write left.
    let at_crash = fs::read(&segment).unwrap();
    drop(store);
    fs::write(&segment, &at_crash).unwrap();

    // Mark 1 went out with accepted 3; mark 2 was never written.
    let mut store = open(dir.path(), options);
    let recovered = store.recover(10).unwrap();
    assert_eq!(recovered.chosen_through, 1);
    let held: Vec<(u64, bool)> = recovered
        .instances
        .iter()
        .map(|i| (i.index, i.chosen))
        .collect();
    assert_eq!(held, vec![(2, false), (3, false)]);

    // An empty write carries waiting marks, and so does closing the store.
    store.write_deferred(&[Record::Chosen(2)]).unwrap();
    store.write(&[]).unwrap();
    assert_eq!(store.deferred_marks(), 0);
    store.write_deferred(&[Record::Chosen(3)]).unwrap();
    drop(store);
    let store = open(dir.path(), options);
    assert_eq!(store.recover(10).unwrap().chosen_through, 3);
}

/// Deferred marks are bounded: past 65,536 waiting, the next deferred batch
/// is written at once with all of them.
#[test]
fn too_many_deferred_marks_are_written_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        segment_bytes_max: 64 << 20,
        preallocate: Preallocate::None,
    };
    let held = 1u64 << 16;
    let mut store = open(dir.path(), options);
    let values: Vec<Record> = (1..=held + 1)
        .map(|index| accepted(index, 1, value(index, 1)))
        .collect();
    store.write(&values).unwrap();
    let marks: Vec<Record> = (1..=held).map(Record::Chosen).collect();
    let segment = segment_files(dir.path()).pop().unwrap();
    let before = fs::metadata(&segment).unwrap().len();
    store.write_deferred(&marks).unwrap();
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        before,
        "written early"
    );
    assert_eq!(store.deferred_marks(), held as usize);
    store.write_deferred(&[Record::Chosen(held + 1)]).unwrap();
    assert_eq!(store.deferred_marks(), 0);
    assert!(
        fs::metadata(&segment).unwrap().len() > before,
        "nothing written"
    );
    drop(store);
    let store = open(dir.path(), options);
    assert_eq!(store.recover(10).unwrap().chosen_through, held + 1);
}

/// A refused write after deferred marks still makes the marks durable,
/// returns the batch's own error, and leaves the store usable; marks the
/// floor passed while they waited are dropped, not written.
#[test]
fn deferred_marks_survive_a_refused_write_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options();
    let mut store = open(dir.path(), options);
    let values: Vec<Record> = (1..=6).map(|i| accepted(i, 1, value(i, 40))).collect();
    store.write(&values).unwrap();
    store
        .write_deferred(&[Record::Chosen(1), Record::Chosen(2)])
        .unwrap();
    // A mark for an index without a value: the batch is refused.
    let err = store.write(&[Record::Chosen(9)]).unwrap_err();
    assert!(matches!(err, StorageError::InvalidBatch { .. }), "{err}");
    store
        .write_deferred(&[Record::Chosen(3), Record::Chosen(4)])
        .unwrap();
    // The floor passes mark 3 while it waits.
    store.compact(3).unwrap();
    store.write(&[accepted(7, 1, value(7, 40))]).unwrap();
    drop(store);
    let store = open(dir.path(), options);
    let recovered = store.recover(10).unwrap();
    assert_eq!(recovered.chosen_through, 4);
    assert_eq!(store.bounds(), (4, 7));
    assert_eq!(store.chosen(4).unwrap(), Some(value(4, 40)));
    assert_eq!(store.chosen(5).unwrap(), None);
}

/// `syncs` counts the writes that reached the disk with an fdatasync, so
/// metrics can tell them from writes that cost none: deferred marks, an
/// empty write with nothing waiting, records below the compaction point.
#[test]
fn syncs_count_only_writes_that_synced() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), small_options());
    assert_eq!(store.syncs(), Some(0));
    let values: Vec<Record> = (1..=4).map(|i| accepted(i, 1, value(i, 40))).collect();
    store.write(&values).unwrap();
    assert_eq!(store.syncs(), Some(1));
    store.write_deferred(&[Record::Chosen(1)]).unwrap();
    assert_eq!(store.syncs(), Some(1), "a deferred mark synced");
    store.write(&[]).unwrap();
    assert_eq!(
        store.syncs(),
        Some(2),
        "the write carrying the waiting mark did not sync"
    );
    store.write(&[]).unwrap();
    assert_eq!(
        store.syncs(),
        Some(2),
        "an empty write with nothing waiting synced"
    );
    store.write_deferred(&[Record::Chosen(2)]).unwrap();
    store.compact(2).unwrap();
    store.write(&[accepted(2, 1, value(2, 40))]).unwrap();
    assert_eq!(store.syncs(), Some(2), "records below the floor synced");
    store.write(&[accepted(5, 1, value(5, 40))]).unwrap();
    assert_eq!(store.syncs(), Some(3));
    // A fresh handle counts from its own opening.
    drop(store);
    assert_eq!(open(dir.path(), small_options()).syncs(), Some(0));
}

/// Waits until `path` exists with `len` bytes (a spare segment finished by
/// its helper thread), at most 10 s.
fn wait_for_file(path: &Path, len: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::metadata(path).map(|m| m.len()).ok() != Some(len) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never reached {len} bytes",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Past half a segment the next one is prepared off the writing thread
/// (`spare.tmp`, zero-filled and synced); the switch gives it a header and
/// its name, and everything written reads back after a reopen.
#[test]
fn the_next_segment_is_prepared_ahead_and_taken_at_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let options = zero_filled_options();
    let spare = dir.path().join("spare.tmp");
    let mut store = open(dir.path(), options);
    let mut k = 0;
    while !spare.exists() {
        k += 1;
        store.write(&test_batch(k)).unwrap();
        assert_eq!(
            segment_files(dir.path()).len(),
            1,
            "spare not started by mid-segment"
        );
    }
    wait_for_file(&spare, options.segment_bytes_max);
    while segment_files(dir.path()).len() == 1 {
        k += 1;
        store.write(&test_batch(k)).unwrap();
    }
    assert!(!spare.exists(), "the spare became the new segment");
    let segments = segment_files(dir.path());
    assert_eq!(
        fs::metadata(&segments[1]).unwrap().len(),
        options.segment_bytes_max
    );
    // The second switch takes a spare too.
    while !spare.exists() {
        k += 1;
        store.write(&test_batch(k)).unwrap();
    }
    wait_for_file(&spare, options.segment_bytes_max);
    while segment_files(dir.path()).len() == 2 {
        k += 1;
        store.write(&test_batch(k)).unwrap();
    }
    assert!(!spare.exists(), "the second spare became the third segment");
    // A spare still being prepared when the store closes is removed.
    while !spare.exists() {
        k += 1;
        store.write(&test_batch(k)).unwrap();
    }
    drop(store);
    assert!(!spare.exists(), "no spare is left after a close");
    let store = open(dir.path(), options);
    assert_eq!(segment_files(dir.path()).len(), 3);
    let chosen = store.chosen_range(1, k, usize::MAX).unwrap();
    assert_eq!(chosen.len() as u64, k);
    for (i, (index, held)) in chosen.into_iter().enumerate() {
        assert_eq!((index, held), (i as u64 + 1, value(i as u64 + 1, 40)));
    }
}

/// A spare left by a crash (here: any bytes under its name) is removed at
/// open and never read as a segment.
#[test]
fn a_leftover_spare_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options();
    let mut store = open(dir.path(), options);
    store.write(&test_batch(1)).unwrap();
    drop(store);
    let spare = dir.path().join("spare.tmp");
    fs::write(&spare, b"not a segment").unwrap();
    let store = open(dir.path(), options);
    assert!(!spare.exists());
    assert_eq!(store.chosen(1).unwrap(), Some(value(1, 40)));
}
