//! Protocol limits and timeouts. Every limit is named and has a default;
//! timeouts are in ticks (the runtime decides how long a tick is).

use crate::types::NodeId;

/// Configuration of one protocol core. Build with [`CoreConfig::new`] and
/// override fields; [`CoreConfig::validate`] names the first mistake.
///
/// ```
/// let mut config = spaxos_core::CoreConfig::new(1, vec![1, 2, 3]);
/// config.inflight_max = 256;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This node's id.
    pub id: NodeId,
    /// Every member, this node included.
    pub members: Vec<NodeId>,
    /// A leader sends a heartbeat every this many ticks.
    pub heartbeat_ticks: u32,
    /// A follower that hears nothing from a leader for
    /// `election_timeout_ticks + rand(0..election_timeout_range_ticks)` ticks
    /// starts an election.
    pub election_timeout_ticks: u32,
    pub election_timeout_range_ticks: u32,
    /// A leader re-sends accepts that have not reached a quorum after this many ticks.
    pub accept_retry_ticks: u32,
    /// A forwarded proposal with no outcome after this many ticks is sent again.
    pub forward_retry_ticks: u32,
    /// A single-index proposer (leaderless or no-op) backs off
    /// `retry_backoff_ticks + rand(0..retry_backoff_ticks)` after a rejection.
    pub retry_backoff_ticks: u32,
    /// Without a known leader, a node waits this many ticks before it runs
    /// full two-phase Paxos on its own (leaderless fallback).
    pub leaderless_delay_ticks: u32,
    /// A hole below the highest known index is filled with a no-op after this
    /// many ticks (when no leader fills it).
    pub noop_timeout_ticks: u32,
    /// A catch-up request with no reply is sent again after this many ticks.
    pub catchup_retry_ticks: u32,
    /// Instances a leader keeps in flight (assigned, not yet chosen).
    pub inflight_max: u64,
    /// Leaderless attempts one node runs at once.
    pub leaderless_inflight_max: usize,
    /// Payload bytes per accept or learn message (at least one entry always goes).
    pub batch_bytes_max: usize,
    /// Largest payload of one proposal.
    pub value_bytes_max: usize,
    /// Proposals waiting for an in-flight slot or a leader, per node.
    pub proposal_queue_max: usize,
    /// Duplicate detection covers this many log indices: a reqid already
    /// chosen within the last `dedup_window` indices is not applied again.
    /// At most [`crate::DEDUP_WINDOW_MAX`]. Memory: ~36 bytes per index of
    /// the window (two generations), 2.25 MiB at the default 65,536 and
    /// ~576 MiB at the maximum, where each rotation also clears ~160 MiB
    /// (a pause of tens of milliseconds).
    pub dedup_window: u64,
    /// Indices per catch-up request.
    pub catchup_batch_max: u64,
    /// An acceptor ignores accepts further than this past its first unchosen
    /// index (bounds memory; the leader retries after catch-up).
    pub acceptor_window_max: u64,
    /// Retry a proposal that lost its index on a fresh index.
    pub retry_lost: bool,
    /// Seed of the core's random number generator (election jitter, backoff).
    pub rng_seed: u64,
}

/// A configuration mistake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("node id must be non-zero")]
    ZeroId,
    #[error("node {0} is not in members")]
    SelfNotMember(NodeId),
    #[error("member id {0} appears twice")]
    DuplicateMember(NodeId),
    #[error("at most 64 members are supported, got {0}")]
    TooManyMembers(usize),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("election_timeout_ticks ({election}) must exceed heartbeat_ticks ({heartbeat})")]
    ElectionTooShort { election: u32, heartbeat: u32 },
    #[error("dedup_window {0} exceeds the maximum ({max})", max = crate::DEDUP_WINDOW_MAX)]
    DedupWindowTooLarge(u64),
}

impl CoreConfig {
    /// Defaults for a node `id` of the group `members`.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> CoreConfig {
        CoreConfig {
            id,
            members,
            heartbeat_ticks: 2,
            election_timeout_ticks: 10,
            election_timeout_range_ticks: 10,
            accept_retry_ticks: 4,
            forward_retry_ticks: 8,
            retry_backoff_ticks: 3,
            leaderless_delay_ticks: 30,
            noop_timeout_ticks: 8,
            catchup_retry_ticks: 6,
            inflight_max: 4096,
            leaderless_inflight_max: 32,
            batch_bytes_max: 1 << 20,
            value_bytes_max: 1 << 20,
            proposal_queue_max: 1 << 16,
            dedup_window: 1 << 16,
            catchup_batch_max: 1024,
            acceptor_window_max: 1 << 16,
            retry_lost: true,
            rng_seed: 0,
        }
    }

    /// Checks the configuration; the error names the first mistake.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if !self.members.contains(&self.id) {
            return Err(ConfigError::SelfNotMember(self.id));
        }
        if self.members.len() > 64 {
            return Err(ConfigError::TooManyMembers(self.members.len()));
        }
        let mut sorted = self.members.clone();
        sorted.sort_unstable();
        for pair in sorted.windows(2) {
            if pair[0] == pair[1] {
                return Err(ConfigError::DuplicateMember(pair[0]));
            }
        }
        if sorted.first() == Some(&0) {
            return Err(ConfigError::ZeroId);
        }
        let positive: [(&'static str, u64); 13] = [
            ("heartbeat_ticks", self.heartbeat_ticks as u64),
            ("election_timeout_ticks", self.election_timeout_ticks as u64),
            ("accept_retry_ticks", self.accept_retry_ticks as u64),
            ("forward_retry_ticks", self.forward_retry_ticks as u64),
            ("retry_backoff_ticks", self.retry_backoff_ticks as u64),
            ("noop_timeout_ticks", self.noop_timeout_ticks as u64),
            ("catchup_retry_ticks", self.catchup_retry_ticks as u64),
            ("inflight_max", self.inflight_max),
            (
                "leaderless_inflight_max",
                self.leaderless_inflight_max as u64,
            ),
            ("batch_bytes_max", self.batch_bytes_max as u64),
            ("value_bytes_max", self.value_bytes_max as u64),
            ("catchup_batch_max", self.catchup_batch_max),
            ("acceptor_window_max", self.acceptor_window_max),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.dedup_window > crate::DEDUP_WINDOW_MAX {
            return Err(ConfigError::DedupWindowTooLarge(self.dedup_window));
        }
        if self.election_timeout_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::ElectionTooShort {
                election: self.election_timeout_ticks,
                heartbeat: self.heartbeat_ticks,
            });
        }
        Ok(())
    }

    /// How many chosen indices of reqids a restarted node must be given in
    /// `RecoveredState::recent_reqids` (the dedup window keeps up to two
    /// generations of `dedup_window` indices).
    pub fn dedup_history(&self) -> u64 {
        self.dedup_window.saturating_mul(2)
    }

    /// Votes needed to choose a value or win phase 1.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }
}
