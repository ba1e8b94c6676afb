//! The storage thread (ST, seed §"ST"): owns the [`Storage`] and makes the
//! core's hard state durable before anything that depends on it leaves.
//!
//! Group commit: take one input, then everything else already queued (at
//! most [`GROUP_COMMIT_INPUTS_MAX`]); write the records of all those jobs
//! with one `Storage::write` (one `fdatasync`); then release their messages
//! in order (to self: back to the SMT; to peers: the transport) and serve
//! their catch-up reads; then answer API requests (get, ordered-stream
//! reads, compaction). A request queued behind a job sees that job's writes.
//!
//! Chosen marks that release nothing are handed to
//! `Storage::write_deferred` (no sync of their own; the next write carries
//! them). When no write has carried them [`DEFERRED_MARKS_FLUSH_AFTER`]
//! after the first was deferred, an empty write makes them durable, so a
//! node that goes quiet (or only serves reads) does not keep its last marks
//! in memory only.
//!
//! A failed write acknowledges nothing: its messages are dropped. Then, as
//! the seed says, the ST rebuilds: it reopens storage (a store refuses writes
//! after a failure), recovers what is durable, and hands it to the SMT,
//! which restores its core from it. Jobs from the old core are dropped (they
//! may depend on records that never became durable). If storage cannot be
//! recovered, the node stops with that error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use spaxos_core::{Body, Message, NodeId, ReadRequest, Record};
use spaxos_storage::{Storage, StorageError};
use tracing::{debug, error, info, warn};

use super::error::Error;
use super::queues::{EventSender, Job, StorageEvent, StorageInput, GROUP_COMMIT_INPUTS_MAX};
use super::status::{Counters, Shared};
use crate::transport::TransportHandle;

/// Reopens the node's storage after a failed write (a fresh handle re-reads
/// what actually reached the disk).
pub type ReopenStorage = Box<dyn FnMut() -> Result<Box<dyn Storage>, StorageError> + Send>;

/// Consecutive failed writes back off up to this before the next rebuild,
/// so a disk that stays broken costs little CPU and log volume.
const REBUILD_BACKOFF_MAX: Duration = Duration::from_secs(1);
const REBUILD_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// Deferred chosen marks wait at most about this long (from the first of
/// them) for a write to carry them before an empty write does, whatever
/// else the storage thread is doing meanwhile (under load the next write
/// comes sooner; when the node goes quiet this bounds what a crash can lose).
pub(crate) const DEFERRED_MARKS_FLUSH_AFTER: Duration = Duration::from_millis(10);

pub(crate) struct StorageThread {
    /// `None` only after a rebuild failed: the node is stopping.
    pub storage: Option<Box<dyn Storage>>,
    pub reopen: Option<ReopenStorage>,
    pub inputs: Receiver<StorageInput>,
    pub events: EventSender,
    pub transport: Arc<TransportHandle>,
    pub shared: Arc<Shared>,
    pub self_id: NodeId,
    /// Indices of reqids recovery hands the core (`CoreConfig::dedup_history`).
    pub dedup_history: u64,
    /// Payload bytes per catch-up reply.
    pub batch_bytes_max: usize,
    /// Jobs of older core incarnations are dropped.
    pub generation: u64,
    pub failed_writes_in_a_row: u32,
}

impl StorageThread {
    pub fn run(mut self) {
        let mut jobs: Vec<Job> = Vec::new();
        let mut requests: Vec<StorageInput> = Vec::new();
        // When the oldest deferred chosen mark must be written by.
        let mut marks_deadline: Option<Instant> = None;
        loop {
            let Some(first) = self.next_input(&mut marks_deadline) else {
                break;
            };
            let mut shutdown = false;
            let mut taken = 0;
            let mut next = Some(first);
            while let Some(input) = next {
                taken += 1;
                match input {
                    StorageInput::Job(job) => jobs.push(job),
                    StorageInput::Shutdown => {
                        // Nothing after it is ours to serve.
                        shutdown = true;
                        break;
                    }
                    request => requests.push(request),
                }
                next = if taken < GROUP_COMMIT_INPUTS_MAX {
                    self.inputs.try_recv().ok()
                } else {
                    None
                };
            }
            self.commit(&mut jobs);
            for request in requests.drain(..) {
                self.serve(request);
            }
            if shutdown {
                break;
            }
        }
        // Callers still waiting get an answer (their reply channels close).
        while let Ok(input) = self.inputs.try_recv() {
            drop(input);
        }
        info!("storage thread stopped");
    }

    /// The next input; meanwhile, deferred chosen marks that have waited
    /// [`DEFERRED_MARKS_FLUSH_AFTER`] are written by an empty write, even if
    /// inputs keep coming (reads, jobs without records) and no write does.
    /// `None` when every sender is gone.
    fn next_input(&mut self, marks_deadline: &mut Option<Instant>) -> Option<StorageInput> {
        loop {
            let marks_waiting = self
                .storage
                .as_ref()
                .is_some_and(|storage| storage.deferred_marks() > 0);
            let deadline = match (marks_waiting, *marks_deadline) {
                (false, _) => {
                    *marks_deadline = None;
                    return self.inputs.recv().ok();
                }
                (true, Some(deadline)) => deadline,
                (true, None) => *marks_deadline.insert(Instant::now() + DEFERRED_MARKS_FLUSH_AFTER),
            };
            // A receive with a passed deadline still takes a queued input,
            // so a steady stream of inputs would never time out: check first.
            if Instant::now() >= deadline {
                self.flush_deferred_marks();
                *marks_deadline = None;
                continue;
            }
            match self.inputs.recv_deadline(deadline) {
                Ok(input) => return Some(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Writes the records of `jobs` in one batch, then releases their
    /// messages and serves their reads.
    fn commit(&mut self, jobs: &mut Vec<Job>) {
        let generation = self.generation;
        let before = jobs.len();
        jobs.retain(|job| job.generation == generation);
        if jobs.len() < before {
            debug!(
                dropped = before - jobs.len(),
                "dropped jobs of a core that was rebuilt"
            );
        }
        if jobs.is_empty() {
            return;
        }
        let Some(storage) = self.storage.as_mut() else {
            jobs.clear();
            return;
        };
        let records_len = jobs.iter().map(|job| job.records.len()).sum();
        let (events, transport, self_id) = (&self.events, &self.transport, self.self_id);
        if records_len > 0 {
            let mut records: Vec<Record> = Vec::with_capacity(records_len);
            for job in jobs.iter_mut() {
                records.append(&mut job.records);
            }
            // Chosen marks that release nothing need not wait for a sync:
            // the next write carries them (see `Storage::write_deferred`).
            let deferrable = jobs.iter().all(|job| {
                job.messages.is_empty()
                    && job.messages_after_write.is_empty()
                    && job.reads.is_empty()
            }) && records.iter().all(|r| r.chosen_indices().is_some());
            let syncs_before = storage.syncs();
            let written = if deferrable {
                storage.write_deferred(&records)
            } else {
                // The messages leave as soon as the records they depend on
                // are durable, before the store's own bookkeeping of them.
                storage.write_then(&records, &mut || {
                    release_messages(jobs, transport, events, self_id, generation)
                })
            };
            if let Err(write_error) = written {
                jobs.clear();
                self.rebuild(write_error);
                return;
            }
            self.failed_writes_in_a_row = 0;
            let counters = &self.shared.counters;
            match syncs_made(syncs_before, storage.as_ref()) {
                // A store that counts its syncs says what the write cost.
                Some(0) if deferrable => Counters::add(&counters.deferred_writes, 1),
                Some(syncs) => Counters::add(&counters.storage_writes, syncs),
                // Otherwise: a store may write deferred marks at once (one
                // without deferral, or past its cap), and then they cost a
                // sync; any other write is taken to cost one.
                None => match !deferrable || storage.deferred_marks() == 0 {
                    true => Counters::add(&counters.storage_writes, 1),
                    false => Counters::add(&counters.deferred_writes, 1),
                },
            }
            let written = records.iter().map(Record::entries).sum::<usize>();
            Counters::add(&counters.records_written, written as u64);
        } else {
            release_messages(jobs, transport, events, self_id, generation);
        }
        for job in jobs.drain(..) {
            for read in job.reads {
                self.serve_catchup(read);
            }
        }
    }

    /// No write came to carry the deferred chosen marks: an empty one does.
    fn flush_deferred_marks(&mut self) {
        let Some(storage) = self.storage.as_mut() else {
            return;
        };
        let syncs_before = storage.syncs();
        match storage.write(&[]) {
            Ok(()) => {
                self.failed_writes_in_a_row = 0;
                let syncs = syncs_made(syncs_before, storage.as_ref()).unwrap_or(1);
                Counters::add(&self.shared.counters.storage_writes, syncs);
            }
            // The marks were promised to nobody, but the store is broken
            // all the same: the next job would meet the same error.
            Err(write_error) => self.rebuild(write_error),
        }
    }

    /// A peer asked for chosen values the core no longer holds in memory.
    fn serve_catchup(&mut self, read: ReadRequest) {
        let Some(storage) = self.storage.as_ref() else {
            return;
        };
        let body = match storage.chosen_range(read.from_index, read.to_index, self.batch_bytes_max)
        {
            Ok(entries) if entries.is_empty() => return,
            Ok(entries) => Body::Learn { entries },
            Err(StorageError::Compacted { first_index }) => Body::Compacted { first_index },
            Err(read_error) => {
                warn!(peer = read.to, %read_error, "cannot serve catch-up from storage");
                return;
            }
        };
        self.transport.send(Message {
            from: self.self_id,
            to: read.to,
            body,
        });
    }

    fn serve(&mut self, request: StorageInput) {
        let stopped = || Error::Stopped {
            reason: self.shared.stop_reason(),
        };
        match request {
            StorageInput::Get { index, reply } => {
                let result = match self.storage.as_ref() {
                    Some(storage) => storage.chosen(index).map_err(Error::from_storage),
                    None => Err(stopped()),
                };
                let _ = reply.send(result);
            }
            StorageInput::ReadRange {
                from,
                to,
                bytes_max,
                reply,
            } => {
                let result = match self.storage.as_ref() {
                    Some(storage) => storage
                        .chosen_range(from, to, bytes_max)
                        .map_err(Error::from_storage),
                    None => Err(stopped()),
                };
                let _ = reply.send(result);
            }
            StorageInput::Compact { through, reply } => {
                let result = match self.storage.as_mut() {
                    Some(storage) => storage
                        .compact(through)
                        .map(|()| through)
                        .map_err(Error::from_storage),
                    None => Err(stopped()),
                };
                if let Ok(through) = result {
                    info!(through, "storage compacted");
                }
                let _ = reply.send(result);
            }
            StorageInput::Job(_) | StorageInput::Shutdown => {
                unreachable!("jobs and shutdown are handled by run()")
            }
        }
    }

    /// The seed's rebuild: reopen, recover, and hand the durable state to
    /// the SMT; or stop the node if that fails too.
    fn rebuild(&mut self, write_error: StorageError) {
        self.failed_writes_in_a_row = self.failed_writes_in_a_row.saturating_add(1);
        let failures = self.failed_writes_in_a_row;
        if failures == 1 || failures.is_power_of_two() {
            error!(%write_error, failures, "storage write failed; nothing of the batch was acknowledged; rebuilding from storage");
        }
        if failures > 1 {
            let exponent = (failures - 2).min(16);
            let backoff = REBUILD_BACKOFF_MIN
                .saturating_mul(1 << exponent)
                .min(REBUILD_BACKOFF_MAX);
            std::thread::sleep(backoff);
        }
        if let Some(reopen) = self.reopen.as_mut() {
            // The old handle holds the directory lock: close it first.
            self.storage = None;
            match reopen() {
                Ok(storage) => self.storage = Some(storage),
                Err(open_error) => {
                    return self.stop(format!(
                        "storage write failed ({write_error}) and reopening failed: {open_error}"
                    ))
                }
            }
        }
        let Some(storage) = self.storage.as_ref() else {
            return self.stop(format!("storage write failed: {write_error}"));
        };
        match storage.recover(self.dedup_history) {
            Ok(recovered) => {
                self.generation += 1;
                let _ = self.events.send(StorageEvent::Rebuilt {
                    generation: self.generation,
                    recovered: Box::new(recovered),
                    cause: write_error.to_string(),
                });
            }
            Err(recover_error) => self.stop(format!(
                "storage write failed ({write_error}) and recovery failed: {recover_error}"
            )),
        }
    }

    fn stop(&mut self, reason: String) {
        error!(%reason, "storage cannot continue; stopping the node");
        self.storage = None;
        self.shared.fail(reason.clone());
        let _ = self.events.send(StorageEvent::Failed { reason });
    }
}

/// Sends the messages of `jobs`, whose records are durable, in order: to
/// peers through the transport, to the node itself as one `Released` event.
/// The jobs keep their reads.
fn release_messages(
    jobs: &mut [Job],
    transport: &TransportHandle,
    events: &EventSender,
    self_id: NodeId,
    generation: u64,
) {
    let mut to_self: Vec<Message> = Vec::new();
    for job in jobs.iter_mut() {
        let messages = std::mem::take(&mut job.messages);
        let after_write = std::mem::take(&mut job.messages_after_write);
        for msg in messages.into_iter().chain(after_write) {
            if msg.to == self_id {
                to_self.push(msg);
            } else {
                // A full or disconnected peer drops it; Paxos retries.
                transport.send(msg);
            }
        }
    }
    if !to_self.is_empty() {
        // The SMT takes storage events even while it waits on our queue,
        // so this cannot deadlock; it fails only when the SMT is gone.
        let _ = events.send(StorageEvent::Released {
            generation,
            messages: to_self,
        });
    }
}

/// Syncs `storage` made since it reported `before`, if it counts them.
fn syncs_made(before: Option<u64>, storage: &dyn Storage) -> Option<u64> {
    Some(storage.syncs()?.saturating_sub(before?))
}
