//! The window of recently chosen reqids that makes duplicate suppression
//! deterministic: whether index `i` repeats a reqid depends only on the log
//! at indices below `i`, so every node decides the same.
//!
//! Two generations of `span = dedup_window` indices each: a reqid is
//! remembered for at least `dedup_window` and at most `2 * dedup_window`
//! indices. Rotating a whole generation replaces per-entry eviction (a
//! removal per chosen entry on the hot path).
//!
//! Every chosen entry is checked and inserted, so the layout is built for
//! the cache: a generation keeps its reqids in a ring by index (appended in
//! order: sequential writes) and an open-addressing table of `u32` slots,
//! each a short fingerprint of the reqid and its offset in the ring. A lookup
//! usually touches one cache line of the table per generation; a matching
//! fingerprint is confirmed against the ring, so answers are exact. The
//! table is half full at most (4 bytes per slot: 8 bytes per entry). With
//! the ring and the filter below, a generation takes 18 bytes per index,
//! about half of what a general-purpose hash map of `(reqid, index)` took.
//!
//! Every insert must also ask the previous generation, and almost always
//! the answer is no: each generation keeps a small Bloom filter (16 bits per
//! entry, blocked into one 64-bit word per reqid, ~0.5 % false positives) that
//! usually settles that from the L2 cache without touching its table.

use crate::types::{Index, ReqId};

/// The largest `dedup_window` a generation can address: offsets take at
/// most 25 bits of a slot, leaving at least 7 for the fingerprint.
pub const DEDUP_WINDOW_MAX: u64 = 1 << 24;

/// Generations up to this span are faulted in when created (9 MiB per
/// node at most).
const PREFAULT_SPAN_MAX: u64 = 1 << 18;

/// One generation: the reqids chosen at `first..first + span`.
struct Generation {
    /// `ring[offset]` is the reqid chosen at `first + offset`; only offsets
    /// named by a slot of `table` are meaningful.
    ring: Vec<ReqId>,
    /// 0 = empty, else `fingerprint << offset_bits | (offset + 1)`.
    table: Vec<u32>,
    /// Bloom filter of the reqids in `table`: never a false "absent".
    filter: Vec<u64>,
    /// Slots in use (the table is cleared, not shrunk, on rotation).
    used: usize,
}

/// Where a reqid goes: its home slot, fingerprint and filter bits.
#[derive(Clone, Copy)]
struct Place {
    slot: usize,
    fingerprint: u32,
    word: usize,
    bits: u64,
}

/// Where a lookup in one generation ended.
enum Probe {
    Found(u64),
    /// Not there; this empty slot is where it would go.
    Vacant(usize),
}

/// Fixed shape shared by both generations.
#[derive(Clone, Copy)]
struct Layout {
    span: u64,
    offset_bits: u32,
    offset_mask: u32,
    fingerprint_mask: u32,
    slot_mask: usize,
    filter_mask: usize,
    seed: u64,
}

impl Layout {
    fn new(span: u64, seed: u64) -> Layout {
        assert!(
            (1..=DEDUP_WINDOW_MAX).contains(&span),
            "dedup span {span} out of range"
        );
        // Offsets are stored plus one, so 0 can mean "empty".
        let offset_bits = 64 - span.leading_zeros();
        let slots = (span * 2).next_power_of_two().max(16) as usize;
        Layout {
            span,
            offset_bits,
            offset_mask: ((1u64 << offset_bits) - 1) as u32,
            fingerprint_mask: (u32::MAX as u64 >> offset_bits) as u32,
            slot_mask: slots - 1,
            // One 64-bit word per four entries.
            filter_mask: (span / 4).next_power_of_two().max(1) as usize - 1,
            seed,
        }
    }

    /// Home slot and fingerprint of `reqid` (a full 64-bit mix: reqids are
    /// often sequential, and a node-specific seed keeps chosen reqids from
    /// piling into one run of slots).
    #[inline]
    fn place(&self, reqid: ReqId) -> Place {
        let mut h = reqid ^ self.seed;
        h = (h ^ (h >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h = (h ^ (h >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^= h >> 33;
        // The slot takes the low bits of `h` (at most 26), the filter word
        // bits 32 and up (at most 22), so reqids crowding one run of slots
        // spread over the filter; the bits within the word come from the
        // top of a second mix.
        let g = (h ^ self.seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let bits = (1u64 << (g >> 58))
            | (1 << ((g >> 52) & 63))
            | (1 << ((g >> 46) & 63))
            | (1 << ((g >> 40) & 63));
        Place {
            slot: (h as usize) & self.slot_mask,
            fingerprint: (h >> 40) as u32 & self.fingerprint_mask,
            word: ((h >> 32) as usize) & self.filter_mask,
            bits,
        }
    }
}

impl Generation {
    fn new(layout: &Layout) -> Generation {
        let mut generation = Generation {
            ring: vec![0; layout.span as usize],
            table: vec![0; layout.slot_mask + 1],
            filter: vec![0; layout.filter_mask + 1],
            used: 0,
        };
        // A zeroed allocation is mapped lazily: the first window of
        // proposals would take its page faults on the hot path. Windows up
        // to the default's size are faulted in now; larger ones, which may
        // be mostly unused, as they fill.
        if layout.span <= PREFAULT_SPAN_MAX {
            generation.ring.fill(0);
            generation.table.fill(0);
            generation.filter.fill(0);
        }
        generation
    }

    /// False only if `reqid` is certainly not in this generation.
    #[inline]
    fn might_hold(&self, place: &Place) -> bool {
        self.filter[place.word] & place.bits == place.bits
    }

    /// Looks `reqid` up from its home slot.
    #[inline]
    fn probe(&self, layout: &Layout, reqid: ReqId, place: &Place) -> Probe {
        let (mut slot, fingerprint) = (place.slot, place.fingerprint);
        loop {
            let entry = self.table[slot];
            if entry == 0 {
                return Probe::Vacant(slot);
            }
            if entry >> layout.offset_bits == fingerprint {
                let offset = (entry & layout.offset_mask) as u64 - 1;
                if self.ring[offset as usize] == reqid {
                    return Probe::Found(offset);
                }
            }
            slot = (slot + 1) & layout.slot_mask;
        }
    }

    #[inline]
    fn put(&mut self, layout: &Layout, slot: usize, place: &Place, reqid: ReqId, offset: u64) {
        // At most `span` entries in `2 * span` slots: probing always ends.
        assert!(self.used < layout.slot_mask, "dedup generation overfull");
        self.ring[offset as usize] = reqid;
        self.table[slot] = place.fingerprint << layout.offset_bits | (offset as u32 + 1);
        self.filter[place.word] |= place.bits;
        self.used += 1;
    }

    fn clear(&mut self) {
        if self.used > 0 {
            self.table.iter_mut().for_each(|slot| *slot = 0);
            self.filter.iter_mut().for_each(|word| *word = 0);
            self.used = 0;
        }
    }
}

/// Starts loading `item`'s cache line without waiting for it.
#[inline(always)]
fn prefetch<T: Copy>(item: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only requires SSE, which is part of every
    // x86_64 target's baseline; a prefetch is a hint that never faults and
    // reads nothing the program can observe.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((item as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Elsewhere a plain load does the job (it waits, but overlaps).
        std::hint::black_box(*item);
    }
}

pub(crate) struct RecentReqids {
    layout: Layout,
    /// Generation number (`(index - 1) / span`) of `current`.
    generation: u64,
    /// First and last index of `current`: an insert compares against these
    /// instead of dividing by the span. (`last` saturates: the final
    /// generation of the index space may be cut short.)
    first: Index,
    last: Index,
    current: Generation,
    previous: Generation,
}

impl RecentReqids {
    /// `window` indices at least (clamped to `1..=DEDUP_WINDOW_MAX`);
    /// `seed` only spreads the table, never changes an answer.
    pub fn new(window: u64, seed: u64) -> RecentReqids {
        let layout = Layout::new(window.clamp(1, DEDUP_WINDOW_MAX), seed);
        RecentReqids {
            generation: 0,
            first: 1,
            last: layout.span,
            current: Generation::new(&layout),
            previous: Generation::new(&layout),
            layout,
        }
    }

    fn first_index(&self, generation: u64) -> Index {
        generation * self.layout.span + 1
    }

    /// Where `reqid` was chosen, if within the window.
    #[inline(always)]
    pub fn get(&self, reqid: ReqId) -> Option<Index> {
        let place = self.layout.place(reqid);
        if let Probe::Found(offset) = self.current.probe(&self.layout, reqid, &place) {
            return Some(self.first + offset);
        }
        self.previous_get(reqid, &place)
    }

    /// The previous generation's answer. Its filter is empty while it holds
    /// nothing (generation 0, or after a jump), so it is asked first.
    #[inline]
    fn previous_get(&self, reqid: ReqId, place: &Place) -> Option<Index> {
        if !self.previous.might_hold(place) {
            return None;
        }
        match self.previous.probe(&self.layout, reqid, place) {
            Probe::Found(offset) => Some(self.first_index(self.generation - 1) + offset),
            Probe::Vacant(_) => None,
        }
    }

    /// Prefetches what `insert` and `get` will read for `reqids`: the
    /// current table's slots and the previous generation's filter words,
    /// so their misses overlap; the lookups afterwards then mostly hit the
    /// cache. Answers nothing.
    pub fn warm(&self, reqids: impl Iterator<Item = ReqId>) {
        for reqid in reqids {
            let place = self.layout.place(reqid);
            prefetch(&self.current.table[place.slot]);
            prefetch(&self.previous.filter[place.word]);
        }
    }

    /// Records `reqid` chosen at `index` (indices come in increasing order)
    /// unless it is already in the window; returns the earlier index then.
    /// Always inlined: it runs once per delivered entry on every node, and
    /// inlined into the delivery loop it costs ~3 % fewer instructions per
    /// proposal than as a call (measured with callgrind).
    #[inline(always)]
    pub fn insert(&mut self, index: Index, reqid: ReqId) -> Option<Index> {
        if index == 0 {
            // Not a log index ("none"); nothing is chosen there.
            return None;
        }
        if !(self.first..=self.last).contains(&index) {
            self.rotate_to(index);
        }
        let place = self.layout.place(reqid);
        let slot = match self.current.probe(&self.layout, reqid, &place) {
            Probe::Found(offset) => return Some(self.first + offset),
            Probe::Vacant(slot) => slot,
        };
        if let Some(earlier) = self.previous_get(reqid, &place) {
            return Some(earlier);
        }
        let offset = index - self.first;
        self.current.put(&self.layout, slot, &place, reqid, offset);
        None
    }

    /// Makes the generation of `index` current (indices only go forward).
    fn rotate_to(&mut self, index: Index) {
        let generation = (index - 1) / self.layout.span;
        assert!(
            generation > self.generation,
            "dedup indices went back: {index} in generation {generation} < {}",
            self.generation
        );
        // Swap and clear instead of dropping: the tables keep their
        // memory, so a rotation costs a memset, not an munmap plus page
        // faults on a fresh allocation (a latency spike every window).
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
        if generation != self.generation + 1 {
            self.previous.clear();
        }
        self.generation = generation;
        self.first = self.first_index(generation);
        self.last = self.first.saturating_add(self.layout.span - 1);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// The last generation of the index space may be shorter than the
    /// window; its bounds must not overflow.
    #[test]
    fn indices_at_the_end_of_the_index_space() {
        for window in [1, 3, 4, 1000] {
            let mut recent = RecentReqids::new(window, 9);
            assert_eq!(recent.insert(u64::MAX - 2, 7), None, "window {window}");
            assert_eq!(recent.insert(u64::MAX - 1, 8), None, "window {window}");
            assert_eq!(
                recent.insert(u64::MAX, 8),
                Some(u64::MAX - 1),
                "window {window}"
            );
            assert_eq!(recent.get(8), Some(u64::MAX - 1), "window {window}");
        }
    }

    #[test]
    fn remembers_within_the_window_and_forgets_after_two_generations() {
        let mut recent = RecentReqids::new(4, 0);
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

    /// Against a plain map with the same two-generation rule, over windows
    /// small and large, sparse indices (no-ops leave gaps), repeats, seeds
    /// and reqids that differ only in high bits (fingerprint collisions).
    #[test]
    fn agrees_with_a_map_model() {
        for (window, seed) in [(1, 0), (3, 1), (64, 2), (1000, 3), (65536, 4)] {
            let mut rng = ChaCha8Rng::seed_from_u64(window ^ seed);
            let mut recent = RecentReqids::new(window, rng.random());
            let mut model: HashMap<ReqId, Index> = HashMap::new();
            let (mut index, mut last_generation) = (0, 0);
            for _ in 0..(window * 5).min(300_000) {
                index += if rng.random_ratio(1, 10) {
                    rng.random_range(1..4)
                } else {
                    1
                };
                let reqid = match rng.random_range(0..4) {
                    0 => rng.random_range(1..50),
                    1 => rng.random::<u64>() | 1,
                    2 => (rng.random_range(1..64u64)) << 40,
                    _ => index,
                };
                // `get` answers for the window as of the last insert.
                let remembered = model.get(&reqid).copied();
                assert_eq!(recent.get(reqid), remembered, "get {reqid} before {index}");
                let generation = (index - 1) / window;
                if generation != last_generation {
                    model.retain(|_, at| (*at - 1) / window + 1 >= generation);
                    last_generation = generation;
                }
                let expected = model.get(&reqid).copied();
                assert_eq!(
                    recent.insert(index, reqid),
                    expected,
                    "insert {reqid} at {index}"
                );
                model.entry(reqid).or_insert(index);
            }
        }
    }

    /// The largest window leaves 7-bit fingerprints, so equal fingerprints
    /// of different reqids are common: the ring must settle every one.
    #[test]
    fn short_fingerprints_never_give_a_wrong_answer() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut recent = RecentReqids::new(DEDUP_WINDOW_MAX, 0);
        let reqids: Vec<ReqId> = (0..20_000).map(|_| rng.random::<u64>() | 1).collect();
        for (n, &reqid) in reqids.iter().enumerate() {
            assert_eq!(recent.insert(n as u64 + 1, reqid), None);
        }
        for (n, &reqid) in reqids.iter().enumerate() {
            assert_eq!(recent.get(reqid), Some(n as u64 + 1));
            assert_eq!(recent.get(reqid + 1), None);
        }
    }

    /// The filter in front of the previous generation must rarely send a
    /// lookup on to its table (that is its whole point) and never miss.
    #[test]
    fn previous_generation_filter_is_selective() {
        let span = 1 << 16;
        let layout = Layout::new(span, 3);
        let mut generation = Generation::new(&layout);
        for offset in 0..span {
            let reqid = offset * 7 + 1;
            let place = layout.place(reqid);
            let Probe::Vacant(slot) = generation.probe(&layout, reqid, &place) else {
                panic!("{reqid} inserted twice");
            };
            generation.put(&layout, slot, &place, reqid, offset);
        }
        for offset in 0..span {
            assert!(generation.might_hold(&layout.place(offset * 7 + 1)));
        }
        let strangers = 100_000u64;
        let false_positives = (0..strangers)
            .filter(|n| generation.might_hold(&layout.place(n * 7 + 2)))
            .count() as u64;
        assert!(
            false_positives * 100 < strangers * 3,
            "{false_positives} of {strangers} strangers pass the filter"
        );
    }

    #[test]
    fn the_largest_window_fits_a_slot() {
        let layout = Layout::new(DEDUP_WINDOW_MAX, 9);
        assert!(layout.offset_bits <= 25);
        assert!(layout.fingerprint_mask >= 0x7F);
        assert!(DEDUP_WINDOW_MAX < layout.offset_mask as u64);
    }
}
