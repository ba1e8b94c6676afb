//! Framing of peer messages on a byte stream.
//!
//! A frame is `u32` payload length (little endian), `u32` CRC-32C of the
//! payload (little endian), then the payload. The decoder refuses a length
//! above its maximum before reading the payload, so a peer cannot make it
//! buffer more than one maximum-size frame.
//!
//! ```
//! use spaxos::transport::frame::{encode_frame, FrameDecoder};
//!
//! let mut stream = Vec::new();
//! encode_frame(b"hello", &mut stream);
//! encode_frame(b"world", &mut stream);
//!
//! let mut decoder = FrameDecoder::new(1024);
//! decoder.extend(&stream[..7]); // a partial header: no frame yet
//! assert_eq!(decoder.next_frame()?, None);
//! decoder.extend(&stream[7..]);
//! assert_eq!(decoder.next_frame()?.as_deref(), Some(&b"hello"[..]));
//! assert_eq!(decoder.next_frame()?.as_deref(), Some(&b"world"[..]));
//! assert_eq!(decoder.next_frame()?, None);
//! # Ok::<(), spaxos::transport::frame::FrameError>(())
//! ```

use bytes::{Buf, Bytes, BytesMut};
use spaxos_core::Message;

use super::wire;

/// Bytes before the payload: length and checksum.
pub const FRAME_HEADER_BYTES: usize = 8;

/// The decoder grows its buffer by at most this much ahead of the bytes that
/// actually arrived, so a large announced length costs memory only as the
/// payload really comes in.
const RESERVE_CHUNK_BYTES: usize = 256 << 10;
/// Each read offers at least this much room, so small frames are read many
/// at a time.
const READ_CHUNK_BYTES_MIN: usize = 64 << 10;

/// A stream that cannot be decoded; the connection must be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {len} exceeds the maximum {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    BadChecksum { expected: u32, actual: u32 },
}

/// Appends one frame holding `payload` to `out`.
///
/// # Panics
/// If `payload` is 4 GiB or longer (a programming error: the sender bounds
/// its frames far below that).
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frame payload below 4 GiB");
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends one frame holding the encoding of `msg` to `out`, without an
/// intermediate buffer. A message whose payload would exceed
/// `frame_bytes_max` is not written: the error gives its size.
pub fn encode_message_frame(
    msg: &Message,
    frame_bytes_max: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let len_max = frame_bytes_max.min(u32::MAX as usize);
    match wire::encode_message_into(msg, len_max, out) {
        Ok(len) => {
            let payload = &out[start + FRAME_HEADER_BYTES..];
            debug_assert_eq!(payload.len(), len);
            let crc = crc32c::crc32c(payload);
            out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
            out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            Ok(())
        }
        Err(len) => {
            out.truncate(start);
            Err(FrameError::TooLarge {
                len,
                max: frame_bytes_max,
            })
        }
    }
}

/// Incremental frame decoder: feed it bytes as they arrive (through
/// [`FrameDecoder::buffer_mut`] or [`FrameDecoder::extend`]) and take whole
/// frames with [`FrameDecoder::next_frame`].
///
/// Payloads are `Bytes` slices of the receive buffer (no copy). After an
/// error the stream is unusable and the decoder must be dropped.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    frame_bytes_max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `frame_bytes_max`.
    pub fn new(frame_bytes_max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            frame_bytes_max,
        }
    }

    /// Changes the largest payload accepted from now on (a handshake is read
    /// with a small maximum, then the configured one applies).
    pub fn set_frame_bytes_max(&mut self, frame_bytes_max: usize) {
        self.frame_bytes_max = frame_bytes_max;
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The receive buffer, with spare capacity for the next read
    /// (`AsyncReadExt::read_buf` appends to it).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        let want = self
            .bytes_wanted()
            .clamp(READ_CHUNK_BYTES_MIN, RESERVE_CHUNK_BYTES);
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        &mut self.buf
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes still missing for the next frame (0 if a frame is complete).
    fn bytes_wanted(&self) -> usize {
        match self.header() {
            None => FRAME_HEADER_BYTES - self.buf.len(),
            Some((len, _)) => (FRAME_HEADER_BYTES + len).saturating_sub(self.buf.len()),
        }
    }

    fn header(&self) -> Option<(usize, u32)> {
        if self.buf.len() < FRAME_HEADER_BYTES {
            return None;
        }
        let mut header = &self.buf[..FRAME_HEADER_BYTES];
        let len = header.get_u32_le() as usize;
        let crc = header.get_u32_le();
        Some((len, crc))
    }

    /// The next whole frame's payload, `None` if more bytes are needed, or
    /// an error for an oversized length or a checksum mismatch.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some((len, expected)) = self.header() else {
            return Ok(None);
        };
        if len > self.frame_bytes_max {
            return Err(FrameError::TooLarge {
                len,
                max: self.frame_bytes_max,
            });
        }
        if self.buf.len() < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_BYTES);
        let payload = self.buf.split_to(len).freeze();
        let actual = crc32c::crc32c(&payload);
        if actual != expected {
            return Err(FrameError::BadChecksum { expected, actual });
        }
        Ok(Some(payload))
    }
}
