//! Conntrack garbage collection.
//!
//! The datapath stamps every conntrack entry with an `expires` time (seconds
//! of `bpf_ktime_get_ns()`, i.e. CLOCK_MONOTONIC) and ignores entries past
//! it, but never deletes them: that is left to this collector, so that dead
//! flows do not sit in the LRU map and push live ones out when it fills up.
//!
//! One pass reads every key first and deletes afterwards: deleting the key a
//! BPF_MAP_GET_NEXT_KEY walk stands on makes the kernel restart the walk from
//! the first bucket (`htab_map_get_next_key`), so deleting while iterating
//! could visit entries many times over.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, IterableMap, Map, MapData, MapError};
use gangplank_common::{CtEntry, CtKey};
use tracing::{debug, info, warn};

use super::{Error, Result};
use crate::metrics::AgentMetrics;

/// Name of the pinned conntrack map.
pub const CT_MAP: &str = "GP_CT";

/// How often [`CtGc`] runs by default. The shortest lifetime is
/// `CT_TIMEOUT_TCP_CLOSING` (10 s), but an expired entry costs nothing but
/// its slot until then, and the LRU map reclaims slots on its own under
/// pressure; 30 s keeps a full scan of a large table rare.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// What one collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    /// Distinct entries looked at.
    pub scanned: u64,
    /// Expired entries deleted.
    pub deleted: u64,
    /// Entries left (scanned, minus deleted, minus those the datapath or LRU
    /// eviction removed meanwhile).
    pub live: u64,
}

/// Seconds of CLOCK_MONOTONIC: the clock of `bpf_ktime_get_ns()`, so the
/// same scale as [`CtEntry::expires`]. (u32 seconds of uptime last 136
/// years.)
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        // Cannot happen with a valid clock id; 0 makes the collector delete
        // nothing rather than everything.
        return 0;
    }
    u32::try_from(ts.tv_sec).unwrap_or(u32::MAX)
}

/// An entry is dead once its expiry time has passed (an entry expiring at
/// `now_secs` still lives this second, as the datapath sees it).
pub fn is_expired(entry: &CtEntry, now_secs: u32) -> bool {
    entry.expires < now_secs
}

/// Delete every entry of `ct` that expired before `now_secs`
/// ([`monotonic_secs`]).
///
/// Entries the datapath removes or refreshes between the scan and the
/// delete are left alone: each dead key is read again just before it is
/// deleted, and an entry already gone (ENOENT) is not an error.
pub fn collect(ct: &mut BpfHashMap<MapData, CtKey, CtEntry>, now_secs: u32) -> Result<GcStats> {
    collect_table(&mut BpfTable(ct), now_secs)
}

/// [`collect`] on the conntrack map pinned at `path` (LRU or plain hash).
pub fn collect_pinned(path: &Path, now_secs: u32) -> Result<GcStats> {
    let mut ct = open_pinned(path)?;
    collect(&mut ct, now_secs)
}

fn open_pinned(path: &Path) -> Result<BpfHashMap<MapData, CtKey, CtEntry>> {
    let open_err = |source| Error::OpenPin {
        path: path.to_path_buf(),
        source,
    };
    let data = MapData::from_pin(path).map_err(open_err)?;
    let map = Map::from_map_data(data).map_err(open_err)?;
    // Checks the map type (hash or LRU hash) and the key and value sizes.
    BpfHashMap::try_from(map).map_err(open_err)
}

/// What the collector needs from a conntrack table; the real map, or an
/// in-memory one in tests.
trait CtTable {
    /// Capacity: bounds the scan when the walk keeps restarting.
    fn max_entries(&self) -> Result<u32>;
    fn entries(&self) -> Box<dyn Iterator<Item = Result<(CtKey, CtEntry)>> + '_>;
    fn get(&self, key: &CtKey) -> Result<Option<CtEntry>>;
    /// False if the key was already gone.
    fn delete(&mut self, key: &CtKey) -> Result<bool>;
}

fn map_err(op: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map {
        map: CT_MAP,
        op,
        source,
    }
}

fn is_enoent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

struct BpfTable<'a>(&'a mut BpfHashMap<MapData, CtKey, CtEntry>);

impl CtTable for BpfTable<'_> {
    fn max_entries(&self) -> Result<u32> {
        Ok(self.0.map().info().map_err(map_err("info"))?.max_entries())
    }

    fn entries(&self) -> Box<dyn Iterator<Item = Result<(CtKey, CtEntry)>> + '_> {
        // aya's iterator skips keys that vanish between next_key and lookup.
        Box::new(self.0.iter().map(|r| r.map_err(map_err("iterate"))))
    }

    fn get(&self, key: &CtKey) -> Result<Option<CtEntry>> {
        match self.0.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_enoent(&e) => Ok(None),
            Err(e) => Err(map_err("lookup")(e)),
        }
    }

    fn delete(&mut self, key: &CtKey) -> Result<bool> {
        match self.0.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(map_err("delete")(e)),
        }
    }
}

fn collect_table(table: &mut impl CtTable, now_secs: u32) -> Result<GcStats> {
    // Under churn the walk restarts whenever its current key is deleted or
    // evicted; seen keys are skipped, and the walk is cut short after twice
    // the capacity so a pass always ends (the rest waits for the next one).
    let limit = u64::from(table.max_entries()?).saturating_mul(2).max(1024);
    let mut seen = HashSet::new();
    let mut dead = Vec::new();
    let mut steps = 0u64;
    for item in table.entries() {
        let (key, entry) = item?;
        steps += 1;
        if steps > limit {
            warn!(
                map = CT_MAP,
                steps, "conntrack walk kept restarting; cut short until the next pass"
            );
            break;
        }
        if seen.insert(key) && is_expired(&entry, now_secs) {
            dead.push(key);
        }
    }
    let scanned = seen.len() as u64;
    let (mut deleted, mut gone) = (0u64, 0u64);
    for key in dead {
        // Read again: a packet may have refreshed the entry since the scan.
        match table.get(&key)? {
            None => gone += 1,
            Some(entry) if !is_expired(&entry, now_secs) => {}
            Some(_) => {
                if table.delete(&key)? {
                    deleted += 1;
                } else {
                    gone += 1;
                }
            }
        }
    }
    Ok(GcStats {
        scanned,
        deleted,
        live: scanned - deleted - gone,
    })
}

/// The conntrack garbage collector: a thread that runs [`collect`] on the
/// pinned map every interval (first right away) until stopped or dropped.
#[derive(Debug)]
pub struct CtGc {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl CtGc {
    /// Collect `map_path` (`<bpffs>/maps/GP_CT`) every `interval`
    /// ([`DEFAULT_INTERVAL`]), reporting to `metrics` if given. The map is
    /// opened anew on each pass, so a map re-created by another agent
    /// version is followed, and a missing one is only a warning.
    pub fn start(
        map_path: PathBuf,
        interval: Duration,
        metrics: Option<Arc<AgentMetrics>>,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let shown = map_path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("gp-ct-gc".into())
            .spawn(move || loop {
                run_once(&map_path, metrics.as_deref());
                match stopped.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    // A stop message, or the CtGc was dropped.
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            })?;
        info!(map = %shown, ?interval, "conntrack garbage collector started");
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stop the collector and wait for a pass in progress to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("conntrack garbage collector thread panicked");
            }
        }
    }
}

impl Drop for CtGc {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run_once(path: &Path, metrics: Option<&AgentMetrics>) {
    let started = Instant::now();
    match collect_pinned(path, monotonic_secs()) {
        Ok(stats) => {
            debug!(
                scanned = stats.scanned,
                deleted = stats.deleted,
                live = stats.live,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "conntrack garbage collected"
            );
            if let Some(m) = metrics {
                m.record_ct_gc(&stats);
            }
        }
        Err(error) => {
            warn!(map = %path.display(), %error, "conntrack garbage collection failed; retrying next interval")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    fn key(n: u16) -> CtKey {
        CtKey {
            saddr: u32::from_be_bytes([198, 18, 0, 100]).to_be(),
            daddr: u32::from_be_bytes([198, 18, 0, 10]).to_be(),
            sport: n.to_be(),
            dport: 30080u16.to_be(),
            proto: gangplank_common::PROTO_TCP,
            dir: gangplank_common::CT_DIR_IN,
            _pad: 0,
        }
    }

    fn entry(expires: u32) -> CtEntry {
        CtEntry {
            new_saddr: 0,
            new_daddr: 0,
            new_sport: 0,
            new_dport: 0,
            backend_id: 1,
            expires,
            rev_nat_id: 1,
            flags: 0,
        }
    }

    /// An in-memory table whose entries can change behind the collector's
    /// back between its scan and its deletes, as the datapath's do.
    #[derive(Default)]
    struct Fake {
        map: BTreeMap<CtKey, CtEntry>,
        /// Applied on the first `get` of a key after the scan.
        on_recheck: RefCell<BTreeMap<CtKey, Option<CtEntry>>>,
        /// Keys removed (by "the datapath") just before our delete.
        vanish_before_delete: HashSet<CtKey>,
        /// Yield the first entries this many extra times (a restarting walk).
        restarts: usize,
        deletes: Vec<CtKey>,
    }

    impl CtTable for Fake {
        fn max_entries(&self) -> Result<u32> {
            Ok(1024)
        }
        fn entries(&self) -> Box<dyn Iterator<Item = Result<(CtKey, CtEntry)>> + '_> {
            let first: Vec<_> = self.map.iter().take(2).map(|(k, v)| (*k, *v)).collect();
            let replays = std::iter::repeat_n(first, self.restarts).flatten();
            Box::new(
                replays
                    .chain(self.map.iter().map(|(k, v)| (*k, *v)))
                    .map(Ok),
            )
        }
        fn get(&self, key: &CtKey) -> Result<Option<CtEntry>> {
            if let Some(change) = self.on_recheck.borrow_mut().remove(key) {
                return Ok(change);
            }
            Ok(self.map.get(key).copied())
        }
        fn delete(&mut self, key: &CtKey) -> Result<bool> {
            self.deletes.push(*key);
            if self.vanish_before_delete.contains(key) {
                self.map.remove(key);
                return Ok(false);
            }
            Ok(self.map.remove(key).is_some())
        }
    }

    #[test]
    fn expiry_is_strictly_before_now() {
        assert!(is_expired(&entry(99), 100));
        assert!(!is_expired(&entry(100), 100), "expires == now still lives");
        assert!(!is_expired(&entry(101), 100));
    }

    #[test]
    fn deletes_only_expired_entries() {
        let mut t = Fake::default();
        for (n, expires) in [(1, 50), (2, 150), (3, 99), (4, 100), (5, 0)] {
            t.map.insert(key(n), entry(expires));
        }
        let stats = collect_table(&mut t, 100).expect("collect");
        assert_eq!(
            stats,
            GcStats {
                scanned: 5,
                deleted: 3,
                live: 2
            }
        );
        let left: Vec<_> = t.map.keys().copied().collect();
        assert_eq!(left, vec![key(2), key(4)]);
    }

    #[test]
    fn entries_refreshed_or_removed_meanwhile_are_left_alone() {
        let mut t = Fake::default();
        for n in 1..=4 {
            t.map.insert(key(n), entry(10));
        }
        // key(1): a packet refreshed it after the scan; key(2): the datapath
        // deleted it after the scan; key(3): gone right before our delete.
        t.on_recheck
            .borrow_mut()
            .extend([(key(1), Some(entry(500))), (key(2), None)]);
        t.vanish_before_delete.insert(key(3));
        let stats = collect_table(&mut t, 100).expect("collect");
        assert_eq!(
            stats,
            GcStats {
                scanned: 4,
                deleted: 1,
                live: 1
            },
            "only key(4) is ours to delete; key(1) lives on"
        );
        assert!(
            !t.deletes.contains(&key(1)) && !t.deletes.contains(&key(2)),
            "deleted a refreshed or vanished entry: {:?}",
            t.deletes
        );
    }

    #[test]
    fn a_restarting_walk_counts_each_entry_once() {
        let mut t = Fake {
            restarts: 3,
            ..Fake::default()
        };
        for n in 1..=5 {
            t.map
                .insert(key(n), entry(if n % 2 == 0 { 10 } else { 500 }));
        }
        let stats = collect_table(&mut t, 100).expect("collect");
        assert_eq!(
            stats,
            GcStats {
                scanned: 5,
                deleted: 2,
                live: 3
            }
        );
        assert_eq!(
            t.deletes.len(),
            2,
            "each dead key deleted once: {:?}",
            t.deletes
        );
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_secs();
        assert!(a > 0, "CLOCK_MONOTONIC reads 0");
        assert!(monotonic_secs() >= a);
    }

    #[test]
    fn missing_map_is_an_error_naming_the_path() {
        let path = Path::new("/nonexistent/gangplank/maps/GP_CT");
        let err = collect_pinned(path, 1).expect_err("no such pin");
        assert!(
            err.to_string()
                .contains("/nonexistent/gangplank/maps/GP_CT"),
            "{err}"
        );
    }

    #[test]
    fn gc_thread_stops_on_drop() {
        let gc = CtGc::start(
            PathBuf::from("/nonexistent/GP_CT"),
            Duration::from_secs(3600),
            None,
        )
        .expect("starting the collector thread");
        let started = Instant::now();
        drop(gc);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "drop waited {:?} for the thread",
            started.elapsed()
        );
    }
}
