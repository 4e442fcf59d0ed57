//! In-memory maps that check, after every single operation, what the
//! datapath could observe at that instant.

use gangplank_common::{Backend, RevNat, ServiceKey, ServiceName, ServiceValue};

use super::maps::{AffinityPurges, LbMaps, Snapshot};
use super::{Error, Result};

#[derive(Default)]
pub struct FakeMaps {
    pub state: Snapshot,
    /// Every moment at which a reader could have seen a half-written
    /// service, described.
    pub violations: Vec<String>,
    pub ops: usize,
    /// Fail the n-th operation from now (simulates a full map).
    pub fail_at: Option<usize>,
    pub affinity_purges: Vec<AffinityPurges>,
}

impl FakeMaps {
    fn step(&mut self) -> Result<()> {
        if let Some(n) = self.fail_at.as_mut() {
            if *n == 0 {
                self.fail_at = None;
                return Err(Error::IdsExhausted("fake map space"));
            }
            *n -= 1;
        }
        self.ops += 1;
        Ok(())
    }

    /// What a connect() racing with the writer could trip over.
    fn check(&mut self, after: &str) {
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
                    None => self
                        .violations
                        .push(format!("after {after}: {key:?} slot {slot} missing")),
                    Some(v) if !self.state.backends.contains_key(&v.backend_id) => {
                        self.violations.push(format!(
                            "after {after}: {key:?} slot {slot} -> missing backend {}",
                            v.backend_id
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

impl LbMaps for FakeMaps {
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.step()?;
        self.state.backends.insert(id, *backend);
        self.check("put_backend");
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        self.step()?;
        self.state.backends.remove(&id);
        self.check("delete_backend");
        Ok(())
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.step()?;
        self.state.services.insert(*key, *value);
        self.check("put_service");
        Ok(())
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.step()?;
        self.state.services.remove(key);
        self.check("delete_service");
        Ok(())
    }

    fn put_rev_nat(&mut self, id: u16, rev: &RevNat, name: &ServiceName) -> Result<()> {
        self.step()?;
        self.state.rev_nats.insert(id, *rev);
        self.state.names.insert(id, *name);
        Ok(())
    }

    fn delete_rev_nat(&mut self, id: u16) -> Result<()> {
        self.step()?;
        self.state.rev_nats.remove(&id);
        self.state.names.remove(&id);
        Ok(())
    }

    fn purge_affinity(&mut self, purges: &AffinityPurges) -> Result<()> {
        self.step()?;
        self.affinity_purges.push(purges.clone());
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.state.clone())
    }
}
