//! The on-disk byte layout (format version [`FORMAT_VERSION`]); see
//! docs/STORAGE.md. Decoding never panics: bad bytes are `Err(reason)`.

use std::sync::Arc;

use bytes::Bytes;
use spaxos_core::{Ballot, Index, InstanceState, NodeState, Record, Value};

/// Bumped on any incompatible change of the layout below.
pub const FORMAT_VERSION: u32 = 1;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SPXSEG\0\x01";
/// Size of the segment header; the first batch starts here.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// First bytes of every batch frame (little-endian "SPXB").
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"SPXB");
/// Size of a batch frame header.
pub const BATCH_HEADER_LEN: usize = 24;
/// Batch frames start at multiples of this, so recovery can look for later
/// frames without knowing the length of a damaged one.
pub const BATCH_ALIGN: usize = 8;
/// Size of a record frame header (length + crc).
pub const RECORD_HEADER_LEN: usize = 8;
/// Largest batch body a store writes or accepts when reading.
pub const BATCH_BODY_MAX: usize = 1 << 30;

/// First bytes of the compaction floor file.
pub const FLOOR_MAGIC: [u8; 8] = *b"SPXFLR\0\x01";
/// Size of the compaction floor file.
pub const FLOOR_LEN: usize = 28;

const _: () = assert!(align(SEGMENT_HEADER_LEN) == SEGMENT_HEADER_LEN);
const _: () = assert!(align(BATCH_HEADER_LEN) == BATCH_HEADER_LEN);
const _: () = assert!(BATCH_BODY_MAX <= u32::MAX as usize);

const TAG_NODE: u8 = 1;
const TAG_INSTANCE: u8 = 2;
const TAG_CHOSEN: u8 = 3;

const VALUE_NONE: u8 = 0;
const VALUE_NOOP: u8 = 1;
const VALUE_ONE: u8 = 2;
const VALUE_MANY: u8 = 3;

/// Rounds `n` up to the batch alignment.
pub const fn align(n: usize) -> usize {
    n.div_ceil(BATCH_ALIGN) * BATCH_ALIGN
}

/// The header at the start of every segment. It repeats the node-wide hard
/// state as of the segment's creation, so segments before it never hold the
/// only copy of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment_id: u64,
    /// Sequence number of the first batch written to this segment.
    pub first_batch_seq: u64,
    pub node: NodeState,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_batch_seq.to_le_bytes());
        out[32..40].copy_from_slice(&self.node.max_round.to_le_bytes());
        out[40..48].copy_from_slice(&self.node.promised.round.to_le_bytes());
        out[48..56].copy_from_slice(&self.node.promised.node.to_le_bytes());
        let crc = crc32c::crc32c(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header; `Err(Some(version))` for a readable header of
    /// another format version.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if bytes.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Bad("file shorter than the segment header"));
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::Bad("bad segment magic"));
        }
        let version = le_u32(&bytes[8..12]);
        let crc = le_u32(&bytes[60..64]);
        if crc != crc32c::crc32c(&bytes[..60]) {
            return Err(HeaderError::Bad("segment header checksum mismatch"));
        }
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        if le_u32(&bytes[12..16]) as usize != SEGMENT_HEADER_LEN {
            return Err(HeaderError::Bad("unexpected segment header length"));
        }
        Ok(SegmentHeader {
            segment_id: le_u64(&bytes[16..24]),
            first_batch_seq: le_u64(&bytes[24..32]),
            node: NodeState {
                max_round: le_u64(&bytes[32..40]),
                promised: Ballot::new(le_u64(&bytes[40..48]), le_u64(&bytes[48..56])),
            },
        })
    }
}

/// Why a segment header did not decode.
#[derive(Debug)]
pub enum HeaderError {
    Bad(&'static str),
    Version(u32),
}

/// A decoded batch frame header.
#[derive(Clone, Copy, Debug)]
pub struct BatchHeader {
    pub body_len: usize,
    pub seq: u64,
    pub body_crc: u32,
}

/// Writes a batch frame header for `body` into `out[..BATCH_HEADER_LEN]`.
pub fn encode_batch_header(out: &mut [u8], seq: u64, body: &[u8]) {
    debug_assert!(body.len() <= BATCH_BODY_MAX);
    out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..20].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let crc = crc32c::crc32c(&out[0..20]);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a batch header if its magic and checksum hold.
pub fn decode_batch_header(bytes: &[u8]) -> Option<BatchHeader> {
    if bytes.len() < BATCH_HEADER_LEN || le_u32(&bytes[0..4]) != BATCH_MAGIC {
        return None;
    }
    if le_u32(&bytes[20..24]) != crc32c::crc32c(&bytes[0..20]) {
        return None;
    }
    let body_len = le_u32(&bytes[4..8]) as usize;
    if body_len > BATCH_BODY_MAX {
        return None;
    }
    Some(BatchHeader {
        body_len,
        seq: le_u64(&bytes[8..16]),
        body_crc: le_u32(&bytes[16..20]),
    })
}

/// Appends the frames of one record (length, crc32c of length and payload,
/// payload) to `out`: one frame, except for `Accepted`, which is written as
/// one `Instance` frame per entry, and `ChosenRange`, written as one
/// `Chosen` frame per index (so the file format has no batch records, and
/// replay reads those back as `Instance` and `Chosen` records).
pub fn encode_record(out: &mut Vec<u8>, record: &Record) {
    match record {
        Record::Node(node) => {
            let start = begin_frame(out);
            out.push(TAG_NODE);
            put_u64(out, node.max_round);
            put_ballot(out, node.promised);
            end_frame(out, start);
        }
        Record::Instance(state) => encode_instance(
            out,
            state.index,
            state.promised,
            state.accepted,
            state.chosen,
            state.value.as_ref(),
        ),
        Record::Accepted { ballot, entries } => {
            for (index, value) in entries.iter() {
                encode_instance(out, *index, *ballot, *ballot, false, Some(value));
            }
        }
        Record::Chosen(index) => encode_chosen(out, *index),
        Record::ChosenRange { first, last } => {
            for index in *first..=*last {
                encode_chosen(out, index);
            }
        }
    }
}

/// Appends one `Chosen` frame.
pub fn encode_chosen(out: &mut Vec<u8>, index: Index) {
    let start = begin_frame(out);
    out.push(TAG_CHOSEN);
    put_u64(out, index);
    end_frame(out, start);
}

/// Appends one `Instance` frame.
pub fn encode_instance(
    out: &mut Vec<u8>,
    index: Index,
    promised: Ballot,
    accepted: Ballot,
    chosen: bool,
    value: Option<&Value>,
) {
    let start = begin_frame(out);
    out.push(TAG_INSTANCE);
    put_u64(out, index);
    put_ballot(out, promised);
    put_ballot(out, accepted);
    out.push(chosen as u8);
    match value {
        None => out.push(VALUE_NONE),
        Some(Value::Noop) => out.push(VALUE_NOOP),
        Some(Value::One { reqid, value }) => {
            out.push(VALUE_ONE);
            put_u64(out, *reqid);
            put_bytes(out, value);
        }
        Some(Value::Many { reqid, values }) => {
            out.push(VALUE_MANY);
            put_u64(out, *reqid);
            out.extend_from_slice(&(values.len() as u32).to_le_bytes());
            for value in values.iter() {
                put_bytes(out, value);
            }
        }
    }
    end_frame(out, start);
}

/// Reserves a frame header; returns where the frame starts.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    start
}

/// Fills in the header of the frame begun at `start`.
fn end_frame(out: &mut [u8], start: usize) {
    let payload_len = (out.len() - start - RECORD_HEADER_LEN) as u32;
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    let crc = record_crc(&out[start..start + 4], &out[start + RECORD_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn record_crc(len_bytes: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), payload)
}

/// Splits the record frame at the start of `bytes`, checking its crc:
/// returns the payload and the frame length.
pub fn split_record(bytes: &[u8]) -> Result<(&[u8], usize), &'static str> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err("record header cut short");
    }
    let len = le_u32(&bytes[0..4]) as usize;
    let frame_len = RECORD_HEADER_LEN
        .checked_add(len)
        .ok_or("record length overflows")?;
    if frame_len > bytes.len() {
        return Err("record length runs past its batch");
    }
    let payload = &bytes[RECORD_HEADER_LEN..frame_len];
    if le_u32(&bytes[4..8]) != record_crc(&bytes[0..4], payload) {
        return Err("record checksum mismatch");
    }
    Ok((payload, frame_len))
}

/// Decodes one record payload. `Bytes` for values are copied out of `payload`.
pub fn decode_record(payload: &[u8]) -> Result<Record, &'static str> {
    let mut r = Reader { bytes: payload };
    let record = match r.u8()? {
        TAG_NODE => Record::Node(NodeState {
            max_round: r.u64()?,
            promised: r.ballot()?,
        }),
        TAG_INSTANCE => {
            let index = r.index()?;
            let promised = r.ballot()?;
            let accepted = r.ballot()?;
            let chosen = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err("bad chosen flag"),
            };
            let value = match r.u8()? {
                VALUE_NONE => None,
                VALUE_NOOP => Some(Value::Noop),
                VALUE_ONE => {
                    let reqid = r.u64()?;
                    let value = r.bytes()?;
                    Some(Value::One { reqid, value })
                }
                VALUE_MANY => {
                    let reqid = r.u64()?;
                    let count = r.u32()? as usize;
                    // Every value takes at least its 4-byte length.
                    if count > r.bytes.len() / 4 {
                        return Err("value count runs past the record");
                    }
                    let mut values = Vec::with_capacity(count);
                    for _ in 0..count {
                        values.push(r.bytes()?);
                    }
                    Some(Value::Many {
                        reqid,
                        values: Arc::from(values),
                    })
                }
                _ => return Err("bad value tag"),
            };
            if chosen && value.is_none() {
                return Err("chosen instance without a value");
            }
            Record::Instance(InstanceState {
                index,
                promised,
                accepted,
                value,
                chosen,
            })
        }
        TAG_CHOSEN => Record::Chosen(r.index()?),
        _ => return Err("unknown record tag"),
    };
    if !r.bytes.is_empty() {
        return Err("trailing bytes after record");
    }
    Ok(record)
}

/// The compaction floor file: everything at or below `compacted_through`
/// was dropped.
pub fn encode_floor(compacted_through: Index) -> [u8; FLOOR_LEN] {
    let mut out = [0u8; FLOOR_LEN];
    out[0..8].copy_from_slice(&FLOOR_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&compacted_through.to_le_bytes());
    let crc = crc32c::crc32c(&out[..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the floor file.
pub fn decode_floor(bytes: &[u8]) -> Result<Index, HeaderError> {
    if bytes.len() != FLOOR_LEN || bytes[0..8] != FLOOR_MAGIC {
        return Err(HeaderError::Bad("bad compaction floor file"));
    }
    if le_u32(&bytes[24..28]) != crc32c::crc32c(&bytes[..24]) {
        return Err(HeaderError::Bad("compaction floor checksum mismatch"));
    }
    let version = le_u32(&bytes[8..12]);
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    Ok(le_u64(&bytes[16..24]))
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_ballot(out: &mut Vec<u8>, ballot: Ballot) {
    put_u64(out, ballot.round);
    put_u64(out, ballot.node);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// A bounds-checked cursor over a record payload.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.bytes.len() < n {
            return Err("record payload cut short");
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(le_u32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(le_u64(self.take(8)?))
    }
    fn index(&mut self) -> Result<Index, &'static str> {
        match self.u64()? {
            0 | Index::MAX => Err("index out of range"),
            index => Ok(index),
        }
    }
    fn ballot(&mut self) -> Result<Ballot, &'static str> {
        Ok(Ballot::new(self.u64()?, self.u64()?))
    }
    fn bytes(&mut self) -> Result<Bytes, &'static str> {
        let len = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch forms are written as their per-index frames, which read
    /// back as the records they stand for.
    #[test]
    fn batch_records_are_written_as_per_index_frames() {
        let ballot = Ballot::new(2, 3);
        let batch = [
            Record::Accepted {
                ballot,
                entries: vec![
                    (5, Value::Noop),
                    (
                        7,
                        Value::One {
                            reqid: 70,
                            value: Bytes::from_static(b"seven"),
                        },
                    ),
                ]
                .into(),
            },
            Record::ChosenRange { first: 5, last: 7 },
        ];
        let mut buf = Vec::new();
        for record in &batch {
            encode_record(&mut buf, record);
        }
        let mut decoded = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let (payload, len) = split_record(&buf[at..]).unwrap();
            decoded.push(decode_record(payload).unwrap());
            at += len;
        }
        assert_eq!(decoded, Record::per_index(&batch));
        assert_eq!(decoded.len(), 5);
    }

    #[test]
    fn records_round_trip() {
        let records = [
            Record::Node(NodeState {
                max_round: 7,
                promised: Ballot::new(3, 2),
            }),
            Record::Instance(InstanceState {
                index: 9,
                promised: Ballot::new(1, 1),
                accepted: Ballot::new(1, 1),
                value: Some(Value::Many {
                    reqid: 5,
                    values: Arc::from(vec![Bytes::from_static(b"a"), Bytes::new()]),
                }),
                chosen: true,
            }),
            Record::Instance(InstanceState::empty(4)),
            Record::Chosen(9),
        ];
        for record in &records {
            let mut buf = Vec::new();
            encode_record(&mut buf, record);
            let (payload, len) = split_record(&buf).unwrap();
            assert_eq!(len, buf.len());
            assert_eq!(&decode_record(payload).unwrap(), record);
            // Every strict prefix fails cleanly.
            for cut in 0..buf.len() {
                assert!(split_record(&buf[..cut]).is_err());
                let _ = decode_record(&payload[..cut.min(payload.len())]);
            }
        }
    }

    #[test]
    fn headers_round_trip() {
        let header = SegmentHeader {
            segment_id: 3,
            first_batch_seq: 99,
            node: NodeState {
                max_round: 1,
                promised: Ballot::new(2, 3),
            },
        };
        assert_eq!(SegmentHeader::decode(&header.encode()).unwrap(), header);
        assert_eq!(decode_floor(&encode_floor(42)).unwrap(), 42);
        let mut frame = [0u8; BATCH_HEADER_LEN];
        encode_batch_header(&mut frame, 5, b"body");
        let decoded = decode_batch_header(&frame).unwrap();
        assert_eq!((decoded.body_len, decoded.seq), (4, 5));
        frame[9] ^= 1;
        assert!(decode_batch_header(&frame).is_none());
    }
}
