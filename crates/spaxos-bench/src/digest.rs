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
            // Four independent lanes of 8-byte words: the multiplies overlap
            // instead of waiting on one another, so checking every byte of
            // every replica stays cheap next to the protocol.
            let mut lanes = [h, h ^ 0x5555, h ^ 0xAAAA, h ^ 0xFFFF];
            let mut blocks = v.chunks_exact(32);
            for block in &mut blocks {
                for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                    let word = u64::from_le_bytes(word.try_into().expect("8-byte word"));
                    *lane = (*lane ^ word)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .rotate_left(23);
                }
            }
            h = lanes.iter().fold(h, |acc, &lane| {
                (acc ^ lane).wrapping_mul(0x100_0000_01B3).rotate_left(17)
            });
            for &b in blocks.remainder() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3);
            }
            h ^= v.len() as u64;
        }
        self.hash = h;
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use spaxos_core::Value;

    use super::*;

    fn digest(index: u64, reqid: u64, payload: &[u8]) -> Digest {
        let mut d = Digest::default();
        d.add(&ChosenItem {
            index,
            value: Value::One {
                reqid,
                value: payload.to_vec().into(),
            },
        });
        d
    }

    #[test]
    fn every_byte_index_and_reqid_counts() {
        let payload: Vec<u8> = (0..100u8).collect();
        let base = digest(1, 7, &payload);
        assert_eq!(base, digest(1, 7, &payload));
        assert_ne!(base, digest(2, 7, &payload));
        assert_ne!(base, digest(1, 8, &payload));
        assert_ne!(base, digest(1, 7, &payload[..99]));
        for at in 0..payload.len() {
            let mut changed = payload.clone();
            changed[at] ^= 1;
            assert_ne!(base, digest(1, 7, &changed), "byte {at}");
        }
    }
}
