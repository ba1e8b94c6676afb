//! spaxos: a replicated, durable, ordered log agreed by Multi-Paxos.

pub mod config;
pub mod transport;

pub use config::{Config, ConfigError, ConfigErrors, ConfigWarning};
pub use transport::{Transport, TransportError, TransportHandle, TransportStats};
