//! The check every benchmark ends with: replicas hold the same chosen log.

use spaxos_core::ChosenItem;

/// Order-sensitive digest of a chosen log.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub struct Digest {
    pub hash: u64,
    pub count: u64,
}

impl Digest {
    pub fn add(&mut self, item: &ChosenItem) {
        let mut h = self.hash ^ item.index.wrapping_mul(0x100_0000_01B3);
        h = h.wrapping_mul(0x100_0000_01B3) ^ item.value.reqid().unwrap_or(0);
        for v in item.value.values() {
            // Word at a time: the digest must stay cheap next to the protocol.
            let mut chunks = v.chunks_exact(8);
            for chunk in &mut chunks {
                let word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
                h = (h ^ word)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(23);
            }
            for &b in chunks.remainder() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3);
            }
            h ^= v.len() as u64;
        }
        self.hash = h;
        self.count += 1;
    }
}
