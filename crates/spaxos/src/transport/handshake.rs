//! The first frame on every peer connection.
//!
//! The dialing node sends `{magic, protocol version, cluster id, node id}`;
//! the accepting node checks every field and closes the connection on any
//! mismatch. Connections carry messages one way only, dialer to acceptor,
//! so no answer is needed.
//!
//! ```
//! use spaxos::transport::handshake::{Handshake, HandshakeError};
//!
//! let hello = Handshake::new(7, 2).encode();
//! assert_eq!(Handshake::check(&hello, 7, 1, &[1, 2, 3]), Ok(2));
//! assert_eq!(
//!     Handshake::check(&hello, 8, 1, &[1, 2, 3]),
//!     Err(HandshakeError::WrongCluster { got: 7, expected: 8 })
//! );
//! ```

use prost::Message as _;
use spaxos_core::NodeId;

/// Identifies a spaxos peer stream ("SPAX").
pub const MAGIC: u32 = 0x5350_4158;
/// Wire protocol version; peers must match exactly.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest handshake frame accepted (the real one is about 30 bytes).
pub const HANDSHAKE_BYTES_MAX: usize = 256;

/// The handshake payload.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Handshake {
    #[prost(fixed32, tag = "1")]
    pub magic: u32,
    #[prost(uint32, tag = "2")]
    pub version: u32,
    #[prost(uint64, tag = "3")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "4")]
    pub node_id: u64,
}

/// Why an inbound connection was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("malformed handshake: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("bad magic {0:#010x}: not a spaxos peer")]
    BadMagic(u32),
    #[error("protocol version {got}, this node speaks {expected}")]
    WrongVersion { got: u32, expected: u32 },
    #[error("cluster id {got}, this node is in cluster {expected}")]
    WrongCluster { got: u64, expected: u64 },
    #[error("node id {0} is not in the config")]
    UnknownNode(NodeId),
    #[error("node id {0} is this node's own id")]
    SelfId(NodeId),
}

impl Handshake {
    /// The handshake of node `node_id` in cluster `cluster_id`.
    pub fn new(cluster_id: u64, node_id: NodeId) -> Handshake {
        Handshake {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster_id,
            node_id,
        }
    }

    /// The payload to put in the first frame.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Checks a received handshake payload against this node (`self_id` in
    /// cluster `cluster_id` with `members`); returns the peer's node id.
    pub fn check(
        payload: &[u8],
        cluster_id: u64,
        self_id: NodeId,
        members: &[NodeId],
    ) -> Result<NodeId, HandshakeError> {
        let hello = Handshake::decode(payload)?;
        if hello.magic != MAGIC {
            return Err(HandshakeError::BadMagic(hello.magic));
        }
        if hello.version != PROTOCOL_VERSION {
            return Err(HandshakeError::WrongVersion {
                got: hello.version,
                expected: PROTOCOL_VERSION,
            });
        }
        if hello.cluster_id != cluster_id {
            return Err(HandshakeError::WrongCluster {
                got: hello.cluster_id,
                expected: cluster_id,
            });
        }
        if hello.node_id == self_id {
            return Err(HandshakeError::SelfId(hello.node_id));
        }
        if hello.node_id == 0 || !members.contains(&hello.node_id) {
            return Err(HandshakeError::UnknownNode(hello.node_id));
        }
        Ok(hello.node_id)
    }
}
