//! The window of recently chosen reqids that makes duplicate suppression
//! deterministic: whether index `i` repeats a reqid depends only on the log
//! at indices below `i`, so every node decides the same.
//!
//! Two generations of `span = dedup_window` indices each: a reqid is
//! remembered for at least `dedup_window` and at most `2 * dedup_window`
//! indices. Rotating a whole generation replaces per-entry eviction (a hash
//! map removal per chosen entry on the hot path).
//!
//! Almost every lookup is for a reqid that is not there, and the tables are
//! too large for the CPU cache, so each generation also keeps a Bloom
//! filter (16 bits per entry, 2 probes: ~1.4 % false positives, 128 KiB for
//! the default window) that answers "certainly not" without touching them.

use crate::node::FastMap;
use crate::types::{Index, ReqId};

/// A Bloom filter over reqids: `maybe` never says no for an inserted one.
struct Filter {
    words: Vec<u64>,
    /// Bit-index mask (the filter has a power-of-two number of bits).
    mask: u64,
}

impl Filter {
    fn new(entries: u64) -> Filter {
        let bits = (entries.max(64) * 16).next_power_of_two().min(1 << 30);
        Filter {
            words: vec![0; (bits / 64) as usize],
            mask: bits - 1,
        }
    }

    fn positions(&self, reqid: ReqId) -> [u64; 2] {
        let h = reqid.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let h2 = (h ^ (h >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        [(h >> 20) & self.mask, (h2 >> 17) & self.mask]
    }

    fn maybe(&self, reqid: ReqId) -> bool {
        self.positions(reqid)
            .iter()
            .all(|&bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn insert(&mut self, reqid: ReqId) {
        for bit in self.positions(reqid) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
}

/// One generation: its reqids and their filter.
struct Generation {
    reqids: FastMap<ReqId, Index>,
    filter: Filter,
}

impl Generation {
    fn new(span: u64) -> Generation {
        // Sized for a full generation up front: growing a large table
        // rehashes it, a latency spike on the hot path.
        let capacity = span.min(1 << 20) as usize;
        Generation {
            reqids: FastMap::with_capacity_and_hasher(capacity, Default::default()),
            filter: Filter::new(span.min(1 << 24)),
        }
    }

    fn get(&self, reqid: ReqId) -> Option<Index> {
        if !self.filter.maybe(reqid) {
            return None;
        }
        self.reqids.get(&reqid).copied()
    }

    fn clear(&mut self) {
        self.reqids.clear();
        self.filter.clear();
    }
}

pub(crate) struct RecentReqids {
    span: u64,
    /// Generation number (`(index - 1) / span`) of `current`.
    generation: u64,
    current: Generation,
    previous: Generation,
}

impl RecentReqids {
    pub fn new(window: u64) -> RecentReqids {
        let span = window.max(1);
        RecentReqids {
            span,
            generation: 0,
            current: Generation::new(span),
            previous: Generation::new(span),
        }
    }

    /// Where `reqid` was chosen, if within the window.
    pub fn get(&self, reqid: ReqId) -> Option<Index> {
        self.current.get(reqid).or_else(|| self.previous.get(reqid))
    }

    /// Records `reqid` chosen at `index` (indices come in increasing order)
    /// unless it is already in the window; returns the earlier index then.
    pub fn insert(&mut self, index: Index, reqid: ReqId) -> Option<Index> {
        let generation = index.saturating_sub(1) / self.span;
        if generation != self.generation {
            // Swap and clear instead of dropping: the tables keep their
            // memory, so a rotation costs a memset, not an munmap plus page
            // faults on a fresh allocation (a latency spike every window).
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            if generation != self.generation + 1 {
                self.previous.clear();
            }
            self.generation = generation;
        }
        if let Some(earlier) = self.get(reqid) {
            return Some(earlier);
        }
        self.current.reqids.insert(reqid, index);
        self.current.filter.insert(reqid);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window_and_forgets_after_two_generations() {
        let mut recent = RecentReqids::new(4);
        assert_eq!(recent.insert(1, 10), None);
        assert_eq!(recent.insert(2, 10), Some(1));
        assert_eq!(recent.get(10), Some(1));
        assert_eq!(recent.insert(5, 11), None); // generation 1
        assert_eq!(recent.get(10), Some(1)); // still in the previous one
        assert_eq!(recent.insert(9, 12), None); // generation 2: 1..=4 forgotten
        assert_eq!(recent.get(10), None);
        assert_eq!(recent.get(11), Some(5));
        assert_eq!(recent.insert(100, 13), None); // a jump forgets everything
        assert_eq!(recent.get(11), None);
    }

    #[test]
    fn filter_never_forgets_an_inserted_reqid() {
        let mut filter = Filter::new(1000);
        for reqid in (1..5000u64).step_by(7) {
            filter.insert(reqid);
        }
        for reqid in (1..5000u64).step_by(7) {
            assert!(filter.maybe(reqid));
        }
        let false_positives = (1..5000u64)
            .filter(|r| r % 7 != 1 && filter.maybe(*r))
            .count();
        assert!(
            false_positives < 4300 / 10,
            "{false_positives} false positives"
        );
    }
}
