//! What a simulated node has on disk: only what was made durable survives a
//! crash. Same record semantics as the real storage (`spaxos-storage`).

use std::collections::BTreeMap;

use spaxos_core::{Index, InstanceState, NodeState, Record, RecoveredState, Value};

#[derive(Clone, Default, Debug)]
pub struct Durable {
    pub node: NodeState,
    pub instances: BTreeMap<Index, InstanceState>,
}

impl Durable {
    pub fn apply(&mut self, records: &[Record]) {
        for record in records {
            match record {
                Record::Node(state) => self.node = *state,
                Record::Instance(st) => {
                    self.instances.insert(st.index, st.clone());
                }
                Record::Chosen(index) => {
                    let st = self
                        .instances
                        .get_mut(index)
                        .expect("Chosen record for an index with no Instance record");
                    assert!(
                        st.value.is_some(),
                        "Chosen record for index {index} without a value"
                    );
                    st.chosen = true;
                }
            }
        }
    }

    /// The promise in force at `index` on disk.
    pub fn effective_promise(&self, index: Index) -> spaxos_core::Ballot {
        let per_index = self
            .instances
            .get(&index)
            .map(|i| i.promised)
            .unwrap_or_default();
        per_index.max(self.node.promised)
    }

    pub fn accepted(&self, index: Index) -> spaxos_core::Ballot {
        self.instances
            .get(&index)
            .map(|i| i.accepted)
            .unwrap_or_default()
    }

    pub fn chosen(&self, index: Index) -> Option<Value> {
        self.instances
            .get(&index)
            .filter(|i| i.chosen)
            .and_then(|i| i.value.clone())
    }

    pub fn recover(&self, dedup_window: u64) -> RecoveredState {
        let mut chosen_through = 0;
        while self
            .instances
            .get(&(chosen_through + 1))
            .is_some_and(|i| i.chosen)
        {
            chosen_through += 1;
        }
        let instances = self
            .instances
            .range(chosen_through + 1..)
            .map(|(_, st)| st.clone())
            .collect();
        let low = chosen_through.saturating_sub(dedup_window) + 1;
        let recent_reqids = self
            .instances
            .range(low..chosen_through + 1)
            .filter_map(|(&i, st)| st.value.as_ref().and_then(|v| v.reqid()).map(|r| (i, r)))
            .collect();
        RecoveredState {
            node: self.node,
            chosen_through,
            instances,
            recent_reqids,
        }
    }
}
