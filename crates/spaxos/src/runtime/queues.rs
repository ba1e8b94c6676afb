//! What travels on the queues between the API, the state-machine thread
//! (SMT) and the storage thread (ST), and how long each queue is. Every
//! queue is bounded (STYLE 7); docs/ARCHITECTURE.md ("Threads and queues")
//! draws them.

use std::sync::atomic::{fence, AtomicUsize, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender};
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

/// Lets the SMT sleep through proposals it is gathering
/// (`state_machine::Gather`) until enough are queued, instead of being woken
/// by each.
///
/// While it holds proposals for `n` proposers still expected back, the SMT
/// waits on the bell and not on the command queue itself; a submitter that
/// finds `n` or more commands queued after its own rings it. Without this,
/// each returning proposer's send woke the SMT for one command (a system
/// call for the proposer, a switch for the SMT), and the SMT's brief rounds
/// took a core the returning proposers needed.
pub(crate) struct Doorbell {
    /// Queued commands at which to ring; `usize::MAX` when the SMT waits on
    /// the queue itself.
    wanted: AtomicUsize,
    ring: Sender<()>,
    rung: Receiver<()>,
}

impl Doorbell {
    pub(crate) fn new() -> Doorbell {
        let (ring, rung) = bounded(1);
        Doorbell {
            wanted: AtomicUsize::new(usize::MAX),
            ring,
            rung,
        }
    }

    /// Submitter side, after it queued a command on `queue`.
    pub(crate) fn queued(&self, queue: &Sender<Command>) {
        // Pairs with the fence in `expect`: either the SMT sees this
        // command in the queue's length, or this sees its `wanted`.
        fence(Ordering::SeqCst);
        if queue.len() >= self.wanted.load(Ordering::Relaxed) {
            // Full means already rung: the SMT wakes once either way.
            let _ = self.ring.try_send(());
        }
    }

    /// SMT side, before it sleeps: ring once `count` commands are queued.
    /// True if that many are queued already (then it need not sleep).
    pub(crate) fn expect(&self, count: usize, queue: &Receiver<Command>) -> bool {
        self.wanted.store(count, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        queue.len() >= count
    }

    /// SMT side, awake again: the queue's own wake-ups are back in use.
    pub(crate) fn clear(&self) {
        self.wanted.store(usize::MAX, Ordering::Relaxed);
        while self.rung.try_recv().is_ok() {}
    }

    /// What the SMT selects on while it expects commands.
    pub(crate) fn rung(&self) -> &Receiver<()> {
        &self.rung
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn command() -> Command {
        Command::Subscribe {
            items: bounded(1).0,
        }
    }

    fn rung(doorbell: &Doorbell) -> bool {
        doorbell.rung().try_recv().is_ok()
    }

    #[test]
    fn rings_only_while_expecting_and_once_enough_are_queued() {
        let (queue, taken) = bounded(16);
        let doorbell = Doorbell::new();
        for _ in 0..4 {
            queue.send(command()).unwrap();
            doorbell.queued(&queue);
        }
        assert!(
            !rung(&doorbell),
            "no one expects: the queue's own wake-ups serve"
        );
        while taken.try_recv().is_ok() {}

        assert!(!doorbell.expect(3, &taken));
        for expected_ring in [false, false, true] {
            queue.send(command()).unwrap();
            doorbell.queued(&queue);
            assert_eq!(rung(&doorbell), expected_ring);
        }
        assert!(doorbell.expect(3, &taken), "three are queued already");
        doorbell.clear();
        queue.send(command()).unwrap();
        doorbell.queued(&queue);
        assert!(!rung(&doorbell), "cleared");
    }

    #[test]
    fn clear_drops_a_ring_that_came_too_late() {
        let (queue, taken) = bounded(4);
        let doorbell = Doorbell::new();
        assert!(!doorbell.expect(1, &taken));
        queue.send(command()).unwrap();
        doorbell.queued(&queue);
        doorbell.clear();
        assert!(!rung(&doorbell));
    }

    /// A submitter and a waiter race, round by round: the waiter lets the
    /// submitter send exactly `count` commands and expects them at the same
    /// moment, so a ring lost in the race is never covered by a later send.
    #[test]
    fn no_ring_is_lost_under_a_race() {
        const ROUNDS: usize = 5_000;
        let (queue, taken) = bounded(64);
        let doorbell = std::sync::Arc::new(Doorbell::new());
        let (go, gone) = bounded::<usize>(1);
        let submitter = {
            let doorbell = std::sync::Arc::clone(&doorbell);
            std::thread::spawn(move || {
                while let Ok(count) = gone.recv() {
                    for _ in 0..count {
                        queue.send(command()).unwrap();
                        doorbell.queued(&queue);
                    }
                }
            })
        };
        for round in 0..ROUNDS {
            let count = 1 + round % 4;
            go.send(count).unwrap();
            match round % 3 {
                // All sent before the waiter expects them: no one rings.
                0 => {
                    while taken.len() < count {
                        std::thread::yield_now();
                    }
                }
                1 => std::thread::yield_now(),
                _ => {}
            }
            if !doorbell.expect(count, &taken) {
                // Stale rings are drained by `clear`; this one is ours or
                // the count is already queued.
                let woke = doorbell.rung().recv_timeout(Duration::from_secs(10));
                assert!(
                    woke.is_ok(),
                    "round {round}: {count} commands sent and no ring"
                );
            }
            doorbell.clear();
            for _ in 0..count {
                taken
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the submitter sends every command");
            }
        }
        drop(go);
        submitter.join().unwrap();
    }
}
