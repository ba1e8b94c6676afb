//! spaxos: a replicated, durable, ordered log agreed by Multi-Paxos.

pub mod config;
pub mod runtime;
pub mod transport;

pub use config::{Config, ConfigError, ConfigErrors, ConfigWarning};
pub use runtime::{
    Error, OrderedStream, ProposalError, ProposalHandle, ProposeError, ReopenStorage, Spaxos,
    StartError, Status, StreamError,
};
pub use spaxos_core::{ChosenItem, Index, NodeId, Outcome, ReqId, Role, Value};
pub use spaxos_storage::{DiskStorage, MemStorage, Storage, StorageError};
pub use transport::{Transport, TransportError, TransportHandle, TransportStats};
