//! Shared helpers for the per-rule tests: deterministic configs, terse
//! constructors for ballots, values, messages and instance states, and a few
//! drivers that bring a node into a known role.
//!
//! Every test compares whole outputs (`Vec<Record>`, `Vec<Message>`), so the
//! helpers only build inputs; they never filter what a node emits.

#![allow(dead_code)]

use spaxos_core::{
    Ballot, Body, CoreConfig, Index, InstanceState, Message, Node, NodeId, NodeState, Ready,
    RecoveredState, ReqId, Value,
};

/// Three members; most tests use this group.
pub const MEMBERS: [NodeId; 3] = [1, 2, 3];

/// A config whose timers are all explicit and jitter-free
/// (`*_range_ticks = 1` makes the random part `rand(0..1) = 0`), and whose
/// background activities (election, leaderless fallback, no-op fill, accept
/// retries) are far away unless a test brings them closer.
pub fn cfg(id: NodeId) -> CoreConfig {
    cfg_with(id, &MEMBERS)
}

pub fn cfg_with(id: NodeId, members: &[NodeId]) -> CoreConfig {
    let mut c = CoreConfig::new(id, members.to_vec());
    c.rng_seed = 42;
    c.heartbeat_ticks = 2;
    c.election_timeout_ticks = 10;
    c.election_timeout_range_ticks = 1;
    c.accept_retry_ticks = 1_000;
    c.forward_retry_ticks = 8;
    c.retry_backoff_ticks = 3;
    c.leaderless_delay_ticks = 1_000;
    c.noop_timeout_ticks = 1_000;
    c.catchup_retry_ticks = 6;
    c.retry_lost = true;
    c.validate().expect("test config is valid");
    c
}

/// A config for a node that never campaigns on its own (pure acceptor or
/// follower tests).
pub fn passive_cfg(id: NodeId) -> CoreConfig {
    let mut c = cfg(id);
    c.election_timeout_ticks = 100_000;
    c
}

pub fn b(round: u64, node: NodeId) -> Ballot {
    Ballot::new(round, node)
}

pub fn one(reqid: ReqId, payload: &'static str) -> Value {
    Value::One {
        reqid,
        value: payload.into(),
    }
}

pub fn msg(from: NodeId, to: NodeId, body: Body) -> Message {
    Message { from, to, body }
}

pub fn node_state(max_round: u64, promised: Ballot) -> NodeState {
    NodeState {
        max_round,
        promised,
    }
}

/// An instance that promised `promised` and accepted `value` at `accepted`.
pub fn accepted(index: Index, promised: Ballot, accepted: Ballot, value: Value) -> InstanceState {
    InstanceState {
        index,
        promised,
        accepted,
        value: Some(value),
        chosen: false,
    }
}

/// An instance that only promised.
pub fn promised(index: Index, promised: Ballot) -> InstanceState {
    InstanceState {
        index,
        promised,
        accepted: Ballot::ZERO,
        value: None,
        chosen: false,
    }
}

pub fn chosen(index: Index, ballot: Ballot, value: Value) -> InstanceState {
    InstanceState {
        index,
        promised: ballot,
        accepted: ballot,
        value: Some(value),
        chosen: true,
    }
}

/// A value learned as chosen at an index this node never promised or
/// accepted (catch-up, a `Learn`, a chosen entry in a promise).
pub fn learned(index: Index, value: Value) -> InstanceState {
    InstanceState {
        index,
        promised: Ballot::ZERO,
        accepted: Ballot::ZERO,
        value: Some(value),
        chosen: true,
    }
}

pub fn restore(cfg: CoreConfig, node: NodeState, instances: Vec<InstanceState>) -> Node {
    Node::restore(
        cfg,
        RecoveredState {
            node,
            chosen_through: 0,
            instances,
            recent_reqids: Vec::new(),
        },
    )
    .expect("valid config")
}

/// Drains the node and asserts nothing at all came out.
pub fn assert_quiet(node: &mut Node) {
    let ready = node.ready();
    assert!(ready.is_empty(), "expected an empty Ready, got {ready:?}");
}

/// Ticks until the node starts an election (at most `limit` ticks) and
/// returns that Ready.
pub fn tick_until_election(node: &mut Node, limit: u32) -> Ready {
    for _ in 0..limit {
        node.tick();
        let ready = node.ready();
        let campaigning = ready
            .messages
            .iter()
            .any(|m| matches!(m.body, Body::PrepareRange { .. }));
        if campaigning {
            return ready;
        }
        assert!(
            ready.records.is_empty() && ready.messages.is_empty(),
            "unexpected output before the election: {ready:?}"
        );
    }
    panic!("no election within {limit} ticks");
}

/// Makes `node` leader of ballot `(round, id)` with empty logs everywhere:
/// the election, its own promise, and one peer's empty promise. Drains the
/// Ready of the win, so the caller starts from a quiet leader.
pub fn elect(node: &mut Node, peer: NodeId) -> Ballot {
    let ready = tick_until_election(node, 1_000);
    let (ballot, from_index) = match ready.messages[0].body {
        Body::PrepareRange { ballot, from_index } => (ballot, from_index),
        ref other => panic!("expected a PrepareRange, got {other:?}"),
    };
    let me = node.id();
    for m in ready.messages.into_iter().filter(|m| m.to == me) {
        node.step(m);
    }
    let ready = node.ready();
    for m in ready.messages.into_iter().filter(|m| m.to == me) {
        node.step(m);
    }
    node.step(msg(
        peer,
        me,
        Body::PromiseRange {
            ballot,
            from_index,
            chosen_through: node.chosen_through(),
            entries: Vec::new(),
        },
    ));
    assert!(node.is_leader(), "node {me} did not win ballot {ballot}");
    node.ready();
    ballot
}

/// Delivers every message in `msgs` addressed to `node`.
pub fn deliver_to(node: &mut Node, msgs: &[Message]) {
    let me = node.id();
    for m in msgs.iter().filter(|m| m.to == me) {
        node.step(m.clone());
    }
}
