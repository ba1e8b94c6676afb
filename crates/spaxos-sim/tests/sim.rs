//! The simulation as a test: a batch of seeds must pass, and each deliberate
//! bug must be caught (the checkers bite).

use spaxos_sim::{run, Mutation, SimConfig};

fn failing_seeds(
    nodes: usize,
    seeds: std::ops::Range<u64>,
    mutation: Option<Mutation>,
) -> Vec<(u64, Vec<String>)> {
    seeds
        .filter_map(|seed| {
            let mut cfg = SimConfig::new(seed, nodes);
            cfg.mutation = mutation;
            let report = run(cfg);
            (!report.passed()).then_some((seed, report.violations))
        })
        .collect()
}

#[test]
fn three_node_seeds_pass() {
    let failed = failing_seeds(3, 0..60, None);
    assert!(failed.is_empty(), "failing seeds: {failed:#?}");
}

#[test]
fn five_node_seeds_pass() {
    let failed = failing_seeds(5, 1000..1040, None);
    assert!(failed.is_empty(), "failing seeds: {failed:#?}");
}

#[test]
fn same_seed_same_run() {
    let a = run(SimConfig::new(7, 3));
    let b = run(SimConfig::new(7, 3));
    assert_eq!(
        (a.proposals, a.chosen, a.messages, a.crashes),
        (b.proposals, b.chosen, b.messages, b.crashes)
    );
    assert!(a.chosen > 0 && a.messages > 0);
}

#[test]
fn sending_before_persisting_is_caught() {
    let failed = failing_seeds(3, 0..5, Some(Mutation::SendBeforePersist));
    assert!(
        !failed.is_empty(),
        "the durability checker missed a driver that sends before persisting"
    );
    let (seed, violations) = &failed[0];
    assert!(
        violations.iter().any(|v| v.contains("before persisting")
            || v.contains("disk promises only")
            || v.contains("disk has accepted only")),
        "seed {seed}: unexpected violations {violations:?}"
    );
}

#[test]
fn a_disk_that_loses_acknowledged_writes_breaks_safety_and_is_caught() {
    let failed = failing_seeds(3, 0..60, Some(Mutation::LyingDisk));
    assert!(
        !failed.is_empty(),
        "no seed caught a disk that loses acknowledged writes"
    );
}
