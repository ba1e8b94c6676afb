//! The window of recently chosen reqids that makes duplicate suppression
//! deterministic: whether index `i` repeats a reqid depends only on the log
//! at indices below `i`, so every node decides the same.
//!
//! Two generations of `span = dedup_window` indices each: a reqid is
//! remembered for at least `dedup_window` and at most `2 * dedup_window`
//! indices. Rotating a
//! whole generation replaces per-entry eviction (a hash map removal per
//! chosen entry on the hot path).

use crate::node::FastMap;
use crate::types::{Index, ReqId};

pub(crate) struct RecentReqids {
    span: u64,
    /// Generation number (`(index - 1) / span`) of `current`.
    generation: u64,
    current: FastMap<ReqId, Index>,
    previous: FastMap<ReqId, Index>,
}

impl RecentReqids {
    pub fn new(window: u64) -> RecentReqids {
        let span = window.max(1);
        // Sized for a full generation up front: growing a large table
        // rehashes it, a latency spike on the hot path.
        let capacity = span.min(1 << 20) as usize;
        RecentReqids {
            span,
            generation: 0,
            current: FastMap::with_capacity_and_hasher(capacity, Default::default()),
            previous: FastMap::with_capacity_and_hasher(capacity, Default::default()),
        }
    }

    /// Where `reqid` was chosen, if within the window.
    pub fn get(&self, reqid: ReqId) -> Option<Index> {
        self.current
            .get(&reqid)
            .or_else(|| self.previous.get(&reqid))
            .copied()
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
        if let Some(&earlier) = self.previous.get(&reqid) {
            return Some(earlier);
        }
        match self.current.entry(reqid) {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(index);
                None
            }
        }
    }
}
