//! Crash consistency: a child process (this test binary, re-executed) writes
//! batches and prints each batch number once `write` has returned; the
//! parent SIGKILLs it at random moments, reopens the store and checks that
//! every acknowledged batch is present and intact.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use spaxos_core::{Index, Record, Value};
use spaxos_storage::{DiskOptions, DiskStorage, Preallocate, Storage};

const CHILD_DIR_ENV: &str = "SPAXOS_STORAGE_CRASH_CHILD_DIR";
const CHILD_MODE_ENV: &str = "SPAXOS_STORAGE_CRASH_CHILD_MODE";
const KILLS: usize = 20;

fn options(mode: usize) -> DiskOptions {
    DiskOptions {
        segment_bytes_max: 256 << 10,
        preallocate: [
            Preallocate::ZeroFill,
            Preallocate::Fallocate,
            Preallocate::None,
        ][mode % 3],
    }
}

/// The value batch `k` writes at index `k`.
fn expected_value(k: u64) -> Value {
    if k.is_multiple_of(10) {
        Value::Noop
    } else {
        value(k, ((k * 7919) % 2000) as usize)
    }
}

fn batch(k: u64) -> Vec<Record> {
    vec![
        node(k),
        accepted(k, k, expected_value(k)),
        Record::Chosen(k),
    ]
}

/// The child's body; a no-op unless started by `kill_writer_at_random_moments`.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let mode: usize = std::env::var(CHILD_MODE_ENV)
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let mut store = DiskStorage::open_with(Path::new(&dir), options(mode)).expect("child open");
    let mut k: Index = store.bounds().1 + 1;
    let stdout = std::io::stdout();
    loop {
        store.write(&batch(k)).expect("child write");
        {
            let mut out = stdout.lock();
            writeln!(out, "ACK {k}").unwrap();
            out.flush().unwrap();
        }
        if k.is_multiple_of(64) {
            store.compact(k - 32).expect("child compact");
        }
        k += 1;
    }
}

/// Kills the child if the parent fails half way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_writer_at_random_moments() {
    if std::env::var(CHILD_DIR_ENV).is_ok() {
        return;
    }
    let seed: u64 = rand::rng().random();
    eprintln!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked = BTreeSet::new();
    for kill in 0..KILLS {
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args([
                    "crash_child_writer",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR_ENV, dir.path())
                .env(CHILD_MODE_ENV, kill.to_string())
                .env("RUST_BACKTRACE", "0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| {
                    line.strip_prefix("ACK ")
                        .and_then(|k| k.parse::<u64>().ok())
                })
                .collect::<Vec<_>>()
        });
        // Sometimes during open (replay, tail truncation), mostly mid-write.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let new_acks = reader.join().unwrap();
        acked.extend(new_acks.iter().copied());

        let store = DiskStorage::open_with(dir.path(), options(kill + 1))
            .unwrap_or_else(|e| panic!("seed {seed} kill {kill}: open failed: {e}"));
        let (first, last) = store.bounds();
        let recovered = store.recover(0).unwrap();
        if let Some(&max_acked) = acked.last() {
            assert!(
                last >= max_acked,
                "seed {seed} kill {kill}: last {last} < acked {max_acked}"
            );
            assert!(recovered.chosen_through >= max_acked);
            assert!(recovered.node.max_round >= max_acked);
        }
        for &k in acked.range(first..) {
            assert_eq!(
                store.chosen(k).unwrap(),
                Some(expected_value(k)),
                "seed {seed} kill {kill}: acknowledged batch {k}"
            );
        }
        // Anything beyond the acknowledgements was written whole or not at all.
        for k in first..=last {
            if let Some(v) = store.chosen(k).unwrap() {
                assert_eq!(v, expected_value(k), "seed {seed} kill {kill}: batch {k}");
            }
        }
        eprintln!(
            "kill {kill}: {} acks this run, bounds {first}..={last}",
            new_acks.len()
        );
    }
    assert!(
        acked.len() > 100,
        "the child wrote too little to test anything"
    );
}
