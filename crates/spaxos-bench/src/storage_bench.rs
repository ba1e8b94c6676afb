//! `storage` mode: group-commit throughput of `DiskStorage`.
//!
//! For each batch size, writes batches of `Record::Instance` hard states
//! (each with a `--value-bytes` value, 100 by default) through
//! `Storage::write` (one fdatasync per batch), then runs a plain loop of
//! `pwrite` + `fdatasync` appending the same number of bytes per sync to a
//! fresh file in the same directory, and prints one JSON line comparing
//! them.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use spaxos_core::{Ballot, InstanceState, Record, Value};
use spaxos_storage::{DiskOptions, DiskStorage, Preallocate, Storage};

/// Options of the `storage` mode.
#[derive(Args, Debug)]
pub struct StorageArgs {
    /// Directory for the benchmark files (a fresh subdirectory is made and
    /// removed). Default: the current directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per measurement (each of spaxos and raw, per batch size).
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Number of syncs per measurement instead of `--secs` (e.g. `--n 200`
    /// for a smoke run).
    #[arg(long)]
    n: Option<u64>,
    /// Records per batch; one JSON line each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 16, 256])]
    batch: Vec<usize>,
    /// Value bytes per record.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// How segment files get their space.
    #[arg(long, value_enum, default_value_t = PreallocateArg::ZeroFill)]
    preallocate: PreallocateArg,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Keep the benchmark directory.
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PreallocateArg {
    None,
    Fallocate,
    ZeroFill,
}

impl From<PreallocateArg> for Preallocate {
    fn from(arg: PreallocateArg) -> Preallocate {
        match arg {
            PreallocateArg::None => Preallocate::None,
            PreallocateArg::Fallocate => Preallocate::Fallocate,
            PreallocateArg::ZeroFill => Preallocate::ZeroFill,
        }
    }
}

type BenchError = Box<dyn std::error::Error>;

/// When a measurement stops.
#[derive(Clone, Copy)]
enum Limit {
    Syncs(u64),
    Time(Duration),
}

impl Limit {
    fn done(&self, syncs: u64, started: Instant) -> bool {
        match *self {
            Limit::Syncs(n) => syncs >= n,
            // Checking the clock every sync costs ~20 ns next to a ~100 µs sync.
            Limit::Time(d) => started.elapsed() >= d,
        }
    }
}

#[derive(Default)]
struct Measurement {
    syncs: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Measurement {
    fn add(&mut self, other: Measurement) {
        self.syncs += other.syncs;
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
    }

    fn per_sec(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the `storage` mode.
pub fn run(args: &StorageArgs) -> Result<(), BenchError> {
    if args.batch.contains(&0) {
        return Err("--batch sizes must be positive".into());
    }
    let limit = match args.n {
        Some(n) if n > 0 => Limit::Syncs(n),
        Some(_) => return Err("--n must be positive".into()),
        None if args.secs > 0.0 => Limit::Time(Duration::from_secs_f64(args.secs)),
        None => return Err("--secs must be positive".into()),
    };
    let parent = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()?,
    };
    let base = parent.join(format!("spaxos-bench-storage-{}", std::process::id()));
    fs::create_dir_all(&base)?;
    let result = run_in(args, limit, &base);
    if !args.keep {
        let _ = fs::remove_dir_all(&base);
    }
    result
}

/// Measurements alternate between the store and the raw loop in this many
/// rounds, so both see the same background load on a shared machine.
const ROUNDS: u32 = 10;

fn run_in(args: &StorageArgs, limit: Limit, base: &Path) -> Result<(), BenchError> {
    let options = DiskOptions {
        segment_bytes_max: args.segment_mib << 20,
        preallocate: args.preallocate.into(),
    };
    let round_limit = match limit {
        Limit::Syncs(n) => Limit::Syncs(n.div_ceil(ROUNDS as u64)),
        Limit::Time(d) => Limit::Time(d / ROUNDS),
    };
    for &batch in &args.batch {
        let store_dir = base.join(format!("store-batch-{batch}"));
        let raw_path = base.join(format!("raw-batch-{batch}"));
        let mut writer = StoreWriter::open(&store_dir, options, batch, args.value_bytes)?;
        let mut raw = RawWriter::open(&raw_path)?;
        let mut spaxos = Measurement::default();
        let mut baseline = Measurement::default();
        for _ in 0..ROUNDS {
            spaxos.add(writer.run(round_limit)?);
            let bytes_per_sync = spaxos.bytes / spaxos.syncs.max(1);
            baseline.add(raw.run(bytes_per_sync as usize, round_limit)?);
        }
        drop(writer);
        fs::remove_dir_all(&store_dir)?;
        drop(raw);
        fs::remove_file(&raw_path)?;

        let records = spaxos.syncs * batch as u64;
        let line = serde_json::json!({
            "system": "spaxos",
            "mode": "storage",
            "batch": batch,
            "value_bytes": args.value_bytes,
            "preallocate": format!("{:?}", args.preallocate),
            "records_per_sec": round1(spaxos.per_sec(records)),
            "mb_per_sec": round1(spaxos.per_sec(spaxos.bytes) / 1e6),
            "payload_mb_per_sec": round1(spaxos.per_sec(records * args.value_bytes as u64) / 1e6),
            "syncs_per_sec": round1(spaxos.per_sec(spaxos.syncs)),
            "bytes_per_sync": spaxos.bytes / spaxos.syncs.max(1),
            "raw_mb_per_sec": round1(baseline.per_sec(baseline.bytes) / 1e6),
            "raw_syncs_per_sec": round1(baseline.per_sec(baseline.syncs)),
            "syncs": spaxos.syncs,
            "raw_syncs": baseline.syncs,
        });
        println!("{line}");
    }
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Writes batches of `batch` accepted instances through `DiskStorage`.
struct StoreWriter {
    store: DiskStorage,
    payload: Bytes,
    batch: usize,
    records: Vec<Record>,
    index: u64,
}

impl StoreWriter {
    fn open(
        dir: &Path,
        options: DiskOptions,
        batch: usize,
        value_bytes: usize,
    ) -> Result<StoreWriter, BenchError> {
        Ok(StoreWriter {
            store: DiskStorage::open_with(dir, options)?,
            payload: Bytes::from(vec![0xabu8; value_bytes]),
            batch,
            records: Vec::with_capacity(batch),
            index: 0,
        })
    }

    fn run(&mut self, limit: Limit) -> Result<Measurement, BenchError> {
        let bytes_before = self.store.bytes_written();
        let mut syncs = 0u64;
        let started = Instant::now();
        while !limit.done(syncs, started) {
            self.records.clear();
            for _ in 0..self.batch {
                self.index += 1;
                self.records.push(Record::Instance(InstanceState {
                    index: self.index,
                    promised: Ballot::new(1, 1),
                    accepted: Ballot::new(1, 1),
                    value: Some(Value::One {
                        reqid: self.index,
                        value: self.payload.clone(),
                    }),
                    chosen: false,
                }));
            }
            self.store.write(&self.records)?;
            syncs += 1;
        }
        Ok(Measurement {
            syncs,
            bytes: self.store.bytes_written() - bytes_before,
            elapsed: started.elapsed(),
        })
    }
}

/// The baseline: append the same bytes per sync with `pwrite` + `fdatasync`
/// to a plain file that grows as it is written.
struct RawWriter {
    file: File,
    offset: u64,
}

impl RawWriter {
    fn open(path: &Path) -> Result<RawWriter, BenchError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(RawWriter { file, offset: 0 })
    }

    fn run(&mut self, bytes_per_sync: usize, limit: Limit) -> Result<Measurement, BenchError> {
        let buffer = vec![0xabu8; bytes_per_sync.max(1)];
        let mut syncs = 0u64;
        let started = Instant::now();
        while !limit.done(syncs, started) {
            self.file.write_all_at(&buffer, self.offset)?;
            self.file.sync_data()?;
            self.offset += buffer.len() as u64;
            syncs += 1;
        }
        Ok(Measurement {
            syncs,
            bytes: syncs * buffer.len() as u64,
            elapsed: started.elapsed(),
        })
    }
}
