//! [`OrderedStream`]: chosen items strictly in index order from a given
//! index, old ones read from storage (through the storage thread), then live
//! ones from the state-machine thread, with no gap and no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use spaxos_core::{ChosenItem, Index};

use super::error::StreamError;
use super::queues::{Command, CommandSender, StorageInput, SUBSCRIBER_QUEUE_MAX};
use super::status::Shared;

/// Indices one storage read asks for at most (a read also stops at
/// `read_bytes_max` payload bytes).
const READ_INDICES_MAX: u64 = 1024;

/// Chosen items strictly in index order, from the index given to
/// [`crate::Spaxos::ordered_from`]: what a database applies.
///
/// Indices this node already delivered are read from its storage; then the
/// stream continues with items as they are chosen. An application that
/// records the last index it applied and, after a restart, opens
/// `ordered_from(applied + 1)` gets exactly the rest of the log.
///
/// A stream that falls behind never slows the node down: its live queue
/// (16384 items) is dropped when full and the stream quietly reads the gap
/// from storage. So a stream can only fail when what it needs was compacted
/// away ([`StreamError::Compacted`]), storage fails, or the node stops.
///
/// As an iterator it yields `Ok(item)` for each item and ends when the node
/// stops; any other error is yielded as `Err` and the stream stays at the
/// same index.
pub struct OrderedStream {
    next: Index,
    /// Items read from storage, not yet returned.
    buffer: VecDeque<ChosenItem>,
    /// The live subscription and the first index it carries.
    live: Option<(Receiver<ChosenItem>, Index)>,
    commands: CommandSender,
    storage: Sender<StorageInput>,
    shared: Arc<Shared>,
    /// How long to wait before asking storage again for an index this node
    /// delivered but has not yet made durable (only after a failed write).
    retry_interval: Duration,
    read_bytes_max: usize,
}

impl OrderedStream {
    pub(crate) fn new(
        from: Index,
        commands: CommandSender,
        storage: Sender<StorageInput>,
        shared: Arc<Shared>,
        retry_interval: Duration,
        read_bytes_max: usize,
    ) -> OrderedStream {
        OrderedStream {
            next: from.max(1),
            buffer: VecDeque::new(),
            live: None,
            commands,
            storage,
            shared,
            retry_interval,
            read_bytes_max,
        }
    }

    /// The index of the next item this stream returns.
    pub fn next_index(&self) -> Index {
        self.next
    }

    /// Blocks until the next item is chosen (or read from storage).
    pub fn recv(&mut self) -> Result<ChosenItem, StreamError> {
        self.recv_deadline(None)
    }

    /// Like [`OrderedStream::recv`], giving up with [`StreamError::Timeout`]
    /// after `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<ChosenItem, StreamError> {
        self.recv_deadline(Instant::now().checked_add(timeout))
    }

    /// The next item if it is available without waiting for the protocol
    /// (a storage read may still take a moment); `Err(Timeout)` otherwise.
    pub fn try_recv(&mut self) -> Result<ChosenItem, StreamError> {
        self.recv_deadline(Some(Instant::now()))
    }

    fn stopped(&self) -> StreamError {
        StreamError::Stopped {
            reason: self.shared.stop_reason(),
        }
    }

    fn recv_deadline(&mut self, deadline: Option<Instant>) -> Result<ChosenItem, StreamError> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                self.next = item.index + 1;
                return Ok(item);
            }
            let live_from = match &self.live {
                Some((_, live_from)) => *live_from,
                None => self.subscribe()?,
            };
            if self.next < live_from {
                self.fill_from_storage(live_from, deadline)?;
                continue;
            }
            let Some((live, _)) = &self.live else {
                continue;
            };
            let received = match deadline {
                None => live.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => live.recv_deadline(deadline),
            };
            match received {
                Ok(item) if item.index == self.next => {
                    self.next += 1;
                    return Ok(item);
                }
                // Already returned from storage.
                Ok(item) if item.index < self.next => {}
                // Not the next one (cannot happen while the SMT delivers a
                // contiguous prefix): start over from storage.
                Ok(_) => self.live = None,
                Err(RecvTimeoutError::Timeout) => return Err(StreamError::Timeout),
                // We fell behind and were dropped, or the node stopped:
                // subscribing again tells which.
                Err(RecvTimeoutError::Disconnected) => self.live = None,
            }
        }
    }

    /// Subscribes from `next`; returns the first index that will come live.
    fn subscribe(&mut self) -> Result<Index, StreamError> {
        let (items, live) = bounded(SUBSCRIBER_QUEUE_MAX);
        let (live_from_tx, live_from_rx) = bounded(1);
        self.commands
            .send(Command::SubscribeOrdered {
                from: self.next,
                items,
                live_from: live_from_tx,
            })
            .map_err(|_| self.stopped())?;
        let live_from = live_from_rx.recv().map_err(|_| self.stopped())?;
        self.live = Some((live, live_from));
        Ok(live_from)
    }

    /// Reads the next indices below `live_from` from storage into `buffer`.
    fn fill_from_storage(
        &mut self,
        live_from: Index,
        deadline: Option<Instant>,
    ) -> Result<(), StreamError> {
        let from = self.next;
        let to = (live_from - 1).min(from.saturating_add(READ_INDICES_MAX - 1));
        let (reply, result) = bounded(1);
        self.storage
            .send(StorageInput::ReadRange {
                from,
                to,
                bytes_max: self.read_bytes_max,
                reply,
            })
            .map_err(|_| self.stopped())?;
        let entries = result.recv().map_err(|_| self.stopped())??;
        // Storage returns a contiguous run from `from`; keep only that.
        for (expected, (index, value)) in (from..).zip(entries) {
            if index != expected {
                break;
            }
            self.buffer.push_back(ChosenItem { index, value });
        }
        if self.buffer.is_empty() {
            // This node delivered `from` but its write has not landed (a
            // failed write rebuilt the core, which learns it again).
            let now = Instant::now();
            let mut pause = self.retry_interval;
            if let Some(deadline) = deadline {
                if now >= deadline {
                    return Err(StreamError::Timeout);
                }
                pause = pause.min(deadline - now);
            }
            std::thread::sleep(pause);
        }
        Ok(())
    }
}

impl Iterator for OrderedStream {
    type Item = Result<ChosenItem, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.recv() {
            Err(StreamError::Stopped { .. }) => None,
            other => Some(other),
        }
    }
}

impl std::fmt::Debug for OrderedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedStream")
            .field("next", &self.next)
            .field("buffered", &self.buffer.len())
            .field("live_from", &self.live.as_ref().map(|l| l.1))
            .finish()
    }
}
