//! Removal of clusters left behind by test processes that died without
//! unwinding (SIGKILL, abort, power loss...).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::sys;

/// Splits a `gpt-<pid>-<n>[-suffix]` name into (id, pid).
fn parse_id(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix("gpt-")?;
    let pid_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let after_pid = rest[pid_len..].strip_prefix('-')?;
    let n_len = after_pid.bytes().take_while(u8::is_ascii_digit).count();
    if pid_len == 0 || n_len == 0 {
        return None;
    }
    let tail = &after_pid[n_len..];
    if !(tail.is_empty() || tail.starts_with('-')) {
        return None;
    }
    let pid = rest[..pid_len].parse().ok()?;
    Some((&name[.."gpt-".len() + pid_len + 1 + n_len], pid))
}

/// Decides staleness of cluster ids.
struct Staleness {
    own_pid: u32,
    /// Owner start times from `<tmp>/<id>-*/owner`, to detect recycled pids.
    owner_start: BTreeMap<String, u64>,
}

impl Staleness {
    fn is_stale(&self, id: &str, pid: u32) -> bool {
        if pid == self.own_pid {
            // Ours unless a live Cluster in this process has it: anything
            // else is from an earlier process that had the same pid.
            return !crate::cluster::is_live(id);
        }
        match self.owner_start.get(id) {
            Some(start) => sys::pid_start_time(pid) != Some(*start),
            None => !sys::pid_alive(pid),
        }
    }

    /// The id in `name` if it names a stale cluster's object.
    fn stale_id<'a>(&self, name: &'a str) -> Option<&'a str> {
        let (id, pid) = parse_id(name)?;
        self.is_stale(id, pid).then_some(id)
    }
}

/// Removes a cgroup directory tree bottom-up. Refuses (error) if processes
/// are still inside: they were not started by this process, so not ours to kill.
fn remove_cgroup_tree(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        // Removed meanwhile (e.g. by a concurrent sweep).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    let pids = sys::cgroup_pids(dir);
    if !pids.is_empty() {
        bail!(
            "{} still contains processes {pids:?}; not removing it",
            dir.display()
        );
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("rmdir {}", dir.display())),
    }
}

/// Removes leftovers of clusters whose owning process is gone: network
/// namespaces `gpt-<pid>-*`, cgroups `<cgroup2>/gpt-<pid>-<n>`, bpffs mounts
/// and temp dirs under /tmp/gangplank-tests. Clusters of live processes
/// (including this one) are left alone. Called by xtask before tests and
/// by `gangplank bench` before it builds its cluster.
///
/// Everything removable is removed; the error lists what was not.
pub fn sweep_stale() -> Result<()> {
    crate::check_privileges()?;
    let tmp_root = sys::ensure_tmp_root()?;
    let tmp_names: Vec<String> = sys::dir_names(&tmp_root)?
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let mut owner_start = BTreeMap::new();
    for name in &tmp_names {
        if let Some((id, _)) = parse_id(name) {
            let start = fs::read_to_string(tmp_root.join(name).join("owner"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("starttime=")?.trim().parse::<u64>().ok())
                });
            if let Some(start) = start.filter(|s| *s != 0) {
                owner_start.insert(id.to_string(), start);
            }
        }
    }
    let judge = Staleness {
        own_pid: std::process::id(),
        owner_start,
    };
    let mut errors: Vec<String> = Vec::new();

    // 1. Network namespaces.
    let stale_netns: Vec<String> = sys::dir_names(Path::new(sys::NETNS_DIR))?
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| judge.stale_id(n).is_some())
        .collect();
    if let Err(e) = sys::delete_netns(&stale_netns) {
        errors.push(format!("{e:#}"));
    }

    // 2. cgroups (top-level dirs named exactly like an id).
    let cg_root = sys::cgroup2_root()?;
    for name in sys::dir_names(cg_root)? {
        let name = name.to_string_lossy();
        if judge.stale_id(&name).is_some_and(|id| id == name) {
            if let Err(e) = remove_cgroup_tree(&cg_root.join(&*name)) {
                errors.push(format!("{e:#}"));
            }
        }
    }

    // 3. Mounts (bpffs) below stale temp dirs, deepest first.
    for mount_point in sys::mounts_under(&tmp_root)? {
        let Ok(rel) = mount_point.strip_prefix(&tmp_root) else {
            continue;
        };
        let Some(first) = rel.components().next() else {
            continue;
        };
        if judge
            .stale_id(&first.as_os_str().to_string_lossy())
            .is_some()
        {
            if let Err(e) = sys::umount_detach(&mount_point) {
                errors.push(format!("{e:#}"));
            }
        }
    }

    // 4. Temp dirs, unless something is still mounted inside.
    for name in &tmp_names {
        if judge.stale_id(name).is_none() {
            continue;
        }
        let dir = tmp_root.join(name);
        match sys::mounts_under(&dir) {
            Ok(m) if m.is_empty() => {
                if let Err(e) = sys::remove_tree(&dir) {
                    errors.push(format!("{e:#}"));
                }
            }
            Ok(m) => errors.push(format!(
                "not removing {}: still mounted: {m:?}",
                dir.display()
            )),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        bail!(
            "could not remove all stale simulated clusters:\n{}",
            errors.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(parse_id("gpt-12-3"), Some(("gpt-12-3", 12)));
        assert_eq!(parse_id("gpt-12-3-node-a"), Some(("gpt-12-3", 12)));
        assert_eq!(parse_id("gpt-12-34x"), None);
        assert_eq!(parse_id("gpt--3"), None);
        assert_eq!(parse_id("gpt-12-"), None);
        assert_eq!(parse_id("other"), None);
    }
}
