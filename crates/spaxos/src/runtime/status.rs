//! [`Status`], and the state the threads share with the API handle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use spaxos_core::{Index, NodeId, NodeStatus, Role};

/// A snapshot of one node, from [`crate::Spaxos::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// Follower, candidate or leader.
    pub role: Role,
    /// The leader this node follows (itself when leading), if known.
    pub leader: Option<NodeId>,
    /// Every index at or below this is chosen and delivered here (the
    /// seed's "min index").
    pub chosen_through: Index,
    /// Highest index this node knows to exist (the seed's "max index").
    pub max_index: Index,
    /// Peers this node has a live connection to, sorted.
    pub peers_connected: Vec<NodeId>,
    /// Proposals made on this node still waiting for an outcome.
    pub pending: usize,
    /// Set when the node stopped on a fatal error (storage that cannot be
    /// recovered, a runtime thread that died): every API call then fails
    /// with this reason.
    pub failure: Option<String>,
}

/// Counters of one node since it started, from [`crate::Spaxos::metrics`]:
/// what its work cost, for benchmarks and monitoring. Ratios to chosen
/// entries show how well it batches (e.g. `storage_writes` per entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Rounds of the state-machine thread (one `Node::ready` drain each).
    pub rounds: u64,
    /// Proposals handed to the core.
    pub proposals: u64,
    /// Rounds that ended with new proposals held back for proposers just
    /// answered to come back with more (see `Config::propose_gather_us`).
    pub held_rounds: u64,
    /// Storage writes, each one durable batch (one `fdatasync` on disk),
    /// including the empty writes that flush deferred chosen marks no other
    /// write carried within ~10 ms.
    pub storage_writes: u64,
    /// Groups of `Chosen` marks alone, which release nothing and so were
    /// handed to `Storage::write_deferred`: no `fdatasync` of their own,
    /// they ride in the next write. (A group the store had to write at
    /// once counts as a storage write.)
    pub deferred_writes: u64,
    /// Records in all those writes, one per index (`Record::entries`: an
    /// `Accepted` record counts its entries).
    pub records_written: u64,
    /// The transport's counters (frames, bytes, write calls, drops,
    /// connections).
    pub transport: crate::TransportStats,
}

/// The SMT's and ST's share of [`Metrics`], bumped by them.
#[derive(Default)]
pub(crate) struct Counters {
    pub rounds: AtomicU64,
    pub proposals: AtomicU64,
    pub held_rounds: AtomicU64,
    pub storage_writes: AtomicU64,
    pub deferred_writes: AtomicU64,
    pub records_written: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        // Statistics only: no ordering with anything else.
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self, transport: crate::TransportStats) -> Metrics {
        Metrics {
            rounds: self.rounds.load(Ordering::Relaxed),
            proposals: self.proposals.load(Ordering::Relaxed),
            held_rounds: self.held_rounds.load(Ordering::Relaxed),
            storage_writes: self.storage_writes.load(Ordering::Relaxed),
            deferred_writes: self.deferred_writes.load(Ordering::Relaxed),
            records_written: self.records_written.load(Ordering::Relaxed),
            transport,
        }
    }
}

/// What the SMT publishes after each round (so `status()` never waits
/// behind the command queue) and the reason the node stopped, if it did.
#[derive(Default)]
pub(crate) struct Shared {
    core: Mutex<Option<NodeStatus>>,
    failure: Mutex<Option<String>>,
    /// `failure.is_some()`, readable without the lock on every proposal.
    failed: AtomicBool,
    pub counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere cannot leave it half-updated.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn publish(&self, status: NodeStatus) {
        *lock(&self.core) = Some(status);
    }

    pub fn core_status(&self) -> Option<NodeStatus> {
        lock(&self.core).clone()
    }

    /// Records the first fatal error; later ones are consequences.
    pub fn fail(&self, reason: String) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            *failure = Some(reason);
        }
        self.failed.store(true, Ordering::Release);
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Why API calls fail once the node has stopped.
    pub fn stop_reason(&self) -> String {
        self.failure()
            .unwrap_or_else(|| "the node was shut down".to_string())
    }
}
