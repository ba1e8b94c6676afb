//! spaxos: a replicated, durable, ordered log agreed by Multi-Paxos.
//!
//! A fixed group of nodes (3, 5 or 7; one for trying things out) agrees on
//! one log. Every node gets the same chosen items out, in the same order;
//! an application (a replicated key-value store, a lock service) proposes
//! requests on any node and applies the log in index order.
//!
//! # A tour
//!
//! Start a node from a [`Config`] (the seed's JSON format; see
//! [`config`]). A one-member group elects itself, which makes a
//! self-contained example:
//!
//! ```
//! use std::time::Duration;
//! use spaxos::{Config, Outcome, Spaxos};
//!
//! # let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("node1");
//! # let path = path.display();
//! let config = Config::from_json(&format!(r#"{{
//!     "selfid": 1,
//!     "groups": [ {{"id": 1, "ip": "127.0.0.1", "port": {port}}} ],
//!     "path": "{path}",
//!     "stimeout": {{"heartbeat": 20, "instimeoutbase": 60, "instimeoutrange": 20}},
//!     "tick_ms": 5 }}"#))?;
//! let node = Spaxos::start(config)?;
//!
//! // Propose: a non-zero reqid, unique per request, and a value. The handle
//! // resolves once the outcome is known (or use `.await`).
//! let chosen_at = match node.propose(1, "set x = 1")?.wait()? {
//!     Outcome::Chosen { index } => index,
//!     Outcome::Lost { index } => panic!("another value won index {index}"),
//! };
//!
//! // Many proposals may be in flight at once, from any number of threads
//! // (`Spaxos` is a cheap `Clone`).
//! let handles: Vec<_> = (2..=10)
//!     .map(|reqid| node.propose(reqid, format!("set x = {reqid}")))
//!     .collect::<Result<_, _>>()?;
//! for handle in handles {
//!     assert!(matches!(handle.wait()?, Outcome::Chosen { .. }));
//! }
//!
//! // What a database applies: the log strictly in index order, from any
//! // index (old items come from storage, new ones as they are chosen).
//! let mut log = node.ordered_from(1);
//! let first = log.recv_timeout(Duration::from_secs(10))?;
//! assert_eq!(first.index, chosen_at);
//! assert_eq!(first.value.reqid(), Some(1));
//! assert_eq!(first.value.values()[0], "set x = 1");
//!
//! // Random access to chosen values, and the node's progress.
//! assert_eq!(node.get(chosen_at)?, Some(first.value));
//! let status = node.status();
//! assert_eq!(status.leader, Some(1));
//! assert!(status.chosen_through >= 10);
//!
//! // Flushes queued writes and joins every thread (dropping the last
//! // clone does the same).
//! node.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Spaxos::subscribe`] gives chosen items in any order as they are chosen
//! (the seed's chosen queue); [`Spaxos::checkpoint`] lets storage reclaim
//! what the application no longer needs; [`Spaxos::start_with_storage`] runs
//! a node on any [`Storage`] (e.g. [`MemStorage`] in tests);
//! [`Spaxos::metrics`] counts rounds, durable writes and frames, so batching
//! can be watched (per proposal) in production as in the benchmarks.
//!
//! # Guarantees and limits
//!
//! - An outcome of `Chosen { index }` means a majority accepted the value
//!   durably at `index`: it is in the log for good, on every node.
//! - A proposal may end with [`ProposalError::Aborted`] or
//!   [`ProposalError::Stopped`]: its fate is unknown. Proposing the same
//!   reqid again is safe: a repeat within the dedup window is delivered as a
//!   no-op ([`Value::Noop`]) on every node, and a reqid already chosen
//!   resolves to its index.
//! - Every queue is bounded: when the disk or the network is slow,
//!   [`Spaxos::propose`] blocks, [`Spaxos::try_propose`] returns
//!   [`ProposeError::Busy`], and memory stays bounded.
//!
//! The threads and queues behind this API are described in
//! docs/ARCHITECTURE.md ("Threads and queues") and in [`runtime`].

pub mod config;
pub mod runtime;
pub mod transport;

pub use config::{Config, ConfigError, ConfigErrors, ConfigWarning};
pub use runtime::{
    Error, Metrics, OrderedStream, ProposalError, ProposalHandle, ProposeError, ReopenStorage,
    Spaxos, StartError, Status, StreamError,
};
pub use spaxos_core::{ChosenItem, Index, NodeId, Outcome, ReqId, Role, Value};
pub use spaxos_storage::{DiskStorage, MemStorage, Storage, StorageError};
pub use transport::{Transport, TransportError, TransportHandle, TransportStats};
