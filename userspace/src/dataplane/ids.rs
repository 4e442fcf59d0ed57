//! Id allocation for backends and reverse-NAT entries.
//!
//! Freed ids are reused lowest-first, so ids stay small and a restarted agent
//! that reserves the ids it finds in pinned maps hands out the same ones.

use std::collections::BTreeSet;

#[derive(Debug)]
pub struct IdAllocator {
    next: u32,
    max: u32,
    free: BTreeSet<u32>,
}

impl IdAllocator {
    /// Ids in `first..=max`; 0 is never handed out (it means "none" in maps).
    pub fn new(first: u32, max: u32) -> Self {
        Self {
            next: first.max(1),
            max,
            free: BTreeSet::new(),
        }
    }

    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        if self.next > self.max {
            return None;
        }
        let id = self.next;
        self.next += 1;
        Some(id)
    }

    /// Mark `id` as in use (found in a pinned map).
    pub fn reserve(&mut self, id: u32) {
        if id == 0 || id > self.max {
            return;
        }
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.remove(&id);
        }
    }

    pub fn free(&mut self, id: u32) {
        if id != 0 && id < self.next {
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_lowest_free_id_and_respects_reservations() {
        let mut ids = IdAllocator::new(1, 10);
        ids.reserve(3);
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        assert_eq!(ids.allocate(), Some(4), "3 was reserved from a pinned map");
        ids.free(2);
        assert_eq!(ids.allocate(), Some(2));
    }

    #[test]
    fn runs_out_cleanly() {
        let mut ids = IdAllocator::new(1, 2);
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        assert_eq!(ids.allocate(), None);
    }
}
