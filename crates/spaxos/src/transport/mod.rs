//! Peer-to-peer transport: protobuf messages ([`wire`]) in checksummed
//! frames ([`frame`]) over TCP, after a [`handshake`], driven by one network
//! thread ([`tcp`]).

pub mod frame;
pub mod handshake;
pub mod tcp;
pub mod wire;

pub use frame::{FrameDecoder, FrameError};
pub use handshake::{Handshake, HandshakeError};
pub use tcp::{Transport, TransportError, TransportHandle, TransportStats};
pub use wire::{decode_message, decode_message_bytes, encode_message, WireError};
