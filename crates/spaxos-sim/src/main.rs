//! `spaxos-sim`: run seeds of the deterministic cluster simulation.
//!
//! ```text
//! cargo run --release -p spaxos-sim -- --seeds 1000 [--start 0] [--nodes 3|5]
//! cargo run --release -p spaxos-sim -- --seed 42 --trace
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use spaxos_sim::{run, Mutation, SimConfig};

#[derive(Parser, Debug)]
#[command(about = "Seeded deterministic simulation of spaxos clusters")]
struct Args {
    /// Number of seeds to run (seeds start..start+seeds).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size (3 or 5); by default seeds alternate between 3 and 5.
    #[arg(long)]
    nodes: Option<usize>,
    /// Print the event trace of a replayed seed.
    #[arg(long)]
    trace: bool,
    /// Ticks with faults on.
    #[arg(long, default_value_t = 1500)]
    chaos_ticks: u64,
    /// Break a rule on purpose to show the checkers catch it:
    /// send-before-persist or lying-disk.
    #[arg(long)]
    mutate: Option<Mutation>,
}

fn nodes_for(seed: u64, fixed: Option<usize>) -> usize {
    fixed.unwrap_or(if seed.is_multiple_of(2) { 3 } else { 5 })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(n) = args.nodes {
        if n != 3 && n != 5 {
            eprintln!("error: --nodes must be 3 or 5, got {n}");
            return ExitCode::from(2);
        }
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.start..args.start + args.seeds).collect(),
    };
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut messages = 0u64;
    let mut crashes = 0u64;
    let mut chosen = 0usize;
    let (mut suppressed, mut repeats) = (0u64, 0u64);
    for seed in seeds {
        let nodes = nodes_for(seed, args.nodes);
        let mut cfg = SimConfig::new(seed, nodes);
        cfg.trace = args.trace;
        cfg.mutation = args.mutate;
        cfg.chaos_ticks = args.chaos_ticks;
        let report = run(cfg);
        for line in &report.trace {
            println!("{line}");
        }
        messages += report.messages;
        crashes += report.crashes;
        chosen += report.chosen;
        suppressed += report.raw_duplicates;
        repeats += report.repeats_past_window;
        if report.passed() {
            passed += 1;
            if args.seed.is_some() {
                println!(
                    "seed {seed} ({nodes} nodes) passed: {} proposals, {} chosen, {} messages, {} crashes",
                    report.proposals, report.chosen, report.messages, report.crashes
                );
            }
        } else {
            failed += 1;
            println!("FAIL seed {seed} ({nodes} nodes):");
            for v in &report.violations {
                println!("  {v}");
            }
            let mutate = args
                .mutate
                .map(|m| format!(" --mutate {}", mutation_name(m)))
                .unwrap_or_default();
            println!(
                "  replay: cargo run --release -p spaxos-sim -- --seed {seed} --nodes {nodes}{mutate} --trace"
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{:.1} seeds/s, {chosen} entries chosen, {messages} messages, {crashes} crashes, \
         {suppressed} duplicates suppressed, {repeats} repeats past the dedup window in {secs:.1}s",
        (passed + failed) as f64 / secs
    );
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn mutation_name(m: Mutation) -> &'static str {
    match m {
        Mutation::SendBeforePersist => "send-before-persist",
        Mutation::LyingDisk => "lying-disk",
    }
}
