//! Start-up and update timings on a synthetic cluster, callable from a test or a CLI flag.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::store::ServiceStore;
use crate::source::synthetic::{cluster_yaml, slice_yaml, write_cluster, Layout};
use crate::source::{load_dir_with, parse_manifest_with};

const KINDS: &[&str] = &["Service", "EndpointSlice"];

/// What [`run`] measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Services (each with one EndpointSlice).
    pub services: usize,
    /// Endpoints per slice.
    pub endpoints: usize,
    /// The on-disk layout.
    pub layout: Layout,
    /// Manifest files read.
    pub files: usize,
    /// Start-up: walk, read and parse everything (all cores) into the
    /// model's compact form and apply it to an empty [`ServiceStore`].
    pub load: Duration,
    /// The part of `load` spent in `ServiceStore::apply_model_file`.
    pub apply: Duration,
    /// Frontends in the store afterwards.
    pub frontends: usize,
    /// One slice changed: parsing its file (for [`Layout::OneFile`], the whole file).
    pub update_parse: Duration,
    /// One slice changed: `apply_file` of that file.
    pub update_apply: Duration,
    /// Resident set size after start-up and `malloc_trim` (KiB, Linux only).
    pub rss_kib: Option<u64>,
    /// Peak resident set size during start-up (KiB, Linux only; includes
    /// whatever the process held before, e.g. the test harness).
    pub peak_rss_kib: Option<u64>,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kib =
            |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| format!("{} MiB", v / 1024));
        write!(
            f,
            "{} services x {} endpoints ({:?}, {} files): start-up {:?} (of which apply {:?}), {} frontends; \
             one-slice update: parse {:?}, apply {:?}; RSS {} (peak {})",
            self.services,
            self.endpoints,
            self.layout,
            self.files,
            self.load,
            self.apply,
            self.frontends,
            self.update_parse,
            self.update_apply,
            kib(self.rss_kib),
            kib(self.peak_rss_kib),
        )
    }
}

/// Writes a synthetic cluster into the empty directory `dir`, loads it the
/// memory-lean way the agent should (`load_dir_with` with
/// `ServiceStore::mapper`, then `apply_model_file`), then measures a
/// one-slice update (averaged over up to 100 updates for
/// [`Layout::FilePerObject`]).
pub fn run(
    dir: &Path,
    services: usize,
    endpoints: usize,
    layout: Layout,
) -> io::Result<BenchReport> {
    write_cluster(dir, services, endpoints, layout)?;
    trim_heap();
    reset_peak_rss();

    let mut store = ServiceStore::new();
    let mapper = store.mapper();
    let (mut files, mut apply) = (0, Duration::ZERO);
    let started = Instant::now();
    load_dir_with(dir, KINDS, &*mapper, |path, parsed| {
        files += 1;
        let started = Instant::now();
        store.apply_model_file(&path, parsed);
        apply += started.elapsed();
    })
    .map_err(io::Error::other)?;
    let load = started.elapsed();
    let (_, peak_rss_kib) = memory();
    trim_heap();
    let (rss_kib, _) = memory();

    let (update_parse, update_apply) = match layout {
        Layout::FilePerObject => {
            let rounds = services.clamp(1, 100);
            let (mut parse, mut apply) = (Duration::ZERO, Duration::ZERO);
            for round in 0..rounds {
                let i = round * services / rounds;
                let path = dir.join(format!("svc-{i}-slice.yaml"));
                // One endpoint stops being ready.
                let text = slice_yaml(i, endpoints).replacen("ready: true", "ready: false", 1);
                let started = Instant::now();
                let parsed = parse_manifest_with(&path, &text, KINDS, &*mapper);
                parse += started.elapsed();
                let started = Instant::now();
                store.apply_model_file(&path, parsed);
                apply += started.elapsed();
            }
            let rounds = u32::try_from(rounds).unwrap_or(u32::MAX);
            (parse / rounds, apply / rounds)
        }
        Layout::OneFile => {
            let path = dir.join("cluster.yaml");
            let text = cluster_yaml(services, endpoints).replacen("ready: true", "ready: false", 1);
            let started = Instant::now();
            let parsed = parse_manifest_with(&path, &text, KINDS, &*mapper);
            let parse = started.elapsed();
            let started = Instant::now();
            store.apply_model_file(&path, parsed);
            (parse, started.elapsed())
        }
    };
    Ok(BenchReport {
        services,
        endpoints,
        layout,
        files,
        load,
        apply,
        frontends: store.len(),
        update_parse,
        update_apply,
        rss_kib,
        peak_rss_kib,
    })
}

/// Gives freed heap memory back to the OS. glibc keeps freed start-up
/// garbage (parsed files) mapped otherwise; the agent should do the same
/// after its initial sync.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no
    // preconditions and does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0), to measure one phase's peak.
fn reset_peak_rss() {
    // Best effort: without it the peak covers the whole process lifetime.
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// (VmRSS, VmHWM) in KiB from /proc/self/status.
fn memory() -> (Option<u64>, Option<u64>) {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints timings (`cargo test -p gangplank --release --lib bench -- --nocapture`).
    /// Size with GANGPLANK_BENCH_SERVICES / GANGPLANK_BENCH_ENDPOINTS; the
    /// default is small so the normal test run stays fast.
    #[test]
    fn startup_benchmark() {
        let env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let services = env("GANGPLANK_BENCH_SERVICES", 300);
        let endpoints = env("GANGPLANK_BENCH_ENDPOINTS", 10);
        // GANGPLANK_BENCH_LAYOUT=one|many runs a single layout, so that its
        // memory figures are not mixed with the other's.
        let layouts: &[Layout] = match std::env::var("GANGPLANK_BENCH_LAYOUT").as_deref() {
            Ok("one") => &[Layout::OneFile],
            Ok("many") => &[Layout::FilePerObject],
            _ => &[Layout::OneFile, Layout::FilePerObject],
        };
        for &layout in layouts {
            let dir = tempfile::tempdir().expect("tempdir");
            let report = run(dir.path(), services, endpoints, layout).expect("bench");
            println!("{report}");
            assert_eq!(report.frontends, services);
            assert_eq!(
                report.files,
                if layout == Layout::OneFile {
                    1
                } else {
                    2 * services
                }
            );
        }
    }
}
