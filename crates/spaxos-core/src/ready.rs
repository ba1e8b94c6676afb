//! The core's output: what to persist, what to send, what was decided.

use crate::message::Message;
use crate::types::{ChosenItem, Index, NodeId, Outcome, Record, ReqId};

/// Everything the core produced since the last [`crate::Node::ready`] call.
///
/// The driver must, in this order: write `records` durably (one batch, one
/// sync), then send `messages` (those addressed to this node go back into
/// [`crate::Node::step`]). `messages_now` promise nothing about local durable
/// state and may be sent at once. `chosen`, `outcomes` and `reads` may be
/// handled at any time.
#[derive(Default, Debug)]
pub struct Ready {
    /// Hard state to make durable, in order.
    pub records: Vec<Record>,
    /// Messages that may leave only after `records` (and every earlier
    /// batch) are durable.
    pub messages: Vec<Message>,
    /// Messages that need no durable state (accept requests from a leader,
    /// heartbeats, forwards, learns, catch-up).
    pub messages_now: Vec<Message>,
    /// Newly decided entries, in index order, each exactly once per run of
    /// the core. Duplicates of a reqid within the dedup window come out as
    /// no-ops.
    pub chosen: Vec<ChosenItem>,
    /// Outcomes of proposals made on this node.
    pub outcomes: Vec<(ReqId, Outcome)>,
    /// Catch-up requests for entries the core has already retired from
    /// memory: the driver reads chosen values `from_index..=to_index` from
    /// storage and sends them to `to` as a `Learn` (or `Compacted`).
    pub reads: Vec<ReadRequest>,
}

impl Ready {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.messages.is_empty()
            && self.messages_now.is_empty()
            && self.chosen.is_empty()
            && self.outcomes.is_empty()
            && self.reads.is_empty()
    }
}

/// A request to serve chosen values from storage to a peer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReadRequest {
    pub to: NodeId,
    pub from_index: Index,
    pub to_index: Index,
}
