//! Protobuf encoding of [`spaxos_core::Message`], with hand-written
//! `prost` derives (no protoc, no build script).
//!
//! The structs here mirror the core's message types field by field; the
//! conversions check everything the protobuf layer cannot (a body must be
//! present, ballots are required, a value's kind must be known, ...), so a
//! decoded message is always one the core could have produced.
//!
//! Payloads travel as `bytes::Bytes`: decoding with [`decode_message_bytes`]
//! slices values out of the received buffer without copying them, and
//! encoding clones only reference counts.
//!
//! ```
//! use spaxos::transport::wire::{decode_message, encode_message};
//! use spaxos_core::{Ballot, Body, Message};
//!
//! let msg = Message {
//!     from: 1,
//!     to: 2,
//!     body: Body::Prepare { ballot: Ballot::new(3, 1), index: 7 },
//! };
//! let bytes = encode_message(&msg);
//! assert_eq!(decode_message(&bytes)?, msg);
//! # Ok::<(), spaxos::transport::wire::WireError>(())
//! ```

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use prost::Message as _;
use spaxos_core::{Ballot, Body, Index, Message, PromiseEntry, ReqId, Value};

/// Why a payload is not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not protobuf, or protobuf with the wrong field types.
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// No body, or a body of a kind this version does not know.
    #[error("message has no body or an unknown kind")]
    MissingBody,
    /// A required field is absent (`what` names it).
    #[error("missing {0}")]
    Missing(&'static str),
    /// A field has a value the core never produces (`what` says which).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A ballot: `(round, node)`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct WireBallot {
    #[prost(uint64, tag = "1")]
    pub round: u64,
    #[prost(uint64, tag = "2")]
    pub node: u64,
}

/// Which [`Value`] variant a [`WireValue`] holds; 0 is never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WireValueKind {
    Unspecified = 0,
    Noop = 1,
    One = 2,
    Many = 3,
}

/// A [`Value`]. `One` uses `value` (no vector to allocate on the hot path);
/// `Many` uses `values`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireValue {
    #[prost(enumeration = "WireValueKind", tag = "1")]
    pub kind: i32,
    #[prost(uint64, tag = "2")]
    pub reqid: u64,
    #[prost(bytes = "bytes", tag = "3")]
    pub value: Bytes,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub values: Vec<Bytes>,
}

/// An `(index, value)` pair of an accept or learn.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireEntry {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(message, optional, tag = "2")]
    pub value: Option<WireValue>,
}

/// A [`PromiseEntry`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct WirePromiseEntry {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(message, optional, tag = "2")]
    pub accepted: Option<WireBallot>,
    #[prost(message, optional, tag = "3")]
    pub value: Option<WireValue>,
    #[prost(bool, tag = "4")]
    pub chosen: bool,
}

/// `Body::Prepare`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WirePrepare {
    #[prost(message, optional, tag = "1")]
    pub ballot: Option<WireBallot>,
    #[prost(uint64, tag = "2")]
    pub index: u64,
}

/// `Body::Promise`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WirePromise {
    #[prost(message, optional, tag = "1")]
    pub ballot: Option<WireBallot>,
    #[prost(uint64, tag = "2")]
    pub index: u64,
    #[prost(message, optional, tag = "3")]
    pub accepted: Option<WireBallot>,
    #[prost(message, optional, tag = "4")]
    pub value: Option<WireValue>,
}

/// `Body::PrepareRange`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WirePrepareRange {
    #[prost(message, optional, tag = "1")]
    pub ballot: Option<WireBallot>,
    #[prost(uint64, tag = "2")]
    pub from_index: u64,
}

/// `Body::PromiseRange`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WirePromiseRange {
    #[prost(message, optional, tag = "1")]
    pub ballot: Option<WireBallot>,
    #[prost(uint64, tag = "2")]
    pub from_index: u64,
    #[prost(uint64, tag = "3")]
    pub chosen_through: u64,
    #[prost(message, repeated, tag = "4")]
    pub entries: Vec<WirePromiseEntry>,
}

/// `Body::Accept`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireAccept {
    #[prost(message, optional, tag = "1")]
    pub ballot: Option<WireBallot>,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<WireEntry>,
    #[prost(uint64, tag = "3")]
    pub chosen_through: u64,
}

/// `Body::Accepted`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireAccepted {
    #[prost(message, optional, tag = "1")]
    pub ballot: Option<WireBallot>,
    #[prost(uint64, repeated, tag = "2")]
    pub indices: Vec<u64>,
}

/// `Body::Reject`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireReject {
    #[prost(message, optional, tag = "1")]
    pub ballot: Option<WireBallot>,
    #[prost(message, optional, tag = "2")]
    pub promised: Option<WireBallot>,
    #[prost(uint64, tag = "3")]
    pub index: u64,
}

/// `Body::Heartbeat` and `Body::HeartbeatAck`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireHeartbeat {
    #[prost(message, optional, tag = "1")]
    pub ballot: Option<WireBallot>,
    #[prost(uint64, tag = "2")]
    pub chosen_through: u64,
    #[prost(uint64, tag = "3")]
    pub max_index: u64,
}

/// `Body::Learn`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireLearn {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<WireEntry>,
}

/// `Body::CatchupRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireCatchupRequest {
    #[prost(uint64, tag = "1")]
    pub from_index: u64,
    #[prost(uint64, tag = "2")]
    pub to_index: u64,
}

/// `Body::Compacted`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireCompacted {
    #[prost(uint64, tag = "1")]
    pub first_index: u64,
}

/// `Body::Forward`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireForward {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<WireValue>,
}

/// `Body::ForwardAck`: `reqids[i]` was assigned `indices[i]`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireForwardAck {
    #[prost(uint64, repeated, tag = "1")]
    pub reqids: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    pub indices: Vec<u64>,
}

/// The message kinds; an unknown tag decodes as no body.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WireBody {
    #[prost(message, tag = "3")]
    Prepare(WirePrepare),
    #[prost(message, tag = "4")]
    Promise(WirePromise),
    #[prost(message, tag = "5")]
    PrepareRange(WirePrepareRange),
    #[prost(message, tag = "6")]
    PromiseRange(WirePromiseRange),
    #[prost(message, tag = "7")]
    Accept(WireAccept),
    #[prost(message, tag = "8")]
    Accepted(WireAccepted),
    #[prost(message, tag = "9")]
    Reject(WireReject),
    #[prost(message, tag = "10")]
    Heartbeat(WireHeartbeat),
    #[prost(message, tag = "11")]
    HeartbeatAck(WireHeartbeat),
    #[prost(message, tag = "12")]
    Learn(WireLearn),
    #[prost(message, tag = "13")]
    CatchupRequest(WireCatchupRequest),
    #[prost(message, tag = "14")]
    Compacted(WireCompacted),
    #[prost(message, tag = "15")]
    Forward(WireForward),
    #[prost(message, tag = "16")]
    ForwardAck(WireForwardAck),
}

/// A [`Message`] on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireMessage {
    #[prost(uint64, tag = "1")]
    pub from: u64,
    #[prost(uint64, tag = "2")]
    pub to: u64,
    #[prost(
        oneof = "WireBody",
        tags = "3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16"
    )]
    pub body: Option<WireBody>,
}

/// Encodes `msg` into a fresh buffer of exactly the right size.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    let wire = WireMessage::from(msg);
    let mut out = Vec::with_capacity(wire.encoded_len());
    wire.encode_raw(&mut out);
    out
}

/// Encodes `msg` at the end of `out`; returns the encoded length.
///
/// `len_max` bounds the encoding: a message longer than it is not written
/// and its length is returned as the error.
pub fn encode_message_into(
    msg: &Message,
    len_max: usize,
    out: &mut impl BufMut,
) -> Result<usize, usize> {
    let wire = WireMessage::from(msg);
    let len = wire.encoded_len();
    if len > len_max {
        return Err(len);
    }
    wire.encode_raw(out);
    Ok(len)
}

/// Decodes a message, copying payloads out of `buf`. Prefer
/// [`decode_message_bytes`] when the buffer is already `Bytes`.
pub fn decode_message(buf: &[u8]) -> Result<Message, WireError> {
    Message::try_from(WireMessage::decode(buf)?)
}

/// Decodes a message; value payloads share `buf`'s memory (no copy).
pub fn decode_message_bytes(buf: Bytes) -> Result<Message, WireError> {
    Message::try_from(WireMessage::decode(buf)?)
}

// ---- core -> wire -------------------------------------------------------

impl From<Ballot> for WireBallot {
    fn from(b: Ballot) -> WireBallot {
        WireBallot {
            round: b.round,
            node: b.node,
        }
    }
}

fn ballot(b: &Ballot) -> Option<WireBallot> {
    Some(WireBallot::from(*b))
}

impl From<&Value> for WireValue {
    fn from(value: &Value) -> WireValue {
        match value {
            Value::Noop => WireValue {
                kind: WireValueKind::Noop as i32,
                reqid: 0,
                value: Bytes::new(),
                values: Vec::new(),
            },
            Value::One { reqid, value } => WireValue {
                kind: WireValueKind::One as i32,
                reqid: *reqid,
                value: value.clone(),
                values: Vec::new(),
            },
            Value::Many { reqid, values } => WireValue {
                kind: WireValueKind::Many as i32,
                reqid: *reqid,
                value: Bytes::new(),
                values: values.to_vec(),
            },
        }
    }
}

fn entries(entries: &[(Index, Value)]) -> Vec<WireEntry> {
    entries
        .iter()
        .map(|(index, value)| WireEntry {
            index: *index,
            value: Some(WireValue::from(value)),
        })
        .collect()
}

impl From<&Message> for WireMessage {
    fn from(msg: &Message) -> WireMessage {
        let body = match &msg.body {
            Body::Prepare { ballot: b, index } => WireBody::Prepare(WirePrepare {
                ballot: ballot(b),
                index: *index,
            }),
            Body::Promise {
                ballot: b,
                index,
                accepted,
                value,
            } => WireBody::Promise(WirePromise {
                ballot: ballot(b),
                index: *index,
                accepted: ballot(accepted),
                value: value.as_ref().map(WireValue::from),
            }),
            Body::PrepareRange {
                ballot: b,
                from_index,
            } => WireBody::PrepareRange(WirePrepareRange {
                ballot: ballot(b),
                from_index: *from_index,
            }),
            Body::PromiseRange {
                ballot: b,
                from_index,
                chosen_through,
                entries,
            } => WireBody::PromiseRange(WirePromiseRange {
                ballot: ballot(b),
                from_index: *from_index,
                chosen_through: *chosen_through,
                entries: entries
                    .iter()
                    .map(|e| WirePromiseEntry {
                        index: e.index,
                        accepted: ballot(&e.accepted),
                        value: Some(WireValue::from(&e.value)),
                        chosen: e.chosen,
                    })
                    .collect(),
            }),
            Body::Accept {
                ballot: b,
                entries: es,
                chosen_through,
            } => WireBody::Accept(WireAccept {
                ballot: ballot(b),
                entries: entries(es),
                chosen_through: *chosen_through,
            }),
            Body::Accepted { ballot: b, indices } => WireBody::Accepted(WireAccepted {
                ballot: ballot(b),
                indices: indices.clone(),
            }),
            Body::Reject {
                ballot: b,
                promised,
                index,
            } => WireBody::Reject(WireReject {
                ballot: ballot(b),
                promised: ballot(promised),
                index: *index,
            }),
            Body::Heartbeat {
                ballot: b,
                chosen_through,
                max_index,
            } => WireBody::Heartbeat(WireHeartbeat {
                ballot: ballot(b),
                chosen_through: *chosen_through,
                max_index: *max_index,
            }),
            Body::HeartbeatAck {
                ballot: b,
                chosen_through,
                max_index,
            } => WireBody::HeartbeatAck(WireHeartbeat {
                ballot: ballot(b),
                chosen_through: *chosen_through,
                max_index: *max_index,
            }),
            Body::Learn { entries: es } => WireBody::Learn(WireLearn {
                entries: entries(es),
            }),
            Body::CatchupRequest {
                from_index,
                to_index,
            } => WireBody::CatchupRequest(WireCatchupRequest {
                from_index: *from_index,
                to_index: *to_index,
            }),
            Body::Compacted { first_index } => WireBody::Compacted(WireCompacted {
                first_index: *first_index,
            }),
            Body::Forward { values } => WireBody::Forward(WireForward {
                values: values.iter().map(WireValue::from).collect(),
            }),
            Body::ForwardAck { assigned } => WireBody::ForwardAck(WireForwardAck {
                reqids: assigned.iter().map(|(reqid, _)| *reqid).collect(),
                indices: assigned.iter().map(|(_, index)| *index).collect(),
            }),
        };
        WireMessage {
            from: msg.from,
            to: msg.to,
            body: Some(body),
        }
    }
}

// ---- wire -> core -------------------------------------------------------

fn unballot(b: Option<WireBallot>, what: &'static str) -> Result<Ballot, WireError> {
    let b = b.ok_or(WireError::Missing(what))?;
    Ok(Ballot::new(b.round, b.node))
}

fn nonzero_reqid(reqid: ReqId) -> Result<ReqId, WireError> {
    if reqid == 0 {
        return Err(WireError::Invalid("value: reqid 0"));
    }
    Ok(reqid)
}

impl TryFrom<WireValue> for Value {
    type Error = WireError;

    fn try_from(w: WireValue) -> Result<Value, WireError> {
        match WireValueKind::try_from(w.kind) {
            Ok(WireValueKind::Noop) => {
                if w.reqid != 0 || !w.value.is_empty() || !w.values.is_empty() {
                    return Err(WireError::Invalid("value: no-op with a payload"));
                }
                Ok(Value::Noop)
            }
            Ok(WireValueKind::One) => {
                if !w.values.is_empty() {
                    return Err(WireError::Invalid("value: single value with a list"));
                }
                Ok(Value::One {
                    reqid: nonzero_reqid(w.reqid)?,
                    value: w.value,
                })
            }
            Ok(WireValueKind::Many) => {
                if !w.value.is_empty() {
                    return Err(WireError::Invalid("value: list with a single value"));
                }
                Ok(Value::Many {
                    reqid: nonzero_reqid(w.reqid)?,
                    values: Arc::from(w.values),
                })
            }
            Ok(WireValueKind::Unspecified) | Err(_) => Err(WireError::Invalid("value kind")),
        }
    }
}

fn unvalue(v: Option<WireValue>) -> Result<Value, WireError> {
    Value::try_from(v.ok_or(WireError::Missing("value"))?)
}

fn unentries(entries: Vec<WireEntry>) -> Result<Vec<(Index, Value)>, WireError> {
    entries
        .into_iter()
        .map(|e| Ok((e.index, unvalue(e.value)?)))
        .collect()
}

impl TryFrom<WireMessage> for Message {
    type Error = WireError;

    fn try_from(w: WireMessage) -> Result<Message, WireError> {
        let body = w.body.ok_or(WireError::MissingBody)?;
        if w.from == 0 {
            return Err(WireError::Invalid("from: node id 0"));
        }
        if w.to == 0 {
            return Err(WireError::Invalid("to: node id 0"));
        }
        let body = match body {
            WireBody::Prepare(p) => Body::Prepare {
                ballot: unballot(p.ballot, "ballot")?,
                index: p.index,
            },
            WireBody::Promise(p) => Body::Promise {
                ballot: unballot(p.ballot, "ballot")?,
                index: p.index,
                accepted: unballot(p.accepted, "accepted ballot")?,
                value: p.value.map(Value::try_from).transpose()?,
            },
            WireBody::PrepareRange(p) => Body::PrepareRange {
                ballot: unballot(p.ballot, "ballot")?,
                from_index: p.from_index,
            },
            WireBody::PromiseRange(p) => Body::PromiseRange {
                ballot: unballot(p.ballot, "ballot")?,
                from_index: p.from_index,
                chosen_through: p.chosen_through,
                entries: p
                    .entries
                    .into_iter()
                    .map(|e| {
                        Ok(PromiseEntry {
                            index: e.index,
                            accepted: unballot(e.accepted, "accepted ballot")?,
                            value: unvalue(e.value)?,
                            chosen: e.chosen,
                        })
                    })
                    .collect::<Result<_, WireError>>()?,
            },
            WireBody::Accept(a) => Body::Accept {
                ballot: unballot(a.ballot, "ballot")?,
                entries: unentries(a.entries)?.into(),
                chosen_through: a.chosen_through,
            },
            WireBody::Accepted(a) => Body::Accepted {
                ballot: unballot(a.ballot, "ballot")?,
                indices: a.indices,
            },
            WireBody::Reject(r) => Body::Reject {
                ballot: unballot(r.ballot, "ballot")?,
                promised: unballot(r.promised, "promised ballot")?,
                index: r.index,
            },
            WireBody::Heartbeat(h) => Body::Heartbeat {
                ballot: unballot(h.ballot, "ballot")?,
                chosen_through: h.chosen_through,
                max_index: h.max_index,
            },
            WireBody::HeartbeatAck(h) => Body::HeartbeatAck {
                ballot: unballot(h.ballot, "ballot")?,
                chosen_through: h.chosen_through,
                max_index: h.max_index,
            },
            WireBody::Learn(l) => Body::Learn {
                entries: unentries(l.entries)?,
            },
            WireBody::CatchupRequest(c) => Body::CatchupRequest {
                from_index: c.from_index,
                to_index: c.to_index,
            },
            WireBody::Compacted(c) => Body::Compacted {
                first_index: c.first_index,
            },
            WireBody::Forward(f) => Body::Forward {
                values: f
                    .values
                    .into_iter()
                    .map(Value::try_from)
                    .collect::<Result<_, _>>()?,
            },
            WireBody::ForwardAck(f) => {
                if f.reqids.len() != f.indices.len() {
                    return Err(WireError::Invalid(
                        "forward ack: reqids and indices differ in length",
                    ));
                }
                Body::ForwardAck {
                    assigned: f.reqids.into_iter().zip(f.indices).collect(),
                }
            }
        };
        Ok(Message {
            from: w.from,
            to: w.to,
            body,
        })
    }
}
