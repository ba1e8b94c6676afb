//! Errors of the public API, one enum per operation (STYLE 4): what an
//! operator or caller can cause is a value, never a panic.

use std::path::PathBuf;

use spaxos_core::Index;
use spaxos_storage::StorageError;

use crate::config::ConfigErrors;
use crate::transport::TransportError;

/// Why [`crate::Spaxos::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config has mistakes, one line each.
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigErrors),
    /// `config.path` does not exist and cannot be created.
    #[error("cannot create the data directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// Opening or recovering the durable log failed (corruption, permissions,
    /// another process holding the directory); the message names the file.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// The protocol core refused the configuration or the recovered state.
    #[error("protocol core: {0}")]
    Core(#[from] spaxos_core::ConfigError),
    /// The peer listener could not bind, or the network thread not start.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The operating system refused a thread.
    #[error("cannot start a runtime thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why a proposal was refused before it reached the protocol. Nothing was
/// queued; the caller may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Zero is not a reqid.
    #[error("reqid must be non-zero")]
    ZeroReqId,
    /// The payload is larger than the config's `value_bytes_max`.
    #[error("value of {size} bytes exceeds value_bytes_max ({max})")]
    TooLarge {
        /// Payload bytes proposed.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The input queue is full (`try_propose`) or stayed full for the
    /// timeout (`propose_timeout`): the disk or the network is behind.
    #[error("the proposal queue is full; retry later")]
    Busy,
    /// The node was shut down or stopped on a fatal storage error.
    #[error("node stopped: {reason}")]
    Stopped {
        /// The fatal error, or that the node was shut down.
        reason: String,
    },
}

/// Why a proposal has no outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    /// The protocol core refused it (duplicate pending reqid, too many
    /// pending proposals, ...). It was never sent.
    #[error("proposal refused: {0}")]
    Rejected(#[from] spaxos_core::ProposeError),
    /// A storage write failed and the node rebuilt its state from disk; the
    /// proposal may or may not end up in the log. Watch the chosen stream
    /// for its reqid, or propose it again (a duplicate within the dedup
    /// window is delivered as a no-op).
    #[error("outcome unknown: the node rebuilt its state after a storage error ({reason})")]
    Aborted {
        /// The storage error.
        reason: String,
    },
    /// The node stopped before the outcome was known; as with `Aborted`,
    /// the proposal may still be chosen.
    #[error("outcome unknown: node stopped ({reason})")]
    Stopped {
        /// The fatal error, or that the node was shut down.
        reason: String,
    },
    /// `wait_timeout` elapsed; the handle can be waited on again.
    #[error("no outcome yet")]
    Timeout,
}

/// Why `get`, `checkpoint` or another request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The index was dropped by a checkpoint; `first_index` is the lowest
    /// index still held.
    #[error("index compacted away; the first index held is {first_index}")]
    Compacted {
        /// The lowest index still held.
        first_index: Index,
    },
    /// Storage could not serve the request; the message names the file.
    #[error("{0}")]
    Storage(String),
    /// The node was shut down or stopped on a fatal error.
    #[error("node stopped: {reason}")]
    Stopped {
        /// The fatal error, or that the node was shut down.
        reason: String,
    },
}

impl Error {
    pub(crate) fn from_storage(error: StorageError) -> Error {
        match error {
            StorageError::Compacted { first_index } => Error::Compacted { first_index },
            other => Error::Storage(other.to_string()),
        }
    }
}

/// Why an [`crate::OrderedStream`] cannot yield its next item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The next index was dropped by a checkpoint on this node: the stream
    /// cannot continue without a gap. Restore the application from a
    /// snapshot at or above `first_index - 1` and open a new stream.
    #[error("index compacted away; the first index held is {first_index}")]
    Compacted {
        /// The lowest index still held.
        first_index: Index,
    },
    /// Storage could not serve the read; the message names the file.
    #[error("{0}")]
    Storage(String),
    /// The node was shut down or stopped on a fatal error.
    #[error("node stopped: {reason}")]
    Stopped {
        /// The fatal error, or that the node was shut down.
        reason: String,
    },
    /// `recv_timeout` elapsed with no item.
    #[error("no item yet")]
    Timeout,
}

impl From<Error> for StreamError {
    fn from(error: Error) -> StreamError {
        match error {
            Error::Compacted { first_index } => StreamError::Compacted { first_index },
            Error::Storage(message) => StreamError::Storage(message),
            Error::Stopped { reason } => StreamError::Stopped { reason },
        }
    }
}
