//! Small helpers the benchmarks share: medians and the machine they ran on.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The median of `v` (0 for none; the mean of the middle two for an even
/// count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// CPUs, CPU model and kernel release, for reports.
pub fn machine() -> BTreeMap<&'static str, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut m = BTreeMap::new();
    m.insert(
        "cpus",
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    m.insert("cpu_model", model);
    m.insert(
        "kernel",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    m
}

/// `machine()` in one line: "2 CPUs (model), Linux 6.1.0".
pub fn machine_summary() -> String {
    let m = machine();
    format!(
        "{} CPUs ({}), Linux {}",
        m["cpus"], m["cpu_model"], m["kernel"]
    )
}

/// The `i`th Service's cluster IP in the benchmarks: 198.18.128.0/17 holds
/// 32k of them (inside 198.18.0.0/15, the range reserved for benchmarks,
/// which the simulated cluster uses throughout).
pub fn service_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + i as u32)
}

/// The number after `key=` in a log line (`elapsed_ms=12`, quoted or not).
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_fields() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let line = "INFO initial sync complete services=3 elapsed_ms=\"41\"";
        assert_eq!(field(line, "elapsed_ms"), Some(41));
        assert_eq!(field(line, "missing"), None);
    }
}
