//! What travels on the queues between the API, the state-machine thread
//! (SMT) and the storage thread (ST), and how long each queue is. Every
//! queue is bounded (STYLE 7); docs/ARCHITECTURE.md ("Threads and queues")
//! draws them.

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendError, SendTimeoutError, Sender, TrySendError};
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

/// Where the SMT sleeps when none of its queues holds an input, and what
/// wakes it: every producer (the transport, the ST through its
/// [`EventSender`], proposers through the [`Doorbell`], the stop signal)
/// calls [`Wakeup::notify`] after it queues something.
///
/// The SMT takes inputs only with `try_recv`, so no queue's own waker is
/// ever registered and a send never takes a channel's waker lock. With a
/// blocking `select!` over the queues, the sender held that lock while it
/// woke the SMT, and the SMT, awake at once on the other core, blocked on
/// the same lock to unregister: a second sleep and wake-up on ~30 % of its
/// wake-ups, on the path of every accept and acknowledgement.
#[derive(Default)]
pub(crate) struct Wakeup {
    /// Bumped by each notify that finds the SMT asleep; the futex word.
    rings: AtomicU32,
    sleeping: AtomicBool,
}

impl Wakeup {
    pub(crate) fn new() -> Arc<Wakeup> {
        Arc::new(Wakeup::default())
    }

    /// Producer side, after it queued an input for the SMT.
    pub(crate) fn notify(&self) {
        // Pairs with the fence in `sleep_until`: either the SMT's check
        // sees what was queued, or this sees it asleep.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            // Release: an SMT that reads the new count sees the input.
            self.rings.fetch_add(1, Ordering::Release);
            super::slot::futex::wake_all(&self.rings);
        }
    }

    /// SMT side: sleeps until notified or `deadline`, unless `ready` (which
    /// checks the queues) says an input is there already. May return early.
    pub(crate) fn sleep_until(&self, deadline: Instant, ready: impl Fn() -> bool) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let seen = self.rings.load(Ordering::Acquire);
        if !ready() {
            let timeout = deadline.saturating_duration_since(Instant::now());
            if !timeout.is_zero() {
                // Returns at once if a notify bumped `rings` after `seen`.
                super::slot::futex::wait(&self.rings, seen, Some(timeout));
            }
        }
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

/// Lets the SMT sleep through proposals it is gathering
/// (`state_machine::Gather`) until enough are queued, instead of being woken
/// by each.
///
/// While it holds proposals for `n` proposers still expected back, the SMT
/// does not count the command queue as input; a submitter that finds `n` or
/// more commands queued after its own rings the bell, which wakes it.
/// Without this, each returning proposer's send woke the SMT for one command
/// (a system call for the proposer, a switch for the SMT), and the SMT's
/// brief rounds took a core the returning proposers needed.
pub(crate) struct Doorbell {
    /// Queued commands at which to ring; `usize::MAX` when the SMT takes
    /// every command as input (then each submit notifies it).
    wanted: AtomicUsize,
    rung: AtomicBool,
    wakeup: Arc<Wakeup>,
}

impl Doorbell {
    pub(crate) fn new(wakeup: Arc<Wakeup>) -> Doorbell {
        Doorbell {
            wanted: AtomicUsize::new(usize::MAX),
            rung: AtomicBool::new(false),
            wakeup,
        }
    }

    /// Submitter side, after it queued a command on `queue`.
    pub(crate) fn queued(&self, queue: &Sender<Command>) {
        // Pairs with the fence in `expect`: either the SMT sees this
        // command in the queue's length, or this sees its `wanted`.
        fence(Ordering::SeqCst);
        let wanted = self.wanted.load(Ordering::Relaxed);
        if wanted == usize::MAX {
            self.wakeup.notify();
        } else if queue.len() >= wanted {
            self.rung.store(true, Ordering::Relaxed);
            self.wakeup.notify();
        }
    }

    /// SMT side, before it sleeps: ring once `count` commands are queued.
    /// True if that many are queued already (then it need not sleep).
    pub(crate) fn expect(&self, count: usize, queue: &Receiver<Command>) -> bool {
        self.wanted.store(count, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        queue.len() >= count
    }

    /// SMT side, awake again: every command wakes it again.
    pub(crate) fn clear(&self) {
        self.wanted.store(usize::MAX, Ordering::Relaxed);
        self.rung.store(false, Ordering::Relaxed);
    }

    /// Whether a submitter rang since the last [`Doorbell::clear`].
    pub(crate) fn is_rung(&self) -> bool {
        self.rung.load(Ordering::Relaxed)
    }
}

/// API → SMT: the command queue's sending side, which notifies the SMT
/// (through the [`Doorbell`]) after every command it queues.
#[derive(Clone)]
pub(crate) struct CommandSender {
    queue: Sender<Command>,
    doorbell: Arc<Doorbell>,
}

impl CommandSender {
    pub(crate) fn new(queue: Sender<Command>, doorbell: Arc<Doorbell>) -> CommandSender {
        CommandSender { queue, doorbell }
    }

    /// Queues `command`, waiting while the queue is full.
    pub(crate) fn send(&self, command: Command) -> Result<(), SendError<Command>> {
        self.queue.send(command)?;
        self.doorbell.queued(&self.queue);
        Ok(())
    }

    /// Queues `command` unless the queue is full.
    pub(crate) fn try_send(&self, command: Command) -> Result<(), TrySendError<Command>> {
        self.queue.try_send(command)?;
        self.doorbell.queued(&self.queue);
        Ok(())
    }

    /// Queues `command`, waiting at most `timeout` while the queue is full.
    pub(crate) fn send_timeout(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<Command>> {
        self.queue.send_timeout(command, timeout)?;
        self.doorbell.queued(&self.queue);
        Ok(())
    }
}

/// ST → SMT: the storage-event queue's sending side, which notifies the SMT
/// after every event it queues.
pub(crate) struct EventSender {
    queue: Sender<StorageEvent>,
    wakeup: Arc<Wakeup>,
}

impl EventSender {
    pub(crate) fn new(queue: Sender<StorageEvent>, wakeup: Arc<Wakeup>) -> EventSender {
        EventSender { queue, wakeup }
    }

    /// Queues `event`, waiting while the queue is full.
    pub(crate) fn send(&self, event: StorageEvent) -> Result<(), SendError<StorageEvent>> {
        self.queue.send(event)?;
        self.wakeup.notify();
        Ok(())
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
    use crossbeam_channel::bounded;

    /// The SMT's loop in miniature: take what is queued, else sleep on the
    /// wake-up. A notify lost between the check and the sleep would leave
    /// the consumer asleep until its deadline (10 s here): each wait must
    /// end long before that.
    #[test]
    fn no_notify_is_lost_under_a_race() {
        const ITEMS: usize = 20_000;
        let wakeup = Wakeup::new();
        let (queue, taken) = bounded::<usize>(4);
        let producer = {
            let wakeup = Arc::clone(&wakeup);
            std::thread::spawn(move || {
                for item in 0..ITEMS {
                    queue.send(item).unwrap();
                    wakeup.notify();
                    if item % 7 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut received = 0;
        while received < ITEMS {
            if taken.try_recv().is_ok() {
                received += 1;
                continue;
            }
            let started = Instant::now();
            wakeup.sleep_until(started + Duration::from_secs(10), || !taken.is_empty());
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "item {received}: queued and notified, and the consumer slept on"
            );
        }
        producer.join().unwrap();
    }

    #[test]
    fn a_sleep_ends_at_its_deadline_or_when_ready() {
        let wakeup = Wakeup::new();
        let started = Instant::now();
        wakeup.sleep_until(started + Duration::from_millis(30), || false);
        assert!(started.elapsed() >= Duration::from_millis(30));
        let started = Instant::now();
        wakeup.sleep_until(started + Duration::from_secs(10), || true);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "ready: no sleep"
        );
    }

    fn command() -> Command {
        Command::Subscribe {
            items: bounded(1).0,
        }
    }

    #[test]
    fn rings_only_while_expecting_and_once_enough_are_queued() {
        let (queue, taken) = bounded(16);
        let doorbell = Doorbell::new(Wakeup::new());
        for _ in 0..4 {
            queue.send(command()).unwrap();
            doorbell.queued(&queue);
        }
        assert!(
            !doorbell.is_rung(),
            "no one expects: the queue's own wake-ups serve"
        );
        while taken.try_recv().is_ok() {}

        assert!(!doorbell.expect(3, &taken));
        for expected_ring in [false, false, true] {
            queue.send(command()).unwrap();
            doorbell.queued(&queue);
            assert_eq!(doorbell.is_rung(), expected_ring);
        }
        assert!(doorbell.expect(3, &taken), "three are queued already");
        doorbell.clear();
        queue.send(command()).unwrap();
        doorbell.queued(&queue);
        assert!(!doorbell.is_rung(), "cleared");
    }

    #[test]
    fn clear_drops_a_ring_that_came_too_late() {
        let (queue, taken) = bounded(4);
        let doorbell = Doorbell::new(Wakeup::new());
        assert!(!doorbell.expect(1, &taken));
        queue.send(command()).unwrap();
        doorbell.queued(&queue);
        doorbell.clear();
        assert!(!doorbell.is_rung());
    }

    /// A submitter and a waiter race, round by round: the waiter lets the
    /// submitter send exactly `count` commands and expects them at the same
    /// moment, so a ring lost in the race is never covered by a later send.
    #[test]
    fn no_ring_is_lost_under_a_race() {
        const ROUNDS: usize = 5_000;
        let (queue, taken) = bounded(64);
        let wakeup = Wakeup::new();
        let doorbell = std::sync::Arc::new(Doorbell::new(Arc::clone(&wakeup)));
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
                // Stale rings are dropped by `clear`; this one is ours or
                // the count is already queued. The SMT's wait: sleep on the
                // wake-up until the bell is rung.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !doorbell.is_rung() && Instant::now() < deadline {
                    wakeup.sleep_until(deadline, || doorbell.is_rung());
                }
                assert!(
                    doorbell.is_rung(),
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
