//! Maglev consistent hashing for external frontends (Eisenbud et al.,
//! "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016,
//! section 3.4).
//!
//! Every node must build the *same* lookup table for the same set of
//! backends, so that a flow arriving at any node (or moved between nodes by
//! an upstream ECMP change) picks the same backend. The table therefore
//! depends only on the backends' addresses, never on the node-local backend
//! ids or on the order the backends were learnt in:
//!
//! - each backend is named `"<ipv4>:<port>"` (e.g. `"10.1.0.5:8080"`);
//! - `h = FNV-1a-64(name)`, then two independent-looking hashes
//!   `h1 = fmix64(h ^ SEED_OFFSET)` and `h2 = fmix64(h ^ SEED_SKIP)`, where
//!   `fmix64` is MurmurHash3's 64-bit finaliser (a bijection with full
//!   avalanche; FNV-1a alone mixes its last bytes poorly, and two FNV-1a
//!   runs that differ only in their seed are correlated);
//! - `offset = h1 % M`, `skip = h2 % (M - 1) + 1`; backend `i`'s preference
//!   list is `(offset + j * skip) % M` for `j = 0, 1, ...` (a permutation of
//!   `0..M` because `M` is prime);
//! - backends sorted by (address, port) take turns claiming their next
//!   preferred free position until all `M` are taken (equal weights).
//!
//! The constants below are part of the wire contract between nodes: change
//! them and nodes running different versions disagree on every flow.
//! `tests::golden_table` pins them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use gangplank_common::{MAGLEV_CHUNK, MAGLEV_DEFAULT_SIZE, MAGLEV_MAX_SIZE};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Seeds of the two hashes (the golden ratio and MurmurHash3's `c2`: any
/// two distinct constants would do, these are just well known).
const SEED_OFFSET: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_SKIP: u64 = 0x4cf5_ad43_2745_937f;

/// Smallest accepted table size. Maglev's balance needs `M` well above the
/// number of backends (the paper uses `M > 100 N`); below this prime the
/// tables stop being worth their map space. Cilium's smallest is the same.
pub const MIN_TABLE_SIZE: u32 = 251;

/// A valid Maglev table size: a prime in
/// `MIN_TABLE_SIZE..=MAGLEV_MAX_SIZE` (`--maglev-table-size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableSize(u32);

/// Why a table size was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTableSize {
    /// Not a number.
    #[error("Maglev table size {0:?} is not a number")]
    NotANumber(String),
    /// Maglev needs a prime (every skip must generate a full permutation).
    #[error("Maglev table size {0} is not a prime (try 16381, 32749, 65521 or 131071)")]
    NotPrime(u32),
    /// Too small to balance.
    #[error("Maglev table size {0} is below the minimum {MIN_TABLE_SIZE}")]
    TooSmall(u32),
    /// More than the datapath's chunk index allows.
    #[error("Maglev table size {0} is above the maximum {MAGLEV_MAX_SIZE}")]
    TooLarge(u32),
}

impl TableSize {
    /// [`MAGLEV_DEFAULT_SIZE`] (16381).
    pub const DEFAULT: TableSize = TableSize(MAGLEV_DEFAULT_SIZE);

    /// Checks `size`.
    pub fn new(size: u32) -> Result<Self, InvalidTableSize> {
        if size < MIN_TABLE_SIZE {
            return Err(InvalidTableSize::TooSmall(size));
        }
        if size > MAGLEV_MAX_SIZE {
            return Err(InvalidTableSize::TooLarge(size));
        }
        if !is_prime(size) {
            return Err(InvalidTableSize::NotPrime(size));
        }
        Ok(TableSize(size))
    }

    /// The size `M`.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Number of [`MAGLEV_CHUNK`]-sized chunks a table of this size takes.
    pub fn chunks(self) -> u32 {
        chunks_for(self.0)
    }
}

impl Default for TableSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for TableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses a command-line value (`clap`'s `value_parser!` uses this).
impl FromStr for TableSize {
    type Err = InvalidTableSize;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let size = s
            .trim()
            .parse()
            .map_err(|_| InvalidTableSize::NotANumber(s.to_owned()))?;
        Self::new(size)
    }
}

/// Chunks needed for a table of `size` entries (any size, e.g. one read
/// back from a pinned master entry).
pub fn chunks_for(size: u32) -> u32 {
    size.div_ceil(MAGLEV_CHUNK as u32)
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// MurmurHash3's 64-bit finaliser.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// `(offset, skip)` of a backend's preference list in a table of `size`.
pub fn permutation(address: Ipv4Addr, port: u16, size: u32) -> (u32, u32) {
    let h = fnv1a64(format!("{address}:{port}").as_bytes());
    let m = u64::from(size);
    let offset = fmix64(h ^ SEED_OFFSET) % m;
    let skip = fmix64(h ^ SEED_SKIP) % (m - 1) + 1;
    // Both are below `size`, a u32.
    (offset as u32, skip as u32)
}

/// The lookup table for `backends` (address, port, backend id): `size`
/// backend ids, each backend holding `size / N` entries rounded up or
/// down. The order of `backends` does not matter; an address:port listed
/// twice counts once. Empty input gives an empty table (no table at all is
/// written for a frontend without backends).
pub fn table(backends: &[(Ipv4Addr, u16, u32)], size: TableSize) -> Vec<u32> {
    let mut sorted: Vec<(Ipv4Addr, u16, u32)> = backends.to_vec();
    sorted.sort_unstable();
    sorted.dedup_by_key(|b| (b.0, b.1));
    if sorted.is_empty() {
        return Vec::new();
    }
    let m = size.get();
    let (mut next, skips): (Vec<u32>, Vec<u32>) = sorted
        .iter()
        .map(|(address, port, _)| permutation(*address, *port, m))
        .unzip();
    const EMPTY: u32 = u32::MAX;
    let mut entries = vec![EMPTY; m as usize];
    let mut filled = 0u32;
    // Round robin: each backend in turn takes its most preferred free
    // position. `skip` is in 1..M and M is prime, so each preference list
    // visits every position and the inner loop always ends.
    'fill: loop {
        for i in 0..sorted.len() {
            loop {
                let position = next[i];
                next[i] = ((u64::from(position) + u64::from(skips[i])) % u64::from(m)) as u32;
                let entry = &mut entries[position as usize];
                if *entry == EMPTY {
                    *entry = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break 'fill;
            }
        }
    }
    entries.into_iter().map(|i| sorted[i as usize].2).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn backends(n: u8) -> Vec<(Ipv4Addr, u16, u32)> {
        (0..n)
            .map(|i| (Ipv4Addr::new(10, 1, 0, i + 1), 8080, u32::from(i) + 1))
            .collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for id in table {
            *counts.entry(*id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn sizes_must_be_prime_and_in_range() {
        assert_eq!(TableSize::default().get(), 16_381);
        assert_eq!(TableSize::new(16_381).map(TableSize::chunks), Ok(16));
        assert_eq!(TableSize::new(131_071).map(TableSize::chunks), Ok(128));
        assert_eq!(
            TableSize::new(16_383),
            Err(InvalidTableSize::NotPrime(16_383))
        );
        assert_eq!(TableSize::new(13), Err(InvalidTableSize::TooSmall(13)));
        assert_eq!(
            TableSize::new(262_139),
            Err(InvalidTableSize::TooLarge(262_139))
        );
        assert_eq!("251".parse::<TableSize>().map(TableSize::get), Ok(251));
        assert!(matches!(
            "lots".parse::<TableSize>(),
            Err(InvalidTableSize::NotANumber(_))
        ));
        assert_eq!(chunks_for(1024), 1);
        assert_eq!(chunks_for(1025), 2);
    }

    #[test]
    fn every_backend_gets_its_share() {
        let size = TableSize::DEFAULT;
        for n in [1u8, 2, 3, 7, 10, 100] {
            let table = table(&backends(n), size);
            assert_eq!(table.len(), size.get() as usize);
            let counts = counts(&table);
            assert_eq!(counts.len(), usize::from(n), "every backend has entries");
            let floor = size.get() as usize / usize::from(n);
            for (id, count) in counts {
                // Round robin hands out one entry per backend per round.
                assert!(
                    count == floor || count == floor + 1,
                    "{n} backends: backend {id} has {count} entries, expected {floor} or {}",
                    floor + 1
                );
            }
        }
    }

    #[test]
    fn removing_one_backend_remaps_about_one_nth() {
        let size = TableSize::DEFAULT;
        let m = size.get() as usize;
        for n in [5u8, 10, 50] {
            let all = backends(n);
            let before = table(&all, size);
            let removed = all[usize::from(n) / 2].2;
            let fewer: Vec<_> = all.iter().copied().filter(|b| b.2 != removed).collect();
            let after = table(&fewer, size);
            let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            // The removed backend's own 1/N must move; Maglev moves a few
            // more (the paper's figure 13), but far from a reshuffle.
            let share = m / usize::from(n);
            assert!(
                changed >= share && changed <= share + share / 2,
                "{n} backends: removing one changed {changed} of {m} entries, expected about {share}"
            );
            let moved_elsewhere = before
                .iter()
                .zip(&after)
                .filter(|(a, b)| a != b && **a != removed)
                .count();
            assert!(
                moved_elsewhere <= share / 2,
                "{n} backends: {moved_elsewhere} entries of surviving backends moved"
            );
        }
    }

    #[test]
    fn table_depends_on_addresses_not_ids_or_order() {
        let size = TableSize::new(4093).expect("prime");
        let a = backends(10);
        // Another node: other ids, learnt in another order.
        let mut b: Vec<_> = a
            .iter()
            .map(|(ip, port, id)| (*ip, *port, id + 100))
            .collect();
        b.reverse();
        let by_address = |backends: &[(Ipv4Addr, u16, u32)], table: Vec<u32>| -> Vec<String> {
            let names: HashMap<u32, String> = backends
                .iter()
                .map(|(ip, port, id)| (*id, format!("{ip}:{port}")))
                .collect();
            table.into_iter().map(|id| names[&id].clone()).collect()
        };
        assert_eq!(
            by_address(&a, table(&a, size)),
            by_address(&b, table(&b, size))
        );
    }

    #[test]
    fn ports_distinguish_backends_and_duplicates_count_once() {
        let size = TableSize::new(251).expect("prime");
        let ip = Ipv4Addr::new(10, 1, 0, 1);
        let t = table(&[(ip, 80, 1), (ip, 81, 2), (ip, 80, 1)], size);
        let counts = counts(&t);
        assert_eq!(counts.len(), 2);
        assert!(
            counts.values().all(|c| *c == 125 || *c == 126),
            "{counts:?}"
        );
        assert!(table(&[], size).is_empty());
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference (draft-eastlake-fnv, test vectors).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// The hash is a contract between nodes (and agent versions): if this
    /// test changes, mixed-version clusters send flows to different
    /// backends depending on the node they reach.
    #[test]
    fn golden_table() {
        assert_eq!(
            permutation(Ipv4Addr::new(10, 1, 0, 5), 8080, 16_381),
            GOLDEN_PERMUTATION
        );
        let t = table(&backends(3), TableSize::new(251).expect("prime"));
        assert_eq!(&t[..16], GOLDEN_PREFIX);
    }

    const GOLDEN_PERMUTATION: (u32, u32) = (6311, 4830);
    const GOLDEN_PREFIX: &[u32] = &[1, 1, 1, 2, 3, 1, 2, 2, 3, 3, 2, 2, 1, 3, 3, 1];
}
