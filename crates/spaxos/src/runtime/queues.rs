//! What travels on the queues between the API, the state-machine thread
//! (SMT) and the storage thread (ST), and how long each queue is. Every
//! queue is bounded (STYLE 7); docs/ARCHITECTURE.md ("Threads and queues")
//! draws them.

use crossbeam_channel::Sender;
use spaxos_core::{
    ChosenItem, Index, Message, Outcome, ReadRequest, Record, RecoveredState, Value,
};

use super::error::{Error, ProposalError};
use super::slot::SlotSender;

/// API requests waiting for the SMT (proposals mostly). When full,
/// `propose` blocks and `try_propose` returns `Busy`.
pub(crate) const COMMAND_QUEUE_MAX: usize = 4096;
/// Peer messages waiting for the SMT. When full, the transport stops reading
/// the sockets, so TCP pushes back on the peers.
pub(crate) const NETWORK_QUEUE_MAX: usize = 16384;
/// Jobs waiting for the ST. When full, the SMT waits: a slow disk pushes
/// back on proposers through the command queue.
pub(crate) const STORAGE_QUEUE_MAX: usize = 64;
/// ST reports waiting for the SMT (one per group commit at most).
pub(crate) const STORAGE_EVENT_QUEUE_MAX: usize = 64;
/// Chosen items buffered for one subscriber; a subscriber further behind is
/// disconnected rather than stalling the SMT (see `Spaxos::subscribe`).
pub(crate) const SUBSCRIBER_QUEUE_MAX: usize = 16384;
/// Inputs the SMT takes in one round before it hands the result to the ST:
/// large enough to batch, small enough that a flood of one kind of input
/// cannot delay a write for long.
pub(crate) const ROUND_INPUTS_MAX: usize = 4096;
/// Storage inputs one group commit drains at most.
pub(crate) const GROUP_COMMIT_INPUTS_MAX: usize = STORAGE_QUEUE_MAX * 2;

const _: () = assert!(STORAGE_QUEUE_MAX > 0 && COMMAND_QUEUE_MAX > 0);
const _: () = assert!(GROUP_COMMIT_INPUTS_MAX >= STORAGE_QUEUE_MAX);

/// The reply to one proposal.
pub(crate) type ProposalReply = SlotSender<Result<Outcome, ProposalError>>;

/// API → SMT.
pub(crate) enum Command {
    Propose {
        value: Value,
        reply: ProposalReply,
    },
    /// Every item chosen from now on, in index order as delivered.
    Subscribe {
        items: Sender<ChosenItem>,
    },
    /// Items from `from` on; the reply says the first index that will come
    /// live (older ones the stream reads from storage).
    SubscribeOrdered {
        from: Index,
        items: Sender<ChosenItem>,
        live_from: Sender<Index>,
    },
    /// Compact storage through `index` (minus the dedup window).
    Checkpoint {
        index: Index,
        reply: Sender<Result<Index, Error>>,
    },
}

/// The SMT's output of one round, for the ST: write `records`, then release
/// `messages` and `messages_after_write`, then serve `reads`.
pub(crate) struct Job {
    /// The core incarnation that produced the job. After a failed write the
    /// ST drops every job of older incarnations: they may depend on records
    /// that never became durable.
    pub generation: u64,
    pub records: Vec<Record>,
    /// `Ready::messages`: only after `records` (and every earlier job) are durable.
    pub messages: Vec<Message>,
    /// `Ready::messages_now` when the SMT did not send them itself.
    pub messages_after_write: Vec<Message>,
    pub reads: Vec<ReadRequest>,
}

impl Job {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.messages.is_empty()
            && self.messages_after_write.is_empty()
            && self.reads.is_empty()
    }
}

/// SMT and API → ST. One queue, so a request is served only after every
/// job queued before it is written (a `get` after `Chosen` sees the value).
pub(crate) enum StorageInput {
    Job(Job),
    Get {
        index: Index,
        reply: Sender<Result<Option<Value>, Error>>,
    },
    /// Chosen values in `from..=to`, for an ordered stream.
    ReadRange {
        from: Index,
        to: Index,
        bytes_max: usize,
        reply: Sender<Result<Vec<(Index, Value)>, Error>>,
    },
    Compact {
        through: Index,
        reply: Sender<Result<Index, Error>>,
    },
    /// Write what is queued before it, then exit.
    Shutdown,
}

/// ST → SMT.
pub(crate) enum StorageEvent {
    /// Messages to self whose batch is durable.
    Released {
        generation: u64,
        messages: Vec<Message>,
    },
    /// A write failed; storage was reopened and this is what is durable. The
    /// SMT restores its core from it and tags later jobs with `generation`.
    Rebuilt {
        generation: u64,
        recovered: Box<RecoveredState>,
        cause: String,
    },
    /// A write failed and storage could not be recovered: the node stops.
    Failed { reason: String },
}
