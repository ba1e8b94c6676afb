//! The spaxos protocol core: multi-instance Paxos with a stable leader, as a
//! sans-IO, deterministic state machine.
//!
//! No threads, clocks, sockets, files or ambient randomness: the driver feeds
//! proposals ([`Node::propose`]), messages ([`Node::step`]) and time
//! ([`Node::tick`]), and drains a [`Ready`] with hard state to persist,
//! messages to send after it is durable, decided entries and outcomes.

mod acceptor;
pub mod config;
mod dedup;
mod leader;
mod learner;
pub mod message;
pub mod node;
mod proposer;
pub mod ready;
pub mod types;

pub use config::{ConfigError, CoreConfig};
pub use dedup::DEDUP_WINDOW_MAX;
pub use message::{Body, Message, PromiseEntry};
pub use node::{Node, NodeStatus, ProposeError, Role};
pub use ready::{ReadRequest, Ready};
pub use types::{
    AcceptEntries, Ballot, ChosenItem, Index, InstanceState, NodeId, NodeState, Outcome, Record,
    RecoveredState, ReqId, Value,
};
