//! In-memory maps that check, after every single operation, what the
//! datapath could observe at that instant.

use std::collections::{HashMap, HashSet};

use gangplank_common::{
    Backend, MaglevChunk, MaglevKey, RevNat, ServiceKey, ServiceName, ServiceValue, MAGLEV_CHUNK,
    SVC_FLAG_MAGLEV, SVC_FLAG_MAGLEV_GEN1,
};

use super::maps::{AffinityPurges, LbMaps, Snapshot};
use super::{Error, Result};

#[derive(Default)]
pub struct FakeMaps {
    /// Everything but the Maglev chunk contents (`state.maglev` holds
    /// their keys, kept equal to `chunks`' keys).
    pub state: Snapshot,
    pub chunks: HashMap<MaglevKey, MaglevChunk>,
    /// Every moment at which a reader could have seen a half-written
    /// service, described.
    pub violations: Vec<String>,
    pub ops: usize,
    /// Every operation, in order: `put_backend`, `put_slot`, `put_master`,
    /// `put_chunk`, `delete_slot`, `delete_master`, `delete_chunk`,
    /// `delete_backend`, `put_rev_nat`, `delete_rev_nat`, `purge_affinity`.
    pub log: Vec<&'static str>,
    /// Fail the n-th operation from now (simulates a full map).
    pub fail_at: Option<usize>,
    /// How many Maglev chunks fit (None: unbounded), like the real map's
    /// max_entries.
    pub chunk_capacity: Option<usize>,
    pub affinity_purges: Vec<AffinityPurges>,
}

/// The live Maglev table of `master`, if its entry names one: (size,
/// generation).
fn live_table(value: &ServiceValue) -> Option<(u32, u8)> {
    (value.flags & SVC_FLAG_MAGLEV != 0).then(|| {
        (
            value.backend_id,
            u8::from(value.flags & SVC_FLAG_MAGLEV_GEN1 != 0),
        )
    })
}

impl FakeMaps {
    /// The same maps, as a restarted agent finds them (pinned state only).
    pub fn restarted(&self) -> FakeMaps {
        FakeMaps {
            state: self.state.clone(),
            chunks: self.chunks.clone(),
            ..FakeMaps::default()
        }
    }

    fn step(&mut self, op: &'static str) -> Result<()> {
        if let Some(n) = self.fail_at.as_mut() {
            if *n == 0 {
                self.fail_at = None;
                return Err(Error::IdsExhausted("fake map space"));
            }
            *n -= 1;
        }
        self.ops += 1;
        self.log.push(op);
        Ok(())
    }

    /// The ids of the live Maglev table of the master entry `key` →
    /// `value`, or what is wrong with it.
    fn table(
        &self,
        key: &ServiceKey,
        value: &ServiceValue,
    ) -> std::result::Result<Vec<u32>, String> {
        let Some((size, generation)) = live_table(value) else {
            return Ok(Vec::new());
        };
        let mut ids = Vec::with_capacity(size as usize);
        for chunk in 0..size.div_ceil(MAGLEV_CHUNK as u32) {
            let chunk_key = MaglevKey {
                rev_nat_id: value.rev_nat_id,
                generation,
                _pad: 0,
                chunk,
            };
            let Some(values) = self.chunks.get(&chunk_key) else {
                return Err(format!(
                    "{key:?} generation {generation} chunk {chunk} missing"
                ));
            };
            ids.extend_from_slice(&values.backend_ids);
        }
        if ids[size as usize..].iter().any(|id| *id != 0) {
            return Err(format!("{key:?}: non-zero entries past the table size"));
        }
        ids.truncate(size as usize);
        Ok(ids)
    }

    /// What a connect() or a packet racing with the writer could trip over.
    fn check(&mut self, after: &str) {
        let mut found = Vec::new();
        for (key, value) in &self.state.services {
            if key.backend_slot != 0 {
                continue;
            }
            for slot in 1..=value.count {
                let slot_key = ServiceKey {
                    backend_slot: slot,
                    ..*key
                };
                match self.state.services.get(&slot_key) {
                    None => found.push(format!("after {after}: {key:?} slot {slot} missing")),
                    Some(v) if !self.state.backends.contains_key(&v.backend_id) => {
                        found.push(format!(
                            "after {after}: {key:?} slot {slot} -> missing backend {}",
                            v.backend_id
                        ))
                    }
                    Some(_) => {}
                }
            }
            match self.table(key, value) {
                Err(problem) => found.push(format!("after {after}: {problem}")),
                Ok(ids) => {
                    if let Some(id) = ids.iter().find(|id| !self.state.backends.contains_key(id)) {
                        found.push(format!(
                            "after {after}: {key:?} Maglev table -> missing backend {id}"
                        ));
                    }
                }
            }
        }
        self.violations.extend(found);
    }

    /// What must hold once the writer is done with a call (it can't hold
    /// at every step: a slot is rewritten before the master entry flips to
    /// the table that no longer needs its old backend):
    /// - every Maglev table holds exactly the frontend's slot backends;
    /// - no chunk exists that no master entry names (old generations are
    ///   deleted);
    /// - the snapshot's chunk keys are the chunks'.
    pub fn settled_violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut named = HashSet::new();
        for (key, value) in &self.state.services {
            if key.backend_slot != 0 {
                continue;
            }
            let Some((size, generation)) = live_table(value) else {
                continue;
            };
            for chunk in 0..size.div_ceil(MAGLEV_CHUNK as u32) {
                named.insert((value.rev_nat_id, generation, chunk));
            }
            let Ok(ids) = self.table(key, value) else {
                continue; // reported by `check`
            };
            let in_table: HashSet<u32> = ids.into_iter().collect();
            let in_slots: HashSet<u32> = (1..=value.count)
                .filter_map(|slot| {
                    let slot_key = ServiceKey {
                        backend_slot: slot,
                        ..*key
                    };
                    self.state.services.get(&slot_key).map(|v| v.backend_id)
                })
                .collect();
            if in_table != in_slots {
                found.push(format!(
                    "{key:?}: Maglev table holds {in_table:?}, slots hold {in_slots:?}"
                ));
            }
        }
        for key in self.chunks.keys() {
            if !named.contains(&(key.rev_nat_id, key.generation, key.chunk)) {
                found.push(format!("stale Maglev chunk {key:?}"));
            }
        }
        let keys: HashSet<MaglevKey> = self.chunks.keys().copied().collect();
        if keys != self.state.maglev {
            found.push("snapshot chunk keys differ from the chunks".to_owned());
        }
        found
    }
}

impl LbMaps for FakeMaps {
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.step("put_backend")?;
        self.state.backends.insert(id, *backend);
        self.check("put_backend");
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        self.step("delete_backend")?;
        self.state.backends.remove(&id);
        self.check("delete_backend");
        Ok(())
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.step(if key.backend_slot == 0 {
            "put_master"
        } else {
            "put_slot"
        })?;
        self.state.services.insert(*key, *value);
        self.check("put_service");
        Ok(())
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.step(if key.backend_slot == 0 {
            "delete_master"
        } else {
            "delete_slot"
        })?;
        self.state.services.remove(key);
        self.check("delete_service");
        Ok(())
    }

    fn put_rev_nat(&mut self, id: u16, rev: &RevNat, name: &ServiceName) -> Result<()> {
        self.step("put_rev_nat")?;
        self.state.rev_nats.insert(id, *rev);
        self.state.names.insert(id, *name);
        Ok(())
    }

    fn delete_rev_nat(&mut self, id: u16) -> Result<()> {
        self.step("delete_rev_nat")?;
        self.state.rev_nats.remove(&id);
        self.state.names.remove(&id);
        Ok(())
    }

    fn put_maglev_chunk(&mut self, key: &MaglevKey, chunk: &MaglevChunk) -> Result<()> {
        if self
            .chunk_capacity
            .is_some_and(|cap| self.chunks.len() >= cap && !self.chunks.contains_key(key))
        {
            return Err(Error::IdsExhausted("fake Maglev map space"));
        }
        self.step("put_chunk")?;
        self.chunks.insert(*key, *chunk);
        self.state.maglev.insert(*key);
        self.check("put_maglev_chunk");
        Ok(())
    }

    fn delete_maglev_chunk(&mut self, key: &MaglevKey) -> Result<()> {
        self.step("delete_chunk")?;
        self.chunks.remove(key);
        self.state.maglev.remove(key);
        self.check("delete_maglev_chunk");
        Ok(())
    }

    fn maglev_chunk(&self, key: &MaglevKey) -> Result<Option<MaglevChunk>> {
        Ok(self.chunks.get(key).copied())
    }

    fn purge_affinity(&mut self, purges: &AffinityPurges) -> Result<()> {
        self.step("purge_affinity")?;
        self.affinity_purges.push(purges.clone());
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.state.clone())
    }
}
