//! spaxos benchmarks. Each mode prints one JSON line per measurement on
//! stdout, e.g. `cargo run --release -p spaxos-bench -- storage`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cluster;
mod digest;
mod inproc;
mod storage_bench;

#[derive(Parser, Debug)]
#[command(
    name = "spaxos-bench",
    about = "spaxos benchmarks (JSON lines on stdout)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

/// One subcommand per benchmark mode; add new modes here.
#[derive(Subcommand, Debug)]
enum Mode {
    /// Durable log throughput: DiskStorage writes against a raw
    /// write+fdatasync loop in the same directory.
    Storage(storage_bench::StorageArgs),
    /// Protocol CPU cost: three cores in one thread, in-memory network and storage.
    Inproc(inproc::InprocArgs),
    /// Three real nodes (threads, loopback TCP, fdatasync) with closed-loop clients.
    Cluster(cluster::ClusterArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Storage(args) => storage_bench::run(&args),
        Mode::Inproc(args) => inproc::run(&args).map_err(Into::into),
        Mode::Cluster(args) => cluster::run(&args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spaxos-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
