//! Messages between nodes. The transport encodes them (protobuf); the core
//! only sees these types.

use crate::types::{AcceptEntries, Ballot, Index, NodeId, ReqId, Value};

/// A message from one node to another (`from == to` for messages to self,
/// which the runtime loops back after the batch they came with is durable).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub body: Body,
}

/// One accepted value reported in a phase-1 reply.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PromiseEntry {
    pub index: Index,
    /// Ballot the value was accepted at.
    pub accepted: Ballot,
    pub value: Value,
    /// The acceptor knows this value is chosen.
    pub chosen: bool,
}

/// Message kinds. See docs/ARCHITECTURE.md for the table of who sends what.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Body {
    /// Phase 1a for one index (leaderless proposals, no-op fills).
    Prepare { ballot: Ballot, index: Index },
    /// Phase 1b for one index: granted; the acceptor's accepted value, if any.
    Promise {
        ballot: Ballot,
        index: Index,
        accepted: Ballot,
        value: Option<Value>,
    },
    /// Phase 1a of a leader candidate: covers every index.
    /// `from_index` is the first index the candidate does not know as chosen.
    PrepareRange { ballot: Ballot, from_index: Index },
    /// Phase 1b for a range: every accepted value at or above `from_index`,
    /// plus how far the acceptor knows the log is chosen.
    PromiseRange {
        ballot: Ballot,
        from_index: Index,
        chosen_through: Index,
        entries: Vec<PromiseEntry>,
    },
    /// Phase 2a, batched. `chosen_through` piggybacks the proposer's
    /// knowledge: every index at or below it is chosen.
    Accept {
        ballot: Ballot,
        entries: AcceptEntries,
        chosen_through: Index,
    },
    /// Phase 2b, batched: the acceptor accepted `ballot` at these indices.
    Accepted { ballot: Ballot, indices: Vec<Index> },
    /// A prepare or accept at `ballot` was refused: the acceptor promised
    /// `promised`. `index` is 0 for a range prepare.
    Reject {
        ballot: Ballot,
        promised: Ballot,
        index: Index,
    },
    /// Leader liveness and progress.
    Heartbeat {
        ballot: Ballot,
        chosen_through: Index,
        max_index: Index,
    },
    /// A follower's answer to a heartbeat: its progress.
    HeartbeatAck {
        ballot: Ballot,
        chosen_through: Index,
        max_index: Index,
    },
    /// Chosen values: a catch-up reply or a leaderless proposer's broadcast.
    Learn { entries: Vec<(Index, Value)> },
    /// Ask a peer for chosen values in `from_index..=to_index`.
    CatchupRequest { from_index: Index, to_index: Index },
    /// A catch-up request could not be served: the peer compacted everything
    /// below `first_index`.
    Compacted { first_index: Index },
    /// A follower hands client proposals to the leader.
    Forward { values: Vec<Value> },
    /// The leader tells the origin of forwarded proposals where it put them.
    ForwardAck { assigned: Vec<(ReqId, Index)> },
}

impl Body {
    /// Short name for logs and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Prepare { .. } => "prepare",
            Body::Promise { .. } => "promise",
            Body::PrepareRange { .. } => "prepare_range",
            Body::PromiseRange { .. } => "promise_range",
            Body::Accept { .. } => "accept",
            Body::Accepted { .. } => "accepted",
            Body::Reject { .. } => "reject",
            Body::Heartbeat { .. } => "heartbeat",
            Body::HeartbeatAck { .. } => "heartbeat_ack",
            Body::Learn { .. } => "learn",
            Body::CatchupRequest { .. } => "catchup_request",
            Body::Compacted { .. } => "compacted",
            Body::Forward { .. } => "forward",
            Body::ForwardAck { .. } => "forward_ack",
        }
    }
}
